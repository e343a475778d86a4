"""Kept importable for notebooks and outside scripts (DESIGN.md contract): the code lives in
:mod:`analysis.measure.puncta` (detection), :mod:`analysis.measure.area` (analysed area,
density) and :mod:`analysis.measure.noise` (noise models).
"""

from analysis.measure.area import analysed_area_mask, synapse_density
from analysis.measure.noise import background_corrected, noise_sd_map
from analysis.measure.puncta import *  # noqa: F403
from analysis.measure.puncta import __all__ as _puncta_all

__all__ = [*_puncta_all, "analysed_area_mask", "synapse_density", "noise_sd_map", "background_corrected"]
