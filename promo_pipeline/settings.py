"""Every setting comes from the environment; defaults point at the embedded local stack.

`promo stack up` writes `<stack dir>/stack.env`; it is read as a fallback so a shell in the
repo root needs no exports. Real environment variables always win.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from promo_pipeline.kafka_config import read_properties

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# A library's part of the settings: a model whose fields are settings without their prefix.
Part = TypeVar("Part", bound=BaseModel)


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


class Settings(BaseSettings):
    """The pipeline's configuration; field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka brokers, host:port,..."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol"
    )
    kafka_sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "", description="SASL mechanism when the protocol is SASL_*"
    )
    kafka_sasl_username: str = Field("", description="SASL user")
    kafka_sasl_password: str = Field("", repr=False, description="SASL password (secret)")
    kafka_ssl_ca_location: str = Field("", description="PEM file of the CA that signed the brokers")
    kafka_properties_file: str = Field(
        "",
        description="key=value file of further Kafka client properties, librdkafka names "
        "(client certificate, client.id, ...); carried to Spark's Kafka client too",
    )
    promo_consumer_group: str = Field(
        "promo_pipeline",
        min_length=1,
        description="consumer group the read positions are committed to after each run, for "
        "lag tools (informational: Spark's checkpoint stays the source of truth)",
    )
    promo_input_topic: str = Field("promo_campaigns", description="topic restaurants publish to")
    promo_output_topic: str = Field("promo_triggers", description="topic the push service reads")
    promo_dlq_topic: str = Field("promo_campaigns_dlq", description="rejected input, with reason")
    promo_topic_partitions: int = Field(
        -1, description="partitions of each topic created; -1: the broker's num.partitions"
    )
    promo_topic_replication_factor: int = Field(
        -1,
        description="replicas of each topic created; -1: the broker's default.replication.factor",
    )
    postgres_host: str = Field("127.0.0.1", description="Postgres host")
    postgres_port: int = Field(5432, ge=1, le=65535, description="Postgres port")
    postgres_db: str = Field("promo", min_length=1, description="database name")
    postgres_user: str = Field("promo", min_length=1, description="database user")
    postgres_password: str = Field("", repr=False, description="database password (secret)")
    promo_state_dir: Path = Field(
        Path(".promo/state"),
        description="Spark checkpoint, checkpoints set aside, a rewind's start (shared storage)",
    )
    spark_master: str = Field(
        "local[2]",
        min_length=1,
        description="Spark master URL (local[n], spark://host:port, yarn, k8s://...), "
        "or sc://host:port to run through a Spark Connect server",
    )
    promo_spark_connect_log: str = Field(
        "", description="where the Spark Connect server logs (named when it cannot be reached)"
    )
    promo_spark_jars: str = Field(
        "", description="comma-separated connector jars; empty: resolved from Maven once"
    )
    promo_max_offsets_per_trigger: int = Field(
        100_000, gt=0, description="campaign messages per micro-batch"
    )
    promo_trigger_slice_rows: int = Field(
        250_000,
        gt=0,
        description="triggers per committed slice of a fan-out (bounds a run's memory)",
    )
    # A giant's full fan-out would hold every campaign published after its run started for the
    # whole walk (runs never overlap): past this budget, while campaign messages wait, a run
    # commits no further slice, sends what it wrote, and ends; the next run serves the new
    # campaigns first, then goes on. With nothing waiting the giant keeps its run.
    promo_fanout_run_budget_s: int = Field(
        20,
        ge=0,
        description="seconds of a run's Postgres sink after which, while campaign messages wait, "
        "it starts no further fan-out slice and leaves the rest to the next run (0: no limit)",
    )
    promo_sink_writers: int = Field(
        0,
        ge=0,
        description="connections that write a fan-out's slices concurrently (each its own "
        "Postgres backend); 0: one per CPU core of the run's host",
    )
    # Off by default: the one side-by-side measurement (bench/README.md) found the sinks slower
    # with the send overlapped on a CPU-bound host; on, a sender in the Postgres sink sends the
    # committed slices while the next ones are written.
    promo_send_during_write: int = Field(
        0,
        ge=0,
        le=1,
        description="1: while the Postgres sink writes a multi-slice fan-out, a sender in the run "
        "sends its committed slices to Kafka; 0: push_sink sends them all after it",
    )
    promo_progress_every_s: int = Field(
        10, ge=0, description="seconds between a fan-out's progress lines in the run's log"
    )
    # On one host the run's own producer is as fast as Spark's writer at 3M triggers, faster
    # below (no job to start) and lighter (bench/README.md): Spark's writer pays off where a
    # cluster's workers share a large send.
    promo_push_spark_min_triggers: int = Field(
        50_000_000,
        ge=0,
        description="outboxes of at least this many triggers go to Kafka through Spark's "
        "Kafka writer on the executors; smaller ones the run sends itself (0: always Spark)",
    )
    promo_reject_warn_ratio: float = Field(
        0.1, ge=0, le=1, description="share of rejected input above which a check warns"
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @field_validator("promo_input_topic", "promo_output_topic", "promo_dlq_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not TOPIC_NAME.match(value):
            raise ValueError(f"not a valid Kafka topic name: {value!r}")
        return value

    @field_validator("promo_topic_partitions", "promo_topic_replication_factor")
    @classmethod
    def _broker_default_or_positive(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError(f"expected -1 (the broker's default) or a number >= 1, got {value}")
        return value

    @field_validator("promo_state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("kafka_ssl_ca_location")
    @classmethod
    def _ca(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("kafka_properties_file")
    @classmethod
    def _properties(cls, value: str) -> str:
        if value:
            read_properties(value)  # a property Spark cannot carry fails here, in one line
        return value

    @field_validator("promo_spark_jars")
    @classmethod
    def _jars(cls, value: str) -> str:
        missing = [jar for jar in split_list(value) if not Path(jar).is_file()]
        if missing:
            raise ValueError(f"no such jar: {', '.join(missing)}")
        return value

    @model_validator(mode="after")
    def _sasl_credentials_given(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_"):
            for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"):
                if not getattr(self, name):
                    raise ValueError(
                        f"{name.upper()} is required when KAFKA_SECURITY_PROTOCOL="
                        f"{self.kafka_security_protocol}"
                    )
        return self

    @model_validator(mode="after")
    def _one_ca(self) -> Settings:
        given = read_properties(self.kafka_properties_file) if self.kafka_properties_file else {}
        if self.kafka_ssl_ca_location and "ssl.ca.pem" in given:
            raise ValueError(
                "KAFKA_SSL_CA_LOCATION and ssl.ca.pem in KAFKA_PROPERTIES_FILE both name "
                "the brokers' CA; keep one"
            )
        return self

    @model_validator(mode="after")
    def _topics_differ(self) -> Settings:
        topics = {self.promo_input_topic, self.promo_output_topic, self.promo_dlq_topic}
        if len(topics) != 3:
            raise ValueError(
                "PROMO_INPUT_TOPIC, PROMO_OUTPUT_TOPIC and PROMO_DLQ_TOPIC must differ"
            )
        return self

    def as_environ(self) -> dict[str, str]:
        """The settings as environment variables, for child processes."""
        return {name.upper(): str(value) for name, value in self.model_dump().items()}

    def config_for(self, model: type[Part]) -> Part:
        """`model` filled from these settings."""
        return model(**self.values_for(model))

    def values_for(self, model: type[BaseModel]) -> dict[str, str | int | float]:
        """The values of `model`'s fields in these settings (`setting_names`), a path as text."""
        values = {
            field: getattr(self, name.lower()) for field, name in setting_names(model).items()
        }
        return {field: str(v) if isinstance(v, Path) else v for field, v in values.items()}


def setting_names(model: type[BaseModel]) -> dict[str, str]:
    """Each field of `model` and the variable that sets it: `<PREFIX>_<FIELD>` for the first of
    the model's SETTINGS_PREFIXES that names a setting, so the names are written once, here."""
    names = {}
    for field in model.model_fields:
        candidates = [f"{prefix}_{field}" for prefix in model.SETTINGS_PREFIXES]
        known = [name for name in candidates if name in Settings.model_fields]
        if not known:
            raise KeyError(f"{model.__name__}.{field}: no setting {' or '.join(candidates)}")
        names[field] = known[0].upper()
    return names


class RunOptions(BaseModel):
    """Where the Spark checkpoint lives, how big a micro-batch and a fan-out slice may be, how
    long a run may go on starting fan-out slices while input waits, how many connections write
    a fan-out, whether it sends committed slices while writing, how often it reports progress,
    and from what outbox size Spark sends the triggers."""

    model_config = ConfigDict(frozen=True)
    # Each field is the setting PROMO_<FIELD>.
    SETTINGS_PREFIXES: ClassVar[tuple[str, ...]] = ("promo",)

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


def checkpoint_dir(state_dir: str | Path) -> Path:
    """Spark's checkpoint of the campaign stream, inside the state dir."""
    return Path(state_dir, "checkpoints", "campaigns")


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def stack_env_file() -> Path:
    return Path(os.environ.get("PROMO_STACK_DIR", ".promo")) / "stack.env"


def load_settings() -> Settings:
    """Read and check the settings; a problem is one line naming each variable."""
    try:
        settings = Settings(_env_file=stack_env_file())
    except ValidationError as error:
        problems = []
        for item in error.errors():
            name = ".".join(str(part) for part in item["loc"]).upper() or "configuration"
            given = item.get("input")
            shown = "" if name.endswith("PASSWORD") or isinstance(given, dict) else f" ({given!r})"
            problems.append(f"{name}: {item['msg']}{shown}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    return settings
