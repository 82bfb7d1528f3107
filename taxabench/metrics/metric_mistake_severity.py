"""`mistake_severity`: how wrong a wrong image is, as the height of the lowest common ancestor of prediction and truth.

Each image is classified zero-shot among all taxa of a rank (`taxabench.metrics.zero_shot`). Its severity at rank r
is the number of ranks between r and the lowest common ancestor of the predicted and the true taxon: 0 when the
prediction is right, 1 when it is a sibling (a wrong species of the right genus), up to the rank's depth when they
differ already at the top rank (the "mistake severity" of Bertinetto et al., CVPR 2020, "Making Better Mistakes").
Per-rank scopes classify among that rank's taxa; the pooled scopes (overall, rare, common) use the evaluated rank.
Lower is better; held-out real images give the ceiling row.
"""

from __future__ import annotations

import numpy as np

from taxabench.metrics.zero_shot import ZeroShotMetric, ancestor_indices, classify_per_rank


def lca_height(ancestors: np.ndarray, predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Ranks between the classified rank and the lowest common ancestor of `predicted` and `true` candidates
    (`ancestors`: `zero_shot.ancestor_indices` of the rank's candidates)."""
    agree = ancestors[predicted] == ancestors[true]
    shared = np.cumprod(agree, axis=1).sum(axis=1)  # levels shared from the top down
    return (ancestors.shape[1] - shared).astype(np.float64)


class MistakeSeverity(ZeroShotMetric):
    key = "mistake_severity"
    description = ("Ranks up to the lowest common ancestor of the zero-shot prediction and the true taxon "
                   "(0 = right; eval.clip_model); real images give the ceiling row.")

    def values(self, context, sets, side) -> dict[str, dict[str, np.ndarray]]:
        ranks = classify_per_rank(context, sets, side, self.key)
        by_rank = {rank: c.candidates for rank, c in ranks.items()}
        return {self.key: {rank: lca_height(ancestor_indices(c.candidates, by_rank), c.predicted, c.true_index)
                           for rank, c in ranks.items()}}

    def describe(self, context, quantity):
        return self.zero_shot_description(context, "mistake severity", False, candidates="all taxa of the rank",
                                          unit="ranks to the lowest common ancestor")
