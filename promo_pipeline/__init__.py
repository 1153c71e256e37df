"""promo_pipeline: promo campaigns from Kafka to push triggers, orchestrated by Dagster."""
