"""``reports/index.html``: table of contents, key results and provenance of a report run."""

from __future__ import annotations

import datetime as dt
import html
import logging
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from analysis.files import atomic_path, sha256_file

__all__ = ["write_index"]

log = logging.getLogger(__name__)

_PACKAGES = ("analysis", "numpy", "scipy", "scikit-image", "pandas", "statsmodels", "tifffile", "papermill")
_CSS = """body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:0.5rem 0}td,th{border:1px solid #ccc;padding:0.2rem 0.5rem;font-size:0.9rem}
th{background:#f3f3f3}code{font-size:0.85rem}details{margin:0.5rem 0}"""


def _git_commit(start: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=start, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if out.returncode != 0:
        return "unknown (not a git checkout)"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, float_format=lambda v: f"{v:.3g}", escape=True)


def _validation_html(reports_dir: Path) -> str:
    summary = validation_summary(reports_dir)
    if summary is None:
        return ""
    sentence, table = summary
    return ("<h2>Validation against the simulated truth</h2><p>Each image's measured value against its "
            "true value (from <code>04_validation</code>, where the accuracy per SNR level is shown too). "
            f"{html.escape(sentence)} The synapse statistics use the longitudinal fields only: in the "
            "terminal fields (0.2 um pixels) the puncta are undersampled, and their density is not used by "
            "the models.</p>" + (_table(table) if len(table) else ""))


def _toc_entry(reports_dir: Path, name: str) -> str:
    """A contents line: the reviewer HTML, and the auditor HTML (with code) when it exists."""
    n = html.escape(name)
    audit = f' (<a href="audit/{n}.html">with code</a>)' if (reports_dir / "audit" / f"{name}.html").exists() else ""
    return f'<li><a href="{n}.html">{n}</a>{audit}</li>'


def key_results(processed: Path) -> pd.DataFrame:
    """Planned synapse contrasts (effect vs vehicle at the end of dosing) with CIs and n animals."""
    path = processed / "synapse_contrasts.csv"
    if not path.exists():
        return pd.DataFrame()
    c = pd.read_csv(path)
    c = c[c["planned"]]
    return pd.DataFrame(
        {
            "group": c["group"],
            "synapse density vs vehicle, % (95 % CI)": [
                f"{r.pct_vs_vehicle:+.1f} ({r.pct_vs_vehicle_ci_low:+.1f} to {r.pct_vs_vehicle_ci_high:+.1f})"
                for r in c.itertuples()
            ],
            "p (Holm)": c["p_vs_vehicle_holm"].round(3),
            "n animals (treated / vehicle)": [f"{int(a)} / {int(b)}" for a, b in zip(c["n_animals"], c["n_animals_vehicle"])],
        }
    )


def validation_summary(reports_dir: Path) -> tuple[str, pd.DataFrame] | None:
    """What the executed ``04_validation`` notebook recorded, for the index: a sentence on the
    calibration of the synapse model and a table of measured-versus-true agreement per image.

    Returns None when that notebook did not run or had no ground truth.
    """
    from analysis.report import recorded
    from analysis.validation import COMPARISONS

    executed = reports_dir / "executed" / "04_validation.ipynb"
    if not executed.exists():
        return None
    rec = recorded(executed)
    if rec.get("validation_skipped", True):
        return None
    labels = {c.key: c.label for c in COMPARISONS}  # in the notebook's order
    agreement = {k.split("/", 1)[1]: v for k, v in rec.items() if k.startswith("agreement/")}
    order = sorted(agreement, key=lambda q: list(labels).index(q) if q in labels else len(labels))
    rows = [
        {"quantity": labels.get(q, q), "images": agreement[q]["n_images"],
         "Pearson r": agreement[q]["pearson_r"],
         "mean relative bias": f"{100 * agreement[q]['mean_relative_bias']:+.1f} %"}
        for q in order
    ]
    sentence = ""
    if "calibration/studies" in rec:
        sentence = (f"Synapse model on {rec['calibration/studies']} simulated studies of this design without and "
                    f"{rec['calibration/studies']} with the drug effect: type I error "
                    f"{rec['calibration/type1_error']:.3f} (nominal 0.05), 95 % CI coverage of the true effect "
                    f"{rec['calibration/coverage']:.3f}.")
    return sentence, pd.DataFrame(rows)


def write_index(
    reports_dir: Path,
    processed_dir: Path,
    data_dir: Path,
    notebooks: list[str],
    parameters: dict,
    started: dt.datetime,
    finished: dt.datetime,
) -> Path:
    """Write ``index.html``: links to each notebook's HTML, key results and provenance.

    Each notebook is linked to its reviewer HTML (``<name>.html``) and, when present, to its
    auditor HTML with code (``audit/<name>.html``).

    Provenance: git commit, Python and package versions, parameters, SHA-256 of the sample
    sheet and of every input file (from ``raw_manifest.csv`` when the pipeline wrote one),
    date and run time.
    """
    reports_dir, processed_dir, data_dir = Path(reports_dir), Path(processed_dir), Path(data_dir)
    manifest_csv = processed_dir / "raw_manifest.csv"
    if manifest_csv.exists():
        manifest = pd.read_csv(manifest_csv)
    else:
        files = sorted(p for p in data_dir.rglob("*") if p.is_file())
        manifest = pd.DataFrame({"path": [str(p.relative_to(data_dir)) for p in files],
                                 "sha256": [sha256_file(p) for p in files]})
    sheet_sha = sha256_file(data_dir / "samples.csv")
    toc = "".join(_toc_entry(reports_dir, n) for n in notebooks)
    results = key_results(processed_dir)
    failures_csv = processed_dir / "failures.csv"
    n_failed = len(pd.read_csv(failures_csv)) if failures_csv.exists() else 0
    versions = pd.DataFrame(sorted(_versions().items()), columns=["package", "version"])
    params = pd.DataFrame(sorted((k, str(v)) for k, v in parameters.items()), columns=["parameter", "value"])
    body = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>Synapse and microglia report</title><style>{_CSS}</style></head><body>
<h1>Long-term benzodiazepine study: synapse and microglia report</h1>
<h2>Contents</h2>
<p>Each notebook for reviewers (results and prose only); "with code" is the same executed notebook
with every code cell, for auditors.</p><ol>{toc}</ol>
<h2>Key results</h2>
<p>Change in PSD95 synapse density from baseline to the end of dosing, relative to the vehicle
group of the same genotype and duration (linear mixed model, animals as the unit; p values
Holm-adjusted over these planned contrasts). Images excluded from quantification: {n_failed}.</p>
{_table(results) if len(results) else "<p>No synapse contrasts were computed.</p>"}
{_validation_html(reports_dir)}<h2>Provenance</h2>
<table><tr><th>git commit</th><td><code>{html.escape(_git_commit(Path(__file__).parent))}</code></td></tr>
<tr><th>date (UTC)</th><td>{finished.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}</td></tr>
<tr><th>run time</th><td>{(finished - started).total_seconds():.0f} s</td></tr>
<tr><th>sample sheet SHA-256</th><td><code>{sheet_sha}</code></td></tr>
<tr><th>input files</th><td>{len(manifest)}</td></tr></table>
<details><summary>Package versions</summary>{_table(versions)}</details>
<details><summary>Parameters</summary>{_table(params)}</details>
<details><summary>SHA-256 of every input file</summary>{_table(manifest[["path", "sha256"]])}</details>
</body></html>
"""
    out = reports_dir / "index.html"
    with atomic_path(out) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return out
