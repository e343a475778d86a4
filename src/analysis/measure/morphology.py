"""Microglia morphology: soma, pruned skeleton, branches, endpoints and Sholl profile per cell.

Morphology (:func:`measure_microglia`)
--------------------------------------
* Gaps inside the body of a cell are filled first: a hole (background enclosed by the cell)
  whose rim lies on average at least half the widest process (``process_max_width_um / 2``)
  deep inside the cell, and at least as deep as the hole's inscribed radius (the hole is no
  wider than the material around it), is a gap in a soma or thick trunk (a dim nucleus,
  texture, a threshold dropout), not tissue encircled by processes; each would add a loop,
  junctions and length to the skeleton.  Holes between thin processes that cross or meet
  (thin walls) are kept.
* The soma of each cell is the opening of its mask with a disk of diameter
  ``0.8 * soma_min_diameter_um``, or of half the width of the widest part of the cell if
  that is larger (the soma is the thickest part; thick processes of activated cells are
  not soma); its centroid is the soma centre.
* The skeleton is the 2-D skeleton of the cell mask, pruned of terminal spurs whose
  protrusion beyond the local half-width of their parent process is shorter than
  ``min_branch_length_um``, or no more than 2.5 pixels (the spur a one-pixel bump of the
  outline can give; this matters for coarse pixels only), as outline noise.
* **Soma convention**: the skeleton inside the soma is replaced by straight lines from the
  soma centre to the points where the processes leave the soma (the soma is collapsed to
  its centre).  Hence

  - ``skeleton_length_um`` is the length of the process tree measured from the soma centre:
    pixel steps of 1 (orthogonal) and sqrt(2) (diagonal) outside the soma plus the
    centre-to-exit lines;
  - ``n_primary`` is the number of processes leaving the soma;
  - ``endpoints`` counts process tips;
  - ``branch_points`` counts the forks of the process tree: ``endpoints - n_primary``, as
    every fork of a tree adds one tip to the tips of its primary processes.  It is not read
    from the junction pixels of the digital skeleton: where a process is wider than a pixel
    or two forks lie close together, the thinning makes one junction or two depending on its
    scan direction (on four phantom fields the junction count changed by up to 19 % under
    flips and rotations of the image, this count by up to 11 %), and processes that touch or
    cross in the image (a loop of the skeleton) add junctions that are not forks.  The soma centre, where the primary
    processes meet, is not a branch point (nor is a fork inside the soma);
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

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.draw import line as draw_line
from skimage.measure import regionprops
from skimage.morphology import skeletonize

from analysis.measure.checks import require_pixel_size


__all__ = ["MEASURE_COLUMNS", "measure_microglia", "sholl_profile", "skeleton_image", "border_cells",
           "inner_boundaries"]

log = logging.getLogger(__name__)

_EIGHT = np.ones((3, 3), bool)
_NB_KERNEL = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], np.uint8)


def _label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Maximum of ``values`` per label 0..n (-inf where a label is absent)."""
    out = np.full(n + 1, -np.inf)
    sel = labels > 0
    np.maximum.at(out, labels[sel].ravel(), np.asarray(values, dtype=np.float64)[sel].ravel())
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


def inner_boundaries(labels: np.ndarray, strip_px: int | None = None) -> np.ndarray:
    """Pixels of each object that touch another label or the background (4-connectivity).

    The same mask as ``skimage.segmentation.find_boundaries(labels, mode="inner")``
    (a labelled pixel whose 4-neighbours inside the image are not all of its label), computed
    in strips of ``strip_px`` rows (default ~256 k pixels each) with boolean work arrays only:
    skimage's dilation and erosion make two full-size copies of the label image (at 8000 x
    8000 int32 labels, 0.5 GB).

    Parameters
    ----------
    labels : ndarray of int or bool
        Label image, YX (other dimensions: skimage's function).
    strip_px : int, optional
        Rows per strip.

    Returns
    -------
    ndarray of bool

    Examples
    --------
    >>> lab = np.zeros((4, 5), int); lab[1:4, 1:3] = 1; lab[1:4, 3] = 2
    >>> inner_boundaries(lab).astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 1, 1, 0]])
    >>> inner_boundaries(lab)[2, 2]  # (inside cell 1 but beside cell 2)
    np.True_
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        from skimage.segmentation import find_boundaries

        return find_boundaries(lab, mode="inner")
    h, w = lab.shape
    step = int(strip_px) if strip_px else max(64, (1 << 18) // max(w, 1))
    out = np.zeros((h, w), bool)
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        a, b = max(0, r0 - 1), min(h, r1 + 1)
        block = lab[a:b]
        o = out[r0:r1]
        c = block[r0 - a : r1 - a]
        d = c[:, 1:] != c[:, :-1]  # differs from the right-hand neighbour
        o[:, :-1] |= d
        o[:, 1:] |= d
        del d
        v = block[1:] != block[:-1]  # row i of the block differs from row i + 1
        o[: len(v) - (r0 - a)] |= v[r0 - a :]  # ... from the row below
        top = r0 - a - 1  # v's row for "row r0 differs from the row above" (-1: none above)
        if top >= 0:
            o |= v[top : top + (r1 - r0)]
        else:
            o[1:] |= v[: r1 - r0 - 1]
        del v
        o &= c != 0
    return out


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


def _fill_enclosed_gaps(mask: np.ndarray, min_wall_px: float) -> np.ndarray:
    """``mask`` with the holes that are gaps inside its body filled (not tissue encircled by
    processes).

    A hole is a gap in the cell material (a dim nucleus, texture, a threshold dropout) when
    the material around it is thick and it is no wider than that material: the mean depth of
    its rim (distance from the rim to the outside of the filled cell) is at least
    ``min_wall_px`` (the half-width of the widest process: the hole lies in a soma or a thick
    trunk, not between thin processes) and at least the hole's inscribed radius.  Processes
    that cross or meet enclose background between thin walls; those holes are kept.
    """
    filled = ndi.binary_fill_holes(mask)
    holes = filled & ~mask
    if not holes.any():
        return mask
    lab, n = ndi.label(holes)
    radius = _label_max(ndi.distance_transform_edt(holes), lab, n)
    depth = ndi.distance_transform_edt(filled)
    rim = ndi.grey_dilation(lab, footprint=_EIGHT) * mask  # cell pixels next to each hole
    sel = rim > 0
    wall = np.bincount(rim[sel], weights=depth[sel], minlength=n + 1) / np.maximum(
        np.bincount(rim[sel], minlength=n + 1), 1)
    fill = (wall >= min_wall_px) & (radius <= wall)
    fill[0] = False
    return mask | fill[lab]


#: largest protrusion (pixels) of the spur that a one-pixel bump of a cell's outline gives its
#: skeleton: the bump pixel, the pixel the length counts beyond the spur's last one, and half a
#: pixel because the parent's half-width is measured from pixel centres
_BUMP_PX = 2.5


def _prune(sk: np.ndarray, width: np.ndarray, min_protrusion_px: float, passes: int = 2) -> np.ndarray:
    """Remove terminal spurs: tip branches whose length beyond the half-width of the parent
    process at their junction is shorter than ``min_protrusion_px``, or no longer than the
    spur of a one-pixel bump of the outline (``_BUMP_PX``: matters where the minimum branch
    length is only a pixel or two)."""
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
        protrusion = length - parent_r
        spur = has_tip & touches_junction & ((protrusion < min_protrusion_px) | (protrusion <= _BUMP_PX))
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

    def __init__(self, cell: np.ndarray, px: float, soma_min_diameter_um: float, min_branch_length_um: float,
                 process_max_width_um: float = 2.0):
        # gaps inside the soma or a thick trunk (texture, a dim nucleus, a threshold dropout)
        # would each add a loop to the skeleton; loops between thin processes are kept
        cell = _fill_enclosed_gaps(cell, process_max_width_um / 2 / px)
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
        sk = _prune(sk, width, min_branch_length_um / px)
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
        """(branch points, endpoints) of the collapsed skeleton outside the soma: the tips,
        and the forks of the tree with these tips and primary processes (module docstring)."""
        nb = _neighbours(self.skeleton)
        n_end = int(((nb == 1) & self.skeleton & ~self.soma).sum())
        return max(n_end - self.n_primary, 0), n_end

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


def _cells(labels: np.ndarray, px: float, soma_min_diameter_um: float, min_branch_length_um: float,
           process_max_width_um: float = 2.0):
    for rp in regionprops(labels):
        yield rp, _Cell(np.pad(rp.image, 1), px, soma_min_diameter_um, min_branch_length_um, process_max_width_um)


def measure_microglia(
    labels: np.ndarray,
    image: np.ndarray | None,
    pixel_size_um: float,
    *,
    soma_min_diameter_um: float = 5.0,
    min_branch_length_um: float = 0.6,
    sholl_step_um: float = 2.0,
    process_max_width_um: float = 2.0,
    return_skeleton: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
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
        of the outline and are pruned.  The default, 0.6 um, is two to three times the lateral
        resolution (FWHM) of a confocal or two-photon objective of high NA, below which a
        protrusion is hard to tell from the blur of the outline; it was chosen on the
        simulator's own masks: at 1 um real short twigs went too, more of activated cells',
        whose twigs are shorter, and the ratio of strongly activated to vehicle cells' branch
        points was 0.92-0.94 of the true ratio (0.99 at 0.6 um).  At coarse pixels the
        one-pixel-bump rule (module docstring) prunes more.
    sholl_step_um : float
        Spacing of the Sholl circles (the first at one step from the soma centre).
    process_max_width_um : float
        Widest process (as in :func:`segment_microglia`): holes in a cell whose rim lies
        deeper than half of it inside the cell are gaps in its body, filled before the
        skeletonisation (see the module docstring).
    return_skeleton : bool
        Also return the measured skeleton of every cell as one boolean image (that of
        :func:`skeleton_image`, from the same skeletonisation: for QC overlays without
        skeletonising every cell a second time).

    Returns
    -------
    DataFrame
        One row per cell: ``label``, ``area_um2``, ``soma_y``, ``soma_x`` (soma centre,
        pixels), ``soma_area_um2``, ``skeleton_length_um``, ``branch_points`` (forks of the
        process tree: ``endpoints - n_primary``), ``skeleton_junctions`` (junction clusters of the whole
        cell's skeleton, soma included: Fiji AnalyzeSkeleton's convention), ``endpoints``,
        ``n_primary``, ``longest_branch_um`` (longest path from the soma centre to a tip),
        ``convex_hull_area_um2``, ``solidity`` (area / convex hull area; low = ramified),
        ``touches_border``, ``sholl_max_intersections``, ``sholl_critical_radius_um``
        (radius of the maximum), ``sholl_auc`` (area under the intersections-versus-radius
        curve, um), ``mean_intensity``.  Conventions for the soma and the skeleton are in
        the module docstring.
    skeleton : ndarray of bool
        Only with ``return_skeleton``: the pruned, soma-collapsed skeletons, shape of ``labels``.

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
    >>> _, sk = measure_microglia(lab, None, 0.2, return_skeleton=True)
    >>> bool((sk == skeleton_image(lab, 0.2)).all())
    True
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"measure_microglia needs a 2-D label image, got shape {labels.shape}")
    px = require_pixel_size(pixel_size_um)
    border = border_cells(labels)
    if image is not None and np.ndim(image) == 2:
        # a cell cut by the constant fill of registration or stitching is cut by the field's
        # edge as well (:mod:`analysis.measure.outside`)
        from analysis.measure.outside import not_imaged_mask

        not_imaged = not_imaged_mask(image, px)
        if not_imaged is not None:
            edge = ndi.binary_dilation(not_imaged, np.ones((3, 3), bool)) & (labels > 0)
            border |= {int(v) for v in np.unique(labels[edge])}
    rows = []
    skeleton = np.zeros(labels.shape, bool) if return_skeleton else None
    for rp, c in _cells(labels, px, soma_min_diameter_um, min_branch_length_um, process_max_width_um):
        y0, x0 = rp.bbox[0], rp.bbox[1]
        if skeleton is not None:
            skeleton[y0 : rp.bbox[2], x0 : rp.bbox[3]] |= c.skeleton[1:-1, 1:-1]
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
    table = pd.DataFrame(rows, columns=MEASURE_COLUMNS)
    return (table, skeleton) if return_skeleton else table


def sholl_profile(
    labels: np.ndarray,
    pixel_size_um: float,
    *,
    centre: tuple[float, float] | None = None,
    radii_um: Sequence[float] | np.ndarray | None = None,
    step_um: float = 2.0,
    max_radius_um: float | None = None,
    soma_min_diameter_um: float = 5.0,
    min_branch_length_um: float = 0.6,
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
    min_branch_length_um: float = 0.6,
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
