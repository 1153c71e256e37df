"""The one job: all five assets, in one process and one SparkSession."""

from dagster import AssetSelection, define_asset_job, in_process_executor

from promo_pipeline.assets import ALL_ASSETS

# In-process: the DataFrames move between assets in memory (a pickling IO manager cannot
# hold them) and the run pays for one JVM, not one per step.
promo_job = define_asset_job(
    "promo_job",
    selection=AssetSelection.assets(*ALL_ASSETS),
    executor_def=in_process_executor,
    tags={"promo/pipeline": "promo_job"},
    description="Read new campaigns, compute due triggers, write them to Postgres then Kafka.",
)
