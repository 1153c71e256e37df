"""Helpers for tests that run `promo run` as a separate process: to kill it, pause it at a
fault point (see `promo_pipeline.faultpoints`), or race two of them; and the recovery check."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from promo_pipeline.message_shapes import TRIGGER_COLUMNS
from promo_pipeline.settings import Settings
from promo_pipeline_tests.support.pipeline import Pipeline, new_uuid

REPO = Path(__file__).resolve().parents[2]
OWN_PREFIXES = ("KAFKA_", "POSTGRES_", "PROMO_", "SPARK_MASTER", "DAGSTER_")


def settings_of(env: dict[str, str]) -> Settings:
    """Settings from exactly `env` (no stack.env fallback, no process environment)."""
    return Settings(_env_file=None, **{name.lower(): value for name, value in env.items()})


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Wait until `check()` is truthy and return it; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class ChildRun:
    """`promo run` in its own process group, output in a log file.

    Its own session, so SIGKILL reaches the whole run: the Python driver, the Spark JVM it
    started and the JVM's Python workers, as when a container or host dies.
    """

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *,
        fault_at: str | None = None,
        fault_dir: Path | None = None,
    ) -> None:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
        # Spark's Python workers must be this interpreter (pyarrow etc.), not `python3` on PATH.
        child_env |= {"PYSPARK_PYTHON": sys.executable, **env}
        if fault_at is not None:
            assert fault_dir is not None
            fault_dir.mkdir(parents=True, exist_ok=True)
            child_env |= {"PROMO_FAULT_AT": fault_at, "PROMO_FAULT_DIR": str(fault_dir)}
        self.fault_at = fault_at
        self.fault_dir = fault_dir
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "promo_pipeline.cli", "run"],
                env=child_env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def point(self) -> str:
        """The first point armed (`PROMO_FAULT_AT` may arm several, `<point>@<n>` each)."""
        assert self.fault_at is not None
        return self.fault_at.split(",")[0].partition("@")[0]

    def reached(self) -> bool:
        assert self.fault_dir is not None
        return (self.fault_dir / f"{self.point}.reached").exists()

    def wait_reached(self, timeout: float = 300.0) -> None:
        """Block until the run pauses at its fault point; fail if it ends first."""

        def check() -> bool:
            if self.reached():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"run ended (exit {self.proc.returncode}) before reaching {self.fault_at}:\n"
                    f"{self.output[-3000:]}"
                )
            return False

        poll(check, timeout, f"the run to reach {self.fault_at}")

    def release(self, *, fail: bool = False) -> None:
        assert self.fault_dir is not None
        (self.fault_dir / f"{self.point}.release").write_text("fail" if fail else "go")

    def wait(self, timeout: float = 300.0) -> int:
        """The exit code; a run still going after `timeout` is killed and the test fails."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"run did not end within {timeout:.0f} s:\n{self.output[-3000:]}"
            ) from None

    def kill(self) -> None:
        """SIGKILL to the run's whole process group, then wait until none of it is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

        def group_gone() -> bool:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return True
            return False

        poll(group_gone, 30, "the killed run's processes to exit")

    def stop(self) -> None:
        """Make sure nothing of this run outlives the test."""
        if self.proc.poll() is None:
            self.kill()


def wait_topics_ready(settings: Settings, timeout: float = 90.0) -> None:
    """After a broker restart: every partition of the pipeline's topics has a leader again."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    topics = (settings.promo_input_topic, settings.promo_output_topic, settings.promo_dlq_topic)

    def ready() -> bool:
        try:
            metadata = admin.list_topics(timeout=5).topics
        except KafkaException:
            return False
        return all(
            name in metadata
            and metadata[name].error is None
            and all(p.leader >= 0 and p.error is None for p in metadata[name].partitions.values())
            for name in topics
        )

    poll(ready, timeout, "the topics' partitions to have leaders", interval=0.5)
    # Leaders are known; also make sure offsets can be read from each.
    poll(lambda: _offsets_readable(settings, topics), timeout, "offsets to be readable", 0.5)


def _offsets_readable(settings: Settings, topics: tuple[str, ...]) -> bool:
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"w-{new_uuid()}"}
    )
    try:
        for topic in topics:
            partitions = consumer.list_topics(topic, timeout=5).topics[topic].partitions
            for p in partitions:
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
        return True
    except KafkaException:
        return False
    finally:
        consumer.close()


def output_count(settings: Settings) -> int:
    """Messages in the output topic now (sum of the partitions' end offsets)."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"w-{new_uuid()}"}
    )
    try:
        topic = settings.promo_output_topic
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


@dataclass
class Recovery:
    """The state after recovery, against the expected set of (campaign, client) pairs."""

    problems: list[str] = field(default_factory=list)
    messages: int = 0
    duplicates: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_recovered(pipeline: Pipeline, expected: set[tuple[str, str]]) -> Recovery:
    """Exactly the expected pairs in Postgres, each once; each in Kafka at least once, keyed by
    its client, equal to its Postgres row; every repeat byte-identical; nothing pending."""
    result = Recovery()
    rows = pipeline.feedback()
    pairs = [(row["adv_campaign_id"], row["client_id"]) for row in rows]
    if len(pairs) != len(set(pairs)):
        result.problems.append(f"{len(pairs) - len(set(pairs))} pairs twice in Postgres")
    if set(pairs) != expected:
        result.problems.append(
            f"Postgres pairs: {len(set(pairs) - expected)} unexpected, "
            f"{len(expected - set(pairs))} missing"
        )
    by_pair = {(row["adv_campaign_id"], row["client_id"]): row for row in rows}
    pending = pipeline.sql("SELECT count(*) FROM promo.unsent_triggers")[0][0]
    if pending:
        result.problems.append(f"{pending} triggers still in the outbox")
    first: dict[tuple[str, str], tuple[bytes, bytes]] = {}
    messages = pipeline.output()
    result.messages = len(messages)
    for message in messages:
        value = json.loads(message.value())
        pair = (value["adv_campaign_id"], value["client_id"])
        seen = first.setdefault(pair, (message.key(), message.value()))
        if seen != (message.key(), message.value()):
            result.problems.append(f"repeat of {pair} differs: {seen} vs {message.value()!r}")
        if message.key() != value["client_id"].encode():
            result.problems.append(f"{pair} keyed {message.key()!r}")
        row = by_pair.get(pair)
        if row is None:
            result.problems.append(f"{pair} in Kafka but not in Postgres")
        elif list(value) != list(TRIGGER_COLUMNS) or any(
            value[name] != row[name] for name in TRIGGER_COLUMNS
        ):
            result.problems.append(f"{pair} in Kafka differs from its Postgres row")
    missing = expected - set(first)
    if missing:
        result.problems.append(f"{len(missing)} expected triggers not in Kafka")
    result.duplicates = len(messages) - len(first)
    return result
