"""Longitudinal synapse statistics against the simulated truth (animal = unit of replication)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.stats.models import (
    _holm,
    fit_morphology_endpoint,
    fit_synapse_lmm,
    recovery,
    session_contrasts,
    session_means,
)
from analysis.sim.measurements import simulate_measurements


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
    # one planned contrast per treated group (10 of the 14 default groups; 4 are vehicle), at its end of dosing
    treated = contrasts.loc[contrasts.compound != "vehicle", "group"].unique()
    assert len(treated) == 10 and sorted(planned.group) == sorted(treated)
    assert (planned.day == planned.treatment_days).all()
    assert planned.p_vs_vehicle_holm.notna().all() and contrasts[~contrasts.planned].p_vs_vehicle_holm.isna().all()
    np.testing.assert_allclose(_holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])


def test_session_means_count_fields() -> None:
    m = simulate_measurements("small", 0)
    s = session_means(m)
    assert (s.n_fields == 1).all() and len(s) == len(m)
    m2 = simulate_measurements("default", 0)
    s2 = session_means(m2)
    from analysis.sim.design import PRESETS

    assert (s2.n_fields == PRESETS["default"].synapse_fields).all() and s2.animal_id.nunique() == 112


@pytest.mark.slow
def test_standard_errors_match_the_spread_of_estimates_smoke() -> None:
    """Smoke test of the SEs against simulated truth; the calibration itself is ``make calibrate``.

    Type I error and coverage need >= 1000 studies to tell 0.08 from 0.05 (1000 studies: power
    0.93 at a 1 % false-alarm rate; the former 12-study version had power 0.07 and passed a
    type I error of 0.10 89 % of the time), ~1 h of CPU: ``benchmarks/calibrate_stats.py``.  Here
    2 null and 2 default studies (20 + 20 planned contrasts against their truth) check that
    ``(estimate - truth) / SE`` has a mean square near 1 (1.02 for t on 98 df; 0.74 here, the
    contrasts of one study share their vehicle and vary together: per-study means 0.30-1.27).
    An SE off by a factor 2 gives ~3 or ~0.18 and fails; an SE 30 % too small (type I ~0.17,
    mean square ~1.5) passes; it has no power against a type I error of 0.08 (SE 12 % too
    small, mean square x 1.28): that is what ``make calibrate`` is for.
    """
    from analysis.sim.validation import calibration_study

    rows = pd.concat([calibration_study("null", 300 + s) for s in range(2)]
                     + [calibration_study("default", 400 + s) for s in range(2)])
    assert rows.converged.all() and len(rows) == 40
    z2 = ((rows.log_est - rows.log_true) / rows.log_se) ** 2
    assert 0.45 < z2.mean() < 2.0, z2.mean()


def test_dose_response_trend_and_vehicle() -> None:
    from analysis.stats.models import animal_changes, dose_responses, fit_dose_response

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
    from analysis.stats.models import mechanism_contrasts, recovery

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


def _withdrawal(group: str, pct: list[float], half_width: list[float]) -> pd.DataFrame:
    """A hand-made contrasts table: end of dosing (day 7) and withdrawal days +7, +21, +35, +56."""
    since = [0, 7, 21, 35, 56]
    pct, hw = np.array(pct), np.array(half_width)
    log_est = np.log1p(pct / 100)
    return pd.DataFrame({
        "group": group, "treatment_days": 7, "day": [7 + s for s in since], "days_since_last_dose": since,
        "n_animals": [8, 4, 4, 3, 4], "df": 1e6, "pct_vs_vehicle": pct,
        "pct_vs_vehicle_ci_low": 100 * np.expm1(log_est - hw), "pct_vs_vehicle_ci_high": 100 * np.expm1(log_est + hw),
    })


def test_recovery_by_hand() -> None:
    # a: CI excludes 0 at +7, includes it at +21, excludes again at +35, includes at +56 -> 56
    # b: includes 0 from +21 on -> 21; effects exactly -0.14 exp(-t / 20) on the log scale -> tau 20
    t = np.array([0, 7, 21, 35, 56])
    exact = 100 * np.expm1(-0.14 * np.exp(-t / 20))
    table = pd.concat([
        _withdrawal("a", [-13, -10, -2, -6, -1], [0.03, 0.03, 0.03, 0.03, 0.03]),
        _withdrawal("b", list(exact), [0.03, 0.05, 0.1, 0.1, 0.1]),
    ], ignore_index=True)
    rec = recovery(table).set_index("group")
    assert rec.loc["a", "first_recovered_day_after_last_dose"] == 56
    assert rec.loc["b", "first_recovered_day_after_last_dose"] == 21
    assert rec.loc["b", "recovery_tau_days"] == pytest.approx(20.0, rel=1e-3)
    assert rec.loc["a", "n_animals"] == 3 and rec.loc["a", "pct_at_end_of_dosing"] == -13
    # never back within the CI: NaN, not the last session
    never = recovery(_withdrawal("c", [-13, -12, -11, -10, -9], [0.03] * 5)).iloc[0]
    assert np.isnan(never.first_recovered_day_after_last_dose)


def test_microglia_endpoints_against_truth() -> None:
    from analysis.stats.models import fit_count_endpoint, fit_morphology_endpoint
    from analysis.sim.measurements import simulate_terminal_measurements

    img, cells = simulate_terminal_measurements("default", 0)
    cc = cells.merge(img, on="image_id")
    eng, diag = fit_count_endpoint(cc, "engulfed_puncta")
    assert diag["n_animals"] == 112 and diag["n_observations"] == len(cc)
    assert 1.0 < diag["dispersion"] < 3.0  # animals differ in activation: per-animal totals over-dispersed
    e = eng[eng.planned].set_index("group")
    # truth at the end of 7 days of 5 mg/kg: x (1 + 2 x 0.8125) = 2.6 engulfed puncta
    assert e.loc["WT diazepam 5 mg/kg x 7 d", "ci_low"] < 2.625 < e.loc["WT diazepam 5 mg/kg x 7 d", "ci_high"]
    assert e.loc["TSPO_KO diazepam 5 mg/kg x 7 d", "ci_low"] < 1 < e.loc["TSPO_KO diazepam 5 mg/kg x 7 d", "ci_high"]
    assert (e.n_animals == 4).all()  # animals, not cells or fields
    dens, _ = fit_count_endpoint(img, "microglia_count", exposure="field_area_mm2")
    d = dens[dens.planned].set_index("group")
    # truth: microglia density x (1 + 0.35 x 0.8125) = 1.284 (readout_multipliers)
    from analysis.sim.truth import activation, calibrated_model, readout_multipliers

    model = calibrated_model()
    a = float(activation(model, genotype="WT", compound="diazepam", dose_mg_kg=5.0, treatment_days=7, day=7))
    true_density = readout_multipliers(model, a)["microglia_density"]
    assert 1.1 < true_density < 1.5
    assert d.loc["WT diazepam 5 mg/kg x 7 d", "ci_low"] < true_density < d.loc["WT diazepam 5 mg/kg x 7 d", "ci_high"]
    assert d.loc["TSPO_KO diazepam 5 mg/kg x 7 d", "ci_low"] < 1 < d.loc["TSPO_KO diazepam 5 mg/kg x 7 d", "ci_high"]
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


def test_count_endpoint_checks_overdispersion_and_its_se_smoke() -> None:
    """Dispersion ~1 for Poisson counts, large for over-dispersed ones; SE smoke test.

    The type I error of the quasi-Poisson contrast is calibrated in ``make calibrate`` (1000
    studies per endpoint: power 0.93 against 0.08); the former check here (<= 6 rejections
    of 40) had power 0.04 against 0.08 and passed 0.10 90 % of the time.  What stays is a gross
    check: over 40 null data sets of 16 animals (over-dispersed, SD 0.3 between animals) the
    mean of t^2 is ~1.17 (t on 14 df); an SE off by 2x gives ~4.7 or ~0.3.
    """
    from analysis.stats.models import fit_count_endpoint

    rng = np.random.default_rng(11)
    disp = []
    for _ in range(40):
        c, d = fit_count_endpoint(_counts(rng, 0.0), "n")
        disp.append(d["dispersion"])
    assert 0.8 < np.mean(disp) < 1.2  # pure Poisson: dispersion ~1
    c, d = fit_count_endpoint(_counts(rng, 0.5), "n")
    assert d["dispersion"] > 2 and d["p_overdispersion"] < 0.01 and c["n_animals"].iloc[0] == 8
    t2 = []
    for _ in range(40):
        c, d = fit_count_endpoint(_counts(rng, 0.3), "n")
        r = c.iloc[0]
        se = np.log(r.ci_high / r.ci_low) / (2 * sps.t.ppf(0.975, d["df_resid"]))
        t2.append((np.log(r.ratio_vs_vehicle) / se) ** 2)
    assert 0.5 < np.mean(t2) < 2.2, np.mean(t2)


# --- zeros: a log model cannot take them; never dropped silently ------------------------------


def _with_zeros() -> tuple[pd.DataFrame, pd.Index]:
    m = simulate_measurements("small", 0)
    zero = m.index[[1, 4, 5]]
    m.loc[zero, "puncta_density_per_100um2"] = 0.0
    return m, zero


def test_zero_density_fields_are_counted_warned_and_excluded(caplog: pytest.LogCaptureFixture) -> None:
    m, zero = _with_zeros()
    with caplog.at_level(logging.WARNING, logger="analysis.stats"):
        fit = fit_synapse_lmm(m)
    assert fit.n_zero_excluded == 3
    assert any("3 field(s) with zero puncta_density_per_100um2 excluded" in w for w in fit.warnings)
    assert "3 field(s) with zero" in caplog.text
    # per cell, in the coefficients table that fit writes
    cells = m.loc[zero].apply(lambda r: (r.genotype, r.compound, r.dose_mg_kg, r.treatment_days, r.day), axis=1)
    assert fit.coefficients["n_zero_fields_excluded"].sum() == 3
    assert (fit.coefficients["n_zero_fields_excluded"] > 0).sum() == cells.nunique()
    # exactly the fit without those rows, and the contrasts say which estimates lost fields
    ref = fit_synapse_lmm(m.drop(index=zero))
    np.testing.assert_allclose(fit.coefficients["estimate"], ref.coefficients["estimate"], rtol=1e-10)
    assert ref.n_zero_excluded == 0 and (ref.coefficients["n_zero_fields_excluded"] == 0).all()
    c = session_contrasts(fit)
    assert c["n_zero_fields_excluded"].sum() >= 3 and (c["n_zero_fields_excluded"] >= 0).all()


def test_zero_density_offset_policy_keeps_every_field() -> None:
    m, zero = _with_zeros()
    fit = fit_synapse_lmm(m, zeros="offset")
    smallest = m.loc[m.puncta_density_per_100um2 > 0, "puncta_density_per_100um2"].min()
    assert fit.zero_offset == pytest.approx(smallest / 2) and fit.n_zero_excluded == 0
    assert int(fit.result.nobs) == len(m)
    assert any("modelled as log(x +" in w for w in fit.warnings)
    with pytest.raises(ValueError, match="zeros="):
        fit_synapse_lmm(m, zeros="drop")
    with pytest.raises(ValueError, match="negative"):
        fit_synapse_lmm(m.assign(puncta_density_per_100um2=-m.puncta_density_per_100um2))


def test_animal_changes_leave_zero_fields_out(caplog: pytest.LogCaptureFixture) -> None:
    from analysis.stats.models import animal_changes

    m = simulate_measurements("default", 0)
    a1, a2 = m.animal_id.unique()[:2]
    base1 = (m.animal_id == a1) & (m.day == m.day.min())
    m2 = m.copy()
    m2.loc[base1[base1].index[:1], "puncta_density_per_100um2"] = 0.0  # one of the baseline fields
    base2 = (m.animal_id == a2) & (m.day == m.day.min())
    m2.loc[base2, "puncta_density_per_100um2"] = 0.0  # the whole baseline session
    with caplog.at_level(logging.WARNING, logger="analysis.stats"):
        ch = animal_changes(m2).set_index("animal_id")
    assert f"{1 + int(base2.sum())} field(s) with zero" in caplog.text and f"animal(s) {a2}" in caplog.text
    assert a2 not in ch.index and np.isfinite(ch.log_ratio).all()  # not -inf, not a later session as baseline
    # animal 1: its baseline is the one remaining field
    keep = m[(m.animal_id == a1) & ~m.index.isin(base1[base1].index[:1])]
    end = keep[keep.day == keep.treatment_days].puncta_density_per_100um2.mean()
    start = keep[keep.day == keep.day.min()].puncta_density_per_100um2.mean()
    assert ch.loc[a1, "log_ratio"] == pytest.approx(np.log(end / start))


def test_morphology_zeros_stay_in_with_an_offset(caplog: pytest.LogCaptureFixture) -> None:
    from analysis.sim.measurements import simulate_terminal_measurements

    img, cells = simulate_terminal_measurements("default", 0)
    cc = cells.merge(img, on="image_id")
    plain = fit_morphology_endpoint(cc, "skeleton_length_um")
    assert (plain.n_zero_cells == 0).all() and (plain.zero_offset == 0).all()
    cc.loc[cc.index[:5], "skeleton_length_um"] = 0.0  # five cells without a skeleton
    with caplog.at_level(logging.WARNING, logger="analysis.stats"):
        with_zeros = fit_morphology_endpoint(cc, "skeleton_length_um")
    c = cc.loc[cc.skeleton_length_um > 0, "skeleton_length_um"].min() / 2
    assert (with_zeros.n_zero_cells == 5).all() and with_zeros.zero_offset.iloc[0] == pytest.approx(c)
    assert "5 cell(s) with value 0" in caplog.text
    # the zeros pull their animals' means down (they are not dropped): the ratio changes
    assert not np.allclose(with_zeros.ratio_vs_vehicle, plain.ratio_vs_vehicle)
    excluded = fit_morphology_endpoint(cc, "skeleton_length_um", zeros="exclude")
    assert (excluded.n_zero_cells == 5).all() and (excluded.zero_offset == 0).all()


def test_fit_warnings_keep_the_models_and_not_a_collected_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ResourceWarning raised while the model is fitted (the garbage collector finalising an
    unclosed event loop of a notebook client once landed in synapse_lmm_diagnostics.csv and made
    the report's tables differ between two runs) is not a warning of the model; a warning the
    fit itself raises is kept, in the mixed model and in the trend model."""
    import warnings

    from statsmodels.regression.mixed_linear_model import MixedLM

    from analysis.stats.trend import fit_synapse_trend

    real_fit = MixedLM.fit

    def noisy_fit(self, *args, **kwargs):
        warnings.warn("unclosed event loop <_UnixSelectorEventLoop>", ResourceWarning)
        warnings.warn("a warning of the fit itself", UserWarning)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(MixedLM, "fit", noisy_fit)
    m = simulate_measurements("small", 0)
    fit = fit_synapse_lmm(m)
    assert "a warning of the fit itself" in fit.warnings
    assert not any("unclosed" in w for w in fit.warnings)
    trend = fit_synapse_trend(simulate_measurements("default", 0))
    assert trend["warnings"].str.contains("a warning of the fit itself").all()
    assert not trend["warnings"].str.contains("unclosed").any()


def _positions_table(seed: int = 3, sd_position: float = 0.3) -> pd.DataFrame:
    """Spine-arm-like table: 2 groups x 6 animals x 2 positions x 3 sessions, the same positions
    every session; log density = cell mean + animal + animal x session + position + residual."""
    rng = np.random.default_rng(seed)
    rows = []
    for compound, dose, drop in (("vehicle", 0.0, 0.0), ("diazepam", 5.0, np.log(0.87))):
        for a in range(6):
            animal = f"{compound[:3]}{a}"
            u_a = rng.normal(0, 0.1)
            u_s = {d: rng.normal(0, 0.03) for d in (-3, 7, 63)}
            for f in (1, 2):
                u_p = rng.normal(0, sd_position)
                for d in (-3, 7, 63):
                    mu = np.log(0.8) + (drop if d == 7 else 0.0)
                    rows.append({"animal_id": animal, "genotype": "WT", "compound": compound, "dose_mg_kg": dose,
                                 "treatment_days": 7, "day": d, "field": f,
                                 "density": float(np.exp(mu + u_a + u_s[d] + u_p + rng.normal(0, 0.05)))})
    return pd.DataFrame(rows)


def test_position_effect_measures_changes_within_each_position() -> None:
    """Positions imaged at every session (two-photon spine arm): with the position effect the
    change versus vehicle has the same estimate (balanced design) and a much narrower interval
    that still covers the truth; the variance between positions (animal + position) is recovered
    and the residual is left small."""
    m = _positions_table()
    plain = session_contrasts(fit_synapse_lmm(m, "density"))
    fit = fit_synapse_lmm(m, "density", position="field")
    within = session_contrasts(fit)
    row = lambda c: c[(c["group"] == "WT diazepam 5 mg/kg x 7 d") & (c["day"] == 7)].iloc[0]  # noqa: E731
    a, b = row(plain), row(within)
    assert b["pct_vs_vehicle"] == pytest.approx(a["pct_vs_vehicle"], abs=1e-6)
    width = lambda r: r["pct_vs_vehicle_ci_high"] - r["pct_vs_vehicle_ci_low"]  # noqa: E731
    assert width(b) < 0.5 * width(a)
    assert b["pct_vs_vehicle_ci_low"] < -13.0 < b["pct_vs_vehicle_ci_high"]
    vc = fit.variance_components.set_index("component")["variance"]
    # between positions: animal + position (0.1^2 + 0.3^2 simulated; two positions per animal
    # split it between the two poorly, as lme4 does: tests/test_stats_lme4.py)
    assert 0.03 < vc["animal"] + vc["position (same at every session)"] < 0.3
    assert vc["residual (field)"] < 0.02


def test_position_without_repeated_sessions_is_noted_and_ignored() -> None:
    m = _positions_table()
    m["field"] = m["field"].astype(str) + "_" + m["day"].astype(str)  # a new position every session
    fit = fit_synapse_lmm(m, "density", position="field")
    assert "position (same at every session)" not in set(fit.variance_components["component"])
    assert any("no field imaged at more than one session" in w for w in fit.warnings)
    plain = fit_synapse_lmm(m, "density")
    np.testing.assert_allclose(fit.coefficients["se"], plain.coefficients["se"], rtol=1e-6)
    with pytest.raises(KeyError, match="position column 'site'"):
        fit_synapse_lmm(m, "density", position="site")


def test_one_position_per_animal_is_the_animal_effect() -> None:
    """With one imaged position per animal the position effect would duplicate the animal's
    (a singular model): the fit is the model without it."""
    m = _positions_table()
    m = m[m["field"] == 1]
    fit = fit_synapse_lmm(m, "density", position="field")
    plain = fit_synapse_lmm(m, "density")
    assert "position (same at every session)" not in set(fit.variance_components["component"])
    np.testing.assert_allclose(fit.coefficients["se"], plain.coefficients["se"], rtol=1e-6)


def test_snr_adjusted_spine_model_removes_imaging_that_changed_between_sessions() -> None:
    """Spine-arm table whose treated animals were imaged at day 7 with half the SNR of the other
    sessions, the detector counting density x SNR^0.25: the unadjusted model reads the imaging
    as spine loss; adjusted for log measured SNR it recovers the effect the true densities give
    (truth -13 %) and the slope 0.25,
    and states how much the SNR varied within positions (computed here by hand)."""
    from analysis.stats.models import snr_adjusted_spine_contrasts

    m = _positions_table(seed=5)
    rng = np.random.default_rng(11)
    snr = np.exp(rng.normal(np.log(10.0), 0.3, len(m)))
    snr[((m["compound"] == "diazepam") & (m["day"] == 7)).to_numpy()] *= 0.5
    m = m.assign(measured_snr=snr, spine_density_per_um=m["density"] * snr ** 0.25)
    primary = "WT diazepam 5 mg/kg x 7 d"
    row = lambda c: c[(c["group"] == primary) & (c["day"] == 7)].iloc[0]  # noqa: E731
    plain = row(session_contrasts(fit_synapse_lmm(m, "spine_density_per_um", position="field"), primary=primary))
    adjusted, cov = snr_adjusted_spine_contrasts(m, primary=primary, position="field")
    a = row(adjusted)
    truth = -13.0
    assert plain["pct_vs_vehicle_ci_high"] < truth  # the halved SNR read as extra loss (~ -27 %)
    assert a["pct_vs_vehicle_ci_low"] < truth < a["pct_vs_vehicle_ci_high"]
    # against the same model on the true densities of this sample (its realised effect)
    true = row(session_contrasts(fit_synapse_lmm(m, "density", position="field"), primary=primary))
    assert abs(a["pct_vs_vehicle"] - true["pct_vs_vehicle"]) < 2.0
    assert cov["covariate"].tolist() == ["log_measured_snr"] and bool(a["converged"])
    assert abs(a["snr_slope"] - 0.25) < 3 * a["snr_slope_se"] and a["snr_slope_se"] < 0.05
    logs = np.log(m["measured_snr"])
    dev = logs - logs.groupby([m["animal_id"], m["field"]]).transform("mean")
    assert a["within_position_sd_log_snr"] == pytest.approx(float(dev.std(ddof=1)))
    # no measured SNR: nothing to adjust
    empty, none = snr_adjusted_spine_contrasts(m.drop(columns="measured_snr"), primary=primary, position="field")
    assert empty.empty and none is None


def _turnover_tracks(seed: int, slope: float, treated_snr_day7: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tracks and image rows of 2 groups x 8 animals x 2 positions x 3 sessions (days -3, 7, 63):
    each position follows 150 spines; the true fraction lost in the interval to day 7 is 0.10 in
    vehicle and 0.18 in treated animals (0.10 in both to day 63), gained 0.10 everywhere; the
    detector adds ``slope`` x (log SNR before - log SNR after) to the apparent loss and the same
    times (after - before) to the apparent gain.  The treated animals' day-7 sessions are imaged
    with their SNR times ``treated_snr_day7``."""
    rng = np.random.default_rng(seed)
    tracks, images = [], []
    for compound, dose, extra in (("vehicle", 0.0, 0.0), ("diazepam", 5.0, 0.08)):
        for a in range(8):
            animal = f"{compound[:3]}{a}"
            for f in (1, 2):
                log_snr = rng.normal(np.log(8.0), 0.15, 3)
                if compound == "diazepam":
                    log_snr[1] += np.log(treated_snr_day7)
                for s, d in enumerate((-3, 7, 63)):
                    images.append({"image_id": f"{animal}_{f}_{d}", "animal_id": animal, "field": f, "day": d,
                                   "measured_snr": float(np.exp(log_snr[s]))})
                    base = {"animal_id": animal, "field": f, "genotype": "WT", "compound": compound,
                            "dose_mg_kg": dose, "treatment_days": 7, "session": s, "day": d,
                            "image_id": f"{animal}_{f}_{d}", "in_common_field": True}
                    if s == 0:
                        tracks += [base | {"status": "stable"}] * 150
                        continue
                    change = log_snr[s] - log_snr[s - 1]
                    p_lost = 0.10 + (extra if d == 7 else 0.0) - slope * change
                    p_gained = 0.10 + slope * change
                    n_lost, n_gained = rng.binomial(150, np.clip(p_lost, 0, 1)), rng.binomial(150, np.clip(p_gained, 0, 1))
                    tracks += ([base | {"status": "lost"}] * n_lost + [base | {"status": "stable"}] * (150 - n_lost)
                               + [base | {"status": "gained"}] * n_gained)
    return pd.DataFrame(tracks), pd.DataFrame(images)


def test_snr_adjusted_turnover_removes_imaging_that_changed_between_sessions() -> None:
    """Treated animals imaged at day 7 with half the SNR: the detector misses spines there, so
    Welch's t reads extra loss to day 7 and extra gain to day 63.  Adjusted for the change in
    log measured SNR, the loss difference covers the truth (+8 points) and the gain difference
    0, the slopes come back (-/+ 20 points per unit log SNR), and the fit equals statsmodels' OLS
    of the same formula (reference implementation)."""
    import statsmodels.formula.api as smf

    from analysis.stats.turnover import interval_snr_change, snr_adjusted_turnover, spine_turnover, versus_vehicle

    tracks, images = _turnover_tracks(seed=4, slope=0.20, treated_snr_day7=0.5)
    per = spine_turnover(tracks)
    welch = versus_vehicle(per, "fraction_lost", ["from_day", "day"])
    w7 = welch[(welch["day"] == 7) & welch["difference_pp"].notna()].iloc[0]
    assert w7["ci_low"] > 8.0  # the halved SNR read as extra loss (about +8 + 20 x 0.69 points)
    adj = snr_adjusted_turnover(tracks, images)
    lost7 = adj[(adj["measure"] == "fraction_lost") & (adj["day"] == 7)].iloc[0]
    gained63 = adj[(adj["measure"] == "fraction_gained") & (adj["day"] == 63)].iloc[0]
    assert lost7["ci_low"] < 8.0 < lost7["ci_high"] and abs(lost7["difference_pp"] - 8.0) < 3.0
    assert gained63["ci_low"] < 0.0 < gained63["ci_high"]
    for r, truth in ((lost7, -20.0), (gained63, 20.0)):
        assert abs(r["snr_slope_pp"] - truth) < 3 * r["snr_slope_se_pp"] and r["snr_slope_se_pp"] < 8.0
    assert int(lost7["n_animals"]) == 8 and int(lost7["n_animals_vehicle"]) == 8
    # the same model by statsmodels
    d = per.merge(interval_snr_change(tracks, images).astype({"day": int, "from_day": int}),
                  on=["animal_id", "from_day", "day"])
    d7 = d[d["day"] == 7].assign(c=lambda t: t["change_log_snr"] - t["change_log_snr"].mean())
    ref = smf.ols("fraction_lost ~ 0 + C(group) + c", data=d7).fit()
    names = {g: f"C(group)[{g}]" for g in d7["group"].unique()}
    diff = ref.params[names["WT diazepam 5 mg/kg x 7 d"]] - ref.params[names["WT vehicle x 7 d"]]
    ci = ref.t_test(f"{names['WT diazepam 5 mg/kg x 7 d']} - {names['WT vehicle x 7 d']} = 0").conf_int()[0]
    assert lost7["difference_pp"] == pytest.approx(100 * diff, rel=1e-9)
    assert [lost7["ci_low"], lost7["ci_high"]] == pytest.approx(list(100 * ci), rel=1e-9)
    assert lost7["snr_slope_pp"] == pytest.approx(100 * ref.params["c"], rel=1e-9)
    # every animal's change: the positions' changes weighted by their followed spines (by hand)
    one = tracks[(tracks["animal_id"] == "dia0") & (tracks["session"] == 1)]
    w = one[one["status"] != "gained"].groupby("field").size()
    logs = images[images["animal_id"] == "dia0"].set_index(["field", "day"])["measured_snr"].pipe(np.log)
    by_hand = sum(w[f] * (logs[(f, 7)] - logs[(f, -3)]) for f in (1, 2)) / w.sum()
    got = d[(d["animal_id"] == "dia0") & (d["day"] == 7)]["change_log_snr"].iloc[0]
    assert got == pytest.approx(by_hand, rel=1e-12)


def test_snr_adjusted_turnover_without_a_measured_snr_is_empty() -> None:
    """No measured SNR, or none for a session: no adjusted row for the intervals it touches."""
    from analysis.stats.turnover import snr_adjusted_turnover

    tracks, images = _turnover_tracks(seed=5, slope=0.0, treated_snr_day7=1.0)
    assert snr_adjusted_turnover(tracks, images.drop(columns="measured_snr")).empty
    no63 = images.assign(measured_snr=images["measured_snr"].where(images["day"] != 63))
    out = snr_adjusted_turnover(tracks, no63)
    assert set(out["day"]) == {7.0} and len(out) == 2
