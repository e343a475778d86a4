"""Registration of the planes of a z-stack (analysis.measure.planes) against known motion.

Stacks are simulated with ``plane_jitter_um`` (own simulator: each plane imaged with the
tissue shifted, before the noise; the shifts are known), and built by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.measure.matching import match_points
from analysis.measure.planes import _shifted, plane_displacements, register_planes
from analysis.measure.spines import detect_spines
from analysis.sim.spines import simulate_spine_sessions


def _session(seed, jitter_um, snr="high"):
    return simulate_spine_sessions(seed, preset="default", snr=snr, mode="stack", plane_jitter_um=jitter_um,
                                   days=[0.0], target_density_ratio=[1.0])[0]


def _f1(det, truth, px):
    m = match_points(det[["y", "x"]].to_numpy(float), truth[["y", "x"]].to_numpy(float), 0.5 / px)
    return 2 * m.tp / (2 * m.tp + m.fp + m.fn)


def test_a_shift_moves_whole_pixels_and_mirrors_the_margin():
    a = np.arange(30.0).reshape(5, 6)
    b = _shifted(a, 2, -1)
    assert np.array_equal(b[2:, :-1], a[:-2, 1:])  # content moved down 2, left 1, not interpolated
    assert np.array_equal(b[:2, :-1], a[1::-1, 1:])  # the uncovered rows mirror the edge's
    assert np.array_equal(b[:, -1], np.r_[a[1, 5], a[0, 5], a[:3, 5]])
    assert _shifted(a, 0, 0) is a


@pytest.mark.parametrize("seed", [0, 1])
def test_the_planes_shifts_of_a_moving_stack_are_recovered(seed):
    # failure mode (simulated stacks with 0.24 um of motion between planes, left unregistered:
    # detection F1 0.86-0.88 -> 0.64-0.67): every plane of a stack was taken where it was imaged
    s = _session(seed, 0.3)
    px = s.info["pixel_size_um"]
    true = np.asarray(s.info["plane_shifts_px"])
    assert np.abs(true).max() > 2.0  # motion to find
    registered, shifts = register_planes(s.image, px)
    residual = true + shifts  # where each plane's content is after the shift
    residual -= np.median(residual, axis=0)  # (the stack's frame is the planes' median)
    err = np.abs(residual).max(axis=1)
    # the planes with the dendrites in focus (where the heads are): within a pixel; the planes
    # at the stack's ends are mostly out-of-focus blur and may stay off
    in_focus = s.image.reshape(s.image.shape[0], -1).std(axis=1)
    focus = in_focus >= np.median(in_focus)
    assert err[focus].max() <= 1.0, err
    assert np.mean(err <= 1.0) >= 0.6, err
    assert registered.shape == s.image.shape and registered.dtype == np.float32
    # whole pixels: each plane's values are the plane's own, moved
    k = int(np.argmax(np.abs(shifts).sum(axis=1)))
    dy, dx = shifts[k]
    h, w = s.image.shape[1:]
    inner = registered[k][max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)]
    assert np.array_equal(inner, s.image[k][max(-dy, 0): h + min(-dy, 0), max(-dx, 0): w + min(-dx, 0)])


def test_motion_beyond_a_micrometre_between_planes_is_registered():
    # failure mode: with 0.5 um SD of motion per plane (a third of the steps between neighbouring
    # planes beyond 1 um) the search within 1 um broke the chain of planes: detection F1
    # 0.24-0.34 on the simulated stacks; and a step of 1 um between two planes in focus taken for
    # a dendrite's rise when the limit was 3.5 SDs of the other steps read from the MAD of their
    # axes (1.8 px from 5 steps), which left half of the planes in focus 1 um off (the low-SNR
    # stack)
    from analysis.sim.spines import simulate_repeat_imaging

    low = simulate_repeat_imaging(0, preset="default", snr="low", mode="stack", plane_jitter_um=0.5)[0]
    for s in (_session(0, 0.5), _session(1, 0.5), low):
        px = s.info["pixel_size_um"]
        true = np.asarray(s.info["plane_shifts_px"])
        in_focus = s.image.reshape(s.image.shape[0], -1).std(axis=1)
        focus = in_focus >= np.median(in_focus)
        assert np.hypot(*np.diff(true[focus], axis=0).T).max() > 1.0 / px  # steps beyond 1 um to find
        _, shifts = register_planes(s.image, px)
        residual = true + shifts
        residual -= np.median(residual[focus], axis=0)
        assert np.abs(residual[focus]).max() <= 1.0, residual


def test_random_steps_that_happen_to_agree_are_not_taken_for_geometry():
    # failure mode: three of the six significant steps of a low-SNR stack (0.5 um SD of motion)
    # agreed within 0.1 px; their MAD read the steps' spread as 0.9 px (their SD ~2.6 px), the
    # median step (1.85 px) passed as a dendrite's steady rise, and a ramp of that much per plane
    # left the planes in focus up to 4.6 px off
    s = simulate_spine_sessions(2, preset="default", snr="low", mode="stack", plane_jitter_um=0.5)[2]
    px = s.info["pixel_size_um"]
    true = np.asarray(s.info["plane_shifts_px"])
    in_focus = s.image.reshape(s.image.shape[0], -1).std(axis=1)
    focus = in_focus >= np.median(in_focus)
    _, shifts = register_planes(s.image, px)
    residual = true + shifts
    residual -= np.median(residual[focus], axis=0)
    assert np.abs(residual[focus]).max() <= 2.0, residual  # (1.5 px; 4.6 with the MAD)


def test_a_registered_stack_registered_again_stays():
    # the detector, the trace and the quality columns each register the stack they are given,
    # the quality columns a registered one: rounded to whole pixels once, 15 of 48 simulated
    # stacks moved again by a pixel or two
    for seed in range(6):
        s = _session(seed, 0.24, "default")
        px = s.info["pixel_size_um"]
        registered, shifts = register_planes(s.image, px)
        assert shifts.any(), seed
        assert not register_planes(registered, px)[1].any(), seed


def test_a_stack_without_motion_is_left_as_it_is():
    # dendrites running obliquely through the stack show other stretches of themselves in
    # neighbouring planes; their correlation's ridge read as motion moved 45 of 264 planes of 24
    # simulated stacks by 1-2 px before the test against no displacement; and a peak within 1 um
    # judged again by the search up to 3 um (against the chance correlation beyond that search)
    # moved the two out-of-focus end planes of the low-SNR stack by 3 px
    for seed, snr in ((0, "default"), (1, "high"), (0, "low")):
        s = _session(seed, 0.0, snr)
        registered, shifts = register_planes(s.image, s.info["pixel_size_um"])
        assert not shifts.any(), shifts
        assert np.array_equal(registered, s.image)
    # noise alone, and blank planes: no displacement is significant
    rng = np.random.default_rng(3)
    noise = rng.poisson(5.0, (6, 128, 128)).astype(np.float32)
    assert not register_planes(noise, 0.12)[1].any()
    assert not register_planes(np.full((4, 64, 64), 7.0), 0.12)[1].any()
    assert not plane_displacements(noise[:1], 0.12).any()


def test_heads_in_a_moving_stack_are_found_as_in_a_still_one():
    # the same dendrites and heads imaged still and with 0.24 um of motion between planes
    f1 = {"still": [], "moving": [], "moving, projection unregistered": []}
    for seed in (0, 1):
        still, moving = _session(seed, 0.0), _session(seed, 0.24)
        px = still.info["pixel_size_um"]
        truth = still.spines[still.spines["in_field"]]
        f1["still"].append(_f1(detect_spines(still.image, px), truth, px))
        f1["moving"].append(_f1(detect_spines(moving.image, px), truth, px))
        f1["moving, projection unregistered"].append(_f1(detect_spines(moving.image.max(axis=0), px), truth, px))
    mean = {k: float(np.mean(v)) for k, v in f1.items()}
    assert mean["moving"] >= mean["still"] - 0.05, mean
    assert mean["moving"] >= mean["moving, projection unregistered"] + 0.1, mean


def test_the_simulators_plane_motion_is_recorded_and_checked():
    s = _session(0, 0.3)
    shifts = np.asarray(s.info["plane_shifts_px"])
    assert shifts.shape == (s.image.shape[0], 2)
    assert np.allclose(shifts.mean(axis=0), 0.0)
    assert 0.4 * 0.3 / s.info["pixel_size_um"] < shifts.std() < 2.0 * 0.3 / s.info["pixel_size_um"]
    assert not np.asarray(_session(0, 0.0).info["plane_shifts_px"]).any()
    with pytest.raises(ValueError, match="plane_jitter_um"):
        _session(0, -0.1)


def _oblique_stack(elevation_deg, seed, jitter_px=0.0, flat=False):
    """A dendrite along x rising through an 11-plane stack at ``elevation_deg`` (0.12 um pixels,
    1 um steps), heads beside it every ~1 um, optionally a second dendrite along y in one plane
    (``flat``) and a random shift of each plane (``jitter_px`` SD, before the Poisson noise).
    Returns (stack, true shifts)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    nz, ny, nx, px = 11, 256, 384, 0.12
    z, y, x = np.mgrid[:nz, :ny, :nx].astype(np.float32)
    rise = np.tan(np.radians(elevation_deg)) * px  # planes per pixel along x
    lam = 5 + 60 * np.exp(-0.5 * ((y - 128) / 3.0) ** 2 - 0.5 * (z - 5 - (x - nx / 2) * rise) ** 2)
    if flat:
        lam += 60 * np.exp(-0.5 * ((x - 100) / 3.0) ** 2 - 0.5 * ((z - 5) / 1.5) ** 2)
    for xh in np.arange(20, nx - 20, 9):
        side = 1 if (xh // 9) % 2 else -1
        lam += 50 * np.exp(-0.5 * (((y - 128 - side * 9) / 2.0) ** 2 + ((x - xh) / 2.0) ** 2
                                   + (z - 5 - (xh - nx / 2) * rise) ** 2))
    true = rng.normal(0.0, jitter_px, (nz, 2)) if jitter_px else np.zeros((nz, 2))
    true -= true.mean(axis=0)
    if jitter_px:
        lam = np.stack([ndi.shift(p, s, order=1, mode="nearest") for p, s in zip(lam, true)])
    return rng.poisson(lam).astype(np.float32), true


@pytest.mark.parametrize("elevation_deg", [30, 45, 60])
def test_a_dendrite_rising_through_a_still_stack_is_not_straightened(elevation_deg):
    # failure mode: a dendrite running obliquely through the stack shows its next stretch in
    # the next plane, by the same step each time; taken for motion, the planes were shifted by
    # up to 17 px (2 um) at 60 degrees, which shortens the dendrite in the projection
    for seed in (0, 1):
        stack, _ = _oblique_stack(elevation_deg, seed)
        assert not register_planes(stack, 0.12)[1].any(), (elevation_deg, seed)


@pytest.mark.parametrize("elevation_deg, jitter_px", [(30, 2.0), (60, 2.0), (35, 1.0), (40, 1.0)])
def test_motion_is_registered_beside_a_rising_dendrite(elevation_deg, jitter_px):
    # failure modes: at the stack's ends the rising dendrite is the only structure in focus; its
    # step was read as motion there (a plane left 36 px off at 30 degrees); searched beyond 1 um,
    # its step of 1.4-1.9 um per plane (30-40 degrees) was taken where no peak lay within 1 um
    # (end planes 18-19 px off)
    for seed in (0, 1):
        stack, true = _oblique_stack(elevation_deg, seed + 10, jitter_px=jitter_px, flat=True)
        _, shifts = register_planes(stack, 0.12)
        residual = true + shifts
        residual -= np.median(residual, axis=0)
        err = np.abs(residual).max(axis=1)
        assert err.max() <= 1.0 / 0.12, (elevation_deg, seed, err)  # no plane more than 1 um off
        # where the flat dendrite is in focus too, the motion is found; at the ends, where only
        # the rising one is, motion along it cannot be told from its rise
        assert err[2:9].max() <= 2.0, (elevation_deg, seed, err)
