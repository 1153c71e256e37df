"""Backlog drain: a big pile of campaign messages and subscriptions, one `promo run`.

Publishes N campaign messages (a share of them invalid) and loads M subscriptions into a
private local stack, then runs the job once as a child process with a bounded
PROMO_MAX_OFFSETS_PER_TRIGGER, sampling the resident memory of the run's whole process tree
(Python driver, Spark JVM, Spark's Python workers) with psutil. Prints the peak RSS, the time to
drain and the counts, and checks the counts are exactly what the data implies.

Most campaigns are expired or held for later, as in a real backlog; only `--active-share` of
them fire, each to its restaurant's subscribers, so the trigger count stays sensible (reported).

    .venv/bin/python bench/backlog.py                       # 1,000,000 + 1,000,000
    .venv/bin/python bench/backlog.py --campaigns 100000 --subscriptions 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import psycopg
from confluent_kafka import Producer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from promo_pipeline.db import conninfo, init_db  # noqa: E402
from promo_pipeline.defs.resources import kafka_resource  # noqa: E402
from promo_pipeline.producers import produce_all  # noqa: E402
from promo_pipeline.settings import Settings  # noqa: E402
from promo_pipeline.stack import LocalStack  # noqa: E402
from promo_pipeline.topics import ensure_topics  # noqa: E402
from promo_pipeline_tests.support.stack import destroy  # noqa: E402

SUBSCRIBERS_PER_RESTAURANT = 10


def new_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def invalid_message(rng: random.Random, good: dict) -> bytes:
    """One of a few realistic kinds of bad message."""
    kind = rng.randrange(5)
    if kind == 0:
        return json.dumps(good).encode()[:-10]  # truncated
    if kind == 1:
        return json.dumps({**good, "adv_campaign_datetime_start": "yesterday"}).encode()
    if kind == 2:
        return json.dumps({k: v for k, v in good.items() if k != "adv_campaign_owner"}).encode()
    if kind == 3:
        return json.dumps({**good, "adv_campaign_id": "campaign-42"}).encode()
    return b"not json at all"


def generate(
    settings: Settings, campaigns: int, subscriptions: int, invalid_share: float,
    active_share: float, held_share: float, seed: int,
) -> dict[str, int]:  # fmt: skip
    """Load the subscriptions and publish the campaigns; returns what should come out."""
    rng = random.Random(seed)
    restaurants = [new_id(rng) for _ in range(max(1, subscriptions // SUBSCRIBERS_PER_RESTAURANT))]
    clients = [new_id(rng) for _ in range(max(1, subscriptions * 3 // 10))]
    started = time.monotonic()
    pairs: set[tuple[str, str]] = set()
    with (
        psycopg.connect(conninfo(settings)) as conn,
        conn.cursor() as cursor,
        cursor.copy(
            "COPY public.subscribers_restaurants (client_id, restaurant_id) FROM STDIN"
        ) as copy,
    ):
        for i in range(subscriptions):
            restaurant = restaurants[i % len(restaurants)]
            client = rng.choice(clients)
            pairs.add((client, restaurant))
            copy.write_row((client, restaurant))
    subscribers: dict[str, int] = {}
    for _, restaurant in pairs:
        subscribers[restaurant] = subscribers.get(restaurant, 0) + 1
    print(f"loaded {subscriptions:,} subscriptions in {time.monotonic() - started:.1f} s")

    now = int(time.time())
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "linger.ms": 50,
            "batch.size": 1 << 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    counts = {"invalid": 0, "active": 0, "held": 0, "expired": 0, "triggers": 0}
    started = time.monotonic()
    for _ in range(campaigns):
        restaurant = rng.choice(restaurants)
        roll = rng.random()
        if roll < active_share:
            start, end, state = now - 3600, now + 30 * 86400, "active"
        elif roll < active_share + held_share:
            start, end, state = now + 30 * 86400, now + 60 * 86400, "held"
        else:
            start = now - rng.randrange(2, 365) * 86400
            start, end, state = start, start + 86400, "expired"
        document = {
            "restaurant_id": restaurant,
            "adv_campaign_id": new_id(rng),
            "adv_campaign_content": f"promo {rng.randrange(10**6)}: -{rng.randrange(5, 60)}%",
            "adv_campaign_owner": "Ivanov Ivan Ivanovich",
            "adv_campaign_owner_contact": "iiivanov@restaurant.ru",
            "adv_campaign_datetime_start": start,
            "adv_campaign_datetime_end": end,
            "datetime_created": start - 86400,
        }
        if rng.random() < invalid_share:
            value, state = invalid_message(rng, document), "invalid"
        else:
            value = json.dumps(document).encode()
            if state == "active":
                counts["triggers"] += subscribers.get(restaurant, 0)
        counts[state] += 1
        produce_all(producer, settings.promo_input_topic, [(None, value)])
    if producer.flush(120):
        raise RuntimeError("could not publish the backlog")
    print(f"published {campaigns:,} campaign messages in {time.monotonic() - started:.1f} s")
    return counts


def tree_rss(root: int) -> dict[str, int]:
    """Resident bytes of `root` and its descendants, by kind (python / jvm / other)."""
    usage = {"python": 0, "jvm": 0, "other": 0}
    try:
        parent = psutil.Process(root)
        tree = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return usage
    for process in tree:
        try:
            name, rss = process.name(), process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        kind = "jvm" if name == "java" else "python" if name.startswith("python") else "other"
        usage[kind] += rss
    return usage


def drain(env: dict[str, str], log: Path) -> tuple[int, float, dict[str, int]]:
    """One `promo run`; returns exit code, seconds, and the peak RSS (total and by kind)."""
    peak = {"total": 0, "python": 0, "jvm": 0, "other": 0}
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "promo_pipeline.cli", "run"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                usage = tree_rss(proc.pid)
                peak["total"] = max(peak["total"], sum(usage.values()))
                for kind, value in usage.items():
                    peak[kind] = max(peak[kind], value)
                done.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    return code, time.monotonic() - started, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=1_000_000)
    parser.add_argument("--subscriptions", type=int, default=1_000_000)
    parser.add_argument("--invalid-share", type=float, default=0.02)
    parser.add_argument("--active-share", type=float, default=0.01)
    parser.add_argument("--held-share", type=float, default=0.07)
    parser.add_argument("--max-offsets-per-trigger", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stack-dir", type=Path, help="default: a temporary stack, removed")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    folder = args.stack_dir or Path(tempfile.mkdtemp(prefix="promo-backlog-"))
    stack = LocalStack(folder, spark="local")  # as measured: one local session per run
    try:
        stack_env = stack.up()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PROMO_", "KAFKA_"))},
            **stack_env,
            "PROMO_STACK_DIR": str(stack.dir),
            "PROMO_INPUT_TOPIC": f"backlog_campaigns_{args.seed}",
            "PROMO_OUTPUT_TOPIC": f"backlog_triggers_{args.seed}",
            "PROMO_DLQ_TOPIC": f"backlog_dlq_{args.seed}",
            "PROMO_MAX_OFFSETS_PER_TRIGGER": str(args.max_offsets_per_trigger),
        }
        settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})
        init_db(settings)
        ensure_topics(kafka_resource(settings))
        with psycopg.connect(conninfo(settings)) as conn:
            if conn.execute("SELECT count(*) FROM public.subscribers_restaurants").fetchone()[0]:
                raise SystemExit(f"{folder} already has data; use a fresh --stack-dir")
        counts = generate(
            settings, args.campaigns, args.subscriptions, args.invalid_share,
            args.active_share, args.held_share, args.seed,
        )  # fmt: skip
        log = stack.dir / "backlog-run.log"
        code, seconds, peak = drain(env, log)
        print(log.read_text(errors="replace")[-2500:])
        with psycopg.connect(conninfo(settings)) as conn:
            feedback, pairs = conn.execute(
                "SELECT count(*), count(DISTINCT (adv_campaign_id, client_id)) "
                "FROM public.subscribers_feedback"
            ).fetchone()
            campaigns = conn.execute("SELECT count(*) FROM promo.campaigns").fetchone()[0]
            batches, messages, rejected = conn.execute(
                "SELECT count(*), coalesce(sum(messages), 0)::int8, coalesce(sum("
                "(SELECT coalesce(sum(value::int), 0) FROM jsonb_each_text(rejected))), 0)::int8 "
                "FROM promo.campaign_batches"
            ).fetchone()
        valid = args.campaigns - counts["invalid"]
        figures = {
            "campaign_messages": args.campaigns,
            "subscriptions": args.subscriptions,
            "invalid_messages": counts["invalid"],
            "active_campaigns": counts["active"],
            "expected_triggers": counts["triggers"],
            "max_offsets_per_trigger": args.max_offsets_per_trigger,
            "exit_code": code,
            "drain_seconds": round(seconds, 1),
            "peak_rss_mib_total": round(peak["total"] / 2**20),
            "peak_rss_mib_jvm": round(peak["jvm"] / 2**20),
            "peak_rss_mib_python": round(peak["python"] / 2**20),
            "micro_batches": batches,
            "messages_read": messages,
            "rejected": rejected,
            "campaigns_stored": campaigns,
            "triggers_in_postgres": feedback,
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        problems = [
            f"{name}: got {got}, expected {want}"
            for name, got, want in [
                ("exit code", code, 0),
                ("messages read", messages, args.campaigns),
                ("rejected", rejected, counts["invalid"]),
                ("campaigns stored", campaigns, valid),
                ("triggers", feedback, counts["triggers"]),
                ("distinct pairs", pairs, counts["triggers"]),
                (
                    "micro-batches (at least)",
                    max(batches, -(-args.campaigns // args.max_offsets_per_trigger)),
                    batches,
                ),
            ]
            if got != want
        ]
        for problem in problems:
            print(f"MISMATCH {problem}", file=sys.stderr)
        return 1 if problems else 0
    finally:
        if args.stack_dir is None:
            destroy(stack)


if __name__ == "__main__":
    sys.exit(main())
