"""Accuracy of automatic PSD95 puncta detection against simulated ground truth, per SNR level.

Renders fresh fields with :func:`analysis.sim.phantoms.render_synapse_field` at every SNR level of
:data:`analysis.sim.phantoms.SNR_LEVELS`, runs :func:`analysis.measure.puncta.detect_puncta` and
:func:`analysis.measure.area.analysed_area_mask` with their default (physically motivated)
parameters, and compares with the truth:

* detection: one-to-one (Hungarian) matching within 0.25 um -> precision, recall, F1 (pooled
  over the fields: total matches / total detections or true puncta), median localisation
  error of the matches (um);
* density: per-image count bias ``detected density / true density - 1`` (detected puncta in
  the detected analysed area, true puncta in the true analysed area; mean and SD over the
  fields) and the analysed-area bias;
* speed: median wall time of ``detect_puncta`` per field.

Usage::

    python benchmarks/validate_puncta.py --fields 8 --seed 0 --out benchmarks/results/puncta.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.sim.phantoms import SNR_LEVELS, render_synapse_field
from analysis.measure.area import analysed_area_mask, synapse_density
from analysis.measure.puncta import detect_puncta, match_points

MATCH_UM = 0.25


def evaluate_field(seed: tuple[int, ...], snr: float, shape: tuple[int, int], pixel_size_um: float) -> dict:
    """Render one field, detect, match; one row of per-field numbers."""
    field = render_synapse_field(np.random.default_rng(list(seed)), shape=shape, pixel_size_um=pixel_size_um, snr=snr)
    t0 = time.perf_counter()
    puncta = detect_puncta(field.image, pixel_size_um)
    seconds = time.perf_counter() - t0
    mask = analysed_area_mask(field.image, pixel_size_um)
    density = synapse_density(puncta, mask, pixel_size_um)
    truth = field.puncta[["y", "x"]].to_numpy()
    m = match_points(puncta[["y", "x"]].to_numpy() * pixel_size_um, truth * pixel_size_um, MATCH_UM)
    true_density = 100.0 * len(truth) / field.analysed_area_um2
    return {
        "tp": m.tp,
        "fp": m.fp,
        "fn": m.fn,
        "loc_errors_um": m.distances,
        "count_bias": density["puncta_density_per_100um2"] / true_density - 1.0,
        "area_bias": density["analysed_area_um2"] / field.analysed_area_um2 - 1.0,
        "seconds": seconds,
    }


def summarise(level: str, snr: float, rows: list[dict]) -> dict:
    """Pooled detection scores and per-image biases of one SNR level."""
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    bias = np.array([r["count_bias"] for r in rows])
    area = np.array([r["area_bias"] for r in rows])
    return {
        "snr_level": level,
        "snr": snr,
        "fields": len(rows),
        "true_puncta": tp + fn,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "median_loc_error_um": float(np.median(np.concatenate([r["loc_errors_um"] for r in rows]))),
        "count_bias_pct_mean": 100 * float(bias.mean()),
        "count_bias_pct_sd": 100 * float(bias.std(ddof=1)) if len(bias) > 1 else np.nan,
        "area_bias_pct_mean": 100 * float(area.mean()),
        "ms_per_field": 1000 * float(np.median([r["seconds"] for r in rows])),
    }


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=8, help="fields per SNR level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, nargs=2, default=(256, 256), metavar=("Y", "X"))
    ap.add_argument("--pixel-size", type=float, default=0.1, help="um")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/puncta_accuracy.csv"))
    args = ap.parse_args(argv)
    table = []
    for k, (level, snr) in enumerate(SNR_LEVELS.items()):
        rows = [evaluate_field((args.seed, k, i), snr, tuple(args.shape), args.pixel_size) for i in range(args.fields)]
        table.append(summarise(level, snr, rows))
        print(f"done {level}", flush=True)
    out = pd.DataFrame(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(args.out)
    print(out.set_index("snr_level").round(3).to_string())
    return out


if __name__ == "__main__":
    main()
