"""A Spark Connect server run from pyspark's own distribution (no separate Spark install).

It is what a user runs on real machines with the same class, so runs against it exercise the
`SPARK_MASTER=sc://...` path.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from promo_pipeline.stack._proc import pick_free_ports, port_open
from promo_pipeline.stack.errors import ServiceFailedToStart
from promo_pipeline.stack.service import ProcessService

# pyspark 4.2 ships the server jar but not sbin/start-connect-server.sh; this is what it runs.
CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def spark_home() -> Path:
    """The pip-installed pyspark folder: it holds bin/, jars/ and a complete Spark runtime."""
    # Deferred: pyspark takes a second to import; `promo --help` does not need it.
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def spark_env(log_dir: Path, daemon_memory: str = "512m") -> dict[str, str]:
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
        "PYSPARK_PYTHON": str(worker_python(log_dir)),
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }


# Spark puts its pyspark.zip first on a Python worker's PYTHONPATH, and Python keeps no bytecode
# of what it imports from a zip: every worker compiled pyspark from source, more than twice the
# CPU of importing this same pyspark as installed. On a loaded host that pushed a foreachBatch
# worker past the fixed 10 s Spark waits for it to connect back, and every run failed.
WORKER_PYTHON = """#!/bin/sh
PYTHONPATH=$(printf %s "$PYTHONPATH" | tr : '\\n' |
  grep -v -e '/pyspark\\.zip$' -e '/py4j-[^/]*\\.zip$' | paste -sd: -)
export PYTHONPATH
exec {python} "$@"
"""


def worker_python(dir: Path) -> Path:
    """This interpreter, behind a script that takes Spark's zips off the worker's PYTHONPATH."""
    script = Path(dir) / "worker-python"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(WORKER_PYTHON.format(python=shlex.quote(sys.executable)))
    script.chmod(0o755)
    return script


class SparkConnectServer(ProcessService):
    """A Spark Connect server with the pipeline's connector jars on its classpath.

    The server owns the Spark driver: the checkpoint and the foreachBatch Python worker live on
    its side, so `PYSPARK_PYTHON` must be an interpreter that can import promo_pipeline. It
    outlives the process that started it (pid file under `dir`), so a run, the daemon's sensor
    and `promo` commands all find it warm; `stop()` works from any process.
    """

    name = "spark connect server"
    scheme = "sc"
    start_timeout = 120.0
    ready_interval = 0.5
    # Relative paths the server is given resolve as they do for whoever started it.
    run_in_dir = False

    def __init__(
        self,
        dir: Path,
        jars: list[str],
        master: str = "local[2]",
        port: int | None = None,
        ui_port: int | None = None,
    ) -> None:
        if port is None or ui_port is None:
            port, ui_port = pick_free_ports(2)
        super().__init__(dir, port, "connect-server.log", pid_file="connect-server.pid")
        self.ui_port = ui_port
        self.jars = jars
        self.master = master

    @property
    def url(self) -> str:
        return self.address

    def _marker(self) -> str:
        return f"spark.connect.grpc.binding.port={self.port}"

    def is_running(self) -> bool:
        """Our server's JVM is alive (its command line names our port) and it listens."""
        return self._alive() and port_open(self.port)

    def _ready(self) -> bool:
        return port_open(self.port)

    def _env(self) -> dict[str, str]:
        # The server's driver heap follows SPARK_DAEMON_MEMORY, not --driver-memory.
        return spark_env(self.dir, daemon_memory="2g")

    def _command(self) -> list[str]:
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
        return cmd

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
            raise ServiceFailedToStart(
                self.name,
                self.log_file,
                f"spark connect server at {self.url} failed a first query:\n"
                f"{result.stderr[-2000:]}",
            )
