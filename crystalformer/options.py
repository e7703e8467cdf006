"""One command-line vocabulary: shared option builders (``--out``, ``--overwrite``, ``--quiet``,
``--device``, ``--seed``, ``--set``), and lists that are repeatable *and* comma-separated.

``--space-group 225 --space-group 221`` and ``--space-group 225,221`` mean the same, for every
command. Values are converted by the command (:func:`int_list`), so a wrong one is a one-line
error naming the option. Importing this module imports nothing heavy (``--help`` stays fast).
"""

from __future__ import annotations

import argparse

from .errors import UsageError


class ListAction(argparse.Action):
    """Collects repeated, comma-separated values into one flat list of stripped strings."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = [v.strip() for v in str(values).split(",") if v.strip()]
        if not new:  # "--elements ," would otherwise mean "no restriction"
            parser.error(f"argument {option_string}: {values!r} holds no value")
        setattr(namespace, self.dest, list(getattr(namespace, self.dest, None) or []) + new)


def words(values) -> list[str] | None:
    """A list option's values (``None`` when not given); a plain string is split on commas and spaces."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    return [w for v in values for w in str(v).replace(" ", ",").split(",") if w.strip()] or None


def int_list(values, option: str, what: str = "whole numbers like 1,2,4", low: int | None = None,
             high: int | None = None) -> list[int] | None:
    """Integers of a list option, or a :class:`UsageError` naming ``option``."""
    items = words(values)
    if items is None:
        return None
    try:
        numbers = [int(w) for w in items]
    except ValueError:
        raise UsageError(f"{option} {','.join(items)}: expected {what}") from None
    lo, hi = -float("inf") if low is None else low, float("inf") if high is None else high
    bad = [n for n in numbers if not lo <= n <= hi]
    if bad:
        bound = f"{low}-{high}" if low is not None and high is not None else \
            (f">= {low}" if low is not None else f"<= {high}")
        raise UsageError(f"{option} {','.join(items)}: {bad[0]} is not in {bound}")
    return numbers


def _shows_default(action) -> bool:
    default = action.default
    if default is None or default is False or default == argparse.SUPPRESS or isinstance(default, list):
        return False
    return bool(action.option_strings) and not isinstance(action, argparse._VersionAction)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every option's default unless its text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if _shows_default(action) and "default" not in text:
            text = f"{text} (default %(default)s)" if text else "default %(default)s"
        return text


class OneLineParser(argparse.ArgumentParser):
    """argparse with the package's error style: one ``crystalformer: error:`` line, exit code 2,
    and defaults shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if not action.help and _shows_default(action):
            action.help = "default %(default)s"
        return action

    def error(self, message):
        self.exit(2, f"crystalformer: error: {message} (see `{self.prog} --help`)\n")


def lightning_device(device: str | None) -> tuple[str, object]:
    """(accelerator, devices) for Lightning from a torch device name: cpu, cuda, cuda:N, mps."""
    if device is None:
        return "auto", "auto"
    kind, _, index = device.partition(":")
    accelerator = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}.get(kind)
    if accelerator is None or (index and not index.isdigit()):
        raise UsageError(f"--device {device!r}: use cpu, cuda, cuda:N or mps")
    return accelerator, (f"{int(index)}," if index else "1")  # Lightning: "1," is device index 1, "1" one device


# ---------------------------------------------------------------------- options every command shares
DEVICES = "cpu, cuda, cuda:N or mps"


def add_out(parser, help: str = "output folder", metavar: str = "DIR", required: bool = True) -> None:
    from pathlib import Path

    parser.add_argument("--out", type=Path, required=required, metavar=metavar, help=help)


def add_overwrite(parser, help: str = "replace a non-empty --out") -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_quiet(parser, help: str = "no progress bar") -> None:
    parser.add_argument("--quiet", action="store_true", help=help)


def add_device(parser, what: str = "", default: str | None = "cpu") -> None:
    """``--device``: a torch device name; ``default=None`` lets the command choose (e.g. Lightning's auto)."""
    tail = f"default {default}" if default else "default: the fastest available"
    parser.add_argument("--device", default=default, help=f"torch device{' ' + what if what else ''} "
                                                          f"({DEVICES}; {tail})")


def add_model(parser, help: str = "shipped model name (mp_20, perov_5, carbon_24; see `crystalformer models`) or "
                                   "model directory (default: mp_20, the model for real materials)") -> None:
    parser.add_argument("--model", metavar="NAME|DIR", help=help)


def add_seed(parser, help: str = "random seed") -> None:
    parser.add_argument("--seed", type=int, default=0, help=f"{help} (default 0)")


def add_set(parser, what: str = "config") -> None:
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", help=f"override one {what} field (repeatable)")


def add_cache_dir(parser) -> None:
    """``--cache-dir``: where CSV / CIF inputs are prepared before training."""
    from pathlib import Path

    parser.add_argument("--cache-dir", type=Path,
                        help="where CSV/CIF inputs are prepared (default ~/.cache/crystalformer/prepared)")


def add_outputs(parser, out_help: str = "output folder", out_metavar: str = "DIR",
                overwrite_help: str = "replace a non-empty --out", quiet_help: str = "no progress bar") -> None:
    """``--out``, ``--overwrite`` and ``--quiet``, as every command that writes a folder has them."""
    add_out(parser, out_help, out_metavar)
    add_overwrite(parser, overwrite_help)
    add_quiet(parser, quiet_help)
