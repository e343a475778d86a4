"""Synapse engulfment: synaptic puncta inside CD68 lysosomes inside each microglia cell.

* :func:`segment_lysosomes` finds CD68 lysosomes with thresholds set by the image's own
  background and noise, each lysosome extending to half its own level (the half-height of
  its PSF-blurred edge, where the membrane of a sharp-edged vesicle lies).
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

from analysis.measure.microglia import _median_of_chunks
from analysis.measure.noise import MAD_TO_SD, noise_sd
from analysis.measure.hotpixels import repair_hot_pixels
from analysis.measure.outside import fill_not_imaged, not_imaged_mask
from analysis.measure.puncta import _label_sizes

__all__ = ["segment_lysosomes", "measure_engulfment", "engulfment_totals"]

log = logging.getLogger(__name__)



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


def _ellipsoid(radius_px: np.ndarray) -> np.ndarray:
    """Boolean footprint of the ellipsoid (ellipse in 2-D) with the given radius per axis."""
    half = np.floor(radius_px).astype(int)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g / max(r, 1e-9)) ** 2 for g, r in zip(grids, radius_px)) <= 1.0


def _gaussian_radius(sigma: float) -> int:
    """Half-width of :func:`scipy.ndimage.gaussian_filter`'s kernel (``truncate=4``)."""
    return int(4.0 * float(sigma) + 0.5)


def _corrected_strips(img: np.ndarray, sigma: np.ndarray, size: tuple[int, ...], bg_sigma: np.ndarray,
                      strip_px: int) -> np.ndarray:
    """``gaussian_filter(img, sigma) - gaussian_filter(grey_opening(that, size), bg_sigma)``
    of a YX image in float32, in strips of ``strip_px`` rows, each read with the rows the
    three filters reach together (rows beyond a cut are mirrored by the filters only within
    that reach of it): every pixel is computed from the same values in the same order as in
    the whole image, so the result is the same."""
    h = img.shape[0]
    margin = _gaussian_radius(sigma[0]) + 2 * (size[0] // 2) + _gaussian_radius(bg_sigma[0])
    out = np.empty(img.shape, np.float32)
    for r0 in range(0, h, strip_px):
        r1 = min(h, r0 + strip_px)
        a, b = max(0, r0 - margin), min(h, r1 + margin)
        smooth = ndi.gaussian_filter(np.asarray(img[a:b], dtype=np.float32), sigma)
        smooth -= ndi.gaussian_filter(ndi.grey_opening(smooth, size=size), bg_sigma)
        out[r0:r1] = smooth[r0 - a : r1 - a]
        del smooth
    return out


_IMMERKAER32 = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def _immerkaer_abs(img: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """``abs(ndi.correlate(img32, IMMERKAER)[1:-1, 1:-1])`` for the rows ``r0..r1`` of that
    inner part (image rows ``r0 + 1 .. r1 + 1``), from the image rows they reach."""
    block = np.asarray(img[r0 : r1 + 2], dtype=np.float32)
    c = ndi.correlate(block, _IMMERKAER32)[1:-1, 1:-1]
    return np.abs(c, out=c)


def _noise_sd_strips(img: np.ndarray, strip_px: int) -> float:
    """:func:`analysis.measure.noise.noise_sd` of a YX image (the same number), without its
    full-size copies: the absolute Immerkaer residual is computed in strips of rows (twice) and
    its median selected exactly from them
    (:func:`analysis.measure.microglia._median_of_chunks`, the float32 median as
    :func:`numpy.median` takes it)."""
    h, w = img.shape
    if min(h, w) < 3 or (img.dtype.kind == "f" and not np.isfinite(img).all()):
        return noise_sd(img)
    n_rows = h - 2

    def chunks():
        for r0 in range(0, n_rows, strip_px):
            yield _immerkaer_abs(img, r0, min(n_rows, r0 + strip_px))

    med = np.float32(_median_of_chunks(chunks, n_rows * (w - 2)))
    s = float(med * MAD_TO_SD / 6.0)
    return s if s > 0 else noise_sd(img)


def _label_small(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label(mask)`` in uint16 while the objects fit (the same labels in half the
    memory of its default int32 image), else int32."""
    try:
        return ndi.label(mask, output=np.uint16)
    except RuntimeError:  # more than 65,535 objects: "insufficient bit-depth"
        return ndi.label(mask)


def segment_lysosomes(
    image: np.ndarray,
    pixel_size_um: float,
    *,
    z_step_um: float | None = None,
    smoothing_um: float | None = None,
    detection_smoothing_um: float = 0.2,
    psf_sigma_um: float | tuple[float, ...] = 0.1,
    background_um: float = 3.0,
    threshold_sd: tuple[float, float] = (3.0, 7.0),
    min_area_um2: float = 0.1,
    edge_fraction: float | None = 0.5,
    strip_px: int = 512,
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
    3. Each lysosome is cut at ``edge_fraction`` (default half) of its *own* level: a pixel
       is kept when it reaches ``edge_fraction`` of the brightest detected value within the
       *edge reach* ``2 * sqrt(psf_sigma_um**2 + smoothing**2)``.  A lysosome is a vesicle
       with a sharp membrane; in the blurred image its edge is a step smoothed by the PSF
       and the smoothing, which crosses half its height at the true edge and has reached
       98 % of its plateau two blur SDs inside.  Intensity farther away belongs to another
       object, so a dim lysosome next to a bright one (a terrace in a maximum projection,
       with no peak of its own) is still cut at half of its own plateau, not of the bright
       one's.  Pixels whose level stays below the high threshold (the faint tail of an
       object, beyond its edge) are dropped.  The extent is read on the detection image: a Gaussian blur leaves the
       half-height point of a straight edge in place (curvature moves it inwards by about
       ``s**2 / 2R``, 0.03-0.06 um for R = 0.9-0.45 um), and the smoothing removes the
       pixel noise that would otherwise dent the edge and bias a single-pixel peak upwards.
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
    smoothing_um : float, optional
        Gaussian SD of the image the extent is read on (default: the detection image).
    detection_smoothing_um : float
        Gaussian SD for the detection (about the PSF width: averages the noise without
        merging lysosomes).
    psf_sigma_um : float or tuple of float
        Gaussian SD of the microscope's point spread function (lateral; 0.1 um is a
        high-NA confocal, FWHM 0.24 um); a tuple gives one value per axis (e.g. a larger
        axial SD for a ZYX stack).
    background_um : float
        Half-width of the background opening.
    threshold_sd : (float, float)
        Low and high hysteresis thresholds in noise SDs.
    min_area_um2 : float
        Smallest lysosome (area in 2-D).
    edge_fraction : float or None
        Extent of each lysosome as a fraction of its local level; None keeps the whole
        detection mask (its extent then grows with brightness and SNR).
    strip_px : int
        A YX image taller than this is filtered in strips of this many rows, each read with
        the rows its filters reach (the same numbers as the whole image's; less memory).

    Returns
    -------
    ndarray of bool
        Same shape as ``image``.

    Examples
    --------
    A vesicle of radius 0.7 um (3.5 pixels of 0.2 um: 37 pixel centres inside), blurred by a
    0.1 um PSF, on a noisy background: the mask is the vesicle.

    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:100, :100]
    >>> vesicle = np.clip(3.5 - np.hypot(yy - 50, xx - 50) + 0.5, 0, 1)
    >>> img = 100 + 50 * ndi.gaussian_filter(vesicle, 0.5)
    >>> mask = segment_lysosomes(img + rng.normal(0, 5, img.shape), 0.2)
    >>> int(ndi.label(mask)[1]), int(mask.sum())
    (1, 37)

    A smooth Gaussian blob has no sharp edge; its mask is wider than its half-maximum disk
    (about 1.4x the area for sigma 0.5 um, 2x for sigma 0.8 um): a slope pixel is compared
    with the brightest value within the edge reach, not with the distant peak.
    """
    img = np.asarray(image)
    if img.ndim != 2 or img.dtype not in (np.uint8, np.int8, np.uint16, np.int16, np.float32):
        img = np.asarray(img, dtype=np.float32)
    # (a 2-D image of small integers is read strip by strip as float32: the same values, no
    # full-size float32 copy)
    # the constant fill of registration or stitching (:mod:`analysis.measure.outside`): the
    # imaged edge's background and noise, and no lysosome there
    not_imaged = not_imaged_mask(img, pixel_size_um) if img.ndim == 2 else None
    if not_imaged is not None:
        img = fill_not_imaged(img, not_imaged, pixel_size_um)
    # a camera's hot pixels are not lysosomes (:mod:`analysis.measure.hotpixels`; the narrowest
    # structure: the smallest lysosome, a disk of min_area_um2, under the PSF)
    psf_lateral = float(np.atleast_1d(psf_sigma_um)[-1])
    narrowest = float(np.hypot(np.sqrt(min_area_um2 / np.pi) / 2.0, psf_lateral))
    img, _ = repair_hot_pixels(img, pixel_size_um, narrowest)
    scales = _scales(float(pixel_size_um), z_step_um, img.ndim)
    size = tuple(2 * np.maximum(np.round(background_um / scales).astype(int), 1) + 1)
    strips = img.ndim == 2 and img.shape[0] > strip_px

    def corrected(smoothing: float) -> tuple[np.ndarray, float]:
        sigma = np.maximum(smoothing / scales, 0.5)
        if strips:
            signal = _corrected_strips(img, sigma, size, background_um / scales / 2, strip_px)
            noise = _noise_sd_strips(img, strip_px)
        else:
            smooth = ndi.gaussian_filter(img, sigma, output=np.float32)
            signal = smooth  # (in place: the smoothed image is not needed afterwards)
            signal -= ndi.gaussian_filter(ndi.grey_opening(smooth, size=size), background_um / scales / 2)
            noise = None
        # the opening sits below the noise (a minimum filter first): centre the background
        sub = signal.ravel()[:: max(1, signal.size // 400_000)]
        signal -= np.median(sub)
        # noise: white pixel noise through the Gaussian, or the robust SD of the corrected
        # image when that is larger (texture)
        sd_signal = float(MAD_TO_SD * np.median(np.abs(sub - np.median(sub))))
        if noise is None:
            noise = noise_sd(img)
        return signal, max(noise * _smoothing_gain(sigma), sd_signal) or 1.0

    low, high = threshold_sd
    detect, sd = corrected(detection_smoothing_um)
    # (= skimage.filters.apply_hysteresis_threshold(detect, low * sd, high * sd), the connected
    # components (cross connectivity) above the low threshold that hold a pixel above the
    # high one, with its comparisons (the low threshold clipped to the high one in double),
    # without its full-size label image)
    mask = ndi.binary_propagation(detect > high * sd, mask=detect > np.clip(low * sd, None, high * sd))
    if not_imaged is not None:
        mask &= ~not_imaged
    if not mask.any():
        return mask
    if edge_fraction is not None:
        if smoothing_um is None or smoothing_um == detection_smoothing_um:
            smoothing_um, signal = detection_smoothing_um, detect
        else:
            signal, sd = corrected(smoothing_um)
        # blur SD per axis (PSF and smoothing, the latter at least half a pixel as applied)
        psf = np.broadcast_to(np.asarray(psf_sigma_um, float), scales.shape)
        blur = np.hypot(psf, np.maximum(smoothing_um, 0.5 * scales))
        footprint = _ellipsoid(2.0 * blur / scales)
        # brightest detected value within the edge reach: the level of the lysosome the
        # pixel belongs to (objects not detected do not raise it); a level below the high
        # threshold is no lysosome of its own: the pixel lies on the faint tail of a brighter
        # object (or of noise) beyond that object's edge.  In strips of rows, each read with
        # the rows the footprint reaches (a maximum of the same pixels: the same levels).
        reach = footprint.shape[0] // 2
        step = strip_px if img.ndim == 2 else mask.shape[0]
        cut = np.empty(mask.shape, bool)
        for r0 in range(0, mask.shape[0], step):
            r1 = min(mask.shape[0], r0 + step)
            a, b = (max(0, r0 - reach), min(mask.shape[0], r1 + reach)) if img.ndim == 2 else (r0, r1)
            level = ndi.maximum_filter(np.where(mask[a:b], signal[a:b], -np.inf), footprint=footprint)[r0 - a : r1 - a]
            part = signal[r0:r1] >= edge_fraction * level
            part &= level >= high * sd
            part &= mask[r0:r1]
            cut[r0:r1] = part
            del level, part
        mask = cut
        del cut
    # the smoothed images are not needed any more: free them before the label image is made
    detect = signal = None
    lab, nobj = _label_small(mask)
    if nobj:
        sizes = _label_sizes(lab)
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
    cell_size = _label_sizes(flat, n + 1)
    cd68 = _label_sizes(flat[lys.ravel()], n + 1)
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
