"""The code location's resources, from the environment (the classes: promo_pipeline.resources)."""

import dagster as dg

from promo_pipeline.resources import build_resources
from promo_pipeline.settings import load_settings


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources(load_settings(export=True)))
