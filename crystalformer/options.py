"""One command-line vocabulary for lists: every list option is repeatable *and* comma-separated.

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
        items = list(getattr(namespace, self.dest, None) or [])
        items += [v.strip() for v in str(values).split(",") if v.strip()]
        setattr(namespace, self.dest, items)


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
    bad = [n for n in numbers if (low is not None and n < low) or (high is not None and n > high)]
    if bad:
        bound = f"{low}-{high}" if low is not None and high is not None else \
            (f">= {low}" if low is not None else f"<= {high}")
        raise UsageError(f"{option} {','.join(items)}: {bad[0]} is not {bound}" if low is None or high is None
                         else f"{option} {','.join(items)}: {bad[0]} is outside {bound}")
    return numbers


class OneLineParser(argparse.ArgumentParser):
    """argparse with the package's error style: one ``crystalformer: error:`` line, exit code 2."""

    def error(self, message):
        self.exit(2, f"crystalformer: error: {message} (see `{self.prog} --help`)\n")
