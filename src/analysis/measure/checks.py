"""Checks of the arrays given to the measurement functions: errors that say what to fix.

The study pipeline rejects unusable images before measuring them
(:func:`analysis.pipeline.quantify.image_problem`); these checks give a caller of the public
functions (a notebook on one's own images) the same kind of message instead of a number
measured on pixels that mean nothing, or a crash deep inside a filter.
"""

from __future__ import annotations

import numpy as np

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
