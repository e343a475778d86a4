"""Coverage of the morphology contrasts with the simulator's own cells (no images, no detector).

Six whole studies through the pipeline covered the true skeleton-length ratio in 52 of 60
planned contrasts *with the true cells* (RESULTS, session 11), so the question is the
statistical model, not the measurement.  A whole study takes ~20 min; this draws only the
terminal fields' cells of a study design -- the same design (:func:`analysis.sim.design.build_design`,
animal random effects, microglia density, activation per group) and the same cell generator
(:func:`analysis.sim.glia.simulated_cells`, the trees :func:`~analysis.sim.glia.render_terminal_field`
draws, interior cells of the study's field size) -- in ~20 s, and fits the report's microglia
models (:func:`analysis.stats.models._fit_microglia`) on them, against the truth the whole-study
calibration uses (:func:`analysis.sim.validation.true_ratio`).

Stage ``run`` caches one cell table per study (``benchmarks/results/morphology/``); stage
``analyse`` fits every planned contrast of skeleton length and branch points and summarises
coverage, bias and CI width per endpoint, overall and per contrast, into
``benchmarks/calibration_morphology.md`` (committed; notebook 04 shows it).

Usage::

    python benchmarks/calibrate_morphology.py run --studies 100 --workers 2
    python benchmarks/calibrate_morphology.py analyse

Cost on the 2-core reference machine: ~21 s of one core per study (224 fields of 640 x 640 px,
~650 interior cells), so 100 + 100 studies take ~40 min with 2 workers; ``analyse`` 30 s.
Results: ``benchmarks/RESULTS.md`` (session 12).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("calibrate_morphology")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from calibrate_e2e import _commit, microglia_rows  # noqa: E402  (the whole-study calibration's fit and truth)

CACHE = ROOT / "benchmarks" / "results" / "morphology"
#: First design seed of each preset (the cells themselves are drawn from ``(seed, 7, field)``, a
#: stream no other calibration uses; the synapse bank's designs share seeds 70,000-70,001).
FIRST_SEED = {"null": 70_000, "default": 80_000}
ENDPOINTS = ("skeleton_length_um (ratio of geometric means)", "branch_points (ratio of geometric means)")


def study_cells(preset: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The terminal rows of one study's design and the interior cells of each of its fields."""
    from analysis.sim.design import PRESETS, build_design
    from analysis.sim.glia import simulated_cells
    from analysis.sim.truth import calibrated_model

    p = PRESETS[preset]
    model = calibrated_model()
    design = build_design(p, model.without_drug_effect() if p.null else model, seed)
    term = design[design["readout"] == "terminal"].reset_index(drop=True)
    cells = []
    for k, r in enumerate(term.itertuples()):
        c = simulated_cells(microglia_per_mm2=r.true_microglia_per_mm2, process_length_scale=r.process_length_scale,
                            branching_scale=r.branching_scale, soma_scale=r.soma_scale, fields=1,
                            seed=(seed, 7, k), shape=tuple(p.terminal_shape), pixel_size_um=p.terminal_pixel_size_um)
        cells.append(c.drop(columns="field").assign(image_id=r.image_id))
    cells = pd.concat(cells, ignore_index=True)
    counts = cells.groupby("image_id").size()
    term["microglia_count"] = term["image_id"].map(counts).fillna(0).astype(float)
    h, w = p.terminal_shape
    term["field_area_mm2"] = h * w * p.terminal_pixel_size_um**2 * 1e-6
    keep = ["image_id", "animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day", "sex",
            "microglia_count", "field_area_mm2", "process_length_scale", "true_microglia_per_mm2"]
    return term[keep], cells


def run_one(task: tuple[str, int, str]) -> str:
    preset, seed, cache = task
    out = Path(cache) / f"{preset}_{seed}"
    if (out / "cells.parquet").exists():
        return str(out)
    t0 = time.perf_counter()
    term, cells = study_cells(preset, seed)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    term.to_parquet(tmp / "measurements.parquet")
    cells.to_parquet(tmp / "cells.parquet")
    tmp.rename(out)
    log.info("%s seed %d: %d fields, %d cells, %.0f s", preset, seed, len(term), len(cells), time.perf_counter() - t0)
    return str(out)


def run(args: argparse.Namespace) -> None:
    tasks = [(p, FIRST_SEED[p] + i, str(args.cache)) for i in range(args.studies) for p in args.presets]
    with ProcessPoolExecutor(args.workers) as pool:
        for n, path in enumerate(pool.map(run_one, tasks), 1):
            if n % 10 == 0:
                log.info("[%d/%d] %s", n, len(tasks), path)


def analyse_one(folder: Path) -> pd.DataFrame:
    preset, seed = folder.name.rsplit("_", 1)
    m = pd.read_parquet(folder / "measurements.parquet")
    cells = pd.read_parquet(folder / "cells.parquet").assign(touches_border=False)
    rows = microglia_rows(m, cells, preset == "null")
    return rows[rows["endpoint"].isin(ENDPOINTS)].assign(preset=preset, seed=int(seed))


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    g = rows.groupby(["preset", "endpoint"])
    return pd.DataFrame({
        "studies": g["seed"].nunique(),
        "contrasts": g.size(),
        "coverage": g["covered"].mean(),
        "mean_log_error": g["log_error"].mean(),
        "sd_log_error": g["log_error"].std(),
        "mean_se": g["log_se"].mean(),
        "reject": g.apply(lambda d: (d["p"] < 0.05).mean()),
    }).reset_index()


def _name(endpoint: str) -> str:
    return endpoint.split(" (")[0].replace("_um", "").replace("_", " ")


def markdown_summary(rows: pd.DataFrame) -> str:
    """The committed summary (``benchmarks/calibration_morphology.md``, shown in notebook 04)."""
    summary = summarise(rows)
    n = rows.groupby("preset")["seed"].nunique()
    lines = [
        "# Calibration of the morphology contrasts (the simulator's own cells)", "",
        f"Generated by `benchmarks/calibrate_morphology.py` on {datetime.date.today().isoformat()} at commit "
        f"{_commit()}: {n.get('null', 0)} null and {n.get('default', 0)} effect studies of the default design, "
        "each field's interior cells drawn by the image simulator's own cell generator (no images, no detector: "
        "this tests the statistics of the morphology endpoints, the OLS on animal means of log), fitted with the "
        "report's microglia models and compared with the rendered-cell truth. Planned contrasts: each treated group "
        "versus its vehicle at the end of dosing. Target (issue 13): coverage 0.93-0.97.", "",
        "## Per endpoint", "",
        "| studies | endpoint | planned contrasts | coverage | mean log error | SD of log error | mean SE (log) | "
        "rejection rate (alpha 0.05) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples():
        what = "type I error" if r.preset == "null" else "power"
        lines.append(f"| {r.preset} | {_name(r.endpoint)} | {r.contrasts} | {r.coverage:.3f} | "
                     f"{r.mean_log_error:+.4f} | {r.sd_log_error:.3f} | {r.mean_se:.3f} | {r.reject:.3f} ({what}) |")
    total = int(summary["contrasts"].min())
    lines += ["", f"Monte-Carlo uncertainty: a rate of 0.95 or 0.05 over {total:,} contrasts has a 95 % interval of "
              f"+-{1.96 * np.sqrt(0.95 * 0.05 / total):.3f} (contrasts of one study share their vehicle group, so "
              "these intervals are somewhat too narrow).", "",
              "## Every planned contrast: coverage", "",
              "| group | skeleton length, effect | skeleton length, null | branch points, effect | branch points, null |",
              "|---|---|---|---|---|"]
    cov = rows.groupby(["group", "endpoint", "preset"])["covered"].mean()
    for group in sorted(rows["group"].unique()):
        cells = [f"{cov.get((group, e, p), float('nan')):.2f}" for e in ENDPOINTS for p in ("default", "null")]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    # contrasts share their vehicle group, so misses come in clusters: the distribution of
    # misses per study, and how often six studies (as many as the whole-study runs) miss >= 8
    misses = rows.groupby(["preset", "endpoint", "seed"])["covered"].apply(lambda c: int((~c).sum()))
    rng = np.random.default_rng(1)
    notes = []
    for (preset, endpoint), m in misses.groupby(level=[0, 1]):
        m = m.to_numpy()
        six = rng.choice(m, size=(100_000, 6)).sum(axis=1)
        notes.append(f"{preset} {_name(endpoint)}: misses per study (0, 1, 2, ...) {np.bincount(m).tolist()}, "
                     f"six studies with >= 8 misses of 60: {np.mean(six >= 8):.3f}")
    per_contrast = 1.96 * np.sqrt(0.95 * 0.05 / max(int(n.min()), 1))
    lines += ["", f"Per planned contrast over {int(n.min())} studies the 95 % interval of a coverage of 0.95 is "
              f"+-{per_contrast:.3f}. "
              "Misses cluster by study: " + "; ".join(notes) + ".", ""]
    return "\n".join(lines)


def analyse(args: argparse.Namespace) -> pd.DataFrame:
    folders = sorted(f for f in Path(args.cache).iterdir() if f.is_dir() and not f.name.endswith(".tmp"))
    rows = pd.concat([analyse_one(f) for f in folders], ignore_index=True)
    rows.to_csv(Path(args.cache) / "rows.csv", index=False)
    text = markdown_summary(rows)
    print(text)
    if args.md is not None:
        args.md.write_text(text, encoding="utf-8")
        log.info("wrote %s", args.md)
    return summarise(rows)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    r = sub.add_parser("run")
    r.add_argument("--studies", type=int, default=100)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--presets", nargs="+", default=["null", "default"])
    r.add_argument("--cache", type=Path, default=CACHE)
    a = sub.add_parser("analyse")
    a.add_argument("--cache", type=Path, default=CACHE)
    a.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "calibration_morphology.md",
                   help="markdown summary (committed; notebook 04 shows it)")
    args = ap.parse_args()
    {"run": run, "analyse": analyse}[args.stage](args)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
