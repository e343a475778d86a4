"""Terminal fields: ramified microglia, CD68 lysosomes and engulfed PSD95 puncta.

:func:`render_terminal_field` renders a 3-channel maximum projection (PSD95, Iba1, CD68) of
fixed tissue at 0.2 um pixels: random process trees grown from somata, lysosomes inside the
cells and PSD95 puncta engulfed in them, with the exact label image and per-cell morphology.
Optics, camera and conventions: :mod:`analysis.sim.optics`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from analysis.sim.optics import (
    _broad_blur,
    _camera,
    _check_non_negative,
    _check_positive,
    _check_shape,
    _clip_segments_length,
    _Illumination,
    _lognormal,
    PSF_SIGMA_UM,
    _READ_E,
    _render_disks,
    _render_gaussians,
    _ROUNDING,
    _smooth_noise,
    _substeps,
    _wrap,
)
from analysis.sim.neuropil import _PUNCTA_MIN_DIST_UM, _psd95_channel




__all__ = ["TerminalField", "CELL_COLUMNS", "render_terminal_field", "simulated_cells"]

log = logging.getLogger(__name__)

# --- microglia ---------------------------------------------------------------------------
_MG_MIN_SPACING_UM = 20.0
_MG_STEP_UM = 0.5
_MG_SOMA_RADIUS_UM = 4.5
_MG_REACH_UM = (17.0, 22.0)  # process reach beyond the soma edge (territory radius 20-28 um)
_MG_EXTRA_TIPS_PER_PRIMARY = 4.0  # Poisson mean of bifurcations per primary process
_MG_INTERNODE_UM = 4.0  # mean path between bifurcations
_MG_MIN_INTERNODE_UM = 1.5
_MG_WEDGE_MARGIN_UM = 0.8  # half the minimum distance between a cell's own branches
_MG_CELL_GAP_UM = 1.2  # minimum distance between processes (and somata) of different cells
_MG_DIAMETER_UM = (0.3, 1.2)  # process tip and base diameters


@dataclass(frozen=True)
class TerminalField:
    """A rendered 3-channel terminal field (PSD95, Iba1, CD68) and its ground truth.

    Attributes
    ----------
    image : ndarray of uint16, shape (3, Y, X)
        Channel 0 PSD95, 1 Iba1 (microglia), 2 CD68 (lysosomes), in ADU.
    puncta : DataFrame
        PSD95 puncta as in :class:`SynapseField`; engulfed puncta have ``engulfed=True``
        and ``cell`` set to the label of the engulfing cell.
    labels : ndarray of uint16, shape (Y, X)
        True microglia label image, 0 background, labels ``1..n``.
    cells : DataFrame
        One row per cell: ``cell``, ``soma_y``, ``soma_x`` (pixels), ``soma_radius_um``,
        ``skeleton_length_um``, ``branch_points``, ``endpoints``, ``n_primary``,
        ``max_radius_um``, ``area_um2``, ``cd68_area_um2``, ``engulfed_count``,
        ``touches_border``.  Morphology counts only the part of the tree inside the field.
    analysed_mask : ndarray of bool, shape (Y, X)
        False inside voids of the PSD95 channel (neuronal somata, vessels, microglial
        somata).
    analysed_area_um2 : float
        Area of ``analysed_mask``.
    snr : float
        Realised PSD95 signal-to-noise ratio.
    background_noise_sd : float
        PSD95 noise SD (ADU) at the mean background level of the analysed area.
    """

    image: np.ndarray
    puncta: pd.DataFrame
    labels: np.ndarray
    cells: pd.DataFrame
    analysed_mask: np.ndarray
    analysed_area_um2: float
    snr: float
    background_noise_sd: float


CELL_COLUMNS = [
    "cell",
    "soma_y",
    "soma_x",
    "soma_radius_um",
    "skeleton_length_um",
    "branch_points",
    "endpoints",
    "n_primary",
    "max_radius_um",
    "area_um2",
    "cd68_area_um2",
    "engulfed_count",
    "touches_border",
]


# =========================================================================================
# microglia
# =========================================================================================
def _place_somata(rng: np.random.Generator, n: int, shape: tuple[int, int], min_px: float) -> np.ndarray:
    """Sequential inhibition of ``n`` soma centres (pixels) with a minimum spacing."""
    h, w = shape
    out: list[np.ndarray] = []
    tries = 0
    while len(out) < n and tries < 50 * max(n, 1):
        batch = np.column_stack([rng.uniform(0, h - 1, 64), rng.uniform(0, w - 1, 64)])
        for p in batch:
            tries += 1
            if all(np.hypot(*(p - q)) >= min_px for q in out):
                out.append(p)
                if len(out) == n:
                    break
    if len(out) < n:
        log.warning("only %d of %d microglia fit at %.0f px spacing", len(out), n, min_px)
    return np.array(out).reshape(-1, 2)


def _grow_trees(
    rng: np.random.Generator,
    somata_um: np.ndarray,
    soma_r_um: np.ndarray,
    box_um: tuple[np.ndarray, np.ndarray],
    process_length_scale: float,
    branching_scale: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grow the process trees of all cells at once (um coordinates).

    Each cell has 4-6 primary processes starting at the soma centre, each owning an
    angular wedge around the soma; a process grows outward in steps with a slight
    meander, is kept inside its wedge (with a margin, so branches of one cell never
    cross or touch), bifurcates after gamma-distributed internodes while its tip budget
    lasts (children split the wedge and the budget), and stops at its own radius, at the
    image border (+2 um) or before it comes within 1.2 um of another cell (territories
    may interdigitate but never touch).

    Returns
    -------
    seg_cell, seg_parent : (S,) arrays
        Cell index and parent segment (-1 for primaries) of every segment; children are
        numbered after their parents.
    pt_seg, pt_yx : (P,) and (P, 2) arrays
        Segment and position (um) of every point, in order along each segment; a child's
        first point is its parent's last.
    n_primary : (n_cells,) array
    """
    n_cells = len(somata_um)
    ds = _MG_STEP_UM
    pls = process_length_scale
    mean_internode = _MG_INTERNODE_UM * pls / branching_scale
    min_internode = min(_MG_MIN_INTERNODE_UM * pls, 0.5 * mean_internode)

    def internodes(k: int) -> np.ndarray:
        # gamma-distributed path lengths to the next bifurcation (fairly regular)
        return min_internode + rng.gamma(4.0, (mean_internode - min_internode) / 4.0, k)

    lo_box, hi_box = box_um[0] - 2.0, box_um[1] + 2.0

    reach = rng.uniform(*_MG_REACH_UM, n_cells) * pls  # process extent beyond the soma
    n_prim = rng.integers(4, 7, n_cells)
    t_cell, t_head, t_lo, t_hi, t_stop = [], [], [], [], []
    for c in range(n_cells):
        k = n_prim[c]
        base = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(k) / k
        ang = base + rng.uniform(-0.22, 0.22, k) * 2 * np.pi / k
        prev = np.roll(ang, 1) - np.where(np.arange(k) == 0, 2 * np.pi, 0)
        nxt = np.roll(ang, -1) + np.where(np.arange(k) == k - 1, 2 * np.pi, 0)
        t_cell.append(np.full(k, c))
        t_head.append(ang)
        t_lo.append(0.5 * (prev + ang))
        t_hi.append(0.5 * (ang + nxt))
        t_stop.append(soma_r_um[c] + reach[c] * rng.uniform(0.75, 1.0, k))
    cell = np.concatenate(t_cell).astype(np.int64)
    head = np.concatenate(t_head)
    lo = np.concatenate(t_lo)
    hi = np.concatenate(t_hi)
    stop_r = np.concatenate(t_stop)
    n_tips = len(cell)
    seg = np.arange(n_tips)
    pos = somata_um[cell].copy()
    since = -(soma_r_um[cell] + 1.0)  # path since the last node; primaries count from the soma edge
    next_br = internodes(n_tips)
    # tip budget: the number of process tips a primary may end in, shared between the
    # children at every bifurcation (bifurcations per primary = budget - 1 at most)
    budget = 1 + rng.poisson(_MG_EXTRA_TIPS_PER_PRIMARY * branching_scale, n_tips)
    seg_cell = list(cell)
    seg_parent = [-1] * n_tips
    pts_seg, pts_y, pts_x = [seg.copy()], [pos[:, 0].copy()], [pos[:, 1].copy()]

    # occupancy grid (cells of _MG_CELL_GAP_UM): which cell owns the processes there; a
    # tip stops before entering the 3 x 3 neighbourhood of another cell's grid cell
    gap = _MG_CELL_GAP_UM
    g_lo = lo_box - gap
    g_shape = tuple(np.ceil((hi_box - lo_box) / gap).astype(int) + 3)
    owner = np.full(g_shape, -1, dtype=np.int64)
    gc = (np.indices(g_shape).reshape(2, -1).T + 0.5) * gap + g_lo  # grid cell centres
    for c in range(n_cells):  # somata plus a margin belong to their cell
        near = np.hypot(*(gc - somata_um[c]).T) <= soma_r_um[c] * 1.25 + gap
        owner.reshape(-1)[near & (owner.reshape(-1) < 0)] = c
    nb_off = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)])

    def foreign(where: np.ndarray, who: np.ndarray, grid: np.ndarray) -> np.ndarray:
        idx = np.floor((where - g_lo) / gap).astype(np.int64)[:, None, :] + nb_off
        idx = np.clip(idx, 0, np.array(g_shape) - 1)
        vals = grid[idx[..., 0], idx[..., 1]]
        return ((vals >= 0) & (vals != who[:, None])).any(axis=1)
    max_steps = int(np.ceil((soma_r_um.max(initial=0) + _MG_REACH_UM[1] * pls) * 3 / ds)) + 10
    for _ in range(max_steps):
        if n_tips == 0:
            break
        centre = somata_um[cell]
        rel = pos - centre
        r = np.hypot(rel[:, 0], rel[:, 1])
        mid_w = 0.5 * (lo + hi)
        theta = mid_w + _wrap(np.arctan2(rel[:, 0], rel[:, 1]) - mid_w)
        pull = np.where(r > 1.0, _wrap(theta - head), 0.0)
        head = head + rng.normal(0, 0.16, n_tips) + 0.12 * pull
        new = pos + ds * np.column_stack([np.sin(head), np.cos(head)])
        nrel = new - centre
        nr = np.hypot(nrel[:, 0], nrel[:, 1])
        nth = mid_w + _wrap(np.arctan2(nrel[:, 0], nrel[:, 1]) - mid_w)
        # children: the margin to the sibling's wedge grows from the bifurcation on
        margin = np.where(since >= 0, np.minimum(_MG_WEDGE_MARGIN_UM, 0.25 * since + 0.05), _MG_WEDGE_MARGIN_UM)
        m_ang = np.minimum(margin / np.maximum(nr, 1e-6), 0.45 * (hi - lo))
        clamped = np.clip(nth, lo + m_ang, hi - m_ang)
        moved = clamped != nth
        unit = np.column_stack([np.sin(clamped[moved]), np.cos(clamped[moved])])
        new[moved] = centre[moved] + nr[moved, None] * unit
        step_vec = new - pos
        head = np.where(moved, np.arctan2(step_vec[:, 0], step_vec[:, 1]), head)
        ok = np.all((new >= lo_box) & (new <= hi_box), axis=1)
        if n_cells > 1:
            ok &= ~foreign(new, cell, owner)
            # tips of different cells arriving side by side in the same step stop both
            step_grid = np.full(g_shape, -1, dtype=np.int64)
            gi = np.floor((new[ok] - g_lo) / gap).astype(np.int64)
            step_grid[gi[:, 0], gi[:, 1]] = cell[ok]
            ok[ok] = ~foreign(new[ok], cell[ok], step_grid)
            gi = np.floor((new[ok] - g_lo) / gap).astype(np.int64)
            owner[gi[:, 0], gi[:, 1]] = cell[ok]
        pos = np.where(ok[:, None], new, pos)
        since = since + ds
        pts_seg.append(seg[ok])
        pts_y.append(pos[ok, 0])
        pts_x.append(pos[ok, 1])
        alive = ok & (nr < stop_r)

        # bifurcations
        theta_b = mid_w + _wrap(np.arctan2(pos[:, 0] - centre[:, 0], pos[:, 1] - centre[:, 1]) - mid_w)
        room = 1.05 * _MG_WEDGE_MARGIN_UM / np.maximum(nr, 1e-6)
        can = (
            alive
            & (nr > soma_r_um[cell] + 1.5)
            & (since >= next_br)
            & (budget >= 2)
            & (theta_b - lo > room)
            & (hi - theta_b > room)
        )
        br = can
        nb = int(br.sum())
        keep = alive & ~br
        if nb:
            b = np.flatnonzero(br)
            total = np.deg2rad(rng.uniform(30, 70, nb))
            share = rng.uniform(0.0, 0.45, nb)
            wedge_ccw = (hi[b] - theta_b[b]) / (hi[b] - lo[b])
            b_ccw = 1 + rng.binomial(budget[b] - 2, wedge_ccw)
            first_ccw = rng.random(nb) < 0.5
            a_ccw = np.where(first_ccw, share, 1 - share) * total
            a_cw = total - a_ccw
            new_seg = len(seg_cell) + np.arange(2 * nb)
            seg_cell.extend(np.repeat(cell[b], 2).tolist())
            seg_parent.extend(np.repeat(seg[b], 2).tolist())
            rem = np.maximum(stop_r[b] - nr[b], 0)
            c_stop = nr[b, None] + np.maximum(rem[:, None] * rng.uniform(0.7, 1.2, (nb, 2)), 2.0 * pls)
            k_cell = np.repeat(cell[b], 2)
            k_head = np.column_stack([head[b] + a_ccw, head[b] - a_cw]).ravel()
            k_lo = np.column_stack([theta_b[b], lo[b]]).ravel()
            k_hi = np.column_stack([hi[b], theta_b[b]]).ravel()
            k_pos = np.repeat(pos[b], 2, axis=0)
            pts_seg.append(new_seg)
            pts_y.append(k_pos[:, 0])
            pts_x.append(k_pos[:, 1])
            cell = np.concatenate([cell[keep], k_cell])
            head = np.concatenate([head[keep], k_head])
            lo = np.concatenate([lo[keep], k_lo])
            hi = np.concatenate([hi[keep], k_hi])
            stop_r = np.concatenate([stop_r[keep], c_stop.ravel()])
            seg = np.concatenate([seg[keep], new_seg])
            pos = np.concatenate([pos[keep], k_pos])
            since = np.concatenate([since[keep], np.zeros(2 * nb)])
            next_br = np.concatenate([next_br[keep], internodes(2 * nb)])
            budget = np.concatenate([budget[keep], np.column_stack([b_ccw, budget[b] - b_ccw]).ravel()])
        else:
            cell, head, lo, hi, stop_r = cell[keep], head[keep], lo[keep], hi[keep], stop_r[keep]
            seg, pos, since, next_br, budget = seg[keep], pos[keep], since[keep], next_br[keep], budget[keep]
        n_tips = len(cell)
    step_id = np.concatenate([np.full(len(s), i) for i, s in enumerate(pts_seg)])
    pt_seg = np.concatenate(pts_seg)
    srt = np.lexsort((step_id, pt_seg))
    yx = np.column_stack([np.concatenate(pts_y), np.concatenate(pts_x)])[srt]
    return np.array(seg_cell, dtype=np.int64), np.array(seg_parent, dtype=np.int64), pt_seg[srt], yx, n_prim


def _prune_stubs(
    seg_parent: np.ndarray, pt_seg: np.ndarray, yx: np.ndarray, px: float, min_um: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop side branches shorter than ``min_um`` (stopped right after a bifurcation).

    Such stubs would hide inside the parent's tube and fake a branch point.  Returns the
    remaining points and the number of remaining children of every segment; a node with
    one remaining child is a plain continuation, not a branch point.
    """
    n_seg = len(seg_parent)
    same = pt_seg[1:] == pt_seg[:-1]
    step = np.where(same, np.hypot(*(yx[1:] - yx[:-1]).T), 0.0) * px
    seg_len = np.bincount(pt_seg[:-1], weights=step, minlength=n_seg)
    n_children = np.bincount(seg_parent[seg_parent >= 0], minlength=n_seg)
    kept = np.ones(n_seg, dtype=bool)
    for s in range(n_seg - 1, -1, -1):  # children come after their parents
        # a stub of whole steps adding up to ``min_um`` is kept on every CPU (its summed
        # length is min_um to within rounding, which differs between vector code paths)
        if seg_parent[s] >= 0 and n_children[s] == 0 and seg_len[s] < min_um * (1 - _ROUNDING):
            kept[s] = False
            n_children[seg_parent[s]] -= 1
    keep_pt = kept[pt_seg]
    return pt_seg[keep_pt], yx[keep_pt], n_children


def _soma_geometry(rng: np.random.Generator, n: int, soma_scale: float) -> dict[str, np.ndarray]:
    r = np.clip(rng.normal(_MG_SOMA_RADIUS_UM, 0.35, n), 3.6, 5.4) * soma_scale
    ecc = rng.uniform(0.05, 0.18, n)
    return {
        "r": r,
        "a": r * (1 + ecc),
        "b": r * (1 - ecc),
        "phi": rng.uniform(0, np.pi, n),
        "h3": rng.uniform(0.0, 0.06, n),
        "p3": rng.uniform(0, 2 * np.pi, n),
        "nucleus_shift": rng.uniform(0.0, 0.25, n),
        "nucleus_angle": rng.uniform(0, 2 * np.pi, n),
    }


def _soma_radius_at(geo: dict[str, np.ndarray], c: int, theta: np.ndarray) -> np.ndarray:
    """Polar radius (um) of soma ``c`` at angle ``theta`` (smooth, slightly elliptical)."""
    t = theta - geo["phi"][c]
    a, b = geo["a"][c], geo["b"][c]
    ell = a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)
    return ell * (1 + geo["h3"][c] * np.cos(3 * theta - geo["p3"][c]))


@dataclass(frozen=True)
class _Cells:
    labels: np.ndarray
    intensity: np.ndarray  # unblurred Iba1 signal, relative (soma ~1.3, processes ~1)
    soma_mask: np.ndarray
    table: pd.DataFrame
    somata_px: np.ndarray
    soma_r_um: np.ndarray


def _microglia(
    rng: np.random.Generator,
    shape: tuple[int, int],
    px: float,
    microglia_per_mm2: float,
    process_length_scale: float,
    branching_scale: float,
    soma_scale: float,
) -> _Cells:
    """Place, grow and rasterise the microglia of a field and measure their truth."""
    h, w = shape
    n_exp = microglia_per_mm2 * h * w * px**2 * 1e-6
    somata = _place_somata(rng, int(rng.poisson(n_exp)), shape, _MG_MIN_SPACING_UM / px)
    n = len(somata)
    geo = _soma_geometry(rng, n, soma_scale)
    labels = np.zeros(shape, dtype=np.uint16)
    intensity = np.zeros(shape)
    soma_mask = np.zeros(shape, dtype=bool)
    if n == 0:
        empty = pd.DataFrame({c: pd.Series(dtype=float) for c in CELL_COLUMNS})
        return _Cells(labels, intensity, soma_mask, _cell_dtypes(empty), somata, geo["r"])

    box = (np.array([-0.5, -0.5]) * px, np.array([h - 0.5, w - 0.5]) * px)
    seg_cell, seg_parent, pt_seg, yx_um, n_prim = _grow_trees(
        rng, somata * px, geo["r"], box, process_length_scale, branching_scale
    )
    yx = yx_um / px
    n_seg = len(seg_cell)
    pt_seg, yx, n_children = _prune_stubs(seg_parent, pt_seg, yx, px)

    # --- per-segment geometry: lengths, downstream length, path distance -------------
    same = pt_seg[1:] == pt_seg[:-1]
    step = np.where(same, np.hypot(*(yx[1:] - yx[:-1]).T), 0.0) * px
    seg_len = np.bincount(pt_seg[:-1], weights=step, minlength=n_seg)
    downstream = seg_len.copy()
    for s in range(n_seg - 1, -1, -1):  # children are created after their parents
        if seg_parent[s] >= 0:
            downstream[seg_parent[s]] += downstream[s]
    path_start = np.zeros(n_seg)
    for s in range(n_seg):
        if seg_parent[s] >= 0:
            path_start[s] = path_start[seg_parent[s]] + seg_len[seg_parent[s]]
    cum = np.concatenate([[0.0], np.cumsum(step)])
    first = np.r_[True, ~same]
    along = cum - np.maximum.accumulate(np.where(first, cum, 0.0))  # distance from segment start
    pt_down = downstream[pt_seg] - along
    pt_path = path_start[pt_seg] + along
    pt_cell = seg_cell[pt_seg]

    # --- widths, brightness and dense points for rasterisation ---------------------------
    ref = np.array([downstream[(seg_cell == c) & (seg_parent < 0)].max() for c in range(n)])
    d_tip, d_base = _MG_DIAMETER_UM
    diam = d_tip + (d_base - d_tip) * np.clip(pt_down / ref[pt_cell], 0, 1) ** 0.7
    # primary processes leave the soma as cones (about 2.5 um wide at the soma edge)
    rel = yx - somata[pt_cell]
    beyond = np.hypot(rel[:, 0], rel[:, 1]) * px
    for c in range(n):
        on = pt_cell == c
        beyond[on] -= _soma_radius_at(geo, c, np.arctan2(rel[on, 0], rel[on, 1]))
    diam += 1.3 * np.exp(-np.maximum(beyond, 0.0) / 1.2) * (seg_parent[pt_seg] < 0)
    max_path = np.array([pt_path[pt_cell == c].max() for c in range(n)])
    cell_gain = _lognormal(rng, n, 0.15)
    bright = cell_gain[pt_cell] * (1.0 - 0.35 * pt_path / np.maximum(max_path[pt_cell], 1e-9))
    dense_idx, dense_t = _densify_index(pt_seg, yx, max_step=0.5)
    j0 = dense_idx
    j1 = np.minimum(dense_idx + 1, len(yx) - 1)
    dy = yx[j0] + dense_t[:, None] * (yx[j1] - yx[j0])
    d_rad = 0.5 * (diam[j0] + dense_t * (diam[j1] - diam[j0])) / px
    # varicosities: smooth brightness modulation along the processes (about 1 um)
    bead = ndi.gaussian_filter1d(rng.standard_normal(len(dy)), 0.5 / (0.5 * px), mode="wrap")
    bead /= max(float(bead.std()), 1e-9)
    d_bright = (bright[j0] + dense_t * (bright[j1] - bright[j0])) * np.clip(1.0 + 0.2 * bead, 0.5, 1.6)
    depth, owner, proc_int = _tubes(shape, dy, d_rad, d_bright, pt_cell[j0])

    # --- somata --------------------------------------------------------------------------
    soma_int = np.zeros(shape)
    for c in range(n):
        rmax = geo["a"][c] * (1 + geo["h3"][c]) / px + 2
        y0, y1 = max(0, int(somata[c, 0] - rmax)), min(h, int(somata[c, 0] + rmax) + 2)
        x0, x1 = max(0, int(somata[c, 1] - rmax)), min(w, int(somata[c, 1] + rmax) + 2)
        yy = np.arange(y0, y1)[:, None] - somata[c, 0]
        xx = np.arange(x0, x1)[None, :] - somata[c, 1]
        rho = np.hypot(yy, xx)
        edge = _soma_radius_at(geo, c, np.arctan2(yy, xx)) / px
        inside = rho <= edge
        soma_mask[y0:y1, x0:x1] |= inside
        score = np.where(inside, rho - edge, np.inf)
        win = score < depth[y0:y1, x0:x1]
        depth[y0:y1, x0:x1][win] = score[win]
        owner[y0:y1, x0:x1][win] = c
        # Iba1 fills the cytoplasm; the nucleus (about half the soma) is a little dimmer
        shift = geo["nucleus_shift"][c] * geo["r"][c] / px
        ny_, nx_ = yy - shift * np.sin(geo["nucleus_angle"][c]), xx - shift * np.cos(geo["nucleus_angle"][c])
        nucleus = np.clip((0.55 * edge - np.hypot(ny_, nx_)) / (0.6 / px) + 0.5, 0, 1)
        soft = np.clip(edge - rho + 0.5, 0, 1) * cell_gain[c] * 1.3 * (1 - 0.25 * nucleus)
        soma_int[y0:y1, x0:x1] = np.maximum(soma_int[y0:y1, x0:x1], soft)

    intensity = np.maximum(proc_int, soma_int)
    labels = (owner + 1).astype(np.uint16)  # owner -1 (no cell) becomes 0

    # --- truth per cell, inside the field only ----------------------------------------------
    lo_px, hi_px = np.array([-0.5, -0.5]), np.array([h - 0.5, w - 0.5])
    seg_start = np.flatnonzero(first)
    seg_end = np.r_[seg_start[1:], len(pt_seg)] - 1
    p0, p1 = yx[:-1][same], yx[1:][same]
    clipped = _clip_segments_length(p0, p1, lo_px, hi_px) * px
    length = np.bincount(pt_cell[:-1][same], weights=clipped, minlength=n)
    end_yx = yx[seg_end]
    end_in = np.all((end_yx >= lo_px) & (end_yx < hi_px), axis=1)
    seg_ids = pt_seg[seg_end]
    branch = np.bincount(seg_cell[seg_ids], weights=(n_children[seg_ids] >= 2) & end_in, minlength=n)
    tips = np.bincount(seg_cell[seg_ids], weights=(n_children[seg_ids] == 0) & end_in, minlength=n)
    pin = np.all((yx >= lo_px) & (yx < hi_px), axis=1)
    rad = np.hypot(*(yx - somata[pt_cell]).T) * px
    max_r = np.array([rad[pin & (pt_cell == c)].max(initial=0.0) for c in range(n)])
    lab_id = np.arange(1, n + 1)
    area = ndi.sum_labels(np.ones(shape), labels, lab_id) * px**2
    edge_lab = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    table = pd.DataFrame(
        {
            "cell": lab_id,
            "soma_y": somata[:, 0],
            "soma_x": somata[:, 1],
            "soma_radius_um": geo["r"],
            "skeleton_length_um": length,
            "branch_points": branch,
            "endpoints": tips,
            "n_primary": n_prim,
            "max_radius_um": max_r,
            "area_um2": area,
            "cd68_area_um2": 0.0,
            "engulfed_count": 0,
            "touches_border": np.isin(lab_id, edge_lab),
        }
    )
    return _Cells(labels, intensity, soma_mask, _cell_dtypes(table), somata, geo["r"])


def _cell_dtypes(table: pd.DataFrame) -> pd.DataFrame:
    ints = ["cell", "branch_points", "endpoints", "n_primary", "engulfed_count"]
    out = table[CELL_COLUMNS].copy()
    for c in CELL_COLUMNS:
        out[c] = out[c].astype(np.int64 if c in ints else bool if c == "touches_border" else float)
    return out.reset_index(drop=True)


def _densify_index(pt_seg: np.ndarray, yx: np.ndarray, max_step: float) -> tuple[np.ndarray, np.ndarray]:
    """Index of the starting point and fraction along each step for dense sampling."""
    same = pt_seg[1:] == pt_seg[:-1]
    length = np.hypot(*(yx[1:] - yx[:-1]).T)
    nsub = np.where(same, _substeps(length, max_step), 1)
    src = np.repeat(np.arange(len(nsub)), nsub)
    t = (np.arange(len(src)) - np.repeat(np.cumsum(nsub) - nsub, nsub)) / nsub[src]
    t = np.where(same[src], t, 0.0)
    return np.append(src, len(yx) - 1), np.append(t, 0.0)


def _tubes(
    shape: tuple[int, int], yx: np.ndarray, radius_px: np.ndarray, bright: np.ndarray, cell: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Union of disks around dense skeleton points (pixels), with anti-aliased intensity.

    Radii are quantised down to classes (0.5 px steps below 3 px, 1 px above).  For each
    cell and class, one Euclidean distance transform over the bounding box of the seeds
    (every point with at least that radius) gives the tube (distance <= class radius)
    and an intensity falling from 1 at the axis to 0 half a pixel beyond the class
    radius, scaled by the brightness of the nearest seed.

    Returns the depth (distance minus radius, <= 0 inside a tube, inf elsewhere), the
    cell owning each pixel (the deepest tube; -1 outside) and the intensity.
    """
    h, w = shape
    if len(yx) == 0:
        return np.full(shape, np.inf), np.full(shape, -1, dtype=np.int64), np.zeros(shape)
    pad = int(np.ceil(radius_px.max())) + 2
    H, W = h + 2 * pad, w + 2 * pad
    iy = np.rint(yx[:, 0]).astype(np.int64) + pad
    ix = np.rint(yx[:, 1]).astype(np.int64) + pad
    ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    iy, ix, rad, br, cl = iy[ok], ix[ok], radius_px[ok], bright[ok], cell[ok]
    rq = np.where(rad < 3, np.floor(rad * 2) / 2, np.floor(rad))
    rq = np.maximum(rq, 0.5)
    depth = np.full((H, W), np.inf)
    owner = np.full((H, W), -1, dtype=np.int64)
    inten = np.zeros((H, W))
    for c in np.unique(cl):
        in_c = cl == c
        for r in np.unique(rq[in_c]):
            sel = in_c & (rq >= r)
            sy, sx, sb = iy[sel], ix[sel], br[sel]
            m = int(np.ceil(r)) + 2
            y0, y1 = max(sy.min() - m, 0), min(sy.max() + m + 1, H)
            x0, x1 = max(sx.min() - m, 0), min(sx.max() + m + 1, W)
            seed_b = np.zeros((y1 - y0, x1 - x0))
            order = np.argsort(sb)  # the brightest point wins where points share a pixel
            seed_b[sy[order] - y0, sx[order] - x0] = sb[order]
            free = np.ones(seed_b.shape, dtype=bool)
            free[sy - y0, sx - x0] = False
            dist, (ny, nx) = ndi.distance_transform_edt(free, return_indices=True)
            score = dist - r  # <= 0 inside the tube; the deepest tube owns the pixel
            win = (score <= 0) & (score < depth[y0:y1, x0:x1])
            depth[y0:y1, x0:x1][win] = score[win]
            owner[y0:y1, x0:x1][win] = c
            val = np.clip(r + 0.5 - dist, 0, 1) * seed_b[ny, nx]
            np.maximum(inten[y0:y1, x0:x1], val, out=inten[y0:y1, x0:x1])
    sl = (slice(pad, pad + h), slice(pad, pad + w))
    return depth[sl], owner[sl], inten[sl]


# =========================================================================================
# lysosomes and engulfment
# =========================================================================================
@dataclass(frozen=True)
class _Lysosomes:
    y: np.ndarray  # blob centres (pixels)
    x: np.ndarray
    rho_px: np.ndarray  # radius of the lysosome disk (its edge; defines the CD68 area)
    cell: np.ndarray  # label of the host cell
    area_um2: np.ndarray  # union of the disks per cell (index = label - 1)


def _lysosomes(rng: np.random.Generator, cells: _Cells, px: float, area_fraction: float) -> _Lysosomes:
    """CD68 blobs inside each cell, concentrated in the soma and proximal processes.

    Lysosomes are disks of radius 0.45-0.9 um (phagolysosomes), added one by one until the
    union of the disks (rasterised at pixel centres) reaches ``area_fraction`` of the cell
    label area; every disk lies entirely inside the cell's label.
    """
    labels = cells.labels
    h, w = labels.shape
    n = len(cells.table)
    out_y, out_x, out_r, out_c = [], [], [], []
    area = np.zeros(n)
    for c in range(n):
        lab = c + 1
        target_px = area_fraction * cells.table["area_um2"].iat[c] / px**2
        if target_px <= 0:
            continue
        cy, cx = cells.somata_px[c]
        half = int(np.ceil((1.3 * cells.soma_r_um[c] + 6.0) / px))
        y0, y1 = max(0, int(cy) - half), min(h, int(cy) + half + 1)
        x0, x1 = max(0, int(cx) - half), min(w, int(cx) + half + 1)
        mine = np.pad(labels[y0:y1, x0:x1] == lab, 1)  # padding: outside the crop is outside
        inner = ndi.distance_transform_edt(mine)
        py, pxx = np.nonzero(mine)
        rr = np.hypot(py - 1 + y0 - cy, pxx - 1 + x0 - cx) * px
        weight = np.exp(-np.maximum(rr - cells.soma_r_um[c], 0.0) / 1.5)
        union = np.zeros(mine.shape, dtype=bool)
        got = 0
        for _blob in range(200):
            rho = rng.uniform(0.45, 0.9) / px
            fits = inner[py, pxx] > rho + 0.75
            if not fits.any():
                rho = 0.45 / px
                fits = inner[py, pxx] > rho + 0.75
                if not fits.any():
                    break
            p = weight * fits
            k = rng.choice(len(py), p=p / p.sum())
            by, bx = py[k] + rng.uniform(-0.5, 0.5), pxx[k] + rng.uniform(-0.5, 0.5)
            r0 = int(np.ceil(rho)) + 1
            wy = np.arange(max(0, int(by) - r0), min(mine.shape[0], int(by) + r0 + 2))
            wx = np.arange(max(0, int(bx) - r0), min(mine.shape[1], int(bx) + r0 + 2))
            disk = (wy[:, None] - by) ** 2 + (wx[None, :] - bx) ** 2 <= rho**2
            win = union[wy[0] : wy[-1] + 1, wx[0] : wx[-1] + 1]
            new = got + int((disk & ~win).sum())
            if new - target_px > target_px - got:  # this blob would overshoot more than it fills
                break
            win |= disk
            got = new
            out_y.append(by - 1 + y0)
            out_x.append(bx - 1 + x0)
            out_r.append(rho)
            out_c.append(lab)
            if got >= target_px:
                break
        area[c] = got * px**2
    return _Lysosomes(
        np.array(out_y, float),
        np.array(out_x, float),
        np.array(out_r, float),
        np.array(out_c, dtype=np.int64),
        area,
    )


def _engulfed_positions(
    rng: np.random.Generator, lys: _Lysosomes, n_cells: int, per_cell: float, px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson(``per_cell``) puncta per cell, each inside one of the cell's CD68 disks."""
    ys, xs, cs = [], [], []
    min_px = _PUNCTA_MIN_DIST_UM / px
    for lab in range(1, n_cells + 1):
        k = rng.poisson(per_cell)
        blobs = np.flatnonzero(lys.cell == lab)
        if k == 0 or len(blobs) == 0:
            continue
        wgt = lys.rho_px[blobs] ** 2
        placed: list[tuple[float, float]] = []
        for _ in range(k):
            for _try in range(30):
                b = blobs[rng.choice(len(blobs), p=wgt / wgt.sum())]
                reach = max(lys.rho_px[b] - 0.75, 0.0)  # the nearest pixel stays in the disk
                rad = reach * np.sqrt(rng.uniform())
                ang = rng.uniform(0, 2 * np.pi)
                p = (lys.y[b] + rad * np.sin(ang), lys.x[b] + rad * np.cos(ang))
                if all(np.hypot(p[0] - q[0], p[1] - q[1]) >= min_px for q in placed):
                    placed.append(p)
                    break
        ys += [p[0] for p in placed]
        xs += [p[1] for p in placed]
        cs += [lab] * len(placed)
    return np.array(ys, float), np.array(xs, float), np.array(cs, dtype=np.int64)


# =========================================================================================
# public: the generator's cells without images
# =========================================================================================
def simulated_cells(
    *,
    microglia_per_mm2: float,
    process_length_scale: float,
    branching_scale: float,
    soma_scale: float,
    fields: int,
    seed: int | tuple[int, ...] = 0,
    shape: tuple[int, int] = (2048, 2048),
    pixel_size_um: float = 0.2,
) -> pd.DataFrame:
    """True per-cell values of the cells :func:`render_terminal_field` would draw, without images.

    The cells are placed, grown and measured exactly as in a terminal field (the same
    generator: soma placement, process trees, skeleton length and branch points of the
    rasterised tree), in ``fields`` fields of ``shape``; cells that touch a field's border are
    left out (their processes are cut by the edge, as the analysis leaves them out).  Used to
    know what the rendered cells' morphology is at given generator settings: process
    territories, wedges and crowding make it differ from the settings' multipliers.

    Parameters
    ----------
    microglia_per_mm2, process_length_scale, branching_scale, soma_scale : float
        As in :func:`render_terminal_field`.
    fields : int
        Number of fields (field ``k`` draws from ``default_rng([*seed, k])``).
    seed : int or tuple of int
        Seed; the same seed gives the same soma layout and random stream at any settings
        (common random numbers, so ratios between settings have small Monte-Carlo error).
    shape : (int, int)
        Field size in pixels.
    pixel_size_um : float
        Pixel size in um.

    Returns
    -------
    DataFrame
        :data:`CELL_COLUMNS` of the interior cells, plus ``field``.
    """
    seeds = (seed,) if np.isscalar(seed) else tuple(seed)
    tables = []
    for k in range(int(fields)):
        rng = np.random.default_rng([*seeds, k])
        cells = _microglia(rng, shape, pixel_size_um, microglia_per_mm2, process_length_scale, branching_scale,
                           soma_scale).table
        tables.append(cells[~cells["touches_border"].astype(bool)].assign(field=k))
    return pd.concat(tables, ignore_index=True)


# =========================================================================================
# public: terminal field
# =========================================================================================
def render_terminal_field(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (512, 512),
    pixel_size_um: float = 0.2,
    density_per_100um2: float = 40.0,
    microglia_per_mm2: float = 400.0,
    process_length_scale: float = 1.0,
    branching_scale: float = 1.0,
    soma_scale: float = 1.0,
    engulfed_per_cell: float = 2.0,
    cd68_area_fraction: float = 0.04,
    snr: float = 8.0,
) -> TerminalField:
    """Render one 3-channel terminal field (PSD95, Iba1, CD68) with its ground truth.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random draw; the same generator state gives the same field.
    shape : (int, int)
        Image size (Y, X) in pixels.
    pixel_size_um : float
        Pixel size in um.
    density_per_100um2 : float
        Expected PSD95 puncta per 100 um^2 of analysed area (Poisson count).
    microglia_per_mm2 : float
        Expected number of microglia somata per mm^2 of field (Poisson count, placed with
        a minimum spacing of 20 um).
    process_length_scale : float
        Multiplies all process lengths (territory radius and internodes); activated
        microglia have values < 1.  The branching topology does not depend on it.
    branching_scale : float
        Multiplies the branching probability: the expected number of bifurcations per
        primary process and the bifurcation rate per um (activated: < 1).
    soma_scale : float
        Multiplies the soma radius (activated: > 1).
    engulfed_per_cell : float
        Poisson mean of PSD95 puncta engulfed in each cell's CD68 lysosomes.
    cd68_area_fraction : float
        Target CD68 area as a fraction of the cell label area.
    snr : float
        Target PSD95 signal-to-noise ratio (module docstring, :data:`SNR_LEVELS`).

    Returns
    -------
    TerminalField
        The uint16 (3, Y, X) image and the ground truth.

    Notes
    -----
    Each microglia has a slightly elliptical soma (radius ~4.5 um x ``soma_scale``) and
    4-6 primary processes grown from the soma centre as a random tree: outward steps with
    a slight meander, bifurcations of 30-70 degrees, tapering from 1.2 um to 0.3 um
    diameter with the length of tree beyond each point (primaries widen into cones at
    the soma).  A cell's processes never cross or touch each other, and a process stops
    before it comes within 1.2 um of another cell, so territories interdigitate without
    contact and the label image (the soma and process tubes of each cell) is exactly
    what is drawn.  ``skeleton_length_um`` is the length of the tree from the
    soma centre inside the field; ``branch_points`` and ``endpoints`` count bifurcations
    and process tips inside the field (cut processes do not end in a tip);
    ``max_radius_um`` is the largest distance of a tree point inside the field from the
    soma centre; ``touches_border`` is true when the label reaches the image edge.
    CD68 area is the union of the lysosome disks (radius 0.45-0.9 um, uniform CD68 inside,
    blurred by the PSF), all inside the label.

    Examples
    --------
    >>> import numpy as np
    >>> from analysis.sim.phantoms import render_terminal_field
    >>> fld = render_terminal_field(np.random.default_rng(1))
    >>> fld.image.shape
    (3, 512, 512)
    >>> int(fld.labels.max()) == len(fld.cells)
    True
    """
    shape = _check_shape(shape)
    _check_positive(
        pixel_size_um=pixel_size_um,
        snr=snr,
        process_length_scale=process_length_scale,
        branching_scale=branching_scale,
        soma_scale=soma_scale,
    )
    _check_non_negative(
        density_per_100um2=density_per_100um2,
        microglia_per_mm2=microglia_per_mm2,
        engulfed_per_cell=engulfed_per_cell,
        cd68_area_fraction=cd68_area_fraction,
    )
    if cd68_area_fraction > 0.5:
        raise ValueError(f"cd68_area_fraction must be <= 0.5, got {cd68_area_fraction!r}")
    px = pixel_size_um
    cells = _microglia(rng, shape, px, microglia_per_mm2, process_length_scale, branching_scale, soma_scale)
    n_cells = len(cells.table)
    lys = _lysosomes(rng, cells, px, cd68_area_fraction)
    eng = _engulfed_positions(rng, lys, n_cells, engulfed_per_cell, px)
    psd = _psd95_channel(
        rng, shape, px, density_per_100um2, snr, extra_void=cells.soma_mask, engulfed=eng
    )

    # Iba1: processes clearly visible (SNR ~15 for thick processes, tips dimmer)
    b1 = rng.uniform(6.0, 12.0)
    a1 = 15.0 * np.sqrt(b1 + _READ_E**2)
    cell_sig = ndi.gaussian_filter(cells.intensity, 0.15 / px) + 0.12 * _broad_blur(cells.intensity, 1.5 / px)
    bg1 = b1 * (1.0 + 0.15 * _smooth_noise(rng, shape, 8.0 / px))
    iba1 = _Illumination(rng, shape).image * (bg1 + a1 * cell_sig)

    # CD68: moderate SNR, lysosomes inside cells plus sparse dim nonspecific blobs
    b2 = rng.uniform(6.0, 12.0)
    a2 = 7.0 * np.sqrt(b2 + _READ_E**2)
    k_ns = rng.poisson(1.5e-3 * shape[0] * shape[1] * px**2)
    ns_y, ns_x = rng.uniform(-0.5, shape[0] - 0.5, k_ns), rng.uniform(-0.5, shape[1] - 0.5, k_ns)
    lys_a = a2 * _lognormal(rng, len(lys.y), 0.35)
    ns_a = 0.3 * a2 * _lognormal(rng, k_ns, 0.4)
    ns_s = rng.uniform(0.3, 0.5, k_ns) / px
    diffuse = 0.06 * a2 * ndi.gaussian_filter(cells.soma_mask.astype(float), 0.5 / px)
    bg2 = b2 * (1.0 + 0.1 * _smooth_noise(rng, shape, 5.0 / px))
    blobs = _render_disks(shape, lys.y, lys.x, lys_a, lys.rho_px, PSF_SIGMA_UM / px)
    blobs += _render_gaussians(shape, ns_y, ns_x, ns_a, ns_s)
    cd68 = _Illumination(rng, shape).image * (bg2 + diffuse + blobs)

    image = np.stack([_camera(rng, psd.electrons), _camera(rng, iba1), _camera(rng, cd68)])
    table = cells.table.copy()
    table["cd68_area_um2"] = lys.area_um2
    table["engulfed_count"] = np.bincount(eng[2], minlength=n_cells + 1)[1:].astype(np.int64)
    log.debug(
        "terminal field %s: %d cells, %d puncta (%d engulfed), snr %.2f",
        shape,
        n_cells,
        len(psd.puncta),
        len(eng[0]),
        psd.snr,
    )
    return TerminalField(
        image, psd.puncta, cells.labels, table, psd.analysed, psd.area_um2, psd.snr, psd.noise_sd_adu
    )
