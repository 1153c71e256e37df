"""Model-based test of the campaign version rules (issue 21; README, "Campaign versions"),
against the real stack: Hypothesis draws sequences of campaign versions (new, updated, moved,
cancelled, extended, stale; random partitions; equal, rising or lower datetime_created; ids
in either case), subscriptions and unsubscriptions, runs, rewinds, DLQ replays and clock
advances, and after every run compares the ledger, the output topic and promo.campaigns with
a small pure-Python model (`VersionsModel`): each pair at most once; a pair exists iff the
model says it was due at some run's T; the stored version is the model's.

Profiles (env `PROMO_VERSIONS_PROFILE`): `ci` (the default: 12 examples of at most 8 steps,
derandomized, so CI is reproducible) and `long` (20 examples of at most 16 steps, a random
seed), by hand: `PROMO_VERSIONS_PROFILE=long .venv/bin/python -m pytest -q
promo_pipeline_tests/defs/campaigns/test_versions_model.py`.

The clock: the pipeline's clock is the database's (`fanout.db_now`), and nothing fakes it.
Every window is drawn in steps of `STEP` seconds from the database's now when the version is
published (a start in the past or the future; an end a step or two later, far later, or at or
before the start: a cancellation), so windows open and close in real time while the example
runs; `advance_clock_and_run` waits (polling the database clock) for the next step, then runs.
The model judges each run at the run's own T (promo.trigger_window), so how long a run takes
never matters.

A cheap reset: one database for the module (creating one costs a migration); each example has
fresh campaign, restaurant and client ids and its own input, output and DLQ topics and
checkpoint (a topic costs milliseconds), so no example sees another's messages, rewinds or dead
letters; at its end its subscriptions are deleted, so its campaigns notify nobody in later
examples' runs.

The DLQ's rules (README, `promo dlq replay`): a message is dead-lettered once per origin (its
input offset), however often a rewind re-reads it; a replay re-sends each origin once, ever, and
a re-sent copy that is rejected again is a new origin, re-sent by the next replay.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from promo_pipeline.cli import main
from promo_pipeline.defs.resources import kafka_resource
from promo_pipeline.fanout import DB_NOW
from promo_pipeline.message_shapes import CAMPAIGN_COLUMNS, TRIGGER_COLUMNS
from promo_pipeline.settings import load_settings
from promo_pipeline.topics import ensure_topics
from promo_pipeline_tests.defs.campaigns.test_input_edges import publish_to
from promo_pipeline_tests.support.faults import poll
from promo_pipeline_tests.support.pipeline import Pipeline, fresh_pipeline, new_uuid
from promo_pipeline_tests.support.versions import is_cancellation, newest

pytestmark = [pytest.mark.stack, pytest.mark.spark]

STEP = 4  # seconds: the windows' unit, and how far the clock advances
CREATED = 1_700_000_000
CAMPAIGNS, RESTAURANTS, CLIENTS = 2, 2, 3
# A version's choices: campaign, restaurant, start (steps from now: active or held), length
# in steps (1000: long; <= 0: a cancellation), text, owner, datetime_created step (up, same,
# stale), partition, ids in upper case. The first of each is what Hypothesis tries first.
VERSION = st.fixed_dictionaries(
    {
        "c": st.integers(0, CAMPAIGNS - 1),
        "r": st.integers(0, RESTAURANTS - 1),
        "start": st.sampled_from([-1, 1, -2]),
        "length": st.sampled_from([1000, 0, 2, 1, -1]),
        "text": st.sampled_from(["a", "b"]),
        "owner": st.sampled_from(["o1", "o2"]),
        "created": st.sampled_from([1, 0, -1]),
        "partition": st.integers(0, 2),
        "upper": st.booleans(),
    }
)
PAIR = st.tuples(st.integers(0, CLIENTS - 1), st.integers(0, RESTAURANTS - 1), st.booleans())
# What the examples did, over the whole test: printed, and checked not to be empty.
TALLY: Counter[str] = Counter()

# Read at import: the pipeline fixtures clear every PROMO_* variable before the test runs.
PROFILE = os.environ.get("PROMO_VERSIONS_PROFILE", "ci")
settings.register_profile(
    "versions-ci",
    max_examples=12,
    stateful_step_count=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "versions-long",
    max_examples=20,
    stateful_step_count=16,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class VersionsModel:
    """The rules, in Python: what is stored, what is dead-lettered, who is due at T."""

    def __init__(self) -> None:
        # Messages on the input topic as (origin, version): the origin stands for the offset.
        self.unread: list[tuple[int, dict[str, Any]]] = []  # not yet read
        self.published: list[tuple[int, dict[str, Any]]] = []  # all
        self.dead: dict[int, dict[str, Any]] = {}  # on the DLQ, once per origin
        self.replayed: set[int] = set()  # origins a replay re-sent
        self.stored: dict[str, dict[str, Any]] = {}
        self.subscribed: set[tuple[str, str]] = set()  # (client, restaurant), lower case
        self.ledger: dict[tuple[str, str], dict[str, Any]] = {}  # (campaign, client) -> row

    def publish(self, version: dict[str, Any]) -> None:
        message = (len(self.published), version)
        self.published.append(message)
        self.unread.append(message)

    def replay(self) -> None:
        """Each dead letter not re-sent before goes back to the input topic, once."""
        for origin, version in list(self.dead.items()):
            if origin not in self.replayed:
                self.replayed.add(origin)
                self.publish(version)

    def run(self, trigger_time: int) -> None:
        """One run reading everything unread in one micro-batch, then triggering at T."""
        batch, self.unread = self.unread, []
        # end <= start cancels a known campaign: stored, or live in the same batch.
        known = set(self.stored) | {
            v["adv_campaign_id"].lower() for _, v in batch if not is_cancellation(v)
        }
        for origin, version in batch:
            campaign = version["adv_campaign_id"].lower()
            if is_cancellation(version) and campaign not in known:
                self.dead.setdefault(origin, version)
            else:
                self.stored[campaign] = newest(self.stored.get(campaign), version)
        for campaign, version in self.stored.items():
            start, end = (
                version["adv_campaign_datetime_start"],
                version["adv_campaign_datetime_end"],
            )
            if not start <= trigger_time < end:
                continue
            for client, restaurant in self.subscribed:
                if restaurant == version["restaurant_id"] and (campaign, client) not in self.ledger:
                    self.ledger[(campaign, client)] = {
                        **version,
                        "client_id": client,
                        "trigger_datetime_created": trigger_time,
                    }


class VersionsMachine(RuleBasedStateMachine):
    """One example: fresh ids and topics on the module's database (see the module docstring)."""

    def __init__(self, base: Pipeline, workdir: Path) -> None:
        super().__init__()
        suffix = uuid.uuid4().hex[:10]
        self.env = {
            "PROMO_INPUT_TOPIC": f"campaigns_{suffix}",
            "PROMO_OUTPUT_TOPIC": f"triggers_{suffix}",
            "PROMO_DLQ_TOPIC": f"dlq_{suffix}",
            "PROMO_STATE_DIR": str(workdir / suffix),
        }
        self.saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        self.pipeline = Pipeline(settings=load_settings(), env={**base.env, **self.env})
        ensure_topics(kafka_resource(self.pipeline.settings))
        self.campaigns = [new_uuid() for _ in range(CAMPAIGNS)]
        self.restaurants = [new_uuid() for _ in range(RESTAURANTS)]
        self.clients = [new_uuid() for _ in range(CLIENTS)]
        self.base = self.db_now()
        self.created: dict[str, int] = {}
        self.model = VersionsModel()

    def db_now(self) -> int:
        return self.pipeline.sql(DB_NOW)[0][0]

    def publish_version(self, v: dict[str, Any]) -> None:
        """A version: new, updated (text, owner), moved (restaurant), extended or shortened
        (window), cancelled (length <= 0), with datetime_created equal, rising or stale."""
        campaign, restaurant = self.campaigns[v["c"]], self.restaurants[v["r"]]
        self.created[campaign] = self.created.get(campaign, CREATED) + v["created"]
        begins = self.db_now() + v["start"] * STEP
        version = {
            "restaurant_id": restaurant.upper() if v["upper"] else restaurant,
            "adv_campaign_id": campaign.upper() if v["upper"] else campaign,
            "adv_campaign_content": v["text"],
            "adv_campaign_owner": v["owner"],
            "adv_campaign_owner_contact": f"{v['owner']}@example.com",
            "adv_campaign_datetime_start": begins,
            "adv_campaign_datetime_end": begins + v["length"] * STEP,
            "datetime_created": self.created[campaign],
        }
        publish_to(self.pipeline, v["partition"], version)
        self.model.publish(version)
        TALLY["cancellations" if v["length"] <= 0 else "versions"] += 1

    @initialize(
        v=VERSION,
        length=st.sampled_from([1000, 2]),
        early_cancel=st.sampled_from([True, False]),
        pairs=st.lists(PAIR, max_size=3),
    )
    def begin(
        self, v: dict[str, Any], length: int, early_cancel: bool, pairs: list[tuple[int, int, bool]]
    ) -> None:
        """Every example starts with a live version of campaign 0 and a subscriber of its
        restaurant (perhaps others), so its runs have something to trigger; often with a
        cancellation of campaign 1 before anything of it was read (a dead letter, unless a
        version of it comes in the same micro-batch)."""
        for pair in [(0, v["r"], False), *pairs]:
            self.subscribe(*pair)
        if early_cancel:
            self.publish_version({**v, "c": 1, "length": 0})
        self.publish_version({**v, "c": 0, "length": length})

    @rule(v=VERSION)
    def publish(self, v: dict[str, Any]) -> None:
        self.publish_version(v)

    @rule(pair=PAIR)
    def add_subscription(self, pair: tuple[int, int, bool]) -> None:
        self.subscribe(*pair)

    def subscribe(self, client: int, r: int, upper: bool) -> None:
        pair = (self.clients[client], self.restaurants[r])
        self.pipeline.subscribe(tuple(i.upper() for i in pair) if upper else pair)
        self.model.subscribed.add(pair)
        TALLY["subscriptions"] += 1

    @precondition(lambda self: self.model.subscribed)
    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        """A DELETE of every row of the pair: it is due no more; a trigger made stays."""
        client, restaurant = data.draw(st.sampled_from(sorted(self.model.subscribed)))
        self.pipeline.sql(
            "DELETE FROM public.subscribers_restaurants "
            "WHERE lower(client_id) = %s AND lower(restaurant_id) = %s",
            (client, restaurant),
        )
        self.model.subscribed.discard((client, restaurant))
        TALLY["unsubscriptions"] += 1

    @rule()
    def advance_clock_and_run(self) -> None:
        """Wait for the next grid point by the database's clock (a window may open or close
        meanwhile), then run, as the sensor would."""
        target = self.base + ((self.db_now() - self.base) // STEP + 1) * STEP
        poll(lambda: self.db_now() >= target, STEP + 30, "the database clock")
        TALLY["clock advances"] += 1
        self.run()

    @precondition(lambda self: self.model.published)
    @rule(replay=st.booleans())
    def recover(self, replay: bool) -> None:
        """What an operator does: `promo dlq replay` (re-sends each dead letter not re-sent
        before, also when there is none) or `promo rewind --to-beginning`."""
        if replay:
            assert main(["dlq", "replay"]) == 0
            self.model.replay()
            TALLY["dlq replays"] += 1
        else:
            assert main(["rewind", "--to-beginning"]) == 0
            self.model.unread = list(self.model.published)
            TALLY["rewinds"] += 1

    @rule()
    def run(self) -> None:
        self.pipeline.run_ok()
        [(trigger_time,)] = self.pipeline.sql("SELECT trigger_time FROM promo.trigger_window")
        triggered, dead = len(self.model.ledger), len(self.model.dead)
        self.model.run(trigger_time)
        self.check(trigger_time)
        TALLY["runs"] += 1
        TALLY["triggers"] += len(self.model.ledger) - triggered
        TALLY["dead letters"] += len(self.model.dead) - dead

    def check(self, trigger_time: int) -> None:
        ids = self.campaigns
        columns = ", ".join(TRIGGER_COLUMNS)
        rows = [
            dict(zip(TRIGGER_COLUMNS, row, strict=True))
            for row in self.pipeline.sql(
                f"SELECT {columns} FROM public.subscribers_feedback "
                "WHERE adv_campaign_id = ANY(%s)",
                (ids,),
            )
        ]
        ledger = {(row["adv_campaign_id"], row["client_id"]): row for row in rows}
        assert len(ledger) == len(rows), "a pair triggered twice in the ledger"
        assert ledger == self.model.ledger, f"ledger at T={trigger_time} differs from the model"

        sent = [json.loads(m.value()) for m in self.pipeline.output()]
        counts = Counter((v["adv_campaign_id"], v["client_id"]) for v in sent)
        assert max(counts.values(), default=1) == 1, f"sent twice: {counts.most_common(1)}"
        assert {(v["adv_campaign_id"], v["client_id"]): v for v in sent} == ledger

        stored_columns = ", ".join(CAMPAIGN_COLUMNS)
        stored = {
            row[1]: dict(zip(CAMPAIGN_COLUMNS, row, strict=True))
            for row in self.pipeline.sql(
                f"SELECT {stored_columns} FROM promo.campaigns WHERE adv_campaign_id = ANY(%s)",
                (ids,),
            )
        }
        assert stored == self.model.stored

    def teardown(self) -> None:
        self.pipeline.sql(
            "DELETE FROM public.subscribers_restaurants WHERE lower(restaurant_id) = ANY(%s)",
            (self.restaurants,),
        )
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def model_pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield fresh_pipeline(stack_env, tmp_path_factory.mktemp("model"), monkeypatch)


@pytest.mark.timeout(3600)
def test_versions_subscriptions_runs_rewinds_and_replays_follow_the_model(
    model_pipeline: Pipeline, tmp_path: Path
) -> None:
    profile = PROFILE
    TALLY.clear()
    run_state_machine_as_test(
        lambda: VersionsMachine(model_pipeline, tmp_path),
        settings=settings.get_profile(f"versions-{profile}"),
    )
    print(f"versions model, profile {profile}: {dict(sorted(TALLY.items()))}")
    # Not a test of nothing: the examples made triggers and went through every kind of step.
    kinds = ("runs", "triggers", "rewinds", "dlq replays", "dead letters", "unsubscriptions")
    for what in kinds:
        assert TALLY[what] > 0, f"no {what} in any example: {dict(TALLY)}"
