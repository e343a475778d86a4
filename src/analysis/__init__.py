"""Synapse and microglia analysis for a long-term benzodiazepine mouse study.

The package turns microscopy images and a sample sheet into tidy tables, models and
an HTML report.  See ``DESIGN.md`` in the project's shared folder for the data flow and
the contracts (sample sheet, Python API, command line).
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("analysis")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
