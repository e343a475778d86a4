"""Kept importable for notebooks and outside scripts (DESIGN.md contract): the code lives in
:mod:`analysis.measure.puncta`.
"""

from analysis.measure.puncta import *  # noqa: F403
from analysis.measure.puncta import __all__  # noqa: F401
