"""The simulated study designs follow the issue's requirements."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.sim.design import PRESETS, build_design, design_summary
from analysis.sim.truth import calibrated_model


@pytest.fixture(scope="module")
def default_design() -> pd.DataFrame:
    return build_design(PRESETS["default"], calibrated_model(), seed=0)


def test_default_design_groups(default_design: pd.DataFrame) -> None:
    d = default_design
    dzp = d[(d.compound == "diazepam") & (d.genotype == "WT")]
    doses = sorted(dzp.dose_mg_kg.unique())
    assert len(doses) >= 3 and min(doses) == 0.5 and max(doses) == 5.0
    assert set(dzp.treatment_days) == {7, 28, 56}
    assert (d.compound == "vehicle").any()
    assert set(d.genotype) == {"WT", "TSPO_KO"}
    assert (d[d.genotype == "TSPO_KO"].compound == "diazepam").any()
    assert (d.compound == "XBD173").any()
    imaged = d[d.readout != "spine"]  # (the two-photon spine arm has its own animals)
    per_group = imaged.groupby(["genotype", "compound", "dose_mg_kg", "treatment_days"]).animal_id.nunique()
    assert per_group.between(5, 8).all()
    spine = d[d.readout == "spine"]
    assert set(spine.animal_id).isdisjoint(imaged.animal_id)
    assert (spine.groupby(["genotype", "compound", "dose_mg_kg", "treatment_days"]).animal_id.nunique() == 6).all()
    sexes = d.drop_duplicates("animal_id").groupby(["genotype", "compound", "dose_mg_kg", "treatment_days"]).sex
    assert (sexes.nunique() == 2).all()


def test_default_sessions(default_design: pd.DataFrame) -> None:
    d = default_design
    syn = d[d.readout == "synapse"]
    since_last = syn.day - syn.treatment_days
    assert (syn.day < 0).any()  # baseline
    assert ((syn.day > 0) & (syn.day < syn.treatment_days)).any()  # during dosing
    assert since_last.max() >= 56  # withdrawal up to >= 56 days after the last dose
    fields = syn.groupby(["animal_id", "day"]).size()
    assert (fields >= 2).all()
    # every animal has a baseline and a terminal readout with microglia and lysosome channels
    assert syn.groupby("animal_id").day.min().lt(0).all()
    term = d[d.readout == "terminal"]
    assert term.animal_id.nunique() == d[d.readout != "spine"].animal_id.nunique()
    assert term.microglia_channel.notna().all() and term.lysosome_channel.notna().all()
    assert syn.microglia_channel.isna().all()


def test_truth_columns_follow_the_model(default_design: pd.DataFrame) -> None:
    d = default_design
    ko = d[d.genotype == "TSPO_KO"]
    assert (ko.activation == 0).all()
    base = d[d.day < 0]
    assert (base.activation == 0).all()
    end = d[(d.genotype == "WT") & (d.compound == "diazepam") & (d.dose_mg_kg == 5) & (d.treatment_days == 7) & (d.day == 7)]
    assert end.true_synapse_loss.round(6).eq(0.13).all()
    term_high = d[(d.readout == "terminal") & (d.activation > 0.5)]
    term_veh = d[(d.readout == "terminal") & (d.compound == "vehicle")]
    assert term_high.engulfed_per_cell.mean() > 2 * term_veh.engulfed_per_cell.mean()
    assert term_high.process_length_scale.mean() < 0.85 * term_veh.process_length_scale.mean()


def test_presets_sizes() -> None:
    model = calibrated_model()
    sizes = {name: len(build_design(p, model, 0)) for name, p in PRESETS.items()}
    assert sizes["small"] <= 40
    assert sizes["large"] >= 1000
    null = build_design(PRESETS["null"], model.without_drug_effect(), 0)
    assert (null.true_synapse_loss == 0).all()
    assert sizes["null"] == sizes["default"]


def test_same_seed_same_design() -> None:
    model = calibrated_model()
    a = build_design(PRESETS["small"], model, 3)
    b = build_design(PRESETS["small"], model, 3)
    c = build_design(PRESETS["small"], model, 4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.true_density_per_100um2.equals(c.true_density_per_100um2)


def test_design_summary_counts_animals(default_design: pd.DataFrame) -> None:
    s = design_summary(default_design)
    assert len(s) == 14
    # 8 imaged animals per group, and 6 more in the 4 groups of the two-photon spine arm
    assert s.n_animals.sum() == default_design.animal_id.nunique() == 112 + 4 * 6
    arm = s.n_two_photon_images > 0
    assert arm.sum() == 4 and (s[arm].n_two_photon_images == 6 * 2 * 3).all()
    assert (s[~arm].n_female == 4).all() and (s[~arm].n_male == 4).all()
    assert (s[arm].n_female == 4 + 3).all() and (s[arm].n_male == 4 + 3).all()
    row = s[s.group == "WT diazepam 5 mg/kg x 7 d"].iloc[0]
    assert row.session_days == "-3, 7, 14, 28, 42, 63" and row.two_photon_days == "-3, 7, 63"
    assert row.n_terminal_images == 16


def test_spine_sessions_imaging_quality_varies_only_when_asked() -> None:
    import dataclasses

    import numpy as np

    base = dataclasses.replace(PRESETS["default"], groups=(), animals_per_group=0, spine_animals_per_group=20)
    alike = build_design(base, calibrated_model(), seed=3)
    assert (alike["photon_scale"] == 1.0).all()
    varied = build_design(dataclasses.replace(base, spine_session_photon_sd=0.4), calibrated_model(), seed=3)
    # the same animals, levels and truth; only the sessions' photon scale is drawn
    pd.testing.assert_frame_equal(varied.drop(columns="photon_scale"), alike.drop(columns="photon_scale"))
    logs = np.log(varied["photon_scale"])
    assert len(logs) == 480 and logs.std() == pytest.approx(0.4, abs=0.04) and abs(logs.mean()) < 0.06
    # drawn per image: the sessions of one position differ
    assert (varied.groupby("series")["photon_scale"].nunique() == 3).all()
    with pytest.raises(ValueError, match="spine_session_photon_sd"):
        build_design(dataclasses.replace(base, spine_session_photon_sd=-0.1), calibrated_model(), seed=3)
