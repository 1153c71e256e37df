"""The input's position history: the topic's identity (Kafka topic id), the offsets each run
read, and what happened to the input (a recreated topic, a retention gap, a rewind).

Revision ID: 0003_input_position
Revises: 0002_fanout_slices
"""

from alembic import op

revision = "0003_input_position"
down_revision = "0002_fanout_slices"
branch_labels = None
depends_on = None

UPGRADE = [
    # The input topic's identity (Kafka topic id): a new id means the topic was recreated.
    """CREATE TABLE IF NOT EXISTS promo.input_topics (
        topic text PRIMARY KEY,
        topic_id text NOT NULL,
        first_seen timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
    # Which offsets of which topic each run read.
    """CREATE TABLE IF NOT EXISTS promo.input_offsets (
        run_id text NOT NULL,
        topic text NOT NULL,
        topic_id text NOT NULL,
        partition int4 NOT NULL,
        start_offset int8 NOT NULL,
        end_offset int8 NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, topic, partition)
    )""",
    # What happened to the input: topic_recreated, retention_gap (offsets lost), rewind.
    """CREATE TABLE IF NOT EXISTS promo.input_events (
        id bigserial PRIMARY KEY,
        run_id text,
        topic text NOT NULL,
        kind text NOT NULL,
        detail jsonb NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
    )""",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for table in ("input_events", "input_offsets", "input_topics"):
        op.execute(f"DROP TABLE IF EXISTS promo.{table}")
