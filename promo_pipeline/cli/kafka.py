"""The CLI's Kafka clients: a topic check that fails in one line, and the project's sender
whose failures are one line naming what could not be done."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from promo_pipeline.cli.common import UserError
from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.producers import CLI, DeliveryFailed, Sender
from promo_pipeline.settings import Settings
from promo_pipeline.topics import KAFKA_TIMEOUT_S

FLUSH_TIMEOUT_S = 60


def require_topic(settings: Settings, topic: str) -> None:
    """Fail in seconds, in one line, when Kafka is unreachable or the topic is missing."""
    # Quiet: librdkafka would print every reconnect attempt; the one line below says it all.
    admin = AdminClient(settings.config_for(KafkaConfig).client_config(log_level=0))
    try:
        topics = admin.list_topics(timeout=KAFKA_TIMEOUT_S).topics
    except KafkaException:
        raise UserError(
            f"Kafka at {settings.kafka_bootstrap_servers} does not answer "
            "(is the stack up? `promo stack status`)"
        ) from None
    if topic not in topics:
        raise UserError(f"topic {topic} does not exist (`promo stack up` creates it)")


class Publisher:
    """A `Sender` with the CLI profile whose failures are a UserError: "could not <verb>
    <topic>: <why>"; nothing is lost silently."""

    def __init__(self, kafka: KafkaConfig, topic: str, verb: str, **config: Any) -> None:
        self.sender = Sender(kafka, topic, CLI | config)
        self.verb = verb  # "publish to", "re-send to": how the error line reads

    def publish(
        self, key: bytes | None, value: bytes | None, headers: list[Any] | None = None
    ) -> None:
        try:
            self.sender.send([(key, value)], headers)
        except KafkaException as error:
            raise UserError(f"could not {self.verb} {self.sender.topic}: {error}") from None

    def flush(self) -> None:
        """Wait for every acknowledgement; UserError naming the failed deliveries."""
        try:
            self.sender.flush(FLUSH_TIMEOUT_S)
        except DeliveryFailed as error:
            raise UserError(f"could not {self.verb} {self.sender.topic}: {error.detail}") from None
