"""Pixel noise: the robust estimators every readout shares.

* :func:`robust_sd`: SD from the median absolute deviation (``MAD_TO_SD`` x MAD), robust to
  the signal in a minority of the values;
* :func:`noise_sd`: the noise SD of an image from Immerkaer's second-difference operator
  (:data:`IMMERKAER`), insensitive to smooth signal, edges and bright objects;
* :func:`noise_correlation`: whether the pixel noise is independent, as the models above
  assume (1), or correlated by smoothing, a median filter or interpolation (well above 1);
  :func:`neighbour_tie_ratio`: whether a median filter has copied values into neighbouring
  pixels (a correlation the former reads as mild); :func:`jpeg_block_ratio` and
  :func:`jpeg_lattice`: whether the image went through JPEG compression (its 8 x 8 pixel
  blocks; the quantised coefficients of their cosine transforms);
* :func:`noise_sd_map`: a spatially varying noise model (Poisson-Gaussian: variance linear
  in the local level, fitted per image in boxes), and :func:`background_corrected`, the
  smoothed image minus a broad background with its noise SD; used by the puncta detector,
  its analysed area and the quality measures.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from analysis.measure import filters as _filters

__all__ = ["MAD_TO_SD", "IMMERKAER", "robust_sd", "noise_sd", "noise_sd_map", "background_corrected",
           "noise_correlation", "neighbour_tie_ratio", "jpeg_block_ratio", "jpeg_lattice"]

log = logging.getLogger(__name__)

#: Median absolute deviation -> standard deviation for Gaussian data (1 / Phi^-1(3/4)).
MAD_TO_SD = 1.4826
#: Immerkaer's noise operator (difference of two Laplacians), scaled to unit noise gain: it
#: cancels any locally linear signal, and white noise of SD ``s`` comes out with SD ``s``.
IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]) / 6.0
#: :func:`noise_correlation` above which the pixel noise is taken as correlated (smoothed,
#: median-filtered, interpolated or denoised): a correlation over ~0.6 px (Gaussian
#: smoothing: 9.5 at 0.7 px, 37 at 1 px; 2x interpolation ~130).  Every validation set reads
#: 0.9-2.6 (the dense faint puncta of the culture fields and the crowded sim-fish spots the
#: highest: a dense field of faint puncta is itself a correlated field), so milder smoothing
#: (0.4-0.6 px: 1.3-4.6) and JPEG compression (quality 75: ~4) are not caught here, nor a 3 x 3
#: median (~3; :data:`TIED_NEIGHBOURS` is) (benchmarks/RESULTS.md, sessions 33, 35 and 36);
#: milder smoothing is taken by :data:`MILD_CORRELATION`.
CORRELATED_NOISE = 5.0
#: :func:`noise_correlation` above which an image's noise is taken as possibly mildly correlated
#: (Gaussian smoothing of 0.4-0.6 px reads 1.3-4.6, independent noise 0.9-1.1 on the
#: validation sets; dense faint puncta read up to ~2.6 with independent noise): the puncta
#: detector measures the noise on its filtered image as for :data:`CORRELATED_NOISE`, but at
#: most by the factor that Gaussian-smoothed noise of that figure would give (benchmarks/RESULTS.md,
#: sessions 42 and 43; in a stack from the lateral and the axial figure).
MILD_CORRELATION = 1.2
#: :func:`neighbour_tie_ratio` above which an image is taken as median-filtered (its pixel noise
#: correlated although :func:`noise_correlation` reads 3-4): raw images read 0.95-1.7 (every
#: validation set: sim-fish, our phantoms, the culture fields, five kinds of pure noise),
#: a 3 x 3 median 2.9-160 (benchmarks/RESULTS.md, session 35).
TIED_NEIGHBOURS = 2.5
#: :func:`jpeg_block_ratio` above which an image is taken as JPEG-compressed (its noise
#: quantised away block by block, what is left correlated within the blocks, although
#: :func:`noise_correlation` may read ~1): raw images read 1.00-1.03 (every validation set,
#: 106 planes: sim-fish, our phantoms, the culture fields, the EMBL microglia fields, pure
#: noise interpolated 2-4x), sparse bright spots saved as JPEG at quality 75-95 1.13-1.44, the
#: SpineDetector JPEG frames 1.01-1.9 (median 1.2) (benchmarks/RESULTS.md, session 39).
JPEG_BLOCKS = 1.1
_BLOCK_STRIP = 1024  # rows per strip of :func:`jpeg_block_ratio` (a multiple of 8)
#: :func:`jpeg_lattice` above which an image is taken as decoded from a JPEG.  A Rayleigh test:
#: where no lattice is, ``N R^2`` exceeds ``x`` with probability ``exp(-x)``, so the median
#: over the block transform's 63 coefficients, of the largest over 7 periods, stays near
#: ``ln 7 + 0.58 ~ 2.5``: 191 raw planes read at most 2.9 (sim-fish, our phantoms, five kinds
#: of noise, each also stretched to 8 bits and scaled by 16 and by 257, the culture and EMBL
#: microglia fields); the same saved as JPEG at quality 98 / 95 / 90 read 17 / 9.8 / 4.3 at
#: least (median 166 / 211 / 187; the lowest are sparse spots on a flat background or noise
#: clipped at zero, whose blocks are mostly flat: :func:`jpeg_block_ratio` sees those), the
#: SpineDetector frames 23-45 (benchmarks/RESULTS.md, session 39).
JPEG_LATTICE = 6.0
_LATTICE_PERIODS = np.arange(2, 9)  # quantisation steps tested (a larger step has a divisor here)
_LATTICE_BLOCKS = 512  # 8 x 8 blocks read (spread over the image)
_IMMERKAER_1D = np.array([1.0, -2.0, 1.0])
_IMMERKAER_WIDE_1D = np.array([1.0, 0.0, -2.0, 0.0, 1.0])  # (its taps 2 px apart)


def _wide_box_var(img: np.ndarray, nb: list[int], bs: list[int], start: tuple[int, int],
                  which: np.ndarray) -> np.ndarray:
    """:func:`_box_var` of Immerkaer's operator with its taps 2 px apart (on each plane) in the
    boxes ``which`` (a boolean over the boxes in the order of :func:`_blocks`) only: each box
    is read with the operator's margin, the array reflected at its edges."""
    lead = img.shape[:-2]
    n_planes = int(np.prod(lead)) if lead else 1
    flat = img.reshape((n_planes,) + img.shape[-2:])
    pad = np.pad(flat, ((0, 0), (2, 2), (2, 2)), mode="symmetric")
    plane, row, col = np.unravel_index(np.flatnonzero(which), (n_planes, nb[0], nb[1]))
    y = start[0] + row * bs[0]
    x = start[1] + col * bs[1]
    win = np.lib.stride_tricks.sliding_window_view(pad, (bs[0] + 4, bs[1] + 4), axis=(1, 2))
    w = win[plane, y, x]  # (boxes, bs + 4, bs + 4), windows of the padded image
    v = _IMMERKAER_WIDE_1D
    along_y = sum(v[i] * w[:, i : i + bs[0], :] for i in range(5) if v[i])
    out = sum(v[i] * along_y[:, :, i : i + bs[1]] for i in range(5) if v[i]) / 6.0
    return _box_var(out.reshape(len(out), -1))


def robust_sd(x: np.ndarray, max_samples: int = 200_000) -> float:
    """Noise SD from the median absolute deviation (robust to the signal in a few pixels).

    Parameters
    ----------
    x : ndarray
        Values (any shape).  Large arrays are subsampled on a regular grid to
        ``max_samples`` values.
    max_samples : int
        Largest number of values used.

    Returns
    -------
    float
        ``1.4826 * MAD`` (the SD for Gaussian data); the plain SD, or 1.0, when the MAD is 0
        (1.0 for no values).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(robust_sd(rng.normal(0, 2, 10_000)), 1)
    2.0
    """
    x = np.asarray(x).ravel()
    x = x[:: max(1, x.size // max_samples)]
    if x.size == 0:
        return 1.0
    med = np.median(x)
    return float(MAD_TO_SD * np.median(np.abs(x - med))) or float(np.std(x)) or 1.0


def noise_sd(image: np.ndarray) -> float:
    """Robust SD of the pixel noise of an image (Immerkaer's second-difference estimator).

    The image is filtered with :data:`IMMERKAER`, which cancels any locally linear signal;
    the median absolute value makes the estimate insensitive to edges and bright objects.

    Parameters
    ----------
    image : ndarray
        2-D image (a stack is measured plane by plane and the median returned).

    Returns
    -------
    float
        Noise SD in the image's units (1.0 for a constant image).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(100, 5, (256, 256)) + np.linspace(0, 50, 256)
    >>> round(noise_sd(img))
    5
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim > 2:
        return float(np.median([noise_sd(p) for p in img.reshape(-1, *img.shape[-2:])]))
    if min(img.shape) < 3:
        return robust_sd(img.astype(np.float64), max_samples=400_000)
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    c = ndi.correlate(img, k)[1:-1, 1:-1]
    s = float(np.median(np.abs(c)) * MAD_TO_SD / 6.0)
    return s if s > 0 else (robust_sd(c.astype(np.float64), max_samples=400_000) / 6.0 or 1.0)


def background_corrected(
    image: np.ndarray, pixel_size_um: float, *, smoothing_um: float, opening_um: float, background_um: float
) -> tuple[np.ndarray, float]:
    """Smoothed image minus a broad background, and the robust noise SD of the result.

    The background is a grey opening with a square of ``opening_um`` (removes objects
    smaller than that) blurred by a Gaussian of ``background_um``.  (Shared by the
    microglia and lysosome segmentations.)

    Parameters
    ----------
    image : ndarray
        Intensities, YX.
    pixel_size_um : float
        Pixel size.
    smoothing_um : float
        Gaussian smoothing (at least 0.5 pixel).
    opening_um : float
        Half side of the square of the grey opening.
    background_um : float
        Gaussian blur of the opened image.

    Returns
    -------
    signal : ndarray of float32
        Smoothed image minus background.
    sd : float
        :func:`robust_sd` of ``signal``.

    Examples
    --------
    >>> img = np.full((64, 64), 100.0)
    >>> img[30:33, 30:33] += 50
    >>> signal, sd = background_corrected(img, 0.2, smoothing_um=0.1, opening_um=1.0, background_um=2.0)
    >>> bool(signal[31, 31] > 20), float(abs(signal[5, 5])) < 1e-3
    (True, True)
    """
    img = np.asarray(image, dtype=np.float32)
    smooth = ndi.gaussian_filter(img, max(smoothing_um / pixel_size_um, 0.5))
    size = int(2 * opening_um / pixel_size_um) + 1
    background = ndi.gaussian_filter(ndi.grey_opening(smooth, size=size), background_um / pixel_size_um)
    signal = smooth - background
    return signal, robust_sd(signal)


def _blocks(a: np.ndarray, nb: list[int], bs: list[int], start: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(planes x boxes, pixels per box) view of the lateral boxes of a (Z)YX array: ``nb``
    boxes of ``bs`` pixels along the two lateral axes, the first at pixel ``start``."""
    (y0, x0) = start
    a = a[..., y0 : y0 + nb[0] * bs[0], x0 : x0 + nb[1] * bs[1]].reshape(-1, nb[0], bs[0], nb[1], bs[1])
    return np.moveaxis(a, 2, 3).reshape(-1, bs[0] * bs[1])


def noise_sd_map(
    image: np.ndarray, pixel_size_um: float, *, box_um: float = 3.0, level: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-pixel SD of the white pixel noise, from a Poisson-Gaussian model fitted to the image.

    The noise of each box of ``box_um`` (per plane of a stack) is the MAD of Immerkaer's
    residual (a second difference that cancels smooth signal, so puncta barely count).  The
    box variances are regressed on the box intensity level with a robust (Theil-Sen) line,
    ``var = alpha * level + beta`` (photon shot noise plus read noise), and the line is
    evaluated at every pixel.  When the boxes do not span enough intensity (or the slope is
    not positive), one global variance is used.

    Parameters
    ----------
    image : ndarray
        YX or ZYX intensities.
    pixel_size_um : float
        Lateral pixel size.
    box_um : float
        Box side for the local noise estimates.
    level : ndarray, optional
        Local intensity level at which the noise is evaluated (same shape as ``image``);
        default: the image blurred by 0.5 um.

    Returns
    -------
    sd : ndarray
        Noise SD per pixel (same shape as ``image``).
    info : dict
        ``alpha``, ``beta`` (the fitted line), ``zero_level`` (``-beta / alpha``: the
        intensity with no photons, i.e. the offset, NaN without a slope) and ``skew`` (the
        skewness of the pixel noise in the darkest quarter of the boxes, in [0, 2]);
        ``var_min``, ``var_max``: the variance range the line is clipped to;
        ``correlation``: :func:`noise_correlation` (of the darkest quarter of the boxes by
        ``level``); for a stack, ``plane_sd``: each plane's noise SD over the line's (its
        boxes' median), by which the map of that plane is scaled.

    Examples
    --------
    Shot noise at a gain of 2 (variance 4 x photons) on an offset of 100, brightening from
    left to right:

    >>> rng = np.random.default_rng(0)
    >>> photons = np.linspace(10, 100, 256)[None, :].repeat(256, 0)
    >>> img = rng.poisson(photons) * 2.0 + 100
    >>> sd, info = noise_sd_map(img, 0.1)
    >>> bool(abs(info["alpha"] / 2 - 1) < 0.1), round(float(np.median(sd / np.sqrt(4 * photons))), 1)
    (True, 1.0)
    """
    img = np.asarray(image, dtype=np.float64)
    if level is None:
        level = _filters.gaussian_filter(img, [0.0] * (img.ndim - 2) + [0.5 / pixel_size_um] * 2)
    resid = ndi.correlate(img, IMMERKAER.reshape((1,) * (img.ndim - 2) + (3, 3)), mode="reflect")
    nb, bs, start = _box_grid(img.shape, pixel_size_um, box_um)
    rb = _blocks(resid, nb, bs, start)
    del resid
    var = _box_var(rb)
    var[var <= _round_off_var(img)] = 0.0
    lev = np.median(_blocks(level, nb, bs, start), axis=1)
    ok = var > 0
    if not ok.any():
        sd0, info = _no_noise_info(img)
        return np.full(img.shape, sd0), info
    skew = _dark_skewness(rb[ok], lev[ok], var[ok])
    del rb
    info = _noise_line(var[ok], lev[ok], skew)
    dark = lev <= np.quantile(lev, 0.25)
    info["correlation"] = _correlation(var[dark], _wide_box_var(img, nb, bs, start, dark))
    if img.ndim == 3:
        info["plane_sd"] = _plane_sd_factors(info, var, lev, img.shape[0])
        v1, v2 = _axial_box_vars(img, nb, bs, start)
        info["axial_correlation"] = _axial_correlation(v1[dark], v2[dark])
    return _noise_at(info, level), info


def _box_grid(shape: tuple[int, ...], pixel_size_um: float,
              box_um: float) -> tuple[list[int], list[int], tuple[int, int]]:
    """Boxes of :func:`noise_sd_map`: their number and size (pixels) along the two lateral axes
    and the first box's pixel.  The boxes are centred on the image, with the pixels left over
    split evenly between both ends (an even number of them: the box size or count is adjusted
    by one where needed), so that a flipped or rotated image has the flipped or rotated boxes.

    Boxes of 3 um at 0.1 um: 9 of 28 px down, 2 px spare at each end; across an odd width,
    7 of 35 px, 5 px spare at each end:

    >>> _box_grid((256, 255), 0.1, 3.0)
    ([9, 7], [28, 35], (2, 5))
    """
    box = max(box_um / pixel_size_um, 8.0)
    nbs, sizes, starts = [], [], []
    for n in shape[-2:]:
        nb = max(1, int(round(n / box)))
        if n % 2 and nb % 2 == 0 and nb > 1:
            nb -= 1  # (an odd length needs an odd number of boxes for an even remainder)
        bs = n // nb
        if (n - nb * bs) % 2 and bs > 1:
            bs -= 1  # (nb is odd here: one pixel less per box makes the remainder even)
        nbs.append(nb)
        sizes.append(bs)
        starts.append((n - nb * bs) // 2)
    return nbs, sizes, (starts[0], starts[1])


def _correlation(var1: np.ndarray, var2: np.ndarray) -> float:
    """:func:`noise_correlation` from the box variances of Immerkaer's operator with its taps 1
    and 2 px apart (the darkest quarter of the boxes)."""
    v1, v2 = float(np.median(var1)), float(np.median(var2))
    return v2 / v1 if v1 > 0 else float("nan")


def _axial_box_vars(stack: np.ndarray, nb: list[int], bs: list[int],
                    start: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Box variances (:func:`_box_var`, boxes in the order of :func:`_blocks`) of the second
    difference along z with its taps 1 and 2 planes apart; NaN on the two planes at each end
    (whose differences reach beyond the stack)."""
    out = []
    for taps in (_IMMERKAER_1D, _IMMERKAER_WIDE_1D):
        v = _box_var(_blocks(ndi.correlate1d(stack, taps, axis=0, mode="reflect"), nb, bs, start))
        v = v.reshape(stack.shape[0], -1)
        v[:2] = v[-2:] = np.nan
        out.append(v.ravel())
    return out[0], out[1]


def _axial_correlation(var1: np.ndarray, var2: np.ndarray) -> float:
    """:func:`noise_correlation` along z from :func:`_axial_box_vars` (the darkest quarter of
    the boxes), squared: on the scale of the lateral figure, whose operator is the product of
    a second difference along each of two axes (NaN for a stack of fewer than 5 planes)."""
    ok = np.isfinite(var1)
    if not ok.any():
        return float("nan")
    return _correlation(var1[ok], var2[ok]) ** 2


def _box_var(rb: np.ndarray) -> np.ndarray:
    """Robust variance (MAD) of Immerkaer's residual in each box (rows of ``rb``)."""
    return (MAD_TO_SD * np.median(np.abs(rb - np.median(rb, axis=1, keepdims=True)), axis=1)) ** 2


def _round_off_var(img: np.ndarray) -> float:
    """Box variances up to this are floating-point round-off of Immerkaer's residual (which is
    exactly 0 on a locally linear signal), not noise: ``(64 eps max|img|)^2``.  Boxes with no
    noise at all (a JPEG compression's flat blocks, a noise-free rendering) read 1e-32-1e-30
    in an 8-bit image, took all the weight of the noise line and made its fit singular."""
    # (the extremes, not np.abs of the image: no full-size copy of a large image)
    top = max(abs(float(np.min(img))), abs(float(np.max(img)))) if np.size(img) else 0.0
    return (64.0 * np.finfo(np.float64).eps * (top if np.isfinite(top) and top > 0 else 1.0)) ** 2


def _no_noise_info(img: np.ndarray) -> tuple[float, dict[str, float]]:
    log.warning("no pixel noise found (noise-free image?); using 1 %% of the range as noise")
    sd0 = 1e-2 * float(np.ptp(img)) or 1.0
    return sd0, {"alpha": 0.0, "beta": sd0**2, "zero_level": np.nan, "skew": 0.0, "var_min": sd0**2,
                 "var_max": sd0**2}


def _noise_line(var: np.ndarray, lev: np.ndarray, skew: float) -> dict[str, float]:
    """The Poisson-Gaussian line of :func:`noise_sd_map` through the box variances ``var`` (> 0)
    against the box levels ``lev``."""
    v0 = float(np.median(var))
    alpha, beta = 0.0, v0
    vs = None
    # straight line through the medians of up to 16 equal-count intensity classes of boxes
    # (medians: robust to boxes crowded with puncta); kept if the slope is positive at 95 %
    n_cls = min(16, len(lev) // 3)
    if n_cls >= 3 and np.ptp(lev) > 0:
        order = np.argsort(lev)
        groups = np.array_split(order, n_cls)
        xs = np.array([np.median(lev[g]) for g in groups])
        vs = np.array([np.median(var[g]) for g in groups])
        if np.ptp(xs) > 0:
            # weighted by 1 / variance: a variance estimate's SD is proportional to the
            # variance, and the bright classes are the ones inflated by unresolved puncta
            # (floored at 1e-3 of the median class: a class of boxes with almost no noise, as
            # in an image whose noise a JPEG compression removed, took all the weight and the
            # fit's covariance was singular)
            w = 1.0 / np.maximum(vs, 1e-3 * float(np.median(vs)) + 1e-300)
            try:
                coef, cov = np.polyfit(xs, vs, 1, w=w, cov=True)
            except np.linalg.LinAlgError:  # (the classes' levels too close to fit a slope)
                coef, cov = np.zeros(2), np.full((2, 2), np.inf)
            if coef[0] > 2.0 * np.sqrt(max(cov[0, 0], 0.0)):
                alpha, beta = float(coef[0]), float(coef[1])
    # below the darkest class the line is an extrapolation (and a steep line from classes
    # inflated by unresolved puncta dives towards zero there): the noise of the darkest
    # class is the floor
    floor = float(vs[0]) if alpha > 0 else 0.25 * float(var.min())
    zero = -beta / alpha if alpha > 0 else np.nan
    return {"alpha": alpha, "beta": beta, "zero_level": float(zero), "skew": skew,
            "var_min": floor, "var_max": 4.0 * float(var.max())}


def _row_strips(n: int, strip: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Strips of rows ``[y0, y1)`` (at most ``strip`` rows each) with the rows ``[r0, r1)`` read
    around them (``margin`` more on each side, within ``0 .. n``)."""
    out = []
    for y0 in range(0, n, max(int(strip), 1)):
        y1 = min(n, y0 + max(int(strip), 1))
        out.append((y0, y1, max(0, y0 - margin), min(n, y1 + margin)))
    return out


def _gauss_radius(sigma: float) -> int:
    """Half width of scipy's Gaussian kernel of ``sigma`` (truncated at 4 SD)."""
    return int(4.0 * float(sigma) + 0.5)


def _noise_model(
    image: np.ndarray, pixel_size_um: float, *, box_um: float = 3.0, strip_px: int = 1024
) -> dict[str, float]:
    """The ``info`` of :func:`noise_sd_map` (the fitted noise line) without its full-size maps:
    the image is read in strips of rows of boxes (with the margin of the level's blur), so the
    memory is that of a strip.  The same boxes, box variances and levels as
    :func:`noise_sd_map`; the skewness is summed strip by strip (equal to ~1e-15)."""
    img = np.asarray(image)
    nd = img.ndim
    nb, bs, (top, left) = _box_grid(img.shape, pixel_size_um, box_um)
    sig = 0.5 / pixel_size_um
    margin = _gauss_radius(sig) + 2
    rows = max(1, int(strip_px) // bs[0])  # box rows per strip
    cols = slice(left, left + nb[1] * bs[1])
    kernel = IMMERKAER.reshape((1,) * (nd - 2) + (3, 3))

    def strip_maps(b0: int, b1: int, need_level: bool, wide: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        """The strip's boxes of Immerkaer's residual, and their levels (or, without
        ``need_level``, the variances of :func:`_wide_box_var` in its boxes ``wide`` and, for
        a stack, those of :func:`_axial_box_vars`)."""
        y0, y1 = top + b0 * bs[0], top + b1 * bs[0]
        r0, r1 = max(0, y0 - margin), min(img.shape[-2], y1 + margin)
        blk = np.asarray(img[..., r0:r1, :], dtype=np.float64)
        resid = ndi.correlate(blk, kernel, mode="reflect")[..., y0 - r0 : y1 - r0, cols]
        rb = _blocks(resid, [b1 - b0, nb[1]], bs)
        if not need_level:
            # (the strip's margin rows, or the image's reflected edge, around its boxes)
            wb = _wide_box_var(blk, [b1 - b0, nb[1]], bs, (y0 - r0, left), wide)
            axial = _axial_box_vars(blk[..., y0 - r0 : y1 - r0, cols], [b1 - b0, nb[1]], bs) if nd == 3 else None
            return rb, (wb, axial)
        level = _filters.gaussian_filter(blk, [0.0] * (nd - 2) + [sig] * 2)[..., y0 - r0 : y1 - r0, cols]
        return rb, np.median(_blocks(level, [b1 - b0, nb[1]], bs), axis=1)

    n_planes = int(np.prod(img.shape[:-2])) if nd > 2 else 1
    var_parts, lev_parts = [], []
    for b0 in range(0, nb[0], rows):
        b1 = min(nb[0], b0 + rows)
        rb, lev = strip_maps(b0, b1, True)
        var_parts.append(_box_var(rb).reshape(n_planes, b1 - b0, nb[1]))
        lev_parts.append(lev.reshape(n_planes, b1 - b0, nb[1]))
    var = np.concatenate(var_parts, axis=1).ravel()  # the order of :func:`_blocks`: plane, row, column
    lev = np.concatenate(lev_parts, axis=1).ravel()
    var[var <= _round_off_var(img)] = 0.0
    ok = var > 0
    if not ok.any():
        return _no_noise_info(np.array([float(img.min()), float(img.max())]))[1]
    # skewness of the darkest quarter of the boxes (:func:`_dark_skewness`), from power sums,
    # and the wide operator's variances there (:func:`noise_correlation`; of all boxes)
    dark = np.zeros(len(var), bool)
    dark[np.flatnonzero(ok)] = lev[ok] <= np.quantile(lev[ok], 0.25)
    dark_all = lev <= np.quantile(lev, 0.25)
    sums = np.zeros(4)
    wide_var = np.zeros(len(var))
    axial_var = np.full((2, len(var)), np.nan)
    grid = np.arange(len(var)).reshape(n_planes, nb[0], nb[1])
    for b0 in range(0, nb[0], rows):
        b1 = min(nb[0], b0 + rows)
        idx = grid[:, b0:b1].ravel()
        sel = dark[idx]
        if not (sel.any() or dark_all[idx].any()):
            continue
        rb, (wv, axial) = strip_maps(b0, b1, False, dark_all[idx])
        wide_var[idx[dark_all[idx]]] = wv
        if axial is not None:
            axial_var[:, idx] = axial
        if not sel.any():
            continue
        r = rb[sel] / np.sqrt(np.maximum(var[idx[sel]], 1e-300))[:, None]
        r = np.clip(r - np.median(r, axis=1, keepdims=True), -6.0, 6.0).ravel()
        sums += [r.size, r.sum(), (r**2).sum(), (r**3).sum()]
    skew = 0.0
    if sums[0] >= 100:
        n = sums[0]
        mean = sums[1] / n
        m2 = sums[2] / n - mean**2
        m3 = sums[3] / n - 3.0 * mean * sums[2] / n + 2.0 * mean**3
        if m2 > 0:
            skew = float(np.clip(6.0 * m3 / m2**1.5, 0.0, 2.0))
    info = _noise_line(var[ok], lev[ok], skew)
    info["correlation"] = _correlation(var[dark_all], wide_var[dark_all])
    if nd == 3:
        info["plane_sd"] = _plane_sd_factors(info, var, lev, img.shape[0])
        info["axial_correlation"] = _axial_correlation(axial_var[0, dark_all], axial_var[1, dark_all])
    return info


def _plane_sd_factors(info: dict[str, float], var: np.ndarray, lev: np.ndarray, n_planes: int) -> tuple[float, ...]:
    """Per plane of a stack, the noise SD of its boxes over the stack's fitted line (the square
    root of the median ratio of box variance to the line at the box level; 1 for a plane
    without boxes of noise).  The planes of a stack are taken one after another, and gain,
    laser power or bleaching can change between them: a plane noisier than the line says would
    have its noise maxima taken for puncta.  ``var`` and ``lev`` are the boxes of every plane,
    in the order of :func:`_blocks` (plane first)."""
    line = np.clip(info["alpha"] * lev + info["beta"], info["var_min"], info["var_max"])
    ratio = (var / line).reshape(n_planes, -1)
    out = []
    for r, v in zip(ratio, var.reshape(n_planes, -1)):
        r = r[v > 0]
        out.append(float(np.sqrt(np.median(r))) if len(r) else 1.0)
    return tuple(out)


def _noise_at(info: dict[str, float], level: np.ndarray) -> np.ndarray:
    """The fitted noise line of :func:`noise_sd_map` evaluated at another intensity level (a
    stack's planes each scaled by their own factor, ``info["plane_sd"]``, when it has them)."""
    sd = np.sqrt(np.clip(info["alpha"] * level + info["beta"], info["var_min"], info["var_max"]))
    planes = info.get("plane_sd")
    if planes is not None and np.ndim(level) == 3 and len(planes) == np.shape(level)[0]:
        sd *= np.asarray(planes)[:, None, None]
    return sd


def _dark_skewness(resid_blocks: np.ndarray, level: np.ndarray, var: np.ndarray) -> float:
    """Skewness of the pixel noise, from Immerkaer's residual in the darkest quarter of the
    boxes (fewest puncta; the shot noise is most skewed there).  For independent pixel noise
    the residual (kernel weights ``k``, ``sum k^2 = 1``, ``sum k^3 = 1/6``) has 1/6 of the
    pixels' skewness.  Residuals are winsorised at 6 robust SDs (a few puncta must not
    decide) and the result is clipped to [0, 2] (a photon count of 1/4 per pixel, or noise
    clipped at zero over half the pixels; more than that is punctate structure of the dark
    regions rather than noise)."""
    dark = level <= np.quantile(level, 0.25)
    r = resid_blocks[dark] / np.sqrt(np.maximum(var[dark], 1e-300))[:, None]
    r = np.clip(r - np.median(r, axis=1, keepdims=True), -6.0, 6.0).ravel()
    if r.size < 100:
        return 0.0
    m2 = float(np.mean((r - r.mean()) ** 2))
    if m2 <= 0:
        return 0.0
    g = float(np.mean((r - r.mean()) ** 3)) / m2**1.5
    return float(np.clip(6.0 * g, 0.0, 2.0))


def neighbour_tie_ratio(image: np.ndarray) -> float:
    """How much more often a pixel equals its right-hand neighbour than the pixel three to its
    right: ~1 for independent pixel noise, more where the signal is smooth on the scale of the
    noise's quantisation, and far more after a median filter, which copies one value into
    neighbouring pixels (:data:`TIED_NEIGHBOURS`).  Pixels at the image's lowest or highest value
    (clipped) are left out.  NaN when fewer than 100 pixels tie with either neighbour.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> noise = (rng.poisson(50, (256, 256)) * 3 + 500).astype(np.uint16)
    >>> bool(0.8 < neighbour_tie_ratio(noise) < 1.2), bool(neighbour_tie_ratio(ndi.median_filter(noise, 3)) > 3)
    (True, True)
    """
    a = np.asarray(image)
    lo, hi = a.min(), a.max()
    left = a[..., :-3]
    valid = (left != lo) & (left != hi)
    ties = []
    for right in (a[..., 1:-2], a[..., 3:]):
        ties.append(int(np.count_nonzero((right == left) & valid & (right != lo) & (right != hi))))
    if ties[0] + ties[1] < 100:
        return float("nan")
    return ties[0] / max(ties[1], 1)


def jpeg_block_ratio(image: np.ndarray) -> float:
    """How much larger the steps between neighbouring pixels are at the boundaries of a grid of
    8 x 8 pixel blocks than anywhere else: ~1 for an image that never was a JPEG, more for one
    that was (the JPEG codec quantises each 8 x 8 block on its own, so the blocks do not meet
    smoothly; :data:`JPEG_BLOCKS`).

    Per axis, the mean absolute difference between neighbouring pixels is taken at each of the
    8 positions modulo 8 (over every row, or column, and plane); the figure is the largest over
    the second largest (a grid at any offset, as in a JPEG cropped after decoding; a pattern
    of period 2 or 4, as from interpolation, has two or four equal largest and reads 1), and
    the image's figure the smaller of its two axes' (the blocks are a grid in both).  NaN for
    an image narrower than 16 pixels.

    Parameters
    ----------
    image : ndarray
        YX or ZYX (or any ...YX) intensities.

    Returns
    -------
    float
        The ratio (1 when the image is constant).

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:128, :128]
    >>> raw = rng.poisson(100 + 2000 * np.exp(-((yy - 40.3) ** 2 + (xx - 70.6) ** 2) / 4.5))
    >>> img = np.rint(255 * (raw - raw.min()) / np.ptp(raw)).astype(np.uint8)  # one spot, 8 bits
    >>> buf = io.BytesIO()
    >>> Image.fromarray(img).save(buf, format="JPEG", quality=90)
    >>> jpeg = np.asarray(Image.open(buf))
    >>> round(jpeg_block_ratio(img), 1), bool(jpeg_block_ratio(jpeg) > JPEG_BLOCKS)
    (1.0, True)
    """
    a = np.asarray(image)
    if a.ndim < 2:
        return float("nan")
    h, w = a.shape[-2:]
    nx8, ny8 = ((w - 1) // 8) * 8, ((h - 1) // 8) * 8  # (the steps on whole periods of 8)
    if min(nx8, ny8) < 16:
        return float("nan")
    sums = np.zeros((2, 8))  # per axis (x, y), per position modulo 8
    # (plane by plane, in strips of rows: the memory of a strip, not of the image)
    for plane in a.reshape(-1, h, w):
        for r0 in range(0, h, _BLOCK_STRIP):
            rows = np.asarray(plane[r0 : r0 + _BLOCK_STRIP + 1], dtype=np.float32)
            n_own = min(_BLOCK_STRIP, h - r0)
            dx = np.abs(np.diff(rows[:n_own, : nx8 + 1], axis=1))
            sums[0] += dx.reshape(n_own, nx8 // 8, 8).sum(axis=(0, 1), dtype=np.float64)
            n_dy = max(0, min(n_own, ny8 - r0))  # (steps from rows r0 .. r0 + n_dy - 1 to the next)
            if n_dy:
                dy = np.abs(np.diff(rows[: n_dy + 1], axis=0))
                sums[1] += dy.reshape(n_dy // 8, 8, w).sum(axis=(0, 2), dtype=np.float64)
    out = []
    for m in sums:
        top = int(np.argmax(m))
        second = float(np.delete(m, top).max())
        out.append(float(m[top]) / second if second > 0 else (np.inf if m[top] > 0 else 1.0))
    return float(min(out))


def jpeg_lattice(image: np.ndarray) -> float:
    """How strongly the cosine-transform coefficients of the image's 8 x 8 pixel blocks sit on
    a lattice: ~2.5 for an image that never was a JPEG, tens to hundreds for one decoded from
    a JPEG of quality 98 or less, even where no block edges show (:data:`JPEG_LATTICE`).

    A JPEG stores each block's orthonormal 2-D DCT coefficients rounded to multiples of its
    quantisation table's steps; decoded (and rounded to integers), the blocks' coefficients lie
    within ~0.3 of those multiples (Fan & de Queiroz 2003, IEEE Trans. Image Process. 12:230,
    "Identification of bitmap compression history").  For each of the 63 AC coefficients, over
    up to 512 blocks on the grid from the top-left pixel (a JPEG decoded whole; spread evenly
    over the image, and over the planes of a stack) and every
    period ``q`` of 2-8, the coefficients of at least 1.5 ``q`` (those at 0 say nothing) give
    the Rayleigh statistic ``N R^2`` of their phases ``2 pi c / q`` (``R``: the length of the
    mean phasor, ``N``: how many; at least 30); the figure is the median over the
    coefficients of its largest over the periods.  Integer-valued images only (a decoded JPEG
    is): 0 for others, NaN for an image smaller than 8 x 8 pixels.

    Parameters
    ----------
    image : ndarray
        YX or ZYX (or any ...YX) intensities.

    Returns
    -------
    float

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> rng = np.random.default_rng(0)
    >>> img = rng.poisson(100, (128, 128)).clip(0, 255).astype(np.uint8)  # shot noise, 8 bits
    >>> buf = io.BytesIO()
    >>> Image.fromarray(img).save(buf, format="JPEG", quality=95)  # no visible blocks
    >>> jpeg = np.asarray(Image.open(buf))
    >>> bool(jpeg_lattice(img) < 5), bool(jpeg_lattice(jpeg) > JPEG_LATTICE)
    (True, True)
    """
    from scipy import fft

    a = np.asarray(image)
    if a.ndim < 2 or min(a.shape[-2:]) < 8:
        return float("nan")
    h, w = a.shape[-2:]
    planes = a.reshape(-1, h, w)
    # (only the blocks read are gathered: spread evenly over the planes, rows and columns)
    nby, nbx = h // 8, w // 8
    total = len(planes) * nby * nbx
    pick = np.linspace(0, total - 1, min(total, _LATTICE_BLOCKS)).astype(int)
    plane, rest = np.divmod(pick, nby * nbx)
    by, bx = np.divmod(rest, nbx)
    off = np.arange(8)
    blocks = planes[plane[:, None, None], (8 * by)[:, None, None] + off[None, :, None],
                    (8 * bx)[:, None, None] + off[None, None, :]].astype(np.float64)
    if not np.issubdtype(a.dtype, np.integer) and not np.array_equal(blocks, np.round(blocks)):
        return 0.0
    c = fft.dctn(blocks, axes=(1, 2), norm="ortho").reshape(len(blocks), 64)[:, 1:]
    q = _LATTICE_PERIODS.astype(np.float32)
    c = c.astype(np.float32)  # (the phases need no more: coefficients lie within 0.3 of the lattice)
    use = np.abs(c)[:, :, None] >= 1.5 * q
    n = use.sum(axis=0)
    phase = (2.0 * np.pi / q) * c[:, :, None]
    stat = ((np.cos(phase) * use).sum(axis=0, dtype=np.float64) ** 2
            + (np.sin(phase) * use).sum(axis=0, dtype=np.float64) ** 2) / np.maximum(n, 1)
    best = np.where(n >= 30, stat, -1.0).max(axis=1)
    best = best[best >= 0]
    return float(np.median(best)) if len(best) >= 5 else 0.0


def noise_correlation(image: np.ndarray, pixel_size_um: float, *, box_um: float = 3.0) -> float:
    """How much of the pixel noise is correlated between neighbouring pixels: 1 when independent.

    Immerkaer's operator (:data:`IMMERKAER`) with its taps 2 px apart passes independent noise
    with the same variance as with its taps 1 px apart; noise correlated over a pixel or more
    (an image smoothed, median-filtered, interpolated or denoised) is cancelled by the 1 px
    operator much more than by the 2 px one.  Returned: the ratio of the two robust (MAD)
    variances, median over the darkest quarter of the boxes of :func:`noise_sd_map` (the
    fewest puncta: dense punctate staining adds to the 2 px variance too), as measured by
    :func:`noise_sd_map` (its ``info["correlation"]``; for a stack of 5 planes or more, the
    larger of that and the same figure along z, squared onto the lateral scale: noise
    interpolated or smoothed between planes).  Gaussian-smoothed independent noise
    gives ~1.3 / 2.2 / 9.5 / 37 at a smoothing sigma of 0.4 / 0.5 / 0.7 / 1 px, a 3 x 3 median
    ~3, 2x interpolation ~130 (benchmarks/RESULTS.md, session 33); above
    :data:`CORRELATED_NOISE` the puncta detector measures the noise on its filtered image (above
    :data:`MILD_CORRELATION`, bounded by what smoothed noise of that figure gives).

    Parameters
    ----------
    image : ndarray
        YX or ZYX intensities.
    pixel_size_um : float
        Lateral pixel size (sets the boxes).
    box_um : float
        Box side.

    Returns
    -------
    float
        The variance ratio (NaN when the image has no noise to measure).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> noise = rng.poisson(50.0, (256, 256)).astype(float)
    >>> round(noise_correlation(noise, 0.1), 1)
    1.0
    >>> bool(noise_correlation(ndi.gaussian_filter(noise, 1.0), 0.1) > 20)
    True
    """
    return _info_correlation(noise_sd_map(image, pixel_size_um, box_um=box_um)[1])


def _info_correlation(info: dict[str, Any]) -> float:
    """:func:`noise_correlation` from the ``info`` of :func:`noise_sd_map` or
    :func:`_noise_model`: the larger of its lateral and (stacks) axial figures, NaN when
    neither was measured."""
    vals = [float(v) for v in (info.get("correlation"), info.get("axial_correlation"))
            if v is not None and np.isfinite(v)]
    return max(vals) if vals else float("nan")
