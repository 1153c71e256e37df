"""The one producer wrapper, `Sender`, with a profile per kind of message (triggers, dead
letters, the CLI's), and Spark's writer options derived from the triggers' profile."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaException, Producer

from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.topics import DLQ_MAX_BYTES


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


# Profiles of `Sender`: librdkafka options for one kind of message.
#
# Triggers keep the guarantees of Spark's Kafka writer (acks=all, idempotent, lz4) and its
# partition for a key (murmur2, the Java client's partitioner), so a client's triggers land on
# the same partition whichever path sent them. Only failed messages report back, and the local
# queue is bounded (64 MiB), so memory stays flat at any size. The messages repeat their
# campaign's fields, so lz4 shrinks a batch several times over. `SPARK_TRIGGERS` is derived.
TRIGGERS: dict[str, Any] = {
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
# A rejected message may be as large as the broker accepted on input (~1 MiB) plus our
# headers: lift the client's own 1,000,000-byte cap and compress, so the broker's per-batch
# limit, not the client, decides, and a big message cannot block every run.
DEAD_LETTERS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 20,
    "message.max.bytes": DLQ_MAX_BYTES,
    "compression.type": "zstd",
}
# The CLI's messages (`promo send`, `promo dlq replay`): idempotent, with the caller's headers.
CLI: dict[str, Any] = {"enable.idempotence": True}

# The options of TRIGGERS that the Java client names and reads alike.
SHARED_WITH_JAVA = ("acks", "enable.idempotence", "linger.ms", "batch.size", "compression.type")
# Spark's Kafka writer (the Java producer) for the same triggers, derived from TRIGGERS, with
# bounded waits: an unreachable broker fails the run in under a minute rather than hanging it
# (the outbox keeps the triggers for the next run).
# librdkafka's message.timeout.ms is Java's delivery.timeout.ms; Java's default partitioner is
# murmur2 already; the local queue and delivery reports are librdkafka's own.
SPARK_TRIGGERS = {
    f"kafka.{name}": str(TRIGGERS[name]).lower()
    if isinstance(TRIGGERS[name], bool)
    else str(TRIGGERS[name])
    for name in SHARED_WITH_JAVA
} | {
    "kafka.request.timeout.ms": "15000",
    "kafka.delivery.timeout.ms": str(TRIGGERS["message.timeout.ms"]),
    "kafka.max.block.ms": "15000",
}


class DeliveryFailed(KafkaException):
    """Kafka did not acknowledge some messages; `detail` says why (their errors, or none came)."""

    def __init__(self, where: str, topic: str, count: int, detail: str) -> None:
        super().__init__(
            f"Kafka at {where} did not acknowledge {count} messages to {topic}: {detail}"
        )
        self.detail = detail


class Sender:
    """Sends messages to one topic with one profile's options and, on `flush`, waits until Kafka
    acknowledged every one, or raises `DeliveryFailed` naming the failures; a caller forgets
    what it sent only after that."""

    def __init__(self, kafka: KafkaConfig, topic: str, profile: dict[str, Any] = TRIGGERS) -> None:
        self.topic = topic
        self.where = kafka.bootstrap_servers
        self.errors = DeliveryErrors()
        self.producer = Producer(kafka.client_config(**profile, on_delivery=self.errors))

    def send(
        self,
        messages: Iterable[tuple[bytes | None, bytes | None]],
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue `messages` (key, value), each with `headers`; serve delivery reports so far."""
        produce_all(
            self.producer, self.topic, messages, **({"headers": headers} if headers else {})
        )
        self.producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        left = self.producer.flush(timeout)
        if left or self.errors:
            shown = "; ".join(dict.fromkeys(self.errors[:100]))
            raise DeliveryFailed(
                self.where,
                self.topic,
                left or len(self.errors),
                shown or f"no answer within {timeout:.0f} s",
            )
