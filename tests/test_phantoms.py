"""Synthetic fields: the images must agree with the ground truth they come with."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from analysis.sim import phantoms as P
from analysis.sim.spines import simulate_spine_sessions

SYN_PX = 0.1
TERM_PX = 0.2
TERM_SHAPE = (640, 640)  # a little larger than the study's 512 x 512: more interior cells


# ----------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------
def _syn(seed: int, **kw) -> P.SynapseField:
    return P.render_synapse_field(np.random.default_rng(seed), **kw)


def _term(seed: int, **kw) -> P.TerminalField:
    kw.setdefault("shape", TERM_SHAPE)
    return P.render_terminal_field(np.random.default_rng(seed), **kw)


@pytest.fixture(scope="module")
def syn_fields() -> dict[str, list[P.SynapseField]]:
    return {lvl: [_syn(100 + i, snr=v) for i in range(4)] for lvl, v in P.SNR_LEVELS.items()}


@pytest.fixture(scope="module")
def term_fields() -> list[P.TerminalField]:
    return [_term(200 + i) for i in range(6)]


@pytest.fixture(scope="module")
def term_cells(term_fields: list[P.TerminalField]) -> pd.DataFrame:
    return pd.concat([f.cells.assign(field=i) for i, f in enumerate(term_fields)], ignore_index=True)


def _measured_snr(
    puncta: pd.DataFrame, img: np.ndarray, mask: np.ndarray, px: float
) -> tuple[float, float, float]:
    """SNR measured on the image alone, given the true puncta positions.

    Noise: SD of horizontal neighbour differences / sqrt(2) over analysed pixels at least
    0.6 um from any punctum (the smooth background cancels in the differences).  Peak:
    image at the punctum's pixel minus the mean of puncta-free pixels in a 4 um window.
    Returns (snr, noise SD in ADU, mean peak in ADU).
    """
    img = img.astype(float)
    yy, xx = np.rint(puncta["y"]).astype(int), np.rint(puncta["x"]).astype(int)
    near = np.zeros(img.shape, dtype=bool)
    near[yy, xx] = True
    near = ndi.binary_dilation(near, iterations=int(np.ceil(0.6 / px)))
    free = mask & ~near
    core = ndi.binary_erosion(free)
    diffs = (img[:, 1:] - img[:, :-1])[core[:, 1:] & core[:, :-1]]
    noise = diffs.std() / np.sqrt(2)
    win = 2 * int(round(2.0 / px)) + 1
    local = ndi.uniform_filter(np.where(free, img, 0.0), win)
    local /= np.maximum(ndi.uniform_filter(free * 1.0, win), 1e-9)
    peak = (img[yy, xx] - local[yy, xx]).mean()
    return peak / noise, noise, peak


def _skeleton_length_px(mask: np.ndarray) -> float:
    """Length of the skeleton of a mask: orthogonal steps count 1, diagonal steps sqrt(2)."""
    sk = skeletonize(mask)
    ortho = (sk[:, 1:] & sk[:, :-1]).sum() + (sk[1:] & sk[:-1]).sum()
    d1 = sk[:-1, :-1] & sk[1:, 1:] & ~sk[:-1, 1:] & ~sk[1:, :-1]
    d2 = sk[:-1, 1:] & sk[1:, :-1] & ~sk[:-1, :-1] & ~sk[1:, 1:]
    return float(ortho + np.sqrt(2) * (d1.sum() + d2.sum()))


# ----------------------------------------------------------------------------------------
# API and determinism
# ----------------------------------------------------------------------------------------
def test_snr_levels() -> None:
    assert P.SNR_LEVELS == {"high": 15.0, "default": 8.0, "low": 4.5, "hard": 3.0}


def test_synapse_field_types_and_columns() -> None:
    f = _syn(1, shape=(200, 240))
    assert f.image.shape == (200, 240) and f.image.dtype == np.uint16
    assert f.analysed_mask.shape == (200, 240) and f.analysed_mask.dtype == bool
    assert list(f.puncta.columns) == ["y", "x", "amplitude", "sigma_um", "engulfed", "cell"]
    assert not f.puncta["engulfed"].any() and (f.puncta["cell"] == 0).all()
    assert f.analysed_area_um2 == pytest.approx(f.analysed_mask.sum() * SYN_PX**2)
    with pytest.raises(AttributeError):
        f.snr = 1.0  # frozen


def test_synapse_field_is_deterministic() -> None:
    a, b, c = _syn(7), _syn(7), _syn(8)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.analysed_mask, b.analysed_mask)
    pd.testing.assert_frame_equal(a.puncta, b.puncta)
    assert a.snr == b.snr and a.background_noise_sd == b.background_noise_sd
    assert not np.array_equal(a.image, c.image)
    assert len(a.puncta) != len(c.puncta) or not np.allclose(a.puncta["y"], c.puncta["y"])


def test_terminal_field_is_deterministic() -> None:
    a, b, c = (P.render_terminal_field(np.random.default_rng(s), shape=(256, 256)) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    pd.testing.assert_frame_equal(a.cells, b.cells)
    pd.testing.assert_frame_equal(a.puncta, b.puncta)
    assert not np.array_equal(a.image, c.image)


def _vector_code_targets() -> list[str]:
    """numpy's dispatched vector-code targets (AVX2, AVX-512, ...) that run on this CPU."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # numpy < 2
        from numpy.core import _multiarray_umath as umath  # type: ignore[no-redef]
    return [t for t in umath.__cpu_dispatch__ if umath.__cpu_features__.get(t)]


#: renders the fields of the test below in a fresh interpreter; it first checks that numpy's
#: vector code really is switched off there, so the comparison cannot pass by running the
#: same code twice
_RENDER_WITHOUT_VECTOR_CODE = """
import os
import sys
import numpy as np
try:
    from numpy._core import _multiarray_umath as umath
except ImportError:
    from numpy.core import _multiarray_umath as umath
targets = os.environ["NPY_DISABLE_CPU_FEATURES"].split()
assert not any(umath.__cpu_features__[t] for t in targets), "vector code still on"
from analysis.sim import phantoms as P
syn = np.stack([P.render_synapse_field(np.random.default_rng(s)).image for s in range(8)])
term = P.render_terminal_field(np.random.default_rng(12))
from analysis.sim.spines import simulate_spine_sessions
spines = np.stack([s.image for seed in range(4) for s in simulate_spine_sessions(seed, preset="test")])
np.savez(sys.argv[1], syn=syn, term=term.image, labels=term.labels, cells=term.cells.to_numpy(float),
         spines=spines)
"""


def test_same_seed_gives_the_same_fields_without_the_cpus_vector_code(tmp_path) -> None:
    """A study simulated on another CPU is the same study (the same images, to the bit).

    numpy evaluates ``sin``, ``cos``, ``hypot`` and sums with vector code chosen for the CPU,
    so the simulator's geometry differs between machines by a few units in the last place.
    Before the comparisons of whole-step lengths were made tolerant of that, 2 of these 8
    synapse fields (seeds 0 and 4) and the terminal field of seed 12 came out different with
    numpy's dispatched vector code switched off: the same seed gave another study on a CPU
    without AVX-512.  The two-photon spine sessions were already the same; they are compared
    too, so that the whole study stays so.
    """
    targets = _vector_code_targets()
    if not targets:
        pytest.skip("numpy runs no dispatched vector code on this CPU: there is nothing to switch off")
    out = tmp_path / "fields.npz"
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(targets)}
    res = subprocess.run([sys.executable, "-c", _RENDER_WITHOUT_VECTOR_CODE, str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    other = np.load(out)
    for s in range(8):
        np.testing.assert_array_equal(_syn(s).image, other["syn"][s], err_msg=f"synapse field, seed {s}")
    term = P.render_terminal_field(np.random.default_rng(12))
    np.testing.assert_array_equal(term.image, other["term"])
    np.testing.assert_array_equal(term.labels, other["labels"])
    np.testing.assert_allclose(term.cells.to_numpy(float), other["cells"], rtol=1e-12, atol=1e-9)
    spines = [s.image for seed in range(4) for s in simulate_spine_sessions(seed, preset="test")]
    np.testing.assert_array_equal(np.stack(spines), other["spines"])  # (these were the same before, too)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"snr": 0.0},
        {"pixel_size_um": -0.1},
        {"density_per_100um2": -1.0},
        {"shape": (8, 8)},
        {"process_length_scale": 0.0},
        {"cd68_area_fraction": 0.8},
        {"engulfed_per_cell": float("nan")},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    syn_ok = set(kwargs) <= {"snr", "pixel_size_um", "density_per_100um2", "shape"}
    if syn_ok:
        with pytest.raises(ValueError):
            P.render_synapse_field(np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError):
        P.render_terminal_field(np.random.default_rng(0), **kwargs)


# ----------------------------------------------------------------------------------------
# synapse channel
# ----------------------------------------------------------------------------------------
def test_puncta_lie_in_the_field_and_in_the_analysed_area(syn_fields, term_fields) -> None:
    fields = [f for fs in syn_fields.values() for f in fs] + list(term_fields)
    for f in fields:
        p = f.puncta[~f.puncta["engulfed"]]
        h, w = f.analysed_mask.shape
        assert p["y"].between(-0.5, h - 0.5, inclusive="left").all()
        assert p["x"].between(-0.5, w - 0.5, inclusive="left").all()
        assert f.analysed_mask[np.rint(p["y"]).astype(int), np.rint(p["x"]).astype(int)].all()


def test_puncta_count_follows_density() -> None:
    for density in (20.0, 40.0):
        fields = [_syn(300 + i, density_per_100um2=density) for i in range(10)]
        observed = sum(len(f.puncta) for f in fields)
        expected = sum(density / 100 * f.analysed_area_um2 for f in fields)
        assert abs(observed - expected) < 3.5 * np.sqrt(expected), (density, observed, expected)


def test_puncta_spacing_size_and_brightness(syn_fields) -> None:
    p = pd.concat([f.puncta for f in syn_fields["default"]])
    nn_fraction = []
    for f in syn_fields["default"]:
        xy = f.puncta[["y", "x"]].to_numpy() * SYN_PX
        d, _ = cKDTree(xy).query(xy, k=2)
        assert d[:, 1].min() >= 0.25 - 1e-9  # minimum centre distance
        nn_fraction.append(np.mean((d[:, 1] >= 0.3) & (d[:, 1] <= 0.5)))
    assert np.mean(nn_fraction) > 0.15  # many touching neighbours
    assert p["sigma_um"].between(np.hypot(0.06, 0.1) - 1e-9, np.hypot(0.12, 0.1) + 1e-9).all()
    cv = p["amplitude"].std() / p["amplitude"].mean()
    assert 0.3 < cv < 0.55


def test_voids_are_dark_and_excluded() -> None:
    fields = [_syn(400 + i) for i in range(12)]
    void_fraction = np.mean([1 - f.analysed_mask.mean() for f in fields])
    assert 0.02 < void_fraction < 0.3
    ratios = []
    for f in fields:
        inner = ndi.binary_erosion(~f.analysed_mask, iterations=5)
        if inner.sum() > 200:
            img = f.image.astype(float) - P.CAMERA_OFFSET_ADU
            ratios.append(img[inner].mean() / img[f.analysed_mask].mean())
    assert ratios and max(ratios) < 0.45


@pytest.mark.parametrize("level", list(P.SNR_LEVELS))
def test_snr_is_realised_and_measurable(syn_fields, level: str) -> None:
    target = P.SNR_LEVELS[level]
    fields = syn_fields[level]
    for f in fields:
        assert f.snr == pytest.approx(target, rel=0.15)
    measured = [_measured_snr(f.puncta, f.image, f.analysed_mask, SYN_PX) for f in fields]
    # the definition holds on the image: peak over background noise, noise as reported
    assert np.mean([m[0] for m in measured]) == pytest.approx(np.mean([f.snr for f in fields]), rel=0.15)
    for f, m in zip(fields, measured):
        assert m[1] == pytest.approx(f.background_noise_sd, rel=0.1)


def test_puncta_are_drawn_at_their_true_centres(syn_fields) -> None:
    """Background-subtracted centroids of isolated bright puncta sit on the true centres."""
    errors = []
    for f in syn_fields["high"]:
        img = f.image.astype(float)
        bg = ndi.median_filter(img, size=25)
        xy = f.puncta[["y", "x"]].to_numpy()
        d, _ = cKDTree(xy).query(xy, k=2)
        h, w = img.shape
        for y, x in xy[(d[:, 1] > 8) & (f.puncta["amplitude"].to_numpy() > f.puncta["amplitude"].median())]:
            iy, ix = int(round(y)), int(round(x))
            if not (3 <= iy < h - 3 and 3 <= ix < w - 3):
                continue
            win = (slice(iy - 3, iy + 4), slice(ix - 3, ix + 4))
            patch = np.clip(img[win] - bg[win], 0, None)
            gy, gx = np.mgrid[-3:4, -3:4]
            total = patch.sum()
            errors.append(((patch * gy).sum() / total + iy - y, (patch * gx).sum() / total + ix - x))
    errors = np.array(errors)
    assert len(errors) > 100
    assert np.all(np.abs(errors.mean(axis=0)) < 0.05)  # no systematic shift (pixels)
    assert np.median(np.hypot(errors[:, 0], errors[:, 1])) < 0.3


# ----------------------------------------------------------------------------------------
# terminal field: labels and morphology truth
# ----------------------------------------------------------------------------------------
def test_terminal_types_and_columns(term_fields) -> None:
    f = term_fields[0]
    assert f.image.shape == (3, *TERM_SHAPE) and f.image.dtype == np.uint16
    assert f.labels.shape == TERM_SHAPE and f.labels.dtype == np.uint16
    assert list(f.cells.columns) == [
        "cell", "soma_y", "soma_x", "soma_radius_um", "skeleton_length_um", "branch_points", "endpoints",
        "n_primary", "max_radius_um", "area_um2", "cd68_area_um2", "engulfed_count", "touches_border",
    ]  # fmt: skip
    assert f.cells["touches_border"].dtype == bool


def test_labels_match_the_cell_table(term_fields) -> None:
    for f in term_fields:
        n = len(f.cells)
        assert list(f.cells["cell"]) == list(range(1, n + 1))
        assert set(np.unique(f.labels)) == set(range(n + 1))
        sy, sx = np.rint(f.cells["soma_y"]).astype(int), np.rint(f.cells["soma_x"]).astype(int)
        np.testing.assert_array_equal(f.labels[sy, sx], f.cells["cell"])
        counts = np.bincount(f.labels.ravel(), minlength=n + 1)[1:]
        np.testing.assert_allclose(f.cells["area_um2"], counts * TERM_PX**2)
        edge = np.unique(np.r_[f.labels[0], f.labels[-1], f.labels[:, 0], f.labels[:, -1]])
        np.testing.assert_array_equal(f.cells["touches_border"], np.isin(f.cells["cell"], edge))
        # cells never touch each other, and a whole cell is one connected piece
        grown = ndi.grey_dilation(f.labels, size=3)
        assert not np.any((f.labels > 0) & (grown != f.labels) & (grown > 0))
        for row in f.cells[~f.cells["touches_border"]].itertuples():
            assert ndi.label(f.labels == row.cell, structure=np.ones((3, 3)))[1] == 1


def test_cells_are_bright_in_iba1_and_spaced(term_fields) -> None:
    for f in term_fields:
        iba1 = f.image[1].astype(float)
        far = ndi.binary_erosion(f.labels == 0, iterations=15)
        noise = np.std((iba1[:, 1:] - iba1[:, :-1])[far[:, 1:] & far[:, :-1]]) / np.sqrt(2)
        assert np.median(iba1[f.labels > 0]) - np.median(iba1[far]) > 8 * noise
        somata = f.cells[["soma_y", "soma_x"]].to_numpy() * TERM_PX
        if len(somata) > 1:
            d, _ = cKDTree(somata).query(somata, k=2)
            assert d[:, 1].min() >= 20.0 - 1e-9


def test_cell_count_follows_density(term_cells, term_fields) -> None:
    area_mm2 = np.prod(TERM_SHAPE) * TERM_PX**2 * 1e-6
    expected = 400.0 * area_mm2 * len(term_fields)
    assert abs(len(term_cells) - expected) < 3.5 * np.sqrt(expected)


def test_skeleton_of_the_label_matches_the_true_length(term_fields) -> None:
    ratios = []
    for f in term_fields:
        for row in f.cells[~f.cells["touches_border"]].itertuples():
            length = _skeleton_length_px(f.labels == row.cell) * TERM_PX
            ratios.append(length / row.skeleton_length_um)
    assert len(ratios) >= 8
    assert np.all((np.array(ratios) > 0.75) & (np.array(ratios) < 1.25)), ratios
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.1)


def test_baseline_morphology(term_cells) -> None:
    interior = term_cells[~term_cells["touches_border"]]
    assert 150 <= interior["skeleton_length_um"].mean() <= 300
    assert 10 <= interior["branch_points"].mean() <= 25
    assert 18 <= interior["max_radius_um"].mean() <= 32
    assert term_cells["n_primary"].between(4, 6).all()
    assert term_cells["soma_radius_um"].between(3.5, 5.5).all()
    # whole binary trees: every bifurcation adds one tip to the primaries
    np.testing.assert_array_equal(interior["endpoints"], interior["branch_points"] + interior["n_primary"])
    # cut trees lose length, tips and branch points, never gain them
    assert (term_cells["endpoints"] <= term_cells["branch_points"] + term_cells["n_primary"]).all()


def test_activation_parameters_act_in_the_right_direction(term_cells) -> None:
    seeds = range(200, 206)  # the seeds of term_fields: same somata, paired comparison
    short = pd.concat([_term(s, process_length_scale=0.7).cells for s in seeds])
    sparse = pd.concat([_term(s, branching_scale=0.6).cells for s in seeds])
    base_in = term_cells[~term_cells["touches_border"]]
    short_in = short[~short["touches_border"]]
    ratio = short_in["skeleton_length_um"].mean() / base_in["skeleton_length_um"].mean()
    assert 0.6 < ratio < 0.85  # ~30 % shorter (the soma part does not shrink)
    assert short_in["max_radius_um"].mean() < 0.85 * base_in["max_radius_um"].mean()
    assert sparse["branch_points"].mean() < 0.8 * term_cells["branch_points"].mean()
    big = P.render_terminal_field(np.random.default_rng(200), shape=TERM_SHAPE, soma_scale=1.4).cells
    base_radius = term_cells.loc[term_cells["field"] == 0, "soma_radius_um"].to_numpy()
    np.testing.assert_allclose(big["soma_radius_um"], 1.4 * base_radius)


# ----------------------------------------------------------------------------------------
# terminal field: lysosomes and engulfment
# ----------------------------------------------------------------------------------------
def test_cd68_area_follows_the_fraction(term_cells) -> None:
    ratio = term_cells["cd68_area_um2"] / (0.04 * term_cells["area_um2"])
    assert ratio.mean() == pytest.approx(1.0, abs=0.15)
    assert (term_cells["cd68_area_um2"] <= term_cells["area_um2"]).all()
    more = _term(200, cd68_area_fraction=0.1).cells
    assert more["cd68_area_um2"].sum() > 1.8 * term_cells.loc[term_cells["field"] == 0, "cd68_area_um2"].sum()
    none = _term(200, cd68_area_fraction=0.0)
    assert (none.cells["cd68_area_um2"] == 0).all() and not none.puncta["engulfed"].any()


def test_engulfed_puncta_lie_in_their_cell_and_in_cd68(term_fields, term_cells) -> None:
    hits = []
    for f in term_fields:
        eng = f.puncta[f.puncta["engulfed"]]
        assert (eng["cell"] > 0).all() and (f.puncta.loc[~f.puncta["engulfed"], "cell"] == 0).all()
        np.testing.assert_array_equal(
            f.cells["engulfed_count"], eng["cell"].value_counts().reindex(f.cells["cell"], fill_value=0)
        )
        iy, ix = np.rint(eng["y"]).astype(int), np.rint(eng["x"]).astype(int)
        np.testing.assert_array_equal(f.labels[iy, ix], eng["cell"])
        cd68 = ndi.uniform_filter(f.image[2].astype(float), 3)
        background = cd68[f.labels == 0]
        threshold = np.median(background) + 4 * background.std()
        hits.extend(cd68[iy, ix] > threshold)
    assert len(hits) > 10
    assert np.mean(hits) > 0.9
    assert term_cells["engulfed_count"].mean() == pytest.approx(2.0, abs=0.7)


def test_ordinary_puncta_avoid_microglial_somata(term_fields) -> None:
    for f in term_fields:
        p = f.puncta[~f.puncta["engulfed"]]
        d = cKDTree(f.cells[["soma_y", "soma_x"]].to_numpy()).query(p[["y", "x"]].to_numpy())[0] * TERM_PX
        assert d.min() > 0.6 * f.cells["soma_radius_um"].min()


def test_terminal_psd95_snr_and_sampling(term_fields) -> None:
    """Pixels at true centres hold the point-sampled Gaussian peaks (0.2 um pixels)."""
    for f in term_fields[:3]:
        assert f.snr == pytest.approx(8.0, rel=0.1)
        p = f.puncta[~f.puncta["engulfed"]]
        snr, noise, peak = _measured_snr(p, f.image[0], f.analysed_mask, TERM_PX)
        assert noise == pytest.approx(f.background_noise_sd, rel=0.1)
        dy, dx = p["y"] - np.rint(p["y"]), p["x"] - np.rint(p["x"])
        sampled = p["amplitude"] * np.exp(-0.5 * (dy**2 + dx**2) / (p["sigma_um"] / TERM_PX) ** 2)
        assert peak / P.CAMERA_GAIN == pytest.approx(sampled.mean(), rel=0.12)
