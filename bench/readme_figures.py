"""The README's performance figures, rendered from bench/results/*.json, so they cannot drift
from the benchmarks' latest results.

    .venv/bin/python bench/readme_figures.py          # rewrite the README's section
    .venv/bin/python bench/readme_figures.py --check  # exit 1 if the README is stale

The section sits between the BEGIN and END markers below; everything else in the README is
left as it is. promo_pipeline_tests/test_readme.py fails while the two differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "bench" / "results"
BEGIN = "<!-- bench figures: rendered by bench/readme_figures.py; do not edit -->"
END = "<!-- end of bench figures -->"
# The results the README quotes (each with its chart, where one exists); other files in
# bench/results are earlier or partial measurements that bench/README.md discusses.
QUOTED = ("full", "fanout", "fanout_compare", "freshness_giant", "backlog")


def _load(name: str) -> dict[str, Any]:
    assert name in QUOTED, name
    return json.loads((RESULTS / f"{name}.json").read_text())


def _millions(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n:,}"


def render() -> str:
    """The section's markdown, markers included."""
    full = _load("full")
    at = {(r["size"], r["contender"]): r for r in full["summary"]}
    largest = max(r["triggers"] for r in full["summary"])
    size = next(s for s, c in at if c == "promo" and at[s, c]["triggers"] == largest)
    promo, seed, raw = at[size, "promo"], at[size, "seed"], at[size, "raw"]
    lines = [
        BEGIN,
        f"- `bench/benchmark.py --full` ({full['meta']['started']} UTC, {full['meta']['cpus']} "
        f"cores, medians of {promo['reps']}): {_millions(largest)} triggers in "
        f"{promo['wall_s']:.2f} s, {promo['promo/seed']:.2f}x the seed's design "
        f"({promo['triggers_per_s']:,.0f} vs {seed['triggers_per_s']:,.0f} triggers/s) and "
        f"{promo['promo/raw']:.2f}x the raw sinks' limit, at {promo['peak_rss_mb']:,.1f} MB peak "
        f"RSS (seed {seed['peak_rss_mb']:,.1f} MB, raw {raw['peak_rss_mb']:,.1f} MB):",
        "",
        "  | contender | wall s | triggers/s | peak RSS MB |",
        "  |---|---|---|---|",
    ]
    for contender in ("promo", "promo-local", "seed", "raw"):
        row = at.get((size, contender))
        if row:
            lines.append(
                f"  | {contender} | {row['wall_s']:.2f} | {row['triggers_per_s']:,.0f} | "
                f"{row['peak_rss_mb']:,.1f} |"
            )
    lines += ["", "  ![benchmark: promo, seed and raw sinks](bench/results/full.png)", ""]

    fanout = _load("fanout")
    runs = fanout["fanout"]
    steady = fanout["steady_state"]
    lines += [
        f"- `bench/fanout.py` ({fanout['meta']['started']} UTC): one campaign fanning out to "
        + " / ".join(_millions(r["subscribers"]) for r in runs)
        + f" subscribers beside {_millions(fanout['meta']['unrelated_subscriptions'])} "
        "unrelated ones: "
        + " / ".join(f"{r['wall_s']:.1f} s" for r in runs)
        + ", peak RSS "
        + " / ".join(f"{r['peak_rss_mb']:,} MB" for r in runs)
        + f" (run + Connect server); at {_millions(steady['triggered_pairs'])} triggered, one "
        f"new subscription costs a {steady['tick_s']:.3f} s sensor check and a "
        f"{steady['run_wall_s']:.2f} s run.",
        "",
        "  ![fan-out: seconds and peak RSS by subscribers](bench/results/fanout.png)",
        "",
    ]

    compare = _load("fanout_compare")
    sizes = {}
    for row in compare["summary"]:
        sizes.setdefault(row["size"], {})[row["contender"]] = row
    lines.append(
        f"- `bench/fanout.py --sizes {','.join(str(s) for s in compare['meta']['sizes_done'])}` "
        f"({compare['meta']['started']} UTC), side by side, one campaign beside "
        f"{_millions(compare['meta']['unrelated_subscriptions'])} unrelated subscriptions: "
        + "; ".join(
            f"to {_millions(at['promo']['triggers'])} subscribers "
            + ", ".join(
                f"{name} {row['wall_s']:.1f} s ({row['triggers_per_s']:,.0f} triggers/s, "
                f"{row['peak_rss_mb']:,.0f} MB)"
                for name, row in at.items()
            )
            + f", promo/seed {at['promo']['promo/seed']:.2f}x, promo/raw "
            f"{at['promo']['promo/raw']:.2f}x"
            for at in sizes.values()
        )
        + " (raw's triggers/s over its sinks only)."
    )
    lines += [
        "",
        "  ![fan-out side by side: promo, seed and raw](bench/results/fanout_compare.png)",
        "",
    ]

    giant = _load("freshness_giant")["freshness_giant"]
    for trial in giant:
        budget = f"budget {trial['budget_s']} s" if trial["budget_s"] else "no budget"
        lines.append(
            f"- `bench/freshness_giant.py`, {budget}: small campaigns published "
            + " / ".join(f"{s['at_s']:.0f}" for s in trial["smalls"])
            + f" s into a {_millions(trial['giant_subscribers'])} fan-out reached Kafka in "
            + " / ".join(f"{s['latency_s']:.1f}" for s in trial["smalls"])
            + f" s; the giant was done {trial['giant_publish_to_done_s']:.1f} s after it was "
            f"published ({len(trial['runs'])} runs in all)."
        )
    lines.append("")

    backlog = _load("backlog")
    lines += [
        f"- `bench/backlog.py`: {backlog['campaign_messages']:,} campaign messages drained in "
        f"{backlog['micro_batches']} micro-batches of at most "
        f"{backlog['max_offsets_per_trigger']:,} in {backlog['drain_seconds']} s, peak RSS "
        f"{backlog['peak_rss_mib_total']:,} MiB (JVM {backlog['peak_rss_mib_jvm']:,} MiB).",
        END,
    ]
    return "\n".join(lines)


def section(readme: str) -> str:
    """The README's current section, markers included."""
    start = readme.index(BEGIN)
    return readme[start : readme.index(END, start) + len(END)]


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    check = args.parse_args().check
    readme = README.read_text()
    rendered = render()
    if section(readme) == rendered:
        print("README's bench figures are current")
        return 0
    if check:
        print("README's bench figures are stale: run bench/readme_figures.py", file=sys.stderr)
        return 1
    README.write_text(readme.replace(section(readme), rendered))
    print("README's bench figures rewritten from bench/results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
