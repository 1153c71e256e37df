"""The campaign-window rules agree everywhere: on a table of edge cases, at two times T, what
the sensor predicts, what the run writes, what `triggers` counts as due, what `promo status`
classifies and what `promo subscribe` says a subscription will get are the same campaigns.

The campaigns are stored by ingest's own upsert and the times are chosen, not waited for: every
caller takes T as an argument (the run's window is built for it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from promo_pipeline.campaign_rules import WILL_TRIGGER
from promo_pipeline.defs.resources import kafka_resource, postgres_resource
from promo_pipeline.fanout import (
    Window,
    due_full,
    due_new,
    full_fanout_slices,
    new_subscription_slices,
    settled_watermark,
)
from promo_pipeline.ingest import store_campaigns
from promo_pipeline.message_shapes import Campaign
from promo_pipeline.settings import checkpoint_dir
from promo_pipeline.status_report import status_report
from promo_pipeline.work import find_work
from promo_pipeline_tests.support.pipeline import Pipeline, campaign, new_uuid

pytestmark = [pytest.mark.stack]

# Ten days ahead of any real clock in a test run, so nothing here depends on the time now.
T = 2_000_000_000
LATER = T + 60
HOUR = 3600


@dataclass
class Case:
    """One campaign of its own restaurant with one subscriber; its state at T and at LATER."""

    name: str
    start: int
    end: int
    states: tuple[str, str]
    document: dict = field(default_factory=dict)
    client: str = field(default_factory=new_uuid)

    @property
    def id(self) -> str:
        return self.document["adv_campaign_id"]

    @property
    def restaurant(self) -> str:
        return self.document["restaurant_id"]


STARTS, ENDS, EXPIRED, CANCELLED, HELD, MOVED = CASES = [
    Case("starts at T", T, T + HOUR, ("active", "active")),
    Case("ends at T", T - HOUR, T, ("expired", "expired")),
    Case("expired", T - 2 * HOUR, T - HOUR, ("expired", "expired")),
    Case("cancelled", T + 30, T + 30, ("cancelled", "cancelled")),
    Case("held, then due", LATER, T + HOUR, ("held", "active")),
    # Fanned out at T for its first restaurant, moved to another before LATER.
    Case("moved restaurant", T - HOUR, T + HOUR, ("active", "active")),
]
STATES = ("active", "held", "expired", "cancelled")
# The sensor's reasons that name campaigns.
NAMED = re.compile(
    r"(?:active campaigns due for fan-out|new subscribers of active campaigns): (.+)"
)


def store(pipeline: Pipeline, document: dict, created: int) -> None:
    """A campaign version folded into promo.campaigns by ingest's upsert."""
    version = Campaign.model_construct(**{**document, "datetime_created": created})
    with pipeline.connect() as conn, conn.transaction():
        store_campaigns(conn, [(version, 0, created)])


def sensor_due(pipeline: Pipeline, t: int) -> set[str]:
    """The campaigns the sensor names as due a fan-out or joined by a new subscriber at `t`."""
    work = find_work(
        kafka_resource(pipeline.settings),
        postgres_resource(pipeline.settings),
        str(checkpoint_dir(pipeline.settings.promo_state_dir)),
        now=t,
    )
    named = set()
    for reason in work.reasons:
        found = NAMED.match(reason)
        if found:
            named |= set(found.group(1).split(", "))
    return named


def will_trigger(pipeline: Pipeline, client: str, restaurant: str, t: int) -> list[str]:
    """`promo subscribe`'s answer for an existing subscription at `t`."""
    rows = pipeline.sql(WILL_TRIGGER, {"client": client, "restaurant": restaurant, "t": t})
    return [row[0] for row in rows]


def run_at(pipeline: Pipeline, t: int) -> tuple[dict[str, int], dict[str, int]]:
    """The run's due set (the triggers asset's counts) and what its Postgres sink then writes,
    in the sink's order of steps, with a window of trigger time `t`."""
    written: dict[str, int] = {}
    with pipeline.connect() as conn:
        window = Window(f"rules-{t}", t, settled_watermark(conn)[0])
        due = {**due_full(conn, window)}
        for campaign_id, count in due_new(conn, window).items():
            due[campaign_id] = due.get(campaign_id, 0) + count
        for step in (new_subscription_slices, full_fanout_slices, new_subscription_slices):
            for per_campaign in step(conn, window, 2):
                for campaign_id, count in per_campaign.items():
                    written[campaign_id] = written.get(campaign_id, 0) + count
    return due, written


def status_at(pipeline: Pipeline, t: int) -> tuple[dict[str, int], set[str]]:
    report, _ = status_report(pipeline.settings, now=t)
    campaigns = report["campaigns"]
    counts = {state: campaigns[state] for state in ("active", "held", "expired", "cancelled")}
    return counts, {held["adv_campaign_id"] for held in campaigns["due"]}


def test_sensor_run_status_and_subscribe_agree_on_the_campaign_window_edges(
    pipeline: Pipeline,
) -> None:
    for case in CASES:
        case.document = campaign(
            adv_campaign_datetime_start=case.start, adv_campaign_datetime_end=case.end
        )
        pipeline.subscribe((case.client, case.restaurant))
        store(pipeline, case.document, created=1)
    # Subscribers of the restaurant MOVED moves to (in upper case), of the one it leaves (after
    # the move), and of STARTS once it is fanned out.
    new_restaurant, elsewhere, newcomer, late = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    pipeline.subscribe((elsewhere, new_restaurant.upper()))
    # At each time: the subscriptions that the next run triggers, per campaign.
    at_t = {STARTS.id: {STARTS.client}, MOVED.id: {MOVED.client}}
    at_later = {STARTS.id: {late}, HELD.id: {HELD.client}, MOVED.id: {elsewhere}}
    subscriptions = [(case.client, case.restaurant) for case in CASES]
    subscriptions += [(elsewhere, new_restaurant), (newcomer, MOVED.restaurant)]
    subscriptions += [(late, STARTS.restaurant)]

    for step, (t, expected) in enumerate([(T, at_t), (LATER, at_later)]):
        if t == LATER:
            store(pipeline, {**MOVED.document, "restaurant_id": new_restaurant}, created=2)
            pipeline.subscribe((newcomer, MOVED.restaurant), (late, STARTS.restaurant))
        counts, held = status_at(pipeline, t)
        assert counts == {s: sum(c.states[step] == s for c in CASES) for s in STATES}, t
        assert held == {case.id for case in CASES if case.states[step] == "held"}, t
        told = {
            (client, campaign_id)
            for client, restaurant in subscriptions
            for campaign_id in will_trigger(pipeline, client, restaurant, t)
        }
        assert told == {(c, k) for k, clients in expected.items() for c in clients}, t
        predicted = sensor_due(pipeline, t)
        due, written = run_at(pipeline, t)
        counted = {campaign_id: len(clients) for campaign_id, clients in expected.items()}
        assert predicted == set(expected) and due == written == counted, (t, predicted, due)
        # Nothing is due twice: the same time again finds no work, and tells of none.
        assert sensor_due(pipeline, t) == set() and run_at(pipeline, t) == ({}, {}), t
        assert not any(will_trigger(pipeline, c, r, t) for c, r in subscriptions), t

    pairs = set(pipeline.sql("SELECT adv_campaign_id, client_id FROM public.subscribers_feedback"))
    assert pairs == {
        (campaign_id, client)
        for expected in (at_t, at_later)
        for campaign_id, clients in expected.items()
        for client in clients
    }
