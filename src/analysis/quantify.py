"""Per-image quantification and the study-level measurement tables.

:func:`quantify_image` turns one image (axes CZYX) and its channel roles into one row of
readouts plus a per-cell table; :func:`quantify_study` runs it over every image of a sample
sheet in parallel and writes ``measurements.parquet`` (one row per image, every sheet column
carried through) and ``cells.parquet`` (one row per microglia cell) into ``out_dir``.
Units are part of every readout's column name.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import engulfment, microglia, synapses
from analysis.errors import ImageReadError, InputError, Problem
from analysis.progress import progress as track
from analysis.files import check_manifest, write_csv, write_parquet
from analysis.io import load_samples, read_image

__all__ = ["QuantifyParams", "quantify_image", "quantify_study", "image_problem"]

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
    """

    puncta: dict[str, Any] = field(default_factory=dict)
    microglia: dict[str, Any] = field(default_factory=dict)
    lysosomes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain form (for provenance and cache keys)."""
        return asdict(self)


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
) -> tuple[dict[str, Any], pd.DataFrame]:
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

    Returns
    -------
    row : dict
        Image-level readouts: ``n_puncta``, ``analysed_area_um2``,
        ``puncta_density_per_100um2`` (or ``puncta_density_per_um3`` for z-stacks),
        ``puncta_median_snr`` (median LoG response of the puncta in noise SDs, a QC figure),
        ``microglia_count``, ``microglia_field_area_mm2``, ``microglia_density_per_mm2``, mean morphology of interior
        cells (``mean_<readout>``), ``engulfed_puncta_total``, ``engulfed_per_cell``,
        ``cd68_area_fraction``.
    cells : DataFrame
        One row per microglia cell (empty without a microglia channel).
    """
    params = params or QuantifyParams()
    row: dict[str, Any] = {}
    puncta = None
    syn = _channel(data, synapse_channel)
    if syn is not None:
        mask = synapses.analysed_area_mask(syn, pixel_size_um)
        puncta = synapses.detect_puncta(syn, pixel_size_um, z_step_um=z_step_um, **params.puncta)
        density = synapses.synapse_density(puncta, mask, pixel_size_um, z_step_um=z_step_um)
        row.update(density)
        # image-quality figure for QC: the median detection SNR of the puncta found
        row["puncta_median_snr"] = float(puncta["snr"].median()) if len(puncta) else np.nan
    cells = pd.DataFrame()
    mg = _channel(data, microglia_channel)
    if mg is not None:
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
    return row, cells


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


def _quantify_row(task: dict[str, Any]) -> tuple[dict[str, Any], pd.DataFrame, dict[str, str] | None]:
    roles = {k: task[k] for k in ("synapse_channel", "microglia_channel", "lysosome_channel")}
    try:
        data, info = read_image(task["abs_path"])
    except ImageReadError as exc:
        return {}, pd.DataFrame(), {"image_id": task["image_id"], "path": task["path"],
                                    "reason": "; ".join(p.message for p in exc.problems)}
    problem = image_problem(data, roles)
    pixel_size = task["pixel_size_um"] if not pd.isna(task["pixel_size_um"]) else info.pixel_size_um
    if problem is None and pixel_size is None:
        problem = "no pixel size in the sheet or the file's metadata; add pixel_size_um to the sheet"
    if problem is not None:
        return {}, pd.DataFrame(), {"image_id": task["image_id"], "path": task["path"], "reason": problem}
    row, cells = quantify_image(
        data,
        float(pixel_size),
        **roles,
        z_step_um=info.z_step_um,
        params=task["params"],
    )
    row["image_id"] = task["image_id"]
    if len(cells):
        cells.insert(0, "image_id", task["image_id"])
    return row, cells, None


def quantify_study(
    samples_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    params: QuantifyParams | None = None,
    workers: int | None = None,
    progress: bool = True,
    strict: bool = False,
) -> pd.DataFrame:
    """Quantify every image of a sample sheet and write the measurement tables.

    The sheet itself must be valid (:func:`analysis.io.load_samples`); problems of single
    images (unreadable or truncated file, channel index beyond the file's channels, blank or
    saturated channel, no pixel size anywhere) are recorded in ``failures.csv`` with the file
    and the reason, and the other images are still quantified, unless ``strict``.  Before
    anything is read, the SHA-256 of every file in the sheet's folder is checked against
    ``raw_manifest.csv`` in ``out_dir`` (written on the first run), so a changed or missing
    raw file is reported instead of silently mixing results.

    Parameters
    ----------
    samples_csv : path
        Sample sheet.
    out_dir : path
        Folder for ``measurements.parquet``, ``cells.parquet``, ``failures.csv`` and
        ``raw_manifest.csv``.
    params : QuantifyParams, optional
        Method parameters.
    workers : int, optional
        Worker processes (default: all cores).
    progress : bool
        Report progress (a tqdm bar in terminals and Jupyter, log lines otherwise).
    strict : bool
        Fail (``InputError`` listing every bad image) instead of recording failures.

    Returns
    -------
    DataFrame
        The measurements table: every sheet column plus the readouts of each quantified image.
    """
    samples = load_samples(samples_csv, check_images=False)
    out = Path(out_dir)
    check_manifest(Path(samples_csv).resolve().parent, out / "raw_manifest.csv")
    params = params or QuantifyParams()
    tasks = [
        {
            "abs_path": r["abs_path"],
            "path": r["path"],
            "image_id": r["image_id"],
            "pixel_size_um": float(r["pixel_size_um"]),
            "synapse_channel": r["synapse_channel"],
            "microglia_channel": r["microglia_channel"],
            "lysosome_channel": r["lysosome_channel"],
            "params": params,
        }
        for r in samples.to_dict("records")
    ]
    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(tasks), desc="quantify", enabled=progress)
    if workers == 1:
        results = list(track(map(_quantify_row, tasks), **bar))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(track(pool.map(_quantify_row, tasks, chunksize=2), **bar))
    failures = pd.DataFrame([f for _, _, f in results if f], columns=["image_id", "path", "reason"])
    if strict and len(failures):
        raise InputError([Problem(str(Path(samples_csv).resolve().parent / f.path), f.reason)
                          for f in failures.itertuples()])
    rows = pd.DataFrame([r for r, _, f in results if not f])
    ok = samples[~samples["image_id"].isin(failures["image_id"])]
    measurements = ok.drop(columns=["abs_path"]).merge(rows, on="image_id", how="left", validate="1:1")
    cell_tables = [c for _, c, f in results if not f and len(c)]
    cells = pd.concat(cell_tables, ignore_index=True) if cell_tables else pd.DataFrame()
    write_parquet(measurements, out / "measurements.parquet")
    write_parquet(cells, out / "cells.parquet")
    write_csv(failures, out / "failures.csv")
    if len(failures):
        log.warning("%d image(s) could not be quantified; see %s", len(failures), out / "failures.csv")
    log.info("quantified %d images (%d cells) into %s", len(measurements), len(cells), out)
    return measurements
