"""`copying`: how close each generated image is to its nearest training image, against held-out real images.

Memorisation shows first in the tail: a species with 1-5 training images invites a generator to reproduce them.
For every generated image, the cosine similarity of its features (`eval.diversity_extractor`) to the nearest image
of the whole training split (any species); the reference is the same quantity for the held-out real images of the
evaluated species, which are new photographs, not copies.
- `nn_train_similarity`: the mean nearest-training similarity (the ceiling row is the real images' reference);
- `copy_fraction`: percent of images whose similarity exceeds the `eval.copy_quantile` quantile (default 0.95) of
  the reference similarities of all evaluated real images. The threshold is therefore a property of the real
  data: by construction about 5% of real images exceed it (the ceiling row shows the exact rate per bin), and a
  generator far above that rate in a bin is closer to its training images than new real photographs are.
The threshold is recorded in every row's protocol. Lower is better for both.
"""

from __future__ import annotations

import numpy as np

from taxabench.metrics.metric_base import OnDiversityFeatures, PerImageMetric, diversity_extractor

CHUNK = 4096


def nearest_similarity(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each row's highest cosine similarity to any row of `reference`."""
    x = _normalised(features)
    ref = _normalised(reference)
    return np.concatenate([(x[i:i + CHUNK] @ ref.T).max(axis=1) for i in range(0, len(x), CHUNK)]) if len(x) else \
        np.zeros(0)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Copying(OnDiversityFeatures, PerImageMetric):
    key = "copying"
    description = ("Nearest-training-image similarity of generated images and the percent of near-copies (above "
                   "the eval.copy_quantile of held-out real images' own); real images give the reference row.")

    def _similarities(self, context, side: str) -> np.ndarray:
        name = diversity_extractor(context.config)
        feature = context.extractor(name).feature_for(self.key)
        return nearest_similarity(context.features(name, side)[feature], context.features(name, "train")[feature])

    def threshold(self, context) -> float:
        return float(np.quantile(self._similarities(context, "real"), context.config.eval.copy_quantile))

    def values(self, context, sets, side) -> dict[str, dict[str, np.ndarray]]:
        similarity = self._similarities(context, side)
        copies = 100.0 * (similarity > self.threshold(context))
        return {"nn_train_similarity": dict.fromkeys(sets.ranks, similarity),
                "copy_fraction": dict.fromkeys(sets.ranks, copies)}

    def describe(self, context, quantity):
        name = diversity_extractor(context.config)
        extractor = context.extractor(name)
        protocol = {**context.image_protocol(name), "feature": extractor.feature_for(self.key),
                    "similarity": "cosine to the nearest training image"}
        if quantity == "copy_fraction":
            protocol |= {"quantile": context.config.eval.copy_quantile, "threshold": round(self.threshold(context), 6)}
            return f"near-copies ({name})", name, extractor.identity, False, protocol
        return f"nearest-training similarity ({name})", name, extractor.identity, False, protocol
