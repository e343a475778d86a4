"""Inputs: the sample sheet (:mod:`analysis.io.sheet`), image readers
(:mod:`analysis.io.images`: TIFF, OME-TIFF, LSM; CZI, LIF, ND2 through bioio), a starter sheet
from a folder of images (:mod:`analysis.io.starter`) and safe writing of outputs plus the
raw-data manifest (:mod:`analysis.io.files`).

The names of the sheet and reader contracts are importable from here.
"""

from analysis.io.images import (
    VENDOR_FORMATS,
    ImageInfo,
    _file_problem,
    image_info,
    read_image,
    register_reader,
    without_file_bytes,
)
from analysis.io.sheet import *  # noqa: F403
from analysis.io.sheet import __all__ as _sheet_all
from analysis.io.starter import starter_sheet, write_starter_sheet

__all__ = [*_sheet_all, "ImageInfo", "VENDOR_FORMATS", "image_info", "read_image", "register_reader",
           "without_file_bytes", "starter_sheet", "write_starter_sheet"]
