"""The knobs of a drift run, :class:`DriftOptions`: one frozen record, saved in every drift report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DriftOptions:
    """Knobs of a drift run (saved in the report).

    Attributes:
        alpha: significance level of the set-level decision (each of the two tests is judged at ``alpha / 2``).
        fpr: false-positive rate the volume-level Mahalanobis threshold is calibrated for.
        features: feature groups the decision tests (``model``, ``prediction``, ``image``).
        permutations: MMD permutations.
        pca_components: principal components of the reference that the KS test compares.
        overlap: sliding-window overlap of the feature pass.
        seed: seed of the MMD permutations and of the threshold's cross-fitting.
    """

    alpha: float = 0.05
    fpr: float = 0.05
    features: tuple[str, ...] = ("model", "prediction")
    permutations: int = 1000
    pca_components: int = 8
    overlap: float = 0.25
    seed: int = 0
