"""QC figures draw the stored detections (never a second detection) and zoom into chosen crops."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis.measure import puncta as synapses
from analysis.report.figures import crop_windows, qc_crops, qc_images, qc_overlay

PX = 0.1  # um per pixel: a 256 x 256 field holds 2 x 2 windows of 10 um (100 px), offset 28 px


def field(seed: int = 0) -> np.ndarray:
    """A noisy 256 x 256 single-plane, single-channel image (axes CZYX)."""
    rng = np.random.default_rng(seed)
    return rng.poisson(100, size=(1, 1, 256, 256)).astype(np.uint16)


def points_in(window: tuple[int, int], n: int, rng: np.random.Generator) -> pd.DataFrame:
    """n detections inside one 100-px window of the grid (row, column), away from its edges."""
    y0, x0 = 28 + 100 * window[0], 28 + 100 * window[1]
    return pd.DataFrame({"y": y0 + rng.uniform(5, 95, n), "x": x0 + rng.uniform(5, 95, n)})


def puncta_with_densities(counts: dict[tuple[int, int], int], seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = pd.concat([points_in(w, n, rng) for w, n in counts.items()], ignore_index=True)
    return p.assign(intensity=100.0, snr=8.0, sigma_um=0.12, in_analysed_area=True)


def scatter_of(ax: plt.Axes) -> np.ndarray:
    """Offsets (x, y) of the one scatter collection labelled "puncta" of an axis."""
    (coll,) = [c for c in ax.collections if c.get_label() == "puncta"]
    return np.asarray(coll.get_offsets())


@pytest.fixture()
def no_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("detect_puncta called: the QC picture must draw the stored puncta")

    monkeypatch.setattr(synapses, "detect_puncta", fail)


def test_overlay_draws_exactly_the_given_puncta(no_detection: None) -> None:
    pts = puncta_with_densities({(0, 0): 12, (1, 1): 7})
    pts.loc[3, "in_analysed_area"] = False  # detected but not counted: drawn in another colour
    fig = qc_overlay(field(), PX, synapse_channel=0, puncta=pts)
    xy = scatter_of(fig.axes[0])
    assert xy.shape == (19, 2)
    np.testing.assert_array_equal(xy, pts[["x", "y"]].to_numpy())
    colours = [c for c in fig.axes[0].collections if c.get_label() == "puncta"][0].get_edgecolors()
    assert len({tuple(c) for c in colours}) == 2 and tuple(colours[3]) != tuple(colours[0])
    assert fig.axes[0].get_title().startswith("PSD95: 18 puncta counted")
    plt.close(fig)


def test_overlay_without_puncta_detects_again_and_warns(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    pts = puncta_with_densities({(0, 1): 5})
    calls = []

    def detect(image: np.ndarray, pixel_size_um: float, **params: object) -> pd.DataFrame:
        calls.append(params)
        return pts.drop(columns="in_analysed_area")

    monkeypatch.setattr(synapses, "detect_puncta", detect)
    with caplog.at_level(logging.WARNING, logger="analysis.report.figures"):
        fig = qc_overlay(field(), PX, synapse_channel=0)
    assert len(calls) == 1 and "no puncta given" in caplog.text
    assert len(scatter_of(fig.axes[0])) == 5
    plt.close(fig)


def test_crops_densest_median_sparsest_with_their_points(no_detection: None) -> None:
    counts = {(0, 0): 30, (0, 1): 20, (1, 0): 10, (1, 1): 5}
    pts = puncta_with_densities(counts)
    mask = np.ones((256, 256), bool)
    fig = qc_crops(field(), PX, pts, mask=mask, n_crops=3, side_um=10.0)
    assert len(fig.axes) == 3
    # ranks 0, 2, 3 of 4 windows (evenly spaced from densest to sparsest)
    expected = [("densest", 30), ("median", 10), ("sparsest", 5)]
    for ax, (kind, n) in zip(fig.axes, expected, strict=True):
        xy = scatter_of(ax)
        (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()
        assert x1 - x0 == pytest.approx(100) and y1 - y0 == pytest.approx(100)  # 10 um at 0.1 um
        assert len(xy) == n and ax.get_title().startswith(f"{kind}: {n} puncta")
        assert ((xy[:, 0] > x0) & (xy[:, 0] < x1) & (xy[:, 1] > y0) & (xy[:, 1] < y1)).all()
        assert ax.get_images()[0].get_interpolation() == "nearest"
    plt.close(fig)


def test_crop_windows_leave_out_windows_outside_the_analysed_area() -> None:
    pts = puncta_with_densities({(0, 0): 30, (0, 1): 20, (1, 0): 10, (1, 1): 5})
    mask = np.ones((256, 256), bool)
    mask[128:, 128:] = False  # window (1, 1) is a soma
    w = crop_windows(mask, pts, PX, n_crops=3)
    assert w["n_puncta"].tolist() == [30, 20, 10]
    assert w[["y0", "x0"]].to_numpy().tolist() == [[28, 28], [28, 128], [128, 28]]
    pd.testing.assert_frame_equal(w, crop_windows(mask, pts, PX, n_crops=3))  # deterministic
    assert len(crop_windows(mask, pts, PX, n_crops=5)) == 3  # no more crops than windows


def test_qc_images_cover_snr_extremes_and_every_session_kind() -> None:
    m = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(7)],
        "session": ["baseline", "baseline", "baseline", "end_of_dosing", "end_of_dosing", "terminal", "terminal"],
        "microglia_channel": [None] * 5 + [1, 1],
        "measured_snr": [9.0, 3.0, 6.0, 12.0, 7.0, 8.0, 2.0],
        "n_puncta": [100] * 7,
    })
    chosen = qc_images(m)
    # lowest and highest SNR synapse field, then the median field of each session kind
    assert chosen["image_id"].tolist() == ["i1", "i3", "i2", "i4", "i6"]
    assert set(m.loc[m.image_id.isin(chosen.image_id), "session"]) == {"baseline", "end_of_dosing", "terminal"}
    assert qc_images(m, max_images=2)["image_id"].tolist() == ["i1", "i3"]


def test_overlay_draws_the_stored_cells_without_segmenting_again(small_quantified, small_study,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The microglia panel draws outlines.parquet: the boundaries of exactly the counted cells."""
    from analysis.io import load_samples, read_image
    from analysis.measure import microglia
    from analysis.pipeline.quantify import read_puncta, read_table

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("segment_microglia called: the QC picture must draw the stored cells")

    monkeypatch.setattr(microglia, "segment_microglia", fail)
    sheet = load_samples(small_study / "samples.csv", check_images=False).set_index("image_id")
    m = pd.read_parquet(small_quantified / "measurements.parquet")
    image_id = m.loc[m["microglia_count"].fillna(0).idxmax(), "image_id"]
    row = sheet.loc[image_id]
    outlines = read_table(small_quantified, "outlines", image_id)
    cells = read_table(small_quantified, "cells", image_id)
    # every counted cell has its boundary and skeleton stored, and nothing else is a cell
    drawn = set(outlines.loc[outlines["kind"] == "outline", "label"])
    assert drawn == set(cells["label"]) and len(cells) == m.set_index("image_id").loc[image_id, "microglia_count"]
    assert set(outlines.loc[outlines["kind"] == "skeleton", "label"]) <= drawn
    assert (outlines["kind"] == "lysosome").any()  # the CD68 boundaries of the terminal field
    data, _ = read_image(row.abs_path)
    fig = qc_overlay(data, float(row.pixel_size_um), synapse_channel=row.synapse_channel,
                     microglia_channel=row.microglia_channel, lysosome_channel=row.lysosome_channel,
                     puncta=read_puncta(small_quantified, image_id), outlines=outlines, cells=cells)
    assert fig.axes[1].get_title().startswith(f"Iba1: {len(cells)} cells")
    shown = fig.axes[1].images[1].get_array()  # the boundary layer: cell labels where drawn
    assert set(np.unique(shown.compressed())) == drawn
    plt.close(fig)


def test_longitudinal_plot_draws_each_animal_and_the_mean_over_animals() -> None:
    """One grey line per animal (relative to its baseline) and the group mean per day in red."""
    from analysis.report.figures import longitudinal_plot

    rows = []
    for g, animals, change in (("WT vehicle x 7 d", ("v1", "v2"), 1.0), ("WT diazepam 5 mg/kg x 7 d", ("d1", "d2", "d3"), 0.8)):
        for k, a in enumerate(animals):
            base = 40.0 + 5 * k
            for day, f in ((-3, 1.0), (7, change + 0.02 * k), (63, 1.0 - 0.01 * k)):
                rows.append({"group": g, "animal_id": a, "day": day, "treatment_days": 7,
                             "puncta_density_per_100um2": base * f})
    fig = longitudinal_plot(pd.DataFrame(rows), groups=["WT vehicle x 7 d", "WT diazepam 5 mg/kg x 7 d"])
    ax = fig.axes[1]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3]
    grey = [ln for ln in lines if ln.get_color() == "0.6"]
    red = [ln for ln in lines if ln.get_color() == "C3"]
    assert len(grey) == 3 and len(red) == 1
    np.testing.assert_allclose(red[0].get_xdata(), [-3, 7, 63])
    # relative to each animal's baseline: 0.80, 0.82, 0.84 at day 7 -> mean 0.82
    np.testing.assert_allclose(red[0].get_ydata(), [1.0, 0.82, 0.99])
    assert "n = 3 animals" in ax.get_title()
    plt.close(fig)
