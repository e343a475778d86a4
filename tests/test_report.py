"""The study-design notebook runs under papermill on the analysis kernel and renders HTML."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from analysis.report import ReportError, recorded, run_notebook, run_report

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def design_report(small_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    run_report(
        data_dir=small_study,
        processed_dir=out / "processed",
        reports_dir=out / "reports",
        notebooks_dir=ROOT / "notebooks",
        workers=2,
    )
    return out


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
    assert html.count("data:image/png;base64") >= 1  # the figure is embedded
    assert "from analysis" not in html  # reviewer HTML has no code cells
    import re

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
        assert "data:image/png;base64" in html and "Traceback" not in html
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
    import re

    import pandas as pd

    html = (design_report / "reports" / "index.html").read_text()
    for name in ("00_study_design", "01_quantify_images", "02_synapse_dose_duration", "03_microglia"):
        assert f'href="{name}.html"' in html
    sheet_sha = hashlib.sha256((small_study / "samples.csv").read_bytes()).hexdigest()
    assert sheet_sha in html
    image = sorted((small_study / "images").iterdir())[0]
    assert hashlib.sha256(image.read_bytes()).hexdigest() in html
    c = pd.read_csv(design_report / "processed" / "synapse_contrasts.csv")
    r = c[c.planned & (c.group == "WT diazepam 5 mg/kg x 7 d")].iloc[0]
    assert f"{r.pct_vs_vehicle:+.1f} ({r.pct_vs_vehicle_ci_low:+.1f} to {r.pct_vs_vehicle_ci_high:+.1f})" in html
    assert "numpy" in html and "git commit" in html and "run time" in html
    assert re.findall(r'(?:src|href)="https?://', html) == []
