"""Accuracy and speed of microglia segmentation, morphology and engulfment, per SNR level.

Renders fresh terminal fields with :func:`analysis.sim.phantoms.render_terminal_field` at every
level of :data:`analysis.sim.phantoms.SNR_LEVELS`, runs the library with its default (physically
motivated) parameters and compares with the ground truth:

* cell count: predicted cells are matched one-to-one to true cells (Hungarian).  A pair is a
  match when the predicted soma centre lies inside the true cell (``count_*`` columns), or,
  alternatively, when the two masks overlap with IoU >= 0.5 (``iou_count_f1``).  True cells
  are those whose soma centre lies in the field (cells whose soma is outside send processes
  in but are not counted).
* morphology, on matched *interior* cells (true cell not cut by the border): median relative
  error of ``skeleton_length_um`` (signed, and median absolute), Spearman rho of
  ``branch_points`` and of ``endpoints``.
* engulfment, per matched cell (detected cells, detected CD68): Pearson r of
  ``engulfed_puncta`` against the true engulfed count (a) with the true positions of all
  puncta (isolates the CD68 mask and cell logic) and (b) with puncta detected by
  :func:`analysis.measure.puncta.detect_puncta`; with the true positions also the recall of the
  truly engulfed puncta, the non-engulfed puncta counted per cell (neuropil puncta that
  overlie CD68 in the projection) and the ratio of measured to true CD68 area.
* speed: seconds per field for segment + measure (Iba1) and for the CD68 mask.

Usage::

    python benchmarks/validate_microglia.py --fields 8 --seed 0 --out benchmarks/results/microglia.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from analysis.measure.engulfment import measure_engulfment, segment_lysosomes
from analysis.measure.microglia import measure_microglia, segment_microglia
from analysis.report.validation import correlation
from analysis.sim.validation import match_cells

PX = 0.2


def iou_matches(labels: np.ndarray, truth_labels: np.ndarray, truth_cells: pd.DataFrame) -> int:
    """Number of one-to-one (Hungarian) matches with IoU >= 0.5."""
    n_p = int(labels.max())
    ids = truth_cells["cell"].to_numpy(int)
    if n_p == 0 or len(ids) == 0:
        return 0
    n_t = int(truth_labels.max())
    joint = np.bincount(labels.ravel().astype(np.int64) * (n_t + 1) + truth_labels.ravel(),
                        minlength=(n_p + 1) * (n_t + 1)).reshape(n_p + 1, n_t + 1)
    a_p = joint.sum(1)
    a_t = joint.sum(0)
    inter = joint[1:, ids]
    iou = inter / (a_p[1:, None] + a_t[None, ids] - inter)
    ri, ci = linear_sum_assignment(-iou)
    return int((iou[ri, ci] >= 0.5).sum())


def evaluate_field(f, detect: bool = True) -> tuple[dict[str, float], pd.DataFrame]:
    """Run the library on one rendered field; counts, timings and matched cell pairs."""
    t0 = time.perf_counter()
    labels = segment_microglia(f.image[1], PX)
    cells = measure_microglia(labels, f.image[1], PX)
    t1 = time.perf_counter()
    lys = segment_lysosomes(f.image[2], PX)
    t2 = time.perf_counter()
    eng_true = measure_engulfment(labels, lys, f.puncta, PX)
    hits = measure_engulfment(labels, lys, f.puncta[f.puncta["engulfed"].astype(bool)], PX)
    cells = cells.merge(eng_true.rename(columns={"engulfed_puncta": "engulfed_true_puncta"}), on="label", how="left")
    cells = cells.merge(hits[["label", "engulfed_puncta"]].rename(columns={"engulfed_puncta": "engulfed_true_hits"}),
                        on="label", how="left")
    if detect:
        from analysis.measure.puncta import detect_puncta

        det = detect_puncta(f.image[0], PX)
        eng_det = measure_engulfment(labels, lys, det, PX)[["label", "engulfed_puncta"]]
        cells = cells.merge(eng_det.rename(columns={"engulfed_puncta": "engulfed_detected_puncta"}), on="label",
                            how="left")
    ri, ci = match_cells(cells, f.labels, len(f.cells))
    pairs = pd.concat(
        [
            cells.iloc[ri].add_prefix("m_").reset_index(drop=True),
            f.cells.iloc[ci].add_prefix("t_").reset_index(drop=True),
        ],
        axis=1,
    )
    counts = {
        "tp": len(ri), "n_pred": len(cells), "n_true": len(f.cells),
        "iou_tp": iou_matches(labels, f.labels, f.cells),
        "seconds_microglia": t1 - t0, "seconds_lysosomes": t2 - t1,
    }
    return counts, pairs


def _f1(tp: float, n_pred: float, n_true: float) -> float:
    return 2 * tp / (n_pred + n_true) if n_pred + n_true else np.nan


def summarise(counts: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, float]:
    """Metrics of one SNR level from the per-field counts and the matched pairs."""
    tp, n_pred, n_true = counts["tp"].sum(), counts["n_pred"].sum(), counts["n_true"].sum()
    interior = pairs[~pairs["t_touches_border"].astype(bool)]
    rel = interior["m_skeleton_length_um"] / interior["t_skeleton_length_um"] - 1
    out = {
        "fields": len(counts),
        "true_cells": int(n_true),
        "count_precision": tp / n_pred if n_pred else np.nan,
        "count_recall": tp / n_true if n_true else np.nan,
        "count_f1": _f1(tp, n_pred, n_true),
        "iou_count_f1": _f1(counts["iou_tp"].sum(), n_pred, n_true),
        "interior_cells": len(interior),
        "skeleton_length_median_rel_error": float(rel.median()),
        "skeleton_length_median_abs_rel_error": float(rel.abs().median()),
        "branch_points_spearman": correlation(interior["m_branch_points"], interior["t_branch_points"], "spearman"),
        "endpoints_spearman": correlation(interior["m_endpoints"], interior["t_endpoints"], "spearman"),
        "engulfed_pearson_true_puncta": correlation(pairs["m_engulfed_true_puncta"], pairs["t_engulfed_count"]),
        "engulfed_recall_true_puncta": float(pairs["m_engulfed_true_hits"].sum() / pairs["t_engulfed_count"].sum()),
        "false_engulfed_per_cell_true_puncta": float(
            (pairs["m_engulfed_true_puncta"] - pairs["m_engulfed_true_hits"]).mean()),
        "cd68_area_ratio": float(pairs["m_cd68_area_um2"].sum() / pairs["t_cd68_area_um2"].sum()),
        "cd68_area_pearson": correlation(pairs["m_cd68_area_um2"], pairs["t_cd68_area_um2"]),
        "seconds_segment_measure_per_field": float(counts["seconds_microglia"].mean()),
        "seconds_lysosomes_per_field": float(counts["seconds_lysosomes"].mean()),
    }
    if "m_engulfed_detected_puncta" in pairs:
        out["engulfed_pearson_detected_puncta"] = correlation(pairs["m_engulfed_detected_puncta"],
                                                        pairs["t_engulfed_count"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=8, help="fields per SNR level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, default=512, help="field size in pixels (square, 0.2 um pixels)")
    ap.add_argument("--no-detect", action="store_true", help="skip the detected-puncta engulfment metric")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/microglia.csv"))
    args = ap.parse_args()
    from analysis.sim.phantoms import SNR_LEVELS, render_terminal_field

    rows = []
    for level, snr in SNR_LEVELS.items():
        counts, pairs = [], []
        for i in range(args.fields):
            f = render_terminal_field(np.random.default_rng([args.seed, 3, i, int(snr * 10)]),
                                      shape=(args.shape, args.shape), pixel_size_um=PX, snr=snr)
            c, p = evaluate_field(f, detect=not args.no_detect)
            counts.append(c)
            pairs.append(p.assign(field=i))
        rows.append({"snr_level": level, "snr": snr, **summarise(pd.DataFrame(counts), pd.concat(pairs))})
        print(f"done {level}", flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(args.out)
    print(table.set_index("snr_level").T.round(3).to_string())


if __name__ == "__main__":
    main()
