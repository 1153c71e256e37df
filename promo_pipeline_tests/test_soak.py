"""The CI soak: `bench/soak.py` on a stack of its own, about five minutes from the warm-up to
the end of the drain (four of traffic) with four fault kinds, two of them overlapping, then its
verification asserted: nothing lost, nothing doubled, no run stuck, the DLQ exactly the invalid
input, held and cancelled campaigns right, the outbox empty. The Connect server kill, whose
restart costs most, is left to the long soak, the documented command (docs/reliability.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from promo_pipeline.stack import LocalStack
from promo_pipeline_tests.support.pipeline import REPO
from promo_pipeline_tests.support.stack import destroy

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.spark, pytest.mark.daemon]


# Minutes on a quiet machine; a loaded one (other stacks beside it) takes several times longer.
@pytest.mark.timeout(1800)
def test_five_minute_soak_with_faults_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    stack_dir = tmp_path / "stack"
    args = [
        *("--minutes", "4", "--seed", "18", "--giant-subscribers", "20000"),
        *("--giant-every", "100", "--held-every", "4", "--cancel-share", "0.5"),
        *("--invalid-every", "15"),
        *("--kinds", "worker,kafka,postgres,daemon", "--drain-timeout", "600"),
        *("--stack-dir", str(stack_dir), "--name", "soak_ci", "--out", str(out)),
    ]
    try:
        soak = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "soak.py"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = soak.communicate(timeout=1700)
        except subprocess.TimeoutExpired:
            # SIGINT, not the SIGKILL of run(timeout=): the soak stops the daemon it started.
            soak.send_signal(signal.SIGINT)
            stdout, stderr = soak.communicate(timeout=120)
    finally:
        destroy(LocalStack(stack_dir))
    assert soak.returncode == 0, stderr[-4000:] + stdout[-2000:]
    result = json.loads(out.read_text())
    v, runs = result["verified"], result["runs"]
    assert {f["kind"] for f in result["faults"]} == {"worker", "kafka", "postgres", "daemon"}
    assert result["drained"], result["figures"]
    assert v["expected_pairs"] > 20_000 and v["held_due"] > 0 and v["cancelled"] > 0, v
    assert v["pg_lost_pairs"] == v["kafka_lost_pairs"] == 0, v
    assert v["pg_duplicate_rows"] == v["pg_unexpected_pairs"] == v["kafka_unexpected_pairs"] == 0
    assert v["kafka_copies_differing"] == 0, v
    assert v["held_fired_early"] == [] and v["held_not_fired"] == 0, v
    assert v["cancelled_fired_rows"] == 0, v
    assert v["invalid_published"] > 0 and v["invalid_missing_from_dlq"] == 0, v
    assert v["valid_in_dlq"] == 0, v
    assert v["outbox_left"] == 0, v
    assert runs["stuck"] == 0, runs
    assert result["daemon_exits_unplanned"] == [], result["daemon_exits_unplanned"]
