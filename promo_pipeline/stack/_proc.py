"""Small process and port helpers shared by the service wrappers."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from promo_pipeline.stack.errors import NoFreePorts, ToolMissing


def pid_alive(pid: int | None, marker: str) -> bool:
    """True if `pid` is a live (non-zombie) process whose command line contains `marker`.

    The marker guards against a recycled pid: a stale pid file must not make an unrelated
    process look like our service.
    """
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        return False
    return marker in cmdline


def stop_process_group(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM to the process group that `pid` leads, then SIGKILL to whatever of it is left
    after `timeout` (the leader, or children it left behind). Works from any process; a
    parent still has to reap its child (`Popen.wait`)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid, ""), timeout)
        os.killpg(pid, signal.SIGKILL)


def read_pid(path: Path) -> int | None:
    """First line of a pid file as an int, or None if absent or garbled."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# Below Linux's ephemeral range (32768-60999): a port picked there can be taken by any
# outgoing connection (a Kafka or JDBC client) before the server binds it.
PORT_RANGE = range(20000, 32000)


def pick_free_ports(count: int) -> list[int]:
    """`count` distinct ports outside the ephemeral range that are free right now."""
    picked: list[int] = []
    for port in random.sample(PORT_RANGE, len(PORT_RANGE)):
        if port_is_free(port):
            picked.append(port)
            if len(picked) == count:
                return picked
    raise NoFreePorts(count, PORT_RANGE)


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now.

    SO_REUSEADDR, as Kafka and Postgres set it, so connections lingering in TIME_WAIT after a
    stop do not count as taken.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll `check` until it is true or `timeout` seconds pass; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def require_tool(tool: str, package: str) -> str:
    """The path of `tool` on PATH, or ToolMissing naming the apt package that provides it."""
    found = shutil.which(tool)
    if found is None:
        raise ToolMissing(tool, f"install it with: apt-get install -y {package}")
    return found
