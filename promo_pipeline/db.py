"""Tables: the seed's two (exactly its DDL) plus the pipeline's own state in schema `promo`,
versioned by the Alembic migrations in `promo_pipeline/migrations/versions/`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources as package_files
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import psycopg
from pydantic import BaseModel, ConfigDict

from promo_pipeline.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic's bookkeeping lives in the pipeline's own schema, next to what it versions.
VERSION_SCHEMA = "promo"
VERSION_TABLE = "alembic_version"
INIT_LOCK = "promo_pipeline.init_db"
# The advisory lock a run holds from its first step to its last, so two runs never overlap.
PIPELINE_LOCK = "promo_pipeline.run"

SEED_DDL = """
CREATE TABLE IF NOT EXISTS public.subscribers_restaurants (
    id serial4 NOT NULL,
    client_id varchar NOT NULL,
    restaurant_id varchar NOT NULL,
    CONSTRAINT pk_id PRIMARY KEY (id)
);
CREATE TABLE IF NOT EXISTS public.subscribers_feedback (
    id serial4 NOT NULL,
    restaurant_id text NOT NULL,
    adv_campaign_id text NOT NULL,
    adv_campaign_content text NOT NULL,
    adv_campaign_owner text NOT NULL,
    adv_campaign_owner_contact text NOT NULL,
    adv_campaign_datetime_start int8 NOT NULL,
    adv_campaign_datetime_end int8 NOT NULL,
    datetime_created int8 NOT NULL,
    client_id text NOT NULL,
    trigger_datetime_created int4 NOT NULL,
    feedback varchar NULL,
    CONSTRAINT id_pk PRIMARY KEY (id)
);
"""


class PostgresConfig(BaseModel):
    """The database holding subscribers, feedback and the pipeline's own state."""

    model_config = ConfigDict(frozen=True)
    # Each field is the setting POSTGRES_<FIELD> (Settings.config_for).
    SETTINGS_PREFIXES: ClassVar[tuple[str, ...]] = ("postgres",)

    host: str
    port: int
    db: str
    user: str
    password: str

    def conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            dbname=self.db,
            user=self.user,
            password=self.password or None,
            connect_timeout=10,
            application_name="promo_pipeline",
        )

    @contextmanager
    def connect(
        self, *, statement_timeout_ms: int = 0, autocommit: bool = False
    ) -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.conninfo(), autocommit=autocommit) as conn:
            if statement_timeout_ms:
                conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")
            yield conn

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://{self.host}:{self.port}/{self.db}"

    def jdbc_properties(self, **extra: str) -> dict[str, str]:
        return {
            "user": self.user,
            "password": self.password,
            "driver": "org.postgresql.Driver",
            "connectTimeout": "10",
            "ApplicationName": "promo_pipeline_spark",
            **extra,
        }


def conninfo(settings: Settings, *, dbname: str | None = None) -> str:
    """The run's connection string, optionally to another database."""
    postgres = settings.config_for(PostgresConfig)
    return (
        postgres.conninfo()
        if dbname is None
        else postgres.model_copy(update={"db": dbname}).conninfo()
    )


def pipeline_lock_holders(postgres: PostgresConfig, timeout_ms: int = 10_000) -> list[int]:
    """Postgres backends holding the pipeline lock in this database: none while a run is
    STARTED means its process is gone (the lock dies with its connection)."""
    with postgres.connect(statement_timeout_ms=timeout_ms) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.objsubid = 1 AND d.datname = current_database() "
                "AND l.objid = hashtext(%s)::oid",
                (PIPELINE_LOCK,),
            )
        ]


class SchemaVersionError(RuntimeError):
    """The database's schema `promo` is not at the revision this code was written for."""


def migrations_dir() -> Path:
    """The package's migrations folder (package data, so installed copies carry it)."""
    return Path(str(package_files.files("promo_pipeline") / "migrations"))


def alembic_config(script_location: Path | None = None) -> Config:
    # Deferred here and below: Alembic and SQLAlchemy (about a second) load only to
    # check or migrate the schema, not for the CLI's other commands or `promo --help`.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location or migrations_dir()))
    config.set_main_option("path_separator", "os")
    return config


@cache
def head_revision(script_location: Path | None = None) -> str:
    """The newest revision among the migration files (there must be exactly one head)."""
    # Deferred: Alembic (see alembic_config).
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config(script_location)).get_heads()
    if len(heads) != 1:
        raise SchemaVersionError(f"migrations have {len(heads)} heads ({heads}); expected one")
    return heads[0]


def current_revision(conn: psycopg.Connection) -> str | None:
    """The revision the database records, or None before its first `promo db upgrade`."""
    table = f"{VERSION_SCHEMA}.{VERSION_TABLE}"
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
        return None
    row = conn.execute(f"SELECT version_num FROM {table}").fetchone()
    return row[0] if row else None


def check_schema(
    conn: psycopg.Connection, script_location: Path | None = None, *, upgrading: bool = False
) -> str:
    """Raise a one-line SchemaVersionError unless the database is at this code's head (or,
    `upgrading`, at a revision this code can migrate from)."""
    # Deferred: Alembic (see alembic_config).
    from alembic.script import ScriptDirectory

    head = head_revision(script_location)
    current = current_revision(conn)
    if current == head:
        return head
    known = {
        script.revision
        for script in ScriptDirectory.from_config(alembic_config(script_location)).walk_revisions()
    }
    where = f"database {conn.info.dbname} on {conn.info.host}:{conn.info.port}"
    if current is not None and current not in known:
        raise SchemaVersionError(
            f"{where}: schema promo is at revision {current}, newer than this code knows "
            f"(its newest is {head}); deploy the code that matches the database"
        )
    if upgrading:
        return head
    raise SchemaVersionError(
        f"{where}: schema promo is at revision {current or 'none'}, this code needs {head}; "
        "run `promo db upgrade`"
    )


def upgrade(
    settings: Settings, revision: str = "head", script_location: Path | None = None
) -> tuple[str | None, str]:
    """The seed's tables where missing (exactly its DDL), then the migrations up to
    `revision`; returns the revision before and after. One upgrade at a time (advisory lock).
    A revision newer than this code, or a migration that fails, is a one-line
    SchemaVersionError."""
    # Deferred: Alembic and SQLAlchemy (see alembic_config).
    from alembic import command
    from alembic.util import CommandError
    from sqlalchemy import create_engine
    from sqlalchemy.engine import URL
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    with psycopg.connect(conninfo(settings), autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(hashtext(%s))", (INIT_LOCK,))
        lock.execute(SEED_DDL)
        before = current_revision(lock)
        url = URL.create(
            "postgresql+psycopg",
            username=settings.postgres_user,
            password=settings.postgres_password or None,
            host=settings.postgres_host,
            port=settings.postgres_port,
            database=settings.postgres_db,
            query={"connect_timeout": "10", "application_name": "promo_pipeline_migrations"},
        )
        check_schema(lock, script_location, upgrading=True)
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.begin() as connection:
                config = alembic_config(script_location)
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
        except (DBAPIError, CommandError) as error:
            # One transaction: the failed upgrade left the database as it was.
            cause = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            raise SchemaVersionError(
                f"`promo db upgrade` from revision {before or 'none'} failed, nothing was "
                f"changed: {cause}"
            ) from None
        finally:
            engine.dispose()
        after = current_revision(lock)
    return before, after or "none"


def init_db(settings: Settings) -> None:
    """Create what is missing and migrate schema `promo` to the head; safe to run again."""
    upgrade(settings)
