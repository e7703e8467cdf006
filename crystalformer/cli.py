"""The ``crystalformer`` command line: a thin layer that parses arguments and calls typed functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from .data import PrepareConfig, prepare

    inputs = [*(args.csv or []), *(args.cif or [])]
    if not inputs:
        raise UsageError("data prepare needs at least one --csv FILE or --cif FILE_OR_FOLDER")
    config = PrepareConfig(symprec=args.symprec, angle_tolerance=args.angle_tolerance, n_max=args.n_max,
                           workers=args.workers)
    summary = prepare(inputs, args.out, config, force=args.force, progress=not args.quiet)
    print(summary.table())
    if summary.skipped:
        print(f"skipped inputs are listed with their reasons in {Path(args.out) / 'skipped.jsonl'}")
    return 0


class UsageError(Exception):
    """A mistake in the command line; reported without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .grammar import DEFAULT_N_MAX

    parser = argparse.ArgumentParser(prog="crystalformer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"crystalformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare data sets").add_subparsers(dest="data_command", required=True)
    prep = data.add_parser("prepare", help="symmetry analysis + tokens for CSV files / CIF folders (cached)")
    prep.add_argument("--csv", action="append", type=Path, help="CDVAE-format CSV (repeatable)")
    prep.add_argument("--cif", action="append", type=Path, help="CIF file or folder of CIF files (repeatable)")
    prep.add_argument("--out", type=Path, required=True, help="output directory")
    prep.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    prep.add_argument("--symprec", type=float, default=0.01, help="spglib tolerance in Å (default 0.01)")
    prep.add_argument("--angle-tolerance", type=float, default=5.0, help="degrees (default 5)")
    prep.add_argument("--n-max", type=int, default=DEFAULT_N_MAX, help=f"max sites (default {DEFAULT_N_MAX})")
    prep.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=cmd_data_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, FileNotFoundError, ValueError) as err:
        print(f"crystalformer: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
