"""`promo status`: promo_pipeline.status_report's report, as lines or as one JSON object."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from promo_pipeline.cli.common import add_command, failure_line
from promo_pipeline.cli.kafka import require_topic
from promo_pipeline.settings import Settings, load_settings
from promo_pipeline.status_report import status_report


def cmd_status(args: argparse.Namespace) -> int:
    """input lag, held campaigns, the last run

    Input lag per partition (broker end vs the pipeline's checkpoint), or why there is
    none to count (topic recreated, checkpoint corrupt or missing), offsets lost to
    retention or skipped by a rewind and other recent input events, campaigns active, held
    (and when due), expired and cancelled, fan-outs in progress (subscribers done of total,
    since when), triggers awaiting Kafka, and what the last run did. With DAGSTER_HOME set,
    also the last Dagster run. --json prints the same as one JSON object; on a failure,
    {"error": "..."} and a non-zero exit.

    examples:
    promo status
    promo status --json | jq .input
    promo status --json | jq .fanouts_in_progress
    """
    if args.json:
        # Monitoring scripts read stdout: a failure is a JSON object there too, not silence.
        try:
            report = _report(load_settings())[0]
        except Exception as error:
            line = failure_line(error) or f"{type(error).__name__}: {error}".splitlines()[0]
            print(json.dumps({"error": line}))
            raise
        print(json.dumps(report, sort_keys=True))
        return 0
    report, lines = _report(load_settings())
    for line in lines:
        print(line)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    """the numbers to alert on, in Prometheus' text format

    Input lag per partition, the outbox backlog and its oldest trigger's age, fan-outs in
    progress, seconds since the last successful run (with DAGSTER_HOME set), triggers written
    and rejected messages by reason. Printed once; with --textfile written atomically for
    node_exporter's textfile collector (run it from cron or a timer); with --serve an HTTP
    endpoint that computes them afresh on each scrape (loopback unless --bind says otherwise).
    Example alert rules: docs/alerts.md.

    examples:
    promo metrics
    promo metrics --textfile /var/lib/node_exporter/textfile/promo.prom
    promo metrics --serve 9464
    """
    # Deferred: the Prometheus client loads for `promo metrics` only, not `promo --help`.
    from prometheus_client import generate_latest, start_http_server, write_to_textfile

    from promo_pipeline.metrics import registry

    settings = load_settings()
    require_topic(settings, settings.promo_input_topic)
    metrics = registry(settings)
    if args.serve is not None:
        server, _ = start_http_server(args.serve, addr=args.bind, registry=metrics)
        host, port = server.server_address[:2]
        print(f"serving metrics on http://{host}:{port}/metrics (Ctrl-C stops)", flush=True)
        try:
            threading.Event().wait()
        finally:
            server.shutdown()
    if args.textfile:
        write_to_textfile(args.textfile, metrics)
        return 0
    sys.stdout.write(generate_latest(metrics).decode())
    return 0


def _report(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    # A stack that is down fails here in one line, before the report's many queries.
    require_topic(settings, settings.promo_input_topic)
    return status_report(settings)


def add_parser(commands: Any) -> None:
    status = add_command(commands, "status", cmd_status)
    status.add_argument("--json", action="store_true", help="one JSON object, for jq")
    metrics = add_command(commands, "metrics", cmd_metrics)
    where = metrics.add_mutually_exclusive_group()
    where.add_argument(
        "--serve", type=int, metavar="PORT", help="serve /metrics on PORT (0: any free port)"
    )
    where.add_argument(
        "--textfile", metavar="PATH", help="write to PATH (*.prom) for the textfile collector"
    )
    metrics.add_argument(
        "--bind", default="127.0.0.1", help="address --serve listens on (default 127.0.0.1)"
    )
