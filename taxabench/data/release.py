"""What the real-release adapters (`fishnet`, `bioscan1m`, `inat2021`) share: split files and binomial names."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from taxabench.config import DataConfig
from taxabench.data.base import DatasetAdapter, SkipLog
from taxabench.errors import DataError
from taxabench.taxonomy import species_epithet


class SplitFilesAdapter(DatasetAdapter):
    """A dataset released as one annotation file per split (FishNet `train.csv`/`test.csv`, iNat `val.json`).

    `data.annotations` decides which files are read; a record's split is the name of the file it comes from:
    - unset: `<root>/<split><suffix>` for `data.train_split` and `data.eval_split`;
    - a folder: `<folder>/<split><suffix>` for the same two splits;
    - a file: that file alone, whose records are in the split named by its stem (`val.json` -> `val`).
    """

    split_suffix: ClassVar[str]

    def annotations_path(self, config: DataConfig, root: Path) -> Path:
        path = Path(config.annotations) if config.annotations is not None else root
        if not path.exists():
            raise DataError(f"dataset '{self.name}': annotation file or folder not found: {path}")
        return path

    def split_files(self, config: DataConfig, annotations: Path) -> list[tuple[str, Path]]:
        """(split, file) pairs to read, in a fixed order: train split first."""
        if annotations.is_file():
            return [(annotations.stem, annotations)]
        files = []
        for split in dict.fromkeys(s for s in (config.train_split, config.eval_split) if s is not None):
            path = annotations / f"{split}{self.split_suffix}"
            if not path.is_file():
                present = sorted(p.stem for p in annotations.glob(f"*{self.split_suffix}"))
                raise DataError(
                    f"dataset '{self.name}': no annotation file for split '{split}': {path} not found "
                    f"(split files in {annotations}: {', '.join(present) or 'none'}); set data.train_split and "
                    "data.eval_split to splits you have (data.eval_split: null for none), or data.annotations "
                    "to one file"
                )
            files.append((split, path))
        return files


def genus_and_epithet(
    genus: str | None, species: str | None, source: str, skipped: SkipLog
) -> tuple[str | None, str | None] | None:
    """A row's genus and species epithet from a binomial species column (`Abudefduf saxatilis`).

    The genus keeps its spelling and the epithet is lower-case. A missing genus is taken from the binomial's first
    word, as BIOSCAN's own loader does (bioscan-dataset `load_bioscan1m_metadata`). A binomial filed under another
    genus cannot be placed in the tree: the row is skipped and counted (None is returned).
    """
    if species is None:
        return genus, None
    words = species.split(" ")
    if genus is None and len(words) > 1:
        genus = words[0]
    if len(words) > 1 and words[0].lower() != (genus or "").lower():
        skipped.add("species name does not match genus", f"{source}: {species!r} under genus {genus!r}")
        return None
    return genus, species_epithet(genus, species)
