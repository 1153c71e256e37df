"""The embedded stack against real processes: Kafka and Postgres must actually answer."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from dotenv import dotenv_values

from promo_pipeline.stack import LocalStack
from promo_pipeline.stack._proc import wait_until
from promo_pipeline_tests.support.pipeline import campaign
from promo_pipeline_tests.support.stack import destroy

pytestmark = pytest.mark.stack

EXPECTED_KEYS = [
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "PROMO_STATE_DIR",
    "PROMO_SPARK_JARS",
    "PROMO_SPARK_CONNECT_LOG",
    "SPARK_MASTER",
    "DAGSTER_HOME",
    "DAGSTER_PG_DB",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack(tmp_path_factory.mktemp("stack-a"))
    try:
        yield s
    finally:
        destroy(s)


@pytest.fixture(scope="module")
def env(stack: LocalStack) -> dict[str, str]:
    return stack.up()


def _connect(env: dict[str, str], password: str | None = None) -> psycopg.Connection:
    return psycopg.connect(
        host=env["POSTGRES_HOST"],
        port=int(env["POSTGRES_PORT"]),
        dbname=env["POSTGRES_DB"],
        user=env["POSTGRES_USER"],
        password=password or env["POSTGRES_PASSWORD"],
        connect_timeout=5,
    )


def test_settings_and_env_file(stack: LocalStack, env: dict[str, str]) -> None:
    assert list(env) == EXPECTED_KEYS
    assert env["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert env["POSTGRES_HOST"] == "127.0.0.1"
    assert env["PROMO_STATE_DIR"] == str(stack.dir / "state")
    assert Path(env["PROMO_STATE_DIR"]).is_dir()
    jars = env["PROMO_SPARK_JARS"].split(",")
    assert any("spark-sql-kafka-0-10" in j for j in jars)
    assert all(Path(j).is_absolute() and Path(j).is_file() for j in jars)
    for path in (stack.env_file, stack.config_file):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert dotenv_values(stack.env_file) == env
    assert [(name, running) for name, running, _ in stack.status()] == [
        ("postgres", True),
        ("kafka", True),
        ("spark connect", True),
    ]
    assert env["SPARK_MASTER"].startswith("sc://127.0.0.1:")
    # Warming the server up must not turn this process into a Connect-only one: local
    # sessions started here (or in children, e.g. `dagster dev`) would then fail.
    assert not {"SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE"} & set(os.environ)


def test_kafka_roundtrip(env: dict[str, str]) -> None:
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"stack-test-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        msg = None
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.error() is None
        assert (msg.key(), msg.value()) == (b"k", b"hello")
    finally:
        consumer.close()


def test_postgres_password(env: dict[str, str]) -> None:
    with _connect(env) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("promo",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(env, password="wrong-password")


def test_up_is_idempotent(stack: LocalStack, env: dict[str, str]) -> None:
    pids = (stack.postgres().pid(), stack.kafka().pid(), stack.spark_connect().pid())
    assert stack.up() == env
    assert (stack.postgres().pid(), stack.kafka().pid(), stack.spark_connect().pid()) == pids


def test_second_stack_gets_other_ports(
    tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> None:
    other = LocalStack(tmp_path_factory.mktemp("stack-b"), spark="local")
    try:
        other_env = other.up()
        ports = {env["POSTGRES_PORT"], env["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1]}
        other_ports = {
            other_env["POSTGRES_PORT"],
            other_env["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1],
        }
        assert not ports & other_ports
        assert other_env["POSTGRES_PASSWORD"] != env["POSTGRES_PASSWORD"]
        with _connect(other_env) as conn:
            conn.execute("SELECT 1")
    finally:
        destroy(other)
    assert not other.dir.exists()


def _spark_jobs(stack: LocalStack) -> int:
    """Jobs the Connect server's Spark application has run, from its own REST API."""
    base = f"http://127.0.0.1:{stack.spark_connect().ui_port}/api/v1/applications"
    # The UI's first answer after the server starts can take seconds on a busy host.
    with urllib.request.urlopen(base, timeout=60) as response:
        [app] = json.load(response)
    with urllib.request.urlopen(f"{base}/{app['id']}/jobs", timeout=60) as response:
        return len(json.load(response))


def test_demo_runs_on_the_stacks_spark_connect_server(
    stack: LocalStack, env: dict[str, str]
) -> None:
    """The README's first command: `promo demo` on this stack, its runs on the warm server."""
    jobs_before = _spark_jobs(stack)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(tuple(EXPECTED_KEYS))}
    demo = subprocess.run(
        [str(Path(sys.executable).with_name("promo")), "demo", "--dir", str(stack.dir)],
        env={**clean, "PROMO_STACK_DIR": str(stack.dir)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert ": SUCCESS in" in demo.stdout
    shown = re.search(r"subscribers_feedback \((\d+) shown\)", demo.stdout)
    assert shown and int(shown.group(1)) > 0, demo.stdout
    # The run's Kafka read, joins and Arrow collect ran as jobs inside the server.
    assert _spark_jobs(stack) > jobs_before


def test_dead_connect_server_fails_the_run_in_one_line_and_up_restarts_it(
    stack: LocalStack, env: dict[str, str]
) -> None:
    promo = str(Path(sys.executable).with_name("promo"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(tuple(EXPECTED_KEYS))}
    stack_env = {**clean, "PROMO_STACK_DIR": str(stack.dir)}
    # Tables, topics and a new campaign message: the run must read it through Spark
    # (with nothing new past the checkpoint, a run needs no Spark and succeeds without it).
    for command, stdin in (["stack", "up"], None), (["send"], json.dumps(campaign())):
        done = subprocess.run(
            [promo, *command], env=stack_env, input=stdin, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
    connect = stack.spark_connect()
    os.kill(connect.pid(), signal.SIGKILL)
    assert wait_until(lambda: not connect.is_running(), 30)

    started = time.monotonic()
    run = subprocess.run([promo, "run"], env=stack_env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert run.returncode != 0
    assert seconds < 60, f"the run took {seconds:.0f} s to fail"
    expected = (
        f"Spark Connect server at {connect.url} does not answer (Connection refused); "
        f"see {connect.log_file}"
    )
    [line] = [line for line in run.stdout.splitlines() if "FAILED" in line]
    assert expected in line, run.stdout[-3000:]

    # `promo stack up` starts the dead server again (and leaves the rest as it is).
    assert stack.up() == env
    assert connect.is_running()


def test_down_then_up_keeps_data(stack: LocalStack, env: dict[str, str]) -> None:
    with _connect(env) as conn:
        conn.execute("CREATE TABLE survivor (note text)")
        conn.execute("INSERT INTO survivor VALUES ('still here')")
    pg, kafka, connect = stack.postgres(), stack.kafka(), stack.spark_connect()

    stack.down()
    assert wait_until(
        lambda: not pg.is_running() and not kafka.is_running() and not connect.is_running(), 30
    )
    assert [running for _, running, _ in stack.status()] == [False, False, False]
    stack.down()  # already stopped: a no-op

    assert stack.up() == env
    with _connect(env) as conn:
        assert conn.execute("SELECT note FROM survivor").fetchall() == [("still here",)]
