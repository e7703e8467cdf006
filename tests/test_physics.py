"""Physics in the loop: the potential interface, relaxation, hulls, energy ranking and stability.

Independent facts: rock-salt NaCl relaxes back to a = 5.6-5.7 Å from a compressed cell; diamond
Si keeps Fd-3m under symmetry-constrained relaxation; rock salt lies below CsCl-type NaCl; the
linear-programming hull agrees with pymatgen's PhaseDiagram; every physics option without the
extra stops with one line naming the install command.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time

import numpy as np
import pytest

pytest.importorskip("pymatgen")
from pymatgen.core import Lattice, Structure

from crystalformer.physics.hull import Entry, ReferenceHull, read_entries
from crystalformer.physics.relax import RelaxConfig, relax_one

HAS_CHGNET = importlib.util.find_spec("chgnet") is not None and importlib.util.find_spec("ase") is not None
needs_chgnet = pytest.mark.skipif(not HAS_CHGNET, reason='needs pip install "crystalformer[physics]"')


def rock_salt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cscl_type(a: float = 3.3) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def chgnet():
    from crystalformer.physics.potential import load_potential

    return load_potential("chgnet")


# ---------------------------------------------------------------------- hull (no potential needed)
def _random_entries(rng, n: int = 40) -> list[Entry]:
    """A Li-Fe-O set: elements at 0 eV/atom-ish plus binaries and ternaries with random energies."""
    entries = [Entry("Li", -1.9), Entry("Fe", -8.3), Entry("O", -4.9), Entry("Li", -1.7)]
    for _ in range(n):
        li, fe, o = rng.integers(0, 5, size=3)
        if li + fe + o < 2 or (li > 0) + (fe > 0) + (o > 0) < 2:
            continue
        formula = "".join(f"{el}{k}" for el, k in (("Li", li), ("Fe", fe), ("O", o)) if k)
        entries.append(Entry(formula, float(rng.uniform(-7.5, -3.0))))
    return entries


def test_hull_agrees_with_pymatgen_phase_diagram():
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    rng = np.random.default_rng(0)
    entries = _random_entries(rng)
    hull = ReferenceHull(entries)
    pd = PhaseDiagram([PDEntry(Composition(e.formula), e.energy_per_atom * Composition(e.formula).num_atoms)
                       for e in entries])
    for formula in ("LiFeO2", "Li2O", "Fe2O3", "Li5FeO4", "Li", "FeO", "LiFe3O7"):
        comp = Composition(formula)
        for e in (-6.0, -4.0, -2.0):
            ours = hull.e_above_hull(formula, e)
            theirs = pd.get_e_above_hull(PDEntry(comp, e * comp.num_atoms), allow_negative=True)
            assert ours == pytest.approx(theirs, abs=1e-6), (formula, e)
    stable_ours = {Composition(e.formula).reduced_formula for e in hull.stable_entries()}
    stable_pm = {e.composition.reduced_formula for e in pd.stable_entries}
    assert stable_ours == stable_pm


def test_hull_without_an_element_is_undefined_and_tables_round_trip(tmp_path):
    hull = ReferenceHull([Entry("Na", -1.3), Entry("Cl", -1.8), Entry("NaCl", -3.4, "mp-22862", "x", True)])
    assert hull.e_above_hull("NaCl", -3.4) == pytest.approx(0.0, abs=1e-9)
    assert hull.e_above_hull("NaCl", -3.0) == pytest.approx(0.4)
    assert hull.e_above_hull("KCl", -3.0) is None and hull.missing_elements("KCl") == ["K"]
    assert hull.e_above_hull("NaCl", math.nan) is None
    path = hull.save(tmp_path / "hull.csv")
    again = ReferenceHull.load(path)
    assert [e.formula for e in again.entries] == ["Na", "Cl", "NaCl"] and again.entries[2].relaxed
    assert again.e_above_hull("Na2Cl", -2.5) == pytest.approx(hull.e_above_hull("Na2Cl", -2.5))
    bad = tmp_path / "bad.csv"
    bad.write_text("formula,energy_per_atom\nNaCl,abc\n")
    with pytest.raises(ValueError, match="bad.csv row 2"):
        read_entries(bad)
    bad.write_text("formula,energy_per_atom\nNaCl,nan\n")
    with pytest.raises(ValueError, match="row 2: energy_per_atom is nan"):
        read_entries(bad)
    with pytest.raises(ValueError, match="at least one reference"):
        ReferenceHull([])


# ---------------------------------------------------------------------- a stand-in potential
class PairPotential:
    """A tiny Lennard-Jones-like stand-in (ASE's LJ) with per-structure energies; no CHGNet needed."""

    name = "lj"

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on

    def energies(self, structures, batch_size: int = 32):
        out, errors = [], []
        for s in structures:
            if self.fail_on and self.fail_on in s.composition.formula:
                out.append(np.nan)
                errors.append("potential: refused")
                continue
            d = s.distance_matrix + np.eye(len(s)) * 1e9
            out.append(float(-1.0 - 0.1 / d.min()))
            errors.append(None)
        return np.array(out), errors

    def calculator(self):
        from ase.calculators.lj import LennardJones

        return LennardJones(sigma=2.5, epsilon=0.01, rc=6.0)


class BrokenPotential(PairPotential):
    def calculator(self):
        from ase.calculators.calculator import Calculator

        class Boom(Calculator):
            implemented_properties = ("energy", "forces", "stress")

            def calculate(self, atoms=None, properties=None, system_changes=None):
                raise RuntimeError("graph construction failed")

        return Boom()


@pytest.mark.skipif(importlib.util.find_spec("ase") is None, reason="needs ase")
def test_failed_relaxation_keeps_the_structure_with_its_reason(monkeypatch):
    import crystalformer.physics.relax as relax_mod

    monkeypatch.setattr(relax_mod, "require", lambda what="": None)
    s = rock_salt()
    r = relax_one(s, BrokenPotential())
    assert not r.relaxed and not r.converged and r.structure is s
    assert r.error.startswith("potential: RuntimeError: graph construction failed")
    summary = r.summary()
    assert summary["energy_per_atom"] is None and "structure" not in summary


@pytest.mark.parametrize("field, value", [("fmax", 0.0), ("fmax", math.nan), ("steps", -1),
                                          ("max_volume_ratio", 1.0), ("symprec", -0.1)])
def test_relax_config_refuses_nonsense(field, value):
    with pytest.raises(ValueError, match=field):
        RelaxConfig(**{field: value})


def test_build_hull_resumes_and_starts_anew_when_inputs_change(tmp_path, data_dir, monkeypatch):
    pytest.importorskip("ase")
    import crystalformer.physics.parallel as parallel_mod
    import crystalformer.physics.relax as relax_mod
    from crystalformer.physics.build import build_hull

    monkeypatch.setattr(relax_mod, "require", lambda what="": None)
    calls = []
    real = parallel_mod.relax_one
    monkeypatch.setattr(parallel_mod, "relax_one", lambda s, p, c: calls.append(1) or real(s, p, c))
    pot = PairPotential()
    kw = dict(relax_within=0.0, config=RelaxConfig(steps=3), progress=False, prototypes=False)
    rep = build_hull([data_dir / "mp20_sample.csv"], tmp_path / "hull.csv", pot, **kw)
    entries = read_entries(tmp_path / "hull.csv")
    assert rep.n_stable == len(entries) > 0 and rep.n_single_points == rep.n_inputs
    assert len(calls) == rep.n_near_hull > 0
    again = build_hull([data_dir / "mp20_sample.csv"], tmp_path / "hull.csv", pot, **kw)
    assert len(calls) == rep.n_near_hull  # resumed: nothing relaxed twice
    assert again.n_relaxed == rep.n_relaxed and again.n_stable == rep.n_stable
    other = build_hull([data_dir / "perov5_sample.csv"], tmp_path / "hull.csv", pot, **kw)
    assert len(calls) == rep.n_near_hull + other.n_near_hull  # other inputs: the old work is not reused
    with_protos = build_hull([data_dir / "mp20_sample.csv"], tmp_path / "h2.csv", pot, **{**kw, "prototypes": True})
    assert with_protos.n_prototypes > 0  # the fixture's metals have no elemental entries


def test_stability_sun_flags_follow_the_valid_samples(tmp_path):
    pytest.importorskip("smact")
    from pymatgen.io.cif import CifWriter

    from crystalformer.evaluation.runner import evaluate_generation
    from crystalformer.physics.stability import StabilityJudge, stability_metrics

    folder = tmp_path / "samples"
    folder.mkdir()
    squashed = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])  # invalid: 0.2 Å
    for name, s in (("a", squashed), ("b", rock_salt()), ("c", cscl_type()), ("d", cscl_type(3.31))):
        CifWriter(s).write_file(folder / f"{name}.cif")
    ref = tmp_path / "train.csv"
    import pandas as pd

    pd.DataFrame({"material_id": ["r"], "cif": [str(CifWriter(rock_salt()))]}).to_csv(ref, index=False)
    hull = ReferenceHull([Entry("Na", 0.0), Entry("Cl", 0.0)])  # everything is below it: all stable
    judge = StabilityJudge(hull, PairPotential())
    res = evaluate_generation(folder, ref, coverage=False, progress=False, stability=judge)
    m = res["metrics"]
    assert m["n_samples"] == 4 and m["n_stable"] == 3  # the squashed sample is not valid
    assert m["n_sun"] == 1 and m["sun_rate"] == 0.25  # c: stable, unique (d copies it), novel (b is the reference)
    assert [r["name"] for r in res["stability"]["per_sample"]] == ["b", "c", "d"]
    recs = [{"energy_per_atom": -1.0, "e_hull": 0.05}, {"energy_per_atom": -1.0, "e_hull": 0.2},
            {"energy_per_atom": -1.0, "e_hull": None}, {"energy_per_atom": None, "e_hull": None}]
    m = stability_metrics(recs, 8, [True, True, True, False], [True, True, True, True])
    assert (m["n_stable"], m["stable_rate"], m["n_sun"], m["n_no_hull"], m["n_potential_failed"]) == (1, 1 / 8, 1, 1, 1)


# ---------------------------------------------------------------------- pushing overlapping atoms apart
needs_ase = pytest.mark.skipif(importlib.util.find_spec("ase") is None, reason="needs ase")


def _overlapping_spinel():
    """MgAl2O4 spinel with one O site pulled onto Al: two atoms 0.3 Å apart, Fd-3m kept."""
    from pymatgen.io.ase import AseAtomsAdaptor

    s = Structure.from_spacegroup("Fd-3m", Lattice.cubic(8.08), ["Mg", "Al", "O"],
                                  [[0.125, 0.125, 0.125], [0.5, 0.5, 0.5], [0.5 - 0.3 / 8.08 / 3 ** 0.5] * 3])
    return AseAtomsAdaptor.get_atoms(s.get_primitive_structure())


@needs_ase
def test_soft_sphere_forces_and_stress_are_gradients_of_the_energy(monkeypatch):
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

    import crystalformer.physics.separate as sep

    monkeypatch.setattr(sep, "require", lambda what="": None)
    atoms = _overlapping_spinel()
    atoms.rattle(0.05, seed=0)
    atoms.calc = sep.soft_spheres()
    assert atoms.get_potential_energy() > 0
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, 1e-5), atol=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, 1e-6), atol=1e-7)


@needs_ase
def test_push_apart_separates_overlaps_keeps_symmetry_and_leaves_sane_crystals_alone(monkeypatch):
    from ase.constraints import FixSymmetry
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    import crystalformer.physics.separate as sep

    monkeypatch.setattr(sep, "require", lambda what="": None)
    atoms = _overlapping_spinel()
    assert min(atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)]) < 0.35
    atoms.set_constraint(FixSymmetry(atoms, symprec=0.01))
    assert sep.push_apart(atoms) > 0
    assert sep.contact_ratio(atoms) >= 0.69
    atoms.set_constraint()
    assert SpacegroupAnalyzer(AseAtomsAdaptor.get_structure(atoms), symprec=0.01).get_space_group_number() == 227
    sane = AseAtomsAdaptor.get_atoms(rock_salt())
    before = sane.get_positions().copy()
    assert sep.push_apart(sane) == 0
    np.testing.assert_array_equal(sane.get_positions(), before)


@needs_ase
def test_cached_cell_filter_follows_ases_filter_bit_for_bit_with_a_third_of_the_work(monkeypatch):
    """Same FIRE trajectory (rattled, strained spinel under soft spheres and FixSymmetry) as
    ASE's FrechetCellFilter, with the filter's forces computed once per step instead of ~3 times."""
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    import crystalformer.physics.separate as sep
    from crystalformer.physics.cellfilter import cell_filter

    calls = [0]
    ases = FrechetCellFilter.get_forces

    def counted(self, **kwargs):  # ASE's own filter code, which the cached filter calls through super()
        calls[0] += 1
        return ases(self, **kwargs)

    monkeypatch.setattr(FrechetCellFilter, "get_forces", counted)

    def run(make_filter):
        calls[0] = 0
        atoms = _overlapping_spinel()
        atoms.set_cell(atoms.cell[:] @ np.diag([1.02, 0.99, 1.0]), scale_atoms=True)
        atoms.set_constraint(FixSymmetry(atoms, symprec=0.01))
        atoms.calc = sep.soft_spheres()
        opt = FIRE(make_filter(atoms), logfile=None, maxstep=0.1)
        converged = opt.run(fmax=1e-3, steps=40)
        return atoms, opt.nsteps, converged, calls[0]

    plain, steps, converged, n_plain = run(FrechetCellFilter)
    cached, steps_cached, converged_cached, n_cached = run(cell_filter)
    assert steps == steps_cached > 5 and converged == converged_cached
    np.testing.assert_array_equal(plain.get_positions(), cached.get_positions())
    np.testing.assert_array_equal(plain.cell[:], cached.cell[:])
    assert n_cached == steps + 1 and n_plain >= 2 * n_cached


def test_relax_config_separate_is_checked():
    with pytest.raises(ValueError, match="separate"):
        RelaxConfig(separate=-0.1)


# ---------------------------------------------------------------------- CHGNet: facts
@needs_chgnet
def test_compressed_rock_salt_relaxes_back(chgnet):
    r = relax_one(rock_salt(5.2), chgnet, RelaxConfig(fmax=0.02, steps=300))
    assert r.relaxed and r.converged, r.error
    conventional = r.structure.get_primitive_structure().lattice.abc[0] * math.sqrt(2)
    assert 5.55 < conventional < 5.75, conventional
    assert r.space_group_before == r.space_group_after == 225
    assert r.energy_per_atom < r.initial_energy_per_atom


@needs_chgnet
def test_overlapping_atoms_are_pushed_apart_then_relaxed(chgnet):
    """Na and Cl 0.3 Å apart along [111] of an fcc cell: a bond, not a collapse, after relaxing."""
    lattice = Lattice([[0, 2.82, 2.82], [2.82, 0, 2.82], [2.82, 2.82, 0]])
    s = Structure(lattice, ["Na", "Cl"], [[0, 0, 0], [0.0307, 0.0307, 0.0307]])
    assert s.distance_matrix[0, 1] < 0.35
    r = relax_one(s, chgnet, RelaxConfig(steps=200))
    assert r.relaxed and r.separation_steps > 0, r.error
    assert 2.2 < r.structure.distance_matrix[0, 1] < 3.2


@needs_chgnet
def test_atoms_too_close_for_spglib_are_separated_before_symmetry_is_fixed(chgnet):
    """Two O atoms 0.004 Å apart: spglib refuses them (FixSymmetry raises); they are pushed apart first."""
    s = Structure(Lattice.cubic(4.2), ["Mg", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.501, 0.5, 0.5]])
    r = relax_one(s, chgnet, RelaxConfig(steps=100))
    assert r.relaxed and r.separation_steps > 0, r.error
    assert r.structure.distance_matrix[1, 2] > 0.9


@needs_chgnet
def test_diamond_silicon_keeps_fd3m(chgnet):
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.3), ["Si"], [[0, 0, 0]])
    si.perturb(0.02, min_distance=0.01, seed=0)  # small random displacements: FixSymmetry must remove them
    r = relax_one(si.copy(), chgnet, RelaxConfig(symprec=0.05))
    assert r.relaxed, r.error
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    assert SpacegroupAnalyzer(r.structure, symprec=0.01).get_space_group_number() == 227
    assert 5.4 < r.structure.get_primitive_structure().lattice.abc[0] * math.sqrt(2) < 5.55


@needs_chgnet
def test_energy_ranks_rock_salt_below_cscl_type(chgnet):
    from crystalformer import Crystal
    from crystalformer.physics.ranking import RankConfig, RankStats, rank_by_energy
    from crystalformer.sampling.api import Sample

    samples = [Sample(Crystal.from_structure(cscl_type()), -1.0), Sample(Crystal.from_structure(rock_salt()), -5.0),
               Sample(Crystal.from_structure(rock_salt(5.7)), -6.0)]  # a duplicate of rock salt
    stats = RankStats()
    ranked = rank_by_energy(samples, chgnet, config=RankConfig(relax_top=2), stats=stats)
    assert [s.crystal.space_group for s in ranked] == [225, 221]
    assert stats.duplicates >= 1 and stats.relaxed == 2
    top = ranked[0].physics
    assert top["energy_rank"] == 0 and top["log_p_rank"] in (1, 2) and top["relaxed"]
    assert top["energy_per_atom"] < ranked[1].physics["energy_per_atom"]


@needs_chgnet
def test_one_backward_forces_and_stress_equal_chgnets_own_calculator(chgnet):
    """The fast calculator against CHGNet's stock one, and its forces against finite differences."""
    from ase.build import bulk

    from crystalformer.physics.potential import chgnet_forces_supported

    assert chgnet_forces_supported(chgnet.model)
    fast, stock = chgnet.calculator(), chgnet.calculator(fast=False)
    assert type(fast) is not type(stock)
    crystals = [bulk("NaCl", "rocksalt", a=5.5, cubic=True), bulk("Si", "diamond", a=5.5, cubic=True),
                bulk("Fe", "bcc", a=2.9, cubic=True).repeat((2, 1, 1))]
    crystals[-1].symbols[0] = "Co"
    for i, atoms in enumerate(crystals):
        atoms.rattle(0.05, seed=i)
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.01 * np.random.default_rng(i).normal(size=(3, 3))),
                       scale_atoms=True)
        got = {}
        for name, calc in (("fast", fast), ("stock", stock)):
            a = atoms.copy()
            a.calc = calc
            got[name] = (a.get_potential_energy(), a.get_forces(), a.get_stress())
        assert abs(got["fast"][0] - got["stock"][0]) < 1e-4
        np.testing.assert_allclose(got["fast"][1], got["stock"][1], atol=2e-4)
        np.testing.assert_allclose(got["fast"][2], got["stock"][2], atol=2e-5)  # eV/Å^3
        assert np.abs(got["fast"][1]).max() > 0.05  # the rattle left real forces to compare
    # independent check: the force on one atom is minus the slope of the energy (central differences)
    a = crystals[0].copy()
    a.calc = fast
    h, k = 1e-3, 1
    forces = a.get_forces()
    for axis in range(3):
        e = []
        for sign in (1, -1):
            b = a.copy()
            b.positions[k, axis] += sign * h
            b.calc = fast
            e.append(b.get_potential_energy())
        assert abs(-(e[0] - e[1]) / (2 * h) - forces[k, axis]) < 5e-3


@needs_chgnet
def test_batched_energies_match_one_at_a_time_and_name_failures(chgnet):
    structs = [rock_salt(), cscl_type(), rock_salt(6.0)]
    batch, errors = chgnet.energies(structs, batch_size=3)
    single = [chgnet.energies([s], batch_size=1)[0][0] for s in structs]
    assert errors == [None] * 3
    assert np.allclose(batch, single, atol=1e-4)


# ---------------------------------------------------------------------- CLI
def _nacl_folder(tmp_path):
    from pymatgen.io.cif import CifWriter

    folder = tmp_path / "in"
    folder.mkdir()
    CifWriter(rock_salt(5.3)).write_file(folder / "nacl.cif")
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    return folder


@needs_chgnet
def test_relax_command_writes_energies_and_counts_unreadable(tmp_path, capsys):
    from crystalformer.cli import main

    out = tmp_path / "out"
    assert main(["relax", str(_nacl_folder(tmp_path)), "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "samples.json").read_text())
    rows = {r["name"]: r for r in data["samples"]}
    assert rows["nacl"]["relaxed"] and rows["nacl"]["energy_per_atom"] < rows["nacl"]["initial_energy_per_atom"]
    assert rows["nacl"]["symmetric_cif"] and (out / "nacl.cif").is_file()
    assert not rows["broken"]["relaxed"] and rows["broken"]["error"].startswith("unreadable")
    assert "_symmetry_space_group_name_H-M" in (out / "nacl.cif").read_text() or \
        "_space_group_name_H-M_alt" in (out / "nacl.cif").read_text()
    assert "relaxed 1 of 2" in capsys.readouterr().out


@needs_chgnet
def test_csp_rank_energy_end_to_end(tmp_path, capsys):
    from crystalformer.cli import main
    from crystalformer.physics.ranking import RankConfig

    out = tmp_path / "csp"
    code = main(["csp", "--composition", "NaCl", "--rank", "energy", "--n", "3", "--candidates", "8",
                 "--relax-steps", "60", "--out", str(out), "--quiet"])  # --relax-top left at its default
    assert code == 0
    data = json.loads((out / "samples.json").read_text())
    assert data["meta"]["relax_top"] == RankConfig.relax_top == 3
    rows = data["samples"]
    assert 1 <= len(rows) <= 3
    energies = [r["energy_per_atom"] for r in rows]
    relaxed = [r for r in rows if r["relaxed"]]
    assert relaxed and all(r["energy_rank"] == i for i, r in enumerate(rows))
    assert energies[:len(relaxed)] == sorted(energies[:len(relaxed)])
    assert all("log_p_rank" in r and "single_point_energy_per_atom" in r for r in rows)
    assert "ranked by energy per atom" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["relax", "IN", "--out", "OUT"],
    ["csp", "--composition", "NaCl", "--rank", "energy", "--out", "OUT"],
    ["csp", "--composition", "NaCl", "--relax", "--out", "OUT"],
    ["sample", "--n", "2", "--relax", "--out", "OUT"],
    ["infill", "--template", "IN/nacl.cif", "--element", "Na", "--relax", "--out", "OUT"],
    ["evaluate", "generation", "--samples", "IN", "--reference", "IN/nacl.cif", "--energy", "--json", "OUT.json"],
    ["physics", "build-hull", "--csv", "CSV", "--out", "OUT.csv"],
    ["design", "--target", "e_hull<0.05", "--out", "OUT"],
])
def test_every_physics_option_without_the_extra_is_one_line(argv, tmp_path, data_dir, monkeypatch, capsys):
    from crystalformer.cli import main

    folder = _nacl_folder(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("chgnet", "ase")
                        else real(name, *a))
    subst = {"IN": str(folder), "OUT": str(tmp_path / "out"), "CSV": str(data_dir / "mp20_sample.csv")}
    argv = [subst.get(a, a.replace("IN/", f"{folder}/").replace("OUT.", f"{tmp_path}/out.")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "crystalformer[physics]"' in err[0], err
    assert not any(tmp_path.glob("out*"))


@needs_chgnet
def test_design_aims_at_e_hull_scored_by_the_potential(tmp_path):
    from crystalformer.cli import main

    hull = tmp_path / "hull.csv"
    ReferenceHull([Entry("Na", -1.3), Entry("Cl", -1.8), Entry("NaCl", -3.4)]).save(hull)
    out = tmp_path / "design"
    code = main(["design", "--target", "e_hull<0.3", "--hull", str(hull), "--elements", "Na,Cl", "--n", "3",
                 "--steps", "2", "--out", str(out), "--quiet"])
    assert code in (0, 1)  # 1: written, but no chain met the target in two steps
    rows = json.loads((out / "samples.json").read_text())["samples"]
    assert len(rows) == 3 and all("e_hull" in r["predicted"] for r in rows)
    assert all(math.isfinite(r["predicted"]["e_hull"]) for r in rows)
    assert json.loads((out / "samples.json").read_text())["meta"]["targets"] == ["e_hull<0.3"]


@needs_chgnet
def test_evaluate_generation_energy_reports_stability(tmp_path, capsys):
    from pymatgen.io.cif import CifWriter

    from crystalformer.cli import main

    folder = tmp_path / "samples"
    folder.mkdir()
    CifWriter(rock_salt()).write_file(folder / "a.cif")
    CifWriter(cscl_type()).write_file(folder / "b.cif")
    ref = tmp_path / "ref.csv"
    import pandas as pd

    pd.DataFrame({"material_id": ["r"], "cif": [str(CifWriter(rock_salt(5.5)))]}).to_csv(ref, index=False)
    hull = tmp_path / "hull.csv"
    ReferenceHull([Entry("Na", -1.3), Entry("Cl", -1.8), Entry("NaCl", -3.40)]).save(hull)
    js = tmp_path / "m.json"
    assert main(["evaluate", "generation", "--samples", str(folder), "--reference", str(ref), "--energy", "--hull",
                 str(hull), "--no-coverage", "--json", str(js), "--quiet"]) == 0
    result = json.loads(js.read_text())
    m = result["metrics"]
    per = {r["name"]: r for r in result["stability"]["per_sample"]}
    assert per["a"]["e_hull"] < per["b"]["e_hull"]  # rock salt below CsCl type
    assert m["n_energy"] == 2 and 0 <= m["stable_rate"] <= 1 and "sun_rate" in m
    assert (tmp_path / "m.png").is_file()


@pytest.mark.skipif(importlib.util.find_spec("ase") is None, reason="needs ase")
def test_relax_samples_keeps_failures_and_passes_empty_samples_through(monkeypatch):
    import crystalformer.physics.relax as relax_mod
    from crystalformer import Crystal
    from crystalformer.physics.samples import relax_samples
    from crystalformer.sampling.api import Sample

    monkeypatch.setattr(relax_mod, "require", lambda what="": None)
    samples = [Sample(Crystal.from_structure(rock_salt()), -1.0), Sample(None, -2.0, error="invalid: x")]
    out, counts = relax_samples(samples, BrokenPotential(), RelaxConfig(steps=5))
    assert counts == {"potential": 1, "no crystal": 1}
    assert out[0].crystal is samples[0].crystal and out[0].physics["relaxed"] is False
    assert out[0].physics["relax"]["error"].startswith("potential: RuntimeError")
    assert out[1] is samples[1]
    out, counts = relax_samples(samples[:1], PairPotential(), RelaxConfig(steps=5))
    assert counts["relaxed"] + counts.get("exploded", 0) == 1
    assert out[0].physics["relax"]["steps"] <= 5 and out[0].physics["potential"] == "lj"


@needs_chgnet
def test_sample_with_relax_writes_energies(tmp_path):
    from crystalformer.cli import main

    out = tmp_path / "s"
    assert main(["sample", "--n", "2", "--relax", "--relax-steps", "20", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "samples.json").read_text())
    assert data["meta"]["relax"] == {"potential": "chgnet", "fmax": 0.05, "steps": 20, "symmetric": True}
    for row in data["samples"]:
        if row["file"]:
            assert "relax" in row and row["relax"]["steps"] <= 20
            assert row["energy_per_atom"] is not None or row["relax"]["error"]


def test_predict_structure_rank_is_checked():
    import crystalformer

    with pytest.raises(ValueError, match="rank must be one of logp, skeleton, energy"):
        crystalformer.predict_structure(crystalformer.load_model("mp_20"), "NaCl", n=1, rank="enthalpy")


def test_elemental_prototypes_fill_missing_metals_only(monkeypatch):
    pytest.importorskip("ase")
    import crystalformer.physics.relax as relax_mod
    from crystalformer.physics.build import elemental_prototype, elemental_references

    monkeypatch.setattr(relax_mod, "require", lambda what="": None)
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    for el, sg, n in (("Fe", 229, 1), ("Ni", 225, 1), ("Ti", 194, 2)):
        s, _ = elemental_prototype(el)
        assert len(s) == n and SpacegroupAnalyzer(s).get_space_group_number() == sg
    entries = [Entry("Fe2O3", -6.0), Entry("O", -4.9), Entry("NiI2", -3.0), Entry("Na", -1.3), Entry("NaCl", -3.4)]
    added = elemental_references(entries, PairPotential(), RelaxConfig(steps=3))
    assert sorted(e.formula for e in added) == ["Fe", "Ni"]  # not Cl or I (non-metals), not Na (present)
    assert all(e.source == "prototype" and e.material_id.startswith("prototype-") for e in added)


def test_shipped_hull_is_readable_and_says_what_it_is():
    from crystalformer.defaults import ROOT

    entries = read_entries(ROOT / "hull" / "mp20_mpts52_train_chgnet.csv")
    assert len(entries) > 10_000
    hull = ReferenceHull(entries)
    assert hull.e_above_hull("NaCl", -3.0) is not None and not hull.missing_elements("Fe2O3")
    assert "not the Materials Project hull" in (ROOT / "hull" / "README.md").read_text()


def test_break_ties_prefers_the_likelier_crystal_only_within_the_window():
    from crystalformer.physics.ranking import RankConfig, break_ties

    energy = {"a": -5.00, "b": -4.99, "c": -4.90, "d": None}
    log_p = {"a": -30.0, "b": -10.0, "c": 0.0, "d": 5.0}
    order = ["a", "b", "c", "d"]
    assert break_ties(order, energy.get, log_p.get, 0.0) == order
    assert break_ties(order, energy.get, log_p.get, 0.03) == ["b", "a", "c", "d"]  # c is 0.1 eV/atom higher
    assert break_ties(order, energy.get, log_p.get, 0.2) == ["c", "b", "a", "d"]  # failed relaxations stay last
    with pytest.raises(ValueError, match="tie_window"):
        RankConfig(tie_window=math.nan)


def test_break_ties_sends_non_finite_energies_to_the_tail():
    from crystalformer.physics.ranking import break_ties

    energy = {"a": math.nan, "b": -1.0, "c": -1.01}
    assert break_ties(["a", "b", "c"], energy.get, {"a": 0, "b": -1, "c": -2}.get, 0.05) == ["b", "c", "a"]


@needs_ase
def test_contact_ratio_sees_pairs_beyond_the_covalent_sum_when_asked(monkeypatch):
    from ase import Atoms

    import crystalformer.physics.separate as sep

    monkeypatch.setattr(sep, "require", lambda what="": None)
    cu2 = Atoms("Cu2", positions=[[0, 0, 0], [2.7, 0, 0]], cell=[12, 12, 12], pbc=True)  # 2 r_cov(Cu) = 2.64
    assert sep.contact_ratio(cu2) == math.inf
    assert sep.contact_ratio(cu2, up_to=1.3) == pytest.approx(2.7 / 2.64, rel=1e-3)
    assert sep.push_apart(cu2, scale=1.3) > 0


# ---------------------------------------------------------------------- relaxations in worker processes
class _KillsItsWorker:
    """Unpickling it ends the process: what a crash inside the potential looks like to the pool."""

    def __reduce__(self):
        import os

        return os._exit, (3,)


@needs_chgnet
def test_relax_many_in_workers_equals_one_process_and_survives_a_dead_worker():
    from crystalformer.physics.parallel import WORKER_ERROR, close_pool, relax_many
    from crystalformer.physics.potential import load_potential

    config = RelaxConfig(steps=15)
    structures = [rock_salt(a) for a in (5.3, 5.5, 5.8, 6.0)] + [cscl_type()]
    serial = list(relax_many(structures, load_potential("chgnet"), config))
    pooled_potential = load_potential("chgnet", workers=2)
    try:
        pooled = list(relax_many(structures, pooled_potential, config))
        assert [r.steps for r in pooled] == [r.steps for r in serial]
        np.testing.assert_allclose([r.energy_per_atom for r in pooled], [r.energy_per_atom for r in serial],
                                   atol=1e-5)
        # a structure kills its worker (and with it the pool): it alone fails, named; the others
        # that were in hand are tried again, one at a time, and relaxed; the order is kept
        mixed = [structures[0], _KillsItsWorker()] + structures[1:]
        results = list(relax_many(mixed, pooled_potential, config))
        assert len(results) == len(mixed)
        assert results[1].structure is mixed[1] and not results[1].relaxed
        assert results[1].error.startswith(WORKER_ERROR)
        rest = [results[0]] + results[2:]
        assert all(r.relaxed for r in rest), [r.error for r in rest]
        np.testing.assert_allclose([r.energy_per_atom for r in rest], [r.energy_per_atom for r in serial],
                                   atol=1e-5)
        # stopping early cancels what has not started, and the pool serves the next call
        first = relax_many(structures, pooled_potential, config)
        assert next(first).relaxed
        first.close()
        assert next(relax_many(structures[:2], pooled_potential, config)).relaxed
        # an interrupt (Ctrl-C; SIGTERM becomes SystemExit) ends the workers without waiting for
        # the relaxations under way
        workers = list(pooled_potential._pool._processes.values())
        running = relax_many(structures * 4, pooled_potential, RelaxConfig(steps=60, fmax=1e-6))
        assert next(running).structure is not None
        with pytest.raises(KeyboardInterrupt):
            running.throw(KeyboardInterrupt)
        assert pooled_potential._pool is None
        # the pool's own thread may reap a worker a moment after _terminate's join: poll briefly
        deadline = time.monotonic() + 30
        while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert workers and not any(w.is_alive() for w in workers)
    finally:
        close_pool(pooled_potential)
    assert pooled_potential._pool is None


@needs_chgnet
def test_workers_that_cannot_start_are_one_error_not_a_failure_per_structure():
    from crystalformer.physics.parallel import relax_many
    from crystalformer.physics.potential import CHGNetPotential

    broken = CHGNetPotential(device="no-such-device", workers=2)
    with pytest.raises(RuntimeError, match="could not start the chgnet potential"):
        list(relax_many([rock_salt(), cscl_type()], broken, RelaxConfig(steps=2)))
    assert broken._pool is None


def test_relax_workers_option_is_checked(tmp_path, capsys):
    pytest.importorskip("ase")
    from crystalformer.cli import main

    assert main(["relax", str(tmp_path), "--out", str(tmp_path / "o"), "--relax-workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--relax-workers must be an integer >= 1, got 0" in err[0]
