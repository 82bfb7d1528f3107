"""Images in, features out: batched, on the evaluation device, sharded across accelerate processes and gathered."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from rich.progress import Progress

from taxabench.config import DataConfig
from taxabench.data.images import load_image, square
from taxabench.errors import DataError
from taxabench.taxonomy import Record


@dataclass(frozen=True)
class ImageSet:
    """Images to evaluate, all brought to one square size with the dataset's resize mode (`data.resize`)."""

    items: Sequence[Any]  # Records (real) or Paths (generated)
    load: Callable[[Any], Image.Image]

    def __len__(self) -> int:
        return len(self.items)

    def tensor(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (len(indices), 3, S, S)."""
        arrays = [np.asarray(self.load(self.items[i]), dtype=np.uint8) for i in indices]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def real_images(records: Sequence[Record], data: DataConfig) -> ImageSet:
    return ImageSet(records, lambda r: load_image(r, data.image_size, data.resize, data.use_bbox))


def generated_images(paths: Sequence[Path], data: DataConfig) -> ImageSet:
    def load(path: Path) -> Image.Image:
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"cannot read generated image {path}: {error}") from error
        return image if image.size == (data.image_size, data.image_size) else square(image, data.image_size, data.resize)

    return ImageSet(paths, load)


@contextmanager
def one_cpu_thread():
    """Run small CPU linear algebra on one thread. Bootstrap loops do thousands of 128x128 eigendecompositions;
    with two threads on a shared 2-core machine each one was 100x slower (thread synchronisation), and one
    thread also keeps results independent of the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """`auto`: the accelerate process's device (CUDA when present), else the named device."""
    if name == "auto":
        from accelerate import PartialState

        return PartialState().device
    return torch.device(name)


@torch.no_grad()
def extract_features(
    extractor: torch.nn.Module, images: ImageSet, batch_size: int, label: str, show_progress: bool = True
) -> dict[str, np.ndarray]:
    """Features of every image, in order. Under `accelerate launch` each process takes a contiguous shard and the
    shards are gathered, so every process returns the full arrays."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    with state.split_between_processes(list(range(len(images)))) as shard:
        local = _extract(extractor, images, shard, batch_size, label, show_progress and state.is_main_process)
    if state.num_processes == 1:
        return local
    parts = [part for part in gather_object([local]) if part]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _extract(extractor, images: ImageSet, indices: list[int], batch_size: int, label: str,
             show_progress: bool) -> dict[str, np.ndarray]:
    chunks: dict[str, list[np.ndarray]] = {}
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task(label, total=len(indices))
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            for name, value in extractor(images.tensor(batch)).items():
                chunks.setdefault(name, []).append(value.float().cpu().numpy())
            progress.advance(task, len(batch))
    return {name: np.concatenate(parts) for name, parts in chunks.items()}
