"""The Postgres sink's slice write alone, one writer, on the pipeline's own schema and queries:
`fanout.FULL_SLICE` (a plain INSERT, refused whole by the pair index if it would double a pair)
against `fanout.FULL_SLICE_SKIPPING` (ON CONFLICT DO NOTHING: a speculative insertion per row),
interleaved, each round walking one campaign of `--subscribers` from an emptied ledger. The
profile behind the plain first try (bench/README.md).

    .venv/bin/python bench/slice_insert.py [--subscribers 1000000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as bm
from fanout import CAMPAIGN, RESTAURANT

from promo_pipeline.db import conninfo, init_db
from promo_pipeline.fanout import (
    FULL_SLICE,
    FULL_SLICE_SKIPPING,
    _write_full_slice,
    plan_full_slices,
    record_window,
)
from promo_pipeline.ingest import FANOUT_COLUMNS
from promo_pipeline.message_shapes import CAMPAIGN_COLUMNS
from promo_pipeline.stack import LocalStack

QUERIES = {"plain INSERT": FULL_SLICE, "ON CONFLICT DO NOTHING": FULL_SLICE_SKIPPING}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--slice-rows", type=int, default=250_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--stack-dir", default=os.environ.get("PROMO_BENCH_STACK", "/tmp/promo-bench-stack")
    )
    args = parser.parse_args()
    base = {
        k: v
        for k, v in LocalStack(Path(args.stack_dir), spark="local").up().items()
        if not k.startswith("DAGSTER_")
    }
    slot = bm.Slot(base, f"bench_slice_{uuid.uuid4().hex[:6]}", Path(tempfile.mkdtemp()))
    admin = conninfo(slot.settings, dbname=base["POSTGRES_DB"])
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{slot.name}"')
    try:
        init_db(slot.settings)
        with psycopg.connect(conninfo(slot.settings), autocommit=True) as conn:
            load(conn, args.subscribers)
            for round_ in range(args.rounds):
                for name, query in QUERIES.items():
                    seconds = walk(conn, query, args.slice_rows)
                    rate = args.subscribers / seconds
                    print(
                        f"round {round_}  {name:<24}{seconds:>8.2f} s{rate:>10,.0f} rows/s"
                        f"  load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{slot.name}" WITH (FORCE)')


def load(conn: psycopg.Connection, subscribers: int) -> None:
    """The chain's subscribers beside as many unrelated ones, and its active campaign."""
    conn.execute(
        "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
        "SELECT gen_random_uuid()::text, %s FROM generate_series(1, %s) UNION ALL "
        "SELECT gen_random_uuid()::text, md5(g::text)::uuid::text FROM generate_series(1, %s) g",
        (RESTAURANT, subscribers, subscribers),
    )
    conn.execute("VACUUM ANALYZE public.subscribers_restaurants")
    conn.execute(
        f"INSERT INTO promo.campaigns ({', '.join(CAMPAIGN_COLUMNS)}, kafka_partition, "
        f"kafka_offset) VALUES ({', '.join(['%s'] * len(CAMPAIGN_COLUMNS))}, 0, 0)",
        [CAMPAIGN[name] for name in CAMPAIGN_COLUMNS],
    )


def walk(conn: psycopg.Connection, query: str, slice_rows: int) -> float:
    """The campaign's whole walk with `query`, from an empty ledger and no fan-out made."""
    conn.execute("TRUNCATE public.subscribers_feedback, promo.trigger_outbox")
    conn.execute(f"UPDATE promo.campaigns SET {', '.join(f'{c} = NULL' for c in FANOUT_COLUMNS)}")
    conn.execute("CHECKPOINT")
    window = record_window(conn, f"bench_{uuid.uuid4().hex[:6]}")
    started = time.monotonic()
    for plan in plan_full_slices(conn, window, slice_rows):
        _write_full_slice(conn, window, plan, query, True, lambda: None)
    seconds = time.monotonic() - started
    count = "SELECT count(*) FROM public.{} WHERE restaurant_id = %s"
    written, subscribers = (
        conn.execute(count.format(table), (RESTAURANT,)).fetchone()[0]
        for table in ("subscribers_feedback", "subscribers_restaurants")
    )
    assert written == subscribers, f"the walk wrote {written} rows for {subscribers} subscribers"
    return seconds


if __name__ == "__main__":
    main()
