"""Unit tests of the pure validation: every rejection names its reason."""

from __future__ import annotations

import json

import pytest

from promo_pipeline.message_shapes import (
    CAMPAIGN_COLUMNS,
    TRIGGER_COLUMNS,
    Campaign,
    parse_campaign,
)
from promo_pipeline_tests.support.pipeline import SEED_CAMPAIGN


def encoded(**changes: object) -> bytes:
    return json.dumps({**SEED_CAMPAIGN, **changes}).encode()


def test_seed_message_is_valid_and_kept_verbatim() -> None:
    outcome = parse_campaign(json.dumps(SEED_CAMPAIGN).encode())
    assert isinstance(outcome, Campaign)
    assert outcome.model_dump() == SEED_CAMPAIGN


def test_shapes_follow_the_seed() -> None:
    assert list(CAMPAIGN_COLUMNS) == list(SEED_CAMPAIGN)
    assert len(TRIGGER_COLUMNS) == 10
    assert TRIGGER_COLUMNS[7] == "client_id" and TRIGGER_COLUMNS[-1] == "trigger_datetime_created"


@pytest.mark.parametrize(
    ("value", "code", "words"),
    [
        (None, "tombstone", "no value"),
        (b"\xc3\x28", "not_utf8", "not UTF-8"),
        (b'{"restaurant_id": ', "not_json", "not JSON"),
        (b"NaN", "not_json", "NaN"),
        (b"[]", "not_object", "array"),
        (b"42", "not_object", "number"),
        (b"null", "not_object", "null"),
        (b'{"a": 1, "a": 2}', "duplicate_key", "a"),
        (b"{}", "missing_field", "restaurant_id is missing"),
        (encoded(adv_campaign_owner=None), "null_field", "adv_campaign_owner is null"),
        (encoded(adv_campaign_id="123"), "invalid_field", "not a UUID"),
        (encoded(adv_campaign_datetime_start="1659203516"), "invalid_field", "got string"),
        (encoded(adv_campaign_datetime_start=1659203516.0), "invalid_field", "got number"),
        (encoded(adv_campaign_datetime_end=True), "invalid_field", "got boolean"),
        (encoded(adv_campaign_content={"text": "x"}), "invalid_field", "got object"),
        (encoded(adv_campaign_content=""), "invalid_field", "at least 1 character"),
        (encoded(adv_campaign_content="nul\u0000byte"), "invalid_field", "NUL"),
        (encoded(adv_campaign_datetime_start=0), "invalid_field", "greater than 0"),
        (encoded(adv_campaign_datetime_end=2**63), "invalid_field", "less than or equal"),
        (encoded(adv_campaign_datetime_end=1659203516), "end_not_after_start", "must be after"),
    ],
)
def test_rejections_are_specific(value: bytes | None, code: str, words: str) -> None:
    outcome = parse_campaign(value)
    assert not isinstance(outcome, Campaign)
    assert outcome.code == code
    assert words in str(outcome)


def test_extra_fields_are_ignored() -> None:
    outcome = parse_campaign(encoded(promo_code="SPRING", nested={"a": [1]}))
    assert isinstance(outcome, Campaign)
    assert outcome.model_dump() == SEED_CAMPAIGN


@pytest.mark.parametrize(
    ("epoch", "accepted"),
    [(946_684_799, False), (946_684_800, True), (4_102_444_800, True), (4_102_444_801, False)],
)
def test_campaign_times_are_plausible_epoch_seconds(epoch: int, accepted: bool) -> None:
    """2000-01-01 and 2100-01-01 themselves are accepted; the sample's end is 2100-01-01."""
    outcome = parse_campaign(encoded(datetime_created=epoch))
    assert isinstance(outcome, Campaign) == accepted, outcome
    if not accepted:
        assert outcome.code == "epoch_out_of_range"
