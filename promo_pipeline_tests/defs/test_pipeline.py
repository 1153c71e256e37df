"""The product's rules, end to end on the real stack: Kafka in, Spark, Postgres and Kafka out."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from promo_pipeline.message_shapes import TRIGGER_COLUMNS
from promo_pipeline.topics import ensure_topics
from promo_pipeline_tests.support.pipeline import (
    SEED_CAMPAIGN,
    SEED_CLIENT,
    Pipeline,
    campaign,
    new_uuid,
)

pytestmark = [pytest.mark.stack, pytest.mark.spark]


def output_pairs(pipeline: Pipeline) -> list[tuple[str, str]]:
    values = [json.loads(message.value()) for message in pipeline.output()]
    return sorted((value["adv_campaign_id"], value["client_id"]) for value in values)


def test_seed_sample_end_to_end_field_by_field(pipeline: Pipeline) -> None:
    pipeline.subscribe((SEED_CLIENT, SEED_CAMPAIGN["restaurant_id"]))
    pipeline.publish(SEED_CAMPAIGN)
    before = int(time.time())
    pipeline.run_ok()
    after = int(time.time())

    [row] = pipeline.feedback()
    expected = {**SEED_CAMPAIGN, "client_id": SEED_CLIENT}
    assert {name: row[name] for name in expected} == expected
    assert row["feedback"] is None
    assert before <= row["trigger_datetime_created"] <= after

    [message] = pipeline.output()
    assert message.key() == SEED_CLIENT.encode()
    value = json.loads(message.value())
    assert list(value) == list(TRIGGER_COLUMNS)
    assert value == {**expected, "trigger_datetime_created": row["trigger_datetime_created"]}
    assert all(type(value[name]) is int for name in TRIGGER_COLUMNS if "datetime" in name)
    assert pipeline.dead_letters() == []


def test_second_run_without_new_data_adds_nothing(pipeline: Pipeline) -> None:
    active = campaign()
    pipeline.subscribe((new_uuid(), active["restaurant_id"]), (new_uuid(), active["restaurant_id"]))
    pipeline.publish(active)
    pipeline.run_ok()
    first_rows, first_messages = pipeline.feedback(), len(pipeline.output())
    assert len(first_rows) == 2 and first_messages == 2

    pipeline.run_ok()
    assert pipeline.feedback() == first_rows
    assert len(pipeline.output()) == first_messages


def test_only_active_campaigns_fire_and_held_ones_fire_once_due(pipeline: Pipeline) -> None:
    now = int(time.time())
    expired = campaign(adv_campaign_datetime_start=now - 7200, adv_campaign_datetime_end=now - 60)
    held = campaign(adv_campaign_datetime_start=now + 12, adv_campaign_datetime_end=now + 3600)
    client = new_uuid()
    pipeline.subscribe((client, expired["restaurant_id"]), (client, held["restaurant_id"]))
    pipeline.publish(expired, held)

    pipeline.run_ok()
    assert pipeline.pairs() == set()
    assert pipeline.output() == []

    while time.time() < held["adv_campaign_datetime_start"]:  # the clock, not a sync sleep
        time.sleep(0.2)
    pipeline.run_ok()
    assert pipeline.pairs() == {(held["adv_campaign_id"], client)}
    assert output_pairs(pipeline) == [(held["adv_campaign_id"], client)]


def test_new_subscriber_of_active_campaign_gets_it_next_run(pipeline: Pipeline) -> None:
    active = campaign()
    first, late = new_uuid(), new_uuid()
    pipeline.subscribe((first, active["restaurant_id"]))
    pipeline.publish(active)
    pipeline.run_ok()
    assert pipeline.pairs() == {(active["adv_campaign_id"], first)}

    pipeline.subscribe((late, active["restaurant_id"]))
    pipeline.run_ok()
    assert pipeline.pairs() == {
        (active["adv_campaign_id"], first),
        (active["adv_campaign_id"], late),
    }
    assert output_pairs(pipeline) == sorted(pipeline.pairs())


def test_resent_and_updated_campaign_notifies_nobody_twice(pipeline: Pipeline) -> None:
    original = campaign()
    client, late = new_uuid(), new_uuid()
    pipeline.subscribe((client, original["restaurant_id"]))
    pipeline.publish(original)
    pipeline.run_ok()

    updated = {**original, "adv_campaign_content": "now 80% off", "datetime_created": 1659131999}
    stale = {**original, "adv_campaign_content": "stale", "datetime_created": 1659130000}
    pipeline.publish(original, updated, stale)
    pipeline.subscribe((late, original["restaurant_id"]))
    pipeline.run_ok()

    rows = {row["client_id"]: row for row in pipeline.feedback()}
    assert set(rows) == {client, late}
    assert rows[client]["adv_campaign_content"] == "first campaign"
    assert rows[late]["adv_campaign_content"] == "now 80% off"  # the newest version wins
    assert output_pairs(pipeline) == sorted(pipeline.pairs())


def test_cancelled_campaign_fires_no_more(pipeline: Pipeline) -> None:
    now = int(time.time())
    active = campaign()
    early, late = new_uuid(), new_uuid()
    pipeline.subscribe((early, active["restaurant_id"]))
    pipeline.publish(active)
    pipeline.run_ok()

    cancelled = {
        **active,
        "adv_campaign_datetime_end": now - 1,
        "adv_campaign_datetime_start": now - 100,
        "datetime_created": active["datetime_created"] + 1,
    }
    pipeline.publish(cancelled)
    pipeline.subscribe((late, active["restaurant_id"]))
    pipeline.run_ok()
    assert pipeline.pairs() == {(active["adv_campaign_id"], early)}
    assert len(pipeline.output()) == 1


def test_duplicate_subscription_rows_give_one_trigger(pipeline: Pipeline) -> None:
    active = campaign()
    client = new_uuid()
    pipeline.subscribe(*[(client, active["restaurant_id"])] * 3)
    pipeline.publish(active, active)
    pipeline.run_ok()
    assert len(pipeline.feedback()) == 1
    assert len(pipeline.output()) == 1


def test_invalid_input_goes_to_dlq_unchanged_and_good_input_proceeds(pipeline: Pipeline) -> None:
    good = campaign()
    client = new_uuid()
    pipeline.subscribe((client, good["restaurant_id"]))
    bad = {
        b"{not json": "not_json",
        b"\xff\xfe": "not_utf8",
        b"[1, 2]": "not_object",
        json.dumps({**good, "adv_campaign_id": "42"}).encode(): "invalid_field",
        json.dumps(
            {k: v for k, v in good.items() if k != "client_id" and k != "restaurant_id"}
        ).encode(): "missing_field",
    }
    for value in bad:
        pipeline.publish(value, key=b"key-" + value[:4])
    pipeline.publish(good)
    pipeline.run_ok()

    assert pipeline.pairs() == {(good["adv_campaign_id"], client)}
    letters = pipeline.dead_letters()
    assert sorted(m.value() for m in letters) == sorted(bad)
    for message in letters:
        headers = dict(message.headers())
        assert message.key() == b"key-" + message.value()[:4]
        assert headers["promo.reject.code"].decode() == bad[message.value()]
        assert headers["promo.reject.reason"].decode().startswith(bad[message.value()] + ": ")


def test_kafka_sink_failure_is_recovered_with_identical_messages(pipeline: Pipeline) -> None:
    """The output topic is gone when the Kafka sink runs; the next run sends the stored rows."""
    from confluent_kafka.admin import AdminClient

    from promo_pipeline.defs.resources import kafka_resource

    active = campaign()
    clients = sorted(new_uuid() for _ in range(3))
    pipeline.subscribe(*[(client, active["restaurant_id"]) for client in clients])
    admin = AdminClient({"bootstrap.servers": pipeline.settings.kafka_bootstrap_servers})
    output = pipeline.settings.promo_output_topic
    for future in admin.delete_topics([output], operation_timeout=30).values():
        future.result(30)
    pipeline.publish(active)

    success, summary = pipeline.run()
    assert not success and "FAILED push_sink" in summary
    assert pipeline.pairs() == {(active["adv_campaign_id"], c) for c in clients}
    assert pipeline.sql("SELECT count(*) FROM promo.unsent_triggers") == [(3,)]
    stored = {row["client_id"]: row["trigger_datetime_created"] for row in pipeline.feedback()}

    ensure_topics(kafka_resource(pipeline.settings))
    pipeline.run_ok()
    messages = pipeline.output()
    assert sorted(m.key().decode() for m in messages) == clients
    for message in messages:
        value = json.loads(message.value())
        assert value["trigger_datetime_created"] == stored[value["client_id"]]
    assert pipeline.sql("SELECT count(*) FROM promo.unsent_triggers") == [(0,)]
    assert len(pipeline.feedback()) == 3


def test_database_refuses_a_second_row_for_a_pair(pipeline: Pipeline) -> None:
    columns = ", ".join(TRIGGER_COLUMNS)
    row = (*SEED_CAMPAIGN.values(), SEED_CLIENT, 1700000000)
    ordered = dict(zip([*SEED_CAMPAIGN, "client_id", "trigger_datetime_created"], row, strict=True))
    values = [ordered[name] for name in TRIGGER_COLUMNS]
    insert = (
        f"INSERT INTO public.subscribers_feedback ({columns}) VALUES ({', '.join(['%s'] * 10)})"
    )
    pipeline.sql(insert, values)
    with pytest.raises(psycopg.errors.UniqueViolation):
        pipeline.sql(insert, values)


def test_trigger_time_is_the_databases_clock_not_the_run_hosts(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's host 2 h ahead of the database: the campaign active by the shared clock fires,
    stamped with the database's time, and one due in 1.5 h does not fire early."""
    [(now,)] = pipeline.sql("SELECT floor(extract(epoch FROM clock_timestamp()))::int8")
    active = campaign(adv_campaign_datetime_start=now - 600, adv_campaign_datetime_end=now + 3600)
    later = campaign(adv_campaign_datetime_start=now + 5400, adv_campaign_datetime_end=now + 9000)
    client = new_uuid()
    pipeline.subscribe((client, active["restaurant_id"]), (new_uuid(), later["restaurant_id"]))
    pipeline.publish(active, later)
    host_time = time.time
    monkeypatch.setattr(time, "time", lambda: host_time() + 7200)
    pipeline.run_ok()
    monkeypatch.setattr(time, "time", host_time)

    [(after,)] = pipeline.sql("SELECT floor(extract(epoch FROM clock_timestamp()))::int8")
    [row] = pipeline.feedback()
    assert (row["adv_campaign_id"], row["client_id"]) == (active["adv_campaign_id"], client)
    assert now <= row["trigger_datetime_created"] <= after
