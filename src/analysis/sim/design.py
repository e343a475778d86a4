"""Study designs: the simulated presets and summaries of any sample sheet's design.

A design is a table with one row per image: the sample-sheet columns of the contract
(DESIGN.md) plus the simulation's hidden variables (activation, true densities, SNR level),
which :mod:`analysis.sim.simulate` renders and writes as ground truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.io.vocabulary import GROUP_COLUMNS, group_label  # noqa: F401  (re-exported)
from analysis.sim.truth import TSPO_KO, VEHICLE, WILD_TYPE, TruthModel, activation, readout_multipliers

__all__ = ["Group", "Preset", "PRESETS", "build_design", "group_label", "design_summary", "SPINE_CHANNELS"]

log = logging.getLogger(__name__)

SYNAPSE_CHANNELS = ("PSD95",)
TERMINAL_CHANNELS = ("PSD95", "Iba1", "CD68")
SPINE_CHANNELS = ("GFP",)


@dataclass(frozen=True)
class Group:
    """One treatment group: genotype x compound x dose x dosing duration."""

    genotype: str
    compound: str
    dose_mg_kg: float
    treatment_days: int


def _groups_default() -> tuple[Group, ...]:
    wt, ko, dzp = WILD_TYPE, TSPO_KO, "diazepam"
    return (
        # vehicle controls, one per dosing duration so sessions line up
        Group(wt, VEHICLE, 0.0, 7),
        Group(wt, VEHICLE, 0.0, 28),
        Group(wt, VEHICLE, 0.0, 56),
        # dose response after 7 days (0.5-5 mg/kg/day; 5 = the sedative arm)
        Group(wt, dzp, 0.5, 7),
        Group(wt, dzp, 1.0, 7),
        Group(wt, dzp, 2.0, 7),
        Group(wt, dzp, 5.0, 7),
        # duration arms (1 mg/kg for 56 days = the anxiolytic arm)
        Group(wt, dzp, 1.0, 28),
        Group(wt, dzp, 1.0, 56),
        Group(wt, dzp, 5.0, 28),
        Group(wt, dzp, 5.0, 56),
        # mechanism: TSPO knockout (no effect expected) and the TSPO-only ligand XBD173
        Group(ko, VEHICLE, 0.0, 7),
        Group(ko, dzp, 5.0, 7),
        Group(wt, "XBD173", 10.0, 7),
    )


def _groups_small() -> tuple[Group, ...]:
    wt, dzp = WILD_TYPE, "diazepam"
    return (
        Group(wt, VEHICLE, 0.0, 7),
        Group(wt, dzp, 1.0, 7),
        Group(wt, dzp, 5.0, 7),
        Group(TSPO_KO, dzp, 5.0, 7),
        Group(wt, "XBD173", 10.0, 7),
    )


@dataclass(frozen=True)
class Preset:
    """Size and imaging settings of a simulated study.

    Attributes
    ----------
    groups : tuple of Group
        Treatment groups.
    animals_per_group : int
        Animals per group, alternately female/male and alternately sacrificed at the end of
        dosing (cohort ``end_of_dosing``) or after withdrawal (cohort ``withdrawal``).
    synapse_fields, terminal_fields : int
        Fields per animal and imaging session (synapse) or at sacrifice (terminal).  Four
        synapse fields per session: with two, the headline contrast (diazepam 5 mg/kg x 7 d,
        -13 %) had power ~0.5 once the detector's error is included; with four and the measured
        SNR as covariate ~0.9 (``benchmarks/calibrate_e2e.py``, RESULTS.md).
    baseline_day : int
        Day of the baseline session (negative: before the first dose).
    dosing_days : tuple of int
        Sessions during dosing (only those before the last dose are used).
    withdrawal_days : tuple of int
        Sessions after the last dose, in days after it (cohort ``withdrawal`` only).
    synapse_shape, synapse_pixel_size_um : field of the longitudinal PSD95 images
        256 x 256 at 0.1 um (25.6 um square): a confocal 63x/1.4 oil field at Nyquist for
        puncta of ~0.3 um.
    terminal_shape, terminal_pixel_size_um : field of the terminal 3-channel images
        640 x 640 at 0.2 um (128 um square): a 40x/1.3 oil max projection large enough for
        whole microglia (territory ~50 um) while still resolving puncta.
    snr_mix : dict
        Probability of each SNR level (see :data:`analysis.sim.phantoms.SNR_LEVELS`).
    null : bool
        No drug effect at all (the truth model without drug effect).
    spine_animals_per_group : int
        Animals of the two-photon spine arm per group of ``spine_groups`` (0: no spine arm).
        They are separate animals (Thy1-GFP mice imaged in vivo through a cranial window),
        each with ``spine_fields`` imaged positions whose same dendrites are imaged at every
        day of ``spine_days``.
    spine_groups : tuple of Group
        Groups of the spine arm.
    spine_days : tuple of int
        Imaging days of the spine arm (negative: before the first dose).
    spine_preset, spine_fields, spine_snr_mix
        Field preset of :func:`analysis.sim.spines.simulate_spine_sessions` (``"default"``:
        512 x 512 maximum projections at 0.12 um), positions per animal and the mix of its
        SNR levels (:data:`analysis.sim.spines.SNR_LEVELS`).
    spine_session_photon_sd : float
        Imaging quality that varies between sessions of the same position: each spine image's
        signal and background photons are scaled by ``exp(N(0, sd))`` (column ``photon_scale``;
        laser power at the focus, window clarity).  0 (default): every session of a position
        is imaged alike.
    """

    name: str
    groups: tuple[Group, ...]
    animals_per_group: int = 8
    synapse_fields: int = 4
    terminal_fields: int = 2
    baseline_day: int = -3
    dosing_days: tuple[int, ...] = (14, 28)
    withdrawal_days: tuple[int, ...] = (7, 21, 35, 56)
    synapse_shape: tuple[int, int] = (256, 256)
    synapse_pixel_size_um: float = 0.1
    terminal_shape: tuple[int, int] = (640, 640)
    terminal_pixel_size_um: float = 0.2
    snr_mix: dict[str, float] = field(
        default_factory=lambda: {"high": 0.2, "default": 0.5, "low": 0.2, "hard": 0.1}
    )
    null: bool = False
    spine_animals_per_group: int = 0
    spine_groups: tuple[Group, ...] = ()
    spine_days: tuple[int, ...] = (-3, 7, 63)
    spine_preset: str = "default"
    spine_fields: int = 1
    spine_snr_mix: dict[str, float] = field(default_factory=lambda: {"high": 0.3, "default": 0.5, "low": 0.2})
    spine_session_photon_sd: float = 0.0


def _spine_groups() -> tuple[Group, ...]:
    """The spine arm: the sedative arm against its vehicle, with the TSPO knockout (Shi et al. 2022)."""
    return (Group(WILD_TYPE, VEHICLE, 0.0, 7), Group(WILD_TYPE, "diazepam", 5.0, 7),
            Group(TSPO_KO, VEHICLE, 0.0, 7), Group(TSPO_KO, "diazepam", 5.0, 7))


#: The spine arm of the full designs: 6 animals per group, 2 positions each, imaged 3 days
#: before the first dose, at the end of 7 days of dosing and 56 days after the last dose.
_SPINE_ARM = {"spine_animals_per_group": 6, "spine_groups": _spine_groups(), "spine_fields": 2}


PRESETS: dict[str, Preset] = {
    "small": Preset(
        "small",
        _groups_small(),
        animals_per_group=2,
        synapse_fields=1,
        terminal_fields=1,
        withdrawal_days=(21, 56),
        snr_mix={"high": 0.25, "default": 0.25, "low": 0.25, "hard": 0.25},
    ),
    "default": Preset("default", _groups_default(), **_SPINE_ARM),
    "null": Preset("null", _groups_default(), null=True, **_SPINE_ARM),
    "large": Preset("large", _groups_default(), animals_per_group=16),
    # the spine arm alone, small: for tests of the spine readout
    "spines": Preset("spines", (), animals_per_group=0, spine_animals_per_group=2,
                     spine_groups=_spine_groups()[:2], spine_days=(-3, 7), spine_preset="test",
                     spine_snr_mix={"high": 1.0}),
}


def _sessions(preset: Preset, g: Group, cohort: str) -> list[tuple[str, int]]:
    out = [("baseline", preset.baseline_day)]
    out += [("dosing", d) for d in preset.dosing_days if d < g.treatment_days]
    out.append(("end_of_dosing", g.treatment_days))
    if cohort == "withdrawal":
        out += [("withdrawal", g.treatment_days + d) for d in preset.withdrawal_days]
    return out


def build_design(preset: Preset, model: TruthModel, seed: int = 0) -> pd.DataFrame:
    """One row per image of a simulated study, with the true values behind each image.

    Parameters
    ----------
    preset : Preset
        Study size and imaging settings.
    model : TruthModel
        Calibrated effect model.
    seed : int
        Seed of the between-animal, between-field and SNR draws.

    Returns
    -------
    DataFrame
        Sample-sheet columns (``image_id`` ... ``lysosome_channel``, ``sex``, ``region``,
        ``cohort``, ``session``, ``field``) followed by truth columns: ``readout``
        (``synapse``/``terminal``), ``snr_level``, ``activation``, ``true_synapse_loss``,
        ``true_density_per_100um2`` and, for terminal images, the microglia parameters.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    levels = list(preset.snr_mix)
    probs = np.array([preset.snr_mix[k] for k in levels], dtype=float)
    probs /= probs.sum()
    rows: list[dict] = []
    n_animal = 0
    for g in preset.groups:
        for i in range(preset.animals_per_group):
            n_animal += 1
            animal = f"M{n_animal:03d}"
            sex = "F" if i % 2 == 0 else "M"
            cohort = "end_of_dosing" if (i // 2) % 2 == 0 else "withdrawal"
            re_syn = rng.normal(0.0, model.sd_animal_log_synapse)
            re_mg = rng.normal(0.0, model.sd_animal_log_microglia)
            re_morph = rng.normal(0.0, model.sd_animal_log_morphology)
            re_eng = rng.normal(0.0, model.sd_animal_log_engulfment)
            sheet = {
                "animal_id": animal,
                "genotype": g.genotype,
                "compound": g.compound,
                "dose_mg_kg": float(g.dose_mg_kg),
                "treatment_days": int(g.treatment_days),
            }
            sessions = _sessions(preset, g, cohort)
            sacrifice_day = sessions[-1][1]
            kinds = [("synapse", s, d, preset.synapse_fields) for s, d in sessions]
            kinds.append(("terminal", "terminal", sacrifice_day, preset.terminal_fields))
            for readout, session, day, n_fields in kinds:
                a = float(
                    activation(
                        model,
                        genotype=g.genotype,
                        compound=g.compound,
                        dose_mg_kg=g.dose_mg_kg,
                        treatment_days=g.treatment_days,
                        day=day,
                    )
                )
                mult = readout_multipliers(model, a)
                for f in range(1, n_fields + 1):
                    tag = "syn" if readout == "synapse" else "term"
                    image_id = f"{animal}_{tag}_day{day:+d}_f{f}"
                    re_field = rng.normal(0.0, model.sd_field_log_synapse)
                    terminal = readout == "terminal"
                    row = {
                        "image_id": image_id,
                        "path": f"images/{image_id}.ome.tif",
                        **sheet,
                        "day": int(day),
                        "pixel_size_um": (
                            preset.terminal_pixel_size_um if terminal else preset.synapse_pixel_size_um
                        ),
                        "synapse_channel": 0,
                        "microglia_channel": 1 if terminal else None,
                        "lysosome_channel": 2 if terminal else None,
                        "sex": sex,
                        "region": "S1 cortex L2/3",
                        "cohort": cohort,
                        "session": session,
                        "field": f,
                        # --- truth (not written to samples.csv) ---
                        "readout": readout,
                        "snr_level": levels[int(rng.choice(len(levels), p=probs))],
                        "activation": a,
                        "true_synapse_loss": model.max_synapse_loss * a,
                        "true_density_per_100um2": model.baseline_synapse_density_per_100um2
                        * np.exp(re_syn + re_field)
                        * mult["synapse_density"],
                    }
                    if terminal:
                        row.update(
                            {
                                "true_microglia_per_mm2": model.baseline_microglia_per_mm2
                                * np.exp(re_mg)
                                * mult["microglia_density"],
                                "process_length_scale": np.exp(re_morph) * mult["process_length"],
                                "branching_scale": mult["branching"],
                                "soma_scale": mult["soma_radius"],
                                "engulfed_per_cell": model.baseline_engulfed_per_cell
                                * np.exp(re_eng)
                                * mult["engulfed_per_cell"],
                                "cd68_area_fraction": model.baseline_cd68_area_fraction
                                * mult["cd68_area_fraction"],
                            }
                        )
                    rows.append(row)
    rows += _spine_rows(preset, model, seed, first_animal=n_animal)
    n_animal += len(preset.spine_groups) * preset.spine_animals_per_group
    design = pd.DataFrame(rows)
    design["microglia_channel"] = design["microglia_channel"].astype("Int64")
    design["lysosome_channel"] = design["lysosome_channel"].astype("Int64")
    for col in ("synapse_channel", "dendrite_channel"):  # (only a study with a spine arm has empty ones)
        if col in design and design[col].isna().any():
            design[col] = design[col].astype("Int64")
    log.info("design %s: %d animals, %d images", preset.name, n_animal, len(design))
    return design


def _spine_rows(preset: Preset, model: TruthModel, seed: int, *, first_animal: int) -> list[dict]:
    """Rows of the two-photon spine arm (its own random stream: the other rows do not change)."""
    if not preset.spine_animals_per_group:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    # the sessions' imaging quality from a stream of its own (the other draws do not change)
    photon_rng = np.random.default_rng(np.random.SeedSequence([seed, 6]))
    photon_sd = float(preset.spine_session_photon_sd)
    if not (np.isfinite(photon_sd) and photon_sd >= 0):
        raise ValueError(f"spine_session_photon_sd must be >= 0, got {photon_sd!r}")
    levels = list(preset.spine_snr_mix)
    probs = np.array([preset.spine_snr_mix[k] for k in levels], dtype=float)
    probs /= probs.sum()
    rows: list[dict] = []
    n_animal = first_animal
    for g in preset.spine_groups:
        for i in range(preset.spine_animals_per_group):
            n_animal += 1
            animal = f"M{n_animal:03d}"
            re_spine = rng.normal(0.0, model.sd_animal_log_synapse)
            for f in range(1, preset.spine_fields + 1):
                level = levels[int(rng.choice(len(levels), p=probs))]
                for day in preset.spine_days:
                    a = float(activation(model, genotype=g.genotype, compound=g.compound, dose_mg_kg=g.dose_mg_kg,
                                         treatment_days=g.treatment_days, day=day))
                    image_id = f"{animal}_den_day{day:+d}_f{f}"
                    rows.append({
                        "image_id": image_id,
                        "path": f"images/{image_id}.ome.tif",
                        "animal_id": animal,
                        "genotype": g.genotype,
                        "compound": g.compound,
                        "dose_mg_kg": float(g.dose_mg_kg),
                        "treatment_days": int(g.treatment_days),
                        "day": int(day),
                        "pixel_size_um": None,  # the simulator's preset; filled by simulate_study
                        "synapse_channel": None,
                        "microglia_channel": None,
                        "lysosome_channel": None,
                        "dendrite_channel": 0,
                        "sex": "F" if i % 2 == 0 else "M",
                        "region": "S1 cortex L1 (two-photon, in vivo)",
                        "cohort": "spines",
                        "session": "baseline" if day < 0 else f"day {day}",
                        "field": f,
                        # --- truth (not written to samples.csv) ---
                        "readout": "spine",
                        "series": f"{animal}_f{f}",
                        "snr_level": level,
                        "activation": a,
                        "true_synapse_loss": model.max_synapse_loss * a,
                        "true_spine_density_ratio": readout_multipliers(model, a)["synapse_density"],
                        "spine_animal_effect": float(np.exp(re_spine)),
                        "photon_scale": float(np.exp(photon_rng.normal(0.0, photon_sd))) if photon_sd else 1.0,
                    })
    return rows


def design_summary(samples: pd.DataFrame) -> pd.DataFrame:
    """Animals, sexes, sessions and images per treatment group of a sample sheet.

    Parameters
    ----------
    samples : DataFrame
        A validated sample sheet (:func:`analysis.io.load_samples`).

    Returns
    -------
    DataFrame
        One row per group (``genotype``, ``compound``, ``dose_mg_kg``, ``treatment_days``) with
        ``group``, ``n_animals`` (the unit of replication), ``n_female``, ``n_male`` (when a
        ``sex`` column exists), ``session_days`` and the number of images with and without a
        microglia channel (``n_terminal_images``, ``n_synapse_images``), and for a sheet with a
        two-photon arm ``n_two_photon_images`` and ``two_photon_days``.
    """
    df = samples.copy()
    has_mg = df["microglia_channel"].notna() if "microglia_channel" in df else pd.Series(False, index=df.index)
    df["_terminal"] = has_mg
    out = []
    for keys, sub in df.groupby(GROUP_COLUMNS, sort=True, dropna=False):
        genotype, compound, dose, days = keys
        animals = sub.drop_duplicates("animal_id")
        rec = {
            "group": group_label(genotype, compound, dose, days),
            "genotype": genotype,
            "compound": compound,
            "dose_mg_kg": dose,
            "treatment_days": days,
            "n_animals": animals["animal_id"].nunique(),
        }
        if "sex" in sub:
            rec["n_female"] = int((animals["sex"] == "F").sum())
            rec["n_male"] = int((animals["sex"] == "M").sum())
        two_photon = sub["dendrite_channel"].notna() if "dendrite_channel" in sub else pd.Series(False, index=sub.index)
        syn = sub[~sub["_terminal"] & ~two_photon]
        rec["session_days"] = ", ".join(str(int(d)) for d in sorted(syn["day"].unique()))
        rec["n_synapse_images"] = int(len(syn))
        rec["n_terminal_images"] = int(sub["_terminal"].sum())
        if "dendrite_channel" in df:
            rec["n_two_photon_images"] = int(two_photon.sum())
            rec["two_photon_days"] = ", ".join(str(int(d)) for d in sorted(sub.loc[two_photon, "day"].unique()))
        out.append(rec)
    return pd.DataFrame(out)
