"""The input's position: Spark's checkpoint, checked before a run trusts it, and what the
pipeline remembers in Postgres about the input topic (its Kafka topic id, the offsets each run
read, and the losses and rewinds it saw).

Spark alone reads a recreated topic on from stale offsets (skipping what lies below them) or
fails for ever ("offset was changed"), and fails for ever on offsets deleted before they were
read ("Some data may have been lost"). Both are decided here, before the query starts.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg.types.json import Jsonb

from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.topics import KAFKA_TIMEOUT_S, topic_watermarks

log = logging.getLogger(__name__)

# Offsets the next run starts from when the checkpoint is fresh, written by `promo rewind`.
START_FILE = "start.json"


class CheckpointError(RuntimeError):
    """A checkpoint file Spark could not read; the message names it and the fix."""


class InputError(RuntimeError):
    """The input cannot be read as configured (missing topic, unwritable state dir)."""


def _commits_and_offsets(root: Path) -> tuple[list[int], list[int]]:
    def batches(name: str) -> list[int]:
        folder = root / name
        return sorted(int(p.name) for p in folder.glob("[0-9]*") if p.name.isdigit())

    return (batches("commits"), batches("offsets")) if root.exists() else ([], [])


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError as error:  # e.g. commits/N without its offsets/N
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or error})") from None


def _read_offsets(path: Path) -> dict[tuple[str, int], int]:
    """The sources' end offsets of one `offsets/N` file; CheckpointError if it is damaged."""
    lines = _lines(path)
    if len(lines) < 3 or lines[0] != "v1":
        raise CheckpointError(f"{path}: truncated ({len(lines)} of at least 3 lines)")
    offsets: dict[tuple[str, int], int] = {}
    try:
        json.loads(lines[1])
        for line in lines[2:]:
            for topic, partitions in json.loads(line).items():
                offsets |= {(topic, int(p)): int(o) for p, o in partitions.items()}
    except (ValueError, AttributeError, TypeError):
        raise CheckpointError(f"{path}: truncated or not JSON") from None
    return offsets


def _check_commit(path: Path) -> None:
    lines = _lines(path)
    try:
        if len(lines) < 2 or lines[0] != "v1" or not isinstance(json.loads(lines[1]), dict):
            raise ValueError
    except ValueError:
        raise CheckpointError(f"{path}: truncated or not JSON") from None


def committed_offsets(checkpoint_dir: str | Path) -> dict[tuple[str, int], int]:
    """Exclusive end offsets of the last micro-batch the checkpoint marks as done.

    The newest `commits/N` and `offsets/N` files are the ones Spark reads on start; a damaged
    one raises CheckpointError naming the file and the `promo rewind` that repairs it.
    """
    root = Path(checkpoint_dir)
    commits, offsets = _commits_and_offsets(root)
    try:
        if offsets:
            _read_offsets(root / "offsets" / str(offsets[-1]))
        if not commits:
            return {}
        _check_commit(root / "commits" / str(commits[-1]))
        return _read_offsets(root / "offsets" / str(commits[-1]))
    except CheckpointError as error:
        raise CheckpointError(f"Spark checkpoint file {error}; {_repair(root)}") from None


def initial_offsets(checkpoint_dir: str | Path) -> dict[tuple[str, int], int]:
    """Where the query on this checkpoint started reading (Spark's Kafka source writes it to
    sources/0/0 before its first batch); {} if there is none or it cannot be read."""
    path = Path(checkpoint_dir, "sources", "0", "0")
    try:
        lines = path.read_text(errors="replace").lstrip("\x00").splitlines()
        return {
            (topic, int(p)): int(o)
            for line in lines[1:]
            for topic, partitions in json.loads(line).items()
            for p, o in partitions.items()
        }
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _repair(root: Path) -> str:
    """The rewind that repairs a damaged checkpoint: to the newest readable batch."""
    commits, _ = _commits_and_offsets(root)
    for batch in reversed(commits):
        try:
            _check_commit(root / "commits" / str(batch))
            good = _read_offsets(root / "offsets" / str(batch))
        except CheckpointError:
            continue
        where = ",".join(f"{p}:{o}" for (_, p), o in sorted(good.items()))
        return (
            f"fix: `promo rewind --to-offsets {where}` (after batch {batch}, the last good one) "
            "or `promo rewind --to-beginning`"
        )
    return "fix: `promo rewind --to-beginning` (no readable batch left)"


def topic_id(kafka: KafkaConfig, topic: str, timeout: float = KAFKA_TIMEOUT_S) -> str:
    """The topic's Kafka id (KIP-516): a recreated topic of the same name has a new one."""
    admin = AdminClient(kafka.client_config(log_level=0))
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
    try:
        description = future.result(timeout)
    except KafkaException as error:
        if error.args and error.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise InputError(
                f"input topic {topic} does not exist on {kafka.bootstrap_servers} "
                "(`promo stack up` creates it; check PROMO_INPUT_TOPIC)"
            ) from None
        raise
    return str(description.topic_id)


@dataclass
class InputPosition:
    """Where the pipeline stands on the input topic, as the sensor and status see it."""

    topic: str
    topic_id: str
    watermarks: dict[int, tuple[int, int]]
    read_to: dict[int, int]
    recreated_from: str | None = None  # the recorded id, when the topic's id changed
    corrupt: str | None = None  # the CheckpointError's message, or why it is missing
    missing: bool = False  # no checkpoint, though runs have read the topic (see `corrupt`)
    gaps: dict[int, tuple[int, int]] = field(default_factory=dict)  # lost [from, to)

    @property
    def lag(self) -> dict[int, int]:
        """Messages a run would read: all of a recreated topic, nothing past a corrupt file."""
        if self.corrupt:
            return {p: 0 for p in self.watermarks}
        return {
            p: max(0, high - max(low, self.read_to.get(p, 0)))
            for p, (low, high) in self.watermarks.items()
        }

    @property
    def waiting(self) -> int:
        """Messages a run would read, over all partitions."""
        return sum(self.lag.values())

    @property
    def lost(self) -> int:
        return sum(end - start for start, end in self.gaps.values())


def recorded_topic_id(conn: psycopg.Connection, topic: str) -> str | None:
    row = conn.execute(
        "SELECT topic_id FROM promo.input_topics WHERE topic = %s", (topic,)
    ).fetchone()
    return row[0] if row else None


def input_position(
    kafka: KafkaConfig, conn: psycopg.Connection, checkpoint_dir: str | Path
) -> InputPosition:
    """The input's state without changing anything (the sensor and `promo status`)."""
    topic = kafka.input_topic
    current = topic_id(kafka, topic)
    watermarks = topic_watermarks(kafka, topic)
    position = InputPosition(topic, current, watermarks, {})
    try:
        done = committed_offsets(checkpoint_dir)
    except CheckpointError as error:
        position.corrupt = str(error)
        return position
    recorded = recorded_topic_id(conn, topic)
    read_to = {p: o for (t, p), o in done.items() if t == topic}
    stale = any(read_to.get(p, 0) > high for p, (_, high) in watermarks.items())
    if recorded is not None and recorded != current:
        position.recreated_from = recorded
        return position
    if stale:  # no id recorded yet, or the broker lost the log: only the offsets tell
        position.recreated_from = "unknown (the checkpoint is past the topic's end)"
        return position
    if not read_to and not start_file(checkpoint_dir).exists():
        read = recorded_reads(conn, topic, current)
        if read:
            position.missing = True
            position.corrupt = (
                f"the Spark checkpoint {checkpoint_dir} is missing or empty, but runs have "
                f"read {topic} up to {_describe_offsets(read)} (promo.input_offsets): a run "
                "would read it all again (is the state volume unmounted?); fix: restore "
                "PROMO_STATE_DIR, or `promo rewind` to accept where to read from"
            )
            return position
    position.read_to = read_to
    position.gaps = {
        p: (read_to[p], low)
        for p, (low, _) in watermarks.items()
        if p in read_to and read_to[p] < low
    }
    if not read_to and start_file(checkpoint_dir).exists():
        # A rewind is pending: the next run reads from its offsets, not from the start.
        offsets = json.loads(start_file(checkpoint_dir).read_text())["offsets"].get(topic, {})
        position.read_to = {
            p: low if int(offsets.get(str(p), -2)) < 0 else min(high, int(offsets[str(p)]))
            for p, (low, high) in watermarks.items()
        }
    return position


def start_file(checkpoint_dir: str | Path) -> Path:
    """Where `promo rewind` leaves the next run's start: the state dir, two levels above the
    checkpoint (settings.checkpoint_dir)."""
    return Path(checkpoint_dir).parents[1] / START_FILE


def recorded_reads(conn: psycopg.Connection, topic: str, topic_id: str) -> dict[int, int]:
    """Per partition, the end of what runs have read of this topic (this id), by the offsets
    they recorded: what the database knows was read, whatever the checkpoint says."""
    return dict(
        conn.execute(
            "SELECT partition, max(end_offset) FROM promo.input_offsets "
            "WHERE topic = %s AND topic_id = %s AND end_offset > start_offset "
            "GROUP BY partition",
            (topic, topic_id),
        ).fetchall()
    )


def _describe_offsets(offsets: dict[int, int]) -> str:
    return ", ".join(f"p{p} {o}" for p, o in sorted(offsets.items()))


def record_event(
    conn: psycopg.Connection, run_id: str | None, topic: str, kind: str, detail: dict[str, Any]
) -> None:
    conn.execute(
        "INSERT INTO promo.input_events (run_id, topic, kind, detail) VALUES (%s, %s, %s, %s)",
        (run_id, topic, kind, Jsonb(detail)),
    )


def set_aside(checkpoint_dir: str | Path, why: str) -> Path | None:
    """Move the checkpoint out of Spark's way (kept for inspection); None if there is none."""
    root = Path(checkpoint_dir)
    if not root.exists():
        return None
    target = root.with_name(f"{root.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}")
    suffix = 0
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.name.split('~')[0]}~{suffix}")
    shutil.move(root, target)
    return target


@dataclass
class InputPlan:
    """How this run reads the input, decided before the streaming query starts."""

    topic_id: str
    starting_offsets: str = "earliest"
    fail_on_data_loss: bool = True
    recreated: dict[str, Any] | None = None
    gaps: dict[int, tuple[int, int]] = field(default_factory=dict)
    waiting: int = 0  # messages past the checkpoint when the run looked

    @property
    def lost(self) -> int:
        return sum(end - start for start, end in self.gaps.values())


def check_state_dir(state_dir: str | Path) -> None:
    """Spark writes its checkpoint here: say so in one line when it cannot."""
    root = Path(state_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".promo-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise InputError(
            f"PROMO_STATE_DIR {root} is not writable ({error.strerror or error}); "
            "point it at a writable folder on shared storage"
        ) from None


def plan_input(
    kafka: KafkaConfig, conninfo: str, state_dir: str, checkpoint_dir: str, run_id: str
) -> InputPlan:
    """Check the state dir, the checkpoint and the topic's identity; set aside a checkpoint
    of a recreated topic, record retention gaps; returns how to start the query."""
    check_state_dir(state_dir)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        position = input_position(kafka, conn, checkpoint_dir)
        if position.corrupt:
            raise CheckpointError(position.corrupt)
        topic = kafka.input_topic
        plan = InputPlan(position.topic_id, waiting=position.waiting)
        if position.recreated_from:
            moved = set_aside(checkpoint_dir, "recreated")
            start_file(checkpoint_dir).unlink(missing_ok=True)
            plan.recreated = {
                "previous_topic_id": position.recreated_from,
                "topic_id": position.topic_id,
                "old_checkpoint": str(moved) if moved else None,
            }
            record_event(conn, run_id, topic, "topic_recreated", plan.recreated)
            log.warning(
                "input topic %s was recreated (topic id %s, was %s): reading it from its "
                "start; the old checkpoint is kept in %s",
                topic,
                position.topic_id,
                position.recreated_from,
                moved,
            )
        if position.gaps:
            plan.gaps = position.gaps
            plan.fail_on_data_loss = False
            detail = {
                "topic_id": position.topic_id,
                "lost": plan.lost,
                "ranges": {str(p): [s, e] for p, (s, e) in sorted(plan.gaps.items())},
            }
            record_event(conn, run_id, topic, "retention_gap", detail)
            log.error(
                "input topic %s: %s offsets were deleted before they were read (%s); reading "
                "on from what exists",
                topic,
                plan.lost,
                describe_gaps(plan.gaps),
            )
        conn.execute(
            "INSERT INTO promo.input_topics (topic, topic_id) VALUES (%s, %s) "
            "ON CONFLICT (topic) DO UPDATE SET topic_id = excluded.topic_id, updated_at = now()",
            (topic, position.topic_id),
        )
    start = start_file(checkpoint_dir)
    if start.exists():
        if committed_offsets(checkpoint_dir):
            start.unlink()  # a run already started from it
        else:
            plan.starting_offsets = json.dumps(json.loads(start.read_text())["offsets"])
            # A rewind target below the low watermark is a gap the operator chose.
            plan.fail_on_data_loss = False
    return plan


def describe_gaps(gaps: dict[int, tuple[int, int]]) -> str:
    return ", ".join(f"p{p} offsets {s}..{e - 1}" for p, (s, e) in sorted(gaps.items()))


def record_offsets(
    conninfo: str, run_id: str, topic: str, topic_id: str, ranges: dict[int, tuple[int, int]]
) -> None:
    """The offset history: which offsets of which topic (by id) each run read."""
    with psycopg.connect(conninfo) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO promo.input_offsets "
            "(run_id, topic, topic_id, partition, start_offset, end_offset) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(run_id, topic, topic_id, p, s, e) for p, (s, e) in sorted(ranges.items())],
        )


def commit_group_offsets(kafka: KafkaConfig, offsets: dict[int, int]) -> str | None:
    """Commit the checkpoint's read positions of the input topic to `kafka.consumer_group`, so
    kafka-consumer-groups, Burrow and Kafka UIs show the pipeline's lag; None when committed,
    else why not.

    Informational only: Spark never reads it back (the checkpoint stays the truth), so a failed
    commit is reported, never fatal. No subscription: a commit to a group without members
    needs none.
    """
    if not offsets:
        return None
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": kafka.consumer_group,
                "enable.auto.commit": False,
                "socket.timeout.ms": int(KAFKA_TIMEOUT_S * 1000),
                "log_level": 0,
            }
        )
    )
    try:
        committed = consumer.commit(
            offsets=[TopicPartition(kafka.input_topic, p, o) for p, o in sorted(offsets.items())],
            asynchronous=False,
        )
        failed = [f"p{tp.partition}: {tp.error}" for tp in committed or [] if tp.error]
        return "; ".join(failed) or None
    except KafkaException as error:
        return str(error.args[0] if error.args else error)
    finally:
        consumer.close()
