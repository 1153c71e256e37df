"""Mutual TLS, no SASL, configured by KAFKA_PROPERTIES_FILE alone.

A broker whose only client listener is SSL with `ssl.client.auth=required` serves every Kafka
client of the pipeline: the CLI producer, the sensor's consumer, topic creation, the DLQ
producer in the micro-batch, the consumer-group commit, and Spark's Kafka source and sink
(push_sink forced onto Spark's writer). A client without the certificate is refused, so each
of them working proves it got the certificate. The key's passphrase is random per test, so
finding it (or the key's text) in the output or the stored run is a leak.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient
from dagster import Failure

from promo_pipeline.cli.messages import send
from promo_pipeline.db import conninfo
from promo_pipeline.defs.resources import kafka_resource, postgres_resource, run_options_resource
from promo_pipeline.settings import Settings, load_settings
from promo_pipeline.stack import maven
from promo_pipeline.stack._proc import pick_free_ports
from promo_pipeline.topics import ensure_topics
from promo_pipeline.work import find_work
from promo_pipeline_tests.stack.test_secure_kafka import promo_run, stored_dagster_text, the_run_id
from promo_pipeline_tests.support.pipeline import REPO, Pipeline, campaign, new_uuid, read_topic
from promo_pipeline_tests.support.secure_kafka import (
    MutualTlsKafkaBroker,
    make_certificates,
    make_client_certificate,
)

pytestmark = [pytest.mark.stack, pytest.mark.spark]

CLIENT_ID = "promo-mtls-test"


@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutualTlsKafkaBroker]:
    maven.kafka_broker_jars()
    broker = MutualTlsKafkaBroker(
        tmp_path_factory.mktemp("mtls-kafka"),
        maven.cache_dir() / f"kafka-{maven.KAFKA_VERSION}",
        *pick_free_ports(2),
    )
    started = time.monotonic()
    try:
        broker.start()
        print(f"mTLS broker up in {time.monotonic() - started:.1f} s")
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def passphrase() -> str:
    return secrets.token_urlsafe(18)


@pytest.fixture
def mtls(
    pipeline: Pipeline,
    mtls_broker: MutualTlsKafkaBroker,
    passphrase: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The test's pipeline pointed at the mTLS broker through a properties file, with a
    Postgres-backed Dagster instance whose stored run can be searched for secrets."""
    cert, key = make_client_certificate(
        mtls_broker.tls_dir, tmp_path / "client", "client", passphrase
    )
    properties = tmp_path / "client.properties"
    properties.write_text(
        "# as kcat -F reads it\n"
        f"ssl.certificate.location={cert}\n"
        f"ssl.key.location={key}\n"
        f"ssl.key.password={passphrase}\n"
        f"client.id={CLIENT_ID}\n"
    )
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": mtls_broker.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_LOCATION": str(mtls_broker.ca_file),
        "KAFKA_PROPERTIES_FILE": str(properties),
        "PROMO_CONSUMER_GROUP": f"promo_mtls_{new_uuid()[:8]}",
        # Spark's Kafka writer too, not only the run's own producer.
        "PROMO_PUSH_SPARK_MIN_TRIGGERS": "0",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "DAGSTER_PG_DB": f"{pipeline.settings.postgres_db}_dagster",
    }
    with psycopg.connect(conninfo(pipeline.settings), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{env["DAGSTER_PG_DB"]}"')
    Path(env["DAGSTER_HOME"]).mkdir()
    shutil.copyfile(REPO / "dagster.yaml", Path(env["DAGSTER_HOME"]) / "dagster.yaml")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    ensure_topics(kafka_resource(settings))
    return settings


def test_pipeline_end_to_end_over_mutual_tls(
    pipeline: Pipeline, mtls: Settings, passphrase: str
) -> None:
    active = campaign()
    clients = sorted(new_uuid() for _ in range(2))
    pipeline.subscribe(*[(client, active["restaurant_id"]) for client in clients])
    assert send(mtls, [json.dumps(active), "not json"]) == 2
    kafka, postgres = kafka_resource(mtls), postgres_resource(mtls)
    checkpoint = run_options_resource(mtls).checkpoint_dir
    work = find_work(kafka, postgres, checkpoint, int(time.time()))
    assert work.due and "2 new campaign messages" in work.reasons[0]

    run, seconds = promo_run(dict(os.environ))
    print(f"mTLS run: {seconds:.1f} s")
    output_text = run.stdout + run.stderr
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    assert "Spark jobs" in output_text, "push_sink must have sent through Spark's writer"

    assert pipeline.pairs() == {(active["adv_campaign_id"], client) for client in clients}
    output = read_topic(mtls, mtls.promo_output_topic, timeout=20)
    assert sorted(m.key().decode() for m in output) == clients
    [dead] = read_topic(mtls, mtls.promo_dlq_topic, timeout=20)
    assert dead.value() == b"not json"
    assert not find_work(kafka, postgres, checkpoint, int(time.time())).due
    admin = AdminClient(kafka.client_config())
    [future] = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(mtls.promo_consumer_group)]
    ).values()
    assert sum(tp.offset for tp in future.result().topic_partitions) == 2

    # The run says which client settings it used, secrets masked.
    assert f"client.id={CLIENT_ID}" in output_text
    assert "ssl.key.password=***" in output_text
    key_text = Path(kafka.properties()["ssl.key.location"]).read_text()
    key_body = key_text.splitlines()[1]
    stored = stored_dagster_text(the_run_id())
    for secret in (passphrase, key_body):
        assert secret not in output_text
        assert secret not in stored


@pytest.mark.parametrize("certificate", ["none", "signed by another CA"])
def test_a_client_without_a_trusted_certificate_is_refused(
    mtls: Settings, certificate: str, tmp_path: Path
) -> None:
    """The broker really demands a certificate from its CA: without one, or with one from
    another CA, the first contact fails in one line, at once."""
    properties = ""
    if certificate != "none":
        other_ca = make_certificates(tmp_path / "other-ca").parent
        cert, key = make_client_certificate(other_ca, tmp_path / "other", "client", "pw")
        properties = tmp_path / "other.properties"
        properties.write_text(
            f"ssl.certificate.location={cert}\nssl.key.location={key}\nssl.key.password=pw\n"
        )
    kafka = kafka_resource(mtls).model_copy(update={"properties_file": str(properties)})
    started = time.monotonic()
    with pytest.raises(Failure) as failure:
        kafka.check_access(timeout=15)
    message = str(failure.value)
    print(message)
    assert message.startswith(f"Kafka at {mtls.kafka_bootstrap_servers} (SSL) refused the TLS")
    assert "client certificate" in message and "KAFKA_PROPERTIES_FILE" in message
    assert len(message) < 400 and "\n" not in message
    assert time.monotonic() - started < 10, "a refused handshake fails at once, not at timeout"
