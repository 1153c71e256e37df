"""The one job: all five assets, in one process and one SparkSession."""

from dagster import AssetSelection, define_asset_job, in_process_executor

# The longest a run may take before run monitoring cancels it and marks it failed: a bound for a
# hung run that still holds the pipeline lock.
MAX_RUNTIME_S = 3600

# In-process: the run pays for one Spark session, not one per step. The assets pass nothing in
# memory (each reads Postgres or the checkpoint), so any of them can be materialized alone.
promo_job = define_asset_job(
    "promo_job",
    selection=AssetSelection.groups("promo"),
    executor_def=in_process_executor,
    tags={
        # The run queue's limit of 1 on this tag (dagster.yaml) keeps runs from overlapping.
        "promo/pipeline": "promo_job",
        "dagster/max_runtime": str(MAX_RUNTIME_S),
        # A retry (run_retries.max_retries in dagster.yaml) re-runs the failed step and what
        # follows it: every asset works from durable state, so a run that failed at push_sink is
        # completed by sending the outbox, not by reading and joining again.
        "dagster/retry_strategy": "FROM_FAILURE",
    },
    description="Read new campaigns, compute due triggers, write them to Postgres then Kafka.",
)
