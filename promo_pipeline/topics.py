"""The three topics, created when missing (the local stack disables auto-creation), and the
one way this project queues messages to a producer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from promo_pipeline.resources import KafkaResource

# -1 leaves the number to the broker (`num.partitions`, `default.replication.factor`), so a
# managed cluster's replication applies unless the settings ask otherwise.
BROKER_DEFAULT = -1
# How long one Kafka metadata or offsets request may take before the caller gives up.
KAFKA_TIMEOUT_S = 10.0
# A rejected message keeps its original bytes (up to the input topic's limit) and gains reason
# headers, so the DLQ must take larger messages than the input does (the DLQ producer's limit).
DLQ_CONFIG = {"max.message.bytes": str(4 * 1024 * 1024)}


def ensure_topics(
    kafka: KafkaResource,
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


class DeliveryErrors(list[str]):
    """A producer's `on_delivery` callback that keeps the error of every failed message; the
    caller checks it after `flush`."""

    def __call__(self, error: object, _message: object) -> None:
        if error is not None:
            self.append(str(error))


def produce_all(
    producer: Producer,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    **options: Any,
) -> None:
    """Queue every (key, value) message, waiting for room whenever librdkafka's local queue is
    full (its delivery reports free it); `options` go to each `produce` call. Delivery is the
    caller's to await (`flush`)."""
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key, **options)
                break
            except BufferError:
                producer.poll(0.05)


# The run's own producer of triggers keeps the guarantees of Spark's Kafka writer (acks=all,
# idempotent, lz4) and its partition for a key (murmur2, the Java client's partitioner), so a
# client's triggers land on the same partition whichever path sent them. Only failed messages
# report back, and the local queue is bounded (64 MiB), so memory stays flat at any size.
TRIGGER_PRODUCER = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 20,
    "batch.size": 1 << 20,
    "compression.type": "lz4",
    "partitioner": "murmur2_random",
    "message.timeout.ms": 45_000,
    "queue.buffering.max.kbytes": 64 * 1024,
    "delivery.report.only.error": True,
}


class TriggerProducer:
    """Sends (key, value) messages to one topic and, on `flush`, waits until Kafka acknowledged
    every one, or raises naming the failures; a caller forgets what it sent only after that."""

    def __init__(self, kafka: KafkaResource, topic: str) -> None:
        self.topic = topic
        self.where = kafka.bootstrap_servers
        self.errors = DeliveryErrors()
        self.producer = Producer(kafka.client_config(**TRIGGER_PRODUCER, on_delivery=self.errors))

    def send(self, messages: Iterable[tuple[bytes, bytes]]) -> None:
        produce_all(self.producer, self.topic, messages)

    def flush(self, timeout: float = 60.0) -> None:
        left = self.producer.flush(timeout)
        if left or self.errors:
            shown = "; ".join(dict.fromkeys(self.errors[:100])) or "no answer"
            raise KafkaException(
                f"Kafka at {self.where} did not acknowledge {left or len(self.errors)} messages "
                f"to {self.topic}: {shown}"
            )
