"""Microglia segmentation and morphology (Iba1 channel): somata, skeletons, branches, Sholl.

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

Morphology (:func:`measure_microglia`)
--------------------------------------
* The soma of each cell is the opening of its mask with a disk of diameter
  ``0.8 * soma_min_diameter_um``, or of half the width of the widest part of the cell if
  that is larger (the soma is the thickest part; thick processes of activated cells are
  not soma); its centroid is the soma centre.
* The skeleton is the 2-D skeleton of the cell mask, pruned of terminal spurs whose
  protrusion beyond the local half-width of their parent process is shorter than
  ``min_branch_length_um`` (outline noise).
* **Soma convention**: the skeleton inside the soma is replaced by straight lines from the
  soma centre to the points where the processes leave the soma (the soma is collapsed to
  its centre).  Hence

  - ``skeleton_length_um`` is the length of the process tree measured from the soma centre:
    pixel steps of 1 (orthogonal) and sqrt(2) (diagonal) outside the soma plus the
    centre-to-exit lines;
  - ``n_primary`` is the number of processes leaving the soma;
  - ``branch_points`` counts junctions of the skeleton *outside* the soma, a cluster of
    adjacent junction pixels once; the soma centre, where the primary processes meet, is
    not a branch point (nor is a fork inside the soma);
  - ``endpoints`` counts process tips;
  - ``skeleton_junctions`` follows the common convention of Fiji's AnalyzeSkeleton
    ("# Junctions") instead: junctions of the whole cell's 2-D skeleton, soma *not*
    collapsed (forks inside the soma and the meeting of the primary processes count), after
    the same spur pruning; a junction is a cluster of 8-adjacent skeleton pixels with more
    than two skeleton neighbours.  It is comparable with tables made by Fiji-based tools;
    ``branch_points`` is the biological count (ramification of the processes) and does not
    depend on how the skeletoniser happens to thread the soma;
  - Sholl intersections at radius ``r`` are the separate skeleton pieces crossing a ring of
    radius ``r`` (1.5 pixels wide) around the soma centre; inside the soma this is the
    number of primary processes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.draw import line as draw_line
from skimage.filters import apply_hysteresis_threshold
from skimage.measure import regionprops
from skimage.morphology import disk, local_maxima, skeletonize
from skimage.segmentation import relabel_sequential, watershed

from analysis.measure.noise import noise_sd, robust_sd
from analysis.measure.puncta import _label_sizes

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
_NB_KERNEL = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], np.uint8)

MEASURE_COLUMNS = [
    "label",
    "area_um2",
    "soma_y",
    "soma_x",
    "soma_area_um2",
    "skeleton_length_um",
    "branch_points",
    "skeleton_junctions",
    "endpoints",
    "n_primary",
    "longest_branch_um",
    "convex_hull_area_um2",
    "solidity",
    "touches_border",
    "sholl_max_intersections",
    "sholl_critical_radius_um",
    "sholl_auc",
    "mean_intensity",
]


# --------------------------------------------------------------------------- noise, filters


def _robust_sd(x: np.ndarray, max_samples: int = 400_000) -> float:
    """:func:`analysis.measure.noise.robust_sd` in double precision (subsampled before the copy)."""
    x = np.asarray(x).ravel()
    return robust_sd(np.asarray(x[:: max(1, x.size // max_samples)], dtype=np.float64), max_samples=max_samples)


def _broad_background(smooth: np.ndarray, radius_px: float) -> np.ndarray:
    """Grey opening with a disk of ``radius_px`` (rolling-ball-like), blurred; computed on a
    reduced grid (the background is smooth at that scale) and interpolated back."""
    k = max(int(radius_px // 4), 1)
    h, w = smooth.shape
    hp, wp = -(-h // k) * k, -(-w // k) * k
    padded = np.pad(smooth, ((0, hp - h), (0, wp - w)), mode="edge")
    small = padded.reshape(hp // k, k, wp // k, k).mean(axis=(1, 3))
    r = max(int(round(radius_px / k)), 1)
    bg = ndi.grey_opening(small, footprint=disk(r))
    bg = ndi.gaussian_filter(bg, r / 2.0)
    if k > 1:
        bg = ndi.zoom(bg, k, order=1, grid_mode=True, mode="nearest")[:h, :w]
    return bg.astype(np.float32)


def _label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Maximum of ``values`` per label 0..n (-inf where a label is absent)."""
    out = np.full(n + 1, -np.inf)
    sel = labels > 0
    np.maximum.at(out, labels[sel].ravel(), np.asarray(values, dtype=np.float64)[sel].ravel())
    return out


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


def _disk_rank(img: np.ndarray, radius: int, op: str) -> np.ndarray:
    """Grey erosion (``op="min"``) or dilation (``"max"``) of a 2-D image with ``disk(radius)``,
    reflecting edges: identical to :func:`scipy.ndimage.grey_erosion` / ``grey_dilation`` with
    that footprint, computed as rows of 1-D filters (the disk is a stack of horizontal
    segments; each distinct half-width is filtered once along x), ~2x faster."""
    filt1d = ndi.minimum_filter1d if op == "min" else ndi.maximum_filter1d
    pick = np.minimum if op == "min" else np.maximum
    fp = disk(radius).astype(bool)
    h = img.shape[0]
    rows_of: dict[int, list[int]] = {}
    for dy in range(-radius, radius + 1):
        rows_of.setdefault(int(fp[dy + radius].sum()) // 2, []).append(dy)
    out = None
    # one half-width at a time (min / max do not depend on the order; holding every width's
    # filtered copy at once took ~radius full-size images)
    for half, dys in rows_of.items():
        # rows beyond the edges reflected like scipy's "reflect" (numpy's "symmetric")
        filtered = np.pad(filt1d(img, 2 * half + 1, axis=1, mode="reflect"), ((radius, radius), (0, 0)),
                          mode="symmetric")
        for dy in dys:
            shifted = filtered[dy + radius : dy + radius + h]
            if out is None:
                out = shifted.copy()
            else:
                pick(out, shifted, out=out)
        del filtered
    return out


def _disk_grey_opening(img: np.ndarray, radius: int) -> np.ndarray:
    """:func:`scipy.ndimage.grey_opening` with ``footprint=disk(radius)`` (same result, faster)."""
    return _disk_rank(_disk_rank(img, radius, "min"), radius, "max")


def _farther_than(mask: np.ndarray, distance_px: float, strip_px: int = 512) -> np.ndarray:
    """``distance_transform_edt(mask) > distance_px`` (pixels farther than that from every
    False pixel), in strips of rows with a margin of the distance (the same result; a distance
    transform of the whole image holds 16 bytes per pixel)."""
    h = mask.shape[0]
    if h <= strip_px or mask.all():  # (no False pixel at all: scipy's own convention)
        return ndi.distance_transform_edt(mask) > distance_px
    m = int(np.ceil(distance_px)) + 2
    out = np.zeros(mask.shape, bool)
    for y0 in range(0, h, strip_px):
        y1 = min(h, y0 + strip_px)
        a0, a1 = max(0, y0 - m), min(h, y1 + m)
        sub = mask[a0:a1]
        if sub.all():  # no False pixel within the margin: farther than the distance
            out[y0:y1] = True
            continue
        out[y0:y1] = ndi.distance_transform_edt(sub)[y0 - a0 : y1 - a0] > distance_px
    return out


def _disk_opening(mask: np.ndarray, radius_px: float, strip_px: int = 512) -> np.ndarray:
    """Binary opening with a Euclidean disk, by two distance transforms (fast for big disks).

    Images of more than ``strip_px`` rows are opened in strips of rows, each read with a
    margin of twice the disk radius (the opening of a pixel depends only on the mask within
    two radii of it: the same result with the memory of a strip; a distance transform holds
    16 bytes per pixel)."""
    if mask.shape[0] <= strip_px:
        core = ndi.distance_transform_edt(mask) >= radius_px
        if not core.any():
            return core
        return (ndi.distance_transform_edt(~core) <= radius_px) & mask
    h = mask.shape[0]
    m = int(np.ceil(radius_px)) + 2
    out = np.zeros(mask.shape, bool)
    for y0 in range(0, h, strip_px):
        y1 = min(h, y0 + strip_px)
        a0, a1 = max(0, y0 - 2 * m), min(h, y1 + 2 * m)
        sub = mask[a0:a1]
        if not sub.any():
            continue
        # (core pixels within a radius of the strip's cut edges may be wrong: > m rows away)
        core = ndi.distance_transform_edt(sub) >= radius_px
        if not core.any():
            continue
        near = ndi.distance_transform_edt(~core)[y0 - a0 : y1 - a0] <= radius_px
        out[y0:y1] = near & mask[y0:y1]
    return out


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground mask, the smoothed, background-corrected intensity, and the bright
    structure cut to its full width at half maximum."""
    smooth = ndi.gaussian_filter(img, max(smoothing_um / px, 0.5))
    signal = smooth - _broad_background(smooth, background_um / px)
    # the opening sits below the noise (a minimum filter first): centre the background
    signal -= np.median(signal.ravel()[:: max(1, signal.size // 400_000)])
    sd = _robust_sd(signal)
    low, high = threshold_sd
    bright = apply_hysteresis_threshold(signal, low * sd, high * sd)
    # each soma or process extends to half its own local peak (its full width at half
    # maximum), not into the blur halo; the centre line of the detection keeps dim
    # stretches connected
    r = max(int(round(process_max_width_um / 2 / px)), 1)
    peak = ndi.maximum_filter(signal, size=2 * r + 1)
    halfmax = bright & (signal >= 0.5 * peak)
    if r >= 2:
        fg = halfmax | skeletonize(bright)
    else:
        # pixels coarser than a quarter of the widest process: the blur halo lies inside the
        # edge pixels, and the cut would only strip partial-volume edges off every process
        fg = bright.copy()

    # thin, dim processes: local background (removes texture wider than a process), line
    # averages in 12 orientations, thresholds from the background statistics of the response
    r_local = max(process_max_width_um / 2 / px, 1.0)
    local = smooth - ndi.gaussian_filter(_disk_grey_opening(smooth, int(np.ceil(r_local))), r_local)
    length_px = max(line_length_um / px, 3.0)
    resp = None  # running maximum over the orientations (not 12 full-size responses at once)
    for k in _line_kernels(length_px, 12):
        r_k = ndi.correlate(local, k, mode="nearest")
        resp = r_k if resp is None else np.maximum(resp, r_k, out=resp)
        del r_k
    del local
    near = ndi.binary_dilation(bright, iterations=int(np.ceil(length_px)) + 2)
    bg_vals = resp[~near] if (~near).sum() > 1000 else resp.ravel()
    m, s = float(np.median(bg_vals)), _robust_sd(bg_vals)
    lo, hi = line_threshold_sd
    thin = apply_hysteresis_threshold(np.where(bright, np.inf, resp), m + lo * s, m + hi * s)
    centre = skeletonize(thin) & ~fg
    # add centre-line pieces that reach beyond the bright structure (tips and dim branches),
    # not those that only run alongside it (they would bridge neighbouring processes)
    pieces, n = ndi.label(centre, structure=_EIGHT)
    if n:
        far = _farther_than(~fg, length_px / 2 + 1.5)
        reach = np.zeros(n + 1, bool)
        reach[np.unique(pieces[far & (pieces > 0)])] = True
        reach[0] = False
        fg |= reach[pieces]
    # fill pinholes (not loops between processes)
    holes = ndi.binary_fill_holes(fg) & ~fg
    hole_lab, nh = ndi.label(holes)
    if nh:
        size = _label_sizes(hole_lab)
        fill = size <= max(1.0 / px**2, 4)
        fill[0] = False
        fg |= fill[hole_lab]
    return fg, signal, halfmax


def _dominant_maxima(
    f: np.ndarray, mask: np.ndarray, h: float, rel: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
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
    seeds : ndarray of bool
        Plateaus of the dominant maxima.
    regions : ndarray of int
        Each pixel of ``mask`` labelled with the dominant maximum whose basin (after merging
        the basins of non-dominant maxima into their higher neighbours) contains it.
    """
    f = np.where(mask, f, -np.inf).astype(np.float64)
    full = np.ones((3,) * f.ndim, bool)
    floor = float(f[mask].min()) if mask.any() else 0.0
    g = np.where(mask, f, floor)
    maxima = local_maxima(g, connectivity=f.ndim, allow_borders=True) & mask
    seeds, n = ndi.label(maxima, structure=full)
    del maxima
    if n == 0:
        return np.zeros(f.shape, bool), np.zeros(f.shape, np.int32)
    basins = watershed(np.negative(g, out=g), seeds, mask=mask, connectivity=f.ndim)
    del g
    peak = _label_max(f, basins, n)
    # highest saddle between each pair of adjacent basins
    a_list, b_list, s_list = [], [], []
    for off in itertools.product((-1, 0, 1), repeat=f.ndim):
        if off <= (0,) * f.ndim:  # each neighbour pair once
            continue
        sa = tuple(slice(max(0, -o), n_ - max(0, o)) for o, n_ in zip(off, f.shape))
        sb = tuple(slice(max(0, o), n_ - max(0, -o)) for o, n_ in zip(off, f.shape))
        la, lb = basins[sa], basins[sb]
        sel = (la != lb) & (la > 0) & (lb > 0)
        a_list.append(la[sel])
        b_list.append(lb[sel])
        s_list.append(np.minimum(f[sa][sel], f[sb][sel]))
    a = np.concatenate(a_list).astype(np.int64)
    b = np.concatenate(b_list).astype(np.int64)
    sad = np.concatenate(s_list)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo * (n + 1) + hi
    order = np.lexsort((-sad, key))
    key, sad, lo, hi = key[order], sad[order], lo[order], hi[order]
    first = np.r_[True, key[1:] != key[:-1]][: len(key)]
    lo, hi, sad = lo[first], hi[first], sad[first]
    parent = np.arange(n + 1)  # union-find over components
    top = np.arange(n + 1)  # highest maximum of each component
    drain = np.arange(n + 1)  # the maximum each maximum merged into (itself if dominant)
    dominant = np.ones(n + 1, bool)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for k in np.argsort(-sad, kind="stable"):
        ra, rb = find(int(lo[k])), find(int(hi[k]))
        if ra == rb:
            continue
        ta, tb = top[ra], top[rb]
        low, high = (ta, tb) if peak[ta] < peak[tb] else (tb, ta)
        if peak[low] - sad[k] < max(h, rel * peak[low]):
            dominant[low] = False
            drain[low] = high
        parent[ra] = rb
        top[rb] = high
    # resolve each maximum to its dominant ancestor
    resolved = drain.copy()
    for _ in range(n):
        nxt = resolved[resolved]
        if np.array_equal(nxt, resolved):
            break
        resolved = nxt
    dominant[0] = False
    return dominant[seeds], resolved[basins] * (basins > 0)


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
    it is connected to.  Returns the somata, their number and the soma-scale intensity.
    """
    sigma = max(soma_diameter_um / (2 * np.sqrt(2)) / px, 1.0)
    # smooth at soma scale on a grid binned to a third of the smoothing SD (the result is
    # smooth at that scale; fine pixels would make the wide kernel expensive), then back
    h, w = signal.shape
    k = max(int(sigma // 3), 1)
    hp, wp = -(-h // k) * k, -(-w // k) * k
    padded = np.pad(signal, ((0, hp - h), (0, wp - w)), mode="edge").reshape(hp // k, k, wp // k, k)
    f_small = ndi.gaussian_filter(np.maximum(padded, 0).mean(axis=(1, 3)), sigma / k)
    floor = 4.0 * _robust_sd(ndi.gaussian_filter(padded.mean(axis=(1, 3)), sigma / k))
    peaks, regions = _dominant_maxima(f_small, f_small > floor, 0.0, rel=separation)
    tops, n = ndi.label(peaks, structure=_EIGHT)
    if k > 1:
        f = ndi.zoom(f_small, k, order=1, grid_mode=True, mode="nearest")[:h, :w]
        regions = np.repeat(np.repeat(regions.astype(np.int32), k, axis=0), k, axis=1)[:h, :w]
        tops = np.repeat(np.repeat(tops, k, axis=0), k, axis=1)[:h, :w]
    else:
        f = f_small
    if n == 0:
        return np.zeros(signal.shape, np.int32), 0, f
    # the hill of each top: its drainage region, above half the top's height
    top_region = np.zeros(int(regions.max()) + 1, np.int32)  # (int32 label maps: half the memory)
    top_region[regions[tops > 0]] = tops[tops > 0]
    hill = top_region[regions] * (regions > 0)
    height = _label_max(f, hill, n)
    height[0] = np.inf
    hill = np.where(f >= 0.5 * height[hill], hill, 0)
    # compact bright body on each hill (pixels next to another hill excluded)
    edge = (ndi.maximum_filter(hill, size=3) != hill) | (ndi.minimum_filter(np.where(hill > 0, hill, n + 1), size=3) != hill)
    body = _disk_opening((hill > 0) & ~edge & halfmax, 0.4 * soma_min_diameter_um / px)
    somata, _, _ = relabel_sequential(np.where(body, hill, 0).astype(np.int32))
    return somata, int(somata.max()), f


def _touching_pairs(labels: np.ndarray) -> np.ndarray:
    """Pairs ``(a, b)``, ``a < b``, of non-zero labels that are 8-neighbours somewhere."""
    out = []
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:, :], labels[:-1, :]),
                 (labels[1:, 1:], labels[:-1, :-1]), (labels[1:, :-1], labels[:-1, 1:])):
        m = (a != b) & (a > 0) & (b > 0)
        out.append(np.stack([np.minimum(a[m], b[m]), np.maximum(a[m], b[m])], axis=1))
    pairs = np.concatenate(out)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


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
    noise units carry over between microscopes.  A 512 x 512 field takes ~0.25 s
    (segmentation and :func:`measure_microglia` together).

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
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"segment_microglia needs a 2-D (YX) image, got shape {img.shape}; "
                         "use a maximum projection of a stack")
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    if border_somata not in ("centre", "all"):
        raise ValueError(f"border_somata must be 'centre' or 'all', got {border_somata!r}")
    px = float(pixel_size_um)
    fg, signal, halfmax = _foreground(
        img, px, smoothing_um=smoothing_um, process_max_width_um=process_max_width_um,
        background_um=background_um, line_length_um=line_length_um, threshold_sd=threshold_sd,
        line_threshold_sd=line_threshold_sd,
    )
    markers, n, soma_scale = _somata(signal, halfmax, px, soma_diameter_um, soma_min_diameter_um, soma_separation)
    if n == 0:
        log.debug("no soma found")
        return np.zeros(img.shape, np.int32)
    if entering_process_rise is not None:
        markers = _add_entering_markers(markers, n, fg, signal, px, process_max_width_um, entering_process_rise)
    # flood from bright to dim; intensity differences below two noise SDs are not evidence,
    # so within such a step the flood advances breadth-first (by path length)
    levels = signal / (2.0 * _robust_sd(signal))
    np.negative(np.floor(levels, out=levels), out=levels)  # -floor(signal / 2 SD), in place
    labels = watershed(levels, markers, mask=fg, connectivity=2)
    if soma_relative_height > 0:
        # a hill that reaches less than this fraction of the soma of a cell it touches is a
        # thickening of that cell's process (a bulb, an end-foot), not a soma of its own
        height = _label_max(soma_scale, np.where(markers <= n, markers, 0), n)
        pairs = _touching_pairs(np.where(labels <= n, labels, 0))
        a, b = pairs[:, 0], pairs[:, 1]
        weak = np.r_[a[height[a] < soma_relative_height * height[b]], b[height[b] < soma_relative_height * height[a]]]
        if len(weak):
            markers = np.where(np.isin(markers, weak), 0, markers)
            labels = watershed(levels, markers, mask=fg, connectivity=2)
    if terminal_swellings:
        swollen = _terminal_swellings(labels, markers, n, soma_scale, px, soma_min_diameter_um)
        if len(swollen):
            markers = np.where(np.isin(markers, swollen), 0, markers)
            labels = watershed(levels, markers, mask=fg, connectivity=2)
    labels[labels > n] = 0  # basins of processes entering from outside the field
    if border_somata == "centre":
        drop = _somata_centred_outside(np.where(markers <= n, markers, 0))
        if drop:
            labels[np.isin(labels, drop)] = 0
    labels, _, _ = relabel_sequential(labels)
    log.debug("segmented %d microglia", int(labels.max()))
    return labels.astype(np.int32)


def _terminal_swellings(
    labels: np.ndarray,
    markers: np.ndarray,
    n: int,
    soma_scale: np.ndarray,
    px: float,
    soma_min_diameter_um: float,
) -> list[int]:
    """Seeds (1..n) that are swellings at the end of another cell's process, not somata.

    A soma is the hub of its cell, from which the processes radiate, and the thickest and
    (at soma scale) brightest part of it.  A bright bulb at the end of a process is none of
    these: its cell is joined to exactly one other cell (through the process it ends), its
    body is thinner and its soma-scale hill lower than that cell's soma, and it has no
    process of its own: every skeleton branch outside its soma (:class:`_Cell`, the same
    conventions as :func:`measure_microglia`) that does not lead to the other cell is
    shorter than the smallest soma diameter.
    """
    cells = np.where(labels <= n, labels, 0)
    pairs = _touching_pairs(cells)
    if not len(pairs):
        return []
    partners: dict[int, list[int]] = {}
    for a, b in pairs:
        partners.setdefault(int(a), []).append(int(b))
        partners.setdefault(int(b), []).append(int(a))
    seeds = np.where(markers <= n, markers, 0)
    height = _label_max(soma_scale, seeds, n)
    thickness = _label_max(ndi.distance_transform_edt(seeds > 0), seeds, n)
    candidates = [(a, nb[0]) for a, nb in partners.items()
                  if len(nb) == 1 and height[a] < height[nb[0]] and thickness[a] < thickness[nb[0]]]
    if not candidates:
        return []
    boxes = ndi.find_objects(cells)
    min_process_px = soma_min_diameter_um / px
    out = []
    for a, b in candidates:
        box = boxes[a - 1]
        if box is None:
            continue
        sl = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in box)
        crop = cells[sl]
        cell = np.pad(crop == a, 1)
        c = _Cell(cell, px, soma_min_diameter_um, 1.0)
        # a branch leads to the other cell when it ends there: the skeleton stops about a
        # half-width short of the cut, so its tip is within the local half-width of it
        reach = ndi.distance_transform_edt(cell) + 1.5 - ndi.distance_transform_edt(np.pad(crop != b, 1, constant_values=True))
        branches, nb = ndi.label(c.outside, structure=_EIGHT)
        own = [_length_px(br) for br in (branches == k for k in range(1, nb + 1)) if not (reach[br] >= 0).any()]
        if max(own, default=0.0) < min_process_px:
            out.append(a)
    log.debug("%d terminal swellings attached to the cell whose process they end", len(out))
    return out


def _add_entering_markers(
    markers: np.ndarray,
    n: int,
    fg: np.ndarray,
    signal: np.ndarray,
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
    """
    rise_sd, rise_fraction = rise
    soma_peak = float(np.median(_label_max(signal, markers, n)[1:]))
    h = max(rise_sd * _robust_sd(signal), rise_fraction * soma_peak)
    peaks, _ = _dominant_maxima(signal, fg, h)
    lab, n_extra = ndi.label(peaks, structure=_EIGHT)
    if n_extra == 0:
        return markers
    k = max(int(round(process_max_width_um / px)), 1)
    edge = np.ones(fg.shape, bool)
    edge[k:-k, k:-k] = False
    keep = np.zeros(n_extra + 1, bool)
    keep[np.unique(lab[edge])] = True
    keep[np.unique(lab[ndi.binary_dilation(markers > 0, structure=_EIGHT)])] = False  # soma tops
    keep[0] = False
    log.debug("%d processes enter the field from outside cells", int(keep.sum()))
    return np.where(keep[lab], lab + n, markers)


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
    for rp in regionprops(somata):
        y0, x0, y1, x1 = rp.bbox
        if not (y0 == 0 or x0 == 0 or y1 == h or x1 == w):
            continue
        m = np.pad(rp.image, 1)
        outline = np.argwhere(m & ~ndi.binary_erosion(m, structure=_EIGHT)) + [y0 - 1, x0 - 1]
        inner = (outline[:, 0] > 0) & (outline[:, 0] < h - 1) & (outline[:, 1] > 0) & (outline[:, 1] < w - 1)
        outline = outline[inner]
        if len(outline) < 5:
            out.append(int(rp.label))
            continue
        cy, cx, _ = _fit_circle(outline)
        if not (-0.5 <= cy < h - 0.5 and -0.5 <= cx < w - 0.5):
            out.append(int(rp.label))
    return out


def border_cells(labels: np.ndarray) -> set[int]:
    """Labels of the cells that touch the image border (cut by the field edge).

    Parameters
    ----------
    labels : ndarray of int
        Label image (any dimension).

    Returns
    -------
    set of int

    Examples
    --------
    >>> lab = np.zeros((5, 5), int); lab[0, 1] = 1; lab[2, 2] = 2
    >>> border_cells(lab)
    {1}
    """
    labels = np.asarray(labels)
    edge = np.concatenate([np.take(labels, idx, axis=ax).ravel() for ax in range(labels.ndim) for idx in (0, -1)])
    return {int(v) for v in np.unique(edge) if v}


# --------------------------------------------------------------------------- skeleton graph


def _neighbours(sk: np.ndarray) -> np.ndarray:
    """Number of 8-neighbours of each skeleton pixel (0 off the skeleton)."""
    return ndi.correlate(sk.astype(np.uint8), _NB_KERNEL, mode="constant") * sk


def _length_px(sk: np.ndarray) -> float:
    """Length of a one-pixel-wide skeleton: orthogonal steps 1, diagonal steps sqrt(2).

    A diagonal step is not counted where the two pixels are also joined through a third
    skeleton pixel at the corner (an L of three pixels is one orthogonal step plus one
    orthogonal step, not also a diagonal).

    Examples
    --------
    >>> sk = np.zeros((5, 5), bool); sk[2, :] = True
    >>> _length_px(sk)
    4.0
    >>> round(_length_px(np.eye(4, dtype=bool)), 3)
    4.243
    """
    s = np.asarray(sk, bool)
    if not s.any():
        return 0.0
    orth = int((s[:, 1:] & s[:, :-1]).sum() + (s[1:, :] & s[:-1, :]).sum())
    d1 = s[1:, 1:] & s[:-1, :-1] & ~(s[:-1, 1:] | s[1:, :-1])
    d2 = s[1:, :-1] & s[:-1, 1:] & ~(s[:-1, :-1] | s[1:, 1:])
    return float(orth + np.sqrt(2) * (int(d1.sum()) + int(d2.sum())))


def _prune(sk: np.ndarray, width: np.ndarray, min_protrusion_px: float, passes: int = 2) -> np.ndarray:
    """Remove terminal spurs: tip branches whose length beyond the half-width of the parent
    process at their junction is shorter than ``min_protrusion_px``."""
    for _ in range(passes):
        nb = _neighbours(sk)
        junction = sk & (nb >= 3)
        if not junction.any():
            break
        branches, n = ndi.label(sk & ~junction, structure=_EIGHT)
        if n == 0:
            break
        tips = (nb == 1) & sk
        has_tip = np.zeros(n + 1, bool)
        has_tip[np.unique(branches[tips])] = True
        # half-width of the parent: largest distance-to-edge over the junction pixels adjacent
        # to each branch
        jwidth = ndi.grey_dilation(np.where(junction, width, 0.0), footprint=_EIGHT)
        touch = ndi.binary_dilation(junction, structure=_EIGHT) & (branches > 0)
        parent_r = np.maximum(_label_max(np.where(touch, jwidth, 0.0), branches, n), 0.0)
        touches_junction = np.zeros(n + 1, bool)
        touches_junction[np.unique(branches[touch])] = True
        length = np.bincount(branches.ravel(), minlength=n + 1) + 1.0
        spur = has_tip & touches_junction & (length - parent_r < min_protrusion_px)
        spur[0] = False
        if not spur.any():
            break
        sk = skeletonize(sk & ~spur[branches])
    return sk


def _graph(sk: np.ndarray) -> tuple[np.ndarray, coo_matrix]:
    """Pixel coordinates and the 8-neighbour adjacency (edge weights 1 / sqrt(2))."""
    pts = np.argwhere(sk)
    n = len(pts)
    idx = -np.ones(sk.shape, np.int64)
    idx[tuple(pts.T)] = np.arange(n)
    rows, cols, w = [], [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        b = pts + [dy, dx]
        ok = (b[:, 0] < sk.shape[0]) & (b[:, 1] >= 0) & (b[:, 1] < sk.shape[1])
        a, b = np.nonzero(ok)[0], b[ok]
        j = idx[b[:, 0], b[:, 1]]
        hit = j >= 0
        rows.append(a[hit])
        cols.append(j[hit])
        w.append(np.full(int(hit.sum()), np.hypot(dy, dx)))
    g = coo_matrix((np.concatenate(w), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return pts, g


def _ring_crossings(pts: np.ndarray, dist: np.ndarray, radii_px: np.ndarray, shape) -> np.ndarray:
    """Separate skeleton pieces in a 1.5-pixel-wide ring at each radius."""
    out = np.zeros(len(radii_px), int)
    m = np.zeros(shape, bool)
    for i, r in enumerate(radii_px):
        ring = np.abs(dist - r) <= 0.75
        if not ring.any():
            continue
        m[:] = False
        m[tuple(pts[ring].T)] = True
        out[i] = ndi.label(m, structure=_EIGHT)[1]
    return out


class _Cell:
    """Soma, soma centre and soma-collapsed, pruned skeleton of one cell mask (padded crop)."""

    def __init__(self, cell: np.ndarray, px: float, soma_min_diameter_um: float, min_branch_length_um: float):
        self.cell = cell
        width = ndi.distance_transform_edt(cell)
        # the soma is the thickest part of the cell: at least half as wide as the widest part
        # (thick processes of activated cells are not soma) and wide enough for a soma
        soma = _disk_opening(cell, max(0.4 * soma_min_diameter_um / px, 0.5 * float(width.max())))
        if soma.any():
            lab, n = ndi.label(soma)
            if n > 1:
                soma = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        else:  # no soma-sized part (a cut cell): use the thickest part
            soma = width >= 0.7 * width.max()
            lab, n = ndi.label(soma)
            if n > 1:
                soma = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        self.soma = soma
        self.centre = np.argwhere(soma).mean(axis=0)
        sk = skeletonize(cell)
        sk = _prune(sk, width, max(min_branch_length_um / px, 2.0))
        self.whole_skeleton = sk  # pruned, soma not collapsed (for ``skeleton_junctions``)
        outside = sk & ~soma
        # exits: skeleton pixels next to the soma, one cluster per primary process
        rim = ndi.binary_dilation(soma, structure=_EIGHT) & outside
        exits, n_exit = ndi.label(rim, structure=_EIGHT)
        self.outside = outside
        self.n_primary = int(n_exit)
        cy, cx = (int(round(v)) for v in self.centre)
        collapsed = outside.copy()
        self.exit_length_px = 0.0
        if n_exit:
            # snap each exit centroid to the nearest pixel of its cluster
            for k in range(n_exit):
                pts = np.argwhere(exits == k + 1)
                p = pts[np.argmin(np.hypot(pts[:, 0] - self.centre[0], pts[:, 1] - self.centre[1]))]
                rr, cc = draw_line(cy, cx, int(p[0]), int(p[1]))
                collapsed[rr, cc] = True
                self.exit_length_px += float(np.hypot(p[0] - self.centre[0], p[1] - self.centre[1]))
        else:
            collapsed[cy, cx] = True
        self.skeleton = collapsed
        self.soma_radius_px = float(np.sqrt(soma.sum() / np.pi))

    def length_px(self) -> float:
        return _length_px(self.outside) + self.exit_length_px

    def nodes(self) -> tuple[int, int]:
        """(branch points, endpoints) of the collapsed skeleton outside the soma."""
        nb = _neighbours(self.skeleton)
        off = self.skeleton & ~self.soma
        junctions = (nb >= 3) & off
        n_branch = int(ndi.label(junctions, structure=_EIGHT)[1])
        n_end = int(((nb == 1) & off).sum())
        return n_branch, n_end

    def junctions(self) -> int:
        """Junctions of the whole cell's pruned skeleton, soma included (AnalyzeSkeleton's
        convention): clusters of 8-adjacent skeleton pixels with more than two neighbours."""
        sk = self.whole_skeleton
        return int(ndi.label(sk & (_neighbours(sk) >= 3), structure=_EIGHT)[1])

    def longest_path_px(self) -> float:
        pts, g = _graph(self.skeleton)
        if len(pts) < 2:
            return 0.0
        c = np.round(self.centre).astype(int)
        src = int(np.argmin(np.abs(pts - c).sum(axis=1)))
        d = dijkstra(g, directed=False, indices=src)
        d = d[np.isfinite(d)]
        return float(d.max()) if len(d) else 0.0

    def sholl(self, radii_px: np.ndarray) -> np.ndarray:
        pts = np.argwhere(self.skeleton)
        dist = np.hypot(pts[:, 0] - self.centre[0], pts[:, 1] - self.centre[1])
        return _ring_crossings(pts, dist, radii_px, self.skeleton.shape)


def _cells(labels: np.ndarray, px: float, soma_min_diameter_um: float, min_branch_length_um: float):
    for rp in regionprops(labels):
        yield rp, _Cell(np.pad(rp.image, 1), px, soma_min_diameter_um, min_branch_length_um)


def measure_microglia(
    labels: np.ndarray,
    image: np.ndarray | None,
    pixel_size_um: float,
    *,
    soma_min_diameter_um: float = 5.0,
    min_branch_length_um: float = 1.0,
    sholl_step_um: float = 2.0,
) -> pd.DataFrame:
    """Morphology of each labelled microglia cell.

    Parameters
    ----------
    labels : ndarray of int
        Label image (:func:`segment_microglia`), YX.
    image : ndarray or None
        Iba1 intensities for ``mean_intensity`` (None: NaN).
    pixel_size_um : float
        Pixel size in um.
    soma_min_diameter_um : float
        Sets the opening that finds the soma (see the module docstring).
    min_branch_length_um : float
        Terminal branches protruding less than this beyond their parent process are spurs
        of the outline and are pruned.
    sholl_step_um : float
        Spacing of the Sholl circles (the first at one step from the soma centre).

    Returns
    -------
    DataFrame
        One row per cell: ``label``, ``area_um2``, ``soma_y``, ``soma_x`` (soma centre,
        pixels), ``soma_area_um2``, ``skeleton_length_um``, ``branch_points`` (forks of the
        processes outside the soma), ``skeleton_junctions`` (junction clusters of the whole
        cell's skeleton, soma included: Fiji AnalyzeSkeleton's convention), ``endpoints``,
        ``n_primary``, ``longest_branch_um`` (longest path from the soma centre to a tip),
        ``convex_hull_area_um2``, ``solidity`` (area / convex hull area; low = ramified),
        ``touches_border``, ``sholl_max_intersections``, ``sholl_critical_radius_um``
        (radius of the maximum), ``sholl_auc`` (area under the intersections-versus-radius
        curve, um), ``mean_intensity``.  Conventions for the soma and the skeleton are in
        the module docstring.

    Examples
    --------
    A plus-shaped cell: soma of radius 4 um, four 15-um processes from the centre.

    >>> from skimage.draw import disk as draw_disk
    >>> lab = np.zeros((200, 200), int)
    >>> lab[draw_disk((100, 100), 20)] = 1
    >>> lab[99:102, 25:176] = 1
    >>> lab[25:176, 99:102] = 1
    >>> m = measure_microglia(lab, None, 0.2).iloc[0]
    >>> round(m.skeleton_length_um), int(m.n_primary), int(m.endpoints), int(m.branch_points)
    (59, 4, 4, 0)
    >>> int(m.skeleton_junctions)  # the four processes meet at one junction in the soma
    1
    >>> int(m.sholl_max_intersections)
    4
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"measure_microglia needs a 2-D label image, got shape {labels.shape}")
    px = float(pixel_size_um)
    border = border_cells(labels)
    rows = []
    for rp, c in _cells(labels, px, soma_min_diameter_um, min_branch_length_um):
        y0, x0 = rp.bbox[0], rp.bbox[1]
        n_branch, n_end = c.nodes()
        pts = np.argwhere(c.skeleton)
        reach = float(np.hypot(pts[:, 0] - c.centre[0], pts[:, 1] - c.centre[1]).max())
        radii_um = np.arange(1, int(reach * px / sholl_step_um) + 1) * sholl_step_um
        inter = c.sholl(radii_um / px)
        if image is not None:
            mean_int = float(np.asarray(image)[tuple(rp.coords.T)].mean())
        else:
            mean_int = np.nan
        rows.append(
            {
                "label": int(rp.label),
                "area_um2": float(rp.area * px**2),
                "soma_y": float(c.centre[0] + y0 - 1),
                "soma_x": float(c.centre[1] + x0 - 1),
                "soma_area_um2": float(c.soma.sum() * px**2),
                "skeleton_length_um": float(c.length_px() * px),
                "branch_points": n_branch,
                "skeleton_junctions": c.junctions(),
                "endpoints": n_end,
                "n_primary": c.n_primary,
                "longest_branch_um": float(c.longest_path_px() * px),
                "convex_hull_area_um2": float(rp.area_convex * px**2),
                "solidity": float(rp.solidity),
                "touches_border": int(rp.label) in border,
                "sholl_max_intersections": int(inter.max()) if len(inter) else 0,
                "sholl_critical_radius_um": float(radii_um[int(np.argmax(inter))]) if len(inter) else np.nan,
                "sholl_auc": float(np.trapezoid(inter, radii_um)) if len(inter) > 1 else 0.0,
                "mean_intensity": mean_int,
            }
        )
    return pd.DataFrame(rows, columns=MEASURE_COLUMNS)


def sholl_profile(
    labels: np.ndarray,
    pixel_size_um: float,
    *,
    centre: tuple[float, float] | None = None,
    radii_um: Sequence[float] | np.ndarray | None = None,
    step_um: float = 2.0,
    max_radius_um: float | None = None,
    soma_min_diameter_um: float = 5.0,
    min_branch_length_um: float = 1.0,
) -> pd.DataFrame:
    """Sholl intersections versus radius, for plotting Sholl curves.

    Parameters
    ----------
    labels : ndarray
        Either a label image (each cell is skeletonised with the conventions of
        :func:`measure_microglia` and measured around its soma centre), or a boolean
        skeleton together with ``centre`` (measured as given, reported as label 1).
    pixel_size_um : float
        Pixel size in um.
    centre : (float, float), optional
        Centre (y, x, pixels) for a boolean skeleton.
    radii_um : sequence of float, optional
        Radii of the circles; default every ``step_um`` up to ``max_radius_um`` (default:
        the farthest skeleton pixel of each cell).
    step_um, max_radius_um : float
        See ``radii_um``.
    soma_min_diameter_um, min_branch_length_um : float
        As in :func:`measure_microglia`.

    Returns
    -------
    DataFrame
        Columns ``label``, ``radius_um``, ``intersections``.

    Examples
    --------
    >>> sk = np.zeros((101, 101), bool)
    >>> sk[50, :] = True
    >>> sk[:, 50] = True
    >>> sholl_profile(sk, 0.2, centre=(50, 50), radii_um=[2, 8, 12]).intersections.tolist()
    [4, 4, 0]
    """
    px = float(pixel_size_um)
    arr = np.asarray(labels)

    def radii_for(reach_px: float) -> np.ndarray:
        if radii_um is not None:
            return np.asarray(radii_um, dtype=float)
        top = max_radius_um if max_radius_um is not None else reach_px * px
        return np.arange(1, int(top / step_um + 1e-9) + 1) * step_um

    out = []
    if arr.dtype == bool:
        if centre is None:
            raise ValueError("sholl_profile of a boolean skeleton needs centre=(y, x)")
        pts = np.argwhere(arr)
        dist = np.hypot(pts[:, 0] - centre[0], pts[:, 1] - centre[1])
        r = radii_for(float(dist.max()) if len(dist) else 0.0)
        inter = _ring_crossings(pts, dist, r / px, arr.shape)
        out.append(pd.DataFrame({"label": 1, "radius_um": r, "intersections": inter}))
    else:
        for rp, c in _cells(arr, px, soma_min_diameter_um, min_branch_length_um):
            pts = np.argwhere(c.skeleton)
            reach = float(np.hypot(pts[:, 0] - c.centre[0], pts[:, 1] - c.centre[1]).max())
            r = radii_for(reach)
            out.append(pd.DataFrame({"label": int(rp.label), "radius_um": r, "intersections": c.sholl(r / px)}))
    if not out:
        return pd.DataFrame({"label": pd.Series(dtype=int), "radius_um": pd.Series(dtype=float),
                             "intersections": pd.Series(dtype=int)})
    return pd.concat(out, ignore_index=True)


def skeleton_image(
    labels: np.ndarray,
    pixel_size_um: float,
    *,
    soma_min_diameter_um: float = 5.0,
    min_branch_length_um: float = 1.0,
) -> np.ndarray:
    """The measured (pruned, soma-collapsed) skeleton of every cell as one boolean image.

    Examples
    --------
    >>> lab = np.zeros((60, 60), int); lab[20:40, 20:40] = 1; lab[29:31, 5:56] = 1
    >>> skeleton_image(lab, 0.2).any()
    np.True_
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, bool)
    for rp, c in _cells(labels, float(pixel_size_um), soma_min_diameter_um, min_branch_length_um):
        y0, x0, y1, x1 = rp.bbox
        out[y0:y1, x0:x1] |= c.skeleton[1:-1, 1:-1]
    return out
