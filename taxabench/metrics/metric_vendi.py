"""`vendi`: diversity of each species' generated images relative to its real images (Vendi score ratio).

The Vendi score (Friedman & Dieng, TMLR 2023) of n images is exp of the Shannon entropy of the eigenvalues of K/n,
with K the n x n similarity matrix; here K is the cosine similarity of the images' features from
`eval.diversity_extractor` (default: `eval.clip_model`, the metric model). It is the "effective number of distinct
images": 1 for n identical images, n for n mutually orthogonal ones. A species' value is Vendi(generated) /
Vendi(real): below 1 the generator collapses the species to fewer looks than nature shows, as long-tailed
generation does for tail species. Rank scopes compare the images under each taxon of the rank; the pooled scopes
(overall, rare, common) are the mean over the evaluated species. Needs 2 images on each side of a taxon.
"""

from __future__ import annotations

import numpy as np

from taxabench.metrics.aggregate import summarise_per_taxon_set_metric
from taxabench.metrics.features import one_cpu_thread
from taxabench.metrics.metric_base import (
    Measurement,
    Metric,
    OnDiversityFeatures,
    compared_features,
    diversity_extractor,
)

MIN_IMAGES = 2


def vendi_score(features: np.ndarray) -> float:
    """Vendi score with the cosine-similarity kernel. The nonzero eigenvalues of K/n = X Xᵀ/n equal those of
    Xᵀ X/n, so the smaller of the two (n x n or d x d) is decomposed."""
    x = np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    gram = x @ x.T if n <= x.shape[1] else x.T @ x
    eigenvalues = np.linalg.eigvalsh(gram / n)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


class VendiRatio(OnDiversityFeatures, Metric):
    key = "vendi"
    description = ("Per-species Vendi score (cosine kernel) of generated / real images in eval.diversity_extractor's "
                   "space: < 1 means fewer distinct looks than real.")

    def compute(self, context) -> list[Measurement]:
        name = diversity_extractor(context.config)
        extractor, feature, real, generated = compared_features(context, name, self.key)
        with one_cpu_thread():
            scopes = summarise_per_taxon_set_metric(lambda r, g: vendi_score(g) / vendi_score(r), real, generated,
                                                    context.sets, context.resampling, MIN_IMAGES)
        protocol = {**context.image_protocol(name), "feature": feature, "kernel": "cosine",
                    "value": "Vendi(generated)/Vendi(real) per taxon"}
        return [Measurement(self.key, f"Vendi ratio ({name})", scope, name, extractor.identity, True, protocol)
                for scope in scopes]
