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


def upgrade() -> None:
    op.execute("ALTER VIEW IF EXISTS promo.kafka_outbox RENAME TO unsent_triggers")


def downgrade() -> None:
    op.execute("ALTER VIEW IF EXISTS promo.unsent_triggers RENAME TO kafka_outbox")
