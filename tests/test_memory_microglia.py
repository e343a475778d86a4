"""Memory-saving paths of the microglia and lysosome segmentations (issue 16 item 5) give the
results of the plain code.

* ``segment_microglia`` floods with skimage's watershed kernel on work arrays built once (the
  markers moved into the flood's output, the foreground into its padded mask, the somata held
  as pixel indices during the entering-process flood, the levels only as the kernel's double
  image); with ``_ws_kernel`` returning None every flood is skimage's public
  ``watershed(..., connectivity=2)`` on whole arrays, as before.  The labels must be identical.
* the processes entering from outside are found on a compact grid of the rows and columns
  that hold the components at the edges (``_compact_grid``): the same maxima, flood and
  dominance as on the whole image.
* the median and robust SD of the line response in the background are taken without gathering
  the values (``_median_and_robust_sd_where``, ``_median_of_chunks``): the same two numbers.
* ``segment_lysosomes`` filters YX images taller than ``strip_px`` in strips of rows and takes
  the noise SD from a strip-wise exact median; ``_reference_lysosomes`` is the function as it
  was before (commit e918f85: float32 copy, whole-image filters, skimage's hysteresis
  threshold, ``noise_sd``).  The masks must be identical for any strip height.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import apply_hysteresis_threshold
from skimage.morphology import local_maxima

from analysis.measure import engulfment, microglia
from analysis.measure.noise import MAD_TO_SD, noise_sd
from analysis.measure.puncta import _label_sizes
from analysis.sim.glia import render_terminal_field
from analysis.sim.optics import SNR_LEVELS

PX = 0.2


@pytest.fixture(scope="module")
def fields() -> list[np.ndarray]:
    """(3, Y, X) terminal fields, one per SNR level, crowded ones among them (touching cells,
    processes entering from outside)."""
    out = []
    for i, snr in enumerate(SNR_LEVELS.values()):
        kw = dict(process_length_scale=0.6, soma_scale=1.3, microglia_per_mm2=900) if i % 2 else {}
        out.append(render_terminal_field(np.random.default_rng([16, 5, i]), shape=(640, 520), snr=snr, **kw).image)
    return out


def test_flood_bookkeeping_equals_the_public_watershed(fields, monkeypatch) -> None:
    fast = [microglia.segment_microglia(f[1], PX) for f in fields]
    # the kernel's flood must have run (otherwise the comparison below compares a path with itself)
    assert microglia._ws_kernel() is not None
    monkeypatch.setattr(microglia, "_ws_kernel", lambda: None)
    for f, lab in zip(fields, fast):
        plain = microglia.segment_microglia(f[1], PX)
        assert plain.max() >= 3
        assert lab.dtype == plain.dtype and np.array_equal(lab, plain)


def test_entering_processes_on_the_compact_grid_equal_the_whole_image(fields, monkeypatch) -> None:
    shapes = []
    to_compact = microglia._to_compact

    def recording(a, grid):
        out = to_compact(a, grid)
        shapes.append((a.shape, out.shape))
        return out

    monkeypatch.setattr(microglia, "_to_compact", recording)
    compact = [microglia.segment_microglia(f[1], PX) for f in fields]
    # the compact grids were used, none larger than its field, some much smaller (on small
    # fields the components at the edges reach far in; on an 8000^2 plane they are a thin frame)
    assert shapes and all(c[0] <= a[0] and c[1] <= a[1] for a, c in shapes)
    assert any(c[0] * c[1] < 0.7 * a[0] * a[1] for a, c in shapes)
    # positions = the original indices: a crop from the origin holding every pixel of the mask,
    # i.e. the flood of the whole image
    monkeypatch.setattr(microglia, "_compact_grid", lambda rows, cols: (rows, cols))
    for f, lab in zip(fields, compact):
        assert np.array_equal(lab, microglia.segment_microglia(f[1], PX))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dominant_maxima_on_the_compact_grid_equal_the_whole_image(seed: int) -> None:
    # blobs with ties (rounded values) cut by empty bands of rows and columns one to 40 wide:
    # on the compact grid each band is one empty row / column, so blobs on either side stay apart
    rng = np.random.default_rng(seed)
    f = np.round(ndi.gaussian_filter(rng.normal(size=(230, 310)), 3) * 40).astype(np.float32)
    mask = f > -2
    for lo, hi in ((0, 3), (50, 51), (90, 130), (200, 205)):
        mask[lo:hi] = False
    for lo, hi in ((20, 21), (100, 140), (141, 142), (300, 310)):
        mask[:, lo:hi] = False
    comp, _ = ndi.label(mask, structure=np.ones((3, 3)))
    maxima = microglia._component_maxima(f, mask, comp, None)
    if maxima is None:  # (a plateau at the floor is a maximum: as _dominant_maxima takes them)
        maxima = local_maxima(np.where(mask, f, f[mask].min()), connectivity=2, allow_borders=True) & mask
    want, _ = microglia._dominant_maxima(f, mask, 3.0, labelled=True, want_regions=False, maxima=maxima)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    grid = (rows, cols) + microglia._compact_grid(rows, cols)
    small, _ = microglia._dominant_maxima(microglia._to_compact(f, grid), microglia._to_compact(mask, grid), 3.0,
                                          labelled=True, want_regions=False, maxima=microglia._to_compact(maxima, grid))
    assert small.shape[0] < 0.85 * f.shape[0] and small.shape[1] < 0.85 * f.shape[1]
    got = np.zeros(f.shape, small.dtype)
    got[np.ix_(rows, cols)] = small[np.ix_(grid[2], grid[3])]
    assert want.max() > 20 and np.array_equal(got, want)


def _reference_lysosomes(image, pixel_size_um, *, detection_smoothing_um=0.2, psf_sigma_um=0.1,
                         background_um=3.0, threshold_sd=(3.0, 7.0), min_area_um2=0.1, edge_fraction=0.5):
    """segment_lysosomes of a YX image as it was at e918f85 (the default ``smoothing_um``)."""
    img = np.asarray(image, dtype=np.float32)
    scales = np.array([pixel_size_um, pixel_size_um], float)
    size = tuple(2 * np.maximum(np.round(background_um / scales).astype(int), 1) + 1)
    sigma = np.maximum(detection_smoothing_um / scales, 0.5)
    signal = ndi.gaussian_filter(img, sigma)
    signal -= ndi.gaussian_filter(ndi.grey_opening(signal, size=size), background_um / scales / 2)
    sub = signal.ravel()[:: max(1, signal.size // 400_000)]
    signal -= np.median(sub)
    sd_signal = float(MAD_TO_SD * np.median(np.abs(sub - np.median(sub))))
    sd = max(noise_sd(img) * engulfment._smoothing_gain(sigma), sd_signal) or 1.0
    low, high = threshold_sd
    mask = apply_hysteresis_threshold(signal, low * sd, high * sd)
    blur = np.hypot(np.full(2, psf_sigma_um), np.maximum(detection_smoothing_um, 0.5 * scales))
    level = ndi.maximum_filter(np.where(mask, signal, -np.inf), footprint=engulfment._ellipsoid(2.0 * blur / scales))
    mask &= (signal >= edge_fraction * level) & (level >= high * sd)
    lab, nobj = ndi.label(mask)
    if nobj:
        keep = _label_sizes(lab) >= max(min_area_um2 / pixel_size_um**2, 1)
        keep[0] = False
        mask = keep[lab]
    return mask


@pytest.mark.parametrize("strip_px", [16, 97, 10_000])
def test_lysosomes_in_strips_equal_the_previous_code(fields, strip_px: int) -> None:
    for f in fields:
        want = _reference_lysosomes(f[2], PX)
        assert want.sum() > 500  # lysosomes were found
        got = engulfment.segment_lysosomes(f[2], PX, strip_px=strip_px)
        assert np.array_equal(got, want)
        # float input (read as float32, as before)
        assert np.array_equal(engulfment.segment_lysosomes(f[2].astype(float), PX, strip_px=strip_px), want)


@pytest.mark.parametrize("shape", [(5, 7), (64, 33), (301, 200), (300, 201)])
def test_noise_sd_in_strips_equals_noise_sd(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    for img in (rng.poisson(30, shape).astype(np.uint16),  # many ties: the middle values are in one bin
                rng.normal(100, 7, shape).astype(np.float32),
                np.round(rng.normal(100, 7, shape)) + np.linspace(0, 80, shape[1])):
        for strip in (1, 4, 50, 1000):
            assert engulfment._noise_sd_strips(img, strip) == noise_sd(img)


@pytest.mark.parametrize("n", [1, 2, 999, 400_000, 650_001, 1_300_000])
def test_median_and_robust_sd_without_the_gathered_copy(n: int) -> None:
    # a 2-D float32 array and a mask with n kept values: below, just above and well above the
    # robust SD's subsample of 400,000 values; negative and positive values, many ties
    rng = np.random.default_rng(n)
    w = 997
    h = -(-2 * n // w) + 1
    values = np.round(rng.normal(0.5, 3.0, (h, w)), 2).astype(np.float32)
    keep = np.zeros(h * w, bool)
    keep[rng.choice(h * w, n, replace=False)] = True
    keep = keep.reshape(h, w)
    want = microglia._median_and_robust_sd(values[keep])
    assert microglia._median_and_robust_sd_where(values, keep) == want
    assert want[0] == float(np.median(values[keep]))
    chunks = lambda: (values[r : r + 7][keep[r : r + 7]] for r in range(0, h, 7))  # noqa: E731
    assert microglia._median_of_chunks(chunks, n) == float(np.median(values[keep]))
