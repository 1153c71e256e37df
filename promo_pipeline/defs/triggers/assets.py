"""Triggers: what is due at T, one per (active campaign, subscriber) pair never triggered."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from promo_pipeline.defs.campaigns.assets import campaign_batch
from promo_pipeline.defs.subscribers.assets import subscriber_snapshot
from promo_pipeline.fanout import DUE_FULL, NEW_FROM, run_window
from promo_pipeline.resources import PipelineLockResource, PostgresResource, under_pipeline_lock


@asset(
    group_name="promo",
    kinds={"postgres"},
    deps=[campaign_batch, subscriber_snapshot],
    description="The due fan-out at the run's time T: campaigns active at T whose subscribers "
    "are not all triggered yet (new, changed restaurant, now due, or a fan-out in progress), "
    "and subscriptions added since the fanned-out campaigns' watermark. Joined in Postgres, "
    "slice by slice, by the Postgres sink.",
)
@under_pipeline_lock
def triggers(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    postgres: PostgresResource,
) -> MaterializeResult:
    with postgres.connect(autocommit=True) as conn:
        window = run_window(conn, context.run_id)
        params = {"t": window.trigger_time, "w": window.subscriber_watermark}
        full = conn.execute(DUE_FULL, params).fetchall()
        since = conn.execute(NEW_FROM, params).fetchone()[0]
    in_progress = [campaign for campaign, _, cursor in full if cursor]
    new_ids = 0 if since is None else window.subscriber_watermark - since
    context.log.info(
        f"triggers at T={window.trigger_time}: {len(full)} campaigns to fan out "
        f"({len(in_progress)} resuming), subscription ids {since}..{window.subscriber_watermark} "
        "to match against the fanned-out campaigns"
    )
    return MaterializeResult(
        metadata={
            "run_time": window.trigger_time,
            "subscriber_watermark": window.subscriber_watermark,
            "campaigns_to_fan_out": len(full),
            "fan_outs_resuming": len(in_progress),
            "new_subscription_ids": new_ids,
            "due_campaigns": MetadataValue.json([row[0] for row in full[:50]]),
        }
    )
