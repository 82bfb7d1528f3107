"""`lpips`: perceptual distance between generated and real images of the same taxon (fidelity, lower is better),
and between generated images of the same taxon (`lpips_diversity`, higher means more varied).

The group's protocol: VGG backbone, images resized to a common size (`eval.lpips_size`). Which real images a
generated image is compared with is `eval.lpips_pairing`:
- `all` (taxabench's default): up to `eval.lpips_max_real` real images of its own evaluated taxon (a seeded subset
  when there are more); the mean is its fidelity value;
- `index` (the pairing of the paper group's LPIPS script): the i-th generated image of a taxon against the i-th of
  those real images (taken again from the first when the taxon has fewer real than generated images).
Its diversity value is the mean distance to the other generated images of the same taxon. Per-image values are then
summarised like every other metric (overall, per rank, rare/common).

Distances come from `LpipsVggExtractor` embeddings: one network pass per image, one float64 Gram matrix per taxon.
An embedding is 128 MB at 512 px, so a taxon's embeddings are kept in memory only up to `MEMORY_BYTES`; beyond that
they go to a temporary file beside the feature cache and the Gram matrix is read from it a slice of dimensions at a
time (peak memory stays near `MEMORY_BYTES` plus a batch, whatever the number of images per taxon).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from taxabench.metrics.aggregate import summarise_per_image
from taxabench.metrics.cache import features_dir, load_features, save_features
from taxabench.metrics.metric_base import Measurement, Metric

EXTRACTOR = "lpips-vgg"
MEMORY_BYTES = 1 << 30  # a taxon's embeddings above this go to a temporary file
BATCH_BYTES = 1 << 28  # embeddings per network batch (activations are about twice that)
GRAM_CHUNK = 1 << 18  # dimensions per float64 product


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
        protocol = {**context.image_protocol(EXTRACTOR), "pairing": settings.lpips_pairing,
                    "max_real": settings.lpips_max_real, "backbone": "imagenet" if trained else "untrained"}
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
                  "pairing": settings.lpips_pairing, "max_real": settings.lpips_max_real, "seed": settings.seed}
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
        distances = _lpips_matrix(extractor, [(generated_images, gen_rows), (real_images, real_rows)],
                                  settings.batch_size)
        n_gen = len(gen_rows)
        fidelity = diversity = np.full(n_gen, np.nan)
        if len(real_rows):
            to_real = distances[:n_gen, n_gen:]
            if settings.lpips_pairing == "index":
                fidelity = to_real[np.arange(n_gen), np.arange(n_gen) % len(real_rows)]
            else:
                fidelity = to_real.mean(axis=1)
        if n_gen > 1:
            diversity = distances[:n_gen, :n_gen].sum(axis=1) / (n_gen - 1)
        return gen_rows, fidelity, diversity


@torch.no_grad()
def _lpips_matrix(extractor, parts: list[tuple], batch_size: int) -> np.ndarray:
    """LPIPS between all images of `parts` ((image set, rows) pairs, stacked in order), from a float64 Gram matrix.

    ||a||^2 + ||b||^2 - 2 a.b is exact here because the Gram matrix is accumulated in float64 (a float32 product
    over the 32 M dimensions of a 512 px embedding reads 0.2-2% too high).
    """
    batches = [(images, rows[i:i + 1]) for images, rows in parts for i in range(len(rows))]
    if not batches:
        return np.zeros((0, 0))
    total = len(batches)
    with tempfile.TemporaryDirectory(dir=_scratch_dir()) as scratch:
        store, done = None, 0
        while done < total:
            # the first image tells the embedding size, and so how many fit in one batch
            size = 1 if store is None else min(batch_size, max(1, BATCH_BYTES // (4 * store.dimensions)))
            chunk = batches[done:done + size]
            images = chunk[0][0]
            rows = [int(item[1][0]) for item in chunk if item[0] is images]  # one image set per batch
            embedding = extractor(images.tensor(rows))["lpips"].cpu().numpy()
            if store is None:
                store = EmbeddingStore(total, embedding.shape[1], Path(scratch) / "embeddings.f32")
            store.append(embedding)
            done += len(rows)
        gram = np.zeros((total, total))
        for start in range(0, store.dimensions, GRAM_CHUNK):
            block = store.columns(start, min(start + GRAM_CHUNK, store.dimensions))
            gram += block @ block.T
        store.close()
    norms = np.diag(gram)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)


class EmbeddingStore:
    """A taxon's embeddings (rows x dimensions float32): in memory up to `MEMORY_BYTES`, else in a file read back a
    slice of dimensions at a time with plain reads (not a memory map, whose pages would count as the process's)."""

    def __init__(self, rows: int, dimensions: int, path: Path):
        self.rows, self.dimensions, self.filled = rows, dimensions, 0
        self.array = np.empty((rows, dimensions), np.float32) if rows * dimensions * 4 <= MEMORY_BYTES else None
        self.handle = None if self.array is not None else open(path, "w+b")  # noqa: SIM115 (closed in close())

    def append(self, embeddings: np.ndarray) -> None:
        if self.array is not None:
            self.array[self.filled:self.filled + len(embeddings)] = embeddings
        else:
            self.handle.write(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
        self.filled += len(embeddings)

    def columns(self, start: int, end: int) -> np.ndarray:
        """Dimensions start..end of every row, as float64."""
        if self.array is not None:
            return self.array[:, start:end].astype(np.float64)
        self.handle.flush()
        width = end - start
        block = np.empty((self.rows, width), np.float64)
        for row in range(self.rows):
            data = os.pread(self.handle.fileno(), width * 4, (row * self.dimensions + start) * 4)
            block[row] = np.frombuffer(data, dtype=np.float32)
        return block

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _scratch_dir() -> Path:
    folder = features_dir() / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
