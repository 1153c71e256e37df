"""The Dagster UI in a real browser: `dagster dev` on the project's workspace, Debian's Chromium
driven by playwright-core (ui/ui_check.mjs). The graph shows the five assets and their edges,
the job launched from the UI succeeds, its trigger reaches both sinks, push_sink and triggers
each materialized alone succeed, and the screenshots are kept in artifacts/ui/."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from promo_pipeline.stack._proc import stop_process_group
from promo_pipeline_tests.support.pipeline import SEED_CAMPAIGN, SEED_CLIENT, Pipeline

pytestmark = [pytest.mark.stack, pytest.mark.spark, pytest.mark.daemon]

REPO = Path(__file__).resolve().parents[2]
UI_DIR = Path(__file__).resolve().parent
ARTIFACTS = REPO / "artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")

EXPECTED_EDGES = [
    ["campaign_batch", "subscriber_snapshot"],
    ["campaign_batch", "triggers"],
    ["feedback_sink", "push_sink"],
    ["subscriber_snapshot", "triggers"],
    ["triggers", "feedback_sink"],
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_ui(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll until the webserver answers; fail with its log if it dies or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"dagster dev exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"dagster dev did not answer in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_ui_shows_graph_launches_job_and_run_succeeds(
    pipeline: Pipeline, dagster_home: Path, tmp_path: Path
) -> None:
    node = shutil.which("node")
    assert node and CHROMIUM.exists(), "node and Debian's chromium are needed: scripts/bootstrap"
    assert (UI_DIR / "node_modules" / "playwright-core").is_dir(), (
        "playwright-core is not installed: scripts/bootstrap (npm ci in promo_pipeline_tests/ui)"
    )
    pipeline.subscribe((SEED_CLIENT, SEED_CAMPAIGN["restaurant_id"]))
    pipeline.publish(SEED_CAMPAIGN)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "dagster_dev.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dagster")),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        started = time.monotonic()
        wait_for_ui(url, server, log_path, timeout=180)
        print(f"dagster dev answered after {time.monotonic() - started:.1f} s")
        if ARTIFACTS.exists():
            shutil.rmtree(ARTIFACTS)
        check = subprocess.run(
            [node, str(UI_DIR / "ui_check.mjs")],
            cwd=UI_DIR,
            env={**os.environ, "DAGSTER_URL": url, "ARTIFACTS_DIR": str(ARTIFACTS)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        print(check.stderr)
        assert check.returncode == 0, (
            f"{check.stderr[-3000:]}\n--- dagster dev ---\n{log_path.read_text()[-3000:]}"
        )
        seen = json.loads(check.stdout.strip().splitlines()[-1])
        assert seen["nodes"] == [
            "campaign_batch",
            "feedback_sink",
            "push_sink",
            "subscriber_snapshot",
            "triggers",
        ]
        # Every dependency is drawn. Depending on the zoom Dagster picks, its layout may route
        # one extra segment between neighbouring columns, so the drawing may hold more.
        assert [edge for edge in EXPECTED_EDGES if edge not in seen["edges"]] == []
        known = set(seen["nodes"])
        assert all(set(edge) <= known for edge in seen["edges"]), seen["edges"]
        assert seen["status"] == "Success"

        instance = DagsterInstance.get()
        run = instance.get_run_by_id(seen["runId"])
        assert run is not None and run.job_name == "promo_job"
        assert run.status == DagsterRunStatus.SUCCESS
        # The sensor may have launched a run first; whichever did, the trigger is in both sinks.
        assert pipeline.pairs() == {(SEED_CAMPAIGN["adv_campaign_id"], SEED_CLIENT)}
        [message] = pipeline.output()
        assert message.key() == SEED_CLIENT.encode()
        # push_sink and triggers, each materialized alone from its asset page, succeeded.
        for name in ("push_sink", "triggers"):
            alone = instance.get_run_by_id(seen["alone"][name]["runId"])
            assert alone is not None and alone.asset_selection == {AssetKey(name)}
            assert alone.status == DagsterRunStatus.SUCCESS, seen["alone"]
        for name in (
            "01-asset-graph",
            "02-job",
            "03-run",
            "04-push-sink-checks",
            "07-push_sink-alone",
            "07-triggers-alone",
        ):
            assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000, name
    finally:
        # dagster dev stops its webserver, daemon and code server on SIGTERM; whatever is
        # left after 20 s (a run worker, or SIGTERM ignored by the parent) is killed.
        stop_process_group(server.pid, timeout=20)
        server.wait(10)
        log.close()
