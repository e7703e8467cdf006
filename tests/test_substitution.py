"""Element infill against brute-force enumeration of p(X) on a tiny random model."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch

from crystalformer import Crystal, CrystalTokenizer, ModelConfig
from crystalformer.model import CrystalFormer
from crystalformer.sampling.substitution import infill


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = CrystalFormer(ModelConfig.from_name("tiny"), CrystalTokenizer()).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def template(fixture_crystals):
    """A crystal with at least three sites, two of them sharing a Wyckoff letter."""
    for _, c in fixture_crystals:
        letters = [s.letter for s in c.sites]
        if len(c.sites) >= 3 and len(set(letters)) < len(letters) and len(c.sites) <= 6:
            return c
    raise AssertionError("no suitable fixture crystal")


def _oracle_log_p(model, template: Crystal, assignment: dict[int, str]) -> float:
    """Independent route: substitute in the pymatgen structure and re-derive the canonical crystal."""
    structure = template.to_structure()
    labels = _site_of_atom(template)
    for atom, site in enumerate(labels):
        if site in assignment:
            structure.replace(atom, assignment[site], coords=structure[atom].frac_coords)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crystal = Crystal.from_structure(structure)
    return float(model.log_prob([crystal]).total[0])


def _site_of_atom(template: Crystal) -> list[int]:
    """Template site index of every atom of ``template.to_structure()`` (orbits in site order)."""
    from crystalformer import space_group

    sg = space_group(template.space_group)
    out = []
    for i, site in enumerate(template.sites):
        out += [i] * sg.position(site.letter).multiplicity
    return out


def test_single_site_conditional_equals_brute_force(model, template):
    structure_atoms = len(template.to_structure())
    assert len(_site_of_atom(template)) == structure_atoms
    cands = ["Li", "Na", "K", "Mg", "Ca"]
    result = infill(model, template, [0], allowed=cands, n=10)
    assert result.method == "exact" and len(result.candidates) == len(cands)
    oracle = np.array([_oracle_log_p(model, template, {0: el}) for el in cands])
    expected = np.exp(oracle - oracle.max())
    expected /= expected.sum()
    got = {c.assignment[0]: c.probability for c in result.candidates}
    assert np.allclose([got[el] for el in cands], expected, atol=1e-4)
    assert [c.probability for c in result.candidates] == sorted(got.values(), reverse=True)


def test_gibbs_matches_exact_joint_enumeration(model, template):
    allowed = {0: ["Li", "Na", "K"], 1: ["O", "S", "Se"], 2: ["Fe", "Co"]}
    exact = infill(model, template, [0, 1, 2], allowed=allowed, n=100)
    gibbs = infill(model, template, [0, 1, 2], allowed=allowed, n=100, exact_limit=0, sweeps=400, burn_in=20,
                   chains=16, seed=1)
    assert exact.method == "exact" and gibbs.method == "gibbs"
    key = lambda c: tuple(sorted(c.assignment.items()))  # noqa: E731
    p_exact = Counter({key(c): c.probability for c in exact.candidates})
    p_gibbs = Counter({key(c): c.probability for c in gibbs.candidates})
    tv = 0.5 * sum(abs(p_exact[k] - p_gibbs[k]) for k in set(p_exact) | set(p_gibbs))
    assert tv < 0.06, tv  # 6,400 correlated draws over 18 states
    for c in gibbs.candidates:  # reported log p is the exact joint score
        assert c.log_p == pytest.approx(_oracle_log_p(model, template, c.assignment), abs=1e-3)
    again = infill(model, template, [0, 1, 2], allowed=allowed, n=100, exact_limit=0, sweeps=400, burn_in=20,
                   chains=16, seed=1)
    assert [(key(c), c.probability) for c in again.candidates] == [(key(c), c.probability) for c in gibbs.candidates]


def test_ties_and_recanonicalization(model, template):
    result = infill(model, template, [0, 1], allowed=["Na", "K", "Cl"], ties={1: 0}, n=10)
    assert len(result.candidates) == 3
    for c in result.candidates:
        assert c.assignment[0] == c.assignment[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = Crystal.from_structure(c.crystal.to_structure())
        # the sites came back in canonical order: the same crystal as a fresh symmetry analysis gives,
        # unless the substitution raised the symmetry
        if again.space_group == c.crystal.space_group:
            assert [s.element for s in again.sites] == [s.element for s in c.crystal.sites]
    pinned = infill(model, template, [0], ties={0: 2}, n=5)
    assert [c.assignment[0] for c in pinned.candidates] == [template.sites[2].element]


def test_element_mask_and_errors(model, template):
    element = template.sites[0].element
    result = infill(model, template, element, allowed=["Na", "K"])
    masked = {i for i, s in enumerate(template.sites) if s.element == element}
    assert all(set(c.assignment) == masked for c in result.candidates)
    with pytest.raises(ValueError, match="no site of the template holds 'Og'"):
        infill(model, template, "Og")
    with pytest.raises(ValueError, match="out of range"):
        infill(model, template, [99])
    with pytest.raises(ValueError, match="unknown element"):
        infill(model, template, [0], allowed=["Na", "Qq"])
    with pytest.raises(ValueError, match="empty"):
        infill(model, template, [0], allowed={0: []})
    with pytest.raises(ValueError, match="not masked"):
        infill(model, template, [0], ties={1: 0})


def test_cli_infill_writes_ranked_folder(model, template, tmp_path, capsys):
    import json

    from crystalformer.cli import main

    model.save(tmp_path / "m")
    cif = tmp_path / "t.cif"
    template.to_structure().to(filename=str(cif))
    out = tmp_path / "o"
    code = main(["infill", "--model", str(tmp_path / "m"), "--template", str(cif), "--sites", "0",
                 "--allow", "Li,Na,K", "--n", "3", "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "samples.json").read_text())["samples"]
    assert [r["rank"] for r in rows] == [0, 1, 2]
    assert sum(r["probability"] for r in rows) == pytest.approx(1.0, abs=1e-6)
    assert "exact" in capsys.readouterr().out
    assert main(["infill", "--model", str(tmp_path / "m"), "--template", str(cif), "--out", str(tmp_path / "x")]) == 2
