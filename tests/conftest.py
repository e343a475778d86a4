"""Shared fixtures: the small simulated study, quantified once and reported once per test session.

All three are read-only for tests: a test that needs to change a study or a processed folder
copies it first (``shutil.copytree``) into its own ``tmp_path``.

``make test`` runs the suite on every core with pytest-xdist (``--dist loadgroup``): the tests
that use the small study's quantification are put in one group
(:func:`pytest_collection_modifyitems`), so they run in one worker and the study is quantified
and reported once per run, not once per worker (a worker that runs a test needing only the
simulated images simulates them itself: a few seconds); every other test is in its module's
group, so a module's fixtures are built once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")


#: The xdist group of the tests that read the small study (one worker runs them all).
SMALL_STUDY_GROUP = "small_study"

#: Notebook parameters of the small study's report: one phantom field per SNR level and kind in
#: 04_validation (the notebook's default of 2 doubles its longest cell, ~10 s of each report).
SMALL_REPORT_PARAMETERS = {"snr_fields": 1}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put every test that uses :func:`small_quantified` (directly or through the report built
    from it) in one xdist group, so the study is quantified once per run under
    ``--dist loadgroup``; every other test in the group of its module (its module-scoped
    fixtures were built once in each worker that ran one of its tests: ~27 s of a run).

    ``tryfirst``: pytest-xdist reads the ``xdist_group`` marks in its own
    ``pytest_collection_modifyitems`` (it appends the group to the node id), and hooks of
    plugins registered after this conftest run first unless ordered; the marks must be there
    before.  :func:`_claim_the_quantification` fails the run if the group is not in effect.
    """
    for item in items:
        if "small_quantified" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(SMALL_STUDY_GROUP))
        elif item.get_closest_marker("xdist_group") is None:
            # the rest of a module runs in one worker, so its module-scoped fixtures (simulated
            # sessions, spike-in runs) are built once per run, not once per worker
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``small`` preset simulated with seed 1 (do not modify it in tests)."""
    from analysis.sim.simulate import simulate_study

    out = tmp_path_factory.mktemp("small_study")
    simulate_study(out, preset="small", seed=1, workers=2, progress=False)
    return out


def _claim_the_quantification(tmp_path_factory: pytest.TempPathFactory, config: pytest.Config) -> None:
    """Under ``--dist loadgroup``, fail if another worker of this run quantified the small study:
    the group of :func:`pytest_collection_modifyitems` is then not in effect (it happened with
    pytest 9.2, whose node ids pytest-xdist 3.8 can no longer tag with the group: pytest-xdist
    issue 1386; ``pyproject.toml`` keeps pytest below 9.2)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or not getattr(config.option, "loadgroup", False):
        return
    shared = tmp_path_factory.getbasetemp().parent  # one folder per run, a sub-folder per worker
    try:
        fd = os.open(shared / "small_study_quantified_by", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        other = (shared / "small_study_quantified_by").read_text()
        pytest.fail(f"the small study is quantified by {worker} after {other}: the xdist group "
                    f"{SMALL_STUDY_GROUP!r} is not in effect (is pytest >= 9.2 installed? see pyproject.toml)")
    os.write(fd, worker.encode())
    os.close(fd)


@pytest.fixture(scope="session")
def small_quantified(small_study: Path, tmp_path_factory: pytest.TempPathFactory,
                     request: pytest.FixtureRequest) -> Iterator[Path]:
    """The processed folder of :func:`analysis.pipeline.quantify.quantify_study` on :func:`small_study`.

    The only quantification of the whole small study in a test session: ``measurements.parquet``,
    ``cells.parquet``, ``puncta.parquet``, ``failures.csv``, ``raw_manifest.csv`` and the
    per-image ``cache/``.  Read-only: the folder's files are hashed here and checked again at
    the end of the session, so a test that writes into it fails (copy it to change it).
    Tests that need the report's copy of the tables use :func:`small_report`, which is built
    from this folder's cache.
    """
    from analysis.pipeline.quantify import quantify_study

    _claim_the_quantification(tmp_path_factory, request.config)
    out = tmp_path_factory.mktemp("small_quantified")
    quantify_study(small_study / "samples.csv", out, workers=2, progress=False)
    before = _digest(out)
    yield out
    after = _digest(out)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"tests wrote into the read-only small_quantified folder: {changed}"


@pytest.fixture(scope="session")
def small_report(small_study: Path, small_quantified: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole report (pipeline and every notebook) run once on :func:`small_study`.

    The pipeline runs for real (``quantify_study`` and the model fits) but on a copy of
    :func:`small_quantified`, so every image is served from its cache instead of being
    quantified a second time.  Returns the output folder with ``processed/`` and ``reports/``
    (read-only for tests).
    """
    from analysis.report.run import run_report

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("report")
    shutil.copytree(small_quantified, out / "processed")  # (a copy: small_quantified stays read-only)
    run_report(
        data_dir=small_study,
        processed_dir=out / "processed",
        reports_dir=out / "reports",
        notebooks_dir=root / "notebooks",
        workers=2,
        parameters=SMALL_REPORT_PARAMETERS,
    )
    return out
