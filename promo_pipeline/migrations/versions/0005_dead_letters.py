"""Dead letters by origin: each rejected input message (topic id, partition, offset) is sent
to the DLQ once however often the input is re-read, and re-sent by `promo dlq replay` once.

Revision ID: 0005_dead_letters
Revises: 0004_unsent_triggers_view
"""

from alembic import op

revision = "0005_dead_letters"
down_revision = "0004_unsent_triggers_view"
branch_labels = None
depends_on = None

UPGRADE = [
    # One row per dead-lettered origin. `replayed_at`: when `promo dlq replay` re-sent it.
    # `topic_id` is '' for DLQ messages written before this revision (no id in their headers).
    """CREATE TABLE IF NOT EXISTS promo.dead_letters (
        topic text NOT NULL,
        topic_id text NOT NULL,
        partition int4 NOT NULL,
        "offset" int8 NOT NULL,
        code text NOT NULL,
        dead_lettered_at timestamptz NOT NULL DEFAULT now(),
        replayed_at timestamptz,
        PRIMARY KEY (topic, topic_id, partition, "offset")
    )""",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS promo.dead_letters")
