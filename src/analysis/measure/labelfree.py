"""Label-free checks of detected puncta on real images (no hand annotation needed).

Real images from other labs rarely come with annotated puncta.  A detector can still be
judged on them with what the biology guarantees, given the other channels of the same field:

* **on dendrites** -- excitatory postsynaptic puncta (PSD95, Homer1) sit on or next to
  MAP2-positive dendrites: the fraction of puncta within ~1 um of the dendrite mask should be
  well above the fraction of the field that lies that close (:func:`enrichment_near`, 1 for
  points placed at random);
* **not in nuclei** -- almost none inside DAPI nuclei (:func:`fraction_inside`);
* **not in somata** -- the bright cell bodies of the dendritic marker (:func:`soma_mask`) hold
  the marker's intracellular pool, not synapses: the density of puncta there should not exceed
  the field's (:func:`fraction_inside` over the mask's share of the field);
* **paired** -- pre- and postsynaptic puncta face each other across the cleft (~0.1 um, less
  than the resolution), so more postsynaptic puncta have a presynaptic partner nearby than
  when one channel is shifted by a few micrometres (:func:`pairing_above_chance`);
* **density** -- puncta per 10 um of dendrite (:func:`density_per_10um`) in the published
  range for cultured neurons (a few to ~10 per 10 um).

The masks come from the other channels with physical parameters (:func:`dendrite_mask`,
:func:`nucleus_mask`, :func:`dendrite_length_um`).  Points are ``(n, 2)`` arrays of ``y, x``
in pixels (pixel centres at integer coordinates, as :func:`analysis.measure.puncta.detect_puncta`
returns them); masks are boolean YX arrays of the image's shape.  A detector that paints the
whole field scores 1 on the enrichment, near 0 above chance on the pairing and the field's
fraction of nuclei: these checks catch it whatever it counts.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage import filters, morphology

__all__ = [
    "dendrite_mask",
    "dendrite_length_um",
    "nucleus_mask",
    "soma_mask",
    "enrichment_near",
    "fraction_inside",
    "pairing_above_chance",
    "density_per_10um",
]


def _points(points_yx: np.ndarray) -> np.ndarray:
    p = np.asarray(points_yx, dtype=float)
    if p.size == 0:
        return np.zeros((0, 2))
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must be an (n, 2) array of y, x; got shape {p.shape}")
    return p


def _pixels(points_yx: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest pixel of each point, clipped into the image."""
    p = np.rint(_points(points_yx)).astype(int)
    return np.clip(p[:, 0], 0, shape[0] - 1), np.clip(p[:, 1], 0, shape[1] - 1)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be a 2-D (YX) array, got shape {m.shape}")
    return m


def _smoothed(image: np.ndarray, pixel_size_um: float, smooth_um: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``image`` as a float YX array (checked) and its Gaussian smoothing at ``smooth_um``."""
    img = np.asarray(image, dtype=float)
    if img.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (YX) image, got shape {img.shape}")
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    return img, (ndi.gaussian_filter(img, smooth_um / pixel_size_um) if smooth_um > 0 else img)


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Mask without its 8-connected objects of fewer than ``min_px`` pixels."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _near(mask: np.ndarray, pixel_size_um: float, within_um: float) -> np.ndarray:
    """Pixels whose centre lies within ``within_um`` of a mask pixel's centre."""
    if not mask.any():
        return np.zeros_like(mask)
    dist = ndi.distance_transform_edt(~mask, sampling=pixel_size_um)
    return dist <= within_um + 1e-9


def dendrite_mask(
    map2: np.ndarray,
    pixel_size_um: float,
    *,
    background_radius_um: float = 3.0,
    smooth_um: float = 0.3,
    min_area_um2: float = 5.0,
) -> np.ndarray:
    """Dendrites segmented from a MAP2 (or other dendritic marker) image.

    1. Light smoothing (Gaussian, ``smooth_um``) against pixel noise.
    2. Background subtraction by a morphological top-hat: the image minus its grey opening
       with a disk of radius ``background_radius_um``.  Dendrites (0.5-3 um wide) are
       narrower than the disk and keep their full contrast; what is broader -- out-of-focus
       haze, uneven illumination and the interior of the bright somata (10-20 um) -- is
       removed.  A rolling ball in other tools does the same.
    3. Triangle threshold (Zack et al. 1977) of the top-hat image.  After the top-hat the
       histogram is a tall peak of background pixels with a long tail of dendrite pixels
       that cover a minority of the field; the triangle method places the cut where that
       peak ends, which keeps faint dendrites.  Otsu's method assumes two classes of
       comparable weight and on such histograms keeps only the brightest shafts (on the
       culture fields of ``../shared/realdata`` it kept a quarter of the area triangle keeps,
       dropping visible thin dendrites).
    4. Objects smaller than ``min_area_um2`` (specks of noise or debris) are removed.

    Parameters
    ----------
    map2 : ndarray
        MAP2 image (YX).
    pixel_size_um : float
        Pixel size.
    background_radius_um : float
        Radius of the disk of the top-hat: structures wider than ~twice this are background.
    smooth_um : float
        Sigma of the smoothing.
    min_area_um2 : float
        Smallest object kept.

    Returns
    -------
    ndarray of bool
        Dendrite mask, the image's shape.

    Examples
    --------
    A 1 um wide vertical dendrite on a noisy, tilted background:

    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:200, :200] * 0.2
    >>> img = 100 + 2 * xx + 300 * (np.abs(xx - 20) < 0.5) + rng.normal(0, 10, (200, 200))
    >>> m = dendrite_mask(img, 0.2)
    >>> cols = m.mean(axis=0)  # fraction of each column in the mask
    >>> bool(cols[98:103].min() == 1), float(cols[:90].max()), float(cols[111:].max())
    (True, 0.0, 0.0)
    """
    img, smooth = _smoothed(map2, pixel_size_um, smooth_um, "map2")
    radius = max(int(round(background_radius_um / pixel_size_um)), 1)
    tophat = smooth - ndi.grey_opening(smooth, footprint=morphology.disk(radius))
    if np.ptp(tophat) == 0:
        return np.zeros(img.shape, dtype=bool)
    mask = tophat > filters.threshold_triangle(tophat)
    return _drop_small(mask, min_area_um2 / pixel_size_um**2)


def dendrite_length_um(mask: np.ndarray, pixel_size_um: float) -> float:
    """Total length of the dendrites of a mask, from its skeleton.

    The mask is thinned to a one-pixel skeleton (:func:`skimage.morphology.skeletonize`) and
    every pair of 8-connected skeleton pixels adds its centre-to-centre distance (1 or
    sqrt(2) pixels).  A straight line of n pixels measures (n - 1) pixels; diagonal lines are
    measured exactly; at junctions the small triangles of links add a few tenths of a pixel.

    Parameters
    ----------
    mask : ndarray of bool
        Dendrite mask (YX).
    pixel_size_um : float
        Pixel size.

    Returns
    -------
    float
        Length in um.

    Examples
    --------
    A horizontal line of 101 pixels and a diagonal one of 51 pixels at 0.5 um: 100 straight
    and 50 diagonal links, (100 + 50 sqrt(2)) x 0.5 um:

    >>> m = np.zeros((120, 200), bool)
    >>> m[10, 20:121] = True
    >>> m[np.arange(50, 101), np.arange(100, 151)] = True
    >>> round(dendrite_length_um(m, 0.5), 2)
    85.36
    """
    m = _check_mask(mask)
    sk = morphology.skeletonize(m)
    straight = np.count_nonzero(sk[1:, :] & sk[:-1, :]) + np.count_nonzero(sk[:, 1:] & sk[:, :-1])
    diagonal = np.count_nonzero(sk[1:, 1:] & sk[:-1, :-1]) + np.count_nonzero(sk[1:, :-1] & sk[:-1, 1:])
    return float((straight + np.sqrt(2.0) * diagonal) * pixel_size_um)


def nucleus_mask(dapi: np.ndarray, pixel_size_um: float, *, smooth_um: float = 0.5,
                 min_area_um2: float = 20.0) -> np.ndarray:
    """Nuclei segmented from a DAPI (or other nuclear stain) image.

    Gaussian smoothing (``smooth_um``), Otsu's threshold (nuclei are bright, compact and
    cover enough of the field for two-class thresholding), holes filled, objects smaller than
    ``min_area_um2`` removed (a neuronal nucleus is ~80-200 um^2; debris and pyknotic specks
    are smaller).

    Parameters
    ----------
    dapi : ndarray
        Nuclear stain (YX).
    pixel_size_um : float
        Pixel size.
    smooth_um : float
        Sigma of the smoothing.
    min_area_um2 : float
        Smallest nucleus kept.

    Returns
    -------
    ndarray of bool
        Nucleus mask, the image's shape.

    Examples
    --------
    One ring-shaped nucleus (radius 5 um, area 78.5 um^2, dim centre) and a 1 um speck:

    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:100, :100] * 0.25
    >>> r = np.hypot(yy - 12, xx - 12)
    >>> img = 100 + 900 * ((r < 5) & (r > 1)) + 900 * (np.hypot(yy - 20, xx - 20) < 0.5)
    >>> m = nucleus_mask(img + rng.normal(0, 20, img.shape), 0.25)
    >>> bool(m[48, 48]), bool(m[80, 80]), round(m.sum() * 0.25**2)  # centre filled, speck gone
    (True, False, 78)
    """
    img, smooth = _smoothed(dapi, pixel_size_um, smooth_um, "dapi")
    if np.ptp(smooth) == 0:
        return np.zeros(img.shape, dtype=bool)
    mask = ndi.binary_fill_holes(smooth > filters.threshold_otsu(smooth))
    return _drop_small(mask, min_area_um2 / pixel_size_um**2)


def soma_mask(map2: np.ndarray, pixel_size_um: float, *, smooth_um: float = 0.5,
              radius_um: float = 3.0, min_area_um2: float = 80.0) -> np.ndarray:
    """Neuronal cell bodies from a MAP2 (or other somatodendritic marker) image.

    Somata are the parts of the marker wider than any dendrite: light smoothing
    (``smooth_um``), a grey opening with a disk of radius ``radius_um`` (dendrites, at most
    ~3-5 um wide, are narrower than the disk and drop to the background around them; a soma,
    10-20 um across, holds it), Otsu's threshold of the opened image (bright bodies against
    the rest), and objects smaller than ``min_area_um2`` removed (a soma 10 um across is
    ~80 um^2; the thick base of a primary dendrite is smaller).

    Parameters
    ----------
    map2 : ndarray
        MAP2 image (YX).
    pixel_size_um : float
        Pixel size.
    smooth_um : float
        Sigma of the smoothing.
    radius_um : float
        Radius of the opening's disk: structures narrower than twice this are not somata.
    min_area_um2 : float
        Smallest soma kept.

    Returns
    -------
    ndarray of bool
        Soma mask, the image's shape.

    Examples
    --------
    A soma 14 um across with a 2 um wide dendrite leaving it, at 0.25 um pixels:

    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:200, :200] * 0.25
    >>> img = 100 + 800 * (np.hypot(yy - 25, xx - 15) < 7) + 600 * ((np.abs(yy - 25) < 1) & (xx > 15))
    >>> m = soma_mask(img + rng.normal(0, 20, img.shape), 0.25)
    >>> bool(m[100, 60]), bool(m[100, 160]), round(float(m.sum() * 0.25**2 / (np.pi * 7**2)), 2)
    (True, False, 1.0)
    """
    img, smooth = _smoothed(map2, pixel_size_um, smooth_um, "map2")
    radius = max(int(round(radius_um / pixel_size_um)), 1)
    opened = ndi.grey_opening(smooth, footprint=morphology.disk(radius))
    if np.ptp(opened) == 0:
        return np.zeros(img.shape, dtype=bool)
    return _drop_small(opened > filters.threshold_otsu(opened), min_area_um2 / pixel_size_um**2)


def enrichment_near(points_yx: np.ndarray, mask: np.ndarray, pixel_size_um: float,
                    within_um: float = 1.0) -> float:
    """Enrichment of points near a mask over uniformly random points.

    The fraction of points whose nearest pixel lies within ``within_um`` of the mask (centre
    to centre, inside the mask included), divided by the fraction of the field's pixels that
    do: the rate expected for points placed uniformly at random.  So 1 means no preference,
    and the largest possible value is 1 / (that fraction of the field).

    Parameters
    ----------
    points_yx : ndarray
        (n, 2) positions in pixels.
    mask : ndarray of bool
        YX mask (e.g. :func:`dendrite_mask`).
    pixel_size_um : float
        Pixel size.
    within_um : float
        Distance from the mask that counts as near.

    Returns
    -------
    float
        The enrichment (NaN without points or without any mask).

    Examples
    --------
    A one-pixel line in a 100 x 100 field at 0.1 um: 21 of the 100 columns are within 1 um.
    Points all near it score 100 / 21; points on every column score 1:

    >>> m = np.zeros((100, 100), bool); m[:, 50] = True
    >>> near = np.column_stack([np.arange(10), np.full(10, 55)])
    >>> round(enrichment_near(near, m, 0.1), 3)
    4.762
    >>> grid = np.column_stack([np.zeros(100), np.arange(100)])
    >>> enrichment_near(grid, m, 0.1)
    1.0
    """
    m = _check_mask(mask)
    p = _points(points_yx)
    near = _near(m, pixel_size_um, within_um)
    expected = near.mean()
    if len(p) == 0 or expected == 0:
        return float("nan")
    return float(near[_pixels(p, m.shape)].mean() / expected)


def fraction_inside(points_yx: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of points whose nearest pixel is inside the mask.

    Parameters
    ----------
    points_yx : ndarray
        (n, 2) positions in pixels.
    mask : ndarray of bool
        YX mask (e.g. :func:`nucleus_mask`).

    Returns
    -------
    float
        The fraction (NaN without points).

    Examples
    --------
    >>> m = np.zeros((10, 10), bool); m[:5] = True
    >>> fraction_inside([[1, 1], [4.4, 3], [4.6, 3], [9, 9]], m)
    0.5
    """
    m = _check_mask(mask)
    p = _points(points_yx)
    if len(p) == 0:
        return float("nan")
    return float(m[_pixels(p, m.shape)].mean())


def _paired(post: np.ndarray, tree: cKDTree | None, radius: float) -> np.ndarray:
    if tree is None or len(post) == 0:
        return np.zeros(len(post), dtype=bool)
    d, _ = tree.query(post, k=1, distance_upper_bound=radius)
    return np.isfinite(d)


def pairing_above_chance(
    pre_yx: np.ndarray,
    post_yx: np.ndarray,
    pixel_size_um: float,
    within_um: float = 0.65,
    shifts_um: tuple[float, ...] = (3.0, 4.0, 5.0),
    shape: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Pre/post pairing: fraction of postsynaptic puncta with a presynaptic partner, and chance.

    ``observed`` is the fraction of post puncta whose nearest pre punctum (k-d tree) is
    within ``within_um``.  ``chance`` is the mean of the same fraction with the pre channel
    shifted by each of ``shifts_um`` in +x, -x, +y and -y (so 4 x len(shifts) shifts): a
    shift of a few micrometres breaks real pairs but keeps the density and the clustering of
    both channels along the same dendrites, so it is the rate expected from crowding alone.
    ``above_chance`` is their difference.  With ``shape`` given, each shift counts only the
    post puncta that the shifted pre field still covers (not those in the strip the shift
    emptied), which removes a small downward edge bias of the chance level.

    Parameters
    ----------
    pre_yx, post_yx : ndarray
        (n, 2) positions in pixels.
    pixel_size_um : float
        Pixel size.
    within_um : float
        Largest pre-post distance of a pair (default 0.65 um: two widefield resolution
        elements; pre and post marker centres are ~0.1-0.3 um apart plus localisation error).
    shifts_um : tuple of float
        Shifts of the pre channel for the chance level (larger than ``within_um`` and than a
        synapse, smaller than the field).
    shape : (int, int), optional
        Image shape (pixels); see above.

    Returns
    -------
    dict
        ``observed``, ``chance``, ``above_chance`` (NaN without post puncta).

    Examples
    --------
    Identical point sets on a 7 um grid pair perfectly; shifts of 3-5 um break every pair:

    >>> g = np.mgrid[5:400:70, 5:400:70].reshape(2, -1).T.astype(float)  # 0.1 um pixels
    >>> r = pairing_above_chance(g, g, 0.1)
    >>> r["observed"], r["chance"], r["above_chance"]
    (1.0, 0.0, 1.0)
    """
    pre, post = _points(pre_yx), _points(post_yx)
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    nan = float("nan")
    if len(post) == 0:
        return {"observed": nan, "chance": nan, "above_chance": nan}
    radius = within_um / pixel_size_um
    observed = float(_paired(post, cKDTree(pre) if len(pre) else None, radius).mean())
    rates = []
    for s_um in shifts_um:
        s = s_um / pixel_size_um
        for shift in ((0.0, s), (0.0, -s), (s, 0.0), (-s, 0.0)):
            moved = pre + np.asarray(shift)
            keep = np.ones(len(post), dtype=bool)
            if shape is not None:
                # post puncta the shifted pre field still covers: original pre field moved by shift
                q = post - np.asarray(shift)
                keep = (q[:, 0] >= -0.5) & (q[:, 0] <= shape[0] - 0.5) & (q[:, 1] >= -0.5) & (q[:, 1] <= shape[1] - 0.5)
            if keep.any():
                rates.append(_paired(post[keep], cKDTree(moved) if len(moved) else None, radius).mean())
    chance = float(np.mean(rates)) if rates else nan
    return {"observed": observed, "chance": chance, "above_chance": observed - chance}


def density_per_10um(points_yx: np.ndarray, dendrite_mask: np.ndarray, pixel_size_um: float,
                     within_um: float = 1.0) -> float:
    """Puncta within ``within_um`` of a dendrite per 10 um of dendrite length.

    Parameters
    ----------
    points_yx : ndarray
        (n, 2) positions in pixels.
    dendrite_mask : ndarray of bool
        YX dendrite mask (:func:`dendrite_mask`); its length is :func:`dendrite_length_um`.
    pixel_size_um : float
        Pixel size.
    within_um : float
        Distance from the mask within which a punctum counts as on the dendrite.

    Returns
    -------
    float
        Puncta per 10 um (NaN when the mask has no length).

    Examples
    --------
    Six puncta beside a 101-pixel (100 px = 20 um long) dendrite at 0.2 um, one far away:

    >>> m = np.zeros((50, 150), bool); m[20, 20:121] = True
    >>> pts = [[22, 30], [18, 50], [20, 70], [24, 90], [16, 100], [20, 120], [45, 140]]
    >>> density_per_10um(pts, m, 0.2)
    3.0
    """
    m = _check_mask(dendrite_mask)
    length = dendrite_length_um(m, pixel_size_um)
    if length <= 0:
        return float("nan")
    p = _points(points_yx)
    n = int(_near(m, pixel_size_um, within_um)[_pixels(p, m.shape)].sum()) if len(p) else 0
    return float(10.0 * n / length)
