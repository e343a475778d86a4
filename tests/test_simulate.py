"""The simulated study on disk: contract, ground truth and determinism."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from analysis.io import image_info, load_samples, read_image
from analysis.sim.simulate import SAMPLE_COLUMNS, simulate_study


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_sheet_follows_the_contract(small_study: Path) -> None:
    samples = load_samples(small_study / "samples.csv")
    raw = pd.read_csv(small_study / "samples.csv")
    assert list(raw.columns) == SAMPLE_COLUMNS
    assert len(samples) == 30 and samples["animal_id"].nunique() == 10
    assert samples["image_id"].is_unique
    term = samples[samples["microglia_channel"].notna()]
    assert len(term) == 10 and (term["lysosome_channel"] == 2).all()


def test_images_are_ome_tiff_with_pixel_size(small_study: Path) -> None:
    samples = load_samples(small_study / "samples.csv")
    for row in samples.itertuples():
        info = image_info(row.abs_path)
        assert info.pixel_size_um == pytest.approx(row.pixel_size_um)
        expected_c = 3 if pd.notna(row.microglia_channel) else 1
        assert info.n_channels == expected_c
        assert info.dtype == np.uint16
    data, info = read_image(samples.iloc[-1]["abs_path"])
    assert data.shape[0] == 3 and data.shape[2:] == (640, 640)
    with tifffile.TiffFile(samples.iloc[-1]["abs_path"]) as tif:
        assert tif.is_ome and "PSD95" in tif.ome_metadata and "Iba1" in tif.ome_metadata


def test_ground_truth_matches_the_files(small_study: Path) -> None:
    gt = pd.read_csv(small_study / "ground_truth.csv")
    samples = pd.read_csv(small_study / "samples.csv")
    assert list(gt["image_id"]) == list(samples["image_id"])
    assert set(gt["snr_level"]) <= {"high", "default", "low", "hard"}
    for row in gt.itertuples():
        puncta = pd.read_csv(small_study / row.puncta_file)
        assert len(puncta) == row.true_puncta_count
        assert {"y", "x", "engulfed", "cell"} <= set(puncta.columns)
        if row.readout == "terminal":
            cells = pd.read_csv(small_study / row.cells_file)
            labels = tifffile.imread(small_study / row.labels_file)
            assert len(cells) == row.true_microglia_count
            assert set(np.unique(labels)) - {0} == set(cells["cell"])
            assert cells["engulfed_count"].sum() == puncta["engulfed"].sum() == row.true_engulfed_count
    # measured densities follow the expected ones (Poisson noise only)
    ratio = gt["true_puncta_density_per_100um2"] / gt["true_density_per_100um2"]
    assert abs(ratio.mean() - 1) < 0.05


def test_study_truth_json(small_study: Path) -> None:
    study = json.loads((small_study / "study_truth.json").read_text())
    assert study["preset"] == "small" and study["seed"] == 1
    assert study["n_animals"] == 10
    assert study["model"]["tau_on_days"] > 0


def test_same_seed_gives_identical_files(small_study: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    simulate_study(again, preset="small", seed=1, workers=1, progress=False)
    assert _digest(again) == _digest(small_study)


def test_other_seed_differs(small_study: Path, tmp_path: Path) -> None:
    simulate_study(tmp_path, preset="small", seed=2, workers=2, progress=False)
    a = pd.read_csv(small_study / "ground_truth.csv")
    b = pd.read_csv(tmp_path / "ground_truth.csv")
    assert a["image_id"].tolist() == b["image_id"].tolist()  # same design ...
    assert not np.array_equal(a["true_puncta_count"], b["true_puncta_count"])  # ... other draws


def test_refuses_to_write_into_existing_data(small_study: Path) -> None:
    with pytest.raises(FileExistsError, match="not empty"):
        simulate_study(small_study, preset="small", seed=1)


@pytest.mark.parametrize("where", ["raw", "raw/study"])
def test_output_path_through_a_file_is_a_clear_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "raw").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"raw is a file, not a folder"):
        simulate_study(tmp_path / where, preset="small", seed=1)
    assert (tmp_path / "raw").read_text() == "not a folder"


def test_cli_if_empty_keeps_existing_study(small_study: Path) -> None:
    before = _digest(small_study)
    res = subprocess.run(
        [sys.executable, "-m", "analysis", "simulate", "--out", str(small_study), "--preset", "small", "--if-empty"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert _digest(small_study) == before


def test_cli_refuses_non_empty_folder_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "something.txt").write_text("x")
    res = subprocess.run(
        [sys.executable, "-m", "analysis", "simulate", "--out", str(tmp_path), "--preset", "small"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert "not empty" in res.stderr and "Traceback" not in res.stderr
