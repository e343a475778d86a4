"""Validation by simulation: detector accuracy against phantoms and calibration of the statistics.

* **accuracy per SNR level** (:func:`puncta_accuracy`, :func:`microglia_accuracy`,
  :func:`accuracy_per_snr`): fresh phantom fields rendered at each SNR level of
  :data:`analysis.sim.phantoms.SNR_LEVELS` and matched to their truth (also used by
  ``benchmarks/validate_quantification.py``);
* **calibration of the synapse model** (:func:`calibration_study`, :func:`calibrate`,
  :func:`calibration_summary`): image-level tables drawn from the design
  (:func:`analysis.sim.measurements.simulate_measurements`), fitted like the real data, and
  the planned contrasts compared with the true effect of the simulation (also used by
  ``benchmarks/calibrate_stats.py``);
* **the true effects of a simulated study** beside the report's estimates
  (:func:`study_truth_model`, :func:`add_truth`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.optimize import linear_sum_assignment

from analysis.stats.models import correlation

__all__ = [
    "puncta_accuracy",
    "match_cells",
    "microglia_accuracy",
    "accuracy_per_snr",
    "true_pct_vs_vehicle",
    "without_drug_effect",
    "calibration_study",
    "calibrate",
    "calibration_summary",
    "study_truth_model",
    "add_truth",
    "true_ratio",
    "rendered_morphology_ratio",
    "morphology_truth_table",
]

log = logging.getLogger(__name__)


def puncta_accuracy(snr: float, fields: int, seed: int, *, pixel_size_um: float = 0.1,
                    match_um: float = 0.25) -> dict[str, float]:
    """Detection accuracy of PSD95 puncta on fresh synapse fields at one SNR.

    Detected puncta are matched one-to-one (Hungarian) to the true ones within ``match_um``.

    Parameters
    ----------
    snr : float
        Signal-to-noise ratio of the rendered fields.
    fields : int
        Number of fields (each drawn with ``default_rng([seed, 1, i])``).
    seed : int
        Seed of the phantoms.
    pixel_size_um, match_um : float
        Pixel size of the fields and the matching radius.

    Returns
    -------
    dict
        Means over fields of ``puncta_precision``, ``puncta_recall``, ``puncta_f1``,
        ``puncta_loc_error_um`` (median distance of matches), ``puncta_count_bias``
        (measured / true density - 1) and ``puncta_area_bias`` (analysed area).
    """
    from analysis.sim.phantoms import render_synapse_field
    from analysis.measure.area import analysed_area_mask, synapse_density
    from analysis.measure.puncta import detect_puncta, match_points

    rows = []
    for i in range(fields):
        f = render_synapse_field(np.random.default_rng([seed, 1, i]), snr=snr, pixel_size_um=pixel_size_um)
        p = detect_puncta(f.image, pixel_size_um)
        mask = analysed_area_mask(f.image, pixel_size_um)
        d = synapse_density(p, mask, pixel_size_um)
        m = match_points(p[["y", "x"]].to_numpy(), f.puncta[["y", "x"]].to_numpy(), match_um / pixel_size_um)
        true_density = 100 * len(f.puncta) / f.analysed_area_um2
        rows.append({
            "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
            "loc_error_um": float(np.median(m["distances"]) * pixel_size_um) if m["tp"] else np.nan,
            "count_bias": d["puncta_density_per_100um2"] / true_density - 1,
            "area_bias": d["analysed_area_um2"] / f.analysed_area_um2 - 1,
        })
    return {f"puncta_{k}": float(np.mean(v)) for k, v in pd.DataFrame(rows).items()}


def match_cells(cells: pd.DataFrame, true_labels: np.ndarray, n_true: int) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching: a detected cell matches the true cell its soma centre lies in."""
    cost = np.ones((len(cells), n_true))
    for k, r in enumerate(cells.itertuples()):
        t = true_labels[int(round(r.soma_y)), int(round(r.soma_x))]
        if t:
            cost[k, t - 1] = 0
    if not cost.size:
        return np.array([], int), np.array([], int)
    ri, ci = linear_sum_assignment(cost)
    ok = cost[ri, ci] == 0
    return ri[ok], ci[ok]


def microglia_accuracy(snr: float, fields: int, seed: int, *, shape: tuple[int, int] = (640, 640),
                       pixel_size_um: float = 0.2) -> dict[str, float]:
    """Segmentation, morphology and engulfment accuracy on fresh terminal fields at one SNR.

    A detected cell matches a true cell when its soma centre lies inside it (one-to-one,
    Hungarian).  Morphology is compared on matched interior cells (not cut by the border).

    Parameters
    ----------
    snr, fields, seed : float, int, int
        As for :func:`puncta_accuracy`; field ``i`` is drawn with ``default_rng([seed, 2, i])``.
    shape : tuple of int
        Field size in pixels.
    pixel_size_um : float
        Pixel size.

    Returns
    -------
    dict
        ``microglia_count_f1``, ``microglia_interior_cells``,
        ``skeleton_length_median_rel_error`` and ``_abs_rel_error``, ``branch_points_spearman``,
        ``engulfed_pearson_detected_puncta`` (detected puncta, CD68 and cells versus the true
        engulfed count per cell) and ``engulfed_pearson_true_puncta`` (true puncta positions,
        isolating the CD68 and cell logic).  Correlations are NaN when undefined.
    """
    from analysis.measure.engulfment import measure_engulfment, segment_lysosomes
    from analysis.measure.microglia import measure_microglia, segment_microglia
    from analysis.sim.phantoms import render_terminal_field
    from analysis.measure.puncta import detect_puncta

    tp = fp = fn = 0
    pairs = []
    for i in range(fields):
        f = render_terminal_field(np.random.default_rng([seed, 2, i]), shape=shape, snr=snr,
                                  pixel_size_um=pixel_size_um)
        labels = segment_microglia(f.image[1], pixel_size_um)
        cells = measure_microglia(labels, f.image[1], pixel_size_um)
        lys = segment_lysosomes(f.image[2], pixel_size_um)
        puncta = detect_puncta(f.image[0], pixel_size_um)
        eng = measure_engulfment(labels, lys, puncta, pixel_size_um)
        eng_true_pos = measure_engulfment(labels, lys, f.puncta, pixel_size_um).rename(
            columns={"engulfed_puncta": "engulfed_true_positions"})
        cells = cells.merge(eng, on="label").merge(eng_true_pos[["label", "engulfed_true_positions"]], on="label")
        ri, ci = match_cells(cells, f.labels, len(f.cells))
        tp += len(ri)
        fp += len(cells) - len(ri)
        fn += len(f.cells) - len(ri)
        for a, b in zip(ri, ci):
            pairs.append({**cells.iloc[a].add_prefix("m_").to_dict(), **f.cells.iloc[b].add_prefix("t_").to_dict()})
    p = pd.DataFrame(pairs, columns=None if pairs else ["m_skeleton_length_um", "t_skeleton_length_um",
                                                       "m_branch_points", "t_branch_points", "t_touches_border",
                                                       "m_engulfed_puncta", "m_engulfed_true_positions",
                                                       "t_engulfed_count"])
    interior = p[~p["t_touches_border"].astype(bool)]
    prec = tp / (tp + fp) if tp + fp else np.nan
    rec = tp / (tp + fn) if tp + fn else np.nan
    rel = interior["m_skeleton_length_um"] / interior["t_skeleton_length_um"] - 1
    return {
        "microglia_count_f1": float(2 * prec * rec / (prec + rec)) if prec + rec else float("nan"),
        "microglia_interior_cells": int(len(interior)),
        "skeleton_length_median_rel_error": float(rel.median()),
        "skeleton_length_median_abs_rel_error": float(rel.abs().median()),
        "branch_points_spearman": correlation(interior["m_branch_points"], interior["t_branch_points"], "spearman"),
        "engulfed_pearson_detected_puncta": correlation(p["m_engulfed_puncta"], p["t_engulfed_count"]),
        "engulfed_pearson_true_puncta": correlation(p["m_engulfed_true_positions"], p["t_engulfed_count"]),
    }


def accuracy_per_snr(fields: int = 6, seed: int = 0, *, levels: Iterable[str] | None = None,
                     terminal_shape: tuple[int, int] = (640, 640)) -> pd.DataFrame:
    """:func:`puncta_accuracy` and :func:`microglia_accuracy` at every SNR level.

    Parameters
    ----------
    fields : int
        Fields per SNR level and kind (synapse, terminal).
    seed : int
        Seed of the phantoms (the same fields at every level, only the noise differs).
    levels : iterable of str, optional
        Keys of :data:`analysis.sim.phantoms.SNR_LEVELS` (all by default).
    terminal_shape : tuple of int
        Size of the terminal fields in pixels.

    Returns
    -------
    DataFrame
        One row per level: ``snr_level``, ``snr``, ``fields`` and the metrics.
    """
    from analysis.sim.phantoms import SNR_LEVELS

    rows = []
    for level in levels or SNR_LEVELS:
        snr = SNR_LEVELS[level]
        rows.append({"snr_level": level, "snr": snr, "fields": fields, **puncta_accuracy(snr, fields, seed),
                     **microglia_accuracy(snr, fields, seed, shape=terminal_shape)})
        log.info("accuracy at SNR level %s done", level)
    return pd.DataFrame(rows)


def true_pct_vs_vehicle(contrasts: pd.DataFrame, *, null: bool = False) -> np.ndarray:
    """True percent change of synapse density versus vehicle for rows of a contrasts table.

    Uses the calibrated truth model (:func:`analysis.sim.truth.calibrated_model`) at each row's
    ``day``; vehicle animals lose nothing, so the truth is ``-100 x synapse loss``.

    Parameters
    ----------
    contrasts : DataFrame
        Rows with ``genotype``, ``compound``, ``dose_mg_kg``, ``treatment_days``, ``day``.
    null : bool
        The simulation had no drug effect (then every truth is 0).

    Returns
    -------
    ndarray
        One value per row.
    """
    from analysis.sim.truth import calibrated_model, synapse_loss

    model = calibrated_model()
    if null:
        model = model.without_drug_effect()
    return np.array([
        -100.0 * float(synapse_loss(model, genotype=r.genotype, compound=r.compound, dose_mg_kg=float(r.dose_mg_kg),
                                    treatment_days=float(r.treatment_days), day=float(r.day)))
        for r in contrasts.itertuples()
    ])


def without_drug_effect(measurements: pd.DataFrame, seed: int, *, field_area_um2: float = 600.0) -> pd.DataFrame:
    """The same simulated animals and fields with the drug effect removed (a null study).

    The true densities of :func:`analysis.sim.measurements.simulate_measurements` are divided by
    ``1 - true_synapse_loss`` (keeping every animal and field effect) and the Poisson counts
    are drawn again, so any design preset can be turned into its null version.

    Parameters
    ----------
    measurements : DataFrame
        From :func:`analysis.sim.measurements.simulate_measurements`.
    seed : int
        Seed of the new counts.
    field_area_um2 : float
        Analysed area per field, as in :func:`analysis.sim.measurements.simulate_measurements`.

    Returns
    -------
    DataFrame
        A copy with ``activation`` and ``true_synapse_loss`` 0 and new densities.
    """
    out = measurements.copy()
    out["true_density_per_100um2"] = out["true_density_per_100um2"] / (1.0 - out["true_synapse_loss"])
    out["activation"] = 0.0
    out["true_synapse_loss"] = 0.0
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3, 1]))
    counts = rng.poisson(out["true_density_per_100um2"].to_numpy() * field_area_um2 / 100.0)
    out["puncta_density_per_100um2"] = 100.0 * counts / field_area_um2
    return out


def calibration_study(preset: str, seed: int, *, null: bool = False) -> pd.DataFrame:
    """Simulate one study's synapse table, fit the mixed model, compare planned contrasts with truth.

    Parameters
    ----------
    preset : str
        Design preset (:data:`analysis.sim.design.PRESETS`); ``null`` has no drug effect.
    seed : int
        Seed of the simulated study.
    null : bool
        Remove the drug effect (:func:`without_drug_effect`): every true effect is 0.

    Returns
    -------
    DataFrame
        One row per planned contrast: ``preset``, ``null``, ``seed``, ``group``, ``true_pct``,
        ``pct_vs_vehicle``, ``ci_low``, ``ci_high``, ``p``, ``covered`` (the 95 % CI holds the
        truth), ``log_est``, ``log_se``, ``log_true``, ``converged``.
    """
    from analysis.sim.design import PRESETS
    from analysis.stats.models import fit_synapse_lmm, session_contrasts
    from analysis.sim.measurements import simulate_measurements

    null = null or PRESETS[preset].null
    table = simulate_measurements(preset, seed)
    fit = fit_synapse_lmm(without_drug_effect(table, seed) if null else table)
    c = session_contrasts(fit)
    c = c[c["planned"]].reset_index(drop=True)
    true = true_pct_vs_vehicle(c, null=null)
    log_lo, log_hi = np.log1p(c["pct_vs_vehicle_ci_low"] / 100), np.log1p(c["pct_vs_vehicle_ci_high"] / 100)
    return pd.DataFrame({
        "preset": preset, "null": null, "seed": seed, "group": c["group"], "true_pct": true,
        "pct_vs_vehicle": c["pct_vs_vehicle"], "ci_low": c["pct_vs_vehicle_ci_low"],
        "ci_high": c["pct_vs_vehicle_ci_high"], "p": c["p_vs_vehicle"],
        "covered": (c["pct_vs_vehicle_ci_low"] <= true) & (true <= c["pct_vs_vehicle_ci_high"]),
        "log_est": np.log1p(c["pct_vs_vehicle"] / 100), "log_se": (log_hi - log_lo) / (2 * sps.t.ppf(0.975, c["df"])),
        "log_true": np.log1p(true / 100), "converged": fit.converged,
    })


def _calibration_job(args: tuple[str, int, bool]) -> pd.DataFrame:
    preset, seed, null = args
    return calibration_study(preset, seed, null=null)


def calibrate(preset: str, studies: int, *, null: bool = False, first_seed: int = 10_000,
              workers: int = 1) -> pd.DataFrame:
    """:func:`calibration_study` for ``studies`` seeds ``first_seed, first_seed + 1, ...``.

    Parameters
    ----------
    preset : str
        Design preset.
    studies : int
        Number of simulated studies.
    null : bool
        Simulate without drug effect (see :func:`calibration_study`).
    first_seed : int
        Seed of the first study.
    workers : int
        Worker processes (1: in this process).  The result does not depend on it.

    Returns
    -------
    DataFrame
        The rows of every study, in seed order.
    """
    jobs = [(preset, first_seed + s, null) for s in range(studies)]
    if workers <= 1:
        frames = [_calibration_job(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            frames = list(pool.map(_calibration_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    return pd.concat(frames, ignore_index=True)


def calibration_summary(calibration: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per contrast: studies, type I error or power, 95 % CI coverage and bias.

    Parameters
    ----------
    calibration : DataFrame
        From :func:`calibrate`.
    alpha : float
        Significance level of the rejection rate.

    Returns
    -------
    DataFrame
        ``preset``, ``null``, ``group``, ``true_pct``, ``studies``, ``converged`` (fraction),
        ``reject_rate`` (type I error when ``true_pct`` is 0, power otherwise), ``coverage``,
        ``mean_estimate_pct`` and ``bias_in_se`` (mean log estimate minus the log truth, in
        units of the mean standard error).
    """
    df = calibration.assign(reject=calibration["p"] < alpha)
    rows = []
    for (preset, null, group), g in df.groupby(["preset", "null", "group"], sort=True):
        rows.append({
            "preset": preset, "null": bool(null), "group": group, "true_pct": float(g["true_pct"].mean()), "studies": len(g),
            "converged": float(g["converged"].mean()), "reject_rate": float(g["reject"].mean()),
            "coverage": float(g["covered"].mean()), "mean_estimate_pct": float(g["pct_vs_vehicle"].mean()),
            "bias_in_se": float((g["log_est"].mean() - g["log_true"].mean()) / g["log_se"].mean()),
        })
    return pd.DataFrame(rows)


# --- the true effects of a simulated study, beside the report's estimates -----------------


def study_truth_model(data_dir: str | os.PathLike[str]):
    """The truth model a simulated study was drawn from (``study_truth.json``), or None."""
    from analysis.sim.truth import TruthModel

    path = Path(data_dir) / "study_truth.json"
    if not path.exists():
        return None
    return TruthModel(**json.loads(path.read_text())["model"])


#: Readouts whose truth is what the generator's cells show, not the truth model's multiplier:
#: the rendered trees' skeleton length and branch points respond to the generator's settings
#: through territories, wedges and crowding (at diazepam 5 mg/kg x 7 d the multipliers say 0.76 and
#: 0.72, the rendered cells 0.68 and 0.66).  Key of ``readout_multipliers`` -> cell column.
RENDERED_MORPHOLOGY = {"process_length": "skeleton_length_um", "branching": "branch_points"}
#: The rendered cells' ratios for the default truth model (:func:`analysis.sim.truth.calibrated_model`)
#: on a grid of activations, written by ``benchmarks/morphology_truth.py`` with
#: :func:`morphology_truth_table` (64 fields of 2048 x 2048 px per activation, ~3,500 cells:
#: Monte-Carlo SD of a ratio ~0.7 %, scaled from the 2.6 % that 5 seeds of 4 fields showed); other
#: models are simulated when asked (fewer fields).
MORPHOLOGY_TRUTH_TABLE = Path(__file__).resolve().parents[1] / "data" / "morphology_truth.csv"
#: Fields per activation when a model is not tabulated (~50 interior cells per field; the
#: ratio's Monte-Carlo SD was 2.6 % over 5 seeds of 4 fields, so ~1.8 % expected with 8).
MORPHOLOGY_MC_FIELDS = 8
_MORPHOLOGY_MC_SEED = (2026, 11, 30)


@functools.lru_cache(maxsize=256)
def _rendered_cells(model_json: str, a: float, fields: int, seed: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Skeleton length and branch points of the interior cells the generator draws at activation ``a``
    (``fields`` fields of 2048^2 px; cached per model, activation, size and seed)."""
    from analysis.sim.glia import simulated_cells
    from analysis.sim.truth import TruthModel, readout_multipliers

    model = TruthModel(**json.loads(model_json))
    m = readout_multipliers(model, a)
    cells = simulated_cells(microglia_per_mm2=model.baseline_microglia_per_mm2 * m["microglia_density"],
                            process_length_scale=m["process_length"], branching_scale=m["branching"],
                            soma_scale=m["soma_radius"], fields=fields, seed=seed)
    return {col: cells[col].to_numpy(float) for col in RENDERED_MORPHOLOGY.values()}


def _log_ratio(treated: np.ndarray, vehicle: np.ndarray) -> float:
    """Log ratio of geometric means; zeros as ``log(x + c)``, ``c`` half the smallest positive
    value (the rule of :func:`analysis.stats.models.fit_morphology_endpoint`)."""
    both = np.concatenate([treated, vehicle])
    c = 0.5 * both[both > 0].min() if (both == 0).any() else 0.0
    return float(np.log(treated + c).mean() - np.log(vehicle + c).mean())


def _model_json(model) -> str:
    import dataclasses

    return json.dumps(dataclasses.asdict(model), sort_keys=True)


def morphology_truth_table(activations: Iterable[float], *, fields: int = 64, model=None,
                           seed: tuple[int, ...] = _MORPHOLOGY_MC_SEED) -> pd.DataFrame:
    """Ratios versus activation 0 of the rendered cells' skeleton length and branch points.

    Parameters
    ----------
    activations : iterable of float
        Activations in [0, 1].
    fields : int
        Fields of 2048 x 2048 px per activation (:func:`analysis.sim.glia.simulated_cells`).
    model : TruthModel, optional
        Default: :func:`analysis.sim.truth.calibrated_model`.
    seed : tuple of int
        Seed of the cells (the same at every activation).

    Returns
    -------
    DataFrame
        ``activation``, ``process_length`` and ``branching`` (ratios of geometric means),
        ``cells`` (interior cells at that activation).
    """
    from analysis.sim.truth import calibrated_model

    key = _model_json(model if model is not None else calibrated_model())
    vehicle = _rendered_cells(key, 0.0, int(fields), tuple(seed))
    rows = []
    for a in activations:
        treated = _rendered_cells(key, round(float(a), 6), int(fields), tuple(seed))
        row = {"activation": float(a)}
        for truth_key, col in RENDERED_MORPHOLOGY.items():
            row[truth_key] = float(np.exp(_log_ratio(treated[col], vehicle[col])))
        row["cells"] = len(treated["branch_points"])
        rows.append(row)
    return pd.DataFrame(rows)


@functools.lru_cache(maxsize=1)
def _tabulated() -> pd.DataFrame | None:
    if not MORPHOLOGY_TRUTH_TABLE.exists():
        return None
    return pd.read_csv(MORPHOLOGY_TRUTH_TABLE, comment="#").sort_values("activation")


def rendered_morphology_ratio(model, a: float, truth_key: str) -> float:
    """Ratio of geometric means of a morphology readout of the generator's cells at activation ``a``
    to those at activation 0 (vehicle), as the report's model estimates it.

    For the default truth model it is interpolated (linearly in the activation) in
    :data:`MORPHOLOGY_TRUTH_TABLE`; for any other model the cells are drawn here by
    :func:`analysis.sim.glia.simulated_cells` at the model's settings for ``a`` and for 0
    (:data:`MORPHOLOGY_MC_FIELDS` fields each, a few seconds, cached).

    Parameters
    ----------
    model : TruthModel
        The study's truth model.
    a : float
        Activation of the treated group.
    truth_key : str
        ``"process_length"`` (skeleton length) or ``"branching"`` (branch points).

    Returns
    -------
    float
    """
    from analysis.sim.truth import calibrated_model

    col = RENDERED_MORPHOLOGY[truth_key]
    table = _tabulated()
    if table is not None and model == calibrated_model():
        return float(np.interp(float(a), table["activation"], table[truth_key]))
    key = _model_json(model)
    log.info("simulating the cells of the truth model at activation %.3f for the %s truth "
             "(Monte-Carlo SD ~2 %%)", a, col)
    treated = _rendered_cells(key, round(float(a), 6), MORPHOLOGY_MC_FIELDS, _MORPHOLOGY_MC_SEED)[col]
    vehicle = _rendered_cells(key, 0.0, MORPHOLOGY_MC_FIELDS, _MORPHOLOGY_MC_SEED)[col]
    return float(np.exp(_log_ratio(treated, vehicle)))


def true_ratio(model, truth_key: str, a: float) -> float:
    """The simulation's true ratio versus vehicle of one readout at activation ``a``: the truth
    model's multiplier, except for morphology, where it is what the rendered cells show
    (:func:`rendered_morphology_ratio`)."""
    from analysis.sim.truth import readout_multipliers

    if a == 0.0:
        return 1.0
    if truth_key in RENDERED_MORPHOLOGY:
        return rendered_morphology_ratio(model, a, truth_key)
    return float(readout_multipliers(model, a)[truth_key])


def _true_pct(model, truth_key: str | None, r) -> float:
    from analysis.sim.truth import activation

    if truth_key is None:
        return float("nan")
    a = float(activation(model, genotype=r.genotype, compound=r.compound, dose_mg_kg=float(r.dose_mg_kg),
                         treatment_days=float(r.treatment_days), day=float(r.day)))
    # vehicle animals have activation 0 (ratio 1), and so has every animal at baseline
    return 100.0 * (true_ratio(model, truth_key, a) - 1.0)


def add_truth(contrasts: pd.DataFrame, model, truth_of: dict[str, str | None]) -> pd.DataFrame:
    """``contrasts`` (:func:`analysis.report.findings.endpoint_contrasts`) with ``truth_pct`` and
    ``ci_covers_truth``.

    The truth of a treated row is the simulation's effect versus vehicle at the row's day
    (:func:`true_ratio` at the group's activation: the truth model's multiplier, or for
    morphology what the rendered cells show; the vehicle's being 1); NaN for reference rows and endpoints without a simulated truth.  ``truth_of`` maps
    each endpoint key to its readout in :func:`analysis.sim.truth.readout_multipliers` (None:
    no simulated truth).  Without a model (real data) the table is returned unchanged.
    """
    if model is None or contrasts.empty:
        return contrasts
    truth = [(_true_pct(model, truth_of.get(r.endpoint), r) if r.role == "treated" else np.nan)
             for r in contrasts.itertuples()]
    out = contrasts.assign(truth_pct=truth)
    covered = (out["pct_ci_low"] <= out["truth_pct"]) & (out["truth_pct"] <= out["pct_ci_high"])
    out["ci_covers_truth"] = covered.where(out["truth_pct"].notna())
    return out
