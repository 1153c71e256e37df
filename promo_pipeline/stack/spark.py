"""Spark beyond one local session, run from pyspark's own distribution (no separate install).

`SparkStandalone` starts a standalone master and workers; `SparkConnectServer` starts a Spark
Connect server with the connector jars. Both are what a user runs on real machines with the
same classes, so tests against them exercise the `SPARK_MASTER=spark://...` and `sc://...` paths.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from promo_pipeline.stack._proc import (
    pick_free_ports,
    pid_alive,
    read_pid,
    stop_process_group,
    tail,
    wait_until,
)

log = logging.getLogger("promo_pipeline.stack")

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# pyspark 4.2 ships the server jar but not sbin/start-connect-server.sh; this is what it runs.
CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def spark_home() -> Path:
    """The pip-installed pyspark folder: it holds bin/, jars/ and a complete Spark runtime."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _env(log_dir: Path, daemon_memory: str = "512m") -> dict[str, str]:
    """Environment for Spark daemons: this pyspark (never an exported SPARK_HOME), loopback."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SPARK_", "PYSPARK_"))
    }
    return env | {
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(log_dir),
        "SPARK_DAEMON_MEMORY": daemon_memory,
        # foreachBatch and Python UDFs run in workers with this interpreter and its packages.
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }


class _Daemon:
    """One JVM started in its own session, with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], log_file: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_file = log_file
        with open(log_file, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        log.info("%s starting (pid %d, log %s)", name, self.proc.pid, log_file)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log_file)}"
            )

    def stop(self, timeout: float = 20.0) -> None:
        """The whole process group: spark-class forks the JVM."""
        if not self.alive():
            return
        stop_process_group(self.proc.pid, timeout)
        self.proc.wait(10)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


class SparkStandalone:
    """A standalone master plus `workers` workers on 127.0.0.1, all files under `dir`.

    Each worker gets its own work dir (executor logs land there), as on separate machines.
    """

    def __init__(self, dir: Path, workers: int = 2, cores: int = 1, memory: str = "1g") -> None:
        self.dir = Path(dir).absolute()
        self.workers = workers
        self.cores = cores
        self.memory = memory
        self.port, self.ui_port = pick_free_ports(2)
        self._daemons: list[_Daemon] = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def worker_dir(self, index: int) -> Path:
        return self.dir / f"worker-{index}"

    def state(self) -> dict:
        """The master's own JSON view: workers, active and completed applications."""
        return _get_json(f"http://127.0.0.1:{self.ui_port}/json/")

    def _alive_workers(self) -> int:
        try:
            return sum(w["state"] == "ALIVE" for w in self.state()["workers"])
        except OSError:
            return 0

    def start(self, timeout: float = 90.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        env = _env(self.dir)
        spark_class = str(spark_home() / "bin" / "spark-class")
        master = _Daemon(
            "spark master",
            [
                spark_class,
                MASTER_CLASS,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--webui-port",
                str(self.ui_port),
            ],
            self.dir / "master.log",
            env,
        )
        self._daemons.append(master)
        try:
            for index in range(self.workers):
                work_dir = self.worker_dir(index)
                work_dir.mkdir(exist_ok=True)
                [worker_ui] = pick_free_ports(1)
                self._daemons.append(
                    _Daemon(
                        f"spark worker {index}",
                        [
                            spark_class,
                            WORKER_CLASS,
                            "--host",
                            "127.0.0.1",
                            "--cores",
                            str(self.cores),
                            "--memory",
                            self.memory,
                            "--work-dir",
                            str(work_dir),
                            "--webui-port",
                            str(worker_ui),
                            self.url,
                        ],
                        self.dir / f"worker-{index}.log",
                        env,
                    )
                )

            def ready() -> bool:
                for daemon in self._daemons:
                    daemon.check_alive()
                return self._alive_workers() == self.workers

            if not wait_until(ready, timeout, interval=0.5):
                raise RuntimeError(
                    f"spark standalone: {self._alive_workers()} of {self.workers} workers "
                    f"registered after {timeout:.0f}s:\n{tail(self.dir / 'master.log')}"
                )
        except BaseException:
            self.stop()
            raise
        log.info("spark standalone master %s with %d workers", self.url, self.workers)

    def stop(self) -> None:
        """Workers first (they would otherwise keep reconnecting), then the master."""
        for daemon in reversed(self._daemons):
            daemon.stop()
        self._daemons.clear()


class SparkConnectServer:
    """A Spark Connect server with the pipeline's connector jars on its classpath.

    The server owns the Spark driver: the checkpoint and the foreachBatch Python worker live on
    its side, so `PYSPARK_PYTHON` must be an interpreter that can import promo_pipeline. It
    outlives the process that started it (pid file under `dir`), so a run, the daemon's sensor
    and `promo` commands all find it warm; `stop()` works from any process.
    """

    def __init__(
        self,
        dir: Path,
        jars: list[str],
        master: str = "local[2]",
        port: int | None = None,
        ui_port: int | None = None,
    ) -> None:
        self.dir = Path(dir).absolute()
        self.jars = jars
        self.master = master
        if port is None or ui_port is None:
            port, ui_port = pick_free_ports(2)
        self.port, self.ui_port = port, ui_port
        self.pid_file = self.dir / "connect-server.pid"
        self._daemon: _Daemon | None = None

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.dir / "connect-server.log"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def is_running(self) -> bool:
        """Our server's JVM is alive (its command line names our port) and it listens."""
        marker = f"spark.connect.grpc.binding.port={self.port}"
        return pid_alive(self.pid(), marker) and _port_open(self.port)

    def start(self, timeout: float = 120.0) -> None:
        if self.is_running():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(spark_home() / "bin" / "spark-submit"),
            "--class",
            CONNECT_CLASS,
            "--name",
            "promo Spark Connect server",
            "--master",
            self.master,
            "--driver-memory",
            "2g",
            "--conf",
            "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf",
            f"spark.connect.grpc.binding.port={self.port}",
            "--conf",
            f"spark.ui.port={self.ui_port}",
            "--conf",
            "spark.sql.shuffle.partitions=4",
            "--conf",
            "spark.sql.session.timeZone=UTC",
        ]
        if self.jars:
            cmd += ["--jars", ",".join(self.jars)]
        # The server's driver heap follows SPARK_DAEMON_MEMORY, not --driver-memory.
        env = _env(self.dir, daemon_memory="2g")
        self._daemon = _Daemon("spark connect server", cmd, self.log_file, env)
        self.pid_file.write_text(f"{self._daemon.proc.pid}\n")

        def ready() -> bool:
            assert self._daemon is not None
            self._daemon.check_alive()
            return _port_open(self.port)

        try:
            if not wait_until(ready, timeout, interval=0.5):
                raise RuntimeError(
                    f"spark connect server not ready after {timeout:.0f}s:\n{tail(self.log_file)}"
                )
        except BaseException:
            self.stop()
            raise
        log.info("spark connect server at %s", self.url)

    def warm_up(self, timeout: float = 120.0) -> None:
        """One tiny query: the server loads its classes and Python worker now, not in a run.

        In a child process: a Connect client marks its process as Connect-only (pyspark sets
        SPARK_CONNECT_MODE_ENABLED), which would break local sessions started here later.
        """
        query = (
            "from pyspark.sql import SparkSession\n"
            f"session = SparkSession.builder.remote({self.url!r}).create()\n"
            "session.range(1).collect()\n"
            "session.stop()\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", query], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"spark connect server at {self.url} failed a first query:\n{result.stderr[-2000:]}"
            )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server's process group, then SIGKILL; from any process."""
        if self._daemon is not None:
            self._daemon.stop(timeout)
            self._daemon = None
        elif self.is_running() and (pid := self.pid()):
            stop_process_group(pid, timeout)
        self.pid_file.unlink(missing_ok=True)


def _get_list(url: str) -> list[dict]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0
