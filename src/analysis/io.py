"""Reading inputs: the sample sheet (validated against the contract) and TIFF / OME-TIFF images.

Every problem with the input is reported as an :class:`analysis.errors.Problem` naming the
file, the line (as a spreadsheet shows it: the header is line 1) and the column, with the fix;
:func:`load_samples` collects all of them and raises one :class:`SampleSheetError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import ImageReadError, Problem, SampleSheetError

__all__ = [
    "REQUIRED_COLUMNS",
    "CHANNEL_COLUMNS",
    "ImageInfo",
    "image_info",
    "read_image",
    "register_reader",
    "load_samples",
    "resolve_image_path",
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
_NON_EMPTY = ("image_id", "path", "animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day")
_TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6, "cm": 1e4}


@dataclass(frozen=True)
class ImageInfo:
    """What an image file's header says, without reading the pixel data.

    Attributes
    ----------
    path : Path
    shape : tuple of int
        Shape as stored.
    axes : str
        Axes as stored, a subsequence of ``"CZYX"``.
    n_channels, n_z : int
    dtype : numpy.dtype
    pixel_size_um : float or None
        From OME ``PhysicalSizeX`` (converted to um) or the TIFF/ImageJ resolution tags.
    z_step_um : float or None
    """

    path: Path
    shape: tuple[int, ...]
    axes: str
    n_channels: int
    n_z: int
    dtype: np.dtype
    pixel_size_um: float | None
    z_step_um: float | None


InfoFunc = Callable[[Path], ImageInfo]
ReadFunc = Callable[[Path], np.ndarray]
_READERS: dict[str, tuple[InfoFunc, ReadFunc]] = {}
_ENTRY_POINTS_LOADED = False


def register_reader(suffixes: Iterable[str], info_func: InfoFunc, read_func: ReadFunc) -> None:
    """Register a reader for other file formats (e.g. a vendor format via a plug-in).

    Parameters
    ----------
    suffixes : iterable of str
        File name endings it handles, e.g. ``[".czi"]`` (case-insensitive).
    info_func : callable
        ``path -> ImageInfo`` reading the header only.
    read_func : callable
        ``path -> ndarray`` with the axes given by ``info_func(path).axes``.

    Notes
    -----
    Packages can also register readers through the entry-point group ``analysis.readers``;
    each entry point is a callable that calls this function.
    """
    for s in suffixes:
        _READERS[s.lower()] = (info_func, read_func)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="analysis.readers"):
        try:
            ep.load()()
        except Exception as exc:  # a broken plug-in must not break TIFF reading
            log.warning("reader plug-in %s failed to load: %s", ep.name, exc)


def _plugin_for(path: Path) -> tuple[InfoFunc, ReadFunc] | None:
    _load_entry_points()
    name = path.name.lower()
    for suffix in sorted(_READERS, key=len, reverse=True):
        if name.endswith(suffix):
            return _READERS[suffix]
    return None


def _is_tiff(path: Path) -> bool:
    return path.name.lower().endswith(_TIFF_SUFFIXES)


def _unsupported(path: Path) -> ImageReadError:
    known = sorted(set(_TIFF_SUFFIXES) | set(_READERS))
    return ImageReadError.for_file(
        path,
        f"unsupported image format (supported: {', '.join(known)}); convert it to OME-TIFF "
        "(e.g. with bfconvert) or register a reader with analysis.io.register_reader",
    )


def _ome_sizes(xml: str) -> tuple[float | None, float | None]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    for el in root.iter():
        if el.tag.endswith("Pixels"):
            def size(attr: str) -> float | None:
                value = el.attrib.get(f"PhysicalSize{attr}")
                if value is None:
                    return None
                unit = el.attrib.get(f"PhysicalSize{attr}Unit", "µm")
                return float(value) * _UNIT_TO_UM.get(unit, 1.0)

            return size("X"), size("Z")
    return None, None


def _tiff_resolution_um(tif) -> float | None:
    page = tif.pages[0]
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    if not num or not den:
        return None
    px_per_unit = num / den
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "")).replace("\\u00B5", "µ")
    if unit in _UNIT_TO_UM:
        return _UNIT_TO_UM[unit] / px_per_unit
    res_unit = page.tags.get("ResolutionUnit")
    code = int(res_unit.value) if res_unit is not None else 2
    if code == 3:  # centimetre
        return 1e4 / px_per_unit
    if ij and not unit:
        return None
    return None  # inches or no unit: not a physical pixel size we can trust


@contextlib.contextmanager
def _quiet_tifffile():
    """tifffile logs its own tracebacks for damaged files; we report them as ImageReadError."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _tiff_info(path: Path) -> ImageInfo:
    import tifffile

    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            raw_axes = series.axes
            px, dz = (None, None)
            if tif.is_ome and tif.ome_metadata:
                px, dz = _ome_sizes(tif.ome_metadata)
            if px is None:
                px = _tiff_resolution_um(tif)
            if dz is None and tif.imagej_metadata and "spacing" in tif.imagej_metadata:
                dz = float(tif.imagej_metadata["spacing"])
            dtype = np.dtype(series.dtype)
    except (OSError, ValueError, IndexError, KeyError, tifffile.TiffFileError) as exc:
        raise ImageReadError.for_file(
            path, f"cannot read TIFF ({exc}); the file may be truncated or corrupt: export it again"
        ) from None
    axes = raw_axes.replace("S", "C").replace("Q", "Z").replace("I", "Z")
    keep = [(a, s) for a, s in zip(axes, shape) if not (a not in "CZYX" and s == 1)]
    axes = "".join(a for a, _ in keep)
    shape = tuple(s for _, s in keep)
    if not axes.endswith("YX") or any(a not in "CZYX" for a in axes) or len(set(axes)) != len(axes) or (
        "C" in axes and "Z" in axes and axes.index("C") > axes.index("Z")
    ):
        raise ImageReadError.for_file(
            path, f"axes {raw_axes!r} (shape {shape}) are not (C)(Z)YX; save the image as C, Z, Y, X (e.g. in Fiji)"
        )
    n_c = shape[axes.index("C")] if "C" in axes else 1
    n_z = shape[axes.index("Z")] if "Z" in axes else 1
    return ImageInfo(Path(path), shape, axes, n_c, n_z, dtype, px, dz)


def image_info(path: str | os.PathLike[str]) -> ImageInfo:
    """Header information of an image file (no pixel data read).

    Raises
    ------
    ImageReadError
        Unsupported format, unreadable file or axes other than (C)(Z)YX.
    """
    p = Path(path)
    plugin = _plugin_for(p)
    if plugin is not None:
        return plugin[0](p)
    if not _is_tiff(p):
        raise _unsupported(p)
    if not p.exists():
        raise ImageReadError.for_file(p, "file not found; check the path in the sample sheet")
    return _tiff_info(p)


def _to_czyx(data: np.ndarray, axes: str) -> np.ndarray:
    """Insert missing C and Z axes; ``axes`` is validated (C)(Z)YX."""
    for a in "CZ":
        if a not in axes:
            pos = 1 if (a == "Z" and axes.startswith("C")) else 0
            data = np.expand_dims(data, pos)
            axes = axes[:pos] + a + axes[pos:]
    assert axes == "CZYX", axes
    return data


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, ImageInfo]:
    """Read an image as a 4-D array with axes CZYX (singleton C/Z added), native dtype.

    Examples
    --------
    >>> data, info = read_image("images/a.ome.tif")  # doctest: +SKIP
    >>> data.shape, info.pixel_size_um  # doctest: +SKIP
    ((3, 1, 512, 512), 0.2)
    """
    p = Path(path)
    info = image_info(p)
    plugin = _plugin_for(p)
    if plugin is not None:
        data = np.asarray(plugin[1](p))
    else:
        import tifffile

        try:
            with _quiet_tifffile():
                data = tifffile.imread(p, series=0)
        except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
            raise ImageReadError.for_file(
                p, f"cannot read pixel data ({exc}); the file may be truncated or corrupt: export it again"
            ) from None
    data = data.reshape(info.shape)
    return _to_czyx(data, info.axes), info


def resolve_image_path(samples_csv: str | os.PathLike[str], path_value: str) -> Path:
    """Absolute path of an image named in the sheet (relative paths are relative to the sheet)."""
    p = Path(path_value)
    return p if p.is_absolute() else (Path(samples_csv).resolve().parent / p)


def _numeric(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.str.strip(), errors="coerce")


def load_samples(samples_csv: str | os.PathLike[str], *, check_images: bool = True) -> pd.DataFrame:
    """Load a sample sheet and check it against the contract in DESIGN.md.

    All problems are collected and reported together.  Extra columns and the row order are
    kept; identifiers stay strings (``"001"`` is not turned into ``1``).

    Parameters
    ----------
    samples_csv : path
        The sheet; image paths in it are relative to its folder.
    check_images : bool
        Also check that every image exists, read its header for a missing pixel size and check
        the channel indices against its number of channels.

    Returns
    -------
    DataFrame
        The sheet with ``dose_mg_kg``, ``treatment_days``, ``day``, ``pixel_size_um`` as floats,
        channel columns as nullable integers and an added ``abs_path`` column.

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
    if not sheet.exists():
        raise SampleSheetError([Problem(f, "sample sheet not found; check the path (data/raw/samples.csv by default)")])
    try:
        raw = pd.read_csv(sheet, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise SampleSheetError([Problem(f, f"cannot parse as CSV ({exc}); save the sheet as comma-separated UTF-8")]) from None
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise SampleSheetError(
            [
                Problem(
                    f,
                    f"missing required column(s) {', '.join(missing)} (found: {', '.join(raw.columns)}); "
                    "add them to the header (see the sample-sheet contract in README.md)",
                    row=1,
                )
            ]
        )
    raw = raw.apply(lambda s: s.str.strip())
    problems: list[Problem] = []
    line = pd.Series(np.arange(len(raw)) + 2, index=raw.index)

    def add(i: int, col: str | None, msg: str) -> None:
        problems.append(Problem(f, msg, row=int(line[i]), column=col))

    for col in _NON_EMPTY:
        for i in raw.index[raw[col] == ""]:
            add(i, col, f"{col} is empty; every image needs a value")

    dup = raw[(raw["image_id"] != "") & raw["image_id"].duplicated(keep=False)]
    for image_id, grp in dup.groupby("image_id", sort=False):
        lines = ", ".join(str(line[i]) for i in grp.index)
        add(grp.index[1], "image_id", f"image_id {image_id!r} appears on lines {lines}; image ids must be unique")

    out = raw.copy()
    rules = {
        "dose_mg_kg": ("doses must be numbers >= 0 (use 0 for vehicle)", 0.0, True),
        "treatment_days": ("treatment_days must be a number of days >= 0", 0.0, True),
        "day": ("day must be a number of days since the first dose (negative for baseline)", None, True),
        "pixel_size_um": ("pixel_size_um must be a number > 0 in micrometres", 0.0, False),
    }
    for col, (fix, lower, _) in rules.items():
        num = _numeric(raw[col])
        bad_text = (raw[col] != "") & num.isna()
        for i in raw.index[bad_text]:
            add(i, col, f"{col} is {raw.at[i, col]!r}, not a number; {fix}")
        if lower is not None:
            too_low = num < lower if col != "pixel_size_um" else num <= lower
            for i in raw.index[too_low.fillna(False)]:
                add(i, col, f"{col} is {raw.at[i, col]}; {fix}")
        out[col] = num.astype(float)

    for col in CHANNEL_COLUMNS:
        num = _numeric(raw[col])
        bad = (raw[col] != "") & (num.isna() | (num < 0) | (num != np.floor(num)))
        for i in raw.index[bad]:
            add(i, col, f"{col} is {raw.at[i, col]!r}; channel indices are whole numbers >= 0 (0 = first channel), or empty if absent")
        out[col] = num.where(~bad).astype("Int64")
    no_channel = (raw[list(CHANNEL_COLUMNS)] == "").all(axis=1)
    for i in raw.index[no_channel]:
        add(i, "synapse_channel", "no channel role is set; give at least one of synapse_channel, microglia_channel, lysosome_channel")

    for attr in ("genotype", "compound"):
        sub = raw[(raw["animal_id"] != "") & (raw[attr] != "")]
        counts = sub.groupby("animal_id")[attr].nunique()
        for animal in counts.index[counts > 1]:
            rows = sub[sub["animal_id"] == animal]
            first = rows.drop_duplicates(attr)
            desc = "; ".join(f"{v!r} on line {line[i]}" for i, v in first[attr].items())
            add(first.index[1], attr, f"animal {animal!r} has more than one {attr} ({desc}); an animal has one {attr}: fix the animal_id or the {attr}")

    out["abs_path"] = [str(resolve_image_path(sheet, p)) if p else "" for p in raw["path"]]
    if check_images:
        infos: dict[str, ImageInfo] = {}
        for i in raw.index:
            p = out.at[i, "abs_path"]
            if not p:
                continue
            if not Path(p).exists():
                add(i, "path", f"image file not found: looked for {raw.at[i, 'path']!r} relative to {sheet.resolve().parent}; fix the path or add the file")
                continue
            if p not in infos:
                try:
                    infos[p] = image_info(p)
                except ImageReadError as exc:
                    for prob in exc.problems:
                        add(i, "path", prob.message + f" ({raw.at[i, 'path']})")
                    continue
            info = infos[p]
            if raw.at[i, "pixel_size_um"] == "":
                if info.pixel_size_um is None:
                    add(i, "pixel_size_um", f"pixel_size_um is empty and {raw.at[i, 'path']} has no pixel size in its metadata; add pixel_size_um to the sheet or write PhysicalSizeX into the OME metadata")
                else:
                    out.at[i, "pixel_size_um"] = info.pixel_size_um
            for col in CHANNEL_COLUMNS:
                ch = out.at[i, col]
                if pd.notna(ch) and int(ch) >= info.n_channels:
                    add(i, col, f"{col} is {int(ch)} but {raw.at[i, 'path']} has {info.n_channels} channel(s) (valid: 0-{info.n_channels - 1}); fix the channel index")

    if problems:
        problems.sort(key=lambda p: (p.row or 0, REQUIRED_COLUMNS.index(p.column) if p.column in REQUIRED_COLUMNS else 99))
        raise SampleSheetError(problems)
    log.info("%s: %d images of %d animals", f, len(out), out["animal_id"].nunique())
    return out
