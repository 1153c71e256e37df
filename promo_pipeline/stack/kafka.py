"""A single-node KRaft Kafka broker run straight from Maven jars, without Docker.

One JVM plays both broker and controller with a static one-voter quorum, which is the
smallest setup that behaves like a real cluster for producers, consumers and Spark.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from promo_pipeline.stack._proc import pid_alive, read_pid, tail, wait_until

log = logging.getLogger("promo_pipeline.stack")

MAIN_CLASS = "kafka.Kafka"


class KafkaBroker:
    """A broker whose config, data, logs and pid file all live under `dir`."""

    def __init__(self, dir: Path, jars_dir: Path, port: int, controller_port: int) -> None:
        self.dir = dir.absolute()
        self.jars_dir = jars_dir
        self.port = port
        self.controller_port = controller_port
        self.config = self.dir / "server.properties"
        self.log4j_config = self.dir / "log4j2.properties"
        self.data_dir = self.dir / "data"
        self.server_log = self.dir / "server.log"
        self.stdout_log = self.dir / "stdout.log"
        self.pid_file = self.dir / "kafka.pid"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def is_running(self) -> bool:
        """The recorded pid is alive and is our broker (its command line names our config)."""
        _reap()
        return pid_alive(self.pid(), str(self.config))

    def _classpath(self) -> str:
        return f"{self.jars_dir}/*"

    @staticmethod
    def _java() -> str:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError(
                "java not found on PATH; install it with: "
                "apt-get install -y openjdk-17-jre-headless"
            )
        return java

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
            raise RuntimeError(f"kafka storage format failed:\n{proc.stdout}{proc.stderr}")
        log.info("formatted kafka storage in %s (cluster id %s)", self.data_dir, cluster_id)

    def _format_args(self) -> list[str]:
        """Extra arguments for `StorageTool format` (a secured broker adds its users)."""
        return []

    def start(self, timeout: float = 60.0) -> None:
        """Start the broker detached from this process and wait until it serves metadata."""
        if self.is_running():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format_once()
        cmd = [
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
        with open(self.stdout_log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        _children[proc.pid] = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        log.info("kafka starting on %s (pid %d, log %s)", self.bootstrap, proc.pid, self.server_log)
        self._wait_ready(timeout)

    def _admin_config(self) -> dict[str, Any]:
        """How the readiness probe connects; a secured broker adds its credentials."""
        return {"bootstrap.servers": self.bootstrap}

    def _wait_ready(self, timeout: float) -> None:
        quiet = logging.getLogger("promo_pipeline.stack.librdkafka")
        quiet.setLevel(logging.CRITICAL)
        admin = AdminClient(self._admin_config() | {"logger": quiet})
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            # Our own child's exit status decides "died", not a /proc read that can miss under load.
            proc = _children.get(self.pid() or -1)
            exited = proc.poll() is not None if proc is not None else not self.is_running()
            if exited:
                raise RuntimeError(
                    f"kafka exited during startup; last log lines:\n{tail(self.server_log)}\n"
                    f"{tail(self.stdout_log, 10)}"
                )
            try:
                if admin.list_topics(timeout=2).brokers:
                    log.info("kafka ready on %s", self.bootstrap)
                    return
            except Exception as exc:  # KafkaException while the broker is still booting
                last_error = exc
            time.sleep(0.2)
        raise RuntimeError(
            f"kafka on {self.bootstrap} not ready after {timeout:.0f}s ({last_error}); "
            f"last log lines:\n{tail(self.server_log)}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM for a clean controlled shutdown, SIGKILL if it does not finish in time."""
        pid = self.pid()
        if not self.is_running() or pid is None:
            return
        log.info("stopping kafka (pid %d)", pid)
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not self.is_running(), timeout):
            log.warning("kafka did not stop in %.0fs, killing pid %d", timeout, pid)
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not self.is_running(), 10)
        self.pid_file.unlink(missing_ok=True)


# Brokers started by this process; kept so exited ones are reaped instead of lingering as
# zombies (a zombie still answers kill(pid, 0)) and Popen does not warn on garbage collection.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _reap() -> None:
    """Collect exit statuses of our finished brokers."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]
