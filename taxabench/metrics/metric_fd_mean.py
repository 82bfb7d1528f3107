"""`fd_mean`: FD's mean term ‖μ_real − μ_generated‖², bias-corrected, on `eval.fd_extractor`'s features.

Per species, FD compares 8 or so images per side in ~100 dimensions: each covariance has rank < 8, and the estimate
is dominated by its finite-sample bias, about tr(S_real)/n_real + tr(S_generated)/n_generated. A perfect generator
does not score 0, and one with half the real spread scores *better* than a perfect one
(`tests/test_statistics.py`). This metric keeps the part of FD that can be estimated without bias at those sizes:

    ‖x̄ − ȳ‖² − tr(S_x)/n − tr(S_y)/m,   S the sample covariances (ddof 1),

an unbiased estimate of ‖μ_x − μ_y‖² (E‖x̄ − ȳ‖² = ‖μ_x − μ_y‖² + tr Σ_x/n + tr Σ_y/m). It can be negative, as
KID can; 0 is "the means agree". It sees where a species is drawn, not its spread: read it beside per-species
KID (unbiased, sees spread too) and the all-images FD. Not in the default `eval.metrics`; add it there.
"""

from __future__ import annotations

import numpy as np

from taxabench.metrics.metric_base import SetMetric


def mean_term_unbiased(real, generated, real_weights=None, generated_weights=None) -> float:
    """‖x̄ − ȳ‖² − tr(S_x)/n − tr(S_y)/m (float64); weights count each row that many times (bootstrap resamples)."""

    def moments(x, w):
        x = np.asarray(x, dtype=np.float64)
        w = np.ones(len(x)) if w is None else np.asarray(w, dtype=np.float64)
        n = w.sum()
        mean = w @ x / n
        trace = float(w @ ((x - mean) ** 2).sum(axis=1)) / (n - 1)
        return mean, trace, n

    mean_x, trace_x, n = moments(real, real_weights)
    mean_y, trace_y, m = moments(generated, generated_weights)
    return float(np.sum((mean_x - mean_y) ** 2) - trace_x / n - trace_y / m)


class FdMeanTerm(SetMetric):
    """The bias-corrected mean term of FD between real and generated features of `eval.fd_extractor`."""

    key = "fd_mean"
    description = ("FD's mean term ‖Δμ‖², bias-corrected (unbiased at any sample size) on the FD extractor's "
                   "features: per-species comparisons where per-species FD is mostly bias.")
    higher_is_better = False
    min_per_side = 2

    def display_name(self, extractor: str) -> str:
        return f"‖Δμ‖² bias-corrected ({extractor})"

    def value(self, real, generated, context) -> float:
        return mean_term_unbiased(real, generated)

    def weighted_value(self, real, generated, real_weights, generated_weights, context) -> float:
        return mean_term_unbiased(real, generated, real_weights, generated_weights)

    def protocol(self, context) -> dict:
        return {"estimator": "|mean_r - mean_g|^2 - tr(S_r)/n_r - tr(S_g)/n_g"}
