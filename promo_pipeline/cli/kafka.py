"""The CLI's Kafka clients: a topic check that fails in one line, and a producer that reports
a failed delivery instead of dropping it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from promo_pipeline.cli.common import UserError
from promo_pipeline.settings import Settings

if TYPE_CHECKING:  # resources imports Dagster: too slow for `promo --help`
    from promo_pipeline.resources import KafkaResource

FLUSH_TIMEOUT_S = 60


def require_topic(settings: Settings, topic: str) -> None:
    """Fail in seconds, in one line, when Kafka is unreachable or the topic is missing."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from promo_pipeline.resources import kafka_resource
    from promo_pipeline.topics import KAFKA_TIMEOUT_S

    # Quiet: librdkafka would print every reconnect attempt; the one line below says it all.
    admin = AdminClient(kafka_resource(settings).client_config(log_level=0))
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
    """An idempotent producer to one topic. Delivery reports arrive after `publish` returns,
    so their errors are kept and `flush` raises the first one: nothing is lost silently."""

    def __init__(self, kafka: KafkaResource, topic: str, verb: str, **config: Any) -> None:
        from confluent_kafka import Producer

        from promo_pipeline.topics import DeliveryErrors

        self.topic = topic
        self.verb = verb  # "publish to", "re-send to": how the error line reads
        self.producer = Producer(kafka.client_config(**{"enable.idempotence": True, **config}))
        self.errors = DeliveryErrors()

    def publish(
        self, key: bytes | None, value: bytes | None, headers: list[Any] | None = None
    ) -> None:
        from confluent_kafka import KafkaException

        from promo_pipeline.topics import produce_all

        options: dict[str, Any] = {"on_delivery": self.errors}
        if headers is not None:
            options["headers"] = headers
        try:
            produce_all(self.producer, self.topic, [(key, value)], **options)
        except KafkaException as error:
            raise UserError(f"could not {self.verb} {self.topic}: {error}") from None
        self.producer.poll(0)

    def flush(self) -> None:
        """Wait for every acknowledgement; UserError naming the first failed delivery."""
        left = self.producer.flush(FLUSH_TIMEOUT_S)
        if left or self.errors:
            problem = (
                self.errors[0]
                if self.errors
                else f"{left} messages unacknowledged after {FLUSH_TIMEOUT_S} s"
            )
            raise UserError(f"could not {self.verb} {self.topic}: {problem}")
