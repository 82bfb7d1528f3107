"""`fd`: the Fréchet distance between Gaussians fitted to real and generated features (Heusel et al., 2017).

Named "FID" only when the features are the standard FID Inception-V3 pool features; otherwise "FD (<extractor>)".
The math is two small pure steps, as in torch-fidelity: `fd_features_to_statistics` (mean, covariance, optionally
with one weight per image, which is how bootstrap resamples of taxa are expressed) and
`fd_statistics_to_metric`.

    FD = ||mu_r - mu_g||^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^(1/2))

The trace of the matrix square root is computed without `scipy.linalg.sqrtm`, from a factor F of each covariance
(S = F^T F): the eigenvalues of S_r S_g are the squared singular values of F_r F_g^T, so tr((S_r S_g)^(1/2)) is the
nuclear norm of F_r F_g^T. With n images and d feature dimensions, F is the n x d matrix of centred rows when n <= d
(a few images of one taxon: the cost is O(n^2 d), not two d x d eigendecompositions), and otherwise the d x d factor
of a symmetric eigendecomposition (tiny negative eigenvalues clipped to 0). It is real by construction (sqrtm can
return complex parts that clean-fid and pytorch-fid discard) and exact for singular covariances (fewer images than
feature dimensions), where sqrtm is unstable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from taxabench.metrics.metric_base import SetMetric


@dataclass(frozen=True)
class FDStatistics:
    mean: torch.Tensor  # (d,) float64
    factor: torch.Tensor  # (k, d) float64 with covariance = factor^T factor (unbiased, divided by n - 1); k <= d
    count: float  # number of images (sum of the weights)

    @property
    def covariance(self) -> torch.Tensor:
        return self.factor.T @ self.factor

    @classmethod
    def from_covariance(cls, mean, covariance, count: float) -> FDStatistics:
        covariance = torch.as_tensor(covariance, dtype=torch.float64)
        return cls(torch.as_tensor(mean, dtype=torch.float64), _psd_factor(covariance).T, count)


def fd_features_to_statistics(
    features: np.ndarray | torch.Tensor, weights: np.ndarray | None = None, device: torch.device | str | None = None
) -> FDStatistics:
    """Mean and a factor of the unbiased covariance of `features` (n, d), in float64 on `device`; `weights` (n,)
    counts each row that many times (a bootstrap resample of taxa)."""
    x = torch.as_tensor(features, dtype=torch.float64, device=device)
    w = torch.ones(len(x), dtype=torch.float64, device=x.device) if weights is None else torch.as_tensor(
        weights, dtype=torch.float64, device=x.device)
    count = float(w.sum())
    if count < 2:
        raise ValueError(f"FD needs at least 2 images on each side, got {count:g}")
    mean = w @ x / count
    kept = w > 0
    rows = (x[kept] - mean) * (w[kept] / (count - 1)).sqrt()[:, None]  # covariance = rows^T rows
    if len(rows) <= x.shape[1]:
        return FDStatistics(mean, rows, count)
    return FDStatistics(mean, _psd_factor(rows.T @ rows).T, count)


def fd_statistics_to_metric(real: FDStatistics, generated: FDStatistics) -> float:
    """The Fréchet distance between two Gaussians (see the module docstring for the trace term)."""
    device = real.mean.device
    difference = real.mean - generated.mean.to(device)
    generated_factor = generated.factor.to(device)
    trace_sqrt = torch.linalg.svdvals(real.factor @ generated_factor.T).sum()
    traces = real.factor.pow(2).sum() + generated_factor.pow(2).sum()
    value = difference @ difference + traces - 2 * trace_sqrt
    return max(float(value), 0.0)  # rounding can leave -1e-12 for identical sets


def fd_from_features(real, generated, device: torch.device | str | None = None) -> float:
    return fd_statistics_to_metric(fd_features_to_statistics(real, device=device),
                                   fd_features_to_statistics(generated, device=device))


def _psd_factor(covariance: torch.Tensor) -> torch.Tensor:
    """L with L L^T = covariance, for a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = torch.linalg.eigh((covariance + covariance.T) / 2)
    return eigenvectors * eigenvalues.clamp_min(0.0).sqrt()


class FrechetDistance(SetMetric):
    """FD between real and generated features of `eval.fd_extractor`: pooled overall, per taxon at each rank."""

    key = "fd"
    description = "Fréchet distance on an extractor's features (named FID only with the standard Inception-V3)."
    higher_is_better = False
    min_per_side = 2

    def display_name(self, extractor: str) -> str:
        return "FID" if extractor == "inception" else f"FD ({extractor})"

    def value(self, real, generated, context) -> float:
        return fd_from_features(real, generated, context.device)

    def weighted_value(self, real, generated, real_weights, generated_weights, context) -> float:
        return fd_statistics_to_metric(fd_features_to_statistics(real, real_weights, context.device),
                                       fd_features_to_statistics(generated, generated_weights, context.device))
