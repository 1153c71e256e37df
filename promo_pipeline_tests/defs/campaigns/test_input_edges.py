"""What operators and producers really do to the input (issue 12), against the real stack:
a recreated topic, retention deleting unread offsets, a damaged checkpoint, a campaign re-sent
with upper-case ids, a held campaign cancelled, and the recovery tools."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from dagster import DagsterInstance, RunRequest, SkipReason

from promo_pipeline.cli import main
from promo_pipeline.db import PIPELINE_LOCK
from promo_pipeline.settings import checkpoint_dir
from promo_pipeline_tests.support.dagster import tick
from promo_pipeline_tests.support.pipeline import Pipeline, campaign, new_uuid

pytestmark = [pytest.mark.stack, pytest.mark.spark]


def publish_to(pipeline: Pipeline, partition: int, *documents: dict[str, Any]) -> None:
    """Campaigns into one partition, so the test knows every offset."""
    producer = Producer({"bootstrap.servers": pipeline.settings.kafka_bootstrap_servers})
    for document in documents:
        producer.produce(
            pipeline.settings.promo_input_topic, json.dumps(document).encode(), partition=partition
        )
    assert producer.flush(30) == 0


def subscribed(pipeline: Pipeline, count: int, **fields: Any) -> list[dict[str, Any]]:
    """`count` campaigns, each with one new subscriber."""
    made = [campaign(**fields) for _ in range(count)]
    pipeline.subscribe(*[(new_uuid(), c["restaurant_id"]) for c in made])
    return made


def poll(condition: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def recreate_input(pipeline: Pipeline) -> None:
    """Delete the input topic and create it again (3 partitions), as an operator would."""
    topic = pipeline.settings.promo_input_topic
    admin = AdminClient({"bootstrap.servers": pipeline.settings.kafka_bootstrap_servers})
    admin.delete_topics([topic], operation_timeout=30)[topic].result(30)

    def created() -> bool:
        try:
            admin.create_topics([NewTopic(topic, 3, 1)], operation_timeout=30)[topic].result(30)
            return True
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            return False

    poll(created, 60, f"{topic} to be created again")
    poll(lambda: topic in admin.list_topics(timeout=10).topics, 30, f"{topic} metadata")


def run_summary(pipeline: Pipeline) -> str:
    summary = pipeline.run_ok()
    assert "FAILED" not in summary, summary
    return summary


def triggered(pipeline: Pipeline, campaigns: list[dict[str, Any]]) -> set[str]:
    ids = {c["adv_campaign_id"] for c in campaigns}
    return {campaign_id for campaign_id, _ in pipeline.pairs()} & ids


def test_recreated_topic_is_read_from_its_start(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    instance = DagsterInstance.ephemeral()
    first = subscribed(pipeline, 3)
    publish_to(pipeline, 0, *first)
    run_summary(pipeline)
    assert triggered(pipeline, first) == {c["adv_campaign_id"] for c in first}

    # New end offsets below the checkpoint's (1 < 3): Spark alone fails every run. Without a
    # recorded topic id (a checkpoint older than this version) the offsets alone tell.
    pipeline.sql("DELETE FROM promo.input_topics")
    recreate_input(pipeline)
    fewer = subscribed(pipeline, 1)
    publish_to(pipeline, 0, *fewer)
    wanted = tick(pipeline, instance)
    assert isinstance(wanted, RunRequest), wanted
    assert "was recreated" in wanted.tags["promo/reason"]
    assert "was unknown (the checkpoint is past the topic's end)" in wanted.tags["promo/reason"]
    assert main(["status"]) == 0
    assert "the topic was recreated" in capsys.readouterr().out
    summary = run_summary(pipeline)
    assert "topic_recreated True" in summary, summary
    assert triggered(pipeline, fewer) == {fewer[0]["adv_campaign_id"]}

    # New end offsets above the checkpoint's (5 > 1): Spark alone skips offsets 0 to 0.
    recreate_input(pipeline)
    more = subscribed(pipeline, 5)
    publish_to(pipeline, 0, *more)
    summary = run_summary(pipeline)
    assert "messages_read 5" in summary and "topic_recreated True" in summary, summary
    [(previous,)] = pipeline.sql(
        "SELECT detail->>'previous_topic_id' FROM promo.input_events ORDER BY id DESC LIMIT 1"
    )
    assert previous != "unknown" and len(previous) >= 16, "the recorded id told this time"
    assert triggered(pipeline, more) == {c["adv_campaign_id"] for c in more}
    kinds = pipeline.sql("SELECT kind FROM promo.input_events ORDER BY id")
    assert kinds == [("topic_recreated",), ("topic_recreated",)]
    old = sorted(Path(pipeline.settings.promo_state_dir, "checkpoints").glob("campaigns.*"))
    assert len(old) == 2, "each old checkpoint is kept next to the new one"
    assert len(pipeline.feedback()) == 9  # every campaign once, none twice


def test_retention_gap_is_reported_and_the_pipeline_reads_on(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    instance = DagsterInstance.ephemeral()
    read = subscribed(pipeline, 2)
    publish_to(pipeline, 0, *read)
    run_summary(pipeline)

    lost, kept = subscribed(pipeline, 2), subscribed(pipeline, 1)
    publish_to(pipeline, 0, *lost, *kept)  # offsets 2, 3 and 4
    admin = AdminClient({"bootstrap.servers": pipeline.settings.kafka_bootstrap_servers})
    topic = pipeline.settings.promo_input_topic
    [future] = admin.delete_records([TopicPartition(topic, 0, 4)]).values()
    assert future.result(30).low_watermark == 4

    assert main(["status"]) == 0
    assert "LOST 2 offsets deleted by retention before they were read (p0 offsets 2..3)" in (
        capsys.readouterr().out
    )
    summary = run_summary(pipeline)
    assert "lost_offsets 2" in summary, summary
    assert (
        "check no_input_lost_before_read: ERROR (2 input offsets lost before they were read: "
        "p0 offsets 2..3)" in summary
    ), summary
    assert triggered(pipeline, kept) == {kept[0]["adv_campaign_id"]}
    assert triggered(pipeline, lost) == set()

    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input"]["waiting"] == 0
    [event] = report["input_events"]
    assert event["kind"] == "retention_gap" and event["detail"]["ranges"] == {"0": [2, 4]}
    # Recorded once; the sensor has nothing more to do, so no run fails for ever.
    idle = tick(pipeline, instance)
    assert isinstance(idle, SkipReason), idle
    summary = run_summary(pipeline)
    assert "lost_offsets 0" in summary and "no_input_lost_before_read: passed" in summary


def damage(path: Path) -> None:
    """Cut a checkpoint file in the middle, as a full disk or a crash would."""
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])


@pytest.mark.parametrize("folder", ["offsets", "commits"])
def test_corrupt_checkpoint_names_the_file_and_the_rewind_that_repairs_it(
    folder: str, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    instance = DagsterInstance.ephemeral()
    first, second = subscribed(pipeline, 1), subscribed(pipeline, 1)
    publish_to(pipeline, 1, *first)
    run_summary(pipeline)
    publish_to(pipeline, 1, *second)
    run_summary(pipeline)
    checkpoint = checkpoint_dir(pipeline.settings.promo_state_dir)
    damage(checkpoint / folder / "1")

    success, summary = pipeline.run()
    assert not success
    [failed] = [line for line in summary.splitlines() if "FAILED" in line]
    assert failed.startswith(
        f"  FAILED campaign_batch: Spark checkpoint file {checkpoint / folder / '1'}: truncated"
    ), summary
    assert failed.endswith(
        "; fix: `promo rewind --to-offsets 0:0,1:1,2:0` (after batch 0, the last good one) or "
        "`promo rewind --to-beginning`"
    ), summary
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "messages waiting unknown, checkpoint corrupt" in out and "0 messages" not in out
    skipped = tick(pipeline, instance)
    assert isinstance(skipped, SkipReason) and "not launching: Spark checkpoint" in (
        skipped.skip_message
    )

    assert main(["rewind", "--to-offsets", "0:0,1:1,2:0"]) == 0
    assert "the next run reads p0 at 0, p1 at 1, p2 at 0; the old checkpoint is kept in" in (
        capsys.readouterr().out
    )
    summary = run_summary(pipeline)
    assert "messages_read 1" in summary, summary
    assert triggered(pipeline, second) == {second[0]["adv_campaign_id"]}
    assert len(pipeline.feedback()) == 2


def test_rewind_refuses_while_a_run_holds_the_lock_and_rereads_without_double_triggers(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    early = subscribed(pipeline, 2)
    publish_to(pipeline, 2, *early)
    later = subscribed(pipeline, 1)
    publish_to(pipeline, 2, *later)
    run_summary(pipeline)
    assert len(pipeline.feedback()) == 3
    capsys.readouterr()

    with psycopg.connect(_conninfo(pipeline), autocommit=True) as run_lock:
        run_lock.execute("SELECT pg_advisory_lock(hashtext(%s))", (PIPELINE_LOCK,))
        assert main(["rewind", "--to-beginning"]) == 1
        err = capsys.readouterr().err.strip()
        assert err == (
            "promo: a promo_pipeline run holds the pipeline lock; rewind refused (wait for the "
            "run to end: `promo status`)"
        )
    assert main(["rewind", "--to-beginning"]) == 0
    capsys.readouterr()
    summary = run_summary(pipeline)
    assert "messages_read 3" in summary, summary
    assert len(pipeline.feedback()) == 3  # re-read, not re-triggered

    # --to-time: from the first message at or after T (here: the later campaign's timestamp).
    stamps = [m.timestamp()[1] for m in pipeline.read_topic(pipeline.settings.promo_input_topic)]
    assert main(["rewind", "--to-time", f"{stamps[2] // 1000}"]) == 0
    capsys.readouterr()
    summary = run_summary(pipeline)
    read = int(summary.split("messages_read ")[1].split(",")[0])
    assert read == sum(stamp // 1000 >= stamps[2] // 1000 for stamp in stamps), summary
    assert len(pipeline.feedback()) == 3


def _conninfo(pipeline: Pipeline) -> str:
    from promo_pipeline.db import conninfo

    return conninfo(pipeline.settings)


def test_same_campaign_in_upper_case_is_not_a_second_notification(pipeline: Pipeline) -> None:
    active = campaign()
    client = new_uuid()
    pipeline.subscribe((client, active["restaurant_id"]))
    publish_to(pipeline, 0, active)
    run_summary(pipeline)
    assert pipeline.pairs() == {(active["adv_campaign_id"], client)}

    shouting = {
        **active,
        "adv_campaign_id": active["adv_campaign_id"].upper(),
        "datetime_created": active["datetime_created"] + 1,
    }
    both = {**shouting, "restaurant_id": active["restaurant_id"].upper()}
    publish_to(pipeline, 1, shouting, both)
    run_summary(pipeline)
    assert pipeline.pairs() == {(active["adv_campaign_id"], client)}
    assert len(pipeline.output()) == 1
    assert pipeline.sql("SELECT adv_campaign_id, restaurant_id FROM promo.campaigns") == [
        (active["adv_campaign_id"], active["restaurant_id"])
    ]


def test_a_newer_version_with_end_not_after_start_cancels_a_held_campaign(
    pipeline: Pipeline,
) -> None:
    instance = DagsterInstance.ephemeral()
    now = int(time.time())
    held = campaign(adv_campaign_datetime_start=now + 45, adv_campaign_datetime_end=now + 3600)
    pipeline.subscribe((new_uuid(), held["restaurant_id"]))
    publish_to(pipeline, 0, held)
    run_summary(pipeline)

    cancel = {
        **held,
        "adv_campaign_datetime_end": held["adv_campaign_datetime_start"] - 60,
        "datetime_created": held["datetime_created"] + 1,
    }
    stranger = campaign(
        adv_campaign_datetime_start=now + 45, adv_campaign_datetime_end=now + 45
    )  # an unknown id with end <= start is still a producer error
    publish_to(pipeline, 0, cancel, stranger)
    run_summary(pipeline)
    assert time.time() < held["adv_campaign_datetime_start"], "setup too slow for this check"
    assert pipeline.sql(
        "SELECT adv_campaign_datetime_start, adv_campaign_datetime_end FROM promo.campaigns"
    ) == [(held["adv_campaign_datetime_start"], held["adv_campaign_datetime_start"])]
    [letter] = pipeline.dead_letters()
    assert json.loads(letter.value())["adv_campaign_id"] == stranger["adv_campaign_id"]
    assert dict(letter.headers())["promo.reject.code"] == b"end_not_after_start"

    while time.time() <= held["adv_campaign_datetime_start"]:  # the clock, not a sync sleep
        time.sleep(0.2)
    assert isinstance(tick(pipeline, instance), SkipReason)
    run_summary(pipeline)
    assert pipeline.pairs() == set(), "the cancelled campaign fired"


def test_dlq_replay_resends_one_reason_without_promo_headers_and_tail_json(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time())
    # The cancellation arrived before the campaign it cancels: dead-lettered, replayable.
    original = campaign(
        adv_campaign_datetime_start=now + 3600, adv_campaign_datetime_end=now + 7200
    )
    early_cancel = {
        **original,
        "adv_campaign_datetime_end": original["adv_campaign_datetime_start"],
        "datetime_created": original["datetime_created"] + 1,
    }
    producer = Producer({"bootstrap.servers": pipeline.settings.kafka_bootstrap_servers})
    topic = pipeline.settings.promo_input_topic
    producer.produce(topic, json.dumps(early_cancel).encode(), b"k1")
    producer.produce(topic, b"not json", b"k2")
    assert producer.flush(30) == 0
    run_summary(pipeline)
    assert len(pipeline.dead_letters()) == 2

    assert main(["tail", "--dlq", "--from-beginning", "-e", "-J"]) == 0
    letters = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(letter["headers"]["promo.reject.code"] for letter in letters) == [
        "end_not_after_start",
        "not_json",
    ]
    assert {letter["key"] for letter in letters} == {"k1", "k2"}

    publish_to(pipeline, 0, original)
    assert main(["dlq", "replay", "--reason", "end_not_after_start"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"re-sent 1 dead letters with reason end_not_after_start to {topic} "
        "(1 with other reasons left out)"
    )
    sent, replayed = sorted(
        (m for m in pipeline.read_topic(topic) if m.key() == b"k1"), key=lambda m: m.timestamp()
    )
    assert replayed.value() == sent.value() == json.dumps(early_cancel).encode()
    assert not any(name.startswith("promo.") for name, _ in replayed.headers() or [])
    run_summary(pipeline)
    assert pipeline.sql("SELECT adv_campaign_datetime_end FROM promo.campaigns") == [
        (original["adv_campaign_datetime_start"],)
    ]
    assert len(pipeline.dead_letters()) == 2  # the replayed cancellation was accepted
