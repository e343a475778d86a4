"""False splits and resolved pairs of ``detect_puncta``'s split test (``_split_unresolved``).

Two puncta closer than the minimum separation (~2 sigma) make one maximum; the detector
fits two nominal puncta to such a blob and keeps them when they gain more than
``_SPLIT_CHI2`` (plus the model error) in chi-square over one punctum.  This script measures
both sides of that threshold on Gaussian spots with Poisson noise (the detector's own model,
not any generator's), with the spot size given (so that the size estimate is not at stake):

* **false splits**: fields of isolated spots (a grid, sub-pixel jitter) of sigma 1-4 px and
  peak 15-20,000 photons over a background of 100 (1,000 for the brightest): detections with
  the split test minus detections without it (``_SPLIT_CHI2 = inf``), per 1,000 spots;
* **resolved pairs**: fields of equal pairs 1.0-2.0 sigma apart (sigma 1.5 and 2.5 px, peak
  SNR 5-40): the share of pair members found within 0.5 sigma (one-to-one), with and without
  the split test.

Usage::

    python benchmarks/calibrate_split.py          # ~40 s (one core)
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import analysis.measure.puncta as puncta
from analysis.measure.matching import match_points

HWHM_PER_SIGMA = 1.1774
SHAPE = (256, 256)


def _field(centres: np.ndarray, sigma: float, amp: float, background: float, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    lam = np.full(SHAPE, float(background))
    r = int(np.ceil(5 * sigma))
    for y, x in centres:
        sl = (slice(max(int(y) - r, 0), int(y) + r + 2), slice(max(int(x) - r, 0), int(x) + r + 2))
        lam[sl] += amp * np.exp(-((yy[sl] - y) ** 2 + (xx[sl] - x) ** 2) / (2 * sigma**2))
    return rng.poisson(lam).astype(float)


def _detect(img: np.ndarray, sigma: float, split: bool) -> np.ndarray:
    saved = puncta._SPLIT_CHI2
    try:
        if not split:
            puncta._SPLIT_CHI2 = np.inf
        p = puncta.detect_puncta(img, 0.1, punctum_radius_um=sigma * HWHM_PER_SIGMA * 0.1)
    finally:
        puncta._SPLIT_CHI2 = saved
    return p[["y", "x"]].to_numpy()


def false_splits(images: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for sigma in (1.0, 1.5, 2.5, 4.0):
        for amp, background in ((15, 100), (50, 100), (200, 100), (2000, 100), (20000, 1000)):
            n_spots = off = on = 0
            step = int(12 * sigma) + 12
            for _ in range(images):
                cy, cx = np.mgrid[step // 2 : SHAPE[0] - step // 2 : step, step // 2 : SHAPE[1] - step // 2 : step]
                centres = np.c_[cy.ravel(), cx.ravel()] + rng.uniform(-0.5, 0.5, (cy.size, 2))
                img = _field(centres, sigma, amp, background, rng)
                n_spots += len(centres)
                off += len(_detect(img, sigma, False))
                on += len(_detect(img, sigma, True))
            rows.append({"sigma_px": sigma, "peak": amp, "background": background,
                         "peak_snr": amp / np.sqrt(background), "spots": n_spots, "detections_without_split": off,
                         "detections_with_split": on, "false_splits_per_1000": 1000 * (on - off) / n_spots})
    return pd.DataFrame(rows)


def resolved_pairs(images: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    rows = []
    for sigma in (1.5, 2.5):
        for snr in (5, 10, 20, 40):
            amp = snr * 10.0  # background 100: noise SD 10
            for sep_sigma in (1.0, 1.25, 1.5, 1.75, 2.0):
                found = {True: 0, False: 0}
                n_true = 0
                step = int(10 * sigma) + 12
                for _ in range(images):
                    cy, cx = np.mgrid[step // 2 : SHAPE[0] - step // 2 : step, step // 2 : SHAPE[1] - step // 2 : step]
                    mid = np.c_[cy.ravel(), cx.ravel()] + rng.uniform(-0.5, 0.5, (cy.size, 2))
                    ang = rng.uniform(0, np.pi, len(mid))
                    half = 0.5 * sep_sigma * sigma * np.c_[np.sin(ang), np.cos(ang)]
                    truth = np.concatenate([mid - half, mid + half])
                    img = _field(truth, sigma, amp, 100.0, rng)
                    n_true += len(truth)
                    for split in (True, False):
                        found[split] += match_points(_detect(img, sigma, split), truth, 0.5 * sigma).tp
                rows.append({"sigma_px": sigma, "peak_snr": snr, "separation_sigma": sep_sigma, "spots": n_true,
                             "found_with_split": found[True] / n_true, "found_without_split": found[False] / n_true})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4, help="fields per condition")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    fs = false_splits(args.images, args.seed)
    print(fs.round(2).to_string(index=False))
    total = fs.detections_with_split.sum() - fs.detections_without_split.sum()
    print(f"\nfalse splits: {total} in {fs.spots.sum()} isolated spots\n")
    rp = resolved_pairs(max(1, args.images // 2), args.seed)
    print(rp.pivot_table(index=["sigma_px", "peak_snr"], columns="separation_sigma",
                         values=["found_without_split", "found_with_split"]).round(2).to_string())


if __name__ == "__main__":
    main()
