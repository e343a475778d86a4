"""The analysed area of a PSD95 field and the synapse density in it.

:func:`analysed_area_mask` keeps the neuropil where puncta can be counted and leaves out
voids (neuronal somata, vessels) and unusable regions; :func:`synapse_density` counts the
detected puncta inside it, per 100 um^2 (or per um^3 for z-stacks, inside the axial guard
bands).  The detector itself is :mod:`analysis.measure.puncta`.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from analysis.measure import filters as _filters
from analysis.measure.noise import _blocks, noise_sd_map
from analysis.measure.outside import fill_not_imaged, not_imaged_mask
from analysis.measure.puncta import _label_sizes, detect_puncta

__all__ = ["analysed_area_mask", "synapse_density"]

log = logging.getLogger(__name__)


def _interp_matrix(n: int, at: np.ndarray) -> np.ndarray:
    """(n, len(at)) matrix of linear interpolation from samples at ``at`` (increasing, from
    0 to n - 1) onto the integer positions 0 .. n - 1."""
    x = np.arange(n, dtype=float)
    hi = np.clip(np.searchsorted(at, x, side="right"), 1, len(at) - 1)
    lo = hi - 1
    span = np.maximum(at[hi] - at[lo], 1e-12)
    w = np.clip((x - at[lo]) / span, 0.0, 1.0)
    out = np.zeros((n, len(at)))
    out[np.arange(n), lo] = 1.0 - w
    out[np.arange(n), hi] += w
    return out


def _local_percentile(a: np.ndarray, q: float, width: int, step: int, rank: int | None = None) -> np.ndarray:
    """Percentile ``q`` of the ``width`` x ``width`` window (reflecting edges, like
    :func:`scipy.ndimage.percentile_filter`) evaluated every ``step`` elements per axis (and at
    the last one) and linearly interpolated in between.

    For a level that varies slowly on the scale of the window this equals the full filter up
    to the interpolation, at ~1 / step^2 of its cost. ``rank``: the order statistic (0-based)
    taken instead of numpy's nearest rank of ``q``; with ``int(q / 100 * width**2)`` (scipy's
    rank) and ``step`` 1 the result is that of ``percentile_filter`` itself, to the last bit
    and 1.5-2x faster.

    Examples
    --------
    >>> a = np.add.outer(np.arange(40.0), np.arange(40.0))
    >>> full = ndi.percentile_filter(a, 50, size=9, mode="reflect")
    >>> bool(np.abs(_local_percentile(a, 50, 9, 3) - full)[5:-5, 5:-5].max() < 1e-9)
    True
    >>> b = np.random.default_rng(0).normal(size=(30, 40))
    >>> exact = _local_percentile(b, 20, 7, 1, rank=int(20 / 100 * 7 ** 2))
    >>> bool(np.array_equal(exact, ndi.percentile_filter(b, 20, size=7, mode="reflect")))
    True
    """
    h = width // 2
    pad = np.pad(a, h, mode="symmetric")  # numpy's "symmetric" is scipy's "reflect"
    windows = np.lib.stride_tricks.sliding_window_view(pad, (width, width))
    at = [np.unique(np.r_[np.arange(0, n, max(step, 1)), n - 1]) for n in a.shape]
    # (in chunks of rows: the gathered windows of a large image would take GBs)
    chunk = max(1, (2 << 20) // (len(at[1]) * width * width * a.itemsize))
    # np.percentile(..., method="nearest") picks one order statistic of each window: its rank
    # (numpy's own rounding, read off an arange) and a partition give the same values, 2-20x
    # faster than the percentile over the last axis of a 3-D array
    k = int(np.percentile(np.arange(width * width), q, method="nearest")) if rank is None else int(rank)
    pieces = []
    for i in range(0, len(at[0]), chunk):
        gathered = windows[np.ix_(at[0][i : i + chunk], at[1])].reshape(len(at[0][i : i + chunk]), len(at[1]), -1)
        gathered.partition(k, axis=-1)  # (in place: the gathered windows are a copy)
        pieces.append(gathered[..., k].copy())  # (a copy: a view would keep every chunk alive)
        del gathered
    vals = np.concatenate(pieces)
    if len(at[0]) == a.shape[0] and len(at[1]) == a.shape[1]:
        return vals
    return _interp_matrix(a.shape[0], at[0].astype(float)) @ vals @ _interp_matrix(a.shape[1], at[1].astype(float)).T


def _interp_weights(n: int, at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two non-zero columns ``lo``, ``hi`` of each row of :func:`_interp_matrix` and the
    weight ``w`` of ``hi`` (``1 - w`` of ``lo``)."""
    x = np.arange(n, dtype=float)
    hi = np.clip(np.searchsorted(at, x, side="right"), 1, len(at) - 1)
    lo = hi - 1
    span = np.maximum(at[hi] - at[lo], 1e-12)
    return lo, hi, np.clip((x - at[lo]) / span, 0.0, 1.0)


def _block_centres(n: int, f: int) -> np.ndarray:
    """Centres of the blocks of ``f`` pixels along an axis of ``n`` (the last, partial block's
    centre is that of its pixels)."""
    start = np.arange(-(-n // f)) * f
    return start + (np.minimum(start + f, n) - start - 1) / 2.0


def _block_sums(a: np.ndarray, f: int, width_blocks: int) -> np.ndarray:
    """Sums over the ``f`` x ``f`` blocks of ``a`` (rows: a multiple of ``f`` or the last rows of
    the image; zero-padded at the bottom and right)."""
    nbr = -(-a.shape[0] // f)
    cpad = [(0, nbr * f - a.shape[0]), (0, width_blocks * f - a.shape[1])]
    return _blocks(np.pad(a, cpad), [nbr, width_blocks], [f, f]).sum(axis=1).reshape(nbr, -1)


def _blurred_rows(vw: np.ndarray, ws: np.ndarray, sigma: float, f: int, fill: float, r0: int, r1: int,
                  interp: tuple) -> np.ndarray:
    """Rows ``r0:r1`` (full resolution) of the normalised blur from its block sums ``vw``
    (values x weights) and ``ws`` (weights): both blurred with ``sigma / f`` at block resolution
    (only the block rows these rows need, plus the Gaussian's reach: the same numbers as the
    whole blur), their ratio (``fill`` where the weights vanish) linearly interpolated from the
    block centres."""
    (lo0, hi0, w0), (lo1, hi1, w1) = interp
    lo, hi, w = lo0[r0:r1], hi0[r0:r1], w0[r0:r1]
    k0, k1 = int(min(lo.min(), hi.min())), int(max(lo.max(), hi.max())) + 1
    s = sigma / f
    reach = int(4.0 * s + 0.5) + 1  # (gaussian_filter's truncate=4 radius, + 1)
    a, b = max(0, k0 - reach), min(vw.shape[0], k1 + reach)
    num = ndi.gaussian_filter(vw[a:b], s, mode="reflect")[k0 - a : k1 - a]
    den = ndi.gaussian_filter(ws[a:b], s, mode="reflect")[k0 - a : k1 - a]
    ok = den > 1e-3 * f * f
    np.maximum(den, 1e-300, out=den)
    np.divide(num, den, out=num)
    num[~ok] = fill
    if f == 1:  # (the interpolation from block centres is the identity)
        return num[r0 - k0 : r1 - k0]
    rows = (1.0 - w)[:, None] * num[lo - k0]
    rows += w[:, None] * num[hi - k0]
    out = rows[:, lo1] * (1.0 - w1)
    out += rows[:, hi1] * w1
    return out


def _normalized_blur(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted local mean of ``values`` (2-D) over the pixels with ``weights``.

    For ``sigma`` of 6 pixels or more the sums are taken over blocks of ``sigma // 3`` pixels,
    blurred at that resolution and interpolated back (the block adds ``block^2 / 12`` to the
    variance of the Gaussian, < 1 %).  (The whole image at once; :func:`analysed_area_mask`
    does the same strip by strip.)
    """
    w = weights.astype(float)
    fill = float(np.average(values, weights=w)) if weights.any() else float(np.mean(values))
    f = max(1, int(sigma // 3))
    nb1 = -(-values.shape[1] // f)
    vw, ws = _block_sums(values * w, f, nb1), _block_sums(w, f, nb1)
    interp = tuple(_interp_weights(n, _block_centres(n, f)) for n in values.shape)
    return _blurred_rows(vw, ws, sigma, f, fill, 0, values.shape[0], interp)


def _row_strips(n: int, rows: int, align: int = 1) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` row ranges of about ``rows`` rows (a multiple of ``align``)."""
    step = max(align, -(-max(int(rows), 1) // align) * align)
    return [(r, min(n, r + step)) for r in range(0, n, step)]


def _smooth_rows(img: np.ndarray, sigma: float, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of ``ndi.gaussian_filter(img, sigma, mode="reflect", output=float64)``,
    equal to those of the whole image to rounding (the filter is separable and reaches ``4 sigma``;
    :mod:`analysis.measure.filters` sums in blocks of rows, so a row's last bits can depend on
    where the strip starts)."""
    reach = int(4.0 * sigma + 0.5) + 1
    a, b = max(0, r0 - reach), min(img.shape[0], r1 + reach)
    return _filters.gaussian_filter(np.asarray(img[a:b], dtype=np.float64), sigma, mode="reflect")[r0 - a : r1 - a]


def _core_rows(void_blocks: np.ndarray, bs: int, r0: int, r1: int, width: int) -> np.ndarray:
    """Rows ``r0:r1`` of the void blocks at full resolution (``np.kron`` of the block mask)."""
    return np.repeat(void_blocks[np.arange(r0, r1) // bs], bs, axis=1)[:, :width]


def _exact_medians(chunks, n_sets: int, lo: float, hi: float, nbins: int = 1 << 16) -> list[float]:
    """``np.median`` of each of ``n_sets`` sets of values that come in pieces, without holding them.

    ``chunks()`` yields, on each call anew and in the same order, a tuple of ``n_sets`` 1-D
    float64 arrays (the pieces of each set).  A first pass counts the values per bin (a monotone
    function of the value over ``lo``-``hi``; values outside go to the end bins), a second one
    keeps the values of the bins that hold the middle order statistics: the same order
    statistics, averaged as :func:`numpy.median` does.  NaN gives NaN, an empty set NaN.
    """
    scale = (nbins - 1) / (hi - lo) if hi > lo else 0.0

    def bins(v: np.ndarray) -> np.ndarray:
        t = v - lo
        t *= scale
        np.clip(t, 0, nbins - 1, out=t)
        return t.astype(np.intp)

    counts = np.zeros((n_sets, nbins), np.int64)
    nan = np.zeros(n_sets, bool)
    for pieces in chunks():
        for s, v in enumerate(pieces):
            bad = np.isnan(v)
            if bad.any():
                nan[s] = True
                v = v[~bad]
            counts[s] += np.bincount(bins(v), minlength=nbins)
    wanted: list[list[tuple[int, int]]] = []  # per set: (bin, rank in the bin) of the order statistics
    for s in range(n_sets):
        n = int(counts[s].sum())
        if nan[s] or n == 0:
            wanted.append([])
            continue
        cum = np.cumsum(counts[s])
        ks = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
        bs = [int(np.searchsorted(cum, k, side="right")) for k in ks]
        wanted.append([(b, k - (int(cum[b - 1]) if b else 0)) for b, k in zip(bs, ks)])
    kept: list[dict[int, list[np.ndarray]]] = [{b: [] for b, _ in w} for w in wanted]
    if any(wanted):
        for pieces in chunks():
            for s, v in enumerate(pieces):
                if not wanted[s]:
                    continue
                v = v[~np.isnan(v)]
                idx = bins(v)
                for b in kept[s]:
                    kept[s][b].append(v[idx == b])
    out = []
    for s in range(n_sets):
        if not wanted[s]:
            out.append(np.nan)
            continue
        stats = []
        for b, rank in wanted[s]:
            vals = np.concatenate(kept[s][b])
            stats.append(np.partition(vals, rank)[rank])
        out.append(float(np.mean(np.array(stats, dtype=np.float64))))  # (np.median's mean of the middle two)
    return out


class _PairwiseSum:
    """``np.sum`` of a float64 sequence of known length fed in consecutive pieces, identical to
    numpy's pairwise summation of the whole: the sequence is cut where numpy's recursion cuts it
    (halves, rounded down to a multiple of 8) into nodes of at most ``leaf`` values, each node is
    summed by numpy and the node sums are added as numpy adds them."""

    def __init__(self, n: int, leaf: int = 1 << 16) -> None:
        def tree(s: int, m: int):
            if m <= max(leaf, 128):
                return (s, s + m)
            m2 = m // 2
            m2 -= m2 % 8
            return [tree(s, m2), tree(s + m2, m - m2)]

        def flat(node, out):
            if isinstance(node, tuple):
                out.append(node)
            else:
                flat(node[0], out)
                flat(node[1], out)
            return out

        self.n = n
        self.tree = tree(0, n)
        self.leaves = flat(self.tree, [])
        self.sums: dict[tuple[int, int], float] = {}
        self.buf = np.empty(0)
        self.pos = 0  # index of buf[0] in the sequence
        self.next = 0

    def feed(self, x: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, np.ravel(x)]) if len(self.buf) else np.ravel(x)
        while self.next < len(self.leaves) and self.leaves[self.next][1] <= self.pos + len(self.buf):
            s, e = self.leaves[self.next]
            self.sums[(s, e)] = np.add.reduce(self.buf[s - self.pos : e - self.pos])
            self.buf = self.buf[e - self.pos :]
            self.pos = e
            self.next += 1

    def total(self) -> float:
        if self.n == 0:
            return 0.0
        if self.next != len(self.leaves):
            raise ValueError("fewer values fed than announced")

        def comb(node):
            return self.sums[node] if isinstance(node, tuple) else comb(node[0]) + comb(node[1])

        return comb(self.tree)


def analysed_area_mask(
    image: np.ndarray,
    pixel_size_um: float,
    *,
    puncta: pd.DataFrame | None = None,
    void_min_diameter_um: float = 5.0,
    void_level: float = 0.6,
    void_clearance_um: float = 1.5,
    block_um: float = 1.0,
    neuropil_scale_um: float = 10.0,
    smoothing_um: float = 0.5,
    strip_px: int | None = None,
) -> np.ndarray:
    """Mask of the neuropil in which puncta are counted: dark voids (somata, vessels) excluded.

    Neuronal somata and blood vessels hold no synapses: in a PSD95 image they are large
    regions that are both dim and free of puncta.  Both properties are required:

    1. the diffuse signal of each block of ``block_um`` is its lower quartile (puncta and
       dendritic shafts, which cover a minority of the pixels, do not raise it), expressed
       as a fraction of the surrounding neuropil's (averaged over ``neuropil_scale_um``
       outside voids, so uneven illumination cancels); both are measured above the
       detector's zero-photon level (from the Poisson-Gaussian noise fit of
       :func:`noise_sd_map`; 0 when the image does not allow the fit);
    2. a block is a void core when this fraction is below ``void_level`` *and* no punctum
       lies within ``void_clearance_um`` of it (in neuropil with >= 20 puncta per 100 um^2
       a punctum-free disk of 1.5 um radius has a probability of < 25 %, and it must also be
       dim);
    3. at full resolution a void extends to where the smoothed image is half-way between
       the voids' level and the local neuropil's (the half-maximum of a blurred edge), its
       small holes are filled, and it counts when its area is at least that of a disk of
       ``void_min_diameter_um``.

    Parameters
    ----------
    image : ndarray
        YX, or ZYX (the mean over planes is used).
    pixel_size_um : float
        Lateral pixel size.
    puncta : DataFrame, optional
        Puncta of this image (``y``, ``x`` in pixels), e.g. from :func:`detect_puncta`;
        detected here (on the 2-D image) when not given.  Its ``attrs`` ``noise_alpha`` and
        ``noise_beta`` (set by :func:`detect_puncta`) give the dark level; without them the
        noise model is fitted here.
    void_min_diameter_um : float
        Smallest void (area of a disk of this diameter) to exclude.
    void_level : float
        A void core has less than this fraction of the neuropil's diffuse signal: half-way
        between a void (somata and vessels carry little PSD95, <= ~40 % of the neuropil
        level, mostly out-of-focus light) and dim neuropil (>= ~80 %).
    void_clearance_um : float
        A void core has no punctum within this distance.
    block_um : float
        Block size of the diffuse-level estimate.
    neuropil_scale_um : float
        Scale over which the neuropil level (illumination) may vary.
    smoothing_um : float
        Gaussian smoothing of the full-resolution image that places the void borders.
    strip_px : int, optional
        Rows per strip: the full-resolution steps (smoothing, borders, the normalised blur)
        run strip by strip with the margins their filters reach, and the global statistics
        (medians, the neuropil mean) from passes over the strips, so that the work memory is
        a few full-size boolean and label images (default: 128 rows or ~2 MB of float64).  The
        mask does not depend on it.

    Returns
    -------
    ndarray of bool
        True where puncta are counted (YX).

    Examples
    --------
    A field of puncta with a dark, punctum-free soma of 8 um diameter in its centre:

    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:256, :256]
    >>> soma = (yy - 128) ** 2 + (xx - 128) ** 2 < 40**2
    >>> centres = rng.uniform(0, 256, (300, 2))
    >>> centres = centres[~soma[tuple(centres.astype(int).T)]]
    >>> spots = sum(40 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 3.0) for y, x in centres)
    >>> img = rng.poisson(np.where(soma, 5.0, 20.0) + spots) * 2.0 + 100
    >>> mask = analysed_area_mask(img, 0.1)
    >>> round(float((~mask).sum() / soma.sum()), 1)
    1.0
    """
    img = np.asarray(image)
    if img.ndim == 3:
        img = img.mean(axis=0, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be YX or ZYX, got shape {np.shape(image)}")
    if not np.issubdtype(img.dtype, np.integer):
        img = np.asarray(img, dtype=np.float64)  # (integer data stay as they are: no float copy)
    # the constant fill of registration or stitching is not imaged: no puncta are counted there,
    # and its edge is not a void's (the same fill as the detector's)
    not_imaged = not_imaged_mask(img, pixel_size_um)
    if not_imaged is not None:
        img = fill_not_imaged(img, not_imaged, pixel_size_um)
    if puncta is None:
        puncta = detect_puncta(img, pixel_size_um)
    H, W = img.shape
    margin = int(round(2.0 / pixel_size_um))
    if strip_px is None:
        strip_px = max(128, (1 << 18) // max(W, 1))  # (~2 MB per float64 strip, >= 128 rows)
    if margin < 1:  # (a dilation of 0 iterations runs to convergence: not local, one strip)
        strip_px = H
    strips = _row_strips(H, strip_px)
    sigma_s = smoothing_um / pixel_size_um

    def smooth_pieces(*masks):
        """For _exact_medians: the smoothed image strip by strip, all of it or under masks."""
        def gen():
            for r0, r1 in strips:
                sm = _smooth_rows(img, sigma_s, r0, r1)
                yield tuple(sm[m(r0, r1)] for m in masks) if masks else (sm.ravel(),)
        return gen

    lo_hi = (float(img.min()), float(img.max()))  # (the smoothed values lie in between: median bins)
    if not np.all(np.isfinite(lo_hi)):
        fin = [(float(s.min()), float(s.max())) for s in (img[r0:r1][np.isfinite(img[r0:r1])] for r0, r1 in strips) if s.size]
        lo_hi = (min(a for a, _ in fin), max(b for _, b in fin)) if fin else (0.0, 1.0)
    alpha, beta = puncta.attrs.get("noise_alpha"), puncta.attrs.get("noise_beta")
    if alpha is None or beta is None:
        smooth = _filters.gaussian_filter(np.asarray(img, dtype=np.float64), sigma_s, mode="reflect")
        _, info = noise_sd_map(img, pixel_size_um, level=smooth)
        del smooth
        alpha, beta = info["alpha"], info["beta"]
    # (the detector's photon-transfer fit of this image is reused when the puncta carry it)
    dark = -beta / alpha if alpha > 0 else np.nan
    if not np.isfinite(dark) or dark >= _exact_medians(smooth_pieces(), 1, *lo_hi)[0]:
        log.info("analysed_area_mask: no photon-transfer fit, dark level taken as 0")
        dark = 0.0
    # diffuse level per block: lower quartile (the image is padded by reflection), and blocks
    # without a punctum within the clearance; strip by strip
    bs = max(int(round(block_um / pixel_size_um)), 2)
    nb = [-(-n // bs) for n in img.shape]
    ridx, cidx = (np.pad(np.arange(n), (0, m * bs - n), mode="reflect") for n, m in zip(img.shape, nb))
    diffuse = np.empty(nb)
    empty = np.empty(nb, bool)
    tree = cKDTree(puncta[["y", "x"]].to_numpy(float)) if len(puncta) else None
    for r0, r1 in _row_strips(nb[0] * bs, strip_px, bs):
        b0, b1 = r0 // bs, r1 // bs
        part = img[ridx[r0:r1]][:, cidx]
        diffuse[b0:b1] = np.percentile(_blocks(part, [b1 - b0, nb[1]], [bs, bs]), 25, axis=1).reshape(b1 - b0, nb[1]) - dark
        del part
        centres = (np.stack(np.meshgrid(np.arange(b0, b1), np.arange(nb[1]), indexing="ij"), -1).reshape(-1, 2) + 0.5) * bs - 0.5
        dist = tree.query(centres)[0] if tree is not None else np.full(len(centres), np.inf)
        empty[b0:b1] = (dist * pixel_size_um > void_clearance_um).reshape(b1 - b0, nb[1])
    del tree
    # neuropil level: a local median (dendritic shafts are a minority of the blocks), first
    # the upper quartile (not pulled down by voids covering up to half the neighbourhood),
    # then the median with the voids found filled by the neuropil level, until stable
    width = 2 * int(round(neuropil_scale_um / block_um)) + 1
    # (evaluated every ~neuropil_scale_um / 3 and interpolated in between: the level varies
    # over neuropil_scale_um, and the full filters were 3/4 of the whole quantification time
    # of a 640 x 640 field)
    step = max(1, int(round(width / 7)))
    neuropil = _local_percentile(diffuse, 75, width, step)
    void_blocks = (diffuse < void_level * neuropil) & empty
    for _ in range(5):
        filled = np.where(void_blocks, neuropil, diffuse)
        neuropil = _local_percentile(filled, 50, width, step)
        new = (diffuse < void_level * neuropil) & empty
        if np.array_equal(new, void_blocks):
            break
        void_blocks = new
    del diffuse, neuropil, empty, filled, new
    if not void_blocks.any():
        return np.ones(img.shape, bool) if not_imaged is None else ~not_imaged

    def core(r0: int, r1: int) -> np.ndarray:
        return _core_rows(void_blocks, bs, r0, r1, W)

    # void borders at the half-way level between the voids and the neuropil just outside
    # them (the neuropil level is taken beyond the blurred edge: > 2 um from a first border);
    # the medians exact, from two passes over the strips
    level, neuropil_level = _exact_medians(
        smooth_pieces(lambda r0, r1: core(r0, r1), lambda r0, r1: ~core(r0, r1)), 2, *lo_hi)
    threshold = (level + neuropil_level) / 2
    sigma_b = 2.0 / pixel_size_um
    f = max(1, int(sigma_b // 3))
    nbb = [-(-n // f) for n in img.shape]
    bstrips = _row_strips(H, strip_px, f)

    def weighted_block_sums(weights_of):
        """Block sums of smooth x weights and of the weights (as _normalized_blur), the number
        of weighted pixels and the pairwise sum of smooth x weights (np.average's numerator)."""
        vw, ws = np.empty(nbb), np.empty(nbb)
        total, count = _PairwiseSum(H * W), 0
        for r0, r1 in bstrips:
            sm, w = weights_of(r0, r1)
            w = w.astype(float)
            count += int(np.count_nonzero(w))
            ws[r0 // f : -(-r1 // f)] = _block_sums(w, f, nbb[1])
            w *= sm
            total.feed(w)
            vw[r0 // f : -(-r1 // f)] = _block_sums(w, f, nbb[1])
        return vw, ws, total.total(), count

    def outside(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows r0:r1 of the smoothed image and of the neuropil beyond the first borders: not
        within ``margin`` (city-block) of a pixel below the threshold within ``margin`` of a core."""
        a, b = max(0, r0 - margin), min(H, r1 + margin)
        a2, b2 = max(0, r0 - 2 * margin), min(H, r1 + 2 * margin)
        sm = _smooth_rows(img, sigma_s, a, b)
        first = sm < threshold
        first &= ndi.binary_dilation(core(a2, b2), iterations=margin)[a - a2 : b - a2]
        out = ~ndi.binary_dilation(first, iterations=margin)[r0 - a : r1 - a]
        return sm[r0 - a : r1 - a], out

    vw, ws, total, count = weighted_block_sums(outside)
    if count == 0:
        vw, ws, total, count = weighted_block_sums(lambda r0, r1: (_smooth_rows(img, sigma_s, r0, r1), ~core(r0, r1)))
    if count == 0:  # (all void: no weights, the plain mean as the fill)
        total = weighted_block_sums(lambda r0, r1: (_smooth_rows(img, sigma_s, r0, r1), np.ones((r1 - r0, W), bool)))[2]
        count = H * W
    fill = float(total / float(count))
    interp = tuple(_interp_weights(n, _block_centres(n, f)) for n in img.shape)
    below = np.empty(img.shape, bool)
    for r0, r1 in strips:
        half = _blurred_rows(vw, ws, sigma_b, f, fill, r0, r1, interp)
        half += level  # (level + local) / 2, in place
        half /= 2
        np.less(_smooth_rows(img, sigma_s, r0, r1), half, out=below[r0:r1])
        del half
    del vw, ws
    # the voids: the connected regions below the half-way level that hold a core pixel (grown
    # from those pixels: the same set as labelling all regions and keeping those, without the
    # full-size label image)
    seeds = np.empty(img.shape, bool)
    for r0, r1 in strips:
        np.logical_and(below[r0:r1], core(r0, r1), out=seeds[r0:r1])
    voids = ndi.binary_propagation(seeds, mask=below)
    del seeds, below
    min_area = np.pi * (void_min_diameter_um / 2 / pixel_size_um) ** 2
    # fill holes (brighter specks, a punctum) smaller than a void inside voids
    holes = ndi.binary_fill_holes(voids)
    holes &= ~voids
    hole_lab, n_holes = ndi.label(holes)
    del holes
    small = _label_sizes(hole_lab, n_holes + 1, chunk=1 << 18) < min_area
    small[0] = False
    voids |= small[hole_lab]
    del hole_lab
    lab, n = ndi.label(voids)
    del voids
    big = _label_sizes(lab, n + 1, chunk=1 << 18) >= min_area
    big[0] = False
    mask = big[lab]
    del lab
    np.logical_not(mask, out=mask)
    if not_imaged is not None:
        mask &= ~not_imaged
    return mask


# --------------------------------------------------------------------------- density


def synapse_density(
    puncta: pd.DataFrame, mask: np.ndarray, pixel_size_um: float, *, z_step_um: float | None = None
) -> dict[str, float]:
    """Puncta count and density inside the analysed mask.

    Parameters
    ----------
    puncta : DataFrame
        Output of :func:`detect_puncta` (``y``, ``x`` in pixels; ``z`` for a stack).
    mask : ndarray of bool
        Analysed area (YX, as from :func:`analysed_area_mask`; a ZYX mask is projected).
    pixel_size_um : float
        Lateral pixel size.
    z_step_um : float, optional
        Axial step: with a ``z`` column the density is per volume.  The light of a punctum
        beyond the first or last plane is reported on that plane (the detector keeps centres
        inside the stack), so the volume counted is the stack's ``n_z`` planes
        (``puncta.attrs['n_z']``) minus a guard band at either end of ``max(1 plane, axial
        half width)`` (``puncta.attrs['axial_radius_um']``), and only puncta whose fitted
        ``z`` lies inside it are counted.  A stack too thin for any volume inside the guard
        bands gets a NaN density.

    Returns
    -------
    dict
        ``n_puncta`` (puncta whose nearest pixel is in the mask), ``analysed_area_um2``
        and ``puncta_density_per_100um2`` (2-D); for a stack with ``z_step_um`` also
        ``analysed_volume_um3`` and ``puncta_density_per_um3`` instead of the areal density,
        and ``axial_radius_um``, the axial half width of the puncta (measured on the stack by
        :func:`analysis.measure.puncta.estimate_axial_radius`: a value far from the
        microscope's axial resolution means a wrong z step).

    Examples
    --------
    >>> mask = np.zeros((100, 100), bool)
    >>> mask[:50] = True
    >>> p = pd.DataFrame({"y": [10.0, 20.0, 70.0], "x": [5.0, 5.0, 5.0]})
    >>> d = synapse_density(p, mask, 0.1)
    >>> d["n_puncta"], round(d["analysed_area_um2"], 6), round(d["puncta_density_per_100um2"], 6)
    (2, 50.0, 4.0)
    """
    mask = np.asarray(mask, bool)
    if mask.ndim == 3:
        mask = mask.any(axis=0)
    stack = "z" in puncta.columns and bool(z_step_um)
    keep = np.ones(len(puncta), bool)
    depth_planes = 1.0
    if stack:
        n_z = int(puncta.attrs.get("n_z", 1))
        axial = puncta.attrs.get("axial_radius_um") or 0.0
        guard = max(1.0, float(axial) / float(z_step_um))
        depth_planes = n_z - 2.0 * guard
        z = puncta["z"].to_numpy(float)
        keep = (z >= guard - 0.5) & (z < n_z - 0.5 - guard)
    n = 0
    if len(puncta):
        iy = np.clip(np.rint(puncta["y"].to_numpy(float)).astype(int), 0, mask.shape[0] - 1)
        ix = np.clip(np.rint(puncta["x"].to_numpy(float)).astype(int), 0, mask.shape[1] - 1)
        n = int((mask[iy, ix] & keep).sum())
    area = float(mask.sum() * float(pixel_size_um) ** 2)
    if stack:
        volume = area * depth_planes * float(z_step_um) if depth_planes > 0 else 0.0
        if volume <= 0:
            log.warning("stack of %d planes is too thin for a volume density inside the axial guard bands",
                        int(puncta.attrs.get("n_z", 1)))
        return {
            "n_puncta": n,
            "analysed_area_um2": area,
            "analysed_volume_um3": volume,
            "puncta_density_per_um3": n / volume if volume else np.nan,
            "axial_radius_um": float(axial),
        }
    return {"n_puncta": n, "analysed_area_um2": area, "puncta_density_per_100um2": 100.0 * n / area if area else np.nan}
