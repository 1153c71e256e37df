"""The sinks' encoders on their own: pure functions, no services."""

import csv
import io
import json

import pyarrow as pa
import pytest

from promo_pipeline.assets.sinks import csv_chunks, kafka_values
from promo_pipeline.assets.triggers import TRIGGER_ARROW_SCHEMA
from promo_pipeline.schema import TRIGGER_COLUMNS

ODD_TEXT = [
    "plain",
    'a "quoted" word',
    "back\\slash",
    "tab\tnew\nline\x01",
    "кириллица и 🎉",
    "\u2028line separator",
    "",
    'both "\\',
]


def rows_with(text: str) -> list[dict[str, object]]:
    return [
        {name: (1795600000 + i if "datetime" in name else f"{text}{i}") for name in TRIGGER_COLUMNS}
        for i in range(3)
    ]


@pytest.mark.parametrize("text", ODD_TEXT)
def test_kafka_value_is_compact_json_in_seed_order(text: str) -> None:
    rows = rows_with(text)
    values = kafka_values(pa.Table.from_pylist(rows, TRIGGER_ARROW_SCHEMA)).to_pylist()
    assert values == [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in rows]
    assert [list(json.loads(v)) for v in values] == [list(TRIGGER_COLUMNS)] * 3


def test_kafka_values_escape_only_the_columns_that_need_it() -> None:
    """A clean column next to one with quotes: each takes its own path, same result."""
    rows = rows_with("clean")
    rows[1]["adv_campaign_content"] = 'say "hi"'
    values = kafka_values(pa.Table.from_pylist(rows, TRIGGER_ARROW_SCHEMA)).to_pylist()
    assert [json.loads(v) for v in values] == rows


def test_csv_chunks_quote_every_string_so_empty_is_not_null() -> None:
    """Postgres' CSV COPY reads an unquoted empty field as NULL: every string is quoted."""
    rows = rows_with("x")
    rows[0]["adv_campaign_owner"] = ""
    # Several small chunks, as Spark hands them over.
    table = pa.concat_tables([pa.Table.from_pylist([r], TRIGGER_ARROW_SCHEMA) for r in rows])
    lines = b"".join(bytes(chunk) for chunk in csv_chunks(table)).decode().splitlines()
    assert len(lines) == 3
    owner = TRIGGER_COLUMNS.index("adv_campaign_owner")
    assert lines[0].split(",")[owner] == '""'
    assert [next(csv.reader(io.StringIO(line))) for line in lines] == [
        [str(v) for v in r.values()] for r in rows
    ]
