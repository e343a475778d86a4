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
    from analysis.stats.design import design_notes, fit_problems

    samples = load_samples(args.samples)
    import analysis.pipeline.readouts  # noqa: F401  (the registry's readouts, for their series checks)
    from analysis.errors import SampleSheetError
    from analysis.io.sheet import sheet_lines
    from analysis.pipeline.registry import series_problems

    series = series_problems(samples, str(args.samples), sheet_lines(args.samples))
    if series:  # quantify refuses these: a sheet validate accepts does not fail later
        raise SampleSheetError(series)
    problems = fit_problems(samples, str(args.samples))
    counts = f"{args.samples}: {len(samples)} images of {samples['animal_id'].nunique()} animals"
    if problems:
        # (quantify can measure it: a pilot, or a study still being imaged; the models cannot)
        print(f"{counts}; the sheet is valid for `quantify`, but `fit` and `report` will refuse its measurements:")
    else:
        print(f"{counts}; sheet is valid")
    for problem in problems:
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
    from analysis.stats.design import fit_problems

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
                   help="do not use the measured SNR of each image as a covariate of the synapse model "
                        "(nor fit the SNR-adjusted sensitivity analyses of the spine model and the spine turnover)")
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
