"""The campaign batch: new messages from the input topic, validated, folded into campaign state."""

import json
from dataclasses import replace
from functools import partial
from typing import Any

import psycopg
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from promo_pipeline.checkpoint import (
    CheckpointError,
    InputError,
    InputPlan,
    commit_group_offsets,
    committed_offsets,
    describe_gaps,
    initial_offsets,
    plan_input,
    record_offsets,
)
from promo_pipeline.defs.resources import (
    KafkaResource,
    PipelineLockResource,
    PostgresResource,
    RunOptionsResource,
    SparkResource,
    under_pipeline_lock,
)
from promo_pipeline.ingest import (
    CampaignTally,
    IngestTarget,
    campaign_windows,
    ingest_batch,
    offsets_read,
    root_cause,
)
from promo_pipeline.settings import load_settings

# Checks of what the batch itself read, evaluated in its body from its own tally and plan.
REJECTED_SHARE = AssetCheckSpec(
    "rejected_share_below_threshold",
    asset="campaign_batch",
    description="The share of rejected campaign messages (sent to the DLQ) stays below "
    "PROMO_REJECT_WARN_RATIO (default 0.1). A warning, not a failure: bad input is the "
    "publishers' problem and never stops the pipeline.",
)
INPUT_LOST = AssetCheckSpec(
    "no_input_lost_before_read",
    asset="campaign_batch",
    description="No campaign message was deleted from the input topic (retention, "
    "delete_records) before the pipeline read it. An ERROR names the lost offset ranges; the "
    "run itself goes on with the messages that exist, so one loss never stops the pipeline.",
)


@asset(
    group_name="promo",
    kinds={"spark", "kafka", "postgres"},
    description="New campaign messages since the checkpoint, validated; valid ones update "
    "promo.campaigns, invalid ones go to the DLQ with their reason.",
    check_specs=[REJECTED_SHARE, INPUT_LOST],
)
@under_pipeline_lock
def campaign_batch(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    spark: SparkResource,
    kafka: KafkaResource,
    postgres: PostgresResource,
    run_options: RunOptionsResource,
) -> MaterializeResult:
    # The run's first Kafka contact: unreachable brokers or rejected credentials stop it here,
    # with the reason, before Spark starts or anything is written.
    context.log.info(f"Kafka client: {kafka.described()}")
    kafka.check_access()
    target = IngestTarget(
        conninfo=postgres.conninfo(),
        kafka=kafka.plain(),
        run_id=context.run_id,
    )
    plan = _plan(context, kafka, run_options, target)
    target = replace(target, topic_id=plan.topic_id)
    before = committed_offsets(run_options.checkpoint_dir)
    # Nothing past the checkpoint (and no recreated topic): no streaming query, no Spark at all;
    # a run for new subscriptions or unsent triggers does not pay for reading nothing.
    progress = (
        _read(context, spark, kafka, run_options, plan, target)
        if plan.waiting or plan.recreated
        else []
    )
    after = committed_offsets(run_options.checkpoint_dir)
    ranges = offsets_read(progress, before, after, initial_offsets(run_options.checkpoint_dir))
    record_offsets(target.conninfo, context.run_id, kafka.input_topic, plan.topic_id, ranges)
    group_error = commit_group_offsets(
        kafka, {p: o for (topic, p), o in after.items() if topic == kafka.input_topic}
    )
    if group_error:
        context.log.warning(
            f"read positions not committed to consumer group {kafka.consumer_group} (lag tools "
            f"show stale lag; the checkpoint is unaffected): {group_error}"
        )
    tally = CampaignTally.of_run(target.conninfo, context.run_id)
    windows = campaign_windows(target.conninfo, ranges)
    active, held, expired, cancelled = windows
    context.log.info(
        f"campaign batch: {tally.messages} messages in {tally.batches} micro-batches, "
        f"{tally.valid} valid, {tally.rejected_total} rejected; of the campaigns read "
        f"{active} active, {held} held for later, {expired} expired, {cancelled} cancelled"
    )
    metadata = _metadata(tally, windows, ranges, plan)
    metadata["consumer_group"] = kafka.consumer_group
    metadata["consumer_group_committed"] = group_error is None
    return MaterializeResult(
        metadata=metadata, check_results=[_rejected_share(tally), _input_lost(plan)]
    )


def _rejected_share(tally: CampaignTally) -> AssetCheckResult:
    threshold = load_settings().promo_reject_warn_ratio
    share = tally.rejected_total / tally.messages if tally.messages else 0.0
    return AssetCheckResult(
        check_name=REJECTED_SHARE.name,
        passed=share <= threshold,
        severity=AssetCheckSeverity.WARN,
        description=f"{tally.rejected_total} of {tally.messages} messages rejected "
        f"({share:.1%}; warn above {threshold:.1%})",
        metadata={
            "messages": tally.messages,
            "rejected": tally.rejected_total,
            "rejected_share": round(share, 4),
            "threshold": threshold,
            **{f"rejected_{code}": n for code, n in sorted(tally.rejected.items())},
        },
    )


def _input_lost(plan: InputPlan) -> AssetCheckResult:
    shown = ", ".join(f"p{p} offsets {s}..{e - 1}" for p, (s, e) in sorted(plan.gaps.items()))
    return AssetCheckResult(
        check_name=INPUT_LOST.name,
        passed=plan.lost == 0,
        severity=AssetCheckSeverity.ERROR,
        description=f"{plan.lost} input offsets lost before they were read: {shown}"
        if plan.lost
        else "no input offsets lost",
        metadata={
            "lost_offsets": plan.lost,
            "lost_ranges": MetadataValue.json(
                {str(p): {"from": s, "to": e} for p, (s, e) in sorted(plan.gaps.items())}
            ),
        },
    )


def _plan(
    context: AssetExecutionContext,
    kafka: KafkaResource,
    run_options: RunOptionsResource,
    target: IngestTarget,
) -> InputPlan:
    """Where the run starts reading; a recreated topic or a retention gap is said here, before
    the query, and a damaged checkpoint or an old database fails the run in one line."""
    try:
        plan = plan_input(
            kafka,
            target.conninfo,
            run_options.state_dir,
            run_options.checkpoint_dir,
            context.run_id,
        )
    except (CheckpointError, InputError) as error:
        raise Failure(str(error)) from None
    except psycopg.errors.UndefinedTable as error:
        raise Failure(
            f"{str(error).splitlines()[0]}: the database predates this version; "
            "run `promo db upgrade`"
        ) from None
    if plan.recreated:
        context.log.warning(
            f"input topic {kafka.input_topic} was recreated (topic id {plan.topic_id}, was "
            f"{plan.recreated['previous_topic_id']}): read from its start; old checkpoint "
            f"kept in {plan.recreated['old_checkpoint']}"
        )
    if plan.gaps:
        context.log.error(
            f"input topic {kafka.input_topic}: {plan.lost} offsets deleted by retention before "
            f"they were read ({describe_gaps(plan.gaps)}); reading on from what exists"
        )
    return plan


def _read(
    context: AssetExecutionContext,
    spark: SparkResource,
    kafka: KafkaResource,
    run_options: RunOptionsResource,
    plan: InputPlan,
    target: IngestTarget,
) -> list[dict[str, Any]]:
    """The streaming query over what is new (availableNow), each micro-batch ingested by
    `ingest_batch`; returns the query's progress reports."""
    with spark.failing_fast():
        writer = (
            spark.spark_session.readStream.format("kafka")
            .options(**kafka.spark_options())
            .option("subscribe", kafka.input_topic)
            .option("startingOffsets", plan.starting_offsets)
            # Only after the gap is recorded by `_plan`: Spark would fail on it in every run.
            .option("failOnDataLoss", str(plan.fail_on_data_loss).lower())
            .option("maxOffsetsPerTrigger", run_options.max_offsets_per_trigger)
            .load()
            .writeStream.queryName("campaign_batch")
            .foreachBatch(partial(ingest_batch, target=target))
            .option("checkpointLocation", run_options.checkpoint_dir)
            .trigger(availableNow=True)
        )
        query = _start(context, writer)
        query.awaitTermination()
        if query.exception() is not None:
            raise Failure(f"campaign stream failed: {root_cause(query.exception())}")
    progress = [json.loads(p.json) for p in query.recentProgress]
    for report in progress:
        if report.get("numInputRows"):
            context.log.info(f"streaming progress: {json.dumps(report)}")
    return progress


# Spark Connect starts the foreachBatch Python worker as the query starts and waits a fixed 10 s
# (PythonWorkerFactory.createSimpleWorker, not configurable) for it to connect back; on a loaded
# host its imports alone take longer. Nothing is read before that, so starting again is safe.
WORKER_NOT_BACK = "Python worker failed to connect back"
START_ATTEMPTS = 4


def _start(context: AssetExecutionContext, writer: Any) -> Any:
    """`writer.start()` (a classic or Connect DataStreamWriter), started again while the server's
    foreachBatch worker is late to connect back."""
    attempt = 1
    while True:
        try:
            return writer.start()
        except Exception as error:
            if WORKER_NOT_BACK not in str(error) or attempt == START_ATTEMPTS:
                raise
            context.log.warning(
                f"campaign stream not started: the Spark server's foreachBatch Python worker did "
                f"not connect back within Spark's 10 s (attempt {attempt} of {START_ATTEMPTS}); "
                "starting it again"
            )
            attempt += 1


def _metadata(
    tally: CampaignTally,
    windows: tuple[int, int, int, int],
    ranges: dict[int, tuple[int, int]],
    plan: InputPlan,
) -> dict[str, Any]:
    active, held, expired, cancelled = windows
    return {
        "messages_read": tally.messages,
        "micro_batches": tally.batches,
        "valid": tally.valid,
        "campaigns_changed": tally.campaigns_changed,
        "rejected": tally.rejected_total,
        **{f"rejected_{code}": count for code, count in sorted(tally.rejected.items())},
        "held_for_later": held,
        "expired": expired,
        "active": active,
        "cancelled": cancelled,
        **{f"start_offset_p{p}": start for p, (start, _) in sorted(ranges.items())},
        **{f"end_offset_p{p}": end for p, (_, end) in sorted(ranges.items())},
        "offsets": MetadataValue.json(
            {str(p): {"start": start, "end": end} for p, (start, end) in sorted(ranges.items())}
        ),
        "topic_id": plan.topic_id,
        "topic_recreated": plan.recreated is not None,
        **({"recreated": MetadataValue.json(plan.recreated)} if plan.recreated else {}),
        "lost_offsets": plan.lost,
        "lost_ranges": MetadataValue.json(
            {str(p): {"from": s, "to": e} for p, (s, e) in sorted(plan.gaps.items())}
        ),
    }
