"""Kafka client properties beyond the named KAFKA_* settings, from one properties file.

`KAFKA_PROPERTIES_FILE` names a `key=value` file in librdkafka's property names (the file
`kcat -F` reads). Every confluent-kafka client takes the properties as they are; Spark's Kafka
source and sink run the Java client, whose names differ for TLS material, so `spark_options`
carries each property by the table below and refuses, in one line, one it cannot carry: a
property that reached only some clients would fail later and elsewhere.

A file, not `KAFKA_<NAME>` variables: Docker's run launcher passes a fixed list of variables to
each run's container, and one setting naming a mounted file reaches every client everywhere.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

# Set by the named settings (KAFKA_BOOTSTRAP_SERVERS, ...): one home for each.
NAMED = {
    "bootstrap.servers": "KAFKA_BOOTSTRAP_SERVERS",
    "metadata.broker.list": "KAFKA_BOOTSTRAP_SERVERS",
    "security.protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl.mechanism": "KAFKA_SASL_MECHANISM",
    "sasl.mechanisms": "KAFKA_SASL_MECHANISM",
    "sasl.username": "KAFKA_SASL_USERNAME",
    "sasl.password": "KAFKA_SASL_PASSWORD",
    "ssl.ca.location": "KAFKA_SSL_CA_LOCATION",
}
# The same name and meaning in librdkafka and in the Java client.
SAME = {
    "client.id",
    "client.dns.lookup",
    "connections.max.idle.ms",
    "metadata.max.age.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "retry.backoff.ms",
    "sasl.kerberos.service.name",
    "socket.connection.setup.timeout.ms",
    "ssl.key.password",
}
# librdkafka's own diagnostics and socket tuning: nothing the Java client needs to connect.
LIBRDKAFKA_ONLY = {
    "api.version.request",
    "broker.address.family",
    "debug",
    "log.connection.close",
    "log_level",
    "socket.keepalive.enable",
    "statistics.interval.ms",
}
# Translated for the Java client by `java_properties` (librdkafka name: Java names).
TRANSLATED = {
    "ssl.ca.pem": "ssl.truststore.type=PEM, ssl.truststore.certificates",
    "ssl.certificate.location": "ssl.keystore.type=PEM, ssl.keystore.certificate.chain (the "
    "file's text)",
    "ssl.key.location": "ssl.keystore.key (the file's text)",
    "ssl.certificate.pem": "ssl.keystore.type=PEM, ssl.keystore.certificate.chain",
    "ssl.key.pem": "ssl.keystore.key",
    "ssl.keystore.location": "ssl.keystore.type=PKCS12, ssl.keystore.location",
    "ssl.keystore.password": "ssl.keystore.password",
    "ssl.endpoint.identification.algorithm": "the same (none: empty)",
}
LOCATIONS = ("ssl.certificate.location", "ssl.key.location", "ssl.keystore.location")
# Names whose values are secrets: masked wherever properties are shown.
SECRET = re.compile(r"password|secret|jaas|\.pem$|keystore\.key$|oauthbearer\.config", re.I)
MASK = "***"


class KafkaPropertiesError(ValueError):
    """The properties file cannot be used; the message names the file and the property."""


def read_properties(path: str | Path) -> dict[str, str]:
    """`key=value` lines (`#` and `!` comments, blank lines skipped), checked by `java_properties`
    so a property Spark could not use fails at start, not in the middle of a run."""
    where = f"KAFKA_PROPERTIES_FILE {path}"
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise KafkaPropertiesError(f"{where}: {error.strerror or error}") from None
    properties: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise KafkaPropertiesError(f"{where} line {number}: expected name=value")
        if name in properties:
            raise KafkaPropertiesError(f"{where} line {number}: {name} is set twice")
        if name in NAMED:
            raise KafkaPropertiesError(
                f"{where} line {number}: {name} is set by {NAMED[name]}; set it there"
            )
        properties[name] = value
    java_properties(properties, where=where)
    return properties


def java_properties(properties: dict[str, str], where: str = "Kafka property") -> dict[str, str]:
    """The Java client's properties for librdkafka's `properties` (without `kafka.` prefix).

    Certificates and keys given as files are passed as PEM text, since Java's PEM key store
    wants key and chain together and librdkafka keeps them in two files.
    """
    java: dict[str, str] = {}
    for name, value in properties.items():
        if name in SAME:
            java[name] = value
        elif name in LIBRDKAFKA_ONLY or name in TRANSLATED:
            continue
        else:
            raise KafkaPropertiesError(
                f"{where}: {name} has no known equivalent in Spark's (Java) Kafka client, so "
                "Spark's reader and writer could not use it; supported: "
                + ", ".join(sorted(SAME | LIBRDKAFKA_ONLY | set(TRANSLATED)))
            )
    for name in LOCATIONS:
        if name in properties and not Path(properties[name]).is_file():
            raise KafkaPropertiesError(f"{where}: {name}: no such file: {properties[name]}")
    cert = properties.get("ssl.certificate.pem") or _text(properties, "ssl.certificate.location")
    key = properties.get("ssl.key.pem") or _text(properties, "ssl.key.location")
    if bool(cert) != bool(key):
        raise KafkaPropertiesError(
            f"{where}: a client certificate needs its key and a key its certificate "
            "(ssl.certificate.location with ssl.key.location, or ssl.certificate.pem with "
            "ssl.key.pem)"
        )
    if cert and "ssl.keystore.location" in properties:
        raise KafkaPropertiesError(
            f"{where}: give the client certificate once: ssl.keystore.location (PKCS#12) or "
            "a PEM certificate and key"
        )
    if cert:
        java |= {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.certificate.chain": cert,
            "ssl.keystore.key": key,
        }
    if "ssl.keystore.location" in properties:
        java |= {
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": properties["ssl.keystore.location"],
        }
        if "ssl.keystore.password" in properties:
            java["ssl.keystore.password"] = properties["ssl.keystore.password"]
    if "ssl.ca.pem" in properties:
        java |= {
            "ssl.truststore.type": "PEM",
            "ssl.truststore.certificates": properties["ssl.ca.pem"],
        }
    algorithm = properties.get("ssl.endpoint.identification.algorithm")
    if algorithm is not None:
        java["ssl.endpoint.identification.algorithm"] = "" if algorithm == "none" else algorithm
    return java


def _text(properties: dict[str, str], name: str) -> str:
    return Path(properties[name]).read_text() if name in properties else ""


def masked(properties: dict[str, str]) -> dict[str, str]:
    """`properties` fit to show: secret values replaced by ***."""
    return {name: MASK if SECRET.search(name) else value for name, value in properties.items()}


# librdkafka's own log lines (`%4|...|GETPID|... Coordinator load in progress: retrying`), as
# records of this logger at their syslog level. It shows errors only unless logging is set up
# otherwise: librdkafka warns about what it retries itself, and what fails for good reaches the
# caller as an exception, a delivery error or a failed check.
LIBRDKAFKA_LOG = logging.getLogger("promo_pipeline.librdkafka")
if LIBRDKAFKA_LOG.level == logging.NOTSET:
    LIBRDKAFKA_LOG.setLevel(logging.ERROR)


class KafkaConfig(BaseModel):
    """Brokers and topics; one place turns the settings into client and Spark options."""

    model_config = ConfigDict(frozen=True)
    # Each field is the setting KAFKA_<FIELD>, else PROMO_<FIELD> (Settings.config_for).
    SETTINGS_PREFIXES: ClassVar[tuple[str, ...]] = ("kafka", "promo")

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

    def plain(self) -> KafkaConfig:
        """These values as a KafkaConfig itself, picklable (a Dagster resource built on this
        class is not), for Spark's Python workers."""
        return KafkaConfig(**{name: getattr(self, name) for name in KafkaConfig.model_fields})

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
