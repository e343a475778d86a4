"""Run the notebooks with papermill and render HTML for reviewers.

Notebooks are executed on the ``analysis`` Jupyter kernel, two at a time on a machine with two
or more cores (each reads only the processed tables, none another notebook's output).  Executed
copies go to
``reports/executed/``; the reviewer HTML (no code cells) goes to ``reports/<name>.html`` and
the auditor HTML (the same notebook with its code) to ``reports/audit/<name>.html``.  Both are
self-contained (figures embedded, nothing fetched from another host).
Notebooks hand their key numbers to tests and to the report index with :func:`record`;
:func:`recorded` reads them back from an executed notebook.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import nbformat

from analysis.io.files import atomic_path
from analysis.report.record import RECORD_MIMETYPE, record, recorded  # noqa: F401  (re-exported)

__all__ = ["NOTEBOOKS", "ReportError", "record", "recorded", "run_notebook", "export_html", "run_report"]

log = logging.getLogger(__name__)

#: Notebooks of the report, in the order of the report: the study design and the
#: quantification first, the readouts' notebooks (:mod:`analysis.pipeline.registry`), the
#: validation last.
NOTEBOOKS_FIRST: tuple[str, ...] = ("00_study_design", "01_quantify_images")
NOTEBOOKS_LAST: tuple[str, ...] = ("04_validation",)


def study_notebooks(samples: Any = None) -> tuple[list[str], list[tuple[str, str]]]:
    """The report's notebooks for a study (names without ``.ipynb``) and the skipped ones.

    Parameters
    ----------
    samples : DataFrame, optional
        The sample sheet: a readout's notebook runs when some row assigns its channel roles
        (:func:`analysis.pipeline.registry.notebooks_for`).  None: every notebook.

    Returns
    -------
    names : list of str
    skipped : list of (str, str)
        ``(notebook, sentence)`` for notebooks the study has no data for.
    """
    from analysis.pipeline import readouts as _builtin  # noqa: F401  (registers the built-in readouts)
    from analysis.pipeline.registry import notebooks_for

    run, skipped = notebooks_for(samples)
    middle = [n.removesuffix(".ipynb") for n in run]
    return [*NOTEBOOKS_FIRST, *middle, *NOTEBOOKS_LAST], [(n.removesuffix(".ipynb"), why) for n, why in skipped]


#: Every notebook of the report (a study with all the built-in readouts).
NOTEBOOKS: tuple[str, ...] = (
    "00_study_design", "01_quantify_images", "02_synapse_dose_duration", "03_microglia", "05_spines", "04_validation",
)
#: Started first when notebooks run side by side: the longest (04_validation re-fits ~40
#: simulated studies: ~50 s of the default report; the other four together take ~35 s).
_LONGEST_FIRST: tuple[str, ...] = ("04_validation",)

#: Subfolder of the reports folder with the auditor HTML (notebooks with their code).
AUDIT_DIR = "audit"


def _check_fittable(path: Path) -> None:
    """Raise InputError naming why the models cannot be fitted to the measurements table at
    ``path`` (the checks of ``python -m analysis fit``, which ``validate`` lists as notes),
    before any model or notebook runs: a notebook would otherwise stop on the missing
    comparisons with a KeyError."""
    import pandas as pd

    from analysis.errors import InputError
    from analysis.io import normalise_vocabulary
    from analysis.stats.design import fit_problems

    table, problems = normalise_vocabulary(pd.read_parquet(path), str(path))
    problems = problems or fit_problems(table, str(path))
    if problems:
        raise InputError(problems)


class ReportError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the error."""


#: Matplotlib backend of the notebook kernels: figures become PNG outputs of their cells.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables (inherited by kernels started inside) and restore them after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _notebook_parameters(path: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def run_notebook(
    notebook: str | os.PathLike[str],
    executed: str | os.PathLike[str],
    parameters: Mapping[str, Any],
    *,
    kernel_name: str = "analysis",
) -> Path:
    """Execute one notebook with papermill; parameters it does not declare are dropped.

    Raises
    ------
    ReportError
        A cell failed: the message names the notebook, the cell number and the error, and
        the executed notebook (with the traceback) is kept for inspection.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    src = Path(notebook)
    dst = Path(executed)
    dst.parent.mkdir(parents=True, exist_ok=True)
    declared = _notebook_parameters(src)
    params = {k: v for k, v in parameters.items() if k in declared}
    log.info("running %s with %s", src.name, params)
    # the kernel inherits this process's environment: a non-interactive MPLBACKEND (e.g. Agg
    # in CI and tests) would make plt.show() a no-op and leave every figure out of the report
    try:
        with _environment(MPLBACKEND=INLINE_BACKEND):
            papermill.execute_notebook(
                str(src),
                str(dst),
                parameters=params,
                kernel_name=kernel_name,
                cwd=str(src.parent),
                progress_bar=False,
            )
    except PapermillExecutionError as exc:
        raise ReportError(
            f"notebook {src.name} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}); "
            f"the executed notebook with the traceback is {dst}"
        ) from None
    except Exception as exc:  # e.g. no such kernel
        if "No such kernel" in str(exc):
            raise ReportError(
                f"Jupyter kernel {kernel_name!r} is not installed; run 'make setup' (it registers it)"
            ) from None
        raise
    _stable_cell_ids(dst)
    return dst


def _stable_cell_ids(executed: Path) -> None:
    """Give papermill's injected-parameters cell a fixed id (it draws a random one).

    The same inputs then give the same executed notebook and HTML, up to run times.
    """
    nb = nbformat.read(executed, as_version=4)
    changed = False
    for k, cell in enumerate(nb.cells):
        if "injected-parameters" in cell.metadata.get("tags", []) and cell.get("id") != f"injected-parameters-{k}":
            cell["id"] = f"injected-parameters-{k}"
            changed = True
    if changed:
        with atomic_path(executed) as tmp:
            nbformat.write(nb, tmp)


def notebook_title(nb: nbformat.NotebookNode, default: str) -> str:
    """The text of the first Markdown heading of a notebook (``default`` without one)."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip() or default
    return default


def export_html(executed: str | os.PathLike[str], html: str | os.PathLike[str], *, include_code: bool = False) -> Path:
    """Render an executed notebook to self-contained HTML; without code cells by default.

    Figures are embedded; no script or style is fetched from another host (TeX in markdown is
    shown as written, since MathJax is not loaded).
    """
    from nbconvert import HTMLExporter

    # the "offline" template is JupyterLab's without require.js, MathJax or mermaid from a CDN
    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(Path(__file__).parent / "templates")])
    exporter.exclude_input = not include_code
    exporter.exclude_input_prompt = not include_code
    exporter.exclude_output_prompt = True
    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:  # recorded values are for tests and the index, not for readers
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if RECORD_MIMETYPE not in o.get("data", {})]
    # the page title (browser tab, bookmarks): the notebook's first heading, not "Notebook"
    title = notebook_title(nb, Path(executed).stem)
    nb.metadata["title"] = f"{title} (with code)" if include_code else title
    body, _ = exporter.from_notebook_node(nb)
    with atomic_path(html) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return Path(html)


def run_report(
    data_dir: str | os.PathLike[str] = "data/raw",
    processed_dir: str | os.PathLike[str] = "data/processed",
    reports_dir: str | os.PathLike[str] = "reports",
    notebooks_dir: str | os.PathLike[str] = "notebooks",
    *,
    kernel_name: str = "analysis",
    only: Iterable[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    quantify: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    jobs: int | None = None,
) -> list[Path]:
    """Validate the inputs, run the pipeline and the report notebooks in order, write their HTML.

    Parameters
    ----------
    data_dir : path
        Folder with ``samples.csv`` (read only).
    processed_dir : path
        Folder for derived tables.
    reports_dir : path
        Output folder: ``<name>.html`` per notebook (reviewers, no code), ``audit/<name>.html``
        (auditors, with code), executed notebooks in ``executed/``.
    notebooks_dir : path
        Folder with the ``.ipynb`` sources.
    kernel_name : str
        Jupyter kernel to run them on.
    only : iterable of str, optional
        Run only these notebooks (names without ``.ipynb``).
    parameters : mapping, optional
        Extra notebook parameters (each notebook receives those it declares).
    quantify : bool
        Run the pipeline first (quantification and model fits into ``processed_dir``).
    workers : int, optional
        Worker processes for the quantification (also passed to notebooks that declare
        ``workers``).
    scheduler : str, optional
        Address of an existing dask scheduler for the quantification (default: a local
        cluster sized to the machine).
    jobs : int, optional
        Notebooks executed at the same time (default: 2 with two or more cores, else 1).
        The longest notebook starts first; the HTML and the index do not depend on it.

    Returns
    -------
    list of Path
        The HTML files written (reviewer and auditor HTML per notebook, then the index).
    """
    import datetime as dt

    from analysis.report.index import write_index
    from analysis.io import load_analysis_plan, load_samples

    started = dt.datetime.now(dt.timezone.utc)
    data = Path(data_dir).resolve()
    processed = Path(processed_dir).resolve()
    reports = Path(reports_dir).resolve()
    nbdir = Path(notebooks_dir).resolve()
    samples = load_samples(data / "samples.csv")  # bad input stops here with a clear message
    processed.mkdir(parents=True, exist_ok=True)
    if quantify:
        from analysis.pipeline.quantify import quantify_study
        from analysis.stats import fit_study

        plan = load_analysis_plan(data)
        quantify_study(data / "samples.csv", processed, workers=workers, scheduler=scheduler)
        _check_fittable(processed / "measurements.parquet")
        fit_study(str(processed / "measurements.parquet"), str(processed), primary=plan.get("primary_contrast"),
                  adjust_for_quality=plan.get("adjust_for_quality", True))
    params = {"data_dir": str(data), "processed_dir": str(processed),
              **({"workers": workers} if workers is not None else {}), **(parameters or {})}
    study_names, skipped = study_notebooks(samples)
    names = list(only) if only else study_names
    unknown = [n for n in names if not (nbdir / f"{n}.ipynb").exists()]
    if unknown:
        raise ReportError(f"no such notebook(s) in {nbdir}: {', '.join(unknown)}")
    def one(name: str) -> list[Path]:
        executed = run_notebook(nbdir / f"{name}.ipynb", reports / "executed" / f"{name}.ipynb", params,
                                kernel_name=kernel_name)
        html = [export_html(executed, reports / f"{name}.html"),
                export_html(executed, reports / AUDIT_DIR / f"{name}.html", include_code=True)]
        log.info("wrote %s and %s", *html)
        return html

    jobs = max(1, min(jobs or min(2, os.cpu_count() or 1), len(names)))
    start = sorted(names, key=lambda n: n not in _LONGEST_FIRST) if jobs > 1 else names
    # (the kernels inherit the environment: set once for all threads, see run_notebook)
    with _environment(MPLBACKEND=INLINE_BACKEND), ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(one, name) for name in start}
        # the first failure (in report order) is raised once every started notebook has ended
        wait(list(futures.values()))
        written = [path for name in names for path in futures[name].result()]
    from analysis.pipeline.quantify import QuantifyParams

    all_params = {**params, "kernel": kernel_name, "quantify": QuantifyParams().to_dict()}
    # also those of earlier runs (``only``), never those the study has no data for
    in_report = [n for n in study_names if (reports / f"{n}.html").exists()]
    written.append(write_index(reports, processed, data, in_report, all_params, started,
                               dt.datetime.now(dt.timezone.utc), skipped=skipped))
    return written
