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

from promo_pipeline.resources import kafka_resource, postgres_resource, state_resource
from promo_pipeline.sensors import promo_work_sensor
from promo_pipeline_tests.conftest import Pipeline, campaign, new_uuid

pytestmark = [pytest.mark.stack, pytest.mark.spark]


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
    held = campaign(adv_campaign_datetime_start=now + 12, adv_campaign_datetime_end=now + 3600)
    pipeline.subscribe((new_uuid(), held["restaurant_id"]))
    pipeline.publish(held)
    pipeline.run_ok()
    assert pipeline.pairs() == set()

    waiting = tick(pipeline, instance)
    assert time.time() < held["adv_campaign_datetime_start"], "setup too slow for this check"
    assert isinstance(waiting, SkipReason)
    assert "next held campaign due at" in waiting.skip_message
    while time.time() < held["adv_campaign_datetime_start"]:  # the clock, not a sync sleep
        time.sleep(0.2)
    assert isinstance(tick(pipeline, instance), RunRequest)

    instance.add_run(
        DagsterRun(job_name="promo_job", run_id=new_uuid(), status=DagsterRunStatus.STARTED)
    )
    busy = tick(pipeline, instance)
    assert isinstance(busy, SkipReason)
    assert "runs never overlap" in busy.skip_message


def test_sensor_survives_a_stored_millisecond_campaign(pipeline: Pipeline) -> None:
    from promo_pipeline_tests.faults import wait_topics_ready
    from promo_pipeline_tests.test_cli import insert_campaign, millisecond_campaign

    wait_topics_ready(pipeline.settings)  # the tick reads watermarks of the topic just created
    stored = millisecond_campaign()
    insert_campaign(pipeline, stored)
    idle = tick(pipeline, DagsterInstance.ephemeral())
    assert isinstance(idle, SkipReason), idle
    start = stored["adv_campaign_datetime_start"]
    assert f"next held campaign due at epoch {start} (out of range)" in idle.skip_message
