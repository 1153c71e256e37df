"""A single-node KRaft Kafka broker run straight from Maven jars, without Docker.

One JVM plays both broker and controller with a static one-voter quorum, which is the
smallest setup that behaves like a real cluster for producers, consumers and Spark.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from promo_pipeline.stack._proc import require_tool, tail
from promo_pipeline.stack.errors import CommandFailed
from promo_pipeline.stack.service import ProcessService

log = logging.getLogger("promo_pipeline.stack")

MAIN_CLASS = "kafka.Kafka"


class KafkaBroker(ProcessService):
    """A broker whose config, data, logs and pid file all live under `dir`."""

    name = "kafka"
    # A JVM on a busy 2-core host can take a minute to open its listener; a broken one fails
    # sooner (its process exits and the start reports that at once).
    start_timeout = 180.0
    # KafkaException while the broker is still booting.
    not_ready_errors = (Exception,)

    def __init__(self, dir: Path, jars_dir: Path, port: int, controller_port: int) -> None:
        super().__init__(dir, port, "server.log", pid_file="kafka.pid", output_file="stdout.log")
        self.jars_dir = jars_dir
        self.controller_port = controller_port
        self.config = self.dir / "server.properties"
        self.log4j_config = self.dir / "log4j2.properties"
        self.data_dir = self.dir / "data"
        self._probe: AdminClient | None = None

    @property
    def server_log(self) -> Path:
        return self.log_file

    @property
    def stdout_log(self) -> Path:
        return self.output_file

    @property
    def bootstrap(self) -> str:
        return self.address

    def _marker(self) -> str:
        """Our broker's command line names our config file."""
        return str(self.config)

    def _classpath(self) -> str:
        return f"{self.jars_dir}/*"

    @staticmethod
    def _java() -> str:
        return require_tool("java", "openjdk-17-jre-headless")

    def _prepare(self) -> None:
        self._write_config()
        self._format_once()

    def _command(self) -> list[str]:
        return [
            self._java(),
            "-Xms256m",
            "-Xmx512m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_config}",
            "-cp",
            self._classpath(),
            MAIN_CLASS,
            str(self.config),
        ]

    def _write_config(self) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "3",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.log4j_config.write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {self.server_log}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
        )

    def _format_once(self) -> None:
        """Format the log dir with a fresh cluster id; skipped once meta.properties exists."""
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = "-"
        while not cluster_id[0].isalnum():  # a leading '-' would be read as a flag
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        cmd = [
            self._java(),
            f"-Dlog4j2.configurationFile={self.log4j_config}",
            "-cp",
            self._classpath(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.config),
            *self._format_args(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CommandFailed(
                "kafka storage format", f"kafka storage format failed:\n{proc.stdout}{proc.stderr}"
            )
        log.info("formatted kafka storage in %s (cluster id %s)", self.data_dir, cluster_id)

    def _format_args(self) -> list[str]:
        """Extra arguments for `StorageTool format` (a secured broker adds its users)."""
        return []

    def _admin_config(self) -> dict[str, Any]:
        """How the readiness probe connects; a secured broker adds its credentials."""
        return {"bootstrap.servers": self.bootstrap}

    def wait_until_ready(self, timeout: float) -> None:
        quiet = logging.getLogger("promo_pipeline.stack.librdkafka")
        quiet.setLevel(logging.CRITICAL)
        self._probe = AdminClient(self._admin_config() | {"logger": quiet})
        try:
            super().wait_until_ready(timeout)
        finally:
            self._probe = None

    def _ready(self) -> bool:
        """The broker serves metadata."""
        assert self._probe is not None
        return bool(self._probe.list_topics(timeout=2).brokers)

    def _exited_message(self, returncode: int | None) -> str:
        return (
            f"kafka exited during startup; last log lines:\n{tail(self.server_log)}\n"
            f"{tail(self.stdout_log, 10)}"
        )

    def _not_ready_message(self, timeout: float, last_error: Exception | None) -> str:
        return (
            f"kafka on {self.bootstrap} not ready after {timeout:.0f}s ({last_error}); "
            f"last log lines:\n{tail(self.server_log)}"
        )
