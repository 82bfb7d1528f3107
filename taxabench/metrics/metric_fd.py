"""`fd`: the Fréchet distance between Gaussians fitted to real and generated features (Heusel et al., 2017).

Named "FID" only when the features are the standard FID Inception-V3 pool features; otherwise "FD (<extractor>)".
The math is two small pure steps, as in torch-fidelity: `fd_features_to_statistics` (mean, covariance, optionally
with one weight per image, which is how bootstrap resamples of taxa are expressed) and
`fd_statistics_to_metric`.

    FD = ||mu_r - mu_g||^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^(1/2))

The trace of the matrix square root is computed without `scipy.linalg.sqrtm`: with S = L L^T for each covariance
(L from a symmetric eigendecomposition, tiny negative eigenvalues clipped to 0), the eigenvalues of S_r S_g are the
squared singular values of L_r^T L_g, so tr((S_r S_g)^(1/2)) is the nuclear norm of L_r^T L_g. It is real by
construction (sqrtm can return complex parts that clean-fid and pytorch-fid discard) and exact for singular
covariances (fewer images than feature dimensions), where sqrtm is unstable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from taxabench.metrics.metric_base import SetMetric


@dataclass(frozen=True)
class FDStatistics:
    mean: np.ndarray  # (d,)
    covariance: np.ndarray  # (d, d), unbiased (divided by n - 1)
    count: float  # number of images (sum of the weights)


def fd_features_to_statistics(features: np.ndarray, weights: np.ndarray | None = None) -> FDStatistics:
    """Mean and unbiased covariance of `features` (n, d); `weights` (n,) counts each row that many times."""
    x = np.asarray(features, dtype=np.float64)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    count = float(w.sum())
    if count < 2:
        raise ValueError(f"FD needs at least 2 images on each side, got {count:g}")
    mean = w @ x / count
    centred = x - mean
    covariance = (centred * w[:, None]).T @ centred / (count - 1)
    return FDStatistics(mean, covariance, count)


def fd_statistics_to_metric(real: FDStatistics, generated: FDStatistics) -> float:
    """The Fréchet distance between two Gaussians (see the module docstring for the trace term)."""
    difference = real.mean - generated.mean
    trace_sqrt = np.linalg.svd(_psd_factor(real.covariance).T @ _psd_factor(generated.covariance), compute_uv=False)
    value = difference @ difference + np.trace(real.covariance) + np.trace(generated.covariance) - 2 * trace_sqrt.sum()
    return float(max(value, 0.0))  # rounding can leave -1e-12 for identical sets


def fd_from_features(real: np.ndarray, generated: np.ndarray) -> float:
    return fd_statistics_to_metric(fd_features_to_statistics(real), fd_features_to_statistics(generated))


def _psd_factor(covariance: np.ndarray) -> np.ndarray:
    """L with L L^T = covariance, for a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh((covariance + covariance.T) / 2)
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


class FrechetDistance(SetMetric):
    """FD between real and generated features of `eval.fd_extractor`: pooled overall, per taxon at each rank."""

    key = "fd"
    description = "Fréchet distance on an extractor's features (named FID only with the standard Inception-V3)."
    higher_is_better = False
    min_per_side = 2

    def display_name(self, extractor: str) -> str:
        return "FID" if extractor == "inception" else f"FD ({extractor})"

    def value(self, real, generated, context) -> float:
        return fd_from_features(real, generated)

    def weighted_value(self, real, generated, real_weights, generated_weights) -> float:
        return fd_statistics_to_metric(
            fd_features_to_statistics(real, real_weights), fd_features_to_statistics(generated, generated_weights)
        )
