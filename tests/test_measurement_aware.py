"""Measurement-aware synapse model (quality covariates) and the fixed-sequence primary contrast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.errors import InputError
from analysis.io import load_analysis_plan
from analysis.stats.models import (
    false_detection_corrected,
    fit_synapse_lmm,
    gatekeeping,
    quality_covariates,
    session_contrasts,
    session_means,
)
from analysis.sim.measurements import simulate_measurements

HEAD = "WT diazepam 5 mg/kg x 7 d"


def test_gatekeeping_by_hand() -> None:
    adj, how = gatekeeping(np.array([0.04, 0.01, 0.03, 0.5]), np.array([True, False, False, False]))
    # primary at its own p; others max(p_primary, Holm of the other three: 0.03, 0.06, 0.5)
    assert np.allclose(adj, [0.04, 0.04, 0.06, 0.5])
    assert how.startswith("fixed sequence") and "other 3" in how
    # primary not significant: nothing else can be
    adj, _ = gatekeeping(np.array([0.2, 0.001]), np.array([True, False]))
    assert np.allclose(adj, [0.2, 0.2])
    adj, how = gatekeeping(np.array([0.01, 0.02]), np.array([False, False]))
    assert np.allclose(adj, [0.02, 0.02]) and how.startswith("Holm")
    with pytest.raises(ValueError):
        gatekeeping(np.array([0.01, 0.02]), np.array([True, True]))


def test_gatekeeping_keeps_the_familywise_error_rate() -> None:
    """Under the global null, P(any adjusted p < 0.05) <= 0.05 (binomial 99 % bound)."""
    rng = np.random.default_rng(3)
    n, k = 20_000, 10
    p = rng.uniform(size=(n, k))
    primary = np.zeros(k, bool)
    primary[0] = True
    any_rejected = np.array([(gatekeeping(row, primary)[0] < 0.05).any() for row in p])
    rate = any_rejected.mean()
    # the fixed sequence spends the whole 5 % on the primary: the rate is the primary's alone
    assert rate == pytest.approx(0.05, abs=3 * np.sqrt(0.05 * 0.95 / n))
    assert np.array_equal(any_rejected, p[:, 0] < 0.05)


def _with_quality_error(seed: int) -> pd.DataFrame:
    """A default-design table whose densities carry an SNR-dependent detection loss."""
    m = simulate_measurements("default", seed)
    rng = np.random.default_rng(seed)
    snr = np.exp(rng.normal(np.log(7.0), 0.5, len(m)))  # measured SNR, independent of treatment
    loss = 0.25 * np.log(snr / 7.0) - 0.1 * np.log(snr / 7.0) ** 2  # log-scale detection loss
    m["measured_snr"] = snr
    m["puncta_density_per_100um2"] *= np.exp(loss)
    return m


def test_quality_covariates_remove_the_snr_error() -> None:
    """With an SNR-dependent error, the adjusted model recovers the contrast with a smaller SE."""
    m = _with_quality_error(7)
    plain = session_contrasts(fit_synapse_lmm(m))
    table, names = quality_covariates(m)
    assert names == ["log_measured_snr", "log_measured_snr_sq"]
    fit = fit_synapse_lmm(table, covariates=names)
    adjusted = session_contrasts(fit)
    est = fit.covariates.set_index("covariate")["estimate"]
    assert est["log_measured_snr"] == pytest.approx(0.25, abs=0.03)
    assert est["log_measured_snr_sq"] == pytest.approx(-0.1, abs=0.04)

    def head(c: pd.DataFrame) -> pd.Series:
        return c[(c.group == HEAD) & c.planned].iloc[0]

    width = lambda r: r.pct_vs_vehicle_ci_high - r.pct_vs_vehicle_ci_low  # noqa: E731
    assert width(head(adjusted)) < 0.8 * width(head(plain))
    # the same contrast as without the artificial error (perfect counts), within its CI
    truth_fit = session_contrasts(fit_synapse_lmm(simulate_measurements("default", 7)))
    assert head(adjusted).pct_vs_vehicle == pytest.approx(head(truth_fit).pct_vs_vehicle, abs=2.0)


def _with_false_detections(seed: int, noisy: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A default-design table plus false detections whose density depends on SNR only."""
    m = simulate_measurements("default", seed)
    rng = np.random.default_rng(seed)
    snr = np.exp(rng.normal(np.log(7.0), 0.5, len(m)))
    x = np.log(snr)
    false_density = 2.0 - 0.8 * (x - np.log(7.0)) + 0.3 * (x - x.mean()) ** 2  # quadratic in log SNR
    measured = m["puncta_density_per_100um2"] + false_density
    precision = 1 - false_density / measured
    if noisy:  # a per-image estimate from a few dozen spikes
        precision = np.clip(precision + rng.normal(0, 0.03, len(m)), 0, 1)
    return m, m.assign(puncta_density_per_100um2=measured, est_precision=precision, measured_snr=snr)


def test_false_detection_correction_recovers_the_density() -> None:
    """False-detection density quadratic in log SNR and exact precisions: the true density back."""
    truth, m = _with_false_detections(3, noisy=False)
    out, applied = false_detection_corrected(m)
    assert applied
    assert np.allclose(out["puncta_density_per_100um2"], truth["puncta_density_per_100um2"], rtol=1e-9)
    assert np.allclose(out["false_detections_per_100um2"],
                       m["puncta_density_per_100um2"] - truth["puncta_density_per_100um2"])
    assert m["puncta_density_per_100um2"].gt(truth["puncta_density_per_100um2"]).all()  # input untouched


def test_false_detection_correction_removes_the_shrinkage() -> None:
    """False detections shrink the headline towards 0; the corrected model recovers the
    perfect-count estimate, although each image's precision is noisy."""
    truth, m = _with_false_detections(5, noisy=True)

    def head(table: pd.DataFrame) -> float:
        t, names = quality_covariates(table)
        c = session_contrasts(fit_synapse_lmm(t, covariates=names))
        return float(c[(c.group == HEAD) & c.planned]["pct_vs_vehicle"].iloc[0])

    perfect = head(truth.assign(measured_snr=m["measured_snr"]))
    shrunk = head(m)
    corrected = head(false_detection_corrected(m)[0])
    assert perfect < 0 and abs(shrunk) < abs(perfect) - 0.3  # ~5 % false: the loss looks smaller
    assert abs(corrected - perfect) < 0.3 * abs(shrunk - perfect)


def test_false_detection_correction_not_applied() -> None:
    _, m = _with_false_detections(3, noisy=False)
    for bad in (m.drop(columns="est_precision"), m.assign(measured_snr=np.nan),
                m.assign(est_precision=m["est_precision"].where(m.index != 4)), m.head(9),
                m.assign(est_precision=0.0)):  # nothing left of a density
        out, applied = false_detection_corrected(bad)
        assert not applied and out is bad
    # rows without a density (e.g. the spine images of the same sheet) are left out, not a reason to skip
    extra = m.head(3).assign(puncta_density_per_100um2=np.nan, est_precision=np.nan, measured_snr=np.nan)
    out, applied = false_detection_corrected(pd.concat([m, extra], ignore_index=True))
    assert applied and out["puncta_density_per_100um2"].isna().sum() == 3
    assert np.allclose(out["puncta_density_per_100um2"].head(len(m)), false_detection_corrected(m)[0]["puncta_density_per_100um2"])


def test_fit_study_states_its_quality_adjustment(tmp_path: Path) -> None:
    """fit_study subtracts the false detections and adds the SNR covariates, and says so."""
    from analysis.stats.models import fit_study

    truth, m = _with_false_detections(3, noisy=False)
    m["microglia_channel"] = pd.NA
    m.to_parquet(tmp_path / "measurements.parquet")
    written = fit_study(str(tmp_path / "measurements.parquet"), str(tmp_path / "adjusted"))
    var = pd.read_csv(written["variance"])
    assert var["quality_adjustment"].iloc[0] == ("false detections expected at each image's measured SNR subtracted "
                                                 "from its density; log measured SNR and its square as covariates")
    means = pd.read_csv(written["session_means"])  # the corrected densities, i.e. the true ones here
    value = "puncta_density_per_100um2"
    assert np.allclose(means[value], session_means(truth)[value].to_numpy(), rtol=1e-9)
    # (adjust_for_quality=False on a table with quality columns: test_any_study.py, another compound)


def test_quality_covariates_absent_or_unusable() -> None:
    m = simulate_measurements("small", 0)
    assert quality_covariates(m)[1] == []
    assert quality_covariates(m.assign(measured_snr=np.nan))[1] == []
    with pytest.raises(KeyError, match="not a column"):
        fit_synapse_lmm(m, covariates=["nope"])


def test_primary_contrast_in_the_contrast_table() -> None:
    fit = fit_synapse_lmm(simulate_measurements("default", 2))
    c = session_contrasts(fit, primary=HEAD)
    planned = c[c.planned]
    assert planned["primary"].sum() == 1 and planned.loc[planned.primary, "group"].item() == HEAD
    p0 = planned.loc[planned.primary, "p_vs_vehicle"].item()
    assert planned.loc[planned.primary, "p_vs_vehicle_adjusted"].item() == p0
    assert (planned["p_vs_vehicle_adjusted"] >= p0).all()
    plain = session_contrasts(fit)
    assert np.allclose(plain.loc[plain.planned, "p_vs_vehicle_adjusted"], plain.loc[plain.planned, "p_vs_vehicle_holm"])


def test_analysis_plan(tmp_path: Path) -> None:
    assert load_analysis_plan(tmp_path) == {}
    (tmp_path / "analysis_plan.json").write_text(json.dumps({"primary_contrast": HEAD, "adjust_for_quality": False}))
    assert load_analysis_plan(tmp_path) == {"primary_contrast": HEAD, "adjust_for_quality": False}
    (tmp_path / "analysis_plan.json").write_text('{"primary": 1')
    with pytest.raises(InputError, match="analysis plan"):
        load_analysis_plan(tmp_path)
    (tmp_path / "analysis_plan.json").write_text(json.dumps({"primary": HEAD, "adjust_for_quality": "yes"}))
    with pytest.raises(InputError) as err:
        load_analysis_plan(tmp_path)
    assert "unknown key 'primary'" in str(err.value) and "adjust_for_quality must be a bool" in str(err.value)


def test_sex_differences_find_an_injected_interaction() -> None:
    """A 15 % extra loss in treated females at the end of dosing is found; other contrasts are not touched."""
    from analysis.stats.models import sex_differences

    m = simulate_measurements("default", 4)
    hit = (m["sex"] == "F") & (m["dose_mg_kg"] == 5.0) & (m["compound"] == "diazepam") & (m["genotype"] == "WT") \
        & (m["treatment_days"] == 7) & (m["day"] == 7)
    base = sex_differences(m).set_index("group")
    m.loc[hit, "puncta_density_per_100um2"] *= 0.85
    s = sex_differences(m).set_index("group")
    assert s.loc[HEAD, "ratio_F_over_M"] == pytest.approx(base.loc[HEAD, "ratio_F_over_M"] * 0.85, rel=0.02)
    assert s.loc[HEAD, "ratio_ci_low"] < 0.85 * base.loc[HEAD, "ratio_F_over_M"] < s.loc[HEAD, "ratio_ci_high"]
    assert s.loc[HEAD, "p_sex_difference"] < 0.01
    others = s.index != HEAD
    assert np.allclose(s.loc[others, "ratio_F_over_M"], base.loc[others, "ratio_F_over_M"], rtol=1e-6)
    with pytest.raises(ValueError, match="two sexes"):
        sex_differences(m.assign(sex="F"))


def test_fit_study_called_directly_normalises_group_names(tmp_path: Path) -> None:
    """`fit_study` from Python takes ``Vehicle`` like the command line does (was a KeyError)."""
    from analysis.stats.models import fit_study

    m = simulate_measurements("small", 2)
    m["microglia_channel"] = pd.NA
    m.loc[m["compound"] == "vehicle", "compound"] = "Vehicle"
    path = tmp_path / "measurements.parquet"
    m.to_parquet(path)
    written = fit_study(str(path), str(tmp_path))
    c = pd.read_csv(written["contrasts"])
    assert c["planned"].sum() == 3 and "vehicle" in set(c["compound"])
    m.loc[m["compound"] == "Vehicle", "compound"] = "diazepam"
    m.loc[m["dose_mg_kg"] == 0, "dose_mg_kg"] = 1.0
    m.to_parquet(path)
    with pytest.raises(InputError, match="vehicle"):
        fit_study(str(path), str(tmp_path))
