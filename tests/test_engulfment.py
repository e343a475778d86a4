"""Engulfment: puncta inside CD68 inside each cell, on constructed images and on phantoms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.stats import pearsonr
from skimage.draw import disk

from analysis.measure.engulfment import engulfment_totals, measure_engulfment, segment_lysosomes

PX = 0.2
HWHM = np.sqrt(2 * np.log(2))  # half width at half maximum of a Gaussian, in sigmas


def gaussian_blobs(shape, blobs, background=20.0, seed=0):
    """Poisson-noise image (ADU, gain 2, offset 100) of Gaussian blobs (y, x, sigma_px, peak_e)."""
    grids = np.indices(shape)
    img = np.full(shape, background)
    for *centre, sig, amp in blobs:
        d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
        img = img + amp * np.exp(-d2 / (2 * sig**2))
    return np.random.default_rng(seed).poisson(img) * 2.0 + 100


def test_counts_on_a_constructed_field() -> None:
    labels = np.zeros((100, 200), int)
    labels[disk((50, 50), 30)] = 1
    labels[disk((50, 150), 30)] = 2
    lys = np.zeros(labels.shape, bool)
    lys[disk((45, 45), 6)] = True  # in cell 1
    lys[disk((50, 150), 5)] = True  # in cell 2
    lys[disk((5, 100), 3)] = True  # outside any cell
    puncta = pd.DataFrame({"y": [45.2, 47.0, 10.0, 50.4, 5.0, 80.0], "x": [45.1, 44.0, 50.0, 149.6, 100.0, 150.0]})
    out = measure_engulfment(labels, lys, puncta, PX).set_index("label")
    assert out.loc[1, "engulfed_puncta"] == 2  # two in its CD68, one in the cell but not in CD68
    assert out.loc[2, "engulfed_puncta"] == 1  # the punctum in CD68 outside cells does not count
    assert out.loc[1, "cd68_area_um2"] == pytest.approx(disk((45, 45), 6)[0].size * PX**2)
    assert out.loc[2, "cd68_area_fraction"] == pytest.approx(disk((0, 0), 5)[0].size / disk((0, 0), 30)[0].size)
    tot = engulfment_totals(out.reset_index())
    assert tot["engulfed_puncta_total"] == 3 and tot["engulfed_per_cell"] == 1.5
    assert tot["cd68_area_um2_total"] == pytest.approx(out["cd68_area_um2"].sum())
    # a label missing from the image (e.g. dropped) gets no row
    labels[labels == 2] = 3
    assert measure_engulfment(labels, lys, puncta, PX)["label"].tolist() == [1, 3]


def test_bad_input_is_reported() -> None:
    lab = np.zeros((10, 10), int)
    with pytest.raises(ValueError, match="shape"):
        measure_engulfment(lab, np.zeros((10, 11), bool), pd.DataFrame({"y": [], "x": []}), PX)
    with pytest.raises(ValueError, match=r"\['z'\]"):
        measure_engulfment(np.zeros((3, 10, 10), int), np.zeros((3, 10, 10), bool),
                           pd.DataFrame({"y": [1.0], "x": [1.0]}), PX)
    assert np.isnan(engulfment_totals(measure_engulfment(lab, lab > 0, pd.DataFrame({"y": [], "x": []}), PX))
                    ["engulfed_per_cell"])


def test_lysosome_mask_is_the_vesicle() -> None:
    # a vesicle of radius 0.7 um (sharp edge, blurred by the PSF) at a moderate SNR: its
    # blurred edge crosses half the plateau at the true edge, so the mask is the disk.
    # Measured 0.95-1.05 of the disk area (the lightly smoothed, single-pixel-peak cut: 0.84-1.16)
    for s in range(4):
        disks = [(50, 50, 3.5, 25.0)]
        img = blurred_disks((100, 100), disks, seed=s)
        mask = segment_lysosomes(img, PX)
        assert ndi.label(mask)[1] == 1
        assert mask.sum() == pytest.approx(disk_union(img.shape, disks).sum(), rel=0.1)


def test_gaussian_lysosome_is_about_its_half_maximum_disk() -> None:
    # a smooth Gaussian blob (sigma 0.5 um) has no sharp edge: its mask is somewhat wider than
    # the half-maximum disk (the 0.2 um smoothing widens it to sigma 0.54 um, and a slope pixel
    # is compared with the brightest value within the edge reach, 0.45 um, not with the
    # peak).  Measured 37 pixels against 27 (1.36x)
    sig = 2.5  # pixels (0.5 um)
    img = gaussian_blobs((200, 200), [(100, 100, sig, 200.0)])
    mask = segment_lysosomes(img, PX)
    assert ndi.label(mask)[1] == 1
    assert 1.0 <= mask.sum() / (np.pi * (HWHM * sig) ** 2) <= 1.5


def test_touching_lysosomes_each_keep_their_own_extent() -> None:
    # a bright and a 4x dimmer lysosome, 2 um apart: cut at half of the *bright* peak the
    # dim one would vanish; each extends to half of its own peak
    sig = 2.5
    img = gaussian_blobs((200, 200), [(100, 90, sig, 400.0), (100, 100, sig, 100.0)])
    mask = segment_lysosomes(img, PX)
    assert mask[100, 100] and mask[100, 90]
    assert mask.sum() == pytest.approx(2 * np.pi * (HWHM * sig) ** 2, rel=0.5)


def blurred_disks(shape, disks, background=10.0, psf_px=0.5, seed=0):
    """Poisson-noise image (ADU, gain 2, offset 100) of uniform disks (y, x, radius_px, level_e).

    Vesicles with a sharp edge, combined by maximum (a maximum projection: where two overlap
    the brighter shows) and blurred by a Gaussian PSF (SD ``psf_px``, 0.1 um).
    """
    grids = np.indices(shape).astype(float)
    img = np.zeros(shape)
    for y, x, r, level in disks:
        img = np.maximum(img, np.clip(r - np.hypot(grids[0] - y, grids[1] - x) + 0.5, 0, 1) * level)
    return np.random.default_rng(seed).poisson(background + ndi.gaussian_filter(img, psf_px)) * 2.0 + 100


def disk_union(shape, disks):
    grids = np.indices(shape)
    out = np.zeros(shape, bool)
    for y, x, r, _ in disks:
        out |= np.hypot(grids[0] - y, grids[1] - x) <= r
    return out


def test_points_inside_lysosomes_are_inside_the_mask() -> None:
    # 100 vesicles of radius 0.45-0.9 um at a moderate SNR (plateau ~7 background noise SDs);
    # points at least 0.15 um inside an edge must fall in the mask: the edge must not be
    # dented by pixel noise nor pulled in by a noisy peak estimate.  Measured: 0.992 of the
    # points inside, area 0.92 of the disks (cutting the lightly smoothed image at half of a
    # peak read at one pixel gave 0.956 and 0.87)
    inside, area = [], []
    for s in range(3):
        rng = np.random.default_rng(s)
        disks = [(y, x, rng.uniform(2.25, 4.5), 25 * rng.lognormal(0, 0.35))
                 for y in range(12, 200, 20) for x in range(12, 200, 20)]
        img = blurred_disks((210, 210), disks, seed=10 + s)
        mask = segment_lysosomes(img, PX)
        pts = []
        for y, x, r, _ in disks:
            for _ in range(3):
                rad, ang = (r - 0.75) * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
                pts.append((y + rad * np.sin(ang), x + rad * np.cos(ang)))
        pts = np.rint(np.array(pts)).astype(int)
        inside.append(mask[pts[:, 0], pts[:, 1]])
        area.append(mask.sum() / disk_union(img.shape, disks).sum())
    assert np.concatenate(inside).mean() >= 0.98
    assert 0.85 <= np.mean(area) <= 1.1


def test_dim_lysosome_overlapped_by_a_bright_one_keeps_its_extent() -> None:
    # maximum projection of a vesicle 3x brighter overlapping a dim one: the dim one is a
    # terrace with no peak of its own.  Cut at half of the bright peak it vanishes (measured
    # 0-0.33 of its own area kept); cut at half of its own level it is kept except for a
    # band of about two blur SDs along the bright one's edge (measured 0.69-0.76)
    for s in range(4):
        disks = [(40, 34, 4.0, 75.0), (40, 40, 4.0, 25.0)]
        img = blurred_disks((80, 80), disks, seed=s)
        mask = segment_lysosomes(img, PX)
        grids = np.indices(img.shape)
        dim_only = (np.hypot(grids[0] - 40, grids[1] - 40) <= 4) & ~(np.hypot(grids[0] - 40, grids[1] - 34) <= 4)
        assert mask[dim_only].mean() >= 0.6
        assert 0.75 <= mask.sum() / disk_union(img.shape, disks).sum() <= 1.1
        assert mask[40, 34] and mask[40, 42]  # the bright centre, the dim one's own side


def test_no_lysosomes_in_noise_and_texture() -> None:
    rng = np.random.default_rng(3)
    texture = ndi.gaussian_filter(rng.standard_normal((512, 512)), 10)
    background = 20 * (1 + 0.15 * texture / texture.std())
    img = rng.poisson(background) * 2.0 + 100 + rng.normal(0, 3, background.shape)
    assert segment_lysosomes(img, PX).sum() == 0


def test_three_dimensional_stack() -> None:
    # a vesicle (ball of radius 0.7 um, sharp edge) blurred by the PSF in a ZYX stack: the
    # mask is about the ball: measured 0.80 of its volume (the smoothing moves the half-height
    # surface of a curved edge inwards by about s**2 / R in 3-D; the older cut gave 0.87)
    r = 3.5
    grids = np.indices((21, 80, 80)).astype(float)
    ball = np.clip(r - np.sqrt((grids[0] - 10) ** 2 + (grids[1] - 40) ** 2 + (grids[2] - 40) ** 2) + 0.5, 0, 1)
    img = np.random.default_rng(0).poisson(10.0 + ndi.gaussian_filter(40.0 * ball, 0.5)) * 2.0 + 100
    mask = segment_lysosomes(img, PX, z_step_um=PX)
    assert ndi.label(mask)[1] == 1
    assert 0.75 <= mask.sum() / (ball >= 0.5).sum() <= 1.1
    labels = np.zeros(img.shape, int)
    labels[:, 20:60, 20:60] = 1
    puncta = pd.DataFrame({"z": [10.0, 2.0], "y": [40.3, 40.0], "x": [39.8, 40.0]})  # in CD68, below it
    out = measure_engulfment(labels, mask, puncta, PX)
    assert out["engulfed_puncta"].tolist() == [1]
    assert out["cd68_volume_um3"].iloc[0] == pytest.approx(mask.sum() * PX**3)
    assert "cd68_volume_um3_total" in engulfment_totals(out)


@pytest.fixture(scope="module")
def phantom_fields():
    phantoms = pytest.importorskip("analysis.sim.phantoms")
    # six fields per SNR level, each its own draw (about 75 cells; the two levels used to share
    # their four seeds, so the same 28 cells counted twice)
    return [
        phantoms.render_terminal_field(np.random.default_rng([13, i, s]), shape=(640, 640),
                                       snr=phantoms.SNR_LEVELS[level], engulfed_per_cell=3.0)
        for i, level in enumerate(("default", "hard")) for s in range(6)
    ]


def engulfment_vs_truth(fields, **params) -> pd.DataFrame:
    """Per true cell: engulfed puncta counted with the *true* cells and puncta positions."""
    rows = []
    for f in fields:
        lys = segment_lysosomes(f.image[2], PX, **params)
        counted = measure_engulfment(f.labels, lys, f.puncta, PX)
        hits = measure_engulfment(f.labels, lys, f.puncta[f.puncta["engulfed"]], PX)[["label", "engulfed_puncta"]]
        rows.append(counted.merge(hits.rename(columns={"engulfed_puncta": "true_hits"}), on="label")
                    .merge(f.cells.rename(columns={"cell": "label"}), on="label", suffixes=("", "_true")))
    return pd.concat(rows, ignore_index=True)


def test_engulfment_on_phantoms(phantom_fields) -> None:
    # true cells and true puncta positions isolate the CD68 mask and the counting logic
    p = engulfment_vs_truth(phantom_fields)
    assert len(p) >= 40
    recall = p["true_hits"].sum() / p["engulfed_count"].sum()
    false_per_cell = (p["engulfed_puncta"] - p["true_hits"]).mean()
    # lysosomes are disks blurred by the PSF, combined by maximum; each is cut at half of its
    # own level (the brightest value within the edge reach).  Over 12 draws of these 12 fields
    # (seeds [13 + 100 k, level, field], k = 0-11; benchmarks/RESULTS.md, session 54): recall
    # 0.978-1.000, false per cell 0.015-0.118, area ratio 0.961-0.973, r 0.967-0.997, CD68 area
    # r 0.944-0.980 (this draw, k = 0: 0.991, 0.053, 0.970, 0.979, 0.980).  The simulator before
    # session 54's rounding fix gave the same ranges in 11 of its 12 draws; one (k = 8) had 0.217
    # false per cell and r 0.891.  The false counts are ordinary puncta lying over a lysosome
    # of a process: in the image they are inside CD68 inside the cell, so any image-based
    # count takes them, and a few cells with two or three of them move r.
    # Cutting a dim lysosome merged with a bright one at half the bright peak, on the lightly
    # smoothed image, gave recall 0.92, area ratio 0.82, r 0.96 (CD68 area r 0.88)
    assert 0.97 <= recall <= 1.0
    assert false_per_cell <= 0.2
    assert 0.9 <= p["cd68_area_um2"].sum() / p["cd68_area_um2_true"].sum() <= 1.05
    assert pearsonr(p["engulfed_puncta"], p["engulfed_count"])[0] >= 0.95
    assert pearsonr(p["cd68_area_um2"], p["cd68_area_um2_true"])[0] >= 0.93


def test_hot_pixels_change_neither_cells_nor_lysosomes() -> None:
    """200 single-pixel spikes (+3000 ADU) in the Iba1 and CD68 channels of a 512 x 512 terminal
    field at 0.2 um: the same cells and lysosomes as without them.  Before the repair the cell
    area fell by a third (the foreground's half-maximum cut took its local maximum from a
    spike), one cell was lost and the lysosome area doubled (each spike a lysosome of ~5 px)."""
    from analysis.measure.microglia import measure_microglia, segment_microglia
    from analysis.sim.phantoms import render_terminal_field

    f = render_terminal_field(np.random.default_rng([16, 512]), shape=(512, 512))
    mg, ly = f.image[1], f.image[2]
    rng = np.random.default_rng(2)
    yy, xx = rng.integers(3, 509, 200), rng.integers(3, 509, 200)

    def spiked(a: np.ndarray) -> np.ndarray:
        out = a.astype(np.int32)
        out[yy, xx] += 3000
        return np.clip(out, 0, 65535).astype(np.uint16)

    labels, hot_labels = segment_microglia(mg, 0.2), segment_microglia(spiked(mg), 0.2)
    assert hot_labels.max() == labels.max() >= 4
    area, hot_area = (measure_microglia(lab, mg, 0.2)["area_um2"].sum() for lab in (labels, hot_labels))
    assert hot_area == pytest.approx(area, rel=0.01)
    lys, hot_lys = segment_lysosomes(ly, 0.2), segment_lysosomes(spiked(ly), 0.2)
    assert lys.sum() > 500 and abs(int(hot_lys.sum()) - int(lys.sum())) <= 0.02 * lys.sum()
