"""Campaign versions (issue 21, items 1, 2 and 7; README, "Campaign versions"): which version
is stored, whatever the order, partition or batching it is read in, and what a newer version
does to a campaign that has fired. The model-based test of the same rules is
test_versions_model.py."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promo_pipeline.cli import main
from promo_pipeline.db import conninfo
from promo_pipeline.fanout import DB_NOW
from promo_pipeline.ingest import store_campaigns
from promo_pipeline.message_shapes import CAMPAIGN_COLUMNS, Rejection, cancelled, parse_campaign
from promo_pipeline_tests.defs.campaigns.test_input_edges import publish_to
from promo_pipeline_tests.support.faults import poll
from promo_pipeline_tests.support.pipeline import Pipeline, campaign, new_uuid
from promo_pipeline_tests.support.versions import newest, stored_form

pytestmark = [pytest.mark.stack]


def db_now(pipeline: Pipeline) -> int:
    return pipeline.sql(DB_NOW)[0][0]


def run_time(pipeline: Pipeline) -> int:
    """T of the last run."""
    return pipeline.sql("SELECT trigger_time FROM promo.trigger_window")[0][0]


def stored(pipeline: Pipeline, campaign_id: str) -> dict[str, Any]:
    columns = ", ".join(CAMPAIGN_COLUMNS)
    [row] = pipeline.sql(
        f"SELECT {columns} FROM promo.campaigns WHERE adv_campaign_id = %s", (campaign_id,)
    )
    return dict(zip(CAMPAIGN_COLUMNS, row, strict=True))


def rows_by_client(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    return {row["client_id"]: row for row in pipeline.feedback()}


def assert_output_matches_ledger(pipeline: Pipeline) -> None:
    """Every ledger row is on the output topic once, with the same fields."""
    sent = sorted(
        (json.loads(m.value()) for m in pipeline.output()),
        key=lambda v: (v["adv_campaign_id"], v["client_id"]),
    )
    ledger = sorted(
        (
            {k: v for k, v in row.items() if k not in ("id", "feedback")}
            for row in pipeline.feedback()
        ),
        key=lambda v: (v["adv_campaign_id"], v["client_id"]),
    )
    assert sent == ledger


# --- the order of versions, on Postgres alone: no Spark, so many examples are cheap ---------

_RESTAURANTS = [new_uuid() for _ in range(2)]


@st.composite
def versions_of_one_campaign(draw: st.DrawFn) -> list[dict[str, Any]]:
    """2-5 versions of one campaign: equal or different datetime_created, moved, re-worded,
    cancelled, exact duplicates, ids in either case."""
    campaign_id = new_uuid()
    made = []
    for _ in range(draw(st.integers(2, 5))):
        start = 1_800_000_000 + draw(st.sampled_from([0, 60]))
        made.append(
            {
                "restaurant_id": draw(st.sampled_from(_RESTAURANTS)),
                "adv_campaign_id": campaign_id,
                "adv_campaign_content": draw(st.sampled_from(["a", "b"])),
                "adv_campaign_owner": "owner",
                "adv_campaign_owner_contact": "owner@example.com",
                "adv_campaign_datetime_start": start,
                "adv_campaign_datetime_end": start + draw(st.sampled_from([-60, 0, 3600])),
                "datetime_created": 1_700_000_000 + draw(st.integers(0, 1)),
            }
        )
    if draw(st.booleans()):
        made.append(dict(made[0]))  # a replay
    if draw(st.booleans()):
        made[-1] = {**made[-1], "restaurant_id": made[-1]["restaurant_id"].upper()}
    return made


def _as_stored(version: dict[str, Any]) -> Any:
    """What ingest stores for a message (a cancellation in its stored form)."""
    outcome = parse_campaign(json.dumps(version).encode())
    if isinstance(outcome, Rejection):
        assert outcome.fields is not None, outcome
        return cancelled(outcome.fields)
    return outcome


@pytest.mark.timeout(600)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(versions=versions_of_one_campaign(), data=st.data())
def test_stored_version_does_not_depend_on_read_order_partition_or_batching(
    pipeline: Pipeline, versions: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Each version is read at a random partition and offset, in a random order, cut into
    random batches: what is stored is always the README's greatest version (item 2)."""
    order = data.draw(st.permutations(range(len(versions))))
    cuts = data.draw(st.sets(st.integers(1, len(versions) - 1)))
    read = [
        (_as_stored(versions[i]), data.draw(st.integers(0, 2)), data.draw(st.integers(0, 99)))
        for i in order
    ]
    bounds = [0, *sorted(cuts), len(read)]
    with psycopg.connect(conninfo(pipeline.settings), autocommit=True) as conn:
        for lo, hi in pairwise(bounds):
            with conn.transaction():
                store_campaigns(conn, read[lo:hi])
    assert stored(pipeline, versions[0]["adv_campaign_id"]) == newest(*versions)


# --- the same rules end to end ---------------------------------------------------------------


@pytest.mark.spark
def test_a_moved_campaign_reaches_the_new_restaurant_and_moved_back_the_old_ones_rest(
    pipeline: Pipeline,
) -> None:
    """Item 1 and item 7 "a restaurant moved back": each move is a fresh fan-out of the
    restaurant it names; nobody is notified twice; the stored restaurant is the newest."""
    first = campaign()
    r1, r2 = first["restaurant_id"], new_uuid()
    a, b = new_uuid(), new_uuid()
    pipeline.subscribe((a, r1), (b, r2.upper()))
    pipeline.publish(first)
    pipeline.run_ok()
    assert set(rows_by_client(pipeline)) == {a}

    moved = {**first, "restaurant_id": r2, "datetime_created": first["datetime_created"] + 1}
    pipeline.publish(moved)
    pipeline.run_ok()
    rows = rows_by_client(pipeline)
    assert set(rows) == {a, b}, "the moved campaign never reached its new restaurant"
    assert rows[b]["restaurant_id"] == r2
    assert stored(pipeline, first["adv_campaign_id"])["restaurant_id"] == r2

    c, d = new_uuid(), new_uuid()  # c joins R1, d joins R2 while the campaign is at R2
    pipeline.subscribe((c, r1), (d, r2))
    pipeline.run_ok()
    rows = rows_by_client(pipeline)
    assert set(rows) == {a, b, d}, "an R1 subscriber got R2's campaign"
    assert rows[d]["restaurant_id"] == r2

    back = {**first, "datetime_created": first["datetime_created"] + 2}
    pipeline.publish(back)
    pipeline.run_ok()
    rows = rows_by_client(pipeline)
    assert set(rows) == {a, b, c, d}
    assert rows[c]["restaurant_id"] == r1
    assert_output_matches_ledger(pipeline)


@pytest.mark.spark
def test_a_rewind_never_undoes_a_cancellation_with_the_same_datetime_created(
    pipeline: Pipeline,
) -> None:
    """Item 2: the original on partition 2, its cancellation with the same datetime_created on
    partition 0. Re-read together after a rewind, the cancellation still wins."""
    now = db_now(pipeline)
    original = campaign(adv_campaign_datetime_start=now - 60, adv_campaign_datetime_end=now + 3600)
    a, b = new_uuid(), new_uuid()
    pipeline.subscribe((a, original["restaurant_id"]))
    publish_to(pipeline, 2, original)
    pipeline.run_ok()
    assert set(rows_by_client(pipeline)) == {a}

    cancel = {**original, "adv_campaign_datetime_end": original["adv_campaign_datetime_start"]}
    publish_to(pipeline, 0, cancel)
    pipeline.run_ok()
    assert stored(pipeline, original["adv_campaign_id"]) == stored_form(cancel)

    pipeline.subscribe((b, original["restaurant_id"]))
    assert main(["rewind", "--to-beginning"]) == 0
    summary = pipeline.run_ok()
    assert "messages_read 2" in summary, summary
    assert stored(pipeline, original["adv_campaign_id"]) == stored_form(cancel)
    assert set(rows_by_client(pipeline)) == {a}, "the rewind resurrected the cancelled campaign"
    assert len(pipeline.output()) == 1


@pytest.mark.spark
def test_an_end_extended_after_expiry_notifies_only_the_subscribers_not_yet_notified(
    pipeline: Pipeline,
) -> None:
    """Item 7: expired by a newer version, then extended by a newer one still."""
    now = db_now(pipeline)
    active = campaign(adv_campaign_datetime_start=now - 60, adv_campaign_datetime_end=now + 3600)
    restaurant, created = active["restaurant_id"], active["datetime_created"]
    a, b, c = new_uuid(), new_uuid(), new_uuid()
    pipeline.subscribe((a, restaurant))
    pipeline.publish(active)
    pipeline.run_ok()

    pipeline.publish(
        {**active, "adv_campaign_datetime_end": now - 1, "datetime_created": created + 1}
    )
    pipeline.subscribe((b, restaurant))
    pipeline.run_ok()
    assert set(rows_by_client(pipeline)) == {a}, "an expired campaign fired"

    extended = {
        **active,
        "adv_campaign_content": "extended",
        "adv_campaign_datetime_end": now + 7200,
        "datetime_created": created + 2,
    }
    pipeline.publish(extended)
    pipeline.subscribe((c, restaurant))
    pipeline.run_ok()
    rows = rows_by_client(pipeline)
    assert set(rows) == {a, b, c}
    assert rows[a]["adv_campaign_content"] == active["adv_campaign_content"]
    assert {rows[b]["adv_campaign_content"], rows[c]["adv_campaign_content"]} == {"extended"}
    assert_output_matches_ledger(pipeline)


@pytest.mark.spark
@pytest.mark.timeout(600)
def test_a_start_moved_later_after_firing_holds_the_campaign_until_then(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 7: the campaign fired, then a newer version moved its start into the future. It
    is held (no new subscriber is notified, `promo status` lists it) until the new start, then
    only the subscribers not yet notified get it."""
    now = db_now(pipeline)
    active = campaign(adv_campaign_datetime_start=now - 60, adv_campaign_datetime_end=now + 3600)
    restaurant = active["restaurant_id"]
    a, b = new_uuid(), new_uuid()
    pipeline.subscribe((a, restaurant))
    pipeline.publish(active)
    pipeline.run_ok()

    start = db_now(pipeline) + 40
    later = {
        **active,
        "adv_campaign_datetime_start": start,
        "datetime_created": active["datetime_created"] + 1,
    }
    pipeline.publish(later)
    pipeline.subscribe((b, restaurant))
    pipeline.run_ok()
    assert run_time(pipeline) < start, "setup too slow for this check"
    assert set(rows_by_client(pipeline)) == {a}
    capsys.readouterr()
    assert main(["status"]) == 0
    assert f"held {active['adv_campaign_id']}" in capsys.readouterr().out

    poll(lambda: db_now(pipeline) >= start, 120, "the moved start (database clock)")
    pipeline.run_ok()
    rows = rows_by_client(pipeline)
    assert set(rows) == {a, b}
    assert rows[b]["adv_campaign_datetime_start"] == start
    assert rows[a]["adv_campaign_datetime_start"] == active["adv_campaign_datetime_start"]
    assert_output_matches_ledger(pipeline)


@pytest.mark.spark
@pytest.mark.timeout(600)
def test_a_new_text_mid_fan_out_reaches_the_remaining_subscribers_and_the_ledger_matches_output(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Item 7: a run fails after the first slice (2 of 5 subscribers). A newer version with a
    new text and owner arrives; the next run gives the remaining 3 the new text, and the 2
    already triggered keep the old one, on the output topic as in the ledger."""
    monkeypatch.setenv("PROMO_TRIGGER_SLICE_ROWS", "2")
    # One writer: a slice at a time, so the fault after the first leaves exactly 2 triggered.
    monkeypatch.setenv("PROMO_SINK_WRITERS", "1")
    original = campaign()
    clients = sorted(new_uuid() for _ in range(5))
    pipeline.subscribe(*[(client, original["restaurant_id"]) for client in clients])
    pipeline.publish(original)
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "feedback_sink.slice.release").write_text("fail")
    monkeypatch.setenv("PROMO_FAULT_AT", "feedback_sink.slice")
    monkeypatch.setenv("PROMO_FAULT_DIR", str(faults))
    success, summary = pipeline.run()
    assert not success, summary
    assert set(rows_by_client(pipeline)) == set(clients[:2])
    monkeypatch.delenv("PROMO_FAULT_AT")

    updated = {
        **original,
        "adv_campaign_content": "new text",
        "adv_campaign_owner": "new owner",
        "datetime_created": original["datetime_created"] + 1,
    }
    pipeline.publish(updated)
    pipeline.run_ok()
    rows = rows_by_client(pipeline)
    assert set(rows) == set(clients)
    for client in clients[:2]:
        assert rows[client]["adv_campaign_content"] == original["adv_campaign_content"]
    for client in clients[2:]:
        assert (rows[client]["adv_campaign_content"], rows[client]["adv_campaign_owner"]) == (
            "new text",
            "new owner",
        )
    assert_output_matches_ledger(pipeline)
