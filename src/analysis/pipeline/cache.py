"""Per-image result cache of the quantification (one Parquet file per image).

An entry holds the per-cell table of one image as Parquet, with the image-level readouts
(one row) as JSON and the per-punctum detections of its synapse channel (a small Parquet
table, :func:`read_puncta`) in the file's key-value metadata, so one file (written atomically)
holds everything the outputs are assembled from.  Its name is a SHA-256 over everything
that determines the result: the image file's content hash, the quantification parameters,
the sample-sheet fields that enter the quantification (pixel size, channel roles, z step),
the package version, a digest of the source of the image-analysis modules (so an edit to the
algorithms during development is never served stale results), the versions of numpy, scipy
and scikit-image, and the entry format.  Entries are written to a temporary file that is then
renamed into place, so only complete entries are ever visible; a killed run leaves at most
``.tmp-*`` files, which :func:`remove_stray_temporaries` deletes at the start of the next run.

Examples
--------
>>> key = entry_key("ab" * 32, {"puncta": {}}, {"pixel_size_um": 0.1})
>>> len(key)
64
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis import __version__
from analysis.errors import InputError, Problem
from analysis.io.files import atomic_path

__all__ = ["CACHE_FORMAT", "code_digest", "entry_key", "entry_path", "write_entry", "read_row", "read_cells",
           "read_puncta", "read_table", "table_names", "puncta_attrs", "remove_stray_temporaries"]

log = logging.getLogger(__name__)

#: Version of the entry layout; bump it when the layout or its meaning changes.
CACHE_FORMAT = 4  # 2: the per-punctum detections are stored too; 3: other readouts' named tables;
#                   4: the row records the pixel size and z step the image was measured with

_ROW_KEY = b"analysis.row"
_PUNCTA_KEY = b"analysis.puncta"
_ATTRS_KEY = b"analysis.attrs"

_TABLE_KEY_PREFIX = b"analysis.table:"


def _plain(value: Any) -> Any:
    """JSON-safe form of a value (numpy scalars to Python, NA to None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or value is pd.NA:
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def code_digest() -> str:
    """SHA-256 over the source of the modules that decide a per-image result and the numeric
    libraries' versions.

    The modules are those of the readout registry (:func:`analysis.pipeline.registry.code_modules`:
    the runner, readers, quality and every registered readout's modules), so a readout added
    or edited never reuses stale results.
    """
    from analysis.pipeline.registry import code_modules

    return _digest(code_modules())


@functools.cache
def _digest(modules: tuple[str, ...]) -> str:
    import numpy
    import scipy
    import skimage

    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        h.update(name.encode())
        h.update(Path(origin).read_bytes() if origin else b"?")
    h.update(f"numpy {numpy.__version__} scipy {scipy.__version__} scikit-image {skimage.__version__}".encode())
    return h.hexdigest()


def entry_key(image_sha256: str, params: dict[str, Any], fields: dict[str, Any]) -> str:
    """Cache key of one image's result.

    Parameters
    ----------
    image_sha256 : str
        SHA-256 of the image file's bytes.
    params : dict
        The quantification parameters (:meth:`analysis.pipeline.quantify.QuantifyParams.to_dict`).
    fields : dict
        Sample-sheet fields that enter the quantification (pixel size, channel roles, z step).

    Returns
    -------
    str
        64 hex digits; it also covers the package version, :func:`code_digest` and
        :data:`CACHE_FORMAT`.
    """
    payload = {
        "format": CACHE_FORMAT,
        "version": __version__,
        "code": code_digest(),
        "image_sha256": image_sha256,
        "params": _plain(params),
        "fields": _plain(fields),
    }
    blob = json.dumps(payload, sort_keys=True, allow_nan=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_path(cache_dir: str | os.PathLike[str], key: str) -> Path:
    """File of the entry ``key`` (sharded by its first two hex digits)."""
    return Path(cache_dir) / key[:2] / f"{key}.parquet"


def write_entry(path: str | os.PathLike[str], row: dict[str, Any], cells: pd.DataFrame,
                puncta: pd.DataFrame | None = None, extra: dict[str, pd.DataFrame] | None = None) -> None:
    """Write one entry atomically (temporary file, then rename).

    Parameters
    ----------
    path : path
        Entry file (:func:`entry_path`).
    row : dict
        Image-level readouts (numbers; NaN allowed).
    cells : DataFrame
        Per-cell table (may be empty).
    puncta : DataFrame, optional
        Per-punctum table of the synapse channel (None or empty: no puncta).
    extra : dict of str -> DataFrame, optional
        Other readouts' named per-object tables (:func:`read_table`).
    """
    table = pa.Table.from_pandas(cells.reset_index(drop=True), preserve_index=False)
    row_json = json.dumps({k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()},
                          allow_nan=True)
    meta = {**(table.schema.metadata or {}), _ROW_KEY: row_json.encode()}
    if puncta is not None and len(puncta.columns):
        sink = pa.BufferOutputStream()
        attrs = json.dumps(_plain(dict(puncta.attrs)), allow_nan=True).encode()
        pq.write_table(pa.Table.from_pandas(puncta.reset_index(drop=True), preserve_index=False)
                       .replace_schema_metadata({_ATTRS_KEY: attrs}), sink)
        meta[_PUNCTA_KEY] = sink.getvalue().to_pybytes()
    for name, table_ in (extra or {}).items():
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(table_.reset_index(drop=True), preserve_index=False), sink)
        meta[_TABLE_KEY_PREFIX + name.encode()] = sink.getvalue().to_pybytes()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _corrupt(path: Path, exc: Exception) -> InputError:
    return InputError([Problem(str(path), f"unreadable cache entry ({exc}); delete it (or the whole cache "
                                          "folder) or run with --no-cache / use_cache=False")])


def read_row(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The image-level readouts stored in an entry (reads the file footer only)."""
    p = Path(path)
    try:
        meta = pq.read_schema(p).metadata or {}
        return json.loads(meta[_ROW_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        raise _corrupt(p, exc) from None


def read_cells(path: str | os.PathLike[str]) -> pa.Table:
    """The per-cell table stored in an entry, as an Arrow table without pandas metadata."""
    p = Path(path)
    try:
        table = pq.read_table(p)
    except (OSError, pa.ArrowException) as exc:
        raise _corrupt(p, exc) from None
    return table.replace_schema_metadata(None)


def read_puncta(path: str | os.PathLike[str]) -> pa.Table:
    """The per-punctum table stored in an entry (no columns when the image had no synapse channel).

    Its schema metadata holds the detector's attrs (:func:`puncta_attrs`).
    """
    p = Path(path)
    try:
        blob = (pq.read_schema(p).metadata or {}).get(_PUNCTA_KEY)
        return pa.table({}) if blob is None else pq.read_table(pa.BufferReader(blob))
    except (OSError, pa.ArrowException) as exc:
        raise _corrupt(p, exc) from None


def table_names(path: str | os.PathLike[str]) -> list[str]:
    """Names of the other readouts' tables stored in an entry (see :func:`write_entry`)."""
    p = Path(path)
    try:
        meta = pq.read_schema(p).metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise _corrupt(p, exc) from None
    return sorted(k[len(_TABLE_KEY_PREFIX):].decode() for k in meta if k.startswith(_TABLE_KEY_PREFIX))


def read_table(path: str | os.PathLike[str], name: str) -> pa.Table:
    """One of the other readouts' tables stored in an entry (no columns when absent)."""
    p = Path(path)
    try:
        blob = (pq.read_schema(p).metadata or {}).get(_TABLE_KEY_PREFIX + name.encode())
        return pa.table({}) if blob is None else pq.read_table(pa.BufferReader(blob))
    except (OSError, pa.ArrowException) as exc:
        raise _corrupt(p, exc) from None


def puncta_attrs(table: pa.Table) -> dict[str, Any]:
    """The detector's attrs stored with a :func:`read_puncta` table."""
    blob = (table.schema.metadata or {}).get(_ATTRS_KEY)
    return json.loads(blob) if blob else {}


def remove_stray_temporaries(folder: str | os.PathLike[str], names: tuple[str, ...] | None = None) -> int:
    """Delete ``.tmp-*`` files left by a killed run; returns how many.

    Parameters
    ----------
    folder : path
        Folder to clean.
    names : tuple of str, optional
        Only the temporaries of these final file names, directly in ``folder`` (other
        writers' temporaries are left alone); by default every ``.tmp-*`` file below it.
    """
    root = Path(folder)
    if not root.exists():
        return 0
    if names is None:
        stray = list(root.rglob(".tmp-*"))
    else:
        stray = [p for name in names for p in root.glob(f".tmp-*-{name}")]
    n = 0
    for tmp in stray:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            n += 1
    if n:
        log.info("removed %d partial file(s) of an interrupted run in %s", n, root)
    return n
