"""Fixtures: one real stack (Kafka, Postgres) per test session, one Spark session, and a
fresh database, topics and checkpoint per test so tests never see each other's data."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from promo_pipeline.db import conninfo, init_db
from promo_pipeline.resources import kafka_resource
from promo_pipeline.settings import Settings, load_settings
from promo_pipeline.stack import LocalStack
from promo_pipeline.topics import ensure_topics
from promo_pipeline_tests.support.stack import destroy

REPO = Path(__file__).resolve().parents[1]

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


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The embedded stack, started once for the whole session.

    Runs use an in-process Spark session ("local"), so what a test sets in its environment
    (fault points included) reaches the foreachBatch code; the Connect server that
    `promo stack up` starts by default is covered by test_stack and test_spark_cluster.
    """
    stack = LocalStack(tmp_path_factory.mktemp("stack"), spark="local")
    try:
        env = stack.up()
        yield {**env, "PROMO_STACK_DIR": str(stack.dir)}
    finally:
        destroy(stack)


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


@pytest.fixture
def pipeline(
    stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    """A fresh database, fresh topics and a fresh checkpoint, wired in through the env."""
    yield fresh_pipeline(stack_env, tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def module_pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """Like `pipeline`, shared by one module: for tests that run the job once and then check
    many outcomes of that one run."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield fresh_pipeline(stack_env, tmp_path_factory.mktemp("module"), monkeypatch)


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


@pytest.fixture
def dagster_home(pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Dagster instance on the repo's dagster.yaml, in a fresh database of the stack."""
    database = f"{pipeline.settings.postgres_db}_dagster"
    with psycopg.connect(conninfo(pipeline.settings), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_DB", database)
    return home
