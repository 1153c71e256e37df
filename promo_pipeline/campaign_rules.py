"""The campaign-window rules, each written once, as the SQL that Postgres applies.

A campaign at time T is in one of four disjoint states: active (started, not ended), held
(starts later), expired (ended) or cancelled (stored with end = start, see
`schema.cancelled`: never active). An active campaign is due a full fan-out until its walk of
the restaurant's subscribers is done, and once fanned out a subscription above its watermark
joins it. The sensor, the assets, `promo status`, `promo subscribe` and ingest all take these
rules from here, so the sensor never predicts work that the run will not do
(promo_pipeline_tests/test_campaign_rules.py holds them to that).

Rules are predicates for a table alias and a SQL expression or placeholder `t`; the queries
below are named, like procrastinate's queries.sql, and say which placeholders they take.
"""

from __future__ import annotations


def _columns(alias: str) -> str:
    return f"{alias}." if alias else ""


def active_at(t: str, alias: str = "") -> str:
    """Active at `t`: started, not yet ended."""
    c = _columns(alias)
    return f"{c}adv_campaign_datetime_start <= {t} AND {c}adv_campaign_datetime_end > {t}"


def cancelled(alias: str = "") -> str:
    """Cancelled: never active at any time."""
    c = _columns(alias)
    return f"{c}adv_campaign_datetime_end <= {c}adv_campaign_datetime_start"


def held_at(t: str, alias: str = "") -> str:
    """Held at `t`: starts later and is not cancelled, so it will be active some day."""
    return f"{_columns(alias)}adv_campaign_datetime_start > {t} AND NOT ({cancelled(alias)})"


def expired_at(t: str, alias: str = "") -> str:
    """Expired at `t`: ended, and not cancelled (a cancellation is its own state)."""
    return f"{_columns(alias)}adv_campaign_datetime_end <= {t} AND NOT ({cancelled(alias)})"


def state_counts(t: str, alias: str = "") -> str:
    """The select list counting the four states at `t`: active, held, expired, cancelled."""
    return ", ".join(
        f"count(*) FILTER (WHERE {rule})"
        for rule in (active_at(t, alias), held_at(t, alias), expired_at(t, alias), cancelled(alias))
    )


def due_full_at(t: str, alias: str = "") -> str:
    """Due a full fan-out at `t`: active, and its walk of the restaurant's subscribers not done
    (new, now due, moved to another restaurant, or stopped between slices)."""
    return f"{active_at(t, alias)} AND {_columns(alias)}fanout_through IS NULL"


def in_progress_at(t: str, alias: str = "") -> str:
    """A full fan-out stopped between slices, which the next run goes on with: due at `t`, and
    its walk saved a cursor."""
    return f"{due_full_at(t, alias)} AND {_columns(alias)}fanout_cursor IS NOT NULL"


def joins_fanned_out(t: str, subscription: str = "s", campaign: str = "c") -> str:
    """The new-subscriber rule: subscription `subscription` (of the campaign's restaurant, see
    NEW_SUBSCRIBER_JOIN) is above the watermark of campaign `campaign`, fanned out and active."""
    return f"{subscription}.id > {campaign}.fanout_through AND {active_at(t, campaign)}"


# Campaigns due a full fan-out at %(t)s; those not started first, so a huge one in progress
# never holds back the campaigns that arrived after it. Rows: id, restaurant (lower case),
# the walk's cursor ('' before the first slice). A few rows, by the window index.
DUE_FULL = f"""
SELECT adv_campaign_id, lower(restaurant_id), coalesce(fanout_cursor, '')
FROM promo.campaigns
WHERE {due_full_at("%(t)s")}
ORDER BY fanout_cursor IS NOT NULL, updated_at, adv_campaign_id
"""

# The lowest watermark among the campaigns fanned out and active at %(t)s, below %(w)s: new
# subscriptions start above it (NULL: none to look for).
NEW_FROM = f"""
SELECT min(fanout_through) FROM promo.campaigns
WHERE {active_at("%(t)s")} AND fanout_through IS NOT NULL AND fanout_through < %(w)s
"""

# Subscriptions `s` with the campaigns `c` of their restaurant (UUIDs in any case).
SUBSCRIPTION_CAMPAIGNS = """
FROM public.subscribers_restaurants s
JOIN promo.campaigns c ON lower(c.restaurant_id) = lower(s.restaurant_id)
"""

# The new-subscriber join, as FROM and WHERE: subscriptions with an id in (%(lo)s, %(hi)s],
# each with the active campaigns of its restaurant fanned out below it. A primary-key range
# scan, so it costs the new subscriptions, whatever the size of the restaurant.
NEW_SUBSCRIBER_JOIN = f"""{SUBSCRIPTION_CAMPAIGNS}
WHERE s.id > %(lo)s AND s.id <= %(hi)s AND {joins_fanned_out("%(t)s")}
"""

# What subscription (%(client)s, %(restaurant)s) gets from the next run at %(t)s: the active
# campaigns of its restaurant that a full fan-out will walk or that it joins as a new
# subscriber, less the pairs already in the ledger (a run never writes one twice).
WILL_TRIGGER = f"""
SELECT DISTINCT c.adv_campaign_id {SUBSCRIPTION_CAMPAIGNS}
WHERE lower(s.client_id) = lower(%(client)s) AND lower(s.restaurant_id) = lower(%(restaurant)s)
  AND (({due_full_at("%(t)s", "c")}) OR ({joins_fanned_out("%(t)s")}))
  AND NOT EXISTS (SELECT 1 FROM public.subscribers_feedback f
                  WHERE f.adv_campaign_id = c.adv_campaign_id
                    AND f.client_id = lower(s.client_id))
ORDER BY 1
"""
