"""Microglia segmentation and morphology (Iba1 channel): skeletons, branches and Sholl analysis.

Conventions
-----------
* The soma of each cell is found by a morphological opening of the cell mask with a disk of
  ``soma_min_diameter_um / 2`` (processes are thinner and vanish).
* The skeleton is the 2-D skeleton of the cell mask.  Inside the soma it is replaced by
  straight lines from the soma centre to where each primary process leaves the soma, so
  ``skeleton_length_um`` is the length of the process tree measured from the soma centre
  (skeleton length outside the soma plus one soma radius per primary process).
* ``branch_points`` are junctions of the skeleton outside the soma (a cluster of adjacent
  junction pixels counts once); the soma centre, where primary processes meet, is not a
  branch point.  ``endpoints`` are process tips.
* Sholl intersections at radius r are the number of separate skeleton pieces crossing a
  one-pixel-wide ring of radius r around the soma centre.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.filters import apply_hysteresis_threshold
from skimage.measure import regionprops
from skimage.morphology import disk, skeletonize
from skimage.segmentation import relabel_sequential, watershed

from analysis.synapses import background_corrected

__all__ = ["segment_microglia", "measure_microglia", "sholl_profile", "border_cells", "skeleton_image"]

log = logging.getLogger(__name__)

_EIGHT = np.ones((3, 3), bool)
#: Terminal skeleton branches shorter than this are spurs (blunt process ends and boundary
#: noise fork the skeleton over about one process width, ~1-1.5 um).
_SPUR_UM = 1.5


def _soma_mask(cell: np.ndarray, pixel_size_um: float, soma_min_diameter_um: float) -> np.ndarray:
    r = max(int(round(soma_min_diameter_um / 2 / pixel_size_um * 0.8)), 1)
    return ndi.binary_opening(cell, structure=disk(r))


def segment_microglia(
    image: np.ndarray,
    pixel_size_um: float,
    *,
    soma_min_diameter_um: float = 5.0,
    smoothing_um: float = 0.2,
    background_um: float = 10.0,
    low_sd: float = 2.5,
    high_sd: float = 8.0,
    half_maximum: bool = True,
) -> np.ndarray:
    """Segment microglia in an Iba1 image: one label per cell, processes attached to their soma.

    Foreground is a hysteresis threshold of the background-corrected image at ``low_sd`` and
    ``high_sd`` robust noise SDs (dim process tips stay attached to bright processes), cut
    back to half of the local peak (full width at half maximum) with the centre line of the
    hysteresis mask kept for connectivity.  Somata
    are found as cores of the foreground deeper than 0.3 x ``soma_min_diameter_um`` from its
    edge (processes, < ~1.5 um wide, have no core); cores smaller than a disk of 0.2 x
    ``soma_min_diameter_um`` radius are debris.  A watershed on the
    intensity, seeded from the somata, splits touching cells; foreground not connected to
    any soma (fragments of cells outside the field, debris) is dropped.

    Parameters
    ----------
    image : ndarray
        Iba1 image, YX (use a max projection for stacks).
    pixel_size_um : float
    soma_min_diameter_um : float
        Smallest soma (microglia somata are ~6-10 um across).
    smoothing_um, background_um : float
        Gaussian smoothing and background scale.
    low_sd, high_sd : float
        Hysteresis thresholds in noise SDs.

    Returns
    -------
    ndarray of int32
        Label image, 0 = background, 1..n = cells.

    Examples
    --------
    >>> labels = segment_microglia(iba1, 0.2)  # doctest: +SKIP
    >>> labels.max()  # number of cells  # doctest: +SKIP
    """
    signal, sd = background_corrected(image, pixel_size_um, smoothing_um=smoothing_um, opening_um=2.0,
                                      background_um=background_um)
    fg = apply_hysteresis_threshold(signal, low_sd * sd, high_sd * sd)
    if half_maximum:
        # a process or soma extends to half its own local peak (its full width at half
        # maximum), not into the blur halo where a bright cell still clears the noise
        # (the centre line of the noise-level mask is kept, so dim stretches do not cut a
        # process off its cell)
        r = max(int(round(1.0 / pixel_size_um)), 1)
        fg = (fg & (signal >= 0.5 * ndi.maximum_filter(signal, size=2 * r + 1))) | skeletonize(fg)
    holes = ndi.binary_fill_holes(fg) & ~fg  # fill pinholes only, not loops between processes
    hole_lab, _ = ndi.label(holes)
    hole_size = np.bincount(hole_lab.ravel())
    fill = hole_size <= max(1.0 / pixel_size_um**2, 1)
    fill[0] = False
    fg |= fill[hole_lab]
    # soma cores: pixels deeper inside the foreground than a thick process is wide
    depth = ndi.distance_transform_edt(fg) * pixel_size_um
    core = depth >= 0.3 * soma_min_diameter_um
    markers, n = ndi.label(core)
    if n:
        min_area = np.pi * (0.2 * soma_min_diameter_um / pixel_size_um) ** 2
        sizes = np.bincount(markers.ravel())
        small = sizes < min_area
        small[0] = False
        markers[small[markers]] = 0
    labels = watershed(-signal, markers, mask=fg, connectivity=2)
    labels, _, _ = relabel_sequential(labels)
    log.debug("segmented %d microglia", labels.max())
    return labels.astype(np.int32)


def border_cells(labels: np.ndarray) -> set[int]:
    """Labels of cells that touch the image border (cut by the field edge)."""
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return set(int(v) for v in np.unique(edge) if v)


def _neighbours(sk: np.ndarray) -> np.ndarray:
    k = np.ones((3, 3), int)
    k[1, 1] = 0
    return ndi.convolve(sk.astype(int), k, mode="constant") * sk


def _length_px(sk: np.ndarray) -> float:
    """Length of a skeleton in pixels from its orthogonal and diagonal neighbour steps.

    Counting steps as 1 and sqrt(2) overestimates the length of curves of random direction
    (the digital path zig-zags); Kulpa's weights (0.948, 1.343) make it unbiased.
    """
    s = sk.astype(int)
    orth = ndi.convolve(s, np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]]), mode="constant")[sk].sum() / 2
    diag = ndi.convolve(s, np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]]), mode="constant")[sk].sum() / 2
    return float(0.948 * orth + 1.343 * diag)


def _prune(sk: np.ndarray, max_spur_px: float) -> np.ndarray:
    """Remove terminal branches shorter than ``max_spur_px`` (boundary-noise spurs), once.

    Junction pixels are taken out so the skeleton falls apart into branches; branches that
    end in a tip and are shorter than the limit are deleted; the junctions go back and the
    result is thinned again.
    """
    nb = _neighbours(sk)
    junction = sk & (nb >= 3)
    if not junction.any():
        return sk
    branches, n = ndi.label(sk & ~junction, structure=_EIGHT)
    if n == 0:
        return sk
    size = np.bincount(branches.ravel(), minlength=n + 1)
    has_tip = np.zeros(n + 1, bool)
    has_tip[np.unique(branches[(nb == 1) & sk])] = True
    touches_junction = np.zeros(n + 1, bool)
    touches_junction[np.unique(branches[ndi.binary_dilation(junction, structure=_EIGHT) & (branches > 0)])] = True
    spur = has_tip & touches_junction & (size < max_spur_px)
    spur[0] = False
    pruned = sk & ~spur[branches]
    return skeletonize(pruned)


def _geodesic_max(sk: np.ndarray, sources: np.ndarray) -> float:
    """Longest shortest-path distance (pixels) from any source pixel over the skeleton."""
    idx = -np.ones(sk.shape, int)
    pts = np.argwhere(sk)
    if len(pts) == 0 or not sources.any():
        return 0.0
    idx[tuple(pts.T)] = np.arange(len(pts))
    rows, cols, w = [], [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = pts
        b = pts + [dy, dx]
        ok = (b[:, 0] < sk.shape[0]) & (b[:, 1] >= 0) & (b[:, 1] < sk.shape[1])
        a, b = a[ok], b[ok]
        hit = sk[tuple(b.T)]
        rows.append(idx[tuple(a[hit].T)])
        cols.append(idx[tuple(b[hit].T)])
        w.append(np.full(hit.sum(), np.hypot(dy, dx)))
    n = len(pts)
    g = coo_matrix((np.concatenate(w), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()
    src = idx[sources & sk]
    src = src[src >= 0]
    if len(src) == 0:
        return 0.0
    d = dijkstra(g, directed=False, indices=src, min_only=True)
    d = d[np.isfinite(d)]
    return float(d.max()) if len(d) else 0.0


def _ring_crossings(sk_pts: np.ndarray, dist: np.ndarray, radius_px: float, shape) -> int:
    ring = np.abs(dist - radius_px) <= 0.75
    if not ring.any():
        return 0
    m = np.zeros(shape, bool)
    m[tuple(sk_pts[ring].T)] = True
    return int(ndi.label(m, structure=_EIGHT)[1])


def _cell_skeleton(cell: np.ndarray, pixel_size_um: float, soma_min_diameter_um: float):
    soma = _soma_mask(cell, pixel_size_um, soma_min_diameter_um)
    if soma.any():
        lab, n = ndi.label(soma)
        if n > 1:
            soma = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    else:  # no soma survives the opening: use the thickest part
        dt = ndi.distance_transform_edt(cell)
        soma = dt >= dt.max() * 0.7
    sk = skeletonize(cell)
    sk = _prune(sk, max(_SPUR_UM / pixel_size_um, 2))
    ring = ndi.binary_dilation(soma, structure=_EIGHT) & ~soma
    outside = sk & ~soma
    return soma, sk, outside, ring


def measure_microglia(
    labels: np.ndarray,
    image: np.ndarray | None,
    pixel_size_um: float,
    *,
    soma_min_diameter_um: float = 5.0,
    sholl_step_um: float = 2.0,
) -> pd.DataFrame:
    """Morphology of each labelled microglia cell.

    Parameters
    ----------
    labels : ndarray of int
        Label image (:func:`segment_microglia`), YX.
    image : ndarray or None
        Iba1 intensities (for ``mean_intensity``); may be None.
    pixel_size_um : float
    soma_min_diameter_um : float
        Sets the opening that finds the soma (see module notes).
    sholl_step_um : float
        Spacing of the Sholl circles.

    Returns
    -------
    DataFrame
        One row per cell: ``label``, ``area_um2``, ``soma_y``, ``soma_x`` (pixels),
        ``soma_area_um2``, ``skeleton_length_um``, ``branch_points``, ``endpoints``,
        ``n_primary``, ``longest_branch_um``, ``convex_hull_area_um2``, ``solidity``,
        ``touches_border``, ``sholl_max_intersections``, ``sholl_critical_radius_um``,
        ``sholl_auc`` (intersections x um), ``mean_intensity``.
    """
    rows = []
    border = border_cells(labels)
    for rp in regionprops(labels, intensity_image=image):
        y0, x0, y1, x1 = rp.bbox
        cell = np.pad(rp.image, 1)
        soma, sk, outside, ring = _cell_skeleton(cell, pixel_size_um, soma_min_diameter_um)
        cy, cx = np.argwhere(soma).mean(axis=0) if soma.any() else np.argwhere(cell).mean(axis=0)
        soma_r = np.sqrt(soma.sum() / np.pi)
        trees, n_tree = ndi.label(outside, structure=_EIGHT)
        touching = np.unique(trees[ndi.binary_dilation(ring, structure=_EIGHT) & outside])
        n_primary = int((touching > 0).sum())
        nb = _neighbours(outside)
        junctions = (nb >= 3) & outside
        n_branch = int(ndi.label(junctions, structure=_EIGHT)[1])
        endpoints = int(((nb == 1) & outside & ~ndi.binary_dilation(ring, structure=_EIGHT, iterations=2)).sum())
        length_px = _length_px(outside) + n_primary * soma_r
        longest = _geodesic_max(outside, ndi.binary_dilation(ring, structure=_EIGHT) & outside) + soma_r
        pts = np.argwhere(sk)
        dist = np.hypot(pts[:, 0] - cy, pts[:, 1] - cx)
        step = sholl_step_um / pixel_size_um
        radii = np.arange(max(soma_r + 1, step), dist.max() + step if len(dist) else step, step)
        inter = np.array([_ring_crossings(pts, dist, r, cell.shape) for r in radii]) if len(radii) else np.zeros(0)
        radii_um = radii * pixel_size_um
        rows.append(
            {
                "label": int(rp.label),
                "area_um2": float(rp.area * pixel_size_um**2),
                "soma_y": float(cy + y0 - 1),
                "soma_x": float(cx + x0 - 1),
                "soma_area_um2": float(soma.sum() * pixel_size_um**2),
                "skeleton_length_um": float(length_px * pixel_size_um),
                "branch_points": n_branch,
                "endpoints": endpoints,
                "n_primary": n_primary,
                "longest_branch_um": float(longest * pixel_size_um),
                "convex_hull_area_um2": float(rp.area_convex * pixel_size_um**2),
                "solidity": float(rp.solidity),
                "touches_border": int(rp.label) in border,
                "sholl_max_intersections": int(inter.max()) if len(inter) else 0,
                "sholl_critical_radius_um": float(radii_um[int(np.argmax(inter))]) if len(inter) else np.nan,
                "sholl_auc": float(np.trapezoid(inter, radii_um)) if len(inter) > 1 else 0.0,
                "mean_intensity": float(rp.intensity_mean) if image is not None else np.nan,
            }
        )
    cols = ["label", "area_um2", "soma_y", "soma_x", "soma_area_um2", "skeleton_length_um", "branch_points",
            "endpoints", "n_primary", "longest_branch_um", "convex_hull_area_um2", "solidity", "touches_border",
            "sholl_max_intersections", "sholl_critical_radius_um", "sholl_auc", "mean_intensity"]
    return pd.DataFrame(rows, columns=cols)


def sholl_profile(
    labels: np.ndarray,
    pixel_size_um: float,
    *,
    step_um: float = 2.0,
    max_radius_um: float = 40.0,
    soma_min_diameter_um: float = 5.0,
) -> pd.DataFrame:
    """Sholl intersections per radius for every cell (for plotting Sholl curves).

    Returns
    -------
    DataFrame
        Columns ``label``, ``radius_um``, ``intersections``.
    """
    out = []
    radii_um = np.arange(step_um, max_radius_um + step_um / 2, step_um)
    for rp in regionprops(labels):
        cell = np.pad(rp.image, 1)
        soma, sk, _, _ = _cell_skeleton(cell, pixel_size_um, soma_min_diameter_um)
        cy, cx = np.argwhere(soma).mean(axis=0) if soma.any() else np.argwhere(cell).mean(axis=0)
        soma_r = np.sqrt(soma.sum() / np.pi)
        pts = np.argwhere(sk)
        dist = np.hypot(pts[:, 0] - cy, pts[:, 1] - cx)
        for r in radii_um:
            rp_px = r / pixel_size_um
            n = 0 if rp_px <= soma_r else _ring_crossings(pts, dist, rp_px, cell.shape)
            out.append({"label": int(rp.label), "radius_um": float(r), "intersections": n})
    return pd.DataFrame(out, columns=["label", "radius_um", "intersections"])


def skeleton_image(labels: np.ndarray, pixel_size_um: float, *, soma_min_diameter_um: float = 5.0) -> np.ndarray:
    """The pruned skeleton of every cell (as measured), as one boolean image (for QC overlays)."""
    out = np.zeros(labels.shape, bool)
    for rp in regionprops(labels):
        y0, x0, y1, x1 = rp.bbox
        _, sk, _, _ = _cell_skeleton(np.pad(rp.image, 1), pixel_size_um, soma_min_diameter_um)
        out[y0:y1, x0:x1] |= sk[1:-1, 1:-1]
    return out
