"""Accuracy of the image quantification against simulated ground truth, per SNR level.

Renders fresh fields with :mod:`analysis.sim.phantoms` at every SNR level, runs the detectors with
their default (physically motivated) parameters and matches the results to the truth
(:func:`analysis.sim.validation.accuracy_per_snr`, also shown by ``notebooks/04_validation``):

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

from analysis.sim.phantoms import SNR_LEVELS
from analysis.sim.validation import accuracy_per_snr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=6, help="fields per SNR level and kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.csv"))
    args = ap.parse_args()
    parts = []
    for level in SNR_LEVELS:
        parts.append(accuracy_per_snr(args.fields, args.seed, levels=[level]).drop(columns="fields"))
        print(f"done {level}", flush=True)
    import pandas as pd

    table = pd.concat(parts, ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.set_index("snr_level").T.round(3).to_string())


if __name__ == "__main__":
    main()
