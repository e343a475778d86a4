"""Quality of one image's measurement: SNR, detector recall and precision, saturation, range.

Every image row of the measurement table carries these figures (DESIGN.md, "Contracts"), so
a reader can tell a density measured on a good image from one measured near the detector's
limits:

* :func:`image_snr` -- the puncta's signal-to-noise ratio: the mean peak amplitude of the
  image's puncta population over the pixel-noise SD at the background
  (:func:`background_noise_sd`), with the population's brightness corrected for the puncta
  too faint to be detected (:func:`fit_brightness`); the definition of the phantoms' SNR
  (:mod:`analysis.sim.phantoms`), whose levels the validation covers.
* :func:`spike_in_recall` -- the detector's recall on *this* image, measured by adding
  synthetic puncta (the image's own punctum size, brightness distribution and noise model)
  at known positions and detecting again with the same parameters; in the same run, the
  expected number of false detections, from puncta found where the surrogate image holds
  only sign-flipped noise (:func:`flipped_surrogate`), gives :func:`estimated_precision`.
* :func:`saturated_fraction` and :func:`bit_depth` -- acquisition checks.
* :func:`in_validated_range` -- whether pixel size, bit depth, SNR and saturation lie inside
  what the validation covered (:data:`VALIDATED_RANGE`).

:func:`image_quality` bundles them into the columns of one image row (used by
:func:`analysis.pipeline.quantify.quantify_image`).  All functions are pure; every random draw takes
a seed.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy import optimize, special

from analysis.measure import filters as _filters
from analysis.measure.puncta import _render as render_spots
from analysis.measure.area import _exact_medians
from analysis.measure.noise import (CORRELATED_NOISE, JPEG_BLOCKS, JPEG_LATTICE, TIED_NEIGHBOURS, jpeg_block_ratio,
                                    jpeg_lattice, neighbour_tie_ratio, noise_correlation, noise_sd_map)
from analysis.measure.outside import fill_not_imaged, not_imaged_mask
from analysis.measure.stripes import remove_stripes, stripe_ratio
from analysis.measure.puncta import detect_puncta, match_points

__all__ = [
    "VALIDATED_RANGE",
    "bit_depth",
    "saturated_fraction",
    "saturated_mask",
    "integer_saturation_level",
    "fit_brightness",
    "image_snr",
    "background_noise_sd",
    "flipped_surrogate",
    "spike_in_recall",
    "estimated_precision",
    "in_validated_range",
    "image_quality",
    "wilson_interval",
    "spaced_points",
]

log = logging.getLogger(__name__)

#: What the validation covers, per readout; one dict so that the validation suite can widen it.
#: ``pixel_size_um`` (inclusive range), ``bit_depth`` (integer data of these depths; float data
#: is not covered), ``min_snr`` (:func:`image_snr`: the hardest SNR level of the phantom
#: validation, ``analysis.sim.phantoms.SNR_LEVELS["hard"]`` = 3, where puncta F1 is ~0.82 and
#: recall ~0.73, less the scatter of the SNR measured on single 256 x 256 fields rendered at
#: that level: 2.7-3.4 over 20 fields with the current detector, 3.1-3.6 with the previous),
#: ``max_saturated_fraction`` (images above it are rejected by
#: :func:`analysis.pipeline.quantify.image_problem` anyway), ``max_noise_correlation``
#: (:func:`analysis.measure.noise.noise_correlation`), ``max_tie_ratio``
#: (:func:`analysis.measure.noise.neighbour_tie_ratio`), ``max_block_ratio``
#: (:func:`analysis.measure.noise.jpeg_block_ratio`) and ``max_jpeg_lattice``
#: (:func:`analysis.measure.noise.jpeg_lattice`): the puncta detector's noise model
#: takes the pixel noise as independent.  Above these limits
#: (:data:`analysis.measure.noise.CORRELATED_NOISE`, a correlation over ~0.6 px;
#: :data:`analysis.measure.noise.TIED_NEIGHBOURS`, a median filter;
#: :data:`analysis.measure.noise.JPEG_BLOCKS` and :data:`analysis.measure.noise.JPEG_LATTICE`,
#: a JPEG compression) it measures the noise of
#: its filtered image instead, which keeps pure noise clean but costs faint puncta, and the
#: validation does not cover such images (benchmarks/RESULTS.md, sessions 33, 35 and 39).  Every
#: validation set reads 0.9-2.6, 0.95-1.7, 1.00-1.03 and at most 2.9; milder smoothing
#: (Gaussian 0.4-0.6 px, 1.3-4.6) is not caught and gives up to thousands of false puncta per
#: 1,000 um^2 of pure noise (session 36).  ``max_stripe_ratio``
#: (:func:`analysis.measure.stripes.stripe_ratio`): the detector removes offsets shared by
#: whole rows or columns from a ratio of 2; part p of ``benchmarks/validate_real.py`` covers
#: ratios up to 19.5 (columns offset by 1.5 noise SDs, rows' gain jittered by 10 %; session 55).
VALIDATED_RANGE: dict[str, dict[str, Any]] = {
    "puncta": {
        "pixel_size_um": (0.05, 0.8),
        "bit_depth": (8, 12, 16),
        "min_snr": 2.7,
        "max_saturated_fraction": 0.01,
        "max_noise_correlation": CORRELATED_NOISE,
        "max_tie_ratio": TIED_NEIGHBOURS,
        "max_block_ratio": JPEG_BLOCKS,
        "max_jpeg_lattice": JPEG_LATTICE,
        "max_stripe_ratio": 20.0,
    },
    "microglia": {
        # phantoms at 0.2 um, the EMBL Iba1 images at 0.755 um
        "pixel_size_um": (0.1, 0.8),
        "bit_depth": (8, 12, 16),
        "max_saturated_fraction": 0.01,
    },
    "spines": {
        # two-photon simulations at 0.12 um, the SpineDetector frames at ~0.04 um; both binned
        # 2-4x in benchmarks/validate_real.py part j (real to 0.16 um, simulated to 0.48 um:
        # simulated detection F1 0.83 at 0.24 um against 0.86 at 0.12 um, falling beyond; session 26)
        "pixel_size_um": (0.03, 0.25),
        "bit_depth": (8, 12, 16),
        # analysis.measure.spine_quality.spine_image_snr: the simulator's low SNR level (4.5 per
        # plane; detection F1 ~0.70, recall ~0.54) measures 5.5 (median), 4.0 at its 5th
        # percentile and 3.05 at its lowest over 237 images of the spine bank
        # (benchmarks/calibrate_spines_e2e.py quality, session 26). The SNR is per pixel: the
        # same tissue imaged with 2x larger pixels measures ~2x higher
        "min_snr": 3.0,
        "max_saturated_fraction": 0.01,
    },
}

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_MIN_FIT = 20  # fewer detected puncta than this: no truncated fit of the brightness


# --------------------------------------------------------------------------- acquisition


def bit_depth(image: np.ndarray) -> int | None:
    """Bit depth of integer image data: the smallest of 8, 12, 16 (or the dtype's) holding its maximum.

    A 12-bit camera's data stored as ``uint16`` reads 12 (its maximum is <= 4095).

    Parameters
    ----------
    image : ndarray
        Image of any shape.

    Returns
    -------
    int or None
        8, 12, 16 or the dtype's number of bits (e.g. 32) for integer data; None for
        floating-point data (the depth of the acquisition is unknown).

    Examples
    --------
    >>> bit_depth(np.array([[0, 4000]], np.uint16)), bit_depth(np.array([[0, 5000]], np.uint16))
    (12, 16)
    >>> bit_depth(np.zeros((2, 2), np.float32)) is None
    True
    """
    a = np.asarray(image)
    if not np.issubdtype(a.dtype, np.integer):
        return None
    top = int(a.max()) if a.size else 0
    for bits in (8, 12, 16):
        if bits <= a.dtype.itemsize * 8 and top < 2**bits:
            return bits
    return a.dtype.itemsize * 8


def integer_saturation_level(image: np.ndarray) -> int:
    """Saturation level of integer data: the dtype's maximum, or the image's maximum when that
    is a smaller full scale ``2**k - 1`` (k = 8, 10, 12, 14: a 12-bit camera's data in a
    ``uint16`` container saturate at 4095).

    Examples
    --------
    >>> integer_saturation_level(np.array([[3, 4095]], np.uint16))
    4095
    >>> integer_saturation_level(np.array([[3, 4000]], np.uint16))
    65535
    """
    a = np.asarray(image)
    full = int(np.iinfo(a.dtype).max)
    top = int(a.max())
    return top if top < full and top + 1 in {2**k for k in (8, 10, 12, 14)} else full


def saturated_fraction(image: np.ndarray, dtype_max: float | None = None) -> float:
    """Fraction of pixels at the saturation level of the detector.

    Parameters
    ----------
    image : ndarray
        Image of any shape.
    dtype_max : float, optional
        Saturation level.  Default, integer data: the dtype's maximum, or the image's maximum
        when that is a smaller full scale ``2**k - 1`` (k = 8, 10, 12, 14: e.g. 12-bit data in a
        ``uint16`` container saturates at 4095).  Default, floating-point data: the image's
        maximum when at least 3 pixels share it (a clipped export; a natural float image has
        a unique maximum), else nothing is saturated.

    Returns
    -------
    float
        Fraction of pixels (0-1) at or above the level.

    Examples
    --------
    >>> img = np.zeros((10, 10), np.uint8)
    >>> img[:2] = 255
    >>> saturated_fraction(img)
    0.2
    >>> img12 = np.full((10, 10), 100, np.uint16)
    >>> img12[0, :5] = 4095
    >>> saturated_fraction(img12)
    0.05
    >>> saturated_fraction(np.linspace(0, 1, 100).reshape(10, 10))
    0.0
    """
    a = np.asarray(image)
    if a.size == 0:
        return 0.0
    if dtype_max is not None:
        return float(np.mean(a >= dtype_max))
    return float(np.mean(saturated_mask(a)))


def saturated_mask(image: np.ndarray) -> np.ndarray:
    """Pixels at the detector's saturation level (the default of :func:`saturated_fraction`).

    Integer data: at or above :func:`integer_saturation_level`; floating-point data: the
    infinite pixels if any, else the pixels at the image's maximum when at least 3 share it.

    Examples
    --------
    >>> saturated_mask(np.array([[3, 255, 255]], np.uint8)).tolist()
    [[False, True, True]]
    """
    a = np.asarray(image)
    if a.size == 0:
        return np.zeros(a.shape, bool)
    if np.issubdtype(a.dtype, np.integer):
        return a >= integer_saturation_level(a)
    top = a.max()
    if not np.isfinite(top):
        return np.isinf(a)
    at = a == top
    return at if np.count_nonzero(at) >= 3 else np.zeros(a.shape, bool)


# --------------------------------------------------------------------------- brightness


def fit_brightness(puncta: pd.DataFrame, threshold_sd: float | None = None) -> dict[str, Any]:
    """Brightness distribution of an image's puncta, corrected for the undetected faint ones.

    Brightness is expressed in units of each punctum's own amplitude noise SD: the
    detection SNR ``snr`` of :func:`analysis.measure.puncta.detect_puncta` (fitted amplitude over
    its noise SD).  In these units the detector's selection is one sharp cut at
    ``threshold_sd`` for every punctum, and uneven illumination (which scales amplitude
    and, as shot noise, its noise) largely cancels.  The detected puncta are then a
    truncated, noisy sample: the true SNRs ``Z`` are modelled as lognormal,
    ``log Z ~ N(mu, sigma^2)``, each measured with unit Gaussian error, ``snr ~ N(Z, 1)``,
    and kept when ``snr >= threshold_sd``.  ``mu`` and ``sigma`` maximise the likelihood of
    the detected SNRs given their detection, evaluated on a fine grid of ``log Z``.  At high
    SNR this is close to a plain lognormal fit; at low SNR (a quarter of the puncta below the
    threshold) a plain fit would overstate the brightness and the recall of a spike-in drawn
    from it.  (False detections pile up just above the threshold and pull the fit towards
    fainter puncta; the spike-in recall is then slightly pessimistic.)

    With fewer than 20 detected puncta the fit is not attempted: the model is the lognormal
    with the detected SNRs' median and log-SD (0.4 when fewer than 3), ``method`` says
    ``"detected"``, and the recall of a spike-in drawn from it is optimistic (the faint end
    is missing).

    Parameters
    ----------
    puncta : DataFrame
        Detected puncta with ``intensity``, ``snr`` and ``noise_sd``.
    threshold_sd : float, optional
        Detection threshold in noise SDs (default: ``puncta.attrs["threshold_used"]``, the
        threshold the detector applied, else ``puncta.attrs["threshold_sd"]``, else 4).

    Returns
    -------
    dict
        ``mu``, ``sigma`` (of log detection SNR), ``mean_snr`` (``exp(mu + sigma^2/2)``),
        ``peak_per_sd`` (median ratio of a punctum's amplitude noise SD to the local pixel
        noise SD: converts a detection SNR to peak height / pixel noise SD), ``model_recall``
        (share of the modelled population detected under the noise model alone, without
        crowding or clutter: a cross-check of the spike-in), ``n`` (puncta used) and
        ``method`` (``"truncated"``; ``"detected"``: the detected puncta's own log-SNR median
        and SD, no ``model_recall``, when there are too few puncta for the fit or the fit
        leaves its grid; ``"none"``: no puncta).

    Examples
    --------
    True SNRs lognormal around 6, measured with unit noise, cut at 4:

    >>> rng = np.random.default_rng(0)
    >>> z = rng.lognormal(np.log(6.0), 0.4, 4000)
    >>> snr = z + rng.standard_normal(z.size)
    >>> det = snr >= 4.0
    >>> p = pd.DataFrame({"intensity": 3 * snr[det], "snr": snr[det], "noise_sd": 1.0})
    >>> b = fit_brightness(p, threshold_sd=4.0)
    >>> round(float(np.exp(b["mu"])), 1), round(b["sigma"], 2), round(b["model_recall"], 2)
    (5.9, 0.41, 0.81)
    >>> round(float(det.mean()), 2)  # the true share detected
    0.82
    >>> round(float(np.exp(np.log(snr[det]).mean())), 1)  # the detected ones alone: too bright
    6.8
    """
    # the detector may raise its threshold above threshold_sd (noise false-discovery step):
    # the brightness distribution is truncated where it actually cut
    t = float(threshold_sd if threshold_sd is not None
              else puncta.attrs.get("threshold_used", puncta.attrs.get("threshold_sd", 4.0)))
    if not np.isfinite(t):
        t = float(puncta.attrs.get("threshold_sd", 4.0))
    empty = {"mu": np.nan, "sigma": np.nan, "mean_snr": np.nan, "peak_per_sd": np.nan, "model_recall": np.nan,
             "n": 0, "method": "none"}
    if len(puncta) == 0:
        return empty
    a = puncta["intensity"].to_numpy(float)
    z = puncta["snr"].to_numpy(float)
    noise = puncta["noise_sd"].to_numpy(float) if "noise_sd" in puncta else np.full(len(a), np.nan)
    ok = (a > 0) & (z > 0) & np.isfinite(a) & np.isfinite(z)
    if not ok.any():
        return empty
    a, z, noise = a[ok], z[ok], noise[ok]
    ratio = (a / z) / noise
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    peak_per_sd = float(np.median(ratio)) if len(ratio) else np.nan
    lz = np.log(z)
    if len(z) < _MIN_FIT:
        mu = float(np.median(lz))
        sig = float(np.std(lz, ddof=1)) if len(z) >= 3 else 0.4
        return {"mu": mu, "sigma": sig, "mean_snr": float(np.exp(mu + sig**2 / 2)), "peak_per_sd": peak_per_sd,
                "model_recall": np.nan, "n": int(len(z)), "method": "detected"}
    # grid of log Z, step 0.01 (finer than the unit measurement error up to Z ~ 100), from where
    # detection is impossible (P < 1e-4 at Z = t - 3.7); the measured SNRs binned to 0.5 % (the
    # likelihood is a sum over bins with counts: the cost does not grow with the puncta)
    u = np.arange(np.log(max(t - 3.7, 0.05)), np.log(z.max()) + 1.0, 0.01)
    zz = np.exp(u)
    zb, cnt = np.unique(np.round(lz, 2), return_counts=True)
    k = np.exp(-0.5 * (np.exp(zb)[:, None] - zz[None, :]) ** 2)  # density of the measured SNR given Z
    d = special.ndtr(zz - t)  # P(detected | Z)

    def nll(theta: np.ndarray) -> float:
        mu, log_s = theta
        s = np.exp(log_s)
        f = np.exp(-0.5 * ((u - mu) / s) ** 2) / s
        return float(-cnt @ np.log(np.maximum(k @ f, 1e-300)) + len(z) * np.log(max(float(d @ f), 1e-300)))

    start = np.array([lz.mean(), np.log(max(lz.std(), 0.1))])
    res = optimize.minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-3, "maxiter": 400})
    mu, s = float(res.x[0]), float(np.clip(np.exp(res.x[1]), 0.05, 2.0))
    f = np.exp(-0.5 * ((u - mu) / s) ** 2)
    if not (np.isfinite(mu) and f.sum() > 0):
        # the fit left the grid (no population of true SNRs explains these puncta, e.g. a few
        # dozen maxima of a tiny stack): the detected ones' own summary, no modelled recall
        log.debug("brightness fit did not converge inside its grid (mu %.3g); detected puncta summarised", mu)
        mu, sig = float(np.median(lz)), float(np.std(lz, ddof=1))
        return {"mu": mu, "sigma": sig, "mean_snr": float(np.exp(mu + sig**2 / 2)), "peak_per_sd": peak_per_sd,
                "model_recall": np.nan, "n": int(len(z)), "method": "detected"}
    model_recall = float(d @ f / f.sum())
    return {"mu": mu, "sigma": s, "mean_snr": float(np.exp(mu + s**2 / 2)), "peak_per_sd": peak_per_sd,
            "model_recall": model_recall, "n": int(len(z)), "method": "truncated"}


def background_noise_sd(image: np.ndarray, puncta: pd.DataFrame, mask: np.ndarray | None = None) -> float:
    """Pixel noise SD at the image's background level, from the detector's photon-transfer fit.

    ``sqrt(alpha * level + beta)`` with ``noise_alpha``, ``noise_beta`` from ``puncta.attrs``
    and ``level`` the median of the image inside ``mask`` (puncta cover a few per cent of the
    pixels, so the median is the background); NaN without the fit attributes.

    Examples
    --------
    >>> p = pd.DataFrame(columns=["y", "x"])
    >>> p.attrs.update(noise_alpha=2.0, noise_beta=-191.0)  # gain 2, offset 100, read noise 3
    >>> round(background_noise_sd(np.full((8, 8), 150.0), p), 2)  # 25 photons
    10.44
    """
    alpha, beta = puncta.attrs.get("noise_alpha"), puncta.attrs.get("noise_beta")
    if alpha is None or beta is None:
        return float("nan")
    img = np.asarray(image)
    if not np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float64, copy=False)
    # (integer data keep their dtype: the median of the two middle values is taken in float64
    # either way, so no full-size float64 copy is needed)
    values = img[np.asarray(mask, bool)] if mask is not None and np.shape(mask) == img.shape else img.ravel()
    var = float(alpha) * float(np.median(values)) + float(beta) if values.size else float("nan")
    return float(np.sqrt(var)) if var > 0 else float("nan")


def image_snr(puncta: pd.DataFrame, brightness: dict[str, Any] | None = None, *,
              background_sd: float | None = None) -> float:
    """Signal-to-noise ratio of an image's puncta: mean peak height over the background noise SD.

    ``snr = mean peak amplitude of the puncta population / pixel-noise SD at the background``,
    averaged over the population *including* the puncta too faint to be detected: the mean
    detection SNR of the population (:func:`fit_brightness`) times ``peak_per_sd`` (the ratio
    of a punctum's amplitude noise SD to the local pixel noise SD) times the median local
    pixel noise SD at the puncta, over ``background_sd`` (:func:`background_noise_sd`; without
    it, the median pixel noise at the puncta, which is larger by the puncta's own shot noise,
    so the SNR of bright images reads ~10 % low).  This is the definition of the phantoms' SNR
    (:mod:`analysis.sim.phantoms`: mean amplitude over the noise SD at the mean background), so a
    measured value can be compared with the validated levels.  It differs from the detection
    ``snr`` of single puncta (``puncta_median_snr``: the fitted amplitude in units of its own
    noise SD, a matched-filter figure ~2.5x larger, and only over the puncta above the
    threshold).

    Parameters
    ----------
    puncta : DataFrame
        Detected puncta with ``intensity``, ``snr`` and ``noise_sd``.
    brightness : dict, optional
        Result of :func:`fit_brightness` (computed when not given).
    background_sd : float, optional
        Pixel noise SD at the background level.

    Returns
    -------
    float
        The SNR; NaN without puncta.
    """
    if len(puncta) == 0:
        return float("nan")
    b = brightness if brightness is not None else fit_brightness(puncta)
    snr = float(b["mean_snr"] * b["peak_per_sd"])
    if background_sd is not None and np.isfinite(background_sd) and background_sd > 0:
        snr *= float(np.median(puncta["noise_sd"].to_numpy(float))) / background_sd
    return snr


# --------------------------------------------------------------------------- spike-in


def _render(shape: tuple[int, int], pos: np.ndarray, amp: np.ndarray, sigma_px: np.ndarray,
            radius: int | None = None) -> np.ndarray:
    """Point-sampled 2-D Gaussians (peak ``amp``, isotropic sigma in pixels, truncated at
    4 sigma, or at ``radius`` pixels): the detector's own spot model (:func:`analysis.measure.puncta._render`)."""
    s = np.asarray(sigma_px, float)
    return render_spots(shape, np.asarray(pos, float), np.asarray(amp, float), np.column_stack([s, s]),
                        None if radius is None else np.array([radius, radius]))


def _puncta_model(shape: tuple[int, int], puncta: pd.DataFrame, pixel_size_um: float,
                  origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The puncta rendered on the pixels ``origin + [0, shape)`` of their image (each spot within
    4 times the largest sigma of all puncta, whatever part of the image is rendered)."""
    if len(puncta) == 0:
        return np.zeros(shape)
    pos = puncta[["y", "x"]].to_numpy(float)
    sigma_px = puncta["sigma_um"].to_numpy(float) / pixel_size_um
    amp = puncta["intensity"].to_numpy(float)
    r = int(np.ceil(4 * sigma_px.max()))
    if tuple(origin) != (0, 0):
        # only the spots reaching the part; positions relative to it (origin even, so that the
        # nearest pixel of a spot shifts with it under round-half-to-even)
        near = np.all((np.rint(pos) >= np.array(origin) - r) & (np.rint(pos) <= np.array(origin) + shape + np.array(r) - 1),
                      axis=1)
        pos, sigma_px, amp = pos[near] - np.array(origin, float), sigma_px[near], amp[near]
        if len(pos) == 0:
            return np.zeros(shape)
    return _render(shape, pos, amp, sigma_px, radius=r)


def _strip_rows(width: int, strip_px: int | None) -> int:
    """Rows per strip of a float64 work array: ``strip_px``, or ~2 MB worth of rows (>= 32)."""
    return int(strip_px) if strip_px is not None else max(32, (1 << 18) // max(int(width), 1))


def _level_at(image: np.ndarray, sigma: float, points: np.ndarray, fn: Callable[[np.ndarray], np.ndarray],
              strip_px: int | None = None) -> np.ndarray:
    """``fn`` of the image blurred by ``sigma`` (reflecting edges), linearly interpolated at
    ``points`` (YX, nearest edge value beyond the image): ``map_coordinates(fn(blur), points,
    order=1, mode="nearest")`` without the full-size maps (the blur is computed in strips of
    ``strip_px`` rows around the points, default ~2 MB of float64 each, with the kernel's
    margin; the same values, to rounding).  ``fn`` may work in place on the blur it is given."""
    out = np.zeros(len(points))
    if len(points) == 0:
        return out
    h = image.shape[0]
    step = _strip_rows(image.shape[1], strip_px)
    margin = int(4.0 * float(sigma) + 0.5) + 2
    row = np.clip(np.floor(points[:, 0]).astype(int), 0, h - 1)
    for y0 in range(0, h, step):
        y1 = min(h, y0 + step)
        sel = (row >= y0) & (row < y1)
        if not sel.any():
            continue
        c0, c1 = max(0, y0 - margin), min(h, y1 + 1 + margin)
        val = fn(_filters.gaussian_filter(np.asarray(image[c0:c1], dtype=np.float64), sigma, mode="reflect"))
        out[sel] = ndi.map_coordinates(val, (points[sel] - [c0, 0]).T, order=1, mode="nearest")
        del val
    return out


def _pixel_noise_sd_at(image: np.ndarray, pixel_size_um: float, puncta: pd.DataFrame
                       ) -> Callable[[np.ndarray], np.ndarray]:
    """Pixel noise SD on the scale of the detector's ``noise_sd`` column, as a function of
    points (YX pixels, linearly interpolated).

    The detector's Poisson-Gaussian fit (``noise_alpha``, ``noise_beta``) evaluated at the
    image blurred by 0.42 um (about the detector's local level), rescaled so that its median
    ratio to the ``noise_sd`` of the detected puncta is 1; without the fit attributes,
    :func:`analysis.measure.noise.noise_sd_map`.  Evaluated at the points only (no full-size map
    is kept: :func:`_level_at`).
    """
    alpha, beta = puncta.attrs.get("noise_alpha"), puncta.attrs.get("noise_beta")
    if alpha is None or beta is None:
        full, _ = noise_sd_map(image, pixel_size_um)

        def at(points: np.ndarray, scale: float = 1.0) -> np.ndarray:
            return ndi.map_coordinates(full * scale, np.asarray(points, float).T, order=1, mode="nearest")
    else:
        sigma = 0.42 / pixel_size_um
        # the floor is relative to the median variance over the image (exact, strip by strip)
        floor = max(_median_variance(image, sigma, float(alpha), float(beta)) * 1e-2, 1e-12)

        def at(points: np.ndarray, scale: float = 1.0) -> np.ndarray:
            def sd(level: np.ndarray) -> np.ndarray:
                # sqrt(max(alpha * level + beta, floor)) * scale, in place on the strip's blur
                level *= float(alpha)
                level += float(beta)
                np.maximum(level, floor, out=level)
                np.sqrt(level, out=level)
                if scale != 1.0:
                    level *= scale
                return level
            return _level_at(image, sigma, np.asarray(points, float).reshape(-1, 2), sd)

    factor = 1.0
    if len(puncta) and "noise_sd" in puncta:
        ratio = puncta["noise_sd"].to_numpy(float) / at(puncta[["y", "x"]].to_numpy(float))
        ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
        if len(ratio):
            factor = float(np.median(ratio))
    return lambda points: at(points, factor)


def _median_variance(image: np.ndarray, sigma: float, alpha: float, beta: float, strip_px: int | None = None) -> float:
    """``np.median(alpha * blur + beta)`` over the image (blur: Gaussian of ``sigma``, reflecting
    edges), exactly, without a full-size map: the blur is computed in strips of ``strip_px``
    rows (default ~2 MB of float64 each) with the kernel's margin: once for the range, then
    twice in :func:`analysis.measure.area._exact_medians` (counts per bin, then the values of
    the bins that hold the middle ranks)."""
    h = image.shape[0]
    strip_px = _strip_rows(image.shape[1], strip_px)
    margin = int(4.0 * float(sigma) + 0.5) + 2

    def strips():
        for y0 in range(0, h, strip_px):
            y1 = min(h, y0 + strip_px)
            c0, c1 = max(0, y0 - margin), min(h, y1 + margin)
            blur = _filters.gaussian_filter(np.asarray(image[c0:c1], dtype=np.float64), sigma, mode="reflect")
            v = blur[y0 - c0 : y1 - c0]
            v *= alpha  # (in place: the same values as alpha * v + beta)
            v += beta
            yield v.ravel()

    if h <= strip_px:
        return float(np.median(next(strips())))
    lo, hi = np.inf, -np.inf
    for v in strips():
        lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    if not lo < hi:
        return lo
    return _exact_medians(lambda: ((v,) for v in strips()), 1, lo, hi)[0]


def flipped_surrogate(
    image: np.ndarray, pixel_size_um: float, puncta: pd.DataFrame, *, smoothing_um: float = 1.0
) -> np.ndarray:
    """The image with its detected puncta kept and everything finer than ``smoothing_um`` sign-flipped.

    With ``M`` the detected puncta rendered as Gaussians (their fitted positions, peak
    ``intensity`` and ``sigma_um``), ``R = image - M`` the residual and ``S`` its Gaussian blur
    of ``smoothing_um``, the surrogate is ``S - (R - S) + M``.  Pixel noise is symmetric, so
    the flipped residual has the image's noise (same variance at the same level, and white
    over the detector's pass band: the notch of ``2 G - 1`` lies at wavelengths of a few
    ``smoothing_um``, far beyond the detector's background radius); symmetric clutter such
    as neuropil texture is flipped into texture.  But every bright structure the detector did
    not explain -- faint puncta it missed, out-of-focus light -- becomes a dip.  Puncta
    detected in the surrogate away from the kept ones and from anything added on purpose are
    therefore false detections that noise and symmetric clutter produce in this image.

    Parameters
    ----------
    image : ndarray
        YX intensities.
    pixel_size_um : float
        Pixel size.
    puncta : DataFrame
        The image's puncta (``y``, ``x``, ``intensity``, ``sigma_um``).
    smoothing_um : float
        Scale of the kept background (structures broader than this are not flipped).

    Returns
    -------
    ndarray of float64
        The surrogate image.
    """
    img = np.asarray(image, dtype=np.float64)
    model = _puncta_model(img.shape, puncta, pixel_size_um)
    resid = img - model
    smooth = ndi.gaussian_filter(resid, smoothing_um / pixel_size_um, mode="reflect")
    return 2.0 * smooth - resid + model


def _surrogate_window(image: np.ndarray, pixel_size_um: float, puncta: pd.DataFrame, window: tuple[slice, slice],
                      smoothing_um: float = 1.0) -> np.ndarray:
    """``flipped_surrogate(image, ...)[window]`` computed on the window and the margin of its
    blur only (the same values)."""
    sigma = smoothing_um / pixel_size_um
    margin = int(4.0 * sigma + 0.5) + 2
    lo, hi = [], []
    for sl, n in zip(window, image.shape):
        c0 = max(0, sl.start - margin)
        lo.append(c0 - c0 % 2)  # even (see :func:`_puncta_model`)
        hi.append(min(n, sl.stop + margin))
    crop = np.asarray(image[lo[0]:hi[0], lo[1]:hi[1]], dtype=np.float64)
    model = _puncta_model(crop.shape, puncta, pixel_size_um, origin=(lo[0], lo[1]))
    resid = crop - model
    smooth = ndi.gaussian_filter(resid, sigma, mode="reflect")
    inner = tuple(slice(sl.start - c0, sl.stop - c0) for sl, c0 in zip(window, lo))
    return 2.0 * smooth[inner] - resid[inner] + model[inner]


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n``.

    Examples
    --------
    >>> lo, hi = wilson_interval(45, 50)
    >>> round(lo, 3), round(hi, 3)
    (0.786, 0.957)
    """
    if n <= 0:
        return float("nan"), float("nan")
    z = float(special.ndtri(0.5 + level / 2))
    p = k / n
    den = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    lo = 0.0 if k <= 0 else max(0.0, centre - half)
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return lo, hi


def _edge_zone(shape: tuple[int, int], width: int) -> np.ndarray:
    """Pixels within ``width`` pixels of the border of an image of ``shape``."""
    zone = np.ones(shape, bool)
    zone[width:shape[0] - width, width:shape[1] - width] = False
    return zone


def _spike_positions(
    rng: np.random.Generator, allowed: np.ndarray, existing: np.ndarray, n: int, clearance_px: float,
    spacing_px: float,
) -> np.ndarray:
    """Up to ``n`` random positions in ``allowed``, >= clearance from ``existing`` and >= spacing apart."""
    cand_pix = np.flatnonzero(allowed)
    if len(cand_pix) == 0 or n == 0:
        return np.zeros((0, 2))
    m = 8 * n + 64
    pick = cand_pix[rng.integers(0, len(cand_pix), m)]
    pts = np.column_stack(np.unravel_index(pick, allowed.shape)).astype(float) + rng.uniform(-0.5, 0.5, (m, 2))
    return spaced_points(pts, existing, n, clearance_px, spacing_px)


def spaced_points(pts: np.ndarray, existing: np.ndarray, n: int, clearance_px: float, spacing_px: float
                  ) -> np.ndarray:
    """The first ``n`` of the candidate points ``pts`` (in order) that lie ``clearance_px`` or
    more from every ``existing`` point and ``spacing_px`` or more from the points kept before."""
    from scipy.spatial import cKDTree

    if len(existing) and len(pts):
        dist, _ = cKDTree(existing).query(pts)
        pts = pts[dist >= clearance_px]
    chosen: list[np.ndarray] = []
    for p in pts:
        if len(chosen) >= n:
            break
        if not chosen or np.min(np.hypot(*(np.asarray(chosen) - p).T)) >= spacing_px:
            chosen.append(p)
    return np.asarray(chosen).reshape(-1, 2)


def spike_in_recall(
    image: np.ndarray,
    pixel_size_um: float,
    puncta: pd.DataFrame,
    *,
    mask: np.ndarray | None = None,
    n_spikes: int | None = None,
    spike_fraction: float = 0.1,
    min_spikes: int = 30,
    rounds: int = 2,
    window_px: int | None = None,
    seed: int | np.random.SeedSequence | list[int] = 0,
    surrogate: bool = True,
    match_sigma: float = 1.5,
    clearance_sigma: float = 2.0,
    smoothing_um: float = 1.0,
    detect: Callable[..., pd.DataFrame] = detect_puncta,
    **detect_params: Any,
) -> dict[str, Any]:
    """Recall of the puncta detector on this image, by spiking in synthetic puncta.

    Synthetic puncta are added at known random positions and the detector is run again
    with the same parameters; the share of them found (one-to-one within ``match_sigma``
    punctum sigmas, :func:`analysis.measure.puncta.match_points`) estimates the recall on the
    image's own puncta:

    * **size**: Gaussians of the median ``sigma_um`` of the detected puncta (the image's
      measured punctum size), point-sampled like a scanning microscope;
    * **brightness**: detection SNRs drawn from the image's puncta population,
      :func:`fit_brightness` (a lognormal fitted to the detected SNRs with the undetected
      faint end restored; with fewer than 20 puncta a plain fit to the detected ones, which
      overstates the recall), turned into peak heights with the local pixel noise SD
      (the photon-transfer fit of the detector at the spike's place), so that a spike is as
      detectable as a punctum of that SNR there;
    * **noise**: each spike adds its own shot noise, ``N(0, alpha * spike)`` with the
      detector's photon-transfer slope ``alpha`` (``puncta.attrs["noise_alpha"]``;
      none when the fit found no slope), so the noise stays ``alpha * I + beta``;
    * **place**: uniform over ``mask`` (the analysed area), at least ``clearance_sigma``
      sigmas from every detected punctum (no spike on top of a punctum) and twice that from
      each other; per round ``spike_fraction`` (10 %) of the detected puncta, but at least
      ``min_spikes / rounds`` (so a small field gets a denser spike-in, up to ~15 % of a
      cortical PSD95 density for 30 spikes in a 256 x 256 field at 0.1 um).

    With ``surrogate`` (default) the spikes are added to :func:`flipped_surrogate` of the
    image rather than to the image itself: the detected puncta and the background are
    kept, the noise is the image's own, sign-flipped.  The same detection run then also
    counts false detections: puncta found that match neither a spike nor a detected
    punctum of the image (one-to-one within ``clearance_sigma`` sigmas), inside ``mask``.
    This makes the precision estimate (:func:`estimated_precision`) cost no extra detection.
    On phantoms the recall agrees with that of spikes added to the image itself within the
    binomial error.

    Measured on phantom fields (:func:`analysis.sim.phantoms.render_synapse_field`, 256 x 256 at
    0.1 um, 8 fields per SNR level, 60 spikes in 2 rounds; true recall from matching the
    detections to the truth within 0.25 um; two detector versions): estimated minus true
    recall -0.01 to +0.01 at SNR 15 and 8, +0.02 to +0.05 at 4.5 and +0.07 to +0.10 at 3,
    the hardest level (there the true puncta, often in pairs or along dendrites, are lost
    more than isolated spikes, and the brightness model's faint end is a little short); RMS
    per field 0.02-0.03, 0.05-0.06 and 0.09-0.12.  With one round of 30 spikes in a 192 px
    window (:data:`analysis.pipeline.quantify.QUALITY_DEFAULTS`) the bias is ~0.01-0.02 larger.
    Estimated minus true precision: -0.01 to +0.04 (the false detections the phantoms'
    out-of-focus light causes are not counted, see :func:`estimated_precision`).

    Puncta near the image's edge are found less often (~0.85 within 0.5 um of it against
    ~0.97 inside, at SNR 8).  Spikes and false detections are therefore counted in two
    strata, within ``max(4 sigma, 0.5 um)`` of the edge of the image they were detected in
    and inside it, and the recall (and false-detection rate) is the mean of the strata
    weighted by the image's analysed area in each; the interval uses the effective number
    of spikes of these weights.  With ``window_px``, each round detects only in a random
    window of that many pixels square cut from the spiked surrogate, which bounds the cost
    of a large image at that of one small detection: the detector treats a cut edge as an
    image edge, so the same strata make the window's figures those of the whole image.

    Parameters
    ----------
    image : ndarray
        YX intensities (the image the puncta were detected on).
    pixel_size_um : float
        Pixel size.
    puncta : DataFrame
        The detected puncta of ``image`` (:func:`analysis.measure.puncta.detect_puncta` output:
        ``y``, ``x``, ``intensity``, ``sigma_um``, ``snr``, ``noise_sd``, attrs).
    mask : ndarray of bool, optional
        Analysed area (spikes are placed and false detections counted only there; default:
        the whole image).
    n_spikes : int, optional
        Least total number of spikes (default ``min_spikes``).
    spike_fraction : float
        Spikes per round as a fraction of the detected puncta in the analysed area (of the
        window).
    min_spikes : int
        Default least total number of spikes.
    rounds : int
        Detection runs (new positions, amplitudes and window each).
    window_px : int, optional
        Side of the detection window (default: the whole image).
    seed : int or sequence of int
        Seed of the positions, amplitudes, shot noise and windows.
    surrogate : bool
        Spike into the sign-flipped surrogate (and count false detections) or into the image.
    match_sigma, clearance_sigma : float
        Matching radius of a recovered spike, and the distance of spikes from detected
        puncta, in punctum sigmas.
    smoothing_um : float
        Background scale of :func:`flipped_surrogate`.
    detect : callable
        The detector (``detect(image, pixel_size_um, **detect_params)``).
    **detect_params
        Its parameters, as used on the image.

    Returns
    -------
    dict
        ``recall``, ``recall_ci_low``, ``recall_ci_high`` (Wilson 95 % interval of the
        binomial count; it does not include the uncertainty of the brightness model),
        ``n_spikes``, ``n_recovered``, ``n_effective`` (of the stratum weights),
        ``rounds``, ``spike_sigma_um``, ``brightness``
        (:func:`fit_brightness`); with ``surrogate`` also ``false_per_100um2`` (false
        detections per area of the analysed area searched) and ``false_detections`` (that
        rate times the analysed area of the image: the expected number among the image's
        counted puncta).  NaN figures when the image has no puncta or no room for spikes;
        ZYX stacks are not supported (NaN, logged).

    Examples
    --------
    >>> from analysis.sim.phantoms import render_synapse_field
    >>> f = render_synapse_field(np.random.default_rng(3), snr=8.0)
    >>> p = detect_puncta(f.image, 0.1)
    >>> r = spike_in_recall(f.image, 0.1, p, mask=f.analysed_mask, seed=0)
    >>> r["n_spikes"] >= 30, 0.8 < r["recall"] <= 1.0, 0.0 <= r["false_per_100um2"] < 5.0
    (True, True, True)
    """
    img = np.asarray(image)
    nan = float("nan")
    out: dict[str, Any] = {"recall": nan, "recall_ci_low": nan, "recall_ci_high": nan, "n_spikes": 0,
                           "n_recovered": 0, "n_effective": 0.0, "rounds": 0, "spike_sigma_um": nan,
                           "false_detections": nan, "false_per_100um2": nan}
    if img.ndim != 2:
        log.info("spike-in recall is only implemented for 2-D images (got shape %s)", img.shape)
        return out
    allowed = np.ones(img.shape, bool) if mask is None else np.asarray(mask, bool)
    if allowed.shape != img.shape:
        raise ValueError(f"mask shape {allowed.shape} does not match the image {img.shape}")
    brightness = fit_brightness(puncta)
    out["brightness"] = brightness
    if len(puncta) == 0 or not allowed.any():
        log.info("spike-in recall: no puncta (or no analysed area) to take size and brightness from")
        return out
    rng = np.random.default_rng(seed)
    sigma_um = float(np.median(puncta["sigma_um"]))
    sig = sigma_um / pixel_size_um
    out["spike_sigma_um"] = sigma_um
    pos_det = puncta[["y", "x"]].to_numpy(float)
    det_pix = np.clip(np.rint(pos_det).astype(int), 0, np.array(img.shape) - 1)
    alpha = float(puncta.attrs.get("noise_alpha", 0.0) or 0.0)
    # (the noise map and the surrogate are evaluated where needed: no full-size float maps)
    noise_sd_at = _pixel_noise_sd_at(img, pixel_size_um, puncta)
    least = math.ceil((n_spikes if n_spikes is not None else min_spikes) / max(int(rounds), 1))
    h, w = img.shape
    wy, wx = (h, w) if window_px is None else (min(h, int(window_px)), min(w, int(window_px)))
    # puncta near an edge are found less often (a centre re-fitted beyond it is dropped): the
    # detector cannot tell a window's cut edge from the image's, so the results are split into
    # an edge stratum (within ``edge`` pixels of the detection image's edge) and the interior,
    # and recombined with the share of the image's analysed area near its own edges
    edge = int(math.ceil(max(4.0 * sig, 0.5 / pixel_size_um)))
    f_edge = float((allowed & _edge_zone(img.shape, edge)).sum()) / float(allowed.sum())
    win_edge = _edge_zone((wy, wx), edge)
    hits: list[np.ndarray] = []
    at_edge: list[np.ndarray] = []
    false = np.zeros(2)  # interior, edge
    searched = np.zeros(2)
    for _ in range(max(int(rounds), 1)):
        y0, x0 = int(rng.integers(0, h - wy + 1)), int(rng.integers(0, w - wx + 1))
        win_allowed = allowed[y0:y0 + wy, x0:x0 + wx]
        rel = det_pix - [y0, x0]
        in_win = np.all((rel >= 0) & (rel < [wy, wx]), axis=1)
        n_in = int(win_allowed[tuple(rel[in_win].T)].sum())
        k = max(int(round(spike_fraction * n_in)), least)
        pos = _spike_positions(rng, win_allowed, pos_det - [y0, x0], k, clearance_sigma * sig,
                               2 * clearance_sigma * sig)
        if len(pos) == 0:
            continue
        z = np.exp(brightness["mu"] + brightness["sigma"] * rng.standard_normal(len(pos)))
        amp = z * brightness["peak_per_sd"] * noise_sd_at(pos + [y0, x0])
        spikes = _render((wy, wx), pos, amp, np.full(len(pos), sig))
        if alpha > 0:
            spikes = spikes + np.sqrt(alpha * spikes) * rng.standard_normal(spikes.shape)
        window = (slice(y0, y0 + wy), slice(x0, x0 + wx))
        base = (_surrogate_window(img, pixel_size_um, puncta, window, smoothing_um) if surrogate
                else np.asarray(img[window], dtype=np.float64))
        found = detect(base + spikes, pixel_size_um, **detect_params)
        fpos = found[["y", "x"]].to_numpy(float)
        m = match_points(fpos, pos, match_sigma * sig)
        hit = np.zeros(len(pos), bool)
        hit[m.pairs[:, 1]] = True
        hits.append(hit)
        at_edge.append(win_edge[tuple(np.rint(pos).astype(int).T)])
        if surrogate:
            rest = fpos[np.setdiff1d(np.arange(len(fpos)), m.pairs[:, 0])]
            kept = match_points(rest, pos_det - [y0, x0], clearance_sigma * sig)
            extra = rest[np.setdiff1d(np.arange(len(rest)), kept.pairs[:, 0])]
            ij = np.clip(np.rint(extra).astype(int), 0, [wy - 1, wx - 1])
            counted = win_allowed[tuple(ij.T)]
            false += np.bincount(win_edge[tuple(ij.T)][counted].astype(int), minlength=2)
            searched += [(win_allowed & ~win_edge).sum(), (win_allowed & win_edge).sum()]
    if not hits:
        log.info("spike-in recall: no room for spikes in the analysed area")
        return out
    hit, at_edge = np.concatenate(hits), np.concatenate(at_edge)
    n_edge = int(at_edge.sum())
    # each spike stands for its stratum's share of the image (all interior when no spike fell
    # near an edge); the interval uses the effective number of spikes of these weights
    share = (1.0 - f_edge, f_edge) if 0 < n_edge < len(hit) else ((1.0, 0.0) if n_edge == 0 else (0.0, 1.0))
    wt = np.where(at_edge, share[1] / max(n_edge, 1), share[0] / max(len(hit) - n_edge, 1))
    recall = float(wt @ hit)
    n_eff = float(1.0 / (wt**2).sum())
    lo, hi = wilson_interval(recall * n_eff, n_eff)
    out.update({"recall": recall, "recall_ci_low": lo, "recall_ci_high": hi, "n_spikes": int(len(hit)),
                "n_recovered": int(hit.sum()), "n_effective": n_eff, "rounds": len(hits)})
    if surrogate and searched.sum():
        rate = np.divide(false, searched, out=np.zeros(2), where=searched > 0)  # per analysed pixel
        if searched[1] == 0:
            rate[1] = rate[0]
        if searched[0] == 0:
            rate[0] = rate[1]
        n_false = float(rate @ [allowed.sum() * (1.0 - f_edge), allowed.sum() * f_edge])
        out.update({"false_per_100um2": float(100.0 * n_false / (allowed.sum() * pixel_size_um**2)),
                    "false_detections": n_false})
    log.debug("spike-in: %d/%d recovered (recall %.3f), %s false detections expected", int(hit.sum()), len(hit),
              recall, out["false_detections"])
    return out


def estimated_precision(n_detected: int, false_detections: float) -> float:
    """Precision of a detection from the expected number of false detections among it.

    ``1 - false_detections / n_detected``, clipped to [0, 1] (NaN for no detections or an
    unknown false count).  ``false_detections`` comes from :func:`spike_in_recall`
    (sign-flipped surrogate, same area): it counts what noise and symmetric clutter make the
    detector report, not out-of-focus light or other one-signed structure, so it is an upper
    bound of the precision where such structure exists.

    Examples
    --------
    >>> estimated_precision(200, 10.0)
    0.95
    """
    if not n_detected or not np.isfinite(false_detections):
        return float("nan")
    return float(np.clip(1.0 - false_detections / n_detected, 0.0, 1.0))


# --------------------------------------------------------------------------- range


def in_validated_range(
    pixel_size_um: float,
    bit_depth: int | None,
    snr: float | None = None,
    *,
    saturated: float = 0.0,
    readout: str = "puncta",
    ranges: dict[str, dict[str, Any]] | None = None,
    noise_correlation: float | None = None,
    tie_ratio: float | None = None,
    block_ratio: float | None = None,
    jpeg_lattice: float | None = None,
    stripe_ratio: float | None = None,
) -> bool:
    """Whether an image's acquisition lies inside what the validation covered.

    Parameters
    ----------
    pixel_size_um : float
        Lateral pixel size (um).
    bit_depth : int or None
        :func:`bit_depth` of the data (None: floating-point data, not covered).
    snr : float, optional
        :func:`image_snr` (for spines :func:`analysis.measure.spine_quality.spine_image_snr`);
        required for readouts with a ``min_snr`` (NaN is outside).
    saturated : float
        :func:`saturated_fraction`.
    readout : str
        Key of ``ranges`` ("puncta", "microglia" or "spines").
    ranges : dict, optional
        The ranges (default :data:`VALIDATED_RANGE`).
    noise_correlation : float, optional
        :func:`analysis.measure.noise.noise_correlation`, for readouts with a
        ``max_noise_correlation`` (not checked when not given).
    tie_ratio : float, optional
        :func:`analysis.measure.noise.neighbour_tie_ratio`, for readouts with a
        ``max_tie_ratio`` (not checked when not given or NaN).
    block_ratio : float, optional
        :func:`analysis.measure.noise.jpeg_block_ratio`, for readouts with a
        ``max_block_ratio`` (not checked when not given or NaN).
    jpeg_lattice : float, optional
        :func:`analysis.measure.noise.jpeg_lattice`, for readouts with a
        ``max_jpeg_lattice`` (not checked when not given or NaN).
    stripe_ratio : float, optional
        :func:`analysis.measure.stripes.stripe_ratio` (the larger of rows and columns), for
        readouts with a ``max_stripe_ratio`` (not checked when not given or NaN).

    Returns
    -------
    bool

    Examples
    --------
    >>> in_validated_range(0.1, 16, 8.0)
    True
    >>> in_validated_range(100, 16, 8.0)  # nanometres typed as micrometres
    False
    """
    r = (ranges or VALIDATED_RANGE)[readout]
    lo, hi = r["pixel_size_um"]
    reasons = []
    if not (pixel_size_um is not None and lo <= float(pixel_size_um) <= hi):
        reasons.append(f"pixel size {pixel_size_um} um outside {lo}-{hi}")
    if bit_depth not in r["bit_depth"]:
        reasons.append(f"bit depth {bit_depth} not in {r['bit_depth']}")
    if "min_snr" in r and not (snr is not None and np.isfinite(snr) and snr >= r["min_snr"]):
        reasons.append(f"SNR {snr} below {r['min_snr']}")
    if saturated > r.get("max_saturated_fraction", 1.0):
        reasons.append(f"saturated fraction {saturated:.3g} above {r['max_saturated_fraction']}")
    if noise_correlation is not None and noise_correlation > r.get("max_noise_correlation", np.inf):
        reasons.append(f"pixel noise correlated ({noise_correlation:.3g} above {r['max_noise_correlation']})")
    if tie_ratio is not None and tie_ratio > r.get("max_tie_ratio", np.inf):
        reasons.append(f"neighbouring pixels tied ({tie_ratio:.3g} above {r['max_tie_ratio']}): median-filtered?")
    if block_ratio is not None and block_ratio > r.get("max_block_ratio", np.inf):
        reasons.append(f"8 x 8 pixel blocks ({block_ratio:.3g} above {r['max_block_ratio']}): a JPEG?")
    if jpeg_lattice is not None and jpeg_lattice > r.get("max_jpeg_lattice", np.inf):
        reasons.append(f"quantised block transforms ({jpeg_lattice:.3g} above {r['max_jpeg_lattice']}): a JPEG?")
    if stripe_ratio is not None and stripe_ratio > r.get("max_stripe_ratio", np.inf):
        reasons.append(f"stripes ({stripe_ratio:.3g} above {r['max_stripe_ratio']}): line noise or a column pattern")
    if reasons:
        log.debug("%s outside the validated range: %s", readout, "; ".join(reasons))
    return not reasons


# --------------------------------------------------------------------------- image row


def _detector_figure(puncta: pd.DataFrame, key: str, pixel_size_um: float) -> float | None:
    """A figure of the image that :func:`analysis.measure.puncta.detect_puncta` recorded in its
    table's ``attrs`` (``noise_correlation``, ``tie_ratio``), or None when the table does not
    carry it or was detected at another pixel size."""
    attrs = getattr(puncta, "attrs", {}) or {}
    if key not in attrs or attrs.get("pixel_size_um") != float(pixel_size_um):
        return None
    return float(attrs[key])


def _stripe_ratio(image: np.ndarray) -> float:
    """The largest :func:`~analysis.measure.stripes.stripe_ratio` of a plane's (or a stack's
    planes') rows and columns; NaN when none can be measured."""
    planes = np.asarray(image)
    values = [stripe_ratio(p, axis) for p in (planes if planes.ndim == 3 else [planes]) for axis in (0, 1)]
    values = [v for v in values if np.isfinite(v)]
    return float(max(values)) if values else float("nan")


def image_quality(
    image: np.ndarray,
    pixel_size_um: float,
    puncta: pd.DataFrame | None = None,
    *,
    mask: np.ndarray | None = None,
    n_detected: int | None = None,
    seed: int | list[int] = 0,
    detect_params: dict[str, Any] | None = None,
    readout: str = "puncta",
    spike_in: bool = True,
    snr: float | None = None,
    **spike_params: Any,
) -> dict[str, Any]:
    """Quality columns of one image row.

    Parameters
    ----------
    image : ndarray
        The channel the readout was measured on (YX; ZYX stacks get no spike-in).
    pixel_size_um : float
        Pixel size.
    puncta : DataFrame, optional
        Its detected puncta (puncta readout).
    mask : ndarray of bool, optional
        Analysed area.
    n_detected : int, optional
        Puncta counted in ``mask`` (default: counted here).
    seed : int or sequence of int
        Seed of the spike-in.
    detect_params : dict, optional
        Parameters the puncta were detected with.
    readout : str
        "puncta", or "microglia" / "spines" (no SNR, recall, precision).
    spike_in : bool
        Run the spike-in (one more detection).
    snr : float, optional
        The image's measured SNR for the validated range of readouts other than puncta (the
        spines readout's :func:`analysis.measure.spine_quality.spine_image_snr`).
    **spike_params
        Further arguments of :func:`spike_in_recall`.

    Returns
    -------
    dict
        ``saturated_fraction``, ``in_validated_range`` and, for puncta, ``measured_snr``,
        ``spike_in_recall``, ``spike_in_recall_ci_low``, ``spike_in_recall_ci_high``,
        ``est_precision``, ``noise_correlation``, ``tie_ratio``, ``block_ratio``, ``jpeg_lattice``,
        ``stripe_ratio`` (:func:`analysis.measure.stripes.stripe_ratio`, the larger of rows and
        columns, of the plane or the stack's planes: ~1 without stripes; the detector removes
        the offsets from 2).
    """
    sat = saturated_fraction(image)
    depth = bit_depth(image)
    if readout != "puncta" or puncta is None:
        return {"saturated_fraction": sat,
                "in_validated_range": in_validated_range(pixel_size_um, depth, snr, saturated=sat, readout=readout)}
    if np.ndim(image) == 2:
        # a padded plane (registration, stitching): the background, the spike-in and the
        # surrogate see the imaged edge's level where the fill was, as the detector did
        outside = not_imaged_mask(image, pixel_size_um)
        if outside is not None:
            image = fill_not_imaged(image, outside, pixel_size_um)
    if (getattr(puncta, "attrs", {}) or {}).get("stripes_removed"):
        # the offsets of whole rows or columns the detector removed (:mod:`analysis.measure.stripes`):
        # removed here too, so that the noise, the spike-in and the surrogate see what it saw
        image, _ = remove_stripes(image)
    brightness = fit_brightness(puncta)
    snr = image_snr(puncta, brightness, background_sd=background_noise_sd(image, puncta, mask))
    row: dict[str, Any] = {"measured_snr": snr, "spike_in_recall": np.nan, "spike_in_recall_ci_low": np.nan,
                           "spike_in_recall_ci_high": np.nan, "est_precision": np.nan}
    if spike_in:
        r = spike_in_recall(image, pixel_size_um, puncta, mask=mask, seed=seed, **spike_params,
                            **(detect_params or {}))
        if n_detected is None:
            n_detected = len(puncta)
            if mask is not None and len(puncta):
                m = np.asarray(mask, bool)
                iy = np.clip(np.rint(puncta["y"].to_numpy(float)).astype(int), 0, m.shape[0] - 1)
                ix = np.clip(np.rint(puncta["x"].to_numpy(float)).astype(int), 0, m.shape[1] - 1)
                n_detected = int(m[iy, ix].sum())
        row.update({"spike_in_recall": r["recall"], "spike_in_recall_ci_low": r["recall_ci_low"],
                    "spike_in_recall_ci_high": r["recall_ci_high"],
                    "est_precision": estimated_precision(n_detected, r["false_detections"])})
    row["saturated_fraction"] = sat
    # the figures the detector measured on this image and acted on (after its hot-pixel and
    # plane-gain repairs), or measured here: 146 ms for a 1024^2 plane, 0.7 s at 2048^2
    corr = _detector_figure(puncta, "noise_correlation", pixel_size_um)
    if corr is None:
        corr = noise_correlation(image, pixel_size_um)
    ties = _detector_figure(puncta, "tie_ratio", pixel_size_um)
    if ties is None:
        ties = neighbour_tie_ratio(image)
    blocks = _detector_figure(puncta, "block_ratio", pixel_size_um)
    if blocks is None:
        blocks = jpeg_block_ratio(image)
    lattice = _detector_figure(puncta, "jpeg_lattice", pixel_size_um)
    if lattice is None:
        lattice = jpeg_lattice(image)
    row["noise_correlation"] = corr
    row["tie_ratio"] = ties
    row["block_ratio"] = blocks
    row["jpeg_lattice"] = lattice
    stripes = _detector_figure(puncta, "stripe_ratio", pixel_size_um)
    row["stripe_ratio"] = stripes if stripes is not None else _stripe_ratio(image)
    row["in_validated_range"] = in_validated_range(pixel_size_um, depth, snr, saturated=sat, readout=readout,
                                                   noise_correlation=corr, tie_ratio=ties, block_ratio=blocks,
                                                   jpeg_lattice=lattice, stripe_ratio=row["stripe_ratio"])
    limits = VALIDATED_RANGE[readout]
    if row["stripe_ratio"] > limits.get("max_stripe_ratio", np.inf):
        log.warning("whole rows or columns of the image are offset from each other %.3g times as much as its pixel "
                    "noise explains (no stripes: ~1): the puncta detector removed the offsets, but stripes this strong "
                    "are beyond what the validation covers and this row is outside the validated range: correct the "
                    "camera's or scanner's line pattern at acquisition (a dark-frame or flat-field correction)",
                    row["stripe_ratio"])
    if blocks > limits.get("max_block_ratio", np.inf) or lattice > limits.get("max_jpeg_lattice", np.inf):
        log.warning("the image reads as a JPEG (steps on a grid of 8 x 8 pixel blocks %.3g times those elsewhere, "
                    "never compressed: ~1; its blocks' cosine transforms on a quantisation lattice %.3g, never "
                    "compressed: ~2.5): the puncta detector measured its noise on the filtered image instead, which "
                    "costs faint puncta; this row is outside the validated range: measure the original (TIFF) image",
                    blocks, lattice)
    if ties > VALIDATED_RANGE[readout].get("max_tie_ratio", np.inf):
        log.warning("neighbouring pixels are equal %.3g times as often as pixels 3 apart (independent noise: ~1): a "
                    "median-filtered image? The puncta detector measured its noise on the filtered image instead, "
                    "which costs faint puncta; this row is outside the validated range: measure the raw image", ties)
    if corr > VALIDATED_RANGE[readout].get("max_noise_correlation", np.inf):
        log.warning("the pixel noise is correlated between neighbouring pixels (%.3g, independent noise: 1): "
                    "a smoothed, median-filtered, interpolated or denoised image? The puncta detector measured "
                    "its noise on the filtered image instead, which costs faint puncta; this row is outside the "
                    "validated range: measure the raw image", corr)
    return row
