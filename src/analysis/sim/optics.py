"""Optics and camera of the simulated confocal fields, and helpers shared by the phantoms.

The PSF, camera gain, read noise and offset, the preset SNR levels, illumination, and the
rendering primitives (Gaussians, disks, blurred splats, polylines) used by
:mod:`analysis.sim.neuropil` and :mod:`analysis.sim.glia`.

Conventions
-----------
Coordinates are in pixels with pixel centres at integer positions: pixel ``(i, j)``
covers ``[i - 0.5, i + 0.5) x [j - 0.5, j + 0.5)``, so the field spans
``[-0.5, Y - 0.5) x [-0.5, X - 0.5)``.  Intensities are photo-electrons before the camera
and ADU (analog-to-digital units) after it: ``ADU = gain * electrons + read noise +
offset``, rounded and clipped to ``uint16``.  Images are point-sampled (a confocal scanner
samples the specimen at the pixel centres), so a punctum centred on a pixel reaches its
full ``amplitude`` in that pixel.

Signal-to-noise ratio
---------------------
The SNR of the PSD95 channel is the mean peak amplitude of the in-focus (not engulfed)
puncta, in photo-electrons above the local background, divided by the noise standard
deviation at the mean background level of the analysed area::

    snr = mean(amplitude) / sqrt(mean_background_e + (read_noise_adu / gain) ** 2)

(shot noise of the background plus read noise, both in electrons).  The ``snr`` argument
sets the amplitude scale; the realised value (it differs by the sampling of the
amplitudes and positions, a few per cent) is returned with the field.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

__all__ = ["SNR_LEVELS", "PSF_SIGMA_UM", "CAMERA_GAIN", "READ_NOISE_ADU", "CAMERA_OFFSET_ADU", "psf_profile",
           "render_psf_spots", "render_elliptical_spots"]

log = logging.getLogger(__name__)

#: Preset PSD95 signal-to-noise ratios (definition in the module docstring).
SNR_LEVELS: dict[str, float] = {"high": 15.0, "default": 8.0, "low": 4.5, "hard": 3.0}

# --- optics and camera -------------------------------------------------------------------
PSF_SIGMA_UM = 0.10  # lateral sigma of the confocal point spread function
CAMERA_GAIN = 2.0  # ADU per photo-electron
READ_NOISE_ADU = 3.0  # Gaussian read noise SD
CAMERA_OFFSET_ADU = 100.0
_READ_E = READ_NOISE_ADU / CAMERA_GAIN
_UINT16_MAX = np.iinfo(np.uint16).max
_PSF_REACH_UM = 2.0  # spots of :func:`render_psf_spots` are rendered this far out


def psf_profile(r_um: np.ndarray, psf: str = "moffat", *, fwhm_um: float = 0.25, beta: float = 2.5,
                numerical_aperture: float = 1.4, wavelength_um: float = 0.52) -> np.ndarray:
    """A lateral point spread function other than a Gaussian, peak 1, at radii ``r_um``.

    Parameters
    ----------
    r_um : ndarray
        Distances from the centre (um).
    psf : {"moffat", "airy"}
        ``"moffat"``: ``(1 + (r / a)^2)^-beta`` with ``a`` set by ``fwhm_um`` (a Gaussian-like
        core with heavier wings, as aberrations give); ``"airy"``: ``(2 J1(v) / v)^2``,
        ``v = 2 pi NA r / lambda`` (the diffraction pattern of an ideal lens, with its rings).
    fwhm_um, beta : float
        The Moffat profile's full width at half maximum and its power.
    numerical_aperture, wavelength_um : float
        The Airy pattern's objective and emission wavelength.

    Returns
    -------
    ndarray
        The profile (same shape as ``r_um``).

    Examples
    --------
    >>> [round(float(v), 3) for v in psf_profile(np.array([0.0, 0.125]), "moffat")]
    [1.0, 0.5]
    >>> round(float(psf_profile(np.array([0.61 * 0.52 / 1.4]), "airy")[0]), 4)  # the first dark ring
    0.0
    """
    r = np.asarray(r_um, dtype=float)
    if psf == "moffat":
        a = fwhm_um / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
        return (1.0 + (r / a) ** 2) ** -beta
    if psf == "airy":
        from scipy.special import j1

        v = 2.0 * np.pi * numerical_aperture / wavelength_um * r
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (2.0 * j1(v) / v) ** 2
        return np.where(v == 0, 1.0, out)
    raise ValueError(f"psf must be 'moffat' or 'airy', not {psf!r}")


def render_psf_spots(rng: np.random.Generator, shape: tuple[int, ...], pixel_size_um: float, yx: np.ndarray,
                     amplitude: float, background: float = 100.0, psf: str = "moffat", *, supersample: int = 5,
                     z_step_um: float | None = None, axial_sigma_um: float = 0.3,
                     **psf_params: float) -> np.ndarray:
    """Point-like spots with a non-Gaussian PSF (:func:`psf_profile`), integrated over each
    pixel (``supersample`` x ``supersample`` sub-pixels), on a flat ``background`` (photons),
    with shot noise, as uint16: a check of the detectors on light that is not the Gaussian
    they model.  A stack (``shape`` ZYX) has that lateral profile in every plane, times a
    Gaussian of ``axial_sigma_um`` along z sampled at the planes (an optical section).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the shot noise.
    shape : (int, int) or (int, int, int)
        Image shape (pixels; planes first for a stack).
    pixel_size_um : float
        Pixel size.
    yx : ndarray, shape (n, 2) or (n, 3)
        Spot centres (pixels, pixel centres at integers; a stack's with the plane first), on
        the image's pixels.
    amplitude : float
        Peak of a spot centred on a pixel (and plane), in photons above the background.
    background : float
        Photons per pixel.
    psf : {"moffat", "airy"}
        The profile; ``psf_params`` are passed to :func:`psf_profile`.
    supersample : int
        Sub-pixels per pixel and axis.
    z_step_um : float, optional
        A stack's plane spacing (required for a stack).
    axial_sigma_um : float
        A stack's axial Gaussian SD.

    Returns
    -------
    ndarray of uint16
        The image (photons).
    """
    nz, ny, nx, zyx = _spot_centres("render_psf_spots", shape, yx, z_step_um, axial_sigma_um)
    sub = int(supersample)
    u = (np.arange(sub) + 0.5) / sub - 0.5  # sub-pixel centres within a pixel
    peak = float(np.mean(psf_profile(np.hypot(u[:, None], u[None, :]) * pixel_size_um, psf, **psf_params)))
    half = int(np.ceil(_PSF_REACH_UM / pixel_size_um))  # (each spot within 2 um of its pixel)
    off = np.arange(-half, half + 1)
    fine = (off[:, None] + u[None, :]).ravel()  # sub-pixel offsets from the spot's pixel
    lam = np.zeros((max(nz, 1), ny + 2 * half, nx + 2 * half))
    planes = np.arange(max(nz, 1))
    for z, y, x in zyx:
        cy, cx = int(np.rint(y)), int(np.rint(x))
        r = np.hypot((fine + cy - y)[:, None], (fine + cx - x)[None, :]) * pixel_size_um
        win = psf_profile(r, psf, **psf_params).reshape(len(off), sub, len(off), sub).mean(axis=(1, 3))
        axial = np.exp(-0.5 * ((planes - z) * z_step_um / axial_sigma_um) ** 2) if nz else np.ones(1)
        lam[:, cy : cy + 2 * half + 1, cx : cx + 2 * half + 1] += axial[:, None, None] * win  # (padded by ``half``)
    lam = lam[:, half : half + ny, half : half + nx]
    counts = rng.poisson(background + amplitude / peak * lam)
    counts = np.clip(counts, 0, _UINT16_MAX).astype(np.uint16)
    return counts if nz else counts[0]


def render_elliptical_spots(rng: np.random.Generator, shape: tuple[int, ...], pixel_size_um: float,
                            yx: np.ndarray, amplitude: float, background: float = 100.0, *,
                            sigma_um: float = 0.09, aspect: float = 1.5, angle_rad: float = 0.0,
                            supersample: int = 5, z_step_um: float | None = None,
                            axial_sigma_um: float = 0.3) -> np.ndarray:
    """Elongated spots: elliptical Gaussians of minor SD ``sigma_um`` and major SD ``aspect``
    times that, their major axis at ``angle_rad`` from the x axis (towards +y), integrated over
    each pixel (``supersample`` x ``supersample`` sub-pixels), on a flat ``background``
    (photons), with shot noise, as uint16: an astigmatic PSF (one angle for all), or synapses
    seen edge-on; a check of detectors that model round spots.  A stack (``shape`` ZYX) has
    that lateral profile in every plane, times a Gaussian of ``axial_sigma_um`` along z
    sampled at the planes.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the shot noise.
    shape : (int, int) or (int, int, int)
        Image shape (pixels; planes first for a stack).
    pixel_size_um : float
        Pixel size.
    yx : ndarray, shape (n, 2) or (n, 3)
        Spot centres (pixels, pixel centres at integers; a stack's with the plane first), on
        the image's pixels.
    amplitude : float
        Peak of a spot, in photons above the background (before pixel integration).
    background : float
        Photons per pixel.
    sigma_um, aspect, angle_rad : float
        Minor-axis SD, major / minor SD ratio (>= 1), direction of the major axis.
    supersample : int
        Sub-pixels per pixel and axis.
    z_step_um : float, optional
        A stack's plane spacing (required for a stack).
    axial_sigma_um : float
        A stack's axial Gaussian SD.

    Returns
    -------
    ndarray of uint16
        The image (photons).

    Examples
    --------
    >>> img = render_elliptical_spots(np.random.default_rng(0), (32, 32), 0.065, np.array([[16.0, 16.0]]),
    ...                               1000.0, 0.0, aspect=2.0)
    >>> int(img[16, 16 + 3] > 3 * img[16 + 3, 16])  # drawn out along x
    1
    """
    nz, ny, nx, zyx = _spot_centres("render_elliptical_spots", shape, yx, z_step_um, axial_sigma_um)
    _check_positive(pixel_size_um=pixel_size_um, sigma_um=sigma_um)
    if not aspect >= 1.0:
        raise ValueError(f"render_elliptical_spots: aspect must be >= 1, got {aspect!r}")
    s_minor = sigma_um / pixel_size_um
    s_major = aspect * s_minor
    half = int(np.ceil(4.0 * s_major)) + 1
    sub = int(supersample)
    u = (np.arange(sub) + 0.5) / sub - 0.5
    off = np.arange(-half, half + 1)
    fine = (off[:, None] + u[None, :]).ravel()
    c, sn = np.cos(angle_rad), np.sin(angle_rad)
    lam = np.zeros((max(nz, 1), ny + 2 * half, nx + 2 * half))
    planes = np.arange(max(nz, 1))
    for z, y, x in zyx:
        cy, cx = int(np.rint(y)), int(np.rint(x))
        dy, dx = (fine + cy - y)[:, None], (fine + cx - x)[None, :]
        along, across = c * dx + sn * dy, -sn * dx + c * dy
        win = np.exp(-0.5 * ((along / s_major) ** 2 + (across / s_minor) ** 2))
        win = win.reshape(len(off), sub, len(off), sub).mean(axis=(1, 3))
        axial = np.exp(-0.5 * ((planes - z) * z_step_um / axial_sigma_um) ** 2) if nz else np.ones(1)
        lam[:, cy : cy + 2 * half + 1, cx : cx + 2 * half + 1] += axial[:, None, None] * win
    lam = lam[:, half : half + ny, half : half + nx]
    counts = np.clip(rng.poisson(background + amplitude * lam), 0, _UINT16_MAX).astype(np.uint16)
    return counts if nz else counts[0]


# =========================================================================================
# generic helpers
# =========================================================================================
def _spot_centres(who: str, shape: tuple[int, ...], yx: np.ndarray, z_step_um: float | None,
                  axial_sigma_um: float) -> tuple[int, int, int, np.ndarray]:
    """``(nz, ny, nx, zyx)`` of a plane (``nz`` 0, ``z`` 0) or a stack of spots rendered by
    ``who``, its arguments checked: a stack needs planes, a z step and an axial SD; every
    centre lies on the image's pixels."""
    if len(shape) == 3:
        nz = int(shape[0])
        if nz < 1 or z_step_um is None or not z_step_um > 0 or not axial_sigma_um > 0:
            raise ValueError(f"{who}: a stack needs planes, z_step_um > 0 and axial_sigma_um > 0")
        ny, nx = _check_shape(tuple(shape[1:]))
        zyx = np.asarray(yx, float).reshape(-1, 3)
    else:
        nz = 0
        ny, nx = _check_shape(shape)
        lat = np.asarray(yx, float).reshape(-1, 2)
        zyx = np.column_stack([np.zeros(len(lat)), lat])
    lat = zyx[:, 1:]
    if len(lat) and not ((np.rint(lat) >= 0).all() and (np.rint(lat) <= [ny - 1, nx - 1]).all()):
        raise ValueError(f"{who}: spot centres must lie on the image's pixels (0 .. shape - 1)")
    return nz, ny, nx, zyx


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be two sizes >= 16 pixels, got {shape!r}")
    return int(shape[0]), int(shape[1])


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


def _check_non_negative(**values: float) -> None:
    for name, v in values.items():
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


def _lognormal(rng: np.random.Generator, n: int, cv: float) -> np.ndarray:
    """Lognormal draws with mean 1 and coefficient of variation ``cv``."""
    s2 = np.log1p(cv**2)
    return rng.lognormal(-0.5 * s2, np.sqrt(s2), n)


def _wrap(a: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (a + np.pi) % (2 * np.pi) - np.pi


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], corr_px: float) -> np.ndarray:
    """Smooth Gaussian random field (mean 0, SD 1) with correlation length ~``corr_px``.

    White noise on a coarse grid of spacing ``corr_px`` is interpolated with separable
    cubic B-splines (smooth, and cheap: four taps per axis, no large filters).
    """
    h, w = shape
    taps = []
    for n in shape:
        u = np.arange(n) / corr_px + rng.uniform(0, 1)
        i = np.floor(u).astype(np.int64)
        t = u - i
        wts = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3]) / 6
        taps.append((i, wts))
    (iy, wy), (ix, wx) = taps
    grid = rng.standard_normal((iy[-1] + 4, ix[-1] + 4))
    rows = sum(wy[k][:, None] * grid[iy + k] for k in range(4))  # (h, gx)
    field = sum(wx[k][None, :] * rows[:, ix + k] for k in range(4))
    field -= field.mean()
    sd = field.std()
    return field / sd if sd > 0 else field


class _Illumination:
    """Smooth multiplicative illumination: a linear gradient times a radial vignette.

    Analytic, so the same factor is available at sub-pixel puncta centres; normalised to
    mean 1 over the field.  Roughly +-20 % from the brightest to the darkest corner.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int]) -> None:
        h, w = shape
        self.centre = np.array([(h - 1) / 2, (w - 1) / 2])
        self.half_diag = 0.5 * float(np.hypot(h, w))
        self.gradient = rng.uniform(0.05, 0.18)
        theta = rng.uniform(0, 2 * np.pi)
        self.direction = np.array([np.sin(theta), np.cos(theta)])
        self.vignette = rng.uniform(0.08, 0.22)
        self.vcentre = self.centre + rng.normal(0, 0.12, 2) * np.array([h, w])
        self.norm = 1.0
        yy = np.arange(h, dtype=float)[:, None]
        xx = np.arange(w, dtype=float)[None, :]
        self.image = self(yy, xx)
        self.norm = 1.0 / float(self.image.mean())
        self.image *= self.norm

    def __call__(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        g = (y - self.centre[0]) * self.direction[0] + (x - self.centre[1]) * self.direction[1]
        r2 = (y - self.vcentre[0]) ** 2 + (x - self.vcentre[1]) ** 2
        ramp = 1 + self.gradient * g / self.half_diag
        return self.norm * ramp * (1 - self.vignette * r2 / self.half_diag**2)


def _camera(rng: np.random.Generator, electrons: np.ndarray) -> np.ndarray:
    """Shot noise, gain, read noise and offset of a photon-counting detector, as uint16."""
    counts = rng.poisson(np.clip(electrons, 0, None))
    adu = counts * CAMERA_GAIN + rng.normal(CAMERA_OFFSET_ADU, READ_NOISE_ADU, electrons.shape)
    return np.clip(np.rint(adu), 0, _UINT16_MAX).astype(np.uint16)


def _render_gaussians(
    shape: tuple[int, int], y: np.ndarray, x: np.ndarray, amp: np.ndarray, sigma_px: np.ndarray
) -> np.ndarray:
    """Exact sum of point-sampled 2-D Gaussians (truncated at 4 sigma) on a pixel grid.

    Each Gaussian is evaluated on its own square patch around the nearest pixel; the
    separable factors are combined by broadcasting and accumulated with ``bincount``.
    """
    h, w = shape
    img = np.zeros(h * w)
    if len(y) == 0:
        return img.reshape(shape)
    half = int(np.ceil(4 * float(np.max(sigma_px))))
    off = np.arange(-half, half + 1)
    py = np.rint(y).astype(np.int64)[:, None] + off
    px = np.rint(x).astype(np.int64)[:, None] + off
    s = np.asarray(sigma_px, float)[:, None]
    gy = np.exp(-0.5 * ((py - y[:, None]) / s) ** 2) * amp[:, None]
    gx = np.exp(-0.5 * ((px - x[:, None]) / s) ** 2)
    vals = gy[:, :, None] * gx[:, None, :]
    ok = ((py >= 0) & (py < h))[:, :, None] & ((px >= 0) & (px < w))[:, None, :]
    idx = py[:, :, None] * w + px[:, None, :]
    img += np.bincount(idx[ok], weights=vals[ok], minlength=h * w)
    return img.reshape(shape)


def _render_disks(
    shape: tuple[int, int], y: np.ndarray, x: np.ndarray, amp: np.ndarray, radius_px: np.ndarray, psf_px: float
) -> np.ndarray:
    """Uniform disks (height ``amp``, anti-aliased edge) blurred by a Gaussian PSF.

    This is the image of an object with a sharp edge (a vesicle): after blurring, the edge
    lies at the half-maximum contour of the plateau.  Where disks overlap the brighter one
    shows (a maximum projection of vesicles at different depths), not their sum.
    """
    h, w = shape
    img = np.zeros(h * w)
    if len(y) == 0:
        return img.reshape(shape)
    half = int(np.ceil(float(np.max(radius_px)))) + 2
    off = np.arange(-half, half + 1)
    py = np.rint(y).astype(np.int64)[:, None] + off
    px = np.rint(x).astype(np.int64)[:, None] + off
    d = np.hypot((py - y[:, None])[:, :, None], (px - x[:, None])[:, None, :])
    vals = np.clip(np.asarray(radius_px, float)[:, None, None] - d + 0.5, 0.0, 1.0) * amp[:, None, None]
    ok = ((py >= 0) & (py < h))[:, :, None] & ((px >= 0) & (px < w))[:, None, :]
    idx = py[:, :, None] * w + px[:, None, :]
    np.maximum.at(img, idx[ok], vals[ok])
    return ndi.gaussian_filter(img.reshape(shape), psf_px)


def _splat_blurred(
    shape: tuple[int, int], y: np.ndarray, x: np.ndarray, peak: np.ndarray, sigma_px: float
) -> np.ndarray:
    """Blurred point sources of the given peak height (for haze; positions to the pixel)."""
    h, w = shape
    iy, ix = np.rint(y).astype(np.int64), np.rint(x).astype(np.int64)
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    img = np.bincount(iy[ok] * w + ix[ok], weights=peak[ok] * 2 * np.pi * sigma_px**2, minlength=h * w)
    return ndi.gaussian_filter(img.reshape(shape), sigma_px, mode="constant")


def _broad_blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with a large sigma, computed on a 4x binned image and interpolated back."""
    f = 4 if sigma_px >= 6 and min(img.shape) >= 64 else 1
    if f == 1:
        return ndi.gaussian_filter(img, sigma_px)
    h, w = img.shape
    hb, wb = -(-h // f), -(-w // f)
    padded = np.pad(img, ((0, hb * f - h), (0, wb * f - w)), mode="edge")
    small = ndi.gaussian_filter(padded.reshape(hb, f, wb, f).mean(axis=(1, 3)), sigma_px / f)
    # bin centres sit at (f - 1) / 2 + f * k in pixel coordinates
    yy = (np.arange(h) - (f - 1) / 2) / f
    xx = (np.arange(w) - (f - 1) / 2) / f
    return ndi.map_coordinates(small, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")


#: relative tolerance for lengths made of whole steps of a fixed size: their sums differ
#: between CPUs by a few units in the last place (vector code for sin, cos and hypot), and a
#: comparison at a whole number of steps must not depend on that
_ROUNDING = 1e-9


def _substeps(length: np.ndarray, max_step: float) -> np.ndarray:
    """Number of equal sub-steps (at least 1) that cover each ``length`` in steps <= ``max_step``.

    A length that is a whole number of ``max_step`` up to rounding gets exactly that number.
    The simulated processes grow in steps of a fixed length, so their segments are whole
    multiples of the sampling step to within a few units in the last place, and those units
    depend on the CPU's vector code for ``sin`` and ``cos``. A bare ``ceil`` would then
    subdivide a segment into n or n + 1 pieces depending on the machine, and the same seed
    would give a different image on another CPU.

    >>> _substeps(np.array([1.0, 1.0 + 1e-15, 1.2, 0.0]), 0.5).tolist()
    [2, 2, 3, 1]
    """
    ratio = np.asarray(length, dtype=float) / max_step
    return np.maximum(1, np.ceil(ratio - _ROUNDING * np.maximum(ratio, 1.0))).astype(np.int64)


def _rasterise_polyline(points: np.ndarray, max_step: float) -> tuple[np.ndarray, np.ndarray]:
    """Densify an (n, 2) polyline so consecutive points are at most ``max_step`` apart.

    Returns the dense points and, for each, the index of the source segment start.
    """
    if len(points) < 2:
        return points.copy(), np.zeros(len(points), dtype=np.int64)
    seg = np.diff(points, axis=0)
    nsub = _substeps(np.hypot(seg[:, 0], seg[:, 1]), max_step)
    src = np.repeat(np.arange(len(seg)), nsub)
    t = np.arange(len(src)) - np.repeat(np.cumsum(nsub) - nsub, nsub)
    t = t / nsub[src]
    dense = points[src] + t[:, None] * seg[src]
    return np.vstack([dense, points[-1:]]), np.append(src, len(seg) - 1)


def _greedy_min_distance(points: np.ndarray, min_dist: float) -> np.ndarray:
    """Boolean mask of points kept by sequential inhibition in the given order.

    A point is dropped when an earlier kept point lies closer than ``min_dist``.
    """
    keep = np.ones(len(points), dtype=bool)
    if len(points) < 2:
        return keep
    pairs = cKDTree(points).query_pairs(min_dist, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[np.argsort(pairs[:, 1], kind="stable")]
    for i, j in pairs:  # pairs sorted by the later point: earlier decisions are final
        if keep[i]:
            keep[j] = False
    return keep


def _clip_segments_length(p0: np.ndarray, p1: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Length of each segment p0->p1 inside the box [lo, hi] (Liang-Barsky clipping)."""
    d = p1 - p0
    t0 = np.zeros(len(p0))
    t1 = np.ones(len(p0))
    inside = np.ones(len(p0), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(2):
            for p, q in ((-d[:, k], p0[:, k] - lo[k]), (d[:, k], hi[k] - p0[:, k])):
                par = p == 0
                inside &= ~(par & (q < 0))
                t = q / p
                t0 = np.where(~par & (p < 0), np.maximum(t0, t), t0)
                t1 = np.where(~par & (p > 0), np.minimum(t1, t), t1)
    frac = np.where(inside, np.clip(t1 - t0, 0, 1), 0.0)
    return frac * np.hypot(d[:, 0], d[:, 1])
