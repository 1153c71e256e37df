"""Alembic's environment: online only, on the connection `promo_pipeline.db.upgrade` opens,
in its one transaction (Postgres DDL is transactional: a failed revision leaves nothing
behind); the version table lives in `promo`."""

from alembic import context
from sqlalchemy import text

from promo_pipeline.db import VERSION_SCHEMA, VERSION_TABLE

if context.is_offline_mode():
    raise RuntimeError("promo_pipeline migrations run online only: use `promo db upgrade`")

connection = context.config.attributes["connection"]
# The version table's own schema must exist before Alembic looks for the table.
connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {VERSION_SCHEMA}"))
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    version_table_schema=VERSION_SCHEMA,
)
with context.begin_transaction():
    context.run_migrations()
