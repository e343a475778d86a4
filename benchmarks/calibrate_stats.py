"""Calibration of the longitudinal synapse model by simulation.

For each of ``--studies`` simulated ``null`` studies (no drug effect) and as many ``default``
studies (known effect), image-level densities are drawn from the design
(:func:`analysis.stats.simulate_measurements`), the mixed model is fitted and every planned
contrast (treated group versus vehicle at the end of dosing) is compared with the true effect
of the simulation (:func:`analysis.validation.calibration_study`; ``notebooks/04_validation``
shows the same on a smaller scale).

Reported per contrast: rejection rate at alpha 0.05 (type I error where the true effect is 0,
e.g. all null studies and the TSPO knockout; power otherwise), 95 % CI coverage of the true
effect (-13 % for WT diazepam 5 mg/kg x 7 d), mean estimate, and mean log estimate minus truth
in units of the mean standard error.

With ``--microglia`` the terminal endpoints are calibrated the same way
(:func:`analysis.stats.simulate_terminal_measurements`): microglia density and engulfed puncta
per cell (quasi-Poisson on animal totals) and skeleton length (animal means of the log), the
planned contrast WT diazepam 5 mg/kg x 7 d versus vehicle, truth from
:func:`analysis.truth.readout_multipliers`.

Usage::

    python benchmarks/calibrate_stats.py --studies 200 --workers 2 --out benchmarks/results/calibration.csv
    python benchmarks/calibrate_stats.py --microglia --studies 200 --workers 2
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.stats import fit_count_endpoint, fit_morphology_endpoint, simulate_terminal_measurements
from analysis.truth import activation, calibrated_model, readout_multipliers
from analysis.validation import calibrate, calibration_summary

GROUP = "WT diazepam 5 mg/kg x 7 d"


def true_microglia_ratios() -> dict[str, float]:
    """True ratio versus vehicle of each terminal endpoint for :data:`GROUP` at day 7."""
    model = calibrated_model()
    a = float(activation(model, genotype="WT", compound="diazepam", dose_mg_kg=5.0, treatment_days=7, day=7))
    m = readout_multipliers(model, a)
    return {"microglia density": m["microglia_density"], "engulfed per cell": m["engulfed_per_cell"],
            "skeleton length": m["process_length"]}


def one_microglia(args: tuple[str, int]) -> list[dict]:
    """Planned WT diazepam 5 mg/kg x 7 d contrast of each terminal endpoint in one simulated study."""
    preset, seed = args
    img, cells = simulate_terminal_measurements(preset, seed)
    cc = cells.merge(img, on="image_id")
    tables = {
        "microglia density": fit_count_endpoint(img, "microglia_count", exposure="field_area_mm2")[0],
        "engulfed per cell": fit_count_endpoint(cc, "engulfed_puncta")[0],
        "skeleton length": fit_morphology_endpoint(cc, "skeleton_length_um"),
    }
    truth = true_microglia_ratios()
    out = []
    for endpoint, t in tables.items():
        r = t[(t.group == GROUP) & t.planned].iloc[0]
        true = 1.0 if preset == "null" else truth[endpoint]
        out.append({"preset": preset, "seed": seed, "endpoint": endpoint, "true_ratio": true,
                    "ratio": r.ratio_vs_vehicle, "ci_low": r.ci_low, "ci_high": r.ci_high, "p": r.p_value})
    return out


def microglia(args: argparse.Namespace) -> None:
    """Type I error, coverage and mean estimate of the terminal endpoints."""
    jobs = [("null", 30_000 + s) for s in range(args.studies)] + [("default", 40_000 + s) for s in range(args.studies)]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [r for chunk in pool.map(one_microglia, jobs, chunksize=8) for r in chunk]
    df = pd.DataFrame(rows)
    out = args.out.with_name(args.out.stem + "_microglia.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    df["covered"] = (df.ci_low < df.true_ratio) & (df.true_ratio < df.ci_high)
    df["reject"] = df.p < 0.05
    summary = df.groupby(["preset", "endpoint"]).agg(
        studies=("seed", "size"), true_ratio=("true_ratio", "first"), reject_rate=("reject", "mean"),
        coverage=("covered", "mean"), geometric_mean_ratio=("ratio", lambda s: float(np.exp(np.log(s).mean()))),
    )
    print(summary.round(3).to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/calibration.csv"))
    ap.add_argument("--microglia", action="store_true", help="calibrate the terminal microglia endpoints instead")
    args = ap.parse_args()
    if args.microglia:
        microglia(args)
        return
    df = pd.concat([calibrate("null", args.studies, first_seed=10_000, workers=args.workers),
                    calibrate("default", args.studies, first_seed=20_000, workers=args.workers)], ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(calibration_summary(df).round(3).to_string())


if __name__ == "__main__":
    main()
