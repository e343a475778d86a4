"""Engulfment: puncta inside CD68 inside each cell, on a constructed field and on phantoms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.stats import pearsonr
from skimage.draw import disk

from analysis.engulfment import engulfment_totals, measure_engulfment, segment_lysosomes
from analysis.phantoms import render_terminal_field


def test_counts_on_a_constructed_field() -> None:
    labels = np.zeros((100, 200), int)
    labels[disk((50, 50), 30)] = 1
    labels[disk((50, 150), 30)] = 2
    lys = np.zeros(labels.shape, bool)
    lys[disk((45, 45), 6)] = True  # in cell 1
    lys[disk((50, 150), 5)] = True  # in cell 2
    lys[disk((5, 100), 3)] = True  # outside any cell
    puncta = pd.DataFrame({"y": [45.2, 47.0, 10.0, 50.4, 5.0, 80.0], "x": [45.1, 44.0, 50.0, 149.6, 100.0, 150.0]})
    out = measure_engulfment(labels, lys, puncta, 0.2).set_index("label")
    assert out.loc[1, "engulfed_puncta"] == 2  # two in its CD68, one in the cell but not in CD68
    assert out.loc[2, "engulfed_puncta"] == 1  # the punctum in CD68 outside cells does not count
    assert out.loc[1, "cd68_area_um2"] == pytest.approx(disk((45, 45), 6)[0].size * 0.04)
    assert out.loc[2, "cd68_area_fraction"] == pytest.approx(disk((0, 0), 5)[0].size / disk((0, 0), 30)[0].size)
    tot = engulfment_totals(out.reset_index())
    assert tot["engulfed_puncta_total"] == 3 and tot["engulfed_per_cell"] == 1.5


def test_lysosome_mask_is_half_maximum_extent() -> None:
    img = np.full((200, 200), 20.0)
    yy, xx = np.mgrid[:200, :200]
    sig = 2.5
    img += 200 * np.exp(-((yy - 100) ** 2 + (xx - 100) ** 2) / (2 * sig**2))
    img = np.random.default_rng(0).poisson(img) * 2.0 + 100
    mask = segment_lysosomes(img, 0.2)
    lab, n = ndi.label(mask)
    assert n == 1
    hwhm = sig * np.sqrt(2 * np.log(2))
    assert mask.sum() == pytest.approx(np.pi * hwhm**2, rel=0.25)


def test_engulfment_on_phantoms_with_true_puncta_and_cells() -> None:
    rows = []
    for s in range(4):
        f = render_terminal_field(np.random.default_rng([9, s]), shape=(640, 640), engulfed_per_cell=4.0)
        lys = segment_lysosomes(f.image[2], 0.2)
        e = measure_engulfment(f.labels, lys, f.puncta, 0.2).rename(columns={"label": "cell"})
        rows.append(e.merge(f.cells, on="cell", suffixes=("", "_true")))
    p = pd.concat(rows)
    # with the true cells and puncta this isolates the CD68 logic: measured r 0.77 on these 4
    # fields (0.80 over 8; per field 0.62-0.98). Issue target 0.9: NOT met yet; neuropil puncta
    # that overlie CD68 in the projection count as engulfed.
    assert pearsonr(p.engulfed_puncta, p.engulfed_count)[0] >= 0.7
    assert p.cd68_area_um2.sum() == pytest.approx(p.cd68_area_um2_true.sum(), rel=0.2)
