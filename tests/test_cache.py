"""Per-image cache of the quantification: reruns skip work, parameter changes recompute, killed runs resume."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile

from analysis.pipeline import cache
from analysis.pipeline import quantify
from analysis.pipeline.quantify import QuantifyParams, quantify_study


def subset_study(small_study: Path, dest: Path, n_synapse: int = 3, n_terminal: int = 1) -> Path:
    """A copy of a few images of the small study (synapse and terminal), with its own sheet."""
    sheet = pd.read_csv(small_study / "samples.csv", dtype=str, keep_default_na=False)
    syn = sheet[sheet.microglia_channel == ""].head(n_synapse)
    term = sheet[sheet.microglia_channel != ""].head(n_terminal)
    keep = pd.concat([syn, term])
    (dest / "images").mkdir(parents=True)
    for rel in keep.path:
        shutil.copy2(small_study / rel, dest / rel)
    keep.to_csv(dest / "samples.csv", index=False)
    return dest


@pytest.fixture()
def study(small_study: Path, tmp_path: Path) -> Path:
    return subset_study(small_study, tmp_path / "raw")


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Image ids quantified in this process (the in-process path, workers=1)."""
    seen: list[str] = []
    real = quantify._quantify_row

    def counting(task: dict[str, Any]) -> Any:
        seen.append(task["image_id"])
        return real(task)

    monkeypatch.setattr(quantify, "_quantify_row", counting)
    return seen


def tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return (pd.read_parquet(out / "measurements.parquet"), pd.read_parquet(out / "cells.parquet"),
            pd.read_csv(out / "failures.csv"))


def assert_same(a: Path, b: Path) -> None:
    for x, y in zip(tables(a), tables(b), strict=True):
        pd.testing.assert_frame_equal(x, y)


def stray(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]


def test_rerun_is_served_from_the_cache(study: Path, tmp_path: Path, calls: list[str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    first = quantify_study(study / "samples.csv", out, workers=1, progress=False)
    assert len(calls) == 4 and len(first) == 4
    assert len(list((out / "cache").rglob("*.parquet"))) == 4
    snapshot = tmp_path / "first"
    shutil.copytree(out, snapshot)
    calls.clear()
    with caplog.at_level(logging.INFO, logger="analysis.pipeline.quantify"):
        again = quantify_study(study / "samples.csv", out, workers=1, progress=False)
    assert calls == []  # nothing quantified
    assert "4 of 4 images cached; quantifying 0" in caplog.text
    pd.testing.assert_frame_equal(first, again)
    assert_same(out, snapshot)
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == first["microglia_count"].sum() > 0  # the terminal image's cells came back
    # ignoring the cache recomputes everything and gives the same tables
    quantify_study(study / "samples.csv", out, workers=1, progress=False, use_cache=False)
    assert sorted(calls) == sorted(first["image_id"])
    assert_same(out, snapshot)


def test_changes_recompute_only_what_they_affect(study: Path, tmp_path: Path, calls: list[str]) -> None:
    out = tmp_path / "out"
    base = quantify_study(study / "samples.csv", out, workers=1, progress=False)
    calls.clear()
    stricter = QuantifyParams(puncta={"threshold_sd": 6.0})
    changed = quantify_study(study / "samples.csv", out, params=stricter, workers=1, progress=False)
    assert len(calls) == 4  # a method parameter: every image again
    # and the new parameter took effect (an image whose noise false-discovery step had already
    # raised its threshold near 6 may keep its count)
    assert (changed["n_puncta"] <= base["n_puncta"]).all() and changed["n_puncta"].sum() < base["n_puncta"].sum()
    calls.clear()
    quantify_study(study / "samples.csv", out, workers=1, progress=False)
    assert calls == []  # the old parameters' entries are still there
    # a sheet change: pixel size of one image recomputes that image only; a carried column nothing
    sheet = pd.read_csv(study / "samples.csv", dtype=str, keep_default_na=False)
    sheet.loc[0, "pixel_size_um"] = "0.11"
    sheet["sex"] = "F"
    sheet.to_csv(study / "samples.csv", index=False)
    (out / "raw_manifest.csv").unlink()  # accept the new sheet
    new = quantify_study(study / "samples.csv", out, workers=1, progress=False)
    assert calls == [sheet.image_id[0]]
    assert (new["sex"] == "F").all()
    assert new.loc[0, "analysed_area_um2"] == pytest.approx(base.loc[0, "analysed_area_um2"] * 1.21, rel=1e-6)


class Killed(BaseException):
    """Stands in for SIGINT / SIGKILL in the middle of a run."""


def test_killed_run_resumes_without_partial_files(study: Path, tmp_path: Path, calls: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tmp_path / "reference"
    quantify_study(study / "samples.csv", reference, workers=1, progress=False)
    out = tmp_path / "out"
    counting = quantify._quantify_row

    def dies_after_two(task: dict[str, Any]) -> Any:
        if len(calls) == 6:  # 4 for the reference run, then 2 more
            raise Killed
        return counting(task)

    monkeypatch.setattr(quantify, "_quantify_row", dies_after_two)
    with pytest.raises(Killed):
        quantify_study(study / "samples.csv", out, workers=1, progress=False)
    assert not (out / "measurements.parquet").exists() and not (out / "cells.parquet").exists()
    assert len(list((out / "cache").rglob("*.parquet"))) == 2
    # what a hard kill leaves behind: temporaries of a cache entry and of an output table
    entry = next((out / "cache").rglob("*.parquet"))
    (entry.parent / f".tmp-99999-{entry.name}").write_bytes(b"PAR1 half")
    (out / ".tmp-99999-cells.parquet").write_bytes(b"PAR1 half")
    monkeypatch.setattr(quantify, "_quantify_row", counting)
    calls.clear()
    quantify_study(study / "samples.csv", out, workers=1, progress=False)
    assert len(calls) == 2  # only the two images the killed run had not finished
    assert stray(out) == []
    assert_same(out, reference)


def test_bad_images_are_never_cached(study: Path, tmp_path: Path, calls: list[str]) -> None:
    sheet = pd.read_csv(study / "samples.csv", dtype=str, keep_default_na=False)
    blank = study / sheet.path[1]
    tifffile.imwrite(blank, np.zeros((256, 256), np.uint16), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1})
    out = tmp_path / "out"
    for run in range(2):
        calls.clear()
        m = quantify_study(study / "samples.csv", out, workers=1, progress=False)
        failures = pd.read_csv(out / "failures.csv")
        assert failures.image_id.tolist() == [sheet.image_id[1]] and "blank" in failures.reason[0]
        assert sheet.image_id[1] not in set(m.image_id) and len(m) == 3
        assert calls == (sheet.image_id.tolist() if run == 0 else [sheet.image_id[1]])
    assert len(list((out / "cache").rglob("*.parquet"))) == 3


def test_key_covers_image_parameters_fields_version_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = {"pixel_size_um": 0.1, "synapse_channel": 0, "microglia_channel": None, "lysosome_channel": np.nan}
    params = QuantifyParams().to_dict()
    key = cache.entry_key("a" * 64, params, fields)
    assert key == cache.entry_key("a" * 64, QuantifyParams().to_dict(), dict(fields))  # deterministic
    assert key == cache.entry_key("a" * 64, params, {**fields, "lysosome_channel": pd.NA})  # NA spellings agree
    others = {
        cache.entry_key("b" * 64, params, fields),
        cache.entry_key("a" * 64, QuantifyParams(microglia={"soma_min_diameter_um": 6.0}).to_dict(), fields),
        cache.entry_key("a" * 64, params, {**fields, "pixel_size_um": 0.2}),
        cache.entry_key("a" * 64, params, {**fields, "microglia_channel": 1}),
        cache.entry_key("a" * 64, params, {**fields, "z_step_um": 0.5}),  # the sheet's z step (issue 16)
    }
    monkeypatch.setattr(cache, "__version__", "999.0")
    others.add(cache.entry_key("a" * 64, params, fields))
    monkeypatch.undo()
    assert cache.entry_key("a" * 64, params, fields) == key
    monkeypatch.setattr(cache, "code_digest", lambda: "edited synapses.py")  # an algorithm edit
    others.add(cache.entry_key("a" * 64, params, fields))
    assert len(others) == 7 and key not in others


def test_cells_table_streams_entries_with_different_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = pd.DataFrame({"label": [1, 2], "area_um2": [10.5, 20.0], "touches_border": [False, True],
                         "engulfed_count": [3, 0]})
    plain = pd.DataFrame({"label": [1], "area_um2": [7.25], "touches_border": [False]})
    entries = []
    for i, cells in enumerate((full, pd.DataFrame(), plain)):
        path = cache.entry_path(tmp_path / "cache", f"{i:064x}")
        cache.write_entry(path, {"n_puncta": i, "snr": np.nan}, cells)
        entries.append((f"img{i}", path))
    row = cache.read_row(entries[0][1])
    assert row["n_puncta"] == 0 and np.isnan(row["snr"])
    monkeypatch.setattr(quantify, "_CELLS_ROW_GROUP", 1)  # a row group per image: exercises the flush
    n = quantify._write_cells(entries, tmp_path / "cells.parquet")
    out = pd.read_parquet(tmp_path / "cells.parquet")
    assert n == 3 and out.image_id.tolist() == ["img0", "img0", "img2"]
    assert out.area_um2.tolist() == [10.5, 20.0, 7.25]
    assert out.engulfed_count.tolist()[:2] == [3, 0] and np.isnan(out.engulfed_count[2])
    assert stray(tmp_path) == []
