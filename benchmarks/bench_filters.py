"""Speed of the banded-product Gaussian filters against scipy.ndimage on one core.

:mod:`analysis.measure.filters` replaces scipy's line-by-line ``correlate1d`` by blocked banded
matrix products on large float64 images.  This prints, per image size and kernel length, the
best of ``--repeat`` wall times of one 1-D pass across the rows (axis 0) and along them (axis
1), scipy's and ours, and their largest relative difference (rounding only).  BLAS is limited
to one thread by the module itself; scipy's filters are single-threaded.

Usage::

    python benchmarks/bench_filters.py [--sizes 256 512 1024 2048] [--taps 9 33 123] [--repeat 15]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi

from analysis.measure import filters


def best_ms(fn, repeat: int) -> float:
    fn()
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1000.0 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--taps", type=int, nargs="+", default=[9, 33, 123])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| image | taps | axis | scipy (ms) | ours (ms) | speed-up | max relative difference |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        x = rng.random((n, n))
        for taps in args.taps:
            w = rng.random(taps)
            for axis in (0, 1):
                theirs = ndi.correlate1d(x, w, axis=axis, mode="reflect")
                ours = filters.correlate1d(x, w, axis=axis)
                diff = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
                t_s = best_ms(lambda: ndi.correlate1d(x, w, axis=axis, mode="reflect"), args.repeat)
                t_o = best_ms(lambda: filters.correlate1d(x, w, axis=axis), args.repeat)
                path = "" if filters._use_product(x, taps, axis, "reflect") else " (scipy)"
                print(f"| {n} x {n} | {taps} | {axis} | {t_s:.1f} | {t_o:.1f}{path} | {t_s / t_o:.1f}x | {diff:.1e} |",
                      flush=True)


if __name__ == "__main__":
    main()
