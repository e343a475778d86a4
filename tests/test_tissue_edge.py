"""The sharp edge of the tissue (a section's border, a tear): no line of false puncta along it.

Before session 56 a default-SNR phantom field whose right 96 columns were glass got 32-48 false
puncta within 6 px of its 25.6 um edge (~1.7 per um): the detector's background, a Gaussian
blur, was pulled down by the glass along the tissue side.  With ``repair_tissue_edges=True`` the
detector finds dark regions beyond a step from solid tissue (:func:`analysis.measure.outside.tissue_edge_regions`)
and, where its puncta line their edge, detects again with them raised to the tissue's background
(on by default since session 57; session 56's fill replaced the region's pixels and lost true
puncta at and inside voids).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.measure.noise import _noise_model
from analysis.measure.outside import lift_beyond_edge, tissue_edge_regions
from analysis.measure.puncta import detect_puncta, match_points
from analysis.sim.optics import _camera
from analysis.sim.phantoms import SNR_LEVELS, render_synapse_field

PX = 0.1
EDGE = 160  # first column of glass


def _field(seed: int, blur_px: float, dtype: type = np.float32) -> tuple[np.ndarray, object]:
    """A default-SNR phantom field whose columns from EDGE on are glass (the same camera at 2
    photo-electrons), the edge blurred by ``blur_px``."""
    f = render_synapse_field(np.random.default_rng([seed, 0]), shape=(256, 256), pixel_size_um=PX,
                             snr=SNR_LEVELS["default"])
    tissue = ndi.gaussian_filter((np.arange(256) < EDGE).astype(float), blur_px)[None, :] * np.ones((256, 1))
    glass = _camera(np.random.default_rng([7, seed]), np.full((256, 256), 2.0)).astype(float)
    image = f.image * tissue + glass * (1 - tissue)
    if np.issubdtype(dtype, np.integer):
        image = np.rint(image)
    return image.astype(dtype), f


def _scores(p, f) -> tuple[int, float]:
    """False puncta within 6 px of the edge; recall of the puncta at least 3 px inside the tissue."""
    pts = p[["y", "x"]].to_numpy() * PX
    m = match_points(pts, f.puncta[["y", "x"]].to_numpy() * PX, 0.25)
    false = np.ones(len(p), bool)
    false[m.pairs[:, 0]] = False
    along = int((false & (np.abs(p["x"].to_numpy() - EDGE) <= 6)).sum())
    inner = f.puncta[f.puncta.x < EDGE - 3]
    m2 = match_points(pts, inner[["y", "x"]].to_numpy() * PX, 0.25)
    return along, len(m2.pairs) / len(inner)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_sharp_tissue_edge_makes_no_line_of_false_puncta(seed: int) -> None:
    image, f = _field(seed, 1.0)
    p = detect_puncta(image, PX, repair_tissue_edges=True)
    along, recall = _scores(p, f)
    assert along / (256 * PX) <= 0.2, f"{along} false puncta along a {256 * PX:g} um edge"
    # the tissue's own puncta are found as in the same field without glass
    _, clean = _scores(detect_puncta(f.image.astype(np.float32), PX), f)
    assert recall >= clean - 0.03, (recall, clean)
    assert p.attrs["beyond_edge_px"] >= 0.9 * 256 * (256 - EDGE)
    # (deep in the glass the first detection stands, under its own false-discovery step over
    # the glass: in one of these four fields a noise maximum there passes it)
    assert (p["x"] > EDGE + 1).sum() <= 1, "puncta reported on the glass"


def test_the_glass_region_is_found_at_the_half_level_and_integer_data_stay_integers() -> None:
    image, _ = _field(0, 1.0, np.uint16)
    before = image.copy()
    info = _noise_model(image.astype(float), PX)
    regions = tissue_edge_regions(image, PX, info)
    assert len(regions) == 1
    void = np.zeros(image.shape, bool)
    void[regions[0][0]] = regions[0][1]
    cols = void.mean(axis=0)
    assert cols[EDGE + 2:].min() > 0.99 and cols[:EDGE - 2].max() < 0.01, np.flatnonzero((cols > 0.01) & (cols < 0.99))
    out = lift_beyond_edge(image, regions, PX, margin_px=2, punctum_px=1.5)
    assert out.dtype == np.uint16 and np.array_equal(image, before)  # (a copy: the raw data are not touched)
    tissue = np.median(image[:, 100:EDGE - 5])
    assert abs(np.median(out[:, EDGE + 5:]) - tissue) < 0.1 * tissue
    # the glass keeps its own pixel noise (raised, not replaced)
    assert np.allclose(np.diff(out[:, EDGE + 10:].astype(float), axis=0).std(),
                       np.diff(image[:, EDGE + 10:].astype(float), axis=0).std(), rtol=0.1)
    assert np.array_equal(out[:, :EDGE - 12], image[:, :EDGE - 12])  # the tissue away from the edge as it was


@pytest.mark.parametrize("seed", [0, 1])
def test_a_softer_edge_makes_no_line_of_false_puncta_either(seed: int) -> None:
    # an edge blurred over 2.5 px (0.25 um) made 4-12 false puncta along it; 5 px (0.5 um) none:
    # the background follows it, and the detection is left as it is
    image, f = _field(seed, 2.5)
    along, _ = _scores(detect_puncta(image, PX, repair_tissue_edges=True), f)
    assert along / (256 * PX) <= 0.2, f"{along} false puncta along a {256 * PX:g} um edge"
    image, f = _field(seed, 5.0)
    p = detect_puncta(image, PX, repair_tissue_edges=True)
    assert _scores(p, f)[0] <= 2 and p.attrs["beyond_edge_px"] == 0


#: Phantom fields (default-study phantoms, 0.1 um) whose own somata or vessels are lined with false puncta
#: (within 1 um of a void, without the repair: 24, 26 and 58 false puncta; with it, session 57: 4, 15 and 34).
LINED_PHANTOMS = (("low", 0, 256, 7), ("default", 5, 512, 0), ("high", 5, 512, 1))


@pytest.mark.parametrize(("level", "seed", "size", "i"), LINED_PHANTOMS)
def test_the_phantoms_own_voids_lined_with_false_puncta_are_repaired(level: str, seed: int, size: int, i: int) -> None:
    from analysis.measure.puncta import _detect_puncta

    k = list(SNR_LEVELS).index(level)
    f = render_synapse_field(np.random.default_rng([seed, k, i]), shape=(size, size), pixel_size_um=PX,
                             snr=SNR_LEVELS[level])
    truth = f.puncta[["y", "x"]].to_numpy() * PX
    first, regions, *_ = _detect_puncta(f.image, PX)  # (the detection without the step)
    p = detect_puncta(f.image, PX, repair_tissue_edges=True)
    assert regions and p.attrs["beyond_edge_px"] > 0
    inside = f.analysed_mask
    to_void = np.where(inside, ndi.distance_transform_edt(inside), ndi.distance_transform_edt(~inside)) * PX

    def near_void_false(d) -> tuple[int, int]:
        m = match_points(d[["y", "x"]].to_numpy() * PX, truth, 0.25)
        false = np.ones(len(d), bool)
        false[m.pairs[:, 0]] = False
        ij = np.rint(d[["y", "x"]].to_numpy()).astype(int)
        return m.tp, int((false & (to_void[ij[:, 0], ij[:, 1]] <= 1.0)).sum())

    (tp0, fp0), (tp1, fp1) = near_void_false(first), near_void_false(p)
    assert fp1 <= 2 / 3 * fp0, (fp0, fp1)  # at least a third of the line gone
    assert tp1 >= tp0 - 0.04 * len(truth), (tp0, tp1)


def test_a_phantom_field_whose_voids_are_not_lined_is_detected_as_it_is() -> None:
    from analysis.measure.puncta import _detect_puncta

    f = render_synapse_field(np.random.default_rng([0, 1, 3]), shape=(256, 256), pixel_size_um=PX,
                             snr=SNR_LEVELS["default"])
    first, regions, *_ = _detect_puncta(f.image, PX)
    p = detect_puncta(f.image, PX, repair_tissue_edges=True)
    assert regions, "a field with candidate regions, so that the test exercises the check"
    assert p.attrs["beyond_edge_px"] == 0
    assert p.equals(first)


def test_images_with_correlated_noise_are_left_as_they_were() -> None:
    # where the pixel noise is correlated the repair cost processed phantom fields up to 0.02 of F1
    # (session 57; session 56's fill 0.01-0.04), so such images are detected as before, their edges
    # included (a known gap)
    from analysis.measure.puncta import _detect_puncta

    image, _ = _field(0, 1.0)
    smoothed = ndi.gaussian_filter(image.astype(float), 0.7)
    first, regions, *_ = _detect_puncta(smoothed, PX)
    p = detect_puncta(smoothed, PX, repair_tissue_edges=True)
    assert regions == [] and p.attrs["beyond_edge_px"] == 0 and p.equals(first)


def test_the_repair_is_on_by_default_and_can_be_turned_off() -> None:
    from analysis.measure.puncta import _detect_puncta

    image, _ = _field(0, 1.0)
    first, regions, *_ = _detect_puncta(image, PX, find_edges=False)
    p = detect_puncta(image, PX)
    assert p.attrs["beyond_edge_px"] > 0 and p.equals(detect_puncta(image, PX, repair_tissue_edges=True))
    off = detect_puncta(image, PX, repair_tissue_edges=False)
    assert off.attrs["beyond_edge_px"] == 0 and off.equals(first)


def test_puncta_inside_and_at_the_border_of_a_void_are_kept() -> None:
    # a dark void in the tissue can hold puncta (a microglial cell's engulfed synapses, in the
    # PSD95 channel): session 56's fill replaced the region's pixels and lost them
    image, f = _field(0, 1.0)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :256]
    placed = [(40.0, 230.0), (120.0, 215.0), (200.0, 240.0), (90.0, 161.5), (170.0, 162.0)]  # 3 deep, 2 at the border
    lam = np.zeros((256, 256))
    for y, x in placed:
        lam += 60.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.4**2))
    img = image + rng.poisson(lam) * 1.0
    p = detect_puncta(img.astype(np.float32), PX)
    assert p.attrs["beyond_edge_px"] > 0
    m = match_points(p[["y", "x"]].to_numpy() * PX, np.array(placed) * PX, 0.25)
    assert m.tp == len(placed), m


@pytest.mark.parametrize("offset_px", [-1, 0, 1])
def test_a_punctum_at_the_edge_keeps_its_height_through_the_lift(offset_px: int) -> None:
    # the background along the edge is a median over a line of 2 punctum diameters: a punctum
    # on that line moved it, and before session 58 a punctum at the edge (5 noise SDs of the
    # tissue) kept 0.61-0.73 of its height above the lifted background
    h, w, edge, sig = 96, 128, 64, 1.1
    void = np.zeros((h, w), bool)
    void[:, edge:] = True
    lam = 20.0 + 80.0 * ndi.gaussian_filter((~void).astype(float), 1.0)
    yy, xx = np.mgrid[:h, :w]
    g = np.exp(-((yy - 48) ** 2 + (xx - (edge - 0.5 - offset_px)) ** 2) / (2 * sig**2))
    near = (yy - 48) ** 2 + (xx - (edge - 0.5 - offset_px)) ** 2 <= 25
    design = np.column_stack([g[near], np.ones(near.sum())])
    info = {"alpha": 1.0, "beta": 0.0, "var_min": 0.0, "var_max": 1e12}  # (shot noise, 1 count per photon)
    regions = [((slice(0, h), slice(edge, w)), void[:, edge:])]
    kept = []
    for seed in range(8):
        noise = np.random.default_rng(seed).normal(0.0, 1.0, (h, w)) * np.sqrt(lam)
        lifted = [lift_beyond_edge(lam + noise + 50.0 * g * on, regions, PX, margin_px=2, punctum_px=1.3,
                                   noise_info=info) for on in (1, 0)]
        kept.append(np.linalg.lstsq(design, (lifted[0] - lifted[1])[near], rcond=None)[0][0] / 50.0)
    assert 0.85 <= np.mean(kept) <= 1.1, kept


def test_an_edge_blurred_beyond_the_margin_leaves_no_dark_trough() -> None:
    # an edge blurred over 2.5 px with a margin of 1 px: the lift raised the region and the 1 px
    # beside it, and the plane 1-3 px further stayed dark (-0.7 noise SDs 1-2 px beside the
    # terminal fields' voids, session 58); the zone now covers the blur measured on the plane
    rng = np.random.default_rng(0)
    lam = 20.0 + 80.0 * ndi.gaussian_filter((np.arange(256) < 160).astype(float), 2.5)[None, :] * np.ones((128, 1))
    img = rng.poisson(lam).astype(float)
    info = _noise_model(img, PX)
    regions = tissue_edge_regions(img, PX, info)
    assert len(regions) == 1
    out = lift_beyond_edge(img, regions, PX, margin_px=1, punctum_px=1.3, noise_info=info)
    tissue, sd = np.median(img[:, 100:140]), np.sqrt(100.0)
    cols = [np.median(out[:, c]) for c in range(150, 200)]
    assert min(cols) > tissue - 0.5 * sd, np.round((np.array(cols) - tissue) / sd, 2)
    assert abs(np.median(out[:, 170:]) - tissue) < 0.5 * sd


def test_the_square_median_at_some_pixels_is_scipys_median_filter_there() -> None:
    # (the lift takes its second square median only where a punctum is in the window)
    from analysis.measure.outside import _window_medians

    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 57))
    where = rng.random(values.shape) < 0.3
    where[0, 0] = where[-1, -1] = True  # (corners: the reflection at the border)
    for h in (1, 3):
        expected = ndi.median_filter(values, size=2 * h + 1, mode="reflect")[where]
        assert np.array_equal(_window_medians(values, where, h, chunk=50), expected)
