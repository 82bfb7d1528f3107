"""`taxa_accuracy`: zero-shot classification of each generated image among the taxa of every rank.

At rank r the candidates are all taxa of rank r in the dataset's taxonomy, each as its BioCLIP caption (lineage cut
after r); an image is correct when the best-matching caption (top-1), or one of the k best (top-5), is its own
taxon's. This asks "is this image recognisably *this* genus, *this* species?". Values are percentages. Top-5 is
omitted at ranks with 5 taxa or fewer, where it is trivially 100%. Held-out real images give the ceiling row.
"""

from __future__ import annotations

import numpy as np

from taxabench.metrics.zero_shot import ZeroShotMetric, classify_per_rank

TOP_K = 5
QUANTITIES = {"top1": 1, "top5": TOP_K}


def zero_shot_hits(image_embeddings: np.ndarray, caption_embeddings: np.ndarray, true_index: np.ndarray,
                   k: int) -> np.ndarray:
    """1.0 where the true caption is among the k most similar captions of each image, else 0.0."""
    return hits_from_similarity(image_embeddings @ caption_embeddings.T, true_index, k)


def hits_from_similarity(similarity: np.ndarray, true_index: np.ndarray, k: int) -> np.ndarray:
    true_score = similarity[np.arange(len(similarity)), true_index]
    # rank of the true caption = number of captions scoring strictly higher (ties count in the image's favour)
    better = (similarity > true_score[:, None]).sum(axis=1)
    return (better < k).astype(np.float64)


class TaxaAccuracy(ZeroShotMetric):
    key = "taxa_accuracy"
    description = ("Zero-shot top-1 / top-5 accuracy of generated images among the taxa of each rank "
                   "(eval.clip_model); real images give the ceiling row.")

    def values(self, context, sets, side) -> dict[str, dict[str, np.ndarray]]:
        ranks = classify_per_rank(context, sets, side, self.key)
        return {quantity: {rank: 100.0 * hits_from_similarity(c.similarity, c.true_index, k)
                           for rank, c in ranks.items()}
                for quantity, k in QUANTITIES.items()}

    def describe(self, context, quantity):
        k = QUANTITIES[quantity]
        return self.zero_shot_description(context, f"top-{k} accuracy", True, candidates="all taxa of the rank", k=k)

    def keep(self, context, quantity, scope) -> bool:
        rank = scope.scope if scope.scope in context.sets.ranks else context.sets.rank
        return QUANTITIES[quantity] == 1 or len(context.data.taxonomy.taxa(rank)) > QUANTITIES[quantity]
