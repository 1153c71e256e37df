"""The Dagster UI in a real browser, started as the README says: `dg dev` in a project folder
whose .env (as `promo stack up` writes it) is its only source of settings; Debian's Chromium
driven by playwright-core (ui/ui_check.mjs). The graph shows the five assets and their edges,
the job launched from the UI succeeds, its trigger reaches both sinks, push_sink and triggers
each materialized alone succeed, campaign_batch's numbers are plotted, and the screenshots are
kept in artifacts/ui/ and, those the README shows, in docs/screenshots/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from promo_pipeline.cli.stack import DOTENV, DOTENV_MARK
from promo_pipeline.stack.local import write_env_file
from promo_pipeline_tests.support.dagster import STACK_PREFIXES, dg_dev, dg_project
from promo_pipeline_tests.support.pipeline import SEED_CAMPAIGN, SEED_CLIENT, Pipeline

pytestmark = [pytest.mark.stack, pytest.mark.spark, pytest.mark.daemon]

REPO = Path(__file__).resolve().parents[2]
UI_DIR = Path(__file__).resolve().parent
ARTIFACTS = REPO / "artifacts" / "ui"
# The screenshots the README shows, rewritten by every passing run.
DOCS = REPO / "docs" / "screenshots"
README_SHOTS = (
    "01-asset-graph",
    "03-run",
    "04-push-sink-checks",
    "05-campaign-batch",
    "06-sensor",
)
CHROMIUM = Path("/usr/bin/chromium")

EXPECTED_EDGES = [
    ["campaign_batch", "subscriber_snapshot"],
    ["campaign_batch", "triggers"],
    ["feedback_sink", "push_sink"],
    ["subscriber_snapshot", "triggers"],
    ["triggers", "feedback_sink"],
]


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

    # The test's stack settings, written as `promo stack up` writes them; dg dev sees no other.
    project = dg_project(tmp_path / "project")
    settings = {k: v for k, v in os.environ.items() if k.startswith(STACK_PREFIXES)}
    write_env_file(project / DOTENV, settings, header=DOTENV_MARK)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(STACK_PREFIXES)}
    log_path = tmp_path / "dg_dev.log"
    with dg_dev(project, clean, log_path) as url:
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
            f"{check.stderr[-3000:]}\n--- dg dev ---\n{log_path.read_text()[-3000:]}"
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
            "05-campaign-batch",
            "06-sensor",
            "07-push_sink-alone",
            "07-triggers-alone",
        ):
            assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000, name
        assert seen["plots"] > 0, "campaign_batch's Plots view drew no chart"
    # dg dev took its settings from the .env alone.
    assert "Loaded environment variables from .env file" in log_path.read_text()
    # Passed: the README's screenshots are this run's.
    for name in README_SHOTS:
        shutil.copyfile(ARTIFACTS / f"{name}.png", DOCS / f"{name}.png")
