"""A Spark standalone cluster (master + workers) run from pyspark's own distribution.

It is what a user runs on real machines with the same classes, so a run against it exercises
the `SPARK_MASTER=spark://...` path: executors in other JVMs, each worker with its own work dir.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from promo_pipeline.stack._proc import pick_free_ports, port_open, tail
from promo_pipeline.stack.service import ProcessService, Service
from promo_pipeline.stack.spark import spark_env, spark_home

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class _SparkDaemon(ProcessService):
    """One standalone daemon (spark-class forks its JVM), files named `<role>.*` under `dir`."""

    # spark-class's command line is all the daemon's JVM has: the class and its arguments.
    run_in_dir = False

    def __init__(self, dir: Path, role: str, name: str, ui_port: int, args: list[str]) -> None:
        super().__init__(dir, ui_port, f"{role}.log", pid_file=f"{role}.pid")
        self.name = name
        self.args = args

    def _command(self) -> list[str]:
        return [str(spark_home() / "bin" / "spark-class"), *self.args]

    def _marker(self) -> str:
        return " ".join(self.args)

    def _env(self) -> dict[str, str]:
        return spark_env(self.dir)

    def _ready(self) -> bool:
        return True


class SparkStandalone(Service):
    """A standalone master plus `workers` workers on 127.0.0.1, all files under `dir`.

    Each worker gets its own work dir (executor logs land there), as on separate machines.
    Ready once every worker has registered with the master.
    """

    name = "spark standalone"
    scheme = "spark"
    start_timeout = 240.0
    ready_interval = 0.5

    def __init__(self, dir: Path, workers: int = 2, cores: int = 1, memory: str = "1g") -> None:
        port, self.ui_port = pick_free_ports(2)
        super().__init__(dir, port, "master.log")
        self.workers = workers
        self.cores = cores
        self.memory = memory
        master = _SparkDaemon(self.dir, "master", "spark master", self.ui_port, [
            MASTER_CLASS, "--host", "127.0.0.1", "--port", str(self.port),
            "--webui-port", str(self.ui_port),
        ])  # fmt: skip
        workers_ui = pick_free_ports(workers) if workers else []
        self._daemons = [master, *map(self._worker, range(workers), workers_ui)]

    def _worker(self, index: int, ui_port: int) -> _SparkDaemon:
        return _SparkDaemon(self.dir, f"worker-{index}", f"spark worker {index}", ui_port, [
            WORKER_CLASS, "--host", "127.0.0.1", "--cores", str(self.cores),
            "--memory", self.memory, "--work-dir", str(self.worker_dir(index)),
            "--webui-port", str(ui_port), self.url,
        ])  # fmt: skip

    @property
    def url(self) -> str:
        return self.address

    def worker_dir(self, index: int) -> Path:
        return self.dir / f"worker-{index}"

    def state(self) -> dict:
        """The master's own JSON view: workers, active and completed applications."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as r:
            return json.load(r)

    def _alive_workers(self) -> int:
        try:
            return sum(w["state"] == "ALIVE" for w in self.state()["workers"])
        except OSError:
            return 0

    def pid(self) -> int | None:
        return self._daemons[0].pid()

    def is_running(self) -> bool:
        return all(d.is_running() for d in self._daemons) and port_open(self.port)

    def _alive(self) -> bool:
        return any(d.is_running() for d in self._daemons)

    def _launch(self, timeout: float) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.workers):
            self.worker_dir(index).mkdir(parents=True, exist_ok=True)
        for daemon in self._daemons:
            daemon.spawn()

    def check_alive(self) -> None:
        for daemon in self._daemons:
            daemon.check_alive()

    def _ready(self) -> bool:
        return self._alive_workers() == self.workers

    def _not_ready_message(self, timeout: float, last_error: Exception | None) -> str:
        return (
            f"spark standalone: {self._alive_workers()} of {self.workers} workers "
            f"registered after {timeout:.0f}s:\n{tail(self.log_file)}"
        )

    def _terminate(self, timeout: float) -> None:
        """Workers first (they would otherwise keep reconnecting), then the master."""
        for daemon in reversed(self._daemons):
            daemon.stop(timeout)
