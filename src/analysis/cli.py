"""Command line: ``python -m analysis <command> --help``.

Bad input (an :class:`analysis.errors.InputError`, or a file that cannot be opened) is printed
as a plain message naming the file, line and column, and the command exits with status 2,
without a traceback.  Any other error is a bug: a one-line message (the traceback with
``--verbose``) and status 1.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from analysis import __version__
from analysis.errors import InputError, Problem

log = logging.getLogger("analysis")


def _cmd_simulate(args: argparse.Namespace) -> int:
    from analysis.sim.simulate import simulate_study

    out = Path(args.out)
    if args.if_empty and (out / "samples.csv").exists():
        log.info("%s already holds a study (samples.csv); not simulating", out)
        return 0
    simulate_study(out, preset=args.preset, seed=args.seed, workers=args.workers, overwrite=args.overwrite)
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    import analysis.pipeline.readouts  # noqa: F401  (registers the readouts' channel roles as sheet columns)
    from analysis.io.starter import fill_in_message, write_starter_sheet

    started = write_starter_sheet(args.folder, force=args.force)
    print(fill_in_message(started))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from analysis.io import load_samples

    samples = load_samples(args.samples)
    print(f"{args.samples}: {len(samples)} images of {samples['animal_id'].nunique()} animals; sheet is valid")
    for problem in fit_problems(samples, str(args.samples)):
        print(f"note: `fit` will refuse the measurements of this sheet: {problem.message}")
    for note in design_notes(samples):
        print(f"note: {note}")
    return 0


def _cmd_quantify(args: argparse.Namespace) -> int:
    from analysis.pipeline.quantify import quantify_study

    m = quantify_study(args.samples, args.out, workers=args.workers, scheduler=args.scheduler, strict=args.strict,
                       use_cache=not args.no_cache)
    print(f"quantified {len(m)} images into {args.out}/measurements.parquet and cells.parquet")
    return 0


#: Columns ``fit`` needs in the measurements table (written by ``quantify``).
FIT_COLUMNS = ("image_id", "animal_id", "genotype", "compound", "dose_mg_kg", "treatment_days", "day")
#: Image-level values of the fitted readouts (a measurements table has at least one).
FIT_VALUES = {"synapse": "puncta_density_per_100um2", "spine": "spine_density_per_um", "microglia": "microglia_count"}


def _endpoint_rows(table) -> dict[str, object]:
    """The rows of each fitted readout: by its value (measurements) or its channel roles (a sheet)."""
    from analysis.stats.models import synapse_rows

    out = {}
    for kind, value in FIT_VALUES.items():
        if value in table:
            rows = synapse_rows(table, value) if kind == "synapse" else table[table[value].notna()]
        else:
            role = {"synapse": "synapse_channel", "spine": "dendrite_channel", "microglia": "microglia_channel"}[kind]
            if role not in table:
                continue
            rows = table[table[role].notna()]
            if kind == "synapse" and "microglia_channel" in rows and rows["microglia_channel"].isna().any():
                rows = rows[rows["microglia_channel"].isna()]
        if len(rows):
            out[kind] = rows
    return out


#: What a treated session must share with a vehicle session to be compared with it.
_MATCH = ("genotype", "treatment_days", "day")


def _after_first_dose(sub, vehicle: str):
    """Treated and vehicle rows of sessions after the first dose (day >= 0)."""
    after = sub[sub["day"] >= 0]
    return after[after["compound"] != vehicle], after[after["compound"] == vehicle]


def _keys(rows, columns) -> list[tuple]:
    return [tuple(r) for r in rows[list(columns)].drop_duplicates().itertuples(index=False)]


#: The columns that make a treatment group.
_GROUP = ("genotype", "compound", "dose_mg_kg", "treatment_days")


def _uncompared(sub, vehicle: str, baselines: bool = True) -> dict[tuple, str]:
    """Treated groups of ``sub`` that the models cannot compare with vehicle, and why (the rule
    of :func:`analysis.stats.models.synapse_contrasts`: vehicle animals of the same genotype and
    treatment_days imaged on the same day after the first dose, and, for the longitudinal
    readouts (``baselines``), with a baseline session when the treated group has one and without
    when it has none; microglia are compared at each day)."""
    out = {}
    vehicles = sub[sub["compound"] == vehicle]
    for key, g in sub[sub["compound"] != vehicle].groupby(list(_GROUP)):
        genotype, compound, dose, days = key
        v = vehicles[(vehicles["genotype"] == genotype) & (vehicles["treatment_days"] == days)]
        shared = set(g.loc[g["day"] >= 0, "day"]) & set(v.loc[v["day"] >= 0, "day"])
        name = f"{genotype} {compound} {dose:g} mg/kg x {days:g} d"
        if not shared:
            out[key] = f"{name} has no vehicle animals of its genotype and treatment_days imaged on the same day"
        elif baselines and (g["day"] < 0).any() != (v["day"] < 0).any():
            which = "it has a baseline session and its vehicle animals none" if (g["day"] < 0).any() else (
                "its vehicle animals have a baseline session and it has none")
            out[key] = f"{name}: {which}"
    return out


def _show(rows) -> str:
    """Genotype, treatment days and days of ``rows``, e.g. ``WT 7 d on day 7, 56``."""
    parts = []
    for (g, t), d in rows.groupby(["genotype", "treatment_days"])["day"]:
        parts.append(f"{g} {t:g} d on day {', '.join(f'{x:g}' for x in sorted(d.unique()))}")
    return "; ".join(parts)


def fit_problems(table, file: str) -> list[Problem]:
    """Why the models cannot be fitted to the images of ``table`` (a sheet or measurements).

    Each readout the table has (synapse density, spine density, microglia counts) is
    compared between groups with animals as the unit: it needs a session after the first
    dose, a treated group, and a group of two or more animals.  A baseline session (day < 0)
    is not needed: without one the groups are compared at each day (cross-sectional).
    """
    from analysis.io import REFERENCE_COMPOUND

    rows = _endpoint_rows(table)
    if not rows:
        return [Problem(file, "no image has a synapse density, a spine density or a microglia count, so there is "
                              "nothing to fit; check failures.csv beside it for the images that could not be measured",
                        column=FIT_VALUES["synapse"])]
    problems = []
    for kind, sub in rows.items():
        if not (sub["day"] >= 0).any():
            problems.append(Problem(file, f"only baseline {kind} images (day < 0): there is no session after the first "
                                          "dose to compare; add the later sessions", column="day"))
        compounds = set(sub["compound"].dropna())
        if compounds and compounds <= {REFERENCE_COMPOUND}:
            problems.append(Problem(file, f"only vehicle {kind} images: there is no treated group to compare with "
                                          "vehicle; add the treated animals", column="compound"))
        treated, vehicle = _after_first_dose(sub, REFERENCE_COMPOUND)
        reasons = _uncompared(sub, REFERENCE_COMPOUND, baselines=kind != "microglia")
        if len(treated) and len(reasons) == len(_keys(treated, _GROUP)):
            if not set(_keys(treated, _MATCH)) & set(_keys(vehicle, _MATCH)):
                problems.append(Problem(
                    file, f"no treated {kind} group has vehicle animals of the same genotype and treatment_days imaged on "
                          f"the same day (treated: {_show(treated)}; vehicle: {_show(vehicle) or 'none after the first dose'}): "
                          "each treated group is compared with the vehicle animals of its genotype and dosing duration at "
                          "each session; give the vehicle controls the treatment_days of the group they control and image "
                          "them at the same sessions", column="treatment_days"))
            else:
                problems.append(Problem(
                    file, f"no treated {kind} group can be compared with vehicle: {'; '.join(sorted(set(reasons.values())))}; "
                          "a change from baseline is compared with the vehicle animals' change from their baseline, a "
                          "single session with the vehicle animals' same session: give both groups a baseline session "
                          "(day < 0) or neither", column="day"))
        animals = sub.groupby(["genotype", "compound", "dose_mg_kg", "treatment_days"])["animal_id"].nunique()
        if len(animals) and animals.max() < 2:
            problems.append(Problem(file, f"every group has a single animal ({kind} images): the model needs two or "
                                          "more animals in a group to separate animal from treatment; add animals",
                                    column="animal_id"))
    return problems


def design_notes(table) -> list[str]:
    """What the models will do with the design of ``table`` (not problems)."""
    from analysis.io import REFERENCE_COMPOUND

    notes = []
    for kind, sub in _endpoint_rows(table).items():
        if kind != "microglia" and not (sub["day"] < 0).any():
            notes.append(f"no baseline {kind} session (day < 0): groups are compared with vehicle at each day "
                         "(cross-sectional); add baseline sessions to measure change within animals")
        reasons = _uncompared(sub, REFERENCE_COMPOUND, baselines=kind != "microglia")
        if len(reasons) < sub.loc[sub["compound"] != REFERENCE_COMPOUND, list(_GROUP)].drop_duplicates().shape[0]:
            for why in reasons.values():  # (when none can be compared, fit_problems says so)
                notes.append(f"{kind}: {why}: it gets no contrast with vehicle")
    return notes


def load_measurements(path: str | Path):
    """The measurements table for ``fit``, checked and with the models' group names.

    Raises
    ------
    InputError
        Not a file, not a Parquet table, columns missing, nothing to fit, or no vehicle group;
        the message names the file and the fix.
    """
    import pandas as pd

    from analysis.io import _file_problem, normalise_vocabulary

    p = Path(path)
    f = str(p)
    made_by = "the measurements.parquet that `python -m analysis quantify` writes"
    if p.is_dir():
        raise InputError(Problem(f, f"is a folder, not a measurements table; give {made_by} (e.g. {p / 'measurements.parquet'})"))
    problem = _file_problem(p)
    if problem is not None and problem.startswith("file not found"):
        problem = f"measurements table not found; run `python -m analysis quantify` first or give {made_by} with --measurements"
    if problem is not None:
        raise InputError(Problem(f, problem))
    try:
        table = pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises its own types for non-Parquet bytes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(Problem(f, f"is not a Parquet table ({reason}); give {made_by} (a CSV sample sheet goes to `quantify --samples`)")) from None
    missing = [c for c in FIT_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(Problem(f, f"missing column(s) {', '.join(missing)}; give {made_by}", column=missing[0]))
    table, problems = normalise_vocabulary(table, f)
    problems = problems or fit_problems(table, f)
    if problems:
        raise InputError(problems)
    return table


def _cmd_fit(args: argparse.Namespace) -> int:
    from analysis.stats import fit_study

    table = load_measurements(args.measurements)
    with tempfile.TemporaryDirectory(prefix="analysis-fit-") as tmp:
        # fit_study reads a file: hand it the checked table with the models' group names
        checked = Path(tmp) / "measurements.parquet"
        table.to_parquet(checked)
        # (the per-cell table stays beside the original measurements)
        written = fit_study(str(checked), args.out, primary=args.primary,
                            adjust_for_quality=not args.no_quality_adjustment,
                            cells_path=str(Path(args.measurements).with_name("cells.parquet")),
                            tracks_path=str(Path(args.measurements).with_name("spine_tracks.parquet")))
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _snr_mix(text: str) -> dict[str, float]:
    """``"high=0.2,default=0.5,low=0.2,hard=0.1"`` -> dict (argparse type)."""
    try:
        mix = {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not like high=0.2,default=0.5,low=0.2,hard=0.1") from None
    if not mix or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give non-negative shares of the SNR levels")
    return mix


def _cmd_power(args: argparse.Namespace) -> int:
    from analysis.sim.power import design_preset, power_table, simulate_power

    try:
        preset = design_preset("default", animals_per_group=args.animals, synapse_fields=args.fields,
                               snr_mix=args.snr_mix)
    except ValueError as exc:
        raise InputError(Problem("--snr-mix", str(exc))) from None
    table = power_table(simulate_power(preset, args.studies, primary=args.primary or None, seed=args.seed,
                                       workers=args.workers or 1))
    table.insert(0, "design", preset)
    if args.out:
        from analysis.io.files import write_csv

        write_csv(table, args.out)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns="design").round(3).to_string(index=False))
    head = table[table["primary"]]
    if len(head):
        h = head.iloc[0]
        print(f"\nprimary contrast {h.group}: power {h.power_adjusted:.2f} at the report's adjustment "
              f"({args.studies} simulated studies of {preset})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.report.run import run_report

    written = run_report(
        data_dir=args.data,
        processed_dir=args.processed,
        reports_dir=args.reports,
        notebooks_dir=args.notebooks,
        kernel_name=args.kernel,
        only=args.only,
        workers=args.workers,
        scheduler=args.scheduler,
    )
    for path in written:
        print(path)
    return 0


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a worker count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give a number of workers >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} workers; give a number >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m analysis``."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Synapse and microglia analysis of the long-term benzodiazepine study.",
    )
    parser.add_argument("--version", action="version", version=f"analysis {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate", help="write a simulated study (images, samples.csv, ground truth)")
    p.add_argument("--out", default="data/raw", help="folder to create the study in (default: data/raw)")
    p.add_argument("--preset", default="default", choices=["small", "default", "null", "large"])
    p.add_argument("--seed", type=int, default=0, help="study seed (default: 0)")
    p.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    p.add_argument(
        "--if-empty", action="store_true", help="do nothing when the folder already holds a study (samples.csv)"
    )
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("init", help="write a starter samples.csv for a folder of images (one row per image, pixel "
                                    "size and channel names from the metadata) and say which columns to fill",
                       description="Write FOLDER/samples.csv with one row per image file under FOLDER (TIFF, OME-TIFF, "
                                   "LSM, CZI, LIF, ND2): image_id from the file name, path, pixel_size_um and z_step_um "
                                   "from the metadata, the channels in a channel_names column; the other columns are "
                                   "left for you to fill. Unreadable files are listed, not fatal.")
    p.add_argument("folder", metavar="FOLDER", help="folder with the images (searched with its subfolders)")
    p.add_argument("--force", action="store_true", help="replace an existing FOLDER/samples.csv")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("validate", help="check a sample sheet and its images against the contract")
    p.add_argument("samples", help="path to samples.csv")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("quantify", help="measure puncta, microglia and engulfment in every image of a sheet")
    p.add_argument("--samples", default="data/raw/samples.csv", help="sample sheet (default: data/raw/samples.csv)")
    p.add_argument("--out", default="data/processed", help="output folder (default: data/processed)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="worker processes of the local dask cluster (default: as many as the available memory allows, at most one per core; 1: no cluster)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="use an existing dask cluster, e.g. tcp://10.0.0.5:8786 (default: a local cluster)")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute every image instead of reusing the per-image cache in OUT/cache")
    p.add_argument("--strict", action="store_true",
                   help="fail on any unreadable, blank or saturated image instead of listing it in failures.csv")
    p.set_defaults(func=_cmd_quantify)

    p = sub.add_parser("fit", help="fit the longitudinal synapse mixed model and write its tables")
    p.add_argument("--measurements", default="data/processed/measurements.parquet",
                   help="measurements table (default: data/processed/measurements.parquet)")
    p.add_argument("--out", default="data/processed", help="output folder (default: data/processed)")
    p.add_argument("--primary", default=None, metavar="GROUP",
                   help='pre-specified primary group, tested first before Holm over the other planned contrasts '
                        '(e.g. "WT diazepam 5 mg/kg x 7 d"; default: Holm over all; `report` reads it from '
                        'analysis_plan.json beside samples.csv)')
    p.add_argument("--no-quality-adjustment", action="store_true",
                   help="do not use the measured SNR of each image as a covariate of the synapse model")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("power", help="power of the planned synapse contrasts for a design, by simulation with "
                                     "the detector's measured error model")
    p.add_argument("--animals", type=_positive_int, default=None, help="animals per group (default design: 8)")
    p.add_argument("--fields", type=_positive_int, default=None,
                   help="PSD95 fields per animal and session (default design: 4)")
    p.add_argument("--snr-mix", type=_snr_mix, default=None,
                   help="shares of image quality, e.g. high=0.2,default=0.5,low=0.2,hard=0.1 (the default design's)")
    p.add_argument("--studies", type=_positive_int, default=100, help="simulated studies (default: 100)")
    p.add_argument("--primary", default="WT diazepam 5 mg/kg x 7 d",
                   help='primary contrast tested first (default: "%(default)s"; "" for Holm over all)')
    p.add_argument("--seed", type=int, default=80_000, help="seed of the first study (default: 80000)")
    p.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: 1)")
    p.add_argument("--out", default=None, help="write the table as CSV here")
    p.set_defaults(func=_cmd_power)

    p = sub.add_parser("report", help="run the notebooks with papermill and write HTML reports")
    p.add_argument("--data", default="data/raw", help="folder with samples.csv (default: data/raw)")
    p.add_argument("--processed", default="data/processed", help="derived tables (default: data/processed)")
    p.add_argument("--reports", default="reports", help="HTML output folder (default: reports)")
    p.add_argument("--notebooks", default="notebooks", help="notebook folder (default: notebooks)")
    p.add_argument("--kernel", default="analysis", help="Jupyter kernel name (default: analysis)")
    p.add_argument("--only", action="append", help="run only this notebook (repeatable), e.g. 00_study_design")
    p.add_argument("--workers", type=_positive_int, default=None, help="quantification workers (default: as many as the available memory allows, at most one per core)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="use an existing dask cluster for the quantification (default: a local cluster)")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be opened, created or read: the user can fix it
        print(f"error: {_os_message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        from analysis.report.run import ReportError

        if isinstance(exc, ReportError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.verbose:
            log.exception("unexpected error")
        print(f"error: unexpected {type(exc).__name__}: {exc}\nThis is a bug in analysis, not in your input; "
              "rerun with --verbose to see the traceback and report it.", file=sys.stderr)
        return 1


def _os_message(exc: OSError) -> str:
    """An OSError as 'file: what happened; fix'."""
    where = " -> ".join(str(x) for x in (exc.filename, exc.filename2) if x is not None)
    what = exc.strerror or str(exc)
    fixes = {
        errno.ENOENT: "check the path",
        errno.EEXIST: "remove it or choose another output folder",
        errno.ELOOP: "it is a symbolic link loop: replace the link with the file or point it at the file",
        errno.EACCES: "check the permissions (chmod) or choose another folder",
        errno.EPERM: "check the permissions (chmod) or choose another folder",
        errno.ENOSPC: "free some disk space or write to another disk",
        errno.EISDIR: "give a file, not a folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
        errno.EROFS: "the disk is read-only: choose another output folder",
    }
    fix = fixes.get(exc.errno, "check the path and the disk")
    return f"{where + ': ' if where else ''}{what}; {fix}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
