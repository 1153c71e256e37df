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

-- Triggers of a run land here first (bulk load), then move to subscribers_feedback in one
-- transaction together with their outbox entries.
CREATE UNLOGGED TABLE IF NOT EXISTS promo.trigger_stage (
    restaurant_id text NOT NULL,
    adv_campaign_id text NOT NULL,
    adv_campaign_content text NOT NULL,
    adv_campaign_owner text NOT NULL,
    adv_campaign_owner_contact text NOT NULL,
    adv_campaign_datetime_start int8 NOT NULL,
    adv_campaign_datetime_end int8 NOT NULL,
    client_id text NOT NULL,
    datetime_created int8 NOT NULL,
    trigger_datetime_created int8 NOT NULL
);

-- Triggers committed to Postgres but not yet acknowledged by Kafka: the next run resends them
-- from the stored row, so a resent message is byte-identical.
CREATE TABLE IF NOT EXISTS promo.kafka_outbox (
    adv_campaign_id text NOT NULL,
    client_id text NOT NULL,
    run_id text NOT NULL,
    PRIMARY KEY (adv_campaign_id, client_id)
);
"""


def conninfo(settings: Settings, *, dbname: str | None = None) -> str:
    return psycopg.conninfo.make_conninfo(
        host=settings.postgres_host,
        port=settings.postgres_port,
        dbname=dbname or settings.postgres_db,
        user=settings.postgres_user,
        password=settings.postgres_password or None,
        connect_timeout=10,
        application_name="promo_pipeline",
    )


def init_db(settings: Settings) -> None:
    """Create what is missing; safe to run again."""
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('promo_pipeline.init_db'))")
        conn.execute(SEED_DDL)
        conn.execute(PIPELINE_DDL)
