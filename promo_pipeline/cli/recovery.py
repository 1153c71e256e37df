"""`promo rewind` and `promo dlq replay`: the operator's tools to re-read the input and to
re-send dead letters once their cause is fixed."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from promo_pipeline.checkpoint import (
    CheckpointError,
    committed_offsets,
    describe_gaps,
    record_event,
    recorded_reads,
    recorded_topic_id,
    set_aside,
    start_file,
    topic_id,
)
from promo_pipeline.cli.common import UsageError, UserError, add_command
from promo_pipeline.cli.kafka import Publisher, require_topic
from promo_pipeline.db import PIPELINE_LOCK, conninfo
from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.message_shapes import REJECTION_CODES, epoch_out_of_range
from promo_pipeline.settings import RunOptions, Settings, load_settings
from promo_pipeline.topics import KAFKA_TIMEOUT_S, topic_watermarks

# Offsets as Spark's startingOffsets names them: a partition's start, or its end.
EARLIEST, LATEST = -2, -1
READ_TIMEOUT_S = 60


def _parse_offsets(value: str) -> dict[int, int]:
    problem = UsageError(f"--to-offsets expects PARTITION:OFFSET,... (e.g. 0:10,1:4): {value!r}")
    try:
        pairs = [item.split(":") for item in value.split(",") if item.strip()]
        offsets = {int(p): int(o) for p, o in pairs}
    except ValueError:
        raise problem from None
    if not offsets or any(p < 0 or o < 0 for p, o in offsets.items()):
        raise problem
    return offsets


def _parse_time(value: str) -> int:
    """Epoch seconds or an ISO 8601 time (UTC unless it says otherwise), as epoch ms; a time
    outside the range campaign times may have (a millisecond epoch, the far future) is
    refused, as the input validation refuses it."""
    if re.fullmatch(r"-?\d+", value.strip()):
        seconds = int(value)
    else:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                "--to-time expects epoch seconds or an ISO time like 2026-11-26T09:00:00Z: "
                f"{value!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = int(when.timestamp())
    problem = epoch_out_of_range(seconds)
    if problem:
        raise UsageError(f"--to-time {value}: {problem}")
    return seconds * 1000


def rewind(
    settings: Settings,
    *,
    to_offsets: dict[int, int] | None = None,
    to_time_ms: int | None = None,
    skip_unread: bool = False,
) -> str:
    """Set the checkpoint aside and name where the next run starts (all partitions at their
    start unless offsets or a time say otherwise); refused while a run holds the lock, and,
    unless `skip_unread`, when it would move past messages no run has read. What it skips is
    recorded as a rewind event, which `promo status` shows."""
    kafka = settings.config_for(KafkaConfig)
    topic = kafka.input_topic
    require_topic(settings, topic)
    checkpoint = settings.config_for(RunOptions).checkpoint_dir
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        # Held until the end of this block, so no run starts while the files move.
        key = PIPELINE_LOCK
        if not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]:
            raise UserError(
                "a promo_pipeline run holds the pipeline lock; rewind refused (wait for the run "
                "to end: `promo status`)"
            )
        identity = topic_id(kafka, topic)
        watermarks = topic_watermarks(kafka, topic)
        target = _rewind_target(kafka, topic, watermarks, to_offsets, to_time_ms)
        where = ", ".join(
            f"p{p} at {'its start' if o == EARLIEST else 'its end' if o == LATEST else o}"
            for p, o in sorted(target.items())
        )
        skipped = _skipped(conn, kafka, checkpoint, identity, watermarks, target)
        count = sum(end - start for start, end in skipped.values())
        if count and not skip_unread:
            raise UsageError(
                f"rewinding {topic} to read {where} skips {count} messages no run has read "
                f"({describe_gaps(skipped)}); they would never be read: add --yes to skip "
                "them (recorded in `promo status`), or rewind to an earlier point"
            )
        moved = set_aside(checkpoint, "rewound")
        start = start_file(checkpoint)
        start.parent.mkdir(parents=True, exist_ok=True)
        # "Its end" is the end now: what arrives after the rewind is read, not skipped too.
        offsets = {str(p): watermarks[p][1] if o == LATEST else o for p, o in target.items()}
        start.write_text(json.dumps({"topic_id": identity, "offsets": {topic: offsets}}))
        detail = {
            "offsets": offsets,
            "reads": where,
            "old_checkpoint": str(moved) if moved else None,
            "skipped": count,
            "skipped_ranges": {str(p): [s, e] for p, (s, e) in sorted(skipped.items())},
        }
        record_event(conn, None, topic, "rewind", detail)
    kept = f"; the old checkpoint is kept in {moved}" if moved else ""
    lost = f"; SKIPPED {count} unread messages ({describe_gaps(skipped)})" if count else ""
    return f"rewound {topic}: the next run reads {where}{lost}{kept}"


def _skipped(
    conn: Any,
    kafka: KafkaConfig,
    checkpoint: str,
    identity: str,
    watermarks: dict[int, tuple[int, int]],
    target: dict[int, int],
) -> dict[int, tuple[int, int]]:
    """Per partition, the offsets [from, to) that no run has read and the rewind moves past:
    read means below the checkpoint (if it is this topic's and readable) or below what runs
    recorded in promo.input_offsets."""
    topic = kafka.input_topic
    read = recorded_reads(conn, topic, identity)
    if recorded_topic_id(conn, topic) in (None, identity):
        try:
            done = committed_offsets(checkpoint)
        except CheckpointError:
            done = {}
        for (name, p), o in done.items():
            if name == topic:
                read[p] = max(read.get(p, 0), o)
    skipped = {}
    for p, (low, high) in watermarks.items():
        start = min(high, {EARLIEST: low, LATEST: high}.get(target[p], target[p]))
        unread_from = max(low, read.get(p, 0))
        if start > unread_from:
            skipped[p] = (unread_from, start)
    return skipped


def _rewind_target(
    kafka: KafkaConfig,
    topic: str,
    watermarks: dict[int, tuple[int, int]],
    to_offsets: dict[int, int] | None,
    to_time_ms: int | None,
) -> dict[int, int]:
    """Where each partition starts: the given offset, the first at or after the time, or
    the partition's start; UserError for a partition or offset the topic does not have."""
    if to_offsets is not None:
        unknown = sorted(set(to_offsets) - set(watermarks))
        if unknown:
            raise UsageError(f"topic {topic} has no partition {unknown[0]}")
        past = {p: o for p, o in to_offsets.items() if o > watermarks[p][1]}
        if past:
            p, o = min(past.items())
            raise UsageError(f"offset {o} is past the end of {topic} p{p} ({watermarks[p][1]})")
        return {p: to_offsets.get(p, EARLIEST) for p in watermarks}
    if to_time_ms is None:
        return {p: EARLIEST for p in watermarks}
    consumer = Consumer(kafka.client_config(**{"group.id": "promo_cli.rewind"}))
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, to_time_ms) for p in watermarks], timeout=KAFKA_TIMEOUT_S
        )
    finally:
        consumer.close()
    # No message at or after the time in a partition: start at its end.
    return {tp.partition: tp.offset if tp.offset >= 0 else LATEST for tp in found}


def cmd_rewind(args: argparse.Namespace) -> int:
    """move the input checkpoint (re-read, skip, or repair it)

    Set the Spark checkpoint aside (kept next to it) and name where the next run starts
    reading the input topic: its beginning, the first message at or after a time, or
    given offsets. Refused while a run holds the pipeline lock. A rewind that moves past
    messages no run has read says how many and needs --yes; `promo status` then lists them
    as skipped. Re-read campaigns never
    trigger twice: the ledger allows one trigger per campaign and client.

    examples:
    promo rewind --to-beginning
    promo rewind --to-time 2026-11-26T09:00:00Z
    promo rewind --to-offsets 0:10,1:10,2:6
    promo rewind --to-time 2026-11-26T09:00:00Z --yes
    """
    settings = load_settings()
    if args.to_offsets is not None:
        target = {"to_offsets": _parse_offsets(args.to_offsets)}
    elif args.to_time is not None:
        target = {"to_time_ms": _parse_time(args.to_time)}
    else:
        target = {}
    print(rewind(settings, skip_unread=args.yes, **target))
    return 0


# Replayed origins are marked after each chunk is acknowledged: a crash in between re-sends
# at most one chunk on the next replay.
REPLAY_CHUNK = 500

MARK_REPLAYED = """
INSERT INTO promo.dead_letters AS d (topic, topic_id, partition, "offset", code, replayed_at)
VALUES (%s, %s, %s, %s, %s, now())
ON CONFLICT (topic, topic_id, partition, "offset") DO UPDATE SET replayed_at = now()
"""
REPLAYED = """
SELECT topic, topic_id, partition, "offset" FROM promo.dead_letters
WHERE replayed_at IS NOT NULL
  AND (topic, topic_id, partition, "offset") IN (
      SELECT * FROM unnest(%s::text[], %s::text[], %s::int4[], %s::int8[]))
"""

Origin = tuple[str, str, int, int]  # input topic, its Kafka id, partition, offset


@dataclass
class Replay:
    """What `promo dlq replay` did: re-sent, left out for another reason, and dead letters
    whose origin an earlier replay (or this one) already re-sent."""

    sent: int = 0
    other_reasons: int = 0
    replayed_before: int = 0


def dlq_replay(settings: Settings, reason: str | None = None) -> Replay:
    """Re-send the DLQ's messages (those of one reason code, or all) to the input topic, key
    and value unchanged, without the promo.* headers: each origin (input topic, partition,
    offset) once, ever; a re-sent message rejected again is a new origin, so replay, run,
    replay re-sends it once more, never its earlier copies."""
    if reason is not None and reason not in REJECTION_CODES:
        raise UsageError(
            f"--reason {reason!r} is not a rejection code; known codes: "
            + ", ".join(REJECTION_CODES)
        )
    kafka = settings.config_for(KafkaConfig)
    require_topic(settings, kafka.dlq_topic)
    require_topic(settings, kafka.input_topic)
    publisher = Publisher(kafka, kafka.input_topic, "re-send to")
    replay = Replay()
    chunk: list[tuple[Origin, str, Any]] = []
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        for message in _dead_letters(kafka):
            headers = dict(message.headers() or [])
            code = headers.get("promo.reject.code", b"").decode(errors="replace")
            if reason is not None and code != reason:
                replay.other_reasons += 1
                continue
            chunk.append((_origin(message, headers), code, message))
            if len(chunk) == REPLAY_CHUNK:
                _replay_chunk(conn, publisher, chunk, replay)
                chunk = []
        _replay_chunk(conn, publisher, chunk, replay)
    return replay


def _origin(message: Any, headers: dict[str, bytes]) -> Origin:
    """The input message a dead letter came from: its promo.source headers, or the dead
    letter's own coordinates when they are missing (a message put in the DLQ by hand)."""
    source = headers.get("promo.source", b"").decode(errors="replace")
    topic_id = headers.get("promo.source.topic_id", b"").decode(errors="replace")
    topic, _, rest = source.partition("/")
    partition, _, offset = rest.partition("/")
    if partition.isdigit() and offset.isdigit():
        return topic, topic_id, int(partition), int(offset)
    return message.topic(), "dlq", message.partition(), message.offset()


def _replay_chunk(
    conn: Any, publisher: Publisher, chunk: list[tuple[Origin, str, Any]], replay: Replay
) -> None:
    """Re-send the chunk's dead letters whose origin was never replayed, then mark them."""
    if not chunk:
        return
    columns = list(zip(*(origin for origin, _, _ in chunk), strict=True))
    done = {tuple(row) for row in conn.execute(REPLAYED, [list(c) for c in columns])}
    marks = []
    for origin, code, message in chunk:
        if origin in done:
            replay.replayed_before += 1
            continue
        done.add(origin)
        kept = [(n, d) for n, d in message.headers() or [] if not n.startswith("promo.")]
        publisher.publish(message.key(), message.value(), headers=kept)
        marks.append((*origin, code))
        replay.sent += 1
    publisher.flush()
    with conn.cursor() as cursor:
        cursor.executemany(MARK_REPLAYED, marks)


def _dead_letters(kafka: KafkaConfig) -> Iterator[Any]:
    """Each message in the DLQ up to its end as of now (what arrives meanwhile waits for the
    next replay), one at a time, as a DLQ may hold many large messages; UserError if they
    cannot all be read within READ_TIMEOUT_S."""
    topic = kafka.dlq_topic
    ends = topic_watermarks(kafka, topic)
    consumer = Consumer(
        kafka.client_config(**{"group.id": "promo_cli.dlq_replay", "enable.auto.commit": False})
    )
    try:
        left = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
        deadline = time.monotonic() + READ_TIMEOUT_S
        while left and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error() is not None:
                continue
            if message.offset() >= ends[message.partition()][1] - 1:
                left.discard(message.partition())
            if message.offset() < ends[message.partition()][1]:
                yield message
        if left:
            raise UserError(f"could not read {topic} to its end within {READ_TIMEOUT_S} s")
    finally:
        consumer.close()


def cmd_dlq(args: argparse.Namespace) -> int:
    """re-send dead letters to the input topic

    `replay` re-sends the DLQ's messages (all, or those of one reason code) to the input
    topic with their key and value unchanged and without the promo.* headers, once their
    cause is fixed (a cancelled campaign's original published, a producer fixed). The DLQ
    keeps them; each rejected input message is re-sent once, however often replay runs (one
    rejected again after its replay is a new dead letter, re-sent by the next replay).

    examples:
    promo dlq replay
    promo dlq replay --reason end_not_after_start
    """
    settings = load_settings()
    replay = dlq_replay(settings, args.reason)
    which = f" with reason {args.reason}" if args.reason else ""
    notes = [
        f"{replay.replayed_before} whose origin was already re-sent by a replay"
        if replay.replayed_before
        else "",
        f"{replay.other_reasons} with other reasons left out" if replay.other_reasons else "",
    ]
    said = "; ".join(note for note in notes if note)
    done = (
        f"re-sent {replay.sent} dead letters{which} to {settings.promo_input_topic}"
        if replay.sent
        else f"nothing re-sent: no dead letters{which} left to replay"
    )
    print(done + (f" ({said})" if said else ""))
    return 0


def add_parser(commands: Any) -> None:
    rewind_ = add_command(commands, "rewind", cmd_rewind)
    target = rewind_.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-beginning", action="store_true", help="every partition's start")
    target.add_argument("--to-time", metavar="T", help="epoch seconds or ISO time (UTC)")
    target.add_argument("--to-offsets", metavar="P:O,...", help="offsets per partition")
    rewind_.add_argument(
        "--yes", action="store_true", help="skip the unread messages the rewind moves past"
    )
    dlq = add_command(commands, "dlq", cmd_dlq)
    dlq.add_argument("action", choices=["replay"])
    dlq.add_argument("--reason", metavar="CODE", help="only this promo.reject.code")
