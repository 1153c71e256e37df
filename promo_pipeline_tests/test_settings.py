"""Settings fail at start-up with a message that names the variable."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from promo_pipeline.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def no_stack_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PROMO_STACK_DIR", str(tmp_path))


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("POSTGRES_PORT", "five", "valid integer"),
        ("POSTGRES_PORT", "70000", "less than or equal to 65535"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS", "PLAINTEXT"),
        ("PROMO_OUTPUT_TOPIC", "bad topic!", "not a valid Kafka topic name"),
        ("KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem", "no such file"),
        ("PROMO_MAX_OFFSETS_PER_TRIGGER", "0", "greater than 0"),
        ("PROMO_SPARK_JARS", "/nonexistent.jar", "no such jar"),
        ("PROMO_TOPIC_PARTITIONS", "0", "-1 (the broker's default) or a number >= 1"),
        ("PROMO_TOPIC_REPLICATION_FACTOR", "-2", "-1 (the broker's default) or a number >= 1"),
    ],
)
def test_malformed_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert name in str(error.value) and words in str(error.value)


def test_topic_layout_defaults_to_the_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, topics get the broker's partitions and replication (-1 is Kafka's "default")."""
    for name in ("PROMO_TOPIC_PARTITIONS", "PROMO_TOPIC_REPLICATION_FACTOR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.promo_topic_partitions, settings.promo_topic_replication_factor) == (-1, -1)
    monkeypatch.setenv("PROMO_TOPIC_PARTITIONS", "6")
    monkeypatch.setenv("PROMO_TOPIC_REPLICATION_FACTOR", "3")
    settings = load_settings()
    assert (settings.promo_topic_partitions, settings.promo_topic_replication_factor) == (6, 3)


def test_sasl_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    with pytest.raises(SettingsError, match="KAFKA_SASL_USERNAME is required"):
        load_settings()


def test_password_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_PASSWORD", "s3cr3t-value")
    monkeypatch.setenv("POSTGRES_PORT", "x")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "s3cr3t-value" not in str(error.value)
    monkeypatch.setenv("POSTGRES_PORT", "5432")
    assert "s3cr3t-value" not in repr(load_settings())


def test_cli_and_code_location_fail_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POSTGRES_PORT", "abc")
    cli = subprocess.run(
        [sys.executable, "-m", "promo_pipeline.cli", "run"], capture_output=True, text=True
    )
    assert cli.returncode == 1
    assert cli.stderr.strip().splitlines() == [
        "promo: invalid settings: POSTGRES_PORT: Input should be a valid integer, unable to "
        "parse string as an integer ('abc')"
    ]
    location = subprocess.run(
        [sys.executable, "-c", "import promo_pipeline.definitions"], capture_output=True, text=True
    )
    assert location.returncode != 0 and "POSTGRES_PORT" in location.stderr


def test_readme_lists_every_setting_with_its_default() -> None:
    """README's table of settings names each one, with the default settings.py gives it."""
    from pathlib import Path

    from promo_pipeline.settings import Settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown: dict[str, str] = {}
    for row in re.findall(r"^\| (`[A-Z_]+`(?: / `[A-Z_]+`)*) \| ([^|]+) \|", readme, re.M):
        names = [name.strip("`") for name in row[0].split(" / ")]
        defaults = [value.strip().strip("`") for value in row[1].split(" / ")]
        if len(defaults) == 1:
            defaults *= len(names)
        shown |= dict(zip(names, defaults, strict=True))
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in shown]
    assert missing == []
    differ = {
        name.upper(): (shown[name.upper()], str(field.default))
        for name, field in Settings.model_fields.items()
        if not shown[name.upper()].startswith("set by")
        and shown[name.upper()].replace("\N{EN DASH}", "") != str(field.default)
    }
    assert differ == {}
