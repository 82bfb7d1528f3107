"""Zero-shot classification of images among the taxa of each rank, shared by the taxonomy-aware metrics.

At rank r the candidates are all taxa of rank r in the dataset's taxonomy, each as its BioCLIP caption (lineage cut
after r), embedded by `eval.clip_model`; an image's similarity to a candidate is the cosine of their embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from taxabench.metrics.metric_base import PerImageMetric
from taxabench.taxonomy import Taxon, bioclip_caption


@dataclass
class RankClassification:
    """One rank's zero-shot classification of a set of images."""

    candidates: list[Taxon]  # every taxon of the rank, sorted by id
    similarity: np.ndarray  # (images, candidates) cosine similarities
    true_index: np.ndarray  # each image's own taxon among the candidates

    @property
    def predicted(self) -> np.ndarray:
        return self.similarity.argmax(axis=1)


def classify_per_rank(context, sets, side: str, metric_key: str) -> dict[str, RankClassification]:
    """Each rank's classification (top rank down to the evaluated rank) of the images of `side` (see
    `PerImageMetric.values`), with the features `eval.clip_model` provides for `metric_key`."""
    model_name = context.config.eval.clip_model
    above = context.config.data.lineage_above  # ranks the dataset lacks above its top one (BioCLIP captions)
    model = context.extractor(model_name)
    images = context.features(model_name, side)[model.feature_for(metric_key)]
    taxonomy = context.data.taxonomy
    result = {}
    for rank in sets.ranks:
        candidates = taxonomy.taxa(rank)
        index = {t.id: i for i, t in enumerate(candidates)}
        taxa, taxon_of_image = sets.gen_taxa(rank)
        captions = context.text_embeddings(model_name, [bioclip_caption(t.ranks, t.lineage, above) for t in candidates])
        result[rank] = RankClassification(candidates, images @ captions.T,
                                          np.array([index[t.id] for t in taxa])[taxon_of_image])
    return result


def ancestor_indices(candidates: list[Taxon], taxa_by_rank: dict[str, list[Taxon]]) -> np.ndarray:
    """(candidates, depth) int matrix: column q is the index of each candidate's ancestor at rank q (0 = top) among
    `taxa_by_rank[rank q]`, so two taxa share their first m levels where their first m columns agree."""
    depth = len(candidates[0].lineage) if candidates else 0
    ranks = candidates[0].ranks if candidates else ()
    index = [{t.lineage: i for i, t in enumerate(taxa_by_rank[rank])} for rank in ranks]
    return np.array([[index[q][c.lineage[:q + 1]] for q in range(depth)] for c in candidates],
                    dtype=np.int64).reshape(len(candidates), depth)


class ZeroShotMetric(PerImageMetric):
    """A per-image metric of `eval.clip_model`'s zero-shot classification (`classify_per_rank`): taxa_accuracy,
    mistake_severity, path_consistency."""

    def extractors(self, config) -> list[str]:
        return [config.eval.clip_model]

    def zero_shot_description(self, context, display: str, higher_is_better: bool,
                              **protocol: Any) -> tuple[str, str, str, bool, dict[str, Any]]:
        """`describe`'s answer: `display` named after the metric model, its weights, and the protocol (the image
        handling, the caption form, and `protocol`)."""
        model_name = context.config.eval.clip_model
        return (f"{display} ({model_name})", model_name, context.extractor(model_name).identity, higher_is_better,
                {**context.image_protocol(model_name), "caption": "bioclip-taxonomic", **protocol})
