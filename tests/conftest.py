"""Shared fixtures: one small simulated study per test session (read-only for tests)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``small`` preset simulated with seed 1 (do not modify it in tests)."""
    from analysis.simulate import simulate_study

    out = tmp_path_factory.mktemp("small_study")
    simulate_study(out, preset="small", seed=1, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def small_report(small_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole report (pipeline and every notebook) run once on :func:`small_study`.

    Returns the output folder with ``processed/`` and ``reports/`` (read-only for tests).
    """
    from analysis.report import run_report

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("report")
    run_report(
        data_dir=small_study,
        processed_dir=out / "processed",
        reports_dir=out / "reports",
        notebooks_dir=root / "notebooks",
        workers=2,
    )
    return out
