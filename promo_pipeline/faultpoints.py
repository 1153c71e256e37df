"""Test-only fault points: no-ops unless `PROMO_FAULT_AT` names one of them.

The one deliberate piece of test support inside product code: a crash, a killed process or a
stopped service can only be placed at an exact moment of a run from inside it. Each point is a
single call at a place the code already has (a commit, a loop step), never a reason to split or
reshape the code around it.

The fault-matrix tests (`promo_pipeline_tests/defs/test_faults.py`) run `promo run` in a child
process with `PROMO_FAULT_AT=<point>` and `PROMO_FAULT_DIR=<dir>`. On reaching the point the
run writes `<dir>/<point>.reached` and blocks until `<dir>/<point>.release` exists, so the test
can kill the run or stop a service at exactly that moment. A release file containing `fail`
makes the point raise instead, which inside a Spark task is a real executor task failure.

Driver points (`fault_point`): `campaign_batch.committed` (a micro-batch's Postgres work is
committed, Spark's checkpoint commit is not yet written), `feedback_sink.slice` (after each
committed slice of the Postgres sink, its fan-out position saved), `feedback_sink.writing`
(inside a slice writer's transaction, its rows and outbox entry written, before its commit:
with several writers, each blocks there), `feedback_sink.sent` (in the sender of committed
slices, once Kafka acknowledged a batch, before its outbox entries are deleted),
`feedback_sink.committed` (after its last slice),
`push_sink.start` (before the Kafka sink's first batch) and `push_sink.mid` (after each of
its batches, sent by the run or as a Spark job, once acknowledged and its outbox entries
deleted: a test stops the run at the first, the rest not yet sent). A point reached again after
its release passes straight on. `PROMO_FAULT_AT` may arm several points (comma-separated), and
`<point>@<n>` lets the first n-1 passes through (counted per process), so a kill can find the
slice sender mid-batch while the writers hold later slices.
Task points (`fault_rows`): `<where>.start`, reached inside every Spark task of the job that
reads the DataFrame: `campaign_batch.start` (reading a micro-batch's rows).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame

RELEASE_TIMEOUT_S = 900.0


_passes: Counter[str] = Counter()
_passes_lock = threading.Lock()


def _armed(point: str) -> Path | None:
    for armed in os.environ.get("PROMO_FAULT_AT", "").split(","):
        name, _, nth = armed.partition("@")
        if name != point:
            continue
        with _passes_lock:
            _passes[point] += 1
            if _passes[point] < int(nth or 1):
                return None
        return Path(os.environ["PROMO_FAULT_DIR"])
    return None


def _wait(point: str, folder: Path) -> None:
    (folder / f"{point}.reached").write_text(f"{os.getpid()}\n")
    release = folder / f"{point}.release"
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"fault point {point}: never released")
        time.sleep(0.05)
    if release.read_text().strip() == "fail":
        raise RuntimeError(f"injected fault at {point}")


def fault_point(point: str) -> None:
    """A pause (or failure) on the driver at `point`, if armed."""
    folder = _armed(point)
    if folder is not None:
        _wait(point, folder)


def fault_rows(rows: DataFrame, where: str) -> DataFrame:
    """`rows` unchanged, unless `<where>.start` is armed: then every Spark task reading them
    pauses (or fails) before passing its rows on."""
    point = f"{where}.start"
    folder = _armed(point)
    if folder is None:
        return rows

    def hook(batches: Iterator[Any]) -> Iterator[Any]:
        _wait(point, folder)
        yield from batches

    return rows.mapInArrow(hook, rows.schema)
