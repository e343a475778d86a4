"""Tests of the two-photon dendritic-spine simulator (analysis.sim.spines) against its own truth.

Every expected number is computed from the truth or from the stated model (Poisson counts,
exponential survival, Gaussian PSF, Poisson + Gaussian noise), never hard-coded from a run.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.filters import window
from skimage.registration import phase_cross_correlation

from analysis.measure.matching import match_points
from analysis.sim.spines import (
    PRESETS,
    SNR_LEVELS,
    SPINE_MORPHOLOGY,
    evolve_spines,
    render_again,
    render_session,
    simulate_dendrite_truth,
    simulate_repeat_imaging,
    simulate_spine_sessions,
    with_spines,
)

SMALL = {"field_um": (30.0, 30.0), "depth_um": 8.0, "n_dendrites": 2, "min_separation_um": 6.0}


def _lonely_head(head_diameter_um: float = 0.6, depth_um: float = 12.0):
    """One dendrite with a single spine whose head is 3 um from the shaft (no visible neck)."""
    truth = simulate_dendrite_truth(0, field_um=(12.0, 12.0), depth_um=depth_um, n_dendrites=1,
                                    spine_density_per_um=0.0)
    options = []
    for side in (1, -1):
        spines = pd.DataFrame({
            "spine_id": [0], "dendrite_id": [0], "s_um": [truth.dendrites["length_um"][0] / 2], "side": [side],
            "type": ["thin"], "head_diameter_um": [head_diameter_um], "neck_length_um": [3.0],
            "neck_diameter_um": [1e-3], "azimuth_deg": [0.0], "elevation_deg": [0.0],
        })
        options.append(with_spines(truth, spines))
    # the side whose head is nearer the field centre (away from the edges)
    return min(options, key=lambda t: float(np.hypot(t.spines["y_um"][0] - 6.0, t.spines["x_um"][0] - 6.0)))


def _shift(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Shift (pixels) registering ``moving`` onto ``reference``: Hann-windowed cross-correlation
    (skimage's phase correlation without the whitening, which amplifies the shot noise)."""
    win = window("hann", reference.shape)
    ref, mov = ((im - im.mean()) * win for im in (reference.astype(float), moving.astype(float)))
    return phase_cross_correlation(ref, mov, upsample_factor=20, normalization=None)[0]


# ----------------------------------------------------------------------------- determinism
def test_same_seed_identical_different_seed_differs() -> None:
    a = simulate_spine_sessions(5, preset="test")
    b = simulate_spine_sessions(5, preset="test")
    c = simulate_spine_sessions(6, preset="test")
    assert len(a) == len(PRESETS["test"]["days"])
    for sa, sb in zip(a, b):
        assert np.array_equal(sa.image, sb.image)
        pd.testing.assert_frame_equal(sa.spines, sb.spines)
        pd.testing.assert_frame_equal(sa.truth.spines, sb.truth.spines)
        pd.testing.assert_frame_equal(sa.dendrites, sb.dendrites)
    assert not np.array_equal(a[0].image, c[0].image)
    assert not a[0].truth.spines[["y_um", "x_um"]].equals(c[0].truth.spines[["y_um", "x_um"]])


def test_earlier_sessions_do_not_depend_on_later_ones() -> None:
    two = simulate_spine_sessions(2, preset="test", days=[0, 7], target_density_ratio=[1, 0.87])
    three = simulate_spine_sessions(2, preset="test", days=[0, 7, 30], target_density_ratio=[1, 0.87, 1.0])
    for s2, s3 in zip(two, three):
        assert np.array_equal(s2.image, s3.image)


# ----------------------------------------------------------------------------- truth
@pytest.mark.parametrize("density", [0.5, 1.3])
def test_density_matches_request(density: float) -> None:
    counts, lengths = [], []
    for seed in range(20):
        truth = simulate_dendrite_truth(seed, spine_density_per_um=density, n_dendrites=3)  # ~200 um each
        counts.append(len(truth.spines))
        lengths.append(truth.total_length_um)
        # one row per spine, each on an existing dendrite and within its length
        assert truth.spines["spine_id"].is_unique
        length = truth.dendrites.set_index("dendrite_id")["length_um"]
        assert (truth.spines["s_um"] <= length[truth.spines["dendrite_id"]].to_numpy()).all()
    total_len = float(np.sum(lengths))
    observed = np.sum(counts) / total_len
    se = math.sqrt(density / total_len)  # Poisson count over the summed length
    assert abs(observed - density) < 4 * se, (observed, density, se)


def test_type_fractions_and_morphology() -> None:
    fractions = {"thin": 0.4, "stubby": 0.3, "mushroom": 0.2, "filopodia": 0.1}
    tables = [simulate_dendrite_truth(s, spine_density_per_um=1.5, type_fractions=fractions, **SMALL).spines
              for s in range(10)]
    sp = pd.concat(tables, ignore_index=True)
    n = len(sp)
    for name, p in fractions.items():
        got = float((sp["type"] == name).mean())
        assert abs(got - p) < 4 * math.sqrt(p * (1 - p) / n), (name, got, p)
    for name, morph in SPINE_MORPHOLOGY.items():
        sub = sp[sp["type"] == name]
        mean_head = morph["head_diameter_um"][0]
        assert sub["head_diameter_um"].mean() == pytest.approx(mean_head, abs=0.05)
    assert (sp.loc[sp["type"] == "filopodia", "head_diameter_um"] == 0).all()
    assert sp.loc[sp["type"] == "mushroom", "head_diameter_um"].mean() > sp.loc[
        sp["type"] == "thin", "head_diameter_um"].mean() + 0.2


def test_spine_geometry_is_consistent() -> None:
    truth = simulate_dendrite_truth(3, **SMALL)
    sp = truth.spines
    base = sp[["base_y_um", "base_x_um", "base_z_um"]].to_numpy()
    head = sp[["y_um", "x_um", "z_um"]].to_numpy()
    reach = sp["neck_length_um"] + sp["head_diameter_um"] / 2
    np.testing.assert_allclose(np.linalg.norm(head - base, axis=1), reach, rtol=1e-9)
    radius = truth.dendrites.set_index("dendrite_id")["radius_um"]
    for d, cl in truth.centrelines.items():
        m = (sp["dendrite_id"] == d).to_numpy()
        dist = np.min(np.linalg.norm(base[m, None, :] - cl[None], axis=2), axis=1)
        # the base sits on the shaft surface (centreline sampled every 0.1 um)
        np.testing.assert_allclose(dist, radius[d], atol=0.01)
        # heads lie outside the shaft, on the side they were drawn on
        assert (np.min(np.linalg.norm(head[m, None, :] - cl[None], axis=2), axis=1) > radius[d]).all()
    # spacing: no two spines closer than min_spacing_um on the same side of the same dendrite
    for _, g in sp.groupby(["dendrite_id", "side"]):
        s = np.sort(g["s_um"].to_numpy())
        assert np.all(np.diff(s) >= truth.min_spacing_um - 1e-12)


# ----------------------------------------------------------------------------- turnover
@pytest.mark.parametrize("ratio", [0.6, 0.87, 1.3])
def test_target_density_ratio_and_identities(ratio: float) -> None:
    # 0.6 needs extra loss, 1.3 extra gain, whatever the realised count of this truth
    truth = simulate_dendrite_truth(11, spine_density_per_um=1.0, **SMALL)
    expected_count = ratio * truth.baseline_density_per_um * truth.total_length_um
    counts = []
    old_ids = set(truth.spines["spine_id"])
    old = truth.spines.set_index("spine_id")
    for k in range(60):
        nxt = evolve_spines(truth, k, days=7, target_density_ratio=ratio)
        counts.append(len(nxt.spines))
        if k >= 10:
            continue
        ids = nxt.spines["spine_id"]
        assert ids.is_unique
        kept = nxt.spines[ids.isin(old_ids)].set_index("spine_id")
        new = nxt.spines[~ids.isin(old_ids)]
        # persistent spines keep their place, shape and coordinates; new ones get new ids
        cols = ["dendrite_id", "s_um", "side", "type", "head_diameter_um", "neck_length_um", "y_um", "x_um", "z_um"]
        pd.testing.assert_frame_equal(kept[cols], old.loc[kept.index, cols])
        assert (new["spine_id"] >= truth.next_spine_id).all()
        assert (new["first_day"] == truth.day + 7).all()
        assert nxt.next_spine_id == truth.next_spine_id + len(new)
    counts = np.asarray(counts, float)
    se = counts.std(ddof=1) / math.sqrt(len(counts))
    assert abs(counts.mean() - expected_count) < 4 * se + 1e-9, (counts.mean(), expected_count, se)
    assert counts.mean() / (truth.baseline_density_per_um * truth.total_length_um) == pytest.approx(ratio, abs=0.03)


def test_recovery_back_to_baseline() -> None:
    truth = simulate_dendrite_truth(12, **SMALL)
    low = evolve_spines(truth, 0, days=7, target_density_ratio=0.7)
    ratios = [len(evolve_spines(low, k, days=56, target_density_ratio=1.0).spines)
              / (truth.baseline_density_per_um * truth.total_length_um) for k in range(60)]
    se = np.std(ratios, ddof=1) / math.sqrt(len(ratios))
    assert abs(np.mean(ratios) - 1.0) < 4 * se, (np.mean(ratios), se)


@pytest.mark.parametrize("gain,loss,days", [(0.03, 0.03, 10.0), (0.05, 0.01, 7.0)])
def test_gain_and_loss_rates(gain: float, loss: float, days: float) -> None:
    truth = simulate_dendrite_truth(13, **SMALL)
    ids = set(truth.spines["spine_id"])
    baseline_count = truth.baseline_density_per_um * truth.total_length_um
    lost, gained = [], []
    for k in range(100):
        nxt = evolve_spines(truth, k, days=days, gain_rate_per_day=gain, loss_rate_per_day=loss)
        now = set(nxt.spines["spine_id"])
        lost.append(len(ids - now) / len(ids))
        gained.append(len(now - ids) / baseline_count)
    p_loss = 1 - math.exp(-loss * days)
    p_gain = gain / loss * (1 - math.exp(-loss * days))
    se_loss = math.sqrt(p_loss * (1 - p_loss) / len(ids) / len(lost))
    se_gain = math.sqrt(p_gain / baseline_count / len(gained))
    assert abs(np.mean(lost) - p_loss) < 4 * se_loss, (np.mean(lost), p_loss)
    assert abs(np.mean(gained) - p_gain) < 4 * se_gain, (np.mean(gained), p_gain)


def test_loss_fraction_extra_and_no_turnover() -> None:
    truth = simulate_dendrite_truth(14, **SMALL)
    same = evolve_spines(truth, 0, days=5, gain_rate_per_day=0.0, loss_rate_per_day=0.0)
    pd.testing.assert_frame_equal(same.spines, truth.spines)
    kept = [len(evolve_spines(truth, k, days=5, gain_rate_per_day=0.0, loss_rate_per_day=0.0,
                              loss_fraction_extra=0.2).spines) / len(truth.spines) for k in range(100)]
    se = math.sqrt(0.2 * 0.8 / len(truth.spines) / len(kept))
    assert abs(np.mean(kept) - 0.8) < 4 * se
    with pytest.raises(ValueError):
        evolve_spines(truth, 0, days=5, target_density_ratio=0.9, loss_fraction_extra=0.1)


# ----------------------------------------------------------------------------- rendering
def test_reference_head_brightness_position_and_axial_elongation() -> None:
    truth = _lonely_head()
    sig_xy, sig_z, px, dz = 0.22, 1.0, 0.1, 0.25
    s = render_session(truth, 0, pixel_size_um=px, z_step_um=dz, mode="stack", psf_sigma_xy_um=sig_xy,
                       psf_sigma_z_um=sig_z, signal_photons=50.0, background_photons=3.0,
                       drift_um=(0.37, -0.21), rotation_deg=7.0)
    head = s.spines.iloc[0]
    # calibration: the reference head peaks at signal_photons above background
    assert head["peak_photons"] == pytest.approx(50.0, rel=0.05)
    sig = s.expected.astype(float) - 3.0
    z0, y0, x0 = (int(round(head[k])) for k in ("z", "y", "x"))
    w, wz = 12, 16  # 4.6 and 4 sigma: the truncated second moments are within 0.5 % of the full ones
    zs, ys, xs = np.arange(z0 - wz, z0 + wz + 1), np.arange(y0 - w, y0 + w + 1), np.arange(x0 - w, x0 + w + 1)
    assert zs[0] >= 0 and zs[-1] < sig.shape[0], "head too close to the top or bottom of the stack"
    box = sig[np.ix_(zs, ys, xs)]
    zz, yy, xx = np.meshgrid(zs, ys, xs, indexing="ij")
    # the blob's centroid is at the truth coordinate after drift and rotation
    assert np.sum(zz * box) / box.sum() == pytest.approx(head["z"], abs=0.1)
    assert np.sum(yy * box) / box.sum() == pytest.approx(head["y"], abs=0.1)
    assert np.sum(xx * box) / box.sum() == pytest.approx(head["x"], abs=0.1)
    # second moments: lateral vs axial extent of the head = PSF + sphere (r^2 / 5)
    r2_5 = (0.3 ** 2) / 5
    prof_x, prof_z = sig[z0, y0, xs], sig[zs, y0, x0]
    sd_x = px * math.sqrt(np.sum(prof_x * (xs - head["x"]) ** 2) / prof_x.sum())
    sd_z = dz * math.sqrt(np.sum(prof_z * (zs - head["z"]) ** 2) / prof_z.sum())
    assert sd_x == pytest.approx(math.sqrt(sig_xy ** 2 + r2_5), rel=0.03)
    assert sd_z == pytest.approx(math.sqrt(sig_z ** 2 + r2_5), rel=0.03)
    assert sd_z / sd_x > 3.0


def test_heads_are_bright_at_truth_coordinates() -> None:
    truth = simulate_dendrite_truth(21, **SMALL)
    s = render_session(truth, 4, pixel_size_um=0.12, drift_um=(0.8, -1.1), rotation_deg=3.0,
                       deformation_um=0.3, **SNR_LEVELS["high"])
    sp = s.spines[s.spines["in_field"] & (s.spines["type"] != "filopodia")]
    sp = sp[(sp["y"] > 8) & (sp["y"] < s.image.shape[0] - 9) & (sp["x"] > 8) & (sp["x"] < s.image.shape[1] - 9)]
    assert len(sp) > 20
    outward = np.column_stack([sp["y"] - sp["base_y"], sp["x"] - sp["base_x"]])
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    at = ndimage.map_coordinates(s.expected, [sp["y"], sp["x"]], order=1)
    beyond = ndimage.map_coordinates(s.expected, [sp["y"] + 6 * outward[:, 0], sp["x"] + 6 * outward[:, 1]],
                                     order=1)
    # the head is brighter than a point 0.7 um further out along the spine
    assert np.mean(at > beyond) > 0.95
    # the noisy image at the head, over the MIP background, is the expected contrast
    far = ndimage.distance_transform_edt(s.expected - s.expected.min() < 0.01) > 20
    bg = float(np.median(s.image[far]))
    patch = [s.image[int(round(y)) - 1: int(round(y)) + 2, int(round(x)) - 1: int(round(x)) + 2].mean()
             for y, x in zip(sp["y"], sp["x"])]
    patch_exp = [s.expected[int(round(y)) - 1: int(round(y)) + 2, int(round(x)) - 1: int(round(x)) + 2].mean()
                 for y, x in zip(sp["y"], sp["x"])]
    contrast = np.mean(patch) - bg
    expected_contrast = np.mean(patch_exp) - SNR_LEVELS["high"]["background_photons"]
    # (the MIP of noisy planes lifts the background more than the bright heads: allow 15 %)
    assert contrast == pytest.approx(expected_contrast, rel=0.15)
    assert expected_contrast > 5 * math.sqrt(SNR_LEVELS["high"]["background_photons"])


def test_drift_moves_image_and_truth_together() -> None:
    px = 0.12
    drift = (0.9, -0.55)
    truth = simulate_dendrite_truth(5)  # 61.44 um field: 512 x 512 pixels, three dendrites
    a = render_session(truth, 1, pixel_size_um=px, drift_um=(0.0, 0.0))
    b = render_session(truth, 2, pixel_size_um=px, drift_um=drift)
    assert a.image.shape == (512, 512)
    # registering b onto a from the noisy images alone takes minus the drift
    np.testing.assert_allclose(_shift(a.image, b.image), [-drift[0] / px, -drift[1] / px], atol=0.5)
    # exactly: the expected image of b is that of a moved by the drift (away from the borders)
    inner = (slice(20, -20), slice(20, -20))

    def misfit(shift_px: np.ndarray) -> float:
        moved = ndimage.shift(a.expected.astype(float), shift_px, order=3, mode="nearest")
        return float(np.sqrt(np.mean((moved[inner] - b.expected[inner]) ** 2)) / np.std(b.expected[inner]))

    true_px = np.array(drift) / px
    assert misfit(true_px) < 0.02
    assert misfit(true_px + [0.5, 0.0]) > 2 * misfit(true_px)
    assert misfit(true_px + [0.0, 0.5]) > 2 * misfit(true_px)
    merged = a.spines.merge(b.spines, on="spine_id", suffixes=("_a", "_b"))
    assert len(merged) == len(truth.spines)
    np.testing.assert_allclose(merged["y_b"] - merged["y_a"], drift[0] / px, atol=1e-9)
    np.testing.assert_allclose(merged["x_b"] - merged["x_a"], drift[1] / px, atol=1e-9)
    np.testing.assert_allclose(b.dendrites["y"] - a.dendrites["y"], drift[0] / px, atol=1e-9)
    np.testing.assert_allclose(b.dendrites["x"] - a.dendrites["x"], drift[1] / px, atol=1e-9)


def test_rotation_turns_image_and_truth_together() -> None:
    truth = simulate_dendrite_truth(6, field_um=(30.72, 30.72), n_dendrites=2, min_separation_um=6.0)
    angle = 5.0
    a = render_session(truth, 1, rotation_deg=0.0)
    b = render_session(truth, 2, rotation_deg=angle)
    centre = (np.array(a.image.shape) - 1) / 2.0
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    rot = np.array([[c, -s], [s, c]])
    merged = a.spines.merge(b.spines, on="spine_id", suffixes=("_a", "_b"))
    pa = merged[["y_a", "x_a"]].to_numpy() - centre
    pb = merged[["y_b", "x_b"]].to_numpy() - centre
    np.testing.assert_allclose(pb, pa @ rot.T, atol=1e-9)
    # the expected image of b is that of a turned the same way (p = c + R^T (q - c))
    inner = (slice(60, -60), slice(60, -60))

    def misfit(r: np.ndarray) -> float:
        turned = ndimage.affine_transform(a.expected.astype(float), r.T, offset=centre - r.T @ centre, order=3,
                                          mode="nearest")
        return float(np.sqrt(np.mean((turned[inner] - b.expected[inner]) ** 2)) / np.std(b.expected[inner]))

    assert misfit(rot) < 0.02
    assert misfit(rot.T) > 5 * misfit(rot)


def test_deformation_has_the_stated_rms_and_moves_image_and_truth_together() -> None:
    from analysis.sim.spines import _motion

    # rms displacement per axis over random warps (random phases: E[d^2] = deformation^2 exactly)
    yy, xx = np.meshgrid(np.linspace(0, 60, 13), np.linspace(0, 60, 13), indexing="ij")
    pts = np.column_stack([yy.ravel(), xx.ravel(), np.zeros(yy.size)])
    disp = np.concatenate([_motion(np.random.default_rng(k), (60.0, 60.0), (0.0, 0.0), 0.0, 0.4)(pts) - pts
                           for k in range(300)])
    assert np.sqrt(np.mean(disp[:, 0] ** 2)) == pytest.approx(0.4, rel=0.1)
    assert np.sqrt(np.mean(disp[:, 1] ** 2)) == pytest.approx(0.4, rel=0.1)
    assert np.all(disp[:, 2] == 0)
    # in a rendered session the truth follows the warp of the image: heads stay on their blobs
    truth = _lonely_head()
    flat = render_session(truth, 0, pixel_size_um=0.1, z_step_um=0.25, mode="stack")
    warped = render_session(truth, 0, pixel_size_um=0.1, z_step_um=0.25, mode="stack", deformation_um=0.5)
    moved = np.hypot(*(warped.spines.loc[0, ["y", "x"]].to_numpy(float) - flat.spines.loc[0, ["y", "x"]].to_numpy(float)))
    assert moved > 0.5  # pixels (0.05 um)
    sig = warped.expected.astype(float) - warped.info["background_photons"]
    head = warped.spines.iloc[0]
    z0, y0, x0 = (int(round(head[k])) for k in ("z", "y", "x"))
    ys, xs = np.arange(y0 - 6, y0 + 7), np.arange(x0 - 6, x0 + 7)
    box = sig[z0][np.ix_(ys, xs)]
    assert np.sum(box * ys[:, None]) / box.sum() == pytest.approx(head["y"], abs=0.15)
    assert np.sum(box * xs[None, :]) / box.sum() == pytest.approx(head["x"], abs=0.15)


def test_axial_drift_moves_stack_and_truth_together() -> None:
    truth = simulate_dendrite_truth(9, field_um=(12.0, 12.0), n_dendrites=1, depth_um=10.0)
    dz = 0.5
    a = render_session(truth, 0, pixel_size_um=0.12, z_step_um=0.25, mode="stack")
    b = render_session(truth, 0, pixel_size_um=0.12, z_step_um=0.25, mode="stack", drift_um=(0.0, 0.0, 0.7))
    merged = a.spines.merge(b.spines, on="spine_id", suffixes=("_a", "_b"))
    np.testing.assert_allclose(merged["z_b"] - merged["z_a"], 0.7 / 0.25, atol=1e-9)
    np.testing.assert_allclose(merged[["y_b", "x_b"]].to_numpy(), merged[["y_a", "x_a"]].to_numpy(), atol=1e-9)
    inner = (slice(6, -6), slice(None), slice(None))

    def misfit(shift_planes: float) -> float:
        moved = ndimage.shift(a.expected.astype(float), (shift_planes, 0, 0), order=3, mode="nearest")
        return float(np.sqrt(np.mean((moved[inner] - b.expected[inner]) ** 2)) / np.std(b.expected[inner]))

    assert misfit(0.7 / 0.25) < 0.02
    assert misfit(0.7 / 0.25 + dz / 0.25) > 3 * misfit(0.7 / 0.25)


def test_stack_shaft_is_axially_elongated() -> None:
    truth = simulate_dendrite_truth(2, field_um=(12.0, 12.0), n_dendrites=1, spine_density_per_um=0.0, depth_um=8.0)
    px, dz, sig_xy, sig_z = 0.1, 0.25, 0.22, 1.0
    s = render_session(truth, 0, pixel_size_um=px, z_step_um=dz, mode="stack", psf_sigma_xy_um=sig_xy,
                       psf_sigma_z_um=sig_z, background_photons=0.0)
    assert s.image.ndim == 3 and s.image.shape[0] == int(8.0 / dz) + 1
    r = float(truth.dendrites["radius_um"][0])
    d = s.dendrites[s.dendrites["in_field"]].iloc[len(s.dendrites[s.dendrites["in_field"]]) // 2]
    zc, yc, xc = int(round(d["z"])), int(round(d["y"])), int(round(d["x"]))
    prof_z = s.expected[:, yc, xc].astype(float)
    sd_z = dz * math.sqrt(np.sum(prof_z * (np.arange(len(prof_z)) - d["z"]) ** 2) / prof_z.sum())
    # a tube of radius r: cross-section variance r^2 / 4 per axis, plus the PSF
    assert sd_z == pytest.approx(math.sqrt(sig_z ** 2 + r ** 2 / 4), rel=0.1)
    plane = s.expected[zc]
    w = 12
    # lateral profile across the shaft (the dendrite runs roughly along its tangent)
    cl = s.dendrites[s.dendrites["dendrite_id"] == 0][["y", "x"]].to_numpy()
    k = int(np.argmin(np.hypot(cl[:, 0] - d["y"], cl[:, 1] - d["x"])))
    t = cl[k + 5] - cl[k - 5]
    n = np.array([-t[1], t[0]]) / np.linalg.norm(t)
    off = np.arange(-w, w + 1, 0.25)
    prof = ndimage.map_coordinates(plane, [d["y"] + off * n[0], d["x"] + off * n[1]], order=1).astype(float)
    sd_xy = px * math.sqrt(np.sum(prof * off ** 2) / prof.sum())
    assert sd_xy == pytest.approx(math.sqrt(sig_xy ** 2 + r ** 2 / 4), rel=0.1)
    assert sd_z / sd_xy > 2.0


def test_noise_matches_photon_model_and_mip_is_max_of_noisy_stack() -> None:
    truth = simulate_dendrite_truth(8, field_um=(15.36, 15.36), n_dendrites=1)
    kw = {"pixel_size_um": 0.12, "signal_photons": 30.0, "background_photons": 5.0, "read_noise_e": 1.5,
          "background_cv": 0.25}
    stack = render_session(truth, 9, mode="stack", **kw)
    z = (stack.image - stack.expected) / np.sqrt(stack.expected + kw["read_noise_e"] ** 2)
    assert abs(float(z.mean())) < 0.01
    assert float(z.var()) == pytest.approx(1.0, abs=0.02)
    # where the expected count is near the mean background, the variance is background + read^2
    bg = np.abs(stack.expected - kw["background_photons"]) < 0.25
    assert bg.sum() > 10_000
    resid = stack.image[bg] - stack.expected[bg]
    assert float(resid.var()) == pytest.approx(kw["background_photons"] + kw["read_noise_e"] ** 2, rel=0.04)
    mip = render_session(truth, 9, mode="mip", **kw)
    np.testing.assert_array_equal(mip.image, stack.image.max(axis=0))
    u16 = render_session(truth, 9, mode="mip", dtype="uint16", **kw)
    assert u16.image.dtype == np.uint16
    np.testing.assert_array_equal(u16.image, np.clip(np.rint(mip.image + 100.0), 0, 65535).astype(np.uint16))
    assert mip.info["snr"] == pytest.approx(30.0 / math.sqrt(5.0 + 1.5 ** 2))


def test_background_variation_has_the_stated_mean_and_cv() -> None:
    truth = simulate_dendrite_truth(10, field_um=(30.72, 30.72), n_dendrites=2, min_separation_um=6.0)
    flat = render_session(truth, 3, signal_photons=0.0, background_photons=4.0)
    assert np.all(flat.expected == np.float32(4.0))
    s = render_session(truth, 3, signal_photons=0.0, background_photons=4.0, background_cv=0.3)
    bg = s.expected.astype(float)  # no signal: the expected image is the background
    assert bg.mean() == pytest.approx(4.0, rel=1e-3)
    assert bg.std() / bg.mean() == pytest.approx(0.3, rel=0.05)
    assert bg.min() > 0
    # smooth: neighbouring pixels (0.12 um) nearly identical, pixels 20 um apart much less so
    a = bg - bg.mean()
    assert np.mean(a[:, 1:] * a[:, :-1]) / a.var() > 0.99
    assert np.mean(a[:, 167:] * a[:, :-167]) / a.var() < 0.5
    # the noise model holds around it
    z = (s.image - s.expected) / np.sqrt(s.expected + s.info["read_noise_e"] ** 2)
    assert float(np.var(z[s.expected < np.percentile(s.expected, 50)])) < 1.0  # MIP: max of planes


# ----------------------------------------------------------------------------- sessions and presets
def test_presets_and_snr_levels() -> None:
    sessions = simulate_spine_sessions(0, preset="test")
    assert [s.image.shape for s in sessions] == [(128, 128)] * 2
    assert [s.info["day"] for s in sessions] == list(PRESETS["test"]["days"])
    image, table = sessions[0]
    assert image is sessions[0].image and {"spine_id", "y", "x"} <= set(table.columns)
    snrs = {level: simulate_spine_sessions(0, preset="test", snr=level)[0].info["snr"] for level in SNR_LEVELS}
    assert snrs["high"] > snrs["default"] > snrs["low"]
    for level, p in SNR_LEVELS.items():
        assert snrs[level] == pytest.approx(p["signal_photons"] / math.sqrt(p["background_photons"]
                                                                            + p["read_noise_e"] ** 2))
    # in-field density of the image: spines with heads inside over the dendrite length inside
    for sess in sessions:
        inside = sess.dendrites[sess.dendrites["in_field"]]
        assert sess.info["spines_in_field"] == int(sess.spines["in_field"].sum())
        steps = inside.groupby("dendrite_id")["arc_um"].apply(lambda a: np.sum(np.diff(a.to_numpy())[
            np.diff(a.index.to_numpy()) == 1]))
        assert sess.info["length_in_field_um"] == pytest.approx(float(steps.sum()), rel=1e-9)
        assert 0.7 * 15.36 < sess.info["length_in_field_um"] < 3 * 15.36
    stack = simulate_spine_sessions(0, preset="test", mode="stack", days=[0], target_density_ratio=[1])
    assert stack[0].image.ndim == 3 and "z" in stack[0].spines
    with pytest.raises(ValueError, match="unknown preset"):
        simulate_spine_sessions(0, preset="nope")
    with pytest.raises(ValueError, match="unknown setting"):
        simulate_spine_sessions(0, preset="test", pixel_size=0.1)


def test_photon_scale_changes_the_imaging_of_one_session_only() -> None:
    plain = simulate_spine_sessions(5, preset="test")
    scaled = simulate_spine_sessions(5, preset="test", photon_scale=[1.0, 0.25])
    # a factor of 1 leaves the session as it was (same draws); the scaled one has the same
    # tissue, motion and noise draws, with a quarter of the photons
    np.testing.assert_array_equal(scaled[0].image, plain[0].image)
    assert scaled[1].spines.drop(columns="peak_photons").equals(plain[1].spines.drop(columns="peak_photons"))
    np.testing.assert_allclose(scaled[1].spines["peak_photons"], 0.25 * plain[1].spines["peak_photons"], rtol=1e-6)
    p = SNR_LEVELS["default"]
    assert scaled[1].info["snr"] == pytest.approx(0.25 * p["signal_photons"] / math.sqrt(
        0.25 * p["background_photons"] + p["read_noise_e"] ** 2))
    assert [s.info["photon_scale"] for s in scaled] == [1.0, 0.25]
    np.testing.assert_allclose(scaled[1].expected, 0.25 * plain[1].expected, rtol=1e-5)
    for bad in ([1.0], [1.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="photon_scale"):
            simulate_spine_sessions(5, preset="test", photon_scale=bad)


def test_sessions_follow_the_requested_density() -> None:
    ratios, n_in, len_in = [], 0, 0.0
    for seed in range(12):
        s = simulate_spine_sessions(seed, preset="test", days=[0, 7, 63], target_density_ratio=[1.0, 0.87, 1.0])
        base = s[0].truth.baseline_density_per_um * s[0].truth.total_length_um
        ratios.append([len(x.truth.spines) / base for x in s])
        n_in += s[0].info["spines_in_field"]
        len_in += s[0].info["length_in_field_um"]
        kept = set(s[0].truth.spines["spine_id"]) & set(s[1].truth.spines["spine_id"])
        assert len(kept) > 0
    mean = np.mean(ratios, axis=0)
    se = np.std(ratios, axis=0, ddof=1) / math.sqrt(len(ratios))
    np.testing.assert_array_less(np.abs(mean - [1.0, 0.87, 1.0]), 4 * se + 0.01)
    # the density inside the image is the requested one too (Poisson count over the length inside)
    density = PRESETS["test"]["spine_density_per_um"]
    assert abs(n_in / len_in - density) < 4 * math.sqrt(density / len_in), (n_in / len_in, len_in)


def test_repeat_imaging_has_no_turnover() -> None:
    a, b = simulate_repeat_imaging(4, preset="test", snr="high", field_um=(30.72, 30.72), n_dendrites=2,
                                   min_separation_um=6.0)
    assert set(a.spines["spine_id"]) == set(b.spines["spine_id"])
    pd.testing.assert_frame_equal(a.truth.spines, b.truth.spines)
    assert not np.array_equal(a.image, b.image)
    assert a.info["drift_um"] != b.info["drift_um"]
    # register b onto a from the images alone, then match the truth points: one-to-one, same ids
    shift = _shift(a.image, b.image)
    pa = a.spines[["y", "x"]].to_numpy()
    pb = b.spines[["y", "x"]].to_numpy() + shift
    match = match_points(pb, pa, max_distance=3.0)
    assert match.recall == 1.0 and match.precision == 1.0
    ids_b = b.spines["spine_id"].to_numpy()[match.pairs[:, 0]]
    ids_a = a.spines["spine_id"].to_numpy()[match.pairs[:, 1]]
    assert np.mean(ids_a == ids_b) >= 0.95


def test_render_again_keeps_the_motion_and_changes_only_what_is_imaged() -> None:
    sessions = simulate_spine_sessions(3, preset="test", snr="low", plane_jitter_um=0.1)
    a, _ = simulate_repeat_imaging(3, preset="test")
    for ses in (sessions[1], a):
        # the session itself, to the last bit (motion, warp, plane shifts, background and noise)
        again = render_again(ses)
        np.testing.assert_array_equal(again.image, ses.image)
        pd.testing.assert_frame_equal(again.spines, ses.spines)
        assert again.info == ses.info
    ses = sessions[1]
    # the stack behind the projection: its expected maximum over planes is the projection's
    stack = render_again(ses, mode="stack")
    assert stack.image.ndim == 3 and stack.info["mode"] == "stack"
    np.testing.assert_allclose(stack.expected.max(axis=0), ses.expected, rtol=1e-6)
    np.testing.assert_allclose(stack.spines[["y", "x"]], ses.spines[["y", "x"]])
    # the bare dendrites: darker only where the spines' light reaches (the PSF within 4 sigmas
    # of a head, neck or base), the same elsewhere
    bare = render_again(ses, with_spines(ses.truth, ses.truth.spines.iloc[:0]))
    assert len(bare.spines) == 0
    light = ses.expected - bare.expected
    assert light.min() > -1e-4
    px = ses.info["pixel_size_um"]
    t = np.linspace(0.0, 1.0, 30)[:, None]
    ends = ses.spines[["y", "x", "base_y", "base_x"]].to_numpy()
    path = np.concatenate([e[:2] + t * (e[2:] - e[:2]) for e in ends])  # head to base, in pixels
    grid = np.argwhere(np.ones(light.shape, bool))
    dist = cKDTree(path).query(grid)[0].reshape(light.shape) * px
    # (the PSF's kernel ends at 4 sigmas; heads are at most 1.6 um across; planes shift by ~0.1 um)
    near = dist <= 4 * ses.info["psf_sigma_xy_um"] + 0.8 + 0.5
    assert np.abs(light[~near]).max() < 1e-4
    # each head's own light: at its centre, the head is brighter than the bare dendrites
    iy, ix = np.rint(ses.spines[["y", "x"]].to_numpy()).astype(int).T
    inside = (iy >= 0) & (iy < light.shape[0]) & (ix >= 0) & (ix < light.shape[1])
    assert (light[iy[inside], ix[inside]] > 0).all()
    with pytest.raises(ValueError, match="not imaging settings"):
        render_again(ses, drift_um=(1.0, 0.0))
    with pytest.raises(ValueError, match="render_seed"):
        render_again(render_session(ses.truth, 0))
