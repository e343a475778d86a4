"""The banded-product Gaussian filters (:mod:`analysis.measure.filters`) give scipy.ndimage's
numbers.

Checked against scipy on random data: both paths (the banded product on large float64 arrays,
scipy itself on small ones, other dtypes and short kernels along the last axis), every axis of
planes and stacks, orders 0-2, every boundary mode, lengths that are not a multiple of the
block, kernels nearly as wide as the axis, and the Laplacian of Gaussian.  The product sums in
another order than scipy, so the comparison is to rounding (relative 1e-12); where the call
goes to scipy it is bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.measure import filters

RTOL = 1e-12


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = max(float(np.abs(b).max()), 1e-300)
    assert float(np.abs(a - b).max()) <= RTOL * scale


@pytest.mark.parametrize("shape", [(256, 256), (300, 517), (1000, 70), (4, 130, 210)])
@pytest.mark.parametrize("sigma", [0.8, 3.7, 15.0])
@pytest.mark.parametrize("order", [0, 1, 2])
def test_gaussian_filter1d_equals_scipy_on_every_axis(shape, sigma, order) -> None:
    x = np.random.default_rng(7).normal(100.0, 10.0, shape)
    for axis in range(len(shape)):
        _close(filters.gaussian_filter1d(x, sigma, axis=axis, order=order),
               ndi.gaussian_filter1d(x, sigma, axis=axis, order=order))


@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "wrap", "constant"])
def test_every_boundary_mode(mode) -> None:
    # a ramp makes every mode's edge values differ from the others'
    x = np.add.outer(np.arange(300.0), 0.5 * np.arange(260.0)) + np.random.default_rng(1).random((300, 260))
    for axis in (0, 1):
        _close(filters.gaussian_filter1d(x, 9.0, axis=axis, mode=mode),
               ndi.gaussian_filter1d(x, 9.0, axis=axis, mode=mode))


def test_the_product_path_does_not_call_scipy(monkeypatch) -> None:
    x = np.random.default_rng(2).random((512, 512))
    w = filters.gaussian_kernel1d(4.0)
    expected = [ndi.correlate1d(x, w, axis=a, mode="reflect") for a in (0, 1)]

    def refuse(*args, **kwargs):
        raise AssertionError("scipy was called")

    monkeypatch.setattr(filters.ndi, "correlate1d", refuse)
    for axis in (0, 1):
        _close(filters.correlate1d(x, w, axis=axis), expected[axis])


@pytest.mark.parametrize("x", [
    np.random.default_rng(3).random((100, 120)),  # small: fewer than MIN_SIZE elements
    np.random.default_rng(3).random((400, 400)).astype(np.float32),  # not float64
    np.random.default_rng(3).integers(0, 4000, (400, 400)).astype(np.uint16),
])
def test_small_arrays_and_other_dtypes_are_scipy_bit_for_bit(x) -> None:
    w = filters.gaussian_kernel1d(2.0)[::-1]
    for axis in (0, 1):
        out = filters.correlate1d(x, w, axis=axis)
        assert out.dtype == x.dtype
        np.testing.assert_array_equal(out, ndi.correlate1d(x, w, axis=axis, mode="reflect"))


def test_short_kernels_along_the_last_axis_stay_with_scipy() -> None:
    x = np.random.default_rng(4).random((512, 512))
    w = filters.gaussian_kernel1d(1.0)  # 9 taps: scipy is faster along contiguous lines
    assert len(w) < filters.MIN_TAPS_LAST_AXIS
    np.testing.assert_array_equal(filters.correlate1d(x, w, axis=1), ndi.correlate1d(x, w, axis=1, mode="reflect"))


def test_kernel_nearly_as_wide_as_the_axis() -> None:
    # radius 66 on 70 rows: the padding reflects almost the whole axis, and the last block
    # is mostly padding
    x = np.random.default_rng(5).random((70, 1200))
    w = filters.gaussian_kernel1d(16.5)
    assert len(w) // 2 == 66
    _close(filters.correlate1d(x, w, axis=0), ndi.correlate1d(x, w, axis=0, mode="reflect"))
    # wider than the axis: scipy's own repeated reflection
    wide = filters.gaussian_kernel1d(30.0)
    np.testing.assert_array_equal(filters.correlate1d(x, wide, axis=0), ndi.correlate1d(x, wide, axis=0, mode="reflect"))


def test_gaussian_filter_with_per_axis_sigmas_and_zeros() -> None:
    stack = np.random.default_rng(6).random((5, 260, 300))
    for sigma in ([0.0, 2.0, 2.0], [1.0, 0.0, 6.0], 3.0):
        _close(filters.gaussian_filter(stack, sigma), ndi.gaussian_filter(stack, sigma))
    out = filters.gaussian_filter(stack, 0.0)
    np.testing.assert_array_equal(out, stack)
    assert out is not stack


@pytest.mark.parametrize("shape,sigma", [((512, 400), 1.3), ((512, 400), [2.0, 5.0]), ((6, 256, 300), [0.9, 1.5, 1.5])])
def test_gaussian_laplace(shape, sigma) -> None:
    x = np.random.default_rng(8).random(shape)
    _close(filters.gaussian_laplace(x, sigma), ndi.gaussian_laplace(x, sigma))


def test_non_finite_pixels_spread_as_far_as_in_scipy() -> None:
    # through the banded product a NaN would reach every line of its block (0 * NaN is NaN)
    x = np.random.default_rng(10).random((512, 512))
    x[200, 300] = np.nan
    x[400, 10] = np.inf
    for axis in (0, 1):
        ours = filters.gaussian_filter1d(x, 5.0, axis=axis)
        theirs = ndi.gaussian_filter1d(x, 5.0, axis=axis)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        assert np.isnan(ours).sum() == 2 * 20 + 1  # the NaN's reach, radius 20 (the inf stays inf)
        assert np.isinf(ours).sum() > 0
        np.testing.assert_array_equal(ours, theirs)


def test_non_contiguous_input() -> None:
    x = np.random.default_rng(9).random((600, 700))[::2, ::-1].T  # strided, reversed, transposed
    for axis in (0, 1):
        _close(filters.gaussian_filter1d(x, 6.0, axis=axis), ndi.gaussian_filter1d(x, 6.0, axis=axis))


def test_bad_order() -> None:
    with pytest.raises(ValueError, match="order must be 0, 1 or 2"):
        filters.gaussian_kernel1d(2.0, order=3)
