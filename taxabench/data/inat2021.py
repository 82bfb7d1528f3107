"""`inat2021`: the iNaturalist 2021 competition (Van Horn et al., CVPR 2021; github.com/visipedia/inat_comp/2021).

Layout, as released: `train.json`, `train_mini.json` and `val.json` in COCO style next to the image folders
`train/`, `train_mini/`, `val/`. Each JSON has
- `images`: `{id, file_name, width, height, ...}`, `file_name` relative to the root
  (`train/00000_Animalia_Annelida_..._terrestris/<uuid>.jpg`);
- `annotations`: `{id, image_id, category_id}`, one per image;
- `categories`: `{id, name, kingdom, phylum, class, order, family, genus, specific_epithet, image_dir_name, ...}`.
(`public_test.json` has no annotations and cannot be used.)

Point `data.root` at the folder holding the JSONs and image folders. Splits follow `SplitFilesAdapter`: with
`data.annotations` unset, `<root>/<data.train_split>.json` and `<root>/<data.eval_split>.json` are read, so
`train_split: train` (or `train_mini`) with `eval_split: val` reproduces the competition's split; one JSON given
in `data.annotations` is read alone, its records in the split named by its stem.

All seven ranks, kingdom..species, as TaxaDiffusion uses for iNat; the species label is `specific_epithet`. A
record's source is `<file>:image-<id>`. Labels and the `extra` mapping are shared by all images of a category, so
the 2.7M-image train split costs one small object per image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from taxabench.config import DataConfig
from taxabench.data.base import AdapterOutput, SkipLog, image_under_root
from taxabench.data.release import SplitFilesAdapter
from taxabench.errors import DataError
from taxabench.taxonomy import RANKS, Record, normalize_label, species_epithet

CATEGORY_KEYS = ("kingdom", "phylum", "class", "order", "family", "genus", "specific_epithet")


class INat2021Adapter(SplitFilesAdapter):
    name = "inat2021"
    description = "iNaturalist 2021: train/train_mini/val JSON (COCO style), kingdom..species."
    default_ranks = RANKS
    split_suffix = ".json"

    def read(self, config: DataConfig, root: Path, annotations: Path, skipped: SkipLog) -> AdapterOutput:
        records = []
        before = skipped.total
        for split, path in self.split_files(config, annotations):
            records.extend(read_split(path, split, root, skipped))
        # rows: one per annotation, plus each image without one (a counted skip)
        return AdapterOutput(RANKS, records, rows=len(records) + skipped.total - before)


def read_split(path: Path, split: str, root: Path, skipped: SkipLog) -> list[Record]:
    """The records of one competition JSON, one per annotation, in annotation order."""
    data = load_json(path)
    images = {
        _field(image, "id", path, f"images[{i}]"): image for i, image in enumerate(_section(data, "images", path))
    }
    categories = {}
    for i, category in enumerate(_section(data, "categories", path)):
        where = f"categories[{i}]"
        names = [normalize_label(_field(category, key, path, where)) for key in CATEGORY_KEYS]
        if names[6] is not None:
            names[6] = species_epithet(names[5], names[6])
        extra = {"category_id": str(_field(category, "id", path, where))}
        categories[_field(category, "id", path, where)] = (tuple(names), extra)
    annotated = set()
    records = []
    for i, annotation in enumerate(_section(data, "annotations", path)):
        image_id = _field(annotation, "image_id", path, f"annotations[{i}]")
        category_id = _field(annotation, "category_id", path, f"annotations[{i}]")
        source = f"{path.name}:image-{image_id}"
        if image_id not in images:
            raise DataError(f"{source}: annotations[{i}] refers to image {image_id}, which 'images' does not list")
        if category_id not in categories:
            raise DataError(f"{source}: annotations[{i}] refers to category {category_id}, "
                            "which 'categories' does not list")
        file_name = _field(images[image_id], "file_name", path, f"image {image_id}")
        if not isinstance(file_name, str):
            raise DataError(f"{source}: 'file_name' is {file_name!r}, not a path")
        labels, extra = categories[category_id]
        annotated.add(image_id)
        records.append(Record(image_under_root(root, file_name, source), labels, split, source, extra=extra))
    for image_id in sorted(images.keys() - annotated, key=str):
        skipped.add("image without annotation", f"{path.name}:image-{image_id}")
    return records


def load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    return data


def _section(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    if key not in data:
        hint = " (iNat's public_test.json has no labels)" if key == "annotations" else ""
        raise DataError(f"{path}: missing key '{key}'{hint}")
    section = data[key]
    if not isinstance(section, list) or not all(isinstance(item, dict) for item in section):
        raise DataError(f"{path}: '{key}' must be a list of objects")
    return section


def _field(item: dict[str, Any], key: str, path: Path, where: str) -> Any:
    if key not in item:
        raise DataError(f"{path}: {where} has no key '{key}'")
    return item[key]
