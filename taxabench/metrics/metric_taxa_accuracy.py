"""`taxa_accuracy`: zero-shot classification of each generated image among the taxa of every rank.

At rank r the candidates are all taxa of rank r in the dataset's taxonomy, each as its BioCLIP caption (lineage cut
after r); an image is correct when the best-matching caption (top-1), or one of the k best (top-5), is its own
taxon's. This asks "is this image recognisably *this* genus, *this* species?". Values are percentages. Top-5 is
omitted at ranks with 5 taxa or fewer, where it is trivially 100%.
"""

from __future__ import annotations

import numpy as np

from taxabench.metrics.aggregate import summarise_per_image
from taxabench.metrics.metric_base import Measurement, Metric
from taxabench.taxonomy import bioclip_caption

TOP_K = 5


def zero_shot_hits(image_embeddings: np.ndarray, caption_embeddings: np.ndarray, true_index: np.ndarray,
                   k: int) -> np.ndarray:
    """1.0 where the true caption is among the k most similar captions of each image, else 0.0."""
    similarity = image_embeddings @ caption_embeddings.T
    true_score = similarity[np.arange(len(similarity)), true_index]
    # rank of the true caption = number of captions scoring strictly higher (ties count in the image's favour)
    better = (similarity > true_score[:, None]).sum(axis=1)
    return (better < k).astype(np.float64)


class TaxaAccuracy(Metric):
    key = "taxa_accuracy"
    description = "Zero-shot top-1 / top-5 accuracy of generated images among the taxa of each rank (eval.clip_model)."

    def extractors(self, config) -> list[str]:
        return [config.eval.clip_model]

    def compute(self, context) -> list[Measurement]:
        model_name = context.config.eval.clip_model
        above = context.config.data.lineage_above  # ranks the dataset lacks above its top one (BioCLIP captions)
        model = context.extractor(model_name)
        images = context.features(model_name, "generated")[model.feature_for(self.key)]
        sets, taxonomy = context.sets, context.data.taxonomy
        hits: dict[int, dict[str, np.ndarray]] = {1: {}, TOP_K: {}}
        candidates_per_rank = {}
        for rank in sets.ranks:
            candidates = taxonomy.taxa(rank)
            candidates_per_rank[rank] = len(candidates)
            index = {t.id: i for i, t in enumerate(candidates)}
            taxa, taxon_of_image = sets.gen_taxa(rank)
            true_index = np.array([index[t.id] for t in taxa])[taxon_of_image]
            captions = context.text_embeddings(model_name, [bioclip_caption(t.ranks, t.lineage, above) for t in candidates])
            for k in hits:
                hits[k][rank] = 100.0 * zero_shot_hits(images, captions, true_index, k)
        measurements = []
        for k, metric in ((1, "top1"), (TOP_K, "top5")):
            protocol = {**context.image_protocol(model_name), "caption": "bioclip-taxonomic",
                        "candidates": "all taxa of the rank", "k": k}
            for scope in summarise_per_image(hits[k], sets, context.resampling):
                rank = scope.scope if scope.scope in sets.ranks else sets.rank
                if k > 1 and candidates_per_rank[rank] <= k:
                    continue
                measurements.append(Measurement(metric, f"top-{k} accuracy ({model_name})", scope, model_name,
                                                model.identity, True, protocol))
        return measurements
