"""The detector's shortcuts for full-image filters give what the filters give.

:func:`analysis.measure.puncta._extrema` replaces ``np.argwhere(mask & (z ==
ndi.maximum_filter(z, size)))`` (and the minimum filter) and
:func:`analysis.measure.puncta._gaussian_at` a Gaussian filter read at a few points; both are
checked here against scipy on random data with ties, windows that reach the edges, windows
larger than the array, 3-D windows and sizes of 1 along an axis.  The candidate pairs of a
stack are queried within :func:`analysis.measure.puncta._strong_pair_radius`: checked against
the overlaps it bounds and against detection with the full interaction distance.  The
residual of split blobs is changed in closed form (:func:`analysis.measure.puncta._subtract_models`):
checked against rendering the spots and filtering them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from analysis.measure.puncta import (_OUT_OF_FOCUS_SCALES, _W_K, _Scale, _double_high_pass,
                                     _extrema, _gaussian_at, _in_focus_scales, _overlap, _render, _strong_pair_radius,
                                     _subtract_models)

CASES = [
    ((200, 300), (5, 5)),
    ((64, 64), (13, 13)),
    ((7, 40, 50), (3, 5, 5)),
    ((3, 9), (5, 5)),  # windows larger than the array
    ((50, 60), (3, 1)),  # a size of 1: no neighbour along that axis
]


@pytest.mark.parametrize("shape,size", CASES)
@pytest.mark.parametrize("lowest", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_extrema_equal_the_maximum_and_minimum_filters(shape, size, lowest, ties) -> None:
    rng = np.random.default_rng(len(shape) * 100 + size[0])
    z = rng.integers(0, 4, shape).astype(float) if ties else rng.normal(size=shape)
    mask = rng.random(shape) < 0.5
    filt = ndi.minimum_filter if lowest else ndi.maximum_filter
    got = _extrema(z, size, mask, lowest=lowest)
    for mode in ("nearest", "reflect"):
        ref = np.argwhere(mask & (z == filt(z, size=size, mode=mode)))
        assert len(ref) > 0
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("sigma", [0.8, 5.0, 15.3, 120.0])
def test_gaussian_at_points_equals_the_filtered_image(sigma: float) -> None:
    rng = np.random.default_rng(1)
    img = rng.normal(100, 10, (300, 200))
    pts = np.argwhere(rng.random(img.shape) < 0.05)
    pts = np.concatenate([pts, [[0, 0], [299, 199], [0, 199], [150, 0]]])  # the corners reflect
    ref = ndi.gaussian_filter(img, sigma)[tuple(pts.T)]
    np.testing.assert_allclose(_gaussian_at(img, sigma, pts), ref, rtol=1e-13, atol=0)


def _stack_scales() -> tuple[list, np.ndarray, np.ndarray]:
    """The in-focus sizes, widest-model unit and background radius of a confocal stack as the
    detector sets them (0.2 um pixels, 0.3 um z step, punctum radius 0.2 um, axial 0.5 um)."""
    sigma0 = np.array([0.5 / 1.1774 / 0.3, 0.2 / 1.1774 / 0.2, 0.2 / 1.1774 / 0.2])
    bg = np.array([2.0 * 0.2 * 2.5 / 0.3, 2.0, 2.0])
    shape = (30, 128, 128)
    inf = [_Scale(shape, sigma0 * f, bg) for f in _in_focus_scales(float(sigma0[-1]))]
    widest = np.stack([s.sigma for s in inf] + [sigma0 * f for f in _OUT_OF_FOCUS_SCALES]).max(axis=0)
    return inf, np.maximum(widest, bg), bg


def test_no_strong_pair_lies_beyond_the_strong_pair_radius() -> None:
    """Every pair of in-focus sizes at random offsets beyond the radius overlaps by at most
    0.01 (the joint fit's test of a pair), and the radius does prune: pairs at half of it pass
    the test."""
    scales, unit, bg = _stack_scales()
    cut = 8.0
    rho = _strong_pair_radius(scales, unit, bg, cut)
    assert 1.0 < rho < cut
    rng = np.random.default_rng(3)
    direction = rng.normal(size=(20_000, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    worst_out, best_in = 0.0, 0.0
    for si in scales:
        for sj in scales:
            for r, pick in ((rho * rng.uniform(1.0, 1.5, len(direction)), max), (0.5 * rho, min)):
                d2 = (np.atleast_1d(r)[:, None] * direction * unit) ** 2
                rc = np.abs(_overlap(d2, si.sigma, sj.sigma, si.c, sj.c, bg, _W_K)) / np.sqrt(si.k0 * sj.k0)
                if pick is max:
                    worst_out = max(worst_out, float(rc.max()))
                else:
                    best_in = max(best_in, float(rc.max()))
    assert worst_out <= 0.01
    assert best_in > 0.01


def test_stack_detection_is_the_same_with_the_strong_pair_radius(monkeypatch) -> None:
    """Pairs queried within the strong-pair radius give the same puncta, bit for bit, as pairs
    queried within the full interaction distance (the radius is only a shortcut)."""
    from analysis.measure import puncta as P
    from analysis.sim.phantoms import render_terminal_field

    stack = np.stack([render_terminal_field(np.random.default_rng([7, z]), shape=(96, 96)).image[0]
                      for z in range(8)])
    fast = P.detect_puncta(stack, 0.2, z_step_um=0.3)
    monkeypatch.setattr(P, "_strong_pair_radius", lambda scales, unit, b, cut, strong=0.01: cut)
    full = P.detect_puncta(stack, 0.2, z_step_um=0.3)
    assert len(full) > 300
    pd.testing.assert_frame_equal(fast, full)


def test_closed_form_residual_update_equals_the_filtered_model() -> None:
    # spots of several sizes and amplitudes (some negative: removed puncta) away from the edges
    rng = np.random.default_rng(3)
    shape, bg = (160, 200), np.array([3.5, 3.5])
    nominal = _Scale(shape, np.array([1.5, 1.5]), bg)
    pos = rng.uniform(30, 130, (12, 2))
    amp = rng.uniform(-80, 150, 12)
    sig = rng.uniform(1.2, 2.1, (12, 2))
    c = 2 * np.pi * sig.prod(axis=1)
    filtered = nominal.response(_double_high_pass(_render(shape, pos, amp, sig), bg)[0])
    res = np.zeros(shape)
    assert _subtract_models(res, pos, amp, sig, c, nominal, bg)
    np.testing.assert_allclose(-res, filtered, atol=1e-4 * np.abs(filtered).max())
    # too many spots for windows: declined, and the residual left as it was
    many = np.zeros(shape)
    assert not _subtract_models(many, np.repeat(pos, 60, axis=0), np.repeat(amp, 60), np.repeat(sig, 60, axis=0),
                                np.repeat(c, 60), nominal, bg)
    assert not many.any()


def test_pair_overlaps_kept_over_the_rounds_give_the_same_puncta(monkeypatch) -> None:
    """The pruning loop keeps each pair's overlap while neither punctum moves or changes size:
    the same puncta, bit for bit, as computing every overlap in every round, with fewer pairs
    computed (a plane and a stack of crowded phantom fields)."""
    from analysis.measure import puncta as P
    from analysis.sim.phantoms import render_terminal_field

    plane = render_terminal_field(np.random.default_rng([8, 1]), shape=(192, 192)).image[0]
    stack = np.stack([render_terminal_field(np.random.default_rng([8, z]), shape=(80, 80)).image[0] for z in range(6)])
    computed = []
    overlap = P._overlap

    def counting(d2, *args):
        if args[-1] is P._W_K and d2.ndim == 2:  # (the pairs' overlaps; the deblending's are 3-D)
            computed.append(len(d2))
        return overlap(d2, *args)

    monkeypatch.setattr(P, "_overlap", counting)
    for img, kwargs in ((plane, {}), (stack, {"z_step_um": 0.3})):
        computed.clear()
        kept = P.detect_puncta(img, 0.2, **kwargs)
        n_kept = sum(computed)
        monkeypatch.setattr(P, "_CACHE_PAIR_OVERLAPS", False)
        computed.clear()
        every = P.detect_puncta(img, 0.2, **kwargs)
        monkeypatch.setattr(P, "_CACHE_PAIR_OVERLAPS", True)
        assert len(every) > 100
        pd.testing.assert_frame_equal(kept, every)
        assert n_kept < 0.9 * sum(computed), (n_kept, sum(computed))
