"""The two sinks. Postgres is the ledger and goes first; Kafka follows from an outbox.

The Postgres sink writes the due triggers slice by slice (see `promo_pipeline.fanout`): each
slice's rows, its `promo.trigger_outbox` entry and the fan-out progress commit together. The
Kafka sink sends the outbox slices and deletes the entries only once Kafka acknowledged all of
their messages: a small outbox (the steady state: a few new subscriptions) from the run itself,
streamed from Postgres, as a Spark job would take seconds to start for it; a large one with
Spark's Kafka writer, each slice one task reading its rows from Postgres, so a cluster's
executors share the work. A run that dies in between leaves the entries, and the next run sends
them again, built by the same query from the stored rows, so the resent messages are
byte-identical whichever path sends them.
"""

import functools
import os
import threading
import time
from collections.abc import Callable

import psycopg
from confluent_kafka import KafkaException
from dagster import AssetExecutionContext, Failure, MaterializeResult, asset

from promo_pipeline.checkpoint import input_position
from promo_pipeline.defs.resources import (
    KafkaResource,
    PipelineLockResource,
    PostgresResource,
    RunOptionsResource,
    SparkResource,
    under_pipeline_lock,
)
from promo_pipeline.defs.triggers.assets import triggers
from promo_pipeline.fanout import (
    FANOUTS_IN_PROGRESS,
    NEW_BESIDE_WALK,
    OUTBOX_MESSAGES,
    OUTBOX_SENT,
    FanoutProgress,
    full_fanout_slices,
    move_id_sequence_past_manual_rows,
    new_subscription_slices,
    run_window,
)
from promo_pipeline.faultpoints import fault_point
from promo_pipeline.producers import SPARK_TRIGGERS, Sender

# Tasks per Spark job of the Kafka sink, so the cores write in parallel; a job (or a batch the
# run sends itself) carries about this many slices' worth of triggers (a failed one resends at
# most these), and many small slices share a task rather than one task each.
PUSH_TASKS = 4


@asset(
    group_name="promo",
    kinds={"postgres"},
    deps=[triggers],
    description="The due triggers appended to public.subscribers_feedback (feedback NULL), at "
    "most one row per (adv_campaign_id, client_id), in committed slices, each with its Kafka "
    "outbox entry.",
)
@under_pipeline_lock
def feedback_sink(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    postgres: PostgresResource,
    kafka: KafkaResource,
    run_options: RunOptionsResource,
) -> MaterializeResult:
    started = time.monotonic()
    written: dict[str, int] = {}
    slices = 0
    # Past the budget a run starts no further slice once campaign messages wait on the input
    # topic (the slices under way complete); a giant alone keeps its one run.
    budget = run_options.fanout_run_budget_s
    budget_spent = False
    with postgres.connect(autocommit=True) as conn:
        window = run_window(conn, context.run_id)
        # Campaigns published during a walk wait for one slice of it, not for a budget's worth:
        # the run ends after the slice that serves them, and the next one goes on with the walk.
        new_beside_walk = bool(budget) and bool(
            conn.execute(NEW_BESIDE_WALK, {"t": window.trigger_time}).fetchone()[0]
        )
        moved = move_id_sequence_past_manual_rows(conn)
        if moved:
            context.log.warning(
                f"subscribers_feedback holds ids up to {moved[1]} written past its id sequence "
                f"(at {moved[0]}), by hand or by another writer: the sequence now starts above them"
            )
        input_waits = InputWaits(
            functools.partial(_input_waits, context, kafka, conn, run_options.checkpoint_dir)
        )
        writers = run_options.sink_writers or os.cpu_count() or 1
        progress = FanoutProgress(context.log.info, "feedback_sink", run_options.progress_every_s)
        slice_rows = run_options.trigger_slice_rows
        connect = functools.partial(psycopg.connect, postgres.conninfo(), autocommit=True)
        # Sends the committed slices while the next ones are written (started by the first).
        sender = (
            OutboxSender(
                connect,
                lambda: Sender(kafka, kafka.output_topic),
                context.run_id,
                slice_rows,
                context.log.warning,
            )
            if run_options.send_during_write
            else None
        )

        def sendable() -> None:
            """A slice committed: the sender may send it. A fan-out of one slice has nothing to
            overlap; one that push_sink would send through Spark (a cluster's workers) is left
            to it."""
            if sender and slice_rows < progress.total < run_options.push_spark_min_triggers:
                sender.committed()

        full_fanouts = functools.partial(
            full_fanout_slices,
            writers=writers,
            connect=connect,
            progress=progress,
            # test-only; no-op unless PROMO_FAULT_AT is set
            before_commit=lambda: fault_point("feedback_sink.writing"),
            # Committed slices are sendable in any order, not only once those before them are.
            after_commit=sendable,
        )
        # New subscriptions of fanned-out campaigns first (small), then the full fan-outs, then
        # once more for the campaigns whose full fan-out just ended below W.
        steps = (new_subscription_slices, full_fanouts, new_subscription_slices)
        try:
            for step in steps:
                for per_campaign in step(conn, window, slice_rows):
                    slices += 1
                    for campaign, count in per_campaign.items():
                        written[campaign] = written.get(campaign, 0) + count
                    # test-only; no-op unless PROMO_FAULT_AT is set
                    fault_point("feedback_sink.slice")
                    sendable()
                    # Every slice saved its position: stopping here leaves the rest to the next
                    # run.
                    budget_spent = bool(budget) and (
                        (new_beside_walk and step is full_fanouts)
                        or (time.monotonic() - started >= budget and input_waits())
                    )
                    if budget_spent:
                        break
                if budget_spent:
                    break
        except BaseException:
            if sender is not None:
                sender.close(drain=False)
            raise
        if sender is not None:
            sender.close(drain=True)
        in_progress = conn.execute(FANOUTS_IN_PROGRESS, {"t": window.trigger_time}).fetchone()[0]
    fault_point("feedback_sink.committed")  # test-only; no-op unless PROMO_FAULT_AT is set
    inserted = sum(written.values())
    seconds = round(time.monotonic() - started, 3)
    context.log.info(
        f"feedback sink: {inserted} rows in {slices} slices by {writers} writers in {seconds} s"
        + (f", {sender.sent} of them sent to Kafka meanwhile" if sender and sender.sent else "")
    )
    if budget_spent:
        context.log.info(
            (
                "campaigns published during a fan-out served"
                if new_beside_walk
                else f"fan-out budget of {budget} s (PROMO_FANOUT_RUN_BUDGET_S) spent, campaign "
                "messages waiting"
            )
            + f": {in_progress} fan-out(s) in progress go on in the next run"
        )
    top = sorted(written.items(), key=lambda item: -item[1])[:50]
    return MaterializeResult(
        metadata={
            "dagster/row_count": inserted,
            "rows_written": inserted,
            "slices": slices,
            "trigger_time": window.trigger_time,
            "per_campaign": dict(top),
            "id_sequence_moved_from": moved[0] if moved else -1,
            "budget_spent": budget_spent,
            "fanouts_in_progress": in_progress,
            "writers": writers,
            "sent_during_write": sender.sent if sender is not None else 0,
            "seconds": seconds,
        }
    )


class InputWaits:
    """`waits()`'s answer, kept for `ttl_s`: asked after every slice once past the budget, it
    would otherwise open Kafka clients several times a second."""

    def __init__(self, waits: Callable[[], bool], ttl_s: float = 5.0) -> None:
        self.waits, self.ttl_s = waits, ttl_s
        self.answer, self.asked = False, -float("inf")

    def __call__(self) -> bool:
        if time.monotonic() - self.asked >= self.ttl_s:
            self.answer, self.asked = self.waits(), time.monotonic()
        return self.answer


# This run's committed outbox slices, oldest first: what the sender may send.
RUN_OUTBOX = (
    "SELECT slice_id, triggers FROM promo.trigger_outbox WHERE run_id = %s ORDER BY slice_id"
)


class OutboxSender:
    """Sends this run's committed outbox slices to Kafka from a thread while the Postgres sink
    writes the next ones, so the two sinks overlap instead of following each other.

    Postgres stays first: only committed entries are visible to its connection. The messages
    are `send_from_run`'s (the same query as every resend, so the same bytes), and an entry is
    deleted only once Kafka acknowledged all of its messages. On any failure (Kafka down) it
    stops and says so, and `push_sink` sends what is left, as it does after a killed run.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        producer: Callable[[], Sender],
        run_id: str,
        batch_triggers: int,
        warn: Callable[[str], None],
    ) -> None:
        self.connect, self.producer, self.run_id = connect, producer, run_id
        self.batch_triggers, self.warn = batch_triggers, warn
        self.sent = 0
        self.starting = threading.Lock()
        self.wake, self.finish, self.abandon = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )
        self.thread: threading.Thread | None = None

    def committed(self) -> None:
        """A slice committed (said by the writers' threads too): wake the sender, started on the
        first call."""
        with self.starting:
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="outbox_sender", daemon=True)
                self.thread.start()
        self.wake.set()

    def close(self, *, drain: bool) -> None:
        """Once every slice is committed: send what is left (`drain`), or stop after the batch
        under way (the sink failed; the outbox keeps the rest)."""
        (self.finish if drain else self.abandon).set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join()

    def run(self) -> None:
        try:
            with self.connect() as conn:
                producer = self.producer()
                while not self.abandon.is_set():
                    self.wake.wait()
                    self.wake.clear()
                    finish = self.finish.is_set()
                    while not self.abandon.is_set() and self.send_batch(conn, producer):
                        pass
                    if finish:
                        return
        except Exception as error:  # the Postgres sink must not fail on Kafka
            self.warn(
                f"sending committed slices during the Postgres sink stopped ({error}); "
                "push_sink sends the rest"
            )

    def send_batch(self, conn: psycopg.Connection, producer: Sender) -> bool:
        """The oldest committed slices of this run, about one slice's worth of triggers, sent
        and deleted; False when there were none."""
        batch, triggers = [], 0
        for slice_id, count in conn.execute(RUN_OUTBOX, (self.run_id,)):
            if batch and triggers + count > self.batch_triggers:
                break
            batch.append(slice_id)
            triggers += count
        if not batch:
            return False
        send_from_run(conn, producer, batch)
        fault_point("feedback_sink.sent")  # test-only; no-op unless PROMO_FAULT_AT is set
        conn.execute(OUTBOX_SENT, (batch,))
        self.sent += triggers
        return True


def _input_waits(
    context: AssetExecutionContext, kafka: KafkaResource, conn: psycopg.Connection, checkpoint: str
) -> bool:
    """Campaign messages wait on the input topic (past the checkpoint): worth ending a giant's
    run for. A broker that does not answer keeps the run going (said in its log)."""
    try:
        return input_position(kafka, conn, checkpoint).waiting > 0
    except Exception as error:  # the Postgres sink must not fail on Kafka
        context.log.warning(f"input lag unknown ({error}); the fan-out goes on in this run")
        return False


def push_jobs(
    pending: list[tuple[int, str, int]], rows_per_job: int, tasks: int
) -> list[list[list[int]]]:
    """The outbox slices (slice_id, run_id, triggers), oldest first, as batches of about
    `rows_per_job` triggers; each job's slices dealt to at most `tasks` tasks of even size."""
    jobs: list[list[tuple[int, str, int]]] = []
    total = rows_per_job
    for entry in pending:
        if total + entry[2] > rows_per_job:
            jobs.append([])
            total = 0
        jobs[-1].append(entry)
        total += entry[2]
    planned = []
    for job in jobs:
        sizes = [0] * min(tasks, len(job))
        bins: list[list[int]] = [[] for _ in sizes]
        for slice_id, _, count in sorted(job, key=lambda entry: -entry[2]):
            lightest = sizes.index(min(sizes))
            sizes[lightest] += count
            bins[lightest].append(slice_id)
        planned.append([sorted(ids) for ids in bins])
    return planned


@asset(
    group_name="promo",
    kinds={"spark", "kafka"},
    deps=[feedback_sink],
    description="Every trigger committed to Postgres and not yet acknowledged by Kafka, sent to "
    "the output topic keyed by client_id: a large outbox by Spark's Kafka writer (each outbox "
    "slice one task that reads its rows from Postgres), a small one by the run itself.",
)
@under_pipeline_lock
def push_sink(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    postgres: PostgresResource,
    kafka: KafkaResource,
    spark: SparkResource,
    run_options: RunOptionsResource,
) -> MaterializeResult:
    started = time.monotonic()
    sent = sent_this_run = 0
    with postgres.connect(autocommit=True) as conn:
        pending = conn.execute(
            "SELECT slice_id, run_id, triggers FROM promo.trigger_outbox ORDER BY slice_id"
        ).fetchall()
        earlier_runs = {run_id for _, run_id, _ in pending if run_id != context.run_id}
        if earlier_runs:
            context.log.warning(f"resending triggers left unsent by runs {sorted(earlier_runs)}")
        if pending:
            # Waits a little for brokers coming back (a retry right after an outage).
            kafka.check_access()
            kafka.check_topic(kafka.output_topic)
        fault_point("push_sink.start")  # test-only; no-op unless PROMO_FAULT_AT is set
        entries = {slice_id: (run_id, count) for slice_id, run_id, count in pending}
        jobs = push_jobs(pending, PUSH_TASKS * run_options.trigger_slice_rows, PUSH_TASKS)
        # A Spark job takes seconds to start: worth it only for a large outbox, which a
        # cluster's executors then share.
        total = sum(count for _, count in entries.values())
        by_spark = bool(jobs) and total >= run_options.push_spark_min_triggers
        producer = Sender(kafka, kafka.output_topic) if jobs and not by_spark else None
        for job in jobs:
            done = [slice_id for ids in job for slice_id in ids]
            if producer is None:
                send_with_spark(spark, postgres, kafka, job)
            else:
                send_from_run(conn, producer, done)
            conn.execute(OUTBOX_SENT, (done,))
            for slice_id in done:
                run_id, count = entries[slice_id]
                sent += count
                sent_this_run += count if run_id == context.run_id else 0
            fault_point("push_sink.mid")  # test-only; no-op unless PROMO_FAULT_AT is set
    seconds = round(time.monotonic() - started, 3)
    how = f"{len(jobs)} Spark jobs" if by_spark else f"{len(jobs)} batches sent by the run"
    context.log.info(f"push sink: {sent} messages in {len(pending)} slices, {how}, in {seconds} s")
    return MaterializeResult(
        metadata={
            "dagster/row_count": sent,
            "messages_written": sent,
            "sent_this_run": sent_this_run,
            "resent_from_earlier_runs": sent - sent_this_run,
            "earlier_runs_resent": len(earlier_runs),
            "slices": len(pending),
            "spark_jobs": len(jobs) if by_spark else 0,
            "sent_by": "spark" if by_spark else "run",
            "seconds": seconds,
        }
    )


def of_slices(slice_ids: list[int]) -> str:
    """The filter of OUTBOX_MESSAGES to some slices (ids are ints: no quoting to get wrong)."""
    return f"slice_id IN ({', '.join(str(int(slice_id)) for slice_id in slice_ids)})"


def send_with_spark(
    spark: SparkResource, postgres: PostgresResource, kafka: KafkaResource, job: list[list[int]]
) -> None:
    """One Spark job: each task reads its slices' messages over JDBC and writes them to Kafka."""
    with spark.failing_fast():
        (
            spark.spark_session.read.jdbc(
                postgres.jdbc_url,
                OUTBOX_MESSAGES,
                predicates=[of_slices(ids) for ids in job],
                properties=postgres.jdbc_properties(fetchsize="10000"),
            )
            .selectExpr("CAST(key AS BINARY) AS key", "CAST(value AS BINARY) AS value")
            .write.format("kafka")
            .options(**kafka.spark_options())
            .options(**SPARK_TRIGGERS)
            .option("topic", kafka.output_topic)
            .save()
        )


def send_from_run(conn: psycopg.Connection, producer: Sender, slice_ids: list[int]) -> None:
    """The slices' messages streamed from Postgres to Kafka, all acknowledged on return; Spark's
    query, so the same bytes. A binary COPY streams while the run produces (a cursor's fetches
    would leave one side idle), and reads text as raw bytes: nothing is decoded and re-encoded."""
    query = f"SELECT key, value FROM {OUTBOX_MESSAGES} WHERE {of_slices(slice_ids)}"
    with conn.cursor() as cursor, cursor.copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(["bytea", "bytea"])
        producer.send(copy.rows())
    try:
        producer.flush()
    except KafkaException as error:
        raise Failure(f"{error}; the outbox keeps them for the next run") from None
