"""What tests share: the seed's sample, fresh ids, valid campaigns, a test's private slice of
the stack (`Pipeline`) and reading a topic whole. The fixtures that hand these out are in
conftest.py."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from promo_pipeline.db import conninfo, init_db
from promo_pipeline.defs.resources import kafka_resource
from promo_pipeline.settings import Settings, load_settings
from promo_pipeline.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]

SEED_CAMPAIGN = {
    "restaurant_id": "123e4567-e89b-12d3-a456-426614174000",
    "adv_campaign_id": "123e4567-e89b-12d3-a456-426614174003",
    "adv_campaign_content": "first campaign",
    "adv_campaign_owner": "Ivanov Ivan Ivanovich",
    "adv_campaign_owner_contact": "iiivanov@restaurant.ru",
    "adv_campaign_datetime_start": 1659203516,
    "adv_campaign_datetime_end": 2659207116,
    "datetime_created": 1659131516,
}
SEED_CLIENT = "023e4567-e89b-12d3-a456-426614174000"


def new_uuid() -> str:
    return str(uuid.uuid4())


def campaign(**fields: Any) -> dict[str, Any]:
    """A valid, active campaign with fresh ids, overridden by `fields`."""
    return {
        **SEED_CAMPAIGN,
        "restaurant_id": new_uuid(),
        "adv_campaign_id": new_uuid(),
        **fields,
    }


def read_topic(settings: Settings, topic: str, timeout: float = 10.0) -> list[Any]:
    """Every message in `topic`, from the beginning up to its current end, read with the
    pipeline's own client settings (so it works on a secured broker too)."""
    consumer = Consumer(
        kafka_resource(settings).client_config(
            **{"group.id": f"test-{new_uuid()}", "enable.auto.commit": False}
        )
    )
    try:
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages: list[Any] = []
        deadline = time.monotonic() + 30
        expected = sum(ends.values())
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                messages.append(message)
        assert len(messages) == expected, f"read {len(messages)} of {expected} from {topic}"
        return sorted(messages, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


@dataclass
class Pipeline:
    """One test's private slice of the stack, and what a test does with it."""

    settings: Settings
    env: dict[str, str]
    consumers: list[Consumer] = field(default_factory=list)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(conninfo(self.settings), autocommit=True)

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def subscribe(self, *pairs: tuple[str, str]) -> None:
        """Add (client_id, restaurant_id) rows to subscribers_restaurants."""
        with self.connect() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
                "VALUES (%s, %s)",
                pairs,
            )

    def publish(
        self, *values: bytes | str | dict[str, Any] | None, key: bytes | None = None
    ) -> None:
        """Send raw message values to the input topic and wait for the acknowledgements."""
        producer = Producer({"bootstrap.servers": self.settings.kafka_bootstrap_servers})
        for value in values:
            if isinstance(value, dict):
                value = json.dumps(value)
            if isinstance(value, str):
                value = value.encode()
            producer.produce(self.settings.promo_input_topic, value=value, key=key)
        assert producer.flush(30) == 0

    def run(self) -> tuple[bool, str]:
        from promo_pipeline.cli.run import run_job

        return run_job()

    def run_ok(self) -> str:
        success, summary = self.run()
        assert success, summary
        return summary

    def feedback(self) -> list[dict[str, Any]]:
        with self.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
            return cursor.execute(
                "SELECT * FROM public.subscribers_feedback ORDER BY id"
            ).fetchall()

    def pairs(self) -> set[tuple[str, str]]:
        return {(row["adv_campaign_id"], row["client_id"]) for row in self.feedback()}

    def publish_active(self, campaigns: int, clients: int) -> set[tuple[str, str]]:
        """`campaigns` active campaigns, each with `clients` new subscribers, published one by
        one; returns the (campaign, client) pairs that are due."""
        due = set()
        for _ in range(campaigns):
            active = campaign()
            subscribers = [new_uuid() for _ in range(clients)]
            self.subscribe(*[(client, active["restaurant_id"]) for client in subscribers])
            self.publish(active)
            due |= {(active["adv_campaign_id"], client) for client in subscribers}
        return due

    def read_topic(self, topic: str) -> list[Any]:
        return read_topic(self.settings, topic)

    def output(self) -> list[Any]:
        return self.read_topic(self.settings.promo_output_topic)

    def dead_letters(self) -> list[Any]:
        return self.read_topic(self.settings.promo_dlq_topic)


def fresh_pipeline(
    stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Pipeline:
    """A new database, topics and state dir on the stack, set in the env via `monkeypatch`."""
    suffix = uuid.uuid4().hex[:10]
    env = {
        **stack_env,
        "POSTGRES_DB": f"test_{suffix}",
        "PROMO_INPUT_TOPIC": f"campaigns_{suffix}",
        "PROMO_OUTPUT_TOPIC": f"triggers_{suffix}",
        "PROMO_DLQ_TOPIC": f"dlq_{suffix}",
        "PROMO_STATE_DIR": str(tmp_path / "state"),
    }
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "POSTGRES_", "PROMO_", "SPARK_MASTER")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    admin = psycopg.connect(conninfo(settings, dbname=stack_env["POSTGRES_DB"]), autocommit=True)
    with admin:
        admin.execute(f'CREATE DATABASE "{settings.postgres_db}"')
    init_db(settings)
    ensure_topics(kafka_resource(settings))
    return Pipeline(settings=settings, env=env)


def insert_campaign(pipeline: Pipeline, document: dict[str, object]) -> None:
    """A row written straight into the state table, past the validation (an old version, a
    restore, a hand edit)."""
    pipeline.sql(
        "INSERT INTO promo.campaigns (adv_campaign_id, restaurant_id, adv_campaign_content, "
        "adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, "
        "adv_campaign_datetime_end, datetime_created, kafka_partition, kafka_offset) "
        "VALUES (%(adv_campaign_id)s, %(restaurant_id)s, %(adv_campaign_content)s, "
        "%(adv_campaign_owner)s, %(adv_campaign_owner_contact)s, "
        "%(adv_campaign_datetime_start)s, %(adv_campaign_datetime_end)s, "
        "%(datetime_created)s, 0, 0)",
        document,
    )


def millisecond_campaign() -> dict[str, object]:
    now_ms = int(time.time()) * 1000
    return campaign(
        adv_campaign_datetime_start=now_ms + 60_000,
        adv_campaign_datetime_end=now_ms + 3_600_000,
        datetime_created=now_ms,
    )
