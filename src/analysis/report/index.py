"""``reports/index.html``: the page a reviewer reads first.

In order: what was found (generated sentences, :mod:`analysis.report.findings`), one key figure with
every animal as a dot, the table of every primary endpoint in design order with effect sizes,
the dose x time trend, the dose-response and recovery fits (unidentified ones shown as "not
estimable" with the reason), the notebooks, the validation, a methods section generated from
what ran (detector parameters, model formulas, degrees of freedom, multiplicity families, ARRIVE
essentials: n per group, sex, exclusions) and provenance (git commit, every package version,
preset and seed, SHA-256 of every input).  The page names no absolute path of the machine it
was made on: folders are given by name, files relative to the sample sheet or the page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import inspect
import json
import logging
import os
import platform
import re
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, distribution, requires, version
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.report import findings as F
from analysis.io.files import atomic_path, sha256_file

__all__ = ["write_index", "real_validation_line", "key_results", "dependency_versions", "KEY_FIGURE",
           "TABLES_DIR", "redact_paths"]

log = logging.getLogger(__name__)

#: The key figure, written next to ``index.html``.
KEY_FIGURE = "key_findings.png"
#: Subfolder of the reports folder with copies of the fitted tables the page links to.
TABLES_DIR = "tables"
#: Panels of the key figure: (endpoint key of :data:`analysis.report.findings.ENDPOINTS`, title).
KEY_PANELS: tuple[tuple[str, str], ...] = (
    ("synapse_density", "Synapse density (change from baseline)"),
    ("microglia_density", "Microglia density"),
    ("engulfment", "Engulfed PSD95 puncta per microglia"),
    ("skeleton_length", "Microglia skeleton length"),
)
_CSS = """body{font-family:sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:0.5rem 0}td,th{border:1px solid #ccc;padding:0.2rem 0.5rem;font-size:0.85rem;
vertical-align:top;white-space:normal;overflow-wrap:break-word}th{background:#f3f3f3;text-align:left}td.num{white-space:nowrap}
tr.section th{background:#e4ecf5}td:first-child{min-width:11rem}code{font-size:0.85rem}details{margin:0.5rem 0}.abstract p{margin:0.4rem 0}
.ne{color:#8a3b00}figure{margin:1rem 0}figure img{max-width:100%}figcaption{font-size:0.85rem;color:#444}"""


def _git_commit(start: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=start, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if out.returncode != 0:
        return "unknown (not a git checkout)"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


# ---------------------------------------------------------------- package versions

def _requirement(text: str) -> str | None:
    """The distribution name of a requirement line, or None when its marker excludes it here."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging comes with pip and setuptools
        if "extra ==" in text:
            return None
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", text)
        return m.group(1) if m else None
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return None
    return req.name


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _direct_requirements() -> list[str]:
    """Runtime requirements of ``analysis``: its installed metadata and, in a checkout, pyproject.toml."""
    lines = list(requires("analysis") or []) if _installed("analysis") else []
    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
    if pyproject.exists():
        import tomllib

        try:
            lines += tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
        except (KeyError, tomllib.TOMLDecodeError):
            pass
    names = [_requirement(x) for x in lines]
    return list(dict.fromkeys(n for n in names if n))


def _installed(name: str) -> bool:
    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True


def dependency_versions() -> pd.DataFrame:
    """Every installed distribution ``analysis`` depends on, directly or not, with its version.

    Walks the runtime requirements (extras left out, environment markers evaluated) from
    ``analysis`` down.  Returns ``package``, ``version`` and ``required as`` ("direct" for
    requirements of ``analysis``, else "via <first package that requires it>"), Python first,
    then ``analysis``, then the rest by name.
    """
    rows = {"python": ("python", platform.python_version(), "interpreter")}
    rows["analysis"] = ("analysis", version("analysis") if _installed("analysis") else "not installed", "this package")
    queue = [(n, "direct") for n in _direct_requirements()]
    while queue:
        name, via = queue.pop(0)
        key = _canonical(name)
        if key in rows:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            rows[key] = (name, "not installed", via)
            continue
        rows[key] = (dist.metadata["Name"] or name, dist.version, via)
        for req in dist.requires or []:
            sub = _requirement(req)
            if sub and _canonical(sub) not in rows:
                queue.append((sub, f"via {dist.metadata['Name'] or name}"))
    first = [rows.pop("python"), rows.pop("analysis")]
    rest = sorted(rows.values(), key=lambda r: r[0].lower())
    return pd.DataFrame(first + rest, columns=["package", "version", "required as"])


# ---------------------------------------------------------------- no machine paths on the page

def redact_paths(value):
    """``value`` with every absolute path replaced by its last component (lists and dicts walked).

    Examples
    --------
    >>> redact_paths({"data_dir": "/home/me/study", "n": 2, "files": ["/tmp/a/b.csv", "images/c.tif"]})
    {'data_dir': 'study', 'n': 2, 'files': ['b.csv', 'images/c.tif']}
    """
    if isinstance(value, dict):
        return {k: redact_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_paths(v) for v in value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and (os.path.isabs(value) or re.match(r"^[A-Za-z]:[\\/]", value)):
        return Path(value).name or value
    return value


def _relative_to(path: str, base: Path) -> str:
    """An absolute ``path`` as seen from ``base`` (``../../elsewhere/d.tif``); relative paths unchanged."""
    if not os.path.isabs(path):
        return path
    try:
        return os.path.relpath(path, base.resolve())
    except ValueError:  # another drive (Windows)
        return redact_paths(path)


# ---------------------------------------------------------------- HTML helpers

def _e(text) -> str:
    return html.escape(str(text), quote=False)


def _table(df: pd.DataFrame) -> str:
    with pd.option_context("display.max_colwidth", None):
        return df.to_html(index=False, border=0, float_format=lambda v: f"{v:.3g}", escape=True)


def _html_table(df: pd.DataFrame, *, section: str | None = None, cell_class: dict[str, str] | None = None) -> str:
    """A table of display strings, never truncated; with ``section`` a header row per value of that column."""
    cols = [c for c in df.columns if c != section]
    head = "<tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>"
    body = []
    current = None
    for _, r in df.iterrows():
        if section is not None and r[section] != current:
            current = r[section]
            body.append(f'<tr class="section"><th colspan="{len(cols)}">{_e(current)}</th></tr>')
        cells = []
        for c in cols:
            v = "" if r[c] is None or (isinstance(r[c], float) and np.isnan(r[c])) else r[c]
            cls = (cell_class or {}).get(c)
            if cls and str(v).startswith("not estimable"):
                klass = f' class="{cls}"'
            elif re.fullmatch(r"[-+0-9.e ()/]*(to [-+0-9.e ()]*)?(\(of \d+\))?", str(v)):
                klass = ' class="num"'
            else:
                klass = ""
            cells.append(f"<td{klass}>{_e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


#: Anchor of the section of ``04_validation`` that shows ``benchmarks/validation_real.md``
#: (nbconvert's id for the heading "Against data we did not make").
REAL_VALIDATION_ANCHOR = "04_validation.html#Against-data-we-did-not-make"


def real_validation_line(reports_dir: Path) -> str:
    """One HTML paragraph on the validation against data we did not make ("" without the file).

    It names the parts of ``benchmarks/validation_real.md``, links to the section of
    ``04_validation`` that shows them (when that notebook's HTML is in ``reports_dir``) and
    states the date and commit the numbers were generated at.
    """
    from analysis.report.validation import load_real_validation

    real = load_real_validation()
    if real is None:
        return ""
    parts = "; ".join(re.sub(r"^[a-z0-9]{1,2}[.)]\s+", "", t) for t in real.sections if t)
    where = (f'<a href="{REAL_VALIDATION_ANCHOR}">04_validation: Against data we did not make</a>'
             if (reports_dir / "04_validation.html").exists() else "<code>benchmarks/validation_real.md</code>")
    commit, _, remark = (real.commit or "not stated").partition(" ")
    return (f"<p>Against data we did not make: our puncta detector, microglia segmentation and spine detector beside peer methods on the same images "
            f"({html.escape(parts)}), in {where}. Generated by <code>make validate</code> on "
            f"{html.escape(real.date or 'a date not stated')} at commit <code>{html.escape(commit)}</code>"
            f"{' ' + html.escape(remark) if remark else ''}.</p>")


# ---------------------------------------------------------------- the study and its findings

def _study_facts(data_dir: Path) -> dict:
    """Preset, seed and whether the study is simulated (from ``study_truth.json``)."""
    path = data_dir / "study_truth.json"
    if not path.exists():
        return {"simulated": False}
    try:
        study = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"simulated": False}
    return {"simulated": True, "preset": study.get("preset"), "seed": study.get("seed"),
            "null": bool(study.get("null", False))}


def key_results(processed: Path) -> pd.DataFrame:
    """The primary endpoints' contrasts in design order (:func:`analysis.report.findings.primary_table`)."""
    return F.primary_table(F.endpoint_contrasts(F.load_tables(processed), F.study_group_order(processed)))


def _abstract_html(findings: list[F.Finding], trend: list[F.Finding], estimab: pd.DataFrame, facts: dict) -> str:
    paragraphs = [f.text for f in [*findings, *trend] if f.kind != "item"]
    if len(estimab):
        bad = estimab[~estimab["estimable"].astype(bool)]
        if len(bad):
            items = "; ".join(f"{r.label} of {r.what}: {r.reason}" for r in bad.itertuples())
            paragraphs.append(f"Not estimable from these data (shown as such in the tables below): {items}.")
    if not paragraphs:
        return "<p>No primary endpoint was fitted (no fitted tables in the processed folder).</p>"
    intro = ("Percent changes are versus the vehicle group of the same genotype and dosing duration at the end of "
             "dosing, with 95 % confidence intervals; n counts animals; p values are adjusted over the planned "
             "contrasts of each endpoint (Holm; for synapse density a primary contrast named in the analysis plan "
             "is tested first). \"No detectable change\" means the 95 % CI includes 0.")
    if facts.get("simulated"):
        intro += (" The study is simulated: each statement gives the simulation's true effect and whether the CI "
                  "covers it.")
    return (f'<div class="abstract"><p><em>{_e(intro)}</em></p>'
            + "".join(f"<p>{_e(p)}</p>" for p in paragraphs) + "</div>")


def _key_figure(reports: Path, processed: Path, contrasts: pd.DataFrame) -> str:
    """Write the key figure next to index.html and return its HTML (empty when nothing to draw)."""
    import matplotlib.pyplot as plt

    from analysis.report.figures import key_findings_figure

    animals = F.animal_values(processed)
    present = set(contrasts["endpoint"]) | set(animals["endpoint"])
    panels = [(k, t) for k, t in KEY_PANELS if k in present]
    out = reports / KEY_FIGURE
    if not panels:
        out.unlink(missing_ok=True)
        return ""
    fig = key_findings_figure(animals, contrasts, panels)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    n = animals.groupby("endpoint")["animal_id"].nunique().to_dict()
    sizes = ", ".join(f"{F.lower_label(t)} {n.get(k, 0)}" for k, t in panels)
    caption = ("Each dot is one animal: its value over the mean of its vehicle group (synapse density: its change "
               "from baseline to the end of dosing over the vehicle group's). Black diamonds and bars: the model's "
               "estimate and 95 % CI of the contrast versus vehicle (the numbers of the table below)"
               + ("; red crosses: the simulated truth" if "truth_pct" in contrasts else "")
               + f". Log-ratio axes labelled in percent. Animals per panel: {sizes}.")
    data = base64.b64encode(out.read_bytes()).decode("ascii")  # embedded, so the page stands alone
    return (f'<figure><a href="{KEY_FIGURE}"><img src="data:image/png;base64,{data}" alt="Key findings: synapse '
            'density, microglia density, engulfment and skeleton length versus vehicle by group, every animal as a '
            f'dot"></a><figcaption>{_e(caption)} (<a href="{KEY_FIGURE}">PNG file</a>)</figcaption></figure>')


def _endpoint_html(contrasts: pd.DataFrame) -> str:
    if contrasts.empty:
        return "<p>No primary endpoint contrasts were computed.</p>"
    table = F.primary_table(contrasts)
    return _html_table(table, section="endpoint (unit)", cell_class={"change vs vehicle, % (95 % CI)": "ne"})


def _trend_html(trend: pd.DataFrame | None) -> str:
    if trend is None or trend.empty:
        return "<p>The dose x time trend model was not fitted (the design has too few doses or animals).</p>"
    rows = [{"term": r.term, "meaning": r.meaning,
             "change per unit, % (95 % CI)": f"{r.pct_per_unit:+.2f} ({r.ci_low:+.2f} to {r.ci_high:+.2f})",
             "p (unadjusted)": f"{r.p_value:.3g}", "df": f"{r.df:g}", "n animals": int(r.n_animals)}
            for r in trend.itertuples()]
    first = trend.iloc[0]
    return (f"<p>{_e(first['genotype'])} vehicle and {_e(first['compound'])} animals; random effects: "
            f"{_e(first['random_effects'])}; {int(first['n_images'])} images.</p>"
            + _html_table(pd.DataFrame(rows)))


def _fmt(v: float) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.3g}"


def _fits_html(estimab: pd.DataFrame, mechanism: pd.DataFrame | None) -> str:
    parts = []
    if len(estimab):
        rows = []
        for r in estimab.itertuples():
            if r.estimable:
                ci = "" if not np.isfinite(r.ci_low) else f" ({_fmt(r.ci_low)} to {_fmt(r.ci_high)})"
                shown = f"{_fmt(r.estimate)}{ci}" + ("" if np.isfinite(r.ci_low) else " (no CI: point estimate)")
            else:
                shown = f"not estimable: {r.reason}"
            rows.append({"fit": r.fit, "arm or group": r.what, "parameter": r.label, "unit": r.unit,
                         "estimate (95 % CI)": shown,
                         "n animals": "" if pd.isna(r.n_animals) else str(int(r.n_animals))})
        parts.append(_html_table(pd.DataFrame(rows), cell_class={"estimate (95 % CI)": "ne"}))
    else:
        parts.append("<p>No dose-response (needs three or more doses with vehicle) or recovery (needs two or more "
                     "sessions after the last dose) fit for this design.</p>")
    if mechanism is not None and len(mechanism):
        rows = [{"contrast": r.contrast, "difference, % (95 % CI)": F.format_ci(r.pct_difference, r.ci_low, r.ci_high),
                 "p (unadjusted)": f"{r.p_value:.3g}", "df": f"{r.df:g}"} for r in mechanism.itertuples()]
        parts.append("<p>Mechanism contrasts (differences of vehicle-corrected changes at the end of dosing):</p>"
                     + _html_table(pd.DataFrame(rows)))
    return "".join(parts)


def _copy_tables(reports: Path, processed: Path, contrasts: pd.DataFrame, estimab: pd.DataFrame) -> str:
    """Copy the fitted tables next to the page (so the links work wherever the folder goes) and list them."""
    from analysis.io.files import write_csv

    dest = reports / TABLES_DIR
    dest.mkdir(parents=True, exist_ok=True)
    links = []
    if len(contrasts):
        write_csv(contrasts, dest / "primary_endpoints.csv")
        links.append(("primary_endpoints.csv", "the endpoint table above, unrounded"))
    if len(estimab):
        write_csv(estimab, dest / "fit_estimability.csv")
        links.append(("fit_estimability.csv", "dose-response and recovery estimates with the estimability rule"))
    for name in F.TABLES:
        src = processed / name
        if src.exists():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(src, tmp)
            links.append((name, "as fitted"))
    for extra in ("synapse_lmm_coefficients.csv", "synapse_lmm_diagnostics.csv", "synapse_dose_response_curve.csv",
                  "synapse_dose_response_animals.csv"):
        src = processed / extra
        if src.exists():
            with atomic_path(dest / extra) as tmp:
                shutil.copyfile(src, tmp)
            links.append((extra, "as fitted"))
    if not links:
        return ""
    items = "".join(f'<li><a href="{TABLES_DIR}/{_e(n)}">{_e(n)}</a> ({_e(w)})</li>' for n, w in links)
    return f"<details><summary>Full tables (CSV)</summary><ul>{items}</ul></details>"


# ---------------------------------------------------------------- methods, generated from what ran

#: Readout functions whose parameters the methods list (``QuantifyParams`` field, import path).
_DETECTORS: tuple[tuple[str, str, str], ...] = (
    ("puncta", "analysis.measure.puncta", "detect_puncta"),
    ("microglia", "analysis.measure.microglia", "segment_microglia"),
    ("lysosomes", "analysis.measure.engulfment", "segment_lysosomes"),
    # the spine readout: dendrites traced with their defaults, its parameters (QuantifyParams.readouts
    # ["spines"]) given to the detector and to the tracker (which passes the detector's on)
    ("readouts.spines", "analysis.measure.spines", "trace_dendrites"),
    ("readouts.spines", "analysis.measure.spines", "detect_spines"),
    ("readouts.spines", "analysis.measure.spines", "track_spines"),
)
#: Detectors that take no configured parameters (run with their defaults).
_DEFAULTS_ONLY = {"trace_dendrites"}
#: Arguments that come from each image, not from the parameters.
_PER_IMAGE_ARGS = {"image", "images", "pixel_size_um", "z_step_um", "mask", "trace", "return_all"}
#: Per-image quality columns summarised in the methods (column, label).
_QUALITY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("measured_snr", "measured SNR"),
    ("puncta_median_snr", "median punctum SNR"),
    ("spike_in_recall", "estimated recall (spike-in)"),
    ("est_precision", "estimated precision"),
    ("saturated_fraction", "saturated pixel fraction"),
)


def _detector_parameters(quantify: dict, readouts: set[str] | None = None) -> pd.DataFrame:
    """Every parameter of each detector as it ran: the configured value, else the function's default.

    ``readouts``: the registered readouts beyond the built-in three (``"spines"``) that ran in
    this study; their detectors are listed only then (default: none)."""
    import importlib

    rows = []
    for key, module, name in _DETECTORS:
        if key.startswith("readouts."):
            readout = key.split(".", 1)[1]
            if readout not in (readouts or set()):
                continue
            given = {} if name in _DEFAULTS_ONLY else dict((quantify.get("readouts") or {}).get(readout) or {})
        else:
            given = dict(quantify.get(key) or {})
        try:
            func = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        for p in inspect.signature(func).parameters.values():
            if p.name in _PER_IMAGE_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if p.name in given:
                rows.append({"function": f"{module}.{name}", "parameter": p.name,
                             "value": repr(redact_paths(given.pop(p.name))), "source": "configured"})
            elif p.default is not p.empty:
                rows.append({"function": f"{module}.{name}", "parameter": p.name, "value": repr(p.default),
                             "source": "default"})
        if not key.startswith("readouts."):  # (a readout's parameters are shared by its functions)
            for k, v in given.items():
                rows.append({"function": f"{module}.{name}", "parameter": k, "value": repr(redact_paths(v)),
                             "source": "configured"})
    try:
        from analysis.pipeline.quantify import QUALITY_DEFAULTS
    except ImportError:
        QUALITY_DEFAULTS = {}
    quality = {**QUALITY_DEFAULTS, **(quantify.get("quality") or {})}
    for k, v in quality.items():
        rows.append({"function": "per-image quality (spike-in)", "parameter": k, "value": repr(redact_paths(v)),
                     "source": "configured" if k in (quantify.get("quality") or {}) else "default"})
    return pd.DataFrame(rows, columns=["function", "parameter", "value", "source"])


def _n_clipped(measurements: pd.DataFrame) -> int:
    """Spine images whose background is clipped at the floor (``background_clipped``)."""
    return int(measurements["background_clipped"].eq(True).sum()) if "background_clipped" in measurements else 0


def _quality_summary(measurements: pd.DataFrame | None) -> pd.DataFrame:
    if measurements is None or measurements.empty:
        return pd.DataFrame()
    rows = []
    # two-photon spine images are their own kind: their SNR and recall are the spine
    # detector's (analysis.measure.spine_quality), not the puncta detector's
    spine = (measurements["dendrite_channel"].notna() if "dendrite_channel" in measurements
             else pd.Series(False, index=measurements.index))
    kinds = {"longitudinal synapse fields": (measurements["microglia_channel"].isna()
                                             if "microglia_channel" in measurements
                                             else pd.Series(True, index=measurements.index)) & ~spine}
    if "microglia_channel" in measurements and measurements["microglia_channel"].notna().any():
        kinds["terminal fields"] = measurements["microglia_channel"].notna() & ~spine
    if spine.any():
        kinds["two-photon spine images"] = spine
    for kind, mask in kinds.items():
        sub = measurements[mask]
        for col, label in _QUALITY_COLUMNS:
            if col not in sub or sub[col].notna().sum() == 0:
                continue
            v = sub[col].dropna().astype(float)
            rows.append({"images": kind, "quantity": label, "n images": len(v), "median": f"{v.median():.3g}",
                         "min to max": f"{v.min():.3g} to {v.max():.3g}"})
        if "in_validated_range" in sub and len(sub):
            inside = sub["in_validated_range"].fillna(False).astype(bool)
            rows.append({"images": kind, "quantity": "in the detector's validated range",
                         "n images": len(sub), "median": "", "min to max": f"{int(inside.sum())} of {len(sub)} images"})
        clipped = _n_clipped(sub)
        if clipped:  # (spine images: their quality columns are not validated there)
            rows.append({"images": kind, "quantity": "background clipped at the floor (quality not validated)",
                         "n images": len(sub), "median": "", "min to max": f"{clipped} of {len(sub)} images"})
    return pd.DataFrame(rows)


def _models_html(tables: dict[str, pd.DataFrame], contrasts: pd.DataFrame) -> str:
    from analysis.stats.trend import FORMULA as TREND_FORMULA

    items = []
    syn = tables.get("synapse_contrasts")
    var = tables.get("synapse_lmm_variance")
    if syn is not None and len(syn):
        df = syn["df"].dropna().unique() if "df" in syn else []
        conv = ""
        if var is not None and len(var) and "converged" in var:
            conv = " converged" if bool(var["converged"].iloc[0]) else " did NOT converge"
            w = str(var["warnings"].iloc[0]) if "warnings" in var and pd.notna(var["warnings"].iloc[0]) else ""
            conv += f" (fit warnings: {w})" if w else " without warnings"
        quality = ""
        if var is not None and len(var) and "quality_adjustment" in var and pd.notna(var["quality_adjustment"].iloc[0]):
            quality = f" Image quality (analysis.stats.fit_study): {var['quality_adjustment'].iloc[0]}."
        items.append(f"Synapse density: {F.MODEL_FORMULAS['synapse_lmm']}. The fit{conv}.{quality} Contrasts use "
                     f"Student's t with df = animals minus groups (the between-animal containment rule): df = "
                     f"{', '.join(f'{d:g}' for d in df) or 'not recorded'}.")
    spine = tables.get("spine_contrasts")
    if spine is not None and len(spine):
        adjusted = tables.get("spine_contrasts_snr_adjusted")
        sens = (" Sensitivity analysis (spine_contrasts_snr_adjusted.csv): the same model with each image's log "
                "measured SNR as a covariate, for imaging that changed between sessions of the same dendrites."
                if adjusted is not None and len(adjusted) else "")
        items.append(f"Dendritic spine density: {F.MODEL_FORMULAS['synapse_lmm']}, with a random intercept per "
                     "imaged position as well where the same dendrites are imaged every session (the sheet's "
                     f"field).{sens}")
    mg = tables.get("microglia_contrasts")
    if mg is not None and len(mg):
        items.append(f"Microglia density and engulfed puncta per cell: {F.MODEL_FORMULAS['count']}. "
                     "CIs and p values use Student's t on the residual df (animals minus groups).")
        items.append(f"CD68 area fraction, skeleton length, branch points, Sholl area: {F.MODEL_FORMULAS['morphology']}; "
                     "Cohen's d = log ratio over the between-animal SD; cells touching the field border are left out.")
    trend = tables.get("synapse_trend")
    if trend is not None and len(trend):
        items.append(f"Dose x time trend: {TREND_FORMULA} (analysis.stats.trend; dose = log2(1 + mg/kg), on / off = weeks "
                     f"on drug / since the last dose), random effects: {trend['random_effects'].iloc[0]}; "
                     f"df = animals minus between-animal fixed effects = {trend['df'].iloc[0]:g}.")
    if tables.get("synapse_dose_response") is not None and len(tables["synapse_dose_response"]):
        items.append(f"Dose-response: {F.MODEL_FORMULAS['dose_response']}.")
    if tables.get("synapse_recovery") is not None and len(tables["synapse_recovery"]):
        items.append(f"Recovery: {F.MODEL_FORMULAS['recovery']}; time constant bounded to "
                     f"{F.RECOVERY_TAU_BOUNDS_DAYS[0]:g}-{F.RECOVERY_TAU_BOUNDS_DAYS[1]:g} d.")
    items.append(
        f"Not estimable: an ED50 whose 95 % CI spans more than a factor {F.MAX_CI_RATIO:g} or whose estimate or CI "
        f"limit lies within {100 * F.BOUND_TOLERANCE:g} % of a fit bound (lowest dose / {F.ED50_BOUND_FACTOR:g}, "
        f"highest x {F.ED50_BOUND_FACTOR:g}), with the Emax fitted alongside it; a recovery time constant at a fit "
        f"bound or beyond {F.MAX_TAU_FOLLOW_UP:g} x the follow-up.")
    fam = []
    if len(contrasts):
        for e in F.ENDPOINTS:
            k = contrasts.loc[(contrasts["endpoint"] == e.key) & (contrasts["role"] == "treated"), "n_family"]
            if len(k):
                fam.append(f"{F.lower_label(e.label)}: {int(k.iloc[0])}")
    items.append("Multiplicity: the planned contrasts are each treated group versus its vehicle group (same genotype "
                 "and dosing duration) at the end of dosing; their p values are Holm-adjusted within each endpoint "
                 f"(family sizes: {'; '.join(fam) or 'none'}){_sequence_note(contrasts)}. Other sessions, the trend terms, the dose-response, "
                 "recovery and mechanism contrasts are estimates with unadjusted p values.")
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _sequence_note(contrasts: pd.DataFrame) -> str:
    """``"; synapse density: fixed sequence ..."`` when the synapse family was tested as one."""
    if "adjustment" not in contrasts:
        return ""
    # (an all-empty column is float: filling it with "" is deprecated in pandas, so test the strings)
    adjustment = contrasts["adjustment"]
    seq = adjustment[adjustment.map(lambda a: isinstance(a, str) and a.startswith("fixed sequence"))]
    if seq.empty:
        return ""
    return (f", except synapse density, tested as a {seq.iloc[0]} (the primary contrast pre-specified in "
            "analysis_plan.json is tested at the full 5 %; the others only if it is significant)")


def _arrive_html(processed: Path, data_dir: Path, measurements: pd.DataFrame | None,
                 tables: dict[str, pd.DataFrame]) -> str:
    """ARRIVE essentials: animals per group with sex, images, and every exclusion with its reason."""
    from analysis.io.vocabulary import group_label

    sheet = measurements
    failures = tables.get("failures")
    if failures is None:
        failures = pd.DataFrame(columns=["image_id", "path", "reason"])
    if sheet is None or sheet.empty:
        path = data_dir / "samples.csv"
        try:
            sheet = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            sheet = None
    parts = []
    if sheet is not None and len(sheet) and {"genotype", "compound", "dose_mg_kg", "treatment_days"} <= set(sheet):
        s = sheet.copy()
        order = F.group_order(s)
        s["group"] = [group_label(r.genotype, r.compound, float(r.dose_mg_kg), int(r.treatment_days))
                      for r in s.itertuples()]
        failed = set(failures["image_id"].astype(str)) if len(failures) else set()
        rows = []
        for g, sub in s.groupby("group", sort=False):
            r0 = sub.iloc[0]
            animals = sub.drop_duplicates("animal_id")
            sexes = animals["sex"].fillna("not recorded").value_counts() if "sex" in animals else pd.Series(dtype=int)
            rows.append({"_k": F.design_rank(r0.genotype, r0.compound, float(r0.dose_mg_kg), int(r0.treatment_days),
                                             order),
                         "group": g, "animals": animals["animal_id"].nunique(),
                         "sex": ", ".join(f"{k} {v}" for k, v in sorted(sexes.items())) or "not recorded",
                         "cohorts": ", ".join(f"{k} {v}" for k, v in sorted(
                             animals["cohort"].value_counts().items())) if "cohort" in animals else "",
                         "images measured": len(sub),
                         "images excluded": int(sub["image_id"].astype(str).isin(failed).sum())})
        table = pd.DataFrame(rows).sort_values("_k", kind="stable").drop(columns="_k")
        total = table["animals"].sum()
        parts.append(f"<p>{int(total)} animals in {len(table)} groups; the animal is the unit of analysis "
                     "(fields and cells are repeated measures within it).</p>" + _html_table(table))
    excl = []
    if len(failures):
        excl += [f"image {r.image_id} ({_relative_to(str(r.path), data_dir)}): {r.reason}" for r in failures.itertuples()]
    coef = processed / "synapse_lmm_coefficients.csv"
    if coef.exists():
        c = pd.read_csv(coef)
        if "n_zero_fields_excluded" in c and c["n_zero_fields_excluded"].sum() > 0:
            excl.append(f"{int(c['n_zero_fields_excluded'].sum())} synapse field(s) with zero density left out of "
                        "the log model (a failed image or detection, not a density)")
    cells = processed / "cells.parquet"
    if cells.exists():
        try:
            border = pd.read_parquet(cells, columns=["touches_border"])["touches_border"].astype(bool)
            excl.append(f"{int(border.sum())} of {len(border)} microglia touching the field border left out of the "
                        "morphology and CD68 endpoints (their arbor is cut); all cells count for density and engulfment")
        except (KeyError, ValueError, OSError):
            pass
    if measurements is not None and "in_validated_range" in measurements:
        out = int((~measurements["in_validated_range"].fillna(False).astype(bool)).sum())
        if out:
            clipped = _n_clipped(measurements)
            why = f" ({clipped} of them spine images with a background clipped at the floor)" if clipped else ""
            excl.append(f"{out} image(s) outside the detector's validated range{why}: flagged, kept in the models")
    parts.append("<p>Exclusions" + (":</p><ul>" + "".join(f"<li>{_e(x)}</li>" for x in excl) + "</ul>"
                                    if excl else ": none.</p>"))
    parts.append("<p>Randomisation, blinding and the sample-size calculation are not recorded in the sample sheet; "
                 "state them with the study.</p>")
    return "".join(parts)


def _methods_html(processed: Path, data_dir: Path, parameters: dict, tables: dict[str, pd.DataFrame],
                  contrasts: pd.DataFrame) -> str:
    m_path = processed / "measurements.parquet"
    measurements = pd.read_parquet(m_path) if m_path.exists() else None
    quantify = parameters.get("quantify") if isinstance(parameters.get("quantify"), dict) else {}
    ran = set()
    if measurements is not None and "spine_density_per_um" in measurements \
            and measurements["spine_density_per_um"].notna().any():
        ran.add("spines")
    det = _detector_parameters(quantify or {}, ran)
    quality = _quality_summary(measurements)
    return (
        "<h2>Methods (generated from this run)</h2>"
        "<h3>Measurement</h3><p>Each image is measured by the registered readouts with the parameters below "
        "(physical units; pixel size and z step per image from the sample sheet or the file's OME metadata). "
        "Every image row carries its quality: measured SNR, the detector's recall and precision estimated by "
        "spike-in on that image, the saturated fraction and whether it lies in the validated range.</p>"
        + (f"<details><summary>Detector parameters ({len(det)})</summary>{_html_table(det)}</details>" if len(det) else "")
        + (_html_table(quality) if len(quality) else "")
        + "<h3>Models</h3>" + _models_html(tables, contrasts)
        + "<h3>Animals and exclusions (ARRIVE essentials)</h3>" + _arrive_html(processed, data_dir, measurements, tables)
    )


def validation_summary(reports_dir: Path) -> tuple[str, pd.DataFrame] | None:
    """What the executed ``04_validation`` notebook recorded, for the index: a sentence on the
    calibration of the synapse model and a table of measured-versus-true agreement per image.

    Returns None when that notebook did not run or had no ground truth.
    """
    from analysis.report.record import recorded
    from analysis.report.validation import COMPARISONS

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
    e2e = rec.get("e2e_calibration")
    if isinstance(e2e, dict):
        sentence = ("End to end (simulated studies of the default design whose images went through the detector, "
                    f"then the report's model; benchmarks/calibration_e2e.md): primary contrast power "
                    f"{e2e.get('primary power (adjusted)')} at the report's multiplicity adjustment, bias "
                    f"{e2e.get('primary bias, points')} points, coverage of the planned contrasts "
                    f"{e2e.get('coverage, planned contrasts (min-max)')}, family-wise error under the null "
                    f"{e2e.get('null: family-wise error')}. ")
    def coverage_range(key: str) -> str | None:
        """'a-b with the drug effect, c-d without' of a recorded {"<preset> <endpoint>": coverage}."""
        recorded = rec.get(key)
        if not isinstance(recorded, dict):
            return None
        cov = [float(v) for k, v in recorded.items() if k.startswith("default ")]
        null = [float(v) for k, v in recorded.items() if k.startswith("null ")]
        if not (cov and null):
            return None
        return f"{min(cov):.3f}-{max(cov):.3f} with the drug effect, {min(null):.3f}-{max(null):.3f} without"

    spines = rec.get("spines_calibration")
    if isinstance(spines, dict) and spines:
        sentence += ("Spine arm end to end (simulated studies whose two-photon images were measured and tracked by "
                     "this pipeline, then the report's models; benchmarks/calibration_spines_e2e.md): spine-density "
                     f"headline power {spines['power']:.2f}, coverage of the effect the simulated images realise "
                     f"{spines['coverage_min']:.3f}-{spines['coverage_max']:.3f}")
        if "type1_min" in spines:
            sentence += f", type I error {spines['type1_min']:.3f}-{spines['type1_max']:.3f} without the drug effect"
        sentence += (f"; the detector reports {spines['change_ratio']:.2f} of a true change in density")
        if "lost_ratio" in spines and "regrowth_ratio" in spines:
            sentence += (f", {spines['lost_ratio']:.2f} of the extra spine loss during dosing and "
                         f"{spines['regrowth_ratio']:.2f} of the regrowth after it (tracking)")
        sentence += ". "
    morph = coverage_range("morphology_calibration")
    if morph:
        sentence += ("Morphology contrasts (skeleton length, branch points) on simulated studies whose cells come "
                     f"from the image simulator's own generator (benchmarks/calibration_morphology.md): coverage {morph}. ")
    bank = coverage_range("terminal_bank_calibration")
    if bank:
        sentence += ("The same studies with the detector's error (each terminal field measured by the pipeline on a "
                     f"bank of rendered fields; microglia density, engulfment, CD68 and morphology): coverage {bank}")
        error = rec.get("terminal_bank_error")
        if isinstance(error, dict) and error:
            worst = max(error, key=lambda k: abs(float(error[k])))
            sentence += (f"; the largest mean error of the ratios with the drug effect is that of {worst}, "
                         f"{float(error[worst]):+.1f} % over its planned contrasts (target: within 10 %)")
        sentence += ". "
    if "calibration/studies" in rec:
        sentence += (f"The statistics alone (perfect counts) on {rec['calibration/studies']} simulated studies of this design without and "
                    f"{rec['calibration/studies']} with the drug effect: type I error "
                    f"{rec['calibration/type1_error']:.3f} (nominal 0.05), 95 % CI coverage of the true effect "
                    f"{rec['calibration/coverage']:.3f}.")
    return sentence, pd.DataFrame(rows)


def _validation_html(reports_dir: Path) -> str:
    real = real_validation_line(reports_dir)
    summary = validation_summary(reports_dir)
    if summary is None:
        return f"<h2>Validation</h2>{real}" if real else ""
    sentence, table = summary
    return (f"<h2>Validation</h2>{real}<p>Against the simulated truth: each image's measured value against its "
            "true value (from <code>04_validation</code>, where the accuracy per SNR level is shown too). "
            f"{html.escape(sentence)} The synapse statistics use the longitudinal fields only: in the "
            "terminal fields (0.2 um pixels) the puncta are undersampled, and their density is not used by "
            "the models.</p>" + (_table(table) if len(table) else ""))


def _toc_entry(reports_dir: Path, name: str) -> str:
    """A contents line: the reviewer HTML, and the auditor HTML (with code) when it exists."""
    n = html.escape(name)
    audit = f' (<a href="audit/{n}.html">with code</a>)' if (reports_dir / "audit" / f"{name}.html").exists() else ""
    return f'<li><a href="{n}.html">{n}</a>{audit}</li>'


def _follow_up_days(tables: dict[str, pd.DataFrame]) -> float | None:
    syn = tables.get("synapse_contrasts")
    if syn is None or syn.empty or "days_since_last_dose" not in syn:
        return None
    v = float(syn["days_since_last_dose"].max())
    return v if v > 0 else None


def _doses(processed: Path) -> list[float] | None:
    path = processed / "synapse_dose_response_animals.csv"
    if not path.exists():
        return None
    return sorted(pd.read_csv(path, usecols=["dose_mg_kg"])["dose_mg_kg"].unique().tolist())


def write_index(
    reports_dir: Path,
    processed_dir: Path,
    data_dir: Path,
    notebooks: list[str],
    parameters: dict,
    started: dt.datetime,
    finished: dt.datetime,
    skipped: list[tuple[str, str]] | None = None,
) -> Path:
    """Write ``index.html`` (and the key figure and table copies beside it) for reviewers.

    ``skipped`` lists ``(notebook, sentence)`` for readout notebooks the study has no data for
    (:func:`analysis.pipeline.registry.notebooks_for`); each gets its sentence in the contents.

    Sections: findings (generated sentences, :func:`analysis.report.findings.abstract`), the key figure
    (:data:`KEY_FIGURE`, every animal a dot), every primary endpoint in design order with effect
    sizes, the dose x time trend, the dose-response / recovery fits (unidentified estimates as
    "not estimable" with the reason) and mechanism contrasts, links to each notebook's reviewer
    HTML (``<name>.html``) and auditor HTML with code (``audit/<name>.html``), the validation,
    methods generated from the run (detector parameters, per-image quality, model formulas, df,
    multiplicity, ARRIVE: n per group, sex, exclusions) and provenance (git commit, every
    dependency's version, preset and seed, parameters, SHA-256 of the sample sheet and of every
    input file, date and run time).  Copies of the fitted tables go to ``tables/`` and are linked
    relatively; no absolute path of this machine is written into the page.
    """
    reports_dir, processed_dir, data_dir = Path(reports_dir), Path(processed_dir), Path(data_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    manifest_csv = processed_dir / "raw_manifest.csv"
    if manifest_csv.exists():
        manifest = pd.read_csv(manifest_csv)
    else:
        files = sorted(p for p in data_dir.rglob("*") if p.is_file())
        manifest = pd.DataFrame({"path": [str(p.relative_to(data_dir)) for p in files],
                                 "sha256": [sha256_file(p) for p in files]})
    manifest = manifest.assign(path=[_relative_to(str(p), data_dir) for p in manifest["path"]])
    sheet_sha = sha256_file(data_dir / "samples.csv")
    facts = _study_facts(data_dir)
    tables = F.load_tables(processed_dir)
    order = F.study_group_order(processed_dir)
    contrasts = F.endpoint_contrasts(tables, order)
    if facts.get("simulated"):
        from analysis.sim.validation import add_truth, study_truth_model

        contrasts = add_truth(contrasts, study_truth_model(data_dir), {e.key: e.truth for e in F.ENDPOINTS})
    from analysis.errors import InputError
    from analysis.io import load_analysis_plan

    try:
        headline = load_analysis_plan(data_dir).get("primary_contrast") or F.HEADLINE_GROUP
    except InputError:  # (reported by fit; the index still renders)
        headline = F.HEADLINE_GROUP
    from analysis.report.validation import calibration_caveats, spine_calibration_caveats

    # (the spine calibration's own primary contrast, named in its sentence: it characterises the
    # detector whatever the study's headline)
    caveats = {**calibration_caveats(), **spine_calibration_caveats()}
    for key, text in F.quality_caveats(tables, headline).items():
        caveats[key] = f"{caveats[key]} {text}" if key in caveats else text
    found = F.abstract(contrasts, headline=headline, caveats=caveats)
    trend = F.trend_findings(tables.get("synapse_trend")) + F.mechanism_findings(tables.get("synapse_mechanism"))
    estimab = F.estimability(tables.get("synapse_dose_response"), tables.get("synapse_recovery"),
                             doses=_doses(processed_dir), follow_up_days=_follow_up_days(tables), order=order)
    figure = _key_figure(reports_dir, processed_dir, contrasts)
    links = _copy_tables(reports_dir, processed_dir, contrasts, estimab)
    toc = "".join(_toc_entry(reports_dir, n) for n in notebooks)
    toc += "".join(f"<li>{html.escape(nb.removesuffix('.ipynb'))}: {html.escape(why)}</li>" for nb, why in skipped or [])
    versions = dependency_versions()
    params = pd.DataFrame(sorted((k, json.dumps(redact_paths(v), sort_keys=True, default=str) if isinstance(v, dict)
                                  else str(redact_paths(v))) for k, v in parameters.items()),
                          columns=["parameter", "value"])
    study = (f"simulated, preset <code>{_e(facts.get('preset'))}</code>, seed <code>{_e(facts.get('seed'))}</code>"
             + (" (null: no drug effect)" if facts.get("null") else "")
             if facts.get("simulated") else "not simulated (no study_truth.json)")
    body = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>Synapse and microglia report</title><style>{_CSS}</style></head><body>
<h1>Long-term benzodiazepine study: synapse and microglia report</h1>
<p>Study: {study}. Data folder <code>{_e(data_dir.name)}</code>; the notebooks, methods and provenance follow the findings.</p>
<h2>Findings</h2>
{_abstract_html(found, trend, estimab, facts)}
{figure}
<h2>Key results: every primary endpoint</h2>
<p>Planned contrasts at the end of dosing, in design order (vehicle reference first, then dose, then duration).
Change versus vehicle in percent with its 95 % CI: for synapse density the change from baseline relative to that of
the vehicle group (a difference in differences of log density), for the microglia endpoints the ratio to vehicle
minus 1. Cohen's d is the log ratio over the between-animal SD (the count models have none). p (adjusted): for
synapse density the study's pre-specified procedure (with a primary contrast in analysis_plan.json: that contrast
first at the full 5 %, then Holm over the other planned contrasts; otherwise Holm), for the other endpoints Holm over
the planned contrasts of the endpoint (family size in brackets). Images excluded from quantification:
{len(tables.get("failures", []))}.</p>
{_endpoint_html(contrasts)}
<h3>Dose x time trend (synapse density)</h3>
{_trend_html(tables.get("synapse_trend"))}
<h3>Dose-response, recovery and mechanism</h3>
{_fits_html(estimab, tables.get("synapse_mechanism"))}
{links}
<h2>Contents</h2>
<p>Each notebook for reviewers (results and prose only); "with code" is the same executed notebook
with every code cell, for auditors.</p><ol>{toc}</ol>
{_validation_html(reports_dir)}
{_methods_html(processed_dir, data_dir, parameters, tables, contrasts)}
<h2>Provenance</h2>
<table><tr><th>git commit</th><td><code>{html.escape(_git_commit(Path(__file__).parent))}</code></td></tr>
<tr><th>date (UTC)</th><td>{finished.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}</td></tr>
<tr><th>run time</th><td>{(finished - started).total_seconds():.0f} s</td></tr>
<tr><th>study</th><td>{study}</td></tr>
<tr><th>sample sheet SHA-256</th><td><code>{sheet_sha}</code></td></tr>
<tr><th>input files</th><td>{len(manifest)}</td></tr></table>
<details><summary>Package versions ({len(versions)}: Python, this package and every installed dependency)</summary>{_html_table(versions)}</details>
<details><summary>Parameters (folders by name only)</summary>{_html_table(params)}</details>
<details><summary>SHA-256 of every input file</summary>{_table(manifest[["path", "sha256"]])}</details>
</body></html>
"""
    # a safety net for paths inside free text (fit warnings, failure reasons): the run's folders by name
    roots = {str(p): p.name for d in (data_dir, processed_dir, reports_dir) for p in (d, d.resolve()) if p.is_absolute()}
    for root in sorted(roots, key=len, reverse=True):
        body = body.replace(root, roots[root])
    out = reports_dir / "index.html"
    with atomic_path(out) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return out
