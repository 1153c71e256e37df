"""The subscriber snapshot: the run's window, T and the subscription watermark W."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from promo_pipeline.defs.campaigns.assets import campaign_batch
from promo_pipeline.defs.resources import (
    PipelineLockResource,
    PostgresResource,
    under_pipeline_lock,
)
from promo_pipeline.fanout import record_window


@asset(
    group_name="promo",
    kinds={"postgres"},
    deps=[campaign_batch],
    description="The subscriber watermark W and what lies below it: this run covers the rows "
    "of public.subscribers_restaurants with a serial id up to W, read in place (nothing is "
    "copied), and fixes the run's trigger time T by the database's clock. Reports T, W, the "
    "subscriptions counted between the previous run's W and this one, Postgres's estimate of "
    "the table's rows (an exact count of everything below W would scan the whole table every "
    "run), and whether W waited for an open writer.",
)
@under_pipeline_lock
def subscriber_snapshot(
    context: AssetExecutionContext,
    pipeline_lock: PipelineLockResource,
    postgres: PostgresResource,
) -> MaterializeResult:
    with postgres.connect(autocommit=True) as conn:
        previous = conn.execute("SELECT subscriber_watermark FROM promo.trigger_window").fetchone()
        window = record_window(conn, context.run_id)
        since = previous[0] if previous else 0
        new = conn.execute(
            "SELECT count(*) FROM public.subscribers_restaurants WHERE id > %s AND id <= %s",
            (since, window.subscriber_watermark),
        ).fetchone()[0]
        # The planner's statistics: -1 until the table was first analyzed.
        estimated = conn.execute(
            "SELECT reltuples::int8 FROM pg_class "
            "WHERE oid = 'public.subscribers_restaurants'::regclass"
        ).fetchone()[0]
    if not window.settled:
        context.log.warning(
            "a transaction that may add subscriptions stayed open for 10 s: the watermark "
            f"stays at {window.subscriber_watermark} until it ends"
        )
    context.log.info(
        f"subscriber snapshot at T={window.trigger_time}: watermark {window.subscriber_watermark}, "
        f"{new} subscriptions since the last run's watermark {since}, about "
        f"{max(estimated, 0):,} in all by Postgres's estimate"
    )
    return MaterializeResult(
        metadata={
            "trigger_time": window.trigger_time,
            "subscriber_watermark": window.subscriber_watermark,
            "previous_watermark": since,
            "new_subscriptions": new,
            "subscriptions_estimated": estimated,
            "watermark_settled": window.settled,
        }
    )
