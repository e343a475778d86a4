"""The resolution ceiling used beside the crowded sim-fish cases (matching.resolvable_count)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.measure.matching import resolvable_count


def _maxima_of_two_spots(separation: float, sigma: float = 4.0) -> int:
    """Local maxima of the noiseless sum of two equal Gaussians ``separation`` pixels apart."""
    y, x = np.mgrid[0:81, 0:161].astype(float)
    img = sum(np.exp(-((y - 40) ** 2 + (x - cx) ** 2) / (2 * sigma**2)) for cx in (80 - separation / 2, 80 + separation / 2))
    peaks = (img == ndi.maximum_filter(img, size=3)) & (img > 0.1)
    return int(peaks.sum())


@pytest.mark.parametrize(("factor", "expected"), [(1.6, 1), (1.9, 1), (2.2, 2), (3.0, 2)])
def test_two_equal_spots_make_two_maxima_beyond_two_sigma_only(factor: float, expected: int) -> None:
    """The Sparrow limit that the ceiling assumes: two equal Gaussians of SD s show two maxima
    only when more than 2 s apart; resolvable_count at 2 s counts the same."""
    sigma = 4.0
    assert _maxima_of_two_spots(factor * sigma, sigma) == expected
    pts = np.array([[40.0, 80 - factor * sigma / 2], [40.0, 80 + factor * sigma / 2]])
    assert resolvable_count(pts, 2 * sigma) == expected


def test_groups_are_linked_in_chains() -> None:
    """A chain of points each closer than the limit to the next is one group, however long."""
    chain = np.column_stack([np.zeros(5), np.arange(5) * 0.9])
    alone = np.array([[10.0, 10.0], [20.0, 20.0]])
    assert resolvable_count(np.vstack([chain, alone]), 1.0) == 3
    assert resolvable_count(np.vstack([chain, alone]), 0.5) == 7
    assert resolvable_count(np.zeros((0, 2)), 1.0) == 0
