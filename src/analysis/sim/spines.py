"""Simulated in vivo two-photon imaging of GFP-filled dendrites and their spines, with truth.

The model follows the spine experiments of Shi et al. (Nat Neurosci 25:317-329, 2022):
the same dendrites of Thy1-GFP mice imaged repeatedly through a cranial window before,
during and after diazepam.  Four steps, each a pure function of its arguments and a
seeded :class:`numpy.random.Generator`:

* :func:`simulate_dendrite_truth` -- smooth dendrite centrelines crossing the imaged field
  (in um) with spines (thin, stubby, mushroom, filopodia) placed along them.
* :func:`evolve_spines` -- spine turnover between two sessions: balanced baseline gain
  and loss, plus the drug effect given as a target density relative to baseline (or an
  extra loss fraction).  Persistent spines keep their ``spine_id``; new spines get new ids.
* :func:`render_session` -- a z-stack or its maximum-intensity projection (MIP) of one
  session: GFP fills shaft, necks and heads; a Gaussian two-photon PSF, axially elongated;
  the tissue drifted, rotated and slightly warped relative to the previous session; Poisson
  shot noise, uniform background and Gaussian read noise.  Returns the truth in the pixel
  coordinates of that image.
* :func:`simulate_spine_sessions` (named presets and SNR levels) and
  :func:`simulate_repeat_imaging` (two sessions minutes apart, no turnover);
  :func:`render_again` images one of their sessions again with the same motion and
  background, of another truth (e.g. the bare dendrites) or as the stack behind a projection.

What is modelled
----------------
Geometry: a dendrite is a tube of radius ~0.4-0.6 um along a smooth curve, slightly
tilted in z; a spine is a neck (cylinder) from the shaft surface plus a spherical head
(none for filopodia), pointing sideways from the shaft with a small azimuth jitter and an
elevation of up to +-30 degrees out of the image plane.  Fluorescence is proportional to
the GFP-filled volume.  Each object is represented by point "beads" laid out so that their
second moments equal the object's (a ring of six points at ``r / sqrt(2)`` for a tube
cross-section of radius ``r``, every 0.1 um along it; for a spherical head, 123 points
filling the ball on a cubic lattice of spacing ``r / 3``), splatted trilinearly into the
voxel grid and blurred once with the Gaussian PSF.

Coordinates: truth in um is in *tissue* coordinates (``y_um``, ``x_um``, ``z_um``); the
field of view spans ``[0, h) x [0, w)`` um and ``[0, depth]`` um.  A rendered image
samples the field at pixel centres: pixel ``(i, j)`` covers ``[i p, (i + 1) p)`` um, so
``y_px = y_um / p - 0.5``; plane ``k`` is at ``z = k * z_step_um`` so ``z_px = z_um /
z_step_um``.  Session motion maps tissue to field coordinates as
``q = c + R(rotation) (p - c) + drift + warp(p)`` with ``c`` the field centre and ``warp``
a smooth random displacement (sum of three sinusoids of 20-60 um wavelength per axis).

Photon model: the expected photo-electrons per voxel are ``background_photons + k * GFP``,
where ``k`` is fixed so that a reference head (isolated sphere of 0.6 um diameter whose
centre is in the imaged plane) peaks at ``signal_photons`` above background (on average
over its sub-voxel position; within a few per cent at 0.1 um pixels and 0.25 um planes).  Each voxel
is ``Poisson(expected) + Normal(0, read_noise_e)``; a MIP is the maximum over the planes of
the *noisy* stack (as in real data), so its background is above ``background_photons``.
The stated SNR is per plane: ``signal_photons / sqrt(background_photons + read_noise_e**2)``.

What is not modelled
--------------------
Out-of-focus neuropil, other fluorescent cells and blood vessels (only as an optional
smooth background variation, ``background_cv``); scattering with depth
(loss of signal and a wider PSF); PMT multiplicative noise (approximated by Poisson plus
Gaussian read noise); motion within a stack other than a lateral shift of each plane
(``plane_jitter_um``), line-scan artefacts;
changes of spine size or shape between sessions; spine-type-dependent survival (thin spines
and filopodia are in reality more transient than mushroom spines); branching dendrites;
z-tilt of the imaging plane between sessions.

Literature used for the defaults
--------------------------------
Numbers marked (abstract) were checked against the paper's abstract; the others are
recalled from the literature and are order-of-magnitude choices, to be checked before they
are quoted.

* Spine density: complete counts on mouse cortical pyramidal dendrites are about 1-2 per um
  (e.g. Ballesteros-Yanez et al. 2006, Neuroscience 138:403; intracellular filling and
  confocal); in vivo two-photon counts of apical tufts are lower because spines pointing
  out of the image plane or below the resolution are missed, and vary from cell to cell
  (Holtmaat et al. 2009, Nat Protoc 4:1128).  We draw 1.0 per um of all spines; a third of
  them point more than 20 degrees out of plane.
* Turnover: in adult mouse barrel cortex 66 % (P80-120) to 73 % (P175-225) of spines
  persist for >= 8 days (Holtmaat et al. 2005, Neuron 45:279; abstract); through a thinned
  skull in adult visual cortex ~96 % are stable over a month (Zuo et al. 2005, Nature
  436:261; abstract); Trachtenberg et al. 2002 (Nature 420:788) report faster turnover in
  barrel cortex.  We use one constant hazard of 0.02 per day for loss and the balancing
  gain (2 % of the baseline count per day): 7.7 % lost over 4 days, 14.8 % over 8 days
  (85 % survive 8 days, between the two studies).  A single hazard does not reproduce the
  transient/persistent two-population structure (Holtmaat et al. 2005: thin spines come and
  go over days, most thick spines persist for months).
* Morphology: head diameters of thin spines ~0.3-0.6 um, mushroom ~0.6-1.0 um, necks
  ~0.1 um wide and ~0.5-1.5 um long; filopodia 2-4 um, no head (Harris & Stevens 1989;
  Arellano et al. 2007; Holtmaat et al. 2005).  Type fractions of adult cortex ~55 % thin,
  25 % mushroom, 15 % stubby, 5 % filopodia (order of magnitude; counts differ between
  studies and classification rules).
* PSF: a two-photon focus at 0.8-1.0 NA (water) has lateral FWHM ~0.5 um and axial FWHM
  ~2-2.5 um (Zipfel et al. 2003, Nat Biotechnol 21:1369): Gaussian sigma 0.22 um
  laterally, 1.0 um axially by default.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "DEFAULT_GAIN_RATE_PER_DAY",
    "DEFAULT_LOSS_RATE_PER_DAY",
    "DEFAULT_TYPE_FRACTIONS",
    "DendriteTruth",
    "PRESETS",
    "SNR_LEVELS",
    "SPINE_MORPHOLOGY",
    "SPINE_TYPES",
    "SpineSession",
    "evolve_spines",
    "render_again",
    "render_session",
    "simulate_dendrite_truth",
    "simulate_repeat_imaging",
    "simulate_spine_sessions",
    "with_spines",
]

log = logging.getLogger(__name__)

SPINE_TYPES: tuple[str, ...] = ("thin", "stubby", "mushroom", "filopodia")

#: Fractions of spine types among all spines (adult cortex, order of magnitude).
DEFAULT_TYPE_FRACTIONS: dict[str, float] = {"thin": 0.55, "stubby": 0.15, "mushroom": 0.25, "filopodia": 0.05}

#: Per type: head diameter (mean, sd) um, neck length (mean, sd) um, neck diameter um.
#: Draws are normal, clipped to [0.5, 2] x mean (neck of stubby spines to [0, 0.3] um).
#: For filopodia the "neck" is the whole protrusion and there is no head.
SPINE_MORPHOLOGY: dict[str, dict[str, Any]] = {
    "thin": {"head_diameter_um": (0.45, 0.08), "neck_length_um": (1.0, 0.3), "neck_diameter_um": 0.10},
    "stubby": {"head_diameter_um": (0.60, 0.10), "neck_length_um": (0.1, 0.05), "neck_diameter_um": 0.10},
    "mushroom": {"head_diameter_um": (0.80, 0.12), "neck_length_um": (0.8, 0.25), "neck_diameter_um": 0.12},
    "filopodia": {"head_diameter_um": (0.0, 0.0), "neck_length_um": (2.5, 0.7), "neck_diameter_um": 0.20},
}

#: Baseline hazard of losing a spine, per spine per day (see module docstring).
DEFAULT_LOSS_RATE_PER_DAY = 0.02
#: Baseline rate of new spines, per day, as a fraction of the baseline spine count.
DEFAULT_GAIN_RATE_PER_DAY = 0.02

#: SNR levels: expected photo-electrons at a reference spine head (0.6 um, in focus) above
#: background, background photo-electrons per voxel, Gaussian read noise (electrons rms).
#: Per-plane SNR = signal / sqrt(background + read**2): high 26.8, default 11.2, low 4.5.
#: Heads scale with their volume within the PSF: with the default morphology and PSF a
#: thin head (0.45 um) reaches about half, a mushroom head (0.8 um) about twice the
#: reference, the shaft about 4x; a filopodium (0.2 um wide) about a tenth.
SNR_LEVELS: dict[str, dict[str, float]] = {
    "high": {"signal_photons": 60.0, "background_photons": 4.0, "read_noise_e": 1.0},
    "default": {"signal_photons": 25.0, "background_photons": 4.0, "read_noise_e": 1.0},
    "low": {"signal_photons": 10.0, "background_photons": 4.0, "read_noise_e": 1.0},
}

#: Named presets of :func:`simulate_spine_sessions`.  ``days`` are imaging days since the
#: first dose (5 mg/kg/day on days 0-6: end of treatment on day 7, 56 days after the last
#: dose on day 62); ``target_density_ratio`` is the expected density relative to baseline
#: at each session (0.87: ~13 % loss, Shi et al. 2022).  Motion is drawn per session:
#: lateral drift ~ Normal(0, drift_sd_um) per axis, axial drift ~ Normal(0, drift_z_sd_um),
#: rotation ~ Normal(0, rotation_sd_deg), smooth warp of rms ``deformation_um`` per axis.
#: ``background_cv``: smooth background variation (5 um correlation) in the default preset.
PRESETS: dict[str, dict[str, Any]] = {
    "test": {
        "field_um": (15.36, 15.36), "depth_um": 6.0, "n_dendrites": 1,
        "spine_density_per_um": 1.0, "pixel_size_um": 0.12, "z_step_um": 1.0, "mode": "mip",
        "psf_sigma_xy_um": 0.22, "psf_sigma_z_um": 1.0,
        "days": (0.0, 7.0), "target_density_ratio": (1.0, 0.87),
        "drift_sd_um": 0.5, "drift_z_sd_um": 0.3, "rotation_sd_deg": 1.0, "deformation_um": 0.1,
    },
    "default": {
        "field_um": (61.44, 61.44), "depth_um": 10.0, "n_dendrites": 3,
        "spine_density_per_um": 1.0, "pixel_size_um": 0.12, "z_step_um": 1.0, "mode": "mip",
        "psf_sigma_xy_um": 0.22, "psf_sigma_z_um": 1.0,
        "days": (-7.0, 0.0, 7.0, 62.0), "target_density_ratio": (1.0, 1.0, 0.87, 1.0),
        "drift_sd_um": 1.5, "drift_z_sd_um": 0.7, "rotation_sd_deg": 2.0, "deformation_um": 0.3,
        "background_cv": 0.2, "background_scale_um": 5.0,
    },
}

_SHAFT_STEP_UM = 0.1
_REFERENCE_HEAD_DIAMETER_UM = 0.6
_SPINE_COLUMNS = [
    "spine_id", "dendrite_id", "s_um", "side", "type", "head_diameter_um", "neck_length_um",
    "neck_diameter_um", "azimuth_deg", "elevation_deg", "first_day",
    "base_y_um", "base_x_um", "base_z_um", "y_um", "x_um", "z_um",
]


# ----------------------------------------------------------------------------- truth
@dataclass(frozen=True)
class DendriteTruth:
    """Ground truth of one imaging session in tissue coordinates (um).

    Attributes
    ----------
    field_um : tuple of float
        (height, width) of the imaged field in um.
    depth_um : float
        Depth of the imaged volume (planes from 0 to ``depth_um``).
    centrelines : dict of int to ndarray
        Per ``dendrite_id``, the centreline as an (n, 3) array of (y, x, z) um, sampled
        every 0.1 um of arc length (extends ``margin_um`` beyond the field).
    dendrites : DataFrame
        One row per dendrite: ``dendrite_id``, ``radius_um``, ``length_um``.
    spines : DataFrame
        One row per spine: ``spine_id``, ``dendrite_id``, ``s_um`` (arc length of the base),
        ``side`` (+1 / -1), ``type``, ``head_diameter_um`` (0 for filopodia),
        ``neck_length_um`` (whole length for filopodia), ``neck_diameter_um``,
        ``azimuth_deg``, ``elevation_deg`` (direction), ``first_day`` (first session
        present), base on the shaft surface ``base_y_um``, ``base_x_um``, ``base_z_um``
        and head centre (tip for filopodia) ``y_um``, ``x_um``, ``z_um``.
    day : float
        Day of this session.
    baseline_density_per_um : float
        Baseline spine density (the reference of ``target_density_ratio``).
    type_fractions : dict
        Type fractions used for new spines.
    min_spacing_um : float
        Minimum distance along the dendrite between spines on the same side.
    max_elevation_deg : float
        Largest out-of-plane angle of a spine.
    next_spine_id : int
        The id the next new spine gets.
    """

    field_um: tuple[float, float]
    depth_um: float
    centrelines: dict[int, np.ndarray]
    dendrites: pd.DataFrame
    spines: pd.DataFrame
    day: float = 0.0
    baseline_density_per_um: float = 1.0
    type_fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_FRACTIONS))
    min_spacing_um: float = 0.5
    max_elevation_deg: float = 30.0
    next_spine_id: int = 0

    @property
    def total_length_um(self) -> float:
        """Summed centreline length of all dendrites (um)."""
        return float(self.dendrites["length_um"].sum())

    @property
    def density_per_um(self) -> float:
        """Spines per um of dendrite (all dendrites together)."""
        return len(self.spines) / self.total_length_um


def _as_rng(rng_or_seed: np.random.Generator | int | np.random.SeedSequence | None) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _arc(cl: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(cl, axis=0), axis=1))])


def _resample(points: np.ndarray, step_um: float) -> np.ndarray:
    s = _arc(points)
    grid = np.linspace(0.0, s[-1], max(2, int(round(s[-1] / step_um)) + 1))
    return np.stack([np.interp(grid, s, points[:, k]) for k in range(points.shape[1])], axis=1)


def _point_and_tangent(cl: np.ndarray, s_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = _arc(cl)
    pos = np.stack([np.interp(s_um, s, cl[:, k]) for k in range(3)], axis=1)
    tang = np.gradient(cl, s, axis=0)
    tang = np.stack([np.interp(s_um, s, tang[:, k]) for k in range(3)], axis=1)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    return pos, tang


def _spine_directions(tang: np.ndarray, side: np.ndarray, azimuth_deg: np.ndarray,
                      elevation_deg: np.ndarray) -> np.ndarray:
    """Unit vectors (y, x, z): sideways from the shaft, rotated by azimuth and elevation."""
    txy = tang[:, :2] / np.linalg.norm(tang[:, :2], axis=1, keepdims=True)
    normal = side[:, None] * np.stack([-txy[:, 1], txy[:, 0]], axis=1)  # perpendicular in y-x
    az, el = np.radians(azimuth_deg)[:, None], np.radians(elevation_deg)[:, None]
    dxy = np.cos(az) * normal + np.sin(az) * txy
    return np.concatenate([np.cos(el) * dxy, np.sin(el)], axis=1)


def _geometry(centrelines: Mapping[int, np.ndarray], dendrites: pd.DataFrame,
              spines: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base on the shaft surface, unit direction and head centre (tip) of every spine, (n, 3) um."""
    n = len(spines)
    base, direction = np.zeros((n, 3)), np.zeros((n, 3))
    radius = dendrites.set_index("dendrite_id")["radius_um"]
    did = spines["dendrite_id"].to_numpy()
    for d in np.unique(did):
        m = did == d
        pos, tang = _point_and_tangent(centrelines[int(d)], spines["s_um"].to_numpy(float)[m])
        dirs = _spine_directions(tang, spines["side"].to_numpy(float)[m],
                                 spines["azimuth_deg"].to_numpy(float)[m],
                                 spines["elevation_deg"].to_numpy(float)[m])
        direction[m] = dirs
        # the base is where the spine's direction, projected across the shaft, meets its surface
        across = dirs - np.sum(dirs * tang, axis=1, keepdims=True) * tang
        across /= np.linalg.norm(across, axis=1, keepdims=True)
        base[m] = pos + float(radius[d]) * across
    reach = spines["neck_length_um"].to_numpy(float) + spines["head_diameter_um"].to_numpy(float) / 2
    return base, direction, base + reach[:, None] * direction


def with_spines(truth: DendriteTruth, spines: pd.DataFrame) -> DendriteTruth:
    """Replace the spines of ``truth``, recomputing their base and head coordinates.

    Parameters
    ----------
    truth : DendriteTruth
        The session whose dendrites are kept.
    spines : DataFrame
        Needs ``spine_id``, ``dendrite_id``, ``s_um``, ``side``, ``type``,
        ``head_diameter_um``, ``neck_length_um``, ``neck_diameter_um``, ``azimuth_deg``,
        ``elevation_deg``; ``first_day`` defaults to ``truth.day``.

    Returns
    -------
    DendriteTruth
        A copy with the new spine table (coordinate columns filled in).
    """
    sp = spines.copy().reset_index(drop=True)
    missing = {"spine_id", "dendrite_id", "s_um", "side", "type", "head_diameter_um", "neck_length_um",
               "neck_diameter_um", "azimuth_deg", "elevation_deg"} - set(sp.columns)
    if missing:
        raise ValueError(f"spines table lacks column(s) {sorted(missing)}; add them (see DendriteTruth)")
    unknown = set(sp["dendrite_id"]) - set(truth.centrelines)
    if unknown:
        raise ValueError(f"spines refer to dendrite_id(s) {sorted(unknown)} that the truth does not have")
    if "first_day" not in sp:
        sp["first_day"] = truth.day
    base, _, head = _geometry(truth.centrelines, truth.dendrites, sp)
    data = {c: sp[c].to_numpy() for c in sp.columns}
    for k, axis in enumerate("yxz"):
        data[f"base_{axis}_um"] = base[:, k]
        data[f"{axis}_um"] = head[:, k]
    sp = pd.DataFrame({c: data[c] for c in _SPINE_COLUMNS + [c for c in data if c not in _SPINE_COLUMNS]})
    next_id = max(truth.next_spine_id, int(sp["spine_id"].max()) + 1 if len(sp) else 0)
    return dataclasses.replace(truth, spines=sp, next_spine_id=next_id)


def _draw_types(rng: np.random.Generator, n: int, fractions: Mapping[str, float]) -> np.ndarray:
    names = list(fractions)
    p = np.array([fractions[k] for k in names], float)
    return np.asarray(names, dtype=object)[rng.choice(len(names), size=n, p=p / p.sum())]


def _draw_morphology(rng: np.random.Generator, types: np.ndarray) -> dict[str, np.ndarray]:
    n = len(types)
    head, neck, neck_d = np.zeros(n), np.zeros(n), np.zeros(n)
    z_head, z_neck = rng.standard_normal(n), rng.standard_normal(n)
    for t in np.unique(types):
        m = types == t
        morph = SPINE_MORPHOLOGY[str(t)]
        hm, hs = morph["head_diameter_um"]
        nm, ns = morph["neck_length_um"]
        head[m] = np.clip(hm + hs * z_head[m], 0.5 * hm, 2.0 * hm)
        neck[m] = np.clip(nm + ns * z_neck[m], 0.0, 0.3) if t == "stubby" else np.clip(
            nm + ns * z_neck[m], 0.5 * nm, 2.0 * nm)
        neck_d[m] = morph["neck_diameter_um"]
    return {"head_diameter_um": head, "neck_length_um": neck, "neck_diameter_um": neck_d}


def _place(rng: np.random.Generator, n: int, length_um: float, occupied: dict[int, list[float]],
           min_spacing_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Sequentially place ``n`` bases uniformly along a dendrite, at least ``min_spacing_um``
    from every spine on the same side (hard-core rejection); ``occupied`` is updated."""
    s_out, side_out = np.empty(n), np.empty(n)
    for i in range(n):
        for _ in range(1000):
            s = rng.uniform(0.0, length_um)
            side = 1 if rng.random() < 0.5 else -1
            taken = occupied[side]
            if not taken or np.min(np.abs(np.asarray(taken) - s)) >= min_spacing_um:
                break
        else:
            raise ValueError(f"cannot place {n} spines at least {min_spacing_um} um apart on a "
                             f"{length_um:.1f} um dendrite; lower the density or min_spacing_um")
        occupied[side].append(s)
        s_out[i], side_out[i] = s, side
    return s_out, side_out


def _new_spines(rng: np.random.Generator, counts: Mapping[int, int], truth_like: DendriteTruth,
                existing: pd.DataFrame, first_day: float, first_id: int) -> pd.DataFrame:
    """New spine rows (no coordinate columns) placed among the ``existing`` ones."""
    lengths = dict(zip(truth_like.dendrites["dendrite_id"].tolist(), truth_like.dendrites["length_um"].tolist()))
    ex_d = existing["dendrite_id"].to_numpy() if len(existing) else np.zeros(0, int)
    ex_side = existing["side"].to_numpy() if len(existing) else np.zeros(0, int)
    ex_s = existing["s_um"].to_numpy(float) if len(existing) else np.zeros(0)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("dendrite_id", "s_um", "side", "type", "head_diameter_um",
                                                          "neck_length_um", "neck_diameter_um", "azimuth_deg",
                                                          "elevation_deg")}
    for d, n in counts.items():
        n = int(n)
        if n <= 0:
            continue
        occupied = {side: ex_s[(ex_d == d) & (ex_side == side)].tolist() for side in (1, -1)}
        s, side = _place(rng, n, float(lengths[d]), occupied, truth_like.min_spacing_um)
        types = _draw_types(rng, n, truth_like.type_fractions)
        morph = _draw_morphology(rng, types)
        cols["dendrite_id"].append(np.full(n, d, np.int64))
        cols["s_um"].append(s)
        cols["side"].append(side.astype(np.int64))
        cols["type"].append(types)
        for k, v in morph.items():
            cols[k].append(v)
        cols["azimuth_deg"].append(rng.normal(0.0, 15.0, n))
        cols["elevation_deg"].append(rng.uniform(-truth_like.max_elevation_deg, truth_like.max_elevation_deg, n))
    n_new = sum(len(v) for v in cols["s_um"])
    data: dict[str, Any] = {"spine_id": np.arange(first_id, first_id + n_new, dtype=np.int64)}
    for k, parts in cols.items():
        dtype = object if k == "type" else (np.int64 if k in ("dendrite_id", "side") else float)
        data[k] = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
    data["first_day"] = np.full(n_new, float(first_day))
    return pd.DataFrame(data)


def _centreline(rng: np.random.Generator, field_um: tuple[float, float], depth_um: float, theta: float,
                offset_um: float, margin_um: float) -> np.ndarray:
    h, w = field_um
    centre = np.array([h / 2, w / 2])
    along = np.array([math.sin(theta), math.cos(theta)])
    perp = np.array([math.cos(theta), -math.sin(theta)])
    half = 0.5 * math.hypot(h, w) + margin_um
    t = np.arange(-half, half + 0.05, 0.05)
    wiggle = np.zeros_like(t)
    for _ in range(3):
        wiggle += rng.uniform(0.3, 1.2) * np.sin(2 * np.pi * t / rng.uniform(15.0, 60.0) + rng.uniform(0, 2 * np.pi))
    yx = centre + offset_um * perp + t[:, None] * along + wiggle[:, None] * perp
    z0 = depth_um / 2 + rng.uniform(-0.15, 0.15) * depth_um
    z = np.clip(z0 + rng.uniform(-0.02, 0.02) * t, 1.5, max(1.5, depth_um - 1.5))
    inside = ((yx[:, 0] >= -margin_um) & (yx[:, 0] <= h + margin_um)
              & (yx[:, 1] >= -margin_um) & (yx[:, 1] <= w + margin_um))
    idx = np.flatnonzero(inside)
    if len(idx) < 2:
        return np.empty((0, 3))
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    run = max(runs, key=len)
    return _resample(np.column_stack([yx[run], z[run]]), _SHAFT_STEP_UM)


def simulate_dendrite_truth(
    rng_or_seed: np.random.Generator | int | np.random.SeedSequence | None,
    *,
    field_um: tuple[float, float] = (61.44, 61.44),
    depth_um: float = 10.0,
    n_dendrites: int = 3,
    spine_density_per_um: float = 1.0,
    type_fractions: Mapping[str, float] | None = None,
    dendrite_radius_um: tuple[float, float] = (0.4, 0.6),
    margin_um: float = 4.0,
    min_separation_um: float = 8.0,
    min_spacing_um: float = 0.5,
    max_elevation_deg: float = 30.0,
    day: float = 0.0,
) -> DendriteTruth:
    """Draw dendrites crossing the imaged field and the spines along them.

    Dendrites are smooth curves (a straight line plus three sinusoidal wiggles of 0.3-1.2 um
    amplitude and 15-60 um wavelength) running roughly parallel (orientations within ~8
    degrees of a common random direction), spread across the field at least
    ``min_separation_um`` apart, extending ``margin_um`` beyond the field so that session
    drift does not reveal their ends; each lies near mid-depth with a slight z tilt.  The
    number of spines on a dendrite is Poisson(``spine_density_per_um`` x length), their bases
    uniform along it on either side (hard-core ``min_spacing_um`` between neighbours on the
    same side), their types drawn with ``type_fractions`` and their morphology from
    :data:`SPINE_MORPHOLOGY`.

    Parameters
    ----------
    rng_or_seed : Generator or int
        Source of every random draw.
    field_um : (float, float)
        Height and width of the imaged field (um).
    depth_um : float
        Depth of the imaged volume (um).
    n_dendrites : int
        Number of dendrite segments.
    spine_density_per_um : float
        Expected spines per um of dendrite (all spines, whatever their orientation).  The
        default 1.0 is the low end of complete counts on mouse cortical pyramidal dendrites
        (~1-2 per um, Ballesteros-Yanez et al. 2006); in vivo two-photon counts of lateral
        spines are about 0.2-0.6 per um (Holtmaat et al. 2005, 2009).
    type_fractions : mapping, optional
        Fractions of ``thin``, ``stubby``, ``mushroom``, ``filopodia`` (normalised);
        default :data:`DEFAULT_TYPE_FRACTIONS`.
    dendrite_radius_um : (float, float)
        Range of the shaft radius, drawn uniformly per dendrite.
    margin_um : float
        How far the centrelines extend beyond the field (um).
    min_separation_um : float
        Smallest distance between two dendrites' centrelines (um).
    min_spacing_um : float
        Smallest distance along the dendrite between spine bases on the same side (um).
    max_elevation_deg : float
        Spines point up to this angle out of the image plane (uniform).
    day : float
        Day of this session (stored as ``first_day`` of the spines).

    Returns
    -------
    DendriteTruth

    Examples
    --------
    >>> truth = simulate_dendrite_truth(0, field_um=(15.0, 15.0), n_dendrites=1)
    >>> sorted(truth.spines["type"].unique())[:2]
    ['filopodia', 'mushroom']
    """
    rng = _as_rng(rng_or_seed)
    fractions = dict(DEFAULT_TYPE_FRACTIONS if type_fractions is None else type_fractions)
    bad = set(fractions) - set(SPINE_TYPES)
    if bad or any(v < 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"type_fractions must be non-negative fractions of {SPINE_TYPES}, got {fractions}")
    if n_dendrites < 1 or spine_density_per_um < 0:
        raise ValueError("n_dendrites must be >= 1 and spine_density_per_um >= 0")
    h, w = field_um
    theta0 = rng.uniform(0.0, np.pi)
    extent = 0.8 * (h * abs(math.cos(theta0)) + w * abs(math.sin(theta0)))
    for attempt in range(200):
        lines = []
        for i in range(n_dendrites):
            theta = theta0 + rng.normal(0.0, np.radians(8.0))
            offset = ((i + 0.5) / n_dendrites - 0.5 + rng.uniform(-0.15, 0.15) / n_dendrites) * extent
            lines.append(_centreline(rng, field_um, depth_um, theta, offset, margin_um))
        if any(len(cl) < 20 for cl in lines):
            continue
        if all(cKDTree(lines[i][:, :2]).query(lines[j][:, :2])[0].min() >= min_separation_um
               for i in range(n_dendrites) for j in range(i + 1, n_dendrites)):
            break
    else:
        raise ValueError(f"could not lay out {n_dendrites} dendrites {min_separation_um} um apart in a "
                         f"{h} x {w} um field; use fewer dendrites, a larger field or a smaller separation")
    log.debug("dendrite layout accepted after %d attempt(s)", attempt + 1)
    centrelines = {i: cl for i, cl in enumerate(lines)}
    dendrites = pd.DataFrame({
        "dendrite_id": np.arange(n_dendrites),
        "radius_um": rng.uniform(*dendrite_radius_um, n_dendrites),
        "length_um": [float(_arc(cl)[-1]) for cl in lines],
    })
    truth = DendriteTruth(field_um=(float(h), float(w)), depth_um=float(depth_um), centrelines=centrelines,
                          dendrites=dendrites, spines=pd.DataFrame(), day=float(day),
                          baseline_density_per_um=float(spine_density_per_um), type_fractions=fractions,
                          min_spacing_um=float(min_spacing_um), max_elevation_deg=float(max_elevation_deg),
                          next_spine_id=0)
    counts = {int(d): int(rng.poisson(spine_density_per_um * L))
              for d, L in zip(dendrites["dendrite_id"], dendrites["length_um"])}
    empty = pd.DataFrame({"dendrite_id": pd.Series(dtype=int), "side": pd.Series(dtype=int),
                          "s_um": pd.Series(dtype=float)})
    spines = _new_spines(rng, counts, truth, empty, float(day), 0)
    return with_spines(truth, spines)


# ----------------------------------------------------------------------------- turnover
def evolve_spines(
    truth: DendriteTruth,
    rng: np.random.Generator | int | None,
    *,
    days: float,
    gain_rate_per_day: float = DEFAULT_GAIN_RATE_PER_DAY,
    loss_rate_per_day: float = DEFAULT_LOSS_RATE_PER_DAY,
    target_density_ratio: float | None = None,
    loss_fraction_extra: float = 0.0,
) -> DendriteTruth:
    """The truth of the next session, ``days`` later: spines lost, kept and gained.

    Baseline turnover is a constant hazard: each spine survives the interval with
    probability ``exp(-loss_rate_per_day * days)``; new spines appear at
    ``gain_rate_per_day x baseline count`` per day and are themselves lost at the same
    hazard, so the number of new spines still present at the next session is
    Poisson(``(gain / loss) x (1 - exp(-loss x days)) x baseline density x length``).
    With equal rates (the default, 0.02 per day, see the module docstring) the expected
    density stays at baseline.

    The drug is given as ``target_density_ratio`` (expected density at the new session
    relative to ``truth.baseline_density_per_um``, e.g. 0.87 after 5 mg/kg x 7 d and 1.0
    after recovery).  If baseline turnover alone would give more spines than the target,
    every spine present after turnover (old or new) is additionally removed with the same
    probability; if fewer, extra new spines (Poisson) are added.  Either way the expected
    count equals ``target_density_ratio x baseline density x length`` exactly, given the
    current spines.  Alternatively ``loss_fraction_extra`` removes that fraction of the
    spines present after turnover (expected).

    Parameters
    ----------
    truth : DendriteTruth
        The current session.
    rng : Generator or int
        Source of every random draw.
    days : float
        Interval to the next session (days, >= 0).
    gain_rate_per_day : float
        New spines per day as a fraction of the baseline count (before their own loss).
    loss_rate_per_day : float
        Hazard of losing a spine, per spine per day.
    target_density_ratio : float, optional
        Expected density at the next session relative to baseline.
    loss_fraction_extra : float
        Extra independent loss after turnover (ignored when ``target_density_ratio`` is
        given; giving both is an error).

    Returns
    -------
    DendriteTruth
        Same dendrites; persistent spines keep ``spine_id`` and morphology, new spines
        have new ids and ``first_day`` = the new day.

    Examples
    --------
    >>> t0 = simulate_dendrite_truth(1, field_um=(15.0, 15.0), n_dendrites=1)
    >>> t1 = evolve_spines(t0, 2, days=7, target_density_ratio=0.87)
    >>> t1.day
    7.0
    """
    rng = _as_rng(rng)
    if days < 0 or gain_rate_per_day < 0 or loss_rate_per_day < 0:
        raise ValueError("days, gain_rate_per_day and loss_rate_per_day must be >= 0")
    if target_density_ratio is not None and loss_fraction_extra:
        raise ValueError("give either target_density_ratio or loss_fraction_extra, not both")
    if target_density_ratio is not None and target_density_ratio < 0:
        raise ValueError(f"target_density_ratio must be >= 0, got {target_density_ratio}")
    if not 0.0 <= loss_fraction_extra <= 1.0:
        raise ValueError(f"loss_fraction_extra must be in [0, 1], got {loss_fraction_extra}")
    sp = truth.spines
    lengths = truth.dendrites.set_index("dendrite_id")["length_um"]
    total = float(lengths.sum())
    rho0 = truth.baseline_density_per_um
    p_survive = math.exp(-loss_rate_per_day * days)
    if loss_rate_per_day > 0:
        new_per_um = gain_rate_per_day / loss_rate_per_day * (1.0 - p_survive) * rho0
    else:
        new_per_um = gain_rate_per_day * days * rho0
    expected = len(sp) * p_survive + new_per_um * total
    keep_extra, extra_per_um = 1.0, 0.0
    if target_density_ratio is not None:
        target = target_density_ratio * rho0 * total
        if expected > 0 and target < expected:
            keep_extra = target / expected
        else:
            extra_per_um = (target - expected) / total
    elif loss_fraction_extra:
        keep_extra = 1.0 - loss_fraction_extra
    keep = rng.random(len(sp)) < p_survive * keep_extra
    kept = sp[keep]
    counts = {int(d): int(rng.binomial(rng.poisson(new_per_um * lengths[d]), keep_extra)
                          + rng.poisson(extra_per_um * lengths[d])) for d in lengths.index}
    new_day = truth.day + float(days)
    new = _new_spines(rng, counts, truth, kept, new_day, truth.next_spine_id)
    spines = pd.concat([kept[list(new.columns)], new], ignore_index=True) if len(new) else kept[list(new.columns)]
    out = dataclasses.replace(truth, day=new_day, next_spine_id=truth.next_spine_id + len(new))
    log.debug("day %.1f -> %.1f: %d kept of %d, %d new", truth.day, new_day, len(kept), len(sp), len(new))
    return with_spines(out, spines)


# ----------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class SpineSession:
    """One rendered session; unpacks as ``(image, spines)``.

    Attributes
    ----------
    image : ndarray
        (y, x) MIP or (z, y, x) stack; float32 photo-electrons, or uint16 (electrons + 100
        offset, rounded, clipped).
    spines : DataFrame
        Per spine: ``spine_id``, ``dendrite_id``, ``type``, head centre (tip for filopodia)
        ``y``, ``x`` (and ``z`` for stacks) in pixels of ``image``, ``base_y``, ``base_x``
        (``base_z``), ``head_diameter_um``, ``neck_length_um``, ``peak_photons`` (noise-free
        signal above background at the head), ``in_field`` (head inside the image).
    dendrites : DataFrame
        Centreline points in pixels: ``dendrite_id``, ``arc_um`` (arc length along the
        tissue centreline), ``y``, ``x`` (``z``), ``in_field``.
    expected : ndarray
        The noise-free expected image (float32 photo-electrons, background included; for a
        MIP the maximum over planes of the expected stack).
    info : dict
        Imaging and motion parameters of the session, the per-plane ``snr``, ``day``,
        ``length_in_field_um`` (dendrite length inside the image, tissue um) and
        ``spines_in_field``: their ratio is the true density of the image.
    truth : DendriteTruth
        The session's truth in tissue um.
    """

    image: np.ndarray
    spines: pd.DataFrame
    dendrites: pd.DataFrame
    expected: np.ndarray
    info: dict[str, Any]
    truth: DendriteTruth

    def __iter__(self) -> Iterator[Any]:
        return iter((self.image, self.spines))


def _beads(truth: DendriteTruth) -> tuple[np.ndarray, np.ndarray]:
    """Point beads (y, x, z um) and GFP volumes (um^3) of shafts, necks and heads."""
    pos, wt = [], []
    ring = np.radians(np.arange(6) * 60.0)
    for d, r in zip(truth.dendrites["dendrite_id"], truth.dendrites["radius_um"]):
        cl = truth.centrelines[int(d)]
        s = _arc(cl)
        t = np.gradient(cl, s, axis=0)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        u = np.stack([-t[:, 1], t[:, 0], np.zeros(len(t))], axis=1)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        v = np.cross(t, u)
        a = r / math.sqrt(2.0)
        ds = np.gradient(s)
        for phi in ring:
            pos.append(cl + a * (math.cos(phi) * u + math.sin(phi) * v))
            wt.append(np.pi * r ** 2 * ds / 6.0)
    sp = truth.spines
    if len(sp):
        base, direction, _ = _geometry(truth.centrelines, truth.dendrites, sp)
        neck = sp["neck_length_um"].to_numpy(float)
        nb = np.maximum(1, np.ceil(neck / _SHAFT_STEP_UM).astype(int))
        idx = np.repeat(np.arange(len(sp)), nb)
        k = np.arange(len(idx)) - np.repeat(np.cumsum(nb) - nb, nb)
        frac = (k + 0.5) / nb[idx]
        pos.append(base[idx] + (frac * neck[idx])[:, None] * direction[idx])
        rn = sp["neck_diameter_um"].to_numpy(float) / 2
        wt.append((np.pi * rn ** 2 * neck / nb)[idx])
        rh = sp["head_diameter_um"].to_numpy(float) / 2
        has = rh > 0
        centre = base[has] + (neck[has] + rh[has])[:, None] * direction[has]
        ball = _unit_ball()
        pos.append((centre[:, None, :] + rh[has][:, None, None] * ball[None]).reshape(-1, 3))
        wt.append(np.repeat(4.0 / 3.0 * np.pi * rh[has] ** 3 / len(ball), len(ball)))
    return np.concatenate(pos), np.concatenate(wt)


@functools.lru_cache(maxsize=1)
def _unit_ball() -> np.ndarray:
    """Points filling the unit ball (cubic lattice, spacing 1/3), scaled so that their
    second moment per axis is exactly that of a uniform ball, 1/5."""
    k = np.arange(-3, 4) / 3.0
    pts = np.stack(np.meshgrid(k, k, k, indexing="ij"), axis=-1).reshape(-1, 3)
    pts = pts[np.linalg.norm(pts, axis=1) <= 1.0 + 1e-9]
    pts *= math.sqrt(0.2 / np.mean(pts[:, 0] ** 2))
    pts.setflags(write=False)
    return pts


def _blur_sigma(psf_sigma_xy_um: float, psf_sigma_z_um: float, pixel_size_um: float,
                z_step_um: float) -> tuple[float, float, float]:
    """Gaussian sigmas (voxels) of the blur that, after a trilinear splat, give the PSF.

    A trilinear splat spreads a point over two voxels per axis with variance ``f (1 - f)``
    (``f`` the fractional position), 1/6 voxel^2 on average; that much is taken off the
    blur so that the rendered PSF has the stated width on average.
    """
    def one(sig: float, step: float) -> float:
        v = (sig / step) ** 2
        return math.sqrt(max(v - 1.0 / 6.0, 0.25 * v))

    return (one(psf_sigma_z_um, z_step_um), one(psf_sigma_xy_um, pixel_size_um), one(psf_sigma_xy_um, pixel_size_um))


@functools.lru_cache(maxsize=64)
def _reference_peak(pixel_size_um: float, z_step_um: float, psf_sigma_xy_um: float, psf_sigma_z_um: float) -> float:
    """Rendered peak (GFP volume per voxel, um^3) of the reference head, at its centre.

    Rendered on a small grid exactly as :func:`render_session` renders every object (beads,
    trilinear splat, Gaussian blur) and sampled at the head centre by trilinear
    interpolation, averaged over 4 x 4 x 4 sub-voxel positions of the centre: so
    ``signal_photons`` is met on the rendering grid on average (individual heads vary by a
    few per cent with their sub-voxel position when the voxels are coarse).
    """
    r = _REFERENCE_HEAD_DIAMETER_UM / 2
    sig = _blur_sigma(psf_sigma_xy_um, psf_sigma_z_um, pixel_size_um, z_step_um)
    half = np.array([int(math.ceil(4 * s)) + 4 for s in sig])
    shape = tuple(int(v) for v in 2 * half + 1)
    steps = np.array([z_step_um, pixel_size_um, pixel_size_um])
    offsets = _unit_ball() * r / steps
    weights = np.full(len(offsets), 4.0 / 3.0 * np.pi * r ** 3 / len(offsets))
    sub = (np.arange(4) + 0.5) / 4
    peaks = []
    for shift in np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), axis=-1).reshape(-1, 3):
        centre = half + shift
        grid = _splat(shape, centre + offsets, weights).astype(np.float64)
        grid = ndimage.gaussian_filter(grid, sig, mode="constant", truncate=4.0)
        peaks.append(ndimage.map_coordinates(grid, centre[:, None], order=1)[0])
    return float(np.mean(peaks))


def _motion(rng: np.random.Generator, field_um: tuple[float, float], drift_um: Sequence[float],
            rotation_deg: float, deformation_um: float):
    """A function mapping tissue (n, 3) um to field (n, 3) um for this session."""
    h, w = field_um
    centre = np.array([h / 2, w / 2])
    drift = np.zeros(3)
    drift[: len(drift_um)] = np.asarray(drift_um, float)
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    rot = np.array([[c, -s], [s, c]])
    n_waves = 3
    lam = rng.uniform(20.0, 60.0, (2, n_waves))
    ang = rng.uniform(0.0, 2 * np.pi, (2, n_waves))
    freq = np.stack([np.sin(ang), np.cos(ang)], axis=-1) / lam[..., None]  # (2 axes, waves, yx)
    phase = rng.uniform(0.0, 2 * np.pi, (2, n_waves))
    amp = deformation_um / math.sqrt(n_waves / 2.0)

    def apply(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, float)
        yx = p[:, :2]
        out = np.empty_like(p)
        out[:, :2] = centre + (yx - centre) @ rot.T + drift[:2]
        if deformation_um:
            for axis in range(2):
                out[:, axis] += amp * np.sin(2 * np.pi * yx @ freq[axis].T + phase[axis]).sum(axis=1)
        out[:, 2] = p[:, 2] + drift[2]
        return out

    return apply


def _splat(shape: tuple[int, int, int], coords: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Trilinear splat of weighted points (z, y, x voxel coordinates) into a float32 grid."""
    i0 = np.floor(coords).astype(np.int64)
    f = coords - i0
    flat, vals = [], []
    dims = np.asarray(shape)
    for corner in np.ndindex(2, 2, 2):
        off = np.asarray(corner)
        idx = i0 + off
        wgt = weights * np.prod(np.where(off == 1, f, 1.0 - f), axis=1)
        ok = np.all((idx >= 0) & (idx < dims), axis=1)
        flat.append(np.ravel_multi_index(idx[ok].T, shape))
        vals.append(wgt[ok])
    grid = np.bincount(np.concatenate(flat), np.concatenate(vals), minlength=int(np.prod(shape)))
    return grid.reshape(shape).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], pixel_size_um: float, scale_um: float,
                  cv: float) -> np.ndarray:
    """A smooth positive random field of mean 1 and coefficient of variation ~``cv``.

    White noise on a coarse grid (cells of ``scale_um / 4``), Gaussian-smoothed with sigma
    ``scale_um``, interpolated (cubic) to the pixel centres, standardised over the image and
    mapped to ``1 + cv * f`` (clipped at 0.05, renormalised to mean 1).
    """
    cell = scale_um / 4.0
    margin = 12
    coarse = rng.standard_normal(tuple(int(math.ceil(n * pixel_size_um / cell)) + 2 * margin for n in shape))
    coarse = ndimage.gaussian_filter(coarse, 4.0, mode="wrap")
    yy = (np.arange(shape[0]) + 0.5) * pixel_size_um / cell + margin
    xx = (np.arange(shape[1]) + 0.5) * pixel_size_um / cell + margin
    # separable cubic interpolation: rows first, then columns
    rows = ndimage.map_coordinates(coarse, np.meshgrid(yy, np.arange(coarse.shape[1]), indexing="ij"), order=3)
    f = ndimage.map_coordinates(rows, np.meshgrid(np.arange(shape[0]), xx, indexing="ij"), order=3)
    f = (f - f.mean()) / (f.std() or 1.0)
    out = np.clip(1.0 + cv * f, 0.05, None)
    return out / out.mean()


def _sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    if len(coords) == 0:
        return np.zeros(0)
    return ndimage.map_coordinates(volume, coords.T, order=1, mode="nearest")


def render_session(
    truth: DendriteTruth,
    rng: np.random.Generator | int | None,
    *,
    pixel_size_um: float = 0.12,
    signal_photons: float = SNR_LEVELS["default"]["signal_photons"],
    background_photons: float = SNR_LEVELS["default"]["background_photons"],
    read_noise_e: float = SNR_LEVELS["default"]["read_noise_e"],
    background_cv: float = 0.0,
    background_scale_um: float = 5.0,
    psf_sigma_xy_um: float = 0.22,
    psf_sigma_z_um: float = 1.0,
    mode: Literal["mip", "stack"] = "mip",
    z_step_um: float = 1.0,
    drift_um: Sequence[float] = (0.0, 0.0),
    rotation_deg: float = 0.0,
    deformation_um: float = 0.0,
    plane_jitter_um: float = 0.0,
    dtype: Literal["float32", "uint16"] = "float32",
) -> SpineSession:
    """Render one two-photon session of ``truth`` with its truth in pixel coordinates.

    The tissue is moved by ``rotation_deg`` about the field centre, ``drift_um`` and a
    smooth random warp, then imaged: GFP volume blurred by a Gaussian PSF, scaled to
    photo-electrons, plus background, Poisson shot noise and Gaussian read noise, on planes
    ``0, z_step_um, ..., depth_um``.  ``mode="mip"`` returns the maximum over planes of the
    noisy stack.

    Parameters
    ----------
    truth : DendriteTruth
        The session to image (tissue um).
    rng : Generator or int
        Source of the warp and the noise.
    pixel_size_um : float
        Lateral pixel size (um); the image has ``round(field_um / pixel_size_um)`` pixels.
    signal_photons : float
        Expected photo-electrons above background at the centre of a reference spine head
        (isolated 0.6 um sphere, centre in the imaged plane); sets the brightness scale.
    background_photons : float
        Expected background photo-electrons per voxel (mean over the field).
    background_cv : float
        Coefficient of variation of a smooth random background (out-of-focus neuropil,
        uneven illumination), the same in every plane; 0 for a uniform background.
    background_scale_um : float
        Correlation length (Gaussian sigma, um) of that background variation.
    read_noise_e : float
        Gaussian read noise (electrons rms) per voxel.
    psf_sigma_xy_um, psf_sigma_z_um : float
        Gaussian sigma of the two-photon PSF, lateral and axial (um).
    mode : {"mip", "stack"}
        Maximum-intensity projection (y, x) or z-stack (z, y, x).
    z_step_um : float
        Distance between planes (um).
    drift_um : sequence of float
        (dy, dx) or (dy, dx, dz) translation of the tissue (um).
    rotation_deg : float
        In-plane rotation of the tissue about the field centre (degrees): ``(y, x) - c``
        is multiplied by ``[[cos, -sin], [sin, cos]]``, so positive angles turn +x towards
        -y (counter-clockwise as displayed with y pointing down).
    deformation_um : float
        RMS displacement per axis of the smooth warp (um); 0 for none.
    plane_jitter_um : float
        SD (um, per lateral axis) of a random shift of each plane, about the stack's mean
        position (motion within the stack: breathing and heartbeat between planes); 0 for
        none. The shifts are in ``info["plane_shifts_px"]`` (y, x per plane); the truth stays
        at the mean position. With ``mode="mip"`` the projection is of the shifted planes.
    dtype : {"float32", "uint16"}
        Output type (uint16: electrons + 100 offset, rounded and clipped).

    Returns
    -------
    SpineSession
        ``image``, ``spines`` (pixels), ``dendrites`` (pixels), ``expected``, ``info``,
        ``truth``; unpacks as ``(image, spines)``.

    Examples
    --------
    >>> truth = simulate_dendrite_truth(0, field_um=(15.36, 15.36), n_dendrites=1)
    >>> session = render_session(truth, 1, drift_um=(0.5, -0.3))
    >>> session.image.shape
    (128, 128)
    """
    rng = _as_rng(rng)
    if mode not in ("mip", "stack"):
        raise ValueError(f"mode must be 'mip' or 'stack', got {mode!r}")
    if pixel_size_um <= 0 or z_step_um <= 0 or psf_sigma_xy_um <= 0 or psf_sigma_z_um <= 0:
        raise ValueError("pixel_size_um, z_step_um and the PSF sigmas must be > 0")
    if signal_photons < 0 or background_photons < 0 or read_noise_e < 0:
        raise ValueError("signal_photons, background_photons and read_noise_e must be >= 0")
    if not (np.isfinite(plane_jitter_um) and plane_jitter_um >= 0):
        raise ValueError(f"plane_jitter_um must be >= 0 (um), got {plane_jitter_um!r}")
    move = _motion(rng, truth.field_um, drift_um, rotation_deg, deformation_um)
    ny, nx = (int(round(v / pixel_size_um)) for v in truth.field_um)
    nz = int(math.floor(truth.depth_um / z_step_um + 1e-9)) + 1
    pad_xy = int(math.ceil(4.0 * psf_sigma_xy_um / pixel_size_um)) + 1
    pad_z = int(math.ceil(4.0 * psf_sigma_z_um / z_step_um)) + 1

    def to_px(p_um: np.ndarray) -> np.ndarray:  # (n, 3) field um -> (n, 3) z, y, x voxel coordinates
        return np.column_stack([p_um[:, 2] / z_step_um, p_um[:, 0] / pixel_size_um - 0.5,
                                p_um[:, 1] / pixel_size_um - 0.5])

    pos, wt = _beads(truth)
    vox = to_px(move(pos))
    lo_z = max(0, int(math.ceil(-vox[:, 0].min())) if len(vox) else 0)
    hi_z = max(0, int(math.ceil(vox[:, 0].max() - (nz - 1))) if len(vox) else 0)
    zpad = (min(pad_z, lo_z + 1), min(pad_z, hi_z + 1))
    shape = (nz + sum(zpad), ny + 2 * pad_xy, nx + 2 * pad_xy)
    grid = _splat(shape, vox + np.array([zpad[0], pad_xy, pad_xy]), wt)
    grid = ndimage.gaussian_filter(grid, _blur_sigma(psf_sigma_xy_um, psf_sigma_z_um, pixel_size_um, z_step_um),
                                   mode="constant", truncate=4.0)
    plane_shifts = np.zeros((nz, 2))
    if plane_jitter_um > 0:
        # each plane imaged with the tissue moved (before the noise, as in the microscope)
        plane_shifts = rng.normal(0.0, plane_jitter_um / pixel_size_um, (nz, 2))
        plane_shifts -= plane_shifts.mean(axis=0)
        for k in range(nz):
            zk = zpad[0] + k
            grid[zk] = ndimage.shift(grid[zk], plane_shifts[k], order=1, mode="nearest")
    grid = grid[zpad[0]: zpad[0] + nz, pad_xy: pad_xy + ny, pad_xy: pad_xy + nx]
    scale = signal_photons / _reference_peak(float(pixel_size_um), float(z_step_um), float(psf_sigma_xy_um),
                                             float(psf_sigma_z_um))
    signal = grid * np.float32(scale)
    background: np.ndarray | np.float32 = np.float32(background_photons)
    if background_cv > 0 and background_photons > 0:
        background = (background_photons * _smooth_field(rng, (ny, nx), pixel_size_um, background_scale_um,
                                                          background_cv)).astype(np.float32)
    noisy = rng.poisson(signal + background).astype(np.float32)
    if read_noise_e:
        noisy += np.float32(read_noise_e) * rng.standard_normal(noisy.shape, dtype=np.float32)

    sp = truth.spines
    head = to_px(move(sp[["y_um", "x_um", "z_um"]].to_numpy(float))) if len(sp) else np.zeros((0, 3))
    base = to_px(move(sp[["base_y_um", "base_x_um", "base_z_um"]].to_numpy(float))) if len(sp) else np.zeros((0, 3))
    if mode == "mip":
        image, expected = noisy.max(axis=0), signal.max(axis=0) + background
        peak = _sample(signal.max(axis=0), head[:, 1:])
    else:
        image, expected = noisy, signal + background
        peak = _sample(signal, head)
    in_field = ((head[:, 1] >= -0.5) & (head[:, 1] <= ny - 0.5) & (head[:, 2] >= -0.5) & (head[:, 2] <= nx - 0.5))
    table = pd.DataFrame({
        "spine_id": sp["spine_id"].to_numpy(np.int64) if len(sp) else np.zeros(0, np.int64),
        "dendrite_id": sp["dendrite_id"].to_numpy(np.int64) if len(sp) else np.zeros(0, np.int64),
        "type": sp["type"].to_numpy(object) if len(sp) else np.zeros(0, object),
        "y": head[:, 1], "x": head[:, 2], "z": head[:, 0],
        "base_y": base[:, 1], "base_x": base[:, 2], "base_z": base[:, 0],
        "head_diameter_um": sp["head_diameter_um"].to_numpy(float) if len(sp) else np.zeros(0),
        "neck_length_um": sp["neck_length_um"].to_numpy(float) if len(sp) else np.zeros(0),
        "peak_photons": peak, "in_field": in_field,
    })
    rows = []
    length_in_field = 0.0
    for d, cl in truth.centrelines.items():
        c = to_px(move(cl))
        arc = _arc(cl)
        inside = (c[:, 1] >= -0.5) & (c[:, 1] <= ny - 0.5) & (c[:, 2] >= -0.5) & (c[:, 2] <= nx - 0.5)
        length_in_field += float(np.sum(np.diff(arc)[inside[1:] & inside[:-1]]))
        rows.append(pd.DataFrame({"dendrite_id": d, "arc_um": arc, "y": c[:, 1], "x": c[:, 2], "z": c[:, 0],
                                  "in_field": inside}))
    dend = pd.concat(rows, ignore_index=True)
    if mode == "mip":
        table = table.drop(columns=["z", "base_z"])
        dend = dend.drop(columns=["z"])
    if dtype == "uint16":
        image = np.clip(np.rint(image + 100.0), 0, 65535).astype(np.uint16)
    elif dtype != "float32":
        raise ValueError(f"dtype must be 'float32' or 'uint16', got {dtype!r}")
    info = {
        "day": truth.day, "mode": mode, "pixel_size_um": pixel_size_um, "z_step_um": z_step_um,
        "n_planes": nz, "psf_sigma_xy_um": psf_sigma_xy_um, "psf_sigma_z_um": psf_sigma_z_um,
        "signal_photons": signal_photons, "background_photons": background_photons,
        "read_noise_e": read_noise_e, "background_cv": background_cv, "background_scale_um": background_scale_um,
        "snr": signal_photons / math.sqrt(background_photons + read_noise_e ** 2)
        if background_photons + read_noise_e ** 2 > 0 else math.inf,
        "drift_um": tuple(float(v) for v in drift_um), "rotation_deg": float(rotation_deg),
        "deformation_um": float(deformation_um), "dtype": dtype, "plane_jitter_um": float(plane_jitter_um),
        "plane_shifts_px": plane_shifts.tolist(),
        "length_in_field_um": length_in_field, "spines_in_field": int(in_field.sum()),
    }
    return SpineSession(image=image, spines=table, dendrites=dend, expected=expected.astype(np.float32),
                        info=info, truth=truth)


# ----------------------------------------------------------------------------- sessions
_TRUTH_KEYS = ("field_um", "depth_um", "n_dendrites", "spine_density_per_um", "type_fractions",
               "dendrite_radius_um", "margin_um", "min_separation_um", "min_spacing_um", "max_elevation_deg")
_RENDER_KEYS = ("pixel_size_um", "psf_sigma_xy_um", "psf_sigma_z_um", "mode", "z_step_um", "dtype",
                "signal_photons", "background_photons", "read_noise_e", "background_cv", "background_scale_um",
                "plane_jitter_um")
_OTHER_KEYS = ("days", "target_density_ratio", "drift_sd_um", "drift_z_sd_um", "rotation_sd_deg", "deformation_um",
               "gain_rate_per_day", "loss_rate_per_day", "photon_scale")


def _settings(preset: str | Mapping[str, Any], snr: str | Mapping[str, float], overrides: Mapping[str, Any]
              ) -> dict[str, Any]:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    if isinstance(snr, str):
        if snr not in SNR_LEVELS:
            raise ValueError(f"unknown SNR level {snr!r}; choose one of {sorted(SNR_LEVELS)}")
        snr = SNR_LEVELS[snr]
    cfg = {"gain_rate_per_day": DEFAULT_GAIN_RATE_PER_DAY, "loss_rate_per_day": DEFAULT_LOSS_RATE_PER_DAY,
           **preset, **snr, **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(cfg) - set(_TRUTH_KEYS) - set(_RENDER_KEYS) - set(_OTHER_KEYS)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: "
                         f"{sorted(_TRUTH_KEYS + _RENDER_KEYS + _OTHER_KEYS)}")
    return cfg


def _session_rng(seed: np.random.SeedSequence, drift_sd_um: float, drift_z_sd_um: float,
                 rotation_sd_deg: float) -> tuple[np.random.Generator, np.ndarray, float]:
    """The generator of one session's rendering, after its drift (y, x, z um) and rotation
    (degrees) are drawn from it: the one place of that order of draws."""
    rng = np.random.default_rng(seed)
    drift = rng.normal(0.0, [drift_sd_um, drift_sd_um, drift_z_sd_um])
    rotation = float(rng.normal(0.0, rotation_sd_deg))
    return rng, drift, rotation


def _render_with_motion(truth: DendriteTruth, seed: np.random.SeedSequence, cfg: Mapping[str, Any]) -> SpineSession:
    rng, drift, rotation = _session_rng(seed, cfg["drift_sd_um"], cfg.get("drift_z_sd_um", 0.0), cfg["rotation_sd_deg"])
    session = render_session(truth, rng, drift_um=tuple(drift), rotation_deg=rotation,
                             deformation_um=cfg["deformation_um"], **{k: cfg[k] for k in _RENDER_KEYS if k in cfg})
    session.info["render_seed"] = {"entropy": seed.entropy, "spawn_key": [int(k) for k in seed.spawn_key]}
    return session


def render_again(session: SpineSession, truth: DendriteTruth | None = None, **overrides: Any) -> SpineSession:
    """The field of a simulated session imaged again with the same motion and background.

    Used to ask what the same image would hold with another truth: without spines (the
    shafts and background a detector has to tell heads from), with one spine only (its own
    light), or as the z-stack behind a projection (``mode="stack"``).

    Parameters
    ----------
    session : SpineSession
        A session of :func:`simulate_spine_sessions` or :func:`simulate_repeat_imaging`
        (its ``info["render_seed"]`` names the random stream it was rendered from).
    truth : DendriteTruth, optional
        What to image (default: ``session.truth``), e.g. ``with_spines(session.truth,
        session.truth.spines.iloc[:0])`` for the bare dendrites.
    **overrides
        Imaging settings of :func:`render_session` to change (``mode``, ``dtype``, the
        photon figures, ...); the rest are the session's (``session.info``).

    Returns
    -------
    SpineSession
        Same drift, rotation, warp, plane shifts and background variation as ``session``
        (the last two as long as ``plane_jitter_um`` and the pixel grid are not overridden).
        ``expected`` is exact; the noise draws are the same only while the expected image
        is (Poisson draws use a varying number of random numbers), so with the session's
        own truth and settings the image is ``session.image`` to the last bit.

    Examples
    --------
    >>> session = simulate_spine_sessions(0, preset="test")[1]
    >>> bool((render_again(session).image == session.image).all())
    True
    >>> bare = render_again(session, with_spines(session.truth, session.truth.spines.iloc[:0]))
    >>> bool((bare.expected <= session.expected + 1e-4).all()), len(bare.spines)
    (True, 0)
    """
    info = session.info
    seed = info.get("render_seed")
    if seed is None:
        raise ValueError("render_again: the session has no info['render_seed'] (only sessions of "
                         "simulate_spine_sessions and simulate_repeat_imaging can be rendered again); "
                         "call render_session with a seeded generator instead")
    unknown = sorted(set(overrides) - set(_RENDER_KEYS))
    if unknown:
        raise ValueError(f"render_again: {unknown} are not imaging settings; use one of {list(_RENDER_KEYS)}")
    # the drift and rotation are drawn first (their values are the session's, in info)
    rng, _, _ = _session_rng(np.random.SeedSequence(seed["entropy"], spawn_key=tuple(seed["spawn_key"])),
                             1.0, 1.0, 1.0)
    settings = {**{k: info[k] for k in _RENDER_KEYS if k in info}, **overrides}
    out = render_session(session.truth if truth is None else truth, rng, drift_um=tuple(info["drift_um"]),
                         rotation_deg=float(info["rotation_deg"]), deformation_um=float(info["deformation_um"]),
                         **settings)
    out.info.update({k: v for k, v in info.items() if k not in out.info})
    out.info["render_seed"] = seed
    return out


def simulate_spine_sessions(
    seed: int,
    *,
    preset: str | Mapping[str, Any] = "default",
    snr: str | Mapping[str, float] = "default",
    days: Sequence[float] | None = None,
    target_density_ratio: Sequence[float] | None = None,
    **overrides: Any,
) -> list[SpineSession]:
    """Image the same dendrites at several sessions with turnover and the drug effect.

    The truth of the first session is drawn with :func:`simulate_dendrite_truth`; each next
    one with :func:`evolve_spines` over the interval between ``days``, aiming at
    ``target_density_ratio`` of baseline (if the first ratio is not 1, the first session is
    thinned or filled to it).  Each session is rendered with its own drift, rotation and
    warp (see :data:`PRESETS`).  Deterministic for a seed: session ``i`` uses its own
    child streams of ``numpy.random.SeedSequence(seed)``, so adding sessions at the end
    does not change the earlier ones.

    Parameters
    ----------
    seed : int
        Seed of everything.
    preset : str or mapping
        ``"test"`` (one dendrite, 128 x 128 MIP, days 0 and 7) or ``"default"`` (three
        dendrites, 512 x 512 MIP, days -7, 0, 7, 62 at ratios 1, 1, 0.87, 1); or a mapping
        with the same keys.
    snr : str or mapping
        ``"high"``, ``"default"``, ``"low"`` (:data:`SNR_LEVELS`) or a mapping with
        ``signal_photons``, ``background_photons``, ``read_noise_e``.
    days : sequence of float, optional
        Imaging days (increasing); overrides the preset.
    target_density_ratio : sequence of float, optional
        Expected density relative to baseline at each session, same length as ``days``.
    photon_scale : sequence of float, optional
        Imaging efficiency of each session relative to the SNR level (same length as
        ``days``; default 1 for every session): the session's signal and background
        photo-electrons are both multiplied by it (laser power at the focus, a clearer or
        cloudier cranial window, collection efficiency scale all fluorescence alike; the read
        noise stays).  The per-plane SNR of the session is in ``session.info["snr"]``, its
        factor in ``session.info["photon_scale"]``.
    **overrides
        Any key of the preset, of the SNR level, or ``gain_rate_per_day`` /
        ``loss_rate_per_day`` (e.g. ``mode="stack"``, ``pixel_size_um=0.1``).

    Returns
    -------
    list of SpineSession
        One per day; ``session.truth.spines["spine_id"]`` identifies spines across sessions.

    Examples
    --------
    >>> sessions = simulate_spine_sessions(0, preset="test")
    >>> [s.image.shape for s in sessions]
    [(128, 128), (128, 128)]
    """
    cfg = _settings(preset, snr, {"days": days, "target_density_ratio": target_density_ratio, **overrides})
    day_list = [float(d) for d in cfg["days"]]
    ratios = [float(r) for r in cfg["target_density_ratio"]]
    if len(day_list) != len(ratios) or not day_list:
        raise ValueError(f"days ({len(day_list)}) and target_density_ratio ({len(ratios)}) must have the same, "
                         "non-zero length")
    scales = cfg.get("photon_scale")
    scales = [1.0] * len(day_list) if scales is None else [float(v) for v in np.atleast_1d(scales)]
    if len(scales) != len(day_list) or not all(np.isfinite(v) and v > 0 for v in scales):
        raise ValueError(f"photon_scale must give one positive factor per session ({len(day_list)}), got {scales}")
    if any(b < a for a, b in zip(day_list, day_list[1:])):
        raise ValueError(f"days must be increasing, got {day_list}")
    root = np.random.SeedSequence(seed)
    truth_ss, evolve_root, render_root = root.spawn(3)
    evolve_ss, render_ss = evolve_root.spawn(len(day_list)), render_root.spawn(len(day_list))
    truth = simulate_dendrite_truth(np.random.default_rng(truth_ss), day=day_list[0],
                                    **{k: cfg[k] for k in _TRUTH_KEYS if k in cfg})
    sessions = []
    for i, (day, ratio) in enumerate(zip(day_list, ratios)):
        interval = 0.0 if i == 0 else day - day_list[i - 1]
        if i > 0 or ratio != 1.0:
            truth = evolve_spines(truth, np.random.default_rng(evolve_ss[i]), days=interval,
                                  gain_rate_per_day=cfg["gain_rate_per_day"],
                                  loss_rate_per_day=cfg["loss_rate_per_day"], target_density_ratio=ratio)
        cfg_i = cfg if scales[i] == 1.0 else {**cfg, "signal_photons": cfg["signal_photons"] * scales[i],
                                               "background_photons": cfg["background_photons"] * scales[i]}
        session = _render_with_motion(truth, render_ss[i], cfg_i)
        session.info.update({"session": i, "target_density_ratio": ratio, "photon_scale": scales[i]})
        sessions.append(session)
        log.info("session %d (day %g): %d spines, density %.3f per um", i, day, len(truth.spines),
                 truth.density_per_um)
    return sessions


def simulate_repeat_imaging(
    seed: int,
    *,
    preset: str | Mapping[str, Any] = "default",
    snr: str | Mapping[str, float] = "default",
    interval_min: float = 10.0,
    drift_sd_um: float = 0.3,
    drift_z_sd_um: float = 0.2,
    rotation_sd_deg: float = 0.3,
    deformation_um: float = 0.05,
    **overrides: Any,
) -> tuple[SpineSession, SpineSession]:
    """Two sessions of the same dendrites ``interval_min`` minutes apart: no turnover.

    Only the motion (smaller than between days: re-positioning within one imaging
    session) and the noise differ, so any gained or lost spine a tracker reports on this
    pair is apparent turnover.

    Parameters
    ----------
    seed : int
        Seed of everything.
    preset, snr, **overrides
        As in :func:`simulate_spine_sessions` (``days`` and ``target_density_ratio`` are
        not used).
    interval_min : float
        Minutes between the two images (recorded in ``info``; spines do not change).
    drift_sd_um, drift_z_sd_um, rotation_sd_deg, deformation_um : float
        Motion of each image relative to the tissue (lateral and axial drift sd in um,
        rotation sd in degrees, rms warp in um).

    Returns
    -------
    (SpineSession, SpineSession)
        Identical truth (same ``spine_id`` set), different motion and noise.
    """
    cfg = _settings(preset, snr, {"drift_sd_um": drift_sd_um, "drift_z_sd_um": drift_z_sd_um,
                                  "rotation_sd_deg": rotation_sd_deg,
                                  "deformation_um": deformation_um, **overrides})
    root = np.random.SeedSequence(seed)
    truth_ss, _, render_root = root.spawn(3)
    day = float(cfg["days"][0])
    truth = simulate_dendrite_truth(np.random.default_rng(truth_ss), day=day,
                                    **{k: cfg[k] for k in _TRUTH_KEYS if k in cfg})
    out = []
    for i, ss in enumerate(render_root.spawn(2)):
        session = _render_with_motion(truth, ss, cfg)
        session.info.update({"session": i, "interval_min": float(interval_min) * i, "repeat": True})
        out.append(session)
    return out[0], out[1]
