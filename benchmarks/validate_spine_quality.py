"""Validate the spine readout's per-image quality (measured SNR, spike-in recall) on real frames.

Real two-photon frames (``../shared/realdata/spines_2p``, hand-marked heads; see
``validate_spines.py``): per frame, the detector's recall of the marks (one-to-one within
10 px) beside the spike-in recall of :func:`analysis.measure.spine_quality.spine_quality`, and
the measured SNR.  The marks cover only some dendrites of a frame, so the precision against
them is not a precision; their recall is, for the marked heads.  Frames are compared pooled
(recall of all marks against the mean spike-in recall), per family (wide-field and zoomed), by
tercile of measured SNR, and per frame (rank correlation; the per-frame recall of a dozen marks
has a binomial error of ~0.13 of its own).

The simulated check of the same columns (960 or 240 images with known spines, three SNR
levels) is ``python benchmarks/calibrate_spines_e2e.py quality --seed <bank seed>``.

Run: ``python benchmarks/validate_spine_quality.py [--every 5] [--workers 2]
[--out benchmarks/results/spine_quality_real.md]``
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "realdata" / "spines_2p"
PIXEL_SIZE_UM = 0.04
MATCH_PX = 10.0


def _one(task: tuple[Path, np.ndarray]) -> dict:
    from skimage import io

    from analysis.measure import spines as sp
    from analysis.measure.matching import match_points
    from analysis.measure.spine_quality import spine_quality

    path, marks = task
    im = io.imread(path)
    img = (im[..., 0] if im.ndim == 3 else im).astype(np.float32)
    c0 = time.process_time()
    tr = sp.trace_dendrites(img, PIXEL_SIZE_UM)
    det = sp.detect_spines(img, PIXEL_SIZE_UM, trace=tr)
    q = spine_quality(img, PIXEL_SIZE_UM, det, tr, seed=0)
    m = match_points(det[["y", "x"]].to_numpy(float), marks, MATCH_PX)
    return {"image": path.name, "family": "zoomed" if path.name.startswith("spine_") else "field",
            "n_marks": len(marks), "n_det": len(det), "tp": m.tp, **q, "cpu_s": time.process_time() - c0}


def run(every: int, workers: int) -> pd.DataFrame:
    pts = pd.read_csv(REAL / "valid_spine_points.csv")
    by = {k: g[["y_px", "x_px"]].to_numpy(float) for k, g in pts.groupby("image")}
    files = sorted((REAL / "valid" / "images").glob("*.jpg"))[::every]
    tasks = [(f, by.get(f.name, np.zeros((0, 2)))) for f in files]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return pd.DataFrame(list(pool.map(_one, tasks)))


def report(per: pd.DataFrame) -> str:
    from scipy import stats

    per = per.assign(mark_recall=per.tp / per.n_marks.where(per.n_marks > 0))
    ok = per[(per.n_marks > 0) & per.spike_in_recall.notna()]
    lines = [f"Spine readout quality on real frames ({len(per)} frames of `spines_2p`, pixel size "
             f"{PIXEL_SIZE_UM} um; {int(per.spike_in_recall.isna().sum())} frames without a spike-in: no head "
             "beside a traced shaft).", "",
             "| frames | n | marks | recall of the marks (pooled) | spike-in recall (mean) | measured SNR (median) |",
             "|---|---|---|---|---|---|"]

    def row(name: str, g: pd.DataFrame) -> str:
        return (f"| {name} | {len(g)} | {int(g.n_marks.sum())} | {g.tp.sum() / max(g.n_marks.sum(), 1):.3f} | "
                f"{g.spike_in_recall.mean():.3f} | {g.measured_snr.median():.1f} |")

    lines.append(row("all with a spike-in", ok))
    for fam, g in ok.groupby("family"):
        lines.append(row(fam, g))
    terc = pd.qcut(ok.measured_snr, 3, labels=["lowest SNR third", "middle third", "highest third"])
    for t, g in ok.groupby(terc, observed=True):
        lines.append(row(str(t), g))
    rho = stats.spearmanr(ok.spike_in_recall, ok.mark_recall, nan_policy="omit").statistic
    big = ok[ok.n_marks >= 15]
    rho_big = stats.spearmanr(big.spike_in_recall, big.mark_recall, nan_policy="omit").statistic
    lines += ["", f"Per frame, rank correlation of spike-in recall and recall of the marks: {rho:.2f} "
              f"({len(ok)} frames); frames with >= 15 marks: {rho_big:.2f} ({len(big)} frames).  "
              f"CPU per frame (trace, detection, quality): median {per.cpu_s.median():.2f} s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--every", type=int, default=5, help="every k-th frame in name order")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "spine_quality_real.md")
    args = ap.parse_args()
    if not REAL.exists():
        raise SystemExit(f"{REAL} not found: the real frames are needed")
    t0 = time.perf_counter()
    per = run(args.every, args.workers)
    text = report(per)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    per.to_csv(args.out.with_suffix(".csv"), index=False)
    print(text)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
