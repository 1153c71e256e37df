from promo_pipeline.assets.campaigns import campaign_batch
from promo_pipeline.assets.sinks import feedback_sink, push_sink
from promo_pipeline.assets.subscribers import subscriber_snapshot
from promo_pipeline.assets.triggers import triggers

ALL_ASSETS = [subscriber_snapshot, campaign_batch, triggers, feedback_sink, push_sink]
