"""Stripes: offsets shared by whole rows or columns of a plane, measured and removed.

A point scanner's line-to-line noise (laser power, a photomultiplier's DC level, line
averaging) and the fixed pattern of a CMOS camera's column and row amplifiers add an offset to
every pixel of one row or one column.  That is noise the pixel noise model does not know: it
is the same along the whole line, so a spot detector takes the brighter stretches of a bright
row for spots.  Pure Poisson noise (level 200) whose rows carry a gain jitter of 10 % of the
level gave 800-1,550 false puncta per 1,000 um^2 (two draws), 3 % gave 1.7-2.0; columns offset
by 10 % of the level 800-1,540 (``benchmarks/RESULTS.md``, session 55).

:func:`stripe_ratio` tests the rows (or the columns): each pixel minus the mean of the two
pixels above and the two below it, which removes what varies slowly from row to row (cells,
dendrites, haze, illumination); the level of that residual in each of :data:`N_SEGMENTS`
stretches of the row (their interquartile mean: robust to a punctum or a dendrite crossing the
stretch, and not stuck to the levels of quantised data as a median is); the median over the
stretches, so that structure crossing part of the row does not move it.  Without stripes the
rows' medians scatter no more than the stretches' scatter predicts for a median of ``K``
values.  The *stripe ratio* is the rows' robust spread over that prediction: about 1 for pixel
noise alone (at most 1.32 on every image of ``make validate`` and on 400 planes of the
simulated study, whose structure does not follow rows), 2.1-2.2 for a 1 % row gain jitter on
Poisson noise of level 200, 5.2-5.6 for 3 %, 14-18 for 10 %.  :func:`stripe_offsets` measures
the offsets (the same medians, deconvolved for the difference with the neighbouring rows, which
passes their line-to-line jumps whole and their slow drift, which the detectors' background
removal takes anyway, only in part).  :func:`remove_stripes` subtracts them where the ratio
reaches :data:`MIN_STRIPE_RATIO`: rows first, then columns; whole numbers for integer data,
which stay integers.  A plane without stripes is returned as it is (the same array), so its
detections do not change.

The offsets are additive.  A gain that varies from line to line (laser power) is an offset at
the background's level, which is where it makes false spots; over bright structure it leaves a
part proportional to the structure's light.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["N_SEGMENTS", "MIN_STRIPE_RATIO", "stripe_ratio", "stripe_offsets", "remove_stripes"]

log = logging.getLogger(__name__)

#: Stretches of a row whose medians are combined (each at least :data:`_MIN_SEGMENT_PX` long).
N_SEGMENTS = 8
_MIN_SEGMENT_PX = 32
#: Stripe ratio from which the offsets are removed: twice the spread that pixel noise gives.
MIN_STRIPE_RATIO = 2.0
#: Pixels per line that the test reads (every k-th pixel of a longer line): enough to see
#: offsets of a fifth of the pixel noise (ratio ~2.5), which make no false spots yet.
_TEST_PX = 256
#: The spread of the median of K normal values of unit spread, times sqrt(K) (simulated; an
#: even K takes the mean of the middle two); 0: large K (sqrt(pi / 2)).
_MEDIAN_SPREAD = {1: 1.0, 2: 1.0, 3: 1.160, 4: 1.092, 5: 1.198, 6: 1.133, 7: 1.216, 8: 1.161, 0: 1.2533}
#: Smallest regularisation of the offsets' deconvolution (:func:`stripe_offsets`; it is the
#: noise of the lines' medians over the pattern's power when larger): the residual against the
#: neighbouring lines keeps an offset pattern's line-to-line jumps whole and its slow drift,
#: which the detectors' background removal takes anyway, only in part.
_DECONVOLUTION_FLOOR = 1e-3


def _line_medians(lines: np.ndarray) -> np.ndarray:
    """Per line (row of ``lines``), the level of each stretch of its residual against the mean
    of the two lines above and the two below (lines x stretches; reflected at the ends): the
    interquartile mean, robust to the structure crossing a quarter of the stretch like a
    median, and not stuck to the levels of quantised data as a median is (8-bit data of a few
    photons per pixel: the medians' ratio took only the values 1.15 and 1.72)."""
    a = np.asarray(lines, np.float32)
    n, w = a.shape
    nb = np.pad(a, ((2, 2), (0, 0)), mode="reflect")
    resid = a - 0.25 * (nb[:-4] + nb[1:-3] + nb[3:-1] + nb[4:])
    k = max(1, min(N_SEGMENTS, w // _MIN_SEGMENT_PX))
    length = w // k
    lo, hi = length // 4, length - length // 4
    parts = np.partition(resid[:, : k * length].reshape(n, k, length), (lo, hi - 1), axis=2)
    return parts[:, :, lo:hi].mean(axis=2, dtype=np.float64)


def _lines(plane: np.ndarray, axis: int, stride: int = 1) -> np.ndarray:
    """The plane's rows (``axis=0``) or columns (``axis=1``) as rows, every ``stride``-th pixel."""
    a = np.asarray(plane)
    return np.ascontiguousarray(a[:, ::stride] if axis == 0 else a[::stride].T)


def _within_spread(m: np.ndarray) -> float:
    """Robust SD of the stretches' medians within a line: from the differences of every two
    stretches of the same line (so that the line's own offset, and the median's tie with one of
    an odd number of stretches, do not enter)."""
    k = m.shape[1]
    if k < 2:
        return float("nan")
    i, j = np.triu_indices(k, 1)
    return 1.4826 * float(np.median(np.abs(m[:, i] - m[:, j]))) / np.sqrt(2.0)


def _ratio(m: np.ndarray) -> float:
    """The spread of the lines' medians over what their stretches' scatter predicts."""
    offsets = np.median(m, axis=1)
    within = _within_spread(m)
    between = 1.4826 * float(np.median(np.abs(offsets - np.median(offsets))))
    predicted = _MEDIAN_SPREAD.get(m.shape[1], _MEDIAN_SPREAD[0]) * within / np.sqrt(m.shape[1])
    if predicted > 0:
        return between / predicted
    return float("inf") if between > 0 else float("nan")


#: Fewest lines, and stretches per line, the test is made on (smaller planes: never corrected;
#: with 32 lines the ratio of pure noise reached 2.2 in 1 of 200 planes of 32 x 128 pixels).
_MIN_LINES, _MIN_SEGMENTS = 64, 4


def _measurable(plane: np.ndarray, axis: int) -> bool:
    a = np.asarray(plane)
    return a.ndim == 2 and a.shape[axis] >= _MIN_LINES and a.shape[1 - axis] >= _MIN_SEGMENTS * _MIN_SEGMENT_PX


def stripe_ratio(plane: np.ndarray, axis: int = 0) -> float:
    """How much the rows (``axis=0``) or columns (``axis=1``) of a plane differ in level beyond
    what the pixel noise explains: ~1 without stripes (see the module docstring), NaN for a
    plane too small to tell (fewer than 64 lines or 128 pixels along them).  Reads about
    :data:`_TEST_PX` pixels of each line.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.poisson(200, (256, 256)).astype(float)
    >>> print(round(stripe_ratio(img), 1))  # pixel noise alone
    1.0
    >>> print(round(stripe_ratio(img + rng.normal(0, 6, (256, 1)))))  # rows offset by 0.4 of the pixel noise
    6
    """
    if not _measurable(plane, axis):
        return float("nan")
    length = np.shape(plane)[1 - axis]
    return _ratio(_line_medians(_lines(plane, axis, max(1, length // _TEST_PX))))


def stripe_offsets(plane: np.ndarray, axis: int = 0) -> np.ndarray:
    """The offsets of the rows (``axis=0``) or columns (``axis=1``) of a plane.

    Each line's median excess over the mean of the two lines on either side (median over
    :data:`N_SEGMENTS` stretches of the line of the stretches' medians, robust to structure
    crossing part of the line), deconvolved for that difference (which passes an offset
    pattern's line-to-line jumps whole and its slow drift only in part; Wiener-regularised),
    and centred on 0.

    Parameters
    ----------
    plane : ndarray
        YX intensities (at least 64 lines and 128 pixels along them).
    axis : int
        0: one offset per row; 1: one per column.

    Returns
    -------
    ndarray
        One value per row (or column); zeros for a plane too small to measure.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.poisson(200, (256, 256)).astype(float)
    >>> jitter = rng.normal(0, 6, 256)  # columns offset by 0.4 of the pixel noise
    >>> off = stripe_offsets(img + jitter, axis=1)
    >>> bool(np.corrcoef(np.diff(off), np.diff(jitter))[0, 1] > 0.95)  # the jumps from column to column
    True
    """
    a = np.asarray(plane)
    if not _measurable(a, axis):
        return np.zeros(a.shape[axis] if a.ndim == 2 else 0)
    medians = _line_medians(_lines(a, axis))
    m = np.median(medians, axis=1)
    n = m.size
    w = 2.0 * np.pi * np.fft.rfftfreq(n)
    h = 1.0 - 0.5 * (np.cos(w) + np.cos(2.0 * w))  # (the difference's transfer; its mean square is 1.25)
    # Wiener: the noise of the lines' medians (from their stretches' scatter) over the pattern's
    # power (what the medians spread beyond that noise), both white
    k = medians.shape[1]
    noise = (_MEDIAN_SPREAD.get(k, _MEDIAN_SPREAD[0]) * _within_spread(medians)) ** 2 / k if k > 1 else 0.0
    pattern = max((1.4826 * float(np.median(np.abs(m - np.median(m))))) ** 2 - noise, 0.0) / 1.25
    floor = max(noise / pattern, _DECONVOLUTION_FLOOR) if pattern > 0 else np.inf
    offsets = np.fft.irfft(np.fft.rfft(m) * h / (h * h + floor), n)
    return offsets - np.median(offsets)


def _remove_plane(plane: np.ndarray, min_ratio: float) -> tuple[np.ndarray, float, bool]:
    """One plane without its significant row and column offsets; the larger ratio; removed?"""
    out = plane
    integer = np.issubdtype(np.asarray(plane).dtype, np.integer)
    ratios, removed = [], False
    for axis in (0, 1):
        ratio = stripe_ratio(out, axis)
        ratios.append(ratio)
        if not ratio >= min_ratio:
            continue
        offsets = stripe_offsets(out, axis)
        if integer:
            offsets = np.rint(offsets)
        out = np.asarray(out, np.float64) - (offsets[:, None] if axis == 0 else offsets[None, :])
        removed = True
    if removed and integer:
        out = out.astype(np.int32 if np.asarray(plane).dtype.itemsize <= 2 else np.int64)
    finite = [r for r in ratios if np.isfinite(r)]
    return out, max(finite) if finite else float("nan"), removed


def remove_stripes(image: np.ndarray, *, min_ratio: float = MIN_STRIPE_RATIO) -> tuple[np.ndarray, dict[str, Any]]:
    """The image without the offsets its rows and columns share, where they are significant.

    Parameters
    ----------
    image : ndarray
        YX plane or ZYX stack (each plane measured and corrected on its own).
    min_ratio : float
        Stripe ratio (:func:`stripe_ratio`) from which a plane's rows or columns are corrected.

    Returns
    -------
    image : ndarray
        ``image`` itself when no plane has stripes; otherwise a copy with the offsets
        subtracted (integers for integer input: int32 up to 16-bit data, else int64).
    info : dict
        ``stripe_ratio``: the largest ratio over the planes and both directions (NaN for
        planes too small to measure); ``stripes_removed``: how many planes were corrected.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> img = (rng.poisson(200, (256, 256)) + rng.normal(0, 20, (1, 256))).astype(np.uint16)  # columns
    >>> out, info = remove_stripes(img)
    >>> info["stripes_removed"], out.dtype.name
    (1, 'int32')
    >>> jumps = [round(float(np.diff(a.mean(axis=0)).std())) for a in (img, out)]  # column to column
    >>> jumps  # (pixel noise alone: 200 ** 0.5 * (2 / 256) ** 0.5 = 1.25)
    [31, 2]
    >>> clean = rng.poisson(200, (256, 256))
    >>> remove_stripes(clean)[0] is clean
    True
    """
    a = np.asarray(image)
    if a.ndim not in (2, 3) or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"remove_stripes needs a real YX plane or ZYX stack, got {a.dtype} {a.shape}")
    planes = a if a.ndim == 3 else a[None]
    results = [_remove_plane(p, min_ratio) for p in planes]
    ratios = [r for _, r, _ in results if np.isfinite(r)]
    info = {"stripe_ratio": float(max(ratios)) if ratios else float("nan"),
            "stripes_removed": sum(done for _, _, done in results)}
    if not info["stripes_removed"]:
        return image, info
    out = np.stack([np.asarray(p, np.result_type(*(q.dtype for q, _, _ in results))) for p, _, _ in results])
    log.info("stripes (offsets shared by whole rows or columns; ratio %.1f) removed from %d of %d plane(s)",
             info["stripe_ratio"], info["stripes_removed"], len(planes))
    return (out if a.ndim == 3 else out[0]), info
