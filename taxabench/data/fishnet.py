"""`fishnet`: the FishNet release (Khan et al., "FishNet: A Large-scale Dataset and Benchmark for Fish Recognition,
Detection, and Functional Trait Prediction", ICCV 2023; github.com/faixan-khan/FishNet).

Layout, as released:
- one CSV per split (`anns/train.csv`, `anns/test.csv`) with the columns
  `,Unnamed: 0,species,image,SpecCode,Genus,Subfamily,Family,Order,Class,SuperClass,source,Folder,Troph,...`;
  `species` is the binomial (`Abudefduf saxatilis`) or empty when only the genus is known (most iNat-sourced
  rows); `image` is a file name or a FishBase URL whose last part is the file name;
- images at `<root>/<Folder>/<basename(image)>` (`Folder` is the family's image folder);
- optional boxes (bbox.zip, KITTI-like): `<bbox_dir>/<Folder>/<image stem>.txt`, one `label x1 y1 x2 y2` line
  per fish, read when `data.fishnet.bbox_dir` is set. The largest box is kept (one fish per training image);
  an image without a box file keeps the whole frame.

Splits follow `SplitFilesAdapter`: leave `data.annotations` unset with the CSVs in the root, point it at the
release's `anns/` folder, or at one CSV. Ranks are class..species, as in TaxaDiffusion (its FishNet loader reads
`Class, Order, Family, Genus, species`). The species label is the epithet (`saxatilis`); the genus keeps its
capitalisation. Rows with an empty species are unknown at species rank (`data.unknown_species` decides). About 90
rows of the release's `test.csv` have an empty `Class` but an order, family and species: their class is the one
other rows give their order (an order belongs to one class); a row whose order has no class anywhere is skipped
and counted as such.

FishNet files some families under two orders (FishBase's `Perciformes/Gasterosteoidei` next to
`Gasterosteiformes`), and its class names differ by source (`Actinopteri` / `Actinopterygii`): such names become
separate taxa, reported by `data stats`. To use the release's cleaned `NewOrder` column instead of `Order`, set
`data.columns.ranks: {order: NewOrder}`; the other rank columns can be renamed the same way.
"""

from __future__ import annotations

import dataclasses
import posixpath
from pathlib import Path

from taxabench.config import DataConfig
from taxabench.data.base import AdapterOutput, SkipLog, image_under_root
from taxabench.data.csv import read_table, require_columns
from taxabench.data.release import SplitFilesAdapter, genus_and_epithet
from taxabench.errors import DataError
from taxabench.taxonomy import RANKS, Record, normalize_label

RANK_COLUMNS = {"class": "Class", "order": "Order", "family": "Family", "genus": "Genus", "species": "species"}
IMAGE_COLUMN = "image"
FOLDER_COLUMN = "Folder"


class FishNetAdapter(SplitFilesAdapter):
    name = "fishnet"
    description = "FishNet (ICCV 2023): train.csv/test.csv, images in <root>/<Folder>/, class..species."
    default_ranks = RANKS[2:]
    split_suffix = ".csv"

    def rank_columns(self, config: DataConfig) -> dict[str, str]:
        unknown = [rank for rank in config.columns.ranks if rank not in RANK_COLUMNS]
        if unknown:
            raise DataError(
                f"data.columns.ranks: dataset 'fishnet' has no rank {unknown[0]!r} "
                f"(its ranks are {', '.join(RANK_COLUMNS)})"
            )
        return {rank: config.columns.ranks.get(rank, column) for rank, column in RANK_COLUMNS.items()}

    def read(self, config: DataConfig, root: Path, annotations: Path, skipped: SkipLog) -> AdapterOutput:
        by_rank = self.rank_columns(config)
        bbox_dir = Path(config.fishnet.bbox_dir) if config.fishnet.bbox_dir is not None else None
        if bbox_dir is not None and not bbox_dir.is_dir():
            raise DataError(f"data.fishnet.bbox_dir: folder not found: {bbox_dir}")
        records, rows = [], 0
        for split, path in self.split_files(config, annotations):
            table = read_table(path, ",")
            rows += len(table)
            require_columns(table, [IMAGE_COLUMN, FOLDER_COLUMN, *by_rank.values()], path)
            used = {IMAGE_COLUMN, FOLDER_COLUMN, *by_rank.values()}
            # the release's leading index columns ("", "Unnamed: 0") carry nothing
            extra_columns = [c for c in table.columns if c not in used and not c.startswith("Unnamed:")]
            for row_number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
                source = f"{path.name}:{row_number}"
                labels = [normalize_label(row[by_rank[rank]]) for rank in RANK_COLUMNS]
                named = genus_and_epithet(labels[3], labels[4], source, skipped)
                if named is None:
                    continue
                labels[3], labels[4] = named
                folder, file_name = row[FOLDER_COLUMN].strip(), posixpath.basename(row[IMAGE_COLUMN].strip())
                if not folder or not file_name:
                    raise DataError(f"{source}: empty {FOLDER_COLUMN!r} or {IMAGE_COLUMN!r} value")
                bbox = None
                if bbox_dir is not None:
                    box_file = image_under_root(bbox_dir, f"{folder}/{Path(file_name).stem}.txt", source)
                    bbox = largest_box(box_file) if box_file.is_file() else None
                records.append(
                    Record(
                        image=image_under_root(root, f"{folder}/{file_name}", source),
                        labels=tuple(labels),
                        split=split,
                        source=source,
                        bbox=bbox,
                        extra={c: row[c] for c in extra_columns},
                    )
                )
        return AdapterOutput(RANKS[2:], _classes_from_orders(records, skipped), rows)


def _classes_from_orders(records: list[Record], skipped: SkipLog) -> list[Record]:
    """Fill an empty class from the order's class in other rows (unique), or skip the row saying why."""
    classes: dict[str, set[str]] = {}
    for record in records:
        if record.labels[0] is not None and record.labels[1] is not None:
            classes.setdefault(record.labels[1], set()).add(record.labels[0])
    kept = []
    for record in records:
        order = record.labels[1]
        if record.labels[0] is None and order is not None:
            known = classes.get(order, set())
            if len(known) != 1:
                skipped.add("empty Class, and no other row gives its order one class", record.source)
                continue
            record = dataclasses.replace(record, labels=(next(iter(known)), *record.labels[1:]))
        kept.append(record)
    return kept


def largest_box(path: Path) -> tuple[float, float, float, float] | None:
    """The largest `label x1 y1 x2 y2` box of a FishNet box file, as (x, y, width, height); None if it is empty."""
    best = None
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            x1, y1, x2, y2 = (float(v) for v in fields[-4:])
        except ValueError as error:
            raise DataError(f"{path}:{line_number}: expected 'label x1 y1 x2 y2', got {line.strip()!r}") from error
        if len(fields) < 5 or x2 <= x1 or y2 <= y1:
            raise DataError(f"{path}:{line_number}: expected 'label x1 y1 x2 y2' with x1 < x2, y1 < y2, "
                            f"got {line.strip()!r}")
        box = (x1, y1, x2 - x1, y2 - y1)
        if best is None or box[2] * box[3] > best[2] * best[3]:
            best = box
    return best
