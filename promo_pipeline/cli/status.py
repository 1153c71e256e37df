"""`promo status`: promo_pipeline.status's report, as lines or as one JSON object."""

from __future__ import annotations

import argparse
import json
from typing import Any

from promo_pipeline.cli.common import add_command
from promo_pipeline.cli.kafka import require_topic
from promo_pipeline.settings import load_settings


def cmd_status(args: argparse.Namespace) -> int:
    """input lag, held campaigns, the last run

    Input lag per partition (broker end vs the pipeline's checkpoint), or why there is
    none to count (topic recreated, checkpoint corrupt), offsets lost to retention and
    other recent input events, campaigns active, held (and when due) and expired,
    fan-outs in progress (subscribers done of total, since when), triggers awaiting
    Kafka, and what the last run did. With DAGSTER_HOME set, also the
    last Dagster run. --json prints the same as one JSON object.

    examples:
    promo status
    promo status --json | jq .input
    promo status --json | jq .fanouts_in_progress
    """
    from promo_pipeline.status import status_report

    settings = load_settings()
    # A stack that is down fails here in one line, before the report's many queries.
    require_topic(settings, settings.promo_input_topic)
    report, lines = status_report(settings)
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    for line in lines:
        print(line)
    return 0


def add_parser(commands: Any) -> None:
    status = add_command(commands, "status", cmd_status)
    status.add_argument("--json", action="store_true", help="one JSON object, for jq")
