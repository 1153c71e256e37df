"""Triggers: the due set at T, per campaign, counted; the Postgres sink writes it."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from promo_pipeline.defs.campaigns.assets import campaign_batch
from promo_pipeline.defs.resources import (
    PipelineLockResource,
    PostgresResource,
    under_pipeline_lock,
)
from promo_pipeline.defs.subscribers.assets import subscriber_snapshot
from promo_pipeline.fanout import FANOUTS_IN_PROGRESS, due_full, due_new, run_window

# Campaigns named in the metadata, the largest first; the counts cover all of them.
SHOWN_CAMPAIGNS = 50


@asset(
    group_name="promo",
    kinds={"postgres"},
    deps=[campaign_batch, subscriber_snapshot],
    description="The due set at the run's time T, per campaign, counted (not written: the "
    "Postgres sink joins and writes it slice by slice). Per campaign active at T: the "
    "subscribers its full fan-out still walks (new, moved to another restaurant, now due, or "
    "in progress), or the subscriptions up to W added since its watermark. Pairs already in "
    "the ledger are among them and are skipped when written.",
)
@under_pipeline_lock
def triggers(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    postgres: PostgresResource,
) -> MaterializeResult:
    with postgres.connect(autocommit=True) as conn:
        window = run_window(conn, context.run_id)
        full = due_full(conn, window)
        new = due_new(conn, window)
        resuming = conn.execute(FANOUTS_IN_PROGRESS, {"t": window.trigger_time}).fetchone()[0]
    due = {campaign: full.get(campaign, 0) + new.get(campaign, 0) for campaign in full | new}
    pairs = sum(due.values())
    context.log.info(
        f"triggers at T={window.trigger_time}: {pairs} pairs due for {len(due)} campaigns: "
        f"{len(full)} full fan-outs ({resuming} resuming, {sum(full.values())} subscribers to "
        f"walk), {len(new)} fanned-out campaigns with {sum(new.values())} new subscribers"
    )
    shown = sorted(due.items(), key=lambda item: (-item[1], item[0]))[:SHOWN_CAMPAIGNS]
    return MaterializeResult(
        metadata={
            "trigger_time": window.trigger_time,
            "subscriber_watermark": window.subscriber_watermark,
            "due_pairs": pairs,
            "campaigns_due": len(due),
            "campaigns_to_fan_out": len(full),
            "fan_outs_resuming": resuming,
            "campaigns_with_new_subscribers": len(new),
            "new_subscriber_pairs": sum(new.values()),
            "due_per_campaign": MetadataValue.json(dict(shown)),
        }
    )
