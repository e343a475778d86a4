"""Tabulate what the simulated microglia's morphology is at each activation (the report's truth).

The truth model gives the generator multipliers for process length and branching, but the
rendered trees respond to them through territories, wedges and crowding: at diazepam 5 mg/kg x
7 d the multipliers are 0.76 (length) and 0.72 (branching), the rendered cells' ratios ~0.67 and
~0.65.  The report compares its estimates with what the cells in the images are, so for these
two readouts the truth is the rendered cells' ratio of geometric means versus vehicle
(:func:`analysis.sim.validation.rendered_morphology_ratio`).  This script writes it for the
default truth model on a grid of activations to ``src/analysis/data/morphology_truth.csv``
(package data; other truth models are simulated when a report asks).

Usage::

    python benchmarks/morphology_truth.py                 # 64 fields per activation, 2 processes
    python benchmarks/morphology_truth.py --fields 8 --out /tmp/t.csv
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.sim.validation import MORPHOLOGY_TRUTH_TABLE, morphology_truth_table

GRID = tuple(np.round(np.arange(0.0, 1.0001, 0.1), 2))


def _one(args: tuple[float, int]) -> pd.DataFrame:
    a, fields = args
    return morphology_truth_table([a], fields=fields)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=64, help="fields of 2048 x 2048 px per activation")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=MORPHOLOGY_TRUTH_TABLE)
    args = ap.parse_args()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        table = pd.concat(pool.map(_one, [(a, args.fields) for a in GRID]), ignore_index=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    header = (f"# rendered microglia morphology vs activation, default truth model; benchmarks/morphology_truth.py "
              f"--fields {args.fields} at {commit}, {datetime.date.today()}, {time.perf_counter() - t0:.0f} s\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        f.write(header)
        table.round(5).to_csv(f, index=False)
    print(header + table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
