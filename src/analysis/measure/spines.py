"""Dendritic spines in two-photon images: dendrite tracing, spine detection, density, tracking.

Public functions: :func:`trace_dendrites` (centrelines, length in um), :func:`detect_spines`
(one row per spine head), :func:`classify_spines` (type rules), :func:`spine_density`
(spines per um per dendrite) and :func:`track_spines` (spines linked across sessions).

What is assumed
---------------
- The image shows fluorescent (e.g. Thy1-GFP) dendrites brighter than the background: a 2-D
  frame (y, x) or a z-stack (z, y, x). Z-stacks are reduced to their maximum projection for
  tracing and detection (y, x); the ``z`` of each spine head is the plane of the brightest
  (smoothed) voxel at the head's (y, x). Spines pointing along z project onto the shaft; in a
  2-D frame their heads are found only where they make the shaft brighter than along the rest
  of it (below); in a stack of 3 or more planes also where the shaft's axial profile has more
  light on one side of the shaft's plane than along the rest of the shaft (the head in its own
  plane, where the shaft is out of focus). The planes of a stack of 3 or more are first
  registered to one another (:func:`analysis.measure.planes.register_planes`: whole-pixel
  lateral shifts onto the planes' median position, for tissue that moved between planes), and
  positions are given in that registered frame.
- Dendrite shafts are wider than spine necks and brighter along their centre than a fringe of
  spines. The shaft radius is measured in every image (scale of the strongest Hessian ridges,
  then the distance transform of the shaft's half-maximum mask along its skeleton), and every
  spatial scale of the detector (smoothing, background window, head sizes searched, how far
  from the shaft a head may be) is a multiple of it. ``pixel_size_um`` converts to um and
  bounds the plausible shaft width (0.2-6 um); a pixel size that is only approximate
  changes the reported um, not which spines are found. Filters, distances and maxima are
  taken on the pixel grid, so an image sampled coarser than
  :data:`MIN_SHAFT_RADIUS_PX` pixels per shaft radius (e.g. 0.15-0.2 um pixels) is
  interpolated (cubic spline) onto a grid that fine for detection, and the heads' positions
  are given on the image's own grid again.
- Thresholds come from the image: a variance-stabilising transform fitted to the image's own
  noise (variance = a + b x mean: shot noise plus a floor), the blob filter's noise measured as
  a robust (MAD) sigma on the background pixels, Otsu's threshold on the background-flattened
  image (never below ``k_sigma`` noise sigmas of the smoothed image, measured on it, so that
  noise correlated by smoothing or interpolation traces no dendrite) for the foreground.
- A spine is a maximum of the scale-normalised blob filter (negative Laplacian of Gaussian)
  outside the shaft core and within reach of a shaft, round enough (Hessian eigenvalue ratio)
  and with enough contrast against noise and against the shaft next to it (a larger fraction
  of the shaft's brightness than the shafts vary by along their own length, measured on the
  image: :func:`_shaft_variation`); a head is a blob
  over a range of scales, so its response passes the noise cut at a neighbouring head radius
  too (a maximum significant at one scale only is noise or pixel texture): protrusions
  attached by a neck and heads whose neck is too dim to be seen are both found. Roundness is
  measured after removing a model of the bare shaft (a grey opening along the dendrite, whose
  line fits inside the shaft but not inside a head), so a head touching the shaft is not
  taken for the flank of the shaft's ridge, and the blob filter's maxima on that image are
  candidates too where a head touching the shaft has no maximum of its own on the plain image;
  a weaker maximum on the path from a head to the shaft (its neck or the neck's base) belongs
  to that head. A head over or under the shaft (seen end-on, or in a focal plane above or
  below it) is a brighter spot on the shaft: a maximum of the shaft's brightness along its
  centreline, ``k_sigma`` robust sigmas of the centreline's own variation above its running
  median over 4 shaft radii, and more than a shaft diameter from any head found beside it
  (whose light, or neck base, it would be). In a stack the same maximum may instead be of
  the axial excess (:func:`_axial_excess`): the profile across the planes, read from the
  shaft's plane, against the median of its neighbours along the centreline, beyond the shaft's
  own axial half width (measured), less the excess on the mirrored side, in robust sigmas, the
  best of the offsets counted as one test (Sidak); such a head is centred on the blob filter's
  maximum in its own plane.
- Sessions of the same field differ by a rigid motion plus a small smooth deformation
  (see :func:`track_spines`).

Spine types follow the decision rules of Risher et al. (2014), PLoS ONE 9:e107591
("Rapid Golgi analysis method for efficient and unbiased classification of dendritic
spines"), as we read them, with spine length = neck length + head diameter and width = head
diameter: filopodia if length > 2 um; otherwise mushroom if head diameter > 0.6 um;
otherwise thin if length > 1 um ("long thin") or length / width > 1; otherwise stubby. With
a measured neck, stubby means a head touching the shaft (neck length 0).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.fft as sfft
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from scipy.special import log_ndtr, ndtri_exp
from skimage.filters import threshold_otsu
from skimage.morphology import skeletonize

from analysis.measure.area import _local_percentile
from analysis.measure.checks import require_finite, require_plane_size
from analysis.measure.matching import match_points
from analysis.measure.microglia import _binary_rank, _disk_rows, _square_max, _within_steps
from analysis.measure.noise import MAD_TO_SD
from analysis.measure.planes import register_planes
from analysis.measure.puncta import _subpixel

__all__ = [
    "DendriteTrace",
    "classify_spines",
    "detect_spines",
    "spine_density",
    "trace_dendrites",
    "track_spines",
]

log = logging.getLogger(__name__)

SPINE_COLUMNS = ["y", "x", "z", "head_diameter_um", "neck_length_um", "type", "dendrite_id",
                 "intensity", "snr", "blob", "distance_to_shaft_um"]
TRACK_COLUMNS = ["session", "track_id", "y", "x", "status", "in_common_field", "head_diameter_um",
                 "neck_length_um", "type", "dendrite_id", "intensity"]
SPINE_TYPES = ("filopodia", "mushroom", "thin", "stubby")

_MIN_PIXEL_UM, _MAX_PIXEL_UM = 1e-3, 5.0

#: Finest sampling the detector needs, in pixels per shaft radius: an image whose measured
#: shaft radius is fewer pixels is interpolated onto a grid this fine for detection (heads are
#: then 1-2 pixels across, where the blob filter's smallest scales, the local maxima and the
#: distance transforms are too coarse). Measured on the real two-photon frames of
#: ``../shared/realdata/spines_2p`` binned 2-4x (``benchmarks/RESULTS.md``, session 25).
MIN_SHAFT_RADIUS_PX = 4.0
_ONE_SD_BELOW = 0.15866  # the share of a normal distribution more than one SD below its median
_MAX_FINER = 4.0  # at most this many times finer (a shaft of a pixel or two carries no spines)

#: Share of the background (pixels away from the dendrites) at the image's lowest value above
#: which the background counts as clipped: the detector's offset was set above its level, so
#: its few pixels above the floor are the upper tail of its noise and measure no noise
#: (a simulated session clipped at its background's 90th percentile had 0.85 of its
#: background at 0: the response noise measured on the rest read 4.3x that of the unclipped
#: image and recall fell from 0.84 to 0.06). The noise of such an image is then taken from its
#: shafts instead (see :func:`_candidates`).
CLIPPED_BACKGROUND_SHARE = 0.5

#: Shaft-contrast floor used when the image's own is not measurable (fewer than 20 centreline
#: pixels): a head's smoothed intensity at least this fraction of the shaft's beside it.
FALLBACK_SHAFT_CONTRAST = 0.05
#: Lowest shaft-contrast floor a measurement may give: a noise-free synthetic shaft varies by
#: nothing along its length, and a head dimmer than 1 % of the shaft beside it is within the
#: flank of the shaft's own light in any two-photon image.
MIN_SHAFT_CONTRAST = 0.01


# ----------------------------------------------------------------------------- input checks
def _finer(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` (y, x) or (z, y, x) interpolated laterally onto a grid ``factor`` times finer.

    Cubic spline on pixel areas (scipy's ``grid_mode``): output pixel ``j`` is centred on input
    position ``(j + 0.5) * n / n_out - 0.5``. Values are clipped to the input's range, so a
    background clipped at the lowest value stays at it (the noise estimates leave it out).
    """
    img = np.asarray(image, np.float32)
    zoom = (factor, factor) if img.ndim == 2 else (1.0, factor, factor)
    out = ndi.zoom(img, zoom, order=3, mode="grid-mirror", grid_mode=True)
    return np.clip(out, img.min(), img.max(), out=out)


def _nearest_dendrite(tr: DendriteTrace, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Dendrite id of the shaft pixel of ``tr`` nearest to each position (pixels of ``tr``)."""
    if not (tr.labels > 0).any():
        return np.zeros(len(y), int)
    _, (iy, ix) = ndi.distance_transform_edt(tr.labels == 0, return_indices=True)
    h, w = tr.labels.shape
    py = np.clip(np.rint(y).astype(int), 0, h - 1)
    pxx = np.clip(np.rint(x).astype(int), 0, w - 1)
    return tr.labels[iy[py, pxx], ix[py, pxx]].astype(int)


def _check_image(image: Any, pixel_size_um: Any, what: str = "image") -> tuple[np.ndarray, np.ndarray | None, float]:
    """Return (2-D plane, 3-D stack or None, pixel size) or raise ValueError saying what to fix."""
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{what} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{what} must be 2-D (y, x) or 3-D (z, y, x), got {arr.ndim}-D with shape "
                         f"{arr.shape}; take one channel (and one time point) first")
    require_plane_size(arr.shape, what)
    arr = arr.astype(np.float32, copy=False)
    require_finite(arr, what)
    try:
        px = float(pixel_size_um)
    except (TypeError, ValueError):
        raise ValueError(f"pixel_size_um must be a number in um, got {pixel_size_um!r}") from None
    if not np.isfinite(px) or not (_MIN_PIXEL_UM <= px <= _MAX_PIXEL_UM):
        raise ValueError(f"pixel_size_um={pixel_size_um!r} is not a plausible two-photon pixel size; "
                         f"give the lateral pixel size in um, between {_MIN_PIXEL_UM} and {_MAX_PIXEL_UM}")
    if arr.ndim == 3:
        arr = _registered(arr, px)
        return arr.max(axis=0), arr, px
    return arr, None, px


def _registered(image: np.ndarray, px: float) -> np.ndarray:
    """A stack of 3 or more planes with its planes registered to one another (tissue that
    moved between planes: :func:`analysis.measure.planes.register_planes`); other input as is."""
    if image.ndim == 3 and image.shape[0] >= 3:
        return register_planes(image, px)[0]
    return image


# ----------------------------------------------------------------------------- helpers
def _noise_sigma(img: np.ndarray) -> float:
    """Robust noise sigma: MAD of neighbouring-pixel differences over sqrt(2).

    Only pairs of pixels above the image's lowest value count, so a background clipped at
    zero (common after 8-bit export) does not pretend the image is noise-free; the MAD is
    taken over the brighter half of those pairs, where the dendrites are.
    """
    lo = float(img.min())
    a, b = img[:, :-1], img[:, 1:]
    c, d = img[:-1, :], img[1:, :]
    ok1 = (a > lo) & (b > lo)
    ok2 = (c > lo) & (d > lo)
    diff = np.concatenate([(a - b)[ok1], (c - d)[ok2]])
    level = np.concatenate([(a + b)[ok1], (c + d)[ok2]])
    if diff.size < 100:
        diff = np.concatenate([(a - b).ravel(), (c - d).ravel()])
        level = np.concatenate([(a + b).ravel(), (c + d).ravel()])
    diff = diff[level >= np.median(level)]
    mad = np.median(np.abs(diff - np.median(diff)))
    return float(max(MAD_TO_SD * mad / np.sqrt(2.0), 1e-3 * (float(img.max() - img.min()) + 1e-12)))


def _noise_model(img: np.ndarray) -> tuple[float, float] | None:
    """The image's noise model ``variance = a + b * mean`` (shot noise plus a floor), or None.

    Fitted to the robust variance of a fine high-pass residual in 16 bins of the local mean;
    pixels at the image's lowest value (clipped or padded background) are left out. ``a`` may
    be negative (a camera or digitiser offset adds to the mean but not to the shot noise).
    None when there are too few pixels or bins, or the noise does not grow with the signal.
    """
    mean = ndi.gaussian_filter(img, 2.0)
    hp = img - ndi.gaussian_filter(img, 1.0)
    ok = img > img.min()
    m, h = mean[ok], hp[ok]
    if m.size < 1000:
        return None
    edges = np.unique(np.quantile(m, np.linspace(0, 1, 17)))
    idx = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, len(edges) - 2)
    # the pixels of each bin together (bin numbers as bytes: numpy's stable sort of small
    # integers is a radix sort, the same order ~2.5x faster, measured)
    order = np.argsort(idx.astype(np.int8), kind="stable")
    m, h = m[order], h[order]
    bounds = np.searchsorted(idx[order], np.arange(len(edges)))
    mu, var = [], []
    for k in range(len(edges) - 1):
        sel = h[bounds[k]:bounds[k + 1]]
        if sel.size >= 50:
            mu.append(float(np.median(m[bounds[k]:bounds[k + 1]])))
            var.append(_robust_sigma(sel) ** 2)
    if len(mu) < 3:
        return None
    b, a = np.polyfit(np.asarray(mu), np.asarray(var), 1)
    # the variance must grow over the image's levels by at least half of the darkest level's
    # (differences of levels, so an offset added to the image changes nothing)
    if (not np.isfinite(b) or b <= 1e-9 * max(float(np.max(var)), 1e-12)
            or b * (max(mu) - min(mu)) < 0.5 * max(a + b * min(mu), 0)):
        return None  # noise does not grow with the signal
    return float(a), float(b)


def _photon_zero(img: np.ndarray, fit: tuple[float, float] | None) -> float:
    """The level where the image's shot noise vanishes (its photon zero), in image units.

    ``-a / b`` of the noise model ``fit`` (:func:`_noise_model`), never above the image's darkest
    level (its 0.01st percentile: a few dead pixels do not set it; a straight line through a
    variance that bends at dim levels can put the zero above the darkest pixels); without a
    noise model, the darkest level. An offset added to every pixel (a camera's or digitiser's
    baseline; 16-bit data with the offset subtracted, negative values included) moves it alike.
    """
    lo = float(np.percentile(img, 0.01))
    if fit is None:
        return lo
    return min(-fit[0] / fit[1], lo)


def _stabilise(img: np.ndarray, fit: tuple[float, float] | None = None) -> np.ndarray:
    """Variance-stabilised copy of ``img`` (generalised Anscombe transform).

    The noise model var = a + b * mean (``fit``; :func:`_noise_model` of this image when not
    given) gives the transform ``2 / b * sqrt(b * (img - zero) + 3 b^2 / 8)`` with ``zero`` the
    image's photon zero (:func:`_photon_zero`); without a noise model (noise that does not grow
    with the signal) the image is returned as it is. An offset added to every pixel shifts the
    noise model's intercept and the zero alike, so it changes nothing. (Before session 26 the
    intercept was clipped at 0, which took the value 0 for the photon zero: the simulated
    study's uint16 images, 100 above it, were detected with recall 0.714 instead of 0.768 at
    default SNR, and frames below 0 lost their dim spines; ``benchmarks/RESULTS.md``.)
    Scale factors common to a and b (e.g. correlated noise of resampled images) cancel
    in the detector, which measures the response's noise on the background of the
    stabilised image.
    """
    fit = _noise_model(img) if fit is None else fit
    if fit is None:
        return img
    b = np.float64(fit[1])  # (a numpy scalar: the transform is computed in float64)
    zero = _photon_zero(img, fit)
    return (2.0 / b) * np.sqrt(np.clip(b * (img - zero) + 0.375 * b * b, 0, None))


def _derivative(f: np.ndarray, axis: int) -> np.ndarray:
    """``np.gradient(f, axis=axis)`` of a 2-D array at unit spacing, to the last bit (central
    differences inside, one-sided at the two ends), without its general-purpose overhead
    (on a 512 x 512 frame, measured: ~6x faster along rows, ~2.6x along columns).

    Examples
    --------
    >>> f = np.random.default_rng(0).normal(size=(5, 7))
    >>> all(np.array_equal(_derivative(f, a), np.gradient(f, axis=a)) for a in (0, 1))
    True
    """
    if f.shape[axis] < 3:
        return np.gradient(f, axis=axis)
    out = np.empty_like(f)
    if axis == 0:
        np.subtract(f[2:], f[:-2], out=out[1:-1])
        np.subtract(f[1], f[0], out=out[0])
        np.subtract(f[-1], f[-2], out=out[-1])
        out[1:-1] *= 0.5  # (exactly a division by 2)
    else:
        np.subtract(f[:, 2:], f[:, :-2], out=out[:, 1:-1])
        np.subtract(f[:, 1], f[:, 0], out=out[:, 0])
        np.subtract(f[:, -1], f[:, -2], out=out[:, -1])
        out[:, 1:-1] *= 0.5
    return out


def _hessian(img: np.ndarray, sigma: float, cross: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Second derivatives (yy, xx, xy) of the Gaussian-smoothed image (central differences,
    as ``np.gradient`` of ``np.gradient``); xy is None when ``cross`` is False."""
    g = ndi.gaussian_filter(img, sigma)
    gy = _derivative(g, 0)
    gxx = _derivative(_derivative(g, 1), 1)
    return _derivative(gy, 0), gxx, (_derivative(gy, 1) if cross else None)


def _wide_gaussian(img: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """``ndi.gaussian_filter(img, sigma)`` of a 2-D image (reflecting edges, the kernel cut at
    ``truncate`` sigmas) by FFTs along each axis: the same kernel and edges, equal up to
    rounding (~1e-15 of the image's range), and 2-3x faster for kernels of tens of pixels.

    Examples
    --------
    >>> img = np.random.default_rng(0).normal(size=(64, 80))
    >>> bool(np.abs(_wide_gaussian(img, 9.0) - ndi.gaussian_filter(img, 9.0)).max() < 1e-12)
    True
    """
    rad = int(truncate * float(sigma) + 0.5)
    if sigma < 6.0 or rad >= min(img.shape):  # (narrow kernels: scipy's direct sum is as fast)
        return ndi.gaussian_filter(img, sigma, truncate=truncate)
    x = np.arange(-rad, rad + 1, dtype=float)
    kernel = np.exp(-0.5 / (float(sigma) ** 2) * x * x)
    kernel /= kernel.sum()
    out = np.asarray(img, dtype=np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (rad, rad)
        padded = np.pad(out, pad, mode="symmetric")  # (numpy's "symmetric" is scipy's "reflect")
        size = sfft.next_fast_len(padded.shape[axis] + 2 * rad, real=True)
        shape = [1, 1]
        shape[axis] = -1
        full = sfft.irfft(sfft.rfft(padded, n=size, axis=axis) * sfft.rfft(kernel, n=size).reshape(shape),
                          n=size, axis=axis)
        out = np.take(full, np.arange(2 * rad, 2 * rad + n), axis=axis)
    return out.astype(np.result_type(img.dtype, np.float32), copy=False)


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    """``img`` reduced by the mean over blocks of ``f`` x ``f`` pixels (the rows and columns
    beyond the last whole block are dropped)."""
    hh, ww = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:hh, :ww].reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))


def _ridge_radius(img: np.ndarray, r_min_px: float, r_max_px: float) -> float:
    """Typical shaft radius (pixels) from the scale of the strongest ridges.

    The scale-normalised ridge strength sigma^2 * max(0, -lambda_min(Hessian)) of the
    projection of a cylinder of radius R peaks at sigma = 0.82 R (computed for a uniformly
    filled cylinder seen from the side); the radius is the median best scale over the
    strongest ridge pixels divided by 0.82. Large scales are computed on block-reduced copies.
    """
    sig = np.geomspace(max(0.8, 0.82 * r_min_px), max(1.0, 0.82 * r_max_px), 10)
    best = np.zeros(img.shape, np.float32)
    arg = np.zeros(img.shape)
    h, w = img.shape
    for s in sig:
        f = max(1, int(s // 2))
        small = _block_mean(img, f) if f > 1 else img
        sf = s / f
        iyy, ixx, ixy = _hessian(small, sf)
        lam = 0.5 * (ixx + iyy) - np.sqrt(0.25 * (ixx - iyy) ** 2 + ixy ** 2)
        resp = np.clip(-lam, 0, None) * sf ** 2
        if f > 1:
            resp = np.repeat(np.repeat(resp, f, axis=0), f, axis=1)
            resp = np.pad(resp, ((0, h - resp.shape[0]), (0, w - resp.shape[1])), mode="edge")
        np.copyto(arg, s, where=resp > best)
        np.maximum(best, resp, out=best)
    # (a blank or constant frame has no ridge anywhere: the default radius, and no dendrite)
    strong = (best >= 0.5 * np.percentile(best, 99.5)) & (best > 0)
    if strong.sum() < 10:
        return float(np.clip(3.0, r_min_px, r_max_px))
    return float(np.median(arg[strong]) / 0.82)


def _background(img: np.ndarray, size_px: float) -> np.ndarray:
    """Slowly varying background: a low percentile over windows of ``size_px``, smoothed.

    Computed on a block-reduced copy so that the cost does not grow with the window.
    """
    f = max(1, int(size_px // 8))
    h, w = img.shape
    hh, ww = (h // f) * f, (w // f) * f
    small = img[:hh, :ww].reshape(hh // f, f, ww // f, f).min(axis=(1, 3))
    win = max(3, int(round(size_px / f)) | 1)
    # (scipy's percentile_filter, to the last bit, and faster)
    bg_small = _local_percentile(small, 20, win, 1, rank=int(float(win * win) * 20 / 100.0))
    bg_small = ndi.uniform_filter(bg_small, size=win, mode="reflect")
    bg = ndi.zoom(bg_small, (h / bg_small.shape[0], w / bg_small.shape[1]), order=1, mode="nearest")
    return bg[:h, :w]


def _open_by_radius(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary opening by a disk of ``radius`` pixels: the pixels within ``radius`` of those at
    least ``radius`` from every pixel outside ``mask`` (Euclidean distances; pixels beyond the
    image's edge count as neither).

    Computed as an erosion and a dilation by the disk in rows of pixels (:func:`_binary_rank`),
    to the last pixel what two thresholded distance transforms give and ~20x faster.

    Examples
    --------
    >>> m = np.zeros((40, 50), bool); m[10:30, 5:45] = True; m[19:21, :] = True
    >>> dt = ndi.distance_transform_edt(m) >= 3.5
    >>> bool(np.array_equal(_open_by_radius(m, 3.5), ndi.distance_transform_edt(~dt) <= 3.5))
    True
    """
    if radius <= 0:
        return mask.copy()
    if mask.all():  # (no pixel outside the mask: the distance transform's own convention)
        core = ndi.distance_transform_edt(mask) >= radius
        return (ndi.distance_transform_edt(~core) <= radius) if core.any() else core
    core = _binary_rank(mask, _disk_rows(radius, strict=True), "min")
    if not core.any():
        return core
    return _binary_rank(core, _disk_rows(radius, strict=False), "max")


def _nearest_pixel(target: np.ndarray, yy: np.ndarray, xx: np.ndarray,
                   tree: cKDTree | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The nearest pixel of ``target`` to each pixel (``yy``, ``xx``) outside it: the distance
    and that pixel's row and column, or None when ``target`` has no rim (it is empty or fills
    the image).

    The nearest pixel of ``target`` always lies on its rim (the pixels of ``target`` next to
    one outside it), so a tree of the rim serves the few pixels asked for, much faster than a
    whole distance transform. Coordinates are integers, so the distance is the square root of
    the same sum of squares that ``ndi.distance_transform_edt`` takes: equal to the last bit.
    Where two pixels are equally near, either may be named. ``tree`` is a tree returned by
    ``_rim_tree(target)``, to reuse.
    """
    tree = _rim_tree(target) if tree is None else tree
    if tree is None:
        return None
    dist, k = tree.query(np.c_[yy, xx].astype(float))
    pts = tree.data.astype(int)
    return dist, pts[k, 0], pts[k, 1]


def _rim_tree(target: np.ndarray) -> cKDTree | None:
    """A KD-tree of the pixels of ``target`` next to a pixel outside it (None if there are none)."""
    rim = target & _within_steps(~target, 1)
    return cKDTree(np.argwhere(rim).astype(float)) if rim.any() else None


def _nearest_on(mask: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ndi.distance_transform_edt(~mask, return_indices=True)`` on the pixels of ``mask`` and
    ``where`` only: the distance to the nearest pixel of ``mask`` (0 on it) and that pixel's
    row and column (from ``_nearest_pixel``). Elsewhere the distance is inf and the pixel is
    its own.

    Examples
    --------
    >>> m = np.zeros((20, 30), bool); m[8:12, 4:26] = True
    >>> w = np.zeros_like(m); w[2, 10] = w[15, 29] = True
    >>> d, iy, ix = _nearest_on(m, w)
    >>> ref, (ry, rx) = ndi.distance_transform_edt(~m, return_indices=True)
    >>> bool(np.array_equal(d[w | m], ref[w | m])), int(iy[2, 10]), int(ix[2, 10]), float(d[0, 0])
    (True, 8, 10, inf)
    """
    iy, ix = np.indices(mask.shape)
    d = np.where(mask, 0.0, np.inf)
    qy, qx = np.nonzero(where & ~mask)
    if qy.size:
        near = _nearest_pixel(mask, qy, qx)
        if near is not None:
            d[qy, qx], iy[qy, qx], ix[qy, qx] = near
    return d, iy, ix


def _distance_inside(mask: np.ndarray, yy: np.ndarray, xx: np.ndarray,
                     tree: cKDTree | None = None) -> np.ndarray:
    """``ndi.distance_transform_edt(mask)[yy, xx]`` to the last bit, for a few pixels of
    ``mask``: the distance to the nearest pixel outside it (from ``_nearest_pixel``; ``tree``
    is ``_rim_tree(~mask)``, to reuse).

    Examples
    --------
    >>> m = np.zeros((30, 40), bool); m[5:25, 3:37] = True
    >>> yy, xx = np.nonzero(m)
    >>> bool(np.array_equal(_distance_inside(m, yy, xx), ndi.distance_transform_edt(m)[yy, xx]))
    True
    """
    near = _nearest_pixel(~mask, yy, xx, tree) if len(yy) else None
    if near is None:
        return ndi.distance_transform_edt(mask)[yy, xx]
    return near[0]


_NB = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]])


def _prune_skeleton(skel: np.ndarray, min_branch_px: float, rounds: int = 2) -> np.ndarray:
    """Remove terminal skeleton branches shorter than ``min_branch_px`` (whole short pieces too)."""
    skel = skel.copy()
    for _ in range(rounds):
        nb = ndi.convolve(skel.astype(np.uint8), _NB, mode="constant") * skel
        junction = skel & (nb >= 3)
        ends = skel & (nb == 1)
        # split at junctions (dilated so that the branches separate)
        segs, n = ndi.label(skel & ~ndi.binary_dilation(junction, np.ones((3, 3), bool)), np.ones((3, 3)))
        if n == 0:
            break
        sizes = np.bincount(segs.ravel(), minlength=n + 1)
        has_end = np.zeros(n + 1, bool)
        has_end[np.unique(segs[ends])] = True
        comp, _ = ndi.label(skel, np.ones((3, 3)))
        comp_has_junction = np.zeros(comp.max() + 1, bool)
        comp_has_junction[np.unique(comp[junction])] = True
        # a short terminal segment is removed only where it hangs off a junction
        seg_comp = np.zeros(n + 1, int)
        seg_comp[segs.ravel()] = comp.ravel()
        drop = has_end & (sizes < min_branch_px) & comp_has_junction[seg_comp]
        drop[0] = False
        if not drop[1:].any():
            break
        skel &= ~drop[segs]
        skel = skeletonize(skel)
    return skel


def _skeleton_length_px(skel: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Centreline length per label (pixels) from its 8-connected steps.

    Axial steps count 0.948 and diagonal steps 1.343 pixels (Kulpa 1977, Computer Graphics and
    Image Processing 6:434-451): with 1 and sqrt(2), a digitised line that is neither axial
    nor diagonal is overestimated (by about 5 % averaged over directions); these weights are
    unbiased on average over directions. Diagonal steps that close a triangle with two axial
    steps are not counted twice.
    """
    s = skel.astype(bool)
    lengths = np.zeros(n + 1)
    lab = np.where(s, labels, 0)
    # axial neighbours
    for a, b in ((s[:, :-1] & s[:, 1:], lab[:, :-1]), (s[:-1, :] & s[1:, :], lab[:-1, :])):
        lengths += 0.948 * np.bincount(b[a], minlength=n + 1)
    # diagonal neighbours not bridged by an axial pair
    p = np.pad(s, 1)
    c = p[1:-1, 1:-1]
    for dy, dx in ((1, 1), (1, -1)):
        nbr = p[1 + dy:p.shape[0] - 1 + dy, 1 + dx:p.shape[1] - 1 + dx]
        via1 = p[1 + dy:p.shape[0] - 1 + dy, 1:-1]
        via2 = p[1:-1, 1 + dx:p.shape[1] - 1 + dx]
        ok = c & nbr & ~via1 & ~via2
        lengths += 1.343 * np.bincount(lab[ok], minlength=n + 1)
    return lengths


# ----------------------------------------------------------------------------- tracing
@dataclass(frozen=True)
class DendriteTrace:
    """Result of :func:`trace_dendrites`.

    Attributes
    ----------
    table : DataFrame
        One row per dendrite: ``dendrite_id`` (1-based), ``length_um``, ``shaft_diameter_um``
        (median of twice the distance transform along the centreline), ``n_centreline_px``,
        ``intensity`` (median smoothed intensity on the centreline).
    centreline : DataFrame
        One row per centreline pixel: ``dendrite_id``, ``y``, ``x``.
    labels : ndarray of int
        Shaft label image (0 = not shaft, else ``dendrite_id``).
    skeleton : ndarray of bool
        Pruned shaft centrelines.
    foreground : ndarray of bool
        Thresholded dendrite + spine foreground.
    shaft_radius_px : float
        Shaft radius measured on this image (pixels); the spatial scale of the detector.
    noise_sigma : float
        Robust noise standard deviation of the image.
    background : ndarray
        Estimated background image.
    smoothed : ndarray
        Smoothed image the foreground was thresholded on.
    threshold : float
        Foreground threshold above the background (image units).
    shaft_dt : ndarray
        Distance transform of the shaft mask on the centreline pixels (the local shaft radius,
        pixels; 0 off the centreline).
    """

    table: pd.DataFrame
    centreline: pd.DataFrame
    labels: np.ndarray
    skeleton: np.ndarray
    foreground: np.ndarray
    shaft_radius_px: float
    noise_sigma: float
    background: np.ndarray
    smoothed: np.ndarray
    threshold: float
    shaft_dt: np.ndarray

    @property
    def length_um(self) -> pd.Series:
        """Centreline length per dendrite id (um)."""
        return self.table.set_index("dendrite_id")["length_um"]


def _trace(img: np.ndarray, px: float, *, k_sigma: float, min_length_shaft_diameters: float,
           min_shaft_diameter_um: float, max_shaft_diameter_um: float) -> DendriteTrace:
    noise = _noise_sigma(img)
    r_min = max(1.0, 0.5 * min_shaft_diameter_um / px)
    r_max = max(r_min + 1.0, min(0.5 * max_shaft_diameter_um / px, min(img.shape) / 8.0))
    r_px = _ridge_radius(img, r_min, r_max)
    # at the measured scale: smooth, flatten the background, threshold (foreground = dendrites
    # and spines); the shaft is the part above half of the local ridge maximum (its full width
    # at half maximum, which a fringe of dimmer spines does not widen). The radius is measured
    # again on that shaft mask (60th percentile of its distance transform on its skeleton) and
    # the steps redone.
    for it in range(3):
        sigma = max(0.7, 0.25 * r_px)
        s = ndi.gaussian_filter(img, sigma)
        bg = _background(s, 8.0 * r_px)
        flat = s - bg
        noise_s = noise / (2.0 * np.sqrt(np.pi) * sigma)  # white-noise sigma after smoothing
        # pixel noise correlated by smoothing, a median filter or interpolation is not averaged
        # down as white noise is: the smoothed image's own noise, from the lower half of its
        # values (dendrites only add to them), when larger
        noise_s = max(noise_s, float(np.median(flat) - np.quantile(flat, _ONE_SD_BELOW)))
        floor = k_sigma * max(noise_s, 1e-12)
        t = max(floor, float(threshold_otsu(flat)))
        fg = _remove_small(flat > t, np.pi * r_px ** 2 * 2)
        w = max(3, int(round(6 * r_px)) | 1)
        local_max = ndi.maximum_filter(np.where(fg, flat, 0), size=w)
        core = fg & (flat >= 0.5 * local_max)
        sk = skeletonize(core)
        core_tree = None
        if sk.sum() < 10:
            break
        core_tree = _rim_tree(~core)  # (kept: the last core's distances are read again below)
        r_new = float(np.clip(np.percentile(_distance_inside(core, *np.nonzero(sk), core_tree), 60), r_min, r_max))
        converged = abs(r_new - r_px) < 0.1 * r_px
        r_px = r_new
        if converged:
            break
    # shaft = opening by a disk narrower than the shaft: necks and filopodia go, heads may stay
    shaft = _open_by_radius(core, 0.7 * r_px)
    lab, n = ndi.label(shaft, np.ones((3, 3)))
    skel = skeletonize(shaft)
    skel = _prune_skeleton(skel, 3.0 * r_px)
    lengths_px = _skeleton_length_px(skel, lab, n)
    # keep elongated components only (compact blobs that survive the opening are spine heads)
    keep = lengths_px >= min_length_shaft_diameters * 2.0 * r_px
    # a shaft whose brightness varies along it (beads, bright heads raising the local
    # maximum) breaks into pieces at half maximum: pieces at least one diameter long whose
    # foreground component holds enough shaft in all are kept
    fg_lab, _ = ndi.label(fg, np.ones((3, 3)))
    piece_fg = np.zeros(n + 1, int)
    piece_fg[lab[skel]] = fg_lab[skel]
    long_piece = lengths_px >= 2.0 * r_px
    per_fg = np.bincount(piece_fg[1:][long_piece[1:]], weights=lengths_px[1:][long_piece[1:]],
                         minlength=int(fg_lab.max()) + 1)
    keep |= long_piece & (per_fg[piece_fg] >= min_length_shaft_diameters * 2.0 * r_px)
    keep[0] = False
    shaft = keep[lab]
    lab, n = ndi.label(shaft, np.ones((3, 3)))
    skel &= shaft
    lengths_px = _skeleton_length_px(skel, lab, n)
    yy, xx = np.nonzero(skel)
    ids = lab[yy, xx]
    shaft_dt = np.zeros(shaft.shape)  # (the shaft's distance transform, read on its centrelines only)
    shaft_dt[yy, xx] = _distance_inside(shaft, yy, xx)
    centre = pd.DataFrame({"dendrite_id": ids.astype(int), "y": yy, "x": xx}).sort_values(
        ["dendrite_id", "y", "x"], ignore_index=True)
    if n:
        per = pd.DataFrame({"id": ids, "dt": _distance_inside(core, yy, xx, core_tree), "s": s[yy, xx]}).groupby("id").median()
        diam = per["dt"].reindex(np.arange(1, n + 1)).to_numpy(float)
        inten = per["s"].reindex(np.arange(1, n + 1)).to_numpy(float)
        npx = np.bincount(ids, minlength=n + 1)[1:]
    else:
        diam = inten = npx = np.empty(0)
    table = pd.DataFrame({"dendrite_id": np.arange(1, n + 1), "length_um": lengths_px[1:] * px,
                          "shaft_diameter_um": 2.0 * np.asarray(diam, float) * px,
                          "n_centreline_px": np.asarray(npx, int), "intensity": np.asarray(inten, float)})
    return DendriteTrace(table=table, centreline=centre, labels=lab.astype(np.int32), skeleton=skel,
                         foreground=fg, shaft_radius_px=r_px, noise_sigma=noise, background=bg,
                         smoothed=s, threshold=t, shaft_dt=shaft_dt)


def _remove_small(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    ok = sizes >= min_area_px
    ok[0] = False
    return ok[lab]


def trace_dendrites(image: np.ndarray, pixel_size_um: float, *, k_sigma: float = 4.0,
                    min_length_shaft_diameters: float = 4.0, min_shaft_diameter_um: float = 0.2,
                    max_shaft_diameter_um: float = 6.0) -> DendriteTrace:
    """Trace dendrite shaft centrelines and measure their length.

    A first shaft radius comes from the scale of the strongest Hessian ridges. At that scale
    the image is smoothed (sigma = radius / 4) and flattened (background = low percentile over
    8 radii); the foreground is above Otsu's threshold (never below ``k_sigma`` noise sigmas of
    the smoothed image: the pixel noise averaged as white noise, or the spread of the lower half
    of the flattened values when larger, as for noise correlated by a median filter, smoothing
    or interpolation).
    The shaft core is the foreground above half of the local maximum within 3 radii (the
    shaft's full width at half maximum, which a fringe of dimmer spines does not widen); the
    radius is re-measured on the core (60th percentile of its distance transform on its
    skeleton) and the steps repeated until it changes by < 10 %. Opening the core by a disk of
    0.7 radii removes necks and filopodia; the rest is skeletonised, terminal branches shorter
    than 3 radii are pruned, and pieces shorter than ``min_length_shaft_diameters`` shaft
    diameters (isolated heads, debris) are dropped, unless a piece is at least one diameter
    long and the pieces of that length in its foreground component add up to
    ``min_length_shaft_diameters`` (a shaft whose brightness varies along it, beads or bright
    heads beside it, breaks into such pieces at half maximum; the gaps are not traced). Lengths count 0.948 pixels per axial and
    1.343 per diagonal step of the centreline (Kulpa's weights, unbiased on average over
    directions; 1 and sqrt(2) overestimate oblique lines).

    Parameters
    ----------
    image : ndarray
        2-D (y, x) or 3-D (z, y, x; traced on its maximum projection) fluorescence image.
    pixel_size_um : float
        Lateral pixel size (um).
    k_sigma : float
        Smallest foreground contrast in noise sigmas (of the smoothed image).
    min_length_shaft_diameters : float
        Shortest dendrite kept, in shaft diameters.
    min_shaft_diameter_um, max_shaft_diameter_um : float
        Plausible shaft diameters; the measured radius is clipped into this range.

    Returns
    -------
    DendriteTrace
        ``table`` (one row per dendrite: ``dendrite_id``, ``length_um``, ...),
        ``centreline`` (``dendrite_id``, ``y``, ``x`` per pixel), ``labels`` image and the
        intermediate images.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:96, :160]
    >>> img = 100 * np.exp(-((yy - 48) ** 2) / (2 * 3.0 ** 2)) * ((xx > 20) & (xx < 140))
    >>> tr = trace_dendrites(img + 5, 0.1)
    >>> len(tr.table), bool(10 < tr.table.length_um.iloc[0] < 13)
    (1, True)
    """
    img, _, px = _check_image(image, pixel_size_um)
    return _trace(img, px, k_sigma=k_sigma, min_length_shaft_diameters=min_length_shaft_diameters,
                  min_shaft_diameter_um=min_shaft_diameter_um, max_shaft_diameter_um=max_shaft_diameter_um)


# ----------------------------------------------------------------------------- classification
def classify_spines(head_diameter_um: Any, neck_length_um: Any) -> np.ndarray:
    """Spine type by the rules of Risher et al. (2014), PLoS ONE 9:e107591.

    With length = neck length + head diameter and width = head diameter: ``filopodia`` if
    length > 2 um; else ``mushroom`` if head diameter > 0.6 um; else ``thin`` if length > 1 um
    (Risher's "long thin") or length / width > 1; else ``stubby``.

    Parameters
    ----------
    head_diameter_um, neck_length_um : array_like
        Head diameter and neck length (um).

    Returns
    -------
    ndarray of str

    Examples
    --------
    >>> classify_spines([0.4, 0.8, 0.4, 0.3], [0.0, 0.5, 0.8, 2.5]).tolist()
    ['stubby', 'mushroom', 'thin', 'filopodia']
    """
    head = np.asarray(head_diameter_um, float)
    neck = np.clip(np.asarray(neck_length_um, float), 0, None)
    length = neck + head
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(head > 0, length / head, np.inf)
    return np.select([length > 2.0, head > 0.6, (length > 1.0) | (ratio > 1.0)],
                     ["filopodia", "mushroom", "thin"], "stubby").astype(object)


# ----------------------------------------------------------------------------- detection
def _robust_sigma(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if values.size < 10:
        return float("nan")
    return float(MAD_TO_SD * np.median(np.abs(values - np.median(values))))


def _mostly_at_floor(floor: np.ndarray, away: np.ndarray) -> bool:
    """At least :data:`CLIPPED_BACKGROUND_SHARE` of the background ``away`` at the floor."""
    return bool(np.count_nonzero(floor & away) >= CLIPPED_BACKGROUND_SHARE * max(int(away.sum()), 1))


def _clipped_background(floor: np.ndarray, away: np.ndarray, solid_px: int = 8,
                        false_blocks: float = 0.01) -> bool:
    """Is the imaged background mostly at the image's floor (clipped by the detector's offset)?

    ``floor``: pixels at the image's lowest value; ``away``: the background, away from the
    dendrites. Solid square blocks of floor pixels are padding or masked parts that were not
    imaged, and are left out: in a clipped background the noise keeps lifting pixels above
    the floor here and there. The block is the smallest (at least ``solid_px`` pixels wide)
    that a background with the measured share ``q`` of lifted pixels holds by chance at fewer
    than ``false_blocks`` of its places, ``(1 - q) ** (k * k) * n < false_blocks``: in a
    512 x 512 image, 8 px while the noise lifts 40 % of it, 27 px at 2.3 %. Fixed 8 px
    blocks took most of a background 97.7 % at the floor for padding (a simulated session
    clipped at its background's 95th percentile: recall 0.01), and more so where the pixel
    noise is correlated (lifted pixels come in clumps). True when at least
    :data:`CLIPPED_BACKGROUND_SHARE` of the rest is at the floor.

    Examples
    --------
    >>> from scipy import ndimage as ndi
    >>> rng = np.random.default_rng(0)
    >>> noise = ndi.gaussian_filter(rng.normal(10.0, 3.0, (200, 200)), 2.0)  # correlated
    >>> everywhere = np.ones(noise.shape, bool)
    >>> clipped = np.maximum(noise - np.percentile(noise, 95), 0.0)  # 95 % of it at 0
    >>> _clipped_background(clipped <= 0, everywhere)
    True
    >>> padded = noise.copy()
    >>> padded[:, :130] = 0.0  # a crop on a black canvas
    >>> _clipped_background(padded <= 0, everywhere)
    False
    """
    if not _mostly_at_floor(floor, away):
        return False
    n_away = max(int(away.sum()), 1)
    low = floor & away
    lifted = 1.0 - low.sum() / n_away  # share of the background the noise lifts above the floor
    if lifted <= 0.0:
        return False  # nothing above the floor: no imaged background to judge
    chance = np.log(false_blocks / n_away) / np.log1p(-lifted)  # k * k at the false-block rate
    k = max(solid_px, int(np.ceil(np.sqrt(max(chance, 0.0)))))
    imaged = ~ndi.binary_opening(floor, structure=np.ones((k, k), bool))
    return bool((low & imaged).sum() >= CLIPPED_BACKGROUND_SHARE * max(int((away & imaged).sum()), 1))


def _noise_pattern(resp: np.ndarray, back: np.ndarray, tile: int) -> np.ndarray:
    """Relative local noise: robust (MAD) sigma of ``resp`` over background pixels per tile of
    ``tile`` pixels, divided by the sigma over all background pixels, never below 1, bilinearly
    interpolated to the image.

    Noise varies across real frames (shot noise, dark clipped corners, haze), so one global
    figure lets grain in a brighter part of the frame through.
    """
    glob = _robust_sigma(resp[back])
    h, w = resp.shape
    ny, nx = max(1, h // tile), max(1, w // tile)
    if not np.isfinite(glob) or glob <= 0 or ny * nx == 1:
        return np.ones(resp.shape, np.float32)
    th, tw = h // ny, w // nx
    blk = np.where(back, resp, np.nan)[:ny * th, :nx * tw].reshape(ny, th, nx, tw).transpose(0, 2, 1, 3)
    blk = np.sort(blk.reshape(ny, nx, th * tw), axis=2)  # NaN sort last
    n = np.sum(np.isfinite(blk), axis=2)

    def _median(sorted_vals: np.ndarray, count: np.ndarray) -> np.ndarray:
        lo = np.take_along_axis(sorted_vals, np.maximum((count - 1) // 2, 0)[..., None], axis=2)[..., 0]
        hi = np.take_along_axis(sorted_vals, np.maximum(count // 2, 0)[..., None], axis=2)[..., 0]
        return 0.5 * (lo + hi)

    med = _median(blk, n)
    dev = np.sort(np.abs(blk - med[..., None]), axis=2)
    mad = MAD_TO_SD * _median(dev, n)
    rel = np.where((n >= 30) & np.isfinite(mad), np.maximum(mad / glob, 1.0), 1.0)
    out = ndi.zoom(rel, (h / ny, w / nx), order=1, mode="nearest", grid_mode=True)
    return np.maximum(out[:h, :w], 1.0).astype(np.float32)


def _line_footprint(length: int, angle: float) -> np.ndarray:
    """Boolean footprint of a 1-pixel line of ``length`` pixels through the centre at ``angle`` (rad)."""
    half = length // 2
    t = np.linspace(-half, half, 2 * length + 1)
    fp = np.zeros((2 * half + 1, 2 * half + 1), bool)
    fp[np.rint(half + t * np.sin(angle)).astype(int), np.rint(half + t * np.cos(angle)).astype(int)] = True
    return fp


def _centreline_angle(skeleton: np.ndarray, window_px: float) -> np.ndarray:
    """Local direction (rad, 0..pi) of the centreline at every skeleton pixel (image; 0 elsewhere).

    The principal axis of the centreline pixels within ``window_px``, from the box-averaged
    second moments of the skeleton.
    """
    sk = skeleton.astype(np.float32)
    yy, xx = np.mgrid[:sk.shape[0], :sk.shape[1]].astype(np.float32)
    size = max(3, int(round(2 * window_px)) | 1)
    on = np.nonzero(skeleton)

    def box(a: np.ndarray) -> np.ndarray:  # box mean, read on the skeleton only
        return ndi.uniform_filter(a, size)[on]

    n = np.maximum(box(sk), 1e-12)
    my, mx = box(sk * yy) / n, box(sk * xx) / n
    syy = box(sk * yy * yy) / n - my * my
    sxx = box(sk * xx * xx) / n - mx * mx
    sxy = box(sk * yy * xx) / n - my * mx
    out = np.zeros(sk.shape, np.float32)
    out[on] = np.mod(0.5 * np.arctan2(2 * sxy, sxx - syy), np.pi)  # angle of the major axis (y down)
    return out


def _grey_opening(img: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``ndi.grey_opening(img, footprint=footprint, mode="nearest")`` for an odd-sized footprint
    of few pixels (a line), exactly: the minimum, then the maximum, of shifted views (about
    twice as fast as scipy's filter for a line of 16-24 pixels).
    """
    offsets = np.argwhere(footprint) - np.array(footprint.shape) // 2
    m = int(np.abs(offsets).max())
    h, w = img.shape
    out = img
    for sign, reduce in ((1, np.minimum), (-1, np.maximum)):  # erosion; dilation (reflected footprint)
        pad = np.pad(out, m, mode="edge")
        out = pad[m + sign * offsets[0, 0]:, m + sign * offsets[0, 1]:][:h, :w].copy()
        for dy, dx in offsets[1:]:
            reduce(out, pad[m + sign * dy:m + sign * dy + h, m + sign * dx:m + sign * dx + w], out=out)
    return out


def _shaft_model(flat: np.ndarray, tr: DendriteTrace, cy: np.ndarray, cx: np.ndarray, d_cent: np.ndarray,
                 length_shaft_radii: float = 4.0, n_angles: int = 24, reach_shaft_radii: float = 5.0) -> np.ndarray:
    """Image of the bare shafts: a grey opening along the direction of the nearest centreline.

    ``flat`` is the image above its background; ``cy``, ``cx``, ``d_cent`` give every pixel's
    nearest centreline pixel and its distance. A line of ``length_shaft_radii`` shaft radii
    laid along the dendrite fits inside the shaft but not inside a spine head (narrower than
    the line along the dendrite, beside the shaft or over it), so the opening keeps the
    shaft with its own cross-section and removes the spines. Each pixel takes the largest
    opening of the three directions nearest to that of its centreline pixel (``n_angles``
    directions; a bend fits one of them). The model fades linearly from full weight at half
    of ``reach_shaft_radii`` local shaft radii to 0 at ``reach_shaft_radii`` (the opening far
    from the shaft follows other structures, and a step would excite the blob filter).
    Computed on a copy block-reduced by a third of the shaft radius.
    """
    r = tr.shaft_radius_px
    if not tr.skeleton.any():
        return np.zeros_like(flat)
    f = max(1, int(r // 3))  # work on a block-reduced copy: the shaft is smooth at that scale
    h, w = flat.shape
    hh, ww = -(-h // f) * f, -(-w // f) * f
    pad = np.pad(ndi.gaussian_filter(flat, max(0.7, 0.25 * r)), ((0, hh - h), (0, ww - w)), mode="edge")
    small = pad.reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))
    if f == 1:
        # the openings are read as they are into the float32 model; rounding to float32 is
        # monotonic, so it commutes with their minima and maxima: the same model, faster
        small = small.astype(np.float32)
    local_r = np.maximum(tr.shaft_dt[cy, cx], 1.0)
    near = d_cent <= reach_shaft_radii * local_r
    ny_, nx_ = np.nonzero(near)
    ang = _centreline_angle(tr.skeleton, 2.0 * r)[cy[ny_, nx_], cx[ny_, nx_]]
    kn = np.rint(ang / np.pi * n_angles).astype(int) % n_angles
    length = max(3, int(round(length_shaft_radii * r / f)))
    out = np.zeros(flat.shape, np.float32)
    present = np.bincount(kn, minlength=n_angles) > 0
    by_angle = np.argsort(kn.astype(np.int8), kind="stable")  # the pixels of each direction, in image order
    starts = np.searchsorted(kn[by_angle], np.arange(n_angles + 1))
    groups = {i: (ny_[by_angle[starts[i]:starts[i + 1]]], nx_[by_angle[starts[i]:starts[i + 1]]])
              for i in np.nonzero(present)[0]}
    ops = {}
    for j in np.nonzero(present | np.roll(present, 1) | np.roll(present, -1))[0]:
        # each direction's opening only where it is read: the pixels of that direction and the
        # two beside it, with the reach of an erosion and a dilation around them (the same
        # values there; the rest of the image is left at 0)
        fp = _line_footprint(length, j * np.pi / n_angles)
        reach_px = 2 * (fp.shape[0] // 2) + 2
        at = [groups[i] for i in ((j - 1) % n_angles, j, (j + 1) % n_angles) if i in groups]
        ys, xs = np.concatenate([a[0] for a in at]), np.concatenate([a[1] for a in at])
        y0, y1 = max(0, ys.min() // f - reach_px), min(small.shape[0], ys.max() // f + 1 + reach_px)
        x0, x1 = max(0, xs.min() // f - reach_px), min(small.shape[1], xs.max() // f + 1 + reach_px)
        ops[j] = np.zeros(small.shape, small.dtype)
        ops[j][y0:y1, x0:x1] = _grey_opening(small[y0:y1, x0:x1], fp)
    for i, (sy, sx) in groups.items():
        vals = []
        for j in ((i - 1) % n_angles, i, (i + 1) % n_angles):
            if f > 1:  # bilinear, at the pixel centres of the block-reduced grid
                vals.append(ndi.map_coordinates(ops[j], [(sy + 0.5) / f - 0.5, (sx + 0.5) / f - 0.5],
                                                order=1, mode="nearest"))
            else:
                vals.append(ops[j][sy, sx])
        out[sy, sx] = np.maximum(np.maximum(vals[0], vals[1]), vals[2])
    u = d_cent / local_r
    taper = np.clip((reach_shaft_radii - u) / (0.5 * reach_shaft_radii), 0.0, 1.0)
    return np.clip(out, 0, None) * taper


def _candidates(img: np.ndarray, stack: np.ndarray | None, px: float, tr: DendriteTrace, *,
                max_reach_shaft_diameters: float, head_radius_shaft_ratios: Sequence[float],
                min_separation_head_diameters: float, k_sigma: float,
                min_shaft_contrast: float | None, min_offset_shaft_radii: float,
                min_dendrite_relative_intensity: float, min_snr: float, min_blobness: float) -> pd.DataFrame:
    """All head-like maxima near a shaft with their features and score (no cut applied).

    Heads are maxima of the scale-normalised blob filter (-LoG sigma^2) taken over head
    radii ``head_radius_shaft_ratios`` x shaft radius (sigma = head radius / sqrt 2, as in
    scikit-image's ``blob_log``) on the variance-stabilised image; a less significant maximum
    (response in noise sigmas) within the larger head radius of a more significant one is
    dropped. Each maximum also carries its response in noise sigmas at the neighbouring radii
    (the scale-space test of the score). The filter's noise is measured on the background pixels of this image (robust
    sigma overall, scaled by a per-tile pattern), so resampled or compressed images, whose
    pixel noise is correlated, and frames whose noise varies from place to place get the
    right threshold. A background mostly at the image's floor (the offset set above it, or
    padding) may carry no measurable noise: there the noise is the lower of that figure and
    the robust sigma of the shaft-free response over the shafts, and when the background is
    clipped (:func:`_clipped_background`) the same everywhere.
    """
    r = tr.shaft_radius_px
    empty = pd.DataFrame(columns=SPINE_COLUMNS)
    if not tr.skeleton.any():
        return empty
    flat = img - tr.background
    noise_fit = _noise_model(img)
    vst = _stabilise(img, noise_fit)
    d_cent, (cy, cx) = ndi.distance_transform_edt(~tr.skeleton, return_indices=True)
    # the bare shafts (above the background) in the same units: the shape (blobness) of a
    # head is measured without them, so a head touching the shaft is not taken for the
    # flank of a ridge
    model = _shaft_model(vst - _background(ndi.gaussian_filter(vst, max(0.7, 0.25 * r)), 8.0 * r),
                         tr, cy, cx, d_cent)
    vst_plain = vst
    vst = vst - _wide_gaussian(vst, 4.0 * r)  # the blob filter ignores slow trends; keeps values small
    vres = vst - model
    lo = img > img.min()  # clipped (padded) background carries no noise information
    away = ~_within_steps(tr.foreground, max(1, int(round(r))))  # (binary_dilation, iterated)
    back = away & lo
    clipped = _clipped_background(~lo, away)
    # most of the background at the floor, clipped or padded: what is left above it may be only
    # the upper tail of a clipped noise (clumped next to the dendrites, where the block test
    # takes the rest for padding), so the background's noise is capped by the shafts' below
    at_floor = _mostly_at_floor(~lo, away)
    if back.sum() < 100:
        back = ~tr.foreground
    radii = np.maximum(1.0, np.asarray(head_radius_shaft_ratios, float) * r)
    tile = max(16, int(round(8 * r)))  # tiles of the local noise estimate
    # a clipped background has no measurable noise pattern: the same noise everywhere
    pattern: np.ndarray | None = np.ones(img.shape, np.float32) if clipped else None
    best = np.full(img.shape, -np.inf)
    best_i = np.zeros(img.shape, np.int8)
    best_z = np.zeros(img.shape)  # response in noise sigmas at the chosen scale
    lam_ratio = np.zeros(img.shape)
    rbest = np.full(img.shape, -np.inf)
    rbest_i = np.zeros(img.shape, np.int8)
    rbest_z = np.zeros(img.shape)
    rlam = np.zeros(img.shape)
    band = tr.labels > 0
    z_scale = []  # per scale: response in noise sigmas, the larger of with and without the shaft
    for i, hr in enumerate(radii):
        sg = max(0.8, hr / np.sqrt(2.0))
        iyy, ixx, _ = _hessian(vst, sg, cross=False)
        resp = -(ixx + iyy) * sg ** 2
        glob = _robust_sigma(resp[back])
        glob = glob if np.isfinite(glob) and glob > 0 else tr.noise_sigma
        ryy, rxx, rxy = _hessian(vres, sg)
        # the same without the shaft; its noise also counts the model's residual texture over
        # the shaft (robust sigma there: spines cover a minority of the shaft)
        rresp = -(rxx + ryy) * sg ** 2
        band_sigma = _robust_sigma(rresp[band]) if band.sum() >= 100 else float("nan")
        if at_floor and np.isfinite(band_sigma) and band_sigma > 0:
            # the background's noise may not be measurable: that of the response over the
            # shafts (without them) if lower (on a padded frame, whose imaged background
            # measures its noise, it is seldom lower: 1 of the 50 padded real frames changed,
            # by one detection)
            glob = min(glob, band_sigma)
        if pattern is None:  # spatial pattern of the noise, from the smallest scale, used for all
            pattern = _noise_pattern(resp, back, tile) if i == 0 else None
        noise_r = glob * (pattern if pattern is not None else 1.0)
        half_tr, root = 0.5 * (rxx + ryy), np.sqrt(0.25 * (rxx - ryy) ** 2 + rxy ** 2)
        ratio = np.clip(-(half_tr + root), 0, None) / np.maximum(-(half_tr - root), 1e-12)
        z_r = resp / noise_r
        better = resp > best
        np.copyto(best, resp, where=better)
        np.copyto(best_i, i, where=better)
        np.copyto(best_z, z_r, where=better)
        np.copyto(lam_ratio, ratio, where=better)
        rnoise = np.maximum(noise_r, band_sigma) if np.isfinite(band_sigma) else noise_r
        rz_r = rresp / rnoise
        better = rresp > rbest
        np.copyto(rbest, rresp, where=better)
        np.copyto(rbest_i, i, where=better)
        np.copyto(rbest_z, rz_r, where=better)
        np.copyto(rlam, ratio, where=better)
        # best within the scale's head radius (a head's maximum moves a little with scale;
        # taken at the heads only, by _neighbour_scale_z)
        z_scale.append((np.maximum(z_r, rz_r), 3 + 2 * int(hr)))
    shaft = tr.labels > 0
    size = max(3, int(round(2 * min_separation_head_diameters * radii.min())) | 1)
    # (maximum filters: the same as scipy's, faster; "nearest" and "reflect" edges give the same maxima)
    peaks = (best == _square_max(best, size // 2)) & (best > 0)
    touch = (rbest == _square_max(rbest, size // 2)) & (rbest > 0)
    reach = max_reach_shaft_diameters * 2.0 * r
    # local shaft radius at the nearest centreline pixel (never above the typical radius: heads
    # pressed against the shaft on both sides widen its mask, not the shaft); the head centre
    # must lie outside ``min_offset_shaft_radii`` of it and within reach of the shaft edge
    r_local = np.clip(tr.shaft_dt[cy, cx], 1.0, max(r, 1.0))
    off_centre = d_cent > min_offset_shaft_radii * r_local
    peaks &= off_centre
    touch &= off_centre
    # distance to the shaft's edge and its nearest pixel, at the maxima and on the shaft
    d_edge, iy, ix = _nearest_on(shaft, peaks | touch)
    peaks &= d_edge <= reach
    # heads touching the shaft, whose blob response merges into the shaft's ridge: maxima of
    # the response without the shaft, within one (largest) head diameter of the shaft edge,
    # where the plain response has none nearby
    touch &= d_edge <= 2.0 * radii.max()
    touch &= ~_binary_rank(peaks, {size // 2: list(range(-(size // 2), size // 2 + 1))}, "max")  # (the square)
    # the opening cannot follow a shaft beyond its end: no such maxima near a centreline end
    ends = tr.skeleton & (ndi.convolve(tr.skeleton.astype(np.uint8), _NB, mode="constant") == 1)
    if ends.any() and touch.any():
        ty, tx = np.nonzero(touch)
        touch[ty, tx] = cKDTree(np.argwhere(ends)).query(np.c_[ty, tx])[0] > 2.0 * r + radii.max()
    peaks |= touch
    best = np.where(touch, rbest, best)
    best_i = np.where(touch, rbest_i, best_i).astype(np.int8)
    best_z = np.where(touch, rbest_z, best_z)
    lam_ratio = np.where(touch, rlam, lam_ratio)
    # near the shaft the flank of its ridge lowers a head's plain response (and the model may
    # take a little of a head pressed against it): a head there counts the stronger of its
    # responses in noise sigmas, with and without the shaft
    best_z = np.where(d_edge <= 2.0 * radii.max(), np.maximum(best_z, rbest_z), best_z)
    # heads cut by the image border cannot be measured (and the filter is biased there)
    edge = max(2, int(round(radii.min())))
    peaks[:edge], peaks[-edge:], peaks[:, :edge], peaks[:, -edge:] = False, False, False, False
    # only on dendrites bright enough to be in focus (relative to the brightest dendrite)
    if len(tr.table):
        inten = tr.table["intensity"].to_numpy(float) - _photon_zero(img, noise_fit)
        bright = np.concatenate([[False], inten >= min_dendrite_relative_intensity * np.nanmax(inten)])
        peaks &= bright[tr.labels[iy, ix]]
    yy, xx = np.nonzero(peaks)
    if yy.size == 0:
        return empty
    # greedy suppression: most significant first (response in noise sigmas; the raw response
    # would favour the scales whose noise is largest), drop maxima within the larger head radius
    order = np.argsort(-best_z[yy, xx], kind="stable")
    yy, xx = yy[order], xx[order]
    hr = radii[best_i[yy, xx]]
    keep = np.ones(yy.size, bool)
    pairs = cKDTree(np.c_[yy, xx]).query_pairs(min_separation_head_diameters * 2 * radii.max(),
                                                output_type="ndarray")
    if len(pairs):
        pairs = np.sort(pairs, axis=1)
        dist = np.hypot(yy[pairs[:, 0]] - yy[pairs[:, 1]], xx[pairs[:, 0]] - xx[pairs[:, 1]])
        close = dist < min_separation_head_diameters * np.maximum(hr[pairs[:, 0]], hr[pairs[:, 1]])
        for a, b in pairs[close][np.argsort(pairs[close][:, 0], kind="stable")]:
            if keep[a]:
                keep[b] = False
    yy, xx, hr = yy[keep], xx[keep], hr[keep]
    # scale-space test: a head is a blob over a range of scales, so its response also passes
    # the noise cut at a neighbouring head radius (the larger of the two); noise maxima and
    # pixel texture are significant at one scale only
    z_near = _neighbour_scale_z(z_scale, best_i[yy, xx], yy, xx)
    del z_scale
    sm = ndi.gaussian_filter(flat, max(0.7, 0.35 * float(np.median(radii))))
    centreline = _centreline_neighbours(tr)  # (for the contrast floor and the maxima along the shaft)
    if min_shaft_contrast is None:
        top = float(img.max())  # (a plateau stays exact through the finer grid's spline)
        min_shaft_contrast = _shaft_variation(sm, tr, unclipped=img < top - 1e-6 * max(abs(top), 1.0),
                                              centreline=centreline)
    if yy.size > 1:
        # one protrusion, one head: a weaker maximum on the path from a head to the shaft
        # (its neck, or the neck's base on the shaft's flank) is part of that spine. Only a
        # maximum that passes the cuts is a head with a neck: a noise maximum beyond a dim
        # head (e.g. a stubby one touching the shaft) must not take it for its neck
        head = ((np.minimum(np.minimum(best_z[yy, xx], z_near) / k_sigma,
                            sm[yy, xx] / (min_shaft_contrast * np.maximum(sm[cy[yy, xx], cx[yy, xx]], 1e-12)))
                 >= min_snr) & (lam_ratio[yy, xx] >= min_blobness))
        keep = np.ones(yy.size, bool)
        dc = d_cent[yy, xx]
        by, bx = cy[yy, xx].astype(float), cx[yy, xx].astype(float)
        tree = cKDTree(np.c_[yy, xx])
        for a, near_a in enumerate(tree.query_ball_point(np.c_[yy, xx], dc + radii.max())):
            if not keep[a] or not head[a]:
                continue
            sy, sx = by[a] - yy[a], bx[a] - xx[a]
            seg2 = max(sy * sy + sx * sx, 1e-12)
            for b in near_a:
                if b <= a or not keep[b] or dc[b] >= dc[a]:
                    continue
                t = np.clip(((yy[b] - yy[a]) * sy + (xx[b] - xx[a]) * sx) / seg2, 0.0, 1.0)
                if np.hypot(yy[a] + t * sy - yy[b], xx[a] + t * sx - xx[b]) < max(hr[a], hr[b]):
                    keep[b] = False
        yy, xx, hr, z_near = yy[keep], xx[keep], hr[keep], z_near[keep]
    contrast = sm[yy, xx]
    # the shaft next to the head: smoothed intensity at the nearest centreline pixel
    shaft_level = np.maximum(sm[cy[yy, xx], cx[yy, xx]], 1e-12)
    blob = lam_ratio[yy, xx]  # 1 for a round blob, 0 for the side of a ridge
    snr_noise = best_z[yy, xx] / k_sigma
    snr_shaft = contrast / (min_shaft_contrast * shaft_level)
    snr_scale = z_near / k_sigma
    score = np.minimum(np.minimum(snr_noise, snr_scale), snr_shaft)
    # heads over or under the shaft (seen end-on, or in a focal plane above or below it): a
    # maximum of the shaft's brightness along its centreline, significant against the
    # centreline's own variation, and not the base of (or light from) a head beside the shaft
    vst_stack = None
    if stack is not None and stack.shape[0] >= 3:
        # the noise model in y and x only, from the three brightest planes on top of each other
        # (they hold the dendrites in focus and the background: the range of levels it needs)
        bright_planes = np.sort(np.argsort(stack.mean(axis=(1, 2)), kind="stable")[-3:])
        fit = _noise_model(stack[bright_planes].reshape(-1, stack.shape[-1]))
        vst_stack = _stabilise(stack.reshape(-1, stack.shape[-1]), fit).reshape(stack.shape)
    py, pxx, pz, pplane = _centreline_maxima(vst_plain, tr, vst_stack=vst_stack, centreline=centreline)
    if py.size:
        ok = bright[tr.labels[py, pxx]]
        ok &= (py >= edge) & (py < img.shape[0] - edge) & (pxx >= edge) & (pxx < img.shape[1] - edge)
        passing = (score >= min_snr) & (blob >= min_blobness)
        if passing.any():
            dist, _ = cKDTree(np.c_[yy[passing], xx[passing]]).query(np.c_[py, pxx])
            ok &= dist > 2.0 * r
        py, pxx, pz, pplane = py[ok], pxx[ok], pz[ok], pplane[ok]
    n_side = yy.size
    yy, xx = np.concatenate([yy, py]), np.concatenate([xx, pxx])
    hr = np.concatenate([hr, np.full(py.size, float(np.median(radii)))])
    snr_noise = np.concatenate([snr_noise, pz / k_sigma])
    snr_scale = np.concatenate([snr_scale, pz / k_sigma])  # tested along the shaft instead
    snr_shaft = np.concatenate([snr_shaft, np.full(py.size, np.inf)])  # a head seen through the shaft
    score = np.concatenate([score, pz / k_sigma])
    blob = np.concatenate([blob, np.ones(py.size)])  # roundness cannot be told from the shaft's ridge
    on_shaft = np.arange(yy.size) >= n_side
    head_d = _head_diameters(sm, yy, xx, r)
    dist_shaft = d_edge[yy, xx]
    neck = np.clip(dist_shaft - head_d / 2.0, 0, None)
    dend = tr.labels[iy[yy, xx], ix[yy, xx]]
    z = np.full(yy.size, np.nan)
    if stack is not None:
        zs = ndi.gaussian_filter(stack, (0, 0.5 * radii.min(), 0.5 * radii.min()))
        z = zs[:, yy, xx].argmax(axis=0).astype(float)
    ry, rx = _refine(sm, yy, xx, max(1, int(round(float(np.median(hr))))))
    if vst_stack is not None and (pplane >= 0).any():
        # heads found in the stack above or below the shaft: centred in their own plane
        # (in the projection the shaft outshines them)
        for k in np.unique(pplane[pplane >= 0]):
            at = np.flatnonzero(pplane == k)
            hy, hx = _head_in_plane(vst_stack[k], py[at], pxx[at], float(np.median(radii)), 1.5 * r)
            ry[n_side + at], rx[n_side + at], z[n_side + at] = hy, hx, float(k)
    df = pd.DataFrame({
        "y": ry, "x": rx, "z": z,
        "head_diameter_um": head_d * px, "neck_length_um": neck * px,
        "dendrite_id": dend.astype(int), "intensity": img[yy, xx].astype(float),
        "snr": score, "distance_to_shaft_um": dist_shaft * px,
        "snr_noise": snr_noise, "snr_shaft": snr_shaft, "snr_scale": snr_scale, "blob": blob,
        "d_cent_r": d_cent[yy, xx] / r, "d_edge_r": dist_shaft / r, "on_shaft": on_shaft,
    })
    df["type"] = classify_spines(df["head_diameter_um"], df["neck_length_um"])
    return df.sort_values(["y", "x"], ignore_index=True)


def _centreline_neighbours(tr: DendriteTrace, window_shaft_radii: float = 4.0) -> tuple[
        np.ndarray, np.ndarray, cKDTree, np.ndarray]:
    """The centreline pixels (``yy``, ``xx``), their KD-tree and each one's neighbours along
    the centreline within ``window_shaft_radii`` shaft radii (a ``query_ball_point`` result)."""
    yy, xx = np.nonzero(tr.skeleton)
    tree = cKDTree(np.c_[yy, xx])
    return yy, xx, tree, tree.query_ball_point(np.c_[yy, xx], window_shaft_radii * tr.shaft_radius_px)


def _shaft_variation(sm: np.ndarray, tr: DendriteTrace, window_shaft_radii: float = 4.0,
                     unclipped: np.ndarray | None = None,
                     centreline: tuple | None = None) -> float:
    """The shafts' own relative variation along their length: the floor of a head's contrast.

    ``sm`` (the background-flattened image smoothed at the heads' scale) is read on the
    centrelines; each pixel's value relative to the running median of its centreline within
    ``window_shaft_radii`` shaft radii, minus 1, is the shaft's relative variation there (its
    texture, beads, haze and noise; heads over the shaft and spine bases are a minority, so a
    robust sigma leaves them out). Its robust sigma over all centrelines is returned, at least
    :data:`MIN_SHAFT_CONTRAST`, or :data:`FALLBACK_SHAFT_CONTRAST` when fewer than 20
    centreline pixels are bright enough to measure it. Centreline pixels outside ``unclipped``
    (the image's maximum: a shaft saturated at the top of the detector's range shows no
    variation of its own) are not counted. A candidate beside the shaft whose
    smoothed intensity is a smaller fraction of the shaft's is within what the shaft itself
    varies by (the flank of a brighter stretch of shaft, a ripple of out-of-focus light).
    ``centreline``: :func:`_centreline_neighbours` of ``tr`` with this window, if at hand.
    """
    yy, xx, _, near = centreline if centreline is not None else _centreline_neighbours(tr, window_shaft_radii)
    if yy.size >= 20:
        v = sm[yy, xx]
        level = _neighbour_medians(v, near)
        ok = level > 0
        if unclipped is not None:
            ok &= unclipped[yy, xx]
        if ok.sum() >= 20:
            sigma = _robust_sigma(v[ok] / level[ok] - 1.0)
            if np.isfinite(sigma):
                return float(max(sigma, MIN_SHAFT_CONTRAST))
    return FALLBACK_SHAFT_CONTRAST


def _centreline_maxima(vst: np.ndarray, tr: DendriteTrace, window_shaft_radii: float = 4.0,
                       vst_stack: np.ndarray | None = None,
                       centreline: tuple | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima of the shaft's brightness along its centreline (pixels y, x, noise sigmas,
    and the plane of a head found in ``vst_stack``, -1 elsewhere).

    The variance-stabilised image, smoothed at half the shaft radius, is read on the
    centreline; each pixel's excess over the running median of the centreline within
    ``window_shaft_radii`` shaft radii (the bare shaft) is measured in robust sigmas of that
    excess over the whole centreline (its own variation: noise, beads and heads together;
    heads are a minority). With a z-stack (``vst_stack``: variance-stabilised, at least 3
    planes), each pixel's significance is the larger of that and of :func:`_axial_excess` (a
    head above or below the shaft, in its own plane). Returned are the pixels whose
    significance is positive and the largest within one shaft radius along the centreline (the
    detector's noise cut decides which are heads; weaker ones serve the tracker's hysteresis).
    """
    empty = np.empty(0, int), np.empty(0, int), np.empty(0), np.empty(0, int)
    r = tr.shaft_radius_px
    yy, xx, tree, near = centreline if centreline is not None else _centreline_neighbours(tr, window_shaft_radii)
    if yy.size < 20:
        return empty
    v = ndi.gaussian_filter(vst, max(0.7, 0.5 * r))[yy, xx]
    excess = v - _neighbour_medians(v, near)
    sigma = _robust_sigma(excess)
    if not np.isfinite(sigma) or sigma <= 0:
        return empty
    z = excess / sigma
    plane = np.full(yy.size, -1)
    if vst_stack is not None and vst_stack.shape[0] >= 3:
        z_ax, plane_ax = _axial_excess(vst_stack, yy, xx, near, max(0.7, 0.5 * r))
        wins = z_ax > z
        z = np.where(wins, z_ax, z)
        plane = np.where(wins, plane_ax, -1)
    local = z >= _neighbour_values(z, tree.query_ball_point(np.c_[yy, xx], max(2.0, r)), -np.inf)[0].max(axis=1)
    sel = local & (z > 0)
    return yy[sel], xx[sel], z[sel], plane[sel]


def _axial_excess(vs: np.ndarray, yy: np.ndarray, xx: np.ndarray, near: Sequence[Sequence[int]],
                  smooth_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Significance (noise sigmas) and plane of a head above or below the shaft at each
    centreline pixel (``yy``, ``xx``; ``near``: each pixel's neighbours along the centreline).

    In a maximum projection a head over or under the shaft shows only where it is brighter
    than the shaft; in the stack it lies in planes where the shaft is dimmer. Each pixel's
    axial profile (the variance-stabilised planes ``vs``, smoothed by ``smooth_px`` in y and x) is
    read relative to the shaft's plane there (the running median, along the centreline, of
    the profiles' maxima located to a fraction of a plane: a head cannot move it; the profile
    is read between planes by linear interpolation) and compared with the median profile of
    its neighbours read the same way (the bare shaft, heads being a minority).
    The excess at each offset is reduced by the positive excess at the mirrored offset (a
    head lies on one side of the shaft; a thicker stretch of shaft raises both sides); offsets
    within the shaft's axial half width at half maximum (measured on the median profile: the
    microscope's axial blur and the z step, from the image) are left to the projection's
    test; the excess is in robust sigmas of all excesses. The best offset of each pixel is one
    of several tests: its significance is that of a single test at the same family-wise error
    (Sidak: ``Phi(z)^n``). Returns the significance and the plane (index into ``vs``) of the
    best offset.
    """
    nz = vs.shape[0]
    prof = np.stack([ndi.gaussian_filter(p, smooth_px)[yy, xx] for p in vs], axis=1)  # (pixels, planes)
    # each profile's maximum to a fraction of a plane (the parabola through it and its two
    # neighbours): a shaft centred between two planes has two near-equal maxima, and profiles
    # aligned on whole planes would be read one plane apart by neighbours
    # (puncta's parabola along the planes, axis 1; a maximum on the first or last plane stays
    # on it)
    k = prof.argmax(axis=1)
    peak = np.where((k > 0) & (k < nz - 1), _subpixel(prof, np.c_[np.arange(yy.size), k])[:, 1], k)
    shaft = _neighbour_medians(peak, near)
    d = np.arange(-(nz - 1), nz)
    at = shaft[:, None] + d[None, :]  # (planes, fractional: read by linear interpolation)
    lower = np.floor(at).astype(int)
    w = at - lower
    aligned = (np.take_along_axis(prof, np.clip(lower, 0, nz - 1), axis=1) * (1.0 - w)
               + np.take_along_axis(prof, np.clip(lower + 1, 0, nz - 1), axis=1) * w)
    # (within half a plane beyond the first or last plane, that plane's value: the whole planes
    # read as whole planes would be)
    aligned[(at < -0.5) | (at > nz - 0.5)] = np.nan
    nb, _ = _neighbour_values(np.arange(yy.size), near, -1)
    excess = np.empty_like(aligned)
    step = max(1, (1 << 22) // max(nb.shape[1] * d.size, 1))  # (~32 MB of gathered profiles at a time)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (offsets no neighbour reaches: NaN)
        for a in range(0, yy.size, step):
            part = nb[a:a + step]
            gathered = np.where((part >= 0)[:, :, None], aligned[np.where(part >= 0, part, 0)], np.nan)
            excess[a:a + step] = aligned[a:a + step] - np.nanmedian(gathered, axis=1)
    del gathered
    # the shaft's own axial blur: offsets within its half width at half maximum (of the typical
    # profile) are left to the projection's test
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        typical = np.nanmedian(aligned, axis=0)
    excess[:, np.abs(d) <= max(_half_width(typical, nz - 1), 0.5)] = np.nan
    # a head lies on one side of the shaft; a thicker stretch of shaft raises both
    excess -= np.clip(np.nan_to_num(excess[:, ::-1], nan=0.0), 0, None)
    sigma = _robust_sigma(excess[np.isfinite(excess)])
    if not np.isfinite(sigma) or sigma <= 0:
        return np.full(yy.size, -np.inf), np.full(yy.size, -1)
    zz = np.where(np.isfinite(excess), excess / sigma, -np.inf)
    best = zz.argmax(axis=1)
    z_max = zz[np.arange(yy.size), best]
    n_tests = np.maximum(np.isfinite(excess).sum(axis=1), 1)
    with np.errstate(all="ignore"):
        z_one = ndtri_exp(n_tests * log_ndtr(z_max))
    # (far in the tail the correction is below rounding: the best offset's own figure)
    z_one = np.where(np.isfinite(z_one) | (z_max == -np.inf), z_one, z_max)
    return z_one, np.clip(np.rint(shaft + d[best]), 0, nz - 1).astype(int)


def _half_width(profile: np.ndarray, centre: int) -> float:
    """Half width at half maximum (samples) of a peaked ``profile`` around index ``centre``,
    above its lowest value: the mean of the two sides' linearly interpolated crossings (a side
    that does not fall to half counts as reaching the profile's end).

    >>> _half_width(np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2), 6)  # sigma 2: 2.355
    2.3...
    """
    p = np.asarray(profile, float)
    ok = np.isfinite(p)
    floor = float(np.min(p[ok]))
    half = floor + 0.5 * (p[centre] - floor)
    widths = []
    for step in (1, -1):
        k, w = centre, None
        while 0 <= k + step < p.size and np.isfinite(p[k + step]):
            if p[k + step] <= half:
                w = abs(k - centre) + (p[k] - half) / max(p[k] - p[k + step], 1e-12)
                break
            k += step
        widths.append(abs(k - centre) if w is None else w)
    return float(np.mean(widths))


def _head_in_plane(plane: np.ndarray, y: np.ndarray, x: np.ndarray, head_radius: float,
                   reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre (y, x, sub-pixel) of the head nearest each centreline pixel in one plane: the
    maximum of the blob filter (-LoG at ``head_radius / sqrt 2``) within ``reach`` pixels,
    refined by the intensity centroid of the smoothed plane within the head's radius."""
    s = head_radius / np.sqrt(2.0)
    q = int(np.ceil(reach))
    w = max(1, int(round(head_radius)))
    # (the filters on the box around the pixels, with a margin of the filters' reach: the same
    # values there as on the whole plane)
    m = q + w + int(4.0 * s + 0.5) + 2
    y0, x0 = max(int(y.min()) - m, 0), max(int(x.min()) - m, 0)
    box = plane[y0:int(y.max()) + m + 1, x0:int(x.max()) + m + 1]
    y, x = y - y0, x - x0
    resp = -ndi.gaussian_laplace(box, s)
    oy, ox = np.mgrid[-q:q + 1, -q:q + 1]
    disk_ = (oy ** 2 + ox ** 2 <= reach * reach).ravel()
    wy = np.clip(y[:, None] + oy.ravel()[None, :], 0, box.shape[0] - 1)
    wx = np.clip(x[:, None] + ox.ravel()[None, :], 0, box.shape[1] - 1)
    j = np.where(disk_[None, :], resp[wy, wx], -np.inf).argmax(axis=1)
    rows = np.arange(y.size)
    hy, hx = _refine(ndi.gaussian_filter(box, max(0.7, 0.5 * s)), wy[rows, j], wx[rows, j], w)
    return hy + y0, hx + x0


def _neighbour_medians(values: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """``np.median(values[nb])`` for each ``nb`` of ``neighbours`` (a ``query_ball_point``
    result; none empty), vectorised: the middle value, or the mean of the middle two."""
    near, count = _neighbour_values(values, neighbours, np.inf)
    near.sort(axis=1)
    rows = np.arange(len(count))
    return 0.5 * (near[rows, (count - 1) // 2] + near[rows, count // 2])


def _neighbour_values(values: np.ndarray, neighbours: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """``values`` of each point's neighbours (a ``query_ball_point`` result), one row per point
    padded with ``fill``, and the number of neighbours of each point."""
    count = np.fromiter((len(nb) for nb in neighbours), int, len(neighbours))
    out = np.full((len(neighbours), max(int(count.max(initial=0)), 1)), fill, np.asarray(values).dtype)
    if count.sum():
        flat = np.concatenate([np.asarray(nb, int) for nb in neighbours])
        out[np.repeat(np.arange(len(neighbours)), count),
            np.arange(flat.size) - np.repeat(np.cumsum(count) - count, count)] = values[flat]
    return out, count


def _window_max(img: np.ndarray, yy: np.ndarray, xx: np.ndarray, size: int, chunk: int = 1 << 20) -> np.ndarray:
    """``ndi.maximum_filter(img, size, mode="nearest")[yy, xx]`` for an odd ``size``, computed at
    those pixels only (about ``chunk`` window pixels at a time)."""
    d = np.arange(size) - size // 2
    out = np.empty(len(yy), img.dtype)
    step = max(1, chunk // (size * size))
    for a in range(0, len(yy), step):
        wy = np.clip(yy[a:a + step, None, None] + d[None, :, None], 0, img.shape[0] - 1)
        wx = np.clip(xx[a:a + step, None, None] + d[None, None, :], 0, img.shape[1] - 1)
        out[a:a + step] = img[wy, wx].reshape(len(wy), -1).max(axis=1)
    return out


def _neighbour_scale_z(z_scale: Sequence[tuple[np.ndarray, int]], best_i: np.ndarray, yy: np.ndarray,
                       xx: np.ndarray) -> np.ndarray:
    """Response in noise sigmas at the better of the two scales next to each head's own scale.

    ``z_scale`` holds one map per head radius (smallest first) with the size of the window
    (pixels) over which its best value near each head is taken; ``best_i`` is the index of each
    head's scale. With a single scale there is no neighbour and the result is +inf.
    """
    n = len(z_scale)
    out = np.full(yy.size, -np.inf)
    if n < 2:
        return np.full(yy.size, np.inf)
    for i in range(n):
        sel = best_i == i
        if not sel.any():
            continue
        for j in (i - 1, i + 1):
            if 0 <= j < n:
                zmap, size = z_scale[j]
                out[sel] = np.maximum(out[sel], _window_max(zmap, yy[sel], xx[sel], size))
    return out


def _refine(sm: np.ndarray, yy: np.ndarray, xx: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    h, wd = sm.shape
    oy, ox = np.mgrid[-w:w + 1, -w:w + 1]
    py = np.clip(yy[:, None, None] + oy, 0, h - 1)
    pxx = np.clip(xx[:, None, None] + ox, 0, wd - 1)
    v = sm[py, pxx]
    v = np.clip(v - v.min(axis=(1, 2), keepdims=True), 0, None)
    inside = (oy ** 2 + ox ** 2) <= w ** 2
    v = v * inside
    tot = v.sum(axis=(1, 2))
    tot = np.where(tot > 0, tot, 1.0)
    ry = yy + (v * oy).sum(axis=(1, 2)) / tot
    rx = xx + (v * ox).sum(axis=(1, 2)) / tot
    return ry, rx


def _head_diameters(sm: np.ndarray, yy: np.ndarray, xx: np.ndarray, r: float) -> np.ndarray:
    """Full width at half maximum of the head along 8 directions (median), in pixels."""
    h, w = sm.shape
    nmax = max(3, int(np.ceil(3 * r)))
    ang = np.arange(8) * np.pi / 8
    t = np.arange(-nmax, nmax + 1)
    dy = np.sin(ang)[:, None] * t[None, :]
    dx = np.cos(ang)[:, None] * t[None, :]
    py = np.clip(np.rint(yy[:, None, None] + dy[None]).astype(int), 0, h - 1)
    pxx = np.clip(np.rint(xx[:, None, None] + dx[None]).astype(int), 0, w - 1)
    prof = sm[py, pxx]  # (n, 8, len t)
    peak = sm[yy, xx][:, None, None]
    above = prof >= 0.5 * peak
    c = nmax
    # run of 'above' containing the centre, on each side
    below_r = ~above[:, :, c:]
    below_l = ~above[:, :, :c + 1][:, :, ::-1]
    right = np.where(below_r.any(axis=2), below_r.argmax(axis=2), nmax + 1)
    left = np.where(below_l.any(axis=2), below_l.argmax(axis=2), nmax + 1)
    widths = (right + left - 1).astype(float)
    return np.median(np.sort(widths, axis=1)[:, :4], axis=1)  # the narrower directions: across the head


def detect_spines(image: np.ndarray, pixel_size_um: float, *, k_sigma: float = 4.0,
                  min_snr: float = 1.0, min_shaft_contrast: float | None = None, min_blobness: float = 0.3,
                  max_reach_shaft_diameters: float = 3.0, min_offset_shaft_radii: float = 0.8,
                  head_radius_shaft_ratios: Sequence[float] = (0.4, 0.6, 0.85, 1.2),
                  min_separation_head_diameters: float = 1.0,
                  min_dendrite_relative_intensity: float = 0.15, return_all: bool = False,
                  trace: DendriteTrace | None = None) -> pd.DataFrame:
    """Detect dendritic spine heads next to traced dendrite shafts.

    Dendrites are traced first (:func:`trace_dendrites`; its shaft radius sets every spatial
    scale below). Head candidates are maxima of the scale-normalised blob filter of the
    variance-stabilised image over head radii ``head_radius_shaft_ratios`` x shaft radius,
    whose centre lies more than ``min_offset_shaft_radii`` local shaft radii from the
    centreline and at most ``max_reach_shaft_diameters`` shaft diameters from the shaft
    edge. This finds protrusions attached by a visible neck as well as heads whose neck is
    too dim to see. Maxima are ranked by their response in noise sigmas (measured on the
    background, or over the shafts when the background is clipped at the image's floor). A less significant
    maximum lying on the path from a more significant one that passes the cuts below to its
    nearest centreline pixel (within the larger head radius) is that spine's neck and is
    dropped. A
    candidate is a spine if its score
    ``min(response / (k_sigma * response noise), contrast / (min_shaft_contrast * shaft))``
    is at least ``min_snr`` (the response in noise sigmas is taken twice, at the head's own
    radius and at the better of the neighbouring radii searched, as the best within that
    radius of the head: a head is a blob over a range of scales, a noise maximum or pixel
    texture mostly is not) and its blobness (ratio of the Hessian eigenvalues, taken on the
    image minus a model of the bare shafts, see below) is at least ``min_blobness``. The shaft
    model is a grey opening of the image along the direction of the nearest centreline, with
    a line of 4 shaft radii: it keeps the shaft and removes heads beside or over it, so a head
    touching the shaft is measured as a round blob rather than the flank of a ridge. Within
    one head diameter of the shaft edge (and away from centreline ends, where the opening
    cannot follow the shaft), maxima of the blob filter on that shaft-free image are
    candidates as well where the plain image has none nearby: the response of a head pressed
    against the shaft merges into the shaft's ridge. Their noise is the larger of the
    background noise and the robust noise of that response over the shaft. Within that
    distance every candidate's response in noise sigmas is the larger of the two (the flank
    of the shaft's ridge lowers the plain response of a head next to it). Heads over or
    under the shaft, which no blob maximum outside the core marks, are local maxima (within
    one shaft radius) of the shaft's brightness along its centreline (the stabilised image
    smoothed at half a shaft radius), whose excess over the running median of the centreline
    within 4 shaft radii is at least ``k_sigma`` robust sigmas of that excess over all
    centrelines, farther than one shaft diameter from every head that passes the cuts beside
    the shaft; their score is that excess over ``k_sigma`` sigmas (no shaft-contrast or
    roundness test: the shaft's ridge hides both).

    Parameters
    ----------
    image : ndarray
        2-D (y, x) or 3-D (z, y, x) image. 3-D stacks are detected on the maximum projection,
        and heads above or below a shaft also in the stack's planes (3 or more; see the
        module's notes); ``z`` of a head is the plane of its brightest smoothed voxel, or for a
        head found above or below the shaft its own plane (NaN for 2-D input).
    pixel_size_um : float
        Lateral pixel size (um); used for the um columns.
    k_sigma : float
        Blob response needed, in noise sigmas of the response (measured on the background),
        at the head's radius and at a neighbouring one of ``head_radius_shaft_ratios``.
    min_snr : float
        Smallest score kept (1 = exactly at both thresholds).
    min_shaft_contrast : float or None
        Smallest head contrast (over background, smoothed at the heads' scale) relative to the
        shaft next to it; rejects texture and out-of-focus haze that the noise level does not.
        None (default): measured on the image, as the shafts' own relative variation along
        their length (robust sigma of the smoothed centreline over its running median within
        4 shaft radii; texture, beads, haze and noise together), at least
        :data:`MIN_SHAFT_CONTRAST` (:data:`FALLBACK_SHAFT_CONTRAST` where the centrelines are
        too short to measure it). It reads 0.016 / 0.025 / 0.042 on the simulator's high /
        default / low SNR frames and 0.07-0.09 (medians) on the real two-photon frames of
        ``../shared/realdata/spines_2p``. A float fixes it (0.05 gives the detector's earlier
        fixed default).
    min_blobness : float
        Smallest ratio of the smaller to the larger Hessian eigenvalue magnitude at the head,
        without the shaft (1 for a round blob, 0 for a line such as a neck).
    max_reach_shaft_diameters : float
        Farthest a head centre may be from a shaft edge, in shaft diameters.
    min_offset_shaft_radii : float
        Nearest a head centre may be to the centreline, in local shaft radii (the distance
        transform of the shaft mask on the centreline, at most the image's shaft radius: heads
        pressed against the shaft widen the mask, not the shaft).
    head_radius_shaft_ratios : sequence of float
        Head radii searched, relative to the shaft radius.
    min_separation_head_diameters : float
        Two maxima closer than this many head radii (of the larger) are one head.
    min_dendrite_relative_intensity : float
        Dendrites dimmer than this fraction of the brightest one (out of focus) carry no spines
        (intensities counted from the image's photon zero).
    return_all : bool
        Return every candidate with its score and features (no cut; ``on_shaft`` marks the
        maxima along the centreline); used for the hysteresis of :func:`track_spines`.
    trace : DendriteTrace, optional
        A trace of this image from :func:`trace_dendrites` (computed with its defaults if
        not given). When its shaft radius is below :data:`MIN_SHAFT_RADIUS_PX` pixels, the
        image is interpolated (cubic spline, at most 4x) onto a grid with that many pixels per
        shaft radius and detected there (traced again on that grid with the defaults); ``y``,
        ``x`` are given in this image's pixels and ``dendrite_id`` is that of ``trace``.
        A trace without dendrites gives no spines.

    Returns
    -------
    DataFrame
        One row per spine: ``y``, ``x`` (head centre, pixels, intensity-weighted), ``z``,
        ``head_diameter_um`` (FWHM across the head), ``neck_length_um`` (shaft edge to head
        centre minus the head radius, >= 0), ``type`` (:func:`classify_spines`),
        ``dendrite_id`` (nearest shaft in the trace), ``intensity`` (raw value at the head),
        ``snr`` (the score), ``distance_to_shaft_um``.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:100, :200].astype(float)
    >>> img = 100 * np.exp(-(yy - 50) ** 2 / (2 * 3.0 ** 2)) * ((xx > 10) & (xx < 190))
    >>> img += 80 * np.exp(-((yy - 62) ** 2 + (xx - 100) ** 2) / (2 * 2.0 ** 2))
    >>> img += np.random.default_rng(0).normal(10, 1, img.shape)
    >>> spines = detect_spines(img, 0.1)
    >>> spines[["y", "x"]].round().values.tolist()
    [[62.0, 100.0]]
    """
    img, stack, px = _check_image(image, pixel_size_um)
    if not np.isfinite(min_snr) or min_snr < 0:
        raise ValueError(f"min_snr must be >= 0, got {min_snr!r}")
    if min_shaft_contrast is not None and not (np.isfinite(min_shaft_contrast) and min_shaft_contrast > 0):
        raise ValueError(f"min_shaft_contrast must be > 0 (a fraction of the shaft's intensity, e.g. 0.05) or None "
                         f"(measured on the image), got {min_shaft_contrast!r}")
    trace_defaults = dict(k_sigma=4.0, min_length_shaft_diameters=4.0, min_shaft_diameter_um=0.2,
                          max_shaft_diameter_um=6.0)
    tr = trace if trace is not None else _trace(img, px, **trace_defaults)
    cols = SPINE_COLUMNS + (["snr_noise", "snr_shaft", "snr_scale", "d_cent_r", "d_edge_r", "on_shaft"]
                            if return_all else [])
    if not tr.skeleton.any():
        # no dendrite, no spine (the finer grid below, traced again, found "dendrites" in the
        # interpolated noise of a blank field: 20-170 spines on pure Poisson noise)
        return pd.DataFrame(columns=cols)
    finer = min(MIN_SHAFT_RADIUS_PX / tr.shaft_radius_px, _MAX_FINER)
    work_img, work_stack, work_px, work_tr = img, stack, px, tr
    if finer > 1.0:
        # coarse sampling: detect on a finer grid (traced again there), positions back below
        up = _finer(stack if stack is not None else img, finer)
        work_stack = up if stack is not None else None
        work_img = up.max(axis=0) if stack is not None else up
        fy, fx = work_img.shape[0] / img.shape[0], work_img.shape[1] / img.shape[1]
        work_px = px / float(np.sqrt(fy * fx))
        work_tr = _trace(work_img, work_px, **trace_defaults)
        log.debug("detect_spines: shaft radius %.2f px, detected on a grid %.2f x finer", tr.shaft_radius_px, finer)
    df = _candidates(work_img, work_stack, work_px, work_tr, max_reach_shaft_diameters=max_reach_shaft_diameters,
                     head_radius_shaft_ratios=head_radius_shaft_ratios,
                     min_separation_head_diameters=min_separation_head_diameters, k_sigma=k_sigma,
                     min_shaft_contrast=min_shaft_contrast, min_offset_shaft_radii=min_offset_shaft_radii,
                     min_dendrite_relative_intensity=min_dendrite_relative_intensity,
                     min_snr=min_snr, min_blobness=min_blobness)
    if finer > 1.0 and len(df):
        df["y"] = (df["y"].to_numpy(float) + 0.5) / fy - 0.5
        df["x"] = (df["x"].to_numpy(float) + 0.5) / fx - 0.5
        df["dendrite_id"] = _nearest_dendrite(tr, df["y"].to_numpy(float), df["x"].to_numpy(float))
    if not return_all and len(df):
        df = df[(df["snr"] >= min_snr) & (df["blob"] >= min_blobness)]
    df = df.reset_index(drop=True)
    log.debug("detect_spines: shaft radius %.1f px, noise %.3g, %d spines", tr.shaft_radius_px,
              tr.noise_sigma, len(df))
    return df.reindex(columns=cols)


# ----------------------------------------------------------------------------- density
def spine_density(spines: pd.DataFrame, dendrites: DendriteTrace | pd.DataFrame) -> pd.DataFrame:
    """Spines per um of dendrite, per dendrite.

    Parameters
    ----------
    spines : DataFrame
        From :func:`detect_spines` (needs ``dendrite_id``).
    dendrites : DendriteTrace or DataFrame
        From :func:`trace_dendrites` (or its ``table``: ``dendrite_id``, ``length_um``).

    Returns
    -------
    DataFrame
        ``dendrite_id``, ``length_um``, ``n_spines``, ``spines_per_um``.

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"dendrite_id": [1, 2], "length_um": [10.0, 20.0]})
    >>> s = pd.DataFrame({"dendrite_id": [1, 1, 2]})
    >>> spine_density(s, d)["spines_per_um"].tolist()
    [0.2, 0.05]
    """
    table = dendrites.table if isinstance(dendrites, DendriteTrace) else dendrites
    if "dendrite_id" not in spines or not {"dendrite_id", "length_um"} <= set(table.columns):
        raise ValueError("spine_density needs spines with 'dendrite_id' and dendrites with "
                         "'dendrite_id' and 'length_um' (the outputs of detect_spines and trace_dendrites)")
    counts = spines["dendrite_id"].value_counts()
    out = table[["dendrite_id", "length_um"]].copy()
    out["n_spines"] = out["dendrite_id"].map(counts).fillna(0).astype(int)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["spines_per_um"] = np.where(out["length_um"] > 0, out["n_spines"] / out["length_um"], np.nan)
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------- tracking
#: Rotations searched between sessions (degrees): a head plate remounted, or a window imaged
#: again after weeks, turns the field by a few degrees (2 degrees SD per session in the
#: simulator, 5 degrees between two sessions is common), which translation-only phase
#: correlation does not survive.
ROTATION_SEARCH_DEG = tuple(float(a) for a in range(-8, 9))
#: When the best of :data:`ROTATION_SEARCH_DEG` is at one of its ends, the search goes on in
#: that direction, a degree at a time, up to this angle. A field turned further (a head plate
#: remounted another way, a stage turned for another session) is found by the rotation of the
#: images' power spectra (:func:`_spectrum_rotation`), without turning the image by hand.
ROTATION_EXTEND_DEG = 30.0


def _spectrum_rotation(ref: np.ndarray, mov: np.ndarray) -> tuple[float, float]:
    """The two angles (degrees, 180 apart) by which ``mov`` turned about its centre matches
    ``ref``, from the rotation of their power spectra (Reddy & Chatterji 1996).

    A rigid map turns an image's power spectrum by the same angle and leaves it unmoved by the
    shift, so the angle is the shift of the spectra's polar images along their angle axis
    (phase correlation; a power spectrum is symmetric, hence the angle only modulo 180).
    Trends slower than 8 pixels are removed and both images are padded to one square (equal
    frequency steps on both axes) and Hann-windowed; the spectra enter as log(1 + |F|) over
    the frequencies from 1/16 to 1/2 of the Nyquist radius (the window's own spectrum and the
    finest, noisiest frequencies out). Any angle: unlike the image search of :func:`_register`
    it does not need a starting guess, but it is less precise, so its angles are only starts.
    """
    from skimage.filters import window
    from skimage.registration import phase_cross_correlation
    from skimage.transform import warp_polar

    side = max(*ref.shape, *mov.shape)

    def spectrum(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        x = x - ndi.gaussian_filter(x, 8.0)
        x = np.pad(x, [(0, side - n) for n in x.shape])
        return np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(x * window("hann", x.shape)))))

    r = side // 2
    polar = [warp_polar(spectrum(x), radius=r, output_shape=(360, r))[:180, r // 16: r // 2] for x in (ref, mov)]
    shift, _, _ = phase_cross_correlation(polar[0], polar[1], upsample_factor=10, normalization=None)
    deg = -float(shift[0])
    return deg, deg + 180.0 if deg <= 0 else deg - 180.0


def _rotation(deg: float) -> np.ndarray:
    """2x2 matrix of a rotation by ``deg`` degrees acting on (y, x) row vectors as ``p @ R.T``."""
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _turned(img: np.ndarray, deg: float) -> np.ndarray:
    """``img`` turned about its centre by ``deg`` degrees (the point ``p`` lands on
    ``R (p - c) + c``, :func:`_rotation`); linear interpolation, 0 outside."""
    r = _rotation(deg)
    c = (np.array(img.shape, float) - 1.0) / 2.0
    # out[o] = img[R^T (o - c) + c]
    return ndi.affine_transform(img, r.T, offset=c - r.T @ c, order=1, mode="constant", cval=0.0)


def _register(ref: np.ndarray, mov: np.ndarray, angles_deg: Sequence[float] = ROTATION_SEARCH_DEG
              ) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, bool, float | None]:
    """Candidate rigid maps (R, t) with ``mov`` coordinates ``p`` -> ``p @ R.T + t`` in ``ref``,
    the angle tried whose correlation peaked highest (degrees), whether that angle is the
    last one of the extended search (the field may be turned further than anything tried), and
    the angle taken from the spectra (None when no angle of theirs correlated better than the
    search's).

    ``mov`` is turned about its centre by each angle of ``angles_deg`` and phase-correlated
    with ``ref`` (Hann window, on copies reduced to about 256 pixels per side); when the
    highest correlation peak is at an end of ``angles_deg`` the search goes on beyond it, a
    degree at a time, up to :data:`ROTATION_EXTEND_DEG`. The two angles of
    :func:`_spectrum_rotation` that lie outside the angles searched, and a degree to each side
    of them, are tried the same way (a field turned by any angle, a half turn included); one of
    them is taken when it correlates better than every angle searched. The angle with the highest
    correlation peak gives candidates of full-resolution phase correlation, as the
    unturned image does: with and without a Hann window and with plain or phase-only
    (whitened) cross-power. The plain one follows the bright shafts, the whitened one the fine
    detail (spines), and either can lock onto a wrong peak when a straight dendrite or a
    regular spine spacing makes the field nearly periodic. :func:`track_spines` keeps the
    candidate whose refined alignment pairs the most spines (:func:`_best_alignment`).
    """
    from skimage.filters import window
    from skimage.registration import phase_cross_correlation

    a = ref - np.median(ref)
    b = mov - np.median(mov)
    if a.shape != b.shape:
        # frames of different sizes (another crop or frame size): both padded at the bottom and
        # right to a common shape with their median level, which keeps every pixel's index
        shape = tuple(max(m, n) for m, n in zip(a.shape, b.shape))
        a = np.pad(a, [(0, m - n) for m, n in zip(shape, a.shape)])
        b = np.pad(b, [(0, m - n) for m, n in zip(shape, b.shape)])
    win = window("hann", a.shape)
    centre = (np.array(b.shape, float) - 1.0) / 2.0
    best_deg = 0.0
    at_end = False
    spectral: float | None = None
    starts = [0.0]  # rotations whose phase correlations are candidates
    if len(angles_deg) > 1 and min(a.shape) >= 32:
        f = max(1, int(round(min(a.shape) / 256)))
        small_a, small_b = _block_mean(a, f), _block_mean(b, f)
        win_s = window("hann", small_a.shape)
        fa = np.fft.fft2(small_a * win_s)

        def peak(deg: float) -> float:
            tb = _turned(small_b, deg)
            cc = np.fft.ifft2(fa * np.conj(np.fft.fft2(tb * win_s)))
            return float(np.abs(cc).max()) / (np.linalg.norm(tb * win_s) + 1e-12)

        peaks = {float(deg): peak(deg) for deg in angles_deg}
        best_deg = max(peaks, key=peaks.__getitem__)
        starts.append(best_deg)
        lo, hi = min(peaks), max(peaks)
        if best_deg in (lo, hi) and best_deg != 0.0:
            step = 1.0 if best_deg == hi else -1.0
            deg = best_deg + step
            while abs(deg) <= ROTATION_EXTEND_DEG:
                peaks[deg] = peak(deg)
                deg += step
            best_deg = max(peaks, key=peaks.__getitem__)
            # the coarse peak is broad: the end of the first search stays a candidate too (a
            # field turned ~5 degrees can peak at 8 and 9, and only 8 refines to the truth)
            starts.append(best_deg)
            at_end = abs(best_deg) >= ROTATION_EXTEND_DEG
        # any other angle: the spectra's rotation, tried outside the angles searched
        lo, hi = min(peaks), max(peaks)
        wide = {}
        for deg in _spectrum_rotation(small_a, small_b):
            for d in (deg - 1.0, deg, deg + 1.0):
                d = (d + 180.0) % 360.0 - 180.0
                if not lo - 0.5 <= d <= hi + 0.5:
                    wide[d] = peak(d)
        if wide and max(wide.values()) > peaks[best_deg]:
            best_deg = spectral = max(wide, key=wide.__getitem__)
            starts.append(best_deg)
            at_end = False
    out = []
    for deg in dict.fromkeys(starts):
        r = _rotation(deg)
        x0 = _turned(b, deg) if deg else b
        for norm in (None, "phase"):
            for use_win in (False, True):
                x, y = (a * win, x0 * win) if use_win else (a, x0)
                shift, _, _ = phase_cross_correlation(x, y, upsample_factor=10, normalization=norm)
                # p -> R (p - c) + c + shift
                out.append((r, centre - r @ centre + np.asarray(shift, float)))
    return out, best_deg, at_end, spectral


#: Smallest correlation of two sessions' registered images (at the spine scale, slow trends
#: removed) for them to count as the same dendrites; below it their spines are not linked.
#: Sessions of one simulated position (drift, rotation, warp, 13 % fewer spines, photons down
#: to a quarter of the low SNR level) gave 0.58-0.90, the default study's 96 intervals
#: 0.52-0.89; other simulated positions -0.01-0.10, pairs of different real wide-field frames
#: -0.01-0.39 (``benchmarks/validation_real.md``, part i; ``benchmarks/RESULTS.md``, session
#: 24). One straight dendrite registered onto another can pass (zoomed real frames).
MIN_SESSION_CORRELATION = 0.4
#: The same for two sessions aligned from the rotation of their power spectra, an angle beyond
#: those the image search tried (:func:`_register`): every angle tried gives two unrelated
#: fields another chance to look alike. Unrelated real wide-field frames registered at any
#: angle correlated up to 0.53, straight single dendrites of the zoomed real frames up to
#: 0.62; a simulated field turned by 40-180 degrees against another session of it 0.83-0.84
#: (``benchmarks/RESULTS.md``, session 27).
MIN_TURNED_SESSION_CORRELATION = 0.6


def _session_correlation(prev: np.ndarray, cur: np.ndarray, rot: np.ndarray, t: np.ndarray,
                         shaft_radius_px: float) -> float:
    """Pearson correlation of two sessions' planes where they overlap, ``cur`` mapped into
    ``prev`` by the rigid map ``prev ~ cur @ rot.T + t``.

    Both planes are smoothed at half a shaft radius (pixel noise averages out; shafts and
    heads stay) and their trends slower than 8 shaft radii are removed (uneven illumination
    is shared by unrelated fields). NaN when they overlap on fewer than 100 pixels.
    """
    r = max(1.0, 0.5 * float(shaft_radius_px))
    slow = 8.0 * max(1.0, float(shaft_radius_px))

    def band(x: np.ndarray) -> np.ndarray:
        f = ndi.gaussian_filter(np.asarray(x, np.float32), r)
        return f - ndi.gaussian_filter(f, slow)

    a, b = band(prev), band(cur)
    # prev pixel p shows cur pixel (p - t) @ rot = rot.T (p - t)
    bw = ndi.affine_transform(b, rot.T, offset=-rot.T @ t, output_shape=a.shape, order=1, mode="constant",
                              cval=np.nan)
    ok = np.isfinite(bw)
    if ok.sum() < 100:
        return float("nan")
    x, y = a[ok].astype(float), bw[ok].astype(float)
    x -= x.mean()
    y -= y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")


def _pairing_score(cur: np.ndarray, pred: np.ndarray, tol_px: float) -> float:
    """How well two point sets pair: one-to-one pairs within ``2 tol_px``, each weighted by
    ``exp(-d^2 / (2 (tol_px / 2)^2))`` (a wrong alignment pairs loosely)."""
    d = match_points(cur, pred, 2.0 * tol_px).distances
    return float(np.exp(-0.5 * (d / (0.5 * tol_px)) ** 2).sum())


def _best_alignment(candidates: list[tuple[np.ndarray, np.ndarray]], cur: np.ndarray, prev: np.ndarray,
                    tol_px: float, extra: np.ndarray | None = None
                    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The image registration's candidate map whose spine alignment (:func:`_align_points`
    started from it) pairs this session's spines best with the previous one's; returns the
    candidate and that alignment.  Each candidate is refined before they are compared: along
    a straight dendrite with regularly spaced spines, a candidate shifted by one spacing can
    pair about as many spines as the right one until the rotation is fitted."""
    best = None
    for cand in candidates:
        aligned = _align_points(cur, prev, cand, tol_px, extra=extra)
        score = _pairing_score(cur, aligned[0], tol_px) if len(cur) and len(prev) else 0.0
        if best is None or score > best[0]:
            best = (score, cand, aligned)
    return best[1], best[2]


def _rigid_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation R and translation t with dst ~ src @ R.T + t (Kabsch)."""
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(u @ vt))
    rot = (u @ np.diag([1.0, d]) @ vt).T
    return rot, cd - cs @ rot.T


def _align_points(cur: np.ndarray, prev: np.ndarray, start: tuple[np.ndarray, np.ndarray] | np.ndarray,
                  tol_px: float, n_neighbours: int = 8, extra: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Previous spines in this session's pixels: rigid ICP, then a local, smooth correction.

    Starts from the image registration's rigid map ``(R, t)`` (or a shift); each round pairs
    the points one to one within a shrinking distance and fits a rotation and translation
    (kept only if at least 4 points pair). Tissue also deforms a little between sessions, so
    each previous spine is then moved by the median residual displacement of its
    ``n_neighbours`` nearest paired spines, its own pair left out (a non-parametric smooth
    deformation field), twice, pairing within 1.5 and then 1 ``tol_px``. Returns (predicted positions,
    ``extra`` points of the previous session mapped the same way, R, t) with the rigid part
    prev ~ cur @ R.T + t.
    """
    if isinstance(start, tuple):
        rot, t = np.asarray(start[0], float), np.asarray(start[1], float)
    else:
        rot, t = np.eye(2), np.asarray(start, float)
    if len(cur) >= 4 and len(prev) >= 4:
        for tol in (3.0 * tol_px, 2.0 * tol_px, 1.5 * tol_px, tol_px):
            m = match_points(cur @ rot.T + t, prev, tol)
            if len(m.pairs) < 4:
                break
            rot, t = _rigid_fit(cur[m.pairs[:, 0]], prev[m.pairs[:, 1]])
    pred = (prev - t) @ rot
    extra = np.empty((0, 2)) if extra is None else (np.asarray(extra, float).reshape(-1, 2) - t) @ rot
    for tol in (1.5 * tol_px, 1.0 * tol_px):
        if len(cur) < 4 or len(pred) < 4:
            break
        m = match_points(pred, cur, tol)
        if len(m.pairs) < 4:
            break
        anchors = pred[m.pairs[:, 0]]
        resid = cur[m.pairs[:, 1]] - anchors
        k = min(n_neighbours, len(anchors) - 1)
        tree = cKDTree(anchors)
        # leave each paired spine's own pair out of its correction: its partner may be a new
        # spine near a lost one, and its own residual would pull it onto that partner
        _, idx = tree.query(pred, k=k + 1)
        idx = np.asarray(idx).reshape(len(pred), k + 1)
        own = np.full(len(pred), -1)
        own[m.pairs[:, 0]] = np.arange(len(anchors))
        is_own = idx == own[:, None]
        drop_last = ~is_own.any(axis=1)
        is_own[drop_last, -1] = True  # (no own pair among the neighbours: the farthest goes)
        idx = idx[~is_own].reshape(len(pred), k)
        pred = pred + np.median(resid[idx], axis=1)
        if len(extra):
            ke = min(n_neighbours, len(anchors))
            _, idx = tree.query(extra, k=ke)
            extra = extra + np.median(resid[np.asarray(idx).reshape(len(extra), ke)], axis=1)
    return pred, extra, rot, t


#: Relative difference of two sessions' pixel sizes below which they count as the same zoom.
_SAME_PIXEL_SIZE = 0.01


def _session_pixel_sizes(pixel_size_um: float | Sequence[float], n: int) -> np.ndarray:
    """One pixel size per session from a number or a sequence of ``n`` (checked later)."""
    sizes = np.atleast_1d(np.asarray(pixel_size_um, dtype=object))
    if sizes.ndim != 1 or sizes.size not in (1, n):
        raise ValueError(f"pixel_size_um must be one number or one per session ({n}), got {pixel_size_um!r}")
    try:
        sizes = sizes.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"pixel_size_um must be numbers in um, got {pixel_size_um!r}") from None
    return np.repeat(sizes, n) if sizes.size == 1 else sizes


def _resampled(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` (y, x) or (z, y, x) resampled laterally by ``factor`` (output pixels per input
    pixel; linear interpolation): output pixel ``j`` is input position ``j / factor``."""
    img = np.asarray(image, np.float32)
    lat = tuple(int(np.floor((n - 1) * factor)) + 1 for n in img.shape[-2:])
    if img.ndim == 2:
        return ndi.affine_transform(img, [1.0 / factor, 1.0 / factor], output_shape=lat, order=1, mode="nearest")
    return ndi.affine_transform(img, [1.0, 1.0 / factor, 1.0 / factor], output_shape=(img.shape[0], *lat),
                                order=1, mode="nearest")


def track_spines(images: Sequence[np.ndarray], pixel_size_um: float | Sequence[float], *, max_distance_um: float = 0.8,
                 min_snr: float = 1.0, min_blobness: float = 0.3, hysteresis: float = 0.6,
                 rescue_z: float = 2.0, **params: Any) -> pd.DataFrame:
    """Detect spines in every session and link them to the previous session.

    Each session is registered to the previous one by phase correlation (sub-pixel; also
    with the session turned by the rotation of :data:`ROTATION_SEARCH_DEG` (extended up to
    :data:`ROTATION_EXTEND_DEG` when the best is at its end) whose correlation
    peaks highest), each candidate refined to a rigid map (rotation + translation) by
    iterative closest points on the detected spines and then by a local median of the paired
    spines' residual displacements (small tissue deformation; each spine's own pair left
    out); the candidate whose refined map pairs the spines best is kept. Spines are
    detected per session (:func:`detect_spines`), and the previous session's spines, moved
    by that map, are matched one to one to this session's within
    ``max_distance_um`` (:func:`analysis.measure.matching.match_points`). Hysteresis keeps
    spines near the threshold from flickering: a previous spine that finds no detection may
    still match a weaker candidate (passing ``hysteresis`` x both cuts) within half of
    ``max_distance_um`` of its predicted place (stable, same track), and a new detection with
    such a weak candidate at its place in the previous session is ``stable`` rather than
    ``gained`` (its track starts here). At such a predicted place a weaker candidate also
    counts if its blob response is at least ``rescue_z`` noise sigmas (and its contrast the
    same fraction of the shaft-contrast cut) and differs from its partner's response in the
    other session by at most ``rescue_z`` x sqrt 2 sigmas (one spine measured
    twice with independent noise): the place is given, so this is one test rather than a
    search over the image, and a spine near the cut that dips in one image stays one track.

    Two sessions are linked only if they show the same dendrites: their registered planes
    (smoothed at half a shaft radius, slow trends removed) must correlate at least
    :data:`MIN_SESSION_CORRELATION` where they overlap (:data:`MIN_TURNED_SESSION_CORRELATION`
    when they are aligned at an angle found by the rotation of their power spectra, beyond the
    angles the image search tried). Below it (another position, a wrong
    file, a field turned or moved beyond what the registration finds) nothing is linked: the
    session's spines start new tracks as ``gained`` outside the common field, the previous
    session's tracks end without a ``lost`` row, so the interval adds no turnover, and a
    warning names the sessions. A blank session (one value everywhere: a failed acquisition)
    is linked to neither neighbour in the same way.

    Conventions (one row per spine per session):

    - ``session`` 0 lists its spines with status ``stable`` (the baseline);
    - a spine matched to the previous session is ``stable`` and keeps its ``track_id``;
    - a detection without a partner is ``gained`` and starts a new ``track_id``;
    - a previous spine without a partner gets one row ``lost`` in the session it is missing
      from, at its position predicted from the registration (in that session's pixels), and
      its track ends there (a spine that comes back later is a new ``gained`` track);
    - drift moves the field: a previous spine predicted outside this image (within
      ``max_distance_um`` of the border) has left the field, gets no row and its track ends;
      a new detection whose place lies outside the previous image is ``gained`` with
      ``in_common_field`` False. Count turnover on ``in_common_field`` rows only.

    Parameters
    ----------
    images : sequence of ndarray
        One 2-D or 3-D image per session, same field of view (drift allowed).
    pixel_size_um : float or sequence of float
        Lateral pixel size (um), or one per session when the zoom changed between sessions:
        a session whose pixel size differs from the first's by more than 1 % is resampled
        (linear interpolation) to the first session's pixels for detection and registration,
        and its rows are given in its own pixels.
    max_distance_um : float
        Largest distance between a spine and its partner after registration (um).
    min_snr, min_blobness : float
        Detection cuts, as in :func:`detect_spines`.
    hysteresis : float
        Fraction of both cuts that a candidate must pass to keep a track alive (or to show
        that a new detection was already there).
    rescue_z : float
        Smallest blob response (noise sigmas) of a candidate at a predicted place whose response
        agrees with its partner's (difference <= ``rescue_z`` x sqrt 2 sigmas); it too keeps
        a track alive or shows that a new detection was there.
    **params
        Passed to :func:`detect_spines`.

    Returns
    -------
    DataFrame
        ``session``, ``track_id``, ``y``, ``x`` (in that session's pixels), ``status`` in
        {stable, gained, lost}, ``in_common_field`` (bool), and the spine's ``head_diameter_um``, ``neck_length_um``,
        ``type``, ``dendrite_id``, ``intensity`` (NaN on ``lost`` rows). ``df.attrs["shifts"]``
        holds the (dy, dx) of each session relative to the previous one at the image centre
        (a list of tuples from the image registration; session pixel + shift = previous
        session pixel, at the centre; in the first session's pixels when the zoom changed),
        ``df.attrs["rotation_deg"]`` the fitted rotation and
        ``df.attrs["turned_beyond_search"]`` the sessions whose image search ended at its
        largest angle with no better angle from the spectra (logged as a warning: their
        links are doubtful),
        ``df.attrs["session_correlation"]`` each session's correlation with the previous one
        (NaN for the first) and ``df.attrs["unmatched_sessions"]`` those below
        :data:`MIN_SESSION_CORRELATION` (or :data:`MIN_TURNED_SESSION_CORRELATION`; not linked).
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise ValueError("track_spines needs a sequence of images (one per session), got one 2-D image")
    images = list(images)
    if len(images) == 0:
        raise ValueError("track_spines needs at least one image")
    if not (np.isfinite(max_distance_um) and max_distance_um > 0):
        raise ValueError(f"max_distance_um must be > 0, got {max_distance_um!r}")
    sizes = _session_pixel_sizes(pixel_size_um, len(images))
    planes = []
    scale = np.ones(len(images))  # pixels of the common grid per pixel of the session's own image
    for i, im in enumerate(images):
        plane, stack, px_i = _check_image(im, sizes[i], what=f"image of session {i}")
        if abs(px_i / sizes[0] - 1.0) > _SAME_PIXEL_SIZE:
            # another zoom: resampled to the first session's pixels (detection and registration
            # work on one grid); its rows are given in its own pixels again at the end
            scale[i] = px_i / sizes[0]
            images[i] = _resampled(stack if stack is not None else plane, scale[i])
            plane = images[i].max(axis=0) if images[i].ndim == 3 else images[i]
        planes.append(plane)
    px = float(sizes[0])  # the common grid: the first session's pixels
    rows: list[pd.DataFrame] = []
    shifts = [np.zeros(2)]
    rotations = [0.0]
    correlations = [float("nan")]
    unmatched: list[int] = []  # sessions that do not show the previous one's dendrites
    at_edge: list[int] = []  # sessions turned to the end of the rotation search
    next_id = 0
    prev: pd.DataFrame | None = None  # spines present in the previous session (with track_id)
    max_px = max_distance_um / px
    # the score's noise term is the blob response in units of k_sigma noise sigmas
    k_sigma = float(params.get("k_sigma", inspect.signature(detect_spines).parameters["k_sigma"].default))
    agree = rescue_z * np.sqrt(2.0) / k_sigma  # largest difference of two measurements of one spine

    def consistent(strong_snr: np.ndarray, weak: pd.DataFrame, idx: np.ndarray) -> np.ndarray:
        """Weak candidates ``idx`` passing hysteresis, or agreeing with their partner's response."""
        w = weak.iloc[idx]
        return ((w["snr"].to_numpy(float) >= hysteresis * min_snr)
                | (strong_snr - w["snr_noise"].to_numpy(float) <= agree))
    rescue_px = 0.5 * max_px  # weak candidates must sit closer: chance noise maxima are common

    def start_tracks(spines: pd.DataFrame, session: int, status: str, common: bool) -> pd.DataFrame:
        """Every spine of ``spines`` starts a new track in ``session`` (added to the rows)."""
        nonlocal next_id
        new = spines.copy()
        new["track_id"] = np.arange(len(new)) + next_id
        next_id += len(new)
        new["status"] = status
        new["in_common_field"] = common
        rows.append(new.assign(session=session))
        return new
    for s, im in enumerate(images):
        tr = trace_dendrites(planes[s], px)  # (detect_spines would trace the same plane the same way)
        cand = detect_spines(im, px, return_all=True, min_snr=min_snr, min_blobness=min_blobness,
                             trace=tr, **params)
        is_strong = (cand["snr"] >= min_snr) & (cand["blob"] >= min_blobness)
        strong = cand[is_strong].reset_index(drop=True)
        weak = cand[~is_strong & (cand["snr"] >= min(hysteresis, rescue_z / k_sigma) * min_snr)
                    & (cand["blob"] >= hysteresis * min_blobness)].reset_index(drop=True)
        if prev is None:  # the baseline: every spine starts a track
            prev, prev_weak = start_tracks(strong, s, "stable", True), weak
            continue
        blank = [k for k in (s - 1, s) if np.ptp(planes[k]) == 0]
        if blank:
            # nothing to register (a failed acquisition or an empty export): not linked, as
            # for a session of other dendrites
            shifts.append(np.full(2, np.nan))
            rotations.append(float("nan"))
            correlations.append(float("nan"))
            unmatched.append(s)
            log.warning("session %d is blank (every pixel %g): sessions %d and %d are not linked and the interval "
                        "gives no turnover; check the acquisition and the export of that session", blank[0],
                        float(planes[blank[0]].flat[0]), s - 1, s)
            prev, prev_weak = start_tracks(strong, s, "gained", False), weak
            continue
        # previous spines in this session's pixels
        candidates, turn, at_search_end, spectral = _register(planes[s - 1], planes[s])
        if at_search_end:
            at_edge.append(s)
            log.warning("sessions %d and %d are turned by %g degrees or more, the end of the rotations "
                        "searched (ROTATION_EXTEND_DEG): their spines may be linked wrongly; turn session %d "
                        "by about that angle before tracking (e.g. Fiji Image > Transform > Rotate)",
                        s - 1, s, abs(turn), s)
        start, (pred, prev_weak_here, rot, t) = _best_alignment(
            candidates, strong[["y", "x"]].to_numpy(float), prev[["y", "x"]].to_numpy(float), max_px,
            extra=prev_weak[["y", "x"]].to_numpy(float))
        centre = (np.array(planes[s].shape, float) - 1.0) / 2.0
        shifts.append(centre @ start[0].T + start[1] - centre)  # (the registration's shift at the centre)
        rotations.append(float(np.degrees(np.arctan2(rot[1, 0], rot[0, 0]))))
        r_s = _session_correlation(planes[s - 1], planes[s], rot, t, tr.shaft_radius_px)
        correlations.append(r_s)
        # aligned from the spectra's angle (beyond the angles the image search tried)
        turned = spectral is not None and np.allclose(start[0], _rotation(spectral))
        r_min = MIN_TURNED_SESSION_CORRELATION if turned else MIN_SESSION_CORRELATION
        if not r_s >= r_min:
            # not the same dendrites (another position, a wrong file, or turned or moved beyond
            # what the registration finds): no links, so no turnover is made up; this
            # session's spines start new tracks outside the common field, the previous
            # ones leave it
            unmatched.append(s)
            log.warning("sessions %d and %d do not show the same dendrites (correlation %.2f of their registered "
                        "images%s, below %.2f): their spines are not linked and the interval gives no turnover; "
                        "check that both images are of the same position%s", s - 1, s, r_s,
                        f" turned by {rotations[-1]:.0f} degrees" if turned else "", r_min,
                        f" (if they are, turn session {s} by about that angle before tracking)" if turned else "")
            prev, prev_weak = start_tracks(strong, s, "gained", False), weak
            continue
        m = match_points(strong[["y", "x"]].to_numpy(float), pred, max_px)
        matched_cur = np.zeros(len(strong), bool)
        matched_prev = np.zeros(len(prev), bool)
        track = np.full(len(strong), -1, int)
        if len(m.pairs):
            matched_cur[m.pairs[:, 0]] = True
            matched_prev[m.pairs[:, 1]] = True
            track[m.pairs[:, 0]] = prev["track_id"].to_numpy()[m.pairs[:, 1]]
        # hysteresis: unmatched previous spines may match a weak candidate
        rescued = pd.DataFrame(columns=strong.columns)
        left = np.nonzero(~matched_prev)[0]
        if len(left) and len(weak):
            p2 = match_points(weak[["y", "x"]].to_numpy(float), pred[left], rescue_px).pairs
            if len(p2):
                p2 = p2[consistent(prev["snr_noise"].to_numpy(float)[left[p2[:, 1]]], weak, p2[:, 0])]
            if len(p2):
                rescued = weak.iloc[p2[:, 0]].copy()
                rescued["track_id"] = prev["track_id"].to_numpy()[left[p2[:, 1]]]
                rescued["status"] = "stable"
                matched_prev[left[p2[:, 1]]] = True
        # hysteresis for gains: an unmatched detection with a weak candidate at its place in
        # the previous session was there already (stable; its track starts here)
        was_there = np.zeros(len(strong), bool)
        left_cur = np.nonzero(~matched_cur)[0]
        if len(left_cur) and len(prev_weak_here):
            m3 = match_points(strong[["y", "x"]].to_numpy(float)[left_cur], prev_weak_here, rescue_px)
            p3 = m3.pairs
            if len(p3):
                p3 = p3[consistent(strong["snr_noise"].to_numpy(float)[left_cur[p3[:, 0]]], prev_weak, p3[:, 1])]
                was_there[left_cur[p3[:, 0]]] = True
        cur = strong.copy()
        cur["track_id"] = track
        cur["status"] = np.where(matched_cur | was_there, "stable", "gained")
        n_new = int((~matched_cur).sum())
        cur.loc[~matched_cur, "track_id"] = np.arange(n_new) + next_id
        next_id += n_new
        # inside the field of both sessions? (this session's spines mapped to the previous one)
        h0, w0 = planes[s - 1].shape
        back_yx = strong[["y", "x"]].to_numpy(float) @ rot.T + t
        cur["in_common_field"] = ((back_yx[:, 0] >= max_px) & (back_yx[:, 0] <= h0 - 1 - max_px)
                                  & (back_yx[:, 1] >= max_px) & (back_yx[:, 1] <= w0 - 1 - max_px))
        cur.loc[cur["status"] == "stable", "in_common_field"] = True
        if len(rescued):
            rescued["in_common_field"] = True
            cur = pd.concat([cur, rescued], ignore_index=True)
        # a previous spine predicted outside this image left the field: its track ends silently
        h1, w1 = planes[s].shape
        inside = ((pred[:, 0] >= max_px) & (pred[:, 0] <= h1 - 1 - max_px)
                  & (pred[:, 1] >= max_px) & (pred[:, 1] <= w1 - 1 - max_px))
        lost_idx = np.nonzero(~matched_prev & inside)[0]
        lost = pd.DataFrame({"y": pred[lost_idx, 0], "x": pred[lost_idx, 1],
                             "track_id": prev["track_id"].to_numpy()[lost_idx], "status": "lost",
                             "in_common_field": True})
        rows.append(cur.assign(session=s))
        if len(lost):
            rows.append(lost.assign(session=s))
        prev = cur
        prev_weak = weak
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=TRACK_COLUMNS)
    out = out.reindex(columns=TRACK_COLUMNS)
    out["track_id"] = out["track_id"].astype(int)
    out["session"] = out["session"].astype(int)
    out = out.sort_values(["session", "track_id"], ignore_index=True)
    if np.any(scale != 1.0):
        f = scale[out["session"].to_numpy(int)]
        out["y"] = out["y"].to_numpy(float) / f
        out["x"] = out["x"].to_numpy(float) / f
    out.attrs["shifts"] = [tuple(float(v) for v in sh) for sh in shifts]
    out.attrs["rotation_deg"] = rotations
    out.attrs["turned_beyond_search"] = at_edge
    out.attrs["session_correlation"] = correlations
    out.attrs["unmatched_sessions"] = unmatched
    return out
