"""Physics in the loop (the ``physics`` extra): energies, forces, relaxation and stability.

One interface, :class:`~crystalformer.physics.potential.Potential`, stands between the rest of
the package and any universal interatomic potential; CHGNet is the one shipped. Nothing here is
imported by the core package, and every entry point fails with one line naming
``pip install "crystalformer[physics]"`` when the extra is missing.
"""

from __future__ import annotations

EXTRA_HINT = 'pip install "crystalformer[physics]"'


class PhysicsUnavailable(ImportError):
    """The physics extra (CHGNet, ASE) is not installed."""


def require(what: str = "this option") -> None:
    """Raise :class:`PhysicsUnavailable` (one line, with the install command) unless the extra is installed."""
    import importlib.util

    missing = [m for m in ("chgnet", "ase") if importlib.util.find_spec(m) is None]
    if missing:
        raise PhysicsUnavailable(f"{what} needs {', '.join(missing)}: {EXTRA_HINT}")


__all__ = ["EXTRA_HINT", "PhysicsUnavailable", "require"]
