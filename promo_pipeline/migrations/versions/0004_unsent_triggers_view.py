"""The view of the pending triggers is named for what it lists, the triggers Kafka has not
acknowledged yet, apart from the outbox table `promo.trigger_outbox` it reads.

Revision ID: 0004_unsent_triggers_view
Revises: 0003_input_position
"""

from alembic import op

revision = "0004_unsent_triggers_view"
down_revision = "0003_input_position"
branch_labels = None
depends_on = None


# Renames view `old` to `new`; where `new` already exists (a database adopted by `promo db
# upgrade` after its version table was lost, where 0002 made `old` again) `old` is dropped.
RENAME_VIEW = """DO $$
BEGIN
    IF to_regclass('promo.{new}') IS NULL THEN
        ALTER VIEW IF EXISTS promo.{old} RENAME TO {new};
    ELSE
        DROP VIEW IF EXISTS promo.{old};
    END IF;
END $$"""


def upgrade() -> None:
    op.execute(RENAME_VIEW.format(old="kafka_outbox", new="unsent_triggers"))


def downgrade() -> None:
    op.execute(RENAME_VIEW.format(old="unsent_triggers", new="kafka_outbox"))
