"""`cmmd`: CLIP maximum mean discrepancy (Jayasumana et al., CVPR 2024, "Rethinking FID").

MMD² between the real and generated embeddings of CLIP ViT-L/14@336 (`clip-vit-l14-336`), with the Gaussian RBF
kernel k(x, y) = exp(-||x - y||² / (2σ²)), σ = 10, scaled by 1000, as their reference code computes it: the mean of
each kernel matrix including its diagonal (k_xx + k_yy - 2 k_xy). Unlike FD it assumes no normal distribution and
is unbiased in the sense that matters for small sets (no n-dependent bias from covariance estimation). Named "CMMD"
with those weights, "MMD (<extractor>, σ=10, x1000)" on any other extractor (`eval.cmmd_extractor`).
"""

from __future__ import annotations

import numpy as np
import torch

from taxabench.metrics.metric_base import SetMetric

SIGMA = 10.0
SCALE = 1000.0
CMMD_EXTRACTOR = "clip-vit-l14-336"


def mmd_rbf(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None = None,
            y_weights: np.ndarray | None = None, sigma: float = SIGMA, scale: float = SCALE) -> float:
    """scale x (k_xx + k_yy - 2 k_xy), each term the (weighted) mean of a kernel matrix, diagonal included."""
    a = torch.as_tensor(np.asarray(x, dtype=np.float64))
    b = torch.as_tensor(np.asarray(y, dtype=np.float64))
    wa = torch.as_tensor(np.ones(len(a)) if x_weights is None else np.asarray(x_weights, dtype=np.float64))
    wb = torch.as_tensor(np.ones(len(b)) if y_weights is None else np.asarray(y_weights, dtype=np.float64))
    wa, wb = wa / wa.sum(), wb / wb.sum()
    gamma = 1.0 / (2.0 * sigma**2)

    def mean_kernel(p, q, wp, wq):
        squared = torch.cdist(p, q, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        return float(wp @ torch.exp(-gamma * squared) @ wq)

    return scale * (mean_kernel(a, a, wa, wa) + mean_kernel(b, b, wb, wb) - 2 * mean_kernel(a, b, wa, wb))


class Cmmd(SetMetric):
    key = "cmmd"
    description = "CMMD: RBF-kernel MMD (σ=10, x1000) on CLIP ViT-L/14@336 embeddings (eval.cmmd_extractor)."
    higher_is_better = False
    min_per_side = 2

    def extractor_name(self, config) -> str:
        return config.eval.cmmd_extractor

    def display_name(self, extractor: str) -> str:
        return "CMMD" if extractor == CMMD_EXTRACTOR else f"MMD ({extractor}, σ=10, x1000)"

    def value(self, real, generated, context) -> float:
        return mmd_rbf(real, generated)

    def weighted_value(self, real, generated, real_weights, generated_weights, context) -> float:
        return mmd_rbf(real, generated, real_weights, generated_weights)

    def protocol(self, context):
        return {"kernel": "rbf", "sigma": SIGMA, "scale": SCALE, "estimator": "mean incl. diagonal"}
