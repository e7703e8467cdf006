"""Build a reference hull from training crystals: single points for all, relaxation near the hull.

1. Every structure gets a single-point energy (batched). Training crystals are DFT-relaxed, so
   this is close to their relaxed energy under the potential.
2. The entries within ``relax_within`` eV/atom of that first hull (the ones that define it) are
   relaxed; relaxation only lowers energies, so the others cannot come onto the hull unless they
   lie further above it than relaxation moves anything (reported as the largest drop seen).
3. Metals that occur in the data but have no elemental entry of their own get one: a relaxed
   bcc, hcp or fcc prototype (their common ground-state type; ``source`` says ``prototype``).
   Without it every composition holding such an element would have no hull. Non-metals are not
   given one (a close-packed iodine says nothing about I2 crystals).
4. The hull is rebuilt and its stable entries written.

Work is kept in ``workdir`` as it goes (single points, then each relaxation as one line), so a
stopped build continues where it was; ``time_limit_min`` stops relaxing and builds from what is
done, saying how many near-hull entries stayed unrelaxed.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .hull import Entry, ReferenceHull
from .parallel import WORKER_ERROR, relax_many
from .relax import RelaxConfig

BCC = frozenset(["Li", "Na", "K", "Rb", "Cs", "Ba", "Eu", "V", "Nb", "Ta", "Cr", "Mo", "W", "Fe", "U"])
HCP = frozenset(["Be", "Mg", "Sc", "Y", "Ti", "Zr", "Hf", "Tc", "Re", "Ru", "Os", "Co", "Zn", "Cd", "Tl", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Lu"])


def elemental_prototype(element: str):
    """(structure, kind): a one-element bcc, hcp or fcc primitive cell sized from the atomic radius."""
    from pymatgen.core import Element, Lattice, Structure

    r = float(Element(element).atomic_radius or 1.5)
    if element in BCC:
        a = 4 * r / 3 ** 0.5
        return Structure(Lattice(np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]]) * a / 2), [element], [[0, 0, 0]]), "bcc"
    if element in HCP:
        a = 2 * r
        return Structure(Lattice.hexagonal(a, 1.633 * a), [element] * 2,
                         [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]), "hcp"
    a = 2 * 2 ** 0.5 * r
    return Structure(Lattice(np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]) * a / 2), [element], [[0, 0, 0]]), "fcc"


def elemental_references(entries, potential, config: RelaxConfig | None = None) -> list[Entry]:
    """Relaxed prototype entries for the metals of ``entries`` that have no elemental entry."""
    from pymatgen.core import Element

    from .hull import fractions

    config = config if config is not None else RelaxConfig(steps=200)
    present, pure = set(), set()
    for e in entries:
        f = fractions(e.formula)
        present |= set(f)
        if len(f) == 1:
            pure |= set(f)
    metals = [el for el in sorted(present - pure) if Element(el).is_metal]
    prototypes = [elemental_prototype(el) for el in metals]
    out = []
    for el, (_, kind), r in zip(metals, prototypes, relax_many([s for s, _ in prototypes], potential, config)):
        if math.isfinite(r.energy_per_atom):
            out.append(Entry(el, float(r.energy_per_atom), f"prototype-{kind}", "prototype", r.relaxed))
    return out


@dataclass
class BuildReport:
    n_inputs: int
    n_skipped: dict  # reason -> count
    n_single_points: int
    n_relaxed: int
    n_near_hull: int
    n_stable: int
    n_prototypes: int  # elemental prototype entries added (see the module text)
    max_relax_drop: float | None  # eV/atom, the largest energy drop relaxation gave
    wall_s: float


def _read_structures(csvs, progress: bool):
    from ..io import read_csv_records, structure_from_cif

    out, skipped = [], {}
    for path in csvs:
        for rec in read_csv_records(path):
            try:
                s = structure_from_cif(rec.cif, f"{rec.source} row {rec.row}")
                if not s.is_ordered:
                    raise ValueError("disordered")
                out.append((rec.material_id or f"{Path(path).stem}:{rec.row}", str(path), s))
            except ValueError as err:
                reason = str(err).split(":")[-1].strip()[:60] or "unreadable"
                skipped[reason] = skipped.get(reason, 0) + 1
    return out, skipped


def _read_relaxed(path: Path, key: dict, items) -> dict:
    """Relaxations a previous run of the same build kept (first line: its key); a stale file is started anew."""
    done: dict = {}
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        try:
            same = bool(lines) and json.loads(lines[0]).get("key") == key
        except json.JSONDecodeError:
            same = False
        if same:
            for line in lines[1:]:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # the half-written last line of a killed run
                    continue
                i = rec.get("index")
                if isinstance(i, int) and 0 <= i < len(items) and rec.get("material_id") == items[i][0]:
                    done[i] = rec
            return done
    path.write_text(json.dumps({"key": key}) + "\n", encoding="utf-8")
    return done


def build_hull(csvs, out, potential, workdir=None, relax_within: float = 0.05,
               config: RelaxConfig | None = None, batch_size: int = 32,
               time_limit_min: float | None = None, progress: bool = True, prototypes: bool = True) -> BuildReport:
    """Build the hull table ``out`` (CSV of the stable entries) from CDVAE-format ``csvs``."""
    from tqdm.auto import tqdm

    config = config if config is not None else RelaxConfig(steps=200)
    t0 = time.time()
    out = Path(out)
    workdir = Path(workdir) if workdir is not None else out.with_suffix(".work")
    workdir.mkdir(parents=True, exist_ok=True)
    items, skipped = _read_structures(csvs, progress)
    if not items:
        raise ValueError(f"no readable structure in {', '.join(map(str, csvs))}")
    key = {"inputs": [str(p) for p in csvs], "n": len(items), "potential": getattr(potential, "name", "?"),
           "version": str(getattr(potential, "version", ""))}
    sp_file, relax_file = workdir / "single_points.json", workdir / "relaxed.jsonl"
    energies = None
    if sp_file.exists():
        saved = json.loads(sp_file.read_text())
        if saved.get("key") == key:
            energies = np.array([math.nan if e is None else e for e in saved["energy_per_atom"]])
    if energies is None:
        energies = np.full(len(items), np.nan)
        bar = tqdm(total=len(items), desc="single points", unit="structure", disable=not progress)
        for start in range(0, len(items), batch_size):
            chunk = [s for _, _, s in items[start:start + batch_size]]
            energies[start:start + len(chunk)], _ = potential.energies(chunk, batch_size)
            bar.update(len(chunk))
        bar.close()
        if not np.isfinite(energies).any():
            raise ValueError(f"the {key['potential']} potential gave no energy for any structure of "
                             f"{', '.join(map(str, csvs))}")
        from ..atomic import atomic_write_text

        atomic_write_text(sp_file, json.dumps({"key": key, "energy_per_atom": [
            None if not math.isfinite(e) else float(e) for e in energies]}))
    skipped_sp = int(np.sum(~np.isfinite(energies)))
    if skipped_sp:
        skipped["potential failed"] = skipped_sp
    entries = [Entry(s.composition.formula, float(e), mid, Path(src).parent.name + "/" + Path(src).name)
               for (mid, src, s), e in zip(items, energies)]
    hull = ReferenceHull(entries)
    near = [i for i, e in enumerate(entries) if math.isfinite(e.energy_per_atom)
            and (eh := hull.e_above_hull(e.formula, e.energy_per_atom)) is not None and eh <= relax_within]
    done = _read_relaxed(relax_file, {**key, "relax": asdict(config)}, items)
    todo = [i for i in near if i not in done]
    deadline = None if time_limit_min is None else t0 + 60 * time_limit_min
    results = relax_many((items[i][2].get_primitive_structure() for i in todo), potential, config)
    with relax_file.open("a", encoding="utf-8") as f, contextlib.closing(results):
        for i, res in tqdm(zip(todo, results), total=len(todo), desc="relax near hull", unit="structure",
                           disable=not progress):
            if res.error is not None and res.error.startswith(WORKER_ERROR):
                continue  # lost with a worker process, not judged: a later run tries it again
            rec = {"index": i, "material_id": items[i][0],
                   "energy_per_atom": res.energy_per_atom if res.relaxed else None,
                   "error": res.error, "steps": res.steps, "converged": res.converged}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            done[i] = rec
            if deadline is not None and time.time() > deadline:
                break  # closing ``results`` cancels what has not started; a later run tries those
    drops = []
    for i, rec in done.items():
        e = rec.get("energy_per_atom")
        if e is not None and math.isfinite(e) and e < entries[i].energy_per_atom:
            drops.append(entries[i].energy_per_atom - e)
            entries[i] = replace(entries[i], energy_per_atom=float(e), relaxed=True)
    prototypes = elemental_references(entries, potential, config) if prototypes else []
    hull = ReferenceHull(entries + prototypes)
    stable = hull.stable_entries()
    hull.save(out, stable)
    return BuildReport(len(items) + sum(v for k, v in skipped.items() if k != "potential failed"), skipped,
                       int(np.sum(np.isfinite(energies))), sum(1 for i in near if i in done
                                                                and done[i].get("energy_per_atom") is not None),
                       len(near), len(stable), len(prototypes), float(max(drops)) if drops else None, round(time.time() - t0, 1))
