"""The readout registry: what each readout reads, measures, stores and reports.

A **readout** is one measurement module (in :mod:`analysis.measure`) plus one
:class:`Readout` entry here.  The entry says which channel roles of the sample sheet it reads,
the per-image function that turns those channels into one row of numbers and named
per-object tables, its default parameters, the modules whose source decides its result and
the notebook that reports it.  Everything else is derived from the registry:

* :func:`analysis.pipeline.quantify.quantify_image` runs, for each image, every readout whose
  required channel roles the sheet assigns (in registry order, so a readout can use the
  results of the ones it ``needs``);
* the cache key (:func:`code_modules`) covers the source of every registered readout's
  modules, so a new or edited detector never reuses stale results;
* the sheet's optional channel roles (:func:`channel_roles`), the tables ``quantify`` writes
  (one ``<name>.parquet`` per named table) and the report's notebook list
  (:func:`notebooks_for`) follow the entries.

Adding a readout is one module and one call::

    from analysis.pipeline.registry import Measured, Readout, register

    def measure_spots(channels, pixel_size_um, *, params, upstream, **_):
        n = ...  # measure channels["spot_channel"]
        return Measured(row={"n_spots": n}, tables={"spots": table})

    register(Readout(name="spots", roles=("spot_channel",), measure=measure_spots,
                     modules=(__name__,), notebook=None))
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import Problem
from analysis.io.sheet import register_channel_role
from analysis.pipeline.heap import release_free_memory

__all__ = ["Measured", "Readout", "READOUTS", "register", "unregister", "readouts_for", "channel_roles",
           "code_modules", "notebooks_for", "series_problems", "BASE_MODULES"]

log = logging.getLogger(__name__)


@dataclass
class Measured:
    """What one readout measured on one image.

    Attributes
    ----------
    row : dict
        Image-level numbers (column name -> value), physical units in the names.
    tables : dict of str -> DataFrame
        Named per-object tables (e.g. ``"puncta"``, ``"cells"``); a readout that ``needs``
        another may return an extended copy of that readout's table under the same name, which
        replaces it.
    quality : list of dict
        Per-channel quality rows (:func:`analysis.measure.quality.image_quality`), merged into the
        image row once every readout ran.
    state : dict
        Intermediate results other readouts of the same image may use (not stored).
    """

    row: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    quality: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


#: Signature of a readout's per-image function: ``measure(channels, pixel_size_um, *,
#: z_step_um, params, upstream, seed, quality) -> Measured``; ``channels`` maps each role the sheet
#: assigns (of the readout's ``roles`` and ``optional_roles``) to the channel as YX or ZYX,
#: ``upstream`` maps the names in ``needs`` to their :class:`Measured` (absent when that
#: readout did not run on this image), ``seed`` is the image's seed (configured seed and a
#: checksum of its pixels) and ``quality`` the spike-in settings
#: (:data:`analysis.pipeline.quantify.QUALITY_DEFAULTS` with the study's overrides).
MeasureFunc = Callable[..., Measured]


@dataclass(frozen=True)
class Readout:
    """One readout: its channel roles, per-image function, parameters and notebook.

    Attributes
    ----------
    name : str
        Short name (``puncta``, ``microglia``, ...); also the key of its parameters in
        :class:`analysis.pipeline.quantify.QuantifyParams`.
    roles : tuple of str
        Sample-sheet channel columns it needs (all of them must be assigned for it to run).
    measure : callable
        The per-image function (:data:`MeasureFunc`).
    modules : tuple of str
        Modules whose source decides its result (enter the cache key).
    optional_roles : tuple of str
        Channel columns it uses when present.
    needs : tuple of str
        Readouts whose results (``upstream``) it uses; they run first when registered before it.
    params : dict
        Default parameters (overridden by the study's :class:`QuantifyParams`).
    notebook : str or None
        The report notebook of this readout (several readouts may share one).
    description : str
        One line for the report when a study lacks this readout.
    series : callable, optional
        A study-level step over the images of one imaged position in session order
        (``series(images, pixel_sizes_um, *, params) -> DataFrame`` with a ``session`` column,
        0-based; one pixel size per image, as the zoom may change between sessions): e.g.
        spines tracked across sessions.  Run by
        :func:`analysis.pipeline.quantify.quantify_study` for every group of ``series_by``
        with two or more images; written to ``<series_table>.parquet``.
    series_by : tuple of str
        Sample-sheet columns that identify one imaged position (those present are used).
    series_table : str, optional
        Name of the series table.
    """

    name: str
    roles: tuple[str, ...]
    measure: MeasureFunc
    modules: tuple[str, ...] = ()
    optional_roles: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    notebook: str | None = None
    description: str = ""
    series: Callable[..., pd.DataFrame] | None = None
    series_by: tuple[str, ...] = ("animal_id", "field")
    series_table: str | None = None


#: Registered readouts, in the order they run on an image.
READOUTS: dict[str, Readout] = {}

#: Modules that decide every per-image result whatever the readouts (runner, readers, quality, cache).
BASE_MODULES: tuple[str, ...] = ("analysis.pipeline.quantify", "analysis.pipeline.registry", "analysis.pipeline.cache",
                                 "analysis.io.images", "analysis.measure.quality", "analysis.measure.noise")


def register(readout: Readout, *, replace: bool = False) -> Readout:
    """Add a readout to the registry (after the ones already there).

    Parameters
    ----------
    readout : Readout
        The entry.
    replace : bool
        Replace an entry of the same name (keeps its position) instead of raising.

    Returns
    -------
    Readout
        The entry (so ``register`` can be used at module level).
    """
    if not readout.roles:
        raise ValueError(f"readout {readout.name!r} reads no channel role")
    if readout.name in READOUTS and not replace:
        raise ValueError(f"a readout named {readout.name!r} is already registered")
    missing = [n for n in readout.needs if n not in READOUTS and n != readout.name]
    if missing:
        raise ValueError(f"readout {readout.name!r} needs {missing}, which are not registered before it")
    for role in (*readout.roles, *readout.optional_roles):
        register_channel_role(role)
    READOUTS[readout.name] = readout
    return readout


def unregister(name: str) -> None:
    """Remove a readout (tests, plug-ins)."""
    READOUTS.pop(name, None)


def _assigned(roles: Mapping[str, Any], role: str) -> bool:
    value = roles.get(role)
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and not pd.isna(value)


def readouts_for(roles: Mapping[str, Any]) -> list[Readout]:
    """The readouts that run on an image whose sheet row assigns ``roles`` (role -> channel)."""
    return [r for r in READOUTS.values() if all(_assigned(roles, role) for role in r.roles)]


def channel_roles() -> tuple[str, ...]:
    """Every channel role a registered readout reads, in registry order."""
    seen: dict[str, None] = {}
    for r in READOUTS.values():
        for role in (*r.roles, *r.optional_roles):
            seen.setdefault(role, None)
    return tuple(seen)


def _blank(values: pd.Series) -> pd.Series:
    """True where a sheet value is missing (NaN, None or an empty / blank string)."""
    return values.isna() | values.astype(str).str.strip().eq("")


def series_problems(samples: pd.DataFrame, sheet: str, lines: Mapping[Any, int] | None = None) -> list[Problem]:
    """Images that a readout's series step could not tell apart: two images of one animal on
    one day, of a readout that follows one imaged position across sessions, without the sheet
    column that says which position each shows.

    A series step (e.g. spine tracking) takes the images of one position (the readout's
    ``series_by`` columns, e.g. ``animal_id`` and ``field``) in order of ``day``.  When the
    sheet lacks a position column, or leaves it empty, every image of an animal is taken as
    one position: two images of the same day would then be tracked as two sessions of the
    same position (for spines: different dendrites give turnover that is not there).  With the column
    filled, two images of one position on one day are a repeat (sessions minutes apart) and
    are tracked in sheet order.

    Parameters
    ----------
    samples : DataFrame
        The loaded sheet (:func:`analysis.io.load_samples`).
    sheet : str
        The sheet's name, for the messages.
    lines : mapping, optional
        The sheet's line number of each row (:func:`analysis.io.sheet.sheet_lines`; default:
        index + 2, a header line and no blank lines).

    Returns
    -------
    list of Problem
        One per image that repeats an animal's day, naming the lines and the fix.
    """
    problems: list[Problem] = []
    lines = dict(lines) if lines is not None else {}
    line = lambda i: int(lines.get(i, i + 2)) if isinstance(i, (int, np.integer)) else None  # noqa: E731
    for readout in READOUTS.values():
        role = readout.roles[0]
        if readout.series is None or role not in samples or "day" not in samples or "animal_id" not in samples:
            continue
        rows = samples[samples[role].notna()]
        extra = [c for c in readout.series_by if c not in ("animal_id", "day")]
        if not len(rows) or not extra:
            continue
        unknown = pd.Series(False, index=rows.index)
        for c in extra:
            unknown |= _blank(rows[c]) if c in rows else True
        rows = rows[unknown]
        dup = rows[rows.duplicated(["animal_id", "day"], keep=False)]
        for (animal, day), grp in dup.groupby(["animal_id", "day"], sort=False):
            where = ", ".join(str(line(i)) for i in grp.index)
            absent = [c for c in extra if c not in samples]
            cols = " and ".join(f"`{c}`" for c in extra)
            why = (f"the sheet has no {cols} column" if absent else f"{cols} is empty on these rows")
            problems.append(Problem(
                sheet, f"animal {animal!r} has {len(grp)} images with a {role} on day {day:g} (lines {where}) and {why} "
                       f"to say which imaged position each shows, so the {readout.name} readout would track them as "
                       f"sessions of one position; add a {cols} column naming the position (the same value for "
                       "the same position in every session; a repeat image of one position shares it)",
                row=line(grp.index[1]), column=extra[0]))
    return problems


def code_modules() -> tuple[str, ...]:
    """Modules whose source enters the cache key: :data:`BASE_MODULES` and every readout's, with
    the modules of :data:`CLOSED_PACKAGES` they import, directly or through each other (an
    edit of a helper such as ``analysis.measure.outside`` changes the detections of
    ``analysis.measure.puncta`` as much as an edit of that module itself)."""
    seen: dict[str, None] = dict.fromkeys(BASE_MODULES)
    for r in READOUTS.values():
        for m in r.modules:
            seen.setdefault(m, None)
    for m in list(seen):
        for dep in _imported(m):
            seen.setdefault(dep, None)
    return tuple(seen)


#: Packages whose modules :func:`code_modules` follows through imports: those that turn an
#: image into numbers (not the pipeline's runner, the statistics or the report).
CLOSED_PACKAGES: tuple[str, ...] = ("analysis.measure.", "analysis.io.")


def _is_module(name: str) -> bool:
    """Whether ``name`` is an importable module (not a function or class of one)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # (its parent is a module, not a package)
        return False


@functools.cache
def _imported(module: str) -> tuple[str, ...]:
    """The modules of :data:`CLOSED_PACKAGES` that ``module`` imports anywhere in its source
    (at the top or inside functions), and theirs, in the order first met."""
    found: dict[str, None] = {}
    todo = [module]
    while todo:
        name = todo.pop(0)
        spec = importlib.util.find_spec(name) if _is_module(name) else None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # (``from analysis.measure import filters``: the submodule, when it is one)
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith(CLOSED_PACKAGES) and name not in found and name != module and _is_module(name):
                    found[name] = None
                    todo.append(name)
    return tuple(found)


def notebooks_for(samples: pd.DataFrame | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Readout notebooks a study gets, and the ones it lacks with the reason.

    Parameters
    ----------
    samples : DataFrame, optional
        The sample sheet; a readout is present when at least one row assigns all its roles.
        None: every registered readout's notebook.

    Returns
    -------
    run : list of str
        Notebook file names to run, in registry order, each once.
    skipped : list of (str, str)
        ``(notebook, sentence)`` for notebooks none of whose readouts the study has.
    """
    present: dict[str, bool] = {}
    why: dict[str, list[str]] = {}
    for r in READOUTS.values():
        if r.notebook is None:
            continue
        has = samples is None or bool(
            len(samples) and all(role in samples.columns for role in r.roles)
            and samples[list(r.roles)].notna().all(axis=1).any())
        present[r.notebook] = present.get(r.notebook, False) or has
        if not has:
            roles = ", ".join(f"`{role}`" for role in r.roles)
            why.setdefault(r.notebook, []).append(f"{r.description or r.name} (needs {roles} in the sample sheet)")
    run = [nb for nb, has in present.items() if has]
    skipped = [(nb, "This study has no " + "; no ".join(why[nb]) + ", so this notebook was not run.")
               for nb, has in present.items() if not has]
    return run, skipped


def run_readouts(channels: Mapping[str, np.ndarray], pixel_size_um: float, *, z_step_um: float | None,
                 params: Mapping[str, Mapping[str, Any]], seed: Any, quality: Mapping[str, Any],
                 readouts: Iterable[Readout]) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Run ``readouts`` on one image's channels; the merged row and named tables.

    The rows are merged in order, then every readout's quality rows (the largest saturated
    fraction over the channels read, ``in_validated_range`` true when every readout's is).
    """
    row: dict[str, Any] = {}
    tables: dict[str, pd.DataFrame] = {}
    quality_rows: list[dict[str, Any]] = []
    done: dict[str, Measured] = {}
    for r in readouts:
        own = {role: channels[role] for role in (*r.roles, *r.optional_roles) if role in channels}
        upstream = {n: done[n] for n in r.needs if n in done}
        result = r.measure(own, pixel_size_um, z_step_um=z_step_um, params={**r.params, **params.get(r.name, {})},
                           upstream=upstream, seed=seed, quality=quality)
        done[r.name] = result
        # the readout's freed work arrays back to the system before the next one runs
        # (otherwise the allocator keeps them and the next readout's work comes on top)
        release_free_memory()
        row.update(result.row)
        tables.update(result.tables)
        quality_rows.extend(result.quality)
    if quality_rows:
        for q in quality_rows:
            row.update({k: v for k, v in q.items() if k not in ("saturated_fraction", "in_validated_range")})
        row["saturated_fraction"] = max(q["saturated_fraction"] for q in quality_rows)
        row["in_validated_range"] = all(q.get("in_validated_range", True) for q in quality_rows)
    return row, tables
