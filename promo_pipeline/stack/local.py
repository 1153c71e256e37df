"""LocalStack: Kafka + PostgreSQL + a Spark Connect server for one working dir, no Docker.

Everything a stack owns (ports, password, data, logs, pid files) lives under its dir, so two
dirs are two independent stacks and `down()` followed by `up()` brings back the same data.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dotenv import dotenv_values

from promo_pipeline.stack import maven
from promo_pipeline.stack._proc import pick_free_ports, port_is_free
from promo_pipeline.stack.kafka_broker import KafkaBroker
from promo_pipeline.stack.postgres import PostgresCluster
from promo_pipeline.stack.spark import SparkConnectServer

log = logging.getLogger("promo_pipeline.stack")

DB_NAME = "promo"
DB_USER = "promo"
DAGSTER_DB_NAME = "dagster"
# The repo's instance configuration: `dagster dev` on the local stack runs on the same file
# as production (storage in this stack's Postgres).
REPO_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


def _write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically: it holds the database password."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_env_file(path: Path, settings: dict[str, str], header: str | None = None) -> None:
    """`NAME='VALUE'` lines, private: python-dotenv (pydantic-settings' and Dagster's .env
    reader) takes a single-quoted value literally, escapes aside, and so does `set -a; . FILE`
    for every value the stack produces (paths with spaces included)."""
    lines = [] if header is None else [header]
    for name, value in settings.items():
        quoted = value.replace("\\", "\\\\").replace("'", "\\'")
        lines.append(f"{name}='{quoted}'")
    _write_private(path, "".join(f"{line}\n" for line in lines))


# "connect": a long-lived Spark Connect server that every run uses (warm: no JVM start per
# run); "local": each run starts its own in-process Spark session (what the tests use, so a
# test's environment, fault injection included, reaches the foreachBatch code).
SPARK_ENGINES = ("connect", "local")


class LocalStack:
    """The services the pipeline needs, run as plain local processes under `dir`."""

    def __init__(self, dir: Path, spark: str = "connect") -> None:
        if spark not in SPARK_ENGINES:
            raise ValueError(f"spark must be one of {SPARK_ENGINES}, not {spark!r}")
        self.spark = spark
        self.dir = Path(dir).absolute()
        self.config_file = self.dir / "stack.json"
        self.env_file = self.dir / "stack.env"
        self.state_dir = self.dir / "state"
        self.dagster_home = self.dir / "dagster_home"

    # -- persisted settings -------------------------------------------------------------

    def _load_config(self) -> dict:
        if self.config_file.exists():
            config = json.loads(self.config_file.read_text())
            if "spark_connect_port" not in config:  # a stack.json without the Connect ports
                config["spark_connect_port"], config["spark_ui_port"] = pick_free_ports(2)
                self._save_config(config)
            return config
        kafka, controller, pg, connect, spark_ui = pick_free_ports(5)
        config = {
            "kafka_port": kafka,
            "kafka_controller_port": controller,
            "postgres_port": pg,
            "spark_connect_port": connect,
            "spark_ui_port": spark_ui,
            "postgres_password": secrets.token_urlsafe(24),
        }
        self._save_config(config)
        return config

    def _save_config(self, config: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_private(self.config_file, json.dumps(config, indent=2) + "\n")

    def _services(self, config: dict) -> tuple[PostgresCluster, KafkaBroker]:
        pg = PostgresCluster(
            self.dir / "postgres",
            config["postgres_port"],
            DB_USER,
            config["postgres_password"],
            DB_NAME,
        )
        kafka = KafkaBroker(
            self.dir / "kafka",
            maven.cache_dir() / f"kafka-{maven.KAFKA_VERSION}",
            config["kafka_port"],
            config["kafka_controller_port"],
        )
        return pg, kafka

    def _spark_connect(self, config: dict, jars: list[str] | None = None) -> SparkConnectServer:
        """The server's handle; `jars` only matter to start it (status and stop need none)."""
        return SparkConnectServer(
            self.dir / "spark",
            jars or [],
            port=config["spark_connect_port"],
            ui_port=config["spark_ui_port"],
        )

    def _reassign_taken_ports(self, config: dict) -> dict:
        """A saved port now held by something else gets a fresh one (only for stopped services)."""
        pg, kafka = self._services(config)
        services = (
            (pg, ("postgres_port",)),
            (kafka, ("kafka_port", "kafka_controller_port")),
            (self._spark_connect(config), ("spark_connect_port", "spark_ui_port")),
        )
        moved = {}
        for service, keys in services:
            if not service.is_running() and not all(port_is_free(config[k]) for k in keys):
                moved |= dict(zip(keys, pick_free_ports(len(keys)), strict=True))
        if moved:
            # Only the ports: the config also holds the database password.
            log.warning("saved port taken by another process, now using %s", moved)
            config.update(moved)
            self._save_config(config)
        return config

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise up/down across processes sharing this dir."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- public API ---------------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        """The environment the pipeline reads to reach this stack (valid once up)."""
        config = self._load_config()
        jars = maven.spark_jars()
        return {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{config['kafka_port']}",
            "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(config["postgres_port"]),
            "POSTGRES_DB": DB_NAME,
            "POSTGRES_USER": DB_USER,
            "POSTGRES_PASSWORD": config["postgres_password"],
            "PROMO_STATE_DIR": str(self.state_dir),
            "PROMO_SPARK_JARS": ",".join(str(j) for j in jars),
            "PROMO_SPARK_CONNECT_LOG": (
                str(self._spark_connect(config).log_file) if self.spark == "connect" else ""
            ),
            "SPARK_MASTER": (
                f"sc://127.0.0.1:{config['spark_connect_port']}"
                if self.spark == "connect"
                else "local[2]"
            ),
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_PG_DB": DAGSTER_DB_NAME,
        }

    def up(self) -> dict[str, str]:
        """Start whatever is not running yet and return (and write to stack.env) the settings."""
        with self._lock():
            config = self._reassign_taken_ports(self._load_config())
            maven.kafka_broker_jars()
            spark_jars = [str(jar) for jar in maven.spark_jars()]
            pg, kafka = self._services(config)
            pg.start()
            kafka.start()
            if self.spark == "connect":
                connect = self._spark_connect(config, spark_jars)
                if not connect.is_running():
                    connect.start()
                    connect.warm_up()
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._prepare_dagster_home(pg)
            settings = self.settings()
            write_env_file(self.env_file, settings)
            log.info("stack up in %s (settings in %s)", self.dir, self.env_file)
            return settings

    def _prepare_dagster_home(self, pg: PostgresCluster) -> None:
        with pg.connect() as conn:
            conn.autocommit = True
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DAGSTER_DB_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DAGSTER_DB_NAME}"')
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        if REPO_DAGSTER_YAML.is_file():
            shutil.copyfile(REPO_DAGSTER_YAML, self.dagster_home / "dagster.yaml")
        else:
            log.warning("no dagster.yaml next to the package; DAGSTER_HOME keeps Dagster defaults")

    def down(self) -> None:
        """Stop Spark, Kafka, then Postgres; data stays. Fine to call when already stopped."""
        if not self.config_file.exists():
            return
        with self._lock():
            config = self._load_config()
            self._spark_connect(config).stop()
            pg, kafka = self._services(config)
            kafka.stop()
            pg.stop()

    def status(self) -> list[tuple[str, bool, str]]:
        """(service, running, where) for each service, e.g. '127.0.0.1:5433 pid 12 log ...'."""
        if not self.config_file.exists():
            return [
                ("postgres", False, "not created"),
                ("kafka", False, "not created"),
                ("spark connect", False, "not created"),
            ]
        config = self._load_config()
        pg, kafka = self._services(config)
        connect = self._spark_connect(config)
        # The engine the last `up` chose, as it wrote it; not this handle's (status has no
        # --spark).
        written = dotenv_values(self.env_file) if self.env_file.exists() else {}
        local_runs = (written.get("SPARK_MASTER") or "").startswith("local")
        return [
            (
                "postgres",
                pg.is_running(),
                f"127.0.0.1:{pg.port} pid {pg.pid() or '-'} log {pg.log_file}",
            ),
            (
                "kafka",
                kafka.is_running(),
                f"{kafka.bootstrap} pid {kafka.pid() or '-'} log {kafka.server_log}",
            ),
            (
                "spark connect",
                connect.is_running(),
                f"{connect.url} pid {connect.pid() or '-'} log {connect.log_file}"
                + (" (runs use a local session)" if local_runs else ""),
            ),
        ]

    def postgres(self) -> PostgresCluster:
        """The Postgres service object (for is_running()/connect() in tools and tests)."""
        return self._services(self._load_config())[0]

    def kafka(self) -> KafkaBroker:
        """The Kafka service object (for is_running()/pid() in tools and tests)."""
        return self._services(self._load_config())[1]

    def spark_connect(self) -> SparkConnectServer:
        """The Spark Connect server object (for is_running()/pid() in tools and tests)."""
        return self._spark_connect(self._load_config())
