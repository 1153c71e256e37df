"""What can go wrong while the local stack is set up, started or stopped.

All of them are `StackError`, a `RuntimeError`: callers that only report the failure catch
that, and `promo stack up` prints the first line of the message, so the first line alone says
what failed and what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class StackError(RuntimeError):
    """The local stack could not be set up or run."""


class ToolMissing(StackError):
    """A program the stack runs is not installed; the message says how to get it."""

    def __init__(self, tool: str, hint: str, where: str = "on PATH") -> None:
        self.tool = tool
        self.hint = hint
        super().__init__(f"{tool} not found {where}; {hint}")


class CommandFailed(StackError):
    """A setup command (apt-get, initdb, mvn, openssl, Kafka's storage format) exited non-zero."""

    def __init__(self, command: str, message: str) -> None:
        self.command = command
        super().__init__(message)


class ServiceFailedToStart(StackError):
    """A service exited while starting or was not ready in time; its log file says why."""

    def __init__(self, service: str, log_file: Path, message: str) -> None:
        self.service = service
        self.log_file = log_file
        super().__init__(message)


class NoFreePorts(StackError):
    """Not enough free ports for a new stack or service."""

    def __init__(self, count: int, ports: range) -> None:
        self.count = count
        self.ports = ports
        super().__init__(f"no {count} free ports in {ports.start}-{ports.stop - 1}")
