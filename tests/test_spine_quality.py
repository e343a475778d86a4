"""Per-image quality of two-photon spine images (analysis.measure.spine_quality) against truth.

The spike-in recall is compared with the recall the detector actually has on the same image
(its detections matched to the simulated or hand-built heads), and the measured SNR with the
SNR the simulator was given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.measure import spines as sp
from analysis.measure.matching import match_points
from analysis.measure.spine_quality import (
    spine_brightness,
    spine_image_snr,
    spine_quality,
    spine_spike_in_recall,
)
from test_spines_measure import PX, make_dendrite


def _session(snr: str, seed: int):
    from analysis.sim.spines import simulate_spine_sessions

    s = simulate_spine_sessions(seed, preset="default", snr=snr, days=[0.0], target_density_ratio=[1.0])[0]
    px = s.info["pixel_size_um"]
    tr = sp.trace_dendrites(s.image, px)
    det = sp.detect_spines(s.image, px, trace=tr)
    truth = s.spines[s.spines["in_field"]]
    true_recall = match_points(det[["y", "x"]].to_numpy(float), truth[["y", "x"]].to_numpy(float), 0.5 / px).recall
    return s, px, tr, det, true_recall


@pytest.fixture(scope="module")
def levels():
    """Two simulated images per SNR level, with the true recall and the spike-in's."""
    out = {}
    for snr in ("high", "low"):
        out[snr] = []
        for seed in (5, 6):
            s, px, tr, det, true_recall = _session(snr, seed)
            out[snr].append((s, px, tr, det, true_recall, spine_quality(s.image, px, det, tr, seed=1)))
    return out


@pytest.fixture(scope="module")
def high_low(levels):
    return {k: v[0][:5] for k, v in levels.items()}


def test_spike_in_recall_follows_the_true_recall_at_high_snr(levels):
    for *_, q in levels["high"] + levels["low"]:
        assert q["spike_in_recall_ci_low"] <= q["spike_in_recall"] <= q["spike_in_recall_ci_high"]
        assert q["spike_in_recall_ci_high"] - q["spike_in_recall_ci_low"] < 0.3  # >= 40 spikes
    true_high = np.mean([v[4] for v in levels["high"]])
    spike_high = np.mean([v[5]["spike_in_recall"] for v in levels["high"]])
    assert abs(spike_high - true_high) <= 0.1, (spike_high, true_high)
    # the noisy images are found worse, and the spike-in sees it (if not all of it, below)
    spike_low = np.mean([v[5]["spike_in_recall"] for v in levels["low"]])
    true_low = np.mean([v[4] for v in levels["low"]])
    assert true_high - true_low > 0.15
    assert spike_high - spike_low > 0.02, (spike_high, spike_low)


@pytest.mark.xfail(strict=True, reason="known gap: at the simulator's low SNR the brightness model of the detected "
                   "heads misses much of the faint end, and the spike-in reads ~0.1-0.2 above the true recall "
                   "(benchmarks/RESULTS.md, session 22)")
def test_spike_in_recall_follows_the_true_recall_at_low_snr(levels):
    true_low = np.mean([v[4] for v in levels["low"]])
    spike_low = np.mean([v[5]["spike_in_recall"] for v in levels["low"]])
    assert abs(spike_low - true_low) <= 0.1, (spike_low, true_low)


def test_measured_snr_scales_with_the_simulated_snr(high_low):
    snr = {k: spine_image_snr(spine_brightness(s.image, px, det, tr)) for k, (s, px, tr, det, _) in high_low.items()}
    given = {k: v[0].info["snr"] for k, v in high_low.items()}
    # the simulator's SNR is that of a reference head (0.6 um, in focus) per plane; the measured
    # one is the mean head of the image's population over the noise of the projection, so the
    # two agree within a factor (at low SNR the restored faint end is uncertain), and their ratio
    # across the levels follows the photons given (6.0)
    for k in snr:
        assert 0.5 * given[k] < snr[k] < 2.0 * given[k], (k, snr[k], given[k])
    ratio = snr["high"] / snr["low"]
    assert 0.5 * given["high"] / given["low"] < ratio < 1.5 * given["high"] / given["low"], ratio


def test_spike_in_on_hand_built_dendrites_with_more_noise():
    # a generator that is not the simulator: a projected cylinder with Gaussian heads on dim
    # necks and Gaussian noise (tests/test_spines_measure.py); at noise 4 every head is found,
    # at 62 (heads ~1.8 noise SDs per pixel) a sixth are missed, and the spike-in must say so
    rows = []
    for noise in (4.0, 62.0):
        found_true = n_true = 0
        rec = []
        for seed in range(3):
            img, truth, _ = make_dendrite(seed=seed, shape=(160, 640), n_spines=30, noise=noise, x_range=(20, 620))
            tr = sp.trace_dendrites(img, PX)
            det = sp.detect_spines(img, PX, trace=tr)
            m = match_points(det[["y", "x"]].to_numpy(float), truth[["y", "x"]].to_numpy(float), 5.0)
            found_true += m.tp
            n_true += len(truth)
            r = spine_spike_in_recall(img, PX, det, tr, seed=seed)
            rec.append((r["n_recovered"], r["n_spikes"]))
        k, n = np.sum(rec, axis=0)
        rows.append((noise, found_true / n_true, k / n, n))
    (_, true_clean, spike_clean, n1), (_, true_noisy, spike_noisy, n2) = rows
    assert n1 >= 60 and n2 >= 60, rows
    assert true_clean >= 0.95 and spike_clean >= 0.9, rows
    assert true_noisy < 0.9 and spike_noisy < 0.9, rows  # the noisy case is a real test of the spike-in
    assert abs(spike_noisy - true_noisy) <= 0.15, rows


def test_spike_in_is_deterministic_and_leaves_the_image(high_low):
    s, px, tr, det, _ = high_low["high"]
    before = s.image.copy()
    a = spine_spike_in_recall(s.image, px, det, tr, seed=[3, 4])
    b = spine_spike_in_recall(s.image, px, det, tr, seed=[3, 4])
    assert a == b
    np.testing.assert_array_equal(s.image, before)
    assert a["n_spikes"] >= 30


def test_no_spines_gives_nan_not_a_number_made_up():
    yy, xx = np.mgrid[:128, :256].astype(float)
    img = (100 * np.exp(-(yy - 64) ** 2 / (2 * 3.0 ** 2)) * ((xx > 10) & (xx < 246))
           + np.random.default_rng(0).normal(10, 1, yy.shape)).astype(np.float32)
    tr = sp.trace_dendrites(img, PX)
    det = sp.detect_spines(img, PX, trace=tr)
    assert len(det) == 0
    q = spine_quality(img, PX, det, tr)
    assert np.isnan(q["spike_in_recall"]) and np.isnan(q["measured_snr"]) and np.isnan(q["est_precision"])


def test_spine_image_rows_carry_the_quality_columns(high_low):
    from analysis.pipeline.quantify import QuantifyParams, measure_image

    s, px, *_ = high_low["high"]
    row, _ = measure_image(np.asarray(s.image)[None, None], px, {"dendrite_channel": 0})
    for col in ("measured_snr", "spike_in_recall", "spike_in_recall_ci_low", "spike_in_recall_ci_high"):
        assert np.isfinite(row[col]), (col, row[col])
    assert 0.0 < row["spike_in_recall"] <= 1.0
    off, _ = measure_image(np.asarray(s.image)[None, None], px, {"dendrite_channel": 0},
                           params=QuantifyParams(quality={"spike_in": False}))
    assert np.isnan(off["spike_in_recall"]) and off["measured_snr"] == pytest.approx(row["measured_snr"])
    assert off["spine_density_per_um"] == row["spine_density_per_um"]  # the spike-in changes no result


def test_a_clipped_background_takes_the_row_out_of_the_validated_range(high_low):
    """The offset set above the background (its 90th percentile): the detector copes, its quality
    columns are not validated there (session 30: measured SNR 7.8 against 23.7, spike-in
    recall 0.955 against a true 0.77), so the row says so; the same image unclipped does not."""
    from analysis.pipeline.quantify import QuantifyParams, measure_image
    from analysis.measure.spine_quality import background_clipped

    s, px, tr, det, _ = high_low["high"]
    img = (np.asarray(s.image, float) + 100).round().astype(np.uint16)  # as the study writes it: electrons + 100
    clipped = np.maximum(img - np.percentile(img[~tr.foreground], 90), 0).round().astype(np.uint16)
    assert not background_clipped(img, tr) and background_clipped(clipped, sp.trace_dendrites(clipped, px))
    quick = QuantifyParams(quality={"spike_in": False})
    row, _ = measure_image(img[None, None], px, {"dendrite_channel": 0}, params=quick)
    low, _ = measure_image(clipped[None, None], px, {"dendrite_channel": 0}, params=quick)
    assert row["background_clipped"] is False and row["in_validated_range"] is True
    assert low["background_clipped"] is True and low["in_validated_range"] is False
    assert low["n_spines"] > 0.7 * row["n_spines"]  # (the detector still finds the heads)


def _group_table(treated_recall: float, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(12):
        treated = i >= 6
        for day in (-3, 7):
            for field in (1, 2):
                mean = treated_recall if treated and day == 7 else 0.8
                rows.append({"image_id": f"m{i}_d{day}_f{field}", "animal_id": f"m{i}", "genotype": "WT",
                             "compound": "diazepam" if treated else "vehicle", "dose_mg_kg": 5.0 if treated else 0.0,
                             "treatment_days": 7, "day": day, "field": field, "dendrite_channel": 0,
                             "spike_in_recall": mean + 0.03 * rng.standard_normal(), "measured_snr": 12.0})
    return pd.DataFrame(rows)


def test_quality_balance_flags_a_group_imaged_worse():
    from analysis.stats.diagnostics import quality_balance

    worse = quality_balance(_group_table(0.7), scale=100.0)
    row = worse[(worse["compound"] == "diazepam") & (worse["day"] == 7)].iloc[0]
    assert row["ci_high"] < 0 and row["difference"] == pytest.approx(-10.0, abs=4.0)
    base = worse[(worse["compound"] == "diazepam") & (worse["day"] == -3)].iloc[0]
    assert base["ci_low"] < 0 < base["ci_high"]
    assert (worse["n_animals"] == 6).all()
    alike = quality_balance(_group_table(0.8, seed=1), scale=100.0)
    assert (alike["difference"].dropna().abs() < 5).all()
    assert quality_balance(_group_table(0.8).drop(columns="spike_in_recall")).empty


def test_index_quality_summary_keeps_spine_images_apart(tmp_path: Path):
    import pandas as pd

    from analysis.report.index import _quality_summary

    spines = _group_table(0.8)
    synapse = spines.drop(columns="dendrite_channel").assign(image_id=lambda d: "s" + d["image_id"],
                                                             spike_in_recall=0.95, measured_snr=8.0,
                                                             microglia_channel=np.nan)
    table = _quality_summary(pd.concat([synapse, spines], ignore_index=True))
    snr = table[table["quantity"] == "measured SNR"].set_index("images")
    assert snr.loc["longitudinal synapse fields", "median"] == "8"
    assert snr.loc["two-photon spine images", "median"] == "12"
    assert int(snr.loc["two-photon spine images", "n images"]) == len(spines)
    assert not table["quantity"].str.contains("clipped").any()
    # spine images with a clipped background are counted apart (their quality columns are not validated)
    spines["background_clipped"] = [i < 3 for i in range(len(spines))]
    table = _quality_summary(pd.concat([synapse, spines], ignore_index=True)).set_index(["images", "quantity"])
    row = table.loc[("two-photon spine images", "background clipped at the floor (quality not validated)")]
    assert row["min to max"] == f"3 of {len(spines)} images"
    assert ("longitudinal synapse fields", "background clipped at the floor (quality not validated)") not in table.index
    # and the methods' exclusions say why those rows are outside the validated range
    from analysis.report.index import _arrive_html

    spines["in_validated_range"] = ~spines["background_clipped"]
    text = " ".join(_arrive_html(tmp_path, tmp_path, spines, {}).split())
    assert "3 image(s) outside the detector's validated range (3 of them spine images with a background clipped at " \
           "the floor): flagged, kept in the models" in text
