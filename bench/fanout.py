"""Fan-out benchmark: one campaign of one restaurant (a national chain) beside unrelated
subscriptions.

Side by side (the default, `--contenders promo,seed,raw`): for each size, on the same data and
interleaved (the order turns from size to size), the pipeline (`promo_job` in a fresh process
on a warm Spark Connect server), the seed's design (bench/seed_query.py on seed-only DDL) and
the raw contender (COPY + confluent-kafka), each on its own database and topics, through
bench/benchmark.py's contender runs: wall time, triggers/s, peak RSS, each stage's seconds,
both sinks verified, and the ratios. Results: bench/results/<name>.json and .png.

    .venv/bin/python bench/fanout.py [--sizes 1000000,6000000] [--unrelated 2000000]

The pipeline alone (`--contenders promo`): each size from a template database, then the steady
state at the largest size (the sensor's check and the run after one new subscription).

    .venv/bin/python bench/fanout.py --contenders promo --sizes 10000000 --unrelated 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as bm

from promo_pipeline.db import conninfo, init_db
from promo_pipeline.defs.resources import kafka_resource, postgres_resource
from promo_pipeline.settings import checkpoint_dir
from promo_pipeline.topics import ensure_topics
from promo_pipeline.work import find_work

RESTAURANT = "0f0f0f0f-0000-4000-8000-000000000001"
TEMPLATE = "bench_fanout_template"
CAMPAIGN = {
    **bm.data_campaign(RESTAURANT),
    "adv_campaign_id": "0f0f0f0f-0000-4000-8000-00000000c001",
}


@dataclass(frozen=True)
class Chain(bm.Size):
    """One campaign of one restaurant with `subscribers`, beside `subscriptions - subscribers`
    unrelated subscriptions of 100k other restaurants."""

    subscribers: int = 0

    @property
    def triggers(self) -> int:
        return self.subscribers


def chain_data(subscribers: int, unrelated: int, seed: int = 6) -> bm.Data:
    """The same rows for every contender: the chain's subscribers, then the unrelated ones."""
    rng = random.Random(f"{seed}-{subscribers}")

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    others = [new_id() for _ in range(100_000)]
    lines = [f"{new_id()},{RESTAURANT}\n" for _ in range(subscribers)]
    lines += [f"{new_id()},{others[i % len(others)]}\n" for i in range(unrelated)]
    shape = Chain(f"{subscribers // 1_000_000}M", 1, 1, subscribers + unrelated, subscribers)
    bm.SIZES[shape.name] = shape  # so benchmark.py's summary and chart list it
    return bm.Data(shape, [CAMPAIGN], "".join(lines).encode())


def compare(args: argparse.Namespace, base: dict[str, str], work: Path, meta: dict) -> None:
    """Every contender on every size, interleaved; the summary as benchmark.py prints it, and
    the results file rewritten after each size (a machine this shared may not see the end)."""
    contenders = args.contenders.split(",")
    results: list[bm.Result] = []
    if set(bm.ON_CONNECT) & set(contenders):
        bm.warm_up(base, work)
    sizes = [int(size) for size in args.sizes.split(",")]
    for turn, size in enumerate(sizes):
        data = chain_data(size, args.unrelated)
        print(f"{data.size.name}: {size:,} triggers beside {args.unrelated:,}", flush=True)
        order = contenders[turn % len(contenders) :] + contenders[: turn % len(contenders)]
        for contender in order:
            load_before = bm.load_average()
            try:
                results.append(bm.run_contender(contender, data, base, work, 0))
                done = results[-1]
                done.extra["load"] = [load_before, bm.load_average()]
                print(
                    f"    peak RSS {done.peak_rss_mb:,.0f} MB, stages {done.stages}, "
                    f"load {load_before:.1f} -> {bm.load_average():.1f}",
                    flush=True,
                )
            except RuntimeError as error:  # reported, and missing from the table
                print(f"  {data.size.name} {contender}: FAILED: {error}", flush=True)
                bm.FAILURES.append(f"{data.size.name} {contender}: {error}")
        del data
        meta["load_after"] = bm.load_average()
        meta["sizes_done"] = sizes[: turn + 1]
        rows = bm.summarise(results)
        print()
        bm.print_table(rows)
        summary = {
            "meta": meta,
            "summary": rows,
            "failures": bm.FAILURES,
            "runs": [asdict(r) for r in results],
        }
        bm.RESULTS.mkdir(parents=True, exist_ok=True)
        (bm.RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
        bm.chart(rows, bm.RESULTS / f"{args.name}.png")
        print(f"\nwrote {bm.RESULTS / args.name}.json and .png", flush=True)


def build_template(base: dict[str, str], unrelated: int) -> float:
    """A database holding `unrelated` subscriptions of 100k other restaurants, copied per size."""
    slot = bm.Slot(base, TEMPLATE, Path(tempfile.mkdtemp()))
    admin_info = conninfo(slot.settings, dbname=base["POSTGRES_DB"])
    started = time.monotonic()
    with psycopg.connect(admin_info, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    init_db(slot.settings)
    with psycopg.connect(conninfo(slot.settings), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
            "SELECT gen_random_uuid()::text, md5((g %% 100000)::text)::uuid::text "
            "FROM generate_series(1, %s) g",
            (unrelated,),
        )
        conn.execute("VACUUM ANALYZE public.subscribers_restaurants")
    return time.monotonic() - started


def prepare(base: dict[str, str], work: Path, subscribers: int) -> bm.Slot:
    name = f"bench_fanout_{subscribers}"
    slot = bm.Slot(base, name, work / name)
    with psycopg.connect(
        conninfo(slot.settings, dbname=base["POSTGRES_DB"]), autocommit=True
    ) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    with psycopg.connect(conninfo(slot.settings), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
            "SELECT gen_random_uuid()::text, %s FROM generate_series(1, %s)",
            (RESTAURANT, subscribers),
        )
        conn.execute("VACUUM ANALYZE public.subscribers_restaurants")
    ensure_topics(kafka_resource(slot.settings))
    producer = bm.Producer({"bootstrap.servers": slot.settings.kafka_bootstrap_servers})
    producer.produce(slot.settings.promo_input_topic, json.dumps(CAMPAIGN))
    assert producer.flush(30) == 0
    slot.state_dir.mkdir(parents=True, exist_ok=True)
    return slot


def run(slot: bm.Slot, work: Path, label: str) -> dict[str, Any]:
    env = {**slot.env, "SPARK_MASTER": bm.CONNECT["url"]}
    args = [bm.PYTHON, str(Path(bm.__file__).resolve()), "--child", "promo"]
    wall, peak, report = bm.run_child(args, env, work / f"{label}.log", int(bm.CONNECT["pid"]))
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak / 2**20), **report}


def tick(slot: bm.Slot) -> tuple[float, list[str]]:
    """The sensor's check, timed as one tick makes it."""
    settings = slot.settings
    checkpoint = str(checkpoint_dir(settings.promo_state_dir))
    started = time.monotonic()
    work = find_work(kafka_resource(settings), postgres_resource(settings), checkpoint)
    return time.monotonic() - started, work.reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000000,6000000")
    parser.add_argument("--unrelated", type=int, default=2_000_000)
    parser.add_argument("--contenders", default="promo,seed,raw")
    parser.add_argument(
        "--stack-dir", default=os.environ.get("PROMO_BENCH_STACK", "/tmp/promo-bench-stack")
    )
    parser.add_argument("--name", help="result file name (default: fanout_compare / fanout)")
    parser.add_argument(
        "--promo-spark",
        choices=["connect", "local"],
        default="connect",
        help="side by side: promo's runs on a warm Spark Connect server (the stack's default) or "
        "each with its own local session",
    )
    args = parser.parse_args()
    if args.promo_spark == "local":
        bm.promo_on_local_sessions()
    sizes = [int(size) for size in args.sizes.split(",")]

    from promo_pipeline.stack import LocalStack

    stack = LocalStack(Path(args.stack_dir), spark="local")
    base = {k: v for k, v in stack.up().items() if not k.startswith("DAGSTER_")}
    work = Path(tempfile.mkdtemp(prefix="promo-fanout-"))
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "load_before": bm.load_average(),
        "unrelated_subscriptions": args.unrelated,
        "promo_spark": args.promo_spark,
    }
    if args.contenders != "promo":
        args.name = args.name or "fanout_compare"
        on_connect = set(bm.ON_CONNECT) & set(args.contenders.split(","))
        server = bm.start_connect(base, work, meta) if on_connect else None
        try:
            compare(args, base, work, meta)
        finally:
            if server is not None:
                server.stop()
        return
    args.name = args.name or "fanout"
    server = bm.start_connect(base, work, meta)
    rows: list[dict[str, Any]] = []
    steady: dict[str, Any] = {}
    try:
        meta["template_s"] = round(build_template(base, args.unrelated), 1)
        # The Connect server's first streaming query pays its warm-up: not part of a size.
        warmup = prepare(base, work, 1000)
        run(warmup, work, "warmup")
        bm.drop(warmup)
        for size in sizes:
            slot = prepare(base, work, size)
            result = run(slot, work, f"fanout_{size}")
            verified = bm.verify(slot, size)
            rows.append(
                {
                    "subscribers": size,
                    "wall_s": result["wall_s"],
                    "peak_rss_mb": result["peak_rss_mb"],
                    "triggers_per_s": round(size / result["wall_s"]),
                    "stages": {k: round(v, 2) for k, v in result["stages"].items()},
                    **verified,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            if size == max(sizes):
                idle_s, idle_reasons = tick(slot)
                with psycopg.connect(conninfo(slot.settings), autocommit=True) as conn:
                    conn.execute(
                        "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
                        "VALUES (gen_random_uuid()::text, %s)",
                        (RESTAURANT,),
                    )
                tick_s, reasons = tick(slot)
                result = run(slot, work, "steady")
                steady = {
                    "triggered_pairs": size,
                    "tick_idle_s": round(idle_s, 3),
                    "tick_idle_reasons": idle_reasons,
                    "tick_s": round(tick_s, 3),
                    "tick_reasons": reasons,
                    "run_wall_s": result["wall_s"],
                    "run_peak_rss_mb": result["peak_rss_mb"],
                    "run_stages": {k: round(v, 2) for k, v in result["stages"].items()},
                    **bm.verify(slot, size + 1),
                }
                print(json.dumps(steady), flush=True)
            bm.drop(slot)
    finally:
        server.stop()
    meta["load_after"] = bm.load_average()
    summary = {"meta": meta, "fanout": rows, "steady_state": steady}
    bm.RESULTS.mkdir(parents=True, exist_ok=True)
    (bm.RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(rows, steady)
    chart(rows, bm.RESULTS / f"{args.name}.png")


def print_table(rows: list[dict[str, Any]], steady: dict[str, Any]) -> None:
    print(f"\n{'subscribers':>12} {'wall s':>8} {'peak RSS MB':>12} {'trig/s':>9} {'ok':>4}")
    for row in rows:
        print(
            f"{row['subscribers']:>12,} {row['wall_s']:>8.1f} {row['peak_rss_mb']:>12,} "
            f"{row['triggers_per_s']:>9,} {'yes' if row['ok'] else 'NO':>4}"
        )
    if rows:
        first, last = rows[0], rows[-1]
        print(
            f"\n{last['subscribers']:,} vs {first['subscribers']:,}: time x"
            f"{last['wall_s'] / first['wall_s']:.2f}, peak RSS x"
            f"{last['peak_rss_mb'] / first['peak_rss_mb']:.2f}"
        )
    if steady:
        print(
            f"steady state at {steady['triggered_pairs']:,} triggered: one new subscription, "
            f"tick {steady['tick_s']:.3f} s (idle tick {steady['tick_idle_s']:.3f} s), run "
            f"{steady['run_wall_s']:.1f} s, ok {steady['ok']}"
        )


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    if (plt := bm.pyplot()) is None:
        return
    sizes = [row["subscribers"] / 1e6 for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [row["wall_s"] for row in rows], "o-")
    left.set(xlabel="subscribers of the campaign (M)", ylabel="run wall time (s)")
    right.plot(sizes, [row["peak_rss_mb"] for row in rows], "o-", color="tab:red")
    right.set(xlabel="subscribers of the campaign (M)", ylabel="peak RSS, run + Spark (MB)")
    right.set_ylim(bottom=0)
    fig.suptitle("promo_pipeline fan-out of one campaign (beside 10M unrelated subscriptions)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
