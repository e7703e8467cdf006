"""The ``crystalformer`` command line: parses arguments and calls typed functions, nothing more.

Each subcommand is a ``cmd_*`` function taking the parsed namespace and returning the exit
code; ``build_parser`` maps command paths to them (``data prepare`` -> :func:`cmd_data_prepare`).
Later commands (``train``, ``sample``, ``csp``, ...) add a ``_add_<name>`` parser builder.
Mistakes in the command line or missing files print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class UsageError(Exception):
    """A mistake in the command line; reported without a traceback, exit code 2."""


# ---------------------------------------------------------------------- commands
def cmd_data_prepare(args: argparse.Namespace) -> int:
    from .data import PrepareConfig, prepare
    from .io import is_csv

    csv, cif = args.csv or [], args.cif or []
    if not csv and not cif:
        raise UsageError("data prepare needs at least one --csv FILE or --cif FILE_OR_FOLDER")
    for path in csv:
        if not path.is_file():
            raise UsageError(f"--csv {path}: file not found")
        if not is_csv(path):
            raise UsageError(f"--csv {path}: expected a .csv file (CDVAE format); use --cif for CIF files")
    for path in cif:
        if not path.exists():
            raise UsageError(f"--cif {path}: file or folder not found")
    config = PrepareConfig(symprec=args.symprec, angle_tolerance=args.angle_tolerance, n_max=args.n_max,
                           workers=args.workers, chunk_size=args.chunk_size)
    summary = prepare([*csv, *cif], args.out, config, force=args.force, progress=not args.quiet)
    print(summary.table())
    if summary.skipped:
        print(f"every skipped input with its reason: {Path(args.out) / 'skipped.jsonl'}")
    return 0


# ---------------------------------------------------------------------- parsers
def _add_data(sub) -> None:
    from .grammar import DEFAULT_N_MAX

    data = sub.add_parser("data", help="prepare data sets").add_subparsers(dest="data_command", metavar="COMMAND",
                                                                          required=True)
    p = data.add_parser("prepare", help="symmetry analysis + tokens of CSV files / CIF folders (cached)",
                        description="Canonical Wyckoff representation and token streams of every structure, "
                                    "written to a prepared directory that training reads. Bad structures are "
                                    "skipped and counted by reason. A second run with unchanged files and "
                                    "settings reuses the directory.")
    p.add_argument("--csv", action="append", type=Path, metavar="FILE",
                   help="CDVAE-format CSV with a 'cif' column (repeatable)")
    p.add_argument("--cif", action="append", type=Path, metavar="PATH",
                   help="CIF file or folder of *.cif files (repeatable)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="prepared directory to write")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--chunk-size", type=int, default=32, help="structures per worker task (default 32)")
    p.add_argument("--symprec", type=float, default=0.01,
                   help="spglib distance tolerance in Å (default 0.01, strict; Materials Project uses 0.1)")
    p.add_argument("--angle-tolerance", type=float, default=5.0, help="spglib angle tolerance in degrees (default 5)")
    p.add_argument("--n-max", type=int, default=DEFAULT_N_MAX,
                   help=f"most Wyckoff sites per crystal; more are skipped (default {DEFAULT_N_MAX})")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_prepare)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="crystalformer",
                                     description="Space-group-aware generative transformer for crystal structures.")
    parser.add_argument("--version", action="version", version=f"crystalformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_data,):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (0 ok, 2 usage or input error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as err:
        print(f"crystalformer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crystalformer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
