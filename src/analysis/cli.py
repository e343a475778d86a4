"""Command line: ``python -m analysis <command> --help``.

Bad input (an :class:`analysis.errors.InputError`) is printed as a plain message naming the
file, line and column, and the command exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from analysis import __version__
from analysis.errors import InputError

log = logging.getLogger("analysis")


def _cmd_simulate(args: argparse.Namespace) -> int:
    from analysis.simulate import simulate_study

    out = Path(args.out)
    if args.if_empty and (out / "samples.csv").exists():
        log.info("%s already holds a study (samples.csv); not simulating", out)
        return 0
    simulate_study(out, preset=args.preset, seed=args.seed, workers=args.workers, overwrite=args.overwrite)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from analysis.io import load_samples

    samples = load_samples(args.samples)
    print(f"{args.samples}: {len(samples)} images of {samples['animal_id'].nunique()} animals; sheet is valid")
    return 0


def _cmd_quantify(args: argparse.Namespace) -> int:
    from analysis.quantify import quantify_study

    m = quantify_study(args.samples, args.out, workers=args.workers, scheduler=args.scheduler, strict=args.strict,
                       use_cache=not args.no_cache)
    print(f"quantified {len(m)} images into {args.out}/measurements.parquet and cells.parquet")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from analysis.stats import fit_study

    for name, path in fit_study(args.measurements, args.out).items():
        print(f"{name}: {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import run_report

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
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    p.add_argument(
        "--if-empty", action="store_true", help="do nothing when the folder already holds a study (samples.csv)"
    )
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("validate", help="check a sample sheet and its images against the contract")
    p.add_argument("samples", help="path to samples.csv")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("quantify", help="measure puncta, microglia and engulfment in every image of a sheet")
    p.add_argument("--samples", default="data/raw/samples.csv", help="sample sheet (default: data/raw/samples.csv)")
    p.add_argument("--out", default="data/processed", help="output folder (default: data/processed)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of the local dask cluster (default: all cores; 1: no cluster)")
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
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("report", help="run the notebooks with papermill and write HTML reports")
    p.add_argument("--data", default="data/raw", help="folder with samples.csv (default: data/raw)")
    p.add_argument("--processed", default="data/processed", help="derived tables (default: data/processed)")
    p.add_argument("--reports", default="reports", help="HTML output folder (default: reports)")
    p.add_argument("--notebooks", default="notebooks", help="notebook folder (default: notebooks)")
    p.add_argument("--kernel", default="analysis", help="Jupyter kernel name (default: analysis)")
    p.add_argument("--only", action="append", help="run only this notebook (repeatable), e.g. 00_study_design")
    p.add_argument("--workers", type=int, default=None, help="quantification workers (default: all cores)")
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
    except (FileExistsError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from analysis.report import ReportError

        if not isinstance(exc, ReportError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
