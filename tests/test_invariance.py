"""Invariances of the detectors: flips, rotations, transposition, dtype, gain and offset.

The same scene seen flipped, rotated or transposed, stored in another dtype or with another
gain and offset must give the same puncta and the same cells (positions mapped back into the
original frame).  Where a detector is not exactly invariant by its design, the tolerance is
stated and justified next to the assertion; where it fails by more than a justified
tolerance, the test is a strict xfail with the measured figure in its reason.

Phantoms: :func:`analysis.sim.phantoms.render_synapse_field` (256 x 256 PSD95 planes at 0.1 um,
default SNR, ~220-280 puncta each) and :func:`analysis.sim.phantoms.render_terminal_field`
(256 x 256 Iba1 planes at 0.2 um, ~5-7 microglia each).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from analysis.measure.microglia import measure_microglia, segment_microglia
from analysis.sim.phantoms import render_synapse_field, render_terminal_field
from analysis.measure.noise import noise_sd_map
from analysis.measure.puncta import detect_puncta

PX_SYN, PX_MG = 0.1, 0.2
SYN_SEEDS = (0, 1)
MG_SEEDS = (0, 1, 2, 3)

Array = np.ndarray
#: name -> (image transform, map of (y, x) in the transformed image back to the original
#: frame of an H x W image)
TRANSFORMS: dict[str, tuple[Callable[[Array], Array], Callable[[Array, Array, int, int], Array]]] = {
    "flip_ud": (np.flipud, lambda y, x, h, w: np.c_[h - 1 - y, x]),
    "flip_lr": (np.fliplr, lambda y, x, h, w: np.c_[y, w - 1 - x]),
    "rot90": (lambda a: np.rot90(a, 1), lambda y, x, h, w: np.c_[x, w - 1 - y]),
    "rot180": (lambda a: np.rot90(a, 2), lambda y, x, h, w: np.c_[h - 1 - y, w - 1 - x]),
    "rot270": (lambda a: np.rot90(a, 3), lambda y, x, h, w: np.c_[h - 1 - x, y]),
    "transpose": (np.transpose, lambda y, x, h, w: np.c_[x, y]),
}
FLIPS_AND_ROTATIONS = [k for k in TRANSFORMS if k != "transpose"]
#: name -> the image transform that undoes it
INVERSE: dict[str, Callable[[Array], Array]] = {
    "flip_ud": np.flipud, "flip_lr": np.fliplr, "rot90": lambda a: np.rot90(a, -1),
    "rot180": lambda a: np.rot90(a, 2), "rot270": lambda a: np.rot90(a, 1), "transpose": np.transpose,
}


def _apply(name: str, image: Array) -> Array:
    return np.ascontiguousarray(TRANSFORMS[name][0](image))


def _back(name: str, y: Array, x: Array, shape: tuple[int, int]) -> Array:
    return TRANSFORMS[name][1](np.asarray(y, float), np.asarray(x, float), *shape)


def _pairing(ref: Array, other: Array, max_px: float = 0.5) -> tuple[Array, Array, Array, int]:
    """Nearest neighbour of each reference point among ``other``: (distance, index, matched,
    number of ``other`` points with no reference point within ``max_px``)."""
    if len(other) == 0 or len(ref) == 0:
        return np.full(len(ref), np.inf), np.zeros(len(ref), int), np.zeros(len(ref), bool), len(other)
    d, i = cKDTree(other).query(ref)
    d_back, _ = cKDTree(ref).query(other)
    return d, i, d < max_px, int((d_back >= max_px).sum())


def _uint8(image: Array) -> Array:
    """The image min-max scaled into 0..255 and rounded (an 8-bit export)."""
    lo, hi = float(image.min()), float(image.max())
    return np.round((image.astype(np.float64) - lo) / (hi - lo) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- puncta


def _assert_nearly_the_same_puncta(ref: pd.DataFrame, got: pd.DataFrame, got_yx: Array, *, paired: float,
                                   column: str, median_rel: float = 0.01) -> None:
    """Counts within 3 %, a fraction ``paired`` of the puncta paired both ways within 0.5 px
    (median distance < 0.02 px), the paired puncta's ``column`` within ``median_rel`` (median)."""
    d, i, ok, extra = _pairing(ref[["y", "x"]].to_numpy(), got_yx)
    n = len(ref)
    assert abs(len(got) - n) <= 0.03 * n, (len(got), n)
    assert ok.mean() >= paired and extra <= (1 - paired) * n, (int((~ok).sum()), extra, n)
    assert d[ok].max() < 0.5 and np.median(d[ok]) < 0.02
    rel = got[column].to_numpy()[i[ok]] / ref[column].to_numpy()[ok] - 1
    assert np.median(np.abs(rel)) < median_rel


@pytest.fixture(scope="module")
def synapse_fields() -> dict[int, tuple[Array, pd.DataFrame]]:
    """seed -> (uint16 image, its puncta)."""
    out = {}
    for seed in SYN_SEEDS:
        image = render_synapse_field(np.random.default_rng([16, seed]), shape=(256, 256)).image
        out[seed] = (image, detect_puncta(image, PX_SYN))
    return out


@pytest.mark.parametrize("seed", SYN_SEEDS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_puncta_under_flips_rotations_and_transposition_are_exactly_the_same(synapse_fields, transform: str,
                                                                              seed: int) -> None:
    """The noise boxes are centred on the plane and every filter is symmetric, so each of the
    eight symmetries of the pixel grid maps the detection onto itself: the same puncta at the
    same places (1e-6 px), the same significance and brightness.  (While the noise boxes were
    tiled from pixel (0, 0), flips and rotations changed counts by up to 0.8 % and left up to
    2.3 % of the puncta unpaired: a 256 px plane's 4 spare pixels moved to the other side.)"""
    image, ref = synapse_fields[seed]
    got = detect_puncta(_apply(transform, image), PX_SYN)
    assert len(got) == len(ref) > 150
    back = _back(transform, got["y"], got["x"], image.shape)
    d, i, ok, extra = _pairing(ref[["y", "x"]].to_numpy(), back, 1e-6)
    assert ok.all() and extra == 0, d.max()
    np.testing.assert_allclose(got["snr"].to_numpy()[i], ref["snr"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(got["intensity"].to_numpy()[i], ref["intensity"].to_numpy(), rtol=1e-9)


def test_noise_model_is_flip_and_rotation_invariant(synapse_fields) -> None:
    """The noise boxes are centred on the plane (noise._box_grid), so a flip or rotation maps
    them onto themselves, on planes of any size: the same fit, the same noise SD per pixel.
    (With boxes tiled from pixel (0, 0), a 256 px plane's 4 spare pixels were all on one side:
    a flip changed the fitted slope by up to 9.4 % and a pixel's noise SD by up to 3.0 %.)"""
    worst = 0.0
    for image, _ in synapse_fields.values():
        # the whole plane, an odd width and an odd height (fewer boxes of another size there)
        for plane in (image, image[:, :255], image[:251, :243]):
            plane = plane.astype(np.float64)
            sd, _ = noise_sd_map(plane, PX_SYN)
            for name in FLIPS_AND_ROTATIONS:
                sd_t, _ = noise_sd_map(_apply(name, plane), PX_SYN)
                worst = max(worst, float(np.abs(INVERSE[name](sd_t) / sd - 1).max()))
    assert worst < 1e-9, f"noise SD changes by up to {worst:.1%} under a flip or rotation"


def test_noise_model_is_flip_invariant_on_whole_boxes() -> None:
    # a 240 x 240 field (8 x 8 boxes of 3 um, nothing left over): the fit sees the same pixels
    image = render_synapse_field(np.random.default_rng([16, 0]), shape=(240, 240)).image
    sd, info = noise_sd_map(image.astype(np.float64), PX_SYN)
    for name in ("flip_ud", "flip_lr", "rot180", "transpose"):
        sd_t, info_t = noise_sd_map(_apply(name, image).astype(np.float64), PX_SYN)
        assert info_t["alpha"] == pytest.approx(info["alpha"], rel=1e-9)
        np.testing.assert_allclose(INVERSE[name](sd_t), sd, rtol=1e-9)


@pytest.mark.parametrize("dtype", ["uint16", "uint16_x16", "int32", "float32", "float64"])
def test_puncta_do_not_depend_on_the_dtype(synapse_fields, dtype: str) -> None:
    # the same pixel values in another container (and a 12-bit camera stretched to 16 bits):
    # the detector computes in float64, so the puncta are identical
    image, ref = synapse_fields[SYN_SEEDS[0]]
    converted = {"uint16": image, "uint16_x16": (image.astype(np.uint32) * 16).astype(np.uint16),
                 "int32": image.astype(np.int32), "float32": image.astype(np.float32),
                 "float64": image.astype(np.float64)}[dtype]
    got = detect_puncta(converted, PX_SYN)
    assert len(got) == len(ref)
    np.testing.assert_allclose(got[["y", "x"]].to_numpy(), ref[["y", "x"]].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(got["snr"], ref["snr"], rtol=1e-9)
    scale = 16.0 if dtype == "uint16_x16" else 1.0
    np.testing.assert_allclose(got["intensity"], scale * ref["intensity"], rtol=1e-9)


@pytest.mark.parametrize("seed", SYN_SEEDS)
def test_puncta_of_an_8bit_export(synapse_fields, seed: int) -> None:
    """uint8 (min-max scaled, rounded): the same puncta within a stated tolerance.

    Rounding to 256 levels moves every pixel by up to half a level, q/2, and adds a
    quantisation noise of SD q / sqrt(12).  Here the fields span ~310-380 ADU, so q is
    1.2-1.5 ADU against a pixel noise SD of ~10-13 ADU: q / sqrt(12) is 3-4 % of the noise.
    That barely changes the noise model, but it moves each punctum's fitted significance by
    a few per cent, so puncta within a few per cent of the threshold can come or go:
    counts within 3 %, >= 97 % paired, paired positions within 0.5 px, and the fitted noise line
    moves with the box variances, so the paired puncta's significance moves by a median 1.5 %
    at most.  (Measured: <= 5 of 266 unpaired, counts -3 and -1, positions within 0.42 px,
    median 0.006 px; significance median |change| 0.4 and 1.1 % (0.2 and 0.4 % while the noise
    boxes were tiled from pixel (0, 0)).)
    """
    image, ref = synapse_fields[seed]
    u8 = _uint8(image)
    q = (float(image.max()) - float(image.min())) / 255.0
    sd, _ = noise_sd_map(image.astype(np.float64), PX_SYN)
    assert q / np.sqrt(12) / np.median(sd) < 0.05  # the premise of the tolerance
    got = detect_puncta(u8, PX_SYN)
    # the significance is a ratio to the noise: unchanged by the scaling, up to the rounding
    _assert_nearly_the_same_puncta(ref, got, got[["y", "x"]].to_numpy(), paired=0.97, column="snr",
                                   median_rel=0.015)


GAIN_OFFSET = [(0.5, 0.0), (3.7, -250.0), (20.0, 1.0e4), (1.0e-3, 0.5), (1.0, -1000.0)]


@pytest.mark.parametrize(("gain", "offset"), GAIN_OFFSET)
def test_puncta_under_gain_and_offset(synapse_fields, gain: float, offset: float) -> None:
    # no per-image threshold: the noise model, the fit and the significance are all
    # equivariant in a * image + b (also when b makes the image negative)
    image, ref = synapse_fields[SYN_SEEDS[1]]
    got = detect_puncta(image * gain + offset, PX_SYN)
    assert len(got) == len(ref)
    np.testing.assert_allclose(got[["y", "x"]].to_numpy(), ref[["y", "x"]].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(got["snr"], ref["snr"], rtol=1e-6)
    np.testing.assert_allclose(got["intensity"], gain * ref["intensity"], rtol=1e-6)
    np.testing.assert_allclose(got["sigma_um"], ref["sigma_um"], rtol=1e-9)


# --------------------------------------------------------------------------- microglia


def _cells(image: Array) -> tuple[Array, pd.DataFrame]:
    labels = segment_microglia(image, PX_MG)
    return labels, measure_microglia(labels, image, PX_MG)


@pytest.fixture(scope="module")
def microglia_fields() -> dict[int, tuple[Array, Array, pd.DataFrame]]:
    """seed -> (uint16 Iba1 image, labels, cells); 2500 somata per mm^2 so that a 51 um
    field holds several cells (the phantom keeps them >= 20 um apart)."""
    out = {}
    for seed in MG_SEEDS:
        f = render_terminal_field(np.random.default_rng([16, seed]), shape=(256, 256), microglia_per_mm2=2500)
        image = f.image[1]
        out[seed] = (image, *_cells(image))
    return out


@pytest.fixture(scope="module")
def microglia_transformed(microglia_fields) -> dict[tuple[int, str], tuple[Array, pd.DataFrame]]:
    """(seed, transform) -> (labels of the transformed field, cells), each segmented once."""
    return {(seed, name): _cells(_apply(name, image))
            for seed, (image, _, _) in microglia_fields.items() for name in TRANSFORMS}


def _same_cells(ref: pd.DataFrame, got: pd.DataFrame, soma: Array) -> tuple[Array, pd.DataFrame]:
    """Pair cells by soma position (mapped back); every cell must have its partner within 0.5 px."""
    assert len(got) == len(ref) >= 4
    d, i, ok, extra = _pairing(ref[["soma_y", "soma_x"]].to_numpy(), soma)
    assert ok.all() and extra == 0 and len(set(i)) == len(i), d
    return d, got.iloc[i].reset_index(drop=True)


def _skeleton_tolerance_um(cells: pd.DataFrame) -> float:
    """Digital thinning follows a scan order, so under a flip each end of the skeleton (an
    endpoint, or the soma end of a process) may settle up to 2 px elsewhere."""
    return 2.0 * PX_MG * float(cells["endpoints"].sum())


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_microglia_under_flips_rotations_and_transposition(microglia_fields, microglia_transformed,
                                                           transform: str) -> None:
    """Same cells, somata within 0.5 px, areas within 2 % per field and 5 % per cell, the
    field's skeleton length within the thinning's tolerance (:func:`_skeleton_tolerance_um`:
    3.6-4.2 % of the length; measured <= 2.5 %).  Not exact, even for a transposition: the
    skeleton (and the soma/process split that uses it) comes from a digital thinning whose
    result depends on the scan direction.  Measured per cell: area within 3.7 %."""
    for seed, (image, labels, ref) in microglia_fields.items():
        got_labels, got = microglia_transformed[seed, transform]
        soma = _back(transform, got["soma_y"], got["soma_x"], image.shape)
        _, got = _same_cells(ref, got, soma)
        # (1.1 % measured under flip_lr once the line kernels were centred: thinning order)
        assert got["area_um2"].sum() == pytest.approx(ref["area_um2"].sum(), rel=0.02)
        assert (got["area_um2"] / ref["area_um2"] - 1).abs().max() < 0.05
        if transform == "transpose":  # (flips and rotations: see the xfail below)
            assert (INVERSE[transform](got_labels > 0) != (labels > 0)).sum() <= 0.02 * (labels > 0).sum()
        dl = abs(got["skeleton_length_um"].sum() - ref["skeleton_length_um"].sum())
        assert dl <= _skeleton_tolerance_um(ref), (dl, ref["skeleton_length_um"].sum())
        # (a process ending a pixel from the edge may touch it or not: see the foreground xfail)
        assert (got["touches_border"].to_numpy() != ref["touches_border"].to_numpy()).sum() <= 1


@pytest.mark.xfail(strict=True, reason=(
    "foreground not flip-invariant: under flips and rotations 5.0-14.0 % of the foreground pixels "
    "of the 4 phantom fields changed while microglia._line_kernels shifted every thin-process "
    "response by (+1, +1) px (even-sized kernels; fixed), and 2.1-5.9 % while the broad background's "
    "block grid was anchored at pixel (0, 0) (centred since: 1.2-4.8 %, transposition 0.3-0.5 %); "
    "the rest is skeletonize's scan order (Zhang-Suen thins the south-east side first; the "
    "soma/process split uses the skeleton): the union of the skeletons of the four flips makes flips "
    "exact (0 pixels) but costs 6 more skeletonisations (+0.55 s of 1.65 s at 2048^2) and moves the "
    "transposition to 0.7-2.2 %, so it is not used; the union over all eight flips, rotations and "
    "transpositions makes every transform exact (measured on these fields) but nearly doubles the "
    "segmentation time; centre lines taken as intensity ridges instead (exact too) changed the morphology "
    "against the phantoms' truth (branch points Spearman 0.93 -> 0.70-0.84 at default SNR), so neither is used"))
def test_microglia_foreground_under_flips_and_rotations(microglia_fields, microglia_transformed) -> None:
    worst = max(float((INVERSE[name](microglia_transformed[seed, name][0] > 0) != (labels > 0)).sum()
                      / (labels > 0).sum())
                for seed, (_, labels, _) in microglia_fields.items() for name in FLIPS_AND_ROTATIONS)
    # tolerance: what a transposition (which keeps the line kernels' offset) changes, x 2.5
    assert worst <= 0.02, f"up to {worst:.1%} of the foreground pixels change"


def test_microglia_branch_points_under_flips_and_rotations(microglia_fields, microglia_transformed) -> None:
    """Branch points are not exactly invariant under flips, rotations or transposition: the tips,
    from which they are counted (endpoints - primary processes since session 14), change with the
    thinning's scan direction (endpoints by up to 5.7 %; pruning length 0.6 um, 3 px).  Over the 4
    phantom fields (17-33 branch points each) x 6 transforms the field's total changed by up to
    10.5 % on one machine (seed 3: 19 -> 21; this was a strict xfail of a 10 % bound) and by less
    than 10 % on another (AMD EPYC with AVX2, session 27: the phantoms' floating point differs in
    the last bits), so the test bounds the known gap rather than the wish: a two-branch-point
    change in a small field is within it; more fails.  (As junction clusters of the skeleton the
    total changed by up to 19 %, up to 28 % before the background grid was centred.)"""
    worst = max(abs(microglia_transformed[seed, name][1]["branch_points"].sum() / ref["branch_points"].sum() - 1)
                for seed, (_, _, ref) in microglia_fields.items() for name in TRANSFORMS)
    assert worst <= 0.15, f"field branch points change by up to {worst:.0%}"


@pytest.mark.parametrize("dtype", ["uint16_x16", "float32", "float64"])
def test_microglia_do_not_depend_on_the_dtype(microglia_fields, dtype: str) -> None:
    image, labels, ref = microglia_fields[MG_SEEDS[0]]
    converted = {"uint16_x16": (image.astype(np.uint32) * 16).astype(np.uint16),
                 "float32": image.astype(np.float32), "float64": image.astype(np.float64)}[dtype]
    got_labels, got = _cells(converted)
    np.testing.assert_array_equal(got_labels, labels)
    cols = ["area_um2", "soma_y", "soma_x", "skeleton_length_um", "branch_points", "endpoints", "sholl_auc"]
    pd.testing.assert_frame_equal(got[cols], ref[cols])


@pytest.mark.parametrize("seed", MG_SEEDS)
def test_microglia_of_an_8bit_export(microglia_fields, seed: int) -> None:
    """uint8 (min-max scaled, rounded): the same cells.  The Iba1 fields span ~290 ADU, so a
    level is ~1.1 ADU against a pixel noise SD of several ADU; pixels at the edge of the
    foreground (within half a level of the threshold) and dim process pieces whose line response
    sits at its threshold can change side: the same cells, somata within 0.5 px, the field's area
    within 1 % and skeleton length within the thinning's tolerance.  (Measured: 15-243 of
    11,000-13,600 foreground pixels change (<= 2.2 %; seed 3: pieces of 50-58 px), area
    <= 0.45 %; 21-171 (<= 1.5 %) with the background grid anchored at pixel (0, 0).)"""
    image, labels, ref = microglia_fields[seed]
    got_labels, got = _cells(_uint8(image))
    _, got = _same_cells(ref, got, got[["soma_y", "soma_x"]].to_numpy())
    assert ((got_labels > 0) != (labels > 0)).sum() <= 0.03 * (labels > 0).sum()
    assert got["area_um2"].sum() == pytest.approx(ref["area_um2"].sum(), rel=0.01)
    dl = abs(got["skeleton_length_um"].sum() - ref["skeleton_length_um"].sum())
    assert dl <= _skeleton_tolerance_um(ref)


@pytest.mark.parametrize(("gain", "offset"), GAIN_OFFSET[1:] + [(0.01, 5.0)])
def test_microglia_under_gain_and_offset(microglia_fields, gain: float, offset: float) -> None:
    """The same cells; the segmentation works in float32, so values that a * image + b puts
    within float32 rounding of the threshold may change side: <= 0.1 % of the foreground
    (measured: 0-3 pixels of ~12,000), somata within 0.05 px, areas within 0.1 %."""
    for image, labels, ref in list(microglia_fields.values())[:2]:
        got_labels, got = _cells(image * gain + offset)
        d, got = _same_cells(ref, got, got[["soma_y", "soma_x"]].to_numpy())
        assert d.max() < 0.05
        assert (got_labels != labels).sum() <= 0.001 * (labels > 0).sum()
        np.testing.assert_allclose(got["area_um2"], ref["area_um2"], rtol=1e-3)
        np.testing.assert_array_equal(got["endpoints"], ref["endpoints"])
