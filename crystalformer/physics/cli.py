"""``crystalformer relax`` and ``crystalformer physics build-hull``, plus the shared physics options."""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from pathlib import Path

from ..options import add_device, add_out, add_overwrite, add_quiet


def _usage(msg: str):
    from ..errors import UsageError

    return UsageError(msg)


def add_relax_options(p, flag: bool = True) -> None:
    """``--relax`` (when ``flag``), ``--relax-free``, ``--fmax``, ``--relax-steps``, ``--potential``."""
    if flag:
        p.add_argument("--relax", action="store_true",
                       help='relax every crystal with the interatomic potential (needs pip install '
                            '"crystalformer[physics]"); energies go into samples.json')
    p.add_argument("--relax-free", action="store_true",
                   help="let relaxation break the generated space group (default: keep it, ASE FixSymmetry)")
    p.add_argument("--fmax", type=float, default=0.05, help="relaxation force threshold in eV/Å (default 0.05)")
    p.add_argument("--relax-steps", type=int, default=300, help="most FIRE steps per relaxation (default 300)")
    p.add_argument("--potential", default="chgnet", help="interatomic potential (default chgnet)")
    add_relax_workers(p)


def add_relax_workers(p) -> None:
    p.add_argument("--relax-workers", type=int, default=1, metavar="N",
                   help="relax in N processes at once, one thread each (default 1; up to the number of cores "
                        "pays, each worker holds its own copy of the potential)")


def _relax_workers(args) -> int:
    workers = getattr(args, "relax_workers", 1)
    if not (isinstance(workers, int) and workers >= 1):
        raise _usage(f"--relax-workers must be an integer >= 1, got {workers}")
    return workers


def relax_config(args):
    from .relax import RelaxConfig

    _relax_workers(args)  # checked with the other relaxation options, before any work
    try:
        return RelaxConfig(fmax=args.fmax, steps=args.relax_steps, symmetric=not args.relax_free)
    except ValueError as err:
        raise _usage(str(err).replace("RelaxConfig.fmax", "--fmax").replace("RelaxConfig.steps", "--relax-steps")) \
            from None


def potential_from(args):
    """The potential named by ``--potential``, loaded once per command (one-line error without the extra)."""
    from .potential import load_potential

    if getattr(args, "_potential", None) is None:
        try:
            args._potential = load_potential(args.potential, device=getattr(args, "device", "cpu"),
                                             workers=_relax_workers(args))
        except ValueError as err:
            raise _usage(f"--potential {err}") from None
    return args._potential


def rank_config(args):
    """``--candidates``, ``--relax-top`` and the relaxation options of ``csp --rank energy``."""
    from .ranking import RankConfig

    try:
        return RankConfig(candidates=max(args.candidates, args.n), relax_top=args.relax_top, relax=relax_config(args),
                          tie_window=getattr(args, "tie_window", 0.03))
    except ValueError as err:
        raise _usage(f"--candidates / --relax-top / --tie-window: {err}") from None


def check_physics(args, wanted: bool, what: str | None = None) -> None:
    """Before any work: the physics extra is there when an option needs it (``what`` names the option)."""
    if wanted:
        from . import require

        if what is None:
            what = "--rank energy" if getattr(args, "rank", None) == "energy" else "--relax"
        require(what)
        relax_config(args)
        if getattr(args, "rank", None) == "energy":
            rank_config(args)
        potential_from(args)  # an unknown --potential is refused before any work


def report_ranking(stats) -> str | None:
    """A line on candidates ``--rank energy`` could not score (None when every one was scored)."""
    lost = {"not buildable": stats.not_buildable, "atoms closer than 0.5 Å": stats.too_close,
            "potential failed": stats.potential_failed}
    if not any(lost.values()):
        return None
    return (f"{sum(lost.values())} of {stats.candidates} candidates not scored: "
            + ", ".join(f"{v} {k}" for k, v in lost.items() if v))


def relax_and_report(args, samples) -> list:
    """``--relax``: the samples relaxed (a line of counts printed); unchanged otherwise."""
    if not getattr(args, "relax", False):
        return samples
    from .samples import relax_samples

    relaxed, counts = relax_samples(samples, potential_from(args), relax_config(args),
                                    progress=not getattr(args, "quiet", False))
    print("relaxation: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return relaxed


def stability_judge(args):
    """``--energy`` of evaluate: the potential and the hull (``--hull`` or the shipped one)."""
    from . import require
    from .hull import ReferenceHull
    from .stability import StabilityJudge

    require("--energy")
    path = args.hull if args.hull is not None else default_hull_path()
    return StabilityJudge(ReferenceHull.load(path), potential_from(args), hull_source=str(path))


def default_hull_path() -> Path:
    """The shipped hull: mp_20 + mpts_52 train under CHGNet (the default model's training data)."""
    from ..defaults import ROOT

    path = ROOT / "hull" / "mp20_mpts52_train_chgnet.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped hull table is missing from this installation; build one "
                                f"with `crystalformer physics build-hull` and pass --hull")
    return path


# ---------------------------------------------------------------------- relax
def _structure_cif(structure, name: str) -> tuple[str, bool]:
    """(CIF text, symmetric): the generated-symmetry writer when the structure is representable, else P1."""
    from ..cif import crystal_cif
    from ..crystal import Crystal
    from ..errors import CrystalError

    try:
        return crystal_cif(Crystal.from_structure(structure), name), True
    except (CrystalError, ValueError):
        import warnings

        from pymatgen.io.cif import CifWriter

        with warnings.catch_warnings():  # P1 labels repeat per element; readers do not mind
            warnings.simplefilter("ignore", UserWarning)
            return str(CifWriter(structure)), False


def _primitive(structure, config):
    """The primitive cell of ``structure`` when relaxation keeps the symmetry (cheaper, same minimum).

    Found at the symmetry tolerance, so a distorted supercell stays as it is; with
    ``--relax-free`` the cell given is relaxed, since a supercell can hold distortions its
    primitive cell cannot.
    """
    if not config.symmetric:
        return structure
    try:
        p = structure.get_primitive_structure(tolerance=config.symprec)
    except Exception:  # noqa: BLE001 - pymatgen's search can fail on odd cells: relax as given
        return structure
    return p if len(p) < len(structure) else structure


def cmd_relax(args: argparse.Namespace) -> int:
    from ..atomic import assembled
    from ..evaluation.loading import load_entries
    from ..io import structure_from_cif
    from ..sampling.output import check_output_dir
    from . import require
    from .parallel import relax_many

    require("crystalformer relax")
    config = relax_config(args)
    if not args.input.exists():
        raise _usage(f"{args.input}: file or folder not found")
    check_output_dir(args.out, args.overwrite)
    entries = load_entries(args.input)
    if not entries:
        raise _usage(f"{args.input}: no crystals found")
    potential = potential_from(args)
    items, rows = [], []
    for e in entries:
        if e.cif is None:
            rows.append({"name": e.name, "file": None, "relaxed": False, "error": e.error or "no structure"})
            continue
        try:
            s = structure_from_cif(e.cif, e.name)
            if not s.is_ordered:
                raise ValueError(f"{e.name}: disordered sites cannot be relaxed")
            items.append((e, s))
        except ValueError as err:
            rows.append({"name": e.name, "file": None, "relaxed": False, "error": f"unreadable: {err}"})
    from tqdm.auto import tqdm

    counts: Counter = Counter(unreadable=len(rows))
    t0 = time.time()
    used: set[str] = set()
    cells = [_primitive(s, config) for _, s in items]
    results = tqdm(relax_many(cells, potential, config), total=len(items), desc="relax", unit="structure",
                   disable=args.quiet)
    with assembled(args.out) as tmp:
        for (e, s), cell, r in zip(items, cells, results):
            name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in e.name) or "structure"
            while name in used:
                name += "_"
            used.add(name)
            text, symmetric = _structure_cif(r.structure, name)
            (tmp / f"{name}.cif").write_text(text, encoding="utf-8")
            counts["relaxed" if r.relaxed else "kept unrelaxed"] += 1
            rows.append({"name": e.name, "file": f"{name}.cif", "material_id": e.material_id, "rank": e.rank,
                         "formula": r.structure.composition.formula, "num_atoms": len(r.structure),
                         "symmetric_cif": symmetric, "potential": potential.name,
                         "cell": "primitive" if cell is not s else "as given", **r.summary()})
        from ..samples_file import write_samples_file

        write_samples_file(tmp, {"command": "relax", "input": str(args.input), "potential": potential.name,
                                 "fmax": config.fmax, "steps": config.steps, "symmetric": config.symmetric,
                                 "separate": config.separate, "wall_s": round(time.time() - t0, 2)},
                           dict(counts), rows)
    failed = [r for r in rows if not r.get("relaxed")]
    pushed = sum(bool(r.get("separation_steps")) for r in rows)
    print(f"relaxed {counts['relaxed']} of {len(entries)} structures in {time.time() - t0:.1f} s; "
          f"{len(failed)} kept unrelaxed or unreadable (reasons in samples.json); written to {args.out}")
    if pushed:
        print(f"  {pushed} had atoms closer than {config.separate} x their covalent radii, pushed apart before relaxing")
    for reason, k in Counter((r.get("error") or "not converged").split(":")[0] for r in failed).most_common(5):
        print(f"  {k} x {reason}")
    return 0


# ---------------------------------------------------------------------- build-hull
def cmd_build_hull(args: argparse.Namespace) -> int:
    from . import require
    from .build import build_hull

    require("crystalformer physics build-hull")
    for path in args.csv:
        if not path.is_file():
            raise _usage(f"--csv {path}: file not found")
    if not (math.isfinite(args.relax_within) and args.relax_within >= 0):
        raise _usage(f"--relax-within must be a number >= 0, got {args.relax_within}")
    args.relax_free = False
    rep = build_hull(args.csv, args.out, potential_from(args), workdir=args.workdir,
                     relax_within=args.relax_within, config=relax_config(args),
                     time_limit_min=args.time_limit, progress=not args.quiet)
    print(f"{args.out}: {rep.n_stable} stable entries from {rep.n_single_points} single points "
          f"({sum(rep.n_skipped.values())} inputs skipped: {rep.n_skipped or 'none'}); relaxed {rep.n_relaxed} of "
          f"{rep.n_near_hull} entries within {args.relax_within} eV/atom of the hull"
          + ("" if rep.max_relax_drop is None else f" (largest drop {rep.max_relax_drop:.3f} eV/atom)")
          + f"; {rep.wall_s:.0f} s")
    if rep.n_relaxed < rep.n_near_hull:
        print(f"note: {rep.n_near_hull - rep.n_relaxed} near-hull entries keep their single-point energy (time "
              f"limit, or a relaxation that failed: reasons in the work folder's relaxed.jsonl); run the same "
              f"command again to relax the ones not yet tried")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("relax", help="relax crystals with an interatomic potential (physics extra)",
                       description="FIRE relaxation of positions and cell of every crystal in a folder of CIFs, a "
                                   "CIF file, a CDVAE CSV or a samples folder; the space group is kept unless "
                                   "--relax-free. Writes CIFs and samples.json (energies, steps, converged).")
    p.add_argument("input", type=Path, metavar="IN", help="CIF file or folder, CSV, samples folder or samples.json")
    add_out(p, "output folder")
    add_relax_options(p, flag=False)
    add_device(p, "of the potential")
    add_overwrite(p, "replace a non-empty output folder")
    add_quiet(p)
    p.set_defaults(func=cmd_relax)

    physics = sub.add_parser("physics", help="reference energies for stability (physics extra)").add_subparsers(
        dest="physics_command", metavar="COMMAND", required=True)
    p = physics.add_parser("build-hull", help="a reference convex hull from training crystals under the potential",
                           description="Single-point energies of every crystal of the CSVs, relaxation of those "
                                       "near the hull, and the stable entries written as a CSV table. This is the "
                                       "hull of YOUR data under the potential, not the Materials Project hull.")
    p.add_argument("--csv", type=Path, action="append", required=True, metavar="CSV", help="CDVAE-format CSV "
                   "(repeatable)")
    add_out(p, "hull table to write (.csv)", "TABLE")
    p.add_argument("--workdir", type=Path, help="where work in progress is kept (default TABLE.work)")
    p.add_argument("--relax-within", type=float, default=0.05,
                   help="relax entries within this many eV/atom of the single-point hull (default 0.05)")
    p.add_argument("--time-limit", type=float, metavar="MIN", help="stop relaxing after MIN minutes")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--relax-steps", type=int, default=200)
    p.add_argument("--potential", default="chgnet")
    add_relax_workers(p)
    add_device(p, "of the potential")
    add_quiet(p)
    p.set_defaults(func=cmd_build_hull)
