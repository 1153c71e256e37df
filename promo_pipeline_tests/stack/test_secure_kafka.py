"""Kafka secured as in the seed (SASL_SSL, SCRAM-SHA-512, private CA), configured only by env.

A second local broker whose only client listener is SASL_SSL serves every Kafka client of the
pipeline: the CLI producer, the sensor's consumer, the DLQ producer in the micro-batch, Spark's
Kafka source and sink. The password is random per session, so finding it anywhere is a leak.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance, Failure, RunsFilter
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster_shared.serdes import serialize_value

from promo_pipeline.cli.messages import send
from promo_pipeline.db import conninfo
from promo_pipeline.defs.resources import kafka_resource, postgres_resource, run_options_resource
from promo_pipeline.settings import Settings, load_settings
from promo_pipeline.stack import maven
from promo_pipeline.stack._proc import pick_free_ports
from promo_pipeline.topics import ensure_topics
from promo_pipeline.work import find_work
from promo_pipeline_tests.support.pipeline import Pipeline, campaign, new_uuid, read_topic
from promo_pipeline_tests.support.secure_kafka import (
    MECHANISM,
    SecureKafkaBroker,
    make_certificates,
)

pytestmark = [pytest.mark.stack, pytest.mark.spark]

REPO = Path(__file__).resolve().parents[2]
PROMO = str(Path(sys.executable).with_name("promo"))
USER = "promo-pipeline"


@dataclass
class SecureKafka:
    broker: SecureKafkaBroker
    password: str


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    password = secrets.token_urlsafe(18)
    maven.kafka_broker_jars()
    broker = SecureKafkaBroker(
        tmp_path_factory.mktemp("secure-kafka"),
        maven.cache_dir() / f"kafka-{maven.KAFKA_VERSION}",
        *pick_free_ports(2),
        users={USER: password},
    )
    started = time.monotonic()
    try:
        broker.start()
        print(f"secured broker up in {time.monotonic() - started:.1f} s")
        yield SecureKafka(broker, password)
    finally:
        broker.stop()


@pytest.fixture
def secured(
    pipeline: Pipeline,
    secure_kafka: SecureKafka,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The test's pipeline pointed at the secured broker, with a Postgres-backed Dagster
    instance so the stored run config and event log can be searched for the secret."""
    broker = secure_kafka.broker
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": MECHANISM,
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": secure_kafka.password,
        "KAFKA_SSL_CA_LOCATION": str(broker.ca_file),
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


def promo_run(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    run = subprocess.run(
        [PROMO, "run"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    return run, time.monotonic() - started


def stored_dagster_text(run_id: str) -> str:
    """What the UI shows of a run: its config, tags and every event, serialized."""
    instance = DagsterInstance.get()
    try:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        events = instance.all_logs(run_id)
        assert events
        return serialize_value(run) + "".join(serialize_value(event) for event in events)
    finally:
        instance.dispose()


def the_run_id() -> str:
    instance = DagsterInstance.get()
    try:
        [record] = instance.get_run_records(RunsFilter(job_name="promo_job"))
        return record.dagster_run.run_id
    finally:
        instance.dispose()


def test_pipeline_end_to_end_over_sasl_ssl_scram(
    pipeline: Pipeline, secured: Settings, secure_kafka: SecureKafka
) -> None:
    active = campaign()
    clients = sorted(new_uuid() for _ in range(2))
    pipeline.subscribe(*[(client, active["restaurant_id"]) for client in clients])
    # The CLI's producer and the sensor's lag check, both confluent-kafka over SASL_SSL.
    assert send(secured, [json.dumps(active), "not json"]) == 2
    kafka, postgres = kafka_resource(secured), postgres_resource(secured)
    checkpoint = run_options_resource(secured).checkpoint_dir
    work = find_work(kafka, postgres, checkpoint, int(time.time()))
    assert work.due and "2 new campaign messages" in work.reasons[0]

    run, seconds = promo_run(dict(os.environ))
    print(f"secured run: {seconds:.1f} s")
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]

    assert pipeline.pairs() == {(active["adv_campaign_id"], client) for client in clients}
    output = read_topic(secured, secured.promo_output_topic, timeout=20)
    assert sorted(m.key().decode() for m in output) == clients
    [dead] = read_topic(secured, secured.promo_dlq_topic, timeout=20)
    assert dead.value() == b"not json"
    work = find_work(kafka, postgres, checkpoint, int(time.time()))
    assert not work.due, work.reasons

    # The secret is nowhere: not in the run's output (Dagster, Spark and librdkafka logs), not
    # in the stored run and its events, not in the code location the UI renders.
    password = secure_kafka.password
    assert password not in run.stdout + run.stderr
    assert password not in stored_dagster_text(the_run_id())
    from promo_pipeline.definitions import defs as load_defs

    defs = load_defs()
    snapshot = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))
    assert "KAFKA_SASL_PASSWORD" in snapshot
    assert password not in snapshot


def test_wrong_password_fails_fast_and_writes_nothing(
    pipeline: Pipeline, secured: Settings, secure_kafka: SecureKafka
) -> None:
    active = campaign()
    pipeline.subscribe((new_uuid(), active["restaurant_id"]))
    send(secured, [json.dumps(active)])
    wrong = "wrong-" + secrets.token_urlsafe(8)

    run, seconds = promo_run({**os.environ, "KAFKA_SASL_PASSWORD": wrong})
    print(f"run with a wrong password failed in {seconds:.1f} s")
    assert run.returncode == 1, run.stdout + run.stderr[-3000:]
    assert "FAILED campaign_batch:" in run.stdout
    assert (
        f"Kafka at {secured.kafka_bootstrap_servers} (SASL_SSL) rejected user '{USER}' "
        "(SCRAM-SHA-512): SASL authentication error" in run.stdout
    )
    assert "KAFKA_SASL_PASSWORD" in run.stdout
    assert seconds < 90, "a refused login must fail the run at once, not after retries"

    assert pipeline.feedback() == []
    assert pipeline.sql("SELECT count(*) FROM promo.campaigns") == [(0,)]
    assert pipeline.sql("SELECT count(*) FROM promo.unsent_triggers") == [(0,)]
    assert read_topic(secured, secured.promo_output_topic, timeout=20) == []
    assert read_topic(secured, secured.promo_dlq_topic, timeout=20) == []
    assert not Path(run_options_resource(secured).checkpoint_dir).exists()
    for secret in (secure_kafka.password, wrong):
        assert secret not in run.stdout + run.stderr
        assert secret not in stored_dagster_text(the_run_id())


def test_untrusted_broker_certificate_is_refused_with_the_reason(
    secured: Settings, tmp_path: Path
) -> None:
    """Hostname and chain verification stay on: a CA that did not sign the broker fails."""
    other_ca = make_certificates(tmp_path / "other-ca")
    kafka = kafka_resource(secured).model_copy(update={"ssl_ca_location": str(other_ca)})
    started = time.monotonic()
    with pytest.raises(Failure, match=r"TLS handshake failed.*KAFKA_SSL_CA_LOCATION"):
        kafka.check_access()
    assert time.monotonic() - started < 15
