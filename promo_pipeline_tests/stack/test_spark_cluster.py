"""The same job on Spark beyond one local session: a standalone cluster (master + two workers,
started from pyspark's own distribution) and a Spark Connect server.

Each run is a separate `promo run` process, as under the Dagster daemon, so the JVM and the
Spark session are the ones the settings ask for and nothing leaks into this test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from promo_pipeline.settings import split_list
from promo_pipeline.stack.spark import (
    SparkConnectServer,
    spark_env,
    spark_home,
    worker_python,
)
from promo_pipeline_tests.support.pipeline import Pipeline, campaign, new_uuid
from promo_pipeline_tests.support.spark_standalone import SparkStandalone

pytestmark = [pytest.mark.stack, pytest.mark.spark]

PROMO = str(Path(sys.executable).with_name("promo"))


def promo_run(env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """One run of the job in its own process with `env`; output kept for the assertions."""
    return subprocess.run(
        [PROMO, "run"], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def publish_work(pipeline: Pipeline) -> tuple[dict, list[str]]:
    """An active campaign with two subscribers, and one malformed message for the DLQ."""
    active = campaign()
    clients = sorted(new_uuid() for _ in range(2))
    pipeline.subscribe(*[(client, active["restaurant_id"]) for client in clients])
    pipeline.publish(active, b"{not json")
    return active, clients


def assert_delivered(pipeline: Pipeline, active: dict, clients: list[str]) -> None:
    assert pipeline.pairs() == {(active["adv_campaign_id"], client) for client in clients}
    messages = pipeline.output()
    assert sorted(m.key().decode() for m in messages) == clients
    assert {json.loads(m.value())["adv_campaign_id"] for m in messages} == {
        active["adv_campaign_id"]
    }
    [dead] = pipeline.dead_letters()
    assert dead.value() == b"{not json"
    assert pipeline.sql("SELECT count(*) FROM promo.unsent_triggers") == [(0,)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SparkStandalone]:
    spark = SparkStandalone(tmp_path / "spark", workers=2, cores=1, memory="1g")
    spark.start()
    try:
        yield spark
    finally:
        spark.stop()


@pytest.mark.slow
def test_pipeline_on_standalone_cluster_with_two_workers(
    pipeline: Pipeline, cluster: SparkStandalone
) -> None:
    active, clients = publish_work(pipeline)
    started = time.monotonic()
    # No locality wait: a task goes to whichever executor is free, so a small run's few tasks
    # are not all kept on the executor Spark prefers for the Kafka partitions. And no task
    # before both executors have registered (all of spark.cores.max): otherwise a second
    # executor that starts late finds a small run already done, and ran nothing.
    submit = " ".join(
        [
            "--conf spark.locality.wait=0",
            f"--conf spark.cores.max={cluster.workers * cluster.cores}",
            "--conf spark.scheduler.minRegisteredResourcesRatio=1.0",
            "--conf spark.scheduler.maxRegisteredResourcesWaitingTime=120s",
            "pyspark-shell",
        ]
    )
    # Every outbox through Spark's Kafka writer, so the Kafka sink's tasks run on the workers too.
    spark_env = {"SPARK_MASTER": cluster.url, "PROMO_PUSH_SPARK_MIN_TRIGGERS": "0"}
    run = promo_run({**os.environ, **spark_env, "PYSPARK_SUBMIT_ARGS": submit})
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    assert "SUCCESS" in run.stdout
    print(f"run on the standalone cluster: {time.monotonic() - started:.1f} s")
    assert_delivered(pipeline, active, clients)

    # The application ran on the cluster, with an executor on each worker that ran tasks.
    [app] = [a for a in cluster.state()["completedapps"] if a["name"] == "promo_pipeline"]
    for index in range(cluster.workers):
        logs = list((cluster.worker_dir(index) / app["id"]).glob("*/stderr"))
        assert logs, f"no executor of {app['id']} on worker {index}"
        assert any("Finished task" in log.read_text() for log in logs), logs
    # The second run resumes from the checkpoint the first one left: nothing new to do.
    again = promo_run({**os.environ, "SPARK_MASTER": cluster.url})
    assert again.returncode == 0, again.stdout + again.stderr[-5000:]
    assert len(pipeline.feedback()) == len(clients)
    assert len(pipeline.output()) == len(clients)


@pytest.fixture
def connect_server(pipeline: Pipeline, tmp_path: Path) -> Iterator[SparkConnectServer]:
    server = SparkConnectServer(
        tmp_path / "connect", split_list(pipeline.settings.promo_spark_jars), master="local[2]"
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_pipeline_through_spark_connect(
    pipeline: Pipeline, connect_server: SparkConnectServer
) -> None:
    active, clients = publish_work(pipeline)
    started = time.monotonic()
    run = promo_run({**os.environ, "SPARK_MASTER": connect_server.url})
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    print(f"run through Spark Connect: {time.monotonic() - started:.1f} s")
    assert_delivered(pipeline, active, clients)
    # The streaming query ran inside the server (its log names this test's checkpoint), and
    # the micro-batch function ran in the server's Python worker: it wrote the batch tally.
    server_log = connect_server.log_file.read_text(errors="replace")
    assert str(pipeline.settings.promo_state_dir) in server_log
    assert pipeline.sql("SELECT sum(messages), sum(valid) FROM promo.campaign_batches") == [(2, 1)]


class SlowWorkerConnectServer(SparkConnectServer):
    """A Connect server whose first foreachBatch Python worker takes 12 s to start, as one does
    on a loaded host: Spark waits a fixed 10 s for it to connect back (found by bench/soak.py)."""

    def __init__(self, dir: Path, jars: list[str]) -> None:
        super().__init__(dir, jars)
        self.late = dir / "late-once"
        self.python = dir / "python"

    def _prepare(self) -> None:
        super()._prepare()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.python.write_text(
            "#!/bin/sh\n"
            'case "$*" in *foreach_batch_worker*)\n'
            f'  [ -e "{self.late}" ] || {{ touch "{self.late}"; sleep 12; }} ;;\n'
            "esac\n"
            # Then as any worker of the stack's server: off pyspark.zip (the other fix).
            f'exec "{worker_python(self.dir)}" "$@"\n'
        )
        self.python.chmod(0o755)

    def _env(self) -> dict[str, str]:
        return {**super()._env(), "PYSPARK_PYTHON": str(self.python)}


def test_a_foreach_batch_worker_late_to_connect_back_is_started_again(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    server = SlowWorkerConnectServer(
        tmp_path / "connect", split_list(pipeline.settings.promo_spark_jars)
    )
    server.start()
    try:
        active, clients = publish_work(pipeline)
        run = promo_run({**os.environ, "SPARK_MASTER": server.url})
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    assert server.late.exists()
    assert "did not connect back within Spark's 10 s (attempt 1 of 4)" in run.stdout + run.stderr
    assert_delivered(pipeline, active, clients)


def test_python_workers_import_the_installed_pyspark_not_sparks_zip(tmp_path: Path) -> None:
    """Spark puts pyspark.zip first on a worker's PYTHONPATH; imported from there, pyspark is
    compiled from source in every worker (no bytecode cache), which made the foreachBatch
    worker miss Spark's 10 s to connect back on a loaded host. Nothing else on it is dropped."""
    lib = spark_home() / "python" / "lib"
    zips = [str(lib / "pyspark.zip"), *(str(z) for z in lib.glob("py4j-*.zip"))]
    assert Path(zips[0]).exists() and len(zips) == 2, zips
    python = spark_env(tmp_path)["PYSPARK_PYTHON"]
    worker = subprocess.run(
        [
            python,
            "-c",
            "import os, pyspark; print(pyspark.__file__); print(os.environ['PYTHONPATH'])",
        ],
        env={**os.environ, "PYTHONPATH": ":".join([*zips, "/opt/extra lib"])},
        capture_output=True,
        text=True,
        check=True,
    )
    where, path = worker.stdout.splitlines()
    assert where == str(spark_home() / "__init__.py")
    assert path == "/opt/extra lib"
