"""The three topics, created when missing (the local stack disables auto-creation), and their
partitions' offsets."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from promo_pipeline.kafka_config import KafkaConfig

# -1 leaves the number to the broker (`num.partitions`, `default.replication.factor`), so a
# managed cluster's replication applies unless the settings ask otherwise.
BROKER_DEFAULT = -1
# How long one Kafka metadata or offsets request may take before the caller gives up.
KAFKA_TIMEOUT_S = 10.0
# A rejected message keeps its original bytes (up to the input topic's limit) and gains reason
# headers, so the DLQ topic and its producer take larger messages than the input does.
DLQ_MAX_BYTES = 4 * 1024 * 1024
DLQ_CONFIG = {"max.message.bytes": str(DLQ_MAX_BYTES)}


def ensure_topics(
    kafka: KafkaConfig,
    *,
    partitions: int = BROKER_DEFAULT,
    replication_factor: int = BROKER_DEFAULT,
    timeout: float = 30.0,
) -> list[str]:
    """Create whichever topics are missing, with `partitions` and `replication_factor` each
    (-1: the broker's default); returns the ones created. Existing topics are left as they are."""
    # Warnings and errors only: librdkafka's info line about purged background events on close
    # is noise in `promo stack up`.
    admin = AdminClient(kafka.client_config(log_level=4))
    wanted = (kafka.input_topic, kafka.output_topic, kafka.dlq_topic)
    existing = admin.list_topics(timeout=timeout).topics
    missing = [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=replication_factor,
            config=DLQ_CONFIG if name == kafka.dlq_topic else {},
        )
        for name in wanted
        if name not in existing
    ]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def topic_watermarks(kafka: KafkaConfig, topic: str) -> dict[int, tuple[int, int]]:
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
        partitions = sorted(metadata.topics[topic].partitions)
        if metadata.topics[topic].error is not None:
            raise RuntimeError(f"topic {topic}: {metadata.topics[topic].error}")
        deadline = time.monotonic() + KAFKA_TIMEOUT_S
        return {p: _watermarks(consumer, TopicPartition(topic, p), deadline) for p in partitions}
    finally:
        consumer.close()


# What a partition answers while its leader is elected; librdkafka does not always mark these
# retriable on an offsets query.
LEADER_MOVING = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


def _watermarks(consumer: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """One partition's (low, high), asked again on a retriable error (a partition whose leader
    is being elected: a topic just created, a broker just restarted) until `deadline`."""
    while True:
        try:
            return consumer.get_watermark_offsets(
                partition, timeout=max(deadline - time.monotonic(), 0.1)
            )
        except KafkaException as error:
            kafka_error = error.args[0]
            retry = kafka_error.retriable() or kafka_error.code() in LEADER_MOVING
            if not retry or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
