"""The parametric dose x time model and the mixed-model diagnostics, against simulated truth."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from analysis.stats.diagnostics import diagnostics_figure, diagnostics_summary, lmm_residuals
from analysis.stats.models import fit_synapse_lmm
from analysis.sim.measurements import simulate_measurements
from analysis.stats.trend import fit_synapse_trend, trend_table


def test_covariates_by_hand(caplog: pytest.LogCaptureFixture) -> None:
    m = pd.DataFrame({"animal_id": ["a"] * 4, "dose_mg_kg": [3.0] * 4, "treatment_days": [7] * 4,
                      "day": [-7, 0, 7, 21], "puncta_density_per_100um2": [40.0, 41, 36, 0]})
    with caplog.at_level(logging.WARNING, logger="analysis.stats.trend"):
        t = trend_table(m)
    # a zero density cannot be logged: excluded, counted and warned about, never silently
    assert len(t) == 3 and t.attrs["n_zero_excluded"] == 1
    assert "1 image(s) with zero puncta_density_per_100um2 excluded" in caplog.text
    assert t["log_value"].tolist() == pytest.approx(np.log([40.0, 41, 36]).tolist())
    kept = trend_table(m, zeros="offset")
    assert len(kept) == 4 and kept["log_value"].iloc[-1] == pytest.approx(np.log(18.0))  # 0 + 36 / 2
    assert t["dose"].tolist() == [2.0, 2.0, 2.0]
    assert t["on"].tolist() == [0.0, 0.0, 1.0] and t["off"].tolist() == [0.0, 0.0, 0.0]
    assert trend_table(m.assign(puncta_density_per_100um2=40.0))["off"].iloc[-1] == pytest.approx(2.0)


def test_trend_model_finds_loss_and_recovery() -> None:
    t = fit_synapse_trend(simulate_measurements("default", 0)).set_index("term")
    # truth: density falls while on drug (more with dose) and recovers after withdrawal
    assert t.loc["dose:on", "ci_high"] < 0 and t.loc["dose:off", "ci_low"] > 0
    # (no assertion on the "dose" term: it is the dose effect at time 0 of the fitted straight
    # lines, and the true build-up saturates within days, so with 4 fields per session the
    # linear on-drug slope pulls it below 0: 95 % CI -4.1 to -0.6 % at seed 0, in 3 of 3 seeds;
    # a known misfit of the parametric summary, not a baseline difference)
    assert (t["n_animals"] == 88).all()  # WT vehicle + diazepam animals, not images
    assert (t["n_zero_fields_excluded"] == 0).all()
    assert t["converged"].all()


def test_trend_model_null_study_has_no_drug_slopes() -> None:
    t = fit_synapse_trend(simulate_measurements("null", 1)).set_index("term")
    for term in ("dose:on", "dose:off"):
        assert t.loc[term, "ci_low"] < 0 < t.loc[term, "ci_high"]


def test_trend_model_needs_both_arms() -> None:
    m = simulate_measurements("small", 0)
    with pytest.raises(ValueError, match="vehicle and diazepam"):
        fit_synapse_trend(m[m["compound"] == "vehicle"])


def test_diagnostics_flag_heavy_tailed_residuals() -> None:
    m = simulate_measurements("default", 2)
    good = diagnostics_summary(fit_synapse_lmm(m)).iloc[0]
    assert abs(good["residual_skewness"]) < 0.5 and abs(good["residual_excess_kurtosis"]) < 1.0
    assert good["n_animals"] == 112 and good["converged"]
    rng = np.random.default_rng(0)
    bad = m.copy()
    # multiplicative outliers in 3 % of the fields (e.g. a mis-focused image)
    hit = rng.random(len(bad)) < 0.03
    bad.loc[hit, "puncta_density_per_100um2"] *= np.exp(rng.choice([-1.0, 1.0], hit.sum()))
    worse = diagnostics_summary(fit_synapse_lmm(bad)).iloc[0]
    assert worse["residual_excess_kurtosis"] > 5 and worse["share_abs_standardised_gt_3"] > 0.01
    table, effects = lmm_residuals(fit_synapse_lmm(m))
    assert table["image_id"].is_unique and len(effects) == 112
    fig = diagnostics_figure(table, effects)
    assert len(fig.axes) == 3 and len(fig.axes[0].collections[0].get_offsets()) == good["n_images"]
