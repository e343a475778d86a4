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

from analysis.measure.noise import _noise_at, _noise_model, robust_sd

__all__ = ["not_imaged_mask", "fill_not_imaged"]

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
