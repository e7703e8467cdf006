"""``crystalformer evaluate generation|csp``: metrics of generated crystals as JSON plus a PNG report.

Wire into the main CLI with ``from .evaluation.cli import add_parser as _add_evaluate`` and add
``_add_evaluate`` to the parser builders in ``crystalformer/cli.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from ..options import (
    ListAction,
    add_device,
    add_overwrite,
    add_quiet,
    add_seed,
    int_list,
)


def _usage_error(msg: str):
    from ..errors import UsageError

    return UsageError(msg)


def _check_outputs(args) -> Path | None:
    """Validate --json / --report; refuse to overwrite without --overwrite. Returns the report path (or None)."""
    out = args.json
    if out.suffix.lower() != ".json":
        raise _usage_error(f"--json {out}: expected a .json file name")
    if out.exists() and out.is_dir():
        raise _usage_error(f"--json {out}: is a folder")
    report = None if args.no_report else (args.report or out.with_suffix(".png"))
    if report is not None and report.suffix.lower() != ".png":
        raise _usage_error(f"--report {report}: expected a .png file name")
    if args.workers < 1:
        raise _usage_error(f"--workers must be >= 1, got {args.workers}")
    for path in [out] + ([report] if report else []):
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        try:  # the folder the output goes into, as the README's commands expect
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise _usage_error(f"{path}: {path.parent} is not a folder") from None
        except OSError as err:
            raise _usage_error(f"{path}: cannot create folder {path.parent} ({err.strerror})") from None
    return report


def _write_json(path: Path, obj) -> None:
    from .runner import json_ready

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(json_ready(obj), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _finish(result: dict, args, report: Path | None) -> int:
    _write_json(args.json, result)
    if report is not None:
        from .report import write_report

        write_report(result, report)
    for k, v in result["metrics"].items():
        print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")
    fails = {k: v["by_step"] for k, v in result["failures"].items() if v["by_step"]}
    if fails:
        print(f"per-structure failures (counted, see {args.json}): {fails}")
    print(f"wrote {args.json}" + (f" and {report}" if report else ""))
    return 0


def cmd_evaluate_generation(args: argparse.Namespace) -> int:
    from .runner import evaluate_generation

    for flag, path in (("--samples", args.samples), ("--reference", args.reference)):
        if not path.exists():
            raise _usage_error(f"{flag} {path}: file or folder not found")
    if (args.struct_cutoff is None) != (args.comp_cutoff is None):
        raise _usage_error("give both --struct-cutoff and --comp-cutoff, or neither")
    if not 0 < args.symprec < 1:  # NaN fails too; spglib would take it
        raise _usage_error(f"--symprec must be in (0, 1) Å, got {args.symprec}")
    for flag, value in (("--struct-cutoff", args.struct_cutoff), ("--comp-cutoff", args.comp_cutoff)):
        if value is not None and not 0 < value < float("inf"):
            raise _usage_error(f"{flag} must be a positive number, got {value}")
    for flag, value in (("--n-wdist", args.n_wdist), ("--max-samples", args.max_samples),
                        ("--max-reference", args.max_reference), ("--workers", args.workers)):
        if value is not None and value < 1:
            raise _usage_error(f"{flag} must be >= 1, got {value}")
    stability = None
    if args.energy:
        from ..physics.cli import stability_judge

        stability = stability_judge(args)
    elif args.hull is not None:
        raise _usage_error("--hull needs --energy")
    report = _check_outputs(args)
    cutoffs = None if args.struct_cutoff is None else (args.struct_cutoff, args.comp_cutoff)
    result = evaluate_generation(args.samples, args.reference, dataset=args.dataset, cutoffs=cutoffs,
                                 n_wdist=args.n_wdist, max_reference=args.max_reference, max_samples=args.max_samples,
                                 seed=args.seed, workers=args.workers, coverage=not args.no_coverage,
                                 novelty=not args.no_novelty, symprec=args.symprec, progress=not args.quiet,
                                 stability=stability, cache=not args.no_cache)
    return _finish(result, args, report)


def cmd_evaluate_csp(args: argparse.Namespace) -> int:
    from .runner import evaluate_csp

    for flag, path in (("--predictions", args.predictions), ("--targets", args.targets)):
        if not path.exists():
            raise _usage_error(f"{flag} {path}: file or folder not found")
    args.k = int_list(args.k, "--k", "whole numbers like 1,20", low=1)
    report = _check_outputs(args)
    result = evaluate_csp(args.predictions, args.targets, ks=args.k, workers=args.workers, progress=not args.quiet,
                          max_targets=args.max_targets, seed=args.seed)
    return _finish(result, args, report)


def _common(p) -> None:
    p.add_argument("--json", type=Path, required=True, metavar="OUT.json", help="metrics file to write")
    p.add_argument("--report", type=Path, metavar="OUT.png", help="plots (default: OUT with .png)")
    p.add_argument("--no-report", action="store_true", help="write no plots")
    add_overwrite(p, "replace existing outputs")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    add_seed(p, "seed of every random subset")
    add_quiet(p, "no progress bars")


def add_parser(sub) -> None:
    """Add ``evaluate`` with ``generation`` and ``csp`` subcommands to an argparse subparsers object."""
    ev = sub.add_parser("evaluate", help="metrics of generated crystals (CDVAE / DiffCSP protocol)") \
        .add_subparsers(dest="evaluate_command", metavar="COMMAND", required=True)
    g = ev.add_parser("generation", help="validity, coverage, property distances, uniqueness/novelty, space groups",
                      description="Generation metrics of samples against a reference set (usually the test or "
                                  "train split), as CDVAE/DiffCSP compute them.")
    g.add_argument("--samples", type=Path, required=True, metavar="PATH",
                   help="folder of *.cif (+ samples.json), a samples.json, or a CSV with a 'cif' column")
    g.add_argument("--reference", type=Path, required=True, metavar="CSV", help="reference structures (CDVAE CSV)")
    g.add_argument("--dataset", choices=("mp_20", "mpts_52", "perov_5", "carbon_24"),
                   help="coverage cutoffs to use (default: guessed from the reference path, else mp_20)")
    g.add_argument("--struct-cutoff", type=float, help="override the structure-fingerprint cutoff")
    g.add_argument("--comp-cutoff", type=float, help="override the composition-fingerprint cutoff")
    g.add_argument("--n-wdist", type=int, default=1000, help="valid samples for the Wasserstein distances (1000)")
    g.add_argument("--max-samples", type=int, help="evaluate a random subset of the samples")
    g.add_argument("--max-reference", type=int, help="use a random subset of the reference (CrystalNN is slow)")
    g.add_argument("--symprec", type=float, default=0.1, help="space-group tolerance in Å (default 0.1)")
    g.add_argument("--no-coverage", action="store_true", help="skip fingerprints and COV (the slow part)")
    g.add_argument("--no-novelty", action="store_true", help="skip uniqueness and novelty")
    g.add_argument("--no-cache", action="store_true",
                   help="analyse the reference again instead of reading (and writing) its fingerprints, space "
                        "groups and reduced cells in the cache ($CRYSTALFORMER_CACHE, else "
                        "~/.cache/crystalformer/fingerprints; keyed by the reference's content and the settings)")
    _common(g)
    g.add_argument("--energy", action="store_true",
                   help="energy above hull of every valid sample (single point under the potential, at the "
                        "structures as given: relax them first with `crystalformer relax`), the stable rate "
                        "(E_hull <= 0.08 eV/atom) and S.U.N. (physics extra)")
    g.add_argument("--hull", type=Path, metavar="TABLE",
                   help="reference hull table (crystalformer physics build-hull); default: the shipped hull of "
                        "the default model's training data under CHGNet (not the Materials Project hull)")
    g.add_argument("--potential", default="chgnet", help="interatomic potential for --energy (default chgnet)")
    add_device(g, "of the potential for --energy")
    g.set_defaults(func=cmd_evaluate_generation)
    c = ev.add_parser("csp", help="CSP match rate and RMSE, k=1 and best-of-k",
                      description="Match predictions to targets by material_id; StructureMatcher(stol=0.5, "
                                  "angle_tol=10, ltol=0.3); match rate over all targets, RMSE over matches.")
    c.add_argument("--predictions", type=Path, required=True, metavar="PATH",
                   help="folder from 'crystalformer csp' (<material_id>_<rank>.cif + samples.json) or a CSV "
                        "with material_id (and rank) columns")
    c.add_argument("--targets", type=Path, required=True, metavar="CSV", help="target structures (CDVAE CSV)")
    c.add_argument("--k", action=ListAction, metavar="K[,K...]",
                   help="report best-of-K (comma-separated or repeated; default 1 and the most predictions per target)")
    c.add_argument("--max-targets", type=int, help="evaluate a random subset of the targets")
    _common(c)
    c.set_defaults(func=cmd_evaluate_csp)
