"""The trigger path at scale, in small: slices, work that follows the change, and progress that
survives a killed run. The slice size is set small so a handful of subscribers spans slices."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

import pytest

from promo_pipeline.defs.resources import kafka_resource, postgres_resource
from promo_pipeline.fanout import FULL_SLICE, FULL_SLICE_SKIPPING
from promo_pipeline.settings import checkpoint_dir
from promo_pipeline.work import find_work
from promo_pipeline_tests.support.faults import ChildRun, check_recovered, output_count, poll
from promo_pipeline_tests.support.pipeline import Pipeline, campaign, new_uuid

pytestmark = [pytest.mark.stack, pytest.mark.spark]


def metric(summary: str, asset: str, key: str) -> int:
    """A number from the `promo run` summary line of `asset`."""
    line = next(line for line in summary.splitlines() if line.strip().startswith(f"{asset} "))
    found = re.search(rf"\b{key} (\d+)", line)
    assert found, f"{key} not in {line!r}"
    return int(found.group(1))


def test_fan_out_spans_slices_and_matches_subscribers_in_any_case(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMO_TRIGGER_SLICE_ROWS", "3")
    monkeypatch.setenv("PROMO_SEND_DURING_WRITE", "1")
    active = campaign()
    restaurant = active["restaurant_id"]
    clients = [new_uuid() for _ in range(10)]
    shouting = new_uuid()
    pipeline.subscribe(
        *[(client, restaurant) for client in clients],
        (clients[0], restaurant),  # a duplicate subscription row: still one trigger
        (shouting.upper(), restaurant.upper()),  # UUIDs compare case-insensitively
    )
    pipeline.publish(active)
    summary = pipeline.run_ok()

    expected = {(active["adv_campaign_id"], client) for client in [*clients, shouting]}
    assert pipeline.pairs() == expected
    assert metric(summary, "feedback_sink", "slices") == 4  # 11 subscribers, 3 per slice
    # Sent slice by slice while the next ones were written: push_sink found nothing left.
    assert metric(summary, "feedback_sink", "sent_during_write") == 11
    assert metric(summary, "push_sink", "slices") == 0
    recovery = check_recovered(pipeline, expected)
    assert recovery.ok, recovery.problems
    assert recovery.duplicates == 0


def test_run_after_one_new_subscription_reads_only_it(pipeline: Pipeline) -> None:
    active = campaign()
    pipeline.subscribe(*[(new_uuid(), active["restaurant_id"]) for _ in range(5)])
    pipeline.publish(active)
    pipeline.run_ok()
    kafka = kafka_resource(pipeline.settings)
    postgres = postgres_resource(pipeline.settings)
    checkpoint = str(checkpoint_dir(pipeline.settings.promo_state_dir))
    assert not find_work(kafka, postgres, checkpoint).due

    # A subscription to a restaurant with no campaign is no work; one to the campaign's is.
    pipeline.subscribe((new_uuid(), new_uuid()))
    assert not find_work(kafka, postgres, checkpoint).due
    newcomer = new_uuid()
    pipeline.subscribe((newcomer, active["restaurant_id"]))
    work = find_work(kafka, postgres, checkpoint)
    assert work.reasons == [f"new subscribers of active campaigns: {active['adv_campaign_id']}"]

    summary = pipeline.run_ok()
    assert metric(summary, "subscriber_snapshot", "new_subscriptions") == 2
    assert metric(summary, "triggers", "campaigns_to_fan_out") == 0
    # Two subscriptions since the last W, one of them to the campaign's restaurant.
    assert metric(summary, "triggers", "new_subscriber_pairs") == 1
    assert metric(summary, "triggers", "due_pairs") == 1
    assert metric(summary, "feedback_sink", "rows_written") == 1
    assert metric(summary, "push_sink", "sent_this_run") == 1
    assert metric(summary, "push_sink", "spark_jobs") == 0  # one message: the run sends it
    assert (active["adv_campaign_id"], newcomer) in pipeline.pairs()
    assert len(pipeline.pairs()) == 6

    summary = pipeline.run_ok()
    assert metric(summary, "triggers", "due_pairs") == 0
    assert metric(summary, "feedback_sink", "rows_written") == 0


def test_a_resend_by_spark_is_the_run_sends_bytes_on_the_same_partition(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small outbox is sent by the run, a large one by Spark's Kafka writer: whichever path
    sends a trigger again, it is the same message on the same partition."""
    clients = [client for _, client in pipeline.publish_active(campaigns=1, clients=12)]
    summary = pipeline.run_ok()
    assert metric(summary, "push_sink", "spark_jobs") == 0
    assert metric(summary, "push_sink", "sent_this_run") == 12

    # The same triggers queued again, as a run that died before Kafka's acknowledgement leaves
    # them, and sent by Spark this time.
    pipeline.sql(
        "INSERT INTO promo.trigger_outbox (run_id, adv_campaign_id, client_first, client_last, "
        "trigger_time, triggers) SELECT 'died', adv_campaign_id, min(client_id), max(client_id), "
        "min(trigger_datetime_created), count(*) FROM public.subscribers_feedback GROUP BY 2"
    )
    monkeypatch.setenv("PROMO_PUSH_SPARK_MIN_TRIGGERS", "1")
    summary = pipeline.run_ok()
    assert metric(summary, "push_sink", "spark_jobs") == 1
    assert metric(summary, "push_sink", "resent_from_earlier_runs") == 12

    copies: dict[bytes, list[tuple[int, bytes]]] = defaultdict(list)
    for message in pipeline.output():
        copies[message.key()].append((message.partition(), message.value()))
    assert set(copies) == {client.encode() for client in clients}
    assert all(len(sent) == 2 and sent[0] == sent[1] for sent in copies.values()), copies
    assert len({partition for sent in copies.values() for partition, _ in sent}) > 1


@pytest.mark.timeout(900)
def test_run_killed_between_slices_keeps_them_and_the_next_run_goes_on(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    big, small = campaign(), campaign()
    big_clients = [new_uuid() for _ in range(7)]
    pipeline.subscribe(*[(client, big["restaurant_id"]) for client in big_clients])
    pipeline.subscribe((new_uuid(), small["restaurant_id"]))
    pipeline.publish(big)
    # One writer: the run stops with exactly its first slice committed.
    env = {**pipeline.env, "PROMO_TRIGGER_SLICE_ROWS": "2", "PROMO_SINK_WRITERS": "1"}
    killed = ChildRun(
        env, tmp_path / "killed.log", fault_at="feedback_sink.slice", fault_dir=tmp_path / "f"
    )
    try:
        killed.wait_reached()
        killed.kill()
    finally:
        killed.stop()
    # The first slice (2 of the big campaign's 7) is committed with its outbox entry.
    assert len(pipeline.pairs()) == 2
    assert pipeline.sql("SELECT count(*) FROM promo.unsent_triggers") == [(2,)]
    assert pipeline.sql("SELECT fanout_cursor IS NOT NULL FROM promo.campaigns") == [(True,)]

    # A campaign that arrives meanwhile is fanned out before the one in progress resumes, and
    # its run ends after that slice; the next goes on with the walk.
    pipeline.publish(small)
    follower = ChildRun(env, tmp_path / "next.log")
    assert follower.wait() == 0, follower.output[-3000:]
    first_written = pipeline.sql(
        "SELECT adv_campaign_id FROM public.subscribers_feedback "
        "WHERE trigger_datetime_created = (SELECT max(trigger_datetime_created) "
        "FROM public.subscribers_feedback) ORDER BY id LIMIT 1"
    )
    assert first_written == [(small["adv_campaign_id"],)]
    assert metric(follower.output, "feedback_sink", "slices") == 1
    assert metric(follower.output, "feedback_sink", "fanouts_in_progress") == 1
    last = ChildRun(env, tmp_path / "last.log")
    assert last.wait() == 0, last.output[-3000:]
    expected = {(big["adv_campaign_id"], c) for c in big_clients} | {
        (small["adv_campaign_id"], c) for _, c in pipeline.sql(
            "SELECT restaurant_id, client_id FROM public.subscribers_restaurants "
            "WHERE restaurant_id = %s", (small["restaurant_id"],)
        )
    }  # fmt: skip
    recovery = check_recovered(pipeline, expected)
    assert recovery.ok, recovery.problems
    assert recovery.duplicates == 0


def test_rows_written_by_hand_above_the_id_sequence_do_not_stop_the_sink(
    pipeline: Pipeline,
) -> None:
    first = campaign()
    pipeline.subscribe(*[(new_uuid(), first["restaurant_id"]) for _ in range(2)])
    pipeline.publish(first)
    pipeline.run_ok()
    # An operator's rows with explicit ids: the very next value of the sequence, and one beyond.
    for manual_id in (3, 10):
        pipeline.sql(
            "INSERT INTO public.subscribers_feedback (id, restaurant_id, adv_campaign_id, "
            "adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact, "
            "adv_campaign_datetime_start, adv_campaign_datetime_end, datetime_created, "
            "client_id, trigger_datetime_created) "
            "VALUES (%s, 'r', %s, 'c', 'o', 'oc', 1, 2, 1, %s, 1)",
            (manual_id, new_uuid(), new_uuid()),
        )
    due = pipeline.publish_active(campaigns=1, clients=3)
    clients = [client for _, client in due]
    summary = pipeline.run_ok()

    assert metric(summary, "feedback_sink", "id_sequence_moved_from") == 2
    assert due <= pipeline.pairs()
    sent = {m.key().decode() for m in pipeline.output()}
    assert set(clients) <= sent
    assert pipeline.sql("SELECT count(*) FROM promo.unsent_triggers") == [(0,)]
    assert pipeline.sql("SELECT min(id) FROM public.subscribers_feedback WHERE id > 10") != [
        (None,)
    ]


def fanouts_in_progress(capsys: pytest.CaptureFixture[str]) -> tuple[list[dict], str]:
    """`promo status --json`'s fan-outs in progress, and the text lines about them."""
    import json

    from promo_pipeline.cli import main

    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    return report["fanouts_in_progress"], "\n".join(
        line for line in text.splitlines() if "fan-out in progress" in line
    )


def past(seconds: float, since: float) -> None:
    """Wait until the clock passes `since + seconds` (a run's budget; the clock, not a sync)."""
    while time.monotonic() < since + seconds:
        time.sleep(0.1)


@pytest.mark.timeout(900)
def test_status_shows_a_fan_out_in_progress_stopped_between_slices(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """done counts the subscribers walked, total the restaurant's distinct subscribers when the
    walk began (duplicate and upper-cased rows are one subscriber); both kept by the slices."""
    from datetime import datetime

    big, done_before = campaign(), campaign()
    clients = [new_uuid() for _ in range(7)]
    pipeline.subscribe(
        *[(client, big["restaurant_id"]) for client in clients],
        (clients[0], big["restaurant_id"]),
        (clients[1].upper(), big["restaurant_id"].upper()),
        (new_uuid(), done_before["restaurant_id"]),
    )
    pipeline.publish(done_before)
    pipeline.run_ok()
    assert fanouts_in_progress(capsys) == ([], "")  # a walk done in one slice is never listed

    pipeline.publish(big)
    env = {**pipeline.env, "PROMO_TRIGGER_SLICE_ROWS": "2", "PROMO_FANOUT_RUN_BUDGET_S": "0"}
    began = datetime.now().astimezone()
    paused = ChildRun(env, tmp_path / "run.log", fault_at="feedback_sink.slice", fault_dir=tmp_path)
    try:
        paused.wait_reached()
        listed, text = fanouts_in_progress(capsys)
        assert [{k: v for k, v in entry.items() if k != "started_at"} for entry in listed] == [
            {
                "adv_campaign_id": big["adv_campaign_id"],
                "restaurant_id": big["restaurant_id"],
                "done": 2,
                "total": 7,
            }
        ]
        started_at = datetime.fromisoformat(listed[0]["started_at"])
        assert began.timestamp() - 1 <= started_at.timestamp() <= time.time() + 1
        assert f"{big['adv_campaign_id']} (restaurant {big['restaurant_id']}) 2 of 7" in text

        paused.release()
        assert paused.wait() == 0, paused.output[-3000:]
    finally:
        paused.stop()
    assert fanouts_in_progress(capsys) == ([], "")
    assert len(pipeline.pairs()) == 8


@pytest.mark.timeout(900)
def test_a_run_past_its_budget_leaves_the_fan_out_to_the_next_which_serves_new_campaigns_first(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past PROMO_FANOUT_RUN_BUDGET_S, with a campaign message waiting, a run starts no further
    slice: it sends what it wrote and ends with the walk's position saved. The next run fans out
    the waiting campaign first and ends after that slice. Past the budget with nothing waiting,
    the walk goes on in its run. No pair is lost or written twice."""
    big, small = campaign(), campaign()
    big_clients = [new_uuid() for _ in range(7)]
    pipeline.subscribe(*[(client, big["restaurant_id"]) for client in big_clients])
    small_client = new_uuid()
    pipeline.subscribe((small_client, small["restaurant_id"]))
    pipeline.publish(big)
    # One writer: a slice at a time, so "stopped after one slice" is exact.
    env = {**pipeline.env, "PROMO_TRIGGER_SLICE_ROWS": "2", "PROMO_SINK_WRITERS": "1"}

    def one_budgeted_run(name: str, publish: dict | None = None) -> str:
        """A run held after its first slice until its 1 s budget is spent (publishing
        `publish` meanwhile), then let go."""
        run = ChildRun(
            env | {"PROMO_FANOUT_RUN_BUDGET_S": "1"},
            tmp_path / f"{name}.log",
            fault_at="feedback_sink.slice",
            fault_dir=tmp_path / name,
        )
        try:
            run.wait_reached()
            if publish is not None:
                pipeline.publish(publish)
            past(1.0, time.monotonic())
            run.release()
            assert run.wait() == 0, run.output[-3000:]
        finally:
            run.stop()
        return run.output

    first = one_budgeted_run("first", publish=small)
    assert metric(first, "feedback_sink", "slices") == 1
    assert metric(first, "feedback_sink", "fanouts_in_progress") == 1
    assert "budget_spent True" in first
    assert "campaign messages waiting" in first
    assert metric(first, "push_sink", "sent_this_run") == 2  # what it wrote, sent before it ends
    assert len(pipeline.pairs()) == 2
    assert [(e["done"], e["total"]) for e in fanouts_in_progress(capsys)[0]] == [(2, 7)]

    # Published during the walk: the next run (the default budget, far from spent) serves it
    # in its first slice, filled up from the walk, and ends there rather than keep it waiting.
    second = ChildRun(env, tmp_path / "second.log")
    assert second.wait() == 0, second.output[-3000:]
    assert metric(second.output, "feedback_sink", "slices") == 1
    assert metric(second.output, "feedback_sink", "fanouts_in_progress") == 1
    assert "budget_spent True" in second.output
    assert (small["adv_campaign_id"], small_client) in pipeline.pairs()
    assert len(pipeline.pairs()) == 4
    assert small_client.encode() in {m.key() for m in pipeline.output()}
    assert [(e["done"], e["total"]) for e in fanouts_in_progress(capsys)[0]] == [(3, 7)]

    kafka = kafka_resource(pipeline.settings)
    postgres = postgres_resource(pipeline.settings)
    checkpoint = str(checkpoint_dir(pipeline.settings.promo_state_dir))
    assert big["adv_campaign_id"] in "; ".join(find_work(kafka, postgres, checkpoint).reasons)
    # Past its budget with nothing waiting: the rest of the walk in this one run.
    last = one_budgeted_run("last")
    assert metric(last, "feedback_sink", "rows_written") == 4
    assert metric(last, "feedback_sink", "fanouts_in_progress") == 0
    assert "budget_spent False" in last
    assert not find_work(kafka, postgres, checkpoint).due
    assert fanouts_in_progress(capsys) == ([], "")
    expected = {(big["adv_campaign_id"], c) for c in big_clients} | {
        (small["adv_campaign_id"], small_client)
    }
    recovery = check_recovered(pipeline, expected)
    assert recovery.ok, recovery.problems
    assert recovery.duplicates == 0


PROGRESS = re.compile(r"feedback_sink: ([\d,]+) / ([\d,]+) triggers \([\d.]+%\), [\d,]+/s, ETA")


def progress_lines(output: str) -> list[tuple[int, int]]:
    """(done, total) of each progress line in a `promo run` output."""
    return [
        (int(done.replace(",", "")), int(total.replace(",", "")))
        for done, total in PROGRESS.findall(output)
    ]


@pytest.mark.timeout(900)
def test_concurrent_writers_write_each_pair_once_report_progress_and_resend_same_bytes(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    expected = pipeline.publish_active(campaigns=3, clients=5)
    big = campaign()
    big_clients = [new_uuid() for _ in range(11)]
    pipeline.subscribe(
        *[(client, big["restaurant_id"]) for client in big_clients],
        (big_clients[0].upper(), big["restaurant_id"]),  # the same subscriber again: one pair
    )
    pipeline.publish(big)
    expected |= {(big["adv_campaign_id"], client) for client in big_clients}
    env = {
        **pipeline.env,
        "PROMO_TRIGGER_SLICE_ROWS": "2",
        "PROMO_SINK_WRITERS": "3",
        "PROMO_PROGRESS_EVERY_S": "0",  # a line after every slice
    }
    run = ChildRun(env, tmp_path / "writers.log")
    assert run.wait() == 0, run.output[-3000:]

    recovery = check_recovered(pipeline, expected)
    assert recovery.ok, recovery.problems
    assert recovery.duplicates == 0
    # 26 pairs in slices of 2: the lines count up to the total the plan counted.
    lines = progress_lines(run.output)
    assert len(lines) >= 10, run.output[-3000:]
    assert {total for _, total in lines} == {len(expected)}
    assert [done for done, _ in lines] == sorted(done for done, _ in lines)
    assert lines[-1][0] == len(expected)
    assert "by 3 writers" in run.output

    # Every slice queued again, as a run that died before Kafka acknowledged them leaves them:
    # the resend, by the same writers' run, is byte for byte the first send.
    pipeline.sql(
        "INSERT INTO promo.trigger_outbox (run_id, adv_campaign_id, client_first, client_last, "
        "trigger_time, triggers) SELECT 'died', adv_campaign_id, min(client_id), max(client_id), "
        "min(trigger_datetime_created), count(*) FROM public.subscribers_feedback GROUP BY 2"
    )
    again = ChildRun(env, tmp_path / "resend.log")
    assert again.wait() == 0, again.output[-3000:]
    recovery = check_recovered(pipeline, expected)
    assert recovery.ok, recovery.problems
    assert recovery.duplicates == len(expected)


def open_slice_writers(pipeline: Pipeline) -> int:
    """Connections of the run's database inside a transaction (slice writers mid-slice)."""
    return pipeline.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state = 'idle in transaction'"
    )[0][0]


@pytest.mark.timeout(900)
def test_kills_while_writers_are_mid_slice_or_ahead_of_the_saved_position_lose_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    active = campaign()
    clients = sorted(new_uuid() for _ in range(9))
    pipeline.subscribe(*[(client, active["restaurant_id"]) for client in clients])
    pipeline.publish(active)
    expected = {(active["adv_campaign_id"], client) for client in clients}
    env = {**pipeline.env, "PROMO_TRIGGER_SLICE_ROWS": "2", "PROMO_SINK_WRITERS": "2"}

    # Killed while two writers each hold a written, uncommitted slice: neither leaves a row.
    mid_slice = ChildRun(
        env, tmp_path / "mid.log", fault_at="feedback_sink.writing", fault_dir=tmp_path / "f1"
    )
    try:
        mid_slice.wait_reached()
        poll(lambda: open_slice_writers(pipeline) >= 2, 60, "two writers mid-slice")
        mid_slice.kill()
    finally:
        mid_slice.stop()
    assert pipeline.pairs() == set()
    assert pipeline.sql("SELECT count(*) FROM promo.trigger_outbox") == [(0,)]

    # Killed while the run waits after its first slice: the writers go on committing the
    # slices in flight (4 of 5), but the saved position stays after the first one.
    ahead = ChildRun(
        env, tmp_path / "ahead.log", fault_at="feedback_sink.slice", fault_dir=tmp_path / "f2"
    )
    try:
        ahead.wait_reached()
        poll(lambda: len(pipeline.pairs()) == 8, 60, "the slices in flight committed")
        ahead.kill()
    finally:
        ahead.stop()
    assert pipeline.pairs() == {(active["adv_campaign_id"], c) for c in clients[:8]}
    assert pipeline.sql("SELECT fanout_cursor FROM promo.campaigns") == [(clients[1],)]
    assert pipeline.sql("SELECT count(*) FROM promo.unsent_triggers") == [(8,)]

    # The next run walks again from the saved position: the committed pairs are skipped, the
    # last one written, every trigger sent, none twice in Postgres.
    recovery_run = ChildRun(env, tmp_path / "recovery.log")
    assert recovery_run.wait() == 0, recovery_run.output[-3000:]
    recovery = check_recovered(pipeline, expected)
    assert recovery.ok, recovery.problems
    assert recovery.duplicates == 0
    progress = "SELECT fanout_cursor, fanout_through IS NOT NULL FROM promo.campaigns"
    assert pipeline.sql(progress) == [(None, True)]


@pytest.mark.timeout(900)
def test_kill_while_the_sender_is_mid_batch_and_writers_mid_slice_loses_and_doubles_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The sender of committed slices killed after Kafka acknowledged its batch and before the
    outbox entry went, while both writers hold written, uncommitted slices: the next run
    resends that batch byte for byte, writes the rest once, and leaves the outbox empty."""
    active = campaign()
    clients = sorted(new_uuid() for _ in range(9))
    pipeline.subscribe(*[(client, active["restaurant_id"]) for client in clients])
    pipeline.publish(active)
    expected = {(active["adv_campaign_id"], client) for client in clients}
    env = {
        **pipeline.env,
        "PROMO_TRIGGER_SLICE_ROWS": "2",
        "PROMO_SINK_WRITERS": "2",
        "PROMO_SEND_DURING_WRITE": "1",
    }

    # Two slices commit (the first two, or under load one writer's two while the other is late
    # with the first: the sender takes committed slices in any order); the writers then hold the
    # next two before their commits, and the sender holds its first batch (one slice) once Kafka
    # acknowledged it.
    run = ChildRun(
        env,
        tmp_path / "killed.log",
        fault_at="feedback_sink.sent,feedback_sink.writing@3",
        fault_dir=tmp_path / "f",
    )
    try:
        run.wait_reached()
        poll(lambda: open_slice_writers(pipeline) >= 2, 60, "two writers mid-slice")
        assert (tmp_path / "f" / "feedback_sink.writing.reached").exists()
        assert output_count(pipeline.settings) == 2  # the sender's batch is in Kafka
        run.kill()
    finally:
        run.stop()
    assert len(pipeline.pairs()) == 4 and pipeline.pairs() < expected  # two slices committed
    # Acknowledged but not yet forgotten: its entry stays, so it is sent again.
    assert pipeline.sql("SELECT count(*) FROM promo.unsent_triggers") == [(4,)]

    recovery_run = ChildRun(env, tmp_path / "recovery.log")
    assert recovery_run.wait() == 0, recovery_run.output[-3000:]
    recovery = check_recovered(pipeline, expected)
    assert recovery.ok, recovery.problems  # one row per pair, copies identical, outbox empty
    assert recovery.duplicates == 2  # the batch the killed run's sender had sent, sent again


def test_a_slice_is_a_plain_insert_and_its_second_try_skips_triggered_pairs() -> None:
    """The first try lets the unique index refuse a doubled pair (no speculative insertion per
    row); the second, after a refusal, differs only by skipping the pairs already triggered."""
    assert "ON CONFLICT" not in FULL_SLICE
    skip = "ON CONFLICT (adv_campaign_id, client_id) DO NOTHING"
    assert FULL_SLICE_SKIPPING.count(skip) == 1
    assert FULL_SLICE_SKIPPING.replace(f"    {skip}\n", "") == FULL_SLICE
