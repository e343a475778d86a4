"""Gaussian filters of large images as blocked banded matrix products.

:func:`gaussian_filter`, :func:`gaussian_filter1d`, :func:`gaussian_laplace` and
:func:`correlate1d` give the numbers of their :mod:`scipy.ndimage` namesakes (to rounding:
the sums are taken in another order) for the arguments the detectors use.  They are faster on
whole fields because scipy filters one line at a time, and a line across the rows of a
C-ordered image (axis 0) is read with a stride of a whole row: on a 1024 x 1024 field a 33-tap
pass takes scipy ~23 ms across the rows, against ~12 ms along them.  Here the image is cut into
blocks of :data:`BLOCK` lines and each block, with its halo, is multiplied by the one banded
(Toeplitz) matrix of the kernel, so the pass is a matrix product over contiguous memory done
by BLAS.  Best of 15 on one core (OpenBLAS with one thread; session 47), a 1024 x 1024
float64 image, scipy -> here:

- 9 taps: across the rows (axis 0) 15.2 -> 3.9 ms; along the rows scipy is kept (3.7 ms);
- 33 taps: across 23.2 -> 3.0 ms, along 11.5 -> 6.3 ms;
- 123 taps: across 62.2 -> 5.8 ms, along 50.5 -> 8.9 ms.

Small arrays, short kernels along the last axis, other dtypes than float64 and kernels wider
than the axis go to scipy (with scipy's own kernel), so on them the numbers are scipy's to the
last bit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy import ndimage as ndi
from threadpoolctl import ThreadpoolController

__all__ = ["correlate1d", "gaussian_filter", "gaussian_filter1d", "gaussian_kernel1d", "gaussian_laplace"]

#: Lines per block of the banded product (32 was the fastest of 32 / 64 / 128 from 256 to 2048
#: lines, 9 to 123 taps).
BLOCK = 32
#: Fewer elements than this go to scipy (a 256 x 256 plane and up use the product).
MIN_SIZE = 1 << 16
#: Along the last axis (contiguous for scipy too) the product wins from about 25 taps on.
MIN_TAPS_LAST_AXIS = 25
#: scipy.ndimage's boundary modes as :func:`numpy.pad` modes.
_PAD_MODE = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap",
             "constant": "constant"}


def gaussian_kernel1d(sigma: float, order: int = 0, truncate: float = 4.0) -> np.ndarray:
    """The kernel scipy's ``gaussian_filter1d`` convolves with (radius ``int(truncate * sigma +
    0.5)``; order 0, 1 or 2: the normalised Gaussian and its derivatives; the correlation weights
    are this array reversed).

    It is read off scipy itself, as its response to a unit impulse, so the weights are scipy's to
    the last bit.

    Examples
    --------
    >>> w = gaussian_kernel1d(2.5)
    >>> len(w), round(float(w.sum()), 12), int(w.argmax())
    (21, 1.0, 10)
    >>> bool(gaussian_kernel1d(2.5, order=2)[10] < 0)
    True
    """
    if order not in (0, 1, 2):
        raise ValueError(f"gaussian_kernel1d: order must be 0, 1 or 2, got {order}")
    return _kernel(float(sigma), int(order), float(truncate)).copy()


@functools.lru_cache(maxsize=256)
def _kernel(sigma: float, order: int, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    # (each output is one weight times 1 plus zeros: exact)
    return ndi.gaussian_filter1d(impulse, sigma, order=order, mode="constant", truncate=truncate)


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def _banded(weights: np.ndarray, block: int) -> np.ndarray:
    """(block, block + taps - 1) matrix whose row i holds ``weights`` from column i."""
    taps = len(weights)
    out = np.zeros((block, block + taps - 1))
    rows = np.repeat(np.arange(block), taps)
    out[rows, rows + np.tile(np.arange(taps), block)] = np.tile(weights, block)
    return out


def _use_product(x: np.ndarray, taps: int, axis: int, mode: str) -> bool:
    n = x.shape[axis]
    return (x.dtype == np.float64 and x.size >= MIN_SIZE and mode in _PAD_MODE and taps % 2 == 1
            and taps // 2 < n and n >= 2 * BLOCK
            and (axis != x.ndim - 1 or taps >= MIN_TAPS_LAST_AXIS)
            # a NaN or inf would reach the whole block through the band's zeros (0 * inf is
            # NaN), not just the kernel's radius: such arrays go to scipy (the sum is ~0.3 ms
            # per megapixel; a finite sum that overflows only sends the array to scipy too)
            and bool(np.isfinite(x.sum())))


def correlate1d(x: np.ndarray, weights: np.ndarray, axis: int = -1, mode: str = "reflect",
                cval: float = 0.0) -> np.ndarray:
    """``scipy.ndimage.correlate1d(x, weights, axis, mode=mode, cval=cval)`` (origin 0, odd
    number of weights), as a banded matrix product on large float64 arrays.

    Parameters
    ----------
    x : ndarray
        Image of any dimension.
    weights : ndarray
        1-D correlation weights, centred on the middle one.
    axis : int
        Axis to filter along.
    mode, cval
        Boundary handling as in :mod:`scipy.ndimage`.

    Returns
    -------
    ndarray
        The filtered array, of ``x``'s shape and dtype (float64 on the fast path).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage as ndi
    >>> img = np.random.default_rng(0).random((300, 280))
    >>> w = np.arange(1.0, 36.0)
    >>> [bool(np.allclose(correlate1d(img, w, a), ndi.correlate1d(img, w, a, mode="reflect"), rtol=1e-13))
    ...  for a in (0, 1)]
    [True, True]
    """
    weights = np.asarray(weights, dtype=np.float64)
    axis = axis % x.ndim if x.ndim else 0
    if not _use_product(x, len(weights), axis, mode):
        return ndi.correlate1d(x, weights, axis=axis, mode=mode, cval=cval)
    r = len(weights) // 2
    n = x.shape[axis]
    pre = int(np.prod(x.shape[:axis], dtype=np.int64))
    post = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    nb = -(-n // BLOCK)  # blocks of lines; the last one is filled up by the padding
    pad = [(0, 0), (r, r + nb * BLOCK - n), (0, 0)]
    kwargs = {"constant_values": cval} if _PAD_MODE[mode] == "constant" else {}
    # np.pad fills the tail of the last block past the halo by the same rule: those outputs
    # are dropped below
    xp = np.pad(np.ascontiguousarray(x).reshape(pre, n, post), pad, mode=_PAD_MODE[mode], **kwargs)
    band = _banded(weights, BLOCK)
    # one BLAS thread: the products are small, and a second thread doubled the CPU time of a
    # 1024 x 1024 detection for a 7 % shorter wall time (and competes with the image-level
    # parallelism, whose dask workers run one thread each)
    with _controller().limit(limits=1, user_api="blas"):
        out = _banded_product(xp, band, n)
    return np.ascontiguousarray(out).reshape(x.shape)


def _banded_product(xp: np.ndarray, band: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` lines (axis 1) of the correlation of the padded (pre, nb * BLOCK + 2r,
    post) array ``xp`` with ``band`` (BLOCK, BLOCK + 2r)."""
    pre, length, post = xp.shape
    r = (band.shape[1] - BLOCK) // 2
    nb = (length - 2 * r) // BLOCK
    if post > 1:
        # blocks of lines across the last axes: (pre, nb, BLOCK + 2r, post) overlapping views
        s_pre, s_n, s_post = xp.strides
        view = as_strided(xp, shape=(pre, nb, BLOCK + 2 * r, post), strides=(s_pre, BLOCK * s_n, s_n, s_post),
                          writeable=False)
        out = np.matmul(band, view).reshape(pre, nb * BLOCK, post)[:, :n]
    else:
        # along the last axis: column blocks, each a product with the transposed band (writing
        # each product into its slice was faster than matmul's `out=` into a strided slice)
        row = xp[:, :, 0]
        out = np.empty((pre, nb * BLOCK))
        band_t = np.ascontiguousarray(band.T)
        for b in range(nb):
            out[:, b * BLOCK:(b + 1) * BLOCK] = row[:, b * BLOCK:b * BLOCK + BLOCK + 2 * r] @ band_t
        out = out[:, :n]
    return out


def gaussian_filter1d(x: np.ndarray, sigma: float, axis: int = -1, order: int = 0, mode: str = "reflect",
                      truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter1d`` with the same arguments (no ``output``, ``cval`` 0,
    ``radius`` from ``truncate``), through :func:`correlate1d`.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage as ndi
    >>> img = np.random.default_rng(1).random((256, 300))
    >>> bool(np.allclose(gaussian_filter1d(img, 3.0, axis=0), ndi.gaussian_filter1d(img, 3.0, axis=0), rtol=1e-13))
    True
    """
    return correlate1d(x, gaussian_kernel1d(sigma, order, truncate)[::-1], axis=axis, mode=mode)


def gaussian_filter(x: np.ndarray, sigma: float | Sequence[float], order: int | Sequence[int] = 0,
                    mode: str = "reflect", truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter`` with the same arguments (one mode for every axis; no
    ``output``, ``cval`` 0): one :func:`gaussian_filter1d` per axis whose sigma is above 1e-15.

    Examples
    --------
    Three planes, blurred in y and x only:

    >>> import numpy as np
    >>> from scipy import ndimage as ndi
    >>> stack = np.random.default_rng(2).random((3, 200, 330))
    >>> bool(np.allclose(gaussian_filter(stack, [0, 1.5, 4.0]), ndi.gaussian_filter(stack, [0, 1.5, 4.0]),
    ...                  rtol=1e-13))
    True
    """
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (x.ndim,))
    orders = np.broadcast_to(np.asarray(order, dtype=int), (x.ndim,))
    if not (sigmas > 1e-15).any():
        return np.array(x, copy=True)
    out = np.asarray(x)
    for ax in np.flatnonzero(sigmas > 1e-15):
        out = gaussian_filter1d(out, float(sigmas[ax]), axis=int(ax), order=int(orders[ax]), mode=mode,
                                truncate=truncate)
    return out


def gaussian_laplace(x: np.ndarray, sigma: float | Sequence[float], mode: str = "reflect",
                     truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_laplace``: the sum over the axes of the second Gaussian
    derivative along that axis (no ``output``, ``cval`` 0).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage as ndi
    >>> img = np.random.default_rng(3).random((256, 256))
    >>> bool(np.allclose(gaussian_laplace(img, 1.2), ndi.gaussian_laplace(img, 1.2), rtol=1e-12, atol=1e-14))
    True
    """
    x = np.asarray(x)
    if x.dtype != np.float64:
        return ndi.gaussian_laplace(x, sigma, mode=mode, truncate=truncate)
    out = None
    for ax in range(x.ndim):
        order = [0] * x.ndim
        order[ax] = 2
        term = gaussian_filter(x, sigma, order=order, mode=mode, truncate=truncate)
        if out is None:
            out = term
        else:
            out += term
    return out
