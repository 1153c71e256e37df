"""Benchmark: promo_pipeline vs the seed's streaming query vs the raw limit of the sinks.

Same generated data, same local stack, contenders interleaved. Each contender runs in its own
process (as the sensor's run would), on a fresh database and fresh topics; the process tree's
peak RSS is sampled with psutil. After each run both sinks are counted: Postgres must hold
exactly one row per expected trigger, Kafka at least one message per trigger.

    .venv/bin/python bench/benchmark.py              # quick: small + medium, 1 repetition
    .venv/bin/python bench/benchmark.py --full       # small, medium, large; 3 repetitions
    .venv/bin/python bench/benchmark.py --freshness  # daemon + sensor, >= 10 trials

Results: bench/results/<name>.json and .png; a table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from promo_pipeline.db import SEED_DDL, conninfo, init_db  # noqa: E402
from promo_pipeline.defs.resources import kafka_resource  # noqa: E402
from promo_pipeline.message_shapes import TRIGGER_COLUMNS  # noqa: E402
from promo_pipeline.producers import produce_all  # noqa: E402
from promo_pipeline.settings import Settings, load_settings  # noqa: E402
from promo_pipeline.stack._proc import stop_process_group  # noqa: E402
from promo_pipeline.topics import ensure_topics  # noqa: E402

PYTHON = sys.executable
CONTENDERS = ("promo", "promo-overlap", "promo-local", "seed", "raw")
# Warm Spark Connect server contenders: the pipeline, and the same with the Kafka send of committed
# slices overlapping the writes (PROMO_SEND_DURING_WRITE=1, off by default).
ON_CONNECT = ["promo", "promo-overlap"]


def promo_on_local_sessions() -> None:
    """Run promo and promo-overlap each with its own local Spark session instead (as promo-local):
    on a machine too loaded for the Connect server's foreachBatch worker to connect back."""
    ON_CONNECT.clear()


FAILURES: list[str] = []
# The warm Spark Connect server of the "promo" contender (as `promo stack up` runs one).
CONNECT: dict[str, str] = {}
# --profile: each promo run writes a cProfile file next to its log (implies --keep).
PROFILE = False
RESULTS = REPO / "bench" / "results"
START, END, CREATED = 1659203516, 2659207116, 1659131516  # the seed's sample window


@dataclass(frozen=True)
class Size:
    name: str
    campaigns: int
    restaurants: int
    subscriptions: int

    @property
    def triggers(self) -> int:
        per_restaurant = self.subscriptions // self.restaurants
        return self.campaigns * per_restaurant


SIZES = {
    "small": Size("small", 1, 1, 10),
    "medium": Size("medium", 1000, 1000, 100_000),
    "large": Size("large", 2000, 2000, 1_000_000),
}


@dataclass
class Data:
    """Deterministic data of one size: campaign messages and subscription rows (CSV)."""

    size: Size
    campaigns: list[dict[str, Any]]
    subscriptions_csv: bytes


def generate(size: Size, seed: int = 4) -> Data:
    rng = random.Random(f"{seed}-{size.name}")

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    restaurants = [new_id() for _ in range(size.restaurants)]
    per_client = min(3, size.restaurants)  # distinct (client, restaurant) pairs by construction
    clients = [new_id() for _ in range(-(-size.subscriptions // per_client))]
    buffer = io.StringIO()
    for i in range(size.subscriptions):
        buffer.write(f"{clients[i // per_client]},{restaurants[i % size.restaurants]}\n")
    campaigns = [
        {
            "restaurant_id": restaurants[c % size.restaurants],
            "adv_campaign_id": new_id(),
            "adv_campaign_content": f"campaign {c}: -70% on the new dish until 14:00",
            "adv_campaign_owner": "Ivanov Ivan Ivanovich",
            "adv_campaign_owner_contact": "iiivanov@restaurant.ru",
            "adv_campaign_datetime_start": START,
            "adv_campaign_datetime_end": END,
            "datetime_created": CREATED + c,
        }
        for c in range(size.campaigns)
    ]
    return Data(size, campaigns, buffer.getvalue().encode())


# -- the stack and one contender's private slice of it ---------------------------------------


@dataclass
class Slot:
    """A fresh database, topics and state dir for one run of one contender."""

    base: dict[str, str]
    name: str
    state_dir: Path

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KAFKA_", "POSTGRES_", "PROMO_", "DAGSTER_", "SPARK_"))
        }
        return {
            **env,
            **self.base,
            "POSTGRES_DB": self.name,
            "PROMO_INPUT_TOPIC": f"{self.name}_in",
            "PROMO_OUTPUT_TOPIC": f"{self.name}_out",
            "PROMO_DLQ_TOPIC": f"{self.name}_dlq",
            "PROMO_STATE_DIR": str(self.state_dir),
            "PYTHONPATH": str(REPO),
        }

    @property
    def settings(self) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(self.env)
            return load_settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)


def prepare(slot: Slot, data: Data, *, seed_ddl_only: bool) -> None:
    """Database with the subscriptions, topics, campaigns published; none of it is timed."""
    settings = slot.settings
    with psycopg.connect(
        conninfo(settings, dbname=slot.base["POSTGRES_DB"]), autocommit=True
    ) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{slot.name}"')
        admin.execute(f'CREATE DATABASE "{slot.name}"')
    if seed_ddl_only:
        with psycopg.connect(conninfo(settings), autocommit=True) as conn:
            conn.execute(SEED_DDL)
    else:
        init_db(settings)
    with psycopg.connect(conninfo(settings)) as conn:
        with conn.cursor().copy(
            "COPY public.subscribers_restaurants (client_id, restaurant_id) FROM STDIN (FORMAT csv)"
        ) as copy:
            copy.write(data.subscriptions_csv)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE public.subscribers_restaurants")
    ensure_topics(kafka_resource(settings))
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "linger.ms": 20, "acks": "all"}
    )
    for message in data.campaigns:
        producer.produce(settings.promo_input_topic, json.dumps(message).encode())
    assert producer.flush(60) == 0
    slot.state_dir.mkdir(parents=True, exist_ok=True)


def drop(slot: Slot) -> None:
    settings = slot.settings
    with psycopg.connect(
        conninfo(settings, dbname=slot.base["POSTGRES_DB"]), autocommit=True
    ) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{slot.name}" WITH (FORCE)')
    admin_client = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    topics = [settings.promo_input_topic, settings.promo_output_topic, settings.promo_dlq_topic]
    for future in admin_client.delete_topics(topics, operation_timeout=30).values():
        with contextlib.suppress(Exception):  # a topic that was never created
            future.result(30)
    shutil.rmtree(slot.state_dir, ignore_errors=True)


def topic_messages(settings: Settings, topic: str) -> int:
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "bench-count"}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def verify(slot: Slot, expected: int) -> dict[str, Any]:
    """Both sinks after a run: Postgres exactly one row per pair, Kafka at least one each."""
    settings = slot.settings
    with psycopg.connect(conninfo(settings)) as conn:
        rows, pairs = conn.execute(
            "SELECT count(*), count(DISTINCT (adv_campaign_id, client_id)) "
            "FROM public.subscribers_feedback"
        ).fetchone()
    messages = topic_messages(settings, settings.promo_output_topic)
    ok = rows == expected and pairs == expected and messages >= expected
    return {"ok": ok, "pg_rows": rows, "pg_pairs": pairs, "kafka_messages": messages}


# -- running a contender in its own process ---------------------------------------------------


class PeakRss:
    """Peak summed RSS of a process and all its descendants (Python driver + JVM)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for process in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# On a loaded machine the Connect server's foreachBatch worker can miss the server's fixed
# connect-back timeout, failing the run's first step before it wrote anything: the same run is
# tried again (its "failed_attempts" are in the results), as a retry under the daemon would.
CONNECT_BACK = "Python worker failed to connect back"
CONNECT_BACK_ATTEMPTS = 4


def run_child(
    args: list[str], env: dict[str, str], log: Path, also: int | None = None
) -> tuple[float, int, dict]:
    """Run one contender; returns wall seconds, peak RSS bytes (of the child's process tree,
    plus the tree of `also`, the Connect server that holds its driver) and its JSON report."""
    for attempt in range(1, CONNECT_BACK_ATTEMPTS + 1):
        started = time.monotonic()
        with log.open("w") as out:
            child = subprocess.Popen(
                args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=out, text=True
            )
            rss = [PeakRss(child.pid)] + ([PeakRss(also)] if also else [])
            stdout, _ = child.communicate()
        wall = time.monotonic() - started
        peak = sum(r.stop() for r in rss)
        if child.returncode == 0:
            report = json.loads(stdout.strip().splitlines()[-1])
            return wall, peak, {**report, "failed_attempts": attempt - 1}
        if attempt == CONNECT_BACK_ATTEMPTS or CONNECT_BACK not in log.read_text(errors="replace"):
            break
        print(
            f"  attempt {attempt} failed before any write: {CONNECT_BACK} (load "
            f"{load_average():.1f}); the same run again",
            flush=True,
        )
    raise RuntimeError(f"{args[1:3]} failed ({child.returncode}); see {log}")


@dataclass
class Result:
    size: str
    contender: str
    rep: int
    triggers: int
    wall_s: float
    stages: dict[str, float]
    peak_rss_mb: float
    verified: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Triggers per second through both sinks, over the whole run (raw: over its sinks)."""
        seconds = self.stages["postgres"] + self.stages["kafka"] if self.contender == "raw" else 0
        return self.triggers / (seconds or self.wall_s)


def run_contender(contender: str, data: Data, base: dict[str, str], work: Path, rep: int) -> Result:
    name = f"bench_{contender}_{data.size.name}_{rep}_{uuid.uuid4().hex[:6]}"
    slot = Slot(base, name, work / name)
    prepare(slot, data, seed_ddl_only=contender == "seed")
    log = work / f"{name}.log"
    try:
        if contender.startswith("promo"):
            args = [PYTHON, str(Path(__file__).resolve()), "--child", "promo"]
        elif contender == "seed":
            checkpoint = slot.state_dir / "seed_checkpoint"
            args = [PYTHON, str(REPO / "bench" / "seed_query.py"), "--checkpoint", str(checkpoint)]
        else:
            args = [PYTHON, str(Path(__file__).resolve()), "--child", "raw"]
        env = slot.env
        if contender in ON_CONNECT:
            env["SPARK_MASTER"] = CONNECT["url"]
        if contender == "promo-overlap":
            env["PROMO_SEND_DURING_WRITE"] = "1"
        if PROFILE and contender.startswith("promo"):
            env["PROMO_BENCH_PROFILE"] = str(work / f"{name}.prof")
        server_pid = int(CONNECT["pid"]) if contender in ON_CONNECT else None
        wall, peak, report = run_child(args, env, log, server_pid)
        verified = verify(slot, data.size.triggers)
    finally:
        drop(slot)
    stages = normalise_stages(contender, report)
    stages["other"] = max(0.0, wall - sum(stages.values()))
    result = Result(
        data.size.name,
        contender,
        rep,
        data.size.triggers,
        round(wall, 3),
        {k: round(v, 3) for k, v in stages.items()},
        round(peak / 2**20, 1),
        verified,
        {
            "raw_stages": report["stages"],
            **{k: v for k, v in report.items() if k not in ("stages", "triggers")},
        },
    )
    status = "ok" if verified["ok"] else f"COUNT MISMATCH {verified}"
    print(
        f"  {data.size.name:<6} {contender:<5} rep {rep}: {wall:7.2f} s, "
        f"{result.throughput:10.0f} triggers/s, {status}",
        flush=True,
    )
    return result


PROMO_STEPS = {"campaign_batch", "subscriber_snapshot", "triggers", "feedback_sink", "push_sink"}


def normalise_stages(contender: str, report: dict) -> dict[str, float]:
    """Every contender's stages as read, join, postgres, kafka (+ checks for promo)."""
    s = report["stages"]
    if contender.startswith("promo"):
        return {
            "read": s.get("campaign_batch", 0) + s.get("subscriber_snapshot", 0),
            "join": s.get("triggers", 0),
            "postgres": s.get("feedback_sink", 0),
            "kafka": s.get("push_sink", 0),
            "checks": sum(v for k, v in s.items() if k not in PROMO_STEPS),
        }
    if contender == "seed":
        return {
            "read": report.get("session_s", 0),
            "join": s["read_join"],
            "postgres": s["postgres"],
            "kafka": s["kafka"],
        }
    return {k: s[k] for k in ("read", "join", "postgres", "kafka")}


# -- children ---------------------------------------------------------------------------------


def child_promo() -> None:
    """One run of promo_job in this process, like the run the sensor launches."""
    from dagster import DagsterEventType, DagsterInstance

    from promo_pipeline.definitions import defs as load_defs

    defs = load_defs()
    instance = DagsterInstance.ephemeral()
    profile_to = os.environ.get("PROMO_BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_to else None
    if profiler:
        profiler.enable()
    result = defs.resolve_job_def("promo_job").execute_in_process(
        instance=instance, raise_on_error=False
    )
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile_to)
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                print(event.step_failure_data.error.to_string(), file=sys.stderr)
        sys.exit(1)
    starts: dict[str, float] = {}
    stages: dict[str, float] = {}
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        key = event.step_key
        if event.event_type == DagsterEventType.STEP_START:
            starts[key] = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            stages[key] = entry.timestamp - starts[key]
    print(json.dumps({"stages": stages, "run_id": result.run_id}))


def child_raw() -> None:
    """The sinks' limit: the trigger rows, built without Spark, COPYed and produced."""
    settings = load_settings()
    kafka = kafka_resource(settings)
    t0 = time.monotonic()
    consumer = Consumer(
        kafka.client_config(
            **{"group.id": "bench-raw", "enable.auto.commit": False, "fetch.min.bytes": 1}
        )
    )
    topic = kafka.input_topic
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in partitions
    }
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    campaigns, seen = [], 0
    while seen < sum(ends.values()):
        for message in consumer.consume(1000, 1.0):
            if message.error() is None:
                seen += 1
                campaigns.append(json.loads(message.value()))
    consumer.close()
    with psycopg.connect(conninfo(settings)) as conn:
        subscribers = conn.execute(
            "SELECT DISTINCT client_id, restaurant_id FROM public.subscribers_restaurants"
        ).fetchall()
    t1 = time.monotonic()
    by_restaurant: dict[str, list[str]] = {}
    for client, restaurant in subscribers:
        by_restaurant.setdefault(restaurant, []).append(client)
    now = int(time.time())
    head = TRIGGER_COLUMNS[:7]
    csv_rows, records = io.StringIO(), []
    # In the unique index's order, as the pipeline sends them (a COPY in key order is ~2x
    # faster than one in arrival order).
    for clients in by_restaurant.values():
        clients.sort()
    for c in sorted(campaigns, key=lambda c: c["adv_campaign_id"]):
        prefix = json.dumps({k: c[k] for k in head}, separators=(",", ":"))[:-1]
        row = ",".join(f'"{c[k]}"' if isinstance(c[k], str) else str(c[k]) for k in head)
        for client in by_restaurant.get(c["restaurant_id"], []):
            csv_rows.write(f'{row},"{client}",{c["datetime_created"]},{now}\n')
            records.append(
                (
                    client.encode(),
                    f'{prefix},"client_id":"{client}","datetime_created":'
                    f'{c["datetime_created"]},"trigger_datetime_created":{now}}}'.encode(),
                )
            )
    payload = csv_rows.getvalue().encode()
    t2 = time.monotonic()
    with psycopg.connect(conninfo(settings)) as conn:
        with conn.cursor().copy(
            f"COPY public.subscribers_feedback ({', '.join(TRIGGER_COLUMNS)}) "
            "FROM STDIN (FORMAT csv)"
        ) as copy:
            view = memoryview(payload)
            for start in range(0, len(view), 1 << 20):
                copy.write(view[start : start + (1 << 20)])
        conn.commit()
    t3 = time.monotonic()
    producer = Producer(
        kafka.client_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "batch.size": 1 << 20,
                "queue.buffering.max.messages": 1_000_000,
                "compression.type": "lz4",
            }
        )
    )
    produce_all(producer, kafka.output_topic, records)
    assert producer.flush(120) == 0
    t4 = time.monotonic()
    stages = {"read": t1 - t0, "join": t2 - t1, "postgres": t3 - t2, "kafka": t4 - t3}
    print(json.dumps({"stages": stages, "triggers": len(records)}))


# -- reporting --------------------------------------------------------------------------------


def summarise(results: list[Result]) -> list[dict[str, Any]]:
    rows = []
    for size in SIZES:
        for contender in CONTENDERS:
            mine = [r for r in results if r.size == size and r.contender == contender]
            if not mine:
                continue
            stages = {
                k: statistics.median(r.stages.get(k, 0) for r in mine)
                for k in ("read", "join", "postgres", "kafka", "checks", "other")
            }
            rows.append(
                {
                    "size": size,
                    "contender": contender,
                    "reps": len(mine),
                    "triggers": mine[0].triggers,
                    "wall_s": statistics.median(r.wall_s for r in mine),
                    "triggers_per_s": statistics.median(r.throughput for r in mine),
                    "stages_s": stages,
                    "peak_rss_mb": max(r.peak_rss_mb for r in mine),
                    "verified": all(r.verified["ok"] for r in mine),
                }
            )
    for row in rows:
        others = {r["contender"]: r for r in rows if r["size"] == row["size"]}
        if row["contender"].startswith("promo"):
            for other in ("seed", "raw"):
                if other in others:
                    row[f"promo/{other}"] = row["triggers_per_s"] / others[other]["triggers_per_s"]
        if row["contender"] == "promo" and "promo-overlap" in others:
            overlap = others["promo-overlap"]["triggers_per_s"]
            row["promo/promo-overlap"] = row["triggers_per_s"] / overlap
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'size':<7}{'contender':<14}{'triggers':>9}{'wall s':>8}{'trig/s':>10}"
        f"{'read':>7}{'join':>7}{'pg':>7}{'kafka':>7}{'checks':>7}{'other':>7}"
        f"{'RSS MB':>8}{'ok':>4}{'vs seed':>9}{'vs raw':>8}{'vs overlap':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        s = r["stages_s"]
        vs_seed = f"{r['promo/seed']:.2f}x" if "promo/seed" in r else ""
        vs_raw = f"{r['promo/raw']:.2f}x" if "promo/raw" in r else ""
        vs_overlap = f"{r['promo/promo-overlap']:.2f}x" if "promo/promo-overlap" in r else ""
        print(
            f"{r['size']:<7}{r['contender']:<14}{r['triggers']:>9}{r['wall_s']:>8.2f}"
            f"{r['triggers_per_s']:>10.0f}{s['read']:>7.2f}{s['join']:>7.2f}{s['postgres']:>7.2f}"
            f"{s['kafka']:>7.2f}{s['checks']:>7.2f}{s['other']:>7.2f}{r['peak_rss_mb']:>8.0f}"
            f"{'yes' if r['verified'] else 'NO':>4}{vs_seed:>9}{vs_raw:>8}{vs_overlap:>12}"
        )


def pyplot() -> Any | None:
    """matplotlib's pyplot, or None (said on stdout) without the `bench` extra: the figures are
    the JSON, the chart only draws them, so a missing chart must not fail a finished run."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        print("no chart: matplotlib is not installed (pip install -e '.[bench]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    if (plt := pyplot()) is None:
        return
    sizes = [s for s in SIZES if any(r["size"] == s for r in rows)]
    contenders = [c for c in CONTENDERS if any(r["contender"] == c for r in rows)]
    colours = {
        "promo": "tab:blue",
        "promo-overlap": "tab:purple",
        "promo-local": "tab:cyan",
        "seed": "tab:orange",
        "raw": "tab:green",
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / len(contenders)
    for i, contender in enumerate(contenders):
        values = [
            next(
                (
                    r["triggers_per_s"]
                    for r in rows
                    if r["size"] == s and r["contender"] == contender
                ),
                0,
            )
            for s in sizes
        ]
        left.bar(
            [x + (i - (len(contenders) - 1) / 2) * width for x in range(len(sizes))],
            values,
            width,
            label=contender,
            color=colours[contender],
        )
    left.set_xticks(range(len(sizes)), sizes)
    left.set_yscale("log")
    left.set_ylabel("triggers / s through both sinks (log)")
    left.set_title("Throughput (raw: sinks only)")
    left.legend()
    stage_names = ["read", "join", "postgres", "kafka", "checks", "other"]
    labels, bottoms = [], []
    biggest = sizes[-1]
    mine = [r for r in rows if r["size"] == biggest]
    for r in mine:
        labels.append(r["contender"])
    bottom = [0.0] * len(mine)
    for stage in stage_names:
        values = [r["stages_s"][stage] for r in mine]
        right.bar(labels, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    del bottoms
    right.set_ylabel("seconds")
    right.set_title(f"Where the time goes ({biggest}, {mine[0]['triggers']} triggers)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# -- freshness ----------------------------------------------------------------------------


def freshness(base: dict[str, str], work: Path, trials: int, out: Path) -> dict[str, Any]:
    """Publish one campaign at a random moment while the daemon ticks the sensor; measure the
    seconds until its trigger is in the output topic, and each run's start-to-sinks time."""
    from dagster import DagsterEventType, RunsFilter

    data = generate(SIZES["small"])
    name = f"bench_fresh_{uuid.uuid4().hex[:6]}"
    slot = Slot(base, name, work / name)
    data.campaigns.clear()
    prepare(slot, data, seed_ddl_only=False)
    settings = slot.settings
    restaurant = data.subscriptions_csv.split(b"\n")[0].split(b",")[1].decode()
    home = work / f"{name}_dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    dagster_db = f"{name}_dagster"
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dagster_db}"')
    env = {**slot.env, "DAGSTER_HOME": str(home), "DAGSTER_PG_DB": dagster_db}
    if CONNECT:
        env["SPARK_MASTER"] = CONNECT["url"]
    log = (work / f"{name}_daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(Path(PYTHON).with_name("dagster-daemon")), "run", "-w", str(REPO / "workspace.yaml")],
        # Not the checkout: Dagster loads a .env from its working folder over this env, and
        # `promo stack up` writes one there for the default stack.
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"fresh-{name}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.promo_output_topic])
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    latencies: list[float] = []
    warm_runs: set[str] = set()
    rng = random.Random(7)
    try:
        for trial in range(-1, trials):  # trial -1 warms up the daemon and the engine
            time.sleep(rng.uniform(0, 60) if trial >= 0 else 0)
            campaign_id = str(uuid.uuid4())
            message = {**data_campaign(restaurant), "adv_campaign_id": campaign_id}
            published = time.time()
            producer.produce(settings.promo_input_topic, json.dumps(message).encode())
            producer.flush(10)
            deadline = time.monotonic() + 300
            arrived = None
            while arrived is None and time.monotonic() < deadline:
                assert daemon.poll() is None, "daemon died"
                for m in consumer.consume(100, 0.2):
                    if m.error() is None and campaign_id.encode() in m.value():
                        arrived = time.time()
            if arrived is None:
                raise RuntimeError(f"trial {trial}: no trigger within 300 s")
            print(f"  freshness trial {trial}: {arrived - published:.1f} s", flush=True)
            if trial >= 0:
                latencies.append(arrived - published)
            else:
                warm_runs = {r.dagster_run.run_id for r in instance_runs(home, dagster_db, slot)}
        instance = instance_for(home, dagster_db, slot)
        overheads = []
        for record in instance.get_run_records(RunsFilter(job_name="promo_job")):
            run = record.dagster_run
            if record.start_time is None or run.run_id in warm_runs:
                continue
            done = [
                e.timestamp
                for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_SUCCESS)
                if e.dagster_event and e.dagster_event.step_key == "push_sink"
            ]
            if done:
                overheads.append(
                    {
                        "run": run.run_id[:8],
                        "start_to_sinks_s": done[0] - record.start_time,
                        "create_to_sinks_s": done[0] - record.create_timestamp.timestamp(),
                    }
                )
    finally:
        stop_process_group(daemon.pid, timeout=30)
        daemon.wait(10)
        stop_leftovers(home)
        log.close()
        consumer.close()
        drop(slot)
        with psycopg.connect(
            conninfo(settings, dbname=slot.base["POSTGRES_DB"]), autocommit=True
        ) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dagster_db}" WITH (FORCE)')
    summary = {
        "trials": len(latencies),
        "latency_s": [round(x, 2) for x in latencies],
        "median_s": round(statistics.median(latencies), 2),
        "max_s": round(max(latencies), 2),
        "runs": overheads,
        "run_start_to_sinks_median_s": round(
            statistics.median(o["start_to_sinks_s"] for o in overheads), 2
        )
        if overheads
        else None,
    }
    return summary


def stop_leftovers(dagster_home: Path) -> None:
    """The daemon's gRPC code server runs in a process group of its own and outlives the
    daemon; stop every process of ours whose environment names this run's DAGSTER_HOME."""
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get("DAGSTER_HOME") == str(dagster_home):
                process.terminate()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def instance_for(home: Path, dagster_db: str, slot: Slot) -> Any:
    """The daemon's Dagster instance (its dagster.yaml reads the connection from the env)."""
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["DAGSTER_PG_DB"] = dagster_db
    for k, v in slot.base.items():
        os.environ.setdefault(k, v)
    os.environ["POSTGRES_DB"] = slot.base["POSTGRES_DB"]
    return DagsterInstance.get()


def instance_runs(home: Path, dagster_db: str, slot: Slot) -> list[Any]:
    from dagster import RunsFilter

    return list(
        instance_for(home, dagster_db, slot).get_run_records(RunsFilter(job_name="promo_job"))
    )


def data_campaign(restaurant: str) -> dict[str, Any]:
    return {
        "restaurant_id": restaurant,
        "adv_campaign_content": "fresh",
        "adv_campaign_owner": "Ivanov Ivan Ivanovich",
        "adv_campaign_owner_contact": "iiivanov@restaurant.ru",
        "adv_campaign_datetime_start": START,
        "adv_campaign_datetime_end": END,
        "datetime_created": int(time.time()),
    }


# -- main -------------------------------------------------------------------------------------


def start_connect(base: dict[str, str], work: Path, meta: dict[str, Any]) -> Any:
    """A warm Spark Connect server for the promo contender and the freshness trials."""
    from promo_pipeline.settings import split_list
    from promo_pipeline.stack.spark import SparkConnectServer

    server = SparkConnectServer(work / "connect", split_list(base["PROMO_SPARK_JARS"]))
    started = time.monotonic()
    server.start()
    CONNECT["url"] = server.url
    CONNECT["pid"] = str(server.pid())  # for its peak RSS
    meta["connect_server_start_s"] = round(time.monotonic() - started, 1)
    return server


def warm_up(base: dict[str, str], work: Path) -> None:
    """One small run on the fresh Connect server, not measured: its first queries load classes
    and start its Python worker."""
    print("warming up the Spark Connect server (not measured)", flush=True)
    run_contender("promo", generate(SIZES["small"]), base, work, -1)


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="all three sizes, 3 repetitions")
    parser.add_argument("--sizes", help="comma-separated: small,medium,large")
    parser.add_argument("--reps", type=int, help="repetitions per size and contender")
    parser.add_argument(
        "--contenders",
        default="promo,promo-local,seed,raw",
        help="promo: a run in a fresh process (as the sensor launches it) on a warm Spark Connect "
        "server, the local stack's default; promo-overlap: the same with the Kafka send "
        "overlapping the writes (PROMO_SEND_DURING_WRITE=1); promo-local: promo with its own "
        "local session",
    )
    parser.add_argument("--freshness", action="store_true", help="daemon + sensor trials")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument(
        "--spark",
        choices=["connect", "local"],
        default="connect",
        help="freshness: runs on a warm Spark Connect server, or each with a local session",
    )
    parser.add_argument(
        "--stack-dir", default=os.environ.get("PROMO_BENCH_STACK", "/tmp/promo-bench-stack")
    )
    parser.add_argument("--name", help="result file name (default: quick/full/freshness)")
    parser.add_argument("--keep", action="store_true", help="keep the contenders' logs")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile each promo run (kept with the logs)"
    )
    parser.add_argument("--child", choices=["promo", "raw"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.profile:
        global PROFILE
        PROFILE = args.keep = True
    if args.child == "promo":
        return child_promo()
    if args.child == "raw":
        return child_raw()

    from promo_pipeline.stack import LocalStack

    # The benchmark starts (and times) its own Connect server for the promo contender.
    stack = LocalStack(Path(args.stack_dir), spark="local")
    base = {k: v for k, v in stack.up().items() if not k.startswith("DAGSTER_")}
    work = Path(tempfile.mkdtemp(prefix="promo-bench-"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "load_before": load_average(),
        "spark_master": base.get("SPARK_MASTER"),
        "spark_remote": os.environ.get("SPARK_REMOTE", ""),
    }
    if args.freshness:
        server = start_connect(base, work, meta) if args.spark == "connect" else None
        meta["freshness_spark"] = args.spark
        try:
            summary = freshness(base, work, args.trials, RESULTS)
        finally:
            if server is not None:
                server.stop()
        meta["load_after"] = load_average()
        print(json.dumps(summary, indent=2))
        (RESULTS / f"{args.name or 'freshness'}.json").write_text(
            json.dumps({"meta": meta, "freshness": summary}, indent=2) + "\n"
        )
        return None

    server = None
    contenders = args.contenders.split(",")
    if set(ON_CONNECT) & set(contenders):
        server = start_connect(base, work, meta)
        print(f"Spark Connect server at {server.url} ({meta['connect_server_start_s']} s)")
    try:
        results = run_all(args, base, work, contenders)
    finally:
        if server is not None:
            server.stop()
    meta["load_after"] = load_average()
    rows = summarise(results)
    print()
    print_table(rows)
    name = args.name or ("full" if args.full else "quick")
    (RESULTS / f"{name}.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": rows,
                "failures": FAILURES,
                "runs": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    chart(rows, RESULTS / f"{name}.png")
    print(
        f"\nwrote {RESULTS / name}.json and .png (load {meta['load_before']:.2f} -> "
        f"{meta['load_after']:.2f})"
    )
    if args.keep:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return None


def run_all(
    args: argparse.Namespace, base: dict[str, str], work: Path, contenders: list[str]
) -> list[Result]:
    sizes = (args.sizes or ("small,medium,large" if args.full else "small,medium")).split(",")
    reps = args.reps or (3 if args.full else 1)
    results: list[Result] = []
    if set(ON_CONNECT) & set(contenders):
        warm_up(base, work)
    for size_name in sizes:
        data = generate(SIZES[size_name])
        print(f"{size_name}: {data.size.triggers} triggers expected", flush=True)
        for rep in range(reps):
            order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
            for contender in order:
                try:
                    results.append(run_contender(contender, data, base, work, rep))
                except RuntimeError as error:  # reported, and missing from the table
                    print(f"  {size_name} {contender} rep {rep}: FAILED: {error}", flush=True)
                    FAILURES.append(f"{size_name} {contender} rep {rep}: {error}")
    return results


if __name__ == "__main__":
    main()
