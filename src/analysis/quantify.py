"""Kept importable for notebooks and outside scripts (DESIGN.md contract): the code lives in
:mod:`analysis.pipeline.quantify`.
"""

from analysis.pipeline.quantify import *  # noqa: F403
from analysis.pipeline.quantify import __all__  # noqa: F401
