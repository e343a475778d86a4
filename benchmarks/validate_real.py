"""Puncta, microglia and spines validated on data we did not make, beside peers (big-fish, plain pipelines).

For puncta (parts a-e) three detectors run on the same images:

* ``ours``: :func:`analysis.measure.puncta.detect_puncta` with its defaults; it is given only the
  pixel size.
* ``big-fish``: ``bigfish.detection.detect_spots`` (big-fish 0.6.2) with its automatic
  threshold (``threshold=None``: the elbow of the spot-count curve), ``voxel_size`` = the
  pixel size in nm and ``spot_radius`` = the spot's Gaussian sigma in nm (its interface
  needs one; big-fish uses radius / voxel size as the sigma of its LoG filter).  On
  simulated images it gets the true sigma.  It gets the image as float64 in the image's own
  units: its uint16 path rescales to [0, 1] and fails ("upper bound of 1") when a LoG
  response exceeds that range (saturated puncta of the culture fields); the float path is
  otherwise the same filter without the final rounding.
* ``plain LoG``: a Laplacian of Gaussian at the spot sigma, local maxima (window 2 x sigma + 1
  px) above median + 5 x 1.4826 x MAD of the LoG image (:func:`plain_log`).

Parts (``--parts a b ... m``; each writes ``benchmarks/results/validate_real_<part>.csv``
and prints a markdown table):

a. **Real culture images** (``../shared/realdata/culture_puncta``, fields 11 and 12, 0.325
   um): pre- and postsynaptic puncta per detector; label-free checks of
   :mod:`analysis.measure.labelfree` (MAP2 enrichment within 1 um, fraction in DAPI nuclei and in
   MAP2 somata, with the density in somata over the field's, pre/post
   pairing above chance with the pre channel shifted by 3, 4, 5 um in +-x and +-y, density
   per 10 um of dendrite), time per image; an overlay PNG per field
   (``benchmarks/results/overlay_field<N>.png``: crops on dendrites, on dark background and
   on a soma).  big-fish's spot radius is 300 nm (:data:`CULTURE_SPOT_SIGMA_UM`) and is also
   run at 200, 250 and 350 nm to show how its automatic threshold depends on it.
b. **sim-fish** (``simfish.simulate_images``, an independent simulator; seeded through
   ``np.random.seed`` since it draws from the global generator): sparse bright spots,
   medium and crowded fields, 3 spot sigmas (100, 150, 250 nm) at 100 nm pixels, 2-D, 16-bit
   and 8-bit.  Precision, recall, F1 with one-to-one matching within 2 px (0.2 um)
   (:func:`analysis.measure.puncta.match_points`), mean offset of the matches (sim-fish's truth is
   the integer pixel on which it centres the spot), time per image.
c. **Our phantoms** (:func:`analysis.sim.phantoms.render_synapse_field`) at every SNR level of
   :data:`analysis.sim.phantoms.SNR_LEVELS`, the same fields and scores as
   ``benchmarks/validate_puncta.py`` (its ``summarise``), for the three detectors.
d. **Pure noise** of seven kinds at 0.1 and 0.3 um pixels (:func:`noise_image`; the last two
   with stripes: a camera's column and row offsets, a scanner's line-to-line gain): false
   puncta per 1,000 um^2 (target <= 1).
e. **Speed**: median detection time per image at 256, 512 and 1024 px squares (sim-fish
   images) and the ratio ours / big-fish.
f. **Real microglia** (``../shared/realdata/microglia_iba1_embl``, three 8-bit Iba1 fields with
   hand-corrected masks): :func:`analysis.measure.microglia.segment_microglia` beside plain triangle
   and Li threshold pipelines (``benchmarks/validate_microglia_real.py``): count P/R/F1 at IoU
   >= 0.5, skeleton length, branch point and junction rank correlation with the source tool's
   table, segmentation time.
g. **Real two-photon spines** (``../shared/realdata/spines_2p``, 505 frames with hand-marked
   spine heads, pixel size ~0.04 um): :func:`analysis.measure.spines.detect_spines` beside a
   plain multi-scale LoG (:func:`plain_log_spines`): precision, recall, F1 of one-to-one
   matches within 10 px, for all, wide-field, zoomed and held-out frames, CPU time per frame.
h. **Real microglia at other pixel sizes**: the fields of part f resampled to ~1.0, 0.5, 0.3 and
   0.19 um pixels (hand masks by nearest neighbour), count P/R/F1 of ours and the triangle
   pipeline: parameters in physical units give the same cells at every sampling.
i. **Spine sessions, the same dendrites or not**: the correlation test of
   :func:`analysis.measure.spines.track_spines` on simulated and real pairs that are and are not
   of one position.
j. **Spines at coarser pixels**: the real frames of part g (every 4th held-out frame) and
   simulated sessions with known heads, binned 2, 3 and 4x (pixels summed: a scan or camera
   with larger pixels), detected at the matching pixel size; P/R/F1 in the original pixels.
k. **Puncta in processed images**: pure noise, sim-fish (medium and crowded) and our phantoms
   smoothed (Gaussian 0.5-1 px), median-filtered, interpolated 2x or deconvolved (a Wiener
   filter, as a microscope's processing may leave an image; unregularised Richardson-Lucy)
   (:data:`PROCESSING`), as software may leave an image before it reaches us: false puncta
   per 1,000 um^2 of noise, F1 with the truth, and the noise correlation and tie ratio our
   detector measures.
l. **Puncta with PSFs that are not Gaussian**: point-like spots with an Airy pattern (NA 1.4,
   520 nm: the diffraction of an ideal lens, with its rings) or a Moffat profile (beta 2.5,
   FWHM 0.25 um: heavier wings, as aberrations give), pixel-integrated
   (:func:`analysis.sim.optics.render_psf_spots`), sparse and medium densities at three
   peak SNRs, 0.065 um pixels (a 100x objective, 6.5 um camera pixels): P/R/F1 of the three
   detectors (big-fish and the LoG given the profile's FWHM / 2.355 as the sigma).
m. **Elongated puncta**: elliptical Gaussian spots (minor SD 0.091 um, aspect 1-2, one
   direction per field: an astigmatic PSF; :func:`analysis.sim.optics.render_elliptical_spots`),
   100 per 384 x 384 field at 0.065 um, three peak SNRs: P/R/F1 of the three detectors (big-fish
   and the LoG given the geometric-mean sigma), matched within 2.5 px, and how many fields our
   detector read as elongated (``attrs["elongated_puncta"]``).
n. **Puncta in JPEG images**: sim-fish's sparse bright, medium (150 nm) and crowded (100 nm)
   cases, our default phantoms and pure 8-bit noise, stretched to 8 bits and saved as JPEG at
   quality 98, 95, 90 and 75 (:func:`jpeg`), as web tools and some exports leave an image:
   P/R/F1 (false puncta per 1,000 um^2 for the noise) of the three detectors, and the block
   ratio and quantisation lattice (:func:`analysis.measure.noise.jpeg_block_ratio`,
   :func:`analysis.measure.noise.jpeg_lattice`) our detector measured.
o. **Puncta of varied sizes in one field**: sim-fish fields whose spot sigma is drawn per spot
   (its ``random_sigma``: normal, SD 25-40 % of the mean sigma), as puncta of one stain differ
   in size: P/R/F1 of the three detectors (big-fish and the LoG given the mean sigma).
p. **Puncta in striped images**: sim-fish medium (150 nm), our default phantoms and pure
   16-bit noise with their columns offset (0.25-1.5 SDs of the pixel noise: a camera's column
   pattern) or their rows' gain jittered (3 %, 10 %: a scanner's line noise) (:data:`STRIPES`):
   F1 (false puncta per 1,000 um^2 for the noise) of the three detectors, the stripe ratio our
   detector measured and whether it removed the offsets (:mod:`analysis.measure.stripes`).
q. **Puncta beside a sharp edge of the tissue**: the same sim-fish and phantom fields with glass
   beyond a straight edge or in a round hole (a tear), the edge blurred by the PSF or softer
   (:data:`EDGES`): P/R/F1 against the puncta on the tissue side, of the three detectors and of
   ours with ``repair_tissue_edges=False`` (the repair of step 11 is on by default), and whether
   ours raised the glass.

``benchmarks/validation_real.md`` (committed) is regenerated from a full run (all parts, not
``--quick``); other runs write ``benchmarks/results/validation_real.md``.

Usage::

    python benchmarks/validate_real.py                 # everything (make validate)
    python benchmarks/validate_real.py --quick --parts b d
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from analysis.measure.labelfree import (
    dendrite_length_um,
    dendrite_mask,
    density_per_10um,
    enrichment_near,
    fraction_inside,
    nucleus_mask,
    pairing_above_chance,
    soma_mask,
)
from analysis.measure.puncta import detect_puncta, match_points
from analysis.measure.matching import resolvable_count

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CULTURE = (ROOT / ".." / "shared" / "realdata" / "culture_puncta").resolve()
CULTURE_PX_UM = 0.325
#: Spot sigma given to big-fish and the plain LoG on the culture fields.  0.325 um is a
#: 6.5 um camera pixel behind a 20x objective (widefield, NA ~0.75): in-focus PSF sigma
#: ~0.16 um (0.21 lambda / NA), a synapse adds ~0.1 um, defocus within the ~1 um depth of
#: field and the pixel (0.325 / sqrt(12) = 0.094 um) broaden it to ~0.25-0.35 um.  Gaussian
#: fits to the brightest isolated postEx puncta give a median of 0.27-0.34 um.
CULTURE_SPOT_SIGMA_UM = 0.30
BIGFISH_RADII_SENSITIVITY_UM = (0.20, 0.25, 0.35)
#: Spot sigma for big-fish and the LoG on the pure-noise images, per pixel size: a confocal
#: punctum (0.15 um) at 0.1 um pixels, the widefield one above at 0.3 um pixels.
NOISE_SPOT_SIGMA_UM = {0.1: 0.15, 0.3: 0.30}
#: Apparent sigma of the puncta of our phantoms (0.12-0.16 um: analysis.sim.phantoms).
PHANTOM_SPOT_SIGMA_UM = 0.14
SIMFISH_PX_UM = 0.1
SIMFISH_MATCH_PX = 2.0
MAD_K = 5.0

Detector = Callable[[np.ndarray, float, float], np.ndarray]


# --------------------------------------------------------------------------- detectors


def ours(image: np.ndarray, pixel_size_um: float, spot_sigma_um: float) -> np.ndarray:
    """Our detector with its defaults; it ignores ``spot_sigma_um`` (the others need it)."""
    return detect_puncta(image, pixel_size_um)[["y", "x"]].to_numpy(float).reshape(-1, 2)


def bigfish(image: np.ndarray, pixel_size_um: float, spot_sigma_um: float) -> np.ndarray:
    """big-fish ``detect_spots`` with its automatic (elbow) threshold; (n, 2) y, x in pixels."""
    from bigfish.detection import detect_spots

    px_nm, r_nm = 1000.0 * pixel_size_um, 1000.0 * spot_sigma_um
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spots = detect_spots(np.asarray(image, np.float64), threshold=None,
                             voxel_size=(px_nm, px_nm), spot_radius=(r_nm, r_nm))
    return np.asarray(spots, float).reshape(-1, 2)


def plain_log(image: np.ndarray, pixel_size_um: float, spot_sigma_um: float, k: float = MAD_K) -> np.ndarray:
    """Laplacian of Gaussian at the spot sigma, local maxima above median + k * 1.4826 * MAD."""
    s = spot_sigma_um / pixel_size_um
    resp = -ndi.gaussian_laplace(np.asarray(image, float), s)
    med = np.median(resp)
    thr = med + k * 1.4826 * np.median(np.abs(resp - med))
    size = 2 * max(1, int(round(s))) + 1
    peaks = (resp == ndi.maximum_filter(resp, size=size, mode="nearest")) & (resp > thr)
    return np.argwhere(peaks).astype(float)


DETECTORS: dict[str, Detector] = {"ours": ours, "big-fish": bigfish, "plain LoG": plain_log}


def detected(name: str, detector: Detector, image: np.ndarray, px: float, sigma_um: float,
             keys: tuple[str, ...]) -> tuple[np.ndarray, str, dict[str, float]]:
    """Points and error note of one detector, and for ours the figures ``keys`` of its table's
    ``attrs`` (NaN for the peers, and for a figure ours does not record)."""
    if name != "ours":
        pts, _, note = timed(detector, image, px, sigma_um)
        return pts, note, dict.fromkeys(keys, np.nan)
    found = detect_puncta(image, px)
    return found[["y", "x"]].to_numpy(float), "", {k: float(found.attrs.get(k, np.nan)) for k in keys}


def timed(detector: Detector, image: np.ndarray, px: float, sigma_um: float) -> tuple[np.ndarray, float, str]:
    """Points, seconds and an error note ('' when it ran)."""
    t0 = time.perf_counter()
    try:
        pts = detector(image, px, sigma_um)
        note = ""
    except Exception as exc:  # a peer failing on an image is a result, not a crash
        pts, note = np.zeros((0, 2)), f"{type(exc).__name__}: {exc}"[:120]
    return pts, time.perf_counter() - t0, note


# --------------------------------------------------------------------------- output


def fmt(x: object, digits: int = 2) -> str:
    """A table cell: integers as they are, floats to ``digits`` decimals, NaN as a dash."""
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return f"{float(x):.{digits}f}"


def prf(r: object) -> str:
    """Precision / recall / F1 cell of a row with those attributes (F1 in bold)."""
    return f"{fmt(r.precision)} / {fmt(r.recall)} / **{fmt(r.f1)}**"  # type: ignore[attr-defined]


def failures(df: pd.DataFrame, what: str) -> str:
    """"; failures: ..." for the rows of ``df`` whose detector failed (a non-empty ``note``),
    each named by its detector and its ``what`` column; "" when none did."""
    failed = df[df.note != ""]
    if not len(failed):
        return ""
    return "; failures: " + "; ".join(sorted({f"{r.detector} on {getattr(r, what)} ({r.note})"
                                              for r in failed.itertuples()}))


def md_table(df: pd.DataFrame) -> str:
    """A pipe table of already formatted cells."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines)


def save(df: pd.DataFrame, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"validate_real_{name}.csv"
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- a. culture


def _crops(dend: np.ndarray, nuc: np.ndarray, map2: np.ndarray, size: int) -> dict[str, tuple[int, int]]:
    """Top-left corners of three crops: most dendrite, darkest background, a soma."""
    h, w = dend.shape
    half = size // 2
    mean = lambda a: ndi.uniform_filter(a.astype(float), size, mode="constant")  # noqa: E731
    valid = np.zeros_like(dend)
    valid[half:h - half, half:w - half] = True
    d_frac, n_frac, m_mean = mean(dend), mean(nuc), mean(map2)
    score_d = np.where(valid & (n_frac == 0), d_frac, -1)
    cy, cx = np.unravel_index(np.argmax(score_d), dend.shape)
    score_b = np.where(valid & (n_frac == 0), d_frac + m_mean / m_mean.max(), np.inf)
    by, bx = np.unravel_index(np.argmin(score_b), dend.shape)
    lab, n = ndi.label(nuc)
    if n:
        big = 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
        sy, sx = (int(round(c)) for c in ndi.center_of_mass(lab == big))
    else:
        sy, sx = np.unravel_index(np.argmax(m_mean), dend.shape)
    clip = lambda c, n: int(min(max(c - half, 0), n - size))  # noqa: E731
    return {"on dendrites": (clip(cy, h), clip(cx, w)), "dark background": (clip(by, h), clip(bx, w)),
            "soma": (clip(sy, h), clip(sx, w))}


def overlay(path: Path, post: np.ndarray, dend: np.ndarray, nuc: np.ndarray, map2: np.ndarray,
            points: dict[str, np.ndarray], title: str, size: int = 150) -> None:
    """One row per crop: the postsynaptic image with the masks' outlines, then each detector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crops = _crops(dend, nuc, map2, size)
    cols = ["postEx + MAP2 (green) / DAPI (blue) masks"] + list(points)
    fig, axes = plt.subplots(len(crops), len(cols), figsize=(4.2 * len(cols), 4.3 * len(crops)), squeeze=False)
    colours = {"ours": "#ff3030", "big-fish": "#00e5ff", "plain LoG": "#ffd400"}
    for r, (name, (y0, x0)) in enumerate(crops.items()):
        sub = post[y0:y0 + size, x0:x0 + size].astype(float)
        lo, hi = np.percentile(sub, [1, 99.7])
        for c, col in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(sub, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if c == 0:
                ax.contour(dend[y0:y0 + size, x0:x0 + size], [0.5], colors="lime", linewidths=0.7)
                if nuc[y0:y0 + size, x0:x0 + size].any():
                    ax.contour(nuc[y0:y0 + size, x0:x0 + size], [0.5], colors="#4080ff", linewidths=0.9)
                ax.set_ylabel(f"{name}\n(y {y0}, x {x0})")
            else:
                p = points[col]
                inside = (p[:, 0] >= y0 - 0.5) & (p[:, 0] < y0 + size - 0.5) & (p[:, 1] >= x0 - 0.5) & (p[:, 1] < x0 + size - 0.5)
                q = p[inside]
                ax.scatter(q[:, 1] - x0, q[:, 0] - y0, s=14, facecolors="none", edgecolors=colours.get(col, "r"), linewidths=0.6)
                ax.set_title(f"{col}: {len(q)} in crop", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-0.5, size - 0.5)
            ax.set_ylim(size - 0.5, -0.5)
        axes[0, 0].set_title(cols[0], fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def part_a(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    import tifffile

    if not CULTURE.is_dir():
        return pd.DataFrame(), f"skipped: {CULTURE} not found"
    px = CULTURE_PX_UM
    fields = ["field11"] if args.quick else ["field11", "field12"]
    runs: list[tuple[str, Detector, float]] = [(n, d, CULTURE_SPOT_SIGMA_UM) for n, d in DETECTORS.items()]
    if not args.quick:
        runs += [(f"big-fish r={1000 * r:.0f} nm", bigfish, r) for r in BIGFISH_RADII_SENSITIVITY_UM]
    rows = []
    for field in fields:
        read = lambda ch: tifffile.imread(CULTURE / f"{field}_{ch}.tif")  # noqa: E731
        post, pre, map2, dapi = read("postEx"), read("preEx"), read("MAP2"), read("DAPI")
        dend, nuc, soma = dendrite_mask(map2, px), nucleus_mask(dapi, px), soma_mask(map2, px)
        length = dendrite_length_um(dend, px)
        area = post.size * px**2
        shown = {}
        for name, det, sigma in runs:
            pts, secs, notes = {}, {}, []
            for ch, img in (("post", post), ("pre", pre)):
                pts[ch], secs[ch], note = timed(det, img, px, sigma)
                notes.append(note)
            pair = pairing_above_chance(pts["pre"], pts["post"], px, shape=post.shape)
            for ch in ("post", "pre"):
                p = pts[ch]
                rows.append({
                    "field": field, "detector": name, "channel": ch, "spot_sigma_um": sigma if name != "ours" else np.nan,
                    "n_puncta": len(p), "per_100um2": 100 * len(p) / area,
                    "map2_enrichment_1um": enrichment_near(p, dend, px, 1.0),
                    "fraction_in_nuclei": fraction_inside(p, nuc),
                    "fraction_in_somata": fraction_inside(p, soma),
                    "density_per_10um": density_per_10um(p, dend, px, 1.0),
                    "pairing_observed": pair["observed"] if ch == "post" else np.nan,
                    "pairing_chance": pair["chance"] if ch == "post" else np.nan,
                    "pairing_above_chance": pair["above_chance"] if ch == "post" else np.nan,
                    "seconds": secs[ch], "dendrite_length_um": length, "dendrite_area_fraction": dend.mean(),
                    "nucleus_area_fraction": nuc.mean(), "soma_area_fraction": soma.mean(),
                    "note": notes[0 if ch == "post" else 1],
                })
            if name in DETECTORS:
                shown[name] = pts["post"]
            print(f"  a {field} {name}: post {len(pts['post'])}, pre {len(pts['pre'])}, "
                  f"{secs['post']:.1f} + {secs['pre']:.1f} s", flush=True)
        overlay(RESULTS / f"overlay_{field}.png", post, dend, nuc, map2, shown,
                f"{field} postEx, 0.325 um pixels: 150 x 150 px crops (48.75 um); spot sigma {CULTURE_SPOT_SIGMA_UM} um for big-fish and LoG")
    df = pd.DataFrame(rows)
    save(df, "a_culture")
    post_rows = df[df.channel == "post"].set_index(["field", "detector"])
    pre_rows = df[df.channel == "pre"].set_index(["field", "detector"])
    table = pd.DataFrame({
        "field": [f for f, _ in post_rows.index], "detector": [d for _, d in post_rows.index],
        "post / pre puncta": [f"{fmt(a)} / {fmt(b)}" for a, b in zip(post_rows.n_puncta, pre_rows.n_puncta)],
        "MAP2 enrichment (post / pre)": [f"{fmt(a)} / {fmt(b)}" for a, b in zip(post_rows.map2_enrichment_1um, pre_rows.map2_enrichment_1um)],
        "in nuclei (post / pre)": [f"{fmt(a, 3)} / {fmt(b, 3)}" for a, b in zip(post_rows.fraction_in_nuclei, pre_rows.fraction_in_nuclei)],
        "in somata (post / pre)": [f"{fmt(a, 3)} / {fmt(b, 3)}" for a, b in zip(post_rows.fraction_in_somata, pre_rows.fraction_in_somata)],
        "post density in somata / field": [fmt(a / r, 2) for a, r in zip(post_rows.fraction_in_somata, post_rows.soma_area_fraction)],
        "pairing obs / chance": [f"{fmt(a)} / {fmt(b)}" for a, b in zip(post_rows.pairing_observed, post_rows.pairing_chance)],
        "pairing above chance": [fmt(v) for v in post_rows.pairing_above_chance],
        "post per 10 um dendrite": [fmt(v, 1) for v in post_rows.density_per_10um],
        "s / image": [fmt((a + b) / 2, 2) for a, b in zip(post_rows.seconds, pre_rows.seconds)],
    })
    masks = df.drop_duplicates("field")
    note = "; ".join(f"{r.field}: dendrite mask {100 * r.dendrite_area_fraction:.1f} % of the field, skeleton "
                     f"{r.dendrite_length_um:,.0f} um; nuclei {100 * r.nucleus_area_fraction:.1f} %; somata "
                     f"{100 * r.soma_area_fraction:.1f} %" for r in masks.itertuples())
    note += (".  In somata: the fraction of puncta inside the soma mask (`labelfree.soma_mask`: MAP2 opened by a "
             "3 um disk, Otsu's threshold, objects >= 80 um^2); density in somata / field: that fraction over the "
             "mask's share of the field (1: as many per um^2 in the cell bodies as in the field as a whole)")
    failed = df[df.note != ""]
    if len(failed):
        note += "; failures: " + "; ".join(f"{r.field} {r.detector} {r.channel}: {r.note}" for r in failed.itertuples())
    return table, note


# --------------------------------------------------------------------------- b. sim-fish

#: (name, spots per 256 x 256 image, peak amplitude, background level, sigma nm, dtype)
SIMFISH_CASES: list[tuple[str, int, float, float, float, str]] = [
    ("sparse bright", 20, 5000, 300, 150, "uint16"),
    ("medium", 150, 300, 300, 100, "uint16"),
    ("medium", 150, 300, 300, 150, "uint16"),
    ("medium", 150, 300, 300, 250, "uint16"),
    ("medium faint", 150, 115, 300, 100, "uint16"),
    ("medium faint", 150, 115, 300, 150, "uint16"),
    ("medium faint", 150, 115, 300, 250, "uint16"),
    ("crowded", 800, 1000, 300, 100, "uint16"),
    ("crowded", 800, 1000, 300, 150, "uint16"),
    ("crowded", 800, 1000, 300, 250, "uint16"),
    ("crowded faint", 800, 230, 300, 150, "uint16"),
    ("8-bit", 150, 60, 10, 150, "uint8"),
    ("8-bit faint", 150, 20, 10, 150, "uint8"),
    ("8-bit saturated", 50, 400, 20, 150, "uint8"),
]


def simfish_images(seed: list[int], n_images: int, n_spots: int, amplitude: float, noise: float, sigma_nm: float,
                   dtype: str, shape: tuple[int, int] = (256, 256)) -> list[tuple[np.ndarray, np.ndarray]]:
    """sim-fish images and their true (y, x) in pixels (global RNG seeded here)."""
    import simfish

    np.random.seed(seed)
    px_nm = 1000 * SIMFISH_PX_UM
    gen = simfish.simulate_images(n_images, 2, n_spots, image_shape=shape, image_dtype=np.dtype(dtype).type,
                                  voxel_size=(px_nm, px_nm), sigma=(sigma_nm, sigma_nm), amplitude=amplitude,
                                  noise_level=noise)
    return [(img, np.asarray(gt, float)[:, :2]) for img, gt in gen]


def part_b(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    n_images = 1 if args.quick else 4
    rows = []
    for k, (name, n, amp, noise, sig, dtype) in enumerate(SIMFISH_CASES):
        if args.quick and k % 3:
            continue
        images = simfish_images([args.seed, 2, k], n_images, n, amp, noise, sig, dtype)
        bg_sd = np.sqrt(noise + (0.05 * noise) ** 2)  # Poisson of a level jittered by 5 % per pixel
        for i, (img, truth) in enumerate(images):
            # what a detector of maxima can find: one spot per group closer than 2 sigma
            resolvable = resolvable_count(truth, 2.0 * sig / 1000 / SIMFISH_PX_UM)
            for det_name, det in DETECTORS.items():
                pts, secs, note = timed(det, img, SIMFISH_PX_UM, sig / 1000)
                m = match_points(pts, truth, SIMFISH_MATCH_PX)
                off = pts[m.pairs[:, 0]] - truth[m.pairs[:, 1]] if m.tp else np.full((1, 2), np.nan)
                rows.append({"case": name, "sigma_nm": sig, "dtype": dtype, "n_spots": n, "amplitude": amp,
                             "background": noise, "peak_snr": amp / bg_sd, "image": i, "detector": det_name,
                             "tp": m.tp, "fp": m.fp, "fn": m.fn, "resolvable": resolvable, "mean_dy_px": off[:, 0].mean(),
                             "mean_dx_px": off[:, 1].mean(), "seconds": secs, "note": note})
        print(f"  b {name} sigma {sig:.0f} nm {dtype} done", flush=True)
    df = pd.DataFrame(rows)
    save(df, "b_simfish")
    keys = ["case", "sigma_nm", "dtype", "n_spots", "peak_snr"]
    g = df.groupby(keys + ["detector"], sort=False).agg(tp=("tp", "sum"), fp=("fp", "sum"), fn=("fn", "sum"),
                                                         resolvable=("resolvable", "sum"),
                                                         dy=("mean_dy_px", "mean"), dx=("mean_dx_px", "mean"),
                                                         sec=("seconds", "median")).reset_index()
    g["precision"] = g.tp / (g.tp + g.fp).where(g.tp + g.fp > 0)
    g["recall"] = g.tp / (g.tp + g.fn)
    g["f1"] = 2 * g.tp / (2 * g.tp + g.fp + g.fn)
    out = []
    for key, sub in g.groupby(keys, sort=False):
        row = dict(zip(["case", "sigma (nm)", "dtype", "spots / image", "peak SNR"],
                       [key[0], fmt(int(key[1])), key[2], fmt(int(key[3])), fmt(key[4], 0)]))
        for r in sub.itertuples():
            row[f"{r.detector} P / R / F1"] = prf(r)
        ceiling = sub.resolvable.iloc[0] / (sub.tp.iloc[0] + sub.fn.iloc[0])
        row["F1 ceiling of maxima"] = fmt(2 * ceiling / (1 + ceiling), 2)
        for r in sub.itertuples():
            row[f"{r.detector} ms"] = fmt(1000 * r.sec, 0)
        out.append(row)
    offs = g[g.detector == "ours"]
    note = (f"{n_images} images of 256 x 256 px per case at 0.1 um; matched within {SIMFISH_MATCH_PX:g} px; peak SNR = "
            f"amplitude / background SD; F1 ceiling of maxima = the F1 of a perfect detector that finds one spot per "
            f"group of spots closer than 2 sigma (the Sparrow limit of two equal Gaussians: closer, they make one "
            f"maximum; `analysis.measure.matching.resolvable_count`), exceeded only by fitting several spots to one "
            f"blob (ours fits two to a blob that two explain significantly better). "
            f"Mean offset of ours' matches (detected - true, px): dy "
            f"{offs.dy.mean():+.3f}, dx {offs.dx.mean():+.3f} (range over cases {offs.dy.min():+.2f}..{offs.dy.max():+.2f}, "
            f"{offs.dx.min():+.2f}..{offs.dx.max():+.2f})")
    return pd.DataFrame(out), note + failures(df, "case")


# --------------------------------------------------------------------------- c. phantoms


def part_c(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    from validate_puncta import MATCH_UM, summarise

    from analysis.sim.phantoms import SNR_LEVELS, render_synapse_field
    from analysis.measure.area import analysed_area_mask, synapse_density

    px = 0.1
    n_fields = 2 if args.quick else args.fields
    tables = []
    for k, (level, snr) in enumerate(SNR_LEVELS.items()):
        per_det: dict[str, list[dict]] = {d: [] for d in DETECTORS}
        for i in range(n_fields):
            # the fields of benchmarks/validate_puncta.py with the same --seed
            field = render_synapse_field(np.random.default_rng([args.seed, k, i]), shape=(256, 256), pixel_size_um=px, snr=snr)
            mask = analysed_area_mask(field.image, px)
            truth = field.puncta[["y", "x"]].to_numpy()
            true_density = 100.0 * len(truth) / field.analysed_area_um2
            for name, det in DETECTORS.items():
                pts, secs, _ = timed(det, field.image, px, PHANTOM_SPOT_SIGMA_UM)
                m = match_points(pts * px, truth * px, MATCH_UM)
                dens = synapse_density(pd.DataFrame(pts, columns=["y", "x"]), mask, px)
                per_det[name].append({"tp": m.tp, "fp": m.fp, "fn": m.fn, "loc_errors_um": m.distances,
                                      "count_bias": dens["puncta_density_per_100um2"] / true_density - 1.0,
                                      "area_bias": dens["analysed_area_um2"] / field.analysed_area_um2 - 1.0,
                                      "seconds": secs})
        for name, rows in per_det.items():
            tables.append({"detector": name, **summarise(level, snr, rows)})
        print(f"  c {level} done", flush=True)
    df = pd.DataFrame(tables)
    save(df, "c_phantoms")
    out = []
    for level, sub in df.groupby("snr_level", sort=False):
        row = {"SNR level": f"{level} ({fmt(sub.snr.iloc[0], 1)})"}
        for r in sub.itertuples():
            row[f"{r.detector} P / R / F1"] = prf(r)
        for r in sub.itertuples():
            row[f"{r.detector} count bias"] = f"{r.count_bias_pct_mean:+.1f} %"
        out.append(row)
    note = (f"{n_fields} fields of 256 x 256 px at 0.1 um per level (seed {args.seed}, the fields of "
            f"benchmarks/validate_puncta.py); matched within {MATCH_UM} um; big-fish and LoG get sigma "
            f"{PHANTOM_SPOT_SIGMA_UM} um; count bias in our analysed-area mask")
    return pd.DataFrame(out), note


# --------------------------------------------------------------------------- d. pure noise


def noise_image(kind: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """One pure-noise image (no puncta) of the given kind."""
    ny, nx = shape
    if kind == "Poisson-Gaussian 16-bit":  # camera: offset 100 ADU, 2 ADU/e-, read noise 3 ADU, 20 e-
        adu = 100 + 2.0 * rng.poisson(20.0, shape) + rng.normal(0, 3.0, shape)
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    if kind == "8-bit low counts":  # 2 e- per pixel, 4 ADU/e-, offset 2, quantised to 8 bits
        adu = 2 + 4.0 * rng.poisson(2.0, shape) + rng.normal(0, 1.5, shape)
        return np.clip(np.rint(adu), 0, 255).astype(np.uint8)
    if kind == "clipped at zero":  # offset-subtracted camera, 3 e-, read noise 4 ADU: ~40 % zeros
        adu = 2.0 * rng.poisson(3.0, shape) - 6.0 + rng.normal(0, 4.0, shape)
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    if kind == "PMT excess noise":  # 4 photons, gamma gain (shape 2: excess noise factor 1.5)
        n = rng.poisson(4.0, shape)
        adu = 10 + rng.gamma(2.0 * n, 25.0) + rng.normal(0, 2.0, shape)
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    if kind == "widefield haze":  # smooth bright gradient and a broad glow, shot noise
        yy, xx = np.mgrid[:ny, :nx] / max(ny, nx)
        lam = 200 + 1500 * xx + 2500 * np.exp(-((yy - 0.6) ** 2 + (xx - 0.4) ** 2) / (2 * 0.2**2))
        adu = 100 + 2.0 * rng.poisson(lam) + rng.normal(0, 3.0, shape)
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    if kind == "sCMOS column pattern":  # the 16-bit camera above; column offsets SD 4 ADU, rows 2 ADU
        adu = (100 + 2.0 * rng.poisson(20.0, shape) + rng.normal(0, 3.0, shape)
               + rng.normal(0, 4.0, (1, nx)) + rng.normal(0, 2.0, (ny, 1)))
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    if kind == "scanner line noise":  # the photomultiplier above, each line's gain jittered by 5 %
        n = rng.poisson(4.0, shape)
        adu = (10 + rng.gamma(2.0 * n, 25.0)) * (1 + 0.05 * rng.standard_normal((ny, 1))) + rng.normal(0, 2.0, shape)
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    raise ValueError(kind)


NOISE_KINDS = ("Poisson-Gaussian 16-bit", "8-bit low counts", "clipped at zero", "PMT excess noise", "widefield haze",
               "sCMOS column pattern", "scanner line noise")


def part_d(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    n_images, size = (1, 256) if args.quick else (3, 512)
    rows = []
    for k, kind in enumerate(NOISE_KINDS):
        for px, sigma in NOISE_SPOT_SIGMA_UM.items():
            for i in range(n_images):
                img = noise_image(kind, np.random.default_rng([args.seed, 4, k, i]), (size, size))
                area = img.size * px**2
                for name, det in DETECTORS.items():
                    pts, secs, note = timed(det, img, px, sigma)
                    rows.append({"kind": kind, "pixel_um": px, "image": i, "detector": name, "n_false": len(pts),
                                 "area_um2": area, "seconds": secs, "note": note})
        print(f"  d {kind} done", flush=True)
    df = pd.DataFrame(rows)
    save(df, "d_noise")
    g = df.groupby(["kind", "pixel_um", "detector"], sort=False).agg(n=("n_false", "sum"), area=("area_um2", "sum")).reset_index()
    g["per1000"] = 1000 * g.n / g.area
    out = []
    for (kind, px), sub in g.groupby(["kind", "pixel_um"], sort=False):
        row = {"noise": kind, "pixel (um)": fmt(px, 1)}
        for r in sub.itertuples():
            row[f"{r.detector}"] = f"{fmt(r.per1000, 2)} ({fmt(int(r.n))})"
        out.append(row)
    note = (f"false puncta per 1,000 um^2 (total count in brackets) over {n_images} images of {size} x {size} px per "
            f"kind and pixel size ({n_images * size**2 * 0.01:,.0f} um^2 at 0.1 um, {n_images * size**2 * 0.09:,.0f} um^2 "
            f"at 0.3 um); target <= 1; big-fish and LoG get sigma 0.15 um at 0.1 um pixels, 0.3 um at 0.3 um")
    return pd.DataFrame(out), note


# --------------------------------------------------------------------------- e. speed


def part_e(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    sizes, reps = ((256, 512), 1) if args.quick else ((256, 512, 1024), 3)
    rows = []
    for s in sizes:
        n_spots = int(150 * (s / 256) ** 2)
        images = simfish_images([args.seed, 5, s], reps, n_spots, 300, 300, 150, "uint16", shape=(s, s))
        for i, (img, _) in enumerate(images):
            for name, det in DETECTORS.items():
                pts, secs, _ = timed(det, img, SIMFISH_PX_UM, 0.15)
                rows.append({"size_px": s, "image": i, "detector": name, "n_spots": len(pts), "seconds": secs})
        print(f"  e {s} done", flush=True)
    df = pd.DataFrame(rows)
    save(df, "e_speed")
    med = df.groupby(["size_px", "detector"], sort=False).seconds.median().unstack()
    out = pd.DataFrame({"image (px)": [f"{s} x {s}" for s in med.index]})
    for name in DETECTORS:
        out[f"{name} (ms)"] = [fmt(1000 * v, 0) for v in med[name]]
    out["ours / big-fish"] = [fmt(v, 2) for v in med["ours"] / med["big-fish"]]
    note = (f"median of {reps} sim-fish images per size (150 spots per 256 x 256 px, sigma 150 nm, peak SNR 13), "
            f"one process, {os.cpu_count()} cores, wall time of the detection call alone")
    return out, note


# --------------------------------------------------------------------------- f. real microglia


def part_f(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    from validate_microglia_real import DATA as MICROGLIA
    from validate_microglia_real import evaluate_all

    if not MICROGLIA.is_dir():
        return pd.DataFrame(), f"skipped: {MICROGLIA} not found (../shared/realdata, see its README)"
    df = evaluate_all(MICROGLIA, repeat=1 if args.quick else 3)
    save(df, "f_microglia")
    names = {"ours": "ours", "triangle": "triangle + components", "li": "Li + components",
             "truth": "hand masks (our measurement)"}
    out = pd.DataFrame({
        "image": df["image"],
        "method": df["method"].map(names),
        "labels (28 cells)": [fmt(v, 1) if i == "mean" else fmt(int(v)) for i, v in zip(df["image"], df["n_labels"])],
        "P / R / F1 at IoU >= 0.5": [f"{fmt(p, 2)} / {fmt(r, 2)} / **{fmt(f, 3)}**"
                                     for p, r, f in zip(df["precision"], df["recall"], df["f1"])],
        "skeleton length Spearman": [fmt(v, 3) for v in df["skeleton_length_spearman"]],
        "branch points Spearman": [fmt(v, 3) for v in df["branch_points_spearman"]],
        "junctions Spearman": [fmt(v, 3) for v in df["junctions_spearman"]],
        "segmentation s / image": [fmt(v, 3) for v in df["seconds_seg"]],
    })
    mean = df[df["image"] == "mean"].set_index("method")
    ratio = mean.at["ours", "seconds_seg"] / mean.at["triangle", "seconds_seg_skel"]
    note = ("EMBL microglia-morphometry test fields pg6_t1-t3 (Iba1 maximum projections, 8-bit, 0.755 um, 28 "
            "hand-corrected cells each); a cell matches at IoU >= 0.5 (one-to-one); Spearman over matched cells "
            "against the source tool's table (SkeletonTotalLength, SkeletonNumBranchPoints): `branch_points` "
            "counts forks outside the soma (our convention), `skeleton_junctions` every junction of the cell's "
            "skeleton (Fiji AnalyzeSkeleton's); targets F1 >= 0.90, skeleton >= 0.85, branch points >= 0.7; "
            f"segmentation time ours / (triangle + skeletonisation) {ratio:.1f}x (target <= 2)")
    return out, note


# --------------------------------------------------------------------------- g. real spines

#: Head radii (um) the plain LoG peer looks for: spine heads are ~0.4-1 um across in two-photon
#: images of Thy1-GFP cortex.
SPINE_HEAD_RADII_UM = (0.2, 0.3, 0.4, 0.5)


def plain_log_spines(image: np.ndarray, pixel_size_um: float, k: float = MAD_K) -> np.ndarray:
    """The floor for spine heads: the scale-normalised LoG at the head radii
    (:data:`SPINE_HEAD_RADII_UM`, sigma = radius / sqrt 2), its maximum over the scales, local
    maxima (window of the smallest head) above median + k * 1.4826 * MAD of that response."""
    img = np.asarray(image, float)
    sigmas = [r / np.sqrt(2.0) / pixel_size_um for r in SPINE_HEAD_RADII_UM]
    resp = np.max([-(s**2) * ndi.gaussian_laplace(img, s) for s in sigmas], axis=0)
    med = np.median(resp)
    thr = med + k * 1.4826 * np.median(np.abs(resp - med))
    size = 2 * max(1, int(round(sigmas[0]))) + 1
    peaks = (resp == ndi.maximum_filter(resp, size=size, mode="nearest")) & (resp > thr)
    return np.argwhere(peaks).astype(float)


def part_g(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    from validate_spines import MATCH_PX, MIN_MARK_BOX_PX, PIXEL_SIZE_UM, REAL, real_benchmark, real_marks, summarise

    from analysis.measure.spines import detect_spines

    if not REAL.is_dir():
        return pd.DataFrame(), f"skipped: {REAL} not found (../shared/realdata, see its README)"
    detectors = {"ours": lambda im: detect_spines(im, PIXEL_SIZE_UM)[["y", "x"]].to_numpy(float),
                 "plain LoG": lambda im: plain_log_spines(im, PIXEL_SIZE_UM)}
    df, _ = real_benchmark(limit=50 if args.quick else None, detectors=detectors)
    scored, left_out = real_marks()
    n_marks = len(scored) + sum(left_out.values())
    save(df, "g_spines")
    out = []
    for name in detectors:
        d = df[df["method"] == name]
        for label, sel in (("all frames", d), ("wide-field frames", d[d["family"] == "field"]),
                           ("zoomed frames", d[d["family"] == "zoomed"]), ("held-out frames", d[d["subset"] == "held-out"])):
            if len(sel) == 0:
                continue
            r = summarise(sel)
            rb = summarise(sel, "_box")
            out.append({"method": name, "frames": f"{label} ({r['images']})", "marks": r["true"],
                        "detected": r["detected"],
                        "P / R / F1": f"{fmt(r['precision'], 3)} / {fmt(r['recall'], 3)} / **{fmt(r['f1'], 3)}**",
                        "P / R / F1, half a box": (f"{fmt(rb['precision'], 3)} / {fmt(rb['recall'], 3)} / "
                                                   f"**{fmt(rb['f1'], 3)}**"),
                        "count error, median abs": fmt(r["count_err_median_abs"], 1),
                        "CPU s / frame": fmt(float(sel["cpu_s"].mean()), 2)})
    note = (f"SpineDetector 'Dendritic2' two-photon frames (maximum projections, 416 x 416 JPEG, CC BY 4.0; "
            f"{n_marks:,} hand-marked heads in the full set), every frame at the pixel size {PIXEL_SIZE_UM} um "
            "(the set's approximate value: the frames were resized by the exporter); a detection matches a mark "
            f"one to one within {MATCH_PX:g} px (half a wide-field frame's mark box of ~22 px), and in the column "
            f"*half a box* within half of the frame's median mark box (at least {MATCH_PX:g} px; 11 px on the "
            "wide-field frames, ~60 px on the zoomed ones, which are ~5x enlarged crops: 10 px there is 2 px of a "
            f"wide-field frame); marks no detector can match are left out: {left_out['degenerate']} boxes under "
            f"{MIN_MARK_BOX_PX:g} px (all at a zoomed frame's corner) and {left_out['outside']} centres outside the "
            "frame; **ours** = `analysis.measure.spines.detect_spines` "
            "with its defaults, chosen on every 5th frame (the tuning frames) with the simulator, so the held-out "
            "frames are the fair figure; **plain LoG** = the scale-normalised LoG at head radii "
            f"{', '.join(f'{r:g}' for r in SPINE_HEAD_RADII_UM)} um, local maxima above median + {MAD_K:g} MAD (no "
            "dendrite model: the floor); target F1 >= 0.85 (issue 15)")
    return pd.DataFrame(out), note


# --------------------------------------------------------------------------- h. microglia, other pixel sizes

#: Zoom factors of part h: the EMBL fields (0.755 um) resampled to ~1.0, 0.5, 0.3 and 0.19 um pixels.
MICROGLIA_ZOOMS = (0.75, 1.5, 2.5, 4.0)


def part_h(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    import tifffile
    from validate_microglia_real import DATA as MICROGLIA
    from validate_microglia_real import iou_pairs, plain_threshold

    from analysis.measure.microglia import segment_microglia

    if not MICROGLIA.is_dir():
        return pd.DataFrame(), f"skipped: {MICROGLIA} not found (../shared/realdata, see its README)"
    px0 = 0.7552
    names = ["pg6_t1"] if args.quick else ["pg6_t1", "pg6_t2", "pg6_t3"]
    zooms = (1.0, 2.5) if args.quick else (1.0, *MICROGLIA_ZOOMS)
    rows = []
    for name in names:
        img = tifffile.imread(MICROGLIA / f"{name}.tif").astype(np.float32)
        truth0 = tifffile.imread(MICROGLIA / f"{name}_labels.tif")
        for z in zooms:
            image = img if z == 1.0 else ndi.zoom(img, z, order=1)
            truth = truth0 if z == 1.0 else ndi.zoom(truth0, z, order=0)
            n_true = len(np.unique(truth)) - 1
            for method, seg in (("ours", segment_microglia), ("triangle + components", plain_threshold)):
                labels = seg(image, px0 / z)
                matched, _ = iou_pairs(labels, truth)
                n_pred = len(np.unique(labels)) - 1
                rows.append({"image": name, "zoom": z, "pixel_um": px0 / z, "method": method, "n_true": n_true,
                             "n_labels": n_pred, "tp": len(matched)})
    df = pd.DataFrame(rows)
    save(df, "h_microglia_resampled")
    g = df.groupby(["pixel_um", "method"], sort=False)[["n_true", "n_labels", "tp"]].sum().reset_index()
    p, r = g["tp"] / g["n_labels"].clip(lower=1), g["tp"] / g["n_true"].clip(lower=1)
    out = pd.DataFrame({"pixel size (um)": [fmt(v, 2) for v in g["pixel_um"]], "method": g["method"],
                        "labels / cells": [f"{a} / {b}" for a, b in zip(g["n_labels"], g["n_true"])],
                        "P / R / F1 at IoU >= 0.5": [f"{fmt(a, 2)} / {fmt(b, 2)} / **{fmt(2 * a * b / max(a + b, 1e-12), 3)}**"
                                                     for a, b in zip(p, r)]})
    note = ("the EMBL fields of part f (" + ", ".join(names) + ") resampled (linear interpolation; hand masks by "
            "nearest neighbour) by " + ", ".join(f"{z:g}" for z in zooms) + " and segmented with the matching pixel "
            "size, pooled over the fields: the parameters are physical if the cells found do not depend on the "
            "sampling.  Interpolation smooths the noise, so a finer sampling here is not a finer microscope: a "
            "check of the units, not of other optics")
    return out, note


# --------------------------------------------------------------------------- i. spine sessions: same dendrites?


def part_i(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Correlation of two sessions' registered images, the test of `track_spines` that they show
    the same dendrites, on pairs that do and pairs that do not."""
    from validate_spines import PIXEL_SIZE_UM, REAL, load_grey

    from analysis.measure.spines import (
        MIN_SESSION_CORRELATION,
        MIN_TURNED_SESSION_CORRELATION,
        ROTATION_EXTEND_DEG,
        _turned,
        track_spines,
    )
    from analysis.sim.spines import simulate_spine_sessions

    seeds = (0,) if args.quick else (0, 1, 2)
    rows = []

    def pair(kind: str, a: np.ndarray, b: np.ndarray, px: float) -> None:
        tr = track_spines([a, b], px)
        s1 = tr[(tr["session"] == 1) & (tr["status"] != "lost")]
        rows.append({"kind": kind, "r": tr.attrs["session_correlation"][1], "linked": not tr.attrs["unmatched_sessions"],
                     "stable_share": float((s1["status"] == "stable").mean()) if len(s1) else np.nan})

    for snr in ("high", "default", "low"):
        for seed in seeds:
            for scale in (1.0, 0.5, 0.25):
                ses = simulate_spine_sessions(seed, preset="default", snr=snr, photon_scale=[scale] * 4)
                px = ses[0].info["pixel_size_um"]
                # baseline against the end of dosing (two intervals: turnover, drift, rotation, warp)
                pair(f"simulated, same position ({'photons x ' + format(scale, 'g') if scale != 1 else 'as imaged'})",
                     ses[0].image, ses[2].image, px)
            other = simulate_spine_sessions(seed + 100, preset="default", snr=snr)[2].image
            pair("simulated, another position", ses[0].image, other, px)
            for deg in (20.0, ROTATION_EXTEND_DEG + 10.0, 90.0, 180.0):
                where = (f"beyond the image search of +-{ROTATION_EXTEND_DEG:g}: the spectra's angle"
                         if deg > ROTATION_EXTEND_DEG else "beyond the first search of +-8")
                pair(f"simulated, same position turned {deg:g} degrees ({where})", ses[0].image,
                     _turned(ses[2].image.astype(np.float32), deg), px)
    if REAL.is_dir():
        files = sorted((REAL / "valid" / "images").glob("*.jpg"))
        rng = np.random.default_rng(args.seed)
        for family, sub in (("wide-field", [f for f in files if not f.name.startswith("spine_")]),
                            ("zoomed", [f for f in files if f.name.startswith("spine_")])):
            for _ in range(5 if args.quick else 15):
                i, j = rng.choice(len(sub), 2, replace=False)
                pair(f"real {family} frames, two different frames", load_grey(sub[i]), load_grey(sub[j]), PIXEL_SIZE_UM)
    df = pd.DataFrame(rows)
    save(df, "i_spine_sessions")
    g = df.groupby("kind", sort=False).agg(pairs=("r", "size"), r_min=("r", "min"), r_median=("r", "median"),
                                           r_max=("r", "max"), linked=("linked", "mean")).reset_index()
    stable = df[df["linked"]].groupby("kind", sort=False)["stable_share"].median()
    out = pd.DataFrame({"session pair": g["kind"], "pairs": g["pairs"],
                        "correlation min / median / max": [f"{fmt(a, 2)} / {fmt(b, 2)} / {fmt(c, 2)}"
                                                           for a, b, c in zip(g.r_min, g.r_median, g.r_max)],
                        "linked": [fmt(v, 2) for v in g["linked"]],
                        "stable share of linked pairs (median)": [fmt(stable.get(k, np.nan), 2) for k in g["kind"]]})
    note = (f"`analysis.measure.spines.track_spines` links two sessions only if their registered images (smoothed at "
            f"half a shaft radius, trends slower than 8 shaft radii removed) correlate at least "
            f"{MIN_SESSION_CORRELATION:g} where they overlap ({MIN_TURNED_SESSION_CORRELATION:g} when aligned at an "
            "angle found from their power spectra, beyond those the image search tried); otherwise the interval gives "
            "no turnover.  Simulated: "
            f"default preset (three dendrites, 512 x 512), seeds {', '.join(map(str, seeds))} at each SNR level, "
            "session 0 against session 2 (day -7 against day 7: 13 % fewer spines, new drift, rotation and warp), "
            "photons of both sessions scaled as given; another position = another seed.  Real: random pairs of "
            f"different SpineDetector frames of one kind at {PIXEL_SIZE_UM} um (one straight dendrite registered onto "
            "another can look alike: the test cannot tell every pair of single-dendrite frames apart); linked = the "
            "share of pairs that pass; stable share = the second session's spines linked to one of the first's (a "
            "wrong alignment links few)")
    return out, note


# --------------------------------------------------------------------------- main

# --------------------------------------------------------------------------- j. spines, coarser pixels

#: Binning factors of part j (0.04 um real frames -> 0.08-0.16 um; 0.12 um simulated -> 0.24-0.48 um).
SPINE_BINNINGS = (1, 2, 3, 4)


def binned(img: np.ndarray, f: int) -> np.ndarray:
    """``img`` summed over f x f blocks (the edge rows and columns that do not fill a block dropped)."""
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).sum(axis=(1, 3))


def part_j(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Spine detection on images binned to coarser pixels, real and simulated."""
    from validate_spines import MATCH_PX, PIXEL_SIZE_UM, REAL, load_grey

    from analysis.measure.spines import MIN_SHAFT_RADIUS_PX, detect_spines
    from analysis.sim.spines import simulate_spine_sessions

    binnings = (1, 3) if args.quick else SPINE_BINNINGS
    rows = []

    def ours_timed(im: np.ndarray, px: float) -> np.ndarray:
        c0 = time.process_time()
        yx = detect_spines(im, px)[["y", "x"]].to_numpy(float)
        cpu.append(time.process_time() - c0)
        return yx

    cpu: list[float] = []

    def score(kind: str, method: str, f: int, px: float, det: np.ndarray, true: np.ndarray, radius: float,
              shape: tuple[int, ...]) -> None:
        yx = (np.asarray(det, float).reshape(-1, 2) + 0.5) * f - 0.5  # back to the original pixels
        # marks in the rows and columns dropped by the binning do not count
        keep = (true[:, 0] < (shape[0] // f) * f - 0.5) & (true[:, 1] < (shape[1] // f) * f - 0.5)
        m = match_points(yx, true[keep], radius)
        rows.append({"set": kind, "binning": f, "pixel_um": px * f, "method": method,
                     "n_true": int(keep.sum()), "n_det": len(yx), "tp": m.tp,
                     "cpu_s": cpu.pop() if method == "ours" else float("nan")})

    if REAL.is_dir():
        pts = pd.read_csv(REAL / "valid_spine_points.csv")
        files = sorted((REAL / "valid" / "images").glob("*.jpg"))
        held_out = [f for i, f in enumerate(files) if i % 5][::4]
        by = {k: g for k, g in pts.groupby("image")}
        for fpath in held_out[:20] if args.quick else held_out:
            img = load_grey(fpath).astype(np.float32)
            true = by.get(fpath.name, pts.iloc[:0])[["y_px", "x_px"]].to_numpy(float)
            for f in binnings:
                im = binned(img, f)
                score("real frames", "ours", f, PIXEL_SIZE_UM, ours_timed(im, PIXEL_SIZE_UM * f), true, MATCH_PX,
                      img.shape)
                score("real frames", "plain LoG", f, PIXEL_SIZE_UM, plain_log_spines(im, PIXEL_SIZE_UM * f), true,
                      MATCH_PX, img.shape)
        n_real = len(held_out[:20] if args.quick else held_out)
    else:
        n_real = 0
    seeds = (0,) if args.quick else (0, 1, 2)
    for seed in seeds:
        ses = simulate_spine_sessions(seed, preset="default", snr="default", days=[0.0], target_density_ratio=[1.0])[0]
        px = ses.info["pixel_size_um"]
        img = ses.image.astype(np.float32)
        true = ses.spines[ses.spines["in_field"]][["y", "x"]].to_numpy(float)
        for f in binnings:
            im = binned(img, f)
            score("simulated (default SNR)", "ours", f, px, ours_timed(im, px * f), true, 0.5 / px, img.shape)
            score("simulated (default SNR)", "plain LoG", f, px, plain_log_spines(im, px * f), true, 0.5 / px,
                  img.shape)
    df = pd.DataFrame(rows)
    save(df, "j_spines_binned")
    g = df.groupby(["set", "binning", "method"], sort=False)[["n_true", "n_det", "tp", "pixel_um", "cpu_s"]].agg(
        {"n_true": "sum", "n_det": "sum", "tp": "sum", "pixel_um": "first", "cpu_s": "median"}).reset_index()
    p, r = g["tp"] / g["n_det"].clip(lower=1), g["tp"] / g["n_true"].clip(lower=1)
    out = pd.DataFrame({"set": g["set"], "binning": g["binning"], "pixel size (um)": [fmt(v, 2) for v in g["pixel_um"]],
                        "method": g["method"], "marks / detected": [f"{a} / {b}" for a, b in zip(g["n_true"], g["n_det"])],
                        "P / R / F1": [f"{fmt(a, 3)} / {fmt(b, 3)} / **{fmt(2 * a * b / max(a + b, 1e-12), 3)}**"
                                       for a, b in zip(p, r)],
                        "CPU s / image (median)": [fmt(v, 2) if np.isfinite(v) else "" for v in g["cpu_s"]]})
    note = (f"real: {n_real} held-out SpineDetector frames of part g (every 4th), at {PIXEL_SIZE_UM} um x the binning, "
            f"matched within {MATCH_PX:g} original pixels; simulated: session 0 of seeds "
            f"{', '.join(map(str, seeds))} of the default preset at default SNR, matched within 0.5 um.  Pixels are summed "
            "over blocks (a coarser scan or camera); positions are compared in the original pixels.  "
            f"`detect_spines` works on a grid with at least {MIN_SHAFT_RADIUS_PX:g} pixels per measured shaft radius "
            "(coarser images are interpolated by cubic splines for detection): the same spines should be found at "
            "every sampling the optics allow")
    return out, note


#: Processing of part k: (name, Gaussian sigma in px, median size, zoom factor, spline order,
#: deconvolution with the spots' own Gaussian PSF: "" none, "wiener" the linear Wiener filter
#: with a Laplacian regulariser of weight 0.03 (as a microscope's processing may leave an image;
#: ``skimage.restoration.wiener``), "rl" 10 iterations of Richardson-Lucy, unregularised).
PROCESSING: tuple[tuple[str, float, int, int, int, str], ...] = (
    ("as imaged", 0.0, 0, 1, 0, ""),
    ("Gaussian 0.5 px", 0.5, 0, 1, 0, ""),
    ("Gaussian 0.7 px", 0.7, 0, 1, 0, ""),
    ("Gaussian 1 px", 1.0, 0, 1, 0, ""),
    ("median 3 x 3", 0.0, 3, 1, 0, ""),
    ("2x linear interpolation", 0.0, 0, 2, 1, ""),
    ("2x cubic interpolation", 0.0, 0, 2, 3, ""),
    ("Wiener deconvolution", 0.0, 0, 1, 0, "wiener"),
    ("Richardson-Lucy 10 iterations", 0.0, 0, 1, 0, "rl"),
)
WIENER_BALANCE = 0.03
RL_ITERATIONS = 10


def detector_cells(sub: pd.DataFrame, set_name: str) -> dict[str, str]:
    """Per detector, the table cell of one set's rows (``tp``, ``fp``, ``fn``, ``n_found``,
    ``area_um2``): P / R / F1, or for pure noise the false puncta per 1,000 um^2."""
    cells = {}
    for det_name in DETECTORS:
        d = sub[sub.detector == det_name]
        if set_name.startswith("pure noise"):
            cells[det_name] = f"{fmt(1000 * d.n_found.sum() / d.area_um2.sum(), 1)} false / 1,000 um^2"
        else:
            t = d[["tp", "fp", "fn"]].sum()
            p_, r_ = t.tp / max(t.tp + t.fp, 1), t.tp / max(t.tp + t.fn, 1)
            cells[det_name] = f"{fmt(p_, 2)} / {fmt(r_, 2)} / **{fmt(2 * t.tp / max(2 * t.tp + t.fp + t.fn, 1), 2)}**"
    return cells


def scored(row: dict, pts: np.ndarray, truth: np.ndarray | None, match_px: float) -> dict:
    """``row`` with the one-to-one matches of ``pts`` to ``truth`` within ``match_px`` (``tp``,
    ``fp``, ``fn``; unchanged when there is no truth, as for pure noise)."""
    if truth is not None:
        m = match_points(pts, truth, match_px)
        row.update(tp=m.tp, fp=m.fp, fn=m.fn)
    return row


def processed(img: np.ndarray, sigma_px: float, median: int, zoom: int, order: int, deconvolution: str = "",
              psf_sigma_px: float = 0.0) -> np.ndarray:
    """``img`` as a user's software may have left it: smoothed, median-filtered, interpolated or
    deconvolved with a Gaussian PSF of ``psf_sigma_px`` (float32)."""
    out = np.asarray(img, dtype=np.float64)
    if deconvolution:
        from skimage.restoration import richardson_lucy, wiener

        r = int(np.ceil(4 * psf_sigma_px))
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        psf = np.exp(-(yy**2 + xx**2) / (2 * psf_sigma_px**2))
        psf /= psf.sum()
        if deconvolution == "wiener":
            out = wiener(out, psf, balance=WIENER_BALANCE, clip=False)
        else:
            out = richardson_lucy(out, psf, num_iter=RL_ITERATIONS, clip=False)
    if sigma_px:
        out = ndi.gaussian_filter(out, sigma_px)
    if median:
        out = ndi.median_filter(out, median)
    if zoom > 1:
        out = ndi.zoom(out, zoom, order=order)
    return out.astype(np.float32)


def part_k(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Puncta in processed images (correlated pixel noise): pure noise, sim-fish, our phantoms."""
    from analysis.measure.noise import neighbour_tie_ratio, noise_correlation
    from analysis.sim.phantoms import SNR_LEVELS, render_synapse_field

    px = 0.1
    n = 1 if args.quick else 3
    rng = np.random.default_rng([args.seed, 11])
    noise = [noise_image("Poisson-Gaussian 16-bit", rng, (256, 256)) for _ in range(n)]
    k_sf = next(k for k, c in enumerate(SIMFISH_CASES) if c[0] == "medium" and c[4] == 150)
    name, n_spots, amp, bg, sig, dtype = SIMFISH_CASES[k_sf]
    simfish = simfish_images([args.seed, 2, k_sf], n, n_spots, amp, bg, sig, dtype)
    k_cr = next(k for k, c in enumerate(SIMFISH_CASES) if c[0] == "crowded" and c[4] == 150)
    _, n_cr, amp_cr, bg_cr, sig_cr, dtype_cr = SIMFISH_CASES[k_cr]
    crowded = simfish_images([args.seed, 2, k_cr], n, n_cr, amp_cr, bg_cr, sig_cr, dtype_cr)
    phantoms = []
    for i in range(n):
        f = render_synapse_field(np.random.default_rng([args.seed, 1, i]), shape=(256, 256), pixel_size_um=px,
                                 snr=SNR_LEVELS["default"])
        phantoms.append((f.image, f.puncta[["y", "x"]].to_numpy()))
    rows = []
    for kind, sigma_px, median, zoom, order, deconvolution in PROCESSING:
        sets = [("pure noise", im, None, NOISE_SPOT_SIGMA_UM[px], 0.0) for im in noise]
        sets += [("sim-fish medium 150 nm", im, t, sig / 1000, SIMFISH_MATCH_PX) for im, t in simfish]
        sets += [("sim-fish crowded 150 nm", im, t, sig_cr / 1000, SIMFISH_MATCH_PX) for im, t in crowded]
        sets += [("phantoms default", im, t, PHANTOM_SPOT_SIGMA_UM, 2.5) for im, t in phantoms]
        for set_name, img, truth, sigma_um, match_px in sets:
            im = processed(img, sigma_px, median, zoom, order, deconvolution, sigma_um / px)
            # (scipy's zoom maps the corner pixels onto each other)
            scale = (np.array(im.shape) - 1) / (np.array(img.shape) - 1)
            corr, ties = noise_correlation(im, px / zoom), neighbour_tie_ratio(im)
            for det_name, det in DETECTORS.items():
                pts, secs, note = timed(det, im, px / zoom, sigma_um)
                rows.append(scored({"processing": kind, "set": set_name, "detector": det_name, "n_found": len(pts),
                                    "area_um2": img.size * px**2, "noise_correlation": corr, "tie_ratio": ties,
                                    "note": note}, np.asarray(pts, float).reshape(-1, 2) / scale, truth, match_px))
        print(f"  k {kind} done", flush=True)
    df = pd.DataFrame(rows)
    save(df, "k_processed")
    out = []
    for kind, sub in df.groupby("processing", sort=False):
        row = {"processing": kind, "noise correlation / tie ratio (median)":
               f"{fmt(sub['noise_correlation'].median(), 1)} / {fmt(sub['tie_ratio'].median(), 1)}"}
        for det_name in DETECTORS:
            d = sub[sub.detector == det_name]
            nz = d[d.set == "pure noise"]
            row[f"{det_name}: pure noise, false per 1,000 um^2"] = fmt(1000 * nz.n_found.sum() / nz.area_um2.sum(), 1)
            for set_name in ("sim-fish medium 150 nm", "sim-fish crowded 150 nm", "phantoms default"):
                t = d[d.set == set_name][["tp", "fp", "fn"]].sum()
                row[f"{det_name}: {set_name} F1 (false)"] = (f"{fmt(2 * t.tp / max(2 * t.tp + t.fp + t.fn, 1), 2)} "
                                                               f"({int(t.fp)})")
        out.append(row)
    note = (f"{n} images of 256 x 256 px at 0.1 um per set (pure noise: the Poisson-Gaussian 16-bit camera of part d; "
            "sim-fish: its medium case at sigma 150 nm, peak SNR 13, and its crowded case at 150 nm, 800 spots, peak SNR 44; our phantoms at default SNR), processed as "
            "named (interpolated images detected at 0.05 um pixels, positions mapped back; deconvolution with a "
            f"Gaussian PSF of the set's spot sigma: `skimage.restoration.wiener`, balance {WIENER_BALANCE:g}, and "
            f"`richardson_lucy`, {RL_ITERATIONS} iterations), matched as in parts b and "
            "c.  Noise correlation: `analysis.measure.noise.noise_correlation`; tie ratio: "
            "`analysis.measure.noise.neighbour_tie_ratio` (how much more often neighbouring pixels are equal than "
            "pixels 3 apart); medians over the set's images, both ~1 for independent pixels.  Above 5 "
            "(`CORRELATED_NOISE`), or a tie ratio above 2.5 (`TIED_NEIGHBOURS`, a median filter), our detector "
            "measures the noise of its filtered image instead of the pixel noise model's (`noise_factor`); in a "
            "plane above 1.2 (`MILD_CORRELATION`) as well, at most by the factor of Gaussian-smoothed noise of "
            "that figure")
    return pd.DataFrame(out), note


#: Part l: the profiles of :func:`analysis.sim.optics.psf_profile` and their Gaussian-equivalent
#: sigma (FWHM / 2.355, um) for the peers: Airy FWHM 0.51 lambda / NA.
PSF_CASES = {"Airy (NA 1.4, 520 nm)": ("airy", 0.51 * 0.52 / 1.4 / 2.355),
             "Moffat (beta 2.5, FWHM 0.25 um)": ("moffat", 0.25 / 2.355)}
PSF_PX_UM = 0.065


def part_l(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Puncta with non-Gaussian PSFs (Airy, Moffat) beside the peers."""
    from analysis.sim.optics import render_psf_spots

    n_images = 1 if args.quick else 3
    shape, background = (256, 256), 100.0
    rows = []
    for c, (case, (psf, sigma_um)) in enumerate(PSF_CASES.items()):
        for d, (density, n_spots) in enumerate((("sparse", 20), ("medium", 150))):
            for snr in (10.0, 50.0, 200.0):
                for i in range(n_images):
                    rng = np.random.default_rng([args.seed, 12, c, d, int(snr), i])
                    truth = rng.uniform(5, shape[0] - 6, (n_spots, 2))
                    # (peak SNR: the peak photons over the background's shot noise)
                    img = render_psf_spots(rng, shape, PSF_PX_UM, truth, snr * np.sqrt(background), background, psf)
                    for det_name, det in DETECTORS.items():
                        pts, secs, note = timed(det, img, PSF_PX_UM, sigma_um)
                        m = match_points(pts, truth, SIMFISH_MATCH_PX)
                        rows.append({"psf": case, "density": density, "peak_snr": snr, "image": i,
                                     "detector": det_name, "tp": m.tp, "fp": m.fp, "fn": m.fn, "note": note})
        print(f"  l {case} done", flush=True)
    df = pd.DataFrame(rows)
    save(df, "l_psf")
    g = df.groupby(["psf", "density", "peak_snr", "detector"], sort=False)[["tp", "fp", "fn"]].sum().reset_index()
    g["precision"] = g.tp / (g.tp + g.fp).where(g.tp + g.fp > 0)
    g["recall"] = g.tp / (g.tp + g.fn)
    g["f1"] = 2 * g.tp / (2 * g.tp + g.fp + g.fn)
    out = []
    for (case, density, snr), sub in g.groupby(["psf", "density", "peak_snr"], sort=False):
        row = {"PSF": case, "spots / image": f"{density} ({int(sub.tp.iloc[0] + sub.fn.iloc[0]) // n_images})",
               "peak SNR": fmt(snr, 0)}
        for r in sub.itertuples():
            row[f"{r.detector} P / R / F1"] = prf(r)
        out.append(row)
    note = (f"{n_images} images of 256 x 256 px at {PSF_PX_UM} um per row, spots uniform at random (they may "
            f"overlap), pixel-integrated, on {background:g} photons of background with shot noise; peak SNR = "
            f"peak photons / sqrt(background); matched within {SIMFISH_MATCH_PX:g} px")
    return pd.DataFrame(out), note + failures(df, "psf")


#: Part m: elongated spots (minor SD um, aspects, peak SNRs, fields per row, spots per field).
ELLIPSE_SIGMA_UM, ELLIPSE_ASPECTS, ELLIPSE_SNRS = 0.091, (1.0, 1.15, 1.3, 1.6, 2.0), (20.0, 100.0, 400.0)
ELLIPSE_FIELDS, ELLIPSE_SPOTS, ELLIPSE_MATCH_PX = 2, 100, 2.5


def part_m(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Elongated (elliptical) puncta beside the peers."""
    from analysis.sim.optics import render_elliptical_spots

    n_fields = 1 if args.quick else ELLIPSE_FIELDS
    shape, background = (384, 384), 100.0
    rows = []
    for aspect in ELLIPSE_ASPECTS:
        for snr in ELLIPSE_SNRS:
            for i in range(n_fields):
                rng = np.random.default_rng([args.seed, 13, int(aspect * 100), int(snr), i])
                truth = rng.uniform(8, shape[0] - 9, (ELLIPSE_SPOTS, 2))
                img = render_elliptical_spots(rng, shape, PSF_PX_UM, truth, snr * np.sqrt(background), background,
                                              sigma_um=ELLIPSE_SIGMA_UM, aspect=aspect,
                                              angle_rad=float(rng.uniform(0, np.pi)))
                for det_name, det in DETECTORS.items():
                    elongated = None
                    if det_name == "ours":
                        t0 = time.perf_counter()
                        found = detect_puncta(img, PSF_PX_UM)
                        pts, secs, note = found[["y", "x"]].to_numpy(float), time.perf_counter() - t0, ""
                        elongated = bool(found.attrs["elongated_puncta"])
                    else:
                        pts, secs, note = timed(det, img, PSF_PX_UM, ELLIPSE_SIGMA_UM * np.sqrt(aspect))
                    m = match_points(pts, truth, ELLIPSE_MATCH_PX)
                    rows.append({"aspect": aspect, "peak_snr": snr, "image": i, "detector": det_name, "tp": m.tp,
                                 "fp": m.fp, "fn": m.fn, "elongated": elongated, "note": note})
        print(f"  m aspect {aspect} done", flush=True)
    df = pd.DataFrame(rows)
    save(df, "m_elongated")
    g = df.groupby(["aspect", "peak_snr", "detector"], sort=False)[["tp", "fp", "fn"]].sum().reset_index()
    g["precision"] = g.tp / (g.tp + g.fp).where(g.tp + g.fp > 0)
    g["recall"] = g.tp / (g.tp + g.fn)
    g["f1"] = 2 * g.tp / (2 * g.tp + g.fp + g.fn)
    seen = df[df.detector == "ours"].groupby(["aspect", "peak_snr"], sort=False).elongated.sum()
    out = []
    for (aspect, snr), sub in g.groupby(["aspect", "peak_snr"], sort=False):
        row = {"aspect": fmt(aspect, 2), "peak SNR": fmt(snr, 0)}
        for r in sub.itertuples():
            row[f"{r.detector} P / R / F1"] = prf(r)
        for r in sub.itertuples():
            row[f"{r.detector} false per spot"] = fmt(r.fp / (r.tp + r.fn), 2)
        row["read as elongated (ours)"] = f"{int(seen[(aspect, snr)])} / {n_fields}"
        out.append(row)
    note = (f"{n_fields} fields of 384 x 384 px at {PSF_PX_UM} um per row, {ELLIPSE_SPOTS} elliptical Gaussian spots "
            f"each (minor SD {ELLIPSE_SIGMA_UM} um, the major SD aspect x that, one random direction per field), "
            f"uniform at random, pixel-integrated, on {background:g} photons with shot noise; peak SNR = peak photons "
            f"/ sqrt(background); matched within {ELLIPSE_MATCH_PX:g} px")
    return pd.DataFrame(out), note + failures(df, "aspect")


#: Part n: JPEG qualities (and None: the 8-bit image before compression).
JPEG_QUALITIES = (None, 98, 95, 90, 75)


def jpeg(img: np.ndarray, quality: int | None) -> np.ndarray:
    """``img`` stretched to 8 bits (its minimum to 0, its maximum to 255) and, with a
    ``quality``, saved as a JPEG of that quality and read back."""
    import io

    from PIL import Image

    a = np.asarray(img, float)
    img8 = np.rint(255 * (a - a.min()) / max(float(np.ptp(a)), 1e-12)).astype(np.uint8)
    if quality is None:
        return img8
    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def part_n(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Puncta in JPEG images beside the peers."""
    from analysis.sim.phantoms import SNR_LEVELS, render_synapse_field

    px = SIMFISH_PX_UM
    n = 1 if args.quick else 2
    sets = []
    for case, sig in (("sparse bright", 150), ("medium", 150), ("crowded", 100)):
        k = next(i for i, c in enumerate(SIMFISH_CASES) if c[0] == case and c[4] == sig)
        _, n_spots, amp, bg, _, dtype = SIMFISH_CASES[k]
        sets += [(f"sim-fish {case} {sig} nm", im, t, sig / 1000) for im, t in
                 simfish_images([args.seed, 2, k], n, n_spots, amp, bg, sig, dtype)]
    for i in range(n):
        f = render_synapse_field(np.random.default_rng([args.seed, 1, i]), shape=(256, 256), pixel_size_um=px,
                                 snr=SNR_LEVELS["default"])
        sets.append(("phantoms default", f.image, f.puncta[["y", "x"]].to_numpy(), PHANTOM_SPOT_SIGMA_UM))
    rng = np.random.default_rng([args.seed, 14])
    sets += [("pure noise, 8-bit", noise_image("8-bit low counts", rng, (256, 256)), None, NOISE_SPOT_SIGMA_UM[px])
             for _ in range(n)]
    rows = []
    for set_name, img, truth, sigma_um in sets:
        for q in JPEG_QUALITIES:
            im = jpeg(img, q)
            for det_name, det in DETECTORS.items():
                pts, note, seen = detected(det_name, det, im, px, sigma_um, ("block_ratio", "jpeg_lattice"))
                rows.append(scored({"set": set_name, "quality": "8-bit" if q is None else str(q), "detector": det_name,
                                    "n_found": len(pts), "area_um2": im.size * px**2, **seen, "note": note},
                                   np.asarray(pts, float).reshape(-1, 2), truth, SIMFISH_MATCH_PX))
        print(f"  n {set_name} done", flush=True)
    df = pd.DataFrame(rows)
    save(df, "n_jpeg")
    out = []
    for (set_name, q), sub in df.groupby(["set", "quality"], sort=False):
        ours = sub[sub.detector == "ours"]
        row = {"set": set_name, "JPEG quality": q,
               "block ratio / lattice (ours, median)": f"{fmt(ours.block_ratio.median(), 2)} / "
                                                       f"{fmt(ours.jpeg_lattice.median(), 1)}"}
        out.append({**row, **detector_cells(sub, set_name)})
    note = (f"{n} images of 256 x 256 px at {px} um per set (sim-fish cases as in part b, our phantoms at default "
            "SNR, the 8-bit noise of part d), stretched to 8 bits (minimum to 0, maximum to 255) and saved as JPEG "
            "(Pillow) at the quality named; P / R / F1 matched as in part b.  Block ratio: "
            "`analysis.measure.noise.jpeg_block_ratio` (the steps between neighbouring pixels on the 8 x 8 grid "
            "over the steps elsewhere, ~1 for an image never compressed); lattice: "
            "`analysis.measure.noise.jpeg_lattice` (a Rayleigh statistic of the blocks' cosine-transform "
            "coefficients on the lattices of quantisation steps 2-8, ~2.5 for an image never compressed); above "
            "1.1 (`JPEG_BLOCKS`) or 6 (`JPEG_LATTICE`) our detector measures the noise of its filtered image "
            "(`noise_factor`), as for the correlated noise of part k")
    return pd.DataFrame(out), note + failures(df, "set")


#: Part o: (name, spots per image, mean sigma nm, random_sigma, amplitude, background).
VARIED_CASES = (
    ("SD 25 %", 150, 200, 0.25, 300, 300),
    ("SD 40 %", 150, 200, 0.40, 300, 300),
    ("SD 40 %, bright", 150, 200, 0.40, 1000, 300),
    ("SD 35 %, dense", 400, 180, 0.35, 600, 300),
)


def part_o(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Puncta of varied sizes in one field (sim-fish's per-spot sigma) beside the peers."""
    import simfish

    n = 1 if args.quick else 4
    rows = []
    for k, (name, n_spots, sig, spread, amp, bg) in enumerate(VARIED_CASES):
        np.random.seed([args.seed, 16, k])
        gen = simfish.simulate_images(n, 2, n_spots, image_shape=(256, 256), image_dtype=np.uint16,
                                      voxel_size=(1000 * SIMFISH_PX_UM,) * 2, sigma=(sig, sig), random_sigma=spread,
                                      amplitude=amp, noise_level=bg)
        for img, gt in gen:
            truth = np.asarray(gt, float)[:, :2]
            for det_name, det in DETECTORS.items():
                pts, secs, note = timed(det, img, SIMFISH_PX_UM, sig / 1000)
                rows.append(scored({"case": name, "n_spots": n_spots, "sigma_nm": sig, "random_sigma": spread,
                                    "peak_snr": amp / np.sqrt(bg), "detector": det_name, "seconds": secs,
                                    "note": note}, np.asarray(pts, float).reshape(-1, 2), truth, SIMFISH_MATCH_PX))
        print(f"  o {name} done", flush=True)
    df = pd.DataFrame(rows)
    save(df, "o_varied_sizes")
    out = []
    for key, sub in df.groupby(["case", "n_spots", "sigma_nm", "random_sigma", "peak_snr"], sort=False):
        row = dict(zip(["case", "spots / image", "mean sigma (nm)", "sigma SD / mean", "peak SNR"],
                       [key[0], fmt(int(key[1])), fmt(int(key[2])), fmt(key[3], 2), fmt(key[4], 0)]))
        for det_name in DETECTORS:
            t = sub[sub.detector == det_name][["tp", "fp", "fn"]].sum()
            p_, r_ = t.tp / max(t.tp + t.fp, 1), t.tp / max(t.tp + t.fn, 1)
            row[f"{det_name} P / R / F1"] = f"{fmt(p_, 2)} / {fmt(r_, 2)} / **{fmt(2 * t.tp / max(2 * t.tp + t.fp + t.fn, 1), 2)}**"
        out.append(row)
    note = (f"{n} sim-fish images of 256 x 256 px at {SIMFISH_PX_UM} um per case, each spot's sigma drawn from a "
            "normal law of the mean and SD named (sim-fish's `random_sigma`; it keeps sigmas of at least 1 nm, so a "
            "few spots at SD 40 % are narrower than a pixel: no microscope makes those), amplitude jittered by 5 %; "
            "peak SNR = amplitude / sqrt(background); matched as in part b; big-fish and the LoG are given the mean "
            "sigma, ours only the pixel size")
    return pd.DataFrame(out), note + failures(df, "case")


# --------------------------------------------------------------------------- p. stripes

#: Stripes of part p: (name, axis, kind, size): rows (axis 0) or columns (axis 1) offset by
#: ``size`` x the background's pixel-noise SD, or their gain jittered by ``size``.
STRIPES = (("none", 0, "offset", 0.0), ("columns offset 0.25 SD", 1, "offset", 0.25),
           ("columns offset 0.5 SD", 1, "offset", 0.5), ("columns offset 1.5 SD", 1, "offset", 1.5),
           ("rows gain 3 %", 0, "gain", 0.03), ("rows gain 10 %", 0, "gain", 0.10))


def striped(img: np.ndarray, axis: int, kind: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """``img`` with its rows (``axis=0``) or columns offset by ``size`` x the pixel noise SD of
    its background (differences of neighbouring pixels) or their gain jittered by ``size``
    (``kind`` "offset" / "gain"), rounded to the image's integer type."""
    a = np.asarray(img, np.float64)
    shape = (a.shape[0], 1) if axis == 0 else (1, a.shape[1])
    if kind == "offset":
        sd = 1.4826 * float(np.median(np.abs(np.diff(a, axis=1)))) / np.sqrt(2.0)
        a = a + size * sd * rng.standard_normal(shape)
    else:
        a = a * (1.0 + size * rng.standard_normal(shape))
    if np.issubdtype(np.asarray(img).dtype, np.integer):
        lim = np.iinfo(np.asarray(img).dtype)
        return np.clip(np.rint(a), lim.min, lim.max).astype(np.asarray(img).dtype)
    return a


def part_p(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Puncta in striped images (a scanner's line noise, a camera's column pattern) beside the peers."""
    from analysis.sim.phantoms import SNR_LEVELS, render_synapse_field

    px = SIMFISH_PX_UM
    n = 1 if args.quick else 3
    k_sf = next(k for k, c in enumerate(SIMFISH_CASES) if c[0] == "medium" and c[4] == 150)
    _, n_spots, amp, bg, sig, dtype = SIMFISH_CASES[k_sf]
    sets = [("sim-fish medium 150 nm", im, t, sig / 1000) for im, t in
            simfish_images([args.seed, 2, k_sf], n, n_spots, amp, bg, sig, dtype)]
    for i in range(n):
        f = render_synapse_field(np.random.default_rng([args.seed, 1, i]), shape=(256, 256), pixel_size_um=px,
                                 snr=SNR_LEVELS["default"])
        sets.append(("phantoms default", f.image, f.puncta[["y", "x"]].to_numpy(), PHANTOM_SPOT_SIGMA_UM))
    rng = np.random.default_rng([args.seed, 17])
    sets += [("pure noise 16-bit", noise_image("Poisson-Gaussian 16-bit", rng, (512, 512)), None,
              NOISE_SPOT_SIGMA_UM[px]) for _ in range(n)]
    rows = []
    for j, (set_name, img, truth, sigma_um) in enumerate(sets):
        for k, (name, axis, kind, size) in enumerate(STRIPES):
            im = striped(img, axis, kind, size, np.random.default_rng([args.seed, 17, j, k]))
            for det_name, det in DETECTORS.items():
                pts, note, seen = detected(det_name, det, im, px, sigma_um, ("stripe_ratio", "stripes_removed"))
                rows.append(scored({"set": set_name, "stripes": name, "detector": det_name, "n_found": len(pts),
                                    "area_um2": im.size * px**2, **seen, "note": note},
                                   np.asarray(pts, float).reshape(-1, 2), truth, SIMFISH_MATCH_PX))
        print(f"  p {set_name} done", flush=True)
    df = pd.DataFrame(rows)
    save(df, "p_stripes")
    out = []
    for (set_name, name), sub in df.groupby(["set", "stripes"], sort=False):
        mine = sub[sub.detector == "ours"]
        row = {"set": set_name, "stripes": name,
               "stripe ratio (ours)": f"{fmt(mine.stripe_ratio.min(), 1)}-{fmt(mine.stripe_ratio.max(), 1)}",
               "removed": f"{int(np.nansum(mine.stripes_removed))} of {len(mine)}"}
        out.append({**row, **detector_cells(sub, set_name)})
    note = (f"{n} images per set at {px} um (sim-fish and phantoms 256 x 256 px, noise 512 x 512), each with its rows "
            "or columns offset by a normal draw of the SD named (in SDs of the background's pixel noise, a camera's "
            "column pattern or a scanner's line offsets) or their gain jittered by the percentage named (laser "
            "power from line to line); cells: P / R / F1 (matched within 2 px), for pure noise false puncta per "
            "1,000 um^2 (target <= 1); *stripe ratio*: `analysis.measure.stripes.stripe_ratio`, the larger of rows and columns "
            "(~1 without stripes; our detector removes the offsets from 2, `removed`)")
    return pd.DataFrame(out), note + failures(df, "stripes")


#: Edges of part q: (name, shape, blur in px): glass beyond column 160 ("straight") or in a disk
#: of 4 um radius in the field's centre ("round"; a tear, a cut vessel), the edge blurred by the
#: PSF (1 px) or softer.
EDGES = (("none", "", 0.0), ("straight, 1 px blur", "straight", 1.0), ("straight, 2.5 px blur", "straight", 2.5),
         ("round hole, 1 px blur", "round", 1.0))


def tissue_weight(shape: tuple[int, int], kind: str, blur_px: float, px: float) -> np.ndarray:
    """1 in tissue, 0 on glass, the edge blurred by ``blur_px`` (part q)."""
    if not kind:
        return np.ones(shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    if kind == "straight":
        hard = xx < 160
    else:
        hard = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 > (4.0 / px) ** 2
    return ndi.gaussian_filter(hard.astype(float), blur_px)


def part_q(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Puncta beside a sharp edge of the tissue (glass) beside the peers."""
    from analysis.sim.optics import _camera
    from analysis.sim.phantoms import SNR_LEVELS, render_synapse_field

    px = SIMFISH_PX_UM
    n = 1 if args.quick else 3
    k_sf = next(k for k, c in enumerate(SIMFISH_CASES) if c[0] == "medium" and c[4] == 150)
    _, n_spots, amp, bg, sig, dtype = SIMFISH_CASES[k_sf]
    sets = []
    for j, (im, t) in enumerate(simfish_images([args.seed, 3, k_sf], n, n_spots, amp, bg, sig, dtype)):
        # (glass: Poisson at 5 % of sim-fish's background, the same integer type)
        glass = np.random.default_rng([args.seed, 18, j]).poisson(0.05 * bg, im.shape)
        sets.append(("sim-fish medium 150 nm", im, t, sig / 1000, glass))
    for i in range(n):
        f = render_synapse_field(np.random.default_rng([args.seed, 3, i]), shape=(256, 256), pixel_size_um=px,
                                 snr=SNR_LEVELS["default"])
        # (glass: the phantom's own camera at 2 photo-electrons)
        glass = _camera(np.random.default_rng([args.seed, 19, i]), np.full(f.image.shape, 2.0))
        sets.append(("phantoms default", f.image, f.puncta[["y", "x"]].to_numpy(), PHANTOM_SPOT_SIGMA_UM, glass))
    rows = []
    for set_name, img, truth, sigma_um, glass in sets:
        for name, kind, blur in EDGES:
            w = tissue_weight(img.shape, kind, blur, px)
            im = np.rint(img * w + glass * (1 - w)).astype(img.dtype)
            iy, ix = np.clip(np.rint(truth).astype(int), 0, np.array(img.shape) - 1).T
            kept = truth[w[iy, ix] >= 0.5]  # (puncta on the glass side of the edge are not imaged)
            for det_name, det in DETECTORS.items():
                pts, note, seen = detected(det_name, det, im, px, sigma_um, ("beyond_edge_px",))
                rows.append(scored({"set": set_name, "edge": name, "detector": det_name, "n_found": len(pts),
                                    "area_um2": float(w.sum()) * px**2, **seen, "note": note},
                                   np.asarray(pts, float).reshape(-1, 2), kept, SIMFISH_MATCH_PX))
            # ours without the repair of step 11 (on by default)
            found = detect_puncta(im, px, repair_tissue_edges=False)
            rows.append(scored({"set": set_name, "edge": name, "detector": "ours, repair off",
                                "n_found": len(found), "area_um2": float(w.sum()) * px**2,
                                "beyond_edge_px": float(found.attrs["beyond_edge_px"]), "note": ""},
                               found[["y", "x"]].to_numpy(float), kept, SIMFISH_MATCH_PX))
        print(f"  q {set_name} done", flush=True)
    df = pd.DataFrame(rows)
    save(df, "q_tissue_edge")
    out = []
    for (set_name, name), sub in df.groupby(["set", "edge"], sort=False):
        mine = sub[sub.detector == "ours"]
        t = sub[sub.detector == "ours, repair off"][["tp", "fp", "fn"]].sum()
        row = {"set": set_name, "edge": name,
               "ours, repair off": (f"{fmt(t.tp / max(t.tp + t.fp, 1), 2)} / {fmt(t.tp / max(t.tp + t.fn, 1), 2)} / "
                                    f"**{fmt(2 * t.tp / max(2 * t.tp + t.fp + t.fn, 1), 2)}**"),
               "glass raised (ours)": f"{int((mine.beyond_edge_px > 0).sum())} of {len(mine)}"}
        out.append({**row, **detector_cells(sub, set_name)})
    note = (f"{n} images per set, 256 x 256 px at {px} um, with glass beyond column 160 (a 25.6 um edge) or in a disk "
            "of 4 um radius (a 25 um edge), the edge blurred by 1 px (the PSF) or 2.5 px; glass: sim-fish's Poisson "
            "background at 5 %, or the phantom's own camera at 2 photo-electrons. Truth: the puncta on the tissue "
            "side (tissue weight >= 0.5); cells P / R / F1 matched within 2 px. *ours*: the default, which repairs "
            "such edges (step 11); *ours, repair off*: `detect_puncta(..., repair_tissue_edges=False)`; *glass "
            "raised*: images in which ours raised a region beyond the edge to the tissue's background "
            "(`attrs['beyond_edge_px']`)")
    return pd.DataFrame(out), note + failures(df, "edge")


PARTS = {
    "a": ("a. Real culture images (label-free checks)", part_a),
    "b": ("b. sim-fish (independent simulator)", part_b),
    "c": ("c. Our phantoms, every SNR level", part_c),
    "d": ("d. Pure noise: false puncta per 1,000 um^2", part_d),
    "e": ("e. Speed", part_e),
    "f": ("f. Real microglia (annotated)", part_f),
    "g": ("g. Real two-photon spines (annotated)", part_g),
    "h": ("h. Real microglia resampled to other pixel sizes", part_h),
    "i": ("i. Spine sessions: the same dendrites or not", part_i),
    "j": ("j. Spines at coarser pixels", part_j),
    "k": ("k. Puncta in processed images (correlated pixel noise)", part_k),
    "l": ("l. Puncta with PSFs that are not Gaussian (Airy, Moffat)", part_l),
    "m": ("m. Elongated puncta (an astigmatic PSF)", part_m),
    "n": ("n. Puncta in JPEG images", part_n),
    "o": ("o. Puncta of varied sizes in one field", part_o),
    "p": ("p. Puncta in striped images (line noise, a camera's column pattern)", part_p),
    "q": ("q. Puncta beside a sharp edge of the tissue (glass)", part_q),
}


def _git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src/analysis/synapses.py"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return f"commit {head}" + (" (src/analysis/synapses.py with uncommitted changes)" if dirty else "")
    except OSError:
        return "git state unknown"


def main(argv: list[str] | None = None) -> dict[str, pd.DataFrame]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
    ap.add_argument("--quick", action="store_true", help="fewer images (smoke run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fields", type=int, default=8, help="phantom fields per SNR level (part c)")
    ap.add_argument("--md", type=Path, default=None, help="markdown summary (default: benchmarks/validation_real.md "
                    "for a full run, benchmarks/results/validation_real.md otherwise)")
    args = ap.parse_args(argv)
    from importlib.metadata import version

    t_start = time.perf_counter()
    sections, tables = [], {}
    for key in sorted(set(args.parts)):
        title, fn = PARTS[key]
        print(f"## {title}", flush=True)
        t0 = time.perf_counter()
        table, note = fn(args)
        tables[key] = table
        text = md_table(table) if len(table) else ""
        print(text + f"\n\n{note} ({time.perf_counter() - t0:.0f} s)\n", flush=True)
        sections.append(f"## {title}\n\n{text}\n\n{note}.\n")
    full = set(args.parts) == set(PARTS) and not args.quick
    md = args.md or (ROOT / "benchmarks" / "validation_real.md" if full else RESULTS / "validation_real.md")
    command = "python benchmarks/validate_real.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (
        "# Puncta, microglia and spines on data we did not make (generated)\n\n"
        f"Generated by `{command.strip()}` (`make validate`) on {datetime.date.today().isoformat()}, "
        f"{_git_state()}, in {(time.perf_counter() - t_start) / 60:.1f} min on {os.cpu_count()} cores "
        f"(Python {platform.python_version()}, big-fish {version('big-fish')}, sim-fish {version('sim-fish')}). "
        "Raw tables: `benchmarks/results/validate_real_<part>.csv`; overlays: "
        "`benchmarks/results/overlay_field*.png`.  Detectors: **ours** = `analysis.measure.puncta.detect_puncta` "
        "(defaults, pixel size only); **big-fish** = `bigfish.detection.detect_spots` (automatic elbow threshold, "
        "voxel size and spot radius = spot sigma in nm, float64 input); **plain LoG** = LoG at the spot sigma, local "
        f"maxima above median + {MAD_K:g} x 1.4826 x MAD.  Spot sigma given to big-fish and the LoG: culture "
        f"{1000 * CULTURE_SPOT_SIGMA_UM:.0f} nm (widefield 20x punctum at 0.325 um pixels), sim-fish the true sigma, "
        f"phantoms {1000 * PHANTOM_SPOT_SIGMA_UM:.0f} nm, noise 150 nm (0.1 um pixels) / 300 nm (0.3 um).  See the "
        "script's docstring for the method.\n"
    )
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {md}")
    return tables


if __name__ == "__main__":
    main()
