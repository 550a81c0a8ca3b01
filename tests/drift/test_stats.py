"""Two-sample drift tests: calibrated under the null, powerful under a shift, checked against references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from medattn.drift.stats import MahalanobisScorer, auroc, ks_pca_test, median_bandwidth, mmd_test


def _null_pvalues(test, sims: int, n: int = 15, f: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ps = []
    for s in range(sims):
        x = rng.normal(size=(n, f))
        y = rng.normal(size=(n, f))
        ps.append(test(x, y, s).p_value)
    return np.array(ps)


def test_mmd_pvalues_are_uniform_under_the_null() -> None:
    ps = _null_pvalues(lambda x, y, s: mmd_test(x, y, n_permutations=200, seed=s), sims=150)
    # False-alarm rate near alpha and no gross departure from uniformity.
    assert 0.0 <= (ps < 0.05).mean() <= 0.12
    assert sps.kstest(ps, "uniform").pvalue > 0.01


def test_ks_pca_pvalues_are_conservative_under_the_null() -> None:
    ps = _null_pvalues(lambda x, y, s: ks_pca_test(x, y, n_components=4), sims=200)
    assert (ps < 0.05).mean() <= 0.08  # Bonferroni: at most alpha


@pytest.mark.parametrize("test", ["mmd", "ks"])
def test_power_on_a_mean_shift(test: str) -> None:
    # Features with low-rank structure (two latent factors plus noise), as model features have; the target's
    # first factor is shifted by 1.5 of its standard deviations.
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(2, 6))
    hits = 0
    for s in range(20):
        x = rng.normal(size=(20, 2)) @ mix + 0.3 * rng.normal(size=(20, 6))
        y = (rng.normal(size=(10, 2)) + np.array([1.5, 0.0])) @ mix + 0.3 * rng.normal(size=(10, 6))
        r = mmd_test(x, y, n_permutations=200, seed=s) if test == "mmd" else ks_pca_test(x, y, n_components=4)
        hits += r.drift
    # Under the null each fires about 1 time in 20; Bonferroni-corrected KS is the less powerful of the two.
    assert hits >= (18 if test == "mmd" else 14)


def test_mmd_statistic_matches_direct_formula() -> None:
    rng = np.random.default_rng(2)
    mix = np.array([[1.0, 0.9, 0.0], [0.0, 0.3, 1.0]])  # correlated features: the shrinkage stays below 1
    x = rng.normal(size=(30, 2)) @ mix + 0.1 * rng.normal(size=(30, 3))
    y = rng.normal(size=(20, 2)) @ mix + 0.1 * rng.normal(size=(20, 3)) + 0.3
    r = mmd_test(x, y, n_permutations=10)
    assert 0.0 < r.details["shrinkage"] < 0.5 and r.details["whitened"] is True
    # Independent computation: standardise with the pooled sample, Mahalanobis distances under its Ledoit-Wolf
    # covariance, RBF with the median distance, unbiased MMD².
    from sklearn.covariance import LedoitWolf

    pooled = np.concatenate([x, y])
    z = (pooled - pooled.mean(0)) / pooled.std(0)
    prec = np.linalg.inv(LedoitWolf(assume_centered=True).fit(z).covariance_)
    diff = z[:, None] - z[None]
    d = np.sqrt(np.einsum("ijk,kl,ijl->ij", diff, prec, diff))
    bw = r.details["bandwidth"]
    assert bw == pytest.approx(np.median(d[np.triu_indices(len(z), 1)]), rel=1e-9)
    k = np.exp(-(d**2) / (2 * bw * bw))
    m, n = len(x), len(y)
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    expected = (kxx.sum() - m) / (m * (m - 1)) + (kyy.sum() - n) / (n * (n - 1)) - 2 * kxy.mean()
    assert r.statistic == pytest.approx(expected, rel=1e-9)
    # Without whitening: plain pooled standardisation and the median heuristic.
    plain = mmd_test(x, y, n_permutations=10, whitened=False)
    assert plain.details["bandwidth"] == pytest.approx(median_bandwidth(z))


def test_whitening_finds_a_shift_along_a_low_variance_direction() -> None:
    """Correlated features (one strong factor): a shift across the factor, small in feature units but large in
    the direction's own spread, is what a new scanner can do to network features. Standardised MMD misses it;
    whitened MMD does not, and its false-alarm rate stays at alpha."""
    rng = np.random.default_rng(5)
    f = 20
    load = rng.normal(size=f)
    across = np.linalg.qr(np.stack([load, rng.normal(size=f)], 1))[0][:, 1]  # orthogonal to the factor

    def sample(n: int, shift: float) -> np.ndarray:
        return rng.normal(size=(n, 1)) * load * 3 + 0.2 * rng.normal(size=(n, f)) + shift * across

    hits = {True: 0, False: 0}
    alarms = 0
    for s in range(20):
        ref, tgt = sample(60, 0.0), sample(10, 0.6)
        for w in (True, False):
            hits[w] += mmd_test(ref, tgt, n_permutations=200, seed=s, whitened=w).p_value < 0.025
        alarms += mmd_test(ref, sample(10, 0.0), n_permutations=200, seed=s).p_value < 0.025
    assert hits[True] >= 18 and hits[False] <= 6
    assert alarms <= 3


def test_mahalanobis_threshold_controls_false_positives_and_flags_outliers() -> None:
    rng = np.random.default_rng(3)
    cov = np.diag([1.0, 4.0, 0.25, 1.0])
    ref = rng.multivariate_normal(np.zeros(4), cov, size=200)
    scorer = MahalanobisScorer(fpr=0.05).fit(ref)
    fresh = rng.multivariate_normal(np.zeros(4), cov, size=2000)
    fp = scorer.flag(fresh).mean()
    assert 0.02 <= fp <= 0.09
    shifted = rng.multivariate_normal(np.array([0, 0, 2.0, 0]), cov, size=200)  # 4 sd along the narrow axis
    assert scorer.flag(shifted).mean() > 0.9
    assert auroc(scorer.score(fresh), scorer.score(shifted)) > 0.95


def test_auroc_matches_pairwise_definition() -> None:
    a, b = np.array([0.1, 0.4, 0.4, 0.8]), np.array([0.4, 0.9, 0.3])
    pairs = [(1.0 if bi > ai else 0.5 if bi == ai else 0.0) for ai in a for bi in b]
    assert auroc(a, b) == pytest.approx(np.mean(pairs))


def test_bad_inputs_are_explained() -> None:
    with pytest.raises(ValueError, match="2D array"):
        mmd_test(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        mmd_test(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="3 features per volume"):
        ks_pca_test(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least 4 reference volumes"):
        MahalanobisScorer().fit(np.zeros((3, 2)))
