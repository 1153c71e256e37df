"""The numbers operators alert on, in Prometheus' text format (`promo metrics`).

Input lag and the outbox come from `status_report`, so `promo status` and the metrics cannot
disagree; the rest are a few cheap queries (catalog counters, small state tables). Computed
on each scrape or write, never cached. Alert rules for them: docs/alerts.md.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from promo_pipeline.db import conninfo
from promo_pipeline.settings import Settings
from promo_pipeline.status_report import status_report

# Rows ever inserted into the ledger: Postgres' own counter (no scan of a table of millions).
# It restarts from 0 when statistics are reset, which Prometheus' rate() treats as a reset.
TRIGGERS_WRITTEN = """
SELECT coalesce(sum(n_tup_ins), 0)::int8 FROM pg_stat_user_tables
WHERE schemaname = 'public' AND relname = 'subscribers_feedback'
"""
REJECTED = """
SELECT r.key, sum(r.value::int8)::int8
FROM promo.campaign_batches b, jsonb_each_text(b.rejected) r GROUP BY r.key
"""
FANOUTS_IN_PROGRESS = "SELECT count(*) FROM promo.campaigns WHERE fanout_cursor IS NOT NULL"
OLDEST_UNSENT = """
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM promo.trigger_outbox
"""


class PipelineCollector(Collector):
    """Collects the pipeline's metrics afresh each time it is asked."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        report, _ = status_report(self.settings)
        yield from _input_metrics(report["input"])
        yield _gauge(
            "promo_outbox_triggers",
            "Triggers committed to Postgres that Kafka has not acknowledged yet",
            report["outbox"],
        )
        with psycopg.connect(conninfo(self.settings)) as conn:
            yield _gauge(
                "promo_oldest_unsent_trigger_age_seconds",
                "Age of the oldest trigger awaiting Kafka delivery (0: none waits)",
                conn.execute(OLDEST_UNSENT).fetchone()[0],
            )
            yield _gauge(
                "promo_fanouts_in_progress",
                "Campaigns whose fan-out has started and not finished (fanout_cursor set)",
                conn.execute(FANOUTS_IN_PROGRESS).fetchone()[0],
            )
            written = CounterMetricFamily(
                "promo_triggers_written",
                "Triggers inserted into public.subscribers_feedback (Postgres' insert counter)",
            )
            written.add_metric([], conn.execute(TRIGGERS_WRITTEN).fetchone()[0])
            yield written
            rejected = CounterMetricFamily(
                "promo_campaigns_rejected",
                "Campaign messages set aside in the DLQ, by reason code",
                labels=["reason"],
            )
            for reason, count in conn.execute(REJECTED):
                rejected.add_metric([reason], count)
            yield rejected
        age = last_success_age()
        if age is not None:
            yield _gauge(
                "promo_seconds_since_last_success",
                "Seconds since the latest promo_job run that succeeded ended (+Inf: none yet)",
                age,
            )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _input_metrics(input: dict[str, Any]) -> Iterator[Metric]:
    lag = GaugeMetricFamily(
        "promo_input_lag_messages",
        "Messages on the input topic past the pipeline's checkpoint, per partition",
        labels=["topic", "partition"],
    )
    if not input["checkpoint_corrupt"]:
        for partition in input["partitions"]:
            lag.add_metric([input["topic"], str(partition["partition"])], partition["lag"])
    yield lag
    yield _gauge(
        "promo_input_checkpoint_corrupt",
        "1 when Spark's checkpoint cannot be read: no run reads input until it is repaired",
        1 if input["checkpoint_corrupt"] else 0,
    )
    yield _gauge(
        "promo_input_lost_offsets",
        "Input offsets deleted by retention before the pipeline read them",
        sum(end - start for start, end in input["lost_unread"].values()),
    )


def last_success_age() -> float | None:
    """Seconds since the latest successful promo_job run ended; None without DAGSTER_HOME."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    # Deferred: Dagster takes seconds to import, and only a DAGSTER_HOME needs it.
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.get() as instance:
        records = instance.get_run_records(
            RunsFilter(job_name="promo_job", statuses=[DagsterRunStatus.SUCCESS]), limit=1
        )
    if not records or records[0].end_time is None:
        return math.inf
    return max(0.0, time.time() - records[0].end_time)


def registry(settings: Settings) -> CollectorRegistry:
    """A registry holding only the pipeline's metrics (no process or Python ones)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(settings))
    return registry
