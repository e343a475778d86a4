"""Planes of a z-stack that moved against one another: lateral registration.

In vivo two-photon stacks are taken plane by plane over seconds; breathing and the heartbeat
move the tissue between planes. Unregistered, a head's planes no longer lie over one another,
the maximum projection smears each head and the dendrites, and the shaft's axial profile
(the detector's test for heads above or below the shaft) mixes neighbouring pixels.

:func:`register_planes` estimates each plane's lateral displacement from its neighbours' (the
peak of their cross-correlation, after a band-pass that keeps structures of the size of
dendrites and spines) and shifts every plane by whole pixels onto the planes' median
position. Whole-pixel shifts move pixels without interpolating them, so the noise of each
plane keeps its statistics (the detectors' noise models are fitted to it); what is left is
at most half a pixel.

What is assumed:

* the displacement is a lateral translation of each plane (not the distortion within a plane
  of a line scan), at most ``max_shift_um`` (3 um) between neighbouring planes; larger motion
  (awake animals) needs a dedicated registration first. The peak is searched within 1 um
  (the broadest structure the band-pass keeps) first, and up to ``max_shift_um`` only for
  pairs of planes with no significant displacement within it;
* neighbouring planes share structure (the z step is below the axial extent of the
  dendrites). A pair of planes whose correlation peak is not significant
  (:data:`MIN_SIGNIFICANCE`: blank planes, noise beyond the tissue) is taken as not displaced;
* motion moves each plane at random, while the tissue's geometry moves a structure steadily
  from plane to plane: a dendrite rising obliquely through the stack shows its next stretch
  in the next plane. A peak barely higher than the correlation at no displacement lies on the
  ridge such a dendrite makes (:data:`MIN_GAIN_OVER_NONE`) and is not taken; a step that the
  pairs of planes share (:data:`STEADY_SIGMAS`) is kept as geometry and only departures from
  it by more than a pixel are registered. A step beyond 1 um on a ridge running along it, far
  longer than the other pairs' steps, is such a dendrite too (:data:`MIN_RIDGE_SHARE`). Where
  only a rising dendrite is in focus (often at a stack's ends), motion along it cannot be
  told from its rise: such planes may be left off by up to ``max_shift_um``.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi
from scipy.signal.windows import tukey

from analysis.measure.checks import require_finite
from analysis.measure.noise import MAD_TO_SD

log = logging.getLogger(__name__)

#: Smallest significance of a correlation peak (robust sigmas of the cross-correlation away
#: from the peak) taken as a displacement. On simulated stacks (``analysis.sim.spines``, 24
#: stacks of 11 planes) pairs of planes sharing a dendrite in focus read 10-190; pairs of
#: out-of-focus planes at the ends of a stack, 2.5-5.
MIN_SIGNIFICANCE = 8.0
#: A displacement is taken only where the correlation there exceeds the correlation at no
#: displacement by this many robust sigmas of chance correlation (else the planes are taken as
#: not displaced). A dendrite running obliquely through the stack shows other stretches of
#: itself in neighbouring planes; their correlation is a ridge along the dendrite, whose
#: maximum may lie anywhere on it. On the simulated stacks without motion (searched within
#: 2 um), the 11 of 174 significant pairs whose peak was more than a pixel off read 0.1-1.1
#: here; of the pairs moved by a pixel or more, 5 % read below 1.3, the median 16.
MIN_GAIN_OVER_NONE = 2.0
#: A displacement shared by the pairs of planes (their median step) is the tissue's geometry
#: when it lies this many standard errors from 0 (the steps' scatter over the pairs, from
#: their pairwise differences). Random motion between planes gives steps scattered about 0.
STEADY_SIGMAS = 3.0
#: A step beyond 1 um (the broadest structure the band-pass keeps, found only where nothing
#: significant lies within 1 um) is taken as a dendrite rising through the stack, not motion,
#: when the correlation runs as a ridge from no displacement to the peak, at least this share
#: of the peak's height (above chance) all the way, ...
MIN_RIDGE_SHARE = 0.3
#: ... along the displacement (half a micrometre from the peak, the correlation along it
#: exceeds that across it by this share of the peak's height), ...
MIN_RIDGE_ALONG = 0.1
#: ... and longer than this many SDs (per axis) of the other pairs' steps (at least half a
#: pixel): motion is a property of the whole stack, and a rising dendrite's step stands out
#: from it. On hand-built stacks of a dendrite rising at 20-45 degrees (1 um steps, 1.6-1.9 um
#: per plane along it, 46 pairs searched within 2 um) the ridge read at least 0.46 of the peak
#: and the excess along it at least 0.19; of the pairs of simulated stacks moved by more than
#: 1 um (0.5 and 0.7 um SD per plane), 19 of 86 read above both (one dendrite in focus, moved
#: along itself). Searched within 3 um, such steps were at most 2.8 SDs (0.5 um, 38 steps) and
#: 2.9 SDs (0.7 um, 48) of their stack's other steps; the rising dendrites' (15-40 degrees,
#: 1 px of motion), 9.5-16.7.
RIDGE_OUTLIER_SIGMAS = 5.0
_PASSES = 3  # estimates at most, each on the stack registered by the ones before
_RAYLEIGH_MEDIAN = 1.1774  # median length of a 2-D standard normal vector, sqrt(2 ln 2)
_SHAMOS = 1.0483  # SD of a normal sample per median absolute pairwise difference
_MEDIAN_SE = 1.2533  # standard error of a normal sample's median, in SDs / sqrt(n)


def _scales_px(pixel_size_um: float) -> tuple[float, float]:
    """The finest and the broadest structure the band-pass keeps (pixels): 0.1 and 1 um."""
    fine = max(0.7, 0.1 / pixel_size_um)
    return fine, max(2.0 * fine, 1.0 / pixel_size_um)


def _band_pass(shape: tuple[int, int], pixel_size_um: float) -> tuple[np.ndarray, np.ndarray]:
    """The taper (to 0 at the field's edges, so that the cross-correlation does not match the
    edges) and the band-pass gain of a plane's spectrum: a difference of Gaussians that keeps
    structures of the size of dendrites and heads and drops pixel noise (below 0.1 um) and the
    background (broader than 1 um)."""
    fine, broad = _scales_px(pixel_size_um)
    ny, nx = shape
    taper = np.outer(tukey(ny, 0.2), tukey(nx, 0.2)).astype(np.float32)
    f2 = sfft.fftfreq(ny)[:, None] ** 2 + sfft.rfftfreq(nx)[None, :] ** 2
    gain = np.exp(-2.0 * np.pi ** 2 * fine ** 2 * f2) - np.exp(-2.0 * np.pi ** 2 * broad ** 2 * f2)
    return taper, gain.astype(np.float32)


def _vertex(m: float, c: float, p: float) -> float:
    """Offset of the parabola's vertex through three equally spaced values (0 if not a peak)."""
    d = m - 2.0 * c + p
    return 0.5 * (m - p) / d if d < 0 else 0.0


def _on_ridge(c: np.ndarray, peak: np.ndarray, base: float, height: float, half_px: float) -> bool:
    """Does the correlation ``c`` (no displacement at its centre) run as a ridge from no
    displacement to ``peak`` (pixels from the centre), along it (:data:`MIN_RIDGE_SHARE`,
    :data:`MIN_RIDGE_ALONG`)? ``base``: the chance level; ``height``: the peak above it;
    ``half_px``: the distance from the peak at which along and across are compared."""
    centre = np.array([c.shape[0] // 2, c.shape[1] // 2], float)
    t = np.linspace(0.0, 1.0, 9)[:-1, None]
    joined = ndi.map_coordinates(c, (centre + t * peak).T, order=1) - base
    u = peak / np.hypot(*peak)
    v = np.array([-u[1], u[0]])
    around = centre + peak + half_px * np.array([u, -u, v, -v])
    near = ndi.map_coordinates(c, around.T, order=1) - base
    return bool(joined.min() >= MIN_RIDGE_SHARE * height and near[:2].min() - near[2:].max() >= MIN_RIDGE_ALONG * height)


def _peak(c: np.ndarray, max_px: int, reach_px: float) -> tuple[np.ndarray | None, float, np.ndarray, bool]:
    """The correlation's peak within ``max_px`` of no displacement (see :func:`_displacement`)."""
    shape = c.shape
    cy, cx = shape[0] // 2, shape[1] // 2
    win = c[cy - max_px: cy + max_px + 1, cx - max_px: cx + max_px + 1]
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    peak = np.array([iy - max_px, ix - max_px], float)
    if iy in (0, win.shape[0] - 1) or ix in (0, win.shape[1] - 1):
        return None, float("nan"), peak, False
    far = np.ones(shape, bool)  # the correlation away from any displacement searched: chance alone
    far[max(cy - 3 * max_px, 0): cy + 3 * max_px + 1, max(cx - 3 * max_px, 0): cx + 3 * max_px + 1] = False
    if np.count_nonzero(far) < 100:
        far[:] = True
        far[cy - max_px: cy + max_px + 1, cx - max_px: cx + max_px + 1] = False
    ref = c[far][::4]  # (a quarter of them: the same median and spread, a quarter of the sorting)
    med = float(np.median(ref))
    spread = MAD_TO_SD * float(np.median(np.abs(ref - med)))
    if not spread > 0:
        return None, float("nan"), peak, False
    z = (float(win[iy, ix]) - med) / spread
    if iy == ix == max_px:
        return np.zeros(2), z, peak, False  # (whole pixels: planes in place stay in place)
    if (float(win[iy, ix]) - float(c[cy, cx])) / spread < MIN_GAIN_OVER_NONE:
        # barely better than no displacement: the correlation's ridge along an oblique dendrite
        # (its planes show other stretches of it), not motion
        return None, z, peak, False
    ridge = bool(np.hypot(*peak) > reach_px and _on_ridge(c, peak, med, float(win[iy, ix]) - med, 0.5 * reach_px))
    dy = _vertex(win[iy - 1, ix], win[iy, ix], win[iy + 1, ix])
    dx = _vertex(win[iy, ix - 1], win[iy, ix], win[iy, ix + 1])
    return peak + np.array([dy, dx]), z, peak, ridge


def _displacement(fa: np.ndarray, fb: np.ndarray, shape: tuple[int, int], windows: tuple[int, int],
                  reach_px: float, min_significance: float) -> tuple[np.ndarray | None, float, np.ndarray, bool]:
    """Displacement (pixels, y x) of plane ``a``'s content relative to plane ``b``'s from their
    spectra, the significance of the correlation peak (NaN when at the search's edge or
    without chance correlation to measure it by), the peak's whole-pixel position and whether
    it lies beyond ``reach_px`` (the widest structure the band-pass keeps) on a ridge from no
    displacement (:func:`_on_ridge`). The displacement is 0 when the peak is at no
    displacement, and None when the peak is barely higher than there (see
    :data:`MIN_GAIN_OVER_NONE`).

    The peak is searched within ``windows[0]`` pixels, and within ``windows[1]`` only where
    no significant displacement is found in the first: the correlation of the planes'
    structures is searched before that of structures running from one plane to the next. A
    peak of the second search inside the first's window (not on its edge) is the first's to
    judge."""
    c = sfft.fftshift(sfft.irfft2(fa * np.conj(fb), s=shape))
    near = _peak(c, windows[0], reach_px)
    if (near[0] is not None and near[1] >= min_significance) or windows[1] <= windows[0]:
        return near
    wide = _peak(c, windows[1], reach_px)
    if np.abs(wide[2]).max() < windows[0]:
        return near  # (the same peak, judged by the first search)
    return wide if wide[1] >= min_significance else near


def _shifted(plane: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``plane`` moved by whole pixels; the uncovered margin mirrors the pixels next to it."""
    if dy == 0 and dx == 0:
        return plane
    pad = ((abs(dy), abs(dy)), (abs(dx), abs(dx)))
    big = np.pad(plane, pad, mode="symmetric")
    y0, x0 = abs(dy) - dy, abs(dx) - dx
    return big[y0: y0 + plane.shape[0], x0: x0 + plane.shape[1]]


def plane_displacements(stack: np.ndarray, pixel_size_um: float, *, max_shift_um: float = 3.0,
                        min_significance: float = MIN_SIGNIFICANCE) -> np.ndarray:
    """Lateral position of each plane's content relative to the planes' median (pixels).

    Parameters
    ----------
    stack : ndarray
        (z, y, x) stack.
    pixel_size_um : float
        Lateral pixel size (um).
    max_shift_um : float
        Largest displacement between neighbouring planes searched (um); beyond 1 um only for
        pairs of planes without a significant peak within 1 um.
    min_significance : float
        Smallest significance of a correlation peak taken as a displacement (see
        :data:`MIN_SIGNIFICANCE`).

    Returns
    -------
    ndarray
        (z, 2) displacements (y, x) in pixels, to a fraction of a pixel; zeros for fewer than
        two planes.
    """
    st = np.asarray(stack, dtype=np.float32)
    if st.ndim != 3:
        raise ValueError(f"plane_displacements needs a (z, y, x) stack, got shape {st.shape}")
    require_finite(st, "stack")
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be a positive number in um, got {pixel_size_um!r}")
    nz, ny, nx = st.shape
    pos = np.zeros((nz, 2))
    max_px = int(min(np.ceil(max_shift_um / pixel_size_um), min(ny, nx) // 4))
    if nz < 2 or max_px < 1:
        return pos
    taper, gain = _band_pass((ny, nx), pixel_size_um)
    reach_px = _scales_px(pixel_size_um)[1]
    windows = (min(int(np.ceil(reach_px)), max_px), max_px)
    rel = np.zeros((nz - 1, 2))
    seen = np.full((nz - 1, 2), np.nan)  # each significant pair's step, taken or not
    taken = np.zeros(nz - 1, bool)
    ridge = np.zeros(nz - 1, bool)
    below = sfft.rfft2(st[-1] * taper) * gain  # (two planes' spectra at a time: a long stack fits)
    for k in range(nz - 2, -1, -1):
        here = sfft.rfft2(st[k] * taper) * gain
        d, z, peak, ridge[k] = _displacement(here, below, (ny, nx), windows, reach_px, min_significance)
        if z >= min_significance:
            seen[k] = peak if d is None else d
            if d is not None:
                rel[k], taken[k] = d, True
        below = here
    long = np.flatnonzero(taken & ridge)
    if len(long):
        # a long step on a ridge, far beyond the steps of the other pairs: a dendrite rising
        # through the stack (see MIN_RIDGE_SHARE), not motion. The other steps' SD per axis from
        # their median length (that of a 2-D normal step is sqrt(2 ln 2) SDs); with fewer than
        # two of them, the half-pixel floor: every such step is the dendrite's
        other = np.hypot(*rel[taken & ~ridge].T)
        scale = float(np.median(other)) / _RAYLEIGH_MEDIAN if len(other) >= 2 else 0.0
        out = np.hypot(rel[long, 0], rel[long, 1]) > RIDGE_OUTLIER_SIGMAS * max(scale, 0.5)
        rel[long[out]], taken[long[out]] = 0.0, False
        seen[long[out]] = np.nan  # (settled: no evidence for the steady step below)
    found = np.flatnonzero(taken)
    steps = seen[np.isfinite(seen[:, 0])]
    if len(steps) >= 3:
        # a displacement that the pairs of planes share is the tissue's geometry (a dendrite
        # running obliquely through the stack moves by the same step from plane to plane), not
        # motion (which moves each plane at random): it is kept, and only the departures from
        # it are registered (the pairs whose peak lay on a ridge count as evidence of it)
        step = np.median(steps, axis=0)
        # (the spread from the pairwise differences of the steps, Shamos' estimator: the MAD
        # collapses when a few of a handful of random steps happen to agree, and three of six
        # at 1.8-1.9 px once passed a random median step of 1.85 px as the geometry)
        i, j = np.triu_indices(len(steps), 1)
        spread = _SHAMOS * np.median(np.abs(steps[i] - steps[j]), axis=0)
        steady = np.abs(step) > STEADY_SIGMAS * _MEDIAN_SE * spread / np.sqrt(len(steps))
        if steady.any():
            rel[found] -= np.where(steady, step, 0.0)
            # (departures within a pixel of the step are its own scatter: whole-pixel peaks on
            # either side of a step between two pixels, and the fractions of a pixel that would
            # add up over the planes)
            rel[found[np.abs(rel[found]).max(axis=1) <= 1.0]] = 0.0
    pos[:-1] = np.cumsum(rel[::-1], axis=0)[::-1]  # pos[k] = pos[k + 1] + rel[k], pos[-1] = 0
    return pos - np.median(pos, axis=0)


def register_planes(stack: np.ndarray, pixel_size_um: float, *, max_shift_um: float = 3.0,
                    min_significance: float = MIN_SIGNIFICANCE) -> tuple[np.ndarray, np.ndarray]:
    """Shift the planes of a z-stack by whole pixels onto their median lateral position.

    Each plane's displacement is found from its neighbours' (:func:`plane_displacements`) and
    rounded to whole pixels; the margin a shift uncovers mirrors the pixels next to it. The
    displacements are estimated again on the registered stack until none is left (at most 3
    times), so a registered stack registered again stays as it is. See the module's notes for
    what is assumed.

    Parameters
    ----------
    stack, pixel_size_um, max_shift_um, min_significance :
        As for :func:`plane_displacements`.

    Returns
    -------
    registered : ndarray of float32
        The stack with its planes shifted (the input itself, as float32, when no plane moved).
    shifts : ndarray of int
        (z, 2) whole-pixel shift (y, x) applied to each plane.

    Examples
    --------
    A dendrite in three planes, the middle one moved by 3 pixels along y:

    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:128, :128]
    >>> line = 100 * np.exp(-((yy - 0.5 * xx - 30) ** 2) / 8.0) + 100 * np.exp(-((xx - 80) ** 2) / 8.0)
    >>> stack = np.stack([line, np.roll(line, 3, axis=0), line]) + rng.normal(10, 1, (3, 128, 128))
    >>> registered, shifts = register_planes(stack, 0.1)
    >>> shifts.tolist()
    [[0, 0], [-3, 0], [0, 0]]
    """
    st = np.asarray(stack, dtype=np.float32)
    shifts = np.zeros((st.shape[0], 2), int)
    out = st
    for _ in range(_PASSES):
        # (again on the registered planes: whole-pixel rounding can leave neighbours a pixel
        # apart, and a stack registered once more should not move again)
        more = -np.rint(plane_displacements(out, pixel_size_um, max_shift_um=max_shift_um,
                                            min_significance=min_significance)).astype(int)
        if not more.any():
            break
        shifts += more
        out = np.empty_like(st)
        for k in range(st.shape[0]):
            out[k] = _shifted(st[k], int(shifts[k, 0]), int(shifts[k, 1]))
    if not shifts.any():
        return st, shifts
    log.info("register_planes: %d of %d planes shifted, by up to %d px", int(np.count_nonzero(shifts.any(axis=1))),
             st.shape[0], int(np.abs(shifts).max()))
    return out, shifts
