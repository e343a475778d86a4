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
