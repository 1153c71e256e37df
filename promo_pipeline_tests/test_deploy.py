"""The deployment files: docker-compose.yml resolved by the real Compose CLI, the image's jar
list, and the Dagster instance configuration, each checked against what the code reads.

There is no Docker engine here, and `docker compose config` needs none: it only parses,
interpolates and validates. Without the compose plugin, the same CLI is built once from its Go
module (cached), since a hand-rolled YAML check would not prove Compose accepts the file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from promo_pipeline.settings import Settings
from promo_pipeline.stack import maven

REPO = Path(__file__).resolve().parents[1]
COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = "v2.40.3"
PROMO_SERVICES = {"init", "user_code", "webserver", "daemon"}
# Read by dagster.yaml (the instance) rather than by Settings.
INSTANCE_ENV = {"DAGSTER_PG_DB", "DAGSTER_HOME"}


def _build_compose(dest: Path) -> None:
    """`go build` the Compose CLI from its module source (the module cache keeps it)."""
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        pytest.skip("neither the docker compose plugin nor a Go toolchain to build it is here")
    download = subprocess.run(
        [go, "mod", "download", "-json", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"],
        capture_output=True,
        text=True,
        check=True,
    )
    source = json.loads(download.stdout)["Dir"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    # Built inside the module so its own go.mod (with its exclude directives) applies, which
    # `go install module@version` refuses to do.
    subprocess.run(
        [
            go,
            "build",
            "-trimpath",
            "-ldflags",
            f"-X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}",
            "-o",
            str(tmp),
            "./cmd",
        ],
        cwd=source,
        check=True,
        capture_output=True,
    )
    tmp.replace(dest)


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """The command that runs Docker Compose: the docker plugin if present, else our build."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    binary = maven.cache_dir() / f"docker-compose-{COMPOSE_VERSION}"
    if not binary.is_file():
        _build_compose(binary)
    return [str(binary)]


def compose_config(compose: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker compose config` in a clean environment: only PATH, HOME and `env`."""
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env}
    return subprocess.run(
        [*compose, "-f", str(REPO / "docker-compose.yml"), "config", "--format", "json"],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved(compose: list[str]) -> tuple[dict[str, Any], str]:
    password = secrets.token_hex(12)
    result = compose_config(compose, {"POSTGRES_PASSWORD": password})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), password


def test_compose_parses_and_resolves(resolved: tuple[dict[str, Any], str]) -> None:
    config, password = resolved
    services = config["services"]
    assert set(services) == {"kafka", "postgres", "spark_connect", *PROMO_SERVICES}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    for name in PROMO_SERVICES:
        service = services[name]
        assert service["image"] == "promo-pipeline:latest"
        assert Path(service["build"]["context"]) == REPO
        assert service["environment"]["POSTGRES_PASSWORD"] == password
    # Checkpoint and state live on the named volume, mounted where runs execute.
    state_dir = Path(services["user_code"]["environment"]["PROMO_STATE_DIR"])
    [mount] = services["user_code"]["volumes"]
    assert mount["type"] == "volume" and mount["source"] == "promo_state"
    assert state_dir.is_relative_to(mount["target"])
    assert "promo_state" in config["volumes"]
    assert services["webserver"]["command"][-1] == services["daemon"]["command"][-1]
    # Runs go to the Connect server, which writes the checkpoint on the same volume.
    spark = services["spark_connect"]
    port = re.search(r"spark.connect.grpc.binding.port=(\d+)", spark["command"][-1]).group(1)
    assert services["user_code"]["environment"]["SPARK_MASTER"] == f"sc://spark_connect:{port}"
    assert spark["volumes"] == services["user_code"]["volumes"]
    assert "$PROMO_SPARK_JARS" in spark["command"][-1]


def test_compose_passes_only_settings_the_code_reads(
    resolved: tuple[dict[str, Any], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = resolved
    known = {name.upper() for name in Settings.model_fields} | INSTANCE_ENV
    instance_env = set(re.findall(r"env:\s*(\w+)", (REPO / "dagster.yaml").read_text()))
    for name in PROMO_SERVICES:
        environment: dict[str, str] = config["services"][name]["environment"]
        unknown = set(environment) - known
        assert not unknown, f"{name} passes settings nothing reads: {sorted(unknown)}"
        missing = instance_env - set(environment)
        assert not missing, f"{name} lacks what dagster.yaml reads: {sorted(missing)}"
        # And the values are ones Settings accepts (the jars come from the image's ENV).
        for var in list(os.environ):
            if var.startswith(("KAFKA_", "POSTGRES_", "PROMO_", "SPARK_")):
                monkeypatch.delenv(var)
        monkeypatch.setenv("PROMO_STACK_DIR", "/nonexistent")
        for var, value in environment.items():
            monkeypatch.setenv(var, value)
        Settings()


def test_compose_refuses_to_start_without_a_password(compose: list[str]) -> None:
    result = compose_config(compose, {})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr
    text = (REPO / "docker-compose.yml").read_text()
    values = re.findall(r"^\s*\w*PASSWORD:\s*(.*)$", text, re.MULTILINE)
    assert len(values) == 3 and all(value.startswith("${") for value in values), values


def test_image_bakes_the_jars_the_resolver_produces() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    [jars] = re.findall(r"PROMO_SPARK_JARS=(\S+)", dockerfile)
    assert sorted(Path(jar).name for jar in jars.split(",")) == sorted(
        jar.name for jar in maven.spark_jars()
    )
    assert "openjdk-17-jre-headless" in dockerfile
    assert "COPY dagster.yaml /opt/dagster/home/dagster.yaml" in dockerfile
    env = yaml.safe_load((REPO / "docker-compose.yml").read_text())["x-promo-env"]
    assert env["DAGSTER_HOME"] == "/opt/dagster/home"
    workspace = yaml.safe_load((REPO / "docker" / "workspace.yaml").read_text())
    [server] = workspace["load_from"]
    assert server["grpc_server"]["host"] == "user_code"


def test_dagster_instance_is_production_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """The repo's dagster.yaml validates against Dagster's own schema and keeps runs apart,
    frees the slot of a dead run, and retries failed runs."""
    from dagster._core.instance.config import dagster_instance_config

    for var in ("POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(var, "x")
    monkeypatch.setenv("POSTGRES_PORT", "5432")
    config, _ = dagster_instance_config(str(REPO))
    postgres = config["storage"]["postgres"]["postgres_db"]
    assert {key: postgres[key] for key in ("hostname", "db_name", "password")} == {
        "hostname": {"env": "POSTGRES_HOST"},
        "db_name": {"env": "DAGSTER_PG_DB"},
        "password": {"env": "POSTGRES_PASSWORD"},
    }
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    assert {"key": "promo/pipeline", "limit": 1} in coordinator["config"]["tag_concurrency_limits"]
    from promo_pipeline.jobs import promo_job

    assert promo_job.tags["promo/pipeline"]
    # A retry re-runs the whole job, as often as dagster.yaml says; a hung run is bounded.
    assert promo_job.tags["dagster/retry_strategy"] == "ALL_STEPS"
    assert "dagster/max_retries" not in promo_job.tags
    assert 0 < int(promo_job.tags["dagster/max_runtime"]) <= 4 * 3600
    assert config["run_monitoring"]["enabled"]
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    assert config["run_retries"]["enabled"] and config["run_retries"]["max_retries"] >= 1
