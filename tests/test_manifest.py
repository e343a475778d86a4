"""The raw-data manifest: the images the sheet lists and its image columns are immutable inputs.

A small study whose sheet reaches images in its folder, through ``../``, by an absolute path
and through a symlink is quantified once; then one edit is made and the run repeated.  Edits
of metadata columns, of unlisted files and of the outputs are accepted (the manifest then
records the new sheet's hash); edits of an image or of an image column are refused with a
message naming the file (or sheet line and column), the old and new value and the fix.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile

from analysis.pipeline import quantify
from analysis.errors import InputError
from analysis.io.files import sha256_file
from analysis.pipeline.quantify import QuantifyParams, quantify_study

PX = 0.1
PARAMS = QuantifyParams(quality={"spike_in": False})


def field(seed: int) -> np.ndarray:
    """96 x 96 uint16 field with a few puncta (their number depends on the seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    img = np.full((96, 96), 100.0)
    for y, x in rng.integers(12, 84, (2 + seed % 4, 2)):
        img += 400 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
    return (img + rng.normal(0, 5, img.shape)).astype(np.uint16)


def write(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, field(seed), ome=True, metadata={"axes": "YX", "PhysicalSizeX": PX, "PhysicalSizeY": PX})


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the same images are quantified once (results are keyed by content)."""
    return tmp_path_factory.mktemp("manifest_cache")


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    """``data/raw/samples.csv`` listing a, b (in its folder), c (``../other``), d (absolute), e (symlink out)."""
    raw = tmp_path / "data" / "raw"
    for name, seed in (("a", 1), ("b", 2)):
        write(raw / "images" / f"{name}.tif", seed)
    write(tmp_path / "data" / "other" / "c.tif", 3)
    write(tmp_path / "elsewhere" / "d.tif", 4)
    write(tmp_path / "elsewhere" / "e_target.tif", 5)
    (raw / "images" / "e.tif").symlink_to(tmp_path / "elsewhere" / "e_target.tif")
    paths = {"a": "images/a.tif", "b": "images/b.tif", "c": "../other/c.tif", "d": str(tmp_path / "elsewhere" / "d.tif"),
             "e": "images/e.tif"}
    rows = [{"image_id": k, "path": p, "animal_id": f"M{i}", "genotype": "wt", "compound": "vehicle", "dose_mg_kg": 0,
             "treatment_days": 7, "day": 7, "pixel_size_um": PX, "synapse_channel": 0, "microglia_channel": "",
             "lysosome_channel": "", "sex": "M", "region": "S1"} for i, (k, p) in enumerate(paths.items())]
    pd.DataFrame(rows).to_csv(raw / "samples.csv", index=False)
    (raw / "ground_truth.csv").write_text("image_id,n\na,3\n")
    return raw


def run(raw: Path, out: Path, cache_dir: Path, **kwargs: Any) -> pd.DataFrame:
    return quantify_study(raw / "samples.csv", out, workers=1, progress=False, params=PARAMS, cache_dir=cache_dir,
                          **kwargs)


def edit_sheet(raw: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    sheet = pd.read_csv(raw / "samples.csv", dtype=str, keep_default_na=False)
    change(sheet).to_csv(raw / "samples.csv", index=False)


def set_cell(image_id: str, column: str, value: str) -> Callable[[Path], None]:
    def edit(raw: Path) -> None:
        def change(s: pd.DataFrame) -> pd.DataFrame:
            if column not in s:
                s[column] = ""
            s.loc[s.image_id == image_id, column] = value
            return s
        edit_sheet(raw, change)
    return edit


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def add_row(raw: Path) -> None:
    write(raw / "images" / "f.tif", 6)
    edit_sheet(raw, lambda s: pd.concat([s, s.iloc[[0]].assign(image_id="f", path="images/f.tif", animal_id="M9")]))


def copy_and_repoint(raw: Path) -> None:
    shutil.copy2(raw / "images" / "a.tif", raw / "images" / "a_copy.tif")
    set_cell("a", "path", "images/a_copy.tif")(raw)


def touch(raw: Path) -> None:
    later = dt.datetime(2030, 1, 1).timestamp()
    os.utime(raw / "images" / "a.tif", (later, later))


def unlisted_files(raw: Path) -> None:
    (raw / "notes.txt").write_text("re-imaged M1 on Tuesday\n")
    (raw / "ground_truth.csv").write_text("image_id,n\na,4\n")
    write(raw / "images" / "unused.tif", 7)


#: Edits a user may make between two runs: None = accepted, else words of the error.
EDITS: dict[str, tuple[Callable[[Path], None], tuple[str, ...] | None]] = {
    # accepted: metadata, formatting, order, unlisted files
    "sex-corrected": (set_cell("a", "sex", "F"), None),
    "genotype-corrected": (set_cell("b", "genotype", "tspo_ko"), None),
    "cohort-column-added": (lambda raw: edit_sheet(raw, lambda s: s.assign(cohort="2024-03")), None),
    "region-column-removed": (lambda raw: edit_sheet(raw, lambda s: s.drop(columns="region")), None),
    "rows-reordered": (lambda raw: edit_sheet(raw, lambda s: s.iloc[::-1]), None),
    "pixel-size-written-0.100": (set_cell("a", "pixel_size_um", "0.100"), None),
    "empty-z-step-column-added": (set_cell("a", "z_step_um", ""), None),
    "image-touched-not-changed": (touch, None),
    "unlisted-files-added-and-changed": (unlisted_files, None),
    # refused: an image's content
    "image-in-folder-changed": (lambda raw: flip_last_byte(raw / "images" / "a.tif"),
                                ("images/a.tif", "changed since the manifest was written (SHA-256 differs)", "delete")),
    "image-in-folder-deleted": (lambda raw: (raw / "images" / "b.tif").unlink(),
                                ("images/b.tif", "missing since the manifest was written")),
    "image-via-dotdot-changed": (lambda raw: flip_last_byte(raw.parent / "other" / "c.tif"),
                                 ("other/c.tif", "changed since the manifest was written")),
    "image-by-absolute-path-changed": (lambda raw: flip_last_byte(raw.parent.parent / "elsewhere" / "d.tif"),
                                       ("elsewhere/d.tif", "changed since the manifest was written")),
    "symlink-target-changed": (lambda raw: flip_last_byte(raw.parent.parent / "elsewhere" / "e_target.tif"),
                               ("images/e.tif", "changed since the manifest was written")),
    # refused: an image column of the sheet
    "pixel-size-changed": (set_cell("a", "pixel_size_um", "0.11"),
                           ("line 2, column 'pixel_size_um'", "pixel_size_um of image_id 'a' was '0.1' when the manifest was written, now '0.11'")),
    "channel-role-changed": (set_cell("b", "synapse_channel", "1"),
                             ("line 3, column 'synapse_channel'", "synapse_channel of image_id 'b' was '0' when the manifest was written, now '1'")),
    "path-repointed-to-a-copy": (copy_and_repoint, ("line 2, column 'path'", "path of image_id 'a' was 'images/a.tif' when the manifest was written, now 'images/a_copy.tif'")),
    "z-step-given": (set_cell("a", "z_step_um", "0.5"), ("line 2, column 'z_step_um'", "z_step_um of image_id 'a' was empty when the manifest was written, now '0.5'")),
    "row-added": (add_row, ("line 7, column 'image_id'", "image_id 'f' is new since the manifest was written")),
    "row-removed": (lambda raw: edit_sheet(raw, lambda s: s[s.image_id != "c"]),
                    ("image_id 'c' was removed from the sheet",)),
    "image-id-renamed": (set_cell("d", "image_id", "d2"), ("image_id 'd2' is new", "image_id 'd' was removed")),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_edit_between_runs(name: str, study: Path, tmp_path: Path, shared_cache: Path) -> None:
    edit, words = EDITS[name]
    out = tmp_path / "out"
    first = run(study, out, shared_cache)
    assert first.image_id.tolist() == ["a", "b", "c", "d", "e"]
    edit(study)
    if words is None:
        again = run(study, out, shared_cache)
        sheet = pd.read_csv(study / "samples.csv", dtype=str, keep_default_na=False)
        assert again.image_id.tolist() == sheet.image_id.tolist()
        for col in ("sex", "genotype", "cohort"):  # (the loader may normalise the genotype's case)
            if col in sheet:
                assert again[col].str.lower().tolist() == sheet[col].str.lower().tolist()
        key = ["n_puncta", "analysed_area_um2"]
        pd.testing.assert_frame_equal(again.set_index("image_id").loc[first.image_id, key],
                                      first.set_index("image_id")[key])
        # the manifest follows the corrected sheet (provenance), its images are unchanged
        manifest = pd.read_csv(out / "raw_manifest.csv", dtype=str)
        assert manifest.set_index("path").loc["samples.csv", "sha256"] == sha256_file(study / "samples.csv")
        assert manifest[manifest.kind == "image"].path.tolist() == sheet.path.tolist()
        return
    with pytest.raises(InputError) as exc:
        run(study, out, shared_cache)
    msg = str(exc.value)
    for w in words:
        assert w in msg, (w, msg)
    assert f"delete {out / 'raw_manifest.csv'} to accept the new inputs" in msg
    assert "e_target" not in msg  # a link is named as the sheet names it
    # deleting the manifest accepts the new inputs
    (out / "raw_manifest.csv").unlink()
    accepted = run(study, out, shared_cache)
    failed = pd.read_csv(out / "failures.csv")
    assert len(accepted) + len(failed) == len(pd.read_csv(study / "samples.csv"))
    # (b is then missing, or has no channel 1)
    assert failed.image_id.tolist() == (["b"] if name in ("image-in-folder-deleted", "channel-role-changed") else [])


def test_manifest_lists_the_sheet_images_wherever_they_are(study: Path, tmp_path: Path, shared_cache: Path) -> None:
    run(study, tmp_path / "out", shared_cache)
    manifest = pd.read_csv(tmp_path / "out" / "raw_manifest.csv", dtype={"path": str, "sha256": str})
    assert list(manifest.columns[:3]) == ["path", "bytes", "sha256"]  # what the report's provenance reads
    sheet = pd.read_csv(study / "samples.csv", dtype=str)
    assert manifest.path.tolist() == [*sheet.path, "samples.csv"]
    targets = [study / "images/a.tif", study / "images/b.tif", study.parent / "other/c.tif",
               study.parent.parent / "elsewhere/d.tif", study.parent.parent / "elsewhere/e_target.tif",
               study / "samples.csv"]
    assert manifest.sha256.tolist() == [sha256_file(p) for p in targets]
    assert manifest.bytes.tolist() == [p.stat().st_size for p in targets]
    assert "ground_truth.csv" not in set(manifest.path)
    recorded = pd.read_csv(tmp_path / "out" / "raw_manifest_sheet.csv", dtype=str, keep_default_na=False)
    assert list(recorded.columns) == ["image_id", "path", "synapse_channel", "microglia_channel", "lysosome_channel",
                                      "pixel_size_um", "z_step_um"][: len(recorded.columns)]
    assert recorded.pixel_size_um.tolist() == ["0.1"] * 5 and recorded.synapse_channel.tolist() == ["0"] * 5


def test_outputs_inside_the_data_folder_are_not_inputs(study: Path, shared_cache: Path) -> None:
    out = study / "processed"
    tables = [run(study, out, shared_cache) for _ in range(3)]  # every run used to fail on the previous outputs
    for t in tables[1:]:
        pd.testing.assert_frame_equal(t, tables[0])
    manifest = pd.read_csv(out / "raw_manifest.csv")
    assert not manifest.path.str.startswith("processed").any() and len(manifest) == 6
    run(study, out, None)  # and with its cache inside it too
    run(study, out, None)


def test_provenance_hashes_cover_images_outside_the_folder(study: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = quantify._quantify_row
    monkeypatch.setattr(quantify, "_quantify_row", lambda task: (seen.append(task["image_id"]), real(task))[1])
    out = tmp_path / "out"
    first = run(study, out, out / "cache")
    assert sorted(seen) == ["a", "b", "c", "d", "e"]
    write(study.parent / "other" / "c.tif", 11)  # an outside image replaced, and accepted
    write(study.parent.parent / "elsewhere" / "e_target.tif", 12)  # the symlinked one too
    (out / "raw_manifest.csv").unlink()
    seen.clear()
    second = run(study, out, out / "cache")
    assert sorted(seen) == ["c", "e"]  # their hashes changed the cache key; the others are reused
    same = ["a", "b", "d"]
    pd.testing.assert_frame_equal(second.set_index("image_id").loc[same], first.set_index("image_id").loc[same])


def test_manifest_of_an_earlier_version_is_read(study: Path, tmp_path: Path, shared_cache: Path) -> None:
    """A manifest of every file below the sheet's folder (before issue 16) is accepted and rewritten."""
    out = tmp_path / "out"
    out.mkdir()
    files = sorted(p for p in study.rglob("*") if p.is_file())
    old = pd.DataFrame({"path": [str(p.relative_to(study)) for p in files], "bytes": [p.stat().st_size for p in files],
                        "sha256": [sha256_file(p) for p in files]})
    old.to_csv(out / "raw_manifest.csv", index=False)
    run(study, out, shared_cache)
    assert "kind" in pd.read_csv(out / "raw_manifest.csv").columns
    old.to_csv(out / "raw_manifest.csv", index=False)
    (out / "raw_manifest_sheet.csv").unlink()
    flip_last_byte(study / "images" / "b.tif")
    with pytest.raises(InputError, match="images/b.tif.*changed since the manifest was written"):
        run(study, out, shared_cache)


def test_index_page_reads_the_manifest(study: Path, tmp_path: Path, shared_cache: Path) -> None:
    from analysis.report.index import write_index

    processed = tmp_path / "processed"
    run(study, processed, shared_cache)
    now = dt.datetime.now(dt.timezone.utc)
    page = write_index(tmp_path / "reports", processed, study, [], {}, now, now).read_text()
    for p in ("images/a.tif", "../other/c.tif", "elsewhere/d.tif", "images/e.tif"):
        assert p in page
    assert sha256_file(study.parent / "other" / "c.tif") in page
