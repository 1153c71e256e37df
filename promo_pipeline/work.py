"""Is there work for a run? Asked by the sensor every minute, so every call has a timeout."""

from __future__ import annotations

from dataclasses import dataclass, field

from promo_pipeline.campaign_rules import DUE_FULL, NEW_FROM, NEW_SUBSCRIBER_JOIN, held_at
from promo_pipeline.checkpoint import input_position
from promo_pipeline.db import PostgresConfig
from promo_pipeline.fanout import db_now, unsent_triggers
from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.message_shapes import format_epoch

POSTGRES_TIMEOUT_MS = 20_000

# Both cost what is new, not what exists: the campaigns whose full fan-out is due (a few rows of
# promo.campaigns by its window index), and the subscriptions above the lowest watermark of the
# fanned-out active campaigns (a primary-key range scan) that join one of them. The run's own
# queries (campaign_rules), named here by up to three campaigns each.
FAN_OUT_DUE = f"SELECT adv_campaign_id FROM ({DUE_FULL}) due LIMIT 3"
NEW_SUBSCRIBERS = f"SELECT DISTINCT c.adv_campaign_id {NEW_SUBSCRIBER_JOIN} LIMIT 3"
# No upper bound: the sensor looks at every subscription committed so far.
NO_WATERMARK = 2**63 - 1

NEXT_DUE = f"""
SELECT min(adv_campaign_datetime_start) FROM promo.campaigns
WHERE {held_at("%(now)s")}
"""


@dataclass
class Work:
    """What a run would do now: `reasons` to start one (none: skip), and `skip_reasons` for
    the sensor's skip message (each check that found nothing, when a held campaign is due)."""

    reasons: list[str] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)
    lag: dict[int, int] = field(default_factory=dict)

    @property
    def due(self) -> bool:
        return bool(self.reasons)


def find_work(
    kafka: KafkaConfig,
    postgres: PostgresConfig,
    checkpoint_dir: str,
    now: int | None = None,
) -> Work:
    """What a run would do at `now` (default: the database's clock)."""
    work = Work()
    with postgres.connect(statement_timeout_ms=POSTGRES_TIMEOUT_MS) as conn:
        position = input_position(kafka, conn, checkpoint_dir)
        if position.corrupt:
            # A run would fail on it every time: say why instead of launching one.
            work.skip_reasons.append(f"not launching: {position.corrupt}")
            return work
        work.lag = position.lag
        new = position.waiting
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
            work.skip_reasons.append(
                f"no new campaign messages ({len(work.lag)} partitions caught up)"
            )
        now = db_now(conn) if now is None else now
        unsent = unsent_triggers(conn)
        if unsent:
            work.reasons.append(f"{unsent} triggers committed to Postgres await Kafka delivery")
        fan_out = [row[0] for row in conn.execute(FAN_OUT_DUE, {"t": now})]
        if fan_out:
            work.reasons.append(f"active campaigns due for fan-out: {', '.join(fan_out)}")
        since = conn.execute(NEW_FROM, {"t": now, "w": NO_WATERMARK}).fetchone()[0]
        subscribed = (
            []
            if since is None
            else [
                row[0]
                for row in conn.execute(
                    NEW_SUBSCRIBERS, {"t": now, "lo": since, "hi": NO_WATERMARK}
                )
            ]
        )
        if subscribed:
            work.reasons.append(f"new subscribers of active campaigns: {', '.join(subscribed)}")
        if not (fan_out or subscribed):
            work.skip_reasons.append("no active campaign has an untriggered subscriber")
        next_due = conn.execute(NEXT_DUE, {"now": now}).fetchone()[0]
    if next_due is not None:
        when = format_epoch(next_due)
        minutes = max(0, next_due - now) // 60
        span = f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes} min"
        work.skip_reasons.append(f"next held campaign due at {when} (in {span})")
    return work
