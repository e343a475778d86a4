"""Coverage of the terminal endpoints' contrasts: with the simulator's own cells, then with the detector's error.

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

Stages ``bank`` and ``bank-analyse`` put the detector in (issue 13: the terminal endpoints
measured end to end): a bank of terminal fields rendered and quantified once, whose
measurements the fields of the same studies borrow (see the notes above :data:`BANK_SEEDS`);
all five terminal endpoints (microglia density, engulfed puncta per cell, skeleton length,
branch points, CD68 fraction).  ``analyse`` adds their summary to the committed file when
``bank-analyse`` has run.

Usage::

    python benchmarks/calibrate_morphology.py run --studies 100 --workers 2
    python benchmarks/calibrate_morphology.py bank --workers 2
    python benchmarks/calibrate_morphology.py bank-analyse --workers 2
    python benchmarks/calibrate_morphology.py analyse

Cost on the 2-core reference machine: ~21 s of one core per study (224 fields of 640 x 640 px,
~650 interior cells), so 100 + 100 studies take ~40 min with 2 workers; the bank (1,344
fields, ~2.3 s of one core each) ~25 min with 2 workers; ``bank-analyse`` and ``analyse`` a
few minutes.  Results: ``benchmarks/RESULTS.md`` (sessions 12 and 13).
"""

from __future__ import annotations

import argparse
import datetime
import functools
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


def _terminal_design(preset: str, seed: int) -> pd.DataFrame:
    """The terminal rows of one study's design (the null preset without the drug effect)."""
    from analysis.sim.design import PRESETS, build_design
    from analysis.sim.truth import calibrated_model

    p = PRESETS[preset]
    model = calibrated_model()
    d = build_design(p, model.without_drug_effect() if p.null else model, seed)
    return d[d["readout"] == "terminal"].reset_index(drop=True)


def study_cells(preset: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The terminal rows of one study's design and the interior cells of each of its fields."""
    from analysis.sim.design import PRESETS
    from analysis.sim.glia import simulated_cells

    p = PRESETS[preset]
    term = _terminal_design(preset, seed)
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


def _interval(n: int) -> float:
    """Half-width of the 95 % Monte-Carlo interval of a rate of 0.95 (or 0.05) over ``n``."""
    return 1.96 * np.sqrt(0.95 * 0.05 / max(n, 1))


def _name(endpoint: str) -> str:
    return endpoint.split(" (")[0].replace("_um", "").replace("_", " ")


def markdown_summary(rows: pd.DataFrame, bank: pd.DataFrame | None = None, bank_fields: int | None = None) -> str:
    """The committed summary (``benchmarks/calibration_morphology.md``, shown in notebook 04);
    with ``bank`` (the rows of stage ``bank-analyse``) its section with the detector's error."""
    summary = summarise(rows)
    n = rows.groupby("preset")["seed"].nunique()
    lines = [
        "# Calibration of the terminal endpoints (the simulator's own cells; with the detector's error)", "",
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
              f"+-{_interval(total):.3f} (contrasts of one study share their vehicle group, so "
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
    lines += ["", f"Per planned contrast over {int(n.min())} studies the 95 % interval of a coverage of 0.95 is "
              f"+-{_interval(int(n.min())):.3f}. "
              "Misses cluster by study: " + "; ".join(notes) + ".", ""]
    if bank is not None and len(bank):
        lines += bank_markdown(bank, bank_fields)
    return "\n".join(lines)


def _pct(log_error: float) -> str:
    return f"{100 * np.expm1(log_error):+.1f}"


def bank_markdown(rows: pd.DataFrame, bank_fields: int | None) -> list[str]:
    """The section of the committed summary with the detector's error (stage ``bank-analyse``)."""
    n = rows.groupby("preset")["seed"].nunique()
    g = rows.groupby(["preset", "endpoint"])
    per_contrast = rows.groupby(["preset", "endpoint", "group"])["log_error"].mean()
    lines = [
        "## With the detector's error (terminal-field bank)", "",
        f"The same {n.get('null', 0)} null and {n.get('default', 0)} effect studies, each terminal field measured by "
        f"the pipeline: it takes the measurement of one of {bank_fields or 'the'} rendered and quantified terminal "
        "fields (PSD95, Iba1 and CD68 channels; `calibrate_morphology.py bank`) of the same SNR level, drawn among "
        f"the {K_NEAREST} nearest in activation, process length, branching and microglia density, and moved to this "
        "field's truth (skeleton length and branch points by the ratio of the two fields' true cell means, engulfed "
        "puncta, CD68 fraction and the cell count by the ratio of the generator settings). Missed, split, merged "
        "and false cells and any error that depends on activation, density or SNR come from the detector. "
        "Truth as above (for microglia density, engulfment and CD68: the simulator's multipliers). Targets (issue "
        "13): coverage 0.93-0.97; engulfment and morphology ratios within 10 % of the truth.", "",
        "| studies | endpoint | planned contrasts | coverage | mean ratio error, % | largest mean ratio error of a "
        "contrast, % | SD of log error | mean SE (log) | rejection rate (alpha 0.05) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (preset, endpoint), d in g:
        worst = per_contrast.loc[(preset, endpoint)]
        worst = worst.iloc[int(np.argmax(np.abs(worst.to_numpy())))]
        what = "type I error" if preset == "null" else "power"
        lines.append(f"| {preset} | {_name(endpoint)} | {len(d)} | {d['covered'].mean():.3f} | "
                     f"{_pct(d['log_error'].mean())} | {_pct(worst)} | {d['log_error'].std():.3f} | "
                     f"{d['log_se'].mean():.3f} | {(d['p'] < 0.05).mean():.3f} ({what}) |")
    endpoints = list(dict.fromkeys(rows["endpoint"]))
    lines += ["", "## With the detector's error: every planned contrast", "",
              "Coverage with the drug effect / without it; mean ratio error (%) with the drug effect.", "",
              "| group | " + " | ".join(_name(e) for e in endpoints) + " |",
              "|---|" + "---|" * len(endpoints)]
    cov = rows.groupby(["group", "endpoint", "preset"])["covered"].mean()
    for group in sorted(rows["group"].unique()):
        cells = [f"{cov.get((group, e, 'default'), float('nan')):.2f} / {cov.get((group, e, 'null'), float('nan')):.2f}; "
                 f"{_pct(per_contrast.get(('default', e, group), float('nan')))}" for e in endpoints]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    lines += ["", f"Per planned contrast over {int(n.min())} studies the 95 % interval of a coverage of 0.95 is "
              f"+-{_interval(int(n.min())):.3f}.", ""]
    return lines


def _study_folders(cache: Path) -> list[Path]:
    """The cached calibration studies of stage ``run`` (not the bank, not a study being written)."""
    return sorted(f for f in Path(cache).iterdir() if f.is_dir() and not f.name.endswith(".tmp") and f.name != "bank")


def analyse(args: argparse.Namespace) -> pd.DataFrame:
    rows = pd.concat([analyse_one(f) for f in _study_folders(args.cache)], ignore_index=True)
    rows.to_csv(Path(args.cache) / "rows.csv", index=False)
    bank_rows = Path(args.cache) / "bank_rows.csv"
    bank, bank_fields = None, None
    if bank_rows.exists():
        # (pandas reads the preset name "null" as a missing value unless told otherwise)
        bank = pd.read_csv(bank_rows, keep_default_na=False, na_values=["", "nan", "NaN"])
        bank_fields = len(load_bank(Path(args.cache))[0])
    text = markdown_summary(rows, bank, bank_fields)
    print(text)
    if args.md is not None:
        args.md.write_text(text, encoding="utf-8")
        log.info("wrote %s", args.md)
    return summarise(rows)


# --- stages "bank" and "bank-analyse": the detector's error on the terminal endpoints -------------
#
# The studies above use the true cells.  To put the detector in, the terminal fields of a few
# bank designs (``BANK_SEEDS``, default and null presets: the spread of activation, cell
# density and SNR level that studies have) are rendered as the image simulator renders them
# (:func:`analysis.sim.phantoms.render_terminal_field`, PSD95 + Iba1 + CD68) and quantified by
# the pipeline (:func:`analysis.pipeline.quantify.quantify_image`, default parameters), once.
# Each field of a calibration study then takes the measurement of a bank field of the same SNR
# level chosen at random among the ``K_NEAREST`` nearest in its truth (activation, process
# length scale, branching scale, microglia density; each standardised), moved to this field's
# truth as the synapse bank moves densities (``calibrate_e2e.bank_study``): the measured cells'
# skeleton length and branch points times the ratio of this field's true mean to the bank
# field's (true cells: the study's own, cached by ``run``), engulfed puncta and CD68 fraction
# times the ratio of the generator settings (``engulfed_per_cell``, ``cd68_area_fraction``), and
# the cell count times the ratio of the expected cell densities (``true_microglia_per_mm2``).
# The per-cell spread, the missed, split, merged and false cells, and any error that depends on
# activation, density or SNR come from the detector.

#: Designs whose terminal fields make the bank (seeds no other calibration uses).
BANK_SEEDS = (90_000, 90_001, 90_002)
#: Fields per bank chunk (the unit of resumption).
BANK_CHUNK = 32
#: A calibration field draws its measurement from this many nearest bank fields.
K_NEAREST = 8
#: Truth of a field the bank is matched on (standardised), within its SNR level.
MATCH = ("activation", "process_length_scale", "branching_scale", "true_microglia_per_mm2")
#: Measured per-cell columns carried from the bank (and those moved to the field's truth).
BANK_CELL_COLUMNS = ("label", "touches_border", "skeleton_length_um", "branch_points", "engulfed_puncta",
                     "cd68_area_fraction")
BANK_ENDPOINTS = ("microglia density (rate ratio)", "engulfed puncta per cell (rate ratio)", *ENDPOINTS,
                  "cd68_area_fraction (ratio of geometric means)")


def _bank_design() -> pd.DataFrame:
    frames = [_terminal_design(name, seed).assign(bank_preset=name, bank_seed=seed)
              for seed in BANK_SEEDS for name in ("default", "null")]
    out = pd.concat(frames, ignore_index=True)
    out["bank_field"] = np.arange(len(out))
    return out


def bank_chunk(task: tuple[pd.DataFrame, str]) -> str:
    """Render and quantify one chunk of bank fields; write their fields and cells tables."""
    from analysis.pipeline.quantify import QuantifyParams, quantify_image
    from analysis.sim import phantoms
    from analysis.sim.design import PRESETS

    rows, path = task
    p = PRESETS["default"]
    params = QuantifyParams()
    fields, cells = [], []
    for r in rows.itertuples(index=False):
        rng = np.random.default_rng(np.random.SeedSequence([int(r.bank_seed), int(r.bank_field), 13]))
        fld = phantoms.render_terminal_field(
            rng, shape=tuple(p.terminal_shape), pixel_size_um=float(r.pixel_size_um),
            density_per_100um2=r.true_density_per_100um2, microglia_per_mm2=r.true_microglia_per_mm2,
            process_length_scale=r.process_length_scale, branching_scale=r.branching_scale,
            soma_scale=r.soma_scale, engulfed_per_cell=r.engulfed_per_cell,
            cd68_area_fraction=r.cd68_area_fraction, snr=phantoms.SNR_LEVELS[r.snr_level])
        row, measured = quantify_image(fld.image[:, None], float(r.pixel_size_um), synapse_channel=0,
                                       microglia_channel=1, lysosome_channel=2, params=params)
        true = fld.cells[~fld.cells["touches_border"].astype(bool)]
        fields.append({**{k: getattr(r, k) for k in ("bank_field", "bank_preset", "bank_seed", "image_id", "snr_level",
                                                     "activation", "soma_scale", "engulfed_per_cell",
                                                     "cd68_area_fraction", *MATCH)},
                       "measured_count": row.get("microglia_count", np.nan), "true_interior_count": len(true),
                       "true_mean_skeleton_length_um": true["skeleton_length_um"].mean() if len(true) else np.nan,
                       "true_mean_branch_points": true["branch_points"].mean() if len(true) else np.nan})
        if len(measured):
            cells.append(measured[[c for c in BANK_CELL_COLUMNS if c in measured]].assign(bank_field=r.bank_field))
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(fields).to_parquet(tmp / "fields.parquet")
    (pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(columns=[*BANK_CELL_COLUMNS, "bank_field"])
     ).to_parquet(tmp / "cells.parquet")
    tmp.rename(out)
    return path


def build_bank(args: argparse.Namespace) -> None:
    """Render and quantify every bank field not yet cached (chunked, resumable)."""
    design = _bank_design()
    folder = Path(args.cache) / "bank"
    folder.mkdir(parents=True, exist_ok=True)
    tasks = [(design.iloc[i:i + BANK_CHUNK], str(folder / f"chunk-{i // BANK_CHUNK:04d}"))
             for i in range(0, len(design), BANK_CHUNK)]
    todo = [t for t in tasks if not Path(t[1]).exists()]
    log.info("bank: %d terminal fields in %d chunks, %d to do", len(design), len(tasks), len(todo))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        for n, path in enumerate(pool.map(bank_chunk, todo), 1):
            log.info("[%d/%d] %s (%.0f s)", n, len(todo), Path(path).name, time.perf_counter() - t0)


@functools.lru_cache(maxsize=1)
def load_bank(cache: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The bank's fields and measured cells (read once per process; callers do not modify them)."""
    chunks = sorted(p for p in (Path(cache) / "bank").glob("chunk-*") if not p.name.endswith(".tmp"))
    if not chunks:
        raise SystemExit(f"no bank in {Path(cache) / 'bank'}; run the 'bank' stage first")
    fields = pd.concat([pd.read_parquet(c / "fields.parquet") for c in chunks], ignore_index=True)
    cells = pd.concat([pd.read_parquet(c / "cells.parquet") for c in chunks], ignore_index=True)
    return fields[fields["measured_count"].notna()].reset_index(drop=True), cells


def bank_tables(fields: pd.DataFrame, bank_cells: pd.DataFrame, term: pd.DataFrame, true_cells: pd.DataFrame,
                seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The measurement and per-cell tables of one calibration study with bank measurements.

    ``term``: the study's terminal rows (design columns, ``microglia_count`` = its true interior
    cells); ``true_cells``: those cells.  See the notes above :data:`BANK_SEEDS`.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    tm = true_cells.groupby("image_id")[["skeleton_length_um", "branch_points"]].mean()
    term = term.join(tm.add_prefix("true_mean_"), on="image_id")
    scale = fields[list(MATCH)].std().replace(0, 1.0).to_numpy()
    truth = fields[list(MATCH)].to_numpy()
    level = fields["snr_level"].to_numpy()
    has_cells = fields["true_interior_count"].to_numpy() > 0
    picks = np.empty(len(term), dtype=int)
    for i, r in enumerate(term.itertuples(index=False)):
        pool = np.flatnonzero((level == r.snr_level) & (has_cells == (r.microglia_count > 0)))
        if len(pool) < K_NEAREST:
            pool = np.flatnonzero(level == r.snr_level)
        d = (((truth[pool] - np.array([getattr(r, k) for k in MATCH])) / scale) ** 2).sum(axis=1)
        near = pool[np.argsort(d, kind="stable")[:K_NEAREST]]
        picks[i] = near[rng.integers(0, len(near))]
    b = fields.iloc[picks].reset_index(drop=True)
    m = term.copy()
    # (the measured count counts every cell whose soma centre is in the field; it moves with the
    # expected number of cells, as the synapse bank moves densities)
    m["microglia_count"] = b["measured_count"].to_numpy() * (
        term["true_microglia_per_mm2"].to_numpy() / b["true_microglia_per_mm2"].to_numpy())
    by_field = dict(tuple(bank_cells.groupby("bank_field")))
    out = []
    for i, r in enumerate(term.itertuples(index=False)):
        c = by_field.get(int(b.at[i, "bank_field"]))
        if c is None or not len(c):
            continue
        c = c.drop(columns="bank_field").assign(image_id=r.image_id)
        for col, setting in (("skeleton_length_um", "process_length_scale"), ("branch_points", "branching_scale")):
            ratio = getattr(r, f"true_mean_{col}") / b.at[i, f"true_mean_{col}"]
            if not np.isfinite(ratio):  # (no interior true cell in one of the two fields: the settings)
                ratio = getattr(r, setting) / b.at[i, setting]
            c[col] = c[col] * ratio
        c["engulfed_puncta"] = c["engulfed_puncta"] * (r.engulfed_per_cell / b.at[i, "engulfed_per_cell"])
        c["cd68_area_fraction"] = c["cd68_area_fraction"] * (r.cd68_area_fraction / b.at[i, "cd68_area_fraction"])
        out.append(c)
    return m, pd.concat(out, ignore_index=True)


def bank_analyse_one(task: tuple[str, str]) -> pd.DataFrame:
    folder, cache = Path(task[0]), task[1]
    preset, seed = folder.name.rsplit("_", 1)
    fields, bank_cells = load_bank(Path(cache))
    design = _terminal_design(preset, int(seed))
    m = pd.read_parquet(folder / "measurements.parquet")
    extra = [c for c in ("snr_level", "activation", "branching_scale", "engulfed_per_cell", "cd68_area_fraction")
             if c not in m]
    m = m.merge(design[["image_id", *extra]], on="image_id", how="left", validate="one_to_one")
    true_cells = pd.read_parquet(folder / "cells.parquet")
    mm, cells = bank_tables(fields, bank_cells, m, true_cells, int(seed))
    rows = microglia_rows(mm, cells, preset == "null")
    return rows[rows["endpoint"].isin(BANK_ENDPOINTS)].assign(preset=preset, seed=int(seed), variant="bank")


def bank_analyse(args: argparse.Namespace) -> pd.DataFrame:
    folders = _study_folders(args.cache)
    fields, _ = load_bank(Path(args.cache))
    log.info("bank of %d terminal fields; %d calibration studies", len(fields), len(folders))
    with ProcessPoolExecutor(args.workers) as pool:
        rows = pd.concat(list(pool.map(bank_analyse_one, [(str(f), str(args.cache)) for f in folders])),
                         ignore_index=True)
    rows.to_csv(Path(args.cache) / "bank_rows.csv", index=False)
    summary = summarise(rows)
    with pd.option_context("display.width", 200):
        print(summary.round(4).to_string(index=False))
    return summary


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
    b = sub.add_parser("bank")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--cache", type=Path, default=CACHE)
    ba = sub.add_parser("bank-analyse")
    ba.add_argument("--workers", type=int, default=2)
    ba.add_argument("--cache", type=Path, default=CACHE)
    args = ap.parse_args()
    {"run": run, "analyse": analyse, "bank": build_bank, "bank-analyse": bank_analyse}[args.stage](args)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
