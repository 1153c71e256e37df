"""Tables: the seed's two (exactly its DDL) plus the pipeline's own state in schema `promo`."""

from __future__ import annotations

import psycopg

from promo_pipeline.settings import Settings

SEED_DDL = """
CREATE TABLE IF NOT EXISTS public.subscribers_restaurants (
    id serial4 NOT NULL,
    client_id varchar NOT NULL,
    restaurant_id varchar NOT NULL,
    CONSTRAINT pk_id PRIMARY KEY (id)
);
CREATE TABLE IF NOT EXISTS public.subscribers_feedback (
    id serial4 NOT NULL,
    restaurant_id text NOT NULL,
    adv_campaign_id text NOT NULL,
    adv_campaign_content text NOT NULL,
    adv_campaign_owner text NOT NULL,
    adv_campaign_owner_contact text NOT NULL,
    adv_campaign_datetime_start int8 NOT NULL,
    adv_campaign_datetime_end int8 NOT NULL,
    datetime_created int8 NOT NULL,
    client_id text NOT NULL,
    trigger_datetime_created int4 NOT NULL,
    feedback varchar NULL,
    CONSTRAINT id_pk PRIMARY KEY (id)
);
"""

# One trigger per (campaign, client), ever: the database enforces it, not only the code.
PIPELINE_DDL = """
CREATE UNIQUE INDEX IF NOT EXISTS subscribers_feedback_campaign_client_key
    ON public.subscribers_feedback (adv_campaign_id, client_id);
-- UUIDs compare case-insensitively: subscribers are matched and triggered in lower case. The
-- INCLUDEd raw columns let a restaurant's fan-out be an index-only scan in client order.
DROP INDEX IF EXISTS public.subscribers_restaurants_restaurant_idx;
CREATE INDEX IF NOT EXISTS subscribers_restaurants_canonical_idx
    ON public.subscribers_restaurants (lower(restaurant_id), lower(client_id))
    INCLUDE (restaurant_id, client_id);

CREATE SCHEMA IF NOT EXISTS promo;

-- The latest version of every campaign ever read: triggers are computed from here each run,
-- so held, updated and cancelled campaigns and new subscribers need no replay of the topic.
-- Fan-out state: `fanout_through` is the subscribers_restaurants.id up to which every
-- subscriber of the restaurant has been triggered (NULL: the full fan-out is not done yet);
-- `fanout_cursor` is the last client of a full fan-out in progress.
CREATE TABLE IF NOT EXISTS promo.campaigns (
    adv_campaign_id text PRIMARY KEY,
    restaurant_id text NOT NULL,
    adv_campaign_content text NOT NULL,
    adv_campaign_owner text NOT NULL,
    adv_campaign_owner_contact text NOT NULL,
    adv_campaign_datetime_start int8 NOT NULL,
    adv_campaign_datetime_end int8 NOT NULL,
    datetime_created int8 NOT NULL,
    kafka_partition int4 NOT NULL,
    kafka_offset int8 NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE promo.campaigns ADD COLUMN IF NOT EXISTS fanout_through int8;
ALTER TABLE promo.campaigns ADD COLUMN IF NOT EXISTS fanout_cursor text;
ALTER TABLE promo.campaigns ADD COLUMN IF NOT EXISTS fanout_started_at int8;
CREATE INDEX IF NOT EXISTS campaigns_window_idx
    ON promo.campaigns (adv_campaign_datetime_end, adv_campaign_datetime_start);
CREATE INDEX IF NOT EXISTS campaigns_restaurant_idx ON promo.campaigns (restaurant_id);

-- What each micro-batch of a run did; written in the batch's own transaction.
CREATE TABLE IF NOT EXISTS promo.campaign_batches (
    run_id text NOT NULL,
    batch_id int8 NOT NULL,
    messages int4 NOT NULL,
    valid int4 NOT NULL,
    campaigns_changed int4 NOT NULL,
    rejected jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, batch_id)
);

-- The run's trigger time T (the database's clock) and subscriber watermark W, so every asset
-- of a run, and each asset materialized alone, works from one durable window.
CREATE TABLE IF NOT EXISTS promo.trigger_window (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    run_id text NOT NULL,
    trigger_time int8 NOT NULL,
    subscriber_watermark int8 NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Triggers committed to Postgres but not yet acknowledged by Kafka: one row per committed
-- slice, naming its rows by the ledger's unique key (one campaign, a client range, the trigger
-- time), never by ids, so rows written by other hands cannot shift it. Resent messages are
-- rebuilt from the stored rows by the same query, so they are byte-identical.
DROP VIEW IF EXISTS promo.kafka_outbox;
DROP TABLE IF EXISTS promo.trigger_stage;
CREATE TABLE IF NOT EXISTS promo.trigger_outbox (
    slice_id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    adv_campaign_id text NOT NULL,
    client_first text NOT NULL,
    client_last text NOT NULL,
    trigger_time int8 NOT NULL,
    triggers int8 NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Pending triggers, one row each, for people and checks.
CREATE OR REPLACE VIEW promo.kafka_outbox AS
SELECT f.adv_campaign_id, f.client_id, o.run_id, o.slice_id
FROM promo.trigger_outbox o
JOIN public.subscribers_feedback f
  ON f.adv_campaign_id = o.adv_campaign_id
 AND f.client_id BETWEEN o.client_first AND o.client_last
 AND f.trigger_datetime_created = o.trigger_time;
"""


def conninfo(settings: Settings, *, dbname: str | None = None) -> str:
    """The same connection string the Dagster resource builds, optionally to another database."""
    from promo_pipeline.resources import postgres_resource

    postgres = postgres_resource(settings)
    return (
        postgres.conninfo()
        if dbname is None
        else postgres.model_copy(update={"db": dbname}).conninfo()
    )


def init_db(settings: Settings) -> None:
    """Create what is missing; safe to run again."""
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('promo_pipeline.init_db'))")
        conn.execute(SEED_DDL)
        conn.execute(PIPELINE_DDL)
