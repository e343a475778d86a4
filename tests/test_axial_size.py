"""The axial punctum size measured on a stack (puncta.estimate_axial_radius) against known truth."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.measure.puncta import detect_puncta, estimate_axial_radius

HWHM_PER_SIGMA = np.sqrt(2.0 * np.log(2.0))


def _stack(seed: int, sigma_z_um: float, dz_um: float, n_z: int, n: int = 30, px: float = 0.1,
           sigma_xy_um: float = 0.13, amplitude: float = 60.0) -> np.ndarray:
    """Gaussian puncta at random sub-pixel positions inside the stack, shot noise on a flat
    background of 20 photons, gain 2, offset 100."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(np.arange(n_z) * dz_um, np.arange(96) * px, np.arange(96) * px, indexing="ij")
    lam = np.full(zz.shape, 20.0)
    for z, y, x in rng.uniform([0, 0.8, 0.8], [(n_z - 1) * dz_um, 8.8, 8.8], (n, 3)):
        lam += amplitude * np.exp(-((zz - z) ** 2) / (2 * sigma_z_um**2)
                                  - ((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma_xy_um**2))
    return (rng.poisson(lam) * 2.0 + 100.0).astype(np.float32)


@pytest.mark.parametrize(("sigma_z_um", "dz_um"), [(0.3, 0.15), (0.3, 0.3), (0.3, 0.45), (0.6, 0.3), (0.9, 0.5)])
def test_axial_size_of_known_puncta(sigma_z_um: float, dz_um: float) -> None:
    """A confocal section (sigma 0.3 um) sampled at 0.15-0.45 um and broader two-photon-like
    sections (0.6, 0.9 um): the half width is found within 10 % at every sampling with at least
    ~1.5 planes per sigma, and the same in planes whatever z step the caller states."""
    n_z = int(np.ceil(8 * sigma_z_um / dz_um)) + 4
    stack = _stack(int(100 * sigma_z_um + 10 * dz_um), sigma_z_um, dz_um, n_z)
    truth = sigma_z_um * HWHM_PER_SIGMA
    got = estimate_axial_radius(stack, 0.1, dz_um, punctum_radius_um=0.13 * HWHM_PER_SIGMA)
    assert got == pytest.approx(truth, rel=0.10)
    # told another z step, it reports the same planes in the other unit, up to the largest
    # plausible size (2 um)
    told = estimate_axial_radius(stack, 0.1, 2 * dz_um, punctum_radius_um=0.13 * HWHM_PER_SIGMA)
    assert told == pytest.approx(min(2 * got, 2.0), rel=0.10)


def test_no_axial_size_from_too_few_planes_or_pure_noise() -> None:
    thin = _stack(1, 0.3, 0.3, 4)
    assert np.isnan(estimate_axial_radius(thin, 0.1, 0.3, punctum_radius_um=0.15))
    noise = (np.random.default_rng(2).poisson(20.0, (12, 96, 96)) * 2.0 + 100.0).astype(np.float32)
    assert np.isnan(estimate_axial_radius(noise, 0.1, 0.3, punctum_radius_um=0.15))
    # the detector then assumes a confocal section and says so in its attrs
    p = detect_puncta(thin, 0.1, z_step_um=0.3)
    assert p.attrs["axial_radius_um"] == 0.35 and p.attrs["axial_radius_estimated"] is False
    p = detect_puncta(_stack(3, 0.3, 0.3, 12), 0.1, z_step_um=0.3)
    assert p.attrs["axial_radius_estimated"] is True
    assert p.attrs["axial_radius_um"] == pytest.approx(0.3 * HWHM_PER_SIGMA, rel=0.10)
