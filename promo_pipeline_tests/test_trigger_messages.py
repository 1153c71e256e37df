"""The output message as Postgres builds it from a ledger row (first sends and resends alike)."""

import json

import pytest

from promo_pipeline.fanout import OUTBOX_MESSAGES
from promo_pipeline.message_shapes import TRIGGER_COLUMNS
from promo_pipeline_tests.support.pipeline import Pipeline, new_uuid

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
T = 1795600000


def outbox_slice(pipeline: Pipeline, rows: list[dict[str, object]], first: str, last: str) -> int:
    """`rows` in the ledger at time T, and one outbox entry naming [first, last] of them."""
    campaign_id = rows[0]["adv_campaign_id"]
    with pipeline.connect() as conn:
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO public.subscribers_feedback ({', '.join(TRIGGER_COLUMNS)}) "
                f"VALUES ({', '.join(['%s'] * len(TRIGGER_COLUMNS))})",
                [tuple(r[name] for name in TRIGGER_COLUMNS) for r in rows],
            )
        return conn.execute(
            "INSERT INTO promo.trigger_outbox (run_id, adv_campaign_id, client_first, "
            "client_last, trigger_time, triggers) VALUES ('test', %s, %s, %s, %s, %s) "
            "RETURNING slice_id",
            (campaign_id, first, last, T, len(rows)),
        ).fetchone()[0]


def messages(pipeline: Pipeline, slice_id: int) -> list[tuple[bytes, bytes]]:
    return [
        (key.encode(), value.encode())
        for key, value in pipeline.sql(
            f"SELECT key, value FROM {OUTBOX_MESSAGES} WHERE slice_id = %s ORDER BY key",
            (slice_id,),
        )
    ]


def test_message_is_compact_json_in_seed_order_for_odd_text(pipeline: Pipeline) -> None:
    campaign_id = new_uuid()
    rows = [
        {name: (T if "datetime" in name else f"{text}{i}") for name in TRIGGER_COLUMNS}
        | {"adv_campaign_id": campaign_id, "client_id": f"{i:02d}-{new_uuid()}"}
        for i, text in enumerate(ODD_TEXT)
    ]
    slice_id = outbox_slice(pipeline, rows, rows[0]["client_id"], rows[-1]["client_id"])
    assert messages(pipeline, slice_id) == [
        (r["client_id"].encode(), json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode())
        for r in rows
    ]


def test_slice_names_only_its_range_and_time(pipeline: Pipeline) -> None:
    campaign_id = new_uuid()
    rows = [
        {name: (T if "datetime" in name else "x") for name in TRIGGER_COLUMNS}
        | {"adv_campaign_id": campaign_id, "client_id": client}
        for client in ("a", "b", "c", "d")
    ]
    slice_id = outbox_slice(pipeline, rows, "b", "c")
    # A row in the range but of another time (an earlier trigger) is not part of the slice.
    pipeline.sql(
        "UPDATE public.subscribers_feedback SET trigger_datetime_created = %s "
        "WHERE client_id = 'c'",
        (T - 60,),
    )
    assert [key for key, _ in messages(pipeline, slice_id)] == [b"b"]
