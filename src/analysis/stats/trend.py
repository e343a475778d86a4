"""Parametric dose x time model of synapse density: dose, time on drug, time since withdrawal.

The primary longitudinal model (:func:`analysis.stats.fit_synapse_lmm`) estimates one mean per
group and session and assumes no shape for the time course.  The model here states the effect
as slopes, so that the questions "does the loss grow with dose and with time on drug?", "how
fast does it recover after withdrawal?" and "does recovery depend on how long the drug was
given?" are single coefficients with confidence intervals:

    log density ~ C(arm) * weeks + dose + dose:on + dose:off + dose:on:off

with ``weeks`` the time since the first dose (a separate drift per dosing arm, absorbed by the
vehicle animals), ``dose`` = log2(1 + mg/kg), ``on`` the weeks on drug by the session and
``off`` the weeks since the last dose.  Random effects: an intercept per animal and per animal
x session, and a random slope of ``weeks`` per animal when the data support it (a REML
likelihood-ratio test against the intercept-only model, with the 50:50 chi-square mixture
reference for a variance on the boundary).  The true time course is saturating, not linear:
the slopes are average rates over the sampled sessions, a summary, not a mechanism.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps

from analysis.stats import fixed_effects_covariance, log_with_zeros
from analysis.stats.models import _fit_messages
from analysis.io.vocabulary import VEHICLE, WILD_TYPE

__all__ = ["trend_table", "fit_synapse_trend"]

log = logging.getLogger(__name__)

FORMULA = "log_value ~ C(treatment_days) * weeks + dose + dose:on + dose:off + dose:on:off"

TERMS = {
    "dose": "baseline difference per doubling of (1 + dose) (randomisation check, expected 0)",
    "dose:on": "change per week on drug, per doubling of (1 + dose)",
    "dose:off": "change per week after withdrawal, per doubling of (1 + dose)",
    "dose:on:off": "change of the recovery rate per week of prior dosing, per doubling of (1 + dose)",
}


def trend_table(
    measurements: pd.DataFrame, value: str = "puncta_density_per_100um2", *, zeros: str = "exclude"
) -> pd.DataFrame:
    """Image rows with the covariates of the trend model (``log_value``, ``weeks``, ``dose``, ``on``, ``off``).

    Zero densities cannot be logged: as in :func:`analysis.stats.fit_synapse_lmm` they are
    excluded (``zeros="exclude"``, a warning is logged and their number is kept in
    ``attrs["n_zero_excluded"]``) or modelled as ``log(x + c)`` (``zeros="offset"``).

    Examples
    --------
    >>> m = pd.DataFrame({"animal_id": ["a", "a"], "dose_mg_kg": [1.0, 1.0], "treatment_days": [28, 28],
    ...                   "day": [14, 42], "puncta_density_per_100um2": [40.0, 42.0]})
    >>> trend_table(m)[["weeks", "dose", "on", "off"]].to_numpy().tolist()
    [[2.0, 1.0, 2.0, 0.0], [6.0, 1.0, 4.0, 2.0]]
    """
    df = measurements.dropna(subset=[value]).copy()
    df["log_value"], is_zero, offset = log_with_zeros(df[value], zeros, value)
    n_zero = int(is_zero.sum()) if zeros == "exclude" else 0
    if n_zero:
        log.warning("trend model: %d image(s) with zero %s excluded (a log model cannot take them)", n_zero, value)
    df = df[df["log_value"].notna()].copy()
    day = df["day"].astype(float)
    planned = df["treatment_days"].astype(float)
    df["weeks"] = day / 7.0
    df["dose"] = np.log2(1.0 + df["dose_mg_kg"].astype(float))
    df["on"] = np.clip(day, 0.0, planned) / 7.0
    df["off"] = np.clip(day - planned, 0.0, None) / 7.0
    df.attrs["n_zero_excluded"] = n_zero
    df.attrs["zero_offset"] = offset
    return df


def _fit(df: pd.DataFrame, slope: bool):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = smf.mixedlm(FORMULA, df, groups="animal_id", re_formula="~weeks" if slope else "1",
                            vc_formula={"session": "0 + C(day)"})
        res = model.fit(reml=True, method=["lbfgs", "powell"])
    return res, _fit_messages(caught)


def fit_synapse_trend(
    measurements: pd.DataFrame,
    value: str = "puncta_density_per_100um2",
    *,
    genotype: str = WILD_TYPE,
    compound: str = "diazepam",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Fit the dose x time trend model to one genotype's vehicle and ``compound`` animals.

    Parameters
    ----------
    measurements : DataFrame
        Longitudinal image rows (sheet columns plus ``value``).
    value : str
        Density column.
    genotype, compound : str
        Which animals enter (with the vehicle animals of the same genotype).
    alpha : float
        1 - confidence level.

    Returns
    -------
    DataFrame
        One row per drug term (``dose``, ``dose:on``, ``dose:off``, ``dose:on:off``):
        ``estimate`` and ``se`` (log scale), ``pct_per_unit`` with ``ci_low``/``ci_high``
        (100 x (exp - 1)), ``p_value``, ``meaning``; and model facts repeated on every row:
        ``random_effects`` (the chosen structure), ``slope_lrt_stat``, ``slope_lrt_p``,
        ``n_animals``, ``n_images``, ``n_zero_fields_excluded``, ``converged``, ``warnings``.
        Standard errors are the GLS ones lme4 reports
        (:func:`analysis.stats.fixed_effects_covariance`); intervals and p values use Student's t
        with ``df`` = animals minus the fixed effects that are constant within an animal (84 for
        the default design), the between-animal rule of :func:`analysis.stats.fit_synapse_lmm`.
        lmerTest's Satterthwaite df are larger (~130 for ``dose``, ~380 for the within-animal
        slopes; tests/reference/ref_trend.csv), so these intervals are 0.5-1 % wider;
        Wald z (the former rule) made them 0.3-1 % narrower than Satterthwaite's.
    """
    sub = measurements[(measurements["genotype"] == genotype)
                       & measurements["compound"].isin([VEHICLE, compound])]
    df = trend_table(sub, value)
    if df["dose"].nunique() < 2 or df["animal_id"].nunique() < 4:
        raise ValueError(f"trend model needs vehicle and {compound} animals of genotype {genotype}")
    base, base_warn = _fit(df, slope=False)
    chosen, messages, random_effects = base, base_warn, "animal + animal x session intercepts"
    stat = p_slope = np.nan
    try:
        slope, slope_warn = _fit(df, slope=True)
        stat = max(2.0 * (slope.llf - base.llf), 0.0)
        # adding a variance (on its boundary) and a covariance: 50:50 mixture of chi2(1), chi2(2)
        p_slope = 0.5 * sps.chi2.sf(stat, 1) + 0.5 * sps.chi2.sf(stat, 2)
        if p_slope < alpha and slope.converged:
            chosen, messages = slope, slope_warn
            random_effects = "animal intercept + slope of weeks, animal x session intercept"
    except (np.linalg.LinAlgError, ValueError) as exc:  # the slope model is optional
        log.warning("random-slope trend model failed (%s); keeping random intercepts", exc)
    for m in messages:
        log.warning("trend model: %s", m)
    exog = pd.DataFrame(chosen.model.exog, columns=chosen.model.exog_names)
    between = int((exog.groupby(df["animal_id"].to_numpy()).nunique() <= 1).all().sum())
    dft = float(max(df["animal_id"].nunique() - between, 1))
    q = sps.t.ppf(1 - alpha / 2, dft)
    cov = fixed_effects_covariance(chosen)
    rows = []
    for term, meaning in TERMS.items():
        est, se = float(chosen.fe_params[term]), float(np.sqrt(cov.loc[term, term]))
        rows.append({
            "term": term, "meaning": meaning, "estimate": est, "se": se,
            "pct_per_unit": 100 * np.expm1(est), "ci_low": 100 * np.expm1(est - q * se),
            "ci_high": 100 * np.expm1(est + q * se), "p_value": float(2 * sps.t.sf(abs(est / se), dft)), "df": dft,
        })
    out = pd.DataFrame(rows)
    return out.assign(
        genotype=genotype, compound=compound, random_effects=random_effects, slope_lrt_stat=stat,
        slope_lrt_p=p_slope, n_animals=int(df["animal_id"].nunique()), n_images=int(len(df)),
        n_zero_fields_excluded=int(df.attrs.get("n_zero_excluded", 0)),
        converged=bool(chosen.converged), warnings="; ".join(messages),
    )
