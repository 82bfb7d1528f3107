"""FD, KID and the bootstrap against independent computations (torchmetrics, clean-fid, closed forms)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from taxabench.metrics.aggregate import Resampling
from taxabench.metrics.metric_fd import (
    FDStatistics,
    fd_features_to_statistics,
    fd_from_features,
    fd_statistics_to_metric,
)
from taxabench.metrics.metric_kid import kid_bootstrap, kid_features_to_metric, mmd2_unbiased


def correlated(rng, n, d, shift=0.0, scale=1.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mixing) * scale + shift


@pytest.fixture
def feature_sets():
    rng = np.random.default_rng(0)
    return correlated(rng, 600, 48), correlated(rng, 500, 48, shift=0.3, scale=1.2)


def test_fd_equals_clean_fid_and_torchmetrics(feature_sets):
    from cleanfid.fid import frechet_distance
    from torchmetrics.image.fid import _compute_fid

    real, generated = feature_sets
    ours = fd_from_features(real, generated)
    mu_r, sigma_r = real.mean(0), np.cov(real, rowvar=False)
    mu_g, sigma_g = generated.mean(0), np.cov(generated, rowvar=False)
    clean = frechet_distance(mu_r, sigma_r, mu_g, sigma_g)
    tm = _compute_fid(*(torch.from_numpy(a) for a in (mu_r, sigma_r, mu_g, sigma_g))).item()
    assert ours == pytest.approx(clean, rel=1e-4)
    assert ours == pytest.approx(tm, rel=1e-4)


def test_fd_of_identical_sets_is_zero(feature_sets):
    real, _ = feature_sets
    assert fd_from_features(real, real.copy()) == pytest.approx(0.0, abs=1e-8 * np.trace(np.cov(real.T)))


def test_fd_of_gaussians_matches_the_closed_form():
    """N(0, I) vs N(mu, s^2 I): FD = ||mu||^2 + d (1 - s)^2; and a non-commuting pair against scipy's sqrtm."""
    d = 16
    mu = np.linspace(-1, 1, d)
    def stats(mean, covariance):
        return FDStatistics.from_covariance(mean, covariance, 1e9)

    exact = fd_statistics_to_metric(stats(np.zeros(d), np.eye(d)), stats(mu, 4 * np.eye(d)))
    assert exact == pytest.approx(mu @ mu + d * (1 - 2) ** 2, rel=1e-10)

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    sigma_1, sigma_2 = a @ a.T + np.eye(d), b @ b.T + 0.5 * np.eye(d)
    trace_sqrt = np.trace(scipy.linalg.sqrtm(sigma_1 @ sigma_2)).real
    expected = mu @ mu + np.trace(sigma_1) + np.trace(sigma_2) - 2 * trace_sqrt
    got = fd_statistics_to_metric(stats(np.zeros(d), sigma_1), stats(mu, sigma_2))
    assert got == pytest.approx(expected, rel=1e-8)

    # sampled: a shifted set lands on the analytic value within sampling error
    samples = fd_from_features(rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4)) + np.array([1.0, 0, 0, 0]))
    assert samples == pytest.approx(1.0, abs=0.02)


def test_fd_is_exact_with_fewer_images_than_dimensions():
    """Singular covariances (n < d): the eigen route agrees with the definition computed in higher precision."""
    rng = np.random.default_rng(2)
    real, generated = rng.normal(size=(10, 40)), rng.normal(size=(12, 40)) + 0.1
    s_r, s_g = np.cov(real, rowvar=False), np.cov(generated, rowvar=False)
    eigenvalues = np.linalg.eigvals(s_r @ s_g)
    expected = (np.sum((real.mean(0) - generated.mean(0)) ** 2) + np.trace(s_r) + np.trace(s_g)
                - 2 * np.sqrt(np.clip(eigenvalues.real, 0, None)).sum())
    assert fd_from_features(real, generated) == pytest.approx(expected, rel=1e-6)


def test_per_taxon_fd_scales_with_the_image_count_and_equals_sqrtm():
    """A few images in many dimensions (one taxon's Inception features): the n x n route builds no d x d matrix and
    equals the d x d eigen route and scipy's sqrtm (pytorch-fid's and clean-fid's route) on the same statistics."""
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(4)
    d = 512
    real, generated = correlated(rng, 12, d), correlated(rng, 9, d, shift=0.2)
    real_stats, generated_stats = fd_features_to_statistics(real), fd_features_to_statistics(generated)
    assert real_stats.factor.shape == (12, d) and generated_stats.factor.shape == (9, d)
    ours = fd_statistics_to_metric(real_stats, generated_stats)

    mu_r, sigma_r = real.mean(0), np.cov(real, rowvar=False)
    mu_g, sigma_g = generated.mean(0), np.cov(generated, rowvar=False)
    square = fd_statistics_to_metric(FDStatistics.from_covariance(mu_r, sigma_r, 12),
                                     FDStatistics.from_covariance(mu_g, sigma_g, 9))
    # the d x d route clips the d - n eigenvalues that should be 0 but are rounded to +-eps * ||S||
    assert ours == pytest.approx(square, rel=1e-8)
    # sqrtm of a rank-deficient product carries errors of order sqrt(eps) * ||S||: a looser relative tolerance
    assert ours == pytest.approx(frechet_distance(mu_r, sigma_r, mu_g, sigma_g), rel=1e-4)


def test_pooled_fd_keeps_the_d_by_d_factor_when_images_outnumber_dimensions(feature_sets):
    real, _ = feature_sets
    stats = fd_features_to_statistics(real)
    assert stats.factor.shape == (48, 48)
    torch.testing.assert_close(stats.covariance, torch.from_numpy(np.cov(real, rowvar=False)), rtol=1e-10, atol=1e-12)


def test_weighted_statistics_equal_repeated_rows(feature_sets):
    real, _ = feature_sets
    weights = np.random.default_rng(3).integers(0, 3, size=len(real))
    repeated = np.repeat(real, weights, axis=0)
    weighted = fd_features_to_statistics(real, weights)
    plain = fd_features_to_statistics(repeated)
    torch.testing.assert_close(weighted.mean, plain.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weighted.covariance, plain.covariance, rtol=1e-10, atol=1e-12)


def test_kid_equals_torchmetrics_and_clean_fid(feature_sets):
    from cleanfid.fid import kernel_distance
    from torchmetrics.image.kid import poly_mmd

    real, generated = feature_sets
    real, generated = real[:400], generated[:400]  # equal sizes: every reference uses one m for both sides
    ours = mmd2_unbiased(real, generated)
    tm = poly_mmd(torch.from_numpy(real), torch.from_numpy(generated)).item()
    np.random.seed(0)  # clean-fid draws its subsets from numpy's global generator; m = n makes them permutations
    clean = kernel_distance(real, generated, num_subsets=1, max_subset_size=400)
    assert ours == pytest.approx(tm, rel=1e-6)
    assert ours == pytest.approx(clean, rel=1e-6)
    assert kid_features_to_metric(real, generated, subsets=5, subset_size=1000, seed=0) == (pytest.approx(ours), 0.0)


def test_kid_subsets_are_seeded_and_unbiased(feature_sets):
    real, generated = feature_sets
    first = kid_features_to_metric(real, generated, subsets=50, subset_size=100, seed=7)
    assert kid_features_to_metric(real, generated, subsets=50, subset_size=100, seed=7) == first
    assert kid_features_to_metric(real, generated, subsets=50, subset_size=100, seed=8) != first
    full = mmd2_unbiased(real, generated)  # the expectation of the subset protocol
    mean, std = first
    assert abs(mean - full) < 4 * std / np.sqrt(50)


def test_kid_bootstrap_blocks_equal_recomputation_on_repeated_rows(feature_sets):
    real, generated = feature_sets
    rng = np.random.default_rng(4)
    units = 6
    real_unit, gen_unit = rng.integers(0, units, len(real)), rng.integers(0, units, len(generated))
    counts = Resampling(3, 0.95, seed=0).counts(units, "test")
    fast = kid_bootstrap(real, generated, real_unit, gen_unit, counts)
    for b, count in enumerate(counts):
        slow = mmd2_unbiased(np.repeat(real, count[real_unit], axis=0), np.repeat(generated, count[gen_unit], axis=0))
        assert fast[b] == pytest.approx(slow, rel=1e-9)


def test_resampling_is_seeded_per_scope():
    resampling = Resampling(200, 0.9, seed=3)
    counts = resampling.counts(10, "genus")
    assert counts.shape == (200, 10) and (counts.sum(1) == 10).all()
    np.testing.assert_array_equal(counts, Resampling(200, 0.9, seed=3).counts(10, "genus"))
    assert not np.array_equal(counts, resampling.counts(10, "species"))
    low, high = resampling.interval(np.arange(101.0), estimate=50.0)
    assert (low, high) == pytest.approx((5.0, 95.0))
    assert resampling.interval(np.arange(101.0), estimate=40.0) == pytest.approx((-5.0, 85.0))  # re-centred
