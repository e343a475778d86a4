"""Parts of a plane that were not imaged: the constant fill of registration, rotation or stitching.

Drift correction, rotation and tile stitching (Fiji's *Rotate*, *StackReg*, *Grid/Collection
stitching*, vendor mosaics) pad the field with a constant, usually 0.  Where the padding meets
the imaged tissue the intensity steps from the background level to the fill value, and a
spot detector sees a row of half-spots along the step (measured on a 256 x 256 plane with 40
puncta: 116 detections, 94 within 3 px of a zero-filled half, where 19 puncta were imaged).

:func:`not_imaged_mask` finds such a fill: pixels equal to the plane's minimum, in a region that
is solid (>= 90 % of it within the 1 um disks that fit inside it), while the imaged pixels
almost never take that value (at most 1 % of them: a photon-counting or background-subtracted
image whose dark pixels are often 0 has porous zero plateaus in dark tissue), and bordered by
imaged pixels well above the fill (a dark, clipped background fades into its floor without a
step).  :func:`fill_not_imaged` replaces it by the background of the imaged pixels along its
edge, with the plane's own noise, so that no step is left to detect; puncta centred in the fill
are then outside the imaged field, and the analysed area leaves it out.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from analysis.measure import filters as _filters
from analysis.measure.noise import _noise_at, _noise_model, robust_sd

__all__ = ["not_imaged_mask", "fill_not_imaged", "tissue_edge_regions", "edges_lined_with_puncta", "lift_beyond_edge"]

log = logging.getLogger(__name__)

#: Narrowest fill taken for padding: its region must hold a disk of this diameter.
MIN_FILL_DIAMETER_UM = 1.0
#: The imaged pixels along the fill must lie this many SDs above it: SDs of their spread
#: (robust SD of their values), or SDs of their pixel noise (from differences of neighbouring
#: pixels along the fill's edge, so that the tissue's own structure there does not count) when
#: at most :data:`MAX_IMAGED_AT_FILL` of the imaged pixels lie within that noise of the fill.
MIN_STEP_SD = 3.0
#: At most this fraction of the imaged pixels may equal the fill value.
MAX_IMAGED_AT_FILL = 0.01
#: At least this fraction of the fill region lies within the 1 um disks that fit inside it.
MIN_SOLID = 0.9


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy**2 + xx**2 <= radius**2


def _edge(region: np.ndarray) -> np.ndarray:
    """The pixels within 3 px of ``region`` (8-connected steps), outside it."""
    return ndi.binary_dilation(region, np.ones((3, 3), bool), iterations=3) & ~region


def not_imaged_mask(plane: np.ndarray, pixel_size_um: float) -> np.ndarray | None:
    """Pixels of a 2-D plane that hold the constant fill of padding, or None when there is none.

    Parameters
    ----------
    plane : ndarray
        YX intensities.
    pixel_size_um : float
        Pixel size.

    Returns
    -------
    ndarray of bool or None
        True where the plane was not imaged; None when no fill region is found (the common case:
        no further work is done then).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.poisson(100, (64, 64)).astype(np.uint16)
    >>> img[:, :20] = 0  # a rotated or registered field, padded with zeros
    >>> m = not_imaged_mask(img, 0.1)
    >>> int(m.sum()), bool(m[:, :20].all())
    (1280, True)
    >>> not_imaged_mask(rng.poisson(100, (64, 64)), 0.1) is None
    True
    >>> dark = rng.poisson(0.05, (64, 64))  # photon counting in dark tissue: zero plateaus, not padding
    >>> dark[:, :20] = 0
    >>> not_imaged_mask(dark, 0.1) is None
    True
    """
    a = np.asarray(plane)
    if a.ndim != 2 or a.size == 0:
        return None
    radius = max(2, int(np.ceil(MIN_FILL_DIAMETER_UM / 2 / float(pixel_size_um))))
    lowest = a.min()
    flat = a == lowest
    if np.count_nonzero(flat) < np.count_nonzero(_disk(radius)):
        return None
    core = ndi.binary_erosion(flat, _disk(radius), border_value=1)
    if not core.any():
        return None
    fill = ndi.binary_propagation(core, mask=flat, structure=np.ones((3, 3), bool))
    # padding is solid: nearly all of it lies within the 1 um disks that fit inside it (dark
    # tissue's zeros, connected through the odd zero pixel, are porous)
    if np.count_nonzero(ndi.binary_dilation(core, _disk(radius))) < MIN_SOLID * np.count_nonzero(fill):
        return None
    # the imaged pixels themselves (almost) never take the fill's value: in a photon-counting or
    # background-subtracted image whose dark pixels are often 0, zero plateaus are dark tissue
    rest = np.count_nonzero(flat) - np.count_nonzero(fill)
    if rest > MAX_IMAGED_AT_FILL * max(a.size - np.count_nonzero(fill), 1):
        return None
    band = _edge(fill) & ~flat
    if not band.any():
        return None  # (the whole plane is the fill: left to the blank-image check)
    values = a[band].astype(np.float64)
    level = float(np.median(values))
    spread = robust_sd(values) if values.size >= 8 else 0.0
    # (differences of neighbouring band pixels only: no full-plane float copy)
    down, right = band[1:] & band[:-1], band[:, 1:] & band[:, :-1]
    steps = np.concatenate([a[1:][down].astype(np.float64) - a[:-1][down],
                            a[:, 1:][right].astype(np.float64) - a[:, :-1][right]])
    noise = robust_sd(steps) / np.sqrt(2.0) if steps.size >= 8 else 0.0
    # a step well above the spread of the imaged pixels along the edge, or (tissue with structure
    # along the edge) a step well above their pixel noise with (almost) no imaged pixel within
    # that noise of the fill; not a dark background fading into its clipped floor, whose imaged
    # pixels come down to the floor
    noise = max(noise, 1.0 if np.issubdtype(a.dtype, np.integer) else 1e-12)  # (a level of the data at least)
    near = np.count_nonzero(a[~fill] <= float(lowest) + MIN_STEP_SD * noise)
    if not (level - float(lowest) > MIN_STEP_SD * max(spread, 1e-12)
            or level - float(lowest) > MIN_STEP_SD * noise and near <= MAX_IMAGED_AT_FILL * np.count_nonzero(~fill)):
        return None
    log.debug("%d pixels of constant fill (%g) bordered by imaged pixels at %.3g: not imaged",
              int(fill.sum()), float(lowest), level)
    return fill


def fill_not_imaged(plane: np.ndarray, outside: np.ndarray, pixel_size_um: float, *, seed: int = 0) -> np.ndarray:
    """A copy of ``plane`` whose pixels in ``outside`` show the imaged edge's background: the
    median of the imaged pixels along it (within 3 px) plus noise of the plane's own noise model
    at that level (the Poisson-Gaussian line of :func:`analysis.measure.noise.noise_sd_map`,
    fitted with the fill held constant, which leaves its boxes out), so that neither a step nor
    a noiseless plateau is left for the detector and the noise model is that of the imaged
    pixels.  Same dtype (integers rounded and clipped to it); ``seed`` fixes the noise.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(100, 5, (64, 64))
    >>> img[:, :20] = 0
    >>> out = fill_not_imaged(img, not_imaged_mask(img, 0.1), 0.1)
    >>> bool(abs(out[:, :20].mean() - 100) < 1), round(float(out[:, :20].std()))
    (True, 5)
    """
    a = np.asarray(plane)
    out_ = np.asarray(outside, bool)
    band = _edge(out_)
    level = float(np.median(a[band]) if band.any() else np.median(a[~out_]))
    out = a.copy()
    out[out_] = np.asarray(level).astype(a.dtype) if np.issubdtype(a.dtype, np.integer) else level
    info = _noise_model(out, pixel_size_um, strip_px=256)  # (a constant fill has no residual variance)
    sd = float(_noise_at(info, np.array([level]))[0])
    new = level + sd * np.random.default_rng(seed).standard_normal(int(np.count_nonzero(out_)))
    if np.issubdtype(a.dtype, np.integer):
        lim = np.iinfo(a.dtype)
        new = np.clip(np.rint(new), lim.min, lim.max)
    out[out_] = new.astype(a.dtype)
    return out


# --- beyond the tissue's edge ---------------------------------------------------------------
#: Smallest region taken as beyond the tissue: it holds a disk of this diameter (and so does the
#: tissue along its edge).
VOID_MIN_DIAMETER_UM = 2.0
#: Block of the coarse search (the block means smooth the pixel noise; the region is then placed
#: at full resolution).
VOID_BLOCK_UM = 1.0
#: The tissue's background along the edge stands this many pixel-noise SDs above the region.
VOID_MIN_STEP_SD = 3.0
#: At least this fraction of the edge is tissue that holds the disk (a section's border; not the
#: neurites of a culture on glass, 0.59-0.63).
VOID_MIN_SOLID_EDGE = 0.8
#: Puncta line an edge when the band along it holds at least this many times the puncta that the
#: tissue 1-3 um further in predicts ...
EDGE_EXCESS = 2.0
#: ... and as many or more would come by chance (Poisson) with at most this probability.
EDGE_EXCESS_P = 0.01
#: The tissue level carried into the void is averaged over this along the edge.
VOID_FILL_SIGMA_UM = 1.0
#: Puncta: where the residual from the lift's first background estimate, smoothed at the
#: punctum's size, stands this many SDs of smoothed noise above it; left out of its second
#: (:func:`lift_beyond_edge`).
LIFT_OUTLIER_SD = 3.0
#: The edge's blur ends where the plane is within this fraction of the step of the tissue's level.
RAMP_END = 0.05
_HWHM_PER_SIGMA = float(np.sqrt(2.0 * np.log(2.0)))


def _block_means(a: np.ndarray, b: int) -> np.ndarray:
    """Means of ``b`` x ``b`` blocks (the last partial row and column of blocks dropped)."""
    ny, nx = a.shape[0] // b, a.shape[1] // b
    return a[: ny * b, : nx * b].reshape(ny, b, nx, b).mean(axis=(1, 3), dtype=np.float64)


def _dark_regions(s: np.ndarray, r: int, unit_um: float) -> np.ndarray | None:
    """The dark regions of ``s`` (block means) that hold disks of radius ``r`` (its elements),
    split at the level half-way between their interior (> 1 um inside) and the tissue 1-3 um
    beyond them (iterated a few times from half-way between the 1st percentile and the median),
    or None."""
    lo, mid = np.quantile(s, [0.01, 0.5])
    t = (lo + mid) / 2.0
    disk = _disk(r)
    near, reach = (max(1, int(round(d / unit_um))) for d in (1.0, 3.0))
    last = void = None
    for _ in range(3):
        dark = s < t
        if last is not None and np.array_equal(dark, last):
            break  # (the same region: the same levels)
        last = dark
        core = ndi.binary_erosion(dark, disk, border_value=1)
        if not core.any():
            return None
        void = ndi.binary_propagation(core, mask=dark)
        far = ndi.binary_dilation(void, iterations=reach) & ~ndi.binary_dilation(void, iterations=near)
        inner = ndi.binary_erosion(void, iterations=near, border_value=1)
        if not far.any():
            return None
        t = (float(np.median(s[inner] if inner.any() else s[void])) + float(np.median(s[far]))) / 2.0
    return void


def _grow(win: tuple[slice, slice], margin: int, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """``win`` widened by ``margin`` pixels on each side, within ``shape``."""
    return tuple(slice(max(0, w.start - margin), min(n, w.stop + margin)) for w, n in zip(win, shape))


def _embedded(win: tuple[slice, slice], mask: np.ndarray, big: tuple[slice, slice]) -> np.ndarray:
    """``mask`` (the pixels of ``win``) placed in a False array over the larger window ``big``."""
    out = np.zeros((big[0].stop - big[0].start, big[1].stop - big[1].start), bool)
    out[win[0].start - big[0].start: win[0].stop - big[0].start, win[1].start - big[1].start: win[1].stop - big[1].start] = mask
    return out


#: A region beyond the tissue's edge: its window (slices of the plane) and its pixels there.
Region = tuple[tuple[slice, slice], np.ndarray]


def tissue_edge_regions(plane: np.ndarray, pixel_size_um: float, noise_info: dict[str, float]) -> list[Region]:
    """Dark regions of a 2-D plane beyond a significant step from solid tissue (glass beside a
    section's border, a tear, a soma or vessel with a sharp border), each as its window (a pair
    of slices) and its pixels in that window; empty when there is none.

    A spot detector whose background is a blur of the image (:mod:`analysis.measure.puncta`)
    may see such a step as a ridge and line it with false puncta (measured: ~1.7 per um of a
    glass edge blurred by the PSF, ``tests/test_tissue_edge.py``); whether it did is tested on
    its detections (:func:`edges_lined_with_puncta`).  A region is a candidate when all of
    these hold:

    1. it is dark and solid: below the level half-way between its interior and the tissue 1-3
       um beyond it, holding disks of :data:`VOID_MIN_DIAMETER_UM` (searched on block means of
       :data:`VOID_BLOCK_UM`, then placed at that level at full resolution, after a smoothing
       of 0.25 um);
    2. the step is significant: at least :data:`VOID_MIN_STEP_SD` SDs of the pixel noise at the
       tissue's level (``noise_info``: the Poisson-Gaussian line of
       :func:`analysis.measure.noise.noise_sd_map`);
    3. the tissue along it is solid: at least :data:`VOID_MIN_SOLID_EDGE` of the edge belongs to
       tissue holding the same disks (not the neurites of a culture on glass).

    The work memory is that of the block means and of each region's window.

    Parameters
    ----------
    plane : ndarray
        YX intensities.
    pixel_size_um : float
        Pixel size.
    noise_info : dict
        The fitted noise line (``alpha``, ``beta``, ``var_min``, ``var_max``).

    Returns
    -------
    list of (tuple of slice, ndarray of bool)

    Examples
    --------
    >>> from analysis.measure.noise import _noise_model
    >>> rng = np.random.default_rng(0)
    >>> img = rng.poisson(np.where(np.arange(256) < 160, 60.0, 2.0)[None, :] * np.ones((128, 1))).astype(float)
    >>> regions = tissue_edge_regions(img, 0.1, _noise_model(img, 0.1))
    >>> (win, glass), = regions
    >>> full = np.zeros(img.shape, bool)
    >>> full[win] = glass
    >>> round(float(full[:, 160:].mean()), 2), float(full[:, :158].mean())
    (1.0, 0.0)
    >>> tissue_edge_regions(rng.poisson(60.0, (128, 256)).astype(float), 0.1, _noise_model(img, 0.1))
    []
    """
    a = np.asarray(plane)
    if a.ndim != 2 or min(a.shape) < 8:
        return []
    px = float(pixel_size_um)
    b = max(1, int(round(VOID_BLOCK_UM / px)))
    unit = b * px
    coarse = _block_means(a, b)
    if min(coarse.shape) < 4:
        return []
    rb = max(1, int(np.ceil(VOID_MIN_DIAMETER_UM / 2.0 / unit)))
    cvoid = _dark_regions(coarse, rb, unit)
    if cvoid is None:
        return []
    near_b, reach_b = (max(1, int(round(d / unit))) for d in (1.0, 3.0))
    ctissue = ~cvoid
    solid = ndi.binary_dilation(ndi.binary_erosion(ctissue, _disk(rb), border_value=1), _disk(rb))
    labels, _ = ndi.label(cvoid, np.ones((3, 3), bool))
    out: list[Region] = []
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        # each dark region on its own: its level and the tissue's 1-3 um beyond it
        pad = reach_b + 1
        sl = tuple(slice(max(0, q.start - pad), q.stop + pad) for q in box)
        comp = labels[sl] == k
        far = (ndi.binary_dilation(comp, iterations=reach_b) & ~ndi.binary_dilation(comp, iterations=near_b)
               & ctissue[sl])
        inner = ndi.binary_erosion(comp, iterations=near_b, border_value=1)
        if not far.any():
            continue
        cs = coarse[sl]
        lv = float(np.median(cs[inner] if inner.any() else cs[comp]))
        lt = float(np.median(cs[far]))
        sd_t = float(_noise_at(noise_info, np.array([lt]))[0])
        edge = ctissue[sl] & ndi.binary_dilation(comp, np.ones((3, 3), bool))
        solid_edge = float(solid[sl][edge].mean()) if edge.any() else 0.0
        log.debug("dark region: step %.1f noise SDs, solid edge %.2f", (lt - lv) / sd_t, solid_edge)
        if not (lt - lv > VOID_MIN_STEP_SD * sd_t and solid_edge >= VOID_MIN_SOLID_EDGE):
            continue
        win, void = _placed(a, px, b, sl, comp, inner, (lv + lt) / 2.0)
        if void is not None:
            out.append((win, void))
    return out


def _placed(a: np.ndarray, px: float, b: int, sl: tuple[slice, slice], comp: np.ndarray, inner: np.ndarray,
            level: float) -> tuple[tuple[slice, slice], np.ndarray | None]:
    """The full-resolution window of a coarse region (``comp`` in the block slice ``sl``) and
    the region in it: the pixels of the plane ``a``, smoothed over 0.25 um, below ``level``
    within a block of it, connected to its interior (``inner``; the region itself when it has
    none)."""
    shape = a.shape

    def up(m: np.ndarray) -> np.ndarray:
        u = np.repeat(np.repeat(m, b, 0), b, 1)
        # (the partial blocks at the far edges of the plane take their neighbours')
        pad = [(0, shape[0] % b if sl[0].start * b + u.shape[0] >= (shape[0] // b) * b else 0),
               (0, shape[1] % b if sl[1].start * b + u.shape[1] >= (shape[1] // b) * b else 0)]
        return np.pad(u, pad, mode="edge")[: shape[0] - sl[0].start * b, : shape[1] - sl[1].start * b]

    near = up(ndi.binary_dilation(comp, np.ones((3, 3), bool)))
    win = (slice(sl[0].start * b, sl[0].start * b + near.shape[0]), slice(sl[1].start * b, sl[1].start * b + near.shape[1]))
    sigma = max(1.0, 0.25 / px)
    big = _grow(win, int(4 * sigma + 1), shape)  # (the smoothing's reach)
    s = _gauss(np.asarray(a[big], dtype=np.float64), sigma)
    s = s[win[0].start - big[0].start: win[0].stop - big[0].start, win[1].start - big[1].start: win[1].stop - big[1].start]
    dark = near & (s < level)
    seed = dark & up(inner if inner.any() else comp)
    if not seed.any():
        return win, None
    return win, ndi.binary_propagation(seed, mask=dark)


def edges_lined_with_puncta(regions: list[Region], points: np.ndarray, pixel_size_um: float, background_px: float,
                            shape: tuple[int, int]) -> list[int]:
    """The indices of the regions of :func:`tissue_edge_regions` whose edge is lined with puncta.

    A detector that subtracts a blur of sigma ``background_px`` twice (H'H, the detector of
    :mod:`analysis.measure.puncta`) turns a step into a ridge on its bright side (within ~2
    sigmas of the border) and another one at the foot of its dark side (2-3 sigmas out, within
    4).  An edge is lined when, on either side, its band holds at least :data:`EDGE_EXCESS` times
    the puncta (``points``: y, x in pixels of the plane of ``shape``) that the density of the
    tissue 1-3 um from the region predicts for that band, significantly (Poisson,
    :data:`EDGE_EXCESS_P`).  Synapses do not crowd along a border, false puncta on a step's
    ridges do.  Each region is tested in its own window (other regions there are neither
    tissue nor band).

    Examples
    --------
    >>> glass = [((slice(0, 100), slice(60, 100)), np.ones((100, 40), bool))]
    >>> yy, xx = np.mgrid[5:100:10, 5:60:10]  # puncta every 10 px in the tissue
    >>> even = np.c_[yy.ravel(), xx.ravel()].astype(float)
    >>> edges_lined_with_puncta(glass, even, 0.1, 3.0, (100, 100))
    []
    >>> ridge = np.c_[np.arange(0, 100, 2.0), np.full(50, 57.0)]  # 50 more along the tissue side
    >>> edges_lined_with_puncta(glass, np.concatenate([even, ridge]), 0.1, 3.0, (100, 100))
    [0]
    >>> foot = np.c_[np.arange(0, 100, 2.5), np.full(40, 68.0)]  # 40 at the dark side's foot
    >>> edges_lined_with_puncta(glass, np.concatenate([even, foot]), 0.1, 3.0, (100, 100))
    [0]
    """
    from scipy import stats

    pts = np.asarray(points, float).reshape(-1, 2)
    if not len(pts) or not regions:
        return []
    ij = np.clip(np.rint(pts).astype(int), 0, np.array(shape) - 1)
    margin = max(int(np.ceil(3.0 / pixel_size_um)), int(np.ceil(4.0 * background_px))) + 1
    out = []
    for i, (win, void) in enumerate(regions):
        big = _grow(win, margin, shape)
        vm = _embedded(win, void, big)
        others = np.zeros_like(vm)
        for j, (w2, v2) in enumerate(regions):
            if j != i and all(a.start < c.stop and c.start < a.stop for a, c in zip(w2, big)):
                lo = [max(a.start, c.start) for a, c in zip(w2, big)]
                hi = [min(a.stop, c.stop) for a, c in zip(w2, big)]
                others[lo[0] - big[0].start: hi[0] - big[0].start, lo[1] - big[1].start: hi[1] - big[1].start] |= \
                    v2[lo[0] - w2[0].start: hi[0] - w2[0].start, lo[1] - w2[1].start: hi[1] - w2[1].start]
        tissue = ~vm & ~others
        d_out = ndi.distance_transform_edt(~vm)
        d_in = ndi.distance_transform_edt(vm)
        ring = tissue & (d_out * pixel_size_um > 1.0) & (d_out * pixel_size_um <= 3.0)
        bands = (tissue & (d_out <= 2.0 * background_px), vm & (d_in <= 4.0 * background_px))
        inside = np.all((ij >= [big[0].start, big[1].start]) & (ij < [big[0].stop, big[1].stop]), axis=1)
        py, px_ = (ij[inside] - [big[0].start, big[1].start]).T
        a_ring = np.count_nonzero(ring)
        if not a_ring:
            continue
        # (one punctum added to the ring: an empty ring is no certainty)
        rate = (np.count_nonzero(ring[py, px_]) + 1) / a_ring
        for side, band in zip(("tissue", "dark"), bands):
            expected = rate * np.count_nonzero(band)
            n = int(np.count_nonzero(band[py, px_]))
            p = float(stats.poisson.sf(n - 1, expected)) if expected > 0 else 1.0
            log.debug("edge of region %d, %s side: %d puncta, %.1f expected (p %.2g)", i, side, n, expected, p)
            if n >= EDGE_EXCESS * expected and p <= EDGE_EXCESS_P:
                out.append(i)
                break
    return out


def _gauss(a: np.ndarray, sigma: float) -> np.ndarray:
    return _filters.gaussian_filter(a, sigma, mode="reflect")


def _window_medians(values: np.ndarray, where: np.ndarray, h: int, chunk: int = 16384) -> np.ndarray:
    """The medians of ``values`` over the (2 ``h`` + 1)^2 squares around the pixels ``where``
    (``scipy.ndimage.median_filter``'s with ``mode="reflect"``, at those pixels only)."""
    win = np.lib.stride_tricks.sliding_window_view(np.pad(values, h, mode="symmetric"), (2 * h + 1,) * 2)
    iy, ix = np.nonzero(where)
    out = np.empty(len(iy))
    for i in range(0, len(iy), chunk):
        j = slice(i, i + chunk)
        out[j] = np.median(win[iy[j], ix[j]].reshape(-1, (2 * h + 1) ** 2), axis=1)
    return out


def _ramp_px(part: np.ndarray, vm: np.ndarray, beyond: np.ndarray, margin: int, h: int) -> int:
    """How far (pixels, at least ``margin``, at most ``margin + 2 h``) beyond the region ``vm``
    (``beyond``: each pixel's distance to it) the plane ``part`` stays below the tissue's level
    (its median 2-4 ``h`` beyond the margin) by more than :data:`RAMP_END` of the step from the
    region's median: the last such ring of 1 px, by its median."""
    sel = (beyond > 0) & (beyond <= margin + 4 * h)
    d, v = np.ceil(beyond[sel]).astype(int), part[sel]
    far = d > margin + 2 * h
    if far.sum() < 20 or not vm.any():
        return margin
    tissue = float(np.median(v[far]))
    step = tissue - float(np.median(part[vm]))
    if step <= 0:
        return margin
    last = margin
    for k in range(margin + 1, margin + 2 * h + 1):
        ring = v[d == k]
        if ring.size < 20 or float(np.median(ring)) >= tissue - RAMP_END * step:
            break
        last = k
    return last


def lift_beyond_edge(plane: np.ndarray, regions: list[Region], pixel_size_um: float, *, margin_px: int,
                     punctum_px: float, noise_info: dict[str, float] | None = None) -> np.ndarray:
    """A copy of ``plane`` in which each of ``regions`` (:func:`tissue_edge_regions`), and the
    edge's blur around it, are raised by the step to the tissue's background, so that no step
    is left for a detector; every pixel keeps its own deviation from its local background, so a
    punctum inside or at the border of the region stays.

    The blur is the ``margin_px`` pixels beyond the region, or more where the plane stays below
    the tissue's level further out (:func:`_ramp_px`: each 1 px ring's median, up to 2 punctum
    diameters further).  The step at a pixel is the tissue's level along the edge (the tissue
    pixels within 3 px beyond the raised zone, puncta left out, averaged over
    :data:`VOID_FILL_SIGMA_UM` along the edge and carried to the pixel from the nearest of them)
    minus the pixel's local background: the median over 2 punctum diameters (``punctum_px``:
    the punctum radius in pixels), taken along the edge within that distance of it and over the
    blur beyond the region (a square window there would reach across the edge and read the
    tissue low) and over a square window elsewhere.  That median is taken twice: the second time without the puncta, the pixels
    whose residual from the first, smoothed at the punctum's size, stands
    :data:`LIFT_OUTLIER_SD` SDs of smoothed noise above it (``noise_info``: the plane's noise
    model, :func:`analysis.measure.noise.noise_sd_map`'s; None: the residual's robust SD), and
    their surroundings.  Pixels already at or above the tissue's level stay as they are.  Same
    dtype (integers rounded and kept in range); each region is lifted in its own window, from
    the plane's own pixels.

    Examples
    --------
    Glass (2 photons) beside tissue (60), with a bright punctum in the glass:

    >>> rng = np.random.default_rng(0)
    >>> lam = np.where(np.arange(256) < 160, 60.0, 2.0)[None, :] * np.ones((128, 1))
    >>> lam[60:63, 200:203] += 40.0
    >>> img = rng.poisson(lam).astype(float)
    >>> from analysis.measure.noise import _noise_model
    >>> regions = tissue_edge_regions(img, 0.1, _noise_model(img, 0.1))
    >>> out = lift_beyond_edge(img, regions, 0.1, margin_px=2, punctum_px=1.5)
    >>> round(float(np.median(out[:, 170:])))  # the glass at the tissue's level
    60
    >>> height = lambda a: round(float(a[60:63, 200:203].mean() - np.median(a[:, 170:])), 1)
    >>> height(img), height(out)  # the punctum kept above it
    (38.1, 37.9)
    >>> bool(np.array_equal(out[:, :150], img[:, :150]))  # the tissue as it was
    True
    """
    a = np.asarray(plane)
    out = a.copy()
    sigma = max(VOID_FILL_SIGMA_UM / float(pixel_size_um), 1.0)
    h = max(1, int(np.ceil(2.0 * punctum_px)))
    for win, void in regions:
        big = _grow(win, int(margin_px) + 4 * h + 4 + int(4 * sigma + 1) + 2 * h + 1, a.shape)
        vm = _embedded(win, void, big)
        part = np.asarray(a[big], dtype=np.float64)
        # (the edge's blur can reach further than the margin: the zone covers it, so that the
        # tissue's level is read beyond it and no dark trough is left along the edge)
        beyond = ndi.distance_transform_edt(~vm)
        grow = _ramp_px(part, vm, beyond, int(margin_px), h)
        zone = ndi.binary_dilation(vm, iterations=grow) if grow > 0 else vm
        band = ~zone & ndi.binary_dilation(zone, np.ones((3, 3), bool), iterations=3)
        # near the edge, the median along it: the tangent of the smoothed region's border
        # (and over all of the blur beyond the region)
        gy, gx = np.gradient(_gauss(vm.astype(np.float64), max(1.0, h / 2.0, grow / 3.0)))
        edge_dist = np.where(vm, ndi.distance_transform_edt(vm), beyond)
        near = zone & ((edge_dist <= h + 1) | ~vm)
        yy, xx = np.nonzero(near)
        norm = np.hypot(gy[near], gx[near])
        ok = norm > 1e-9
        ty = np.where(ok, -gx[near] / np.where(ok, norm, 1.0), 0.0)
        tx = np.where(ok, gy[near] / np.where(ok, norm, 1.0), 1.0)

        def along(values: np.ndarray, reach: int) -> np.ndarray:
            """``values`` sampled along the edge's tangent, ``reach`` pixels either side."""
            k = np.arange(-reach, reach + 1)
            cy, cx = yy[:, None] + k[None, :] * ty[:, None], xx[:, None] + k[None, :] * tx[:, None]
            return ndi.map_coordinates(values, [cy.ravel(), cx.ravel()], order=1, mode="nearest").reshape(cy.shape)

        def background(values: np.ndarray, skip: np.ndarray | None = None,
                       first: np.ndarray | None = None) -> np.ndarray:
            """The local background of ``values``; along the edge, the samples that touch a
            ``skip`` pixel are left out (the line is doubled where fewer than half are left;
            where none is, the ``first`` estimate stays)."""
            if skip is None:
                local = ndi.median_filter(values, size=2 * h + 1, mode="reflect")
                local[near] = np.median(along(values, h), axis=1)
                return local
            # (the square's median again only where its window holds a ``skip`` pixel)
            local = first.copy()
            redo = ~near & ndi.binary_dilation(skip, np.ones((2 * h + 1, 2 * h + 1), bool))
            local[redo] = _window_medians(values, redo, h)
            est = np.full(len(yy), np.nan)
            for reach, least in ((h, h + 1), (2 * h, 1)):
                got = along(values, reach)
                got[along(skip.astype(np.float64), reach) > 0] = np.nan
                todo = np.isnan(est) & (np.sum(~np.isnan(got), axis=1) >= least)
                est[todo] = np.nanmedian(got[todo], axis=1)
            est = np.where(np.isnan(est), first[near], est)
            local[near] = est
            return local

        local = background(part)
        # a punctum fills a good part of a line of 2 diameters, and the median of noisy samples
        # moves with each of them: a punctum at the edge lost a third of its height to the lift
        # (session 58); so the puncta and their surroundings are left out of the samples along
        # the edge, set to the lowest first estimate around them in the square, and out of the
        # tissue's level, and the background is taken again
        resid = part - local
        sd = robust_sd(resid[zone]) if noise_info is None else _noise_at(noise_info, local)
        sg = max(float(punctum_px) / _HWHM_PER_SIGMA, 0.5)
        # (the residual smoothed at the punctum's size, in units of the SD of smoothed white
        # noise: a punctum stands out of it whatever part of it the first estimate took)
        bright = _gauss(resid, sg) > LIFT_OUTLIER_SD * sd / (2.0 * np.sqrt(np.pi) * sg)
        bright = ndi.binary_dilation(bright, _disk(int(np.ceil(2.0 * sg))))
        if bright.any():
            local = background(np.where(bright, ndi.grey_erosion(local, size=2 * h + 1), part), bright, local)
        if (band & ~bright).sum() >= 0.5 * band.sum():  # (an edge lined with puncta all along: as it is)
            band &= ~bright
        w = _gauss(band.astype(np.float64), sigma)
        v = _gauss(np.where(band, part, 0.0), sigma)
        _, (iy, ix) = ndi.distance_transform_edt(zone, return_indices=True)
        level = v[iy[zone], ix[zone]] / np.maximum(w[iy[zone], ix[zone]], 1e-12)
        new = part[zone] + np.clip(level - local[zone], 0.0, None)
        if np.issubdtype(a.dtype, np.integer):
            lim = np.iinfo(a.dtype)
            new = np.clip(np.rint(new), lim.min, lim.max)
        view = out[big]
        view[zone] = new.astype(a.dtype)
    return out
