"""Production mode in miniature: the Dagster daemon ticks the sensor, the queued run
coordinator launches the job in its own process, and a trigger arrives in both sinks; and a run
whose worker and code server die mid-run (a user_code container restart) does not block the
pipeline: it is marked failed and the work is done by a later run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from promo_pipeline_tests.support.dagster import DONE, dagster_daemon, promo_runs
from promo_pipeline_tests.support.faults import poll
from promo_pipeline_tests.support.pipeline import SEED_CAMPAIGN, SEED_CLIENT, Pipeline

pytestmark = [pytest.mark.stack, pytest.mark.spark, pytest.mark.daemon]


def test_daemon_sensor_launches_job_and_trigger_reaches_both_sinks(
    pipeline: Pipeline, dagster_home: Path, tmp_path: Path
) -> None:
    pipeline.subscribe((SEED_CLIENT, SEED_CAMPAIGN["restaurant_id"]))
    pipeline.publish(SEED_CAMPAIGN)

    log = tmp_path / "daemon.log"
    with dagster_daemon(log) as daemon:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not pipeline.pairs():
            assert daemon.poll() is None, log.read_text()[-3000:]
            time.sleep(2)
        assert pipeline.pairs() == {(SEED_CAMPAIGN["adv_campaign_id"], SEED_CLIENT)}, (
            log.read_text()[-3000:]
        )
        while time.monotonic() < deadline:
            runs = promo_runs()
            if runs and runs[0].status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
                break
            time.sleep(1)
        [run] = runs
        assert run.status == DagsterRunStatus.SUCCESS
        assert "new campaign messages" in run.tags["promo/reason"]
        assert run.tags["dagster/sensor_name"] == "promo_work_sensor"
        [message] = pipeline.output()
        assert message.key() == SEED_CLIENT.encode()


def _parent(pid: int) -> int:
    return psutil.Process(pid).ppid()


def _cmdline(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline())


def _tree(root: int) -> list[int]:
    """`root` and every live descendant of it."""
    return [root, *(child.pid for child in psutil.Process(root).children(recursive=True))]


def test_run_killed_with_its_code_server_is_failed_and_a_later_run_does_the_work(
    pipeline: Pipeline, dagster_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL to the run worker, its Spark JVM and the code server that launched it, as a
    user_code container restart does: the default run launcher cannot see the run die, so
    without the sensor's lock check it stayed STARTED and held the one-run limit for ever."""
    due = pipeline.publish_active(campaigns=2, clients=3)
    faults = tmp_path / "faults"
    faults.mkdir()
    # Inherited by the code server and so by every run it launches: the first run pauses once
    # its first micro-batch is committed; later runs pass (the release file exists by then).
    monkeypatch.setenv("PROMO_FAULT_AT", "campaign_batch.committed")
    monkeypatch.setenv("PROMO_FAULT_DIR", str(faults))
    reached = faults / "campaign_batch.committed.reached"

    log = tmp_path / "daemon.log"
    with dagster_daemon(log) as daemon:

        def paused() -> bool:
            assert daemon.poll() is None, log.read_text()[-3000:]
            return reached.exists() and reached.read_text().strip().isdigit()

        poll(paused, 300, "the first run to pause at campaign_batch.committed", interval=1)
        [victim] = promo_runs()
        assert victim.status == DagsterRunStatus.STARTED
        worker = int(reached.read_text())
        code_server = _parent(worker)
        # The worker is the code server's (multiprocessing) child; its Spark JVM is the worker's.
        assert "api grpc" in _cmdline(code_server), _cmdline(code_server)
        doomed = _tree(code_server)
        assert worker in doomed and any("java" in _cmdline(pid) for pid in doomed)
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        (faults / "campaign_batch.committed.release").write_text("go")

        def victim_done() -> DagsterRun | None:
            assert daemon.poll() is None, log.read_text()[-3000:]
            run = DagsterInstance.get().get_run_by_id(victim.run_id)
            return run if run is not None and run.status in DONE else None

        ended = poll(victim_done, 300, f"run {victim.run_id[:8]} to be marked failed", 2)
        failed_after = time.monotonic() - killed_at
        assert ended.status == DagsterRunStatus.FAILURE
        [failure] = [
            event
            for event in DagsterInstance.get().all_logs(victim.run_id)
            if event.dagster_event is not None
            and event.dagster_event.event_type_value == "PIPELINE_FAILURE"
        ]
        assert "pipeline's Postgres lock" in failure.dagster_event.message

        def later_success() -> DagsterRun | None:
            assert daemon.poll() is None, log.read_text()[-3000:]
            return next(
                (
                    run
                    for run in promo_runs()
                    if run.run_id != victim.run_id and run.status == DagsterRunStatus.SUCCESS
                ),
                None,
            )

        follower = poll(later_success, 400, "a later promo_job run to succeed", 2)
        recovered_after = time.monotonic() - killed_at
    how = "retry" if "dagster/parent_run_id" in follower.tags else "sensor"
    print(
        f"\nkilled {len(doomed)} processes (code server {code_server}, run worker {worker}); "
        f"run {victim.run_id[:8]} marked FAILURE after {failed_after:.0f} s; run "
        f"{follower.run_id[:8]} ({how})"
        f" SUCCESS after {recovered_after:.0f} s"
    )
    assert failed_after < 300
    assert pipeline.pairs() == due
    assert {message.key() for message in pipeline.output()} == {
        client.encode() for _, client in due
    }
