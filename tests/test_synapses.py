"""Puncta detection, analysed area and density against hand-built scenes and simulated fields.

Hand-built scenes are sums of Gaussian puncta (apparent sigma 0.13 um) on a background,
with Poisson shot noise, gain, offset and read noise like a confocal detector; positions are
in micrometres, so the same scene can be rendered at any pixel size.  Detections are matched
one-to-one to the truth within 0.25 um (Hungarian, :func:`match_points`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from analysis.measure.area import analysed_area_mask, synapse_density
from analysis.measure.noise import noise_sd_map
from analysis.measure.puncta import (
    detect_puncta,
    estimate_punctum_radius,
    match_points,
    noise_detection_rate,
)

MATCH_UM = 0.25
GAIN, OFFSET, READ = 2.0, 100.0, 3.0


def render(points_um, amp, *, px=0.1, shape_um=(25.6, 25.6), sigma_um=0.13, background=20.0, seed=0):
    """Camera image (ADU) of puncta (peak ``amp`` photons/um^2-scaled) on ``background``.

    ``background`` (photons per 0.1 x 0.1 um pixel) may be an array-valued function of
    (y, x) in um; photon numbers scale with the pixel area, so a scene looks the same
    (per um^2) at every pixel size.
    """
    ny, nx = (int(round(s / px)) for s in shape_um)
    yy, xx = np.mgrid[:ny, :nx] * px
    area = (px / 0.1) ** 2
    bg = background(yy, xx) if callable(background) else np.full((ny, nx), float(background))
    lam = bg.copy()
    amp = np.broadcast_to(np.asarray(amp, float), (len(points_um),))
    for (y, x), a in zip(points_um, amp):
        r = 4 * sigma_um
        sl = tuple(slice(max(int((c - r) / px), 0), int((c + r) / px) + 2) for c in (y, x))
        lam[sl] += a * np.exp(-((yy[sl] - y) ** 2 + (xx[sl] - x) ** 2) / (2 * sigma_um**2))
    rng = np.random.default_rng(seed)
    return rng.poisson(lam * area) * GAIN + OFFSET + rng.normal(0, READ, lam.shape)


def spread_points(n, rng, shape_um=(25.6, 25.6), min_dist=1.0, margin=0.5):
    """``n`` random points (um) at least ``min_dist`` apart."""
    pts = []
    while len(pts) < n:
        p = rng.uniform(margin, np.array(shape_um) - margin)
        if all(np.hypot(*(p - q)) >= min_dist for q in pts):
            pts.append(p)
    return np.array(pts)


def match(p: pd.DataFrame, truth_um: np.ndarray, px: float = 0.1):
    return match_points(p[["y", "x"]].to_numpy() * px, truth_um, MATCH_UM)


def gradient(yy, xx):
    return 12.0 + 16.0 * xx / 25.6  # 12 -> 28 photons per pixel across the field


# --------------------------------------------------------------------------- hand-built scenes


def test_isolated_puncta_of_varied_brightness_on_a_gradient() -> None:
    rng = np.random.default_rng(1)
    truth = spread_points(80, rng)
    amp = rng.uniform(20, 60, len(truth))  # 4.5-13 x the background noise SD (~4.5 photons)
    p = detect_puncta(render(truth, amp, background=gradient), 0.1)
    m = match(p, truth)
    # false positives come from the noise at the documented rate (~0.5 per 100 um^2 of a
    # 655 um^2 field at threshold 4: ~3, Poisson)
    assert m.recall >= 0.98 and m.fp <= 8
    assert np.median(m.distances) < 0.025 and np.percentile(m.distances, 90) < 0.05  # um
    # the fitted peak height is the punctum's amplitude in image units (gain 2)
    ratio = p["intensity"].to_numpy()[m.pairs[:, 0]] / (GAIN * amp[m.pairs[:, 1]])
    assert 0.85 < np.median(ratio) < 1.15
    assert np.corrcoef(p["intensity"].to_numpy()[m.pairs[:, 0]], amp[m.pairs[:, 1]])[0, 1] > 0.9
    assert p["sigma_um"].between(0.09, 0.19).all() and (p["snr"] >= 4.0).all()


def test_touching_pairs_are_separated() -> None:
    rng = np.random.default_rng(2)
    centres = spread_points(30, rng, min_dist=1.5, margin=1.0)
    angle = rng.uniform(0, np.pi, len(centres))
    offset = 0.175 * np.column_stack([np.sin(angle), np.cos(angle)])  # pairs 0.35 um apart
    truth = np.concatenate([centres - offset, centres + offset])
    for amp in (40.0, np.r_[np.full(30, 60.0), np.full(30, 30.0)]):  # equal, and 2:1 pairs
        # every spot of this scene is half of a pair, so the image cannot tell the size of one
        # punctum: it is given (sigma 0.13 um, the PSF of the microscope)
        p = detect_puncta(render(truth, amp, seed=3), 0.1, punctum_radius_um=0.153)
        m = match(p, truth)
        assert m.recall >= 0.95 and m.precision >= 0.95, (m.recall, m.precision)


def test_noise_alone_gives_the_documented_false_positive_rate() -> None:
    # pure Poisson-Gaussian noise on an illumination gradient: the fixed threshold (4 noise
    # SDs, noise_fdr=None) lets through ~0.5 noise maxima per 100 um^2 (module docstring),
    # as the calibrated noise rate predicts
    images = [render([], 0.0, background=gradient, seed=s) for s in range(6)]
    fixed = [len(detect_puncta(im, 0.1, punctum_radius_um=0.15, noise_fdr=None)) for im in images]
    per_100um2 = 100 * np.mean(fixed) / (25.6 * 25.6)
    expected = 1e4 * noise_detection_rate(4.0, 0.15 / 1.1774 / 0.1)  # per 100 um^2 of 0.1 um pixels
    assert 0.2 < per_100um2 < 1.0 and per_100um2 == pytest.approx(expected, rel=0.6)
    # with the noise-FDR step-up (the default), pure noise gives (almost) nothing: <= 1 per
    # 1,000 um^2 (issue 12)
    default = [len(detect_puncta(im, 0.1)) for im in images]
    assert 1000 * np.mean(default) / (25.6 * 25.6) <= 1.0
    # halving the threshold must let noise through: the test would notice a noise estimate
    # that is far too high
    loose = [len(detect_puncta(render([], 0.0, seed=s), 0.1, threshold_sd=3.0, noise_fdr=None)) for s in range(2)]
    assert np.mean(loose) > 3 * max(np.mean(fixed), 0.5)


def test_no_per_image_threshold_gain_and_offset_do_not_matter() -> None:
    rng = np.random.default_rng(4)
    truth = spread_points(50, rng, min_dist=0.6)
    img = render(truth, rng.uniform(15, 40, len(truth)), background=gradient, seed=5)
    a = detect_puncta(img, 0.1)
    b = detect_puncta(img * 7.5 + 1000.0, 0.1)  # other gain and offset
    assert len(a) == len(b)
    np.testing.assert_allclose(a[["y", "x"]].to_numpy(), b[["y", "x"]].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(a["snr"], b["snr"], rtol=1e-6)


def test_same_physical_scene_at_two_pixel_sizes() -> None:
    rng = np.random.default_rng(6)
    truth = spread_points(70, rng, min_dist=0.5)
    amp = rng.uniform(25, 50, len(truth))
    n = {}
    for px in (0.1, 0.05):
        p = detect_puncta(render(truth, amp, px=px, seed=7), px)
        m = match(p, truth, px)
        assert m.recall >= 0.95 and m.precision >= 0.95, (px, m.recall, m.precision)
        assert np.median(m.distances) < 0.03
        n[px] = len(p)
    assert abs(n[0.1] - n[0.05]) <= 0.05 * n[0.1]


def test_mask_restricts_the_reported_puncta() -> None:
    truth = np.array([[3.0, 3.0], [3.0, 20.0], [20.0, 3.0], [20.0, 20.0]])
    img = render(truth, 50.0)
    mask = np.zeros(img.shape, bool)
    mask[:128, :128] = True
    p = detect_puncta(img, 0.1, mask=mask)
    assert ((p[["y", "x"]] < 127.5).all(axis=1)).all()  # nothing outside the mask
    assert match(p, truth).tp == 1 and match(detect_puncta(img, 0.1), truth).tp == 4
    assert list(p.index) == list(range(len(p)))  # numbered 0..n-1, as without a mask


def test_3d_stack_with_anisotropic_sampling() -> None:
    rng = np.random.default_rng(8)
    dz, px, shape = 0.3, 0.1, (12, 96, 96)
    truth = np.column_stack([rng.uniform(0.6, 2.7, 40), spread_points(40, rng, (9.6, 9.6), min_dist=0.8)])
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]] * np.array([dz, px, px])[:, None, None, None]
    lam = np.full(shape, 20.0)
    for z, y, x in truth:
        lam += 50 * np.exp(-((zz - z) ** 2 / (2 * 0.3**2) + ((yy - y) ** 2 + (xx - x) ** 2) / (2 * 0.13**2)))
    rng2 = np.random.default_rng(9)
    stack = rng2.poisson(lam) * GAIN + OFFSET + rng2.normal(0, READ, shape)
    p = detect_puncta(stack, px, z_step_um=dz)
    assert list(p.columns[:3]) == ["z", "y", "x"] and p.attrs["n_z"] == 12
    scale = np.array([dz, px, px])
    m = match_points(p[["z", "y", "x"]].to_numpy() * scale, truth, 0.3)
    assert m.recall >= 0.95 and m.fp <= 4
    dz_err = np.abs(p["z"].to_numpy()[m.pairs[:, 0]] * dz - truth[m.pairs[:, 1], 0])
    assert np.median(dz_err) < 0.05
    # pure noise stack: few false puncta
    noise = rng2.poisson(np.full(shape, 20.0)) * GAIN + OFFSET
    assert len(detect_puncta(noise, px, z_step_um=dz)) <= 3
    d = synapse_density(p, np.ones(shape[1:], bool), px, z_step_um=dz)
    # volume and count inside the axial guard bands: max(1 plane, axial half width 0.35 um) at either end
    guard = max(1.0, p.attrs["axial_radius_um"] / dz)
    assert d["analysed_volume_um3"] == pytest.approx(9.6 * 9.6 * (12 - 2 * guard) * 0.3)
    inside = int(((p["z"] >= guard - 0.5) & (p["z"] < 12 - 0.5 - guard)).sum())
    assert 0 < inside <= len(p) and d["n_puncta"] == inside
    assert d["puncta_density_per_um3"] == pytest.approx(inside / d["analysed_volume_um3"])


def test_noise_model_matches_the_camera() -> None:
    img = render([], 0.0, background=gradient, seed=10)
    sd, info = noise_sd_map(img, 0.1)
    assert info["alpha"] == pytest.approx(GAIN, rel=0.1)  # variance per ADU of signal
    assert info["zero_level"] == pytest.approx(OFFSET - READ**2 / GAIN, abs=4.0)
    photons = gradient(*np.mgrid[:256, :256] * 0.1)
    np.testing.assert_allclose(np.median(sd / np.sqrt(GAIN**2 * photons + READ**2)), 1.0, atol=0.05)


# --------------------------------------------------------------------------- analysed area


def _field_with_voids(seed: int, voids: bool):
    """25.6 um field, vignetted, puncta at 40 per 100 um^2 outside a soma and a vessel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256] * 0.1
    void = np.zeros((256, 256), bool)
    if voids:
        void |= (yy - 9.0) ** 2 + (xx - 16.0) ** 2 < 5.5**2  # soma, 11 um across
        void |= np.abs(xx - 0.5 * yy - 2.0) < 2.5  # vessel, 5 um wide
    pts = rng.uniform(0, 25.6, (int(0.4 * 25.6**2), 2))
    pts = pts[~void[tuple(np.clip((pts / 0.1).astype(int), 0, 255).T)]]
    illum = 1.0 - 0.35 * ((yy - 12.8) ** 2 + (xx - 12.8) ** 2) / 12.8**2
    from scipy import ndimage as ndi

    neuropil = ndi.gaussian_filter(np.where(void, 5.0, 20.0), 5.0)
    img = render(pts, rng.uniform(20, 50, len(pts)), background=lambda y, x: neuropil * illum, seed=seed)
    return img, ~void


def test_voids_are_excluded_from_the_analysed_area() -> None:
    img, truth = _field_with_voids(11, voids=True)
    mask = analysed_area_mask(img, 0.1)
    assert mask.sum() / truth.sum() == pytest.approx(1.0, abs=0.03)
    assert (mask != truth).mean() < 0.03
    # the same field without voids (but the same vignetting) keeps its whole area
    img, truth = _field_with_voids(12, voids=False)
    assert analysed_area_mask(img, 0.1).mean() > 0.99


def test_density_counts_puncta_inside_the_mask() -> None:
    mask = np.zeros((100, 100), bool)
    mask[:50] = True
    p = pd.DataFrame({"y": [10.0, 20.0, 70.0, 49.4], "x": [5.0, 5.0, 5.0, 5.0]})
    d = synapse_density(p, mask, 0.1)
    assert d["n_puncta"] == 3 and d["analysed_area_um2"] == pytest.approx(50.0)
    assert d["puncta_density_per_100um2"] == pytest.approx(6.0)
    empty = synapse_density(p.iloc[:0], mask, 0.1)
    assert empty["n_puncta"] == 0 and empty["puncta_density_per_100um2"] == 0.0


def test_match_points_is_one_to_one() -> None:
    pred = np.array([[0.0, 0.0], [0.0, 0.2], [5.0, 5.0]])
    true = np.array([[0.0, 0.1], [0.0, 0.3], [9.0, 9.0]])
    pairs, precision, recall, f1 = match_points(pred, true, 0.25)
    # greedy nearest matching would pair (1, 0) and leave 0 alone; Hungarian pairs both
    assert sorted(map(tuple, pairs.tolist())) == [(0, 0), (1, 1)]
    assert precision == recall == f1 == pytest.approx(2 / 3)
    m = match_points(pred, true, 0.25)
    assert m["tp"] == 2 and m.fp == 1 and m.fn == 1 and np.allclose(m.distances, 0.1)
    assert match_points(np.empty((0, 2)), true, 1.0).recall == 0.0


# --------------------------------------------------------------------------- simulated fields


@pytest.fixture(scope="module")
def simulated() -> dict[str, np.ndarray]:
    """Pooled F1, mean density bias and mean analysed-area bias over 8 fields per level."""
    from analysis.sim.phantoms import SNR_LEVELS, render_synapse_field

    out = {}
    for level in ("default", "hard"):
        tp = fp = fn = 0
        bias, area = [], []
        for s in range(8):
            f = render_synapse_field(np.random.default_rng([2024, s]), snr=SNR_LEVELS[level])
            p = detect_puncta(f.image, 0.1)
            mask = analysed_area_mask(f.image, 0.1, puncta=p)
            d = synapse_density(p, mask, 0.1)
            m = match(p, f.puncta[["y", "x"]].to_numpy() * 0.1)
            tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
            bias.append(d["puncta_density_per_100um2"] / (100 * len(f.puncta) / f.analysed_area_um2) - 1)
            area.append(d["analysed_area_um2"] / f.analysed_area_um2 - 1)
        out[level] = np.array([2 * tp / (2 * tp + fp + fn), np.mean(bias), np.mean(area)])
    return out


def test_accuracy_on_simulated_fields(simulated: dict[str, np.ndarray]) -> None:
    # issue targets that are met (benchmarks/validate_puncta.py: F1 ~0.93-0.95 at default)
    assert simulated["default"][0] >= 0.90
    assert abs(simulated["default"][2]) <= 0.05  # analysed area (voids excluded)
    assert abs(simulated["hard"][2]) <= 0.05


def test_issue_targets_hard_f1_and_count_bias(simulated: dict[str, np.ndarray]) -> None:
    # benchmarks/validate_puncta.py over 3 x 30 fields: hard F1 0.814-0.818, default density
    # bias +1.8 to +2.3 %
    assert simulated["hard"][0] >= 0.80
    assert abs(simulated["default"][1]) <= 0.05


@pytest.mark.parametrize("n, seed", [(256, 0), (512, 1)])
def test_noise_free_boxes_of_a_jpeg_do_not_enter_the_noise_model(n: int, seed: int) -> None:
    """A JPEG compression flattens some boxes completely: Immerkaer's residual there is
    floating-point round-off (box variances ~1e-32 in an 8-bit image), which the noise line
    took as the darkest boxes' noise (256 px, seed 0), and, when one class of boxes held
    nothing else, its weight of 1e12 made the fit's covariance singular: ``LinAlgError`` from
    ``detect_puncta`` (512 px, seed 1).  Such boxes carry no noise and are left out (the
    least box variance the model keeps here is 0.015-0.06 ADU^2)."""
    import io

    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n] / n
    lam = 200 + 1500 * xx + 2500 * np.exp(-((yy - 0.6) ** 2 + (xx - 0.4) ** 2) / (2 * 0.2**2))
    a = rng.poisson(lam).astype(float)
    buf = io.BytesIO()
    Image.fromarray(np.rint((a - a.min()) / np.ptp(a) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=75)
    img = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    sd, info = noise_sd_map(img, 0.1)
    assert info["var_min"] > 1e-3 and np.isfinite(sd).all() and sd.min() > 0, info
    p = detect_puncta(img, 0.1)  # (runs; the compressed noise itself is the correlated-noise gap)
    assert p.attrs["noise_alpha"] >= 0


def test_noise_model_holds_in_dark_regions_of_undersampled_fields() -> None:
    # 0.2 um terminal fields: puncta (sigma ~0.13 um) are undersampled and inflate the noise
    # residual of bright boxes; the fit must still give the right noise in dark somata/voids,
    # where an underestimate produces false puncta (found: 3.7 instead of 6.1 ADU before the
    # variance classes were weighted by 1 / variance)
    from analysis.sim.phantoms import CAMERA_GAIN, CAMERA_OFFSET_ADU, READ_NOISE_ADU, SNR_LEVELS, render_terminal_field

    f = render_terminal_field(np.random.default_rng([1, 3, 2, 150]), snr=SNR_LEVELS["high"])
    img = f.image[0].astype(float)
    sd, info = noise_sd_map(img, 0.2)
    level = ndi.gaussian_filter(img, 2.5)
    for sel in (level < np.percentile(level, 5), level > np.percentile(level, 95)):
        theory = np.sqrt(CAMERA_GAIN * (level[sel].mean() - CAMERA_OFFSET_ADU) + READ_NOISE_ADU**2)
        assert sd[sel].mean() == pytest.approx(theory, rel=0.1)
    assert info["alpha"] == pytest.approx(CAMERA_GAIN, rel=0.15)


# --------------------------------------------------------------------------- fast paths


def test_spot_rendering_matches_a_direct_sum_including_spots_beyond_the_edge() -> None:
    from analysis.measure.puncta import _render

    rng = np.random.default_rng(3)
    shape = (40, 57)
    pos = np.column_stack([rng.uniform(-3, 43, 30), rng.uniform(-3, 60, 30)])
    sigma = np.where(rng.random((30, 1)) < 0.5, 1.2, 2.1) * np.ones((1, 2))
    amp = rng.uniform(1, 5, 30)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.ceil(4 * sigma.max())
    direct = np.zeros(shape)
    for (y, x), (sy, sx), a in zip(pos, sigma, amp, strict=True):
        box = (np.abs(yy - np.rint(y)) <= r) & (np.abs(xx - np.rint(x)) <= r)
        direct += box * a * np.exp(-((yy - y) ** 2 / (2 * sy**2) + (xx - x) ** 2 / (2 * sx**2)))
    np.testing.assert_allclose(_render(shape, pos, amp, sigma), direct, atol=1e-12)


def test_block_resolution_normalised_blur_matches_the_full_resolution_one() -> None:
    from analysis.measure.area import _normalized_blur

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:301, :263]
    values = 100 + 50 * ((yy - 150) ** 2 + (xx - 90) ** 2 < 40**2) + rng.normal(0, 5, yy.shape)
    weights = (yy - 150) ** 2 + (xx - 170) ** 2 >= 50**2
    sigma = 10.0
    num = ndi.gaussian_filter(values * weights, sigma, mode="reflect")
    den = ndi.gaussian_filter(weights.astype(float), sigma, mode="reflect")
    ok = den > 0.01
    exact = num[ok] / den[ok]
    fast = _normalized_blur(values, weights, sigma)[ok]
    # within 1 % of the 50-unit step everywhere, far less on average
    assert np.abs(fast - exact).max() < 0.5
    assert np.abs(fast - exact).mean() < 0.05


# --------------------------------------------------------------------------- failure modes on data not made by us
# (issue 12: each guards a failure found on an independent simulator or real images; the scenes
# are built here with plain numpy, not with analysis.sim.phantoms)


def _spots(shape, centres, sigma_px, amp, background, seed):
    """Poisson image of Gaussian spots (peak ``amp`` photons) on a flat ``background``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lam = np.full(shape, float(background))
    for y, x in centres:
        lam += amp * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma_px**2))
    return rng.poisson(lam).astype(np.uint16)


def test_sparse_bright_spots_on_a_flat_background_give_no_false_puncta_around_them() -> None:
    # sim-fish's sparse case: 20 spots ~200 noise SDs bright; the old detector put ~3 false
    # puncta in the ring around each (precision 0.24)
    rng = np.random.default_rng(4)
    centres = spread_points(20, rng, (25.6, 25.6), min_dist=3.0, margin=1.0) / 0.1
    img = _spots((256, 256), centres, 1.5, 5000.0, 300.0, seed=5)
    m = match_points(detect_puncta(img, 0.1)[["y", "x"]].to_numpy(), centres, 2.0)
    assert m.recall == 1.0 and m.fp <= 1, (m.recall, m.fp)


def test_crowded_bright_spots_give_no_false_puncta_in_their_surrounds() -> None:
    # sim-fish's crowded case (sigma 100 nm, ~1.2 spots per um^2, ~55 noise SDs): the fit of
    # so many overlapping bright spots leaves light in their surrounds that pixel noise does
    # not account for; the calibrated noise rate let through ~35 false puncta per field
    # (precision 0.94-0.97).  The residual's own dips (negative control) must catch them.
    rng = np.random.default_rng(0)
    centres = rng.uniform(2, 254, (800, 2))
    img = _spots((256, 256), centres, 1.0, 1000.0, 300.0, seed=10)
    p = detect_puncta(img, 0.1)
    m = match_points(p[["y", "x"]].to_numpy(), centres, 2.0)
    assert m.precision >= 0.99 and m.recall >= 0.88, (m.precision, m.recall)
    assert p.attrs["threshold_used"] > 4.0  # raised by the negative control, not by the noise rate


@pytest.mark.parametrize("sigma_nm", [100, 250])
def test_punctum_size_is_measured_on_the_image(sigma_nm: int) -> None:
    # spots much broader than a confocal PSD95 punctum (a widefield PSF): the fixed 0.15 um
    # model lost most of them (F1 0.29 at sigma 250 nm on sim-fish)
    rng = np.random.default_rng(sigma_nm)
    centres = spread_points(60, rng, (25.6, 25.6), min_dist=1.2, margin=0.8) / 0.1
    img = _spots((256, 256), centres, sigma_nm / 100.0, 60.0, 40.0, seed=6)
    p = detect_puncta(img, 0.1)
    sigma_px = np.sqrt((sigma_nm / 100.0) ** 2 + 1 / 12)  # pixel-sampled spot
    assert p.attrs["punctum_radius_um"] == pytest.approx(sigma_px * 1.1774 * 0.1, rel=0.1)
    assert estimate_punctum_radius(img, 0.1) == pytest.approx(p.attrs["punctum_radius_um"])
    m = match_points(p[["y", "x"]].to_numpy(), centres, 2.5)
    assert m.f1 >= 0.95, (m.precision, m.recall)


def _noise(kind: str, rng: np.random.Generator, shape=(512, 512)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[-2], : shape[-1]] / shape[-2]
    if kind == "poisson-gaussian 16-bit with offset":
        return (rng.poisson(50, shape) * 3 + 500 + rng.normal(0, 4, shape)).clip(0, 65535).astype(np.uint16)
    if kind == "widefield haze":
        return rng.poisson(200 + 3000 * np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) / 0.1)).astype(np.uint16)
    if kind == "8-bit low counts":
        return np.clip(rng.poisson(3, shape) * 2 + 5, 0, 255).astype(np.uint8)
    if kind == "clipped at zero":
        return np.clip(rng.normal(2, 6, shape), 0, None).astype(np.uint16)
    if kind == "clipped at zero, half the pixels":  # offset-subtracted camera, 3 e-, read noise 4
        return np.clip(np.rint(2.0 * rng.poisson(3.0, shape) - 6.0 + rng.normal(0, 4.0, shape)), 0, None).astype(np.uint16)
    if kind == "photomultiplier excess noise":
        return np.clip(rng.gamma(rng.poisson(8, shape) + 1e-9, 20) + 10, 0, 4095).astype(np.uint16)
    if kind == "background subtracted":  # Fiji's Subtract Background: a smoothed top-hat, kept >= 0
        raw = (rng.poisson(50, shape) * 3 + 500).astype(float)
        back = ndi.grey_opening(ndi.uniform_filter(raw, 3), size=(41, 41))  # a 20 px "ball"
        return np.rint(np.clip(raw - back, 0, None)).astype(np.uint16)  # (~20 % of the pixels at 0)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", [
    "poisson-gaussian 16-bit with offset",
    "widefield haze",
    "8-bit low counts",  # these three are skewed: the Cornish-Fisher term of the noise FDR step
    "clipped at zero",
    "clipped at zero, half the pixels",  # (the Cornish-Fisher term failed here: 36 per 1,000 um^2)
    "photomultiplier excess noise",
    "background subtracted",  # (a guard: no false punctum at either pixel size when it was added)
])
@pytest.mark.parametrize("pixel_size_um", [0.1, 0.3])
def test_pure_noise_of_each_kind_gives_at_most_one_false_punctum_per_1000um2(kind: str, pixel_size_um: float) -> None:
    img = _noise(kind, np.random.default_rng(11))
    p = detect_puncta(img, pixel_size_um)
    assert 1000 * len(p) / (img.size * pixel_size_um**2) <= 1.0, len(p)


@pytest.mark.parametrize("kind", [
    "poisson-gaussian 16-bit with offset",
    "8-bit low counts",
    "clipped at zero, half the pixels",
    "photomultiplier excess noise",
])
@pytest.mark.parametrize(("pixel_size_um", "z_step_um"), [(0.1, 0.5), (0.3, 1.0)])
def test_pure_noise_stacks_give_at_most_one_false_punctum_per_1000um2(kind: str, pixel_size_um: float,
                                                                      z_step_um: float) -> None:
    # the noise false-discovery step and the negative control were 2-D only (session 33): pure
    # noise stacks of 3-30 planes of 256 x 256 gave 4-151 puncta each (56 per 1,000 um^2 of
    # field).  The step bounds the noise puncta of a field (as in planes, where photomultiplier
    # noise leaves ~0.3 per 512 x 512 field at 0.1 um), so the field must be large enough for
    # a rate per 1,000 um^2: 1,024 um^2 at 0.1 um
    img = _noise(kind, np.random.default_rng(12), shape=(8, 320, 320))
    p = detect_puncta(img, pixel_size_um, z_step_um=z_step_um)
    assert 1000 * len(p) / (img.shape[-2] * img.shape[-1] * pixel_size_um**2) <= 1.0, len(p)


def test_noise_rate_of_stacks_matches_the_detector() -> None:
    # per voxel, a noise maximum of a stack must also stand above the planes around it: the
    # calibrated axial factor of noise_detection_rate predicts what the detector reports at its
    # fixed threshold (4 noise SDs, noise_fdr=None) on white-noise stacks, and differs from the
    # plane's rate where the punctum spans several planes
    rng = np.random.default_rng(21)
    sigma_px = 0.15 / 1.1774 / 0.1
    for sigma_z in (1.0, 2.0):  # axial sigma in planes (axial half width 0.35 um)
        stacks = [rng.normal(100.0, 5.0, (24, 160, 160)) for _ in range(3)]
        found = sum(len(detect_puncta(st, 0.1, z_step_um=0.35 / 1.1774 / sigma_z, punctum_radius_um=0.15,
                                      axial_radius_um=0.35, noise_fdr=None)) for st in stacks)
        voxels = sum(st.size for st in stacks)
        expected = noise_detection_rate(4.0, sigma_px, axial_sigma_px=sigma_z) * voxels
        assert found == pytest.approx(expected, rel=0.5), (sigma_z, found, expected)
        if sigma_z > 1.5:  # (under a third of the plane's rate per voxel: 22 against 95 here)
            assert found < 0.6 * noise_detection_rate(4.0, sigma_px) * voxels, found


def _spots_3d(shape, centres, sigma_px, amp, background, seed):
    """Poisson stack of Gaussian spots (peak ``amp`` photons, sigma (z, yx) in planes / pixels)
    on a flat ``background``."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    lam = np.full(shape, float(background))
    for z, y, x in centres:
        lam += amp * np.exp(-((zz - z) ** 2) / (2 * sigma_px[0] ** 2)
                            - ((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma_px[1] ** 2))
    return rng.poisson(lam).astype(np.uint16)


def test_sparse_bright_spots_in_a_stack_give_no_false_puncta_around_them() -> None:
    # sim-fish's sparse case as stacks (3 stacks of 16 planes, 20 spots of 5000 photons each):
    # with the false-discovery step 2-D only, 36 false puncta around the spots; with the
    # calibrated noise rate of stacks alone, 6; with the residual's own dips (negative control)
    # in 3-D too, 1 (3 once the spots on the first and last planes are found as well).  Here 4
    # stacks of 15 spots: 7 false puncta before, 4 without the dips, 0 now.
    tp = fp = 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        centres = np.column_stack([rng.uniform(2, 9, 15), rng.uniform(8, 120, 15), rng.uniform(8, 120, 15)])
        img = _spots_3d((12, 128, 128), centres, (1.2, 1.5), 5000.0, 300.0, seed=seed + 10)
        p = detect_puncta(img, 0.1, z_step_um=0.3)
        m = match_points(p[["z", "y", "x"]].to_numpy() / [1.5, 2.0, 2.0], centres / [1.5, 2.0, 2.0], 1.0)
        tp, fp = tp + m.tp, fp + m.fp
    assert tp >= 58 and fp <= 1, (tp, fp)


def _spots_3d_local(shape, centres, sigma_px, amp, background, seed):
    """:func:`_spots_3d`, each spot drawn in a box of +-5 sigma only (fast for many spots)."""
    rng = np.random.default_rng(seed)
    lam = np.full(shape, float(background))
    r = np.ceil(5 * np.asarray(sigma_px, float)).astype(int)[[0, 1, 1]]
    for c in np.asarray(centres, float):
        lo = np.maximum(np.floor(c).astype(int) - r, 0)
        hi = np.minimum(np.floor(c).astype(int) + r + 2, shape)
        g = [np.exp(-((np.arange(lo[d], hi[d]) - c[d]) ** 2) / (2 * sigma_px[min(d, 1)] ** 2)) for d in range(3)]
        lam[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += amp * np.einsum("i,j,k->ijk", *g)
    return rng.poisson(lam).astype(np.uint16)


def test_puncta_far_above_the_noise_do_not_fill_the_noise_budget() -> None:
    # 150 spots per stack at peak SNR ~17, nothing in between them and the noise: the
    # Benjamini-Hochberg step alone stops where 5 % of what it reports may be noise, and
    # reported 7-15 noise maxima at 4.3-4.8 SDs per stack (64 in these 6 stacks, precision
    # 0.93); the cut with the highest expected F1 leaves most of them out (18).  The threshold
    # reported is just above the most significant punctum left out (a true punctum anywhere
    # above it would have been kept; the quality measures truncate the brightness law there),
    # not the faintest punctum kept (~50 SDs where all noise maxima were left out)
    tp = fp = 0
    thresholds = []
    for seed in range(6):
        rng = np.random.default_rng([41, seed])
        yx = spread_points(150, rng, min_dist=1.0, margin=0.5) / 0.1
        centres = np.column_stack([rng.uniform(0, 15, 150), yx])
        img = _spots_3d_local((16, 256, 256), centres, (1.2, 1.5), 300.0, 300.0, seed=seed + 20)
        p = detect_puncta(img, 0.1, z_step_um=0.3)
        m = match_points(p[["z", "y", "x"]].to_numpy() / [1.5, 2.0, 2.0], centres / [1.5, 2.0, 2.0], 1.0)
        tp, fp = tp + m.tp, fp + m.fp
        thresholds.append(p.attrs["threshold_used"])
    assert tp == 900 and fp <= 30, (tp, fp)
    assert 4.0 <= min(thresholds) and max(thresholds) < 6.0, thresholds


def test_puncta_on_the_first_and_last_planes_of_a_stack_are_found() -> None:
    # sim-fish puts spots on a stack's first and last planes too: none of those 487 was found
    # (the reflecting filters see such a punctum with its mirror image, and the sub-pixel step
    # put the pair's centre beyond the plane, where it was dropped); the planes are image edges
    # now, like the lateral ones (the folded model of _folded_overlap)
    rng = np.random.default_rng(8)
    yx = spread_points(24, rng, (12.8, 12.8), min_dist=1.5, margin=1.0) / 0.1
    z = np.repeat([0.0, 5.0, 11.0], 8)  # the first, a middle and the last of 12 planes
    centres = np.column_stack([z, yx])
    img = _spots_3d((12, 128, 128), centres, (1.2, 1.5), 400.0, 100.0, seed=9)
    p = detect_puncta(img, 0.1, z_step_um=0.3)
    found = p[["z", "y", "x"]].to_numpy()
    m = match_points(found / [1.5, 2.0, 2.0], centres / [1.5, 2.0, 2.0], 1.0)
    assert m.tp == 24 and m.fp == 0, (m.tp, m.fp)
    # where the truth is: within a quarter plane, inside the stack
    dz = found[m.pairs[:, 0], 0] - centres[m.pairs[:, 1], 0]
    assert np.abs(dz).max() <= 0.25 and found[:, 0].min() >= 0.0 and found[:, 0].max() <= 11.0, dz


@pytest.mark.parametrize("processing", ["2x linear interpolation along z", "smoothed along z (1 plane)"])
def test_a_stack_resampled_along_z_gives_no_noise_puncta(processing: str) -> None:
    """A stack interpolated to finer planes (isotropic voxels) or smoothed along z has noise
    correlated between planes, which the lateral noise figure does not see: pure shot noise of
    12 planes gave 581 / 25 false puncta.  The same figure along z (squared, on the lateral
    scale) reads ~37 here and sends the detector to its filtered image's noise."""
    raw = (np.random.default_rng(3).poisson(40, (12, 128, 128)) * 2 + 100).astype(float)
    if processing.startswith("2x"):
        img, dz = ndi.zoom(raw, (2, 1, 1), order=1), 0.2
    else:
        img, dz = ndi.gaussian_filter(raw, (1.0, 0.0, 0.0)), 0.4
    p = detect_puncta(img.astype(np.float32), 0.1, z_step_um=dz)
    assert p.attrs["noise_correlation"] > 5.0 and len(p) == 0, (p.attrs["noise_correlation"], len(p))
    # the quality row's figure is the detector's (the lateral one alone reads ~1 here)
    from analysis.measure.noise import noise_correlation

    assert noise_correlation(img.astype(np.float32), 0.1) == pytest.approx(p.attrs["noise_correlation"])
    # the planes as imaged: independent noise
    assert detect_puncta(raw.astype(np.float32), 0.1, z_step_um=0.4).attrs["noise_correlation"] < 1.5


@pytest.fixture(scope="module")
def flat_stack() -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """40 spots in 12 planes of 128 x 128 px on a flat background of 300 photons, their true
    (z, y, x) and what the detector finds there."""
    rng = np.random.default_rng(10)
    yx = spread_points(40, rng, (12.8, 12.8), min_dist=1.2, margin=0.6) / 0.1
    centres = np.column_stack([rng.uniform(1, 10, 40), yx])
    flat = _spots_3d((12, 128, 128), centres, (1.2, 1.5), 300.0, 300.0, seed=11).astype(float)
    return flat, centres, detect_puncta(flat, 0.1, z_step_um=0.3)


@pytest.mark.parametrize("planes", ["+-5 % added", "+-10 % added", "+-10 % gain", "40 % dimmer with depth"])
def test_planes_of_different_brightness_are_not_covered_in_puncta(flat_stack, planes: str) -> None:
    """The planes of a stack are taken one after another: laser power or gain can change
    between them, and deeper planes are dimmer.  sim-fish stacks with 5 % brightness flicker
    between planes gave 1,068 false puncta around 450 spots, as the background's blur across
    planes does not follow a plane brighter than its neighbours; each plane's level became
    background (session 34): +-5 % offsets here gave 251 false puncta before that, 8 after.
    At +-10 % (added or as gain) the axial size measured on the stack still fell to its floor of
    0.2 um and 71-74 false puncta remained, as a plane's gain modulates each punctum's axial
    profile: each plane is now divided by its gain relative to the planes' trend (session 35).
    A stack dimming by 40 % with depth read a 70 % longer punctum (0.73 um against 0.43): its
    background along z is a line now."""
    flat, centres, found_flat = flat_stack
    rng = np.random.default_rng(12)
    if planes.endswith("added"):
        img = flat + rng.uniform(-1.0, 1.0, 12)[:, None, None] * (15.0 if planes.startswith("+-5") else 30.0)
    elif planes.endswith("gain"):
        img = flat * (1.0 + rng.uniform(-0.1, 0.1, 12))[:, None, None]
    else:
        img = flat * np.linspace(1.0, 0.6, 12)[:, None, None]
    found = detect_puncta(img, 0.1, z_step_um=0.3)
    scale = [1.5, 2.0, 2.0]
    m = [match_points(f[["z", "y", "x"]].to_numpy() / scale, centres / scale, 1.0) for f in (found_flat, found)]
    assert m[1].recall >= 0.95 and m[1].fp <= m[0].fp + 2, (m[1].recall, m[1].fp, m[0].fp)
    ratio = found.attrs["axial_radius_um"] / found_flat.attrs["axial_radius_um"]
    assert 0.9 <= ratio <= 1.1, (found.attrs["axial_radius_um"], found_flat.attrs["axial_radius_um"])


def _smoothed(raw: np.ndarray, kind: str) -> tuple[np.ndarray, int]:
    """``raw`` smoothed, median-filtered, deconvolved or upsampled (and the upsampling factor).
    ``"wiener"``: Wiener deconvolution of a Gaussian PSF of sigma 1.5 px (regularisation 0.03)."""
    if kind.startswith("gaussian"):
        return ndi.gaussian_filter(raw, float(kind.split()[1])), 1
    if kind == "median 3 x 3":
        return ndi.median_filter(raw, 3), 1
    if kind == "wiener":
        from skimage.restoration import wiener

        yy, xx = np.mgrid[-6:7, -6:7]
        psf = np.exp(-(yy**2 + xx**2) / (2 * 1.5**2))
        return wiener(raw, psf / psf.sum(), balance=0.03, clip=False), 1
    return ndi.zoom(raw, 2, order=1 if kind == "2x linear" else 3), 2


@pytest.mark.parametrize("smoothing", ["gaussian 0.7 px", "gaussian 1 px", "2x linear", "2x cubic", "median 3 x 3"])
def test_strongly_smoothed_pure_noise_gives_at_most_one_false_punctum_per_1000um2(smoothing: str) -> None:
    """Noise correlated over more than ~0.6 px (smoothing, interpolation, denoising) passes the
    punctum-sized filter far more than Immerkaer's 3 x 3 residual, which measures independent
    pixel noise, says: the detector reported 1,218-3,583 false puncta per 256 x 256 field of
    such pure noise (1,767-5,099 per 1,000 um^2; a 3 x 3 median 1,899).  Above
    ``CORRELATED_NOISE``, or when neighbouring pixels tie as a median filter makes them
    (``TIED_NEIGHBOURS``), it measures the noise of its filtered image instead."""
    raw = (np.random.default_rng(5).poisson(50, (256, 256)) * 3 + 500).astype(float)
    img, zoom = _smoothed(raw, smoothing)
    px = 0.1 / zoom
    p = detect_puncta(img.astype(np.float32), px)
    flagged = p.attrs["tie_ratio"] > 2.5 if smoothing.startswith("median") else p.attrs["noise_correlation"] > 5.0
    assert flagged and p.attrs["noise_factor"] > 2.0, p.attrs
    assert 1000 * len(p) / (img.size * px**2) <= 1.0, len(p)


@pytest.mark.parametrize("smoothing", ["gaussian 0.7 px", "gaussian 1 px", "2x linear", "median 3 x 3"])
def test_puncta_in_a_smoothed_image_are_found_without_noise_puncta(smoothing: str) -> None:
    """The same correction keeps the puncta: 100 spots of 6 noise SDs (sigma 1.5 px), found
    whole before and after smoothing, with no more false puncta than in the raw image (the
    old code: 1,118 / 1,643 / 3,483 / 1,373 false puncta)."""
    rng = np.random.default_rng(7)
    centres = spread_points(100, rng, (25.6, 25.6), min_dist=0.5, margin=0.3) / 0.1
    raw = _spots((256, 256), centres, 1.5, 60.0, 100.0, seed=8).astype(float)
    found_raw = detect_puncta(raw, 0.1)[["y", "x"]].to_numpy()
    img, zoom = _smoothed(raw, smoothing)
    p = detect_puncta(img, 0.1 / zoom)
    scale = (np.array(img.shape) - 1) / (np.array(raw.shape) - 1)  # (scipy's zoom maps the corners)
    m_raw = match_points(found_raw, centres, 2.0)
    m = match_points(p[["y", "x"]].to_numpy() / scale, centres, 2.0)
    assert m.recall >= 0.97 and m.fp <= m_raw.fp, (m.recall, m.fp, m_raw.fp)


def test_puncta_of_varied_sizes_in_one_field_leave_no_false_puncta_around_them() -> None:
    """Puncta of one stain differ in size.  150 spots of sigma 1-3 px (uniform) and peak SNR
    ~30 per field, 3 fields: the size measured from the image is ~2 px, and the sizes fitted
    were 0.8-1.4 times it, so the narrowest spots were misfitted and the rings of
    their residuals gave false puncta 5-10 px away (37 of 487 reported, precision 0.92; on
    similar fields big-fish 1.00).  With narrower sizes (0.5-0.7 x, where at least a pixel):
    17 of 467, precision 0.96 (session 40); all 450 spots found either way."""
    yy, xx = np.mgrid[:256, :256]
    tp = fp = fn = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        centres = spread_points(150, rng, (25.6, 25.6), min_dist=0.6, margin=0.4) / 0.1
        sigma = rng.uniform(1.0, 3.0, 150)
        amp = 300.0 * rng.lognormal(0.0, 0.3, 150)
        lam = np.full((256, 256), 100.0)
        for (y, x), s_, a_ in zip(centres, sigma, amp):
            lam += a_ * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s_**2))
        m = match_points(detect_puncta(rng.poisson(lam).astype(np.float32), 0.1)[["y", "x"]].to_numpy(), centres, 2.5)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    assert fn <= 3 and tp / (tp + fp) >= 0.95, (tp, fp, fn)


def test_puncta_wider_than_the_sizes_fitted_leave_few_false_puncta_on_their_rings() -> None:
    """70 spots of sigma 1.5 px and 30 of 2.8 px (1.8x the size measured on the field, beyond
    the widest size fitted, 1.4x) at peak SNR 100, 4 fields: the wide spots' misfit left a ring
    ~4 px out, and the second pass found 59 false puncta on those rings (all 400 spots found).
    With each bright punctum's own rings taken out of the residual first: 36."""
    yy, xx = np.mgrid[:256, :256]
    tp = fp = 0
    for seed in range(4):
        rng = np.random.default_rng([43, seed])
        centres = spread_points(100, rng, (25.6, 25.6), min_dist=1.2, margin=0.5) / 0.1
        sigma = np.where(np.arange(100) < 70, 1.5, 2.8)
        lam = np.full((256, 256), 100.0)
        for (y, x), s_ in zip(centres, sigma):
            lam += 1000.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s_**2))
        m = match_points(detect_puncta(rng.poisson(lam).astype(np.float32), 0.1)[["y", "x"]].to_numpy(), centres, 2.0)
        tp, fp = tp + m.tp, fp + m.fp
    assert tp == 400 and fp <= 45, (tp, fp)


def test_a_crowded_field_leaves_no_false_puncta_between_its_spots() -> None:
    """600 spots of sigma 1.5 px at peak SNR 30 in 256 x 256 px, some 3 px apart: the misfit
    of merged and overlapping spots left rings in the residual, and the second pass found 60
    false puncta on them (595 of the spots found).  With each bright punctum's own rings taken
    out of the residual first: 1 (594 found)."""
    rng = np.random.default_rng(21)
    centres = spread_points(600, rng, (25.6, 25.6), min_dist=0.3, margin=0.3) / 0.1
    raw = _spots((256, 256), centres, 1.5, 300.0, 100.0, seed=22).astype(float)
    m = match_points(detect_puncta(raw, 0.1)[["y", "x"]].to_numpy(), centres, 2.0)
    assert m.tp >= 590 and m.fp <= 10, (m.tp, m.fp)


@pytest.mark.parametrize("smoothing", ["gaussian 0.7 px", "gaussian 1 px", "median 3 x 3", "wiener"])
def test_a_crowded_smoothed_field_keeps_its_puncta(smoothing: str) -> None:
    """In a crowded field the filter's negative surrounds of the puncta widen the lower half of
    the response, where the correlated noise is measured: the old code read a noise factor of
    39 / 136 / 22 / 109 (the same noise alone: 6.6 / 28.5 / 5.4 / 58) and found 0.93 / 0.84 /
    0.86 / 0.86 of 600 spots (smoothed, median-filtered, Wiener-deconvolved).  Measured again on
    the residual of the fit (surrounds and all), the factor is within 30 % of the noise's own,
    and no more false puncta are found than 1 in 30 of the spots (6 / 12 / 2 / 5; the field
    before smoothing: 1, 60 before each bright punctum's own rings were taken out)."""
    rng = np.random.default_rng(21)
    centres = spread_points(600, rng, (25.6, 25.6), min_dist=0.3, margin=0.3) / 0.1
    raw = _spots((256, 256), centres, 1.5, 300.0, 100.0, seed=22).astype(float)
    noise_only = _spots((256, 256), np.zeros((0, 2)), 1.5, 300.0, 100.0, seed=22).astype(float)
    p = detect_puncta(_smoothed(raw, smoothing)[0], 0.1)
    own = detect_puncta(_smoothed(noise_only, smoothing)[0], 0.1).attrs["noise_factor"]
    m = match_points(p[["y", "x"]].to_numpy(), centres, 2.0)
    assert own > 5.0 and abs(p.attrs["noise_factor"] / own - 1.0) <= 0.3, (p.attrs["noise_factor"], own)
    assert m.recall >= 0.94 and m.fp <= 20, (m.recall, m.fp)


@pytest.mark.parametrize("smoothing", ["gaussian 0.4 px", "gaussian 0.5 px", "gaussian 0.6 px"])
def test_mildly_smoothed_pure_noise_gives_at_most_one_false_punctum_per_1000um2(smoothing: str) -> None:
    """The noise model reads independent pixel noise (Immerkaer's 3 x 3 residual), so noise
    correlated by mild smoothing was read too low: pure shot noise smoothed at sigma 0.4 / 0.5 /
    0.6 px gave 11 / 1,268 / 4,358 false puncta per 1,000 um^2 (a strict xfail since session 33):
    their ``noise_correlation`` (1.3 / 2.2 / 4.6) is below ``CORRELATED_NOISE`` (5).  Above
    ``MILD_CORRELATION`` (1.2) the noise of the filtered image is measured as well, bounded by
    what Gaussian-smoothed noise of that figure gives: 0 / 0 / 0, the factors read (1.27 / 2.11
    / 3.62) within 10 % of the bound."""
    from analysis.measure.noise import MILD_CORRELATION

    raw = (np.random.default_rng(5).poisson(50, (256, 256)) * 3 + 500).astype(float)
    img = _smoothed(raw, smoothing)[0].astype(np.float32)
    p = detect_puncta(img, 0.1)
    assert p.attrs["noise_correlation"] > MILD_CORRELATION and p.attrs["noise_factor"] > 1.2, p.attrs
    assert 1000 * len(p) / (img.size * 0.1**2) <= 1.0, len(p)


@pytest.mark.parametrize("smoothing_px", [(0.0, 0.4, 0.4), (0.0, 0.5, 0.5), (0.0, 0.6, 0.6), (0.5, 0.5, 0.5)],
                         ids=["xy 0.4 px", "xy 0.5 px", "xy 0.6 px", "xyz 0.5 px"])
def test_mildly_smoothed_pure_noise_stacks_give_no_false_puncta(smoothing_px: tuple[float, float, float]) -> None:
    """A stack's noise smoothed in its planes (or in 3-D) at 0.4-0.6 px reads lateral (and
    axial) correlation figures of 1.3-4.6, below ``CORRELATED_NOISE``: this 12-plane stack of
    shot noise gave 26 / 2,212 / 4,510 / 2,182 false puncta while the mildly-correlated path
    was taken in planes only (session 42).  The bound in a stack comes from both figures."""
    from analysis.measure.noise import MILD_CORRELATION

    raw = (np.random.default_rng(5).poisson(50, (12, 160, 160)) * 3 + 500).astype(float)
    img = ndi.gaussian_filter(raw, smoothing_px).astype(np.float32)
    p = detect_puncta(img, 0.1, z_step_um=0.3)
    assert p.attrs["noise_correlation"] > MILD_CORRELATION and p.attrs["noise_factor"] > 1.2, p.attrs
    assert len(p) <= 1, len(p)


@pytest.mark.parametrize("smoothing_px", [(0.45, 0.45, 0.45), (0.6, 0.3, 0.3)])
def test_the_smoothed_noise_bound_is_what_smoothed_noise_reads_in_a_stack(
        smoothing_px: tuple[float, float, float]) -> None:
    """In a stack the bound comes from two figures: the lateral one (Immerkaer's operator in
    each plane) and the axial one (the second difference along z), each the square of the
    per-axis ratio of :func:`_smoothed_axis_correlation`; smoothing along z lowers each plane's
    noise as much as the noise model's reading of it, and the response's noise less.  White
    noise smoothed in 3-D and measured directly must read both figures and the ratio of the
    3-D filter's noise SD to what the noise model expects, as computed."""
    from analysis.measure.noise import IMMERKAER, noise_sd_map
    from analysis.measure.puncta import _Scale, _double_high_pass, _smoothed_axis_correlation, _smoothed_noise_factor

    sigma, bg = np.array([2.0, 1.5, 1.5]), np.array([4.0, 3.5, 3.5])
    img = ndi.gaussian_filter(np.random.default_rng(3).normal(100.0, 5.0, (40, 192, 192)), smoothing_px)
    info = noise_sd_map(img, 0.1)[1]
    assert info["correlation"] == pytest.approx(_smoothed_axis_correlation(smoothing_px[1]) ** 2, rel=0.05), info
    assert info["axial_correlation"] == pytest.approx(_smoothed_axis_correlation(smoothing_px[0]) ** 2, rel=0.05), info
    scale = _Scale(img.shape, sigma, bg)
    inner = (slice(12, -12), slice(30, -30), slice(30, -30))
    resp = scale.response(_double_high_pass(img, bg)[0])[inner]
    model_sd = 1.4826 * np.median(np.abs(ndi.correlate(img, IMMERKAER[None])[inner])) * scale.unit_sd()[inner].mean()
    want = _smoothed_noise_factor(tuple(sigma), tuple(bg), smoothing_px)
    assert want > 1.3
    assert float(resp.std()) / model_sd == pytest.approx(want, rel=0.05), (float(resp.std()) / model_sd, want)


def test_the_smoothed_noise_bound_is_what_smoothed_noise_reads() -> None:
    """The bound on a mildly correlated plane's noise factor is computed in closed form
    (Parseval) from the noise model's operator and the punctum filter: white noise smoothed at
    0.45 px and measured directly must read the same correlation figure and the same ratio of
    the filter's noise SD to what the noise model expects."""
    from analysis.measure.noise import IMMERKAER, noise_correlation
    from analysis.measure.puncta import _SMOOTHING_SIGMAS, _Scale, _double_high_pass, _smoothed_noise_table

    sigma, bg = np.array([1.5, 1.5]), np.array([3.5, 3.5])
    img = ndi.gaussian_filter(np.random.default_rng(3).normal(100.0, 5.0, (1024, 1024)), 0.45)
    corr, factor = _smoothed_noise_table(1.5, 3.5)
    i = int(np.argmin(np.abs(_SMOOTHING_SIGMAS - 0.45)))
    assert noise_correlation(img, 0.1) == pytest.approx(corr[i], rel=0.05), (noise_correlation(img, 0.1), corr[i])
    scale = _Scale(img.shape, sigma, bg)
    inner = (slice(40, -40),) * 2
    resp = scale.response(_double_high_pass(img, bg)[0])[inner]
    model_sd = 1.4826 * np.median(np.abs(ndi.correlate(img, IMMERKAER)[inner])) * scale.unit_sd()[inner].mean()
    assert float(resp.std()) / model_sd == pytest.approx(factor[i], rel=0.05), (float(resp.std()) / model_sd, factor[i])


def test_a_crowded_field_of_independent_noise_keeps_its_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """800 spots of sigma 2.5 px at peak SNR ~55 on 300 photons (sim-fish's crowded field at
    250 nm): the noise is independent, but the dense spots read a ``noise_correlation`` of ~1.3,
    so the plane takes the mildly-correlated path; the spread on the residual of the fit reads
    10-12 there (unresolved spots), and unbounded it cut the puncta found by a sixth.  Bounded
    by the smoothed-noise factor of that figure (~1.3), as many are found as without the path."""
    import analysis.measure.puncta as puncta_mod
    from analysis.measure.noise import MILD_CORRELATION

    rng = np.random.default_rng([7, 0])
    centres = rng.uniform(3, 253, (800, 2))
    raw = _spots((256, 256), centres, 2.5, 1000.0, 300.0, seed=0).astype(float)
    p = detect_puncta(raw, 0.1)
    monkeypatch.setattr(puncta_mod, "MILD_CORRELATION", np.inf)
    ref = detect_puncta(raw, 0.1)
    m, m_ref = (match_points(x[["y", "x"]].to_numpy(), centres, 2.0) for x in (p, ref))
    assert p.attrs["noise_correlation"] > MILD_CORRELATION and p.attrs["noise_factor"] <= 1.5, p.attrs
    assert m.tp >= m_ref.tp - 5 and m.fp <= m_ref.fp + 5, (m.tp, m.fp, m_ref.tp, m_ref.fp)


@pytest.mark.parametrize("quality", [75, 90, 98])
def test_pure_noise_saved_as_jpeg_gives_at_most_one_false_punctum_per_1000um2(quality: int) -> None:
    """8-bit shot noise saved as JPEG: at quality 75 the codec's rounding correlates the noise
    within each block (noise_correlation 4.0, block ratio 1.07: below both limits) and the
    detector reported 2,625 false puncta per 1,000 um^2 (a strict xfail since session 33).  The
    blocks' cosine transforms sit on the quantisation lattice (``jpeg_lattice``, far above
    ``JPEG_LATTICE``), so the noise of the filtered image is measured instead."""
    import io

    from analysis.measure.noise import JPEG_LATTICE

    Image = pytest.importorskip("PIL.Image")
    raw8 = np.clip(np.random.default_rng(5).poisson(30, (256, 256)) * 2 + 20, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(raw8).save(buf, format="JPEG", quality=quality)
    img = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    p = detect_puncta(img, 0.1)
    assert p.attrs["jpeg_lattice"] > JPEG_LATTICE > detect_puncta(raw8, 0.1).attrs["jpeg_lattice"]
    assert 1000 * len(p) / (img.size * 0.1**2) <= 1.0, len(p)


def test_puncta_in_a_jpeg_without_visible_blocks_keep_their_precision() -> None:
    """Our default phantom field stretched to 8 bits and saved at quality 90: the noise survives
    the compression (no block edges: block ratio ~1.0) but is rounded within each block, and the
    detector took it for white noise: 355 puncta for 213, F1 0.73 (0.95 before compression).
    Seen by its quantised coefficients, it measures the noise of its filtered image: F1 0.87
    (7 false, recall 0.79), and since that noise is measured again on the residual of the fit
    (session 40) 0.88 (28 false, recall 0.89; the field before compression: 14 false)."""
    from analysis.sim.phantoms import render_synapse_field

    f = render_synapse_field(np.random.default_rng([0, 1, 0]), shape=(256, 256), pixel_size_um=0.1, snr=8.0)
    truth = f.puncta[["y", "x"]].to_numpy()
    img = _jpeg(f.image, 90)
    p = detect_puncta(img, 0.1)
    m = match_points(p[["y", "x"]].to_numpy(), truth, 2.5)
    assert p.attrs["block_ratio"] < 1.05 and p.attrs["noise_factor"] > 1.5, p.attrs
    assert m.f1 >= 0.85 and m.fp <= 40, (m.f1, m.fp, len(p))


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """``img`` stretched to 8 bits, saved as a JPEG of ``quality`` and read back."""
    import io

    Image = pytest.importorskip("PIL.Image")
    a = np.asarray(img, float)
    buf = io.BytesIO()
    Image.fromarray(np.rint(255 * (a - a.min()) / np.ptp(a)).astype(np.uint8)).save(buf, format="JPEG",
                                                                                      quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


@pytest.mark.parametrize("quality, seed", [(95, 4), (95, 5), (90, 5)])
def test_sparse_bright_spots_saved_as_jpeg_give_no_noise_puncta(quality: int, seed: int) -> None:
    """Sparse bright spots stretched to 8 bits leave ~1 grey level of noise, which a JPEG at
    quality 90-95 quantises away block by block: what is left is correlated within each 8 x 8
    block, while Immerkaer's residual and ``noise_correlation`` read ~1-2.  The detector took
    it for white noise and reported 967 / 1,993 / 903 false puncta around these 20 spots (sim-fish's
    sparse case: 767 at quality 95).  The blocks are seen (``block_ratio`` above
    ``JPEG_BLOCKS``) and the noise of the filtered image is measured instead."""
    from analysis.measure.noise import JPEG_BLOCKS

    rng = np.random.default_rng(seed)
    centres = spread_points(20, rng, (25.6, 25.6), min_dist=3.0, margin=1.0) / 0.1
    raw = _spots((256, 256), centres, 1.5, 5000.0, 300.0, seed=seed + 1)
    p_raw = detect_puncta(raw, 0.1)
    img = _jpeg(raw, quality)
    p = detect_puncta(img, 0.1)
    m = match_points(p[["y", "x"]].to_numpy(), centres, 2.0)
    assert p.attrs["block_ratio"] > JPEG_BLOCKS > p_raw.attrs["block_ratio"] and p.attrs["noise_factor"] > 2.0
    assert m.recall == 1.0 and m.fp <= 3, (m.recall, m.fp, p.attrs)


def test_jpeg_block_ratio_sees_the_blocks_at_any_offset_and_nothing_else() -> None:
    """The 8 x 8 grid of a JPEG, cropped at any offset and in the planes of a stack; never
    compressed images read ~1, also when interpolated 2x or 4x (patterns of period 2 or 4 fall
    on two or four of the eight positions alike)."""
    from analysis.measure.noise import JPEG_BLOCKS, jpeg_block_ratio

    rng = np.random.default_rng(3)
    raw = _spots((256, 256), spread_points(20, rng, (25.6, 25.6), min_dist=3.0, margin=1.0) / 0.1, 1.5, 5000.0,
                 300.0, seed=4)
    jpeg = _jpeg(raw, 90)
    noise = rng.poisson(100.0, (128, 128)).astype(float)
    assert jpeg_block_ratio(raw) < 1.05 and jpeg_block_ratio(_jpeg(raw, 100)) < JPEG_BLOCKS
    for z in (2, 4):
        assert jpeg_block_ratio(ndi.zoom(noise, z, order=1)) < 1.05
    assert jpeg_block_ratio(jpeg) > JPEG_BLOCKS and jpeg_block_ratio(jpeg[3:, 5:]) > JPEG_BLOCKS
    assert jpeg_block_ratio(np.stack([jpeg, jpeg[::-1]])) > JPEG_BLOCKS
    assert np.isnan(jpeg_block_ratio(jpeg[:, :12])) and jpeg_block_ratio(np.zeros((32, 32))) == 1.0


def test_puncta_on_the_outermost_pixels_are_detected() -> None:
    """A punctum centred on the first or last row or column is in the field.  With reflecting
    edges it and its mirror image are one blob centred on the edge, and the sub-pixel step
    carried it half a pixel beyond, where it was dropped: sim-fish's spots on edge pixels were
    missed (12 of 600 in its medium case, among them a spot 200 noise SDs bright)."""
    edge = np.array([[0.0, 40.0], [40.0, 127.0], [127.0, 90.0], [90.0, 0.0], [0.0, 127.0]])
    inner = np.array([[30.0, 30.0], [64.0, 64.0], [100.0, 40.0]])
    img = _spots((128, 128), np.vstack([edge, inner]), 1.5, 2000.0, 300.0, seed=2)
    found = detect_puncta(img, 0.1)[["y", "x"]].to_numpy()
    m = match_points(found, np.vstack([edge, inner]), 1.0)
    # (at ~200 noise SDs an edge punctum left a faint false one a few pixels inward while the
    # fit's own model ignored the mirror image that the reflecting filters see: 2 here, 5-6 %
    # of the punctum's amplitude; the folded model of _folded_overlap leaves none)
    assert m.recall == 1.0 and m.fp == 0, (m.recall, m.fp, found)
    # reported inside the field: within the outer pixels, at most a quarter pixel from the truth
    assert (found >= -0.5).all() and (found <= 127.5).all()
    assert np.abs(found[m.pairs[:, 0]] - np.vstack([edge, inner])[m.pairs[:, 1]]).max() <= 0.25


def _moffat_spots(rng: np.random.Generator, n: int, px: float, amp: float, n_spots: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``n_spots`` spots with a Moffat PSF (beta 2.5, FWHM 0.25 um: a core like a Gaussian's
    and heavier wings, as aberrations give), pixel-integrated, peak ``amp`` photons on a
    background of 100 with shot noise; (image, true y x in pixels)."""
    from analysis.sim.optics import render_psf_spots

    pts = rng.uniform(10, n - 10, (n_spots, 2))
    return render_psf_spots(rng, (n, n), px, pts, amp, 100.0, "moffat"), pts


@pytest.mark.parametrize("seed", [10, 12])
def test_heavy_psf_wings_around_bright_puncta_are_not_puncta(seed: int) -> None:
    """A PSF with heavier wings than a Gaussian (here a Moffat profile of beta 2.5) leaves a
    ring of light ~2.5 % of a punctum's significance about 0.3 um out, which the fitted
    Gaussians do not explain: noise on that ring gave false puncta, 58 around 120 spots of
    peak SNR ~50 in the fields of seeds 10-15 (16 in each of these two), 3.7-5.3 px from a
    spot.  The wing is measured around the image's own bright isolated puncta; before the
    second pass it is taken out and its square added to the noise: 6 false puncta now (0 and
    1 here), and 1 true spot of the 120, close to another, is lost (seed 10).  Since the
    narrower punctum sizes of session 40 (a Moffat core is narrower than its Gaussian
    equivalent) seed 12 gives 2 false puncta."""
    img, pts = _moffat_spots(np.random.default_rng(seed), 256, 0.065, 500.0)
    found = detect_puncta(img, 0.065)[["y", "x"]].to_numpy()
    m = match_points(found, pts, 2.0)
    assert m.fn <= 1 and m.fp <= 2, (m.tp, m.fp, m.fn)


def test_a_gaussian_psf_leaves_no_wing_to_take_out() -> None:
    """:func:`_psf_wing` of 20 Gaussian spots is within 0.5 % of 0 at every radius (after the
    shrinkage by its standard error; measured 0.1-0.4 % with seeds 12-14), that of the Moffat
    spots above 1.5 % at its peak (measured 2.4-2.7 %)."""
    from analysis.measure import puncta as pm

    n, px = 256, 0.065
    rng = np.random.default_rng(12)
    pts = rng.uniform(10, n - 10, (20, 2))
    yy, xx = np.mgrid[:n, :n]
    lam = 100.0 + sum(1000.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.6**2)) for y, x in pts)
    wings = {}
    real = pm._psf_wing
    for name, img in (("gauss", rng.poisson(lam).astype(np.uint16)), ("moffat", _moffat_spots(rng, n, px, 1000.0)[0])):
        seen: list = []
        pm._psf_wing = lambda *a: seen.append(real(*a)) or seen[-1]  # noqa: E731
        try:
            detect_puncta(img, px)
        finally:
            pm._psf_wing = real
        wings[name] = seen[0][0]
    assert wings["gauss"] is None or np.abs(wings["gauss"]).max() <= 0.005, wings["gauss"]
    assert wings["moffat"] is not None and wings["moffat"].max() >= 0.015, wings["moffat"]


def _moffat_stack(rng: np.random.Generator, n_spots: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """A stack (14 planes of 160 x 160 px at 0.065 um, z step 0.15 um) of ``n_spots`` spots
    with the Moffat PSF of :func:`_moffat_spots` in every plane, times an axial Gaussian of SD
    0.3 um; peak 500 photons on 100, shot noise; (stack, true z y x)."""
    from analysis.sim.optics import render_psf_spots

    pts = np.column_stack([rng.uniform(3, 10, n_spots), rng.uniform(10, 150, (n_spots, 2))])
    return render_psf_spots(rng, (14, 160, 160), 0.065, pts, 500.0, 100.0, "moffat", z_step_um=0.15,
                            axial_sigma_um=0.3), pts


@pytest.mark.parametrize("seed", [11, 13])
def test_heavy_psf_wings_in_a_stack_are_not_puncta(seed: int) -> None:
    """The PSF wing of :func:`test_heavy_psf_wings_around_bright_puncta_are_not_puncta` in a
    z-stack: the second pass took its ring for puncta, 17 and 13 false ones around these 25
    spots (seeds 11-15: 7-19), in the spots' planes 4-5 px out.  The wing is measured in the
    stack, per axial offset in planes, and taken out as in a plane: none now."""
    img, pts = _moffat_stack(np.random.default_rng(seed))
    found = detect_puncta(img, 0.065, z_step_um=0.15)[["z", "y", "x"]].to_numpy()
    scale = np.array([2.0, 1.0, 1.0])  # (within 2 px laterally, 4 planes = 0.6 um axially)
    m = match_points(found / scale, pts / scale, 2.0)
    assert m.fn <= 1 and m.fp <= 1, (m.tp, m.fp, m.fn)


def test_a_gaussian_psf_leaves_no_wing_in_a_stack() -> None:
    """:func:`_psf_wing` of a stack of Gaussian spots (lateral sigma 1.6 px, axial 2 planes,
    sampled at the pixel centres) is within 1 % of 0 at every axial offset and radius (measured
    -0.51 % at most, 4 px out in the spots' planes), that of the Moffat stack above 2 % at its
    peak (in the spots' planes, ~5 px out)."""
    from analysis.measure import puncta as pm

    rng = np.random.default_rng(12)
    pts = np.column_stack([rng.uniform(3, 10, 25), rng.uniform(10, 150, (25, 2))])
    zz, yy, xx = np.mgrid[:14, :160, :160]
    lam = 100.0 + sum(500.0 * np.exp(-((zz - z) ** 2 / 8.0 + ((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.6**2)))
                      for z, y, x in pts)
    wings = {}
    real = pm._psf_wing
    for name, img in (("gauss", rng.poisson(lam).astype(np.uint16)), ("moffat", _moffat_stack(rng)[0])):
        seen: list = []
        pm._psf_wing = lambda *a: seen.append(real(*a)) or seen[-1]  # noqa: E731
        try:
            detect_puncta(img, 0.065, z_step_um=0.15)
        finally:
            pm._psf_wing = real
        wings[name] = seen[0][0]
    assert wings["gauss"] is None or np.abs(wings["gauss"]).max() <= 0.01, wings["gauss"]
    assert wings["moffat"] is not None and wings["moffat"].ndim == 2 and wings["moffat"][0].max() >= 0.02


def _elliptical_field(aspect: float, snr: float) -> tuple[np.ndarray, np.ndarray]:
    """100 elliptical spots (minor SD 1.4 px at 0.065 um, major ``aspect`` x that, all at 0.7
    rad: an astigmatic PSF) in 384 x 384 px, peak ``10 snr`` photons on 100; (image, truth)."""
    from analysis.sim.optics import render_elliptical_spots

    rng = np.random.default_rng([7, int(aspect * 10), int(snr)])
    pts = rng.uniform(8, 375, (100, 2))
    img = render_elliptical_spots(rng, (384, 384), 0.065, pts, snr * 10.0, 100.0, sigma_um=0.091, aspect=aspect,
                                  angle_rad=0.7)
    return img, pts


@pytest.mark.parametrize(("aspect", "snr", "false_before"), [(1.3, 20, 50), (1.6, 100, 97), (2.0, 400, 122)])
def test_elongated_puncta_are_counted_once(aspect: float, snr: float, false_before: int) -> None:
    """Spots drawn out along a line were fitted by two or three round puncta (or split in
    two): ``false_before`` false puncta around these 100 spots.  The plane's bright isolated
    puncta show the elongation, and a group of puncta within 3 sigma must then beat one
    elongated punctum as a split must: 1 / 3 / 7 false now, 1-4 missed."""
    img, pts = _elliptical_field(aspect, snr)
    found = detect_puncta(img, 0.065)
    m = match_points(found[["y", "x"]].to_numpy(), pts, 2.5)
    assert found.attrs["elongated_puncta"]
    assert m.fp <= 10 and m.fn <= 5, (m.tp, m.fp, m.fn, false_before)


def test_round_puncta_keep_two_close_puncta_as_two() -> None:
    """The same field with round spots reads as round (``elongated_puncta`` False), so close
    pairs are still split as before; sim-fish, our phantoms and the culture's postsynaptic
    channel read round too, and their detections are unchanged (benchmarks/RESULTS.md,
    session 37)."""
    img, pts = _elliptical_field(1.0, 100)
    found = detect_puncta(img, 0.065)
    m = match_points(found[["y", "x"]].to_numpy(), pts, 2.5)
    assert not found.attrs["elongated_puncta"]
    assert m.fp == 0 and m.fn == 0, (m.tp, m.fp, m.fn)


def test_an_astigmatic_psf_leaves_no_lobes_counted_as_puncta() -> None:
    """Spots of aspect 1.2 (an astigmatic PSF; the field of
    :func:`test_elongated_puncta_are_counted_once`) read round, but the round fit leaves light
    along the major axis, ~5 % of a punctum's significance 2 sigma out, the same around every
    punctum: the second pass counted those lobes, 16 false puncta around these 100 spots at
    peak SNR 400.  The wing's quadrupole is measured on the image and taken out with the
    wing: 2 now.  On round spots no quadrupole is seen (``psf_quadrupole`` 0) and the
    detections are unchanged (benchmarks/RESULTS.md, session 38)."""
    img, pts = _elliptical_field(1.2, 400)
    found = detect_puncta(img, 0.065)
    m = match_points(found[["y", "x"]].to_numpy(), pts, 2.5)
    assert not found.attrs["elongated_puncta"]
    assert 0.02 <= found.attrs["psf_quadrupole"] <= 0.1, found.attrs["psf_quadrupole"]
    assert m.fp <= 4 and m.fn <= 1, (m.tp, m.fp, m.fn)
    round_img, _ = _elliptical_field(1.0, 100)
    assert detect_puncta(round_img, 0.065).attrs["psf_quadrupole"] == 0.0


def test_the_psf_shape_the_detector_read_is_on_the_image_row() -> None:
    """``quantify_image`` carries ``detect_puncta``'s reading of the PSF into the image's row:
    the quadrupole of the astigmatic field of
    :func:`test_an_astigmatic_psf_leaves_no_lobes_counted_as_puncta`, 0 on round spots; and
    whether the puncta read as drawn out along a line (aspect 2)."""
    from analysis.pipeline.quantify import QuantifyParams, quantify_image

    params = QuantifyParams(quality={"spike_in": False})
    rows = {}
    for aspect, snr in ((1.2, 400), (1.0, 100), (2.0, 400)):
        img, _ = _elliptical_field(aspect, snr)
        out = quantify_image(img[None, None], 0.065, synapse_channel=0, params=params)
        rows[aspect] = out[0] if isinstance(out, tuple) else out
    assert 0.02 <= rows[1.2]["psf_quadrupole"] <= 0.1 and not rows[1.2]["puncta_elongated"]
    assert rows[1.0]["psf_quadrupole"] == 0.0 and not rows[1.0]["puncta_elongated"]
    assert rows[2.0]["puncta_elongated"]


def _elliptical_stack(key: list[int], aspect: float, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """100 elliptical spots of :func:`_elliptical_field` (at 0.7 rad) in a z-stack of 16 planes
    of 320 x 320 px, z step 0.15 um, axial SD 0.3 um, peak ``amplitude`` photons on 100;
    (stack, true z y x)."""
    from analysis.sim.optics import render_elliptical_spots

    rng = np.random.default_rng(key)
    pts = np.column_stack([rng.uniform(2, 13, 100), rng.uniform(8, 311, (100, 2))])
    img = render_elliptical_spots(rng, (16, 320, 320), 0.065, pts, amplitude, 100.0, sigma_um=0.091, aspect=aspect,
                                  angle_rad=0.7, z_step_um=0.15, axial_sigma_um=0.3)
    return img, pts


def _stack_match(found: pd.DataFrame, pts: np.ndarray):
    """One-to-one matches within 2.5 px laterally and 5 planes axially."""
    scale = np.array([2.0, 1.0, 1.0])
    return match_points(found[["z", "y", "x"]].to_numpy() / scale, pts / scale, 2.5)


def test_an_astigmatic_psf_in_a_stack_leaves_no_lobes_counted_as_puncta() -> None:
    """The lobes of :func:`test_an_astigmatic_psf_leaves_no_lobes_counted_as_puncta` in a
    z-stack (aspect 1.3 at peak SNR 100, which reads round): 15 false puncta around these
    100 spots (57 in the two stacks of benchmarks/validate_stacks.py); the quadrupole per
    signed axial offset: 1 now."""
    img, pts = _elliptical_stack([1, 13, 100], 1.3, 1000.0)
    found = detect_puncta(img, 0.065, z_step_um=0.15)
    m = _stack_match(found, pts)
    assert not found.attrs["elongated_puncta"] and found.attrs["psf_quadrupole"] > 0.0
    assert m.fp <= 4 and m.fn <= 2, (m.tp, m.fp, m.fn)


def test_elongated_puncta_in_a_stack_are_counted_once() -> None:
    """The elongated spots of :func:`test_elongated_puncta_are_counted_once` in a z-stack
    (aspect 1.6, peak SNR 20), drawn out laterally: the joint fit put false puncta 3-4 px from
    them, 68 around these 100 spots; 2 now (1 missed)."""
    img, pts = _elliptical_stack([2, 16, 20], 1.6, 200.0)
    found = detect_puncta(img, 0.065, z_step_um=0.15)
    m = _stack_match(found, pts)
    assert found.attrs["elongated_puncta"]
    assert m.fp <= 6 and m.fn <= 3, (m.tp, m.fp, m.fn)


def test_dim_puncta_beside_bright_astigmatic_ones_are_found() -> None:
    """60 bright spots (peak SNR 200) and 60 dim ones (peak SNR 8) of aspect 1.15, which reads
    round: the bright ones' quadrupole dips across them as deeply as it peaks along them, and
    the negative control counted those dips as background, raising the threshold to 27.5
    noise SDs; 2 of the 60 dim spots were found.  With the quadrupole taken out of the
    negative control too: 44 (and 1 false punctum)."""
    from analysis.sim.optics import render_elliptical_spots

    rng = np.random.default_rng([0, 77, 114, 8])
    bright, dim = rng.uniform(8, 375, (60, 2)), rng.uniform(8, 375, (60, 2))
    img = sum(render_elliptical_spots(rng, (384, 384), 0.065, p, amp, 50.0, sigma_um=0.091, aspect=1.15,
                                      angle_rad=0.7).astype(float) for p, amp in ((bright, 2000.0), (dim, 80.0)))
    found = detect_puncta(img, 0.065)
    m = match_points(found[["y", "x"]].to_numpy(), np.vstack([bright, dim]), 2.5)
    hit = np.zeros(120, bool)
    hit[m.pairs[:, 1]] = True
    assert not found.attrs["elongated_puncta"]
    assert hit[:60].all() and hit[60:].sum() >= 35 and m.fp <= 3, (hit[60:].sum(), m.fp)


def test_puncta_beyond_the_field_edge_are_not_counted_on_it() -> None:
    """Tissue goes on beyond the field: puncta centred just outside it shine in.  They were
    placed on the outermost pixels (the fit keeps centres in the image) and counted: within 4 px
    of the edges 117 puncta were reported where 94 true ones lie (1.24x, against 0.97x inside).
    Refitted without that limit, those centred beyond the edge line are not counted."""
    n, margin = 128, 10.0
    band_found = band_true = inner_found = inner_true = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        pts = rng.uniform(-0.5 - margin, n - 0.5 + margin, (int(0.006 * (n + 2 * margin) ** 2), 2))
        yy, xx = np.mgrid[:n, :n]
        lam = np.full((n, n), 100.0)
        for y, x in pts:
            lam += 80.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.3**2))
        found = detect_puncta(rng.poisson(lam).astype(np.uint16), 0.1)[["y", "x"]].to_numpy()
        inside = ((pts >= -0.5) & (pts < n - 0.5)).all(axis=1)
        depth = lambda q: np.minimum(q + 0.5, n - 0.5 - q).min(axis=1)  # noqa: E731  (px inside the field)
        band_true += int((depth(pts[inside]) < 4).sum())
        inner_true += int((depth(pts[inside]) >= 4).sum())
        band_found += int((depth(found) < 4).sum())
        inner_found += int((depth(found) >= 4).sum())
    inner = inner_found / inner_true
    assert 0.9 <= inner <= 1.05, inner
    assert abs(band_found / band_true - inner) <= 0.08, (band_found, band_true, inner)


def test_puncta_a_few_pixels_from_an_edge_are_not_pulled_onto_it() -> None:
    """A punctum 0.5-3 pixels inside an image edge is centred where it is.  Filters with
    reflecting edges see it with its mirror image; the parabola through the response's
    maximum found the centre of the two, on or near the edge: 1 pixel inside, the old code
    put it 0.7 pixel outward (sigma 1.5 px; up to 2 px at sigma 2.5 px, where sim-fish's
    spots 2.5 px inside were missed).  Near an edge the centre is now fitted with the
    punctum's folded profile, and its amplitude with the folded response at its centre (it
    was 8-10 % low 1-3 pixels inside)."""
    d = np.array([0.5, 1.0, 2.0, 3.0])
    along = 20.0 + 28.0 * np.arange(4)
    true = np.vstack([np.c_[d, along], np.c_[127.0 - d, along + 8], np.c_[along + 4, d], np.c_[along + 12, 127.0 - d]])
    img = _spots((128, 128), true, 1.5, 2000.0, 300.0, seed=3)
    detected = detect_puncta(img, 0.1)
    found = detected[["y", "x"]].to_numpy()
    m = match_points(found, true, 1.5)
    assert m.recall == 1.0, (m.recall, found)
    err = found[m.pairs[:, 0]] - true[m.pairs[:, 1]]
    # across the edge (the axis the mirror image lies on) and along it
    across = np.where(np.isin(m.pairs[:, 1], np.r_[0:8]), err[:, 0], err[:, 1])
    assert np.abs(across).max() <= 0.2, np.c_[true[m.pairs[:, 1]], across]
    assert np.abs(err).max() <= 0.25, err
    amp = detected["intensity"].to_numpy()[m.pairs[:, 0]]
    assert np.abs(amp / 2000.0 - 1.0).max() <= 0.05, amp


@pytest.mark.parametrize("dtype, level", [(np.uint8, 255), (np.uint16, 4095), (np.float32, 255.0)])
def test_light_lost_to_saturation_is_estimated_from_the_clipped_patch(dtype, level) -> None:
    """The fraction of a clipped punctum's light above the saturation level (its Gaussian
    model's error, which sets how faint a neighbour may be before it counts as that model's
    residue) follows from the size of its clipped patch: against the exact sum over pixels,
    within 0.03, for peaks 2-12 x the saturation level; 0 for a punctum that is not clipped.
    (In sim-fish's 8-bit saturated case the filter's surround of clipped spots left false puncta
    at 5.2-6.6 % of their amplitude, above the 5 % PSF model error; 8 in one image.)"""
    from analysis.measure.puncta import _clipped_light_fraction

    yy, xx = np.mgrid[:64, :64].astype(float)
    centre = np.array([[32.3, 31.8], [10.0, 50.0]])
    for s in (1.5, 2.0, 3.0):
        for peak in (2.0, 4.0, 12.0):
            g = level * peak * np.exp(-((yy - 32.3) ** 2 + (xx - 31.8) ** 2) / (2 * s * s))
            g += 0.5 * level * np.exp(-((yy - 10.0) ** 2 + (xx - 50.0) ** 2) / (2 * s * s))  # not clipped
            img = np.clip(g, 0, level).astype(dtype)
            if np.issubdtype(dtype, np.integer):
                img[0, 0] = 0  # (the full scale is found from the maximum)
            exact = np.clip(g[20:45, 20:45] - level, 0, None).sum() / g[20:45, 20:45].sum()
            est = _clipped_light_fraction(img, centre, np.full((2, 2), s))
            assert abs(est[0] - exact) <= 0.03, (s, peak, est[0], exact)
            assert est[1] == 0.0


def test_punctum_size_at_low_snr_is_not_taken_from_broader_structure() -> None:
    """A phantom field at SNR 3 where most of the spots standing out are broader than any
    punctum (haze of out-of-focus puncta, dendrites): their fits pile up at the largest size of
    the range, and their median gave 0.31 um for puncta of 0.16 um (F1 0.47, half the puncta
    lost).  Fits at the bound measure nothing of the size and are left out."""
    from analysis.sim.neuropil import render_synapse_field

    f = render_synapse_field(np.random.default_rng([2026, 158]), shape=(256, 256), pixel_size_um=0.1, snr=3.0)
    true_hwhm = float(np.median(f.puncta["sigma_um"])) * 1.1774
    assert estimate_punctum_radius(f.image, 0.1) == pytest.approx(true_hwhm, rel=0.2)
    p = detect_puncta(f.image, 0.1)
    m = match_points(p[["y", "x"]].to_numpy(), f.puncta[["y", "x"]].to_numpy(float), 2.5)
    assert m.f1 >= 0.7, (m.precision, m.recall)


# --------------------------------------------------------------------------- hot pixels


@pytest.mark.parametrize("spike", [200.0, 2000.0, 60000.0])
def test_hot_pixels_are_not_puncta(spike: float) -> None:
    """A camera's hot pixels (single-pixel spikes 10-3000 noise SDs high; the PSF spans 1.3 px):
    the puncta of the clean image, none at a hot pixel, and the hot pixels counted.  Before they
    were repaired, 100 spikes of 2000 ADU gave ~280 extra puncta (one at each, and ringing)."""
    rng = np.random.default_rng(4)
    truth = spread_points(60, rng)
    clean = render(truth, 60.0)
    ref = detect_puncta(clean, 0.1)
    assert match(ref, truth).tp >= 57 and ref.attrs["hot_pixels"] == 0
    hot = clean.copy()
    yx = np.argwhere(np.ones(hot.shape, bool))[rng.choice(hot.size, 400, replace=False)]
    far = np.min(np.hypot(*(yx[:, None, :] * 0.1 - truth[None]).transpose(2, 0, 1)), axis=1) > 0.6
    yx = yx[far & (yx.min(axis=1) >= 2) & (yx.max(axis=1) < 254)][:100]
    hot[tuple(yx.T)] += spike
    got = detect_puncta(hot, 0.1)
    assert got.attrs["hot_pixels"] == len(yx) >= 90
    # (the noise model is measured again on the repaired copy: a near-threshold punctum may
    # come or go)
    assert abs(len(got) - len(ref)) <= 2 and match(got, truth).tp >= match(ref, truth).tp - 1
    d, _ = match_points(got[["y", "x"]].to_numpy(), yx.astype(float), 1.0).pairs.shape
    assert d == 0  # no detection within 1 px of a hot pixel
    assert np.all(np.asarray(clean) == render(truth, 60.0))  # (the caller's array is not changed)
    assert hot[tuple(yx.T)].min() >= clean.min() + spike  # (nor the hot copy)


def test_undersampled_spots_are_not_taken_for_hot_pixels(monkeypatch) -> None:
    """Puncta narrower than 0.6 px (0.3 um pixels): a spot's light falls in one pixel, so no
    single-pixel spike can be told from a punctum; nothing is repaired (the same puncta as with
    the repair switched off), although many spots have a peak pixel far above its neighbours."""
    import analysis.measure.puncta as P

    rng = np.random.default_rng(5)
    truth = spread_points(40, rng, min_dist=1.5)
    img = render(truth, 400.0, px=0.3, sigma_um=0.13)
    _, info = noise_sd_map(img.astype(float), 0.3)
    assert len(P._hot_pixels(img, info)) >= 10  # (what the shape test alone would call hot)
    got = detect_puncta(img, 0.3)
    assert got.attrs["hot_pixels"] == 0
    monkeypatch.setattr(P, "_HOT_MIN_SIGMA_PX", np.inf)
    pd.testing.assert_frame_equal(got, detect_puncta(img, 0.3))


@pytest.mark.parametrize("amp", [60.0, 400.0])
def test_sparse_undersampled_puncta_are_all_found(amp: float) -> None:
    """40 isolated puncta (sigma 0.13 um) at 0.3 um pixels, SNR ~20-100: every one found and at
    most two extra.  The fitted Gaussian misses the pixel-integrated peak of such spots and
    leaves a dip at each centre: counted by the negative control as background, those dips
    raised the threshold above half the spots (11-22 of 40 found); and the model error's
    second maximum in the next pixel was reported as a punctum of its own."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        truth = spread_points(40, rng, min_dist=1.5)
        got = detect_puncta(render(truth, amp, px=0.3, sigma_um=0.13, seed=seed), 0.3)
        assert match_points(got[["y", "x"]].to_numpy() * 0.3, truth, 0.3).tp == 40
        assert len(got) <= 42


def test_pairs_closer_than_the_resolution_are_fitted_as_two_and_single_spots_are_not() -> None:
    # two equal spots 1.6 sigma apart make one maximum, which the joint fit took for one broader
    # punctum between them (both missed at a 0.5 sigma match: sim-fish's medium and crowded
    # fields at 250 nm lost most such pairs); isolated spots of the same brightness beside
    # them must stay one punctum each
    rng = np.random.default_rng(11)
    sigma = 2.5  # px (250 nm at 0.1 um)
    centres = spread_points(40, rng, (25.6, 25.6), min_dist=3.0, margin=1.5) / 0.1
    angle = rng.uniform(0, np.pi, 20)
    half = 0.8 * sigma * np.column_stack([np.sin(angle), np.cos(angle)])
    pairs = np.concatenate([centres[:20] - half, centres[:20] + half])
    singles = centres[20:]
    img = _spots((256, 256), np.concatenate([pairs, singles]), sigma, 300.0, 100.0, seed=12)  # 30 noise SDs
    p = detect_puncta(img, 0.1)[["y", "x"]].to_numpy()
    m = match_points(p, pairs, 0.5 * sigma)
    assert m.recall >= 0.85, m.recall  # (one punctum per pair: <= 0.5)
    assert np.median(m.distances) < 0.2 * sigma  # re-centred by the second fit (measured 0.14 sigma)
    near_single = match_points(p, singles, 0.5 * sigma)
    assert near_single.recall == 1.0
    # no detection other than the matched one within 3 sigma of a single spot
    d = np.hypot(*(p[:, None, :] - singles[None]).transpose(2, 0, 1))
    assert ((d < 3 * sigma).sum(axis=0) == 1).all(), (d < 3 * sigma).sum(axis=0)
