"""Per-image quantification and the study-level measurement tables.

:func:`quantify_image` turns one image (axes CZYX) and its channel roles into one row of
readouts plus a per-cell table; :func:`quantify_study` runs it over every image of a sample
sheet in parallel (dask.distributed: a local cluster by default, or an existing cluster)
and writes ``measurements.parquet`` (one row per image, every sheet column carried through),
``cells.parquet`` (one row per microglia cell) and ``puncta.parquet`` (one row per detected
punctum, marked when counted, for QC overlays) into ``out_dir``.  Each image's result is
streamed to a per-image cache entry (:mod:`analysis.cache`) as soon as it is computed, so a
rerun skips unchanged images and a killed run resumes.  Units are part of every readout's
column name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import cache, engulfment, microglia, quality, synapses
from analysis.errors import ImageReadError, InputError, Problem
from analysis.progress import progress as track
from analysis.files import atomic_path, check_manifest, sha256_file, write_csv, write_parquet
from analysis.io import load_samples, read_image

__all__ = ["QuantifyParams", "quantify_image", "quantify_study", "image_problem", "read_puncta"]

log = logging.getLogger(__name__)

#: Per-cell columns averaged into the image row (interior cells only).
_MORPHOLOGY = [
    "area_um2",
    "skeleton_length_um",
    "branch_points",
    "endpoints",
    "longest_branch_um",
    "solidity",
    "sholl_max_intersections",
    "sholl_critical_radius_um",
    "sholl_auc",
]


@dataclass(frozen=True)
class QuantifyParams:
    """Parameters of the quantification (physical units; defaults suit confocal data).

    Attributes
    ----------
    puncta : dict
        Keyword arguments of :func:`analysis.synapses.detect_puncta`.
    microglia : dict
        Keyword arguments of :func:`analysis.microglia.segment_microglia`.
    lysosomes : dict
        Keyword arguments of :func:`analysis.engulfment.segment_lysosomes`.
    quality : dict
        Overrides of :data:`QUALITY_DEFAULTS`: ``spike_in`` (False: no spike-in, recall and
        precision NaN), ``seed`` (combined with a checksum of the pixels, so every image gets
        its own reproducible spike layout) and the arguments of
        :func:`analysis.quality.spike_in_recall` (``min_spikes``, ``rounds``, ``window_px``, ...).
    """

    puncta: dict[str, Any] = field(default_factory=dict)
    microglia: dict[str, Any] = field(default_factory=dict)
    lysosomes: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain form (for provenance and cache keys)."""
        return asdict(self)


#: Spike-in settings of the per-image quality columns: one extra detection per image (one
#: round), in a 192 x 192 window, of at least 30 spikes; see
#: :func:`analysis.quality.spike_in_recall`.  Measured (CPU time of ``quantify_image``, median
#: over fields, synapse channel only, on a shared 2-core machine): +0.04-0.05 s per 256 x 256
#: field (1.5-1.8x), +0.08-0.09 s per 640 x 640 field (1.25-1.3x); the small study (30 images,
#: 1 worker) 1.15-1.3x.  The whole 256 x 256 field instead of the window costs 2.1-2.3x and
#: reads the recall of phantom fields 0.01-0.03 lower (closer to the truth).
#: ``{"spike_in": False}`` in :attr:`QuantifyParams.quality` skips it (recall, precision NaN).
QUALITY_DEFAULTS: dict[str, Any] = {"spike_in": True, "seed": 0, "min_spikes": 30, "rounds": 1, "window_px": 192}


def _image_seed(seed: int, plane: np.ndarray) -> list[int]:
    """Seed of one image's random draws: the configured seed and a checksum of its pixels."""
    return [int(seed), zlib.crc32(np.ascontiguousarray(plane).view(np.uint8))]


def _channel(data: np.ndarray, index: Any) -> np.ndarray | None:
    """One channel as YX (single plane) or ZYX, or None when the role is absent."""
    if index is None or pd.isna(index):
        return None
    plane = data[int(index)]
    return plane[0] if plane.shape[0] == 1 else plane


def _projection(plane: np.ndarray) -> np.ndarray:
    return plane if plane.ndim == 2 else plane.max(axis=0)


def quantify_image(
    data: np.ndarray,
    pixel_size_um: float,
    *,
    synapse_channel: int | None = 0,
    microglia_channel: int | None = None,
    lysosome_channel: int | None = None,
    z_step_um: float | None = None,
    params: QuantifyParams | None = None,
    return_puncta: bool = False,
) -> tuple[dict[str, Any], pd.DataFrame] | tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Quantify one image.

    Parameters
    ----------
    data : ndarray
        Image with axes CZYX (as returned by :func:`analysis.io.read_image`).
    pixel_size_um : float
        Lateral pixel size.
    synapse_channel, microglia_channel, lysosome_channel : int or None
        Channel roles (None when absent).
    z_step_um : float, optional
        Axial step of z-stacks (3-D puncta detection; microglia use the max projection).
    params : QuantifyParams, optional
        Method parameters.
    return_puncta : bool
        Also return the detected puncta (see below).

    Returns
    -------
    row : dict
        Image-level readouts: ``n_puncta``, ``analysed_area_um2``,
        ``puncta_density_per_100um2`` (or ``puncta_density_per_um3`` for z-stacks),
        ``puncta_median_snr`` (median detection SNR of the puncta found: fitted amplitude in
        units of its noise SD, a QC figure), the image's quality (synapse channel:
        ``measured_snr``, ``spike_in_recall``, ``spike_in_recall_ci_low``,
        ``spike_in_recall_ci_high``, ``est_precision``; every image: ``saturated_fraction``, the
        largest over the channels read, and ``in_validated_range``, true when every readout
        of the row lies in :data:`analysis.quality.VALIDATED_RANGE`; see
        :func:`analysis.quality.image_quality`), ``microglia_count``, ``microglia_field_area_mm2``,
        ``microglia_density_per_mm2``, mean morphology of interior
        cells (``mean_<readout>``), ``engulfed_puncta_total``, ``engulfed_per_cell``,
        ``cd68_area_fraction``.
    cells : DataFrame
        One row per microglia cell (empty without a microglia channel).
    puncta : DataFrame
        Only with ``return_puncta``: one row per detected punctum of the synapse channel,
        columns :data:`PUNCTA_COLUMNS` (``z`` first for z-stacks) and ``in_analysed_area``
        (true for the ``n_puncta`` counted), with the detector's scalar attrs; no columns
        without a synapse channel.
    """
    params = params or QuantifyParams()
    qp = {**QUALITY_DEFAULTS, **params.quality}
    run_spike_in, seed = bool(qp.pop("spike_in")), qp.pop("seed")
    row: dict[str, Any] = {}
    quality_rows: list[dict[str, Any]] = []
    puncta = None
    syn = _channel(data, synapse_channel)
    if syn is not None:
        puncta = synapses.detect_puncta(syn, pixel_size_um, z_step_um=z_step_um, **params.puncta)
        # the mask needs the puncta of this image: pass the counted ones (no second detection)
        mask = synapses.analysed_area_mask(syn, pixel_size_um, puncta=puncta)
        density = synapses.synapse_density(puncta, mask, pixel_size_um, z_step_um=z_step_um)
        row.update(density)
        # image-quality figure for QC: the median detection SNR of the puncta found
        row["puncta_median_snr"] = float(puncta["snr"].median()) if len(puncta) else np.nan
        detect_params = {**params.puncta, **({"z_step_um": z_step_um} if z_step_um and syn.ndim == 3 else {})}
        quality_rows.append(quality.image_quality(
            syn, pixel_size_um, puncta, mask=mask if syn.ndim == 2 else None, n_detected=density["n_puncta"],
            seed=_image_seed(seed, syn), detect_params=detect_params, spike_in=run_spike_in, **qp))
    cells = pd.DataFrame()
    mg = _channel(data, microglia_channel)
    if mg is not None:
        quality_rows.append(quality.image_quality(mg, pixel_size_um, readout="microglia"))
        mg2 = _projection(mg)
        labels = microglia.segment_microglia(mg2, pixel_size_um, **params.microglia)
        cells = microglia.measure_microglia(labels, mg2, pixel_size_um)
        field_mm2 = mg2.size * (pixel_size_um / 1000.0) ** 2
        row["microglia_count"] = int(len(cells))
        row["microglia_field_area_mm2"] = field_mm2
        row["microglia_density_per_mm2"] = len(cells) / field_mm2
        interior = cells[~cells["touches_border"]] if len(cells) else cells
        row["microglia_interior_count"] = int(len(interior))
        for col in _MORPHOLOGY:
            row[f"mean_{col}"] = float(interior[col].mean()) if len(interior) else np.nan
        lys = _channel(data, lysosome_channel)
        if lys is not None and puncta is not None:
            lys_mask = engulfment.segment_lysosomes(_projection(lys), pixel_size_um, **params.lysosomes)
            pts = puncta if "z" not in puncta else puncta.drop(columns="z")
            eng = engulfment.measure_engulfment(labels, lys_mask, pts, pixel_size_um)
            cells = cells.merge(eng, on="label", how="left")
            row.update(engulfment.engulfment_totals(eng))
        if lys is not None:
            # (the CD68 channel is validated with the microglia, in the same terminal fields)
            quality_rows.append(quality.image_quality(lys, pixel_size_um, readout="microglia"))
    if quality_rows:
        for q in quality_rows:
            row.update({k: v for k, v in q.items() if k not in ("saturated_fraction", "in_validated_range")})
        row["saturated_fraction"] = max(q["saturated_fraction"] for q in quality_rows)
        row["in_validated_range"] = all(q.get("in_validated_range", True) for q in quality_rows)
    if not return_puncta:
        return row, cells
    return row, cells, _kept_puncta(puncta, mask if puncta is not None else None)


def _kept_puncta(puncta: pd.DataFrame | None, mask: np.ndarray | None) -> pd.DataFrame:
    """The stored form of the detections: :data:`PUNCTA_COLUMNS`, ``in_analysed_area``, scalar attrs."""
    if puncta is None or mask is None:
        return pd.DataFrame()
    kept = puncta[[c for c in ("z", *PUNCTA_COLUMNS) if c in puncta]].reset_index(drop=True)
    m = mask if mask.ndim == 2 else mask.any(axis=0)
    # the rule of analysis.synapses.synapse_density: the nearest pixel lies in the analysed area
    iy = np.clip(np.rint(kept["y"].to_numpy(float)).astype(int), 0, m.shape[0] - 1)
    ix = np.clip(np.rint(kept["x"].to_numpy(float)).astype(int), 0, m.shape[1] - 1)
    kept["in_analysed_area"] = m[iy, ix].astype(bool)
    kept.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in puncta.attrs.items()
                  if v is None or isinstance(v, bool | int | float | str | np.generic)}
    return kept


def image_problem(data: np.ndarray, roles: dict[str, Any]) -> str | None:
    """Why an image cannot be quantified (wrong channels, blank or saturated), or None.

    Parameters
    ----------
    data : ndarray
        Image, axes CZYX.
    roles : dict
        Channel role -> index (None / NA when absent).
    """
    for role, ch in roles.items():
        if ch is None or pd.isna(ch):
            continue
        ch = int(ch)
        if ch >= data.shape[0]:
            return (f"{role} is {ch} but the image has {data.shape[0]} channel(s) (valid: 0-{data.shape[0] - 1}); "
                    "fix the sample sheet or export the image with all channels")
        plane = data[ch]
        lo, hi = plane.min(), plane.max()
        if lo == hi:
            return f"{role} (channel {ch}) is blank: every pixel is {lo}; check the acquisition and the export"
        if np.issubdtype(plane.dtype, np.integer):
            top = np.iinfo(plane.dtype).max
            saturated = float(np.mean(plane == top))
            if saturated > 0.01:
                return (f"{role} (channel {ch}) is saturated: {saturated:.1%} of pixels at {top}; "
                        "re-acquire with lower gain or laser power")
    return None


_ROLES = ("synapse_channel", "microglia_channel", "lysosome_channel")
#: Outputs of :func:`quantify_study` in ``out_dir`` (stray temporaries of these are removed).
_OUTPUTS = ("measurements.parquet", "cells.parquet", "puncta.parquet", "failures.csv", "raw_manifest.csv")
#: Columns of the per-punctum table kept in the cache and in ``puncta.parquet`` (with ``z``
#: first for z-stacks): position in pixels, fitted intensity, detection SNR, fitted size.
PUNCTA_COLUMNS = ("y", "x", "intensity", "snr", "sigma_um")
#: Key of ``puncta.parquet``'s metadata: JSON of image id -> the detector's attrs of that
#: image (noise model, threshold used, ...), which :func:`read_puncta` restores.
_PUNCTA_ATTRS_KEY = b"analysis.puncta_attrs"
#: Rows of the per-cell table buffered before a row group is written to ``cells.parquet``.
_CELLS_ROW_GROUP = 50_000


def _quantify_row(task: dict[str, Any]) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, str] | None]:
    """Read and quantify one image.

    Returns (readouts, {"cells": per-cell table, "puncta": per-punctum table}, None), or
    ({}, {}, failure record) for a bad image.
    """
    roles = {k: task[k] for k in _ROLES}
    try:
        data, info = read_image(task["abs_path"])
    except ImageReadError as exc:
        return {}, {}, {"image_id": task["image_id"], "path": task["path"],
                        "reason": "; ".join(p.message for p in exc.problems)}
    problem = image_problem(data, roles)
    pixel_size = task["pixel_size_um"] if not pd.isna(task["pixel_size_um"]) else info.pixel_size_um
    if problem is None and pixel_size is None:
        problem = "no pixel size in the sheet or the file's metadata; add pixel_size_um to the sheet"
    if problem is not None:
        return {}, {}, {"image_id": task["image_id"], "path": task["path"], "reason": problem}
    row, cells, puncta = quantify_image(
        data,
        float(pixel_size),
        **roles,
        z_step_um=info.z_step_um,
        params=task["params"],
        return_puncta=True,
    )
    return row, {"cells": cells, "puncta": puncta}, None


def _quantify_to_cache(task: dict[str, Any]) -> dict[str, str] | None:
    """Quantify one image and write its cache entry (runs in a worker).

    Returns the failure record of a bad image (nothing is cached for it) or None.  Only
    this small record travels back to the parent; the tables go to disk.
    """
    try:
        row, tables, failure = _quantify_row(task)
    except Exception as exc:  # an unexpected error: name the image, keep the traceback
        exc.add_note(f"while quantifying image {task['image_id']!r} ({task['abs_path']})")
        raise
    if failure is None:
        cache.write_entry(task["entry"], row, tables["cells"], tables["puncta"])
    return failure


#: dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers by default (to hand freed
#: memory back to the OS promptly).  Setting it fixes glibc's mmap threshold at 128 KiB, so
#: every image-sized temporary array is mapped and page-faulted afresh: measured here, the
#: per-image CPU time of the quantification was 1.5x that of the same code without it
#: (0.072 -> 0.110 s per 256 x 256 field, 0.93 -> 1.44 s per 3 x 640 x 640 field).  Our
#: workers keep glibc's default (adaptive) thresholds; memory stays bounded by the images in
#: flight (``make bench``).  Workers of an external cluster use their own configuration (see
#: README).
WORKER_ENVIRON_UNSET = ("MALLOC_TRIM_THRESHOLD_",)


def _local_cluster(n_workers: int) -> Any:
    """A LocalCluster of ``n_workers`` processes with one thread each, no dashboard, quiet."""
    import dask
    from distributed import LocalCluster

    unset = {f"distributed.nanny.pre-spawn-environ.{k}": None for k in WORKER_ENVIRON_UNSET}
    with dask.config.set(unset):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: never collides with another cluster
            scheduler_port=0,
            silence_logs=logging.ERROR,
        )


@contextlib.contextmanager
def _quiet_dask() -> Any:
    """Keep dask's own INFO chatter (cluster start and shutdown) out of our log, unless debugging."""
    logger = logging.getLogger("distributed")
    level = logger.level
    if not logging.getLogger("analysis").isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _connect(scheduler: str, timeout: str = "20s") -> Any:
    """A Client for a scheduler address, with an error that says what to do when it fails."""
    from distributed import Client

    try:
        return Client(scheduler, set_as_default=False, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError([Problem(f"dask scheduler {scheduler}", f"cannot connect ({exc}); start the scheduler "
                                  "(or the cluster) first, check the address, or omit --scheduler to use a local "
                                  "cluster")]) from None


def _run_tasks(todo: list[dict[str, Any]], workers: int, scheduler: Any) -> Any:
    """Yield the failure record (or None) of each task as it completes.

    In-process when ``workers == 1`` (or a single task) and no scheduler is given; otherwise
    one dask task per image on ``scheduler`` (an address or a ``distributed.Client``) or on
    a LocalCluster of ``min(workers, len(todo))`` processes started for this run.
    """
    if scheduler is None and (workers <= 1 or len(todo) <= 1):
        yield from map(_quantify_to_cache, todo)
        return
    from distributed import Client, as_completed

    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_dask())
        if isinstance(scheduler, Client):
            client = scheduler  # the caller's: not closed here
        elif scheduler is not None:
            client = stack.enter_context(_connect(scheduler))
        else:
            cluster = stack.enter_context(_local_cluster(min(workers, len(todo))))
            client = stack.enter_context(Client(cluster, set_as_default=False))
        log.info("quantifying on dask scheduler %s", client.scheduler.address)
        keys = [f"quantify-{t['image_id']}-{t['key'][:16]}" for t in todo]
        futures = client.map(_quantify_to_cache, todo, key=keys, pure=False)
        try:
            for future in as_completed(futures, loop=client.loop):
                yield future.result()
                future.release()
        finally:
            client.cancel([f for f in futures if not f.done()])


def _image_hashes(samples: pd.DataFrame, raw_dir: Path, recorded: pd.DataFrame) -> list[str]:
    """SHA-256 of each sheet image, from the raw manifest (or hashed here when outside it)."""
    known = dict(zip(recorded["path"], recorded["sha256"], strict=True))
    root = raw_dir.resolve()
    out = []
    for abs_path in samples["abs_path"]:
        p = Path(abs_path).resolve()
        rel = str(p.relative_to(root)) if p.is_relative_to(root) else None
        if rel in known:
            out.append(known[rel])
        elif p.is_file():
            out.append(sha256_file(p))
        else:
            out.append("missing")  # fails when read, so never cached
    return out


def _conform(table: Any, schema: Any) -> Any:
    """``table`` with exactly the columns and types of ``schema`` (missing columns null)."""
    import pyarrow as pa

    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _write_cells(entries: list[tuple[str, Path]], path: Path) -> int:
    """Stream the per-cell tables of the cache entries into one Parquet file; returns the rows.

    Only one row group (at most :data:`_CELLS_ROW_GROUP` rows) is held in memory at a time.
    Columns absent from some images (e.g. engulfment without a lysosome channel) are null there.
    """
    import pyarrow.parquet as pq

    schemas = [s for s in (pq.read_schema(e).remove_metadata() for _, e in entries) if len(s)]
    return _stream_tables(entries, path, schemas, cache.read_cells)


def _write_puncta(entries: list[tuple[str, Path]], path: Path) -> int:
    """Stream the per-punctum tables of the cache entries into ``puncta.parquet``; returns the rows.

    Columns ``image_id``, (``z``, when some image is a stack; null for single planes,)
    :data:`PUNCTA_COLUMNS`, ``in_analysed_area`` (counted in ``n_puncta``); row groups of at
    most :data:`_CELLS_ROW_GROUP` rows, as the cells.  The detector's attrs of each image are
    kept in the file's metadata (:func:`read_puncta`).
    """
    import json

    import pyarrow as pa

    base = [pa.field(c, pa.float64()) for c in PUNCTA_COLUMNS] + [pa.field("in_analysed_area", pa.bool_())]
    schemas = [pa.schema(base)]
    stacked = False
    attrs = {}
    for image_id, e in entries:
        table = cache.read_puncta(e)
        stacked |= "z" in table.schema.names
        if len(table.schema):
            schemas.append(table.schema.remove_metadata())
            attrs[image_id] = cache.puncta_attrs(table)
    if stacked:
        schemas.insert(0, pa.schema([pa.field("z", pa.float64())]))
    meta = {_PUNCTA_ATTRS_KEY: json.dumps(attrs, allow_nan=True).encode()}
    return _stream_tables(entries, path, schemas, cache.read_puncta, metadata=meta)


def read_puncta(path: str | os.PathLike[str], image_id: str | None = None) -> pd.DataFrame:
    """The detections stored by :func:`quantify_study` (``puncta.parquet``), of one image or all.

    Parameters
    ----------
    path : path
        ``puncta.parquet``, or the folder holding it.
    image_id : str, optional
        Only this image's rows; their ``attrs`` are the detector's attrs of that image (noise
        model, threshold used, ...), so :func:`analysis.synapses.analysed_area_mask` given
        these puncta reproduces the mask they were counted in.

    Returns
    -------
    DataFrame
        ``image_id``, (``z``,) ``y``, ``x`` (pixels), ``intensity``, ``snr``, ``sigma_um``,
        ``in_analysed_area`` (the punctum is counted in ``n_puncta``).
    """
    import json

    import pyarrow.parquet as pq

    p = Path(path)
    p = p / "puncta.parquet" if p.is_dir() else p
    filters = [("image_id", "==", image_id)] if image_id is not None else None
    table = pq.read_table(p, filters=filters)
    out = table.replace_schema_metadata(None).to_pandas()
    if image_id is not None:
        blob = (table.schema.metadata or {}).get(_PUNCTA_ATTRS_KEY)
        out.attrs.update(json.loads(blob).get(str(image_id), {}) if blob else {})
    return out


def _stream_tables(entries: list[tuple[str, Path]], path: Path, schemas: list[Any], read: Any,
                   metadata: dict[bytes, bytes] | None = None) -> int:
    """Write the tables ``read(entry)`` of the entries, with an ``image_id`` column, to one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not schemas:
        write_parquet(pd.DataFrame(), path)
        return 0
    schema = pa.unify_schemas([pa.schema([("image_id", pa.string())]), *schemas], promote_options="permissive")
    if metadata:
        schema = schema.with_metadata(metadata)
    n = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        buffer: list[Any] = []
        buffered = 0
        for image_id, entry in entries:
            table = read(entry)
            if not table.num_rows:
                continue
            table = table.add_column(0, "image_id", pa.array([image_id] * table.num_rows, pa.string()))
            buffer.append(_conform(table, schema))
            buffered += table.num_rows
            if buffered >= _CELLS_ROW_GROUP:
                writer.write_table(pa.concat_tables(buffer))
                n, buffer, buffered = n + buffered, [], 0
        if buffer:
            writer.write_table(pa.concat_tables(buffer))
            n += buffered
    return n


def quantify_study(
    samples_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    params: QuantifyParams | None = None,
    workers: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
    strict: bool = False,
    use_cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Quantify every image of a sample sheet and write the measurement tables.

    The sheet itself must be valid (:func:`analysis.io.load_samples`); problems of single
    images (unreadable or truncated file, channel index beyond the file's channels, blank or
    saturated channel, no pixel size anywhere) are recorded in ``failures.csv`` with the file
    and the reason, and the other images are still quantified, unless ``strict``.  Before
    anything is read, the SHA-256 of every file in the sheet's folder is checked against
    ``raw_manifest.csv`` in ``out_dir`` (written on the first run), so a changed or missing
    raw file is reported instead of silently mixing results.

    Images run in parallel, one dask task per image, on a local cluster of ``workers``
    processes (one thread each) or on an existing cluster (``scheduler``).  Each result is
    written to a cache entry in ``cache_dir`` as soon as it is computed, keyed by the image's
    SHA-256, ``params``, the sheet fields that enter the quantification (pixel size, channel
    roles), the package version and the source of the image-analysis code
    (:func:`analysis.cache.code_digest`): a rerun quantifies only what changed (a change of
    other sheet columns or of the statistics reuses every entry), and a killed run resumes
    where it stopped.  Bad images are never cached, so ``failures.csv`` is complete
    on every run.  The final tables are assembled from the entries in sheet order, one image
    at a time, so memory does not grow with the number of images.

    Parameters
    ----------
    samples_csv : path
        Sample sheet.
    out_dir : path
        Folder for ``measurements.parquet``, ``cells.parquet``, ``puncta.parquet``, ``failures.csv``,
        ``raw_manifest.csv`` and (by default) the ``cache/`` folder.
    params : QuantifyParams, optional
        Method parameters.
    workers : int, optional
        Worker processes of the local cluster (default: all cores).  ``1`` runs in this
        process without a cluster (debugging, tests).  Ignored when ``scheduler`` is given.
    scheduler : str or distributed.Client, optional
        An existing dask cluster: a scheduler address such as ``"tcp://10.0.0.5:8786"`` or
        a connected ``Client`` (left open).  Workers need the ``analysis`` package and must
        see the image and ``out_dir`` paths (a shared file system).
    progress : bool
        Report progress (a tqdm bar in terminals and Jupyter, log lines otherwise).
    strict : bool
        Fail (``InputError`` listing every bad image) instead of recording failures.
    use_cache : bool
        Reuse cached results; ``False`` recomputes every image (and rewrites its entry).
    cache_dir : path, optional
        Folder of the per-image cache (default: ``out_dir / "cache"``).

    Returns
    -------
    DataFrame
        The measurements table: every sheet column plus the readouts of each quantified image.

    Examples
    --------
    >>> from analysis.quantify import quantify_study
    >>> m = quantify_study("data/raw/samples.csv", "data/processed")  # doctest: +SKIP
    >>> m = quantify_study("data/raw/samples.csv", "data/processed",
    ...                    scheduler="tcp://10.0.0.5:8786")  # doctest: +SKIP
    """
    samples = load_samples(samples_csv, check_images=False)
    out = Path(out_dir)
    raw_dir = Path(samples_csv).resolve().parent
    recorded = check_manifest(raw_dir, out / "raw_manifest.csv")
    params = params or QuantifyParams()
    store = Path(cache_dir) if cache_dir is not None else out / "cache"
    cache.remove_stray_temporaries(store)
    cache.remove_stray_temporaries(out, names=_OUTPUTS)
    hashes = _image_hashes(samples, raw_dir, recorded)
    param_dict = params.to_dict()
    tasks = []
    for r, sha in zip(samples.to_dict("records"), hashes, strict=True):
        fields = {"pixel_size_um": float(r["pixel_size_um"]), **{k: r[k] for k in _ROLES}}
        key = cache.entry_key(sha, param_dict, fields)
        tasks.append({
            "abs_path": r["abs_path"],
            "path": r["path"],
            "image_id": r["image_id"],
            **fields,
            "params": params,
            "key": key,
            "entry": str(cache.entry_path(store, key)),
        })
    todo = [t for t in tasks if not (use_cache and Path(t["entry"]).exists())]
    log.info("%d of %d images cached%s; quantifying %d", len(tasks) - len(todo), len(tasks),
             "" if use_cache else " (cache ignored)", len(todo))
    workers = workers or os.cpu_count() or 1
    results = _run_tasks(todo, workers, scheduler) if todo else iter(())
    failed = [f for f in track(results, total=len(todo), desc="quantify", enabled=progress) if f]
    failures = pd.DataFrame(failed, columns=["image_id", "path", "reason"])
    order = {image_id: i for i, image_id in enumerate(samples["image_id"])}
    failures = failures.sort_values("image_id", key=lambda s: s.map(order), ignore_index=True)
    if strict and len(failures):
        raise InputError([Problem(str(raw_dir / f.path), f.reason) for f in failures.itertuples()])
    bad = set(failures["image_id"])
    entries = [(t["image_id"], Path(t["entry"])) for t in tasks if t["image_id"] not in bad]
    rows = pd.DataFrame([{**cache.read_row(e), "image_id": image_id} for image_id, e in entries])
    if rows.empty:
        rows = pd.DataFrame({"image_id": pd.Series([], dtype=object)})
    ok = samples[~samples["image_id"].isin(bad)]
    measurements = ok.drop(columns=["abs_path"]).merge(rows, on="image_id", how="left", validate="1:1")
    n_cells = _write_cells(entries, out / "cells.parquet")
    n_puncta = _write_puncta(entries, out / "puncta.parquet")
    write_parquet(measurements, out / "measurements.parquet")
    write_csv(failures, out / "failures.csv")
    if len(failures):
        log.warning("%d image(s) could not be quantified; see %s", len(failures), out / "failures.csv")
    log.info("quantified %d images (%d cells, %d puncta) into %s", len(measurements), n_cells, n_puncta, out)
    return measurements
