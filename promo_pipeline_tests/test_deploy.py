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
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from promo_pipeline.settings import Settings
from promo_pipeline.stack import maven

REPO = Path(__file__).resolve().parents[1]
COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = "v2.40.3"
PROMO_SERVICES = {"init", "user_code", "webserver", "daemon"}
# Read by dagster.yaml (the instance) rather than by Settings.
INSTANCE_ENV = {"DAGSTER_PG_DB", "DAGSTER_HOME"}
# Read by Dagster's code server: the image the run launcher starts each run from.
IMAGE_ENV = {"DAGSTER_CURRENT_IMAGE"}
IMAGE = "promo-pipeline:latest"
# Needed by every `docker compose config` below: the daemon's access to the Docker socket.
DOCKER_ENV = {"DOCKER_GID": "999"}


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


def compose_config(
    compose: list[str], env: dict[str, str], *extra_files: Path
) -> subprocess.CompletedProcess[str]:
    """`docker compose config` in a clean environment: only PATH, HOME and `env` (not the
    checkout's .env, which `promo stack up` may have written); the repo's compose file, then
    `extra_files` layered over it."""
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env}
    files = [REPO / "docker-compose.yml", *extra_files]
    return subprocess.run(
        [
            *compose,
            "--env-file",
            os.devnull,
            *(arg for f in files for arg in ("-f", str(f))),
            "config",
            "--format",
            "json",
        ],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved(compose: list[str]) -> tuple[dict[str, Any], str]:
    password = secrets.token_hex(12)
    result = compose_config(compose, {"POSTGRES_PASSWORD": password, **DOCKER_ENV})
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
        assert service["image"] == IMAGE
        assert service["environment"]["POSTGRES_PASSWORD"] == password
    assert Path(services["init"]["build"]["context"]) == REPO
    # Checkpoint and state live on the named volume, mounted where the sensor reads them.
    state_dir = Path(services["user_code"]["environment"]["PROMO_STATE_DIR"])
    [mount] = [m for m in services["user_code"]["volumes"] if m["source"] == "promo_state"]
    assert mount["type"] == "volume"
    assert state_dir.is_relative_to(mount["target"])
    assert "promo_state" in config["volumes"]
    assert services["webserver"]["command"][-1] == services["daemon"]["command"][-1]
    # Runs go to the Connect server, which writes the checkpoint on the same volume.
    spark = services["spark_connect"]
    port = re.search(r"spark.connect.grpc.binding.port=(\d+)", spark["command"][-1]).group(1)
    assert services["user_code"]["environment"]["SPARK_MASTER"] == f"sc://spark_connect:{port}"
    assert spark["volumes"] == services["user_code"]["volumes"]
    assert "$PROMO_SPARK_JARS" in spark["command"][-1]
    # A server that dies is started again; a run meanwhile fails in one line naming its log.
    assert spark["restart"] in ("on-failure", "unless-stopped", "always")
    assert "spark_connect" in services["user_code"]["environment"]["PROMO_SPARK_CONNECT_LOG"]


def test_compose_passes_only_settings_the_code_reads(
    resolved: tuple[dict[str, Any], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = resolved
    known = {name.upper() for name in Settings.model_fields} | INSTANCE_ENV | IMAGE_ENV
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


# Settings compose does not pass, and why.
NOT_IN_COMPOSE = {"PROMO_SPARK_JARS": "the image's ENV names the jars it bakes (Dockerfile)"}
# Settings whose compose default is this deployment's own, not settings.py's.
COMPOSE_DEFAULTS = {"KAFKA_BOOTSTRAP_SERVERS", "SPARK_MASTER"}


def test_compose_passes_every_setting_with_the_code_defaults() -> None:
    """Compose's list of settings (which each run's container gets too, by the run launcher's
    env_vars) holds every setting of settings.py, and a `${NAME:-default}` there is the
    default settings.py gives, unless it names a service of this deployment."""
    text = (REPO / "docker-compose.yml").read_text()
    env = yaml.safe_load(text)["x-promo-env"]
    settings = {name.upper(): field for name, field in Settings.model_fields.items()}
    assert sorted(set(settings) - set(env) - set(NOT_IN_COMPOSE)) == []
    defaults = dict(re.findall(r"^  (\w+): \$\{\1:-([^}]*)\}$", text, re.MULTILINE))
    assert len(defaults) > 20  # the pattern found compose's defaults
    differ = {
        name: (value, str(settings[name].default))
        for name, value in defaults.items()
        if name not in COMPOSE_DEFAULTS and value != str(settings[name].default)
    }
    assert differ == {}
    assert all(name in defaults for name in COMPOSE_DEFAULTS)


def test_compose_refuses_to_start_without_a_password(compose: list[str]) -> None:
    result = compose_config(compose, DOCKER_ENV)
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
    assert "COPY docker/dagster.yaml /opt/dagster/home/dagster.yaml" in dockerfile
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
    from promo_pipeline.defs.jobs import promo_job

    assert promo_job.tags["promo/pipeline"]
    # A retry re-runs the failed step on, as often as dagster.yaml says; a hung run is bounded.
    assert promo_job.tags["dagster/retry_strategy"] == "FROM_FAILURE"
    assert "dagster/max_retries" not in promo_job.tags
    assert 0 < int(promo_job.tags["dagster/max_runtime"]) <= 4 * 3600
    assert config["run_monitoring"]["enabled"]
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    assert config["run_retries"]["enabled"] and config["run_retries"]["max_retries"] >= 1


# -- the layout of Dagster's deploy_docker example ---------------------------------------------


def _launcher() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())["run_launcher"]


def test_runs_get_containers_of_their_own(resolved: tuple[dict[str, Any], str]) -> None:
    """The daemon launches each run in a new container (DockerRunLauncher) on the compose
    network, with the settings and the volumes user_code has: redeploying user_code kills no
    run, and run monitoring can see a run's container die."""
    config, _ = resolved
    services = config["services"]
    launcher = _launcher()
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    settings = launcher["config"]
    assert settings["network"] == config["networks"]["default"]["name"]
    user_code = services["user_code"]
    assert user_code["environment"]["DAGSTER_CURRENT_IMAGE"] == user_code["image"] == IMAGE
    assert set(settings["env_vars"]) == set(user_code["environment"]) - IMAGE_ENV
    # The run container mounts the same named volumes, at the same places, as user_code.
    mounts = {
        f"{config['volumes'][m['source']]['name']}:{m['target']}" for m in user_code["volumes"]
    }
    assert {v.removesuffix(":ro") for v in settings["container_kwargs"]["volumes"]} == mounts
    # The daemon launches through the Docker socket, the webserver terminates through it.
    for name in ("daemon", "webserver"):
        assert "/var/run/docker.sock" in [m["source"] for m in services[name]["volumes"]]
        assert services[name]["group_add"] == [DOCKER_ENV["DOCKER_GID"]]
    # The image's instance file is the repo's plus the launcher, nothing else.
    docker_instance = yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())
    del docker_instance["run_launcher"]
    assert docker_instance == yaml.safe_load((REPO / "dagster.yaml").read_text())


def constraints() -> dict[str, str]:
    """constraints.txt as {normalized name: version}."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = pinned
    return pins


def test_image_installs_the_pinned_versions_the_tests_ran_on() -> None:
    """The Dockerfile and bootstrap install with constraints.txt; it pins every requirement of
    the image (pyproject's dependencies and [docker] extra) at a version the requirement
    allows, and the test environment holds those very versions."""
    assert (
        'pip install --no-cache-dir -c constraints.txt ".[docker]"'
        in (REPO / "Dockerfile").read_text()
    )
    assert "pip install -q -c constraints.txt" in (REPO / "scripts" / "bootstrap").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = constraints()
    for text in [*project["dependencies"], *project["optional-dependencies"]["docker"]]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt lacks {requirement.name}: run scripts/constraints"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, pyproject wants {text!r}: "
            "run scripts/constraints"
        )
    differ = {
        name: (pinned, installed)
        for name, pinned in pins.items()
        if (installed := _installed(name)) is not None and installed != pinned
    }
    assert differ == {}, f"this environment is not the image's (scripts/bootstrap): {differ}"


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def test_docker_instance_validates_with_dagster_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker/dagster.yaml against Dagster's own schema, the launcher's config included."""
    pytest.importorskip("dagster_docker", reason="pip install -e '.[docker]'")
    from dagster._core.instance.config import dagster_instance_config

    for var in ("POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(var, "x")
    monkeypatch.setenv("POSTGRES_PORT", "5432")
    config, _ = dagster_instance_config(str(REPO / "docker"))
    assert config["run_launcher"]["class"] == "DockerRunLauncher"


def test_image_is_built_once_and_reused(resolved: tuple[dict[str, Any], str]) -> None:
    config, _ = resolved
    services = config["services"]
    assert [name for name, service in services.items() if "build" in service] == ["init"]
    ours = {name for name, service in services.items() if service["image"] == IMAGE}
    assert ours == PROMO_SERVICES | {"spark_connect"}
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'pip install --no-cache-dir -c constraints.txt ".[docker]"' in dockerfile
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"dagster-docker==0.29.27"' in pyproject and '"dagster==1.13.27"' in pyproject


def test_user_code_is_health_checked_over_grpc(resolved: tuple[dict[str, Any], str]) -> None:
    config, _ = resolved
    services = config["services"]
    user_code = services["user_code"]
    port = user_code["command"][user_code["command"].index("-p") + 1]
    assert user_code["healthcheck"]["test"] == [
        "CMD",
        "dagster",
        "api",
        "grpc-health-check",
        "-p",
        port,
    ]
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["user_code"]["condition"] == "service_healthy"


def test_every_service_runs_as_a_non_root_user(resolved: tuple[dict[str, Any], str]) -> None:
    config, _ = resolved
    for name, service in config["services"].items():
        user = service.get("user", "root").split(":")[0]
        assert user not in ("root", "0", ""), f"{name} runs as root"
    [last_user] = re.findall(r"^USER (\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert last_user.split(":")[0] not in ("root", "0")
    assert last_user == config["services"]["user_code"]["user"]


def test_postgres_is_published_only_when_asked(
    compose: list[str], resolved: tuple[dict[str, Any], str]
) -> None:
    config, password = resolved
    assert "ports" not in config["services"]["postgres"]
    env = {"POSTGRES_PASSWORD": password, **DOCKER_ENV}
    result = compose_config(compose, env, REPO / "docker" / "expose-postgres.yml")
    assert result.returncode == 0, result.stderr
    [port] = json.loads(result.stdout)["services"]["postgres"]["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "5432", 5432)


def test_kafka_health_check_starts_no_jvm(resolved: tuple[dict[str, Any], str]) -> None:
    config, _ = resolved
    check = config["services"]["kafka"]["healthcheck"]
    assert check["test"] == ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9092"]
    assert not any(".sh" in part or "java" in part for part in check["test"])


def test_ca_mount_example_covers_every_reader(
    compose: list[str], resolved: tuple[dict[str, Any], str], tmp_path: Path
) -> None:
    """The override in docs/deployment.md, applied with the real Compose CLI: every container
    that reads KAFKA_SSL_CA_LOCATION (the code location, init, the Spark Connect server's
    executors, each run's container) sees the CA at that path."""
    _, password = resolved
    docs = (REPO / "docs" / "deployment.md").read_text()
    [example] = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "promo_config" in b]
    [ca_path] = re.findall(r"KAFKA_SSL_CA_LOCATION=(\S+)", docs.split(example)[1])[:1]
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(example)
    env = {"POSTGRES_PASSWORD": password, **DOCKER_ENV, "KAFKA_SSL_CA_LOCATION": ca_path}
    result = compose_config(compose, env, override)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    readers = {
        name
        for name, service in config["services"].items()
        if "KAFKA_SSL_CA_LOCATION" in service.get("environment", {})
    } | {"spark_connect"}
    assert readers >= {"init", "user_code", "spark_connect"}
    for name in readers:
        service = config["services"][name]
        assert service.get("environment", {}).get("KAFKA_SSL_CA_LOCATION", ca_path) == ca_path
        [mount] = [m for m in service["volumes"] if m["source"] == "promo_config"]
        assert Path(ca_path).parent == Path(mount["target"]), name
    volume = config["volumes"]["promo_config"]
    assert (
        volume["driver_opts"]["o"] == "bind" and Path(volume["driver_opts"]["device"]).is_absolute()
    )
    runs = [v for v in _launcher()["config"]["container_kwargs"]["volumes"] if "promo_config" in v]
    assert [v.split(":")[:2] for v in runs] == [[volume["name"], str(Path(ca_path).parent)]]
