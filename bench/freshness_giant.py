"""Freshness beside a giant: under dagster-daemon, how long a small campaign published while a
huge fan-out is in progress takes to reach the output topic, and what the giant's fan-out costs.

One database holds `--giant` subscribers of one restaurant beside `--unrelated` subscriptions
of 100k others; the daemon runs on a fresh Dagster database (a copy of the repo's dagster.yaml,
both sensors on) with runs on a warm Spark Connect server. After a warm-up campaign, the giant's
campaign is published; once its walk has begun (its first slice committed), small campaigns (10
subscribers each, a restaurant of their own) are published at `--at` seconds into the fan-out.

A trigger is "in the output topic" when Kafka acknowledged it: the run deletes a slice's outbox
entry only then, so arrival is polled in Postgres (the campaign's rows written, no outbox entry
left) every 0.2 s rather than by reading the giant's millions of messages while it runs. At the
end both sinks are counted. Results: bench/results/<name>.json.

    .venv/bin/python bench/freshness_giant.py --giant 6000000 --unrelated 2000000 --budgets 20,0
    .venv/bin/python bench/freshness_giant.py --giant 1000000 --budgets 5   # develop
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as bm

from promo_pipeline.db import conninfo, init_db
from promo_pipeline.defs.resources import kafka_resource
from promo_pipeline.topics import ensure_topics

GIANT = "0f0f0f0f-0000-4000-8000-000000000006"
TEMPLATE = "bench_giant_template"
SMALL_SUBSCRIBERS = 10
# A small campaign's triggers are all acknowledged: rows written, none left in the outbox.
ARRIVED = """
SELECT (SELECT count(*) FROM public.subscribers_feedback WHERE adv_campaign_id = %(c)s) = %(n)s
   AND NOT EXISTS (SELECT 1 FROM promo.trigger_outbox WHERE adv_campaign_id = %(c)s)
"""
GIANT_DONE = """
SELECT fanout_through IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM promo.trigger_outbox WHERE adv_campaign_id = %(c)s)
FROM promo.campaigns WHERE adv_campaign_id = %(c)s
"""


def build_template(base: dict[str, str], giant: int, unrelated: int) -> float:
    """A database with the subscriptions (loading them is not timed), copied per measurement."""
    slot = bm.Slot(base, TEMPLATE, Path(tempfile.mkdtemp()))
    started = time.monotonic()
    with psycopg.connect(conninfo(slot.settings, dbname=base["POSTGRES_DB"]), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{TEMPLATE}"')
    init_db(slot.settings)
    with psycopg.connect(conninfo(slot.settings), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
            "SELECT gen_random_uuid()::text, md5((g %% 100000)::text)::uuid::text "
            "FROM generate_series(1, %s) g",
            (unrelated,),
        )
        conn.execute(
            "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
            "SELECT gen_random_uuid()::text, %s FROM generate_series(1, %s)",
            (GIANT, giant),
        )
        conn.execute("VACUUM ANALYZE public.subscribers_restaurants")
    return time.monotonic() - started


def prepare(base: dict[str, str], work: Path) -> bm.Slot:
    """A copy of the template, fresh topics and state dir."""
    name = f"bench_giant_{uuid.uuid4().hex[:6]}"
    slot = bm.Slot(base, name, work / name)
    with psycopg.connect(conninfo(slot.settings, dbname=base["POSTGRES_DB"]), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    ensure_topics(kafka_resource(slot.settings))
    slot.state_dir.mkdir(parents=True, exist_ok=True)
    return slot


def small_restaurant(slot: bm.Slot) -> str:
    restaurant = str(uuid.uuid4())
    with psycopg.connect(conninfo(slot.settings), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
            "SELECT gen_random_uuid()::text, %s FROM generate_series(1, %s)",
            (restaurant, SMALL_SUBSCRIBERS),
        )
    return restaurant


def publish(slot: bm.Slot, restaurant: str, campaign_id: str) -> float:
    producer = bm.Producer({"bootstrap.servers": slot.settings.kafka_bootstrap_servers})
    message = {**bm.data_campaign(restaurant), "adv_campaign_id": campaign_id}
    producer.produce(slot.settings.promo_input_topic, json.dumps(message).encode())
    published = time.time()
    assert producer.flush(10) == 0
    return published


def one(conn: psycopg.Connection, query: str, **params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def measure(
    args: argparse.Namespace, base: dict[str, str], work: Path, budget: int
) -> dict[str, Any]:
    slot = prepare(base, work)
    settings = slot.settings
    home = work / f"{slot.name}_dagster_home"
    home.mkdir()
    shutil.copyfile(bm.REPO / "dagster.yaml", home / "dagster.yaml")
    dagster_db = f"{slot.name}_dagster"
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dagster_db}"')
    env = {
        **slot.env,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_DB": dagster_db,
        "SPARK_MASTER": bm.CONNECT["url"],
        "PROMO_FANOUT_RUN_BUDGET_S": str(budget),
    }
    log = (work / f"{slot.name}_daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(Path(bm.PYTHON).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"],
        cwd=bm.REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    smalls: list[dict[str, Any]] = []
    giant_id = str(uuid.uuid4())
    try:
        with psycopg.connect(conninfo(settings), autocommit=True) as conn:
            # The daemon, its code server and the Connect server's first query: not measured.
            warm = str(uuid.uuid4())
            started = publish(slot, small_restaurant(slot), warm)
            wait_for(daemon, lambda: one(conn, ARRIVED, c=warm, n=SMALL_SUBSCRIBERS), 600)
            print(f"warm-up campaign arrived after {time.time() - started:.1f} s", flush=True)

            giant_published = publish(slot, GIANT, giant_id)
            wait_for(
                daemon,
                lambda: one(
                    conn,
                    "SELECT fanout_began IS NOT NULL OR fanout_through IS NOT NULL "
                    "FROM promo.campaigns WHERE adv_campaign_id = %(c)s",
                    c=giant_id,
                ),
                600,
            )
            # The walk's first slice is committed: the fan-out has begun.
            fanout_began = time.time()
            print(f"giant's fan-out began {fanout_began - giant_published:.1f} s after publishing")
            pending = sorted(args.at)
            giant_done = None
            while giant_done is None or any(s["arrived"] is None for s in smalls):
                assert daemon.poll() is None, "daemon died"
                now = time.time()
                if pending and now >= fanout_began + pending[0]:
                    campaign_id = str(uuid.uuid4())
                    restaurant = small_restaurant(slot)
                    smalls.append(
                        {
                            "at_s": pending.pop(0),
                            "campaign": campaign_id,
                            "published": publish(slot, restaurant, campaign_id),
                            "arrived": None,
                            "giant_in_progress": giant_done is None,
                        }
                    )
                for small in smalls:
                    if small["arrived"] is None and one(
                        conn, ARRIVED, c=small["campaign"], n=SMALL_SUBSCRIBERS
                    ):
                        small["arrived"] = time.time()
                        small["latency_s"] = round(small["arrived"] - small["published"], 2)
                        print(f"  small at {small['at_s']} s: {small['latency_s']} s", flush=True)
                if giant_done is None and one(conn, GIANT_DONE, c=giant_id):
                    giant_done = time.time()
                    print(f"giant done {giant_done - giant_published:.1f} s after publishing")
                if time.time() > fanout_began + args.timeout:
                    raise RuntimeError(f"not done within {args.timeout} s")
                time.sleep(0.2)
        runs = run_timeline(home, dagster_db, slot, giant_published)
        expected = args.giant + SMALL_SUBSCRIBERS * (len(smalls) + 1)
        verified = bm.verify(slot, expected)
    finally:
        bm.stop_process_group(daemon.pid, timeout=30)
        daemon.wait(10)
        bm.stop_leftovers(f"DAGSTER_HOME={home}".encode())
        log.close()
        if not args.keep:
            bm.drop(slot)
            admin = conninfo(settings, dbname=base["POSTGRES_DB"])
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dagster_db}" WITH (FORCE)')
    latencies = [s["latency_s"] for s in smalls if s["giant_in_progress"]]
    return {
        "giant_subscribers": args.giant,
        "unrelated_subscriptions": args.unrelated,
        "budget_s": budget,
        "giant_publish_to_walk_begun_s": round(fanout_began - giant_published, 2),
        "giant_publish_to_done_s": round(giant_done - giant_published, 2),
        "smalls": [
            {k: v for k, v in s.items() if k in ("at_s", "latency_s", "giant_in_progress")}
            for s in smalls
        ],
        "max_latency_beside_giant_s": max(latencies) if latencies else None,
        "runs": runs,
        **verified,
    }


def wait_for(daemon: subprocess.Popen[bytes], check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert daemon.poll() is None, "daemon died"
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s")
        time.sleep(0.2)


def run_timeline(home: Path, dagster_db: str, slot: bm.Slot, since: float) -> list[dict]:
    """The runs from the giant's publishing on: launch, start, end, who asked, what it wrote."""
    from dagster import DagsterEventType, RunsFilter

    instance = bm.instance_for(home, dagster_db, slot)
    runs = []
    for record in reversed(instance.get_run_records(RunsFilter(job_name="promo_job"))):
        created = record.create_timestamp.timestamp()
        if created < since:
            continue
        run = record.dagster_run
        entry = {
            "run": run.run_id[:8],
            "status": run.status.value,
            "sensor": run.tags.get("dagster/sensor_name", ""),
            "created_s": round(created - since, 1),
            "started_s": round(record.start_time - since, 1) if record.start_time else None,
            "ended_s": round(record.end_time - since, 1) if record.end_time else None,
        }
        for event in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
            materialization = event.asset_materialization
            key = materialization.asset_key.to_user_string() if materialization else ""
            if key in ("feedback_sink", "push_sink"):
                entry[key] = {
                    name: materialization.metadata[name].value
                    for name in ("rows_written", "sent_this_run", "slices", "seconds")
                    if name in materialization.metadata
                }
        runs.append(entry)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--giant", type=int, default=6_000_000)
    parser.add_argument("--unrelated", type=int, default=2_000_000)
    parser.add_argument(
        "--budgets",
        default="20",
        help="PROMO_FANOUT_RUN_BUDGET_S of each measurement, on copies of the same data (0: none)",
    )
    parser.add_argument(
        "--at",
        default="10,60",
        help="seconds into the giant's fan-out at which small campaigns are published",
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument(
        "--stack-dir", default=os.environ.get("PROMO_BENCH_STACK", "/tmp/promo-bench-stack")
    )
    parser.add_argument("--name", default="freshness_giant")
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs")
    args = parser.parse_args()
    args.at = [float(at) for at in args.at.split(",")]

    from promo_pipeline.stack import LocalStack

    stack = LocalStack(Path(args.stack_dir), spark="local")
    base = {k: v for k, v in stack.up().items() if not k.startswith("DAGSTER_")}
    work = Path(tempfile.mkdtemp(prefix="promo-giant-"))
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "load_before": bm.load_average(),
    }
    server = bm.start_connect(base, work, meta)
    results: list[dict[str, Any]] = []
    bm.RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        meta["template_s"] = round(build_template(base, args.giant, args.unrelated), 1)
        for budget in [int(b) for b in args.budgets.split(",")]:
            print(f"budget {budget} s", flush=True)
            results.append(measure(args, base, work, budget))
            print(json.dumps(results[-1], indent=2), flush=True)
            meta["load_after"] = bm.load_average()
            (bm.RESULTS / f"{args.name}.json").write_text(
                json.dumps({"meta": meta, "freshness_giant": results}, indent=2) + "\n"
            )
    finally:
        server.stop()
        if not args.keep:
            admin = conninfo(bm.Slot(base, TEMPLATE, work).settings, dbname=base["POSTGRES_DB"])
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
    print(f"wrote {bm.RESULTS / args.name}.json; logs in {work}")


if __name__ == "__main__":
    main()
