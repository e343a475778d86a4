"""Per-image quantification and the study-level measurement tables.

:func:`quantify_image` turns one image (axes CZYX) and its channel roles into one row of
readouts plus a per-cell table; :func:`quantify_study` runs it over every image of a sample
sheet in parallel (dask.distributed: a local cluster by default, or an existing cluster)
and writes ``measurements.parquet`` (one row per image, every sheet column carried through),
``cells.parquet`` (one row per microglia cell) and ``puncta.parquet`` (one row per detected
punctum, marked when counted, for QC overlays) into ``out_dir``.  Each image's result is
streamed to a per-image cache entry (:mod:`analysis.pipeline.cache`) as soon as it is computed, so a
rerun skips unchanged images and a killed run resumes.  Units are part of every readout's
column name.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.pipeline import cache, registry
from analysis.pipeline import readouts as _builtin_readouts  # noqa: F401  (registers puncta, microglia, engulfment)
from analysis.pipeline.readouts import PUNCTA_COLUMNS
from analysis.errors import ImageReadError, InputError, Problem, SampleSheetError
from analysis.progress import progress as track
from analysis.io.files import atomic_path, check_manifest, write_csv, write_parquet
from analysis.io import image_info, load_samples, read_image, sheet_lines, without_file_bytes
from analysis.measure.quality import integer_saturation_level

__all__ = ["QuantifyParams", "quantify_image", "measure_image", "quantify_study", "image_problem", "read_puncta",
           "read_table", "default_workers"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class QuantifyParams:
    """Parameters of the quantification (physical units; defaults suit confocal data).

    Attributes
    ----------
    puncta : dict
        Keyword arguments of :func:`analysis.measure.puncta.detect_puncta`.
    microglia : dict
        Keyword arguments of :func:`analysis.measure.microglia.segment_microglia`.
    lysosomes : dict
        Keyword arguments of :func:`analysis.measure.engulfment.segment_lysosomes`.
    quality : dict
        Overrides of :data:`QUALITY_DEFAULTS`: ``spike_in`` (False: no spike-in, recall and
        precision NaN), ``seed`` (combined with a checksum of the pixels, so every image gets
        its own reproducible spike layout) and the arguments of
        :func:`analysis.measure.quality.spike_in_recall` (``min_spikes``, ``rounds``, ``window_px``, ...).
    readouts : dict
        Parameters of any other registered readout, by its name
        (:mod:`analysis.pipeline.registry`).
    """

    puncta: dict[str, Any] = field(default_factory=dict)
    microglia: dict[str, Any] = field(default_factory=dict)
    lysosomes: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    readouts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain form (for provenance and cache keys)."""
        return asdict(self)

    def by_readout(self) -> dict[str, dict[str, Any]]:
        """Parameters keyed by readout name (the built-in readouts' fields and :attr:`readouts`)."""
        return {**self.readouts, "puncta": self.puncta, "microglia": self.microglia, "engulfment": self.lysosomes}


#: Spike-in settings of the per-image quality columns: one extra detection per image (one
#: round), in a 192 x 192 window, of at least 30 spikes; see
#: :func:`analysis.measure.quality.spike_in_recall`.  Measured (CPU time of ``quantify_image``, median
#: over fields, synapse channel only, on a shared 2-core machine): +0.04-0.05 s per 256 x 256
#: field (1.5-1.8x), +0.08-0.09 s per 640 x 640 field (1.25-1.3x); the small study (30 images,
#: 1 worker) 1.15-1.3x.  The whole 256 x 256 field instead of the window costs 2.1-2.3x and
#: reads the recall of phantom fields 0.01-0.03 lower (closer to the truth).
#: ``{"spike_in": False}`` in :attr:`QuantifyParams.quality` skips it (recall, precision NaN).
QUALITY_DEFAULTS: dict[str, Any] = {"spike_in": True, "seed": 0, "min_spikes": 30, "rounds": 1, "window_px": 192}


def _channel(data: np.ndarray, index: Any) -> np.ndarray | None:
    """One channel as YX (single plane) or ZYX, or None when the role is absent."""
    if index is None or pd.isna(index):
        return None
    plane = data[int(index)]
    return plane[0] if plane.shape[0] == 1 else plane


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
        units of its noise SD, a QC figure), ``psf_quadrupole`` and ``puncta_elongated`` (the
        PSF's astigmatic part and whether the puncta read as drawn out along a line:
        ``detect_puncta``'s ``attrs``), the image's quality (synapse channel:
        ``measured_snr``, ``spike_in_recall``, ``spike_in_recall_ci_low``,
        ``spike_in_recall_ci_high``, ``est_precision``, ``noise_correlation``, ``tie_ratio``, ``block_ratio``,
        ``jpeg_lattice``; every image:
        ``saturated_fraction``, the largest over the channels read, and ``in_validated_range``,
        true when every readout of the row lies in :data:`analysis.measure.quality.VALIDATED_RANGE`; see
        :func:`analysis.measure.quality.image_quality`), ``microglia_count``, ``microglia_field_area_mm2``,
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

    See Also
    --------
    measure_image : the same for any channel roles of the readout registry.
    """
    roles = {"synapse_channel": synapse_channel, "microglia_channel": microglia_channel,
             "lysosome_channel": lysosome_channel}
    row, tables = measure_image(data, pixel_size_um, roles, z_step_um=z_step_um, params=params)
    cells = tables.get("cells", pd.DataFrame())
    if not return_puncta:
        return row, cells
    return row, cells, tables.get("puncta", pd.DataFrame())


def measure_image(data: np.ndarray, pixel_size_um: float, roles: dict[str, Any], *, z_step_um: float | None = None,
                  params: QuantifyParams | None = None) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Run every registered readout whose channel roles ``roles`` assigns on one image.

    Parameters
    ----------
    data : ndarray
        Image with axes CZYX.
    pixel_size_um : float
        Lateral pixel size.
    roles : dict
        Channel role (a sample-sheet column such as ``"synapse_channel"``) -> channel index
        (None / NaN when absent).
    z_step_um : float, optional
        Axial step of z-stacks.
    params : QuantifyParams, optional
        Method parameters.

    Returns
    -------
    row : dict
        Image-level readouts of every readout that ran, then the image's quality columns.
    tables : dict of str -> DataFrame
        Named per-object tables (``puncta``, ``cells``, and those of other readouts).
    """
    params = params or QuantifyParams()
    qp = {**QUALITY_DEFAULTS, **params.quality}
    channels = {role: ch for role, index in roles.items() if (ch := _channel(data, index)) is not None}
    readouts = registry.readouts_for({role: 0 for role in channels})
    return registry.run_readouts(channels, pixel_size_um, z_step_um=z_step_um, params=params.by_readout(),
                                 seed=qp["seed"], quality=qp, readouts=readouts)


#: Smallest plane (pixels, each of Y and X) that is measured: below it the background, noise
#: and analysed-area estimates have too few pixels (a 2 x 2 image read 625 puncta / 100 um^2).
MIN_PLANE_PX = 32

#: What each channel role holds (for messages).
_ROLE_NAMES = {"synapse_channel": "synapse", "microglia_channel": "microglia", "lysosome_channel": "lysosome"}


def _bad_pixel_counts(plane: np.ndarray) -> tuple[int, int]:
    """Number of NaN and of infinite pixels of a float channel (one z plane at a time)."""
    if not np.issubdtype(plane.dtype, np.floating) and not np.issubdtype(plane.dtype, np.complexfloating):
        return 0, 0
    n_nan = n_inf = 0
    for sub in plane.reshape(-1, *plane.shape[-2:]):
        n_nan += int(np.count_nonzero(np.isnan(sub)))
        n_inf += int(np.count_nonzero(np.isinf(sub)))
    return n_nan, n_inf


def image_problem(data: np.ndarray, roles: dict[str, Any], *, min_size_px: int = MIN_PLANE_PX) -> str | None:
    """Why an image cannot be quantified, or None when it can.

    Checked in this order, for the channels the sheet assigns a role only (an unused channel
    may hold anything): the channel index exists; a synapse stack has more than 2 planes; the
    plane is at least ``min_size_px`` pixels in Y and X; no NaN or infinite pixel; the channel
    is not blank (all zero or one constant value) nor binary (two values: a mask or a 1-bit
    export); a float channel has some positive intensity;
    not saturated (more than 1 % of the pixels at the top of an integer type, or at a smaller
    full scale ``2**k - 1`` that is the image's maximum: 4095 for a 12-bit camera).  Each reason
    names the channel role and says how to fix it.

    Parameters
    ----------
    data : ndarray
        Image, axes CZYX.
    roles : dict
        Channel role (e.g. ``"synapse_channel"``) -> index (None / NA when absent).
    min_size_px : int
        Smallest measurable plane (pixels per side).

    Returns
    -------
    str or None

    Examples
    --------
    >>> import numpy as np
    >>> image_problem(np.zeros((1, 1, 64, 64), np.uint16), {"synapse_channel": 0})
    'synapse_channel (channel 0) is blank: every pixel is 0; check the acquisition and the export (is it the right channel?)'
    >>> "2 x 2 pixels, too small" in image_problem(np.ones((1, 1, 2, 2), np.uint16), {"synapse_channel": 0})
    True
    """
    used = {role: int(ch) for role, ch in roles.items() if ch is not None and not pd.isna(ch)}
    for role, ch in used.items():
        if ch >= data.shape[0]:
            return (f"{role} is {ch} but the image has {data.shape[0]} channel(s) (valid: 0-{data.shape[0] - 1}); "
                    "fix the sample sheet or export the image with all channels")
    ny, nx = data.shape[-2:]
    n_planes = data.shape[1] if data.ndim == 4 else 1
    if "synapse_channel" in used and n_planes == 2:
        # (puncta are counted between axial guard bands of at least one plane at either end)
        return (f"synapse_channel (channel {used['synapse_channel']}) is a z-stack of 2 planes: puncta are counted "
                "between guard bands of at least one plane at either end, which leave no volume; image at least "
                "3 planes, or give a maximum projection (one plane) for an area density")
    if used and (ny < min_size_px or nx < min_size_px):
        names = ", ".join(f"{role} (channel {ch})" for role, ch in used.items())
        return (f"{names}: the image is {ny} x {nx} pixels, too small to measure (at least {min_size_px} x "
                f"{min_size_px} are needed for the background and noise estimates); image or export a larger field")
    for role, ch in used.items():
        plane = data[ch]
        n_nan, n_inf = _bad_pixel_counts(plane)
        if n_nan or n_inf:
            what = " and ".join(s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "") if s)
            return (f"{role} (channel {ch}, {_ROLE_NAMES.get(role, role)}) has {what} pixel(s) of {plane.size}: "
                    "not a measurable intensity; export the raw image again (the conversion wrote invalid values), "
                    "or replace them in Fiji (Process > Math > Remove NaNs) and record that in the sheet")
        lo, hi = plane.min(), plane.max()
        if np.issubdtype(plane.dtype, np.floating) and hi <= 0 and lo < hi:
            return (f"{role} (channel {ch}) has no positive intensity (values {lo:g} to {hi:g}): not photon counts "
                    "(inverted, or background-subtracted with a negative offset?); export the raw intensities")
        if lo == hi:
            value = f"{lo:g}" if np.issubdtype(plane.dtype, np.floating) else f"{lo}"
            return (f"{role} (channel {ch}) is blank: every pixel is {value}; check the acquisition and the export "
                    "(is it the right channel?)")
        if plane.dtype == bool or np.count_nonzero((plane == lo) | (plane == hi)) == plane.size:
            # (a thresholded or 1-bit export: no intensity, no noise to measure against)
            return (f"{role} (channel {ch}) holds only two values ({float(lo):g} and {float(hi):g}): a binary mask or a "
                    "thresholded (1-bit) export, not intensities; export the raw image")
        if np.issubdtype(plane.dtype, np.integer):
            # (at the container's maximum, or at a camera's full scale below it: 4095 for 12 bits)
            top = integer_saturation_level(plane)
            saturated = float(np.count_nonzero(plane >= top)) / plane.size
            if saturated > 0.01:
                return (f"{role} (channel {ch}) is saturated: {saturated:.1%} of pixels at {top}; "
                        "re-acquire with lower gain or laser power")
    return None


#: Outputs of :func:`quantify_study` in ``out_dir`` (stray temporaries of these are removed).
_OUTPUTS = ("measurements.parquet", "cells.parquet", "puncta.parquet", "failures.csv", "raw_manifest.csv",
            "raw_manifest_sheet.csv")
#: Key of ``puncta.parquet``'s metadata: JSON of image id -> the detector's attrs of that
#: image (noise model, threshold used, ...), which :func:`read_puncta` restores.
_PUNCTA_ATTRS_KEY = b"analysis.puncta_attrs"
#: Rows of the per-cell table buffered before a row group is written to ``cells.parquet``.
_CELLS_ROW_GROUP = 50_000


#: Longest failure reason kept from an exception text.
_MAX_REASON = 1000


def _safe_reason(text: str, path: str | os.PathLike[str] | None = None) -> str:
    """A failure reason fit for ``failures.csv`` and messages: never the file's content.

    Readers quote the first bytes of a file they cannot parse (a ``.tif`` linked to a system
    file would put that file's text into our outputs): bytes literals become ``<file bytes
    omitted>`` (:func:`analysis.io.without_file_bytes`), the resolved target of ``path`` (a symlink) is replaced by the file name the
    sheet gives, control characters are dropped and the text is cut at
    :data:`_MAX_REASON` characters.
    """
    text = without_file_bytes(text)
    if path is not None:
        given = Path(path)
        with contextlib.suppress(OSError, RuntimeError):
            target = str(given.resolve())
            if target != str(given):
                text = text.replace(target, given.name)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _failure(task: dict[str, Any], reason: str) -> dict[str, str]:
    return {"image_id": task["image_id"], "path": task["path"], "reason": _safe_reason(reason, task.get("abs_path"))}


def _z_step(task: dict[str, Any], info: Any) -> float | None:
    """The z step of an image: the sheet's ``z_step_um`` when given, else the file's metadata."""
    value = task.get("z_step_um")
    if value is not None and not pd.isna(value):
        return float(value)
    return float(info.z_step_um) if info.z_step_um else None


def _quantify_row(task: dict[str, Any]) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, str] | None]:
    """Read and quantify one image.

    Returns (readouts, named per-object tables (:func:`measure_image`), None), or
    ({}, {}, failure record) for a bad image: unreadable, a problem found by
    :func:`image_problem`, no usable pixel size, a stack without z step, or any unexpected
    error while measuring it (its type and message; the traceback is logged at DEBUG).
    """
    roles = dict(task["roles"])
    try:
        data, info = read_image(task["abs_path"])
    except ImageReadError as exc:
        return {}, {}, _failure(task, "; ".join(p.message for p in exc.problems))
    except Exception as exc:  # e.g. a reader plug-in's own error: the image fails, the run goes on
        log.debug("reading %s failed", task["abs_path"], exc_info=True)
        return {}, {}, _failure(task, f"cannot read the file ({type(exc).__name__}: {exc}); check the path "
                                      "in the sample sheet and that it is an image file")
    try:
        problem, pixel_size, z_step = _measurable(data, info, task, roles)
        if problem is not None:
            return {}, {}, _failure(task, problem)
        row, tables = measure_image(data, pixel_size, roles, z_step_um=z_step, params=task["params"])
        # what the image was measured with (the sheet's value, else the file's metadata): an
        # empty cell of the sheet is filled with it in the measurements table
        row = {**row, **{col: value for col, value in _measured_with(data, pixel_size, z_step).items() if col not in row}}
    except Exception as exc:  # one image must not abort the run: record it, keep the traceback in the log
        log.debug("quantifying image %r (%s) failed", task["image_id"], task["abs_path"], exc_info=True)
        return {}, {}, _failure(task, f"measuring failed with {type(exc).__name__}: {exc}; check the image "
                                      "(run with --verbose for the traceback) and report it if the image looks right")
    return row, tables, None


#: Sheet columns that an image's row records as it was measured (:func:`_measured_with`).
MEASURED_WITH = ("pixel_size_um", "z_step_um")


def _measured_with(data: np.ndarray, pixel_size: float, z_step: float | None) -> dict[str, float]:
    """The pixel size and z step an image was measured with, as :func:`analysis.io.load_samples`
    fills them from the file's metadata when it reads the images: the z step of a single plane
    is NaN."""
    return {"pixel_size_um": float(pixel_size),
            "z_step_um": float(z_step) if data.shape[1] > 1 and z_step is not None else float("nan")}


def _fill_measured_with(samples: pd.DataFrame, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sheet with its empty :data:`MEASURED_WITH` cells filled from the images' rows (the
    values read from each file's metadata), and the rows without those columns.

    Examples
    --------
    >>> sheet = pd.DataFrame({"image_id": ["a", "b"], "pixel_size_um": [0.2, np.nan]})
    >>> rows = pd.DataFrame({"image_id": ["b", "a"], "pixel_size_um": [0.325, 0.2], "n": [1, 2]})
    >>> filled, rest = _fill_measured_with(sheet, rows)
    >>> filled["pixel_size_um"].tolist(), list(rest.columns)
    ([0.2, 0.325], ['image_id', 'n'])
    """
    samples = samples.copy()
    for col in MEASURED_WITH:
        if col not in rows.columns:
            continue
        used = samples["image_id"].map(rows.set_index("image_id")[col])
        samples[col] = samples[col].astype(float).fillna(used) if col in samples.columns else used
        rows = rows.drop(columns=col)
    return samples, rows


def _measurable(data: np.ndarray, info: Any, task: dict[str, Any],
                roles: dict[str, Any]) -> tuple[str | None, float, float | None]:
    """``(problem, pixel size, z step)``: why the image cannot be measured (:func:`image_problem`,
    pixel size, z step) or None, and the pixel size and z step to measure it with."""
    problem = image_problem(data, roles)
    if problem is not None:
        return problem, np.nan, None
    pixel_size = task["pixel_size_um"] if not pd.isna(task["pixel_size_um"]) else info.pixel_size_um
    z_step = _z_step(task, info)
    if pixel_size is None:
        problem = "no pixel size in the sheet or the file's metadata; add pixel_size_um to the sheet"
    elif not (np.isfinite(pixel_size) and pixel_size > 0):
        problem = f"pixel size {pixel_size} is not a finite number > 0; set pixel_size_um in the sheet (micrometres)"
    elif data.shape[1] > 1 and z_step is None:
        problem = (f"stack without z step ({data.shape[1]} planes, no z step in the sheet or the file's metadata): "
                   "add z_step_um to the sheet (micrometres between planes)")
    elif data.shape[1] > 1 and not (np.isfinite(z_step) and z_step > 0):
        problem = f"z step {z_step} is not a finite number > 0; set z_step_um in the sheet (micrometres between planes)"
    return problem, float(pixel_size) if pixel_size is not None else np.nan, z_step


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
        cache.write_entry(task["entry"], row, tables.get("cells", pd.DataFrame()), tables.get("puncta"),
                          extra={k: v for k, v in tables.items() if k not in ("cells", "puncta")})
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


def _image_hashes(samples: pd.DataFrame, manifest: pd.DataFrame) -> list[str]:
    """SHA-256 of each sheet image (provenance and cache key), from the run's raw manifest.

    The manifest covers every image the sheet lists, inside the sheet's folder or not
    (``../``, absolute paths, symlinks followed); an image that could not be hashed gets
    the manifest's reason ("missing", ...), so it fails when read and is never cached.
    """
    images = manifest[manifest["kind"] == "image"]
    known = dict(zip(images["path"], images["sha256"], strict=True))
    return [known.get(p, "missing") for p in samples["path"]]


#: Sheet columns that define what is measured (with the channel roles): compared with the
#: recorded manifest on every run; every other column is metadata and may be corrected.
def _image_columns() -> tuple[str, ...]:
    return ("image_id", "path", *registry.channel_roles(), "pixel_size_um", "z_step_um")


def _number_text(value: Any) -> str:
    """Canonical text of a number of the sheet ("" when empty), so 0.10 and 0.1 agree."""
    if value is None or pd.isna(value):
        return ""
    return format(float(value), ".15g")


def _sheet_fields(samples: pd.DataFrame) -> pd.DataFrame:
    """The image-defining columns of the sheet as canonical text (``z_step_um`` only when present)."""
    cols = [c for c in _image_columns() if c in samples.columns]
    out = pd.DataFrame(index=samples.index)
    for c in cols:
        out[c] = samples[c].astype(str) if c in ("image_id", "path") else samples[c].map(_number_text)
    return out.reset_index(drop=True)


#: Peak memory of one worker above its idle state, as a multiple of the largest image's
#: decoded size.  Measured (ru_maxrss of :func:`quantify_image` with default parameters on a
#: uint16 synapse field with a punctum per 2,000 pixels; working tree of 2026-11-30 07:45 UTC with
#: other helpers' uncommitted detector changes): 1024^2 +107 MiB
#: (54x, dominated by fixed costs), 2048^2 +133 MiB (16.7x), 4096^2 +457 MiB (14.3x); the
#: issue-16 report before the tiling work had 8.8 GB for one 8000^2 plane (69x).  16 covers
#: the measured large planes; redo it with ``make bench`` when the per-image memory changes.
WORKER_MEMORY_FACTOR = 16
#: The same for z-stacks (3-D puncta detection keeps several float64 maps of the whole stack):
#: measured 847 MiB above the idle worker for a 3-channel 30 x 512 x 512 uint16 stack (45 MiB
#: decoded: 18.8x; ``benchmarks/bench_memory.py``, case ``stack30``, 2026-12-01; 1,504 MiB, 33x,
#: before the candidate pairs of a stack were bounded).  That stack is a dense worst case (30
#: independent planes: 178,822 puncta); 25 leaves a third on top of it.
WORKER_STACK_MEMORY_FACTOR = 25
#: Memory of an idle worker process (interpreter, numpy, scipy, scikit-image, dask), bytes;
#: measured 180-215 MiB for the interpreter with the analysis modules, dask adds to it.
WORKER_BASE_BYTES = 400 * 2**20


def _available_memory() -> int | None:
    """Bytes of memory available now: ``SC_AVPHYS_PAGES`` x ``SC_PAGE_SIZE``, else ``MemAvailable``."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():  # MemAvailable counts reclaimable cache, SC_AVPHYS_PAGES does not
        with contextlib.suppress(OSError, ValueError):
            for line in meminfo.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    return None


def _cores() -> int:
    """Cores this process may run on (its CPU affinity, else all)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def default_workers(per_worker_bytes: float, *, available_bytes: int | None = None, cores: int | None = None) -> int:
    """Worker processes that fit in the memory available: ``min(cores, available // per_worker)``, at least 1.

    Parameters
    ----------
    per_worker_bytes : float
        Estimated peak memory of one worker (see :func:`worker_memory_estimate`).
    available_bytes : int, optional
        Memory available (default: ``MemAvailable`` of ``/proc/meminfo``, else
        ``os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")``; unknown: cores only).
    cores : int, optional
        Cores usable (default: this process's CPU affinity).

    Returns
    -------
    int

    Examples
    --------
    >>> default_workers(2e9, available_bytes=int(5e9), cores=8)
    2
    >>> default_workers(2e9, available_bytes=int(1e9), cores=8)
    1
    >>> default_workers(1e6, available_bytes=int(5e9), cores=4)
    4
    """
    cores = cores or _cores()
    available = _available_memory() if available_bytes is None else available_bytes
    if available is None or per_worker_bytes <= 0:
        return max(1, cores)
    return max(1, min(cores, int(available // per_worker_bytes)))


def worker_memory_estimate(paths: list[str]) -> tuple[float, str | None]:
    """Estimated peak memory of one worker for these images, and the image that needs the most.

    :data:`WORKER_BASE_BYTES` plus :data:`WORKER_MEMORY_FACTOR` (:data:`WORKER_STACK_MEMORY_FACTOR`
    for a z-stack) times the image's decoded size (shape x bytes per pixel from its header, so
    compressed files count as what they decode to; the file size when the header cannot be
    read), for the image that needs the most.  Reads headers only.
    """
    need = {}
    for p in dict.fromkeys(paths):
        try:
            info = image_info(p)
            factor = WORKER_STACK_MEMORY_FACTOR if info.n_z > 1 else WORKER_MEMORY_FACTOR
            need[p] = factor * int(np.prod(info.shape)) * np.dtype(info.dtype).itemsize
        except Exception:  # unreadable here: it fails when quantified; its file size stands in
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                need[p] = WORKER_MEMORY_FACTOR * os.stat(p).st_size
    if not need:
        return float(WORKER_BASE_BYTES), None
    largest = max(need, key=need.get)
    return float(WORKER_BASE_BYTES + need[largest]), largest


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


def _write_series_tables(samples: pd.DataFrame, keys: dict[str, str], out: Path, store: Path,
                         params: QuantifyParams, use_cache: bool) -> dict[str, int]:
    """Run every readout's study-level series step (:attr:`analysis.pipeline.registry.Readout.series`).

    The images of one imaged position (the readout's ``series_by`` columns), in order of
    ``day``, are read again and handed over together; the result is cached under a key of its
    images' cache keys, so a rerun recomputes only positions whose images or code changed.
    ``image_id`` and ``day`` of each session and the position's columns are added.
    """
    written: dict[str, int] = {}
    for readout in registry.READOUTS.values():
        role = readout.roles[0]
        if readout.series is None or role not in samples or not samples[role].notna().any():
            continue
        rows = samples[samples[role].notna()]
        by = [c for c in readout.series_by if c in rows.columns]
        parts = []
        for key, sub in rows.groupby(by, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            sub = sub.sort_values("day", kind="stable")
            if len(sub) < 2:
                continue
            blob = "|".join([readout.name, cache.code_digest(), *(keys[i] for i in sub["image_id"])])
            entry = store / "series" / f"{hashlib.sha256(blob.encode()).hexdigest()}.parquet"
            if use_cache and entry.exists():
                table = pd.read_parquet(entry)
            else:
                images, sizes = [], []  # one pixel size per session: the zoom may differ between sessions
                for r in sub.itertuples():
                    data, info = read_image(r.abs_path)
                    images.append(_channel(data, getattr(r, role)))
                    sizes.append(float(r.pixel_size_um) if not pd.isna(r.pixel_size_um) else info.pixel_size_um)
                table = readout.series(images, sizes, params=params.by_readout().get(readout.name, {}))
                ids, days = sub["image_id"].to_numpy(), sub["day"].to_numpy(int)
                for k in table.attrs.get("turned_beyond_search", []):
                    log.warning("%s of %s: image %s is turned against %s by the largest angle searched or "
                                "more; its links are doubtful (turn it before quantifying)", readout.name,
                                ", ".join(f"{c} {v}" for c, v in zip(by, key)),
                                ids[k], ids[k - 1])
                for k in table.attrs.get("unmatched_sessions", []):
                    log.warning("%s of %s: image %s does not show the dendrites of image %s (correlation %.2f of the "
                                "registered images): their spines are not linked and that interval gives no turnover; "
                                "check the sheet's animal_id, field and day of both", readout.name,
                                ", ".join(f"{c} {v}" for c, v in zip(by, key)), ids[k], ids[k - 1],
                                table.attrs["session_correlation"][k])
                table.insert(0, "day", days[table["session"].to_numpy(int)])
                table.insert(0, "image_id", ids[table["session"].to_numpy(int)])
                entry.parent.mkdir(parents=True, exist_ok=True)
                write_parquet(table, entry)
            for col, value in zip(by, key, strict=True):
                table.insert(0, col, value)
            parts.append(table)
        name = readout.series_table or f"{readout.name}_series"
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        write_parquet(table, out / f"{name}.parquet")
        written[name] = len(table)
        log.info("%s: %d rows over %d imaged positions", name, len(table), len(parts))
    return written


def read_table(processed_dir: str | os.PathLike[str], name: str, image_id: str | None = None) -> pd.DataFrame:
    """A per-object table written by :func:`quantify_study` (``<name>.parquet``), of one image or all.

    Parameters
    ----------
    processed_dir : path
        The folder ``quantify`` wrote.
    name : str
        Table name: ``cells``, ``puncta``, ``outlines`` or another readout's.
    image_id : str, optional
        Only this image's rows.

    Returns
    -------
    DataFrame
        Empty (no columns) when the study has no such table.
    """
    import pyarrow.parquet as pq

    p = Path(processed_dir) / f"{name}.parquet"
    if not p.exists() or "image_id" not in pq.read_schema(p).names:
        return pd.DataFrame()
    filters = [("image_id", "==", image_id)] if image_id is not None else None
    return pq.read_table(p, filters=filters).replace_schema_metadata(None).to_pandas()


def _write_readout_tables(entries: list[tuple[str, Path]], out: Path) -> dict[str, int]:
    """Write every other readout's named table of the entries to ``<name>.parquet``; rows per table."""
    names = sorted({name for _, e in entries for name in cache.table_names(e)})
    written = {}
    for name in names:
        schemas = [s for s in (cache.read_table(e, name).schema for _, e in entries) if len(s)]
        written[name] = _stream_tables(entries, out / f"{name}.parquet", schemas,
                                       lambda e, name=name: cache.read_table(e, name))
    return written


def read_puncta(path: str | os.PathLike[str], image_id: str | None = None) -> pd.DataFrame:
    """The detections stored by :func:`quantify_study` (``puncta.parquet``), of one image or all.

    Parameters
    ----------
    path : path
        ``puncta.parquet``, or the folder holding it.
    image_id : str, optional
        Only this image's rows; their ``attrs`` are the detector's attrs of that image (noise
        model, threshold used, ...), so :func:`analysis.measure.area.analysed_area_mask` given
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
    if "image_id" not in pq.read_schema(p).names:  # a study without a synapse channel
        return pd.DataFrame()
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
    images (unreadable or truncated file, channel index beyond the file's channels, a plane
    smaller than :data:`MIN_PLANE_PX`, NaN or infinite pixels, a blank or saturated channel,
    no pixel size anywhere, a stack without z step, an unexpected error while measuring) are
    recorded in ``failures.csv`` with the file and the reason (never the file's content), and
    the other images are still quantified, unless ``strict``.  When no image at all could be
    measured, ``failures.csv`` is written and an ``InputError`` naming it is raised.  The z
    step of a stack is the sheet's ``z_step_um`` when given, else the file's metadata.

    Before anything is measured, the raw inputs are checked against ``raw_manifest.csv`` in
    ``out_dir`` (recorded on the first run, :func:`analysis.io.files.check_manifest`): the
    SHA-256 of every image the sheet lists (inside its folder or not, symlinks followed) and
    the sheet's image columns (image id, path, channel roles, pixel size, z step), so a
    changed image or image column is reported instead of silently mixing results.  Other
    sheet columns (sex, region, cohort, ...) may be corrected freely, and nothing else in the
    data folder (e.g. these outputs, when ``out_dir`` is inside it) is an input.

    Images run in parallel, one dask task per image, on a local cluster of ``workers``
    processes (one thread each) or on an existing cluster (``scheduler``).  Each result is
    written to a cache entry in ``cache_dir`` as soon as it is computed, keyed by the image's
    SHA-256, ``params``, the sheet fields that enter the quantification (pixel size, channel
    roles, z step), the package version and the source of the image-analysis code
    (:func:`analysis.pipeline.cache.code_digest`): a rerun quantifies only what changed (a change of
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
        ``raw_manifest.csv``, ``raw_manifest_sheet.csv`` and (by default) the ``cache/`` folder.
    params : QuantifyParams, optional
        Method parameters.
    workers : int, optional
        Worker processes of the local cluster.  Default: as many as fit in the memory
        available now (:func:`default_workers` with :func:`worker_memory_estimate` of the
        images to quantify), at most one per core; the choice is logged.  ``1`` runs in this
        process without a cluster (debugging, tests).  Ignored when ``scheduler`` is given.
    scheduler : str or distributed.Client, optional
        An existing dask cluster: a scheduler address such as ``"tcp://10.0.0.5:8786"`` or
        a connected ``Client`` (left open).  Workers need the ``analysis`` package and must
        see the image and ``out_dir`` paths (a shared file system).
    progress : bool
        Report progress (a tqdm bar in terminals and Jupyter, log lines otherwise).
    strict : bool
        Fail (``InputError`` listing every bad image, after writing ``failures.csv``) instead
        of recording failures.
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
    >>> from analysis.pipeline.quantify import quantify_study
    >>> m = quantify_study("data/raw/samples.csv", "data/processed")  # doctest: +SKIP
    >>> m = quantify_study("data/raw/samples.csv", "data/processed",
    ...                    scheduler="tcp://10.0.0.5:8786")  # doctest: +SKIP
    """
    samples = load_samples(samples_csv, check_images=False)
    series = registry.series_problems(samples, str(samples_csv), sheet_lines(samples_csv))
    if series:
        raise SampleSheetError(series)
    if "z_step_um" in samples.columns:  # a number (NaN when empty), whatever version of the sheet loader
        samples["z_step_um"] = pd.to_numeric(samples["z_step_um"], errors="coerce").astype(float)
    out = Path(out_dir)
    raw_dir = Path(samples_csv).resolve().parent
    failures_csv = out / "failures.csv"
    current = check_manifest(samples_csv, zip(samples["path"], samples["abs_path"], strict=True),
                             _sheet_fields(samples), out / "raw_manifest.csv")
    params = params or QuantifyParams()
    store = Path(cache_dir) if cache_dir is not None else out / "cache"
    cache.remove_stray_temporaries(store)
    cache.remove_stray_temporaries(out, names=_OUTPUTS)
    hashes = _image_hashes(samples, current)
    param_dict = params.to_dict()
    has_z = "z_step_um" in samples.columns
    tasks = []
    for r, sha in zip(samples.to_dict("records"), hashes, strict=True):
        roles = {k: r.get(k) for k in registry.channel_roles()}
        fields = {"pixel_size_um": float(r["pixel_size_um"]), **roles,
                  "z_step_um": float(r["z_step_um"]) if has_z and not pd.isna(r["z_step_um"]) else None}
        key = cache.entry_key(sha, param_dict, fields)
        tasks.append({
            "abs_path": r["abs_path"],
            "path": r["path"],
            "image_id": r["image_id"],
            **fields,
            "roles": roles,
            "params": params,
            "key": key,
            "entry": str(cache.entry_path(store, key)),
        })
    todo = [t for t in tasks if not (use_cache and Path(t["entry"]).exists())]
    log.info("%d of %d images cached%s; quantifying %d", len(tasks) - len(todo), len(tasks),
             "" if use_cache else " (cache ignored)", len(todo))
    if workers is None and scheduler is None and len(todo) > 1:
        per_worker, largest = worker_memory_estimate([t["abs_path"] for t in todo])
        available = _available_memory()
        workers = default_workers(per_worker, available_bytes=available)
        log.info("%d worker(s): %d core(s), %s available, about %.2f GiB per worker (image needing the most: %s; "
                 "%d x its decoded size, %d x for a z-stack, + %.2f GiB)",
                 workers, _cores(), "unknown memory" if available is None else f"{available / 2**30:.1f} GiB",
                 per_worker / 2**30, Path(largest).name if largest else "-", WORKER_MEMORY_FACTOR,
                 WORKER_STACK_MEMORY_FACTOR, WORKER_BASE_BYTES / 2**30)
    workers = workers or 1
    results = _run_tasks(todo, workers, scheduler) if todo else iter(())
    failed = [f for f in track(results, total=len(todo), desc="quantify", enabled=progress) if f]
    failures = pd.DataFrame(failed, columns=["image_id", "path", "reason"])
    order = {image_id: i for i, image_id in enumerate(samples["image_id"])}
    failures = failures.sort_values("image_id", key=lambda s: s.map(order), ignore_index=True)
    if strict and len(failures):
        write_csv(failures, failures_csv)
        raise InputError([Problem(str(raw_dir / f.path), f.reason) for f in failures.itertuples()])
    bad = set(failures["image_id"])
    entries = [(t["image_id"], Path(t["entry"])) for t in tasks if t["image_id"] not in bad]
    rows = pd.DataFrame([{**cache.read_row(e), "image_id": image_id} for image_id, e in entries])
    if rows.empty:
        rows = pd.DataFrame({"image_id": pd.Series([], dtype=object)})
    ok, rows = _fill_measured_with(samples[~samples["image_id"].isin(bad)], rows)
    measurements = ok.drop(columns=["abs_path"]).merge(rows, on="image_id", how="left", validate="1:1")
    n_cells = _write_cells(entries, out / "cells.parquet")
    n_puncta = _write_puncta(entries, out / "puncta.parquet")
    other_tables = _write_readout_tables(entries, out)
    other_tables.update(_write_series_tables(samples[~samples["image_id"].isin(bad)],
                                             {t["image_id"]: t["key"] for t in tasks}, out, store, params, use_cache))
    write_parquet(measurements, out / "measurements.parquet")
    write_csv(failures, failures_csv)
    if measurements.empty:
        what = (f"none of the {len(tasks)} image(s) could be measured; the reason of each is in {failures_csv}"
                if len(tasks) else "the sample sheet lists no images")
        raise InputError([Problem(str(failures_csv) if len(tasks) else str(samples_csv),
                                  f"{what}: fix those images or the sheet and run again")])
    if len(failures):
        log.warning("%d image(s) could not be quantified; see %s", len(failures), failures_csv)
    if "background_clipped" in measurements:
        clipped = measurements.loc[measurements["background_clipped"].eq(True), "image_id"].astype(str).tolist()
        if clipped:
            log.warning("%d spine image(s) have a background clipped at the image's lowest value (%s%s): their "
                        "measured_snr and spike_in_recall are not validated there, so in_validated_range is false "
                        "(column background_clipped in %s; keep the offset below the background to measure them)",
                        len(clipped), ", ".join(clipped[:5]), ", ..." if len(clipped) > 5 else "",
                        out / "measurements.parquet")
    log.info("quantified %d images (%d cells, %d puncta%s) into %s", len(measurements), n_cells, n_puncta,
             "".join(f", {n} {name}" for name, n in other_tables.items()), out)
    return measurements
