"""End-to-end calibration of the spine-density statistics: two-photon images -> detection -> model.

The spine arm of the default study (:data:`analysis.sim.design.PRESETS`, ``"default"``: WT and
TSPO-KO, vehicle and diazepam 5 mg/kg x 7 d, 6 animals per group, 2 imaged positions per
animal, sessions on days -3, 7 and 63) is simulated *as images* for many more animals than a
study has (the "bank": ``--animals`` per group), and every image is measured by the pipeline's
own per-image entry (:func:`analysis.pipeline.quantify.measure_image`, the registry's
``spines`` readout with its defaults: what ``analysis quantify`` does).  Studies are then drawn
from the bank (6 animals per group, without replacement within a study) and fitted by the
report's spine model (:func:`analysis.stats.models.fit_synapse_lmm` on log spines per um,
:func:`session_contrasts`), with and without a position-within-animal effect, on the measured
densities and on the true densities of the same images (``perfect``).

Each position's sessions are also tracked as ``quantify``'s series step does
(:func:`analysis.pipeline.readouts.track_spines_series`), and the simulation's own identities
give the true tracks (:func:`true_tracks`).  Per study the lost and gained fractions per animal
and interval are compared with vehicle as the report does
(:func:`analysis.stats.turnover.spine_turnover`, :func:`versus_vehicle`: Welch's t over animals),
on the measured and on the true tracks.

*Effect* studies keep the bank's groups (the truth model's spine loss: -13 % at the end of
7 days of 5 mg/kg in WT, none in the knockout, recovery by day 63).  *Null* studies draw 12
vehicle animals of a genotype and call 6 of them treated: every contrast's truth is 0 and the
draws have the vehicle's distribution.

Figures per contrast: bias of the percent change versus vehicle (points), CI coverage of the
truth, CI width, power or type I error at alpha 0.05 (for the primary contrast, WT diazepam
5 mg/kg x 7 d at day 7, tested first in the report's fixed sequence).  Studies drawn from one
bank share animals, so the bank's own sampling error (a bank of 40 animals per group against
6 per study) is common to all of them: the Monte-Carlo interval of a coverage of 0.95 over
400 studies (+-0.02) understates it.  Bias and coverage are therefore given twice: against the
truth model's effect and against the effect the bank's true densities realise
(:func:`bank_truth`).

Imaging quality that changes between sessions (``--session-photon-sd SD``: each image's photons
scaled by ``exp(N(0, SD))``, the design's ``spine_session_photon_sd``) gives a bank of its own
(``bank_seed<seed>_photonsd<SD>.parquet``, results in a folder named after it, the committed
summary untouched; so does ``--scratch`` for any bank).  Every study is also fitted with the
report's sensitivity analysis (the position-effect model with each image's log measured SNR,
:func:`analysis.stats.models.snr_adjusted_spine_contrasts`).

Usage::

    python benchmarks/calibrate_spines_e2e.py bank --animals 40 --workers 2
    python benchmarks/calibrate_spines_e2e.py analyse --studies 400
    python benchmarks/calibrate_spines_e2e.py bank --animals 20 --seed 72000 --session-photon-sd 0.4
    python benchmarks/calibrate_spines_e2e.py analyse --studies 200 --seed 72000 --session-photon-sd 0.4

Cost on the 2-core reference machine: the bank (960 images, 320 tracked positions) 947 s with
2 workers; the 800 studies 400 s.

The bank is cached in ``benchmarks/results/spines_e2e/bank_seed<seed>.parquet`` (images) and
``tracks_seed<seed>.parquet`` (tracks); results go to
``benchmarks/results/spines_e2e/`` (``studies.csv`` per study and contrast, ``summary.md``,
``summary.csv``, ``summary_turnover.csv``; the summary is also written to the committed
``benchmarks/calibration_spines_e2e.md`` that the report's validation notebook shows; stage
``summary`` rewrites it from ``studies.csv``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from calibrate_e2e import _commit  # noqa: E402  (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "spines_e2e"
PRIMARY = "WT diazepam 5 mg/kg x 7 d"
VALUE = "spine_density_per_um"
TRUE = "true_spine_density_per_um"
ANIMALS_PER_STUDY = 6
#: The committed summary (shown by the report's validation notebook).
COMMITTED = ROOT / "benchmarks" / "calibration_spines_e2e.md"

log = logging.getLogger("calibrate_spines_e2e")


def bank_design(animals: int, seed: int, photon_sd: float = 0.0) -> pd.DataFrame:
    """Design rows of the default spine arm with ``animals`` animals per group (truth columns kept);
    ``photon_sd``: imaging quality varying between sessions (the design's
    ``spine_session_photon_sd``)."""
    from analysis.sim.design import PRESETS, build_design
    from analysis.sim.truth import calibrated_model

    base = PRESETS["default"]
    preset = dataclasses.replace(base, groups=(), animals_per_group=0, spine_animals_per_group=animals,
                                 spine_session_photon_sd=photon_sd)
    design = build_design(preset, calibrated_model(), seed)
    return design[design["readout"] == "spine"].reset_index(drop=True)


#: The spine readout's quality columns kept in the bank (the per-image check of the spike-in).
QUALITY = ("measured_snr", "spike_in_recall", "spike_in_recall_ci_low", "spike_in_recall_ci_high")

_POSITION_COLUMNS = ("animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "field")


def true_tracks(sessions: list) -> pd.DataFrame:
    """The simulation's truth in the layout of :func:`analysis.measure.spines.track_spines`:
    one row per in-field spine per session (``track_id`` = its identity), ``status`` stable /
    gained relative to the previous session, a ``lost`` row for each spine of the previous
    session's field that no longer exists; ``in_common_field`` for spines in both sessions'
    fields, new ones and lost ones (a persistent spine that entered or left the field gets
    no call)."""
    rows = []
    prev_all: set[int] = set()
    prev_in: set[int] = set()
    for k, sess in enumerate(sessions):
        sp = sess.spines
        now_all = set(sp["spine_id"].tolist())
        now_in = set(sp.loc[sp["in_field"].astype(bool), "spine_id"].tolist())
        for i in sorted(now_in):
            new = k > 0 and i not in prev_all
            rows.append((k, i, "gained" if new else "stable", bool(k == 0 or new or i in prev_in)))
        if k > 0:
            rows += [(k, i, "lost", True) for i in sorted(prev_in - now_all)]
        prev_all, prev_in = now_all, now_in
    return pd.DataFrame(rows, columns=["session", "track_id", "status", "in_common_field"])


def _measure_series(task: tuple[list[dict], int, str]) -> tuple[list[dict], pd.DataFrame]:
    """Render one position's sessions as ``simulate_study`` does, measure each image as
    ``quantify`` does and track its spines as ``quantify``'s series step does; also the true
    tracks (:func:`true_tracks`).  Returns the image rows and both tracks (``counts``
    measured / perfect)."""
    from analysis.pipeline.quantify import measure_image
    from analysis.pipeline.readouts import track_spines_series
    from analysis.sim.simulate import series_sessions

    rows, seed, spine_preset = task
    sessions = series_sessions(rows, seed=seed, spine_preset=spine_preset)
    out = []
    for r, sess in zip(rows, sessions, strict=True):
        px = float(sess.info["pixel_size_um"])
        row, _ = measure_image(np.asarray(sess.image)[None, None], px, {"dendrite_channel": 0})
        length = float(sess.info["length_in_field_um"])
        out.append({k: r[k] for k in ("image_id", "animal_id", "genotype", "compound", "dose_mg_kg",
                                      "treatment_days", "day", "field", "snr_level", "true_spine_density_ratio")}
                   | {"photon_scale": float(r.get("photon_scale", 1.0)), "true_snr": float(sess.info["snr"])}
                   | {VALUE: row.get(VALUE, np.nan), "n_spines": row.get("n_spines", np.nan),
                      "dendrite_length_um": row.get("dendrite_length_um", np.nan),
                      **{q: row.get(q, np.nan) for q in QUALITY},
                      "true_spine_count": int(sess.info["spines_in_field"]), "true_dendrite_length_um": length,
                      TRUE: int(sess.info["spines_in_field"]) / length if length > 0 else np.nan})
    days = np.array([r["day"] for r in rows], int)
    measured = track_spines_series([np.asarray(s.image) for s in sessions], float(sessions[0].info["pixel_size_um"]),
                                   params={})[["session", "track_id", "status", "in_common_field"]]
    tracks = pd.concat([measured.assign(counts="measured"), true_tracks(sessions).assign(counts="perfect")],
                       ignore_index=True)
    tracks["in_common_field"] = tracks["in_common_field"].astype(bool)
    tracks.insert(1, "day", days[tracks["session"].to_numpy(int)])
    for c in reversed(_POSITION_COLUMNS):
        tracks.insert(0, c, rows[0][c])
    return out, tracks


def tracks_path(bank_path: Path) -> Path:
    """The tracks of a bank (measured and true, one row per spine per session)."""
    return bank_path.with_name(bank_path.name.replace("bank_", "tracks_"))


def bank_path(seed: int, photon_sd: float = 0.0) -> Path:
    """Where the bank of a seed (and session photon SD, when not 0) is cached."""
    return OUT / (f"bank_seed{seed}.parquet" if not photon_sd else f"bank_seed{seed}_photonsd{photon_sd:g}.parquet")


def build_bank(animals: int, seed: int, workers: int, photon_sd: float = 0.0) -> Path:
    from analysis.sim.design import PRESETS

    path = bank_path(seed, photon_sd)
    design = bank_design(animals, seed, photon_sd)
    tasks = [(sub.to_dict("records"), seed, PRESETS["default"].spine_preset)
             for _, sub in design.groupby("series", sort=False)]
    t0 = time.perf_counter()
    rows, tracks = [], []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, (res, tr) in enumerate(pool.map(_measure_series, tasks)):
            rows += res
            tracks.append(tr)
            if (i + 1) % 20 == 0:
                log.info("%d / %d positions, %.0f s", i + 1, len(tasks), time.perf_counter() - t0)
    bank = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    bank.to_parquet(path)
    pd.concat(tracks, ignore_index=True).to_parquet(tracks_path(path))
    log.info("bank: %d images of %d animals in %.0f s -> %s", len(bank), bank.animal_id.nunique(),
             time.perf_counter() - t0, path)
    return path


# ----------------------------------------------------------------------------- studies
def draw_study(bank: pd.DataFrame, rng: np.random.Generator, null: bool) -> dict[str, dict]:
    """One study's animals: ``ANIMALS_PER_STUDY`` per group of the bank, as bank animal id ->
    the columns it gets in the study (null: half of a genotype's drawn vehicles relabelled treated,
    under a new id).  Apply to any bank table with :func:`study_rows`."""
    draw: dict[str, dict] = {}
    for _, sub in bank.groupby("genotype"):
        veh = sub[sub["compound"] == "vehicle"]
        trt = sub[sub["compound"] != "vehicle"]
        veh_animals = veh["animal_id"].unique()
        if null:
            pick = rng.choice(veh_animals, 2 * ANIMALS_PER_STUDY, replace=False)
            template = trt.iloc[0]
            draw.update({a: {} for a in pick[:ANIMALS_PER_STUDY]})
            draw.update({a: {"compound": template["compound"], "dose_mg_kg": template["dose_mg_kg"],
                             "true_spine_density_ratio": 1.0, "animal_id": a + "t"}
                         for a in pick[ANIMALS_PER_STUDY:]})
        else:
            draw.update({a: {} for a in rng.choice(veh_animals, ANIMALS_PER_STUDY, replace=False)})
            draw.update({a: {} for a in rng.choice(trt["animal_id"].unique(), ANIMALS_PER_STUDY, replace=False)})
    return draw


def study_rows(table: pd.DataFrame, draw: dict[str, dict]) -> pd.DataFrame:
    """The rows of ``table`` of the drawn animals, relabelled as the draw says."""
    parts = []
    for animal, sub in table[table["animal_id"].isin(list(draw))].groupby("animal_id", sort=False):
        change = {k: v for k, v in draw[animal].items() if k in sub}
        parts.append(sub.assign(**change) if change else sub)
    return pd.concat(parts, ignore_index=True)


def truth_pct(study: pd.DataFrame) -> dict[tuple[str, int], float]:
    """True percent change versus vehicle of every treated group and day (the truth model's ratio)."""
    from analysis.io.vocabulary import group_label

    out = {}
    for (g, c, d, t, day), sub in study.groupby(["genotype", "compound", "dose_mg_kg", "treatment_days", "day"]):
        if c == "vehicle":
            continue
        base = study[(study.genotype == g) & (study.compound == c) & (study.day == study.day.min())]
        out[(group_label(g, c, d, t), int(day))] = 100 * (sub["true_spine_density_ratio"].mean()
                                                          / base["true_spine_density_ratio"].mean() - 1)
    return out


def fit_one(study: pd.DataFrame, value: str, position: str | None, quality: bool = False) -> pd.DataFrame:
    """Contrasts versus vehicle of the spine model; ``quality``: the report's sensitivity
    analysis with each image's log measured SNR as a covariate
    (:func:`analysis.stats.models.snr_adjusted_spine_contrasts`; measured densities only)."""
    from analysis.stats.models import fit_synapse_lmm, session_contrasts, snr_adjusted_spine_contrasts

    if quality:
        con, _ = snr_adjusted_spine_contrasts(study, primary=PRIMARY, position=position)
        converged = bool(con["converged"].all())
    else:
        fit = fit_synapse_lmm(study, value, position=position)
        con, converged = session_contrasts(fit, primary=PRIMARY), fit.converged
    con = con[con["pct_vs_vehicle"].notna()].copy()
    return con[["group", "day", "pct_vs_vehicle", "pct_vs_vehicle_ci_low", "pct_vs_vehicle_ci_high",
                "p_vs_vehicle", "p_vs_vehicle_adjusted", "planned", "primary"]].assign(converged=converged)


#: model name -> (position column, with the SNR covariate of :func:`fit_one`)
MODELS = {"report (animal, animal x session)": (None, False), "with position effect": ("field", False),
          "position effect + log measured SNR (the report's sensitivity analysis)": ("field", True)}


#: turnover model name -> None (the report's Welch t, :func:`versus_vehicle`) or the keyword
#: arguments of the sensitivity analysis (:func:`analysis.stats.turnover.snr_adjusted_turnover`;
#: measured tracks only)
TURNOVER_MODELS = {"Welch t over animals": None,
                   "+ change in log measured SNR (the report's sensitivity analysis)": {}}


def turnover_contrasts(tracks: pd.DataFrame, images: pd.DataFrame | None = None) -> pd.DataFrame:
    """Lost and gained fractions per animal and interval (:func:`spine_turnover`), each treated
    group minus its vehicle (:func:`versus_vehicle`, the report's): ``measure``, ``group``,
    ``day``, ``difference_pp`` with ``ci_low`` / ``ci_high``, ``p_value``, ``model``; with the
    ``images`` (their ``measured_snr``) also the sensitivity analyses of
    :data:`TURNOVER_MODELS`."""
    from analysis.stats.turnover import snr_adjusted_turnover, spine_turnover, versus_vehicle

    per = spine_turnover(tracks)
    keep = ["group", "day", "difference_pp", "ci_low", "ci_high", "p_value"]
    out = []
    for model, kwargs in TURNOVER_MODELS.items():
        if kwargs is None:
            for measure in ("fraction_lost", "fraction_gained"):
                v = versus_vehicle(per, measure, ["from_day", "day"])
                v = v[v["difference_pp"].notna()] if "difference_pp" in v else v.iloc[0:0]
                out.append(v[keep].assign(measure=measure, model=model))
        elif images is not None:
            a = snr_adjusted_turnover(tracks, images, **kwargs)
            out.append(a[[*keep, "measure"]].assign(model=model))
    return pd.concat(out, ignore_index=True)


def _analyse_one(task: tuple[pd.DataFrame, pd.DataFrame | None, int, bool]) -> list[pd.DataFrame]:
    import warnings

    bank, tracks, k, null = task
    rng = np.random.default_rng([k, int(null)])
    draw = draw_study(bank, rng, null)
    study = study_rows(bank, draw)
    truth = truth_pct(study)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for counts, value in (("measured", VALUE), ("perfect", TRUE)):
            for model, (position, quality) in MODELS.items():
                if quality and counts == "perfect":
                    continue  # true densities carry no detection error to adjust
                con = fit_one(study, value, position, quality)
                con["truth"] = [truth[(g, int(d))] for g, d in zip(con["group"], con["day"])]
                out.append(con.assign(study=k, null=null, counts=counts, model=model, measure="density"))
        if tracks is not None:
            t = study_rows(tracks, draw)
            for counts, sub in t.groupby("counts"):
                out.append(turnover_contrasts(sub, study if counts == "measured" else None).assign(
                    study=k, null=null, counts=counts))
    return out


def bank_truth(bank: pd.DataFrame) -> dict[tuple[str, int], float]:
    """Percent change versus vehicle of the bank's own true densities (all its animals, the
    model with the position effect): the effect the bank realises, which differs from the truth
    model's by the bank's sampling error (a bank of 40 animals per group: SE ~1.4 points)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        con = fit_one(bank, TRUE, "field")
    return {(g, int(d)): float(v) for g, d, v in zip(con["group"], con["day"], con["pct_vs_vehicle"])}


def summarise(res: pd.DataFrame, realised: dict[tuple[str, int], float] | None = None) -> pd.DataFrame:
    """Per contrast, counts and model: bias, coverage, CI width, rejection rates; with
    ``realised`` (:func:`bank_truth`) also bias and coverage against the bank's own effect
    (null studies: 0, their treated animals are relabelled vehicles)."""
    bank = np.zeros(len(res))
    if realised is not None:
        bank = np.where(res["null"].to_numpy(bool), 0.0,
                        [realised.get((g, int(d)), np.nan) for g, d in zip(res["group"], res["day"])])
    res = res.assign(covered=(res.pct_vs_vehicle_ci_low <= res.truth) & (res.truth <= res.pct_vs_vehicle_ci_high),
                     bank_truth=bank,
                     covered_bank=(res.pct_vs_vehicle_ci_low <= bank) & (bank <= res.pct_vs_vehicle_ci_high),
                     width=res.pct_vs_vehicle_ci_high - res.pct_vs_vehicle_ci_low,
                     error=res.pct_vs_vehicle - res.truth,
                     error_bank=res.pct_vs_vehicle - bank,
                     significant=res.p_vs_vehicle < 0.05,
                     significant_adjusted=res.p_vs_vehicle_adjusted < 0.05)
    keys = ["null", "counts", "model", "group", "day"]
    s = res.groupby(keys).agg(studies=("study", "nunique"), truth=("truth", "mean"), mean_estimate=("pct_vs_vehicle", "mean"),
                              bias=("error", "mean"), coverage=("covered", "mean"), bank_truth=("bank_truth", "mean"),
                              bias_bank=("error_bank", "mean"), coverage_bank=("covered_bank", "mean"),
                              ci_width=("width", "median"),
                              rejected=("significant", "mean"), rejected_adjusted=("significant_adjusted", "mean"),
                              converged=("converged", "mean")).reset_index()
    return s


def quality_check(bank_path: Path, scratch: bool = False) -> list[str]:
    """The spine readout's per-image quality (``measured_snr``, ``spike_in_recall``) against the
    bank's truth: per SNR level, the spike-in recall beside the share of the true in-field
    spines counted (``n_spines / true_spine_count``: the recall, over a precision of ~0.99),
    their per-image difference and rank correlation (over all images and within a level),
    the measured SNR, and the slope of log(measured / true density) on log true density
    (the detector's attenuation of density differences) with the measured density and with it
    divided by the image's spike-in recall.  Writes ``quality.md`` with the results (:func:`results_dir`) and returns
    its lines."""
    from scipy import stats

    bank = pd.read_parquet(bank_path)
    if "spike_in_recall" not in bank:
        raise SystemExit(f"{bank_path} has no quality columns: rebuild it with the current code (stage bank)")
    b = bank.assign(counted=bank["n_spines"] / bank["true_spine_count"],
                    corrected=bank[VALUE] / bank["spike_in_recall"])
    lines = [f"Per-image quality of the spine readout against truth ({bank_path.name}: {len(b)} images).", "",
             "| SNR level | images | spike-in recall (mean) | counted / true spines (mean) | difference: mean / RMS "
             "| rank correlation | measured SNR (median) | attenuation slope: measured / recall-corrected |",
             "|---|---|---|---|---|---|---|---|"]

    def slope(y: pd.Series, x: pd.Series) -> float:
        ok = np.isfinite(y) & np.isfinite(x)
        return float(np.polyfit(np.log(x[ok]), np.log(y[ok] / x[ok]), 1)[0])

    for level, g in [*b.groupby("snr_level", sort=False), ("all", b)]:
        d = g["spike_in_recall"] - g["counted"]
        rho = stats.spearmanr(g["spike_in_recall"], g["counted"], nan_policy="omit").statistic
        lines.append(f"| {level} | {len(g)} | {g['spike_in_recall'].mean():.3f} | {g['counted'].mean():.3f} | "
                     f"{d.mean():+.3f} / {np.sqrt((d ** 2).mean()):.3f} | {rho:.2f} | {g['measured_snr'].median():.1f} | "
                     f"{slope(g[VALUE], g[TRUE]):+.3f} / {slope(g['corrected'], g[TRUE]):+.3f} |")
    within = b.groupby("snr_level")[["spike_in_recall", "counted"]].transform(lambda v: v - v.mean())
    rho_w = stats.spearmanr(within["spike_in_recall"], within["counted"], nan_policy="omit").statistic
    lines += ["", f"Rank correlation of spike-in recall and counted / true within SNR levels (level means removed): "
              f"{rho_w:.2f}."]
    text = "\n".join(lines) + "\n"
    out = results_dir(bank_path, scratch)[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(text)
    print(text)
    return lines


def results_dir(bank_path: Path, scratch: bool = False) -> tuple[Path, bool]:
    """Where the analysis of a bank goes, and whether it is the committed summary's: a default
    bank's results in ``OUT`` (the summary also in :data:`COMMITTED`); those of a bank with
    session-varying imaging quality, or of any bank with ``scratch``, in a folder named after
    the bank (the committed summary untouched)."""
    if scratch or "_photonsd" in bank_path.stem:
        return OUT / bank_path.stem.replace("bank_", ""), False
    return OUT, True


def analyse(bank_path: Path, studies: int, workers: int, scratch: bool = False) -> None:
    bank = pd.read_parquet(bank_path)
    tracks = pd.read_parquet(tracks_path(bank_path)) if tracks_path(bank_path).exists() else None
    t0 = time.perf_counter()
    tasks = [(bank, tracks, k, null) for null in (False, True) for k in range(studies)]
    parts = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, res in enumerate(pool.map(_analyse_one, tasks, chunksize=8)):
            parts += res
            if (i + 1) % 100 == 0:
                log.info("%d / %d studies, %.0f s", i + 1, len(tasks), time.perf_counter() - t0)
    res = pd.concat(parts, ignore_index=True)
    out = results_dir(bank_path, scratch)[0]
    out.mkdir(parents=True, exist_ok=True)
    res.to_csv(out / "studies.csv", index=False)
    log.info("%d studies fitted in %.0f s", len(tasks), time.perf_counter() - t0)
    write_summary(res, bank, bank_path.name, scratch)


def turnover_summary(res: pd.DataFrame, tracks_file: Path, out: Path = OUT) -> list[str]:
    """Markdown lines: per turnover measure, interval and group, the treated-minus-vehicle
    difference (percentage points) on measured and true tracks: mean, coverage of the bank's
    own true difference (null studies: 0), CI width, rejection rate."""
    true_all = pd.read_parquet(tracks_file)
    realised = turnover_contrasts(true_all[true_all["counts"] == "perfect"])
    bank = {(m, g, int(d)): v for m, g, d, v in zip(realised["measure"], realised["group"], realised["day"],
                                                      realised["difference_pp"])}
    truth = np.where(res["null"].to_numpy(bool), 0.0,
                     [bank.get((m, g, int(d)), np.nan) for m, g, d in zip(res["measure"], res["group"], res["day"])])
    res = res.assign(truth=truth, covered=(res["ci_low"] <= truth) & (truth <= res["ci_high"]),
                     width=res["ci_high"] - res["ci_low"], significant=res["p_value"] < 0.05)
    if "model" not in res:
        res = res.assign(model="Welch t over animals")
    s = (res.groupby(["null", "measure", "group", "day", "counts", "model"])
         .agg(truth=("truth", "mean"), mean=("difference_pp", "mean"), coverage=("covered", "mean"),
              width=("width", "median"), rejected=("significant", "mean")).reset_index())
    s.to_csv(out / "summary_turnover.csv", index=False)
    lines = ["## Turnover: treated minus vehicle, percentage points", "",
             "Models: the report's (Welch t over animals) and its sensitivity analysis (least squares over the "
             "animals of the interval with the change in log measured SNR between the two sessions as a "
             "covariate, :func:`analysis.stats.turnover.snr_adjusted_turnover`; measured tracks only).  "
             "Truth: the difference the bank's true tracks give over all its animals (null studies: 0).", "",
             "| studies | fraction | group | interval to day | tracks | model | truth (pp) | mean estimate (pp) | "
             "coverage | CI width (pp) | rejected at 0.05 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s.sort_values(["null", "measure", "group", "day", "counts", "model"]).itertuples():
        lines.append(f"| {'null' if r.null else 'effect'} | {r.measure.replace('fraction_', '')} | {r.group} | {r.day} | "
                     f"{r.counts} | {r.model} | {r.truth:+.1f} | {r.mean:+.1f} | {r.coverage:.3f} | {r.width:.1f} | "
                     f"{r.rejected:.3f} |")
    return lines + [""]


def write_summary(res: pd.DataFrame, bank: pd.DataFrame, bank_name: str, scratch: bool = False) -> None:
    """``summary.csv`` and ``summary.md`` (printed) from the per-study rows of :func:`analyse`."""
    turnover = res[res["measure"] != "density"] if "measure" in res else res.iloc[0:0]
    res = res[res["measure"] == "density"] if "measure" in res else res
    out, committed = results_dir(OUT / bank_name, scratch)
    s = summarise(res, bank_truth(bank))
    s.to_csv(out / "summary.csv", index=False)
    studies = res.groupby("null")["study"].nunique()
    lines = ["# End-to-end calibration of the spine statistics", "",
             f"Generated by `benchmarks/calibrate_spines_e2e.py` on {time.strftime('%Y-%m-%d')} at commit {_commit()}: "
             f"{studies.get(False, 0)} effect and {studies.get(True, 0)} null studies of the default design's spine arm "
             f"(6 animals per group, 2 imaged positions each, days -3 / 7 / 63) drawn from a bank of "
             f"{bank.animal_id.nunique()} animals and {len(bank)} two-photon images ({bank_name}), each image "
             "rendered, measured and tracked by the pipeline (images -> quantify -> fit).  The report's model of "
             "the spine density has the position effect; the model without it is the report's before 2026-12-02; "
             "the sensitivity analysis adds each image's log measured SNR as a covariate to the position-effect "
             "model.  "
             "Truth: the truth model's effect and the effect the bank's own true densities realise (its sampling "
             "error is common to every study drawn from it).", ""]
    for null in (False, True):
        sub = s[s.null == null].sort_values(["group", "day", "counts", "model"])
        lines += [f"## Spine density, {'null' if null else 'effect'} studies", "",
                  "| group @ day | counts | model | truth % (model / bank) | mean estimate % | bias, points (model / bank) | "
                  "coverage (model / bank) | CI width (points) | "
                  f"{'type I error' if null else 'power'} (unadjusted / adjusted) | converged |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sub.itertuples():
            lines.append(f"| {r.group} @ {r.day} | {r.counts} | {r.model} | {r.truth:+.1f} / {r.bank_truth:+.1f} | "
                         f"{r.mean_estimate:+.1f} | {r.bias:+.1f} / {r.bias_bank:+.1f} | {r.coverage:.3f} / "
                         f"{r.coverage_bank:.3f} | {r.ci_width:.1f} | {r.rejected:.3f} / "
                         f"{r.rejected_adjusted:.3f} | {r.converged:.3f} |")
        lines.append("")
    if len(turnover):
        lines += turnover_summary(turnover, tracks_path(OUT / bank_name), out)
    ratio = (bank[VALUE] / bank[TRUE]).groupby(bank["snr_level"])
    lines += ["## Measured / true spine density per image, by SNR level", "",
              "| SNR level | images | median | 10th-90th percentile |", "|---|---|---|---|"]
    for level, r in ratio:
        lines.append(f"| {level} | {r.size} | {r.median():.3f} | {r.quantile(0.1):.3f}-{r.quantile(0.9):.3f} |")
    if "photon_scale" in bank and bank["photon_scale"].nunique() > 1:
        lines += ["", f"Imaging quality varies between sessions: photon scale per image log-SD "
                  f"{np.log(bank['photon_scale']).std():.2f} (median {bank['photon_scale'].median():.2f}, "
                  f"{bank['photon_scale'].min():.2f}-{bank['photon_scale'].max():.2f})."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    if committed:
        COMMITTED.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["bank", "analyse", "summary", "quality"])
    ap.add_argument("--animals", type=int, default=40, help="animals per group in the bank")
    ap.add_argument("--seed", type=int, default=70_000, help="seed of the bank's design and images")
    ap.add_argument("--studies", type=int, default=400, help="effect studies (and as many null studies)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--session-photon-sd", type=float, default=0.0,
                    help="imaging quality varying between sessions: log-SD of each image's photon scale "
                         "(0: every session of a position imaged alike, the default study)")
    ap.add_argument("--scratch", action="store_true",
                    help="results in a folder named after the bank; the committed summary is left as it is")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path = bank_path(args.seed, args.session_photon_sd)
    if args.stage == "bank":
        build_bank(args.animals, args.seed, args.workers, args.session_photon_sd)
    elif args.stage == "quality":
        quality_check(path, args.scratch)
    elif args.stage == "analyse":
        analyse(path, args.studies, args.workers, args.scratch)
    else:  # the tables again from the per-study rows of the last analyse
        write_summary(pd.read_csv(results_dir(path, args.scratch)[0] / "studies.csv"), pd.read_parquet(path), path.name,
                      args.scratch)


if __name__ == "__main__":
    main()
