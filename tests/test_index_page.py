"""reports/index.html: findings, endpoint table in design order, not-estimable fits, methods, provenance."""

from __future__ import annotations

import base64
import datetime as dt
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_findings import HEAD, _dose_response, _mg_row, microglia_table, synapse_table

from analysis.report.index import KEY_FIGURE, TABLES_DIR, dependency_versions, redact_paths, write_index

#: Absolute paths of the kinds a machine would leak (POSIX roots, Windows drives, file URLs).
_ABSOLUTE = re.compile(r"(?<![\w.])(?:/(?:tmp|home|work|Users|usr|var|root|mnt|opt|private)/|[A-Za-z]:\\|file://)")


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


@pytest.fixture()
def hand_built(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A processed folder of hand-built fitted tables, a study folder with a sheet, a reports folder."""
    data, processed, reports = tmp_path / "study", tmp_path / "processed", tmp_path / "reports"
    data.mkdir()
    processed.mkdir()
    sheet = pd.DataFrame({"image_id": [f"i{k}" for k in range(8)], "path": [f"images/i{k}.tif" for k in range(8)],
                          "animal_id": ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"],
                          "genotype": "WT", "compound": ["vehicle", "vehicle", "diazepam", "diazepam"] * 2,
                          "dose_mg_kg": [0, 0, 5, 5, 0, 0, 1, 1], "treatment_days": 7, "day": 7,
                          "sex": ["F", "M"] * 4})
    sheet.to_csv(data / "samples.csv", index=False)
    synapse_table().to_csv(processed / "synapse_contrasts.csv", index=False)
    microglia_table().to_csv(processed / "microglia_contrasts.csv", index=False)
    _dose_response().to_csv(processed / "synapse_dose_response.csv", index=False)
    pd.DataFrame({"group": [HEAD], "n_animals": 4, "pct_at_end_of_dosing": -13.0,
                  "first_recovered_day_after_last_dose": 7.0, "recovery_tau_days": 1000.0}).to_csv(
        processed / "synapse_recovery.csv", index=False)
    pd.DataFrame({"image_id": ["i3"], "path": ["images/i3.tif"], "reason": ["unreadable TIFF: truncated"]}).to_csv(
        processed / "failures.csv", index=False)
    return data, processed, reports


def _write(data: Path, processed: Path, reports: Path) -> str:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    params = {"data_dir": str(data.resolve()), "processed_dir": str(processed.resolve()), "workers": 1,
              "quantify": {"puncta": {"threshold_sd": 5.0}, "microglia": {}, "lysosomes": {}, "quality": {}}}
    return write_index(reports, processed, data, [], params, now, now).read_text(encoding="utf-8")


def test_index_states_findings_in_sentences_that_match_the_tables(hand_built) -> None:
    page = _write(*hand_built)
    text = _text(page)
    row = synapse_table().set_index("group").loc[HEAD]
    assert (f"Synapse density decreased in {HEAD} versus vehicle: {row.pct_vs_vehicle:+.1f} % (95 % CI "
            f"{row.pct_vs_vehicle_ci_low:+.1f} to {row.pct_vs_vehicle_ci_high:+.1f} %; n = 8 vs 8 animals; "
            "Holm-adjusted p = 0.002 over 3 planned contrasts).") in text
    assert (hand_built[2] / KEY_FIGURE).exists() and 'src="data:image/png;base64,' in page  # estimates only
    assert "not simulated" in text and "simulated truth" not in text.lower()  # real data: no truth claimed
    assert "Microglia density showed no detectable change in" in text
    assert "Engulfed PSD95 puncta per microglia increased in" in text
    assert "Microglia skeleton length decreased in" in text
    # the endpoint table in design order: vehicle, then 1 mg/kg, then 5 mg/kg, then XBD173
    table = page[page.index("every primary endpoint"):page.index("Dose x time trend")]
    order = [table.index(f"<td>{g}</td>") for g in ("WT vehicle x 7 d", "WT diazepam 1 mg/kg x 7 d", HEAD,
                                                   "WT XBD173 10 mg/kg x 7 d")]
    assert order == sorted(order)
    assert f"{row.pct_vs_vehicle:+.1f} ({row.pct_vs_vehicle_ci_low:+.1f} to {row.pct_vs_vehicle_ci_high:+.1f})" in table


def test_the_calibration_caveat_of_an_endpoint_is_said_after_its_findings(hand_built, monkeypatch) -> None:
    """An endpoint that the calibration with the detector's error finds biased gets its caveat
    right after its findings on the index (the committed calibration flags none since session
    14, so the caveat here is one built from a biased calibration table)."""
    from analysis.report import validation

    text = (f"# c\n\n## {validation.TERMINAL_BANK_SECTION}\n\n| studies | endpoint | planned contrasts | "
            "coverage | mean ratio error, % | largest mean ratio error of a contrast, % |\n"
            "|---|---|---|---|---|---|\n| default | branch points | 1000 | 0.880 | -8.5 | -12.7 |\n")
    caveat = validation.calibration_caveats(validation.parse_validation_markdown(text))["branch_points"]
    monkeypatch.setattr(validation, "calibration_caveats", lambda: {"branch_points": caveat})
    data, processed, reports = hand_built
    rows = pd.DataFrame([_mg_row("branch_points (ratio of geometric means)", "diazepam", dose, r, lo, hi, p, p)
                         for dose, r, lo, hi, p in ((5.0, 0.7, 0.6, 0.85, 0.002), (1.0, 0.9, 0.8, 1.02, 0.1))])
    pd.concat([microglia_table(), rows]).to_csv(processed / "microglia_contrasts.csv", index=False)
    text = _text(_write(data, processed, reports))
    assert caveat in text and text.index(caveat) > text.index("Microglia branch points decreased in")


def test_unidentified_fits_are_not_estimable_with_the_reason_not_numbers(hand_built) -> None:
    page = _write(*hand_built)
    fits = _text(page[page.index("Dose-response, recovery and mechanism"):page.index("<h2>Contents")])
    assert "not estimable: 95 % CI 0.005 to 500 mg/kg spans 5 orders of magnitude" in fits
    assert "not estimable: 1e+03 d is at the upper fit bound (1000 d)" in fits
    assert "5.7 (" not in fits  # the unidentified ED50 is not printed as an estimate
    assert "Not estimable from these data" in _text(page)  # and the abstract says so


def test_methods_arrive_and_provenance(hand_built) -> None:
    page = _write(*hand_built)
    text = _text(page)
    assert "threshold_sd" in text and "5.0" in text and "configured" in text  # the detector as it ran
    assert "noise_fdr" in text  # defaults listed too
    assert "log(density) ~ 0 + C(group x session)" in text and "animals minus groups" in text
    assert "Holm-adjusted within each endpoint (family sizes: synapse density: 3; microglia density: 2" in text
    assert "image i3 (images/i3.tif): unreadable TIFF: truncated" in text  # exclusion with its reason
    assert re.search(r"<td>WT vehicle x 7 d</td><td class=\"num\">4</td><td>F 2, M 2</td>", page)
    versions = dependency_versions()
    assert f"Package versions ({len(versions)}:" in page
    for name in ("numpy", "pandas", "statsmodels", "scikit-image", "papermill"):
        assert f"<td>{name}</td>" in page


def test_methods_state_the_synapse_models_quality_adjustment(hand_built) -> None:
    data, processed, reports = hand_built
    pd.DataFrame({"component": ["animal"], "variance": [0.01], "converged": [True], "warnings": [""],
                  "quality_adjustment": ["log measured SNR and its square as covariates"]}).to_csv(
        processed / "synapse_lmm_variance.csv", index=False)
    text = _text(_write(data, processed, reports))
    assert "The fit converged without warnings. Image quality (analysis.stats.fit_study): log measured SNR and its " \
           "square as covariates." in " ".join(text.split())


def test_methods_state_the_spine_model_and_its_sensitivity_analysis(hand_built) -> None:
    data, processed, reports = hand_built
    assert "Dendritic spine density:" not in _text(_write(data, processed, reports))  # no spine arm, no entry
    spine = synapse_table().assign(day=7)
    spine.to_csv(processed / "spine_contrasts.csv", index=False)
    text = " ".join(_text(_write(data, processed, reports)).split())
    assert "Dendritic spine density: log(density) ~ 0 + C(group x session)" in text
    assert "with a random intercept per imaged position" in text and "Sensitivity analysis" not in text
    spine.to_csv(processed / "spine_contrasts_snr_adjusted.csv", index=False)
    text = " ".join(_text(_write(data, processed, reports)).split())
    assert "Sensitivity analysis (spine_contrasts_snr_adjusted.csv): the same model with each image's log measured " \
           "SNR as a covariate" in text


def test_the_spine_calibration_caveat_follows_the_spine_findings(hand_built) -> None:
    """The spine arm's end-to-end calibration (benchmarks/calibration_spines_e2e.md: the detector
    reports about 0.77 of a true density change) is said right after the spine-density findings,
    and not on a study without a spine arm."""
    from analysis.report import validation

    caveat = validation.spine_calibration_caveats().get("spine_density")
    if caveat is None:
        pytest.skip("no committed spine calibration (not a source checkout), or it flags nothing")
    data, processed, reports = hand_built
    assert "spine detector reported" not in _text(_write(data, processed, reports))
    synapse_table().assign(day=7).to_csv(processed / "spine_contrasts.csv", index=False)
    text = " ".join(_text(_write(data, processed, reports)).split())
    caveat = " ".join(caveat.split())
    assert text.count(caveat) == 1 and text.index(caveat) > text.index("Dendritic spine density decreased in")
    assert f"reported {validation.spine_calibration_figures()['change_ratio']:.2f} of the change" in caveat


def test_no_absolute_machine_path_on_the_page(hand_built, tmp_path: Path) -> None:
    page = _write(*hand_built)
    assert str(tmp_path) not in page and str(tmp_path.resolve()) not in page
    assert _ABSOLUTE.findall(page) == []
    # every link and image is relative and resolves next to the page
    reports = hand_built[2]
    for target in re.findall(r'(?:src|href)="([^"#]+)', page):
        assert not target.startswith(("/", "http")), target
        if target.startswith(TABLES_DIR):
            assert (reports / target).exists(), target
    assert (reports / TABLES_DIR / "synapse_contrasts.csv").read_bytes() == \
        (hand_built[1] / "synapse_contrasts.csv").read_bytes()


def test_path_pattern_catches_what_it_should() -> None:
    assert _ABSOLUTE.findall("data in /tmp/pytest-1/study and C:\\Users\\me") == ["/tmp/", "C:\\"]
    assert _ABSOLUTE.findall("images/a.tif ../other/c.tif 100 um/px") == []


def test_redact_paths() -> None:
    assert redact_paths({"a": "/x/y/study", "b": ["rel/p.csv", Path("/q/r.csv")], "c": 3}) == \
        {"a": "study", "b": ["rel/p.csv", "r.csv"], "c": 3}


def test_every_dependency_version_not_only_the_direct_ones() -> None:
    v = dependency_versions()
    names = {n.lower() for n in v["package"]}
    assert v["package"].iloc[0] == "python" and v["package"].iloc[1] == "analysis"
    assert {"numpy", "scipy", "pandas", "statsmodels", "scikit-image", "tifffile", "papermill"} <= names
    assert "patsy" in names and "python-dateutil" in names  # transitive: via statsmodels, pandas
    assert "pytest" not in set(v.loc[v["required as"] == "direct", "package"].str.lower())  # extras left out
    assert len(v) > 30 and (v["version"] != "not installed").sum() > 30


def test_index_without_fitted_tables_still_writes(tmp_path: Path) -> None:
    data = tmp_path / "study"
    data.mkdir()
    pd.DataFrame({"image_id": ["a"], "path": ["a.tif"]}).to_csv(data / "samples.csv", index=False)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    page = write_index(tmp_path / "reports", tmp_path / "processed", data, [], {}, now, now).read_text()
    assert "No primary endpoint was fitted" in page and KEY_FIGURE not in page


# ---------------------------------------------------------------- on a real small run

_CLAUSE = (r"({n}) % \(95 % CI ({n}) to ({n}) %; n = (\d+) vs (\d+) animals; (?:Holm-adjusted|adjusted) p ([=<]) "
           r"(\d\.\d+) (?:over (\d+) planned contrasts|\(fixed sequence: primary contrast first, then Holm over "
           r"the other (\d+)\))\)").format(n=r"[+-]\d+\.\d")


def _p_text(p: float) -> tuple[str, str]:
    return ("<", "0.001") if p < 0.001 else ("=", f"{p:.3f}")


@pytest.mark.slow
def test_index_of_the_small_study_matches_its_tables(small_report: Path, small_study: Path) -> None:
    """Every headline sentence's numbers, read back from the page, equal the fitted tables'."""
    page = (small_report / "reports" / "index.html").read_text(encoding="utf-8")
    text = _text(page)
    processed = small_report / "processed"
    syn = pd.read_csv(processed / "synapse_contrasts.csv")
    syn = syn[syn.planned.astype(bool)]
    mg = pd.read_csv(processed / "microglia_contrasts.csv")
    mg = mg[mg.planned.astype(bool)]
    headlines = {"Synapse density": None, "Microglia density": "microglia density",
                 "Engulfed PSD95 puncta per microglia": "engulfed puncta", "CD68 area fraction of microglia": "cd68",
                 "Microglia skeleton length": "skeleton_length", "Microglia branch points": "branch_points"}
    checked = 0
    for label, prefix in headlines.items():
        m = re.search(rf"{label} (increased|decreased|showed no detectable change) in {re.escape(HEAD)} versus "
                      rf"vehicle: {_CLAUSE}", text)
        if prefix is None:
            r = syn.set_index("group").loc[HEAD]
            # the simulated study pre-specifies its primary contrast (analysis_plan.json): a fixed sequence
            est, lo, hi, p, fam = (r.pct_vs_vehicle, r.pct_vs_vehicle_ci_low, r.pct_vs_vehicle_ci_high,
                                   r.p_vs_vehicle_adjusted, len(syn))
        else:
            sub = mg[mg.endpoint.str.startswith(prefix)]
            if sub.empty:
                assert m is None
                continue
            r = sub.set_index("group").loc[HEAD]
            est, lo, hi, p, fam = 100 * (r.ratio_vs_vehicle - 1), 100 * (r.ci_low - 1), 100 * (r.ci_high - 1), \
                r.p_holm, len(sub)
        assert m, label
        word, *nums = m.groups()
        assert [float(x) for x in nums[:3]] == [round(est, 1), round(lo, 1), round(hi, 1)], label
        assert (int(nums[3]), int(nums[4])) == (int(r.n_animals), int(r.n_animals_vehicle)), label
        assert (nums[5], nums[6]) == _p_text(p), label
        if nums[7] is not None:  # Holm over the family
            assert int(nums[7]) == fam, label
        else:  # fixed sequence: the primary first, then Holm over the others
            assert prefix is None and int(nums[8]) == fam - 1, label
        expected = "increased" if lo > 0 else "decreased" if hi < 0 else "showed no detectable change"
        assert word == expected, label
        checked += 1
    assert checked >= 5
    # the simulated truth of the headline, from the study's own truth model
    from analysis.sim.validation import true_pct_vs_vehicle

    truth = float(true_pct_vs_vehicle(syn[syn.group == HEAD])[0])
    assert f"Simulated truth {truth:+.1f} %" in text
    # figure, tables, no machine paths
    png = (small_report / "reports" / KEY_FIGURE).read_bytes()
    assert len(png) > 10_000 and f'<a href="{KEY_FIGURE}">' in page
    embedded = re.search(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert embedded and base64.b64decode(embedded[1]) == png  # the page stands alone, the PNG beside it
    for root in (small_report, small_study):
        assert str(root) not in page and str(root.resolve()) not in page
    assert _ABSOLUTE.findall(page) == []
    assert (small_report / "reports" / TABLES_DIR / "microglia_contrasts.csv").exists()
    assert np.isfinite(syn["pct_vs_vehicle"]).all()


def test_index_states_the_mechanism_contrasts(small_report: Path) -> None:
    """The secondary mechanism contrasts (XBD173 against diazepam here) are in the findings, numbers from the table."""
    text = _text((small_report / "reports" / "index.html").read_text(encoding="utf-8"))
    mech = pd.read_csv(small_report / "processed" / "synapse_mechanism.csv")
    assert len(mech) and "Mechanism (synapse density, secondary, p unadjusted)" in text
    for r in mech.itertuples():
        assert f"{r.contrast}: {r.pct_difference:+.1f} % (95 % CI {r.ci_low:+.1f} to {r.ci_high:+.1f} %" in text


def test_methods_list_the_spine_readouts_parameters_when_it_ran() -> None:
    """The spine readout's detector and tracker parameters are in the methods of a study that
    measured spines (configured values marked, the tracer with its defaults), not otherwise."""
    from analysis.report.index import _detector_parameters

    cfg = {"readouts": {"spines": {"k_sigma": 5.0, "max_distance_um": 1.0}}}
    det = _detector_parameters(cfg, {"spines"})
    rows = det.set_index(["function", "parameter"])
    assert rows.loc[("analysis.measure.spines.detect_spines", "k_sigma"), "value"] == "5.0"
    assert rows.loc[("analysis.measure.spines.detect_spines", "k_sigma"), "source"] == "configured"
    assert rows.loc[("analysis.measure.spines.track_spines", "max_distance_um"), "source"] == "configured"
    # the readout traces dendrites with the tracer's defaults, whatever is configured
    assert rows.loc[("analysis.measure.spines.trace_dendrites", "k_sigma"), "source"] == "default"
    assert not any(p in ("image", "images", "trace", "return_all", "pixel_size_um") for p in det["parameter"])
    assert not _detector_parameters(cfg)["function"].str.contains("spines").any()
