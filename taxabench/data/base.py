"""What every dataset adapter is: it reads one on-disk format and returns `Record`s plus counted skips."""

from __future__ import annotations

import functools
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from taxabench.config import DataConfig
from taxabench.errors import DataError
from taxabench.taxonomy import Record


@dataclass
class SkipLog:
    """Records left out on purpose: reason -> count, with the first few sources (file:row) of each."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, source: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(source)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@dataclass
class AdapterOutput:
    ranks: tuple[str, ...]
    records: list[Record]
    rows: int  # rows (annotations) in the files read: every one becomes a record or a counted skip


class DatasetAdapter:
    """Base class of dataset adapters; subclasses are registered by name in `taxabench.data.registry`.

    `read` returns the ranks it found and records whose labels align with them, image paths joined to the root.
    It raises `DataError` naming the file/row/column for malformed input and puts deliberate skips in `skipped`.
    Image existence, unknown labels and filters are handled once, for every adapter, in `load_dataset`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    default_ranks: ClassVar[tuple[str, ...]]
    default_annotations: ClassVar[str | None] = None  # file name inside root, used when config gives none

    def prepare(self, config: DataConfig) -> Path:
        """The dataset root; adapters that build their data (SynthTaxa) build it here."""
        if config.root is None:
            raise DataError(f"dataset '{self.name}': data.root is not set; point it at the dataset folder")
        root = Path(config.root)
        if not root.is_dir():
            raise DataError(f"dataset '{self.name}': root folder not found: {root}")
        return root

    def annotations_path(self, config: DataConfig, root: Path) -> Path:
        if config.annotations is not None:
            path = Path(config.annotations)
        elif self.default_annotations is not None:
            path = root / self.default_annotations
        else:
            raise DataError(f"dataset '{self.name}': data.annotations is not set; point it at the annotation file")
        if not path.is_file():
            raise DataError(f"dataset '{self.name}': annotation file not found: {path}")
        return path

    def read(self, config: DataConfig, root: Path, annotations: Path, skipped: SkipLog) -> AdapterOutput:
        raise NotImplementedError


def image_under_root(root: Path, relative: str, source: str) -> Path:
    """Join an annotation's image path to the root, refusing paths that leave it (`../`, absolute elsewhere).
    Symbolic links are resolved (and checked the same way) when the images are checked (`data.checks`)."""
    if not relative or not relative.strip():
        raise DataError(f"{source}: empty image path")
    root_abs = _absolute(str(root))
    joined = os.path.normpath(os.path.join(root_abs, relative))
    if not joined.startswith(root_abs.rstrip(os.sep) + os.sep):
        raise DataError(f"{source}: image path {relative!r} points outside the data root {root}")
    return Path(joined)


@functools.lru_cache(maxsize=64)
def _absolute(root: str) -> str:
    return os.path.normpath(os.path.abspath(root))  # called once per root, not per row (2.7M rows for iNat)
