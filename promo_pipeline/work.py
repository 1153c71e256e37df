"""Is there work for a run? Asked by the sensor every minute, so every call has a timeout."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from promo_pipeline.checkpoint import input_position
from promo_pipeline.resources import KafkaResource, PostgresResource
from promo_pipeline.schema import format_epoch

KAFKA_TIMEOUT_S = 10.0
POSTGRES_TIMEOUT_MS = 20_000

# Any active campaign with a subscriber that has no trigger yet. Covers a held campaign that
# became due and a subscription added while a campaign runs; stops at the first hit.
UNTRIGGERED = """
SELECT c.adv_campaign_id FROM promo.campaigns c
WHERE c.adv_campaign_datetime_start <= %(now)s AND c.adv_campaign_datetime_end > %(now)s
  AND EXISTS (
    SELECT 1 FROM public.subscribers_restaurants s
    WHERE s.restaurant_id = c.restaurant_id
      AND NOT EXISTS (
        SELECT 1 FROM public.subscribers_feedback f
        WHERE f.adv_campaign_id = c.adv_campaign_id AND f.client_id = s.client_id))
LIMIT 3
"""

NEXT_DUE = """
SELECT min(adv_campaign_datetime_start) FROM promo.campaigns
WHERE adv_campaign_datetime_start > %(now)s
"""


def topic_watermarks(kafka: KafkaResource, topic: str) -> dict[int, tuple[int, int]]:
    """(low, high) per partition; raises if the broker does not answer in time."""
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": "promo_pipeline.sensor",
                "enable.auto.commit": False,
                "socket.timeout.ms": int(KAFKA_TIMEOUT_S * 1000),
            }
        )
    )
    try:
        metadata = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_S)
        partitions = metadata.topics[topic].partitions
        if metadata.topics[topic].error is not None:
            raise RuntimeError(f"topic {topic}: {metadata.topics[topic].error}")
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=KAFKA_TIMEOUT_S)
            for p in sorted(partitions)
        }
    finally:
        consumer.close()


@dataclass
class Work:
    """What a run would do now, and why; empty `reasons` means skip."""

    reasons: list[str] = field(default_factory=list)
    idle: list[str] = field(default_factory=list)
    lag: dict[int, int] = field(default_factory=dict)

    @property
    def due(self) -> bool:
        return bool(self.reasons)


def find_work(
    kafka: KafkaResource, postgres: PostgresResource, checkpoint_dir: str, now: int
) -> Work:
    work = Work()
    with postgres.connect(statement_timeout_ms=POSTGRES_TIMEOUT_MS) as conn:
        position = input_position(kafka, conn, checkpoint_dir)
    if position.corrupt:
        # A run would fail on it every time: say why instead of launching one.
        work.idle.append(f"not launching: {position.corrupt}")
        return work
    work.lag = position.lag
    new = sum(work.lag.values())
    if position.recreated_from:
        work.reasons.append(
            f"input topic {position.topic} was recreated (topic id {position.topic_id}, was "
            f"{position.recreated_from}): a run reads it from its start"
        )
    if position.gaps:
        work.reasons.append(f"{position.lost} input offsets lost to retention before read")
    if new:
        busy = {p: n for p, n in work.lag.items() if n}
        work.reasons.append(f"{new} new campaign messages (lag per partition {busy})")
    else:
        work.idle.append(f"no new campaign messages ({len(work.lag)} partitions caught up)")
    with postgres.connect(statement_timeout_ms=POSTGRES_TIMEOUT_MS) as conn:
        unsent = conn.execute("SELECT count(*) FROM promo.kafka_outbox").fetchone()[0]
        if unsent:
            work.reasons.append(f"{unsent} triggers committed to Postgres await Kafka delivery")
        campaigns = [row[0] for row in conn.execute(UNTRIGGERED, {"now": now})]
        if campaigns:
            work.reasons.append(
                f"active campaigns with subscribers not yet triggered: {', '.join(campaigns)}"
            )
        else:
            work.idle.append("no active campaign has an untriggered subscriber")
        next_due = conn.execute(NEXT_DUE, {"now": now}).fetchone()[0]
    if next_due is not None:
        when = format_epoch(next_due)
        minutes = max(0, next_due - now) // 60
        span = f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes} min"
        work.idle.append(f"next held campaign due at {when} (in {span})")
    return work
