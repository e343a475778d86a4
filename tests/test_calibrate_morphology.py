"""The terminal-field bank of ``benchmarks/calibrate_morphology.py`` (issue 13).

The benchmark's bank stage renders and quantifies terminal fields once; its calibration
stage gives each field of a simulated study the measurement of a bank field, moved to the
field's truth.  These tests pin that move on a hand-computed case (so a change of the rule
shows) and keep the render-and-quantify path of one bank field alive.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cm():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("calibrate_morphology", ROOT / "benchmarks" / "calibrate_morphology.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def _bank() -> tuple[pd.DataFrame, pd.DataFrame]:
    fields = pd.DataFrame([{
        "bank_field": 7, "snr_level": "default", "activation": 0.5, "process_length_scale": 1.0,
        "branching_scale": 1.0, "true_microglia_per_mm2": 400.0, "engulfed_per_cell": 2.0,
        "cd68_area_fraction": 0.05, "measured_count": 6.0, "true_interior_count": 2,
        "true_mean_skeleton_length_um": 100.0, "true_mean_branch_points": 10.0}])
    cells = pd.DataFrame({"label": [1, 2], "touches_border": [False, True], "skeleton_length_um": [90.0, 120.0],
                          "branch_points": [8, 12], "engulfed_puncta": [2, 4], "cd68_area_fraction": [0.04, 0.06],
                          "bank_field": 7})
    return fields, cells


def _term(**kw) -> pd.DataFrame:
    row = {"image_id": "A", "snr_level": "default", "activation": 0.5, "process_length_scale": 0.8,
           "branching_scale": 0.9, "true_microglia_per_mm2": 300.0, "engulfed_per_cell": 3.0,
           "cd68_area_fraction": 0.1, "microglia_count": 1.0}
    row.update(kw)
    return pd.DataFrame([row])


def test_a_field_takes_the_bank_measurement_moved_to_its_truth(cm) -> None:
    fields, cells = _bank()
    true_cells = pd.DataFrame({"image_id": ["A"], "skeleton_length_um": [80.0], "branch_points": [9]})
    m, got = cm.bank_tables(fields, cells, _term(), true_cells, seed=0)
    # the count by the ratio of expected cell densities: 6 x 300 / 400
    assert m["microglia_count"].tolist() == [4.5]
    # skeleton and branch points by the ratio of the true cell means (80 / 100, 9 / 10), the
    # engulfed puncta and CD68 fraction by the ratio of the settings (3 / 2, 0.1 / 0.05)
    np.testing.assert_allclose(got["skeleton_length_um"], [72.0, 96.0])
    np.testing.assert_allclose(got["branch_points"], [7.2, 10.8])
    np.testing.assert_allclose(got["engulfed_puncta"], [3.0, 6.0])
    np.testing.assert_allclose(got["cd68_area_fraction"], [0.08, 0.12])
    # the measured cells keep the detector's border calls and get the field's image id
    assert got["touches_border"].tolist() == [False, True] and set(got["image_id"]) == {"A"}


def test_a_field_without_true_interior_cells_is_moved_by_the_settings(cm) -> None:
    fields, cells = _bank()
    none = pd.DataFrame({"image_id": pd.Series([], dtype=str), "skeleton_length_um": pd.Series([], dtype=float),
                         "branch_points": pd.Series([], dtype=int)})
    _, got = cm.bank_tables(fields, cells, _term(microglia_count=0.0), none, seed=0)
    np.testing.assert_allclose(got["skeleton_length_um"], [72.0, 96.0])  # x 0.8 / 1.0
    np.testing.assert_allclose(got["branch_points"], [7.2, 10.8])  # x 0.9 / 1.0


def test_the_match_stays_within_the_snr_level(cm) -> None:
    """Of two bank fields, the one of the field's SNR level is taken even when the other is
    nearer in every matched truth."""
    fields, cells = _bank()
    near = fields.assign(bank_field=8, snr_level="hard", process_length_scale=0.8, branching_scale=0.9,
                         true_microglia_per_mm2=300.0, measured_count=100.0)
    both = pd.concat([fields, near], ignore_index=True)
    m, _ = cm.bank_tables(both, cells, _term(), pd.DataFrame({"image_id": ["A"], "skeleton_length_um": [80.0],
                                                              "branch_points": [9]}), seed=3)
    assert m["microglia_count"].tolist() == [4.5]


def test_one_bank_field_is_rendered_and_quantified(cm, tmp_path: Path) -> None:
    design = cm._bank_design()
    assert len(design) == 224 * 2 * len(cm.BANK_SEEDS) and design["bank_field"].is_unique
    row = design[(design["snr_level"] == "default") & (design["activation"] > 0.3)].head(1)
    (tmp_path / "bank").mkdir()
    cm.bank_chunk((row, str(tmp_path / "bank" / "chunk-0000")))
    fields, cells = cm.load_bank(tmp_path)
    assert len(fields) == 1 and fields.at[0, "measured_count"] >= 1
    assert set(cm.MATCH) <= set(fields.columns)
    assert set(cm.BANK_CELL_COLUMNS) <= set(cells.columns) and len(cells) >= 1
    # the measured count is near the field's expected number of cells (0.0164 mm^2 x density)
    expected = float(row["true_microglia_per_mm2"].iloc[0]) * 640 * 640 * 0.2**2 * 1e-6
    assert abs(fields.at[0, "measured_count"] - expected) <= 3 * np.sqrt(expected) + 2
