"""`lpips`: perceptual distance between generated and real images of the same taxon (fidelity, lower is better),
and between generated images of the same taxon (`lpips_diversity`, higher means more varied).

The group's protocol: VGG backbone, images resized to a common size (`eval.lpips_size`). Each generated image is
compared with up to `eval.lpips_max_real` real images of its own evaluated taxon (a seeded subset when there are
more) and the mean is its fidelity value; its diversity value is the mean distance to the other generated images
of the same taxon. Per-image values are then summarised like every other metric (overall, per rank, rare/common).
Distances come from `LpipsVggExtractor` embeddings: one network pass per image, one Gram matrix per taxon.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from taxabench.metrics.aggregate import summarise_per_image
from taxabench.metrics.cache import load_features, save_features
from taxabench.metrics.extractor_lpips_vgg import pairwise_lpips
from taxabench.metrics.metric_base import Measurement, Metric

EXTRACTOR = "lpips-vgg"


class Lpips(Metric):
    key = "lpips"
    description = "LPIPS-VGG between generated and real images of the same taxon, and among generated images."

    def extractors(self, config) -> list[str]:
        return [EXTRACTOR]

    def compute(self, context) -> list[Measurement]:
        settings, sets = context.config.eval, context.sets
        extractor = context.extractor(EXTRACTOR)
        fidelity, diversity = self._per_image(context, extractor)
        trained = extractor.trained
        label = "VGG" if trained else "VGG, untrained backbone"
        protocol = {**context.image_protocol(EXTRACTOR), "max_real": settings.lpips_max_real,
                    "backbone": "imagenet" if trained else "untrained"}
        measurements = []
        for metric, name, values, higher, uses_real in (
            ("lpips", f"LPIPS ({label})", fidelity, False, True),
            ("lpips_diversity", f"LPIPS diversity ({label})", diversity, True, False),
        ):
            per_rank = dict.fromkeys(sets.ranks, values)
            for scope in summarise_per_image(per_rank, sets, context.resampling, uses_real=uses_real):
                measurements.append(Measurement(metric, name, scope, EXTRACTOR, extractor.identity, higher, protocol))
        return measurements

    def _per_image(self, context, extractor) -> tuple[np.ndarray, np.ndarray]:
        """Fidelity and diversity of every generated image, cached like features (same kind of key)."""
        settings, sets, data = context.config.eval, context.sets, context.config.data
        fields = {"extractor": EXTRACTOR, "weights": extractor.identity, "protocol": extractor.protocol,
                  "data": context.data.fingerprint(), "split": data.eval_split, "samples": sets.generated.manifest,
                  "image_size": data.image_size, "resize": data.resize, "use_bbox": data.use_bbox,
                  "max_real": settings.lpips_max_real, "seed": settings.seed}
        cached = load_features("lpips", fields, len(sets.gen_unit))
        if cached is not None:
            return cached["fidelity"], cached["diversity"]
        fidelity = np.full(len(sets.gen_unit), np.nan)
        diversity = np.full(len(sets.gen_unit), np.nan)
        real_images, generated_images = context.real_images, context.generated_images
        state = PartialState()
        with state.split_between_processes(list(range(len(sets.units)))) as my_units:
            results = [self._unit(unit, extractor, context, real_images, generated_images) for unit in my_units]
        if state.num_processes > 1:
            results = gather_object(results)
        for gen_rows, unit_fidelity, unit_diversity in results:
            fidelity[gen_rows], diversity[gen_rows] = unit_fidelity, unit_diversity
        if state.is_main_process:
            save_features("lpips", fields, {"fidelity": fidelity, "diversity": diversity})
        return fidelity, diversity

    def _unit(self, unit, extractor, context, real_images, generated_images):
        """(generated rows, fidelity per row, diversity per row) of one evaluated taxon."""
        settings, sets = context.config.eval, context.sets
        gen_rows = np.flatnonzero(sets.gen_unit == unit)
        real_rows = np.flatnonzero(sets.real_unit == unit)
        if len(real_rows) > settings.lpips_max_real:  # seeded per taxon: independent of sharding and order
            rng = np.random.default_rng([settings.seed, unit])
            real_rows = np.sort(rng.choice(real_rows, settings.lpips_max_real, replace=False))
        gen = _embed(extractor, generated_images, gen_rows, settings.batch_size)
        fidelity = diversity = np.full(len(gen_rows), np.nan)
        if len(real_rows):
            real = _embed(extractor, real_images, real_rows, settings.batch_size)
            fidelity = pairwise_lpips(gen, real).mean(dim=1).numpy()
        if len(gen_rows) > 1:
            diversity = (pairwise_lpips(gen, gen).sum(dim=1) / (len(gen_rows) - 1)).numpy()
        return gen_rows, fidelity, diversity


@torch.no_grad()
def _embed(extractor, images, rows: np.ndarray, batch_size: int) -> torch.Tensor:
    parts = [extractor(images.tensor(rows[i:i + batch_size].tolist()))["lpips"].cpu()
             for i in range(0, len(rows), batch_size)]
    return torch.cat(parts)
