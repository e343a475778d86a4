"""Pixel noise: the robust estimators every readout shares.

* :func:`robust_sd`: SD from the median absolute deviation (``MAD_TO_SD`` x MAD), robust to
  the signal in a minority of the values;
* :func:`noise_sd`: the noise SD of an image from Immerkaer's second-difference operator
  (:data:`IMMERKAER`), insensitive to smooth signal, edges and bright objects.

The detectors' spatially varying noise models (e.g.
:func:`analysis.measure.puncta.noise_sd_map`) build on these.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["MAD_TO_SD", "IMMERKAER", "robust_sd", "noise_sd"]

#: Median absolute deviation -> standard deviation for Gaussian data (1 / Phi^-1(3/4)).
MAD_TO_SD = 1.4826
#: Immerkaer's noise operator (difference of two Laplacians), scaled to unit noise gain: it
#: cancels any locally linear signal, and white noise of SD ``s`` comes out with SD ``s``.
IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]) / 6.0


def robust_sd(x: np.ndarray, max_samples: int = 200_000) -> float:
    """Noise SD from the median absolute deviation (robust to the signal in a few pixels).

    Parameters
    ----------
    x : ndarray
        Values (any shape).  Large arrays are subsampled on a regular grid to
        ``max_samples`` values.
    max_samples : int
        Largest number of values used.

    Returns
    -------
    float
        ``1.4826 * MAD`` (the SD for Gaussian data); the plain SD, or 1.0, when the MAD is 0
        (1.0 for no values).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(robust_sd(rng.normal(0, 2, 10_000)), 1)
    2.0
    """
    x = np.asarray(x).ravel()
    x = x[:: max(1, x.size // max_samples)]
    if x.size == 0:
        return 1.0
    med = np.median(x)
    return float(MAD_TO_SD * np.median(np.abs(x - med))) or float(np.std(x)) or 1.0


def noise_sd(image: np.ndarray) -> float:
    """Robust SD of the pixel noise of an image (Immerkaer's second-difference estimator).

    The image is filtered with :data:`IMMERKAER`, which cancels any locally linear signal;
    the median absolute value makes the estimate insensitive to edges and bright objects.

    Parameters
    ----------
    image : ndarray
        2-D image (a stack is measured plane by plane and the median returned).

    Returns
    -------
    float
        Noise SD in the image's units (1.0 for a constant image).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(100, 5, (256, 256)) + np.linspace(0, 50, 256)
    >>> round(noise_sd(img))
    5
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim > 2:
        return float(np.median([noise_sd(p) for p in img.reshape(-1, *img.shape[-2:])]))
    if min(img.shape) < 3:
        return robust_sd(img.astype(np.float64), max_samples=400_000)
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    c = ndi.correlate(img, k)[1:-1, 1:-1]
    s = float(np.median(np.abs(c)) * MAD_TO_SD / 6.0)
    return s if s > 0 else (robust_sd(c.astype(np.float64), max_samples=400_000) / 6.0 or 1.0)
