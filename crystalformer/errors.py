"""Errors that name the offending input and carry a short machine-readable reason.

The data pipeline counts skipped inputs by ``reason``; users see the message.
"""

from __future__ import annotations

MAX_INPUT_ATOMS = 5000  # far above any crystal the model represents; spglib on 100k atoms takes minutes


class CrystalError(ValueError):
    """A structure that cannot be represented; ``reason`` is one of REASONS."""

    REASONS = (
        "parse",  # unreadable CIF / file
        "disordered",  # partial occupancy or mixed sites
        "unknown_element",  # species outside the vocabulary (dummy species, Z > 103, ...)
        "symmetry",  # spglib found no symmetry / inconsistent dataset
        "wyckoff",  # an orbit could not be matched to a Wyckoff position of the tables
        "too_many_sites",  # more symmetry-distinct sites than n_max
        "too_many_atoms",  # more atoms in the conventional cell than the tokenizer's limit
        "empty",  # no atoms
        "overlap",  # atoms on top of each other (two orbits on one fixed Wyckoff position)
        "invalid",  # any other value the libraries reject (message says which)
    )

    def __init__(self, reason: str, message: str):
        if reason not in self.REASONS:
            raise ValueError(f"unknown CrystalError reason {reason!r}")
        super().__init__(message)
        self.reason = reason


class UsageError(Exception):
    """A mistake in the command line; reported without a traceback, exit code 2."""
