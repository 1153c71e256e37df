"""The code location: every Dagster object under promo_pipeline/defs, found by dg's loader."""

from pathlib import Path

import dagster as dg

from promo_pipeline.settings import load_settings

# Fails the code location at load time, naming the variable, when a setting is wrong.
load_settings()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
