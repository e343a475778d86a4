"""A study of z-stacks end to end: OME-TIFF stacks with a known puncta density, quantified by
:func:`analysis.pipeline.quantify.quantify_study` with the z step from the files' OME metadata.

``analysis.sim.simulate`` and ``analysis.sim.phantoms`` write single planes only, so the stacks are
rendered here: PSD95-like puncta (Gaussian, lateral sigma 0.13 um, axial sigma 0.3 um: a
confocal PSF) placed uniformly at random in tissue that extends 1 um beyond the imaged
volume on every side (puncta just outside the stack shine into it, as in a real sample),
at least one punctum size apart, on a flat background with shot noise, camera gain, offset
and read noise.  128 x 128 px of 0.1 um, 10 planes 0.3 um apart (a 12.8 x 12.8 x 3 um
volume), ~0.25 puncta per um^3: ~110 puncta in the imaged volume.

The pipeline reports a stack's density per um^3 over ``n_z * z_step`` (each plane stands for
a slab one z step thick, :func:`analysis.measure.area.synapse_density`).  The truth compared with
it is the realised density of the same volume: the true centres inside
[-dz/2, (n_z - 1/2) dz] x the field, divided by that volume (no Poisson sampling noise in the
comparison).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from analysis.pipeline.quantify import quantify_study

PX, DZ, NZ, NPX = 0.1, 0.3, 10, 128
GAIN, OFFSET, READ = 2.0, 100.0, 3.0
MARGIN_UM = 1.0
SIGMA_XY, SIGMA_Z = 0.13, 0.3
AMPLITUDE, BACKGROUND = 50.0, 20.0  # photons at the peak / per pixel: SNR ~10 at the peak
DENSITY_UM3 = 0.25
STEP_FACTOR = 2.0  # the wrong z step of the second image


def _scene(rng: np.random.Generator) -> np.ndarray:
    """True (z, y, x) centres in um (pixel / plane centres at multiples of PX / DZ)."""
    lo = np.array([-0.5 * DZ, -0.5 * PX, -0.5 * PX]) - MARGIN_UM
    hi = np.array([(NZ - 0.5) * DZ, (NPX - 0.5) * PX, (NPX - 0.5) * PX]) + MARGIN_UM
    n = rng.poisson(DENSITY_UM3 * np.prod(hi - lo))
    pts: list[np.ndarray] = []
    while len(pts) < n:  # at least one punctum size apart (an ellipsoid of 0.7 x 0.35 um)
        p = rng.uniform(lo, hi)
        if not pts or (((np.array(pts) - p) / [0.7, 0.35, 0.35]) ** 2).sum(axis=1).min() >= 1.0:
            pts.append(p)
    return np.array(pts)


def _render(pts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    z = np.arange(NZ) * DZ
    yx = np.arange(NPX) * PX
    lam = np.full((NZ, NPX, NPX), BACKGROUND)
    for pz, py, px in pts:  # separable Gaussians
        gz = np.exp(-((z - pz) ** 2) / (2 * SIGMA_Z**2))
        gy = np.exp(-((yx - py) ** 2) / (2 * SIGMA_XY**2))
        gx = np.exp(-((yx - px) ** 2) / (2 * SIGMA_XY**2))
        lam += AMPLITUDE * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    img = rng.poisson(lam) * GAIN + OFFSET + rng.normal(0.0, READ, lam.shape)
    return np.clip(np.rint(img), 0, 65535).astype(np.uint16)


def _inside(pts: np.ndarray, z_lo: float, z_hi: float) -> np.ndarray:
    lateral = ((pts[:, 1:] >= -0.5 * PX) & (pts[:, 1:] < (NPX - 0.5) * PX)).all(axis=1)
    return lateral & (pts[:, 0] >= z_lo) & (pts[:, 0] < z_hi)


def _write(path: Path, stack: np.ndarray, z_step_um: float) -> None:
    tifffile.imwrite(path, stack, ome=True, photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeX": PX, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": PX, "PhysicalSizeYUnit": "µm",
                               "PhysicalSizeZ": z_step_um, "PhysicalSizeZUnit": "µm"})


@pytest.fixture(scope="module")
def stack_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two stacks with their truth, one with its true z step and one (the same pixels) with a
    wrong one, quantified once."""
    root = tmp_path_factory.mktemp("zstack")
    (root / "images").mkdir()
    rng = np.random.default_rng([16, 3])
    pts = _scene(rng)
    stack = _render(pts, rng)
    rows = []
    for image_id, dz in (("stack_true_step", DZ), ("stack_wrong_step", STEP_FACTOR * DZ)):
        _write(root / "images" / f"{image_id}.ome.tif", stack, dz)
        rows.append({"image_id": image_id, "path": f"images/{image_id}.ome.tif", "animal_id": "M1",
                     "genotype": "WT", "compound": "vehicle", "dose_mg_kg": 0.0, "treatment_days": 7,
                     "day": 7, "pixel_size_um": "", "synapse_channel": 0, "microglia_channel": "",
                     "lysosome_channel": ""})
    pd.DataFrame(rows).to_csv(root / "samples.csv", index=False)
    m = quantify_study(root / "samples.csv", root / "processed", workers=1, progress=False)
    return {"m": m.set_index("image_id"), "pts": pts, "out": root / "processed"}


def test_stacks_are_measured_per_volume_with_the_z_step_of_their_metadata(stack_study: dict) -> None:
    m = stack_study["m"]
    assert pd.read_csv(stack_study["out"] / "failures.csv").empty
    area = (NPX * PX) ** 2  # a flat field: the whole plane is analysed
    for image_id, dz in (("stack_true_step", DZ), ("stack_wrong_step", STEP_FACTOR * DZ)):
        row = m.loc[image_id]
        assert row["analysed_area_um2"] == pytest.approx(area, rel=1e-9)
        # the axial half width measured on the stack: the true 0.353 um (sigma 0.3 um) in um when the
        # z step is right, in proportion to the z step given when it is not (the same planes)
        assert row["axial_radius_um"] == pytest.approx(SIGMA_Z * 1.1774 * dz / DZ, rel=0.05)
        # the volume inside the axial guard bands: max(1 plane, the axial half width) at either end
        guard = max(1.0, row["axial_radius_um"] / dz)
        assert row["analysed_volume_um3"] == pytest.approx(area * (NZ - 2 * guard) * dz, rel=1e-9)
        assert row["puncta_density_per_um3"] == pytest.approx(row["n_puncta"] / row["analysed_volume_um3"], rel=1e-12)
        # a stack's density is per volume, never written into the 2-D column
        assert "puncta_density_per_100um2" not in m.columns or pd.isna(row["puncta_density_per_100um2"])
    puncta = pd.read_parquet(stack_study["out"] / "puncta.parquet")
    assert "z" in puncta.columns and puncta["z"].between(0, NZ - 1).all()
    # the z step sets the volume (the guard bands are the same planes either way)
    guards = [max(1.0, m.loc[i, "axial_radius_um"] / d) for i, d in (("stack_true_step", DZ),
                                                                    ("stack_wrong_step", STEP_FACTOR * DZ))]
    ratio = m.loc["stack_wrong_step", "analysed_volume_um3"] / m.loc["stack_true_step", "analysed_volume_um3"]
    assert ratio == pytest.approx(STEP_FACTOR * (NZ - 2 * guards[1]) / (NZ - 2 * guards[0]), rel=1e-12)


def test_interior_of_the_stack_matches_the_truth(stack_study: dict) -> None:
    """Away from the first and last two planes, the puncta table has the true density.

    Tolerance +-10 %: the detector's recall and precision on isolated puncta at this SNR are
    >= 0.95 (tests/test_synapses.py::test_3d_stack_with_anisotropic_sampling), and the
    comparison is with the realised truth of the same sub-volume (no sampling noise); the
    sub-volume's edges cut through puncta whose fitted z may fall on either side (~0.05 um
    axial error), a few per cent of ~75 puncta.  Measured: 78 found, 74 true (1.05).
    """
    puncta = pd.read_parquet(stack_study["out"] / "puncta.parquet")
    mine = puncta[(puncta["image_id"] == "stack_true_step") & puncta["in_analysed_area"]]
    z_lo, z_hi = 1.5, NZ - 2.5  # planes
    n_measured = int(((mine["z"] >= z_lo) & (mine["z"] < z_hi)).sum())
    n_true = int(_inside(stack_study["pts"], z_lo * DZ, z_hi * DZ).sum())
    assert n_true >= 50
    assert n_measured / n_true == pytest.approx(1.0, abs=0.10), (n_measured, n_true)


def test_stack_density_matches_the_truth(stack_study: dict) -> None:
    """The reported density per um^3 within 6 % of the realised truth of the volume it counts
    (inside the axial guard bands).

    Before the axial guard bands (synapse_density) it was 17 % low: puncta within about half a
    plane of the first and last plane are not found (11 of 32 there vs 79 of 81 inside), yet
    the whole n_z x z step was the volume.  Then it read ~11 % high against the whole stack's
    truth: puncta centred just outside the lateral field were placed on its edge pixels and
    counted.  Since they are refitted without that limit (session 35), over 8 scenes of this
    kind (seeds [16, 3 + 100 k]): 1.06 +- 0.03 against the whole stack's truth, of which
    1.033 +- 0.029 is the truth itself (the counted sub-volume's realised density over the
    whole stack's: sampling, which this comparison leaves out) and 1.027 +- 0.030 the
    detector (1.01-1.08; 24 false puncta in 743 at SNR 4-5, within the 5 % noise
    false-discovery rate; this scene 1.034)."""
    row = stack_study["m"].loc["stack_true_step"]
    guard = max(1.0, row["axial_radius_um"] / DZ)
    pts = stack_study["pts"]
    n_true = int(_inside(pts, (guard - 0.5) * DZ, (NZ - 0.5 - guard) * DZ).sum())
    truth = n_true / row["analysed_volume_um3"]
    assert row["puncta_density_per_um3"] / truth == pytest.approx(1.0, abs=0.06), (row["n_puncta"], n_true)


def test_a_wrong_z_step_changes_the_density_in_proportion(stack_study: dict) -> None:
    """The axial punctum size is measured on the stack (in planes), so twice the true z step
    finds the same puncta in twice the volume: the density halves, and the axial size reported
    doubles (test above), which shows the mistake.  (With a fixed axial size of 0.35 um each
    punctum looked twice too long in z and was split: 94 -> 232 puncta, density ratio 1.23.)"""
    m = stack_study["m"]
    assert m.loc["stack_wrong_step", "n_puncta"] == pytest.approx(m.loc["stack_true_step", "n_puncta"], rel=0.05)
    ratio = m.loc["stack_wrong_step", "puncta_density_per_um3"] / m.loc["stack_true_step", "puncta_density_per_um3"]
    assert ratio == pytest.approx(1.0 / STEP_FACTOR, rel=0.10), (ratio, m["n_puncta"].tolist())
