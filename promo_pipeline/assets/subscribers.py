"""The subscriber snapshot: who has which restaurant in favourites, read once per run."""

import time

from dagster import AssetExecutionContext, Output, asset
from dagster_pyspark import LazyPySparkResource
from pyspark import StorageLevel
from pyspark.sql import DataFrame

from promo_pipeline.assets.campaigns import campaign_batch
from promo_pipeline.resources import PostgresResource

# Duplicate subscription rows must give one trigger, so they are collapsed at the source. Only
# restaurants with a campaign that has not ended can get a trigger this run (the run's time T
# comes later), so the others' subscribers are never read.
SUBSCRIBERS_QUERY = (
    "(SELECT DISTINCT s.client_id, s.restaurant_id FROM public.subscribers_restaurants s "
    "WHERE s.restaurant_id IN (SELECT c.restaurant_id FROM promo.campaigns c "
    "WHERE c.adv_campaign_datetime_end > {now:d})) subscribers"
)
# Read in this many slices, one JDBC connection each, so the Spark cores decode rows in
# parallel; hashtext() splits by restaurant, so every slice is a distinct set of pairs.
READ_SLICES = 4


@asset(
    group_name="promo",
    kinds={"spark", "postgres"},
    deps=[campaign_batch],
    description="Distinct (client_id, restaurant_id) pairs from public.subscribers_restaurants "
    "of restaurants with a campaign not yet ended, read over JDBC and kept in Spark memory for "
    "the join.",
)
def subscriber_snapshot(
    context: AssetExecutionContext, spark: LazyPySparkResource, postgres: PostgresResource
) -> Output[DataFrame]:
    snapshot = spark.spark_session.read.jdbc(
        postgres.jdbc_url,
        SUBSCRIBERS_QUERY.format(now=int(time.time())),
        predicates=[
            f"mod(hashtext(restaurant_id)::int8 + 2147483648, {READ_SLICES}) = {i}"
            for i in range(READ_SLICES)
        ],
        properties=postgres.jdbc_properties(fetchsize="10000"),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    rows = snapshot.count()
    context.log.info(f"subscriber snapshot: {rows} distinct subscriptions")
    return Output(snapshot, metadata={"dagster/row_count": rows})
