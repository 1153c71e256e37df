"""Every minute: launch the job when there is work, otherwise say why not; and fail a run
whose process is gone, so it cannot block every later run. Within seconds of a run's success:
launch the next one if work is left (a fan-out stopped by its budget, campaigns published while
it ran), so that work does not wait for the next minute's tick."""

import json
import time

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRecord,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_status_sensor,
    sensor,
)

from promo_pipeline.db import pipeline_lock_holders
from promo_pipeline.defs.jobs import promo_job
from promo_pipeline.defs.resources import KafkaResource, PostgresResource, RunOptionsResource
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
    run_options: RunOptionsResource,
) -> RunRequest | SkipReason:
    running = fail_orphans(
        context,
        context.instance.get_run_records(
            RunsFilter(job_name=promo_job.name, statuses=ACTIVE_STATUSES)
        ),
    )
    if running:
        # The oldest STARTED run first: a dead one blocks every queued run behind it.
        started = [r for r in running if r.dagster_run.status == DagsterRunStatus.STARTED]
        return check_run_alive(context, started[-1] if started else running[0], postgres)
    _set_suspect(context, None)
    work = find_work(kafka, postgres, run_options.checkpoint_dir)
    if not work.due:
        return SkipReason("; ".join(work.skip_reasons))
    context.log.info("work found: " + "; ".join(work.reasons))
    return RunRequest(tags={"promo/reason": "; ".join(work.reasons)[:1000]})


# The sensor daemon's loop comes round every 5 s at best (dagster/_daemon/sensor.py).
NEXT_RUN_INTERVAL_S = 5


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[promo_job],
    request_job=promo_job,
    minimum_interval_seconds=NEXT_RUN_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Right after a promo_job run succeeds: launches the next one if work is left "
    "(a fan-out its run budget stopped, campaigns published while it ran), instead of leaving "
    "it to promo_work_sensor's next tick up to a minute later.",
)
def promo_next_run_sensor(
    context: RunStatusSensorContext,
    kafka: KafkaResource,
    postgres: PostgresResource,
    run_options: RunOptionsResource,
) -> RunRequest | SkipReason:
    finished = context.dagster_run.run_id
    running = context.instance.get_run_records(
        RunsFilter(job_name=promo_job.name, statuses=ACTIVE_STATUSES), limit=1
    )
    if running:
        # promo_work_sensor's tick came first; runs never overlap.
        return SkipReason(f"run {running[0].dagster_run.run_id[:8]} is already launched")
    work = find_work(kafka, postgres, run_options.checkpoint_dir)
    if not work.due:
        return SkipReason(f"after run {finished[:8]}: " + "; ".join(work.skip_reasons))
    reason = f"after run {finished[:8]}: " + "; ".join(work.reasons)
    context.log.info("work left: " + reason)
    return RunRequest(tags={"promo/reason": reason[:1000]})


# A STARTED run holds the pipeline's Postgres lock from its resource set-up to its end. Seen without
# it on two ticks at least this far apart (and started at least as long ago), its process is
# gone: the default run launcher cannot tell, so run monitoring would leave it STARTED for ever.
DEAD_RUN_CONFIRM_S = 45


def check_run_alive(
    context: SensorEvaluationContext, record: RunRecord, postgres: PostgresResource
) -> SkipReason:
    """Skip while a run is in progress; mark it failed once it has provably died."""
    run = record.dagster_run
    in_progress = SkipReason(
        f"runs in progress: {run.run_id[:8]} is {run.status.value}; runs never overlap, "
        "the next tick looks again"
    )
    now = time.time()
    started = record.start_time
    if run.status != DagsterRunStatus.STARTED or started is None:
        _set_suspect(context, None)
        return in_progress
    holders = pipeline_lock_holders(postgres)
    if holders:
        _set_suspect(context, None)
        return in_progress
    suspect = _suspect(context)
    if suspect is None or suspect[0] != run.run_id:
        _set_suspect(context, (run.run_id, now))
        context.log.warning(
            f"run {run.run_id[:8]} is STARTED but no process holds the pipeline lock; "
            "it is marked failed if still so at the next tick"
        )
        return SkipReason(
            f"run {run.run_id[:8]} is STARTED without the pipeline lock (dead or just "
            "starting); checked again at the next tick"
        )
    if now - suspect[1] < DEAD_RUN_CONFIRM_S or now - started < DEAD_RUN_CONFIRM_S:
        return in_progress
    current = context.instance.get_run_by_id(run.run_id)
    if current is None or current.status != DagsterRunStatus.STARTED:
        _set_suspect(context, None)
        return in_progress
    message = (
        f"promo_work_sensor: run {run.run_id} STARTED {now - started:.0f} s ago, but no process "
        f"has held the pipeline's Postgres lock for {now - suspect[1]:.0f} s: its run worker is "
        "gone (killed, out of memory, container restarted). Marked failed so later runs can start."
    )
    context.log.error(message)
    context.instance.report_run_failed(current, message)
    _set_suspect(context, None)
    return SkipReason(
        f"marked dead run {run.run_id[:8]} failed (no process held the pipeline lock); "
        "the next tick looks for work"
    )


# A run is NOT_STARTED only from its creation to its submission to the queue, moments later in the
# same daemon iteration. One still so after this long lost its submission (the Dagster database
# went away in between: a run retry did, across a Postgres restart) and nothing will start it.
ORPHAN_RUN_S = 120


def fail_orphans(context: SensorEvaluationContext, running: list[RunRecord]) -> list[RunRecord]:
    """Mark failed every NOT_STARTED run never submitted; the rest of `running` is returned."""
    now = time.time()
    kept = []
    for record in running:
        run, age = record.dagster_run, now - record.create_timestamp.timestamp()
        if run.status != DagsterRunStatus.NOT_STARTED or age <= ORPHAN_RUN_S:
            kept.append(record)
            continue
        message = (
            f"promo_work_sensor: run {run.run_id} NOT_STARTED {age:.0f} s after it was created: "
            "it was never submitted to the run queue (the Dagster database was unreachable "
            "then), so nothing would start it. Marked failed so later runs can start."
        )
        context.log.error(message)
        context.instance.report_run_failed(run, message)
    return kept


def _suspect(context: SensorEvaluationContext) -> tuple[str, float] | None:
    """The run last seen STARTED without the lock, and since when (kept in the cursor)."""
    if not context.cursor:
        return None
    state = json.loads(context.cursor).get("suspect")
    return (state["run_id"], float(state["since"])) if state else None


def _set_suspect(context: SensorEvaluationContext, suspect: tuple[str, float] | None) -> None:
    value = {"run_id": suspect[0], "since": suspect[1]} if suspect else None
    cursor = json.dumps({"suspect": value})
    if context.cursor != cursor and (context.cursor or suspect):
        context.update_cursor(cursor)
