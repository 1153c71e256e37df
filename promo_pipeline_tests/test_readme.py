"""The README stays true where it quotes other files: its performance figures are the
benchmarks' latest results, and every picture it shows exists (every benchmark chart shown)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def readme_figures() -> ModuleType:
    """bench/readme_figures.py (bench/ is not a package)."""
    path = REPO / "bench" / "readme_figures.py"
    spec = importlib.util.spec_from_file_location("readme_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_performance_figures_are_the_benchmarks_latest_results() -> None:
    figures = readme_figures()
    assert figures.section(README) == figures.render(), (
        "README's bench figures differ from bench/results: run bench/readme_figures.py"
    )


def test_every_picture_shown_exists_and_every_quoted_results_chart_is_shown() -> None:
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert shown and [path for path in shown if not (REPO / path).is_file()] == []
    charts = [f"bench/results/{name}.png" for name in readme_figures().QUOTED]
    assert [c for c in charts if (REPO / c).is_file() and c not in shown] == []
    assert "bench/results/full.png" in shown and "bench/results/fanout.png" in shown
