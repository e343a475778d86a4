"""A starter sample sheet from a folder of images (``python -m analysis init FOLDER``).

:func:`starter_sheet` finds the image files under a folder (TIFF / OME-TIFF, Zeiss LSM, and
the vendor formats read through bioio: Zeiss CZI, Leica LIF, Nikon ND2), reads each file's
header (:func:`analysis.io.images.image_info`, no pixel data) and makes one row per image:
``image_id`` from the file name, ``path`` relative to the sheet, ``pixel_size_um`` and
``z_step_um`` from the metadata (empty when the file does not say), the channels in a
``channel_names`` column (``0:PSD95|1:Iba1``; ``0|1`` when the file does not name them) and
the other columns of the sample-sheet contract empty, for the user to fill.
:func:`write_starter_sheet` writes it as ``FOLDER/samples.csv`` (never over an existing sheet
unless asked) and :func:`fill_in_message` says which columns to fill and how.

Files that cannot be read are listed (:attr:`StarterSheet.unreadable`), not fatal.  Skipped:
hidden files and folders (``.*``), folders holding our own outputs (``measurements.parquet``,
``raw_manifest.csv``, ``failures.csv``, ``cells.parquet``), and the ``truth/`` label
images of a simulated study (beside ``ground_truth.csv``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.errors import ImageReadError, InputError, Problem
from analysis.io.images import _TIFF_SUFFIXES, VENDOR_FORMATS, ImageInfo, image_info, without_file_bytes
from analysis.io.sheet import KNOWN_COMPOUNDS, KNOWN_GENOTYPES, REFERENCE_COMPOUND, REQUIRED_COLUMNS, channel_columns

__all__ = ["IMAGE_SUFFIXES", "StarterSheet", "find_images", "starter_sheet", "write_starter_sheet",
           "fill_in_message"]

log = logging.getLogger(__name__)

#: File name endings :func:`find_images` lists (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (*_TIFF_SUFFIXES, *VENDOR_FORMATS)
#: Files that mark a folder as one of our output folders (``quantify``'s tables and manifest).
_OUTPUT_MARKERS = ("measurements.parquet", "raw_manifest.csv", "failures.csv", "cells.parquet")
SHEET_NAME = "samples.csv"


@dataclass
class StarterSheet:
    """A starter sample sheet and what was found on the way.

    Attributes
    ----------
    folder : Path
        The folder searched; the sheet's paths are relative to it.
    table : DataFrame
        One row per readable image, every value a string (empty where the user fills it).
    unreadable : list of (str, str)
        ``(path relative to the folder, reason)`` of image files whose header cannot be read.
    n_z : list of int
        Number of z-slices of each row's image.
    """

    folder: Path
    table: pd.DataFrame
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    n_z: list[int] = field(default_factory=list)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _is_output_folder(filenames: Iterable[str]) -> bool:
    names = set(filenames)
    return any(m in names for m in _OUTPUT_MARKERS)


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder`` (sorted by path), without hidden files, our outputs and truth labels.

    Symbolic links to files are listed (their targets are checked when read); links to
    folders are not followed.
    """
    root = Path(folder)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here != root and _is_output_folder(filenames):
            log.info("%s: skipped (holds analysis outputs)", here)
            dirnames[:] = []
            continue
        keep = []
        for d in sorted(dirnames):
            if d.startswith(".") or d == "__pycache__":
                continue
            if d == "truth" and (here / "ground_truth.csv").exists():  # label images of a simulated study
                continue
            keep.append(d)
        dirnames[:] = keep
        found += [here / f for f in filenames if not f.startswith(".") and _is_image(f)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix().lower())


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: len(name) - len(suffix)]
    return name


def _clean_id(text: str) -> str:
    return re.sub(r"[\s,;\"']+", "_", text).strip("_") or "image"


def _image_ids(rel_paths: Sequence[str]) -> list[str]:
    """Unique ids: the file name without its image suffix; where names repeat, the innermost
    folder names that tell them apart (``x/a.tif``, ``x/y/a.tif`` -> ``x_a``, ``y_a``), then the
    suffix (``a.czi``, ``a.lif`` -> ``a_czi``, ``a_lif``), then a number."""
    def repeated(ids: list[str]) -> set[str]:
        seen: set[str] = set()
        twice: set[str] = set()
        for i in ids:
            (twice if i.lower() in seen else seen).add(i.lower())
        return twice

    parts = [Path(r).parts for r in rel_paths]
    ids = [_clean_id(_stem(p[-1])) for p in parts]
    depth = [1] * len(ids)
    while True:  # prepend one more folder to the ids that still repeat
        twice = repeated(ids)
        grow = [k for k, i in enumerate(ids) if i.lower() in twice and depth[k] < len(parts[k])]
        if not grow:
            break
        for k in grow:
            depth[k] += 1
            ids[k] = _clean_id("_".join([*parts[k][-depth[k]:-1], _stem(parts[k][-1])]))
    twice = repeated(ids)
    ids = [f"{i}_{_clean_id(r[len(_stem(r)):].lstrip('.')).replace('.', '_')}" if i.lower() in twice else i
           for i, r in zip(ids, rel_paths, strict=True)]
    twice = repeated(ids)
    count: dict[str, int] = {}
    out = []
    for i in ids:
        if i.lower() in twice:
            count[i.lower()] = count.get(i.lower(), 0) + 1
            i = f"{i}_{count[i.lower()]}"
        out.append(i)
    return out


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _channels(info: ImageInfo) -> str:
    if info.channel_names:
        return "|".join(f"{k}:{n.replace('|', '/')}" for k, n in enumerate(info.channel_names))
    return "|".join(str(k) for k in range(info.n_channels))


def starter_sheet(folder: str | os.PathLike[str], *, roles: Sequence[str] | None = None,
                  progress: bool = True) -> StarterSheet:
    """A starter sample sheet for the images under ``folder`` (nothing is written).

    Parameters
    ----------
    folder : path
        Folder with the images (searched recursively, see :func:`find_images`).
    roles : sequence of str, optional
        Channel-role columns (default: :func:`analysis.io.sheet.channel_columns`, the contract's
        three and the registered ones).
    progress : bool
        Show a progress bar while the headers are read.

    Returns
    -------
    StarterSheet
        The table has the required columns (:data:`analysis.io.sheet.REQUIRED_COLUMNS`), the
        extra channel roles, ``z_step_um`` and ``channel_names``; files that cannot be read are
        in ``unreadable``.

    Raises
    ------
    InputError
        ``folder`` is not a folder.

    Examples
    --------
    >>> s = starter_sheet("data/raw")  # doctest: +SKIP
    >>> s.table[["image_id", "path", "pixel_size_um", "channel_names"]].head()  # doctest: +SKIP
    """
    from analysis.progress import progress as track

    root = Path(folder)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise InputError(Problem(str(root), f"{what}; give the folder that holds the images"))
    roles = tuple(roles) if roles is not None else channel_columns()
    columns = [*REQUIRED_COLUMNS, *[r for r in roles if r not in REQUIRED_COLUMNS], "z_step_um", "channel_names"]
    files = find_images(root)
    rows: list[dict[str, str]] = []
    n_z: list[int] = []
    unreadable: list[tuple[str, str]] = []
    for path in track(files, total=len(files), desc="read headers", unit="file", enabled=progress):
        rel = path.relative_to(root).as_posix()
        try:
            info = image_info(path)
        except ImageReadError as exc:
            unreadable.append((rel, "; ".join(p.message for p in exc.problems)))
            continue
        except Exception as exc:  # a plug-in's own failure: list the file, go on with the others
            unreadable.append((rel, f"{type(exc).__name__}: {without_file_bytes(str(exc))}"))
            continue
        row = dict.fromkeys(columns, "")
        row.update(path=rel, pixel_size_um=_number(info.pixel_size_um),
                   z_step_um=_number(info.z_step_um) if info.n_z > 1 else "", channel_names=_channels(info))
        rows.append(row)
        n_z.append(info.n_z)
    table = pd.DataFrame(rows, columns=columns, dtype=object)
    table["image_id"] = _image_ids(list(table["path"]))
    return StarterSheet(root, table, unreadable, n_z)


def write_starter_sheet(folder: str | os.PathLike[str], *, force: bool = False,
                        roles: Sequence[str] | None = None, progress: bool = True) -> StarterSheet:
    """Write :func:`starter_sheet` of ``folder`` as ``folder/samples.csv``.

    This is the one place besides ``simulate`` that writes into a raw-data folder: it creates
    the sheet the user then fills in (atomically: a killed run leaves no partial sheet).

    Parameters
    ----------
    folder : path
        Folder with the images; the sheet is written into it.
    force : bool
        Replace an existing ``samples.csv``; without it an existing sheet is an error.
    roles, progress
        As in :func:`starter_sheet`.

    Raises
    ------
    InputError
        ``samples.csv`` exists (without ``force``), the folder holds no image file, or none of
        its image files can be read; the message says what to do.
    """
    from analysis.io.files import write_csv

    root = Path(folder)
    sheet = root / SHEET_NAME
    if (sheet.exists() or sheet.is_symlink()) and not force:
        raise InputError(Problem(str(sheet), "already exists; not replacing it (it may hold your entries): check it with "
                                             "`python -m analysis validate`, move it away, or run `init` again with "
                                             "--force to replace it"))
    started = starter_sheet(root, roles=roles, progress=progress)
    if started.table.empty:
        if started.unreadable:
            raise InputError([Problem(str(root / rel), f"cannot be read, so there is no image to list: {reason}")
                              for rel, reason in started.unreadable])
        raise InputError(Problem(str(root), "no image files found (looked for "
                                            f"{', '.join(IMAGE_SUFFIXES)} in it and its subfolders); give the folder "
                                            "that holds the images"))
    write_csv(started.table, sheet)
    log.info("%s: %d images listed, %d unreadable", sheet, len(started.table), len(started.unreadable))
    return started


def fill_in_message(started: StarterSheet) -> str:
    """What was written and which columns the user fills, and how (one message for the command line)."""
    t = started.table
    sheet = started.folder / SHEET_NAME
    roles = [c for c in t.columns if c.endswith("_channel")]
    named = t["channel_names"].str.contains(":", regex=False)
    example = next((v for v in t.loc[named, "channel_names"]), None)
    lines = [f"wrote {sheet}: {len(t)} image(s), one row each."]
    if started.unreadable:
        lines.append(f"{len(started.unreadable)} file(s) could not be read and are not listed:")
        lines += [f"  - {rel}: {reason}" for rel, reason in started.unreadable]
    lines += [
        "Fill in, on every row:",
        "  - animal_id (one id per animal; an animal's rows share genotype, compound, dose and treatment days)",
        f"  - genotype ({', '.join(KNOWN_GENOTYPES)}, or your own names)",
        f"  - compound ({REFERENCE_COMPOUND} for the controls; e.g. {', '.join(KNOWN_COMPOUNDS[1:])}) and "
        "dose_mg_kg (0 for vehicle)",
        "  - treatment_days (planned days of dosing) and day (days since the first dose when imaged; negative for "
        "a baseline session)",
        f"  - the channel roles {', '.join(roles)}: the 0-based channel index or the channel's name from the "
        "channel_names column" + (f" (e.g. {example})" if example else "") + "; leave a role empty when the image "
        "lacks that stain; at least one role per row",
    ]
    no_px = int((t["pixel_size_um"] == "").sum())
    if no_px:
        lines.append(f"  - pixel_size_um (micrometres) on the {no_px} row(s) where it is empty: those files do not "
                     "say it in their metadata")
    stacks = int(((t["z_step_um"] == "") & pd.Series([n > 1 for n in started.n_z], index=t.index, dtype=bool)).sum())
    if stacks:
        lines.append(f"  - z_step_um (micrometres between z-slices) on the {stacks} stack(s) where it is empty")
    lines.append("The image_id, path, pixel_size_um and z_step_um values come from the files; correct them if they "
                 "are wrong. Optional columns such as sex, region or cohort may be added. Then check the sheet with "
                 f"`python -m analysis validate {sheet}`.")
    return "\n".join(lines)

