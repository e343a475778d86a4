"""PSD95 neuropil fields: puncta, dendrite shafts, neuronal somata and vessels as voids, texture.

:func:`render_synapse_field` renders one PSD95 channel of layer 2/3 neuropil at high
magnification (63x oil, 0.1 um pixels) with its exact truth; the PSD95 channel of the
terminal fields (:mod:`analysis.sim.glia`) is drawn the same way.  Optics, camera and
conventions: :mod:`analysis.sim.optics`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from analysis.sim.optics import (
    _camera,
    CAMERA_GAIN,
    _check_non_negative,
    _check_positive,
    _check_shape,
    _greedy_min_distance,
    _Illumination,
    _lognormal,
    PSF_SIGMA_UM,
    _rasterise_polyline,
    _READ_E,
    _render_gaussians,
    _smooth_noise,
    _splat_blurred,
)



__all__ = ["SynapseField", "PUNCTA_COLUMNS", "render_synapse_field"]

log = logging.getLogger(__name__)

# --- PSD95 puncta ------------------------------------------------------------------------
_PUNCTA_TRUE_SIGMA_UM = (0.06, 0.12)
_PUNCTA_CV = 0.4
_PUNCTA_MIN_DIST_UM = 0.25
_PAIR_FRACTION = 0.25  # share of neuropil puncta that get a close neighbour (0.3-0.5 um)
_SPINES_PER_UM = 1.4  # dendrite-associated puncta per um of in-plane dendrite
_DENDRITE_UM_PER_UM2 = 0.08  # in-plane dendrite length per field area
_NEURON_AREA_FRACTION = 0.09  # neuronal somata (voids) per neuropil area
_VESSEL_PER_UM2 = 1.5e-4  # capillary segments per um^2


@dataclass(frozen=True)
class SynapseField:
    """A rendered PSD95 field and its ground truth.

    Attributes
    ----------
    image : ndarray of uint16, shape (Y, X)
        The camera image (ADU).
    puncta : DataFrame
        One row per in-focus punctum: ``y``, ``x`` (pixels, true sub-pixel centre),
        ``amplitude`` (peak photo-electrons above background), ``sigma_um`` (apparent
        Gaussian sigma after the PSF), ``engulfed`` (always False), ``cell`` (always 0).
    analysed_mask : ndarray of bool, shape (Y, X)
        False inside voids (neuronal somata, vessels) where there is no neuropil.
    analysed_area_um2 : float
        Area of ``analysed_mask``.
    snr : float
        Realised signal-to-noise ratio (definition in the module docstring).
    background_noise_sd : float
        Noise SD (ADU) at the mean background level of the analysed area.
    """

    image: np.ndarray
    puncta: pd.DataFrame
    analysed_mask: np.ndarray
    analysed_area_um2: float
    snr: float
    background_noise_sd: float


PUNCTA_COLUMNS = ["y", "x", "amplitude", "sigma_um", "engulfed", "cell"]


# =========================================================================================
# PSD95 channel
# =========================================================================================
def _neuron_voids(rng: np.random.Generator, shape: tuple[int, int], px: float) -> np.ndarray:
    """Boolean mask of neuronal somata (rounded, 10-15 um) and capillary segments."""
    h, w = shape
    void = np.zeros(shape, dtype=bool)
    margin = 4.0 / px
    ext_area_um2 = (h + 2 * margin) * (w + 2 * margin) * px**2
    n_somata = rng.poisson(ext_area_um2 * _NEURON_AREA_FRACTION / (np.pi * 6.2**2))
    placed: list[tuple[float, float, float]] = []
    for _ in range(n_somata):
        for _attempt in range(20):
            cy, cx = rng.uniform(-margin, h + margin), rng.uniform(-margin, w + margin)
            a = rng.uniform(5.0, 7.5) / px
            if all(np.hypot(cy - y0, cx - x0) > a + r0 + 2.0 / px for y0, x0, r0 in placed):
                break
        else:
            continue
        placed.append((cy, cx, a))
        b = a * rng.uniform(0.7, 0.95)
        phi, h2 = rng.uniform(0, np.pi), rng.uniform(0, 0.05)
        h3, p3 = rng.uniform(0, 0.1), rng.uniform(0, 2 * np.pi)
        reach = a * 1.2 + 2
        y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 2)
        x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1)[:, None] - cy
        xx = np.arange(x0, x1)[None, :] - cx
        th = np.arctan2(yy, xx)
        t = th - phi
        edge = a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)
        edge *= 1 + h2 * np.cos(2 * th + p3) + h3 * np.cos(3 * th - p3)  # pyramidal-ish outline
        void[y0:y1, x0:x1] |= np.hypot(yy, xx) <= edge
    for _ in range(rng.poisson(ext_area_um2 * _VESSEL_PER_UM2)):
        # a capillary: a tube along a gently bent path of three segments
        radius = rng.uniform(1.8, 3.0) / px
        seg_len = rng.uniform(4.0, 12.0) / px
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(np.r_[0.0, rng.normal(0, 0.35, 2)])
        steps = seg_len * np.column_stack([np.sin(heading), np.cos(heading)])
        path = np.vstack([[0.0, 0.0], np.cumsum(steps, axis=0)])
        path += np.array([rng.uniform(-margin, h + margin), rng.uniform(-margin, w + margin)]) - path.mean(0)
        lo = np.floor(path.min(0) - radius).astype(int) - 1
        hi = np.ceil(path.max(0) + radius).astype(int) + 2
        y0, y1 = max(0, lo[0]), min(h, hi[0])
        x0, x1 = max(0, lo[1]), min(w, hi[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
        for p_a, p_b in zip(path[:-1], path[1:]):
            d = p_b - p_a
            t = np.clip(((yy - p_a[0]) * d[0] + (xx - p_a[1]) * d[1]) / (d @ d), 0, 1)
            void[y0:y1, x0:x1] |= (yy - p_a[0] - t * d[0]) ** 2 + (xx - p_a[1] - t * d[1]) ** 2 <= radius**2
    return void


def _dendrites(rng: np.random.Generator, shape: tuple[int, int], px: float) -> list[np.ndarray]:
    """Smooth curved dendrite centre lines, as (n, 2) arrays in pixels."""
    h, w = shape
    area = h * w * px**2
    target = rng.poisson(area * _DENDRITE_UM_PER_UM2 / 10.0) * 10.0  # total length (um)
    step = 0.5  # um
    curves: list[np.ndarray] = []
    total = 0.0
    while total < max(target, 1e-9) or not curves:
        length = rng.uniform(0.5, 1.2) * np.hypot(h, w) * px
        n = max(int(length / step), 8)
        curvature = ndi.gaussian_filter1d(rng.standard_normal(n), sigma=12, mode="nearest")
        curvature *= 0.05 / max(float(curvature.std()), 1e-9)  # 1/um, radius ~20 um
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(curvature) * step
        pts = np.cumsum(np.stack([np.sin(heading), np.cos(heading)], axis=1) * step / px, axis=0)
        start = np.array([rng.uniform(0, h - 1), rng.uniform(0, w - 1)])
        pts += start - pts[n // 2]
        inside = (pts[:, 0] >= -0.5) & (pts[:, 0] < h - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] < w - 0.5)
        total += inside.sum() * step
        curves.append(pts)
        if target == 0:
            break
    return curves


def _dendrite_band(
    rng: np.random.Generator, shape: tuple[int, int], px: float, curves: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faint diffuse shaft signal; returns (band, dense points, dense headings)."""
    h, w = shape
    pad = int(np.ceil(2.5 / px))
    canvas = np.ones((h + 2 * pad, w + 2 * pad), dtype=bool)
    dense_all, head_all, width_all, amp_all = [], [], [], []
    for pts in curves:
        dense, src = _rasterise_polyline(pts, 0.5)
        seg = np.diff(pts, axis=0)
        heading = np.arctan2(seg[:, 0], seg[:, 1])[np.minimum(src, len(seg) - 1)]
        dense_all.append(dense)
        head_all.append(heading)
        width_all.append(np.full(len(dense), rng.uniform(0.35, 0.6) / px))
        amp_all.append(np.full(len(dense), rng.uniform(0.25, 0.5)))
    dense = np.vstack(dense_all)
    heading = np.concatenate(head_all)
    width = np.concatenate(width_all)
    amp = np.concatenate(amp_all)
    iy = np.rint(dense[:, 0]).astype(np.int64) + pad
    ix = np.rint(dense[:, 1]).astype(np.int64) + pad
    ok = (iy >= 0) & (iy < canvas.shape[0]) & (ix >= 0) & (ix < canvas.shape[1])
    band = np.zeros(shape)
    if ok.any():
        seed_id = np.full(canvas.shape, -1, dtype=np.int64)
        seed_id[iy[ok], ix[ok]] = np.flatnonzero(ok)
        canvas[iy[ok], ix[ok]] = False
        dist, (ny, nx) = ndi.distance_transform_edt(canvas, return_indices=True)
        sl = (slice(pad, pad + h), slice(pad, pad + w))
        nearest = seed_id[ny[sl], nx[sl]]
        band = amp[nearest] * np.exp(-0.5 * (dist[sl] / width[nearest]) ** 2)
    return band, dense, heading


def _place_puncta(
    rng: np.random.Generator,
    n: int,
    analysed: np.ndarray,
    dense: np.ndarray,
    heading: np.ndarray,
    px: float,
    reserved: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``n`` puncta centres in the analysed area (or fewer if it is too full).

    Candidates are, in this order of priority, spine heads beside the dendrites and then
    uniform neuropil positions (a quarter with a close partner 0.3-0.5 um away); a
    sequential inhibition keeps centres at least ``_PUNCTA_MIN_DIST_UM`` apart, also
    from the ``reserved`` (m, 2) positions (engulfed puncta), which are not returned.
    """
    h, w = analysed.shape
    if n == 0:
        return np.empty(0), np.empty(0)

    def in_mask(p: np.ndarray) -> np.ndarray:
        iy, ix = np.rint(p[:, 0]).astype(np.int64), np.rint(p[:, 1]).astype(np.int64)
        ok = (p[:, 0] >= -0.5) & (p[:, 0] < h - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] < w - 0.5)
        ok[ok] = analysed[iy[ok], ix[ok]]
        return ok

    # dendrite-associated: spine heads at 0.5-2 um from the shaft axis, a few on the shaft
    in_field = in_mask(dense)
    spine_len = in_field.sum() * 0.5 * px  # dense points are 0.5 px apart
    n_sp = min(rng.poisson(_SPINES_PER_UM * spine_len), n // 2)
    idx = rng.integers(0, len(dense), n_sp) if len(dense) else np.zeros(0, dtype=np.int64)
    side = rng.choice([-1.0, 1.0], n_sp)
    on_shaft = rng.random(n_sp) < 0.1
    shaft_off = rng.uniform(-0.3, 0.3, n_sp)
    off = np.where(on_shaft, shaft_off, side * np.clip(rng.normal(1.0, 0.35, n_sp), 0.5, 2.0))
    normal = np.stack([np.cos(heading[idx]), -np.sin(heading[idx])], axis=1)
    sp = dense[idx] + normal * (off / px)[:, None] + rng.normal(0, 0.1 / px, (n_sp, 2))
    sp = sp[in_mask(sp)]

    res = np.empty((0, 2)) if reserved is None else np.asarray(reserved, float).reshape(-1, 2)
    n_res = len(res)
    cand = [res, sp]
    have = 0
    need = n
    for _round in range(8):
        m = int(1.4 * need) + 20
        par = np.column_stack([rng.uniform(-0.5, h - 0.5, m), rng.uniform(-0.5, w - 0.5, m)])
        par = par[in_mask(par)]
        has_pair = rng.random(len(par)) < _PAIR_FRACTION
        ang = rng.uniform(0, 2 * np.pi, len(par))
        dist = rng.uniform(0.3, 0.5, len(par)) / px
        kid = par + np.column_stack([np.sin(ang), np.cos(ang)]) * dist[:, None]
        both = np.empty((2 * len(par), 2))
        both[0::2], both[1::2] = par, kid
        keep_kid = np.empty(2 * len(par), dtype=bool)
        keep_kid[0::2], keep_kid[1::2] = True, has_pair
        both = both[keep_kid]
        cand.append(both[in_mask(both)])
        pts = np.vstack(cand)
        keep = _greedy_min_distance(pts, _PUNCTA_MIN_DIST_UM / px)
        keep[:n_res] = False
        have = int(keep.sum())
        if have >= n:
            sel = np.flatnonzero(keep)[:n]
            return pts[sel, 0], pts[sel, 1]
        need = n - have
    log.warning("analysed area too small for %d puncta at the minimum distance; placed %d", n, have)
    sel = np.flatnonzero(keep)
    return pts[sel, 0], pts[sel, 1]


@dataclass(frozen=True)
class _Psd95:
    electrons: np.ndarray
    puncta: pd.DataFrame
    analysed: np.ndarray
    area_um2: float
    snr: float
    noise_sd_adu: float


def _psd95_channel(
    rng: np.random.Generator,
    shape: tuple[int, int],
    px: float,
    density_per_100um2: float,
    snr: float,
    *,
    extra_void: np.ndarray | None = None,
    engulfed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> _Psd95:
    """Expected photo-electrons of a PSD95 channel, its puncta table and analysed mask."""
    h, w = shape
    background_e = rng.uniform(20.0, 40.0)
    void = _neuron_voids(rng, shape, px)
    if extra_void is not None:
        void |= extra_void
    analysed = ~void
    area_um2 = float(analysed.sum()) * px**2
    neuropil = np.clip(1.0 - ndi.gaussian_filter(void.astype(float), 0.25 / px), 0, 1)

    curves = _dendrites(rng, shape, px)
    band, dense, heading = _dendrite_band(rng, shape, px, curves)

    n = int(rng.poisson(density_per_100um2 / 100.0 * area_um2))
    reserved = None if engulfed is None else np.column_stack(engulfed[:2])
    y, x = _place_puncta(rng, n, analysed, dense, heading, px, reserved)
    n = len(y)
    illum = _Illumination(rng, shape)
    noise_e = float(np.sqrt(background_e + _READ_E**2))
    scale = snr * noise_e / float(illum.image[analysed].mean()) if analysed.any() else snr * noise_e
    amp = scale * _lognormal(rng, n, _PUNCTA_CV) * illum(y, x)
    sigma_um = np.hypot(rng.uniform(*_PUNCTA_TRUE_SIGMA_UM, n), PSF_SIGMA_UM)
    cell = np.zeros(n, dtype=np.int64)
    is_eng = np.zeros(n, dtype=bool)
    if engulfed is not None and len(engulfed[0]):
        ey, ex, ecell = engulfed
        m = len(ey)
        y, x = np.concatenate([y, ey]), np.concatenate([x, ex])
        amp = np.concatenate([amp, 0.8 * scale * _lognormal(rng, m, _PUNCTA_CV) * illum(ey, ex)])
        sigma_um = np.concatenate([sigma_um, np.hypot(rng.uniform(*_PUNCTA_TRUE_SIGMA_UM, m), PSF_SIGMA_UM)])
        cell = np.concatenate([cell, np.asarray(ecell, dtype=np.int64)])
        is_eng = np.concatenate([is_eng, np.ones(m, dtype=bool)])

    # background: neuropil texture, dendrite shafts, out-of-focus haze; dim inside voids
    texture = 1.0 + 0.12 * _smooth_noise(rng, shape, 1.5 / px) + 0.08 * _smooth_noise(rng, shape, 6.0 / px)
    haze = np.zeros(shape)
    n_haze = rng.poisson(0.5 * density_per_100um2 / 100.0 * h * w * px**2)
    for sig_um, share in ((0.35, 0.6), (0.6, 0.4)):
        k = rng.binomial(n_haze, share) if n_haze else 0
        hy, hx = rng.uniform(-0.5, h - 0.5, k), rng.uniform(-0.5, w - 0.5, k)
        haze += _splat_blurred(shape, hy, hx, 0.25 * _lognormal(rng, k, 0.5), sig_um / px)
    floor = 0.2 * (1.0 + 0.15 * _smooth_noise(rng, shape, 1.5 / px))
    rel = neuropil * (texture + band + haze) + (1.0 - neuropil) * floor
    bg = illum.image * np.clip(rel, 0.02, None)
    bg *= background_e / float(bg[analysed].mean()) if analysed.any() else background_e / float(bg.mean())
    electrons = bg + _render_gaussians(shape, y, x, amp, sigma_um / px)

    mean_bg = float(bg[analysed].mean()) if analysed.any() else float(bg.mean())
    noise_real = float(np.sqrt(mean_bg + _READ_E**2))
    focus = ~is_eng
    realised = float(amp[focus].mean()) / noise_real if focus.any() else float(snr)
    puncta = pd.DataFrame(
        {"y": y, "x": x, "amplitude": amp, "sigma_um": sigma_um, "engulfed": is_eng, "cell": cell},
        columns=PUNCTA_COLUMNS,
    )
    return _Psd95(electrons, puncta, analysed, area_um2, realised, CAMERA_GAIN * noise_real)


# =========================================================================================
# public: synapse field
# =========================================================================================
def render_synapse_field(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (256, 256),
    pixel_size_um: float = 0.1,
    density_per_100um2: float = 40.0,
    snr: float = 8.0,
) -> SynapseField:
    """Render one PSD95 field of cortical neuropil with its true puncta.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random draw; the same generator state gives the same field.
    shape : (int, int)
        Image size (Y, X) in pixels.
    pixel_size_um : float
        Pixel size in um.
    density_per_100um2 : float
        Expected number of in-focus puncta per 100 um^2 of analysed (non-void) area; the
        count is Poisson with mean ``density * analysed area``.
    snr : float
        Target signal-to-noise ratio (see the module docstring; presets in
        :data:`SNR_LEVELS`).

    Returns
    -------
    SynapseField
        The uint16 image and the ground truth.

    Notes
    -----
    Puncta have a true sigma of 0.06-0.12 um convolved with a 0.1 um PSF (apparent sigma
    0.12-0.16 um), lognormal peak amplitudes (CV 0.4), are partly spine heads beside
    dendrite shafts and partly uniform in the neuropil, and keep centres at least
    0.25 um apart (a quarter of the neuropil puncta have a partner 0.3-0.5 um away).
    Out-of-focus haze (broad dim puncta of other planes) is background, not truth.

    Examples
    --------
    >>> import numpy as np
    >>> from analysis.sim.phantoms import render_synapse_field
    >>> fld = render_synapse_field(np.random.default_rng(0), snr=8.0)
    >>> fld.image.shape, fld.image.dtype
    ((256, 256), dtype('uint16'))
    >>> bool(abs(fld.snr - 8.0) < 0.8)
    True
    """
    shape = _check_shape(shape)
    _check_positive(pixel_size_um=pixel_size_um, snr=snr)
    _check_non_negative(density_per_100um2=density_per_100um2)
    ch = _psd95_channel(rng, shape, pixel_size_um, density_per_100um2, snr)
    image = _camera(rng, ch.electrons)
    log.debug("synapse field %s: %d puncta, snr %.2f", shape, len(ch.puncta), ch.snr)
    return SynapseField(image, ch.puncta, ch.analysed, ch.area_um2, ch.snr, ch.noise_sd_adu)
