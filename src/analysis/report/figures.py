"""Figures for the notebooks and the report (matplotlib, no global state changed)."""

from __future__ import annotations

import logging
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.io.vocabulary import GROUP_COLUMNS, group_label
from analysis.io import read_image

__all__ = ["add_scale_bar", "display_range", "example_fields", "qc_overlay", "qc_crops", "crop_windows", "qc_images",
           "longitudinal_plot", "forest_plot"]

log = logging.getLogger(__name__)

_CHANNEL_COLUMNS = {"PSD95": "synapse_channel", "Iba1": "microglia_channel", "CD68": "lysosome_channel"}


def display_range(plane: np.ndarray, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Scale a 2-D plane to [0, 1] between two percentiles (for display only)."""
    lo, hi = np.percentile(plane, [low, high])
    return np.clip((plane.astype(float) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)


def add_scale_bar(ax, pixel_size_um: float, length_um: float = 10.0) -> None:
    """Draw a white scale bar of ``length_um`` in the lower right corner of an image axis."""
    x0, x1 = sorted(ax.get_xlim())
    y_bottom = max(ax.get_ylim())
    n = length_um / pixel_size_um
    pad = 0.05 * (x1 - x0)
    ax.plot([x1 - pad - n, x1 - pad], [y_bottom - pad] * 2, color="white", linewidth=3, solid_capstyle="butt")


def _plane(row: pd.Series, column: str) -> np.ndarray | None:
    ch = row.get(column)
    if ch is None or pd.isna(ch):
        return None
    data, _ = read_image(row["abs_path"])
    return data[int(ch)].max(axis=0)  # max projection over z


def example_fields(samples: pd.DataFrame, *, max_groups: int | None = None, panel_inches: float = 2.0) -> Figure:
    """One example field per treatment group and channel.

    Columns: the PSD95 channel of a longitudinal (synapse-only) field at the end of dosing,
    then PSD95, Iba1 and CD68 of a terminal field.  Each panel is contrast-stretched on
    its own (0.5-99.8 percentiles), so brightness is not comparable between panels.  Scale
    bars are 10 um.

    Parameters
    ----------
    samples : DataFrame
        Validated sample sheet (with ``abs_path``, from :func:`analysis.io.load_samples`).
    max_groups : int, optional
        Show at most this many groups.
    panel_inches : float
        Size of each panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    groups = list(samples.groupby(GROUP_COLUMNS, sort=False))
    if max_groups is not None:
        groups = groups[:max_groups]
    titles = ["PSD95 (longitudinal)", "PSD95 (terminal)", "Iba1 (terminal)", "CD68 (terminal)"]
    fig, axes = plt.subplots(
        len(groups), 4, figsize=(4 * panel_inches, len(groups) * panel_inches), squeeze=False, layout="constrained"
    )
    for r, (keys, sub) in enumerate(groups):
        terminal = sub[sub["microglia_channel"].notna()].sort_values(["day", "image_id"])
        longitudinal = sub[sub["microglia_channel"].isna()]
        end = longitudinal[longitudinal["day"] == longitudinal["treatment_days"]]
        syn_row = (end if len(end) else longitudinal).sort_values("image_id").head(1)
        rows = [syn_row.iloc[0] if len(syn_row) else None] + [terminal.iloc[0] if len(terminal) else None] * 3
        planes = [
            _plane(syn_row.iloc[0], "synapse_channel") if len(syn_row) else None,
            *(
                _plane(terminal.iloc[0], col) if len(terminal) else None
                for col in ("synapse_channel", "microglia_channel", "lysosome_channel")
            ),
        ]
        for c, (ax, plane) in enumerate(zip(axes[r], planes)):
            ax.set_xticks([])
            ax.set_yticks([])
            if plane is None:
                ax.text(0.5, 0.5, "not imaged", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(display_range(plane), cmap="gray", interpolation="nearest")
                add_scale_bar(ax, float(rows[c]["pixel_size_um"]))
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(group_label(*keys), fontsize=8)
    return fig


def _synapse_stack(data: np.ndarray, channel: int) -> np.ndarray:
    """The synapse channel as quantified: YX for a single plane, ZYX for a stack."""
    plane = data[int(channel)]
    return plane[0] if plane.shape[0] == 1 else plane


def _counted_puncta(stack: np.ndarray, pixel_size_um: float, puncta: pd.DataFrame | None,
                    params: Any) -> tuple[np.ndarray, pd.DataFrame]:
    """(image the mask is computed on, puncta): the given puncta with the channel as quantified,
    or (with a warning) a new detection on its max projection when none are given."""
    from analysis.measure import puncta as synapses

    if puncta is not None:
        return stack, puncta
    log.warning("no puncta given: detecting them again for the QC picture, which may differ from the counted "
                "ones; pass puncta= (the image's rows of puncta.parquet)")
    plane = stack if stack.ndim == 2 else stack.max(axis=0)
    return plane, synapses.detect_puncta(plane, pixel_size_um, **(getattr(params, "puncta", None) or {}))


def _analysed_area(stack: np.ndarray, pixel_size_um: float, puncta: pd.DataFrame) -> np.ndarray:
    """The analysed-area mask as the quantification computes it (with the counted puncta), as YX."""
    from analysis.measure import area

    mask = area.analysed_area_mask(stack, pixel_size_um, puncta=puncta)
    return mask if mask.ndim == 2 else mask.any(axis=0)


def _counted(puncta: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    """Which puncta are counted: the stored ``in_analysed_area``, else their nearest pixel in ``mask``."""
    if "in_analysed_area" in puncta:
        return puncta["in_analysed_area"].to_numpy(bool)
    iy = np.clip(np.rint(np.asarray(puncta["y"], float)).astype(int), 0, mask.shape[0] - 1)
    ix = np.clip(np.rint(np.asarray(puncta["x"], float)).astype(int), 0, mask.shape[1] - 1)
    return mask[iy, ix].astype(bool)


def qc_overlay(
    data: np.ndarray,
    pixel_size_um: float,
    *,
    synapse_channel: int | None = 0,
    microglia_channel: int | None = None,
    lysosome_channel: int | None = None,
    puncta: pd.DataFrame | None = None,
    params: Any = None,
    outlines: pd.DataFrame | None = None,
    cells: pd.DataFrame | None = None,
    sholl_step_um: float = 5.0,
    panel_inches: float = 4.0,
) -> Figure:
    """Draw what the quantification found on the image, for a human check.

    Left: the PSD95 channel (max projection) with the puncta (red circles: counted; blue:
    detected outside the analysed area, whose border is orange).  Right (when a microglia
    channel exists): Iba1 with cell outlines (one colour per cell, cells cut by the border
    dashed), pruned skeletons (cyan), CD68 (yellow outline) and Sholl circles around each soma
    every ``sholl_step_um``.

    Parameters
    ----------
    data : ndarray
        Image with axes CZYX (:func:`analysis.io.read_image`).
    pixel_size_um : float
    synapse_channel, microglia_channel, lysosome_channel : int or None
        Channel roles.
    puncta : DataFrame, optional
        The image's rows of ``puncta.parquet`` (written by
        :func:`analysis.pipeline.quantify.quantify_study`): exactly these points are drawn, so the
        picture shows what was counted.  Without it the puncta are detected again (with
        ``params.puncta``, default parameters otherwise) and a warning is logged.
    params : QuantifyParams, optional
        Parameters of the quantification, used only for what is not given (microglia and CD68
        segmentation without ``outlines``; puncta without ``puncta``).
    outlines, cells : DataFrame, optional
        The image's rows of ``outlines.parquet`` and ``cells.parquet`` (cell boundaries,
        skeletons and CD68 boundaries as stored by the quantification; somata for the Sholl
        circles): the cells that were counted are drawn.  Without them the cells are segmented
        again (a warning is logged).
    sholl_step_um, panel_inches : float

    Returns
    -------
    matplotlib.figure.Figure
        The puncta are the scatter collection labelled ``"puncta"`` of the first axis.
    """
    from skimage.segmentation import find_boundaries

    from analysis.measure import engulfment
    from analysis.measure import microglia

    panels = [c for c in (synapse_channel, microglia_channel) if c is not None and not pd.isna(c)]
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_inches * len(panels), panel_inches),
                             squeeze=False, layout="constrained")
    axes = axes[0]
    i = 0
    if synapse_channel is not None and not pd.isna(synapse_channel):
        stack = _synapse_stack(data, synapse_channel)
        plane = stack if stack.ndim == 2 else stack.max(axis=0)
        stack, pts = _counted_puncta(stack, pixel_size_um, puncta, params)
        mask = _analysed_area(stack, pixel_size_um, pts)
        ax = axes[i]
        ax.imshow(display_range(plane), cmap="gray", interpolation="nearest")
        ax.contour(mask, levels=[0.5], colors="orange", linewidths=0.8)
        counted = _counted(pts, mask)
        ax.scatter(pts["x"], pts["y"], s=12, facecolors="none", edgecolors=np.where(counted, "red", "deepskyblue"),
                   linewidths=0.5, label="puncta")
        ax.set_title(f"PSD95: {int(counted.sum())} puncta counted (red; blue: outside the analysed area, orange)",
                     fontsize=9)
        add_scale_bar(ax, pixel_size_um)
        i += 1
    if microglia_channel is not None and not pd.isna(microglia_channel):
        plane = data[int(microglia_channel)].max(axis=0)
        ax = axes[i]
        ax.imshow(display_range(plane), cmap="gray", interpolation="nearest")
        if outlines is not None and cells is not None:
            border = np.zeros(plane.shape, np.int32)
            sk = np.zeros(plane.shape, bool)
            lys_edge = np.zeros(plane.shape, bool)
            for kind, target in (("outline", None), ("skeleton", sk), ("lysosome", lys_edge)):
                pts = outlines[outlines["kind"].astype(str) == kind]
                yy, xx = pts["y"].to_numpy(int), pts["x"].to_numpy(int)
                if target is None:
                    border[yy, xx] = pts["label"].to_numpy(int)
                else:
                    target[yy, xx] = True
            boundary = border > 0
        else:
            log.warning("qc_overlay: no stored outlines given; segmenting the cells again (may differ from the counted ones)")
            labels = microglia.segment_microglia(plane, pixel_size_um, **(getattr(params, "microglia", None) or {}))
            cells, sk = microglia.measure_microglia(labels, None, pixel_size_um, return_skeleton=True)
            boundary, border = find_boundaries(labels), labels
            lys_edge = None
            if lysosome_channel is not None and not pd.isna(lysosome_channel):
                lys = engulfment.segment_lysosomes(data[int(lysosome_channel)].max(axis=0), pixel_size_um,
                                                   **(getattr(params, "lysosomes", None) or {}))
                lys_edge = find_boundaries(lys)
        ax.imshow(np.ma.masked_where(~boundary, border), cmap="tab20", interpolation="nearest")
        ax.imshow(np.ma.masked_where(~sk, sk), cmap="cool", interpolation="nearest", alpha=0.9)
        if lys_edge is not None and lys_edge.any():
            ax.imshow(np.ma.masked_where(~lys_edge, lys_edge), cmap="autumn", interpolation="nearest")
        for r in cells.itertuples():
            for rad in np.arange(sholl_step_um, 30.0 + 1e-9, sholl_step_um):
                ax.add_patch(plt.Circle((r.soma_x, r.soma_y), rad / pixel_size_um, fill=False, lw=0.3,
                                        color="white", ls="--" if r.touches_border else "-", alpha=0.5))
        ax.set_title(f"Iba1: {len(cells)} cells ({int(cells.touches_border.sum())} cut by the border)", fontsize=9)
        add_scale_bar(ax, pixel_size_um)
    for ax in axes:
        ax.set_xlim(-0.5, data.shape[-1] - 0.5)
        ax.set_ylim(data.shape[-2] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def crop_windows(mask: np.ndarray, puncta: pd.DataFrame, pixel_size_um: float, *, n_crops: int = 3,
                 side_um: float = 10.0, min_analysed: float = 0.5) -> pd.DataFrame:
    """Square windows of an image chosen for QC crops: densest, median, ..., sparsest.

    The field is tiled by non-overlapping squares of ``side_um`` (the grid centred on the
    image); squares with at least ``min_analysed`` of their area inside the analysed area are
    ranked by detections per analysed pixel (ties: the first in reading order), and
    ``n_crops`` are taken at evenly spaced ranks from the densest to the sparsest.

    Parameters
    ----------
    mask : ndarray
        Analysed area, YX (bool).
    puncta : DataFrame
        Detections (``y``, ``x`` in pixels).
    pixel_size_um : float
    n_crops : int
    side_um : float
        Side of a window.
    min_analysed : float
        Least fraction of a window inside the analysed area.

    Returns
    -------
    DataFrame
        One row per window (at most ``n_crops``; fewer when the field has fewer windows),
        densest first: ``y0``, ``x0``, ``side_px``, ``n_puncta``, ``analysed_fraction``,
        ``density_per_100um2`` (detections per 100 um^2 of analysed area), ``rank``.
    """
    side = max(int(round(side_um / pixel_size_um)), 1)
    ny, nx = mask.shape[0] // side, mask.shape[1] // side
    cols = ["y0", "x0", "side_px", "n_puncta", "analysed_fraction", "density_per_100um2", "rank"]
    if ny == 0 or nx == 0 or n_crops < 1:
        return pd.DataFrame(columns=cols)
    oy, ox = (mask.shape[0] - ny * side) // 2, (mask.shape[1] - nx * side) // 2
    area = mask[oy:oy + ny * side, ox:ox + nx * side].reshape(ny, side, nx, side).mean(axis=(1, 3))
    iy = np.floor((np.asarray(puncta["y"], float) + 0.5 - oy) / side).astype(int)
    ix = np.floor((np.asarray(puncta["x"], float) + 0.5 - ox) / side).astype(int)
    inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    counts = np.zeros((ny, nx), int)
    np.add.at(counts, (iy[inside], ix[inside]), 1)
    wy, wx = np.nonzero(area >= min_analysed)
    if len(wy) == 0:
        return pd.DataFrame(columns=cols)
    dens = counts[wy, wx] / (area[wy, wx] * (side * pixel_size_um) ** 2) * 100.0
    order = np.lexsort((np.arange(len(wy)), -dens))  # densest first, reading order on ties
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, min(n_crops, len(order)))).astype(int))
    sel = order[picks]
    return pd.DataFrame({"y0": oy + wy[sel] * side, "x0": ox + wx[sel] * side, "side_px": side,
                         "n_puncta": counts[wy[sel], wx[sel]], "analysed_fraction": area[wy[sel], wx[sel]],
                         "density_per_100um2": dens[sel], "rank": picks})


def qc_crops(
    data: np.ndarray,
    pixel_size_um: float,
    puncta: pd.DataFrame,
    *,
    synapse_channel: int = 0,
    n_crops: int = 3,
    side_um: float = 10.0,
    mask: np.ndarray | None = None,
    panel_inches: float = 3.0,
) -> Figure:
    """Zoomed crops of the synapse channel with every counted punctum marked, to judge each one.

    The crops are chosen by :func:`crop_windows` (densest, median and sparsest ~10 um squares
    of the analysed area by default) from the given detections, never from a new detection.
    Pixels are drawn as blocks (nearest interpolation) on the grey scale of the whole field
    (0.5-99.8 percentiles of its max projection, so crops compare with each other and with
    :func:`qc_overlay`); each punctum is a ring of radius 2 sigma (its fitted size) around its
    centre (at least 1.5 pixels), red when counted, blue when outside the analysed area (border orange); scale bars
    are 2 um.

    Parameters
    ----------
    data : ndarray
        Image with axes CZYX (:func:`analysis.io.read_image`).
    pixel_size_um : float
    puncta : DataFrame
        The image's rows of ``puncta.parquet`` (``y``, ``x`` in pixels; ``sigma_um``).
    synapse_channel : int
    n_crops : int
    side_um : float
        Side of each crop.
    mask : ndarray, optional
        Analysed area (YX); by default computed as the quantification does, with ``puncta``.
    panel_inches : float

    Returns
    -------
    matplotlib.figure.Figure
        One axis per crop (fewer than ``n_crops`` when the field holds fewer windows), in
        image pixel coordinates; each has one scatter collection labelled ``"puncta"``.
    """
    stack = _synapse_stack(data, synapse_channel)
    plane = stack if stack.ndim == 2 else stack.max(axis=0)
    if mask is None:
        mask = _analysed_area(stack, pixel_size_um, puncta)
    windows = crop_windows(mask, puncta, pixel_size_um, n_crops=n_crops, side_um=side_um)
    fig, axes = plt.subplots(1, max(len(windows), 1), figsize=(panel_inches * max(len(windows), 1), panel_inches),
                             squeeze=False, layout="constrained")
    axes = axes[0]
    if windows.empty:
        axes[0].text(0.5, 0.5, f"no {side_um:g} um window in the analysed area", ha="center", va="center",
                     transform=axes[0].transAxes, fontsize=8)
        axes[0].set_axis_off()
        return fig
    shown = display_range(plane)
    names = {0: "densest"}
    ranks = windows["rank"].to_numpy()
    last = int(ranks.max())
    y = np.asarray(puncta["y"], float)
    x = np.asarray(puncta["x"], float)
    sigma_px = (np.asarray(puncta["sigma_um"], float) / pixel_size_um if "sigma_um" in puncta
                else np.ones(len(puncta)))
    counted = _counted(puncta, mask)
    for ax, w in zip(axes, windows.itertuples()):
        y0, x0, n = int(w.y0), int(w.x0), int(w.side_px)
        ax.imshow(shown[y0:y0 + n, x0:x0 + n], cmap="gray", interpolation="nearest", vmin=0, vmax=1,
                  extent=(x0 - 0.5, x0 + n - 0.5, y0 + n - 0.5, y0 - 0.5))
        ax.contour(np.arange(x0, x0 + n), np.arange(y0, y0 + n), mask[y0:y0 + n, x0:x0 + n].astype(float),
                   levels=[0.5], colors="orange", linewidths=0.8)
        sel = (y >= y0 - 0.5) & (y < y0 + n - 0.5) & (x >= x0 - 0.5) & (x < x0 + n - 0.5)
        points_per_px = panel_inches * 72.0 / n
        ring = np.maximum(2.0 * sigma_px[sel], 1.5) * points_per_px  # radius in points (>= 1.5 px)
        ax.scatter(x[sel], y[sel], s=(2.0 * ring) ** 2, facecolors="none", linewidths=0.8,
                   edgecolors=np.where(counted[sel], "red", "deepskyblue"), label="puncta")
        ax.set_xlim(x0 - 0.5, x0 + n - 0.5)
        ax.set_ylim(y0 + n - 0.5, y0 - 0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        add_scale_bar(ax, pixel_size_um, length_um=2.0)
        kind = names.get(int(w.rank), "sparsest" if int(w.rank) == last else "median" if len(windows) == 3 else
                         f"rank {int(w.rank) + 1}")
        ax.set_title(f"{kind}: {int(sel.sum())} puncta, {w.density_per_100um2:.0f}/100 um² analysed\n"
                     f"(x {x0}-{x0 + n}, y {y0}-{y0 + n} px)", fontsize=8)
    return fig


def qc_images(measurements: pd.DataFrame, *, max_images: int = 6) -> pd.DataFrame:
    """The images to show in QC: fields the statistics use, across quality and session kinds.

    In this order, without repeats, at most ``max_images``: the synapse field with the lowest
    and the one with the highest measured SNR (``measured_snr``), then for each session kind
    (``session`` column when present, else longitudinal / terminal) the field of median
    measured SNR.  Synapse fields are those without a microglia channel; terminal fields
    carry one.  Images with a synapse readout (``n_puncta``) are the candidates; a study
    without one (e.g. microglia only) shows the fields with the fewest, the most and the
    median number of cells (``microglia_count``); images of neither readout are not shown
    here (none when the study has neither).

    Parameters
    ----------
    measurements : DataFrame
        ``measurements.parquet``.
    max_images : int

    Returns
    -------
    DataFrame
        The chosen rows of ``measurements`` with a column ``qc_reason`` (why it was chosen,
        with its value).
    """
    m = measurements.reset_index(drop=True)
    has_synapse = "n_puncta" in m and m["n_puncta"].notna().any()
    if has_synapse:
        m = m[m["n_puncta"].notna()]  # a synapse readout to show
        what, unit = "measured SNR", "measured_snr"
    else:
        what, unit = "microglia count", "microglia_count"
        # (images of other readouts, e.g. two-photon spines, have their own QC in their notebook)
        m = m[m[unit].notna()] if unit in m else m.iloc[0:0]
    value = m[unit].astype(float) if unit in m else pd.Series(np.nan, index=m.index)
    terminal = m["microglia_channel"].notna() if "microglia_channel" in m else pd.Series(False, index=m.index)
    kind = m["session"].astype(str) if "session" in m else terminal.map({True: "terminal", False: "longitudinal"})
    picks: list[tuple[int, str]] = []
    ranked = value[(~terminal if has_synapse else terminal) & value.notna()].sort_values(kind="stable")
    if len(ranked):
        picks += [(int(ranked.index[0]), f"lowest {what}"), (int(ranked.index[-1]), f"highest {what}")]
    for k in dict.fromkeys(kind):
        sub = value[(kind == k)].sort_values(kind="stable")
        if len(sub):
            picks.append((int(sub.index[(len(sub) - 1) // 2]), f"{k}: median {what}"))
    seen: dict[int, str] = {}
    for i, why in picks:
        seen.setdefault(i, why)
    idx = list(seen)[:max_images]
    reasons = [f"{seen[i]} {value[i]:.3g}" if pd.notna(value[i]) else seen[i] for i in idx]
    return m.loc[idx].assign(qc_reason=reasons)


def longitudinal_plot(session_means: pd.DataFrame, value: str = "puncta_density_per_100um2",
                      groups: list[str] | None = None, panel_inches: float = 2.6,
                      ylabel: str = "synapse density / baseline") -> Figure:
    """Density over days for each group: one thin line per animal, the group mean in bold.

    Values are normalised to each animal's baseline session (1 = baseline), the dosing period
    is shaded.  n in each title counts animals.  Drawn from the tidy table with seaborn
    (``lineplot`` with the animal as unit, then the mean over animals per day).
    """
    import seaborn as sns

    sm = session_means.copy()
    base = sm.loc[sm.groupby("animal_id")["day"].idxmin(), ["animal_id", value]].rename(columns={value: "_base"})
    sm = sm.merge(base, on="animal_id")
    sm["relative"] = sm[value] / sm["_base"]
    names = groups or sorted(sm["group"].unique())
    ncol = 4
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * panel_inches, nrow * panel_inches * 0.8),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, g in zip(axes.ravel(), names):
        sub = sm[sm["group"] == g]
        sns.lineplot(data=sub, x="day", y="relative", units="animal_id", estimator=None, color="0.6", lw=0.6,
                     ax=ax, legend=False)
        sns.lineplot(data=sub, x="day", y="relative", estimator="mean", errorbar=None, color="C3", lw=2, ax=ax,
                     legend=False)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.axvspan(0, float(sub["treatment_days"].iloc[0]), color="C0", alpha=0.1)
        ax.axhline(1, color="k", lw=0.5)
        ax.set_title(f"{g}\n(n = {sub['animal_id'].nunique()} animals)", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    fig.supxlabel("day since first dose (shaded: dosing)", fontsize=8)
    fig.supylabel(ylabel, fontsize=8)
    return fig


_TRACK_COLOURS = {"stable": "C1", "gained": "C2", "lost": "C3"}


def spine_overlay(images: list[np.ndarray], spines: list[pd.DataFrame], pixel_size_um: float,
                  titles: list[str] | None = None, panel_inches: float = 3.2,
                  dendrites: list[pd.DataFrame] | None = None, tracks: pd.DataFrame | None = None) -> Figure:
    """Two-photon sessions of one imaged position side by side with what was measured.

    Parameters
    ----------
    images : list of ndarray
        One YX image (or ZYX stack, shown as its maximum projection) per session.
    spines : list of DataFrame
        The stored detections of each image (``spines.parquet`` rows: ``y``, ``x`` in pixels).
    pixel_size_um : float
    titles : list of str, optional
    dendrites : list of DataFrame, optional
        The traced centrelines of each image (``dendrites.parquet`` rows: ``y``, ``x``), drawn in cyan.
    tracks : DataFrame, optional
        The position's rows of ``spine_tracks.parquet``: the spines of each ``session`` drawn by
        status (orange stable, green gained, red crosses: lost, at the predicted place).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per session; the heads are the scatter collection labelled ``"spines"``.
    """
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(panel_inches * n, panel_inches), squeeze=False, layout="constrained")
    for k, (ax, img, pts) in enumerate(zip(axes[0], images, spines, strict=True)):
        plane = np.asarray(img)
        plane = plane if plane.ndim == 2 else plane.max(axis=0)
        ax.imshow(display_range(plane), cmap="gray", interpolation="nearest")
        if dendrites is not None and len(dendrites[k]):
            ax.scatter(dendrites[k]["x"], dendrites[k]["y"], s=0.3, color="c", alpha=0.6, label="dendrites")
        t = tracks[tracks["session"] == k] if tracks is not None else None
        if t is not None and len(t):
            shown = t[t["status"] != "lost"]
            ax.scatter(shown["x"], shown["y"], s=18, facecolors="none", linewidths=0.7, label="spines",
                       edgecolors=[_TRACK_COLOURS[s] for s in shown["status"]])
            lost = t[t["status"] == "lost"]
            if len(lost):
                ax.scatter(lost["x"], lost["y"], s=18, marker="x", color=_TRACK_COLOURS["lost"], linewidths=0.8,
                           label="lost")
            counts = t["status"].value_counts()
            extra = "" if k == 0 else f" ({counts.get('gained', 0)} gained, {counts.get('lost', 0)} lost)"
        elif len(pts):
            ax.scatter(pts["x"], pts["y"], s=18, facecolors="none", edgecolors="C1", linewidths=0.7, label="spines")
            extra = ""
        else:
            extra = ""
        ax.set_title((titles[k] + ": " if titles else "") + f"{len(pts)} spines" + extra, fontsize=8)
        add_scale_bar(ax, pixel_size_um, length_um=5.0)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def forest_plot(contrasts: pd.DataFrame, *, estimate: str = "pct_vs_vehicle", label: str = "group",
                xlabel: str = "% change versus vehicle (95 % CI)") -> Figure:
    """Estimates with 95 % CIs, one row per contrast (e.g. the planned contrasts)."""
    c = contrasts.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(c) + 1), layout="constrained")
    y = np.arange(len(c))[::-1]
    lo, hi = c[f"{estimate}_ci_low"], c[f"{estimate}_ci_high"]
    ax.errorbar(c[estimate], y, xerr=[c[estimate] - lo, hi - c[estimate]], fmt="o", color="k", capsize=2)
    ax.axvline(0, color="C3", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{g} (n={n})" for g, n in zip(c[label], c["n_animals"])], fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    return fig


# --- validation against simulated ground truth (notebook 04_validation) ---------------------

__all__ += ["measured_vs_true_plot", "accuracy_per_snr_plot", "calibration_plot"]

_SNR_ORDER = ("high", "default", "low", "hard")


def measured_vs_true_plot(pairs: pd.DataFrame, panel_inches: float = 2.6) -> Figure:
    """Measured against true value per image, one panel per quantity, coloured by SNR level.

    Parameters
    ----------
    pairs : DataFrame
        From :func:`analysis.report.validation.measured_vs_true`.
    panel_inches : float
        Size of each panel.

    Returns
    -------
    matplotlib.figure.Figure
        The identity line is dashed; each title gives n images and Pearson r.
    """
    quantities = list(dict.fromkeys(pairs["quantity"]))
    ncol = 3
    nrow = max(1, int(np.ceil(len(quantities) / ncol)))
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * panel_inches, nrow * panel_inches), squeeze=False,
                             layout="constrained")
    levels = [lv for lv in _SNR_ORDER if lv in set(pairs["snr_level"])] + sorted(
        set(pairs["snr_level"]) - set(_SNR_ORDER))
    for ax, q in zip(axes.ravel(), quantities):
        sub = pairs[pairs["quantity"] == q]
        for k, lv in enumerate(levels):
            s = sub[sub["snr_level"] == lv]
            ax.scatter(s["true"], s["measured"], s=12, color=f"C{k}", label=lv)
        lim = [min(sub["true"].min(), sub["measured"].min()), max(sub["true"].max(), sub["measured"].max())]
        ax.plot(lim, lim, "k--", lw=0.7)
        r = np.corrcoef(sub["true"], sub["measured"])[0, 1] if len(sub) > 2 else np.nan
        ax.set_title(f"{sub['label'].iloc[0]}\n(n = {len(sub)} images, r = {r:.2f})", fontsize=7)
        ax.set_xlabel("true", fontsize=7)
        ax.set_ylabel("measured", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(quantities):]:
        ax.set_visible(False)
    if quantities:
        axes.ravel()[0].legend(title="SNR level", fontsize=6, title_fontsize=6)
    return fig


def accuracy_per_snr_plot(accuracy: pd.DataFrame) -> Figure:
    """Detection and morphology accuracy against the SNR of fresh phantom fields.

    Parameters
    ----------
    accuracy : DataFrame
        From :func:`analysis.sim.validation.accuracy_per_snr`.

    Returns
    -------
    matplotlib.figure.Figure
        Left: puncta recall, precision and microglia count F1; right: relative bias of the
        synapse density and median relative error of the skeleton length.
    """
    a = accuracy.sort_values("snr")
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
    for col, name in [("puncta_recall", "puncta recall"), ("puncta_precision", "puncta precision"),
                      ("microglia_count_f1", "microglia count F1"),
                      ("engulfed_pearson_detected_puncta", "engulfed per cell, Pearson r")]:
        left.plot(a["snr"], a[col], "o-", label=name)
    left.set_ylim(0, 1.05)
    left.set_ylabel("score", fontsize=8)
    for col, name in [("puncta_count_bias", "synapse density"),
                      ("skeleton_length_median_rel_error", "skeleton length (median)")]:
        right.plot(a["snr"], 100 * a[col], "o-", label=name)
    right.axhline(0, color="k", lw=0.5)
    right.set_ylabel("relative error, %", fontsize=8)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(a["snr"], [f"{lv}\n{s:g}" for lv, s in zip(a["snr_level"], a["snr"])], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("SNR level", fontsize=8)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    return fig


def calibration_plot(null: pd.DataFrame, effect: pd.DataFrame, alpha: float = 0.05) -> Figure:
    """Calibration of the synapse model: null p values and CI coverage of the true effect.

    Parameters
    ----------
    null : DataFrame
        :func:`analysis.sim.validation.calibrate` rows of studies without drug effect.
    effect : DataFrame
        Rows of studies with the drug effect.
    alpha : float
        Level marked in the histogram.

    Returns
    -------
    matplotlib.figure.Figure
        Left: histogram of p values of every planned contrast in the null studies (uniform
        when calibrated); right: the 95 % CIs of the effect studies per contrast, sorted by
        estimate, red where they miss the truth (black line).
    """
    groups = sorted(effect["group"].unique())
    fig, axes = plt.subplots(1, 1 + len(groups), figsize=(3 + 2.4 * len(groups), 3), squeeze=False,
                             layout="constrained")
    ax = axes[0, 0]
    ax.hist(null["p"], bins=np.linspace(0, 1, 11), color="0.6", edgecolor="k")
    ax.axhline(len(null) / 10, color="C0", lw=1, label="uniform")
    ax.axvline(alpha, color="C3", lw=1)
    ax.set_title(f"null studies: p values\n(n = {len(null)} contrasts, "
                 f"{null['seed'].nunique()} studies; {100 * (null['p'] < alpha).mean():.0f} % < {alpha})", fontsize=7)
    ax.set_xlabel("p (vs vehicle)", fontsize=7)
    ax.legend(fontsize=6)
    for ax, g in zip(axes[0, 1:], groups):
        s = effect[effect["group"] == g].sort_values("pct_vs_vehicle").reset_index(drop=True)
        colors = np.where(s["covered"], "k", "C3")
        ax.hlines(np.arange(len(s)), s["ci_low"], s["ci_high"], colors=colors, lw=1)
        ax.plot(s["pct_vs_vehicle"], np.arange(len(s)), "o", ms=2, color="k")
        ax.axvline(float(s["true_pct"].iloc[0]), color="C0", lw=1.2)
        ax.set_title(f"{g}\ntrue {s['true_pct'].iloc[0]:+.1f} %, coverage {100 * s['covered'].mean():.0f} % "
                     f"(n = {len(s)} studies)", fontsize=7)
        ax.set_xlabel("% vs vehicle (95 % CI)", fontsize=7)
        ax.set_yticks([])
    for ax in axes.ravel():
        ax.tick_params(labelsize=7)
    return fig


# --- dose response and recovery (notebook 02_synapse_dose_duration) --------------------------

__all__ += ["dose_response_plot", "recovery_plot"]


def dose_response_plot(animals: pd.DataFrame, curve: pd.DataFrame, parameters: pd.DataFrame) -> Figure:
    """End-of-dosing change per animal against dose, with the Emax fit and its 95 % band.

    Parameters
    ----------
    animals : DataFrame
        One row per animal: ``dose_mg_kg``, ``pct_change_from_baseline`` (vehicle at dose 0).
    curve : DataFrame
        ``dose_mg_kg``, ``pct_change``, ``ci_low``, ``ci_high`` (fitted curve and band).
    parameters : DataFrame
        The :func:`analysis.stats.fit_dose_response` table (for ED50, Emax and n).

    Returns
    -------
    Figure
        Doses on a symmetric-log axis (vehicle at 0); grey points are animals.
    """
    fig, ax = plt.subplots(figsize=(4.6, 3.4), layout="constrained")
    c = curve.sort_values("dose_mg_kg")
    ax.fill_between(c["dose_mg_kg"], c["ci_low"], c["ci_high"], color="C0", alpha=0.2, lw=0,
                    label="95 % band (animal bootstrap)")
    ax.plot(c["dose_mg_kg"], c["pct_change"], color="C0", label="Emax fit")
    rng = np.random.default_rng(0)  # horizontal jitter only, for visibility
    d = animals["dose_mg_kg"].to_numpy(float)
    ax.scatter(d * np.exp(rng.uniform(-0.06, 0.06, len(d))), animals["pct_change_from_baseline"], s=10,
               color="0.35", alpha=0.7, zorder=3, label="animals")
    ax.axhline(0, color="0.6", lw=0.8)
    positive = np.unique(d[d > 0])
    lin = float(positive.min()) / 2 if len(positive) else 0.1
    ax.set_xscale("symlog", linthresh=lin)
    ax.set_xlim(-0.3 * lin, float(c["dose_mg_kg"].max()) * 1.1)
    ax.set_xticks(np.concatenate([[0.0], positive]))
    ax.set_xticklabels(["vehicle"] + [f"{x:g}" for x in positive])
    p = parameters.set_index("parameter")
    title = []
    if "ed50_mg_kg" in p.index:
        r = p.loc["ed50_mg_kg"]
        title.append(f"ED50 {r.estimate:.2g} mg/kg ({r.ci_low:.2g}-{r.ci_high:.2g})")
    if "emax_pct" in p.index:
        r = p.loc["emax_pct"]
        title.append(f"Emax {r.estimate:.1f} % ({r.ci_low:.1f} to {r.ci_high:.1f})")
    n = int(p["n_animals"].iloc[0]) if "n_animals" in p else len(animals)
    ax.set_title("\n".join(title + [f"n = {n} animals"]), fontsize=8)
    ax.set_xlabel("dose (mg/kg/day)", fontsize=8)
    ax.set_ylabel("% change from baseline at end of dosing", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    return fig


def recovery_plot(contrasts: pd.DataFrame, groups: list[str] | None = None) -> Figure:
    """Change versus vehicle (95 % CI) against days since the last dose, one line per group.

    Parameters
    ----------
    contrasts : DataFrame
        :func:`analysis.stats.session_contrasts` rows (``group``, ``days_since_last_dose``,
        ``pct_vs_vehicle`` with its CI, ``n_animals``).
    groups : list of str, optional
        Groups to draw (default: the highest dose of each genotype, compound and duration
        among the groups with at least two sessions after the last dose).

    Returns
    -------
    Figure
    """
    c = contrasts[contrasts["pct_vs_vehicle"].notna() & (contrasts["days_since_last_dose"] >= 0)]
    if groups is None:
        after = c[c["days_since_last_dose"] > 0].groupby("group").size()
        eligible = c[c["group"].isin(after[after >= 2].index)]
        top = eligible.groupby(["genotype", "compound", "treatment_days"])["dose_mg_kg"].transform("max")
        groups = sorted(eligible.loc[eligible["dose_mg_kg"] == top, "group"].unique())
    fig, ax = plt.subplots(figsize=(7.5, 3.4), layout="constrained")
    for k, g in enumerate(groups):
        s = c[c["group"] == g].sort_values("days_since_last_dose")
        x = s["days_since_last_dose"].to_numpy(float) + 0.6 * (k - (len(groups) - 1) / 2)
        ax.errorbar(x, s["pct_vs_vehicle"], yerr=[s["pct_vs_vehicle"] - s["pct_vs_vehicle_ci_low"],
                                                  s["pct_vs_vehicle_ci_high"] - s["pct_vs_vehicle"]],
                    fmt="o-", ms=3, lw=1, capsize=2, label=f"{g} (n={int(s['n_animals'].min())})")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("days since the last dose", fontsize=8)
    ax.set_ylabel("% change versus vehicle (95 % CI)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# --- the key figure of the report index ------------------------------------------------------

__all__ += ["key_findings_figure", "short_group_label"]

_COMPOUND_SHORT = {"diazepam": "DZP", "vehicle": "vehicle"}
#: Percent changes labelled on the log-ratio axis of :func:`key_findings_figure`.
_PCT_TICKS = (-90, -75, -50, -25, -10, 0, 10, 25, 50, 100, 200, 400, 900, 1900)


def short_group_label(group: str) -> str:
    """A group label short enough for an axis tick: ``"WT diazepam 5 mg/kg x 7 d"`` -> ``"DZP 5, 7 d"``.

    The wild type is implicit; other genotypes stay in front.

    Examples
    --------
    >>> short_group_label("WT vehicle x 28 d")
    'vehicle, 28 d'
    >>> short_group_label("TSPO_KO diazepam 5 mg/kg x 7 d")
    'TSPO_KO DZP 5, 7 d'
    """
    head, _, days = group.rpartition(" x ")
    words = head.replace(" mg/kg", "").split()
    if words and words[0] == "WT":
        words = words[1:]
    words = [_COMPOUND_SHORT.get(w, w) for w in words]
    return " ".join(words) + (f", {days}" if days else "")


def _log_ticks(lo: float, hi: float, max_ticks: int = 8) -> list[float]:
    """Ratio ticks at round percentages within (lo, hi), at least 1/max_ticks of the log range apart, 0 % kept."""
    gap = (np.log(hi) - np.log(lo)) / max_ticks
    inside = [1 + p / 100 for p in _PCT_TICKS if lo <= 1 + p / 100 <= hi]
    kept = [1.0] if lo <= 1 <= hi else []
    for side in ([t for t in inside if t > 1], [t for t in reversed(inside) if t < 1]):
        last = 1.0
        for t in side:
            if abs(np.log(t) - np.log(last)) >= gap:
                kept.append(t)
                last = t
    return sorted(kept)


def key_findings_figure(animals: pd.DataFrame, estimates: pd.DataFrame, panels: list[tuple[str, str]],
                        *, panel_inches: float = 3.3) -> Figure:
    """The report's key figure: each animal as a dot, the model's estimate with its 95 % CI, per endpoint.

    Every panel shows one endpoint relative to vehicle on a log ratio axis labelled in percent,
    groups in design order (vehicle first): the dots are each animal's value over the mean of
    its vehicle group (a strip plot, deterministic horizontal offsets), the black diamond and
    bar the model's estimate and 95 % CI of the contrast (a point plot of the fitted table, not
    a bootstrap of the dots), a red cross the simulated truth where there is one.

    Parameters
    ----------
    animals : DataFrame
        ``endpoint``, ``group``, ``animal_id``, ``pct_vs_vehicle`` (one row per animal,
        :func:`analysis.report.findings.animal_values`).
    estimates : DataFrame
        ``endpoint``, ``group``, ``role`` ("reference" / "treated"), ``pct``, ``pct_ci_low``,
        ``pct_ci_high`` and optionally ``truth_pct`` (:func:`analysis.report.findings.endpoint_contrasts`),
        rows in design order.
    panels : list of (endpoint, title)
        The panels, in order.

    Returns
    -------
    Figure
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ncol = 2 if len(panels) > 1 else 1
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * panel_inches * 1.25, nrow * panel_inches),
                             squeeze=False, layout="constrained")
    pct_fmt = FuncFormatter(lambda y, _: "0 %" if abs(y - 1) < 1e-9 else f"{100 * (y - 1):+.0f} %")
    for ax, (endpoint, title) in zip(axes.ravel(), panels):
        est = estimates[(estimates["endpoint"] == endpoint) & estimates["role"].isin(["reference", "treated"])]
        dots = animals[animals["endpoint"] == endpoint]
        groups = list(dict.fromkeys(est["group"]))
        groups += [g for g in dict.fromkeys(dots["group"]) if g not in groups]
        for x, g in enumerate(groups):
            d = dots[dots["group"] == g].sort_values("animal_id")
            if len(d):
                offsets = np.linspace(-0.12, 0.12, len(d)) if len(d) > 1 else np.zeros(1)
                ax.plot(x - 0.12 + offsets, 1 + d["pct_vs_vehicle"].to_numpy(float) / 100, "o", ms=3.5,
                        color="C0", alpha=0.75, mec="none", label="animal" if x == 0 else None)
            e = est[(est["group"] == g) & (est["role"] == "treated")]
            if len(e):
                r = e.iloc[0]
                y = 1 + r["pct"] / 100
                ax.errorbar([x + 0.18], [y], yerr=[[y - (1 + r["pct_ci_low"] / 100)], [(1 + r["pct_ci_high"] / 100) - y]],
                            fmt="D", ms=4, color="k", capsize=2, lw=1)
                t = r.get("truth_pct", np.nan)
                if t is not None and np.isfinite(t):
                    ax.plot([x + 0.18], [1 + t / 100], "x", ms=6, mew=1.5, color="C3")
        ax.axhline(1, color="0.5", lw=0.8)
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.yaxis.set_major_locator(FixedLocator(_log_ticks(lo, hi)))
        ax.yaxis.set_major_formatter(pct_fmt)
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylim(lo, hi)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([short_group_label(g) for g in groups], fontsize=7, rotation=50, ha="right",
                           rotation_mode="anchor")
        ax.set_xlim(-0.6, len(groups) - 0.4)
        n = dots["animal_id"].nunique()
        ax.set_title(f"{title}\n(n = {n} animals)" if n else title, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel("versus vehicle", fontsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="none", marker="o", color="C0", ms=4, label="animal (over its vehicle group's mean)"),
               Line2D([], [], ls="-", marker="D", color="k", ms=4, label="model estimate, 95 % CI"),
               Line2D([], [], ls="none", marker="x", color="C3", ms=6, label="simulated truth")]
    if "truth_pct" not in estimates or not estimates["truth_pct"].notna().any():
        handles = handles[:2]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
    return fig
