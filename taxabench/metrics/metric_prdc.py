"""`prdc`: precision, recall, density and coverage of the generated images (Naeem et al., ICML 2020), k-NN based.

Each real image's k-NN ball has the radius of its k-th nearest other real image (Euclidean, in the features of
`eval.diversity_extractor`; `eval.prdc_k`, default 5 as in the paper); likewise for generated images.
- precision: fraction of generated images inside some real ball (fidelity);
- recall: fraction of real images inside some generated ball (diversity);
- density: how many real balls hold each generated image, / k, averaged (fidelity that counts neighbours; 1 for
  samples distributed like the real images, in expectation);
- coverage: fraction of real images whose ball holds a generated image (diversity, robust to outliers).
All four in percent. Overall, rare and common compare the pooled images of those species; rank scopes each taxon
of the rank that has k+1 images on each side. The bootstrap resamples taxa; a resample's balls are those of its
distinct images, each image then counting as many times as its taxon was drawn (duplicates would have radius 0).
"""

from __future__ import annotations

import numpy as np
import torch

from taxabench.metrics.aggregate import summarise_set_metric
from taxabench.metrics.features import one_cpu_thread
from taxabench.metrics.metric_base import (
    Measurement,
    Metric,
    OnDiversityFeatures,
    compared_features,
    diversity_extractor,
)

QUANTITIES = ("precision", "recall", "density", "coverage")
CHUNK = 4096  # rows of a distance matrix held at once
MAX_MATRIX = 50_000_000  # float64 distances held at once when all three matrices fit (400 MB)


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances computed directly, not through |a|² + |b|² - 2ab: the matrix-product shortcut moves
    a neighbour that sits exactly on a ball's radius (a point of both sets) to either side of it."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _kth_neighbour_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (index 0 of the sorted distances is the row itself)."""
    return torch.cat([_distances(x[i:i + CHUNK], x).topk(k + 1, largest=False).values[:, k]
                      for i in range(0, len(x), CHUNK)])


def prdc(real: np.ndarray, generated: np.ndarray, k: int, real_weights: np.ndarray | None = None,
         generated_weights: np.ndarray | None = None) -> dict[str, float]:
    """The four values (fractions, not percent) of distinct `real` and `generated` feature rows, each row counted
    `weights` times in the averages (1 by default: the paper's definitions)."""
    r = torch.as_tensor(np.asarray(real, dtype=np.float64))
    g = torch.as_tensor(np.asarray(generated, dtype=np.float64))
    if len(r) * (len(r) + 2 * len(g)) + len(g) ** 2 <= MAX_MATRIX:
        return _prdc_from_distances(_distances(r, r), _distances(g, g), _distances(r, g), k, real_weights,
                                    generated_weights)
    rw, gw = _weights(real_weights, len(r)), _weights(generated_weights, len(g))
    real_radius, gen_radius = _kth_neighbour_distance(r, k), _kth_neighbour_distance(g, k)
    in_real_ball = torch.zeros(len(g), dtype=torch.bool)
    real_balls_holding = torch.zeros(len(g), dtype=torch.float64)
    in_gen_ball = torch.empty(len(r), dtype=torch.bool)
    covered = torch.empty(len(r), dtype=torch.bool)
    for i in range(0, len(r), CHUNK):
        distance = _distances(r[i:i + CHUNK], g)  # (real chunk, generated)
        inside = distance < real_radius[i:i + CHUNK, None]
        in_real_ball |= inside.any(dim=0)
        real_balls_holding += (inside * rw[i:i + CHUNK, None]).sum(dim=0)
        in_gen_ball[i:i + CHUNK] = (distance < gen_radius[None, :]).any(dim=1)
        covered[i:i + CHUNK] = inside.any(dim=1)
    return _summary(rw, gw, in_real_ball, real_balls_holding, in_gen_ball, covered, k)


def _weights(weights: np.ndarray | None, n: int) -> torch.Tensor:
    return torch.as_tensor(np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64))


def _prdc_from_distances(real_real, gen_gen, real_gen, k, real_weights=None, generated_weights=None):
    """`prdc` from the three distance matrices of the rows (real x real, generated x generated, real x generated):
    a bootstrap computes them once and indexes each resample's rows."""
    rw, gw = _weights(real_weights, len(real_real)), _weights(generated_weights, len(gen_gen))
    real_radius = real_real.topk(k + 1, dim=1, largest=False).values[:, k]
    gen_radius = gen_gen.topk(k + 1, dim=1, largest=False).values[:, k]
    inside = real_gen < real_radius[:, None]
    return _summary(rw, gw, inside.any(dim=0), (inside * rw[:, None]).sum(dim=0),
                    (real_gen < gen_radius[None, :]).any(dim=1), inside.any(dim=1), k)


def _summary(rw, gw, in_real_ball, real_balls_holding, in_gen_ball, covered, k) -> dict[str, float]:
    return {
        "precision": float((gw * in_real_ball).sum() / gw.sum()),
        "recall": float((rw * in_gen_ball).sum() / rw.sum()),
        "density": float((gw * real_balls_holding).sum() / gw.sum() / rw.mean() / k),
        "coverage": float((rw * covered).sum() / rw.sum()),
    }


def prdc_bootstrap(real, generated, real_unit, gen_unit, counts, k: int) -> dict[str, np.ndarray]:
    """Each quantity's bootstrap replicates (`aggregate.SetBootstrap`'s arguments): the distances are computed once
    (when they fit in memory), each resample keeps its distinct rows weighted by their taxon's count."""
    r = torch.as_tensor(np.asarray(real, dtype=np.float64))
    g = torch.as_tensor(np.asarray(generated, dtype=np.float64))
    small = len(r) * (len(r) + 2 * len(g)) + len(g) ** 2 <= MAX_MATRIX
    matrices = (_distances(r, r), _distances(g, g), _distances(r, g)) if small else None
    out = {quantity: np.full(len(counts), np.nan) for quantity in QUANTITIES}
    for b, count in enumerate(counts):
        real_weights, gen_weights = count[real_unit], count[gen_unit]
        keep_real, keep_gen = np.flatnonzero(real_weights > 0), np.flatnonzero(gen_weights > 0)
        if min(len(keep_real), len(keep_gen)) <= k:
            continue
        if matrices is not None:
            rr, gg, rg = matrices
            kr, kg = torch.as_tensor(keep_real), torch.as_tensor(keep_gen)
            values = _prdc_from_distances(rr[kr][:, kr], gg[kg][:, kg], rg[kr][:, kg], k, real_weights[keep_real],
                                          gen_weights[keep_gen])
        else:
            values = prdc(real[keep_real], generated[keep_gen], k, real_weights[keep_real], gen_weights[keep_gen])
        for quantity in QUANTITIES:
            out[quantity][b] = 100.0 * values[quantity]
    return out


class Prdc(OnDiversityFeatures, Metric):
    key = "prdc"
    description = ("Precision / recall / density / coverage (k-NN, k = eval.prdc_k) of generated vs real images in "
                   "eval.diversity_extractor's space.")

    def compute(self, context) -> list[Measurement]:
        name = diversity_extractor(context.config)
        extractor, feature, real, generated = compared_features(context, name, self.key)
        k = context.config.eval.prdc_k
        protocol = {**context.image_protocol(name), "feature": feature, "k": k, "distance": "euclidean"}
        bootstraps: dict[tuple, dict[str, np.ndarray]] = {}

        def replicates(r, g, real_unit, gen_unit, counts, quantity):
            # one bootstrap per pooled scope serves the four quantities: keyed by what identifies the scope
            key = (len(r), len(g), real_unit.tobytes(), gen_unit.tobytes(), counts.tobytes())
            if key not in bootstraps:
                bootstraps[key] = prdc_bootstrap(r, g, real_unit, gen_unit, counts, k)
            return bootstraps[key][quantity]

        measurements = []
        for quantity in QUANTITIES:
            with one_cpu_thread():
                scopes = summarise_set_metric(
                    lambda r, g, quantity=quantity: 100.0 * prdc(r, g, k)[quantity],
                    lambda *args, quantity=quantity: replicates(*args, quantity),
                    real, generated, context.sets, context.resampling, context.pooled_resampling, k + 1)
            measurements += [Measurement(quantity, f"{quantity} ({name}, k={k})", scope, name, extractor.identity,
                                         True, protocol) for scope in scopes]
        return measurements
