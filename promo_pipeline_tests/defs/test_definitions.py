"""A snapshot of the code location, without services: what dg's loader finds in
promo_pipeline/defs and how it is wired. Any change to it (an asset, a dependency, a check, the
job's selection or tags, the sensor, a resource) must change this test too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DefaultSensorStatus, Definitions, EnvVar

from promo_pipeline.settings import Settings

ASSET_DEPS = {
    "campaign_batch": set(),
    "subscriber_snapshot": {"campaign_batch"},
    "triggers": {"campaign_batch", "subscriber_snapshot"},
    "feedback_sink": {"triggers"},
    "push_sink": {"feedback_sink"},
}
ASSET_KINDS = {
    "campaign_batch": {"spark", "kafka", "postgres"},
    "subscriber_snapshot": {"postgres"},
    "triggers": {"postgres"},
    "feedback_sink": {"postgres"},
    "push_sink": {"spark", "kafka"},
}
ASSET_RESOURCES = {
    "campaign_batch": {"kafka", "pipeline_lock", "postgres", "spark", "run_options"},
    "subscriber_snapshot": {"pipeline_lock", "postgres"},
    "triggers": {"pipeline_lock", "postgres"},
    "feedback_sink": {"kafka", "pipeline_lock", "postgres", "run_options"},
    "push_sink": {"kafka", "pipeline_lock", "postgres", "spark", "run_options"},
}
# (asset checked, check name)
CHECKS = {
    ("feedback_sink", "one_trigger_per_campaign_and_client"),
    ("push_sink", "triggers_in_both_sinks"),
    ("campaign_batch", "rejected_share_below_threshold"),
    ("campaign_batch", "no_input_lost_before_read"),
}
RESOURCES = {
    "postgres": "PostgresResource",
    "kafka": "KafkaResource",
    "run_options": "RunOptionsResource",
    "pipeline_lock": "PipelineLockResource",
    "spark": "SparkResource",
}


@pytest.fixture(scope="module")
def defs(tmp_path_factory: pytest.TempPathFactory) -> Definitions:
    """The Definitions as the code location builds them, on the settings' defaults."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _defaults_only(monkeypatch, tmp_path_factory.mktemp("defs"))
        from promo_pipeline.definitions import defs as load_defs

        return load_defs()


def _defaults_only(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """No stack.env fallback and none of the caller's settings but the state dir."""
    monkeypatch.setenv("PROMO_STACK_DIR", str(home))
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("PROMO_STATE_DIR", str(home / "state"))


def test_assets_and_their_dependencies(defs: Definitions) -> None:
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == set(ASSET_DEPS)
    for name, deps in ASSET_DEPS.items():
        node = graph.get(AssetKey(name))
        assert {parent.to_user_string() for parent in node.parent_keys} == deps, name
        assert node.group_name == "promo", name
        assert set(node.kinds) == ASSET_KINDS[name], name
        required = set(node.assets_def.required_resource_keys) - {"io_manager"}
        assert required == ASSET_RESOURCES[name], name


def test_asset_checks(defs: Definitions) -> None:
    graph = defs.resolve_asset_graph()
    assert {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys} == CHECKS


def test_job_runs_every_asset_and_check(defs: Definitions) -> None:
    assert {job.name for job in defs.resolve_all_job_defs()} - {"__ASSET_JOB"} == {"promo_job"}
    job = defs.resolve_job_def("promo_job")
    assert {key.to_user_string() for key in job.asset_layer.selected_asset_keys} == set(ASSET_DEPS)
    # One op per asset and per separate check (campaign_batch evaluates its own checks in its
    # op): every run executes all of them.
    assert {node.name for node in job.graph.nodes} == set(ASSET_DEPS) | {
        f"{asset}_{check}" for asset, check in CHECKS if asset != "campaign_batch"
    }
    assert dict(job.tags) == {
        "promo/pipeline": "promo_job",
        "dagster/max_runtime": "3600",
        "dagster/retry_strategy": "FROM_FAILURE",
    }
    assert job.executor_def.name == "in_process"


def test_sensor(defs: Definitions) -> None:
    repository = defs.get_repository_def()
    assert sorted(sensor.name for sensor in repository.sensor_defs) == [
        "promo_next_run_sensor",
        "promo_work_sensor",
    ]
    assert repository.schedule_defs == []
    for name, interval in (("promo_work_sensor", 60), ("promo_next_run_sensor", 5)):
        sensor = defs.resolve_sensor_def(name)
        assert sensor.minimum_interval_seconds == interval
        assert sensor.job_name == "promo_job"
        assert sensor.default_status == DefaultSensorStatus.RUNNING
        assert set(sensor.required_resource_keys) == {"kafka", "postgres", "run_options"}


def test_resources(defs: Definitions) -> None:
    assert {key: type(value).__name__ for key, value in (defs.resources or {}).items()} == (
        RESOURCES
    )


def test_a_set_variable_stays_an_env_var_and_a_default_is_a_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A setting given in the environment reaches the resource as an `EnvVar` (a secret is
    never shown by the UI); one left to its default reaches it as the value, since nothing
    writes the defaults into the environment."""
    from promo_pipeline.defs.resources import build_resources
    from promo_pipeline.settings import load_settings

    _defaults_only(monkeypatch, tmp_path)
    monkeypatch.setenv("POSTGRES_PASSWORD", "s3cr3t")
    monkeypatch.setenv("PROMO_SINK_WRITERS", "3")
    resources = build_resources(load_settings())
    assert resources["postgres"].password == EnvVar("POSTGRES_PASSWORD")
    assert resources["run_options"].sink_writers == EnvVar.int("PROMO_SINK_WRITERS")
    assert resources["postgres"].host == "127.0.0.1"
    assert resources["kafka"].input_topic == "promo_campaigns"
    assert resources["run_options"].max_offsets_per_trigger == 100_000
    assert "POSTGRES_HOST" not in os.environ


def test_a_secret_from_the_stack_file_stays_an_env_var(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A password only in stack.env never becomes a value the UI or the run's snapshot would
    show: it is an `EnvVar`, which `dg dev` (.env) and `promo run` put in their environment."""
    from promo_pipeline.defs.resources import build_resources
    from promo_pipeline.settings import load_settings

    _defaults_only(monkeypatch, tmp_path)
    (tmp_path / "stack.env").write_text("POSTGRES_PASSWORD=from-the-file\nPOSTGRES_PORT=5433\n")
    resources = build_resources(load_settings())
    assert resources["postgres"].password == EnvVar("POSTGRES_PASSWORD")
    assert resources["postgres"].port == 5433
    assert resources["kafka"].sasl_password == ""  # no secret given: nothing to hide


def test_loading_the_code_location_leaves_the_environment_alone(tmp_path: Path) -> None:
    """Importing the code location and building its Definitions writes no variable."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in Settings.model_fields
    } | {"PROMO_STACK_DIR": str(tmp_path), "PROMO_STATE_DIR": str(tmp_path / "state")}
    script = (
        "import os; before = dict(os.environ)\n"
        "from promo_pipeline.definitions import defs\n"
        "defs().resolve_job_def('promo_job')\n"
        "print(sorted(set(os.environ.items()) ^ set(before.items())))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
