"""PNG reports of an evaluation result (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def write_report(result: dict, path) -> Path:
    """Draw the plots of a generation or CSP result into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draw = {"generation": _generation, "csp": _csp}.get(result.get("task"))
    if draw is None:
        raise ValueError(f"result task must be 'generation' or 'csp', got {result.get('task')!r}")
    fig = draw(plt, result)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _generation(plt, r: dict):
    d = r["plot_data"]
    stab = r.get("stability")
    fig, ax = plt.subplots(2, 3 if stab else 2, figsize=(17 if stab else 12, 8))
    if stab:
        _e_hull(ax[0, 2], stab, r["metrics"])
        ax[1, 2].axis("off")
    _sg_hist(ax[0, 0], d["sample_space_group"], d["reference_space_group"])
    _density(ax[0, 1], d["sample_density"], d["reference_density"], r["metrics"].get("wdist_density"))
    _nelem(ax[1, 0], d["sample_n_elements"], d["reference_n_elements"], r["metrics"].get("wdist_num_elems"))
    v = d["validity"]
    keys = ["parsed", "struct_valid", "comp_valid", "valid"]
    ax[1, 1].bar(keys, [100 * v[k] / max(v["total"], 1) for k in keys], color=["grey", "C0", "C1", "C2"])
    ax[1, 1].set_ylim(0, 100)
    ax[1, 1].set_ylabel("% of samples")
    ax[1, 1].set_title(f"validity ({v['total']} samples)")
    fig.suptitle(_title(r))
    fig.tight_layout()
    return fig


def _e_hull(ax, stab: dict, m: dict):
    vals = [x["e_hull"] for x in stab["per_sample"] if x["e_hull"] is not None]
    cut = m.get("stable_cutoff", 0.08)
    if vals:
        hi = float(np.clip(np.percentile(vals, 98), cut + 0.1, 5.0))
        clipped = np.clip(vals, min(min(vals), -0.2), hi)
        ax.hist(clipped, bins=60, color="C0", alpha=0.8)
        ax.axvline(cut, color="C3", ls="--", label=f"stable: E_hull <= {cut} eV/atom")
        ax.legend()
    ax.set_xlabel("E_hull (eV/atom; above the reference hull, last bin clipped)")
    ax.set_ylabel("valid samples")
    ax.set_title(f"stability under {stab.get('potential', '?')}: stable {100 * (m.get('stable_rate') or 0):.1f}%"
                 + (f", S.U.N. {100 * m['sun_rate']:.1f}%" if m.get("sun_rate") is not None else "")
                 + f"\n({m.get('n_no_hull', 0)} without hull)")


def _title(r: dict) -> str:
    m = r["metrics"]
    parts = [f"{k}={m[k]:.3f}" for k in ("valid", "cov_recall", "cov_precision", "uniqueness", "novelty", "sg_chi2",
                                        "stable_rate", "sun_rate")
             if m.get(k) is not None]
    return "generation: " + ", ".join(parts)


def _sg_hist(ax, samples, reference):
    bins = np.arange(0.5, 231.5, 1)
    for values, label, color in ((reference, "reference", "grey"), (samples, "samples", "C0")):
        if values:
            ax.hist(values, bins=bins, weights=np.full(len(values), 1 / len(values)), alpha=0.6, label=label,
                    color=color)
    ax.set_xlabel("space group number")
    ax.set_ylabel("fraction")
    ax.set_title("space groups (valid samples)")
    ax.legend()


def _density(ax, samples, reference, w):
    vals = [x for x in samples + reference if x is not None]
    if vals:
        bins = np.linspace(min(vals), max(vals), 50)
        for values, label, color in ((reference, "reference", "grey"), (samples, "samples", "C0")):
            if values:
                ax.hist(values, bins=bins, density=True, alpha=0.6, label=label, color=color)
        ax.legend()
    ax.set_xlabel("density (g/cm$^3$)")
    ax.set_title("density" + (f" (W1 = {w:.3f})" if w is not None else ""))


def _nelem(ax, samples, reference, w):
    vals = [x for x in samples + reference if x is not None]
    if vals:
        bins = np.arange(0.5, max(vals) + 1.5, 1)
        for values, label, color in ((reference, "reference", "grey"), (samples, "samples", "C0")):
            if values:
                ax.hist(values, bins=bins, density=True, alpha=0.6, label=label, color=color, rwidth=0.8)
        ax.legend()
    ax.set_xlabel("number of elements")
    ax.set_title("number of elements" + (f" (W1 = {w:.3f})" if w is not None else ""))


def _csp(plt, r: dict):
    d = r["plot_data"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.5))
    if d["best_rms"]:
        ax[0].hist(d["best_rms"], bins=30, color="C0")
    ax[0].set_xlabel(f"normalized RMS displacement (best of {d['k_max']})")
    ax[0].set_ylabel("matched targets")
    ax[0].set_title("CSP RMSE of matched targets")
    ks = list(r["by_k"])
    ax[1].bar([f"k={k}" for k in ks], [100 * (r["by_k"][k]["match_rate"] or 0) for k in ks], color="C2")
    ax[1].set_ylim(0, 100)
    ax[1].set_ylabel("match rate %")
    ax[1].set_title(f"match rate over {r['metrics']['n_targets']} targets")
    fig.tight_layout()
    return fig
