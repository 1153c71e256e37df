"""The code location's resources: thin Dagster adapters over the library's plain configs
(`KafkaConfig`, `PostgresConfig`, `RunOptions`), each field fed by the setting named in
settings.py, plus what only a run needs (its lock, its Spark session, a one-line Failure)."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import dagster as dg
import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from dagster import ConfigurableResource, EnvVar, Failure, InitResourceContext
from dagster_pyspark import LazyPySparkResource
from pydantic import PrivateAttr

from promo_pipeline.db import PIPELINE_LOCK, PostgresConfig, SchemaVersionError, check_schema
from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.settings import RunOptions, Settings, load_settings, setting_names, split_list

Resource = TypeVar("Resource", bound=ConfigurableResource)
R = TypeVar("R")


class PostgresResource(ConfigurableResource, PostgresConfig):
    """PostgresConfig as a resource."""


# A TLS alert the broker sent, in librdkafka's error text (42: bad certificate, 116:
# certificate required, 48: unknown CA).
TLS_ALERT = re.compile(r"ssl/tls alert [a-z ]+?: SSL alert number \d+|tlsv13 alert [a-z ]+")


class KafkaResource(ConfigurableResource, KafkaConfig):
    """KafkaConfig as a resource, with the checks that fail a run in one line."""

    def check_access(self, timeout: float = 20.0) -> None:
        """Fail fast and readably when the brokers are unreachable or refuse our credentials.

        librdkafka retries a refused login forever and reports it only through `error_cb`, so
        metadata is requested in short rounds and the callback's errors are checked in between.
        """
        errors: list[KafkaError] = []
        quiet = logging.getLogger("promo_pipeline.librdkafka.check_access")
        quiet.setLevel(logging.CRITICAL)
        admin = AdminClient(self.client_config(error_cb=errors.append, logger=quiet))
        where = f"Kafka at {self.bootstrap_servers} ({self.security_protocol})"
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                admin.list_topics(timeout=1)
                return
            except KafkaException as error:
                last = error
            admin.poll(0)
            for error in errors:
                if error.code() == KafkaError._AUTHENTICATION:
                    raise Failure(
                        f"{where} rejected user {self.sasl_username!r} "
                        f"({self.sasl_mechanism}): {error.str().split(': ', 1)[-1]}. Check "
                        "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD; nothing was read or written."
                    )
                if error.code() == KafkaError._SSL:
                    raise Failure(
                        f"{where}: TLS handshake failed: {error.str()}. Check "
                        "KAFKA_SSL_CA_LOCATION (the CA that signed the brokers' certificates) "
                        "and, where the brokers require one, the client certificate in "
                        "KAFKA_PROPERTIES_FILE."
                    )
                alert = TLS_ALERT.search(error.str())
                if alert:
                    # The broker ended the handshake: with TLS 1.3 librdkafka sees that only
                    # after it, as a transport error, and would retry it forever.
                    raise Failure(
                        f"{where} refused the TLS connection ({alert.group(0)}): the brokers "
                        "require a client certificate signed by a CA they trust. Check "
                        "ssl.certificate.location and ssl.key.location in KAFKA_PROPERTIES_FILE; "
                        "nothing was read or written."
                    )
        shown = "; ".join(dict.fromkeys(e.str() for e in errors)) or last
        raise Failure(f"{where} did not answer within {timeout:.0f} s: {shown}")

    def check_topic(self, topic: str, timeout: float = 15.0) -> None:
        """Fail in one line when `topic` does not exist (a writer would auto-create it)."""
        admin = AdminClient(self.client_config())
        metadata = admin.list_topics(topic, timeout=timeout).topics[topic]
        if metadata.error is not None and metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise Failure(f"topic {topic} does not exist on {self.bootstrap_servers}")


class RunOptionsResource(ConfigurableResource, RunOptions):
    """RunOptions as a resource."""


class PipelineLockResource(ConfigurableResource):
    """Keeps two runs apart with a Postgres advisory lock held for the whole run.

    The lock belongs to a database session, so a killed run releases it when its connection
    drops: there is no stale lock to clean up.

    Dagster sets the resource up (takes the lock, or fails the run before it does anything)
    before the run's first step and tears it down after its last; the in-process executor sets
    resources up once per run, so no other run starts between two steps. Each asset's body runs
    inside `held` (the `under_pipeline_lock` decorator), which is where a reader sees it.
    """

    postgres: PostgresResource
    _conn: psycopg.Connection | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # The run's first Postgres contact: a wrong password or a down server, in one line.
        try:
            conn = psycopg.connect(self.postgres.conninfo(), autocommit=True)
        except psycopg.OperationalError as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            raise Failure(
                f"Postgres at {self.postgres.host}:{self.postgres.port} (database "
                f"{self.postgres.db}, user {self.postgres.user}): {first.strip()}; check "
                "POSTGRES_* (is the stack up? `promo stack status`)"
            ) from None
        # Before anything is read or written: code and database must agree on schema promo.
        try:
            check_schema(conn)
        except SchemaVersionError as error:
            conn.close()
            raise Failure(f"{error}; this run did nothing") from None
        locked = conn.execute(
            "SELECT pg_try_advisory_lock(hashtext(%s))", (PIPELINE_LOCK,)
        ).fetchone()
        if not (locked and locked[0]):
            holder = conn.execute(
                "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.objid = hashtext(%s)::oid",
                (PIPELINE_LOCK,),
            ).fetchone()
            conn.close()
            since = f", Postgres backend {holder[0]} since {holder[2]:%H:%M:%S}" if holder else ""
            raise Failure(
                f"another promo_pipeline run is in progress (it holds the pipeline lock{since});"
                " this run did nothing"
            )
        self._conn = conn

    @contextmanager
    def held(self, step: str) -> Iterator[None]:
        """Runs a step's body under the run's lock; the step fails before its body when the
        lock's session is gone (a restarted database drops it), so no step runs unguarded. The
        lock outlives the step: the run keeps it until its last step ends."""
        why = "the run did not take it"
        granted = 0
        if self._conn is not None:
            try:
                granted = self._conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
                    "AND locktype = 'advisory' AND granted AND objid = hashtext(%s)::oid",
                    (PIPELINE_LOCK,),
                ).fetchone()[0]
            except psycopg.Error as error:
                why = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if not granted:
            raise Failure(f"{step}: the run does not hold the pipeline lock ({why}); did nothing")
        yield

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def under_pipeline_lock(body: Callable[..., R]) -> Callable[..., R]:
    """An asset body run inside `pipeline_lock.held(...)`: the asset declares the
    `pipeline_lock: PipelineLockResource` parameter and this decorator uses it, so the lock
    shows where the asset is defined without re-indenting its body."""
    if "pipeline_lock" not in inspect.signature(body).parameters:
        raise TypeError(f"{body.__name__}: declare pipeline_lock: PipelineLockResource")

    @functools.wraps(body)
    def locked(context: Any, **resources: Any) -> R:
        with resources["pipeline_lock"].held(body.__name__):
            return body(context, **resources)

    return locked


class SparkResource(LazyPySparkResource):
    """Spark, started on first use.

    Against a Spark Connect server, pyspark's client retries a lost server for about ten
    minutes; here a server that is unreachable, or dies mid-run, fails the run within a minute,
    in one line that names the endpoint and the server's log.
    """

    connect_log: str = ""

    @property
    def remote(self) -> str:
        return str(self.spark_config.get("spark.remote", ""))

    def _init_session(self) -> None:
        if self._spark_session is None and self.remote:
            self.check_reachable()
            super()._init_session()
            # Deferred: Spark Connect's client (grpc) loads only for an sc:// master.
            from pyspark.sql.connect.client.retries import DefaultPolicy

            # About 15 s of retries (0.5 + 1 + 2 + 4 + 8): a restart blip, not a dead server.
            self._spark_session.client.set_retry_policies(
                [DefaultPolicy(max_retries=5, initial_backoff=500, backoff_multiplier=2.0,
                               max_backoff=8000)]
            )  # fmt: skip
        super()._init_session()

    def lost(self, detail: str) -> Failure:
        where = self.connect_log or "the server's log"
        return Failure(
            f"Spark Connect server at {self.remote} {detail}; see {where} "
            "(`promo stack up` restarts the local one)"
        )

    def check_reachable(self, timeout: float = 5.0) -> None:
        """Raise the one-line failure unless the Connect endpoint accepts a connection."""
        parsed = urlsplit(self.remote.replace("sc://", "http://", 1))
        try:
            socket.create_connection((parsed.hostname, parsed.port or 15002), timeout).close()
        except OSError as error:
            raise self.lost(f"does not answer ({error.strerror or error})") from None

    @contextmanager
    def failing_fast(self) -> Iterator[None]:
        """Turn any error raised while the Connect server is gone into the one-line failure."""
        try:
            yield
        except Failure:
            raise
        except Exception:
            if self.remote:
                self.check_reachable()
            raise


SPARK_PACKAGES = "org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0,org.postgresql:postgresql:42.7.8"


def spark_config(settings: Settings) -> dict[str, str]:
    """Spark settings for a small, predictable session.

    Jars come from local paths (no network at session start); without them Spark resolves the
    connector through Ivy. With an `sc://` URL the session is a Spark Connect client: the server
    owns the driver, its jars and memory, so only the SQL session settings are sent.
    """
    jars = split_list(settings.promo_spark_jars)
    config = {
        "spark.master": settings.spark_master,
        "spark.app.name": "promo_pipeline",
        **({"spark.jars": ",".join(jars)} if jars else {"spark.jars.packages": SPARK_PACKAGES}),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.adaptive.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "WARN",
        "spark.driver.memory": "2g",
        "spark.sql.streaming.stopGracefullyOnShutdown": "true",
        # Options shown in plans and the UI: Spark's default (url) and the Kafka client's
        # secrets, matched by name or value (a PEM key's text, a JAAS line's password).
        "spark.sql.redaction.options.regex": r"(?i)url|jaas|password|secret|keystore\.key"
        r"|PRIVATE KEY",
    }
    if settings.spark_master.startswith("sc://"):
        sql = {key: value for key, value in config.items() if key.startswith("spark.sql.")}
        return {"spark.remote": settings.spark_master, **sql}
    return config


def from_settings(
    resource: type[Resource], settings: Settings, *, env_vars: bool = False
) -> Resource:
    """`resource` with its fields from `settings`. With `env_vars`, a field whose variable is
    set, and every secret that is given at all, is an `EnvVar`, resolved at run time and never
    shown by the UI or stored with the run; the others take the settings' value (a default),
    as nothing writes the settings into the environment."""
    values: dict[str, Any] = settings.values_for(resource)
    for field, name in setting_names(resource).items():
        secret = Settings.model_fields[name.lower()].repr is False
        if env_vars and (name in os.environ or (secret and values[field])):
            is_int = resource.model_fields[field].annotation is int
            values[field] = EnvVar.int(name) if is_int else EnvVar(name)
    return resource(**values)


def kafka_resource(settings: Settings) -> KafkaResource:
    return from_settings(KafkaResource, settings)


def postgres_resource(settings: Settings) -> PostgresResource:
    return from_settings(PostgresResource, settings)


def run_options_resource(settings: Settings) -> RunOptionsResource:
    return from_settings(RunOptionsResource, settings)


def build_resources(settings: Settings) -> dict[str, Any]:
    """The code location's resources; secrets stay `EnvVar`s, so the UI never shows them."""
    postgres = from_settings(PostgresResource, settings, env_vars=True)
    return {
        "postgres": postgres,
        "kafka": from_settings(KafkaResource, settings, env_vars=True),
        "run_options": from_settings(RunOptionsResource, settings, env_vars=True),
        "pipeline_lock": PipelineLockResource(postgres=postgres),
        "spark": SparkResource(
            spark_config=spark_config(settings), connect_log=settings.promo_spark_connect_log
        ),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources(load_settings()))
