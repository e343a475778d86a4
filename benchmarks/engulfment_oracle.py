"""Where is the per-cell engulfed count lost?  Oracle substitutions on default-SNR terminal fields.

Scratch diagnostic (not part of the documented benchmarks).  For each terminal field
(``render_terminal_field(default_rng([seed, 2, i]), shape=(640, 640), snr=8)`` by default, the
fields of :func:`analysis.sim.validation.microglia_accuracy`) it computes the per-cell engulfed
count with every combination of

* cells:   detected (``segment_microglia``, matched by soma centre as in
  :func:`analysis.sim.validation.match_cells`) or true labels,
* CD68:    detected (``segment_lysosomes``) or the true lysosome disks (captured from the
  phantom generator, rasterised at pixel centres as the truth's CD68 area),
* puncta:  detected (``detect_puncta``) or the true positions,

and reports Pearson r against the true engulfed count over the matched cells, with a
breakdown of the errors of the fully detected pipeline.

Stage 1 (slow, once) caches per-field detections in ``benchmarks/results/oracle_cache``;
stage 2 evaluates (fast), so CD68 variants can be compared on the same fields.

Usage::

    python benchmarks/engulfment_oracle.py --seeds 31 32 --fields 20
    python benchmarks/engulfment_oracle.py --seeds 21 22 23 --fields 40 --baseline old_engulfment.py
    python benchmarks/engulfment_oracle.py --level high --seeds 41 --fields 40
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd

PX = 0.2
SHAPE = (640, 640)
LEVEL = "default"
CACHE = Path("benchmarks/results/oracle_cache")


def render_with_lysosomes(seed: int, i: int):
    """The field of microglia_accuracy and the true lysosome disks (captured, not re-drawn)."""
    from analysis.sim import glia, phantoms

    captured = {}
    orig = glia._lysosomes

    def spy(*a, **k):
        out = orig(*a, **k)
        captured["lys"] = out
        return out

    glia._lysosomes = spy
    try:
        f = phantoms.render_terminal_field(np.random.default_rng([seed, 2, i]), shape=SHAPE,
                                           snr=phantoms.SNR_LEVELS[LEVEL], pixel_size_um=PX)
    finally:
        glia._lysosomes = orig
    lys = captured["lys"]
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    mask = np.zeros(SHAPE, bool)
    owner = np.zeros(SHAPE, np.int32)
    for y, x, r, c in zip(lys.y, lys.x, lys.rho_px, lys.cell):
        y0, y1 = max(0, int(y - r - 2)), min(SHAPE[0], int(y + r + 3))
        x0, x1 = max(0, int(x - r - 2)), min(SHAPE[1], int(x + r + 3))
        d = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 <= r**2
        mask[y0:y1, x0:x1] |= d
        owner[y0:y1, x0:x1][d] = c
    return f, mask, lys


def stage1(seed: int, i: int) -> dict:
    name = f"s{seed}_f{i}" + ("" if SHAPE == (640, 640) else f"_{SHAPE[0]}x{SHAPE[1]}")
    path = CACHE / (name + ("" if LEVEL == "default" else f"_{LEVEL}") + ".pkl")
    if path.exists():
        return pickle.loads(path.read_bytes())
    from analysis.measure.microglia import measure_microglia, segment_microglia
    from analysis.measure.puncta import detect_puncta

    f, true_lys, lys = render_with_lysosomes(seed, i)
    labels = segment_microglia(f.image[1], PX)
    cells = measure_microglia(labels, f.image[1], PX)
    det = detect_puncta(f.image[0], PX)
    rec = {
        "cd68": f.image[2], "psd95": f.image[0], "labels": labels.astype(np.int32),
        "cells": cells[["label", "soma_y", "soma_x"]], "det": det[["y", "x", "intensity"]],
        "true_labels": f.labels.astype(np.int32), "true_cells": f.cells, "puncta": f.puncta,
        "true_lys": true_lys, "lys": pd.DataFrame({"y": lys.y, "x": lys.x, "rho_px": lys.rho_px, "cell": lys.cell}),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(rec))
    tmp.replace(path)
    return rec


def counts(labels: np.ndarray, mask: np.ndarray, yx: np.ndarray, engulf=None) -> np.ndarray:
    """Per-label engulfed count (index = label) with measure_engulfment's rule (or ``engulf``)."""
    n = int(labels.max())
    if engulf is not None:
        return engulf(labels, mask, yx, n)
    if not len(yx):
        return np.zeros(n + 1, int)
    iy = np.clip(np.rint(yx[:, 0]).astype(int), 0, labels.shape[0] - 1)
    ix = np.clip(np.rint(yx[:, 1]).astype(int), 0, labels.shape[1] - 1)
    inside = mask[iy, ix]
    return np.bincount(labels[iy, ix][inside], minlength=n + 1)


def evaluate(rec: dict, seg, engulf=None, assign=None) -> tuple[pd.DataFrame, dict]:
    """Per matched cell the counts under each oracle combination; error tallies."""
    from analysis.measure.puncta import match_points
    from analysis.sim.validation import match_cells

    t0 = time.perf_counter()
    det_lys = seg(rec["cd68"])
    dt = time.perf_counter() - t0
    tc = rec["true_cells"]
    ri, ci = match_cells(rec["cells"], rec["true_labels"], len(tc))
    det_label = rec["cells"]["label"].to_numpy()[ri]
    true_label = tc["cell"].to_numpy()[ci]
    P = rec["puncta"]
    tyx = P[["y", "x"]].to_numpy(float)
    dyx = rec["det"][["y", "x"]].to_numpy(float)
    out = {"t_engulfed": tc["engulfed_count"].to_numpy()[ci]}
    masks = {"D": det_lys, "T": rec["true_lys"]}
    for cname, lab, ids in (("D", rec["labels"], det_label), ("T", rec["true_labels"], true_label)):
        for mname, m in masks.items():
            for pname, yx in (("D", dyx), ("T", tyx)):
                fn = assign if (cname == "D" and assign is not None) else None
                c = counts(lab, m, yx, engulf) if fn is None else fn(lab, m, yx, rec)
                out[f"cell{cname}_cd68{mname}_punc{pname}"] = c[ids]
    cells = pd.DataFrame(out)
    # error breakdown, all detected
    lab = rec["labels"]
    m = match_points(dyx, tyx, 0.25 / PX)
    det_of_true = np.full(len(tyx), -1)
    det_of_true[m.pairs[:, 1]] = m.pairs[:, 0]
    true_of_det = np.full(len(dyx), -1)
    true_of_det[m.pairs[:, 0]] = m.pairs[:, 1]
    det2true = dict(zip(det_label, true_label))
    eng = P["engulfed"].to_numpy(bool)
    tall = {"true_engulfed_in_matched": 0, "missed_not_detected": 0, "missed_outside_mask": 0,
            "missed_wrong_cell": 0, "counted_ok": 0, "false_from_false_detection": 0,
            "false_from_nonengulfed_true": 0, "false_from_other_cell": 0,
            "true_pos_outside_mask": 0, "cd68_area_det": 0, "cd68_area_true": 0}
    matched_true = set(true_label)
    def where(yx):
        iy = np.clip(np.rint(yx[0]).astype(int), 0, SHAPE[0] - 1)
        ix = np.clip(np.rint(yx[1]).astype(int), 0, SHAPE[1] - 1)
        return iy, ix
    for k in np.flatnonzero(eng):
        cell = int(P["cell"].iat[k])
        if cell not in matched_true:
            continue
        tall["true_engulfed_in_matched"] += 1
        if not det_lys[where(tyx[k])]:
            tall["true_pos_outside_mask"] += 1
        d = det_of_true[k]
        if d < 0:
            tall["missed_not_detected"] += 1
            continue
        iy, ix = where(dyx[d])
        if not det_lys[iy, ix]:
            tall["missed_outside_mask"] += 1
        elif det2true.get(int(lab[iy, ix])) != cell:
            tall["missed_wrong_cell"] += 1
        else:
            tall["counted_ok"] += 1
    for d in range(len(dyx)):
        iy, ix = where(dyx[d])
        if not det_lys[iy, ix] or int(lab[iy, ix]) not in det2true:
            continue
        host = det2true[int(lab[iy, ix])]
        t = true_of_det[d]
        if t < 0:
            tall["false_from_false_detection"] += 1
        elif not eng[t]:
            tall["false_from_nonengulfed_true"] += 1
        elif int(P["cell"].iat[t]) != host:
            tall["false_from_other_cell"] += 1
    inside = np.isin(rec["true_labels"], list(matched_true))
    tall["cd68_area_det"] = int((det_lys & np.isin(lab, det_label)).sum())
    tall["cd68_area_true"] = int((rec["true_lys"] & inside).sum())
    tall["seconds_lysosomes"] = dt
    return cells, tall


def bootstrap_r(x, y, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, float), np.asarray(y, float)
    idx = rng.integers(0, len(x), (n, len(x)))
    xs, ys = x[idx], y[idx]
    xs = xs - xs.mean(1, keepdims=True)
    ys = ys - ys.mean(1, keepdims=True)
    r = (xs * ys).sum(1) / np.sqrt((xs**2).sum(1) * (ys**2).sum(1))
    return np.percentile(r, [2.5, 97.5])


def report(frames, tallies, label=""):
    p = pd.concat(frames, ignore_index=True)
    t = pd.DataFrame(tallies).sum()
    print(f"== {label}: {len(p)} matched cells, {p['t_engulfed'].sum()} true engulfed")
    rows = []
    for col in [c for c in p.columns if c.startswith("cell")]:
        r = np.corrcoef(p[col], p["t_engulfed"])[0, 1]
        lo, hi = bootstrap_r(p[col], p["t_engulfed"])
        rows.append({"combo": col, "r": r, "ci_lo": lo, "ci_hi": hi,
                     "sum_ratio": p[col].sum() / p["t_engulfed"].sum(),
                     "mean_abs_err": (p[col] - p["t_engulfed"]).abs().mean()})
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    print((t / 1).round(3).to_string())
    print("cd68 area ratio det/true (matched cells):", round(t["cd68_area_det"] / t["cd68_area_true"], 3),
          " s/field lysosomes:", round(t["seconds_lysosomes"] / len(tallies), 3))
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[31, 32])
    ap.add_argument("--fields", type=int, default=20)
    ap.add_argument("--shape", type=int, default=640, help="square field size in pixels")
    ap.add_argument("--level", default="default", help="SNR level (analysis.sim.phantoms.SNR_LEVELS)")
    ap.add_argument("--stage1-only", action="store_true")
    ap.add_argument("--baseline", type=Path, help="a copy of an older engulfment.py to compare with")
    args = ap.parse_args()
    global SHAPE, LEVEL
    SHAPE = (args.shape, args.shape)
    LEVEL = args.level
    from analysis.measure.engulfment import segment_lysosomes

    recs = []
    for s in args.seeds:
        for i in range(args.fields):
            t0 = time.perf_counter()
            recs.append(stage1(s, i))
            print(f"seed {s} field {i}: {time.perf_counter() - t0:.1f} s", flush=True)
    if args.stage1_only:
        return
    frames, tallies = [], []
    for rec in recs:
        c, t = evaluate(rec, lambda im: segment_lysosomes(im, PX))
        frames.append(c)
        tallies.append(t)
    report(frames, tallies, "current")
    if args.baseline:
        import importlib.util

        spec = importlib.util.spec_from_file_location("baseline_engulfment", args.baseline)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        frames, tallies = [], []
        for rec in recs:
            c, t = evaluate(rec, lambda im: mod.segment_lysosomes(im, PX))
            frames.append(c)
            tallies.append(t)
        report(frames, tallies, f"baseline {args.baseline}")


if __name__ == "__main__":
    main()
