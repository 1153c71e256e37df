"""KAFKA_PROPERTIES_FILE: librdkafka properties for every confluent-kafka client, carried to
Spark's Java client by the translation table, or refused in one line at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from promo_pipeline.defs.resources import kafka_resource
from promo_pipeline.kafka_config import (
    LIBRDKAFKA_ONLY,
    NAMED,
    SAME,
    TRANSLATED,
    java_properties,
    masked,
    read_properties,
)
from promo_pipeline.settings import SettingsError, load_settings

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE\n-----END ENCRYPTED PRIVATE KEY-----\n"


@pytest.fixture(autouse=True)
def no_stack_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMO_STACK_DIR", str(tmp_path))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.properties"
    path.write_text(text)
    return path


def client_pem(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "client.crt").write_text(CERT)
    (tmp_path / "client.key").write_text(KEY)
    return tmp_path / "client.crt", tmp_path / "client.key"


def test_mtls_file_reaches_both_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = client_pem(tmp_path)
    path = write(
        tmp_path,
        "# kcat -F form\n\n"
        f"ssl.certificate.location={cert}\n ssl.key.location = {key}\n"
        "ssl.key.password=s3cret=with=equals\nclient.id=promo-test\n! also a comment\n"
        "debug=security\n",
    )
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_PROPERTIES_FILE", str(path))
    kafka = kafka_resource(load_settings())

    config = kafka.client_config(**{"group.id": "g"})
    assert config["ssl.certificate.location"] == str(cert)
    assert config["ssl.key.password"] == "s3cret=with=equals"
    assert (config["client.id"], config["debug"], config["group.id"]) == (
        "promo-test",
        "security",
        "g",
    )
    assert config["security.protocol"] == "SSL"

    options = kafka.spark_options()
    assert options["kafka.security.protocol"] == "SSL"
    assert options["kafka.ssl.keystore.type"] == "PEM"
    assert options["kafka.ssl.keystore.certificate.chain"] == CERT
    assert options["kafka.ssl.keystore.key"] == KEY
    assert options["kafka.ssl.key.password"] == "s3cret=with=equals"
    assert options["kafka.client.id"] == "promo-test"
    assert "kafka.debug" not in options and "kafka.ssl.key.location" not in options

    described = kafka.described()
    assert "s3cret" not in described
    assert "ssl.key.password=***" in described and "client.id=promo-test" in described


@pytest.mark.parametrize(
    ("properties", "java"),
    [
        (
            {"client.id": "x", "retry.backoff.ms": "50"},
            {"client.id": "x", "retry.backoff.ms": "50"},
        ),
        ({"ssl.ca.pem": CERT}, {"ssl.truststore.type": "PEM", "ssl.truststore.certificates": CERT}),
        (
            {"ssl.certificate.pem": CERT, "ssl.key.pem": KEY},
            {
                "ssl.keystore.type": "PEM",
                "ssl.keystore.certificate.chain": CERT,
                "ssl.keystore.key": KEY,
            },
        ),
        (
            {"ssl.endpoint.identification.algorithm": "none"},
            {"ssl.endpoint.identification.algorithm": ""},
        ),
        (
            {"ssl.endpoint.identification.algorithm": "https"},
            {"ssl.endpoint.identification.algorithm": "https"},
        ),
        ({"statistics.interval.ms": "1000", "log_level": "3"}, {}),
    ],
)
def test_translation_table(properties: dict[str, str], java: dict[str, str]) -> None:
    assert java_properties(properties) == java


def test_pkcs12_keystore(tmp_path: Path) -> None:
    store = tmp_path / "client.p12"
    store.write_bytes(b"\x30\x82")
    java = java_properties({"ssl.keystore.location": str(store), "ssl.keystore.password": "pw"})
    assert java == {
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(store),
        "ssl.keystore.password": "pw",
    }


def test_every_supported_name_has_a_rule() -> None:
    """Each name is in exactly one row of the table, and none is a named setting's."""
    rows = [SAME, LIBRDKAFKA_ONLY, set(TRANSLATED), set(NAMED)]
    names = [name for row in rows for name in row]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "sasl.oauthbearer.method=oidc\n",
            "sasl.oauthbearer.method has no known equivalent in Spark",
        ),
        (
            "enable.ssl.certificate.verification=false\n",
            "enable.ssl.certificate.verification has no",
        ),
        ("group.id=mine\n", "group.id has no known equivalent"),
        (
            "bootstrap.servers=b:9092\n",
            "line 1: bootstrap.servers is set by KAFKA_BOOTSTRAP_SERVERS",
        ),
        ("sasl.password=x\n", "sasl.password is set by KAFKA_SASL_PASSWORD"),
        ("ssl.ca.location=/x\n", "is set by KAFKA_SSL_CA_LOCATION"),
        ("client.id=a\nclient.id=b\n", "line 2: client.id is set twice"),
        ("# ok\njust a word\n", "line 2: expected name=value"),
        ("ssl.key.location=/nonexistent/key.pem\n", "ssl.key.location: no such file"),
        ("ssl.certificate.pem=x\n", "a client certificate needs its key"),
    ],
)
def test_unusable_file_fails_at_start_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, words: str
) -> None:
    monkeypatch.setenv("KAFKA_PROPERTIES_FILE", str(write(tmp_path, text)))
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "KAFKA_PROPERTIES_FILE" in message and words in message
    assert "\n" not in message


def test_missing_file_and_two_cas_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_PROPERTIES_FILE", str(tmp_path / "absent.properties"))
    with pytest.raises(SettingsError, match=r"absent\.properties: No such file"):
        load_settings()
    (tmp_path / "ca.pem").write_text(CERT)
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("KAFKA_PROPERTIES_FILE", str(write(tmp_path, f"ssl.ca.pem={CERT[:27]}\n")))
    with pytest.raises(SettingsError, match="both name the brokers' CA"):
        load_settings()


def test_secret_values_are_masked() -> None:
    shown = masked(
        {
            "ssl.key.password": "a",
            "ssl.keystore.password": "b",
            "ssl.key.pem": "c",
            "sasl.oauthbearer.client.secret": "d",
            "ssl.keystore.key": "e",
            "client.id": "visible",
            "ssl.key.location": "/visible/path",
        }
    )
    assert {v for k, v in shown.items() if v != "***"} == {"visible", "/visible/path"}


def test_file_settings_keep_the_file_out_of_the_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the path travels (env, run config, UI); the values stay in the file."""
    path = write(tmp_path, "ssl.key.password=never-exported\nclient.id=c\n")
    cert, key = client_pem(tmp_path)
    path.write_text(path.read_text() + f"ssl.certificate.location={cert}\nssl.key.location={key}\n")
    monkeypatch.setenv("KAFKA_PROPERTIES_FILE", str(path))
    environ = load_settings().as_environ()
    assert environ["KAFKA_PROPERTIES_FILE"] == str(path)
    assert "never-exported" not in repr(environ)
    assert read_properties(path)["ssl.key.password"] == "never-exported"
