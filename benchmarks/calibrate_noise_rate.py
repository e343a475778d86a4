"""Calibrate the rate of noise maxima that ``detect_puncta`` reports on white Gaussian noise.

``analysis.measure.puncta.noise_detection_rate`` (used by the detector's noise false-discovery
control) is ``exp(a(sigma) + b u + c u^2)`` per pixel for a significance above ``u`` and a
nominal punctum sigma of ``sigma`` pixels.  This script measures it: for each sigma of the
table it runs the detector (fixed size, threshold 3, no FDR step) on ``--images`` fields of
512 x 512 pixels of white Gaussian noise, counts the reported puncta above each ``u`` in
3.0, 3.25, ..., 6.0, and fits ``a`` per sigma and a common ``b``, ``c`` by Poisson maximum
likelihood.  It prints the constants to paste into ``analysis/synapses.py`` and the observed
and fitted counts.

Usage::

    python benchmarks/calibrate_noise_rate.py --images 16      # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.optimize import minimize

from analysis.measure.puncta import detect_puncta

SIGMAS_PX = (0.5, 0.8, 1.3, 2.0, 3.0)
U = np.arange(3.0, 6.01, 0.25)
HWHM_PER_SIGMA = 1.1774
SHAPE = (512, 512)


def counts_for(args: tuple[float, int]) -> tuple[float, int, np.ndarray]:
    """Reported noise puncta above each ``U`` for one sigma (pixels), over ``n`` images."""
    sigma_px, n = args
    rng = np.random.default_rng([int(round(100 * sigma_px)), n])
    snr = []
    for _ in range(n):
        img = rng.normal(100.0, 5.0, SHAPE)
        p = detect_puncta(img, 0.1, punctum_radius_um=sigma_px * HWHM_PER_SIGMA * 0.1, threshold_sd=3.0,
                          noise_fdr=None)
        snr.append(p["snr"].to_numpy())
    s = np.concatenate(snr)
    return sigma_px, n * SHAPE[0] * SHAPE[1], np.array([(s > u).sum() for u in U])


def fit(table: list[tuple[float, int, np.ndarray]]) -> tuple[float, float, np.ndarray]:
    """Poisson maximum likelihood of ``a`` per sigma and common ``b``, ``c``."""

    def nll(th: np.ndarray) -> float:
        b, c, a = th[0], th[1], th[2:]
        tot = 0.0
        for i, (_, npx, n) in enumerate(table):
            lam = np.exp(a[i] + b * U + c * U**2) * npx
            tot += float(np.sum(lam - n * np.log(lam + 1e-300)))
        return tot

    th = np.r_[0.0, -0.5, np.full(len(table), -5.0)]
    th = minimize(nll, th, method="Nelder-Mead", options={"maxiter": 40_000, "maxfev": 40_000}).x
    th = minimize(nll, th, method="BFGS").x
    return float(th[0]), float(th[1]), th[2:]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="noise images per sigma")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    with ProcessPoolExecutor(args.workers) as ex:
        table = list(ex.map(counts_for, [(s, args.images) for s in SIGMAS_PX]))
    b, c, a = fit(table)
    print(f"_NOISE_RATE_SIGMA_PX = {SIGMAS_PX}")
    print(f"_NOISE_RATE_A = ({', '.join(f'{x:.3f}' for x in a)})")
    print(f"_NOISE_RATE_B, _NOISE_RATE_C = {b:.4f}, {c:.5f}")
    print("u: " + " ".join(f"{u:5.2f}" for u in U))
    for (s, npx, n), ai in zip(table, a):
        fitted = np.exp(ai + b * U + c * U**2) * npx
        print(f"sigma {s} px, {npx} px: observed {n.tolist()}")
        print(f"{'':>22}fitted   {np.round(fitted, 1).tolist()}")


if __name__ == "__main__":
    main()
