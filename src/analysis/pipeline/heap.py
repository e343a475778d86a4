"""Returning freed memory to the operating system between the steps of one image.

A worker quantifies an image in steps (the readouts of :mod:`analysis.pipeline.registry`),
each allocating and freeing work arrays of a few MB.  glibc's allocator serves arrays below
its mmap threshold (which rises to the size of the largest block freed, up to 32 MB on 64-bit
Linux) from its heap and keeps the freed pages there, so the resident memory of a worker
after one step stays near the peak of that step, and the next step's work comes on top of it.
Measured on a 2048 x 2048 three-channel field (the bench plane of ``benchmarks/bench_memory.py``,
resident memory sampled every 2 ms), the worker stayed 90-118 MB above its starting point
between steps while the arrays alive (tracemalloc) took 7-11 MB.  :func:`release_free_memory` asks the
allocator to give back the free pages (``malloc_trim(0)``) between steps; it changes no
result, only the resident memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import lru_cache
from typing import Any

__all__ = ["release_free_memory"]

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None (another C library, another system)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        log.debug("malloc_trim is not available: freed memory stays with the allocator")
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Give the allocator's free memory back to the operating system (glibc ``malloc_trim(0)``).

    Returns
    -------
    bool
        True when memory was returned; False when there was none to return or the C library
        has no ``malloc_trim`` (then nothing happens).

    Examples
    --------
    >>> isinstance(release_free_memory(), bool)
    True
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
