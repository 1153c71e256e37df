"""A small pure-Python model of the campaign version rules (README, "Campaign versions"),
written from the README, not from the SQL: which version of a campaign is stored."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# The fields a version's content hash covers, in order: all but the campaign id (the same for
# every version) and datetime_created (the key's first part).
CONTENT_FIELDS = (
    "restaurant_id",
    "adv_campaign_content",
    "adv_campaign_owner",
    "adv_campaign_owner_contact",
    "adv_campaign_datetime_start",
    "adv_campaign_datetime_end",
)


def is_cancellation(version: dict[str, Any]) -> bool:
    return version["adv_campaign_datetime_end"] <= version["adv_campaign_datetime_start"]


def stored_form(version: dict[str, Any]) -> dict[str, Any]:
    """What is stored for a version: ids in lower case, a cancellation with end = start."""
    stored = {
        **version,
        "restaurant_id": version["restaurant_id"].lower(),
        "adv_campaign_id": version["adv_campaign_id"].lower(),
    }
    if is_cancellation(stored):
        stored["adv_campaign_datetime_end"] = stored["adv_campaign_datetime_start"]
    return stored


def version_key(version: dict[str, Any]) -> tuple[int, bool, str]:
    """The order of versions: datetime_created, then a cancellation before a live version,
    then the MD5 of the content as a JSON array (the text Postgres' json_build_array writes
    for ASCII strings and integers)."""
    stored = stored_form(version)
    content = json.dumps([stored[name] for name in CONTENT_FIELDS], ensure_ascii=False)
    return (
        stored["datetime_created"],
        is_cancellation(stored),
        hashlib.md5(content.encode()).hexdigest(),
    )


def newest(*versions: dict[str, Any] | None) -> dict[str, Any]:
    """The version that wins among `versions` (None ones ignored; at least one is not), in
    its stored form."""
    present = [stored_form(v) for v in versions if v is not None]
    return max(present, key=version_key)
