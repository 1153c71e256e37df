"""The subscriber snapshot: who has which restaurant in favourites, read once per run."""

from dagster import AssetExecutionContext, Output, asset
from dagster_pyspark import LazyPySparkResource
from pyspark import StorageLevel
from pyspark.sql import DataFrame

from promo_pipeline.resources import PostgresResource

# Duplicate subscription rows must give one trigger, so they are collapsed at the source.
SUBSCRIBERS_QUERY = (
    "(SELECT DISTINCT client_id, restaurant_id FROM public.subscribers_restaurants) subscribers"
)


@asset(
    group_name="promo",
    kinds={"spark", "postgres"},
    description="Distinct (client_id, restaurant_id) pairs from public.subscribers_restaurants, "
    "read over JDBC and kept in Spark memory for the join.",
)
def subscriber_snapshot(
    context: AssetExecutionContext, spark: LazyPySparkResource, postgres: PostgresResource
) -> Output[DataFrame]:
    snapshot = spark.spark_session.read.jdbc(
        postgres.jdbc_url,
        SUBSCRIBERS_QUERY,
        properties=postgres.jdbc_properties(fetchsize="10000"),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    rows = snapshot.count()
    context.log.info(f"subscriber snapshot: {rows} distinct subscriptions")
    return Output(snapshot, metadata={"dagster/row_count": rows})
