"""Longitudinal synapse statistics against the simulated truth (animal = unit of replication)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.stats import _holm, fit_synapse_lmm, session_contrasts, session_means, simulate_measurements


@pytest.fixture(scope="module")
def contrasts() -> pd.DataFrame:
    return session_contrasts(fit_synapse_lmm(simulate_measurements("default", 0)))


def row(c: pd.DataFrame, group: str, day: int) -> pd.Series:
    return c[(c.group == group) & (c.day == day)].iloc[0]


def test_sedative_arm_ci_contains_truth_and_n_is_animals(contrasts: pd.DataFrame) -> None:
    r = row(contrasts, "WT diazepam 5 mg/kg x 7 d", 7)
    assert r.pct_vs_vehicle_ci_low < -13.0 < r.pct_vs_vehicle_ci_high
    assert r.pct_vs_vehicle_ci_high < 0  # detected with 8 animals per group
    assert r.n_animals == 8 and r.n_animals_vehicle == 8


def test_tspo_knockout_ci_contains_zero(contrasts: pd.DataFrame) -> None:
    r = row(contrasts, "TSPO_KO diazepam 5 mg/kg x 7 d", 7)
    assert r.pct_vs_vehicle_ci_low < 0 < r.pct_vs_vehicle_ci_high


def test_planned_family_and_holm(contrasts: pd.DataFrame) -> None:
    planned = contrasts[contrasts.planned]
    assert set(planned.day) == set(planned.treatment_days)
    assert planned.p_vs_vehicle_holm.notna().all() and contrasts[~contrasts.planned].p_vs_vehicle_holm.isna().all()
    np.testing.assert_allclose(_holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])


def test_session_means_count_fields() -> None:
    m = simulate_measurements("small", 0)
    s = session_means(m)
    assert (s.n_fields == 1).all() and len(s) == len(m)
    m2 = simulate_measurements("default", 0)
    s2 = session_means(m2)
    assert (s2.n_fields == 2).all() and s2.animal_id.nunique() == 112


@pytest.mark.slow
def test_null_error_rate_and_coverage_small_calibration() -> None:
    """A small version of the calibration (the full one: >= 200 studies, benchmarks)."""
    false_pos, covered, n = 0, 0, 12
    for seed in range(n):
        null = session_contrasts(fit_synapse_lmm(simulate_measurements("null", 100 + seed)))
        false_pos += int(row(null, "WT diazepam 5 mg/kg x 7 d", 7).p_vs_vehicle < 0.05)
        eff = session_contrasts(fit_synapse_lmm(simulate_measurements("default", 200 + seed)))
        r = row(eff, "WT diazepam 5 mg/kg x 7 d", 7)
        covered += int(r.pct_vs_vehicle_ci_low < -13.0 < r.pct_vs_vehicle_ci_high)
    # honest, wide tolerances for 12 studies: P(>= 3 false positives | alpha 0.05) = 2 %,
    # P(<= 8 covered | 95 % coverage) = 0.2 %
    assert false_pos <= 2
    assert covered >= 9


def test_dose_response_trend_and_vehicle() -> None:
    from analysis.stats import animal_changes, dose_responses, fit_dose_response

    m = simulate_measurements("default", 0)
    ch = animal_changes(m)
    assert ch.animal_id.is_unique  # one value per animal
    sub = ch[(ch.genotype == "WT") & (ch.treatment_days == 7) & ch.compound.isin(["vehicle", "diazepam"])]
    t = fit_dose_response(sub, n_boot=200).set_index("parameter")
    assert t.loc["trend_slope", "estimate"] < 0 and t.loc["trend_slope", "p_value"] < 0.05
    assert t.loc["e0_pct", "ci_low"] < 0 < t.loc["e0_pct", "ci_high"]  # vehicle: no change
    assert t.loc["emax_pct", "estimate"] < -10  # true maximal loss at 7 days: 16 % x 0.81
    assert (t.n_animals == 40).all()
    all_dr = dose_responses(m)
    assert set(all_dr.treatment_days) == {7}  # only the 7-day arm has >= 3 doses


def test_mechanism_and_recovery_tables() -> None:
    from analysis.stats import mechanism_contrasts, recovery

    fit = fit_synapse_lmm(simulate_measurements("default", 0))
    mech = mechanism_contrasts(fit).set_index("contrast")
    inter = mech.loc[[c for c in mech.index if "interaction" in c][0]]
    # truth: no effect in knockouts, -13 % in wild type -> ratio 1 / 0.87 = +14.9 %
    assert inter.ci_low < 14.9 < inter.ci_high and inter.ci_low > 0
    comp = mech.loc[[c for c in mech.index if "compound" in c][0]]
    assert comp.ci_low < 0 < comp.ci_high  # XBD173 10 mg/kg acts like diazepam 5 mg/kg
    rec = recovery(session_contrasts(fit)).set_index("group")
    r = rec.loc["WT diazepam 5 mg/kg x 7 d"]
    assert r.n_animals == 4 and r.pct_at_end_of_dosing < -5
    assert r.first_recovered_day_after_last_dose in (7, 21, 35, 56)


def test_microglia_endpoints_against_truth() -> None:
    from analysis.stats import fit_count_endpoint, fit_morphology_endpoint, simulate_terminal_measurements

    img, cells = simulate_terminal_measurements("default", 0)
    cc = cells.merge(img, on="image_id")
    eng, diag = fit_count_endpoint(cc, "engulfed_puncta")
    assert diag["family"] == "quasi-Poisson" and diag["n_animals"] == 112
    assert 1.0 < diag["dispersion"] < 3.0  # animals differ in activation: per-animal totals over-dispersed
    e = eng[eng.planned].set_index("group")
    # truth at the end of 7 days of 5 mg/kg: x (1 + 2 x 0.8125) = 2.6 engulfed puncta
    assert e.loc["WT diazepam 5 mg/kg x 7 d", "ci_low"] < 2.625 < e.loc["WT diazepam 5 mg/kg x 7 d", "ci_high"]
    assert e.loc["TSPO_KO diazepam 5 mg/kg x 7 d", "ci_low"] < 1 < e.loc["TSPO_KO diazepam 5 mg/kg x 7 d", "ci_high"]
    assert (e.n_animals == 4).all()  # animals, not cells or fields
    dens, _ = fit_count_endpoint(img, "microglia_count", exposure="field_area_mm2")
    assert {"ratio_vs_vehicle", "ci_low", "ci_high", "p_holm"} <= set(dens.columns)
    morph = fit_morphology_endpoint(cc, "skeleton_length_um")
    m = morph[morph.planned].set_index("group")
    # truth: process length x (1 - 0.30 x 0.8125) = 0.756
    assert m.loc["WT diazepam 5 mg/kg x 7 d", "ci_low"] < 0.756 < m.loc["WT diazepam 5 mg/kg x 7 d", "ci_high"]


def _counts(rng: np.random.Generator, animal_sd: float) -> pd.DataFrame:
    """Ten cells per animal, 8 animals per arm, rate 3 per cell (x an animal factor)."""
    rows = []
    for compound, dose in (("vehicle", 0.0), ("diazepam", 5.0)):
        for a in range(8):
            rate = 3.0 * np.exp(rng.normal(0, animal_sd))
            rows += [{"animal_id": f"{compound}{a}", "genotype": "WT", "compound": compound, "dose_mg_kg": dose,
                      "treatment_days": 7, "day": 7, "n": int(k)} for k in rng.poisson(rate, 10)]
    return pd.DataFrame(rows)


def test_count_endpoint_checks_overdispersion_and_stays_calibrated() -> None:
    from analysis.stats import fit_count_endpoint

    rng = np.random.default_rng(11)
    disp, rejections = [], 0
    for _ in range(40):
        c, d = fit_count_endpoint(_counts(rng, 0.0), "n")
        disp.append(d["dispersion"])
        rejections += bool(c["p_value"].iloc[0] < 0.05)
    assert 0.8 < np.mean(disp) < 1.2  # pure Poisson: dispersion ~1
    c, d = fit_count_endpoint(_counts(rng, 0.5), "n")
    assert d["dispersion"] > 2 and d["p_overdispersion"] < 0.01 and c["n_animals"].iloc[0] == 8
    # no effect in either set: P(>= 7 of 40 rejections | alpha 0.05) = 1.4 %
    assert rejections <= 6
