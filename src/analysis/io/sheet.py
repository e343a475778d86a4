"""The sample sheet, validated against the contract (images are read by :mod:`analysis.io.images`).

Every problem with the input is reported as an :class:`analysis.errors.Problem` naming the
file, the line (as a spreadsheet shows it: the header is line 1) and the column, with the fix;
:func:`load_samples` collects all of them and raises one :class:`SampleSheetError`.  A sheet
that :func:`load_samples` accepts (``python -m analysis validate``) is one that ``quantify``,
``fit`` and ``report`` can run on: plausible physical units, agreement with the files'
metadata, a z step for every stack, images large enough to measure, one image per row,
distinct channels for distinct roles and the group names the models use.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import ImageReadError, InputError, Problem, SampleSheetError
from analysis.io.images import (
    VENDOR_FORMATS,
    ImageInfo,
    _file_problem,
    _plugin_for,
    image_info,
)

__all__ = [
    "REQUIRED_COLUMNS",
    "CHANNEL_COLUMNS",
    "channel_columns",
    "register_channel_role",
    "OPTIONAL_COLUMNS",
    "REFERENCE_COMPOUND",
    "KNOWN_COMPOUNDS",
    "KNOWN_GENOTYPES",
    "PIXEL_SIZE_RANGE_UM",
    "Z_STEP_RANGE_UM",
    "MIN_IMAGE_PIXELS",
    "MIN_IMAGE_UM",
    "load_samples",
    "sheet_lines",
    "resolve_image_path",
    "normalise_vocabulary",
    "ANALYSIS_PLAN",
    "load_analysis_plan",
]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "image_id",
    "path",
    "animal_id",
    "genotype",
    "compound",
    "dose_mg_kg",
    "treatment_days",
    "day",
    "pixel_size_um",
    "synapse_channel",
    "microglia_channel",
    "lysosome_channel",
)
CHANNEL_COLUMNS: tuple[str, ...] = ("synapse_channel", "microglia_channel", "lysosome_channel")
#: Channel roles of further readouts (optional columns; added by the readout registry,
#: :func:`analysis.pipeline.registry.register`, through :func:`register_channel_role`).
_EXTRA_CHANNEL_COLUMNS: list[str] = []


def register_channel_role(column: str) -> None:
    """Make ``column`` an optional channel-role column of the sheet (validated like the others)."""
    if not column.endswith("_channel"):
        raise ValueError(f"a channel role column ends in '_channel', got {column!r}")
    if column not in CHANNEL_COLUMNS and column not in _EXTRA_CHANNEL_COLUMNS:
        _EXTRA_CHANNEL_COLUMNS.append(column)


def channel_columns(columns: Iterable[str] | None = None) -> tuple[str, ...]:
    """The contract's channel roles and the extra ones (of ``columns`` only, if given).

    Extra roles are those registered by readouts and, in a sheet, any other column whose
    name ends in ``_channel`` (a readout's role, e.g. ``dendrite_channel``), so a sheet is
    checked the same whether or not its readouts have been imported.
    """
    present = list(columns) if columns is not None else []
    extra = [c for c in _EXTRA_CHANNEL_COLUMNS if columns is None or c in present]
    extra += [c for c in present if c.endswith("_channel") and c not in CHANNEL_COLUMNS and c not in extra]
    return (*CHANNEL_COLUMNS, *extra)
_NON_EMPTY = ("image_id", "path", "animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day")
#: Optional sheet columns with a meaning (any other extra column is kept and carried through).
OPTIONAL_COLUMNS: tuple[str, ...] = ("z_step_um", "pixel_size_override")
#: The control group every treated group is compared with (equals ``analysis.sim.truth.VEHICLE``).
REFERENCE_COMPOUND = "vehicle"
#: Spellings the models use; sheet values matching one case-insensitively are normalised to it.
KNOWN_COMPOUNDS: tuple[str, ...] = (REFERENCE_COMPOUND, "diazepam", "XBD173", "PLX5622")
KNOWN_GENOTYPES: tuple[str, ...] = ("WT", "TSPO_KO")
#: Plausible pixel size and z step of a light microscope image, micrometres.
PIXEL_SIZE_RANGE_UM: tuple[float, float] = (0.01, 5.0)
Z_STEP_RANGE_UM: tuple[float, float] = (0.01, 20.0)
#: The smallest plane the readouts can measure: pixels and micrometres on a side.
MIN_IMAGE_PIXELS = 32
MIN_IMAGE_UM = 10.0
_PIXEL_SIZE_TOLERANCE = 0.01  # sheet vs metadata, relative
_YES = {"yes", "y", "true", "1"}
_NO = {"", "no", "n", "false", "0"}


def resolve_image_path(samples_csv: str | os.PathLike[str], path_value: str) -> Path:
    """Absolute path of an image named in the sheet (relative paths are relative to the sheet).

    A relative path written with Windows separators (``images\\a.tif``, a sheet made in Excel
    on Windows) names the file with forward slashes when only that one exists (on systems whose
    separator is ``/``, where a backslash is an ordinary character of a file name).

    Examples
    --------
    >>> resolve_image_path("/data/study/samples.csv", "images/a.tif").as_posix()
    '/data/study/images/a.tif'
    """
    folder = Path(samples_csv).resolve().parent
    p = Path(path_value)
    if "\\" in path_value and os.sep == "/" and not p.is_absolute():
        alt = Path(path_value.replace("\\", "/"))
        if not (folder / p).exists() and not alt.is_absolute() and (folder / alt).exists():
            return folder / alt
    return p if p.is_absolute() else (folder / p)


def _not_found_hint(folder: Path, rel: str) -> str:
    """A likely cause of a missing image: Windows separators or drive letters, or a file whose
    name differs in letter case only (file names are case-sensitive here)."""
    if re.match(r"^[A-Za-z]:[\\/]", rel) or rel.startswith("\\\\"):
        return " (a Windows path: write it relative to the sheet's folder, e.g. 'images/a.tif')"
    if "\\" in rel and os.sep == "/":
        return " (write the folders with '/' instead of '\\')"
    target = folder / rel
    try:
        near = [q.name for q in target.parent.iterdir() if q.name.lower() == target.name.lower()]
    except OSError:
        return ""
    return f" (did you mean {near[0]!r}? file names are case-sensitive)" if near else ""


def _numeric(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.str.strip(), errors="coerce")


def _resolved(path: str) -> str:
    """The file a path finally names (symlinks followed) for comparing rows; the path if that fails."""
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):  # a symlink loop: reported elsewhere
        return os.path.normpath(path)


def _unit_hint(value: float, lo: float, hi: float) -> str:
    """``" (100 looks like nanometres: 0.1 um?)"`` when a unit slip explains an implausible value."""
    for factor, unit in ((1e-3, "nanometres"), (1e3, "millimetres")):
        if lo <= value * factor <= hi:
            return f" ({value:g} looks like {unit}: {value * factor:g} um?)"
    return ""


def _vocabulary_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.lower())


#: Spellings of the two sexes (after :func:`_vocabulary_key`) read as ``F`` and ``M``.
_SEX_SPELLINGS = {"f": "F", "female": "F", "m": "M", "male": "M"}


def normalise_vocabulary(
    table: pd.DataFrame, file: str, lines: pd.Series | None = None, *, aliases: dict[str, str] | None = None
) -> tuple[pd.DataFrame, list[Problem]]:
    """Spell ``compound``, ``genotype`` and ``sex`` the way the models do and check the reference group.

    Values that match a known name (:data:`KNOWN_COMPOUNDS`, :data:`KNOWN_GENOTYPES`; for
    ``sex``: f, female, m, male) ignoring case, spaces, ``-`` and ``_`` are replaced by it
    (``" Vehicle"`` -> ``"vehicle"``, ``"TSPO-KO"`` -> ``"TSPO_KO"``, ``"female"`` -> ``"F"``;
    logged); other names are kept.  A table with treated rows but no ``vehicle`` row is a problem: every
    treated group is compared with the vehicle group.

    Parameters
    ----------
    table : DataFrame
        With ``compound`` and ``genotype`` columns (a sample sheet or a measurements table).
    file : str
        Named in the problems and the log.
    lines : Series, optional
        Line number of each row (as an editor shows it) for the messages.
    aliases : dict, optional
        The study's own names of the reference groups (:func:`load_analysis_plan`:
        ``reference_compound`` -> ``vehicle``, ``reference_genotype`` -> ``WT``), read as
        the models' names.

    Returns
    -------
    (DataFrame, list of Problem)
        A copy with the normalised names, and the problems found.
    """
    out = table.copy()
    aliases = aliases or {}
    lookups = {}
    for col, known in (("compound", KNOWN_COMPOUNDS), ("genotype", KNOWN_GENOTYPES)):
        lookups[col] = {_vocabulary_key(k): k for k in known}
        own = aliases.get(f"reference_{col}")
        if own:
            lookups[col][_vocabulary_key(own)] = REFERENCE_COMPOUND if col == "compound" else KNOWN_GENOTYPES[0]
    # (the sex x treatment analysis groups animals by this column: "female" and "F" are one sex)
    lookups["sex"] = dict(_SEX_SPELLINGS)
    for col, lookup in lookups.items():
        if col not in out:
            continue
        values = out[col].astype("string")
        fixed = values.str.strip().map(lambda v: lookup.get(_vocabulary_key(v), v) if isinstance(v, str) else v)
        changed = values.notna() & (fixed != values).fillna(False)
        for (old, new), idx in out[changed].groupby([values[changed], fixed[changed]]).groups.items():
            where = "" if lines is None else " on line(s) " + ", ".join(str(int(lines[i])) for i in idx[:10])
            log.info("%s: %s %r read as %r%s", file, col, old, new, where)
        out[col] = fixed.astype(object).where(values.notna(), out[col])
    if "compound" in out:
        compounds = set(out["compound"].dropna()) - {""}
        treated = sorted(compounds - {REFERENCE_COMPOUND})
        if treated and REFERENCE_COMPOUND not in compounds:
            return out, [Problem(
                file,
                f"no {REFERENCE_COMPOUND} group: every row is treated ({', '.join(treated)}), but the models compare "
                f"each treated group with the reference group compound '{REFERENCE_COMPOUND}' (dose 0); add the "
                f"vehicle-treated animals, or rename your control group to '{REFERENCE_COMPOUND}'",
                column="compound",
            )]
    return out, []


def _sheet_problem(f: str, message: str, row: int | None = None, column: str | None = None) -> SampleSheetError:
    return SampleSheetError([Problem(f, message, row=row, column=column)])


def _read_text(sheet: Path) -> str:
    f = str(sheet)
    if sheet.is_dir():
        inside = sheet / "samples.csv"
        hint = f" ({inside} exists)" if inside.is_file() else ""
        raise _sheet_problem(f, f"is a folder, not a sample sheet; give the path of the sheet inside it, e.g. {inside}{hint}")
    problem = _file_problem(sheet)
    if problem is not None:
        if problem.startswith("file not found"):
            problem = "sample sheet not found; check the path (data/raw/samples.csv by default)"
        elif problem.startswith("is empty"):
            problem = "the sheet is empty (0 bytes); it needs a header line and one row per image (see README.md)"
        raise _sheet_problem(f, problem)
    try:
        data = sheet.read_bytes()
    except OSError as exc:
        raise _sheet_problem(f, f"cannot read the sheet ({exc.strerror or exc}); check the file and its permissions") from None
    if data.startswith(b"PK\x03\x04") or b"\x00" in data[:4096]:
        raise _sheet_problem(f, "is a binary file (an Excel workbook?), not CSV text; save it as 'CSV UTF-8 (comma delimited)'")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _sheet_problem(
            f, f"is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as 'CSV UTF-8 (comma delimited)'", row=line
        ) from None


def _parse_sheet(sheet: Path) -> tuple[pd.DataFrame, pd.Series]:
    """The sheet as a table of stripped strings and the line of each row; header problems raised."""
    f = str(sheet)
    text = _read_text(sheet)
    first = next((ln for ln in text.splitlines() if ln.strip()), None)
    if first is None:
        raise _sheet_problem(f, "the sheet is empty; it needs a header line and one row per image (see the sample-sheet contract in README.md)")
    delimiter = max((",", ";", "\t"), key=lambda d: (sum(c.strip() in REQUIRED_COLUMNS for c in first.split(d)), d == ","))
    if delimiter != ",":
        log.info("%s: reading the sheet as %s-separated", f, "tab" if delimiter == "\t" else "semicolon")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for rec in reader:
            if any(c.strip() for c in rec):
                records.append((start, rec))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _sheet_problem(f, f"cannot parse as CSV ({exc}); save the sheet as comma-separated UTF-8", row=reader.line_num) from None
    header_line, header = records[0]
    names = [c.strip().lstrip("\ufeff").strip() for c in header]
    rows = records[1:]
    problems: list[Problem] = []
    for line, rec in records:
        for j, value in enumerate(rec):
            if "\n" in value or "\r" in value:
                problems.append(Problem(f, f"a quote (\") opens a value that runs over several lines ({value[:30]!r}...); close the quote or remove it", row=line,
                                        column=names[j] if j < len(names) else None))
                break
    seen: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        if name:
            seen.setdefault(name, []).append(j + 1)
    for name, positions in seen.items():
        if len(positions) > 1:
            problems.append(Problem(
                f, f"column name {name!r} appears {len(positions)} times in the header (columns "
                f"{', '.join(map(str, positions[:-1]))} and {positions[-1]}); each column needs its own name: delete the extra column or rename it",
                row=header_line, column=name))
    unnamed = [j for j, name in enumerate(names) if not name]
    for j in unnamed:
        used = [line for line, rec in rows if j < len(rec) and rec[j].strip()]
        if used:
            problems.append(Problem(f, f"column {j + 1} has values (e.g. on line {used[0]}) but no name in the header; name it or delete it",
                                    row=header_line))
    n = len(names)
    for line, rec in rows:
        extra = [c for c in rec[n:] if c.strip()]
        if extra:
            problems.append(Problem(
                f, f"this row has {len(rec)} values but the header has {n} columns (extra: {', '.join(map(repr, extra[:3]))}); "
                f"a value containing {delimiter!r} must be quoted, or remove the extra values", row=line))
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        near = {re.sub(r"[\s\-]+", "_", x.lower()): x for x in names if x}
        hints = [f"{near[c]!r} -> {c!r}" for c in missing if c in near]
        rename = f"; rename {', '.join(hints)}" if hints else ""
        problems.append(Problem(
            f, f"missing required column(s) {', '.join(missing)} (found: {', '.join(x for x in names if x)}){rename}; "
            "add them to the header (see the sample-sheet contract in README.md)", row=header_line))
    if problems:
        raise SampleSheetError(problems)
    if not rows:
        raise _sheet_problem(f, "no images listed: the sheet has a header but no rows; add one row per image below the header", row=header_line + 1)
    keep = [j for j, name in enumerate(names) if name]
    table = pd.DataFrame(
        [[(rec[j] if j < len(rec) else "").strip() for j in keep] for _, rec in rows],
        columns=[names[j] for j in keep], dtype=object,
    )
    return table, pd.Series([line for line, _ in rows], index=table.index)


def sheet_lines(samples_csv: str | os.PathLike[str]) -> pd.Series:
    """The line number of each row of a sample sheet, as an editor shows it (the header is
    line 1), indexed like :func:`load_samples`' table (blank lines are skipped there)."""
    return _parse_sheet(Path(samples_csv))[1]


def load_samples(samples_csv: str | os.PathLike[str], *, check_images: bool = True) -> pd.DataFrame:
    """Load a sample sheet and check it against the contract in DESIGN.md.

    All problems are collected and reported together, each naming the file, line and column
    and the fix.  Extra columns and the row order are kept; identifiers stay strings (``"001"``
    is not turned into ``1``).  Comma-, semicolon- or tab-separated UTF-8 (with or without a
    byte-order mark, any line endings) is read; blank lines are skipped.

    Besides the required columns (DESIGN.md) two optional columns have a meaning:

    ``z_step_um``
        Distance between z-slices in micrometres (0.01-20), for stacks whose file metadata
        lack it (OME ``PhysicalSizeZ``, ImageJ ``spacing``); when both are given the sheet wins.
        Every stack needs one from either source.
    ``pixel_size_override``
        ``yes`` keeps the sheet's ``pixel_size_um`` on that row although the file's metadata
        say otherwise (by more than 1 %), or say that the pixels are not square (width and
        height differ by more than 1 %: every measurement assumes square pixels); without it
        such a row is an error.  Empty or ``no`` otherwise.

    ``compound`` and ``genotype`` values that match a name the models use ignoring case, spaces,
    ``-`` and ``_`` (``Vehicle`` for ``vehicle``, ``tspo-ko`` for ``TSPO_KO``; see
    :func:`normalise_vocabulary`) are
    normalised to that spelling; a sheet with treated animals needs a ``vehicle`` group.
    Channel indices of an RGB TIFF name its colour components: 0 = red, 1 = green, 2 = blue.

    A channel-role column (``synapse_channel``, ``microglia_channel``, ``lysosome_channel`` and
    the roles registered with :func:`register_channel_role`) holds a 0-based channel index or
    the channel's **name** as the file's metadata give it (:attr:`ImageInfo.channel_names`:
    OME ``Channel Name``, LSM, CZI, LIF and ND2 channel names; ``red``/``green``/``blue`` of an
    RGB TIFF), matched ignoring case, e.g. ``synapse_channel=PSD95``.  Names are resolved to
    indices from the image headers: with ``check_images`` in the pass that reads every header;
    without it, only the headers of the rows that give a name are read, so the returned table
    always holds indices.  A name the file does not have, a file without channel names, or (for
    those rows) a file whose header cannot be read is a problem naming the row, the column, the
    file's channels and the fix.

    Parameters
    ----------
    samples_csv : path
        The sheet; image paths in it are relative to its folder.
    check_images : bool
        Also open every image's header: check that it exists and is readable, fill a missing
        pixel size from its metadata and check it against the sheet's, take the z step of
        stacks, check the channel indices against its number of channels and its size against
        :data:`MIN_IMAGE_PIXELS` and :data:`MIN_IMAGE_UM`, resolve channel names.  Without
        it only rows whose channel roles are names have their header read.

    Returns
    -------
    DataFrame
        The sheet with ``dose_mg_kg``, ``treatment_days``, ``day``, ``pixel_size_um`` and
        ``z_step_um`` as floats (``z_step_um``: the sheet's value, else the file's, NaN for a
        single plane or, without ``check_images``, when the sheet leaves it empty), channel
        columns as nullable integers (names resolved to indices), normalised ``compound``/``genotype`` and an added
        ``abs_path`` column.

    Raises
    ------
    SampleSheetError
        Listing every problem with its file, line and column and how to fix it.

    Examples
    --------
    >>> samples = load_samples("data/raw/samples.csv")  # doctest: +SKIP
    >>> samples[["image_id", "dose_mg_kg", "abs_path"]].head()  # doctest: +SKIP
    """
    sheet = Path(samples_csv)
    f = str(sheet)
    raw, line = _parse_sheet(sheet)
    problems: list[Problem] = []

    def add(i: int, col: str | None, msg: str) -> None:
        problems.append(Problem(f, msg, row=int(line[i]), column=col))

    for col in _NON_EMPTY:
        for i in raw.index[raw[col] == ""]:
            add(i, col, f"{col} is empty; every image needs a value")

    dup = raw[(raw["image_id"] != "") & raw["image_id"].duplicated(keep=False)]
    for image_id, grp in dup.groupby("image_id", sort=False):
        lines = ", ".join(str(line[i]) for i in grp.index)
        add(grp.index[1], "image_id", f"image_id {image_id!r} appears on lines {lines}; image ids must be unique")

    try:
        plan = load_analysis_plan(sheet.parent)
    except InputError as exc:
        raise SampleSheetError(exc.problems) from None
    raw, vocab = normalise_vocabulary(raw, f, line, aliases=plan)
    out = raw.copy()
    rules = {
        "dose_mg_kg": ("doses must be numbers >= 0 (use 0 for vehicle)", 0.0),
        "treatment_days": ("treatment_days must be a number of days >= 0", 0.0),
        "day": ("day must be a number of days since the first dose (negative for baseline)", None),
        "pixel_size_um": ("pixel_size_um must be a number > 0 in micrometres", 0.0),
        "z_step_um": ("z_step_um must be the distance between z-slices in micrometres (> 0), or empty", 0.0),
    }
    valid: dict[str, pd.Series] = {}
    for col, (fix, lower) in rules.items():
        if col not in raw:
            out[col] = np.nan
            continue
        num = _numeric(raw[col]).astype(float)
        ok = pd.Series(True, index=raw.index)
        for i in raw.index[(raw[col] != "") & num.isna()]:
            text = raw.at[i, col]
            comma = re.fullmatch(r"[-+]?\d+,\d+", text)
            hint = f"; use a decimal point: {text.replace(',', '.')}" if comma else ""
            add(i, col, f"{col} is {text!r}, not a number{hint}; {fix}")
        for i in raw.index[num.notna() & ~np.isfinite(num)]:
            add(i, col, f"{col} is {raw.at[i, col]}, not a finite number; {fix}")
            ok[i] = False
        if lower is not None:
            too_low = num <= lower if col in ("pixel_size_um", "z_step_um") else num < lower
            for i in raw.index[too_low.fillna(False)]:
                add(i, col, f"{col} is {raw.at[i, col]}; {fix}")
                ok[i] = False
        if col in ("pixel_size_um", "z_step_um"):
            lo, hi = PIXEL_SIZE_RANGE_UM if col == "pixel_size_um" else Z_STEP_RANGE_UM
            what = "pixel size" if col == "pixel_size_um" else "z step"
            odd = num.notna() & np.isfinite(num) & (num > 0) & ((num < lo) | (num > hi))
            for i in raw.index[odd]:
                v = float(num[i])
                add(i, col, f"{col} is {raw.at[i, col]}, outside the plausible {what} of {lo:g}-{hi:g} um"
                            f"{_unit_hint(v, lo, hi)}; write the {what} in micrometres (um)")
                ok[i] = False
        if col in ("day", "treatment_days"):
            fractional = num.notna() & np.isfinite(num) & (num != np.floor(num)) & ok
            for i in raw.index[fractional]:
                add(i, col, f"{col} is {raw.at[i, col]}; the models group sessions and arms by whole days: round it "
                            "to whole days")
                ok[i] = False
        valid[col] = ok & num.notna()
        out[col] = num.where(ok)

    for i in raw.index[(out["compound"] == REFERENCE_COMPOUND) & (out["dose_mg_kg"] > 0)]:
        add(i, "dose_mg_kg", f"compound is {REFERENCE_COMPOUND} but dose_mg_kg is {raw.at[i, 'dose_mg_kg']}; "
                             "vehicle rows have dose 0: fix the dose or the compound")
    for i in raw.index[(out["compound"] != REFERENCE_COMPOUND) & (out["compound"] != "") & (out["dose_mg_kg"] == 0)]:
        add(i, "dose_mg_kg", f"dose_mg_kg is 0 but compound is {out.at[i, 'compound']!r}; give the dose, or set "
                             f"compound to {REFERENCE_COMPOUND} for a control animal")
    # a dosed animal is dosed for a day at least: with 0 planned days the models would count
    # every session after the first dose as after withdrawal and find no vehicle group to match
    for i in raw.index[(out["dose_mg_kg"] > 0) & (out["treatment_days"] == 0)]:
        add(i, "treatment_days", f"treatment_days is 0 but dose_mg_kg is {raw.at[i, 'dose_mg_kg']}: a treated animal is dosed "
                                 "for one day at least; give the planned days of dosing (e.g. 7), the same as its "
                                 f"{REFERENCE_COMPOUND} controls'")

    override = pd.Series(False, index=raw.index)
    if "pixel_size_override" in raw:
        values = raw["pixel_size_override"].str.lower()
        override = values.isin(_YES)
        for i in raw.index[~values.isin(_YES | _NO)]:
            add(i, "pixel_size_override", f"pixel_size_override is {raw.at[i, 'pixel_size_override']!r}; write yes "
                                          "to keep the sheet's pixel size against the file's metadata, or leave it empty")

    roles = channel_columns(raw.columns)
    role_names: dict[tuple[int, str], str] = {}  # (row, column) -> channel name to look up in the file
    for col in roles:
        named = raw[col].map(_is_channel_name)
        num = _numeric(raw[col])
        bad = (raw[col] != "") & ~named & (num.isna() | (num < 0) | (num != np.floor(num)))
        for i in raw.index[bad]:
            add(i, col, f"{col} is {raw.at[i, col]!r}; channel indices are whole numbers >= 0 (0 = first channel), or give "
                        "the channel's name as the file's metadata have it (e.g. PSD95), or leave it empty if absent")
        for i in raw.index[named]:
            role_names[(i, col)] = raw.at[i, col]
        out[col] = num.where(~bad & ~named).astype("Int64")
    no_channel = (raw[list(roles)] == "").all(axis=1)
    for i in raw.index[no_channel]:
        add(i, "synapse_channel", f"no channel role is set; give at least one of {', '.join(roles)}")

    # (sex too, when given: the sex x treatment analysis puts each animal in one sex)
    for attr in ("genotype", "compound", "dose_mg_kg", "treatment_days") + (("sex",) if "sex" in out and "sex" in raw else ()):
        sub = out[(out["animal_id"] != "") & (raw[attr] != "") & out[attr].notna()]
        counts = sub.groupby("animal_id")[attr].nunique()
        for animal in counts.index[counts > 1]:
            rows = sub[sub["animal_id"] == animal]
            first = rows.drop_duplicates(attr)
            desc = "; ".join(f"{raw.at[i, attr]!r} on line {line[i]}" for i in first.index)
            add(first.index[1], attr, f"animal {animal!r} has more than one {attr} ({desc}); an animal has one {attr}: fix the animal_id or the {attr}")

    # animal ids that differ only in letter case are two animals to the models: most often a typo
    ids = pd.Series(out.loc[out["animal_id"] != "", "animal_id"].astype(str).unique())
    for _, spellings in ids.groupby(ids.str.casefold()):
        if len(spellings) > 1:
            log.warning("%s: animal ids %s differ only in letter case: they count as %d animals; if they are one, "
                        "spell them the same", f, " and ".join(repr(v) for v in sorted(spellings)), len(spellings))
    out["abs_path"] = [str(resolve_image_path(sheet, p)) if p else "" for p in raw["path"]]
    same_image = ["animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day"]
    first_row: dict[str, int] = {}
    for i in raw.index:
        if not out.at[i, "abs_path"]:
            continue
        key = _resolved(out.at[i, "abs_path"])
        if key not in first_row:
            first_row[key] = i
            continue
        j = first_row[key]
        differ = [c for c in same_image if str(out.at[i, c]) != str(out.at[j, c])]
        if differ:
            desc = ", ".join(f"{c} {raw.at[j, c]!r} vs {raw.at[i, c]!r}" for c in differ)
            add(i, "path", f"{raw.at[i, 'path']} is also listed on line {line[j]} with a different {', '.join(differ)} ({desc}); "
                           "one image shows one animal at one time: fix the path or the row's metadata")

    out["z_step_um"] = out["z_step_um"].astype(float)
    infos: dict[str, ImageInfo | list[str]] = {}
    if check_images:
        _check_images(sheet, raw, out, line, valid, override, add, role_names, infos)
    elif role_names:
        _resolve_channel_names(sheet, raw, out, role_names, infos, add)
    for a_pos, a in enumerate(roles):
        for b in roles[a_pos + 1:]:
            same = out[a].notna() & out[b].notna() & (out[a] == out[b]).fillna(False)
            for i in raw.index[same]:
                add(i, b, f"{a} and {b} are both {_channel_label(raw, out, i, a)}; each role reads its own channel: fix the "
                          "channel index (or leave a role empty if the image does not have that stain)")
    problems.extend(vocab)
    if problems:
        order = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
        problems.sort(key=lambda p: (p.row or 0, order.index(p.column) if p.column in order else 99))
        raise SampleSheetError(problems)
    log.info("%s: %d images of %d animals", f, len(out), out["animal_id"].nunique())
    return out


def _is_channel_name(value: str) -> bool:
    """A channel-role value naming a channel (``PSD95``), not an index: it has a letter and is no number."""
    if not isinstance(value, str) or not re.search(r"[^\W\d_]", value):
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False  # nan, inf, 1e3: numbers, checked as indices


def _channel_label(raw: pd.DataFrame, out: pd.DataFrame, i: int, col: str) -> str:
    """``0`` or ``0 (PSD95)`` for a role given by name: how a message names the channel of a row's role."""
    index = int(out.at[i, col])
    text = raw.at[i, col]
    return f"{index} ({text})" if _is_channel_name(text) else str(index)


def _header(sheet: Path, rel: str, p: str, infos: dict[str, ImageInfo | list[str]]) -> ImageInfo | list[str]:
    """The header of image ``p`` (``rel`` as the sheet writes it), or the problems opening it; cached in ``infos``."""
    if p not in infos:
        own_reader = _plugin_for(Path(p)) is not None and not Path(p).name.lower().endswith(tuple(VENDOR_FORMATS))
        problem = None if own_reader else _file_problem(Path(p))  # a plug-in may read what is not a plain file
        if problem is not None and problem.startswith("file not found"):
            folder = sheet.resolve().parent
            problem = (f"image file not found: looked for {rel!r} relative to {folder}"
                       f"{_not_found_hint(folder, rel)}; fix the path or add the file")
        elif problem is not None:
            problem = f"{rel} {problem}"
        if problem is not None:
            infos[p] = [problem]
        else:
            try:
                infos[p] = image_info(p)
            except ImageReadError as exc:
                infos[p] = [prob.message + f" ({rel})" for prob in exc.problems]
    return infos[p]


def _resolve_name(i: int, col: str, name: str, rel: str, info: ImageInfo, out: pd.DataFrame,
                  add: Callable[[int, str | None, str], None]) -> None:
    """Set ``out.at[i, col]`` to the index of the channel called ``name`` (case-insensitive) in ``info``."""
    names = info.channel_names
    key = name.strip().casefold()
    hits = [k for k, n in enumerate(names) if n.strip().casefold() == key]
    if len(hits) == 1:
        out.at[i, col] = hits[0]
        return
    listed = ", ".join(f"{k} = {n}" for k, n in enumerate(names))
    if not names:
        add(i, col, f"{col} is {name!r}, a channel name, but {rel} names none of its {info.n_channels} channel(s) in its "
                    "metadata; give the 0-based channel index instead (0 = first channel)")
    elif hits:
        add(i, col, f"{col} is {name!r} but {rel} has {len(hits)} channels of that name ({listed}); give the 0-based "
                    "channel index instead")
    else:
        add(i, col, f"{col} is {name!r} but {rel} has no channel of that name (its channels: {listed}); write one of "
                    "these names (case does not matter) or the 0-based channel index")


def _resolve_channel_names(
    sheet: Path, raw: pd.DataFrame, out: pd.DataFrame, role_names: dict[tuple[int, str], str],
    infos: dict[str, ImageInfo | list[str]], add: Callable[[int, str | None, str], None],
) -> None:
    """Channel roles given by name -> indices, reading only the headers of the rows that name channels
    (``load_samples(check_images=False)``)."""
    for (i, col), name in role_names.items():
        p, rel = out.at[i, "abs_path"], raw.at[i, "path"]
        if not p:
            continue  # the empty path is reported already
        info = _header(sheet, rel, p, infos)
        if isinstance(info, list):
            add(i, col, f"{col} is {name!r}, a channel name, but the header of {rel} cannot be read to look it up "
                        f"({'; '.join(info)}); fix the file or give the 0-based channel index")
        else:
            _resolve_name(i, col, name, rel, info, out, add)


def _check_images(
    sheet: Path, raw: pd.DataFrame, out: pd.DataFrame, line: pd.Series, valid: dict[str, pd.Series],
    override: pd.Series, add: Callable[[int, str | None, str], None],
    role_names: dict[tuple[int, str], str] | None = None, infos: dict[str, ImageInfo | list[str]] | None = None,
) -> None:
    """The checks of :func:`load_samples` that read each image's header; fills ``out`` in place
    (including the channel indices of roles given by name, ``role_names``)."""
    infos = {} if infos is None else infos
    role_names = role_names or {}
    lo, hi = PIXEL_SIZE_RANGE_UM
    for i in raw.index:
        p = out.at[i, "abs_path"]
        rel = raw.at[i, "path"]
        if not p:
            continue
        info = _header(sheet, rel, p, infos)
        if isinstance(info, list):
            for message in info:
                add(i, "path", message)
            continue
        for (row, col), name in role_names.items():
            if row == i:
                _resolve_name(i, col, name, rel, info, out, add)
        names = info.channel_names
        meta_px = info.pixel_size_um
        if not info.square_pixels and not override[i]:
            add(i, "path", f"the metadata of {rel} give pixels of {info.pixel_size_um:g} um (x) by {info.pixel_size_y_um:g} um (y): "
                           "every measurement assumes square pixels; resample the image to square pixels (Fiji: Image > "
                           "Scale... with x and y factors that make them equal, then save) or, if the metadata are wrong, add a "
                           "column pixel_size_override set to yes on this row with the true pixel size in pixel_size_um")
        if raw.at[i, "pixel_size_um"] == "":
            if meta_px is None:
                add(i, "pixel_size_um", f"pixel_size_um is empty and {rel} has no pixel size in its metadata; add pixel_size_um to the sheet or write PhysicalSizeX into the OME metadata")
            elif not lo <= meta_px <= hi:
                add(i, "pixel_size_um", f"pixel_size_um is empty and the metadata of {rel} give {meta_px:g} um, outside the plausible pixel size of {lo:g}-{hi:g} um"
                                        f"{_unit_hint(meta_px, lo, hi)}; write the pixel size in micrometres into the sheet")
            else:
                out.at[i, "pixel_size_um"] = meta_px
        elif valid["pixel_size_um"][i] and meta_px is not None and not override[i]:
            sheet_px = float(out.at[i, "pixel_size_um"])
            if abs(sheet_px - meta_px) > _PIXEL_SIZE_TOLERANCE * meta_px:
                add(i, "pixel_size_um", f"pixel_size_um is {raw.at[i, 'pixel_size_um']} but the metadata of {rel} give {meta_px:g} um; "
                                        "correct the sheet, or leave pixel_size_um empty to use the file's value, or add a column "
                                        "pixel_size_override set to yes on this row to keep the sheet's value")
        for col in channel_columns(out.columns):
            ch = out.at[i, col]
            if pd.notna(ch) and int(ch) >= info.n_channels:
                named = ""
                if names:
                    kind = "an RGB image: " if names[0] == "red" else ""
                    named = f"; {kind}" + ", ".join(f"{k} = {n}" for k, n in enumerate(names))
                add(i, col, f"{col} is {int(ch)} but {rel} has {info.n_channels} channel(s) (valid: 0-{info.n_channels - 1}{named}); fix the channel index")
        ny, nx = info.plane_shape
        px = out.at[i, "pixel_size_um"]
        if min(ny, nx) < MIN_IMAGE_PIXELS or (pd.notna(px) and min(ny, nx) * px < MIN_IMAGE_UM):
            size_um = f" ({ny * px:.3g} x {nx * px:.3g} um)" if pd.notna(px) else ""
            add(i, "path", f"{rel} is {ny} x {nx} pixels{size_um}; the readouts need at least {MIN_IMAGE_PIXELS} x {MIN_IMAGE_PIXELS} "
                           f"pixels and {MIN_IMAGE_UM:g} um on a side: check that this is the full field (not a thumbnail or a crop) "
                           "and the pixel size")
        if info.n_z > 1:
            if raw.get("z_step_um") is not None and raw.at[i, "z_step_um"] != "":
                continue  # the sheet's value (checked above) wins
            zs = info.z_step_um
            zlo, zhi = Z_STEP_RANGE_UM
            if zs is None:
                add(i, "z_step_um", f"{rel} is a stack of {info.n_z} z-slices without a z step in its metadata; add a column z_step_um "
                                    "with the distance between slices in micrometres (e.g. 0.5) on this row, or set it in the file "
                                    "(Fiji: Image > Properties... > Voxel depth, then save)")
            elif not zlo <= zs <= zhi:
                add(i, "z_step_um", f"the metadata of {rel} give a z step of {zs:g} um, outside the plausible {zlo:g}-{zhi:g} um"
                                    f"{_unit_hint(zs, zlo, zhi)}; write the z step in micrometres in a column z_step_um")
            else:
                out.at[i, "z_step_um"] = zs
        else:
            out.at[i, "z_step_um"] = np.nan


#: Optional file next to ``samples.csv`` with the pre-specified analysis choices.
ANALYSIS_PLAN = "analysis_plan.json"
_PLAN_KEYS = {"primary_contrast": str, "adjust_for_quality": bool, "reference_compound": str,
              "reference_genotype": str}


def load_analysis_plan(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The pre-specified analysis plan of a study (``analysis_plan.json`` beside the sheet).

    Keys (all optional): ``primary_contrast``, the group tested first, before the other
    planned contrasts (e.g. ``"WT diazepam 5 mg/kg x 7 d"``, as the group is named in the
    report); ``adjust_for_quality`` (default true), the measured SNR of each image as a
    covariate of the synapse model (and of the sensitivity analyses of the spine model and
    the spine turnover);
    ``reference_compound`` and ``reference_genotype``, the
    sheet's names of the control treatment and genotype when they are not ``vehicle`` and
    ``WT`` (e.g. ``"saline"``, ``"C57BL/6J"``): those rows are read as the reference groups
    every treated group is compared with (the report calls them vehicle and WT).  Written
    before the data are analysed, it is the place a lab pre-registers its primary hypothesis.

    Returns
    -------
    dict
        The plan; empty when the file is absent.

    Raises
    ------
    InputError
        Unreadable JSON, unknown keys or values of the wrong type, naming the file and key.
    """
    import json

    path = Path(data_dir) / ANALYSIS_PLAN
    if not path.exists():
        return {}
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(Problem(str(path), f"cannot read the analysis plan ({exc}); fix the JSON or delete the file")) from None
    if not isinstance(plan, dict):
        raise InputError(Problem(str(path), "the analysis plan must be a JSON object such as "
                                            '{"primary_contrast": "WT diazepam 5 mg/kg x 7 d"}'))
    problems = []
    for key, value in plan.items():
        if key not in _PLAN_KEYS:
            problems.append(Problem(str(path), f"unknown key {key!r}; the plan takes {', '.join(_PLAN_KEYS)}", column=key))
        elif not isinstance(value, _PLAN_KEYS[key]):
            problems.append(Problem(str(path), f"{key} must be a {_PLAN_KEYS[key].__name__}, not {value!r}", column=key))
    if problems:
        raise InputError(problems)
    return plan

