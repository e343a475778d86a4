"""Safe file writing: every write goes to a temporary file that is renamed into place."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from analysis.errors import InputError, Problem

__all__ = ["atomic_path", "write_csv", "write_parquet", "sha256_file", "manifest", "check_manifest"]


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
    """``path`` (relative, sorted), ``bytes`` and ``sha256`` of every file below ``folder``."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
    return pd.DataFrame(
        {
            "path": [str(p.relative_to(root)) for p in files],
            "bytes": [p.stat().st_size for p in files],
            "sha256": [sha256_file(p) for p in files],
        }
    )


def check_manifest(raw_dir: str | os.PathLike[str], manifest_csv: str | os.PathLike[str]) -> pd.DataFrame:
    """Check the raw folder against its recorded manifest; write the manifest the first time.

    Raises
    ------
    InputError
        Listing every changed, missing or new file, with the fix.
    """
    current = manifest(raw_dir)
    path = Path(manifest_csv)
    if not path.exists():
        write_csv(current, path)
        return current
    recorded = pd.read_csv(path, dtype={"path": str, "sha256": str})
    merged = recorded.merge(current, on="path", how="outer", suffixes=("_recorded", "_now"), indicator="where")
    fix = f"raw data are immutable: restore the file, or delete {path} to accept the new inputs"
    problems = []
    for r in merged.itertuples():
        where = str(Path(raw_dir) / r.path)
        if r.where == "left_only":
            problems.append(Problem(where, f"missing since the manifest was written; {fix}"))
        elif r.where == "right_only":
            problems.append(Problem(where, f"new since the manifest was written; {fix}"))
        elif r.sha256_recorded != r.sha256_now:
            problems.append(Problem(where, f"changed since the manifest was written (SHA-256 differs); {fix}"))
    if problems:
        raise InputError(problems)
    return current
