"""Synthetic confocal fluorescence fields with exact ground truth.

Two kinds of field are rendered, both modelled on the imaging of Shi et al. (2022):

* :func:`render_synapse_field` -- one PSD95 channel of layer 2/3 neuropil at high
  magnification (63x oil, 0.1 um pixels): puncta, dendrite shafts, neuronal somata and
  vessels as dark voids, neuropil texture, out-of-focus haze, uneven illumination and a
  camera noise model.
* :func:`render_terminal_field` -- a 3-channel maximum projection (PSD95, Iba1, CD68) of
  fixed tissue at 0.2 um pixels with ramified microglia (random process trees), CD68
  lysosomes inside them and PSD95 puncta engulfed in those lysosomes.

Every random draw comes from the ``rng`` argument, so a field is a pure function of the
generator state and the parameters.  The returned truth is exact for what is drawn:
puncta are rendered as a sum of Gaussians at the reported centres and amplitudes, the
microglia label image is the rasterised soma and process tubes, and the per-cell
morphology is measured on the same process trees that are rasterised.

The code is split by what it models: :mod:`analysis.sim.optics` (PSF, camera, SNR
definition and conventions, rendering primitives), :mod:`analysis.sim.neuropil` (the PSD95
neuropil) and :mod:`analysis.sim.glia` (microglia, lysosomes, engulfment); this module
gathers the public names.
"""

from analysis.sim.glia import CELL_COLUMNS, TerminalField, render_terminal_field
from analysis.sim.neuropil import PUNCTA_COLUMNS, SynapseField, render_synapse_field
from analysis.sim.optics import CAMERA_GAIN, CAMERA_OFFSET_ADU, PSF_SIGMA_UM, READ_NOISE_ADU, SNR_LEVELS

__all__ = [
    "SNR_LEVELS",
    "SynapseField",
    "TerminalField",
    "render_synapse_field",
    "render_terminal_field",
    "PUNCTA_COLUMNS",
    "CELL_COLUMNS",
    "PSF_SIGMA_UM",
    "CAMERA_GAIN",
    "CAMERA_OFFSET_ADU",
    "READ_NOISE_ADU",
]
