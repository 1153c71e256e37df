"""Fan-out in slices: per-campaign fan-out progress, the run's window, an outbox of committed
slices named by the ledger's unique key, and subscribers matched case-insensitively. Every
statement is IF (NOT) EXISTS, so a database already in this shape is adopted as it is.

Revision ID: 0002_fanout_slices
Revises: 0001_baseline
"""

from alembic import op

revision = "0002_fanout_slices"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

UPGRADE = [
    # Triggers the previous outbox still holds are named by id ranges this code does not read:
    # the previous version must deliver them first.
    # (EXECUTE: a static reference to the table fails to plan where the table is gone.)
    """DO $$
    DECLARE
        pending bool := false;
    BEGIN
        IF to_regclass('promo.kafka_outbox_runs') IS NOT NULL THEN
            EXECUTE 'SELECT EXISTS (SELECT 1 FROM promo.kafka_outbox_runs)' INTO pending;
        END IF;
        IF pending THEN
            RAISE EXCEPTION 'promo.kafka_outbox_runs holds undelivered triggers: run the '
                'previous version once to deliver them, then upgrade';
        END IF;
    END $$""",
    "DROP VIEW IF EXISTS promo.kafka_outbox",
    "DROP TABLE IF EXISTS promo.kafka_outbox_runs",
    # UUIDs compare case-insensitively: subscribers are matched and triggered in lower case. The
    # INCLUDEd raw columns let a restaurant's fan-out be an index-only scan in client order.
    "DROP INDEX IF EXISTS public.subscribers_restaurants_restaurant_idx",
    """CREATE INDEX IF NOT EXISTS subscribers_restaurants_canonical_idx
        ON public.subscribers_restaurants (lower(restaurant_id), lower(client_id))
        INCLUDE (restaurant_id, client_id)""",
    # Fan-out state: `fanout_through` is the subscribers_restaurants.id up to which every
    # subscriber of the restaurant has been triggered (NULL: the full fan-out is not done);
    # `fanout_cursor` is the last client of a full fan-out in progress, `fanout_started_at` the
    # watermark it started from.
    "ALTER TABLE promo.campaigns ADD COLUMN IF NOT EXISTS fanout_through int8",
    "ALTER TABLE promo.campaigns ADD COLUMN IF NOT EXISTS fanout_cursor text",
    "ALTER TABLE promo.campaigns ADD COLUMN IF NOT EXISTS fanout_started_at int8",
    "CREATE INDEX IF NOT EXISTS campaigns_restaurant_idx ON promo.campaigns (restaurant_id)",
    # The run's trigger time T (the database's clock) and subscriber watermark W, so every asset
    # of a run, and each asset materialized alone, works from one durable window.
    """CREATE TABLE IF NOT EXISTS promo.trigger_window (
        singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
        run_id text NOT NULL,
        trigger_time int8 NOT NULL,
        subscriber_watermark int8 NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
    )""",
    # Triggers committed to Postgres but not yet acknowledged by Kafka: one row per committed
    # slice, naming its rows by the ledger's unique key (one campaign, a client range, the
    # trigger time), never by ids, so rows written by other hands cannot shift it.
    """CREATE TABLE IF NOT EXISTS promo.trigger_outbox (
        slice_id bigserial PRIMARY KEY,
        run_id text NOT NULL,
        adv_campaign_id text NOT NULL,
        client_first text NOT NULL,
        client_last text NOT NULL,
        trigger_time int8 NOT NULL,
        triggers int8 NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    # Pending triggers, one row each, for people and checks (0004 renames it).
    """CREATE VIEW promo.kafka_outbox AS
    SELECT f.adv_campaign_id, f.client_id, o.run_id, o.slice_id
    FROM promo.trigger_outbox o
    JOIN public.subscribers_feedback f
      ON f.adv_campaign_id = o.adv_campaign_id
     AND f.client_id BETWEEN o.client_first AND o.client_last
     AND f.trigger_datetime_created = o.trigger_time""",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    # The slices' fan-out progress has no equivalent before this revision.
    raise NotImplementedError("0002_fanout_slices is not undone by a migration")
