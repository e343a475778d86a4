"""Accuracy of the image quantification against simulated ground truth, per SNR level.

Renders fresh fields with :mod:`analysis.phantoms` at every SNR level, runs the detectors with
their default (physically motivated) parameters and matches the results to the truth:

* puncta: one-to-one (Hungarian) within 0.25 um -> precision, recall, F1, median localisation
  error, per-image count bias of the density;
* microglia: a predicted cell matches a true cell when its soma centre lies inside it
  (Hungarian) -> count F1; for matched interior cells (not cut by the border): median
  relative error of skeleton length, Spearman rho of branch points;
* engulfment: per matched cell, Pearson r of engulfed puncta (detected puncta, detected
  CD68, detected cells) against the true engulfed count, and the same with the true puncta
  positions (isolates the CD68 / cell logic).

Usage::

    python benchmarks/validate_quantification.py --fields 6 --seed 0 --out benchmarks/results/accuracy.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.stats import pearsonr, spearmanr

from analysis.engulfment import measure_engulfment, segment_lysosomes
from analysis.microglia import measure_microglia, segment_microglia
from analysis.phantoms import SNR_LEVELS, render_synapse_field, render_terminal_field
from analysis.synapses import analysed_area_mask, detect_puncta, match_points, synapse_density


def puncta_metrics(snr: float, fields: int, seed: int) -> dict[str, float]:
    rows = []
    for i in range(fields):
        f = render_synapse_field(np.random.default_rng([seed, 1, i]), snr=snr)
        p = detect_puncta(f.image, 0.1)
        mask = analysed_area_mask(f.image, 0.1)
        d = synapse_density(p, mask, 0.1)
        m = match_points(p[["y", "x"]].to_numpy(), f.puncta[["y", "x"]].to_numpy(), 0.25 / 0.1)
        true_density = 100 * len(f.puncta) / f.analysed_area_um2
        rows.append({
            "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
            "loc_error_um": float(np.median(m["distances"]) * 0.1) if m["tp"] else np.nan,
            "count_bias": d["puncta_density_per_100um2"] / true_density - 1,
            "area_bias": d["analysed_area_um2"] / f.analysed_area_um2 - 1,
        })
    return {f"puncta_{k}": float(np.mean(v)) for k, v in pd.DataFrame(rows).items()}


def microglia_metrics(snr: float, fields: int, seed: int) -> dict[str, float]:
    tp = fp = fn = 0
    pairs = []
    for i in range(fields):
        f = render_terminal_field(np.random.default_rng([seed, 2, i]), shape=(640, 640), snr=snr)
        labels = segment_microglia(f.image[1], 0.2)
        cells = measure_microglia(labels, f.image[1], 0.2)
        lys = segment_lysosomes(f.image[2], 0.2)
        puncta = detect_puncta(f.image[0], 0.2)
        eng = measure_engulfment(labels, lys, puncta, 0.2)
        eng_true_pos = measure_engulfment(labels, lys, f.puncta, 0.2).rename(
            columns={"engulfed_puncta": "engulfed_true_positions"})
        cells = cells.merge(eng, on="label").merge(eng_true_pos[["label", "engulfed_true_positions"]], on="label")
        cost = np.ones((len(cells), len(f.cells)))
        for k, r in enumerate(cells.itertuples()):
            t = f.labels[int(round(r.soma_y)), int(round(r.soma_x))]
            if t:
                cost[k, t - 1] = 0
        ri, ci = linear_sum_assignment(cost) if cost.size else (np.array([], int), np.array([], int))
        ok = cost[ri, ci] == 0
        tp += int(ok.sum())
        fp += len(cells) - int(ok.sum())
        fn += len(f.cells) - int(ok.sum())
        for a, b in zip(ri[ok], ci[ok]):
            pairs.append({**cells.iloc[a].add_prefix("m_").to_dict(), **f.cells.iloc[b].add_prefix("t_").to_dict()})
    p = pd.DataFrame(pairs)
    interior = p[~p["t_touches_border"].astype(bool)]
    prec = tp / (tp + fp) if tp + fp else np.nan
    rec = tp / (tp + fn) if tp + fn else np.nan
    rel = interior["m_skeleton_length_um"] / interior["t_skeleton_length_um"] - 1
    return {
        "microglia_count_f1": 2 * prec * rec / (prec + rec),
        "microglia_interior_cells": len(interior),
        "skeleton_length_median_rel_error": float(rel.median()),
        "skeleton_length_median_abs_rel_error": float(rel.abs().median()),
        "branch_points_spearman": float(spearmanr(interior["m_branch_points"], interior["t_branch_points"])[0]),
        "engulfed_pearson_detected_puncta": float(pearsonr(p["m_engulfed_puncta"], p["t_engulfed_count"])[0]),
        "engulfed_pearson_true_puncta": float(pearsonr(p["m_engulfed_true_positions"], p["t_engulfed_count"])[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=6, help="fields per SNR level and kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.csv"))
    args = ap.parse_args()
    rows = []
    for level, snr in SNR_LEVELS.items():
        rows.append({"snr_level": level, "snr": snr, **puncta_metrics(snr, args.fields, args.seed),
                     **microglia_metrics(snr, args.fields, args.seed)})
        print(f"done {level}", flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.set_index("snr_level").T.round(3).to_string())


if __name__ == "__main__":
    main()
