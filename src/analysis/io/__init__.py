"""Inputs: the sample sheet (:mod:`analysis.io.sheet`), image readers
(:mod:`analysis.io.images`) and safe writing of outputs plus the raw-data manifest
(:mod:`analysis.io.files`).

The names of the sheet and reader contracts are importable from here.
"""

from analysis.io.images import ImageInfo, _file_problem, image_info, read_image, register_reader, without_file_bytes
from analysis.io.sheet import *  # noqa: F403
from analysis.io.sheet import __all__ as _sheet_all

__all__ = [*_sheet_all, "ImageInfo", "image_info", "read_image", "register_reader", "without_file_bytes"]
