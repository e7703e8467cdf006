"""``crystalformer sample`` / ``csp`` / ``infill``: parse, call the typed functions, write the folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..options import (
    ListAction,
    add_device,
    add_model,
    add_out,
    add_overwrite,
    add_quiet,
    add_seed,
    int_list,
    words,
)
from ..physics.cli import (
    add_relax_options,
    check_physics,
    relax_and_report,
    report_ranking,
)

DEFAULT = "default"  # --refine without a path


def _usage(msg: str):
    from ..errors import UsageError

    return UsageError(msg)


def _load(args):
    from ..model import load_model

    try:  # a shipped name or a model directory; load_model names what is missing
        return load_model(args.model, device=args.device)
    except FileNotFoundError as err:
        raise _usage(f"--model {err}") from None


def _space_groups(args) -> list[int] | None:
    return int_list(args.space_group, "--space-group", "space-group numbers 1-230", 1, 230)


def _shown_symmetry(crystal) -> tuple[str, str]:
    """(space group as spglib finds it on the written structure, with the model's label when they
    differ; reduced formula) for the table a person reads."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        structure = crystal.to_structure()
        found = SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number()
        formula = structure.composition.reduced_formula
    except Exception:  # noqa: BLE001 - the table still shows the model's label
        return str(crystal.space_group), crystal.formula
    label = str(found) if found == crystal.space_group else f"{found} ({crystal.space_group})"
    return label, formula


def _print_table(samples, limit: int = 12, total: int | None = None) -> None:
    """The first ``limit`` samples; ``total``: how many there are in all (default ``len(samples)``)."""
    shown = samples[:limit]
    total = len(samples) if total is None else total
    symmetry = [None if s.crystal is None else _shown_symmetry(s.crystal) for s in shown]
    width = max([12] + [len(f) for sym in symmetry if sym for f in sym[1:]])
    energies = any(s.physics and s.physics.get("energy_per_atom") is not None for s in shown)
    head = f"  {'eV/atom':>9}  relaxed" if energies else ""
    print(f"{'#':>3}  {'space group':>11}  {'formula':<{width}} {'atoms':>5}  {'log p':>9}{head}  wyckoff")
    for i, (s, sym) in enumerate(zip(shown, symmetry)):
        c = s.crystal
        e = ""
        if energies:
            ph = s.physics or {}
            v = ph.get("energy_per_atom")
            e = f"  {'-' if v is None else f'{v:.4f}':>9}  {'yes' if ph.get('relaxed') else 'no':>7}"
        if c is None:
            print(f"{i:>3}  {'-':>11}  {'(not decoded)':<{width}} {'-':>5}  {s.log_likelihood:>9.2f}{e}  {s.error}")
        else:
            print(f"{i:>3}  {sym[0]:>11}  {sym[1]:<{width}} {c.num_atoms:>5}  {s.log_likelihood:>9.2f}{e}  "
                  f"{c.wyckoff_sequence}")
    if any(sym and "(" in sym[0] for sym in symmetry):
        print("space group: as spglib finds it in the written cell (symprec 0.1 Å); the model's label in brackets")
    if total > len(shown):
        print(f"... {total - len(shown)} more in samples.json")


def _refiner_dir(value: str) -> Path:
    """``--refine`` with no path means the refiner shipped with the package; a shipped name (``pairs``) works too."""
    from ..defaults import resolve_refiner, shipped_refiners

    try:
        return resolve_refiner(None if value == DEFAULT else value)
    except FileNotFoundError:
        raise _usage(f"--refine {value}: not a refiner model folder and not a shipped refiner "
                     f"({', '.join(shipped_refiners())})") from None


def _refine(args, samples, part: int = 0) -> list:
    """With --refine REFINER: refined copies of the decoded samples (log-likelihoods stay the sampler's).

    ``part``: which chunk of a streamed run this is; each chunk after the first gets its own seed.
    """
    if args.refine is None:
        return samples
    from ..api import refine_samples

    return refine_samples(_refiner_dir(args.refine), samples, args.sigma_start, args.seed + 1_000_003 * part,
                          args.device)


def _meta(args, command: str, wall: float, **extra) -> dict:
    return {"command": command, "model": str(args.model or "default"), "seed": args.seed,
            "refiner": None if args.refine is None else str(args.refine),
            "temperature": args.temperature, "top_p": args.top_p, "wall_s": round(wall, 2),
            "relax": None if not (getattr(args, "relax", False) or getattr(args, "rank", None) == "energy") else
            {"potential": args.potential, "fmax": args.fmax, "steps": args.relax_steps, "symmetric": not args.relax_free},
            "rank": getattr(args, "rank", None),
            "candidates": args.candidates if getattr(args, "rank", None) in ("energy", "skeleton") else None,
            "relax_top": args.relax_top if getattr(args, "rank", None) == "energy" else None,
            "ranking": None if getattr(args, "_rank_stats", None) is None else vars(args._rank_stats), **extra}


STREAM_CHUNK = 10_000  # crystals refined, relaxed and written at a time: memory stays bounded for any --n


def cmd_sample(args: argparse.Namespace) -> int:
    from .api import sample_stream
    from .constraints import parse_atoms
    from .output import SampleWriter, check_output_dir, flag_line

    _check_output_options(args)
    atoms = None if args.atoms is None else parse_atoms(args.atoms)
    check_output_dir(args.out, args.overwrite)
    check_physics(args, args.relax)
    model = _load(args)
    t0 = time.time()
    shown, n_sampled = [], 0
    with SampleWriter(args.out, args.overwrite, p1=args.p1, formats=args.format, filters=args.filter) as writer:
        for k, chunk in enumerate(_chunks(sample_stream(
                model, args.n, space_groups=_space_groups(args), elements=words(args.elements),
                temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size, seed=args.seed,
                smc=not args.no_smc, progress=not args.quiet, atoms=atoms), STREAM_CHUNK)):
            chunk = relax_and_report(args, _refine(args, chunk, part=k))
            writer.add(chunk)
            shown += chunk[:12 - len(shown)]
            n_sampled += len(chunk)
        wall = time.time() - t0
        writer.meta = _meta(args, "sample", wall, space_groups=_space_groups(args),
                            elements=words(args.elements), atoms=None if atoms is None else sorted(atoms))
    counts = writer.counts
    _print_table(shown, total=n_sampled)
    print(f"{_written(counts, args)} in {args.out} ({n_sampled} sampled in {wall:.1f} s; "
          f"{counts['not_decoded'] + counts['not_built']} not buildable)")
    print(flag_line(counts))
    _next_step(f"crystalformer evaluate generation --samples {args.out} --reference YOUR_TRAIN.csv --json "
               f"{Path(args.out) / 'eval.json'}" if not args.relax else
               f"open the files in {args.out}; energies per atom are in {Path(args.out) / 'samples.json'}")
    return 0


def _check_output_options(args) -> None:
    """--format and --filter, checked (and normalised) before any work."""
    from ..formats import check_formats
    from .output import check_filters

    args.format, args.filter = check_formats(args.format), check_filters(args.filter)


def _written(counts: dict, args) -> str:
    """'16 CIFs' or '16 crystals as cif, poscar'."""
    formats = args.format or ["cif"]
    if formats == ["cif"]:
        return f"{counts['written']} CIFs"
    return f"{counts['written']} crystals as {', '.join(formats)}"


def _next_step(text: str) -> None:
    print(f"next: {text}")


def _chunks(batches, size: int):
    """Regroup a stream of :class:`SampleSet` batches into lists of about ``size`` samples."""
    part: list = []
    for batch in batches:
        part += batch.samples
        if len(part) >= size:
            yield part
            part = []
    if part:
        yield part


def cmd_csp(args: argparse.Namespace) -> int:
    from .output import check_output_dir

    if (args.composition is None) == (args.targets is None):
        raise _usage("csp needs exactly one of --composition FORMULA or --targets CSV")
    if args.candidates is None:  # the ranking's default (64 for skeleton, 256 for energy)
        from ..api import default_candidates

        args.candidates = default_candidates(args.rank)
    elif args.candidates < 1:
        raise _usage(f"--candidates must be >= 1, got {args.candidates}")
    if args.relax_top is None and args.rank == "energy":  # physics is only imported when used
        from ..physics.ranking import RankConfig

        args.relax_top = RankConfig.relax_top
    _check_output_options(args)
    check_output_dir(args.out, args.overwrite)
    check_physics(args, args.relax or args.rank == "energy")
    if args.rank == "energy":
        from ..physics.ranking import RankStats

        args._rank_stats = RankStats()
    if args.rank == "energy" and args.relax:
        raise _usage("--rank energy relaxes the best candidates itself; leave out --relax")
    model = _load(args)
    if args.composition is not None:
        return _csp_one(args, model)
    return _csp_targets(args, model)


def _csp_options(args) -> dict:
    units = int_list(args.formula_units, "--formula-units")
    if args.particles is not None and args.particles < 1:
        raise _usage(f"--particles must be >= 1, got {args.particles}")
    return dict(n=args.n, formula_units=units, max_atoms=args.max_atoms, space_groups=_space_groups(args),
                n_particles=args.particles, temperature=args.temperature, top_p=args.top_p, smc=not args.no_smc)


def _predict(args, model, formula, cell, seed):
    """One composition through :func:`crystalformer.api.predict_structure` with the command's options."""
    from ..api import predict_structure

    options = _csp_options(args)
    energy = {}
    if args.rank == "energy":
        from ..physics.cli import potential_from, rank_config

        config = rank_config(args)
        energy = dict(candidates=config.candidates, relax_top=config.relax_top, relax=config.relax,
                      tie_window=config.tie_window, potential=potential_from(args), rank_stats=args._rank_stats)
    elif args.rank == "skeleton":
        energy = dict(candidates=args.candidates)
    refiner = None if args.refine is None else _refiner_dir(args.refine)
    result = predict_structure(model, formula, rank=args.rank, cell=cell, seed=seed, refiner=refiner,
                               sigma_start=args.sigma_start, device=args.device,
                               distinct=args.composition is not None and not args.keep_duplicates, **options, **energy)
    if args.rank == "energy" and not result.samples:
        raise ValueError(f"{formula}: none of the {result.drawn} candidates could be scored by the potential "
                         f"({report_ranking(args._rank_stats)})")
    args._duplicates, args._drawn = result.duplicates, result.drawn
    return result


def _csp_one(args, model) -> int:
    from .output import flag_line, write_samples

    t0 = time.time()
    result = _predict(args, model, args.composition, args.cell, args.seed)
    if args.rank != "energy":
        result.samples = relax_and_report(args, result.samples)
    wall = time.time() - t0
    names = [f"rank_{i:03d}" for i in range(len(result))]
    extra = [{"rank": i} for i in range(len(result))]
    counts = write_samples(result.samples, args.out, overwrite=args.overwrite, p1=args.p1, names=names, extra=extra,
                           meta=_meta(args, "csp", wall, composition=args.composition, cell=args.cell,
                                      log_evidence=result.log_evidence), formats=args.format,
                           filters=args.filter)
    _print_table(result.samples)
    if args.rank == "energy" and report_ranking(args._rank_stats):
        print(report_ranking(args._rank_stats))
    duplicates = getattr(args, "_duplicates", None)
    removed = "" if duplicates is None else \
        f", {duplicates} duplicates of higher-ranked crystals removed from {getattr(args, '_drawn', 2 * args.n)} drawn"
    how = {"logp": "log-likelihood" + removed,
           "skeleton": "skeleton probability (space group, Wyckoff letters, elements), then log-likelihood" + removed,
           "energy": f"energy per atom ({args.relax_top} lowest of {max(args.candidates, args.n)} candidates "
                     "relaxed, duplicates removed)"}[args.rank]
    print(f"{_written(counts, args)} in {args.out}, ranked by {how} ({wall:.1f} s)")
    print(flag_line(counts))
    if args.rank != "energy":
        _next_step(f"rank by energy instead (relaxes the best candidates; pip install \"crystalformer[physics]\"): "
                   f"crystalformer csp --composition {args.composition} --rank energy --out {args.out}-energy")
    return 0


def _csp_targets(args, model) -> int:
    """One composition per CSV row (its structure's primitive cell), --n predictions each."""
    from ..api import predict_targets
    from .output import flag_line, write_samples

    if not args.targets.is_file():
        raise _usage(f"--targets {args.targets}: file not found")
    t0 = time.time()
    done = predict_targets(model, args.targets, args.n, seed=args.seed, progress=not args.quiet,
                           predict=lambda formula, seed: _predict(args, model, formula, "primitive", seed))
    samples, names, extra, skipped, total = done.samples, done.names, done.rows, done.skipped, done.num_targets
    if args.rank != "energy":
        samples = relax_and_report(args, samples)
    wall = time.time() - t0
    counts = write_samples(samples, args.out, overwrite=args.overwrite, p1=args.p1, names=names, extra=extra,
                           meta=_meta(args, "csp --targets", wall, targets=str(args.targets), skipped=skipped,
                                      num_targets=total), formats=args.format, filters=args.filter)
    print(f"{total - len(skipped)} of {total} targets, {_written(counts, args)} in {args.out} "
          f"({wall:.1f} s)")
    print(flag_line(counts))
    for s in skipped:
        print(f"skipped {s['material_id']}: {s['reason']}")
    if args.rank == "energy" and report_ranking(args._rank_stats):
        print(report_ranking(args._rank_stats))
    _next_step(f"score the predictions against the targets: crystalformer evaluate csp --predictions {args.out} "
               f"--targets {args.targets} --json {Path(args.out) / 'csp.json'}")
    return 0


def cmd_infill(args: argparse.Namespace) -> int:
    from .output import check_output_dir, flag_line, write_samples
    from .substitution import infill, load_template

    if (args.sites is None) == (args.element is None):
        raise _usage("infill needs exactly one of --sites I,J,... or --element SYMBOL")
    if not args.template.is_file():
        raise _usage(f"--template {args.template}: file not found")
    _check_output_options(args)
    check_output_dir(args.out, args.overwrite)
    check_physics(args, args.relax)
    model = _load(args)
    template = load_template(args.template)  # a CrystalError names the file: one line, exit 2
    if args.element:
        sites = args.element
    else:
        sites = int_list(args.sites, "--sites", "site indices like 0,2 (the template's site list); to replace "
                         "every site of one element use --element SYMBOL")
    allowed = words(args.allow)
    ties = {}
    for item in args.tie or []:
        a, sep, b = item.partition("=")
        if not sep:
            raise _usage(f"--tie {item!r}: expected I=J (site I takes the element of site J)")
        try:
            ties[int(a)] = int(b)
        except ValueError:
            raise _usage(f"--tie {item!r}: expected I=J with site indices") from None
    t0 = time.time()
    result = infill(model, template, sites, allowed=allowed, ties=ties or None, n=args.n, seed=args.seed)
    wall = time.time() - t0
    print(result.table())
    from .api import Sample

    chosen = result.candidates[:args.n]
    samples = relax_and_report(args, _refine(args, [Sample(c.crystal, c.log_p) for c in chosen]))
    extra = [{"rank": i, "probability": c.probability, "assignment": {str(k): v for k, v in c.assignment.items()}}
             for i, c in enumerate(chosen)]
    counts = write_samples(samples, args.out, overwrite=args.overwrite, p1=args.p1, names=[f"rank_{i:03d}" for i in
                                                                               range(len(samples))], extra=extra,
                           meta={"command": "infill", "template": str(args.template), "method": result.method,
                                 "refiner": None if args.refine is None else str(args.refine),
                                 "wall_s": round(wall, 2)}, formats=args.format, filters=args.filter)
    print(f"{_written(counts, args)} in {args.out} ({wall:.1f} s)")
    print(flag_line(counts))
    if not args.relax:
        _next_step(f"relax the substituted crystals (pip install \"crystalformer[physics]\"): crystalformer relax "
                   f"{args.out} --out {args.out}-relaxed")
    return 0


# ---------------------------------------------------------------------- parsers
def _common(p, n_default: int) -> None:
    add_model(p)
    p.add_argument("--n", type=int, default=n_default, help=f"number of crystals (default {n_default})")
    add_out(p, "output folder (CIFs + samples.json)")
    add_seed(p)
    add_device(p)
    add_overwrite(p, "replace a non-empty output folder")
    add_quiet(p)
    p.add_argument("--refine", nargs="?", const=DEFAULT, metavar="REFINER",
                   help="refine atomic positions with the shipped refiner, a shipped one by name (pairs: the "
                        "all-pairs network, better on carbon_24), or this refiner model folder (crystalformer "
                        "train-refiner)")
    p.add_argument("--sigma-start", type=float, default=0.05, help="noise level refinement starts from (default 0.05)")
    add_relax_options(p)
    p.add_argument("--p1", action="store_true",
                   help="write CIFs in P1 (every atom, identity operation) instead of the generated space group "
                        "with its operations and Wyckoff sites")
    p.add_argument("--format", action=ListAction, metavar="FMT[,FMT...]",
                   help="files to write per crystal: cif (default; keeps the symmetry), poscar (.vasp), extxyz")
    p.add_argument("--filter", action=ListAction, metavar="CHECK[,CHECK...]",
                   help="write no file for crystals failing: valid (atoms closer than 0.5 Å), contacts (closer "
                        "than 0.7 x the sum of covalent radii), charge (not charge-balanced, SMACT); they stay "
                        "listed in samples.json with the reason")


def _decoding(p) -> None:
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of discrete choices")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--no-smc", action="store_true",
                   help="plain masking (greedy truncation) instead of importance weights + resampling")
    p.add_argument("--space-group", action=ListAction, metavar="N[,N...]",
                   help="allowed space-group numbers (comma-separated or repeated; default: all)")


def add_parsers(sub) -> None:
    p = sub.add_parser("sample", help="generate crystals", description="Sample crystals from the model, optionally "
                       "in given space groups and with an element allow-list.")
    _common(p, 16)
    _decoding(p)
    p.add_argument("--elements", action=ListAction, metavar="EL[,EL...]",
                   help="elements every site must use, e.g. Li,Mn,O (comma-separated or repeated)")
    p.add_argument("--atoms", metavar="N|N-M",
                   help="atoms in the conventional cell: a number, a range or a list (e.g. 5, 10-20, 8,12), "
                        "enforced exactly by the grammar (default: any)")
    p.add_argument("--batch-size", type=int, default=256, help="crystals decoded at once (default 256)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("csp", help="crystal structure prediction from a composition",
                       description="Predict structures of a composition (--composition SrTiO3) or of every row "
                                   "of a CDVAE CSV (--targets; the primitive cell of each row's structure).")
    _common(p, 20)
    _decoding(p)
    p.add_argument("--composition", help="formula, e.g. SrTiO3 or Li2MnO3")
    p.add_argument("--targets", type=Path, metavar="CSV", help="CDVAE-format CSV: one target per row")
    p.add_argument("--cell", choices=("reduced", "primitive", "conventional"), default="reduced",
                   help="what the --composition counts mean (default: reduced formula, any formula units)")
    p.add_argument("--formula-units", action=ListAction, metavar="Z[,Z...]",
                   help="allowed formula units per conventional cell, e.g. 1,2,4 (default: all that fit)")
    p.add_argument("--max-atoms", type=int, default=80, help="most atoms per conventional cell (reduced formulas)")
    p.add_argument("--particles", type=int, help="SMC particles per composition (default max(2n, 64))")
    p.add_argument("--rank", choices=("logp", "skeleton", "energy"), default="logp",
                   help="order the predictions by log-likelihood (default); by the probability of their symmetry "
                        "skeleton (space group, Wyckoff letters, elements; log-likelihood breaks ties) among "
                        "--candidates, better on mp_20-like chemistry, worse on perovskites (see the model card); "
                        "or by energy: decode --candidates, remove duplicates, relax the --relax-top lowest single "
                        "points with the potential and rank by relaxed energy per atom (physics extra)")
    p.add_argument("--candidates", type=int, default=None,
                   help="crystals decoded for --rank skeleton (default 64) and --rank energy (default 256)")
    p.add_argument("--relax-top", type=int, default=None,
                   help="candidates relaxed for --rank energy (default 3: relaxing more widens the shortlist, "
                        "@5, but puts more wrong candidates within the potential's error of the right one, @1)")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="--composition by log p: keep repeated structures (default: draw 2n, keep the first n "
                        "distinct ones, StructureMatcher)")
    p.add_argument("--tie-window", type=float, default=0.03, metavar="EV",
                   help="--rank energy: relaxed energies per atom closer than this are ties, broken by log p "
                        "(default 0.03 eV/atom, about the potential's error; 0: energy alone)")
    p.set_defaults(func=cmd_csp)

    p = sub.add_parser("infill", help="substitute elements in a template crystal",
                       description="Sample the elements of chosen sites of a template from p(A_i | rest).")
    _common(p, 10)
    p.add_argument("--template", type=Path, required=True, help="CIF file of the template crystal")
    p.add_argument("--sites", action=ListAction, metavar="I[,I...]",
                   help="site indices to replace (see the template's site list; comma-separated or repeated)")
    p.add_argument("--element", help="replace every site holding this element")
    p.add_argument("--allow", action=ListAction, metavar="EL[,EL...]",
                   help="candidate elements (comma-separated or repeated; default: all)")
    p.add_argument("--tie", action="append", metavar="I=J", help="site I takes the same element as site J")
    p.set_defaults(func=cmd_infill)
