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
CREATE INDEX IF NOT EXISTS subscribers_restaurants_restaurant_idx
    ON public.subscribers_restaurants (restaurant_id, client_id);

CREATE SCHEMA IF NOT EXISTS promo;

-- The latest version of every campaign ever read: triggers are computed from here each run,
-- so held, updated and cancelled campaigns and new subscribers need no replay of the topic.
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
CREATE INDEX IF NOT EXISTS campaigns_window_idx
    ON promo.campaigns (adv_campaign_datetime_end, adv_campaign_datetime_start);

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

-- Triggers committed to Postgres but not yet acknowledged by Kafka: one row per run, naming its
-- rows in subscribers_feedback (id range and trigger time). The next run resends them rebuilt
-- from the stored rows, so a resent message is byte-identical.
CREATE TABLE IF NOT EXISTS promo.kafka_outbox_runs (
    run_id text PRIMARY KEY,
    trigger_time int8 NOT NULL,
    first_id int8 NOT NULL,
    last_id int8 NOT NULL,
    triggers int8 NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Earlier versions kept one outbox row per trigger in a table of this name; it is replaced by
-- the view below once empty (an older run must deliver what it holds first).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'promo' AND tablename = 'kafka_outbox')
    THEN
        IF EXISTS (SELECT 1 FROM promo.kafka_outbox) THEN
            RAISE EXCEPTION 'promo.kafka_outbox (old layout) holds undelivered triggers: %',
                'run the previous version once to deliver them';
        END IF;
        DROP TABLE promo.kafka_outbox;
    END IF;
END $$;
DROP TABLE IF EXISTS promo.trigger_stage;
-- Pending triggers, one row each, for people and checks.
CREATE OR REPLACE VIEW promo.kafka_outbox AS
SELECT f.adv_campaign_id, f.client_id, r.run_id
FROM promo.kafka_outbox_runs r
JOIN public.subscribers_feedback f
  ON f.id BETWEEN r.first_id AND r.last_id AND f.trigger_datetime_created = r.trigger_time;
"""


INPUT_DDL = """
-- The input topic's identity (Kafka topic id): a new id means the topic was recreated.
CREATE TABLE IF NOT EXISTS promo.input_topics (
    topic text PRIMARY KEY,
    topic_id text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Which offsets of which topic each run read.
CREATE TABLE IF NOT EXISTS promo.input_offsets (
    run_id text NOT NULL,
    topic text NOT NULL,
    topic_id text NOT NULL,
    partition int4 NOT NULL,
    start_offset int8 NOT NULL,
    end_offset int8 NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, topic, partition)
);
-- What happened to the input: topic_recreated, retention_gap (offsets lost), rewind.
CREATE TABLE IF NOT EXISTS promo.input_events (
    id bigserial PRIMARY KEY,
    run_id text,
    topic text NOT NULL,
    kind text NOT NULL,
    detail jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
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
        conn.execute(INPUT_DDL)
