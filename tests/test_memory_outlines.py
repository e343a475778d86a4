"""Lighter paths of the per-image quantification give the results of the plain code (issue 16).

* the QC outlines of cells and lysosomes (:func:`analysis.measure.morphology.inner_boundaries`)
  equal ``skimage.segmentation.find_boundaries(mode="inner")`` (which makes two full-size
  copies of the label image);
* skeleton pixels left outside every cell take the label of the nearest cell pixel from
  crops (:func:`analysis.pipeline.readouts.nearest_label`), the one a full-size
  ``distance_transform_edt(return_indices=True)`` picks;
* the lysosome mask is labelled in uint16 while the objects fit, in int32 beyond;
* :func:`analysis.pipeline.heap.release_free_memory` returns freed heap pages to the system
  (glibc), so one readout's work does not stay resident under the next one's.
"""

from __future__ import annotations

import ctypes.util
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from analysis.measure.engulfment import _label_small
from analysis.measure.morphology import inner_boundaries
from analysis.pipeline.heap import release_free_memory
from analysis.pipeline.readouts import nearest_label


def _random_labels(rng: np.random.Generator, h: int, w: int, holes: bool) -> np.ndarray:
    lab = np.zeros((h, w), np.int32)
    for k in range(1, int(rng.integers(2, 12))):
        cy, cx, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(1, 30))
        lab[max(0, cy - r):cy + r, max(0, cx - r):cx + r] = k
    if holes:
        lab[rng.random((h, w)) < 0.5] = 0
    return lab


def test_inner_boundaries_equal_skimage() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(120):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        lab = _random_labels(rng, h, w, holes=bool(trial % 2))
        if trial % 3 == 0:
            lab = lab > 0
        want = find_boundaries(lab, mode="inner")
        for strip in (None, 1, 2, 5):
            got = inner_boundaries(lab, strip)
            assert got.dtype == bool and np.array_equal(got, want), (trial, h, w, strip)
        checked += int(want.sum())
    assert checked > 1000  # (boundaries were there to compare)
    stack = _random_labels(rng, 30, 40, True)[None].repeat(3, axis=0)
    assert np.array_equal(inner_boundaries(stack), find_boundaries(stack, mode="inner"))


def test_nearest_label_equals_the_full_distance_transform() -> None:
    rng = np.random.default_rng(1)
    n_points = 0
    for trial in range(80):
        h, w = (int(v) for v in rng.integers(5, 250, 2))
        lab = _random_labels(rng, h, w, holes=bool(trial % 2))
        if not lab.any():
            continue
        n = int(rng.integers(1, 50))
        y, x = rng.integers(0, h, n), rng.integers(0, w, n)
        iy, ix = ndi.distance_transform_edt(lab == 0, return_distances=False, return_indices=True)
        want = lab[iy[y, x], ix[y, x]]
        # small tiles and margins force crops without labels and crops that must be widened
        for tile, margin in ((512, 32), (16, 2), (7, 1)):
            assert np.array_equal(nearest_label(lab, y, x, tile_px=tile, margin_px=margin), want), (trial, tile)
        n_points += n
    assert n_points > 1000
    assert nearest_label(np.ones((3, 3), int), np.array([], int), np.array([], int)).shape == (0,)


def test_lysosome_labels_in_uint16_while_they_fit() -> None:
    few = np.zeros((300, 300), bool)
    few[::2, ::2] = True  # 22,500 objects
    lab, n = _label_small(few)
    want, n_want = ndi.label(few)
    assert lab.dtype == np.uint16 and n == n_want == 22_500 and np.array_equal(lab, want)
    many = np.zeros((600, 600), bool)
    many[::2, ::2] = True  # 90,000 objects: beyond uint16
    lab, n = _label_small(many)
    want, n_want = ndi.label(many)
    assert n == n_want == 90_000 and lab.dtype == want.dtype and np.array_equal(lab, want)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux") or "musl" in (ctypes.util.find_library("c") or ""),
                    reason="malloc_trim is glibc's")
def test_release_free_memory_returns_freed_heap_pages() -> None:
    # 3,000 blocks of 48 kB (below glibc's mmap threshold: they come from the heap); freeing
    # all but every 20th leaves the heap fragmented, so glibc's automatic trimming of the
    # heap's top cannot return the freed pages
    blocks = [np.ones(6_000) for _ in range(3_000)]
    kept = blocks[::20]
    del blocks
    before = _rss_mb()
    assert release_free_memory() is True
    after = _rss_mb()
    assert before - after > 60, (before, after)  # ~130 MB were freed
    assert len(kept) == 150
