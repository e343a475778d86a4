"""Synthetic confocal fields with exact ground truth (the images of the simulated study).

Two kinds of field are rendered:

* :func:`render_synapse_field` — a single PSD95 channel: puncta (Gaussian spots of varied
  size and brightness, seen through a confocal PSF), partly clustered along dendrite shafts,
  with touching neighbours, puncta-free voids (neuronal somata, vessels), a textured
  neuropil background, out-of-focus haze, uneven illumination and Poisson-Gaussian camera
  noise.
* :func:`render_terminal_field` — a max projection with PSD95, Iba1 (ramified microglia:
  soma and tapering, branched processes) and CD68 (lysosomes inside microglia) channels;
  some PSD95 puncta lie inside CD68 inside a cell: the engulfed synapses.

Signal-to-noise ratio (SNR) is defined as the mean in-focus peak amplitude of a punctum
(photo-electrons above the local background, at unit illumination) divided by the SD of the
background noise (shot noise of the mean background plus read noise, in electrons).
Amplitudes are scaled so that the realised SNR equals the requested one.

All randomness comes from the ``rng`` argument: the same generator state gives identical
arrays and tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

__all__ = ["SNR_LEVELS", "SynapseField", "TerminalField", "render_synapse_field", "render_terminal_field"]

log = logging.getLogger(__name__)

#: Named SNR levels (see the module docstring for the definition).
SNR_LEVELS: dict[str, float] = {"high": 15.0, "default": 8.0, "low": 4.5, "hard": 3.0}

PSF_SIGMA_UM = 0.10  # lateral PSF of a 1.3-1.4 NA confocal (FWHM ~0.24 um)
BACKGROUND_E = 20.0  # mean background, photo-electrons per pixel
GAIN_ADU_PER_E = 2.0
READ_NOISE_ADU = 3.0
OFFSET_ADU = 100.0
PUNCTA_COLUMNS = ["y", "x", "amplitude", "sigma_um", "engulfed", "cell"]
_HWHM = float(np.sqrt(2 * np.log(2)))  # half width at half maximum of a Gaussian, in sigmas


@dataclass(frozen=True)
class SynapseField:
    """A rendered PSD95 field and its truth (see :func:`render_synapse_field`)."""

    image: np.ndarray
    puncta: pd.DataFrame
    analysed_mask: np.ndarray
    analysed_area_um2: float
    snr: float
    background_noise_sd: float


@dataclass(frozen=True)
class TerminalField:
    """A rendered 3-channel terminal field and its truth (see :func:`render_terminal_field`)."""

    image: np.ndarray
    puncta: pd.DataFrame
    labels: np.ndarray
    cells: pd.DataFrame
    analysed_mask: np.ndarray
    analysed_area_um2: float
    snr: float
    background_noise_sd: float


# --------------------------------------------------------------------------- helpers


def _noise_sd_e() -> float:
    return float(np.sqrt(BACKGROUND_E + (READ_NOISE_ADU / GAIN_ADU_PER_E) ** 2))


def _add_gaussians(
    img: np.ndarray, y: np.ndarray, x: np.ndarray, amp: np.ndarray, sigma_px: np.ndarray
) -> None:
    """Add isotropic Gaussians (peak ``amp``) to ``img`` in place, vectorised over spots."""
    if len(y) == 0:
        return
    r = int(np.ceil(4 * float(np.max(sigma_px))))
    off = np.arange(-r, r + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    cy = np.rint(y).astype(int)[:, None]
    cx = np.rint(x).astype(int)[:, None]
    py = cy + oy.ravel()[None, :]
    px = cx + ox.ravel()[None, :]
    d2 = (py - y[:, None]) ** 2 + (px - x[:, None]) ** 2
    val = amp[:, None] * np.exp(-d2 / (2 * sigma_px[:, None] ** 2))
    ok = (py >= 0) & (py < img.shape[0]) & (px >= 0) & (px < img.shape[1])
    np.add.at(img, (py[ok], px[ok]), val[ok])


def _illumination(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Smooth multiplicative illumination: a gradient plus vignetting, ~0.75-1.2."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    yy = yy / shape[0] - 0.5
    xx = xx / shape[1] - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    grad = rng.uniform(0.1, 0.2) * (np.cos(angle) * xx + np.sin(angle) * yy) * 2
    vignette = rng.uniform(0.1, 0.25) * (xx**2 + yy**2) * 2
    return 1.0 + grad - vignette


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    t = ndi.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return t / (t.std() + 1e-12)


def _camera(rng: np.random.Generator, electrons: np.ndarray) -> np.ndarray:
    """Poisson shot noise, gain, Gaussian read noise and offset, clipped to uint16."""
    e = rng.poisson(np.clip(electrons, 0, None))
    adu = GAIN_ADU_PER_E * e + rng.normal(0.0, READ_NOISE_ADU, e.shape) + OFFSET_ADU
    return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)


def _ellipse_mask(shape, cy, cx, ry, rx, theta) -> np.ndarray:
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    return u**2 + v**2 <= 1.0


def _voids(rng: np.random.Generator, shape: tuple[int, int], px: float) -> np.ndarray:
    """Neuronal somata (10-15 um ellipses) and sometimes a vessel: no neuropil, no puncta."""
    area_um2 = shape[0] * shape[1] * px * px
    mask = np.zeros(shape, bool)
    for _ in range(rng.poisson(area_um2 / 1500.0)):
        d = rng.uniform(10, 15) / px
        mask |= _ellipse_mask(
            shape, rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), d / 2 * rng.uniform(0.8, 1.0), d / 2,
            rng.uniform(0, np.pi),
        )
    if rng.random() < 0.3:  # a capillary crossing the field
        w = rng.uniform(4, 7) / px
        yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
        a = rng.uniform(0, np.pi)
        c0 = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
        dist = np.abs(-np.sin(a) * (xx - c0[1]) + np.cos(a) * (yy - c0[0]))
        mask |= dist <= w / 2
    return mask


def _curve(rng: np.random.Generator, shape: tuple[int, int], step: float = 0.5) -> np.ndarray:
    """A smooth curve (quadratic Bezier) crossing the field, sampled every ``step`` pixels."""
    h, w = shape
    side = rng.integers(2)
    if side == 0:
        p0, p2 = np.array([rng.uniform(0, h), -5.0]), np.array([rng.uniform(0, h), w + 5.0])
    else:
        p0, p2 = np.array([-5.0, rng.uniform(0, w)]), np.array([h + 5.0, rng.uniform(0, w)])
    p1 = np.array([rng.uniform(0, h), rng.uniform(0, w)])
    n = int(np.hypot(*(p2 - p0)) / step) + 2
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _thin(points: np.ndarray, min_dist: float, rng: np.random.Generator) -> np.ndarray:
    """Drop points until no two are closer than ``min_dist`` (random order, greedy)."""
    if len(points) < 2:
        return points
    order = rng.permutation(len(points))
    pts = points[order]
    tree = cKDTree(pts)
    keep = np.ones(len(pts), bool)
    for i, j in sorted(tree.query_pairs(min_dist)):
        if keep[i] and keep[j]:
            keep[j] = False
    return pts[keep]


def _place_puncta(
    rng: np.random.Generator,
    shape: tuple[int, int],
    px: float,
    n: int,
    allowed: np.ndarray,
    dendrites: list[np.ndarray],
) -> np.ndarray:
    """``n`` puncta centres in ``allowed``: ~40 % along dendrites, 15 % touching pairs."""
    if n == 0:
        return np.empty((0, 2))
    cand = []
    n_over = 3 * n + 20
    along = rng.random(n_over) < 0.4 if dendrites else np.zeros(n_over, bool)
    uni = np.column_stack([rng.uniform(-0.5, shape[0] - 0.5, n_over), rng.uniform(-0.5, shape[1] - 0.5, n_over)])
    if dendrites:
        pts = np.concatenate(dendrites)
        pick = pts[rng.integers(len(pts), size=n_over)]
        near = pick + rng.normal(0, 0.5 / px, (n_over, 2))
        uni[along] = near[along]
    cand = uni
    # touching neighbours: 15 % get a partner 0.3-0.5 um away
    partner = rng.random(n_over) < 0.15
    ang = rng.uniform(0, 2 * np.pi, n_over)
    dist = rng.uniform(0.3, 0.5, n_over) / px
    partners = cand + np.column_stack([np.sin(ang), np.cos(ang)]) * dist[:, None]
    cand = np.concatenate([cand, partners[partner]])
    inside = (cand[:, 0] >= -0.5) & (cand[:, 0] < shape[0] - 0.5) & (cand[:, 1] >= -0.5) & (cand[:, 1] < shape[1] - 0.5)
    cand = cand[inside]
    iy = np.clip(np.rint(cand[:, 0]).astype(int), 0, shape[0] - 1)
    ix = np.clip(np.rint(cand[:, 1]).astype(int), 0, shape[1] - 1)
    cand = cand[allowed[iy, ix]]
    cand = _thin(cand, 0.25 / px, rng)
    if len(cand) < n:
        log.debug("only %d of %d puncta placed", len(cand), n)
    return cand[:n]


def _lognormal_unit_mean(rng: np.random.Generator, n: int, cv: float) -> np.ndarray:
    s2 = np.log(1 + cv**2)
    return rng.lognormal(-s2 / 2, np.sqrt(s2), n)


def _psd95(
    rng: np.random.Generator,
    shape: tuple[int, int],
    px: float,
    density_per_100um2: float,
    snr: float,
    voids: np.ndarray,
    exclude: np.ndarray,
    engulfed: pd.DataFrame | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """PSD95 channel (uint16) and the in-focus puncta table."""
    noise = _noise_sd_e()
    mean_amp = snr * noise
    allowed = ~(voids | exclude)
    dendrites = [_curve(rng, shape) for _ in range(rng.integers(2, 5))]
    n = rng.poisson(density_per_100um2 / 100.0 * allowed.sum() * px * px)
    yx = _place_puncta(rng, shape, px, int(n), allowed, dendrites)
    amp = _lognormal_unit_mean(rng, len(yx), 0.4)
    sig = np.sqrt(rng.uniform(0.06, 0.12, len(yx)) ** 2 + PSF_SIGMA_UM**2)
    puncta = pd.DataFrame(
        {"y": yx[:, 0], "x": yx[:, 1], "amplitude": amp, "sigma_um": sig, "engulfed": False, "cell": 0}
    )
    if engulfed is not None and len(engulfed):
        puncta = pd.concat([puncta, engulfed[PUNCTA_COLUMNS]], ignore_index=True)
    in_focus = ~puncta["engulfed"].astype(bool)
    if in_focus.any():  # realised SNR == requested
        puncta["amplitude"] *= mean_amp / puncta.loc[in_focus, "amplitude"].mean()
    signal = np.zeros(shape)
    _add_gaussians(signal, puncta["y"].to_numpy(), puncta["x"].to_numpy(), puncta["amplitude"].to_numpy(),
                   puncta["sigma_um"].to_numpy() / px)
    # dendrite shafts: faint diffuse PSD95 along the curves
    shafts = np.zeros(shape, bool)
    for c in dendrites:
        iy, ix = np.rint(c[:, 0]).astype(int), np.rint(c[:, 1]).astype(int)
        ok = (iy >= 0) & (iy < shape[0]) & (ix >= 0) & (ix < shape[1])
        shafts[iy[ok], ix[ok]] = True
    d = ndi.distance_transform_edt(~shafts) * px
    signal += 0.25 * mean_amp * np.exp(-(d**2) / (2 * 0.45**2)) * ~voids
    # out-of-focus haze: dim, broad puncta from other planes (not in the truth)
    m = rng.poisson(0.6 * max(len(puncta), 1))
    _add_gaussians(
        signal, rng.uniform(0, shape[0], m), rng.uniform(0, shape[1], m),
        0.12 * mean_amp * _lognormal_unit_mean(rng, m, 0.5), rng.uniform(0.35, 0.6, m) / px,
    )
    neuropil = BACKGROUND_E * (1 + 0.15 * _texture(rng, shape, 1.5 / px))
    neuropil = np.where(voids, 0.35 * BACKGROUND_E, neuropil)
    neuropil = ndi.gaussian_filter(neuropil, 0.5 / px)
    electrons = _illumination(rng, shape) * (neuropil + signal)
    puncta["cell"] = puncta["cell"].astype(int)
    puncta["engulfed"] = puncta["engulfed"].astype(bool)
    return _camera(rng, electrons), puncta[PUNCTA_COLUMNS]


def render_synapse_field(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (256, 256),
    pixel_size_um: float = 0.1,
    density_per_100um2: float = 40.0,
    snr: float = 8.0,
) -> SynapseField:
    """Render one PSD95 field (single optical section) with its true puncta.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random draw.
    shape : tuple of int
        Field size in pixels (Y, X).
    pixel_size_um : float
        Pixel size.
    density_per_100um2 : float
        Expected in-focus puncta per 100 um^2 of analysed area (outside voids).
    snr : float
        Signal-to-noise ratio (module docstring); see :data:`SNR_LEVELS`.

    Returns
    -------
    SynapseField
        ``image`` (uint16 YX), ``puncta`` (y, x in pixels, amplitude in electrons,
        sigma_um, engulfed, cell), ``analysed_mask`` (False in voids), ``analysed_area_um2``,
        ``snr`` and ``background_noise_sd`` (ADU).

    Examples
    --------
    >>> f = render_synapse_field(np.random.default_rng(0))
    >>> f.image.shape, f.image.dtype
    ((256, 256), dtype('uint16'))
    """
    voids = _voids(rng, shape, pixel_size_um)
    image, puncta = _psd95(rng, shape, pixel_size_um, density_per_100um2, snr, voids, np.zeros(shape, bool))
    analysed = ~voids
    return SynapseField(
        image=image,
        puncta=puncta,
        analysed_mask=analysed,
        analysed_area_um2=float(analysed.sum() * pixel_size_um**2),
        snr=float(puncta["amplitude"].mean() / _noise_sd_e()) if len(puncta) else float(snr),  # no engulfed here
        background_noise_sd=_noise_sd_e() * GAIN_ADU_PER_E,
    )


# --------------------------------------------------------------------------- microglia


@dataclass
class _Tree:
    points: np.ndarray  # (n, 2) y, x in pixels, densely sampled along all processes
    width_um: np.ndarray  # process width at each point
    bright: np.ndarray  # relative brightness at each point
    seg_len_um: np.ndarray  # length represented by each point (for the truth length)
    segment: np.ndarray  # index of the branch segment of each point (parents before children)
    branch_nodes: np.ndarray  # (k, 2)
    tips: np.ndarray  # (m, 2)
    proximal: np.ndarray  # points of order 0-1 (for lysosomes)
    n_primary: int


def _grow_tree(
    rng: np.random.Generator, cy: float, cx: float, px: float, length_scale: float, branching_scale: float
) -> _Tree:
    """A ramified microglia process tree rooted at the soma centre."""
    step = 0.1  # um between samples (<= half a pixel, so drawn processes are continuous)
    n_primary = int(rng.integers(4, 7))
    base = rng.uniform(0, 2 * np.pi)
    angles = base + np.arange(n_primary) * 2 * np.pi / n_primary + rng.normal(0, 0.25, n_primary)
    territory = rng.uniform(16, 26) * length_scale
    stack = [(np.array([cy * px, cx * px]), a, 0) for a in angles]
    pts, wid, bri, order_of, seg_of = [], [], [], [], []
    nodes, tips = [], []
    centre = np.array([cy * px, cx * px])
    while stack:
        start, ang, order = stack.pop()
        seg = (8.0 if order == 0 else 6.0 * 0.85 ** (order - 1)) * rng.uniform(0.6, 1.4) * length_scale
        n = max(int(seg / step), 2)
        turns = np.cumsum(rng.normal(0, 0.08 * np.sqrt(step / 0.5), n))  # 0.08 rad per 0.5 um
        radial = np.arctan2(*(start - centre)) if order else ang
        heading = ang + turns
        # bias towards the outward direction so processes do not loop back
        heading = np.angle(0.85 * np.exp(1j * heading) + 0.15 * np.exp(1j * radial))
        steps = step * np.column_stack([np.sin(heading), np.cos(heading)])
        path = start + np.cumsum(steps, axis=0)
        w0 = max(1.2 * 0.7**order, 0.3)
        w1 = max(w0 * 0.75, 0.3)
        pts.append(path)
        wid.append(np.linspace(w0, w1, n))
        bri.append(np.linspace(0.9, 0.8, n) * 0.85**order)
        order_of.append(np.full(n, order))
        seg_of.append(np.full(n, len(seg_of)))
        end = path[-1]
        end_ang = heading[-1]
        too_far = np.hypot(*(end - centre)) > territory
        p_branch = 0.85 * 0.8**order * branching_scale
        if order < 5 and not too_far and rng.random() < p_branch:
            nodes.append(end)
            spread = rng.uniform(np.radians(30), np.radians(70))
            split = rng.uniform(0.35, 0.65)
            stack.append((end, end_ang - spread * split, order + 1))
            stack.append((end, end_ang + spread * (1 - split), order + 1))
        else:
            tips.append(end)
    points = np.concatenate(pts) / px
    order_all = np.concatenate(order_of)
    return _Tree(
        points=points,
        width_um=np.concatenate(wid),
        bright=np.concatenate(bri),
        seg_len_um=np.full(len(points), step),
        segment=np.concatenate(seg_of),
        branch_nodes=np.array(nodes).reshape(-1, 2) / px,
        tips=np.array(tips).reshape(-1, 2) / px,
        proximal=points[order_all <= 1],
        n_primary=n_primary,
    )


def _visible(tree: _Tree, own: np.ndarray, soma: np.ndarray, px: float) -> np.ndarray:
    """Centre-line points that can be seen in the drawn cell.

    A point is hidden when it lies inside the tube of an earlier-drawn branch of the same
    cell (where two children leave a node together, or a process crosses another) or in
    pixels that belong to another cell; overlapping stretches therefore count once.  Points
    in the soma always count (the tree is measured from the soma centre).
    """
    pts = tree.points
    iy = np.clip(np.rint(pts[:, 0]).astype(int), 0, own.shape[0] - 1)
    ix = np.clip(np.rint(pts[:, 1]).astype(int), 0, own.shape[1] - 1)
    in_field = _inside(pts, own.shape)
    in_soma = in_field & soma[iy, ix]
    visible = ~in_field | own[iy, ix]
    tree_kd = cKDTree(pts)
    radius = tree.width_um / 2 / px
    pairs = tree_kd.query_pairs(float(radius.max()), output_type="ndarray")
    if len(pairs):
        a, b = pairs[:, 0], pairs[:, 1]
        d = np.hypot(*(pts[a] - pts[b]).T)
        seg_a, seg_b = tree.segment[a], tree.segment[b]
        # a point is hidden by an earlier segment's tube, never by its own segment
        hide_b = (seg_a < seg_b) & (d < radius[a])
        hide_a = (seg_b < seg_a) & (d < radius[b])
        hidden = np.zeros(len(pts), bool)
        hidden[b[hide_b]] = True
        hidden[a[hide_a]] = True
        visible &= ~hidden
    return visible | in_soma


def _inside(yx: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return (yx[:, 0] >= -0.5) & (yx[:, 0] < shape[0] - 0.5) & (yx[:, 1] >= -0.5) & (yx[:, 1] < shape[1] - 0.5)


def _place_somata(rng: np.random.Generator, shape, px, per_mm2, margin_um, min_sep_um) -> np.ndarray:
    """Soma centres (pixels) in the field plus a margin, with a minimum spacing."""
    m = margin_um / px
    area_mm2 = (shape[0] + 2 * m) * (shape[1] + 2 * m) * (px / 1000) ** 2
    n = rng.poisson(per_mm2 * area_mm2)
    out: list[np.ndarray] = []
    for _ in range(50 * max(n, 1)):
        if len(out) == n:
            break
        p = np.array([rng.uniform(-m, shape[0] + m), rng.uniform(-m, shape[1] + m)])
        if all(np.hypot(*(p - q)) * px >= min_sep_um for q in out):
            out.append(p)
    return np.array(out).reshape(-1, 2)


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
    """Render a terminal field: PSD95, Iba1 (microglia) and CD68 (lysosomes) channels.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random draw.
    shape, pixel_size_um
        Field size (pixels) and pixel size (um).
    density_per_100um2 : float
        Expected PSD95 puncta density in the analysed area.
    microglia_per_mm2 : float
        Expected microglia somata per mm^2 (cells outside the field, within 25 um, send
        processes into it but are not counted).
    process_length_scale, branching_scale, soma_scale : float
        Morphology multipliers (activated microglia: shorter, less branched, larger somata).
    engulfed_per_cell : float
        Poisson mean of engulfed puncta per cell.
    cd68_area_fraction : float
        Expected CD68 area as a fraction of the cell area.
    snr : float
        SNR of the PSD95 channel (Iba1 at 2x, CD68 at 1.5x that).

    Returns
    -------
    TerminalField
        ``image`` (uint16, (3, Y, X)), ``puncta``, ``labels`` (one label per counted cell),
        ``cells`` (per-cell truth), ``analysed_mask``, ``analysed_area_um2``, ``snr``,
        ``background_noise_sd``.

    Examples
    --------
    >>> f = render_terminal_field(np.random.default_rng(0))
    >>> f.image.shape
    (3, 512, 512)
    """
    px = pixel_size_um
    somata = _place_somata(rng, shape, px, microglia_per_mm2, 25.0, 20.0)
    in_field = _inside(somata, shape)
    somata = np.concatenate([somata[in_field], somata[~in_field]])  # counted cells first
    n_counted = int(in_field.sum())
    iba = np.zeros(shape)
    best = np.zeros(shape)
    labels = np.zeros(shape, np.uint16)
    soma_mask_all = np.zeros(shape, bool)
    cell_rows, trees, soma_masks = [], [], []
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for k, (cy, cx) in enumerate(somata):
        label = k + 1 if k < n_counted else 0
        tree = _grow_tree(rng, cy, cx, px, process_length_scale, branching_scale)
        rs = rng.uniform(4.0, 5.0) * soma_scale / px
        ry, theta = rs * rng.uniform(0.75, 0.95), rng.uniform(0, np.pi)
        # bounding box of the cell
        ext = np.concatenate([tree.points, [[cy, cx]]])
        pad = int(np.ceil(rs + 2 / px))
        y0, x0 = np.maximum(np.floor(ext.min(0)).astype(int) - pad, 0)
        y1, x1 = np.minimum(np.ceil(ext.max(0)).astype(int) + pad + 1, shape)
        if y0 >= y1 or x0 >= x1:
            continue
        box = (slice(y0, y1), slice(x0, x1))
        bshape = (y1 - y0, x1 - x0)
        raster = np.zeros(bshape, bool)
        idx = np.full(bshape, -1)
        p = np.rint(tree.points).astype(int) - [y0, x0]
        ok = (p[:, 0] >= 0) & (p[:, 0] < bshape[0]) & (p[:, 1] >= 0) & (p[:, 1] < bshape[1])
        raster[p[ok, 0], p[ok, 1]] = True
        idx[p[ok, 0], p[ok, 1]] = np.nonzero(ok)[0]
        if raster.any():
            dist, (iy, ix) = ndi.distance_transform_edt(~raster, return_indices=True)
            nearest = idx[iy, ix]
            radius_px = np.maximum(tree.width_um[nearest] / 2 / px, 0.5)
            proc = dist <= radius_px
            proc_int = np.where(proc, tree.bright[nearest], 0.0)
        else:
            proc = np.zeros(bshape, bool)
            proc_int = np.zeros(bshape)
        soma = _ellipse_mask(bshape, cy - y0, cx - x0, ry, rs, theta)
        intensity = np.maximum(proc_int, soma * 1.0)
        cell_mask = proc | soma
        sub_best = best[box]
        win = cell_mask & (intensity > sub_best)
        iba[box] = np.maximum(iba[box], intensity)
        sub_best[win] = intensity[win]
        labels[box][win] = label
        full_soma = np.zeros(shape, bool)
        full_soma[box] = soma
        soma_mask_all |= full_soma
        if label:
            trees.append((label, tree, (cy, cx), rs, full_soma))
    # per-cell truth and lysosomes (counted cells only)
    voids = _voids(rng, shape, px) & ~ndi.binary_dilation(soma_mask_all, iterations=int(3 / px))
    cd68_signal = np.zeros(shape)
    cd68_mask = np.zeros(shape, bool)
    engulfed_rows = []
    for label, tree, (cy, cx), rs, soma in trees:
        own = labels == label
        area_px = int(own.sum())
        target = cd68_area_fraction * area_px
        union = np.zeros(shape, bool)
        blobs = []
        for _ in range(200):
            if union[own].sum() >= target:
                break
            if rng.random() < 0.7 or len(tree.proximal) == 0:
                r = rs * 0.7 * np.sqrt(rng.random())
                a = rng.uniform(0, 2 * np.pi)
                c = np.array([cy + r * np.sin(a), cx + r * np.cos(a)])
            else:
                c = tree.proximal[rng.integers(len(tree.proximal))]
            if not _inside(c[None], shape)[0] or not own[int(np.rint(c[0])), int(np.rint(c[1]))]:
                continue
            s = rng.uniform(0.3, 0.6) / px
            blobs.append((c[0], c[1], s))
            union |= (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= (_HWHM * s) ** 2
        union &= own
        cd68_mask |= union
        if blobs:
            b = np.array(blobs)
            _add_gaussians(cd68_signal, b[:, 0], b[:, 1], rng.uniform(0.7, 1.3, len(b)), b[:, 2])
        # engulfed puncta: inside CD68 inside this cell
        k = rng.poisson(engulfed_per_cell)
        cand = np.argwhere(union)
        n_eng = min(k, len(cand))
        if n_eng:
            chosen = cand[rng.choice(len(cand), n_eng, replace=False)] + rng.uniform(-0.3, 0.3, (n_eng, 2))
            engulfed_rows.append(
                pd.DataFrame(
                    {
                        "y": chosen[:, 0],
                        "x": chosen[:, 1],
                        "amplitude": _lognormal_unit_mean(rng, n_eng, 0.4),
                        "sigma_um": np.sqrt(rng.uniform(0.06, 0.12, n_eng) ** 2 + PSF_SIGMA_UM**2),
                        "engulfed": True,
                        "cell": label,
                    }
                )
            )
        inside_pts = _inside(tree.points, shape)
        tips_in = _inside(tree.tips, shape) if len(tree.tips) else np.zeros(0, bool)
        nodes_in = _inside(tree.branch_nodes, shape) if len(tree.branch_nodes) else np.zeros(0, bool)
        rows, cols = np.nonzero(own)
        touches = bool(rows.min() == 0 or cols.min() == 0 or rows.max() == shape[0] - 1 or cols.max() == shape[1] - 1)
        tip_r = np.hypot(tree.tips[:, 0] - cy, tree.tips[:, 1] - cx) * px if len(tree.tips) else np.zeros(1)
        cell_rows.append(
            {
                "cell": label,
                "soma_y": float(cy),
                "soma_x": float(cx),
                "soma_radius_um": float(rs * px),
                "skeleton_length_um": float(tree.seg_len_um[inside_pts & _visible(tree, own, soma, px)].sum()),
                "branch_points": int(nodes_in.sum()),
                "endpoints": int(tips_in.sum()),
                "n_primary": tree.n_primary,
                "max_radius_um": float(tip_r.max()),
                "area_um2": float(area_px * px * px),
                "cd68_area_um2": float(union.sum() * px * px),
                "engulfed_count": int(n_eng),
                "touches_border": touches,
            }
        )
    cells = pd.DataFrame(
        cell_rows,
        columns=["cell", "soma_y", "soma_x", "soma_radius_um", "skeleton_length_um", "branch_points", "endpoints",
                 "n_primary", "max_radius_um", "area_um2", "cd68_area_um2", "engulfed_count", "touches_border"],
    )
    engulfed = pd.concat(engulfed_rows, ignore_index=True) if engulfed_rows else None
    psd, puncta = _psd95(rng, shape, px, density_per_100um2, snr, voids, soma_mask_all, engulfed)
    noise = _noise_sd_e()
    # Iba1: cell intensity blurred by the PSF, process SNR ~2x the PSD95 SNR
    iba_e = ndi.gaussian_filter(iba, PSF_SIGMA_UM / px) * (2.0 * snr * noise / 0.8)
    iba_bg = BACKGROUND_E * (1 + 0.1 * _texture(rng, shape, 3 / px))
    iba_img = _camera(rng, _illumination(rng, shape) * (iba_bg + iba_e))
    cd68_e = cd68_signal * (1.5 * snr * noise) + 0.05 * snr * noise * (_texture(rng, shape, 2 / px) > 2.5)
    cd68_img = _camera(rng, _illumination(rng, shape) * (BACKGROUND_E + cd68_e))
    analysed = ~(voids | soma_mask_all)
    in_focus = puncta[~puncta["engulfed"]]
    return TerminalField(
        image=np.stack([psd, iba_img, cd68_img]),
        puncta=puncta,
        labels=labels,
        cells=cells,
        analysed_mask=analysed,
        analysed_area_um2=float(analysed.sum() * px * px),
        snr=float(in_focus["amplitude"].mean() / noise) if len(in_focus) else float(snr),
        background_noise_sd=noise * GAIN_ADU_PER_E,
    )
