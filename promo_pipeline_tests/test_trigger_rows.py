"""Assembling the trigger rows on the driver: a pure function, no services."""

import pyarrow as pa

from promo_pipeline.assets.triggers import CAMPAIGN_ARROW_SCHEMA, trigger_rows
from promo_pipeline.schema import CAMPAIGN_COLUMNS, TRIGGER_COLUMNS


def campaign_row(campaign_id: str, restaurant_id: str, content: str) -> dict[str, object]:
    row: dict[str, object] = {name: f"{name}-{campaign_id}" for name in CAMPAIGN_COLUMNS}
    row.update(
        adv_campaign_id=campaign_id,
        restaurant_id=restaurant_id,
        adv_campaign_content=content,
        adv_campaign_datetime_start=100,
        adv_campaign_datetime_end=200,
        datetime_created=int(campaign_id[-1]),
    )
    return row


def test_rows_carry_their_campaigns_fields_in_index_order() -> None:
    active = pa.Table.from_pylist(
        [campaign_row("c2", "r2", "second"), campaign_row("c1", "r1", 'first "one"')],
        CAMPAIGN_ARROW_SCHEMA,
    )
    pairs = pa.table(
        {
            "adv_campaign_id": ["c2", "c1", "c2", "c1"],
            "client_id": ["z", "b", "a", "a"],
        }
    )
    rows = trigger_rows(active, pairs, now=150)
    assert rows.column_names == list(TRIGGER_COLUMNS)
    got = rows.to_pylist()
    assert [(r["adv_campaign_id"], r["client_id"]) for r in got] == [
        ("c1", "a"),
        ("c1", "b"),
        ("c2", "a"),
        ("c2", "z"),
    ]
    by_campaign = {r["adv_campaign_id"]: r for r in active.to_pylist()}
    for row in got:
        campaign = by_campaign[row["adv_campaign_id"]]
        assert {name: row[name] for name in CAMPAIGN_COLUMNS} == campaign
        assert row["trigger_datetime_created"] == 150


def test_no_pairs_give_an_empty_table_with_the_trigger_schema() -> None:
    active = pa.Table.from_pylist([campaign_row("c1", "r1", "x")], CAMPAIGN_ARROW_SCHEMA)
    empty = pa.table({"adv_campaign_id": pa.array([], pa.string()), "client_id": []})
    rows = trigger_rows(active, empty, now=150)
    assert rows.num_rows == 0 and rows.column_names == list(TRIGGER_COLUMNS)
