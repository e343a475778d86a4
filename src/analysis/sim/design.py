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

__all__ = ["Group", "Preset", "PRESETS", "build_design", "group_label", "design_summary"]

log = logging.getLogger(__name__)

SYNAPSE_CHANNELS = ("PSD95",)
TERMINAL_CHANNELS = ("PSD95", "Iba1", "CD68")


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
    "default": Preset("default", _groups_default()),
    "null": Preset("null", _groups_default(), null=True),
    "large": Preset("large", _groups_default(), animals_per_group=16),
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
    design = pd.DataFrame(rows)
    design["microglia_channel"] = design["microglia_channel"].astype("Int64")
    design["lysosome_channel"] = design["lysosome_channel"].astype("Int64")
    log.info("design %s: %d animals, %d images", preset.name, n_animal, len(design))
    return design


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
        microglia channel.
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
        syn = sub[~sub["_terminal"]]
        rec["session_days"] = ", ".join(str(int(d)) for d in sorted(syn["day"].unique()))
        rec["n_synapse_images"] = int(len(syn))
        rec["n_terminal_images"] = int(sub["_terminal"].sum())
        out.append(rec)
    return pd.DataFrame(out)
