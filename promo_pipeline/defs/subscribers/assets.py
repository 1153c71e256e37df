"""The subscriber snapshot: the run's window, T and the subscription watermark W."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from promo_pipeline.defs.campaigns.assets import campaign_batch
from promo_pipeline.fanout import record_window
from promo_pipeline.resources import PipelineLockResource, PostgresResource, under_pipeline_lock


@asset(
    group_name="promo",
    kinds={"postgres"},
    deps=[campaign_batch],
    description="The subscriptions this run covers: public.subscribers_restaurants up to the "
    "watermark W (its serial id), with the run's trigger time T from the database's clock. "
    "Nothing is copied: the fan-out reads the table slice by slice.",
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
    if not window.settled:
        context.log.warning(
            "a transaction that may add subscriptions stayed open for 10 s: the watermark "
            f"stays at {window.subscriber_watermark} until it ends"
        )
    context.log.info(
        f"subscriber snapshot at T={window.trigger_time}: watermark {window.subscriber_watermark}, "
        f"{new} subscriptions since the last run's watermark {since}"
    )
    return MaterializeResult(
        metadata={
            "trigger_time": window.trigger_time,
            "subscriber_watermark": window.subscriber_watermark,
            "previous_watermark": since,
            "new_subscriptions": new,
            "watermark_settled": window.settled,
        }
    )
