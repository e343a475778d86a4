"""A known gap of the puncta detector: the sharp edge of the tissue (a section's border, a tear)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.measure.puncta import detect_puncta, match_points
from analysis.sim.optics import _camera
from analysis.sim.phantoms import SNR_LEVELS, render_synapse_field

PX = 0.1


@pytest.mark.xfail(strict=True, reason=(
    "known gap (session 55): a sharp edge of the tissue makes a line of false puncta along it. A default-SNR phantom "
    "field whose right 96 columns are glass (the same camera, 2 photo-electrons; the edge blurred by 1 px) got "
    "38-48 false puncta within 6 px of its 25.6 um edge in 4 fields (~1.7 per um), and its counted density rose by "
    "15-60 %: the background the detector subtracts is a Gaussian blur, which the dark side pulls down along the "
    "bright side. Not fixed: the background is built into the detector's linear model (H = 1 - G); an edge-preserving "
    "background, or filling a void beyond a sharp step as the constant fill of padding is (analysis.measure.outside), "
    "would change every image's detections and needs the whole validation"))
def test_a_sharp_tissue_edge_makes_no_line_of_false_puncta() -> None:
    f = render_synapse_field(np.random.default_rng([0, 0]), shape=(256, 256), pixel_size_um=PX,
                             snr=SNR_LEVELS["default"])
    tissue = ndi.gaussian_filter((np.arange(256) < 160).astype(float), 1.0)[None, :] * np.ones((256, 1))
    glass = _camera(np.random.default_rng([7, 0]), np.full((256, 256), 2.0)).astype(float)
    image = (f.image * tissue + glass * (1 - tissue)).astype(np.float32)
    p = detect_puncta(image, PX)
    m = match_points(p[["y", "x"]].to_numpy() * PX, f.puncta[["y", "x"]].to_numpy() * PX, 0.25)
    false = np.ones(len(p), bool)
    false[m.pairs[:, 0]] = False
    along = false & (np.abs(p["x"].to_numpy() - 160) <= 6)
    assert along.sum() / (256 * PX) <= 0.2, f"{int(along.sum())} false puncta along a {256 * PX:g} um edge"
