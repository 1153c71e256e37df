"""The lifecycle every service of the local stack shares: start, wait until ready, stop.

Modelled on pytest-postgresql's executors and testcontainers' containers: a subclass says how
to launch its server, how to tell that it answers and how to end it; this module does the
rest the same way for all of them. `start()` is a no-op when the service already runs (a pid
file or the server's own records find it, also from another process), a start that fails
leaves nothing running behind, and every service is a context manager.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Self

from promo_pipeline.stack._proc import pid_alive, read_pid, stop_process_group, tail, wait_until
from promo_pipeline.stack.errors import ServiceFailedToStart

log = logging.getLogger("promo_pipeline.stack")


class Service(ABC):
    """One server of the stack. Subclasses supply the hooks marked abstract."""

    #: Name used in log lines and errors, e.g. "kafka".
    name: str = "service"
    start_timeout: float = 60.0
    stop_timeout: float = 20.0
    #: Seconds between readiness probes.
    ready_interval: float = 0.2
    #: Errors a readiness probe raises while the server is still booting (not a failure yet).
    not_ready_errors: tuple[type[Exception], ...] = (OSError,)
    #: URL scheme of the clients' address ("sc" for Spark Connect); None: plain host:port.
    scheme: str | None = None

    def __init__(self, dir: Path, port: int, log_file: str) -> None:
        #: Everything the service writes lives under this folder.
        self.dir = Path(dir).absolute()
        #: The port clients connect to, on 127.0.0.1.
        self.port = port
        #: Where the server writes its log; errors point there.
        self.log_file = self.dir / log_file

    @property
    def address(self) -> str:
        """Where clients reach the service: host:port, or a URL if the service has a scheme."""
        host = f"127.0.0.1:{self.port}"
        return f"{self.scheme}://{host}" if self.scheme else host

    @abstractmethod
    def pid(self) -> int | None:
        """The server's (main) process id, if it has one on record."""

    @abstractmethod
    def is_running(self) -> bool:
        """The server on record is alive and serving."""

    @abstractmethod
    def _launch(self, timeout: float) -> None:
        """Start the server's process(es) without waiting for them to be ready."""

    @abstractmethod
    def _ready(self) -> bool:
        """One readiness probe; may raise one of `not_ready_errors` while booting."""

    @abstractmethod
    def _terminate(self, timeout: float) -> None:
        """End the running server, forcibly if it does not end within `timeout`."""

    def _alive(self) -> bool:
        """Whether there is a process of ours to stop (it may not serve yet)."""
        return self.is_running()

    def check_alive(self) -> None:
        """Raise ServiceFailedToStart if the server died while starting.

        By default the readiness probe alone judges: a server whose launch command waits
        for it (pg_ctl -w) has nothing of ours to watch.
        """
        return None

    def _not_ready_message(self, timeout: float, last_error: Exception | None) -> str:
        return f"{self.name} not ready after {timeout:.0f}s:\n{tail(self.log_file)}"

    def start(self, timeout: float | None = None) -> None:
        """Start the service unless it runs already; return once it is ready."""
        if self.is_running():
            return
        timeout = self.start_timeout if timeout is None else timeout
        try:
            self._launch(timeout)
            self.wait_until_ready(timeout)
        except BaseException:
            # Whatever did start goes again: the error is the result, not a half-up service.
            with contextlib.suppress(Exception):
                self.stop()
            raise
        log.info("%s ready at %s (pid %s, log %s)", self.name, self.address, self.pid(),
                 self.log_file)  # fmt: skip

    def wait_until_ready(self, timeout: float) -> None:
        """Probe until the service answers; ServiceFailedToStart if it dies or times out."""
        last: list[Exception] = []

        def ready() -> bool:
            self.check_alive()
            try:
                return self._ready()
            except self.not_ready_errors as exc:
                last[:] = [exc]
                return False

        if not wait_until(ready, timeout, self.ready_interval):
            message = self._not_ready_message(timeout, last[0] if last else None)
            raise ServiceFailedToStart(self.name, self.log_file, message)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the service; a no-op when it is not running."""
        if self._alive():
            log.info("stopping %s (pid %s)", self.name, self.pid())
            self._terminate(self.stop_timeout if timeout is None else timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# Processes started by this process; kept so exited ones are reaped instead of lingering as
# zombies (a zombie still answers kill(pid, 0)) and Popen does not warn on garbage collection.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _reap() -> None:
    """Collect exit statuses of our finished children."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


class ProcessService(Service):
    """A server that runs as one detached process, recorded in a pid file under `dir`.

    The process gets its own session, so it outlives the process that started it and `stop()`
    works from any process: it ends the whole process group (launcher scripts fork the JVM).
    """

    #: Whether the process runs in `dir` (else in the caller's working directory).
    run_in_dir: bool = True

    def __init__(
        self, dir: Path, port: int, log_file: str, pid_file: str, output_file: str | None = None
    ) -> None:
        super().__init__(dir, port, log_file)
        self.pid_file = self.dir / pid_file
        #: Where the process's stdout and stderr go: its own file, or `log_file`.
        self.output_file = self.dir / output_file if output_file else self.log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def _command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    @abstractmethod
    def _marker(self) -> str:
        """Text in the server's command line that tells our process from a recycled pid."""

    def _env(self) -> dict[str, str] | None:
        """The server's environment; None inherits this process's."""
        return None

    def _prepare(self) -> None:
        """Write configuration and data the server needs before it starts."""

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def _alive(self) -> bool:
        _reap()
        return pid_alive(self.pid(), self._marker())

    def is_running(self) -> bool:
        return self._alive()

    def _launch(self, timeout: float) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        self.spawn()

    def spawn(self) -> None:
        """Start the process detached from this one and record its pid; no waiting."""
        with open(self.output_file, "ab") as out:
            proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir if self.run_in_dir else None,
                env=self._env(),
                start_new_session=True,
            )
        _children[proc.pid] = proc
        self._proc = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        log.info("%s starting (pid %d, log %s)", self.name, proc.pid, self.log_file)

    def _exited_message(self, returncode: int | None) -> str:
        return f"{self.name} exited with {returncode}:\n{tail(self.log_file)}"

    def check_alive(self) -> None:
        # Our own child's exit status decides "died", not a /proc read that can miss under load.
        proc = self._proc
        exited = not self._alive() if proc is None else proc.poll() is not None
        if exited:
            returncode = proc.returncode if proc is not None else None
            raise ServiceFailedToStart(self.name, self.log_file, self._exited_message(returncode))

    def _terminate(self, timeout: float) -> None:
        pid = self.pid()
        assert pid is not None  # _alive() found it
        stop_process_group(pid, timeout)
        proc = _children.pop(pid, None)
        if proc is not None:
            proc.wait(10)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM to the process group, SIGKILL if it does not end in time; from any process."""
        super().stop(timeout)
        self.pid_file.unlink(missing_ok=True)
        self._proc = None
