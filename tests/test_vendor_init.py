"""Vendor formats (LSM, CZI; LIF and ND2 through a mocked bioio reader), channel roles by name,
and ``python -m analysis init``.

Where the files come from:
- LSM: written here (a minimal Zeiss LSM: a TIFF with the CZ_LSMINFO tag, thumbnails between
  the planes and a ChannelColors block, as tifffile parses real LSM files);
- CZI: written here with pylibCZIrw (installed with bioio-czi), read back through bioio-czi;
- LIF, ND2: no writer exists and no installed package ships a small file, so those tests drive
  the reader through a **mocked bioio plug-in** (a fake ``bioio_lif`` / ``bioio_nd2`` module
  with the bioio ``Reader`` interface), clearly marked ``MOCK`` below.  They check our side
  (axes, first scene and time point, metadata, errors), not the plug-ins' parsing.
"""

from __future__ import annotations

import csv
import logging
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from analysis.cli import main
from analysis.errors import ImageReadError, InputError, SampleSheetError
from analysis.io import image_info, load_samples, read_image
from analysis.io import images as images_module
from analysis.io import sheet as sheet_module
from analysis.io.starter import find_images, starter_sheet, write_starter_sheet

HEADER = ["image_id", "path", "animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day",
          "pixel_size_um", "synapse_channel", "microglia_channel", "lysosome_channel"]


# --- writers ---------------------------------------------------------------------------------

def write_lsm(path: Path, data: np.ndarray, voxel_um: tuple[float, float, float], names: list[str]) -> None:
    """A minimal Zeiss LSM file of ``data`` (Z, C, Y, X), uint16, with voxel size and channel names."""
    from tifffile import TIFF

    nz, nc, ny, nx = data.shape
    info = np.zeros(1, dtype=np.dtype(TIFF.CZ_LSMINFO)).view(np.recarray)
    info.MagicNumber = 67127628
    info.StructureSize = info.dtype.itemsize
    info.DimensionX, info.DimensionY, info.DimensionZ = nx, ny, nz
    info.DimensionChannels, info.DimensionTime = nc, 1
    info.DataType = 2
    info.ScanType = 0  # an x-y-z stack: ZCYX
    info.VoxelSizeX, info.VoxelSizeY, info.VoxelSizeZ = (v * 1e-6 for v in voxel_um)  # metres in LSM
    raw = info.tobytes()
    with tifffile.TiffWriter(path) as tw:
        for z in range(nz):
            tags = [(34412, "B", len(raw), raw, True)] if z == 0 else []
            tw.write(data[z], planarconfig="separate", photometric="minisblack", extratags=tags, contiguous=False,
                     metadata=None)
            tw.write(np.zeros((nc, 8, 8), np.uint8), planarconfig="separate", photometric="minisblack",
                     subfiletype=1, contiguous=False, metadata=None)  # thumbnail
    encoded = [n.encode() + b"\0" for n in names]
    blob = b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    colors = bytes(4 * nc)
    block = struct.pack("<IIIIII", 24 + len(colors) + len(blob), nc, nc, 24, 24 + len(colors), 0) + colors + blob
    fields = [n for n, _ in TIFF.CZ_LSMINFO]
    at = sum(np.dtype(t).itemsize for _, t in TIFF.CZ_LSMINFO[: fields.index("OffsetChannelColors")])
    with open(path, "r+b") as fh:
        start = fh.read().index(raw[:8])
        end = fh.seek(0, 2)
        fh.write(block)
        fh.seek(start + at)
        fh.write(struct.pack("<I", end))


def write_ome(path: Path, data: np.ndarray, axes: str, names: list[str] | None = None, px: float | None = 0.2,
              dz: float | None = None) -> None:
    md: dict = {"axes": axes}
    if px is not None:
        md.update(PhysicalSizeX=px, PhysicalSizeY=px)
    if dz is not None:
        md["PhysicalSizeZ"] = dz
    if names is not None:
        md["Channel"] = {"Name": names}
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata=md)


def write_sheet(path: Path, rows: list[dict[str, str]], extra: list[str] = ()) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*HEADER, *extra])
        w.writeheader()
        for r in rows:
            w.writerow({**dict.fromkeys([*HEADER, *extra], ""), **r})
    return path


def row(image_id: str, path: str, animal: str = "m1", compound: str = "vehicle", **kw: str) -> dict[str, str]:
    dose = "0" if compound == "vehicle" else "5"
    return {"image_id": image_id, "path": path, "animal_id": animal, "genotype": "WT", "compound": compound,
            "dose_mg_kg": dose, "treatment_days": "7", "day": "7", **kw}


RNG = np.random.default_rng(14)
PLANES = RNG.integers(0, 4000, (3, 3, 40, 48), dtype=np.uint16)  # Z, C, Y, X


# --- LSM (tifffile) --------------------------------------------------------------------------

def test_lsm_pixels_voxel_size_and_channel_names(tmp_path: Path) -> None:
    p = tmp_path / "stack.lsm"
    write_lsm(p, PLANES, (0.21, 0.21, 0.7), ["PSD95", "Iba1", "CD68"])
    info = image_info(p)
    assert info.pixel_size_um == pytest.approx(0.21) and info.z_step_um == pytest.approx(0.7)
    assert info.channel_names == ("PSD95", "Iba1", "CD68") and (info.n_channels, info.n_z) == (3, 3)
    data, _ = read_image(p)
    assert data.shape == (3, 3, 40, 48)
    np.testing.assert_array_equal(data, PLANES.transpose(1, 0, 2, 3))  # stored ZCYX -> CZYX


# --- CZI (written by pylibCZIrw, read by bioio-czi) ------------------------------------------

def write_czi(path: Path, data: np.ndarray, names: dict[int, str] | None, px_um: float, dz_um: float) -> None:
    czi = pytest.importorskip("pylibCZIrw.czi")
    with czi.create_czi(str(path), exist_ok=True) as w:
        for c in range(data.shape[0]):
            for z in range(data.shape[1]):
                w.write(data[c, z], plane={"C": c, "Z": z, "T": 0})
        w.write_metadata(document_name="test", channel_names=names, scale_x=px_um * 1e-6, scale_y=px_um * 1e-6,
                         scale_z=dz_um * 1e-6)


def test_czi_pixels_and_metadata(tmp_path: Path) -> None:
    pytest.importorskip("bioio_czi")
    czyx = PLANES.transpose(1, 0, 2, 3)[:2]
    p = tmp_path / "field.czi"
    write_czi(p, czyx, {0: "PSD95", 1: "Iba1"}, 0.13, 0.45)
    info = image_info(p)
    assert (info.axes, info.shape) == ("CZYX", (2, 3, 40, 48))
    assert info.pixel_size_um == pytest.approx(0.13) and info.z_step_um == pytest.approx(0.45)
    assert info.channel_names == ("PSD95", "Iba1")
    data, _ = read_image(p)
    np.testing.assert_array_equal(data, czyx)


def test_czi_damaged_file_is_a_message(tmp_path: Path) -> None:
    pytest.importorskip("bioio_czi")
    p = tmp_path / "field.czi"
    write_czi(p, PLANES.transpose(1, 0, 2, 3)[:1], None, 0.2, 0.5)
    cut = tmp_path / "cut.czi"
    cut.write_bytes(p.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match=r"cut\.czi.*(truncated or corrupt).*export it again"):
        read_image(cut)


# --- LIF / ND2: MOCK bioio plug-ins -------------------------------------------------------------

class _Dims:
    def __init__(self, order: str, shape: tuple[int, ...]) -> None:
        self.order = order
        for a, n in zip(order, shape, strict=True):
            setattr(self, a, n)


def mock_plugin(monkeypatch: pytest.MonkeyPatch, module: str, scenes: dict[str, np.ndarray], order: str = "TCZYX",
                names: list[str] | None = None, px: tuple = (0.5, 0.1, 0.1)) -> None:
    """MOCK: install a fake bioio plug-in module ``module`` whose Reader serves ``scenes`` (arrays in ``order``)."""
    scene_ids = tuple(scenes)

    class Reader:
        def __init__(self, path: str) -> None:
            self.path, self._scene = path, next(iter(scenes))

        scenes_ = scene_ids

        @property
        def scenes(self) -> tuple[str, ...]:
            return self.scenes_

        def set_scene(self, s: int | str) -> None:
            self._scene = self.scenes_[s] if isinstance(s, int) else s

        @property
        def dims(self) -> _Dims:
            return _Dims(order, scenes[self._scene].shape)

        @property
        def dtype(self) -> np.dtype:
            return scenes[self._scene].dtype

        @property
        def channel_names(self) -> list[str] | None:
            return names

        @property
        def physical_pixel_sizes(self) -> types.SimpleNamespace:
            return types.SimpleNamespace(Z=px[0], Y=px[1], X=px[2])

        def get_image_data(self, out: str, **fixed: int) -> np.ndarray:
            a, axes = scenes[self._scene], order
            for ax, i in fixed.items():
                a = np.take(a, i, axis=axes.index(ax))
                axes = axes.replace(ax, "")
            return np.transpose(a, [axes.index(x) for x in out])

    fake = types.ModuleType(module)
    fake.Reader = Reader
    monkeypatch.setitem(sys.modules, module, fake)


def test_mock_lif_first_scene_first_time_point_with_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tczyx = RNG.integers(0, 999, (2, 2, 3, 40, 48), dtype=np.uint16)
    mock_plugin(monkeypatch, "bioio_lif", {"Position 1": tczyx, "Position 2": tczyx + 1}, names=["PSD95", "Iba1"])
    p = tmp_path / "exp.lif"
    p.write_bytes(b"mock")
    images_module._WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="analysis.io.images"):
        data, info = read_image(p)
    np.testing.assert_array_equal(data, tczyx[0])
    assert (info.pixel_size_um, info.z_step_um, info.channel_names) == (0.1, 0.5, ("PSD95", "Iba1"))
    text = caplog.text
    assert "has 2 scenes" in text and "only the first, 'Position 1', is read" in text
    assert "has 2 time points; only the first is read" in text


def test_mock_nd2_rgb_samples_are_channels_and_placeholder_names_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tczyxs = RNG.integers(0, 255, (1, 1, 1, 40, 48, 3), dtype=np.uint8)
    mock_plugin(monkeypatch, "bioio_nd2", {"Image:0": tczyxs}, order="TCZYXS", names=["Channel:0:0"],
                px=(None, 0.3, 0.3))
    p = tmp_path / "rgb.nd2"
    p.write_bytes(b"mock")
    data, info = read_image(p)
    assert info.channel_names == ("red", "green", "blue") and info.z_step_um is None
    np.testing.assert_array_equal(data[:, 0], np.moveaxis(tczyxs[0, 0, 0], -1, 0))

    mock_plugin(monkeypatch, "bioio_nd2", {"Image:0": tczyxs[..., 0]}, names=["Channel:0:0"])
    assert image_info(p).channel_names == ()  # bioio's made-up name is not a channel name


def test_mock_mosaic_tiles_are_refused_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mock_plugin(monkeypatch, "bioio_lif", {"s": np.zeros((4, 1, 1, 1, 40, 48), np.uint16)}, order="MTCZYX")
    p = tmp_path / "tiles.lif"
    p.write_bytes(b"mock")
    with pytest.raises(ImageReadError, match=r"tiles\.lif.*M=4.*mosaic.*export each field"):
        image_info(p)


def test_missing_plugin_names_the_pip_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bioio_nd2", None)  # import fails as if not installed
    p = tmp_path / "a.nd2"
    p.write_bytes(b"x")
    with pytest.raises(ImageReadError, match=r"a\.nd2.*Nikon ND2.*pip install bioio-nd2"):
        image_info(p)


def test_vendor_missing_file_is_the_usual_message(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"gone\.czi: file not found"):
        image_info(tmp_path / "gone.czi")
    sheet = write_sheet(tmp_path / "samples.csv", [row("g", "gone.nd2", synapse_channel="0")])
    with pytest.raises(SampleSheetError, match=r"line 2, column 'path': image file not found: looked for 'gone\.nd2'"):
        load_samples(sheet)


# --- channel roles by name ---------------------------------------------------------------------

@pytest.fixture()
def named_study(tmp_path: Path) -> Path:
    write_ome(tmp_path / "a.ome.tif", RNG.integers(0, 100, (3, 64, 64), dtype=np.uint16), "CYX",
              ["PSD95", "Iba1", "CD68"])
    write_ome(tmp_path / "plain.ome.tif", RNG.integers(0, 100, (2, 64, 64), dtype=np.uint16), "CYX")
    return tmp_path


@pytest.mark.parametrize("check_images", [True, False])
def test_roles_by_name_resolve_to_indices(named_study: Path, check_images: bool) -> None:
    sheet = write_sheet(named_study / "samples.csv", [
        row("a1", "a.ome.tif", synapse_channel="psd95", microglia_channel=" IBA1", lysosome_channel="CD68"),
        row("a2", "a.ome.tif", synapse_channel="0"),
    ])
    s = load_samples(sheet, check_images=check_images)
    assert s.loc[0, ["synapse_channel", "microglia_channel", "lysosome_channel"]].tolist() == [0, 1, 2]
    assert str(s["synapse_channel"].dtype) == "Int64" and s.loc[1, "synapse_channel"] == 0


@pytest.mark.parametrize("check_images", [True, False])
def test_unknown_name_lists_the_file_channels(named_study: Path, check_images: bool) -> None:
    sheet = write_sheet(named_study / "samples.csv", [row("a1", "a.ome.tif", synapse_channel="PSD-95")])
    with pytest.raises(SampleSheetError) as exc:
        load_samples(sheet, check_images=check_images)
    (p,) = exc.value.problems
    assert (p.file, p.row, p.column) == (str(sheet), 2, "synapse_channel")
    assert "'PSD-95'" in p.message and "a.ome.tif has no channel of that name" in p.message
    assert "0 = PSD95, 1 = Iba1, 2 = CD68" in p.message and "0-based channel index" in p.message


def test_name_for_a_file_without_names_and_unreadable_file(named_study: Path) -> None:
    sheet = write_sheet(named_study / "samples.csv", [
        row("p1", "plain.ome.tif", synapse_channel="PSD95"),
        row("x1", "missing.ome.tif", animal="m2", synapse_channel="PSD95"),
    ])
    with pytest.raises(SampleSheetError) as exc:
        load_samples(sheet, check_images=False)
    first, second = exc.value.problems
    assert (first.row, first.column) == (2, "synapse_channel")
    assert "names none of its 2 channel(s)" in first.message
    assert (second.row, second.column) == (3, "synapse_channel") and "cannot be read" in second.message
    assert "image file not found" in second.message


def test_two_roles_one_name_and_bad_indices_still_rejected(named_study: Path) -> None:
    sheet = write_sheet(named_study / "samples.csv", [
        row("a1", "a.ome.tif", synapse_channel="PSD95", microglia_channel="0"),
        row("a2", "a.ome.tif", animal="m2", synapse_channel="nan"),
        row("a3", "a.ome.tif", animal="m3", synapse_channel="-1"),
    ])
    with pytest.raises(SampleSheetError) as exc:
        load_samples(sheet)
    msgs = {(p.row, p.column): p.message for p in exc.value.problems}
    assert "synapse_channel and microglia_channel are both 0" in msgs[(2, "microglia_channel")]
    assert "whole numbers >= 0" in msgs[(3, "synapse_channel")] and "name" in msgs[(3, "synapse_channel")]
    assert "whole numbers >= 0" in msgs[(4, "synapse_channel")]


def test_registered_role_by_name(named_study: Path) -> None:
    sheet_module.register_channel_role("test14_channel")
    try:
        sheet = write_sheet(named_study / "samples.csv", [row("a1", "a.ome.tif", test14_channel="cd68")],
                            extra=["test14_channel"])
        s = load_samples(sheet)
        assert s.loc[0, "test14_channel"] == 2
    finally:
        sheet_module._EXTRA_CHANNEL_COLUMNS.remove("test14_channel")


def test_lsm_role_by_name(tmp_path: Path) -> None:
    write_lsm(tmp_path / "z.lsm", np.full((2, 3, 64, 64), 7, np.uint16), (0.2, 0.2, 0.5), ["PSD95", "Iba1", "CD68"])
    sheet = write_sheet(tmp_path / "samples.csv", [row("z", "z.lsm", microglia_channel="iba1", pixel_size_um="")])
    s = load_samples(sheet)
    assert s.loc[0, "microglia_channel"] == 1 and s.loc[0, "pixel_size_um"] == pytest.approx(0.2)
    assert s.loc[0, "z_step_um"] == pytest.approx(0.5)


# --- init ----------------------------------------------------------------------------------------

@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    (root / "mouse1").mkdir(parents=True)
    (root / "mouse2").mkdir()
    write_ome(root / "mouse1" / "field1.ome.tif", RNG.integers(0, 100, (2, 64, 64), dtype=np.uint16), "CYX",
              ["PSD95", "Iba1"], px=0.2)
    write_ome(root / "mouse2" / "field1.ome.tif", RNG.integers(0, 100, (2, 4, 64, 64), dtype=np.uint16), "CZYX",
              ["PSD95", "Iba1"], px=0.2, dz=0.5)
    write_ome(root / "mouse2" / "nometa.ome.tif", RNG.integers(0, 100, (64, 64), dtype=np.uint16), "YX", px=None)
    (root / "mouse2" / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.tif").write_bytes(b"x")
    out = root / "processed"  # our outputs inside the data folder: not images of the study
    out.mkdir()
    (out / "measurements.parquet").write_bytes(b"")
    tifffile.imwrite(out / "overlay.tif", np.zeros((8, 8), np.uint8))
    return root


def test_find_images_skips_non_images_hidden_and_outputs(image_folder: Path) -> None:
    found = [p.relative_to(image_folder).as_posix() for p in find_images(image_folder)]
    assert found == ["mouse1/field1.ome.tif", "mouse2/broken.tif", "mouse2/field1.ome.tif", "mouse2/nometa.ome.tif"]


def test_starter_sheet_content(image_folder: Path) -> None:
    s = starter_sheet(image_folder, progress=False)
    t = s.table.set_index("path")
    assert list(s.table.columns[:12]) == HEADER
    assert list(t.index) == ["mouse1/field1.ome.tif", "mouse2/field1.ome.tif", "mouse2/nometa.ome.tif"]
    assert t["image_id"].tolist() == ["mouse1_field1", "mouse2_field1", "nometa"]
    assert t["pixel_size_um"].tolist() == ["0.2", "0.2", ""]
    assert t["z_step_um"].tolist() == ["", "0.5", ""]
    assert t["channel_names"].tolist() == ["0:PSD95|1:Iba1", "0:PSD95|1:Iba1", "0"]
    assert (t[["animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day", "synapse_channel",
               "microglia_channel", "lysosome_channel"]] == "").all().all()
    (rel, reason), = s.unreadable
    assert rel == "mouse2/broken.tif" and "corrupt" in reason


def test_init_then_fill_then_validate(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "init", str(image_folder)]) == 0
    out = capsys.readouterr().out
    sheet = image_folder / "samples.csv"
    assert f"wrote {sheet}: 3 image(s)" in out and "mouse2/broken.tif" in out
    for needed in ("animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day", "synapse_channel",
                   "channel_names column (e.g. 0:PSD95|1:Iba1)", "pixel_size_um (micrometres) on the 1 row(s)",
                   "python -m analysis validate"):
        assert needed in out, needed
    with pytest.raises(SampleSheetError):  # as written, the sheet is not complete
        load_samples(sheet)
    t = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    for i, (animal, compound, dose) in enumerate([("m1", "vehicle", "0"), ("m2", "diazepam", "5"),
                                                  ("m2", "diazepam", "5")]):
        t.loc[i, ["animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day"]] = \
            [animal, "WT", compound, dose, "7", str(7 + i)]
    t.loc[0:1, "synapse_channel"] = "PSD95"
    t.loc[0:1, "microglia_channel"] = "iba1"
    t.loc[2, ["synapse_channel", "pixel_size_um"]] = ["0", "0.2"]
    t.to_csv(sheet, index=False)
    s = load_samples(sheet)
    assert s["synapse_channel"].tolist() == [0, 0, 0] and s.loc[:1, "microglia_channel"].tolist() == [1, 1]
    assert s["z_step_um"].iloc[1] == pytest.approx(0.5) and s["channel_names"].iloc[0] == "0:PSD95|1:Iba1"


def test_init_refuses_to_overwrite_without_force(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sheet = image_folder / "samples.csv"
    sheet.write_text("image_id\nmine\n")
    assert main(["-q", "init", str(image_folder)]) == 2
    err = capsys.readouterr().err
    assert "samples.csv: already exists" in err and "--force" in err and "Traceback" not in err
    assert sheet.read_text() == "image_id\nmine\n"
    assert main(["-q", "init", "--force", str(image_folder)]) == 0
    assert pd.read_csv(sheet, dtype=str)["path"].tolist() == ["mouse1/field1.ome.tif", "mouse2/field1.ome.tif",
                                                              "mouse2/nometa.ome.tif"]


def test_init_without_images_or_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("x")
    assert main(["-q", "init", str(tmp_path)]) == 2
    assert "no image files found" in capsys.readouterr().err and not (tmp_path / "samples.csv").exists()
    assert main(["-q", "init", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 nope")
    with pytest.raises(InputError, match=r"bad\.tif: cannot be read"):
        write_starter_sheet(tmp_path, progress=False)


def test_init_ids_unique_and_vendor_files_listed(tmp_path: Path) -> None:
    write_lsm(tmp_path / "a.lsm", np.ones((1, 3, 64, 64), np.uint16), (0.3, 0.3, 1.0), ["PSD95", "Iba1", "CD68"])
    write_ome(tmp_path / "a.ome.tif", np.ones((64, 64), np.uint16), "YX")
    s = starter_sheet(tmp_path, progress=False)
    assert s.table["image_id"].tolist() == ["a_lsm", "a_ome_tif"]
    assert s.table["channel_names"].tolist() == ["0:PSD95|1:Iba1|2:CD68", "0"]
    assert s.table["pixel_size_um"].tolist() == ["0.3", "0.2"] and s.table["z_step_um"].tolist() == ["", ""]
