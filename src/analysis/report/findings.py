"""What a fitted study found, in sentences and one table: the abstract of ``reports/index.html``.

Pure functions over the tables :func:`analysis.stats.fit_study` writes (``synapse_contrasts.csv``,
``microglia_contrasts.csv``, ``synapse_trend.csv``, ``synapse_dose_response.csv``,
``synapse_recovery.csv``), so the words a reviewer reads first are generated from, and tested
against, the same numbers as the tables:

* :func:`endpoint_contrasts` puts every primary endpoint's planned contrasts into one long table
  (percent change versus vehicle with its 95 % CI, Cohen's d where the model has one, raw and
  Holm-adjusted p, n animals), with the vehicle reference rows, in design order
  (:func:`design_rank`: vehicle first, then dose, then duration, as :mod:`analysis.sim.design`
  lists its groups);
* :func:`analysis.sim.validation.add_truth` adds, for a simulated study, the true effect of the simulation's own
  truth model and whether the CI covers it;
* :func:`abstract` writes one :class:`Finding` per statement: the direction word follows the CI
  (a CI that includes 0 is "no detectable change", never a decrease), and every number in the
  sentence is a field of the finding, so tests compare the two;
* :func:`estimability` marks fits that the data do not identify (an ED50 whose CI spans more
  than two orders of magnitude or reaches a fit bound, recovery time constants at their fit
  bounds or far beyond the follow-up) as "not estimable", with the reason.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.io.vocabulary import GROUP_COLUMNS, TSPO_KO, VEHICLE, WILD_TYPE, group_label

__all__ = [
    "ENDPOINTS",
    "Endpoint",
    "Finding",
    "HEADLINE_GROUP",
    "MODEL_FORMULAS",
    "abstract",
    "animal_values",
    "design_rank",
    "group_order",
    "study_group_order",
    "direction",
    "endpoint_contrasts",
    "estimability",
    "format_ci",
    "format_p",
    "load_tables",
    "lower_label",
    "primary_table",
    "trend_findings",
    "mechanism_findings",
    "quality_caveats",
    "snr_adjusted_sentence",
]

log = logging.getLogger(__name__)

#: The pre-specified headline contrast (the published sedative arm; Shi et al. 2022).
HEADLINE_GROUP = group_label(WILD_TYPE, "diazepam", 5.0, 7)

#: Fitted tables the index reads (``processed`` file names), in the order they are linked.
TABLES: tuple[str, ...] = (
    "synapse_contrasts.csv", "spine_contrasts.csv", "microglia_contrasts.csv", "synapse_trend.csv", "synapse_dose_response.csv",
    "synapse_recovery.csv", "synapse_mechanism.csv", "synapse_lmm_variance.csv", "synapse_session_means.csv",
    "spine_quality_balance.csv", "spine_contrasts_snr_adjusted.csv", "failures.csv",
)

#: Model of each kind of endpoint, as fitted by :mod:`analysis.stats` and :mod:`analysis.stats.trend`.
MODEL_FORMULAS: dict[str, str] = {
    "synapse_lmm": ("log(density) ~ 0 + C(group x session), random intercept per animal and per animal x "
                    "session (statsmodels MixedLM, REML; analysis.stats.fit_synapse_lmm); effect versus vehicle = "
                    "(end of dosing - baseline) of the group minus the same of its vehicle group"),
    "count": ("sum of counts per animal ~ 0 + C(group x day), Poisson GLM with offset log(exposure: field "
              "area or number of cells), scale from the Pearson chi-square (quasi-Poisson; "
              "analysis.stats.fit_count_endpoint)"),
    "morphology": ("mean of log(value) over an animal's interior cells ~ 0 + C(group x day), OLS "
                   "(analysis.stats.fit_morphology_endpoint); zeros as log(x + c), c half the smallest positive value"),
    "trend": "see analysis.stats.trend.FORMULA",
    "dose_response": ("log ratio to baseline per animal = E0 + Emax d / (d + ED50), least squares, 95 % CI from "
                      "1000 animal-level bootstrap refits (analysis.stats.fit_dose_response)"),
    "recovery": ("log effect versus vehicle after the last dose = a exp(-t / tau), weighted least squares "
                 "(analysis.stats.recovery)"),
}

#: Readable names of the parameters of the dose-response and recovery fits.
PARAMETER_LABELS: dict[str, str] = {
    "e0_pct": "E0 (change at dose 0)",
    "emax_pct": "Emax (maximal change)",
    "ed50_mg_kg": "ED50 (dose of half the maximal change)",
    "trend_slope": "log-linear dose trend (slope)",
    "recovery_tau_days": "recovery time constant",
}

#: Bounds of the recovery time constant in :func:`analysis.stats.recovery` (days).
RECOVERY_TAU_BOUNDS_DAYS: tuple[float, float] = (0.5, 1000.0)
#: ED50 bounds in :func:`analysis.stats.fit_dose_response`: lowest / 100 and highest / 100 x dose.
ED50_BOUND_FACTOR = 100.0
#: A CI whose upper / lower limit exceeds this is not an estimate (two orders of magnitude).
MAX_CI_RATIO = 100.0
#: An estimate within this relative distance of a fit bound is at the bound.
BOUND_TOLERANCE = 0.01
#: A recovery time constant beyond this multiple of the longest follow-up is extrapolation.
MAX_TAU_FOLLOW_UP = 10.0


@dataclass(frozen=True)
class Endpoint:
    """One primary endpoint: where its contrasts are and how to say them."""

    key: str
    label: str
    unit: str
    source: str  # "synapse", "spine" or "microglia"
    prefix: str | None  # start of the ``endpoint`` column in microglia_contrasts.csv
    truth: str | None  # key of analysis.sim.truth.readout_multipliers
    model: str  # key of MODEL_FORMULAS


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("synapse_density", "Synapse density", "PSD95 puncta per 100 um^2, change from baseline",
             "synapse", None, "synapse_density", "synapse_lmm"),
    Endpoint("spine_density", "Dendritic spine density", "spines per um of dendrite (two-photon), change from baseline",
             "spine", None, "synapse_density", "synapse_lmm"),
    Endpoint("microglia_density", "Microglia density", "Iba1+ cells per mm^2", "microglia",
             "microglia density", "microglia_density", "count"),
    Endpoint("engulfment", "Engulfed PSD95 puncta per microglia", "puncta per cell", "microglia",
             "engulfed puncta per cell", "engulfed_per_cell", "count"),
    Endpoint("cd68", "CD68 area fraction of microglia", "fraction of the cell's area", "microglia",
             "cd68_area_fraction", "cd68_area_fraction", "morphology"),
    Endpoint("skeleton_length", "Microglia skeleton length", "um per cell", "microglia",
             "skeleton_length_um", "process_length", "morphology"),
    Endpoint("branch_points", "Microglia branch points", "per cell", "microglia",
             "branch_points", "branching", "morphology"),
    Endpoint("sholl_auc", "Microglia Sholl profile area", "intersections x um per cell", "microglia",
             "sholl_auc", None, "morphology"),
)
_ENDPOINT = {e.key: e for e in ENDPOINTS}


# ---------------------------------------------------------------- design order

def group_order(table: pd.DataFrame | None) -> dict[str, int]:
    """Design order of the groups of a study: the order they first appear in ``table``.

    ``table`` is the sample sheet or any table of it with :data:`GROUP_COLUMNS` (the
    measurements keep the sheet's row order), so a study's tables and figures list groups as
    its sheet does.

    Examples
    --------
    >>> sheet = pd.DataFrame({"genotype": ["WT", "WT", "WT"], "compound": ["vehicle", "diazepam", "vehicle"],
    ...                       "dose_mg_kg": [0, 5, 0], "treatment_days": [7, 7, 7]})
    >>> group_order(sheet)
    {'WT vehicle x 7 d': 0, 'WT diazepam 5 mg/kg x 7 d': 1}
    """
    order: dict[str, int] = {}
    if table is None or not len(table) or not set(GROUP_COLUMNS) <= set(table.columns):
        return order
    for r in table[GROUP_COLUMNS].drop_duplicates().itertuples(index=False):
        if pd.isna(r.dose_mg_kg) or pd.isna(r.treatment_days):
            continue
        order.setdefault(group_label(r.genotype, r.compound, float(r.dose_mg_kg), int(r.treatment_days)), len(order))
    return order


def study_group_order(processed: str | Path) -> dict[str, int]:
    """:func:`group_order` of a study's ``measurements.parquet`` (empty when absent)."""
    path = Path(processed) / "measurements.parquet"
    if not path.exists():
        return {}
    try:
        return group_order(pd.read_parquet(path, columns=GROUP_COLUMNS))
    except (OSError, ValueError, KeyError):
        return {}


def design_rank(genotype: str, compound: str, dose_mg_kg: float, treatment_days: float,
                order: Mapping[str, int] | None = None) -> tuple:
    """Sort key of a group in design order.

    Groups in ``order`` (:func:`group_order` of the study's sheet) keep that order; any other
    group follows them: the reference genotype before the knockout before other genotypes,
    vehicle before diazepam before other compounds, then dose, then duration.

    Examples
    --------
    >>> groups = [("WT", "diazepam", 5.0, 7), ("WT", "vehicle", 0.0, 7), ("WT", "diazepam", 1.0, 7)]
    >>> [g[2] for g in sorted(groups, key=lambda g: design_rank(*g))]
    [0.0, 1.0, 5.0]
    """
    label = group_label(genotype, compound, float(dose_mg_kg), int(treatment_days))
    if order and label in order:
        return (0, order[label], "", 0, 0.0, 0.0)
    g_rank = {WILD_TYPE: 0, TSPO_KO: 1}.get(genotype, 2)
    c_rank = {VEHICLE: 0, "diazepam": 1}.get(compound, 2)
    return (1, g_rank, f"{c_rank}{genotype}{compound}", 0, float(dose_mg_kg), float(treatment_days))


_LABEL = re.compile(r"^(?P<genotype>\S+) (?:vehicle|(?P<compound>\S+) (?P<dose>[0-9.e+-]+) mg/kg) x (?P<days>\d+) d$")


def label_rank(label: str, order: Mapping[str, int] | None = None) -> tuple:
    """:func:`design_rank` of a group given by its label (:func:`analysis.io.vocabulary.group_label`).

    Examples
    --------
    >>> sorted(["WT diazepam 5 mg/kg x 7 d", "WT vehicle x 7 d"], key=label_rank)
    ['WT vehicle x 7 d', 'WT diazepam 5 mg/kg x 7 d']
    """
    if order and label in order:
        return (0, order[label], "", 0, 0.0, 0.0)
    m = _LABEL.match(str(label))
    if m is None:
        return (2, 0, str(label), 0, 0.0, 0.0)
    compound = m["compound"] or VEHICLE
    return design_rank(m["genotype"], compound, float(m["dose"] or 0.0), int(m["days"]))


def _sorted(df: pd.DataFrame, order: Mapping[str, int] | None = None) -> pd.DataFrame:
    if df.empty:
        return df
    key = [design_rank(r.genotype, r.compound, r.dose_mg_kg, r.treatment_days, order) for r in df.itertuples()]
    return df.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)


# ---------------------------------------------------------------- reading

def load_tables(processed: str | Path) -> dict[str, pd.DataFrame]:
    """The fitted tables present in ``processed`` (name without ``.csv`` -> table)."""
    out = {}
    for name in TABLES:
        path = Path(processed) / name
        if path.exists():
            try:
                out[name.removesuffix(".csv")] = pd.read_csv(path)
            except pd.errors.EmptyDataError:
                out[name.removesuffix(".csv")] = pd.DataFrame()
    return out


# ---------------------------------------------------------------- the long table

_COLUMNS = ["endpoint", "endpoint_label", "unit", "group", "genotype", "compound", "dose_mg_kg", "treatment_days",
            "day", "role", "n_animals", "n_animals_vehicle", "pct", "pct_ci_low", "pct_ci_high", "d", "d_ci_low",
            "d_ci_high", "p", "p_holm", "n_family", "adjustment", "primary", "note"]


def _is_true(v) -> bool:
    """A flag read back from a table: True, numpy True or the text ``"True"`` (not NaN)."""
    return bool(v) if isinstance(v, (bool, np.bool_)) else str(v).strip().lower() == "true"


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def endpoint_contrasts(tables: Mapping[str, pd.DataFrame], order: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Planned contrasts of every primary endpoint, with vehicle reference rows, in design order.

    Parameters
    ----------
    tables : mapping
        :func:`load_tables` output (``synapse_contrasts``, ``microglia_contrasts``).
    order : mapping, optional
        Design order of the groups (:func:`group_order` of the sheet); see :func:`design_rank`.

    Returns
    -------
    DataFrame
        One row per endpoint and group: ``endpoint`` (key of :data:`ENDPOINTS`), ``group`` and
        its columns, ``role`` (``"reference"`` for a vehicle group, ``"treated"``, or
        ``"no reference"`` for a treated group without a vehicle of its genotype and duration),
        ``n_animals`` (``n_animals_vehicle``), ``pct`` with ``pct_ci_low`` / ``pct_ci_high``
        (percent versus vehicle: for the synapse model the difference in change from baseline,
        for the others 100 x (ratio - 1)), Cohen's ``d`` with its CI (NaN where the model has
        none), ``p``, ``p_holm`` and ``n_family`` (planned contrasts in its Holm family).
    """
    rows: list[dict] = []
    for table, key in (("synapse_contrasts", "synapse_density"), ("spine_contrasts", "spine_density")):
        syn = tables.get(table)
        if syn is None or not len(syn):
            continue
        syn = syn[syn["day"] == syn["treatment_days"]]  # end of dosing: the planned session
        planned = syn[syn["planned"].astype(bool)] if "planned" in syn else syn.iloc[0:0]
        e = _ENDPOINT[key]
        for r in syn.itertuples():
            base = {"endpoint": e.key, "endpoint_label": e.label, "unit": e.unit, "group": r.group,
                    "genotype": r.genotype, "compound": r.compound, "dose_mg_kg": float(r.dose_mg_kg),
                    "treatment_days": int(r.treatment_days), "day": int(r.day), "n_animals": int(r.n_animals)}
            if r.compound == VEHICLE:
                rows.append({**base, "role": "reference"})
            elif bool(getattr(r, "planned", False)):
                rows.append({**base, "role": "treated", "n_animals_vehicle": int(r.n_animals_vehicle),
                             "pct": r.pct_vs_vehicle, "pct_ci_low": r.pct_vs_vehicle_ci_low,
                             "pct_ci_high": r.pct_vs_vehicle_ci_high,
                             "d": _num(getattr(r, "effect_size_d", np.nan)),
                             "d_ci_low": _num(getattr(r, "effect_size_d_ci_low", np.nan)),
                             "d_ci_high": _num(getattr(r, "effect_size_d_ci_high", np.nan)),
                             "p": r.p_vs_vehicle, "n_family": len(planned),
                             # the study's multiplicity procedure (a pre-specified primary first) when recorded
                             "p_holm": _num(getattr(r, "p_vs_vehicle_adjusted", r.p_vs_vehicle_holm)),
                             "adjustment": str(getattr(r, "adjustment", "") or "")
                             if pd.notna(getattr(r, "adjustment", np.nan)) else "",
                             # the pre-specified primary contrast (tested first), as the model marked it
                             "primary": _is_true(getattr(r, "primary", False))})
            else:
                rows.append({**base, "role": "no reference",
                             "note": f"no vehicle group of genotype {r.genotype} and {int(r.treatment_days)} d "
                                     "dosing: change from baseline "
                                     f"{format_ci(r.pct_change_from_baseline, r.pct_change_from_baseline_ci_low, r.pct_change_from_baseline_ci_high)} %"})
    mg = tables.get("microglia_contrasts")
    if mg is not None and len(mg):
        for e in ENDPOINTS:
            if e.source != "microglia":
                continue
            sub = mg[mg["endpoint"].astype(str).str.startswith(e.prefix)]
            sub = sub[sub["planned"].astype(bool)]
            if sub.empty:
                continue
            refs = {}
            for r in sub.itertuples():
                veh = group_label(r.genotype, VEHICLE, 0.0, int(r.treatment_days))
                refs.setdefault((veh, r.genotype, int(r.treatment_days), int(r.day)), int(r.n_animals_vehicle))
            for (veh, genotype, days, day), n in refs.items():
                rows.append({"endpoint": e.key, "endpoint_label": e.label, "unit": e.unit, "group": veh,
                             "genotype": genotype, "compound": VEHICLE, "dose_mg_kg": 0.0, "treatment_days": days,
                             "day": day, "n_animals": n, "role": "reference"})
            for r in sub.itertuples():
                rows.append({
                    "endpoint": e.key, "endpoint_label": e.label, "unit": e.unit, "group": r.group,
                    "genotype": r.genotype, "compound": r.compound, "dose_mg_kg": float(r.dose_mg_kg),
                    "treatment_days": int(r.treatment_days), "day": int(r.day), "role": "treated",
                    "n_animals": int(r.n_animals), "n_animals_vehicle": int(r.n_animals_vehicle),
                    "pct": 100 * (r.ratio_vs_vehicle - 1), "pct_ci_low": 100 * (r.ci_low - 1),
                    "pct_ci_high": 100 * (r.ci_high - 1), "d": _num(getattr(r, "effect_size_d", np.nan)),
                    "d_ci_low": _num(getattr(r, "effect_size_d_ci_low", np.nan)),
                    "d_ci_high": _num(getattr(r, "effect_size_d_ci_high", np.nan)),
                    "p": r.p_value, "p_holm": r.p_holm, "n_family": len(sub)})
    if not rows:
        return pd.DataFrame(columns=_COLUMNS)
    out = pd.DataFrame(rows).reindex(columns=_COLUMNS)
    parts = [_sorted(out[out["endpoint"] == e.key], order) for e in ENDPOINTS if (out["endpoint"] == e.key).any()]
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- words and numbers

def format_pct(v: float) -> str:
    """Signed percentage with one decimal (``-13.4``)."""
    return f"{v:+.1f}"


def format_ci(est: float, lo: float, hi: float) -> str:
    """``est (lo to hi)`` with signs and one decimal, the index's format of an effect with its CI."""
    return f"{est:+.1f} ({lo:+.1f} to {hi:+.1f})"


def format_p(p: float) -> str:
    """``p = 0.012`` style, ``p < 0.001`` below 0.001."""
    if not np.isfinite(p):
        return "p not computed"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def direction(lo: float, hi: float) -> str:
    """``"increase"`` / ``"decrease"`` when the 95 % CI excludes 0, else ``"no detectable change"``."""
    if lo > 0:
        return "increase"
    if hi < 0:
        return "decrease"
    return "no detectable change"


@dataclass(frozen=True)
class Finding:
    """One statement of the abstract and the numbers in it (all as printed, before rounding)."""

    endpoint: str
    group: str
    text: str
    direction: str = ""
    pct: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    n_animals: int | None = None
    n_animals_vehicle: int | None = None
    p_adjusted: float = float("nan")
    adjustment: str = ""
    truth_pct: float = float("nan")
    ci_covers_truth: bool | None = None
    kind: str = "headline"  # "headline", "summary" (a sentence on several contrasts), "item" (one of them) or "caveat"


def _is_sequence(r) -> bool:
    return str(getattr(r, "adjustment", "") or "").startswith("fixed sequence")


def _adjusted(r) -> str:
    """``Holm-adjusted p = 0.007 over 10 planned contrasts`` (or the fixed-sequence wording)."""
    if _is_sequence(r):
        return f"adjusted {format_p(r.p_holm)} ({r.adjustment})"
    return f"Holm-adjusted {format_p(r.p_holm)} over {int(r.n_family)} planned contrasts"


def _clause(r) -> str:
    """``-13.4 % (95 % CI -20.2 to -5.9 %; n = 8 vs 8 animals; Holm p = 0.007 of 10)``."""
    return (f"{format_pct(r.pct)} % (95 % CI {format_pct(r.pct_ci_low)} to {format_pct(r.pct_ci_high)} %; "
            f"n = {int(r.n_animals)} vs {int(r.n_animals_vehicle)} animals; {_adjusted(r)})")


def _verb(d: str) -> str:
    return {"increase": "increased", "decrease": "decreased"}.get(d, "showed no detectable change")


def lower_label(label: str) -> str:
    """``"Synapse density"`` -> ``"synapse density"``; acronyms (``"CD68 ..."``) stay."""
    return label[:1].lower() + label[1:] if label[1:2].islower() else label


def _truth_clause(r) -> str:
    t = getattr(r, "truth_pct", np.nan)
    if t is None or not np.isfinite(t):
        return ""
    where = "inside" if bool(r.ci_covers_truth) else "outside"
    text = f" Simulated truth {format_pct(t)} %: {where} the 95 % CI."
    if direction(r.pct_ci_low, r.pct_ci_high) == "no detectable change" and abs(t) >= 0.05:
        text += f" The simulated change of {format_pct(t)} % went undetected in this study."
    return text


def _finding(r, text: str) -> Finding:
    t = getattr(r, "truth_pct", np.nan)
    covers = getattr(r, "ci_covers_truth", None)
    return Finding(endpoint=r.endpoint, group=r.group, text=text, direction=direction(r.pct_ci_low, r.pct_ci_high),
                   pct=float(r.pct), ci_low=float(r.pct_ci_low), ci_high=float(r.pct_ci_high),
                   n_animals=int(r.n_animals), n_animals_vehicle=int(r.n_animals_vehicle),
                   p_adjusted=float(r.p_holm), adjustment=str(r.adjustment) if _is_sequence(r) else "Holm",
                   truth_pct=float(t) if t is not None else np.nan,
                   ci_covers_truth=None if covers is None or pd.isna(covers) else bool(covers))


def _headline_sentence(r) -> str:
    d = direction(r.pct_ci_low, r.pct_ci_high)
    what = _ENDPOINT[r.endpoint].label
    text = f"{what} {_verb(d)} in {r.group} versus vehicle: {_clause(r)}."
    if d != "no detectable change" and r.p_holm >= 0.05:
        text += (" The CI excludes 0 but the change is not significant after the "
                 f"{'multiplicity' if _is_sequence(r) else 'Holm'} adjustment.")
    if d == "no detectable change":
        text += (f" Changes anywhere from {format_pct(r.pct_ci_low)} % to {format_pct(r.pct_ci_high)} % are "
                 "compatible with these data.")
        down, up = detectable_change(r.pct_ci_low, r.pct_ci_high)
        if np.isfinite(down):
            text += (f" With this design (n = {int(r.n_animals)} vs {int(r.n_animals_vehicle)} animals) a change of "
                     f"about {format_pct(down)} % or {format_pct(up)} % would be detected with 80 % power.")
    return text + _truth_clause(r)


def detectable_change(ci_low_pct: float, ci_high_pct: float, power: float = 0.8) -> tuple[float, float]:
    """The decrease and increase (percent) this design detects with ``power`` at the 5 % level.

    From the standard error implied by a 95 % CI of a ratio (log scale, normal
    approximation): ``exp(+-(z_0.975 + z_power) x SE) - 1``.  It says what the design could
    have found, which a CI spanning 0 alone does not.

    Examples
    --------
    >>> [round(v, 1) for v in detectable_change(-10.0, 11.1)]
    [-14.0, 16.2]
    """
    from scipy.stats import norm

    lo, hi = np.log1p(ci_low_pct / 100.0), np.log1p(ci_high_pct / 100.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return float("nan"), float("nan")
    se = (hi - lo) / (2 * norm.ppf(0.975))
    k = (norm.ppf(0.975) + norm.ppf(power)) * se
    return float(100 * np.expm1(-k)), float(100 * np.expm1(k))


def _other_sentence(endpoint: Endpoint, others: pd.DataFrame) -> tuple[str, list[Finding]]:
    """One sentence on the other planned contrasts of an endpoint: those with a detectable change."""
    found = []
    items = []
    for r in others.itertuples():
        d = direction(r.pct_ci_low, r.pct_ci_high)
        if d == "no detectable change":
            continue
        item = (f"{r.group}: {d}, {format_pct(r.pct)} % (95 % CI {format_pct(r.pct_ci_low)} to "
                f"{format_pct(r.pct_ci_high)} %; n = {int(r.n_animals)} vs {int(r.n_animals_vehicle)}; "
                f"{_adjusted(r) if _is_sequence(r) else 'Holm-adjusted ' + format_p(r.p_holm)})") + (
            "" if not np.isfinite(getattr(r, "truth_pct", np.nan))
            else f", truth {format_pct(r.truth_pct)} % {'inside' if bool(r.ci_covers_truth) else 'outside'} the CI")
        items.append(item)
        found.append(replace(_finding(r, item), kind="item"))
    n, k = len(others), len(items)
    if n == 0:
        return "", []
    if k == 0:
        return (f"None of the other {n} planned {lower_label(endpoint.label)} contrasts showed a detectable change "
                "(each 95 % CI includes 0; see the table).", [])
    rest = f"; the other {n - k} showed no detectable change" if n > k else ""
    # a CI that excludes 0 is not yet significance after the multiplicity adjustment: say how many are
    significant = sum(1 for f in found if f.p_adjusted < 0.05)
    which = "all" if significant == k else f"{significant} of them" if significant else "none of them"
    return (f"Of the other {n} planned {lower_label(endpoint.label)} contrasts, {k} showed a detectable change "
            f"(95 % CI excluding 0; {which} significant after adjustment): "
            + "; ".join(items) + rest + ".", found)


def quality_caveats(tables: Mapping[str, pd.DataFrame], headline: str = HEADLINE_GROUP) -> dict[str, str]:
    """Sentences on whether the spine detector saw the headline group's images as it saw vehicle's.

    From ``spine_quality_balance`` (:func:`analysis.stats.diagnostics.quality_balance`): the
    spike-in recall of the headline group (else the first treated group) minus that of its
    vehicle at the end of dosing, in points with its 95 % CI.  A CI that excludes 0 says part of
    the density change may come from the imaging or the detector (crowding included: fewer
    spines are found at a higher rate); one that includes 0 only that no difference was
    detected (its width says how large a difference could have gone unseen).  Then, from
    ``spine_contrasts_snr_adjusted``, the same change adjusted for each image's measured SNR
    (:func:`snr_adjusted_sentence`).

    Returns
    -------
    dict
        ``{"spine_density": sentence}``, or empty without the table.

    Examples
    --------
    >>> t = pd.DataFrame({"quantity": ["spike_in_recall"], "group": ["g"], "compound": ["diazepam"],
    ...                   "treatment_days": [7], "day": [7], "difference": [-4.0], "ci_low": [-7.5],
    ...                   "ci_high": [-0.5]})
    >>> quality_caveats({"spine_quality_balance": t}, headline="g")["spine_density"][62:]
    "differed from vehicle's by -4.0 points (95 % CI -7.5 to -0.5): part of the density change may come from the imaging or the detector, not the tissue (see the quality table of 05_spines)."
    """
    texts = []
    t = tables.get("spine_quality_balance")
    if t is not None and "difference" in t:
        t = t[(t["quantity"] == "spike_in_recall") & t["difference"].notna() & (t["day"] == t["treatment_days"])]
    if t is not None and len(t) and "difference" in t:
        head = t[t["group"] == headline]
        r = next((head if len(head) else t.iloc[:1]).itertuples())
        ci = f"{r.difference:+.1f} points (95 % CI {r.ci_low:+.1f} to {r.ci_high:+.1f})"
        if r.ci_low > 0 or r.ci_high < 0:
            texts.append(f"The spine detector's recall (spike-in) on {r.group}'s images at day {int(r.day)} differed "
                         f"from vehicle's by {ci}: part of the density change may come from the imaging or the "
                         "detector, not the tissue (see the quality table of 05_spines).")
        else:
            texts.append(f"The spine detector's recall (spike-in) on {r.group}'s images at day {int(r.day)} did not "
                         f"differ detectably from vehicle's: {ci}.")
    adjusted = snr_adjusted_sentence(tables.get("spine_contrasts_snr_adjusted"), headline)
    if adjusted:
        texts.append(adjusted)
    return {"spine_density": " ".join(texts)} if texts else {}


def snr_adjusted_sentence(adjusted: pd.DataFrame | None, headline: str = HEADLINE_GROUP) -> str:
    """The spine model's sensitivity analysis in one sentence ('' without it).

    From ``spine_contrasts_snr_adjusted`` (:func:`analysis.stats.snr_adjusted_spine_contrasts`):
    the headline group's (else the first treated group's) change versus vehicle at the end of
    dosing with each image's log measured SNR as a covariate, and how much the imaging varied
    between sessions of the same dendrites.

    Examples
    --------
    >>> t = pd.DataFrame({"group": ["g"], "day": [7], "treatment_days": [7], "pct_vs_vehicle": [-11.2],
    ...                   "pct_vs_vehicle_ci_low": [-18.0], "pct_vs_vehicle_ci_high": [-3.9],
    ...                   "within_position_sd_log_snr": [0.21]})
    >>> print(snr_adjusted_sentence(t, "g"))
    Adjusted for each image's measured SNR (sensitivity analysis), g's change versus vehicle at day 7 is -11.2 % (95 % CI -18.0 to -3.9); the measured SNR of the same dendrites varied between sessions by a factor of 1.23 (geometric SD).
    """
    if adjusted is None or adjusted.empty or "pct_vs_vehicle" not in adjusted:
        return ""
    t = adjusted[adjusted["pct_vs_vehicle"].notna()]
    if "treatment_days" in t:
        t = t[t["day"] == t["treatment_days"]]
    if t.empty:
        return ""
    head = t[t["group"] == headline]
    r = next((head if len(head) else t.iloc[:1]).itertuples())
    sd = getattr(r, "within_position_sd_log_snr", float("nan"))
    spread = (f"; the measured SNR of the same dendrites varied between sessions by a factor of {np.exp(sd):.2f} "
              "(geometric SD)" if np.isfinite(sd) else "")
    return (f"Adjusted for each image's measured SNR (sensitivity analysis), {r.group}'s change versus vehicle at "
            f"day {int(r.day)} is {r.pct_vs_vehicle:+.1f} % (95 % CI {r.pct_vs_vehicle_ci_low:+.1f} to "
            f"{r.pct_vs_vehicle_ci_high:+.1f}){spread}.")


def abstract(contrasts: pd.DataFrame, headline: str = HEADLINE_GROUP,
             caveats: Mapping[str, str] | None = None) -> list[Finding]:
    """Sentences stating each primary endpoint's finding, generated from :func:`endpoint_contrasts`.

    Per endpoint, in the order of :data:`ENDPOINTS`: one sentence on the headline group (the
    first treated group in design order if the study lacks it) with direction, % change versus
    vehicle, 95 % CI, n animals and the Holm-adjusted p value; then one sentence naming the
    other planned contrasts whose CI excludes 0 (the rest are counted).  With a truth column
    (:func:`analysis.sim.validation.add_truth`) each statement gives the truth and whether the CI covers it.

    The direction word follows the CI, never the point estimate alone: a CI that includes 0 is
    "no detectable change".

    Returns
    -------
    list of Finding
        The headline findings carry their numbers (``pct``, ``ci_low``, ...); the summary
        sentence of the other contrasts is a Finding with ``group=""``, followed by one Finding per
        contrast it names.  ``caveats`` (endpoint key -> sentence, e.g. from
        :func:`analysis.report.validation.calibration_caveats`) adds that sentence after the
        endpoint's findings as a Finding of kind ``"caveat"``.
    """
    out: list[Finding] = []
    if contrasts.empty:
        return out
    treated = contrasts[contrasts["role"] == "treated"]
    for e in ENDPOINTS:
        sub = treated[treated["endpoint"] == e.key]
        if sub.empty:
            continue
        head = sub[sub["group"] == headline]
        head = head if len(head) else sub.iloc[:1]
        r = next(head.itertuples())
        out.append(_finding(r, _headline_sentence(r)))
        text, items = _other_sentence(e, sub[sub["group"] != r.group])
        if text:
            out.append(Finding(endpoint=e.key, group="", text=text, kind="summary"))
            out.extend(items)
        if caveats and e.key in caveats:
            out.append(Finding(endpoint=e.key, group="", text=caveats[e.key], kind="caveat"))
    return out


def trend_findings(trend: pd.DataFrame | None) -> list[Finding]:
    """Sentences on the dose x time trend model (:mod:`analysis.stats.trend`): loss while on drug and recovery.

    The p values are unadjusted: the two terms are pre-specified slopes of one model, not a
    family of planned contrasts.
    """
    if trend is None or trend.empty:
        return []
    t = trend.set_index("term")
    out = []
    phrases = {"dose:on": "per week on drug", "dose:off": "per week after withdrawal"}
    parts, found = [], []
    for term, phrase in phrases.items():
        if term not in t.index:
            continue
        r = t.loc[term]
        d = direction(r["ci_low"], r["ci_high"])
        verb = {"decrease": f"fell by {abs(r['pct_per_unit']):.2f} %", "increase": f"rose by {abs(r['pct_per_unit']):.2f} %",
                }.get(d, f"showed no detectable change ({r['pct_per_unit']:+.2f} %)")
        part = (f"{verb} {phrase} per doubling of (1 + dose in mg/kg) (95 % CI {r['ci_low']:+.2f} to "
                f"{r['ci_high']:+.2f} %; {format_p(r['p_value'])}, unadjusted)")
        parts.append(part)
        found.append(Finding(endpoint="trend", group=term, text=part, direction=d, pct=float(r["pct_per_unit"]),
                             ci_low=float(r["ci_low"]), ci_high=float(r["ci_high"]),
                             n_animals=int(r["n_animals"]), p_adjusted=float(r["p_value"]), adjustment="none",
                             kind="item"))
    if not parts:
        return []
    first = t.iloc[0]
    text = (f"Dose x time trend ({first['genotype']} vehicle and {first['compound']} animals, n = "
            f"{int(first['n_animals'])} animals): synapse density " + "; and it ".join(parts) + ".")
    out.append(Finding(endpoint="trend", group="", text=text, kind="summary"))
    return out + found


def mechanism_findings(mechanism: pd.DataFrame | None) -> list[Finding]:
    """One sentence on the mechanism contrasts of synapse density (``synapse_mechanism.csv``).

    Each is a difference of vehicle-corrected changes (genotype x treatment interaction, or
    one compound's effect against the reference treatment's), with its 95 % CI and
    unadjusted p (they are secondary, mechanistic questions, not planned contrasts).

    Examples
    --------
    >>> m = pd.DataFrame({"contrast": ["TSPO_KO vs WT: diazepam 5 mg/kg effect (interaction)"],
    ...                   "pct_difference": [15.6], "ci_low": [5.3], "ci_high": [26.9], "p_value": [0.0026]})
    >>> mechanism_findings(m)[0].text
    'Mechanism (synapse density, secondary, p unadjusted): TSPO_KO vs WT: diazepam 5 mg/kg effect (interaction): +15.6 % (95 % CI +5.3 to +26.9 %; p = 0.003), a difference of the vehicle-corrected changes.'
    """
    if mechanism is None or mechanism.empty:
        return []
    parts = [f"{r.contrast}: {format_pct(r.pct_difference)} % (95 % CI {format_pct(r.ci_low)} to {format_pct(r.ci_high)} %; "
             f"{format_p(r.p_value)})" for r in mechanism.itertuples()]
    text = ("Mechanism (synapse density, secondary, p unadjusted): " + "; ".join(parts)
            + (", a difference of the vehicle-corrected changes." if len(parts) == 1
               else "; each a difference of the vehicle-corrected changes."))
    return [Finding(endpoint="mechanism", group="", text=text, kind="summary")]


# ---------------------------------------------------------------- estimability

def _bounded(est: float, lo: float, hi: float) -> str:
    for b, name in ((lo, "lower"), (hi, "upper")):
        if np.isfinite(b) and b != 0 and abs(est - b) <= BOUND_TOLERANCE * abs(b):
            return name
    return ""


def estimability(dose_response: pd.DataFrame | None = None, recovery: pd.DataFrame | None = None, *,
                 doses: Iterable[float] | None = None, follow_up_days: float | None = None,
                 order: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Which dose-response and recovery estimates the data identify, and why not the others.

    Parameters
    ----------
    dose_response : DataFrame, optional
        ``synapse_dose_response.csv`` (one row per parameter and arm).
    recovery : DataFrame, optional
        ``synapse_recovery.csv`` (one row per group).
    doses : iterable of float, optional
        Doses of the dose-response fit (mg/kg), for the ED50 fit bounds (lowest positive / 100,
        highest x 100, as :func:`analysis.stats.fit_dose_response` sets them).  Without them
        the bounds are not checked; the CI-ratio rule still applies.
    follow_up_days : float, optional
        Longest follow-up after the last dose; a time constant beyond
        :data:`MAX_TAU_FOLLOW_UP` times it is not estimable.
    order : mapping, optional
        Design order of the groups (:func:`group_order`) for the recovery rows.

    Returns
    -------
    DataFrame
        ``fit`` ("dose-response" / "recovery"), ``what`` (arm or group), ``parameter`` (and its
        readable ``label``),
        ``estimate``, ``ci_low``, ``ci_high``, ``unit``, ``estimable`` and ``reason`` (empty
        when estimable).

    Examples
    --------
    >>> dr = pd.DataFrame({"parameter": ["ed50_mg_kg"], "estimate": [5.7], "ci_low": [0.005], "ci_high": [500.0],
    ...                    "genotype": ["WT"], "compound": ["diazepam"], "treatment_days": [7]})
    >>> estimability(dr)["reason"].iloc[0]
    '95 % CI 0.005 to 500 mg/kg spans 5 orders of magnitude (upper limit / lower > 100)'
    """
    rows = []
    positive = sorted(d for d in (doses or []) if d > 0)
    ed50_bounds = (positive[0] / ED50_BOUND_FACTOR, positive[-1] * ED50_BOUND_FACTOR) if positive else None
    if dose_response is not None and len(dose_response):
        keys = [c for c in ("genotype", "compound", "treatment_days") if c in dose_response]
        groups = dose_response.groupby(keys, sort=False) if keys else [((), dose_response)]
        for key, sub in groups:
            key = key if isinstance(key, tuple) else (key,)
            what = " ".join(str(k) for k in key[:2]) + (f" x {int(key[2])} d" if len(key) > 2 else "")
            p = sub.set_index("parameter")
            ed50_reason = ""
            if "ed50_mg_kg" in p.index:
                est, lo, hi = (float(p.loc["ed50_mg_kg", c]) for c in ("estimate", "ci_low", "ci_high"))
                if not (np.isfinite(lo) and np.isfinite(hi) and lo > 0):
                    ed50_reason = "no bootstrap CI"
                elif hi / lo > MAX_CI_RATIO:
                    ed50_reason = (f"95 % CI {lo:.3g} to {hi:.3g} mg/kg spans {math.log10(hi / lo):.0f} orders of "
                                   f"magnitude (upper limit / lower > {MAX_CI_RATIO:g})")
                if ed50_bounds is not None:
                    for v, name in ((est, "estimate"), (lo, "CI lower limit"), (hi, "CI upper limit")):
                        side = _bounded(v, *ed50_bounds)
                        if side:
                            b = ed50_bounds[0] if side == "lower" else ed50_bounds[1]
                            ed50_reason += ("; " if ed50_reason else "") + \
                                f"{name} {v:.3g} mg/kg at the {side} fit bound ({b:.3g} mg/kg)"
                            break
            for par in p.index:
                est, lo, hi = (float(p.loc[par, c]) for c in ("estimate", "ci_low", "ci_high"))
                reason = ""
                if par == "ed50_mg_kg":
                    reason = ed50_reason
                elif par == "emax_pct" and ed50_reason:
                    reason = "Emax is not separately identified from an unidentified ED50"
                elif par == "emax_pct" and lo <= -99.0:
                    reason = f"95 % CI reaches {lo:.1f} % (complete loss): the maximum is not identified"
                unit = {"ed50_mg_kg": "mg/kg", "trend_slope": "log ratio per log dose"}.get(par, "%")
                rows.append({"fit": "dose-response", "what": what, "parameter": par,
                             "label": PARAMETER_LABELS.get(par, par), "estimate": est,
                             "ci_low": lo, "ci_high": hi, "unit": unit, "n_animals": p.loc[par].get("n_animals"),
                             "estimable": not reason, "reason": reason})
    if recovery is not None and len(recovery):
        rec = recovery.assign(_k=[label_rank(g, order) for g in recovery["group"]])
        rec = rec.sort_values("_k", kind="stable")
        for r in rec.itertuples():
            tau = float(r.recovery_tau_days)
            reason = ""
            if not np.isfinite(tau):
                reason = ("no loss at the end of dosing to recover from, or the exponential fit failed"
                          if r.pct_at_end_of_dosing >= 0 else "the exponential fit did not converge")
            else:
                side = _bounded(tau, *RECOVERY_TAU_BOUNDS_DAYS)
                if side:
                    reason = (f"{tau:.3g} d is at the {side} fit bound "
                              f"({RECOVERY_TAU_BOUNDS_DAYS[0 if side == 'lower' else 1]:g} d)")
                elif follow_up_days and tau > MAX_TAU_FOLLOW_UP * follow_up_days:
                    reason = f"{tau:.3g} d is beyond {MAX_TAU_FOLLOW_UP:g} x the follow-up of {follow_up_days:g} d"
            rows.append({"fit": "recovery", "what": r.group, "parameter": "recovery_tau_days",
                         "label": PARAMETER_LABELS["recovery_tau_days"], "estimate": tau,
                         "ci_low": np.nan, "ci_high": np.nan, "unit": "days", "n_animals": r.n_animals,
                         "estimable": not reason, "reason": reason})
    cols = ["fit", "what", "parameter", "label", "estimate", "ci_low", "ci_high", "unit", "n_animals", "estimable", "reason"]
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------- display table

def _p_cell(p: float) -> str:
    return "" if not np.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def primary_table(contrasts: pd.DataFrame) -> pd.DataFrame:
    """The endpoint table of the index as display strings (units in the headers, nothing rounded away).

    Vehicle rows read "reference"; the change is ``est (lo to hi)`` in percent
    (:func:`format_ci`), Cohen's d the same where the model gives one.
    """
    has_truth = "truth_pct" in contrasts
    rows = []
    for r in contrasts.itertuples():
        row = {
            "endpoint (unit)": f"{r.endpoint_label} ({r.unit})",
            "group": r.group,
            "day": int(r.day),
            "n animals (group / vehicle)": (f"{int(r.n_animals)}" if r.role != "treated"
                                            else f"{int(r.n_animals)} / {int(r.n_animals_vehicle)}"),
        }
        if r.role == "reference":
            row.update({"change vs vehicle, % (95 % CI)": "reference", "Cohen's d (95 % CI)": "",
                        "p": "", "p (adjusted)": ""})
        elif r.role == "no reference":
            row.update({"change vs vehicle, % (95 % CI)": "not estimable: " + str(r.note),
                        "Cohen's d (95 % CI)": "", "p": "", "p (adjusted)": ""})
        else:
            row.update({
                "change vs vehicle, % (95 % CI)": format_ci(r.pct, r.pct_ci_low, r.pct_ci_high),
                "Cohen's d (95 % CI)": (f"{r.d:+.2f} ({r.d_ci_low:+.2f} to {r.d_ci_high:+.2f})"
                                        if np.isfinite(r.d) else "n/a (count model)"),
                "p": _p_cell(r.p),
                "p (adjusted)": _p_cell(r.p_holm)
                            + (" (primary, tested first)" if _is_sequence(r) and _is_true(r.primary) else f" (of {int(r.n_family)})"),
            })
        if has_truth:
            t = r.truth_pct
            row["simulated truth, %"] = f"{t:+.1f}" if np.isfinite(t) else ""
            row["CI covers truth"] = ("" if not np.isfinite(t) else ("yes" if bool(r.ci_covers_truth) else "no"))
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- per-animal values for the figure

def _relative_to_vehicle(animals: pd.DataFrame, value: str, keys: list[str]) -> pd.DataFrame:
    """``value`` (a log) minus the mean of the vehicle animals of the same ``keys``, as % (100 x (exp - 1))."""
    veh = animals[animals["compound"] == VEHICLE].groupby(keys)[value].mean().rename("_veh")
    out = animals.merge(veh.reset_index(), on=keys, how="inner")
    out["pct_vs_vehicle"] = 100 * np.expm1(out[value] - out["_veh"])
    return out.drop(columns="_veh")


def animal_values(processed: str | Path) -> pd.DataFrame:
    """Each animal's value relative to its vehicle group, per key endpoint (for the figure's dots).

    Synapse density: the animal's log change from baseline to the end of dosing
    (``synapse_session_means.csv``); microglia density: its summed count over summed field area;
    engulfed puncta per cell: its summed count over its number of cells; skeleton length: the
    mean of log length over its interior cells (``measurements.parquet``, ``cells.parquet``).
    Each minus the mean of the vehicle animals of the same genotype, duration (and day), as a
    percentage.  These are descriptive: the estimates and CIs are the models'.

    Returns
    -------
    DataFrame
        ``endpoint``, ``animal_id``, group columns, ``group``, ``pct_vs_vehicle``.
    """
    processed = Path(processed)
    keys = ["genotype", "treatment_days"]
    parts = []
    sm_path = processed / "synapse_session_means.csv"
    if sm_path.exists():
        s = pd.read_csv(sm_path)
        value = next((c for c in s.columns if c.endswith("_per_100um2")), None)
        if value is not None and len(s):
            base = s.loc[s.groupby("animal_id")["day"].idxmin(), ["animal_id", value]].rename(columns={value: "_b"})
            end = s[s["day"] == s["treatment_days"]].merge(base, on="animal_id")
            end = end[(end[value] > 0) & (end["_b"] > 0)]
            end["_log"] = np.log(end[value] / end["_b"])
            parts.append(_relative_to_vehicle(end, "_log", keys).assign(endpoint="synapse_density"))
    m_path, c_path = processed / "measurements.parquet", processed / "cells.parquet"
    if m_path.exists():
        m = pd.read_parquet(m_path)
        if "microglia_count" in m:
            term = m[m["microglia_count"].notna()].copy()
            term = term[term["day"] == term["treatment_days"]]
            area = "field_area_mm2" if "field_area_mm2" in term else "microglia_field_area_mm2"
            cols = ["animal_id", "group_", "genotype", "compound", "dose_mg_kg", "treatment_days", "day"]
            term["group_"] = [group_label(r.genotype, r.compound, r.dose_mg_kg, r.treatment_days)
                              for r in term.itertuples()]
            if len(term) and area in term:
                a = term.groupby(cols, as_index=False)[["microglia_count", area]].sum()
                a = a[(a["microglia_count"] > 0) & (a[area] > 0)]
                a["_log"] = np.log(a["microglia_count"] / a[area])
                parts.append(_relative_to_vehicle(a, "_log", keys + ["day"]).assign(endpoint="microglia_density"))
            if c_path.exists() and len(term):
                cells = pd.read_parquet(c_path).merge(term[["image_id", *cols]], on="image_id", how="inner")
                if "engulfed_puncta" in cells and len(cells):
                    e = cells.groupby(cols, as_index=False)["engulfed_puncta"].mean()
                    e = e[e["engulfed_puncta"] > 0]
                    e["_log"] = np.log(e["engulfed_puncta"])
                    parts.append(_relative_to_vehicle(e, "_log", keys + ["day"]).assign(endpoint="engulfment"))
                if "skeleton_length_um" in cells:
                    inner = cells[~cells.get("touches_border", pd.Series(False, index=cells.index)).astype(bool)]
                    inner = inner[inner["skeleton_length_um"] > 0]
                    k = inner.assign(_log=np.log(inner["skeleton_length_um"])).groupby(cols, as_index=False)["_log"].mean()
                    parts.append(_relative_to_vehicle(k, "_log", keys + ["day"]).assign(endpoint="skeleton_length"))
    if not parts:
        return pd.DataFrame(columns=["endpoint", "animal_id", "group", "genotype", "compound", "dose_mg_kg",
                                     "treatment_days", "pct_vs_vehicle"])
    out = pd.concat(parts, ignore_index=True)
    if "group_" in out:
        out["group"] = out["group"].fillna(out["group_"]) if "group" in out else out["group_"]
    return out[["endpoint", "animal_id", "group", "genotype", "compound", "dose_mg_kg", "treatment_days",
                "pct_vs_vehicle"]].reset_index(drop=True)
