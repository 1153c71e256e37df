"""`promo send | tail | subscribe`: campaigns in, triggers and dead letters out, and the
subscriptions that decide who gets a trigger."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

import psycopg
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

from promo_pipeline.campaign_rules import WILL_TRIGGER
from promo_pipeline.cli.common import UsageError, UserError, add_command
from promo_pipeline.cli.kafka import Publisher, require_topic
from promo_pipeline.db import conninfo
from promo_pipeline.fanout import db_now
from promo_pipeline.kafka_config import KafkaConfig
from promo_pipeline.message_shapes import UUID_PATTERN
from promo_pipeline.settings import Settings, load_settings
from promo_pipeline.topics import KAFKA_TIMEOUT_S


def send(
    settings: Settings,
    lines: Iterable[str],
    *,
    key: str | None = None,
    progress: bool = False,
) -> int:
    """Publish one message per non-empty line, as-is (like `kcat -P`); returns how many.

    Lines are not validated here: a bad one goes to the DLQ with its reason when the pipeline
    reads it, which is what happens to a restaurant's bad message too.
    """
    kafka = settings.config_for(KafkaConfig)
    require_topic(settings, kafka.input_topic)
    publisher = Publisher(kafka, kafka.input_topic, "publish to", **{"message.timeout.ms": 30_000})
    count = 0
    shown = time.monotonic()
    encoded_key = key.encode() if key is not None else None
    for line in lines:
        if not line.strip():
            continue
        publisher.publish(encoded_key, line.rstrip("\r\n").encode())
        count += 1
        if progress and time.monotonic() - shown >= 1:
            print(f"  sent {count} ...", file=sys.stderr)
            shown = time.monotonic()
    publisher.flush()
    return count


def cmd_send(args: argparse.Namespace) -> int:
    """publish campaigns, one JSON per line (like kcat -P)

    Publish campaign messages to the input topic, one JSON object per line, as-is: a
    malformed line is published too and lands in the DLQ with its reason when the
    pipeline reads it.

    examples:
    promo send promo_pipeline/sample/campaigns.jsonl
    echo '{"restaurant_id": "...", ...}' | promo send
    promo send --key restaurant-42 campaigns.jsonl
    """
    settings = load_settings()
    if args.file == "-":
        if sys.stdin.isatty():
            print("reading campaigns from stdin, one JSON per line; Ctrl-D ends", file=sys.stderr)
        count = send(settings, sys.stdin, key=args.key, progress=True)
    else:
        try:
            source = open(args.file, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as error:
            raise UsageError(f"cannot read {args.file}: {error.strerror}") from None
        with source:
            try:
                count = send(settings, source, key=args.key, progress=True)
            except UnicodeDecodeError:
                raise UserError(f"{args.file} is not UTF-8 text") from None
    print(f"sent {count} campaign messages to {settings.promo_input_topic}")
    return 0


def _text(data: bytes | None) -> str | None:
    return data.decode(errors="replace") if data is not None else None


def message_json(message: Any) -> str:
    """One message as one JSON object (`promo tail -J`), for jq."""
    return json.dumps(
        {
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp_ms": message.timestamp()[1],
            "key": _text(message.key()),
            "headers": {name: _text(data) for name, data in message.headers() or []},
            "value": _text(message.value()),
        },
        ensure_ascii=False,
    )


def format_message(message: Any, dlq: bool) -> str:
    """One line per message: where it is, its key, the DLQ's reason, the value."""
    key = message.key().decode(errors="replace") if message.key() is not None else "-"
    value = message.value().decode(errors="replace") if message.value() is not None else "null"
    parts = [f"p{message.partition()}@{message.offset()}", f"key={key}"]
    if dlq:
        headers = {name: data.decode(errors="replace") for name, data in message.headers() or []}
        parts.append(f"reason={headers.get('promo.reject.reason', '?')}")
        parts.append(f"source={headers.get('promo.source', '?')}")
    parts.append(value)
    return "  ".join(parts)


def tail(
    settings: Settings,
    *,
    dlq: bool = False,
    from_beginning: bool = False,
    count: int | None = None,
    exit_at_end: bool = False,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Print messages of the output topic (or the DLQ) as they arrive; returns how many."""
    kafka = settings.config_for(KafkaConfig)
    topic = kafka.dlq_topic if dlq else kafka.output_topic
    require_topic(settings, topic)
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": "promo_cli.tail",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
    )
    shown = 0
    try:
        partitions = sorted(
            consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_S).topics[topic].partitions
        )
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        print(
            f"% {topic}: {'from the beginning' if from_beginning else 'new messages'}"
            + (f", {count} at most" if count else "")
            + ("" if exit_at_end or count else "; Ctrl-C stops"),
            file=sys.stderr,
        )
        for message in _messages(consumer, topic, set(partitions), count, exit_at_end):
            shown_line = message_json(message) if as_json else format_message(message, dlq)
            print(shown_line, file=out or sys.stdout, flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    print(f"% {shown} messages", file=sys.stderr)
    return shown


def _messages(
    consumer: Any, topic: str, partitions: set[int], count: int | None, exit_at_end: bool
) -> Iterable[Any]:
    """The consumer's messages: `count` at most, and with `exit_at_end` until every partition
    has reported its end (a partition that gets a message again is no longer at its end)."""
    yielded = 0
    at_end: set[int] = set()
    while count is None or yielded < count:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error() is not None:
            if message.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
                if exit_at_end and at_end >= partitions:
                    return
                continue
            raise UserError(f"reading {topic}: {message.error()}")
        at_end.discard(message.partition())
        yield message
        yielded += 1


def cmd_tail(args: argparse.Namespace) -> int:
    """print triggers (or the DLQ) as they arrive (like kcat -C)

    Follow the output topic, or with --dlq the dead-letter topic, printing one line per
    message: partition@offset, key, for the DLQ the reject reason and source, then the
    value. Reads from the end unless --from-beginning; stops after -n messages, at the
    end with -e, or on Ctrl-C. Commits no consumer offsets.

    examples:
    promo tail                         # new triggers, until Ctrl-C
    promo tail --from-beginning -n 10  # the first 10 triggers
    promo tail --dlq --from-beginning -e  # every rejected message, then exit
    promo tail --dlq --from-beginning -e -J | jq -r '.headers["promo.reject.code"]'
    """
    tail(
        load_settings(),
        dlq=args.dlq,
        from_beginning=args.from_beginning,
        count=args.count,
        exit_at_end=args.exit,
        as_json=args.json,
    )
    return 0


def _uuid_argument(name: str, value: str) -> str:
    if not UUID_PATTERN.match(value):
        raise UsageError(
            f"{name} must be a UUID like 023e4567-e89b-12d3-a456-426614174000: {value!r}"
        )
    return value.lower()


def subscribe(settings: Settings, client: str, restaurant: str) -> tuple[bool, list[str]]:
    """Add the subscription unless present; returns (added, active campaigns it will get)."""
    with psycopg.connect(conninfo(settings)) as conn:
        now = db_now(conn)
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{client}/{restaurant}",))
        present = conn.execute(
            "SELECT 1 FROM public.subscribers_restaurants WHERE client_id = %s "
            "AND restaurant_id = %s",
            (client, restaurant),
        ).fetchone()
        if not present:
            conn.execute(
                "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) "
                "VALUES (%s, %s)",
                (client, restaurant),
            )
        due = [
            row[0]
            for row in conn.execute(
                WILL_TRIGGER, {"client": client, "restaurant": restaurant, "t": now}
            )
        ]
    return not present, due


def cmd_subscribe(args: argparse.Namespace) -> int:
    """add a client's favourite restaurant

    Add (CLIENT, RESTAURANT) to public.subscribers_restaurants unless present, and say
    which active campaigns will now trigger for the client on the next run.

    examples:
    promo subscribe 023e4567-e89b-12d3-a456-426614174009 123e4567-e89b-12d3-a456-426614174000
    """
    client = _uuid_argument("CLIENT", args.client)
    restaurant = _uuid_argument("RESTAURANT", args.restaurant)
    added, due = subscribe(load_settings(), client, restaurant)
    print(
        f"client {client} {'subscribed to' if added else 'was already subscribed to'} "
        f"restaurant {restaurant}"
    )
    if due:
        print(
            f"{len(due)} active campaign(s) will trigger for this client on the next run "
            f"(the sensor starts one within a minute, or `promo run`): {', '.join(due)}"
        )
    else:
        print("no active campaign of this restaurant is waiting to trigger for this client")
    return 0


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return int(value)


def add_parser(commands: Any) -> None:
    send_ = add_command(commands, "send", cmd_send)
    send_.add_argument("file", nargs="?", default="-", help="file, or - for stdin (default)")
    send_.add_argument("--key", help="message key for every line (default: none)")
    tail_ = add_command(commands, "tail", cmd_tail)
    tail_.add_argument("--dlq", action="store_true", help="read the DLQ topic instead")
    tail_.add_argument("--from-beginning", action="store_true", help="start at the oldest")
    tail_.add_argument("-n", "--count", type=_positive, help="stop after N messages")
    tail_.add_argument("-e", "--exit", action="store_true", help="stop at the end")
    tail_.add_argument(
        "-J", "--json", action="store_true", help="one JSON object per message (for jq)"
    )
    subscribe_ = add_command(commands, "subscribe", cmd_subscribe)
    subscribe_.add_argument("client", metavar="CLIENT", help="client id (UUID)")
    subscribe_.add_argument("restaurant", metavar="RESTAURANT", help="restaurant id (UUID)")
