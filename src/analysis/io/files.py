"""Safe file writing: every write goes to a temporary file that is renamed into place."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from analysis.errors import InputError, Problem

__all__ = ["atomic_path", "write_csv", "write_parquet", "sha256_file", "file_digest", "manifest", "input_manifest",
           "check_manifest"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    A crash or an exception leaves no partial file at ``path`` (the temporary file is
    removed), so a killed run never leaves a corrupt output behind.

    Examples
    --------
    >>> with atomic_path("/tmp/example.txt") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("hello")
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a table as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a table as Parquet (no index) atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """``path`` (relative, sorted), ``bytes`` and ``sha256`` of every file below ``folder``.

    (A whole-folder listing; the quantification's raw manifest is :func:`input_manifest`.)
    """
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
    return pd.DataFrame(
        {
            "path": [str(p.relative_to(root)) for p in files],
            "bytes": [p.stat().st_size for p in files],
            "sha256": [sha256_file(p) for p in files],
        }
    )


#: ``sha256`` of an input that could not be hashed (the image then fails when it is read).
MISSING, NOT_A_FILE, UNREADABLE = "missing", "not a regular file", "unreadable"


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """``(bytes, sha256)`` of the file ``path`` names, symlinks followed.

    A missing file, a symlink loop, a folder or a device (e.g. a ``.tif`` linked to
    ``/dev/zero``) gives ``(-1, reason)`` (:data:`MISSING`, :data:`UNREADABLE`,
    :data:`NOT_A_FILE`) instead of raising: the image fails when it is read, with its own message.
    """
    p = Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            return -1, NOT_A_FILE
        return st.st_size, sha256_file(p)
    except FileNotFoundError:
        return -1, MISSING
    except (OSError, RuntimeError):
        return -1, UNREADABLE


def input_manifest(images: Iterable[tuple[str, str | os.PathLike[str]]],
                   sheet: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The raw inputs of a run: each image the sheet lists, and the sheet itself.

    Parameters
    ----------
    images : iterable of (str, path)
        The image's path as the sheet writes it (relative to the sheet, ``../`` or absolute)
        and the file to hash (symlinks are followed: the content counts, never copied).
        Repeated paths are listed once.
    sheet : path, optional
        The sample sheet: one more row (``kind`` "sample sheet"), the hash of the whole file
        for provenance.  It is not compared by :func:`check_manifest` (metadata columns may be
        corrected); its image columns are (see there).

    Returns
    -------
    DataFrame
        ``path``, ``bytes``, ``sha256`` (the columns the report's provenance reads) and
        ``kind`` ("image" or "sample sheet"); images in sheet order.
    """
    rows = []
    seen: dict[str, tuple[int, str]] = {}  # resolved file -> digest (one file listed twice is hashed once)
    names = set()
    for name, path in images:
        if name in names:
            continue
        names.add(name)
        try:
            key = str(Path(path).resolve())
        except (OSError, RuntimeError):
            key = str(path)
        if key not in seen:
            seen[key] = file_digest(path)
        rows.append((name, *seen[key], "image"))
    if sheet is not None:
        rows.append((Path(sheet).name, *file_digest(sheet), "sample sheet"))
    return pd.DataFrame(rows, columns=["path", "bytes", "sha256", "kind"]).astype({"bytes": "int64"})


def _fields_csv(manifest_csv: Path) -> Path:
    """Where the sheet's image columns are recorded, beside the manifest."""
    return manifest_csv.with_name(manifest_csv.stem + "_sheet.csv")


def _compare_fields(recorded: pd.DataFrame, current: pd.DataFrame, sheet: str, fix: str) -> list[Problem]:
    """Problems for every image row added, removed or with a changed image column (key: first column)."""
    key = current.columns[0]
    columns = list(dict.fromkeys([*current.columns, *recorded.columns]))
    recorded = recorded.reindex(columns=columns, fill_value="").set_index(key, drop=False)
    current = current.reindex(columns=columns, fill_value="")
    problems = []
    now_keys = set(current[key])
    for i, r in enumerate(current.to_dict("records")):
        line = i + 2  # the sheet's line (header is line 1)
        if r[key] not in recorded.index:
            problems.append(Problem(sheet, f"{key} {r[key]!r} is new since the manifest was written; {fix}",
                                    row=line, column=key))
            continue
        old = recorded.loc[r[key]]
        if isinstance(old, pd.DataFrame):
            old = old.iloc[0]
        for col in columns:
            if col != key and str(old[col]) != str(r[col]):
                was, now = (repr(v) if v != "" else "empty" for v in (old[col], r[col]))
                problems.append(Problem(sheet, f"{col} of {key} {r[key]!r} was {was} when the manifest was "
                                               f"written, now {now}; {fix}", row=line, column=col))
    for gone in recorded.index[~recorded.index.isin(now_keys)]:
        problems.append(Problem(sheet, f"{key} {gone!r} was removed from the sheet since the manifest was written; "
                                       f"{fix}", column=key))
    return problems


def check_manifest(samples_csv: str | os.PathLike[str], images: Iterable[tuple[str, str | os.PathLike[str]]],
                   sheet_fields: pd.DataFrame, manifest_csv: str | os.PathLike[str]) -> pd.DataFrame:
    """Check a run's raw inputs against the recorded manifest; record them the first time.

    The raw inputs are the images the sheet lists (wherever they are; their content, symlinks
    followed) and the sheet's image columns (``sheet_fields``: the columns that decide what
    is measured, e.g. image id, path, channel roles, pixel size, z step).  Other columns of
    the sheet (sex, region, cohort, ...) may be corrected; files the sheet does not list
    (outputs written inside the data folder, notes, ground truth) are not inputs.  After a
    successful check the manifest is brought up to date (the sheet's own hash, kept for
    provenance, follows corrections of its metadata).

    Parameters
    ----------
    samples_csv : path
        The sample sheet (named in messages, hashed for provenance).
    images : iterable of (str, path)
        Each image's path as the sheet writes it, and the file (see :func:`input_manifest`).
    sheet_fields : DataFrame
        The sheet's image columns as text, one row per sheet row in sheet order, the first
        column a unique key (``image_id``); recorded in ``<manifest>_sheet.csv``.  A column
        absent on one side counts as empty there.
    manifest_csv : path
        ``raw_manifest.csv`` (``path``, ``bytes``, ``sha256``, ``kind``).

    Returns
    -------
    DataFrame
        The current manifest (:func:`input_manifest`).

    Raises
    ------
    InputError
        Listing every changed or missing image and every changed image column (file, line,
        column, old and new value), with the fix.
    """
    images = list(images)
    current = input_manifest(images, samples_csv)
    fields = sheet_fields.astype(str).reset_index(drop=True)
    path = Path(manifest_csv)
    fields_path = _fields_csv(path)
    if not path.exists():
        write_csv(current, path)
        write_csv(fields, fields_path)
        return current
    recorded = pd.read_csv(path, dtype={"path": str, "sha256": str}, keep_default_na=False)
    fix = (f"raw inputs are immutable: restore them, or delete {path} to accept the new inputs "
           "(cached results of unchanged images are reused)")
    problems = []
    where = {name: str(p) for name, p in images}
    if "kind" in recorded.columns:
        recorded_images = recorded[recorded["kind"] == "image"]
    else:  # a manifest of every file below the sheet's folder (before issue 16): its images only
        recorded_images = recorded
    old = dict(zip(recorded_images["path"], recorded_images["sha256"], strict=True))
    for r in current[current["kind"] == "image"].itertuples():
        if r.path not in old:
            continue  # a path new in the sheet: reported with the sheet's image columns
        if r.sha256 == MISSING and old[r.path] != MISSING:
            problems.append(Problem(where[r.path], f"missing since the manifest was written; {fix}"))
        elif old[r.path] != r.sha256:
            problems.append(Problem(where[r.path], f"changed since the manifest was written (SHA-256 differs); {fix}"))
    if fields_path.exists():
        recorded_fields = pd.read_csv(fields_path, dtype=str, keep_default_na=False)
        problems += _compare_fields(recorded_fields, fields, str(samples_csv), fix)
    if problems:
        raise InputError(problems)
    before = recorded.reindex(columns=current.columns).astype(str).reset_index(drop=True)
    if not before.equals(current.astype(str)):
        write_csv(current, path)
    if not fields_path.exists() or not pd.read_csv(fields_path, dtype=str, keep_default_na=False).equals(fields):
        write_csv(fields, fields_path)
    return current
