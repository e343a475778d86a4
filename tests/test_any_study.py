"""Any study the sheet describes: microglia only, synapses only and cross-sectional.

Two variants (each report costs the suite ~25 s of notebooks, so one variant carries two
departures from the small study: no microglia channel and no baseline session).  Each variant
is cut from the session's small simulated study (its images, a different sheet) and runs
through the whole report: quantification (served from the session's cache where the channel
roles are unchanged), the model fits, every notebook the study has data for, and the index,
which names the notebooks skipped with the reason.  Model numbers of the new
designs are checked against hand computations on simulated tables.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.io.vocabulary import group_label
from analysis.report.run import run_report
from analysis.stats.models import fit_synapse_lmm, session_contrasts

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("microglia_only", "synapse_cross_sectional")


def _variant(sheet: pd.DataFrame, name: str) -> pd.DataFrame:
    terminal = sheet["microglia_channel"] != ""
    if name == "microglia_only":  # Iba1 (and CD68) fields, no synapse channel
        return sheet[terminal].assign(synapse_channel="", lysosome_channel="")
    # the PSD95 fields of the sessions after the first dose only: no baseline session, no microglia
    return sheet[~terminal & (sheet["day"].astype(int) >= 0)]


@pytest.fixture(scope="module", params=VARIANTS)
def variant_report(request: pytest.FixtureRequest, small_study: Path, small_quantified: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    raw = root / "raw"
    raw.mkdir()
    (raw / "images").symlink_to(small_study / "images")
    sheet = pd.read_csv(small_study / "samples.csv", dtype=str, keep_default_na=False)
    _variant(sheet, name).to_csv(raw / "samples.csv", index=False)
    shutil.copytree(small_quantified / "cache", root / "processed" / "cache")  # unchanged images: no re-measuring
    run_report(data_dir=raw, processed_dir=root / "processed", reports_dir=root / "reports",
               notebooks_dir=ROOT / "notebooks", workers=1,
               parameters={"snr_fields": 1, "calibration_studies": 2, "workers": 1})
    return name, root


def test_every_variant_gets_a_report_without_traceback(variant_report: tuple[str, Path]) -> None:
    name, root = variant_report
    reports = root / "reports"
    index = (reports / "index.html").read_text(encoding="utf-8")
    pages = {p.stem for p in reports.glob("*.html")} - {"index"}
    want = {"00_study_design", "01_quantify_images", "04_validation"}
    want.add("03_microglia" if name == "microglia_only" else "02_synapse_dose_duration")
    assert pages == want
    for page in [*reports.glob("*.html"), *reports.glob("audit/*.html")]:
        text = page.read_text(encoding="utf-8")
        assert "Traceback" not in text and "Error</span>" not in text, page
    skipped = {"microglia_only": ["02_synapse_dose_duration", "05_spines"],
               "synapse_cross_sectional": ["03_microglia", "05_spines"]}[name]
    for nb in skipped:
        assert f"{nb}: This study has no" in index
    assert index.count("so this notebook was not run") == len(skipped)


def test_each_variant_fits_what_it_has(variant_report: tuple[str, Path]) -> None:
    name, root = variant_report
    processed = root / "processed"
    has_synapse = (processed / "synapse_contrasts.csv").exists()
    has_microglia = (processed / "microglia_contrasts.csv").exists()
    assert has_synapse == (name != "microglia_only")
    assert has_microglia == (name == "microglia_only")
    if name == "synapse_cross_sectional":
        c = pd.read_csv(processed / "synapse_contrasts.csv")
        # every treated group with a vehicle of its genotype is compared with it (the small design
        # has no TSPO_KO vehicle: that row has no comparison)
        treated = c[(c["compound"] != "vehicle") & (c["genotype"] == "WT")]
        assert len(treated) == 3 and treated["pct_vs_vehicle"].notna().all()
        assert c.loc[c["genotype"] == "TSPO_KO", "pct_vs_vehicle"].isna().all()
        assert c["pct_change_from_baseline"].isna().all()  # no baseline session to change from
        variance = pd.read_csv(processed / "synapse_lmm_variance.csv")
        assert "one image per animal" in variance["warnings"].iloc[0]


def _cross_sectional(rng: np.random.Generator, fields: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Animals imaged once at day 7, ``fields`` images each; true group log means known."""
    means = {"vehicle": np.log(40.0), "diazepam": np.log(34.0)}
    rows = []
    for compound, mu in means.items():
        for a in range(6):
            animal = mu + rng.normal(0, 0.05)
            for f in range(fields):
                rows.append({"image_id": f"{compound}{a}_{f}", "animal_id": f"{compound}{a}", "genotype": "WT",
                             "compound": compound, "dose_mg_kg": 0.0 if compound == "vehicle" else 5.0,
                             "treatment_days": 7, "day": 7,
                             "puncta_density_per_100um2": float(np.exp(animal + rng.normal(0, 0.1)))})
    return pd.DataFrame(rows), means


def test_one_image_per_animal_is_ordinary_least_squares_of_group_means() -> None:
    m, _ = _cross_sectional(np.random.default_rng(1), fields=1)
    fit = fit_synapse_lmm(m)
    c = session_contrasts(fit).set_index("group")
    logs = np.log(m["puncta_density_per_100um2"]).groupby(m["compound"])
    diff = logs.mean()["diazepam"] - logs.mean()["vehicle"]
    row = c.loc[group_label("WT", "diazepam", 5.0, 7)]
    assert row["pct_vs_vehicle"] == pytest.approx(100 * np.expm1(diff), rel=1e-9)
    # the standard error is that of a two-sample t test with pooled variance, df = animals - groups
    var = logs.var(ddof=1)
    pooled = ((len(logs.get_group("vehicle")) - 1) * var["vehicle"] + (len(logs.get_group("diazepam")) - 1)
              * var["diazepam"]) / (len(m) - 2)
    se = np.sqrt(pooled * (1 / 6 + 1 / 6))
    from scipy import stats as sps

    t = sps.t.ppf(0.975, len(m) - 2)
    assert row["pct_vs_vehicle_ci_low"] == pytest.approx(100 * np.expm1(diff - t * se), rel=1e-9)
    assert row["p_vs_vehicle"] == pytest.approx(2 * sps.t.sf(abs(diff / se), len(m) - 2), rel=1e-6)
    assert np.isnan(row["pct_change_from_baseline"])


def test_one_image_per_animal_and_no_animal_left_for_the_variance_is_a_clear_error() -> None:
    """One animal per group, one image each: no residual df, so no standard error exists.  An
    error that says so, instead of infinite standard errors (statsmodels divides by zero), and the
    sex x treatment analysis (the cross-sectional variant's sexes alone are such designs) skipped
    with it."""
    from analysis.errors import InputError
    from analysis.stats.models import sex_differences

    m, _ = _cross_sectional(np.random.default_rng(1), fields=1)
    tiny = m[m["animal_id"].isin(["vehicle0", "diazepam0"])]
    with pytest.raises(InputError, match="2 animals for 2 model terms .*no animal is left to estimate the variance"):
        fit_synapse_lmm(tiny)
    two = m[m["animal_id"].isin(["vehicle0", "vehicle1", "diazepam0", "diazepam1"])]
    with pytest.raises(ValueError, match="(?s)the F animals alone cannot be fitted .*no animal is left"):
        sex_differences(two.assign(sex=np.where(two["animal_id"].str.endswith("0"), "F", "M")))


def test_cross_sectional_fields_are_nested_in_animals() -> None:
    m, means = _cross_sectional(np.random.default_rng(2), fields=4)
    fit = fit_synapse_lmm(m)
    assert any("cross-sectional" in w for w in fit.warnings)
    c = session_contrasts(fit).set_index("group")
    # balanced design: the cell mean is the mean of the animal means of log density
    logs = np.log(m["puncta_density_per_100um2"])
    animal = logs.groupby([m["compound"], m["animal_id"]]).mean().groupby(level=0).mean()
    row = c.loc[group_label("WT", "diazepam", 5.0, 7)]
    assert row["pct_vs_vehicle"] == pytest.approx(100 * np.expm1(animal["diazepam"] - animal["vehicle"]), rel=1e-6)
    # the df rule counts animals, not images
    assert row["df"] == 12 - 2
    truth = 100 * np.expm1(means["diazepam"] - means["vehicle"])
    assert row["pct_vs_vehicle_ci_low"] < truth < row["pct_vs_vehicle_ci_high"]


def test_the_study_names_its_own_reference_groups(tmp_path: Path) -> None:
    """A lab's control is "saline" in "C57BL/6J" mice: the analysis plan says so, the models read vehicle/WT."""
    import json

    from analysis.errors import SampleSheetError
    from analysis.io import load_samples

    rows = [{"image_id": f"i{k}", "path": f"i{k}.tif", "animal_id": f"m{k}", "genotype": "C57BL/6J",
             "compound": "Saline" if k < 2 else "diazepam", "dose_mg_kg": 0 if k < 2 else 5, "treatment_days": 7,
             "day": 7, "pixel_size_um": 0.2, "synapse_channel": 0, "microglia_channel": "", "lysosome_channel": ""}
            for k in range(4)]
    pd.DataFrame(rows).to_csv(tmp_path / "samples.csv", index=False)
    with pytest.raises(SampleSheetError, match="no vehicle group"):
        load_samples(tmp_path / "samples.csv", check_images=False)
    (tmp_path / "analysis_plan.json").write_text(json.dumps({"reference_compound": "saline",
                                                             "reference_genotype": "C57BL/6J"}))
    s = load_samples(tmp_path / "samples.csv", check_images=False)
    assert s["compound"].tolist() == ["vehicle", "vehicle", "diazepam", "diazepam"]
    assert set(s["genotype"]) == {"WT"}
    (tmp_path / "analysis_plan.json").write_text(json.dumps({"reference_compound": 3}))
    with pytest.raises(SampleSheetError, match="reference_compound must be a str"):
        load_samples(tmp_path / "samples.csv", check_images=False)


def test_a_study_of_another_compound_gets_its_trend_and_mechanism(tmp_path: Path) -> None:
    """No compound name is built in: a midazolam study fits the dose x time trend of midazolam.

    The table carries usable quality columns (per-image SNR and precision), which
    ``adjust_for_quality=False`` leaves out of the model (the adjusted fit of such a table:
    test_measurement_aware.py)."""
    from analysis.sim.measurements import simulate_measurements
    from analysis.stats.models import fit_study, quality_covariates

    m = simulate_measurements("default", 2)
    # every group of the default design with 4 of its 8 animals (both cohorts): the same tables,
    # half the fitting time
    first = m.drop_duplicates("animal_id").groupby(["genotype", "compound", "dose_mg_kg", "treatment_days"]).head(4)
    m = m[m["animal_id"].isin(first["animal_id"])].reset_index(drop=True)
    assert set(m.drop_duplicates("animal_id")["cohort"]) == {"end_of_dosing", "withdrawal"}
    m["compound"] = m["compound"].replace({"diazepam": "midazolam"})
    m["measured_snr"] = np.exp(np.random.default_rng(2).normal(np.log(7.0), 0.5, len(m)))
    m["est_precision"] = 0.9
    assert quality_covariates(m)[1]  # (usable: the fit below must leave them out on its own)
    m.to_parquet(tmp_path / "measurements.parquet")
    written = fit_study(str(tmp_path / "measurements.parquet"), str(tmp_path), primary="WT midazolam 5 mg/kg x 7 d",
                        adjust_for_quality=False)
    assert pd.read_csv(written["variance"])["quality_adjustment"].iloc[0] == "none"
    assert "covariates" not in written
    assert "trend" in written
    trend = pd.read_csv(written["trend"])
    assert set(trend["compound"]) == {"midazolam"}
    mech = pd.read_csv(written["mechanism"]).set_index("contrast")
    assert "TSPO_KO vs WT: midazolam 5 mg/kg effect (interaction)" in mech.index
    assert "WT XBD173 10 mg/kg x 7 d vs WT midazolam 5 mg/kg x 7 d (compound)" in mech.index
    c = pd.read_csv(written["contrasts"])
    assert c.loc[c["primary"].astype(bool), "group"].tolist() == ["WT midazolam 5 mg/kg x 7 d"]
