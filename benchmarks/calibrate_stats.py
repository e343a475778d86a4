"""Calibration of the longitudinal synapse model by simulation.

For each of ``--studies`` simulated ``null`` studies (no drug effect) and as many ``default``
studies (known effect), image-level densities are drawn from the design
(:func:`analysis.sim.measurements.simulate_measurements`), the mixed model is fitted and every planned
contrast (treated group versus vehicle at the end of dosing) is compared with the true effect
of the simulation (:func:`analysis.sim.validation.calibration_study`; ``notebooks/04_validation``
shows the same on a smaller scale).

Reported per contrast: rejection rate at alpha 0.05 (type I error where the true effect is 0,
e.g. all null studies and the TSPO knockout; power otherwise), 95 % CI coverage of the true
effect (-13 % for WT diazepam 5 mg/kg x 7 d), mean estimate, and mean log estimate minus truth
in units of the mean standard error.

The terminal endpoints are calibrated the same way
(:func:`analysis.sim.measurements.simulate_terminal_measurements`): microglia density and engulfed puncta
per cell (quasi-Poisson on animal totals) and skeleton length (animal means of the log), the
planned contrast WT diazepam 5 mg/kg x 7 d versus vehicle, truth from
:func:`analysis.sim.truth.readout_multipliers`.

Pass or fail (``make calibrate`` exits non-zero on a failure): per endpoint, the primary
contrast (WT diazepam 5 mg/kg x 7 d versus vehicle; one per study, so the studies are
independent Bernoulli trials) must not reject significantly more often than 5 % in the null
studies, nor cover the truth significantly less often than 95 % in the effect studies (exact
one-sided binomial tests at level 0.01); for the mixed model also the pooled rejection rate of
all ten planned contrasts of the null studies (a one-sided z test on the per-study fractions).
With the default 1000 studies a test fails at >= 68 rejections (probability 0.007 when the type
I error is 0.05): power 0.93 against a type I error of 0.08 and 1.00 against 0.10 (coverage: the
same against 0.92); the script prints each test's power.  This replaces calibration tests in
the suite, which can afford ~12-40 studies (power 0.04-0.07 against 0.08).

Usage::

    make calibrate                      # all parts, 1000 studies each, ~1 h of CPU
    python benchmarks/calibrate_stats.py --studies 1000 --workers 2 --out benchmarks/results/calibration.csv
    python benchmarks/calibrate_stats.py --part microglia --studies 1000 --workers 2
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.stats.models import fit_count_endpoint, fit_morphology_endpoint
from analysis.sim.measurements import simulate_terminal_measurements
from analysis.sim.truth import activation, calibrated_model, readout_multipliers
from analysis.sim.validation import calibrate, calibration_summary

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


def binomial_check(name: str, k: int, n: int, *, nominal: float, worse: float, side: str,
                   level: float = 0.01) -> dict:
    """Exact one-sided binomial test of an observed rate against its nominal value.

    ``side="upper"``: a rejection count ``k`` of ``n`` that should be ``nominal`` (0.05) fails
    when ``P(X >= k) <= level``; ``side="lower"``: a coverage count fails when ``P(X <= k) <=
    level``.  ``power`` is the probability of failing when the true rate is ``worse``.

    >>> binomial_check("t", 60, 1000, nominal=0.05, worse=0.08, side="upper")["threshold"]
    68
    """
    if side == "upper":
        crit = int(sps.binom.isf(level, n, nominal))
        while sps.binom.sf(crit - 1, n, nominal) > level:
            crit += 1
        while crit > 0 and sps.binom.sf(crit - 2, n, nominal) <= level:
            crit -= 1
        p, power, ok = sps.binom.sf(k - 1, n, nominal), sps.binom.sf(crit - 1, n, worse), k < crit
    else:
        crit = int(sps.binom.ppf(level, n, nominal))
        while crit >= 0 and sps.binom.cdf(crit, n, nominal) > level:
            crit -= 1
        while sps.binom.cdf(crit + 1, n, nominal) <= level:
            crit += 1
        p, power, ok = sps.binom.cdf(k, n, nominal), sps.binom.cdf(crit, n, worse), k > crit
    return {"check": name, "studies": n, "observed": k / n, "nominal": nominal,
            "fails_at": f"{'>=' if side == 'upper' else '<='} {crit}", "threshold": crit,
            "p_one_sided": float(p), "power": float(power), "power_against": worse, "ok": bool(ok)}


def report(checks: list[dict]) -> bool:
    """Print the pass/fail table; True when every check passed."""
    table = pd.DataFrame(checks)
    print(table.round(4).to_string(index=False))
    failed = table.loc[~table["ok"], "check"].tolist()
    print("calibration:", "FAILED " + "; ".join(failed) if failed else "all checks passed")
    return not failed


def lmm_checks(df: pd.DataFrame) -> list[dict]:
    """Binomial checks of the mixed model's primary contrast and a pooled check of all null contrasts."""
    checks = []
    null = df[df["null"].astype(bool)]
    eff = df[~df["null"].astype(bool)]
    for name, sub, kind in (("LMM type I, null studies, " + GROUP, null[null.group == GROUP], "reject"),
                            ("LMM type I, default studies, TSPO_KO diazepam 5 mg/kg x 7 d",
                             eff[eff.group == "TSPO_KO diazepam 5 mg/kg x 7 d"], "reject"),
                            ("LMM coverage, default studies, " + GROUP, eff[eff.group == GROUP], "cover")):
        if sub.empty:
            continue
        if kind == "reject":
            checks.append(binomial_check(name, int((sub.p < 0.05).sum()), len(sub), nominal=0.05, worse=0.08,
                                         side="upper"))
        else:
            checks.append(binomial_check(name, int(sub.covered.sum()), len(sub), nominal=0.95, worse=0.92,
                                         side="lower"))
    if len(null):
        frac = null.assign(r=null.p < 0.05).groupby("seed")["r"].mean()
        z = (frac.mean() - 0.05) / (frac.std(ddof=1) / np.sqrt(len(frac)))
        checks.append({"check": "LMM type I, null studies, all planned contrasts pooled", "studies": len(frac),
                       "observed": float(frac.mean()), "nominal": 0.05, "fails_at": "z >= 2.33",
                       "p_one_sided": float(sps.norm.sf(z)), "ok": bool(z < sps.norm.isf(0.01))})
    return checks


def microglia_checks(df: pd.DataFrame) -> list[dict]:
    """Binomial checks of each terminal endpoint's primary contrast."""
    checks = []
    for endpoint, sub in df.groupby("endpoint"):
        null, eff = sub[sub.preset == "null"], sub[sub.preset != "null"]
        checks.append(binomial_check(f"{endpoint} type I, null studies", int((null.p < 0.05).sum()), len(null),
                                     nominal=0.05, worse=0.08, side="upper"))
        checks.append(binomial_check(f"{endpoint} coverage, default studies", int(eff.covered.sum()), len(eff),
                                     nominal=0.95, worse=0.92, side="lower"))
    return checks


def microglia(args: argparse.Namespace) -> list[dict]:
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
    return microglia_checks(df)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=1000,
                    help="simulated studies per preset (default 1000: power 0.93 against a type I error of 0.08)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/calibration.csv"))
    ap.add_argument("--part", choices=["all", "lmm", "microglia"], default="all")
    ap.add_argument("--microglia", action="store_true", help="same as --part microglia")
    args = ap.parse_args()
    part = "microglia" if args.microglia else args.part
    checks = []
    if part in ("all", "microglia"):
        checks += microglia(args)
    if part in ("all", "lmm"):
        df = pd.concat([calibrate("null", args.studies, first_seed=10_000, workers=args.workers),
                        calibrate("default", args.studies, first_seed=20_000, workers=args.workers)],
                       ignore_index=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
        print(calibration_summary(df).round(3).to_string())
        checks += lmm_checks(df)
    sys.exit(0 if report(checks) else 1)


if __name__ == "__main__":
    main()
