"""`promo`: the local stack, the tables, one run of the job, a demo on sample data, and the
operator's recovery tools (rewind the input, replay dead letters)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources as package_files
from pathlib import Path
from typing import Any, NoReturn, TextIO

from promo_pipeline.settings import Settings, SettingsError, load_settings

DEFAULT_STACK_DIR = ".promo"
KAFKA_TIMEOUT_S = 10.0


class UserError(Exception):
    """Something the user can fix (a wrong argument, a stack that is down): one line, no
    traceback."""


def require_topic(settings: Settings, topic: str) -> None:
    """Fail in seconds, in one line, when Kafka is unreachable or the topic is missing."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from promo_pipeline.resources import kafka_resource

    # Quiet: librdkafka would print every reconnect attempt; the one line below says it all.
    admin = AdminClient(kafka_resource(settings).client_config(log_level=0))
    try:
        topics = admin.list_topics(timeout=KAFKA_TIMEOUT_S).topics
    except KafkaException:
        raise UserError(
            f"Kafka at {settings.kafka_bootstrap_servers} does not answer "
            "(is the stack up? `promo stack status`)"
        ) from None
    if topic not in topics:
        raise UserError(f"topic {topic} does not exist (`promo stack up` creates it)")


def _stack_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("PROMO_STACK_DIR", DEFAULT_STACK_DIR))


def cmd_stack(args: argparse.Namespace) -> int:
    from promo_pipeline.stack import LocalStack

    stack = LocalStack(_stack_dir(args), spark=args.spark)
    if args.action == "up":
        try:
            env = stack.up()
        except RuntimeError as error:
            # A missing tool or a service that would not start: its first line says which.
            raise UserError(f"stack up failed: {str(error).strip().splitlines()[0]}") from None
        os.environ.update(env)
        settings = load_settings()
        prepare(settings)
        for name, value in env.items():
            print(f"export {name}={value}")
    elif args.action == "down":
        stack.down()
        print(f"stack in {stack.dir} stopped (data kept)", file=sys.stderr)
    else:
        for service, running, where in stack.status():
            print(f"{service:<13} {'running' if running else 'stopped':<8} {where}")
    return 0


def prepare(settings: Settings) -> None:
    """Tables and topics, both created only where missing."""
    from promo_pipeline.db import init_db
    from promo_pipeline.resources import kafka_resource
    from promo_pipeline.topics import ensure_topics

    init_db(settings)
    created = ensure_topics(
        kafka_resource(settings),
        partitions=settings.promo_topic_partitions,
        replication_factor=settings.promo_topic_replication_factor,
    )
    if created:
        print(f"created topics: {', '.join(created)}", file=sys.stderr)


def cmd_db(args: argparse.Namespace) -> int:
    from promo_pipeline.db import upgrade

    before, after = upgrade(load_settings())
    change = f"upgraded from {before or 'none'} to {after}" if before != after else "up to date"
    print(
        f"schema promo at revision {after} ({change}); tables ready: "
        "public.subscribers_restaurants, public.subscribers_feedback, promo.*"
    )
    return 0


def send(
    settings: Settings,
    lines: Iterable[str],
    *,
    key: str | None = None,
    progress: bool = False,
) -> int:
    """Publish one message per non-empty line, as-is (like `kcat -P`); returns how many.

    Lines are not validated here: a bad one goes to the DLQ with its reason when the pipeline
    reads it, which is what happens to a restaurant's bad message too.
    """
    from confluent_kafka import KafkaException, Producer

    from promo_pipeline.resources import kafka_resource
    from promo_pipeline.topics import produce_all

    kafka = kafka_resource(settings)
    require_topic(settings, kafka.input_topic)
    producer = Producer(
        kafka.client_config(**{"enable.idempotence": True, "message.timeout.ms": 30_000})
    )
    errors: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            errors.append(str(error))

    count = 0
    shown = time.monotonic()
    encoded_key = key.encode() if key is not None else None
    for line in lines:
        if not line.strip():
            continue
        value = line.rstrip("\r\n").encode()
        try:
            produce_all(producer, kafka.input_topic, [(encoded_key, value)], on_delivery=delivered)
        except KafkaException as error:
            raise UserError(f"could not publish to {kafka.input_topic}: {error}") from None
        producer.poll(0)
        count += 1
        if progress and time.monotonic() - shown >= 1:
            print(f"  sent {count} ...", file=sys.stderr)
            shown = time.monotonic()
    left = producer.flush(60)
    if left or errors:
        problem = errors[0] if errors else f"{left} messages unacknowledged after 60 s"
        raise UserError(f"could not publish to {kafka.input_topic}: {problem}")
    return count


def cmd_send(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.file == "-":
        if sys.stdin.isatty():
            print("reading campaigns from stdin, one JSON per line; Ctrl-D ends", file=sys.stderr)
        count = send(settings, sys.stdin, key=args.key, progress=True)
    else:
        try:
            source = open(args.file, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as error:
            raise UserError(f"cannot read {args.file}: {error.strerror}") from None
        with source:
            try:
                count = send(settings, source, key=args.key, progress=True)
            except UnicodeDecodeError:
                raise UserError(f"{args.file} is not UTF-8 text") from None
    print(f"sent {count} campaign messages to {settings.promo_input_topic}")
    return 0


def run_job() -> tuple[bool, str]:
    """Run the job once in this process; returns success and a one-screen summary."""
    from dagster import DagsterInstance

    from promo_pipeline.definitions import defs as load_defs

    load_settings(export=True)
    defs = load_defs()
    if os.environ.get("DAGSTER_HOME"):
        # Its storage retries a refused connection with a warning each time: one line instead.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.CRITICAL)
        try:
            instance = DagsterInstance.get()
        except Exception as error:
            raise UserError(
                f"run not started: the Dagster instance in {os.environ['DAGSTER_HOME']} cannot "
                f"open its storage: {_innermost(error)}"
            ) from None
        finally:
            root.setLevel(level)
    else:
        instance = DagsterInstance.ephemeral()
    started = time.monotonic()
    # INFO on the console: the step-by-step DEBUG events stay in the run's event log.
    result = defs.resolve_job_def("promo_job").execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
    seconds = time.monotonic() - started
    lines = [
        f"promo run {result.run_id[:8]}: {'SUCCESS' if result.success else 'FAILURE'} "
        f"in {seconds:.1f} s"
    ]
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        shown = ", ".join(
            f"{key.removeprefix('dagster/')} {entry.value}"
            for key, entry in materialization.metadata.items()
            if isinstance(entry.value, int | float) and "_offset_p" not in key
        )
        lines.append(f"  {materialization.asset_key.to_user_string():<20} {shown}")
    for evaluation in result.get_asset_check_evaluations():
        verdict = "passed" if evaluation.passed else evaluation.severity.value
        lines.append(
            f"  check {evaluation.check_name}: {verdict}"
            + (f" ({evaluation.description})" if evaluation.description else "")
        )
    failed = [event for event in result.all_events if event.is_step_failure]
    if not result.success and not failed:
        # Failed before any step ran (a resource refused: the pipeline lock, the schema
        # version, Postgres itself): the first event with an error says why.
        failed = [e for e in result.all_events if getattr(e.event_specific_data, "error", None)]
        failed = failed[:1]
    for event in failed:
        where = event.step_key or "before any step"
        lines.append(f"  FAILED {where}: {failure_line(event.event_specific_data)}")
    return result.success, "\n".join(lines)


def failure_line(data: Any) -> str:
    """A failed step's root cause in one line: a `Failure`'s description, else the first line
    of the innermost error (not Dagster's "Error occurred while executing op")."""
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return user.description.strip().splitlines()[0]
    error = getattr(data, "error", None)
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None:
        return "unknown error"
    text = error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name
    return text.removeprefix("dagster._core.definitions.events.Failure: ")


def _innermost(error: BaseException) -> str:
    """The first line of the deepest cause: the part of a wrapped error that names the fix."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def cmd_run(args: argparse.Namespace) -> int:
    load_settings(export=True)
    success, summary = run_job()
    print(summary)
    return 0 if success else 1


def load_sample_subscribers(settings: Settings) -> int:
    """Add the sample subscriptions unless they are there already."""
    import psycopg

    from promo_pipeline.db import conninfo

    sample = package_files.files("promo_pipeline") / "sample" / "subscribers.csv"
    rows = list(csv.DictReader(sample.read_text().splitlines()))
    with psycopg.connect(conninfo(settings)) as conn:
        present = conn.execute(
            "SELECT count(*) FROM public.subscribers_restaurants WHERE client_id = ANY(%s)",
            ([row["client_id"] for row in rows],),
        ).fetchone()[0]
        if present:
            return 0
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
                "VALUES (%(client_id)s, %(restaurant_id)s)",
                rows,
            )
    return len(rows)


def cmd_demo(args: argparse.Namespace) -> int:
    """Stack up, sample data in, one run, and what came out."""
    import psycopg

    from promo_pipeline.db import conninfo
    from promo_pipeline.stack import LocalStack

    stack = LocalStack(_stack_dir(args), spark=args.spark)
    os.environ.update(stack.up())
    settings = load_settings(export=True)
    prepare(settings)
    print(f"sample subscriptions loaded: {load_sample_subscribers(settings)}")
    sample = package_files.files("promo_pipeline") / "sample" / "campaigns.jsonl"
    print(f"sample campaign messages sent: {send(settings, sample.read_text().splitlines())}")
    success, summary = run_job()
    print(summary)
    with psycopg.connect(conninfo(settings)) as conn:
        rows = conn.execute(
            "SELECT adv_campaign_id, client_id, trigger_datetime_created "
            "FROM public.subscribers_feedback ORDER BY id DESC LIMIT 20"
        ).fetchall()
    print(f"\nlatest triggers in public.subscribers_feedback ({len(rows)} shown):")
    for campaign, client, created in rows:
        print(f"  campaign {campaign}  client {client}  at {created}")
    print(
        "\nOpen the Dagster UI (runs, lineage, the sensor):\n"
        f"  set -a; . {stack.env_file}; set +a; .venv/bin/dagster dev -w workspace.yaml\n"
        "  then browse http://127.0.0.1:3000\n"
        f"Stop the stack with: .venv/bin/promo stack down --dir {stack.dir}"
    )
    return 0 if success else 1


def message_json(message: Any) -> str:
    """One message as one JSON object (`promo tail -J`), for jq."""
    key, value = message.key(), message.value()
    return json.dumps(
        {
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp_ms": message.timestamp()[1],
            "key": key.decode(errors="replace") if key is not None else None,
            "headers": {
                name: data.decode(errors="replace") if data is not None else None
                for name, data in message.headers() or []
            },
            "value": value.decode(errors="replace") if value is not None else None,
        },
        ensure_ascii=False,
    )


def format_message(message: Any, dlq: bool) -> str:
    """One line per message: where it is, its key, the DLQ's reason, the value."""
    key = message.key().decode(errors="replace") if message.key() is not None else "-"
    value = message.value().decode(errors="replace") if message.value() is not None else "null"
    parts = [f"p{message.partition()}@{message.offset()}", f"key={key}"]
    if dlq:
        headers = {name: data.decode(errors="replace") for name, data in message.headers() or []}
        parts.append(f"reason={headers.get('promo.reject.reason', '?')}")
        parts.append(f"source={headers.get('promo.source', '?')}")
    parts.append(value)
    return "  ".join(parts)


def tail(
    settings: Settings,
    *,
    dlq: bool = False,
    from_beginning: bool = False,
    count: int | None = None,
    exit_at_end: bool = False,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Print messages of the output topic (or the DLQ) as they arrive; returns how many."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    from promo_pipeline.resources import kafka_resource

    kafka = kafka_resource(settings)
    topic = kafka.dlq_topic if dlq else kafka.output_topic
    require_topic(settings, topic)
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": "promo_cli.tail",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
    )
    try:
        partitions = sorted(
            consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_S).topics[topic].partitions
        )
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        print(
            f"% {topic}: {'from the beginning' if from_beginning else 'new messages'}"
            + (f", {count} at most" if count else "")
            + ("" if exit_at_end or count else "; Ctrl-C stops"),
            file=sys.stderr,
        )
        shown = 0
        at_end: set[int] = set()
        while count is None or shown < count:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    if exit_at_end and at_end >= set(partitions):
                        break
                    continue
                raise UserError(f"reading {topic}: {message.error()}")
            at_end.discard(message.partition())
            shown_line = message_json(message) if as_json else format_message(message, dlq)
            print(shown_line, file=out or sys.stdout, flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    print(f"% {shown} messages", file=sys.stderr)
    return shown


def cmd_tail(args: argparse.Namespace) -> int:
    tail(
        load_settings(),
        dlq=args.dlq,
        from_beginning=args.from_beginning,
        count=args.count,
        exit_at_end=args.exit,
        as_json=args.json,
    )
    return 0


def _uuid_argument(name: str, value: str) -> str:
    from promo_pipeline.schema import UUID_PATTERN

    if not UUID_PATTERN.match(value):
        raise UserError(
            f"{name} must be a UUID like 023e4567-e89b-12d3-a456-426614174000: {value!r}"
        )
    return value.lower()


def subscribe(settings: Settings, client: str, restaurant: str) -> tuple[bool, list[str]]:
    """Add the subscription unless present; returns (added, active campaigns it will get)."""
    import psycopg

    from promo_pipeline.db import conninfo

    now = int(time.time())
    with psycopg.connect(conninfo(settings)) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{client}/{restaurant}",))
        present = conn.execute(
            "SELECT 1 FROM public.subscribers_restaurants WHERE client_id = %s "
            "AND restaurant_id = %s",
            (client, restaurant),
        ).fetchone()
        if not present:
            conn.execute(
                "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
                "VALUES (%s, %s)",
                (client, restaurant),
            )
        due = [
            row[0]
            for row in conn.execute(
                "SELECT c.adv_campaign_id FROM promo.campaigns c WHERE c.restaurant_id = %s "
                "AND c.adv_campaign_datetime_start <= %s AND c.adv_campaign_datetime_end > %s "
                "AND NOT EXISTS (SELECT 1 FROM public.subscribers_feedback f WHERE "
                "f.adv_campaign_id = c.adv_campaign_id AND f.client_id = %s) "
                "ORDER BY c.adv_campaign_id",
                (restaurant, now, now, client),
            )
        ]
    return not present, due


def cmd_subscribe(args: argparse.Namespace) -> int:
    client = _uuid_argument("CLIENT", args.client)
    restaurant = _uuid_argument("RESTAURANT", args.restaurant)
    added, due = subscribe(load_settings(), client, restaurant)
    print(
        f"client {client} {'subscribed to' if added else 'was already subscribed to'} "
        f"restaurant {restaurant}"
    )
    if due:
        print(
            f"{len(due)} active campaign(s) will trigger for this client on the next run "
            f"(the sensor starts one within a minute, or `promo run`): {', '.join(due)}"
        )
    else:
        print("no active campaign of this restaurant is waiting to trigger for this client")
    return 0


def _when(epoch: int, now: int) -> str:
    from promo_pipeline.schema import EPOCH_MAX, format_epoch

    stamp = format_epoch(epoch)
    seconds = epoch - now
    if seconds <= 0 or epoch > EPOCH_MAX:
        return stamp
    hours, rest = divmod(seconds, 3600)
    days, hours = divmod(hours, 24)
    span = (
        f"{days}d {hours}h"
        if days
        else f"{hours}h {rest // 60}m"
        if hours
        else f"{rest // 60}m {rest % 60}s"
    )
    return f"{stamp} (in {span})"


STATUS_CAMPAIGNS = """
SELECT count(*) FILTER (WHERE adv_campaign_datetime_start <= %(now)s
                          AND adv_campaign_datetime_end > %(now)s),
       count(*) FILTER (WHERE adv_campaign_datetime_start > %(now)s),
       count(*) FILTER (WHERE adv_campaign_datetime_end <= %(now)s)
FROM promo.campaigns
"""

STATUS_HELD = """
SELECT adv_campaign_id, restaurant_id, adv_campaign_datetime_start FROM promo.campaigns
WHERE adv_campaign_datetime_start > %(now)s
ORDER BY adv_campaign_datetime_start, adv_campaign_id LIMIT 10
"""

STATUS_LAST_INPUT = """
SELECT run_id, max(recorded_at), sum(messages), sum(valid), count(*) FROM promo.campaign_batches
GROUP BY run_id ORDER BY max(recorded_at) DESC LIMIT 1
"""

STATUS_LAST_TRIGGERS = """
SELECT trigger_datetime_created, count(*), count(DISTINCT adv_campaign_id)
FROM public.subscribers_feedback
WHERE trigger_datetime_created = (SELECT max(trigger_datetime_created)
                                  FROM public.subscribers_feedback)
GROUP BY trigger_datetime_created
"""


STATUS_EVENTS = """
SELECT kind, run_id, recorded_at, detail FROM promo.input_events WHERE topic = %s
ORDER BY id DESC LIMIT 3
"""


def status_lines(settings: Settings, now: int | None = None) -> list[str]:
    """What an operator asks first: is input waiting, what is held, what did the last run do."""
    return status_report(settings, now)[1]


def _input_status(position: Any) -> tuple[dict[str, Any], str]:
    topic = position.topic
    report: dict[str, Any] = {
        "topic": topic,
        "topic_id": position.topic_id,
        "checkpoint_corrupt": position.corrupt,
        "recreated_from_topic_id": position.recreated_from,
        "waiting": None if position.corrupt else sum(position.lag.values()),
        "partitions": [
            {
                "partition": p,
                "low": low,
                "high": high,
                "read_to": position.read_to.get(p, 0),
                "lag": None if position.corrupt else position.lag[p],
            }
            for p, (low, high) in position.watermarks.items()
        ],
        "lost_unread": {str(p): [s, e] for p, (s, e) in sorted(position.gaps.items())},
    }
    if position.corrupt:
        return report, f"input {topic}: messages waiting unknown, checkpoint corrupt: " + (
            position.corrupt
        )
    if position.recreated_from:
        return report, (
            f"input {topic}: the topic was recreated (topic id {position.topic_id}, was "
            f"{position.recreated_from}); the next run reads its {report['waiting']} "
            "messages from the start"
        )
    line = f"input {topic}: {report['waiting']} messages waiting; per partition " + ", ".join(
        f"p{p} lag {position.lag[p]} (read to {position.read_to.get(p, 0)} of {high})"
        for p, (_, high) in position.watermarks.items()
    )
    if position.gaps:
        from promo_pipeline.checkpoint import describe_gaps

        line += (
            f"; LOST {position.lost} offsets deleted by retention before they were read "
            f"({describe_gaps(position.gaps)})"
        )
    return report, line


def _event_line(kind: str, run_id: str | None, at: datetime, detail: dict[str, Any]) -> str:
    stamp = f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S UTC}"
    run = f" (run {run_id[:8]})" if run_id else ""
    if kind == "retention_gap":
        ranges = ", ".join(f"p{p} offsets {s}..{e - 1}" for p, (s, e) in detail["ranges"].items())
        what = f"{detail['lost']} offsets LOST to retention before they were read: {ranges}"
    elif kind == "topic_recreated":
        what = (
            f"topic recreated (id {detail['previous_topic_id']} -> {detail['topic_id']}), "
            f"re-read from its start; old checkpoint {detail['old_checkpoint']}"
        )
    else:
        what = f"{kind}: {json.dumps(detail, sort_keys=True)}"
    return f"  {stamp}{run}: {what}"


def status_report(settings: Settings, now: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """The status as data (`promo status --json`) and as lines; one source for both."""
    import psycopg

    from promo_pipeline.checkpoint import input_position
    from promo_pipeline.db import conninfo
    from promo_pipeline.defs.campaigns.assets import CampaignTally
    from promo_pipeline.resources import kafka_resource

    now = int(time.time()) if now is None else now
    kafka = kafka_resource(settings)
    require_topic(settings, kafka.input_topic)
    checkpoint = settings.promo_state_dir / "checkpoints" / "campaigns"
    report: dict[str, Any] = {"now": now}
    lines = []
    with psycopg.connect(conninfo(settings)) as conn:
        report["input"], line = _input_status(input_position(kafka, conn, checkpoint))
        lines.append(line)
        events = conn.execute(STATUS_EVENTS, (kafka.input_topic,)).fetchall()
        report["input_events"] = [
            {"kind": kind, "run_id": run_id, "at": at.isoformat(), "detail": detail}
            for kind, run_id, at, detail in events
        ]
        if events:
            lines.append("input events (latest first):")
            lines += [_event_line(*event) for event in events]
        active, held, expired = conn.execute(STATUS_CAMPAIGNS, {"now": now}).fetchone()
        report["campaigns"] = {"active": active, "held": held, "expired": expired, "due": []}
        lines.append(f"campaigns: {active} active, {held} held for later, {expired} expired")
        for campaign, restaurant, start in conn.execute(STATUS_HELD, {"now": now}):
            report["campaigns"]["due"].append(
                {"adv_campaign_id": campaign, "restaurant_id": restaurant, "start": start}
            )
            lines.append(f"  held {campaign} (restaurant {restaurant}) due {_when(start, now)}")
        unsent = conn.execute("SELECT count(*) FROM promo.kafka_outbox").fetchone()[0]
        report["outbox"] = unsent
        lines.append(f"outbox: {unsent} triggers committed to Postgres await Kafka delivery")
        last_input = conn.execute(STATUS_LAST_INPUT).fetchone()
        last_triggers = conn.execute(STATUS_LAST_TRIGGERS).fetchone()
    report["last_input"] = report["last_triggers"] = None
    if last_input:
        run_id, at, _, _, _ = last_input
        tally = CampaignTally.of_run(conninfo(settings), run_id)
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(tally.rejected.items()))
        report["last_input"] = {
            "run_id": run_id,
            "at": at.isoformat(),
            "messages": tally.messages,
            "valid": tally.valid,
            "rejected": dict(tally.rejected),
        }
        lines.append(
            f"last input read: run {run_id[:8]} at {at.astimezone(UTC):%Y-%m-%d %H:%M:%S UTC}: "
            f"{tally.messages} messages, {tally.valid} valid, {tally.rejected_total} rejected"
            + (f" ({reasons})" if reasons else "")
        )
    else:
        lines.append("last input read: none yet")
    if last_triggers:
        at, count, campaigns = last_triggers
        report["last_triggers"] = {"at": at, "triggers": count, "campaigns": campaigns}
        lines.append(f"last triggers: {count} for {campaigns} campaign(s) at {_when(at, now)}")
    else:
        lines.append("last triggers: none yet")
    dagster = _dagster_last_run()
    report["last_dagster_run"] = dagster[0]
    lines.extend(dagster)
    return report, lines


def _dagster_last_run() -> list[str]:
    """The latest promo_job run from the Dagster instance, when DAGSTER_HOME names one."""
    if not os.environ.get("DAGSTER_HOME"):
        return ["last Dagster run: unknown (DAGSTER_HOME is not set)"]
    from dagster import AssetKey, DagsterInstance, RunsFilter

    shown = {
        "campaign_batch": ("messages_read", "rejected"),
        "feedback_sink": ("rows_written",),
        "push_sink": ("sent_this_run",),
    }
    with DagsterInstance.get() as instance:
        records = instance.get_run_records(RunsFilter(job_name="promo_job"), limit=1)
        if not records:
            return ["last Dagster run: none yet"]
        run = records[0].dagster_run
        at = records[0].end_time or records[0].start_time or records[0].create_timestamp.timestamp()
        counts = []
        for key, names in shown.items():
            entry = instance.get_latest_materialization_event(AssetKey(key))
            if entry is None or entry.run_id != run.run_id or not entry.asset_materialization:
                continue
            metadata = entry.asset_materialization.metadata
            counts += [
                f"{key} {name.removeprefix('dagster/')} {metadata[name].value}"
                for name in names
                if name in metadata
            ]
    if "dagster/parent_run_id" in run.tags:
        reason = f"retry of {run.tags['dagster/parent_run_id'][:8]}"
    elif "dagster/sensor_name" in run.tags:
        reason = f"sensor: {run.tags.get('promo/reason', '')}"
    else:
        reason = "launched from the UI or the CLI"
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return [
        f"last Dagster run: {run.run_id[:8]} {run.status.value} at {stamp}"
        + (f": {', '.join(counts)}" if counts else "")
        + f" (why: {reason[:120]})"
    ]


def cmd_status(args: argparse.Namespace) -> int:
    report, lines = status_report(load_settings())
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    for line in lines:
        print(line)
    return 0


def _parse_offsets(value: str) -> dict[int, int]:
    problem = UserError(f"--to-offsets expects PARTITION:OFFSET,... (e.g. 0:10,1:4): {value!r}")
    try:
        pairs = [item.split(":") for item in value.split(",") if item.strip()]
        offsets = {int(p): int(o) for p, o in pairs}
    except ValueError:
        raise problem from None
    if not offsets or any(p < 0 or o < 0 for p, o in offsets.items()):
        raise problem
    return offsets


def _parse_time(value: str) -> int:
    """Epoch seconds or an ISO 8601 time (UTC unless it says otherwise), as epoch ms."""
    if value.isdigit():
        return int(value) * 1000
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"--to-time expects epoch seconds or an ISO time like 2026-11-26T09:00:00Z: {value!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def rewind(
    settings: Settings,
    *,
    to_offsets: dict[int, int] | None = None,
    to_time_ms: int | None = None,
) -> str:
    """Set the checkpoint aside and name where the next run starts (all partitions at their
    start unless offsets or a time say otherwise); refused while a run holds the lock."""
    import psycopg
    from confluent_kafka import Consumer, TopicPartition

    from promo_pipeline.checkpoint import START_FILE, record_event, set_aside, topic_id
    from promo_pipeline.db import conninfo
    from promo_pipeline.resources import PipelineLockResource, kafka_resource
    from promo_pipeline.work import topic_watermarks

    kafka = kafka_resource(settings)
    topic = kafka.input_topic
    require_topic(settings, topic)
    checkpoint = settings.promo_state_dir / "checkpoints" / "campaigns"
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        # Held until the end of this block, so no run starts while the files move.
        key = PipelineLockResource.LOCK_KEY
        if not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]:
            raise UserError(
                "a promo_pipeline run holds the pipeline lock; rewind refused (wait for the run "
                "to end: `promo status`)"
            )
        watermarks = topic_watermarks(kafka, topic)
        if to_offsets is not None:
            unknown = sorted(set(to_offsets) - set(watermarks))
            if unknown:
                raise UserError(f"topic {topic} has no partition {unknown[0]}")
            past = {p: o for p, o in to_offsets.items() if o > watermarks[p][1]}
            if past:
                p, o = min(past.items())
                raise UserError(f"offset {o} is past the end of {topic} p{p} ({watermarks[p][1]})")
            target = {p: to_offsets.get(p, -2) for p in watermarks}  # -2: earliest
        elif to_time_ms is not None:
            consumer = Consumer(kafka.client_config(**{"group.id": "promo_cli.rewind"}))
            try:
                found = consumer.offsets_for_times(
                    [TopicPartition(topic, p, to_time_ms) for p in watermarks],
                    timeout=KAFKA_TIMEOUT_S,
                )
            finally:
                consumer.close()
            # -1: no message at or after T in that partition, so start at its end.
            target = {tp.partition: tp.offset if tp.offset >= 0 else -1 for tp in found}
        else:
            target = {p: -2 for p in watermarks}
        moved = set_aside(checkpoint, "rewound")
        settings.promo_state_dir.mkdir(parents=True, exist_ok=True)
        identity = topic_id(kafka, topic)
        (settings.promo_state_dir / START_FILE).write_text(
            json.dumps(
                {"topic_id": identity, "offsets": {topic: {str(p): o for p, o in target.items()}}}
            )
        )
        record_event(
            conn,
            None,
            topic,
            "rewind",
            {"offsets": {str(p): o for p, o in target.items()}, "old_checkpoint": str(moved)},
        )
    where = ", ".join(
        f"p{p} at {'its start' if o == -2 else 'its end' if o == -1 else o}"
        for p, o in sorted(target.items())
    )
    kept = f"; the old checkpoint is kept in {moved}" if moved else ""
    return f"rewound {topic}: the next run reads {where}{kept}"


def cmd_rewind(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.to_offsets:
        print(rewind(settings, to_offsets=_parse_offsets(args.to_offsets)))
    elif args.to_time:
        print(rewind(settings, to_time_ms=_parse_time(args.to_time)))
    else:
        print(rewind(settings))
    return 0


def dlq_replay(settings: Settings, reason: str | None = None) -> tuple[int, int]:
    """Re-send the DLQ's messages (those of one reason code, or all) to the input topic, key
    and value unchanged, without the promo.* headers; returns (re-sent, left out)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from promo_pipeline.resources import kafka_resource
    from promo_pipeline.topics import produce_all

    kafka = kafka_resource(settings)
    require_topic(settings, kafka.dlq_topic)
    require_topic(settings, kafka.input_topic)
    consumer = Consumer(
        kafka.client_config(**{"group.id": "promo_cli.dlq_replay", "enable.auto.commit": False})
    )
    producer = Producer(kafka.client_config(**{"enable.idempotence": True}))
    errors: list[str] = []
    sent = skipped = 0
    try:
        topic = kafka.dlq_topic
        partitions = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_S).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=KAFKA_TIMEOUT_S)
            for p in partitions
        }
        left = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error() is not None:
                continue
            if message.offset() >= ends[message.partition()][1] - 1:
                left.discard(message.partition())
            if message.offset() >= ends[message.partition()][1]:
                continue
            headers = message.headers() or []
            code = dict(headers).get("promo.reject.code", b"").decode(errors="replace")
            if reason is not None and code != reason:
                skipped += 1
                continue
            kept = [(name, data) for name, data in headers if not name.startswith("promo.")]
            produce_all(
                producer,
                kafka.input_topic,
                [(message.key(), message.value())],
                headers=kept,
                on_delivery=lambda error, _m: errors.append(str(error)) if error else None,
            )
            sent += 1
        if left:
            raise UserError(f"could not read {topic} to its end within 60 s")
    finally:
        consumer.close()
    unacknowledged = producer.flush(60)
    if unacknowledged or errors:
        problem = errors[0] if errors else f"{unacknowledged} messages unacknowledged"
        raise UserError(f"could not re-send to {kafka.input_topic}: {problem}")
    return sent, skipped


def cmd_dlq(args: argparse.Namespace) -> int:
    settings = load_settings()
    sent, skipped = dlq_replay(settings, args.reason)
    which = f" with reason {args.reason}" if args.reason else ""
    print(
        f"re-sent {sent} dead letters{which} to {settings.promo_input_topic}"
        + (f" ({skipped} with other reasons left out)" if skipped else "")
    )
    return 0


class OneLineParser(argparse.ArgumentParser):
    """Argument mistakes as one line naming the fix, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _command(
    commands: Any, name: str, summary: str, description: str, examples: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 88),
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(
        prog="promo",
        description=__doc__,
        epilog="examples:\n  promo stack up && promo send promo_pipeline/sample/campaigns.jsonl "
        "&& promo run\n  promo tail --from-beginning -n 5\n  promo status\n"
        "Settings come from the environment, else from .promo/stack.env.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = _command(
        commands,
        "stack",
        "the embedded local Kafka + Postgres + Spark Connect server",
        "Start, stop or show the embedded Kafka, Postgres and Spark Connect server; `up` prints "
        "the settings as exports and creates tables and topics.",
        "  promo stack up                # start (or reuse) .promo/\n"
        "  promo stack up --spark local  # no Connect server: each run starts its own Spark\n"
        "  eval $(promo stack up)        # ... and export its settings into this shell\n"
        "  promo stack status\n  promo stack down              # stop, keep the data\n",
    )
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--dir", help=f"stack folder (default {DEFAULT_STACK_DIR}/)")
    _spark_option(stack)
    stack.set_defaults(func=cmd_stack)

    db = _command(
        commands,
        "db",
        "database tables and schema migrations",
        "Create the seed's tables where missing (exactly the seed's DDL) and migrate the "
        "pipeline's own schema promo to this code's newest revision (Alembic; safe to repeat). "
        "Runs refuse to start while the database is behind. `init` is the same as `upgrade`.",
        "  promo db upgrade\n",
    )
    db.add_argument("action", choices=["upgrade", "init"])
    db.set_defaults(func=cmd_db)

    send_cmd = _command(
        commands,
        "send",
        "publish campaigns, one JSON per line (like kcat -P)",
        "Publish campaign messages to the input topic, one JSON object per line, as-is: a "
        "malformed line is published too and lands in the DLQ with its reason when the "
        "pipeline reads it.",
        "  promo send promo_pipeline/sample/campaigns.jsonl\n"
        '  echo \'{"restaurant_id": "...", ...}\' | promo send\n'
        "  promo send --key restaurant-42 campaigns.jsonl\n",
    )
    send_cmd.add_argument("file", nargs="?", default="-", help="file, or - for stdin (default)")
    send_cmd.add_argument("--key", help="message key for every line (default: none)")
    send_cmd.set_defaults(func=cmd_send)

    tail_cmd = _command(
        commands,
        "tail",
        "print triggers (or the DLQ) as they arrive (like kcat -C)",
        "Follow the output topic, or with --dlq the dead-letter topic, printing one line per "
        "message: partition@offset, key, for the DLQ the reject reason and source, then the "
        "value. Reads from the end unless --from-beginning; stops after -n messages, at the "
        "end with -e, or on Ctrl-C. Commits no consumer offsets.",
        "  promo tail                         # new triggers, until Ctrl-C\n"
        "  promo tail --from-beginning -n 10  # the first 10 triggers\n"
        "  promo tail --dlq --from-beginning -e  # every rejected message, then exit\n"
        '  promo tail --dlq --from-beginning -e -J | jq -r .headers["promo.reject.code"]\n',
    )
    tail_cmd.add_argument("--dlq", action="store_true", help="read the DLQ topic instead")
    tail_cmd.add_argument("--from-beginning", action="store_true", help="start at the oldest")
    tail_cmd.add_argument("-n", "--count", type=_positive, help="stop after N messages")
    tail_cmd.add_argument("-e", "--exit", action="store_true", help="stop at the end")
    tail_cmd.add_argument(
        "-J", "--json", action="store_true", help="one JSON object per message (for jq)"
    )
    tail_cmd.set_defaults(func=cmd_tail)

    subscribe_cmd = _command(
        commands,
        "subscribe",
        "add a client's favourite restaurant",
        "Add (CLIENT, RESTAURANT) to public.subscribers_restaurants unless present, and say "
        "which active campaigns will now trigger for the client on the next run.",
        "  promo subscribe 023e4567-e89b-12d3-a456-426614174009 "
        "123e4567-e89b-12d3-a456-426614174000\n",
    )
    subscribe_cmd.add_argument("client", metavar="CLIENT", help="client id (UUID)")
    subscribe_cmd.add_argument("restaurant", metavar="RESTAURANT", help="restaurant id (UUID)")
    subscribe_cmd.set_defaults(func=cmd_subscribe)

    status_cmd = _command(
        commands,
        "status",
        "input lag, held campaigns, the last run",
        "Input lag per partition (broker end vs the pipeline's checkpoint), or why there is "
        "none to count (topic recreated, checkpoint corrupt), offsets lost to retention and "
        "other recent input events, campaigns active, held (and when due) and expired, "
        "triggers awaiting Kafka, and what the last run did. With DAGSTER_HOME set, also the "
        "last Dagster run. --json prints the same as one JSON object.",
        "  promo status\n  promo status --json | jq .input\n",
    )
    status_cmd.add_argument("--json", action="store_true", help="one JSON object, for jq")
    status_cmd.set_defaults(func=cmd_status)

    rewind_cmd = _command(
        commands,
        "rewind",
        "move the input checkpoint (re-read, skip, or repair it)",
        "Set the Spark checkpoint aside (kept next to it) and name where the next run starts "
        "reading the input topic: its beginning, the first message at or after a time, or "
        "given offsets. Refused while a run holds the pipeline lock. Re-read campaigns never "
        "trigger twice: the ledger allows one trigger per campaign and client.",
        "  promo rewind --to-beginning\n"
        "  promo rewind --to-time 2026-11-26T09:00:00Z\n"
        "  promo rewind --to-offsets 0:10,1:10,2:6\n",
    )
    target = rewind_cmd.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-beginning", action="store_true", help="every partition's start")
    target.add_argument("--to-time", metavar="T", help="epoch seconds or ISO time (UTC)")
    target.add_argument("--to-offsets", metavar="P:O,...", help="offsets per partition")
    rewind_cmd.set_defaults(func=cmd_rewind)

    dlq_cmd = _command(
        commands,
        "dlq",
        "re-send dead letters to the input topic",
        "`replay` re-sends the DLQ's messages (all, or those of one reason code) to the input "
        "topic with their key and value unchanged and without the promo.* headers, once their "
        "cause is fixed (a cancelled campaign's original published, a producer fixed). The DLQ "
        "keeps them; replaying twice sends twice (the ledger still allows one trigger).",
        "  promo dlq replay\n  promo dlq replay --reason end_not_after_start\n",
    )
    dlq_cmd.add_argument("action", choices=["replay"])
    dlq_cmd.add_argument("--reason", metavar="CODE", help="only this promo.reject.code")
    dlq_cmd.set_defaults(func=cmd_dlq)

    run = _command(
        commands,
        "run",
        "run the job once, in this process",
        "Run promo_job once here (the sensor does this in production) and print a summary; "
        "exit 1 when the run fails.",
        "  promo run\n",
    )
    run.set_defaults(func=cmd_run)

    demo = _command(
        commands,
        "demo",
        "stack up, load samples, run, show triggers",
        "Start the stack, load the sample subscribers and campaigns, run once, show triggers.",
        "  promo demo\n",
    )
    demo.add_argument("--dir", help=f"stack folder (default {DEFAULT_STACK_DIR}/)")
    _spark_option(demo)
    demo.set_defaults(func=cmd_demo)
    return top


def _spark_option(parser: argparse.ArgumentParser) -> None:
    from promo_pipeline.stack.local import SPARK_ENGINES

    parser.add_argument(
        "--spark",
        choices=SPARK_ENGINES,
        default="connect",
        help="connect (default): runs use the stack's warm Spark Connect server; local: each "
        "run starts its own Spark session (slower start, no server to keep)",
    )


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("py4j", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (SettingsError, UserError) as error:
        print(f"promo: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        problem = _connection_problem(error)
        if problem is None:
            raise
        print(f"promo: {problem}", file=sys.stderr)
        return 1


def _connection_problem(error: Exception) -> str | None:
    """A down or unreachable service, said in one line; None for anything else (a bug)."""
    import psycopg
    from confluent_kafka import KafkaException

    if isinstance(error, psycopg.OperationalError):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"Postgres does not answer ({first}); is the stack up? `promo stack status`"
    if isinstance(error, KafkaException):
        return f"Kafka: {error.args[0] if error.args else error}"
    if isinstance(error, psycopg.errors.UndefinedTable):
        first = str(error).strip().splitlines()[0]
        return f"{first}: the database predates this version; run `promo db upgrade`"
    from promo_pipeline.checkpoint import CheckpointError, InputError

    if isinstance(error, CheckpointError | InputError):
        return str(error)
    return None


if __name__ == "__main__":
    sys.exit(main())
