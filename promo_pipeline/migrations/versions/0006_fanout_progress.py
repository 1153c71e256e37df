"""Progress of a full fan-out in progress, for `promo status`: when its walk began (wall
clock), how many subscribers it has walked, and how many the restaurant had when it began.
Kept up to date by each slice, so reading them costs a few rows, not a count over the ledger.

Revision ID: 0006_fanout_progress
Revises: 0005_dead_letters
"""

from alembic import op

revision = "0006_fanout_progress"
down_revision = "0005_dead_letters"
branch_labels = None
depends_on = None

COLUMNS = {
    "fanout_began": "timestamptz",
    "fanout_done": "int8",
    "fanout_total": "int8",
}


def upgrade() -> None:
    for name, kind in COLUMNS.items():
        op.execute(f"ALTER TABLE promo.campaigns ADD COLUMN IF NOT EXISTS {name} {kind}")


def downgrade() -> None:
    for name in COLUMNS:
        op.execute(f"ALTER TABLE promo.campaigns DROP COLUMN IF EXISTS {name}")
