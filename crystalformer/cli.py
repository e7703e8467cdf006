"""The ``crystalformer`` command line: parses arguments and calls typed functions, nothing more.

Each subcommand is a ``cmd_*`` function taking the parsed namespace and returning the exit
code; ``build_parser`` maps command paths to them (``data prepare`` -> :func:`cmd_data_prepare`).
Later commands (``train``, ``sample``, ``csp``, ...) add a ``_add_<name>`` parser builder.
Mistakes in the command line or missing files print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .errors import UsageError  # noqa: F401  (the sub-command CLIs raise it)
from .options import (
    add_cache_dir,
    add_device,
    add_out,
    add_overwrite,
    add_quiet,
    add_set,
)


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


def cmd_data_download(args: argparse.Namespace) -> int:
    from .datasets import REGISTRY, DownloadError, download, registry_table

    if args.list:
        print(registry_table())
        return 0
    if not args.names:
        raise UsageError(f"data download needs at least one NAME (or --list); known: {', '.join(REGISTRY)}")
    if args.out is None:
        raise UsageError("data download needs --out DIR")
    names = list(REGISTRY) if args.names == ["all"] else args.names
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise UsageError(f"unknown data set {', '.join(unknown)}; known: {', '.join(REGISTRY)} (or all)")
    failed = False
    for name in names:  # one failing data set does not stop the others
        try:
            files = download(name, args.out, progress=not args.quiet)
        except DownloadError as err:
            failed = True
            for line in str(err).splitlines():
                print(f"crystalformer: error: {name}: {line}", file=sys.stderr)
            continue
        print(f"{name:<11} verified  " + "  ".join(str(path) for path in files))
    return 1 if failed else 0


INIT_WARMUP_STEPS = 50


def cmd_train(args: argparse.Namespace) -> int:
    from .config import ModelConfig, TrainConfig, apply_overrides, parse_set
    from .lit import NonFiniteLossError
    from .train import train

    if not args.data and not args.resume:
        raise UsageError("train needs --data PATH (or --resume to continue a run)")
    if args.data and args.resume:
        raise UsageError("--resume continues with the run's own data; leave out --data")
    for path in [*(args.data or []), *(args.val or [])]:
        if not path.exists():
            raise UsageError(f"{path}: file or folder not found")
    overrides: dict = {}
    if args.config:
        import yaml

        if not args.config.is_file():
            raise UsageError(f"--config {args.config}: file not found")
        try:
            loaded = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:  # malformed, or a tag such as !!python/object (never constructed)
            problem = str(getattr(err, "problem", None) or err).strip().splitlines()[0]
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise UsageError(f"--config {args.config}: not plain YAML: {problem}{where}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--config {args.config}: not a UTF-8 text file") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--config {args.config}: expected a mapping of config fields")
        overrides.update(loaded)
    try:
        overrides.update(parse_set(args.set))
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.device is not None:
        from .options import lightning_device

        overrides["accelerator"], overrides["devices"] = lightning_device(args.device)
    if args.resume:  # the run's own configs, with any overrides on top (e.g. --set max_epochs=80)
        from .train import load_run_configs

        base_model, base_train = load_run_configs(args.out)  # train() checks the checkpoint itself
    else:
        base_model, base_train = ModelConfig.from_name(args.preset), TrainConfig.from_name(args.preset)
    if args.init is not None:
        if args.resume:
            raise UsageError("--init starts a new run from a model's weights; --resume continues a run: use one")
        from .defaults import resolve_model
        from .model.files import read_config

        try:
            args.init = resolve_model(args.init)
        except FileNotFoundError as err:
            raise UsageError(f"--init {err}") from None
        if not (args.init / "config.json").is_file():
            raise UsageError(f"--init {args.init}: not a model directory (no config.json)")
        init_config = read_config(args.init)
        # the model's own shape; a short warm-up, since the weights are trained already
        base_model = dataclasses.replace(init_config, dropout=base_model.dropout)
        base_train = dataclasses.replace(base_train, warmup_steps=min(base_train.warmup_steps, INIT_WARMUP_STEPS))
    if args.time_budget is not None:
        if not args.time_budget > 0 or args.time_budget == float("inf"):
            raise UsageError(f"--time-budget needs a positive number of minutes, got {args.time_budget}")
        overrides["time_budget_min"] = args.time_budget
    model_config, train_config = apply_overrides(base_model, base_train, overrides)
    try:
        result = train(args.data or [], args.out, model_config, train_config, val=args.val, val_fraction=args.val_fraction,
                       resume=args.resume, overwrite=args.overwrite, cache_dir=args.cache_dir,
                       progress=not args.quiet, init=args.init)
    except NonFiniteLossError as err:
        print(f"crystalformer: error: {err}: {args.out / 'checkpoints' / 'last.ckpt'}", file=sys.stderr)
        return 1
    best = "n/a" if result.best_val_nll is None else f"{result.best_val_nll:.3f} nats/crystal"
    print(f"parameters     {result.num_parameters:,}\nsteps          {result.steps}\nepochs         {result.epochs}\n"
          f"wall time      {result.wall_s:.0f} s\nbest val NLL   {best}\nmodel          {result.model_dir}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from .defaults import DEFAULT_MODEL, ROOT, shipped_models
    from .model.files import (  # no Lightning: the listing is instant
        cumulative_train_s,
        read_metadata,
    )

    models = shipped_models()
    if not models:
        print("no generative models are shipped with this installation")
        return 1
    rows = []
    for name, path in models.items():
        meta = read_metadata(path)
        data = sorted({Path(str(d)).name for d in meta.get("data") or []})
        earlier = sorted({Path(str(d)).name for step in meta.get("lineage", []) for d in step.get("data") or []})
        source = ", ".join(data) or "?"
        if earlier:
            source += f" (started from a model trained on {', '.join(earlier)})"
        nll = (meta.get("metrics") or {}).get("val/nll")
        rows.append({"name": name + (" (default)" if name == DEFAULT_MODEL else ""), "data": source,
                     "parameters": meta.get("num_parameters"),
                     "MB": weights.stat().st_size / 1e6 if (weights := path / "model.safetensors").is_file() else 0.0,
                     "val NLL": "n/a" if nll is None else f"{nll:.2f}",
                     "CPU/GPU hours": f"{cumulative_train_s(meta) / 3600:.1f}", "path": str(path)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'parameters':>10}  {'MB':>5}  {'val NLL':>8}  {'train h':>7}  data")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['parameters'] or 0:>10,}  {r['MB']:>5.1f}  {r['val NLL']:>8}  "
              f"{r['CPU/GPU hours']:>7}  {r['data']}")
    print(f"\nval NLL: nats per crystal on the model's own validation set, half of it with the composition prompt "
          f"(as in training); train h: training wall time including the runs it started from.\nUse one with "
          f"--model NAME. Data, figures and training commands per model: {ROOT / 'MODEL_CARD.md'} "
          f"(section 'Generative models').")
    from .defaults import shipped_refiners

    refiners = list(shipped_refiners())
    if refiners:
        print(f"Shipped position refiners (--refine NAME, refine --model NAME): {refiners[0]} (default)"
              + "".join(f", {r}" for r in refiners[1:]) + ".")
    return 0


# ---------------------------------------------------------------------- parsers
def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the shipped generative models (names for --model)",
                       description="The generative models shipped with the package: name (for --model), size, "
                                   "training data, validation NLL and training time.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)


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
    add_out(p, "prepared directory to write")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--chunk-size", type=int, default=32, help="structures per worker task (default 32)")
    p.add_argument("--symprec", type=float, default=0.01,
                   help="spglib distance tolerance in Å (default 0.01, strict; Materials Project uses 0.1)")
    p.add_argument("--angle-tolerance", type=float, default=5.0, help="spglib angle tolerance in degrees (default 5)")
    p.add_argument("--n-max", type=int, default=DEFAULT_N_MAX,
                   help=f"most Wyckoff sites per crystal; more are skipped (default {DEFAULT_N_MAX})")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    add_quiet(p)
    p.set_defaults(func=cmd_data_prepare)
    p = data.add_parser("download", help="fetch the public benchmark data sets (checksums verified)",
                        description="Download mp_20, mpts_52, perov_5, carbon_24 (CDVAE/DiffCSP CSV splits) or "
                                    "alex_mp_20 (MatterGen) into DIR/NAME/. Every file is checked against the "
                                    "registry's checksum before it is kept; files already present are not fetched.")
    p.add_argument("names", nargs="*", metavar="NAME", help="data set names, or all (see --list)")
    add_out(p, "folder to download into (one subfolder per data set)", required=False)
    p.add_argument("--list", action="store_true", help="print the registry (name, files, size, source) and exit")
    add_quiet(p)
    p.set_defaults(func=cmd_data_download)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a CrystalFormer model",
                       description="Train on CDVAE CSV files, CIF folders or prepared directories (prepared and "
                                   "cached on first use). The best model by validation NLL is written to OUT/model.")
    p.add_argument("--data", action="append", type=Path, metavar="PATH",
                   help="training data: CSV, CIF file/folder or prepared directory (repeatable; "
                        "not needed with --resume, which reads the run's own)")
    p.add_argument("--val", action="append", type=Path, metavar="PATH",
                   help="validation data (repeatable); without it --val-fraction of the training data is held out")
    p.add_argument("--val-fraction", type=float, default=0.05, help="held-out fraction without --val (default 0.05)")
    add_out(p, "run directory", "RUN_DIR")
    p.add_argument("--preset", choices=("tiny", "small", "base"), default="small",
                   help="model + training preset (tiny: seconds, tests; small: CPU; base: GPU, ~5M parameters)")
    p.add_argument("--config", type=Path, metavar="YAML",
                   help="YAML overrides of any config field: flat (lr: 3e-4) or nested (model: {n_layer: 6})")
    add_set(p)
    add_device(p, "to train on", default=None)
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--init", type=Path, metavar="MODEL",
                   help="start from the weights of a model directory or shipped model name (its shape; new optimiser, "
                        f"warm-up of at most {INIT_WARMUP_STEPS} steps): to continue training elsewhere or on other data")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help="stop cleanly after MIN minutes of training (summed over resumes); the learning rate "
                        "decays over the budget and the best model so far is exported")
    add_overwrite(p, "start again in a non-empty RUN_DIR")
    add_cache_dir(p)
    add_quiet(p)
    p.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .options import OneLineParser

    parser = OneLineParser(prog="crystalformer",
                                     description="Space-group-aware generative transformer for crystal structures.")
    parser.add_argument("--version", action="version", version=f"crystalformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from .evaluation.cli import add_parser as _add_evaluate
    from .inverse.cli import add_parsers as _add_design
    from .physics.cli import add_parsers as _add_physics
    from .refinement.cli import add_parsers as _add_refine
    from .sampling.cli import add_parsers as _add_sampling

    for add in (_add_data, _add_train, _add_models, _add_sampling, _add_refine, _add_design, _add_physics,
                _add_evaluate):
        add(sub)
    for leaf in _leaf_parsers(parser):
        if "--threads" not in leaf._option_string_actions:
            leaf.add_argument("--threads", type=int, metavar="N",
                              help="torch intra-op threads (default: 1 for decoding, refinement and design, whose "
                                   "many small steps only spin extra threads; torch's choice for training)")
    return parser


# commands whose work is many small tensor operations: one thread is fastest, and far faster than
# torch's default on a machine with other jobs running (66 s against 2.6 s for a 20-candidate CSP)
SMALL_TENSOR_COMMANDS = {"sample", "csp", "infill", "refine", "design", "finetune", "relax", "physics"}


def _leaf_parsers(parser: argparse.ArgumentParser):
    """Every parser that runs a command (sub-command parsers without sub-commands of their own)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
            yield from _leaf_parsers(child)


def apply_threads(command: str, threads: int | None) -> None:
    """``--threads N``, or one thread for small-tensor commands unless OMP_NUM_THREADS says otherwise."""
    import os

    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads needs a number >= 1, got {threads}")
    elif command in SMALL_TENSOR_COMMANDS and not os.environ.get("OMP_NUM_THREADS"):
        threads = 1
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def check_device(name: str | None) -> None:
    """``--device``: a device torch knows and this machine has, or a one-line UsageError."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r}: not a torch device (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: torch sees no CUDA device on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: unsupported device type {device.type!r} (use cpu, cuda or mps)")


PATH_OPTIONS = ("--out", "--json", "--report", "--input", "--template", "--data", "--val", "--csv", "--cif",
                "--model", "--init", "--config", "--cache-dir", "--samples", "--reference", "--targets", "--hull")


def _empty_path_option(argv: list[str]) -> str | None:
    """The first path option given an empty (or blank) value, e.g. ``--out ''`` or ``--out=``."""
    for i, word in enumerate(argv):
        name, eq, value = word.partition("=")
        if name in PATH_OPTIONS:
            if eq and not value.strip():
                return name
            if not eq and i + 1 < len(argv) and not argv[i + 1].strip():
                return name
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (0 ok, 2 usage or input error)."""
    from .atomic import exit_on_sigterm, release_all
    from .physics import PhysicsUnavailable

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    empty = _empty_path_option(argv)
    if empty:  # argparse's Path('') would silently be the current folder
        print(f"crystalformer: error: {empty} is empty: name the file or folder", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    exit_on_sigterm()  # a terminated run cleans up its temporary folder like an interrupted one
    try:
        apply_threads(args.command, getattr(args, "threads", None))
        check_device(getattr(args, "device", None))
        return args.func(args)
    except (UsageError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError,
            PhysicsUnavailable) as err:
        print(f"crystalformer: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable folder, a full disk, ...: one line naming the path
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"crystalformer: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except FloatingPointError as err:  # a NaN loss stopped training; the last good checkpoint is kept
        print(f"crystalformer: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("crystalformer: interrupted", file=sys.stderr)
        return 130
    finally:
        release_all()


if __name__ == "__main__":
    sys.exit(main())
