"""Baseline: the schema `promo` and the pipeline's indexes on the seed's tables, as they stood
before migrations. Every statement is IF NOT EXISTS or guarded, so a database created by an
earlier version is adopted as it is, and one at a later revision is left as it is.

Revision ID: 0001_baseline
Revises: (none)
"""

from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = [
    # One trigger per (campaign, client), ever: the database enforces it, not only the code.
    """CREATE UNIQUE INDEX IF NOT EXISTS subscribers_feedback_campaign_client_key
        ON public.subscribers_feedback (adv_campaign_id, client_id)""",
    "CREATE SCHEMA IF NOT EXISTS promo",
    # Replaced by 0002's case-insensitive index: not built again on a database past it.
    """DO $$
    BEGIN
        IF to_regclass('promo.trigger_outbox') IS NULL THEN
            CREATE INDEX IF NOT EXISTS subscribers_restaurants_restaurant_idx
                ON public.subscribers_restaurants (restaurant_id, client_id);
        END IF;
    END $$""",
    # The latest version of every campaign ever read: triggers are computed from here each run,
    # so held, updated and cancelled campaigns and new subscribers need no replay of the topic.
    """CREATE TABLE IF NOT EXISTS promo.campaigns (
        adv_campaign_id text PRIMARY KEY, restaurant_id text NOT NULL,
        adv_campaign_content text NOT NULL, adv_campaign_owner text NOT NULL,
        adv_campaign_owner_contact text NOT NULL,
        adv_campaign_datetime_start int8 NOT NULL, adv_campaign_datetime_end int8 NOT NULL,
        datetime_created int8 NOT NULL,
        kafka_partition int4 NOT NULL,
        kafka_offset int8 NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE INDEX IF NOT EXISTS campaigns_window_idx
        ON promo.campaigns (adv_campaign_datetime_end, adv_campaign_datetime_start)""",
    # What each micro-batch of a run did; written in the batch's own transaction.
    """CREATE TABLE IF NOT EXISTS promo.campaign_batches (
        run_id text NOT NULL,
        batch_id int8 NOT NULL,
        messages int4 NOT NULL,
        valid int4 NOT NULL,
        campaigns_changed int4 NOT NULL,
        rejected jsonb NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, batch_id)
    )""",
    # Triggers committed to Postgres but not yet acknowledged by Kafka: one row per run, naming
    # its rows in subscribers_feedback (id range and trigger time). The next run resends them
    # rebuilt from the stored rows, so a resent message is byte-identical. With the view of
    # pending triggers, one row each, for people and checks. Only on a database that predates
    # 0002's outbox (promo.trigger_outbox): one already past this revision, whose version row
    # was lost or set back, keeps its shape.
    """DO $$
    BEGIN
        IF to_regclass('promo.trigger_outbox') IS NULL THEN
            CREATE TABLE IF NOT EXISTS promo.kafka_outbox_runs (
                run_id text PRIMARY KEY,
                trigger_time int8 NOT NULL,
                first_id int8 NOT NULL,
                last_id int8 NOT NULL,
                triggers int8 NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            );
            IF to_regclass('promo.kafka_outbox') IS NULL THEN
                CREATE VIEW promo.kafka_outbox AS
                SELECT f.adv_campaign_id, f.client_id, r.run_id
                FROM promo.kafka_outbox_runs r
                JOIN public.subscribers_feedback f
                  ON f.id BETWEEN r.first_id AND r.last_id
                 AND f.trigger_datetime_created = r.trigger_time;
            END IF;
        END IF;
    END $$""",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    # Undoing the baseline would drop every campaign and the outbox: not something a command
    # should do; drop schema promo by hand if that is really meant.
    raise NotImplementedError("the baseline revision is not undone by a migration")
