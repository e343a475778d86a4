"""Validation: measured against simulated ground truth, calibration of the statistics
(:mod:`analysis.validation.groundtruth`) and label-free checks on real images
(:mod:`analysis.validation.labelfree`). The report reads the recorded results from here.
"""

from analysis.validation.groundtruth import *  # noqa: F403
from analysis.validation.groundtruth import __all__ as _groundtruth_all

__all__ = list(_groundtruth_all)
