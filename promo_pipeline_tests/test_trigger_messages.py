"""The output message as Postgres builds it from a ledger row (fresh sends and resends alike)."""

import json

import pytest

from promo_pipeline.fanout import slice_messages
from promo_pipeline.schema import TRIGGER_COLUMNS
from promo_pipeline_tests.conftest import Pipeline, new_uuid

pytestmark = [pytest.mark.stack]

ODD_TEXT = [
    "plain",
    'a "quoted" word',
    "back\\slash",
    "tab\tnew\nline\x01\x1f\x7f",
    "кириллица и 🎉",
    "\u2028line separator",
    "",
    'both "\\',
    "comma, and \r\n CRLF",
]


def test_message_is_compact_json_in_seed_order_for_odd_text(pipeline: Pipeline) -> None:
    campaign_id = new_uuid()
    rows = []
    for i, text in enumerate(ODD_TEXT):
        row = {
            name: (1795600000 + i if "datetime" in name else f"{text}{i}")
            for name in TRIGGER_COLUMNS
        }
        rows.append(row | {"adv_campaign_id": campaign_id, "client_id": f"{i:02d}-{new_uuid()}"})
    with pipeline.connect() as conn:
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO public.subscribers_feedback ({', '.join(TRIGGER_COLUMNS)}) "
                f"VALUES ({', '.join(['%s'] * len(TRIGGER_COLUMNS))})",
                [tuple(r[name] for name in TRIGGER_COLUMNS) for r in rows],
            )
        # One trigger time per slice: give all rows the same one.
        conn.execute("UPDATE public.subscribers_feedback SET trigger_datetime_created = 1795600000")
        messages = slice_messages(conn, campaign_id, "", "~", 1795600000)
    expected = [r | {"trigger_datetime_created": 1795600000} for r in rows]
    assert messages.column("key").to_pylist() == [r["client_id"].encode() for r in expected]
    assert messages.column("value").to_pylist() == [
        json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() for r in expected
    ]
    assert [list(json.loads(v)) for v in messages.column("value").to_pylist()] == [
        list(TRIGGER_COLUMNS)
    ] * len(rows)


def test_slice_outside_the_range_or_time_is_empty(pipeline: Pipeline) -> None:
    with pipeline.connect() as conn:
        assert slice_messages(conn, new_uuid(), "", "~", 1).num_rows == 0
