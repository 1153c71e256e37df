"""Schema `promo` is versioned by Alembic: `promo db upgrade` migrates a new or an older
database, the seed's tables stay exactly as its DDL says, a run refuses to start on a database
that is behind, and a later revision is one new file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from promo_pipeline.cli import main
from promo_pipeline.cli.run import run_job
from promo_pipeline.db import (
    SEED_DDL,
    SchemaVersionError,
    check_schema,
    conninfo,
    current_revision,
    head_revision,
    migrations_dir,
    upgrade,
)
from promo_pipeline_tests.support.pipeline import SEED_CAMPAIGN, SEED_CLIENT, Pipeline

pytestmark = pytest.mark.stack

SEED_TABLES = ("subscribers_restaurants", "subscribers_feedback")
PROMO_OBJECTS = {
    "alembic_version",
    "campaigns",
    "campaign_batches",
    "trigger_outbox",
    "trigger_window",
}


def _columns_and_constraints(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """The seed tables' shape: columns with types, nullability, defaults; constraints."""
    columns = conn.execute(
        "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, "
        "column_default FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = ANY(%s) ORDER BY 1, 2",
        (list(SEED_TABLES),),
    ).fetchall()
    constraints = conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid::regclass::text = ANY(%s) ORDER BY 1, 2",
        ([f"subscribers_{name.split('_')[1]}" for name in SEED_TABLES],),
    ).fetchall()
    return [*columns, *constraints]


def test_upgrade_migrates_to_head_and_repeats_as_a_no_op(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    with pipeline.connect() as conn:
        assert current_revision(conn) == head_revision()
        tables = {
            row[0]
            for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'promo'")
        }
        assert tables >= PROMO_OBJECTS
    assert main(["db", "upgrade"]) == 0
    out = capsys.readouterr().out
    assert f"schema promo at revision {head_revision()} (up to date)" in out


def test_seed_tables_stay_exactly_as_the_seed_ddl_says(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """A database holding only SEED_DDL and one after `promo db upgrade`: same seed tables."""
    scratch = f"{pipeline.settings.postgres_db}_seed_only"
    with psycopg.connect(conninfo(pipeline.settings), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
    with psycopg.connect(conninfo(pipeline.settings, dbname=scratch)) as seed_only:
        seed_only.execute(SEED_DDL)
        expected = _columns_and_constraints(seed_only)
    with pipeline.connect() as migrated:
        assert _columns_and_constraints(migrated) == expected
    assert len(expected) > 12


def test_a_run_refuses_a_database_behind_the_code_until_promo_db_upgrade(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database made before migrations (the same tables, no version): the run fails in one
    line naming the fix, having done nothing; `promo db upgrade` adopts it and the next run
    works."""
    pipeline.subscribe((SEED_CLIENT, SEED_CAMPAIGN["restaurant_id"]))
    pipeline.publish(SEED_CAMPAIGN)
    pipeline.sql("DROP TABLE promo.alembic_version")

    success, summary = run_job()
    assert not success
    [line] = [line for line in summary.splitlines() if "promo db upgrade" in line]
    with capsys.disabled():
        print(f"\n{line}")
    assert line.startswith("  FAILED before any step: database ")
    assert f"schema promo is at revision none, this code needs {head_revision()}" in line
    assert "this run did nothing" in line
    assert pipeline.pairs() == set()

    assert main(["db", "upgrade"]) == 0
    assert f"upgraded from none to {head_revision()}" in capsys.readouterr().out
    pipeline.run_ok()
    assert pipeline.pairs() == {(SEED_CAMPAIGN["adv_campaign_id"], SEED_CLIENT)}


LATER = '''"""A later revision, as another developer would add it: one file."""

from alembic import op

revision = "9999_later"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE promo.later (id int8 PRIMARY KEY)")
    op.execute("ALTER TABLE promo.campaigns ADD COLUMN later_note text")


def downgrade() -> None:
    op.execute("ALTER TABLE promo.campaigns DROP COLUMN later_note")
    op.execute("DROP TABLE promo.later")
'''


def test_a_later_revision_is_one_new_file(pipeline: Pipeline, tmp_path: Path) -> None:
    later = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), later, ignore=shutil.ignore_patterns("__pycache__"))
    head = head_revision()
    (later / "versions" / "9999_later.py").write_text(LATER.replace("{head}", head))
    assert head_revision(later) == "9999_later"

    behind = r"needs 9999_later; run `promo db upgrade`"
    with pipeline.connect() as conn, pytest.raises(SchemaVersionError, match=behind):
        check_schema(conn, later)
    assert upgrade(pipeline.settings, script_location=later) == (head, "9999_later")
    with pipeline.connect() as conn:
        assert check_schema(conn, later) == "9999_later"
        conn.execute("INSERT INTO promo.later VALUES (1)")
        # Code that knows only the baseline refuses the newer database, saying so.
        with pytest.raises(SchemaVersionError, match="newer than this code knows"):
            check_schema(conn)
