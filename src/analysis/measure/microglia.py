"""Microglia segmentation (Iba1 channel): foreground, somata, one label per cell.

All parameters are in physical units (um); thresholds are in units of the image's own noise,
so the defaults carry over between microscopes and pixel sizes.

Segmentation (:func:`segment_microglia`)
----------------------------------------
1. *Foreground*, from two complementary detections:

   * bright structure (somata, processes): the smoothed image minus a broad background (a
     grey opening wider than a cell body, blurred), hysteresis-thresholded at
     ``threshold_sd`` robust SDs (8-bit data with a median absolute deviation of 0 falls
     back to the SD).  Where the pixels resolve the widest process (its half-width is
     at least 2 pixels), the mask is cut back to half of the local peak (the full width at half
     maximum of each process), so that the blur halo does not fuse neighbouring processes,
     and its centre line is kept, so that dim stretches stay connected; with coarser pixels
     the halo lies inside the edge pixels and no cut is made (it would strip every process
     of its partial-volume edge);
   * thin, dim processes: the image minus a *local* background (a grey opening just wider
     than the widest process, which also removes background texture), averaged along short
     line segments in 12 orientations (the best orientation wins), hysteresis-thresholded
     at ``line_threshold_sd`` SDs of that response.  Only centre lines that extend the
     bright structure (tips, dim branches) are added, not those running alongside it, so
     nearby processes are not bridged.

2. *Somata*, found at the scale of a soma, so that one cell with one soma is one label:
   the background-corrected intensity is smoothed with a Gaussian of SD
   ``soma_diameter_um / (2 sqrt 2)`` (the scale of the strongest blob response of a disk
   of that diameter).  A soma becomes one round hill whatever its texture, nucleus or
   saturation; processes, narrower than a soma, flatten to low ridges.  Hills are separate
   when the valley between them falls below half of the lower one (``soma_separation``;
   dynamics relative to height, so the rule is the same for dim and bright cells and for
   any gain).  A hill is a soma when the upper half of it holds a compact bright body: the
   structure at half maximum contains a disk of ``0.8 * soma_min_diameter_um``.  Most
   bulbs, varicosities and process fragments are smaller and seed nothing (for larger
   bulbs see step 3).
3. *Cells*: a watershed on the inverted intensity, seeded from the somata, splits touching
   cells (it floods in steps of two noise SDs, so that noise does not decide where a
   uniform process is split: within a step the flood advances by path length); foreground
   not connected to any soma (debris, fragments) is dropped.  A soma-scale hill less than
   ``soma_relative_height`` as high as the soma of a cell it touches is a thickening of
   that cell's process (a bulb, an end-foot), not a soma: its seed is removed and the
   flood repeated.  Likewise a candidate joined to exactly one other cell, lower and thinner
   than that cell's soma, whose own cell has no process of its own (no skeleton branch
   outside its soma, other than the one leading to the other cell, as long as
   ``soma_min_diameter_um``) is a bright swelling at the end of that cell's process (an
   end bulb), not a soma: a soma is the hub its processes radiate from and the thickest
   part of its cell (``terminal_swellings``).  A round, process-free cell larger than the
   soma it touches stays a cell.  Processes that enter the field from a cell outside it
   are brightest where they cross the edge; such an edge maximum that rises well above the
   saddle linking it to a cell seeds its own basin, which is dropped, instead of being
   captured by the neighbouring cell.
4. *Counting rule*: a cell whose soma is cut by the image border is kept only when the
   centre of the circle fitted to the visible soma outline lies inside the field, so the
   count per field area estimates the density of somata without edge bias.  Kept cells
   that touch the border are flagged (:func:`border_cells`, column ``touches_border``);
   their morphology is incomplete.

Morphology of the segmented cells (skeletons, branches, Sholl) is in
:mod:`analysis.measure.morphology`; its public functions are importable from here too.
"""

from __future__ import annotations

import functools
import itertools
import logging

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk, local_maxima, skeletonize
from skimage.segmentation import watershed

from analysis.measure.checks import COLOUR_HINT, require_finite, require_pixel_size, require_plane_size
from analysis.measure.noise import MAD_TO_SD, noise_sd
from analysis.measure.puncta import _label_sizes
from analysis.measure.hotpixels import repair_hot_pixels
from analysis.measure.outside import fill_not_imaged, not_imaged_mask
from analysis.measure.morphology import (  # noqa: F401  (the morphology of the cells is re-exported)
    MEASURE_COLUMNS,
    _Cell,
    _disk_opening,
    _length_px,
    border_cells,
    measure_microglia,
    sholl_profile,
    skeleton_image,
)

__all__ = [
    "segment_microglia",
    "measure_microglia",
    "sholl_profile",
    "border_cells",
    "skeleton_image",
    "noise_sd",  # re-exported from analysis.measure.noise
]

log = logging.getLogger(__name__)

_EIGHT = np.ones((3, 3), bool)
#: Gaussian sigma of the thinnest microglial process as imaged (a 0.3 um process under a
#: confocal PSF of FWHM 0.24 um: FWHM ~0.38 um), the narrowest structure of an Iba1 channel.
_THINNEST_PROCESS_SIGMA_UM = 0.15
_NB_KERNEL = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], np.uint8)

# --------------------------------------------------------------------------- noise, filters


def _band_order_stats(x: np.ndarray, ranks: list[int]) -> np.ndarray | None:
    """The values at ``ranks`` (ascending) of the 1-D array ``x`` sorted, selected from a band
    of candidates, or None when the band misses them or ``x`` holds a NaN.  The band lies
    between two values of an evenly spaced sample of ``x`` ranked well outside ``ranks`` (8
    binomial SDs); when the values below it and in it bracket the ranks, those are the ranks of
    the band's values offset by the count below (exact: no value is estimated)."""
    n = x.size
    sample = x[::16]
    m = sample.size
    margin = int(4 * np.sqrt(m)) + 2  # (8 SDs of a binomial rank: sqrt(m q (1 - q)) <= sqrt(m) / 2)
    a = max(0, (ranks[0] * m) // n - margin)
    b = min(m - 1, -(-ranks[-1] * m // n) + margin)
    part = np.partition(sample, [a, b])
    lo_v, hi_v = part[a], part[b]
    below = int(np.count_nonzero(x < lo_v))
    inside = x >= lo_v
    inside &= x <= hi_v
    band = x[inside]
    del inside
    if below + band.size + int(np.count_nonzero(x > hi_v)) != n:  # (a NaN is in none of the three)
        return None
    if not (below <= ranks[0] and ranks[-1] < below + band.size):
        return None
    k = [r - below for r in ranks]
    return np.partition(band, k)[k]


def _order_stats(x: np.ndarray, ranks: list[int]) -> np.ndarray:
    """``np.partition(x, ranks)[ranks]`` of a 1-D array (``ranks`` ascending), from a band of
    candidates (:func:`_band_order_stats`) when ``x`` is long: the same values, ~3x faster for
    10^5-10^6 values."""
    out = _band_order_stats(x, ranks) if x.size >= 1 << 15 else None
    return np.partition(x, ranks)[ranks] if out is None else out


def _median_exact(x: np.ndarray) -> float:
    """``float(np.median(x))`` of a 1-D array: the mean (in ``x``'s dtype, as ``np.median``
    takes it) of the middle one or two values, selected by :func:`_band_order_stats`;
    ``np.median`` itself for short arrays and when ``x`` holds a NaN."""
    n = x.size
    if n < 1 << 15:
        return float(np.median(x))
    middle = _band_order_stats(x, [(n - 1) // 2, n // 2] if n % 2 == 0 else [n // 2])
    return float(np.median(x)) if middle is None else float(np.mean(middle))


def _robust_sd(x: np.ndarray, max_samples: int = 400_000) -> float:
    """:func:`analysis.measure.noise.robust_sd` in double precision (subsampled before the copy)."""
    return _median_and_robust_sd(x, max_samples, want_median=False)[1]


def _median_and_robust_sd(
    x: np.ndarray, max_samples: int = 400_000, middle: np.ndarray | None = None, want_median: bool = True
) -> tuple[float, float]:
    """``np.median(x)`` (of all values, in ``x``'s own dtype) and :func:`_robust_sd` of ``x``
    (subsampled to ``max_samples`` values).  When no subsampling is needed one selection in
    ``x``'s dtype serves both medians: the middle values are the same whatever the precision
    (a float32 value is exact in double), so the median of the double copy is their mean in
    double (as :func:`numpy.median` takes it), and only the absolute deviations need a double
    selection.  The same numbers as ``np.median(x)`` and ``robust_sd(x.astype(float64))``.
    ``middle``: the middle values of the subsample, when the caller has them already.
    ``want_median=False``: only the robust SD (the median returned is NaN; for a subsampled
    ``x`` the median of all its values is not selected)."""
    x = np.asarray(x).ravel()
    full = x
    x = x[:: max(1, x.size // max_samples)]
    x = x[:: max(1, x.size // max_samples)]  # (robust_sd's own subsampling: a no-op after this one)
    n = x.size
    if n == 0:
        return float(np.median(full)) if full.size else float("nan"), 1.0
    lo, hi = (n - 1) // 2, n // 2
    if middle is None:
        middle = _order_stats(x, [lo, hi] if lo != hi else [lo])  # numpy.median's middle
    if n == full.size:
        med_native = float(np.mean(middle))
    else:
        med_native = _median_exact(full) if want_median else float("nan")
    med = np.mean(middle.astype(np.float64))
    # |x - med| in double (x converted exactly as astype converts it), in one work array
    dev = np.subtract(x, med, dtype=np.float64)
    np.abs(dev, out=dev)
    sd = float(MAD_TO_SD * _median_exact(dev))
    del dev
    return med_native, sd or float(np.std(x.astype(np.float64))) or 1.0


def _median_of_chunks(chunks, n: int) -> float:
    """``float(np.median(np.concatenate(list(chunks()))))`` of ``n`` finite float32 values given
    in pieces (``chunks``: a function returning an iterator over them, called twice), without
    the whole array: a histogram of the leading 16 bits of the values' order-preserving keys
    finds the bins of the middle values, which are then selected exactly; their mean is taken
    in float32, as :func:`numpy.median` takes it."""
    def keys(v: np.ndarray) -> np.ndarray:
        bits = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
        # (order of the floats as unsigned integers: negative ones reversed, positive ones above)
        return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))

    counts = np.zeros(1 << 16, np.int64)
    for v in chunks():
        counts += np.bincount((keys(v) >> 16).ravel(), minlength=1 << 16)
    ranks = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
    cum = np.cumsum(counts)
    bins = sorted({int(np.searchsorted(cum, k, side="right")) for k in ranks})
    picked = [v.ravel()[np.isin(keys(v).ravel() >> 16, bins)] for v in chunks()]
    vals = np.sort(np.concatenate(picked).astype(np.float32, copy=False))
    below = int(cum[bins[0] - 1]) if bins[0] > 0 else 0  # (values in the bins before the first picked)
    return float(np.mean(vals[[k - below for k in ranks]]))


def _median_and_robust_sd_where(values: np.ndarray, keep: np.ndarray, max_samples: int = 400_000) -> tuple[float, float]:
    """``_median_and_robust_sd(values[keep])`` of a 2-D float32 array (the same two numbers)
    without the gathered copy: the values are read strip by strip, the subsample that the
    robust SD takes (every ``s``-th kept value) is gathered directly and the median of all kept
    values is selected by :func:`_median_of_chunks`."""
    h, w = values.shape
    step = max(1, (1 << 18) // max(w, 1))
    n = int(np.count_nonzero(keep))
    s1 = max(1, n // max_samples)
    s2 = max(1, (-(-n // s1)) // max_samples)
    stride = s1 * s2  # (x[::s1][::s2] = x[::s1 * s2])

    def chunks():
        for r0 in range(0, h, step):
            yield values[r0 : r0 + step][keep[r0 : r0 + step]]

    sample, seen = [], 0
    for v in chunks():
        sample.append(v[(-seen) % stride :: stride])
        seen += v.size
    x = np.concatenate(sample) if sample else np.zeros(0, values.dtype)
    med, sd = _median_and_robust_sd(x, max_samples)  # (x is its own subsample: x.size < 2 max_samples)
    if x.size == n:
        return med, sd
    return _median_of_chunks(chunks, n), sd


def _label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Maximum of ``values`` per label 0..n (-inf where a label is absent), in double: the
    labelled values are selected before they are converted (no full-size double copy of a
    float32 image; the conversion is exact, so the maxima are those of the converted image)."""
    out = np.full(n + 1, -np.inf)
    sel = labels > 0
    np.maximum.at(out, labels[sel].ravel(), np.asarray(values)[sel].astype(np.float64).ravel())
    return out


@functools.lru_cache(maxsize=1)
def _ws_kernel():
    """skimage's watershed kernel and its helpers (footprint and padding of connectivity 2 in
    2-D), or None when this skimage does not have them where 0.2x keeps them, or when they
    do not reproduce the public function on a small test with ties (a private interface may
    change between releases: then the public function is used)."""
    try:
        from skimage.segmentation import _watershed as skw

        footprint, offset = skw._validate_connectivity(2, 2, None)
        found = (footprint, tuple(int(q) for q in offset), skw._watershed_cy.watershed_raveled,
                 skw._offsets_to_raveled_neighbors)
        rng = np.random.default_rng(0)
        img = np.round(rng.random((24, 31)) * 4)  # many equal values: ties decide
        markers = np.zeros(img.shape, np.int32)
        markers[rng.integers(0, 24, 9), rng.integers(0, 31, 9)] = np.arange(1, 10)
        mask = img > 0
        want = watershed(img, markers, mask=mask, connectivity=2)
        if not np.array_equal(_watershed_with(found, img, markers, mask), want):
            log.warning("skimage's watershed internals differ from its public function: using the public one")
            return None
        return found
    except (ImportError, AttributeError, TypeError, ValueError):  # pragma: no cover (other skimage versions)
        return None


def _watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray, negate: bool = False,
               padded: np.ndarray | None = None) -> np.ndarray:
    """``skimage.segmentation.watershed(image, markers, mask=mask, connectivity=2)`` of a 2-D
    image (of ``-image`` with ``negate``) with the work arrays of skimage's kernel built once:
    the padded double image, int8 mask and output, instead of skimage's unpadded and padded
    copies of each.  The same kernel, inputs and order of the seeds, hence the same labels,
    ties included.  (A flood split by connected component is not the same: seeds of equal
    value enter skimage's queue with equal priority and leave it in an order that depends on
    the whole queue.)  ``padded``: the markers already in a zero array padded as the kernel
    needs (``markers`` its inner view, inside the mask): flooded in place, its inner view
    returned.  skimage's public function when its internals are not found."""
    found = _ws_kernel()
    if found is None:  # pragma: no cover
        return watershed(np.negative(image) if negate else image, markers, mask=mask, connectivity=2)
    return _watershed_with(found, image, markers, mask, negate, padded)


def _watershed_with(found, image: np.ndarray, markers: np.ndarray, mask: np.ndarray, negate: bool = False,
                    padded: np.ndarray | None = None) -> np.ndarray:
    """:func:`_watershed` with the kernel and helpers ``found`` by :func:`_ws_kernel`."""
    footprint, offset, kernel, neighbours = found
    shape = tuple(n + 2 * q for n, q in zip(image.shape, offset))
    inner = tuple(slice(q, q + n) for q, n in zip(offset, image.shape))
    if padded is None:
        out = np.zeros(shape, markers.dtype)
        np.copyto(out[inner], markers, where=np.asarray(mask, bool))  # (markers * mask)
    else:
        out = padded
    msk = np.zeros(shape, np.int8)
    msk[inner] = mask
    img = np.zeros(shape, np.float64)
    if negate:
        np.negative(image, out=img[inner])
    else:
        img[inner] = image
    _flood(found, img, out, msk)
    del img, msk
    return out[inner] if padded is not None else out[inner].copy()


def _flood(found, img: np.ndarray, out: np.ndarray, msk: np.ndarray) -> None:
    """Run skimage's watershed kernel (``found`` by :func:`_ws_kernel`) on padded arrays:
    ``img`` (float64), ``msk`` (int8 or a boolean array viewed as int8) and ``out`` (the
    seeds, flooded in place), as ``skimage.segmentation.watershed(..., connectivity=2)``
    calls it."""
    footprint, offset, kernel, neighbours = found
    strides = np.array(img.strides, dtype=np.intp) // img.itemsize
    kernel(img.ravel(), np.flatnonzero(out), neighbours(img.shape, footprint, center=offset),
           msk.view(np.int8).ravel(), strides, 0, out.ravel(), False)


def _hysteresis(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """:func:`skimage.filters.apply_hysteresis_threshold` (the 4-connected components above
    ``low`` that hold a pixel above ``high``): grown from the pixels above ``high`` within
    those above ``low`` (the same mask, without a full-size label image)."""
    low = min(low, high)
    return ndi.binary_propagation(image > high, mask=image > low)


def _zoom_axis(n_in: int, n_out: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two input indices (clamped to the edge) and their weights of each of ``n_out``
    outputs of a linear zoom by ``k`` in grid mode (scipy's input coordinate ``(i + 0.5) / k -
    0.5``, in double, as :func:`scipy.ndimage.zoom` computes it)."""
    zoom = np.float64(n_in) / np.float64(n_in * k)
    cc = (np.arange(n_out, dtype=np.float64) + 0.5) * zoom - 0.5
    start = np.floor(cc)
    w1 = cc - start
    start = start.astype(np.intp)
    return np.clip(start, 0, n_in - 1), np.clip(start + 1, 0, n_in - 1), 1.0 - w1, w1


def _zoom_linear_at(small: np.ndarray, k: int, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
                    dtype: np.dtype | None = None) -> np.ndarray:
    """``_zoom_linear(small, k, shape, dtype=dtype)[rows, cols]`` computed at those pixels only:
    the same four terms ``v * w_y * w_x``, multiplied and added in the same order in double, so
    the same numbers (for a few scattered pixels, instead of whole rows)."""
    y0, y1, wy0, wy1 = _zoom_axis(small.shape[0], shape[0], k)
    x0, x1, wx0, wx1 = _zoom_axis(small.shape[1], shape[1], k)
    v = small.astype(np.float64, copy=False)
    ya, yb, wa, wb = y0[rows], y1[rows], wy0[rows], wy1[rows]
    xa, xb, ua, ub = x0[cols], x1[cols], wx0[cols], wx1[cols]
    part = v[ya, xa] * wa
    part *= ua
    for yy, xx, wy, wx in ((ya, xb, wa, ub), (yb, xa, wb, ua), (yb, xb, wb, ub)):
        term = v[yy, xx] * wy
        term *= wx
        part += term
    return part.astype(small.dtype if dtype is None else dtype)


def _zoom_linear(small: np.ndarray, k: int, shape: tuple[int, int],
                 row_range: tuple[int, int] | None = None, dtype: np.dtype | None = None,
                 col_range: tuple[int, int] | None = None) -> np.ndarray:
    """``ndi.zoom(small, k, order=1, grid_mode=True, mode="nearest")[:shape[0], :shape[1]]``
    from separable weights: the same arithmetic as scipy's (input coordinate ``(i + 0.5) / k
    - 0.5``, neighbours clamped to the edge, terms ``v * w_y * w_x`` added in scipy's order,
    in double, rounded to the input's dtype), so the same numbers (``tests/test_microglia.py``
    checks it against scipy), ~2x faster; only the rows and columns kept are computed.
    ``row_range``: ``(r0, r1)``, only those rows of the result (each row is computed on its
    own: the same numbers as in the whole result).  ``dtype``: of the result (default
    ``small``'s; a caller zooming rows of one image repeatedly passes it in double once).
    ``col_range``: ``(c0, c1)``, only those columns (likewise the same numbers)."""
    y0, y1, wy0, wy1 = _zoom_axis(small.shape[0], shape[0], k)
    x0, x1, wx0, wx1 = _zoom_axis(small.shape[1], shape[1], k)
    if col_range is not None:
        x0, x1, wx0, wx1 = (a[col_range[0] : col_range[1]] for a in (x0, x1, wx0, wx1))
    width = len(x0)
    v = small.astype(np.float64, copy=False)
    first, last = row_range if row_range is not None else (0, shape[0])
    out = np.empty((last - first, width), small.dtype if dtype is None else dtype)
    # rows per chunk: two double work arrays of ~0.5 MB, allocated once and filled in place (fresh
    # 2 MB temporaries per chunk cost more in page faults than the arithmetic; np.take with
    # ``out`` is unbuffered only with a ``mode`` other than "raise": the indices are in range)
    step = max(1, (1 << 16) // max(width, 1))
    rows_max = min(step, max(last - first, 0))
    part_buf, term_buf = np.empty((rows_max, width)), np.empty((rows_max, width))
    for r0 in range(first, last, step):
        r = slice(r0, min(last, r0 + step))
        part, term = part_buf[: r.stop - r.start], term_buf[: r.stop - r.start]
        rows0, rows1 = v[y0[r]] * wy0[r, None], v[y1[r]] * wy1[r, None]
        np.take(rows0, x0, axis=1, out=part, mode="clip")
        part *= wx0
        for rows, cols, wx in ((rows0, x1, wx1), (rows1, x0, wx0), (rows1, x1, wx1)):
            np.take(rows, cols, axis=1, out=term, mode="clip")
            term *= wx
            part += term
        out[r.start - first : r.stop - first] = part  # (rounded to the input's dtype as astype rounds)
    return out


def _broad_background(smooth: np.ndarray, radius_px: float) -> np.ndarray:
    """Grey opening with a disk of ``radius_px`` (rolling-ball-like), blurred; computed on a
    reduced grid of ``k`` x ``k`` block means (the background is smooth at that scale) and
    interpolated back.  The block grid is centred on the image (an odd ``k`` and the same
    edge padding on both sides), so that a flipped or rotated image gets the flipped or
    rotated background: a grid anchored at pixel (0, 0) put its partial blocks on one side
    only, and a flip moved every block boundary."""
    k = max(int(radius_px // 4), 1)
    k -= 1 - k % 2  # (odd: with an odd block, an even total padding can always be found)
    pads = []
    for n in smooth.shape:
        pad = -(-n // k) * k - n
        pad += k if pad % 2 else 0
        pads.append(pad // 2)
    (ph, pw), (h, w) = pads, smooth.shape
    padded = np.pad(smooth, ((ph, ph), (pw, pw)), mode="edge")
    hp, wp = padded.shape
    small = padded.reshape(hp // k, k, wp // k, k).mean(axis=(1, 3))
    # (``padded`` is kept until the function returns: freed here, its memory map raised glibc's
    # mmap threshold before the zoom's and the caller's allocations, which then fragmented the
    # heap: 94-95 MB of resident work for segment_microglia at 2048^2 against 79-80 MB, labels
    # identical)
    r = max(int(round(radius_px / k)), 1)
    bg = ndi.grey_opening(small, footprint=disk(r))
    bg = ndi.gaussian_filter(bg, r / 2.0)
    if k > 1:
        # (= ndi.zoom order 1, grid mode, cropped to the image's rows and columns)
        bg = _zoom_linear(bg, k, (hp, wp), row_range=(ph, ph + h), dtype=np.float32, col_range=(pw, pw + w))
    return bg.astype(np.float32, copy=False)


def _line_kernels(length_px: float, n_orientations: int) -> list[np.ndarray]:
    """Normalised line-segment kernels (bilinear, anti-aliased) in ``n_orientations``.

    Odd-sized (2r + 3) with the segment centred on the middle pixel, which is where
    :mod:`scipy.ndimage` puts a kernel's origin, so the line response is not shifted (an
    even size shifted every response by one pixel and broke flip invariance).
    """
    r = int(np.ceil(length_px / 2))
    t = np.linspace(-length_px / 2, length_px / 2, int(4 * length_px) + 1)
    out = []
    c = r + 1
    for th in np.arange(n_orientations) * np.pi / n_orientations:
        k = np.zeros((2 * c + 1, 2 * c + 1), np.float64)
        yy, xx = c + t * np.sin(th), c + t * np.cos(th)
        y0, x0 = np.floor(yy).astype(int), np.floor(xx).astype(int)
        fy, fx = yy - y0, xx - x0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                np.add.at(k, (y0 + dy, x0 + dx), wy * wx)
        out.append((k / k.sum()).astype(np.float32))
    return out


def _line_taps(kernel: np.ndarray) -> list[tuple[int, int, float, bool]]:
    """The non-zero taps of a line kernel as ``(dy, dx, weight, paired)`` offsets from its
    centre; a tap whose mirror image (-dy, -dx) has the same weight is listed once, paired
    (a line segment centred on the middle pixel is point-symmetric)."""
    c = kernel.shape[0] // 2
    taps, seen = [], set()
    for y, x in zip(*np.nonzero(kernel)):
        dy, dx = int(y) - c, int(x) - c
        if (dy, dx) in seen:
            continue
        w = float(kernel[y, x])
        paired = (dy, dx) != (0, 0) and kernel[c - dy, c - dx] == kernel[y, x]
        seen.update({(dy, dx), (-dy, -dx)} if paired else {(dy, dx)})
        taps.append((dy, dx, w, paired))
    return taps


def _max_line_response(img: np.ndarray, kernels: list[np.ndarray], strip: int = 64) -> np.ndarray:
    """Maximum over ``kernels`` of ``ndi.correlate(img, k, mode="nearest")`` (float32).

    The line kernels are sparse (7-19 of 81 taps at 0.2 um pixels) and point-symmetric, so
    each response is summed from shifted views of an edge-padded strip of rows, mirror taps
    added before their common weight is applied; strips of 64 rows keep the work in cache.
    ~2.5x faster than :func:`scipy.ndimage.correlate` (which accumulates every pixel in
    float64: the responses agree to float32 rounding, ~1e-7 relative) and one strip of
    memory instead of a full-size output per orientation.

    Examples
    --------
    >>> ks = _line_kernels(5.0, 12)
    >>> img = np.random.default_rng(0).normal(size=(70, 50)).astype(np.float32)
    >>> ref = np.max([ndi.correlate(img, k, mode="nearest") for k in ks], axis=0)
    >>> bool(np.allclose(_max_line_response(img, ks), ref, rtol=0, atol=1e-6))
    True
    """
    img = np.asarray(img, np.float32)
    h, w = img.shape
    taps = [_line_taps(k) for k in kernels]
    reach = max(k.shape[0] for k in kernels) // 2
    resp = np.empty((h, w), np.float32)
    acc = np.empty((min(strip, h), w), np.float32)
    tmp = np.empty_like(acc)
    for r0 in range(0, h, strip):
        r1 = min(h, r0 + strip)
        n = r1 - r0
        a, b = max(0, r0 - reach), min(h, r1 + reach)
        pad = np.pad(img[a:b], ((reach - (r0 - a), reach - (b - r1)), (reach, reach)), mode="edge")
        out, acc_n, tmp_n = resp[r0:r1], acc[:n], tmp[:n]

        def view(dy: int, dx: int) -> np.ndarray:
            return pad[reach + dy : reach + dy + n, reach + dx : reach + dx + w]

        for i, kernel_taps in enumerate(taps):
            acc_n.fill(0.0)
            for dy, dx, wt, paired in kernel_taps:
                if paired:
                    np.add(view(dy, dx), view(-dy, -dx), out=tmp_n)
                    tmp_n *= np.float32(wt)
                else:
                    np.multiply(view(dy, dx), np.float32(wt), out=tmp_n)
                acc_n += tmp_n
            if i == 0:
                out[...] = acc_n
            else:
                np.maximum(out, acc_n, out=out)
    return resp


def _rank_rows(img: np.ndarray, rows: dict[int, list[int]], op: str, pad: str | bool) -> np.ndarray:
    """Minimum (``op="min"``) or maximum (``"max"``) of a 2-D array over a footprint given as
    horizontal segments (``{half-width: [row offsets]}``, symmetric about the centre).

    The array is padded once (``pad="reflect"``: rows and columns mirrored like
    :mod:`scipy.ndimage`'s ``"reflect"``, numpy's ``"symmetric"``; ``True`` / ``False``: that
    constant, for boolean masks), every half-width's running extreme along x is built from the
    previous one with one elementwise min / max of shifted views (``W_h(x) = min(W_{h-1}(x - 1),
    W_{h-1}(x + 1))``), and the rows are combined with shifted views.  Only elementwise
    operations on views: several times faster than :mod:`scipy.ndimage`'s rank filters for the
    small footprints used here, with the same result (min / max are exact).

    Images taller than ``strip_px`` rows (+ the footprint) are filtered in strips of rows, each
    padded with the rows its footprint reaches (the same values: min / max of the same pixels),
    so the work memory is that of a strip besides the output."""
    pick = np.minimum if op == "min" else np.maximum
    h, w = img.shape
    r = max(max(rows), max(abs(dy) for dys in rows.values() for dy in dys))

    def padded(a: np.ndarray, top: int, bottom: int) -> np.ndarray:
        width = ((top, bottom), (r, r))
        if pad == "reflect":
            return np.pad(a, width, mode="symmetric")
        return np.pad(a, width, mode="constant", constant_values=pad)

    strip = max(64, (1 << 18) // max(w, 1))
    if h <= strip + 2 * r:
        return _rank_rows_padded(padded(img, r, r), rows, pick, h, w, r)
    out = np.empty((h, w), img.dtype)
    for r0 in range(0, h, strip):
        r1 = min(h, r0 + strip)
        a, b = max(0, r0 - r), min(h, r1 + r)  # (the rows beyond the image: padded as the whole would be)
        out[r0:r1] = _rank_rows_padded(padded(img[a:b], r - (r0 - a), r - (b - r1)), rows, pick, r1 - r0, w, r)
    return out


def _rank_rows_padded(padded: np.ndarray, rows: dict[int, list[int]], pick, h: int, w: int, r: int) -> np.ndarray:
    """:func:`_rank_rows` of the ``h`` x ``w`` array padded by ``r`` on every side."""
    out = None
    run, run_h = padded, 0  # running extreme over [x - run_h, x + run_h]; column j centred on j + run_h
    del padded
    for half in sorted(rows):
        while run_h < half:
            if run_h == 0:
                nxt = pick(run[:, :-2], run[:, 1:-1])
                run = pick(nxt, run[:, 2:], out=nxt)
            else:
                run = pick(run[:, :-2], run[:, 2:])
            run_h += 1
        for dy in rows[half]:
            view = run[r + dy : r + dy + h, r - half : r - half + w]
            if out is None:
                out = view.copy()
            else:
                pick(out, view, out=out)
        del view  # (it would keep the previous running extreme alive)
    return out


def _disk_rank(img: np.ndarray, radius: int, op: str) -> np.ndarray:
    """Grey erosion (``op="min"``) or dilation (``"max"``) of a 2-D image with ``disk(radius)``,
    reflecting edges: identical to :func:`scipy.ndimage.grey_erosion` / ``grey_dilation`` with
    that footprint (:func:`_rank_rows`: the disk as a stack of horizontal segments)."""
    fp = disk(radius).astype(bool)
    rows_of: dict[int, list[int]] = {}
    for dy in range(-radius, radius + 1):
        rows_of.setdefault(int(fp[dy + radius].sum()) // 2, []).append(dy)
    return _rank_rows(img, rows_of, op, "reflect")


def _square_rank(img: np.ndarray, radius: int, op: str = "max") -> np.ndarray:
    """:func:`scipy.ndimage.maximum_filter` (``op="max"``) or ``minimum_filter`` (``"min"``)
    with ``size=2 * radius + 1`` (reflecting edges): :func:`_rank_rows` with the square as
    ``2 * radius + 1`` rows of half-width ``radius`` (in strips of rows)."""
    return _rank_rows(img, {radius: list(range(-radius, radius + 1))}, op, "reflect")


def _square_max(img: np.ndarray, radius: int) -> np.ndarray:
    """:func:`scipy.ndimage.maximum_filter` with ``size=2 * radius + 1`` (:func:`_square_rank`)."""
    return _square_rank(img, radius, "max")


def _disk_rows(radius: float, strict: bool) -> dict[int, list[int]]:
    """The disk of the offsets at Euclidean distance ``< radius`` (``strict``) or ``<= radius``
    as horizontal segments: ``{half-width: [row offsets]}``.  The distances are computed as
    :func:`scipy.ndimage.distance_transform_edt` computes them (the square root of the sum of
    squares in double precision), so thresholds of a distance transform are matched exactly."""
    r_max = int(np.ceil(radius))
    dx = np.arange(r_max + 1)
    rows: dict[int, list[int]] = {}
    for dy in range(-r_max, r_max + 1):
        d = np.sqrt((dy * dy + dx * dx).astype(np.float64))
        ok = d < radius if strict else d <= radius
        if ok[0]:
            rows.setdefault(int(np.count_nonzero(ok)) - 1, []).append(dy)  # (ok falls with |dx|)
    return rows


def _binary_rank(mask: np.ndarray, rows: dict[int, list[int]], op: str) -> np.ndarray:
    """Binary erosion (``op="min"``) or dilation (``"max"``) of a 2-D mask with the footprint
    given as horizontal segments (``{half-width: [row offsets]}``, :func:`_disk_rows`); pixels
    outside the image are ignored (neither True for a dilation nor False for an erosion), as
    a distance transform ignores them (:func:`_rank_rows` with a constant pad)."""
    return _rank_rows(np.asarray(mask, dtype=bool), rows, op, op == "min")


def _fast_disk_opening(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """:func:`analysis.measure.morphology._disk_opening` (binary opening with a Euclidean disk,
    as two thresholded distance transforms) by a row-decomposed erosion and dilation: the
    same result (``tests/test_microglia.py`` checks it), ~5x faster for soma-sized disks."""
    if mask.all():  # (no False pixel: the distance transform's own convention)
        return _disk_opening(mask, radius_px)
    # distance to the nearest False pixel >= r: every pixel nearer than r is True
    core = _binary_rank(mask, _disk_rows(radius_px, strict=True), "min")
    if not core.any():
        return core
    # distance to the nearest core pixel <= r
    return _binary_rank(core, _disk_rows(radius_px, strict=False), "max") & mask


def _disk_grey_opening(img: np.ndarray, radius: int) -> np.ndarray:
    """:func:`scipy.ndimage.grey_opening` with ``footprint=disk(radius)`` (same result, faster).

    In strips of rows: the erosion of a strip and ``radius`` rows either side, read from the
    image with ``2 radius`` rows of margin, then its dilation (at the image's top and bottom
    the block's reflection is the image's): only the opening is held at full size."""
    h, w = img.shape
    strip = max(64, (1 << 18) // max(w, 1))
    if h <= strip + 4 * radius:
        return _disk_rank(_disk_rank(img, radius, "min"), radius, "max")
    out = np.empty(img.shape, img.dtype)
    for r0 in range(0, h, strip):
        r1 = min(h, r0 + strip)
        a, b = max(0, r0 - 2 * radius), min(h, r1 + 2 * radius)
        out[r0:r1] = _disk_rank(_disk_rank(img[a:b], radius, "min"), radius, "max")[r0 - a : r1 - a]
    return out


def _within_steps(mask: np.ndarray, steps: int) -> np.ndarray:
    """``binary_dilation(mask, iterations=steps)`` (the 4-neighbour cross, iterated): the pixels
    within ``steps`` city-block steps of ``mask``, from one chamfer distance transform."""
    if not mask.any():
        return np.zeros(mask.shape, bool)
    # the diamond of radius ``steps``, row by row (a chamfer transform took ~4x longer)
    rows: dict[int, list[int]] = {}
    for dy in range(-steps, steps + 1):
        rows.setdefault(steps - abs(dy), []).append(dy)
    return _binary_rank(mask, rows, "max")


def _farther_than(mask: np.ndarray, distance_px: float) -> np.ndarray:
    """``distance_transform_edt(mask) > distance_px`` (pixels farther than that from every
    False pixel): an erosion with the disk of that radius (the same result, ~4x faster than
    the distance transform, and 1 byte per pixel instead of 16)."""
    if mask.all():  # (no False pixel at all: scipy's own convention)
        return ndi.distance_transform_edt(mask) > distance_px
    return _binary_rank(mask, _disk_rows(distance_px, strict=False), "min")


# --------------------------------------------------------------------------- segmentation


def _foreground(
    img: np.ndarray,
    px: float,
    *,
    smoothing_um: float,
    process_max_width_um: float,
    background_um: float,
    line_length_um: float,
    threshold_sd: tuple[float, float],
    line_threshold_sd: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Foreground mask, the smoothed, background-corrected intensity, the bright structure
    cut to its full width at half maximum, and the robust SD of the intensity."""
    smooth = ndi.gaussian_filter(img, max(smoothing_um / px, 0.5), output=np.float32)
    signal = _broad_background(smooth, background_um / px)
    np.subtract(smooth, signal, out=signal)  # smooth - background, in place
    # the opening sits below the noise (a minimum filter first): centre the background
    # (the middle values of the centred sample are those of the sample, centred: subtracting a
    # constant in float32 keeps the order, so one selection serves both medians)
    sample = signal.ravel()[:: max(1, signal.size // 400_000)]
    lo_k, hi_k = (sample.size - 1) // 2, sample.size // 2
    middle = _order_stats(sample, [lo_k, hi_k] if lo_k != hi_k else [lo_k])
    centre = np.mean(middle)  # np.median(sample)
    signal -= centre
    sd = _median_and_robust_sd(signal, middle=middle - centre, want_median=False)[1]
    low, high = threshold_sd
    bright = _hysteresis(signal, low * sd, high * sd)
    # each soma or process extends to half its own local peak (its full width at half
    # maximum), not into the blur halo; the centre line of the detection keeps dim
    # stretches connected
    r = max(int(round(process_max_width_um / 2 / px)), 1)
    peak = _square_max(signal, r)  # (ndi.maximum_filter(signal, size=2 * r + 1), faster)
    peak *= 0.5
    halfmax = signal >= peak
    halfmax &= bright
    del peak
    if r >= 2:
        fg = halfmax | skeletonize(bright)
    else:
        # pixels coarser than a quarter of the widest process: the blur halo lies inside the
        # edge pixels, and the cut would only strip partial-volume edges off every process
        fg = bright.copy()

    # thin, dim processes: local background (removes texture wider than a process), line
    # averages in 12 orientations, thresholds from the background statistics of the response
    r_local = max(process_max_width_um / 2 / px, 1.0)
    local = _disk_grey_opening(smooth, int(np.ceil(r_local)))
    ndi.gaussian_filter(local, r_local, output=local)  # (in place: the same numbers)
    np.subtract(smooth, local, out=local)  # smooth - blurred opening, in place
    del smooth
    length_px = max(line_length_um / px, 3.0)
    # (the best orientation wins: a running maximum, strip by strip)
    resp = _max_line_response(local, _line_kernels(length_px, 12))
    del local
    far = _within_steps(bright, int(np.ceil(length_px)) + 2)
    np.logical_not(far, out=far)
    # (= _median_and_robust_sd(resp[far]), or of all of resp, without the gathered copy)
    m, s = _median_and_robust_sd_where(resp, far if np.count_nonzero(far) > 1000 else np.ones(resp.shape, bool))
    del far
    lo, hi = line_threshold_sd
    np.copyto(resp, np.inf, where=bright)  # (= np.where(bright, np.inf, resp), in place)
    thin = _hysteresis(resp, m + lo * s, m + hi * s)
    del resp
    centre = skeletonize(thin) & ~fg
    del thin
    # add centre-line pieces that reach beyond the bright structure (tips and dim branches),
    # not those that only run alongside it (they would bridge neighbouring processes)
    pieces, n = ndi.label(centre, structure=_EIGHT)
    if n:
        far = _farther_than(~fg, length_px / 2 + 1.5)
        reach = np.zeros(n + 1, bool)
        reach[np.unique(pieces[far & (pieces > 0)])] = True
        reach[0] = False
        fg |= reach[pieces]
    del pieces, centre
    # fill pinholes (not loops between processes): the holes are the background components
    # (4-connected, as binary_fill_holes propagates) that do not reach the image edge
    bg, nb = ndi.label(~fg)
    if nb:
        size = _label_sizes(bg, nb + 1, chunk=1 << 18)  # (small chunks: bincount copies them as int64)
        fill = size <= max(1.0 / px**2, 4)
        fill[np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))] = False
        fill[0] = False
        fg |= fill[bg]
    return fg, signal, halfmax, sd


def _component_maxima(f: np.ndarray, mask: np.ndarray, comp: np.ndarray, ids: np.ndarray | None) -> np.ndarray | None:
    """``local_maxima(np.where(mask, f, floor), connectivity=2, allow_borders=True) & mask``
    (``floor``: the minimum of ``f`` in the mask; ``mask == ids[comp]``, ``comp`` its
    8-connected components) one component at a time, in its bounding box and a ring of one
    pixel, padded with -inf.  A plateau above ``floor`` lies in one component and its
    neighbours outside it are ``floor``, so it is judged on the same values; a plateau at
    ``floor`` may reach beyond the box through the floor-valued background, so when one is
    found a maximum here, None (the caller takes the whole image).  None also for a
    non-finite ``floor``."""
    h, w = f.shape
    floor = np.inf
    step = max(1, (1 << 18) // max(w, 1))
    for r0 in range(0, h, step):  # (the minimum strip by strip: no gathered copy)
        v = f[r0 : r0 + step][mask[r0 : r0 + step]]
        if v.size:
            floor = min(floor, float(v.min()))
    if not np.isfinite(floor):
        return None if mask.any() else np.zeros(f.shape, bool)
    out = np.zeros(f.shape, bool)
    crops = []
    for i, box in enumerate(ndi.find_objects(comp), start=1):
        if box is None or (ids is not None and not ids[i]):
            continue
        sl = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(box, f.shape))
        crops.append((i, sl, np.where(mask[sl], f[sl], floor)))
    # the padded crops side by side in one image (shelves of rows), each in its ring of -inf: a
    # plateau of finite values stays inside its ring and the rings are never maxima (they touch
    # finite values), so each crop's maxima are those of its own call, at one call's overhead
    # (small crops are many); a crop of more than a quarter of the image is taken on its own
    width = f.shape[1] + 2
    small = [c for c in crops if c[2].size * 4 <= f.size]
    groups = [[c] for c in crops if c[2].size * 4 > f.size] + ([small] if small else [])
    for group in groups:
        places, x, y, shelf = [], 0, 0, 0
        for _, _, g in group:
            gh, gw = g.shape[0] + 2, g.shape[1] + 2
            if x and x + gw > width:
                x, y, shelf = 0, y + shelf, 0
            places.append((y, x))
            x, shelf = x + gw, max(shelf, gh)
        mosaic = np.full((y + shelf, max(width, max(g.shape[1] + 2 for _, _, g in group))), -np.inf, group[0][2].dtype)
        for (y0, x0), (_, _, g) in zip(places, group):
            mosaic[y0 + 1 : y0 + 1 + g.shape[0], x0 + 1 : x0 + 1 + g.shape[1]] = g
        found = local_maxima(mosaic, connectivity=2, allow_borders=False)
        del mosaic
        for (y0, x0), (i, sl, g) in zip(places, group):
            peaks = found[y0 + 1 : y0 + 1 + g.shape[0], x0 + 1 : x0 + 1 + g.shape[1]] & (comp[sl] == i)
            if (g[peaks] == floor).any():
                return None
            out[sl] |= peaks
    return out


def _basin_saddles(f: np.ndarray, basins: np.ndarray, peak: np.ndarray, a_list: list, b_list: list,
                   s_list: list) -> None:
    """Raise ``peak`` (per label) to the maximum of ``f`` in each basin and append the pairs of
    8-adjacent pixels of different basins and their saddle value (the lower of the two) to the
    lists (heights and saddles in double)."""
    sel = basins > 0
    np.maximum.at(peak, basins[sel].ravel(), f[sel].astype(np.float64).ravel())
    for off in itertools.product((-1, 0, 1), repeat=f.ndim):
        if off <= (0,) * f.ndim:  # each neighbour pair once
            continue
        sa = tuple(slice(max(0, -o), n_ - max(0, o)) for o, n_ in zip(off, f.shape))
        sb = tuple(slice(max(0, o), n_ - max(0, -o)) for o, n_ in zip(off, f.shape))
        la, lb = basins[sa], basins[sb]
        sel = la != lb
        sel &= la > 0
        sel &= lb > 0
        a_list.append(la[sel])
        b_list.append(lb[sel])
        s_list.append(np.minimum(f[sa][sel], f[sb][sel]))


def _dominant_maxima(
    f: np.ndarray, mask: np.ndarray, h: float, rel: float = 0.0, labelled: bool = False,
    comp: np.ndarray | None = None, ids: np.ndarray | None = None, want_regions: bool = True,
    maxima: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Maxima of ``f`` in ``mask`` whose dynamics exceed ``max(h, rel * peak)``, and the
    regions they drain.

    The dynamics of a regional maximum is how far one must descend from it before reaching
    a higher maximum (the height above the highest saddle towards higher ground; infinite for
    the top of each connected region).  With ``rel > 0`` a maximum of height ``peak`` (above
    0) must also descend by the fraction ``rel`` of its own height (``rel = 0.5``: the two
    hills are resolved when the valley between them falls below half the lower one).
    Computed with a watershed from every regional maximum and a union-find over the basin
    saddles, in descending order (Kruskal).

    Returns
    -------
    seeds : ndarray of bool (int32 with ``labelled``)
        Plateaus of the dominant maxima (with ``labelled``: numbered 1..m in raster order of
        their first pixel, as ``ndi.label(seeds, full connectivity)`` numbers them: each is a
        whole connected component of the regional maxima, so no two touch).
    regions : ndarray of int
        Each pixel of ``mask`` labelled with the dominant maximum whose basin (after merging
        the basins of non-dominant maxima into their higher neighbours) contains it.

    ``comp`` (with ``ids``): the 8-connected components of the mask, labelled, and which of
    them form it (``mask == ids[comp]``): the maxima are found one component at a time
    (:func:`_component_maxima`) and the basins flooded by :func:`_watershed`.  A float32 ``f`` is kept in float32 (the order of its
    values, hence the maxima, basins and saddles, is that of its exact double copy; heights and
    saddles are compared in double).  ``want_regions=False``: only the seeds (regions None).
    ``maxima``: the regional maxima in the mask when the caller has them (from
    :func:`_component_maxima`).
    """
    f = np.asarray(f)
    if f.dtype not in (np.float32, np.float64):
        f = f.astype(np.float64)
    # (only values inside the mask are read below: the basins lie in it; no -inf copy of f)
    full = np.ones((3,) * f.ndim, bool)
    if maxima is None and comp is not None and f.ndim == 2:
        maxima = _component_maxima(f, mask, comp, ids)
    g = None
    if maxima is None:
        floor = float(f[mask].min()) if mask.any() else 0.0
        g = np.where(mask, f, floor)
        maxima = local_maxima(g, connectivity=f.ndim, allow_borders=True) & mask
    found = _ws_kernel() if f.ndim == 2 else None
    if found is not None:
        # the seeds numbered straight into the padded array the flood fills (no copy of them)
        del g  # (the flood reads -f inside the mask: the same values as -g)
        offset = found[1]
        padded = np.zeros(tuple(n_ + 2 * q for n_, q in zip(f.shape, offset)), np.int32)
        seeds = padded[tuple(slice(q, q + n_) for q, n_ in zip(offset, f.shape))]
        n = ndi.label(maxima, structure=full, output=seeds)
    else:
        seeds, n = ndi.label(maxima, structure=full)
    if n == 0:
        return np.zeros(f.shape, np.int32 if labelled else bool), np.zeros(f.shape, np.int32)
    # a seed's pixels keep its label in the flood: the seeds are the basins' labels there
    is_seed = maxima  # (= seeds > 0: the seeds are the labelled maxima)
    del maxima
    if found is not None:
        basins = _watershed(f, seeds, mask, negate=True, padded=padded)
        del padded
    else:
        if g is None:  # pragma: no cover (maxima given, skimage without the kernel's internals)
            g = np.where(mask, f, float(f[mask].min()))
        basins = watershed(np.negative(g, out=g), seeds, mask=mask, connectivity=f.ndim)
        del g
    del seeds
    peak = np.full(n + 1, -np.inf)
    a_list, b_list, s_list = [], [], []
    _basin_saddles(f, basins, peak, a_list, b_list, s_list)
    a = np.concatenate(a_list).astype(np.int64)
    b = np.concatenate(b_list).astype(np.int64)
    sad = np.concatenate(s_list).astype(np.float64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo * (n + 1) + hi
    # each pair of basins once, with its highest saddle, in ascending order of the pair (as the
    # first of each pair after np.lexsort((-sad, key)); np.fmax: the highest non-NaN, as NaN
    # sorts last)
    order = np.argsort(key)
    key = key[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.intp)
    sad = np.fmax.reduceat(sad[order], first) if len(key) else sad
    lo, hi = lo[order[first]], hi[order[first]]
    del order, key
    # (Python lists in the loop: indexing them is several times faster than numpy scalars, and
    # the heights, saddles and thresholds are the same doubles)
    parent = list(range(n + 1))  # union-find over components
    top = list(range(n + 1))  # highest maximum of each component
    drain_l = list(range(n + 1))  # the maximum each maximum merged into (itself if dominant)
    dominant_l = [True] * (n + 1)
    peak_l = peak.tolist()
    by_saddle = np.argsort(-sad, kind="stable")

    for a_i, b_i, s_k in zip(lo[by_saddle].tolist(), hi[by_saddle].tolist(), sad[by_saddle].tolist()):
        ra = a_i
        while parent[ra] != ra:
            ra = parent[ra]
        while parent[a_i] != ra:
            parent[a_i], a_i = ra, parent[a_i]
        rb = b_i
        while parent[rb] != rb:
            rb = parent[rb]
        while parent[b_i] != rb:
            parent[b_i], b_i = rb, parent[b_i]
        if ra == rb:
            continue
        ta, tb = top[ra], top[rb]
        low, high = (ta, tb) if peak_l[ta] < peak_l[tb] else (tb, ta)
        if peak_l[low] - s_k < max(h, rel * peak_l[low]):
            dominant_l[low] = False
            drain_l[low] = high
        parent[ra] = rb
        top[rb] = high
    drain = np.array(drain_l, dtype=np.intp)
    dominant = np.array(dominant_l, dtype=bool)
    del parent, top, drain_l, dominant_l, peak_l
    # resolve each maximum to its dominant ancestor
    resolved = drain.copy()
    for _ in range(n):
        nxt = resolved[resolved]
        if np.array_equal(nxt, resolved):
            break
        resolved = nxt
    dominant[0] = False
    regions = resolved[basins] * (basins > 0) if want_regions else None
    if labelled:
        number = np.where(dominant, np.cumsum(dominant), 0).astype(basins.dtype)
        out = basins  # (number[seeds]: looked up in place, strip by strip)
        step = max(1, (1 << 18) // max(out.shape[-1], 1))
        for r0 in range(0, out.shape[0], step):
            out[r0 : r0 + step] = number[out[r0 : r0 + step]]
    else:
        out = dominant[basins]  # (= dominant[seeds])
    del basins
    out[~is_seed] = 0
    return out, regions


def _somata(
    signal: np.ndarray,
    halfmax: np.ndarray,
    px: float,
    soma_diameter_um: float,
    soma_min_diameter_um: float,
    separation: float,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Somata (label image 1..n): one per hill of the image smoothed at the scale of a soma.

    The background-corrected intensity (negative values clipped) is smoothed with a Gaussian
    of SD ``soma_diameter_um / (2 sqrt 2)`` (the scale at which a disk of that diameter gives
    the strongest blob response): a soma becomes one round hill, whatever its texture,
    nucleus or saturation, while processes (narrower than a soma) flatten to low ridges.
    Hills that stand out by ``separation`` of their own height above the saddle towards a
    higher hill are candidates (:func:`_dominant_maxima`); only hills above 4 SDs of the
    smoothed background count.  A candidate is a soma when the upper half of its hill holds
    a compact bright body: bright structure at half maximum that contains a disk of
    ``0.8 * soma_min_diameter_um`` (a morphological opening).  Bulbs, varicosities and
    fragments of processes are smaller and seed nothing; their foreground goes to the cell
    it is connected to.  Returns the somata, their number and their soma-scale heights (the
    maximum of the soma-scale intensity over each soma, 0..n; that intensity is computed
    strip by strip, never held whole).
    """
    sigma = max(soma_diameter_um / (2 * np.sqrt(2)) / px, 1.0)
    # smooth at soma scale on a grid binned to a third of the smoothing SD (the result is
    # smooth at that scale; fine pixels would make the wide kernel expensive), then back
    h, w = signal.shape
    k = max(int(sigma // 3), 1)
    hp, wp = -(-h // k) * k, -(-w // k) * k
    if k == 1:  # (the mean over 1 x 1 bins is the image itself)
        binned = signal
    else:
        binned = np.pad(signal, ((0, hp - h), (0, wp - w)), mode="edge").reshape(hp // k, k, wp // k, k).mean(axis=(1, 3))
    f_small = ndi.gaussian_filter(np.maximum(binned, 0), sigma / k)
    floor = 4.0 * _robust_sd(ndi.gaussian_filter(binned, sigma / k))
    tops, regions = _dominant_maxima(f_small, f_small > floor, 0.0, rel=separation, labelled=True)
    n = int(tops.max())
    if n == 0:
        return np.zeros(signal.shape, np.int32), 0, np.full(1, -np.inf)
    # the hill of each top: its drainage region (on the binned grid, then repeated: the same
    # as the lookup of the repeated regions and tops)
    top_region = np.zeros(int(regions.max()) + 1, np.int32)  # (int32 label maps: half the memory)
    top_region[regions[tops > 0]] = tops[tops > 0]
    del tops
    hill = top_region[regions]
    hill *= regions > 0
    del regions
    step = max(1, (1 << 18) // max(w, 1))
    f_small64 = f_small.astype(np.float64) if k > 1 else None
    if k > 1:  # (np.repeat(np.repeat(hill, k, 0), k, 1)[:h, :w], strip by strip)
        small_hill, hill = hill, np.empty((h, w), np.int32)
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            hill[r0:r1] = np.repeat(small_hill[np.arange(r0, r1) // k], k, axis=1)[:, :w]
        del small_hill

    def soma_scale_rows(r0: int, r1: int) -> np.ndarray:
        """Rows of the soma-scale intensity (``ndi.zoom`` of ``f_small``, order 1, grid mode,
        cropped; computed row by row when needed, never held whole)."""
        if k == 1:
            return f_small[r0:r1]
        # (= ndi.zoom order 1, grid mode, cropped; the double copy of the small grid made once)
        return _zoom_linear(f_small64, k, (h, w), row_range=(r0, r1), dtype=f_small.dtype)

    def label_max(labels: np.ndarray, scattered: bool = False, keep: list | None = None) -> np.ndarray:
        """``_label_max(soma-scale intensity, labels, n)``, strip by strip (``scattered``: the
        intensity computed at the labelled pixels only, for labels that cover a few per cent of
        the image; the same numbers, :func:`_zoom_linear_at`).  ``keep``: a list that receives
        the intensity at the labelled pixels of each strip."""
        out = np.full(n + 1, -np.inf)
        for r0 in range(0, h, step):
            lab = labels[r0 : r0 + step]
            sel = lab > 0
            if sel.any():
                if scattered and k > 1:
                    rr, cc = np.nonzero(sel)
                    vals = _zoom_linear_at(f_small64, k, (h, w), rr + r0, cc, dtype=f_small.dtype)
                else:
                    vals = soma_scale_rows(r0, min(h, r0 + step))[sel]
                np.maximum.at(out, lab[sel], vals.astype(np.float64))
            else:
                vals = None
            if keep is not None:
                keep.append(vals)
        return out

    # above half the top's height; with a zoom, the intensity at the hills' pixels (about a tenth
    # of the image, in float32) is kept from this pass for the cut below instead of zooming
    # every row again (the same values)
    kept: list | None = [] if k > 1 else None
    height = label_max(hill, keep=kept)
    height[0] = np.inf
    # hill = np.where(f >= 0.5 * height[hill], hill, 0), in place and in strips of rows (no
    # full-size double temporaries; where hill is 0 the test fails and 0 stays 0)
    for i, r0 in enumerate(range(0, h, step)):
        hs = hill[r0 : r0 + step]
        if kept is None:
            hs[~(soma_scale_rows(r0, min(h, r0 + step)) >= 0.5 * height[hs])] = 0
        elif kept[i] is not None:
            sel = hs > 0
            sub = hs[sel]
            sub[~(kept[i] >= 0.5 * height[sub])] = 0
            hs[sel] = sub
            kept[i] = None
    del kept
    # compact bright body on each hill (pixels next to another hill excluded): (max 3 x 3 !=
    # hill) | (min 3 x 3 of the hills with 0 as n + 1 != hill), in strips of rows read with a
    # row of margin (the rows beyond the image reflected, as the whole-image filter does)
    edge = np.empty(hill.shape, bool)
    for r0 in range(0, h, max(step, 2)):
        r1 = min(h, r0 + max(step, 2))
        a, b = max(0, r0 - 1), min(h, r1 + 1)
        block, mine = hill[a:b], hill[r0:r1]
        e = _square_rank(block, 1, "max")[r0 - a : r1 - a] != mine
        e |= _square_rank(np.where(block > 0, block, n + 1), 1, "min")[r0 - a : r1 - a] != mine
        edge[r0:r1] = e
    body = _fast_disk_opening((hill > 0) & ~edge & halfmax, 0.4 * soma_min_diameter_um / px)
    del edge
    hill[~body] = 0  # (np.where(body, hill, 0), in place)
    del body
    somata = _relabel_ascending(hill, in_place=True)
    n_somata = int(somata.max())
    return somata, n_somata, label_max(somata, scattered=True)[: n_somata + 1]


def _relabel_ascending(labels: np.ndarray, in_place: bool = False) -> np.ndarray:
    """``skimage.segmentation.relabel_sequential(labels)[0]`` for non-negative labels: the
    labels present numbered 1..m in ascending order (a lookup table; skimage's general
    mapping took ~5x longer).  ``in_place``: written into ``labels`` (C-contiguous), strip
    by strip, and returned."""
    present = np.zeros(int(labels.max(initial=0)) + 1, bool)
    flat = labels.ravel()
    for i in range(0, flat.size, 1 << 18):  # (in chunks: the index is copied as intp)
        present[flat[i : i + (1 << 18)]] = True
    present[0] = False
    lut = (np.cumsum(present) * present).astype(labels.dtype)
    if not in_place:
        return lut[labels]
    for i in range(0, flat.size, 1 << 18):
        flat[i : i + (1 << 18)] = lut[flat[i : i + (1 << 18)]]
    return labels


def _touching_pairs(labels: np.ndarray, max_label: int | None = None) -> np.ndarray:
    """Pairs ``(a, b)``, ``a < b``, of non-zero labels that are 8-neighbours somewhere (with
    ``max_label``: of labels <= it, as in ``np.where(labels <= max_label, labels, 0)``; no copy)."""
    out = []
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:, :], labels[:-1, :]),
                 (labels[1:, 1:], labels[:-1, :-1]), (labels[1:, :-1], labels[:-1, 1:])):
        m = a != b
        m &= a > 0
        m &= b > 0
        if max_label is not None:
            m &= a <= max_label
            m &= b <= max_label
        out.append(np.stack([np.minimum(a[m], b[m]), np.maximum(a[m], b[m])], axis=1))
        del m
    pairs = np.concatenate(out)
    if not len(pairs):
        return pairs.reshape(0, 2)
    # unique rows, sorted (as np.unique(pairs, axis=0)), through one integer key per pair
    base = int(pairs[:, 1].max()) + 1
    key = np.unique(pairs[:, 0].astype(np.int64) * base + pairs[:, 1])
    return np.stack([key // base, key % base], axis=1).astype(labels.dtype)


def segment_microglia(
    image: np.ndarray,
    pixel_size_um: float,
    *,
    soma_min_diameter_um: float = 5.0,
    soma_diameter_um: float = 8.0,
    soma_separation: float = 0.5,
    soma_relative_height: float = 1 / 3,
    process_max_width_um: float = 2.0,
    smoothing_um: float = 0.15,
    background_um: float = 20.0,
    line_length_um: float = 1.0,
    threshold_sd: tuple[float, float] = (4.0, 8.0),
    line_threshold_sd: tuple[float, float] = (3.0, 6.0),
    border_somata: str = "centre",
    entering_process_rise: tuple[float, float] | None = (8.0, 0.3),
    terminal_swellings: bool = True,
) -> np.ndarray:
    """Segment microglia in an Iba1 image: one label per cell, processes attached to their soma.

    Somata are found as hills of the image smoothed at the scale of a soma (one seed per
    soma, however textured, saturated or coarsely sampled), touching cells are split by a
    watershed seeded from the somata, processes stay attached to their soma, fragments not connected
    to a soma and debris smaller than a soma are dropped.  See the module docstring for the
    method and the counting rule at the border.

    Parameters
    ----------
    image : ndarray
        Iba1 image, YX (use a maximum projection for a stack).
    pixel_size_um : float
        Pixel size in um.
    soma_min_diameter_um : float
        Smallest soma diameter (microglia somata are ~6-10 um across).  Foreground that does
        not contain a disk of ``0.8 *`` this diameter is not a soma; debris smaller than that
        and fragments not connected to a soma are dropped.
    soma_diameter_um : float
        Typical soma diameter: sets the scale (Gaussian SD ``soma_diameter_um / (2 sqrt 2)``)
        at which somata are found as hills of the smoothed intensity.
    soma_separation : float
        Two soma-scale hills are separate somata when the valley between them falls below
        ``1 - soma_separation`` of the lower hill's height (0.5: below half).
    soma_relative_height : float
        A soma-scale hill lower than this fraction of the soma of a cell it touches is a
        thickening of that cell's process, not a soma (0: no such test).
    process_max_width_um : float
        Widest process.  Sets the local background of the thin-process detection and the
        window of the half-maximum cut.
    smoothing_um : float
        SD of the Gaussian smoothing (at least half a pixel).
    background_um : float
        Radius of the broad background (grey opening, wider than the half-width of the
        widest cell body, so that thick or amoeboid cell bodies are not taken for background).
    line_length_um : float
        Length of the line segments averaged by the thin-process detector.
    threshold_sd : (float, float)
        Low and high hysteresis thresholds of the bright-structure detection, in robust SDs
        of the background-corrected image.
    line_threshold_sd : (float, float)
        Low and high hysteresis thresholds of the thin-process detection, in robust SDs of
        the line response in the background.
    border_somata : {"centre", "all"}
        ``"centre"``: keep a cell whose soma is cut by the border only when the centre of the
        circle fitted to its visible outline is inside the field (unbiased density);
        ``"all"``: keep every cell with a detected soma.
    entering_process_rise : (float, float) or None
        ``(k, f)``: a maximum at the field edge rising more than ``max(k * noise SD,
        f * median soma peak)`` above the saddle that links it to a cell is a process of a
        cell outside the field and is dropped.  None: no such test.
    terminal_swellings : bool
        Attach terminal swellings to the cell whose process they end: a candidate soma
        joined to exactly one other cell, lower and thinner than that cell's soma, whose own
        cell has no process (skeleton branch outside its soma, not leading to the other
        cell) as long as ``soma_min_diameter_um``, is a swelling at the end of the other
        cell's process (an end bulb), not a soma.  False: no such test.

    Returns
    -------
    ndarray of int32
        Label image, 0 = background, 1..n = cells (labels are sequential).

    Notes
    -----
    Thresholds are multiples of the image's own noise rather than an Otsu-type split of the
    histogram: with a few cells in a field the histogram has no second mode to split, and
    noise units carry over between microscopes.  A 512 x 512 field (0.2 um pixels, 19 cells)
    takes ~0.15 s to segment (CPU; ~8x a global threshold with connected components and
    skeletonisation on the EMBL fields), most of it in the two skeletonisations, the 12 line
    filters, the Gaussian smoothings and the three watershed floods (soma-scale hills,
    processes entering from the edge, cells); :func:`measure_microglia` adds ~0.2 s.

    Examples
    --------
    A disk-shaped soma with four straight processes:

    >>> from skimage.draw import disk as draw_disk, line as draw_line
    >>> mask = np.zeros((200, 200), bool)
    >>> mask[draw_disk((100, 100), 18)] = True
    >>> for y1, x1 in ((100, 170), (100, 30), (30, 100), (170, 100)):
    ...     rr, cc = draw_line(100, 100, y1, x1)
    ...     mask[rr, cc] = True
    >>> rng = np.random.default_rng(0)
    >>> img = ndi.gaussian_filter(mask * 200.0, 0.7) + rng.normal(100, 5, mask.shape)
    >>> labels = segment_microglia(img, 0.2)
    >>> int(labels.max())
    1
    """
    img = np.asarray(image)
    if img.dtype not in (np.uint8, np.int8, np.uint16, np.int16):
        img = np.asarray(img, dtype=np.float32)
    # (small integers are exact in float32 and the smoothing reads them in double either way:
    # no float32 copy of the image, the same smoothed image)
    if img.ndim != 2:
        colour = img.ndim == 3 and img.shape[-1] in (3, 4)
        raise ValueError(f"segment_microglia needs a 2-D (YX) image, got shape {img.shape}"
                         + (COLOUR_HINT if colour else "; use a maximum projection of a stack"))
    require_plane_size(img.shape)
    require_finite(img)
    require_pixel_size(pixel_size_um)
    if border_somata not in ("centre", "all"):
        raise ValueError(f"border_somata must be 'centre' or 'all', got {border_somata!r}")
    # the constant fill of registration or stitching (:mod:`analysis.measure.outside`) would pull
    # the background and noise estimates down and turn the imaged background into foreground:
    # it gets the imaged edge's background and noise, and no cell pixel
    not_imaged = not_imaged_mask(img, pixel_size_um)
    if not_imaged is not None:
        img = fill_not_imaged(img, not_imaged, pixel_size_um)
    # a camera's hot pixels would be taken for the local maximum of the processes around them
    # (:mod:`analysis.measure.hotpixels`; the thinnest process as imaged: sigma 0.15 um)
    img, _ = repair_hot_pixels(img, pixel_size_um, _THINNEST_PROCESS_SIGMA_UM)
    px = float(pixel_size_um)
    fg, signal, halfmax, sd = _foreground(
        img, px, smoothing_um=smoothing_um, process_max_width_um=process_max_width_um,
        background_um=background_um, line_length_um=line_length_um, threshold_sd=threshold_sd,
        line_threshold_sd=line_threshold_sd,
    )
    shape = img.shape
    del img  # (our float32 copy of an integer image: not needed any more)
    # the soma-scale height of each soma seed is all that is read of the soma-scale intensity
    # below: the seeds' pixels do not change (entering-process seeds keep off them, a reflood
    # removes whole seeds, whose labels then vanish from the cells), so it is taken once, there
    markers, n, soma_height = _somata(signal, halfmax, px, soma_diameter_um, soma_min_diameter_um, soma_separation)
    del halfmax
    if n == 0:
        log.debug("no soma found")
        return np.zeros(shape, np.int32)
    if entering_process_rise is not None:
        index = np.flatnonzero(markers)  # (the somata as pixel indices and labels: small)
        somata = (index, markers.ravel()[index])
        del markers, index
        markers = _add_entering_markers(somata, n, fg, signal, sd, px, process_max_width_um,
                                        entering_process_rise)
        del somata
    # flood from bright to dim; intensity differences below two noise SDs are not evidence,
    # so within such a step the flood advances breadth-first (by path length)
    levels = _flood_levels(signal, sd)  # -floor(signal / 2 SD), int16 when whole numbers fit
    del signal
    found = _ws_kernel()
    # the seeds keep their labels in the flood (and in a reflood, those not dropped): the
    # markers are the labels under ``seed``, so only that boolean mask is kept beside the labels
    seed = markers > 0
    if found is None:  # pragma: no cover (skimage without the kernel's internals)
        labels = watershed(levels, markers, mask=fg, connectivity=2)
        del markers
    else:
        # (= watershed(levels, markers, mask=fg, connectivity=2), as :func:`_watershed` floods,
        # with the markers moved into the flood's output and the foreground into its padded
        # mask, and the levels held only as the kernel's double image during the flood)
        offset = found[1]
        padded_shape = tuple(n_ + 2 * q for n_, q in zip(shape, offset))
        inner = tuple(slice(q, q + n_) for q, n_ in zip(offset, shape))
        # labels in int16 while they fit (the same flood, half the memory of int32; the result
        # is int32 as before)
        out = np.zeros(padded_shape, np.int16 if int(markers.max()) <= np.iinfo(np.int16).max else markers.dtype)
        np.copyto(out[inner], markers, where=fg)  # (markers * mask)
        del markers
        fg_padded = np.zeros(padded_shape, bool)
        fg_padded[inner] = fg
        fg = fg_padded[inner]
        img = np.zeros(padded_shape, np.float64)
        img[inner] = levels
        levels_dtype = levels.dtype
        del levels
        _flood(found, img, out, fg_padded)
        levels = img[inner].astype(levels_dtype)  # (whole numbers or float32 values: exact)
        del img
        labels = out[inner].copy()
        del out
    pairs = None  # (the touching pairs of the cells, while the labels are those they were taken from)
    if soma_relative_height > 0:
        # a hill that reaches less than this fraction of the soma of a cell it touches is a
        # thickening of that cell's process (a bulb, an end-foot), not a soma of its own
        height = soma_height  # (= _label_max(soma_scale, np.where(markers <= n, markers, 0), n))
        pairs = _touching_pairs(labels, max_label=n)
        a, b = pairs[:, 0], pairs[:, 1]
        weak = np.r_[a[height[a] < soma_relative_height * height[b]], b[height[b] < soma_relative_height * height[a]]]
        if len(weak):
            comp, _ = ndi.label(fg, structure=_EIGHT)
            markers = np.where(seed, labels, 0)
            labels, markers = _reflood(levels, markers, np.isin(markers, weak), comp, labels)
            seed = markers > 0
            pairs = None
            del comp, markers
    if terminal_swellings:
        markers = np.where(seed, labels, 0)
        swollen = _terminal_swellings(labels, markers, n, soma_height, px, soma_min_diameter_um,
                                      process_max_width_um, pairs=pairs)
        if len(swollen):
            comp, _ = ndi.label(fg, structure=_EIGHT)
            labels, markers = _reflood(levels, markers, np.isin(markers, swollen), comp, labels)
            seed = markers > 0
            del comp
        del markers
    del levels, fg
    labels[labels > n] = 0  # basins of processes entering from outside the field
    if border_somata == "centre":
        # (the seeds of entering processes, labels above n, are 0 in the labels now)
        drop = _somata_centred_outside(np.where(seed, labels, 0))
        if drop:
            labels[np.isin(labels, drop)] = 0
    del seed
    labels = _relabel_ascending(labels)
    log.debug("segmented %d microglia", int(labels.max()))
    if not_imaged is not None:
        labels[not_imaged] = 0
    return labels.astype(np.int32)


def _flood_levels(signal: np.ndarray, sd: float) -> np.ndarray:
    """The levels of the cell flood, ``-floor(signal / (2 sd))`` computed in float32, as int16
    when they are finite whole numbers in its range (exact, and half the memory; the flood
    reads them in double), else in float32 (in place in ``signal``).  Strip by strip: no
    full-size float32 temporary besides ``signal``."""
    h, w = signal.shape
    step = max(1, (1 << 18) // max(w, 1))
    out = np.empty(signal.shape, np.int16)
    ok = signal.size > 0
    for r0 in range(0, h if ok else 0, step):
        t = signal[r0 : r0 + step] / (2.0 * sd)
        np.negative(np.floor(t, out=t), out=t)
        if not (np.isfinite(t).all() and -32768 <= t.min() and t.max() <= 32767):
            ok = False
            break
        out[r0 : r0 + step] = t
    if ok:
        return out
    del out
    signal /= 2.0 * sd
    np.negative(np.floor(signal, out=signal), out=signal)
    return signal


def _reflood(
    levels: np.ndarray, markers: np.ndarray, drop: np.ndarray, comp: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the seeds under ``drop`` and flood again (the watershed of
    :func:`segment_microglia`), only within the foreground components (``comp``) that held
    them, cropped to their bounding box: the flood of each component depends only on its own
    seeds, and a crop keeps the raster order of its pixels, so the result is the flood of the
    whole image."""
    hit = np.zeros(int(comp.max()) + 1, bool)
    hit[np.unique(comp[drop])] = True
    hit[0] = False
    markers = np.where(drop, 0, markers)
    region = hit[comp]
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    if not len(rows):
        return labels, markers
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    sub_region = region[sl]
    sub = _watershed(levels[sl], markers[sl], sub_region)  # (= watershed(..., mask=sub_region, connectivity=2))
    labels = labels.copy()
    labels[sl][sub_region] = sub[sub_region]
    return labels, markers


def _label_max_inscribed(seeds: np.ndarray, n: int, only: set[int] | None = None) -> np.ndarray:
    """``_label_max(distance_transform_edt(seeds > 0), seeds, n)`` (the largest distance from a
    pixel of each label to the nearest 0 pixel), one small distance transform per label, cropped
    to its bounding box and a margin of one pixel.  The same result when that margin holds no
    labelled pixel: the nearest 0 pixel of a pixel in the box is then inside the crop (a 0
    pixel beyond it is no nearer than its projection onto the margin); otherwise the whole
    image is transformed.  Labels above ``n`` count as 0.  ``only``: the labels wanted (each
    one's value is the same, from its crop or from the whole image; the others are -inf unless
    the whole image was transformed)."""
    out = np.full(n + 1, -np.inf)
    h, w = seeds.shape
    crops = []
    for i, box in enumerate(ndi.find_objects(seeds, max_label=n), start=1):
        if box is None or (only is not None and i not in only):
            continue
        y0, y1 = max(box[0].start - 1, 0), min(box[0].stop + 1, h)
        x0, x1 = max(box[1].start - 1, 0), min(box[1].stop + 1, w)
        crop = seeds[y0:y1, x0:x1]
        crop = (crop > 0) & (crop <= n)
        inner = np.zeros(crop.shape, bool)
        inner[box[0].start - y0 : box[0].stop - y0, box[1].start - x0 : box[1].stop - x0] = True
        if crop[~inner].any() or crop.all():  # (a neighbour in the margin, or no 0 pixel in reach)
            seeds = np.where(seeds <= n, seeds, 0)
            return _label_max(ndi.distance_transform_edt(seeds > 0), seeds, n)
        crops.append((i, (slice(y0, y1), slice(x0, x1)), crop))
    for i, sl, crop in crops:
        out[i] = float(ndi.distance_transform_edt(crop)[seeds[sl] == i].max())
    return out


def _terminal_swellings(
    labels: np.ndarray,
    markers: np.ndarray,
    n: int,
    soma_height: np.ndarray,
    px: float,
    soma_min_diameter_um: float,
    process_max_width_um: float = 2.0,
    pairs: np.ndarray | None = None,
) -> list[int]:
    """Seeds (1..n) that are swellings at the end of another cell's process, not somata.

    A soma is the hub of its cell, from which the processes radiate, and the thickest and
    (at soma scale) brightest part of it.  A bright bulb at the end of a process is none of
    these: its cell is joined to exactly one other cell (through the process it ends), its
    body is thinner and its soma-scale hill lower than that cell's soma, and it has no
    process of its own: every skeleton branch outside its soma (:class:`_Cell`, the same
    conventions as :func:`measure_microglia`) that does not lead to the other cell is
    shorter than the smallest soma diameter.  ``soma_height``: the soma-scale height of each
    seed 1..n (its maximum of the soma-scale intensity).  ``pairs``:
    ``_touching_pairs(labels, max_label=n)`` when the caller has it.
    """
    # (the cells are the labels <= n: labels above n are read as 0 where it matters, no copy)
    if pairs is None:
        pairs = _touching_pairs(labels, max_label=n)
    if not len(pairs):
        return []
    partners: dict[int, list[int]] = {}
    for a, b in pairs:
        partners.setdefault(int(a), []).append(int(b))
        partners.setdefault(int(b), []).append(int(a))
    height = soma_height
    lower = [(a, nb[0]) for a, nb in partners.items() if len(nb) == 1 and height[a] < height[nb[0]]]
    if not lower:
        return []
    # (seeds 1..n, markers above n read as 0; only those of the pairs above are measured)
    thickness = _label_max_inscribed(markers, n, only={c for pair in lower for c in pair})
    candidates = [(a, b) for a, b in lower if thickness[a] < thickness[b]]
    if not candidates:
        return []
    boxes = ndi.find_objects(labels, max_label=n)
    min_process_px = soma_min_diameter_um / px
    out = []
    for a, b in candidates:
        box = boxes[a - 1]
        if box is None:
            continue
        sl = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in box)
        crop = labels[sl]  # (a and b <= n: == a and != b as in the cells <= n)
        cell = np.pad(crop == a, 1)
        c = _Cell(cell, px, soma_min_diameter_um, 1.0, process_max_width_um)
        # a branch leads to the other cell when it ends there: the skeleton stops about a
        # half-width short of the cut, so its tip is within the local half-width of it
        reach = ndi.distance_transform_edt(cell) + 1.5 - ndi.distance_transform_edt(np.pad(crop != b, 1, constant_values=True))
        branches, nb = ndi.label(c.outside, structure=_EIGHT)
        own = [_length_px(br) for br in (branches == k for k in range(1, nb + 1)) if not (reach[br] >= 0).any()]
        if max(own, default=0.0) < min_process_px:
            out.append(a)
    log.debug("%d terminal swellings attached to the cell whose process they end", len(out))
    return out


def _edge_band(a: np.ndarray, k: int) -> np.ndarray:
    """The values of ``a`` within ``k`` pixels of the image edge (each once, in no particular
    order), without a full-size mask of the band."""
    h, w = a.shape
    if 2 * k >= h or 2 * k >= w:
        return a.ravel()
    return np.concatenate([a[:k].ravel(), a[h - k :].ravel(), a[k : h - k, :k].ravel(), a[k : h - k, w - k :].ravel()])


def _compact_grid(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the kept ``rows`` and ``cols`` (ascending indices) in a compact grid in
    which each run of dropped rows (columns) between kept ones becomes one empty row (column).

    A mask whose pixels lie in the kept rows and columns keeps its 8-neighbourhoods there
    (pixels two or more rows apart stay apart: a dropped run leaves a row between them) and its
    raster order, so a flood of the mask (skimage's kernel: seeds queued in raster order,
    neighbours in a fixed order of offsets) and the pairs of neighbouring pixels are the same
    on the compact grid."""

    def axis(kept: np.ndarray) -> np.ndarray:
        if not len(kept):
            return kept.copy()
        gap = np.r_[0, (np.diff(kept) > 1).astype(np.intp)]
        return np.arange(len(kept)) + np.cumsum(gap)

    return axis(rows), axis(cols)


def _to_compact(a: np.ndarray, grid: tuple[np.ndarray, ...]) -> np.ndarray:
    """``a`` on the compact grid of :func:`_compact_grid` (``grid``: kept rows, kept columns,
    their positions); the empty rows and columns are 0."""
    rows, cols, at_rows, at_cols = grid
    shape = (int(at_rows[-1]) + 1 if len(at_rows) else 0, int(at_cols[-1]) + 1 if len(at_cols) else 0)
    out = np.zeros(shape, a.dtype)
    out[np.ix_(at_rows, at_cols)] = a[np.ix_(rows, cols)]
    return out


def _add_entering_markers(
    somata: tuple[np.ndarray, np.ndarray],
    n: int,
    fg: np.ndarray,
    signal: np.ndarray,
    sd: float,
    px: float,
    process_max_width_um: float,
    rise: tuple[float, float],
) -> np.ndarray:
    """Add markers (labels > n) for processes entering the field from outside cells.

    A process of a cell outside the field is brightest where it crosses the field edge (a
    cell's own processes get dimmer away from the soma).  Maxima of the foreground intensity
    within a process width of the edge whose dynamics (rise above the saddle towards any
    brighter structure) exceed ``max(rise[0] * noise SD, rise[1] * median soma peak)`` seed
    their own basins.

    ``somata``: the soma markers (labels 1..n) as the flat indices of their pixels and their
    labels (a small fraction of the image: no full-size label image is held during the
    flood).  Returns the markers (int32 label image of the shape of ``fg``): the somata and
    the entering processes' seeds.
    """
    index, values = somata
    shape = fg.shape

    def soma_image(dtype=np.int32) -> np.ndarray:
        out = np.zeros(shape, dtype)
        out.ravel()[index] = values
        return out

    rise_sd, rise_fraction = rise
    # (= _label_max(signal, markers, n))
    soma_max = np.full(n + 1, -np.inf)
    np.maximum.at(soma_max, values, signal.ravel()[index].astype(np.float64))
    soma_peak = float(np.median(soma_max[1:]))
    h = max(rise_sd * sd, rise_fraction * soma_peak)
    k = max(int(round(process_max_width_um / px)), 1)
    # the dynamics of a maximum depend only on the foreground component it lies in: only the
    # components that reach the edge band are analysed (the same maxima, less work)
    comp, _ = ndi.label(fg, structure=_EIGHT)
    at_edge = np.zeros(int(comp.max()) + 1, bool)
    at_edge[np.unique(_edge_band(comp, k))] = True
    at_edge[0] = False
    mask = at_edge[comp]
    maxima = _component_maxima(signal, mask, comp, at_edge)  # (None: the whole image's below)
    del comp
    if maxima is None:
        lab, _ = _dominant_maxima(signal, mask, h, labelled=True, want_regions=False)
    else:
        # those components lie along the edges: analysed on the grid of the rows and columns
        # that hold them (:func:`_compact_grid`), the same maxima, flood and saddles
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        grid = (rows, cols) + _compact_grid(rows, cols)
        lab_c, _ = _dominant_maxima(_to_compact(signal, grid), _to_compact(mask, grid), h, labelled=True,
                                    want_regions=False, maxima=_to_compact(maxima, grid))
        del mask, maxima
        lab = np.zeros(shape, np.int32)
        lab[np.ix_(rows, cols)] = lab_c[np.ix_(grid[2], grid[3])]
        del lab_c
    n_extra = int(lab.max())
    if n_extra == 0:
        return soma_image()
    keep = np.zeros(n_extra + 1, bool)
    keep[np.unique(_edge_band(lab, k))] = True
    keep[np.unique(lab[_binary_rank(soma_image(bool), {1: [-1, 0, 1]}, "max")])] = False  # soma tops
    keep[0] = False
    log.debug("%d processes enter the field from outside cells", int(keep.sum()))
    kept = keep[lab]
    lab += n
    lab[~kept] = 0
    rows, cols = np.divmod(index, shape[1])
    free = ~kept[rows, cols]
    lab[rows[free], cols[free]] = values[free]  # (= np.where(keep[lab], lab + n, markers))
    return lab


def _fit_circle(yx: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (Kasa) circle through points; returns (cy, cx, radius)."""
    y, x = yx[:, 0].astype(float), yx[:, 1].astype(float)
    a = np.column_stack([2 * y, 2 * x, np.ones_like(y)])
    sol, *_ = np.linalg.lstsq(a, y**2 + x**2, rcond=None)
    cy, cx = sol[0], sol[1]
    return float(cy), float(cx), float(np.sqrt(max(sol[2] + cy**2 + cx**2, 0.0)))


def _somata_centred_outside(somata: np.ndarray) -> list[int]:
    """Labels of somata cut by the image border whose fitted centre lies outside the field.

    The centre is that of the least-squares circle through the soma outline, leaving out the
    outline pixels on the image border.
    """
    h, w = somata.shape
    out = []
    # (the somata with a pixel on the border are those whose bounding box reaches it: only
    # they are looked at, in ascending order, as regionprops lists them)
    at_border = np.unique(_edge_band(somata, 1))
    at_border = at_border[at_border > 0]
    if not len(at_border):
        return out
    boxes = ndi.find_objects(somata, max_label=int(at_border[-1]))
    for label in at_border:
        box = boxes[label - 1]
        y0, x0, y1, x1 = box[0].start, box[1].start, box[0].stop, box[1].stop
        m = np.pad(somata[box] == label, 1)
        outline = np.argwhere(m & ~ndi.binary_erosion(m, structure=_EIGHT)) + [y0 - 1, x0 - 1]
        inner = (outline[:, 0] > 0) & (outline[:, 0] < h - 1) & (outline[:, 1] > 0) & (outline[:, 1] < w - 1)
        outline = outline[inner]
        if len(outline) < 5:
            out.append(int(label))
            continue
        cy, cx, _ = _fit_circle(outline)
        if not (-0.5 <= cy < h - 0.5 and -0.5 <= cx < w - 0.5):
            out.append(int(label))
    return out
