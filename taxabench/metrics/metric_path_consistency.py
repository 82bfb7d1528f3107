"""`path_consistency`: whether an image's predictions at every rank form one path of the taxonomy.

Each image is classified zero-shot, independently, among all taxa of every rank (`taxabench.metrics.zero_shot`).
Its path down to rank r is consistent when each rank's prediction is a child of the prediction one rank above, from
the top rank to r (an image predicted as the right species but a wrong family is not). Value: percent of images;
the pooled scopes (overall, rare, common) judge the whole path down to the evaluated rank. Held-out real images give
the ceiling row.
"""

from __future__ import annotations

import numpy as np

from taxabench.metrics.zero_shot import ZeroShotMetric, ancestor_indices, classify_per_rank


def consistent_paths(predicted: list[np.ndarray], parents: list[np.ndarray]) -> list[np.ndarray]:
    """`predicted[q]`: each image's predicted candidate at rank q (0 = top); `parents[q]`: each candidate of rank q's
    parent among rank q-1's candidates (`parents[0]` unused). Returns, per rank q, whether each image's predictions
    from the top down to q form a path."""
    consistent = [np.ones(len(predicted[0]), dtype=bool)]
    for q in range(1, len(predicted)):
        consistent.append(consistent[-1] & (parents[q][predicted[q]] == predicted[q - 1]))
    return consistent


class PathConsistency(ZeroShotMetric):
    key = "path_consistency"
    description = ("Percent of images whose per-rank zero-shot predictions form a path of the tree "
                   "(eval.clip_model); real images give the ceiling row.")

    def values(self, context, sets, side) -> dict[str, dict[str, np.ndarray]]:
        ranks = classify_per_rank(context, sets, side, self.key)
        by_rank = {rank: c.candidates for rank, c in ranks.items()}
        classifications = list(ranks.values())
        parents = [ancestor_indices(c.candidates, by_rank)[:, max(q - 1, 0)] for q, c in enumerate(classifications)]
        paths = consistent_paths([c.predicted for c in classifications], parents)
        return {self.key: {rank: 100.0 * path.astype(np.float64) for rank, path in zip(ranks, paths)}}

    def describe(self, context, quantity):
        return self.zero_shot_description(context, "path consistency", True, candidates="all taxa of each rank",
                                          path="top rank down to the scope's rank")
