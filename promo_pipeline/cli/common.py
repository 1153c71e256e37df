"""What every verb group shares: the one-line user error (and a service's failure as one
line), the stack folder, and how a command's
`--help` is built from its handler's docstring."""

from __future__ import annotations

import argparse
import inspect
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaException

from promo_pipeline.checkpoint import CheckpointError, InputError
from promo_pipeline.settings import SettingsError
from promo_pipeline.stack.local import SPARK_ENGINES

DEFAULT_STACK_DIR = ".promo"

Handler = Callable[[argparse.Namespace], int]


class UserError(Exception):
    """Something the user can fix that stopped the command (a stack that is down, a missing
    topic, a held lock): one line, no traceback, exit status 1."""

    exit_status = 1


class UsageError(UserError):
    """The command line itself is wrong (a malformed argument, a file that cannot be read):
    exit status 2, as argparse's own usage errors."""

    exit_status = 2


def add_command(commands: Any, name: str, handler: Handler) -> argparse.ArgumentParser:
    """The subcommand `name`, run by `handler`, whose docstring is its `--help`: the first line
    the summary in `promo --help`, then the description, then an `examples:` section.

    One place for the help's layout, so a new command cannot drift from the others'.
    """
    summary, _, rest = (inspect.getdoc(handler) or name).partition("\n")
    description, _, examples = rest.partition("examples:\n")
    command = commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(" ".join(description.split()), 88),
        epilog="examples:\n" + textwrap.indent(examples.rstrip("\n") + "\n", "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(func=handler)
    return command


def add_dir_option(command: argparse.ArgumentParser) -> None:
    """`--dir`, for the commands that act on a local stack's folder."""
    command.add_argument("--dir", help=f"stack folder (default {DEFAULT_STACK_DIR}/)")


def add_stack_options(command: argparse.ArgumentParser) -> None:
    """`--dir` and `--spark`, for the commands that start the local stack."""
    add_dir_option(command)
    command.add_argument(
        "--spark",
        choices=SPARK_ENGINES,
        default="connect",
        help="connect (default): runs use the stack's warm Spark Connect server; local: each "
        "run starts its own Spark session (slower start, no server to keep)",
    )


def stack_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("PROMO_STACK_DIR", DEFAULT_STACK_DIR))


def failure_line(error: Exception) -> str | None:
    """The one line `main` prints for `error` (a user error or a service that is down), or
    None for a bug."""
    if isinstance(error, SettingsError | UserError):
        return str(error)
    return connection_problem(error)


def connection_problem(error: Exception) -> str | None:
    """A down or unreachable service, said in one line; None for anything else (a bug)."""
    if isinstance(error, psycopg.OperationalError):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"Postgres does not answer ({first}); is the stack up? `promo stack status`"
    if isinstance(error, KafkaException):
        return f"Kafka: {error.args[0] if error.args else error}"
    if isinstance(error, psycopg.errors.UndefinedTable):
        first = str(error).strip().splitlines()[0]
        return f"{first}: the database predates this version; run `promo db upgrade`"
    if isinstance(error, CheckpointError | InputError):
        return str(error)
    return None
