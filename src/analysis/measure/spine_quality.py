"""Quality of one two-photon spine image: measured SNR and the detector's recall by spike-in.

The spine readout's image rows carry the same quality columns as the puncta readout's
(DESIGN.md, "Contracts"): ``measured_snr`` and ``spike_in_recall`` with its interval, so a
density measured on a dim or noisy session can be told from one measured on a good one.

* :func:`spine_brightness` -- the brightness of the image's spine heads, with the faint ones
  the detector missed restored (:func:`analysis.measure.quality.fit_brightness` on the
  detection scores), and the image's noise at its background;
* :func:`spine_image_snr` -- mean head amplitude of that population over the pixel-noise SD
  at the background: the definition of the simulator's SNR (:mod:`analysis.sim.spines`: photons
  of a reference head over the background's noise), so a measured value can be set beside the
  validated levels;
* :func:`spine_spike_in_recall` -- synthetic heads (the image's own head size, brightness
  distribution and shot noise) added beside the traced shafts at known places, at the
  distances from the centreline where this image's heads lie, and detected again with the
  same parameters: the share found estimates the recall on this image, crowding included (a
  spike may land next to a spine the detector missed, as real heads do).

What it is good for (``benchmarks/RESULTS.md``, session 22): on 240 simulated images with
known spines the mean spike-in recall per SNR level is within 0.02 of the true recall at high
and default SNR and 0.10 above it at low SNR; one image's value scatters by 0.06-0.20 around
its true recall and does not follow that image's own deviation from its level's mean (rank
correlation ~0 within a level), so it tells a dim or noisy session from a good one, and a
group imaged worse than another, but is no per-image correction of the density.  On real
frames it reads above the recall of the hand marks (0.71 against 0.57 on 94 frames): the real
misses there are heads the detector does not separate or recognise, not faint ones, and round
spikes next to the shaft do not measure that.

All functions are pure; every random draw takes a seed.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from analysis.measure import spines as sp
from analysis.measure.matching import match_points
from analysis.measure.quality import fit_brightness, spaced_points, wilson_interval

__all__ = ["background_clipped", "spine_brightness", "spine_image_snr", "spine_spike_in_recall", "spine_quality"]

log = logging.getLogger(__name__)

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _detect_defaults(detect_params: dict[str, Any] | None) -> tuple[float, float]:
    """``k_sigma`` and ``min_snr`` the detector ran with (its defaults unless overridden)."""
    import inspect

    sig = inspect.signature(sp.detect_spines).parameters
    p = dict(detect_params or {})
    return float(p.get("k_sigma", sig["k_sigma"].default)), float(p.get("min_snr", sig["min_snr"].default))


def background_clipped(image: np.ndarray, trace: sp.DendriteTrace) -> bool:
    """Is the image's background clipped at its floor (the offset set above it)?

    The detector's test (:func:`analysis.measure.spines._clipped_background`: at least half
    of the background beyond one shaft radius of the traced dendrites at the image's lowest
    value, solid blocks of padding left out), on the image or its maximum projection.  The
    detector copes with such a background (it takes its noise from the shafts); the quality
    columns do not: on three simulated sessions clipped at their background's 90th percentile
    the measured SNR read 0.33-0.58 of the unclipped image's and the spike-in recall 0.19-0.30 above the true
    recall (``benchmarks/RESULTS.md``, sessions 30-31), so such an image is outside the
    validated range.

    Examples
    --------
    >>> yy, xx = np.mgrid[:120, :200].astype(float)
    >>> img = 100 * np.exp(-(yy - 60) ** 2 / (2 * 3.0 ** 2)) + np.random.default_rng(0).normal(10, 2, yy.shape)
    >>> tr = sp.trace_dendrites(img, 0.1)
    >>> background_clipped(img, tr), background_clipped(np.maximum(img - 12, 0), tr)
    (False, True)
    """
    img = np.asarray(image, dtype=np.float32)
    plane = img.max(axis=0) if img.ndim == 3 else img
    return sp._clipped_background(plane <= plane.min(), _away_from_dendrites(trace))


def _away_from_dendrites(trace: sp.DendriteTrace) -> np.ndarray:
    """Pixels beyond one shaft radius of the traced foreground (the detector's background)."""
    return ~ndi.binary_dilation(trace.foreground, iterations=max(1, int(round(trace.shaft_radius_px))))


def _background_mask(plane: np.ndarray, trace: sp.DendriteTrace) -> np.ndarray:
    """Background pixels: beyond one shaft radius of the traced foreground, off the image's
    lowest value (clipped or padded)."""
    return _away_from_dendrites(trace) & (plane > plane.min())


def _local_background(plane: np.ndarray, trace: sp.DendriteTrace, back: np.ndarray) -> np.ndarray:
    """Mean of the background pixels ``back`` around each pixel (Gaussian weights over 8 shaft radii).

    A mean, not the low percentile the detector's flattening uses: that one sits below the
    background by a multiple of the noise, which would count as head amplitude."""
    if back.sum() < 100:
        return np.asarray(trace.background, np.float64)
    s = 8.0 * trace.shaft_radius_px
    w = ndi.gaussian_filter(back.astype(np.float64), s)
    level = ndi.gaussian_filter(np.where(back, plane, 0.0).astype(np.float64), s)
    fallback = float(np.mean(plane[back]))
    return np.where(w > 1e-3, level / np.maximum(w, 1e-12), fallback)


def _background_noise_sd(plane: np.ndarray, trace: sp.DendriteTrace, back: np.ndarray) -> float:
    """Pixel noise SD of the background: the SD of differences of neighbouring pixels
    (over sqrt 2) within the background pixels ``back`` (:func:`_background_mask`); the
    trace's noise sigma when too few such pixels."""
    pair_x = back[:, :-1] & back[:, 1:]
    pair_y = back[:-1, :] & back[1:, :]
    diff = np.concatenate([(plane[:, :-1] - plane[:, 1:])[pair_x], (plane[:-1, :] - plane[1:, :])[pair_y]])
    if diff.size < 200:
        return float(trace.noise_sigma)
    diff = diff.astype(np.float64)
    # the SD of the differences, not a MAD: low photon counts and integer data make the
    # difference distribution discrete and peaked, where a MAD reads low; outliers (a missed
    # bright speck) beyond 6 robust SDs, or 6 grey levels, are left out
    lim = 6.0 * max(sp._robust_sigma(diff), 1.0)
    core = diff[np.abs(diff - np.median(diff)) <= lim]
    return float(np.std(core) / math.sqrt(2.0))


def _shot_noise_slope(plane: np.ndarray) -> float:
    """Slope ``b`` of the image's pixel variance on its mean (``a + b * mean``; 0 without a fit):
    the variance of the detector's noise model is that of a high-pass residual
    (:func:`analysis.measure.spines._noise_model`), converted here to pixel variance."""
    fit = sp._noise_model(plane)
    if fit is None:
        return 0.0
    delta = np.zeros((15, 15))
    delta[7, 7] = 1.0
    hp_var = float(((delta - ndi.gaussian_filter(delta, 1.0)) ** 2).sum())  # variance kept by the high-pass
    return float(fit[1]) / hp_var


def _beside(spines: pd.DataFrame, trace: sp.DendriteTrace, d_cent: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Which heads lie beside a shaft (not found on its centreline), and every head's distance
    from the nearest centreline (pixels; ``d_cent``, the distance transform of the centrelines,
    is computed when not given)."""
    if d_cent is None:
        d_cent = ndi.distance_transform_edt(~trace.skeleton)
    h, w = d_cent.shape
    iy = np.clip(np.rint(spines["y"].to_numpy(float)).astype(int), 0, h - 1)
    ix = np.clip(np.rint(spines["x"].to_numpy(float)).astype(int), 0, w - 1)
    d = d_cent[iy, ix].astype(float)
    return d > 0.5 * trace.shaft_radius_px, d


def spine_brightness(image: np.ndarray, pixel_size_um: float, spines: pd.DataFrame, trace: sp.DendriteTrace, *,
                     detect_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Brightness of the image's spine heads, corrected for the faint heads not detected.

    A head's amplitude is the image minus its local background (the mean of the pixels away
    from the traced foreground, over 8 shaft radii) at the head centre, smoothed at the median
    head sigma (and corrected for the half of the peak that smoothing takes from a Gaussian
    head of that size).  Its detection score ``snr`` (1 at the
    detector's cut) times ``k_sigma`` is its response in noise sigmas when the noise test is the
    one that binds, so the detected heads are a sample of a population cut at ``k_sigma *
    min_snr`` noise sigmas, measured with unit error: the model of
    :func:`analysis.measure.quality.fit_brightness`, which fits a lognormal to it with the
    undetected faint end restored.  Amplitude per noise sigma of the score converts back.
    Only heads beside the shaft (not the ones found on it, whose amplitude includes the shaft)
    and at least one head radius beyond the shaft's edge (their amplitude has little of the
    shaft's light) enter, unless fewer than 3 do.

    Parameters
    ----------
    image : ndarray
        YX image (or ZYX stack: its maximum projection, as the detector sees it).
    pixel_size_um : float
        Pixel size.
    spines : DataFrame
        :func:`analysis.measure.spines.detect_spines` output for this image.
    trace : DendriteTrace
        The trace the spines were detected with.
    detect_params : dict, optional
        The detector's parameters (for ``k_sigma``, ``min_snr``).

    Returns
    -------
    dict
        :func:`analysis.measure.quality.fit_brightness` (``mu``, ``sigma`` of the log score in
        noise sigmas, ``mean_snr``, ``model_recall``, ``n``, ``method``) with ``peak_per_sd``
        the head amplitude (image units) per noise sigma of the score, ``head_sigma_px`` (the
        median head FWHM over 2.355) and ``background_noise_sd`` (pixel noise SD of the
        background away from the dendrites, from differences of neighbouring pixels).
    """
    img = sp._registered(np.asarray(image, dtype=np.float32), pixel_size_um)  # as the detector sees it
    plane = img.max(axis=0) if img.ndim == 3 else img
    k_sigma, min_snr = _detect_defaults(detect_params)
    nan = float("nan")
    back = _background_mask(plane, trace)
    noise_bg = _background_noise_sd(plane, trace, back)
    out: dict[str, Any] = {"mu": nan, "sigma": nan, "mean_snr": nan, "peak_per_sd": nan, "model_recall": nan,
                           "n": 0, "method": "none", "head_sigma_px": nan, "background_noise_sd": float(noise_bg)}
    if len(spines) == 0 or not trace.skeleton.any():
        return out
    beside, _ = _beside(spines, trace)
    side = spines[beside]
    if len(side) == 0:
        return out
    px = float(pixel_size_um)
    head_fwhm_px = side["head_diameter_um"].to_numpy(float) / px
    out["head_sigma_px"] = float(np.nanmedian(head_fwhm_px)) / _FWHM_PER_SIGMA
    # smoothed at the head's own size (a matched filter: the height of a noise maximum picked
    # by the detector is biased up by the pixel noise, much less so after this smoothing); the
    # peak of a Gaussian head of sigma s_h smoothed at s loses the factor s_h^2 / (s_h^2 + s^2),
    # restored here
    s_h = float(out["head_sigma_px"])
    sm = ndi.gaussian_filter(plane - _local_background(plane, trace, back), s_h) * 2.0
    iy = np.clip(np.rint(side["y"].to_numpy(float)).astype(int), 0, plane.shape[0] - 1)
    ix = np.clip(np.rint(side["x"].to_numpy(float)).astype(int), 0, plane.shape[1] - 1)
    amp = sm[iy, ix].astype(float)
    clear = side["distance_to_shaft_um"].to_numpy(float) / px >= 0.5 * head_fwhm_px
    use = clear if clear.sum() >= 3 else np.ones(len(side), bool)
    table = pd.DataFrame({"intensity": amp[use], "snr": k_sigma * side["snr"].to_numpy(float)[use],
                          "noise_sd": 1.0})
    out.update(fit_brightness(table, threshold_sd=k_sigma * min_snr))
    return out


def spine_image_snr(brightness: dict[str, Any]) -> float:
    """SNR of a spine image: the mean head amplitude of the population over the background noise SD.

    ``mean_snr * peak_per_sd / background_noise_sd`` of :func:`spine_brightness`: the heads too
    faint to be detected included, as the simulator's SNR (photo-electrons of a reference head
    over the noise at the background) is a property of the tissue and microscope, not of what
    was found.  NaN without heads.
    """
    val = brightness["mean_snr"] * brightness["peak_per_sd"] / brightness["background_noise_sd"]
    return float(val) if np.isfinite(val) and val > 0 else float("nan")


def _spike_places(rng: np.random.Generator, trace: sp.DendriteTrace, angle: np.ndarray, nearest: np.ndarray,
                  carriers: np.ndarray, offsets_px: np.ndarray, existing: np.ndarray, n: int, clearance_px: float,
                  spacing_px: float, margin_px: float) -> np.ndarray:
    """Up to ``n`` places beside the centrelines of the ``carriers`` dendrites (ids).

    A random centreline pixel of a carrier, moved perpendicular to the local centreline by an
    offset drawn from ``offsets_px`` (the distances of the image's own heads from their
    centreline) to a random side; kept when it is off every shaft core, nearest to that
    dendrite's centreline, ``margin_px`` inside the image, ``clearance_px`` from every detected
    spine and ``spacing_px`` from the other places.  ``angle``: the local centreline direction
    (:func:`analysis.measure.spines._centreline_angle`); ``nearest``: the dendrite id of the
    centreline pixel nearest to each pixel.
    """
    cl = trace.centreline
    cl = cl[np.isin(cl["dendrite_id"].to_numpy(), carriers)]
    if len(cl) == 0 or len(offsets_px) == 0 or n <= 0:
        return np.zeros((0, 2))
    m = 12 * n + 64
    pick = rng.integers(0, len(cl), m)
    cy, cx = cl["y"].to_numpy()[pick], cl["x"].to_numpy()[pick]
    dend = cl["dendrite_id"].to_numpy()[pick]
    theta = angle[cy, cx]
    d = offsets_px[rng.integers(0, len(offsets_px), m)] * rng.choice([-1.0, 1.0], m)
    # the normal of a centreline at angle theta (x along cos, y along sin)
    py, pxx = cy + d * np.cos(theta), cx - d * np.sin(theta)
    h, w = trace.labels.shape
    ok = (py >= margin_px) & (py < h - margin_px) & (pxx >= margin_px) & (pxx < w - margin_px)
    py, pxx, dend = py[ok], pxx[ok], dend[ok]
    iy, ix = np.rint(py).astype(int), np.rint(pxx).astype(int)
    # beside its own dendrite: not on a shaft, and nearest to that dendrite's centreline
    ok = (trace.labels[iy, ix] == 0) & (nearest[iy, ix] == dend)
    return spaced_points(np.column_stack([py[ok], pxx[ok]]), existing, n, clearance_px, spacing_px)


def _render_heads(shape: tuple[int, int], pos: np.ndarray, amp: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian heads of peak ``amp`` and ``sigma_px`` at ``pos`` (y, x) on a zero image."""
    out = np.zeros(shape, np.float64)
    half = int(math.ceil(4 * sigma_px))
    for (cy, cx), a in zip(pos, amp):
        y0, y1 = max(0, int(cy) - half), min(shape[0], int(cy) + half + 2)
        x0, x1 = max(0, int(cx) - half), min(shape[1], int(cx) + half + 2)
        gy = np.exp(-((np.arange(y0, y1) - cy) ** 2) / (2 * sigma_px ** 2))
        gx = np.exp(-((np.arange(x0, x1) - cx) ** 2) / (2 * sigma_px ** 2))
        out[y0:y1, x0:x1] += a * np.outer(gy, gx)
    return out


def spine_spike_in_recall(
    image: np.ndarray,
    pixel_size_um: float,
    spines: pd.DataFrame,
    trace: sp.DendriteTrace,
    *,
    min_spikes: int = 40,
    spike_fraction: float = 0.5,
    rounds: int = 1,
    seed: int | list[int] = 0,
    match_head_diameters: float = 1.0,
    clearance_head_diameters: float = 1.0,
    spacing_head_diameters: float = 4.0,
    brightness: dict[str, Any] | None = None,
    **detect_params: Any,
) -> dict[str, Any]:
    """Recall of the spine detector on this image, by spiking in synthetic spine heads.

    Synthetic heads are added at known places and :func:`analysis.measure.spines.detect_spines`
    is run again with the same parameters and the image's own trace (the shafts are the
    same; a few dozen added heads should not move the shaft radius or the foreground
    threshold the trace measures, and in a sparse field with heads brighter than the shaft
    they did); the share of them found (one to one within ``match_head_diameters`` median
    head diameters) estimates the recall:

    * **shape**: round Gaussians of the median head diameter (FWHM) of the detected heads;
      no neck (two-photon necks are often too dim to see, and the detector does not need one);
    * **brightness**: detection scores drawn from :func:`spine_brightness` (the detected heads'
      population, in noise sigmas of the score, with the undetected faint end restored),
      turned into peak heights by a calibration run: heads of the population's median
      height (as measured on the image's heads) are spiked first and the detector's scores
      of them (every candidate, no cut) give the height per noise sigma of score.  Measured
      heights alone are biased by the image's background estimate and by head shapes that
      are not Gaussian; the calibration asks the detector itself;
    * **noise**: each spike adds its own shot noise, ``N(0, b * spike)`` with the slope ``b``
      of the image's noise model (variance ``a + b * mean``; none without a fit);
    * **place**: beside the traced dendrites that carry the detected heads, at the distances
      from the centreline of those heads, at least ``clearance_head_diameters`` from every
      detected head and ``spacing_head_diameters`` from each other; so a spike meets the
      image's crowding (a neighbour the detector merged or missed) as its own heads do;
      ``spike_fraction`` of the detected heads per round, at least ``min_spikes / rounds``.

    Heads seen end-on over the shaft are not spiked (the detector's separate path for them is
    not measured).  Z-stacks are spiked in every plane (the detector works on the maximum
    projection), with each plane's own shot noise.

    Parameters
    ----------
    image : ndarray
        YX image or ZYX stack, as given to the detector.
    pixel_size_um : float
        Pixel size.
    spines : DataFrame
        The image's detected spines (:func:`analysis.measure.spines.detect_spines`).
    trace : DendriteTrace
        The trace they were detected with.
    min_spikes, spike_fraction, rounds :
        Least total number of spikes; spikes per round as a fraction of the detected heads;
        detection runs (after the calibration run).
    seed : int or sequence of int
        Seed of places, brightness and noise.
    match_head_diameters, clearance_head_diameters, spacing_head_diameters : float
        Matching radius, distance from detected heads and between spikes, in head diameters.
    brightness : dict, optional
        :func:`spine_brightness` of the image (computed when not given).
    **detect_params
        The detector's parameters, as used on the image.

    Returns
    -------
    dict
        ``recall``, ``recall_ci_low``, ``recall_ci_high`` (Wilson 95 % of the binomial count),
        ``n_spikes``, ``n_recovered``, ``rounds``, ``peak_per_sd`` (the calibrated height per
        noise sigma of score); NaN figures when the image has no heads
        beside a shaft or no room for spikes.

    Examples
    --------
    >>> from analysis.sim.spines import simulate_spine_sessions
    >>> s = simulate_spine_sessions(0, preset="default", snr="high")[0]
    >>> px = s.info["pixel_size_um"]
    >>> tr = sp.trace_dendrites(s.image, px)
    >>> found = sp.detect_spines(s.image, px, trace=tr)
    >>> r = spine_spike_in_recall(s.image, px, found, tr, seed=0)
    >>> r["n_spikes"] >= 30, 0.5 < r["recall"] <= 1.0
    (True, True)
    """
    nan = float("nan")
    out: dict[str, Any] = {"recall": nan, "recall_ci_low": nan, "recall_ci_high": nan, "n_spikes": 0,
                           "n_recovered": 0, "rounds": 0, "peak_per_sd": nan}
    img = sp._registered(np.asarray(image, dtype=np.float32), pixel_size_um)  # spiked as the detector sees it
    plane = img.max(axis=0) if img.ndim == 3 else img
    b = brightness if brightness is not None else spine_brightness(img, pixel_size_um, spines, trace,
                                                                   detect_params=detect_params)
    if not (np.isfinite(b["mu"]) and np.isfinite(b["head_sigma_px"])):  # (no head beside a traced shaft)
        log.info("spine spike-in: no heads beside a shaft to take size and brightness from")
        return out
    d_cent, (ny, nx) = ndi.distance_transform_edt(~trace.skeleton, return_indices=True)
    beside, d_head = _beside(spines, trace, d_cent)
    side = spines[beside]
    angle = sp._centreline_angle(trace.skeleton, 2.0 * trace.shaft_radius_px)
    nearest = trace.labels[ny, nx]
    rng = np.random.default_rng(seed)
    sig = float(b["head_sigma_px"])
    head_d = _FWHM_PER_SIGMA * sig
    slope = _shot_noise_slope(plane)
    pos_det = spines[["y", "x"]].to_numpy(float)
    offsets = d_head[beside]
    carriers = np.unique(side["dendrite_id"].to_numpy(int))
    per_round = max(int(round(spike_fraction * len(side))), math.ceil(min_spikes / max(int(rounds), 1)))

    def place() -> np.ndarray:
        return _spike_places(rng, trace, angle, nearest, carriers, offsets, pos_det, per_round,
                             clearance_head_diameters * head_d, spacing_head_diameters * head_d,
                             margin_px=3.0 * sig + 2.0)

    def spiked_image(pos: np.ndarray, amp: np.ndarray) -> np.ndarray:
        spikes = _render_heads(plane.shape, pos, amp, sig)
        if img.ndim == 3:
            noisy = [spikes + np.sqrt(slope * spikes) * rng.standard_normal(spikes.shape) for _ in range(img.shape[0])]
            return img + np.stack(noisy).astype(np.float32)
        return img + (spikes + np.sqrt(slope * spikes) * rng.standard_normal(spikes.shape)).astype(np.float32)

    k_sigma, _ = _detect_defaults(detect_params)
    radius = match_head_diameters * head_d
    # calibration: heads of one known amplitude (the population's median, as measured), and the
    # score the detector gives them (every candidate, no cut): amplitude per noise sigma of score
    a0 = float(np.exp(b["mu"]) * b["peak_per_sd"])
    pos = place()
    per_sd = float("nan")
    if len(pos) and np.isfinite(a0) and a0 > 0:
        cand = sp.detect_spines(spiked_image(pos, np.full(len(pos), a0)), pixel_size_um, trace=trace, return_all=True,
                                **detect_params)
        m = match_points(cand[["y", "x"]].to_numpy(float), pos, radius)
        zs = np.zeros(len(pos))
        zs[m.pairs[:, 1]] = k_sigma * cand["snr"].to_numpy(float)[m.pairs[:, 0]]
        if np.median(zs) > 0:
            per_sd = a0 / float(np.median(zs))
    if not np.isfinite(per_sd):
        log.info("spine spike-in: calibration heads not seen; amplitude per noise sigma as measured on the heads")
        per_sd = float(b["peak_per_sd"])
    out["peak_per_sd"] = per_sd
    hits: list[np.ndarray] = []
    for _ in range(max(int(rounds), 1)):
        pos = place()
        if len(pos) == 0:
            continue
        amp = np.exp(b["mu"] + b["sigma"] * rng.standard_normal(len(pos))) * per_sd
        found = sp.detect_spines(spiked_image(pos, amp), pixel_size_um, trace=trace, **detect_params)
        m = match_points(found[["y", "x"]].to_numpy(float), pos, radius)
        hit = np.zeros(len(pos), bool)
        hit[m.pairs[:, 1]] = True
        hits.append(hit)
    if not hits:
        log.info("spine spike-in: no room for spikes beside the traced dendrites")
        return out
    hit = np.concatenate(hits)
    lo, hi = wilson_interval(int(hit.sum()), len(hit))
    out.update({"recall": float(hit.mean()), "recall_ci_low": lo, "recall_ci_high": hi, "n_spikes": int(len(hit)),
                "n_recovered": int(hit.sum()), "rounds": len(hits)})
    return out


def spine_quality(image: np.ndarray, pixel_size_um: float, spines: pd.DataFrame, trace: sp.DendriteTrace, *,
                  seed: int | list[int] = 0, spike_in: bool = True, detect_params: dict[str, Any] | None = None,
                  **spike_params: Any) -> dict[str, Any]:
    """The spine readout's quality columns of one image row.

    Returns
    -------
    dict
        ``measured_snr`` (:func:`spine_image_snr`), ``spike_in_recall``,
        ``spike_in_recall_ci_low``, ``spike_in_recall_ci_high`` (:func:`spine_spike_in_recall`,
        two detections: the calibration and one round; NaN with ``spike_in=False``),
        ``est_precision`` (NaN: no estimate of the spine detector's false detections per
        image) and ``background_clipped`` (:func:`background_clipped`: the other figures are
        then outside their validation).
    """
    image = sp._registered(np.asarray(image, dtype=np.float32), pixel_size_um)  # once, for all three
    b = spine_brightness(image, pixel_size_um, spines, trace, detect_params=detect_params)
    row: dict[str, Any] = {"measured_snr": spine_image_snr(b), "spike_in_recall": np.nan,
                           "spike_in_recall_ci_low": np.nan, "spike_in_recall_ci_high": np.nan,
                           "est_precision": np.nan, "background_clipped": background_clipped(image, trace)}
    if spike_in:
        r = spine_spike_in_recall(image, pixel_size_um, spines, trace, seed=seed, brightness=b,
                                  **spike_params, **(detect_params or {}))
        row.update({"spike_in_recall": r["recall"], "spike_in_recall_ci_low": r["recall_ci_low"],
                    "spike_in_recall_ci_high": r["recall_ci_high"]})
    return row
