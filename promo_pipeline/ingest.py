"""Campaign ingest: what each micro-batch of the input does (validate, fold the valid campaigns
into promo.campaigns, set the invalid ones aside in the DLQ with their reason) and what a run
read. Runs inside Spark's foreachBatch, so it holds no Dagster object."""

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Self

import psycopg
from psycopg.types.json import Jsonb
from pyspark.sql import DataFrame

from promo_pipeline.campaign_rules import cancelled as cancelled_rule
from promo_pipeline.campaign_rules import state_counts
from promo_pipeline.fanout import db_now
from promo_pipeline.faultpoints import fault_point, fault_rows
from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.message_shapes import (
    CAMPAIGN_COLUMNS,
    Campaign,
    Rejection,
    cancelled,
    parse_campaign,
)
from promo_pipeline.producers import DEAD_LETTERS, Sender

log = logging.getLogger(__name__)

STATE_COLUMNS = (*CAMPAIGN_COLUMNS, "kafka_partition", "kafka_offset")

# The fan-out made so far stays valid while the restaurant stays the same (a new window or text
# changes no pair); a campaign moved to another restaurant is fanned out afresh.
FANOUT_COLUMNS = (
    "fanout_through",
    "fanout_cursor",
    "fanout_started_at",
    "fanout_began",
    "fanout_done",
    "fanout_total",
)
_KEEP_FANOUT = (
    "CASE WHEN lower(excluded.restaurant_id) = lower(promo.campaigns.restaurant_id) "
    "THEN promo.campaigns.{name} END"
)


def version_order(table: str) -> str:
    """The order of a campaign's versions (README, "Campaign versions") as a SQL row value of
    `table`'s columns: the larger `datetime_created` first; at an equal one a cancellation
    (end <= start) before a live version; then the content itself (its hash), so two different
    versions never tie. It depends on what a version says, never on where it was read
    (partition, offset: a rewind or a recreated topic changes those), so the same versions
    read in any order or batching leave the same one stored, and a re-read undoes nothing."""
    fields = ", ".join(
        f"lower({table}.{name})" if name == "restaurant_id" else f"{table}.{name}"
        for name in CAMPAIGN_COLUMNS
        if name not in ("adv_campaign_id", "datetime_created")
    )
    return (
        f"({table}.datetime_created, "
        f"{cancelled_rule(table)}, "
        f'md5(json_build_array({fields})::text) COLLATE "C")'
    )


# The greatest version of each campaign in the batch, stored if it is at least the stored one
# (equal means the same content: a replay changes nothing).
UPSERT_CAMPAIGNS = f"""
INSERT INTO promo.campaigns ({", ".join(STATE_COLUMNS)})
SELECT DISTINCT ON (adv_campaign_id) {", ".join(STATE_COLUMNS)} FROM campaign_in
ORDER BY adv_campaign_id, {version_order("campaign_in")} DESC, kafka_partition, kafka_offset
ON CONFLICT (adv_campaign_id) DO UPDATE SET
    {", ".join(f"{name} = excluded.{name}" for name in STATE_COLUMNS if name != "adv_campaign_id")},
    updated_at = now(),
    {", ".join(f"{name} = {_KEEP_FANOUT.format(name=name)}" for name in FANOUT_COLUMNS)}
WHERE {version_order("excluded")} >= {version_order("promo.campaigns")}
"""


@dataclass(frozen=True)
class IngestTarget:
    """Everything a micro-batch needs, picklable: under Spark Connect the batch function runs
    in a Python worker next to the server, not in this process."""

    conninfo: str
    kafka: KafkaConfig = field(repr=False)  # secrets among them
    run_id: str
    topic_id: str = ""  # the input topic's Kafka id: dead letters are known by it


@dataclass
class CampaignTally:
    """What the micro-batches of one run did, summed from promo.campaign_batches."""

    batches: int = 0
    messages: int = 0
    valid: int = 0
    campaigns_changed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @classmethod
    def of_run(cls, conninfo: str, run_id: str) -> Self:
        tally = cls()
        with psycopg.connect(conninfo) as conn:
            for messages, valid, changed, rejected in conn.execute(
                "SELECT messages, valid, campaigns_changed, rejected "
                "FROM promo.campaign_batches WHERE run_id = %s",
                (run_id,),
            ):
                tally.batches += 1
                tally.messages += messages
                tally.valid += valid
                tally.campaigns_changed += changed
                tally.rejected.update(rejected)
        return tally


def dead_letter_headers(why: Rejection, source: str, topic_id: str) -> list[tuple[str, bytes]]:
    """A rejected message's headers in the DLQ: the reason and the origin (topic, its id,
    partition, offset). It is sent once per origin, however often the input is re-read
    (promo.dead_letters records each origin in the batch's transaction)."""
    return [
        ("promo.reject.code", why.code.encode()),
        ("promo.reject.reason", str(why).encode()),
        ("promo.source", source.encode()),
        ("promo.source.topic_id", topic_id.encode()),
    ]


# Of a batch's rejected origins, those already in the DLQ (sent by an earlier read).
SENT_BEFORE = """
SELECT d.partition, d."offset" FROM promo.dead_letters d
JOIN unnest(%(partitions)s::int4[], %(offsets)s::int8[]) AS o(p, o)
  ON d.partition = o.p AND d."offset" = o.o
WHERE d.topic = %(topic)s AND d.topic_id = %(topic_id)s
"""
RECORD_DEAD_LETTERS = """
INSERT INTO promo.dead_letters (topic, topic_id, partition, "offset", code)
SELECT %(topic)s, %(topic_id)s, o.p, o.o, o.code
FROM unnest(%(partitions)s::int4[], %(offsets)s::int8[], %(codes)s::text[]) AS o(p, o, code)
ON CONFLICT DO NOTHING
"""


def dead_lettered_before(
    conninfo: str, topic: str, topic_id: str, origins: list[tuple[int, int]]
) -> set[tuple[int, int]]:
    """The (partition, offset) origins of `topic` (this id) already sent to the DLQ."""
    if not origins:
        return set()
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            SENT_BEFORE,
            {
                "topic": topic,
                "topic_id": topic_id,
                "partitions": [p for p, _ in origins],
                "offsets": [o for _, o in origins],
            },
        ).fetchall()
    return {(p, o) for p, o in rows}


def known_campaigns(conninfo: str, outcomes: list[tuple[Any, ...]]) -> set[str]:
    """Of the ids in end <= start messages, those already stored or valid in this batch: only
    a campaign that exists can be cancelled; for any other id it stays a producer error."""
    candidates = {
        o.fields.adv_campaign_id
        for o, *_ in outcomes
        if isinstance(o, Rejection) and o.fields is not None
    }
    if not candidates:
        return set()
    in_batch = {o.adv_campaign_id for o, *_ in outcomes if isinstance(o, Campaign)}
    with psycopg.connect(conninfo) as conn:
        stored = {
            row[0]
            for row in conn.execute(
                "SELECT adv_campaign_id FROM promo.campaigns WHERE adv_campaign_id = ANY(%s)",
                (list(candidates),),
            )
        }
    return (stored | in_batch) & candidates


RECORD_BATCH = """
INSERT INTO promo.campaign_batches
    (run_id, batch_id, messages, valid, campaigns_changed, rejected)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (run_id, batch_id) DO UPDATE SET
    messages = excluded.messages, valid = excluded.valid,
    campaigns_changed = excluded.campaigns_changed, rejected = excluded.rejected
"""


def store_campaigns(conn: psycopg.Connection, valid: list[tuple[Campaign, int, int]]) -> int:
    """Fold (campaign, partition, offset) versions into promo.campaigns inside the caller's
    transaction; returns how many campaigns were written."""
    if not valid:
        return 0
    conn.execute(
        "CREATE TEMP TABLE campaign_in (LIKE promo.campaigns INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    with conn.cursor().copy(f"COPY campaign_in ({', '.join(STATE_COLUMNS)}) FROM STDIN") as copy:
        for campaign, partition, offset in valid:
            copy.write_row((*campaign.model_dump().values(), partition, offset))
    return conn.execute(UPSERT_CAMPAIGNS).rowcount


def ingest_batch(batch: DataFrame, batch_id: int, target: IngestTarget) -> None:
    """One micro-batch: reject to the DLQ first, then upsert the valid campaigns.

    Both steps are idempotent, so a batch replayed after a crash changes nothing twice; the
    one exception: a crash after the DLQ acknowledged a batch's rejects and before the
    batch's transaction recorded them sends them once more when the batch is replayed (the
    other order could lose a reject).
    """
    batch = fault_rows(batch, "campaign_batch")  # test-only; no-op unless PROMO_FAULT_AT is set
    table = batch.select("key", "value", "topic", "partition", "offset").toArrow()
    columns = [table.column(name).to_pylist() for name in table.column_names]
    valid: list[tuple[Campaign, int, int]] = []
    rejected: Counter[str] = Counter()
    dead_letters = Sender(target.kafka, target.kafka.dlq_topic, DEAD_LETTERS)
    outcomes = [
        (parse_campaign(value), key, value, topic, partition, offset)
        for key, value, topic, partition, offset in zip(*columns, strict=True)
    ]
    known = known_campaigns(target.conninfo, outcomes)
    cancels = 0
    rejects = []
    for outcome, key, value, topic, partition, offset in outcomes:
        if isinstance(outcome, Campaign):
            valid.append((outcome, partition, offset))
        elif outcome.fields is not None and outcome.fields.adv_campaign_id in known:
            # end <= start for a campaign we know: its cancellation, stored so it never fires
            # (the upsert keeps it only if it is at least as new as the stored version).
            valid.append((cancelled(outcome.fields), partition, offset))
            cancels += 1
        else:
            rejected[outcome.code] += 1
            rejects.append((outcome, key, value, topic, partition, offset))
    input_topic = rejects[0][3] if rejects else ""
    sent_before = dead_lettered_before(
        target.conninfo, input_topic, target.topic_id, [(r[4], r[5]) for r in rejects]
    )
    for outcome, key, value, topic, partition, offset in rejects:
        if (partition, offset) not in sent_before:
            source = f"{topic}/{partition}/{offset}"
            headers = dead_letter_headers(outcome, source, target.topic_id)
            dead_letters.send([(key, value)], headers)
    if len(rejects) > len(sent_before):
        dead_letters.flush()
    with psycopg.connect(target.conninfo) as conn, conn.transaction():
        changed = store_campaigns(conn, valid)
        if rejects:
            conn.execute(
                RECORD_DEAD_LETTERS,
                {
                    "topic": input_topic,
                    "topic_id": target.topic_id,
                    "partitions": [r[4] for r in rejects],
                    "offsets": [r[5] for r in rejects],
                    "codes": [r[0].code for r in rejects],
                },
            )
        conn.execute(
            RECORD_BATCH,
            (target.run_id, batch_id, table.num_rows, len(valid), changed, Jsonb(rejected)),
        )
    log.info(
        "campaign micro-batch %s: %s messages, %s valid (%s cancellations), %s campaigns "
        "changed, rejected %s (%s of them already in the DLQ from an earlier read)",
        batch_id,
        table.num_rows,
        len(valid),
        cancels,
        changed,
        dict(rejected) or 0,
        len(sent_before),
    )
    fault_point("campaign_batch.committed")  # test-only; no-op unless PROMO_FAULT_AT is set


def offsets_read(
    progress: list[dict[str, Any]],
    before: dict[tuple[str, int], int],
    after: dict[tuple[str, int], int],
    initial: dict[tuple[str, int], int] | None = None,
) -> dict[int, tuple[int, int]]:
    """Per partition, the first offset this run read and the exclusive end: the checkpoint's
    position before and after the run; on a fresh checkpoint the start comes from the
    query's first progress report, else from where the query started (`initial`, Spark's
    sources/0/0: after a rewind to the end, the end), else 0."""
    initial = initial or {}
    first: dict[tuple[str, int], int] = {}
    for report in progress:
        for source in report.get("sources", []):
            start = source.get("startOffset")
            if isinstance(start, str):
                start = json.loads(start)
            for topic, partitions in (start or {}).items():
                for partition, offset in partitions.items():
                    first.setdefault((topic, int(partition)), int(offset))
    return {
        partition: (
            before.get((topic, partition), first.get((topic, partition), 0))
            if (topic, partition) in before or (topic, partition) in first
            else min(end, initial.get((topic, partition), 0)),
            end,
        )
        for (topic, partition), end in sorted(after.items())
    }


# Of the campaigns whose stored version came from the offsets this run read: how many are
# active, held, expired and cancelled at `now`.
CAMPAIGN_WINDOWS = f"""
SELECT {state_counts("%(now)s", "c")}
FROM promo.campaigns c
JOIN unnest(%(partitions)s::int[], %(starts)s::int8[], %(ends)s::int8[]) AS r(p, s, e)
  ON c.kafka_partition = r.p AND c.kafka_offset >= r.s AND c.kafka_offset < r.e
"""


def campaign_windows(
    conninfo: str, ranges: dict[int, tuple[int, int]]
) -> tuple[int, int, int, int]:
    """(active, held, expired, cancelled) among the campaigns read in `ranges`, now by the
    database's clock (the one the triggers use); all 0 when nothing was read."""
    ranges = {p: (start, end) for p, (start, end) in ranges.items() if end > start}
    if not ranges:
        return 0, 0, 0, 0
    with psycopg.connect(conninfo) as conn:
        active, held, expired, withdrawn = conn.execute(
            CAMPAIGN_WINDOWS,
            {
                "now": db_now(conn),
                "partitions": list(ranges),
                "starts": [start for start, _ in ranges.values()],
                "ends": [end for _, end in ranges.values()],
            },
        ).fetchone()
    return active, held, expired, withdrawn


def root_cause(error: BaseException) -> str:
    """The first line of Spark's error, without the query ids and the JVM stack: the one line
    a failed run reports."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    return first.split("terminated with exception: ", 1)[-1][:500]
