"""Validation against simulated ground truth: the library behind ``04_validation``.

Three checks, each usable on its own:

* **measured versus true per image** (:func:`measured_vs_true`, :func:`agreement`): the
  quantification table joined to ``ground_truth.csv`` (written by :mod:`analysis.sim.simulate`)
  on ``image_id``;
* **accuracy per SNR level** (:func:`puncta_accuracy`, :func:`microglia_accuracy`,
  :func:`accuracy_per_snr`): fresh phantom fields rendered at each SNR level of
  :data:`analysis.sim.phantoms.SNR_LEVELS` and matched to their truth (also used by
  ``benchmarks/validate_quantification.py``);
* **calibration of the synapse model** (:func:`calibration_study`, :func:`calibrate`,
  :func:`calibration_summary`): image-level tables drawn from the design
  (:func:`analysis.sim.measurements.simulate_measurements`), fitted like the real data, and the planned
  contrasts compared with the true effect of the simulation (also used by
  ``benchmarks/calibrate_stats.py``).

Validation against data we did not make (real images from other labs, the independent
simulator sim-fish, pure noise; ours beside the peer detectors) runs outside the report
(``make validate``, ``benchmarks/validate_real.py``) and is committed as
``benchmarks/validation_real.md``; :func:`load_real_validation` reads it back for the report
(:func:`parse_validation_markdown` parses any such markdown file of pipe tables).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.optimize import linear_sum_assignment

__all__ = [
    "Comparison",
    "COMPARISONS",
    "load_ground_truth",
    "study_preset",
    "measured_vs_true",
    "agreement",
    "correlation",
    "match_cells",
    "puncta_accuracy",
    "microglia_accuracy",
    "accuracy_per_snr",
    "true_pct_vs_vehicle",
    "without_drug_effect",
    "calibration_study",
    "calibrate",
    "calibration_summary",
    "RealValidation",
    "REAL_VALIDATION_FILE",
    "real_validation_path",
    "parse_validation_markdown",
    "load_real_validation",
    "section_purpose",
    "load_e2e_calibration",
    "study_truth_model",
    "add_truth",
    "GROUND_TRUTH",
    "E2E_CALIBRATION_FILE",
]

log = logging.getLogger(__name__)

#: Name of the ground-truth table in a simulated study's data folder.
GROUND_TRUTH = "ground_truth.csv"


@dataclass(frozen=True)
class Comparison:
    """One per-image quantity compared with its truth.

    Attributes
    ----------
    key : str
        Short name (used in recorded values).
    label : str
        Axis label with units.
    readout : str
        ``synapse`` (longitudinal PSD95 fields) or ``terminal`` (PSD95, Iba1, CD68 fields).
    measured, true : str
        Columns of the joined table.
    """

    key: str
    label: str
    readout: str
    measured: str
    true: str


#: The quantities :func:`measured_vs_true` compares (the true engulfed count per cell is
#: derived as ``true_engulfed_count / true_microglia_count``).
COMPARISONS: tuple[Comparison, ...] = (
    Comparison("synapse_density", "synapse density (puncta / 100 um2)", "synapse",
               "puncta_density_per_100um2", "true_puncta_density_per_100um2"),
    Comparison("terminal_synapse_density", "synapse density, terminal fields (puncta / 100 um2)", "terminal",
               "puncta_density_per_100um2", "true_puncta_density_per_100um2"),
    Comparison("microglia_count", "microglia per field", "terminal", "microglia_count", "true_microglia_count"),
    Comparison("engulfed_per_cell", "engulfed PSD95 puncta per cell", "terminal",
               "engulfed_per_cell", "true_engulfed_per_cell"),
    Comparison("skeleton_length_um", "mean skeleton length of interior cells (um)", "terminal",
               "mean_skeleton_length_um", "true_mean_skeleton_length_um"),
    Comparison("branch_points", "mean branch points of interior cells", "terminal",
               "mean_branch_points", "true_mean_branch_points"),
)


def load_ground_truth(data_dir: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The study's ``ground_truth.csv``, or None when the study has no ground truth (real data).

    Parameters
    ----------
    data_dir : path
        Folder with ``samples.csv`` (and ``ground_truth.csv`` if the study was simulated).

    Returns
    -------
    DataFrame or None
        One row per image (see :mod:`analysis.sim.simulate`).
    """
    path = Path(data_dir) / GROUND_TRUTH
    if not path.exists():
        log.info("no ground truth in %s", path.parent)
        return None
    return pd.read_csv(path)


def study_preset(data_dir: str | os.PathLike[str], default: str = "small") -> str:
    """Name of the preset the study was simulated with (from ``study_truth.json``)."""
    path = Path(data_dir) / "study_truth.json"
    if not path.exists():
        return default
    return str(json.loads(path.read_text()).get("preset", default))


def measured_vs_true(measurements: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Long table of measured and true values per image, joined on ``image_id``.

    Images missing from ``measurements`` (failed quantification) are left out; an image in
    the measurements without a truth row is an error (the tables belong to different studies).

    Parameters
    ----------
    measurements : DataFrame
        The per-image quantification table (``measurements.parquet``).
    truth : DataFrame
        ``ground_truth.csv`` of the same study.

    Returns
    -------
    DataFrame
        ``quantity``, ``label``, ``image_id``, ``animal_id``, ``readout``, ``snr_level``,
        ``measured``, ``true``; rows where either value is missing are dropped.
    """
    t = truth.copy()
    if {"true_engulfed_count", "true_microglia_count"} <= set(t.columns):
        cells = t["true_microglia_count"].where(t["true_microglia_count"] > 0)
        t["true_engulfed_per_cell"] = t["true_engulfed_count"] / cells
    keep = ["image_id", "readout", "snr_level", *{c.true for c in COMPARISONS if c.true in t.columns}]
    missing = sorted(set(measurements["image_id"]) - set(t["image_id"]))
    if missing:
        raise ValueError(f"{len(missing)} measured image(s) have no ground-truth row, e.g. {missing[0]!r}: "
                         "the measurements and ground_truth.csv come from different studies")
    joined = measurements.merge(t[keep], on="image_id", how="inner", suffixes=("", "_truth"), validate="1:1")
    frames = []
    for c in COMPARISONS:
        if c.measured not in joined or c.true not in joined:
            continue
        sub = joined[joined["readout"] == c.readout]
        frames.append(pd.DataFrame({
            "quantity": c.key, "label": c.label, "image_id": sub["image_id"], "animal_id": sub["animal_id"],
            "readout": sub["readout"], "snr_level": sub["snr_level"],
            "measured": sub[c.measured].astype(float), "true": sub[c.true].astype(float),
        }))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["quantity", "label", "image_id", "animal_id", "readout", "snr_level", "measured", "true"])
    return out.dropna(subset=["measured", "true"]).reset_index(drop=True)


def correlation(x: np.ndarray, y: np.ndarray, kind: str = "pearson") -> float:
    """Correlation, NaN when it is undefined (fewer than 3 pairs or a constant input)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    f = sps.pearsonr if kind == "pearson" else sps.spearmanr
    return float(f(x, y)[0])


def agreement(pairs: pd.DataFrame, by: Iterable[str] = ("quantity",)) -> pd.DataFrame:
    """Agreement of measured with true values: correlation and bias per group of rows.

    Parameters
    ----------
    pairs : DataFrame
        From :func:`measured_vs_true` (columns ``measured`` and ``true`` plus ``by``).
    by : iterable of str
        Grouping columns, e.g. ``("quantity", "snr_level")``.

    Returns
    -------
    DataFrame
        ``by`` columns, ``n_images``, ``pearson_r``, ``mean_bias`` (measured - true),
        ``mean_relative_bias`` (mean of measured / true - 1 over rows with true > 0) and
        ``mean_abs_relative_error``.

    Examples
    --------
    >>> p = pd.DataFrame({"quantity": "q", "measured": [1.0, 2.0, 4.0], "true": [1.0, 2.0, 5.0]})
    >>> agreement(p)[["n_images", "mean_bias"]].round(3).values.tolist()
    [[3.0, -0.333]]
    """
    by = list(by)
    rows = []
    for keys, g in pairs.groupby(by, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        pos = g[g["true"] > 0]
        rel = pos["measured"] / pos["true"] - 1
        rows.append({
            **dict(zip(by, keys)),
            "n_images": len(g),
            "pearson_r": correlation(g["measured"], g["true"]),
            "mean_bias": float((g["measured"] - g["true"]).mean()),
            "mean_relative_bias": float(rel.mean()) if len(rel) else float("nan"),
            "mean_abs_relative_error": float(rel.abs().mean()) if len(rel) else float("nan"),
        })
    return pd.DataFrame(rows)


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
    from analysis.measure.puncta import analysed_area_mask, detect_puncta, match_points, synapse_density

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


# --- validation against data we did not make (benchmarks/validation_real.md) ----------------

#: The committed summary of ``make validate``, relative to the repository root.
REAL_VALIDATION_FILE = Path("benchmarks") / "validation_real.md"

#: What each part of the real-data validation tests, keyed by a word of its section title
#: (lower case; the first key found in a title wins).
_SECTION_PURPOSES: tuple[tuple[str, str], ...] = (
    ("culture", "Real images of cultured neurons from another lab, without annotations, checked "
                "label-free: true synaptic puncta lie on MAP2 dendrites (enrichment above 1), rarely in "
                "DAPI nuclei, and pre- and postsynaptic puncta pair more often than with the "
                "presynaptic channel shifted (pairing above chance above 0)."),
    ("sim-fish", "Images from sim-fish, a simulator none of us wrote, with known spot positions: "
                 "precision, recall and F1 of each detector (one-to-one matching) across spot "
                 "density, size, signal-to-noise ratio and bit depth."),
    ("phantom", "Our own simulated fields at each SNR level (the detector's authors wrote them, so "
                "agreement here proves the least): precision, recall, F1 and count bias."),
    ("noise", "Images without any punctum, of several noise kinds: every detection is false "
              "(target: at most 1 per 1,000 um^2)."),
    ("speed", "Detection time per image at several image sizes, on the same machine."),
    ("microglia", "Real Iba1 images from another lab with hand-corrected cell masks: cells found "
                  "(one-to-one at IoU >= 0.5) and per-cell skeleton length and branch points ranked "
                  "against the source tool's table, beside plain threshold pipelines."),
)

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")
_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")
_COMMIT = re.compile(r"\bcommit\s+`?([0-9a-f]{7,40})`?(\s*\([^)]*\))?")


@dataclass(frozen=True)
class RealValidation:
    """A parsed validation summary: header paragraph and the tables of each section.

    Attributes
    ----------
    title : str
        The first-level heading ("" without one).
    header : str
        The paragraphs between the title and the first section (where the numbers come from:
        command, date, commit, detectors), paragraphs separated by a blank line.
    sections : dict of str to list of DataFrame
        Section title (a heading of level 2 or deeper) -> its markdown tables, in file order.
        Bold markers (``**``) are removed from the cells; columns whose every cell is a number
        (thousands separators allowed) are numeric, all others text.  Tables before the first
        section are under the key ``""``.
    notes : dict of str to list of str
        Section title -> its paragraphs (other than tables), in file order.
    path : Path or None
        The file it was read from.
    """

    title: str
    header: str
    sections: dict[str, list[pd.DataFrame]]
    notes: dict[str, list[str]]
    path: Path | None = None

    @property
    def date(self) -> str | None:
        """The first ISO date (YYYY-MM-DD) of the header: when the numbers were generated."""
        m = _DATE.search(self.header)
        return m.group(1) if m else None

    @property
    def commit(self) -> str | None:
        """The commit the numbers were generated at, with the file's remark on it if any."""
        m = _COMMIT.search(self.header)
        return None if m is None else m.group(1) + (m.group(2) or "")


def real_validation_path() -> Path:
    """Where the committed ``benchmarks/validation_real.md`` is in a source checkout.

    The repository root is three levels above the installed package's ``__init__.py``
    (``src/analysis/__init__.py``); in an installed wheel the path does not exist.
    """
    import analysis

    return Path(analysis.__file__).resolve().parents[2] / REAL_VALIDATION_FILE


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.replace("\\|", "|").replace("**", "").strip() for c in re.split(r"(?<!\\)\|", line)]


def _table(lines: list[str]) -> pd.DataFrame:
    columns = _cells(lines[0])
    rows = [(_cells(x) + [""] * len(columns))[: len(columns)] for x in lines[2:]]
    df = pd.DataFrame(rows, columns=columns)
    for k in range(df.shape[1]):
        col = df.iloc[:, k]
        filled = col[col != ""]
        if len(filled) and filled.map(lambda v: bool(_NUMBER.match(v))).all():
            values = pd.to_numeric(col.str.replace(",", "", regex=False).replace("", np.nan))
            if not filled.str.contains(".", regex=False).any() and values.notna().all():
                values = values.astype(np.int64)
            df.isetitem(k, values)
    return df


def parse_validation_markdown(text: str, path: Path | None = None) -> RealValidation:
    r"""Parse a markdown summary into its header paragraph and the pipe tables of each section.

    Generic: any headings (``#`` title, ``##`` ... sections), paragraphs and pipe tables (a
    row of cells, a ``---`` separator row, rows), so a regenerated file with other parts
    still parses.

    Parameters
    ----------
    text : str
        Markdown.
    path : Path, optional
        Recorded as :attr:`RealValidation.path`.

    Returns
    -------
    RealValidation

    Examples
    --------
    >>> md = (
    ...     "# Detection on data we did not make\n\n"
    ...     "Generated on 2026-11-30, commit 8f04b5d.\n\n"
    ...     "## Pure noise\n\n"
    ...     "| noise | ours | peer |\n|---|---|---|\n| Poisson | **0.25** | 1,204 |\n\n"
    ...     "3 images per kind.\n")
    >>> v = parse_validation_markdown(md)
    >>> v.date, v.commit
    ('2026-11-30', '8f04b5d')
    >>> v.sections["Pure noise"][0]
         noise  ours  peer
    0  Poisson  0.25  1204
    >>> v.notes["Pure noise"]
    ['3 images per kind.']
    """
    title, header = "", []
    sections: dict[str, list[pd.DataFrame]] = {}
    notes: dict[str, list[str]] = {}
    current: str | None = None
    paragraph: list[str] = []

    def end_paragraph() -> None:
        if paragraph:
            (header if current is None else notes.setdefault(current, [])).append(" ".join(paragraph))
            paragraph.clear()

    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = _HEADING.match(line)
        if heading:
            end_paragraph()
            if len(heading.group(1)) == 1 and not title and current is None:
                title = heading.group(2)
            else:
                current = name = heading.group(2)
                n = 2
                while current in sections:  # a repeated title gets a number
                    current, n = f"{name} ({n})", n + 1
                sections[current], notes[current] = [], []
        elif "|" in line and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1]):
            end_paragraph()
            j = i + 2
            while j < len(lines) and lines[j].strip() and "|" in lines[j]:
                j += 1
            sections.setdefault("" if current is None else current, []).append(_table(lines[i:j]))
            i = j
            continue
        elif line.strip():
            paragraph.append(line.strip())
        else:
            end_paragraph()
        i += 1
    end_paragraph()
    return RealValidation(title, "\n\n".join(header), sections, notes, path)


def load_real_validation(path: str | os.PathLike[str] | None = None) -> RealValidation | None:
    """The committed validation against data we did not make, or None when the file is absent.

    Parameters
    ----------
    path : path, optional
        The markdown file (default: :func:`real_validation_path`, i.e.
        ``benchmarks/validation_real.md`` of the source checkout the package runs from).

    Returns
    -------
    RealValidation or None
        None when the file does not exist (e.g. the package installed from a wheel).
    """
    path = real_validation_path() if path is None else Path(path)
    if not path.is_file():
        log.info("no real-data validation summary at %s", path)
        return None
    return parse_validation_markdown(path.read_text(encoding="utf-8"), path=path)


#: The committed end-to-end calibration (``benchmarks/calibrate_e2e.py bank-calibrate``).
E2E_CALIBRATION_FILE = Path("benchmarks") / "calibration_e2e.md"


def load_e2e_calibration(path: str | os.PathLike[str] | None = None) -> RealValidation | None:
    """The committed end-to-end calibration of the synapse statistics, or None when absent.

    Simulated studies whose images went through the detector (images -> quantify -> fit):
    bias, coverage and power of each planned contrast for the report's model beside the
    alternatives (perfect counts among them).  Parsed like :func:`load_real_validation`.
    """
    path = real_validation_path().parent / E2E_CALIBRATION_FILE.name if path is None else Path(path)
    if not path.is_file():
        log.info("no end-to-end calibration summary at %s", path)
        return None
    return parse_validation_markdown(path.read_text(encoding="utf-8"), path=path)


def section_purpose(title: str) -> str:
    """One sentence on what a section of the real-data validation tests ("" if unknown).

    Examples
    --------
    >>> section_purpose("b. sim-fish (independent simulator)")[:35]
    'Images from sim-fish, a simulator n'
    """
    low = title.lower()
    return next((sentence for key, sentence in _SECTION_PURPOSES if key in low), "")


# --- the true effects of a simulated study, beside the report's estimates -----------------


def study_truth_model(data_dir: str | os.PathLike[str]):
    """The truth model a simulated study was drawn from (``study_truth.json``), or None."""
    from analysis.sim.truth import TruthModel

    path = Path(data_dir) / "study_truth.json"
    if not path.exists():
        return None
    return TruthModel(**json.loads(path.read_text())["model"])


def _true_pct(model, truth_key: str | None, r) -> float:
    from analysis.sim.truth import activation, readout_multipliers

    if truth_key is None:
        return float("nan")
    a = float(activation(model, genotype=r.genotype, compound=r.compound, dose_mg_kg=float(r.dose_mg_kg),
                         treatment_days=float(r.treatment_days), day=float(r.day)))
    # vehicle animals have activation 0 (multiplier 1), and so has every animal at baseline
    return 100.0 * (readout_multipliers(model, a)[truth_key] - 1.0)


def add_truth(contrasts: pd.DataFrame, model) -> pd.DataFrame:
    """``contrasts`` (:func:`analysis.report.findings.endpoint_contrasts`) with ``truth_pct`` and
    ``ci_covers_truth``.

    The truth of a treated row is the simulation's effect versus vehicle at the row's day
    (:func:`analysis.sim.truth.readout_multipliers` at the group's activation, the vehicle's being
    1); NaN for reference rows and endpoints without a simulated truth.  Without a model
    (real data) the table is returned unchanged.
    """
    from analysis.report.findings import ENDPOINTS

    if model is None or contrasts.empty:
        return contrasts
    truth_of = {e.key: e.truth for e in ENDPOINTS}
    truth = [(_true_pct(model, truth_of[r.endpoint], r) if r.role == "treated" else np.nan)
             for r in contrasts.itertuples()]
    out = contrasts.assign(truth_pct=truth)
    covered = (out["pct_ci_low"] <= out["truth_pct"]) & (out["truth_pct"] <= out["pct_ci_high"])
    out["ci_covers_truth"] = covered.where(out["truth_pct"].notna())
    return out
