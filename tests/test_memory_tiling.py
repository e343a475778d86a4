"""Large images are processed in tiles and strips (issue 16, memory): the results are those of
the whole-image computation.

The tile size is a parameter, set small here so that a small phantom plane is cut into
several tiles.  Equality is asserted where the tiled computation is exact in arithmetic (the
noise model, the punctum size, the quality columns' noise map and surrogate, the per-label
sizes): to rounding (relative 1e-12) where a Gaussian filter of a strip is involved, because
:mod:`analysis.measure.filters` sums in blocks of rows and a row's last bits depend on where its
strip starts (a margin one row short is off by ~5e-6 of the maximum), bit for bit elsewhere;
the puncta themselves are fitted per tile, whose pruning loop converges in fewer rounds than
that of the whole image, so a few per cent of them may settle a little differently.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.sim import phantoms
from analysis.measure import quality
from analysis.measure import puncta as synapses
from analysis.measure.noise import noise_sd_map
from analysis.measure.puncta import detect_puncta, estimate_punctum_radius, match_points


@pytest.fixture(scope="module")
def plane() -> np.ndarray:
    """PSD95 channel of a 640 x 640 terminal field (0.2 um pixels)."""
    return phantoms.render_terminal_field(np.random.default_rng([16, 1]), shape=(640, 640), snr=8.0).image[0]


@pytest.fixture(scope="module")
def field() -> phantoms.SynapseField:
    return phantoms.render_synapse_field(np.random.default_rng([16, 2]), shape=(512, 512), snr=4.5)


def test_noise_model_in_strips_equals_the_whole_image(plane: np.ndarray) -> None:
    _, whole = noise_sd_map(plane.astype(np.float64), 0.2)
    for strip in (40, 100, 333):
        info = synapses._noise_model(plane, 0.2, strip_px=strip)
        for key in ("alpha", "beta", "var_min", "var_max"):
            assert info[key] == pytest.approx(whole[key], rel=1e-12, abs=0)
        assert info["skew"] == pytest.approx(whole["skew"], rel=1e-9, abs=1e-12)
        # (the correlation figure: the wide operator in two 1-D passes here, per box there)
        assert info["correlation"] == pytest.approx(whole["correlation"], rel=1e-9)
    # and for a stack (boxes per plane), with the correlation figure along z too
    stack = np.stack([plane[:200, :300], plane[200:400, :300], plane[400:600, :300]] * 2)
    _, whole3 = noise_sd_map(stack.astype(np.float64), 0.2)
    info3 = synapses._noise_model(stack, 0.2, strip_px=64)
    assert info3["alpha"] == pytest.approx(whole3["alpha"], rel=1e-12, abs=0)
    assert info3["beta"] == pytest.approx(whole3["beta"], rel=1e-12, abs=0)
    assert info3["correlation"] == pytest.approx(whole3["correlation"], rel=1e-9)
    assert info3["axial_correlation"] == pytest.approx(whole3["axial_correlation"], rel=1e-9)
    assert np.isfinite(whole3["axial_correlation"])


def test_punctum_size_in_strips_equals_the_whole_image(plane: np.ndarray, field: phantoms.SynapseField) -> None:
    for img, px in ((plane, 0.2), (field.image, 0.1)):
        whole = estimate_punctum_radius(img.astype(np.float64), px, strip_px=10_000)
        assert np.isfinite(whole)
        for strip in (37, 128):
            assert estimate_punctum_radius(img, px, strip_px=strip) == whole


def _compare(a, b) -> tuple[float, float]:
    """Share of ``a``'s puncta with one of ``b`` within 0.1 px (one-to-one) and the relative
    count difference."""
    m = match_points(a[["y", "x"]].to_numpy(), b[["y", "x"]].to_numpy(), 0.1)
    return m.tp / max(len(a), len(b)), abs(len(a) - len(b)) / len(a)


@pytest.mark.parametrize("tile", [160, 256])
def test_tiled_detection_finds_the_puncta_of_the_whole_plane(plane: np.ndarray, tile: int) -> None:
    whole = detect_puncta(plane, 0.2, tile_px=None)
    tiled = detect_puncta(plane, 0.2, tile_px=tile)
    assert len(synapses._tiles(plane.shape, tile)) >= 9  # really tiled
    assert len(whole) > 1000
    matched, count_diff = _compare(whole, tiled)
    assert count_diff <= 0.01
    assert matched >= 0.98  # measured 0.99-1.0
    # the global steps are global: the same size, noise model and noise-FDR threshold
    for key in ("punctum_radius_um", "noise_alpha", "noise_beta"):
        assert tiled.attrs[key] == whole.attrs[key]
    assert tiled.attrs["threshold_used"] == pytest.approx(whole.attrs["threshold_used"], abs=0.05)
    # matched puncta carry the same measurements
    m = match_points(whole[["y", "x"]].to_numpy(), tiled[["y", "x"]].to_numpy(), 0.1)
    w, t = whole.iloc[m.pairs[:, 0]], tiled.iloc[m.pairs[:, 1]]
    assert np.median(np.abs(w["intensity"].to_numpy() / t["intensity"].to_numpy() - 1)) < 1e-6
    # a tile boundary holds no duplicate: no more pairs closer than the minimum separation than
    # in the whole plane (where such pairs are the two puncta of a split blob)
    from scipy.spatial import cKDTree

    sep = 0.999 * max(synapses._SEPARATION_PER_RADIUS * tiled.attrs["punctum_radius_um"] / 0.2, 1.0)
    close_w = len(cKDTree(whole[["y", "x"]].to_numpy()).query_pairs(sep))
    assert len(cKDTree(tiled[["y", "x"]].to_numpy()).query_pairs(sep)) <= close_w


def test_tiled_detection_at_every_snr_level() -> None:
    for level, snr in phantoms.SNR_LEVELS.items():
        f = phantoms.render_synapse_field(np.random.default_rng([16, 3, int(snr)]), shape=(400, 400), snr=snr)
        whole = detect_puncta(f.image, 0.1, tile_px=None)
        tiled = detect_puncta(f.image, 0.1, tile_px=200)
        matched, count_diff = _compare(whole, tiled)
        assert count_diff <= 0.01, level
        assert matched >= 0.97, level
        # and the truth is found as well either way
        truth = f.puncta[["y", "x"]].to_numpy()
        f1_w = match_points(whole[["y", "x"]].to_numpy(), truth, 2.5).f1
        f1_t = match_points(tiled[["y", "x"]].to_numpy(), truth, 2.5).f1
        assert abs(f1_w - f1_t) < 0.01, level


def test_tiled_detection_of_a_stack() -> None:
    rng = np.random.default_rng(5)
    planes = [phantoms.render_synapse_field(np.random.default_rng([16, 4, z]), shape=(300, 300)).image for z in range(4)]
    stack = np.stack(planes).astype(np.float64)
    stack = ndi.gaussian_filter(stack, [0.8, 0, 0]) + rng.normal(0, 1, stack.shape)
    whole = detect_puncta(stack, 0.1, z_step_um=0.3, tile_px=None)
    tiled = detect_puncta(stack, 0.1, z_step_um=0.3, tile_px=150)
    assert list(tiled.columns[:3]) == ["z", "y", "x"]
    m = match_points(whole[["z", "y", "x"]].to_numpy(), tiled[["z", "y", "x"]].to_numpy(), 0.1)
    near = match_points(whole[["z", "y", "x"]].to_numpy(), tiled[["z", "y", "x"]].to_numpy(), 1.0)
    # a small, crowded synthetic stack cut into four tiles: measured 340 vs 337 puncta (0.9 %),
    # 332 at the same place within 0.1 px (98 %), 336 within 1 px (the others settle a little
    # differently in a tile's fit).  (Nine tiles of 128 px, each read with its ~100 px margin,
    # took twice as long: 340 vs 342, 320 and 338.)  Stacks up to 1024 px laterally are not tiled
    assert abs(len(whole) - len(tiled)) <= 0.02 * len(whole)
    assert m.tp >= 0.93 * len(whole)
    assert near.tp >= 0.98 * len(whole)


def test_quality_helpers_without_full_maps_are_exact(field: phantoms.SynapseField) -> None:
    img = field.image
    p = detect_puncta(img, 0.1)
    sigma = 0.42 / 0.1
    level = ndi.gaussian_filter(img.astype(np.float64), sigma, mode="reflect")
    var = 2.0 * level - 150.0
    assert quality._median_variance(img, sigma, 2.0, -150.0, strip_px=77) == pytest.approx(float(np.median(var)),
                                                                                          rel=1e-12, abs=0)
    pts = np.random.default_rng(0).uniform(-0.5, 511.5, (400, 2))
    want = ndi.map_coordinates(np.sqrt(np.maximum(var, 1.0)), pts.T, order=1, mode="nearest")
    got = quality._level_at(img, sigma, pts, lambda lv: np.sqrt(np.maximum(2.0 * lv - 150.0, 1.0)), strip_px=61)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    full = quality.flipped_surrogate(img, 0.1, p)
    for win in ((slice(0, 192), slice(0, 192)), (slice(101, 293), slice(320, 512)), (slice(33, 97), slice(7, 300))):
        np.testing.assert_array_equal(quality._surrogate_window(img, 0.1, p, win), full[win])


def test_label_sizes_in_chunks() -> None:
    lab = np.random.default_rng(1).integers(0, 50, (300, 200)).astype(np.int32)
    np.testing.assert_array_equal(synapses._label_sizes(lab, 60, chunk=1000), np.bincount(lab.ravel(), minlength=60))


def test_tiled_detection_needs_less_memory_than_the_whole_plane(plane: np.ndarray) -> None:
    """Peak of the numpy allocations (tracemalloc, deterministic) of the tiled run is well below
    that of the whole plane (the absolute figures are in benchmarks/bench_memory.py)."""
    import tracemalloc

    def peak(**kw) -> int:
        tracemalloc.start()
        detect_puncta(plane, 0.2, punctum_radius_um=0.2, noise_fdr=None, **kw)
        out = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out

    # measured: 14.9 MB in four tiles of 320 px (each read with its margin) against 34.5 MB whole
    # (0.43); nine tiles of 214 px 0.41, 25 of 128 px 0.30 but 4x the time under tracing
    assert peak(tile_px=320) < 0.6 * peak(tile_px=None)


# --------------------------------------------------------------------------- microglia segmentation


def test_microglia_strip_and_component_helpers_equal_the_whole_image_operations() -> None:
    """The memory-lean pieces of segment_microglia give what they replace, exactly: rank filters
    in strips of rows, the watershed one foreground component at a time, the dominant maxima of
    a float32 image kept in float32, label maxima without a double copy."""
    from skimage.morphology import disk
    from skimage.segmentation import watershed

    from analysis.measure import microglia as mg
    from analysis.measure import morphology

    rng = np.random.default_rng(7)
    img = ndi.gaussian_filter(rng.normal(size=(1000, 600)), 2.0).astype(np.float32)  # strips of 436 rows
    for radius in (1, 3, 5):
        np.testing.assert_array_equal(mg._disk_grey_opening(img, radius), ndi.grey_opening(img, footprint=disk(radius)))
        np.testing.assert_array_equal(mg._disk_rank(img, radius, "min"), ndi.grey_erosion(img, footprint=disk(radius)))
        np.testing.assert_array_equal(mg._disk_rank(img, radius, "max"), ndi.grey_dilation(img, footprint=disk(radius)))
        np.testing.assert_array_equal(mg._square_rank(img, radius, "max"), ndi.maximum_filter(img, size=2 * radius + 1))
        np.testing.assert_array_equal(mg._square_rank(img, radius, "min"), ndi.minimum_filter(img, size=2 * radius + 1))
    from skimage.filters import apply_hysteresis_threshold

    np.testing.assert_array_equal(mg._hysteresis(img, 0.02, 0.08), apply_hysteresis_threshold(img, 0.02, 0.08))
    mask = img > 0.05
    for r in (2.5, 6.0):
        np.testing.assert_array_equal(mg._farther_than(mask, r), ndi.distance_transform_edt(mask) > r)
    # the flood: skimage's watershed, also with ties (whole-number levels, seeds of equal value,
    # where a flood split by component would differ)
    comp, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    assert n > 10
    markers = np.zeros(img.shape, np.int32)
    pts = np.argwhere(mask)[rng.choice(int(mask.sum()), 60, replace=False)]
    markers[tuple(pts.T)] = np.arange(1, 61)
    np.testing.assert_array_equal(mg._watershed(img, markers, mask, negate=True),
                                  watershed(-img, markers, mask=mask, connectivity=2))
    levels = np.floor(img * 20).astype(np.int16)
    markers[tuple(pts[:30].T)] = 1  # (half the seeds one label)
    for lv in (levels, levels.astype(np.float32)):
        np.testing.assert_array_equal(mg._watershed(lv, markers, mask), watershed(lv, markers, mask=mask, connectivity=2))
    ids = np.zeros(n + 1, bool)
    ids[1::2] = True
    # dominant maxima: float32 as its double copy, by component as whole
    for h, rel in ((0.0, 0.5), (0.01, 0.0)):
        a32 = mg._dominant_maxima(img, mask, h, rel=rel, labelled=True)
        a64 = mg._dominant_maxima(img.astype(np.float64), mask, h, rel=rel, labelled=True)
        every = np.ones(n + 1, bool)
        every[0] = False
        byc = mg._dominant_maxima(img, mask, h, rel=rel, labelled=True, comp=comp, ids=every, want_regions=False)
        assert a32[0].max() > 5
        for x, y in ((a32[0], a64[0]), (a32[1], a64[1]), (byc[0], a64[0])):
            np.testing.assert_array_equal(x, y)
        assert byc[1] is None
    np.testing.assert_array_equal(mg._label_max(img, comp, n), morphology._label_max(img, comp, n))
    # maxima one component at a time: those of the whole image, or None when a plateau at the
    # floor (the mask's minimum) would be a maximum in its box (it may reach beyond it)
    from skimage.morphology import local_maxima

    def whole(f, m):
        return local_maxima(np.where(m, f, f[m].min()), connectivity=2, allow_borders=True) & m

    got = mg._component_maxima(img, mask, comp, None)
    np.testing.assert_array_equal(got, whole(img, mask))
    np.testing.assert_array_equal(mg._component_maxima(img, ids[comp], comp, ids), whole(img, ids[comp]))
    yy, xx = np.mgrid[:120, :200]
    disks = ((yy - 60) ** 2 + (xx - 50) ** 2 < 30**2) | ((yy - 60) ** 2 + (xx - 150) ** 2 < 30**2)
    flat = np.where(xx < 100, 1.0, 1.0 + np.exp(-((yy - 60) ** 2 + (xx - 150) ** 2) / 200.0)).astype(np.float32)
    dcomp, nd = ndi.label(disks, structure=np.ones((3, 3), bool))
    # the left disk is a plateau at the floor: a maximum in its box, not in the whole image
    assert mg._component_maxima(flat, disks, dcomp, None) is None
    both = np.array([False, True, True])
    np.testing.assert_array_equal(mg._dominant_maxima(flat, disks, 0.0, labelled=True, comp=dcomp, ids=both)[0],
                                  mg._dominant_maxima(flat, disks, 0.0, labelled=True)[0])
    assert not whole(flat, disks)[60, 50] and whole(flat, disks)[60, 150]


def test_default_tiles_whole_up_to_1024_then_at_most_768() -> None:
    # every image of the simulated studies (up to 1024 px) is processed whole
    assert synapses._tiles((1024, 1024), synapses.TILE_PX) == [((0, 1024), (0, 1024))]
    assert len(synapses._tiles((1024, 700), synapses.TILE_PX)) == 1
    # larger planes: tiles of at most LARGE_TILE_PX (768) per side, covering the plane once
    for shape, n in (((2048, 2048), 9), ((1025, 1025), 4), ((8000, 3000), 11 * 4)):
        tiles = synapses._tiles(shape, synapses.TILE_PX)
        assert len(tiles) == n
        covered = np.zeros(shape, np.int8)
        for (y0, y1), (x0, x1) in tiles:
            assert y1 - y0 <= 768 and x1 - x0 <= 768
            covered[y0:y1, x0:x1] += 1
        assert (covered == 1).all()
    # a smaller tile_px than that is used as it is
    assert max(y1 - y0 for (y0, y1), _ in synapses._tiles((400, 400), 160)) <= 160
