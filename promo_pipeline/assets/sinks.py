"""The two sinks. Postgres is the ledger and goes first; Kafka follows from an outbox.

The run's triggers come to the driver once as Arrow and are COPYed into
`subscribers_feedback` in one transaction together with one `promo.kafka_outbox_runs` row
(run id, trigger time, first and last id). The anti-join in `triggers` and the run lock mean
the COPY meets no existing pair; if one ever did, the unique index fails the whole COPY and
nothing is written. The outbox row is removed only after Kafka acknowledged every message; a
run that dies in between leaves it, and the next run rebuilds the messages from the stored
rows with the same encoder, so the resent messages are byte-identical.
"""

import json
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from confluent_kafka import KafkaError, KafkaException, Producer
from dagster import AssetExecutionContext, MaterializeResult, asset

from promo_pipeline.assets.triggers import TRIGGER_ARROW_SCHEMA
from promo_pipeline.faultpoints import fault_point
from promo_pipeline.resources import KafkaResource, PipelineLockResource, PostgresResource
from promo_pipeline.schema import TRIGGER_COLUMNS
from promo_pipeline.topics import produce_all

COLUMNS = ", ".join(TRIGGER_COLUMNS)
COPY_FEEDBACK = f"COPY public.subscribers_feedback ({COLUMNS}) FROM STDIN (FORMAT csv)"
COPY_CHUNK_ROWS = 100_000

# Bounded waits: an unreachable broker fails the run in under a minute rather than hanging it;
# the outbox keeps the triggers for the next run.
PRODUCER_CONFIG = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 20,
    "batch.size": 1 << 20,
    # The messages repeat their campaign's fields: lz4 shrinks a batch several times over, so
    # the broker writes a fraction of the bytes (1M triggers: 2.9 s -> 1.3 s acknowledged).
    "compression.type": "lz4",
    "queue.buffering.max.messages": 1_000_000,
    "request.timeout.ms": 15_000,
    "message.timeout.ms": 45_000,
    "delivery.report.only.error": True,
}

PENDING_ROWS = f"""
SELECT {", ".join("f." + name for name in TRIGGER_COLUMNS)}
FROM promo.kafka_outbox_runs r JOIN public.subscribers_feedback f
  ON f.id BETWEEN r.first_id AND r.last_id AND f.trigger_datetime_created = r.trigger_time
WHERE r.run_id = ANY(%s) ORDER BY f.id
"""


def csv_chunks(table: pa.Table) -> "list[pa.Buffer]":
    """The rows as Postgres CSV: every value quoted, so an empty string is not NULL."""
    options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
    chunks = []
    # One contiguous table first: Spark hands over many small batches, and the CSV writer
    # is several times slower on those.
    for batch in table.combine_chunks().to_batches(max_chunksize=COPY_CHUNK_ROWS):
        sink = pa.BufferOutputStream()
        pacsv.write_csv(batch, sink, options)
        chunks.append(sink.getvalue())
    return chunks


def _json_string_bodies(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The text between the quotes of `json.dumps(value, ensure_ascii=False)`."""
    if not pc.any(pc.match_substring_regex(column, r'[\x00-\x1f"\\]')).as_py():
        return column  # nothing to escape: the usual case, and the fast one
    if pc.any(pc.match_substring_regex(column, r"[\x00-\x1f]")).as_py():
        return pa.chunked_array(
            [pa.array([json.dumps(v, ensure_ascii=False)[1:-1] for v in column.to_pylist()])]
        )
    return pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')


def kafka_values(table: pa.Table) -> pa.ChunkedArray:
    """The seed's 10 fields as one compact JSON object per row, in the seed's order.

    Vectorised, in one join of literals and columns: fresh sends and resends of stored rows go
    through this one encoder, which is what makes a resent message byte-identical to the first.
    """
    parts: list[object] = []
    literal = "{"
    for i, name in enumerate(TRIGGER_COLUMNS):
        literal += ("" if i == 0 else ",") + json.dumps(name) + ":"
        column = table.column(name)
        if pa.types.is_integer(column.type):
            parts += [literal, pc.cast(column, pa.string())]
            literal = ""
        else:
            parts += [literal + '"', _json_string_bodies(column)]
            literal = '"'
    parts.append(literal + "}")
    return pc.binary_join_element_wise(*parts, "")


def produce(kafka: KafkaResource, table: pa.Table) -> None:
    """Send every row keyed by client_id; returns once Kafka acknowledged all, else raises."""
    producer_errors: list[str] = []

    def failed(error: object, _message: object) -> None:
        if error is not None:
            producer_errors.append(str(error))

    producer = Producer(kafka.client_config(**PRODUCER_CONFIG, on_delivery=failed))
    topic = kafka.output_topic
    metadata = producer.list_topics(topic, timeout=15).topics[topic]
    if metadata.error is not None and metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise KafkaException(f"output topic {topic} does not exist")
    # As bytes: produce() then hands them to librdkafka without encoding each one.
    keys = table.column("client_id").cast(pa.binary()).to_pylist()
    values = kafka_values(table).cast(pa.binary()).to_pylist()
    # Test-only fault points (no-ops unless PROMO_FAULT_AT is set): the Kafka write now runs on
    # the driver, so push_sink.start/.mid pause or fail here rather than inside Spark tasks.
    fault_point("push_sink.start")
    # The first third is acknowledged before the rest is sent, so a fault between them
    # leaves a partly written topic, as a crash mid-write would.
    first = max(1, len(keys) // 3)
    for start, end in ((0, first), (first, len(keys))):
        produce_all(producer, topic, zip(keys[start:end], values[start:end], strict=True))
        left = producer.flush(60)
        if left or producer_errors:
            raise KafkaException(
                f"Kafka did not acknowledge {left} messages: {'; '.join(producer_errors[:3])}"
            )
        if start == 0:
            fault_point("push_sink.mid")


@asset(
    group_name="promo",
    kinds={"postgres"},
    description="This run's triggers appended to public.subscribers_feedback (feedback NULL), "
    "at most one row per (adv_campaign_id, client_id), with the run's Kafka outbox entry.",
)
def feedback_sink(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    postgres: PostgresResource,
    triggers: pa.Table,
) -> MaterializeResult:
    started = time.monotonic()
    table = triggers
    inserted = table.num_rows
    if inserted:
        [trigger_time] = pc.unique(table.column("trigger_datetime_created")).to_pylist()
        with postgres.connect() as conn, conn.transaction():
            before = conn.execute(
                "SELECT coalesce(max(id), 0) FROM public.subscribers_feedback"
            ).fetchone()[0]
            with conn.cursor().copy(COPY_FEEDBACK) as copy:
                for chunk in csv_chunks(table):
                    copy.write(chunk)
            first, last, count = conn.execute(
                "SELECT min(id), max(id), count(*) FROM public.subscribers_feedback "
                "WHERE id > %s AND trigger_datetime_created = %s",
                (before, trigger_time),
            ).fetchone()
            if count != inserted:
                # Rolls the COPY back: the id range would not name exactly this run's rows.
                raise RuntimeError(
                    f"feedback sink: {count} rows at T={trigger_time} after id {before}, "
                    f"expected {inserted}; another writer touched subscribers_feedback"
                )
            conn.execute(
                "INSERT INTO promo.kafka_outbox_runs "
                "(run_id, trigger_time, first_id, last_id, triggers) VALUES (%s, %s, %s, %s, %s)",
                (context.run_id, trigger_time, first, last, inserted),
            )
    fault_point("feedback_sink.committed")  # test-only; no-op unless PROMO_FAULT_AT is set
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
    postgres: PostgresResource,
    kafka: KafkaResource,
    triggers: pa.Table,
) -> MaterializeResult:
    started = time.monotonic()
    with postgres.connect() as conn:
        pending = [row[0] for row in conn.execute("SELECT run_id FROM promo.kafka_outbox_runs")]
        earlier = [run_id for run_id in pending if run_id != context.run_id]
        tables = []
        if earlier:
            context.log.warning(f"resending triggers left unsent by runs {earlier}")
            rows = conn.execute(PENDING_ROWS, (earlier,)).fetchall()
            tables.append(
                pa.Table.from_pylist(
                    [dict(zip(TRIGGER_COLUMNS, row, strict=True)) for row in rows],
                    TRIGGER_ARROW_SCHEMA,
                )
            )
    if context.run_id in pending:
        # The rows this run just committed: the values Postgres stores (text, int8) come back
        # unchanged, so they need not be read back.
        tables.append(triggers)
    if tables:
        produce(kafka, pa.concat_tables(tables))
    with postgres.connect() as conn, conn.transaction():
        acked = dict(
            conn.execute(
                "DELETE FROM promo.kafka_outbox_runs WHERE run_id = ANY(%s) "
                "RETURNING run_id, triggers",
                (pending,),
            ).fetchall()
        )
    sent = sum(acked.values())
    sent_this_run = acked.get(context.run_id, 0)
    seconds = round(time.monotonic() - started, 3)
    context.log.info(f"push sink: {sent} messages in {seconds} s")
    return MaterializeResult(
        metadata={
            "dagster/row_count": sent,
            "messages_written": sent,
            "sent_this_run": sent_this_run,
            "resent_from_earlier_runs": sent - sent_this_run,
            "earlier_runs_resent": len(earlier),
            "seconds": seconds,
        }
    )
