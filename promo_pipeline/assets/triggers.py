"""Triggers: one per (active campaign, subscriber) pair that has never had one."""

import time

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, Output, asset
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from promo_pipeline.assets.campaigns import campaign_batch
from promo_pipeline.resources import PipelineLockResource, PostgresResource
from promo_pipeline.schema import CAMPAIGN_COLUMNS, TRIGGER_COLUMNS

ACTIVE_CAMPAIGNS = f"""
SELECT {", ".join(CAMPAIGN_COLUMNS)} FROM promo.campaigns
WHERE adv_campaign_datetime_start <= %(now)s AND adv_campaign_datetime_end > %(now)s
"""


def triggered_pairs_query(now: int) -> str:
    """Pairs of the active campaigns that already have a trigger; the rest are due."""
    return (
        "(SELECT f.adv_campaign_id, f.client_id FROM public.subscribers_feedback f "
        "JOIN promo.campaigns c USING (adv_campaign_id) "
        f"WHERE c.adv_campaign_datetime_start <= {now:d} "
        f"AND c.adv_campaign_datetime_end > {now:d}) done"
    )


# The trigger rows on the driver: the seed's columns, strings and 64-bit epochs.
TRIGGER_ARROW_SCHEMA = pa.schema(
    [(name, pa.int64() if "datetime" in name else pa.string()) for name in TRIGGER_COLUMNS]
)
CAMPAIGN_ARROW_SCHEMA = pa.schema([TRIGGER_ARROW_SCHEMA.field(name) for name in CAMPAIGN_COLUMNS])


def active_campaigns(postgres: PostgresResource, now: int) -> pa.Table:
    """The campaigns active at `now` (start <= now < end), read once: the join and the
    trigger rows both use this one snapshot."""
    with postgres.connect() as conn:
        rows = conn.execute(ACTIVE_CAMPAIGNS, {"now": now}).fetchall()
    return pa.Table.from_pylist(
        [dict(zip(CAMPAIGN_COLUMNS, row, strict=True)) for row in rows], CAMPAIGN_ARROW_SCHEMA
    )


def due_pairs(
    session: SparkSession,
    postgres: PostgresResource,
    subscribers: DataFrame,
    active: pa.Table,
    now: int,
) -> DataFrame:
    """(adv_campaign_id, client_id) of every due trigger; lazy until collected.

    Only the two ids leave Spark: the campaign's fields are the same on all of its rows and
    are attached on the driver, which keeps the collect a third of the size.
    """
    done = session.read.jdbc(
        postgres.jdbc_url,
        triggered_pairs_query(now),
        properties=postgres.jdbc_properties(fetchsize="10000"),
    )
    campaigns = session.createDataFrame(active.select(["adv_campaign_id", "restaurant_id"]))
    return (
        # A few thousand campaigns at most: broadcast, so the subscribers are never shuffled.
        F.broadcast(campaigns)
        .join(subscribers, "restaurant_id")
        .join(done, ["adv_campaign_id", "client_id"], "left_anti")
        .select("adv_campaign_id", "client_id")
    )


def trigger_rows(active: pa.Table, pairs: pa.Table, now: int) -> pa.Table:
    """The full trigger rows, in the unique index's order (campaign, client): a COPY in that
    order walks the index instead of touching a random page per row (1M rows: 5.9 s -> 2.6 s)."""
    pairs = pairs.cast(pa.schema([("adv_campaign_id", pa.string()), ("client_id", pa.string())]))
    pairs = pairs.sort_by([("adv_campaign_id", "ascending"), ("client_id", "ascending")])
    position = pc.index_in(pairs.column("adv_campaign_id"), active.column("adv_campaign_id"))
    campaign = active.take(position)
    columns = {
        **{name: campaign.column(name) for name in CAMPAIGN_COLUMNS},
        "client_id": pairs.column("client_id"),
        "trigger_datetime_created": pa.repeat(pa.scalar(now, pa.int64()), pairs.num_rows),
    }
    return pa.table([columns[name] for name in TRIGGER_COLUMNS], schema=TRIGGER_ARROW_SCHEMA)


@asset(
    group_name="promo",
    kinds={"spark"},
    deps=[campaign_batch],
    description="Active campaigns joined with their subscribers, minus pairs already triggered; "
    "stamped with the run's time and collected once (Arrow) so both sinks send the same rows.",
)
def triggers(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    spark: LazyPySparkResource,
    postgres: PostgresResource,
    subscriber_snapshot: DataFrame,
) -> Output[pa.Table]:
    now = int(time.time())
    active = active_campaigns(postgres, now)
    if active.num_rows:
        due = due_pairs(spark.spark_session, postgres, subscriber_snapshot, active, now)
        # Collected to the driver once, as Arrow: both sinks send exactly these rows
        # (recomputing after the Postgres sink would find the pairs already triggered and send
        # nothing to Kafka), and the sinks load them with COPY and a Kafka producer.
        pairs = due.toArrow()
    else:  # nothing active: no Spark job at all
        pairs = pa.table({"adv_campaign_id": pa.array([], pa.string()), "client_id": []})
    rows = trigger_rows(active, pairs, now)
    counts = rows.group_by("adv_campaign_id").aggregate([("client_id", "count")])
    summary = sorted(
        zip(
            counts.column("adv_campaign_id").to_pylist(),
            counts.column("client_id_count").to_pylist(),
            strict=True,
        ),
        key=lambda item: -item[1],
    )
    count = rows.num_rows
    context.log.info(f"triggers at T={now}: {count} for {len(summary)} campaigns")
    return Output(
        rows,
        metadata={
            "dagster/row_count": count,
            "run_time": now,
            "campaigns": len(summary),
            "per_campaign": dict(summary[:50]),
        },
    )
