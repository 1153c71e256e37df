"""`promo run` and `promo demo`: one run of the job in this process, summed up on one screen."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shlex
import time
from importlib import resources as package_files
from typing import Any

import psycopg
from dotenv import dotenv_values

from promo_pipeline.cli.common import UserError, add_command, add_stack_options, stack_dir
from promo_pipeline.cli.messages import send
from promo_pipeline.cli.stack import prepare, share_settings
from promo_pipeline.db import conninfo
from promo_pipeline.settings import Settings, load_settings, stack_env_file
from promo_pipeline.stack import LocalStack


def run_job() -> tuple[bool, str]:
    """Run the job once in this process; returns success and a one-screen summary."""
    # Deferred: Dagster takes seconds to import; only `promo run` and `promo demo` need it.
    from promo_pipeline.definitions import defs as load_defs

    # As `dg dev` does with .env: the stack file's settings join this command's environment
    # (set variables win), so the job's resources find its secrets as `EnvVar`s.
    stack_env = stack_env_file()
    if stack_env.is_file():
        for name, value in dotenv_values(stack_env).items():
            if value is not None:
                os.environ.setdefault(name, value)
    defs = load_defs()
    instance = _instance()
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
    return result.success, "\n".join(lines + _outcome(result))


def _instance() -> Any:
    """DAGSTER_HOME's instance, so the run shows in the UI; else a throwaway one."""
    # Deferred: Dagster takes seconds to import; only `promo run` and `promo demo` need it.
    from dagster import DagsterInstance

    if not os.environ.get("DAGSTER_HOME"):
        return DagsterInstance.ephemeral()
    # Its storage retries a refused connection with a warning each time: one line instead.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        return DagsterInstance.get()
    except Exception as error:
        raise UserError(
            f"run not started: the Dagster instance in {os.environ['DAGSTER_HOME']} cannot "
            f"open its storage: {_innermost(error)}"
        ) from None
    finally:
        root.setLevel(level)


def _outcome(result: Any) -> list[str]:
    """The run's materializations with their numbers, its checks, and each failure's cause."""
    lines = []
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
    return lines


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
    """run the job once, in this process

    Run promo_job once here (the sensor does this in production) and print a summary;
    exit 1 when the run fails.

    examples:
    promo run
    """
    load_settings()
    success, summary = run_job()
    print(summary)
    return 0 if success else 1


def load_sample_subscribers(settings: Settings) -> int:
    """Add the sample subscriptions unless they are there already."""
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
    """stack up, load samples, run, show triggers

    Start the stack, load the sample subscribers and campaigns, run once, show triggers.

    examples:
    promo demo
    """
    stack = LocalStack(stack_dir(args), spark=args.spark)
    env = stack.up()
    os.environ.update(env)
    shared = share_settings(args, env)
    settings = load_settings()
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
    ui = (
        ".venv/bin/dg dev"
        if shared
        else f'eval "$(.venv/bin/promo stack up --dir {shlex.quote(str(stack.dir))})"; '
        ".venv/bin/dg dev"
    )
    print(
        "\nOpen the Dagster UI (runs, lineage, the sensor):\n"
        f"  {ui}\n"
        "  then browse http://127.0.0.1:3000\n"
        f"Stop the stack with: .venv/bin/promo stack down --dir {shlex.quote(str(stack.dir))}"
    )
    return 0 if success else 1


def add_parser(commands: Any) -> None:
    add_command(commands, "run", cmd_run)
    add_stack_options(add_command(commands, "demo", cmd_demo))
