"""Dagster resources: every endpoint and secret arrives through `EnvVar`."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar
from urllib.parse import urlsplit

import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from dagster import ConfigurableResource, EnvVar, Failure, InitResourceContext
from dagster_pyspark import LazyPySparkResource
from pydantic import PrivateAttr

from promo_pipeline.kafka_config import java_properties, masked, read_properties
from promo_pipeline.settings import Settings, checkpoint_dir, split_list


class PostgresResource(ConfigurableResource):
    """The database holding subscribers, feedback and the pipeline's own state."""

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


# A TLS alert the broker sent, in librdkafka's error text (42: bad certificate, 116:
# certificate required, 48: unknown CA).
TLS_ALERT = re.compile(r"ssl/tls alert [a-z ]+?: SSL alert number \d+|tlsv13 alert [a-z ]+")

# librdkafka's own log lines (`%4|...|GETPID|... Coordinator load in progress: retrying`), as
# records of this logger at their syslog level. It shows errors only unless logging is set up
# otherwise: librdkafka warns about what it retries itself, and what fails for good reaches the
# caller as an exception, a delivery error or a failed check.
LIBRDKAFKA_LOG = logging.getLogger("promo_pipeline.librdkafka")
if LIBRDKAFKA_LOG.level == logging.NOTSET:
    LIBRDKAFKA_LOG.setLevel(logging.ERROR)


class KafkaResource(ConfigurableResource):
    """Brokers and topics; one place turns the settings into client and Spark options."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_ca_location: str = ""
    # The file's path only: its values (secrets among them) are read where a client is made,
    # so they never become resource config the UI shows.
    properties_file: str = ""
    input_topic: str
    output_topic: str
    dlq_topic: str
    consumer_group: str = "promo_pipeline"

    def properties(self) -> dict[str, str]:
        """KAFKA_PROPERTIES_FILE's properties, librdkafka names (none without the file)."""
        return read_properties(self.properties_file) if self.properties_file else {}

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """Configuration for confluent-kafka clients: the named settings, the properties file,
        then what the caller's role needs (`extra`); their log lines go to Python logging
        (`LIBRDKAFKA_LOG`) instead of raw to stderr."""
        config: dict[str, Any] = self.properties() | {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "logger": LIBRDKAFKA_LOG,
        }
        if self.security_protocol.startswith("SASL_"):
            config |= {
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.sasl_username,
                "sasl.password": self.sasl_password,
            }
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        return config | extra

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

    def spark_options(self) -> dict[str, str]:
        """The same settings as options of Spark's Kafka source and sink."""
        options = {
            "kafka.bootstrap.servers": self.bootstrap_servers,
            "kafka.security.protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            module = (
                "org.apache.kafka.common.security.plain.PlainLoginModule"
                if self.sasl_mechanism == "PLAIN"
                else "org.apache.kafka.common.security.scram.ScramLoginModule"
            )
            user = self.sasl_username.replace('"', '\\"')
            password = self.sasl_password.replace('"', '\\"')
            options |= {
                "kafka.sasl.mechanism": self.sasl_mechanism,
                "kafka.sasl.jaas.config": (
                    f'{module} required username="{user}" password="{password}";'
                ),
            }
        if self.ssl_ca_location:
            options |= {
                "kafka.ssl.truststore.type": "PEM",
                "kafka.ssl.truststore.location": self.ssl_ca_location,
            }
        java = java_properties(
            self.properties(), where=f"KAFKA_PROPERTIES_FILE {self.properties_file}"
        )
        return options | {f"kafka.{name}": value for name, value in java.items()}

    def described(self) -> str:
        """The client settings in one line for the run's log, secrets masked."""
        shown = masked(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "security.protocol": self.security_protocol,
            }
            | self.properties()
        )
        return ", ".join(f"{name}={value}" for name, value in shown.items())


class PipelineLockResource(ConfigurableResource):
    """Keeps two runs apart with a Postgres advisory lock held for the whole run.

    The lock belongs to a database session, so a killed run releases it when its connection
    drops: there is no stale lock to clean up.

    Holding it is all an asset asks of it: each asset declares a `pipeline_lock` parameter and
    never reads it. Declaring it makes Dagster set the resource up (take the lock, or fail the
    run) before the run's first step and tear it down after its last; the in-process executor
    sets resources up once per run. (`required_resource_keys` would say the same, but Dagster
    refuses it next to resource parameters.)
    """

    postgres: PostgresResource
    _conn: psycopg.Connection | None = PrivateAttr(default=None)

    LOCK_KEY: ClassVar[str] = "promo_pipeline.run"

    def setup_for_execution(self, context: InitResourceContext) -> None:
        from promo_pipeline.db import SchemaVersionError, check_schema

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
            "SELECT pg_try_advisory_lock(hashtext(%s))", (self.LOCK_KEY,)
        ).fetchone()
        if not (locked and locked[0]):
            holder = conn.execute(
                "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.objid = hashtext(%s)::oid",
                (self.LOCK_KEY,),
            ).fetchone()
            conn.close()
            since = f", Postgres backend {holder[0]} since {holder[2]:%H:%M:%S}" if holder else ""
            raise Failure(
                f"another promo_pipeline run is in progress (it holds the pipeline lock{since});"
                " this run did nothing"
            )
        self._conn = conn

    @classmethod
    def holders(cls, postgres: PostgresResource, timeout_ms: int = 10_000) -> list[int]:
        """Postgres backends holding the lock in this database: none while a run is STARTED
        means its process is gone (the lock dies with its connection)."""
        with postgres.connect(statement_timeout_ms=timeout_ms) as conn:
            return [
                row[0]
                for row in conn.execute(
                    "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.objsubid = 1 AND d.datname = current_database() "
                    "AND l.objid = hashtext(%s)::oid",
                    (cls.LOCK_KEY,),
                )
            ]

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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


class StateResource(ConfigurableResource):
    """Where the Spark checkpoint lives, how big a micro-batch and a fan-out slice may be, how
    long a run may go on starting fan-out slices while input waits, how many connections write
    a fan-out, whether it sends committed slices while writing, how often it reports progress,
    and from what outbox size Spark sends the triggers."""

    state_dir: str
    max_offsets_per_trigger: int
    trigger_slice_rows: int
    fanout_run_budget_s: int
    push_spark_min_triggers: int
    sink_writers: int
    send_during_write: int
    progress_every_s: int

    @property
    def checkpoint_dir(self) -> str:
        return str(checkpoint_dir(self.state_dir))


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


# Which environment variable feeds which resource field.
POSTGRES_ENV = {
    "host": "POSTGRES_HOST",
    "port": "POSTGRES_PORT",
    "db": "POSTGRES_DB",
    "user": "POSTGRES_USER",
    "password": "POSTGRES_PASSWORD",
}
KAFKA_ENV = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_ca_location": "KAFKA_SSL_CA_LOCATION",
    "properties_file": "KAFKA_PROPERTIES_FILE",
    "input_topic": "PROMO_INPUT_TOPIC",
    "output_topic": "PROMO_OUTPUT_TOPIC",
    "dlq_topic": "PROMO_DLQ_TOPIC",
    "consumer_group": "PROMO_CONSUMER_GROUP",
}
STATE_ENV = {
    "state_dir": "PROMO_STATE_DIR",
    "max_offsets_per_trigger": "PROMO_MAX_OFFSETS_PER_TRIGGER",
    "trigger_slice_rows": "PROMO_TRIGGER_SLICE_ROWS",
    "fanout_run_budget_s": "PROMO_FANOUT_RUN_BUDGET_S",
    "push_spark_min_triggers": "PROMO_PUSH_SPARK_MIN_TRIGGERS",
    "sink_writers": "PROMO_SINK_WRITERS",
    "send_during_write": "PROMO_SEND_DURING_WRITE",
    "progress_every_s": "PROMO_PROGRESS_EVERY_S",
}


def _fields(resource: type[ConfigurableResource], env: dict[str, str], settings: Settings | None):
    """Field values: `EnvVar`s for the code location, plain values for the CLI and tests."""
    if settings is not None:
        return {name: getattr(settings, var.lower()) for name, var in env.items()}
    ints = {name for name, info in resource.model_fields.items() if info.annotation is int}
    return {name: (EnvVar.int(var) if name in ints else EnvVar(var)) for name, var in env.items()}


def postgres_resource(settings: Settings | None = None) -> PostgresResource:
    return PostgresResource(**_fields(PostgresResource, POSTGRES_ENV, settings))


def kafka_resource(settings: Settings | None = None) -> KafkaResource:
    return KafkaResource(**_fields(KafkaResource, KAFKA_ENV, settings))


def state_resource(settings: Settings | None = None) -> StateResource:
    values = _fields(StateResource, STATE_ENV, settings)
    if settings is not None:
        values["state_dir"] = str(values["state_dir"])
    return StateResource(**values)


def build_resources(settings: Settings) -> dict[str, Any]:
    """The code location's resources; secrets stay `EnvVar`s, so the UI never shows them."""
    postgres = postgres_resource()
    return {
        "postgres": postgres,
        "kafka": kafka_resource(),
        "state": state_resource(),
        "pipeline_lock": PipelineLockResource(postgres=postgres),
        "spark": SparkResource(
            spark_config=spark_config(settings), connect_log=settings.promo_spark_connect_log
        ),
    }
