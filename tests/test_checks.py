"""The public detectors reject arrays that cannot be measured, with a message that says what to fix.

Each case here gave a number or an unrelated crash before: a 1 x 256 line or an RGB array read
as a 128-plane stack of 3-pixel-wide images gave "puncta", NaN pixels gave a microglia label
image with no cell, an empty array an IndexError deep inside a filter.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.measure.checks import require_finite, require_plane_size
from analysis.microglia import measure_microglia, segment_microglia
from analysis.spines import detect_spines, trace_dendrites
from analysis.synapses import detect_puncta

DETECTORS = {
    "detect_puncta": lambda im: detect_puncta(im, 0.1),
    "segment_microglia": lambda im: segment_microglia(im, 0.5),
    "detect_spines": lambda im: detect_spines(im, 0.1),
    "trace_dendrites": lambda im: trace_dendrites(im, 0.1),
}


def _noise(shape, seed=0):
    return np.random.default_rng(seed).poisson(20, shape).astype(np.uint16)


def _with_nan():
    img = _noise((64, 64)).astype(np.float32)
    img[3, 4] = np.nan
    img[10, 20] = np.inf
    return img


CASES = {
    "NaN and inf pixels": (_with_nan, r"NaN or infinite values \(2 pixels\)"),
    "a 1-pixel line": (lambda: _noise((1, 256)), r"too small .*1 x 256 pixels"),
    "an empty array": (lambda: np.zeros((0, 0)), r"too small"),
    "a 12 x 12 crop": (lambda: _noise((12, 12)), r"need at least 16 x 16"),
    "an RGB array": (lambda: np.repeat(_noise((128, 128))[..., None], 3, axis=2).astype(np.uint8), r"RGB"),
}


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("case", CASES)
def test_unmeasurable_arrays_raise_a_clear_error(detector, case):
    make, message = CASES[case]
    with pytest.raises(ValueError, match=message):
        DETECTORS[detector](make())


def test_a_blank_or_constant_frame_measures_nothing():
    # (the spine tracer divided by a shaft radius of 0 here)
    for value in (0, 7):
        img = np.full((128, 128), value, np.uint16)
        assert len(detect_spines(img, 0.1)) == 0
        assert len(trace_dendrites(img, 0.1).table) == 0
        assert len(detect_puncta(img, 0.1)) == 0
        labels = segment_microglia(img, 0.5)
        assert labels.max() == 0 and len(measure_microglia(labels, img, 0.5)) == 0


def test_the_checks_pass_what_can_be_measured():
    require_plane_size((16, 16))
    require_plane_size((3, 64, 64))  # a 3-plane stack is not a colour image: 64 x 64 planes
    require_finite(np.zeros((4, 4), np.uint8))
    require_finite(np.ones((4, 4)))
    with pytest.raises(ValueError, match="15 x 16"):
        require_plane_size((15, 16))


@pytest.mark.parametrize("call", [
    lambda: detect_puncta(_noise((64, 64)), 65.0),
    lambda: detect_puncta(_noise((5, 64, 64)), 0.1, z_step_um=300.0),
    lambda: segment_microglia(_noise((64, 64)), 755.0),
    lambda: measure_microglia(np.zeros((64, 64), int), None, 755.0),
])
def test_a_pixel_size_in_nanometres_is_named(call):
    # (detect_puncta gave 2 "puncta" of a field of 40 at 65 or 100 "um" per pixel, and at 1e-4
    # um it was still building its filters after 5 minutes)
    with pytest.raises(ValueError, match=r"looks like nanometres"):
        call()
    with pytest.raises(ValueError, match=r"must be > 0"):
        detect_puncta(_noise((64, 64)), float("nan"))
    with pytest.raises(ValueError, match=r"plausible pixel size"):
        segment_microglia(_noise((64, 64)), 1e-4)
