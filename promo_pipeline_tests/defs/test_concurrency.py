"""Two runs at once, and a run killed while holding the pipeline lock.

The runs are real `promo run` processes. The first to take the Postgres advisory lock pauses
at a fault point (after its Postgres sink), so the other certainly meets a held lock.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import Failure, build_init_resource_context

from promo_pipeline.db import PIPELINE_LOCK
from promo_pipeline.defs.resources import (
    PipelineLockResource,
    postgres_resource,
    under_pipeline_lock,
)
from promo_pipeline_tests.support.faults import ChildRun, check_recovered, poll
from promo_pipeline_tests.support.pipeline import Pipeline

pytestmark = [pytest.mark.stack, pytest.mark.spark]

PAUSE_AT = "feedback_sink.committed"
REFUSAL = "another promo_pipeline run is in progress"
BAD = b'{"adv_campaign_id": "oops"'


def prepare(pipeline: Pipeline) -> set[tuple[str, str]]:
    """Two active campaigns with three subscribers each, and one bad message."""
    expected = pipeline.publish_active(campaigns=2, clients=3)
    pipeline.publish(BAD)
    return expected


def lock_holders(pipeline: Pipeline) -> int:
    return pipeline.sql(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND objid = hashtext(%s)::oid",
        (PIPELINE_LOCK,),
    )[0][0]


@pytest.mark.timeout(900)
def test_two_runs_at_once_one_proceeds_the_other_refuses(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    expected = prepare(pipeline)
    runs = [
        ChildRun(pipeline.env, tmp_path / f"run{i}.log", fault_at=PAUSE_AT,
                 fault_dir=tmp_path / f"fault{i}")
        for i in range(2)
    ]  # fmt: skip
    try:
        # One run takes the lock and pauses holding it; the other ends, refused.
        poll(
            lambda: any(r.reached() for r in runs) and any(r.proc.poll() is not None for r in runs),
            300,
            "one run paused with the lock and the other ended",
        )
        [winner] = [r for r in runs if r.reached()]
        [loser] = [r for r in runs if r is not winner]
        assert loser.wait() == 1
        assert REFUSAL in loser.output and "this run did nothing" in loser.output, loser.output
        assert lock_holders(pipeline) == 1
        winner.release()
        assert winner.wait() == 0, winner.output[-3000:]
    finally:
        for run in runs:
            run.stop()

    # Nothing corrupted, nothing done twice: every trigger once in each sink, the bad
    # message once in the DLQ, and campaign batches recorded by one run only.
    recovery = check_recovered(pipeline, expected)
    assert recovery.ok, recovery.problems
    assert recovery.messages == len(expected) and recovery.duplicates == 0
    assert [m.value() for m in pipeline.dead_letters()] == [BAD]
    assert pipeline.sql("SELECT count(DISTINCT run_id) FROM promo.campaign_batches") == [(1,)]
    assert lock_holders(pipeline) == 0


@pytest.mark.timeout(900)
def test_lock_of_a_killed_run_does_not_block_the_next(pipeline: Pipeline, tmp_path: Path) -> None:
    expected = prepare(pipeline)
    killed = ChildRun(pipeline.env, tmp_path / "killed.log", fault_at=PAUSE_AT,
                      fault_dir=tmp_path / "fault")  # fmt: skip
    try:
        killed.wait_reached()
        assert lock_holders(pipeline) == 1
        killed.kill()  # SIGKILL: no teardown, no unlock
    finally:
        killed.stop()
    # The lock belongs to the dead run's database session, which ends with its connection.
    poll(lambda: lock_holders(pipeline) == 0, 30, "Postgres to drop the dead run's lock")
    assert pipeline.sql("SELECT count(*) FROM promo.unsent_triggers") == [(len(expected),)]

    follower = ChildRun(pipeline.env, tmp_path / "next.log")
    assert follower.wait() == 0, follower.output[-3000:]
    assert REFUSAL not in follower.output
    recovery = check_recovered(pipeline, expected)
    assert recovery.ok, recovery.problems
    assert recovery.duplicates == 0
    sent = {(json.loads(m.value())["adv_campaign_id"], m.key().decode()) for m in pipeline.output()}
    assert sent == expected


def test_a_step_whose_run_lost_the_lock_does_nothing(pipeline: Pipeline) -> None:
    lock = PipelineLockResource(postgres=postgres_resource(pipeline.settings))
    lock.setup_for_execution(build_init_resource_context())
    ran: list[str] = []
    try:
        with lock.held("first_step"):
            ran.append("first_step")
        assert lock_holders(pipeline) == 1  # kept between steps
        # The lock's session ends (a restarted database, a killed backend): the run no longer
        # keeps others out, so its next step refuses before its body.
        pipeline.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND objid = hashtext(%s)::oid",
            (PIPELINE_LOCK,),
        )
        poll(lambda: lock_holders(pipeline) == 0, 30, "Postgres to end the lock's session")
        refused = "next_step: the run does not hold the pipeline lock"
        with pytest.raises(Failure, match=refused), lock.held("next_step"):
            ran.append("next_step")
    finally:
        lock.teardown_after_execution(build_init_resource_context())
    assert ran == ["first_step"]


def test_an_asset_body_without_the_lock_parameter_is_refused_at_import() -> None:
    def careless(context: object) -> None: ...

    with pytest.raises(TypeError, match="careless: declare pipeline_lock"):
        under_pipeline_lock(careless)
