"""`promo status`: promo_pipeline.status's report, as lines or as one JSON object."""

from __future__ import annotations

import argparse
import json
from typing import Any

from promo_pipeline.cli.common import add_command
from promo_pipeline.cli.kafka import require_topic
from promo_pipeline.settings import Settings, load_settings


def cmd_status(args: argparse.Namespace) -> int:
    """input lag, held campaigns, the last run

    Input lag per partition (broker end vs the pipeline's checkpoint), or why there is
    none to count (topic recreated, checkpoint corrupt or missing), offsets lost to
    retention or skipped by a rewind and other recent input events, campaigns active, held
    (and when due), expired and cancelled, triggers awaiting Kafka, and what the last run
    did. With DAGSTER_HOME set, also the last Dagster run. --json prints the same as one
    JSON object; on a failure, {"error": "..."} and a non-zero exit.

    examples:
    promo status
    promo status --json | jq .input
    """
    if args.json:
        # Monitoring scripts read stdout: a failure is a JSON object there too, not silence.
        try:
            report = _report(load_settings())[0]
        except Exception as error:
            from promo_pipeline.cli import failure_line

            line = failure_line(error) or f"{type(error).__name__}: {error}".splitlines()[0]
            print(json.dumps({"error": line}))
            raise
        print(json.dumps(report, sort_keys=True))
        return 0
    report, lines = _report(load_settings())
    for line in lines:
        print(line)
    return 0


def _report(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    from promo_pipeline.status import status_report

    # A stack that is down fails here in one line, before the report's many queries.
    require_topic(settings, settings.promo_input_topic)
    return status_report(settings)


def add_parser(commands: Any) -> None:
    status = add_command(commands, "status", cmd_status)
    status.add_argument("--json", action="store_true", help="one JSON object, for jq")
