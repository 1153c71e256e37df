"""Asset checks of the sinks that run with `promo_job`: the guarantees, verified after every run.

promo_job (jobs.py) selects group promo, and with it the checks that target those assets,
so registering them in `Definitions` is enough for every run to execute them. They read what
the run recorded (its rows in Postgres; `triggers_in_both_sinks` compares the two sinks'
materializations, which no one asset's `check_specs` sees), so they also work when run on
their own from the UI: then they judge the latest run. The checks of what a campaign batch
read are its own `check_specs` (defs/campaigns/assets.py), evaluated from its tally and plan.
"""

from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetKey,
    MetadataValue,
    asset_check,
)

from promo_pipeline.defs.resources import PostgresResource
from promo_pipeline.defs.sinks.assets import feedback_sink, push_sink
from promo_pipeline.fanout import unsent_triggers

DUPLICATES = """
SELECT adv_campaign_id, client_id, count(*) FROM public.subscribers_feedback
GROUP BY adv_campaign_id, client_id HAVING count(*) > 1
ORDER BY count(*) DESC LIMIT 10
"""

# The ledger's own guard: a valid unique index on exactly (adv_campaign_id, client_id).
UNIQUE_GUARD = """
SELECT count(*) FROM pg_index i
WHERE i.indrelid = 'public.subscribers_feedback'::regclass
  AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
  AND (SELECT array_agg(a.attname::text ORDER BY k.n)
       FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)
      = ARRAY['adv_campaign_id', 'client_id']
"""


def latest_materialization(
    context: AssetCheckExecutionContext, key: str
) -> tuple[str, dict[str, Any]] | None:
    """(run_id, numeric-or-raw metadata) of the asset's latest materialization."""
    entry = context.instance.get_latest_materialization_event(AssetKey(key))
    if entry is None or entry.asset_materialization is None:
        return None
    metadata = {name: value.value for name, value in entry.asset_materialization.metadata.items()}
    return entry.run_id, metadata


@asset_check(
    asset=feedback_sink,
    description="No (adv_campaign_id, client_id) pair appears twice in "
    "public.subscribers_feedback: exactly one trigger per campaign and client, ever.",
)
def one_trigger_per_campaign_and_client(postgres: PostgresResource) -> AssetCheckResult:
    # With the unique index in place a duplicate cannot exist, and proving it costs nothing;
    # scanning the whole ledger every minute would grow with its history. Without the index
    # (dropped, or left invalid by a failed rebuild) the table itself is scanned.
    with postgres.connect() as conn:
        guarded = conn.execute(UNIQUE_GUARD).fetchone()[0] > 0
        duplicates = [] if guarded else conn.execute(DUPLICATES).fetchall()
    if guarded:
        description = "no duplicate pairs (the unique index on the pair is valid)"
    elif duplicates:
        description = f"{len(duplicates)}+ (campaign, client) pairs have more than one trigger"
    else:
        description = "no duplicate pairs (scanned: the unique index on the pair is missing)"
    return AssetCheckResult(
        passed=not duplicates,
        description=description,
        metadata={
            "unique_index_valid": guarded,
            "duplicate_pairs": len(duplicates),
            "examples": MetadataValue.json(
                [{"campaign": c, "client": k, "rows": n} for c, k, n in duplicates]
            ),
        },
    )


@asset_check(
    asset=push_sink,
    description="Every trigger of the run is in both sinks: nothing the run committed to "
    "Postgres waits in the Kafka outbox, and Kafka acknowledged exactly as many messages of the "
    "run as its slices wrote rows.",
)
def triggers_in_both_sinks(
    context: AssetCheckExecutionContext, postgres: PostgresResource
) -> AssetCheckResult:
    produced = latest_materialization(context, "feedback_sink")
    pushed = latest_materialization(context, "push_sink")
    if produced is None or pushed is None or produced[0] != pushed[0]:
        return AssetCheckResult(
            passed=False, description="no run materialized both feedback_sink and push_sink"
        )
    run_id, trigger_meta = produced
    expected = int(trigger_meta["rows_written"])
    acknowledged = int(pushed[1]["sent_this_run"])
    # The rows written are Postgres's own counts of the slices' committed INSERTs; counting the
    # ledger again by trigger time would scan all of it (it has no index on that column).
    with postgres.connect() as conn:
        unsent = unsent_triggers(conn, run_id)
    problems = []
    if unsent:
        problems.append(f"{unsent} triggers still in the Kafka outbox")
    if acknowledged != expected:
        problems.append(f"Kafka acknowledged {acknowledged} of {expected} triggers")
    return AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or f"all {expected} triggers in Postgres and Kafka",
        metadata={
            "triggers": expected,
            "kafka_acknowledged": acknowledged,
            "outbox_pending": unsent,
            "run_id": run_id,
        },
    )
