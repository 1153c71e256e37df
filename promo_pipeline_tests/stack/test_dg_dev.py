"""The README's way to the UI: `eval "$(promo stack up)"` in a project folder whose path holds
a space, then `dg dev` there with nothing exported: it loads the .env `promo stack up` wrote,
so its instance is the stack's (Postgres storage in DAGSTER_HOME) and the code location
loads. A .env that promo did not write is left alone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from promo_pipeline.cli.stack import DOTENV_MARK
from promo_pipeline.stack import LocalStack
from promo_pipeline_tests.support.dagster import STACK_PREFIXES, dg_dev, dg_project, graphql
from promo_pipeline_tests.support.stack import destroy

pytestmark = [pytest.mark.stack, pytest.mark.daemon]

LOCATIONS = """{ workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def test_stack_up_writes_the_dotenv_dg_dev_loads(tmp_path: Path) -> None:
    project = dg_project(tmp_path / "my project")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(STACK_PREFIXES)}
    stack = LocalStack(project / ".promo")
    try:
        up = subprocess.run(
            ["bash", "-c", 'eval "$(.venv/bin/promo stack up --spark local)" && env -0'],
            cwd=project,
            env=clean,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert up.returncode == 0, up.stderr[-3000:]
        exported = dict(line.split("=", 1) for line in up.stdout.split("\0") if line)
        written = dotenv_values(stack.env_file)
        assert written["PROMO_STATE_DIR"] == str(project / ".promo" / "state")
        assert {name: exported[name] for name in written} == written
        dotenv = project / ".env"
        assert dotenv.read_text().splitlines()[0] == DOTENV_MARK
        assert dotenv_values(dotenv) == written

        with dg_dev(project, clean, tmp_path / "dg_dev.log") as url:
            [entry] = graphql(url, LOCATIONS)["workspaceOrError"]["locationEntries"]
            assert (entry["name"], entry["loadStatus"]) == ("promo_pipeline", "LOADED"), entry
            assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
            info = graphql(url, "{ instance { info } }")["instance"]["info"]
            assert f"base_dir: {written['DAGSTER_HOME']}" in info, info
            assert "run_storage: PostgresRunStorage" in info, info
        log = (tmp_path / "dg_dev.log").read_text()
        assert "Loaded environment variables from .env file" in log

        # A .env of the user's own (compose's, say) survives the next `promo stack up`.
        dotenv.write_text("POSTGRES_PASSWORD=compose-secret\n")
        again = subprocess.run(
            [project / ".venv" / "bin" / "promo", "stack", "up", "--spark", "local"],
            cwd=project,
            env=clean,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert dotenv.read_text() == "POSTGRES_PASSWORD=compose-secret\n"
        assert f"{dotenv} exists and was not written by promo: left as it is" in again.stderr
    finally:
        destroy(stack)
