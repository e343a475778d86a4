"""Write a simulated study (images, sample sheet and ground truth) modelled on Shi et al. 2022.

The layout written into ``out_dir``::

    samples.csv          the sample sheet (contract in DESIGN.md), paths relative to it
    ground_truth.csv     one row per image: true counts, densities, SNR, truth file names
    study_truth.json     the effect model, its calibration anchors, the preset and the seed
    images/<id>.ome.tif  OME-TIFF, uint16, axes YX (synapse) or CYX (terminal), pixel size in
                         the OME metadata
    truth/<id>_puncta.csv    true PSD95 puncta (y, x in pixels, amplitude, engulfed, cell)
    truth/<id>_cells.csv     true microglia of terminal images (skeleton length, branch points, ...)
    truth/<id>_labels.tif    true microglia label image of terminal images

Every image has its own seed derived from the study seed and its ``image_id``, so the files
are identical for the same preset and seed whatever the number of workers.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from analysis import __version__
from analysis.sim import phantoms
from analysis.sim.design import (
    PRESETS,
    SPINE_CHANNELS,
    SYNAPSE_CHANNELS,
    TERMINAL_CHANNELS,
    Preset,
    build_design,
    group_label,
)
from analysis.progress import progress as track
from analysis.io.files import atomic_path, write_csv
from analysis.io import ANALYSIS_PLAN, REQUIRED_COLUMNS
from analysis.sim.truth import WILD_TYPE, calibrated_model

__all__ = ["simulate_study", "series_sessions", "SAMPLE_COLUMNS"]

log = logging.getLogger(__name__)

#: Columns written to ``samples.csv``, in order.
SAMPLE_COLUMNS = [*REQUIRED_COLUMNS, "sex", "region", "cohort", "session", "field"]

_UUID_NAMESPACE = uuid.UUID("6f1c2a51-3b7e-4d55-9a37-0e1f2d3c4b5a")


def _image_seed(seed: int, image_id: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, 2, zlib.crc32(image_id.encode())])


def _write_ome_tiff(path: Path, data: np.ndarray, pixel_size_um: float, channels: tuple[str, ...], uid: str) -> None:
    axes = "CYX" if data.ndim == 3 else "YX"
    metadata: dict[str, Any] = {
        "axes": axes,
        "PhysicalSizeX": pixel_size_um,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": pixel_size_um,
        "PhysicalSizeYUnit": "µm",
        "UUID": uid,
    }
    if data.ndim == 3:
        metadata["Channel"] = {"Name": list(channels)}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, ome=True, photometric="minisblack", metadata=metadata)


def _render_one(task: dict[str, Any]) -> dict[str, Any]:
    """Render, write and describe one image (runs in a worker process)."""
    out = Path(task["out_dir"])
    image_id = task["image_id"]
    rng = np.random.default_rng(_image_seed(task["seed"], image_id))
    snr = phantoms.SNR_LEVELS[task["snr_level"]]
    uid = str(uuid.uuid5(_UUID_NAMESPACE, f"{task['seed']}/{image_id}"))
    truth: dict[str, Any] = {"image_id": image_id}
    if task["readout"] == "terminal":
        fld = phantoms.render_terminal_field(
            rng,
            shape=tuple(task["terminal_shape"]),
            pixel_size_um=task["pixel_size_um"],
            density_per_100um2=task["true_density_per_100um2"],
            microglia_per_mm2=task["true_microglia_per_mm2"],
            process_length_scale=task["process_length_scale"],
            branching_scale=task["branching_scale"],
            soma_scale=task["soma_scale"],
            engulfed_per_cell=task["engulfed_per_cell"],
            cd68_area_fraction=task["cd68_area_fraction"],
            snr=snr,
        )
        _write_ome_tiff(out / task["path"], fld.image, task["pixel_size_um"], TERMINAL_CHANNELS, uid)
        cells_file = f"truth/{image_id}_cells.csv"
        labels_file = f"truth/{image_id}_labels.tif"
        write_csv(fld.cells, out / cells_file)
        with atomic_path(out / labels_file) as tmp:
            tifffile.imwrite(tmp, fld.labels, compression="zlib", photometric="minisblack")
        cells = fld.cells
        interior = cells[~cells["touches_border"].astype(bool)]
        truth.update(
            {
                "true_microglia_count": int(len(cells)),
                "true_microglia_interior_count": int(len(interior)),
                "true_engulfed_count": int(cells["engulfed_count"].sum()) if len(cells) else 0,
                "true_mean_skeleton_length_um": float(interior["skeleton_length_um"].mean())
                if len(interior)
                else np.nan,
                "true_mean_branch_points": float(interior["branch_points"].mean()) if len(interior) else np.nan,
                "cells_file": cells_file,
                "labels_file": labels_file,
            }
        )
    else:
        fld = phantoms.render_synapse_field(
            rng,
            shape=tuple(task["synapse_shape"]),
            pixel_size_um=task["pixel_size_um"],
            density_per_100um2=task["true_density_per_100um2"],
            snr=snr,
        )
        _write_ome_tiff(out / task["path"], fld.image, task["pixel_size_um"], SYNAPSE_CHANNELS, uid)
    puncta_file = f"truth/{image_id}_puncta.csv"
    write_csv(fld.puncta, out / puncta_file)
    in_focus = fld.puncta[~fld.puncta["engulfed"].astype(bool)]
    truth.update(
        {
            "true_puncta_count": int(len(fld.puncta)),
            "true_analysed_area_um2": float(fld.analysed_area_um2),
            "true_puncta_density_per_100um2": 100.0 * len(in_focus) / fld.analysed_area_um2,
            "snr": float(fld.snr),
            "puncta_file": puncta_file,
        }
    )
    return truth


def series_sessions(rows: list[dict[str, Any]], *, seed: int, spine_preset: str) -> list[Any]:
    """The two-photon sessions of one imaged position of a study (the same dendrites every day).

    ``rows`` are the design rows of the position (:func:`analysis.sim.design.build_design`, one
    per session, sharing ``series``); ``seed`` is the study's.  Returns one
    :class:`analysis.sim.spines.SpineSession` per row, as :func:`simulate_study` writes them.
    """
    from analysis.sim import spines

    series_seed = zlib.crc32(f"{seed}/{rows[0]['series']}".encode())
    return spines.simulate_spine_sessions(
        series_seed, preset=spine_preset, snr=rows[0]["snr_level"],
        days=[float(r["day"]) for r in rows], target_density_ratio=[r["true_spine_density_ratio"] for r in rows],
        spine_density_per_um=spines.PRESETS[spine_preset]["spine_density_per_um"] * rows[0]["spine_animal_effect"],
        photon_scale=[float(r.get("photon_scale", 1.0)) for r in rows], dtype="uint16")


def _render_series(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Render the two-photon sessions of one imaged position (the same dendrites every day)."""
    out = Path(task["out_dir"])
    rows = task["rows"]
    sessions = series_sessions(rows, seed=task["seed"], spine_preset=task["spine_preset"])
    truths = []
    for r, sess in zip(rows, sessions, strict=True):
        image_id = r["image_id"]
        uid = str(uuid.uuid5(_UUID_NAMESPACE, f"{task['seed']}/{image_id}"))
        _write_ome_tiff(out / r["path"], np.asarray(sess.image), float(sess.info["pixel_size_um"]),
                        SPINE_CHANNELS, uid)
        spines_file = f"truth/{image_id}_spines.csv"
        write_csv(sess.spines, out / spines_file)
        length = float(sess.info["length_in_field_um"])
        n = int(sess.info["spines_in_field"])
        truths.append({"image_id": image_id, "pixel_size_um": float(sess.info["pixel_size_um"]),
                       "true_spine_count": n, "true_dendrite_length_um": length,
                       "true_spine_density_per_um": n / length if length > 0 else np.nan,
                       "snr": float(sess.info.get("snr", np.nan)), "spines_file": spines_file})
    return truths


def simulate_study(
    out_dir: str | os.PathLike[str],
    preset: str = "default",
    seed: int = 0,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Simulate a whole study and write it to ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Folder to create the study in.  It must be empty or absent (``data/raw`` is
        immutable) unless ``overwrite`` is true.
    preset : {"small", "default", "null", "large"}
        Study size: ``small`` for tests, ``default`` the full design of the report,
        ``null`` the same design without any drug effect, ``large`` (>= 1,000 images) for
        benchmarks.
    seed : int
        Study seed; the same preset and seed give byte-identical files.
    workers : int, optional
        Worker processes (default: all cores).
    overwrite : bool
        Allow writing into a non-empty folder (files of the same name are replaced).
    progress : bool
        Report progress (a tqdm bar in terminals and Jupyter, log lines otherwise).

    Returns
    -------
    DataFrame
        The sample sheet that was written (``samples.csv``).

    Examples
    --------
    >>> from analysis.sim.simulate import simulate_study
    >>> samples = simulate_study("/tmp/study", preset="small", seed=1)  # doctest: +SKIP
    >>> samples.columns[:3].tolist()  # doctest: +SKIP
    ['image_id', 'path', 'animal_id']
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p: Preset = PRESETS[preset]
    out = Path(out_dir)
    existing = next((a for a in (out, *out.parents) if a.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file, not a folder; choose another output folder for the study")
    if out.exists() and any(x.name != "README.md" for x in out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} is not empty; raw data are never overwritten. Choose an empty folder, "
            "delete this one, or pass overwrite=True (--overwrite)."
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)

    model = calibrated_model()
    sim_model = model.without_drug_effect() if p.null else model
    design = build_design(p, sim_model, seed)
    common = {
        "out_dir": str(out),
        "seed": int(seed),
        "synapse_shape": p.synapse_shape,
        "terminal_shape": p.terminal_shape,
    }
    is_spine = design["readout"] == "spine" if "readout" in design else pd.Series(False, index=design.index)
    tasks = [{**common, **rec} for rec in design[~is_spine].to_dict("records")]
    series = [{**common, "spine_preset": p.spine_preset, "rows": sub.to_dict("records")}
              for _, sub in design[is_spine].groupby("series", sort=False)] if is_spine.any() else []
    workers = workers or os.cpu_count() or 1
    log.info("simulating %d images of preset %r (seed %d) with %d workers", len(design), preset, seed, workers)
    bar = dict(total=len(tasks) + len(series), desc=f"simulate {preset}", enabled=progress)
    if workers == 1:
        truths = list(track(map(_render_one, tasks), **bar))
        series_truths = [t for ts in map(_render_series, series) for t in ts]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            truths = list(track(pool.map(_render_one, tasks, chunksize=4), **bar))
            series_truths = [t for ts in pool.map(_render_series, series) for t in ts]
    if series_truths:
        # the spine images' pixel size is the two-photon simulator's
        px = {t["image_id"]: t.pop("pixel_size_um") for t in series_truths}
        design.loc[is_spine, "pixel_size_um"] = design.loc[is_spine, "image_id"].map(px)
        truths += series_truths

    columns = [*SAMPLE_COLUMNS, *(["dendrite_channel"] if is_spine.any() else [])]
    samples = design[columns]
    truth_cols = [c for c in design.columns if c not in columns or c == "image_id"]
    ground = design[truth_cols].merge(pd.DataFrame(truths), on="image_id", how="left", validate="1:1")
    write_csv(ground, out / "ground_truth.csv")
    study = {
        "preset": preset,
        "seed": int(seed),
        "package_version": __version__,
        "null": p.null,
        "model": sim_model.to_dict(),
        "calibration": {
            "loss_at_reference": 0.13,
            "reference": "diazepam 5 mg/kg/day for 7 days",
            "recovered_after_days": 56,
            "recovered_threshold": 0.01,
        },
        "snr_levels": phantoms.SNR_LEVELS,
        "n_images": len(samples),
        "n_animals": int(samples["animal_id"].nunique()),
    }
    with atomic_path(out / "study_truth.json") as tmp:
        tmp.write_text(json.dumps(study, indent=2, sort_keys=True) + "\n")
    # the pre-specified primary contrast: the published sedative arm (13 % loss), when the design has it
    headline = [group_label(g.genotype, g.compound, g.dose_mg_kg, g.treatment_days) for g in p.groups
                if (g.genotype, g.compound, g.dose_mg_kg, g.treatment_days) == (WILD_TYPE, "diazepam", 5.0, 7)]
    if headline:
        with atomic_path(out / ANALYSIS_PLAN) as tmp:
            tmp.write_text(json.dumps({"primary_contrast": headline[0], "adjust_for_quality": True}, indent=2) + "\n")
    # the sheet last: its presence marks a complete study
    write_csv(samples, out / "samples.csv")
    log.info("wrote %d images of %d animals to %s", len(samples), study["n_animals"], out)
    return samples
