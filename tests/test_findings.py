"""The generated findings (analysis.report.findings) against hand-built tables: the words follow the numbers."""

from __future__ import annotations

import random
import re

import numpy as np
import pandas as pd
import pytest

from analysis.report import findings as F
from analysis.sim.validation import add_truth as _add_truth


def add_truth(contrasts, model):
    return _add_truth(contrasts, model, {e.key: e.truth for e in F.ENDPOINTS})
from analysis.sim.design import PRESETS, group_label

HEAD = "WT diazepam 5 mg/kg x 7 d"


def _syn_row(genotype, compound, dose, days, pct=np.nan, lo=np.nan, hi=np.nan, p=np.nan, p_holm=np.nan, n=8,
             d=np.nan, planned=True):
    vehicle = compound == "vehicle"
    return {
        "group": group_label(genotype, compound, dose, days), "genotype": genotype, "compound": compound,
        "dose_mg_kg": dose, "treatment_days": days, "day": days, "days_since_last_dose": 0, "n_animals": n,
        "df": 100.0, "pct_change_from_baseline": -5.0, "pct_change_from_baseline_ci_low": -9.0,
        "pct_change_from_baseline_ci_high": -1.0, "n_zero_fields_excluded": 0,
        "n_animals_vehicle": np.nan if vehicle else n, "pct_vs_vehicle": pct, "pct_vs_vehicle_ci_low": lo,
        "pct_vs_vehicle_ci_high": hi, "p_vs_vehicle": p, "effect_size_d": d,
        "effect_size_d_ci_low": d - 0.8, "effect_size_d_ci_high": d + 0.8,
        "planned": (not vehicle) and planned, "p_vs_vehicle_holm": p_holm,
    }


def synapse_table() -> pd.DataFrame:
    """A decrease (headline), a CI spanning 0 with a negative estimate, an increase; shuffled order."""
    rows = [
        _syn_row("WT", "diazepam", 1.0, 7, -4.2, -11.0, +3.1, 0.25, 0.5, d=-0.4),
        _syn_row("WT", "XBD173", 10.0, 7, +9.5, +2.25, +17.3, 0.01, 0.02, d=0.9),
        _syn_row("WT", "vehicle", 0.0, 7),
        _syn_row("WT", "diazepam", 5.0, 7, -13.37, -20.2, -5.95, 0.0008, 0.0024, d=-1.43),
    ]
    return pd.DataFrame(rows)


def _mg_row(endpoint, compound, dose, ratio, lo, hi, p, p_holm, n=4):
    return {"group": group_label("WT", compound, dose, 7), "genotype": "WT", "compound": compound,
            "dose_mg_kg": dose, "treatment_days": 7, "day": 7, "n_animals": n, "n_animals_vehicle": n,
            "ratio_vs_vehicle": ratio, "ci_low": lo, "ci_high": hi, "p_value": p, "planned": True,
            "p_holm": p_holm, "endpoint": endpoint}


def microglia_table() -> pd.DataFrame:
    return pd.DataFrame([
        _mg_row("microglia density (rate ratio)", "diazepam", 5.0, 1.19, 0.81, 1.76, 0.4, 0.8),
        _mg_row("microglia density (rate ratio)", "diazepam", 1.0, 1.02, 0.7, 1.5, 0.9, 0.9),
        _mg_row("engulfed puncta per cell (rate ratio)", "diazepam", 5.0, 2.5, 1.8, 3.2, 1e-5, 2e-5),
        _mg_row("engulfed puncta per cell (rate ratio)", "diazepam", 1.0, 1.4, 1.1, 1.9, 0.01, 0.01),
        _mg_row("skeleton_length_um (ratio of geometric means)", "diazepam", 5.0, 0.8, 0.7, 0.95, 0.01, 0.02),
        _mg_row("skeleton_length_um (ratio of geometric means)", "diazepam", 1.0, 0.95, 0.85, 1.05, 0.3, 0.3),
    ])


def test_direction_follows_the_ci_not_the_estimate() -> None:
    assert F.direction(-20.0, -1.0) == "decrease"
    assert F.direction(0.5, 30.0) == "increase"
    assert F.direction(-20.0, 0.5) == "no detectable change"
    assert F.direction(-0.1, 0.0) == "no detectable change"  # a CI touching 0 includes it


_NUM = r"[+-]?\d+(?:\.\d+)?"


def _clause_numbers(text: str) -> tuple[float, float, float, int, int, str]:
    m = re.search(rf"({_NUM}) % \(95 % CI ({_NUM}) to ({_NUM}) %; n = (\d+) vs (\d+)(?: animals)?; "
                  rf"Holm-adjusted (p [=<] \d\.\d+)", text)
    assert m, text
    return float(m[1]), float(m[2]), float(m[3]), int(m[4]), int(m[5]), m[6]


def test_headline_decrease_states_every_number_of_the_table() -> None:
    c = F.endpoint_contrasts({"synapse_contrasts": synapse_table()})
    found = F.abstract(c)
    head = found[0]
    assert head.group == HEAD and head.kind == "headline" and head.direction == "decrease"
    assert head.text.startswith(f"Synapse density decreased in {HEAD} versus vehicle: ")
    row = synapse_table().set_index("group").loc[HEAD]
    pct, lo, hi, n, nv, p = _clause_numbers(head.text)
    assert (pct, lo, hi) == (round(row.pct_vs_vehicle, 1), round(row.pct_vs_vehicle_ci_low, 1),
                             round(row.pct_vs_vehicle_ci_high, 1))
    assert (n, nv) == (8, 8) and p == "p = 0.002"
    assert "over 3 planned contrasts" in head.text  # the Holm family is named
    assert (head.pct, head.ci_low, head.ci_high, head.p_adjusted) == (row.pct_vs_vehicle, row.pct_vs_vehicle_ci_low,
                                                                      row.pct_vs_vehicle_ci_high, row.p_vs_vehicle_holm)


def test_ci_spanning_zero_is_no_detectable_change_even_with_a_negative_estimate() -> None:
    t = synapse_table()
    t.loc[t.group == HEAD, ["pct_vs_vehicle_ci_high", "p_vs_vehicle_holm"]] = [4.0, 0.4]
    head = F.abstract(F.endpoint_contrasts({"synapse_contrasts": t}))[0]
    assert head.direction == "no detectable change"
    assert "showed no detectable change" in head.text
    assert "decrease" not in head.text and "loss" not in head.text
    assert "Changes anywhere from -20.2 % to +4.0 % are compatible with these data." in head.text


def test_other_contrasts_name_only_the_detectable_ones() -> None:
    found = F.abstract(F.endpoint_contrasts({"synapse_contrasts": synapse_table()}))
    summary = next(f for f in found if f.kind == "summary" and f.endpoint == "synapse_density")
    items = [f for f in found if f.kind == "item" and f.endpoint == "synapse_density"]
    assert [f.group for f in items] == ["WT XBD173 10 mg/kg x 7 d"]  # the increase; 1 mg/kg spans 0
    assert items[0].direction == "increase" and "increase, +9.5 % (95 % CI +2.2 to +17.3 %" in summary.text
    assert "WT diazepam 1 mg/kg" not in summary.text
    assert summary.text.endswith("the other 1 showed no detectable change.")
    # how many of the detectable ones are significant after the adjustment is counted from the table
    p_adj = synapse_table().set_index("group").loc["WT XBD173 10 mg/kg x 7 d", "p_vs_vehicle_holm"]
    assert ("(95 % CI excluding 0; all significant after adjustment)" in summary.text) == bool(p_adj < 0.05)
    assert ("(95 % CI excluding 0; none of them significant after adjustment)" in summary.text) == bool(p_adj >= 0.05)


def test_other_contrasts_count_the_significant_ones() -> None:
    t = synapse_table()
    t.loc[t.group == "WT diazepam 1 mg/kg x 7 d", ["pct_vs_vehicle_ci_high", "p_vs_vehicle_holm"]] = [-1.0, 0.055]
    t.loc[t.group == "WT XBD173 10 mg/kg x 7 d", "p_vs_vehicle_holm"] = 0.01
    found = F.abstract(F.endpoint_contrasts({"synapse_contrasts": t}))
    summary = next(f for f in found if f.kind == "summary" and f.endpoint == "synapse_density")
    assert "2 showed a detectable change (95 % CI excluding 0; 1 of them significant after adjustment)" in summary.text


def test_microglia_ratios_become_percent_changes() -> None:
    c = F.endpoint_contrasts({"microglia_contrasts": microglia_table()})
    found = {(f.endpoint, f.kind): f for f in F.abstract(c) if f.kind == "headline"}
    eng = found[("engulfment", "headline")]
    assert eng.direction == "increase"
    assert _clause_numbers(eng.text)[:3] == (150.0, 80.0, 220.0)
    assert _clause_numbers(eng.text)[5] == "p < 0.001"
    dens = found[("microglia_density", "headline")]
    assert dens.direction == "no detectable change" and _clause_numbers(dens.text)[:3] == (19.0, -19.0, 76.0)
    skel = found[("skeleton_length", "headline")]
    assert skel.direction == "decrease" and skel.text.startswith("Microglia skeleton length decreased")
    # vehicle reference rows come first, one per endpoint
    first = c.groupby("endpoint", sort=False).head(1)
    assert (first["role"] == "reference").all() and len(first) == 3


def test_holm_not_significant_despite_a_ci_excluding_zero_is_said() -> None:
    t = synapse_table()
    t.loc[t.group == HEAD, "p_vs_vehicle_holm"] = 0.09
    head = F.abstract(F.endpoint_contrasts({"synapse_contrasts": t}))[0]
    assert head.direction == "decrease"
    assert "not significant after the Holm adjustment" in head.text


def test_design_order_dose_then_duration_vehicle_first() -> None:
    groups = list(PRESETS["default"].groups)
    shuffled = groups[:]
    random.Random(3).shuffle(shuffled)
    rows = [_syn_row(g.genotype, g.compound, g.dose_mg_kg, g.treatment_days, -5, -10, 1, 0.1, 0.5, d=-0.5)
            for g in shuffled]
    # the design order is the sheet's: the order the groups first appear in it
    sheet = pd.DataFrame([{"genotype": g.genotype, "compound": g.compound, "dose_mg_kg": g.dose_mg_kg,
                           "treatment_days": g.treatment_days} for g in groups])
    c = F.endpoint_contrasts({"synapse_contrasts": pd.DataFrame(rows)}, F.group_order(sheet))
    expected = [group_label(g.genotype, g.compound, g.dose_mg_kg, g.treatment_days) for g in groups]
    assert c["group"].tolist() == expected
    assert c["group"].iloc[0] == "WT vehicle x 7 d" and c["role"].iloc[:3].eq("reference").all()
    # groups of no preset: after the design's, vehicle first, then dose, then duration
    extra = [("WT", "diazepam", 3.0, 14), ("WT", "vehicle", 0.0, 14), ("WT", "diazepam", 3.0, 10),
             ("WT", "diazepam", 0.25, 14)]
    assert sorted(extra, key=lambda g: F.design_rank(*g)) == [extra[1], extra[3], extra[2], extra[0]]
    assert F.design_rank("WT", "vehicle", 0.0, 7) < F.design_rank(*extra[1])


def test_primary_table_formats_without_rounding_away() -> None:
    c = F.endpoint_contrasts({"synapse_contrasts": synapse_table(), "microglia_contrasts": microglia_table()})
    t = F.primary_table(c)
    row = t[t.group == HEAD].iloc[0]
    assert row["change vs vehicle, % (95 % CI)"] == "-13.4 (-20.2 to -6.0)"
    assert row["Cohen's d (95 % CI)"] == "-1.43 (-2.23 to -0.63)"
    assert row["p (adjusted)"] == "0.002 (of 3)"
    assert t.loc[t.group == "WT vehicle x 7 d", "change vs vehicle, % (95 % CI)"].eq("reference").all()
    assert all("(" in h or h in {"group", "day", "p"} for h in t.columns)  # units or scale in every header
    counts = t[t["endpoint (unit)"].str.startswith("Microglia density")]
    assert counts["Cohen's d (95 % CI)"].iloc[1] == "n/a (count model)"


def test_group_without_vehicle_is_not_estimable_with_the_reason() -> None:
    t = pd.concat([synapse_table(), pd.DataFrame([_syn_row("TSPO_KO", "diazepam", 5.0, 7, planned=False)])])
    c = F.endpoint_contrasts({"synapse_contrasts": t})
    ko = F.primary_table(c).set_index("group").loc["TSPO_KO diazepam 5 mg/kg x 7 d"]
    assert ko["change vs vehicle, % (95 % CI)"].startswith("not estimable: no vehicle group of genotype TSPO_KO")


def test_truth_and_coverage_from_the_truth_model() -> None:
    from analysis.sim.truth import calibrated_model

    model = calibrated_model()
    c = add_truth(F.endpoint_contrasts({"synapse_contrasts": synapse_table(),
                                          "microglia_contrasts": microglia_table()}), model)
    head = c[(c.group == HEAD) & (c.endpoint == "synapse_density")].iloc[0]
    assert head.truth_pct == pytest.approx(-13.0, abs=1e-9)  # the calibration anchor: 13 % at 5 mg/kg x 7 d
    assert bool(head.ci_covers_truth)
    found = F.abstract(c)[0]
    assert "Simulated truth -13.0 %: inside the 95 % CI." in found.text and found.ci_covers_truth is True
    mg = c[(c.group == HEAD) & (c.endpoint == "microglia_density")].iloc[0]
    from analysis.sim.truth import activation

    a = float(activation(model, genotype="WT", compound="diazepam", dose_mg_kg=5.0, treatment_days=7.0, day=7.0))
    assert mg.truth_pct == pytest.approx(100 * model.microglia_density_gain * a)
    assert c.loc[c.role == "reference", "truth_pct"].isna().all()
    # a CI that misses the truth says so
    t = synapse_table()
    t.loc[t.group == HEAD, ["pct_vs_vehicle_ci_low", "pct_vs_vehicle_ci_high"]] = [-30.0, -20.0]
    miss = F.abstract(add_truth(F.endpoint_contrasts({"synapse_contrasts": t}), model))[0]
    assert miss.ci_covers_truth is False and "outside the 95 % CI" in miss.text


def _dose_response(ed50=(5.7, 0.005, 500.0), emax=(-25.0, -60.0, -10.0)) -> pd.DataFrame:
    rows = [("e0_pct", -2.0, -5.5, 2.9), ("emax_pct", *emax), ("ed50_mg_kg", *ed50), ("trend_slope", -0.04, -0.07, -0.02)]
    return pd.DataFrame([{"parameter": p, "estimate": e, "ci_low": lo, "ci_high": hi, "n_animals": 40,
                          "genotype": "WT", "compound": "diazepam", "treatment_days": 7} for p, e, lo, hi in rows])


def test_unidentified_ed50_is_not_estimable_with_the_reason() -> None:
    t = F.estimability(_dose_response()).set_index("parameter")
    assert not t.loc["ed50_mg_kg", "estimable"]
    assert "95 % CI 0.005 to 500 mg/kg spans 5 orders of magnitude" in t.loc["ed50_mg_kg", "reason"]
    assert not t.loc["emax_pct", "estimable"] and "ED50" in t.loc["emax_pct", "reason"]
    assert t.loc["e0_pct", "estimable"] and t.loc["trend_slope", "estimable"]
    # a narrow CI but an estimate at the fit bound (highest dose x 100)
    at_bound = F.estimability(_dose_response(ed50=(499.0, 200.0, 500.0)), doses=[0, 0.5, 1, 2, 5]).set_index("parameter")
    assert "estimate 499 mg/kg at the upper fit bound (500 mg/kg)" in at_bound.loc["ed50_mg_kg", "reason"]
    # an identified fit stays a number
    good = F.estimability(_dose_response(ed50=(1.2, 0.6, 2.4)), doses=[0, 0.5, 1, 2, 5]).set_index("parameter")
    assert good["estimable"].all() and (good["reason"] == "").all()


def test_recovery_time_constants_at_bounds_are_not_estimable() -> None:
    rec = pd.DataFrame({"group": [HEAD, "WT diazepam 1 mg/kg x 7 d", "WT diazepam 2 mg/kg x 7 d",
                                  "WT diazepam 0.5 mg/kg x 7 d", "WT XBD173 10 mg/kg x 7 d"],
                        "n_animals": 4, "pct_at_end_of_dosing": [-13.0, 0.5, -9.0, -7.0, -10.0],
                        "first_recovered_day_after_last_dose": 7.0,
                        "recovery_tau_days": [22.0, np.nan, 1000.0, 0.5, 700.0]})
    t = F.estimability(recovery=rec, follow_up_days=56).set_index("what")
    assert t.loc[HEAD, "estimable"] and t.loc[HEAD, "estimate"] == 22.0
    assert "no loss at the end of dosing" in t.loc["WT diazepam 1 mg/kg x 7 d", "reason"]
    assert t.loc["WT diazepam 2 mg/kg x 7 d", "reason"] == "1e+03 d is at the upper fit bound (1000 d)"
    assert t.loc["WT diazepam 0.5 mg/kg x 7 d", "reason"] == "0.5 d is at the lower fit bound (0.5 d)"
    assert "beyond 10 x the follow-up of 56 d" in t.loc["WT XBD173 10 mg/kg x 7 d", "reason"]
    assert list(t.index[:4]) == ["WT diazepam 0.5 mg/kg x 7 d", "WT diazepam 1 mg/kg x 7 d",
                                 "WT diazepam 2 mg/kg x 7 d", HEAD]  # design order


def test_trend_sentences_follow_the_cis() -> None:
    trend = pd.DataFrame({
        "term": ["dose", "dose:on", "dose:off", "dose:on:off"], "meaning": ["a", "b", "c", "d"],
        "pct_per_unit": [-1.36, -0.74, 0.3, -0.03], "ci_low": [-3.3, -1.02, -0.2, -0.1],
        "ci_high": [0.6, -0.45, 0.8, 0.06], "p_value": [0.18, 2e-6, 0.2, 0.5], "df": 84.0,
        "genotype": "WT", "compound": "diazepam", "n_animals": 88, "random_effects": "x", "n_images": 848,
    })
    found = F.trend_findings(trend)
    summary, on, off = found
    assert summary.kind == "summary" and "n = 88 animals" in summary.text
    assert on.direction == "decrease" and on.text.startswith("fell by 0.74 % per week on drug")
    assert "(95 % CI -1.02 to -0.45 %; p < 0.001, unadjusted)" in on.text
    assert off.direction == "no detectable change" and "rose" not in off.text
    assert F.trend_findings(None) == [] and F.trend_findings(trend.iloc[0:0]) == []


def test_no_tables_no_findings() -> None:
    c = F.endpoint_contrasts({})
    assert c.empty and F.abstract(c) == [] and F.primary_table(c).empty


def test_an_undetected_true_change_is_said() -> None:
    from analysis.sim.truth import calibrated_model

    c = add_truth(F.endpoint_contrasts({"microglia_contrasts": microglia_table()}), calibrated_model())
    dens = next(f for f in F.abstract(c) if f.endpoint == "microglia_density" and f.kind == "headline")
    assert dens.direction == "no detectable change" and dens.ci_covers_truth
    assert f"The simulated change of {dens.truth_pct:+.1f} % went undetected in this study." in dens.text
    eng = next(f for f in F.abstract(c) if f.endpoint == "engulfment" and f.kind == "headline")
    assert "undetected" not in eng.text  # detected: nothing to say


def test_a_calibration_caveat_follows_its_endpoint_only() -> None:
    """The committed calibration's caveat (``validation.calibration_caveats``) is said right after
    the findings of its endpoint, once, and nowhere else."""
    from analysis.report.validation import calibration_caveats, load_morphology_calibration

    table = pd.concat([microglia_table(), pd.DataFrame([
        _mg_row("branch_points (ratio of geometric means)", "diazepam", 5.0, 0.7, 0.6, 0.85, 0.001, 0.002),
        _mg_row("branch_points (ratio of geometric means)", "diazepam", 1.0, 0.9, 0.8, 1.02, 0.1, 0.1)])])
    c = F.endpoint_contrasts({"microglia_contrasts": table})
    plain = F.abstract(c)
    found = F.abstract(c, caveats={"branch_points": "Read with care.", "not_an_endpoint": "ignored"})
    caveat = [f for f in found if f.kind == "caveat"]
    assert [(f.endpoint, f.text) for f in caveat] == [("branch_points", "Read with care.")]
    # in place: after the last finding of branch points, before the next endpoint's
    at = found.index(caveat[0])
    assert found[at - 1].endpoint == "branch_points" and [f for f in found if f.kind != "caveat"] == plain
    assert at == len(found) - 1 or found[at + 1].endpoint != "branch_points"
    # the committed calibration (a source checkout) flags no endpoint since branch points are
    # counted as forks of the process tree (session 14; they were 8.5 % low before)
    if load_morphology_calibration() is not None:
        assert calibration_caveats() == {}


def test_no_detectable_change_says_what_the_design_could_detect() -> None:
    """A CI spanning 0 comes with the change this design would have detected (80 % power)."""
    from analysis.report.findings import detectable_change

    # SE on the log scale from a 95 % CI of -10 % to +11.1 %: (log 1.111 - log 0.9) / 3.92 = 0.0537;
    # 80 % power at the 5 % level: (1.96 + 0.84) x SE = 0.1505 -> -14.0 % / +16.2 %
    down, up = detectable_change(-10.0, 11.1)
    assert down == pytest.approx(-13.97, abs=0.01) and up == pytest.approx(16.25, abs=0.01)
    assert np.isnan(detectable_change(5.0, 5.0)[0])


def test_only_the_prespecified_primary_is_labelled_primary(tmp_path) -> None:
    """In a fixed sequence the adjusted p of the least significant other contrast equals its raw p
    (Holm's largest); the label comes from the model's ``primary`` flag, not from p == adjusted p
    (the default study's TSPO-KO contrast was labelled "primary, tested first")."""
    from analysis.stats.models import gatekeeping

    t = synapse_table()
    t = pd.concat([t, pd.DataFrame([_syn_row("TSPO_KO", "vehicle", 0.0, 7),
                                    _syn_row("TSPO_KO", "diazepam", 5.0, 7, +0.3, -6.1, 7.1, 0.94, 0.94)])],
                  ignore_index=True)
    planned = t["planned"].to_numpy(bool)
    primary = (t["group"] == HEAD).to_numpy() & planned
    adjusted, words = gatekeeping(t.loc[planned, "p_vs_vehicle"].to_numpy(), primary[planned])
    t["primary"] = primary
    t.loc[planned, "p_vs_vehicle_adjusted"] = adjusted
    t.loc[planned, "adjustment"] = words
    path = tmp_path / "synapse_contrasts.csv"
    t.to_csv(path, index=False)  # read back as the report does: flags become numpy booleans
    c = F.endpoint_contrasts({"synapse_contrasts": pd.read_csv(path)})
    table = F.primary_table(c).set_index("group")["p (adjusted)"]
    ko = "TSPO_KO diazepam 5 mg/kg x 7 d"
    assert c.set_index("group").loc[ko, "p_holm"] == pytest.approx(0.94)  # adjusted == raw here
    assert table[HEAD].endswith("(primary, tested first)")
    assert table[ko].endswith("(of 4)") and "primary" not in table[ko]
    assert sum("primary" in v for v in table) == 1
