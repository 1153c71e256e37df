"""`promo stack` and `promo db`: the embedded local services, and the tables and topics."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from promo_pipeline.cli.common import UserError, add_command, add_stack_options, stack_dir
from promo_pipeline.settings import Settings, load_settings


def cmd_stack(args: argparse.Namespace) -> int:
    """the embedded local Kafka + Postgres + Spark Connect server

    Start, stop or show the embedded Kafka, Postgres and Spark Connect server; `up` prints
    the settings as exports and creates tables and topics.

    examples:
    promo stack up                # start (or reuse) .promo/
    promo stack up --spark local  # no Connect server: each run starts its own Spark
    eval $(promo stack up)        # ... and export its settings into this shell
    promo stack status
    promo stack down              # stop, keep the data
    """
    from promo_pipeline.stack import LocalStack
    from promo_pipeline.stack.errors import StackError

    stack = LocalStack(stack_dir(args), spark=args.spark)
    if args.action == "up":
        try:
            env = stack.up()
        except StackError as error:
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
    """database tables and schema migrations

    Create the seed's tables where missing (exactly the seed's DDL) and migrate the
    pipeline's own schema promo to this code's newest revision (Alembic; safe to repeat).
    Runs refuse to start while the database is behind. `init` is the same as `upgrade`.

    examples:
    promo db upgrade
    """
    from promo_pipeline.db import SchemaVersionError, upgrade

    try:
        before, after = upgrade(load_settings())
    except SchemaVersionError as error:
        raise UserError(str(error)) from None
    change = f"upgraded from {before or 'none'} to {after}" if before != after else "up to date"
    print(
        f"schema promo at revision {after} ({change}); tables ready: "
        "public.subscribers_restaurants, public.subscribers_feedback, promo.*"
    )
    return 0


def add_parser(commands: Any) -> None:
    stack = add_command(commands, "stack", cmd_stack)
    stack.add_argument("action", choices=["up", "down", "status"])
    add_stack_options(stack)
    db = add_command(commands, "db", cmd_db)
    db.add_argument("action", choices=["upgrade", "init"])
