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

from analysis.measure.noise import _blocks, noise_sd_map
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


def _local_percentile(a: np.ndarray, q: float, width: int, step: int) -> np.ndarray:
    """Percentile ``q`` of the ``width`` x ``width`` window (reflecting edges, like
    :func:`scipy.ndimage.percentile_filter`) evaluated every ``step`` elements per axis (and at
    the last one) and linearly interpolated in between.

    For a level that varies slowly on the scale of the window this equals the full filter up
    to the interpolation, at ~1 / step^2 of its cost.

    Examples
    --------
    >>> a = np.add.outer(np.arange(40.0), np.arange(40.0))
    >>> full = ndi.percentile_filter(a, 50, size=9, mode="reflect")
    >>> bool(np.abs(_local_percentile(a, 50, 9, 3) - full)[5:-5, 5:-5].max() < 1e-9)
    True
    """
    h = width // 2
    pad = np.pad(a, h, mode="symmetric")  # numpy's "symmetric" is scipy's "reflect"
    windows = np.lib.stride_tricks.sliding_window_view(pad, (width, width))
    at = [np.unique(np.r_[np.arange(0, n, max(step, 1)), n - 1]) for n in a.shape]
    # (in chunks of rows: the gathered windows of a large image would take GBs)
    chunk = max(1, (16 << 20) // (len(at[1]) * width * width * a.itemsize))
    vals = np.concatenate([
        np.percentile(windows[np.ix_(at[0][i : i + chunk], at[1])].reshape(len(at[0][i : i + chunk]), len(at[1]), -1),
                      q, axis=-1, method="nearest")
        for i in range(0, len(at[0]), chunk)])
    if len(at[0]) == a.shape[0] and len(at[1]) == a.shape[1]:
        return vals
    return _interp_matrix(a.shape[0], at[0].astype(float)) @ vals @ _interp_matrix(a.shape[1], at[1].astype(float)).T


def _normalized_blur(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted local mean of ``values`` (2-D) over the pixels with ``weights``.

    For ``sigma`` of 6 pixels or more the sums are taken over blocks of ``sigma // 3`` pixels,
    blurred at that resolution and interpolated back (the block adds ``block^2 / 12`` to the
    variance of the Gaussian, < 1 %).
    """
    w = weights.astype(float)
    fill = float(np.average(values, weights=w)) if weights.any() else float(np.mean(values))
    f = max(1, int(sigma // 3))
    if f == 1:
        num = ndi.gaussian_filter(values * w, sigma, mode="reflect")
        den = ndi.gaussian_filter(w, sigma, mode="reflect")
        return np.where(den > 1e-3, num / np.maximum(den, 1e-3), fill)
    nb = [-(-n // f) for n in values.shape]
    pad = [(0, m * f - n) for n, m in zip(values.shape, nb)]
    vw, ws = np.empty(nb), np.empty(nb)
    rows = max(1, (8 << 20) // (8 * f * nb[1] * f))  # block rows per chunk (~8 MB each)
    for b0 in range(0, nb[0], rows):
        b1 = min(nb[0], b0 + rows)
        sl = slice(b0 * f, b1 * f)
        cpad = [(0, (b1 - b0) * f - len(values[sl])), pad[1]]
        vw[b0:b1] = _blocks(np.pad(values[sl] * w[sl], cpad), [b1 - b0, nb[1]], [f, f]).sum(axis=1).reshape(b1 - b0, -1)
        ws[b0:b1] = _blocks(np.pad(w[sl], cpad), [b1 - b0, nb[1]], [f, f]).sum(axis=1).reshape(b1 - b0, -1)
    num = ndi.gaussian_filter(vw, sigma / f, mode="reflect")
    den = ndi.gaussian_filter(ws, sigma / f, mode="reflect")
    ok = den > 1e-3 * f * f
    coarse = np.where(ok, num / np.maximum(den, 1e-300), fill)
    # block centres (the last, partial block's centre is that of its pixels)
    at = []
    for n, m in zip(values.shape, nb):
        start = np.arange(m) * f
        at.append(start + (np.minimum(start + f, n) - start - 1) / 2.0)
    return _interp_matrix(values.shape[0], at[0]) @ coarse @ _interp_matrix(values.shape[1], at[1]).T


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
    if puncta is None:
        puncta = detect_puncta(img, pixel_size_um)
    smooth = ndi.gaussian_filter(img, smoothing_um / pixel_size_um, mode="reflect", output=np.float64)
    alpha, beta = puncta.attrs.get("noise_alpha"), puncta.attrs.get("noise_beta")
    if alpha is None or beta is None:
        _, info = noise_sd_map(img, pixel_size_um, level=smooth)
        alpha, beta = info["alpha"], info["beta"]
    # (the detector's photon-transfer fit of this image is reused when the puncta carry it)
    dark = -beta / alpha if alpha > 0 else np.nan
    if not np.isfinite(dark) or dark >= np.median(smooth):
        log.info("analysed_area_mask: no photon-transfer fit, dark level taken as 0")
        dark = 0.0
    # diffuse level per block: lower quartile (the image is padded by reflection)
    bs = max(int(round(block_um / pixel_size_um)), 2)
    nb = [-(-n // bs) for n in img.shape]
    padded = np.pad(img, [(0, m * bs - n) for n, m in zip(img.shape, nb)], mode="reflect")
    diffuse = np.percentile(_blocks(padded, nb, [bs, bs]), 25, axis=1).reshape(nb) - dark
    del padded
    # blocks without a punctum within the clearance
    centres = (np.stack(np.meshgrid(*[np.arange(m) for m in nb], indexing="ij"), -1).reshape(-1, 2) + 0.5) * bs - 0.5
    if len(puncta):
        dist, _ = cKDTree(puncta[["y", "x"]].to_numpy(float)).query(centres)
    else:
        dist = np.full(len(centres), np.inf)
    empty = (dist * pixel_size_um > void_clearance_um).reshape(nb)
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
    if not void_blocks.any():
        return np.ones(img.shape, bool)
    core = np.kron(void_blocks, np.ones((bs, bs), bool))[: img.shape[0], : img.shape[1]]
    # void borders at the half-way level between the voids and the neuropil just outside
    # them (the neuropil level is taken beyond the blurred edge: > 2 um from a first border)
    # (medians of fresh copies, partitioned in place: one full-size copy less each)
    level = float(np.median(smooth[core], overwrite_input=True))
    first = smooth < (level + float(np.median(smooth[~core], overwrite_input=True))) / 2
    margin = int(round(2.0 / pixel_size_um))
    outside = ~ndi.binary_dilation(first & ndi.binary_dilation(core, iterations=margin), iterations=margin)
    if not outside.any():
        outside = ~core
    half = _normalized_blur(smooth, outside, 2.0 / pixel_size_um)
    half += level  # (level + local) / 2, in place
    half /= 2
    lab, n = ndi.label(smooth < half)
    del half
    min_area = np.pi * (void_min_diameter_um / 2 / pixel_size_um) ** 2
    keep = np.bincount(lab[core], minlength=n + 1) > 0
    keep[0] = False
    voids = keep[lab]
    # fill holes (brighter specks, a punctum) smaller than a void inside voids
    holes = ndi.binary_fill_holes(voids) & ~voids
    hole_lab, n_holes = ndi.label(holes)
    small = _label_sizes(hole_lab, n_holes + 1) < min_area
    small[0] = False
    voids |= small[hole_lab]
    lab, n = ndi.label(voids)
    big = _label_sizes(lab, n + 1) >= min_area
    big[0] = False
    return ~big[lab]


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
        Axial step: with a ``z`` column the density is per volume.  A punctum centred within
        its axial half width of the first or last plane cannot be located (its light is cut
        off by the stack's end), so the volume counted is the stack's ``n_z`` planes
        (``puncta.attrs['n_z']``) minus a guard band at either end of ``max(1 plane, axial
        half width)`` (``puncta.attrs['axial_radius_um']``), and only puncta whose fitted
        ``z`` lies inside it are counted.  A stack too thin for any volume inside the guard
        bands gets a NaN density.

    Returns
    -------
    dict
        ``n_puncta`` (puncta whose nearest pixel is in the mask), ``analysed_area_um2``
        and ``puncta_density_per_100um2`` (2-D); for a stack with ``z_step_um`` also
        ``analysed_volume_um3`` and ``puncta_density_per_um3`` instead of the areal density.

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
        }
    return {"n_puncta": n, "analysed_area_um2": area, "puncta_density_per_100um2": 100.0 * n / area if area else np.nan}
