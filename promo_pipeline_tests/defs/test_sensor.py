"""The sensor's run and skip decisions, against the real broker and database."""

from __future__ import annotations

import time

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRequest,
    SkipReason,
    build_sensor_context,
)

from promo_pipeline.defs.resources import kafka_resource, postgres_resource, run_options_resource
from promo_pipeline.defs.sensors import promo_work_sensor
from promo_pipeline_tests.support.dagster import tick
from promo_pipeline_tests.support.pipeline import Pipeline, campaign, new_uuid

pytestmark = [pytest.mark.stack, pytest.mark.spark]


def test_sensor_runs_on_new_input_and_new_subscribers_and_skips_otherwise(
    pipeline: Pipeline,
) -> None:
    instance = DagsterInstance.ephemeral()
    idle = tick(pipeline, instance)
    assert isinstance(idle, SkipReason)
    assert "no new campaign messages" in idle.skip_message

    active = campaign()
    pipeline.subscribe((new_uuid(), active["restaurant_id"]))
    pipeline.publish(active)
    wanted = tick(pipeline, instance)
    assert isinstance(wanted, RunRequest)
    assert "1 new campaign messages" in wanted.tags["promo/reason"]

    pipeline.run_ok()
    done = tick(pipeline, instance)
    assert isinstance(done, SkipReason), done
    assert "no active campaign has an untriggered subscriber" in done.skip_message

    pipeline.subscribe((new_uuid(), active["restaurant_id"]))
    joined = tick(pipeline, instance)
    assert isinstance(joined, RunRequest)
    assert active["adv_campaign_id"] in joined.tags["promo/reason"]


def test_sensor_waits_for_held_campaign_and_never_overlaps_runs(pipeline: Pipeline) -> None:
    instance = DagsterInstance.ephemeral()
    now = int(time.time())
    held = campaign(adv_campaign_datetime_start=now + 3600, adv_campaign_datetime_end=now + 7200)
    pipeline.subscribe((new_uuid(), held["restaurant_id"]))
    pipeline.publish(held)
    pipeline.run_ok()
    assert pipeline.pairs() == set()

    waiting = tick(pipeline, instance)
    assert isinstance(waiting, SkipReason)
    assert "next held campaign due at" in waiting.skip_message
    # The hour passes: the stored start moves to the database's now (no wait on the clock, and
    # no race with how long the run above took).
    pipeline.sql(
        "UPDATE promo.campaigns SET adv_campaign_datetime_start = "
        "floor(extract(epoch FROM clock_timestamp()))::int8 WHERE adv_campaign_id = %s",
        (held["adv_campaign_id"],),
    )
    assert isinstance(tick(pipeline, instance), RunRequest)

    instance.add_run(
        DagsterRun(job_name="promo_job", run_id=new_uuid(), status=DagsterRunStatus.STARTED)
    )
    busy = tick(pipeline, instance)
    assert isinstance(busy, SkipReason)
    assert "runs never overlap" in busy.skip_message


def test_sensor_fails_a_started_run_only_while_nobody_holds_the_pipeline_lock(
    pipeline: Pipeline,
) -> None:
    """A STARTED run whose process is gone holds no lock: seen so on two ticks
    DEAD_RUN_CONFIRM_S apart it is marked failed, even with a run queued behind it. A run
    holding the lock never is."""
    import json

    import psycopg
    from dagster import DagsterEvent, DagsterEventType

    from promo_pipeline.db import PIPELINE_LOCK, conninfo
    from promo_pipeline.defs.sensors import DEAD_RUN_CONFIRM_S

    instance = DagsterInstance.ephemeral()
    run = instance.add_run(
        DagsterRun(job_name="promo_job", run_id=new_uuid(), status=DagsterRunStatus.NOT_STARTED)
    )
    instance.report_dagster_event(
        DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name="promo_job"),
        run_id=run.run_id,
    )
    [record] = instance.get_run_records()
    started = record.start_time
    assert record.dagster_run.status == DagsterRunStatus.STARTED and started
    # A newer run waits behind it (the one-run tag limit): the sensor must still look at the
    # STARTED one. (NOT_STARTED: a QUEUED run needs a code location's origin.)
    waiting = instance.add_run(
        DagsterRun(job_name="promo_job", run_id=new_uuid(), status=DagsterRunStatus.NOT_STARTED)
    )

    def tick_with(cursor: str | None) -> tuple[RunRequest | SkipReason, str | None]:
        context = build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={
                "kafka": kafka_resource(pipeline.settings),
                "postgres": postgres_resource(pipeline.settings),
                "run_options": run_options_resource(pipeline.settings),
            },
        )
        return promo_work_sensor(context), context.cursor

    # Alive: it holds the lock, so even a suspicion from long ago is dropped.
    long_ago = json.dumps({"suspect": {"run_id": run.run_id, "since": started - 3600}})
    with psycopg.connect(conninfo(pipeline.settings), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (PIPELINE_LOCK,))
        alive, cursor = tick_with(long_ago)
        assert "runs never overlap" in alive.skip_message
        assert json.loads(cursor) == {"suspect": None}
    # Gone: the lock went with its connection. First a suspicion, then, a tick later, a failure.
    first, cursor = tick_with(cursor)
    assert "STARTED without the pipeline lock" in first.skip_message
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
    since = json.loads(cursor)["suspect"]["since"]
    while time.time() < max(since, started) + DEAD_RUN_CONFIRM_S:  # the clock, not a sync
        time.sleep(0.5)
    second, _ = tick_with(cursor)
    assert f"marked dead run {run.run_id[:8]} failed" in second.skip_message
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    # The slot is free: the waiting run is what the next tick waits for.
    after, _ = tick_with(None)
    assert f"{waiting.run_id[:8]} is NOT_STARTED" in after.skip_message


def test_sensor_survives_a_stored_millisecond_campaign(pipeline: Pipeline) -> None:
    from promo_pipeline_tests.support.faults import wait_topics_ready
    from promo_pipeline_tests.support.pipeline import insert_campaign, millisecond_campaign

    wait_topics_ready(pipeline.settings)  # the tick reads watermarks of the topic just created
    stored = millisecond_campaign()
    insert_campaign(pipeline, stored)
    idle = tick(pipeline, DagsterInstance.ephemeral())
    assert isinstance(idle, SkipReason), idle
    start = stored["adv_campaign_datetime_start"]
    assert f"next held campaign due at epoch {start} (out of range)" in idle.skip_message


def test_next_run_sensor_launches_a_run_right_after_one_that_left_work(
    pipeline: Pipeline,
) -> None:
    """On a run's success: a run if a fan-out is left in progress or campaigns arrived while it
    ran, none if nothing is left or a run is already launched (runs never overlap)."""
    from dagster import DagsterEvent, DagsterEventType, build_run_status_sensor_context

    from promo_pipeline.defs.sensors import promo_next_run_sensor
    from promo_pipeline_tests.support.faults import wait_topics_ready

    wait_topics_ready(pipeline.settings)  # the sensor reads watermarks of the topics just made
    instance = DagsterInstance.ephemeral()
    finished = instance.add_run(
        DagsterRun(job_name="promo_job", run_id=new_uuid(), status=DagsterRunStatus.SUCCESS)
    )

    def after_success() -> RunRequest | SkipReason:
        context = build_run_status_sensor_context(
            sensor_name="promo_next_run_sensor",
            dagster_event=DagsterEvent(
                event_type_value=DagsterEventType.RUN_SUCCESS.value, job_name="promo_job"
            ),
            dagster_instance=instance,
            dagster_run=finished,
            resources={
                "kafka": kafka_resource(pipeline.settings),
                "postgres": postgres_resource(pipeline.settings),
                "run_options": run_options_resource(pipeline.settings),
            },
        )
        result = promo_next_run_sensor(context)
        assert isinstance(result, RunRequest | SkipReason)
        return result

    idle = after_success()
    assert isinstance(idle, SkipReason)
    assert f"after run {finished.run_id[:8]}" in idle.skip_message

    giant = campaign()
    pipeline.subscribe(*[(new_uuid(), giant["restaurant_id"]) for _ in range(3)])
    pipeline.publish(giant)
    arrived = after_success()  # published while the run ran
    assert isinstance(arrived, RunRequest)
    assert "1 new campaign messages" in arrived.tags["promo/reason"]
    pipeline.run_ok()
    assert isinstance(after_success(), SkipReason)

    # A walk stopped by its run's budget, as a run leaves it: active, not done, a cursor saved.
    pipeline.sql(
        "UPDATE promo.campaigns SET fanout_through = NULL, fanout_cursor = '0', "
        "fanout_started_at = 1 WHERE adv_campaign_id = %s",
        (giant["adv_campaign_id"],),
    )
    left = after_success()
    assert isinstance(left, RunRequest)
    assert giant["adv_campaign_id"] in left.tags["promo/reason"]
    assert left.tags["promo/reason"].startswith(f"after run {finished.run_id[:8]}")

    queued = instance.add_run(
        DagsterRun(job_name="promo_job", run_id=new_uuid(), status=DagsterRunStatus.NOT_STARTED)
    )
    launched = after_success()
    assert isinstance(launched, SkipReason)
    assert f"run {queued.run_id[:8]} is already launched" in launched.skip_message


def test_sensor_fails_a_run_never_submitted_to_the_queue(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run retry created while the Dagster database went away stayed NOT_STARTED (never
    queued), and the sensor waited for it for ever (found by bench/soak.py). Past
    ORPHAN_RUN_S it is marked failed and the same tick goes on to the work."""
    from promo_pipeline.defs import sensors

    instance = DagsterInstance.ephemeral()
    active = campaign()
    pipeline.subscribe((new_uuid(), active["restaurant_id"]))
    pipeline.publish(active)
    orphan = instance.add_run(
        DagsterRun(job_name="promo_job", run_id=new_uuid(), status=DagsterRunStatus.NOT_STARTED)
    )
    fresh = tick(pipeline, instance)
    assert isinstance(fresh, SkipReason)
    assert f"{orphan.run_id[:8]} is NOT_STARTED" in fresh.skip_message
    assert instance.get_run_by_id(orphan.run_id).status == DagsterRunStatus.NOT_STARTED

    monkeypatch.setattr(sensors, "ORPHAN_RUN_S", 0)
    assert isinstance(tick(pipeline, instance), RunRequest)
    failed = instance.get_run_by_id(orphan.run_id)
    assert failed.status == DagsterRunStatus.FAILURE
    [failure] = [
        e.dagster_event.message
        for e in instance.all_logs(orphan.run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_FAILURE"
    ]
    assert "never submitted to the run queue" in failure
