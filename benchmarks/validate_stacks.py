"""Puncta in z-stacks from an independent simulator, beside big-fish (part of ``make validate``).

sim-fish (``simfish.simulate_images`` with ``ndim=3``; not ours) renders stacks of 16 planes of
256 x 256 pixels, 100 nm pixels and 300 nm planes, with Gaussian spots of lateral / axial sigma
150 / 350 nm (250 / 600 nm in the "wide" case) on a Poisson background of 300, 3 stacks per
case.  Two detectors run on each stack:

* ``ours``: :func:`analysis.measure.puncta.detect_puncta` with its defaults, given the pixel
  size and the z step only;
* ``big-fish``: ``bigfish.detection.detect_spots`` with its automatic (elbow) threshold, given
  the voxel size and the true spot sigmas in nm.

A detection matches a true spot one-to-one (:func:`analysis.measure.matching.match_points`)
within 2 pixels laterally and 1.5 planes axially (an ellipsoid).  sim-fish puts spots on the
first and last planes too (at whole planes), and the "pure noise" case has no spot at all:
every detection there is false.  The "flicker" cases are the medium case with each plane's
brightness multiplied by ``1 + f * N(0, 1)`` (laser power or detector gain changing between
planes).

Then stacks whose lateral PSF is not Gaussian (:func:`analysis.sim.optics.render_psf_spots`,
the PSFs of part l of ``validate_real.py``: an Airy pattern, NA 1.4 at 520 nm, and a Moffat
profile, beta 2.5, FWHM 0.25 um, in every plane, times an axial Gaussian of SD 0.3 um): 16
planes of 256 x 256 pixels, 65 nm pixels and 150 nm planes, 20 ("sparse") or 150 ("medium")
spots at peak SNR 10, 50 and 200 on 100 photons of background with shot noise, 2 stacks per
case; big-fish is given the Gaussian sigmas of the same FWHM (lateral) and 0.3 um (axial).
A detection matches within 2 pixels laterally and 0.45 um axially (1.5 planes of 300 nm,
3 of 150 nm).  Last, stacks of laterally elongated spots (an astigmatic PSF: elliptical
Gaussians of minor SD 91 nm and aspect 1.3 or 1.6 in every plane, one random direction per
stack, times the same axial Gaussian), 100 spots in 16 planes of 320 x 320 pixels at peak SNR
20 and 100, 2 stacks each; big-fish is given the geometric-mean lateral sigma.  And stacks of
the first cases smoothed after imaging (:data:`SMOOTHED`: a Gaussian of 0.4-0.6 px in the
planes or 0.5 px in 3-D, saved again as 16-bit integers), as denoising, deconvolution or
resampling leave them.

Usage::

    python benchmarks/validate_stacks.py      # ~4 min on one core

Writes ``benchmarks/results/validate_stacks.csv`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.measure.matching import match_points
from analysis.measure.puncta import detect_puncta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_real import RESULTS, fmt, md_table, prf, timed  # noqa: E402

PX_NM, DZ_NM = 100.0, 300.0
SHAPE = (16, 256, 256)
MATCH = np.array([1.5, 2.0, 2.0])  # planes, pixels, pixels
#: (name, spots per stack, peak amplitude, background, lateral sigma nm, axial sigma nm, flicker)
CASES: list[tuple[str, int, float, float, float, float, float]] = [
    ("sparse bright", 20, 5000, 300, 150, 350, 0.0),
    ("medium", 150, 300, 300, 150, 350, 0.0),
    ("medium faint", 150, 115, 300, 150, 350, 0.0),
    ("crowded", 800, 1000, 300, 150, 350, 0.0),
    ("medium wide", 150, 300, 300, 250, 600, 0.0),
    ("pure noise", 0, 0, 300, 150, 350, 0.0),
    ("medium, flicker 5 %", 150, 300, 300, 150, 350, 0.05),
    ("medium, flicker 15 %", 150, 300, 300, 150, 350, 0.15),
]


#: Stacks with the non-Gaussian lateral PSFs: pixel and plane size (nm), shape, axial SD (um),
#: background (photons); (name, PSF, lateral Gaussian sigma of the same FWHM in nm) per PSF.
PSF_PX_NM, PSF_DZ_NM, PSF_SHAPE, PSF_AXIAL_UM, PSF_BACKGROUND = 65.0, 150.0, (16, 256, 256), 0.3, 100.0
PSF_KINDS = [("Airy", "airy", 1000 * 0.51 * 0.52 / 1.4 / 2.355), ("Moffat", "moffat", 1000 * 0.25 / 2.355)]
#: Axial match radius (nm): 1.5 planes of the sim-fish stacks.
MATCH_AXIAL_NM = 1.5 * DZ_NM


def ours(image: np.ndarray, sigma_nm: tuple[float, float], px_nm: float = PX_NM,
         dz_nm: float = DZ_NM) -> np.ndarray:
    """Our detector with its defaults; (n, 3) z, y, x in planes and pixels."""
    return detect_puncta(image, px_nm / 1000, z_step_um=dz_nm / 1000)[["z", "y", "x"]].to_numpy(float).reshape(-1, 3)


def bigfish(image: np.ndarray, sigma_nm: tuple[float, float], px_nm: float = PX_NM,
            dz_nm: float = DZ_NM) -> np.ndarray:
    """big-fish ``detect_spots`` (automatic threshold) given the true sigmas; (n, 3)."""
    from bigfish.detection import detect_spots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spots = detect_spots(np.asarray(image, np.float64), threshold=None, voxel_size=(dz_nm, px_nm, px_nm),
                             spot_radius=(sigma_nm[1], sigma_nm[0], sigma_nm[0]))
    return np.asarray(spots, float).reshape(-1, 3)


#: Stacks of elongated spots: minor lateral SD (um), spots per stack, lateral shape.
ELLIPSE_SIGMA_UM, ELLIPSE_SPOTS, ELLIPSE_SHAPE = 0.091, 100, (16, 320, 320)


def elliptical_stacks(aspect: float, snr: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two stacks of :data:`ELLIPSE_SPOTS` laterally elongated spots (an astigmatic PSF: minor
    SD :data:`ELLIPSE_SIGMA_UM`, major ``aspect`` x that, one random direction per stack; axial
    SD ``PSF_AXIAL_UM``) at peak SNR ``snr`` and their true (z, y, x)."""
    from analysis.sim.optics import render_elliptical_spots

    out = []
    for i in range(2):
        rng = np.random.default_rng([seed, 14, int(aspect * 100), int(snr), i])
        nz, n = ELLIPSE_SHAPE[0], ELLIPSE_SHAPE[1]
        truth = np.column_stack([rng.uniform(0, nz - 1, ELLIPSE_SPOTS), rng.uniform(8, n - 9, (ELLIPSE_SPOTS, 2))])
        img = render_elliptical_spots(rng, ELLIPSE_SHAPE, PSF_PX_NM / 1000, truth, snr * np.sqrt(PSF_BACKGROUND),
                                      PSF_BACKGROUND, sigma_um=ELLIPSE_SIGMA_UM, aspect=aspect,
                                      angle_rad=float(rng.uniform(0, np.pi)), z_step_um=PSF_DZ_NM / 1000,
                                      axial_sigma_um=PSF_AXIAL_UM)
        out.append((img, truth))
    return out


def psf_stacks(kind: int, psf: str, n: int, snr: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two stacks of ``n`` spots with a non-Gaussian lateral PSF (:data:`PSF_KINDS`) at peak
    SNR ``snr`` (peak photons / sqrt(background)) and their true (z, y, x)."""
    from analysis.sim.optics import render_psf_spots

    out = []
    for i in range(2):
        rng = np.random.default_rng([seed, 13, kind, n, int(snr), i])
        truth = np.column_stack([rng.uniform(0, PSF_SHAPE[0] - 1, n), rng.uniform(5, PSF_SHAPE[1] - 6, (n, 2))])
        img = render_psf_spots(rng, PSF_SHAPE, PSF_PX_NM / 1000, truth, snr * np.sqrt(PSF_BACKGROUND),
                               PSF_BACKGROUND, psf, z_step_um=PSF_DZ_NM / 1000, axial_sigma_um=PSF_AXIAL_UM)
        out.append((img, truth))
    return out


def stacks(k: int, n: int, amp: float, bg: float, s: float, sz: float, flicker: float,
           seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three sim-fish stacks of one case and their true (z, y, x); global RNG seeded here."""
    import simfish

    np.random.seed([seed, 3, k])
    gen = simfish.simulate_images(3, 3, max(n, 1), image_shape=SHAPE, image_dtype=np.uint16,
                                  voxel_size=(DZ_NM, PX_NM, PX_NM), sigma=(sz, s, s), amplitude=max(amp, 1e-9),
                                  noise_level=bg)
    rng = np.random.default_rng([seed, 4, k])
    out = []
    for img, gt in gen:
        truth = np.asarray(gt, float)[:, :3] if n else np.zeros((0, 3))
        if flicker:
            f = 1.0 + flicker * rng.standard_normal(img.shape[0])
            img = np.clip(np.rint(img * f[:, None, None]), 0, 65535).astype(np.uint16)
        out.append((img, truth))
    return out


#: Stacks of :data:`CASES` smoothed after imaging (denoised, deconvolved, resampled): (name,
#: the case's name, Gaussian sigma per axis z, y, x in planes and pixels).  Mild smoothing in
#: the planes reads a lateral ``noise_correlation`` of 1.3-4.6; until session 43 it was bounded
#: in planes only, and a stack of pure noise smoothed at 0.5 px gave thousands of false puncta.
SMOOTHED: list[tuple[str, str, tuple[float, float, float]]] = [
    ("pure noise, smoothed 0.5 px in planes", "pure noise", (0.0, 0.5, 0.5)),
    ("pure noise, smoothed 0.5 px in 3-D", "pure noise", (0.5, 0.5, 0.5)),
    ("medium, smoothed 0.4 px in planes", "medium", (0.0, 0.4, 0.4)),
    ("medium, smoothed 0.5 px in planes", "medium", (0.0, 0.5, 0.5)),
    ("medium faint, smoothed 0.6 px in planes", "medium faint", (0.0, 0.6, 0.6)),
    ("medium, smoothed 0.5 px in 3-D", "medium", (0.5, 0.5, 0.5)),
]


def smoothed_stacks(case: str, smoothing: tuple[float, float, float], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The stacks of the case named ``case`` (:func:`stacks`) smoothed by a Gaussian of
    ``smoothing`` (planes, pixels, pixels) and saved again as 16-bit integers."""
    from scipy import ndimage as ndi

    k = [c[0] for c in CASES].index(case)
    return [(np.clip(np.rint(ndi.gaussian_filter(img.astype(np.float64), smoothing)), 0, 65535).astype(np.uint16),
             truth) for img, truth in stacks(k, *CASES[k][1:], seed)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cases = [(name, (s, sz), PX_NM, DZ_NM, lambda k=k, c=c: stacks(k, *c[1:], args.seed))
             for k, c in enumerate(CASES) for name, s, sz in [(c[0], c[4], c[5])]]
    cases += [(f"{label} PSF, {density}, SNR {snr:g}", (sigma, 1000 * PSF_AXIAL_UM), PSF_PX_NM, PSF_DZ_NM,
               lambda j=j, psf=psf, n=n, snr=snr: psf_stacks(j, psf, n, snr, args.seed))
              for j, (label, psf, sigma) in enumerate(PSF_KINDS) for density, n in (("sparse", 20), ("medium", 150))
              for snr in (10.0, 50.0, 200.0)]
    cases += [(f"elongated, aspect {aspect:g}, SNR {snr:g}",
               (1000 * ELLIPSE_SIGMA_UM * np.sqrt(aspect), 1000 * PSF_AXIAL_UM), PSF_PX_NM, PSF_DZ_NM,
               lambda aspect=aspect, snr=snr: elliptical_stacks(aspect, snr, args.seed))
              for aspect in (1.3, 1.6) for snr in (20.0, 100.0)]
    cases += [(name, (CASES[k][4], CASES[k][5]), PX_NM, DZ_NM,
               lambda base=base, sm=sm: smoothed_stacks(base, sm, args.seed))
              for name, base, sm in SMOOTHED for k in [[c[0] for c in CASES].index(base)]]
    rows = []
    for name, sigma_nm, px_nm, dz_nm, make in cases:
        scale = np.array([MATCH_AXIAL_NM / dz_nm, MATCH[1], MATCH[2]])
        for i, (img, truth) in enumerate(make()):
            for det_name, det in (("ours", ours), ("big-fish", bigfish)):
                pts, secs, note = timed(lambda im, _px, _s: det(im, sigma_nm, px_nm, dz_nm), img, px_nm / 1000,
                                        sigma_nm[0] / 1000)
                pts = pts.reshape(-1, 3)
                m = match_points(pts / scale, truth / scale, 1.0)
                border = (truth[:, 0] < 0.5) | (truth[:, 0] > img.shape[0] - 1.5)
                hit = np.zeros(len(truth), bool)
                hit[m.pairs[:, 1]] = True
                rows.append({"case": name, "image": i, "detector": det_name, "tp": m.tp, "fp": m.fp, "fn": m.fn,
                             "border_spots": int(border.sum()), "border_found": int(hit[border].sum()),
                             "seconds": secs, "note": note})
        print(f"  {name} done", flush=True)
    df = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "validate_stacks.csv"
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    g = df.groupby(["case", "detector"], sort=False).agg(
        tp=("tp", "sum"), fp=("fp", "sum"), fn=("fn", "sum"), border=("border_spots", "sum"),
        border_found=("border_found", "sum"), sec=("seconds", "median")).reset_index()
    g["precision"] = g.tp / (g.tp + g.fp).where(g.tp + g.fp > 0)
    g["recall"] = g.tp / (g.tp + g.fn).where(g.tp + g.fn > 0)
    g["f1"] = 2 * g.tp / (2 * g.tp + g.fp + g.fn).where(2 * g.tp + g.fp + g.fn > 0)
    out = []
    for case, sub in g.groupby("case", sort=False):
        row: dict[str, str] = {"case": case}
        for r in sub.itertuples():
            row[f"{r.detector} P / R / F1"] = prf(r)
            row[f"{r.detector} false"] = fmt(int(r.fp))
            row[f"{r.detector} first / last plane found"] = f"{int(r.border_found)} / {int(r.border)}"
        for r in sub.itertuples():
            row[f"{r.detector} s / stack"] = fmt(r.sec, 2)
        out.append(row)
    print(md_table(pd.DataFrame(out)))
    print(f"written {path}")


if __name__ == "__main__":
    main()
