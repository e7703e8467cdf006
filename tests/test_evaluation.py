"""Evaluation metrics on hand-made cases with known answers, and against direct pymatgen loops."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Lattice, Structure

from crystalformer.evaluation.analysis import Entry
from crystalformer.evaluation.coverage import (
    composition_fingerprint,
    coverage,
    cutoffs_for,
    normalize_composition_fps,
    structure_fingerprint,
)
from crystalformer.evaluation.csp import csp_matcher, match_rate_and_rmse, rms_distance
from crystalformer.evaluation.distributions import property_wdist
from crystalformer.evaluation.runner import (
    analyze_reference,
    evaluate_csp,
    evaluate_generation,
)
from crystalformer.evaluation.symmetry_stats import (
    chi2_distance,
    space_group_histogram,
    space_group_stats,
)
from crystalformer.evaluation.uniqueness import novelty, uniqueness
from crystalformer.validity import smact_validity, structure_validity

DATA = Path(__file__).parent / "data"


def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def fixture_structures(name: str, n: int) -> list[tuple[str, Structure]]:
    df = pd.read_csv(DATA / name).head(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [(str(m), Structure.from_str(c, fmt="cif")) for m, c in zip(df["material_id"], df["cif"])]


def disguised(s: Structure, seed: int, noise: float = 0.02) -> Structure:
    """The same crystal rotated, with its sites permuted and its Cartesian positions jittered by ``noise`` Å."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.linalg.det(q))  # proper rotation
    perm = rng.permutation(len(s))
    lattice = Lattice(s.lattice.matrix @ rot.T)
    cart = (s.cart_coords @ rot.T)[perm] + rng.normal(scale=noise, size=(len(s), 3))
    return Structure(lattice, [s.species[i] for i in perm], cart, coords_are_cartesian=True)


# ------------------------------------------------------------------ validity
def test_structure_validity_known_cases():
    assert structure_validity(nacl())
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])  # 0.2 Å apart
    assert not structure_validity(overlapping)
    assert not structure_validity(Structure(Lattice.cubic(0.3), ["C"], [[0, 0, 0]]))  # 0.027 Å^3
    # minimum image: 0.1 and 0.95 along a 4 Å axis are 0.6 Å apart
    assert structure_validity(Structure(Lattice.cubic(4.0), ["C", "C"], [[0.1, 0, 0], [0.95, 0, 0]]))


def test_smact_validity_known_cases():
    assert smact_validity(nacl())
    assert smact_validity(Composition("MgO"))
    assert not smact_validity(Composition("Al2O"))  # a non-charge-balanced oxide
    assert not smact_validity(Composition("Li3O"))
    assert smact_validity(Composition("C8"))  # one element
    assert smact_validity(Composition("CuZn"))  # all metals: an alloy passes
    assert not smact_validity(Composition("CuZn"), include_alloys=False)
    assert smact_validity(Composition("Na4Cl4")) == smact_validity(Composition("NaCl"))  # gcd-reduced


def test_smact_validity_rejects_fractional_composition():
    with pytest.raises(ValueError, match="non-integer"):
        smact_validity(Composition("Na0.5Cl0.5"))


# ------------------------------------------------------------------ matching
def test_structure_matches_its_disguised_copy():
    (_, s), = fixture_structures("mp20_sample.csv", 1)
    copy = disguised(s, seed=1)
    assert rms_distance(copy, s) is not None and rms_distance(copy, s) < 0.1
    assert uniqueness([s, copy]) == 0.5
    assert novelty([copy], [s]) == 0.0
    assert novelty([nacl()], [s]) == 1.0


def test_uniqueness_of_distinct_structures():
    structs = [s for _, s in fixture_structures("mp20_sample.csv", 4)]
    assert uniqueness(structs) == 1.0
    assert uniqueness(structs + structs[:2]) == pytest.approx(4 / 6)


# ------------------------------------------------------------------ CSP
def test_csp_agrees_with_direct_structure_matcher_loop():
    targets = fixture_structures("mp20_sample.csv", 8)
    preds = []
    for i, (mid, s) in enumerate(targets):
        # rank 0: a disguised copy for even rows, a wrong crystal for odd rows; rank 1: always a disguised copy
        preds.append(Entry(f"{mid}_0", (disguised(s, i) if i % 2 == 0 else nacl()).to(fmt="cif"), None, mid, 0))
        preds.append(Entry(f"{mid}_1", disguised(s, 100 + i, 0.05).to(fmt="cif"), None, mid, 1))
    t_entries = [Entry(mid, s.to(fmt="cif"), None, mid) for mid, s in targets]
    r = evaluate_csp(preds, t_entries, ks=[1, 2], progress=False)

    matcher = csp_matcher()
    gate = {mid: structure_validity(s) and smact_validity(s) for mid, s in targets}
    direct = {1: [], 2: []}
    for i, (mid, s) in enumerate(targets):
        ranks = [Structure.from_str(p.cif, fmt="cif") for p in preds[2 * i:2 * i + 2]]
        rms = [matcher.get_rms_dist(p, s) if gate[mid] and structure_validity(p) and smact_validity(p) else None
               for p in ranks]
        rms = [None if x is None else x[0] for x in rms]
        for k in (1, 2):
            found = [x for x in rms[:k] if x is not None]
            if found:
                direct[k].append(min(found))
    for k in (1, 2):
        assert r["metrics"][f"match_rate@{k}"] == pytest.approx(len(direct[k]) / len(targets))
        assert r["metrics"][f"rmse@{k}"] == pytest.approx(np.mean(direct[k]), abs=1e-6)
    assert r["metrics"]["n_targets_valid"] == sum(gate.values())
    assert r["metrics"]["match_rate@2"] >= r["metrics"]["match_rate@1"] > 0


def test_match_rate_counts_all_targets():
    out = match_rate_and_rmse([[0.1, None], [None, 0.3], [None, None], []], ks=(1, 2))
    assert out[1] == {"match_rate": 0.25, "rmse": pytest.approx(0.1), "n_matched": 1, "n_targets": 4}
    assert out[2]["match_rate"] == 0.5 and out[2]["rmse"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="k must be"):
        match_rate_and_rmse([[0.1]], ks=(0,))


def test_csp_refuses_unrelated_predictions():
    t = [Entry("a", nacl().to(fmt="cif"), None, "a")]
    p = [Entry("b_0", nacl().to(fmt="cif"), None, "b", 0)]
    with pytest.raises(ValueError, match="no prediction matches"):
        evaluate_csp(p, t, progress=False)


# ------------------------------------------------------------------ coverage
def test_coverage_of_a_set_against_itself_is_complete():
    structs = [s for _, s in fixture_structures("perov5_sample.csv", 4)]
    sfp = [structure_fingerprint(s) for s in structs]
    cfp = [composition_fingerprint(s) for s in structs]
    assert sfp[0].shape == (61,) and cfp[0].shape == (132,)
    r = coverage(sfp, cfp, sfp, cfp, *cutoffs_for("perov_5"))
    assert r["cov_recall"] == 1.0 and r["cov_precision"] == 1.0 and r["amsd_recall"] == 0.0


def test_coverage_known_distances_and_failed_samples():
    ref_s, ref_c = [np.zeros(2), np.array([1.0, 0])], [np.zeros(132), np.zeros(132)]
    gen_s = [np.array([0.1, 0]), None, np.array([5.0, 0])]
    gen_c = [np.zeros(132), None, np.zeros(132)]
    r = coverage(gen_s, gen_c, ref_s, ref_c, struct_cutoff=0.2, comp_cutoff=1.0)
    assert r["cov_precision"] == pytest.approx(1 / 3)  # the failed sample still counts in the denominator
    assert r["cov_recall"] == pytest.approx(1 / 2)  # (1, 0) is 0.9 from the nearest sample
    assert r["amsd_recall"] == pytest.approx((0.1 + 0.9) / 2)


def test_composition_scaler_matches_cdvae_definition():
    from crystalformer.evaluation._comp_scaler import MEANS, STDS

    x = np.array(MEANS) + np.array(STDS)
    x[3] = np.nan
    z = normalize_composition_fps([x])[0]
    assert z[3] == 0.0 and np.allclose(np.delete(z, 3), 1.0)


def test_cutoffs_are_the_published_ones():
    assert cutoffs_for("mp_20") == (0.4, 10.0) and cutoffs_for("MP-20") == (0.4, 10.0)
    assert cutoffs_for("perov_5") == cutoffs_for("carbon_24") == (0.2, 4.0)
    with pytest.raises(ValueError, match="no coverage cutoffs"):
        cutoffs_for("qm9")


# ------------------------------------------------------------------ distributions and space groups
def test_property_wdist_identical_and_shifted():
    r = property_wdist([1.0, 2.0, 3.0], [1, 2, 3], [1.0, 2.0, 3.0], [1, 2, 3])
    assert r["wdist_density"] == 0.0 and r["wdist_num_elems"] == 0.0 and r["n_wdist_samples"] == 3
    r = property_wdist([2.0, 3.0, 4.0], [2, 3, 4], [1.0, 2.0, 3.0], [1, 2, 3])
    assert r["wdist_density"] == pytest.approx(1.0) and r["wdist_num_elems"] == pytest.approx(1.0)
    a = property_wdist([1.0, 2.0, 3.0, 4.0], [1, 2, 3, 4], [0.0], [0], n_samples=2, seed=3)
    b = property_wdist([1.0, 2.0, 3.0, 4.0], [1, 2, 3, 4], [0.0], [0], n_samples=2, seed=3)
    assert a == b and a["n_wdist_samples"] == 2  # seeded subset, same for both properties
    assert a["wdist_density"] == pytest.approx(a["wdist_num_elems"])


def test_space_group_stats():
    assert chi2_distance(space_group_histogram([1, 225]), space_group_histogram([225, 1])) == 0.0
    assert chi2_distance(space_group_histogram([1, 1]), space_group_histogram([225])) == pytest.approx(1.0)
    r = space_group_stats([1, 1, 2, 225], [225, 2])
    assert r["frac_p1"] == 0.5 and r["ref_frac_p1"] == 0.0
    # p = (.5, .25, .25), q = (0, .5, .5) on groups 1, 2, 225
    assert r["sg_chi2"] == pytest.approx(0.5 * (0.5 + 2 * 0.0625 / 0.75))
    with pytest.raises(ValueError, match="1..230"):
        space_group_histogram([231])


# ------------------------------------------------------------------ end to end, failures recorded
def test_evaluate_generation_records_failures():
    structs = fixture_structures("perov5_sample.csv", 3)
    samples = [Entry(m, s.to(fmt="cif")) for m, s in structs]
    samples += [Entry("broken", "data_x\n_cell_length_a 1\n"), Entry("missing", None, "not decoded"),
                Entry("overlap", Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]]).to(fmt="cif"))]
    ref = [Entry(m, s.to(fmt="cif")) for m, s in structs]
    r = evaluate_generation(samples, ref, dataset="perov_5", progress=False)
    m = r["metrics"]
    assert m["n_samples"] == 6 and m["struct_valid"] == pytest.approx(3 / 6)
    # the broken and missing samples and the overlapping NaCl are near no reference crystal
    assert m["cov_recall"] == 1.0 and m["cov_precision"] == pytest.approx(3 / 6)
    assert r["failures"]["samples"]["by_step"] == {"parse": 1, "missing": 1}
    assert m["novelty"] == 0.0 and m["uniqueness"] == 1.0


def test_analyzed_reference_and_separate_novelty_reference():
    structs = fixture_structures("perov5_sample.csv", 4)
    samples = [Entry(m, s.to(fmt="cif")) for m, s in structs[:3]]
    val = [Entry(m, s.to(fmt="cif")) for m, s in structs[2:]]  # shares sample 2 only
    train = [Entry(m, s.to(fmt="cif")) for m, s in structs[:2]]  # shares samples 0 and 1
    direct = evaluate_generation(samples, val, dataset="perov_5", progress=False)
    once = analyze_reference(val, coverage=True, novelty=True, progress=False)
    reused = evaluate_generation(samples, once, dataset="perov_5", progress=False)
    for key in ("cov_recall", "cov_precision", "wdist_density", "novelty", "sg_chi2"):
        assert reused["metrics"][key] == direct["metrics"][key], key
    assert direct["metrics"]["novelty"] == pytest.approx(2 / 3)  # judged against val
    split = evaluate_generation(samples, val, dataset="perov_5", progress=False, novelty_reference=train)
    assert split["metrics"]["novelty"] == pytest.approx(1 / 3)  # judged against train
    assert split["metrics"]["cov_recall"] == direct["metrics"]["cov_recall"]
    no_fp = analyze_reference(val, coverage=False, novelty=True, progress=False)
    with pytest.raises(ValueError, match="lacks fingerprints"):
        evaluate_generation(samples, no_fp, progress=False)


def test_fast_matching_agrees_with_plain_structure_matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    structs = [s for _, s in fixture_structures("carbon24_sample.csv", 6)]
    samples = structs[:3] + [disguised(structs[3], 7), disguised(structs[4], 8, 0.3)]
    plain = StructureMatcher()
    expected = [not any(plain.fit(s, r) for r in structs[3:]) for s in samples]
    assert [novelty([s], structs[3:]) == 1.0 for s in samples] == expected
    assert expected[3] is False  # the disguised copy is found
    labels = [[plain.fit(a, b) for b in samples] for a in samples]
    from crystalformer.evaluation.uniqueness import unique_classes

    classes = unique_classes(samples)
    for i in range(len(samples)):
        for j in range(len(samples)):
            if classes[i] == classes[j]:
                assert labels[i][j]


def test_guess_dataset_from_reference_path():
    from crystalformer.evaluation.runner import guess_dataset

    assert guess_dataset("../shared/data/perov_5/train.csv") == "perov_5"
    assert guess_dataset("data/mp20_sample.csv") == "mp_20"
    assert guess_dataset("refs/train.csv") is None


def test_sampling_flags_and_evaluation_share_one_validity_rule():
    """A one-atom cell 0.6 Å on a side: valid by the benchmark rule (no distinct pair) in both places,
    but its atom touches its own image, which the contact flag shows."""
    from pymatgen.core import Lattice, Structure

    from crystalformer.sampling.output import structure_checks

    class _Crystal:
        def to_structure(self):
            return Structure(Lattice.cubic(0.6), ["Na"], [[0, 0, 0]])

    structure, flags = structure_checks(_Crystal())
    assert structure_validity(structure) is True and flags["valid_structure"] is True
    assert flags["plausible_contacts"] is False and flags["min_distance"] == 0.6
