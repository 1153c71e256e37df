"""The one producer wrapper and its profiles: failures named, Spark's options derived."""

from __future__ import annotations

import socket

import pytest
from confluent_kafka import KafkaException

from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.producers import DEAD_LETTERS, SPARK_TRIGGERS, TRIGGERS, Sender
from promo_pipeline.topics import DLQ_CONFIG


def test_trigger_producer_names_the_unacknowledged_messages_and_the_brokers() -> None:
    """Nothing listens at the address: the flush fails naming how many and where, so the
    Kafka sink keeps their outbox entries."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    kafka = KafkaConfig(
        bootstrap_servers=address, input_topic="in", output_topic="out", dlq_topic="dlq"
    )
    producer = Sender(kafka, "out")
    producer.send([(b"a", b"1"), (b"b", b"2")])
    with pytest.raises(KafkaException, match=rf"Kafka at {address} did not acknowledge 2 messages"):
        producer.flush(timeout=2)


def test_spark_writer_and_the_run_send_triggers_alike() -> None:
    """Spark's Kafka writer gets the run's producer options in the Java client's names (the
    map the sink wrote by hand before it was derived), and the DLQ producer takes what the
    DLQ topic takes."""
    assert {
        "kafka.acks": "all",
        "kafka.enable.idempotence": "true",
        "kafka.linger.ms": "20",
        "kafka.batch.size": str(1 << 20),
        "kafka.compression.type": "lz4",
        "kafka.request.timeout.ms": "15000",
        "kafka.delivery.timeout.ms": "45000",
        "kafka.max.block.ms": "15000",
    } == SPARK_TRIGGERS
    assert TRIGGERS["partitioner"] == "murmur2_random"  # the Java client's default partitioner
    assert str(DEAD_LETTERS["message.max.bytes"]) == DLQ_CONFIG["max.message.bytes"]
