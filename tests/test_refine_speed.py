"""Dense pair blocks and the vectorized refiner against brute-force oracles and the previous code.

- blocks hold every ordered pair (i, j), i != j, of every crystal exactly once (padding and the
  diagonal hold none), checked against a per-crystal enumeration;
- the pair geometry of the blocks (fractional difference, minimum image, length, Fourier and
  radial features) equals a naive per-pair loop on real crystals: a skewed triclinic cell, small
  cells where an atom has many periodic images within 5 Å, and larger ones;
- the dense network equals the edge-list network (float64, to 1e-12);
- ``refine_crystals`` gives what the previous implementation gave (REFERENCE below, computed with
  the edge-list code before the change), up to float noise. The integration amplifies rounding:
  the previous code itself moved these parameters by up to 1.6e-5 when only the batch size
  changed, and decoded crystals by up to 7e-4 between float32 and float64, where pairs sit exactly
  half a cell apart (screw axes, glides, centring), since d - round(d) flips sign at 1/2.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crystalformer.crystal import Crystal, Site
from crystalformer.io import read_csv_records, structure_from_cif
from crystalformer.refinement.api import refine_crystals
from crystalformer.refinement.blocks import crystal_blocks, group_sizes
from crystalformer.refinement.config import RefinerConfig
from crystalformer.refinement.dense import block_geometry
from crystalformer.refinement.io import load_refiner
from crystalformer.refinement.model import Refiner
from crystalformer.refinement.network import pair_index
from crystalformer.refinement.symmetry import collate

DATA = Path(__file__).parent / "data"
ROWS = (19, 7, 1, 14, 4, 25)  # of mp20_sample.csv: P-1 (skewed), P3m1 (3 atoms), Pmm2 (56), C2/c, Fm-3m (fixed), Pmn2_1
TOLERANCE = 1e-4  # fractional; float32 noise of the ODE (see the module docstring)

# Free parameters (crystal, site, parameter order) refined by the edge-list implementation before
# the dense one: refine_crystals(shipped refiner, fixture_crystals()) with defaults ("ode") and
# with sampler="pc", n_steps=4, seed=3, batch_size=5.
REFERENCE = {
    "ode": [
        0.0694522411, 0.9183815122, 0.7312043905, 0.1498072147, 0.7420365214, 0.1993098557, 0.157329604,
        0.3047962487, 0.47936818, 0.2932194173, 0.4912539124, 0.6953739524, 0.3236940205, 0.0889667049,
        0.9203677773, 0.3956094086, 0.3004865944, 0.1449497044, 0.4392391741, 0.8883804083, 0.3759292066,
        0.2098737955, 0.2138543874, 0.7001721859, 0.290324986, 0.0178709514, 0.1691523641, 0.998565495,
        0.2149622887, 0.760430336, 0.7465632558, 0.0806615278, 0.3741147816, 0.0730055794, 0.0817698985,
        0.3011814952, 0.6280894279, 0.076432772, 0.0759485886, 0.6086640358, 0.3751282096, 0.8756643534,
        0.1055505276, 0.374409765, 0.5987131, 0.1107857972, 0.1254155338, 0.0986698866, 0.3940558434, 0.1743412763,
        0.4639778435, 0.3592764139, 0.2203811109, 0.001845984, 0.4479758739, 0.7025279999, 0.0502539687,
        0.2990286946, 0.6935574412, 0.0094524873, 0.1326972246, 0.226322487, 0.237349391, 0.5616174936,
        0.4792268872, 0.9307206869, 0.9321504831, 0.0407101512, 0.4780772328, 0.9948827624, 0.9958440065,
        0.9916292429, 0.4605460763, 0.5423588157, 0.4936287403],
    "pc": [
        0.1297250539, 0.9563314319, 0.7533723116, 0.0653153285, 0.7127261758, 0.178798914, 0.1664501876,
        0.1509544551, 0.4485185146, 0.307897985, 0.5707303882, 0.6684136391, 0.3202676773, 0.1366458237,
        0.9537109733, 0.375289768, 0.3883025646, 0.1986019015, 0.4051114619, 0.8039672971, 0.3605192602,
        0.2560757995, 0.2774669826, 0.6752417684, 0.2605851889, 0.1348812729, 0.1943801343, 0.0322111994,
        0.2575248778, 0.7937982082, 0.7081047297, 0.0861036479, 0.3338368237, 0.0637365431, 0.0563950129,
        0.3383589089, 0.6303619742, 0.0320110247, 0.9840290546, 0.6654182673, 0.279412359, 0.8728858829,
        0.0675526634, 0.3990933299, 0.6435471773, 0.8869715929, 0.0207063314, 0.0794066265, 0.3600338995,
        0.2656312287, 0.4426010847, 0.3599924445, 0.2854089439, 0.9501133561, 0.4594618082, 0.7303714156,
        0.0353619158, 0.398276329, 0.7035324574, 0.0556305572, 0.0327992961, 0.2898664773, 0.0866838172,
        0.7258093953, 0.3129553497, 0.9498280287, 0.8587517142, 0.0461880602, 0.3957252502, 0.9516350031,
        0.0210499763, 0.0797327906, 0.4601620734, 0.4764758945, 0.5413429737],}


def fixture_crystals() -> list[Crystal]:
    """Real crystals of several cell shapes, and two hand-made triclinic cells (skewed; tiny)."""
    records = list(read_csv_records(DATA / "mp20_sample.csv"))
    out = [Crystal.from_structure(structure_from_cif(records[k].cif)) for k in ROWS]
    out.append(Crystal(1, (Site("a", "Si", (0.1, 0.2, 0.3)), Site("a", "O", (0.6, 0.5, 0.9)),
                           Site("a", "O", (0.95, 0.05, 0.45))), (3.0, 3.4, 5.0, 62.0, 71.0, 105.0)))
    out.append(Crystal(1, (Site("a", "Cu", (0.0, 0.0, 0.0)), Site("a", "Cu", (0.45, 0.55, 0.5))),
                       (2.6, 2.8, 3.1, 80.0, 95.0, 100.0)))
    return out


@pytest.fixture(scope="module")
def crystals() -> list[Crystal]:
    return fixture_crystals()


@pytest.fixture(scope="module")
def shipped() -> Refiner:
    """The all-pairs refiner (the default until the site network replaced it; shipped as ``pairs``)."""
    from crystalformer.defaults import shipped_refiners

    return load_refiner(shipped_refiners()["pairs"])


def _flat_params(crystals: list[Crystal]) -> np.ndarray:
    return np.array([p for c in crystals for s in c.sites for p in s.params])


def _torus_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a - b) % 1.0
    return np.minimum(d, 1.0 - d)


def _block_pairs(blocks) -> list[tuple[int, int]]:
    """Ordered pairs (receiver, sender) held by the blocks: valid off-diagonal cells."""
    out = []
    for block in blocks.blocks:
        for c in range(block.atoms.shape[0]):
            for i, j in itertools.permutations(range(block.size), 2):
                if block.valid[c, i] and block.valid[c, j]:
                    out.append((int(block.atoms[c, i]), int(block.atoms[c, j])))
    return out


@pytest.mark.parametrize("max_slots", [16, 64, 1 << 13])
def test_blocks_hold_every_pair_once(max_slots):
    sizes = [3, 1, 0, 7, 2, 7, 5, 12, 4]  # crystal 2 has no atoms, crystal 1 a single one
    atom_batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    blocks = crystal_blocks(atom_batch, len(sizes), max_slots=max_slots)
    expected = sorted(zip(*(t.tolist() for t in pair_index(atom_batch))))
    assert sorted(_block_pairs(blocks)) == expected  # each once: a repeat would show up in the sorted list
    crystals = sorted(c for block in blocks.blocks for c in block.crystals.tolist())
    assert crystals == [b for b, n in enumerate(sizes) if n]
    real = torch.cat([block.real for block in blocks.blocks]).sort().values
    assert torch.equal(real, torch.arange(len(atom_batch)))


def test_group_sizes_bounds():
    counts = [4, 24, 24, 5, 100, 24, 6, 48, 12, 13, 4]
    groups = group_sizes(counts, max_slots=2048, max_waste=1.3)
    assert sorted(b for g in groups for b in g) == list(range(len(counts)))
    for g in groups:
        n = max(counts[b] for b in g)
        padded, real = len(g) * n * n, sum(counts[b] ** 2 for b in g)
        assert len(g) == 1 or (padded <= 2048 and padded <= 1.3 * real)


def _oracle_geometry(crystal: Crystal, freqs: np.ndarray, centres: np.ndarray, width: float):
    """Naive per-pair loop: {(i, j): (minimum-image d (3,), fourier (6F,), rbf (R,))} for i < j.

    The network's minimum image is the fractional one, d - round(d) per axis.
    """
    structure = crystal.to_structure()
    x = collate([crystal], dtype=torch.float64).frac().numpy()  # the refiner's atom order
    lattice = structure.lattice.matrix
    out = {}
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            d = x[j] - x[i]
            dmin = d - np.round(d)
            length = float(np.linalg.norm(dmin @ lattice))
            ang = 2 * math.pi * d[:, None] * freqs  # (3, F)
            fourier = np.concatenate([np.sin(ang), np.cos(ang)], -1).reshape(-1)
            rbf = np.exp(-(((length - centres) / width) ** 2))
            out[i, j] = (dmin, fourier, rbf)
    return out


def _nearest_image(dmin: np.ndarray, lattice: np.ndarray) -> float:
    """Shortest Cartesian length over periodic images k of a fractional difference (|k| <= 2)."""
    images = itertools.product(range(-2, 3), repeat=3)
    return min(float(np.linalg.norm((dmin + np.array(k)) @ lattice)) for k in images)


def test_block_geometry_matches_per_pair_oracle(crystals, shipped):
    net = shipped.network.double()
    try:
        batch = collate(crystals, dtype=torch.float64)
        blocks = crystal_blocks(batch.atom_batch, batch.num_crystals, max_slots=400, max_waste=4.0)
        assert len(blocks.blocks) > 2 and any(not bool(b.valid.all()) for b in blocks.blocks)
        frac = batch.frac()
        cfg = net.config
        freqs, centres = net.freqs.double().numpy(), net.rbf_centres.double().numpy()
        width = cfg.rbf_max / (cfg.n_rbf - 1)
        starts = torch.cumsum(batch.num_atoms, 0) - batch.num_atoms
        seen = 0
        for block in blocks.blocks:
            geo = block_geometry(net, frac[block.atoms], batch.lattice[block.crystals], block.valid, block)
            n = block.size
            iu, ju = block.upper // n, block.upper % n
            for c, b in enumerate(block.crystals.tolist()):
                oracle = _oracle_geometry(crystals[b], freqs, centres, width)
                for t, (i, j) in enumerate(zip(iu.tolist(), ju.tolist())):
                    if not (block.valid[c, i] and block.valid[c, j]):
                        assert not bool(geo.dmin[c, i, j].any()) and not bool(geo.dmin[c, j, i].any())
                        continue
                    assert int(block.atoms[c, i]) - starts[b] == i  # slots keep the crystal's atom order
                    dmin, fourier, rbf = oracle[i, j]
                    np.testing.assert_allclose(geo.dmin[c, i, j].numpy(), dmin, atol=1e-12)
                    np.testing.assert_allclose(geo.dmin[c, j, i].numpy(), -dmin, atol=1e-12)
                    sin = geo.odd[c, t].numpy().reshape(3, -1)
                    cos, radial = geo.even[c, t, : sin.size].numpy().reshape(3, -1), geo.even[c, t, sin.size:].numpy()
                    np.testing.assert_allclose(np.concatenate([sin, cos], -1).reshape(-1), fourier, atol=1e-10)
                    np.testing.assert_allclose(radial, rbf, atol=1e-10)
                    seen += 1
                for i in range(n):
                    assert not bool(geo.dmin[c, i, i].any())
        assert seen == sum(len(_oracle_geometry(c, freqs, centres, width)) for c in crystals)
    finally:
        net.float()


def test_oracle_cells_cover_skewed_and_small_cells(crystals):
    """The fixture has what the oracle is meant to check: a skewed cell whose fractional minimum
    image is not the nearest one for some pairs, and a small cell with many images within 5 Å."""
    skewed = crystals[6].to_structure()  # alpha, beta, gamma = 62, 71, 105 degrees
    x, lattice = skewed.frac_coords, skewed.lattice.matrix
    gaps = [np.linalg.norm((d - np.round(d)) @ lattice) - _nearest_image(d - np.round(d), lattice)
            for d in (x[j] - x[i] for i, j in itertools.permutations(range(len(x)), 2))]
    assert max(gaps) > 0.5  # Å: the network's length feature is that of the fractional minimum image
    small = crystals[7].to_structure()  # 2.6 x 2.8 x 3.1 Å
    shifts = itertools.product(range(-3, 4), repeat=3)
    images = sum(np.linalg.norm(np.array(k) @ small.lattice.matrix) < 5.0 for k in shifts)
    assert images > 10  # an atom's own images within 5 Å (the network sees one image per pair)


@pytest.mark.parametrize("preset", [None, "tiny"])
def test_dense_network_equals_edge_list(crystals, shipped, preset):
    torch.manual_seed(0)
    refiner = shipped if preset is None else Refiner(RefinerConfig.from_name(preset))
    net = refiner.network.double().eval()
    single = Crystal(221, (Site("a", "Cu", ()),), (3.6, 3.6, 3.6, 90.0, 90.0, 90.0))  # one atom: no pairs
    try:
        batch = collate([*crystals, single], dtype=torch.float64)
        sigma = torch.logspace(-2.3, -0.4, batch.num_crystals, dtype=torch.float64)
        frac = batch.frac()
        with torch.no_grad():
            ref = net(frac, sigma, batch.lattice, batch.species, batch.atom_batch, pair_index(batch.atom_batch))
            for max_slots, max_waste in ((100, 4.0), (1 << 13, 1.3)):  # padded small blocks; the default
                blocks = crystal_blocks(batch.atom_batch, batch.num_crystals, max_slots, max_waste)
                new = net(frac, sigma, batch.lattice, batch.species, batch.atom_batch, blocks)
                torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-12)
    finally:
        net.float()


def test_dense_blocks_refuse_gradients(crystals, shipped):
    batch = collate(crystals[:2])
    blocks = crystal_blocks(batch.atom_batch, batch.num_crystals)
    with pytest.raises(RuntimeError, match="no_grad"):
        shipped.network(batch.frac(), torch.full((2,), 0.1), batch.lattice, batch.species, batch.atom_batch, blocks)


@pytest.mark.parametrize("config", ["ode", "pc"])
def test_refine_equals_previous_implementation(crystals, shipped, config):
    kwargs = {} if config == "ode" else {"sampler": "pc", "n_steps": 4, "seed": 3, "batch_size": 5}
    refined = refine_crystals(shipped, crystals, **kwargs)
    assert [(c.space_group, c.lattice, [(s.letter, s.element) for s in c.sites]) for c in refined] == \
           [(c.space_group, c.lattice, [(s.letter, s.element) for s in c.sites]) for c in crystals]
    gap = _torus_distance(_flat_params(refined), np.array(REFERENCE[config]))
    assert gap.max() < TOLERANCE, gap.max()
    assert refined[4] == crystals[4]  # no free parameters: unchanged


def test_refine_ode_independent_of_order_and_batch_size(crystals, shipped):
    ref = _flat_params(refine_crystals(shipped, crystals))
    perm = [5, 2, 7, 0, 3, 6, 1, 4]
    shuffled = refine_crystals(shipped, [crystals[k] for k in perm], batch_size=3)
    back = [None] * len(perm)
    for k, c in zip(perm, shuffled):
        back[k] = c
    assert _torus_distance(_flat_params(back), ref).max() < TOLERANCE
