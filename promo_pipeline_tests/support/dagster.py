"""Dagster as production runs it, for tests: the daemon on the repo's workspace, `dg dev` as the
README starts the UI, the job's runs, and one evaluation of the sensor on a test's stack."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SkipReason,
    build_sensor_context,
)

from promo_pipeline.defs.resources import kafka_resource, postgres_resource, run_options_resource
from promo_pipeline.defs.sensors import promo_work_sensor
from promo_pipeline.stack._proc import stop_process_group
from promo_pipeline_tests.support.pipeline import REPO, Pipeline

DONE = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
# The prefixes of every variable `promo stack up` sets, and of what would point promo at
# another stack: a `dg dev` meant to read a .env gets an environment without them.
STACK_PREFIXES = ("KAFKA_", "POSTGRES_", "PROMO_", "SPARK_", "DAGSTER_")


@contextmanager
def dagster_daemon(log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` on the repo's workspace, in its own process group (it starts the
    code server, which starts each run's worker).

    It runs in the log's folder, not the checkout: Dagster loads a .env from its working folder
    over the test's environment, and `promo stack up` writes one there for the default stack."""
    workspace = REPO / "workspace.yaml"
    with log_file.open("w") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
            cwd=log_file.parent,
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield daemon
        finally:
            stop_process_group(daemon.pid, timeout=30)
            daemon.wait(10)


def promo_runs() -> list[DagsterRun]:
    """promo_job's runs, newest first."""
    return list(DagsterInstance.get().get_runs(RunsFilter(job_name="promo_job")))


def tick(pipeline: Pipeline, instance: DagsterInstance) -> RunRequest | SkipReason:
    context = build_sensor_context(
        instance=instance,
        resources={
            "kafka": kafka_resource(pipeline.settings),
            "postgres": postgres_resource(pipeline.settings),
            "run_options": run_options_resource(pipeline.settings),
        },
    )
    result = promo_work_sensor(context)
    assert isinstance(result, RunRequest | SkipReason)
    return result


def dg_project(where: Path) -> Path:
    """A folder `dg dev` takes for this project: its pyproject.toml, with the package and the
    virtualenv linked, so a test can give it a .env of its own without touching the repo's."""
    where.mkdir(parents=True)
    shutil.copyfile(REPO / "pyproject.toml", where / "pyproject.toml")
    for name in ("promo_pipeline", ".venv"):
        (where / name).symlink_to(REPO / name)
    return where


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def dg_dev(project: Path, env: dict[str, str], log_file: Path) -> Iterator[str]:
    """`dg dev` in `project`, as the README starts the UI, in its own process group; yields
    its URL once the webserver answers (fails with its log if it dies or never does)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_file.open("w") as log:
        server = subprocess.Popen(
            [str(project / ".venv" / "bin" / "dg"), "dev", "--host", "127.0.0.1", "-p", str(port)],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            started = time.monotonic()
            while True:
                assert server.poll() is None, f"dg dev exited:\n{log_file.read_text()[-3000:]}"
                try:
                    with urllib.request.urlopen(f"{url}/server_info", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                waited = time.monotonic() - started
                assert waited < 240, f"dg dev silent for 240 s:\n{log_file.read_text()[-3000:]}"
                time.sleep(0.5)
            print(f"dg dev answered after {time.monotonic() - started:.1f} s")
            yield url
        finally:
            # dg dev stops its webserver, daemon and code server on SIGTERM; whatever is left
            # after 20 s (a run worker, or SIGTERM ignored) is killed.
            stop_process_group(server.pid, timeout=20)
            server.wait(10)


def graphql(url: str, query: str) -> dict:
    """One query to the webserver's GraphQL endpoint; its `data`."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        body = json.load(answer)
    assert "errors" not in body, body
    return body["data"]
