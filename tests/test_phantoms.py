"""The phantom renderer: its truth matches what it draws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from analysis.phantoms import (
    BACKGROUND_E, GAIN_ADU_PER_E, OFFSET_ADU, SNR_LEVELS, render_synapse_field, render_terminal_field,
)


@pytest.fixture(scope="module")
def terminal_fields():
    return [render_terminal_field(np.random.default_rng(s), shape=(640, 640)) for s in range(4)]


def test_deterministic() -> None:
    a = render_synapse_field(np.random.default_rng(5))
    b = render_synapse_field(np.random.default_rng(5))
    c = render_synapse_field(np.random.default_rng(6))
    np.testing.assert_array_equal(a.image, b.image)
    pd.testing.assert_frame_equal(a.puncta, b.puncta)
    assert not np.array_equal(a.image, c.image)
    t1 = render_terminal_field(np.random.default_rng(1), shape=(256, 256))
    t2 = render_terminal_field(np.random.default_rng(1), shape=(256, 256))
    np.testing.assert_array_equal(t1.image, t2.image)
    np.testing.assert_array_equal(t1.labels, t2.labels)


def test_puncta_count_and_placement() -> None:
    ratios = []
    for s in range(6):
        f = render_synapse_field(np.random.default_rng(s), density_per_100um2=40.0)
        p = f.puncta
        iy, ix = np.rint(p.y).astype(int), np.rint(p.x).astype(int)
        assert f.analysed_mask[iy, ix].all()
        assert (p.y >= -0.5).all() and (p.y < 255.5).all()
        ratios.append(len(p) / (0.4 * f.analysed_area_um2))
        d = np.hypot(*(p[["y", "x"]].to_numpy()[:, None] - p[["y", "x"]].to_numpy()[None]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        assert d.min() * 0.1 >= 0.25 - 1e-9  # min separation 0.25 um
        assert ((d.min(axis=1) * 0.1) < 0.5).mean() > 0.1  # many touching neighbours
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize("level", list(SNR_LEVELS))
def test_snr_is_what_it_says(level: str) -> None:
    snr = SNR_LEVELS[level]
    f = render_synapse_field(np.random.default_rng(11), snr=snr)
    assert f.snr == pytest.approx(snr, rel=1e-6)
    # measured independently: noise from pixels far from puncta in the neuropil, peaks at true centres
    img = f.image.astype(float)
    far = ndi.distance_transform_edt(~_near(f.puncta, img.shape, 8)) > 0
    far &= ndi.binary_erosion(f.analysed_mask, iterations=10)
    local_bg = ndi.median_filter(img, size=15)
    noise_adu = np.std((img - ndi.uniform_filter(img, 9))[far]) * np.sqrt(81 / 80)
    iy, ix = np.rint(f.puncta.y).astype(int), np.rint(f.puncta.x).astype(int)
    peak_adu = np.median(img[iy, ix] - local_bg[iy, ix])
    measured = peak_adu / noise_adu
    assert measured == pytest.approx(snr, rel=0.35)  # illumination, haze and texture blur the definition


def _near(puncta: pd.DataFrame, shape, r: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    iy = np.clip(np.rint(puncta.y).astype(int), 0, shape[0] - 1)
    ix = np.clip(np.rint(puncta.x).astype(int), 0, shape[1] - 1)
    m[iy, ix] = True
    return ndi.binary_dilation(m, iterations=r)


def test_background_level_and_camera() -> None:
    f = render_synapse_field(np.random.default_rng(2), snr=8.0)
    img = f.image.astype(float)
    far = ~_near(f.puncta, img.shape, 6) & f.analysed_mask
    # median background ~ offset + gain * background electrons (within illumination/texture)
    assert np.median(img[far]) == pytest.approx(OFFSET_ADU + GAIN_ADU_PER_E * BACKGROUND_E * 1.1, rel=0.2)


def test_labels_and_cells_agree(terminal_fields) -> None:
    for f in terminal_fields:
        c = f.cells
        assert set(np.unique(f.labels)) - {0} == set(c.cell) == set(range(1, len(c) + 1))
        for r in c.itertuples():
            own = f.labels == r.cell
            assert own[int(round(r.soma_y)), int(round(r.soma_x))]
            assert r.area_um2 == pytest.approx(own.sum() * 0.04)
            edge = own[0].any() or own[-1].any() or own[:, 0].any() or own[:, -1].any()
            assert r.touches_border == edge
        eng = f.puncta[f.puncta.engulfed]
        assert len(eng) == c.engulfed_count.sum()
        iy, ix = np.rint(eng.y).astype(int), np.rint(eng.x).astype(int)
        assert (f.labels[iy, ix] == eng.cell.to_numpy()).all()
        assert (f.cells.cd68_area_um2 > 0).all()


def test_skeleton_truth_matches_drawing(terminal_fields) -> None:
    rel = []
    for f in terminal_fields:
        for r in f.cells[~f.cells.touches_border].itertuples():
            sk = skeletonize(f.labels == r.cell)
            # pixel-step length: orthogonal steps 1, diagonal sqrt(2); each pair counted twice
            k_orth = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
            k_diag = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]])
            n_o = ndi.convolve(sk.astype(int), k_orth, mode="constant")[sk].sum() / 2
            n_d = ndi.convolve(sk.astype(int), k_diag, mode="constant")[sk].sum() / 2
            length = (n_o + np.sqrt(2) * n_d) * 0.2
            rel.append(length / r.skeleton_length_um - 1)
    assert len(rel) >= 8
    assert abs(np.median(rel)) < 0.25


def test_activation_changes_morphology() -> None:
    def cells(**kw):
        return pd.concat(
            [render_terminal_field(np.random.default_rng(s), shape=(640, 640), **kw).cells for s in range(6)]
        )

    base = cells()
    active = cells(process_length_scale=0.7, branching_scale=0.65, engulfed_per_cell=6.0, cd68_area_fraction=0.1)
    assert active.skeleton_length_um.mean() < 0.8 * base.skeleton_length_um.mean()
    assert active.branch_points.mean() < 0.8 * base.branch_points.mean()
    assert active.engulfed_count.mean() > 2 * base.engulfed_count.mean()
    frac = lambda c: (c.cd68_area_um2 / c.area_um2).mean()  # noqa: E731
    assert frac(active) > 1.8 * frac(base)
    interior = base[~base.touches_border]
    assert 120 < interior.skeleton_length_um.mean() < 300 and 8 < interior.branch_points.mean() < 30
