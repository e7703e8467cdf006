"""CLI subcommands ``train-refiner`` and ``refine`` (parse, check, delegate to typed functions).

Wire into the main parser with ``add_parsers(sub)`` (``sub`` = the argparse subparsers object).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..options import (
    add_cache_dir,
    add_device,
    add_out,
    add_overwrite,
    add_quiet,
    add_seed,
    add_set,
)


def cmd_train_refiner(args) -> int:
    from .config import RefinerConfig
    from .train import train_refiner

    if not args.data and not args.resume:
        raise UsageError("train-refiner needs --data PATH (or --resume to continue a run)")
    if args.data and args.resume:
        raise UsageError("--resume continues with the run's own data; leave out --data")
    for path in [*(args.data or []), *(args.val or [])]:
        if not path.exists():
            raise UsageError(f"{path}: file or folder not found")
    from ..config import parse_set

    try:
        overrides = parse_set(args.set)
    except ValueError as err:
        raise UsageError(str(err)) from None
    config = RefinerConfig.from_name(args.preset).override(**overrides)
    if args.resume:  # the stored network/SDE config wins; overrides change training fields only
        import json

        run_file = args.out / "run.json"
        if not run_file.is_file():
            raise UsageError(f"--resume: {run_file} not found")
        try:
            stored = json.loads(run_file.read_text(encoding="utf-8"))
            config = RefinerConfig.from_dict(stored["config"]).override(**overrides)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"--resume: {run_file} is not a readable run record ({type(err).__name__}: {err})") \
                from None
    result = train_refiner(args.data, args.out, config, val=args.val, resume=args.resume, overwrite=args.overwrite,
                           cache_dir=args.cache_dir, progress=not args.quiet, device=args.device)
    loss = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f}"
    print(f"trained {result.epochs} epochs ({result.steps} steps, {result.wall_seconds:.0f} s); "
          f"best val DSM loss {loss}; refiner in {result.model_dir}")
    return 0


def cmd_refine(args) -> int:
    from ..defaults import resolve_refiner, shipped_refiners
    from ..sampling.output import check_output_dir
    from .api import refine_crystals
    from .io import load_refiner
    from .output import read_inputs, write_refined

    try:
        args.model = resolve_refiner(args.model)
    except FileNotFoundError:
        raise UsageError(f"--model {args.model}: not a refiner model directory (no config.json) and no shipped "
                         f"refiner of that name ({', '.join(shipped_refiners())})") from None
    if not args.input.exists():
        raise UsageError(f"--input {args.input}: file or folder not found")
    if args.n_steps < 1 or not args.sigma_start > 0:
        raise UsageError(f"--n-steps must be >= 1 and --sigma-start > 0 (got {args.n_steps}, {args.sigma_start})")
    if not 1 <= args.batch_size <= 100_000 or args.n_corrector < 0 or not args.snr > 0:
        raise UsageError(f"--batch-size must be 1 to 100,000, --n-corrector >= 0 and --snr > 0 "
                         f"(got {args.batch_size}, {args.n_corrector}, {args.snr})")
    check_output_dir(args.out, args.overwrite)  # refuse before the work, not after
    refiner = load_refiner(args.model, args.device)
    lo, hi = refiner.sde.sigma_min, refiner.sde.sigma_max
    if not lo <= args.sigma_start <= hi:
        raise UsageError(f"--sigma-start {args.sigma_start} outside the refiner's schedule [{lo}, {hi}]")
    names, crystals, skipped = read_inputs(args.input)
    if not crystals:
        raise UsageError(f"--input {args.input}: no readable crystals ({len(skipped)} skipped)")
    refined = refine_crystals(refiner, crystals, sigma_start=args.sigma_start, n_steps=args.n_steps,
                              sampler=args.sampler, n_corrector=args.n_corrector, snr=args.snr,
                              batch_size=args.batch_size, seed=args.seed, device=args.device)
    meta = {"model": str(args.model), "input": str(args.input), "sampler": args.sampler,
            "sigma_start": args.sigma_start, "n_steps": args.n_steps, "n_corrector": args.n_corrector,
            "snr": args.snr, "seed": args.seed}
    counts = write_refined(args.out, names, crystals, refined, args.overwrite, meta, skipped)
    print(f"refined {counts['refined']} crystals ({counts['skipped']} skipped); structurally valid "
          f"{counts['valid_before']} -> {counts['valid_after']}; written to {args.out}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("train-refiner", help="train a wrapped-normal score refiner of atomic positions",
                       description="Denoising (or sliced) score matching on the Wyckoff free parameters of CSV / "
                                   "CIF / prepared data. The best refiner by validation DSM loss is written to "
                                   "OUT/model.")
    p.add_argument("--data", action="append", type=Path, metavar="PATH", help="training data (repeatable)")
    p.add_argument("--val", action="append", type=Path, metavar="PATH",
                   help="validation data (repeatable); without it val_fraction of the training data is held out")
    add_out(p, "run directory", "RUN_DIR")
    p.add_argument("--preset", choices=("tiny", "small", "sites"), default="sites",
                   help="sites (default, the shipped refiner's): one receiver per Wyckoff site, neighbours within "
                        "5 Å; small: every pair of atoms in the cell (the earlier network, several times slower "
                        "to refine with); tiny: seconds, for tests")
    add_set(p)
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    add_device(p, "to train on", default=None)
    add_overwrite(p, "start again in a non-empty RUN_DIR")
    add_cache_dir(p)
    add_quiet(p)
    p.set_defaults(func=cmd_train_refiner)

    p = sub.add_parser("refine", help="refine atomic positions of crystals with a trained refiner",
                       description="Treat each crystal's free Wyckoff parameters as a sample at noise level "
                                   "--sigma-start and integrate the probability-flow ODE (ode, default) to sigma_min; "
                                   "or re-noise them to --sigma-start and integrate the reverse SDE with Langevin "
                                   "corrector steps (pc). Space group, Wyckoff letters, elements and lattice are kept.")
    p.add_argument("--model", type=Path, metavar="REFINER",
                   help="refiner model directory, or a shipped refiner's name: sites (the default), pairs")
    p.add_argument("--input", type=Path, required=True, metavar="PATH",
                   help="folder of CIF files, a CIF file, or a samples.json (or a folder holding one)")
    add_out(p, "output folder (CIFs + samples.json)")
    p.add_argument("--sampler", choices=("pc", "ode"), default="ode",
                   help="probability-flow ODE from the crystal itself (default) or predictor-corrector from the "
                        "crystal re-noised to --sigma-start (SDEdit)")
    p.add_argument("--sigma-start", type=float, default=0.05, help="starting noise level (default 0.05)")
    p.add_argument("--n-steps", type=int, default=10, help="sampler steps (default 10)")
    p.add_argument("--n-corrector", type=int, default=1, help="Langevin corrector steps per step (pc; default 1)")
    p.add_argument("--snr", type=float, default=0.1, help="corrector step size: eps = 2 (snr sigma)^2 (default 0.1)")
    p.add_argument("--batch-size", type=int, default=64, help="crystals per batch (default 64)")
    add_seed(p)
    add_device(p)
    add_overwrite(p, "replace a non-empty output folder")
    p.set_defaults(func=cmd_refine)
