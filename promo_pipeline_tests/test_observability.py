"""What lag tools and Prometheus see: the consumer group each run commits, and `promo metrics`,
both checked against `promo status` on the real stack."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client.parser import text_string_to_metric_families

from promo_pipeline.checkpoint import committed_offsets
from promo_pipeline.defs.resources import kafka_resource, run_options_resource
from promo_pipeline.settings import load_settings
from promo_pipeline.status_report import status_report
from promo_pipeline_tests.support.pipeline import REPO, Pipeline, campaign, new_uuid

pytestmark = [pytest.mark.stack, pytest.mark.spark]

PROMO = str(Path(sys.executable).with_name("promo"))


def group_lag(pipeline: Pipeline, group: str) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offset, lag) per partition, as lag tools compute them: the group's committed
    offsets and the topic's end offsets, both from the AdminClient."""
    settings = pipeline.settings
    topic = settings.promo_input_topic
    admin = AdminClient(kafka_resource(settings).client_config())
    request = [ConsumerGroupTopicPartitions(group)]
    [future] = admin.list_consumer_group_offsets(request).values()
    committed = {tp.partition: tp.offset for tp in future.result().topic_partitions}
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    ends = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in partitions})
    high = {tp.partition: future.result().offset for tp, future in ends.items()}
    return committed, {p: high[p] - committed.get(p, 0) for p in high}


def status_lag(pipeline: Pipeline) -> dict[int, int]:
    report, _ = status_report(pipeline.settings)
    return {p["partition"]: p["lag"] for p in report["input"]["partitions"]}


@pytest.fixture
def group(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"promo_test_{new_uuid()[:8]}"
    monkeypatch.setenv("PROMO_CONSUMER_GROUP", name)
    pipeline.settings = load_settings()
    return name


def test_consumer_group_lag_matches_promo_status(pipeline: Pipeline, group: str) -> None:
    active = campaign()
    pipeline.subscribe((new_uuid(), active["restaurant_id"]))
    pipeline.publish(active, "not json", key=b"k1")
    pipeline.publish(campaign(), key=b"k2")
    pipeline.run_ok()

    checkpoint = committed_offsets(run_options_resource(pipeline.settings).checkpoint_dir)
    read_to = {p: o for (t, p), o in checkpoint.items() if t == pipeline.settings.promo_input_topic}
    committed, lag = group_lag(pipeline, group)
    assert committed == read_to and sum(committed.values()) == 3
    assert len(committed) == 3, "every partition, the empty ones too"
    assert lag == status_lag(pipeline) == {p: 0 for p in committed}

    # Published after the run: lag tools and `promo status` count the same waiting messages.
    for key in (b"a", b"b", b"c", b"d"):
        pipeline.publish(campaign(), key=key)
    committed_after, lag = group_lag(pipeline, group)
    assert committed_after == committed
    assert sum(lag.values()) == 4
    assert lag == status_lag(pipeline)

    pipeline.run_ok()
    committed, lag = group_lag(pipeline, group)
    assert sum(committed.values()) == 7 and sum(lag.values()) == 0
    assert lag == status_lag(pipeline)


def test_a_refused_group_commit_is_reported_and_fails_nothing(
    pipeline: Pipeline, group: str, dagster_home: Path
) -> None:
    """The group is informational: when Kafka refuses the commit (here: the group has a live
    member elsewhere), the run still succeeds, and says so in a warning and its metadata."""
    from confluent_kafka import Consumer
    from dagster import AssetKey, DagsterInstance

    member = Consumer(
        kafka_resource(pipeline.settings).client_config(
            **{"group.id": group, "enable.auto.commit": False, "session.timeout.ms": 45000}
        )
    )
    try:
        member.subscribe([pipeline.settings.promo_dlq_topic])
        deadline = time.monotonic() + 60
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(0.5)
        assert member.assignment(), "the member never joined its group"
        active = campaign()
        pipeline.subscribe((new_uuid(), active["restaurant_id"]))
        pipeline.publish(active)
        pipeline.run_ok()
        assert len(pipeline.pairs()) == 1
    finally:
        member.close()
    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(AssetKey("campaign_batch"))
        metadata = event.asset_materialization.metadata
        logs = [e.message for e in instance.all_logs(event.run_id) if e.message]
    assert metadata["consumer_group_committed"].value is False
    assert metadata["consumer_group"].value == group
    assert any(f"not committed to consumer group {group}" in line for line in logs), logs


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric family name -> {sorted labels: value}, by prometheus_client's own parser."""
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def promo_metrics(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMO, "metrics", *args], env=dict(os.environ), capture_output=True, text=True, timeout=120
    )


def test_metrics_report_what_operators_alert_on(
    pipeline: Pipeline, group: str, dagster_home: Path, tmp_path: Path
) -> None:
    active = campaign()
    clients = [new_uuid() for _ in range(3)]
    pipeline.subscribe(*[(client, active["restaurant_id"]) for client in clients])
    pipeline.publish(active, "not json", b"\xff\xfe", "[]")
    pipeline.run_ok()
    for key in (b"a", b"b"):
        pipeline.publish(campaign(), key=key)
    # A fan-out cut short and a slice Kafka never acknowledged, as a killed run leaves them.
    pipeline.sql(
        "UPDATE promo.campaigns SET fanout_cursor = 'x' WHERE adv_campaign_id = %s",
        (active["adv_campaign_id"],),
    )
    pipeline.sql(
        "INSERT INTO promo.trigger_outbox (run_id, adv_campaign_id, client_first, client_last, "
        "trigger_time, triggers, created_at) VALUES ('r', %s, 'a', 'z', 1, 7, "
        "now() - interval '100 seconds')",
        (active["adv_campaign_id"],),
    )

    printed = promo_metrics()
    assert printed.returncode == 0, printed.stderr
    metrics = families(printed.stdout)
    topic = pipeline.settings.promo_input_topic
    assert metrics["promo_input_lag_messages"] == {
        (("partition", str(p)), ("topic", topic)): lag for p, lag in status_lag(pipeline).items()
    }
    assert sum(metrics["promo_input_lag_messages"].values()) == 2
    assert metrics["promo_outbox_triggers"] == {(): 7}
    assert 100 <= metrics["promo_oldest_unsent_trigger_age_seconds"][()] < 300
    assert metrics["promo_fanouts_in_progress"] == {(): 1}
    assert metrics["promo_campaigns_rejected"] == {
        (("reason", "not_json"),): 1,
        (("reason", "not_utf8"),): 1,
        (("reason", "not_object"),): 1,
    }
    assert metrics["promo_triggers_written"] == {(): 3}
    assert metrics["promo_input_checkpoint_corrupt"] == {(): 0}
    assert metrics["promo_input_lost_offsets"] == {(): 0}
    assert 0 <= metrics["promo_seconds_since_last_success"][()] < 300

    # The textfile collector's file: the same numbers.
    textfile = tmp_path / "promo.prom"
    written = promo_metrics("--textfile", str(textfile))
    assert written.returncode == 0, written.stderr
    assert families(textfile.read_text())["promo_outbox_triggers"] == {(): 7}

    # The endpoint: computed afresh per scrape (the outbox drained between two scrapes).
    server = subprocess.Popen(
        [PROMO, "metrics", "--serve", "0"], env=dict(os.environ), stdout=subprocess.PIPE, text=True
    )
    try:
        url = re.search(r"http://\S+/metrics", server.stdout.readline()).group(0)
        assert url.startswith("http://127.0.0.1:")
        scraped = families(urllib.request.urlopen(url, timeout=60).read().decode())
        assert scraped["promo_outbox_triggers"] == {(): 7}
        pipeline.sql("DELETE FROM promo.trigger_outbox")
        scraped = families(urllib.request.urlopen(url, timeout=60).read().decode())
        assert scraped["promo_outbox_triggers"] == {(): 0}
        assert scraped["promo_oldest_unsent_trigger_age_seconds"] == {(): 0}
    finally:
        server.terminate()
        server.wait(30)

    # Every alert rule in docs/alerts.md names metrics the exporter emits.
    emitted = set(metrics) | {f"{name}_total" for name in metrics}
    rules = alert_rules()
    assert len(rules) >= 5
    for rule in rules:
        names = set(re.findall(r"\bpromo_\w+", rule["expr"]))
        assert names and names <= emitted, (rule["alert"], names - emitted)


def alert_rules() -> list[dict[str, str]]:
    text = (REPO / "docs" / "alerts.md").read_text()
    [block] = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    return [rule for group in yaml.safe_load(block)["groups"] for rule in group["rules"]]


def test_metrics_before_any_success_and_on_a_corrupt_checkpoint(
    pipeline: Pipeline, dagster_home: Path
) -> None:
    """No successful run yet reads +Inf (an alert fires), not 0 or nothing; a checkpoint Spark
    cannot read gives no lag samples (not a false 0) and raises the corrupt flag."""
    pipeline.publish(campaign(), key=b"a")
    before = families(promo_metrics().stdout)
    assert before["promo_seconds_since_last_success"] == {(): float("inf")}
    assert sum(before["promo_input_lag_messages"].values()) == 1
    assert before["promo_campaigns_rejected"] == {}
    assert before["promo_input_checkpoint_corrupt"] == {(): 0}

    pipeline.run_ok()
    offsets = Path(run_options_resource(pipeline.settings).checkpoint_dir, "offsets")
    newest = max((p for p in offsets.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    newest.write_text("v1\nnot json\n")
    after = promo_metrics()
    assert after.returncode == 0, after.stderr
    metrics = families(after.stdout)
    assert metrics["promo_input_checkpoint_corrupt"] == {(): 1}
    assert metrics["promo_input_lag_messages"] == {}
    assert 0 <= metrics["promo_seconds_since_last_success"][()] < 300
