"""The two sinks. Postgres is the ledger and goes first; Kafka follows from an outbox.

The Postgres sink writes the due triggers slice by slice (see `promo_pipeline.fanout`): each
slice's rows, its `promo.trigger_outbox` entry and the fan-out progress commit together. The
Kafka sink sends every outbox slice, oldest first, and deletes its entry only once Kafka
acknowledged all of its messages; a run that dies in between leaves the entry, and the next run
sends it again, built by the same query from the stored rows, so the resent messages are
byte-identical.
"""

import time

import pyarrow as pa
from confluent_kafka import KafkaError, KafkaException, Producer
from dagster import AssetExecutionContext, MaterializeResult, asset

from promo_pipeline.assets.triggers import triggers
from promo_pipeline.fanout import (
    full_fanout_slices,
    new_subscription_slices,
    run_window,
    slice_messages,
)
from promo_pipeline.faultpoints import fault_point
from promo_pipeline.resources import (
    KafkaResource,
    PipelineLockResource,
    PostgresResource,
    StateResource,
)
from promo_pipeline.topics import produce_all

# Bounded waits: an unreachable broker fails the run in under a minute rather than hanging it;
# the outbox keeps the triggers for the next run.
PRODUCER_CONFIG = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 20,
    "batch.size": 1 << 20,
    # The messages repeat their campaign's fields: lz4 shrinks a batch several times over, so
    # the broker writes a fraction of the bytes.
    "compression.type": "lz4",
    "queue.buffering.max.messages": 1_000_000,
    "request.timeout.ms": 15_000,
    "message.timeout.ms": 45_000,
    "delivery.report.only.error": True,
}


@asset(
    group_name="promo",
    kinds={"postgres"},
    deps=[triggers],
    description="The due triggers appended to public.subscribers_feedback (feedback NULL), at "
    "most one row per (adv_campaign_id, client_id), in committed slices, each with its Kafka "
    "outbox entry.",
)
def feedback_sink(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    postgres: PostgresResource,
    state: StateResource,
) -> MaterializeResult:
    started = time.monotonic()
    written: dict[str, int] = {}
    slices = 0
    with postgres.connect(autocommit=True) as conn:
        window = run_window(conn, context.run_id)
        # New subscriptions of fanned-out campaigns first (small), then the full fan-outs, then
        # once more for the campaigns whose full fan-out just ended below W.
        steps = (new_subscription_slices, full_fanout_slices, new_subscription_slices)
        for step in steps:
            for result in step(conn, window, state.trigger_slice_rows):
                slices += 1
                for campaign, count in result.per_campaign.items():
                    written[campaign] = written.get(campaign, 0) + count
                # test-only; no-op unless PROMO_FAULT_AT is set
                fault_point("feedback_sink.slice")
    fault_point("feedback_sink.committed")  # test-only; no-op unless PROMO_FAULT_AT is set
    inserted = sum(written.values())
    seconds = round(time.monotonic() - started, 3)
    context.log.info(f"feedback sink: {inserted} rows in {slices} slices in {seconds} s")
    top = sorted(written.items(), key=lambda item: -item[1])[:50]
    return MaterializeResult(
        metadata={
            "dagster/row_count": inserted,
            "rows_written": inserted,
            "slices": slices,
            "run_time": window.trigger_time,
            "per_campaign": dict(top),
            "seconds": seconds,
        }
    )


class _Sender:
    """One idempotent producer for a run's slices; raises unless Kafka acknowledged all."""

    def __init__(self, kafka: KafkaResource) -> None:
        self.errors: list[str] = []
        self.topic = kafka.output_topic
        self.producer = Producer(kafka.client_config(**PRODUCER_CONFIG, on_delivery=self._failed))
        metadata = self.producer.list_topics(self.topic, timeout=15).topics[self.topic]
        if metadata.error is not None and metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise KafkaException(f"output topic {self.topic} does not exist")

    def _failed(self, error: object, _message: object) -> None:
        if error is not None:
            self.errors.append(str(error))

    def send(self, messages: pa.Table) -> None:
        # As bytes: produce() then hands them to librdkafka without encoding each one.
        keys = messages.column("key").to_pylist()
        values = messages.column("value").to_pylist()
        produce_all(self.producer, self.topic, zip(keys, values, strict=True))
        left = self.producer.flush(60)
        if left or self.errors:
            raise KafkaException(
                f"Kafka did not acknowledge {left} messages: {'; '.join(self.errors[:3])}"
            )


@asset(
    group_name="promo",
    kinds={"kafka"},
    deps=[feedback_sink],
    description="Every trigger committed to Postgres and not yet acknowledged by Kafka, sent to "
    "the output topic keyed by client_id, one outbox slice at a time.",
)
def push_sink(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    postgres: PostgresResource,
    kafka: KafkaResource,
) -> MaterializeResult:
    started = time.monotonic()
    sent = sent_this_run = 0
    earlier_runs: set[str] = set()
    with postgres.connect(autocommit=True) as conn:
        pending = conn.execute(
            "SELECT slice_id, run_id, adv_campaign_id, client_first, client_last, trigger_time "
            "FROM promo.trigger_outbox ORDER BY slice_id"
        ).fetchall()
        earlier_runs = {run_id for _, run_id, *_ in pending if run_id != context.run_id}
        if earlier_runs:
            context.log.warning(f"resending triggers left unsent by runs {sorted(earlier_runs)}")
        sender = _Sender(kafka) if pending else None
        fault_point("push_sink.start")  # test-only; no-op unless PROMO_FAULT_AT is set
        for number, (slice_id, run_id, campaign, first, last, t) in enumerate(pending):
            assert sender is not None
            messages = slice_messages(conn, campaign, first, last, t)
            sender.send(messages)
            conn.execute("DELETE FROM promo.trigger_outbox WHERE slice_id = %s", (slice_id,))
            sent += messages.num_rows
            if run_id == context.run_id:
                sent_this_run += messages.num_rows
            if number == 0:
                # test-only: one slice acknowledged and its outbox entry gone, the rest not sent
                fault_point("push_sink.mid")
    seconds = round(time.monotonic() - started, 3)
    context.log.info(f"push sink: {sent} messages in {len(pending)} slices in {seconds} s")
    return MaterializeResult(
        metadata={
            "dagster/row_count": sent,
            "messages_written": sent,
            "sent_this_run": sent_this_run,
            "resent_from_earlier_runs": sent - sent_this_run,
            "earlier_runs_resent": len(earlier_runs),
            "slices": len(pending),
            "seconds": seconds,
        }
    )
