"""Images from any generator, evaluated like taxabench's own samples: `taxabench eval --samples FOLDER`.

Two layouts, each a registered `SampleLayout` (`taxabench list`); `auto` picks `table` when the folder holds
`samples.csv`, else `folders`:

- `folders`: one sub-folder per taxon, named by the taxon's id written as a slug (`Animalia.Chordata...saxatilis`,
  what `taxabench sample` writes), its scientific name (`Abudefduf saxatilis`) or its unique name; every image file
  inside it (png, jpg, jpeg, webp, bmp, tif, tiff; sub-folders are not read) is one generated image of that taxon.
- `table`: `samples.csv` in the folder with a column `image` (a path relative to the folder) and either a column
  `taxon` (id, slug, scientific or unique name) or one column per rank of the dataset from the top rank down to the
  sampled rank (the lineage).

All taxa must be of one rank of the dataset's taxonomy. A taxon the dataset does not have is an error naming the
folder or row (`on_unknown="skip"` counts and skips it instead); an image that cannot be read (or a table row whose
file does not exist) is skipped and counted: the counts travel with the samples into the metrics JSON and the CLI.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from PIL import Image, UnidentifiedImageError

from taxabench.data.base import SkipLog
from taxabench.errors import TaxabenchError
from taxabench.metrics.registry import SAMPLE_LAYOUTS
from taxabench.metrics.samples import GeneratedImage, SamplesError, SampleSet
from taxabench.taxonomy import Taxon, Taxonomy, taxon_id

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TABLE_FILE = "samples.csv"
UNKNOWN_TAXON = "taxon not in the dataset"
UNREADABLE = "unreadable image"
MISSING = "image file not found"


class SampleLayout:
    """How a folder of another generator's images says which taxon each image shows."""

    name: ClassVar[str]
    description: ClassVar[str]

    def entries(self, folder: Path, taxonomy: Taxonomy) -> Iterator[tuple[str, Path, str | Taxon]]:
        """(source for messages, image path, taxon or the unresolved query) for every listed image."""
        raise NotImplementedError


class PerTaxonFolders(SampleLayout):
    name = "folders"
    description = "One sub-folder per taxon (slug, scientific name or unique name), its image files inside."

    def entries(self, folder, taxonomy):
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not subfolders:
            raise SamplesError(f"{folder}: no taxon sub-folders (layout 'folders': one folder per taxon)")
        for sub in subfolders:
            taxon = _resolve(taxonomy, sub.name)
            for path in sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                yield f"{sub.name}/{path.name}", path, taxon


class SampleTable(SampleLayout):
    name = "table"
    description = f"{TABLE_FILE}: column image plus a column taxon or one column per rank (the lineage)."

    def entries(self, folder, taxonomy):
        table = folder / TABLE_FILE
        if not table.is_file():
            raise SamplesError(f"{folder}: no {TABLE_FILE} (layout 'table')")
        with open(table, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            rank_columns = [r for r in taxonomy.ranks if r in columns]
            if "image" not in columns or ("taxon" not in columns and not rank_columns):
                raise SamplesError(f"{table}: needs a column 'image' and a column 'taxon' or rank columns "
                                   f"({', '.join(taxonomy.ranks)}); found {', '.join(columns) or 'no header'}")
            for number, row in enumerate(reader, start=2):
                source = f"{table}:{number}"
                if not (row.get("image") or "").strip():
                    raise SamplesError(f"{source}: empty image path")
                if "taxon" in columns:
                    taxon = _resolve(taxonomy, row["taxon"].strip())
                else:
                    lineage = [row[r].strip() for r in rank_columns if (row[r] or "").strip()]
                    if rank_columns[:len(lineage)] != list(taxonomy.ranks[:len(lineage)]):
                        raise SamplesError(f"{source}: the lineage must start at the top rank "
                                           f"({taxonomy.ranks[0]})")
                    key = taxon_id(lineage)
                    taxon = _resolve(taxonomy, key)
                yield source, folder / row["image"].strip(), taxon


def _resolve(taxonomy: Taxonomy, query: str) -> Taxon | str:
    try:
        return taxonomy.resolve(query)
    except TaxabenchError as error:
        if "ambiguous" in str(error):
            raise
        return query


# SAMPLE_LAYOUTS (taxabench.metrics.registry) names PerTaxonFolders and SampleTable without importing this module


def read_external_samples(folder: str | Path, name: str, taxonomy: Taxonomy, layout: str = "auto",
                          on_unknown: str = "error") -> SampleSet:
    """The images of `folder` as a `SampleSet` named `name` (see the module docstring); skips are in `skipped`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SamplesError(f"sample folder not found: {folder}")
    if layout == "auto":
        layout = SampleTable.name if (folder / TABLE_FILE).is_file() else PerTaxonFolders.name
    skipped = SkipLog()
    images: list[GeneratedImage] = []
    digest = hashlib.sha256(f"{layout}|{name}".encode())
    for index, (source, path, taxon) in enumerate(SAMPLE_LAYOUTS.get(layout)().entries(folder, taxonomy)):
        if isinstance(taxon, str):
            if on_unknown != "skip":
                raise SamplesError(f"{source}: {UNKNOWN_TAXON}: {taxon!r} (pass --unknown-taxa skip to count and "
                                   "skip such images)")
            skipped.add(UNKNOWN_TAXON, source)
            continue
        if not path.is_file():
            skipped.add(MISSING, f"{source}: {path}")
            continue
        try:
            with Image.open(path) as opened:
                opened.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError):
            skipped.add(UNREADABLE, f"{source}: {path}")
            continue
        stat = path.stat()
        digest.update(f"\n{path.resolve()}|{taxon.id}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        images.append(GeneratedImage(path, taxon, index, source))
    if not images:
        raise SamplesError(f"{folder}: no readable images of known taxa (skipped: {skipped.to_dict() or 'none'})")
    ranks = sorted({img.taxon.rank for img in images})
    if len(ranks) > 1:
        raise SamplesError(f"{folder} mixes taxa of ranks {ranks}; evaluate one rank per sample folder")
    return SampleSet(folder, name, ranks[0], images, digest.hexdigest(), skipped.to_dict())
