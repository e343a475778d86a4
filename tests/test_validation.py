"""Validation helpers: joins, agreement numbers, SNR accuracy and calibration against known truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.report.validation import agreement, load_ground_truth, measured_vs_true, study_preset
from analysis.sim.validation import (
    calibrate,
    calibration_study,
    calibration_summary,
    match_cells,
    microglia_accuracy,
    puncta_accuracy,
    true_pct_vs_vehicle,
    without_drug_effect,
)


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    measurements = pd.DataFrame({
        "image_id": ["s1", "s2", "t1"],
        "animal_id": ["A", "B", "A"],
        "puncta_density_per_100um2": [40.0, 30.0, 20.0],
        "microglia_count": [np.nan, np.nan, 5.0],
        "engulfed_per_cell": [np.nan, np.nan, 2.0],
        "mean_skeleton_length_um": [np.nan, np.nan, 150.0],
        "mean_branch_points": [np.nan, np.nan, 10.0],
    })
    truth = pd.DataFrame({
        "image_id": ["s1", "s2", "t1", "t2"],  # t2 failed quantification
        "readout": ["synapse", "synapse", "terminal", "terminal"],
        "snr_level": ["high", "hard", "default", "low"],
        "engulfed_per_cell": [np.nan, np.nan, 2.0, 2.0],  # a simulation parameter, not the realised truth
        "true_puncta_density_per_100um2": [38.0, 40.0, 35.0, 36.0],
        "true_microglia_count": [np.nan, np.nan, 4, 6],
        "true_engulfed_count": [np.nan, np.nan, 12, 3],
        "true_mean_skeleton_length_um": [np.nan, np.nan, 160.0, 150.0],
        "true_mean_branch_points": [np.nan, np.nan, 10.0, 9.0],
    })
    return measurements, truth


def test_measured_vs_true_joins_on_image_id_by_readout() -> None:
    m, t = _tables()
    pairs = measured_vs_true(m, t).set_index(["quantity", "image_id"])
    assert pairs.loc[("synapse_density", "s2"), ["measured", "true"]].tolist() == [30.0, 40.0]
    assert ("synapse_density", "t1") not in pairs.index  # terminal fields are their own quantity
    assert pairs.loc[("terminal_synapse_density", "t1"), "true"] == 35.0
    assert pairs.loc[("microglia_count", "t1"), ["measured", "true"]].tolist() == [5.0, 4.0]
    assert pairs.loc[("engulfed_per_cell", "t1"), ["measured", "true"]].tolist() == [2.0, 3.0]  # 12 / 4
    assert "t2" not in pairs.index.get_level_values("image_id")
    assert pairs.loc[("synapse_density", "s2"), "snr_level"] == "hard"
    assert len(pairs) == 2 + 5


def test_measured_vs_true_refuses_tables_of_another_study() -> None:
    m, t = _tables()
    with pytest.raises(ValueError, match="'s1'.*different studies"):
        measured_vs_true(m, t[t.image_id != "s1"])


def test_agreement_by_hand() -> None:
    pairs = pd.DataFrame({"quantity": "q", "snr_level": ["a", "a", "a", "b"],
                          "measured": [11.0, 21.0, 31.0, 5.0], "true": [10.0, 20.0, 30.0, 10.0]})
    a = agreement(pairs).iloc[0]
    assert a["n_images"] == 4
    assert a["mean_bias"] == pytest.approx((1 + 1 + 1 - 5) / 4)
    assert a["mean_relative_bias"] == pytest.approx((0.1 + 0.05 + 1 / 30 - 0.5) / 4)
    assert a["mean_abs_relative_error"] == pytest.approx((0.1 + 0.05 + 1 / 30 + 0.5) / 4)
    by = agreement(pairs, by=["quantity", "snr_level"]).set_index("snr_level")
    assert by.loc["a", "pearson_r"] == pytest.approx(1.0)
    assert np.isnan(by.loc["b", "pearson_r"])  # one pair: undefined, not an error


def test_ground_truth_absent_and_preset(tmp_path: Path) -> None:
    assert load_ground_truth(tmp_path) is None
    assert study_preset(tmp_path) == "small"
    (tmp_path / "study_truth.json").write_text(json.dumps({"preset": "default"}))
    assert study_preset(tmp_path) == "default"
    pd.DataFrame({"image_id": ["x"]}).to_csv(tmp_path / "ground_truth.csv", index=False)
    assert load_ground_truth(tmp_path)["image_id"].tolist() == ["x"]


def test_match_cells_by_soma_position() -> None:
    labels = np.zeros((10, 10), int)
    labels[:5, :5] = 1
    labels[5:, 5:] = 2
    cells = pd.DataFrame({"soma_y": [7.2, 1.0, 2.0, 7.0], "soma_x": [7.0, 1.4, 8.0, 6.0]})
    ri, ci = match_cells(cells, labels, 3)  # true cell 3 has no pixels: a miss
    assert sorted(zip(ri.tolist(), ci.tolist())) in ([(0, 1), (1, 0)], [(1, 0), (3, 1)])
    assert len(ri) == 2  # cells 0 and 3 compete for true cell 2, cell 2 is in the background


def test_puncta_and_microglia_accuracy_on_fresh_phantoms() -> None:
    high = puncta_accuracy(15.0, 1, 0)
    assert high["puncta_recall"] > 0.9 and high["puncta_precision"] > 0.9
    assert abs(high["puncta_count_bias"]) < 0.1
    assert high["puncta_loc_error_um"] < 0.05
    hard = puncta_accuracy(3.0, 1, 0)
    assert hard["puncta_recall"] < high["puncta_recall"]  # same field, more noise
    mg = microglia_accuracy(8.0, 1, 0)
    assert mg["microglia_interior_cells"] >= 3
    assert mg["microglia_count_f1"] > 0.8
    assert abs(mg["skeleton_length_median_rel_error"]) < 0.15


def test_true_effect_follows_the_calibrated_model() -> None:
    rows = pd.DataFrame({
        "genotype": ["WT", "TSPO_KO", "WT", "WT"],
        "compound": ["diazepam", "diazepam", "vehicle", "diazepam"],
        "dose_mg_kg": [5.0, 5.0, 0.0, 5.0],
        "treatment_days": [7, 7, 7, 7],
        "day": [7, 7, 7, 63],  # 56 days after the last dose: recovered
    })
    true = true_pct_vs_vehicle(rows)
    assert true[0] == pytest.approx(-13.0, abs=1e-6)  # the calibration anchor
    assert true[1] == 0.0 and true[2] == 0.0
    assert -1.0 < true[3] <= 0.0
    assert np.all(true_pct_vs_vehicle(rows, null=True) == 0.0)


def test_without_drug_effect_removes_only_the_drug() -> None:
    from analysis.sim.measurements import simulate_measurements

    m = simulate_measurements("small", 3)
    assert m["true_synapse_loss"].max() > 0.1
    null = without_drug_effect(m, 3)
    expected = m["true_density_per_100um2"] / (1 - m["true_synapse_loss"])
    assert np.allclose(null["true_density_per_100um2"], expected)
    assert (null["true_synapse_loss"] == 0).all()
    # new Poisson counts around the drug-free truth (about 4800 puncta in all: SE about 1.5 %)
    ratio = null["puncta_density_per_100um2"].sum() / null["true_density_per_100um2"].sum()
    assert ratio == pytest.approx(1.0, abs=0.05)
    assert not np.allclose(null["puncta_density_per_100um2"], m["puncta_density_per_100um2"])
    pd.testing.assert_frame_equal(null, without_drug_effect(m, 3))  # deterministic


def test_calibration_study_and_summary() -> None:
    one = calibration_study("small", 5)
    assert sorted(one["group"]) == ["WT XBD173 10 mg/kg x 7 d", "WT diazepam 1 mg/kg x 7 d",
                                    "WT diazepam 5 mg/kg x 7 d"]
    five = one.set_index("group").loc["WT diazepam 5 mg/kg x 7 d"]
    assert five["true_pct"] == pytest.approx(-13.0, abs=1e-6)
    assert five["covered"] == (five["ci_low"] <= -13.0 <= five["ci_high"])
    assert five["log_se"] > 0
    null = calibration_study("small", 5, null=True)
    assert (null["true_pct"] == 0).all() and null["null"].all()
    # same seeds, same rows, whatever the number of processes
    pd.testing.assert_frame_equal(calibrate("small", 2, workers=1), calibrate("small", 2, workers=2))


def test_calibration_summary_by_hand() -> None:
    df = pd.DataFrame({
        "preset": "p", "null": False, "group": "g", "seed": [1, 2, 3, 4], "true_pct": -10.0,
        "pct_vs_vehicle": [-12.0, -8.0, -20.0, -10.0], "p": [0.01, 0.2, 0.001, 0.04],
        "covered": [True, True, False, True], "converged": [True, True, True, False],
        "log_est": [-0.1, -0.2, -0.3, -0.4], "log_se": [0.1, 0.1, 0.1, 0.1], "log_true": -0.2,
    })
    s = calibration_summary(df).iloc[0]
    assert s["studies"] == 4 and s["reject_rate"] == 0.75 and s["coverage"] == 0.75
    assert s["converged"] == 0.75 and s["mean_estimate_pct"] == -12.5
    assert s["bias_in_se"] == pytest.approx((-0.25 + 0.2) / 0.1)
