"""The fault matrix: each stage boundary of a run x each fault, then recovery by the next runs.

Runs are `promo run` child processes paused at a fault point (`promo_pipeline.faultpoints`)
so the fault lands at exactly that boundary. Stopping Postgres or Kafka would break other
tests, so this module has its own stack. The results are written to docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from promo_pipeline.stack import LocalStack
from promo_pipeline.stack._proc import pid_alive
from promo_pipeline_tests.support.faults import (
    REPO,
    ChildRun,
    check_recovered,
    output_count,
    poll,
    wait_topics_ready,
)
from promo_pipeline_tests.support.pipeline import Pipeline, campaign, fresh_pipeline, new_uuid
from promo_pipeline_tests.support.stack import destroy

pytestmark = [pytest.mark.stack, pytest.mark.spark]

BOUNDARIES = {
    "after_campaign_batch": "after the campaign batch is read",
    "mid_postgres_sink": "between two committed slices of the Postgres sink",
    "after_postgres_sink": "after the Postgres sink",
    "mid_kafka_sink": "in the middle of the Kafka sink",
}
FAULTS = {
    "sigkill": "run's process group SIGKILLed",
    "postgres_down": "Postgres stopped, started after the run ended",
    "kafka_down": "Kafka broker stopped, started after the run ended",
    "spark_failure": "Spark fails: an executor task raises inside the micro-batch; at the later "
    "boundaries the Spark driver JVM is SIGKILLed, and the faulted run sends its outbox through "
    "Spark's Kafka writer (`PROMO_PUSH_SPARK_MIN_TRIGGERS=0`), so the Kafka sink's Spark jobs "
    "fail",
}
# Two triggers per slice: each campaign's 5 subscribers span 3 slices, and the Kafka sink sends
# the 9 slices in 3 batches, so every boundary falls between real units of work.
SLICE_ROWS = "2"
# Slices written concurrently, whatever the host's cores: every cell has several writers.
WRITERS = "2"
# Where each cell pauses the run (see promo_pipeline/faultpoints.py).
POINTS = {
    **{("after_campaign_batch", f): "campaign_batch.committed" for f in FAULTS},
    **{("mid_postgres_sink", f): "feedback_sink.slice" for f in FAULTS},
    **{("after_postgres_sink", f): "feedback_sink.committed" for f in FAULTS},
    **{("mid_kafka_sink", f): "push_sink.mid" for f in FAULTS},
    # A task error needs a Spark job: the one reading the micro-batch's rows.
    ("after_campaign_batch", "spark_failure"): "campaign_batch.start",
}
POINT_TEXT = {
    "campaign_batch.committed": "in the micro-batch function, after its Postgres transaction "
    "(campaign upserts, DLQ flushed), before Spark commits the checkpoint",
    "campaign_batch.start": "in the Spark tasks reading the micro-batch's rows",
    "feedback_sink.slice": "in the Postgres sink after its first slice (triggers and outbox "
    "entry in one transaction) is committed and the fan-out position saved past it; the other "
    "writers go on with the slices in flight",
    "feedback_sink.committed": "after the Postgres sink's last slice, before the Kafka sink",
    "push_sink.mid": "in the Kafka sink once its first batch (4 slices) is acknowledged and "
    "their outbox entries deleted, before the next (the test sees them in the topic first)",
}
MAX_RECOVERY_RUNS = 3
DOC = REPO / "docs" / "reliability.md"
# Faults of the input that no run injects but operators and retention cause; each is covered
# by a fast test against the real stack (name: fault, what is done, what the pipeline does,
# the test).
INPUT_FAULTS = {
    "topic recreated": (
        "the input topic is deleted and created again (a new Kafka topic id), its new end "
        "offsets below the checkpoint's, then above them",
        "detected before the streaming query starts (the topic id recorded in "
        "`promo.input_topics`, or checkpoint offsets past the topic's end); the checkpoint is "
        "set aside (kept), the topic is read from its start, the run's metadata says "
        "`topic_recreated`, `promo.input_events` and the log record it; the sensor launches a "
        "run for it; the ledger keeps every pair at one trigger",
        "test_input_edges.py::test_recreated_topic_is_read_from_its_start",
    ),
    "retention gap": (
        "offsets not yet read are deleted (`delete_records`, as retention does)",
        "the lost ranges are recorded before the query starts (`promo.input_events`, run "
        "metadata `lost_offsets`/`lost_ranges`, the ERROR check `no_input_lost_before_read`, "
        "`promo status`); the run reads on from what exists (`failOnDataLoss` off for that run "
        "only), so no run fails for ever",
        "test_input_edges.py::test_retention_gap_is_reported_and_the_pipeline_reads_on",
    ),
    "corrupted checkpoint": (
        "the newest `offsets/N` or `commits/N` file is cut in half",
        "every run fails in one line naming the file and the `promo rewind --to-offsets ...` "
        "that resumes after the last good batch; `promo status` says the checkpoint is corrupt "
        "instead of counting messages; the sensor does not launch runs that would fail",
        "test_input_edges.py::test_corrupt_checkpoint_names_the_file_and_the_rewind_that_"
        "repairs_it",
    ),
    "manual id": (
        "an operator inserts rows into `subscribers_feedback` with explicit ids at and above "
        "the id sequence's next value",
        "before writing, the Postgres sink moves the sequence past the highest id (logged, and "
        "`id_sequence_moved_from` in the metadata); the outbox names its rows by campaign, "
        "client range and trigger time, never by ids, so nothing else depends on them",
        "test_fanout.py::test_rows_written_by_hand_above_the_id_sequence_do_not_stop_the_sink",
    ),
    "clock skew": (
        "the run's host clock is 2 h ahead of the database's",
        "T is taken from the database's clock (one clock for every host): the campaign active "
        "by it fires, stamped with the database's time, and one due in 1.5 h does not fire early",
        "test_pipeline.py::test_trigger_time_is_the_databases_clock_not_the_run_hosts",
    ),
}


@dataclass
class Cell:
    boundary: str
    fault: str
    point: str
    faulted_run: str = ""
    recovery_runs: int = 0
    messages: int = 0
    duplicates: int = 0
    passed: bool = False
    problems: str = ""


RESULTS: dict[tuple[str, str], Cell] = {}


@pytest.fixture(scope="module")
def fault_stack() -> Iterator[LocalStack]:
    """A stack of this module's own: its services get stopped and started.

    Not under pytest's tmp dir: another pytest session starting meanwhile resets
    /tmp/pytest-of-<user> to 0700, and the restarted Postgres (run as user postgres) could
    no longer reach its data.
    """
    stack = LocalStack(Path(tempfile.mkdtemp(prefix="promo-fault-stack-")), spark="local")
    try:
        stack.up()
        yield stack
    finally:
        destroy(stack)


@pytest.fixture(scope="module", autouse=True)
def reliability_doc() -> Iterator[None]:
    """Writes docs/reliability.md once every cell of the matrix has run."""
    yield
    if len(RESULTS) == len(BOUNDARIES) * len(FAULTS):
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(render(RESULTS))


@pytest.fixture
def cell_pipeline(
    fault_stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Pipeline:
    """A fresh database, topics and checkpoint on the fault stack (services running)."""
    fault_stack.up()
    env = {
        **fault_stack.settings(),
        "PROMO_STACK_DIR": str(fault_stack.dir),
        "PROMO_TRIGGER_SLICE_ROWS": SLICE_ROWS,
        "PROMO_SINK_WRITERS": WRITERS,
        # The sender of committed slices (off by default) inside every cell but mid_kafka_sink.
        "PROMO_SEND_DURING_WRITE": "1",
    }
    return fresh_pipeline(env, tmp_path, monkeypatch)


def spark_jvms(root: int) -> list[int]:
    """The Spark driver JVMs (SparkSubmit) among the descendants of `root`."""
    try:
        descendants = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [child.pid for child in descendants if pid_alive(child.pid, "SparkSubmit")]


def prepare(pipeline: Pipeline) -> set[tuple[str, str]]:
    """Three active campaigns with five subscribers each, an expired one, a bad message."""
    expected = pipeline.publish_active(campaigns=3, clients=5)
    expired = campaign(adv_campaign_datetime_start=1600000000, adv_campaign_datetime_end=1600003600)
    pipeline.subscribe((new_uuid(), expired["restaurant_id"]))
    pipeline.publish(expired, b'{"adv_campaign_id": "truncated')
    return expected


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_fault_then_recovery(
    boundary: str, fault: str, fault_stack: LocalStack, cell_pipeline: Pipeline, tmp_path: Path
) -> None:
    cell = Cell(boundary, fault, POINTS[(boundary, fault)])
    RESULTS[(boundary, fault)] = cell
    try:
        inject_and_recover(cell, fault_stack, cell_pipeline, tmp_path)
    except BaseException as error:
        cell.passed = False
        cell.problems = cell.problems or f"{type(error).__name__}: {str(error).splitlines()[0]}"
        raise


def restart(stack: LocalStack) -> None:
    """Both services up again. `up()` can report a just-started broker as exited when the
    machine is busy (its pid is checked before the JVM has exec'd); a second `up()` then finds
    it running, or starts it if it really died."""
    try:
        stack.up()
    except RuntimeError as error:
        if "kafka exited during startup" not in str(error):
            raise
        stack.up()


def inject_and_recover(
    cell: Cell, fault_stack: LocalStack, pipeline: Pipeline, tmp_path: Path
) -> None:
    boundary, fault = cell.boundary, cell.fault
    expected = prepare(pipeline)

    # The Spark failure needs Spark in the Kafka sink too: that run sends through Spark's writer.
    env = pipeline.env
    if fault == "spark_failure":
        env = {**env, "PROMO_PUSH_SPARK_MIN_TRIGGERS": "0"}
    if boundary == "mid_kafka_sink":
        # Otherwise the Postgres sink's sender has sent every slice before the Kafka sink starts.
        env = {**env, "PROMO_SEND_DURING_WRITE": "0"}
    run = ChildRun(env, tmp_path / "faulted.log", fault_at=cell.point,
                   fault_dir=tmp_path / "fault")  # fmt: skip
    try:
        run.wait_reached()
        if boundary == "mid_kafka_sink":
            sent = poll(lambda: output_count(pipeline.settings), 60, "the first third's messages")
            assert sent < len(expected), "the whole output was written before the pause"
        if fault == "sigkill":
            run.kill()
            cell.faulted_run = "killed"
        else:
            if fault == "postgres_down":
                fault_stack.postgres().stop()
            elif fault == "kafka_down":
                fault_stack.kafka().stop()
            elif fault == "spark_failure" and cell.point != "campaign_batch.start":
                jvms = spark_jvms(run.proc.pid)
                assert jvms, "no Spark JVM under the run"
                for pid in jvms:
                    os.kill(pid, signal.SIGKILL)
            task_error = fault == "spark_failure" and cell.point == "campaign_batch.start"
            run.release(fail=task_error)
            code = run.wait()
            if (boundary, fault) == ("mid_postgres_sink", "kafka_down"):
                # Kafka failing stops the sender of committed slices, not the Postgres sink.
                assert "push_sink sends the rest" in run.output, run.output[-3000:]
                assert "feedback sink: " in run.output, run.output[-3000:]
            cell.faulted_run = "succeeded" if code == 0 else f"failed (exit {code})"
            if task_error:
                assert code != 0 and "injected fault at" in run.output, run.output[-3000:]
    finally:
        run.stop()
        restart(fault_stack)  # both services back, whatever happened
        wait_topics_ready(pipeline.settings)

    recovery = check_recovered(pipeline, expected)
    for attempt in range(1, MAX_RECOVERY_RUNS + 1):
        if recovery.ok:
            break
        next_run = ChildRun(pipeline.env, tmp_path / f"recovery{attempt}.log")
        code = next_run.wait()
        cell.recovery_runs = attempt
        recovery = check_recovered(pipeline, expected)
        if code != 0:
            recovery.problems.append(f"recovery run {attempt} failed: {next_run.output[-2000:]}")
    cell.messages, cell.duplicates = recovery.messages, recovery.duplicates
    cell.problems = "; ".join(recovery.problems)
    letters = pipeline.dead_letters()
    if not letters or any(m.value() != b'{"adv_campaign_id": "truncated' for m in letters):
        cell.problems += "; DLQ lost or changed the bad message"
    cell.passed = not cell.problems
    assert cell.passed, cell.problems
    # Recovered means quiet: one more run has nothing to do and sends nothing.
    assert ChildRun(pipeline.env, tmp_path / "quiet.log").wait() == 0
    assert check_recovered(pipeline, expected).messages == cell.messages


def render(results: dict[tuple[str, str], Cell]) -> str:
    """The matrix as Markdown; only facts of the run that are stable from run to run."""
    lines = [
        "# Reliability: the fault matrix",
        "",
        "<!-- Generated by promo_pipeline_tests/defs/test_faults.py (pytest -m slow); "
        "do not edit by hand. -->",
        "",
        "Each cell: a run of `promo run` (a separate process) is paused at the boundary, the "
        "fault is injected, the run ends (or is killed), the services are started again, and "
        f"then runs without faults follow (at most {MAX_RECOVERY_RUNS}) until the state is "
        "right. Right means: the set of (campaign, client) pairs in `subscribers_feedback` "
        "equals the expected 15, no pair twice; every expected trigger is in the output topic, "
        "keyed by its client and equal to its Postgres row; every repeated message is "
        "byte-identical (key and value) to the first; the outbox is empty; the bad input "
        "message is in the DLQ unchanged; and one more run sends nothing.",
        "",
        "Data per cell: 3 active campaigns x 5 subscribers (15 triggers), 1 expired campaign "
        "with a subscriber (no trigger), 1 malformed message (DLQ). Slices of "
        f"{SLICE_ROWS} triggers (`PROMO_TRIGGER_SLICE_ROWS`): the Postgres sink's {WRITERS} "
        "writers (`PROMO_SINK_WRITERS`) commit 9 slices, which the run's sender sends to Kafka "
        "while the next ones are written (`PROMO_SEND_DURING_WRITE=1`, off by default). In the "
        "`mid_kafka_sink` row the faulted run leaves them to the Kafka sink "
        "(`PROMO_SEND_DURING_WRITE=0`), which sends them in 3 batches: from the run itself (an "
        "outbox this small is, by default), or in the `spark_failure` column as 3 Spark jobs of "
        "Spark's Kafka writer (whose faulted runs, `PROMO_PUSH_SPARK_MIN_TRIGGERS=0`, leave "
        "every send to the Kafka sink). Recovery runs use the default, so a resend by another "
        "path is checked byte for byte as well.",
        "",
        "## Result",
        "",
        "Cell: result / runs needed to recover / duplicate messages in the output topic.",
        "",
        "| boundary | " + " | ".join(FAULTS) + " |",
        "|---|" + "---|" * len(FAULTS),
    ]
    for boundary, text in BOUNDARIES.items():
        cells = []
        for fault in FAULTS:
            cell = results[(boundary, fault)]
            verdict = "PASS" if cell.passed else "FAIL"
            cells.append(f"{verdict} / {cell.recovery_runs} / {cell.duplicates}")
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    passed = sum(cell.passed for cell in results.values())
    lines += [
        "",
        f"{passed} of {len(results)} cells pass.",
        "",
        "## Cells",
        "",
        "| boundary | fault | injected | faulted run | recovery runs | Kafka messages "
        "(duplicates) | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for (boundary, fault), cell in sorted(
        results.items(), key=lambda item: (list(BOUNDARIES).index(item[0][0]),
                                           list(FAULTS).index(item[0][1]))
    ):  # fmt: skip
        verdict = "PASS" if cell.passed else f"FAIL: {cell.problems}"
        lines.append(
            f"| {boundary} | {fault} | `{cell.point}` | {cell.faulted_run} | "
            f"{cell.recovery_runs} | {cell.messages} ({cell.duplicates}) | {verdict} |"
        )
    lines += [
        "",
        "## Fault points",
        "",
        "Armed only by `PROMO_FAULT_AT` (see `promo_pipeline/faultpoints.py`); unset, they "
        "do nothing. The Spark task error is a real exception raised inside an executor task "
        "(a `mapInArrow` over the micro-batch's rows), which fails the Spark job and so the "
        "streaming query. At the later boundaries the Spark failure is the loss of the whole "
        "Spark driver JVM, which fails the Kafka sink's Spark jobs.",
        "",
        *(f"- `{point}`: {text}" for point, text in POINT_TEXT.items()),
        "",
        "Faults: " + "; ".join(f"`{name}`: {text}" for name, text in FAULTS.items()) + ".",
        "",
        "Duplicates are expected only where Kafka had acknowledged some of a run's messages "
        "before the fault: the outbox resends every trigger of the slices whose batch was not "
        "acknowledged, rebuilt from its Postgres row, so the repeats are byte-identical "
        "(at-least-once, as promised).",
        "",
        "## Faults of the input",
        "",
        "Not injected by the matrix above: operators, retention and clocks cause them between "
        "runs. "
        "Each has a test against the real stack (in `promo_pipeline_tests/`).",
        "",
        "| fault | what is done | what the pipeline does | test |",
        "|---|---|---|---|",
        *(
            f"| {name} | {done} | {outcome} | `{test}` |"
            for name, (done, outcome, test) in INPUT_FAULTS.items()
        ),
        "",
    ]
    return "\n".join(lines)


def test_render_is_stable() -> None:
    """The document depends only on the results, so re-running an unchanged matrix gives an
    unchanged file."""
    results = {
        (b, f): Cell(b, f, POINTS[(b, f)], "killed", 1, 15, 0, True)
        for b in BOUNDARIES
        for f in FAULTS
    }
    assert render(results) == render(dict(reversed(results.items())))
    assert len(POINTS) == len(BOUNDARIES) * len(FAULTS)


@pytest.mark.slow
@pytest.mark.daemon
@pytest.mark.timeout(1200)
def test_daemon_retries_a_run_that_failed_at_push_sink_once_kafka_is_back(
    fault_stack: LocalStack,
    cell_pipeline: Pipeline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kafka goes down while a run, launched by the daemon's sensor, is at push_sink: the run
    fails, the daemon retries it from the failed step, and with Kafka back the retry sends the
    outbox: every trigger in both sinks, none twice."""
    import psycopg
    from dagster import DagsterInstance, DagsterRunStatus

    from promo_pipeline.db import conninfo
    from promo_pipeline_tests.support.dagster import DONE, dagster_daemon, promo_runs

    pipeline = cell_pipeline
    expected = prepare(pipeline)
    database = f"{pipeline.settings.postgres_db}_dagster"
    with psycopg.connect(conninfo(pipeline.settings), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    faults = tmp_path / "faults"
    faults.mkdir()
    for name, value in {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_DB": database,
        # Inherited by every run the daemon launches: the first pauses at push_sink; the
        # retry passes (the release file exists by then).
        "PROMO_FAULT_AT": "push_sink.start",
        "PROMO_FAULT_DIR": str(faults),
    }.items():
        monkeypatch.setenv(name, value)

    log = tmp_path / "daemon.log"
    with dagster_daemon(log) as daemon:

        def alive() -> None:
            assert daemon.poll() is None, log.read_text()[-3000:]

        poll(
            lambda: alive() or (faults / "push_sink.start.reached").exists(),
            300,
            "the sensor's run to reach push_sink",
            interval=1,
        )
        [first] = promo_runs()
        fault_stack.kafka().stop()
        (faults / "push_sink.start.release").write_text("go")

        def status_of(run_id: str) -> DagsterRunStatus | None:
            alive()
            run = DagsterInstance.get().get_run_by_id(run_id)
            return run.status if run is not None and run.status in DONE else None

        assert poll(lambda: status_of(first.run_id), 300, "the first run to end", 1) == (
            DagsterRunStatus.FAILURE
        )
        restart(fault_stack)
        wait_topics_ready(pipeline.settings)

        def retry_done() -> object:
            alive()
            retries = [r for r in promo_runs() if r.tags.get("dagster/parent_run_id")]
            return retries and status_of(retries[0].run_id) and retries[0]

        retry = poll(retry_done, 400, "the daemon's retry to end", 2)
    assert retry.tags["dagster/parent_run_id"] == first.run_id
    assert DagsterInstance.get().get_run_by_id(retry.run_id).status == DagsterRunStatus.SUCCESS
    # From the failed step: the retry re-ran push_sink (and its check), not the read and join.
    steps = {
        event.step_key
        for event in DagsterInstance.get().all_logs(retry.run_id)
        if event.dagster_event is not None and event.dagster_event.event_type_value == "STEP_START"
    }
    assert "push_sink" in steps and "campaign_batch" not in steps, steps
    recovery = check_recovered(pipeline, expected)
    assert recovery.ok, recovery.problems
    assert recovery.duplicates == 0
