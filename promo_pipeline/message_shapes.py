"""The campaign and trigger shapes: the seed's JSON contract, defined once.

`Campaign` validates an input message; `TRIGGER_COLUMNS` is the output message's field order
and the feedback table's columns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

UUID_PATTERN = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
INT8_MAX = 2**63 - 1
# A trigger message carries the campaign's fields (as the input escaped them, or shorter) plus
# ~100 bytes; a 512 KiB cap on the input keeps every trigger far below Kafka's default 1 MiB
# message limit, so one oversized campaign cannot block the output topic run after run.
MAX_MESSAGE_BYTES = 512 * 1024
# Plausible campaign times, in seconds: a millisecond epoch (or a typo) lies far outside, and
# stored it would make every later date computation (sensor, status) fail.
EPOCH_MIN = 946_684_800  # 2000-01-01 00:00:00 UTC
EPOCH_MAX = 4_102_444_800  # 2100-01-01 00:00:00 UTC


def _uuid(value: str) -> str:
    # UUIDs compare case-insensitively (RFC 9562): one canonical, lower-case form everywhere,
    # so a campaign re-sent in upper case is the same campaign.
    if not UUID_PATTERN.match(value):
        raise ValueError("not a UUID (8-4-4-4-12 hex digits)")
    return value.lower()


def epoch_out_of_range(value: int) -> str | None:
    """Why `value` is no plausible time in epoch seconds, or None: the one rule for campaign
    times and for the times an operator gives (`promo rewind --to-time`)."""
    if EPOCH_MIN <= value <= EPOCH_MAX:
        return None
    unit = " (milliseconds? expected seconds)" if value >= EPOCH_MAX * 100 else ""
    return f"{value} is outside 2000-01-01..2100-01-01 in epoch seconds{unit}"


def _plausible(value: int) -> int:
    problem = epoch_out_of_range(value)
    if problem:
        raise PydanticCustomError("epoch_out_of_range", problem)
    return value


def format_epoch(epoch: int) -> str:
    """UTC time of an epoch; never raises, so one odd stored value cannot crash a report."""
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return f"epoch {epoch} (out of range)"


def _text(value: str) -> str:
    # Postgres text cannot hold NUL; rejecting it here keeps one bad message from failing a run.
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


Uuid = Annotated[str, AfterValidator(_uuid)]
Text = Annotated[str, Field(min_length=1), AfterValidator(_text)]
Epoch = Annotated[int, Field(gt=0, le=INT8_MAX), AfterValidator(_plausible)]


class CampaignFields(BaseModel):
    """Every field of a campaign checked on its own, the window not yet: a window with
    end <= start is invalid as a campaign but may cancel a known one (see `Rejection`)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    restaurant_id: Uuid
    adv_campaign_id: Uuid
    adv_campaign_content: Text
    adv_campaign_owner: Text
    adv_campaign_owner_contact: Text
    adv_campaign_datetime_start: Epoch
    adv_campaign_datetime_end: Epoch
    datetime_created: Epoch


class Campaign(CampaignFields):
    """A restaurant's promo campaign as published to the input topic (seed section 1.2)."""

    @model_validator(mode="after")
    def _window(self) -> Campaign:
        if self.adv_campaign_datetime_end <= self.adv_campaign_datetime_start:
            raise ValueError("adv_campaign_datetime_end must be after adv_campaign_datetime_start")
        return self


CAMPAIGN_COLUMNS: tuple[str, ...] = tuple(Campaign.model_fields)

# The output message's fields, in the seed's order; also the feedback table's data columns.
TRIGGER_COLUMNS: tuple[str, ...] = (
    "restaurant_id",
    "adv_campaign_id",
    "adv_campaign_content",
    "adv_campaign_owner",
    "adv_campaign_owner_contact",
    "adv_campaign_datetime_start",
    "adv_campaign_datetime_end",
    "client_id",
    "datetime_created",
    "trigger_datetime_created",
)


# Every `Rejection.code`, the DLQ's promo.reject.code header: `promo dlq replay --reason` takes
# one of these.
REJECTION_CODES = (
    "tombstone",
    "too_large",
    "not_utf8",
    "duplicate_key",
    "not_json",
    "not_object",
    "missing_field",
    "null_field",
    "epoch_out_of_range",
    "end_not_after_start",
    "invalid_field",
)


@dataclass(frozen=True)
class Rejection:
    """Why a message was set aside: `code` is stable for counting, `detail` is for people."""

    code: str
    detail: str
    # For end_not_after_start: the message's fields, so the batch can treat it as the
    # cancellation of a campaign it already knows (README, "Campaign versions").
    fields: CampaignFields | None = None

    def __post_init__(self) -> None:
        if self.code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {self.code!r}: add it to REJECTION_CODES")

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_campaign(value: bytes | None) -> Campaign | Rejection:
    """Validate one message value; never raises for bad input."""
    if value is None:
        return Rejection("tombstone", "message has no value")
    if len(value) > MAX_MESSAGE_BYTES:
        return Rejection(
            "too_large", f"value is {len(value)} bytes, more than the {MAX_MESSAGE_BYTES} allowed"
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection("not_utf8", f"value is not UTF-8 (byte {error.start})")
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as error:
        return Rejection("duplicate_key", f"key {error} appears more than once")
    except (ValueError, RecursionError) as error:
        return Rejection("not_json", f"value is not JSON: {str(error)[:120]}")
    if not isinstance(document, dict):
        return Rejection("not_object", f"value is a JSON {_json_type(document)}, not an object")
    try:
        fields = CampaignFields.model_validate(document)
    except ValidationError as error:
        return _rejection(error)
    try:
        return Campaign.model_validate(fields.model_dump())
    except ValidationError as error:
        rejection = _rejection(error)
        return Rejection(rejection.code, rejection.detail, fields)


def cancelled(fields: CampaignFields) -> Campaign:
    """The stored form of a cancellation: end = start, so it is never active."""
    return Campaign.model_construct(
        **{**fields.model_dump(), "adv_campaign_datetime_end": fields.adv_campaign_datetime_start}
    )


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return "null" if value is None else names.get(type(value), "object")


def _rejection(error: ValidationError) -> Rejection:
    first = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"])
    got = first.get("input")
    if first["type"] == "missing":
        return Rejection("missing_field", f"{field} is missing")
    if got is None and field:
        return Rejection("null_field", f"{field} is null")
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "epoch_out_of_range":
        return Rejection("epoch_out_of_range", f"{field}: {message}")
    if not field:
        return Rejection("end_not_after_start", message)
    return Rejection("invalid_field", f"{field}: {message} (got {_json_type(got)})")
