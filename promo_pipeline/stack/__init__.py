"""An embedded local stack (Kafka, PostgreSQL, Spark connector jars) started without Docker."""

from promo_pipeline.stack.local import LocalStack

__all__ = ["LocalStack"]
