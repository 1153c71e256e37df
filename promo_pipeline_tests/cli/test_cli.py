"""`promo send | tail | subscribe | status` against the real stack, and their one-line errors."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from promo_pipeline.cli import main
from promo_pipeline_tests.support.pipeline import (
    Pipeline,
    campaign,
    insert_campaign,
    millisecond_campaign,
    new_uuid,
)

pytestmark = [pytest.mark.stack]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The error a user sees: exactly one line on stderr, no traceback."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_help_explains_each_command_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (
        "send",
        "tail",
        "subscribe",
        "status",
        "metrics",
        "run",
        "stack",
        "rewind",
        "dlq",
    ):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert f"\n  promo {command}" in capsys.readouterr().out.split("examples:")[1]


def test_send_publishes_lines_from_a_file_or_stdin_with_an_optional_key(
    pipeline: Pipeline,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = campaign()
    source = tmp_path / "campaigns.jsonl"
    source.write_text(json.dumps(good) + "\n\n{broken\n", encoding="utf-8")
    assert main(["send", "--key", "r-42", str(source)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"sent 2 campaign messages to {pipeline.settings.promo_input_topic}"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(campaign()) + "\n"))
    assert main(["send"]) == 0
    assert "sent 1 campaign messages" in capsys.readouterr().out

    sent = pipeline.read_topic(pipeline.settings.promo_input_topic)
    assert sorted(m.value() for m in sent if m.key() == b"r-42") == sorted(
        [json.dumps(good).encode(), b"{broken"]
    )
    assert [m.key() for m in sent].count(None) == 1

    assert main(["send", str(tmp_path / "missing.jsonl")]) == 2
    assert one_line_error(capsys) == (
        f"promo: cannot read {tmp_path / 'missing.jsonl'}: No such file or directory"
    )


@pytest.mark.spark
def test_tail_status_after_a_run_and_errors(
    pipeline: Pipeline,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = int(time.time())
    active = campaign()
    held = campaign(adv_campaign_datetime_start=now + 7200, adv_campaign_datetime_end=now + 9000)
    clients = sorted([new_uuid(), new_uuid()])
    pipeline.subscribe(*[(client, active["restaurant_id"]) for client in clients])
    pipeline.publish(active, held, b"not json")

    assert main(["status"]) == 0
    before = capsys.readouterr().out
    assert f"input {pipeline.settings.promo_input_topic}: 3 messages waiting" in before
    assert "last input read: none yet" in before

    pipeline.run_ok()
    capsys.readouterr()

    assert main(["tail", "--from-beginning", "-n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split("  ")[1] for line in lines) == [f"key={c}" for c in clients]
    assert all(
        json.loads(line.split("  ", 2)[2])["adv_campaign_id"] == active["adv_campaign_id"]
        for line in lines
    )

    assert main(["tail", "--dlq", "--from-beginning", "-e"]) == 0
    [rejected] = capsys.readouterr().out.splitlines()
    assert "reason=not_json: value is not JSON" in rejected and rejected.endswith("  not json")

    asked = int(time.time())
    assert main(["status"]) == 0
    answered = int(time.time())
    after = capsys.readouterr().out
    assert f"input {pipeline.settings.promo_input_topic}: 0 messages waiting" in after
    assert "campaigns: 1 active, 1 held for later, 0 expired" in after
    # The time left as of the status's own clock, somewhere between asking and the answer.
    start = held["adv_campaign_datetime_start"]
    spans = {f"(in 1h {(start - t) % 3600 // 60}m)" for t in range(asked, answered + 2)}
    assert f"held {held['adv_campaign_id']}" in after and any(s in after for s in spans), after
    assert "3 messages, 2 valid, 1 rejected (not_json 1)" in after
    assert "last triggers: 2 for 1 campaign(s)" in after
    assert "outbox: 0 triggers" in after

    # Following, like kcat -C: a message produced after tail started is printed.
    printed: list[int] = []
    follower = threading.Thread(target=lambda: printed.append(main(["tail", "-n", "1"])))
    follower.start()
    producer = Producer({"bootstrap.servers": pipeline.settings.kafka_bootstrap_servers})
    deadline = time.monotonic() + 30
    while follower.is_alive() and time.monotonic() < deadline:
        producer.produce(pipeline.settings.promo_output_topic, b"{}", b"late-client")
        producer.flush(10)
        follower.join(0.5)
    assert printed == [0]
    assert "key=late-client  {}" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_:
        main(["tail", "-n", "0"])
    assert exit_.value.code == 2
    assert one_line_error(capsys) == (
        "promo tail: argument -n/--count: expected a positive number, got '0' "
        "(see promo tail --help)"
    )
    monkeypatch.setenv("PROMO_OUTPUT_TOPIC", "no_such_topic")
    assert main(["tail"]) == 1
    assert "topic no_such_topic does not exist" in one_line_error(capsys)
    monkeypatch.setenv("POSTGRES_PORT", "1")
    assert main(["status"]) == 1
    assert one_line_error(capsys).startswith("promo: Postgres does not answer")


def test_subscribe_adds_once_and_names_the_campaigns_it_will_get(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    client, restaurant = new_uuid(), new_uuid()
    assert main(["subscribe", client, restaurant]) == 0
    out = capsys.readouterr().out
    assert f"client {client} subscribed to restaurant {restaurant}" in out
    assert "no active campaign of this restaurant" in out

    active = campaign(restaurant_id=restaurant)
    insert_campaign(pipeline, active)
    assert main(["subscribe", client.upper(), restaurant]) == 0
    out = capsys.readouterr().out
    assert "was already subscribed" in out
    assert "1 active campaign(s) will trigger for this client on the next run" in out
    assert active["adv_campaign_id"] in out
    assert pipeline.sql(
        "SELECT count(*) FROM public.subscribers_restaurants WHERE client_id = %s", (client,)
    ) == [(1,)]

    assert main(["subscribe", "bob", restaurant]) == 2
    assert one_line_error(capsys) == (
        "promo: CLIENT must be a UUID like 023e4567-e89b-12d3-a456-426614174000: 'bob'"
    )


def test_status_survives_a_stored_millisecond_campaign(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    from promo_pipeline_tests.support.faults import wait_topics_ready

    wait_topics_ready(pipeline.settings)  # status reads watermarks of the topic just created
    stored = millisecond_campaign()
    insert_campaign(pipeline, stored)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "campaigns: 0 active, 1 held for later, 0 expired" in out
    start = stored["adv_campaign_datetime_start"]
    assert f"held {stored['adv_campaign_id']}" in out and f"due epoch {start} (out of range)" in out
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["campaigns"]["due"][0]["start"] == start


def failed_line(capsys: pytest.CaptureFixture[str]) -> str:
    """`promo run` failed, and its one FAILED line (the root cause) is what it printed."""
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "Traceback" not in out, out
    return failed[0].strip()


@pytest.mark.spark
def test_failed_runs_name_their_root_cause_in_one_line(
    pipeline: Pipeline,
    dagster_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as wrong:
        wrong.setenv("POSTGRES_PASSWORD", "not-the-password")
        # A home without dagster.yaml (SQLite storage), so the run itself meets the password:
        # unset, `promo run` would take the stack's from stack.env.
        (tmp_path / "sqlite_home").mkdir()
        wrong.setenv("DAGSTER_HOME", str(tmp_path / "sqlite_home"))
        assert main(["run"]) == 1
        line = failed_line(capsys)
        assert line.startswith(  # the pipeline lock's setup, before any step: the run fails
            f"FAILED before any step: Postgres at 127.0.0.1:{pipeline.settings.postgres_port} "
            "(database "
            f"{pipeline.settings.postgres_db}, user {pipeline.settings.postgres_user}): "
        ), line
        assert "password authentication failed" in line and "check POSTGRES_*" in line, line
        # With a Dagster instance on the same database, the run cannot even be recorded.
        wrong.setenv("DAGSTER_HOME", str(dagster_home))
        assert main(["run"]) == 1
        assert one_line_error(capsys).startswith(
            f"promo: run not started: the Dagster instance in {dagster_home} cannot open its "
            'storage: connection to server at "127.0.0.1"'
        )

    with monkeypatch.context() as missing:
        missing.setenv("PROMO_INPUT_TOPIC", "no_such_topic")
        assert main(["run"]) == 1
        assert failed_line(capsys) == (
            "FAILED campaign_batch: input topic no_such_topic does not exist on "
            f"{pipeline.settings.kafka_bootstrap_servers} (`promo stack up` creates it; check "
            "PROMO_INPUT_TOPIC)"
        )

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with monkeypatch.context() as unwritable:
        unwritable.setenv("PROMO_STATE_DIR", str(blocker / "state"))
        assert main(["run"]) == 1
        assert failed_line(capsys) == (
            f"FAILED campaign_batch: PROMO_STATE_DIR {blocker / 'state'} is not writable (Not a "
            "directory); point it at a writable folder on shared storage"
        )


def test_stack_finds_runuser_under_crons_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from promo_pipeline.stack.postgres import PostgresCluster

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    cluster = PostgresCluster(tmp_path, 1, "promo", "x", "promo")
    command = cluster._as_server_user(["true"])
    assert subprocess.run(command).returncode == 0


def test_status_on_a_database_that_predates_the_input_tables_names_the_fix(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    from promo_pipeline_tests.support.faults import wait_topics_ready

    wait_topics_ready(pipeline.settings)
    # A database at the revision before the input tables.
    pipeline.sql("DROP TABLE promo.input_topics")
    pipeline.sql("UPDATE promo.alembic_version SET version_num = '0002_fanout_slices'")
    assert main(["status"]) == 1
    assert one_line_error(capsys) == (
        'promo: relation "promo.input_topics" does not exist: the database predates this '
        "version; run `promo db upgrade`"
    )
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["status"]) == 0


def test_readme_lists_every_command() -> None:
    """The README's command table stays true as commands are added."""
    import argparse

    from promo_pipeline.cli import parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("## The `promo` command")[1].split("## Walkthrough")[0]
    [commands] = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [name for name in commands.choices if f"`promo {name}" not in table]
    assert not missing, missing


def publish_at(pipeline: Pipeline, *stamps_ms: int) -> list[dict[str, object]]:
    """One campaign per timestamp (the message's CreateTime), all into partition 0."""
    made = [campaign() for _ in stamps_ms]
    producer = Producer({"bootstrap.servers": pipeline.settings.kafka_bootstrap_servers})
    for document, stamp in zip(made, stamps_ms, strict=True):
        producer.produce(
            pipeline.settings.promo_input_topic,
            json.dumps(document).encode(),
            partition=0,
            timestamp=stamp,
        )
    assert producer.flush(30) == 0
    return made


def rewinds(pipeline: Pipeline) -> list[dict[str, object]]:
    return [
        row[0]
        for row in pipeline.sql(
            "SELECT detail FROM promo.input_events WHERE kind = 'rewind' ORDER BY id"
        )
    ]


@pytest.mark.parametrize(
    "value",
    [
        "1764000000000",  # milliseconds
        "1764000000000000",  # microseconds
        "4102444801",  # the far future, past 2100-01-01
        "-5",  # negative
        "946684799",  # before 2000
        "2100-01-01T00:00:01Z",  # ISO, past the range
        "1999-12-31T23:59:59+00:00",
    ],
)
def test_rewind_refuses_a_time_outside_the_plausible_range(
    value: str, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_at(pipeline, int(time.time() * 1000))
    assert main(["rewind", "--to-time", value]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"promo: --to-time {value}: "), err
    assert "is outside 2000-01-01..2100-01-01 in epoch seconds" in err, err
    assert rewinds(pipeline) == []
    assert not (pipeline.settings.promo_state_dir / "start.json").exists()


def test_rewind_past_unread_messages_says_how_many_and_needs_yes(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    """No run has read the three messages yet: a rewind to a time inside them, or to now (the
    reported case), would skip some; refused without --yes, recorded and shown with it; a
    rewind that skips nothing needs no --yes."""
    from datetime import UTC, datetime

    now_ms = int(time.time() * 1000)
    stamps = [now_ms - 300_000, now_ms - 200_000, now_ms - 100_000]
    publish_at(pipeline, *stamps)
    topic = pipeline.settings.promo_input_topic
    between = datetime.fromtimestamp((stamps[1] + 50_000) / 1000, UTC).isoformat()

    for target, skipped, ranges in [
        (["--to-time", between], 2, "p0 offsets 0..1"),
        (["--to-time", str(now_ms // 1000 + 1)], 3, "p0 offsets 0..2"),
        (["--to-time", "4102444800"], 3, "p0 offsets 0..2"),  # the range's last second
        (["--to-offsets", "0:1"], 1, "p0 offsets 0..0"),
    ]:
        assert main(["rewind", *target]) == 2
        err = one_line_error(capsys)
        assert f"skips {skipped} messages no run has read ({ranges})" in err, err
        assert "add --yes to skip them" in err, err
    assert rewinds(pipeline) == []
    assert main(["status"]) == 0
    assert f"input {topic}: 3 messages waiting" in capsys.readouterr().out

    for target in (["--to-beginning"], ["--to-offsets", "0:0"]):
        assert main(["rewind", *target]) == 0, capsys.readouterr().err
        assert "SKIPPED" not in capsys.readouterr().out
    assert [event["skipped"] for event in rewinds(pipeline)] == [0, 0]
    # No checkpoint was there to set aside: stored as null, not the string "None".
    assert [event["old_checkpoint"] for event in rewinds(pipeline)] == [None, None]

    assert main(["rewind", "--to-time", between, "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"rewound {topic}: the next run reads p0 at 2, p1 at its end, p2 at its end" in out
    assert "; SKIPPED 2 unread messages (p0 offsets 0..1)" in out
    assert rewinds(pipeline)[-1]["skipped_ranges"] == {"0": [0, 2]}
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"input {topic}: 1 messages waiting" in out, out  # from the pending rewind's start
    assert "; SKIPPED 2 unread messages by `promo rewind --yes`" in out, out
    assert "rewind: the next run reads p0 at 2, p1 at its end, p2 at its end; SKIPPED 2 " in out
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input"]["skipped_by_rewind"] == 2


def test_rewind_to_offsets_given_empty_is_refused(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    from promo_pipeline_tests.support.faults import wait_topics_ready

    wait_topics_ready(pipeline.settings)
    for empty in ("", " ", ","):
        assert main(["rewind", "--to-offsets", empty]) == 2
        assert one_line_error(capsys) == (
            f"promo: --to-offsets expects PARTITION:OFFSET,... (e.g. 0:10,1:4): {empty!r}"
        )
    assert rewinds(pipeline) == []


def test_status_lists_a_cancelled_held_campaign_as_cancelled_not_due(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    from promo_pipeline.defs.resources import (
        kafka_resource,
        postgres_resource,
        run_options_resource,
    )
    from promo_pipeline.work import find_work
    from promo_pipeline_tests.support.faults import wait_topics_ready

    wait_topics_ready(pipeline.settings)
    now = int(time.time())
    start = now + 45
    held = campaign(adv_campaign_datetime_start=now + 3600, adv_campaign_datetime_end=now + 7200)
    cancelled = campaign(adv_campaign_datetime_start=start, adv_campaign_datetime_end=start)
    before = campaign(adv_campaign_datetime_start=start, adv_campaign_datetime_end=start - 60)
    gone = campaign(adv_campaign_datetime_start=now - 60, adv_campaign_datetime_end=now - 60)
    for document in (held, cancelled, before, gone):
        insert_campaign(pipeline, document)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "campaigns: 0 active, 1 held for later, 0 expired, 3 cancelled" in out, out
    assert f"held {held['adv_campaign_id']}" in out
    assert cancelled["adv_campaign_id"] not in out and before["adv_campaign_id"] not in out
    assert main(["status", "--json"]) == 0
    campaigns = json.loads(capsys.readouterr().out)["campaigns"]
    assert [due["adv_campaign_id"] for due in campaigns["due"]] == [held["adv_campaign_id"]]
    assert (campaigns["held"], campaigns["cancelled"], campaigns["expired"]) == (1, 3, 0)
    # The sensor's "next held campaign due" is the held one, not the cancelled one.
    work = find_work(
        kafka_resource(pipeline.settings),
        postgres_resource(pipeline.settings),
        run_options_resource(pipeline.settings).checkpoint_dir,
    )
    [next_due] = [reason for reason in work.skip_reasons if "next held campaign" in reason]
    assert "(in 1h 00m)" in next_due or "(in 59 min)" in next_due, next_due


def test_status_json_with_postgres_down_prints_a_json_error(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from promo_pipeline_tests.support.faults import wait_topics_ready

    wait_topics_ready(pipeline.settings)
    monkeypatch.setenv("POSTGRES_PORT", "1")
    assert main(["status", "--json"]) == 1
    captured = capsys.readouterr()
    [line] = captured.out.splitlines()
    assert json.loads(line)["error"].startswith("Postgres does not answer"), line
    assert captured.err.strip() == f"promo: {json.loads(line)['error']}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["status", "--json"]) != 0
    assert "error" in json.loads(capsys.readouterr().out)


def dead_letter(
    pipeline: Pipeline, origin: str, code: str = "not_json", topic_id: str = "id-1"
) -> None:
    """A message in the DLQ as the pipeline writes it, from input offset `origin` (t/p/o)."""
    producer = Producer({"bootstrap.servers": pipeline.settings.kafka_bootstrap_servers})
    producer.produce(
        pipeline.settings.promo_dlq_topic,
        b"bad " + origin.encode(),
        b"k",
        headers=[
            ("promo.reject.code", code.encode()),
            ("promo.reject.reason", b"why"),
            ("promo.source", origin.encode()),
            ("promo.source.topic_id", topic_id.encode()),
            ("trace", b"kept"),
        ],
    )
    assert producer.flush(30) == 0


def test_dlq_replay_sends_each_origin_once_and_refuses_unknown_reasons(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    """The DLQ holds one origin twice (as earlier rewinds left it) and another once: a replay
    sends each origin once, a second replay sends nothing, a new origin is sent by the next."""
    from promo_pipeline_tests.support.faults import wait_topics_ready

    wait_topics_ready(pipeline.settings)
    topic = pipeline.settings.promo_input_topic
    assert main(["dlq", "replay", "--reason", "nonsense"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("promo: --reason 'nonsense' is not a rejection code; known codes: ")
    assert "not_json" in err and "end_not_after_start" in err and "too_large" in err
    assert main(["dlq", "replay", "--reason", "too_large"]) == 0
    assert capsys.readouterr().out.strip() == (
        "nothing re-sent: no dead letters with reason too_large left to replay"
    )

    for origin in (f"{topic}/0/5", f"{topic}/0/5", f"{topic}/1/7"):
        dead_letter(pipeline, origin)
    dead_letter(pipeline, f"{topic}/0/5", topic_id="id-of-a-recreated-topic")
    assert main(["dlq", "replay"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"re-sent 3 dead letters to {topic} (1 whose origin was already re-sent by a replay)"
    )
    replayed = pipeline.read_topic(topic)
    assert sorted(m.value() for m in replayed) == sorted(
        [f"bad {topic}/0/5".encode()] * 2 + [f"bad {topic}/1/7".encode()]
    )
    assert all(m.headers() == [("trace", b"kept")] for m in replayed)

    assert main(["dlq", "replay"]) == 0
    assert capsys.readouterr().out.strip() == (
        "nothing re-sent: no dead letters left to replay (4 whose origin was already re-sent "
        "by a replay)"
    )
    dead_letter(pipeline, f"{topic}/2/9", code="end_not_after_start")
    assert main(["dlq", "replay", "--reason", "end_not_after_start"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"re-sent 1 dead letters with reason end_not_after_start to {topic} "
        "(4 with other reasons left out)"
    )
    assert len(pipeline.read_topic(topic)) == 4


@pytest.mark.spark
def test_a_run_after_a_rewind_past_unread_input_reads_nothing_and_says_so(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported case: two campaigns read, one waiting; a rewind to now skips exactly the
    waiting one (not the two read), only with --yes; the next run reads nothing and reports
    0 active, and `promo status` still names the skipped message."""
    now_ms = int(time.time() * 1000)
    publish_at(pipeline, now_ms - 20_000, now_ms - 10_000)
    pipeline.run_ok()
    capsys.readouterr()
    [waiting] = publish_at(pipeline, now_ms)
    assert main(["rewind", "--to-time", str(now_ms // 1000 + 1)]) == 2
    assert "skips 1 messages no run has read (p0 offsets 2..2)" in one_line_error(capsys)
    assert main(["rewind", "--to-time", str(now_ms // 1000 + 1), "--yes"]) == 0
    assert "SKIPPED 1 unread messages (p0 offsets 2..2)" in capsys.readouterr().out

    summary = pipeline.run_ok()
    assert "messages_read 0" in summary, summary
    assert "active 0" in summary and "held_for_later 0" in summary, summary
    assert pipeline.sql(
        "SELECT count(*) FROM promo.campaigns WHERE adv_campaign_id = %s",
        (waiting["adv_campaign_id"],),
    ) == [(0,)]
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "0 messages waiting" in out and "SKIPPED 1 unread messages" in out, out

    # "Its end" was the end at the rewind: a message published after it is read, and the
    # run's counts are of that one message only.
    [late] = publish_at(pipeline, int(time.time() * 1000))
    summary = pipeline.run_ok()
    assert "messages_read 1" in summary and "active 1" in summary, summary
    assert pipeline.sql(
        "SELECT count(*) FROM promo.campaigns WHERE adv_campaign_id = %s",
        (late["adv_campaign_id"],),
    ) == [(1,)]


@pytest.mark.spark
def test_a_missing_checkpoint_after_runs_read_input_is_loud_and_refused(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs have read input, then the checkpoint folder is gone (an unmounted volume): status
    and the sensor say so, a run refuses in one line naming the fix, `promo rewind` accepts."""
    import shutil

    from dagster import DagsterInstance, SkipReason

    from promo_pipeline.settings import checkpoint_dir
    from promo_pipeline_tests.support.dagster import tick

    publish_at(pipeline, int(time.time() * 1000))
    pipeline.run_ok()
    checkpoint = checkpoint_dir(pipeline.settings.promo_state_dir)
    for lose in (lambda: shutil.rmtree(checkpoint), lambda: checkpoint.mkdir(parents=True)):
        lose()  # missing, then present but empty
        assert main(["status"]) == 0
        out = capsys.readouterr().out
        assert "messages waiting unknown, checkpoint MISSING: the Spark checkpoint" in out, out
        assert "runs have read" in out and "up to p0 1" in out, out
        assert main(["status", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)["input"]
        assert report["checkpoint_missing"] and report["waiting"] is None
        skipped = tick(pipeline, DagsterInstance.ephemeral())
        assert isinstance(skipped, SkipReason), skipped
        assert "not launching: the Spark checkpoint" in (skipped.skip_message or "")
        success, summary = pipeline.run()
        assert not success
        [failed] = [line for line in summary.splitlines() if "FAILED" in line]
        assert failed.strip().startswith("FAILED campaign_batch: the Spark checkpoint"), failed
        assert failed.endswith(
            "fix: restore PROMO_STATE_DIR, or `promo rewind` to accept where to read from"
        ), failed

    assert main(["rewind", "--to-offsets", "0:1"]) == 0
    capsys.readouterr()
    assert main(["status"]) == 0
    assert "MISSING" not in capsys.readouterr().out
    assert "messages_read 0" in pipeline.run_ok()


@pytest.mark.spark
def test_dead_letters_stay_once_per_origin_through_rewinds_and_replays(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two rejects; re-reading the input does not dead-letter them again; replay, run,
    replay: each rejected copy is a new origin, sent once, so the DLQ grows by the two
    re-rejected copies per replay, never doubles; every run still counts its rejects."""
    pipeline.publish(b"not json", json.dumps(campaign(adv_campaign_datetime_end=1659203516)))
    assert "rejected 2" in pipeline.run_ok()
    assert len(pipeline.dead_letters()) == 2
    assert main(["rewind", "--to-beginning"]) == 0
    assert "rejected 2" in pipeline.run_ok()  # counted as rejected, not sent again
    assert len(pipeline.dead_letters()) == 2

    assert main(["dlq", "replay"]) == 0
    assert main(["dlq", "replay"]) == 0  # nothing new to send
    capsys.readouterr()
    assert len(pipeline.read_topic(pipeline.settings.promo_input_topic)) == 4
    assert "rejected 2" in pipeline.run_ok()
    letters = pipeline.dead_letters()
    assert len(letters) == 4
    origins = [dict(m.headers())["promo.source"] for m in letters]
    assert len(set(origins)) == 4, origins  # the re-rejected copies: their own offsets

    assert main(["dlq", "replay"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"re-sent 2 dead letters to {pipeline.settings.promo_input_topic} (2 whose origin "
        "was already re-sent by a replay)"
    )
    assert main(["rewind", "--to-beginning"]) == 0
    # 2 originals, 2 copies of each replay: only the second replay's copies are new origins.
    assert "rejected 6" in pipeline.run_ok()
    assert len(pipeline.dead_letters()) == 6
