"""Checks of the arrays given to the measurement functions: errors that say what to fix.

The study pipeline rejects unusable images before measuring them
(:func:`analysis.pipeline.quantify.image_problem`); these checks give a caller of the public
functions (a notebook on one's own images) the same kind of message instead of a number
measured on pixels that mean nothing, or a crash deep inside a filter.
"""

from __future__ import annotations

import numpy as np

from analysis.io.sheet import PIXEL_SIZE_RANGE_UM, Z_STEP_RANGE_UM, _unit_hint

#: smallest plane (pixels per side) a detector is given: a few punctum, head or soma widths
MIN_PLANE_PX = 16

#: what a (Y, X, 3 or 4) colour array passed as a (Z, Y, X) stack needs
COLOUR_HINT = ("; the last axis has 3 or 4 values, as in an RGB(A) colour image read as (y, x, colour): "
               "take one colour channel, e.g. image[..., 1] for green")


def require_plane_size(shape: tuple[int, ...], what: str = "image", min_px: int = MIN_PLANE_PX) -> None:
    """Raise ValueError when the (y, x) plane of ``shape`` is smaller than ``min_px`` a side.

    Examples
    --------
    >>> require_plane_size((64, 64))
    >>> require_plane_size((512, 512, 3))
    Traceback (most recent call last):
    ...
    ValueError: image is too small ((512, 512, 3)): its (y, x) plane is 512 x 3 pixels, need at least 16 x 16; the last axis has 3 or 4 values, as in an RGB(A) colour image read as (y, x, colour): take one colour channel, e.g. image[..., 1] for green
    """
    if len(shape) < 2 or min(shape[-2:]) < min_px:
        plane = " x ".join(str(n) for n in shape[-2:]) if len(shape) >= 2 else "not a"
        colour = COLOUR_HINT if len(shape) == 3 and shape[-1] in (3, 4) else ""
        raise ValueError(f"{what} is too small ({tuple(shape)}): its (y, x) plane is {plane} pixels, need at "
                         f"least {min_px} x {min_px}{colour}")


def require_finite(arr: np.ndarray, what: str = "image") -> None:
    """Raise ValueError naming how many pixels are NaN or infinite (float arrays only).

    Examples
    --------
    >>> require_finite(np.array([[1.0, np.nan], [np.inf, 2.0]]))
    Traceback (most recent call last):
    ...
    ValueError: image contains NaN or infinite values (2 pixels); replace them (e.g. with the background level) before measuring
    """
    if np.issubdtype(arr.dtype, np.inexact):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ValueError(f"{what} contains NaN or infinite values ({bad} pixels); replace them (e.g. with the "
                             "background level) before measuring")


def require_pixel_size(value: object, name: str = "pixel_size_um") -> float:
    """The pixel size (or z step, ``name="z_step_um"``) as a float, or ValueError when it is not a
    plausible light-microscope value in micrometres (:data:`analysis.io.sheet.PIXEL_SIZE_RANGE_UM`,
    ``Z_STEP_RANGE_UM``), naming a unit slip when one explains it.

    A pixel size given in nanometres made the puncta detector report two "puncta" in a field
    of forty, and one of 0.1 nm left it building filters thousands of pixels wide.

    Examples
    --------
    >>> require_pixel_size(0.1)
    0.1
    >>> require_pixel_size(65)
    Traceback (most recent call last):
    ...
    ValueError: pixel_size_um is 65, outside the plausible pixel size of 0.01-5 um (65 looks like nanometres: 0.065 um?); give it in micrometres (um)
    """
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in um, got {value!r}") from None
    lo, hi = PIXEL_SIZE_RANGE_UM if name != "z_step_um" else Z_STEP_RANGE_UM
    what = "z step" if name == "z_step_um" else "pixel size"
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be > 0 (the {what} in um), got {value!r}")
    if not lo <= v <= hi:
        raise ValueError(f"{name} is {value:g}, outside the plausible {what} of {lo:g}-{hi:g} um"
                         f"{_unit_hint(v, lo, hi)}; give it in micrometres (um)")
    return v
