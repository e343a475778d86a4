"""Diagnostics of the longitudinal mixed model: residuals, random effects, convergence.

A mixed model on log density assumes roughly normal, homoscedastic field residuals and normal
animal effects.  :func:`lmm_residuals` returns the per-image residuals and the predicted
animal effects, :func:`diagnostics_summary` the numbers a reviewer checks (skewness, excess
kurtosis, the largest standardised residual, a Shapiro-Wilk test of the animal effects, the
spread of residuals across fitted values, convergence and warnings) and
:func:`diagnostics_figure` the usual three panels.  :func:`quality_balance` checks that the
detector saw the groups alike: a per-image quality figure (spike-in recall, measured SNR)
compared between each treated group and its vehicle at every session.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["lmm_residuals", "diagnostics_summary", "diagnostics_figure", "quality_balance"]


def lmm_residuals(fit) -> tuple[pd.DataFrame, pd.Series]:
    """Per-image fitted values and residuals, and the predicted animal intercepts.

    Parameters
    ----------
    fit : analysis.stats.SynapseFit
        A fitted longitudinal model.

    Returns
    -------
    residuals : DataFrame
        ``image_id`` and ``day`` (when the model table has them), ``animal_id``, ``fitted`` (log scale, including the predicted random effects),
        ``residual`` and ``standardised`` (residual / residual SD).
    animal_effects : Series
        Predicted random intercept per animal (log scale).
    """
    res = fit.result
    resid = np.asarray(res.resid, float)
    fitted = np.asarray(res.fittedvalues, float)
    frame = res.model.data.frame
    mixed = hasattr(res.model, "group_labels")  # an OLS fit (one image per animal) has no animal effects
    animals = np.asarray(res.model.groups) if mixed else frame["animal_id"].to_numpy()
    table = pd.DataFrame({"animal_id": animals, "fitted": fitted, "residual": resid})
    for col in ("image_id", "day"):
        if col in frame:
            table.insert(0 if col == "image_id" else 2, col, frame[col].to_numpy())
    table["standardised"] = resid / np.sqrt(float(res.scale))
    if mixed:
        effects = pd.Series({g: float(np.asarray(res.random_effects[g])[0]) for g in res.model.group_labels},
                            name="animal_effect")
    else:
        effects = pd.Series(np.nan, index=pd.Index(sorted(set(animals)), name=None), name="animal_effect")
    return table, effects


def diagnostics_summary(fit) -> pd.DataFrame:
    """One-row table of residual and random-effect checks of a fitted model.

    Returns
    -------
    DataFrame
        ``n_images``, ``n_animals``, ``residual_skewness``, ``residual_excess_kurtosis``,
        ``max_abs_standardised_residual``, ``share_abs_standardised_gt_3``,
        ``heteroscedasticity_rho`` (Spearman correlation of |residual| with the fitted value),
        ``animal_effects_shapiro_p``, ``converged``, ``warnings``.

    Examples
    --------
    >>> from analysis.stats.models import fit_synapse_lmm
    >>> from analysis.sim.measurements import simulate_measurements
    >>> d = diagnostics_summary(fit_synapse_lmm(simulate_measurements("small", 0)))
    >>> bool(d["n_animals"].iloc[0] > 0)
    True
    """
    table, effects = lmm_residuals(fit)
    z = table["standardised"].to_numpy()
    rho = sps.spearmanr(np.abs(table["residual"]), table["fitted"])[0] if len(table) > 2 else np.nan
    shapiro = sps.shapiro(effects.to_numpy())[1] if 3 <= len(effects) <= 5000 and effects.std() > 0 else np.nan
    return pd.DataFrame([{
        "n_images": int(len(table)),
        "n_animals": int(len(effects)),
        "residual_skewness": float(sps.skew(z)),
        "residual_excess_kurtosis": float(sps.kurtosis(z)),
        "max_abs_standardised_residual": float(np.abs(z).max()) if len(z) else np.nan,
        "share_abs_standardised_gt_3": float((np.abs(z) > 3).mean()) if len(z) else np.nan,
        "heteroscedasticity_rho": float(rho),
        "animal_effects_shapiro_p": float(shapiro),
        "converged": bool(fit.converged),
        "warnings": "; ".join(fit.warnings),
    }])


def diagnostics_figure(table: pd.DataFrame, effects: pd.Series, *, figsize: tuple[float, float] = (11.0, 3.4)):
    """Residuals vs fitted, normal Q-Q of the standardised residuals, animal effects histogram.

    Parameters
    ----------
    table, effects
        The two results of :func:`lmm_residuals` (also written by ``python -m analysis fit``
        as ``synapse_lmm_residuals.csv`` and ``synapse_lmm_animal_effects.csv``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    effects = pd.Series(effects).dropna()
    fig, ax = plt.subplots(1, 3, figsize=figsize, constrained_layout=True)
    ax[0].scatter(table["fitted"], table["residual"], s=4, alpha=0.4, color="0.3")
    ax[0].axhline(0, color="tab:red", lw=1)
    ax[0].set(xlabel="fitted log density", ylabel="residual (log)", title="Residuals vs fitted (images)")
    (osm, osr), (slope, intercept, _) = sps.probplot(table["standardised"], dist="norm")
    ax[1].scatter(osm, osr, s=4, alpha=0.4, color="0.3")
    ax[1].plot(osm, slope * osm + intercept, color="tab:red", lw=1)
    ax[1].set(xlabel="normal quantile", ylabel="standardised residual", title="Normal Q-Q (images)")
    ax[2].hist(effects, bins=max(5, min(30, len(effects) // 3)), color="0.5")
    ax[2].set(xlabel="animal intercept (log)", ylabel="animals", title=f"Animal effects (n = {len(effects)})")
    return fig


def quality_balance(measurements: pd.DataFrame, column: str = "spike_in_recall", by: tuple[str, ...] = ("day",),
                    *, scale: float = 1.0) -> pd.DataFrame:
    """A per-image quality figure per group and session, each treated group against its vehicle.

    A density change can be made by the detector as well as by the tissue: if the treated
    animals' images were detected with a lower recall (dimmer expression, worse imaging) their
    density would read low.  The images' figure (e.g. ``spike_in_recall``) is averaged per
    animal and session and compared between groups as the turnover fractions are
    (:func:`analysis.stats.turnover.versus_vehicle`: the animal is the unit, Welch's t).  A
    difference here is a warning to read beside the density contrast, not a correction.

    Parameters
    ----------
    measurements : DataFrame
        Image rows with ``animal_id``, the group columns, ``by`` and ``column``.
    column : str
        The quality figure.
    by : tuple of str
        Session keys.
    scale : float
        Factor of ``difference`` (and its CI) in the result: 100 for fractions in points.

    Returns
    -------
    DataFrame
        :func:`analysis.stats.turnover.versus_vehicle` columns (``group``, ``n_animals``,
        ``mean``, ``sd``; for treated groups ``difference``, ``ci_low``, ``ci_high``,
        ``p_value``) with ``quantity`` = ``column``; empty without the column.

    Examples
    --------
    >>> m = pd.DataFrame({"animal_id": list("abcdef"), "genotype": "WT",
    ...                   "compound": ["vehicle"] * 3 + ["diazepam"] * 3, "dose_mg_kg": [0.0] * 3 + [5.0] * 3,
    ...                   "treatment_days": 7, "day": 7, "spike_in_recall": [0.8, 0.82, 0.78, 0.7, 0.72, 0.68]})
    >>> t = quality_balance(m)
    >>> round(float(t.loc[t["compound"] != "vehicle", "difference"].iloc[0]), 3)
    -0.1
    """
    from analysis.io.vocabulary import GROUP_COLUMNS, group_label
    from analysis.stats.turnover import versus_vehicle

    need = ["animal_id", *GROUP_COLUMNS, *by, column]
    if not all(c in measurements for c in need):
        return pd.DataFrame()
    d = measurements[need].copy()
    d[column] = pd.to_numeric(d[column], errors="coerce")
    d = d.dropna(subset=[column])
    if d.empty:
        return pd.DataFrame()
    per_animal = d.groupby(["animal_id", *GROUP_COLUMNS, *by], as_index=False, sort=False)[column].mean()
    per_animal["group"] = [group_label(*k) for k in per_animal[GROUP_COLUMNS].itertuples(index=False)]
    out = versus_vehicle(per_animal, column, list(by))
    for c in ("n_animals_vehicle", "difference_pp", "ci_low", "ci_high", "p_value"):
        if c not in out:  # (no treated group with a vehicle to compare)
            out[c] = np.nan
    for c in ("difference_pp", "ci_low", "ci_high"):
        out[c] = out[c] * scale / 100.0
    return out.rename(columns={"difference_pp": "difference"}).assign(quantity=column)
