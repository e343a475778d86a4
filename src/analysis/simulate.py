"""Kept importable for notebooks and outside scripts (DESIGN.md contract): the code lives in
:mod:`analysis.sim.simulate`.
"""

from analysis.sim.simulate import *  # noqa: F403
from analysis.sim.simulate import __all__  # noqa: F401
