"""CLI subcommands ``train-property`` and ``design`` (parse, check, delegate to typed functions).

Wire into the main parser with ``add_parsers(sub)`` (``sub`` = the argparse subparsers object).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError
from ..options import (
    ListAction,
    add_cache_dir,
    add_device,
    add_model,
    add_out,
    add_outputs,
    add_overwrite,
    add_quiet,
    add_seed,
    add_set,
    int_list,
    words,
)


def cmd_train_property(args) -> int:
    from .property import PropertyConfig
    from .train import train_property

    for path in [*args.data, *(args.val or [])]:
        if not path.exists():
            raise UsageError(f"{path}: file or folder not found")
    from ..config import override, parse_set

    try:
        config = override(PropertyConfig.from_name(args.preset), parse_set(args.set))
    except ValueError as err:
        raise UsageError(f"--set: {err}") from None
    result = train_property(args.data, args.target, args.out, config, val=args.val, cache_dir=args.cache_dir,
                            overwrite=args.overwrite, progress=not args.quiet, device=args.device)
    print(result.table())
    return 0


def _property_paths(args, targets) -> list[Path]:
    """--property directories, or the shipped property model of each target's name."""
    if args.property:
        return list(args.property)
    from ..defaults import default_dir

    return [default_dir("property", t.name) for t in targets]


MAX_CHAINS = 100_000  # design holds every chain in memory


def _atoms(args):
    """--atoms N, N-M or N,M,...: atoms in the conventional cell, enforced by the grammar."""
    if getattr(args, "atoms", None) is None:
        return None
    from ..sampling.constraints import parse_atoms

    return parse_atoms(args.atoms)


def _constraints(args) -> tuple[list[int] | None, list[str] | None]:
    """(space groups, elements) from repeatable, comma-separated --space-group / --elements."""
    space_groups = int_list(args.space_group, "--space-group", "space-group numbers 1-230", 1, 230)
    elements = words(args.elements)
    return space_groups, elements


def cmd_design(args) -> int:
    from ..model import load_model
    from ..physics.cli import check_physics, relax_and_report
    from ..physics.design import POTENTIAL_TARGETS
    from ..sampling.output import check_output_dir
    from .api import UnreachableTargetError, design, write_designs
    from .mcmc import MoveConfig
    from .property import load_property_model
    from .targets import parse_targets

    targets = parse_targets(args.target)
    check_output_dir(args.out, args.overwrite)  # refuse before the work, not after
    if not 1 <= args.n <= MAX_CHAINS or args.steps < 0:
        raise UsageError(f"--n must be 1 to {MAX_CHAINS:,} chains (all are held at once) and --steps >= 0 "
                         f"(got {args.n}, {args.steps})")
    from .mcmc import beta_schedule

    beta_schedule(1, args.beta, args.beta_start, args.anneal_steps)  # finite, positive: checked before the work
    _atoms(args)
    if not 0 < args.energy_sigma < float("inf"):
        raise UsageError(f"--energy-sigma must be a positive number of eV/atom, got {args.energy_sigma}")
    _constraints(args)
    energy_targets = [t for t in targets if t.name in POTENTIAL_TARGETS]
    check_physics(args, args.relax or bool(energy_targets),
                  f"--target {energy_targets[0]}" if energy_targets else "--relax")
    learned = [t for t in targets if t.name not in POTENTIAL_TARGETS]
    paths = _property_paths(args, learned) if learned else []
    models = [load_property_model(p) for p in paths]
    prior = load_model(args.model, device=args.device)  # property models are small: they stay on the CPU
    if energy_targets:
        from ..physics.cli import default_hull_path, potential_from
        from ..physics.design import PotentialProperty
        from ..physics.hull import ReferenceHull

        hull = ReferenceHull.load(args.hull if args.hull is not None else default_hull_path())
        potential = potential_from(args)
        models += [PotentialProperty(t.name, potential, hull, prior.tokenizer, args.energy_sigma)
                   for t in energy_targets]
    moves = MoveConfig(*args.moves) if args.moves else MoveConfig()
    space_groups, elements = _constraints(args)
    meta = {"model": str(args.model or "default"), "property": [str(p) for p in paths]}
    try:
        result = design(prior, models, targets, n=args.n, steps=args.steps, moves=moves, beta=args.beta,
                        beta_start=args.beta_start, anneal_steps=args.anneal_steps, space_groups=space_groups,
                        elements=elements, seed=args.seed, progress=not args.quiet, atoms=_atoms(args),
                        plausible=not args.allow_implausible)
        code = 0
    except UnreachableTargetError as err:
        if err.result is None:
            raise
        print(f"crystalformer: warning: {err}", file=sys.stderr)
        result, code = err.result, 1
    result.samples = relax_and_report(args, result.samples)
    if args.relax:  # the predictions and "meets targets" were made on the crystals as designed
        meta["predicted_before_relaxation"] = True
    counts = write_designs(result, args.out, args.overwrite, meta)
    s = result.summary()
    acc = ", ".join(f"{k} {v:.2f}" for k, v in s["acceptance"].items() if v is not None)
    print(f"designed {s['n']} crystals ({s['meeting_all_targets']} meet {', '.join(s['targets'])}); "
          f"acceptance {acc}; {counts['written']} CIFs in {args.out} ({s['wall_s']:.0f} s)")
    from ..sampling.output import flag_line

    print(flag_line(counts))
    if not args.relax:
        print(f"next: check the designs with the interatomic potential (pip install \"crystalformer[physics]\"): "
              f"crystalformer relax {args.out} --out {args.out}-relaxed")
    return code


def cmd_finetune(args) -> int:
    from ..model import load_model
    from ..sampling.output import check_output_dir
    from .api import target_likelihood
    from .finetune import FinetuneConfig, finetune
    from .property import load_property_model
    from .targets import parse_targets

    targets = parse_targets(args.target)
    check_output_dir(args.out, args.overwrite)  # refuse before the work, not after
    _constraints(args)
    paths = _property_paths(args, targets)
    config = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, temperature=args.temperature,
                            seed=args.seed, trainable=args.trainable)
    resolved, _, _, reward = target_likelihood([load_property_model(p) for p in paths], targets)
    prior = load_model(args.model, device=args.device)
    space_groups, elements = _constraints(args)
    result = finetune(prior, reward, config, space_groups, elements, progress=not args.quiet)
    from dataclasses import asdict

    h = result.history
    result.model.save(args.out, {"finetuned_from": str(args.model or "default"), "targets": [str(t) for t in resolved],
                                 "property": [str(p) for p in paths], "finetune": asdict(config),
                                 "history": h, "wall_s": round(result.wall_s, 1)})
    if h:
        print(f"fine-tuned {len(h)} steps ({result.wall_s:.0f} s): mean reward {h[0]['reward']:.3f} -> "
              f"{h[-1]['reward']:.3f}, KL to the prior {h[-1]['kl_to_prior']:.2f} nats; model in {args.out}")
    return 0


def _prior_and_targets(p) -> None:
    """Options shared by design and finetune: the prior, the property models, the targets, constraints."""
    add_model(p, "prior: shipped model name or model directory (default: mp_20, the shipped default)")
    p.add_argument("--property", action="append", type=Path, metavar="DIR",
                   help="property model directory (repeatable, one per target; default: the shipped ones)")
    p.add_argument("--target", action="append", required=True, metavar="SPEC",
                   help="band_gap=3.0+-0.2, heat_ref=min, formation_energy_per_atom=min@0.05, band_gap>2 ... "
                        "(comma-separated or repeated)")
    p.add_argument("--space-group", action=ListAction, metavar="N[,N...]",
                   help="allowed space groups (comma-separated or repeated; default: all)")
    p.add_argument("--elements", action=ListAction, metavar="EL[,EL...]",
                   help="allowed elements, all sites (comma-separated or repeated; default: all)")
    p.add_argument("--atoms", metavar="N|N-M",
                   help="atoms in the conventional cell: a number, a range or a list, enforced exactly by the "
                        "grammar (default: any)")


def add_parsers(sub) -> None:
    p = sub.add_parser("train-property", help="train a property model p(y | X) on a numeric CSV column",
                       description="Regressor on the crystal's token stream for one numeric column of CDVAE CSV "
                                   "files (formation_energy_per_atom, band_gap, heat_ref, energy_per_atom, ...), "
                                   "with a Gaussian likelihood whose sigma is calibrated on validation data.")
    p.add_argument("--data", action="append", type=Path, required=True, metavar="PATH",
                   help="training data: CSV, CIF folder or prepared directory (repeatable)")
    p.add_argument("--target", required=True, help="the numeric column to predict")
    p.add_argument("--val", action="append", type=Path, metavar="PATH",
                   help="validation data (repeatable); default: val_fraction of --data held out")
    add_out(p, "property model directory to write")
    p.add_argument("--preset", choices=("tiny", "small", "judge"), default="small",
                   help="small: transformer (default); judge: deep-set, another seed (independent judge); tiny: tests")
    add_set(p, "PropertyConfig")
    add_device(p, "for training")
    add_cache_dir(p)
    add_overwrite(p)
    add_quiet(p)
    p.set_defaults(func=cmd_train_property)

    p = sub.add_parser("design", help="inverse design: sample p(X | y*) ∝ p(X) p(y* | X) by Metropolis-Hastings",
                       description="Chains of crystals whose proposals come from the prior (independent draws, "
                                   "suffix resampling, element infill), accepted on the property likelihood. "
                                   "Writes CIFs and a ranked samples.json with predicted properties and "
                                   "acceptance statistics.")
    _prior_and_targets(p)
    p.add_argument("--n", type=int, default=20, help="chains = designed crystals (default 20: about a minute or two "
                                                     "on a laptop CPU; more chains, more candidates)")
    p.add_argument("--steps", type=int, default=40, help="Metropolis-Hastings steps per chain (default 40)")
    p.add_argument("--allow-implausible", action="store_true",
                   help="let chains visit crystals with atoms closer than 0.7 x the sum of covalent radii "
                        "(default: such proposals are rejected)")
    p.add_argument("--moves", type=float, nargs=3, metavar=("INDEPENDENT", "SUFFIX", "ELEMENT"),
                   help="move probabilities (default 0.2 0.6 0.2)")
    p.add_argument("--beta", type=float, default=1.0, help="final inverse temperature on the likelihood (default 1)")
    p.add_argument("--beta-start", type=float, help="anneal geometrically from this inverse temperature")
    p.add_argument("--anneal-steps", type=int, help="steps of the annealing ramp (default half of --steps)")
    p.add_argument("--hull", type=Path, metavar="TABLE",
                   help="reference hull for the e_hull / e_form targets (default: the shipped one)")
    p.add_argument("--energy-sigma", type=float, default=0.05,
                   help="likelihood width of the e_hull / e_form targets in eV/atom (default 0.05)")
    from ..physics.cli import add_relax_options

    add_relax_options(p)
    add_seed(p)
    add_device(p, "of the prior")
    add_outputs(p)
    p.set_defaults(func=cmd_design)

    p = sub.add_parser("finetune", help="fine-tune the prior toward design targets (reverse KL, score function)",
                       description="Minimises KL(p_theta || p0 exp(reward / T)) with reward = the targets' "
                                   "log-likelihood, by score-function gradients with a leave-one-out baseline. "
                                   "Writes a model directory usable by sample and design.")
    _prior_and_targets(p)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=1.0, help="T: reward / T (default 1)")
    p.add_argument("--trainable", choices=("token_head", "all"), default="token_head",
                   help="train only the discrete-choice head (default; stable) or every parameter")
    add_seed(p)
    add_device(p, "for training")
    add_outputs(p, "model directory to write")
    p.set_defaults(func=cmd_finetune)
