"""The code location: five assets, one job, one sensor, resources from the environment."""

from dagster import Definitions

from promo_pipeline.assets import ALL_ASSETS
from promo_pipeline.checks import ALL_CHECKS
from promo_pipeline.jobs import promo_job
from promo_pipeline.resources import build_resources
from promo_pipeline.sensors import promo_work_sensor
from promo_pipeline.settings import load_settings

# Fails the code location at load time, naming the variable, when a setting is wrong.
settings = load_settings(export=True)

defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[promo_job],
    sensors=[promo_work_sensor],
    resources=build_resources(settings),
)
