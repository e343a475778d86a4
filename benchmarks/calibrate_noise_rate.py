"""Calibrate the rate of noise maxima that ``detect_puncta`` reports on white Gaussian noise.

``analysis.measure.puncta.noise_detection_rate`` (used by the detector's noise false-discovery
control) is ``exp(a(sigma) + b u + c u^2)`` per pixel for a significance above ``u`` and a
nominal punctum sigma of ``sigma`` pixels.  This script measures it: for each sigma of the
table it runs the detector (fixed size, threshold 3, no FDR step) on ``--images`` fields of
512 x 512 pixels of white Gaussian noise, counts the reported puncta above each ``u`` in
3.0, 3.25, ..., 6.0, and fits ``a`` per sigma and a common ``b``, ``c`` by Poisson maximum
likelihood.  It prints the constants to paste into ``analysis/measure/puncta.py`` and the
observed and fitted counts.

With ``--stacks`` it calibrates the factor that takes that rate per pixel of a plane to the
rate per voxel of a z-stack: ``exp(d(sz) + e(sz) (u - 4))`` for an axial punctum sigma of
``sz`` planes (``_NOISE_RATE_Z_*``).  For each ``sz`` of the table it runs the detector (fixed
lateral sigma 1.27 px and axial size, the default threshold of 4, no FDR step) on ``--images``
stacks of white Gaussian noise, 256 x 256 pixels and ``max(24, 8 sz)`` planes, and fits ``d``
and ``e`` per ``sz`` by Poisson maximum likelihood of the counts in bins of ``u`` from 4.25 up,
the plane rate held at its calibration (just above the threshold the joint fit's pruning thins
the counts: the fitted rate is 10-30 % high between 4 and 4.25, on the safe side).  Unlike a
plane, a stack run at threshold 3 reports 2-3x more maxima above 4 than one run at 4 (measured,
cause not pinned down), so the factor holds for the default threshold.  Stacks of
other lateral sigmas and thin stacks of 5 planes are run as checks of the factor (observed
against predicted counts; not fitted).

Usage::

    python benchmarks/calibrate_noise_rate.py --images 16      # ~5 min on 2 cores
    python benchmarks/calibrate_noise_rate.py --stacks --images 24   # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.optimize import minimize

from analysis.measure.puncta import detect_puncta, noise_detection_rate

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


#: Axial punctum sigmas (planes) of the stack table, and the lateral sigma (pixels) they are run at.
SIGMAS_Z = (0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)
STACK_LATERAL_PX = 1.274
STACK_PX = 256
#: Checks of the factor at other lateral sizes and depths: (lateral px, axial planes, planes).
STACK_CHECKS = ((0.8, 0.7, None), (2.0, 0.7, None), (0.8, 2.0, None), (2.0, 2.0, None), (3.0, 1.0, None),
                (1.274, 1.0, 5), (1.274, 0.5, 5))
AXIAL_HWHM_UM = 0.35
STACK_THRESHOLD = 4.0
STACK_FIT_FROM = 4.25


def stack_counts_for(args: tuple[float, float, int | None, int, int]) -> tuple[float, float, int, np.ndarray]:
    """Reported noise puncta above each ``U`` in ``n`` white-noise stacks: lateral sigma
    ``sl`` pixels of 0.1 um, axial sigma ``sz`` planes, ``nz`` planes (default ``max(24, 8 sz)``)."""
    sl, sz, nz, n, seed = args
    nz = nz or max(24, int(np.ceil(8 * sz)))
    rng = np.random.default_rng([int(round(100 * sl)), int(round(100 * sz)), nz, seed])
    dz = AXIAL_HWHM_UM / HWHM_PER_SIGMA / sz
    snr = []
    for _ in range(n):
        st = rng.normal(100.0, 5.0, (nz, STACK_PX, STACK_PX))
        p = detect_puncta(st, 0.1, z_step_um=dz, punctum_radius_um=sl * HWHM_PER_SIGMA * 0.1,
                          axial_radius_um=AXIAL_HWHM_UM, threshold_sd=STACK_THRESHOLD, noise_fdr=None)
        snr.append(p["snr"].to_numpy())
    s = np.concatenate(snr)
    return sl, sz, n * nz * STACK_PX**2, np.array([(s > u).sum() for u in U])


def fit_axial(voxels: int, counts: np.ndarray, sigma_px: float) -> tuple[float, float]:
    """Poisson maximum likelihood of ``d``, ``e`` in ``plane rate x exp(d + e (u - 4))``, from
    the counts between successive ``u`` (independent) from ``STACK_FIT_FROM`` up."""
    base = noise_detection_rate(U, sigma_px) * voxels
    sel = U >= STACK_FIT_FROM - 1e-9
    n = counts[sel].astype(float)
    n_bin = np.r_[n[:-1] - n[1:], n[-1]]

    def nll(th: np.ndarray) -> float:
        above = base[sel] * np.exp(th[0] + th[1] * (U[sel] - 4.0))
        lam = np.maximum(np.r_[above[:-1] - above[1:], above[-1]], 1e-300)
        return float(np.sum(lam - n_bin * np.log(lam)))

    th = minimize(nll, np.array([-1.0, 1.0]), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9}).x
    return float(th[0]), float(th[1])


def main_stacks(images: int, workers: int) -> None:
    """Calibrate and check the axial factor of the noise rate (``--stacks``)."""
    runs = [(STACK_LATERAL_PX, sz, None, images, 0) for sz in SIGMAS_Z]
    runs += [(sl, sz, nz, images, 1) for sl, sz, nz in STACK_CHECKS]
    with ProcessPoolExecutor(workers) as ex:
        table = list(ex.map(stack_counts_for, runs))
    fitted = [fit_axial(vox, n, sl) for sl, _, vox, n in table[: len(SIGMAS_Z)]]
    print(f"_NOISE_RATE_Z_SIGMA = {SIGMAS_Z}")
    print(f"_NOISE_RATE_Z_D = ({', '.join(f'{d:.3f}' for d, _ in fitted)})")
    print(f"_NOISE_RATE_Z_E = ({', '.join(f'{e:.3f}' for _, e in fitted)})")
    print("u: " + " ".join(f"{u:5.2f}" for u in U))
    for (sl, sz, vox, n), run in zip(table, runs):
        kind = "check" if run[4] else "fit"
        pred = noise_detection_rate(U, sl, axial_sigma_px=sz) * vox
        print(f"{kind} lateral {sl} px, axial {sz} planes, {vox} voxels: observed {n.tolist()}")
        print(f"{'':>22}predicted {np.round(pred, 1).tolist()}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="noise images (or stacks) per sigma")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stacks", action="store_true", help="calibrate the axial factor of z-stacks")
    args = ap.parse_args(argv)
    if args.stacks:
        main_stacks(args.images, args.workers)
        return
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
