"""End-to-end calibration: simulated studies run through the whole pipeline (images -> quantify -> fit).

The shipped calibration (``benchmarks/calibrate_stats.py``, notebook 04) draws measurement
tables with perfect counts; it never sees the detector.  Here each study is simulated *as
images* (:func:`analysis.sim.simulate.simulate_study`, preset ``null`` or ``default``), quantified
by the real pipeline (:func:`analysis.pipeline.quantify.quantify_study`, the same code and parameters as
``analysis quantify``), and the quantified tables are kept in a cache folder, one sub-folder
per study, so the expensive part runs once and can be resumed (a killed run loses at most the
studies in progress).  The images themselves are deleted after quantification.

Stage ``run`` fills the cache; stage ``analyse`` fits every planned contrast of every endpoint
twice on each cached study -- on the measured tables and on the simulation's true counts of
the same images (``perfect``) -- and, for the synapse model, with each measurement-aware
variant of :func:`synapse_variants` -- and writes per-study rows and a summary (bias, coverage,
power or type I error, CI width) beside each other.

Usage::

    python benchmarks/calibrate_e2e.py run --studies 100 --workers 2
    python benchmarks/calibrate_e2e.py analyse

Cost on the 2-core reference machine: a default study (2,304 images) took 1,117-1,133 s of
one core in stage ``run`` (machine partly loaded), so 2 x 100 studies take about a day on 2
cores; the cache makes it resumable across sessions.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

log = logging.getLogger("calibrate_e2e")

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "results" / "e2e"
#: First seed of each preset: seeds not used by the shipped calibration (10,000-40,000 ranges)
#: nor by the report (0).
FIRST_SEED = {"null": 50_000, "default": 60_000}
#: Files of the pipeline kept per study.
KEPT = ("measurements.parquet", "cells.parquet", "failures.csv")


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def study_dir(cache: Path, preset: str, seed: int) -> Path:
    return cache / f"{preset}-{seed}"


def run_one(preset: str, seed: int, cache: str) -> tuple[str, int, float]:
    """Simulate one study as images, quantify it, keep its tables (skipped when already done)."""
    from analysis.pipeline.quantify import quantify_study
    from analysis.sim.simulate import simulate_study

    out = study_dir(Path(cache), preset, seed)
    if (out / "study.json").exists():
        return preset, seed, 0.0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"e2e-{preset}-{seed}-") as tmp:
        raw, processed = Path(tmp) / "raw", Path(tmp) / "processed"
        simulate_study(raw, preset=preset, seed=seed, workers=1, progress=False)
        quantify_study(raw / "samples.csv", processed, workers=1, progress=False)
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in KEPT:
            shutil.copy2(processed / name, staging / name)
        shutil.copy2(raw / "ground_truth.csv", staging / "ground_truth.csv")
        truth_cells = [pd.read_csv(raw / f).assign(image_id=i) for i, f in
                       pd.read_csv(raw / "ground_truth.csv")[["image_id", "cells_file"]].dropna().itertuples(index=False)]
        if truth_cells:
            pd.concat(truth_cells, ignore_index=True).to_parquet(staging / "truth_cells.parquet")
        seconds = time.perf_counter() - t0
        (staging / "study.json").write_text(json.dumps(
            {"preset": preset, "seed": seed, "commit": _commit(), "seconds": round(seconds, 1)}))
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    return preset, seed, seconds


def run(args: argparse.Namespace) -> None:
    """Fill the cache with ``--studies`` null and as many default studies (interleaved)."""
    jobs = [(p, FIRST_SEED[p] + i) for i in range(args.first, args.first + args.studies) for p in ("null", "default")]
    todo = [j for j in jobs if not (study_dir(args.cache, *j) / "study.json").exists()]
    log.info("%d of %d studies cached; running %d on %d workers", len(jobs) - len(todo), len(jobs), len(todo),
             args.workers)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, p, s, str(args.cache)) for p, s in todo]
        for n, f in enumerate(as_completed(futures), 1):
            preset, seed, seconds = f.result()
            log.info("[%d/%d] %s seed %d done in %.0f s", n, len(todo), preset, seed, seconds)


# --- stage "analyse" ---------------------------------------------------------------------------

#: Synapse density columns compared: the measured one, the truth of the same images, and the
#: measurement-aware variants (each a column computed by :func:`synapse_variants`).
SYNAPSE_VALUE = "puncta_density_per_100um2"
#: Terminal endpoint (as named in ``microglia_contrasts.csv``) -> key of
#: :func:`analysis.sim.truth.readout_multipliers`; its true ratio versus vehicle is
#: :func:`analysis.sim.validation.true_ratio` (for morphology, what the rendered cells show).
MICROGLIA_TRUTH = {
    "microglia density (rate ratio)": "microglia_density",
    "engulfed puncta per cell (rate ratio)": "engulfed_per_cell",
    "skeleton_length_um (ratio of geometric means)": "process_length",
    "branch_points (ratio of geometric means)": "branching",
    "cd68_area_fraction (ratio of geometric means)": "cd68_area_fraction",
}


#: The pre-specified primary contrast of the simulated design (``analysis_plan.json``).
PRIMARY = "WT diazepam 5 mg/kg x 7 d"


def synapse_variants(m: pd.DataFrame, truth: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """The longitudinal synapse table (and model covariates) under each way of using the measurements.

    ``measured``: as quantified, no covariates (the model before issue 13).  ``perfect``: the
    simulation's true density of the same images (the in-focus puncta actually drawn, so the
    biological and Poisson variation are kept and only the measurement error is removed).
    ``recall-corrected``: the measured density times the image's estimated precision over its
    spike-in recall.  ``snr-covariate``: the measured density with the measured SNR as
    covariate (:func:`analysis.stats.quality_covariates`).  ``fp-corrected``: the measured
    density minus the false detections expected at the image's SNR
    (:func:`analysis.stats.models.false_detection_corrected`), with the SNR covariate.
    """
    from analysis.stats.models import false_detection_corrected, quality_covariates

    import numpy as np

    syn = m[m["microglia_channel"].isna()].copy()
    perfect = syn.drop(columns=[SYNAPSE_VALUE]).merge(
        truth[["image_id", "true_puncta_density_per_100um2"]].rename(
            columns={"true_puncta_density_per_100um2": SYNAPSE_VALUE}), on="image_id", how="left")
    corrected = syn.copy()
    if {"spike_in_recall", "est_precision"} <= set(syn.columns):
        recall = syn["spike_in_recall"].where(syn["spike_in_recall"] > 0)
        precision = syn["est_precision"].fillna(1.0)
        corrected[SYNAPSE_VALUE] = syn[SYNAPSE_VALUE] * precision / recall
    else:
        corrected[SYNAPSE_VALUE] = np.nan
    adjusted, names = quality_covariates(syn)
    fp, applied = false_detection_corrected(syn)
    fp_adjusted, fp_names = quality_covariates(fp) if applied else (fp.assign(**{SYNAPSE_VALUE: np.nan}), [])
    return {"measured": (syn, []), "perfect": (perfect, []), "recall-corrected": (corrected, []),
            "snr-covariate": (adjusted, names), "fp-corrected": (fp_adjusted, fp_names)}


def synapse_rows(table: pd.DataFrame, null: bool, covariates: list[str] | tuple = ()) -> pd.DataFrame:
    """Planned synapse contrasts of one table with their truth; ``p_adjusted`` is the report's
    multiplicity procedure (:data:`PRIMARY` first, then Holm)."""
    import numpy as np
    import scipy.stats as sps

    from analysis.stats.models import fit_synapse_lmm, session_contrasts
    from analysis.sim.validation import true_pct_vs_vehicle

    fit = fit_synapse_lmm(table, SYNAPSE_VALUE, covariates=list(covariates))
    c = session_contrasts(fit, primary=PRIMARY)
    c = c[c["planned"]].reset_index(drop=True)
    true = true_pct_vs_vehicle(c, null=null)
    lo, hi = c["pct_vs_vehicle_ci_low"], c["pct_vs_vehicle_ci_high"]
    log_lo, log_hi = np.log1p(lo / 100), np.log1p(hi / 100)
    return pd.DataFrame({
        "endpoint": "synapse density (% vs vehicle)", "group": c["group"], "true": true,
        "estimate": c["pct_vs_vehicle"], "ci_low": lo, "ci_high": hi, "p": c["p_vs_vehicle"],
        "p_adjusted": c["p_vs_vehicle_adjusted"], "covered": (lo <= true) & (true <= hi),
        "log_error": np.log1p(c["pct_vs_vehicle"] / 100) - np.log1p(true / 100),
        "log_se": (log_hi - log_lo) / (2 * sps.t.ppf(0.975, c["df"])), "converged": fit.converged,
    })


def _truth_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The simulation's true cells in the columns of the measured per-cell table."""
    out = cells.rename(columns={"engulfed_count": "engulfed_puncta"}).copy()
    if {"cd68_area_um2", "area_um2"} <= set(out.columns):
        out["cd68_area_fraction"] = out["cd68_area_um2"] / out["area_um2"]
    return out


def microglia_rows(m: pd.DataFrame, cells: pd.DataFrame, null: bool) -> pd.DataFrame:
    """Planned terminal contrasts (the report's own ``microglia_contrasts.csv``) with their truth."""
    import numpy as np

    from analysis.stats.models import _fit_microglia
    from analysis.sim.truth import activation, calibrated_model
    from analysis.sim.validation import true_ratio

    with tempfile.TemporaryDirectory() as tmp:
        written = _fit_microglia(m, cells, Path(tmp))
        if "microglia" not in written:
            return pd.DataFrame()
        t = pd.read_csv(written["microglia"])
    t = t[t["planned"] & t["endpoint"].isin(MICROGLIA_TRUTH)].reset_index(drop=True)
    model = calibrated_model()
    true = []
    for r in t.itertuples():
        a = 0.0 if null else float(activation(model, genotype=r.genotype, compound=r.compound,
                                                dose_mg_kg=float(r.dose_mg_kg),
                                                treatment_days=float(r.treatment_days), day=float(r.day)))
        true.append(true_ratio(model, MICROGLIA_TRUTH[r.endpoint], a))
    true = np.array(true)
    log_lo, log_hi = np.log(t["ci_low"]), np.log(t["ci_high"])
    return pd.DataFrame({
        "endpoint": t["endpoint"], "group": t["group"], "true": true, "estimate": t["ratio_vs_vehicle"],
        "ci_low": t["ci_low"], "ci_high": t["ci_high"], "p": t["p_value"], "p_adjusted": t["p_holm"],
        "covered": (t["ci_low"] <= true) & (true <= t["ci_high"]),
        "log_error": np.log(t["ratio_vs_vehicle"]) - np.log(true),
        "log_se": (log_hi - log_lo) / (2 * 1.96), "converged": True,
    })


def analyse_study(folder: Path) -> pd.DataFrame:
    """Every planned contrast of one cached study, measured and perfect (and variants)."""
    info = json.loads((folder / "study.json").read_text())
    null = info["preset"] == "null"
    m = pd.read_parquet(folder / "measurements.parquet")
    truth = pd.read_csv(folder / "ground_truth.csv")
    frames = []
    for variant, (table, covariates) in synapse_variants(m, truth).items():
        if table[SYNAPSE_VALUE].notna().sum() == 0:
            continue
        frames.append(synapse_rows(table, null, covariates).assign(variant=variant))
    cells = pd.read_parquet(folder / "cells.parquet")
    frames.append(microglia_rows(m, cells, null).assign(variant="measured"))
    if (folder / "truth_cells.parquet").exists():
        tm = m.drop(columns=["microglia_count"]).merge(
            truth[["image_id", "true_microglia_count"]].rename(columns={"true_microglia_count": "microglia_count"}),
            on="image_id", how="left")
        tm.loc[m["microglia_count"].isna().to_numpy(), "microglia_count"] = float("nan")
        tcells = _truth_cells(pd.read_parquet(folder / "truth_cells.parquet"))
        frames.append(microglia_rows(tm, tcells, null).assign(variant="perfect"))
    out = pd.concat(frames, ignore_index=True)
    return out.assign(preset=info["preset"], seed=info["seed"], commit=info["commit"])


def summarise(rows: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per preset, variant, endpoint and group: studies, rejection rate (raw and adjusted),
    coverage, mean estimate, bias (mean log error, in % and in SEs) and mean CI width."""
    import numpy as np

    rows = rows.assign(reject=rows["p"] < alpha, reject_adjusted=rows["p_adjusted"] < alpha,
                       width=rows["ci_high"] - rows["ci_low"])
    g = rows.groupby(["preset", "endpoint", "group", "variant"], sort=True)
    out = g.agg(studies=("seed", "size"), true=("true", "mean"), reject_rate=("reject", "mean"),
                reject_rate_adjusted=("reject_adjusted", "mean"), coverage=("covered", "mean"),
                mean_estimate=("estimate", "mean"), mean_log_error=("log_error", "mean"),
                mean_log_se=("log_se", "mean"), ci_width=("width", "mean"),
                converged=("converged", "mean")).reset_index()
    out["bias_pct"] = 100 * np.expm1(out["mean_log_error"])
    out["bias_in_se"] = out["mean_log_error"] / out["mean_log_se"]
    return out


def analyse(args: argparse.Namespace) -> pd.DataFrame:
    """Fit every cached study; write the per-study rows and print the summary."""
    folders = sorted(p for p in args.cache.glob("*-*") if (p / "study.json").exists())
    if not folders:
        raise SystemExit(f"no cached studies in {args.cache}; run the 'run' stage first")
    rows = pd.concat([analyse_study(f) for f in folders], ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.out, index=False)
    summary = summarise(rows)
    summary.to_csv(args.out.with_name(args.out.stem + "_summary.csv"), index=False)
    log.info("%d studies analysed -> %s", len(folders), args.out)
    with pd.option_context("display.width", 250, "display.max_rows", 500):
        print(summary.drop(columns=["mean_log_error", "mean_log_se"]).round(3).to_string(index=False))
    return summary


# --- stage "bank": synapse fields rendered and quantified once -----------------------------------
#
# A full default study costs ~19 core-minutes (2,080 synapse fields and 224 terminal fields,
# measured), so >= 200 full studies take about a day on 2 cores.  For the synapse endpoints the
# measurement of a field depends only on the field's own image (true density, SNR level and
# the random layout): fields are independent given their truth.  The bank renders synapse
# fields exactly as ``simulate`` does (:func:`analysis.sim.phantoms.render_synapse_field` with the
# density and SNR level of rows of real designs) and quantifies each with the pipeline's own
# :func:`analysis.pipeline.quantify.quantify_image` (detector, mask, spike-in quality: the same code and
# parameters as ``analysis quantify``).  Stage ``bank-calibrate`` then builds each calibration
# study from its own design and gives every field the measurement of a bank field of the same
# SNR level and nearly the same true density (measured / true ratio and quality columns of one
# of the ``K_NEAREST`` nearest in log density, drawn at random).  The full studies of stage
# ``run`` check this shortcut (same design seeds through the whole pipeline).

#: Bank fields are the synapse rows of default and null designs with these seeds.
BANK_SEEDS = (70_000, 70_001)
#: Fields per bank chunk file (the unit of resumption).
BANK_CHUNK = 104
#: A calibration field draws its measurement from this many nearest bank fields.
K_NEAREST = 8
#: Quality columns carried from the bank field to the calibration field.
QUALITY = ("measured_snr", "spike_in_recall", "est_precision", "puncta_median_snr")


#: Synapse fields per session of the bank's designs (fixed, whatever the preset's default).
BANK_FIELDS = 2


def _bank_design() -> pd.DataFrame:
    import dataclasses

    from analysis.sim.design import PRESETS, build_design
    from analysis.sim.truth import calibrated_model

    model = calibrated_model()
    frames = []
    for seed in BANK_SEEDS:
        for name in ("default", "null"):
            p = dataclasses.replace(PRESETS[name], synapse_fields=BANK_FIELDS)  # the bank stays fixed
            d = build_design(p, model.without_drug_effect() if p.null else model, seed)
            frames.append(d[d["readout"] == "synapse"].assign(bank_seed=seed, bank_preset=name))
    out = pd.concat(frames, ignore_index=True)
    return out[["bank_preset", "bank_seed", "image_id", "snr_level", "true_density_per_100um2",
                "pixel_size_um"]]


def bank_chunk(rows: pd.DataFrame, chunk: int, path: str) -> str:
    """Render and quantify one chunk of bank fields; write them to ``path``."""
    import numpy as np

    from analysis.sim import phantoms
    from analysis.sim.design import PRESETS
    from analysis.pipeline.quantify import QuantifyParams, quantify_image

    shape = PRESETS["default"].synapse_shape
    params = QuantifyParams()
    out = []
    for i, r in enumerate(rows.itertuples(index=False)):
        rng = np.random.default_rng(np.random.SeedSequence([r.bank_seed, chunk, i, 7]))
        fld = phantoms.render_synapse_field(rng, shape=shape, pixel_size_um=r.pixel_size_um,
                                            density_per_100um2=r.true_density_per_100um2,
                                            snr=phantoms.SNR_LEVELS[r.snr_level])
        in_focus = fld.puncta[~fld.puncta["engulfed"].astype(bool)]
        image = fld.image[None, None] if fld.image.ndim == 2 else fld.image[:, None]
        row, _ = quantify_image(image, float(r.pixel_size_um), synapse_channel=0, microglia_channel=None,
                                lysosome_channel=None, params=params)
        out.append({**r._asdict(), "true_realised_per_100um2": 100.0 * len(in_focus) / fld.analysed_area_um2,
                    "measured_per_100um2": row.get(SYNAPSE_VALUE, np.nan),
                    **{q: row.get(q, np.nan) for q in QUALITY}})
    tmp = Path(path).with_suffix(".tmp")
    pd.DataFrame(out).to_parquet(tmp)
    tmp.rename(path)
    return path


def build_bank(args: argparse.Namespace) -> None:
    """Render and quantify every bank field not yet in the cache (chunked, resumable)."""
    design = _bank_design()
    folder = args.cache / "bank"
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(design.iloc[i:i + BANK_CHUNK], i // BANK_CHUNK) for i in range(0, len(design), BANK_CHUNK)]
    todo = [(rows, c) for rows, c in chunks if not (folder / f"chunk-{c:04d}.parquet").exists()]
    log.info("bank: %d fields in %d chunks, %d to do", len(design), len(chunks), len(todo))
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(bank_chunk, rows, c, str(folder / f"chunk-{c:04d}.parquet")) for rows, c in todo]
        for n, f in enumerate(as_completed(futures), 1):
            log.info("[%d/%d] %s", n, len(todo), Path(f.result()).name)


def load_bank(cache: Path) -> pd.DataFrame:
    files = sorted((cache / "bank").glob("chunk-*.parquet"))
    if not files:
        raise SystemExit(f"no bank in {cache / 'bank'}; run the 'bank' stage first")
    bank = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return bank[bank["measured_per_100um2"].notna()].reset_index(drop=True)


def bank_study(bank: pd.DataFrame, preset: str, seed: int, draw: int = 0) -> pd.DataFrame:
    """The synapse table of one calibration study with bank measurements (see module notes).

    ``puncta_density_per_100um2`` is the measured density, ``true_realised_per_100um2`` the
    true density of the same (bank) image scaled to this field, plus the quality columns.
    ``draw`` > 0: another draw of the bank fields for the same design (stage ``bank-check``).
    """
    import numpy as np

    from analysis.sim.measurements import simulate_measurements

    syn = simulate_measurements(preset, seed).drop(columns=[SYNAPSE_VALUE])
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11, *([draw] if draw else [])]))
    picks = np.empty(len(syn), dtype=int)
    logd = np.log(bank["true_density_per_100um2"].to_numpy())
    for level, idx in syn.groupby("snr_level").indices.items():
        pool = np.flatnonzero(bank["snr_level"].to_numpy() == level)
        target = np.log(syn["true_density_per_100um2"].to_numpy()[idx])
        order = np.argsort(np.abs(logd[pool][None, :] - target[:, None]), axis=1)[:, :K_NEAREST]
        picks[idx] = pool[order[np.arange(len(idx)), rng.integers(0, order.shape[1], len(idx))]]
    b = bank.iloc[picks].reset_index(drop=True)
    scale = syn["true_density_per_100um2"].to_numpy() / b["true_density_per_100um2"].to_numpy()
    syn = syn.reset_index(drop=True)
    syn[SYNAPSE_VALUE] = b["measured_per_100um2"].to_numpy() * scale
    syn["true_realised_per_100um2"] = b["true_realised_per_100um2"].to_numpy() * scale
    for q in QUALITY:
        syn[q] = b[q].to_numpy()
    syn["microglia_channel"] = pd.NA
    return syn


def bank_calibrate_one(task: tuple[str, int, str, int | None, list[str] | None]) -> pd.DataFrame:
    from analysis.sim.design import PRESETS

    from analysis.sim.power import design_preset

    base, seed, cache, fields, variants = task
    preset = design_preset(base, synapse_fields=fields)
    null = PRESETS[preset].null
    bank = load_bank(Path(cache))
    syn = bank_study(bank, preset, seed)
    truth = syn[["image_id", "true_realised_per_100um2"]].rename(
        columns={"true_realised_per_100um2": "true_puncta_density_per_100um2"})
    frames = [synapse_rows(t, null, cov).assign(variant=v)
              for v, (t, cov) in synapse_variants(syn, truth).items()
              if t[SYNAPSE_VALUE].notna().any() and (not variants or v in variants)]
    return pd.concat(frames, ignore_index=True).assign(preset=preset, seed=seed, commit=_commit(), source="bank")


#: Committed summary of the calibration, shown in notebook 04 and linked from the index.
MARKDOWN = ROOT / "benchmarks" / "calibration_e2e.md"
#: The variant ``fit_study`` uses (first in :data:`VARIANT_LABELS`: notebook 04 reads the first row).
REPORT_VARIANT = "fp-corrected"
VARIANT_LABELS = {
    "fp-corrected": "measured minus the false detections expected at its SNR, SNR covariate (the report's model)",
    "snr-covariate": "measured, SNR covariate (the report's model until 2026-11-30)",
    "measured": "measured, no covariate (before)",
    "recall-corrected": "measured / spike-in recall x precision",
    "perfect": "perfect counts (true puncta of the same images)",
}


def _pts(x: float) -> str:
    return f"{x:+.1f}"


def markdown_summary(rows: pd.DataFrame, *, design: str, source: str) -> str:
    """The calibration as markdown tables (parsed by :func:`analysis.report.validation.parse_validation_markdown`)."""
    import datetime as dt

    import numpy as np

    rows = rows.assign(reject=rows["p"] < 0.05, reject_adjusted=rows["p_adjusted"] < 0.05,
                       err_pts=rows["estimate"] - rows["true"], width=rows["ci_high"] - rows["ci_low"])
    eff, null = rows[rows["preset"].str.startswith("default")], rows[rows["preset"].str.startswith("null")]
    n_eff, n_null = eff["seed"].nunique(), null["seed"].nunique()
    lines = [
        "# End-to-end calibration of the synapse statistics",
        "",
        f"Generated by `benchmarks/calibrate_e2e.py` on {dt.date.today().isoformat()} at commit {_commit()}: "
        f"{n_null} null and {n_eff} effect studies of the {design} ({source}). Planned contrasts: each treated "
        f"group versus its vehicle at the end of dosing; primary contrast {PRIMARY} (truth -13 %), tested first, "
        "then Holm over the other nine (the report's procedure). Bias, CI width in percentage points of the "
        "percent change versus vehicle. Targets (issue 13): primary power >= 0.80 at the report's adjustment, "
        "coverage 0.93-0.97 for every planned contrast, bias within 1 point.",
        "",
        "## Models compared",
        "",
        "| model | primary power (adjusted) | primary mean estimate, % | primary bias, points | primary CI width, points "
        "| coverage, planned contrasts (min-max) | null: primary type I error | null: family-wise error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, label in VARIANT_LABELS.items():
        e, n = eff[eff["variant"] == variant], null[null["variant"] == variant]
        if e.empty:
            continue
        h, hn = e[e["group"] == PRIMARY], n[n["group"] == PRIMARY]
        cov = e.groupby("group")["covered"].mean()
        fwe = n.groupby("seed")["reject_adjusted"].any().mean() if len(n) else np.nan
        lines.append(f"| {label} | {h['reject_adjusted'].mean():.2f} | {h['estimate'].mean():.1f} | "
                     f"{_pts(h['err_pts'].mean())} | {h['width'].mean():.1f} | {cov.mean():.3f} "
                     f"({cov.min():.2f}-{cov.max():.2f}) | {hn['reject'].mean():.3f} | {fwe:.3f} |")
    lines += ["", "## Every planned contrast, the report's model", "",
              "| group | truth, % | mean estimate, % | bias, points | coverage | power (unadjusted) | "
              "power (adjusted) | null: type I error |", "|---|---|---|---|---|---|---|---|"]
    e, n = eff[eff["variant"] == REPORT_VARIANT], null[null["variant"] == REPORT_VARIANT]
    for group, g in e.groupby("group", sort=False):
        gn = n[n["group"] == group]
        lines.append(f"| {group} | {g['true'].mean():.1f} | {g['estimate'].mean():.1f} | {_pts(g['err_pts'].mean())} | "
                     f"{g['covered'].mean():.3f} | {g['reject'].mean():.2f} | {g['reject_adjusted'].mean():.2f} | "
                     f"{gn['reject'].mean():.3f} |")
    mc = 1.96 * np.sqrt(0.95 * 0.05 / max(n_eff, 1))
    lines += ["", f"Monte-Carlo uncertainty: a coverage of 0.95 over {n_eff} studies has a 95 % interval of "
              f"+-{mc:.3f}; a power of 0.8, +-{1.96 * np.sqrt(0.16 / max(n_eff, 1)):.2f}.", ""]
    return "\n".join(lines)


def bank_calibrate(args: argparse.Namespace) -> pd.DataFrame:
    """Calibration studies (null and default) built from the bank; rows and summary written."""
    jobs = [(p, FIRST_SEED[p] + i, str(args.cache), args.synapse_fields, args.variants) for i in range(args.studies)
            for p in args.presets]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = pd.concat(list(pool.map(bank_calibrate_one, jobs, chunksize=4)), ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.out, index=False)
    summary = summarise(rows)
    summary.to_csv(args.out.with_name(args.out.stem + "_summary.csv"), index=False)
    with pd.option_context("display.width", 250, "display.max_rows", 500):
        print(summary.drop(columns=["mean_log_error", "mean_log_se"]).round(3).to_string(index=False))
    if args.markdown:
        write_markdown(rows, args)
    return summary


def write_markdown(rows: pd.DataFrame, args: argparse.Namespace) -> None:
    """Write :data:`MARKDOWN` (or ``args.markdown``) from the per-study rows."""
    from analysis.sim.design import PRESETS
    from analysis.sim.power import design_preset

    fields = PRESETS[design_preset("default", synapse_fields=args.synapse_fields)].synapse_fields
    text = markdown_summary(rows, design=f"default design ({fields} PSD95 fields per animal and session)",
                            source=f"fields measured by the pipeline from the bank of {len(load_bank(args.cache))} "
                                   "rendered and quantified fields")
    args.markdown.write_text(text)
    log.info("wrote %s", args.markdown)


def fit_error_model(bank: pd.DataFrame) -> pd.DataFrame:
    """Per density and SNR level: the error model of :mod:`analysis.sim.power` fitted to the bank
    by least squares.

    Two densities: ``fp-corrected``, the measured density minus the false detections expected
    at each field's SNR (:func:`analysis.stats.models.false_detection_corrected` over the whole
    bank, as the report's model does over a study's images), and ``measured``, as quantified.
    """
    import numpy as np
    import statsmodels.formula.api as smf

    from analysis.sim.power import REFERENCE_DENSITY
    from analysis.stats.models import false_detection_corrected

    fp, applied = false_detection_corrected(bank, "measured_per_100um2")
    if not applied:
        raise SystemExit("the bank lacks the quality columns of the false-detection correction; rebuild it")
    rows = []
    for density, table in (("fp-corrected", fp), ("measured", bank)):
        b = table.assign(x=np.log(table["true_realised_per_100um2"] / REFERENCE_DENSITY),
                         y=np.log(table["measured_per_100um2"] / table["true_realised_per_100um2"]),
                         s=np.log(table["measured_snr"]))
        b = b.replace([np.inf, -np.inf], np.nan).dropna(subset=["x", "y", "s"])
        for level, g in b.groupby("snr_level", sort=False):
            g = g.assign(sc=g["s"] - g["s"].mean())
            fit = smf.ols("y ~ x + sc", g).fit()
            rows.append({"density": density, "snr_level": level, "a": fit.params["Intercept"], "b": fit.params["x"],
                         "c": fit.params["sc"], "sd": float(np.sqrt(fit.scale)), "snr_log_mean": g["s"].mean(),
                         "snr_log_sd": g["s"].std(), "fields": len(g)})
    return pd.DataFrame(rows).round(5)


def error_model_stage(args: argparse.Namespace) -> None:
    """Write the package's error model (``src/analysis/data/measurement_error.csv``) from the bank."""
    table = fit_error_model(load_bank(args.cache))
    args.model_out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.model_out, index=False)
    print(table.to_string(index=False))
    log.info("wrote %s", args.model_out)


def _measurement_shift(rows: pd.DataFrame) -> pd.Series:
    """Per planned contrast: estimate of the report's model minus that of the true counts (points)."""
    est = rows.pivot_table(index="group", columns="variant", values="estimate")
    return est[REPORT_VARIANT] - est["perfect"]


def bank_check_one(task: tuple[str, int, str, int]) -> pd.Series:
    preset, seed, cache, draw = task
    from analysis.sim.design import PRESETS

    bank = load_bank(Path(cache))
    syn = bank_study(bank, preset, seed, draw)
    truth = syn[["image_id", "true_realised_per_100um2"]].rename(
        columns={"true_realised_per_100um2": "true_puncta_density_per_100um2"})
    frames = [synapse_rows(t, PRESETS[preset].null, cov).assign(variant=v)
              for v, (t, cov) in synapse_variants(syn, truth).items() if v in (REPORT_VARIANT, "perfect")]
    return _measurement_shift(pd.concat(frames, ignore_index=True)).rename(draw)


def bank_check(args: argparse.Namespace) -> pd.DataFrame:
    """Does the bank reproduce what the detector does to a whole study?  For every whole study
    in the cache (stage ``run``): the shift of each planned synapse contrast by the
    measurement (the report's model minus the true counts of the same images), beside the
    same shift in ``--draws`` bank studies of the same design (same animals, true densities
    and SNR levels; only the bank fields drawn differ)."""
    folders = sorted(p for p in args.cache.glob("*-*") if (p / "study.json").exists())
    out = []
    for folder in folders:
        info = json.loads((folder / "study.json").read_text())
        preset, seed = info["preset"], int(info["seed"])
        whole = _measurement_shift(analyse_study(folder).query("endpoint == 'synapse density (% vs vehicle)'"))
        with ProcessPoolExecutor(args.workers) as pool:
            draws = pd.concat(list(pool.map(bank_check_one, [(preset, seed, str(args.cache), d)
                                                             for d in range(args.draws)])), axis=1)
        out.append(pd.DataFrame({"preset": preset, "seed": seed, "whole_study_shift": whole,
                                 "bank_mean_shift": draws.mean(axis=1), "bank_sd_shift": draws.std(axis=1),
                                 "bank_draws_below_whole": (draws.lt(whole, axis=0)).mean(axis=1),
                                 "draws": args.draws}).reset_index())
    table = pd.concat(out, ignore_index=True)
    with pd.option_context("display.width", 200):
        print(table.round(2).to_string(index=False))
    table.to_csv(args.cache / "bank_check.csv", index=False)
    return table


def bank_summary(args: argparse.Namespace) -> None:
    """Rewrite the markdown summary from the rows of an earlier ``bank-calibrate`` run."""
    # (pandas reads the preset name "null" as a missing value unless told otherwise)
    write_markdown(pd.read_csv(args.out, keep_default_na=False, na_values=["", "nan", "NaN"]), args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    r = sub.add_parser("run", help="simulate and quantify studies into the cache")
    r.add_argument("--studies", type=int, default=100, help="null studies and as many default studies")
    r.add_argument("--first", type=int, default=0, help="index of the first study (resume elsewhere)")
    r.add_argument("--workers", type=int, default=2, help="studies quantified at once (one core each)")
    a = sub.add_parser("analyse", help="fit the cached studies and summarise")
    a.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "calibration_e2e.csv")
    b = sub.add_parser("bank", help="render and quantify the synapse field bank")
    b.add_argument("--workers", type=int, default=2)
    c = sub.add_parser("bank-calibrate", help="calibration studies built from the bank")
    c.add_argument("--studies", type=int, default=200, help="null studies and as many default studies")
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "calibration_bank.csv")
    c.add_argument("--markdown", type=Path, default=MARKDOWN, help="committed summary (default: %(default)s)")
    c.add_argument("--synapse-fields", type=int, default=None,
                   help="synapse fields per animal and session (default: the preset's)")
    c.add_argument("--presets", nargs="+", default=["null", "default"], choices=["null", "default"],
                   help="kinds of calibration study (default: both)")
    c.add_argument("--variants", nargs="+", default=None,
                   help="fit only these variants of the synapse table (default: all)")
    d = sub.add_parser("bank-summary", help="rewrite the markdown summary from bank-calibrate's rows")
    d.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "calibration_bank.csv")
    d.add_argument("--markdown", type=Path, default=MARKDOWN)
    d.add_argument("--synapse-fields", type=int, default=None)
    k = sub.add_parser("bank-check", help="the bank's measurement shift against each cached whole study's")
    k.add_argument("--draws", type=int, default=20, help="bank studies per whole study's design")
    k.add_argument("--workers", type=int, default=2)
    e = sub.add_parser("error-model", help="fit the detector's error model for analysis.sim.power from the bank")
    e.add_argument("--model-out", type=Path, default=ROOT / "src" / "analysis" / "data" / "measurement_error.csv")
    for p in (r, a, b, c, d, e, k):
        p.add_argument("--cache", type=Path, default=CACHE)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("analysis").setLevel(logging.WARNING)
    {"run": run, "analyse": analyse, "bank": build_bank, "bank-calibrate": bank_calibrate,
     "bank-summary": bank_summary, "error-model": error_model_stage, "bank-check": bank_check}[args.stage](args)


if __name__ == "__main__":
    main()
