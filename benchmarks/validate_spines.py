"""Validate the spine detector on real two-photon frames (and on simulated sessions when present).

Real data: ``../shared/realdata/spines_2p`` (SpineDetector "Dendritic2" set, CC BY 4.0): 505
maximum projections, 416 x 416, with hand-marked spine heads. Detected heads are matched one to
one to the marks within 10 px (:func:`analysis.measure.matching.match_points`); precision,
recall and F1 are pooled over all images, and the per-image count error is reported. The pixel
size given to the detector is 0.04 um/px for every frame (the README's approximate value; the
detector takes its spatial scale from the measured shaft width, see
:mod:`analysis.measure.spines`). Speed is the time of ``detect_spines`` on a 512 x 512 frame on
one core.

Run: ``python benchmarks/validate_spines.py [--limit N] [--out benchmarks/results/spines_validation.md]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from skimage import io  # noqa: E402

from analysis.measure.matching import match_points  # noqa: E402
from analysis.measure.spines import detect_spines  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "realdata" / "spines_2p"
PIXEL_SIZE_UM = 0.04
MATCH_PX = 10.0


def load_grey(path: Path) -> np.ndarray:
    im = io.imread(path)
    return (im[..., 0] if im.ndim == 3 else im).astype(np.float32)


def real_benchmark(limit: int | None = None, **params) -> tuple[pd.DataFrame, dict]:
    pts = pd.read_csv(REAL / "valid_spine_points.csv")
    files = sorted((REAL / "valid" / "images").glob("*.jpg"))
    if limit:
        files = files[::max(1, len(files) // limit)][:limit]
    by = {k: g for k, g in pts.groupby("image")}
    rows = []
    for f in files:
        img = load_grey(f)
        det = detect_spines(img, PIXEL_SIZE_UM, **params)
        true = by.get(f.name, pts.iloc[:0])
        m = match_points(det[["y", "x"]].to_numpy(float), true[["y_px", "x_px"]].to_numpy(float), MATCH_PX)
        rows.append({"image": f.name, "family": "zoomed" if f.name.startswith("spine_") else "field",
                     "n_true": len(true), "n_det": len(det), "tp": m.tp, "fp": m.fp, "fn": m.fn})
    per = pd.DataFrame(rows)
    return per, summarise(per)


def summarise(per: pd.DataFrame) -> dict:
    tp, fp, fn = per.tp.sum(), per.fp.sum(), per.fn.sum()
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    err = per.n_det - per.n_true
    return {"images": len(per), "true": int(per.n_true.sum()), "detected": int(per.n_det.sum()),
            "precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
            "count_err_median_abs": float(np.median(np.abs(err))),
            "count_err_mean": float(err.mean()),
            "count_rel_err_median_abs": float(np.median(np.abs(err) / np.maximum(per.n_true, 1)))}


def speed() -> float:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    img = 200 * np.exp(-((yy - 256 - 0.2 * (xx - 256)) ** 2) / (2 * 4.0 ** 2))
    for k in range(30):
        x0 = 20 + 16 * k
        side = 1 if k % 2 else -1
        y0 = 256 + 0.2 * (x0 - 256) + side * 14
        img += 150 * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * 2.5 ** 2))
    img = rng.poisson(img + 10).astype(np.float32)
    detect_spines(img, 0.1)
    t = []
    for _ in range(5):
        t0 = time.perf_counter()
        detect_spines(img, 0.1)
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def fmt(d: dict) -> str:
    return (f"| {d['images']} | {d['true']} | {d['detected']} | {d['precision']:.3f} | {d['recall']:.3f} | "
            f"{d['f1']:.3f} | {d['count_err_median_abs']:.1f} | {d['count_err_mean']:+.1f} | "
            f"{d['count_rel_err_median_abs']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    lines = [f"# Spine measurement validation (commit {commit})", ""]
    if REAL.exists():
        t0 = time.perf_counter()
        per, tot = real_benchmark(a.limit)
        el = time.perf_counter() - t0
        head = ("| images | true | detected | precision | recall | F1 | median abs count err | "
                "mean count err | median rel count err |\n|---|---|---|---|---|---|---|---|---|")
        lines += [f"## Real two-photon frames (spines_2p), pixel size {PIXEL_SIZE_UM} um, match within "
                  f"{MATCH_PX:.0f} px", "", "All images:", "", head, fmt(tot), ""]
        for fam, g in per.groupby("family"):
            lines += [f"{fam} frames:", "", head, fmt(summarise(g)), ""]
        lines += [f"({el / len(per):.2f} s per 416 x 416 frame including reading)", ""]
    else:
        lines += [f"real data folder {REAL} absent: skipped", ""]
    lines += [f"## Speed: detect_spines on a 512 x 512 frame, one core: {speed():.3f} s", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(a.out)


if __name__ == "__main__":
    sys.exit(main())
