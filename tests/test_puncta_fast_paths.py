"""The detector's shortcuts for full-image filters give what the filters give.

:func:`analysis.measure.puncta._extrema` replaces ``np.argwhere(mask & (z ==
ndi.maximum_filter(z, size)))`` (and the minimum filter) and
:func:`analysis.measure.puncta._gaussian_at` a Gaussian filter read at a few points; both are
checked here against scipy on random data with ties, windows that reach the edges, windows
larger than the array, 3-D windows and sizes of 1 along an axis.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.measure.puncta import _extrema, _gaussian_at

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
