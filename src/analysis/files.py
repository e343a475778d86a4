"""Safe file writing: every write goes to a temporary file that is renamed into place."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

__all__ = ["atomic_path", "write_csv", "write_parquet"]


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
