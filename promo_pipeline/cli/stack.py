"""`promo stack` and `promo db`: the embedded local services, and the tables and topics."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from promo_pipeline.cli.common import (
    UserError,
    add_command,
    add_dir_option,
    add_stack_options,
    stack_dir,
)
from promo_pipeline.db import SchemaVersionError, init_db, upgrade
from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.settings import Settings, load_settings
from promo_pipeline.stack import LocalStack
from promo_pipeline.stack.errors import StackError
from promo_pipeline.stack.local import write_env_file
from promo_pipeline.topics import ensure_topics


def cmd_stack(args: argparse.Namespace) -> int:
    """the embedded local Kafka + Postgres + Spark Connect server

    Start, stop or show the embedded Kafka, Postgres and Spark Connect server (each action
    has its own --help).

    examples:
    promo stack up                # start (or reuse) .promo/
    promo stack status
    promo stack down              # stop, keep the data
    """
    raise AssertionError("argparse requires an action")  # pragma: no cover


def cmd_stack_up(args: argparse.Namespace) -> int:
    """start (or reuse) the stack, create tables and topics, print its settings

    Start whatever is not running yet, create tables, topics and the dagster database, and
    print the settings as `export NAME=VALUE` lines (quoted for the shell). They are also
    written to DIR/stack.env and, for the default folder, to ./.env, which `dg dev` and
    `dagster dev` load by themselves (a .env not written by promo is left alone). A second
    DIR gets its own ports.

    examples:
    promo stack up                # start (or reuse) .promo/
    promo stack up --spark local  # no Connect server: each run starts its own Spark
    eval "$(promo stack up)"      # ... and export its settings into this shell
    promo stack up --dir /tmp/other-stack
    """
    stack = LocalStack(stack_dir(args), spark=args.spark)
    try:
        env = stack.up()
    except StackError as error:
        # A missing tool or a service that would not start: its first line says which.
        raise UserError(f"stack up failed: {str(error).strip().splitlines()[0]}") from None
    os.environ.update(env)
    settings = load_settings()
    prepare(settings)
    share_settings(args, env)
    print(export_lines(env), end="")
    return 0


def cmd_stack_down(args: argparse.Namespace) -> int:
    """stop what `promo stack up` started (data kept)

    Stop the Spark Connect server, Kafka and Postgres of the stack folder; the data stays
    for the next `promo stack up`.

    examples:
    promo stack down
    promo stack down --dir /tmp/other-stack
    """
    stack = LocalStack(stack_dir(args))
    stack.down()
    print(f"stack in {stack.dir} stopped (data kept)", file=sys.stderr)
    return 0


def cmd_stack_status(args: argparse.Namespace) -> int:
    """say which service of the stack runs where

    One line per service: running or stopped, its address, pid and log file.

    examples:
    promo stack status
    """
    for service, running, where in LocalStack(stack_dir(args)).status():
        print(f"{service:<13} {'running' if running else 'stopped':<8} {where}")
    return 0


# What `dg dev` and `dagster dev` load from the folder they start in; the first line marks
# the file as promo's, so a user's own .env (compose's, say) is never overwritten.
DOTENV = ".env"
DOTENV_MARK = "# written by `promo stack up`; rewritten by every `promo stack up`"


def export_lines(env: dict[str, str]) -> str:
    """`export NAME=VALUE` lines that survive `eval "$(promo stack up)"` whatever the value
    holds (spaces in a path, quotes in a password)."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def share_settings(args: argparse.Namespace, env: dict[str, str]) -> bool:
    """For the default stack folder, also write the settings to ./.env, which `dg dev` and
    `dagster dev` load from the folder they start in; True if written.

    A stack in another folder (--dir, PROMO_STACK_DIR: tests, a second stack) leaves ./.env
    to the default one. A .env without promo's first line is the user's (compose's, say):
    kept, and said so."""
    if args.dir is not None or "PROMO_STACK_DIR" in os.environ:
        return False
    path = Path(DOTENV)
    if path.exists() and path.read_text().partition("\n")[0] != DOTENV_MARK:
        print(
            f"{path.absolute()} exists and was not written by promo: left as it is; export the "
            'settings before `dg dev` instead: eval "$(promo stack up)"',
            file=sys.stderr,
        )
        return False
    write_env_file(path, env, header=DOTENV_MARK)
    print(f"settings also in {path} (loaded by `dg dev` and `dagster dev`)", file=sys.stderr)
    return True


def prepare(settings: Settings) -> None:
    """Tables and topics, both created only where missing."""
    init_db(settings)
    created = ensure_topics(
        settings.config_for(KafkaConfig),
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
    actions = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_stack_options(add_command(actions, "up", cmd_stack_up))
    add_dir_option(add_command(actions, "down", cmd_stack_down))
    add_dir_option(add_command(actions, "status", cmd_stack_status))
    db = add_command(commands, "db", cmd_db)
    db.add_argument("action", choices=["upgrade", "init"])
