"""Power analysis with the detector's error model (analysis.sim.power, `analysis power`)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis.sim.design import PRESETS
from analysis.sim.power import design_preset, error_model, measured_table, power_table, simulate_power


def test_error_model_is_physical() -> None:
    m = error_model()
    assert set(m.index) == {"high", "default", "low", "hard"}
    # a noisier image loses more puncta: the bias falls and the scatter grows with falling SNR
    order = ["high", "default", "low", "hard"]
    assert list(m.loc[order, "snr_log_mean"]) == sorted(m["snr_log_mean"], reverse=True)
    assert m.loc["hard", "a"] < m.loc["low", "a"] < m.loc["default", "a"]
    assert m.loc["hard", "sd"] > m.loc["default", "sd"]
    assert (m["sd"] > 0).all() and (m["fields"] >= 100).all()


def test_error_model_of_the_report_density_removes_the_density_dependence() -> None:
    """The report's density (false detections subtracted) is fitted on the same bank fields as
    the density as quantified; the additive false detections made the measured/true ratio fall
    with density (b < 0: a loss of synapses is understated), the corrected density much less
    (bank of 5eed465: |b| 0.17-0.35 of the measured density's at the four SNR levels; 0.04-0.27
    in the previous bank)."""
    fp, raw = error_model("fp-corrected"), error_model("measured")
    assert error_model().equals(fp)
    assert list(fp.index) == list(raw.index)
    for col in ("snr_log_mean", "snr_log_sd", "fields"):
        assert fp[col].equals(raw[col]), col
    assert (raw["b"] < -0.03).all()
    assert (fp["b"].abs() < raw["b"].abs() / 2).all()
    # subtracting false detections lowers the density at every level
    assert (fp["a"] < raw["a"]).all()
    with pytest.raises(ValueError, match="unknown density"):
        error_model("perfect")
    with pytest.raises(ValueError, match="unknown density"):
        simulate_power("small", 1, density="perfect")


def test_measured_table_follows_the_error_model() -> None:
    model = error_model()
    t = measured_table("default", 3, model)
    assert t["measured_snr"].gt(0).all() and t["puncta_density_per_100um2"].gt(0).all()
    log_ratio = np.log(t["puncta_density_per_100um2"] / t["true_field_density"])
    for level, g in t.assign(r=log_ratio).groupby("snr_level"):
        par = model.loc[level]
        x = np.log(g["true_field_density"] / 40.0)
        expected = par["a"] + par["b"] * x.mean()
        assert g["r"].mean() == pytest.approx(expected, abs=4 * par["sd"] / np.sqrt(len(g)) + 0.01), level
        assert np.log(g["measured_snr"]).mean() == pytest.approx(par["snr_log_mean"], abs=0.02)


def test_design_preset_variants() -> None:
    name = design_preset("small", synapse_fields=3, animals_per_group=4)
    assert PRESETS[name].synapse_fields == 3 and PRESETS[name].animals_per_group == 4
    assert design_preset("small") == "small"
    with pytest.raises(ValueError, match="unknown SNR level"):
        design_preset("small", snr_mix={"great": 1.0})


def test_power_table_on_a_small_design() -> None:
    rows = simulate_power("small", 3, seed=5)
    assert set(rows["group"]) == {"WT diazepam 1 mg/kg x 7 d", "WT diazepam 5 mg/kg x 7 d", "WT XBD173 10 mg/kg x 7 d"}
    t = power_table(rows)
    head = t[t["primary"]].iloc[0]
    assert head["group"] == "WT diazepam 5 mg/kg x 7 d" and head["true_pct"] == pytest.approx(-13.0, abs=0.01)
    assert ((t["power_adjusted"] <= t["power"] + 1e-12) & t["power"].between(0, 1)).all()
    # the primary's adjusted p is its own p: equal power
    assert head["power_adjusted"] == head["power"]
    assert (t["mde_pct"] < 0).all() and (t["ci_width_pct"] > 0).all()


def test_power_table_by_hand() -> None:
    rows = pd.DataFrame({
        "group": ["g"] * 4, "true_pct": [-10.0] * 4, "pct_vs_vehicle": [-12.0, -8.0, -11.0, -2.0],
        "pct_vs_vehicle_ci_low": [-20.0, -15.0, -19.0, -9.0], "pct_vs_vehicle_ci_high": [-3.0, 0.5, -2.5, 5.5],
        "p_vs_vehicle": [0.01, 0.06, 0.02, 0.6], "p_vs_vehicle_adjusted": [0.03, 0.2, 0.04, 0.9],
        "primary": [False] * 4, "n_animals": [8] * 4, "seed": [1, 2, 3, 4]})
    t = power_table(rows).iloc[0]
    assert t["power"] == 0.5 and t["power_adjusted"] == 0.5 and t["coverage"] == 0.75
    assert t["ci_width_pct"] == pytest.approx(np.mean([17.0, 15.5, 16.5, 14.5]))


def test_power_command_line(tmp_path) -> None:
    out = tmp_path / "power.csv"
    res = subprocess.run([sys.executable, "-m", "analysis", "-q", "power", "--studies", "2", "--fields", "2",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "primary contrast WT diazepam 5 mg/kg x 7 d: power" in res.stdout
    table = pd.read_csv(out)
    assert len(table) == 10 and table["studies"].eq(2).all() and table["design"].str.contains("synapse_fields=2").all()
    bad = subprocess.run([sys.executable, "-m", "analysis", "power", "--snr-mix", "great"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "high=0.2" in bad.stderr and "Traceback" not in bad.stderr


def test_planning_notebook_records_the_power_of_the_primary_contrast(tmp_path) -> None:
    """notebooks/06_power runs under papermill with tiny parameters and records what power_table gives."""
    from pathlib import Path

    from analysis.report.run import recorded, run_notebook

    root = Path(__file__).resolve().parents[1]
    executed = run_notebook(root / "notebooks" / "06_power.ipynb", tmp_path / "06_power.ipynb",
                            {"animals_options": [4], "fields_options": [2], "studies": 3, "workers": 1, "seed": 80_000})
    rec = recorded(executed)
    preset = design_preset("default", animals_per_group=4, synapse_fields=2)
    table = power_table(simulate_power(preset, 3, seed=80_000))
    expected = float(table.loc[table["primary"], "power_adjusted"].iloc[0])
    assert rec == {"power/4 animals x 2 fields": round(expected, 4)}
