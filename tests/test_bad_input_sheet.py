"""Bad and unusual sample sheets: each is accepted with the right values or rejected with a clear message.

One row of :data:`CASES` per input a new user might give ``python -m analysis validate``
(:func:`analysis.io.load_samples`): an edit of a small valid study, and what must happen:
``ok({(row, column): value})`` (accepted, and these parsed values are right) or
``bad(line, column, *phrases)`` (a :class:`SampleSheetError` naming the sheet, the line and the
column, with these words of the fix).  A sheet accepted here is one the run can use: plausible
units, a z step for stacks, images large enough, one image per row, distinct channel roles and
the models' group names.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from analysis.errors import SampleSheetError
from analysis.io import KNOWN_COMPOUNDS, KNOWN_GENOTYPES, REFERENCE_COMPOUND, load_samples

HEADER = [
    "image_id", "path", "animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day",
    "pixel_size_um", "synapse_channel", "microglia_channel", "lysosome_channel", "sex",
]
# line = row + 2 (the header is line 1)
ROWS = [
    ["v0", "images/v0.ome.tif", "001", "WT", "vehicle", "0", "7", "-3", "0.2", "0", "", "", "F"],
    ["v7", "images/v7.ome.tif", "001", "WT", "vehicle", "0", "7", "7", "0.2", "0", "", "", "F"],
    ["d7", "images/d7.ome.tif", "002", "WT", "diazepam", "5", "7", "7", "", "0", "", "", "M"],
    ["t7", "images/t7.ome.tif", "002", "WT", "diazepam", "5", "7", "7", "0.2", "0", "1", "2", "M"],
]


def ome(path: Path, data: np.ndarray, axes: str, size: float | None = 0.2, **extra: object) -> None:
    md: dict[str, object] = {"axes": axes, **extra}
    if size is not None:
        md.update({"PhysicalSizeX": size, "PhysicalSizeY": size, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata=md)


@dataclass
class Study:
    """A small valid study to edit: 64 x 64 planes at 0.2 um (12.8 um on a side)."""

    dir: Path
    header: list[str] = field(default_factory=lambda: list(HEADER))
    rows: list[list[str]] = field(default_factory=lambda: [list(r) for r in ROWS])
    delimiter: str = ","
    newline: str = "\n"
    prefix: str = ""
    raw: bytes | None = None
    sheet_name: str = "samples.csv"

    def set(self, row: int, column: str, value: str) -> None:
        self.rows[row][self.header.index(column)] = value

    def get(self, row: int, column: str) -> str:
        return self.rows[row][self.header.index(column)]

    def add_column(self, name: str, values: list[str]) -> None:
        self.header.append(name)
        for r, v in zip(self.rows, values, strict=True):
            r.append(v)

    def image(self, row: int, name: str, write: Callable[[Path], None]) -> None:
        write(self.dir / "images" / name)
        self.set(row, "path", f"images/{name}")

    def text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=self.delimiter, lineterminator=self.newline)
        w.writerow(self.header)
        w.writerows(self.rows)
        return self.prefix + buf.getvalue()

    def write(self) -> Path:
        sheet = self.dir / self.sheet_name
        sheet.write_bytes(self.raw if self.raw is not None else self.text().encode("utf-8"))
        return sheet


def make_study(root: Path) -> Study:
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for name in ("v0", "v7", "d7"):
        ome(root / "images" / f"{name}.ome.tif", rng.integers(0, 500, (64, 64)).astype(np.uint16), "YX")
    ome(root / "images" / "t7.ome.tif", rng.integers(0, 500, (3, 64, 64)).astype(np.uint16), "CYX")
    return Study(root)


@dataclass(frozen=True)
class Ok:
    values: dict[tuple[int, str], object]


@dataclass(frozen=True)
class Bad:
    line: int | None
    column: str | None
    phrases: tuple[str, ...]


def ok(values: dict[tuple[int, str], object] | None = None) -> Ok:
    return Ok(values or {})


def bad(line: int | None, column: str | None, *phrases: str) -> Bad:
    return Bad(line, column, phrases)


# --- edits ---------------------------------------------------------------------------------

def nothing(s: Study) -> None:
    pass


def value(row: int, column: str, v: str) -> Callable[[Study], None]:
    return lambda s: s.set(row, column, v)


def values(*edits: tuple[int, str, str]) -> Callable[[Study], None]:
    def edit(s: Study) -> None:
        for row, column, v in edits:
            s.set(row, column, v)
    return edit


def column(name: str, vals: list[str]) -> Callable[[Study], None]:
    return lambda s: s.add_column(name, vals)


def raw_text(transform: Callable[[str], str]) -> Callable[[Study], None]:
    def edit(s: Study) -> None:
        s.raw = transform(s.text()).encode("utf-8")
    return edit


def stack(spacing: float | None, n_z: int = 4) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        md = {"axes": "ZYX", "unit": "um"}
        if spacing is not None:
            md["spacing"] = spacing
        tifffile.imwrite(p, np.ones((n_z, 64, 64), np.uint16), imagej=True, resolution=(5.0, 5.0), metadata=md)
    return write


def plane(shape: tuple[int, ...], axes: str = "YX", size: float | None = 0.2) -> Callable[[Path], None]:
    return lambda p: ome(p, np.ones(shape, np.uint16), axes, size)


def tiff(data: np.ndarray, **kw: object) -> Callable[[Path], None]:
    return lambda p: tifffile.imwrite(p, data, **kw)


#: A plane whose OME metadata give pixels of 0.2 um (x) by 0.4 um (y).
NON_SQUARE_OME = tiff(np.ones((64, 64), np.uint16), ome=True, photometric="minisblack",
                      metadata={"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.4})


def on_row(row: int, name: str, write: Callable[[Path], None], *then: tuple[int, str, str]) -> Callable[[Study], None]:
    def edit(s: Study) -> None:
        s.image(row, name, write)
        for r, c, v in then:
            s.set(r, c, v)
    return edit


def symlink_loop(s: Study) -> None:
    (s.dir / "images" / "loop.tif").symlink_to(s.dir / "images" / "loop.tif")
    s.set(0, "path", "images/loop.tif")


def folder_as_image(s: Study) -> None:
    (s.dir / "images" / "sub.tif").mkdir()
    s.set(0, "path", "images/sub.tif")


def empty_image(s: Study) -> None:
    (s.dir / "images" / "empty.tif").write_bytes(b"")
    s.set(0, "path", "images/empty.tif")


def truncated_image(s: Study) -> None:
    data = (s.dir / "images" / "v0.ome.tif").read_bytes()
    (s.dir / "images" / "cut.ome.tif").write_bytes(data[:300])
    s.set(0, "path", "images/cut.ome.tif")


def absolute_path(s: Study) -> None:
    s.set(1, "path", str((s.dir / "images" / "v7.ome.tif").resolve()))


def outside_folder(s: Study) -> None:
    (s.dir / "elsewhere").mkdir()
    (s.dir / "images" / "v7.ome.tif").rename(s.dir / "elsewhere" / "v7.ome.tif")
    (s.dir / "sheets").mkdir()
    s.sheet_name = "sheets/samples.csv"
    for r in (0, 2, 3):
        s.set(r, "path", "../" + s.get(r, "path"))
    s.set(1, "path", "../elsewhere/v7.ome.tif")


def same_file_other_role(s: Study) -> None:
    s.rows.append(["t7b", "images/t7.ome.tif", "002", "WT", "diazepam", "5", "7", "7", "0.2", "", "1", "", "M"])
    s.set(3, "microglia_channel", "")
    s.set(3, "lysosome_channel", "")


def header_only(s: Study) -> None:
    s.rows = []


def csv_bytes(data: bytes) -> Callable[[Study], None]:
    def edit(s: Study) -> None:
        s.raw = data
    return edit


def attr(name: str, v: str) -> Callable[[Study], None]:
    return lambda s: setattr(s, name, v)


def semicolon_decimal_comma(s: Study) -> None:
    s.delimiter = ";"
    s.set(0, "pixel_size_um", "0,2")


def duplicated_header(s: Study) -> None:
    s.add_column("day", [r[s.header.index("day")] for r in s.rows])


def no_vehicle(s: Study) -> None:
    for r in (0, 1):
        s.set(r, "compound", "diazepam")
        s.set(r, "dose_mg_kg", "5")


def rename_header(old: str, new: str) -> Callable[[Study], None]:
    return lambda s: s.header.__setitem__(s.header.index(old), new)


def unnamed_column(s: Study) -> None:
    s.add_column("", ["x", "", "", ""])


def extra_value(s: Study) -> None:
    s.rows[2].append("surplus")


def unterminated_quote(s: Study) -> None:
    s.raw = s.text().replace(",F\n", ',"F\n', 1).encode()


def blank_lines_then_bad(s: Study) -> None:
    s.set(1, "dose_mg_kg", "-1")
    s.raw = s.text().replace("\n", "\n\n", 1).encode()  # a blank line 2: row 1 is now on line 4


def latin1(s: Study) -> None:
    s.set(0, "sex", "männlich")
    s.raw = s.text().encode("latin-1")


def all_roles_one_channel(s: Study) -> None:
    s.set(3, "microglia_channel", "0")
    s.set(3, "lysosome_channel", "0")


WHITESPACE = raw_text(lambda t: t.replace(",", " , ").replace("vehicle", "  vehicle "))
RGB = np.zeros((64, 64, 3), np.uint8)
ZCYX = np.ones((4, 2, 64, 64), np.uint16)

CASES = [
    # accepted with the right values
    ("valid", nothing, ok({(2, "pixel_size_um"): 0.2, (0, "day"): -3.0, (3, "lysosome_channel"): 2, (0, "z_step_um"): np.nan})),
    ("utf8 byte-order mark", attr("prefix", "\ufeff"), ok({(0, "image_id"): "v0", (2, "dose_mg_kg"): 5.0})),
    ("windows line endings", attr("newline", "\r\n"), ok({(3, "sex"): "M", (3, "lysosome_channel"): 2})),
    ("semicolon separated", attr("delimiter", ";"), ok({(2, "dose_mg_kg"): 5.0, (1, "day"): 7.0})),
    ("tab separated", attr("delimiter", "\t"), ok({(2, "dose_mg_kg"): 5.0})),
    ("blank lines", raw_text(lambda t: "\n" + t.replace("\n", "\n\n") + "\n\n"), ok({(3, "image_id"): "t7"})),
    ("trailing commas", raw_text(lambda t: t.replace("\n", ",,\n")), ok({(3, "sex"): "M"})),
    ("row of empty cells", raw_text(lambda t: t + ",,,,,,,,,,,,\n"), ok({(3, "image_id"): "t7"})),
    ("spaces around values", WHITESPACE, ok({(0, "compound"): "vehicle", (0, "path"): "images/v0.ome.tif"})),
    ("Vehicle capitalised", values((0, "compound", "Vehicle"), (1, "compound", "Vehicle")), ok({(0, "compound"): "vehicle"})),
    ("VEHICLE and wt", values((0, "compound", " VEHICLE"), (1, "compound", "vehicle"), (0, "genotype", "wt"), (1, "genotype", "Wt")),
     ok({(0, "compound"): "vehicle", (1, "genotype"): "WT"})),
    ("Diazepam capitalised", values((2, "compound", "Diazepam"), (3, "compound", "DIAZEPAM")), ok({(3, "compound"): "diazepam"})),
    ("TSPO-KO and XBD-173 spellings", values((2, "genotype", "tspo-ko"), (3, "genotype", "TSPO KO"), (2, "compound", "XBD-173"),
                                              (3, "compound", "xbd173")), ok({(2, "genotype"): "TSPO_KO", (3, "compound"): "XBD173"})),
    ("sex spelled out", values((0, "sex", "female"), (1, "sex", "F"), (2, "sex", " Male"), (3, "sex", "m")),
     ok({(0, "sex"): "F", (1, "sex"): "F", (2, "sex"): "M", (3, "sex"): "M"})),
    ("other sex labels kept", values((2, "sex", "unknown"), (3, "sex", "unknown")), ok({(2, "sex"): "unknown"})),
    ("unknown genotype kept as written", values((2, "genotype", "Cx3cr1-GFP"), (3, "genotype", "Cx3cr1-GFP")),
     ok({(2, "genotype"): "Cx3cr1-GFP"})),
    ("image outside the sheet's folder", outside_folder, ok({(1, "pixel_size_um"): 0.2})),
    ("ids keep leading zeros", nothing, ok({(0, "animal_id"): "001"})),
    ("extra column kept", column("region", ["S1", "S1", "CA1", "CA1"]), ok({(2, "region"): "CA1"})),
    ("quoted comma in a value", column("note", ["a, b", "", "", ""]), ok({(0, "note"): "a, b"})),
    ("stack with ImageJ spacing", on_row(2, "z.tif", stack(0.5), (2, "pixel_size_um", "0.2")), ok({(2, "z_step_um"): 0.5})),
    ("stack with z_step_um column", lambda s: (on_row(2, "z.tif", stack(None))(s), s.add_column("z_step_um", ["", "", "0.75", ""])),
     ok({(2, "z_step_um"): 0.75, (0, "z_step_um"): np.nan})),
    ("override keeps the sheet's pixel size", lambda s: (s.set(0, "pixel_size_um", "0.25"), s.add_column("pixel_size_override", ["yes", "", "", ""])),
     ok({(0, "pixel_size_um"): 0.25})),
    ("pixel size within 1 % of metadata", value(0, "pixel_size_um", "0.201"), ok({(0, "pixel_size_um"): 0.201})),
    ("non-square metadata overridden", lambda s: (on_row(2, "ns.ome.tif", NON_SQUARE_OME, (2, "pixel_size_um", "0.2"))(s),
                                                  s.add_column("pixel_size_override", ["", "", "yes", ""])),
     ok({(2, "pixel_size_um"): 0.2})),
    ("OME pixel size 0 (unknown) and the sheet's", on_row(2, "p0.ome.tif", tiff(np.ones((64, 64), np.uint16), ome=True, metadata={
        "axes": "YX", "PhysicalSizeX": 0.0, "PhysicalSizeY": 0.0}), (2, "pixel_size_um", "0.2")), ok({(2, "pixel_size_um"): 0.2})),
    ("OME pixel size NaN and the sheet's", on_row(2, "pn.ome.tif", tiff(np.ones((64, 64), np.uint16), ome=True, metadata={
        "axes": "YX", "PhysicalSizeX": float("nan"), "PhysicalSizeY": float("nan")}), (2, "pixel_size_um", "0.2")),
     ok({(2, "pixel_size_um"): 0.2})),
    ("pixel width and height within 1 %", on_row(2, "near.ome.tif", tiff(np.ones((64, 64), np.uint16), ome=True, metadata={
        "axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2016})), ok({(2, "pixel_size_um"): 0.2})),
    ("RGB TIFF green channel", on_row(0, "rgb.tif", tiff(RGB, photometric="rgb"), (0, "synapse_channel", "1")), ok({(0, "synapse_channel"): 1})),
    ("Fiji ZCYX hyperstack", on_row(3, "hyper.tif", tiff(ZCYX, imagej=True, resolution=(5.0, 5.0), metadata={"axes": "ZCYX", "unit": "um", "spacing": 0.4}),
                                    (3, "lysosome_channel", "")), ok({(3, "z_step_um"): 0.4, (3, "pixel_size_um"): 0.2})),
    ("LZW compressed", on_row(0, "lzw.tif", tiff(np.ones((64, 64), np.uint16), compression="lzw", resolution=(5.0, 5.0), imagej=True,
                                                  metadata={"unit": "um"})), ok({(0, "pixel_size_um"): 0.2})),
    ("zlib compressed", on_row(0, "zlib.tif", tiff(np.ones((64, 64), np.uint16), compression="zlib")), ok({(0, "pixel_size_um"): 0.2})),
    ("same file, same animal, other role", same_file_other_role, ok({(4, "microglia_channel"): 1})),
    ("dose 5.0 and 5 for one animal", value(3, "dose_mg_kg", "5.0"), ok({(3, "dose_mg_kg"): 5.0})),
    ("absolute image path", absolute_path, ok({(1, "pixel_size_um"): 0.2})),
    # a sheet made on Windows: the file is found (its metadata pixel size is read from it)
    ("windows separators", values((0, "path", "images\\v0.ome.tif"), (0, "pixel_size_um", "")),
     ok({(0, "pixel_size_um"): 0.2})),
    # rejected with a message naming line, column and fix
    ("pixel size in nm", value(0, "pixel_size_um", "100"), bad(2, "pixel_size_um", "100", "looks like nanometres: 0.1 um?")),
    ("pixel size in mm", value(1, "pixel_size_um", "0.0001"), bad(3, "pixel_size_um", "looks like millimetres: 0.1 um?")),
    ("pixel size inf", value(0, "pixel_size_um", "inf"), bad(2, "pixel_size_um", "inf, not a finite number")),
    ("pixel size nan", value(0, "pixel_size_um", "nan"), bad(2, "pixel_size_um", "'nan', not a number")),
    ("pixel size 0", value(0, "pixel_size_um", "0"), bad(2, "pixel_size_um", "pixel_size_um is 0", "> 0 in micrometres")),
    ("pixel size 7 um", value(0, "pixel_size_um", "7"), bad(2, "pixel_size_um", "outside the plausible pixel size of 0.01-5 um")),
    ("sheet vs metadata", value(0, "pixel_size_um", "0.4"), bad(2, "pixel_size_um", "is 0.4", "give 0.2 um", "correct the sheet",
                                                               "leave pixel_size_um empty", "pixel_size_override set to yes")),
    ("override not yes/no", lambda s: (s.set(0, "pixel_size_um", "0.4"), s.add_column("pixel_size_override", ["maybe", "", "", ""])),
     bad(2, "pixel_size_override", "'maybe'", "write yes")),
    ("metadata pixel size implausible", on_row(2, "p100.ome.tif", plane((64, 64), size=100.0)),
     bad(4, "pixel_size_um", "metadata", "100 um", "nanometres: 0.1 um?")),
    # pixels that are not square: measured as square they would give wrong areas and densities
    ("pixels not square (OME)", on_row(2, "ns.ome.tif", NON_SQUARE_OME),
     bad(4, "path", "0.2 um (x) by 0.4 um (y)", "square pixels", "Image > Scale", "pixel_size_override")),
    ("pixels not square (ImageJ resolution)", on_row(2, "ns.tif", tiff(np.ones((64, 64), np.uint16), imagej=True, resolution=(5.0, 2.5),
                                                                        metadata={"unit": "um"})),
     bad(4, "path", "0.2 um (x) by 0.4 um (y)", "square pixels")),
    ("stack without z step", on_row(2, "z.tif", stack(None), (2, "pixel_size_um", "0.2")),
     bad(4, "z_step_um", "stack of 4 z-slices", "add a column z_step_um", "Voxel depth")),
    ("z step in nm", lambda s: (on_row(2, "z.tif", stack(None))(s), s.add_column("z_step_um", ["", "", "500", ""])),
     bad(4, "z_step_um", "outside the plausible z step", "nanometres: 0.5 um?")),
    ("z step not a number", column("z_step_um", ["half", "", "", ""]), bad(2, "z_step_um", "'half', not a number")),
    ("2 x 2 image", on_row(0, "tiny.ome.tif", plane((2, 2))), bad(2, "path", "2 x 2 pixels", "at least 32 x 32")),
    ("40 x 40 pixels of 0.2 um", on_row(0, "small.ome.tif", plane((40, 40))), bad(2, "path", "40 x 40 pixels", "8 x 8 um", "10 um on a side")),
    ("one file, two animals", values((2, "path", "images/v7.ome.tif")), bad(4, "path", "also listed on line 3", "animal_id",
                                                                            "one image shows one animal")),
    ("one file, two days", value(0, "path", "images/v7.ome.tif"), bad(3, "path", "also listed on line 2", "day '-3' vs '7'")),
    ("one channel for all roles", all_roles_one_channel, bad(5, "microglia_channel", "synapse_channel and microglia_channel are both 0")),
    ("duplicated column name", duplicated_header, bad(1, "day", "'day' appears 2 times", "columns 8 and 14")),
    ("header only", header_only, bad(2, None, "no images listed")),
    ("empty file", csv_bytes(b""), bad(None, None, "the sheet is empty")),
    ("only blank lines", csv_bytes(b"\n\r\n  \n"), bad(None, None, "the sheet is empty")),
    ("no vehicle group", no_vehicle, bad(None, "compound", "no vehicle group", "diazepam", "rename your control group")),
    ("negative dose", value(2, "dose_mg_kg", "-1"), bad(4, "dose_mg_kg", "dose_mg_kg is -1", ">= 0")),
    ("dose not a number", value(2, "dose_mg_kg", "five"), bad(4, "dose_mg_kg", "'five', not a number")),
    ("dose with its unit", values((2, "dose_mg_kg", "5 mg/kg"), (3, "dose_mg_kg", "5 mg/kg")), bad(4, "dose_mg_kg", "'5 mg/kg', not a number")),
    ("negative channel", value(0, "synapse_channel", "-1"), bad(2, "synapse_channel", "'-1'", "whole numbers >= 0")),
    ("channel nan", value(3, "microglia_channel", "nan"), bad(5, "microglia_channel", "whole numbers >= 0")),
    ("decimal comma", semicolon_decimal_comma, bad(2, "pixel_size_um", "use a decimal point: 0.2")),
    ("day not a number", value(1, "day", "baseline"), bad(3, "day", "'baseline', not a number", "negative for baseline")),
    ("day 7.5", values((1, "day", "7.5")), bad(3, "day", "day is 7.5", "whole days")),
    ("treatment_days 6.5", values((2, "treatment_days", "6.5"), (3, "treatment_days", "6.5")), bad(4, "treatment_days", "whole days")),
    ("treatment_days inf", value(1, "treatment_days", "inf"), bad(3, "treatment_days", "not a finite number")),
    ("vehicle with a dose", value(0, "dose_mg_kg", "5"), bad(2, "dose_mg_kg", "vehicle rows have dose 0")),
    ("treated with dose 0", values((2, "dose_mg_kg", "0"), (3, "dose_mg_kg", "0")), bad(4, "dose_mg_kg", "dose_mg_kg is 0", "give the dose")),
    ("treated for 0 days", values((2, "treatment_days", "0"), (3, "treatment_days", "0")),
     bad(4, "treatment_days", "treatment_days is 0 but dose_mg_kg is 5", "planned days of dosing")),
    ("animal with two sexes", value(1, "sex", "M"), bad(3, "sex", "animal '001' has more than one sex", "'F' on line 2")),
    ("animal with two doses", value(3, "dose_mg_kg", "1"), bad(5, "dose_mg_kg", "more than one dose_mg_kg", "'5' on line 4", "'1' on line 5")),
    ("missing image", value(0, "path", "images/missing.tif"), bad(2, "path", "image file not found", "images/missing.tif")),
    ("image name in other letter case", value(0, "path", "images/V0.OME.TIF"),
     bad(2, "path", "image file not found", "did you mean 'v0.ome.tif'? file names are case-sensitive")),
    ("windows drive letter", value(0, "path", "C:\\data\\v0.ome.tif"),
     bad(2, "path", "image file not found", "a Windows path: write it relative to the sheet's folder")),
    ("windows separators, file missing", value(0, "path", "images\\gone.tif"),
     bad(2, "path", "image file not found", "with '/' instead of '\\'")),
    ("duplicate image_id", value(1, "image_id", "v0"), bad(3, "image_id", "'v0' appears on lines 2, 3", "must be unique")),
    ("channel index 1.5", value(3, "lysosome_channel", "1.5"), bad(5, "lysosome_channel", "whole numbers >= 0")),
    ("channel out of range", value(0, "synapse_channel", "1"), bad(2, "synapse_channel", "has 1 channel(s) (valid: 0-0)")),
    ("RGB channel 3", on_row(0, "rgb.tif", tiff(RGB, photometric="rgb"), (0, "synapse_channel", "3")),
     bad(2, "synapse_channel", "RGB image: 0 = red, 1 = green, 2 = blue")),
    ("time series", on_row(0, "t.tif", tiff(np.ones((3, 64, 64), np.uint16), imagej=True, metadata={"axes": "TYX"})),
     bad(2, "path", "3 time points", "Re-order Hyperstack", "Stack to Images")),
    ("unknown 4-D axes", on_row(0, "q.tif", tiff(np.ones((3, 2, 64, 64), np.uint16), photometric="minisblack")), bad(2, "path", "'QQYX'", "Image > Properties")),
    ("symlink loop", symlink_loop, bad(2, "path", "loop.tif is a symbolic link loop")),
    ("image path is a folder", folder_as_image, bad(2, "path", "is a folder, not an image file")),
    ("empty image file", empty_image, bad(2, "path", "is empty (0 bytes)")),
    ("truncated image", truncated_image, bad(2, "path", "truncated or corrupt", "export it again")),
    ("unsupported format", lambda s: ((s.dir / "images" / "a.png").write_bytes(b"x"), s.set(0, "path", "images/a.png")),
     bad(2, "path", "unsupported image format", "OME-TIFF")),
    ("values in an unnamed column", unnamed_column, bad(1, None, "column 14 has values", "no name in the header")),
    ("too many values in a row", extra_value, bad(4, None, "14 values but the header has 13", "quoted")),
    ("unterminated quote", unterminated_quote, bad(2, "sex", "a quote", "close the quote")),
    ("blank line shifts the line number", blank_lines_then_bad, bad(4, "dose_mg_kg", "dose_mg_kg is -1")),
    ("Excel workbook", csv_bytes(b"PK\x03\x04" + b"\x00" * 100), bad(None, None, "binary file", "CSV UTF-8")),
    ("latin-1 encoding", latin1, bad(2, None, "not UTF-8", "CSV UTF-8")),
    ("column name in other case", rename_header("image_id", "Image ID"), bad(1, None, "missing required column(s) image_id", "'Image ID' -> 'image_id'")),
    ("required column missing", rename_header("day", "days"), bad(1, None, "missing required column(s) day", "add them")),
    ("animal_id empty", value(0, "animal_id", ""), bad(2, "animal_id", "animal_id is empty")),
    ("two genotypes for one animal", value(1, "genotype", "TSPO_KO"), bad(3, "genotype", "more than one genotype")),
]


@pytest.mark.parametrize(("edit", "expect"), [pytest.param(e, x, id=name) for name, e, x in CASES])
def test_sheet(tmp_path: Path, edit: Callable[[Study], None], expect: Ok | Bad) -> None:
    study = make_study(tmp_path)
    edit(study)
    sheet = study.write()
    if isinstance(expect, Ok):
        samples = load_samples(sheet)
        assert len(samples) == len(study.rows)
        assert samples["z_step_um"].dtype == float
        for (row, col), want in expect.values.items():
            got = samples.at[row, col]
            if isinstance(want, float) and np.isnan(want):
                assert pd.isna(got), (row, col, got)
            elif isinstance(want, float):
                assert got == pytest.approx(want), (row, col, got)
            else:
                assert got == want, (row, col, got)
        return
    with pytest.raises(SampleSheetError) as exc:
        load_samples(sheet)
    msg = str(exc.value)
    assert all(p.file == str(sheet) for p in exc.value.problems), msg
    where = [f"line {expect.line}" if expect.line is not None else None,
             f"column '{expect.column}'" if expect.column is not None else None]
    match = [p for p in exc.value.problems
             if (expect.line is None or p.row == expect.line) and (expect.column is None or p.column == expect.column)
             and all(w in str(p) for w in where if w)]
    assert match, f"no problem at {where}: {msg}"
    text = " ".join(str(p) for p in match)
    for phrase in expect.phrases:
        assert phrase in text, f"{phrase!r} not in {text}"


def test_enough_cases() -> None:
    assert sum(isinstance(x, Ok) for _, _, x in CASES) >= 20
    assert sum(isinstance(x, Bad) for _, _, x in CASES) >= 40


def test_vocabulary_is_the_models() -> None:
    """The names the sheet is normalised to are the ones stats/design compare against."""
    from analysis.sim import design
    from analysis.sim import truth

    assert REFERENCE_COMPOUND == truth.VEHICLE
    assert {truth.WILD_TYPE, truth.TSPO_KO} <= set(KNOWN_GENOTYPES)
    used = {g.compound for p in design.PRESETS.values() for g in p.groups}
    assert used <= set(KNOWN_COMPOUNDS)


def test_small_study_still_validates(small_study: Path) -> None:
    s = load_samples(small_study / "samples.csv")
    assert len(s) == 30 and s["z_step_um"].isna().all()
    assert set(s["compound"]) == {"vehicle", "diazepam", "XBD173"}


# --- images of one animal and day that a series readout could not tell apart ---------------

def _dendrite_study(root: Path, fields: list[str] | None, blank_line: bool = False) -> Path:
    """The small study with a `dendrite_channel` on v7 and d7 and a second dendrite image of
    animal 002 on day 7 (row 4, line 6): two spine images of one animal on one day."""
    s = make_study(root)
    ome(root / "images" / "d7b.ome.tif", np.ones((64, 64), np.uint16), "YX")
    s.rows.append(["d7b", "images/d7b.ome.tif", "002", "WT", "diazepam", "5", "7", "7", "0.2", "", "", "", "M"])
    s.add_column("dendrite_channel", ["", "0", "0", "", "0"])
    for r in (1, 2, 4):
        s.set(r, "synapse_channel", "")
    if fields is not None:
        s.add_column("field", fields)
    if blank_line:
        s.prefix = ""
        s.raw = s.text().replace("\nv7,", "\n\nv7,", 1).encode()
    return s.write()


def _series_problems(sheet: Path) -> list:
    import analysis.pipeline.readouts  # noqa: F401  (registers the spine readout and its series step)
    from analysis.io.sheet import sheet_lines
    from analysis.pipeline.registry import series_problems

    return series_problems(load_samples(sheet), str(sheet), sheet_lines(sheet))


@pytest.mark.parametrize(("fields", "blank", "line", "why"), [
    (None, False, 6, "the sheet has no `field` column"),
    (["", "", "", "", ""], False, 6, "`field` is empty on these rows"),
    (None, True, 7, "the sheet has no `field` column"),  # a blank line moves the line numbers
])
def test_two_dendrite_images_of_one_animal_and_day_need_a_field(tmp_path: Path, fields, blank, line, why) -> None:
    sheet = _dendrite_study(tmp_path, fields, blank)
    problems = _series_problems(sheet)
    assert len(problems) == 1, problems
    p = problems[0]
    assert (p.file, p.row, p.column) == (str(sheet), line, "field")
    assert f"animal '002' has 2 images with a dendrite_channel on day 7 (lines {line - 2}, {line})" in p.message
    assert why in p.message and "add a `field` column" in p.message


def test_distinct_or_repeated_positions_are_fine(tmp_path: Path) -> None:
    # two positions of animal 002 on day 7; and one position imaged twice that day (a repeat)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _series_problems(_dendrite_study(tmp_path / "a", ["", "1", "1", "", "2"])) == []
    assert _series_problems(_dendrite_study(tmp_path / "b", ["", "1", "1", "", "1"])) == []


def test_quantify_and_validate_refuse_before_measuring(tmp_path: Path, capsys) -> None:
    from analysis.cli import main
    from analysis.pipeline.quantify import quantify_study

    sheet = _dendrite_study(tmp_path, None)
    out = tmp_path / "out"
    with pytest.raises(SampleSheetError, match="line 6, column 'field'"):
        quantify_study(sheet, out, workers=1, progress=False)
    assert not out.exists()  # refused before anything was measured or written
    assert main(["validate", str(sheet)]) == 2
    assert "has 2 images with a dendrite_channel on day 7" in capsys.readouterr().err
