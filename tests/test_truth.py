"""The simulated effect model meets the published anchors it is calibrated to."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.sim.truth import TSPO_KO, calibrated_model, occupancy, synapse_loss


@pytest.fixture(scope="module")
def model():
    return calibrated_model()


def loss(model, dose, days, day, genotype="WT", compound="diazepam"):
    return float(
        synapse_loss(model, genotype=genotype, compound=compound, dose_mg_kg=dose, treatment_days=days, day=day)
    )


def test_sedative_arm_13_percent_and_back_after_56_days(model) -> None:
    assert loss(model, 5, 7, 7) == pytest.approx(0.13, abs=1e-9)
    assert loss(model, 5, 7, 7 + 56) < 0.01  # back to baseline 56 days after the last dose
    assert loss(model, 5, 7, 7 + 42) > 0.015  # ... and not much earlier ("about 56 days")


def test_anxiolytic_arm_recovers_within_three_weeks(model) -> None:
    end = loss(model, 1, 56, 56)
    assert 0.06 < end < 0.10
    assert loss(model, 1, 56, 56 + 21) < 0.01
    assert loss(model, 1, 56, 56 + 14) > 0.01


def test_no_effect_at_baseline_vehicle_or_tspo_knockout(model) -> None:
    assert loss(model, 5, 7, -3) == 0.0
    assert loss(model, 0, 7, 7, compound="vehicle") == 0.0
    assert loss(model, 5, 7, 7, genotype=TSPO_KO) == 0.0
    assert loss(model, 10, 7, 7, genotype=TSPO_KO, compound="XBD173") == 0.0


def test_xbd173_reproduces_the_effect(model) -> None:
    assert loss(model, 10, 7, 7, compound="XBD173") == pytest.approx(0.13, rel=0.05)


def test_monotone_in_dose_and_time(model) -> None:
    doses = np.array([0.5, 1, 2, 5])
    assert np.all(np.diff(occupancy(model, "diazepam", doses)) > 0)
    by_dose = [loss(model, d, 7, 7) for d in doses]
    assert np.all(np.diff(by_dose) > 0)
    by_day = [loss(model, 5, 56, d) for d in (1, 7, 14, 28, 56)]
    assert np.all(np.diff(by_day) > 0)
    after = [loss(model, 5, 7, d) for d in (7, 14, 28, 63)]
    assert np.all(np.diff(after) < 0)


def test_null_model_has_no_effect(model) -> None:
    null = model.without_drug_effect()
    assert loss(null, 5, 7, 7) == 0.0
    assert null.tau_on_days == model.tau_on_days
