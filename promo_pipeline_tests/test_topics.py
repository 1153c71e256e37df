"""Topic creation on a real broker: the layout comes from the settings, else from the broker."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from promo_pipeline.cli.stack import prepare
from promo_pipeline.settings import Settings, load_settings
from promo_pipeline_tests.support.faults import poll
from promo_pipeline_tests.support.pipeline import Pipeline

pytestmark = pytest.mark.stack


def _layout(settings: Settings) -> dict[str, tuple[int, frozenset[int]]]:
    """Per topic: the partition count and the set of replica counts of its partitions (once
    the broker's metadata shows all three: creation is acknowledged before it does)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    names = (settings.promo_input_topic, settings.promo_output_topic, settings.promo_dlq_topic)

    def described() -> dict[str, tuple[int, frozenset[int]]] | None:
        topics = admin.list_topics(timeout=10).topics
        if not all(name in topics and topics[name].partitions for name in names):
            return None
        return {
            name: (
                len(topics[name].partitions),
                frozenset(len(p.replicas) for p in topics[name].partitions.values()),
            )
            for name in names
        }

    return poll(described, 30, "the new topics in the broker's metadata")


def _broker_num_partitions(settings: Settings) -> int:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    broker = next(iter(admin.list_topics(timeout=10).brokers))
    resource = ConfigResource(ResourceType.BROKER, str(broker))
    config = admin.describe_configs([resource])[resource].result(10)
    return int(config["num.partitions"].value)


def _fresh_topics(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    suffix = uuid.uuid4().hex[:10]
    for name, value in {
        "PROMO_INPUT_TOPIC": f"layout_in_{suffix}",
        "PROMO_OUTPUT_TOPIC": f"layout_out_{suffix}",
        "PROMO_DLQ_TOPIC": f"layout_dlq_{suffix}",
        **env,
    }.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_prepare_uses_the_topic_settings(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prepare` is what `promo stack up` and compose's `init` run."""
    settings = _fresh_topics(monkeypatch, PROMO_TOPIC_PARTITIONS="2")
    prepare(settings)
    assert set(_layout(settings).values()) == {(2, frozenset({1}))}


def test_topics_default_to_the_brokers_layout(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _fresh_topics(monkeypatch)
    assert settings.promo_topic_partitions == settings.promo_topic_replication_factor == -1
    prepare(settings)
    assert set(_layout(settings).values()) == {(_broker_num_partitions(settings), frozenset({1}))}


def test_a_replication_factor_the_cluster_cannot_meet_fails(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking for 3 replicas on a one-broker cluster is refused, not silently reduced."""
    settings = _fresh_topics(monkeypatch, PROMO_TOPIC_REPLICATION_FACTOR="3")
    with pytest.raises(KafkaException, match=r"(?i)replication factor"):
        prepare(settings)
