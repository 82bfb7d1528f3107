"""Images as tensors: decode, optional bounding-box crop, square resize (center-crop or pad)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from taxabench.errors import DataError
from taxabench.taxonomy import Record

ResizeMode = Literal["center-crop", "pad"]


def load_image(record: Record, size: int, resize: ResizeMode = "center-crop", use_bbox: bool = False) -> Image.Image:
    """The record's image as an RGB square of `size` pixels; an unreadable file is a `DataError` naming it."""
    try:
        with Image.open(record.image) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"{record.source}: cannot read image {record.image}: {error}") from error
    if use_bbox and record.bbox is not None:
        x, y, w, h = record.bbox
        image = image.crop((round(x), round(y), round(x + w), round(y + h)))
    return square(image, size, resize)


def square(image: Image.Image, size: int, resize: ResizeMode) -> Image.Image:
    width, height = image.size
    if resize == "center-crop":
        scale = size / min(width, height)
        image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        return image.crop((left, top, left + size, top + size))
    scale = size / max(width, height)
    image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)
    # pad with the image's mean colour, so the model does not learn black borders
    fill = tuple(int(c) for c in np.asarray(image).reshape(-1, 3).mean(axis=0))
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 HWC -> float CHW in [-1, 1], the range SD's VAE expects."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class TaxaImageDataset(torch.utils.data.Dataset):
    """Records as `{"pixel_values": 3xSxS in [-1, 1], "index": i}`; `index` points back into `records`."""

    def __init__(
        self, records: Sequence[Record], size: int, resize: ResizeMode = "center-crop", use_bbox: bool = False
    ):
        self.records = list(records)
        self.size, self.resize, self.use_bbox = size, resize, use_bbox

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        image = load_image(self.records[index], self.size, self.resize, self.use_bbox)
        return {"pixel_values": to_tensor(image), "index": index}
