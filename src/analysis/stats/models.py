"""Statistics of dose and duration effects with the animal as the unit of replication.

Fields are repeated measures within an animal and session, sessions are repeated measures
within an animal.  The models here therefore never treat fields (or cells) as independent:

* :func:`session_means` aggregates images to one row per animal and session (mean and the
  number of fields) for plots and animal-level summaries;
* :func:`fit_synapse_lmm` fits a linear mixed model on log density with one mean per
  treatment group and session (a cell-means model, so no shape of the dose or time course is
  assumed), a random intercept per animal and a random animal x session intercept, to the
  image-level rows (and, for the two-photon spine arm, where the same dendrites are imaged
  at every session, a random intercept per imaged position); :func:`session_contrasts` turns
  it into percent changes from baseline
  and versus the matching vehicle group with 95 % confidence intervals and Holm-adjusted
  p values, reporting n as animals.

Development tables can be drawn straight from a simulated design with
:func:`simulate_measurements` (no images needed).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps

from analysis.io.vocabulary import GROUP_COLUMNS, VEHICLE, WILD_TYPE, group_label

__all__ = [
    "session_means",
    "fit_synapse_lmm",
    "session_contrasts",
    "SynapseFit",
    "animal_changes",
    "fit_dose_response",
    "fit_study",
    "dose_responses",
    "change_difference",
    "mechanism_contrasts",
    "recovery",
    "fit_count_endpoint",
    "fit_morphology_endpoint",
    "fixed_effects_covariance",
    "ZERO_POLICIES",
    "log_with_zeros",
    "gatekeeping",
    "sex_differences",
    "quality_covariates",
    "snr_adjusted_spine_contrasts",
    "false_detection_corrected",
    "correlation",
    "SPINE_VALUE",
]

log = logging.getLogger(__name__)


def _with_group(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["group"] = [group_label(*k) for k in out[GROUP_COLUMNS].itertuples(index=False)]
    return out


def session_means(measurements: pd.DataFrame, value: str = "puncta_density_per_100um2") -> pd.DataFrame:
    """One row per animal and session: mean of ``value`` over fields and the number of fields."""
    df = _with_group(measurements.dropna(subset=[value]))
    keys = ["group", *GROUP_COLUMNS, "animal_id", "day"]
    out = df.groupby(keys, sort=True, dropna=False)[value].agg(["mean", "count"]).reset_index()
    return out.rename(columns={"mean": value, "count": "n_fields"})


ZERO_POLICIES = ("exclude", "offset")


def log_with_zeros(values: pd.Series, zeros: str, what: str) -> tuple[pd.Series, pd.Series, float]:
    """Log of a non-negative readout with an explicit policy for zeros.

    Parameters
    ----------
    values : Series
        The readout (NaN already removed).  Negative values are an error.
    zeros : {"exclude", "offset"}
        ``"exclude"``: zeros are left out (returned as NaN, to be dropped by the caller) and
        counted; ``"offset"``: ``log(x + c)`` with ``c`` half the smallest positive value of the
        readout, so zeros stay in.
    what : str
        Name of the readout for messages.

    Returns
    -------
    log_values, is_zero, offset : Series, Series, float
        ``offset`` is 0 unless zeros were offset.

    Examples
    --------
    >>> lv, z, c = log_with_zeros(pd.Series([0.0, 2.0, 4.0]), "offset", "x")
    >>> c, [round(v, 4) for v in lv]
    (1.0, [0.0, 1.0986, 1.6094])
    """
    if zeros not in ZERO_POLICIES:
        raise ValueError(f"zeros={zeros!r}: choose one of {ZERO_POLICIES}")
    v = values.astype(float)
    if (v < 0).any():
        raise ValueError(f"column {what!r} has {int((v < 0).sum())} negative values; a density, length or count "
                         "cannot be negative: check the measurement table")
    is_zero = v == 0
    offset = 0.0
    if zeros == "offset" and is_zero.any():
        positive = v[v > 0]
        if positive.empty:
            raise ValueError(f"column {what!r} is zero everywhere: nothing to model")
        offset = float(positive.min()) / 2.0
    with np.errstate(divide="ignore"):
        out = np.log(v + offset)
    return out.where(~is_zero | (offset > 0)), is_zero, offset


def _fit_messages(caught: Sequence[warnings.WarningMessage]) -> tuple[str, ...]:
    """The distinct messages of the warnings recorded while a model was fitted, sorted.

    ResourceWarnings are left out: they come from the garbage collector finalising objects
    of other code that happen to be collected during the fit (an unclosed event loop of a
    notebook kernel client was once recorded in a model's warnings), not from the model, and
    they would make the written tables differ from run to run.
    """
    return tuple(sorted({str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)}))


def fixed_effects_covariance(result) -> pd.DataFrame:
    """Covariance of the fixed effects of a statsmodels ``MixedLM`` fit, as lme4 and SAS report it.

    ``(X' V^-1 X)^-1`` with ``V`` built from the fitted variance components (random effects,
    variance components and residual), the usual GLS covariance of the fixed effects at the
    (RE)ML variance estimates.  statsmodels' own ``cov_params()`` inverts the joint Hessian of
    fixed effects and variance parameters instead, whose standard errors differ from lme4 /
    lmerTest / emmeans by up to ~0.3 % (tests/test_stats_reference.py).

    Returns
    -------
    DataFrame
        Square, indexed by the fixed-effect names.
    """
    m = result.model
    cov_re = np.atleast_2d(np.asarray(result.cov_re, float))
    vcomp = np.asarray(getattr(result, "vcomp", []), float)
    info = np.zeros((m.k_fe, m.k_fe))
    for i, x in enumerate(m.exog_li):
        z = m.exog_re_li[i]
        v = z @ cov_re @ z.T + float(result.scale) * np.eye(len(x))
        for j, var in enumerate(vcomp):
            mat = np.asarray(m.exog_vc.mats[j][i])
            v += var * mat @ mat.T
        info += x.T @ np.linalg.solve(v, x)
    names = result.fe_params.index
    return pd.DataFrame(np.linalg.inv(info), index=names, columns=names)


@dataclass(frozen=True)
class SynapseFit:
    """A fitted longitudinal synapse model and the tables it reports.

    ``cov_fe`` is the covariance of the fixed effects (:func:`fixed_effects_covariance`);
    ``n_zero_excluded`` the number of fields left out because their density was zero
    (``zeros="exclude"``) and ``zero_offset`` the constant added before the log
    (``zeros="offset"``).
    """

    coefficients: pd.DataFrame
    variance_components: pd.DataFrame
    cells: pd.DataFrame
    result: object
    converged: bool
    warnings: tuple[str, ...]
    sd_animal_log: float = float("nan")
    df_contrast: float = float("inf")
    cov_fe: pd.DataFrame | None = None
    n_zero_excluded: int = 0
    zero_offset: float = 0.0

    #: Per-image covariates of the model (centred), with their coefficients (log scale).
    covariates: pd.DataFrame | None = None

    def fe_cov(self) -> np.ndarray:
        """Covariance matrix of the cell means in the order of ``coefficients``."""
        names = pd.Index(self.coefficients["term"])
        cov = self.cov_fe if self.cov_fe is not None else self.result.cov_params()
        return cov.loc[names, names].to_numpy()


def fit_synapse_lmm(
    measurements: pd.DataFrame, value: str = "puncta_density_per_100um2", *, zeros: str = "exclude",
    covariates: Sequence[str] = (), position: str | None = None,
) -> SynapseFit:
    """Linear mixed model of log density: group x session means, animal and animal x session effects.

    Parameters
    ----------
    measurements : DataFrame
        Image-level rows of the synapse readout (sheet columns plus ``value``); images
        with a microglia channel (terminal fields) should be excluded by the caller when the
        longitudinal series is wanted.
    value : str
        Density column.
    zeros : {"exclude", "offset"}
        What to do with fields of zero density, which a log model cannot take.  ``"exclude"``
        (default): leave them out, counted per cell (``n_zero_fields_excluded`` in
        ``coefficients`` and ``cells``), in ``n_zero_excluded`` and in ``warnings``.  A field of a
        few hundred um^2 of cortex without a single punctum (~40 per 100 um^2 expected) is a
        failed image or detection, not a density, and ``log(0 + c)`` would put it 5-6 log units
        (tens of residual SDs) below the rest and dominate the Gaussian fit.  ``"offset"``: model
        ``log(x + c)``, ``c`` half the smallest positive density, for sparse readouts where a
        zero is a real value (``zero_offset``).
    covariates : sequence of str
        Numeric per-image columns added to the model as centred linear terms common to every
        cell (e.g. the image-quality terms of :func:`quality_covariates`), so the cell means
        are at the study's average covariate values and contrasts compare groups at equal
        image quality.  Fields where a covariate is missing are left out and counted in the
        warnings.
    position : str, optional
        Column naming the imaged position within an animal when the *same* position is imaged
        at several sessions (the ``field`` of the two-photon spine arm: the same dendrites every
        session).  The model then has a position-within-animal effect too, so each position's
        own level (a denser dendrite, a dimmer image where fewer spines are detected) is common
        to its sessions and cancels from the change from baseline; without it that level is
        residual noise, independent between sessions, and the intervals of changes are too
        wide.  Ignored (with a note) when no position is imaged at more than one session, and
        when every animal has one position (the animal's effect is then the position's).

    Returns
    -------
    SynapseFit
        ``coefficients`` (one row per group x session cell: estimate on the log scale, SE as
        lme4 reports it, :func:`fixed_effects_covariance`),
        ``variance_components`` (animal, animal x session, position when modelled, residual),
        ``cells`` (the group and
        day of each coefficient with the number of animals), the statsmodels result, whether
        it converged and the warnings raised while fitting (surfaced, not hidden).

    Raises
    ------
    analysis.errors.InputError
        One image per animal and no more animals than model terms: no residual degrees of
        freedom, so no standard error exists.
    """
    df = _with_group(measurements.dropna(subset=[value]))
    df["log_value"], is_zero, offset = log_with_zeros(df[value], zeros, value)
    df["cell"] = df["group"] + " @ day " + df["day"].astype(int).astype(str)
    zero_by_cell = df.loc[is_zero].groupby("cell").size() if zeros == "exclude" else pd.Series(dtype=int)
    n_zero = int(zero_by_cell.sum())
    df = df[df["log_value"].notna()].copy()
    cells = (
        df.groupby(["cell", "group", *GROUP_COLUMNS, "day"], sort=True)["animal_id"].nunique()
        .rename("n_animals").reset_index()
    )
    cells["n_zero_fields_excluded"] = cells["cell"].map(zero_by_cell).fillna(0).astype(int)
    notes = []
    if n_zero:
        lost = sorted(set(zero_by_cell.index) - set(cells["cell"]))
        notes.append(
            f"{n_zero} field(s) with zero {value} excluded from the log model "
            f"({', '.join(f'{c}: {k}' for c, k in zero_by_cell.items())})"
            + (f"; cells left without data: {', '.join(lost)}" if lost else "")
            + "; check these images (failed focus or detection?) or refit with zeros='offset'"
        )
    elif offset > 0:
        notes.append(f"{int(is_zero.sum())} field(s) with zero {value} modelled as log(x + {offset:.4g}) "
                     "(half the smallest positive value)")
    terms = []
    for i, col in enumerate(covariates):
        if col not in df:
            raise KeyError(f"covariate {col!r} is not a column of the measurements")
        x = pd.to_numeric(df[col], errors="coerce").replace([np.inf, -np.inf], np.nan)
        if x.isna().any():
            notes.append(f"{int(x.isna().sum())} field(s) without covariate {col} left out")
        df[f"_covariate{i}"] = x - x.mean()
        terms.append(f"_covariate{i}")
    if terms:
        df = df.dropna(subset=terms).copy()
    formula = "log_value ~ 0 + C(cell)" + "".join(f" + {t}" for t in terms)
    # a cross-sectional design (every animal imaged in one session) has no animal x session
    # component separate from the animal's own: the model keeps the animal intercept only
    longitudinal = bool(df.groupby("animal_id")["day"].nunique().max() > 1) if len(df) else False
    repeated = False
    if position is not None:
        if position not in df:
            raise KeyError(f"position column {position!r} is not a column of the measurements")
        df["_position"] = df[position].astype(str)
        repeated = bool(longitudinal and df.groupby(["animal_id", "_position"])["day"].nunique().max() > 1)
        if not repeated:
            notes.append(f"no {position} imaged at more than one session: no position effect modelled")
        # one position per animal: its level is the animal's own effect (already in the model)
        repeated = repeated and bool(df.groupby("animal_id")["_position"].nunique().max() > 1)
    if not longitudinal:
        notes.append("cross-sectional design (one session per animal): animal x session variance not "
                     "separable from the animal's, modelled as one animal effect")
    # one image per animal: the animal is the image, and an ordinary least-squares fit of the
    # images is the model (no variance to split between animals and fields)
    one_image = bool(len(df) and df.groupby("animal_id").size().max() == 1)
    if one_image:
        notes = [n for n in notes if not n.startswith("cross-sectional")]
        notes.append("one image per animal: fitted by ordinary least squares (animal and field variance "
                     "not separable)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if one_image:
            result = smf.ols(formula, df).fit()
        else:
            vc = {"session": "0 + C(day)"} if longitudinal else {}
            if repeated:
                vc["position"] = "0 + C(_position)"
            model = smf.mixedlm(formula, df, groups="animal_id", re_formula="1",
                                **({"vc_formula": vc} if vc else {}))
            try:
                result = model.fit(reml=True, method=["lbfgs", "powell"])
            except np.linalg.LinAlgError:
                # L-BFGS can step onto a singular point when a variance is estimated at zero
                # (e.g. no animal variance beyond the fields'); Powell's method needs no gradient
                notes.append("refitted with Powell's method (L-BFGS met a singular matrix; a variance "
                             "component is probably at zero)")
                result = model.fit(reml=True, method=["powell"])
    messages = tuple(notes) + _fit_messages(caught)
    for m in messages:
        log.warning("mixed model: %s", m)
    if one_image:
        if result.df_resid < 1:
            from analysis.errors import InputError, Problem

            # (statsmodels would divide by zero residual df: standard errors inf or NaN)
            raise InputError(Problem(
                "measurements", f"one image per animal and {df['animal_id'].nunique()} animals for "
                f"{int(len(df) - result.df_resid)} model terms (groups, sessions, covariates): no animal is left to "
                "estimate the variance, so no standard error or p value can be given; image more animals per group "
                "(or more than one field per animal)", column=value))
        fe = result.params
        cov_fe = result.cov_params()
    else:
        fe = result.fe_params
        cov_fe = fixed_effects_covariance(result)
    se = pd.Series(np.sqrt(np.diag(cov_fe.to_numpy())), index=cov_fe.index)[fe.index]
    coef = pd.DataFrame({"term": fe.index, "estimate": fe.to_numpy(), "se": se.to_numpy()})
    is_cov = coef["term"].isin(terms)
    cov_table = (pd.DataFrame({"covariate": [covariates[terms.index(t)] for t in coef.loc[is_cov, "term"]],
                               "estimate": coef.loc[is_cov, "estimate"].to_numpy(),
                               "se": coef.loc[is_cov, "se"].to_numpy()}) if terms else None)
    coef = coef[~is_cov].copy()
    coef["cell"] = coef["term"].str.replace(r"^C\(cell\)\[(.*)\]$", r"\1", regex=True)
    coef = coef.merge(cells, on="cell", how="left")
    vcomp = (dict(zip(result.model.exog_vc.names, np.asarray(result.vcomp, float)))
             if longitudinal and not one_image else {})
    components = ["animal", "animal x session", *(["position (same at every session)"] if repeated else []),
                  "residual (field)"]
    variances = [np.nan if one_image else float(result.cov_re.iloc[0, 0]), vcomp.get("session", np.nan),
                 *([vcomp.get("position", np.nan)] if repeated else []), float(result.scale)]
    vc = pd.DataFrame({"component": components, "variance": variances})
    # between-animal SD of one animal's session mean (log scale): the scale of Cohen's d
    fields = float(df.groupby(["animal_id", "day"]).size().mean())
    positions = float(df.groupby("animal_id")["_position"].nunique().mean()) if repeated else 1.0
    sd_animal = float(np.sqrt(np.nan_to_num(variances[0]) + np.nan_to_num(variances[1])
                              + (np.nan_to_num(variances[2]) / positions if repeated else 0.0)
                              + variances[-1] / fields))
    # degrees of freedom of group contrasts: animals minus groups (the between-animal rule;
    # Wald z is too liberal with a handful of animals per group).  For the within-animal
    # contrasts (changes from baseline and their differences) lmerTest's Satterthwaite and
    # pbkrtest's Kenward-Roger df are larger (~330-360 vs 98 in tests/reference), so these
    # intervals are deliberately ~1 % wider: the rule does not lean on the compound-symmetry
    # assumption of the session effects; estimates and SEs match lme4/emmeans to < 1e-6.
    df_contrast = float(max(df["animal_id"].nunique() - df["group"].nunique(), 1))
    converged = True if one_image else bool(result.converged)
    return SynapseFit(coef, vc, cells, result, converged, messages, sd_animal, df_contrast,
                      cov_fe, n_zero, offset, cov_table)


def _holm(p: np.ndarray) -> np.ndarray:
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    m = len(p)
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(running, 1.0)
    return adj


def session_contrasts(fit: SynapseFit, *, alpha: float = 0.05, primary: str | None = None) -> pd.DataFrame:
    """Percent change from baseline and versus vehicle for every group and session.

    The change from baseline of group g at day d is ``exp(mu[g, d] - mu[g, baseline]) - 1``;
    the effect versus vehicle is the same change divided by the change of the vehicle group of
    the same genotype and dosing duration (a difference in differences on the log scale).
    Confidence intervals use the model's fixed-effect covariance and Student's t with
    ``fit.df_contrast`` degrees of freedom (animals minus groups; column ``df``).
    The planned contrasts are each treated group versus its vehicle at the end of dosing
    (``planned``); their p values are Holm-adjusted as one family (``p_vs_vehicle_holm``).
    With a pre-specified ``primary`` group (e.g. ``"WT diazepam 5 mg/kg x 7 d"``) the planned
    family is tested as a fixed sequence (:func:`gatekeeping`): the primary contrast first at
    the full ``alpha``, then, only if it is significant, the other planned contrasts with Holm
    (``p_vs_vehicle_adjusted``; without ``primary`` it equals ``p_vs_vehicle_holm``).
    Other sessions are reported with unadjusted p values and CIs, as estimates.

    Returns
    -------
    DataFrame
        ``group``, ``genotype``, ``compound``, ``dose_mg_kg``, ``treatment_days``, ``day``,
        ``days_since_last_dose``, ``n_animals``, ``n_animals_vehicle``, ``pct_change_from_baseline``
        with ``_ci_low``/``_ci_high``, ``pct_vs_vehicle`` with ``_ci_low``/``_ci_high``,
        ``p_vs_vehicle``, ``effect_size_d`` with ``_ci_low``/``_ci_high`` (the log ratio
        versus vehicle over the between-animal SD of a session mean, ``fit.sd_animal_log``:
        Cohen's d of animal means, its interval that of the ratio on the same scale),
        ``planned``, ``p_vs_vehicle_holm``, ``primary``, ``p_vs_vehicle_adjusted``,
        ``adjustment`` (in words), and ``n_zero_fields_excluded`` (zero-density fields
        left out of the cells this contrast uses, see :func:`fit_synapse_lmm`).
    """
    coef = fit.coefficients.reset_index(drop=True)
    cov = fit.fe_cov()
    beta = coef["estimate"].to_numpy()
    zeros = coef["n_zero_fields_excluded"].to_numpy() if "n_zero_fields_excluded" in coef else np.zeros(len(coef))
    dfc = fit.df_contrast
    z = sps.t.ppf(1 - alpha / 2, dfc)
    idx = {(r.group, int(r.day)): i for i, r in coef.iterrows()}
    # a group's baseline is its session before the first dose (day < 0); a group without one
    # (a cross-sectional design) is compared with its vehicle at the same day directly
    first = coef.groupby("group")["day"].min()
    baseline = first[first < 0].to_dict()
    rows = []
    for i, r in coef.iterrows():
        g, d = r["group"], int(r["day"])
        if g in baseline and d == baseline[g]:
            continue
        L = np.zeros(len(beta))
        L[i] = 1.0
        rec = {
            "group": g,
            **{c: r[c] for c in GROUP_COLUMNS},
            "day": d,
            "days_since_last_dose": d - r["treatment_days"],
            "n_animals": int(r["n_animals"]),
            "df": dfc,
            "pct_change_from_baseline": np.nan,
            "pct_change_from_baseline_ci_low": np.nan,
            "pct_change_from_baseline_ci_high": np.nan,
            "n_zero_fields_excluded": int(zeros[i]),
        }
        if g in baseline:
            b = idx[(g, int(baseline[g]))]
            L[b] = -1.0
            est, se = L @ beta, np.sqrt(L @ cov @ L)
            rec.update({
                "pct_change_from_baseline": 100 * np.expm1(est),
                "pct_change_from_baseline_ci_low": 100 * np.expm1(est - z * se),
                "pct_change_from_baseline_ci_high": 100 * np.expm1(est + z * se),
                "n_zero_fields_excluded": int(zeros[i] + zeros[b]),
            })
        veh = group_label(r["genotype"], VEHICLE, 0.0, r["treatment_days"])
        if r["compound"] != VEHICLE and (veh, d) in idx and (g in baseline) == (veh in baseline):
            Lv = L.copy()
            Lv[idx[(veh, d)]] -= 1.0
            used = [i, idx[(veh, d)]]
            if veh in baseline:
                Lv[idx[(veh, int(baseline[veh]))]] += 1.0
                used += [idx[(g, int(baseline[g]))], idx[(veh, int(baseline[veh]))]]
            est_v, se_v = Lv @ beta, np.sqrt(Lv @ cov @ Lv)
            rec.update(
                {
                    "n_animals_vehicle": int(coef.loc[idx[(veh, d)], "n_animals"]),
                    "pct_vs_vehicle": 100 * np.expm1(est_v),
                    "pct_vs_vehicle_ci_low": 100 * np.expm1(est_v - z * se_v),
                    "pct_vs_vehicle_ci_high": 100 * np.expm1(est_v + z * se_v),
                    "p_vs_vehicle": float(2 * sps.t.sf(abs(est_v / se_v), dfc)),
                    "n_zero_fields_excluded": int(sum(zeros[j] for j in used)),
                }
            )
            if np.isfinite(fit.sd_animal_log) and fit.sd_animal_log > 0:
                rec.update(
                    {
                        "effect_size_d": est_v / fit.sd_animal_log,
                        "effect_size_d_ci_low": (est_v - z * se_v) / fit.sd_animal_log,
                        "effect_size_d_ci_high": (est_v + z * se_v) / fit.sd_animal_log,
                    }
                )
        rows.append(rec)
    out = pd.DataFrame(rows).sort_values(["group", "day"]).reset_index(drop=True)
    if "p_vs_vehicle" in out:
        planned = out["p_vs_vehicle"].notna() & (out["day"] == out["treatment_days"])
        out["planned"] = planned
        out.loc[planned, "p_vs_vehicle_holm"] = _holm(out.loc[planned, "p_vs_vehicle"].to_numpy())
        is_primary = planned & (out["group"] == primary) if primary else pd.Series(False, index=out.index)
        if primary and not is_primary.any():
            log.warning("primary contrast %r is not among the planned contrasts (%s); Holm over all of them",
                        primary, ", ".join(out.loc[planned, "group"]))
        out["primary"] = is_primary
        adjusted, words = gatekeeping(out.loc[planned, "p_vs_vehicle"].to_numpy(), is_primary[planned].to_numpy())
        out.loc[planned, "p_vs_vehicle_adjusted"] = adjusted
        out.loc[planned, "adjustment"] = words
    return out


def gatekeeping(p: np.ndarray, primary: np.ndarray) -> tuple[np.ndarray, str]:
    """Adjusted p values of a fixed sequence: one primary hypothesis, then Holm over the rest.

    The primary hypothesis is tested first at the full level; the others are tested (with
    Holm) only when it is rejected, which keeps the family-wise error rate at the level
    (serial gatekeeping, Dmitrienko & Tamhane 2007).  The adjusted p of the primary is its
    own p; that of each other hypothesis is ``max(p_primary, p_holm)``.  Without a primary,
    plain Holm.

    Parameters
    ----------
    p : ndarray
        Unadjusted p values of the family.
    primary : ndarray of bool
        Which one is the primary hypothesis (at most one).

    Returns
    -------
    adjusted : ndarray
    description : str
        The procedure in words, for tables and the report.

    Examples
    --------
    >>> adj, how = gatekeeping(np.array([0.01, 0.02, 0.30]), np.array([True, False, False]))
    >>> [round(float(a), 3) for a in adj]
    [0.01, 0.04, 0.3]
    """
    p = np.asarray(p, float)
    primary = np.asarray(primary, bool)
    if primary.sum() > 1:
        raise ValueError("gatekeeping takes at most one primary hypothesis")
    if not primary.any():
        return _holm(p), f"Holm over {len(p)} planned contrasts"
    adjusted = np.empty_like(p)
    p0 = float(p[primary][0])
    adjusted[primary] = p0
    rest = ~primary
    if rest.any():
        adjusted[rest] = np.maximum(p0, _holm(p[rest]))
    return adjusted, f"fixed sequence: primary contrast first, then Holm over the other {int(rest.sum())}"


def sex_differences(measurements: pd.DataFrame, value: str = "puncta_density_per_100um2", *,
                    covariates: Sequence[str] = (), alpha: float = 0.05) -> pd.DataFrame:
    """Sex x treatment, a secondary analysis: each planned contrast in females and in males, and their difference.

    The synapse model is fitted to each sex separately (animals are nested in sex, so the
    two fits are independent); the difference of the two log ratios versus vehicle has the
    variance ``se_F^2 + se_M^2`` and is tested with Student's t on the smaller of the two
    fits' degrees of freedom (conservative).  Unadjusted: an exploratory, secondary analysis.

    Returns
    -------
    DataFrame
        Per planned contrast: ``pct_vs_vehicle_F`` / ``_M`` with CIs and n animals, the
        ``ratio_F_over_M`` of the two effects (as ratios of change) with CI, and ``p_sex_difference``.

    Raises
    ------
    ValueError
        No ``sex`` column, or fewer than two sexes with a planned contrast each.
    """
    if "sex" not in measurements:
        raise ValueError("no sex column")
    sexes = [x for x in sorted(measurements["sex"].dropna().astype(str).unique()) if x.strip()]
    if len(sexes) != 2:
        raise ValueError(f"sex x treatment needs two sexes, found {sexes}")
    parts = {}
    for sex in sexes:
        sub = measurements[measurements["sex"].astype(str) == sex]
        try:
            fit = fit_synapse_lmm(sub, value, covariates=covariates)
            c = session_contrasts(fit, alpha=alpha)
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise ValueError(f"the {sex} animals alone cannot be fitted ({exc})") from None
        if "planned" not in c or not c["planned"].any():
            raise ValueError(f"no planned contrast estimable in the {sex} animals alone")
        c = c[c["planned"]].set_index("group")
        lo, hi = np.log1p(c["pct_vs_vehicle_ci_low"] / 100), np.log1p(c["pct_vs_vehicle_ci_high"] / 100)
        q = sps.t.ppf(1 - alpha / 2, c["df"])
        parts[sex] = pd.DataFrame({"est": np.log1p(c["pct_vs_vehicle"] / 100), "se": (hi - lo) / (2 * q),
                                   "df": c["df"], "pct": c["pct_vs_vehicle"], "lo": c["pct_vs_vehicle_ci_low"],
                                   "hi": c["pct_vs_vehicle_ci_high"], "n": c["n_animals"]})
    a, b = sexes
    j = parts[a].merge(parts[b], left_index=True, right_index=True, how="inner", suffixes=("_a", "_b"))
    if j.empty:
        raise ValueError("no planned contrast estimable in both sexes")
    diff = j["est_a"] - j["est_b"]
    se = np.sqrt(j["se_a"] ** 2 + j["se_b"] ** 2)
    df = np.minimum(j["df_a"], j["df_b"])
    q = sps.t.ppf(1 - alpha / 2, df)
    out = pd.DataFrame({
        "group": j.index,
        f"pct_vs_vehicle_{a}": j["pct_a"].to_numpy(), f"ci_low_{a}": j["lo_a"].to_numpy(),
        f"ci_high_{a}": j["hi_a"].to_numpy(), f"n_animals_{a}": j["n_a"].to_numpy(),
        f"pct_vs_vehicle_{b}": j["pct_b"].to_numpy(), f"ci_low_{b}": j["lo_b"].to_numpy(),
        f"ci_high_{b}": j["hi_b"].to_numpy(), f"n_animals_{b}": j["n_b"].to_numpy(),
        f"ratio_{a}_over_{b}": np.exp(diff).to_numpy(), "ratio_ci_low": np.exp(diff - q * se).to_numpy(),
        "ratio_ci_high": np.exp(diff + q * se).to_numpy(),
        "p_sex_difference": np.asarray(2 * sps.t.sf(np.abs(diff / se), df)), "df": np.asarray(df),
    })
    return out


def quality_covariates(measurements: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Image-quality covariates of the synapse model: log measured SNR and its square.

    The measured SNR of each image (``measured_snr``, :mod:`analysis.measure.quality`) explains about
    half of the detector's per-image error (puncta are missed in noisy images, so measured
    density falls with SNR; ``benchmarks/calibrate_e2e.py``).  Imaging quality is not set by
    the treatment, so adjusting for it removes that error from the comparison of groups
    without biasing it; a quadratic in log SNR follows the curved loss at low SNR.

    Returns
    -------
    table : DataFrame
        ``measurements`` with ``log_measured_snr`` and ``log_measured_snr_sq`` added.
    names : list of str
        The covariate columns (empty when the table has no usable ``measured_snr``).
    """
    if "measured_snr" not in measurements:
        return measurements, []
    snr = pd.to_numeric(measurements["measured_snr"], errors="coerce")
    if not (snr > 0).any():
        return measurements, []
    x = np.log(snr.where(snr > 0))
    out = measurements.assign(log_measured_snr=x, log_measured_snr_sq=(x - x.mean()) ** 2)
    return out, ["log_measured_snr", "log_measured_snr_sq"]


def snr_adjusted_spine_contrasts(measurements: pd.DataFrame, *, primary: str | None = None,
                                 position: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Sensitivity analysis of the spine model: the same fit with each image's log measured SNR
    as a covariate.

    Two-photon imaging quality changes between sessions of the same dendrites (laser power at
    the focus, the cranial window's clarity); the detector finds fewer spines in a noisier
    session, so such changes add to the session-to-session noise of each position's density,
    which the position effect cannot absorb.  The image's measured SNR
    (:func:`analysis.measure.spine_quality.spine_image_snr`) follows the imaging: adjusting for
    it (one linear term in log SNR, centred) narrows the intervals when the quality varied
    and widens them a little when it did not (``benchmarks/calibrate_spines_e2e.py``,
    RESULTS.md session 23), so the report keeps the unadjusted model as its primary
    analysis and gives this one beside it.  It assumes the treatment does not change the
    measured SNR itself (e.g. by shrinking spine heads): ``spine_quality_balance.csv`` shows
    whether the groups' SNR differed.

    Parameters
    ----------
    measurements : DataFrame
        Spine image rows with ``spine_density_per_um`` and ``measured_snr``.
    primary : str, optional
        The primary group (:func:`session_contrasts`).
    position : str, optional
        Column of the imaged position (:func:`fit_synapse_lmm`).

    Returns
    -------
    contrasts : DataFrame
        :func:`session_contrasts` of the adjusted fit, with ``within_position_sd_log_snr`` (the
        SD of log measured SNR about each position's mean: how much the imaging varied between
        sessions of the same dendrites; about 0.10 on the simulator's sessions imaged alike,
        where it is the estimate's own noise) and ``snr_slope`` / ``snr_slope_se`` (change in
        log density per unit log SNR), ``converged`` and the fit's ``warnings``.  Empty when
        fewer than 3 images have a measured SNR.
    covariates : DataFrame or None
        The covariate's coefficient (:attr:`SynapseFit.covariates`).
    """
    m, names = quality_covariates(measurements)  # (its square is not used here)
    if "log_measured_snr" not in names or int(m["log_measured_snr"].notna().sum()) < 3:
        return pd.DataFrame(), None
    fit = fit_synapse_lmm(m, SPINE_VALUE, position=position, covariates=["log_measured_snr"])
    con = session_contrasts(fit, primary=primary)
    keys = ["animal_id", *([position] if position is not None and position in m else [])]
    dev = m["log_measured_snr"] - m.groupby(keys)["log_measured_snr"].transform("mean")
    multi = m.groupby(keys)["log_measured_snr"].transform("count") > 1
    sd = float(dev[multi].std(ddof=1)) if int(multi.sum()) > 1 else float("nan")
    slope = fit.covariates.set_index("covariate").loc["log_measured_snr"] if fit.covariates is not None else None
    con = con.assign(within_position_sd_log_snr=sd,
                     snr_slope=float(slope["estimate"]) if slope is not None else np.nan,
                     snr_slope_se=float(slope["se"]) if slope is not None else np.nan,
                     converged=fit.converged, warnings="; ".join(fit.warnings))
    return con, fit.covariates


def false_detection_corrected(measurements: pd.DataFrame, value: str = "puncta_density_per_100um2"
                              ) -> tuple[pd.DataFrame, bool]:
    """Measured density minus the false detections expected at each image's SNR.

    Every image's spike-in (:func:`analysis.measure.quality.spike_in_recall`) counts the
    puncta the detector reports in a sign-flipped surrogate of the image that are neither
    spikes nor its own puncta: the false detections of noise, expressed as
    ``est_precision``.  Their density, ``(1 - est_precision) x density``, is a property of
    the imaging (it falls with the measured SNR), not of the tissue: a constant count per
    area that shrinks every ratio between groups towards 1 (a 13 % loss is measured as about
    12 %).  One image's estimate rests on a few dozen spikes, so it is not subtracted as
    such: the false-detection density is regressed on log measured SNR and its square over
    all images of the table (ordinary least squares, fitted values clipped at 0) and the
    fitted value is subtracted from each image's density.  Chosen by
    ``benchmarks/calibrate_e2e.py`` (bank calibration, see benchmarks/RESULTS.md).

    Parameters
    ----------
    measurements : DataFrame
        Image rows with ``value``, ``est_precision`` and ``measured_snr``.
    value : str
        The density column.

    Returns
    -------
    table : DataFrame
        ``measurements`` with ``value`` corrected and the subtracted density in
        ``false_detections_per_100um2`` (or unchanged, see ``applied``).
    applied : bool
        False, and the table unchanged, when a row with a density lacks a finite precision
        or SNR, when fewer than 10 rows have all three, or when a corrected density would not
        be positive (the correction is then not trusted; logged).  Rows without a density
        (which the model leaves out) stay as they are.

    Examples
    --------
    >>> t = pd.DataFrame({"d": [40.0, 40, 40, 40, 40, 40, 40, 40, 40, 40],
    ...                   "est_precision": [0.95] * 10, "measured_snr": [8.0] * 10})
    >>> out, applied = false_detection_corrected(t, "d")
    >>> applied, round(float(out["d"].iloc[0]), 6)
    (True, 38.0)
    """
    need = ("est_precision", "measured_snr", value)
    if not all(c in measurements for c in need):
        return measurements, False
    d = pd.to_numeric(measurements[value], errors="coerce")
    prec = pd.to_numeric(measurements["est_precision"], errors="coerce")
    snr = pd.to_numeric(measurements["measured_snr"], errors="coerce")
    has = np.isfinite(d.to_numpy(float))  # rows without a density do not enter the model
    ok = has & np.isfinite(prec.to_numpy(float)) & (snr.to_numpy(float) > 0)
    if not ok[has].all() or ok.sum() < 10:
        log.info("false-detection correction not applied: %d of %d images with a density have an estimated "
                 "precision and a measured SNR", int(ok.sum()), int(has.sum()))
        return measurements, False
    x = np.log(snr.to_numpy(float)[ok])
    design = np.column_stack([np.ones_like(x), x, (x - x.mean()) ** 2])
    false_density = (1.0 - prec.to_numpy(float)[ok]) * d.to_numpy(float)[ok]
    coef, *_ = np.linalg.lstsq(design, false_density, rcond=None)
    fitted = np.full(len(d), np.nan)
    fitted[ok] = np.clip(design @ coef, 0.0, None)
    corrected = d.to_numpy(float) - fitted
    if not (corrected[ok] > 0).all():
        log.warning("false-detection correction not applied: it would leave %d image(s) without puncta",
                    int((corrected[ok] <= 0).sum()))
        return measurements, False
    return measurements.assign(**{value: corrected, "false_detections_per_100um2": fitted}), True


def fit_study(measurements_path: str, out_dir: str, value: str = "puncta_density_per_100um2", *,
              primary: str | None = None, adjust_for_quality: bool = True,
              cells_path: str | None = None, tracks_path: str | None = None) -> dict[str, str]:
    """Fit the longitudinal synapse model to a measurements table and write its tidy tables.

    ``primary`` names the pre-specified primary group (tested first, see
    :func:`session_contrasts`); with ``adjust_for_quality`` the per-image measured SNR enters
    the synapse model as a covariate (:func:`quality_covariates`; its coefficients are written
    to ``synapse_lmm_covariates.csv``), and the spine model is also fitted with it as a
    sensitivity analysis (``spine_contrasts_snr_adjusted.csv``,
    :func:`snr_adjusted_spine_contrasts`; the unadjusted spine model stays the primary one).

    Only longitudinal synapse images (no microglia channel) enter the model.  Written into
    ``out_dir``: ``synapse_session_means.csv`` (animal x session), ``synapse_lmm_coefficients.csv``,
    ``synapse_lmm_variance.csv`` (with ``converged`` and any fitting warnings) and
    ``synapse_contrasts.csv``, ``synapse_lmm_diagnostics.csv`` (residual checks) with
    ``synapse_lmm_residuals.csv`` and ``synapse_lmm_animal_effects.csv`` (for the figure),
    ``synapse_trend.csv`` (the parametric dose x time model, :mod:`analysis.stats.trend`), and
    where the design allows ``synapse_mechanism.csv``, ``synapse_recovery.csv``,
    ``synapse_dose_response.csv`` and ``microglia_contrasts.csv`` (from the per-cell table
    ``cells_path``, by default ``cells.parquet`` beside the measurements).

    Returns
    -------
    dict
        Table name -> path written.
    """
    from analysis.errors import InputError, Problem
    from analysis.io import normalise_vocabulary

    everything = pd.read_parquet(measurements_path)
    # the models' spelling of groups (``Vehicle`` -> ``vehicle``), as `analysis fit` does
    everything, problems = normalise_vocabulary(everything, str(measurements_path))
    if problems:
        raise InputError(problems)
    out = Path(out_dir)
    m = synapse_rows(everything, value)
    paths: dict[str, Path] = {}
    if len(m):
        paths.update(_fit_synapse(m, value, out, primary=primary, adjust_for_quality=adjust_for_quality))
    else:
        log.info("no synapse density (%s) in %s: the synapse model is skipped", value, measurements_path)
    spines = synapse_rows(everything, SPINE_VALUE)
    if len(spines):
        paths.update(_fit_spines(spines, out, primary=primary, adjust_for_quality=adjust_for_quality))
    tracks = Path(tracks_path) if tracks_path is not None else Path(measurements_path).with_name("spine_tracks.parquet")
    if tracks.exists():
        paths.update(_fit_turnover(pd.read_parquet(tracks), everything, out, adjust_for_quality=adjust_for_quality))
    cells_path = Path(cells_path) if cells_path is not None else Path(measurements_path).with_name("cells.parquet")
    if "microglia_count" in everything and everything["microglia_count"].notna().any() and cells_path.exists():
        paths.update(_fit_microglia(everything, pd.read_parquet(cells_path), out))
    if not paths:
        raise InputError([Problem(str(measurements_path), f"nothing to fit: no image has {value}, a spine density or "
                                  "a microglia count; check that the sample sheet assigns synapse_channel, "
                                  "dendrite_channel or microglia_channel and that quantify measured some images "
                                  "(failures.csv)")])
    return {k: str(v) for k, v in paths.items()}


#: Image-level readout of the two-photon spine arm (:mod:`analysis.measure.spines`).
SPINE_VALUE = "spine_density_per_um"
#: Sheet column naming the imaged position of the spine arm (the same dendrites every session;
#: :mod:`analysis.stats.turnover` follows spines within it too).
SPINE_POSITION = "field"


def _fit_spines(m: pd.DataFrame, out: Path, *, primary: str | None, adjust_for_quality: bool = True
                ) -> dict[str, Path]:
    """Spine density over sessions: the longitudinal model of :func:`fit_synapse_lmm` on log
    spines per um (animal and animal x session effects, and a position effect where the sheet's
    ``field`` names the imaged position: the same dendrites every session), percent change
    from baseline and versus vehicle, the primary group tested first; and the images' quality
    per group and session against vehicle (``spine_quality_balance.csv``,
    :func:`analysis.stats.diagnostics.quality_balance`) when the rows carry it; with
    ``adjust_for_quality`` also the sensitivity analysis adjusted for each image's measured SNR
    (``spine_contrasts_snr_adjusted.csv``, :func:`snr_adjusted_spine_contrasts`)."""
    from analysis.io.files import write_csv

    fit = fit_synapse_lmm(m, SPINE_VALUE, position=SPINE_POSITION if SPINE_POSITION in m else None)
    paths = {"spine_session_means": out / "spine_session_means.csv",
             "spine_coefficients": out / "spine_lmm_coefficients.csv",
             "spine_variance": out / "spine_lmm_variance.csv",
             "spine_contrasts": out / "spine_contrasts.csv"}
    write_csv(session_means(m, SPINE_VALUE), paths["spine_session_means"])
    write_csv(fit.coefficients, paths["spine_coefficients"])
    write_csv(fit.variance_components.assign(converged=fit.converged, warnings="; ".join(fit.warnings)),
              paths["spine_variance"])
    write_csv(session_contrasts(fit, primary=primary), paths["spine_contrasts"])
    # did the detector see the groups alike? the images' spike-in recall (points) and measured
    # SNR, each treated group against its vehicle per session (analysis.stats.diagnostics)
    from analysis.stats.diagnostics import quality_balance

    balance = [quality_balance(m, "spike_in_recall", scale=100.0), quality_balance(m, "measured_snr")]
    balance = [b for b in balance if len(b)]
    if balance:
        paths["spine_quality_balance"] = out / "spine_quality_balance.csv"
        write_csv(pd.concat(balance, ignore_index=True), paths["spine_quality_balance"])
    # sensitivity: the same model adjusted for each image's measured SNR (imaging that changed
    # between sessions of the same dendrites)
    if adjust_for_quality and "measured_snr" in m:
        try:
            adjusted, _ = snr_adjusted_spine_contrasts(m, primary=primary,
                                                       position=SPINE_POSITION if SPINE_POSITION in m else None)
        except (ValueError, np.linalg.LinAlgError) as exc:  # a model the data cannot carry: said, not fatal
            log.warning("the SNR-adjusted spine model could not be fitted (%s); the unadjusted one stands", exc)
            adjusted = pd.DataFrame()
        if len(adjusted):
            paths["spine_contrasts_snr_adjusted"] = out / "spine_contrasts_snr_adjusted.csv"
            write_csv(adjusted, paths["spine_contrasts_snr_adjusted"])
    return paths


def _fit_turnover(tracks: pd.DataFrame, measurements: pd.DataFrame, out: Path, *,
                  adjust_for_quality: bool = True) -> dict[str, Path]:
    """Spine turnover and survival per animal, and each treated group minus vehicle
    (:mod:`analysis.stats.turnover`); the groups are the measurements' (by ``image_id``); with
    ``adjust_for_quality`` and a measured SNR per image, also the sensitivity analysis adjusted
    for the change in measured SNR between sessions (``spine_turnover_contrasts_snr_adjusted.csv``,
    :func:`analysis.stats.turnover.snr_adjusted_turnover`)."""
    from analysis.io.files import write_csv
    from analysis.stats.turnover import snr_adjusted_turnover, spine_survival, spine_turnover, versus_vehicle

    if tracks.empty or "image_id" not in tracks:
        return {}
    groups = measurements[["image_id", *GROUP_COLUMNS]].drop_duplicates("image_id")
    tracks = tracks.drop(columns=[c for c in GROUP_COLUMNS if c in tracks]).merge(groups, on="image_id", how="inner")
    turnover, survival = spine_turnover(tracks), spine_survival(tracks)
    contrasts = pd.concat([versus_vehicle(turnover, v, ["from_day", "day"]).assign(measure=v)
                           for v in ("fraction_lost", "fraction_gained")]
                          + [versus_vehicle(survival, "survival", ["day"]).assign(measure="survival")],
                          ignore_index=True)
    paths = {"spine_turnover": out / "spine_turnover.csv", "spine_survival": out / "spine_survival.csv",
             "spine_turnover_contrasts": out / "spine_turnover_contrasts.csv"}
    write_csv(turnover, paths["spine_turnover"])
    write_csv(survival, paths["spine_survival"])
    write_csv(contrasts, paths["spine_turnover_contrasts"])
    if adjust_for_quality and "measured_snr" in measurements:
        adjusted = snr_adjusted_turnover(tracks, measurements)
        if len(adjusted):
            paths["spine_turnover_contrasts_snr_adjusted"] = out / "spine_turnover_contrasts_snr_adjusted.csv"
            write_csv(adjusted, paths["spine_turnover_contrasts_snr_adjusted"])
    return paths


def synapse_rows(measurements: pd.DataFrame, value: str = "puncta_density_per_100um2") -> pd.DataFrame:
    """The images the synapse model is fitted to: those with ``value``.

    When the study also has multi-channel terminal fields (a microglia channel beside the
    synapse channel, imaged at sacrifice) and dedicated synapse fields, only the dedicated
    fields enter (the longitudinal series); a study with synapse density only in its
    multi-channel images uses those.
    """
    if value not in measurements:
        return measurements.iloc[0:0]
    has = measurements[measurements[value].notna()]
    if "microglia_channel" in has:
        dedicated = has[has["microglia_channel"].isna()]
        if len(dedicated):
            return dedicated
    return has


def _fit_synapse(m: pd.DataFrame, value: str, out: Path, *, primary: str | None,
                 adjust_for_quality: bool) -> dict[str, Path]:
    """The synapse part of :func:`fit_study`; returns the tables written."""
    from analysis.io.files import write_csv

    covariates: list[str] = []
    adjustment = "none"
    if adjust_for_quality:
        m, corrected = false_detection_corrected(m, value)
        m, covariates = quality_covariates(m)
        done = (["false detections expected at each image's measured SNR subtracted from its density"]
                if corrected else []) + (["log measured SNR and its square as covariates"] if covariates else [])
        adjustment = "; ".join(done) or "none (no usable quality columns)"
    fit = fit_synapse_lmm(m, value, covariates=covariates)
    paths = {
        "session_means": out / "synapse_session_means.csv",
        "coefficients": out / "synapse_lmm_coefficients.csv",
        "variance": out / "synapse_lmm_variance.csv",
        "contrasts": out / "synapse_contrasts.csv",
    }
    write_csv(session_means(m, value), paths["session_means"])
    write_csv(fit.coefficients, paths["coefficients"])
    write_csv(fit.variance_components.assign(converged=fit.converged, warnings="; ".join(fit.warnings),
                                             quality_adjustment=adjustment), paths["variance"])
    contrasts = session_contrasts(fit, primary=primary)
    write_csv(contrasts, paths["contrasts"])
    if fit.covariates is not None:
        paths["covariates"] = out / "synapse_lmm_covariates.csv"
        write_csv(fit.covariates, paths["covariates"])
    mech = mechanism_contrasts(fit, **_primary_treatment(fit, primary))
    if len(mech):
        paths["mechanism"] = out / "synapse_mechanism.csv"
        write_csv(mech, paths["mechanism"])
    try:
        by_sex = sex_differences(m, value, covariates=covariates)
    except ValueError as exc:
        log.info("sex x treatment analysis skipped: %s", exc)
    else:
        paths["sex"] = out / "synapse_sex.csv"
        write_csv(by_sex, paths["sex"])
    rec = recovery(contrasts)
    if len(rec):
        paths["recovery"] = out / "synapse_recovery.csv"
        write_csv(rec, paths["recovery"])
    from analysis.stats.diagnostics import diagnostics_summary, lmm_residuals
    from analysis.stats.trend import fit_synapse_trend

    paths["diagnostics"] = out / "synapse_lmm_diagnostics.csv"
    write_csv(diagnostics_summary(fit), paths["diagnostics"])
    residuals, effects = lmm_residuals(fit)
    paths["residuals"] = out / "synapse_lmm_residuals.csv"
    write_csv(residuals, paths["residuals"])
    paths["animal_effects"] = out / "synapse_lmm_animal_effects.csv"
    write_csv(effects.rename_axis("animal_id").reset_index(), paths["animal_effects"])
    try:
        # the primary group's compound and genotype (diazepam in WT when no plan names one)
        pt = _primary_treatment(fit, primary)
        trend = fit_synapse_trend(m, value, **({"genotype": pt["reference_genotype"], "compound": pt["compound"]}
                                               if pt else {}))
    except ValueError as exc:  # e.g. a study without vehicle or diazepam animals
        log.warning("dose x time trend model skipped: %s", exc)
    else:
        paths["trend"] = out / "synapse_trend.csv"
        write_csv(trend, paths["trend"])
    dose_tables = dose_responses(m, value)
    if len(dose_tables):
        paths["dose_response"] = out / "synapse_dose_response.csv"
        write_csv(dose_tables, paths["dose_response"])
        paths["dose_response_curve"] = out / "synapse_dose_response_curve.csv"
        write_csv(dose_tables.attrs["curves"], paths["dose_response_curve"])
        paths["dose_response_animals"] = out / "synapse_dose_response_animals.csv"
        write_csv(dose_tables.attrs["animals"], paths["dose_response_animals"])
    return paths


def _fit_microglia(measurements: pd.DataFrame, cells: pd.DataFrame, out) -> dict[str, object]:
    """Microglia endpoints of a quantified study: density, engulfment and morphology tables."""
    from analysis.io.files import write_csv

    term = measurements[measurements["microglia_count"].notna()].copy()
    if term.empty or cells.empty:
        return {}
    if "field_area_mm2" not in term:
        term["field_area_mm2"] = term["microglia_field_area_mm2"]
    sheet_cols = ["image_id", "animal_id", *GROUP_COLUMNS, "day"]
    per_cell = cells.merge(term[sheet_cols], on="image_id", how="inner")
    interior = per_cell[~per_cell["touches_border"].astype(bool)]
    tables = []
    dens, d1 = fit_count_endpoint(term, "microglia_count", exposure="field_area_mm2")
    tables.append(dens.assign(endpoint="microglia density (rate ratio)", dispersion=d1["dispersion"]))
    if "engulfed_puncta" in per_cell:
        eng, d2 = fit_count_endpoint(per_cell, "engulfed_puncta")
        tables.append(eng.assign(endpoint="engulfed puncta per cell (rate ratio)", dispersion=d2["dispersion"]))
    for col in ("skeleton_length_um", "branch_points", "sholl_auc", "cd68_area_fraction"):
        if col in interior and (interior[col] > 0).sum() > 10:
            tables.append(fit_morphology_endpoint(interior, col).assign(endpoint=f"{col} (ratio of geometric means)"))
    path = out / "microglia_contrasts.csv"
    write_csv(pd.concat(tables, ignore_index=True), path)
    return {"microglia": path}


def dose_responses(measurements: pd.DataFrame, value: str = "puncta_density_per_100um2") -> pd.DataFrame:
    """:func:`fit_dose_response` for every genotype x compound x duration with >= 3 doses and vehicle.

    ``attrs["curves"]`` holds the fitted curves with their bootstrap bands and
    ``attrs["animals"]`` the per-animal changes they were fitted to (``compound_arm`` names
    the compound whose fit a vehicle animal entered).
    """
    ch = animal_changes(measurements, value)
    tables, curves, points = [], [], []
    for (genotype, compound, days), sub in ch[ch["compound"] != VEHICLE].groupby(
        ["genotype", "compound", "treatment_days"]
    ):
        if sub["dose_mg_kg"].nunique() < 3:
            continue
        veh = ch[(ch["genotype"] == genotype) & (ch["compound"] == VEHICLE) & (ch["treatment_days"] == days)]
        if veh.empty:
            continue
        both = pd.concat([veh, sub])
        t = fit_dose_response(both)
        keys = {"genotype": genotype, "compound": compound, "treatment_days": days}
        tables.append(t.assign(**keys))
        curves.append(t.attrs["curve"].assign(**keys))
        points.append(both.assign(compound_arm=compound))
    out = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    out.attrs["curves"] = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    out.attrs["animals"] = pd.concat(points, ignore_index=True) if points else pd.DataFrame()
    return out


def animal_changes(
    measurements: pd.DataFrame, value: str = "puncta_density_per_100um2", *, day: str | int = "end_of_dosing"
) -> pd.DataFrame:
    """One row per animal: log ratio of ``value`` at a session to the animal's baseline.

    Parameters
    ----------
    measurements : DataFrame
        Image-level longitudinal rows.
    value : str
        Density column.
    day : "end_of_dosing" or int
        The session compared with baseline (the last dosing day of each animal by default).

    Returns
    -------
    DataFrame
        ``animal_id``, group columns, ``day``, ``log_ratio`` and ``pct_change_from_baseline`` (field means
        per session first, so each animal counts once).  Fields of zero density are left out
        of the session means, as in :func:`fit_synapse_lmm` (a warning says how many; an animal
        whose whole session was zero drops out, with a warning naming it).
    """
    # baseline day among the measured fields, zeros included: an all-zero baseline is missing, not later
    first_day = measurements.dropna(subset=[value]).groupby("animal_id")["day"].min()
    zero = measurements[value] == 0
    if zero.any():
        log.warning("animal changes: %d field(s) with zero %s excluded from the session means", int(zero.sum()),
                    value)
    s = session_means(measurements[~zero], value)
    base = s.loc[s["day"] == s["animal_id"].map(first_day), ["animal_id", value]].rename(columns={value: "baseline"})
    target = s[s["day"] == s["treatment_days"]] if day == "end_of_dosing" else s[s["day"] == int(day)]
    out = target.merge(base, on="animal_id")
    out["log_ratio"] = np.log(out[value] / out["baseline"])
    out["pct_change_from_baseline"] = 100 * np.expm1(out["log_ratio"])
    wanted = measurements["day"] == (measurements["treatment_days"] if day == "end_of_dosing" else int(day))
    lost = sorted(set(measurements.loc[wanted, "animal_id"]) - set(out["animal_id"]))
    if lost:
        log.warning("animal changes: no non-zero field at baseline or at the compared session for animal(s) %s; "
                    "left out", ", ".join(map(str, lost)))
    return out.drop(columns=["n_fields"]).reset_index(drop=True)


def _emax(d: np.ndarray, e0: float, emax: float, ed50: float) -> np.ndarray:
    return e0 + emax * d / (d + ed50)


def fit_dose_response(
    changes: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> pd.DataFrame:
    """Emax fit of the end-of-dosing change against dose, with an animal-level bootstrap.

    The model on the log-ratio scale is ``E0 + Emax * d / (d + ED50)`` (Hill coefficient 1;
    five dose levels do not identify a free Hill slope).  Confidence intervals are
    percentiles of ``n_boot`` bootstrap refits that resample animals within each dose.  A
    log-linear trend test (ordinary least squares of the log ratio on log(dose + d0), with d0
    half the lowest non-zero dose, one value per animal) is reported alongside.

    Parameters
    ----------
    changes : DataFrame
        :func:`animal_changes` rows of one genotype, compound and dosing duration, with its
        vehicle animals (dose 0).

    Returns
    -------
    DataFrame
        One row per parameter (``e0_pct``, ``emax_pct``, ``ed50_mg_kg``, ``trend_slope``):
        ``estimate``, ``ci_low``, ``ci_high``, ``p_value`` (trend only) and ``n_animals``.
        Percent parameters are converted from the log-ratio scale.  ``attrs["curve"]`` holds
        the fitted curve on a dose grid with its pointwise bootstrap band (``dose_mg_kg``,
        ``pct_change``, ``ci_low``, ``ci_high``).
    """
    from scipy.optimize import curve_fit

    d = changes["dose_mg_kg"].to_numpy(float)
    y = changes["log_ratio"].to_numpy(float)
    doses = np.unique(d)
    positive = doses[doses > 0]
    p0 = [float(np.mean(y[d == 0])) if (d == 0).any() else 0.0, float(np.min([np.mean(y[d == x]) for x in doses])), float(np.median(positive))]
    bounds = ([-np.inf, -np.inf, positive.min() / 100], [np.inf, np.inf, positive.max() * 100])

    def fit(dd: np.ndarray, yy: np.ndarray) -> np.ndarray:
        par, _ = curve_fit(_emax, dd, yy, p0=p0, bounds=bounds, maxfev=20000)
        return par

    est = fit(d, y)
    rng = np.random.default_rng(seed)
    idx_by_dose = [np.flatnonzero(d == x) for x in doses]
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(ix, len(ix), replace=True) for ix in idx_by_dose])
        try:
            boots.append(fit(d[idx], y[idx]))
        except RuntimeError:
            continue
    boots = np.array(boots)
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    d0 = positive.min() / 2
    x = np.log(d + d0)
    slope, intercept, r, p, se = sps.linregress(x, y)
    tcrit = sps.t.ppf(1 - alpha / 2, len(y) - 2)
    to_pct = lambda v: 100 * np.expm1(v)  # noqa: E731
    rows = [
        {"parameter": "e0_pct", "estimate": to_pct(est[0]), "ci_low": to_pct(lo[0]), "ci_high": to_pct(hi[0])},
        {"parameter": "emax_pct", "estimate": to_pct(est[1]), "ci_low": to_pct(lo[1]), "ci_high": to_pct(hi[1])},
        {"parameter": "ed50_mg_kg", "estimate": est[2], "ci_low": lo[2], "ci_high": hi[2]},
        {"parameter": "trend_slope", "estimate": slope, "ci_low": slope - tcrit * se, "ci_high": slope + tcrit * se,
         "p_value": p},
    ]
    out = pd.DataFrame(rows)
    out["n_animals"] = len(y)
    out["n_boot"] = len(boots)
    # the fitted curve with its pointwise bootstrap band, for figures
    grid = np.concatenate([[0.0], np.geomspace(positive.min() / 4, positive.max() * 1.5, 60)])
    band = np.percentile([_emax(grid, *b) for b in boots], [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    out.attrs["curve"] = pd.DataFrame({"dose_mg_kg": grid, "pct_change": to_pct(_emax(grid, *est)),
                                       "ci_low": to_pct(band[0]), "ci_high": to_pct(band[1])})
    return out


def _cell_index(fit: SynapseFit) -> tuple[dict[tuple[str, int], int], dict[str, int], np.ndarray, np.ndarray]:
    coef = fit.coefficients.reset_index(drop=True)
    cov = fit.fe_cov()
    idx = {(r.group, int(r.day)): i for i, r in coef.iterrows()}
    # baseline sessions are before the first dose (day < 0); groups without one (cross-sectional) have none
    baseline = {g: int(d) for g, d in coef.groupby("group")["day"].min().items() if d < 0}
    return idx, baseline, coef["estimate"].to_numpy(), cov


def change_difference(
    fit: SynapseFit, group_a: str, group_b: str, vehicle_a: str, vehicle_b: str, day: int, *, alpha: float = 0.05
) -> dict[str, float]:
    """Ratio of two vehicle-corrected changes from baseline at one session (an interaction).

    ``(a - vehicle_a) - (b - vehicle_b)`` on the log scale, each term a change from its own
    baseline: with ``a`` = TSPO-knockout diazepam and ``b`` = wild-type diazepam this is the
    genotype x treatment interaction; with ``a`` = XBD173 and ``b`` = diazepam (same vehicle)
    the compound comparison.

    Returns
    -------
    dict
        ``pct_difference`` (100 x (ratio - 1)) with ``ci_low``, ``ci_high`` and ``p_value``.
    """
    idx, base, beta, cov = _cell_index(fit)
    L = np.zeros(len(beta))
    for g, sign in ((group_a, 1), (vehicle_a, -1), (group_b, -1), (vehicle_b, 1)):
        L[idx[(g, day)]] += sign
        if g in base:  # a change from the group's own baseline (none in a cross-sectional design)
            L[idx[(g, base[g])]] -= sign
    est, se = float(L @ beta), float(np.sqrt(L @ cov @ L))
    z = sps.t.ppf(1 - alpha / 2, fit.df_contrast)
    return {
        "pct_difference": 100 * np.expm1(est),
        "ci_low": 100 * np.expm1(est - z * se),
        "ci_high": 100 * np.expm1(est + z * se),
        "p_value": float(2 * sps.t.sf(abs(est / se), fit.df_contrast)) if se > 0 else np.nan,
        "df": fit.df_contrast,
    }


def mechanism_contrasts(fit: SynapseFit, *, dose_mg_kg: float = 5.0, days: int = 7, compound: str = "diazepam",
                        reference_genotype: str = WILD_TYPE) -> pd.DataFrame:
    """Genotype x treatment and compound comparisons at the end of dosing, from the groups present.

    With the reference treatment ``compound`` at ``dose_mg_kg`` for ``days`` (the study's
    primary group, e.g. diazepam 5 mg/kg x 7 d):

    * for every other genotype with that treatment and its own vehicle (e.g. the TSPO
      knockout): the genotype x treatment interaction, the treatment's vehicle-corrected change
      in that genotype over the one in ``reference_genotype`` (:func:`change_difference`);
    * for every other compound given to ``reference_genotype`` for the same days (e.g. XBD173):
      its vehicle-corrected change over the reference treatment's.

    Nothing is assumed about which compounds or genotypes a study has; a study without such
    groups gets an empty table.
    """
    cells = fit.cells.drop_duplicates("group").set_index("group")
    groups = set(cells.index)
    ref = group_label(reference_genotype, compound, dose_mg_kg, days)
    ref_veh = group_label(reference_genotype, VEHICLE, 0.0, days)
    rows = []
    if {ref, ref_veh} <= groups:
        for genotype in sorted(set(cells["genotype"]) - {reference_genotype}):
            g, g_veh = group_label(genotype, compound, dose_mg_kg, days), group_label(genotype, VEHICLE, 0.0, days)
            if {g, g_veh} <= groups:
                rows.append({"contrast": f"{genotype} vs {reference_genotype}: {compound} {dose_mg_kg:g} mg/kg effect "
                                         "(interaction)",
                             **change_difference(fit, g, ref, g_veh, ref_veh, days)})
        for g in sorted(groups):
            r = cells.loc[g]
            if (r["genotype"] == reference_genotype and r["compound"] not in (VEHICLE, compound)
                    and int(r["treatment_days"]) == int(days)):
                rows.append({"contrast": f"{g} vs {ref} (compound)",
                             **change_difference(fit, g, ref, ref_veh, ref_veh, days)})
    return pd.DataFrame(rows)


def _primary_treatment(fit: SynapseFit, primary: str | None) -> dict[str, object]:
    """``compound``, ``dose_mg_kg``, ``days`` of the primary group (the defaults when absent)."""
    cells = fit.cells.drop_duplicates("group").set_index("group")
    if primary and primary in cells.index:
        r = cells.loc[primary]
        return {"compound": r["compound"], "dose_mg_kg": float(r["dose_mg_kg"]), "days": int(r["treatment_days"]),
                "reference_genotype": r["genotype"]}
    return {}


def recovery(contrasts: pd.DataFrame) -> pd.DataFrame:
    """Recovery after withdrawal per treated group, from :func:`session_contrasts`.

    Returns
    -------
    DataFrame
        One row per group with withdrawal sessions: ``n_animals`` (the fewest at any of
        those sessions), ``pct_at_end_of_dosing``,
        ``first_recovered_day_after_last_dose`` (first session after the last dose whose 95 %
        CI versus vehicle includes 0 and stays so afterwards; NaN when none) and
        ``recovery_tau_days`` (time constant of an exponential ``a exp(-t / tau)`` fitted by
        weighted least squares to the log effect versus vehicle from the end of dosing on,
        NaN when the fit is not identified).

    Notes
    -----
    A CI that includes 0 is absence of evidence, not evidence of recovery: with few animals
    in the withdrawal cohort it happens early.  Read it together with the effect sizes.
    """
    from scipy.optimize import curve_fit

    rows = []
    if "pct_vs_vehicle" not in contrasts:  # (no treated group has a vehicle group to compare with)
        return pd.DataFrame(rows)
    for g, sub in contrasts[contrasts["pct_vs_vehicle"].notna()].groupby("group"):
        z = sps.t.ppf(0.975, sub["df"].iloc[0]) if "df" in sub else sps.norm.ppf(0.975)
        after = sub[sub["days_since_last_dose"] >= 0].sort_values("days_since_last_dose")
        if (after["days_since_last_dose"] > 0).sum() < 2:
            continue
        includes0 = (after["pct_vs_vehicle_ci_low"] <= 0) & (after["pct_vs_vehicle_ci_high"] >= 0)
        withdrawal = after[after["days_since_last_dose"] > 0]
        ok = includes0[withdrawal.index]
        first = np.nan
        for k in range(len(ok)):
            if ok.iloc[k:].all():
                first = float(withdrawal["days_since_last_dose"].iloc[k])
                break
        t = after["days_since_last_dose"].to_numpy(float)
        y = np.log1p(after["pct_vs_vehicle"].to_numpy() / 100)
        se = (np.log1p(after["pct_vs_vehicle_ci_high"] / 100) - np.log1p(after["pct_vs_vehicle_ci_low"] / 100)).to_numpy() / (2 * z)
        tau = np.nan
        try:
            (a, tau_fit), _ = curve_fit(lambda tt, a, tau: a * np.exp(-tt / tau), t, y, p0=[y[0], 20.0],
                                        sigma=se, absolute_sigma=True, bounds=([-1, 0.5], [1, 1000]), maxfev=10000)
            if a < 0:
                tau = float(tau_fit)
        except RuntimeError:
            pass
        rows.append({
            "group": g, "n_animals": int(after["n_animals"].min()),
            "pct_at_end_of_dosing": float(after["pct_vs_vehicle"].iloc[0]),
            "first_recovered_day_after_last_dose": first, "recovery_tau_days": tau,
        })
    return pd.DataFrame(rows)


def _terminal_cells(df: pd.DataFrame) -> pd.DataFrame:
    out = _with_group(df)
    out["cell"] = out["group"] + " @ day " + out["day"].astype(int).astype(str)
    return out


def _ratio_vs_vehicle(
    params: pd.Series, cov: pd.DataFrame, cells: pd.DataFrame, alpha: float, df_resid: float | None = None,
    sd_log: float | None = None,
) -> pd.DataFrame:
    """Ratio of each treated cell to its vehicle cell (same genotype, duration and day).

    Intervals and p values use Student's t with ``df_resid`` degrees of freedom (normal when
    None).  With ``sd_log`` (the between-animal SD on the log scale) a standardised effect
    size ``effect_size_d`` (log ratio / ``sd_log``, Cohen's d of animal means) is added, its
    interval the ratio's interval on the same scale.
    """
    q = sps.t.ppf(1 - alpha / 2, df_resid) if df_resid else sps.norm.ppf(1 - alpha / 2)
    name = {c: f"C(cell)[{c}]" for c in cells["cell"]}
    rows = []
    for r in cells.itertuples():
        if r.compound == VEHICLE:
            continue
        veh = group_label(r.genotype, VEHICLE, 0.0, r.treatment_days) + f" @ day {int(r.day)}"
        if veh not in name:
            continue
        a, b = name[r.cell], name[veh]
        est = params[a] - params[b]
        se = float(np.sqrt(cov.loc[a, a] + cov.loc[b, b] - 2 * cov.loc[a, b]))
        tstat = est / se
        p = 2 * (sps.t.sf(abs(tstat), df_resid) if df_resid else sps.norm.sf(abs(tstat)))
        row = {
            "group": r.group, "genotype": r.genotype, "compound": r.compound, "dose_mg_kg": r.dose_mg_kg,
            "treatment_days": r.treatment_days, "day": int(r.day), "n_animals": int(r.n_animals),
            "n_animals_vehicle": int(cells.loc[cells["cell"] == veh, "n_animals"].iloc[0]),
            "ratio_vs_vehicle": float(np.exp(est)), "ci_low": float(np.exp(est - q * se)),
            "ci_high": float(np.exp(est + q * se)), "p_value": float(p),
        }
        if sd_log:
            row.update({"effect_size_d": est / sd_log, "effect_size_d_ci_low": (est - q * se) / sd_log,
                        "effect_size_d_ci_high": (est + q * se) / sd_log})
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        planned = out["day"] == out["treatment_days"]
        out["planned"] = planned
        out.loc[planned, "p_holm"] = _holm(out.loc[planned, "p_value"].to_numpy())
    return out


def _per_animal(df: pd.DataFrame) -> pd.DataFrame:
    """Group keys of one row per animal (its treatment cell and sacrifice day)."""
    return df.groupby(["animal_id", "cell", "group", *GROUP_COLUMNS, "day"], sort=True)


def _cells_of(animals: pd.DataFrame) -> pd.DataFrame:
    return (animals.groupby(["cell", "group", *GROUP_COLUMNS, "day"])["animal_id"].nunique()
            .rename("n_animals").reset_index())


def fit_count_endpoint(
    table: pd.DataFrame, count: str, *, exposure: str | None = None, alpha: float = 0.05
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Counts per image or per cell, analysed per animal: quasi-Poisson GLM, ratio versus vehicle.

    The counts of each animal are summed (with their exposure: the summed ``exposure``
    column, e.g. field area, or the number of rows, e.g. cells), so the animal is the unit.
    A Poisson GLM with one rate per group x sacrifice day and ``log(exposure)`` as offset is
    fitted with its scale estimated from the Pearson chi-square (quasi-Poisson): between-animal
    variation in the rate shows up as over-dispersion and widens the intervals accordingly.
    Intervals and p values use Student's t on the residual degrees of freedom (animals minus
    groups), which keeps the error rate near nominal with 4-8 animals per group, where
    sandwich (GEE) errors are too small.  Over-dispersion is checked and reported: the Pearson
    dispersion and the p value of the chi-square test of dispersion = 1.

    Parameters
    ----------
    table : DataFrame
        Rows with the sheet columns (``animal_id``, group columns, ``day``) and ``count``.
    count : str
        Count column.
    exposure : str, optional
        Column summed per animal as exposure (default: one per row).
    alpha : float
        1 - confidence level.

    Returns
    -------
    contrasts : DataFrame
        Rate ratio of each treated group versus its vehicle at the same day, with CI,
        p value, ``planned`` (end of dosing) and Holm-adjusted ``p_holm``; n is animals.
    diagnostics : dict
        ``dispersion``, ``p_overdispersion``, ``df_resid``, ``n_animals``, ``n_observations``
        and ``family`` (``"quasi-Poisson"``).

    Examples
    --------
    With one rate per cell the estimated ratio is the ratio of the observed rates (counts over
    area), and the residual df are animals minus cells:

    >>> from analysis.sim.measurements import simulate_terminal_measurements
    >>> img, cells = simulate_terminal_measurements("small", 0)
    >>> contrasts, diag = fit_count_endpoint(img, "microglia_count", exposure="field_area_mm2")
    >>> by = img.groupby("compound")[["microglia_count", "field_area_mm2"]].sum()
    >>> rate = by["microglia_count"] / by["field_area_mm2"]
    >>> r = contrasts.set_index("group").loc["WT XBD173 10 mg/kg x 7 d"]
    >>> bool(np.isclose(r["ratio_vs_vehicle"], rate["XBD173"] / rate["vehicle"])), diag["df_resid"], diag["n_animals"]
    (True, 5.0, 10)
    """
    import statsmodels.api as sm

    df = _terminal_cells(table.dropna(subset=[count]))
    df["_exposure"] = df[exposure].astype(float) if exposure else 1.0
    animals = _per_animal(df).agg(total=(count, "sum"), exposure=("_exposure", "sum"),
                                  n_observations=(count, "size")).reset_index()
    model = smf.glm("total ~ 0 + C(cell)", data=animals, family=sm.families.Poisson(),
                    offset=np.log(animals["exposure"].to_numpy(float)))
    res = model.fit(scale="X2")
    df_resid = float(res.df_resid)
    pearson = float(res.pearson_chi2)
    dispersion = pearson / df_resid if df_resid > 0 else np.nan
    diag = {
        "dispersion": dispersion,
        "p_overdispersion": float(sps.chi2.sf(pearson, df_resid)) if df_resid > 0 else np.nan,
        "df_resid": df_resid,
        "n_animals": int(len(animals)),
        "n_observations": int(len(df)),
        "family": "quasi-Poisson",
    }
    log.info("%s: Pearson dispersion %.2f on %d df (p = %.3g)", count, dispersion, df_resid,
             diag["p_overdispersion"])
    return _ratio_vs_vehicle(res.params, res.cov_params(), _cells_of(animals), alpha, df_resid), diag


def fit_morphology_endpoint(
    table: pd.DataFrame, value: str, *, alpha: float = 0.05, zeros: str = "offset"
) -> pd.DataFrame:
    """A per-cell morphology readout, analysed per animal: mean of its log per animal, then OLS.

    Each animal contributes the mean of ``log(value)`` over its cells (so cells are not
    counted as replicates); a linear model with one mean per group x sacrifice day gives the
    ratio of each treated group's geometric mean to its vehicle's, with Student-t intervals on
    the residual degrees of freedom (animals minus groups) and a standardised effect size
    (Cohen's d: the log ratio over the between-animal SD).

    Zeros are real values of some readouts (a cell without branch points, without CD68): by
    default (``zeros="offset"``) they stay in as ``log(x + c)``, ``c`` half the smallest positive
    value of the readout (0 when there are no zeros, so the model is then plain ``log x``); with
    ``zeros="exclude"`` they are left out.  Either way they are counted (``n_zero_cells``,
    ``zero_offset`` columns) and a warning is logged.

    Returns
    -------
    DataFrame
        Ratio versus vehicle with CI, p value, ``planned``, Holm-adjusted ``p_holm``,
        ``effect_size_d`` with its CI, n as animals, ``n_zero_cells`` and ``zero_offset``.
    """
    df = _terminal_cells(table.dropna(subset=[value]))
    df["log_value"], is_zero, offset = log_with_zeros(df[value], zeros, value)
    if is_zero.any():
        log.warning("%s: %d cell(s) with value 0 %s", value, int(is_zero.sum()),
                    f"modelled as log(x + {offset:.4g})" if offset > 0 else "excluded")
    df = df[df["log_value"].notna()]
    animals = _per_animal(df)["log_value"].mean().rename("animal_mean").reset_index()
    res = smf.ols("animal_mean ~ 0 + C(cell)", data=animals).fit()
    sd = float(np.sqrt(res.scale))
    out = _ratio_vs_vehicle(res.params, res.cov_params(), _cells_of(animals), alpha, float(res.df_resid), sd)
    return out.assign(n_zero_cells=int(is_zero.sum()), zero_offset=offset)


def correlation(x: np.ndarray, y: np.ndarray, kind: str = "pearson") -> float:
    """Correlation, NaN when it is undefined (fewer than 3 pairs or a constant input)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    f = sps.pearsonr if kind == "pearson" else sps.spearmanr
    return float(f(x, y)[0])
