"""Validation results for the report: measured versus simulated truth per image, and the
recorded validation against data we did not make.

* **measured versus true per image** (:func:`measured_vs_true`, :func:`agreement`): the
  quantification table joined to ``ground_truth.csv`` (written by ``analysis simulate``) on
  ``image_id``;
* **recorded results** of ``make validate`` (``benchmarks/validation_real.md``: real images
  from other labs, the independent simulator sim-fish, pure noise; ours beside the peer
  detectors) and of the end-to-end calibration (``benchmarks/calibration_e2e.md``):
  :func:`load_real_validation`, :func:`load_e2e_calibration` read them back
  (:func:`parse_validation_markdown` parses any such markdown file of pipe tables);
* **calibration caveats** (:func:`calibration_caveats`): the endpoints whose contrasts the
  calibration with the detector's error (``benchmarks/calibration_morphology.md``) found biased
  or under-covered, one sentence each, which the index says after the endpoint's findings;
  the spine density's from the spine arm's end-to-end calibration
  (``benchmarks/calibration_spines_e2e.md``, :func:`spine_calibration_caveats`).

The checks that simulate (accuracy per SNR level, calibration of the statistics, the true
effects of a simulated study) are in :mod:`analysis.sim.validation`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.stats.models import correlation  # noqa: F401  (re-exported)

__all__ = [
    "Comparison",
    "load_ground_truth",
    "study_preset",
    "measured_vs_true",
    "agreement",
    "GROUND_TRUTH",
    "COMPARISONS",
    "RealValidation",
    "real_validation_path",
    "parse_validation_markdown",
    "load_real_validation",
    "load_e2e_calibration",
    "load_spines_calibration",
    "spine_calibration_figures",
    "spine_calibration_caveats",
    "section_purpose",
    "REAL_VALIDATION_FILE",
    "E2E_CALIBRATION_FILE",
]

log = logging.getLogger(__name__)


#: Name of the ground-truth table in a simulated study's data folder.
GROUND_TRUTH = "ground_truth.csv"


@dataclass(frozen=True)
class Comparison:
    """One per-image quantity compared with its truth.

    Attributes
    ----------
    key : str
        Short name (used in recorded values).
    label : str
        Axis label with units.
    readout : str
        ``synapse`` (longitudinal PSD95 fields) or ``terminal`` (PSD95, Iba1, CD68 fields).
    measured, true : str
        Columns of the joined table.
    """

    key: str
    label: str
    readout: str
    measured: str
    true: str


#: The quantities :func:`measured_vs_true` compares (the true engulfed count per cell is
#: derived as ``true_engulfed_count / true_microglia_count``).
COMPARISONS: tuple[Comparison, ...] = (
    Comparison("synapse_density", "synapse density (puncta / 100 um2)", "synapse",
               "puncta_density_per_100um2", "true_puncta_density_per_100um2"),
    Comparison("terminal_synapse_density", "synapse density, terminal fields (puncta / 100 um2)", "terminal",
               "puncta_density_per_100um2", "true_puncta_density_per_100um2"),
    Comparison("microglia_count", "microglia per field", "terminal", "microglia_count", "true_microglia_count"),
    Comparison("engulfed_per_cell", "engulfed PSD95 puncta per cell", "terminal",
               "engulfed_per_cell", "true_engulfed_per_cell"),
    Comparison("skeleton_length_um", "mean skeleton length of interior cells (um)", "terminal",
               "mean_skeleton_length_um", "true_mean_skeleton_length_um"),
    Comparison("branch_points", "mean branch points of interior cells", "terminal",
               "mean_branch_points", "true_mean_branch_points"),
)


def load_ground_truth(data_dir: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The study's ``ground_truth.csv``, or None when the study has no ground truth (real data).

    Parameters
    ----------
    data_dir : path
        Folder with ``samples.csv`` (and ``ground_truth.csv`` if the study was simulated).

    Returns
    -------
    DataFrame or None
        One row per image (see :mod:`analysis.sim.simulate`).
    """
    path = Path(data_dir) / GROUND_TRUTH
    if not path.exists():
        log.info("no ground truth in %s", path.parent)
        return None
    return pd.read_csv(path)


def study_preset(data_dir: str | os.PathLike[str], default: str = "small") -> str:
    """Name of the preset the study was simulated with (from ``study_truth.json``)."""
    path = Path(data_dir) / "study_truth.json"
    if not path.exists():
        return default
    return str(json.loads(path.read_text()).get("preset", default))


def measured_vs_true(measurements: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Long table of measured and true values per image, joined on ``image_id``.

    Images missing from ``measurements`` (failed quantification) are left out; an image in
    the measurements without a truth row is an error (the tables belong to different studies).

    Parameters
    ----------
    measurements : DataFrame
        The per-image quantification table (``measurements.parquet``).
    truth : DataFrame
        ``ground_truth.csv`` of the same study.

    Returns
    -------
    DataFrame
        ``quantity``, ``label``, ``image_id``, ``animal_id``, ``readout``, ``snr_level``,
        ``measured``, ``true``; rows where either value is missing are dropped.
    """
    t = truth.copy()
    if {"true_engulfed_count", "true_microglia_count"} <= set(t.columns):
        cells = t["true_microglia_count"].where(t["true_microglia_count"] > 0)
        t["true_engulfed_per_cell"] = t["true_engulfed_count"] / cells
    keep = ["image_id", "readout", "snr_level", *{c.true for c in COMPARISONS if c.true in t.columns}]
    missing = sorted(set(measurements["image_id"]) - set(t["image_id"]))
    if missing:
        raise ValueError(f"{len(missing)} measured image(s) have no ground-truth row, e.g. {missing[0]!r}: "
                         "the measurements and ground_truth.csv come from different studies")
    joined = measurements.merge(t[keep], on="image_id", how="inner", suffixes=("", "_truth"), validate="1:1")
    frames = []
    for c in COMPARISONS:
        if c.measured not in joined or c.true not in joined:
            continue
        sub = joined[joined["readout"] == c.readout]
        frames.append(pd.DataFrame({
            "quantity": c.key, "label": c.label, "image_id": sub["image_id"], "animal_id": sub["animal_id"],
            "readout": sub["readout"], "snr_level": sub["snr_level"],
            "measured": sub[c.measured].astype(float), "true": sub[c.true].astype(float),
        }))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["quantity", "label", "image_id", "animal_id", "readout", "snr_level", "measured", "true"])
    return out.dropna(subset=["measured", "true"]).reset_index(drop=True)


def agreement(pairs: pd.DataFrame, by: Iterable[str] = ("quantity",)) -> pd.DataFrame:
    """Agreement of measured with true values: correlation and bias per group of rows.

    Parameters
    ----------
    pairs : DataFrame
        From :func:`measured_vs_true` (columns ``measured`` and ``true`` plus ``by``).
    by : iterable of str
        Grouping columns, e.g. ``("quantity", "snr_level")``.

    Returns
    -------
    DataFrame
        ``by`` columns, ``n_images``, ``pearson_r``, ``mean_bias`` (measured - true),
        ``mean_relative_bias`` (mean of measured / true - 1 over rows with true > 0) and
        ``mean_abs_relative_error``.

    Examples
    --------
    >>> p = pd.DataFrame({"quantity": "q", "measured": [1.0, 2.0, 4.0], "true": [1.0, 2.0, 5.0]})
    >>> agreement(p)[["n_images", "mean_bias"]].round(3).values.tolist()
    [[3.0, -0.333]]
    """
    by = list(by)
    rows = []
    for keys, g in pairs.groupby(by, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        pos = g[g["true"] > 0]
        rel = pos["measured"] / pos["true"] - 1
        rows.append({
            **dict(zip(by, keys)),
            "n_images": len(g),
            "pearson_r": correlation(g["measured"], g["true"]),
            "mean_bias": float((g["measured"] - g["true"]).mean()),
            "mean_relative_bias": float(rel.mean()) if len(rel) else float("nan"),
            "mean_abs_relative_error": float(rel.abs().mean()) if len(rel) else float("nan"),
        })
    return pd.DataFrame(rows)


# --- validation against data we did not make (benchmarks/validation_real.md) ----------------

#: The committed summary of ``make validate``, relative to the repository root.
REAL_VALIDATION_FILE = Path("benchmarks") / "validation_real.md"

#: What each part of the real-data validation tests, keyed by a word of its section title
#: (lower case; the first key found in a title wins).
_SECTION_PURPOSES: tuple[tuple[str, str], ...] = (
    ("striped", "Images whose rows or columns carry offsets or gains of their own (a scanner's line "
                "noise, a camera's column pattern): F1 of each detector on sim-fish and our phantoms, false "
                "puncta in pure noise, and the stripe ratio our detector measured before removing them."),
    ("edge of the tissue", "Fields with glass beside the tissue (a section's border, a tear), its edge "
                           "sharp or softer: precision, recall and F1 of each detector against the puncta "
                           "on the tissue side (ours with its repair of such edges and without it), and "
                           "whether our detector found the edge lined with false puncta and raised the glass "
                           "to the tissue's background."),
    ("culture", "Real images of cultured neurons from another lab, without annotations, checked "
                "label-free: true synaptic puncta lie on MAP2 dendrites (enrichment above 1), rarely in "
                "DAPI nuclei or in the bright MAP2 cell bodies (a density there over the field's of 1 or "
                "less), and pre- and postsynaptic puncta pair more often than with the "
                "presynaptic channel shifted (pairing above chance above 0)."),
    ("sim-fish", "Images from sim-fish, a simulator none of us wrote, with known spot positions: "
                 "precision, recall and F1 of each detector (one-to-one matching) across spot "
                 "density, size, signal-to-noise ratio and bit depth."),
    ("phantom", "Our own simulated fields at each SNR level (the detector's authors wrote them, so "
                "agreement here proves the least): precision, recall, F1 and count bias."),
    ("processed", "Images smoothed, median-filtered, interpolated or deconvolved, as software may leave "
                  "them before they reach us (their pixel noise correlated): false puncta in pure noise and "
                  "F1 on sim-fish and our phantoms, with the noise figures our detector measured."),
    ("jpeg", "Images saved as JPEG at several qualities (the codec quantises each 8 x 8 block and "
             "leaves correlated noise): F1 of each detector on sim-fish and our phantoms, false puncta in "
             "pure noise, and the block and quantisation figures by which our detector recognises a JPEG."),
    ("varied sizes", "Fields whose puncta differ in size (sim-fish draws each spot's width), as puncta of "
                     "one stain do: precision, recall and F1 of each detector."),
    ("noise", "Images without any punctum, of several noise kinds: every detection is false "
              "(target: at most 1 per 1,000 um^2)."),
    ("speed", "Detection time per image at several image sizes, on the same machine."),
    ("not gaussian", "Spots whose point spread function is not the Gaussian the detectors model (an Airy "
                     "pattern with its rings, a Moffat profile with heavier wings), at two densities and three "
                     "signal-to-noise ratios: precision, recall and F1 of each detector."),
    ("elongated", "Spots drawn out along a line (elliptical, aspect 1 to 2, as an astigmatic PSF or "
                  "synapses seen edge-on give), which detectors of round spots may count twice, at three "
                  "signal-to-noise ratios: precision, recall and F1 of each detector, and how many fields "
                  "ours read as elongated."),
    ("resampled", "The real Iba1 fields resampled to other pixel sizes (and their hand masks with them), "
                  "segmented with the matching pixel size: parameters in physical units find the same cells "
                  "at every sampling."),
    ("microglia", "Real Iba1 images from another lab with hand-corrected cell masks: cells found "
                  "(one-to-one at IoU >= 0.5) and per-cell skeleton length and branch points ranked "
                  "against the source tool's table, beside plain threshold pipelines."),
    ("coarser pixels", "The real two-photon frames and simulated sessions with known spines binned to coarser "
                       "pixels (as a scan or camera with larger pixels records them), detected at the matching "
                       "pixel size: the same spines should be found at every sampling the optics allow."),
    ("same dendrites", "Pairs of spine sessions that do and do not show the same dendrites: the correlation of "
                       "their registered images decides whether the tracker links them (a pair that is not "
                       "linked gives no turnover)."),
    ("spine", "Real two-photon frames of GFP-filled dendrites from another lab with hand-marked "
              "spine heads: precision, recall and F1 of the detected heads (one-to-one matching), "
              "beside a plain blob detector without a dendrite model."),
)

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")
_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")
_COMMIT = re.compile(r"\bcommit\s+`?([0-9a-f]{7,40})`?(\s*\([^)]*\))?")


@dataclass(frozen=True)
class RealValidation:
    """A parsed validation summary: header paragraph and the tables of each section.

    Attributes
    ----------
    title : str
        The first-level heading ("" without one).
    header : str
        The paragraphs between the title and the first section (where the numbers come from:
        command, date, commit, detectors), paragraphs separated by a blank line.
    sections : dict of str to list of DataFrame
        Section title (a heading of level 2 or deeper) -> its markdown tables, in file order.
        Bold markers (``**``) are removed from the cells; columns whose every cell is a number
        (thousands separators allowed) are numeric, all others text.  Tables before the first
        section are under the key ``""``.
    notes : dict of str to list of str
        Section title -> its paragraphs (other than tables), in file order.
    path : Path or None
        The file it was read from.
    """

    title: str
    header: str
    sections: dict[str, list[pd.DataFrame]]
    notes: dict[str, list[str]]
    path: Path | None = None

    @property
    def date(self) -> str | None:
        """The first ISO date (YYYY-MM-DD) of the header: when the numbers were generated."""
        m = _DATE.search(self.header)
        return m.group(1) if m else None

    @property
    def commit(self) -> str | None:
        """The commit the numbers were generated at, with the file's remark on it if any."""
        m = _COMMIT.search(self.header)
        return None if m is None else m.group(1) + (m.group(2) or "")


def real_validation_path() -> Path:
    """Where the committed ``benchmarks/validation_real.md`` is in a source checkout.

    The repository root is three levels above the installed package's ``__init__.py``
    (``src/analysis/__init__.py``); in an installed wheel the path does not exist.
    """
    import analysis

    return Path(analysis.__file__).resolve().parents[2] / REAL_VALIDATION_FILE


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.replace("\\|", "|").replace("**", "").strip() for c in re.split(r"(?<!\\)\|", line)]


def _table(lines: list[str]) -> pd.DataFrame:
    columns = _cells(lines[0])
    rows = [(_cells(x) + [""] * len(columns))[: len(columns)] for x in lines[2:]]
    df = pd.DataFrame(rows, columns=columns)
    for k in range(df.shape[1]):
        col = df.iloc[:, k]
        filled = col[col != ""]
        if len(filled) and filled.map(lambda v: bool(_NUMBER.match(v))).all():
            values = pd.to_numeric(col.str.replace(",", "", regex=False).replace("", np.nan))
            if not filled.str.contains(".", regex=False).any() and values.notna().all():
                values = values.astype(np.int64)
            df.isetitem(k, values)
    return df


def parse_validation_markdown(text: str, path: Path | None = None) -> RealValidation:
    r"""Parse a markdown summary into its header paragraph and the pipe tables of each section.

    Generic: any headings (``#`` title, ``##`` ... sections), paragraphs and pipe tables (a
    row of cells, a ``---`` separator row, rows), so a regenerated file with other parts
    still parses.

    Parameters
    ----------
    text : str
        Markdown.
    path : Path, optional
        Recorded as :attr:`RealValidation.path`.

    Returns
    -------
    RealValidation

    Examples
    --------
    >>> md = (
    ...     "# Detection on data we did not make\n\n"
    ...     "Generated on 2026-11-30, commit 8f04b5d.\n\n"
    ...     "## Pure noise\n\n"
    ...     "| noise | ours | peer |\n|---|---|---|\n| Poisson | **0.25** | 1,204 |\n\n"
    ...     "3 images per kind.\n")
    >>> v = parse_validation_markdown(md)
    >>> v.date, v.commit
    ('2026-11-30', '8f04b5d')
    >>> v.sections["Pure noise"][0]
         noise  ours  peer
    0  Poisson  0.25  1204
    >>> v.notes["Pure noise"]
    ['3 images per kind.']
    """
    title, header = "", []
    sections: dict[str, list[pd.DataFrame]] = {}
    notes: dict[str, list[str]] = {}
    current: str | None = None
    paragraph: list[str] = []

    def end_paragraph() -> None:
        if paragraph:
            (header if current is None else notes.setdefault(current, [])).append(" ".join(paragraph))
            paragraph.clear()

    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = _HEADING.match(line)
        if heading:
            end_paragraph()
            if len(heading.group(1)) == 1 and not title and current is None:
                title = heading.group(2)
            else:
                current = name = heading.group(2)
                n = 2
                while current in sections:  # a repeated title gets a number
                    current, n = f"{name} ({n})", n + 1
                sections[current], notes[current] = [], []
        elif "|" in line and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1]):
            end_paragraph()
            j = i + 2
            while j < len(lines) and lines[j].strip() and "|" in lines[j]:
                j += 1
            sections.setdefault("" if current is None else current, []).append(_table(lines[i:j]))
            i = j
            continue
        elif line.strip():
            paragraph.append(line.strip())
        else:
            end_paragraph()
        i += 1
    end_paragraph()
    return RealValidation(title, "\n\n".join(header), sections, notes, path)


def load_real_validation(path: str | os.PathLike[str] | None = None) -> RealValidation | None:
    """The committed validation against data we did not make, or None when the file is absent.

    Parameters
    ----------
    path : path, optional
        The markdown file (default: :func:`real_validation_path`, i.e.
        ``benchmarks/validation_real.md`` of the source checkout the package runs from).

    Returns
    -------
    RealValidation or None
        None when the file does not exist (e.g. the package installed from a wheel).
    """
    path = real_validation_path() if path is None else Path(path)
    if not path.is_file():
        log.info("no real-data validation summary at %s", path)
        return None
    return parse_validation_markdown(path.read_text(encoding="utf-8"), path=path)


#: The committed end-to-end calibration (``benchmarks/calibrate_e2e.py bank-calibrate``).
E2E_CALIBRATION_FILE = Path("benchmarks") / "calibration_e2e.md"


def load_e2e_calibration(path: str | os.PathLike[str] | None = None) -> RealValidation | None:
    """The committed end-to-end calibration of the synapse statistics, or None when absent.

    Simulated studies whose images went through the detector (images -> quantify -> fit):
    bias, coverage and power of each planned contrast for the report's model beside the
    alternatives (perfect counts among them).  Parsed like :func:`load_real_validation`.
    """
    return _load_summary(path, E2E_CALIBRATION_FILE, "end-to-end calibration")


#: The committed calibration of the morphology contrasts (``benchmarks/calibrate_morphology.py``).
MORPHOLOGY_CALIBRATION_FILE = Path("benchmarks") / "calibration_morphology.md"


def load_morphology_calibration(path: str | os.PathLike[str] | None = None) -> RealValidation | None:
    """The committed calibration of the morphology contrasts, or None when absent.

    Simulated studies of the default design whose cells are drawn by the image simulator's
    cell generator (no images): coverage, bias and error rates of the skeleton-length and
    branch-point contrasts of the report's model.  Parsed like :func:`load_real_validation`.
    """
    return _load_summary(path, MORPHOLOGY_CALIBRATION_FILE, "morphology calibration")


#: The committed end-to-end calibration of the spine statistics (``benchmarks/calibrate_spines_e2e.py``).
SPINES_CALIBRATION_FILE = Path("benchmarks") / "calibration_spines_e2e.md"


def load_spines_calibration(path: str | os.PathLike[str] | None = None) -> RealValidation | None:
    """The committed end-to-end calibration of the spine statistics, or None when absent.

    Simulated studies of the two-photon spine arm whose images were rendered, measured and
    tracked by the pipeline: bias, coverage and power of the spine-density contrasts (the
    report's model beside the model without the position effect, measured beside true
    densities) and of the turnover differences.  Parsed like :func:`load_real_validation`.
    """
    return _load_summary(path, SPINES_CALIBRATION_FILE, "spine calibration")


def spine_calibration_figures(summary: RealValidation | None = None,
                              primary: str = "WT diazepam 5 mg/kg x 7 d") -> dict[str, float]:
    """The headline figures of the spine calibration, for the index page (empty when absent).

    From the measured densities fitted with the report's model (with the position effect):
    ``power`` of the ``primary`` contrast at the end of dosing (adjusted), ``coverage_min`` /
    ``coverage_max`` of the effect the bank realises over the effect studies' contrasts,
    ``type1_min`` / ``type1_max`` (unadjusted) over the null studies', ``change_ratio``: the
    primary contrast's mean measured log change over the true densities' (how much of a real
    change the detector reports); and from the turnover section ``lost_ratio`` and
    ``regrowth_ratio``: the measured over the true difference from vehicle of the primary
    group's lost fraction during dosing and gained fraction after it.

    Examples
    --------
    >>> text = ("# c\\n\\n## Spine density, effect studies\\n\\n| group @ day | counts | model | "
    ...         "coverage (model / bank) | power (unadjusted / adjusted) | mean estimate % |\\n|---|---|---|---|---|---|\\n"
    ...         "| WT diazepam 5 mg/kg x 7 d @ 7 | measured | with position effect | 0.76 / 0.94 | 0.6 / 0.6 | -8.0 |\\n"
    ...         "| WT diazepam 5 mg/kg x 7 d @ 7 | perfect | with position effect | 0.9 / 0.97 | 0.8 / 0.8 | -10.0 |\\n")
    >>> f = spine_calibration_figures(parse_validation_markdown(text))
    >>> f["power"], f["coverage_min"], round(f["change_ratio"], 2)
    (0.6, 0.94, 0.79)
    """
    summary = load_spines_calibration() if summary is None else summary
    effect = summary.sections.get("Spine density, effect studies") if summary is not None else None
    if not effect:
        return {}
    part = lambda col, i: col.astype(str).str.split(" / ").str[i].astype(float)  # noqa: E731
    model = lambda t, counts: t[(t["counts"] == counts) & t["model"].str.startswith("with position")]  # noqa: E731
    e = model(effect[0], "measured")
    first = e[e["group @ day"] == f"{primary} @ 7"]
    true_first = model(effect[0], "perfect")
    true_first = true_first[true_first["group @ day"] == f"{primary} @ 7"]
    if first.empty or true_first.empty:
        return {}
    cov = part(e["coverage (model / bank)"], 1)
    out = {"power": float(part(first["power (unadjusted / adjusted)"], 1).iloc[0]),
           "coverage_min": float(cov.min()), "coverage_max": float(cov.max()),
           "change_ratio": float(np.log1p(float(first["mean estimate %"].iloc[0]) / 100)
                                 / np.log1p(float(true_first["mean estimate %"].iloc[0]) / 100))}
    null = summary.sections.get("Spine density, null studies")
    if null:
        n = model(null[0], "measured")
        t1 = part(n["type I error (unadjusted / adjusted)"], 0)
        out.update({"type1_min": float(t1.min()), "type1_max": float(t1.max())})
    turnover = next((v for k, v in summary.sections.items() if k.startswith("Turnover")), None)
    if turnover:
        t = turnover[0]
        t = t[(t["studies"] == "effect") & (t["group"] == primary)]
        if "model" in t:  # the report's comparison (Welch's t), not its sensitivity analysis
            t = t[t["model"].astype(str).str.startswith("Welch")]
        for key, fraction, day in (("lost_ratio", "lost", 7), ("regrowth_ratio", "gained", 63)):
            sub = t[(t["fraction"] == fraction)
                    & (t["interval to day"].astype(float).round().astype(int) == day)].set_index("tracks")
            if {"measured", "perfect"} <= set(sub.index):
                out[key] = float(sub.loc["measured", "mean estimate (pp)"]) / float(sub.loc["perfect", "mean estimate (pp)"])
    return out


def spine_calibration_caveats(summary: RealValidation | None = None, *, min_coverage: float = 0.93,
                              max_error_pct: float = 5.0, primary: str = "WT diazepam 5 mg/kg x 7 d"
                              ) -> dict[str, str]:
    """What the spine arm's end-to-end calibration says a reader of the spine findings should know.

    From :func:`spine_calibration_figures` of the committed :data:`SPINES_CALIBRATION_FILE`
    (simulated studies whose two-photon images the pipeline measured, fitted with the report's
    model): when the ``primary`` contrast's measured change is off the true densities' by more
    than ``max_error_pct`` percent, or the effect contrasts covered the effect the simulated
    images realise less often than ``min_coverage``, one sentence with those figures for the
    ``spine_density`` endpoint (the same limits as :func:`calibration_caveats`). Empty when the
    summary is absent or within both.

    Examples
    --------
    >>> text = ("# c\\n\\n## Spine density, effect studies\\n\\n| group @ day | counts | model | "
    ...         "coverage (model / bank) | power (unadjusted / adjusted) | mean estimate % |\\n|---|---|---|---|---|---|\\n"
    ...         "| WT diazepam 5 mg/kg x 7 d @ 7 | measured | with position effect | 0.71 / 0.915 | 0.6 / 0.6 | -8.0 |\\n"
    ...         "| WT diazepam 5 mg/kg x 7 d @ 7 | perfect | with position effect | 0.9 / 0.97 | 0.8 / 0.8 | -10.3 |\\n")
    >>> spine_calibration_caveats(parse_validation_markdown(text))["spine_density"][:80]
    'Calibration of the method: on simulated studies with the drug effect whose two-p'
    >>> "reported 0.77 of the change" in spine_calibration_caveats(parse_validation_markdown(text))["spine_density"]
    True
    >>> full = text.replace("0.71 / 0.915", "0.7 / 0.90").replace("-8.0", "-10.1")  # unbiased, under-covered
    >>> spine_calibration_caveats(parse_validation_markdown(full))["spine_density"][-49:]
    'realise in 90.0-90.0 % of studies (nominal 95 %).'
    >>> spine_calibration_caveats(parse_validation_markdown(full.replace("0.7 / 0.90", "0.9 / 0.95")))
    {}
    """
    fig = spine_calibration_figures(summary, primary=primary)
    if not fig:
        return {}
    ratio, cov_lo, cov_hi = fig["change_ratio"], fig["coverage_min"], fig["coverage_max"]
    off = abs(ratio - 1.0) * 100 > max_error_pct
    if cov_lo >= min_coverage and not off:
        return {}
    end = f": a real change in spine density reads {'smaller' if ratio < 1 else 'larger'} than it is." if off else "."
    return {"spine_density": (
        f"Calibration of the method: on simulated studies with the drug effect whose two-photon images this "
        f"pipeline measured and tracked ({SPINES_CALIBRATION_FILE.as_posix()}), the spine detector reported "
        f"{ratio:.2f} of the change in density that the same images' true spines give ({primary} at the end of "
        f"dosing), and the 95 % CIs covered the effect the simulated images realise in {100 * cov_lo:.1f}-"
        f"{100 * cov_hi:.1f} % of studies (nominal 95 %){end}")}


#: Section of :data:`MORPHOLOGY_CALIBRATION_FILE` with the detector's error, and its endpoint
#: names -> keys of :data:`analysis.report.findings.ENDPOINTS`.
TERMINAL_BANK_SECTION = "With the detector's error (terminal-field bank)"
_BANK_ENDPOINTS = {"microglia density": "microglia_density", "engulfed puncta per cell": "engulfment",
                   "skeleton length": "skeleton_length", "branch points": "branch_points",
                   "cd68 area fraction": "cd68"}


def calibration_caveats(summary: RealValidation | None = None, *, min_coverage: float = 0.93,
                        max_error_pct: float = 5.0) -> dict[str, str]:
    """What the method's calibration says a reader should know, per endpoint of the findings.

    From the calibration of the terminal endpoints with the detector's error (the section
    :data:`TERMINAL_BANK_SECTION` of the committed :data:`MORPHOLOGY_CALIBRATION_FILE`): an
    endpoint whose planned contrasts, on simulated studies with the drug effect, covered the
    truth less often than ``min_coverage`` or were off by more than ``max_error_pct`` percent on
    average gets one sentence with those figures.  Empty when the summary is absent (an
    installation without the source tree's benchmarks) or every endpoint is within both.

    Parameters
    ----------
    summary : RealValidation, optional
        The parsed file (default: :func:`load_morphology_calibration`).
    min_coverage, max_error_pct : float
        The limits.

    Returns
    -------
    dict
        Endpoint key (:data:`analysis.report.findings.ENDPOINTS`) -> sentence.

    Examples
    --------
    >>> text = (f"# c\\n\\n## {TERMINAL_BANK_SECTION}\\n\\n| studies | endpoint | planned contrasts | coverage | "
    ...         "mean ratio error, % | largest mean ratio error of a contrast, % |\\n|---|---|---|---|---|---|\\n"
    ...         "| default | branch points | 1000 | 0.880 | -8.5 | -12.7 |\\n"
    ...         "| default | skeleton length | 1000 | 0.951 | -1.0 | -2.4 |\\n")
    >>> caveats = calibration_caveats(parse_validation_markdown(text))
    >>> list(caveats)
    ['branch_points']
    >>> "ratios were 8.5 % below the truth on average (-12.7 % for the worst contrast)" in caveats["branch_points"]
    True
    """
    summary = load_morphology_calibration() if summary is None else summary
    tables = summary.sections.get(TERMINAL_BANK_SECTION) if summary is not None else None
    if not tables:
        return {}
    t = tables[0]
    out = {}
    for r in t[t["studies"] == "default"].to_dict("records"):
        key = _BANK_ENDPOINTS.get(str(r["endpoint"]))
        cov, err = float(r["coverage"]), float(r["mean ratio error, %"])
        worst = float(r["largest mean ratio error of a contrast, %"])
        if key is None or (cov >= min_coverage and abs(err) <= max_error_pct):
            continue
        out[key] = (f"Calibration of the method: on {int(r['planned contrasts'])} planned contrasts of simulated "
                    f"studies with the drug effect, measured by this pipeline ({MORPHOLOGY_CALIBRATION_FILE.as_posix()}), "
                    f"the {r['endpoint']} ratios were {abs(err):.1f} % {'below' if err < 0 else 'above'} the truth on "
                    f"average ({worst:+.1f} % for the worst contrast) and the 95 % CIs covered the truth in "
                    f"{100 * cov:.0f} % of contrasts (nominal 95 %): read these contrasts with that bias in mind.")
    return out


def show_summary(summary: RealValidation, heading: str = "###") -> None:
    """Display a parsed summary in a notebook: its header paragraph, then each section as a
    heading, its tables (first column as index) and its notes."""
    from IPython.display import Markdown, display

    display(Markdown(summary.header))
    for title, tables in summary.sections.items():
        display(Markdown(f"{heading} {title}"))
        for table in tables:
            display(table.set_index(table.columns[0]))
        for note in summary.notes.get(title, []):
            display(Markdown(note))


def _load_summary(path: str | os.PathLike[str] | None, committed: Path, what: str) -> RealValidation | None:
    """A markdown summary, parsed (``path``, or by default the committed file ``committed``
    beside :func:`real_validation_path`); None when absent."""
    path = real_validation_path().parent / committed.name if path is None else Path(path)
    if not path.is_file():
        log.info("no %s summary at %s", what, path)
        return None
    return parse_validation_markdown(path.read_text(encoding="utf-8"), path=path)


def section_purpose(title: str) -> str:
    """One sentence on what a section of the real-data validation tests ("" if unknown).

    Examples
    --------
    >>> section_purpose("b. sim-fish (independent simulator)")[:35]
    'Images from sim-fish, a simulator n'
    """
    low = title.lower()
    return next((sentence for key, sentence in _SECTION_PURPOSES if key in low), "")
