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
from promo_pipeline.settings import Settings
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


# Every revision below the head, oldest first (a new migration adds its predecessor here;
# the test below checks the list is complete).
REVISIONS = [
    "0001_baseline",
    "0002_fanout_slices",
    "0003_input_position",
    "0004_unsent_triggers_view",
    "0005_dead_letters",
]


def test_every_revision_below_the_head_is_tested() -> None:
    from alembic.script import ScriptDirectory

    from promo_pipeline.db import alembic_config

    walked = [s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()]
    assert list(reversed(walked)) == [*REVISIONS, head_revision()]


def _schema(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a migration shapes in schemas promo and public: tables' columns, indexes,
    views, constraints."""
    schemas = ["promo", "public"]
    return {
        "columns": conn.execute(
            "SELECT table_schema, table_name, column_name, data_type, is_nullable, "
            "column_default FROM information_schema.columns WHERE table_schema = ANY(%s) "
            "ORDER BY 1, 2, 3",
            (schemas,),
        ).fetchall(),
        "indexes": conn.execute(
            "SELECT schemaname, indexname, indexdef FROM pg_indexes WHERE schemaname = ANY(%s) "
            "ORDER BY 1, 2",
            (schemas,),
        ).fetchall(),
        "views": conn.execute(
            "SELECT schemaname, viewname, definition FROM pg_views WHERE schemaname = ANY(%s) "
            "ORDER BY 1, 2",
            (schemas,),
        ).fetchall(),
        "constraints": conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace::regnamespace::text = ANY(%s) ORDER BY 1, 2",
            (schemas,),
        ).fetchall(),
    }


def _scratch(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, name: str) -> Settings:
    """A new empty database on the stack, which `promo db upgrade` (the env) now means."""
    scratch = f"{pipeline.settings.postgres_db}_{name}"
    with psycopg.connect(conninfo(pipeline.settings), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
    monkeypatch.setenv("POSTGRES_DB", scratch)
    return pipeline.settings.model_copy(update={"postgres_db": scratch})


@pytest.mark.parametrize("shape", ["built up to", "head schema, version row at"])
@pytest.mark.parametrize("revision", [None, *REVISIONS])
def test_promo_db_upgrade_from_every_revision_ends_at_the_head_schema(
    revision: str | None,
    shape: str,
    pipeline: Pipeline,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A database really built up to each revision, and one at the head whose version row
    says that revision (lost or set back): `promo db upgrade` brings both to the head schema,
    the same as a database made at the head, and a second upgrade changes nothing."""
    with pipeline.connect() as conn:
        expected = _schema(conn)
    settings = _scratch(pipeline, monkeypatch, "from")
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        if shape == "built up to":
            if revision is None:
                conn.execute(SEED_DDL)
            else:
                upgrade(settings, revision)
        else:
            upgrade(settings)
            if revision is None:
                conn.execute("DROP TABLE promo.alembic_version")
            else:
                conn.execute("UPDATE promo.alembic_version SET version_num = %s", (revision,))
        assert current_revision(conn) == revision
    assert main(["db", "upgrade"]) == 0, capsys.readouterr().err
    assert f"upgraded from {revision or 'none'} to {head_revision()}" in capsys.readouterr().out
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        assert _schema(conn) == expected
        assert current_revision(conn) == head_revision()
    assert main(["db", "upgrade"]) == 0
    assert "(up to date)" in capsys.readouterr().out


def test_promo_db_upgrade_failures_are_one_line_and_change_nothing(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A migration that refuses (undelivered triggers of the old outbox) and a database at a
    revision newer than the code: one line naming the cause, exit 1 (a runtime failure, not a
    usage error), the database as it was."""
    settings = _scratch(pipeline, monkeypatch, "fail")
    upgrade(settings, "0001_baseline")
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute("INSERT INTO promo.kafka_outbox_runs VALUES ('r', 1, 1, 2, 2)")
    assert main(["db", "upgrade"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "promo: `promo db upgrade` from revision 0001_baseline failed, nothing was changed: "
        "promo.kafka_outbox_runs holds undelivered triggers: run the previous version once to "
        "deliver them, then upgrade"
    ], err
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        assert current_revision(conn) == "0001_baseline"
        assert conn.execute("SELECT to_regclass('promo.trigger_outbox')").fetchone() == (None,)
        conn.execute("DELETE FROM promo.kafka_outbox_runs")
        upgrade(settings)
        conn.execute("UPDATE promo.alembic_version SET version_num = '9999_future'")
    assert main(["db", "upgrade"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"promo: database {settings.postgres_db} on "), err
    assert err.rstrip().endswith(
        f"schema promo is at revision 9999_future, newer than this code knows (its newest is "
        f"{head_revision()}); deploy the code that matches the database"
    ), err
