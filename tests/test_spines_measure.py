"""Spine measurement (analysis.measure.spines) against synthetic dendrites with known spines.

The synthetic frames are built here: a dendrite shaft (projected cylinder, 1 um wide at
0.1 um/px) with spine heads (Gaussian blobs) on thin, dimmer necks, a background and
Gaussian noise. Positions, lengths and identities are therefore known exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.measure.matching import match_points
from analysis.measure.spines import (
    classify_spines,
    detect_spines,
    spine_density,
    trace_dendrites,
    track_spines,
)

PX = 0.1  # um per pixel
REAL = Path(__file__).parents[2] / "shared" / "realdata" / "spines_2p"


def _segment(yy, xx, y0, x0, y1, x1):
    """Distance of every pixel to the segment (y0, x0)-(y1, x1)."""
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx), 0, 1)
    return np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))


def make_dendrite(seed=0, shape=(160, 320), n_spines=12, shaft_radius_px=5.0, noise=4.0,
                  x_range=(30, 290), tilt=0.12, skip=(), jitter_px=0.0, neck_range_px=(4, 10),
                  head_range_px=(2.5, 4.0)):
    """A tilted dendrite with spines alternating sides; returns (image, truth table, centreline length px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(float)
    x0, x1 = x_range
    yc = shape[0] / 2
    y0, y1 = yc - tilt * (x1 - x0) / 2, yc + tilt * (x1 - x0) / 2
    d = _segment(yy, xx, y0, x0, y1, x1)
    img = 120 * np.sqrt(np.clip(1 - (d / shaft_radius_px) ** 2, 0, None))
    truth = []
    xs = np.linspace(x0 + 15, x1 - 15, n_spines)
    if jitter_px:  # irregular spacing, so that the field has a unique registration
        xs = xs + rng.uniform(-jitter_px, jitter_px, n_spines)
    ux, uy = (x1 - x0), (y1 - y0)
    norm = np.hypot(ux, uy)
    ny, nx = ux / norm, -uy / norm  # unit normal
    for i, xb in enumerate(xs):
        yb = y0 + (xb - x0) * (y1 - y0) / (x1 - x0)
        side = 1 if i % 2 else -1
        neck_px = rng.uniform(*neck_range_px)
        head_r = rng.uniform(*head_range_px)
        dist = shaft_radius_px + neck_px + head_r
        hy, hx = yb + side * ny * dist, xb + side * nx * dist
        if i in skip:
            continue
        # neck: thin line from the shaft edge to the head, dimmer than the head (none if the head touches)
        dn = np.inf if neck_px <= 0 else _segment(yy, xx, yb + side * ny * shaft_radius_px * 0.8, xb + side * nx * shaft_radius_px * 0.8,
                      hy, hx)
        img += 35 * np.exp(-dn ** 2 / (2 * 0.8 ** 2))
        img = np.maximum(img, 110 * np.exp(-((yy - hy) ** 2 + (xx - hx) ** 2) / (2 * (head_r / 1.2) ** 2)))
        truth.append({"spine_id": i, "y": hy, "x": hx, "head_diameter_um": 2 * head_r * PX,
                      "neck_length_um": neck_px * PX})
    img = img + 20 + rng.normal(0, noise, shape)
    return img.astype(np.float32), pd.DataFrame(truth), float(np.hypot(x1 - x0, y1 - y0))


@pytest.fixture(scope="module")
def dendrite():
    return make_dendrite()


def test_detects_synthetic_spines_at_their_heads(dendrite):
    img, truth, _ = dendrite
    det = detect_spines(img, PX)
    assert {"y", "x", "head_diameter_um", "neck_length_um", "type", "dendrite_id", "intensity"} <= set(det.columns)
    m = match_points(det[["y", "x"]].to_numpy(), truth[["y", "x"]].to_numpy(), 5.0)
    assert m.f1 >= 0.9, (m.precision, m.recall)
    assert np.median(m.distances) < 1.5
    assert det["dendrite_id"].nunique() == 1
    assert det["type"].isin(["thin", "stubby", "mushroom", "filopodia"]).all()


def test_heads_touching_the_shaft_are_found():
    # failure mode: a small head sitting on the shaft edge (no neck), blurred by the PSF, lies
    # on the flank of the shaft's ridge; its Hessian there is elongated and the blobness cut
    # dropped it, or its blob response merged into the ridge (25 of 42 found before the shaft
    # model; 37 with the blobness measured without the shaft; 42 with the maxima taken there too)
    from scipy import ndimage as ndi

    tp = fp = fn = 0
    for seed in range(3):
        img, truth, _ = make_dendrite(seed=seed, n_spines=14, neck_range_px=(0, 0), head_range_px=(1.5, 2.5))
        img = ndi.gaussian_filter(img, 1.5)
        det = detect_spines(img, PX)
        m = match_points(det[["y", "x"]].to_numpy(), truth[["y", "x"]].to_numpy(), 5.0)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    assert tp / (tp + fn) >= 0.95, (tp, fp, fn)
    assert fp <= 2


@pytest.mark.parametrize("snr, min_recall", [("default", 0.73), ("low", 0.54)])
def test_dim_heads_near_the_shaft_of_a_simulated_session(snr, min_recall):
    # failure mode: next to the shaft, the flank of its ridge lowers a dim head's blob
    # response below the noise cut; measured without the shaft it passes. One session of the
    # project's simulator (seed 3): recall 0.703 / 0.523 (default / low SNR) before, 0.744 /
    # 0.574 after, precision 1.0 both; 0.749 / 0.554 since the offset-invariant stabilisation
    # of session 26 (this float image has its photon zero at 0, the old transform's assumption)
    from analysis.sim.spines import simulate_spine_sessions

    ses = simulate_spine_sessions(3, preset="default", snr=snr, days=[0.0], target_density_ratio=[1.0])[0]
    px = ses.info["pixel_size_um"]
    truth = ses.spines[ses.spines["in_field"]]
    det = detect_spines(ses.image, px)
    m = match_points(det[["y", "x"]].to_numpy(float), truth[["y", "x"]].to_numpy(float), 0.5 / px)
    assert m.recall >= min_recall, (m.recall, m.precision)
    assert m.precision >= 0.95


def test_a_dim_head_is_not_taken_for_the_neck_of_a_maximum_that_is_no_head():
    # failure mode: a weaker maximum on the path from a stronger one to the shaft was always
    # dropped as that maximum's neck, also when the stronger one fails the cuts itself (here an
    # elongated bar beyond a stubby head touching the shaft; on the simulator, noise maxima
    # beyond dim heads). Before: nothing found within 23 px of either; now the stubby head is
    # found and the bar (blobness below the cut) is not
    img, truth, _ = make_dendrite(seed=11, n_spines=6)
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]].astype(float)
    x0, x1, yc = 30.0, 290.0, img.shape[0] / 2  # make_dendrite's shaft: tilt 0.12, radius 5 px
    y0, y1 = yc - 0.12 * (x1 - x0) / 2, yc + 0.12 * (x1 - x0) / 2
    norm = np.hypot(x1 - x0, y1 - y0)
    ny, nx = (x1 - x0) / norm, -(y1 - y0) / norm  # normal to the shaft
    ty, tx = (y1 - y0) / norm, (x1 - x0) / norm  # along the shaft
    xb = 0.5 * (truth.x.iloc[2] + truth.x.iloc[3])  # between two spines of the other side
    yb = y0 + (xb - x0) * (y1 - y0) / (x1 - x0)
    head = np.array([yb + ny * 7.5, xb + nx * 7.5])
    bar = np.array([yb + ny * 16.5, xb + nx * 16.5])
    u, v = (yy - bar[0]) * ty + (xx - bar[1]) * tx, (yy - bar[0]) * ny + (xx - bar[1]) * nx
    extra = np.maximum(100 * np.exp(-((yy - head[0]) ** 2 + (xx - head[1]) ** 2) / (2 * 2.2 ** 2)),
                       100 * np.exp(-u ** 2 / (2 * 5.0 ** 2) - v ** 2 / (2 * 1.2 ** 2)))
    det = detect_spines(np.maximum(img, (extra + 20).astype(np.float32)), PX)
    yx = det[["y", "x"]].to_numpy()
    assert np.hypot(*(yx - head).T).min() <= 2.0, yx.round(1).tolist()
    assert np.hypot(*(yx - bar).T).min() > 3.0
    assert match_points(yx, truth[["y", "x"]].to_numpy(), 3.0).tp == len(truth)


def test_repeat_images_at_low_snr_show_little_apparent_turnover():
    # failure mode: maxima were ranked by their raw blob response, which favours the small
    # scales where the noise is largest; a noise maximum beyond a dim head then outranked it
    # and dropped it as "the neck on its path", in one image of the pair and not the other.
    # Ranked by the response in noise sigmas: 14 / 186 (7.5 %) apparent gained + lost before,
    # 10 / 188 (5.3 %) after, on these two pairs of the project's simulator (true turnover 0).
    # A spine near the cut that dips in one image: a weaker candidate at its predicted place
    # whose response agrees with the other image's (track_spines' rescue_z) keeps the track:
    # 8 / 188 (4.3 %). Only a maximum that passes the cuts takes a weaker one on its path to
    # the shaft for its neck (a noise maximum beyond a dim head did): 5 / 188 (2.7 %). Heads
    # over the shaft (maxima along its centreline) add a few near the cut whose place along the
    # shaft moves between the two images: 8 / 185 (4.3 %); the target is 5 %
    from analysis.sim.spines import simulate_repeat_imaging

    changed = first = 0
    for seed in (0, 1):
        a, b = simulate_repeat_imaging(seed, preset="default", snr="low")
        tr = track_spines([a.image, b.image], a.info["pixel_size_um"])
        s1 = tr[tr.session == 1]
        changed += int((s1.status.isin(["gained", "lost"]) & s1.in_common_field.astype(bool)).sum())
        first += int((tr.session == 0).sum())
    assert first >= 150
    assert changed / first <= 0.05, (changed, first)


def test_a_beaded_shaft_is_traced_and_its_spines_found():
    # failure mode (real frames, e.g. the zoomed spine_image001231: nothing traced): a shaft
    # whose brightness varies along it (beads) breaks, at half of its local maximum, into
    # pieces shorter than the shortest dendrite kept (4 shaft diameters), and every piece was
    # dropped as if it were an isolated head. Pieces at least one diameter long are kept when
    # their foreground component holds 4 diameters of shaft. Before: 0 of 36 spines, no
    # centreline; after: 36 of 36, no false one, 53-54 % of the length (the gaps between the
    # beads are not traced)
    tp = fp = fn = 0
    for seed in range(3):
        img, truth, length_px = make_dendrite(seed=seed)
        xx = np.arange(img.shape[1], dtype=float)[None, :]
        img = (20 + (img - 20) * (1 + 0.5 * np.cos(2 * np.pi * xx / 40))).astype(np.float32)
        tr = trace_dendrites(img, PX)
        assert 0.45 <= tr.table["length_um"].sum() / (length_px * PX) <= 1.02
        det = detect_spines(img, PX, trace=tr)
        m = match_points(det[["y", "x"]].to_numpy(), truth[["y", "x"]].to_numpy(), 5.0)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    assert tp >= 34 and fp <= 2, (tp, fp, fn)


def test_heads_pressed_on_both_sides_of_the_shaft_are_found():
    # failure mode (real frames, e.g. 000312: marks inside a shaft mask widened by heads): heads
    # pressed against the shaft on both sides widen its mask, so its distance transform on the
    # centreline, taken as the local shaft radius, pushed the nearest allowed head centre out
    # beyond the heads. The local radius is now capped at the image's shaft radius. A stretch
    # of heads alternating sides every 3 px along a shaft of radius 5 px, 5 seeds: 123 of 140
    # found before, 140 after, 2 false both
    tp = fp = fn = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:160, :320].astype(float)
        y0, y1 = 80 - 0.12 * 130, 80 + 0.12 * 130  # shaft from x = 30 to 290
        img = 120 * np.sqrt(np.clip(1 - (_segment(yy, xx, y0, 30, y1, 290) / 5.0) ** 2, 0, None))
        norm = np.hypot(260, y1 - y0)
        truth = []
        for k, xh in enumerate(np.arange(120, 203, 3.0)):
            side, hr = (1 if k % 2 else -1), rng.uniform(2.5, 3.5)
            hy = y0 + (xh - 30) * (y1 - y0) / 260 + side * (260 / norm) * (5.0 + 0.5 * hr)
            hx = xh - side * ((y1 - y0) / norm) * (5.0 + 0.5 * hr)
            img = np.maximum(img, 110 * np.exp(-((yy - hy) ** 2 + (xx - hx) ** 2) / (2 * (hr / 1.2) ** 2)))
            truth.append((hy, hx))
        img = (img + 20 + rng.normal(0, 4.0, img.shape)).astype(np.float32)
        m = match_points(detect_spines(img, PX)[["y", "x"]].to_numpy(), np.array(truth), 4.0)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    assert tp >= 0.97 * (tp + fn) and fp <= 3, (tp, fp, fn)


def test_a_maximum_significant_at_one_scale_only_is_no_head():
    # failure mode (real frames, zoomed spine_image*: resampled pixel texture beside the
    # shaft, precision 0.37): a bright single pixel passes the noise cut of the smallest head
    # radius and nothing else; a head is a blob over a range of scales and passes it at a
    # neighbouring head radius too. Single-pixel spikes of 10 noise sigmas between the spines,
    # 11 px from the centreline, 3 seeds: 10 of 21 taken for heads before, 0 after; all 24
    # spines found both
    tp = fn = spikes_found = n_spikes = 0
    for seed in range(3):
        img, truth, _ = make_dendrite(seed=seed, n_spines=8)
        x0, x1, yc = 30.0, 290.0, img.shape[0] / 2  # make_dendrite's shaft: tilt 0.12
        y0, y1 = yc - 0.12 * (x1 - x0) / 2, yc + 0.12 * (x1 - x0) / 2
        norm = np.hypot(x1 - x0, y1 - y0)
        ny, nx = (x1 - x0) / norm, -(y1 - y0) / norm  # normal to the shaft
        spikes = []
        for k in range(len(truth) - 1):
            xb = 0.5 * (truth.x.iloc[k] + truth.x.iloc[k + 1])
            yb = y0 + (xb - x0) * (y1 - y0) / (x1 - x0)
            side = 1 if k % 2 else -1
            iy, ix = int(round(yb + side * ny * 11)), int(round(xb + side * nx * 11))
            img[iy, ix] += 40.0  # noise sigma 4
            spikes.append((iy, ix))
        yx = detect_spines(img, PX)[["y", "x"]].to_numpy()
        m = match_points(yx, truth[["y", "x"]].to_numpy(), 5.0)
        tp, fn = tp + m.tp, fn + m.fn
        spikes_found += match_points(yx, np.array(spikes, float), 3.0).tp
        n_spikes += len(spikes)
    assert n_spikes == 21 and fn == 0, (tp, fn)
    assert spikes_found <= 1, (spikes_found, n_spikes)


def _dim_heads_beside(seed, amplitude, texture=0.0, period_px=12.0, n=12):
    """make_dendrite's shaft without spines (noise 1: a shaft of ~100 x the noise), its
    brightness modulated along x by +-``texture`` with ``period_px``, and ``n`` round heads of
    ``amplitude`` (sigma 2 px) 8.5 px beside the shaft's edge, alternating sides."""
    img, _, _ = make_dendrite(seed=seed, n_spines=0, noise=1.0)
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]].astype(float)
    if texture:
        img = 20 + (img - 20) * (1 + texture * np.sin(2 * np.pi * xx / period_px))
    x0, x1, yc = 30.0, 290.0, img.shape[0] / 2  # make_dendrite's shaft: tilt 0.12, radius 5
    y0, y1 = yc - 0.12 * (x1 - x0) / 2, yc + 0.12 * (x1 - x0) / 2
    norm = np.hypot(x1 - x0, y1 - y0)
    ny, nx = (x1 - x0) / norm, -(y1 - y0) / norm
    heads = []
    for i, xb in enumerate(np.linspace(x0 + 15, x1 - 15, n)):
        yb = y0 + (xb - x0) * (y1 - y0) / (x1 - x0)
        side = 1 if i % 2 else -1
        hy, hx = yb + side * ny * 13.5, xb + side * nx * 13.5
        img = img + amplitude * np.exp(-((yy - hy) ** 2 + (xx - hx) ** 2) / (2 * 2.0 ** 2))
        heads.append((hy, hx))
    return img.astype(np.float32), np.array(heads)


def test_dim_heads_beside_a_smooth_shaft_are_found():
    # failure mode (the simulator's thin heads at high SNR, the largest group of its misses):
    # a head significant against the noise but dimmer than a fixed 5 % of the shaft beside it
    # was cut by the shaft-contrast term. The floor is now the shafts' own relative variation
    # along their length, measured on the image (here ~0.3 %, so the 1 % minimum). Heads of
    # 3-4 % of the shaft's brightness, 3 seeds: 0 of 36 found with the fixed 0.05, 35-36 now
    tp = fp = 0
    for seed in range(3):
        img, heads = _dim_heads_beside(seed, 3.5)
        m = match_points(detect_spines(img, PX)[["y", "x"]].to_numpy(), heads, 5.0)
        tp, fp = tp + m.tp, fp + m.fp
        assert match_points(detect_spines(img, PX, min_shaft_contrast=0.05)[["y", "x"]].to_numpy(), heads, 5.0).tp == 0
    assert tp >= 34 and fp == 0, (tp, fp)


def test_the_shaft_contrast_floor_is_the_shafts_own_variation():
    # a smooth shaft varies by its noise only (the 1 % minimum); one whose brightness varies by
    # +-10 % along it (a sine of 2.4 shaft radii: robust sigma ~0.1 over its running median)
    # reads about that, and heads of ~6 % of the shaft beside it are within the shaft's own
    # variation, so none is taken (the fixed 0.05 takes 3 of 36)
    from scipy import ndimage as ndi

    from analysis.measure.spines import MIN_SHAFT_CONTRAST, _shaft_variation

    smooth, _ = _dim_heads_beside(0, 0.0)
    textured, _ = _dim_heads_beside(0, 0.0, texture=0.1)
    for img, lo, hi in ((smooth, MIN_SHAFT_CONTRAST, MIN_SHAFT_CONTRAST), (textured, 0.06, 0.12)):
        tr = trace_dendrites(img, PX)
        assert lo <= _shaft_variation(ndi.gaussian_filter(img - tr.background, 1.0), tr) <= hi
    found = 0
    for seed in range(3):
        img, heads = _dim_heads_beside(seed, 6.0, texture=0.1)
        found += len(detect_spines(img, PX))
    assert found == 0
    # a shaft saturated at the top of the range (real 8-bit frames: 80-90 % of some frames'
    # centrelines at 255) shows no variation of its own: the fallback, not the 1 % minimum
    from analysis.measure.spines import FALLBACK_SHAFT_CONTRAST

    clipped = np.minimum(smooth, 80.0)
    tr = trace_dendrites(clipped, PX)
    sm = ndi.gaussian_filter(clipped - tr.background, 1.0)
    assert _shaft_variation(sm, tr, unclipped=clipped < 80.0) == FALLBACK_SHAFT_CONTRAST
    assert _shaft_variation(sm, tr) == MIN_SHAFT_CONTRAST
    # and the detector uses the fallback there: heads of ~4 % of the clipped shaft are cut as
    # with the fixed 0.05 (all 36 found with the 1 % minimum)
    img, heads = _dim_heads_beside(0, 3.0)
    img = np.minimum(img, np.float32(80.0))
    assert match_points(detect_spines(img, PX)[["y", "x"]].to_numpy(), heads, 5.0).tp == 0
    assert match_points(detect_spines(img, PX, min_shaft_contrast=MIN_SHAFT_CONTRAST)[["y", "x"]].to_numpy(),
                        heads, 5.0).tp >= 11


def test_a_head_over_the_shaft_is_found_as_a_maximum_along_its_centreline():
    # failure mode (real frames, ~500 marks on the shaft core without a candidate): a head in
    # a focal plane above or below the shaft shows as a brighter spot on the shaft, inside
    # the nearest allowed head centre and merged into the shaft's ridge. A maximum of the
    # shaft's brightness along its centreline, k_sigma robust sigmas above the running median,
    # is now a head. Spots of a third of the shaft's brightness (head radius 3 px) between the
    # side spines, 3 seeds: 0 of 12 found before, 12 after; no false one on the plain shafts,
    # all 24 side spines found both
    from analysis.measure.spines import _centreline_maxima, _stabilise

    found = n_spots = side_tp = 0
    for seed in range(3):
        img, truth, _ = make_dendrite(seed=seed, n_spines=8)
        plain = detect_spines(img, PX)
        assert match_points(plain[["y", "x"]].to_numpy(), truth[["y", "x"]].to_numpy(), 5.0).fp == 0
        yy, xx = np.mgrid[:img.shape[0], :img.shape[1]].astype(float)
        x0, x1, yc = 30.0, 290.0, img.shape[0] / 2  # make_dendrite's shaft: tilt 0.12
        y0, y1 = yc - 0.12 * (x1 - x0) / 2, yc + 0.12 * (x1 - x0) / 2
        spots = []
        for k in range(0, len(truth) - 1, 2):
            xb = 0.5 * (truth.x.iloc[k] + truth.x.iloc[k + 1])
            yb = y0 + (xb - x0) * (y1 - y0) / (x1 - x0)
            img = img + 40.0 * np.exp(-((yy - yb) ** 2 + (xx - xb) ** 2) / (2 * 2.5 ** 2))
            spots.append((yb, xb))
        yx = detect_spines(img.astype(np.float32), PX)[["y", "x"]].to_numpy()
        side_tp += match_points(yx, truth[["y", "x"]].to_numpy(), 5.0).tp
        found += match_points(yx, np.array(spots), 5.0).tp
        n_spots += len(spots)
        # the centreline maxima themselves: the spots, each within 3 px
        my, mx, mz, _ = _centreline_maxima(_stabilise(img.astype(np.float32)), trace_dendrites(img, PX))
        strong = mz >= 4.0
        assert match_points(np.c_[my, mx][strong].astype(float), np.array(spots), 3.0).tp == len(spots)
    assert found == n_spots == 12 and side_tp == 24, (found, n_spots, side_tp)


def test_head_size_and_neck_length_are_in_the_right_range(dendrite):
    img, truth, _ = dendrite
    det = detect_spines(img, PX)
    m = match_points(det[["y", "x"]].to_numpy(), truth[["y", "x"]].to_numpy(), 5.0)
    d, t = det.iloc[m.pairs[:, 0]], truth.iloc[m.pairs[:, 1]]
    # FWHM of the head vs its true diameter (blob sigma = r / 1.2 -> FWHM = 1.96 r)
    ratio = d["head_diameter_um"].to_numpy() / t["head_diameter_um"].to_numpy()
    assert 0.6 < np.median(ratio) < 1.6
    err = d["neck_length_um"].to_numpy() - t["neck_length_um"].to_numpy()
    assert np.median(np.abs(err)) < 0.4


def test_dendrite_length_matches_the_centreline(dendrite):
    img, _, length_px = dendrite
    tr = trace_dendrites(img, PX)
    assert len(tr.table) == 1
    # the skeleton stops about one radius short of each end
    assert tr.table["length_um"].iloc[0] == pytest.approx(length_px * PX, rel=0.1)
    assert tr.table["shaft_diameter_um"].iloc[0] == pytest.approx(1.0, rel=0.35)
    assert set(tr.centreline.columns) == {"dendrite_id", "y", "x"}
    assert tr.labels.max() == 1


def test_centreline_length_is_unbiased_over_directions():
    # failure mode: counting 1 per axial and sqrt(2) per diagonal step overestimates the length
    # of oblique centrelines (5.5 % averaged over directions), so densities per um came out
    # low; Kulpa's weights are unbiased on average (1 / sqrt(2) gave a mean ratio of 1.053)
    from skimage.draw import line

    from analysis.measure.spines import _skeleton_length_px

    ratios = []
    for ang in np.radians(np.arange(0, 180, 7.5)):
        img = np.zeros((401, 401), bool)
        dy, dx = 180 * np.sin(ang), 180 * np.cos(ang)
        rr, cc = line(int(round(200 - dy)), int(round(200 - dx)), int(round(200 + dy)), int(round(200 + dx)))
        img[rr, cc] = True
        true_len = np.hypot(rr[-1] - rr[0], cc[-1] - cc[0])
        ratios.append(_skeleton_length_px(img, img.astype(int), 1)[1] / true_len)
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.01)
    assert 0.94 < min(ratios) and max(ratios) < 1.06


def test_density_per_um(dendrite):
    img, truth, length_px = dendrite
    tr = trace_dendrites(img, PX)
    det = detect_spines(img, PX, trace=tr)
    dens = spine_density(det, tr)
    true_density = len(truth) / (length_px * PX)
    assert dens["spines_per_um"].iloc[0] == pytest.approx(true_density, rel=0.15)


def test_type_rules_on_constructed_spines():
    # length = neck + head; Risher et al. 2014: > 2 um filopodia, head > 0.6 um mushroom,
    # length > 1 um or length / head > 1 thin, else stubby
    head = [0.4, 0.8, 0.4, 0.3, 0.5, 0.7, 0.5]
    neck = [0.0, 0.5, 0.8, 2.5, 0.2, 1.5, 0.0]
    assert classify_spines(head, neck).tolist() == [
        "stubby", "mushroom", "thin", "filopodia", "thin", "filopodia", "stubby"]
    # the 2 um length boundary and the 0.6 um head boundary
    assert classify_spines([0.7, 0.7], [1.2, 1.4]).tolist() == ["mushroom", "filopodia"]
    assert classify_spines([0.6, 0.61], [0.3, 0.3]).tolist() == ["thin", "mushroom"]


def test_track_shifted_copy_is_all_stable_with_the_shift():
    img, truth, _ = make_dendrite(seed=3, shape=(180, 340))
    shifted = np.roll(img, (6, -9), axis=(0, 1))
    tr = track_spines([img, shifted], PX)
    assert set(tr["status"]) == {"stable"}
    s0, s1 = tr[tr.session == 0], tr[tr.session == 1]
    assert len(s0) == len(s1) >= 0.9 * len(truth)
    both = s0.merge(s1, on="track_id", suffixes=("0", "1"))
    assert len(both) == len(s0)
    assert np.allclose(both["y1"] - both["y0"], 6, atol=1.0)
    assert np.allclose(both["x1"] - both["x0"], -9, atol=1.0)
    assert np.allclose(tr.attrs["shifts"][1], [-6, 9], atol=0.3)


def _turned(img: np.ndarray, deg: float, shift=(0.0, 0.0)) -> np.ndarray:
    """``img`` turned about its centre by ``deg`` and shifted: a point p lands on R (p - c) + c + shift."""
    from scipy import ndimage as ndi

    a = np.radians(deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = (np.array(img.shape) - 1) / 2
    # out[o] = img[R^T (o - c - shift) + c]
    return ndi.affine_transform(img, rot.T, offset=c - rot.T @ (c + np.asarray(shift, float)), order=1,
                                mode="constant", cval=float(np.median(img)))


@pytest.fixture(scope="module")
def simulated_field():
    from analysis.sim.spines import simulate_spine_sessions

    session = simulate_spine_sessions(0, preset="default", snr="high")[0]
    return session.image.astype(float), session.info["pixel_size_um"]


@pytest.mark.parametrize("deg", [7.0, -7.0])
def test_track_a_field_turned_by_7_degrees_is_all_stable(deg, simulated_field, caplog):
    """The same simulated field turned about its centre and shifted (a head plate remounted):
    translation-only registration called ~30 % of its spines lost and gained (103 of 145
    stable at +-7 degrees before the rotation search); now every spine but a couple at the
    turned-in corners keeps its track and the fitted rotation is the applied one."""
    img, px = simulated_field
    with caplog.at_level("WARNING", logger="analysis.measure.spines"):
        tr = track_spines([img, _turned(img, deg, (9.0, -6.0))], px)
    n0 = int((tr.session == 0).sum())
    s1 = tr[tr.session == 1]
    common = s1[s1.in_common_field.astype(bool)]
    assert n0 >= 100
    assert (common.status == "stable").sum() >= 0.95 * n0
    assert (s1.status == "lost").sum() + (common.status == "gained").sum() <= 0.03 * n0
    assert abs(abs(tr.attrs["rotation_deg"][1]) - abs(deg)) < 0.3
    assert "turned by" not in caplog.text and tr.attrs["turned_beyond_search"] == []


@pytest.mark.parametrize("deg", [20.0, -14.0])
def test_track_a_field_turned_beyond_8_degrees_is_found_by_the_extended_search(deg, simulated_field, caplog):
    """Turned by more than the first search (-8..8 degrees; a head plate remounted another way): the
    search goes on from its end and the spines stay linked, with no warning (the search used to stop
    at 8 degrees: such a field was flagged as doubtful and linked only when the point alignment
    found the rest of the rotation, in 6 of 9 simulated pairs turned 15 degrees)."""
    img, px = simulated_field
    with caplog.at_level("WARNING", logger="analysis.measure.spines"):
        tr = track_spines([img, _turned(img, deg, (5.0, 3.0))], px)
    n0 = int((tr.session == 0).sum())
    common = tr[(tr.session == 1) & tr.in_common_field.astype(bool)]
    assert (common.status == "stable").sum() >= 0.9 * n0
    assert abs(abs(tr.attrs["rotation_deg"][1]) - abs(deg)) < 0.3
    assert "turned by" not in caplog.text and tr.attrs["turned_beyond_search"] == [] == tr.attrs["unmatched_sessions"]


@pytest.mark.parametrize("deg", [40.0, 90.0, 150.0, -120.0])
def test_track_a_field_turned_by_any_angle_is_found_by_its_spectrum(deg, simulated_field, caplog):
    """Turned beyond the image search (-30..30 degrees; a stage or head plate turned another
    way for one session): the rotation of the power spectra gives the angle (modulo 180, the
    image search picks the half turn), and the spines stay linked with no warning.  Before,
    such a field was left unlinked with a warning to turn it by hand (40 degrees: correlation
    of the registered images 0.12-0.81, linked in 4 of 9 simulated pairs)."""
    img, px = simulated_field
    with caplog.at_level("WARNING", logger="analysis.measure.spines"):
        tr = track_spines([img, _turned(img, deg, (4.0, -3.0))], px)
    n0 = int((tr.session == 0).sum())
    common = tr[(tr.session == 1) & tr.in_common_field.astype(bool)]
    assert (common.status == "stable").sum() >= 0.85 * n0  # (corners turned out of the field)
    assert abs((tr.attrs["rotation_deg"][1] + deg + 180.0) % 360.0 - 180.0) < 0.3
    assert tr.attrs["turned_beyond_search"] == [] == tr.attrs["unmatched_sessions"]
    assert "turned by" not in caplog.text and "do not show" not in caplog.text


def test_an_alignment_from_the_spectra_needs_the_stricter_correlation(simulated_field, caplog, monkeypatch):
    """An alignment at the spectra's angle must pass MIN_TURNED_SESSION_CORRELATION, not the
    search's MIN_SESSION_CORRELATION: with it raised beyond any correlation, the same field turned by
    90 degrees (correlation about 1: the same pixels) is left unlinked, and the warning says why."""
    from analysis.measure import spines as spm

    monkeypatch.setattr(spm, "MIN_TURNED_SESSION_CORRELATION", 1.01)
    img, px = simulated_field
    with caplog.at_level("WARNING", logger="analysis.measure.spines"):
        tr = track_spines([img, _turned(img, 90.0)], px)
    assert tr.attrs["session_correlation"][1] > 0.9
    assert tr.attrs["unmatched_sessions"] == [1]
    assert "turned by" in caplog.text and "below 1.01" in caplog.text


def test_track_warns_when_no_angle_tried_fits(simulated_field, caplog, monkeypatch):
    """When the spectra give no better angle (here: made to give 0 and 180 degrees) a field
    turned beyond the image search ends it at its last angle: a warning says to turn the
    session by hand, and the sessions are not linked wrongly."""
    from analysis.measure import spines as spm

    monkeypatch.setattr(spm, "_spectrum_rotation", lambda ref, mov: (0.0, 180.0))
    img, px = simulated_field
    with caplog.at_level("WARNING", logger="analysis.measure.spines"):
        tr = track_spines([img, img, _turned(img, 60.0)], px)
    assert "sessions 1 and 2 are turned by 30 degrees or more" in caplog.text and "Rotate" in caplog.text
    assert tr.attrs["turned_beyond_search"] == [2]
    assert tr.attrs["unmatched_sessions"] == [2]  # not linked wrongly: the interval gives no turnover


def test_sessions_of_other_dendrites_are_not_linked(simulated_field, caplog):
    """Two images that do not show the same dendrites (other simulated positions): their spines
    used to be linked wherever the registration put them, and the interval gave made-up turnover (unrelated
    real frames: 5 and 11 spines `stable`); now nothing is linked, the session's spines are
    new tracks outside the common field, no spine is `lost`, the turnover tables skip the
    interval and a warning names the sessions.  The same field moved stays linked."""
    from analysis.measure.spines import MIN_SESSION_CORRELATION
    from analysis.sim.spines import simulate_spine_sessions
    from analysis.stats.turnover import spine_turnover

    img, px = simulated_field
    other = simulate_spine_sessions(1, preset="default", snr="high")[0].image.astype(float)
    third = simulate_spine_sessions(2, preset="default", snr="high")[0].image.astype(float)
    with caplog.at_level("WARNING", logger="analysis.measure.spines"):
        tr = track_spines([img, _turned(img, 3.0, (4.0, -5.0)), other, _turned(third, 40.0)], px)
    r = tr.attrs["session_correlation"]
    assert np.isnan(r[0]) and r[1] >= 0.8 and r[2] < MIN_SESSION_CORRELATION and r[3] < MIN_SESSION_CORRELATION
    assert tr.attrs["unmatched_sessions"] == [2, 3]
    assert "sessions 1 and 2 do not show the same dendrites" in caplog.text
    assert "sessions 2 and 3 do not show the same dendrites" in caplog.text
    s1 = tr[tr.session == 1]
    assert (s1.status == "stable").sum() >= 0.95 * (tr.session == 0).sum()
    for k in (2, 3):
        sk = tr[tr.session == k]
        assert len(sk) > 50 and (sk.status == "gained").all() and not sk.in_common_field.astype(bool).any()
        assert not set(sk.track_id) & set(tr[tr.session < k].track_id)
    t = tr.assign(animal_id="m1", field=1, genotype="WT", compound="vehicle", dose_mg_kg=0.0, treatment_days=7,
                  day=tr.session.map({0: -3, 1: 0, 2: 7, 3: 14}))
    turnover = spine_turnover(t)
    assert turnover[["from_day", "day"]].to_numpy().tolist() == [[-3, 0]]


@pytest.mark.parametrize("zoom", [1.25, 0.8])
def test_track_a_session_at_another_zoom_with_its_own_pixel_size(zoom, simulated_field):
    """The same field imaged at another zoom (its own pixel size given): it used to stop the run
    (frames of two sizes) or, at one pixel size for all, leave nothing linked; now it is resampled
    to the first session's pixels, every spine stays linked and its rows are in its own pixels."""
    from analysis.measure.spines import _resampled

    img, px = simulated_field
    tr = track_spines([img, _resampled(img, zoom)], [px, px / zoom])
    t0 = tr[tr.session == 0].set_index("track_id")
    s1 = tr[tr.session == 1]
    stable = s1[s1.status == "stable"].set_index("track_id")
    assert len(stable) >= 0.97 * len(t0) and (s1.status != "stable").sum() <= 0.03 * len(t0)
    common = t0.index.intersection(stable.index)
    err = np.hypot(stable.loc[common, "y"] - zoom * t0.loc[common, "y"], stable.loc[common, "x"] - zoom * t0.loc[common, "x"])
    assert np.median(err) < 0.2 and np.quantile(err, 0.9) < 1.0


def test_track_frames_of_two_sizes(simulated_field):
    """A later session cropped to another frame size (it stopped the run in the registration):
    its spines are linked, at their place in the cropped frame."""
    img, px = simulated_field
    tr = track_spines([img, img[30:470, 12:500]], px)
    n0 = int((tr.session == 0).sum())
    s1 = tr[tr.session == 1]
    common = s1[s1.in_common_field.astype(bool)]
    assert (common.status == "stable").sum() >= 0.8 * n0 and (common.status == "gained").sum() <= 2
    assert np.allclose(tr.attrs["shifts"][1], (30.0, 12.0), atol=0.3)


def test_track_needs_one_pixel_size_or_one_per_session(simulated_field):
    img, px = simulated_field
    with pytest.raises(ValueError, match="one per session"):
        track_spines([img, img, img], [px, px])


def test_track_two_erased_spines_are_exactly_the_two_lost():
    img, truth, _ = make_dendrite(seed=4)
    img2, truth2, _ = make_dendrite(seed=4, skip=(3, 8))
    tr = track_spines([img, img2], PX)
    lost = tr[(tr.session == 1) & (tr.status == "lost")]
    assert len(lost) == 2
    gone = truth[truth.spine_id.isin([3, 8])][["y", "x"]].to_numpy()
    m = match_points(lost[["y", "x"]].to_numpy(), gone, 3.0)
    assert m.tp == 2
    assert (tr[tr.session == 1].status == "gained").sum() == 0


def test_track_new_spine_is_gained():
    img, truth, _ = make_dendrite(seed=5, skip=(6,))
    img2, _, _ = make_dendrite(seed=5)
    tr = track_spines([img, img2], PX)
    gained = tr[tr.status == "gained"]
    assert len(gained) == 1 and (gained.session == 1).all()
    assert (tr.status == "lost").sum() == 0


def test_spines_leaving_or_entering_the_field_are_not_turnover():
    wide, truth, _ = make_dendrite(seed=6, shape=(160, 420), n_spines=18, x_range=(5, 415), tilt=0.05,
                                   jitter_px=7.0)
    a, b = wide[:, :320], wide[:, 90:410]
    tr = track_spines([a, b], PX)
    s1 = tr[tr.session == 1]
    assert (s1.status == "lost").sum() == 0  # the spines at x < 90 left the field
    entering = s1[s1.status == "gained"]
    assert len(entering) >= 2 and not entering.in_common_field.any()
    assert s1[s1.status == "stable"].in_common_field.all()
    assert (s1.status == "stable").sum() >= 0.8 * ((truth.x > 95) & (truth.x < 315)).sum()


def test_3d_input_gives_the_2d_spines_and_their_plane(dendrite):
    img, truth, _ = dendrite
    stack = np.stack([img * 0.3, img, img * 0.5]) + 0.0
    det3 = detect_spines(stack, PX)
    det2 = detect_spines(img, PX)
    assert len(det3) == len(det2)
    assert np.allclose(det3[["y", "x"]].to_numpy(), det2[["y", "x"]].to_numpy(), atol=0.5)
    assert (det3["z"] == 1).all()
    assert det2["z"].isna().all()


@pytest.mark.parametrize("bad, size, message", [
    ("nan", PX, "NaN"),
    ("4d", PX, "2-D .* or 3-D"),
    ("ok", 0.0, "pixel_size_um"),
    ("ok", 100.0, "pixel_size_um"),
    ("ok", float("nan"), "pixel_size_um"),
    ("tiny", PX, "too small"),
])
def test_bad_input_raises_a_clear_error(bad, size, message):
    img = np.zeros((64, 64), np.float32) + 10
    if bad == "nan":
        img[5, 5] = np.nan
    elif bad == "4d":
        img = np.zeros((2, 2, 32, 32))
    elif bad == "tiny":
        img = np.zeros((8, 8))
    with pytest.raises(ValueError, match=message):
        detect_spines(img, size)
    with pytest.raises(ValueError, match=message):
        trace_dendrites(img, size)


def test_track_needs_a_sequence():
    with pytest.raises(ValueError, match="sequence"):
        track_spines(np.zeros((64, 64)), PX)


def test_a_blank_session_is_linked_to_neither_neighbour(dendrite, caplog):
    # a failed acquisition in the middle of a series: before, phase correlation of an empty
    # image warned and the sessions were reported as "correlation nan"
    img, _, _ = dendrite
    with caplog.at_level("WARNING", logger="analysis.measure.spines"):
        df = track_spines([img, np.zeros_like(img), img], PX)
    assert "session 1 is blank (every pixel 0)" in caplog.text
    assert df.attrs["unmatched_sessions"] == [1, 2]
    first, last = df[df.session == 0], df[df.session == 2]
    assert len(first) >= 8 and len(last) == len(first)  # the same image: the same spines, all new
    assert (last.status == "gained").all() and not last.in_common_field.any()
    assert not (df.status == "lost").any() and not (df.session == 1).any()


def test_empty_image_has_no_spines():
    img = np.random.default_rng(0).normal(20, 2, (128, 128)).astype(np.float32)
    det = detect_spines(img, PX)
    assert len(det) <= 1


@pytest.mark.parametrize("processing", ["median 3 x 3", "gaussian 1 px", "2x linear upsampling"])
def test_pure_noise_smoothed_or_interpolated_traces_no_dendrite(processing):
    # the tracer's noise floor assumed white pixel noise (averaged down by its smoothing):
    # correlated noise traced 170-650 "dendrites" (200-400 um) with 17-172 spines on these fields
    from scipy import ndimage as ndi

    raw = (np.random.default_rng(0).poisson(20, (256, 256)) * 2 + 100).astype(float)
    px = PX
    if processing.startswith("median"):
        img = ndi.median_filter(raw, 3)
    elif processing.startswith("gaussian"):
        img = ndi.gaussian_filter(raw, 1.0)
    else:
        img, px = ndi.zoom(raw, 2, order=1), PX / 2
    tr = trace_dendrites(img.astype(np.float32), px)
    assert len(tr.table) == 0, tr.table["length_um"].sum()
    assert len(detect_spines(img.astype(np.float32), px)) == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_pure_shot_noise_on_the_finer_grid_has_no_spines(seed):
    # noise traces no dendrite, but its shaft-radius estimate (1.5 px) sent the detector to a
    # grid 2.7 x finer, traced again there: the interpolated noise gave "dendrites" and 33 / 53
    # spines on these two fields (155-168 on 512 x 512 at 0.12 um)
    img = (np.random.default_rng(seed).poisson(20, (256, 256)) * 2 + 100).astype(np.float32)
    tr = trace_dendrites(img, PX)
    assert len(tr.table) == 0
    assert len(detect_spines(img, PX)) == 0
    assert len(detect_spines(img, PX, trace=tr, return_all=True)) == 0


def _binned(img: np.ndarray, f: int) -> np.ndarray:
    """``img`` summed over f x f blocks (a camera or scan with f times larger pixels)."""
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).sum(axis=(1, 3))


@pytest.mark.parametrize("seed", [0, 3])
def test_a_coarsely_sampled_session_is_detected_on_a_finer_grid(seed, monkeypatch):
    # failure mode: at 0.24 um pixels the shaft radius is ~2 px and heads 1-2 px across; the
    # blob filter's smallest scales, the local maxima and the distance transforms were too
    # coarse there, and recall fell from 0.81 / 0.74 (0.12 um) to 0.61 / 0.56 (seeds 0 / 3).
    # Detected on a grid interpolated to 4 px per shaft radius: 0.79 / 0.72, positions on the
    # image's own grid
    import analysis.measure.spines as sp
    from analysis.sim.spines import simulate_spine_sessions

    ses = simulate_spine_sessions(seed, preset="default", snr="default", days=[0.0], target_density_ratio=[1.0])[0]
    px = ses.info["pixel_size_um"]
    truth = ses.spines[ses.spines["in_field"]][["y", "x"]].to_numpy(float)
    coarse = _binned(ses.image.astype(float), 2)

    def recall_precision(img, f):
        det = detect_spines(img, px * f)
        yx = (det[["y", "x"]].to_numpy(float) + 0.5) * f - 0.5  # back to the simulator's pixels
        m = match_points(yx, truth, 0.5 / px)
        off = np.linalg.norm(yx[m.pairs[:, 0]] - truth[m.pairs[:, 1]], axis=1) * px
        assert set(det["dendrite_id"]) <= set(trace_dendrites(img, px * f).table["dendrite_id"])
        return m.recall, m.precision, float(np.median(off))

    r1, _, _ = recall_precision(ses.image, 1)
    r2, p2, off2 = recall_precision(coarse, 2)
    assert r2 >= 0.9 * r1, (r1, r2)
    assert p2 >= 0.95 and off2 < 0.1
    monkeypatch.setattr(sp, "MIN_SHAFT_RADIUS_PX", 0.0)  # detected on the coarse grid itself
    r0, _, _ = recall_precision(coarse, 2)
    assert r0 < 0.85 * r1, (r1, r0)


def test_an_offset_added_to_every_pixel_changes_no_spine():
    # failure mode: the variance-stabilising transform clipped the noise model's intercept at
    # 0, taking 0 for the level where shot noise vanishes; a camera baseline moved that level
    # and the detector's sensitivity with it. The simulated study's uint16 images (100 above
    # the photon zero) were detected with recall 0.714 against 0.768 as float photo-electrons
    # (default SNR, seeds 0-1, session 25); seed 0: 0.814 as float, 0.738 with +1000
    from analysis.measure.spine_quality import spine_quality
    from analysis.sim.spines import simulate_spine_sessions

    ses = simulate_spine_sessions(0, preset="default", snr="default", days=[0.0], target_density_ratio=[1.0])[0]
    px = ses.info["pixel_size_um"]
    img = np.round(ses.image.astype(np.float32))
    ref = detect_spines(img, px)
    assert len(ref) > 50
    snr = spine_quality(img, px, ref, trace_dendrites(img, px), seed=[0], spike_in=False)["measured_snr"]
    for shifted in (img + 1000.0, (img + 100).astype(np.uint16), (img - np.median(img) - 50).astype(np.int16)):
        det = detect_spines(shifted, px)
        assert len(det) == len(ref)
        np.testing.assert_allclose(det[["y", "x"]].to_numpy(float), ref[["y", "x"]].to_numpy(float), atol=1e-3)
        if shifted.dtype == np.uint16:  # the image row's measured SNR too (before: 9.9 as float, 13.2 here)
            q = spine_quality(shifted, px, det, trace_dendrites(shifted, px), seed=[0], spike_in=False)
            assert q["measured_snr"] == pytest.approx(snr, rel=1e-6)


def test_an_image_below_zero_is_stabilised_from_its_darkest_level():
    # failure mode (session 26): an int16 frame with the digitiser offset subtracted (two-photon
    # acquisition software writes these; background at -50) lost every spine at low SNR: the
    # noise model's growth test and the in-focus dendrite test compared raw levels with 0
    # (seed 0, low SNR: 98 spines as photo-electrons, 0 as int16 at -50, 84 with the median
    # subtracted). Such an image's photon zero is its darkest level, wherever that lies.
    from analysis.sim.spines import simulate_spine_sessions

    ses = simulate_spine_sessions(0, preset="default", snr="low", days=[0.0], target_density_ratio=[1.0])[0]
    px = ses.info["pixel_size_um"]
    img = np.round(ses.image.astype(np.float32))
    truth = ses.spines[ses.spines["in_field"]][["y", "x"]].to_numpy(float)
    ref = detect_spines(img, px)
    at_minus_50 = detect_spines((img - np.median(img) - 50).astype(np.int16), px)
    at_median = detect_spines((img - np.median(img)).astype(np.int16), px)
    # below 0, the offset no longer matters: the same spines, wherever the background lies
    np.testing.assert_allclose(at_minus_50[["y", "x"]].to_numpy(float), at_median[["y", "x"]].to_numpy(float))
    r_ref = match_points(ref[["y", "x"]].to_numpy(float), truth, 0.5 / px).recall
    r_neg = match_points(at_minus_50[["y", "x"]].to_numpy(float), truth, 0.5 / px).recall
    assert len(ref) > 50 and r_ref > 0.5
    assert abs(len(at_minus_50) - len(ref)) <= 0.05 * len(ref)
    assert r_neg >= r_ref - 0.02, (r_neg, r_ref)


def test_a_coarse_stack_gives_the_spines_of_its_projection():
    from analysis.sim.spines import simulate_spine_sessions

    ses = simulate_spine_sessions(0, preset="default", snr="high", days=[0.0], target_density_ratio=[1.0])[0]
    plane = _binned(ses.image.astype(float), 2)
    stack = np.stack([0.3 * plane, plane, 0.5 * plane])
    px = 2 * ses.info["pixel_size_um"]
    d2, d3 = detect_spines(plane, px), detect_spines(stack, px)
    assert len(d2) > 20
    np.testing.assert_allclose(d3[["y", "x"]].to_numpy(float), d2[["y", "x"]].to_numpy(float))
    assert set(d3["z"]) == {1.0}


@pytest.mark.skipif(not REAL.exists(), reason=f"real two-photon frames not found at {REAL}")
@pytest.mark.parametrize("binning, floor", [(1, 0.5), (3, 0.55)])
def test_real_frames_f1_above_measured_floor(binning, floor):
    # binned 3x (0.12 um pixels, shaft radius ~2 px): F1 0.531 on the coarse grid itself,
    # 0.571 detected on the finer grid (session 25); 0.611 unbinned
    from skimage import io

    pts = pd.read_csv(REAL / "valid_spine_points.csv")
    names = sorted(pts.groupby("image").size().loc[lambda s: s >= 10].index)[:5]
    tp = fp = fn = 0
    for name in names:
        im = io.imread(REAL / "valid" / "images" / name)
        img = _binned((im[..., 0] if im.ndim == 3 else im).astype(np.float32), binning)
        det = detect_spines(img, 0.04 * binning)
        t = pts[pts.image == name]
        yx = (det[["y", "x"]].to_numpy(float) + 0.5) * binning - 0.5
        m = match_points(yx, t[["y_px", "x_px"]].to_numpy(), 10.0)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    assert f1 >= floor, f"F1 {f1:.3f} on {names} binned {binning}x"


def test_the_fast_filters_equal_scipys_exactly() -> None:
    """The detector's own grey opening along a line, window maximum at points and neighbourhood
    medians (session 28, for speed) give scipy's and numpy's numbers bit for bit."""
    from scipy import ndimage as ndi
    from scipy.spatial import cKDTree

    from analysis.measure.spines import (_grey_opening, _line_footprint, _neighbour_medians, _neighbour_values,
                                         _window_max)

    rng = np.random.default_rng(3)
    img = ndi.gaussian_filter(rng.normal(size=(97, 130)), 1.5)
    img[40:50, 60:70] = 1.0  # ties
    for length in (3, 16, 23):
        for k in range(24):
            fp = _line_footprint(length, k * np.pi / 24)
            assert np.array_equal(_grey_opening(img, fp), ndi.grey_opening(img, footprint=fp, mode="nearest"))
    yy, xx = rng.integers(0, 97, 200), rng.integers(0, 130, 200)
    yy[:4], xx[:4] = (0, 96, 0, 96), (0, 129, 129, 0)  # the corners
    for size in (3, 7, 11):
        want = ndi.maximum_filter(img, size, mode="nearest")[yy, xx]
        assert np.array_equal(_window_max(img, yy, xx, size), want)
        assert np.array_equal(_window_max(img, yy, xx, size, chunk=500), want)  # in chunks of a few points
    pts = np.c_[yy, xx]
    neighbours = cKDTree(pts).query_ball_point(pts, 9.0)
    vals = img[yy, xx]
    assert np.array_equal(_neighbour_medians(vals, neighbours), [np.median(vals[nb]) for nb in neighbours])
    near, count = _neighbour_values(vals, neighbours, -np.inf)
    assert np.array_equal(count, [len(nb) for nb in neighbours])
    assert np.array_equal(near.max(axis=1), [vals[nb].max() for nb in neighbours])


def test_the_fast_distances_and_openings_equal_scipys() -> None:
    """Session 45's replacements (for speed) against the scipy steps they replace, on masks
    that touch the image's edge, at radii whose squares are sums of two squares (ties at the
    disk's rim), and on an image with a crop at the edge: the same numbers bit for bit, the
    FFT Gaussian up to rounding."""
    from scipy import ndimage as ndi

    from analysis.measure.spines import (_derivative, _distance_inside, _nearest_on, _open_by_radius,
                                         _wide_gaussian)

    rng = np.random.default_rng(7)
    for k in range(12):
        mask = ndi.gaussian_filter(rng.random((61, 83)), rng.uniform(1.0, 4.0)) > 0.5
        mask[:, :3] |= k % 2 == 0  # (touching the left edge in half of them)
        if not mask.any() or mask.all():
            continue
        dt = ndi.distance_transform_edt(mask)
        for radius in (1.5, 2.0, np.sqrt(5.0), 3.2, 5.0):
            core = dt >= radius
            want = (ndi.distance_transform_edt(~core) <= radius) if core.any() else core
            assert np.array_equal(_open_by_radius(mask, radius), want)
        yy, xx = np.nonzero(mask)
        assert np.array_equal(_distance_inside(mask, yy, xx), dt[yy, xx])
        where = rng.random(mask.shape) < 0.2
        d, iy, ix = _nearest_on(mask, where)
        ref, (ry, rx) = ndi.distance_transform_edt(~mask, return_indices=True)
        asked = where | mask
        assert np.array_equal(d[asked], ref[asked])
        assert np.all(np.isinf(d[~asked]))
        # the pixel named is at that distance (the transform may name another equally near one)
        assert np.array_equal(np.hypot(iy - np.indices(mask.shape)[0], ix - np.indices(mask.shape)[1])[asked], ref[asked])
        assert mask[iy[asked], ix[asked]].all()
    img = ndi.gaussian_filter(rng.normal(size=(70, 90)), 1.0) * 50 + 100
    for axis in (0, 1):
        assert np.array_equal(_derivative(img, axis), np.gradient(img, axis=axis))
    for sigma in (6.0, 8.0, 14.0):  # (the FFT path: narrower kernels go to scipy itself)
        assert np.abs(_wide_gaussian(img, sigma) - ndi.gaussian_filter(img, sigma)).max() < 1e-10


def test_a_background_clipped_by_the_offset_keeps_its_spines():
    """A two-photon image whose offset was set above the background (most background pixels
    read 0, a common acquisition setting): the response noise was measured on the few
    background pixels above the floor, the upper tail of its noise, and read 4.3x too high;
    recall fell from 0.84 to 0.06 when 85 % of the background was at the floor.  Now the noise of
    such an image comes from the response over its shafts: recall 0.77 (measured), precision
    unchanged; the same image unclipped is detected as before (the clipped test is False)."""
    from scipy import ndimage as ndi

    from analysis.measure.spines import _clipped_background
    from analysis.sim.spines import simulate_spine_sessions

    s = simulate_spine_sessions(0, preset="default", snr="high")[0]
    px, img = s.info["pixel_size_um"], s.image.astype(np.float32)
    truth = s.spines[s.spines["in_field"]][["y", "x"]].to_numpy(float)
    tr = trace_dendrites(img, px)
    away = ~ndi.binary_dilation(tr.foreground, iterations=int(round(tr.shaft_radius_px)))
    assert not _clipped_background(img <= img.min(), away)
    clipped = np.maximum(img - np.percentile(img[~tr.foreground], 90), 0)
    assert (clipped[away] == 0).mean() > 0.8 and _clipped_background(clipped <= 0, away)
    m_raw = match_points(detect_spines(img, px)[["y", "x"]].to_numpy(float), truth, 0.5 / px)
    m_clip = match_points(detect_spines(clipped, px)[["y", "x"]].to_numpy(float), truth, 0.5 / px)
    assert m_raw.recall > 0.8 and m_raw.precision > 0.95  # (0.84, 0.99)
    assert m_clip.recall >= m_raw.recall - 0.12 and m_clip.precision > 0.95, (m_clip.recall, m_raw.recall)
    # clipped at the 95th percentile, 97.7 % of the background at the floor: 8 px solid blocks
    # took most of it for padding, the test said "not clipped" and recall fell to 0.01; the
    # block now grows as the noise lifts fewer pixels (recall 0.62, the dim heads clipped away)
    deep = np.maximum(img - np.percentile(img[~tr.foreground], 95), 0)
    assert (deep[away] == 0).mean() > 0.97 and _clipped_background(deep <= 0, away)
    m_deep = match_points(detect_spines(deep, px)[["y", "x"]].to_numpy(float), truth, 0.5 / px)
    assert m_deep.recall > 0.5 and m_deep.precision > 0.95, (m_deep.recall, m_deep.precision)


def test_padding_at_the_floor_is_not_a_clipped_background():
    """A frame padded with zeros (a crop placed on a black canvas) has most of its background at
    the floor too, but in solid blocks: its imaged background still carries the noise, so it is
    not taken for a clipped one; scattered floor pixels (clipping) are."""
    from scipy import ndimage as ndi

    from analysis.measure.spines import _clipped_background

    rng = np.random.default_rng(0)
    noise = rng.normal(10.0, 3.0, (200, 200))
    padded = noise.copy()
    padded[:, :130] = 0.0  # 65 % of the frame not imaged
    away = np.ones(noise.shape, bool)
    assert not _clipped_background(padded <= padded.min(), away)
    clipped = np.maximum(noise - np.percentile(noise, 85), 0.0)
    assert _clipped_background(clipped <= 0.0, away)
    assert not _clipped_background(noise <= noise.min(), away)
    # correlated noise (a resampled image) lifts pixels in clumps and leaves floor blocks
    # between them: still clipped, also at 97 %; its padded version is still padding
    smooth = ndi.gaussian_filter(noise, 2.0)
    for q in (90, 97):
        assert _clipped_background(smooth <= np.percentile(smooth, q), away), q
    smooth[:, :130] = smooth.min() - 1.0
    assert not _clipped_background(smooth <= smooth.min(), away)


def _tube_stack(head_plane=None, thick=False, seed=0, nz=11, shape=(64, 160), shaft_plane=5.0):
    """A shaft along x (y = 32, ``shaft_plane``) in a z-stack, optionally a head above it at x =
    100 (``head_plane``) and a stretch of thicker shaft at x = 50 (``thick``: wider in z on both
    sides); Poisson photons. Returns (stack, centreline y, x)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:nz, : shape[0], : shape[1]].astype(float)
    sz = np.where(thick & (np.abs(x - 50) <= 3), 1.8, 1.0)
    lam = 10.0 + 200.0 * np.exp(-0.5 * ((y - 32) / 3.0) ** 2 - 0.5 * ((z - shaft_plane) / sz) ** 2)
    if head_plane is not None:
        lam += 120.0 * np.exp(-0.5 * (((y - 32) / 2.0) ** 2 + ((x - 100) / 2.0) ** 2 + ((z - head_plane) / 1.0) ** 2))
    xx = np.arange(10, shape[1] - 10)
    return rng.poisson(lam).astype(float), np.full(xx.size, 32), xx


def _axial(stack, yy, xx):
    from scipy.spatial import cKDTree

    from analysis.measure.spines import _axial_excess, _noise_model, _stabilise

    flat = stack.reshape(-1, stack.shape[-1])
    vs = _stabilise(flat, _noise_model(flat)).reshape(stack.shape)
    near = cKDTree(np.c_[yy, xx]).query_ball_point(np.c_[yy, xx], 12.0)
    return _axial_excess(vs, yy, xx, near, 1.5)


@pytest.mark.parametrize("head_plane", [7.5, 2.5])
def test_a_head_above_or_below_the_shaft_is_found_in_its_plane_of_the_stack(head_plane):
    # failure mode (simulated stacks with spines in every direction): a head over or under the
    # shaft, dimmer than the shaft in the maximum projection, was found in 1 of 3 cases
    stack, yy, xx = _tube_stack(head_plane=head_plane)
    z, plane = _axial(stack, yy, xx)
    at = np.abs(xx - 100) <= 1
    assert z[at].max() > 8.0  # far above the detector's cut of 4 noise sigmas
    assert abs(plane[at][np.argmax(z[at])] - head_plane) <= 1
    assert np.abs(xx[np.argmax(z)] - 100) <= 2
    # the projection alone: the head is not brighter than the shaft there
    mip = stack.max(axis=0)
    assert mip[32, 98:103].mean() < 1.25 * np.median(mip[32, 20:90])


def test_a_thicker_stretch_of_shaft_is_not_a_head_in_the_stack():
    # both sides of the shaft rise alike: no one-sided excess (4 noise draws; the largest over
    # the ~140 centreline pixels of a plain shaft is ~2.5-3.5)
    for seed in range(4):
        stack, yy, xx = _tube_stack(thick=True, seed=seed)
        z, _ = _axial(stack, yy, xx)
        assert z.max() < 5.0, seed
        plain, _ = _axial(_tube_stack(seed=seed)[0], yy, xx)
        assert plain.max() < 4.5, seed


def test_a_shaft_centred_between_two_planes_is_not_a_head_in_the_stack():
    # failure mode (simulated stacks within 30 degrees of the plane: false heads in pairs on
    # both sides of the shaft): a shaft centred between two planes has two near-equal maxima,
    # and profiles aligned on whole planes were read one plane apart by their neighbours
    for seed in range(4):
        stack, yy, xx = _tube_stack(seed=seed, shaft_plane=4.5)
        z, _ = _axial(stack, yy, xx)
        assert z.max() < 4.5, seed


def test_stacks_find_the_heads_over_and_under_the_shaft_that_projections_miss():
    # simulated sessions with spines in every direction around the shaft (own simulator):
    # heads more than 60 degrees out of the image plane, detected on the stack and on its
    # maximum projection
    from analysis.sim.spines import simulate_spine_sessions

    found = {"stack": [0, 0, 0], "mip": [0, 0, 0]}  # steep heads found, true positives, detections
    n_steep = 0
    for seed in (0, 1):
        s = simulate_spine_sessions(seed, preset="default", snr="high", mode="stack", max_elevation_deg=90.0,
                                    days=[0.0], target_density_ratio=[1.0])[0]
        px = s.info["pixel_size_um"]
        truth = s.spines[s.spines["in_field"]]
        el = truth["spine_id"].map(s.truth.spines.set_index("spine_id")["elevation_deg"]).abs().to_numpy()
        steep = el > 60
        n_steep += int(steep.sum())
        for kind, im in (("stack", s.image), ("mip", s.image.max(axis=0))):
            det = detect_spines(im, px)
            m = match_points(det[["y", "x"]].to_numpy(float), truth[["y", "x"]].to_numpy(float), 0.5 / px)
            hit = np.zeros(len(truth), bool)
            hit[m.pairs[:, 1]] = True
            found[kind][0] += int(hit[steep].sum())
            found[kind][1] += m.tp
            found[kind][2] += len(det)
    assert n_steep > 60
    rec_stack, rec_mip = found["stack"][0] / n_steep, found["mip"][0] / n_steep
    assert rec_stack >= rec_mip + 0.15, (rec_stack, rec_mip)
    assert found["stack"][1] / found["stack"][2] >= 0.95  # precision
    assert found["stack"][1] > found["mip"][1]
