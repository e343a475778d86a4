"""The built-in readouts and their registry entries: PSD95 puncta, microglia, engulfment.

Each entry wraps the measurement functions of one module of :mod:`analysis.measure` into the
per-image function of :class:`analysis.pipeline.registry.Readout` (channels in, one row and
named tables out).  Importing this module registers them, in the order they run:

* ``puncta`` (``synapse_channel``): :func:`analysis.measure.puncta.detect_puncta`, the analysed
  area and the density (per 100 um^2, or per um^3 for z-stacks), the median detection SNR,
  the PSF's shape as the detector read it (``psf_quadrupole``: its astigmatic part;
  ``puncta_elongated``: puncta drawn out along a line) and the channel's quality (spike-in
  recall, estimated precision, whether its pixel noise is independent, ``noise_correlation``,
  ``tie_ratio``, ``block_ratio``, ``jpeg_lattice``); table ``puncta``;
* ``microglia`` (``microglia_channel``, maximum projection): cells, density per mm^2 and the
  mean morphology of interior cells; tables ``cells`` and ``outlines`` (the pixels of each
  cell's boundary and pruned skeleton, for the QC overlays);
* ``engulfment`` (``microglia_channel`` and ``lysosome_channel``; uses the puncta when the
  image also has a synapse channel): CD68 lysosomes and the puncta inside them per cell;
  extends the ``cells`` table and adds the lysosome boundaries to ``outlines``;
* ``spines`` (``dendrite_channel``, two-photon images of GFP-filled dendrites): traced
  dendrites, spine heads (:mod:`analysis.measure.spines`) and their density per um of
  dendrite, the image's measured SNR and spike-in recall
  (:mod:`analysis.measure.spine_quality`); tables ``spines`` and ``dendrites`` (the traced
  centreline pixels, for QC).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from analysis.measure import area, engulfment, microglia
from analysis.measure.morphology import inner_boundaries
from analysis.measure import puncta as synapses
from analysis.measure.quality import image_quality
from analysis.pipeline.heap import release_free_memory
from analysis.pipeline.registry import Measured, Readout, register

log = logging.getLogger(__name__)

__all__ = ["MORPHOLOGY", "OUTLINE_KINDS", "PUNCTA_COLUMNS", "image_seed", "kept_puncta", "nearest_label",
           "pixel_table"]

#: Per-cell columns averaged into the image row (interior cells only).
MORPHOLOGY = [
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

#: Kinds of pixel in the ``outlines`` table of the microglia readouts (cell boundaries, pruned
#: skeletons, CD68 lysosome boundaries).
OUTLINE_KINDS = ("outline", "skeleton", "lysosome")

#: Columns of the per-punctum table kept in the cache and in ``puncta.parquet`` (with ``z``
#: first for z-stacks): position in pixels, fitted intensity, detection SNR, fitted size.
PUNCTA_COLUMNS = ("y", "x", "intensity", "snr", "sigma_um")


def image_seed(seed: int, plane: np.ndarray) -> list[int]:
    """Seed of one image's random draws: the configured seed and a checksum of its pixels."""
    return [int(seed), zlib.crc32(np.ascontiguousarray(plane).view(np.uint8))]


def _projection(plane: np.ndarray) -> np.ndarray:
    """Maximum projection of a ZYX channel (a YX one, or a stack of one plane, as a view)."""
    if plane.ndim == 2:
        return plane
    return plane[0] if plane.shape[0] == 1 else plane.max(axis=0)


def kept_puncta(puncta: pd.DataFrame | None, mask: np.ndarray | None) -> pd.DataFrame:
    """The stored form of the detections: :data:`PUNCTA_COLUMNS`, ``in_analysed_area``, scalar attrs."""
    if puncta is None or mask is None:
        return pd.DataFrame()
    kept = puncta[[c for c in ("z", *PUNCTA_COLUMNS) if c in puncta]].reset_index(drop=True)
    m = mask if mask.ndim == 2 else mask.any(axis=0)
    # the rule of analysis.measure.area.synapse_density: the nearest pixel lies in the analysed area
    iy = np.clip(np.rint(kept["y"].to_numpy(float)).astype(int), 0, m.shape[0] - 1)
    ix = np.clip(np.rint(kept["x"].to_numpy(float)).astype(int), 0, m.shape[1] - 1)
    kept["in_analysed_area"] = m[iy, ix].astype(bool)
    kept.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in puncta.attrs.items()
                  if v is None or isinstance(v, bool | int | float | str | np.generic)}
    return kept


def measure_puncta(channels: Mapping[str, np.ndarray], pixel_size_um: float, *, z_step_um: float | None,
                   params: Mapping[str, Any], upstream: Mapping[str, Measured], seed: int,
                   quality: Mapping[str, Any]) -> Measured:
    """The ``puncta`` readout of one image (see the module docstring)."""
    syn = channels["synapse_channel"]
    qp = dict(quality)
    run_spike_in = bool(qp.pop("spike_in", True))
    qp.pop("seed", None)
    puncta = synapses.detect_puncta(syn, pixel_size_um, z_step_um=z_step_um, **params)
    release_free_memory()  # (each step's freed work arrays back to the system: heap.py)
    # the mask needs the puncta of this image: pass the counted ones (no second detection)
    mask = area.analysed_area_mask(syn, pixel_size_um, puncta=puncta)
    release_free_memory()
    row = dict(area.synapse_density(puncta, mask, pixel_size_um, z_step_um=z_step_um))
    # image-quality figure for QC: the median detection SNR of the puncta found
    row["puncta_median_snr"] = float(puncta["snr"].median()) if len(puncta) else np.nan
    # the PSF's shape as the detector read it (astigmatism, puncta drawn out along a line)
    row["psf_quadrupole"] = float(puncta.attrs.get("psf_quadrupole", 0.0))
    row["puncta_elongated"] = bool(puncta.attrs.get("elongated_puncta", False))
    detect_params = dict(params)
    if z_step_um and syn.ndim == 3:
        # (the spike-in detects with the stack's own axial size, measured once above)
        detect_params.update(z_step_um=z_step_um, axial_radius_um=puncta.attrs.get("axial_radius_um"))
    q = image_quality(
        syn, pixel_size_um, puncta, mask=mask if syn.ndim == 2 else None, n_detected=row["n_puncta"],
        seed=image_seed(seed, syn), detect_params=detect_params, spike_in=run_spike_in, **qp)
    return Measured(row=row, tables={"puncta": kept_puncta(puncta, mask)}, quality=[q],
                    state={"puncta": puncta, "mask": mask})


def measure_microglia_readout(channels: Mapping[str, np.ndarray], pixel_size_um: float, *,
                              z_step_um: float | None, params: Mapping[str, Any],
                              upstream: Mapping[str, Measured], seed: int,
                              quality: Mapping[str, Any]) -> Measured:
    """The ``microglia`` readout of one image (see the module docstring)."""
    mg = channels["microglia_channel"]
    q = image_quality(mg, pixel_size_um, readout="microglia")
    mg2 = _projection(mg)
    labels = microglia.segment_microglia(mg2, pixel_size_um, **params)
    release_free_memory()
    cells, skeleton_px = microglia.measure_microglia(labels, mg2, pixel_size_um, return_skeleton=True)
    release_free_memory()
    field_mm2 = mg2.size * (pixel_size_um / 1000.0) ** 2
    row: dict[str, Any] = {
        "microglia_count": int(len(cells)),
        "microglia_field_area_mm2": field_mm2,
        "microglia_density_per_mm2": len(cells) / field_mm2,
    }
    interior = cells[~cells["touches_border"]] if len(cells) else cells
    row["microglia_interior_count"] = int(len(interior))
    for col in MORPHOLOGY:
        row[f"mean_{col}"] = float(interior[col].mean()) if len(interior) else np.nan
    outlines = pixel_table(labels, inner_boundaries(labels), "outline")
    release_free_memory()
    skeleton = pixel_table(labels, skeleton_px, "skeleton")
    del skeleton_px
    orphan = skeleton["label"].to_numpy() == 0
    if orphan.any():
        # a skeleton may run through a hole the morphology filled inside a soma: those pixels
        # get the label of the nearest cell pixel
        y, x = skeleton["y"].to_numpy()[orphan], skeleton["x"].to_numpy()[orphan]
        skeleton.loc[orphan, "label"] = nearest_label(labels, y, x).astype(np.int32)
    return Measured(row=row, tables={"cells": cells, "outlines": pd.concat([outlines, skeleton], ignore_index=True)},
                    quality=[q], state={"labels": labels})


def nearest_label(labels: np.ndarray, y: np.ndarray, x: np.ndarray, *, tile_px: int = 512,
                  margin_px: int = 32) -> np.ndarray:
    """Label of the labelled pixel nearest to each point ``(y, x)`` (YX pixels).

    The labelled pixel :func:`scipy.ndimage.distance_transform_edt` picks (``labels == 0``,
    ``return_indices``), found in crops around the points instead of one full-size transform
    (two int32 index maps of the whole image): the points are grouped by tiles of ``tile_px``
    and each tile is read with a margin; a crop whose farthest point lies more than the margin
    from its nearest labelled pixel is widened until it does not (every pixel outside the crop
    is then farther than the margin, so cannot be nearer nor tie), up to the whole image.
    """
    labels = np.asarray(labels)
    y, x = np.asarray(y, np.intp), np.asarray(x, np.intp)
    out = np.zeros(len(y), labels.dtype)
    if len(y) == 0:
        return out
    h, w = labels.shape
    tile = (y // tile_px) * (w // tile_px + 1) + x // tile_px
    for t in np.unique(tile):
        sel = np.flatnonzero(tile == t)
        ys, xs = y[sel], x[sel]
        m = margin_px
        while True:
            y0, y1 = max(0, int(ys.min()) - m), min(h, int(ys.max()) + m + 1)
            x0, x1 = max(0, int(xs.min()) - m), min(w, int(xs.max()) + m + 1)
            crop = labels[y0:y1, x0:x1]
            whole = (y0, x0, y1, x1) == (0, 0, h, w)
            background = crop == 0
            if background.all() and not whole:  # (no labelled pixel in the crop: widen it)
                m *= 4
                continue
            dist, (iy, ix) = ndi.distance_transform_edt(background, return_indices=True)
            if whole or float(dist[ys - y0, xs - x0].max()) <= m:
                out[sel] = crop[iy[ys - y0, xs - x0], ix[ys - y0, xs - x0]]
                break
            m *= 4
    return out


def pixel_table(labels: np.ndarray, where: np.ndarray, kind: str) -> pd.DataFrame:
    """Pixels of ``where`` as a tidy table: ``label`` (0 outside any cell), ``y``, ``x``, ``kind``.

    The QC overlays draw the stored outlines and skeletons of the cells that were counted
    (:func:`analysis.report.figures.qc_overlay`), never a second segmentation.
    """
    ys, xs = np.nonzero(where)
    return pd.DataFrame({"label": labels[ys, xs].astype(np.int32), "y": ys.astype(np.int32), "x": xs.astype(np.int32),
                         "kind": pd.Categorical([kind] * len(ys), categories=OUTLINE_KINDS)})


def measure_engulfment_readout(channels: Mapping[str, np.ndarray], pixel_size_um: float, *,
                               z_step_um: float | None, params: Mapping[str, Any],
                               upstream: Mapping[str, Measured], seed: int,
                               quality: Mapping[str, Any]) -> Measured:
    """The ``engulfment`` readout of one image (see the module docstring)."""
    lys = channels["lysosome_channel"]
    out = Measured()
    cells_of = upstream.get("microglia")
    puncta_of = upstream.get("puncta")
    if cells_of is not None and puncta_of is not None:
        lys_mask = engulfment.segment_lysosomes(_projection(lys), pixel_size_um, **params)
        release_free_memory()
        found = puncta_of.state["puncta"]
        pts = found if "z" not in found else found.drop(columns="z")
        eng = engulfment.measure_engulfment(cells_of.state["labels"], lys_mask, pts, pixel_size_um)
        out.tables["cells"] = cells_of.tables["cells"].merge(eng, on="label", how="left")
        out.row.update(engulfment.engulfment_totals(eng))
        lysosomes = pixel_table(cells_of.state["labels"], inner_boundaries(lys_mask), "lysosome")
        out.tables["outlines"] = pd.concat([cells_of.tables["outlines"], lysosomes], ignore_index=True)
    # (the CD68 channel is validated with the microglia, in the same terminal fields)
    out.quality.append(image_quality(lys, pixel_size_um, readout="microglia"))
    return out


def measure_spines_readout(channels: Mapping[str, np.ndarray], pixel_size_um: float, *,
                           z_step_um: float | None, params: Mapping[str, Any],
                           upstream: Mapping[str, Measured], seed: int,
                           quality: Mapping[str, Any]) -> Measured:
    """The ``spines`` readout of one two-photon image: dendrites, spine heads, density per um."""
    from analysis.measure import spines
    from analysis.measure.spine_quality import spine_quality

    img = channels["dendrite_channel"]
    trace = spines.trace_dendrites(img, pixel_size_um)
    found = spines.detect_spines(img, pixel_size_um, trace=trace, **params)
    # measured SNR and the detector's recall on this image by spike-in (two more detections)
    sq = spine_quality(img, pixel_size_um, found, trace, seed=image_seed(seed, img),
                       spike_in=bool(quality.get("spike_in", True)), detect_params=dict(params))
    q = {**image_quality(img, pixel_size_um, readout="spines", snr=sq["measured_snr"]), **sq}
    if sq["background_clipped"]:
        # the detector copes with it; the quality columns were not validated on it (the study's
        # images that are: named by quantify_study)
        q["in_validated_range"] = False
        log.debug("spine image: background clipped at the image's lowest value: outside the validated range")
    length = float(trace.table["length_um"].sum()) if len(trace.table) else 0.0
    row = {"n_spines": int(len(found)), "dendrite_length_um": length,
           "spine_density_per_um": len(found) / length if length > 0 else np.nan,
           "n_dendrites": int(len(trace.table))}
    kept = found.reset_index(drop=True)
    kept = kept[[c for c in kept.columns if kept[c].dtype != object or c == "type"]]
    centrelines = trace.centreline[["dendrite_id", "y", "x"]].astype({"dendrite_id": np.int32, "y": np.int32,
                                                                       "x": np.int32}).reset_index(drop=True)
    return Measured(row=row, tables={"spines": kept, "dendrites": centrelines}, quality=[q])


register(Readout(
    name="puncta", roles=("synapse_channel",), measure=measure_puncta,
    modules=("analysis.pipeline.readouts", "analysis.measure.puncta", "analysis.measure.area", "analysis.measure.matching"),
    notebook="02_synapse_dose_duration.ipynb", description="synapse (PSD95) channel"))
register(Readout(
    name="microglia", roles=("microglia_channel",), measure=measure_microglia_readout,
    modules=("analysis.pipeline.readouts", "analysis.measure.microglia", "analysis.measure.morphology"),
    notebook="03_microglia.ipynb", description="microglia (Iba1) channel"))
register(Readout(
    name="engulfment", roles=("microglia_channel", "lysosome_channel"), optional_roles=("synapse_channel",),
    needs=("puncta", "microglia"), measure=measure_engulfment_readout,
    modules=("analysis.pipeline.readouts", "analysis.measure.engulfment"),
    notebook="03_microglia.ipynb", description="lysosome (CD68) channel"))
def track_spines_series(images: list[np.ndarray], pixel_size_um: float | Sequence[float], *,
                        params: Mapping[str, Any]) -> pd.DataFrame:
    """The ``spines`` readout's study-level step: one position's sessions registered and its
    spines tracked (:func:`analysis.measure.spines.track_spines`; one pixel size per session,
    or one for all): one row per spine per session with ``status`` stable / gained / lost and
    ``in_common_field``."""
    from analysis.measure import spines

    tracks = spines.track_spines(images, pixel_size_um, **params).reset_index(drop=True)
    return tracks[[c for c in tracks.columns if tracks[c].dtype != object or c in ("type", "status")]]


register(Readout(
    name="spines", roles=("dendrite_channel",), measure=measure_spines_readout,
    modules=("analysis.pipeline.readouts", "analysis.measure.spines", "analysis.measure.spine_quality",
             "analysis.measure.planes", "analysis.measure.matching"),
    notebook="05_spines.ipynb", description="two-photon dendrite (GFP) channel",
    series=track_spines_series, series_by=("animal_id", "field"), series_table="spine_tracks"))
