"""Automatic detection of synaptic puncta (e.g. PSD95) and synapse density.

Like Fiji's Puncta Analyzer or SynQuant, but with no per-image threshold.  The image is
modelled as a smooth background plus Gaussian spots plus pixel noise, and every spot whose
fitted amplitude is significant is kept:

1. **Noise.**  The pixel noise of a photon-counting (point-scanning confocal) image is white
   and its variance grows linearly with the local intensity (Poisson-Gaussian model,
   ``var = alpha * intensity + beta``).  Both coefficients are fitted to the image itself: the
   median absolute deviation (MAD) of Immerkaer's noise residual (a 3 x 3 second difference
   that cancels smooth signal) in boxes of a few micrometres, against the box intensity
   (:func:`noise_sd_map`).  In a stack each plane's noise is scaled by its own boxes (gain
   and laser power can change from plane to plane).  Noise correlated between pixels (an
   image smoothed, interpolated or denoised; :func:`~analysis.measure.noise.noise_correlation`
   above :data:`~analysis.measure.noise.CORRELATED_NOISE`, or neighbouring pixels tied by a
   median filter, :data:`~analysis.measure.noise.TIED_NEIGHBOURS`, or a JPEG compression, by
   its 8 x 8 blocks or their quantised cosine transforms,
   :data:`~analysis.measure.noise.JPEG_BLOCKS`, :data:`~analysis.measure.noise.JPEG_LATTICE`)
   passes a punctum-sized filter far more than that residual says (pure noise smoothed at
   1 px: 3,230 false puncta per 1,000 um^2; 20 bright spots saved as JPEG at quality 95: 767
   puncta; 8-bit noise at quality 75: 2,625 per 1,000 um^2).  There the
   noise of the filtered image itself is measured instead, as the spread of the lower half of
   the nominal response in the darkest quarter of the image (puncta add to the upper half):
   the model's noise is scaled by it (``noise_factor``).  The filter's negative surrounds of
   the puncta widen that lower half too, in a crowded field by far (sim-fish's crowded
   fields smoothed, median-filtered or interpolated read 1.5-53 times the factor of their
   noise alone, and kept as few as a fifth of the puncta found before processing): so the
   spread is measured again on the residual of the fit (the image minus the puncta's models,
   surrounds and all), and the detection is repeated with that factor until it settles
   (:data:`_NOISE_FACTOR_PASSES`).  Milder smoothing (0.4-0.6 px) reads a correlation figure
   (1.3-4.6) that dense faint puncta on independent noise reach too (up to ~2.6); in an image
   whose figure is above :data:`~analysis.measure.noise.MILD_CORRELATION` the factor is
   measured in the same way, once on the response and once on the residual of its fit, but
   never above what white noise smoothed by a Gaussian to that figure gives
   (:func:`_smoothed_noise_factor`, computed for the filter in use; in a stack from the
   lateral and the axial figure, each giving the smoothing along its axes): an upper bound,
   since puncta only raise the figures.  Unfitted or unresolved puncta leave a residual spread of
   10-12 in sim-fish's crowded fields at 250 nm; bounded, they keep their threshold.
2. **Significance.**  A punctum's amplitude is estimated by least squares (a Gaussian of the
   expected size on top of a local background: everything smoother than
   ``background_radius_um`` is removed by subtracting a Gaussian blur, in a stack after
   each plane's median level; a plane brighter or dimmer than the planes' trend, by laser
   power or gain changing between planes, is first divided by its gain above the offset,
   :func:`_plane_gains`) and divided by its
   exact noise SD under the fitted noise model.  For an isolated punctum this is a matched
   filter with ~87 % of the ideal sensitivity (~1.3 x that of a Laplacian of Gaussian).
3. **Candidates.**  Local maxima of a sharper Laplacian of Gaussian (0.6 x the punctum size),
   at least ``min_separation_um`` apart, plus maxima of the residual after subtracting the
   fitted puncta (second pass), so that touching puncta each get a candidate.
4. **Joint fit and pruning.**  The amplitudes of all candidates are fitted jointly (linear
   least squares with closed-form Gaussian overlaps), so a faint punctum next to a bright
   one is judged on its own light.  A candidate's size is re-estimated when the data prefer
   another size (likelihood-ratio gain > 4, p ~ 0.05 for one extra parameter), and its centre
   is re-fitted on its deblended response (log-parabola, sub-pixel).  Candidates whose
   amplitude is below ``threshold_sd`` noise SDs, or that a blob 2.5 x broader explains
   significantly better (out-of-focus light of other planes), are dropped, weakest first,
   and the fit is repeated until every remaining punctum is significant.  After the first
   fit, a punctum whose light two puncta of the nominal size explain significantly better
   (chi-square gain > 20 plus the model error of step 6; two spots closer than the minimum
   separation make one maximum) is replaced by the two, which stay two in the second fit down
   to one sigma apart (2-D; :func:`_split_unresolved`).  Every filter reflects the image at
   its edges (a stack's first and last planes too), so a punctum within two response widths
   of an image edge is seen with its
   mirror image: its own response, amplitude, size choice and centre across that edge use
   the part of it inside the image folded at the edge (:func:`_folded_overlap`; a plain
   parabola put a punctum 1 pixel inside 0.7 pixel outward and lost most puncta of sigma
   2 pixels lying 0.5-1 pixel inside).  The fit keeps centres on the image's pixels; at the
   end, puncta near a lateral edge are refitted with centres allowed beyond it, and those
   centred beyond the edge line (tissue outside the field, shining in) are not counted: they
   had been counted on the outermost pixels, ~1 pixel's width of extra field.

5. **Size from the image.**  The punctum size (PSF convolved with the synapse) differs
   between microscopes; unless given, it is measured on the image
   (:func:`estimate_punctum_radius`: pixel-integrated Gaussian fits to the most prominent
   spots, median, within 0.1-0.6 um HWHM), and the background radius and minimum separation
   scale with it.
6. **Model error near bright puncta.**  The PSF is not exactly Gaussian (Airy rings,
   aberrations), so light within the reach of a bright punctum's model and below 5 % of its
   amplitude is not a punctum of its own, however many noise SDs it has.  What the Gaussian
   model leaves around a punctum (its PSF's wing) is also measured on the image, around its
   bright isolated puncta (:func:`_psf_wing`: the median over them of each ring's median
   residual, in a stack per axial offset too; within ~1 % of 0 for a Gaussian PSF, +2.2-2.7 %
   of the punctum's significance at 0.3 um for a Moffat PSF of beta 2.5).  Before the second
   pass looks for puncta hidden by brighter ones, each punctum's wing is taken out of the
   residual and, as a punctum's own wing differs from the mean by about as much, its square
   added to the noise the threshold is set by (around 120 Moffat spots of peak SNR ~50 the
   second pass had found 58 false puncta on that ring; around 450 crowded ones of peak SNR
   200, 119; benchmarks/validate_real.py part l; in stacks of 16 planes, 13-56 around 40-300
   spots, benchmarks/validate_stacks.py).  Puncta drawn out along a line (an astigmatic PSF,
   synapses seen edge-on) are fitted by two or three round ones, or split in two: in an
   image whose bright isolated puncta one elongated punctum explains better than a round one
   (:func:`_elongation_seen`; in a stack, drawn out laterally), a split or a group of puncta
   within 3 sigma must beat one elongated punctum as a split beats one round punctum
   (:func:`_merge_elongated`; ``attrs["elongated_puncta"]``).  Elliptical spots of aspect
   1.3-2 at peak SNR 20-400 gave 0.40-1.34 false puncta per spot, now 0-0.06
   (benchmarks/validate_real.py part m; aspect 1.15 is not recognised, 0.07-0.10); in stacks
   of aspect 1.3-1.6, 14-100 around 135 spots, now 0-7.  Images of round puncta are unchanged.
   A weaker astigmatism (aspect 1.15-1.3) reads round, but leaves light along one direction and
   a deficit across it, the same around every punctum: the wing's quadrupole (the cos 2 theta
   and sin 2 theta parts of the residual around the same bright isolated puncta, per ring and
   in a stack per signed axial offset; :func:`_psf_quadrupole`, ``attrs["psf_quadrupole"]``),
   taken out with the wing when it stands 5 standard errors from 0.  Its lobes, ~4-6 % of a
   punctum's significance 2 sigma out, had been counted: 0.07-0.10 false puncta per spot of
   aspect 1.15 in planes, now 0.01-0.06; 57 around 200 spots of aspect 1.3 at peak SNR 100 in
   stacks that read round, now 1.  In a plane, each bright punctum's own rings are taken out
   too (:func:`_take_out_own_rings`): puncta of one stain differ in size, and one 1.5-2x the
   nominal size, fitted at 1.4x, leaves a ring ~2 model sigmas out that the median wing over
   puncta of both kinds does not show (sim-fish fields of spot sigmas varied by 40 % at peak
   SNR 58: 60 false puncta around 600 spots, now 24; benchmarks/validate_real.py part o).
7. **Noise false-discovery control.**  The threshold is a number of noise SDs, so it means
   the same false-positive rate per pixel whatever the brightness, gain, offset or pixel
   size.  Random-field theory gives the rate of noise maxima above ``u`` SDs as
   ~``lambda / (2 pi)^(3/2) * u * exp(-u^2 / 2)`` per unit area (2-D), which falls 6-fold from
   u = 3.5 to 4 and again from 4 to 4.5; the detector's own rate on white Gaussian noise is
   calibrated (:func:`noise_detection_rate`; ~0.5 per 100 x 100 pixels above 4 SDs; per voxel
   of a stack, fewer as a punctum spans more planes).  At
   ``threshold_sd`` (default 4) that is 1-2 % of a cortical PSD95 density (30-60 puncta per
   100 um^2 at 0.1 um pixels), but in a sparse field or in pure noise it would be most of
   what is reported.  So the threshold is raised, Benjamini-Hochberg fashion, until
   the expected number of noise maxima in the field is at most ``noise_fdr`` (5 %) of the
   puncta reported: crowded fields keep ``threshold_sd``, pure noise gives nothing.  That
   bound allows up to 5 % noise maxima even where every punctum stands far above the
   threshold (precision 0.95 by construction: ~8 false puncta at 4.4-5 SDs per stack of 150
   sim-fish spots at SNR ~17), so within it the threshold is the one with the highest
   expected F1 (true puncta estimated as the count minus the expected noise maxima;
   :func:`_best_f1_cut`).  Skewed
   pixel noise (few photons per pixel, clipping at zero, photomultiplier gain noise) has a
   heavier upper tail: its skewness is measured in the darkest parts of the image
   (:func:`noise_sd_map`) and the expected rate is corrected (the significance is converted
   to the Gaussian one with the same tail probability under a standardised gamma law of that
   skewness).  (A
   permutation null, the image's own residuals shuffled, was tried and rejected: with puncta
   of about one pixel, as at 0.2 um sampling, a shuffled field reproduces the puncta and the
   step removed a third to half of the real ones.)
8. **Negative control from the image.**  The calibrated rate holds for white pixel noise; the
   light around real puncta is not that clean (the PSF is not exactly Gaussian, saturated or
   crowded spots are misfitted, and widefield haze has texture at the punctum scale).  So
   the expected number of false puncta above ``u`` is also measured on the image itself, as
   the number of punctum-shaped *dips* at least ``u`` deep in the residual (the image minus
   the fitted puncta, seen through the same filter; :func:`_negative_control`): anything in
   the background that is symmetric about its local level dips as often as it peaks, and a
   dip cannot be a punctum.  The step-up of 7 uses the larger of the two estimates (the
   dips counted at each significance linearly between their depths, :func:`_dips_at_least`).  Dips
   in the surround of light that the fit left unexplained (the filter's negative ring around
   an undetected bump), dips better explained by a broad blob, and dips on the centre pixel
   of a more significant punctum (its model error: a Gaussian sampled at pixel centres
   misses the pixel-integrated peak of a punctum narrower than a pixel) do not count, and
   in images that read round the wing's quadrupole (step 6) is taken out of the residual
   first: an astigmatic PSF dips across each punctum as deeply as it peaks along it, and
   those dips had held the threshold of fields of bright puncta above their dim ones (60
   dim spots of aspect 1.15 beside 60 bright ones: 2-41 found, now 44-46).  On
   sim-fish fields of bright spots this removed most false puncta next to bright ones
   (crowded, sigma 100 nm: 148 -> 2 in 4 images; 8-bit: 25 -> 4) at no cost in recall.
   Steps 7 and 8 hold in stacks too (before, stacks kept ``threshold_sd``: pure noise stacks
   gave 4-151 puncta per 256 x 256 field, now 0-1; sim-fish stacks of sparse bright spots 36
   false puncta around 60 spots, now 3).
9. **Hot pixels.**  A pixel 10 noise SDs above its surroundings whose four neighbours carry
   less than 0.15 of its excess is not light through the optics (the neighbours of a
   Gaussian spot's peak carry at least ``exp(-1 / (2 sigma^2))`` of it), once the measured
   punctum sigma is at least 0.6 px: such pixels (a camera's hot pixels, spikes) are
   replaced by the median of their neighbours in a copy before detection.  Two puncta are
   at least 1.5 px apart laterally (resolved maxima have a lower pixel between them).
10. **Stripes.**  Offsets shared by whole rows or columns (a scanner's line noise, a camera's
   column pattern) are noise the pixel noise model does not know: pure Poisson noise whose
   rows carry a gain jitter of 10 % of its level gave 800-1,550 false puncta per 1,000 um^2.
   Where the rows' (or columns') levels differ twice as much as the pixel noise explains,
   their offsets are measured and subtracted first (:mod:`analysis.measure.stripes`; 0.13-0.25
   false puncta per 1,000 um^2 then); other images are detected as they are.
11. **The tissue's edge** (``repair_tissue_edges``, on by default).
   Beside glass (a section's border, a tear) the background blur is
   pulled down along the tissue side, which then stands out as a ridge: a default-SNR phantom
   field with glass beyond a 25.6 um edge got 32-48 false puncta along it (~1.7 per um).  Dark,
   solid regions beyond a significant step from solid tissue are found on the plane
   (:func:`analysis.measure.outside.tissue_edge_regions`; planes only); where the puncta found
   line such an edge (twice the density of the tissue 1-3 um further in, significantly:
   :func:`analysis.measure.outside.edges_lined_with_puncta`), the detection runs again with the
   region and the edge's blur raised by the step to the tissue's background along the edge,
   each pixel keeping its deviation from its local background (read without the puncta: a
   punctum at the edge kept 0.61-0.73 of its height before session 58)
   (:func:`analysis.measure.outside.lift_beyond_edge`; ``attrs['beyond_edge_px']``: the
   region's pixels), with the first detection's noise model, punctum size and threshold.
   Deeper than :data:`EDGE_DEEP_BACKGROUND_RADII` background radii inside the region the first
   detection stands, under a false-discovery step of its own over the region's area (a
   punctum in a dark void, such as a microglial cell's engulfed synapse, is measured against
   the void's own background).  Synapses do not crowd along a border, so
   other edges are left as they are.  Not where the pixel noise is correlated (figure above
   :data:`~analysis.measure.noise.MILD_CORRELATION`, ties, JPEG): there the repair cost
   processed phantom fields up to 0.02 of F1 (``benchmarks/RESULTS.md``, session 57).

All sizes are in micrometres and converted with the pixel size, so the same parameters work
at any sampling.
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy import stats
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from scipy.special import erf, ndtr

from analysis.measure import filters as _filters
from analysis.measure.checks import require_finite, require_pixel_size, require_plane_size
from analysis.measure.matching import PointMatch, match_points  # noqa: F401  (re-exported)
from analysis.measure.hotpixels import MIN_SIGMA_PX as _HOT_MIN_SIGMA_PX
from analysis.measure.hotpixels import hot_pixels as _hot_pixels
from analysis.measure.hotpixels import repaired as _repaired
from analysis.measure.outside import (edges_lined_with_puncta, fill_not_imaged, lift_beyond_edge, not_imaged_mask,
                                      tissue_edge_regions)
from analysis.measure.stripes import remove_stripes
from analysis.measure.noise import (CORRELATED_NOISE, IMMERKAER, JPEG_BLOCKS, JPEG_LATTICE, MAD_TO_SD, MILD_CORRELATION,
                                    TIED_NEIGHBOURS, _gauss_radius, _info_correlation, _noise_at, _noise_model, _row_strips,
                                    jpeg_block_ratio, jpeg_lattice, neighbour_tie_ratio, noise_sd_map, robust_sd)

__all__ = [
    "detect_puncta",
    "match_points",
    "PointMatch",
    "noise_detection_rate",
    "estimate_punctum_radius",
    "robust_sd",
]

log = logging.getLogger(__name__)

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
_IN_FOCUS_SCALES = (0.8, 0.9, 1.0, 1.12, 1.25, 1.4)  # multiples of the nominal punctum size
#: Narrower multiples, fitted where their sigma is at least :data:`_NARROW_MIN_PX` (a pixel: a
#: narrower Gaussian sampled on pixels is close to a single-pixel spike, as skewed noise makes
#: them): puncta in one field differ in size.  With sizes of 0.8-1.4 x the image's nominal
#: size alone, narrower spots were misfitted and the rings of their residuals gave false
#: puncta 5-10 px away (fields of spot sigmas 1-3 px: precision 0.92, big-fish 1.00 on such
#: fields).  A widest size of 1.6 x helped too but cost our high-SNR phantoms precision
#: (benchmarks/RESULTS.md, session 40).
_NARROW_SCALES = (0.5, 0.6, 0.7)
_NARROW_MIN_PX = 1.0
_OUT_OF_FOCUS_SCALES = (2.5,)  # blobs this much broader than a punctum are out-of-focus light
_LIKELIHOOD_GAIN = 4.0  # chi-square gain needed to prefer another size (~p 0.05, 1 d.o.f.)
_SHARP = 0.6  # scale of the candidate (Laplacian of Gaussian) map, x punctum sigma
#: Rate of noise maxima that the detector reports above a significance ``u`` on white Gaussian
#: noise, per pixel: ``exp(a(sigma) + b u + c u^2)``, with ``a`` tabulated against the nominal
#: punctum sigma in pixels (measured by ``benchmarks/calibrate_noise_rate.py``: 16 noise images
#: of 512 x 512 pixels per size, threshold 3, Poisson maximum likelihood; session 40, with the
#: sizes of :data:`_NARROW_SCALES`: at 2 / 3 px 1.45 / 1.7x the count above 4 SDs of the sizes
#: 0.8-1.4 alone, at 0.5-1.3 px the same counts).
_NOISE_RATE_SIGMA_PX = (0.5, 0.8, 1.3, 2.0, 3.0)
_NOISE_RATE_A = (-8.873, -8.259, -9.056, -9.614, -10.357)
_NOISE_RATE_B, _NOISE_RATE_C = 3.3177, -0.88381
#: The rate per voxel of a z-stack is the plane's rate per pixel times ``exp(d + e (u - 4))``,
#: with ``d``, ``e`` tabulated against the axial punctum sigma in planes (measured by
#: ``benchmarks/calibrate_noise_rate.py --stacks`` at the default threshold: 24 white-noise
#: stacks of 256 x 256 pixels and 24-32 planes per size, lateral sigma 1.27 px; within ~20 % of
#: the counts above 4.25-5 SDs, 10-30 % high at 4).  A maximum of a stack must also stand
#: above the planes around it, so the factor falls as a punctum spans more planes (as
#: ``1 / sigma`` beyond the table, by random-field theory); the fit of a 3-D spot has a heavier
#: upper tail than a plane's (``e > 0``).  Stacks at lateral sigmas 0.8-3 px have 0.68-0.97x
#: the tabulated rate above 4.25 SDs; stacks of 5 planes 0.60-1.03x (session 40, with the
#: narrower punctum sizes of :data:`_NARROW_SCALES`).
_NOISE_RATE_Z_SIGMA = (0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)
_NOISE_RATE_Z_D = (-0.833, -0.724, -0.360, -0.713, -0.854, -1.228, -1.490, -1.982)
_NOISE_RATE_Z_E = (0.063, 0.957, 0.859, 1.444, 1.183, 1.079, 1.013, 0.683)
#: Images up to this many pixels per side are processed whole by :func:`detect_puncta` (every
#: image of the simulated studies); larger ones in tiles of at most :data:`LARGE_TILE_PX`.
TILE_PX = 1024
#: Step 11: deeper than this many background radii inside a region beyond the tissue's edge,
#: the detection on the plane as imaged stands (the dark side's false puncta of the step's
#: ridge lie within 2-3 of them: ``edges_lined_with_puncta`` counts them within 4).
EDGE_DEEP_BACKGROUND_RADII = 4.0
#: Largest side of the tiles of images larger than ``tile_px`` (a 2048 x 2048 plane: 3 x 3 tiles
#: of 683 pixels).  Peak resident working memory of detection on the 2048 x 2048 plane of
#: ``benchmarks/bench_memory.py`` (0.2 um pixels): 13.5x the plane's uint16 bytes with tiles of
#: 1024, 7.5x with 768, 5.1x with 512; on 2048 x 2048 phantoms at 0.1 um, tiles of 768 cost
#: ~20 % more CPU than tiles of 1024 (the margins read around each tile), tiles of 512 ~45 %.
LARGE_TILE_PX = 768
#: Rows per strip of the noise model and the punctum size of images larger than ``tile_px``
#: (their results do not depend on it; strips of 1024 rows of a 2048-wide plane peaked at 12x).
_STRIP_PX = 256
_BATCH_BYTES = 4 * 2**20  # image patches of the candidates held at once (32 MB: the peak of a tile)
_PAIR_CHUNK = 1 << 18  # candidate pairs whose overlaps are computed at once (about 30 MB of temporaries per chunk in 3-D)
#: Keep each candidate pair's overlap over the pruning rounds while neither punctum moves or
#: changes size (False: every round computes them all again; the tests compare the two).
_CACHE_PAIR_OVERLAPS = True
_DIP_CHUNK = 8192  # dips whose surrounding bumps are summed at once (negative control)
_PSF_MODEL_ERROR = 0.05  # relative error of the Gaussian PSF model near a bright punctum
_PROTECT = 0.1  # two weak candidates compete for the same light above this correlation
_ONE_SD_BELOW = float(stats.norm.cdf(-1.0))  # quantile one SD below the median of Gaussian noise
_BLOCK_SCALARS = ("n_cand", "noise_factor", "elongated", "quadrupole")  # what :func:`_detect_block` returns for the block as a whole
#: Correlated pixel noise: how many more times at most :func:`_detect_block` detects again with
#: the noise factor measured on the residual of its fit, and the relative change of the factor
#: below which it stops (the factor falls as more puncta and their surrounds are fitted).
_NOISE_FACTOR_PASSES = 4
_NOISE_FACTOR_TOL = 0.03


# --------------------------------------------------------------------------- spot models


def _gauss(d2: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Product over the last axis of 1-D normal densities with variances ``var``.

    (The sums and products over the short last axis are written out: numpy's reductions over
    an axis of 2-3 elements cost several times the arithmetic itself.)"""
    e = d2[..., 0] / var[..., 0]
    norm = 2.0 * np.pi * var[..., 0]
    for ax in range(1, d2.shape[-1]):
        e = e + d2[..., ax] / var[..., ax]
        norm = norm * (2.0 * np.pi * var[..., ax])
    return np.exp(-0.5 * e) / np.sqrt(norm)


def _overlap(
    d2: np.ndarray,
    s_i: np.ndarray,
    s_j: np.ndarray,
    c_i: float | np.ndarray,
    c_j: float | np.ndarray,
    b: np.ndarray,
    weights: tuple[float, ...],
) -> np.ndarray:
    """Closed-form inner products of background-subtracted Gaussian spots at offsets ``d2``.

    A spot ``g = c N(0, s^2)`` seen through the high pass ``H = 1 - G_b`` is
    ``c (N_s - N_{s^2 + b^2})``; products of such terms are sums of Gaussians of summed
    variances ``s_i^2 + s_j^2 + q b^2`` with the binomial ``weights``.
    """
    v = s_i**2 + s_j**2
    b2 = b**2
    return c_i * c_j * sum(w * _gauss(d2, v + q * b2) for q, w in enumerate(weights))


_W_K = (1.0, -2.0, 1.0)  # <H g_i, H g_j>
_W_Q = (1.0, -4.0, 6.0, -4.0, 1.0)  # <H'H g_i, H'H g_j>: noise covariance of the responses


class _Scale:
    """The response of the image to one punctum size: the least-squares numerator
    ``F = <H g, H I>`` and its noise SD (per unit pixel noise), with reflecting edges."""

    def __init__(self, shape: tuple[int, ...], sigma: np.ndarray, b: np.ndarray) -> None:
        self.sigma = np.asarray(sigma, float)
        self.b = np.asarray(b, float)
        self.c = float((2 * np.pi) ** (len(sigma) / 2) * np.prod(self.sigma))
        self.k0 = float(_overlap(np.zeros(len(sigma)), self.sigma, self.sigma, self.c, self.c, self.b, _W_K))
        self.filters = [self.sigma, np.sqrt(self.sigma**2 + self.b**2), np.sqrt(self.sigma**2 + 2 * self.b**2)]
        self.shape = shape
        # per axis: sum_j w_m(i, j) w_n(i, j) for the filter pairs (m, n); inner value elsewhere
        self._profiles = {
            (m, n): [
                _edge_profile(int(shape[ax]), float(self.filters[m][ax]), float(self.filters[n][ax]))
                for ax in range(len(shape))
            ]
            for m in range(3)
            for n in range(m, 3)
        }
        # the same, stacked per axis (pairs x positions), with the pairs' weights
        self._weights = np.array([_W_K[m] * _W_K[n] * (1 if m == n else 2) for m, n in self._profiles])
        self._stacked = [np.stack([prof[ax] for prof in self._profiles.values()]) for ax in range(len(shape))]

    def unit_sd(self, p: np.ndarray | None = None) -> np.ndarray:
        """Noise SD of ``F`` for unit white pixel noise, at points ``p`` (or as a full map)."""
        if p is not None:
            return self._unit_sd_at(p)
        var = None
        for w, prof in zip(self._weights, self._profiles.values()):
            term = prof[0] if len(prof) > 1 else prof[0].copy()  # (profiles are cached)
            for v in prof[1:]:
                term = np.multiply.outer(term, v)
            term *= w
            if var is None:
                var = term
            else:
                var += term
            del term
        # (in place: the same values as c * sqrt(max(var, 0)), one full-size map at a time)
        np.maximum(var, 0.0, out=var)
        np.sqrt(var, out=var)
        var *= self.c
        return var

    def _unit_sd_at(self, p: np.ndarray) -> np.ndarray:
        """:meth:`unit_sd` at points: the edge profiles linearly interpolated, all pairs at once."""
        term = 1.0
        for ax, stack in enumerate(self._stacked):
            x = np.clip(p[:, ax], 0, stack.shape[1] - 1)
            i0 = np.minimum(x.astype(int), stack.shape[1] - 2) if stack.shape[1] > 1 else np.zeros(len(x), int)
            f = x - i0
            term = term * (stack[:, i0] * (1.0 - f) + stack[:, np.minimum(i0 + 1, stack.shape[1] - 1)] * f)
        return self.c * np.sqrt(np.maximum(self._weights @ term, 0.0))

    def response(self, hh: np.ndarray) -> np.ndarray:
        """``F`` as a full map from the doubly background-subtracted image
        ``H'H I = I - 2 G_b I + G_b G_b I`` (``F`` is linear: one Gaussian pass)."""
        out = _filters.gaussian_filter(hh, self.sigma, mode="reflect")
        out *= self.c
        return out


def _strong_pair_radius(scales: list[_Scale], unit: np.ndarray, b: np.ndarray, cut: float,
                        strong: float = 0.01) -> float:
    """Distance (in units of ``unit`` per axis) beyond which no two candidates of the sizes of
    ``scales`` can overlap by more than ``strong`` (``|<H g_i, H g_j>| / sqrt(k0_i k0_j)``, the
    joint fit's test of a pair), at most ``cut``.

    A bound, not an estimate: each Gaussian of the overlap (:func:`_overlap`) is at most its
    peak density times ``exp(-rho^2 alpha / 2)`` at a distance ``rho`` (``alpha`` the smallest
    ``unit^2 / variance`` over the axes); the absolute weights and the largest of these sums
    over every pair of sizes bound ``|overlap|``, and that bound falls with ``rho``.  Pairs
    beyond the returned radius therefore fail the test anyway: querying only those within it
    finds the same strong pairs."""
    bound_terms = []
    for si in scales:
        for sj in scales:
            coef = si.c * sj.c / np.sqrt(si.k0 * sj.k0)
            for q, w in enumerate(_W_K):
                var = si.sigma**2 + sj.sigma**2 + q * b**2
                bound_terms.append((coef * abs(w) / np.sqrt(np.prod(2.0 * np.pi * var)),
                                    float(np.min(unit**2 / var))))
    amp, alpha = (np.array(x) for x in zip(*bound_terms))
    n = len(scales)

    def bound(rho: float) -> float:  # max over size pairs of the sum of their three terms
        return float((amp * np.exp(-0.5 * alpha * rho**2)).reshape(n * n, len(_W_K)).sum(axis=1).max())

    if bound(cut) > strong:
        return cut
    lo, hi = 0.0, cut
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if bound(mid) > strong else (lo, mid)
    return hi


def _responses_at(scales: list[_Scale], patches: np.ndarray, frac: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """``F`` of every scale at sub-pixel points (scales x points), exactly (no interpolation of
    a map): each point's patch of the doubly background-subtracted image ``H'H I`` (centred on
    its nearest pixel, ``radius`` per axis) is contracted with the point's Gaussian kernel of
    each scale (truncated at 4 SD, normalised), one axis at a time.  Scales of equal support
    share one (cropped) patch."""
    sig = np.array([s.sigma for s in scales])  # (scales, ndim)
    support = np.ceil(4 * sig).astype(int)
    out = np.empty((len(scales), len(patches)))
    for r in np.unique(support, axis=0):
        group = np.flatnonzero((support == r).all(axis=1))
        acc = patches[(slice(None),) + tuple(slice(R - ri, R + ri + 1) for R, ri in zip(radius, r))][None]
        for ax in range(len(r)):
            off = np.arange(-r[ax], r[ax] + 1)[None, None, :] - frac[None, :, ax : ax + 1]
            k = np.exp(-(off**2) / (2 * sig[group, ax][:, None, None] ** 2))
            k /= k.sum(axis=2, keepdims=True)
            # contract the first remaining spatial axis of each point's patch, per scale
            if ax == 0:
                acc = np.einsum("pi...,spi->sp...", acc[0], k)
            else:
                acc = np.einsum("spi...,spi->sp...", acc, k)
        out[group] = acc
    return np.array([s.c for s in scales])[:, None] * out


@functools.lru_cache(maxsize=512)
def _edge_profile(n: int, sa: float, sb: float) -> np.ndarray:
    """``sum_j w_a(i, j) w_b(i, j)`` for 1-D Gaussian filters with reflecting edges (cached:
    images of one size share them; callers must not modify the result)."""
    w = int(np.ceil(4 * max(sa, sb))) + 2
    m = min(n, 2 * w + 1)
    eye = np.eye(m)
    small = (
        ndi.gaussian_filter1d(eye, sa, axis=0, mode="reflect") * ndi.gaussian_filter1d(eye, sb, axis=0, mode="reflect")
    ).sum(axis=0)
    if m == n:
        return small
    out = np.full(n, small[w])
    out[:w] = small[:w]
    out[n - w :] = small[m - w :]
    return out


def _padded(level: np.ndarray, radius: np.ndarray) -> np.ndarray | None:
    """``level`` padded by ``radius + 3`` pixels per axis (edges reflected like scipy's
    ``"reflect"``), as :func:`_patches` reads it; None for images smaller than the pad."""
    pad = np.asarray(radius) + 3
    if not (np.array(level.shape) >= pad).all():
        return None
    return np.pad(level, [(int(p), int(p)) for p in pad], mode="symmetric")


def _patches(level: np.ndarray, centres: np.ndarray, radius: np.ndarray, padded: np.ndarray | None = None) -> np.ndarray:
    """Patches of ``(2 r + 1)`` pixels per axis around integer centres (edges reflected, like
    scipy's ``"reflect"``), from a padded copy of ``level`` (:func:`_padded`, made here unless
    given; centres up to 3 pixels outside the image allowed; further out, or for images
    smaller than the pad, indices are reflected once and clipped)."""
    pad = np.asarray(radius) + 3
    shape = np.array(level.shape)
    if len(centres) and (shape >= pad).all() and (centres >= -3).all() and (centres <= shape + 2).all():
        if padded is None:
            padded = _padded(level, radius)
        windows = np.lib.stride_tricks.sliding_window_view(padded, tuple(2 * int(r) + 1 for r in radius))
        return windows[tuple((centres + 3).T)]
    idx = []
    for ax, r in enumerate(radius):
        n = level.shape[ax]
        i = centres[:, ax : ax + 1] + np.arange(-r, r + 1)[None, :]
        i = np.where(i < 0, -i - 1, i)  # half-sample symmetric, like scipy's 'reflect'
        i = np.where(i >= n, 2 * n - 1 - i, i)
        idx.append(np.clip(i, 0, n - 1))
    out_shape = (len(centres),) + tuple(2 * r + 1 for r in radius)
    nd = len(radius)
    sel = tuple(idx[ax].reshape((len(centres),) + (1,) * ax + (-1,) + (1,) * (nd - ax - 1)) for ax in range(nd))
    return np.broadcast_to(level[sel], out_shape)


def _subpixel(z: np.ndarray, peaks: np.ndarray, edges: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Quadratic (parabola) refinement of integer peak positions along each axis (kept within
    ``edges``, see :func:`_within_edges`)."""
    out = peaks.astype(float)
    f0 = z[tuple(peaks.T)]
    for ax in range(z.ndim):
        lo = peaks.copy()
        hi = peaks.copy()
        lo[:, ax] = np.clip(lo[:, ax] - 1, 0, z.shape[ax] - 1)
        hi[:, ax] = np.clip(hi[:, ax] + 1, 0, z.shape[ax] - 1)
        fm, fp = z[tuple(lo.T)], z[tuple(hi.T)]
        den = fm - 2 * f0 + fp
        with np.errstate(divide="ignore", invalid="ignore"):
            off = np.where(den < 0, 0.5 * (fm - fp) / den, 0.0)
        out[:, ax] += np.clip(off, -0.5, 0.5)
    return _within_edges(out, edges)


def _extrema(z: np.ndarray, size: tuple[int, ...], mask: np.ndarray, lowest: bool = False) -> np.ndarray:
    """Pixels (as :func:`numpy.argwhere`, in its order) where ``mask`` holds and ``z`` is the
    largest (``lowest``: the smallest) value of the window of ``size`` pixels centred there, the
    window clipped at the edges: exactly ``np.argwhere(mask & (z == ndi.maximum_filter(z,
    size, mode="nearest")))`` (or ``"reflect"``: the same windows), without a full-size filtered
    copy.  A pixel must first beat its axial neighbours (whole-array slices), and the few left
    are compared with the rest of their window, dropping those that fail at each offset."""
    m = np.array(mask, dtype=bool)
    checked = []
    for ax in range(z.ndim):
        if z.shape[ax] < 2 or size[ax] < 3:
            continue
        a = tuple(slice(1, None) if d == ax else slice(None) for d in range(z.ndim))
        b = tuple(slice(None, -1) if d == ax else slice(None) for d in range(z.ndim))
        if lowest:
            m[a] &= z[a] <= z[b]
            m[b] &= z[b] <= z[a]
        else:
            m[a] &= z[a] >= z[b]
            m[b] &= z[b] >= z[a]
        for o in (-1, 1):
            checked.append(tuple(o if d == ax else 0 for d in range(z.ndim)))
    pts = np.argwhere(m)
    del m
    flat = np.ascontiguousarray(z).ravel()
    top = np.array(z.shape) - 1
    half = np.array(size) // 2
    step = np.cumprod((1,) + z.shape[:0:-1])[::-1]  # flat index per unit step along each axis
    fi = pts @ step
    v = flat[fi]
    # windows within the array: flat offsets; windows that reach an edge: clipped coordinates
    inner = np.all((pts >= half) & (pts <= top - half), axis=1)
    kept = []
    for sel, clipped in ((np.flatnonzero(inner), False), (np.flatnonzero(~inner), True)):
        for off in itertools.product(*(range(-(n // 2), n // 2 + 1) for n in size)):
            if not len(sel):
                break
            if not any(off) or off in checked:
                continue
            w = flat[np.clip(pts[sel] + off, 0, top) @ step] if clipped else flat[fi[sel] + np.dot(off, step)]
            sel = sel[v[sel] <= w] if lowest else sel[v[sel] >= w]
        kept.append(sel)
    sel = np.sort(np.concatenate(kept))
    return pts[sel]


def _image_edges(shape: tuple[int, ...], region: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """Limits of puncta positions in a block, per axis (a stack's planes too): the outermost
    pixel centres where the block's edge is the image's edge (no limit where it is a tile's
    margin; tiles never cut the planes)."""
    lo = np.zeros(len(shape))
    hi = np.array(shape, float) - 1.0
    if region is not None:
        lo = np.where(np.isfinite(region[0]), -np.inf, lo)
        hi = np.where(np.isfinite(region[1]), np.inf, hi)
    return lo, hi


def _within_edges(p: np.ndarray, edges: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Positions kept within ``edges`` (see :func:`_image_edges`).  At a reflecting image edge a
    punctum on the outermost pixel (or plane) and its mirror image are one blob centred on the
    edge itself, so the sub-pixel steps would carry it half a pixel or more outward, where the
    model no longer fits the light and the punctum falls outside the field (sim-fish's spots on
    edge pixels were missed, and every one of its spots on the first or last plane of a
    stack); on the outermost pixel the model (punctum plus mirror image) is the data."""
    if edges is None or len(p) == 0:
        return p
    n = len(edges[0])
    out = p.copy()
    out[:, -n:] = np.clip(out[:, -n:], edges[0], edges[1])
    return out


def _fold_1d(x: np.ndarray, p: np.ndarray, e: np.ndarray, kap: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """One axis of a Gaussian term of :func:`_overlap` for a punctum next to a reflecting edge.

    A filter of variance ``kap`` at ``x`` applied with reflecting edges to a Gaussian punctum
    of variance ``s2`` at ``p`` (inside the image or beyond its edge) that is imaged only on
    the image's side of the edge line ``e``: the filter sees that part and its mirror image,
    ``N(x - p) Phi(z(x)) + N(x' - p) Phi(z(x'))``
    with ``x' = 2 e - x`` and ``Phi(z)`` the fraction of the light the filter gathers from
    ``x`` that lies inside the image (normal densities of variance ``kap + s2``).  Where ``e``
    is NaN (no edge near) this is the plain ``N(x - p)``."""
    v = kap + s2
    plain = np.exp(-0.5 * (x - p) ** 2 / v) / np.sqrt(2.0 * np.pi * v)
    has = np.isfinite(e)
    if not np.any(has):
        return plain
    e0 = np.where(has, e, 0.0)
    sd = np.sqrt(kap * s2 / v)
    below = x < e0  # the image (where the filter is) lies on this side of the edge line
    folded = 0.0
    for xx in (x, 2.0 * e0 - x):
        mu = (xx * s2 + p * kap) / v  # where the light the filter gathers at xx comes from
        frac = ndtr(np.where(below, e0 - mu, mu - e0) / sd)
        folded = folded + np.exp(-0.5 * (xx - p) ** 2 / v) / np.sqrt(2.0 * np.pi * v) * frac
    return np.where(has, folded, plain)


def _folded_overlap(
    x: np.ndarray, p: np.ndarray, e: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, c_a, c_b, b: np.ndarray
) -> np.ndarray:
    """:func:`_overlap` (``weights`` ``_W_K``) of a size-``s_a`` response at ``x`` with a size-``s_b``
    punctum at ``p`` whose nearest reflecting edge line per axis is ``e`` (NaN: none near; see
    :func:`_edge_lines`): the response a punctum near an image edge really makes, as the
    filters reflect the image at its edges (:func:`_fold_1d` per axis).  With no edge it equals
    :func:`_overlap` at ``d2 = (x - p)^2``."""
    total = 0.0
    for q, w in enumerate(_W_K):
        kap = s_a**2 + q * b**2
        s2 = s_b**2
        term = 1.0
        for ax in range(np.shape(x)[-1]):
            term = term * _fold_1d(x[..., ax], p[..., ax], e[..., ax], kap[..., ax], s2[..., ax])
        total = total + w * term
    return c_a * c_b * total


def _edge_lines(p: np.ndarray, edges: tuple[np.ndarray, np.ndarray] | None, reach: np.ndarray) -> np.ndarray:
    """Per punctum and axis, the reflecting edge line (half a pixel, or plane, beyond the
    outermost one) nearer than ``reach`` (pixels, per axis), NaN where there is none (far from
    the edges, a tile's margin).  The filters see a punctum within that reach of an image edge
    together with its mirror image across that line (:func:`_folded_overlap`)."""
    e = np.full(p.shape, np.nan)
    if edges is None or len(p) == 0:
        return e
    ndim = p.shape[1]
    n = len(edges[0])
    for k in range(n):
        ax = ndim - n + k
        lo, hi = edges[0][k] - 0.5, edges[1][k] + 0.5
        d_lo, d_hi = p[:, ax] - lo, hi - p[:, ax]
        line = np.where(d_lo <= d_hi, lo, hi)
        e[:, ax] = np.where(np.minimum(d_lo, d_hi) < np.broadcast_to(reach, p.shape)[:, ax], line, np.nan)
    return e


def _clipped_light_fraction(image: np.ndarray, pos: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Per punctum, the fraction of its light lost to the detector's saturation (0 when its
    centre pixel is not clipped; planes only, 0 for stacks).

    A Gaussian punctum of peak ``A`` clipped at level ``L`` has a plateau of ``n`` pixels with
    ``A / L = exp(n / (2 pi sx sy))``, and loses ``1 - (1 + ln(A/L)) L / A`` of its light above
    the plateau; ``n`` is the connected patch of pixels at the saturation level under the
    punctum (:func:`analysis.measure.quality.saturated_mask`).  The fitted Gaussian misses
    that light, so near a clipped punctum the model error is that large."""
    from analysis.measure.quality import saturated_mask  # (quality imports this module)

    out = np.zeros(len(pos))
    img = np.asarray(image)
    if img.ndim != 2 or len(pos) == 0 or not np.issubdtype(img.dtype, np.number):
        return out
    at = saturated_mask(img)
    if not at.any():
        return out
    lab, _ = ndi.label(at, np.ones((3, 3), bool))
    size = np.bincount(lab.ravel())
    size[0] = 0
    ij = np.clip(np.rint(pos[:, -2:]).astype(int), 0, np.array(img.shape) - 1)
    # the patch under the centre pixel or one of its 8 neighbours
    patch = ndi.maximum_filter(lab, size=3, mode="constant")[ij[:, 0], ij[:, 1]]
    u = size[patch] / (2.0 * np.pi * sigma[:, -2] * sigma[:, -1])  # ln(A / L)
    return np.where(patch > 0, 1.0 - (1.0 + u) * np.exp(-u), 0.0)


def _render(
    shape: tuple[int, ...], pos: np.ndarray, amp: np.ndarray, sigma: np.ndarray, radius: np.ndarray | None = None
) -> np.ndarray:
    """Sum of Gaussian spots (peak ``amp``, per-axis ``sigma``) rendered on the pixel grid, each
    within ``radius`` pixels per axis of its nearest pixel (default: 4 times the largest sigma)."""
    shape = tuple(int(n) for n in shape)
    if len(pos) == 0:
        return np.zeros(shape)
    ndim = len(shape)
    r = np.ceil(4 * sigma.max(axis=0)).astype(int) if radius is None else np.asarray(radius, int)
    centre = np.rint(pos).astype(int)
    # accumulate on a canvas padded to hold every box (no bounds checks), then crop
    lo = r + np.maximum(0, -centre.min(axis=0))
    hi = r + np.maximum(0, centre.max(axis=0) - (np.array(shape) - 1))
    padded = tuple(int(n + a + b) for n, a, b in zip(shape, lo, hi))
    strides = np.cumprod((1,) + padded[:0:-1])[::-1]
    box = sum(np.arange(2 * r[ax] + 1).reshape((1,) * ax + (-1,) + (1,) * (ndim - ax - 1)) * strides[ax]
              for ax in range(ndim))
    start = ((centre - r + lo) @ strides).reshape((-1,) + (1,) * ndim)
    # spots in batches (the boxes of all spots of a stack take GBs), added in order: the same
    # sums as one bincount over all of them
    n_box = int(np.prod(2 * r + 1))
    batch = max(1, (4 << 20) // n_box)
    canvas = None
    for b0 in range(0, len(pos), batch):
        sl = slice(b0, b0 + batch)
        # separable: one 1-D profile per spot and axis, multiplied out over the spot's box
        val = amp[sl].reshape((-1,) + (1,) * ndim)
        for ax in range(ndim):
            off = centre[sl, ax : ax + 1] + np.arange(-r[ax], r[ax] + 1)[None, :] - pos[sl, ax : ax + 1]
            pr = np.exp(-(off**2) / (2 * sigma[sl, ax : ax + 1] ** 2))
            val = val * pr.reshape((len(pr),) + (1,) * ax + (-1,) + (1,) * (ndim - ax - 1))
        if b0 == 0 and len(pos) <= batch:
            canvas = np.bincount((start[sl] + box).ravel(), val.ravel(), minlength=int(np.prod(padded)))
        else:
            if canvas is None:
                canvas = np.zeros(int(np.prod(padded)))
            np.add.at(canvas, (start[sl] + box).ravel(), val.ravel())
    canvas = canvas.reshape(padded)
    return canvas[tuple(slice(int(a), int(a) + n) for n, a in zip(shape, lo))]


def _split_clusters(
    n: int, i: np.ndarray, j: np.ndarray, corr: np.ndarray | None, max_cluster: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters of overlapping candidates that :func:`_solve_clusters` fits jointly.

    The connected components of the overlap graph (``n`` candidates, pairs ``i, j``); those
    larger than ``max_cluster`` (long chains of puncta along a dendrite) are split by ignoring
    their weakest overlaps (|correlation| below 0.03, then 0.1, 0.3), which keeps the cost
    linear in the number of puncta.  Returns the pairs kept (boolean mask), each candidate's
    cluster label and the cluster sizes.
    """
    use = np.ones(len(i), bool)
    n_comp, lab = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    sizes = np.bincount(lab, minlength=n_comp)
    if corr is not None:
        for weakest in (0.03, 0.1, 0.3, np.inf):
            big = sizes[lab] > max_cluster
            if not big.any():
                break
            use &= ~(big[i] & (np.abs(corr) < weakest))
            n_comp, lab = connected_components(coo_matrix((np.ones(int(use.sum())), (i[use], j[use])), shape=(n, n)),
                                               directed=False)
            sizes = np.bincount(lab, minlength=n_comp)
    return use, lab, sizes


def _solve_clusters(
    n: int,
    i: np.ndarray,
    j: np.ndarray,
    m: np.ndarray,
    q: np.ndarray,
    kij: np.ndarray,
    qij: np.ndarray,
    y: np.ndarray,
    corr: np.ndarray | None = None,
    max_cluster: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares amplitudes ``M^-1 y`` and their variances ``diag(M^-1 Q M^-1)``,
    one connected cluster of overlapping candidates at a time (batched by cluster size).

    Clusters larger than ``max_cluster`` are split first (:func:`_split_clusters`; not when
    ``corr`` is None: the caller passes clusters already split).
    """
    a = y / m
    va = q / m**2
    if len(i) == 0:
        return a, va
    use, lab, sizes = _split_clusters(n, i, j, corr, max_cluster)
    i, j, kij, qij = i[use], j[use], kij[use], qij[use]
    n_comp = len(sizes)
    order = np.argsort(lab, kind="stable")
    loc = np.empty(n, int)
    loc[order] = np.arange(n) - np.repeat(np.r_[0, np.cumsum(sizes)[:-1]], sizes)
    # clusters grouped by size (in label order), their members in index order, and their
    # pairs, so that each size is one contiguous slice
    by_size = np.lexsort((np.arange(n), lab, sizes[lab]))
    comp_order = np.lexsort((np.arange(n_comp), sizes))
    n_of_size = np.bincount(sizes)
    first_comp = np.r_[0, np.cumsum(n_of_size)[:-1]]
    row = np.empty(n_comp, int)
    row[comp_order] = np.arange(n_comp) - first_comp[sizes[comp_order]]
    e_size = sizes[lab[i]]
    e_order = np.argsort(e_size, kind="stable")
    e_bounds = np.searchsorted(e_size[e_order], np.arange(len(n_of_size) + 1))
    m_bounds = np.r_[0, np.cumsum(n_of_size * np.arange(len(n_of_size)))]
    for size in np.flatnonzero(n_of_size[2:]) + 2:
        members = by_size[m_bounds[size] : m_bounds[size + 1]].reshape(-1, size)
        diag = np.arange(size)
        mm = np.zeros((len(members), size, size))
        qq = np.zeros((len(members), size, size))
        mm[:, diag, diag] = m[members]
        qq[:, diag, diag] = q[members]
        sel = e_order[e_bounds[size] : e_bounds[size + 1]]
        c, li, lj = row[lab[i[sel]]], loc[i[sel]], loc[j[sel]]
        mm[c, li, lj] = mm[c, lj, li] = kij[sel]
        qq[c, li, lj] = qq[c, lj, li] = qij[sel]
        # a tiny ridge: two candidates on the same spot (identical columns) must not make the
        # system singular (their amplitudes then share the light equally)
        mm[:, diag, diag] *= 1.0 + 1e-9
        minv = np.linalg.inv(mm)
        a[members] = (minv @ y[members][:, :, None])[:, :, 0]
        va[members] = ((minv @ qq) * minv).sum(axis=2)  # diag(M^-1 Q M^-1) (M symmetric)
    return a, va


def _refine(
    p: np.ndarray,
    amp: np.ndarray,
    sig: np.ndarray,
    cc: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    f_nom: np.ndarray,
    nominal: _Scale,
    bg: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
    beyond: float = 0.0,
) -> np.ndarray:
    """Sub-pixel centres from the deblended nominal response (the response map minus the
    neighbours' fitted models) at each centre pixel and its axial neighbours, by fitting a
    parabola to the logarithm along each axis (exact for a Gaussian peak).  Within two
    response widths of a reflecting image edge, the centre along that axis is instead the
    least-squares fit of the punctum's folded profile (:func:`_folded_overlap`, at its fitted
    size) to 9 deblended probes across it: a 0.5-pixel grid within 2 pixels, then a 0.1-pixel
    grid within half a pixel of its best point, refined by a parabola through the best point
    and its neighbours.  Centres are kept within the outermost pixels (``edges``), or up to
    ``beyond`` pixels past them laterally (where a punctum outside the field is placed)."""
    n, ndim = p.shape
    c = np.rint(p).astype(int)
    shape = np.array(f_nom.shape)
    lo_c = np.zeros(ndim)
    hi_c = shape - 1.0
    lo_c[-2:] -= beyond
    hi_c[-2:] += beyond
    limits = edges
    if edges is not None and beyond:
        lat = np.zeros(len(edges[0]))
        lat[-2:] = beyond
        limits = (edges[0] - lat, edges[1] + lat)
    vals = np.empty((n, ndim, 3))

    def neighbours(at: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Neighbour ``src``'s model response at the probe points of ``dst``."""
        d2 = (at[dst] - p[src]) ** 2
        model = amp[src] * _overlap(d2, nominal.sigma, sig[src], nominal.c, cc[src], bg, _W_K)
        return np.bincount(dst, model, minlength=n)

    for ax in range(ndim):
        for o in (-1, 0, 1):
            x = c.copy()
            x[:, ax] += o
            x = np.clip(x, 0, shape - 1)
            v = f_nom[tuple(x.T)].astype(float)
            if len(i):
                v -= neighbours(x, j, i) + neighbours(x, i, j)
            vals[:, ax, o + 1] = v
    with np.errstate(divide="ignore", invalid="ignore"):
        positive = (vals > 0).all(axis=2)
        lv = np.where(positive[..., None], np.log(np.where(vals > 0, vals, 1.0)), vals)
        den = lv[..., 0] - 2 * lv[..., 1] + lv[..., 2]
        off = np.where(den < 0, 0.5 * (lv[..., 0] - lv[..., 2]) / den, 0.0)
    out = c + np.clip(np.nan_to_num(off), -1.0, 1.0)
    # near an image edge the filters see the punctum with its mirror image (they reflect the
    # image there): a parabola finds the centre of the two, on or near the edge; instead the
    # centre across that edge is the one whose folded profile fits the deblended response
    # along a line of probes best (least squares, at its fitted size)
    e_all = _edge_lines(p, edges, 2.0 * np.sqrt(nominal.sigma**2 + sig**2))
    probes = np.arange(-4, 5)
    for ax in range(ndim):
        near = np.flatnonzero(np.isfinite(e_all[:, ax]))
        if len(near) == 0:
            continue
        x = np.repeat(c[near][:, None, :], len(probes), axis=1)
        x[:, :, ax] += probes
        valid = (x[:, :, ax] >= 0) & (x[:, :, ax] <= shape[ax] - 1)
        x = np.clip(x, 0, shape - 1)  # (m, P, ndim)
        v = f_nom[tuple(x.reshape(-1, ndim).T)].astype(float).reshape(len(near), len(probes))
        if len(i):
            # minus the neighbours' fitted models at the probes (only the pairs with a punctum
            # near the edge: ``neighbours`` at each probe of those)
            is_near = np.zeros(n, bool)
            is_near[near] = True
            to_i, to_j = is_near[i], is_near[j]
            at = c.copy()
            for col in range(len(probes)):
                at[near] = x[:, col]
                v[:, col] -= (neighbours(at, j[to_i], i[to_i]) + neighbours(at, i[to_j], j[to_j]))[near]
        v = v * valid
        pn, en = p[near], e_all[near]
        s2 = sig[near] ** 2
        # _folded_overlap (up to c_nom c_i), its Gaussian terms stacked on a first axis, with
        # the factor of the other axes (the same at every grid point) taken once
        q_ = np.arange(len(_W_K)).reshape(-1, 1, 1)
        w_ = np.asarray(_W_K).reshape(-1, 1, 1, 1)
        other = np.ones((len(_W_K),) + x.shape[:2])
        for a2 in range(ndim):
            if a2 != ax:
                other = other * _fold_1d(x[None, :, :, a2], pn[None, :, None, a2], en[None, :, None, a2],
                                         nominal.sigma[a2] ** 2 + q_ * bg[a2] ** 2, s2[None, :, None, a2])
        other = w_ * (other * valid)[:, :, None, :]  # (terms, m, 1, P)
        kap = (nominal.sigma[ax] ** 2 + q_ * bg[ax] ** 2)[..., None]

        def gain_at(grid: np.ndarray) -> np.ndarray:
            """|v|^2 minus the residual sum of squares of the best amplitude, per centre."""
            along = _fold_1d(x[None, :, None, :, ax], grid[None, :, :, None], en[None, :, None, None, ax], kap,
                             s2[None, :, None, None, ax])
            model = (other * along).sum(axis=0)  # (m, G, P)
            vm = (v[:, None, :] * model).sum(axis=2)
            mm = (model * model).sum(axis=2)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where((vm > 0) & (mm > 0), vm * vm / mm, -np.inf)

        rows = np.arange(len(near))
        # coarse (0.5 px within 2 px), then fine (0.1 px within half a pixel of the best)
        coarse = np.clip(c[near][:, ax, None] + np.linspace(-2.0, 2.0, 9)[None], lo_c[ax], hi_c[ax])
        start = coarse[rows, gain_at(coarse).argmax(axis=1)]
        grid = np.clip(start[:, None] + np.linspace(-0.5, 0.5, 11)[None], lo_c[ax], hi_c[ax])
        gain = gain_at(grid)
        best = gain.argmax(axis=1)
        ok = np.isfinite(gain[rows, best])
        # between grid points: the vertex of the parabola through the best and its neighbours
        # (the same centre, to rounding, for a flipped image, whose grid is the mirror image)
        inner = (best > 0) & (best < grid.shape[1] - 1)
        b_in = np.where(inner, best, 1)
        g0, g1, g2 = gain[rows, b_in - 1], gain[rows, b_in], gain[rows, b_in + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            den = g0 - 2.0 * g1 + g2
            frac = np.where(inner & np.isfinite(den) & (den < 0), 0.5 * (g0 - g2) / den, 0.0)
        step = grid[rows, np.minimum(best + 1, grid.shape[1] - 1)] - grid[rows, best]
        step = np.where(inner, step, 0.0)
        out[near[ok], ax] = (grid[rows, best] + np.clip(np.nan_to_num(frac), -0.5, 0.5) * step)[ok]
    return _within_edges(out, limits)


# --------------------------------------------------------------------------- detection


_RADIUS_RANGE_UM = (0.1, 0.6)  # HWHM of a punctum: diffraction limit .. large widefield puncta
_SIZE_SPOT_SD = 8.0  # spots measured for the size stand this many noise SDs above the background
_SIZE_MIN_SPOTS = 5  # fewer such spots: no estimate
_NOMINAL_RADIUS_UM = 0.15  # a confocal PSD95 punctum (used when the image shows no spot)
_AXIAL_RANGE_UM = (0.2, 2.0)  # axial HWHM: a high-NA confocal .. a two-photon or low-NA widefield section
_NOMINAL_AXIAL_RADIUS_UM = 0.35  # a confocal punctum (axial FWHM ~0.7 um), when the stack shows no spot
_AXIAL_MIN_PLANES = 5  # thinner stacks: no axial profile to measure
_SEPARATION_PER_RADIUS = 0.25 / 0.15  # confocal resolution (0.25 um) per punctum radius
#: Smallest lateral separation of two puncta, pixels: two maxima resolved on the pixel grid
#: have a lower pixel between them (2 px apart); 1.5 leaves room for sub-pixel centring.  It
#: binds only where puncta are narrower than about a pixel (0.3 um pixels), where the model
#: error of a bright punctum otherwise leaves a second maximum in the next pixel.
_MIN_SEPARATION_PX = 1.5


def noise_detection_rate(u: np.ndarray | float, sigma_px: float, axial_sigma_px: float | None = None) -> np.ndarray:
    """Expected number of puncta per pixel (per voxel of a stack) that :func:`detect_puncta`
    reports on pure white Gaussian noise with a significance above ``u``, for a nominal punctum
    sigma of ``sigma_px`` pixels (and ``axial_sigma_px`` planes in a stack, at the default
    threshold of 4); a calibration of the method, see ``_NOISE_RATE_*``.

    Examples
    --------
    Noise maxima above 4 SDs per 100 x 100 pixels, for a punctum sigma of 1.3 pixels:

    >>> round(float(noise_detection_rate(4.0, 1.3) * 1e4), 1)
    0.5

    In a stack, per 100 x 100 pixels of each plane, when a punctum's axial sigma spans two
    planes (a maximum must stand above the planes around it too):

    >>> round(float(noise_detection_rate(4.0, 1.3, axial_sigma_px=2.0) * 1e4), 2)
    0.14
    """
    log_s = np.log(np.asarray(_NOISE_RATE_SIGMA_PX))
    ls = float(np.log(sigma_px))
    a = np.interp(ls, log_s, _NOISE_RATE_A)
    if ls > log_s[-1]:  # coarser than the table: maxima scale with the area of a punctum
        a = _NOISE_RATE_A[-1] - 2.0 * (ls - log_s[-1])
    u = np.asarray(u, float)
    log_rate = a + _NOISE_RATE_B * u + _NOISE_RATE_C * u**2
    if axial_sigma_px is not None:
        log_z = np.log(np.asarray(_NOISE_RATE_Z_SIGMA))
        lz = float(np.log(axial_sigma_px))
        d = np.interp(lz, log_z, _NOISE_RATE_Z_D)
        e = np.interp(lz, log_z, _NOISE_RATE_Z_E)
        if lz > log_z[-1]:  # finer planes than the table: maxima scale with 1 / axial sigma
            d = _NOISE_RATE_Z_D[-1] - (lz - log_z[-1])
        log_rate = log_rate + d + e * (u - 4.0)
    return np.exp(log_rate)


def _gaussian_equivalent(u: np.ndarray, skew: float) -> np.ndarray:
    """The Gaussian significance with the same upper-tail probability as ``u`` standard
    deviations of a unit-variance variable with skewness ``skew`` (a standardised gamma
    variable: monotone in ``u`` for any skewness, unlike the Cornish-Fisher expansion, and
    Gaussian as the skewness goes to 0).  Not below 2 (the calibrated noise rate holds from
    about there up).

    Examples
    --------
    >>> _gaussian_equivalent(np.array([4.0]), 0.0).round(2).tolist()
    [4.0]
    >>> bool(_gaussian_equivalent(np.array([4.0]), 0.5)[0] < 3.5)  # a heavier upper tail
    True
    """
    u = np.asarray(u, float)
    if skew < 1e-3:
        return np.maximum(u, 2.0)
    k = 4.0 / skew**2
    tail = stats.gamma.logsf(k + u * np.sqrt(k), k)
    with np.errstate(under="ignore"):
        p = np.exp(tail)
    return np.clip(stats.norm.isf(p), 2.0, 40.0)  # (p underflowing to 0: far beyond any noise)


def _white_noise_gain(sigma: float, half: int) -> float:
    """SD of white noise of SD 1 after :func:`scipy.ndimage.gaussian_filter` of ``sigma`` (YX),
    from the filtered unit impulse at the centre of a ``2 * half + 1`` square."""
    delta = np.zeros((2 * half + 1,) * 2)
    delta[half, half] = 1.0
    return float(np.sqrt((ndi.gaussian_filter(delta, sigma) ** 2).sum()))


def _gaussian_at(img: np.ndarray, sigma: float, pts: np.ndarray, batch: int = 4096) -> np.ndarray:
    """``ndi.gaussian_filter(img, sigma)`` of a YX array (mode ``"reflect"``) at integer points
    ``pts``: the rows are filtered whole, the columns at the points only (the same kernel; equal
    to rounding)."""
    radius = _gauss_radius(sigma)
    n = img.shape[1]
    if radius >= n:
        return _filters.gaussian_filter(img, sigma)[tuple(pts.T)]
    cols = _filters.gaussian_filter1d(img, sigma, axis=0)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 / (sigma * sigma) * x**2)
    w /= w.sum()
    out = np.empty(len(pts))
    for b in range(0, len(pts), batch):
        p = pts[b : b + batch]
        j = p[:, 1:2] + x[None, :]
        j = np.where(j < 0, -j - 1, j)  # half-sample symmetric, like scipy's "reflect"
        j = np.where(j >= n, 2 * n - 1 - j, j)
        out[b : b + batch] = cols[p[:, 0:1], j] @ w
    return out


def _mirror_windows(stack: np.ndarray, plane: np.ndarray, pts: np.ndarray, R: int) -> np.ndarray:
    """Windows of ``2 R + 1`` pixels around ``pts`` (YX) in the given planes of a ZYX stack, as
    float64, edges mirrored like ``np.pad(..., mode="reflect")`` (edge pixel not repeated)."""
    off = np.arange(-R, R + 1)
    idx = []
    for ax in (0, 1):
        n = stack.shape[ax + 1]
        i = pts[:, ax : ax + 1] + off[None, :]
        i = np.abs(i)  # i < 0 -> -i
        i = np.where(i > n - 1, 2 * (n - 1) - i, i)
        idx.append(np.clip(i, 0, n - 1))
    return np.asarray(stack[plane[:, None, None], idx[0][:, :, None], idx[1][:, None, :]], dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _surround_ratio_cached(sigma: tuple[float, ...], b: tuple[float, ...]) -> float:
    r = tuple(int(np.ceil(4 * max(s_, 1.0) + 8 * b_)) for s_, b_ in zip(sigma, b))  # (each axis its own reach)
    delta = np.zeros(tuple(2 * r_ + 1 for r_ in r))
    delta[r] = 1.0
    spot = ndi.gaussian_filter(delta, sigma, mode="constant")
    b1 = ndi.gaussian_filter(spot, b, mode="constant")
    resp = ndi.gaussian_filter(spot - 2.0 * b1 + ndi.gaussian_filter(b1, b, mode="constant"), sigma, mode="constant")
    return float(-resp.min() / resp.max())


def _surround_ratio(scale: "_Scale") -> float:
    """Depth of the negative surround of a punctum's nominal response (the high pass leaves a
    ring below zero around it) as a fraction of its peak (~0.14 in a plane for the default
    background radius of twice the punctum radius)."""
    return _surround_ratio_cached(tuple(float(v) for v in scale.sigma), tuple(float(v) for v in scale.b))


def _kernel_skew_factor(scale: "_Scale") -> float:
    """``sum w^3 / (sum w^2)^(3/2)`` of the response kernel of a scale (2-D or 3-D): the
    skewness of the response per unit skewness of independent pixel noise."""
    r = np.ceil(4 * np.maximum(scale.filters[2], 1.0)).astype(int)  # (each axis its own reach)
    delta = np.zeros(tuple(2 * r + 1))
    delta[tuple(r)] = 1.0
    b1 = ndi.gaussian_filter(delta, scale.b, mode="constant")
    hh = delta - 2.0 * b1 + ndi.gaussian_filter(b1, scale.b, mode="constant")
    w = ndi.gaussian_filter(hh, scale.sigma, mode="constant")
    return float(np.sum(w**3) / np.sum(w**2) ** 1.5)


def estimate_punctum_radius(
    image: np.ndarray,
    pixel_size_um: float,
    *,
    radius_range_um: tuple[float, float] = _RADIUS_RANGE_UM,
    n_points: int = 200,
    n_sizes: int = 14,
    noise_sd: np.ndarray | None = None,
    noise_model: dict[str, float] | None = None,
    strip_px: int = 1024,
) -> float:
    """Apparent punctum radius (half width at half maximum, um) measured on the image itself.

    The ``n_points`` most prominent local maxima of the lightly smoothed image (at least
    8 local noise SDs above a broad background, one per neighbourhood of the largest size,
    away from the border; at least 5 of them) are each fitted by least squares with a pixel-integrated Gaussian plus
    a constant background, for sizes on a log grid over ``radius_range_um``; each spot's
    best size is refined by a parabola in log size and the median over spots is returned,
    leaving out spots whose best size is the largest of the range (structures broader than
    any punctum, such as haze or a dendrite, which can be most of the spots at low SNR) while
    at least 5 others remain.
    The brightest spots are the in-focus ones and the least disturbed by noise, so the
    median is close to the optical size of a punctum (PSF convolved with the synapse).

    Parameters
    ----------
    image : ndarray
        YX or ZYX intensities (a stack is measured on its maximum projection).
    pixel_size_um : float
        Lateral pixel size.
    radius_range_um : (float, float)
        Physically plausible HWHM: from the diffraction limit of a high-NA objective (0.1 um)
        to a large widefield punctum (0.6 um).  The lower end is at least 0.47 pixel (a
        spot cannot look narrower than a pixel).
    n_points : int
        Largest number of spots measured.
    n_sizes : int
        Number of sizes on the grid.
    noise_sd : ndarray, optional
        Per-pixel noise SD of the (projected) image, as from :func:`noise_sd_map`.
    noise_model : dict, optional
        Without ``noise_sd``: the fitted noise line of the (projected) image (``info`` of
        :func:`noise_sd_map`), evaluated at its 0.5 um blur where needed (fitted here when
        neither is given).
    strip_px : int
        The image is filtered in strips of this many rows (plus the filters' margin), so
        the memory is that of a strip; the result does not depend on it.

    Returns
    -------
    float
        HWHM in um of the point-sampled Gaussian that matches the spots (the
        pixel-integrated sigma plus the pixel's own 1/12 px^2 variance, as used by
        :func:`detect_puncta`), or NaN when fewer than 5 spots stand out of the noise.

    Examples
    --------
    Spots of sigma 2 pixels (HWHM 0.235 um at 0.1 um pixels):

    >>> rng = np.random.default_rng(1)
    >>> yy, xx = np.mgrid[:128, :128]
    >>> centres = rng.uniform(10, 118, (15, 2))
    >>> spots = sum(200 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 2.0**2)) for y, x in centres)
    >>> img = rng.poisson(30 + spots).astype(float)
    >>> round(estimate_punctum_radius(img, 0.1), 2)
    0.24
    """
    arr = np.asarray(image)
    stack = arr if arr.ndim == 3 else arr[None]
    # spots are found on the maximum projection, fitted in their plane
    proj = stack[0] if len(stack) == 1 else stack.max(axis=0)
    hw = _FWHM_PER_SIGMA / 2
    s_lo = max(radius_range_um[0] / hw / pixel_size_um, 0.4)
    s_hi = max(radius_range_um[1] / hw / pixel_size_um, 1.5 * s_lo)
    sizes = np.geomspace(s_lo, s_hi, n_sizes)
    r = int(np.ceil(s_hi))
    edge = 2 * r + 1
    # noise of the smoothed image: the local pixel noise (:func:`noise_sd_map`) times the
    # filter's gain for white noise
    gain = _white_noise_gain(s_lo, edge)
    if noise_sd is None and noise_model is None:
        noise_model = _noise_model(proj, pixel_size_um, strip_px=strip_px)
    # local maxima, their height above a broad background and their noise, in strips of rows
    # (with the margin of the filters; the same values as on the whole image, to rounding)
    h_img, w_img = proj.shape
    level_sigma = 0.5 / pixel_size_um
    margin = max(_gauss_radius(3 * s_hi), _gauss_radius(s_lo) + r, _gauss_radius(level_sigma)) + r + 2
    pts_parts, h_parts = [], []
    any_max = False
    for y0, y1, r0, r1 in _row_strips(h_img, strip_px, margin):
        blk = np.asarray(proj[r0:r1], dtype=np.float64)
        smooth = _filters.gaussian_filter(blk, s_lo)
        inner = np.ones(blk.shape, bool)
        rows = np.arange(r0, r1)
        inner[(rows < max(y0, edge)) | (rows >= min(y1, h_img - edge))] = False
        inner[:, :edge] = inner[:, -edge:] = False
        loc = _extrema(smooth, (2 * r + 1,) * 2, inner)
        # the height above the broad background (Gaussian of 3 x the largest size), at the
        # maxima only
        height = smooth[tuple(loc.T)] - _gaussian_at(blk, 3 * s_hi, loc)
        del smooth, inner
        loc = loc[height > 0]
        height = height[height > 0]
        if len(loc) == 0:
            continue
        any_max = True
        if noise_sd is not None:
            noise = np.asarray(noise_sd)[tuple((loc + [r0, 0]).T)]
        else:
            level = _filters.gaussian_filter(blk, level_sigma)
            noise = _noise_at(noise_model, level[tuple(loc.T)])
        hh = height / (gain * noise)
        pts_parts.append((loc + [r0, 0])[hh > _SIZE_SPOT_SD])
        h_parts.append(hh[hh > _SIZE_SPOT_SD])
    if not any_max:
        return float("nan")
    pts, h = np.concatenate(pts_parts), np.concatenate(h_parts)
    if len(pts) < _SIZE_MIN_SPOTS:
        return float("nan")
    pts = pts[np.argsort(h)[::-1][:n_points]]
    plane = stack[:, pts[:, 0], pts[:, 1]].argmax(axis=0)
    log_s = np.log(sizes)
    # fit in a window of 2.5 x the size: first the largest size, then the first estimate
    # (a smaller window keeps crowded neighbours out of the fit)
    sigma_px = s_hi
    for _ in range(2):
        R = max(2, int(np.ceil(2.5 * sigma_px)))
        win = _mirror_windows(stack, plane, pts, R).reshape(len(pts), -1)
        off = np.arange(-R, R + 1)[:, None]
        sse = np.empty((len(pts), n_sizes))
        total = (win**2).sum(axis=1)
        for k, s in enumerate(sizes):
            # least squares of amplitude and offset by the 2 x 2 normal equations (all spots)
            e = erf((off + 0.5) / (np.sqrt(2) * s)) - erf((off - 0.5) / (np.sqrt(2) * s))
            design = np.stack([(e * e.T).ravel(), np.ones(e.size**2)], axis=1)
            xtw = win @ design
            coef = np.linalg.solve(design.T @ design, xtw.T)
            sse[:, k] = total - np.einsum("pi,ip->p", xtw, coef)
        sigma_px = float(np.exp(_median_log_size(sse, log_s)))
    return float(np.sqrt(sigma_px**2 + 1.0 / 12.0) * hw * pixel_size_um)


def _median_log_size(sse: np.ndarray, log_s: np.ndarray) -> float:
    """The median best log size of the spots (rows of ``sse``, the residual of each spot's fit at
    each size of the log grid ``log_s``), each refined by a parabola through its best size and
    the two beside it.  A spot whose best size is the largest of the range is broader than any
    punctum (a dendrite, haze, a blur of several): it measures nothing of the punctum size.  At
    low SNR such spots can be the majority of those standing out, and their median then sits at
    the bound (measured: 0.55 um on a phantom field of 0.14 um puncta at SNR 2.9, 10 puncta
    found of 167); they are left out while at least ``_SIZE_MIN_SPOTS`` others remain."""
    n_sizes = len(log_s)
    best = sse.argmin(axis=1)
    est = log_s[best]
    inner = (best > 0) & (best < n_sizes - 1)
    b = best[inner]
    y0, y1, y2 = sse[inner, b - 1], sse[inner, b], sse[inner, b + 1]
    den = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(den > 0, 0.5 * (y0 - y2) / den, 0.0)
    est[inner] += np.clip(step, -1.0, 1.0) * (log_s[1] - log_s[0])
    fits = best < n_sizes - 1
    if fits.sum() >= _SIZE_MIN_SPOTS:
        est = est[fits]
    return float(np.median(est))


def estimate_axial_radius(
    stack: np.ndarray,
    pixel_size_um: float,
    z_step_um: float,
    *,
    punctum_radius_um: float,
    noise_model: dict[str, float] | None = None,
    radius_range_um: tuple[float, float] = _AXIAL_RANGE_UM,
    n_points: int = 200,
    n_sizes: int = 16,
    max_px: int = 512,
) -> float:
    """Apparent axial punctum radius (half width at half maximum, um) measured on a stack.

    Each plane is smoothed by the lateral punctum size (the PSF is separable, so this only
    averages the profile over the punctum's footprint), the ``n_points`` brightest local maxima
    of the maximum projection whose brightest plane is not the first or last are taken, and
    the axial profile through each is fitted by least squares with a point-sampled Gaussian
    plus a straight line (the background's trend with depth), over a grid of sizes
    (log-spaced over ``radius_range_um``) and of centres within the brightest plane; spots
    whose fitted Gaussian stands at least 8 noise SDs high on the planes count, the best size of
    each is refined by a parabola in log size and the median is returned (spots at the largest
    size are left out while 5 others remain, as in :func:`estimate_punctum_radius`; when they
    are more than half of the spots, the largest size is returned).  The
    axial size in planes is what the stack shows; times the z step it is in um, so a wrong z
    step shows up as an implausible axial size.

    Parameters
    ----------
    stack : ndarray
        ZYX intensities.
    pixel_size_um, z_step_um : float
        Lateral pixel size and axial step.
    punctum_radius_um : float
        Lateral HWHM (:func:`estimate_punctum_radius`).
    noise_model : dict, optional
        The fitted noise line of the stack (``info`` of :func:`noise_sd_map`); fitted here
        when not given.
    radius_range_um : (float, float)
        Plausible axial HWHM: from a high-NA confocal section (~0.3 um) to a two-photon or
        low-NA widefield one (~1-2 um).
    n_points, n_sizes : int
        Largest number of spots; number of sizes on the grid.
    max_px : int
        A stack wider than this is measured on its central ``max_px`` x ``max_px`` pixels.

    Returns
    -------
    float
        Axial HWHM in um, or NaN when the stack has fewer than 5 planes or fewer than 5 spots
        stand out.

    Examples
    --------
    Puncta of axial sigma 0.3 um (HWHM 0.35 um) in 12 planes 0.2 um apart:

    >>> rng = np.random.default_rng(2)
    >>> zz, yy, xx = np.mgrid[:12, :96, :96]
    >>> centres = rng.uniform([3, 8, 8], [9, 88, 88], (25, 3))
    >>> spots = sum(150 * np.exp(-((zz - z) * 0.2) ** 2 / (2 * 0.3**2) - ((yy - y) ** 2 + (xx - x) ** 2)
    ...                          / (2 * 1.3**2)) for z, y, x in centres)
    >>> img = rng.poisson(20 + spots).astype(float)
    >>> round(estimate_axial_radius(img, 0.1, 0.2, punctum_radius_um=0.15), 2)
    0.35
    """
    arr = np.asarray(stack)
    if arr.ndim != 3 or arr.shape[0] < _AXIAL_MIN_PLANES:
        return float("nan")
    h, w = arr.shape[1:]
    y0, x0 = max(0, (h - max_px) // 2), max(0, (w - max_px) // 2)
    arr = np.asarray(arr[:, y0 : y0 + max_px, x0 : x0 + max_px], dtype=np.float64)
    nz = arr.shape[0]
    hw = _FWHM_PER_SIGMA / 2
    s_xy = max(punctum_radius_um / hw / pixel_size_um, 0.5)
    if noise_model is None:
        noise_model = _noise_model(arr, pixel_size_um)
    smooth = _filters.gaussian_filter(arr, [0.0, s_xy, s_xy])
    gain = _white_noise_gain(s_xy, 4 * int(np.ceil(s_xy)))
    proj = smooth.max(axis=0)
    r = max(1, int(np.ceil(2 * s_xy)))
    inner = np.zeros(proj.shape, bool)
    inner[r:-r, r:-r] = True
    loc = _extrema(proj, (2 * r + 1, 2 * r + 1), inner)
    if len(loc) < _SIZE_MIN_SPOTS:
        return float("nan")
    profiles = smooth[:, loc[:, 0], loc[:, 1]].T  # (spots, planes)
    peak = profiles.argmax(axis=1)
    interior = (peak >= 1) & (peak <= nz - 2)
    loc, profiles, peak = loc[interior], profiles[interior], peak[interior]
    prominence = profiles.max(axis=1) - np.median(profiles, axis=1)
    keep = np.argsort(prominence)[::-1][:n_points]
    loc, profiles, peak = loc[keep], profiles[keep], peak[keep]
    if len(loc) < _SIZE_MIN_SPOTS:
        return float("nan")
    # the noise at each spot's 0.5 um level in its brightest plane (blurred at the spots only)
    level = np.empty(len(loc))
    for z in np.unique(peak):
        level[peak == z] = _gaussian_at(arr[z], 0.5 / pixel_size_um, loc[peak == z])
    noise = _noise_at(noise_model, level) * gain
    dz = float(z_step_um)
    sizes = np.geomspace(radius_range_um[0] / hw / dz, radius_range_um[1] / hw / dz, n_sizes)  # sigma, planes
    offsets = np.linspace(-0.5, 0.5, 11)
    z = np.arange(nz)[None, :] - peak[:, None]  # planes relative to the brightest one
    # the window of each fit: 3 x the largest size around the peak, within the stack
    inside = np.abs(z) <= max(2.0, 3.0 * sizes[-1])
    wts = inside.astype(np.float64)
    # the background along z is a line (attenuation with depth dims the planes steadily: with
    # a constant, a stack dimming by 40 % over 12 planes read a 70 % longer punctum)
    zc = (z - (wts * z).sum(axis=1, keepdims=True) / wts.sum(axis=1, keepdims=True)) * wts
    yw = wts * profiles
    syy = (yw * profiles).sum(axis=1)
    sse = np.full((len(loc), n_sizes), np.inf)
    amp = np.zeros((len(loc), n_sizes))
    for k, sg in enumerate(sizes):
        for o in offsets:
            g = np.exp(-((z - o) ** 2) / (2 * sg**2)) * wts
            cols = (g, wts, zc)  # Gaussian, constant, slope (within the window)
            gram = np.stack([np.stack([(u * v).sum(axis=1) for v in cols], axis=-1) for u in cols], axis=-2)
            rhs = np.stack([(u * profiles).sum(axis=1) for u in cols], axis=-1)
            ok = np.abs(np.linalg.det(gram)) > 1e-12 * np.abs(gram[:, 0, 0] * gram[:, 1, 1] * gram[:, 2, 2] + 1e-300)
            coef = np.zeros_like(rhs)
            if ok.any():
                coef[ok] = np.linalg.solve(gram[ok], rhs[ok][..., None])[..., 0]
            e = syy - (coef * rhs).sum(axis=1)  # (residual sum of squares of the least-squares fit)
            better = ok & (e < sse[:, k])
            # (the height of the fitted Gaussian on the planes, not its amplitude parameter:
            # a Gaussian narrower than a plane, centred between two, has a far larger one)
            height = coef[:, 0] * np.exp(-o * o / (2 * sg**2))
            sse[better, k], amp[better, k] = e[better], height[better]
    best = sse.argmin(axis=1)
    significant = amp[np.arange(len(loc)), best] >= _SIZE_SPOT_SD * noise
    if significant.sum() < _SIZE_MIN_SPOTS:
        return float("nan")
    if (best[significant] == n_sizes - 1).mean() > 0.5:
        # most puncta are at least as long as the range allows (a z step given too small, or
        # a very low-NA section): the bound, not the few short spots left
        return float(radius_range_um[1])
    return float(np.exp(_median_log_size(sse[significant], np.log(sizes))) * hw * dz)


def _dips_at_least(neg: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """How many of the negative control's dips (significances ``neg``, sorted) are at least
    each of ``levels`` deep, interpolated linearly between the dips (a step function counts
    a dip just below a punctum's significance as none: the expected F1 of the cuts jumped at
    every dip, and of two cuts near a tie the one chosen changed with one dip more or less:
    a phantom field at high SNR detected whole or in tiles, 637 or 628 puncta).

    >>> _dips_at_least(np.array([3.0, 4.0, 5.0]), np.array([2.0, 3.5, 4.0, 5.0, 6.0]))
    array([3. , 2.5, 2. , 1. , 0. ])
    """
    if len(neg) == 0:
        return np.zeros(len(levels))
    counts = len(neg) - np.arange(len(neg), dtype=float)
    return np.interp(levels, neg, counts, right=0.0)


def _best_f1_cut(expected: np.ndarray, last: int) -> int:
    """Where to cut a list of puncta sorted by falling significance: the cut, at or before
    ``last`` (the Benjamini-Hochberg one), with the highest expected F1.

    Keeping the first ``n`` puncta reports ``n - expected[n - 1]`` true ones (``expected`` is
    the number of noise maxima expected above each punctum's significance); taking the
    number of true puncta to be that at ``last``, the expected F1 of the cut is
    ``2 (n - expected) / (n + true)``.  Where the puncta stand well clear of the noise, the
    noise maxima just above the step-up threshold add to the count but not to the true
    puncta, and the cut moves above them; where true puncta still dominate there, it stays.

    Examples
    --------
    Ten puncta, three noise maxima expected above the tenth, none above the seventh:

    >>> exp = np.array([0, 0, 0, 0, 0, 0, 0, 1.0, 2.0, 3.0])
    >>> _best_f1_cut(exp, 9)
    6
    >>> _best_f1_cut(np.zeros(10), 9)
    9
    """
    n_rep = np.arange(1, last + 2)
    true = np.maximum(n_rep - expected[: last + 1], 0.0)
    f1 = 2 * true / (n_rep + true[-1])
    return int(np.flatnonzero(f1 >= f1.max()).max())


def detect_puncta(
    image: np.ndarray,
    pixel_size_um: float,
    *,
    z_step_um: float | None = None,
    punctum_radius_um: float | None = None,
    axial_radius_um: float | None = None,
    threshold_sd: float = 4.0,
    min_separation_um: float | None = None,
    background_radius_um: float | None = None,
    mask: np.ndarray | None = None,
    noise_box_um: float = 3.0,
    reject_out_of_focus: bool = True,
    noise_fdr: float | None = 0.05,
    tile_px: int | None = TILE_PX,
    repair_tissue_edges: bool = True,
) -> pd.DataFrame:
    """Detect puncta (diffraction-limited spots) in a 2-D (YX) or 3-D (ZYX) image.

    See the module docstring for the method.  No parameter depends on the image's
    brightness: sizes are physical and the threshold is in units of the image's own noise.

    Parameters
    ----------
    image : ndarray
        Raw intensities (not background-subtracted, not deconvolved: the noise model assumes
        independent pixel noise; strongly correlated noise, or a median filter's, is
        measured on the filtered image instead, at a cost in sensitivity, and mildly smoothed
        or JPEG-compressed noise, Gaussian 0.4-0.6 px or quality 75-95, still gives false
        puncta), YX or ZYX.
    pixel_size_um : float
        Lateral pixel size.
    z_step_um : float, optional
        Axial step of a ZYX stack (default: the lateral pixel size).
    punctum_radius_um : float, optional
        Apparent radius (half width at half maximum) of a typical punctum.  Default: measured
        on the image (:func:`estimate_punctum_radius`, within 0.1-0.6 um), so that the model
        fits the microscope's own PSF; a confocal PSD95 punctum is ~0.15 um (PSF FWHM
        ~0.22-0.25 um at NA 1.3-1.4 convolved with a PSD of 0.2-0.4 um), a widefield one
        larger.  The nominal Gaussian sigma is this / 1.177; sizes from 0.8x to 1.4x of it
        are fitted.
    axial_radius_um : float, optional
        Apparent axial half width at half maximum (3-D only).  Default: measured on the stack
        (:func:`estimate_axial_radius`, within 0.2-2 um), or 0.35 um (a confocal section, axial
        FWHM ~0.7 um) when the stack has fewer than 5 planes or shows no spot.  Measured in
        planes and converted with ``z_step_um``, so the puncta found do not depend on the z
        step given, and a wrong z step shows as an implausible axial size
        (``attrs['axial_radius_um']``).
    threshold_sd : float
        Significance of a punctum's fitted amplitude, in noise SDs.  The default 4 gives
        ~0.45-0.7 false detections per 100 um^2 of pure noise, 1-2 % of a typical PSD95
        density (module docstring); 4.5 gives 0.1-0.25.
    min_separation_um : float, optional
        Two puncta closer than this are one.  Default: 5/3 of the punctum radius (0.25 um,
        the lateral resolution of a confocal, for a 0.15 um punctum).  In 2-D, closer pairs
        are still found when one blob is fitted significantly better by two puncta of the
        nominal size (down to one sigma apart; module docstring, step 4).
    background_radius_um : float, optional
        Structures broader than about this (dendritic shafts, haze, illumination) count as
        background: the image minus its Gaussian blur of this sigma is fitted.  Default: twice
        the punctum radius: the test then keeps ~87 % of the sensitivity of a matched filter
        while out-of-focus puncta and dendritic shafts lose most of their response.  Larger
        values gain sensitivity and admit more of that clutter.
    mask : ndarray of bool, optional
        Only report puncta whose nearest pixel is True (same shape as ``image``, or YX for a
        stack).  Puncta just outside still take part in the fit.
    noise_box_um : float
        Box size of the local noise estimates (:func:`noise_sd_map`).
    reject_out_of_focus : bool
        Drop spots that a blob 2.5x broader than a punctum explains significantly better
        (out-of-focus puncta of neighbouring planes in a single optical section).
    noise_fdr : float or None
        Largest expected fraction of the reported puncta that are noise maxima (planes and
        stacks).  The threshold is raised above ``threshold_sd`` to the lowest significance ``u``
        at which the number of noise maxima expected in the field (:func:`noise_detection_rate`
        times the number of pixels, or of voxels) is at most ``noise_fdr`` times the number of puncta
        above ``u`` (a Benjamini-Hochberg step-up with the calibrated noise rate, corrected
        for skewed noise; module docstring), or, when larger, the number of punctum-shaped dips
        at least as deep in the residual (the image's own negative control, step 8 of the
        module docstring).  In a crowded field this keeps ``threshold_sd``; in a sparse field
        it rises; in pure noise nothing is reported.  Above that threshold, the one with the
        highest expected F1 is used (:func:`_best_f1_cut`): where a gap in significance
        separates the puncta from the noise, the noise maxima in the gap are left out.
        None: ``threshold_sd`` only.
    tile_px : int, optional
        Images larger than this (laterally) are processed in tiles of at most
        ``min(tile_px, LARGE_TILE_PX)`` pixels square (:data:`LARGE_TILE_PX` = 768), each read
        with a margin of several punctum sizes and background radii (:func:`_tile_margin`), so
        that the memory is that of a tile rather than a multiple of the image (default
        :data:`TILE_PX` = 1024: images up to 1024 pixels per side are processed whole; None:
        never tiled).  The noise model, the punctum size and the noise false-discovery step stay
        global (computed in strips of 256 rows, over all tiles' candidates); only the candidates
        and their joint fit are local, as they are anyway.  On four 2048 x 2048 phantom planes
        (one per SNR level, 0.1 um pixels) tiles of 683 found 98.8-99.6 % of the puncta of the
        whole plane at the same positions (within 0.1 pixel), and F1 against the truth within
        0.002 of the whole plane's.

    repair_tissue_edges : bool
        Step 11 of the module docstring (planes whose noise is not correlated): where the puncta
        found line the edge of a dark region beyond a step from solid tissue (glass beside a
        section's border, a tear, a void), detect again with the region raised to the tissue's
        background (part q of ``make validate``).  False: the plane as it is (the line of false
        puncta along such an edge stays).

    Returns
    -------
    DataFrame
        One row per punctum, sorted by position: ``y``, ``x`` (and ``z``) in pixels
        (sub-pixel, pixel centres at integer coordinates); ``intensity`` (fitted peak height
        above the local background, deblended from neighbours, image units);
        ``integrated_intensity`` (``intensity`` x the Gaussian's volume, image units x
        pixels); ``sigma_um`` (lateral sigma of the fitted Gaussian: the nominal size unless
        the data prefer another); ``snr`` (fitted amplitude / its noise SD, >= threshold_sd);
        ``noise_sd`` (local pixel noise SD, times ``noise_factor``).  ``attrs`` holds ``n_z``
        (planes), the parameters, the noise model (``noise_alpha``, ``noise_beta``),
        ``noise_correlation`` (:func:`~analysis.measure.noise.noise_correlation`; in a stack
        the larger of it and the same figure along z), ``tie_ratio``
        (:func:`~analysis.measure.noise.neighbour_tie_ratio`), ``block_ratio``
        (:func:`~analysis.measure.noise.jpeg_block_ratio`), ``jpeg_lattice``
        (:func:`~analysis.measure.noise.jpeg_lattice`), ``noise_factor`` (1, or,
        for correlated noise, the factor by which the filtered image's noise exceeds the
        model's; module docstring, step 1), ``elongated_puncta`` (True when the image's
        single puncta were found drawn out along a line; step 6) and ``psf_quadrupole`` (the
        largest amplitude of the astigmatic part of the PSF's wing, per unit of a punctum's
        significance; 0 when none was seen; step 6), ``threshold_used`` (the significance
        the puncta reported stand at or above: ``threshold_sd``, raised by the noise
        false-discovery step; step 7; infinite when nothing is reported), ``stripe_ratio`` and
        ``stripes_removed`` (step 10: :func:`analysis.measure.stripes.remove_stripes`),
        ``beyond_edge_px`` (step 11: pixels beyond the tissue's edge, raised).  In a
        stack whose planes' brightness jumps, intensities are in units of the planes' trend
        (step 2).

    Examples
    --------
    Two puncta 0.35 um apart on a noisy background (the punctum size is given: a field
    holding only this pair could as well hold one broad spot):

    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:64, :64]
    >>> spots = sum(60 * np.exp(-((yy - 30) ** 2 + (xx - x) ** 2) / (2 * 1.3**2)) for x in (30, 33.5))
    >>> img = rng.poisson(20 + spots).astype(float)
    >>> p = detect_puncta(img, 0.1, punctum_radius_um=0.15)
    >>> len(p), p["x"].round().tolist()
    (2, [30.0, 34.0])
    """
    if mask is not None and np.shape(mask) not in (np.shape(image), np.shape(image)[-2:]):
        raise ValueError(f"mask shape {np.shape(mask)} does not match the image {np.shape(image)} (or its YX plane)")
    settings = dict(z_step_um=z_step_um, punctum_radius_um=punctum_radius_um, axial_radius_um=axial_radius_um,
                    threshold_sd=threshold_sd, min_separation_um=min_separation_um,
                    background_radius_um=background_radius_um, noise_box_um=noise_box_um,
                    reject_out_of_focus=reject_out_of_focus, noise_fdr=noise_fdr, tile_px=tile_px)
    out, regions, bg_px, rate = _detect_puncta(image, pixel_size_um, **settings, find_edges=repair_tissue_edges)
    if regions:
        lined = edges_lined_with_puncta(regions, out[["y", "x"]].to_numpy(float), pixel_size_um, bg_px,
                                        np.shape(image)[-2:])
        if lined:
            out = _with_edges_lifted(image, pixel_size_um, settings, out, [regions[i] for i in lined], bg_px, rate)
    if mask is not None and len(out):
        mk = np.asarray(mask, bool)
        ij = np.clip(np.rint(out[["z", "y", "x"][-mk.ndim :]].to_numpy(float)).astype(int), 0, np.array(mk.shape) - 1)
        out = out[mk[tuple(ij.T)]].reset_index(drop=True)  # (rows numbered 0..n-1, as without a mask)
    return out


def _with_edges_lifted(image: np.ndarray, pixel_size_um: float, settings: dict[str, Any], first: pd.DataFrame,
                       lined: list, bg_px: float, rate: dict[str, float]) -> pd.DataFrame:
    """Step 11: the puncta of ``image`` detected again with the ``lined`` regions raised to the
    tissue's background (the first detection ``first``'s noise model, size and threshold),
    except deep inside the regions, where ``first`` stands under a false-discovery step of its
    own over their area."""
    log.info("puncta line the edge of %d dark region(s) beyond the tissue: detected again with them raised",
             len(lined))
    out = _detect_puncta(image, pixel_size_um, **settings, beyond=lined,
                         threshold_fixed=first.attrs["threshold_used"])[0]
    # deep inside a region (beyond the dark side's foot of the step's ridge, 4 background radii)
    # the step did not reach, and a punctum in a dark void (a microglial cell's engulfed synapse)
    # is measured against the void's own background and noise; few puncta lie there, and glass
    # holds none, so the false-discovery step is taken again over the regions alone
    in_first, in_out = np.zeros(len(first), bool), np.zeros(len(out), bool)
    area = 0
    for (sy, sx), m in lined:
        deep = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1] > EDGE_DEEP_BACKGROUND_RADII * bg_px
        area += int(deep.sum())
        in_first |= _centred_in(first, deep, (sy.start, sx.start))
        in_out |= _centred_in(out, deep, (sy.start, sx.start))
    kept = first[in_first]
    fdr = settings["noise_fdr"]
    if fdr is not None and len(kept):
        order = np.sort(kept["snr"].to_numpy())[::-1]
        last = _last_discovery(noise_detection_rate(_gaussian_equivalent(order, rate["skew"]), rate["sigma_px"]) * area,
                               fdr)
        kept = kept[kept["snr"].to_numpy() >= (order[last] if last is not None else np.inf)]
    joined = pd.concat([out[~in_out], kept]).sort_values(["y", "x"], ignore_index=True)
    joined.attrs.update(out.attrs)
    return joined


def _last_discovery(expected: np.ndarray, fdr: float) -> int | None:
    """The false-discovery step-up: the last rank (0-based, of detections sorted by falling
    significance) at which the expected number of noise maxima is at most ``fdr`` times the
    number reported, or None."""
    ok = np.flatnonzero(expected <= fdr * np.arange(1, len(expected) + 1))
    return int(ok.max()) if len(ok) else None


def _centred_in(points: pd.DataFrame, mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Which rows of a puncta table are centred in the YX ``mask`` whose first pixel is the
    plane's pixel ``origin``."""
    ij = np.rint(points[["y", "x"]].to_numpy(float)).astype(int) - np.array(origin)
    ok = np.all((ij >= 0) & (ij < np.array(mask.shape)), axis=1)
    hit = np.zeros(len(ij), bool)
    hit[ok] = mask[ij[ok, 0], ij[ok, 1]]
    return hit


def _detect_puncta(
    image: np.ndarray,
    pixel_size_um: float,
    *,
    z_step_um: float | None = None,
    punctum_radius_um: float | None = None,
    axial_radius_um: float | None = None,
    threshold_sd: float = 4.0,
    min_separation_um: float | None = None,
    background_radius_um: float | None = None,
    noise_box_um: float = 3.0,
    reject_out_of_focus: bool = True,
    noise_fdr: float | None = 0.05,
    tile_px: int | None = TILE_PX,
    beyond: list | None = None,
    find_edges: bool = True,
    threshold_fixed: float | None = None,
) -> tuple[pd.DataFrame, list, float, dict]:
    """:func:`detect_puncta` without its ``mask`` (applied by the caller), and the dark regions
    beyond a step from solid tissue (:func:`analysis.measure.outside.tissue_edge_regions`; empty
    when there is none, or when ``beyond`` is given), the detector's background radius
    (pixels) and what :func:`noise_detection_rate` needs for a plane of this image (``skew``:
    the response's; ``sigma_px``).  ``beyond``: such regions, raised to the tissue's background
    along their edge before the detection (:func:`analysis.measure.outside.lift_beyond_edge`).
    ``find_edges``: search for such regions at all.  ``threshold_fixed``: the significance threshold to use
    instead of the noise false-discovery step's."""
    arr = raw = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be YX or ZYX, got shape {arr.shape}")
    require_pixel_size(pixel_size_um)
    if z_step_um:
        require_pixel_size(z_step_um, "z_step_um")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        arr = np.asarray(arr, dtype=np.float64)
    require_plane_size(arr.shape)
    require_finite(arr)
    # the constant fill of registration, rotation or stitching (:mod:`analysis.measure.outside`):
    # given the imaged edge's background and noise, so that its step is not detected, and
    # puncta centred in it are outside the imaged field (planes; stacks as they are)
    outside = not_imaged_mask(arr, pixel_size_um) if arr.ndim == 2 else None
    if outside is not None:
        arr = fill_not_imaged(arr, outside, pixel_size_um)
    # offsets shared by whole rows or columns (a scanner's line noise, a camera's column pattern;
    # :mod:`analysis.measure.stripes`): removed where significant, else ``arr`` stays as it is
    arr, stripes = remove_stripes(arr)
    ndim = arr.ndim
    dz = float(z_step_um) if z_step_um else float(pixel_size_um)
    estimated = punctum_radius_um is None
    tiles = _tiles(arr.shape[-2:], tile_px)

    def noise_and_size(arr: np.ndarray) -> tuple[dict[str, float], float | None]:
        """The noise model (boxes at the 0.5 um level; evaluated at the background level below)
        and the punctum radius (the given one, or estimated from the image)."""
        radius = punctum_radius_um
        if len(tiles) == 1:
            img = np.asarray(arr, dtype=np.float64)
            noise0, info = noise_sd_map(img, pixel_size_um, box_um=noise_box_um)
            info["tie_ratio"] = neighbour_tie_ratio(arr)
            info["block_ratio"] = jpeg_block_ratio(arr)
            info["jpeg_lattice"] = jpeg_lattice(arr)
            if estimated:
                projected = noise0 if ndim == 2 else None  # (a stack's projection has its own noise)
                radius = estimate_punctum_radius(img, pixel_size_um, noise_sd=projected)
            return info, radius
        # a large image: the noise model, the punctum size and (below) the detection are
        # computed strip by strip and tile by tile, never on full-size floating-point maps
        strip = min(int(tile_px), _STRIP_PX)
        info = _noise_model(arr, pixel_size_um, box_um=noise_box_um, strip_px=strip)
        info["tie_ratio"] = neighbour_tie_ratio(arr)
        info["block_ratio"] = jpeg_block_ratio(arr)
        info["jpeg_lattice"] = jpeg_lattice(arr)
        if estimated:
            radius = estimate_punctum_radius(arr, pixel_size_um, strip_px=strip,
                                             noise_model=info if ndim == 2 else None)
        return info, radius

    noise_info, radius0 = noise_and_size(arr)
    # hot pixels (single-pixel spikes no optics can make, once a punctum spans more than a
    # pixel): replaced by the median of their neighbours in a copy, and the noise and size
    # measured again without them (a strong spike pulls the size estimate down)
    n_hot = 0
    if np.isfinite(radius0 if radius0 is not None else np.nan) and (
            radius0 / (_FWHM_PER_SIGMA / 2) / pixel_size_um * min(_IN_FOCUS_SCALES) >= _HOT_MIN_SIGMA_PX):
        hot = [_hot_pixels(p, noise_info) for p in (arr if ndim == 3 else [arr])]
        n_hot = sum(len(h) for h in hot)
        if n_hot:
            log.info("%d hot pixel(s) (single-pixel spikes) replaced by the median of their neighbours", n_hot)
            arr = _repaired(arr, hot)
            noise_info, radius0 = noise_and_size(arr)
    # beyond the tissue's edge (glass beside a section's border, a tear, a void; planes only):
    # the dark regions beyond a significant step are returned, and when the puncta found line
    # their edge the detection is run again with them raised to the tissue's background along
    # the edge, so that the step is not a ridge (:mod:`analysis.measure.outside`)
    r_px = (radius0 if radius0 is not None and np.isfinite(radius0) else _NOMINAL_RADIUS_UM) / pixel_size_um
    bg_px = background_radius_um / pixel_size_um if background_radius_um is not None else 2.0 * r_px
    regions: list = []
    n_beyond = 0
    if beyond is not None and not len(beyond):
        beyond = None
    # (not where the pixel noise is correlated, even mildly: there the repair cost interpolated,
    # smoothed and JPEG phantom fields up to 0.02 of F1, session 57; session 56's fill 0.01-0.04)
    white = not (_correlated(noise_info) or _info_correlation(noise_info) > MILD_CORRELATION)
    if ndim == 2 and beyond is None and white and find_edges:
        regions = tissue_edge_regions(arr, pixel_size_um, noise_info)
    elif beyond:
        # (the noise model and the punctum size stay those measured on the plane as imaged: the
        # lift is a local repair; re-measured on it, they moved enough to cost a 640 x 640 field
        # at 0.2 um pixels 16 % of its true puncta in session 56)
        arr = lift_beyond_edge(arr, beyond, pixel_size_um, margin_px=int(np.ceil(r_px)), punctum_px=r_px,
                               noise_info=noise_info)
        n_beyond = int(sum(m.sum() for _, m in beyond))
        log.info("%d pixels beyond the tissue's edge raised to the tissue's background", n_beyond)
    if ndim == 3:
        # brightness jumps between planes (laser power, detector gain): each plane above the
        # offset is divided by its gain relative to the planes around it, so that a punctum's
        # axial profile is not modulated by them, and the noise is measured again
        plane_gain = _plane_gains(arr, noise_info.get("zero_level", np.nan))
        if plane_gain is not None:
            log.info("planes' brightness jumps by up to %.1f %%: divided out above the offset",
                     100.0 * float(np.abs(plane_gain[0] - 1.0).max()))
            arr = _gain_corrected(arr, *plane_gain)
            noise_info, radius0 = noise_and_size(arr)
    punctum_radius_um = radius0
    if estimated:
        if not np.isfinite(punctum_radius_um):  # no spot stands out: a confocal punctum
            punctum_radius_um = max(_NOMINAL_RADIUS_UM, 0.6 * _FWHM_PER_SIGMA / 2 * pixel_size_um)
        log.debug("punctum radius estimated from the image: %.3f um", punctum_radius_um)
    axial_estimated = ndim == 3 and axial_radius_um is None
    if axial_estimated:
        axial_radius_um = estimate_axial_radius(arr, pixel_size_um, dz, punctum_radius_um=punctum_radius_um,
                                                noise_model=noise_info)
        if not np.isfinite(axial_radius_um):
            log.debug("axial punctum size not measurable (%d planes): %.2f um assumed", arr.shape[0],
                      _NOMINAL_AXIAL_RADIUS_UM)
            axial_radius_um, axial_estimated = _NOMINAL_AXIAL_RADIUS_UM, False
        log.debug("axial punctum radius estimated from the stack: %.3f um", axial_radius_um)
    if background_radius_um is None:
        background_radius_um = 2.0 * punctum_radius_um
    if min_separation_um is None:
        min_separation_um = _SEPARATION_PER_RADIUS * punctum_radius_um
    sigma0 = np.full(ndim, punctum_radius_um / (_FWHM_PER_SIGMA / 2) / pixel_size_um)
    bg = np.full(ndim, background_radius_um / pixel_size_um)
    sep = np.full(ndim, max(min_separation_um / pixel_size_um, _MIN_SEPARATION_PX))
    if ndim == 3:
        ratio = axial_radius_um / punctum_radius_um
        sigma0[0] = axial_radius_um / (_FWHM_PER_SIGMA / 2) / dz
        bg[0] = background_radius_um * ratio / dz
        sep[0] = max(min_separation_um * ratio / dz, 1.0)
    factors = _in_focus_scales(float(sigma0[-1])) + (_OUT_OF_FOCUS_SCALES if reject_out_of_focus else ())
    sig_all = np.stack([sigma0 * f for f in factors])
    c_all = (2 * np.pi) ** (ndim / 2) * np.prod(sig_all, axis=1)
    settings = {"sigma0": sigma0, "bg": bg, "sep": sep, "noise_info": noise_info, "threshold_sd": threshold_sd,
                "reject_out_of_focus": reject_out_of_focus, "factor_cap": _mild_factor_cap(noise_info, sigma0, bg)}
    if ndim == 3:
        # each plane's own level (its median) is background too: the planes of a stack differ
        # in brightness (laser power, flicker), which the background's blur across planes does
        # not follow, and a plane brighter than its neighbours was covered in puncta (sim-fish
        # stacks with 5 % brightness flicker between planes: 1,068 false puncta around 450 spots)
        settings["plane_level"] = np.array([float(np.median(pl)) for pl in arr])
    # the edge of a not-imaged fill cuts puncta like an image edge: none is split near it
    no_split = None
    if outside is not None and outside.any():
        no_split = ndi.distance_transform_edt(~outside) <= 2.0 * float(sigma0[-1]) + 1.0
    if len(tiles) == 1:
        found = _detect_block(arr, **settings, no_split=no_split)
    else:
        margin = _tile_margin(sig_all, bg)
        parts = []
        for (y0, y1), (x0, x1) in tiles:
            r0, r1 = max(0, y0 - margin), min(arr.shape[-2], y1 + margin)
            q0, q1 = max(0, x0 - margin), min(arr.shape[-1], x1 + margin)
            block = arr[..., r0:r1, q0:q1]  # (converted to floating point inside)
            # keep the puncta of the tile's own part (the outer tiles reach beyond the image:
            # puncta centred outside it are dropped below, as without tiles)
            lo = np.full(ndim, -np.inf)
            hi = np.full(ndim, np.inf)
            lo[-2:] = [y0 - 0.5 - r0 if y0 > 0 else -np.inf, x0 - 0.5 - q0 if x0 > 0 else -np.inf]
            hi[-2:] = [y1 - 0.5 - r0 if y1 < arr.shape[-2] else np.inf, x1 - 0.5 - q0 if x1 < arr.shape[-1] else np.inf]
            part = _detect_block(block, **settings, region=(lo, hi),
                                 no_split=None if no_split is None else no_split[r0:r1, q0:q1])
            del block
            part["pos"][:, -2:] += [r0, q0]
            part["tile"] = np.full(len(part["pos"]), len(parts))
            parts.append(part)
        found = {key: np.concatenate([p[key] for p in parts]) for key in parts[0] if key not in _BLOCK_SCALARS}
        found["n_cand"] = sum(p["n_cand"] for p in parts)
        found["noise_factor"] = max(p["noise_factor"] for p in parts)
        found["elongated"] = any(p["elongated"] for p in parts)
        found["quadrupole"] = max(p["quadrupole"] for p in parts)
        found = _merge_tile_duplicates(found, sep)
    pos, k, a, t, sn = found["pos"], found["k"], found["a"], found["t"], found["sn"]
    # light within the reach of a bright punctum's fitted model and below the error of that
    # model (the PSF is not exactly Gaussian: Airy rings, aberrations, pixel integration) is
    # not a punctum of its own, however many noise SDs it has
    if len(pos) > 1:
        reach = 3.0 * np.sqrt(sigma0**2 + 2.0 * bg**2)
        pr = cKDTree(pos / reach).query_pairs(1.0, output_type="ndarray")
        if len(pr):
            i, j = pr.T
            # (a clipped punctum's model misses the light above the saturation level)
            err = np.maximum(_PSF_MODEL_ERROR, _clipped_light_fraction(raw, pos, sig_all[k]))
            shadowed = np.zeros(len(pos), bool)
            shadowed[i[a[i] < err[j] * a[j]]] = True
            shadowed[j[a[j] < err[i] * a[i]]] = True
            pos, k, a, t, sn = pos[~shadowed], k[~shadowed], a[~shadowed], t[~shadowed], sn[~shadowed]
    # a punctum counts when its centre lies in the imaged field: laterally within the outer
    # pixels, axially between the first and last plane (maxima beyond them are light from
    # puncta outside the stack, and noise maxima crowd at reflecting borders)
    lo = np.full(ndim, -0.5)
    hi = np.array(arr.shape, float) - 0.5
    if ndim == 3:
        lo[0], hi[0] = 0.0, arr.shape[0] - 1.0
    inside = np.all((pos >= lo) & (pos <= hi), axis=1) if len(pos) else np.zeros(0, bool)
    if outside is not None and len(pos):
        ij = np.clip(np.rint(pos[:, -2:]).astype(int), 0, np.array(outside.shape) - 1)
        inside &= ~outside[ij[:, 0], ij[:, 1]]
    pos, k, a, t, sn = pos[inside], k[inside], a[inside], t[inside], sn[inside]
    threshold_used = float(threshold_sd)
    # skewed pixel noise (few photons, clipping, photomultiplier gain) has a heavier upper tail
    # than Gaussian noise: the skewness of the response, for the Gaussian equivalent of each
    # significance in the noise false-discovery step (and the caller's, step 11)
    gamma = noise_info["skew"] * _kernel_skew_factor(_Scale((1,) * ndim, sigma0, bg))
    # (per voxel in a stack: a maximum stands above the planes around it too)
    axial = float(sigma0[0]) if ndim == 3 else None
    if threshold_fixed is not None:
        # (a detection again with a region lifted: the first one's threshold, so that the repair
        # stays local; re-derived, it moved with the false puncta removed and cost a 640 x 640
        # field at 0.2 um pixels 4 % of its true puncta in session 56)
        threshold_used = float(threshold_fixed)
        keep = t >= threshold_used
        pos, k, a, t, sn = pos[keep], k[keep], a[keep], t[keep], sn[keep]
    elif noise_fdr is not None and len(t):
        # step-up: the lowest significance at which expected noise maxima <= fdr x reported
        order = np.sort(t)[::-1]
        expected = noise_detection_rate(_gaussian_equivalent(order, gamma), float(sigma0[-1]),
                                        axial_sigma_px=axial) * arr.size
        # the image's own negative control: punctum-shaped dips of the residual at least as
        # deep (background structure that pixel noise does not account for)
        neg = np.sort(found["neg"])
        expected = np.maximum(expected, _dips_at_least(neg, order))
        last = _last_discovery(expected, noise_fdr)
        threshold_used = np.inf
        if last is not None:
            cut = _best_f1_cut(expected, last)
            threshold_used = float(order[cut])
            if cut < last and order[cut + 1] < order[cut]:
                # (the cut lies in a gap: a true punctum anywhere above the most significant
                # one left out would have been kept, and the brightness model of the quality
                # measures must be truncated there, not at the faintest punctum kept)
                threshold_used = float(np.nextafter(order[cut + 1], np.inf))
        keep = t >= threshold_used
        pos, k, a, t, sn = pos[keep], k[keep], a[keep], t[keep], sn[keep]
    cols = ["z", "y", "x"][3 - ndim :]
    out = pd.DataFrame(pos, columns=cols)
    out["intensity"] = a
    out["integrated_intensity"] = a * c_all[k]
    out["sigma_um"] = sig_all[k, -1] * pixel_size_um
    out["snr"] = t
    out["noise_sd"] = sn
    out = out.sort_values(cols, ignore_index=True)
    out.attrs.update(
        {
            "n_z": arr.shape[0] if ndim == 3 else 1,
            "pixel_size_um": float(pixel_size_um),
            "z_step_um": dz if ndim == 3 else None,
            "axial_radius_um": float(axial_radius_um) if ndim == 3 else None,
            "axial_radius_estimated": bool(axial_estimated) if ndim == 3 else None,
            "threshold_sd": float(threshold_sd),
            "threshold_used": threshold_used,
            "punctum_radius_um": float(punctum_radius_um),
            "punctum_radius_estimated": bool(estimated),
            "noise_alpha": noise_info["alpha"],
            "noise_beta": noise_info["beta"],
            "noise_correlation": _info_correlation(noise_info),
            "tie_ratio": float(noise_info.get("tie_ratio", np.nan)),
            "block_ratio": float(noise_info.get("block_ratio", np.nan)),
            "jpeg_lattice": float(noise_info.get("jpeg_lattice", np.nan)),
            "noise_factor": float(found["noise_factor"]),
            "elongated_puncta": bool(found["elongated"]),
            "psf_quadrupole": float(found["quadrupole"]),
            "not_imaged_px": int(outside.sum()) if outside is not None else 0,
            "beyond_edge_px": n_beyond,
            "hot_pixels": int(n_hot),
            "stripe_ratio": stripes["stripe_ratio"],
            "stripes_removed": int(stripes["stripes_removed"]),
        }
    )
    log.debug("detected %d puncta (%d candidates, %d tile(s))", len(out), found["n_cand"], len(tiles))
    return out, regions, bg_px, {"skew": float(gamma), "sigma_px": float(sigma0[-1])}


def _detect_block(block: np.ndarray, **settings: Any) -> dict[str, Any]:
    """Steps 2-4 of :func:`detect_puncta` on one block of the image (the whole image, or a
    tile with its margin; ``settings``: the keywords of :func:`_detect_block_pass`, among them
    ``plane_level``, a stack's planes' levels, removed as background): candidates, joint fit
    and pruning, second pass.  Returns the
    puncta (``pos`` in the block's pixels, size index ``k``, amplitude ``a``, significance
    ``t``, local pixel noise ``sn``) whose centre lies in ``region`` (lo <= p < hi per axis; all
    without), and ``n_cand``.

    Where the pixel noise is correlated, the noise factor measured on the response is an
    overestimate wherever puncta are (their filter surrounds); the block is detected again
    with the factor measured on the residual of the previous fit, until it changes by less
    than :data:`_NOISE_FACTOR_TOL` (at most :data:`_NOISE_FACTOR_PASSES` more times; the
    passes between the first and the last stop at the first fit).  An image whose noise may
    be mildly correlated (``factor_cap`` in ``settings``, :func:`_mild_factor_cap`) is detected
    again once at most, with the residual's factor bounded by that cap (each pass of a
    1,024^2 culture field costs ~10 s)."""
    found = _detect_block_pass(block, **settings)
    f_res = found.pop("residual_factor")  # (None: the noise is not correlated)
    factor = found["noise_factor"]
    cap = settings.get("factor_cap")
    most = _NOISE_FACTOR_PASSES if cap is None else 1
    passes = 0
    while f_res is not None and passes < most:
        new = max(1.0, f_res if cap is None else min(f_res, cap))
        if abs(new - factor) <= _NOISE_FACTOR_TOL * factor:
            break  # (settled: the factor of the fit it was measured on is kept)
        log.debug("correlated noise: factor %.3f, %.3f on the residual of its fit", factor, new)
        factor = new
        passes += 1
        f_res = (_detect_block_pass(block, **settings, noise_factor=factor, factor_only=True)
                 if passes < most else None)
    if factor != found["noise_factor"]:
        found = _detect_block_pass(block, **settings, noise_factor=factor)
        del found["residual_factor"]
    return found


def _in_focus_scales(sigma_px: float) -> tuple[float, ...]:
    """The in-focus punctum sizes fitted, as multiples of the nominal lateral sigma
    ``sigma_px`` (pixels): :data:`_IN_FOCUS_SCALES`, and those of :data:`_NARROW_SCALES` whose
    sigma is at least :data:`_NARROW_MIN_PX`.

    >>> _in_focus_scales(2.0)
    (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.12, 1.25, 1.4)
    >>> _in_focus_scales(1.27)
    (0.8, 0.9, 1.0, 1.12, 1.25, 1.4)
    """
    return tuple(f for f in _NARROW_SCALES if f * sigma_px >= _NARROW_MIN_PX) + _IN_FOCUS_SCALES


#: Gaussian smoothing sigmas (pixels) over which :func:`_smoothed_noise_table` is tabulated.
_SMOOTHING_SIGMAS = np.round(np.arange(0.0, 1.0001, 0.01), 2)


@functools.lru_cache(maxsize=16)
def _smoothed_noise_table(sigma_px: float, background_px: float) -> tuple[np.ndarray, np.ndarray]:
    """What white noise smoothed by a Gaussian of each sigma of :data:`_SMOOTHING_SIGMAS`
    (sampled as :func:`scipy.ndimage.gaussian_filter` does) reads in a plane: its
    :func:`~analysis.measure.noise.noise_correlation` (Immerkaer's operator with taps 2 px
    apart over taps 1 px apart, variances), and the factor by which the nominal response's
    noise SD (a punctum of sigma ``sigma_px`` on the background of ``background_px``,
    :class:`_Scale`) exceeds the noise model's (:func:`_smoothed_noise_factor`).  Both rise
    with the smoothing; the figure does not depend on the filter.

    >>> corr, factor = _smoothed_noise_table(1.5, 3.5)
    >>> [round(float(corr[i]), 2) for i in (0, 40, 50, 70)]  # sigma 0, 0.4, 0.5, 0.7 px
    [1.0, 1.27, 2.2, 9.53]
    >>> [round(float(factor[i]), 2) for i in (0, 40, 50, 70)]
    [1.0, 1.3, 2.2, 7.74]
    """
    corr = _smoothed_correlations()
    factor = np.array([_smoothed_noise_factor((sigma_px,) * 2, (background_px,) * 2, (float(sm),) * 2)
                       for sm in _SMOOTHING_SIGMAS])
    return corr, factor


def _sampled_gaussian_transform(n: int, sigma: float) -> np.ndarray:
    """The transform (length ``n``, real: centred on sample 0) of a unit impulse filtered by
    :func:`scipy.ndimage.gaussian_filter1d` with ``sigma`` (the identity for 0)."""
    d = np.zeros(n)
    d[n // 2] = 1.0
    k = d if sigma <= 0 else ndi.gaussian_filter1d(d, sigma, mode="constant")
    return np.fft.fft(np.fft.ifftshift(k)).real


def _immerkaer_axis_vars(n: int, smooth2: np.ndarray) -> tuple[float, float]:
    """Variances of the second difference along one axis, with its taps 1 and 2 samples apart,
    of white noise of unit variance whose squared transform along that axis is ``smooth2``
    (length ``n``; Parseval)."""
    taps = np.array([1.0, -2.0, 1.0])
    wide = np.array([1.0, 0.0, -2.0, 0.0, 1.0])
    return tuple(float(np.mean(np.abs(np.fft.fft(t, n)) ** 2 * smooth2)) for t in (taps, wide))


@functools.lru_cache(maxsize=1)
def _smoothed_correlations() -> np.ndarray:
    """:func:`~analysis.measure.noise.noise_correlation` of white noise smoothed by a Gaussian
    of each sigma of :data:`_SMOOTHING_SIGMAS` (the square of
    :func:`_smoothed_axis_correlation`; a stack's axial figure too, along z)."""
    return np.array([_smoothed_axis_correlation(float(sm)) ** 2 for sm in _SMOOTHING_SIGMAS])


@functools.lru_cache(maxsize=128)
def _smoothed_axis_correlation(smoothing_px: float) -> float:
    """The ratio of :func:`_immerkaer_axis_vars` (taps 2 over 1 apart) of white noise smoothed
    along one axis by a Gaussian of ``smoothing_px``: 1 for independent noise.  The noise
    model's figures are products of it: :func:`~analysis.measure.noise.noise_correlation` in a
    plane (Immerkaer's operator is a second difference along each axis) its square, and along
    a stack's z axis its square too."""
    n = 2 * (int(np.ceil(4.0 * smoothing_px)) + 4) + 1
    v1, v2 = _immerkaer_axis_vars(n, _sampled_gaussian_transform(n, smoothing_px) ** 2)
    return v2 / v1


@functools.lru_cache(maxsize=256)
def _smoothed_noise_factor(sigma_px: tuple[float, ...], background_px: tuple[float, ...],
                           smoothing_px: tuple[float, ...]) -> float:
    """The factor by which the nominal response's noise SD (a punctum of sigma ``sigma_px`` on
    the background of ``background_px``, per axis, :class:`_Scale`) exceeds the noise model's,
    for white noise smoothed by a Gaussian of ``smoothing_px`` per axis (sampled as
    :func:`scipy.ndimage.gaussian_filter` does).  The noise model reads each plane's noise
    through Immerkaer's operator as if it were independent: the lateral smoothing lowers that
    reading far more than it lowers the response's noise; smoothing along a stack's z axis
    lowers the planes' noise as much as the reading of it, and the response's noise less.
    Exact, by Parseval's theorem on a grid wide enough for every kernel: every kernel is a
    product over the axes (the background's ``1 - G`` squared is formed from its transform).

    >>> round(_smoothed_noise_factor((1.5, 1.5), (3.5, 3.5), (0.5, 0.5)), 2)
    2.2
    >>> round(_smoothed_noise_factor((2.5, 1.5, 1.5), (5.0, 3.5, 3.5), (0.0, 0.5, 0.5)), 2)  # z, y, x
    2.23
    """
    nd = len(sigma_px)
    resp, back, smooth2 = [], [], []
    lateral, plane_var = 1.0, 1.0
    for ax in range(nd):
        n = 2 * (int(np.ceil(4.0 * np.hypot(sigma_px[ax], np.sqrt(2.0) * background_px[ax])
                             + 4.0 * smoothing_px[ax])) + 3) + 1
        shape = [1] * nd
        shape[ax] = n
        k2 = _sampled_gaussian_transform(n, smoothing_px[ax]) ** 2
        resp.append(_sampled_gaussian_transform(n, sigma_px[ax]).reshape(shape))
        back.append(_sampled_gaussian_transform(n, background_px[ax]).reshape(shape))
        smooth2.append(k2.reshape(shape))
        if ax < nd - 2:
            plane_var *= float(np.mean(k2))  # (a stack's planes average over z: less noise per plane)
        else:
            lateral *= _immerkaer_axis_vars(n, k2)[0] / 6.0  # (Immerkaer's operator, / 6 per axis)
    h2 = functools.reduce(np.multiply, resp) * (1.0 - functools.reduce(np.multiply, back)) ** 2
    h2 *= h2
    smoothed = float(np.mean(h2 * functools.reduce(np.multiply, smooth2)))
    return float(np.sqrt(smoothed / float(np.mean(h2)) / (lateral * plane_var)))


def _mild_factor_cap(noise_info: dict[str, float], sigma0: np.ndarray, bg: np.ndarray) -> float | None:
    """The largest noise factor an image whose noise may be mildly correlated is given: what
    white noise smoothed by a Gaussian to its correlation figures gives
    (:func:`_smoothed_noise_factor`; in a plane, from :func:`_smoothed_noise_table`).  In a
    stack the lateral figure (``correlation``) and the axial one (``axial_correlation``) each
    give a smoothing sigma along their axes (:func:`_smoothed_axis_correlation`).  Dense
    puncta raise those figures too, so they bound the noise's own correlation from above, as
    the spread measured on the residual of the fit does (unfitted or misfitted puncta widen
    it: 10-12 on sim-fish's crowded fields at 250 nm, whose noise is independent); the
    smaller of the two is used.  None where the figure
    (:func:`~analysis.measure.noise.noise_correlation`) is at most
    :data:`~analysis.measure.noise.MILD_CORRELATION` (independent noise), and where
    :func:`_correlated` holds (measured without a bound)."""
    c = _info_correlation(noise_info)
    if not np.isfinite(c) or c <= MILD_CORRELATION or _correlated(noise_info):
        return None
    if len(sigma0) == 2:
        corr, factor = _smoothed_noise_table(float(sigma0[-1]), float(bg[-1]))
        return float(np.interp(c, corr, factor))
    corr = _smoothed_correlations()
    smoothing = []
    for key in ("axial_correlation", "correlation"):
        v = float(noise_info.get(key, np.nan))
        # (figures at or below 1, and an axial figure not measured (fewer than 5 planes): none)
        smoothing.append(float(np.interp(v, corr, _SMOOTHING_SIGMAS)) if np.isfinite(v) and v > 1.0 else 0.0)
    sz, sl = (round(s, 3) for s in smoothing)
    return _smoothed_noise_factor(tuple(round(float(s), 6) for s in sigma0),
                                  tuple(round(float(b), 6) for b in bg), (sz, sl, sl))


def _correlated(noise_info: dict[str, float]) -> bool:
    """Whether the pixel noise of ``noise_info`` (:func:`_noise_model`) is correlated: by its
    correlation figure, a median filter's ties or a JPEG's blocks or quantised coefficients."""
    # (a median filter's ties: their noise reads as mildly correlated, 3-4, and gave ~2,000
    # false puncta per 1,000 um^2 of noise; a JPEG may read ~1-4, where the codec quantised
    # the noise away block by block: its blocks, or its quantised coefficients, tell)
    return (_info_correlation(noise_info) > CORRELATED_NOISE
            or noise_info.get("tie_ratio", 1.0) > TIED_NEIGHBOURS
            or noise_info.get("block_ratio", 1.0) > JPEG_BLOCKS
            or noise_info.get("jpeg_lattice", 0.0) > JPEG_LATTICE)


def _detect_block_pass(
    block: np.ndarray,
    *,
    sigma0: np.ndarray,
    bg: np.ndarray,
    sep: np.ndarray,
    noise_info: dict[str, float],
    threshold_sd: float,
    reject_out_of_focus: bool,
    region: tuple[np.ndarray, np.ndarray] | None = None,
    no_split: np.ndarray | None = None,
    plane_level: np.ndarray | None = None,
    noise_factor: float | None = None,
    factor_only: bool = False,
    factor_cap: float | None = None,
) -> Any:
    """One detection of :func:`_detect_block`; ``noise_factor``: the correlated noise's factor
    to use (None: measured on the response).  Returns also ``residual_factor``: for correlated
    noise the factor measured on the residual of the first fit (the factor used when that fit
    found nothing), else None; ``factor_only``: returns only that.  ``factor_cap``: the plane's
    noise may be mildly correlated (:func:`_mild_factor_cap`): it is treated as correlated, and
    the factor measured on the response is at most this."""
    # (the block is converted here, so that its floating-point copy goes as soon as it is used;
    # full-size maps are computed in place where the values are the same)
    img = np.asarray(block, dtype=np.float64)
    del block
    ndim = img.ndim
    shape = img.shape
    hh_img, blur2 = _double_high_pass(img, bg)  # H'H I: the image seen by every size's response
    if plane_level is not None:
        # the planes' levels as a background of their own: their part of H'H I goes
        hh_lev = _double_high_pass(np.asarray(plane_level, float), bg[:1])[0]
        hh_img -= hh_lev[:, None, None]
    noise = _noise_at(noise_info, blur2)
    correlated = _correlated(noise_info) or factor_cap is not None
    dark = blur2 <= np.quantile(blur2, 0.25) if correlated else None
    del blur2
    in_focus = _in_focus_scales(float(sigma0[-1]))
    scales = [_Scale(shape, sigma0 * f, bg) for f in in_focus]
    if reject_out_of_focus:
        scales.extend(_Scale(shape, sigma0 * f, bg) for f in _OUT_OF_FOCUS_SCALES)
    n_in = len(in_focus)
    nom = in_focus.index(1.0)
    nominal = scales[nom]
    f_nom = nominal.response(hh_img)
    sd_nom = nominal.unit_sd()
    sd_nom *= noise
    z_nom = f_nom / sd_nom
    factor_given, noise_factor = noise_factor, 1.0
    residual_factor = None
    elongated = None  # (measured before the first split: are the image's single puncta drawn out?)
    quad_peak = 0.0  # (the largest amplitude of the wing's quadrupole, when one is seen)
    wing = quad = None
    if correlated:
        # correlated pixel noise (smoothed, interpolated, denoised) passes the punctum-sized
        # response far more than Immerkaer's operator says: the response's own noise, the
        # spread of its lower half in the darkest quarter of the block (puncta add to its
        # upper half; their filter surrounds make it, if anything, an overestimate)
        if factor_given is None:
            zd = z_nom[dark]
            noise_factor = max(1.0, float(np.median(zd)) - float(np.quantile(zd, _ONE_SD_BELOW)))
            if factor_cap is not None:
                noise_factor = max(1.0, min(noise_factor, factor_cap))
            del zd
        else:
            noise_factor = factor_given
        noise *= noise_factor
        sd_nom *= noise_factor
        z_nom /= noise_factor
    strong = z_nom >= 0.5 * threshold_sd
    del z_nom

    footprint = tuple(2 * int(s) + 1 for s in sep)
    # (the model error's reach: laterally that of the double high pass; in a stack axially
    # that of the punctum itself, where a lateral wing's light is)
    wing_reach = np.full(ndim, 3.0 * float(np.sqrt(sigma0[-1] ** 2 + 2.0 * bg[-1] ** 2)))
    if ndim == 3:
        wing_reach[0] = 3.0 * float(sigma0[0])
    sharp = _filters.gaussian_laplace(img, _SHARP * sigma0, mode="reflect")
    np.negative(sharp, out=sharp)
    del img
    cand = _extrema(sharp, footprint, strong)
    del strong
    edges = _image_edges(shape, region)
    pos = _subpixel(sharp, cand, edges)
    n_cand = len(pos)
    del sharp, cand

    sig_all = np.stack([s.sigma for s in scales])
    c_all = np.array([s.c for s in scales])
    k0_all = np.array([s.k0 for s in scales])
    radius = np.ceil(4 * np.max([s.filters[0] for s in scales], axis=0)).astype(int)
    unit = np.maximum(sig_all.max(axis=0), bg)  # neighbour search in units of the widest model
    cut = 4.0 * np.sqrt(2.0) * np.sqrt(2.0)  # |overlap| < ~1e-3 beyond 4 SD of sqrt(2 s^2 + 2 b^2)
    if ndim == 3:
        # a stack has tens of times more candidate pairs within ``cut`` than strong ones (GBs
        # of pair indices for a 30-plane field): query only the distance within which a pair
        # can be strong (the same strong pairs; planes keep ``cut``)
        cut = _strong_pair_radius(scales[:n_in], unit, bg, cut)
    # the patches of the candidates are read from one padded copy of H'H I (the image itself is
    # a view into it)
    hh_pad = _padded(hh_img, radius)
    if hh_pad is not None:
        hh_img = hh_pad[tuple(slice(int(p), int(p) + n) for p, n in zip(radius + 3, hh_img.shape))]

    def at(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Responses at every size, their unit noise SDs, pixel noise and close pairs."""
        if len(points) == 0:
            return np.zeros((len(scales), 0)), np.zeros((n_in, 0)), np.zeros(0), np.zeros((0, 2), int)
        centres = np.rint(points).astype(int)
        # (in batches: the patches of all candidates of a large field or stack would take GBs)
        batch = max(64, _BATCH_BYTES // (8 * int(np.prod(2 * radius + 1))))
        resp = np.concatenate([
            _responses_at(scales, _patches(hh_img, centres[b : b + batch], radius, hh_pad),
                          points[b : b + batch] - centres[b : b + batch], radius)
            for b in range(0, len(points), batch)], axis=1)
        unit_sd = np.stack([s.unit_sd(points) for s in scales[:n_in]])
        sn = ndi.map_coordinates(noise, points.T, order=1, mode="nearest")
        pairs = cKDTree(points / unit).query_pairs(cut, output_type="ndarray").astype(np.int32)
        return resp, unit_sd, sn, pairs  # (pairs are recomputed for the full set by callers)

    a = t = np.zeros(0)
    k = np.zeros(0, int)
    twin = None  # index of the other punctum of a split blob, -1
    edge_terms: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # folded self-terms of edge puncta
    split_min_d = max(_MIN_SEPARATION_PX, _SPLIT_MIN_SEP * float(sigma0[-2:].max()))
    for rnd in range(2):
        if twin is not None and len(twin) < len(pos):
            twin = np.concatenate([twin, np.full(len(pos) - len(twin), -1)])
        resp, unit_sd, sn, pairs = at(pos)
        keep = np.ones(len(pos), bool)
        k = np.concatenate([k, np.full(len(pos) - len(k), nom)]) if rnd else np.full(len(pos), nom)
        final, k_used, ok = np.zeros(0, int), np.zeros(0, int), np.zeros(0, bool)
        a = t = np.zeros(0)
        resized, refined = (0, 0) if rnd == 0 else (2, 1)  # survivors are settled already
        # each pair's overlap <H g_i, H g_j>, kept over the rounds while neither punctum moves
        # or changes size (most rounds only drop candidates); reset with ``pairs`` (a move)
        pair_k, pairs_of_cache, k_seen = np.zeros(0), None, np.zeros(0, int)
        for _ in range(100):
            idx = np.flatnonzero(keep)
            n = len(idx)
            if n == 0:
                final, k_used, ok = idx, np.zeros(0, int), np.zeros(0, bool)
                a = t = np.zeros(0)
                break
            remap = np.full(len(pos), -1, dtype=np.int32)
            remap[idx] = np.arange(n)
            p = pos[idx]
            kk = k[idx]
            sig, cc = sig_all[kk], c_all[kk]
            m = k0_all[kk]
            # the pairs that overlap (|correlation| > 0.01), in chunks of pairs: a stack has many
            # more close pairs than overlapping ones (GBs of per-pair temporaries at once)
            if pairs_of_cache is not pairs or not _CACHE_PAIR_OVERLAPS:
                pair_k, pairs_of_cache, k_seen = np.empty(len(pairs)), pairs, np.full(len(pos), -1)
            changed = k != k_seen
            chunks = []
            for c0 in range(0, len(pairs), _PAIR_CHUNK):
                pg = pairs[c0 : c0 + _PAIR_CHUNK]
                pr = remap[pg]
                both = np.minimum(pr[:, 0], pr[:, 1]) >= 0  # (= (pr >= 0).all(axis=1), several times faster)
                ic, jc = pr[both, 0], pr[both, 1]
                d2c = (p[ic] - p[jc]) ** 2
                rows = c0 + np.flatnonzero(both)
                stale = changed[pg[both, 0]] | changed[pg[both, 1]]
                if stale.any():  # (the same numbers as computing every pair: elementwise)
                    i_s, j_s = ic[stale], jc[stale]
                    pair_k[rows[stale]] = _overlap(d2c[stale], sig[i_s], sig[j_s], cc[i_s], cc[j_s], bg, _W_K)
                kc = pair_k[rows]
                rc = kc / np.sqrt(m[ic] * m[jc])
                strong = np.abs(rc) > 0.01
                chunks.append((ic[strong], jc[strong], d2c[strong], kc[strong], rc[strong]))
            k_seen = k.copy()
            if chunks:
                i, j, d2, kij, corr = (np.concatenate(x) for x in zip(*chunks))
            else:
                i = j = np.zeros(0, np.int32)
                d2, kij, corr = np.zeros((0, ndim)), np.zeros(0), np.zeros(0)
            qij = _overlap(d2, sig[i], sig[j], cc[i], cc[j], bg, _W_Q)
            y = resp[kk, idx]
            q = unit_sd[kk, idx] ** 2
            # a punctum near an image edge: the filters see it with its mirror image, so its
            # own response at its centre is the folded one (the neighbours' overlaps stay plain)
            e_p = _edge_lines(p, edges, 2.0 * np.sqrt(nominal.sigma**2 + sig**2))
            at_edge = np.flatnonzero(np.isfinite(e_p).any(axis=1))
            m_fit = m
            if len(at_edge):
                # (a punctum keeps its place and size over most rounds: its terms are kept)
                pe, ke = p[at_edge], kk[at_edge]
                keys = [row.tobytes() + int(k_).to_bytes(2, "little") for row, k_ in zip(pe, ke)]
                new_rows = [r for r, key in enumerate(keys) if key not in edge_terms]
                if new_rows:
                    pn, ee = pe[new_rows], e_p[at_edge][new_rows]
                    s_e, c_e = sig_all[ke[new_rows]], c_all[ke[new_rows]]
                    s_a, c_a = sig_all[:, None, :], c_all[:, None]
                    # each size's response to the punctum as away from the edge, over the folded one
                    ratio = (_overlap(np.zeros((1,) + pn.shape), s_a, s_e[None], c_a, c_e[None], bg, _W_K)
                             / _folded_overlap(pn[None], pn[None], ee[None], s_a, s_e[None], c_a, c_e[None], bg))
                    m_self = _folded_overlap(pn, pn, ee, s_e, s_e, c_e, c_e, bg)
                    for r_, r in enumerate(new_rows):
                        edge_terms[keys[r]] = (m_self[r_], ratio[:, r_])
                m_fit = m.copy()
                m_fit[at_edge] = [edge_terms[key][0] for key in keys]
                edge_ratio = np.stack([edge_terms[key][1] for key in keys], axis=1)
            amp, var = _solve_clusters(n, i, j, m_fit, q, kij, qij, y, corr)
            tt = amp / (sn[idx] * np.sqrt(np.maximum(var, 1e-300)))
            # responses with the neighbours' fitted models removed (deblended), every scale
            deb = resp[:, idx].copy()
            if len(i):
                n_s = len(scales)
                sig_s, c_s = sig_all[:, None, :], c_all[:, None]
                other = kk[i] != kk[j]
                into_i, into_j = np.empty((n_s, len(i))), np.empty((n_s, len(i)))
                # (in chunks of pairs: the temporaries of the Gaussians of every size x every
                # pair at once were the peak of a stack's detection; the same numbers)
                step = max(1, _PAIR_CHUNK // n_s)
                for c0 in range(0, len(i), step):
                    c = slice(c0, c0 + step)
                    ic, jc, oc = i[c], j[c], other[c]
                    o_j = _overlap(d2[c][None], sig_s, sig[jc][None], c_s, cc[jc][None], bg, _W_K)
                    # (a pair of equal sizes, the usual case, has the same overlaps both ways)
                    o_i = o_j.copy()
                    if oc.any():
                        o_i[:, oc] = _overlap(d2[c][oc][None], sig_s, sig[ic][oc][None], c_s, cc[ic][oc][None],
                                              bg, _W_K)
                    np.multiply(amp[jc], o_j, out=into_i[:, c])
                    np.multiply(amp[ic], o_i, out=into_j[:, c])
                    del o_i, o_j
                rows = np.arange(n_s)[:, None] * n
                deb -= np.bincount((rows + i).ravel(), into_i.ravel(), minlength=n_s * n).reshape(n_s, n)
                deb -= np.bincount((rows + j).ravel(), into_j.ravel(), minlength=n_s * n).reshape(n_s, n)
            deb_fit = deb
            if len(at_edge):  # (each size's response as that of the same punctum away from the edge)
                deb_fit = deb.copy()
                deb_fit[:, at_edge] *= edge_ratio
            fit = np.sign(deb_fit) * deb_fit**2 / k0_all[:, None]  # least-squares gain of each size
            z2 = (deb[nom] / (sn[idx] * unit_sd[nom, idx])) ** 2
            best_in = fit[:n_in].argmax(axis=0)
            f_in = fit[best_in, np.arange(n)]

            def gain(f1: np.ndarray, f0: np.ndarray) -> np.ndarray:
                # f0 <= 0 (no gain at the nominal size): the ratio is +inf, any size is better
                with np.errstate(over="ignore"):
                    return z2 * (f1 / np.maximum(f0, 1e-300) - 1.0)

            new_k = np.where(gain(f_in, fit[nom]) > _LIKELIHOOD_GAIN, best_in, nom)
            broad = np.zeros(n, bool)
            if reject_out_of_focus:
                broad = gain(fit[n_in:].max(axis=0), f_in) > _LIKELIHOOD_GAIN
            # two puncta closer than the minimum separation (re-centring can bring them
            # together) are one: the weaker goes
            close = ((d2 / sep**2).sum(axis=1) < 1.0) if len(i) else np.zeros(0, bool)
            if twin is not None and len(i):
                # the two puncta fitted to one blob (_split_unresolved) stay two down to the
                # closest separation tried there
                tw = twin[idx[i]] == idx[j]
                close[tw] = np.sqrt(d2[tw].sum(axis=1)) < split_min_d
            merged = np.zeros(n, bool)
            merged[np.where(tt[i] < tt[j], i, j)[close]] = True
            low = (tt < threshold_sd) | broad | merged
            a, t, ok, final, k_used = amp, tt, ~low, idx, kk
            if low.any():
                # drop the weak ones, but of two overlapping weak candidates only the weaker
                weak = low & ~broad & ~merged
                both = weak[i] & weak[j] & (np.abs(corr) > _PROTECT)
                drop = low.copy()
                drop[np.where(tt[i] >= tt[j], i, j)[both]] = False
                keep[idx[drop]] = False
                k[idx] = new_k
                continue
            # all significant: re-estimate sizes (a few times at most: the sizes of
            # neighbours can trade off and flip back and forth) and re-centre each punctum
            # on its deblended response (twice), then refit
            resize = resized < 3 and not np.array_equal(new_k, kk)
            moved = np.zeros(n, bool)
            if refined < 2:
                refined += 1
                new_p = _refine(p, amp, sig, cc, i, j, f_nom, nominal, bg, edges)
                moved = np.abs(new_p - p).max(axis=1) > 0.02
            if not (resize or moved.any()):
                break
            if resize:
                resized += 1
                k[idx] = new_k
            if moved.any():
                pos = pos.copy()
                pos[idx[moved]] = new_p[moved]
                r_, u_, s_, _ = at(new_p[moved])
                resp[:, idx[moved]], unit_sd[:, idx[moved]], sn[idx[moved]] = r_, u_, s_
                pairs = cKDTree(pos / unit).query_pairs(cut, output_type="ndarray").astype(np.int32)
        # (normally all of ``final`` passed; after the iteration cap, keep only those that did)
        pos, k, a, t = pos[final][ok], k_used[ok], a[ok], t[ok]
        if rnd == 0 and correlated:
            residual_factor = noise_factor
            if factor_only and len(pos) == 0:
                return residual_factor
        if rnd == 1 or len(pos) == 0:
            break
        # second pass: maxima of the residual significance (puncta hidden by brighter ones)
        hh_model = _double_high_pass(_render(shape, pos, a, sig_all[k]), bg)[0]
        z_res = nominal.response(hh_model)
        np.subtract(f_nom, z_res, out=z_res)
        n_split = 0
        elongated = _elongation_seen(z_res, pos, a, k, t, sd_nom=sd_nom, nominal=nominal, sig_all=sig_all,
                                     c_all=c_all, k0_all=k0_all, bg=bg, reach=wing_reach)
        if ndim == 2:
            pos, k, a, t, n_split, (old_pos, old_a, old_k) = _split_unresolved(
                pos, k, a, t, z_res, noise=noise, sd_nom=sd_nom, nominal=nominal, nom=nom, sig_all=sig_all,
                c_all=c_all, k0_all=k0_all, bg=bg, threshold_sd=threshold_sd, sep=sep, edges=edges,
                no_split=no_split, elongated=elongated)
            if n_split:
                first = len(pos) - 2 * n_split
                twin = np.full(len(pos), -1)
                twin[first : first + n_split] = np.arange(first + n_split, len(pos))
                twin[first + n_split :] = np.arange(first, first + n_split)
                # the residual of the split model: changed in closed form around the split blobs
                # (or computed again when they cover more than twice the image)
                p_, a_, k_ = (np.concatenate([x[first:], y]) for x, y in ((pos, old_pos), (a, -old_a), (k, old_k)))
                if not _subtract_models(z_res, p_, a_, sig_all[k_], c_all[k_], nominal, bg):
                    hh_model = _double_high_pass(_render(shape, pos, a, sig_all[k]), bg)[0]
                    z_res = nominal.response(hh_model)
                    np.subtract(f_nom, z_res, out=z_res)
        del hh_model
        z_res /= sd_nom
        if correlated and rnd == 0:
            # (the same spread on the residual of this first fit: the surrounds of the puncta
            # found are gone with their models)
            zd = z_res[dark]
            residual_factor = noise_factor * (float(np.median(zd)) - float(np.quantile(zd, _ONE_SD_BELOW)))
            del zd
            dark = None  # (a full-size mask, needed no further)
            if factor_only:
                return residual_factor
        # what a PSF that is not Gaussian leaves around bright puncta (heavier wings),
        # measured around the image's own bright isolated puncta, is not a punctum hidden
        # by them: the wing is taken out of the residual
        wing, quad = _psf_wing(z_res, pos, t, wing_reach, 2.0 * float(sigma0[-1]))
        if quad is not None:
            quad_peak = float(np.hypot(quad[0], quad[1]).max())
        _take_out_wing(z_res, pos, t, wing, quad)
        if ndim == 2:
            # and each bright punctum's own rings (its size or shape off the model's)
            bright = t >= _PSF_MIN_T
            if bright.any():
                _take_out_own_rings(z_res, pos[bright], int(np.ceil(_OWN_RING_REACH * sigma0[-1])))
        peaks = _extrema(z_res, footprint, z_res >= threshold_sd)
        new = _subpixel(z_res, peaks, edges)
        del z_res
        if len(new):
            dist, _ = cKDTree(pos / sep).query(new / sep)
            new = new[dist >= 1.0]
        if len(new) == 0 and not n_split:
            break  # (split puncta go through the second fit even without new candidates)
        pos = np.concatenate([pos, new])

    # a punctum centred beyond a lateral image edge (outside the field: tissue goes on there)
    # is placed on the outermost pixels by the fit, which keeps centres in the image; refitted
    # without that limit, those whose centre lies beyond the edge line are not counted (their
    # light stays in the model of the residual below)
    beyond_edge = _beyond_lateral_edges(pos, a, sig_all[k], c_all[k], f_nom, nominal, bg, edges, unit, cut)
    if elongated is not None:
        # puncta that one elongated punctum explains as well: the weaker is not counted (its
        # light stays in the model), the brighter takes the elongated punctum's centre
        lobe, pos = _merge_elongated(pos, a, k, t, f_nom, sd_nom, nominal, sig_all, c_all, bg, edges, elongated)
        beyond_edge |= lobe
    # (the pixel noise at every punctum first: its map goes before the negative control's maps)
    sn = ndi.map_coordinates(noise, pos.T, order=1, mode="nearest") if len(pos) else np.zeros(0)
    del noise
    # the quadrupole of the wing dips across the puncta as it peaks along them: model error,
    # not background (in images read as elongated the final model is not the one it was
    # measured on: the merge changed it)
    neg_quad = quad if elongated is None else None
    neg_at = _negative_control(hh_img, pos, a, sig_all[k], f_nom, sd_nom, nominal,
                               scales[-1] if reject_out_of_focus else None, bg, footprint, 0.5 * threshold_sd,
                               t=t, quad=neg_quad)
    if len(neg_at) and len(pos):
        # a dip on the centre pixel of a more significant punctum is that punctum's model
        # error (the fitted Gaussian misses the pixel-integrated peak of a spot narrower
        # than a pixel), not background: a peak there could not have been reported
        dist, j = cKDTree(pos).query(neg_at[:, :ndim])
        neg_at = neg_at[~((dist <= 1.0) & (t[j] >= neg_at[:, ndim]))]
    if region is not None and len(neg_at):
        neg_at = neg_at[np.all((neg_at[:, :ndim] >= region[0]) & (neg_at[:, :ndim] < region[1]), axis=1)]
    neg = neg_at[:, ndim]
    if beyond_edge.any():
        pos, k, a, t, sn = pos[~beyond_edge], k[~beyond_edge], a[~beyond_edge], t[~beyond_edge], sn[~beyond_edge]
    if region is not None and len(pos):
        own = np.all((pos >= region[0]) & (pos < region[1]), axis=1)
        pos, k, a, t, sn = pos[own], k[own], a[own], t[own], sn[own]
    return {"pos": pos, "k": k, "a": a, "t": t, "sn": sn, "n_cand": n_cand, "neg": neg,
            "noise_factor": noise_factor, "elongated": elongated is not None, "quadrupole": quad_peak,
            "residual_factor": residual_factor}


#: Chi-square gain (beyond one punctum's) needed to call one blob two puncta.  The gain of the
#: best pair over a single spot is the maximum over ~10^2-10^3 pair placements, not one
#: chi-square variable; on 4,320 isolated Gaussian spots with Poisson noise (sigma 1-4 px,
#: peak SNR 1.5-630) it split none (``benchmarks/calibrate_split.py``; RESULTS.md, session 19).
_SPLIT_CHI2 = 20.0
#: Closest pair of puncta fitted to one blob, in nominal sigmas (closer, two spots are a
#: broader one: the pair's design matrix becomes singular).
_SPLIT_MIN_SEP = 1.0


#: Single elongated puncta tried against a split (:func:`_elongated_gain`): a nominal punctum
#: blurred along a line at these angles (radians) by a 1-D Gaussian of these SDs (in nominal
#: sigmas: aspect ratios sqrt(1 + f^2) of 1.12-2.06), centred at the punctum and half a pixel
#: around it.
_ELONGATION_ANGLES = np.arange(12) * np.pi / 12
_ELONGATION_SD = (0.5, 0.8, 1.2, 1.8)
_ELONGATION_SHIFTS = np.array([[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0], [0.0, 0.5], [0.0, -0.5]])


def _elongated_gain(res: np.ndarray, centres: np.ndarray, own_pos: np.ndarray, own_a: np.ndarray,
                    own_sig: np.ndarray, own_c: np.ndarray, s: np.ndarray, c0: float,
                    bg: np.ndarray, shifts: np.ndarray = _ELONGATION_SHIFTS) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares gain (the units of :func:`_split_unresolved`'s ``g1``, ``g2``) of the best
    single *elongated* punctum of each of ``n`` groups of fitted puncta, and its centre (in a
    stack, lines and shifts are lateral).

    The elongated punctum is a nominal punctum blurred along a line, ``E = sum_k w_k T(p + u_k
    e)``, with Gaussian weights ``w_k`` (samples every half pixel), over
    :data:`_ELONGATION_ANGLES` and :data:`_ELONGATION_SD`, centred at each of ``centres`` (n, c,
    ndim) and ``shifts`` (lateral) around them.  Its light is ``sum_k w_k y(p + u_k e)``,
    ``y`` the residual response ``res`` (bilinear) plus the group's own fitted models (``own_*``:
    (n, m, ...) positions, amplitudes, per-axis sigmas and normalisations), and its norm ``sum_kl
    w_k w_l <H T_k, H T_l>``: the pair of :func:`_split_unresolved` is the two-sample case of
    the same family."""
    n, ndim = len(centres), res.ndim
    best = np.zeros(n)
    where = centres[:, 0].copy()
    hi = np.array(res.shape, float) - 1.0
    sm = float(np.mean(s[-2:]))
    if ndim == 3:  # (lateral lines and shifts in a stack)
        shifts = np.column_stack([np.zeros(len(shifts)), shifts])
    ctr = (centres[:, :, None, :] + shifts[None, None, :, :]).reshape(n, -1, ndim)
    for f in _ELONGATION_SD:
        se = f * sm
        u = np.arange(-np.ceil(6.0 * se), np.ceil(6.0 * se) + 1) * 0.5
        w = np.exp(-0.5 * (u / se) ** 2)
        w /= w.sum()
        # every angle at once: directions (angles, ndim)
        e = np.zeros((len(_ELONGATION_ANGLES), ndim))
        e[:, -2], e[:, -1] = np.sin(_ELONGATION_ANGLES), np.cos(_ELONGATION_ANGLES)
        # the template's norm: every pair of its samples
        dd = (u[:, None] - u[None, :])[None, :, :, None] * e[:, None, None, :]
        norm = np.einsum("i,aij,j->a", w, _overlap(dd**2, s, s, c0, c0, bg, _W_K), w)
        # (groups, centres, angles, samples, ndim)
        pts = ctr[:, :, None, None, :] + u[None, None, None, :, None] * e[None, None, :, None, :]
        flat = np.clip(pts.reshape(-1, ndim), 0.0, hi)
        light = ndi.map_coordinates(res, flat.T, order=1, mode="nearest").reshape(pts.shape[:-1])
        for j in range(own_pos.shape[1]):
            light += own_a[:, j, None, None, None] * _overlap(
                (pts - own_pos[:, j, None, None, None, :]) ** 2, s, own_sig[:, j, None, None, None, :], c0,
                own_c[:, j, None, None, None], bg, _W_K)
        y = np.maximum(light @ w, 0.0)  # (groups, centres, angles)
        g = (y**2 / norm).reshape(n, -1)
        top = g.argmax(axis=1)
        g = g[np.arange(n), top]
        better = g > best
        where[better] = ctr[better, top[better] // len(_ELONGATION_ANGLES)]
        best = np.maximum(best, g)
    return best, where


#: The elongated hypothesis (:func:`_elongation_seen`) needs this many bright isolated puncta,
#: and three in four of them better explained by one elongated punctum than by a round one
#: (measured on the brightest ``_ELONGATION_MAX_SPOTS``: enough for the quartile, bounded time).
_ELONGATION_MIN_SPOTS = 20
_ELONGATION_MAX_SPOTS = 100


def _elongation_seen(res: np.ndarray, pos: np.ndarray, a: np.ndarray, k: np.ndarray, t: np.ndarray, *,
                     sd_nom: np.ndarray, nominal: _Scale, sig_all: np.ndarray, c_all: np.ndarray,
                     k0_all: np.ndarray, bg: np.ndarray, reach: np.ndarray) -> float | None:
    """Whether the image's single puncta are drawn out along a line (an astigmatic PSF, synapses
    seen edge-on; in a stack, laterally), as opposed to round puncta of which some lie close
    together; and if so, how much better than one elongated punctum two round ones fit such a
    single one.

    Measured on the bright isolated puncta: significance >= ``_PSF_MIN_T``, no other punctum
    of ``_PSF_NEIGHBOUR`` of their significance within ``reach`` (per axis, as in
    :func:`_psf_wing`) but for those within ``_LOBE_REACH`` nominal sigmas (round fits of the
    same elongated punctum: their light is the punctum's), the window laterally inside the
    image; the brightest ``_ELONGATION_MAX_SPOTS``, at least ``_ELONGATION_MIN_SPOTS``.
    Elongated when, for three in four of them, the best single elongated punctum
    (:func:`_elongated_gain`) explains more of that light than the best round one (a nominal
    punctum at and around the centre, or the fitted one).  Relative to the round one, the
    median reads -0.5 to -1.2 % for round spots in planes (sim-fish, culture, phantoms,
    elliptical spots of aspect 1), -1.2 to -3.4 % in stacks, +0.7 to +1.0 / +3.9 / +9 to +10 %
    for elliptical ones of aspect 1.3 / 1.6 / 2 (aspect 1.15: -0.1 to -0.2 %, not
    recognised); a population of which only some puncta are
    elongated (the culture fields' presynaptic channel: +2 % over 15 puncta in one field, 0 %
    over 79 in the other) counts as round.  Returns None for round puncta (or too few), else
    the 90th percentile over them of the best pair's chi-square gain (:func:`_pair_grid`) over
    the elongated punctum, per unit of significance squared (>= 0): the model error of the
    elongated punctum, which :func:`_split_unresolved` and :func:`_merge_elongated` allow for
    when they weigh one elongated punctum against two."""
    ndim = res.ndim
    reach = np.broadcast_to(np.asarray(reach, float), (ndim,))
    s = nominal.sigma
    found = _bright_with_neighbours(pos, t, res.shape, reach, _ELONGATION_MIN_SPOTS)
    if found is None:
        return None
    cand, i, j, _ = found
    near = np.sqrt((((pos[cand[i]] - pos[j]) / s) ** 2).sum(axis=1)) <= _LOBE_REACH
    crowding = (j != cand[i]) & (t[j] >= _PSF_NEIGHBOUR * t[cand[i]]) & ~near
    alone = np.bincount(i[crowding], minlength=len(cand)) == 0
    sel = np.flatnonzero(alone)[:_ELONGATION_MAX_SPOTS]
    if len(sel) < _ELONGATION_MIN_SPOTS:
        return None
    # each one's group: itself and the puncta within _LOBE_REACH sigmas (padded with empty models)
    grp = [np.r_[cand[m], j[(i == m) & near & (j != cand[m])]] for m in sel]
    width = max(len(g) for g in grp)
    idx = np.array([np.r_[g, np.full(width - len(g), g[0])] for g in grp])
    amp = a[idx] * (np.arange(width)[None, :] < np.array([len(g) for g in grp])[:, None])
    centre = pos[cand[sel]]
    hi = np.array(res.shape, float) - 1.0

    def light(pts: np.ndarray) -> np.ndarray:  # (groups, points, ndim) -> (groups, points)
        out = ndi.map_coordinates(res, np.clip(pts.reshape(-1, ndim), 0.0, hi).T, order=1,
                                  mode="nearest").reshape(pts.shape[:-1])
        for m in range(width):
            out += amp[:, m, None] * _overlap((pts - pos[idx[:, m], None, :]) ** 2, s,
                                              sig_all[k[idx[:, m]]][:, None, :], nominal.c,
                                              c_all[k[idx[:, m]]][:, None], bg, _W_K)
        return out

    g_e = _elongated_gain(res, centre[:, None], pos[idx], amp, sig_all[k[idx]], c_all[k[idx]], s, nominal.c, bg,
                          np.zeros((1, 2)))[0]
    # the best round punctum: a nominal one at and around the centre, or the fitted one
    shifts = _ELONGATION_SHIFTS if ndim == 2 else np.column_stack([np.zeros(len(_ELONGATION_SHIFTS)),
                                                                     _ELONGATION_SHIFTS])
    y = light(centre[:, None, :] + shifts[None])
    g_round = np.maximum((np.maximum(y, 0.0) ** 2).max(axis=1) / nominal.k0, a[cand[sel]] ** 2 * k0_all[k[cand[sel]]])
    if not np.quantile(g_e - g_round, 0.25) > 0.0:
        return None
    # the best pair of nominal puncta on the same light (both amplitudes positive)
    offs, ia, ib, k12, det, _ = _pair_grid(nominal, bg)
    y = light((np.rint(centre)[:, None, :] + offs[None]).astype(float))
    k0 = nominal.k0
    y1, y2 = y[:, ia], y[:, ib]
    g2 = (k0 * y1**2 - 2.0 * k12 * y1 * y2 + k0 * y2**2) / det
    g2[((k0 * y1 - k12 * y2) <= 0) | ((k0 * y2 - k12 * y1) <= 0)] = 0.0
    ij = np.rint(centre).astype(int)
    kappa = k0 / sd_nom[tuple(ij.T)] ** 2
    adv = kappa * (g2.max(axis=1) - np.maximum(g_e, g_round)) / t[cand[sel]] ** 2
    return float(max(0.0, np.quantile(adv, 0.9)))


#: Two puncta closer than this many nominal sigmas must explain their light better than one
#: elongated punctum (:func:`_merge_elongated`), as a split must (:func:`_split_unresolved`).
_LOBE_REACH = 3.0


def _merge_elongated(pos: np.ndarray, a: np.ndarray, k: np.ndarray, t: np.ndarray, f_nom: np.ndarray,
                     sd_nom: np.ndarray, nominal: _Scale, sig_all: np.ndarray, c_all: np.ndarray,
                     bg: np.ndarray, edges: tuple[np.ndarray, np.ndarray],
                     model_error: float) -> tuple[np.ndarray, np.ndarray]:
    """Puncta that are the elongation of a brighter punctum beside them: a mask, and the
    positions of the brighter ones moved to the centre of the elongated punctum.

    A punctum drawn out along a line (an astigmatic PSF, a synapse seen edge-on) is fitted by
    round puncta: one at its centre and weaker ones at its ends, or two either side of its
    centre.  Each punctum's group is itself and the weaker puncta within ``_LOBE_REACH``
    nominal sigmas of it that are closer to no brighter one (a weaker punctum near a member of
    another group is left alone).  The group (nominal puncta at their fitted positions,
    least-squares amplitudes) must gain, for each punctum beyond the first, ``_SPLIT_CHI2``,
    and besides the model error (``(_PSF_MODEL_ERROR^2 + model_error) t^2``,
    ``model_error`` from :func:`_elongation_seen`) over the best single elongated punctum
    (:func:`_elongated_gain`, centred at the brightest or at the group's centroid): as a split
    must (:func:`_split_unresolved`).  Otherwise its weaker puncta are not counted (their light
    stays in the model) and the brightest takes the elongated punctum's centre."""
    n = len(pos)
    merged = np.zeros(n, bool)
    new_pos = pos.copy()
    if n < 2:
        return merged, new_pos
    s = nominal.sigma
    pairs = cKDTree(pos / s).query_pairs(_LOBE_REACH, output_type="ndarray")
    if len(pairs) == 0:
        return merged, new_pos
    i, j = pairs[:, 0], pairs[:, 1]
    q = np.r_[i, j]
    p = np.r_[j, i]
    brighter = t[p] > t[q]
    q, p = q[brighter], p[brighter]
    # each weaker punctum to its most significant brighter neighbour; not when that one is
    # itself the weaker of a pair (chains are left alone)
    order = np.lexsort((-t[p], q))
    q, p = q[order], p[order]
    first = np.r_[True, q[1:] != q[:-1]]
    q, p = q[first], p[first]
    keep = ~np.isin(p, q)
    q, p = q[keep], p[keep]
    if len(q) == 0:
        return merged, new_pos
    mains, inv = np.unique(p, return_inverse=True)
    size = np.bincount(inv)
    width = 1 + int(size.max())
    # groups (mains x width): the main first, then its weaker puncta, padded with the main
    idx = np.repeat(mains[:, None], width, axis=1)
    slot = np.zeros(len(mains), int)
    for qq, g in zip(q[np.argsort(inv, kind="stable")], np.sort(inv, kind="stable")):
        slot[g] += 1
        idx[g, slot[g]] = qq
    real = np.arange(width)[None, :] <= size[:, None]
    res = f_nom.copy()
    if not _subtract_models(res, pos, a, sig_all[k], c_all[k], nominal, bg):
        res = f_nom - nominal.response(_double_high_pass(_render(f_nom.shape, pos, a, sig_all[k]), bg)[0])
    hi = np.array(f_nom.shape, float) - 1.0
    k0, c0 = nominal.k0, nominal.c
    amp = np.where(real, a[idx], 0.0)

    def light(x: np.ndarray) -> np.ndarray:  # (groups, points, ndim) -> (groups, points)
        out = ndi.map_coordinates(res, np.clip(x.reshape(-1, x.shape[-1]), 0.0, hi).T, order=1,
                                  mode="nearest").reshape(x.shape[:-1])
        for m in range(width):
            out += amp[:, m, None] * _overlap((x - pos[idx[:, m], None, :]) ** 2, s, sig_all[k[idx[:, m]]][:, None, :],
                                              c0, c_all[k[idx[:, m]]][:, None], bg, _W_K)
        return out

    # the group's least-squares gain (padding: unit rows, no light)
    y = np.where(real, light(pos[idx]), 0.0)
    d2 = (pos[idx][:, :, None, :] - pos[idx][:, None, :, :]) ** 2
    gram = _overlap(d2, s, s, c0, c0, bg, _W_K)
    both = real[:, :, None] & real[:, None, :]
    gram = np.where(both, gram, np.eye(width)[None] * k0) + 1e-9 * k0 * np.eye(width)  # (never singular)
    g_group = np.einsum("gi,gi->g", y, np.linalg.solve(gram, y[..., None])[..., 0])
    g1 = np.maximum(y, 0.0).max(axis=1) ** 2 / k0
    w = np.where(real, t[idx], 0.0)
    centroid = (w[..., None] * pos[idx]).sum(axis=1) / w.sum(axis=1)[:, None]
    ge, centre = _elongated_gain(res, np.stack([pos[mains], centroid], axis=1), pos[idx], amp, sig_all[k[idx]],
                                 c_all[k[idx]], s, c0, bg, np.zeros((1, 2)))
    ij = np.clip(np.rint(pos[mains]).astype(int), 0, hi.astype(int))
    kappa = k0 / sd_nom[tuple(ij.T)] ** 2
    dchi = kappa * (g_group - np.maximum(g1, ge))
    weak = dchi <= size * _SPLIT_CHI2 + (_PSF_MODEL_ERROR**2 + model_error) * t[mains] ** 2
    for g in np.flatnonzero(weak):
        merged[idx[g, 1 : size[g] + 1]] = True
        new_pos[mains[g]] = _within_edges(centre[g][None], edges)[0]
    return merged, new_pos


def _pair_grid(nominal: _Scale, bg: np.ndarray) -> tuple[np.ndarray, ...]:
    """The pairs of nominal puncta that :func:`_split_unresolved` tries for one blob: pixel
    offsets within 1.25 lateral sigma (+ half a pixel) of its centre (in a stack, in its
    plane), the index pairs of them at least the minimum separation apart, each pair's 2 x 2
    normal matrix ``[[k0, k12], [k12, k0]]`` (``k12`` and the determinant) and the variance of
    either amplitude per unit pixel noise (``(K^-1 Q K^-1)_11``, ``Q``: the responses' noise
    covariance)."""
    s, k0, c0 = nominal.sigma, nominal.k0, nominal.c
    q0 = float(_overlap(np.zeros(len(s)), s, s, c0, c0, bg, _W_Q))
    lat = float(s[-2:].max())
    min_d = max(_MIN_SEPARATION_PX, _SPLIT_MIN_SEP * lat)
    rho = 1.25 * lat + 0.5
    r = int(np.ceil(rho))
    offs = np.argwhere(np.ones((2 * r + 1, 2 * r + 1), bool)) - r
    offs = offs[(offs**2).sum(axis=1) <= rho**2]
    ia, ib = np.triu_indices(len(offs), 1)
    keep_pair = np.hypot(*(offs[ia] - offs[ib]).T) >= min_d
    ia, ib = ia[keep_pair], ib[keep_pair]
    if len(s) == 3:  # (in a stack: pairs in the punctum's plane)
        offs = np.column_stack([np.zeros(len(offs), int), offs])
    d2 = (offs[ia] - offs[ib]).astype(float) ** 2
    k12 = _overlap(d2, s, s, c0, c0, bg, _W_K)
    q12 = _overlap(d2, s, s, c0, c0, bg, _W_Q)
    det = k0**2 - k12**2
    var_u = (k0**2 * q0 - 2.0 * k0 * k12 * q12 + k12**2 * q0) / det**2
    return offs, ia, ib, k12, det, var_u


def _split_unresolved(
    pos: np.ndarray,
    k: np.ndarray,
    a: np.ndarray,
    t: np.ndarray,
    res: np.ndarray,
    *,
    noise: np.ndarray,
    sd_nom: np.ndarray,
    nominal: _Scale,
    nom: int,
    sig_all: np.ndarray,
    c_all: np.ndarray,
    k0_all: np.ndarray,
    bg: np.ndarray,
    threshold_sd: float,
    sep: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray],
    no_split: np.ndarray | None = None,
    elongated: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, tuple[np.ndarray, ...]]:
    """Puncta that two puncta of the nominal size explain significantly better than one (2-D).

    Two puncta closer than the minimum separation (about 2 sigma) make one maximum, which the
    joint fit takes for one punctum, often of a larger size, centred between them (both then
    missed by a match within a sigma).  For each punctum, its light (the residual response
    ``res`` of the fit, with the punctum's own model added back) is fitted by two nominal
    puncta at every pair of pixels within 1.25 sigma of it, at least ``_SPLIT_MIN_SEP`` sigma
    apart (closed-form 2 x 2 least squares), and the punctum is split when the best pair gains
    more than ``_SPLIT_CHI2`` plus the model error (5 % of the amplitude: ``(0.05 t)^2``) in
    chi-square over the single punctum, and both amplitudes are significant.  A pair member
    closer than the minimum separation to another punctum is that punctum (the split is
    dropped; of two splits that claim the same light the more significant is kept), and puncta
    within 2 sigma of an image edge, or where ``no_split`` holds (near a not-imaged fill,
    which cuts puncta like an edge), are not split (a spot and its mirror image look like a
    pair).  When the image's single puncta are elongated (``elongated``: the model error of
    :func:`_elongation_seen`, None for round puncta), the pair must also gain that much more
    over the best single elongated punctum (:func:`_elongated_gain`).  The two members (at
    pixel centres, with their least-squares amplitudes) go back to the joint fit, which
    re-centres, re-sizes and prunes them like any candidate.

    Returns the new ``pos, k, a, t`` (split members last: the first members, then their
    twins in the same order), the number of puncta split and the ``pos, a, k`` of the puncta
    they replace.
    """
    n = len(pos)
    s = nominal.sigma
    k0, c0 = nominal.k0, nominal.c
    offs, ia, ib, k12, det, var_u = _pair_grid(nominal, bg)
    hi = np.array(res.shape) - 1
    centres = np.clip(np.rint(pos).astype(int), 0, hi)
    sn = noise[centres[:, 0], centres[:, 1]]
    kappa = k0 / sd_nom[centres[:, 0], centres[:, 1]] ** 2  # least-squares gain -> chi-square

    dchi = np.full(n, -np.inf)
    gain1 = np.zeros(n)
    best = np.zeros(n, int)
    amp2, t2 = np.zeros((n, 2)), np.zeros((n, 2))
    chunk = max(1, (4 << 20) // (8 * max(len(ia), len(offs))))
    for c in range(0, n, chunk):
        rows = np.arange(c, min(n, c + chunk))
        pts = centres[rows, None, :] + offs[None]
        inside = np.all((pts >= 0) & (pts <= hi), axis=-1)
        ptc = np.clip(pts, 0, hi)
        # the punctum's own fitted model, as seen by a nominal punctum at each offset
        own = a[rows, None] * _overlap((pts - pos[rows, None, :]) ** 2, s, sig_all[k[rows]][:, None, :], c0,
                                       c_all[k[rows]][:, None], bg, _W_K)
        light = np.where(inside, res[ptc[..., 0], ptc[..., 1]] + own, 0.0)
        g1 = np.maximum((light**2).max(axis=1) / k0, a[rows] ** 2 * k0_all[k[rows]])
        gain1[rows] = g1
        y1, y2 = light[:, ia], light[:, ib]
        a1 = (k0 * y1 - k12 * y2) / det
        a2 = (k0 * y2 - k12 * y1) / det
        g2 = (k0 * y1**2 - 2.0 * k12 * y1 * y2 + k0 * y2**2) / det
        floor = threshold_sd * sn[rows, None] * np.sqrt(var_u)
        g2[(a1 < floor) | (a2 < floor)] = -np.inf
        best[rows] = g2.argmax(axis=1)
        r_ = np.arange(len(rows))
        dchi[rows] = kappa[rows] * (g2[r_, best[rows]] - g1)
        amp2[rows] = np.c_[a1[r_, best[rows]], a2[r_, best[rows]]]
        t2[rows] = amp2[rows] / floor[r_, best[rows]][:, None] * threshold_sd
    near_edge = ((pos - edges[0]) < 2.0 * s).any(axis=1) | ((edges[1] - pos) < 2.0 * s).any(axis=1)
    if no_split is not None:
        near_edge |= no_split[centres[:, 0], centres[:, 1]]
    cand = np.flatnonzero((dchi > _SPLIT_CHI2 + (_PSF_MODEL_ERROR * t) ** 2) & ~near_edge)
    if elongated is not None and len(cand):
        # one elongated punctum (an astigmatic PSF, a synapse seen edge-on) is no pair either:
        # the pair must also beat the best single punctum drawn out along a line
        g_e = _elongated_gain(res, pos[cand, None], pos[cand, None], a[cand, None], sig_all[k[cand]][:, None],
                              c_all[k[cand]][:, None], s, c0, bg)[0]
        g2_best = gain1[cand] + dchi[cand] / kappa[cand]
        dchi_e = kappa[cand] * (g2_best - np.maximum(gain1[cand], g_e))
        cand = cand[dchi_e > _SPLIT_CHI2 + (_PSF_MODEL_ERROR**2 + elongated) * t[cand] ** 2]
    if len(cand) == 0:
        return pos, k, a, t, 0, (pos[:0], a[:0], k[:0])
    # a member within the minimum separation of an unsplit punctum, or of a member of a more
    # significant split, is that punctum
    cand = cand[np.argsort(-dchi[cand], kind="stable")]
    p1 = (centres[cand] + offs[ia[best[cand]]]).astype(float)
    p2 = (centres[cand] + offs[ib[best[cand]]]).astype(float)
    sep2 = np.asarray(sep, float)[-2:]
    others = np.setdiff1d(np.arange(n), cand)
    ok = np.ones(len(cand), bool)
    if len(others):
        tree = cKDTree(pos[others] / sep2)
        ok = (tree.query(p1 / sep2)[0] >= 1.0) & (tree.query(p2 / sep2)[0] >= 1.0)
    taken: list[np.ndarray] = []
    for m_ in np.flatnonzero(ok):
        mine = np.stack([p1[m_], p2[m_]]) / sep2
        if taken and cKDTree(np.concatenate(taken)).query(mine)[0].min() < 1.0:
            ok[m_] = False
        else:
            taken.append(mine)
    cand, p1, p2 = cand[ok], p1[ok], p2[ok]
    if len(cand) == 0:
        return pos, k, a, t, 0, (pos[:0], a[:0], k[:0])
    log.debug("%d puncta split into two", len(cand))
    rest = np.setdiff1d(np.arange(n), cand)
    m = len(cand)
    (a1, a2), (t1, t2_) = amp2[cand].T, t2[cand].T
    return (np.concatenate([pos[rest], _within_edges(np.concatenate([p1, p2]), edges)]),
            np.concatenate([k[rest], np.full(2 * m, nom)]),
            np.concatenate([a[rest], a1, a2]),
            np.concatenate([t[rest], t1, t2_]), m, (pos[cand], a[cand], k[cand]))


def _subtract_models(res: np.ndarray, pos: np.ndarray, amp: np.ndarray, sig: np.ndarray, c: np.ndarray,
                     nominal: _Scale, bg: np.ndarray) -> bool:
    """Subtract the nominal response of Gaussian spots (peak ``amp``, per-axis ``sig``, 2-D) from
    the residual response ``res`` in place, in closed form within 4 SDs of each spot's widest
    term (the filters' reflecting edges are not modelled: for spots away from the edges).
    Returns False, leaving ``res`` as it was, when the spots' windows would cover more than
    twice the image's pixels (rendering the whole model and filtering it is then cheaper)."""
    if len(pos) == 0:
        return True
    reach = np.sqrt(nominal.sigma**2 + sig.max(axis=0) ** 2 + 2.0 * bg**2)
    r = np.ceil(4.0 * reach).astype(int)
    if len(pos) * np.prod(2 * r + 1) > 2 * res.size:
        return False
    # each of the overlap's Gaussian terms (variance ``s^2 + sig^2 + q b^2``) rendered as a spot
    for q, w in enumerate(_W_K):
        v = nominal.sigma**2 + sig**2 + q * bg**2
        peak = amp * nominal.c * c * w / np.sqrt(2.0 * np.pi * v).prod(axis=1)
        res -= _render(res.shape, pos, peak, np.sqrt(v), radius=r)
    return True


#: Puncta at least this significant, with no other punctum of a quarter of their significance
#: within the reach of the model error (but for one in their own blob), show the image's own
#: departure from the Gaussian model (:func:`_psf_wing`); it needs ``_PSF_MIN_SPOTS`` of them.
_PSF_MIN_T = 30.0
_PSF_MIN_SPOTS = 3
_PSF_NEIGHBOUR = 0.25
_PSF_MAX_SPOTS = 400  # (the brightest; enough for the profile, bounded time)
_PSF_MAX_VALUES = 4_000_000  # (and at most this many window pixels: a stack's windows are large)
#: Standard errors from 0 at which the quadrupole of the wing (:func:`_psf_quadrupole`) is
#: taken as seen (on round puncta the largest of ~20 rings' chi-square-2 norms exceeds 5 with a
#: probability of ~1e-4).
_PSF_QUAD_Z = 5.0
#: Reach of a bright punctum's own rings (:func:`_take_out_own_rings`), in nominal sigmas: the
#: ring a punctum of up to twice the nominal size leaves when fitted at 1.4x lies within ~3.
_OWN_RING_REACH = 4.0
#: Window pixels per batch of :func:`_take_out_own_rings` (its ~10 arrays of that size: with 4
#: million, a crowded 1,024^2 field peaked 180 MB above the detector's own peak).
_OWN_RING_VALUES = 500_000


def _bright_with_neighbours(pos: np.ndarray, t: np.ndarray, shape: tuple[int, ...], reach: np.ndarray,
                            least: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The bright puncta that show the image's own departure from the Gaussian model
    (:func:`_psf_wing`, :func:`_elongation_seen`) and the puncta around them: the indices of
    those of significance >= ``_PSF_MIN_T`` whose window of lateral half-width
    ceil(``reach[-1]``) lies inside the image, brightest first, at most
    ``4 * _PSF_MAX_SPOTS`` (None when fewer than ``least``); and every (candidate, punctum)
    pair within ``reach`` (per axis: an ellipsoid in a stack) as candidate positions in that
    list, punctum indices and distances in units scaled to the lateral reach."""
    R = int(np.ceil(reach[-1]))
    lat_pos = pos[:, -2:]
    inside = np.all((lat_pos >= R) & (lat_pos <= np.array(shape[-2:]) - 1 - R), axis=1)
    cand = np.flatnonzero((t >= _PSF_MIN_T) & inside)
    if len(cand) < least:
        return None
    cand = cand[np.argsort(-t[cand], kind="stable")][: 4 * _PSF_MAX_SPOTS]
    # (the candidate-punctum pairs within the reach, at once; a stack's axes scaled to the
    # lateral reach)
    scaled = pos * (reach[-1] / reach)
    pairs = cKDTree(scaled[cand]).sparse_distance_matrix(cKDTree(scaled), reach[-1], output_type="ndarray")
    return cand, pairs["i"], pairs["j"], pairs["v"]


def _psf_wing(z_res: np.ndarray, pos: np.ndarray, t: np.ndarray, reach: np.ndarray,
              core: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What the Gaussian model leaves around a punctum (its PSF's *wing*), measured on the
    residual significance ``z_res`` (a plane or a stack) around the image's bright isolated
    puncta: a profile at integer lateral radii 0..ceil(``reach[-1]``) pixels (and, in a stack,
    integer axial offsets 0..ceil(``reach[0]``) planes: rows), per unit of the punctum's
    significance.

    The puncta: significance >= ``_PSF_MIN_T``, no other punctum of >= ``_PSF_NEIGHBOUR`` of
    theirs within ``reach`` (per axis: an ellipsoid in a stack) but for one within ``core``
    lateral pixels of it (a blob split in two), the window laterally inside the image (a
    stack's planes beyond its ends are left out); the brightest ``_PSF_MAX_SPOTS``, fewer when
    their windows would exceed ``_PSF_MAX_VALUES`` pixels.  Each one's profile is the median
    of each ring (a PSF's wing is the same all round; another punctum on the ring is not), the
    wing the median over the puncta, shrunk towards 0 by twice its standard error; None with
    fewer than ``_PSF_MIN_SPOTS`` puncta or nothing left.  Returned with the wing's quadrupole
    on the same windows (:func:`_psf_quadrupole`; in a stack per signed axial offset, rows
    -Rz..Rz; None when not seen).  A Gaussian PSF reads within ~1 % of
    0 (the pixel integration that a Gaussian sampled at pixel centres misses); a Moffat PSF of
    beta 2.5 (heavier wings) +2.2-2.7 % at 0.3 um in a plane, up to ~4 % in the spots' planes
    of a stack, where the second pass took the noise on that ring for puncta.  In a tiled
    image each tile measures its own."""
    ndim = z_res.ndim
    reach = np.broadcast_to(np.asarray(reach, float), (ndim,))
    R = int(np.ceil(reach[-1]))
    Rz = int(np.ceil(reach[0])) if ndim == 3 else 0
    # (laterally the window inside the image; a stack's planes beyond its ends are left out)
    found = _bright_with_neighbours(pos, t, z_res.shape, reach, _PSF_MIN_SPOTS)
    if found is None:
        return None, None
    cand, i, j, d = found
    lat = np.hypot(*(pos[cand[i], -2:] - pos[j, -2:]).T) if ndim == 3 else d
    crowding = (j != cand[i]) & (t[j] >= _PSF_NEIGHBOUR * t[cand[i]]) & (lat >= core)
    alone = np.bincount(i[crowding], minlength=len(cand)) == 0
    window = (2 * Rz + 1) * (2 * R + 1) ** 2
    sel = cand[alone][: min(_PSF_MAX_SPOTS, max(_PSF_MIN_SPOTS, _PSF_MAX_VALUES // window))]
    if len(sel) < _PSF_MIN_SPOTS:
        return None, None
    c = np.rint(pos[sel]).astype(int)
    off = np.arange(-R, R + 1)
    if ndim == 2:
        win = z_res[(c[:, 0:1] + off)[:, :, None], (c[:, 1:2] + off)[:, None, :]]
        ring = np.zeros(win.shape, int)
    else:
        zi = c[:, 0:1] + np.arange(-Rz, Rz + 1)
        win = z_res[np.clip(zi, 0, z_res.shape[0] - 1)[:, :, None, None], (c[:, 1:2] + off)[:, None, :, None],
                    (c[:, 2:3] + off)[:, None, None, :]]
        az = np.minimum(np.rint(np.abs(zi - pos[sel, 0:1])).astype(int), Rz + 1)
        az[(zi < 0) | (zi >= z_res.shape[0])] = Rz + 1  # (the discarded ring)
        ring = np.broadcast_to((az * (R + 2))[:, :, None, None], win.shape)
    win = win / t[sel].reshape((-1,) + (1,) * ndim)
    dy = off[None, :, None] - (pos[sel, -2] - c[:, -2])[:, None, None]
    dx = off[None, None, :] - (pos[sel, -1] - c[:, -1])[:, None, None]
    ring = ring + np.minimum(np.rint(np.hypot(dy, dx)).astype(int), R + 1).reshape(
        (len(sel),) + (1,) * (ndim - 2) + (2 * R + 1, 2 * R + 1))
    # each punctum's ring medians: a PSF's wing is the same all round, another punctum on the
    # ring (synapses cluster along dendrites) is not (the values sorted within rings, the
    # middle one or two)
    n_ring = (Rz + 2) * (R + 2)
    idx = (np.arange(len(sel)).reshape((-1,) + (1,) * ndim) * n_ring + ring).ravel()
    prof = _group_medians(win.ravel(), idx, len(sel) * n_ring)
    prof = prof.reshape(len(sel), Rz + 2, R + 2)[:, : Rz + 1, : R + 1]
    if ndim == 2:
        prof = prof[:, 0]
    med = np.median(prof, axis=0)
    se = np.sqrt(np.pi / 2.0) * prof.std(axis=0, ddof=1) / np.sqrt(len(sel))  # (of a median)
    wing = np.sign(med) * np.maximum(np.abs(med) - 2.0 * se, 0.0)
    if ndim == 2:
        quad = _psf_quadrupole(win, dy, dx, R)
    else:
        # (the quadrupole per signed axial offset: an astigmatic PSF turns by 90 degrees
        # through focus)
        signed = np.rint(zi - pos[sel, 0:1]).astype(int)
        row = np.where((zi >= 0) & (zi < z_res.shape[0]) & (np.abs(signed) <= Rz), signed + Rz, -1)
        quad = _psf_quadrupole(win, dy, dx, R, row, 2 * Rz + 1)
    return (wing if np.any(wing) else None), quad


def _psf_quadrupole(win: np.ndarray, dy: np.ndarray, dx: np.ndarray, R: int, row: np.ndarray | None = None,
                    n_rows: int = 1) -> np.ndarray | None:
    """The part of the wing that turns with twice the angle about a punctum (an astigmatic
    PSF: light along one direction, a deficit across it, the same in every punctum of the
    field), from the windows of :func:`_psf_wing` (``win``: (puncta, 2R + 1, 2R + 1) residual
    significance per unit of the punctum's; ``dy``, ``dx``: pixel offsets from each centre):
    ``(2, R + 1)``, the cos 2 theta and sin 2 theta amplitudes at integer radii, or None.  In a
    stack ``win`` has a plane axis and ``row`` (puncta, planes) gives each window plane's row
    of the result, 0..``n_rows`` - 1 (-1: left out): ``(2, n_rows, R + 1)``.

    Each punctum's amplitudes per ring are its residual's projections on the two harmonics
    (another punctum on its ring is an outlier among the puncta, as for the wing), the
    quadrupole their median over the puncta, shrunk towards 0 by twice its standard error.
    None with fewer than ``_ELONGATION_MIN_SPOTS`` puncta, or when no ring's amplitude stands
    ``_PSF_QUAD_Z`` standard errors from 0 (puncta at random angles, round ones)."""
    n = len(win)
    if n < _ELONGATION_MIN_SPOTS:
        return None
    r = np.hypot(dy, dx)
    ring = np.minimum(np.rint(r).astype(int), R + 1)
    cos2, sin2 = _double_angle(dy, dx, r)
    plane = row is None
    if plane:  # (a plane: one window plane, row 0)
        win, row = win[:, None], np.zeros((n, 1), int)
    bins = n_rows * (R + 2)
    # (each window plane's row, those left out binned apart)
    idx = (np.arange(n)[:, None] * bins + np.maximum(row, 0) * (R + 2))[:, :, None, None] + ring[:, None]
    keep = np.broadcast_to((row >= 0)[:, :, None, None], win.shape)
    idx = idx[keep]
    amps = []
    for h in (cos2[:, None], sin2[:, None]):
        hw = np.broadcast_to(h, win.shape)
        num = np.bincount(idx, (win * hw)[keep], minlength=n * bins)
        den = np.bincount(idx, (hw * hw)[keep], minlength=n * bins)
        amps.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0).reshape(n, n_rows, R + 2)[..., : R + 1])
    amps = np.stack(amps, axis=1)  # (puncta, 2, rows, rings)
    amps[..., 0] = 0.0  # (the centre pixel has no direction)
    if plane:
        amps = amps[:, :, 0]
    med = np.median(amps, axis=0)
    se = np.sqrt(np.pi / 2.0) * amps.std(axis=0, ddof=1) / np.sqrt(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.hypot(*np.where(se > 0, med / np.where(se > 0, se, 1.0), 0.0))
    if not z.max() >= _PSF_QUAD_Z:
        return None
    return np.sign(med) * np.maximum(np.abs(med) - 2.0 * se, 0.0)


def _group_medians(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """The median of ``values`` in each of ``n_groups`` groups (``group``: each value's group,
    0-based; 0 for an empty group), at once (the values sorted within groups, the middle one
    or two).

    >>> _group_medians(np.array([5.0, 1.0, 3.0, 2.0, 4.0]), np.array([0, 0, 0, 2, 2]), 3).tolist()
    [3.0, 0.0, 3.0]
    """
    n = np.bincount(group, minlength=n_groups)
    if len(values) == 0:
        return np.zeros(n_groups)
    vals = values[np.lexsort((values, group))]
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    lo, hi = start + np.maximum(n - 1, 0) // 2, start + n // 2
    last = len(vals) - 1
    return np.where(n > 0, 0.5 * (vals[np.minimum(lo, last)] + vals[np.minimum(hi, last)]), 0.0)


def _take_out_own_rings(z: np.ndarray, pos: np.ndarray, reach: int) -> None:
    """Take each bright punctum's own rings out of the residual significance ``z`` (a plane),
    in place.

    The wing of :func:`_psf_wing` is the median over the image's bright puncta; a punctum whose
    size lies between the sizes fitted, or beyond the widest, or whose shape differs, leaves
    rings of its own (of either sign, so the median over puncta misses them): a punctum 1.5-2x
    the nominal size, fitted at 1.4x, leaves a ring ~2 model sigmas out, and its maxima were
    counted as puncta (sim-fish fields of spot sigmas varied by 40 %: 2-4 false puncta around
    each such spot).  For each punctum at ``pos`` the level of each ring of integer radius
    0..``reach`` pixels is the mean of the middle two of its four quadrants' means (another
    punctum on the ring raises one quadrant), shrunk towards 0 by twice its standard error
    and taken where positive; these profiles, interpolated in the radius, are subtracted (all
    measured on ``z`` as given)."""
    ny, nx = z.shape
    R = int(reach)
    off = np.arange(-R, R + 1)
    n_ring = R + 2  # (radii 0..R; R + 1 collects what lies beyond, or outside the image)
    batch = max(1, _OWN_RING_VALUES // len(off) ** 2)
    total = np.zeros(z.size)
    for b0 in range(0, len(pos), batch):
        p = pos[b0 : b0 + batch]
        m = len(p)
        c = np.rint(p).astype(int)
        yy, xx = c[:, 0:1] + off, c[:, 1:2] + off
        inside = ((yy >= 0) & (yy < ny))[:, :, None] & ((xx >= 0) & (xx < nx))[:, None, :]
        yy, xx = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
        dy, dx = (yy - p[:, 0:1])[:, :, None], (xx - p[:, 1:2])[:, None, :]
        r = np.hypot(dy, dx)
        ring = np.where(inside, np.minimum(np.rint(r).astype(int), R + 1), R + 1)
        quadrant = 2 * (dy >= 0) + (dx >= 0)
        win = z[yy[:, :, None], xx[:, None, :]].ravel()
        group = ((np.arange(m)[:, None, None] * n_ring + ring) * 4 + quadrant).ravel()
        size = m * n_ring * 4
        n_q = np.bincount(group, minlength=size).reshape(-1, 4)
        s1 = np.bincount(group, win, size).reshape(-1, 4)
        s2 = np.bincount(group, win**2, size).reshape(-1, 4)
        n = n_q.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.sort(s1 / n_q, axis=1)
            level = 0.5 * (means[:, 1] + means[:, 2])
            total_s1 = s1.sum(axis=1)
            var = np.maximum(s2.sum(axis=1) - total_s1**2 / n, 0.0) / (n - 1)
            se = np.sqrt(np.pi / 2.0 * var / n)  # (as of a median)
        ok = (n_q >= 2).all(axis=1)
        prof = np.where(ok, np.maximum(level - 2.0 * se, 0.0), 0.0).reshape(m, n_ring)
        prof[:, R + 1] = 0.0
        # (linear in the radius between the rings; 0 from R + 1 on)
        lo = np.minimum(np.floor(r).astype(int), R + 1)
        frac = np.clip(r - lo, 0.0, 1.0)
        hi = np.minimum(lo + 1, R + 1)
        rows = np.arange(m)[:, None, None]
        val = np.where(inside, prof[rows, lo] * (1.0 - frac) + prof[rows, hi] * frac, 0.0)
        total += np.bincount((yy[:, :, None] * nx + xx[:, None, :]).ravel(), val.ravel(), z.size)
    z -= total.reshape(z.shape)


def _take_out_wing(z: np.ndarray, pos: np.ndarray, t: np.ndarray, wing: np.ndarray | None,
                   quad: np.ndarray | None) -> None:
    """Take the PSF's wing (:func:`_psf_wing`, with its quadrupole when one was seen) of the
    puncta at ``pos`` of significance ``t`` out of the residual significance ``z``, in place:
    each punctum's wing subtracted and, as a punctum's own wing differs from this mean with
    its size, sub-pixel position and neighbours by about as much as the wing, its square
    added to the noise variance (``z`` divided by ``sqrt(1 + sum t^2 wing^2)``)."""
    if quad is not None:
        radial = wing if wing is not None else np.zeros(quad.shape[1:])
        if z.ndim == 3:  # (the radial part per signed axial offset, as the quadrupole's)
            radial = radial[np.abs(np.arange(-(quad.shape[1] // 2), quad.shape[1] // 2 + 1))]
        full = np.concatenate([radial[None], quad])
        w_map, v_map = _radial_sum(z.shape, pos, t, full, (0.5, 0.05), harmonic=True) or (None, None)
    elif wing is not None:
        w_map = _radial_sum(z.shape, pos, t, wing, 0.5)
        v_map = _radial_sum(z.shape, pos, t**2, wing**2, 0.05)
    else:
        return
    if w_map is not None:
        z -= w_map
    if v_map is not None:
        z /= np.sqrt(1.0 + v_map)


def _radial_sum(shape: tuple[int, ...], pos: np.ndarray, weight: np.ndarray, profile: np.ndarray,
                least: float | tuple[float, float], harmonic: bool = False) -> Any:
    """``sum_j weight_j profile(|x - p_j|)`` on a plane's pixels (``profile`` at integer radii,
    interpolated, 0 beyond), over the puncta whose term reaches ``least`` somewhere (None when
    none does).  In a stack ``profile`` has a row per integer axial offset (planes) and the
    term is ``profile(|dz|, r)``, interpolated in both.  With ``harmonic`` the profile has a
    quadrupole too (:func:`_take_out_wing`): its first axis holds the radial part and the
    cos 2 theta and sin 2 theta amplitudes (in a stack their rows are signed axial offsets
    -Rz..Rz), the term their sum at the pixel's angle about the punctum, and the result the
    pair of that sum and the sum of ``weight_j^2`` times each term's square, each over the
    puncta whose term, or its square, reaches its part of ``least`` (a pair), from one pass
    over the puncta (as the radial wing's two calls in :func:`_take_out_wing`)."""
    top = weight * np.abs(profile).max()
    first = None
    if harmonic:
        first = top >= least[0]
        big = np.flatnonzero(first | (top**2 >= least[1]))
        first = first[big]
    else:
        big = np.flatnonzero(top >= least)
    if len(big) == 0:
        return None
    if len(shape) == 3:
        return _radial_sum_stack(shape, pos[big], weight[big], profile, first)
    # (out to the first 0 after the last ring that is not: beyond, every term is 0)
    last = int(np.flatnonzero(np.any(np.atleast_2d(profile) != 0, axis=0)).max())
    profile = profile[..., : min(profile.shape[-1], last + 2)]
    R = profile.shape[-1] - 1
    grid = np.arange(R + 1, dtype=float)
    off = np.arange(-R, R + 1)
    ny, nx = shape
    out = np.zeros(ny * nx)
    out2 = np.zeros(ny * nx) if harmonic else None
    for b0 in range(0, len(big), 1024):
        sel = big[b0 : b0 + 1024]
        c = np.rint(pos[sel]).astype(int)
        yy = c[:, 0:1] + off  # (puncta, 2R + 1)
        xx = c[:, 1:2] + off
        dy, dx = (yy - pos[sel, 0:1])[:, :, None], (xx - pos[sel, 1:2])[:, None, :]
        r = np.hypot(dy, dx)
        if harmonic:
            cos2, sin2 = _double_angle(dy, dx, r)
            val = np.interp(r, grid, profile[0], right=0.0)
            val += cos2 * np.interp(r, grid, profile[1], right=0.0) + sin2 * np.interp(r, grid, profile[2], right=0.0)
            val *= weight[sel, None, None]
            in_sum = first[b0 : b0 + 1024, None, None]
        else:
            val = weight[sel, None, None] * np.interp(r, grid, profile, right=0.0)
        ok = ((yy >= 0) & (yy < ny))[:, :, None] & ((xx >= 0) & (xx < nx))[:, None, :]
        flat = (yy[:, :, None] * nx + xx[:, None, :])[ok]
        if harmonic:
            out += np.bincount(flat, (val * in_sum)[ok], minlength=ny * nx)
            out2 += np.bincount(flat, val[ok] ** 2, minlength=ny * nx)
        else:
            out += np.bincount(flat, val[ok], minlength=ny * nx)
    if harmonic:
        return out.reshape(ny, nx), out2.reshape(ny, nx)
    return out.reshape(ny, nx)


def _double_angle(dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos 2 theta and sin 2 theta of the offsets ``dy``, ``dx`` at distance ``r`` (0 at r = 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(r > 0, (dx**2 - dy**2) / r**2, 0.0), np.where(r > 0, 2.0 * dx * dy / r**2, 0.0)


def _radial_sum_stack(shape: tuple[int, ...], pos: np.ndarray, weight: np.ndarray, profile: np.ndarray,
                      first: np.ndarray | None = None) -> Any:
    """:func:`_radial_sum` in a stack: ``profile[|dz|, r]`` bilinear in axial offset (planes)
    and lateral radius (pixels), 0 beyond its last row and column.  With ``first`` (which
    puncta count in the sum; all count in the sum of squares) the harmonic profile
    ``profile[h, dz + Rz, r]`` (radial, cos 2 theta, sin 2 theta) by signed axial offset."""
    harmonic = first is not None
    nz, ny, nx = shape
    if harmonic:
        # (out to the first 0 after the last column, and the last row on either side, that are
        # not)
        rows, cols = np.nonzero(np.any(profile != 0, axis=0))
        mid = profile.shape[1] // 2
        Rz = min(mid, int(np.abs(rows - mid).max()) + 1)
        profile = profile[:, mid - Rz : mid + Rz + 1, : min(profile.shape[2], int(cols.max()) + 2)]
        R = profile.shape[2] - 1
        padded = np.zeros((3, 2 * Rz + 3, R + 2))  # (rows -Rz - 1..Rz + 1: zeros at both ends)
        padded[:, 1 : 2 * Rz + 2, : R + 1] = profile
    else:
        # (out to the first 0 after the last row and column that are not)
        nzr, nzc = np.nonzero(profile)
        profile = profile[: min(profile.shape[0], int(nzr.max()) + 2), : min(profile.shape[1], int(nzc.max()) + 2)]
        Rz, R = profile.shape[0] - 1, profile.shape[1] - 1
        padded = np.zeros((1, Rz + 2, R + 2))
        padded[0, : Rz + 1, : R + 1] = profile
    off = np.arange(-R, R + 1)
    offz = np.arange(-Rz, Rz + 1)
    out = np.zeros(nz * ny * nx)
    out2 = np.zeros(nz * ny * nx) if harmonic else None
    batch = max(1, 2_000_000 // (len(offz) * len(off) ** 2))
    for b0 in range(0, len(pos), batch):
        p, w = pos[b0 : b0 + batch], weight[b0 : b0 + batch]
        c = np.rint(p).astype(int)
        zz, yy, xx = c[:, 0:1] + offz, c[:, 1:2] + off, c[:, 2:3] + off
        dy, dx = (yy - p[:, 1:2])[:, :, None], (xx - p[:, 2:3])[:, None, :]
        r = np.minimum(np.hypot(dy, dx), R + 1.0)
        i0 = np.minimum(r.astype(int), R)[:, None]
        fr = (r - i0[:, 0])[:, None]
        if harmonic:  # (the row in ``padded``)
            a = np.clip(zz - p[:, 0:1] + Rz + 1.0, 0.0, 2.0 * Rz + 2.0)
            a0 = np.minimum(a.astype(int), 2 * Rz + 1)[:, :, None, None]
        else:
            a = np.minimum(np.abs(zz - p[:, 0:1]), Rz + 1.0)
            a0 = np.minimum(a.astype(int), Rz)[:, :, None, None]
        fa = (a - a0[:, :, 0, 0])[:, :, None, None]
        terms = []
        for q in padded:
            v = (1.0 - fa) * ((1.0 - fr) * q[a0, i0] + fr * q[a0, i0 + 1])
            v += fa * ((1.0 - fr) * q[a0 + 1, i0] + fr * q[a0 + 1, i0 + 1])
            terms.append(v)
        val = terms[0]
        if harmonic:
            cos2, sin2 = _double_angle(dy, dx, r)
            val += cos2[:, None] * terms[1] + sin2[:, None] * terms[2]
        val *= w[:, None, None, None]
        ok = (((zz >= 0) & (zz < nz))[:, :, None, None] & ((yy >= 0) & (yy < ny))[:, None, :, None]
              & ((xx >= 0) & (xx < nx))[:, None, None, :])
        flat = (zz[:, :, None, None] * ny + yy[:, None, :, None]) * nx + xx[:, None, None, :]
        if harmonic:
            out += np.bincount(flat[ok], (val * first[b0 : b0 + batch, None, None, None])[ok], minlength=nz * ny * nx)
            out2 += np.bincount(flat[ok], val[ok] ** 2, minlength=nz * ny * nx)
        else:
            out += np.bincount(flat[ok], val[ok], minlength=nz * ny * nx)
    if harmonic:
        return out.reshape(nz, ny, nx), out2.reshape(nz, ny, nx)
    return out.reshape(nz, ny, nx)


def _double_high_pass(x: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``H'H x = x - 2 G x + G G x`` (``G``: Gaussian blur of sigma ``bg``, reflecting edges),
    built in place of the first blur (the same values as that expression), and ``G G x``."""
    hh = _filters.gaussian_filter(x, bg, mode="reflect")
    blur2 = _filters.gaussian_filter(hh, bg, mode="reflect")
    hh *= -2.0
    hh += x
    hh += blur2
    return hh, blur2


#: How far beyond the outermost pixels a punctum's centre is sought (pixels) by
#: :func:`_beyond_lateral_edges`: further out, too little of its light is in the image for
#: the fit to be significant.
_BEYOND_PX = 1.5


def _beyond_lateral_edges(pos: np.ndarray, a: np.ndarray, sig: np.ndarray, cc: np.ndarray, f_nom: np.ndarray,
                          nominal: _Scale, bg: np.ndarray, edges: tuple[np.ndarray, np.ndarray] | None,
                          unit: np.ndarray, cut: float) -> np.ndarray:
    """Which puncta are centred beyond a lateral image edge line (half a pixel past the
    outermost pixels): their centres refitted by :func:`_refine` with the grid reaching
    :data:`_BEYOND_PX` past the outermost pixels.  Puncta just outside the field (tissue goes
    on beyond it) shine into it and were counted on its edge, ~1 pixel's width of extra
    field around it (3 % of the puncta of a 128 x 128 field)."""
    out = np.zeros(len(pos), bool)
    if edges is None or len(pos) == 0:
        return out
    lo, hi = edges[0][-2:] - 0.5, edges[1][-2:] + 0.5
    reach = 2.0 * np.sqrt(nominal.sigma[-2:] ** 2 + sig[:, -2:] ** 2)
    near = ((pos[:, -2:] - lo < reach) | (hi - pos[:, -2:] < reach)).any(axis=1)
    if not near.any():
        return out
    # (refitted with the neighbours whose models overlap theirs: the pairs of that subset)
    tree = cKDTree(pos / unit)
    sub = np.flatnonzero(near)
    partners = tree.query_ball_point(pos[sub] / unit, cut, return_sorted=False)
    sub = np.unique(np.concatenate([sub] + [np.asarray(q, int) for q in partners]))
    pairs = cKDTree(pos[sub] / unit).query_pairs(cut, output_type="ndarray")
    i, j = (pairs[:, 0], pairs[:, 1]) if len(pairs) else (np.zeros(0, int), np.zeros(0, int))
    free = _refine(pos[sub], a[sub], sig[sub], cc[sub], i, j, f_nom, nominal, bg, edges, beyond=_BEYOND_PX)
    mine = near[sub]
    out[sub[mine]] = ((free[mine][:, -2:] < lo) | (free[mine][:, -2:] > hi)).any(axis=1)
    return out


def _negative_control(
    hh_img: np.ndarray,
    pos: np.ndarray,
    a: np.ndarray,
    sig: np.ndarray,
    f_nom: np.ndarray,
    sd_nom: np.ndarray,
    nominal: _Scale,
    broad: _Scale | None,
    bg: np.ndarray,
    footprint: tuple[int, ...],
    min_depth: float,
    t: np.ndarray | None = None,
    quad: np.ndarray | None = None,
) -> np.ndarray:
    """Punctum-shaped dips of the residual: the image's own estimate of how often its background
    alone makes a punctum of a given significance (planes and stacks).

    The fitted puncta are subtracted (their model seen through the same high pass, so their
    negative surround goes too) and the local minima of the residual's nominal significance,
    at the candidates' spacing, are the sign-inverted twins of detections: pixel noise, and
    any background structure at the punctum scale that is symmetric about its local mean
    (out-of-focus haze, autofluorescent texture), dips as often and as deeply as it peaks,
    and a dip cannot be a punctum.  A dip that a blob 2.5 x broader explains significantly
    better (the test that puncta pass, step 4) is not counted, as a broad bump is not
    reported.  With ``quad`` (the quadrupole of the PSF's wing, :func:`_psf_quadrupole`) and
    the puncta's significance ``t``, the quadrupole is taken out first (:func:`_take_out_wing`):
    an astigmatic PSF dips across each punctum as deeply as it peaks along it, and those dips
    had raised the threshold of a field of bright puncta above its dim ones.  Returns
    (n, ndim + 1): the dip's pixel ((plane,) row, column) and its depth (in noise SDs,
    >= ``min_depth``).
    """
    if len(pos):
        hh_model = _double_high_pass(_render(hh_img.shape, pos, a, sig), bg)[0]
        res = nominal.response(hh_model)
        np.subtract(f_nom, res, out=res)
    else:
        hh_model = None
        res = f_nom
    z = res / sd_nom
    if len(pos) and quad is not None:
        # (the quadrupole of the PSF's wing dips across each punctum: its model error)
        _take_out_wing(z, pos, t, None, quad)
    dips = _extrema(z, footprint, z <= -min_depth, lowest=True)
    depth = -z[tuple(dips.T)]
    rn = res[tuple(dips.T)]  # (the residual response itself is needed at the dips only)
    del res
    if len(dips):
        # the high-pass surround of light that the fit left (unexplained bumps within the reach
        # of the background filter whose surrounds, summed, are as deep) is not a dip of the
        # background
        bumps = _extrema(z, footprint, z >= min_depth)
        if len(bumps):
            reach = 3.0 * np.sqrt((broad.sigma if broad is not None else nominal.sigma) ** 2 + 2.0 * bg**2)
            height = z[tuple(bumps.T)] * _surround_ratio(nominal)
            # (the dip-bump pairs within the reach, for chunks of dips at once: a list per dip
            # summed in Python took half of this step, and a stack's reach holds tens of bumps
            # per dip: 7 million pairs, 176 MB, at once in a dense 30-plane field)
            bump_tree = cKDTree(bumps / reach)
            surround = np.zeros(len(dips))
            for c0 in range(0, len(dips), _DIP_CHUNK):
                part = dips[c0 : c0 + _DIP_CHUNK]
                pairs = cKDTree(part / reach).sparse_distance_matrix(bump_tree, 1.0, output_type="ndarray")
                surround[c0 : c0 + len(part)] = np.bincount(pairs["i"], height[pairs["j"]], minlength=len(part))
                del pairs
            keep = surround < depth
            dips, depth, rn = dips[keep], depth[keep], rn[keep]
    if broad is not None and len(dips):
        # least-squares gains of the nominal and the broad model at each dip (as in step 4)
        del z
        if hh_model is None:
            hh_res = hh_img
        else:
            hh_res = np.subtract(hh_img, hh_model, out=hh_model)
        rb = broad.response(hh_res)[tuple(dips.T)]
        fit_n = rn**2 / nominal.k0
        fit_b = np.where(rb < 0, rb**2, 0.0) / broad.k0
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = depth**2 * (fit_b / np.maximum(fit_n, 1e-300) - 1.0)
        keep = ~(gain > _LIKELIHOOD_GAIN)
        dips, depth = dips[keep], depth[keep]
    return np.column_stack([dips.astype(float), depth]) if len(dips) else np.zeros((0, hh_img.ndim + 1))


#: Plane-to-plane brightness jumps smaller than this (relative) are left alone by
#: :func:`_plane_gains` (a plane's median wanders by ~0.1 % with its puncta alone).
_MIN_PLANE_GAIN_JUMP = 0.01
#: A change of the planes' running-median level by more than this factor from one plane to the
#: next is structure (the tissue beginning or ending), which :func:`_plane_gains` keeps.
_PLANE_LEVEL_STEP = 1.25


def _robust_poly(x: np.ndarray, y: np.ndarray, deg: int) -> np.ndarray:
    """Values at ``x`` of a polynomial fitted to ``y`` by iteratively reweighted least squares
    (Tukey's biweight, 4.685 robust SDs): a few outlying points do not pull it."""
    design = np.vander(np.asarray(x, float), deg + 1)
    w = np.ones(len(y))
    for _ in range(20):
        coef = np.linalg.lstsq(design * w[:, None], y * w, rcond=None)[0]
        r = y - design @ coef
        u = r / (4.685 * MAD_TO_SD * float(np.median(np.abs(r))) + 1e-12)
        w = np.where(np.abs(u) < 1.0, (1.0 - u**2) ** 2, 0.0)
    return design @ coef


def _plane_gains(stack: np.ndarray, zero_level: float) -> tuple[np.ndarray, float] | None:
    """Each plane's brightness gain relative to the planes' trend, and the offset it is taken
    above, or None when no plane departs by :data:`_MIN_PLANE_GAIN_JUMP` or more.

    The gain is the plane's median above the offset (the camera or detector's zero level,
    ``zero_level`` of the noise model when it is positive and below every plane's median,
    else 0) over the trend of those medians with depth: a robust quadratic in log level
    (a straight line over 5-7 planes, the median over 2-4), fitted separately on either side
    of a step in their 5-plane running median larger than :data:`_PLANE_LEVEL_STEP` (the
    tissue beginning).  Attenuation with depth and such steps are not jumps; a plane brighter
    or dimmer than the trend (laser power or gain changing between planes) is.  On random
    plane gains of 5-15 % in 12-30 planes dimming with depth, the planes corrected by these
    gains keep ~0.2 of the jumps between neighbours (a 5-plane running median as the trend
    kept ~0.6).

    >>> stack = np.full((7, 8, 8), 110.0)
    >>> stack[3] = 120.0  # one plane 10 % brighter above an offset of 10
    >>> gain, offset = _plane_gains(stack, 10.0)
    >>> np.round(gain, 3).tolist(), offset
    ([1.0, 1.0, 1.0, 1.1, 1.0, 1.0, 1.0], 10.0)
    """
    if stack.shape[0] < 3:
        return None
    med = np.array([float(np.median(pl)) for pl in stack])
    offset = float(zero_level) if np.isfinite(zero_level) and 0.0 < zero_level < med.min() else 0.0
    above = med - offset
    if not (above > 0).all():
        return None
    y = np.log(above)
    running = np.log(ndi.median_filter(above, size=5, mode="nearest"))
    trend = y.copy()
    for part in np.split(np.arange(len(y)), np.flatnonzero(np.abs(np.diff(running)) > np.log(_PLANE_LEVEL_STEP)) + 1):
        if len(part) >= 5:
            trend[part] = _robust_poly(part, y[part], 2 if len(part) >= 8 else 1)
        elif len(part) >= 2:
            trend[part] = np.median(y[part])
    gain = np.exp(y - trend)
    if np.abs(gain - 1.0).max() < _MIN_PLANE_GAIN_JUMP:
        return None
    return gain, offset


def _gain_corrected(stack: np.ndarray, gain: np.ndarray, offset: float) -> np.ndarray:
    """A float32 copy of ``stack`` with each plane's part above ``offset`` divided by its gain."""
    out = np.array(stack, dtype=np.float32)
    out -= np.float32(offset)
    out /= gain.astype(np.float32)[:, None, None]
    out += np.float32(offset)
    return out


def _tiles(lateral: tuple[int, ...], tile_px: int | None) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Tiles ``((y0, y1), (x0, x1))`` covering a lateral plane: one when the plane is at most
    ``tile_px`` pixels per side, else tiles of at most ``min(tile_px, LARGE_TILE_PX)`` pixels
    per side (equal sizes)."""
    if tile_px is None or max(lateral) <= tile_px:
        return [((0, int(lateral[0])), (0, int(lateral[1])))]
    side = min(int(tile_px), LARGE_TILE_PX)
    edges = []
    for n in lateral:
        m = -(-int(n) // side)
        edges.append(np.linspace(0, n, m + 1).round().astype(int))
    ey, ex = edges
    return [((int(ey[i]), int(ey[i + 1])), (int(ex[j]), int(ex[j + 1])))
            for i in range(len(ey) - 1) for j in range(len(ex) - 1)]


def _tile_margin(sig_all: np.ndarray, bg: np.ndarray) -> int:
    """Lateral margin (pixels) read around a tile so that its puncta are fitted as in the whole
    image: the reach of the doubly background-subtracted image (two blurs of the background
    radius) and of the widest response, plus three times the range over which two
    candidates' models interact (their joint fit, deblending and the second pass)."""
    s_max = float(sig_all[:, -2:].max())
    b = float(bg[-1])
    unit = max(s_max, b)
    reach = 2 * _gauss_radius(b) + _gauss_radius(s_max) + int(np.ceil(4 * s_max))
    interact = int(np.ceil(4.0 * np.sqrt(2.0) * np.sqrt(2.0) * unit))
    return reach + 3 * interact + 4


def _merge_tile_duplicates(found: dict[str, Any], sep: np.ndarray) -> dict[str, Any]:
    """Of two puncta of two neighbouring tiles closer than the minimum separation (one found
    near the edge of each), the weaker goes (the detector's own rule within a tile; two puncta
    of one tile that close are the two of a split blob)."""
    pos, t = found["pos"], found["t"]
    if len(pos) < 2:
        return found
    pr = cKDTree(pos / sep).query_pairs(1.0, output_type="ndarray")
    pr = pr[found["tile"][pr[:, 0]] != found["tile"][pr[:, 1]]] if len(pr) else pr
    if not len(pr):
        return found
    i, j = pr.T
    drop = np.zeros(len(pos), bool)
    drop[np.where(t[i] < t[j], i, j)] = True
    log.debug("%d punctum found twice at tile edges", int(drop.sum()))
    return {key: (v[~drop] if key not in _BLOCK_SCALARS + ("neg",) else v) for key, v in found.items()}


def _label_sizes(labels: np.ndarray, minlength: int = 0, chunk: int = 1 << 18) -> np.ndarray:
    """``np.bincount(labels.ravel(), minlength=minlength)``, in chunks (bincount of an int32
    label image makes an int64 copy of it)."""
    flat = labels.ravel()
    out = np.zeros(max(int(flat.max()) + 1 if flat.size else 0, minlength), np.int64)
    for i in range(0, flat.size, chunk):
        part = np.bincount(flat[i : i + chunk])
        out[: len(part)] += part
    return out
