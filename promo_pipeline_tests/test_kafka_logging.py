"""librdkafka's own log lines reach Python logging (logger `promo_pipeline.librdkafka`, at their
syslog level), never the terminal raw, for every client built from `client_config`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from promo_pipeline.kafka_config import LIBRDKAFKA_LOG, KafkaConfig

# Nothing listens there: every client logs its refused connection (syslog level 3, error).
NOBODY = KafkaConfig(
    bootstrap_servers="127.0.0.1:1", input_topic="i", output_topic="o", dlq_topic="d"
)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Producer(NOBODY.client_config()),
        lambda: Consumer(NOBODY.client_config(**{"group.id": "promo_test"})),
        lambda: AdminClient(NOBODY.client_config()),
    ],
    ids=["producer", "consumer", "admin"],
)
def test_client_logs_go_through_python_logging(
    make: Callable[[], Producer | Consumer | AdminClient],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert LIBRDKAFKA_LOG.getEffectiveLevel() == logging.ERROR  # errors only, by default
    client = make()
    deadline = time.monotonic() + 30
    refused: list[logging.LogRecord] = []
    while not refused and time.monotonic() < deadline:
        client.poll(0.5)  # serves the client's log queue
        refused = [
            r
            for r in caplog.records
            if r.name == LIBRDKAFKA_LOG.name and "Connection refused" in r.getMessage()
        ]
    if isinstance(client, Consumer):
        client.close()
    assert refused and all(r.levelno == logging.ERROR for r in refused), caplog.records
    raw = capfd.readouterr().err
    assert "%3|" not in raw and "Connection refused" not in raw, raw
