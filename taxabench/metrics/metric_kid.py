"""`kid`: the kernel inception distance (Bińkowski et al., 2018), on any extractor's features.

KID is the unbiased estimate of the squared MMD between real and generated features under the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3. The headline follows torchmetrics / clean-fid: the mean over `eval.kid_subsets`
random subsets of `m = min(eval.kid_subset_size, n_real, n_generated)` images from each side, drawn with a seeded
generator (clean-fid draws them unseeded). When neither set is larger than `eval.kid_subset_size`, the full-set
U-statistic is used instead: it is the exact expectation of the subset average (Gretton et al.'s unbiased MMD^2
allows unequal set sizes), so small sets (per-taxon KID) get no subset noise.

Bootstrap CIs over taxa use the full-set U-statistic, which is the expectation of the subset protocol: the kernel
is summed once into taxon-by-taxon blocks, after which each resample costs O(taxa^2) instead of O(images^2 d).
"""

from __future__ import annotations

import numpy as np
import torch

from taxabench.metrics.metric_base import SetMetric


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(real, generated, device: torch.device | str | None = None) -> float:
    """The unbiased squared MMD (U-statistic) between two feature sets with the polynomial kernel (float64)."""
    x = torch.as_tensor(real, dtype=torch.float64, device=device)
    y = torch.as_tensor(generated, dtype=torch.float64, device=x.device)
    n, m = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    value = ((k_xx.sum() - k_xx.trace()) / (n * (n - 1)) + (k_yy.sum() - k_yy.trace()) / (m * (m - 1))
             - 2 * k_xy.mean())
    return float(value)


def kid_features_to_metric(
    real, generated, subsets: int, subset_size: int, seed: int, device: torch.device | str | None = None
) -> tuple[float, float]:
    """KID as the mean (and standard deviation) over seeded subsets of `min(subset_size, n_real, n_generated)`
    images per side; when neither set exceeds `subset_size`, the full-set U-statistic (the subsets' expectation)."""
    x = torch.as_tensor(real, dtype=torch.float64, device=device)
    y = torch.as_tensor(generated, dtype=torch.float64, device=x.device)
    if min(len(x), len(y)) < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {len(x)} real and {len(y)} generated")
    if max(len(x), len(y)) <= subset_size:
        return mmd2_unbiased(x, y), 0.0
    m = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(x[torch.from_numpy(rng.choice(len(x), m, replace=False)).to(x.device)],
                      y[torch.from_numpy(rng.choice(len(y), m, replace=False)).to(x.device)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def kid_bootstrap(real, generated, real_unit, gen_unit, counts, device: torch.device | str | None = None) -> np.ndarray:
    """Full-set unbiased MMD^2 for each resample of units (`counts`: resamples x units multiplicities).

    With per-unit kernel block sums S[t, u] and diagonal sums D[t], a resample in which unit t appears c_t times
    has sum over ordered pairs of distinct draws c^T S c - c.D, over n(n-1) pairs where n = sum_t c_t n_t.
    """
    units = counts.shape[1]
    x = torch.as_tensor(real, dtype=torch.float64, device=device)
    y = torch.as_tensor(generated, dtype=torch.float64, device=x.device)
    blocks_xx, diag_xx = _block_sums(x, x, real_unit, real_unit, units)
    blocks_yy, diag_yy = _block_sums(y, y, gen_unit, gen_unit, units)
    blocks_xy, _ = _block_sums(x, y, real_unit, gen_unit, units)
    c = counts.astype(np.float64)
    n_real = c @ np.bincount(real_unit, minlength=units)
    n_gen = c @ np.bincount(gen_unit, minlength=units)
    pairs_xx = np.einsum("bt,tu,bu->b", c, blocks_xx, c) - c @ diag_xx
    pairs_yy = np.einsum("bt,tu,bu->b", c, blocks_yy, c) - c @ diag_yy
    cross = np.einsum("bt,tu,bu->b", c, blocks_xy, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = pairs_xx / (n_real * (n_real - 1.0)) + pairs_yy / (n_gen * (n_gen - 1.0)) - 2 * cross / (n_real * n_gen)
    value[(n_real < 2) | (n_gen < 2)] = np.nan
    return value


def _block_sums(x: torch.Tensor, y: torch.Tensor, x_unit: np.ndarray, y_unit: np.ndarray, units: int,
                chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """S[t, u] = sum of k(x_i, y_j) over i in unit t, j in unit u; D[t] = sum of k(x_i, x_i) over i in unit t."""
    x_onehot = torch.nn.functional.one_hot(torch.as_tensor(x_unit, device=x.device), units).double()
    y_onehot = torch.nn.functional.one_hot(torch.as_tensor(y_unit, device=x.device), units).double()
    blocks = torch.zeros(units, units, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), chunk):
        blocks += x_onehot[start:start + chunk].T @ polynomial_kernel(x[start:start + chunk], y) @ y_onehot
    diagonal = x_onehot.T @ ((x * x).sum(1) / x.shape[1] + 1) ** 3
    return blocks.cpu().numpy(), diagonal.cpu().numpy()


class KernelDistance(SetMetric):
    """KID between real and generated features of `eval.fd_extractor` (the FD extractor)."""

    key = "kid"
    description = "Kernel inception distance (unbiased MMD^2, cubic kernel) on the FD extractor's features."
    higher_is_better = False
    min_per_side = 2

    def display_name(self, extractor: str) -> str:
        return "KID" if extractor == "inception" else f"KID ({extractor})"

    def value(self, real, generated, context) -> float:
        settings = context.config.eval
        return kid_features_to_metric(real, generated, settings.kid_subsets, settings.kid_subset_size,
                                      settings.seed, context.device)[0]

    def bootstrap(self, context):
        return lambda *arrays: kid_bootstrap(*arrays, device=context.device)

    def protocol(self, context) -> dict:
        settings = context.config.eval
        return {"kid_subsets": settings.kid_subsets, "kid_subset_size": settings.kid_subset_size,
                "ci": "full-set U-statistic per resample"}
