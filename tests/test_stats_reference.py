"""Every contrast type of the report against R, from stored reference tables (R not needed here).

The inputs (``tests/reference/*_input.csv``, written by ``make_inputs.py``) and R's results
(``tests/reference/ref_*.csv``, written by ``make_reference.R`` with lme4/lmerTest/emmeans,
``glm(family = quasipoisson)`` and ``lm``) are committed, the way statsmodels keeps its R
results.  Estimates are compared on the log scale, where they are fitted; intervals and p values
with the degrees-of-freedom rule our code uses (R gets it passed explicitly: emmeans'
``summary(..., df = animals - groups)``); the tolerance is 1e-4 (absolute on the log scale and
on p values, relative on standard errors), 1e-3 on variance components and the LRT statistic.
Largest differences found (R 4.2.2, lme4 1.1-31, lmerTest 3.1-3, emmeans 1.8.4-1): estimates
< 1e-7, SEs < 1e-6 relative (5e-6 for the trend model), p values < 2e-6.  Before
:func:`analysis.stats.fixed_effects_covariance` the mixed-model SEs (statsmodels' joint-Hessian
``bse_fe``) were up to 0.33 % off.

R's Satterthwaite (lmerTest) and Kenward-Roger (pbkrtest) degrees of freedom are stored next to
ours: for the within-animal contrasts of the longitudinal model they are larger than ours
(animals minus groups), so our intervals are slightly wider, a deliberate, conservative choice
that :func:`test_df_rule_is_conservative_against_satterthwaite` pins down.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.sim.design import group_label
from analysis.stats.models import (
    animal_changes,
    fit_count_endpoint,
    fit_dose_response,
    fit_morphology_endpoint,
    fit_synapse_lmm,
    mechanism_contrasts,
    session_contrasts,
)
from analysis.stats.trend import fit_synapse_trend

REF = Path(__file__).parent / "reference"
TOL = 1e-4


def ref(name: str) -> pd.DataFrame:
    return pd.read_csv(REF / f"ref_{name}.csv")


def with_group(r: pd.DataFrame) -> pd.DataFrame:
    r = r.copy()
    r["group"] = [group_label(g, c, float(d), int(t))
                  for g, c, d, t in r[["genotype", "compound", "dose_mg_kg", "treatment_days"]].itertuples(index=False)]
    return r


def close(ours, theirs, *, rel: float = 0.0, abs_: float = 0.0, what: str = "") -> float:
    """Assert elementwise agreement and return the largest absolute difference."""
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    assert ours.shape == theirs.shape and len(ours) > 0, what
    np.testing.assert_allclose(ours, theirs, rtol=rel, atol=abs_, err_msg=what)
    return float(np.max(np.abs(ours - theirs)))


@pytest.fixture(scope="module")
def synapse() -> pd.DataFrame:
    return pd.read_csv(REF / "synapse_input.csv")


@pytest.fixture(scope="module")
def lmm(synapse: pd.DataFrame):
    fit = fit_synapse_lmm(synapse)
    assert fit.converged
    return fit


@pytest.fixture(scope="module")
def terminal() -> tuple[pd.DataFrame, pd.DataFrame]:
    img = pd.read_csv(REF / "terminal_images_input.csv")
    cells = pd.read_csv(REF / "terminal_cells_input.csv").merge(img, on="image_id")
    return img, cells


def test_lmm_cell_means_and_variances(lmm) -> None:
    r = ref("lmm_fixef")
    r["cell"] = [f"{group_label(g, c, float(d), int(t))} @ day {int(day)}"
                 for g, c, d, t, day in r["cell"].str.split("|")]
    ours = lmm.coefficients.set_index("cell").loc[r["cell"]]
    close(ours["estimate"], r["estimate"], abs_=TOL, what="cell means")
    close(ours["se"], r["se"], rel=TOL, what="cell-mean SEs")
    vc = ref("lmm_varcorr").set_index("component")["variance"]
    mine = lmm.variance_components.set_index("component")["variance"]
    close(mine[["animal", "animal x session", "residual (field)"]], vc[["animal_id", "session", "Residual"]],
          rel=1e-3, what="variance components")


@pytest.fixture(scope="module")
def lmm_pairs(lmm) -> tuple[pd.DataFrame, pd.DataFrame]:
    r = with_group(ref("lmm_contrasts"))
    ours = session_contrasts(lmm).set_index(["group", "day"])
    return r, ours


def _log_ci(ours: pd.DataFrame, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.log1p(ours[prefix + s].to_numpy() / 100) for s in ("", "_ci_low", "_ci_high"))


@pytest.mark.parametrize("kind, prefix", [("change_from_baseline", "pct_change_from_baseline"),
                                          ("vs_vehicle", "pct_vs_vehicle")])
def test_lmm_session_contrasts_match_emmeans(lmm_pairs, kind: str, prefix: str) -> None:
    r, ours = lmm_pairs
    r = r[r["contrast"] == kind]
    o = ours.loc[list(zip(r["group"], r["day"]))]
    est, lo, hi = _log_ci(o, prefix)
    close(o["df"], r["df"], rel=0, what="df rule: animals minus groups")
    close(est, r["estimate"], abs_=TOL, what=f"{kind} estimate")
    q = sps.t.ppf(0.975, r["df"].to_numpy())
    close((hi - lo) / (2 * q), r["se"], rel=TOL, what=f"{kind} SE")
    close(lo, r["ci_low"], abs_=TOL, what=f"{kind} CI low")
    close(hi, r["ci_high"], abs_=TOL, what=f"{kind} CI high")
    if kind == "vs_vehicle":
        close(o["p_vs_vehicle"], r["p_value"], abs_=TOL, what="p vs vehicle")
        planned = r["p_holm"].notna().to_numpy()
        assert (o["planned"].to_numpy() == planned).all()
        close(o["p_vs_vehicle_holm"][planned], r["p_holm"][planned], abs_=TOL, what="Holm")
        d = o["effect_size_d"].to_numpy()
        close(d, r["estimate"] / r["sd_animal_log"], abs_=1e-3, what="Cohen's d")


def test_lmm_mechanism_contrasts_match_emmeans(lmm) -> None:
    r = ref("lmm_contrasts").set_index("contrast")
    mech = mechanism_contrasts(lmm)
    ours = {("interaction" if "interaction" in c else "compound"): row for c, row in mech.set_index("contrast").iterrows()}
    assert set(ours) == {"interaction", "compound"}
    for key, o in ours.items():
        t = r.loc[f"mechanism_{key}"]
        close([np.log1p(o["pct_difference"] / 100)], [t["estimate"]], abs_=TOL, what=key)
        close(np.log1p(o[["ci_low", "ci_high"]].to_numpy(float) / 100), t[["ci_low", "ci_high"]], abs_=TOL, what=key)
        close([o["p_value"]], [t["p_value"]], abs_=TOL, what=key)
        assert o["df"] == t["df"]


def test_df_rule_is_conservative_against_satterthwaite(lmm_pairs) -> None:
    """Deliberate difference: our df (animals minus groups) <= lmerTest's Satterthwaite and KR.

    Satterthwaite/Kenward-Roger put the within-animal contrasts in the animal x session stratum
    (~300-900 df here); our between-animal rule (98) gives t quantiles at most ~1.1 % larger.
    """
    r, _ = lmm_pairs
    assert (r["df"] <= r["df_satterthwaite"]).all() and (r["df"] <= r["df_kenward_roger"]).all()
    ratio = sps.t.ppf(0.975, r["df"]) / sps.t.ppf(0.975, r["df_satterthwaite"])
    assert 1.0 <= ratio.max() < 1.015
    # same SEs: emmeans with lmerTest's Satterthwaite uses the unadjusted covariance
    width_satt = r["ci_high_satterthwaite"] - r["ci_low_satterthwaite"]
    close(width_satt / (2 * sps.t.ppf(0.975, r["df_satterthwaite"])), r["se"], rel=1e-8)


@pytest.mark.parametrize("endpoint, count, exposure", [("microglia_density", "microglia_count", "field_area_mm2"),
                                                       ("engulfed_per_cell", "engulfed_puncta", None)])
def test_quasi_poisson_matches_glm(terminal, endpoint: str, count: str, exposure: str | None) -> None:
    img, cells = terminal
    table = img if endpoint == "microglia_density" else cells
    ours, diag = fit_count_endpoint(table, count, exposure=exposure)
    r = with_group(ref("glm_contrasts").query("endpoint == @endpoint"))
    o = ours.set_index(["group", "day"]).loc[list(zip(r["group"], r["day"]))]
    close(np.log(o["ratio_vs_vehicle"]), r["log_ratio"], abs_=TOL, what="log rate ratio")
    close(np.log(o["ci_low"]), np.log(r["ci_low"]), abs_=TOL, what="CI low")
    close(np.log(o["ci_high"]), np.log(r["ci_high"]), abs_=TOL, what="CI high")
    close(o["p_value"], r["p_value"], abs_=TOL, what="p")
    planned = r["p_holm"].notna().to_numpy()
    assert (o["planned"].to_numpy() == planned).all()
    close(o["p_holm"][planned], r["p_holm"][planned], abs_=TOL, what="Holm")
    d = ref("glm_dispersion").set_index("endpoint").loc[endpoint]
    close([diag["dispersion"], diag["df_resid"]], [d["dispersion"], d["df_resid"]], rel=TOL, what="dispersion")
    close([diag["p_overdispersion"]], [d["p_overdispersion"]], abs_=TOL, what="overdispersion test")
    assert diag["n_animals"] == d["n_animals"]


def test_morphology_ols_matches_lm(terminal) -> None:
    _, cells = terminal
    ours = fit_morphology_endpoint(cells, "skeleton_length_um")
    r = with_group(ref("lm_contrasts"))
    o = ours.set_index(["group", "day"]).loc[list(zip(r["group"], r["day"]))]
    close(np.log(o["ratio_vs_vehicle"]), r["log_ratio"], abs_=TOL, what="log ratio")
    close(np.log(o[["ci_low", "ci_high"]].to_numpy(float)), np.log(r[["ci_low", "ci_high"]].to_numpy()), abs_=TOL)
    close(o["p_value"], r["p_value"], abs_=TOL, what="p")
    planned = r["p_holm"].notna().to_numpy()
    close(o["p_holm"][planned], r["p_holm"][planned], abs_=TOL, what="Holm")
    close(o["effect_size_d"], r["effect_size_d"], abs_=TOL, what="Cohen's d")


def test_trend_model_matches_lmer(synapse: pd.DataFrame) -> None:
    ours = fit_synapse_trend(synapse).set_index("term")
    r = ref("trend")
    # the LRT for the random slope agrees, and so does the structure it selects
    close([ours["slope_lrt_stat"].iloc[0]], [r["lrt_stat"].iloc[0]], abs_=1e-3, what="LRT statistic")
    chosen = "slope" if ours["random_effects"].iloc[0].startswith("animal intercept + slope") else "intercepts"
    assert chosen == ("slope" if r["lrt_p"].iloc[0] < 0.05 else "intercepts")
    r = r[r["random_effects"] == chosen].set_index("term").loc[ours.index]
    close(ours["estimate"], r["estimate"], abs_=TOL, what="trend estimates")
    close(ours["se"], r["se"], rel=TOL, what="trend SEs")
    close(ours["df"], r["df"], what="trend df: animals minus between-animal fixed effects")
    close(np.log1p(ours["ci_low"] / 100), r["ci_low"], abs_=TOL, what="trend CI low")
    close(np.log1p(ours["ci_high"] / 100), r["ci_high"], abs_=TOL, what="trend CI high")
    close(ours["p_value"], r["p_value"], abs_=TOL, what="trend p")
    assert (r["df"] < r["df_satterthwaite"]).all()  # conservative, as for the cell-means model
    assert (ours["n_animals"] == r["n_animals"]).all() and (ours["n_images"] == r["n_images"]).all()


def test_dose_trend_slope_matches_lm(synapse: pd.DataFrame) -> None:
    ch = animal_changes(synapse)
    sub = ch[(ch.genotype == "WT") & (ch.treatment_days == 7) & ch.compound.isin(["vehicle", "diazepam"])]
    t = fit_dose_response(sub, n_boot=20).set_index("parameter").loc["trend_slope"]
    r = ref("dose_trend").iloc[0]
    close(t[["estimate", "ci_low", "ci_high", "p_value"]].to_numpy(float),
          r[["estimate", "ci_low", "ci_high", "p_value"]].to_numpy(float), abs_=TOL, what="dose trend slope")
    assert t["n_animals"] == r["n_animals"]
