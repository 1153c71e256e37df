"""The trigger path in Postgres: which pairs are due at T, written slice by slice.

Every (campaign, subscriber) pair is joined, written and identified inside the database, so no
process ever holds a run's triggers or its subscribers: memory is one slice, whatever the size
of a restaurant. Each slice is one transaction that writes its triggers to the ledger
(never a pair already triggered), its outbox entry, and the fan-out
progress it made; a run that dies keeps every committed slice and the next run goes on from
the saved position.

Work follows what changed, never what exists:
- a campaign active at T whose full fan-out is not done (new, now due, or in progress) is
  walked through its restaurant's subscribers in client order, `slice_rows` at a time;
- a campaign already fanned out only needs the subscriptions added since: the serial
  `subscribers_restaurants.id` above its `fanout_through` watermark.

Functions take autocommit connections: each slice is its own `conn.transaction()`.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import psycopg
from psycopg import errors, sql

from promo_pipeline.campaign_rules import (
    DUE_FULL,
    NEW_FROM,
    NEW_SUBSCRIBER_JOIN,
    active_at,
    due_full_at,
    in_progress_at,
)
from promo_pipeline.message_shapes import TRIGGER_COLUMNS

DB_NOW = "SELECT floor(extract(epoch FROM clock_timestamp()))::int8"

_TRIGGER_COLUMNS = ", ".join(TRIGGER_COLUMNS)


def _select_fields(client: str) -> str:
    """A trigger row's columns: the campaign's own fields, the client, and T."""
    return ", ".join(
        client
        if name == "client_id"
        else "%(t)s::int8"
        if name == "trigger_datetime_created"
        else f"c.{name}"
        for name in TRIGGER_COLUMNS
    )


# One slice of the due full fan-outs: the next `rows` (campaign, subscriber) pairs, campaign by
# campaign in the due order and each campaign's subscribers in client order after its cursor.
# Index-only scans that stop once the slice is full, so a slice costs its own size whether it
# spans one national chain or a thousand corner shops. Returns each campaign's client range.
FULL_SLICE_PLAN = """
WITH pairs AS (
    SELECT d.n, s.client_id
    FROM (SELECT * FROM unnest(%(campaigns)s::text[], %(restaurants)s::text[], %(afters)s::text[])
          WITH ORDINALITY AS d(campaign, restaurant, after, n) ORDER BY n) d
    CROSS JOIN LATERAL (
        SELECT DISTINCT lower(x.client_id) AS client_id FROM public.subscribers_restaurants x
        WHERE lower(x.restaurant_id) = d.restaurant AND lower(x.client_id) > d.after
        ORDER BY 1 LIMIT %(rows)s) s
    ORDER BY d.n, s.client_id LIMIT %(rows)s
)
SELECT n, count(*), min(client_id), max(client_id) FROM pairs GROUP BY n ORDER BY n
"""
# The planned ranges' pairs, written in the pair index's order. A slice rarely meets a pair
# already triggered (only after a killed run whose later slices had committed, or a campaign moved
# back): it is a plain INSERT, which the unique index refuses whole if it would double a pair,
# and a refused slice is written again skipping them (FULL_SLICE_SKIPPING: ON CONFLICT, whose
# speculative insertion costs a third more per row). Not an anti-join: planned on a ledger still
# empty at planning time, it probed by campaign alone, and a writer scanned every row the other
# writers were adding, once per subscriber (a 250k slice stalled for minutes).
FULL_SLICE_SKIPPING = f"""
WITH written AS (
    INSERT INTO public.subscribers_feedback ({_TRIGGER_COLUMNS})
    SELECT {_select_fields("slice.client_id")}
    FROM unnest(%(campaigns)s::text[], %(firsts)s::text[], %(lasts)s::text[])
         WITH ORDINALITY AS g(campaign, first, last, n)
    JOIN promo.campaigns c ON c.adv_campaign_id = g.campaign
    CROSS JOIN LATERAL (
        SELECT DISTINCT lower(x.client_id) AS client_id FROM public.subscribers_restaurants x
        WHERE lower(x.restaurant_id) = lower(c.restaurant_id)
          AND lower(x.client_id) BETWEEN g.first AND g.last) slice
    ORDER BY g.n, slice.client_id
    ON CONFLICT (adv_campaign_id, client_id) DO NOTHING
    RETURNING adv_campaign_id
)
SELECT adv_campaign_id, count(*) FROM written GROUP BY 1
"""
FULL_SLICE = FULL_SLICE_SKIPPING.replace(
    "    ON CONFLICT (adv_campaign_id, client_id) DO NOTHING\n", ""
)
# The unique index that keeps one ledger row per (campaign, client).
PAIR_KEY = "subscribers_feedback_campaign_client_key"
# Fan-out progress of the campaigns a slice reached: finished (with the watermark their walk
# started from) or, for the one the slice ended in, the cursor to go on from, with what
# `promo status` shows of it: when the walk began, the subscribers walked, and the restaurant's
# subscribers when it began (one index count, taken only by a walk that spans slices).
FULL_SLICE_PROGRESS = """
UPDATE promo.campaigns c
SET fanout_through = CASE WHEN p.cursor IS NULL THEN coalesce(c.fanout_started_at, %(w)s) END,
    fanout_started_at = CASE WHEN p.cursor IS NULL THEN NULL
                             ELSE coalesce(c.fanout_started_at, %(w)s) END,
    fanout_cursor = p.cursor,
    fanout_began = CASE WHEN p.cursor IS NOT NULL THEN coalesce(c.fanout_began, now()) END,
    fanout_done = CASE WHEN p.cursor IS NOT NULL THEN coalesce(c.fanout_done, 0) + p.walked END,
    fanout_total = CASE WHEN p.cursor IS NOT NULL THEN coalesce(c.fanout_total, (
        SELECT count(DISTINCT lower(x.client_id)) FROM public.subscribers_restaurants x
        WHERE lower(x.restaurant_id) = lower(c.restaurant_id))) END
FROM unnest(%(campaigns)s::text[], %(cursors)s::text[], %(walked)s::int8[])
     AS p(campaign, cursor, walked)
WHERE c.adv_campaign_id = p.campaign
"""

# One slice of new subscriptions (ids in (lo, hi]) for every active campaign already fanned
# out below hi: a primary-key range scan, joined with the active campaigns.
NEW_SLICE = f"""
WITH written AS (
    INSERT INTO public.subscribers_feedback ({_TRIGGER_COLUMNS})
    SELECT DISTINCT {_select_fields("lower(s.client_id)")}
    {NEW_SUBSCRIBER_JOIN}
    ORDER BY 2, 8
    ON CONFLICT (adv_campaign_id, client_id) DO NOTHING
    RETURNING adv_campaign_id, client_id
)
SELECT adv_campaign_id, min(client_id), max(client_id), count(*) FROM written GROUP BY 1
"""

OUTBOX_ENTRY = """
INSERT INTO promo.trigger_outbox
    (run_id, adv_campaign_id, client_first, client_last, trigger_time, triggers)
VALUES (%s, %s, %s, %s, %s, %s)
"""
# Outbox entries Kafka acknowledged: forgotten only then, by the sender or by push_sink.
OUTBOX_SENT = "DELETE FROM promo.trigger_outbox WHERE slice_id = ANY(%s)"

FANOUTS_IN_PROGRESS = f"SELECT count(*) FROM promo.campaigns WHERE {in_progress_at('%(t)s')}"
# Campaigns not yet started while another's walk is in progress: published during a giant's
# fan-out. DUE_FULL puts them first, so the run's first full-fan-out slice serves them.
NEW_BESIDE_WALK = f"""
SELECT bool_or(fanout_cursor IS NULL) AND bool_or(fanout_cursor IS NOT NULL)
FROM promo.campaigns WHERE {due_full_at("%(t)s")}
"""

# How many subscribers each due full fan-out still walks: its restaurant's index range after
# the campaign's cursor, counted as the slices will walk it (distinct clients).
DUE_PAIRS = """
SELECT d.n, s.n
FROM unnest(%(restaurants)s::text[], %(afters)s::text[]) WITH ORDINALITY AS d(restaurant, after, n)
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM (
        SELECT DISTINCT lower(x.client_id) FROM public.subscribers_restaurants x
        WHERE lower(x.restaurant_id) = d.restaurant AND lower(x.client_id) > d.after) c) s
"""
# How many new subscriptions up to W join each fanned-out campaign (distinct clients).
DUE_NEW = f"""
SELECT c.adv_campaign_id, count(DISTINCT lower(s.client_id)) {NEW_SUBSCRIBER_JOIN} GROUP BY 1
"""

# The output messages of the outbox slices, read back from the ledger: the key and the seed's
# JSON, built by Postgres from the stored row (row_to_json keeps the column order and writes
# it compactly), so a first send and any resend are the same bytes. A JDBC "table": readers
# add `WHERE slice_id = ...`, which Postgres pushes down to the outbox's primary key. Each
# slice is its own range scan of the pair index (`OFFSET 0` keeps the planner from turning it
# into a join it cannot estimate, which chose a scan of the whole ledger for one new message).
_MESSAGE_FIELDS = ", ".join("f." + name for name in TRIGGER_COLUMNS)
OUTBOX_MESSAGES = f"""(
    SELECT o.slice_id, f.client_id AS key, row_to_json(m)::text AS value
    FROM promo.trigger_outbox o
    CROSS JOIN LATERAL (
        SELECT * FROM public.subscribers_feedback x
        WHERE x.adv_campaign_id = o.adv_campaign_id
          AND x.client_id BETWEEN o.client_first AND o.client_last
          AND x.trigger_datetime_created = o.trigger_time
        OFFSET 0) f,
    LATERAL (SELECT {_MESSAGE_FIELDS}) m
) outbox_messages"""


@dataclass(frozen=True)
class Window:
    """A run's trigger time T (the database's clock, shared by every host) and the
    subscriber watermark W: subscriptions with an id up to W are part of this run."""

    run_id: str
    trigger_time: int
    subscriber_watermark: int
    settled: bool = True


def db_now(conn: psycopg.Connection) -> int:
    """Seconds since the epoch by the database's clock: one clock for every host."""
    return int(conn.execute(DB_NOW).fetchone()[0])


def unsent_triggers(conn: psycopg.Connection, run_id: str | None = None) -> int:
    """Triggers committed to Postgres that Kafka has not acknowledged yet: all of them, or
    those of run `run_id`. The outbox's own counts, so the ledger is not scanned."""
    query = "SELECT coalesce(sum(triggers), 0)::int8 FROM promo.trigger_outbox"
    if run_id is None:
        return int(conn.execute(query).fetchone()[0])
    return int(conn.execute(query + " WHERE run_id = %s", (run_id,)).fetchone()[0])


def settled_watermark(conn: psycopg.Connection, timeout_s: float = 10.0) -> tuple[int, bool]:
    """The highest subscription id, once every writer that may hold a lower one has ended.

    A serial id is taken before its row commits: a transaction still open when max(id) is read
    may commit a lower id later, and a watermark past it would skip that subscriber for ever.
    Returns (W, settled); not settled means a writer stayed open past `timeout_s`.
    """
    snapshot, watermark = conn.execute(
        "SELECT pg_current_snapshot()::text, "
        "coalesce((SELECT max(id) FROM public.subscribers_restaurants), 0)"
    ).fetchone()
    deadline = time.monotonic() + timeout_s
    while True:
        open_writers = conn.execute(
            "SELECT count(*) FROM pg_snapshot_xip(%s::pg_snapshot) x "
            "WHERE pg_xact_status(x) = 'in progress'",
            (snapshot,),
        ).fetchone()[0]
        if not open_writers:
            return int(watermark), True
        if time.monotonic() > deadline:
            return int(watermark), False
        time.sleep(0.1)


def record_window(conn: psycopg.Connection, run_id: str) -> Window:
    """Take T and W now and store them as the current run's window. While a writer is still
    open W stays where the last run left it: later is safe, skipping a subscriber is not."""
    watermark, settled = settled_watermark(conn)
    if not settled:
        previous = conn.execute("SELECT subscriber_watermark FROM promo.trigger_window").fetchone()
        watermark = min(watermark, previous[0]) if previous else 0
    now = db_now(conn)
    conn.execute(
        "INSERT INTO promo.trigger_window (run_id, trigger_time, subscriber_watermark) "
        "VALUES (%s, %s, %s) ON CONFLICT (singleton) DO UPDATE SET run_id = excluded.run_id, "
        "trigger_time = excluded.trigger_time, "
        "subscriber_watermark = excluded.subscriber_watermark, recorded_at = now()",
        (run_id, now, watermark),
    )
    return Window(run_id, now, watermark, settled)


def run_window(conn: psycopg.Connection, run_id: str) -> Window:
    """This run's stored window; an asset materialized on its own takes a fresh one."""
    row = conn.execute(
        "SELECT trigger_time, subscriber_watermark FROM promo.trigger_window WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    return Window(run_id, *row) if row else record_window(conn, run_id)


def move_id_sequence_past_manual_rows(conn: psycopg.Connection) -> tuple[int, int] | None:
    """Rows written by hand with an explicit id above the ledger's sequence would make an insert
    fail once the sequence reaches them: move the sequence past them first.

    Returns (sequence was at, now at) when it moved. Two index lookups, whatever the size.
    """
    sequence = conn.execute(
        "SELECT pg_get_serial_sequence('public.subscribers_feedback', 'id')"
    ).fetchone()[0]
    [(last, called)] = conn.execute(
        sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(*sequence.split(".")))
    ).fetchall()
    highest = conn.execute("SELECT max(id) FROM public.subscribers_feedback").fetchone()[0]
    at = last if called else last - 1
    if highest is None or highest <= at:
        return None
    conn.execute("SELECT setval(%s, %s)", (sequence, highest))
    return at, highest


def _outbox(
    conn: psycopg.Connection, window: Window, campaign: str, first: str, last: str, count: int
) -> None:
    conn.execute(OUTBOX_ENTRY, (window.run_id, campaign, first, last, window.trigger_time, count))


def new_subscription_slices(
    conn: psycopg.Connection, window: Window, slice_rows: int
) -> Iterator[dict[str, int]]:
    """Triggers for subscriptions added since each fanned-out campaign's watermark, a slice of
    `slice_rows` ids at a time, each slice committed with its outbox entries; yields each
    slice's triggers per campaign."""
    params = {"t": window.trigger_time, "w": window.subscriber_watermark}
    lo = conn.execute(NEW_FROM, params).fetchone()[0]
    while lo is not None and lo < window.subscriber_watermark:
        hi = min(lo + slice_rows, window.subscriber_watermark)
        with conn.transaction():
            written = conn.execute(NEW_SLICE, {**params, "lo": lo, "hi": hi}).fetchall()
            for campaign, first, last, count in written:
                _outbox(conn, window, campaign, first, last, count)
            conn.execute(
                "UPDATE promo.campaigns SET fanout_through = %(hi)s "
                f"WHERE {active_at('%(t)s')} AND fanout_through < %(hi)s",
                {**params, "hi": hi},
            )
        yield {row[0]: row[3] for row in written}
        lo = hi


@dataclass(frozen=True)
class FullSlice:
    """One planned slice of the due full fan-outs: each campaign's client range and pair count,
    and the fan-out progress it makes (`touched` campaigns, the last one left at `cursor`;
    None: finished; `walked`: subscribers walked per campaign, for `promo status`)."""

    ranges: dict[str, tuple[str, str]]
    pairs: int
    touched: list[str]
    cursor: str | None
    walked: dict[str, int]


def due_full(conn: psycopg.Connection, window: Window) -> dict[str, int]:
    """Per campaign due a full fan-out, the subscribers its walk still reaches. A count of each
    restaurant's range of the subscriber index, after the campaign's cursor."""
    due = conn.execute(DUE_FULL, {"t": window.trigger_time}).fetchall()
    if not due:
        return {}
    counts = conn.execute(
        DUE_PAIRS, {"restaurants": [row[1] for row in due], "afters": [row[2] for row in due]}
    )
    return {due[n - 1][0]: int(count) for n, count in counts}


def due_new(conn: psycopg.Connection, window: Window) -> dict[str, int]:
    """Per fanned-out campaign, the subscribers added up to W that join it: a range scan of the
    subscriptions above the lowest watermark."""
    params = {"t": window.trigger_time, "w": window.subscriber_watermark}
    lo = conn.execute(NEW_FROM, params).fetchone()[0]
    if lo is None:
        return {}
    rows = conn.execute(DUE_NEW, {**params, "lo": lo, "hi": window.subscriber_watermark})
    return {campaign: int(count) for campaign, count in rows}


def due_full_pairs(conn: psycopg.Connection, window: Window) -> int:
    """The subscribers still to walk in the due full fan-outs: the progress lines' total."""
    return sum(due_full(conn, window).values())


def plan_full_slices(
    conn: psycopg.Connection, window: Window, slice_rows: int
) -> Iterator[FullSlice]:
    """The due full fan-outs cut into slices of `slice_rows` pairs, in the walk's order. Only
    reads the subscriber index, so it can run ahead of the slices' writers."""
    due = [list(row) for row in conn.execute(DUE_FULL, {"t": window.trigger_time})]
    while due:
        planned = conn.execute(
            FULL_SLICE_PLAN,
            {
                "campaigns": [row[0] for row in due],
                "restaurants": [row[1] for row in due],
                "afters": [row[2] for row in due],
                "rows": slice_rows,
            },
        ).fetchall()
        pairs = sum(count for _, count, _, _ in planned)
        full = pairs >= slice_rows
        # A full slice may have cut its last campaign short: every campaign before that one
        # is done, and every due campaign is when the slice is not full.
        reached = planned[-1][0] if full else len(due)
        ranges = {due[n - 1][0]: (first, last) for n, _, first, last in planned}
        touched = [row[0] for row in due[:reached]]
        cursor = ranges[touched[-1]][1] if full else None
        walked = {due[n - 1][0]: count for n, count, _, _ in planned}
        yield FullSlice(ranges, pairs, touched, cursor, walked)
        due = due[reached - 1 :] if full else []
        if due:
            due[0][2] = cursor


def write_full_slice(
    conn: psycopg.Connection,
    window: Window,
    plan: FullSlice,
    *,
    with_progress: bool,
    before_commit: Callable[[], None] = lambda: None,
) -> dict[str, int]:
    """One slice in one transaction: its pairs not yet triggered and their outbox entries, and
    its fan-out progress when `with_progress` (a lone writer); returns triggers per campaign.
    Pairs already in the ledger are skipped, so a slice written again after a kill adds none."""
    try:
        return _write_full_slice(conn, window, plan, FULL_SLICE, with_progress, before_commit)
    except errors.UniqueViolation as error:
        if error.diag.constraint_name != PAIR_KEY:
            raise
    # Rolled back: some of its pairs are triggered already. Written again, skipping them.
    return _write_full_slice(conn, window, plan, FULL_SLICE_SKIPPING, with_progress, before_commit)


def _write_full_slice(
    conn: psycopg.Connection,
    window: Window,
    plan: FullSlice,
    query: str,
    with_progress: bool,
    before_commit: Callable[[], None],
) -> dict[str, int]:
    with conn.transaction():
        written: dict[str, int] = {}
        if plan.ranges:
            written = dict(
                conn.execute(
                    query,
                    {
                        "campaigns": list(plan.ranges),
                        "firsts": [first for first, _ in plan.ranges.values()],
                        "lasts": [last for _, last in plan.ranges.values()],
                        "t": window.trigger_time,
                    },
                ).fetchall()
            )
        for campaign, count in written.items():
            # The rows of the range stamped T are exactly this slice's.
            _outbox(conn, window, campaign, *plan.ranges[campaign], count)
        if with_progress:
            save_full_progress(conn, window, plan)
        before_commit()
    return written


def save_full_progress(conn: psycopg.Connection, window: Window, plan: FullSlice) -> None:
    """The fan-out position after `plan`: saved only once it and every slice before it are
    committed, so a run that dies resumes at or before its first uncommitted slice."""
    conn.execute(
        FULL_SLICE_PROGRESS,
        {
            "campaigns": plan.touched,
            "cursors": [None] * (len(plan.touched) - 1) + [plan.cursor],
            "walked": [plan.walked.get(campaign, 0) for campaign in plan.touched],
            "w": window.subscriber_watermark,
        },
    )


class FanoutProgress:
    """Progress lines of a fan-out: pairs done of the total, rate and ETA, written through `log`
    at most and (while `tick` is called) at least every `every_s` seconds."""

    def __init__(self, log: Callable[[str], None], label: str, every_s: float) -> None:
        self.log, self.label, self.every_s = log, label, every_s
        self.total = self.done = 0
        self.started = self.last = time.monotonic()

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = self.last = time.monotonic()

    def advance(self, pairs: int) -> None:
        self.done += pairs
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        if self.total and now - self.last >= self.every_s:
            self.last = now
            self.log(self.line(now))

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        left = max(self.total - self.done, 0)
        eta = f"ETA {left / rate:,.0f} s" if rate else "ETA unknown"
        return (
            f"{self.label}: {self.done:,} / {self.total:,} triggers "
            f"({100 * self.done / self.total:.1f}%), {rate:,.0f}/s, {eta}"
        )

    def next_due(self) -> float:
        """Seconds until the next line is due (how long a wait may block)."""
        return max(self.last + self.every_s - time.monotonic(), 0.0) if self.total else 1.0


def full_fanout_slices(
    conn: psycopg.Connection,
    window: Window,
    slice_rows: int,
    *,
    writers: int = 1,
    connect: Callable[[], psycopg.Connection] | None = None,
    progress: FanoutProgress | None = None,
    before_commit: Callable[[], None] = lambda: None,
    after_commit: Callable[[], None] = lambda: None,
) -> Iterator[dict[str, int]]:
    """Every due campaign's full fan-out, `slice_rows` pairs per committed slice; yields each
    slice's triggers per campaign, in the walk's order, once its progress is saved.

    One writer writes each slice and its progress in one transaction on `conn`. Several writers
    (each on its own connection from `connect`, the work being in their backends) write the
    planned slices concurrently, commit in any order, and the progress moves only past the
    slices committed without a gap, so a new run resumes where nothing after is missing. Each
    writer calls `after_commit` as soon as its slice is committed, in whatever order.
    """
    if progress is not None:
        progress.start(due_full_pairs(conn, window))
    plans = plan_full_slices(conn, window, slice_rows)
    if writers <= 1 or connect is None:
        for plan in plans:
            written = write_full_slice(
                conn, window, plan, with_progress=True, before_commit=before_commit
            )
            if progress is not None:
                progress.advance(plan.pairs)
            yield written
        return
    idle: queue.SimpleQueue[psycopg.Connection] = queue.SimpleQueue()
    opened: list[psycopg.Connection] = []

    def write(plan: FullSlice) -> dict[str, int]:
        try:
            writer = idle.get_nowait()
        except queue.Empty:
            writer = connect()
            opened.append(writer)
        try:
            written = write_full_slice(
                writer, window, plan, with_progress=False, before_commit=before_commit
            )
        finally:
            idle.put(writer)
        after_commit()
        return written

    pool = ThreadPoolExecutor(writers, thread_name_prefix="feedback_writer")
    # Planned slices are a few strings each; twice the writers keeps each one busy.
    in_flight: deque[tuple[FullSlice, Future[dict[str, int]]]] = deque()
    try:
        for plan in plans:
            in_flight.append((plan, pool.submit(write, plan)))
            while len(in_flight) >= 2 * writers:
                yield _committed(conn, window, in_flight.popleft(), progress)
        while in_flight:
            yield _committed(conn, window, in_flight.popleft(), progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for writer in opened:
            writer.close()


def _committed(
    conn: psycopg.Connection,
    window: Window,
    entry: tuple[FullSlice, Future[dict[str, int]]],
    progress: FanoutProgress | None,
) -> dict[str, int]:
    """The oldest slice in flight once committed, its progress saved; progress lines go on
    while it is waited for."""
    plan, future = entry
    while True:
        try:
            written = future.result(timeout=progress.next_due() if progress else None)
            break
        except FutureTimeout:
            progress.tick()  # type: ignore[union-attr]
    save_full_progress(conn, window, plan)
    if progress is not None:
        progress.advance(plan.pairs)
    return written
