"""Statistics of the study tables: mixed models of dose, duration, recovery and genotype
(:mod:`analysis.stats.models`), the dose x time trend (:mod:`analysis.stats.trend`) and model
diagnostics (:mod:`analysis.stats.diagnostics`). Nothing here knows how a study was simulated.
"""

from analysis.stats.models import *  # noqa: F403
from analysis.stats.models import __all__ as _models_all

__all__ = list(_models_all)
