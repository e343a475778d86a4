"""Kept importable for notebooks and outside scripts (DESIGN.md contract): the code lives in
:mod:`analysis.measure.spines`.
"""

from analysis.measure.spines import *  # noqa: F403
from analysis.measure.spines import __all__  # noqa: F401
