"""The analysed-area mask strip by strip (issue 16, memory) is the mask of the whole-image code.

``_reference_mask`` is :func:`analysis.measure.area.analysed_area_mask` as it was before the
strips (commit 0be91a2: full-size smoothed image, medians of full-size copies, the normalised
blur interpolated with dense matrices).  The new code is compared with it on phantom fields
with small strips forced, and its exact building blocks (medians from binned passes, numpy's
pairwise sum fed in pieces, smoothing and blurring of row ranges) with their whole-array
counterparts.  The interpolation of the blur is two-tap arithmetic instead of a BLAS product,
so the blurred level may differ from the old one in the last bits (BLAS itself rounds
differently with the matrix size); the masks are asserted equal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from analysis.measure import area
from analysis.sim import phantoms


def _old_normalized_blur(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted local mean of ``values`` (2-D) over the pixels with ``weights``.

    For ``sigma`` of 6 pixels or more the sums are taken over blocks of ``sigma // 3`` pixels,
    blurred at that resolution and interpolated back (the block adds ``block^2 / 12`` to the
    variance of the Gaussian, < 1 %).
    """
    w = weights.astype(float)
    fill = float(np.average(values, weights=w)) if weights.any() else float(np.mean(values))
    f = max(1, int(sigma // 3))
    if f == 1:
        num = ndi.gaussian_filter(values * w, sigma, mode="reflect")
        den = ndi.gaussian_filter(w, sigma, mode="reflect")
        return np.where(den > 1e-3, num / np.maximum(den, 1e-3), fill)
    nb = [-(-n // f) for n in values.shape]
    pad = [(0, m * f - n) for n, m in zip(values.shape, nb)]
    vw, ws = np.empty(nb), np.empty(nb)
    rows = max(1, (8 << 20) // (8 * f * nb[1] * f))  # block rows per chunk (~8 MB each)
    for b0 in range(0, nb[0], rows):
        b1 = min(nb[0], b0 + rows)
        sl = slice(b0 * f, b1 * f)
        cpad = [(0, (b1 - b0) * f - len(values[sl])), pad[1]]
        vw[b0:b1] = area._blocks(np.pad(values[sl] * w[sl], cpad), [b1 - b0, nb[1]], [f, f]).sum(axis=1).reshape(b1 - b0, -1)
        ws[b0:b1] = area._blocks(np.pad(w[sl], cpad), [b1 - b0, nb[1]], [f, f]).sum(axis=1).reshape(b1 - b0, -1)
    num = ndi.gaussian_filter(vw, sigma / f, mode="reflect")
    den = ndi.gaussian_filter(ws, sigma / f, mode="reflect")
    ok = den > 1e-3 * f * f
    coarse = np.where(ok, num / np.maximum(den, 1e-300), fill)
    # block centres (the last, partial block's centre is that of its pixels)
    at = []
    for n, m in zip(values.shape, nb):
        start = np.arange(m) * f
        at.append(start + (np.minimum(start + f, n) - start - 1) / 2.0)
    return area._interp_matrix(values.shape[0], at[0]) @ coarse @ area._interp_matrix(values.shape[1], at[1]).T


def _reference_mask(image, pixel_size_um, *, puncta=None, void_min_diameter_um=5.0, void_level=0.6,
                    void_clearance_um=1.5, block_um=1.0, neuropil_scale_um=10.0, smoothing_um=0.5):
    img = np.asarray(image)
    if img.ndim == 3:
        img = img.mean(axis=0, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be YX or ZYX, got shape {np.shape(image)}")
    if not np.issubdtype(img.dtype, np.integer):
        img = np.asarray(img, dtype=np.float64)  # (integer data stay as they are: no float copy)
    if puncta is None:
        puncta = area.detect_puncta(img, pixel_size_um)
    smooth = ndi.gaussian_filter(img, smoothing_um / pixel_size_um, mode="reflect", output=np.float64)
    alpha, beta = puncta.attrs.get("noise_alpha"), puncta.attrs.get("noise_beta")
    if alpha is None or beta is None:
        _, info = area.noise_sd_map(img, pixel_size_um, level=smooth)
        alpha, beta = info["alpha"], info["beta"]
    # (the detector's photon-transfer fit of this image is reused when the puncta carry it)
    dark = -beta / alpha if alpha > 0 else np.nan
    if not np.isfinite(dark) or dark >= np.median(smooth):
        pass
        dark = 0.0
    # diffuse level per block: lower quartile (the image is padded by reflection)
    bs = max(int(round(block_um / pixel_size_um)), 2)
    nb = [-(-n // bs) for n in img.shape]
    padded = np.pad(img, [(0, m * bs - n) for n, m in zip(img.shape, nb)], mode="reflect")
    diffuse = np.percentile(area._blocks(padded, nb, [bs, bs]), 25, axis=1).reshape(nb) - dark
    del padded
    # blocks without a punctum within the clearance
    centres = (np.stack(np.meshgrid(*[np.arange(m) for m in nb], indexing="ij"), -1).reshape(-1, 2) + 0.5) * bs - 0.5
    if len(puncta):
        dist, _ = area.cKDTree(puncta[["y", "x"]].to_numpy(float)).query(centres)
    else:
        dist = np.full(len(centres), np.inf)
    empty = (dist * pixel_size_um > void_clearance_um).reshape(nb)
    # neuropil level: a local median (dendritic shafts are a minority of the blocks), first
    # the upper quartile (not pulled down by voids covering up to half the neighbourhood),
    # then the median with the voids found filled by the neuropil level, until stable
    width = 2 * int(round(neuropil_scale_um / block_um)) + 1
    # (evaluated every ~neuropil_scale_um / 3 and interpolated in between: the level varies
    # over neuropil_scale_um, and the full filters were 3/4 of the whole quantification time
    # of a 640 x 640 field)
    step = max(1, int(round(width / 7)))
    neuropil = area._local_percentile(diffuse, 75, width, step)
    void_blocks = (diffuse < void_level * neuropil) & empty
    for _ in range(5):
        filled = np.where(void_blocks, neuropil, diffuse)
        neuropil = area._local_percentile(filled, 50, width, step)
        new = (diffuse < void_level * neuropil) & empty
        if np.array_equal(new, void_blocks):
            break
        void_blocks = new
    if not void_blocks.any():
        return np.ones(img.shape, bool)
    core = np.kron(void_blocks, np.ones((bs, bs), bool))[: img.shape[0], : img.shape[1]]
    # void borders at the half-way level between the voids and the neuropil just outside
    # them (the neuropil level is taken beyond the blurred edge: > 2 um from a first border)
    # (medians of fresh copies, partitioned in place: one full-size copy less each)
    level = float(np.median(smooth[core], overwrite_input=True))
    first = smooth < (level + float(np.median(smooth[~core], overwrite_input=True))) / 2
    margin = int(round(2.0 / pixel_size_um))
    outside = ~ndi.binary_dilation(first & ndi.binary_dilation(core, iterations=margin), iterations=margin)
    if not outside.any():
        outside = ~core
    half = _old_normalized_blur(smooth, outside, 2.0 / pixel_size_um)
    half += level  # (level + local) / 2, in place
    half /= 2
    lab, n = ndi.label(smooth < half)
    del half
    min_area = np.pi * (void_min_diameter_um / 2 / pixel_size_um) ** 2
    keep = np.bincount(lab[core], minlength=n + 1) > 0
    keep[0] = False
    voids = keep[lab]
    # fill holes (brighter specks, a punctum) smaller than a void inside voids
    holes = ndi.binary_fill_holes(voids) & ~voids
    hole_lab, n_holes = ndi.label(holes)
    small = area._label_sizes(hole_lab, n_holes + 1) < min_area
    small[0] = False
    voids |= small[hole_lab]
    lab, n = ndi.label(voids)
    big = area._label_sizes(lab, n + 1) >= min_area
    big[0] = False
    return ~big[lab]


# --------------------------------------------------------------------------- fields


def _terminal(seed: int, shape=(640, 640), snr: float = 8.0) -> np.ndarray:
    return phantoms.render_terminal_field(np.random.default_rng([16, 7, seed]), shape=shape, snr=snr).image[0]


def _synapse(seed: int, shape=(512, 512), snr: float = 8.0, px: float = 0.1) -> np.ndarray:
    return phantoms.render_synapse_field(np.random.default_rng([16, 8, seed]), shape=shape, snr=snr,
                                         pixel_size_um=px).image


FIELDS = {
    # name: (image factory, pixel size)  -- f = 3 (0.2 um), 6 (0.1 um) and 1 (0.4 um) blocks of the blur
    "terminal_0.2um": (lambda: _terminal(0), 0.2),
    "terminal_0.2um_lowsnr": (lambda: _terminal(1, (500, 700), phantoms.SNR_LEVELS["low"]), 0.2),
    "synapse_0.1um": (lambda: _synapse(0), 0.1),
    "synapse_0.1um_b": (lambda: _synapse(1, (400, 600)), 0.1),
    "synapse_0.4um": (lambda: _synapse(2, (300, 300), px=0.4), 0.4),
}


@pytest.fixture(scope="module", params=sorted(FIELDS))
def case(request) -> tuple[str, np.ndarray, float, pd.DataFrame, np.ndarray]:
    make, px = FIELDS[request.param]
    img = make()
    puncta = area.detect_puncta(img, px)
    return request.param, img, px, puncta, _reference_mask(img, px, puncta=puncta)


@pytest.mark.parametrize("strip", [None, 16, 57, 200])
def test_mask_in_strips_is_the_mask_of_the_whole_image_code(case, strip) -> None:
    name, img, px, puncta, want = case
    assert 0.005 < (~want).mean() < 0.6, name  # voids found: the comparison means something
    got = area.analysed_area_mask(img, px, puncta=puncta, strip_px=strip)
    assert got.dtype == bool and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_mask_of_float_and_stack_input_and_without_the_noise_model() -> None:
    img = _terminal(3, (300, 400)).astype(np.float32) * 0.5
    p = area.detect_puncta(img, 0.2)
    np.testing.assert_array_equal(area.analysed_area_mask(img, 0.2, puncta=p, strip_px=40), _reference_mask(img, 0.2, puncta=p))
    stack = np.stack([img, img * 1.1 + 3])
    np.testing.assert_array_equal(area.analysed_area_mask(stack, 0.2, puncta=p, strip_px=33),
                                  _reference_mask(stack, 0.2, puncta=p))
    bare = pd.DataFrame({"y": p["y"], "x": p["x"]})  # no attrs: the noise model is fitted here
    np.testing.assert_array_equal(area.analysed_area_mask(img, 0.2, puncta=bare, strip_px=50),
                                  _reference_mask(img, 0.2, puncta=bare))


def test_docstring_soma_is_found_in_strips() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    soma = (yy - 128) ** 2 + (xx - 128) ** 2 < 40**2
    centres = rng.uniform(0, 256, (300, 2))
    centres = centres[~soma[tuple(centres.astype(int).T)]]
    spots = sum(40 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 3.0) for y, x in centres)
    img = rng.poisson(np.where(soma, 5.0, 20.0) + spots) * 2.0 + 100
    want = _reference_mask(img, 0.1)
    assert abs((~want).sum() / soma.sum() - 1) < 0.1
    for strip in (10, 64, None):
        np.testing.assert_array_equal(area.analysed_area_mask(img, 0.1, strip_px=strip), want)


# --------------------------------------------------------------------------- exact building blocks


def test_exact_medians_equal_numpy() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 1000, 1001, 54321):
        v = np.round(rng.gamma(2.0, 300.0, n), 1)  # with ties
        v[: n // 3] += rng.normal(0, 1e-9, n // 3)  # and values closer than a bin
        cuts = np.sort(rng.integers(0, n + 1, 5))
        pieces = np.split(v, cuts)
        lo, hi = float(v.min()) - 10, float(v.max()) / 2  # values beyond hi go to the last bin
        got = area._exact_medians(lambda: ((p, p[p > 500]) for p in pieces), 2, lo, hi, nbins=257)
        assert got[0] == np.median(v)
        above = v[v > 500]
        assert (np.isnan(got[1]) and above.size == 0) or got[1] == np.median(above)
    w = np.array([1.0, np.nan, 3.0])
    assert np.isnan(area._exact_medians(lambda: iter([(w,)]), 1, 0.0, 4.0)[0])


@pytest.mark.parametrize("q", [75, 50, 25, 10])
def test_local_percentile_is_numpys_nearest_percentile_of_each_window(q: int) -> None:
    """The partition at numpy's own rank gives np.percentile(method="nearest") of every window,
    ties included, on the lattice (step 1: every pixel) and interpolated from it (step 3)."""
    rng = np.random.default_rng(q)
    a = rng.normal(size=(61, 47))
    a[rng.random(a.shape) < 0.2] = 0.5  # ties
    for width, step in ((9, 1), (21, 3), (5, 2)):
        h = width // 2
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(a, h, mode="symmetric"), (width, width))
        at = [np.unique(np.r_[np.arange(0, n, step), n - 1]) for n in a.shape]
        vals = np.percentile(windows[np.ix_(at[0], at[1])].reshape(len(at[0]), len(at[1]), -1), q, axis=-1,
                             method="nearest")
        if step > 1:
            vals = area._interp_matrix(a.shape[0], at[0].astype(float)) @ vals @ area._interp_matrix(
                a.shape[1], at[1].astype(float)).T
        np.testing.assert_array_equal(area._local_percentile(a, q, width, step), vals)


def test_pairwise_sum_in_pieces_equals_numpy_sum() -> None:
    rng = np.random.default_rng(4)
    for n in (0, 5, 129, 100_003, 1_234_567):
        x = rng.normal(100, 50, n) * (rng.random(n) < 0.7)
        s = area._PairwiseSum(n, leaf=1 << 12)
        for p in np.split(x, np.sort(rng.integers(0, n + 1, 17))):
            s.feed(p)
        assert s.total() == np.add.reduce(x)
    img = rng.normal(100, 50, (700, 901))
    w = (rng.random(img.shape) < 0.6).astype(float)
    s = area._PairwiseSum(img.size)
    for r0, r1 in area._row_strips(700, 33):
        s.feed(img[r0:r1] * w[r0:r1])
    assert s.total() / w.sum() == np.average(img, weights=w)


def test_rows_of_the_smoothing_and_of_the_blur_are_those_of_the_whole_image() -> None:
    rng = np.random.default_rng(5)
    img = rng.poisson(200, (301, 263)).astype(np.uint16)
    whole = ndi.gaussian_filter(img, 2.5, mode="reflect", output=np.float64)
    for r0, r1 in area._row_strips(301, 40):
        # to rounding: the filter sums in blocks of rows (a margin one row short is off by ~5e-6 of the maximum)
        np.testing.assert_allclose(area._smooth_rows(img, 2.5, r0, r1), whole[r0:r1], rtol=1e-12, atol=0)
    values = whole
    weights = rng.random(img.shape) < 0.8
    weights[100:200, 50:150] = False
    for sigma in (4.0, 10.0, 20.0):  # f = 1, 3, 6
        full = area._normalized_blur(values, weights, sigma)
        old = _old_normalized_blur(values, weights, sigma)
        # two-tap arithmetic instead of BLAS: the same up to rounding
        np.testing.assert_allclose(full, old, rtol=1e-13, atol=0)
        f = max(1, int(sigma // 3))
        nb1 = -(-img.shape[1] // f)
        vw = area._block_sums(values * weights, f, nb1)
        ws = area._block_sums(weights.astype(float), f, nb1)
        fill = float(np.average(values, weights=weights.astype(float)))
        interp = tuple(area._interp_weights(n, area._block_centres(n, f)) for n in img.shape)
        for r0, r1 in area._row_strips(301, 25, f):
            np.testing.assert_array_equal(area._blurred_rows(vw, ws, sigma, f, fill, r0, r1, interp), full[r0:r1])


def test_strips_need_less_memory_than_the_whole_image_code() -> None:
    """Peak of the numpy allocations (tracemalloc, deterministic); absolute figures in
    benchmarks/bench_memory.py."""
    import tracemalloc

    img = _terminal(0, (1024, 1024))
    p = area.detect_puncta(img, 0.2)

    def peak(fn, **kw) -> int:
        tracemalloc.start()
        fn(img, 0.2, puncta=p, **kw)
        out = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out

    new, old = peak(area.analysed_area_mask, strip_px=128), peak(_reference_mask)
    assert new < 0.35 * old, (new / img.nbytes, old / img.nbytes)
