"""Sample-sheet validation and image reading: every bad input names file, line, column and fix."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from analysis.errors import ImageReadError, SampleSheetError
from analysis.io import image_info, load_samples, read_image, register_reader

HEADER = [
    "image_id", "path", "animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day",
    "pixel_size_um", "synapse_channel", "microglia_channel", "lysosome_channel", "sex",
]


def _ome(path: Path, data: np.ndarray, axes: str, size: float | None = 0.2, unit: str = "µm") -> None:
    md = {"axes": axes}
    if size is not None:
        md.update({"PhysicalSizeX": size, "PhysicalSizeY": size, "PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit})
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata=md)


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    """A valid sheet: a 3-channel image, 1-channel images with and without pixel size in the sheet.

    The planes are the smallest the readouts accept (>= 32 pixels and >= 10 um on a side).
    """
    img = tmp_path / "images"
    img.mkdir()
    _ome(img / "t.ome.tif", np.arange(3 * 64 * 65, dtype=np.uint16).reshape(3, 64, 65), "CYX", 0.2)
    _ome(img / "s.ome.tif", np.ones((112, 113), np.uint16), "YX", 100.0, "nm")
    _ome(img / "v.ome.tif", np.ones((112, 113), np.uint16), "YX", 100.0, "nm")
    rows = [
        ["t1", "images/t.ome.tif", "001", "WT", "diazepam", "5", "7", "7", "0.2", "0", "1", "2", "F"],
        ["s1", "images/s.ome.tif", "001", "WT", "diazepam", "5", "7", "-3", "", "0", "", "", "F"],
        ["v1", "images/v.ome.tif", "002", "TSPO_KO", "vehicle", "0", "7", "7", "0.1", "0", "", "", "M"],
    ]
    write(tmp_path / "samples.csv", rows)
    return tmp_path


def write(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def edit(study: Path, row: int, column: str, value: str) -> Path:
    df = pd.read_csv(study / "samples.csv", dtype=str, keep_default_na=False)
    df.loc[row, column] = value
    df.to_csv(study / "samples.csv", index=False)
    return study / "samples.csv"


def test_valid_sheet_loads_with_types(study: Path) -> None:
    s = load_samples(study / "samples.csv")
    assert list(s["image_id"]) == ["t1", "s1", "v1"]  # row order kept
    assert s["animal_id"].tolist()[0] == "001"  # ids stay strings
    assert s["dose_mg_kg"].dtype == float and s["day"].tolist() == [7.0, -3.0, 7.0]
    assert s["pixel_size_um"].tolist() == pytest.approx([0.2, 0.1, 0.1])  # s1 filled from metadata (100 nm)
    assert str(s["microglia_channel"].dtype) == "Int64" and pd.isna(s.loc[1, "microglia_channel"])
    assert s["sex"].tolist() == ["F", "F", "M"]  # extra columns kept
    assert Path(s.loc[0, "abs_path"]) == (study / "images" / "t.ome.tif").resolve()


def _problem(exc: pytest.ExceptionInfo, sheet: Path, line: int, column: str, *phrases: str) -> None:
    msg = str(exc.value)
    assert str(sheet) in msg
    assert f"line {line}, column '{column}'" in msg, msg
    for p in phrases:
        assert p in msg, msg


@pytest.mark.parametrize(
    ("row", "column", "value", "phrases"),
    [
        (0, "dose_mg_kg", "-1", ["dose_mg_kg is -1", ">= 0 (use 0 for vehicle)"]),
        (0, "dose_mg_kg", "five", ["'five', not a number", "use 0 for vehicle"]),
        (2, "treatment_days", "-7", ["treatment_days", ">= 0"]),
        (1, "day", "baseline", ["'baseline', not a number", "negative for baseline"]),
        (0, "pixel_size_um", "0", ["pixel_size_um is 0", "> 0 in micrometres"]),
        (0, "path", "images/missing.tif", ["image file not found", "images/missing.tif", "fix the path"]),
        (0, "microglia_channel", "3", ["microglia_channel is 3", "has 3 channel(s) (valid: 0-2)"]),
        (1, "synapse_channel", "1", ["synapse_channel is 1", "has 1 channel(s) (valid: 0-0)"]),
        (0, "lysosome_channel", "1.5", ["whole numbers >= 0"]),
        (0, "animal_id", "", ["animal_id is empty"]),
        (1, "genotype", "TSPO_KO", ["animal '001' has more than one genotype", "'WT' on line 2", "'TSPO_KO' on line 3"]),
        (1, "compound", "XBD173", ["animal '001' has more than one compound", "an animal has one compound"]),
    ],
)
def test_each_bad_value_is_named(study: Path, row: int, column: str, value: str, phrases: list[str]) -> None:
    sheet = edit(study, row, column, value)
    with pytest.raises(SampleSheetError) as exc:
        load_samples(sheet)
    _problem(exc, sheet, row + 2, column, *phrases)


def test_duplicate_image_id(study: Path) -> None:
    sheet = edit(study, 2, "image_id", "t1")
    with pytest.raises(SampleSheetError) as exc:
        load_samples(sheet)
    _problem(exc, sheet, 4, "image_id", "'t1' appears on lines 2, 4", "must be unique")


def test_missing_column(study: Path) -> None:
    df = pd.read_csv(study / "samples.csv", dtype=str).drop(columns=["compound", "day"])
    df.to_csv(study / "samples.csv", index=False)
    with pytest.raises(SampleSheetError) as exc:
        load_samples(study / "samples.csv")
    msg = str(exc.value)
    assert "missing required column(s) compound, day" in msg and "line 1" in msg and "add them" in msg


def test_pixel_size_missing_from_sheet_and_metadata(study: Path) -> None:
    _ome(study / "images" / "nopx.ome.tif", np.ones((112, 113), np.uint16), "YX", None)
    sheet = edit(study, 1, "path", "images/nopx.ome.tif")
    with pytest.raises(SampleSheetError) as exc:
        load_samples(sheet)
    _problem(exc, sheet, 3, "pixel_size_um", "no pixel size in its metadata", "add pixel_size_um to the sheet")


def test_all_problems_reported_together(study: Path) -> None:
    edit(study, 0, "dose_mg_kg", "-2")
    sheet = edit(study, 2, "path", "images/nope.tif")
    with pytest.raises(SampleSheetError) as exc:
        load_samples(sheet)
    assert len(exc.value.problems) == 2
    assert "2 problems" in str(exc.value)


def test_check_images_false_skips_files(study: Path) -> None:
    sheet = edit(study, 0, "path", "images/absent.tif")
    s = load_samples(sheet, check_images=False)
    assert len(s) == 3


@pytest.mark.parametrize(
    ("axes", "shape", "czyx"),
    [("YX", (8, 9), (1, 1, 8, 9)), ("ZYX", (4, 8, 9), (1, 4, 8, 9)), ("CYX", (2, 8, 9), (2, 1, 8, 9)),
     ("CZYX", (2, 4, 8, 9), (2, 4, 8, 9))],
)
def test_read_image_gives_czyx(tmp_path: Path, axes: str, shape: tuple, czyx: tuple) -> None:
    data = np.random.default_rng(0).integers(0, 1000, shape).astype(np.uint16)
    _ome(tmp_path / "x.ome.tif", data, axes, 0.15)
    out, info = read_image(tmp_path / "x.ome.tif")
    assert out.shape == czyx and info.axes == axes and info.pixel_size_um == pytest.approx(0.15)
    np.testing.assert_array_equal(out.reshape(shape), data)


def test_imagej_resolution_and_spacing(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((3, 8, 9), np.uint16), imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 0.5})
    info = image_info(tmp_path / "ij.tif")
    assert info.pixel_size_um == pytest.approx(0.25) and info.z_step_um == pytest.approx(0.5) and info.n_z == 3


def test_unsupported_and_corrupt_files(tmp_path: Path) -> None:
    # a format no reader handles (Olympus OIR; CZI, LIF and ND2 are read through bioio)
    (tmp_path / "a.oir").write_bytes(b"not a tiff")
    with pytest.raises(ImageReadError, match=r"a\.oir.*unsupported image format.*bfconvert.*register_reader"):
        read_image(tmp_path / "a.oir")
    # a file with a vendor suffix that is not what it claims
    (tmp_path / "b.czi").write_bytes(b"not a czi")
    with pytest.raises(ImageReadError, match=r"b\.czi.*does not recognise it as a"):
        read_image(tmp_path / "b.czi")
    _ome(tmp_path / "t.ome.tif", np.ones((64, 64), np.uint16), "YX")
    raw = (tmp_path / "t.ome.tif").read_bytes()
    (tmp_path / "cut.ome.tif").write_bytes(raw[:200])
    with pytest.raises(ImageReadError, match=r"cut\.ome\.tif.*(truncated or corrupt)"):
        read_image(tmp_path / "cut.ome.tif")


def test_register_reader(tmp_path: Path) -> None:
    from analysis.io import ImageInfo

    p = tmp_path / "x.fake"
    p.write_bytes(b"")
    register_reader(
        [".fake"],
        lambda path: ImageInfo(Path(path), (2, 4, 5), "CYX", 2, 1, np.dtype("uint8"), 0.3, None),
        lambda path: np.ones((2, 4, 5), np.uint8),
    )
    data, info = read_image(p)
    assert data.shape == (2, 1, 4, 5) and info.pixel_size_um == 0.3


@pytest.mark.parametrize("compression", ["lzw", "zlib", "zstd"])
def test_compressed_tiffs_read(tmp_path: Path, compression: str) -> None:
    data = np.random.default_rng(1).integers(0, 4000, (2, 40, 41)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.ome.tif", data, ome=True, photometric="minisblack", compression=compression,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    out, info = read_image(tmp_path / "c.ome.tif")
    assert info.n_channels == 2 and info.pixel_size_um == pytest.approx(0.2)
    np.testing.assert_array_equal(out[:, 0], data)


@pytest.mark.parametrize("planar", [False, True])
def test_rgb_samples_are_channels(tmp_path: Path, planar: bool) -> None:
    rgb = np.zeros((40, 41, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    rgb[5, 7] = (1, 2, 3)
    if planar:
        tifffile.imwrite(tmp_path / "rgb.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    else:
        tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    out, info = read_image(tmp_path / "rgb.tif")
    assert out.shape == (3, 1, 40, 41) and info.channel_names == ("red", "green", "blue")
    assert out[:, 0, 0, 0].tolist() == [10, 20, 30] and out[:, 0, 5, 7].tolist() == [1, 2, 3]


def test_fiji_hyperstack_is_transposed_to_czyx(tmp_path: Path) -> None:
    czyx = np.random.default_rng(2).integers(0, 1000, (2, 3, 40, 41)).astype(np.uint16)
    tzcyx = np.moveaxis(czyx, 0, 1)[np.newaxis]  # Fiji stores T, Z, C, Y, X
    tifffile.imwrite(tmp_path / "h.tif", tzcyx, imagej=True, resolution=(1 / 0.3, 1 / 0.3),
                     metadata={"axes": "TZCYX", "unit": "micron", "spacing": 0.8})
    out, info = read_image(tmp_path / "h.tif")
    assert info.axes == "ZCYX" and (info.n_channels, info.n_z) == (2, 3)
    assert info.pixel_size_um == pytest.approx(0.3) and info.z_step_um == pytest.approx(0.8)
    np.testing.assert_array_equal(out, czyx)


def test_time_series_and_odd_axes_are_refused_with_a_fiji_fix(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((4, 40, 41), np.uint16), imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(ImageReadError, match=r"t\.tif.*4 time points.*Re-order Hyperstack.*Stack to Images"):
        image_info(tmp_path / "t.tif")
    tifffile.imwrite(tmp_path / "q.tif", np.zeros((3, 2, 40, 41), np.uint16), photometric="minisblack")
    with pytest.raises(ImageReadError, match=r"q\.tif.*'QQYX'.*Image > Properties.*OME-TIFF"):
        image_info(tmp_path / "q.tif")


def test_imagej_spacing_without_unit_is_not_a_z_step(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "px.tif", np.zeros((3, 40, 41), np.uint16), imagej=True,
                     metadata={"axes": "ZYX", "spacing": 1.0})
    info = image_info(tmp_path / "px.tif")
    assert info.n_z == 3 and info.z_step_um is None and info.pixel_size_um is None


def test_symlink_loop_and_folder(tmp_path: Path) -> None:
    (tmp_path / "loop.tif").symlink_to(tmp_path / "loop.tif")
    with pytest.raises(ImageReadError, match=r"loop\.tif: is a symbolic link loop"):
        read_image(tmp_path / "loop.tif")
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(ImageReadError, match=r"dir\.tif: is a folder"):
        image_info(tmp_path / "dir.tif")
    (tmp_path / "gone.tif").symlink_to(tmp_path / "nowhere.tif")
    with pytest.raises(ImageReadError, match=r"gone\.tif: is a symbolic link to .*nowhere\.tif.*does not exist"):
        image_info(tmp_path / "gone.tif")


def test_reader_errors_never_quote_the_file_content(tmp_path: Path) -> None:
    """A ``.tif`` linked to a text file: the message names the file but not its bytes."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:SECRET-CONTENT\n")
    link = tmp_path / "a.tif"
    link.symlink_to(secret)
    with pytest.raises(ImageReadError) as err:
        image_info(link)
    text = str(err.value)
    assert "a.tif" in text and "SECRET" not in text and "root:x" not in text
    assert "<file bytes omitted>" in text or "not a TIFF" in text


def test_a_tiff_of_several_images_reads_the_first_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A multi-position OME-TIFF (two series of equal size) is read as its first image, with a
    warning naming how many there are and how to measure the others; a pyramid (sub-resolutions
    of one image) and a small preview series are not other images."""
    first, second = np.full((64, 64), 100, np.uint16), np.full((64, 64), 5000, np.uint16)
    md = {"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2}
    multi = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(multi, ome=True) as tw:
        tw.write(first, metadata=md)
        tw.write(second, metadata=md)
    with caplog.at_level("WARNING", logger="analysis.io.images"):
        data, info = read_image(multi)
    assert data.shape == (1, 1, 64, 64) and float(data.mean()) == 100.0
    assert any("holds 2 images" in r.message and "only the first" in r.message and "own row of the sheet" in r.message
               for r in caplog.records)
    caplog.clear()
    pyramid = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(pyramid, ome=True) as tw:
        tw.write(np.ones((256, 256), np.uint16), subifds=1, metadata=md)
        tw.write(np.ones((128, 128), np.uint16), subfiletype=1)
    preview = tmp_path / "preview.tif"
    with tifffile.TiffWriter(preview) as tw:
        tw.write(np.ones((256, 256), np.uint16))
        tw.write(np.ones((64, 64), np.uint16))
    with caplog.at_level("WARNING", logger="analysis.io.images"):
        assert image_info(pyramid).shape == (256, 256) and image_info(preview).shape == (256, 256)
    assert not [r for r in caplog.records if "holds" in r.message]


def test_animal_ids_differing_in_letter_case_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / f"{name}.ome.tif", np.ones((64, 64), np.uint16), ome=True,
                         metadata={"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    (tmp_path / "samples.csv").write_text(
        "image_id,path,animal_id,genotype,compound,dose_mg_kg,treatment_days,day,pixel_size_um,"
        "synapse_channel,microglia_channel,lysosome_channel\n"
        "a,a.ome.tif,M001,WT,vehicle,0,7,7,,0,,\n"
        "b,b.ome.tif,m001,WT,vehicle,0,7,7,,0,,\n")
    with caplog.at_level("WARNING", logger="analysis.io.sheet"):
        samples = load_samples(tmp_path / "samples.csv")
    assert samples["animal_id"].nunique() == 2
    assert any("animal ids 'M001' and 'm001' differ only in letter case: they count as 2 animals" in r.message
               for r in caplog.records)
