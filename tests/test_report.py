"""The study-design notebook runs under papermill on the analysis kernel and renders HTML."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from analysis.report.run import ReportError, recorded, run_notebook, run_report, study_notebooks
from conftest import SMALL_REPORT_PARAMETERS

ROOT = Path(__file__).resolve().parents[1]


def _figures(html: str) -> list[str]:
    """Embedded figures of a rendered notebook (img elements with PNG data, not CSS icons)."""
    return re.findall(r'<img[^>]+src="data:image/png;base64,', html)


@pytest.fixture(scope="module")
def design_report(small_report: Path) -> Path:
    """The session's small-preset report (tests/conftest.py)."""
    return small_report


#: The notebooks the small study gets: every one but the two-photon spines' (it has no
#: dendrite channel; the index names it as skipped, test_index_has_contents_results_and_provenance).
_RUN, _SKIPPED = study_notebooks(pd.DataFrame({"synapse_channel": [0], "microglia_channel": [1], "lysosome_channel": [2]}))
NOTEBOOKS, SKIPPED = tuple(_RUN), [nb for nb, _ in _SKIPPED]


@pytest.mark.slow
def test_design_notebook_records_the_design(design_report: Path) -> None:
    values = recorded(design_report / "reports" / "executed" / "00_study_design.ipynb")
    assert values["n_animals"] == 10
    assert values["n_images"] == 30
    assert values["n_groups"] == 5
    assert set(values["animals_per_group"].values()) == {2}
    summary = (design_report / "processed" / "design_summary.csv").read_text()
    assert "WT diazepam 5 mg/kg x 7 d" in summary


@pytest.mark.slow
def test_design_html_for_reviewers(design_report: Path) -> None:
    html = (design_report / "reports" / "00_study_design.html").read_text()
    assert "Study design" in html and "Example fields" in html
    assert len(_figures(html)) >= 1  # the figure is embedded
    assert "from analysis" not in html  # reviewer HTML has no code cells

    external = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', html)
    assert external == []  # nothing is fetched from another host
    assert "import(\"http" not in html and "cdnjs" not in html
    assert "Traceback" not in html
    nb = nbformat.read(design_report / "reports" / "executed" / "00_study_design.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"]


def test_committed_notebooks_are_stripped_and_parameterised() -> None:
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.outputs or c.execution_count for c in code), f"{path.name} has outputs"
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, path.name
        assert nb.metadata["kernelspec"]["name"] == "analysis"


def test_failing_cell_names_notebook_and_cell(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("raise ValueError('boom in the middle')"),
    ]
    nb.metadata["kernelspec"] = {"name": "analysis", "display_name": "Python (analysis)", "language": "python"}
    src = tmp_path / "broken.ipynb"
    nbformat.write(nb, src)
    with pytest.raises(ReportError, match=r"broken\.ipynb failed in cell .*ValueError: boom in the middle"):
        run_notebook(src, tmp_path / "out" / "broken.ipynb", {"x": 2})
    assert (tmp_path / "out" / "broken.ipynb").exists()


def test_bad_sheet_stops_the_report_before_any_notebook(small_study: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(small_study, data)
    sheet = (data / "samples.csv").read_text().replace(",diazepam,5.0,", ",diazepam,-5.0,", 1)
    (data / "samples.csv").write_text(sheet)
    from analysis.errors import SampleSheetError

    with pytest.raises(SampleSheetError, match="dose_mg_kg"):
        run_report(data, tmp_path / "p", tmp_path / "r", ROOT / "notebooks", quantify=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_whole_report_on_the_small_study(design_report: Path, small_study: Path) -> None:
    import pandas as pd

    reports = design_report / "reports"
    for name in ("00_study_design", "01_quantify_images", "02_synapse_dose_duration", "03_microglia"):
        html = (reports / f"{name}.html").read_text()
        assert len(_figures(html)) >= 1 and "Traceback" not in html, name
        # result tables go through analysis.report.tables.result_table: no "NaN" cell for a reviewer
        assert re.findall(r"<td[^>]*>\s*(?:NaN|nan|None)\s*</td>", html) == [], name
    q = recorded(reports / "executed" / "01_quantify_images.ipynb")
    assert q["n_images_quantified"] == 30 and q["n_images_failed"] == 0
    s = recorded(reports / "executed" / "02_synapse_dose_duration.ipynb")
    contrasts = pd.read_csv(design_report / "processed" / "synapse_contrasts.csv")
    planned = contrasts[contrasts.planned].set_index("group")
    key = "WT diazepam 5 mg/kg x 7 d"
    est, lo, hi, n = s[f"pct_vs_vehicle/{key}"]
    assert est == pytest.approx(planned.loc[key, "pct_vs_vehicle"], abs=0.01)  # notebook = table
    assert n == 2  # animals per group in the small preset
    mg = recorded(reports / "executed" / "03_microglia.ipynb")
    table = pd.read_csv(design_report / "processed" / "microglia_contrasts.csv")
    row = table[table.planned & table.endpoint.str.startswith("engulfed") & (table.group == key)].iloc[0]
    assert mg[f"{row.endpoint}/{key}"][0] == pytest.approx(row.ratio_vs_vehicle, abs=1e-3)


@pytest.mark.slow
def test_index_has_contents_results_and_provenance(design_report: Path, small_study: Path) -> None:
    import hashlib

    import pandas as pd

    html = (design_report / "reports" / "index.html").read_text()
    for name in NOTEBOOKS:
        assert f'href="{name}.html"' in html
        assert f'href="audit/{name}.html"' in html  # the auditor version "with code"
    assert SKIPPED == ["05_spines"]  # no two-photon images: named, with the reason, not linked
    assert "05_spines: This study has no two-photon dendrite (GFP) channel" in html and 'href="05_spines.html"' not in html
    sheet_sha = hashlib.sha256((small_study / "samples.csv").read_bytes()).hexdigest()
    assert sheet_sha in html
    image = sorted((small_study / "images").iterdir())[0]
    assert hashlib.sha256(image.read_bytes()).hexdigest() in html
    c = pd.read_csv(design_report / "processed" / "synapse_contrasts.csv")
    r = c[c.planned & (c.group == "WT diazepam 5 mg/kg x 7 d")].iloc[0]
    assert f"{r.pct_vs_vehicle:+.1f} ({r.pct_vs_vehicle_ci_low:+.1f} to {r.pct_vs_vehicle_ci_high:+.1f})" in html
    assert "numpy" in html and "git commit" in html and "run time" in html
    assert re.findall(r'(?:src|href)="https?://', html) == []
    # the validation notebook's numbers (the small study is simulated, so it has a truth)
    v = recorded(design_report / "reports" / "executed" / "04_validation.ipynb")
    assert "<h2>Validation</h2>" in html and "Against the simulated truth" in html
    assert f"type I error {v['calibration/type1_error']:.3f}" in html
    assert f"coverage of the true effect {v['calibration/coverage']:.3f}" in html
    r_micro = v["agreement/microglia_count"]["pearson_r"]
    assert re.search(rf"<td>microglia per field</td>\s*<td>\d+</td>\s*<td>{r_micro:.3g}</td>", html)


@pytest.mark.slow
def test_auditor_html_has_the_code_and_is_self_contained(design_report: Path) -> None:
    for name in NOTEBOOKS:
        reviewer = (design_report / "reports" / f"{name}.html").read_text()
        audit = (design_report / "reports" / "audit" / f"{name}.html").read_text()
        assert "from analysis" not in reviewer
        assert "from analysis" in re.sub(r"<[^>]+>", "", audit), name  # the code cells are shown
        assert len(_figures(audit)) == len(_figures(reviewer)) >= 1, name
        assert re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', audit) == []
        assert "cdnjs" not in audit and "Traceback" not in audit


@pytest.mark.slow
def test_validation_notebook_against_ground_truth(design_report: Path, small_study: Path) -> None:
    import pandas as pd

    v = recorded(design_report / "reports" / "executed" / "04_validation.ipynb")
    assert v["validation_skipped"] is False
    truth = pd.read_csv(small_study / "ground_truth.csv")
    assert v["n_images_validated"] == len(truth) == 30
    assert v["n_animals_validated"] == 10
    # microglia counts are nearly exact in the simulated fields
    mg = v["agreement/microglia_count"]
    assert mg["n_images"] == int((truth["readout"] == "terminal").sum()) == 10
    assert mg["pearson_r"] > 0.95 and abs(mg["mean_relative_bias"]) < 0.05
    assert v["agreement/synapse_density"]["n_images"] == 20
    assert abs(v["agreement/synapse_density"]["mean_relative_bias"]) < 0.15
    assert v["agreement/skeleton_length_um"]["pearson_r"] > 0.9
    # puncta recall falls with SNR; at the default level it is high
    assert v["accuracy/default"]["puncta_recall"] > 0.9
    assert v["accuracy/hard"]["puncta_recall"] < v["accuracy/high"]["puncta_recall"]
    # calibration: 20 null and 20 effect studies of the small design, 3 planned contrasts each
    assert v["calibration/studies"] == 20
    assert 0.0 <= v["calibration/type1_error"] <= 0.25
    assert 0.75 <= v["calibration/coverage"] <= 1.0
    assert v["calibration/effect/WT diazepam 5 mg/kg x 7 d"]["true_pct"] == pytest.approx(-13.0, abs=0.01)
    html = (design_report / "reports" / "04_validation.html").read_text()
    assert len(_figures(html)) == 3 and "Traceback" not in html
    assert "Calibration end to end" in html and "The statistics alone (perfect counts)" in html


def test_validation_notebook_skips_without_ground_truth(small_study: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(small_study, data)
    (data / "ground_truth.csv").unlink()
    out = run_notebook(ROOT / "notebooks" / "04_validation.ipynb", tmp_path / "04.ipynb",
                       {"data_dir": str(data), "processed_dir": str(tmp_path / "nothing")})
    values = recorded(out)
    assert values == {"validation_skipped": True}
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", []))
    assert "No ground truth" in text and "validation skipped" in text
    # the validation against data we did not make does not need a ground truth: it is shown
    outputs = [o for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", [])]
    tables = [o["data"]["text/html"] for o in outputs if "<table" in o.get("data", {}).get("text/html", "")]
    assert any("<td>big-fish</td>" in t and "<td>ours</td>" in t for t in tables)


def _normalised_html(path: Path, roots: list[Path]) -> str:
    """HTML with the run's own folders, date, run time and git commit replaced by placeholders
    (the commit: a checkout shared with other work may gain commits between the two runs)."""
    text = path.read_text(encoding="utf-8")
    for k, root in enumerate(roots):
        text = text.replace(str(root), "<ROOT>")
    text = re.sub(r"<tr><th>date \(UTC\)</th><td>[^<]*</td></tr>", "<tr><th>date (UTC)</th><td>DATE</td></tr>", text)
    text = re.sub(r"(<tr><th>git commit</th><td><code>)[0-9a-f]{40}", r"\1COMMIT", text)
    return re.sub(r"<tr><th>run time</th><td>[^<]*</td></tr>", "<tr><th>run time</th><td>RUN TIME</td></tr>", text)


@pytest.mark.slow
def test_report_twice_gives_identical_tables_and_html(design_report: Path, small_study: Path,
                                                      small_quantified: Path, tmp_path: Path) -> None:
    """The model fits, every notebook and the HTML are reproducible.

    The second run starts, like the first, from the session's quantification (its images are
    served from the cache: that identical inputs give identical per-image tables is tested on
    fresh runs in test_cache.py and test_parallel.py), so what is compared here is everything
    the report adds to the tables.
    """
    import pandas as pd

    again = tmp_path / "again"
    shutil.copytree(small_quantified, again / "processed")
    run_report(small_study, again / "processed", again / "reports", ROOT / "notebooks", workers=2,
               parameters=SMALL_REPORT_PARAMETERS)
    first, second = design_report / "processed", again / "processed"
    tables = sorted(p.relative_to(first) for p in first.rglob("*") if p.suffix in {".csv", ".parquet"})
    assert {p.relative_to(second) for p in second.rglob("*") if p.suffix in {".csv", ".parquet"}} == set(tables)
    assert len(tables) >= 8
    for rel in tables:
        read = pd.read_csv if rel.suffix == ".csv" else pd.read_parquet
        pd.testing.assert_frame_equal(read(first / rel), read(second / rel), check_exact=True, obj=str(rel))
    for name in NOTEBOOKS:  # the same numbers in every notebook ...
        assert recorded(design_report / "reports" / "executed" / f"{name}.ipynb") == \
            recorded(again / "reports" / "executed" / f"{name}.ipynb"), name
    htmls = sorted(p.relative_to(design_report / "reports") for p in (design_report / "reports").rglob("*.html"))
    assert len(htmls) == 2 * len(NOTEBOOKS) + 1
    for rel in htmls:  # ... and the same HTML up to the date and run time
        a = _normalised_html(design_report / "reports" / rel, [design_report, small_study])
        b = _normalised_html(again / "reports" / rel, [again, small_study])
        if a != b:
            i = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y) if len(a) == len(b) else min(len(a), len(b))
            pytest.fail(f"{rel} differs at {i}: {a[max(0, i - 80):i + 80]!r} vs {b[max(0, i - 80):i + 80]!r}")
