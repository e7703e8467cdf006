"""The site score network (one receiver per Wyckoff site, neighbours within a cutoff).

Oracles: pymatgen's neighbour search (bond lists), the orbit itself (any atom of an orbit must
give the same free-parameter score: the claim that makes one receiver per site exact), a rotated
Cartesian frame, a fresh neighbour list (a cached, longer list must change nothing), autograd
(the in-place inference path equals the training path), and training (it overfits real crystals).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from crystalformer.crystal import Crystal
from crystalformer.io import read_csv_records, structure_from_cif
from crystalformer.refinement.api import refine_crystals
from crystalformer.refinement.config import RefinerConfig
from crystalformer.refinement.model import Refiner
from crystalformer.refinement.radius import (
    NeighbourCache,
    site_graph,
    site_representatives,
)
from crystalformer.refinement.symmetry import collate

DATA = Path(__file__).parent / "data"
SMALL = {"network": {"kind": "sites", "hidden": 16, "edge_hidden": 8, "n_layers": 2, "n_rbf": 8, "cutoff": 5.0}}


@pytest.fixture(scope="module")
def crystals() -> list[Crystal]:
    return [Crystal.from_structure(structure_from_cif(rec.cif))
            for rec in list(read_csv_records(DATA / "mp20_sample.csv"))[:26]]


@pytest.fixture(scope="module")
def refiner() -> Refiner:
    torch.manual_seed(0)
    model = Refiner(RefinerConfig.from_dict(SMALL)).double().eval()
    with torch.no_grad():  # an untrained last layer is small: make the output clearly non-zero
        model.network.edge_out[2].weight.mul_(30)
    return model


def _sigma(batch, value=0.05):
    return torch.full((batch.num_crystals,), value, dtype=batch.u.dtype)


def test_neighbour_lists_match_pymatgen(crystals):
    from pymatgen.core import Lattice, Structure

    batch = collate(crystals, dtype=torch.float64)
    reps = site_representatives(batch.atom_site, batch.u.shape[0])
    x = batch.frac()
    graph = site_graph(x, batch.lattice, batch.atom_batch, batch.site_batch, reps, 5.0)
    lengths = graph.vector.norm(dim=-1)
    checked = 0
    for k in range(batch.num_crystals):
        atoms = torch.nonzero(batch.atom_batch == k).squeeze(1)
        structure = Structure(Lattice(batch.lattice[k].numpy()), ["H"] * len(atoms), x[atoms].numpy())
        for s in torch.nonzero(batch.site_batch == k).squeeze(1).tolist():
            expected = sorted(n.nn_distance for n in structure.get_neighbors(structure[int(reps[s] - atoms[0])], 5.0))
            mine = sorted(lengths[graph.receiver == s].tolist())
            np.testing.assert_allclose(mine, expected, atol=1e-9)
            checked += len(expected)
    assert checked > 1000  # the fixtures include a skewed triclinic cell and small cells with many images


def test_any_atom_of_an_orbit_gives_the_same_score(crystals, refiner):
    """Rolling every orbit (a different atom first, so a different receiver) changes nothing."""
    batch = collate(crystals[:12], dtype=torch.float64)
    sigma = _sigma(batch)
    with torch.no_grad():
        ref = refiner.network(batch, batch.u, sigma)
        perm, start = [], 0
        for s in range(batch.u.shape[0]):
            m = int((batch.atom_site == s).sum())
            perm += list(range(start + 1, start + m)) + [start]
            start += m
        perm = torch.tensor(perm)
        rolled = replace(batch, rot=batch.rot[perm], trans=batch.trans[perm], pinv=batch.pinv[perm])
        torch.testing.assert_close(refiner.network(rolled, batch.u, sigma), ref, atol=1e-12, rtol=0)
    free = batch.mask.bool()
    assert ref[free].abs().max() > 1e-2 and (ref[~free] == 0).all()  # a real test: non-zero, fixed ones 0


def test_scores_ignore_the_cartesian_frame(crystals, refiner):
    batch = collate(crystals[:8], dtype=torch.float64)
    sigma = _sigma(batch, 0.1)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    with torch.no_grad():
        ref = refiner.network(batch, batch.u, sigma)
        torch.testing.assert_close(refiner.network(replace(batch, lattice=batch.lattice @ q), batch.u, sigma), ref)


def test_cached_lists_change_nothing_and_rebuild_when_atoms_move_far(crystals, refiner):
    batch = collate(crystals[:10], dtype=torch.float64)
    sigma = _sigma(batch)
    cache = NeighbourCache(batch, refiner.config.network.cutoff, skin=0.5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        refiner.network(batch, batch.u, sigma, cache)
        near = (batch.u + 1e-3 * torch.randn(batch.u.shape, generator=g, dtype=torch.float64)) * batch.mask
        torch.testing.assert_close(refiner.network(batch, near, sigma, cache), refiner.network(batch, near, sigma))
        assert cache.builds == 1  # reused: nothing moved 0.25 Å
        far = (batch.u + 0.1 * torch.randn(batch.u.shape, generator=g, dtype=torch.float64)) * batch.mask
        torch.testing.assert_close(refiner.network(batch, far, sigma, cache), refiner.network(batch, far, sigma))
        assert cache.builds == 2
        # one crystal's atoms move far: its bonds alone are listed again, and nothing else changes
        moving = (batch.site_batch == 3).unsqueeze(1)
        assert (batch.mask * moving).any()
        one = torch.where(moving, far + 0.15 * batch.mask, far)
        kept = cache.graph.receiver[batch.site_batch[cache.graph.receiver] != 3]
        torch.testing.assert_close(refiner.network(batch, one, sigma, cache), refiner.network(batch, one, sigma))
        assert cache.builds == 3
        assert torch.equal(cache.graph.receiver[batch.site_batch[cache.graph.receiver] != 3], kept)


def test_inference_path_equals_training_path(crystals, refiner):
    batch = collate(crystals[:6], dtype=torch.float64)
    sigma = _sigma(batch, 0.02)
    with torch.no_grad():
        fast = refiner.network(batch, batch.u, sigma)
    u = batch.u.clone().requires_grad_(True)
    slow = refiner.network(batch, u, sigma)
    torch.testing.assert_close(fast, slow.detach())
    slow.pow(2).sum().backward()  # differentiable in u (sliced score matching needs it)
    assert torch.isfinite(u.grad).all()


def test_losses_backprop_and_atom_scores_refused(crystals):
    model = Refiner(RefinerConfig.from_dict(SMALL))
    batch = collate(crystals[:4])
    for objective in ("dsm", "ssm"):
        loss = model.loss(batch, torch.Generator().manual_seed(0), objective)
        loss.backward()
        assert torch.isfinite(loss)
    with pytest.raises(TypeError, match="free parameters"):
        model.atom_score(batch, batch.u, _sigma(batch))


def test_site_network_overfits_real_crystals(crystals):
    """DSM training on 6 real crystals: the loss falls well below 1 (a zero score) at small sigma."""
    torch.manual_seed(0)
    model = Refiner(RefinerConfig.from_dict({"network": {"kind": "sites", "hidden": 32, "edge_hidden": 32,
                                                         "n_layers": 2, "n_rbf": 12}}))
    free = [c for c in crystals if any(s.params for s in c.sites) and c.num_atoms <= 20][:6]
    batch = collate(free)

    def mean_loss(sigma):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return sum(model.loss(batch, g, "dsm", sigma=sigma).item() for _ in range(8)) / 8

    before = [mean_loss(s) for s in (0.01, 0.03)]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = model.loss(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = [mean_loss(s) for s in (0.01, 0.03)]
    assert min(before) > 0.8 and max(after) < 0.5, (before, after)


def test_refinement_keeps_symmetry_and_does_not_depend_on_batching(crystals):
    model = Refiner(RefinerConfig.from_dict(SMALL)).eval()
    chosen = crystals[:9]
    ref = refine_crystals(model, chosen)
    for a, b in zip(ref, chosen):
        assert (a.space_group, a.lattice, [(s.letter, s.element) for s in a.sites]) == \
               (b.space_group, b.lattice, [(s.letter, s.element) for s in b.sites])
    moved = sum(p != q for a, b in zip(ref, chosen) for s, t in zip(a.sites, b.sites) for p, q in zip(s.params, t.params))
    assert moved > 0
    perm = [5, 2, 7, 0, 3, 6, 1, 4, 8]
    shuffled = refine_crystals(model, [chosen[k] for k in perm], batch_size=2)
    for k, c in zip(perm, shuffled):
        for s, t in zip(c.sites, ref[k].sites):
            d = np.abs(np.subtract(s.params, t.params)) % 1.0
            assert np.all(np.minimum(d, 1 - d) < 1e-4)


def test_config_kinds():
    assert RefinerConfig.from_dict({}).network.kind == "pairs"  # refiners saved before "sites" existed
    assert RefinerConfig.from_name("sites").network.kind == "sites"
    with pytest.raises(ValueError, match="kind"):
        RefinerConfig.from_dict({"network": {"kind": "graph"}})
    with pytest.raises(ValueError, match="cutoff"):
        RefinerConfig.from_dict({"network": {"kind": "sites", "cutoff": 0.0}})


def test_bond_classes_of_rock_salt_are_its_shells():
    """Na in rock salt (a = 5.64 Å): within 5 Å, 6 Cl at a/2, 12 Na at a/sqrt(2), 8 Cl at a sqrt(3)/2."""
    from crystalformer.crystal import Site
    from crystalformer.refinement.radius import _bond_classes

    a = 5.64
    batch = collate([Crystal(225, (Site("a", "Na", ()), Site("b", "Cl", ())), (a, a, a, 90.0, 90.0, 90.0))],
                    dtype=torch.float64)
    reps = site_representatives(batch.atom_site, 2)
    graph = site_graph(batch.frac(), batch.lattice, batch.atom_batch, batch.site_batch, reps, 5.0)
    na = graph.receiver == 0
    length = graph.vector[na].norm(dim=-1, keepdim=True)
    first, inverse, count = _bond_classes(graph.receiver[na], batch.atom_site[graph.sender[na]], length, 2)
    shells = sorted((round(float(length[f]), 4), int(batch.atom_site[graph.sender[na]][f]), int(c))
                    for f, c in zip(first, count))
    assert shells == [(round(a / 2, 4), 1, 6), (round(a / 2 ** 0.5, 4), 0, 12), (round(a * 3 ** 0.5 / 2, 4), 1, 8)]
    assert torch.equal(inverse[first], torch.arange(len(first)))


def test_shipped_refiner_is_the_site_network_and_repairs_perturbed_crystals(crystals):
    """Real mp_20 crystals with their free parameters shaken (sigma 0.05): refining brings the atoms
    back towards the truth (mean Cartesian distance of every atom to its true place, nearest image)."""
    from crystalformer.defaults import default_dir
    from crystalformer.refinement.io import load_refiner
    from crystalformer.refinement.wrapped import wrap

    shipped = load_refiner(default_dir("refiner"))
    assert shipped.config.network.kind == "sites"
    truth = [c for c in crystals if any(s.params for s in c.sites)]
    batch = collate(truth, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    noisy_u = wrap(batch.u + 0.05 * torch.randn(batch.u.shape, generator=g, dtype=torch.float64)) * batch.mask
    from crystalformer.refinement.symmetry import crystals_from_u

    noisy = crystals_from_u(truth, noisy_u)
    refined = refine_crystals(shipped, noisy)

    def distance(found) -> float:
        x = collate(found, dtype=torch.float64).frac() - batch.frac()
        cart = torch.einsum("na,nab->nb", x - torch.round(x), batch.lattice[batch.atom_batch])
        return float(cart.norm(dim=-1).mean())

    before, after = distance(noisy), distance(refined)
    assert after < 0.75 * before, (before, after)  # measured 0.47 -> 0.28 Å; an untrained network stays near 1x


def test_shipped_refiners_resolve_by_name(tmp_path, crystals, capsys):
    from crystalformer.cli import main
    from crystalformer.defaults import default_dir, resolve_refiner, shipped_refiners

    names = shipped_refiners()
    assert names["sites"] == default_dir("refiner") and "pairs" in names
    assert resolve_refiner(None) == resolve_refiner("default") == names["sites"]
    assert resolve_refiner(names["pairs"]) == names["pairs"]  # a folder is itself
    with pytest.raises(FileNotFoundError, match="shipped: sites, pairs"):
        resolve_refiner("no_such_refiner")
    free = [c for c in crystals if any(s.params for s in c.sites)][:2]
    assert refine_crystals("pairs", free) == refine_crystals(names["pairs"], free)
    out = tmp_path / "s"
    assert main(["sample", "--n", "3", "--out", str(out), "--quiet", "--refine", "pairs"]) == 0
    import json

    assert json.loads((out / "samples.json").read_text())["meta"]["refiner"] == "pairs"
    assert main(["refine", "--model", "pairs", "--input", str(out), "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "samples.json").read_text())["meta"]["model"] == str(names["pairs"])
    capsys.readouterr()
    assert main(["sample", "--n", "3", "--out", str(tmp_path / "t"), "--quiet", "--refine", "no_such_refiner"]) != 0
    assert "not a shipped refiner (sites, pairs)" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
