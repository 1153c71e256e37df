"""Every minute: launch the job when there is work, otherwise say why not."""

import time

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from promo_pipeline.jobs import promo_job
from promo_pipeline.resources import KafkaResource, PostgresResource, StateResource
from promo_pipeline.work import find_work

ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


@sensor(
    job=promo_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Launches promo_job on new campaign messages, a recreated input topic, a held "
    "campaign now due, new subscribers of an active campaign, or triggers awaiting Kafka "
    "delivery; skips, naming the file, while the input checkpoint is corrupt.",
)
def promo_work_sensor(
    context: SensorEvaluationContext,
    kafka: KafkaResource,
    postgres: PostgresResource,
    state: StateResource,
) -> RunRequest | SkipReason:
    running = context.instance.get_run_records(
        RunsFilter(job_name=promo_job.name, statuses=ACTIVE_STATUSES), limit=1
    )
    if running:
        run = running[0].dagster_run
        return SkipReason(
            f"runs in progress: {run.run_id[:8]} is {run.status.value}; runs never overlap, "
            "the next tick looks again"
        )
    work = find_work(kafka, postgres, state.checkpoint_dir, int(time.time()))
    if not work.due:
        return SkipReason("; ".join(work.idle))
    context.log.info("work found: " + "; ".join(work.reasons))
    return RunRequest(tags={"promo/reason": "; ".join(work.reasons)[:1000]})
