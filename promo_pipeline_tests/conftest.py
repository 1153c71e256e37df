"""Fixtures: one real stack (Kafka, Postgres) per test session, one Spark session, and a
fresh database, topics and checkpoint per test so tests never see each other's data."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from promo_pipeline.db import conninfo
from promo_pipeline.stack import LocalStack
from promo_pipeline_tests.support.pipeline import REPO, Pipeline, fresh_pipeline
from promo_pipeline_tests.support.stack import destroy


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The embedded stack, started once for the whole session.

    Runs use an in-process Spark session ("local"), so what a test sets in its environment
    (fault points included) reaches the foreachBatch code; the Connect server that
    `promo stack up` starts by default is covered by test_stack and test_spark_cluster.
    """
    stack = LocalStack(tmp_path_factory.mktemp("stack"), spark="local")
    try:
        env = stack.up()
        yield {**env, "PROMO_STACK_DIR": str(stack.dir)}
    finally:
        destroy(stack)


@pytest.fixture
def pipeline(
    stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    """A fresh database, fresh topics and a fresh checkpoint, wired in through the env."""
    yield fresh_pipeline(stack_env, tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def module_pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """Like `pipeline`, shared by one module: for tests that run the job once and then check
    many outcomes of that one run."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield fresh_pipeline(stack_env, tmp_path_factory.mktemp("module"), monkeypatch)


@pytest.fixture
def dagster_home(pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Dagster instance on the repo's dagster.yaml, in a fresh database of the stack."""
    database = f"{pipeline.settings.postgres_db}_dagster"
    with psycopg.connect(conninfo(pipeline.settings), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_DB", database)
    return home
