"""Label-free puncta checks (analysis.measure.labelfree) on hand-built masks and points.

Expected numbers are computed by hand in each test.  The last test runs the checks on a real
culture field from ``../shared/realdata`` (skipped when that folder is absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.measure.labelfree import (
    dendrite_length_um,
    dendrite_mask,
    density_per_10um,
    enrichment_near,
    fraction_inside,
    nucleus_mask,
    soma_mask,
    pairing_above_chance,
)

ROOT = Path(__file__).resolve().parents[1]
CULTURE = (ROOT / ".." / "shared" / "realdata" / "culture_puncta").resolve()


def test_random_points_have_enrichment_one() -> None:
    # a 0.2 um-wide line at x = 10 um in a 40 x 40 um field (0.1 um pixels): the band within
    # 1 um covers 21 of 400 columns (5.25 %); 20,000 uniform points put ~1,050 there, SD ~31,
    # so the enrichment is 1 +- 0.03 (1 SD); +-0.12 is ~4 SD
    rng = np.random.default_rng(1)
    m = np.zeros((400, 400), bool)
    m[:, 100] = True
    pts = rng.uniform(-0.5, 399.5, size=(20_000, 2))
    assert enrichment_near(pts, m, 0.1) == pytest.approx(1.0, abs=0.12)


def test_points_on_a_line_mask_give_the_exact_enrichment() -> None:
    # one-pixel line, 1 um reach at 0.25 um pixels: columns 96..104 (9 of 200) are near,
    # so every point near the line scores 200 / 9; half of them near scores 100 / 9
    m = np.zeros((100, 200), bool)
    m[:, 100] = True
    on = np.column_stack([np.arange(0, 100, 10), np.full(10, 103.4)])
    far = np.column_stack([np.arange(0, 100, 10), np.full(10, 20.0)])
    assert enrichment_near(on, m, 0.25) == pytest.approx(200 / 9)
    assert enrichment_near(np.vstack([on, far]), m, 0.25) == pytest.approx(100 / 9)
    # a wider reach: 2 um = 8 px each side -> 17 columns
    assert enrichment_near(on, m, 0.25, within_um=2.0) == pytest.approx(200 / 17)


def test_enrichment_without_points_or_mask_is_nan() -> None:
    m = np.zeros((10, 10), bool)
    assert np.isnan(enrichment_near(np.zeros((0, 2)), m | True, 0.1))
    assert np.isnan(enrichment_near([[1, 1]], m, 0.1))


def test_fraction_inside_rounds_to_the_nearest_pixel_and_clips_at_the_border() -> None:
    m = np.zeros((20, 20), bool)
    m[5:10, 5:10] = True
    pts = [[5, 5], [9.4, 9.4], [9.6, 9.6], [4.6, 7], [-3, 7], [30, 30]]
    # inside: (5,5), (9,9), (5,7) -> 3 of 6; the two outside the image clip to the border
    assert fraction_inside(pts, m) == pytest.approx(0.5)
    assert np.isnan(fraction_inside(np.zeros((0, 2)), m))


def test_pairing_of_identical_sets_is_one_and_chance_is_low() -> None:
    # 200 random points in a 100 x 100 um field (0.1 um pixels): 2 per 100 um^2; a disc of
    # 0.65 um holds on average 200 * pi * 0.65^2 / 10,000 = 0.027 points -> chance ~0.03
    rng = np.random.default_rng(2)
    pts = rng.uniform(0, 1000, size=(200, 2))
    r = pairing_above_chance(pts, pts, 0.1, shape=(1000, 1000))
    assert r["observed"] == 1.0
    assert r["chance"] < 0.08
    assert r["above_chance"] == pytest.approx(1.0 - r["chance"])


def test_pairing_of_independent_sets_is_at_chance() -> None:
    # two independent dense sets (10 per 100 um^2): expected pairing 1 - exp(-10 * pi *
    # 0.65^2 / 100) = 0.124 for both the real and the shifted pre channel -> above chance ~0
    rng = np.random.default_rng(3)
    pre = rng.uniform(0, 1000, size=(1000, 2))
    post = rng.uniform(0, 1000, size=(1000, 2))
    r = pairing_above_chance(pre, post, 0.1, shape=(1000, 1000))
    assert r["observed"] == pytest.approx(0.124, abs=0.04)
    assert r["chance"] == pytest.approx(0.124, abs=0.03)
    assert abs(r["above_chance"]) < 0.04


def test_pairing_counts_partners_within_the_radius_only() -> None:
    # post at 0, pre 0.5 um and 0.8 um away from two of three post puncta (0.1 um pixels)
    post = np.array([[100.0, 100.0], [100.0, 300.0], [100.0, 500.0]])
    pre = np.array([[105.0, 100.0], [100.0, 308.0]])
    r = pairing_above_chance(pre, post, 0.1)
    assert r["observed"] == pytest.approx(1 / 3)
    assert r["chance"] == 0.0
    assert np.isnan(pairing_above_chance(pre, np.zeros((0, 2)), 0.1)["observed"])


def test_dendrite_length_of_lines_and_of_a_thick_mask() -> None:
    m = np.zeros((100, 300), bool)
    m[50, 10:211] = True  # 201 px -> 200 links
    assert dendrite_length_um(m, 0.2) == pytest.approx(40.0)
    m[np.arange(0, 31), np.arange(250, 281)] = True  # 30 diagonal links
    assert dendrite_length_um(m, 0.2) == pytest.approx(40.0 + 30 * np.sqrt(2) * 0.2)
    # a 5 px thick bar 201 px long: its skeleton loses ~2 px at each end
    bar = np.zeros((60, 260), bool)
    bar[28:33, 20:221] = True
    assert dendrite_length_um(bar, 0.1) == pytest.approx(20.0, abs=0.5)
    assert dendrite_length_um(np.zeros((5, 5), bool), 0.1) == 0.0


def test_density_per_10um_counts_puncta_near_the_dendrite() -> None:
    # dendrite 301 px = 300 links x 0.1 um = 30 um; 12 puncta within 1 um (10 px), 5 beyond
    m = np.zeros((100, 400), bool)
    m[50, 50:351] = True
    near = np.column_stack([np.full(12, 58.0), np.linspace(60, 340, 12)])
    far = np.column_stack([np.full(5, 65.0), np.linspace(60, 340, 5)])
    assert density_per_10um(np.vstack([near, far]), m, 0.1) == pytest.approx(12 / 3)
    assert np.isnan(density_per_10um(near, np.zeros_like(m), 0.1))


def test_dendrite_mask_keeps_thin_dendrites_and_drops_a_soma_interior_and_haze() -> None:
    # at 0.25 um: a 1 um dendrite, a faint 0.5 um one, a 16 um soma, a broad haze and noise
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:320, :320] * 0.25
    img = 200 + 300 * np.exp(-((yy - 40) ** 2 + (xx - 40) ** 2) / (2 * 20.0**2))
    img = img + 400 * (np.abs(xx - 20) < 0.5) + 150 * (np.abs(yy - 60) < 0.25)
    img = img + 800 * (np.hypot(yy - 20, xx - 60) < 8)
    img = img + rng.normal(0, 15, img.shape)
    m = dendrite_mask(img, 0.25)
    assert m[:, 80].mean() > 0.95  # the bright dendrite (x = 20 um)
    assert m[240, 100:200].mean() > 0.9  # the faint one (y = 60 um), away from the soma
    assert not m[80, 240]  # soma centre (y = 20, x = 60 um): broader than the top-hat
    assert m[yy > 70].mean() < 0.05  # background far from both, under the haze


def test_nucleus_mask_fills_holes_and_drops_specks() -> None:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:200, :200] * 0.3
    r1 = np.hypot(yy - 15, xx - 15)
    img = 300 + 2000 * ((r1 < 6) & (r1 > 2))  # a 6 um nucleus with a dim nucleolus-like hole
    img = img + 2000 * (np.hypot(yy - 45, xx - 45) < 1.5)  # a 7 um^2 speck (< 20 um^2)
    m = nucleus_mask(img + rng.normal(0, 50, img.shape), 0.3)
    assert m[50, 50] and not m[150, 150]
    assert m.sum() * 0.09 == pytest.approx(np.pi * 36, rel=0.08)


def test_soma_mask_keeps_cell_bodies_and_drops_dendrites_and_small_blobs() -> None:
    # at 0.25 um: a 16 um soma with a 2.5 um thick dendrite leaving it, a 1 um dendrite, a
    # 6 um wide blob (28 um^2 < 80 um^2) and a tilted background
    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[:320, :320] * 0.25
    img = 200 + 2 * xx + 900 * (np.hypot(yy - 20, xx - 20) < 8)
    img = img + 700 * ((np.abs(yy - 20) < 1.25) & (xx > 20)) + 500 * (np.abs(xx - 60) < 0.5)
    img = img + 900 * (np.hypot(yy - 60, xx - 30) < 3)
    m = soma_mask(img + rng.normal(0, 25, img.shape), 0.25)
    assert m[80, 80]  # soma centre
    assert m.sum() * 0.25**2 == pytest.approx(np.pi * 64, rel=0.1)
    assert not m[80, 200] and not m[200, 240]  # the thick dendrite away from the soma, the thin one
    assert not m[240, 120]  # the small blob
    assert ndi.label(m)[1] == 1  # one soma


@pytest.mark.slow
def test_culture_field11_with_our_detector() -> None:
    if not CULTURE.is_dir():
        pytest.skip(f"real culture images not found at {CULTURE} (the shared/realdata folder beside the repo)")
    import tifffile

    from analysis.measure.puncta import detect_puncta

    px = 0.325
    # a 512 x 512 crop (166 um) with dendrites, somata and a nucleus keeps the test fast
    crop = (slice(300, 812), slice(150, 662))
    post = tifffile.imread(CULTURE / "field11_postEx.tif")[crop]
    pre = tifffile.imread(CULTURE / "field11_preEx.tif")[crop]
    dend = dendrite_mask(tifffile.imread(CULTURE / "field11_MAP2.tif")[crop], px)
    nuc = nucleus_mask(tifffile.imread(CULTURE / "field11_DAPI.tif")[crop], px)
    p_post = detect_puncta(post, px)[["y", "x"]].to_numpy()
    p_pre = detect_puncta(pre, px)[["y", "x"]].to_numpy()
    assert len(p_post) > 0 and len(p_pre) > 0
    assert 0.05 < dend.mean() < 0.6 and 0.0 < nuc.mean() < 0.2
    # puncta are paired above chance and not depleted near dendrites (a detector painting the
    # field uniformly gives 0 and 1; measured on this crop: 0.20 and 1.07, where dendrites
    # cover much of the field); the targets (big-fish's 2.0-2.3 enrichment and
    # 0.40-0.45 pairing on the whole fields) are not met yet: benchmarks/RESULTS.md
    assert enrichment_near(p_post, dend, px) > 1.0
    assert np.isfinite(density_per_10um(p_post, dend, px))
    assert pairing_above_chance(p_pre, p_post, px, shape=post.shape)["above_chance"] > 0.1
    assert fraction_inside(p_post, nuc) <= 0.05
