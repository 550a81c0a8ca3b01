"""The PNG plots of a drift report: features on the reference's principal components, and volume scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medattn.drift.analysis import DriftReport
from medattn.drift.stats import pca_fit, standardise


def write_plots(report: DriftReport, out_dir: Path, stem: str) -> list[str]:
    """PNG plots: features on the reference's first two principal components, and volume scores vs threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medattn.data.io import atomic_write_with

    ref = np.stack([f.vector(report.options.features) for f in report.reference])
    tgt = np.stack([f.vector(report.options.features) for f in report.target])
    rs, ts = standardise(ref, tgt)
    mu, comps = pca_fit(rs, 2)
    pr, pt = (rs - mu) @ comps.T, (ts - mu) @ comps.T
    paths = []
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(pr[:, 0], pr[:, 1] if pr.shape[1] > 1 else np.zeros(len(pr)), label="reference", alpha=0.7)
    ax.scatter(pt[:, 0], pt[:, 1] if pt.shape[1] > 1 else np.zeros(len(pt)), label="target", alpha=0.7, marker="^")
    ax.set_xlabel("PC 1 (reference)")
    ax.set_ylabel("PC 2 (reference)")
    mmd = report.tests["mmd"]
    ax.set_title(
        f"{'DRIFT' if report.drift else 'no drift'}: MMD p={mmd.p_value:.3g}, KS p={report.tests['ks_pca'].p_value:.3g}"
    )
    ax.legend()
    fig.tight_layout()
    p1 = out_dir / f"{stem}_pca.png"
    atomic_write_with(p1, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    paths.append(str(p1))

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    bins = np.histogram_bin_edges(np.concatenate([report.reference_scores, report.target_scores]), bins=20).tolist()
    ax.hist(report.reference_scores, bins=bins, alpha=0.6, label="reference (held out)")
    ax.hist(report.target_scores, bins=bins, alpha=0.6, label="target")
    ax.axvline(report.threshold, color="k", ls="--", label=f"threshold (FPR {report.options.fpr:g})")
    ax.set_xlabel("Mahalanobis score")
    ax.set_ylabel("volumes")
    ax.legend()
    fig.tight_layout()
    p2 = out_dir / f"{stem}_scores.png"
    atomic_write_with(p2, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    paths.append(str(p2))
    return paths
