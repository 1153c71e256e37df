"""The seed's design, as the baseline the benchmark compares against.

Faithful to the seed's structure (one Structured Streaming query: Kafka source, from_json,
filter on the campaign window, stream-static join with the JDBC subscribers table, then a
`foreachBatch` that persists, appends to subscribers_feedback with Spark's default JDBC writer
and writes the Kafka sink), with only what it needs to run here and to be measured:
connection settings from the environment (the same stack.env the pipeline reads), a
checkpoint, `trigger(availableNow=True)` so the query ends once the topic is drained, and
timers around each stage. `count()` after `persist()` materialises the cache (which the JDBC
write would do anyway) so the read+join time can be told apart from the Postgres write.

Prints one JSON line: {"triggers": n, "stages": {...}, "session_s": s}.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime

from pyspark.sql import SparkSession
from pyspark.sql.functions import col, from_json, lit, struct, to_json
from pyspark.sql.types import LongType, StringType, StructField, StructType

from promo_pipeline.defs.resources import kafka_resource, postgres_resource, spark_config
from promo_pipeline.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args()

    started = time.monotonic()
    settings = load_settings()
    kafka = kafka_resource(settings)
    postgres = postgres_resource(settings)
    builder = SparkSession.builder
    for key, value in spark_config(settings).items():
        builder = builder.config(key, value)
    spark = builder.appName("seed_query").getOrCreate()
    session_s = time.monotonic() - started

    restaurant_read_stream_df = (
        spark.readStream.format("kafka")
        .options(**kafka.spark_options())
        .option("subscribe", kafka.input_topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    schema = StructType(
        [
            StructField("restaurant_id", StringType()),
            StructField("adv_campaign_id", StringType()),
            StructField("adv_campaign_content", StringType()),
            StructField("adv_campaign_owner", StringType()),
            StructField("adv_campaign_owner_contact", StringType()),
            StructField("adv_campaign_datetime_start", LongType()),
            StructField("adv_campaign_datetime_end", LongType()),
            StructField("datetime_created", LongType()),
        ]
    )
    current_timestamp_utc = int(round(datetime.utcnow().timestamp()))  # noqa: RUF046 (seed)
    filtered_read_stream_df = (
        restaurant_read_stream_df.select(
            from_json(col("value").cast("string"), schema).alias("result")
        )
        .select(col("result.*"))
        .where(
            (col("adv_campaign_datetime_start") < current_timestamp_utc)
            & (col("adv_campaign_datetime_end") > current_timestamp_utc)
        )
    )
    subscribers_restaurant_df = (
        spark.read.format("jdbc")
        .option("url", postgres.jdbc_url)
        .option("driver", "org.postgresql.Driver")
        .option("dbtable", "subscribers_restaurants")
        .option("user", postgres.user)
        .option("password", postgres.password)
        .load()
    )
    result_df = (
        filtered_read_stream_df.alias("stream")
        .join(
            subscribers_restaurant_df.alias("static"),
            col("stream.restaurant_id") == col("static.restaurant_id"),
        )
        .select(col("stream.*"), col("client_id"))
        .withColumn("trigger_datetime_created", lit(int(round(datetime.utcnow().timestamp()))))  # noqa: RUF046
    )

    stages = {"read_join": 0.0, "postgres": 0.0, "kafka": 0.0}
    totals = {"triggers": 0}

    def foreach_batch_function(df, epoch_id):  # the seed's function, plus timers
        t0 = time.monotonic()
        df.persist()
        totals["triggers"] += df.count()
        t1 = time.monotonic()
        df.write.mode("append").format("jdbc").option("url", postgres.jdbc_url).option(
            "driver", "org.postgresql.Driver"
        ).option("dbtable", "subscribers_feedback").option("user", postgres.user).option(
            "password", postgres.password
        ).save()
        t2 = time.monotonic()
        kafka_df = df.select(
            to_json(
                struct(
                    "restaurant_id",
                    "adv_campaign_id",
                    "adv_campaign_content",
                    "adv_campaign_owner",
                    "adv_campaign_owner_contact",
                    "adv_campaign_datetime_start",
                    "adv_campaign_datetime_end",
                    "client_id",
                    "datetime_created",
                    "trigger_datetime_created",
                )
            ).alias("value")
        )
        kafka_df.write.format("kafka").options(**kafka.spark_options()).option(
            "topic", kafka.output_topic
        ).save()
        t3 = time.monotonic()
        df.unpersist()
        stages["read_join"] += t1 - t0
        stages["postgres"] += t2 - t1
        stages["kafka"] += t3 - t2

    (
        result_df.writeStream.foreachBatch(foreach_batch_function)
        .option("checkpointLocation", args.checkpoint)
        .trigger(availableNow=True)
        .start()
        .awaitTermination()
    )
    spark.stop()
    print(json.dumps({"triggers": totals["triggers"], "stages": stages, "session_s": session_s}))


if __name__ == "__main__":
    main()
