"""Production mode in miniature: the Dagster daemon ticks the sensor, the queued run
coordinator launches the job in its own process, and a trigger arrives in both sinks."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from promo_pipeline.stack._proc import stop_process_group
from promo_pipeline_tests.conftest import SEED_CAMPAIGN, SEED_CLIENT, Pipeline

pytestmark = [pytest.mark.stack, pytest.mark.spark, pytest.mark.daemon]

REPO = Path(__file__).resolve().parents[1]


def test_daemon_sensor_launches_job_and_trigger_reaches_both_sinks(
    pipeline: Pipeline, dagster_home: Path, tmp_path: Path
) -> None:
    pipeline.subscribe((SEED_CLIENT, SEED_CAMPAIGN["restaurant_id"]))
    pipeline.publish(SEED_CAMPAIGN)

    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(Path(os.sys.executable).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"],
        cwd=REPO,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not pipeline.pairs():
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(2)
        assert pipeline.pairs() == {(SEED_CAMPAIGN["adv_campaign_id"], SEED_CLIENT)}, (
            tmp_path / "daemon.log"
        ).read_text()[-3000:]
        instance = DagsterInstance.get()
        while time.monotonic() < deadline:
            runs = instance.get_runs(RunsFilter(job_name="promo_job"))
            if runs and runs[0].status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
                break
            time.sleep(1)
        [run] = runs
        assert run.status == DagsterRunStatus.SUCCESS
        assert "new campaign messages" in run.tags["promo/reason"]
        assert run.tags["dagster/sensor_name"] == "promo_work_sensor"
        [message] = pipeline.output()
        assert message.key() == SEED_CLIENT.encode()
    finally:
        stop_process_group(daemon.pid, timeout=30)
        daemon.wait(10)
        log.close()
