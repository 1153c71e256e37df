"""The two sinks. Postgres is the ledger and goes first; Kafka follows from an outbox.

A trigger is committed to `subscribers_feedback` and to `promo.kafka_outbox` in one
transaction; the outbox entry is removed only after Kafka acknowledged the message. A run that
dies in between leaves the entry, and the next run sends it again, rebuilt from the stored
row, so the resent message is byte-identical.
"""

import time

from dagster import AssetExecutionContext, MaterializeResult, asset
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from promo_pipeline.resources import KafkaResource, PipelineLockResource, PostgresResource
from promo_pipeline.schema import TRIGGER_COLUMNS

COLUMNS = ", ".join(TRIGGER_COLUMNS)

# Bounded waits: an unreachable broker or missing topic fails the run in seconds rather than
# hanging it; the outbox keeps the triggers for the next run.
PRODUCER_OPTIONS = {
    "kafka.acks": "all",
    "kafka.enable.idempotence": "true",
    "kafka.linger.ms": "20",
    "kafka.max.block.ms": "15000",
    "kafka.request.timeout.ms": "15000",
    "kafka.delivery.timeout.ms": "45000",
}

MOVE_STAGED = f"""
WITH inserted AS (
    INSERT INTO public.subscribers_feedback ({COLUMNS})
    SELECT {COLUMNS} FROM promo.trigger_stage
    ON CONFLICT (adv_campaign_id, client_id) DO NOTHING
    RETURNING adv_campaign_id, client_id
)
INSERT INTO promo.kafka_outbox (adv_campaign_id, client_id, run_id)
SELECT adv_campaign_id, client_id, %(run_id)s FROM inserted
ON CONFLICT DO NOTHING
"""


def outbox_rows_query(run_ids: list[str]) -> str:
    quoted = ", ".join("'" + run_id.replace("'", "''") + "'" for run_id in run_ids)
    return (
        f"(SELECT {', '.join('f.' + name for name in TRIGGER_COLUMNS)} "
        "FROM promo.kafka_outbox o JOIN public.subscribers_feedback f "
        f"USING (adv_campaign_id, client_id) WHERE o.run_id IN ({quoted})) pending"
    )


def kafka_records(rows: DataFrame) -> DataFrame:
    """Key `client_id`, value the seed's 10 fields as a JSON object, in the seed's order."""
    return rows.select(
        F.col("client_id").alias("key"),
        F.to_json(F.struct(*TRIGGER_COLUMNS)).alias("value"),
    )


@asset(
    group_name="promo",
    kinds={"postgres"},
    description="This run's triggers appended to public.subscribers_feedback (feedback NULL), "
    "at most one row per (adv_campaign_id, client_id), with their Kafka outbox entries.",
)
def feedback_sink(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    postgres: PostgresResource,
    triggers: DataFrame,
) -> MaterializeResult:
    started = time.monotonic()
    with postgres.connect() as conn:
        conn.execute("TRUNCATE promo.trigger_stage")
        conn.commit()
    triggers.write.jdbc(
        postgres.jdbc_url,
        "promo.trigger_stage",
        mode="append",
        properties=postgres.jdbc_properties(batchsize="10000", reWriteBatchedInserts="true"),
    )
    with postgres.connect() as conn, conn.transaction():
        staged = conn.execute("SELECT count(*) FROM promo.trigger_stage").fetchone()[0]
        inserted = conn.execute(MOVE_STAGED, {"run_id": context.run_id}).rowcount
        conn.execute("TRUNCATE promo.trigger_stage")
    expected = triggers.count()
    if inserted != expected:
        # Only possible if something else wrote the same pairs; the outbox still holds what
        # was inserted, so the next run sends exactly the stored rows.
        raise RuntimeError(
            f"feedback sink inserted {inserted} of {expected} triggers ({staged} staged): "
            "another writer touched subscribers_feedback; stopping before Kafka"
        )
    seconds = round(time.monotonic() - started, 3)
    context.log.info(f"feedback sink: {inserted} rows in {seconds} s")
    return MaterializeResult(
        metadata={"dagster/row_count": inserted, "rows_written": inserted, "seconds": seconds}
    )


@asset(
    group_name="promo",
    kinds={"kafka"},
    deps=[feedback_sink],
    description="Every trigger committed to Postgres and not yet acknowledged by Kafka, sent to "
    "the output topic keyed by client_id.",
)
def push_sink(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    spark: LazyPySparkResource,
    postgres: PostgresResource,
    kafka: KafkaResource,
    triggers: DataFrame,
) -> MaterializeResult:
    started = time.monotonic()
    with postgres.connect() as conn:
        earlier = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT run_id FROM promo.kafka_outbox WHERE run_id <> %s",
                (context.run_id,),
            )
        ]
    outgoing = triggers
    if earlier:
        context.log.warning(f"resending triggers left unsent by runs {earlier}")
        leftover = spark.spark_session.read.jdbc(
            postgres.jdbc_url,
            outbox_rows_query(earlier),
            properties=postgres.jdbc_properties(fetchsize="10000"),
        )
        outgoing = outgoing.unionByName(leftover)
    (
        kafka_records(outgoing)
        .write.format("kafka")
        .options(**kafka.spark_options())
        .options(**PRODUCER_OPTIONS)
        .option("topic", kafka.output_topic)
        .save()
    )
    # save() returns only after every record was acknowledged.
    with postgres.connect() as conn, conn.transaction():
        sent = conn.execute(
            "DELETE FROM promo.kafka_outbox WHERE run_id = ANY(%s)", ([context.run_id, *earlier],)
        ).rowcount
    seconds = round(time.monotonic() - started, 3)
    context.log.info(f"push sink: {sent} messages in {seconds} s")
    return MaterializeResult(
        metadata={
            "dagster/row_count": sent,
            "messages_written": sent,
            "resent_from_earlier_runs": len(earlier),
            "seconds": seconds,
        }
    )
