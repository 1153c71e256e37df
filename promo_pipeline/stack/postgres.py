"""A private PostgreSQL cluster run from Debian's server binaries, without Docker.

The cluster lives entirely under the stack dir, on its own port and socket dir, so it never
touches a system cluster. initdb refuses to run as root, so as root every server command runs
as the `postgres` OS user, which then owns the cluster's folder.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import psycopg

from promo_pipeline.stack._proc import pid_alive, read_pid, tail
from promo_pipeline.stack.errors import (
    CommandFailed,
    ServiceFailedToStart,
    StackError,
    ToolMissing,
)
from promo_pipeline.stack.service import Service

log = logging.getLogger("promo_pipeline.stack")

PG_ROOT = Path("/usr/lib/postgresql")
APT_INSTALL = "apt-get update && apt-get install -y --no-install-recommends postgresql"
OS_USER = "postgres"


def _is_root() -> bool:
    return os.geteuid() == 0


def runuser() -> str:
    """runuser lives in /usr/sbin, which cron's PATH (/usr/bin:/bin) leaves out."""
    found = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    if found is None:
        raise ToolMissing(
            "runuser",
            "install util-linux",
            where="on PATH, /usr/sbin or /sbin (it starts Postgres as user "
            f"{OS_USER} when run as root)",
        )
    return found


def _find_bin_dir() -> Path | None:
    versions = [p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()]
    if not versions:
        return None
    return max(versions, key=lambda p: float(p.parent.name) if p.parent.name[0].isdigit() else 0)


def bin_dir() -> Path:
    """Server binaries of the newest installed major version, installing them via apt as root."""
    found = _find_bin_dir()
    if found:
        return found
    if not _is_root():
        raise ToolMissing(
            "PostgreSQL server binaries",
            f"run: sudo sh -c '{APT_INSTALL}'",
            where=f"under {PG_ROOT}",
        )
    log.info("installing PostgreSQL server with apt-get (one time)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise CommandFailed(
                " ".join(cmd), f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr}"
            )
    _stop_system_clusters()
    found = _find_bin_dir()
    if not found:
        raise StackError(f"apt installed postgresql but no initdb under {PG_ROOT}")
    return found


def _stop_system_clusters() -> None:
    """The Debian package may start a `main` cluster on 5432; we never use it, so stop it."""
    if not shutil.which("pg_lsclusters"):
        return
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3] == "online":
            log.info("stopping system PostgreSQL cluster %s/%s", fields[0], fields[1])
            subprocess.run(["pg_ctlcluster", fields[0], fields[1], "stop"], capture_output=True)


def _make_traversable(path: Path) -> None:
    """Give others search (x) permission on `path`'s ancestors so the postgres user reaches it.

    Only the execute bit is added: names inside stay unlistable. Needed for e.g. pytest's
    0700 /tmp/pytest-of-root.
    """
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            log.info("adding o+x to %s so the postgres user can reach its cluster", parent)
            os.chmod(parent, (mode & 0o7777) | 0o001)


class PostgresCluster(Service):
    """A cluster whose data, socket, log and settings all live under `dir`.

    pg_ctl does the process handling (its `-w` waits for the server), so the readiness probe
    is a password login over TCP, the way the pipeline connects.
    """

    name = "postgres"
    # pg_ctl's own default wait for a shutdown.
    stop_timeout = 60.0
    ready_interval = 0.3
    not_ready_errors = (psycopg.OperationalError,)

    def __init__(self, dir: Path, port: int, user: str, password: str, database: str) -> None:
        super().__init__(dir, port, "postgres.log")
        self.user = user
        self.password = password
        self.database = database
        self.data_dir = self.dir / "data"
        self.run_dir = self.dir / "run"

    def _as_server_user(self, cmd: list[str]) -> list[str]:
        return [runuser(), "-u", OS_USER, "--", *cmd] if _is_root() else cmd

    def _run(self, cmd: list[str], what: str) -> None:
        proc = subprocess.run(
            self._as_server_user(cmd), capture_output=True, text=True, cwd=self.dir
        )
        if proc.returncode != 0:
            raise CommandFailed(
                what,
                f"{what} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
                f"{tail(self.log_file, 20)}",
            )

    def pid(self) -> int | None:
        return read_pid(self.data_dir / "postmaster.pid")

    def is_running(self) -> bool:
        """postmaster.pid names a live postgres process serving our data dir."""
        return pid_alive(self.pid(), str(self.data_dir))

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        self.log_file.touch()
        if _is_root():
            _make_traversable(self.dir.parent)
            info = pwd.getpwnam(OS_USER)
            for p in (self.dir, self.run_dir, self.log_file):
                os.chown(p, info.pw_uid, info.pw_gid)
        os.chmod(self.dir, 0o700)

    def _initdb_once(self, bins: Path) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o600)
        if _is_root():
            info = pwd.getpwnam(OS_USER)
            os.chown(pwfile, info.pw_uid, info.pw_gid)
        try:
            self._run(
                [
                    str(bins / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\ninclude 'promo_stack.conf'\n")
        log.info("initialised PostgreSQL cluster in %s", self.data_dir)

    def _write_settings(self) -> None:
        """Rewritten on every start so a port change (saved port taken) takes effect."""
        (self.data_dir / "promo_stack.conf").write_text(
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.run_dir}'\n"
            "shared_buffers = 128MB\n"
            "max_connections = 100\n"
            # A run may COPY a million triggers: no forced checkpoint in the middle of it, and
            # compressed full-page images (less WAL to write).
            "max_wal_size = 4GB\n"
            "wal_compression = lz4\n"
        )
        if _is_root():
            info = pwd.getpwnam(OS_USER)
            os.chown(self.data_dir / "promo_stack.conf", info.pw_uid, info.pw_gid)

    def _launch(self, timeout: float) -> None:
        """initdb on first use, then start the server with pg_ctl."""
        bins = bin_dir()
        self._prepare_dir()
        self._initdb_once(bins)
        self._write_settings()
        log.info("postgres starting on 127.0.0.1:%d (log %s)", self.port, self.log_file)
        pg_ctl = [str(bins / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file)]
        try:
            self._run([*pg_ctl, "-t", str(int(timeout)), "-w", "start"], "pg_ctl start")
        except CommandFailed as error:
            raise ServiceFailedToStart(self.name, self.log_file, str(error)) from None

    def connect(self, dbname: str | None = None) -> psycopg.Connection:
        """A password-authenticated TCP connection, the way the pipeline itself connects."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.database,
            connect_timeout=5,
        )

    def _ready(self) -> bool:
        """Our database exists (created on first start) and takes a password login."""
        with self.connect("postgres") as conn:
            conn.autocommit = True
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')
                log.info("created database %s", self.database)
        with self.connect():
            return True

    def _not_ready_message(self, timeout: float, last_error: Exception | None) -> str:
        return (
            f"postgres on 127.0.0.1:{self.port} not accepting logins: {last_error}\n"
            f"{tail(self.log_file)}"
        )

    def _terminate(self, timeout: float) -> None:
        """Fast shutdown: aborts open sessions, checkpoints."""
        self._run(
            [str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-t",
             str(int(timeout)), "-w", "stop"],
            "pg_ctl stop",
        )  # fmt: skip
