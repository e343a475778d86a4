"""Image readers: TIFF / OME-TIFF and Zeiss LSM (tifffile, with imagecodecs for compressed
files), RGB as channels, Fiji hyperstacks by their axes; Zeiss CZI, Leica LIF and Nikon ND2
through the bioio reader plug-ins (bioio-czi, bioio-lif, bioio-nd2, imported only when such a
file is read); and reader plug-ins of one's own (:func:`register_reader`, entry points).

:func:`image_info` reads a file's header (shape, axes, pixel size, z step, channel names)
without its pixels; :func:`read_image` returns the data as (C, Z, Y, X). Every failure is an
:class:`analysis.errors.ImageReadError` naming the file and a fix, never a raw traceback, and
never quoting the file's bytes (:func:`without_file_bytes`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import math
import re
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.errors import ImageReadError

__all__ = ["ImageInfo", "VENDOR_FORMATS", "image_info", "read_image", "register_reader", "without_file_bytes"]

log = logging.getLogger(__name__)

_TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".lsm")
#: Vendor formats read through a bioio reader plug-in: suffix -> (module, pip name, format name).
VENDOR_FORMATS: dict[str, tuple[str, str, str]] = {
    ".czi": ("bioio_czi", "bioio-czi", "Zeiss CZI"),
    ".lif": ("bioio_lif", "bioio-lif", "Leica LIF"),
    ".nd2": ("bioio_nd2", "bioio-nd2", "Nikon ND2"),
}
#: Relative difference of a pixel's width and height (metadata) above which it is not square.
NON_SQUARE_TOLERANCE = 0.01
_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6, "cm": 1e4}
_RGB_NAMES = ("red", "green", "blue", "alpha")
_FIJI_AXES_FIX = (
    "in Fiji set the dimensions with Image > Properties... (channels, slices, frames) or "
    "Image > Hyperstacks > Re-order Hyperstack..., or split the file with Image > Stacks > "
    "Stack to Images..., then save it again (File > Save As > Tiff...)"
)


@dataclass(frozen=True)
class ImageInfo:
    """What an image file's header says, without reading the pixel data.

    Attributes
    ----------
    path : Path
    shape : tuple of int
        Shape as stored, without axes of length 1 other than C, Z, Y, X (e.g. a single time
        point of a Fiji hyperstack).
    axes : str
        The axes of ``shape``: each of C, Z, Y, X at most once, Y and X present, in the stored
        order (``"CZYX"``, ``"ZCYX"`` for a Fiji hyperstack, ``"YXC"`` for an RGB TIFF, whose
        samples are the channels); :func:`read_image` returns them as CZYX.
    n_channels, n_z : int
    dtype : numpy.dtype
    pixel_size_um : float or None
        From OME ``PhysicalSizeX`` (converted to um), the LSM voxel size, the TIFF/ImageJ
        resolution tags, or the vendor metadata (CZI, LIF, ND2, through bioio).
    z_step_um : float or None
        From OME ``PhysicalSizeZ``, the LSM voxel depth, the ImageJ ``spacing`` (with a
        physical unit) or the vendor metadata.
    channel_names : tuple of str
        Names of the channels where the file gives them (OME ``Channel Name``, LSM channel
        names, the vendor metadata; ``red``, ``green``, ``blue`` for RGB), else empty.
        A sample sheet may name a channel role by one of these names
        (:func:`analysis.io.load_samples`).
    pixel_size_y_um : float or None
        The pixel's height where the metadata give it apart from its width (OME
        ``PhysicalSizeY``, the LSM voxel height, the TIFF ``YResolution``, the vendor
        metadata).  Every measurement assumes square pixels: :func:`analysis.io.load_samples`
        refuses a file whose pixels are not (:attr:`square_pixels`).
    """

    path: Path
    shape: tuple[int, ...]
    axes: str
    n_channels: int
    n_z: int
    dtype: np.dtype
    pixel_size_um: float | None
    z_step_um: float | None
    channel_names: tuple[str, ...] = ()
    pixel_size_y_um: float | None = None

    @property
    def square_pixels(self) -> bool:
        """False when the metadata give a pixel height that differs from its width by more
        than 1 % (True when either is unknown)."""
        x, y = self.pixel_size_um, self.pixel_size_y_um
        return x is None or y is None or abs(x - y) <= NON_SQUARE_TOLERANCE * max(x, y)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(ny, nx) of one plane."""
        return self.shape[self.axes.index("Y")], self.shape[self.axes.index("X")]


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


def _ome_sizes(xml: str) -> tuple[float | None, float | None, tuple[str, ...], float | None]:
    """Pixel size, z step (um), channel names and pixel height (um) from OME-XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None, (), None
    for el in root.iter():
        if el.tag.endswith("Pixels"):
            def size(attr: str) -> float | None:
                value = el.attrib.get(f"PhysicalSize{attr}")
                if value is None:
                    return None
                unit = el.attrib.get(f"PhysicalSize{attr}Unit", "µm")
                try:
                    v = float(value) * _UNIT_TO_UM.get(unit, 1.0)
                except ValueError:
                    return None
                # (0, negative or NaN sizes, which some writers store for "unknown", are absent)
                return v if math.isfinite(v) and v > 0 else None

            names = tuple(ch.attrib.get("Name", "") for ch in el if ch.tag.endswith("Channel"))
            return size("X"), size("Z"), names if all(names) else (), size("Y")
    return None, None, (), None


def _positive_um(value, factor: float = 1.0) -> float | None:
    """``value * factor`` when it is a finite number > 0, else None (metadata often hold 0 or NaN)."""
    try:
        v = float(value) * factor
    except (TypeError, ValueError):
        return None
    return float(f"{v:.12g}") if math.isfinite(v) and v > 0 else None


def _lsm_sizes(lsm: dict) -> tuple[float | None, float | None, tuple[str, ...], float | None]:
    """Pixel size, z step (um), channel names and pixel height (um) from Zeiss LSM metadata
    (voxel sizes in metres)."""
    px = _positive_um(lsm.get("VoxelSizeX"), 1e6)
    dz = _positive_um(lsm.get("VoxelSizeZ"), 1e6) if int(lsm.get("DimensionZ", 1) or 1) > 1 else None
    colors = lsm.get("ChannelColors") or {}
    names = tuple(str(n).strip() for n in colors.get("ColorNames", ()) or ())
    return px, dz, names if all(names) else (), _positive_um(lsm.get("VoxelSizeY"), 1e6)


def _imagej_unit_um(tif) -> float | None:
    """Micrometres per ImageJ calibration unit, None for pixels or an unknown unit."""
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "")).replace("\\u00B5", "µ")
    return _UNIT_TO_UM.get(unit)


def _tiff_resolution_um(tif, axis: str = "X") -> float | None:
    """Pixel width (``axis="X"``) or height (``"Y"``) in um from the TIFF resolution tags."""
    page = tif.pages[0]
    tag = page.tags.get(f"{axis}Resolution")
    if tag is None:
        return None
    num, den = tag.value
    if not num or not den:
        return None
    px_per_unit = num / den
    ij_unit = _imagej_unit_um(tif)
    if ij_unit is not None:
        return ij_unit / px_per_unit
    res_unit = page.tags.get("ResolutionUnit")
    code = int(res_unit.value) if res_unit is not None else 2
    if code == 3:  # centimetre
        return 1e4 / px_per_unit
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


def _file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be opened as an image file (symlink loop, missing, folder...), or None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return ("is a symbolic link loop (the link leads back to itself); replace it with the real "
                    "file or point the link at the file (ls -l shows where it points)")
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return (f"is a symbolic link to {os.readlink(path)!r}, which does not exist; fix the link or "
                    "copy the image here")
        if exc.errno == errno.ENOENT:
            return "file not found; check the path in the sample sheet"
        if exc.errno == errno.EACCES:
            return "permission denied; make the file readable (chmod a+r) or copy it somewhere readable"
        return f"cannot open it ({exc.strerror or exc}); check the path and the disk"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not an image file; give the path of the image file inside it"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a device, pipe or socket); give the path of an image file"
    if st.st_size == 0:
        return "is empty (0 bytes); copy or export it again"
    return None


#: A Python bytes literal in an exception text (readers quote the first bytes of a file they
#: cannot parse; a ``.tif`` linked to a system file would put its content into messages).
_BYTES_LITERAL = re.compile(r"""\bb(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def without_file_bytes(text: str) -> str:
    """``text`` with every quoted bytes literal replaced by ``<file bytes omitted>`` and
    non-printable characters dropped: a reader's message about a file, never the file's content."""
    text = _BYTES_LITERAL.sub("<file bytes omitted>", str(text))
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _read_failure(exc: BaseException) -> str:
    text = without_file_bytes(str(exc))
    if "imagecodecs" in text:
        return (f"it is compressed with a codec that needs the imagecodecs package ({text}); install it "
                "(pip install imagecodecs, or conda install -c conda-forge imagecodecs) or save the "
                "image uncompressed")
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"cannot read it ({exc.strerror or text}); check the file and the disk"
    return f"cannot read TIFF ({text}); the file may be truncated or corrupt: export it again"


def _map_axes(path: Path, raw_axes: str, raw_shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """tifffile axes -> our axes (C, Z, Y, X in stored order), singleton extras dropped."""
    mapped = []
    for a, n in zip(raw_axes, raw_shape, strict=True):
        if a == "S":  # samples of an RGB(A) pixel are the channels
            a = "C"
        elif a in "QI":  # generic pages without metadata: read as z-slices
            a = "Z"
        mapped.append((a, int(n)))
    mapped = [(a, n) for a, n in mapped if not (n == 1 and (a not in "CZYX" or [b for b, _ in mapped].count(a) > 1))]
    axes = "".join(a for a, _ in mapped)
    shape = tuple(n for _, n in mapped)
    if "T" in axes:
        nt = shape[axes.index("T")]
        raise ImageReadError.for_file(
            path,
            f"has {nt} time points (axes {raw_axes!r}, shape {raw_shape}); one row of the sheet is one "
            "image at one time: if these are really z-slices, swap them in Fiji with Image > Hyperstacks > "
            "Re-order Hyperstack... (frames <-> slices) or Image > Properties...; if they are time points, "
            "split them with Image > Stacks > Stack to Images... (or Image > Hyperstacks > Reduce "
            "Dimensionality...) and list each file on its own row",
        )
    if any(a not in "CZYX" for a in axes) or len(set(axes)) != len(axes) or "Y" not in axes or "X" not in axes:
        raise ImageReadError.for_file(
            path,
            f"axes {raw_axes!r} (shape {raw_shape}) cannot be read as channels (C), z-slices (Z), Y and X; "
            + _FIJI_AXES_FIX + ", or export it as OME-TIFF (File > Export > OME-TIFF...)",
        )
    return axes, shape


def _missing_bytes(path: Path, series) -> int:
    """How many bytes of the first and last page's pixel data are missing (beyond the end of the
    file, or fewer than an uncompressed page needs); a header-only check for truncated files."""
    size = os.path.getsize(path)
    pages = [pg for pg in (series.pages[0], series.pages[-1]) if pg is not None] if len(series.pages) else []
    missing = 0
    for pg in pages:
        offsets, counts = tuple(getattr(pg, "dataoffsets", ())), tuple(getattr(pg, "databytecounts", ()))
        if not offsets or not any(offsets):
            return max(1, int(getattr(pg, "nbytes", 1)))
        missing = max(missing, max(o + c for o, c in zip(offsets, counts)) - size)
        if getattr(pg, "compression", 1) == 1 and hasattr(pg, "nbytes"):
            missing = max(missing, _stored_bytes(pg) - sum(counts))
    return max(0, missing)


def _stored_bytes(page) -> int:
    """Bytes of an uncompressed page's pixel data in the file: its decoded size, except for
    samples of fewer than 8 bits (1-bit bilevel TIFFs), which are packed with each row padded to
    a whole byte."""
    bps = int(getattr(page, "bitspersample", 8) or 8)
    if bps % 8 == 0:
        return int(page.nbytes)
    spp = int(getattr(page, "samplesperpixel", 1) or 1)
    separate = int(getattr(page, "planarconfig", 1)) == 2
    width = int(page.imagewidth) * (1 if separate else spp)
    rows = int(page.imagelength) * int(getattr(page, "imagedepth", 1) or 1) * (spp if separate else 1)
    return -(-width * bps // 8) * rows


def _other_images(series) -> int:
    """How many series of a TIFF besides the first are images of their own: series whose planes
    are at least half as large as the first's per side (thumbnails and previews, such as a Zeiss
    LSM file's, are smaller and do not count)."""
    def plane(s) -> tuple[int, int]:
        shape = dict(zip(s.axes, s.shape))
        return int(shape.get("Y", 0)), int(shape.get("X", 0))

    if len(series) < 2:
        return 0
    y0, x0 = plane(series[0])
    return sum(1 for s in series[1:] if 2 * plane(s)[0] >= y0 and 2 * plane(s)[1] >= x0)


def _tiff_info(path: Path) -> ImageInfo:
    import tifffile

    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            raw_shape = tuple(int(s) for s in series.shape)
            raw_axes = series.axes
            others = _other_images(tif.series)
            px, dz, names, py = (None, None, (), None)
            if tif.is_ome and tif.ome_metadata:
                px, dz, names, py = _ome_sizes(tif.ome_metadata)
            if tif.is_lsm:
                px, dz, names, py = _lsm_sizes(tif.lsm_metadata or {})
            if px is None:
                px, py = _tiff_resolution_um(tif), _tiff_resolution_um(tif, "Y")
            ij = tif.imagej_metadata or {}
            if dz is None and "spacing" in ij and _imagej_unit_um(tif) is not None:
                dz = float(ij["spacing"]) * _imagej_unit_um(tif)
            rgb = int(tif.pages[0].photometric) == 2 and "S" in raw_axes
            dtype = np.dtype(series.dtype)
            truncated = _missing_bytes(path, series)
    except Exception as exc:  # whatever tifffile raises on a damaged header is a damaged file
        raise ImageReadError.for_file(path, _read_failure(exc)) from None
    if truncated:
        raise ImageReadError.for_file(
            path, f"{truncated} bytes of its pixel data are missing: it is truncated or corrupt (an "
                  "interrupted copy or export?); copy or export it again")
    if others:
        _warn_once(path, "series", f"holds {others + 1} images (series: positions, fields or tiles of one "
                                   f"acquisition); only the first, {' x '.join(map(str, raw_shape))} ({raw_axes}), is "
                                   "read: to measure the others, save each as its own file (Fiji: open it with "
                                   "Bio-Formats, 'Open all series', and save each) and list each on its own row of the sheet")
    axes, shape = _map_axes(path, raw_axes, raw_shape)
    n_c = shape[axes.index("C")] if "C" in axes else 1
    n_z = shape[axes.index("Z")] if "Z" in axes else 1
    if rgb:
        names = _RGB_NAMES[:n_c]
    if len(names) != n_c:
        names = ()
    return ImageInfo(Path(path), shape, axes, n_c, n_z, dtype, px, dz, tuple(names), py)


def image_info(path: str | os.PathLike[str]) -> ImageInfo:
    """Header information of an image file (no pixel data read).

    TIFF and OME-TIFF files are read by their axes: channels (``C``, or the ``S`` samples of an
    RGB TIFF: channel 0 = red, 1 = green, 2 = blue), z-slices (``Z``), ``Y``, ``X`` in any order
    (e.g. Fiji/ImageJ hyperstacks, stored ``ZCYX``); a time axis of length 1 is dropped.
    LZW / deflate / zstd compressed TIFFs are read through ``imagecodecs``.  Zeiss LSM files
    are TIFFs too (voxel size and channel names from the LSM metadata).  A TIFF holding several
    images (series of a multi-position OME-TIFF; not the sub-resolutions of a pyramid, nor small
    previews) is read as its **first image**, with a warning that says how to measure the others.

    Zeiss CZI, Leica LIF and Nikon ND2 files are read through the bioio plug-ins
    (``bioio-czi``, ``bioio-lif``, ``bioio-nd2``), imported only when such a file is read: the
    **first scene** and the **first time point** (a warning is logged when the file has more;
    export them as separate files to measure them), axes (C)(Z)YX as ``"CZYX"``; pixel size,
    z step and channel names from the vendor metadata.  Mosaic tiles and other extra axes are
    refused with the fix.  A missing plug-in is an error naming its ``pip install``.

    Raises
    ------
    ImageReadError
        Unsupported format, missing or unreadable file (symlink loop, folder, empty file),
        more than one time point, or axes that are not channels, z-slices, Y and X; the
        message says how to fix it (in Fiji where that applies).
    """
    p = Path(path)
    plugin = _plugin_for(p)
    if plugin is not None:
        try:
            return plugin[0](p)
        except OSError as exc:
            raise ImageReadError.for_file(p, _file_problem(p) or _read_failure(exc)) from None
    if not _is_tiff(p):
        raise _unsupported(p)
    problem = _file_problem(p)
    if problem is not None:
        raise ImageReadError.for_file(p, problem)
    return _tiff_info(p)


# --- vendor formats through bioio reader plug-ins -------------------------------------------

_WARNED: set[tuple[str, str]] = set()
_BIOIO_PLACEHOLDER = re.compile(r"Channel:\d+(:\d+)*")


def _warn_once(path: Path, key: str, message: str) -> None:
    """Log ``message`` about ``path`` once per process (image_info and read_image both look)."""
    if (str(path), key) not in _WARNED:
        _WARNED.add((str(path), key))
        log.warning("%s: %s", path, message)


def _bioio_reader(path: Path):
    """The bioio plug-in reader of a vendor file, scene 0 selected; ImageReadError if it cannot be had."""
    import importlib

    problem = _file_problem(path)
    if problem is not None:
        raise ImageReadError.for_file(path, problem)
    suffix = next(s for s in VENDOR_FORMATS if path.name.lower().endswith(s))
    module, package, name = VENDOR_FORMATS[suffix]
    try:
        plugin = importlib.import_module(module)
    except ImportError as exc:
        raise ImageReadError.for_file(
            path,
            f"reading {name} files ({suffix}) needs the bioio plug-in {package}, which is not installed "
            f"({without_file_bytes(str(exc))}); install it with `pip install {package}` (it is a dependency of "
            "analysis: `make setup` installs it), or export the image as OME-TIFF",
        ) from None
    try:
        reader = plugin.Reader(str(path))
        scenes = tuple(reader.scenes)
        if scenes:
            reader.set_scene(0)
    except Exception as exc:  # bioio plug-ins raise their own types for damaged or foreign files
        text = without_file_bytes(str(exc)).strip().splitlines()
        reason = text[0] if text else type(exc).__name__
        if type(exc).__name__ == "UnsupportedFileFormatError":  # the plug-in does not recognise the content
            raise ImageReadError.for_file(
                path,
                f"unsupported image format: {package} does not recognise it as a {name} file ({reason}); if it is "
                f"one, it is truncated or corrupt: export it again from the microscope software; otherwise give it "
                "its real extension, convert it to OME-TIFF (e.g. with bfconvert) or register a reader with "
                "analysis.io.register_reader",
            ) from None
        raise ImageReadError.for_file(
            path,
            f"cannot read it as a {name} file ({reason}); the file may be truncated, corrupt or not really "
            f"{suffix}: export it again from the microscope software, or as OME-TIFF",
        ) from None
    if len(scenes) > 1:
        _warn_once(path, "scenes", f"has {len(scenes)} scenes ({', '.join(map(str, scenes[:5]))}"
                                   f"{', ...' if len(scenes) > 5 else ''}); only the first, {scenes[0]!r}, is read: "
                                   "to measure the others, export each scene as its own file (e.g. OME-TIFF) and "
                                   "list each on its own row of the sheet")
    return reader, name


def _bioio_layout(path: Path, reader, name: str) -> tuple[str, dict[str, int]]:
    """The bioio dimension order and sizes; warns about time points, refuses other extra axes."""
    try:
        order = str(reader.dims.order)
        sizes = {a: int(getattr(reader.dims, a)) for a in order}
    except Exception as exc:
        raise ImageReadError.for_file(
            path, f"cannot read the dimensions of this {name} file ({without_file_bytes(str(exc))}); "
                  "export it again, or as OME-TIFF") from None
    if sizes.get("T", 1) > 1:
        _warn_once(path, "time", f"has {sizes['T']} time points; only the first is read: one row of the sheet is "
                                 "one image at one time, so export each time point as its own file if they "
                                 "matter")
    if sizes.get("S", 1) > 1 and sizes.get("C", 1) > 1:
        raise ImageReadError.for_file(
            path, f"has both {sizes['C']} channels and {sizes['S']} colour samples per pixel; export it as "
                  "OME-TIFF with one channel per stain")
    extra = {a: n for a, n in sizes.items() if a not in "TCZYXS" and n > 1}
    if extra:
        desc = ", ".join(f"{a}={n}" for a, n in extra.items())
        raise ImageReadError.for_file(
            path, f"has dimensions other than channels, z-slices, Y and X ({desc}; M are the tiles of a "
                  "mosaic): stitch or split it in the microscope software (e.g. ZEN: Stitching, then "
                  "Split Scenes) and export each field as its own file (e.g. OME-TIFF)")
    return order, sizes


def _vendor_info(path: Path) -> ImageInfo:
    """Header of a CZI / LIF / ND2 file through its bioio plug-in (first scene, first time point)."""
    reader, name = _bioio_reader(path)
    _, sizes = _bioio_layout(path, reader, name)
    rgb = sizes.get("S", 1) > 1
    n_c = sizes.get("S", 1) if rgb else sizes.get("C", 1)
    n_z = sizes.get("Z", 1)
    try:
        pps = reader.physical_pixel_sizes
        px, py = _positive_um(getattr(pps, "X", None)), _positive_um(getattr(pps, "Y", None))
        dz = _positive_um(getattr(pps, "Z", None)) if n_z > 1 else None
        names = tuple(str(n).strip() for n in (reader.channel_names or ()))
        dtype = np.dtype(reader.dtype)
    except Exception as exc:  # metadata a plug-in cannot parse: pixels may still be fine, say so
        log.warning("%s: cannot read the %s metadata (%s); give pixel_size_um and z_step_um in the sheet",
                    path, name, without_file_bytes(str(exc)))
        px, py, dz, names, dtype = None, None, None, (), np.dtype(reader.dtype)
    if rgb:
        names = _RGB_NAMES[:n_c]
    if len(names) != n_c or not all(names) or all(_BIOIO_PLACEHOLDER.fullmatch(n) for n in names):
        names = ()  # bioio makes up "Channel:0", "Channel:0:1"... when the file names none
    return ImageInfo(Path(path), (n_c, n_z, sizes["Y"], sizes["X"]), "CZYX", n_c, n_z, dtype, px, dz, names, py)


def _vendor_read(path: Path) -> np.ndarray:
    """Pixels of a CZI / LIF / ND2 file as (C, Z, Y, X): first scene, first time point."""
    reader, name = _bioio_reader(path)
    order, sizes = _bioio_layout(path, reader, name)
    rgb = sizes.get("S", 1) > 1
    out = "".join(a for a in ("S" if rgb else "C") + "ZYX" if a in order)
    fixed = {a: 0 for a in order if a not in out}
    try:
        data = reader.get_image_data(out, **fixed)
    except Exception as exc:
        raise ImageReadError.for_file(
            path, f"cannot read the pixel data of this {name} file ({without_file_bytes(str(exc))}); the file may "
                  "be truncated or corrupt: export it again") from None
    n_c = sizes.get("S", 1) if rgb else sizes.get("C", 1)
    return np.asarray(data).reshape(n_c, sizes.get("Z", 1), sizes["Y"], sizes["X"])


register_reader(VENDOR_FORMATS, _vendor_info, _vendor_read)


def _to_czyx(data: np.ndarray, axes: str) -> np.ndarray:
    """Add missing C and Z axes and transpose to CZYX; ``axes`` holds Y, X and at most one C, Z."""
    for a in "CZ":
        if a not in axes:
            data = data[np.newaxis]
            axes = a + axes
    order = [axes.index(a) for a in "CZYX"]
    if order == [0, 1, 2, 3]:
        return data
    return np.ascontiguousarray(np.transpose(data, order))


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, ImageInfo]:
    """Read an image as a 4-D array with axes CZYX (singleton C/Z added), native dtype.

    Channels of an RGB TIFF are its colour components (0 = red, 1 = green, 2 = blue); Fiji
    hyperstacks (ZCYX, TZCYX with one time point) are transposed to CZYX.  Of a CZI, LIF or
    ND2 file the first scene at the first time point is read (see :func:`image_info`).

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
        try:
            data = np.asarray(plugin[1](p))
        except OSError as exc:
            raise ImageReadError.for_file(p, _file_problem(p) or _read_failure(exc)) from None
    else:
        import tifffile

        try:
            with _quiet_tifffile():
                data = tifffile.imread(p, series=0)
        except Exception as exc:  # as in _tiff_info: a file tifffile cannot decode is a damaged file
            raise ImageReadError.for_file(p, _file_problem(p) or _read_failure(exc).replace(
                "cannot read TIFF", "cannot read pixel data")) from None
    data = data.reshape(info.shape)
    return _to_czyx(data, info.axes), info
