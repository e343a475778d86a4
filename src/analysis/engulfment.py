"""Synapse engulfment: synaptic puncta inside CD68 lysosomes inside each microglia cell.

* :func:`segment_lysosomes` finds CD68 lysosomes with thresholds set by the image's own
  background and noise, each lysosome extending to half its own peak (its full width at half
  maximum, the usual extent of a diffraction-blurred object).
* :func:`measure_engulfment` counts, per cell, the puncta whose centre lies in CD68 inside that
  cell, and the CD68 area (or volume) inside it.
* :func:`engulfment_totals` sums a per-cell table into per-image figures.

Images, masks and labels may be 2-D (YX, e.g. maximum projections) or 3-D (ZYX).  In a
maximum projection, puncta lying above or below a lysosome in the neuropil project onto it and
are counted as engulfed; 3-D data avoid that.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.filters import apply_hysteresis_threshold

from analysis.microglia import _dominant_maxima, noise_sd

__all__ = ["segment_lysosomes", "measure_engulfment", "engulfment_totals"]

log = logging.getLogger(__name__)

_MAD_TO_SD = 1.4826


def _scales(pixel_size_um: float, z_step_um: float | None, ndim: int) -> np.ndarray:
    """Voxel size per axis (um)."""
    if ndim == 2:
        return np.array([pixel_size_um, pixel_size_um], float)
    if ndim == 3:
        return np.array([z_step_um if z_step_um else pixel_size_um, pixel_size_um, pixel_size_um], float)
    raise ValueError(f"expected a 2-D (YX) or 3-D (ZYX) array, got {ndim} dimensions")


def _smoothing_gain(sigma: np.ndarray) -> float:
    """Factor by which a Gaussian filter of ``sigma`` (pixels per axis) reduces white noise."""
    size = [2 * int(np.ceil(4 * s)) + 1 for s in sigma]
    impulse = np.zeros(size, np.float64)
    impulse[tuple(k // 2 for k in size)] = 1.0
    return float(np.sqrt((ndi.gaussian_filter(impulse, sigma, mode="constant") ** 2).sum()))


def segment_lysosomes(
    image: np.ndarray,
    pixel_size_um: float,
    *,
    z_step_um: float | None = None,
    smoothing_um: float = 0.1,
    detection_smoothing_um: float = 0.2,
    background_um: float = 3.0,
    threshold_sd: tuple[float, float] = (3.0, 7.0),
    min_area_um2: float = 0.1,
    edge_fraction: float | None = 0.5,
) -> np.ndarray:
    """CD68 (lysosome) mask with thresholds from the image's own background and noise.

    1. The image is smoothed (Gaussian, ``detection_smoothing_um``, at least half a pixel)
       and a background is removed: a grey opening with a box of half-width
       ``background_um`` (lysosome clusters narrower than the box are kept), blurred at
       half that scale.
    2. A hysteresis threshold at ``threshold_sd`` (low, high) times the noise SD of the
       smoothed image (from the pixel noise of the raw image, Immerkaer's estimator, scaled by
       the smoothing; or the robust SD of the corrected image when that is larger, e.g.
       with a textured background) finds lysosomes.
    3. Touching lysosomes are separated by a watershed from their intensity peaks (peaks
       that rise at least the low threshold above the saddle to a brighter neighbour), and
       each is cut at ``edge_fraction`` of its own peak: by default half (the full width at
       half maximum, where the edge of a blurred object lies).  Extents are measured on the
       image smoothed only by ``smoothing_um`` (smoothing widens objects); each peak height
       is read from that image at the position of the basin's maximum in the detection image
       (the maximum of the lightly smoothed image itself is biased upwards by its noise).
    4. Objects smaller than ``min_area_um2`` (in 3-D: the volume of a sphere with that
       cross-section) are dropped.

    Parameters
    ----------
    image : ndarray
        CD68 channel, YX or ZYX.
    pixel_size_um : float
        Lateral pixel size in um.
    z_step_um : float, optional
        Axial step of a ZYX stack (default: the lateral pixel size).
    smoothing_um, detection_smoothing_um : float
        Gaussian SDs for the extent and for the detection (see above).
    background_um : float
        Half-width of the background opening.
    threshold_sd : (float, float)
        Low and high hysteresis thresholds in noise SDs.
    min_area_um2 : float
        Smallest lysosome (area in 2-D).
    edge_fraction : float or None
        Extent of each lysosome as a fraction of its peak; None keeps the whole detection
        mask (its extent then grows with brightness and SNR).

    Returns
    -------
    ndarray of bool
        Same shape as ``image``.

    Examples
    --------
    One Gaussian lysosome (sigma 0.5 um) on a noisy background: the mask is its half-maximum
    disk (radius 1.18 sigma = 0.59 um, 1.1 um^2, ~27 pixels of 0.2 um).

    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:100, :100]
    >>> img = 100 + 200 * np.exp(-((yy - 50) ** 2 + (xx - 50) ** 2) / (2 * 2.5**2))
    >>> mask = segment_lysosomes(img + rng.normal(0, 5, img.shape), 0.2)
    >>> int(ndi.label(mask)[1]), bool(20 < mask.sum() < 40)
    (1, True)
    """
    img = np.asarray(image, dtype=np.float32)
    scales = _scales(float(pixel_size_um), z_step_um, img.ndim)
    size = tuple(2 * np.maximum(np.round(background_um / scales).astype(int), 1) + 1)

    def corrected(smoothing: float) -> tuple[np.ndarray, float]:
        sigma = np.maximum(smoothing / scales, 0.5)
        smooth = ndi.gaussian_filter(img, sigma)
        signal = smooth - ndi.gaussian_filter(ndi.grey_opening(smooth, size=size), background_um / scales / 2)
        # the opening sits below the noise (a minimum filter first): centre the background
        sub = signal.ravel()[:: max(1, signal.size // 400_000)]
        signal -= np.median(sub)
        # noise: white pixel noise through the Gaussian, or the robust SD of the corrected
        # image when that is larger (texture)
        sd_signal = float(_MAD_TO_SD * np.median(np.abs(sub - np.median(sub))))
        return signal, max(noise_sd(img) * _smoothing_gain(sigma), sd_signal) or 1.0

    low, high = threshold_sd
    detect, sd = corrected(detection_smoothing_um)
    mask = apply_hysteresis_threshold(detect, low * sd, high * sd)
    if not mask.any():
        return mask
    if edge_fraction is not None:
        # separate touching lysosomes at their peaks (those rising at least the low threshold
        # above the saddle to a brighter neighbour); each extends to edge_fraction of its own
        # peak, measured on the lightly smoothed image (more smoothing would widen it)
        signal, sd_e = corrected(smoothing_um)
        _, basins = _dominant_maxima(signal, mask, low * sd_e)
        n = int(basins.max())
        peak_val = np.zeros(n + 1, np.float32)
        if n:
            # the height of each peak is read from the lightly smoothed image at the position
            # of the basin's maximum in the detection image: the maximum of the noisy, lightly
            # smoothed image itself is biased upwards by its noise (more so on the plateau of
            # a large lysosome), which would shrink every extent
            where = ndi.maximum_position(detect, basins, np.arange(1, n + 1))
            peak_val[1:] = signal[tuple(np.array(where).T)]
        mask &= signal >= edge_fraction * peak_val[basins]
    lab, nobj = ndi.label(mask)
    if nobj:
        sizes = np.bincount(lab.ravel())
        voxel = float(np.prod(scales))
        if img.ndim == 2:
            min_size = min_area_um2 / voxel
        else:  # volume of a sphere whose cross-section has area min_area_um2
            min_size = 4.0 / 3.0 * np.pi * (min_area_um2 / np.pi) ** 1.5 / voxel
        keep = sizes >= max(min_size, 1)
        keep[0] = False
        mask = keep[lab]
    log.debug("lysosome mask: %d objects, %.1f %% of the field", nobj, 100 * mask.mean())
    return mask


def measure_engulfment(
    labels: np.ndarray,
    lysosome_mask: np.ndarray,
    puncta: pd.DataFrame,
    pixel_size_um: float,
    *,
    z_step_um: float | None = None,
) -> pd.DataFrame:
    """Per cell: CD68 inside the cell and the puncta whose centre lies in that CD68.

    Parameters
    ----------
    labels : ndarray of int
        Microglia labels, YX (or ZYX).
    lysosome_mask : ndarray of bool
        CD68 mask, same shape as ``labels``.
    puncta : DataFrame
        Puncta centres in pixels: columns ``y``, ``x`` (and ``z`` for 3-D labels).
    pixel_size_um : float
        Lateral pixel size in um.
    z_step_um : float, optional
        Axial step for 3-D data (default: the lateral pixel size).

    Returns
    -------
    DataFrame
        One row per cell present in ``labels``: ``label``, ``cd68_area_um2`` (in 3-D:
        ``cd68_volume_um3``), ``cd68_area_fraction`` (CD68 inside the cell / cell area, or
        volume), ``engulfed_puncta``.

    Examples
    --------
    >>> lab = np.zeros((20, 20), int); lab[2:10, 2:10] = 1; lab[12:18, 12:18] = 2
    >>> lys = np.zeros(lab.shape, bool); lys[4:6, 4:6] = True
    >>> pts = pd.DataFrame({"y": [4.2, 8.0, 15.0], "x": [5.1, 8.0, 15.0]})
    >>> measure_engulfment(lab, lys, pts, 0.5)
       label  cd68_area_um2  cd68_area_fraction  engulfed_puncta
    0      1            1.0              0.0625                1
    1      2            0.0              0.0000                0
    """
    labels = np.asarray(labels)
    lys = np.asarray(lysosome_mask, bool)
    if labels.shape != lys.shape:
        raise ValueError(f"labels {labels.shape} and lysosome_mask {lys.shape} differ in shape")
    scales = _scales(float(pixel_size_um), z_step_um, labels.ndim)
    unit = float(np.prod(scales))
    n = int(labels.max()) if labels.size else 0
    flat = labels.ravel()
    cell_size = np.bincount(flat, minlength=n + 1)
    cd68 = np.bincount(flat[lys.ravel()], minlength=n + 1)
    engulfed = np.zeros(n + 1, int)
    axes = ["z", "y", "x"][-labels.ndim:]
    if len(puncta):
        missing = [a for a in axes if a not in puncta]
        if missing:
            raise ValueError(f"puncta table lacks column(s) {missing} for {labels.ndim}-D labels")
        idx = tuple(
            np.clip(np.rint(puncta[a].to_numpy(float)).astype(int), 0, labels.shape[k] - 1)
            for k, a in enumerate(axes)
        )
        inside = lys[idx]
        engulfed = np.bincount(labels[idx][inside], minlength=n + 1)
    ids = np.arange(1, n + 1)
    present = cell_size[1:] > 0
    size_col = "cd68_area_um2" if labels.ndim == 2 else "cd68_volume_um3"
    out = pd.DataFrame(
        {
            "label": ids,
            size_col: cd68[1:] * unit,
            "cd68_area_fraction": cd68[1:] / np.maximum(cell_size[1:], 1),
            "engulfed_puncta": engulfed[1:n + 1],
        }
    )
    return out[present].reset_index(drop=True)


def engulfment_totals(per_cell: pd.DataFrame) -> dict[str, float]:
    """Per-image totals of a :func:`measure_engulfment` table.

    Returns
    -------
    dict
        ``engulfed_puncta_total``, ``engulfed_per_cell`` (mean over cells),
        ``cd68_area_um2_total`` (or ``cd68_volume_um3_total``) and ``mean_cd68_area_fraction``
        (mean over cells); NaN means with no cells.

    Examples
    --------
    >>> t = pd.DataFrame({"label": [1, 2], "cd68_area_um2": [2.0, 1.0],
    ...                   "cd68_area_fraction": [0.1, 0.05], "engulfed_puncta": [3, 1]})
    >>> engulfment_totals(t)["engulfed_per_cell"]
    2.0
    """
    n = len(per_cell)
    size_col = "cd68_volume_um3" if "cd68_volume_um3" in per_cell else "cd68_area_um2"
    total = int(per_cell["engulfed_puncta"].sum()) if n else 0
    return {
        "engulfed_puncta_total": total,
        "engulfed_per_cell": total / n if n else np.nan,
        f"{size_col}_total": float(per_cell[size_col].sum()) if n else 0.0,
        "mean_cd68_area_fraction": float(per_cell["cd68_area_fraction"].mean()) if n else np.nan,
    }
