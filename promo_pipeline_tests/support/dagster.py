"""Dagster as production runs it, for tests: the daemon on the repo's workspace, the job's runs,
and one evaluation of the sensor on a test's stack."""

from __future__ import annotations

import os
import subprocess
import sys
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

from promo_pipeline.defs.sensors import promo_work_sensor
from promo_pipeline.resources import kafka_resource, postgres_resource, state_resource
from promo_pipeline.stack._proc import stop_process_group
from promo_pipeline_tests.support.pipeline import REPO, Pipeline

DONE = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


@contextmanager
def dagster_daemon(log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` on the repo's workspace, in its own process group (it starts the
    code server, which starts each run's worker)."""
    with log_file.open("w") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"],
            cwd=REPO,
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
            "state": state_resource(pipeline.settings),
        },
    )
    result = promo_work_sensor(context)
    assert isinstance(result, RunRequest | SkipReason)
    return result
