"""Kept importable for notebooks and outside scripts (DESIGN.md contract): the code lives in
:mod:`analysis.measure.microglia`.
"""

from analysis.measure.microglia import *  # noqa: F403
from analysis.measure.microglia import __all__  # noqa: F401
