"""The one job: all five assets, in one process and one SparkSession."""

from dagster import AssetSelection, define_asset_job, in_process_executor

from promo_pipeline.assets import ALL_ASSETS

# In-process: the run pays for one Spark session, not one per step. The assets pass nothing in
# memory (each reads Postgres or the checkpoint), so any of them can be materialized alone.
promo_job = define_asset_job(
    "promo_job",
    selection=AssetSelection.assets(*ALL_ASSETS),
    executor_def=in_process_executor,
    tags={"promo/pipeline": "promo_job"},
    description="Read new campaigns, compute due triggers, write them to Postgres then Kafka.",
)
