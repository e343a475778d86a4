"""Figures for the notebooks and the report (matplotlib, no global state changed)."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.design import GROUP_COLUMNS, group_label
from analysis.io import read_image

__all__ = ["add_scale_bar", "display_range", "example_fields"]

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
