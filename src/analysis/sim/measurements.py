"""Study tables drawn from a simulated design without rendering images (perfect counts).

Used by the calibration of the statistics (:mod:`analysis.sim.validation`), the power analysis
(:mod:`analysis.sim.power`), benchmarks and tests: the models of :mod:`analysis.stats` are
fitted to these tables exactly as to measured ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.sim.design import PRESETS, build_design
from analysis.sim.truth import calibrated_model

__all__ = ["simulate_measurements", "simulate_terminal_measurements"]


def simulate_measurements(preset: str = "default", seed: int = 0, *, field_area_um2: float = 600.0) -> pd.DataFrame:
    """Image-level synapse densities drawn from a simulated design, without rendering images.

    Each longitudinal image gets a Poisson count with mean ``true density x field area`` (the
    design already holds the between-animal and between-field variation), divided by the
    area, like a perfect detector would report.

    Returns
    -------
    DataFrame
        The design's sheet and truth columns plus ``puncta_density_per_100um2``.
    """
    p = PRESETS[preset]
    model = calibrated_model()
    design = build_design(p, model.without_drug_effect() if p.null else model, seed)
    syn = design[design["readout"] == "synapse"].copy()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    counts = rng.poisson(syn["true_density_per_100um2"].to_numpy() * field_area_um2 / 100.0)
    syn["puncta_density_per_100um2"] = 100.0 * counts / field_area_um2
    return syn.reset_index(drop=True)


def simulate_terminal_measurements(
    preset: str = "default", seed: int = 0, *, field_area_mm2: float = 0.0164
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Terminal (microglia) readouts drawn from a simulated design, without images.

    Per terminal image a Poisson microglia count (``true density x field area``); per cell a
    Poisson engulfed-puncta count and a log-normal skeleton length (baseline 190 um, SD 0.25 on
    the log scale) scaled by the design's process-length multiplier.

    Returns
    -------
    images, cells : DataFrame
        Image rows with ``microglia_count`` and ``field_area_mm2``; cell rows with
        ``image_id``, ``engulfed_puncta`` and ``skeleton_length_um``.
    """
    p = PRESETS[preset]
    model = calibrated_model()
    design = build_design(p, model.without_drug_effect() if p.null else model, seed)
    term = design[design["readout"] == "terminal"].copy().reset_index(drop=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    term["field_area_mm2"] = field_area_mm2
    term["microglia_count"] = rng.poisson(term["true_microglia_per_mm2"] * field_area_mm2)
    rows = []
    for r in term.itertuples():
        n = int(r.microglia_count)
        rows.append(pd.DataFrame({
            "image_id": r.image_id,
            "engulfed_puncta": rng.poisson(r.engulfed_per_cell, n),
            "skeleton_length_um": 190.0 * r.process_length_scale * np.exp(rng.normal(0, 0.25, n)),
        }))
    cells = pd.concat(rows, ignore_index=True)
    return term, cells
