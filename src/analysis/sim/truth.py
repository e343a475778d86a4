"""The ground-truth effect model of the simulated study.

One drug-driven *activation* ``a`` in [0, 1] drives every simulated readout.  It follows the
published picture (Shi et al. 2022, see DESIGN.md): diazepam acts through TSPO on microglia,
so the activation is zero in TSPO knockouts and for vehicle; the TSPO-only ligand XBD173 has
the same maximal effect with its own potency.

* Dose: a Hill (Emax) occupancy ``s(d) = d^h / (d^h + ED50^h)``.
* Time on drug: ``a(t) = s(d) * (1 - exp(-t / tau_on))`` during dosing.
* Withdrawal: ``a(t) = a_end * exp(-(t - T) / tau_rec(d))`` after the last dose at day ``T``,
  with a recovery time constant that grows with the dose,
  ``tau_rec(d) = tau_rec_ref * (d_eq / d_ref) ** recovery_dose_exponent``
  (``d_eq`` is the diazepam-equivalent dose, ``d * ED50_diazepam / ED50_compound``).

Readouts at activation ``a``:

* synapse density multiplier ``1 - max_synapse_loss * a``;
* microglia density ``x (1 + microglia_density_gain * a)``; process length
  ``x (1 - process_length_loss * a)``; branching probability ``x (1 - branching_loss * a)``;
  soma radius ``x (1 + soma_gain * a)``; engulfed puncta per cell
  ``x (1 + engulfment_gain * a)``; CD68 area fraction ``x (1 + cd68_gain * a)``.

``tau_on`` and ``tau_rec_ref`` are not free constants: :func:`calibrated_model` solves for them
so that 5 mg/kg diazepam for 7 days gives 13 % synapse loss that is back to baseline (residual
loss below one percentage point) 56 days after the last dose.  With the defaults 1 mg/kg for
56 days then gives about 8 % loss that recovers within 3 weeks, as published.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from analysis.io.vocabulary import TSPO_KO, VEHICLE, WILD_TYPE  # noqa: F401  (the study's vocabulary)

__all__ = ["TruthModel", "calibrated_model", "activation", "readout_multipliers"]


@dataclass(frozen=True)
class TruthModel:
    """Parameters of the simulated effect model (see the module docstring).

    Attributes
    ----------
    max_synapse_loss : float
        Synapse loss (fraction) at full activation.
    ed50_mg_kg : dict
        Potency per compound (mg/kg/day giving half the maximal activation).
    hill : float
        Hill coefficient of the dose-occupancy curve.
    tau_on_days : float
        Time constant of the build-up of the effect on drug.
    tau_rec_ref_days : float
        Recovery time constant at the reference diazepam-equivalent dose.
    recovery_ref_dose_mg_kg, recovery_dose_exponent : float
        Dose scaling of the recovery time constant.
    baseline_synapse_density_per_100um2 : float
        Mean PSD95 puncta density in the analysed area of an untreated animal.
    baseline_microglia_per_mm2 : float
        Mean microglia density in the projected field of an untreated animal.
    baseline_engulfed_per_cell, baseline_cd68_area_fraction : float
        Untreated engulfment and lysosome load.
    microglia_density_gain, process_length_loss, branching_loss, soma_gain, engulfment_gain, cd68_gain : float
        Microglia readout changes at full activation (see module docstring).
    sd_animal_log_synapse, sd_field_log_synapse : float
        Between-animal and between-field SD of log synapse density.
    sd_animal_log_microglia, sd_animal_log_morphology, sd_animal_log_engulfment : float
        Between-animal SDs (log scale) of microglia density, process length, engulfment.
    """

    max_synapse_loss: float = 0.16
    ed50_mg_kg: dict[str, float] = field(default_factory=lambda: {"diazepam": 1.0, "XBD173": 2.0})
    hill: float = 1.5
    tau_on_days: float = float("nan")
    tau_rec_ref_days: float = float("nan")
    recovery_ref_dose_mg_kg: float = 5.0
    recovery_dose_exponent: float = 0.5
    baseline_synapse_density_per_100um2: float = 40.0
    baseline_microglia_per_mm2: float = 400.0
    baseline_engulfed_per_cell: float = 2.0
    baseline_cd68_area_fraction: float = 0.04
    microglia_density_gain: float = 0.15
    process_length_loss: float = 0.30
    branching_loss: float = 0.35
    soma_gain: float = 0.15
    engulfment_gain: float = 2.0
    cd68_gain: float = 1.5
    sd_animal_log_synapse: float = 0.08
    sd_field_log_synapse: float = 0.05
    sd_animal_log_microglia: float = 0.10
    sd_animal_log_morphology: float = 0.06
    sd_animal_log_engulfment: float = 0.15

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (written to ``study_truth.json``)."""
        return asdict(self)

    def to_json(self) -> str:
        """Deterministic JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def without_drug_effect(self) -> "TruthModel":
        """The same model with every drug effect set to zero (the ``null`` preset)."""
        return replace(
            self,
            max_synapse_loss=0.0,
            microglia_density_gain=0.0,
            process_length_loss=0.0,
            branching_loss=0.0,
            soma_gain=0.0,
            engulfment_gain=0.0,
            cd68_gain=0.0,
        )


def occupancy(model: TruthModel, compound: str, dose_mg_kg: float | np.ndarray) -> np.ndarray:
    """Hill occupancy ``s(d)`` in [0, 1]; zero for vehicle or an unknown compound's dose 0."""
    d = np.asarray(dose_mg_kg, dtype=float)
    if compound == VEHICLE:
        return np.zeros_like(d)
    ed50 = model.ed50_mg_kg[compound]
    dh = np.power(np.clip(d, 0.0, None), model.hill)
    return dh / (dh + ed50**model.hill)


def recovery_tau_days(model: TruthModel, compound: str, dose_mg_kg: float) -> float:
    """Recovery time constant after withdrawal for one dose."""
    if compound == VEHICLE or dose_mg_kg <= 0:
        return model.tau_rec_ref_days
    d_eq = dose_mg_kg * model.ed50_mg_kg["diazepam"] / model.ed50_mg_kg[compound]
    return model.tau_rec_ref_days * (d_eq / model.recovery_ref_dose_mg_kg) ** model.recovery_dose_exponent


def activation(
    model: TruthModel,
    *,
    genotype: str,
    compound: str,
    dose_mg_kg: float,
    treatment_days: float,
    day: float | np.ndarray,
) -> np.ndarray:
    """Drug-driven activation ``a`` in [0, 1] at ``day`` (days since the first dose).

    Parameters
    ----------
    model : TruthModel
        Calibrated model (see :func:`calibrated_model`).
    genotype, compound : str
        ``TSPO_KO`` and ``vehicle`` give zero activation.
    dose_mg_kg, treatment_days : float
        Daily dose and planned days of dosing.
    day : float or array
        Days since the first dose; negative days are baseline.

    Returns
    -------
    ndarray
        Activation, same shape as ``day``.
    """
    t = np.asarray(day, dtype=float)
    if genotype == TSPO_KO or compound == VEHICLE or dose_mg_kg <= 0:
        return np.zeros_like(t)
    s = float(occupancy(model, compound, dose_mg_kg))
    t_on = np.clip(np.minimum(t, treatment_days), 0.0, None)
    a_on = s * (1.0 - np.exp(-t_on / model.tau_on_days))
    t_off = np.clip(t - treatment_days, 0.0, None)
    return a_on * np.exp(-t_off / recovery_tau_days(model, compound, dose_mg_kg))


def synapse_loss(model: TruthModel, **kwargs: Any) -> np.ndarray:
    """True fractional synapse loss versus baseline (same arguments as :func:`activation`)."""
    return model.max_synapse_loss * activation(model, **kwargs)


def readout_multipliers(model: TruthModel, a: float) -> dict[str, float]:
    """Multipliers of every simulated readout at activation ``a``."""
    return {
        "synapse_density": 1.0 - model.max_synapse_loss * a,
        "microglia_density": 1.0 + model.microglia_density_gain * a,
        "process_length": 1.0 - model.process_length_loss * a,
        "branching": 1.0 - model.branching_loss * a,
        "soma_radius": 1.0 + model.soma_gain * a,
        "engulfed_per_cell": 1.0 + model.engulfment_gain * a,
        "cd68_area_fraction": 1.0 + model.cd68_gain * a,
    }


def calibrated_model(
    *,
    loss_at_reference: float = 0.13,
    reference_dose_mg_kg: float = 5.0,
    reference_days: float = 7.0,
    recovered_after_days: float = 56.0,
    recovered_threshold: float = 0.01,
    **overrides: Any,
) -> TruthModel:
    """Return the model with ``tau_on`` and ``tau_rec_ref`` solved from published anchors.

    Parameters
    ----------
    loss_at_reference : float
        Synapse loss after ``reference_days`` of diazepam at ``reference_dose_mg_kg``
        (Shi et al. 2022: about 13 % after 5 mg/kg/day for 7 days).
    recovered_after_days, recovered_threshold : float
        The loss is below ``recovered_threshold`` (fraction) this many days after the last
        dose (published: back to baseline about 56 days later).
    **overrides
        Any other :class:`TruthModel` field.

    Returns
    -------
    TruthModel
    """
    base = TruthModel(**overrides)
    if base.max_synapse_loss <= 0:
        raise ValueError("calibration needs max_synapse_loss > 0; use without_drug_effect() for a null model")
    s = float(occupancy(base, "diazepam", reference_dose_mg_kg))
    frac = loss_at_reference / (base.max_synapse_loss * s)
    if not 0 < frac < 1:
        raise ValueError(
            f"max_synapse_loss={base.max_synapse_loss} cannot give {loss_at_reference:.0%} loss at "
            f"{reference_dose_mg_kg} mg/kg; raise max_synapse_loss"
        )
    tau_on = -reference_days / math.log(1.0 - frac)
    tau_rec_ref = recovered_after_days / math.log(loss_at_reference / recovered_threshold)
    if base.recovery_ref_dose_mg_kg != reference_dose_mg_kg:
        tau_rec_ref *= (base.recovery_ref_dose_mg_kg / reference_dose_mg_kg) ** base.recovery_dose_exponent
    return replace(base, tau_on_days=tau_on, tau_rec_ref_days=tau_rec_ref)
