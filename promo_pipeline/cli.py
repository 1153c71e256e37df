"""`promo`: the local stack, the tables, one run of the job, and a demo on sample data."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import resources as package_files
from pathlib import Path

from promo_pipeline.settings import Settings, SettingsError, load_settings

DEFAULT_STACK_DIR = ".promo"


def _stack_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("PROMO_STACK_DIR", DEFAULT_STACK_DIR))


def cmd_stack(args: argparse.Namespace) -> int:
    from promo_pipeline.stack import LocalStack

    stack = LocalStack(_stack_dir(args))
    if args.action == "up":
        env = stack.up()
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
            print(f"{service:<9} {'running' if running else 'stopped':<8} {where}")
    return 0


def prepare(settings: Settings) -> None:
    """Tables and topics, both created only where missing."""
    from promo_pipeline.db import init_db
    from promo_pipeline.resources import kafka_resource
    from promo_pipeline.topics import ensure_topics

    init_db(settings)
    created = ensure_topics(kafka_resource(settings))
    if created:
        print(f"created topics: {', '.join(created)}", file=sys.stderr)


def cmd_db(args: argparse.Namespace) -> int:
    from promo_pipeline.db import init_db

    init_db(load_settings())
    print("tables ready: public.subscribers_restaurants, public.subscribers_feedback, promo.*")
    return 0


def send(settings: Settings, lines: Iterable[str]) -> int:
    """Publish one message per non-empty line, as-is; returns how many."""
    from confluent_kafka import Producer

    from promo_pipeline.resources import kafka_resource

    kafka = kafka_resource(settings)
    producer = Producer(kafka.client_config(**{"enable.idempotence": True}))
    errors: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            errors.append(str(error))

    count = 0
    for line in lines:
        if line.strip():
            producer.produce(
                kafka.input_topic, value=line.rstrip("\n").encode(), on_delivery=delivered
            )
            count += 1
    if producer.flush(30) or errors:
        raise RuntimeError(f"could not publish to {kafka.input_topic}: {errors[:1] or 'timeout'}")
    return count


def cmd_send(args: argparse.Namespace) -> int:
    settings = load_settings()
    with open(args.file, encoding="utf-8") if args.file != "-" else sys.stdin as source:
        count = send(settings, source)
    print(f"sent {count} campaign messages to {settings.promo_input_topic}")
    return 0


def run_job() -> tuple[bool, str]:
    """Run the job once in this process; returns success and a one-screen summary."""
    from dagster import DagsterInstance

    from promo_pipeline.definitions import defs

    load_settings(export=True)
    instance = (
        DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    )
    started = time.monotonic()
    result = defs.resolve_job_def("promo_job").execute_in_process(
        instance=instance, raise_on_error=False
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
            if isinstance(entry.value, int | float)
        )
        lines.append(f"  {materialization.asset_key.to_user_string():<20} {shown}")
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            message = error.message.strip().splitlines()[0] if error else "unknown error"
            lines.append(f"  FAILED {event.step_key}: {message}")
    return result.success, "\n".join(lines)


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

    stack = LocalStack(_stack_dir(args))
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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="promo", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    stack = commands.add_parser("stack", help="the embedded local Kafka + Postgres")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--dir", help=f"stack folder (default {DEFAULT_STACK_DIR}/)")
    stack.set_defaults(func=cmd_stack)

    db = commands.add_parser("db", help="database tables")
    db.add_argument("action", choices=["init"])
    db.set_defaults(func=cmd_db)

    send_cmd = commands.add_parser(
        "send",
        help="publish campaigns, one JSON per line",
        description="Publish campaign messages, one JSON per line, e.g. "
        "`promo send campaigns.jsonl` or `echo '{...}' | promo send -`.",
    )
    send_cmd.add_argument("file", nargs="?", default="-", help="file, or - for stdin")
    send_cmd.set_defaults(func=cmd_send)

    run = commands.add_parser("run", help="run the job once, in this process")
    run.set_defaults(func=cmd_run)

    demo = commands.add_parser("demo", help="stack up, load samples, run, show triggers")
    demo.add_argument("--dir", help=f"stack folder (default {DEFAULT_STACK_DIR}/)")
    demo.set_defaults(func=cmd_demo)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as error:
        print(f"promo: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
