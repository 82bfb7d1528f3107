"""`kid`: the kernel inception distance (Bińkowski et al., 2018), on any extractor's features.

KID is the unbiased estimate of the squared MMD between real and generated features under the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3. The headline follows torchmetrics / clean-fid: the mean over `eval.kid_subsets`
random subsets of `m = min(eval.kid_subset_size, n_real, n_generated)` images from each side, drawn with a seeded
generator (clean-fid draws them unseeded). When m covers both sets, every subset is the full set and one
evaluation is exact.

Bootstrap CIs over taxa use the full-set U-statistic, which is the expectation of the subset protocol: the kernel
is summed once into taxon-by-taxon blocks, after which each resample costs O(taxa^2) instead of O(images^2 d).
"""

from __future__ import annotations

import numpy as np

from taxabench.metrics.metric_base import SetMetric


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(real: np.ndarray, generated: np.ndarray) -> float:
    """The unbiased squared MMD (U-statistic) between two feature sets with the polynomial kernel."""
    n, m = len(real), len(generated)
    k_rr, k_gg, k_rg = polynomial_kernel(real, real), polynomial_kernel(generated, generated), polynomial_kernel(
        real, generated)
    return float((k_rr.sum() - np.trace(k_rr)) / (n * (n - 1)) + (k_gg.sum() - np.trace(k_gg)) / (m * (m - 1))
                 - 2 * k_rg.mean())


def kid_features_to_metric(
    real: np.ndarray, generated: np.ndarray, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    """KID as the mean (and standard deviation) over seeded subsets of `min(subset_size, n_real, n_generated)`."""
    real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
    m = min(subset_size, len(real), len(generated))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {len(real)} real and {len(generated)}")
    if m == len(real) == len(generated):
        return mmd2_unbiased(real, generated), 0.0
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(real[rng.choice(len(real), m, replace=False)], generated[rng.choice(len(generated), m, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def kid_bootstrap(real, generated, real_unit, gen_unit, counts) -> np.ndarray:
    """Full-set unbiased MMD^2 for each resample of units (`counts`: resamples x units multiplicities).

    With per-unit kernel block sums S[t, u] and diagonal sums D[t], a resample in which unit t appears c_t times
    has sum over ordered pairs of distinct draws c^T S c - c.D, over n(n-1) pairs where n = sum_t c_t n_t.
    """
    units = counts.shape[1]
    blocks_rr, diag_rr = _block_sums(real, real, real_unit, real_unit, units)
    blocks_gg, diag_gg = _block_sums(generated, generated, gen_unit, gen_unit, units)
    blocks_rg, _ = _block_sums(real, generated, real_unit, gen_unit, units)
    n_real = counts @ np.bincount(real_unit, minlength=units)
    n_gen = counts @ np.bincount(gen_unit, minlength=units)
    c = counts.astype(np.float64)
    pairs_rr = np.einsum("bt,tu,bu->b", c, blocks_rr, c) - c @ diag_rr
    pairs_gg = np.einsum("bt,tu,bu->b", c, blocks_gg, c) - c @ diag_gg
    cross = np.einsum("bt,tu,bu->b", c, blocks_rg, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = pairs_rr / (n_real * (n_real - 1.0)) + pairs_gg / (n_gen * (n_gen - 1.0)) - 2 * cross / (n_real * n_gen)
    value[(n_real < 2) | (n_gen < 2)] = np.nan
    return value


def _block_sums(x, y, x_unit, y_unit, units, chunk: int = 1024):
    """S[t, u] = sum of k(x_i, y_j) over i in unit t, j in unit u; D[t] = sum of k(x_i, x_i) over i in unit t."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x_onehot = np.zeros((len(x), units))
    x_onehot[np.arange(len(x)), x_unit] = 1
    y_onehot = np.zeros((len(y), units))
    y_onehot[np.arange(len(y)), y_unit] = 1
    blocks = np.zeros((units, units))
    for start in range(0, len(x), chunk):
        kernel = polynomial_kernel(x[start:start + chunk], y)
        blocks += x_onehot[start:start + chunk].T @ kernel @ y_onehot
    diagonal = np.bincount(x_unit, weights=(np.einsum("ij,ij->i", x, x) / x.shape[1] + 1) ** 3, minlength=units)
    return blocks, diagonal


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
                                      settings.seed)[0]

    def bootstrap(self, context):
        return kid_bootstrap

    def protocol(self, context) -> dict:
        settings = context.config.eval
        return {"kid_subsets": settings.kid_subsets, "kid_subset_size": settings.kid_subset_size,
                "ci": "full-set U-statistic per resample"}
