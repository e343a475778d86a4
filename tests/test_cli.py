"""Command line: help for every command, clear errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "analysis", *args], capture_output=True, text=True)


OPTIONS = {
    "simulate": ["--out", "--preset", "--seed", "--workers", "--overwrite", "--if-empty", "small", "default"],
    "validate": ["samples", "path to samples.csv"],
    "quantify": ["--samples", "--out", "--workers", "--scheduler", "--no-cache", "--strict", "data/raw/samples.csv"],
    "fit": ["--measurements", "--out", "data/processed/measurements.parquet"],
    "report": ["--data", "--processed", "--reports", "--notebooks", "--kernel", "--only", "--workers", "--scheduler"],
}


def test_entry_point_lists_every_command() -> None:
    res = run("--help")
    assert res.returncode == 0, res.stderr
    assert "usage: python -m analysis" in res.stdout
    for command in OPTIONS:
        assert command in res.stdout


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_help_names_the_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m analysis " + command)
    for option in OPTIONS[command]:
        assert option in out, f"{option} missing from `{command} --help`"


@pytest.mark.parametrize("workers", ["0", "-2", "two"])
def test_worker_count_must_be_positive(workers: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["quantify", "--workers", workers])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--workers" in err and ">= 1" in err


def test_validate_good_sheet(small_study: Path) -> None:
    res = run("validate", str(small_study / "samples.csv"))
    assert res.returncode == 0, res.stderr
    assert "30 images of 10 animals" in res.stdout


def test_validate_bad_sheet_exits_2_with_message(small_study: Path, tmp_path: Path) -> None:
    lines = (small_study / "samples.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("animal_id")
    row = lines[1].split(",")
    row[col] = ""
    lines[1] = ",".join(row)
    bad = tmp_path / "samples.csv"
    bad.write_text("\n".join(lines) + "\n")
    (tmp_path / "images").symlink_to(small_study / "images")
    res = run("validate", str(bad))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert str(bad) in res.stderr and "line 2" in res.stderr and "animal_id" in res.stderr


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], status: int = 2) -> str:
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_samples_given_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "samples.csv").write_text("image_id\n")
    err = _error(["validate", str(tmp_path)], capsys)
    assert f"{tmp_path}: is a folder, not a sample sheet" in err and str(tmp_path / "samples.csv") in err
    err = _error(["quantify", "--samples", str(tmp_path), "--out", str(tmp_path / "out")], capsys)
    assert "is a folder, not a sample sheet" in err
    assert not (tmp_path / "out").exists()


def test_fit_rejects_what_is_not_a_measurements_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sheet = tmp_path / "samples.csv"
    sheet.write_text("image_id,path\na,b.tif\n")
    err = _error(["fit", "--measurements", str(sheet), "--out", str(tmp_path)], capsys)
    assert f"{sheet}: is not a Parquet table" in err and "quantify --samples" in err
    err = _error(["fit", "--measurements", str(tmp_path), "--out", str(tmp_path)], capsys)
    assert "is a folder, not a measurements table" in err
    err = _error(["fit", "--measurements", str(tmp_path / "none.parquet"), "--out", str(tmp_path)], capsys)
    assert "measurements table not found" in err and "python -m analysis quantify" in err
    pd.DataFrame({"image_id": ["a"], "day": [1]}).to_parquet(tmp_path / "few.parquet")
    err = _error(["fit", "--measurements", str(tmp_path / "few.parquet"), "--out", str(tmp_path)], capsys)
    assert "missing column(s) animal_id, genotype, compound" in err
    (tmp_path / "loop.parquet").symlink_to(tmp_path / "loop.parquet")
    err = _error(["fit", "--measurements", str(tmp_path / "loop.parquet"), "--out", str(tmp_path)], capsys)
    assert "loop.parquet: is a symbolic link loop" in err
    assert not list(tmp_path.glob("synapse_*.csv"))


@pytest.fixture(scope="module")
def measurements() -> pd.DataFrame:
    from analysis.sim.measurements import simulate_measurements

    return simulate_measurements("small", 1)


def test_fit_reads_case_variants_of_the_group_names(
    measurements: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = measurements.copy()
    assert (m["compound"] == "vehicle").any()
    m["compound"] = m["compound"].replace({"vehicle": " Vehicle", "diazepam": "DIAZEPAM"})
    m["genotype"] = m["genotype"].replace({"WT": "wt"})
    m.to_parquet(tmp_path / "m.parquet")
    assert main(["-q", "fit", "--measurements", str(tmp_path / "m.parquet"), "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    contrasts = pd.read_csv(tmp_path / "synapse_contrasts.csv")
    treated = contrasts[contrasts["compound"] == "diazepam"]
    assert len(treated) and treated["pct_vs_vehicle"].notna().any()
    assert set(contrasts["genotype"]) <= {"WT", "TSPO_KO"}
    assert pd.read_parquet(tmp_path / "m.parquet")["compound"].str.contains("Vehicle").any()  # input untouched


def test_fit_without_vehicle_group_says_so(
    measurements: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = measurements[measurements["compound"] != "vehicle"]
    m.to_parquet(tmp_path / "m.parquet")
    err = _error(["fit", "--measurements", str(tmp_path / "m.parquet"), "--out", str(tmp_path)], capsys)
    assert "no vehicle group" in err and "column 'compound'" in err and "diazepam" in err


@pytest.mark.parametrize(
    ("name", "phrases"),
    [("only baseline", ["only baseline synapse images", "add the later sessions"]),
     ("only vehicle", ["only vehicle synapse images", "column 'compound'"]),
     ("one animal per group", ["every group has a single animal", "column 'animal_id'"]),
     # (before: validate said valid and fit stopped with "unexpected KeyError: 'pct_vs_vehicle'")
     ("vehicle of another duration", ["no treated synapse group has vehicle animals of the same genotype and treatment_days",
                                      "vehicle: WT 56 d", "column 'treatment_days'"]),
     ("vehicle only at baseline", ["no treated synapse group has vehicle animals", "vehicle: none after the first dose"]),
     ("vehicle without baseline", ["no treated synapse group can be compared with vehicle",
                                   "WT diazepam 5 mg/kg x 7 d: it has a baseline session and its vehicle animals none",
                                   "give both groups a baseline session (day < 0) or neither", "column 'day'"])],
)
def test_fit_refuses_designs_the_model_cannot_fit(
    measurements: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, phrases: list[str]
) -> None:
    m = measurements
    m = {"only baseline": m[m.day < 0], "only vehicle": m[m.compound == "vehicle"],
         "one animal per group": m[m.animal_id.isin(m.groupby("compound").animal_id.first())],
         "vehicle of another duration": m.assign(treatment_days=m.treatment_days.where(m.compound != "vehicle", 56)),
         "vehicle only at baseline": m[(m.compound != "vehicle") | (m.day < 0)],
         "vehicle without baseline": m[(m.compound != "vehicle") | (m.day >= 0)]}[name]
    m.to_parquet(tmp_path / "m.parquet")
    err = _error(["fit", "--measurements", str(tmp_path / "m.parquet"), "--out", str(tmp_path)], capsys)
    for phrase in phrases:
        assert phrase in err
    assert not list(tmp_path.glob("synapse_*.csv"))


def test_validate_notes_what_fit_will_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "a.ome.tif", np.zeros((64, 64), np.uint16), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    (tmp_path / "samples.csv").write_text(
        "image_id,path,animal_id,genotype,compound,dose_mg_kg,treatment_days,day,pixel_size_um,"
        "synapse_channel,microglia_channel,lysosome_channel\n"
        "a,a.ome.tif,1,WT,vehicle,0,7,7,,0,,\n"
    )
    assert main(["validate", str(tmp_path / "samples.csv")]) == 0
    out = capsys.readouterr().out
    assert "1 images of 1 animals; the sheet is valid for `quantify`, but `fit` and `report` will refuse" in out
    assert "sheet is valid\n" not in out
    assert "note: `fit` will refuse" in out and "only vehicle" in out
    assert "note: no baseline synapse session (day < 0): groups are compared with vehicle at each day" in out
    assert "sessions on day 0" not in out  # (the hint is for sheets with a session on day 0)


def _sheet_of_blank_images(folder: Path, rows: list[tuple]) -> Path:
    """A sheet of ``rows`` (image_id, animal_id, genotype, compound, dose, day; 7 days of dosing),
    each image a blank 64 x 64 OME-TIFF at 0.2 um."""
    import tifffile

    for i, *_ in rows:
        tifffile.imwrite(folder / f"{i}.ome.tif", np.zeros((64, 64), np.uint16), ome=True,
                         metadata={"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    sheet = folder / "samples.csv"
    sheet.write_text(
        "image_id,path,animal_id,genotype,compound,dose_mg_kg,treatment_days,day,pixel_size_um,"
        "synapse_channel,microglia_channel,lysosome_channel\n"
        + "".join(f"{i},{i}.ome.tif,{a},{g},{c},{d},7,{day},,0,,\n" for i, a, g, c, d, day in rows))
    return sheet


def test_validate_notes_a_treated_group_without_its_vehicle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(f"v{k}", k, "WT", "vehicle", 0, 7) for k in (1, 2)] + [(f"d{k}", k + 2, "WT", "diazepam", 5, 7) for k in (1, 2)]
    rows += [(f"k{k}", k + 4, "TSPO_KO", "diazepam", 5, 7) for k in (1, 2)]
    _sheet_of_blank_images(tmp_path, rows)
    assert main(["validate", str(tmp_path / "samples.csv")]) == 0
    out = capsys.readouterr().out
    assert ("note: synapse: TSPO_KO diazepam 5 mg/kg x 7 d has no vehicle animals of its genotype and treatment_days "
            "imaged on the same day: it gets no contrast with vehicle") in out
    assert "WT diazepam 5 mg/kg x 7 d has no" not in out and "will refuse" not in out and "sheet is valid\n" in out


def test_fit_with_no_measured_image(measurements: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = measurements.assign(puncta_density_per_100um2=np.nan)
    m.to_parquet(tmp_path / "m.parquet")
    err = _error(["fit", "--measurements", str(tmp_path / "m.parquet"), "--out", str(tmp_path)], capsys)
    assert "nothing to fit" in err and "failures.csv" in err


def test_symlink_loop_image_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "loop.tif").symlink_to(tmp_path / "loop.tif")
    (tmp_path / "samples.csv").write_text(
        "image_id,path,animal_id,genotype,compound,dose_mg_kg,treatment_days,day,pixel_size_um,"
        "synapse_channel,microglia_channel,lysosome_channel\n"
        "a,loop.tif,1,WT,vehicle,0,7,7,0.1,0,,\n"
    )
    err = _error(["validate", str(tmp_path / "samples.csv")], capsys)
    assert "line 2, column 'path'" in err and "loop.tif is a symbolic link loop" in err


def test_os_errors_are_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis.io

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.csv"))

    monkeypatch.setattr(analysis.io, "load_samples", deny)
    err = _error(["validate", str(tmp_path / "x.csv")], capsys)
    assert f"{tmp_path / 'x.csv'}: Permission denied; check the permissions" in err


def test_unexpected_error_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis.io

    monkeypatch.setattr(analysis.io, "load_samples", lambda *a, **k: {}["boom"])
    err = _error(["validate", "x.csv"], capsys, status=1)
    assert "unexpected KeyError: 'boom'" in err and "--verbose" in err


def test_fit_fits_the_microglia_endpoints_from_the_cells_beside_the_measurements(
        small_quantified: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`analysis fit` checks a copy of the table; the per-cell table is still read from beside the original."""
    import shutil

    for name in ("measurements.parquet", "cells.parquet"):
        shutil.copy(small_quantified / name, tmp_path / name)
    out = tmp_path / "fit"
    assert main(["-q", "fit", "--measurements", str(tmp_path / "measurements.parquet"), "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert "microglia: " in capsys.readouterr().out
    c = pd.read_csv(out / "microglia_contrasts.csv")
    assert "microglia density (rate ratio)" in set(c["endpoint"])


def test_fit_without_baseline_compares_groups_at_each_day(
        measurements: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No session before the first dose: a cross-sectional comparison, not a refusal."""
    m = measurements[measurements.day >= 0]
    m.to_parquet(tmp_path / "m.parquet")
    assert main(["-q", "fit", "--measurements", str(tmp_path / "m.parquet"), "--out", str(tmp_path)]) == 0, \
        capsys.readouterr().err
    c = pd.read_csv(tmp_path / "synapse_contrasts.csv")
    assert c["pct_change_from_baseline"].isna().all() and c["pct_vs_vehicle"].notna().any()


def test_report_stops_before_the_notebooks_on_a_design_fit_refuses(measurements: pd.DataFrame, tmp_path: Path) -> None:
    """The report runs the checks of ``fit`` on the measurements before any model or notebook
    (before: notebook 02 stopped with KeyError 'planned' on vehicle animals of another duration)."""
    from analysis.errors import InputError
    from analysis.report.run import _check_fittable

    measurements.to_parquet(tmp_path / "ok.parquet")
    _check_fittable(tmp_path / "ok.parquet")
    m = measurements.assign(treatment_days=measurements.treatment_days.where(measurements.compound != "vehicle", 56))
    m.to_parquet(tmp_path / "m.parquet")
    with pytest.raises(InputError, match="no treated synapse group has vehicle animals of the same genotype"):
        _check_fittable(tmp_path / "m.parquet")


def test_validate_says_a_day_0_session_is_not_a_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(f"{c[0]}{a}_{d}", f"{c[0]}{a}", "WT", c, dose, d)
            for c, dose in (("vehicle", 0), ("diazepam", 5)) for a in (1, 2) for d in (0, 7)]
    _sheet_of_blank_images(tmp_path, rows)
    assert main(["validate", str(tmp_path / "samples.csv")]) == 0
    out = capsys.readouterr().out
    assert ("no baseline synapse session (day < 0)" in out
            and "sessions on day 0 count as after the first dose: a baseline imaged before it is a negative day, e.g. -1" in out)
