"""What an operator asks first: is input waiting, what is held, what did the last run do.

Built as data and as lines from one pass over Postgres, Kafka and the Dagster instance, so
`promo status` and `promo status --json` cannot disagree. Read-only.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

import psycopg

from promo_pipeline.campaign_rules import held_at, in_progress_at, state_counts
from promo_pipeline.checkpoint import InputPosition, describe_gaps, input_position
from promo_pipeline.db import conninfo
from promo_pipeline.fanout import db_now, unsent_triggers
from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.message_shapes import EPOCH_MAX, format_epoch
from promo_pipeline.settings import RunOptions, Settings

# The four disjoint states: a cancelled campaign is neither held nor expired.
STATUS_CAMPAIGNS = f"SELECT {state_counts('%(now)s')} FROM promo.campaigns"

STATUS_HELD = f"""
SELECT adv_campaign_id, restaurant_id, adv_campaign_datetime_start FROM promo.campaigns
WHERE {held_at("%(now)s")}
ORDER BY adv_campaign_datetime_start, adv_campaign_id LIMIT 10
"""

STATUS_SKIPPED = """
SELECT count(*), coalesce(sum((detail->>'skipped')::int8), 0)::int8 FROM promo.input_events
WHERE topic = %s AND kind = 'rewind' AND (detail->>'skipped')::int8 > 0
"""

# The slices keep these counts up to date: a few rows, whatever the size of the walk.
STATUS_FANOUTS = f"""
SELECT adv_campaign_id, restaurant_id, fanout_done, fanout_total, fanout_began
FROM promo.campaigns WHERE {in_progress_at("%(now)s")}
ORDER BY fanout_began NULLS LAST, adv_campaign_id
"""

STATUS_LAST_INPUT = """
SELECT run_id, max(recorded_at), sum(messages), sum(valid), count(*) FROM promo.campaign_batches
GROUP BY run_id ORDER BY max(recorded_at) DESC LIMIT 1
"""

STATUS_LAST_TRIGGERS = """
SELECT trigger_datetime_created, count(*), count(DISTINCT adv_campaign_id)
FROM public.subscribers_feedback
WHERE trigger_datetime_created = (SELECT max(trigger_datetime_created)
                                  FROM public.subscribers_feedback)
GROUP BY trigger_datetime_created
"""

STATUS_EVENTS = """
SELECT kind, run_id, recorded_at, detail FROM promo.input_events WHERE topic = %s
ORDER BY id DESC LIMIT 3
"""

# The latest run's numbers that `promo status` shows, per asset.
DAGSTER_SHOWN = {
    "campaign_batch": ("messages_read", "rejected"),
    "feedback_sink": ("rows_written",),
    "push_sink": ("sent_this_run",),
}


def status_report(settings: Settings, now: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """The status as data (`promo status --json`) and as lines; one source for both."""
    kafka = settings.config_for(KafkaConfig)
    lines: list[str] = []
    with psycopg.connect(conninfo(settings)) as conn:
        now = db_now(conn) if now is None else now
        report: dict[str, Any] = {"now": now}
        position = input_position(kafka, conn, settings.config_for(RunOptions).checkpoint_dir)
        report["input"], line = _input_status(position)
        _skipped_by_rewind(conn, kafka.input_topic, report["input"])
        if report["input"]["skipped_by_rewind"]:
            line += (
                f"; SKIPPED {report['input']['skipped_by_rewind']} unread messages by "
                "`promo rewind --yes` (see the input events)"
            )
        lines.append(line)
        _input_events(conn, kafka.input_topic, report, lines)
        _campaigns(conn, now, report, lines)
        last_input = conn.execute(STATUS_LAST_INPUT).fetchone()
        last_triggers = conn.execute(STATUS_LAST_TRIGGERS).fetchone()
    report["last_input"] = _last_input(conninfo(settings), last_input, lines)
    report["last_triggers"] = None
    if last_triggers:
        at, count, campaigns = last_triggers
        report["last_triggers"] = {"at": at, "triggers": count, "campaigns": campaigns}
        lines.append(f"last triggers: {count} for {campaigns} campaign(s) at {_when(at, now)}")
    else:
        lines.append("last triggers: none yet")
    dagster = _dagster_last_run()
    report["last_dagster_run"] = dagster[0]
    lines.extend(dagster)
    return report, lines


def _input_status(position: InputPosition) -> tuple[dict[str, Any], str]:
    topic = position.topic
    report: dict[str, Any] = {
        "topic": topic,
        "topic_id": position.topic_id,
        "checkpoint_corrupt": None if position.missing else position.corrupt,
        "checkpoint_missing": position.corrupt if position.missing else None,
        "recreated_from_topic_id": position.recreated_from,
        "waiting": None if position.corrupt else position.waiting,
        "partitions": [
            {
                "partition": p,
                "low": low,
                "high": high,
                "read_to": position.read_to.get(p, 0),
                "lag": None if position.corrupt else position.lag[p],
            }
            for p, (low, high) in position.watermarks.items()
        ],
        "lost_unread": {str(p): [s, e] for p, (s, e) in sorted(position.gaps.items())},
    }
    if position.corrupt:
        what = "MISSING" if position.missing else "corrupt"
        return report, f"input {topic}: messages waiting unknown, checkpoint {what}: " + (
            position.corrupt
        )
    if position.recreated_from:
        return report, (
            f"input {topic}: the topic was recreated (topic id {position.topic_id}, was "
            f"{position.recreated_from}); the next run reads its {report['waiting']} "
            "messages from the start"
        )
    line = f"input {topic}: {report['waiting']} messages waiting; per partition " + ", ".join(
        f"p{p} lag {position.lag[p]} (read to {position.read_to.get(p, 0)} of {high})"
        for p, (_, high) in position.watermarks.items()
    )
    if position.gaps:
        line += (
            f"; LOST {position.lost} offsets deleted by retention before they were read "
            f"({describe_gaps(position.gaps)})"
        )
    return report, line


def _skipped_by_rewind(conn: psycopg.Connection, topic: str, report: dict[str, Any]) -> None:
    """Unread messages that rewinds moved past (accepted with --yes): never read, ever."""
    rewinds, skipped = conn.execute(STATUS_SKIPPED, (topic,)).fetchone()
    report["skipped_by_rewind"] = skipped
    report["rewinds_that_skipped"] = rewinds


def _input_events(
    conn: psycopg.Connection, topic: str, report: dict[str, Any], lines: list[str]
) -> None:
    events = conn.execute(STATUS_EVENTS, (topic,)).fetchall()
    report["input_events"] = [
        {"kind": kind, "run_id": run_id, "at": at.isoformat(), "detail": detail}
        for kind, run_id, at, detail in events
    ]
    if events:
        lines.append("input events (latest first):")
        lines += [_event_line(*event) for event in events]


def _event_line(kind: str, run_id: str | None, at: datetime, detail: dict[str, Any]) -> str:
    run = f" (run {run_id[:8]})" if run_id else ""
    if kind == "retention_gap":
        ranges = ", ".join(f"p{p} offsets {s}..{e - 1}" for p, (s, e) in detail["ranges"].items())
        what = f"{detail['lost']} offsets LOST to retention before they were read: {ranges}"
    elif kind == "topic_recreated":
        what = (
            f"topic recreated (id {detail['previous_topic_id']} -> {detail['topic_id']}), "
            f"re-read from its start; old checkpoint {detail['old_checkpoint']}"
        )
    elif kind == "rewind" and "reads" in detail:
        what = f"rewind: the next run reads {detail['reads']}"
        if detail["skipped"]:
            ranges = ", ".join(
                f"p{p} offsets {s}..{e - 1}" for p, (s, e) in detail["skipped_ranges"].items()
            )
            what += f"; SKIPPED {detail['skipped']} unread messages ({ranges})"
    else:
        what = f"{kind}: {json.dumps(detail, sort_keys=True)}"
    return f"  {format_epoch(at.timestamp())}{run}: {what}"


def _campaigns(
    conn: psycopg.Connection, now: int, report: dict[str, Any], lines: list[str]
) -> None:
    """Campaigns active, held (the next ones due, and when), expired and cancelled; the full
    fan-outs in progress (subscribers walked of the restaurant's, since when); the outbox."""
    active, held, expired, cancelled = conn.execute(STATUS_CAMPAIGNS, {"now": now}).fetchone()
    report["campaigns"] = {
        "active": active,
        "held": held,
        "expired": expired,
        "cancelled": cancelled,
        "due": [],
    }
    lines.append(
        f"campaigns: {active} active, {held} held for later, {expired} expired, "
        f"{cancelled} cancelled"
    )
    for campaign, restaurant, start in conn.execute(STATUS_HELD, {"now": now}):
        report["campaigns"]["due"].append(
            {"adv_campaign_id": campaign, "restaurant_id": restaurant, "start": start}
        )
        lines.append(f"  held {campaign} (restaurant {restaurant}) due {_when(start, now)}")
    report["fanouts_in_progress"] = []
    for campaign, restaurant, done, total, began in conn.execute(STATUS_FANOUTS, {"now": now}):
        report["fanouts_in_progress"].append(
            {
                "adv_campaign_id": campaign,
                "restaurant_id": restaurant,
                "done": done,
                "total": total,
                "started_at": began.isoformat() if began else None,
            }
        )
        share = f" ({100 * done / total:.0f}%)" if done is not None and total else ""
        since = format_epoch(began.timestamp()) if began else "unknown"
        lines.append(
            f"  fan-out in progress: {campaign} (restaurant {restaurant}) "
            f"{done if done is not None else '?'} of {total if total is not None else '?'} "
            f"subscribers{share}, started {since}"
        )
    unsent = unsent_triggers(conn)
    report["outbox"] = unsent
    lines.append(f"outbox: {unsent} triggers committed to Postgres await Kafka delivery")


def _last_input(conninfo: str, row: tuple | None, lines: list[str]) -> dict[str, Any] | None:
    """What the latest run read from the input topic, by the run's own tally."""
    # Deferred: ingest imports pyspark (a second), which `promo status` needs only here.
    from promo_pipeline.ingest import CampaignTally

    if not row:
        lines.append("last input read: none yet")
        return None
    run_id, at, _, _, _ = row
    tally = CampaignTally.of_run(conninfo, run_id)
    reasons = ", ".join(f"{code} {n}" for code, n in sorted(tally.rejected.items()))
    lines.append(
        f"last input read: run {run_id[:8]} at {format_epoch(at.timestamp())}: "
        f"{tally.messages} messages, {tally.valid} valid, {tally.rejected_total} rejected"
        + (f" ({reasons})" if reasons else "")
    )
    return {
        "run_id": run_id,
        "at": at.isoformat(),
        "messages": tally.messages,
        "valid": tally.valid,
        "rejected": dict(tally.rejected),
    }


def _when(epoch: int, now: int) -> str:
    stamp = format_epoch(epoch)
    seconds = epoch - now
    if seconds <= 0 or epoch > EPOCH_MAX:
        return stamp
    hours, rest = divmod(seconds, 3600)
    days, hours = divmod(hours, 24)
    span = (
        f"{days}d {hours}h"
        if days
        else f"{hours}h {rest // 60}m"
        if hours
        else f"{rest // 60}m {rest % 60}s"
    )
    return f"{stamp} (in {span})"


def _dagster_last_run() -> list[str]:
    """The latest promo_job run from the Dagster instance, when DAGSTER_HOME names one."""
    if not os.environ.get("DAGSTER_HOME"):
        return ["last Dagster run: unknown (DAGSTER_HOME is not set)"]
    # Deferred: Dagster takes seconds to import, and only a DAGSTER_HOME needs it.
    from dagster import DagsterInstance, RunsFilter

    with DagsterInstance.get() as instance:
        records = instance.get_run_records(RunsFilter(job_name="promo_job"), limit=1)
        if not records:
            return ["last Dagster run: none yet"]
        run = records[0].dagster_run
        at = records[0].end_time or records[0].start_time or records[0].create_timestamp.timestamp()
        counts = _run_counts(instance, run.run_id)
    if "dagster/parent_run_id" in run.tags:
        reason = f"retry of {run.tags['dagster/parent_run_id'][:8]}"
    elif "dagster/sensor_name" in run.tags:
        reason = f"sensor: {run.tags.get('promo/reason', '')}"
    else:
        reason = "launched from the UI or the CLI"
    return [
        f"last Dagster run: {run.run_id[:8]} {run.status.value} at {format_epoch(at)}"
        + (f": {', '.join(counts)}" if counts else "")
        + f" (why: {reason[:120]})"
    ]


def _run_counts(instance: Any, run_id: str) -> list[str]:
    """DAGSTER_SHOWN's numbers, from the assets this run materialized."""
    # Deferred: Dagster (see _dagster_last_run).
    from dagster import AssetKey

    counts = []
    for key, names in DAGSTER_SHOWN.items():
        entry = instance.get_latest_materialization_event(AssetKey(key))
        if entry is None or entry.run_id != run_id or not entry.asset_materialization:
            continue
        metadata = entry.asset_materialization.metadata
        counts += [
            f"{key} {name.removeprefix('dagster/')} {metadata[name].value}"
            for name in names
            if name in metadata
        ]
    return counts
