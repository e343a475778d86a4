"""Progress for loops over images: a tqdm bar in terminals and JupyterLab, log lines elsewhere."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

__all__ = ["progress"]

log = logging.getLogger(__name__)


def _interactive() -> bool:
    if os.environ.get("CI"):
        return False
    try:  # a Jupyter kernel (JupyterLab, papermill) shows tqdm's widget/HTML bar
        from IPython import get_ipython

        if get_ipython() is not None and "IPKernelApp" in get_ipython().config:
            return True
    except ImportError:
        pass
    return sys.stderr.isatty()


def progress(items: Iterable[T], *, total: int, desc: str, unit: str = "image", enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` while reporting progress.

    In a terminal or a Jupyter kernel a tqdm bar with count and ETA is shown; otherwise
    (a log file, CI) one log line is written per 10 % of ``total``.
    """
    if not enabled:
        yield from items
        return
    if _interactive():
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit)
        return
    step = max(total // 10, 1)
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0 or i == total:
            log.info("%s: %d/%d %ss (%.0f %%)", desc, i, total, unit, 100 * i / max(total, 1))
