"""Hostile input: every kind of bad or odd message, published together with good ones, in one
run. Invalid ones must reach the DLQ with their original bytes and a specific reason; valid odd
ones must reach both sinks with every field exactly as sent (UUIDs in lower case); the run itself
must succeed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Producer

from promo_pipeline.message_shapes import (
    CAMPAIGN_COLUMNS,
    INT8_MAX,
    MAX_MESSAGE_BYTES,
    TRIGGER_COLUMNS,
)
from promo_pipeline_tests.support.pipeline import Pipeline, campaign, new_uuid

pytestmark = [pytest.mark.stack, pytest.mark.spark]


@dataclass(frozen=True)
class Case:
    """One message: its raw value, and either the DLQ code and words expected in the reason
    (`code`), or None for "delivered, every field exactly as sent"."""

    name: str
    raw: bytes | None
    code: str | None = None
    words: str = ""

    @property
    def document(self) -> dict[str, Any]:
        assert self.raw is not None
        return json.loads(self.raw)


def _encode(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


def _with(**fields: Any) -> bytes:
    return _encode(campaign(**fields))


def _without(name: str) -> bytes:
    return _encode({k: v for k, v in campaign().items() if k != name})


def _corpus() -> list[Case]:
    start = campaign()["adv_campaign_datetime_start"]
    duplicated = _encode(campaign())[:-1] + f', "adv_campaign_id": "{new_uuid()}"}}'.encode()
    cases = [
        # Not a JSON object at all.
        Case("truncated_json", _with()[:-9], "not_json", "not JSON"),
        Case("plain_text", b"free pizza for everyone", "not_json", "not JSON"),
        Case("invalid_utf8", b'{"adv_campaign_content": "\xff\xfe"}', "not_utf8", "not UTF-8"),
        Case("overlong_utf8", b"\xc0\xaf", "not_utf8", "not UTF-8"),
        Case("utf8_bom_prefix", b"\xef\xbb\xbf" + _with(), "not_json", "BOM"),
        Case("json_array", _encode([campaign()]), "not_object", "array"),
        Case("json_number", b"42", "not_object", "number"),
        Case("json_string", b'"campaign"', "not_object", "string"),
        Case("json_boolean", b"true", "not_object", "boolean"),
        Case("json_null_literal", b"null", "not_object", "null"),
        Case("tombstone", None, "tombstone", "no value"),
        Case("empty_value", b"", "not_json", "not JSON"),
        Case("whitespace_only", b" \n\t ", "not_json", "not JSON"),
        Case("nan_literal", _with()[:-1] + b', "x": NaN}', "not_json", "NaN"),
        Case("infinity_literal", _with()[:-1] + b', "x": Infinity}', "not_json", "Infinity"),
        Case("digits_5000", _with()[:-1] + b', "x": ' + b"9" * 5000 + b"}", "not_json", "digits"),
        Case("deeply_nested", b"[" * 100_000 + b"]" * 100_000, "not_json", "not JSON"),
        Case("duplicate_keys", duplicated, "duplicate_key", "adv_campaign_id"),
        Case("empty_object", b"{}", "missing_field", "is missing"),
        Case(
            "one_megabyte_content",
            _with(adv_campaign_content="x" * 1_000_000),
            "too_large",
            f"more than the {MAX_MESSAGE_BYTES} allowed",
        ),
        # Each field missing, each field null.
        *(
            Case(f"missing_{name}", _without(name), "missing_field", f"{name} is missing")
            for name in CAMPAIGN_COLUMNS
        ),
        *(
            Case(f"null_{name}", _with(**{name: None}), "null_field", f"{name} is null")
            for name in CAMPAIGN_COLUMNS
        ),
        # Wrong types.
        Case(
            "string_timestamp",
            _with(adv_campaign_datetime_start=str(start)),
            "invalid_field",
            "adv_campaign_datetime_start: Input should be a valid integer (got string)",
        ),
        Case(
            "float_timestamp",
            _with(adv_campaign_datetime_end=2659207116.5),
            "invalid_field",
            "adv_campaign_datetime_end: Input should be a valid integer (got number)",
        ),
        Case(
            "integral_float_timestamp",
            _with(datetime_created=1659131516.0),
            "invalid_field",
            "datetime_created: Input should be a valid integer (got number)",
        ),
        Case(
            "boolean_timestamp",
            _with(adv_campaign_datetime_end=True),
            "invalid_field",
            "(got boolean)",
        ),
        Case(
            "object_content",
            _with(adv_campaign_content={"text": "hi"}),
            "invalid_field",
            "adv_campaign_content: Input should be a valid string (got object)",
        ),
        Case(
            "array_owner",
            _with(adv_campaign_owner=["a", "b"]),
            "invalid_field",
            "adv_campaign_owner: Input should be a valid string (got array)",
        ),
        Case(
            "number_restaurant_id",
            _with(restaurant_id=123),
            "invalid_field",
            "restaurant_id: Input should be a valid string (got number)",
        ),
        # Impossible timestamps and windows.
        Case(
            "negative_start",
            _with(adv_campaign_datetime_start=-1),
            "invalid_field",
            "greater than 0",
        ),
        Case("zero_created", _with(datetime_created=0), "invalid_field", "greater than 0"),
        Case(
            "int8_overflow_end",
            _with(adv_campaign_datetime_end=INT8_MAX + 1),
            "invalid_field",
            "less than or equal to 9223372036854775807",
        ),
        Case(
            "millisecond_epochs",
            _with(
                adv_campaign_datetime_start=start * 1000,
                adv_campaign_datetime_end=(start + 3600) * 1000,
                datetime_created=(start - 60) * 1000,
            ),
            "epoch_out_of_range",
            "adv_campaign_datetime_start: 1659203516000 is outside 2000-01-01..2100-01-01 in "
            "epoch seconds (milliseconds? expected seconds)",
        ),
        Case(
            "start_before_2000",
            _with(adv_campaign_datetime_start=946_684_799),
            "epoch_out_of_range",
            "adv_campaign_datetime_start: 946684799 is outside",
        ),
        Case(
            "end_after_2100",
            _with(adv_campaign_datetime_end=INT8_MAX),
            "epoch_out_of_range",
            "adv_campaign_datetime_end",
        ),
        Case(
            "end_equals_start",
            _with(adv_campaign_datetime_end=start),
            "end_not_after_start",
            "must be after",
        ),
        Case(
            "end_before_start",
            _with(adv_campaign_datetime_end=start - 1),
            "end_not_after_start",
            "must be after",
        ),
        # Empty or malformed strings.
        Case(
            "empty_content",
            _with(adv_campaign_content=""),
            "invalid_field",
            "adv_campaign_content: String should have at least 1 character",
        ),
        Case(
            "empty_owner",
            _with(adv_campaign_owner=""),
            "invalid_field",
            "adv_campaign_owner: String should have at least 1 character",
        ),
        Case(
            "empty_contact",
            _with(adv_campaign_owner_contact=""),
            "invalid_field",
            "adv_campaign_owner_contact: String should have at least 1 character",
        ),
        Case(
            "campaign_id_not_uuid",
            _with(adv_campaign_id="42"),
            "invalid_field",
            "adv_campaign_id: not a UUID",
        ),
        Case(
            "restaurant_id_not_uuid",
            _with(restaurant_id="pizza-place"),
            "invalid_field",
            "restaurant_id: not a UUID",
        ),
        Case(
            "uuid_without_dashes",
            _with(adv_campaign_id=new_uuid().replace("-", "")),
            "invalid_field",
            "not a UUID",
        ),
        Case(
            "uuid_in_braces",
            _with(restaurant_id="{" + new_uuid() + "}"),
            "invalid_field",
            "not a UUID",
        ),
        Case("nul_in_content", _with(adv_campaign_content="a\u0000b"), "invalid_field", "NUL"),
        Case(
            "lone_surrogate_content",
            _encode({**campaign(), "adv_campaign_content": "@"}).replace(b'"@"', b'"\\udc00"'),
            "invalid_field",
            "unicode",
        ),
        # Odd but valid: delivered, every field exactly as sent.
        Case("content_quotes", _with(adv_campaign_content='Say "cheese" \u2014 it\'s "free"')),
        Case("content_backslashes", _with(adv_campaign_content="C:\\promo\\new\\ \\u0041 \\")),
        Case("content_newlines", _with(adv_campaign_content="line 1\nline 2\r\n\tindented\n")),
        Case("content_emoji", _with(adv_campaign_content="\U0001f355\U0001f389 скидка 50% 中文")),
        Case(
            "content_sql",
            _with(
                adv_campaign_content="'); DROP TABLE public.subscribers_feedback; --",
                adv_campaign_owner="Robert'); DELETE FROM promo.campaigns; --",
            ),
        ),
        Case("content_html", _with(adv_campaign_content="<script>alert(1)</script> &amp; </b>")),
        Case("content_control_chars", _with(adv_campaign_content="bell\u0007 esc\u001b del\u007f")),
        Case(
            "unicode_escapes",
            json.dumps(
                campaign(adv_campaign_content="caf\u00e9 \U0001f355"), ensure_ascii=True
            ).encode(),
        ),
        Case(
            "extra_fields",
            _encode(
                {**campaign(), "promo_code": "SPRING", "nested": {"a": [1, {"b": None}]}, "n": 1.5}
            ),
        ),
        Case("end_at_2100", _with(adv_campaign_datetime_end=4_102_444_800)),
        Case(
            "uppercase_uuids",
            _with(restaurant_id=new_uuid().upper(), adv_campaign_id=new_uuid().upper()),
        ),
        Case("pretty_printed", json.dumps(campaign(), indent=2).encode()),
        Case("reversed_field_order", _encode(dict(reversed(campaign().items())))),
        Case(
            "one_character_fields",
            _with(adv_campaign_content="x", adv_campaign_owner="y", adv_campaign_owner_contact="z"),
        ),
        Case("large_content_400k", _with(adv_campaign_content="\u00e9" * 200_000)),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names))
    raws = [case.raw for case in cases]
    assert len(raws) == len(set(raws))
    return cases


CORPUS = _corpus()
CONTROLS = [campaign(), campaign()]


@dataclass
class Outcome:
    """What the one run left behind."""

    summary: str
    feedback: dict[tuple[str, str], dict[str, Any]]
    feedback_rows: int
    output: list[Any]
    dead_letters: list[Any]
    clients: dict[str, str]
    input_topic: str


@pytest.fixture(scope="module")
def outcome(module_pipeline: Pipeline) -> Outcome:
    """Publish the whole corpus and the controls, each subscribed by one client, run once."""
    pipeline = module_pipeline
    restaurants = {c["restaurant_id"] for c in CONTROLS}
    for case in CORPUS:
        try:
            document = json.loads(case.raw or b"")
        except (ValueError, RecursionError):
            continue
        if isinstance(document, dict) and isinstance(document.get("restaurant_id"), str):
            restaurants.add(document["restaurant_id"].lower())
    clients = {restaurant: new_uuid() for restaurant in restaurants}
    pipeline.subscribe(*[(client, restaurant) for restaurant, client in clients.items()])

    producer = Producer(
        {
            "bootstrap.servers": pipeline.settings.kafka_bootstrap_servers,
            "message.max.bytes": 1_048_576,
        }
    )
    errors: list[str] = []
    for case in CORPUS:
        producer.produce(
            pipeline.settings.promo_input_topic,
            key=case.name.encode(),
            value=case.raw,
            on_delivery=lambda error, _m: errors.append(str(error)) if error else None,
        )
    for control in CONTROLS:
        producer.produce(
            pipeline.settings.promo_input_topic, key=b"control", value=_encode(control)
        )
    assert producer.flush(60) == 0 and not errors, errors

    summary = pipeline.run_ok()
    feedback = {(row["adv_campaign_id"], row["client_id"]): row for row in pipeline.feedback()}
    return Outcome(
        summary=summary,
        feedback=feedback,
        feedback_rows=len(pipeline.feedback()),
        output=pipeline.output(),
        dead_letters=pipeline.dead_letters(),
        clients=clients,
        input_topic=pipeline.settings.promo_input_topic,
    )


def test_corpus_is_large_and_varied() -> None:
    kinds = {case.code for case in CORPUS}
    assert len(CORPUS) >= 30
    assert sum(case.code is None for case in CORPUS) >= 10
    assert kinds >= {
        None,
        "not_json",
        "not_utf8",
        "not_object",
        "tombstone",
        "duplicate_key",
        "too_large",
        "missing_field",
        "null_field",
        "invalid_field",
        "end_not_after_start",
        "epoch_out_of_range",
    }


def test_exactly_the_valid_ones_reach_the_sinks_once(outcome: Outcome) -> None:
    delivered = [stored(c.document) for c in CORPUS if c.code is None] + CONTROLS
    expected = {(d["adv_campaign_id"], outcome.clients[d["restaurant_id"]]) for d in delivered}
    assert set(outcome.feedback) == expected
    assert outcome.feedback_rows == len(expected)
    keyed = {(json.loads(m.value())["adv_campaign_id"], m.key().decode()) for m in outcome.output}
    assert keyed == expected and len(outcome.output) == len(expected)
    assert len(outcome.dead_letters) == sum(case.code is not None for case in CORPUS)


def stored(document: dict[str, Any]) -> dict[str, Any]:
    """The document as the sinks hold it: UUIDs in their canonical lower case (RFC 9562),
    every other field exactly as sent."""
    ids = ("restaurant_id", "adv_campaign_id")
    return {**document, **{name: document[name].lower() for name in ids}}


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_hostile_message(case: Case, outcome: Outcome) -> None:
    if case.code is not None:
        letters = [m for m in outcome.dead_letters if m.key() == case.name.encode()]
        assert len(letters) == 1
        letter = letters[0]
        assert letter.value() == case.raw  # the original bytes, untouched
        headers = dict(letter.headers())
        assert headers["promo.reject.code"].decode() == case.code
        reason = headers["promo.reject.reason"].decode()
        assert reason.startswith(case.code + ": ") and case.words in reason, reason
        assert headers["promo.source"].decode().startswith(outcome.input_topic + "/")
        return
    sent = stored(case.document)
    client = outcome.clients[sent["restaurant_id"]]
    row = outcome.feedback[(sent["adv_campaign_id"], client)]
    for name in CAMPAIGN_COLUMNS:
        assert row[name] == sent[name], name
    assert row["client_id"] == client and row["feedback"] is None
    campaign_id = sent["adv_campaign_id"]
    messages = [
        m for m in outcome.output if json.loads(m.value())["adv_campaign_id"] == campaign_id
    ]
    assert len(messages) == 1
    assert messages[0].key() == client.encode()
    value = json.loads(messages[0].value())
    assert list(value) == list(TRIGGER_COLUMNS)
    assert value == {name: row[name] for name in TRIGGER_COLUMNS}
