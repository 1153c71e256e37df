"""A snapshot of the code location, without services: what dg's loader finds in
promo_pipeline/defs and how it is wired. Any change to it (an asset, a dependency, a check, the
job's selection or tags, the sensor, a resource) must change this test too."""

from __future__ import annotations

import pytest
from dagster import AssetKey, DefaultSensorStatus, Definitions

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
    "campaign_batch": {"kafka", "pipeline_lock", "postgres", "spark", "state"},
    "subscriber_snapshot": {"pipeline_lock", "postgres"},
    "triggers": {"pipeline_lock", "postgres"},
    "feedback_sink": {"kafka", "pipeline_lock", "postgres", "state"},
    "push_sink": {"kafka", "pipeline_lock", "postgres", "spark", "state"},
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
    "state": "StateResource",
    "pipeline_lock": "PipelineLockResource",
    "spark": "SparkResource",
}


@pytest.fixture(scope="module")
def defs(tmp_path_factory: pytest.TempPathFactory) -> Definitions:
    """The Definitions as the code location builds them, on the settings' defaults."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        home = tmp_path_factory.mktemp("defs")
        # No stack.env fallback and none of the caller's settings: the defaults, set explicitly
        # so that load_settings(export=True) adds nothing to the environment that outlives this.
        monkeypatch.setenv("PROMO_STACK_DIR", str(home))
        for name in Settings.model_fields:
            monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.setenv("PROMO_STATE_DIR", str(home / "state"))
        for name, value in Settings(_env_file=None).as_environ().items():
            monkeypatch.setenv(name, value)

        from promo_pipeline.definitions import defs as load_defs

        return load_defs()


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
        assert set(sensor.required_resource_keys) == {"kafka", "postgres", "state"}


def test_resources(defs: Definitions) -> None:
    assert {key: type(value).__name__ for key, value in (defs.resources or {}).items()} == (
        RESOURCES
    )
