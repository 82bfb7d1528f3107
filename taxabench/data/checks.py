"""Row checks every dataset goes through once its records are read (`load_dataset` calls them in order).

- images: every image used is decoded once, when the dataset is first read; the verdict is cached per file by
  (size, mtime), so a rerun stats the files but decodes only what changed. A file that does not decode is an error
  naming the file and the row, or a counted skip (`data.on_bad_image: skip`). Paths are resolved (symlinks
  included) and must stay inside the data root.
- duplicates: a row that repeats an earlier row's image (and box) with the same labels and split is dropped and
  counted (`data.on_duplicate: drop`) or an error (`error`); the same image with other labels or in another split
  is always an error, since one of the two rows is wrong.
- lineage conflicts: a species name filed under more than one lineage (e.g. one row's genus differs from the
  others'). `data stats` lists them; `data.on_lineage_conflict` decides: `keep` (each lineage stays its own species,
  as for true homonyms — epithets repeat across genera —, and the rows are noted), `majority` (every row of the
  name is re-filed under the lineage most of its rows have; ties: the first in sorted order) or `error`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from taxabench.config import DataConfig, taxabench_home
from taxabench.data.base import SkipLog
from taxabench.errors import DataError
from taxabench.files import write_json
from taxabench.progress import progress_bar
from taxabench.taxonomy import Record

CHECK_VERSION = 1


def check_images(records: list[Record], root: Path, config: DataConfig, skipped: SkipLog,
                 show_progress: bool = True) -> list[Record]:
    """The records whose image resolves inside `root` and decodes (see the module docstring)."""
    real_root = os.path.realpath(root)
    cache_path = taxabench_home() / "image-checks" / f"{hashlib.sha256(real_root.encode()).hexdigest()[:24]}.json"
    cache = _read_cache(cache_path)
    changed = False
    kept = []
    with progress_bar("checking images", len(records), show_progress and len(records) > 2000) as advance:
        for record in records:
            advance()
            real = os.path.realpath(record.image)
            if not real.startswith(real_root.rstrip(os.sep) + os.sep):
                raise DataError(f"{record.source}: image {record.image} resolves to {real}, outside the data root "
                                f"{root} (a symbolic link?)")
            stat = os.stat(real)
            stamp = [stat.st_size, stat.st_mtime_ns]
            entry = cache.get(real)
            if entry is None or entry[:2] != stamp:
                entry = [*stamp, _decode_error(real)]
                cache[real] = entry
                changed = True
            if entry[2] is None:
                kept.append(record)
            elif config.on_bad_image == "skip":
                skipped.add("image does not decode", f"{record.source}: {record.image}")
            else:
                raise DataError(f"{record.source}: image {record.image} does not decode ({entry[2]}); replace the "
                                "file, or set data.on_bad_image: skip to count and skip such rows")
    if changed:
        write_json(cache_path, {"version": CHECK_VERSION, "files": cache}, "image-checks", indent=None)
    return kept


def _decode_error(path: str) -> str | None:
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _read_cache(path: Path) -> dict[str, list]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: the images are decoded again
    return saved.get("files", {}) if saved.get("version") == CHECK_VERSION else {}


def drop_duplicates(records: list[Record], config: DataConfig, skipped: SkipLog) -> list[Record]:
    """Records without repeats of an earlier row (see the module docstring)."""
    first: dict[tuple, Record] = {}
    kept = []
    for record in records:
        key = (os.path.realpath(record.image), record.bbox)
        earlier = first.get(key)
        if earlier is None:
            first[key] = record
            kept.append(record)
        elif (earlier.labels, earlier.split) != (record.labels, record.split):
            raise DataError(f"{record.source}: image {record.image} is also listed at {earlier.source} with other "
                            f"labels or split ({'/'.join(map(str, earlier.labels))} in {earlier.split!r} vs "
                            f"{'/'.join(map(str, record.labels))} in {record.split!r}); fix one of the two rows")
        elif config.on_duplicate == "drop":
            skipped.add("duplicate row", f"{record.source} (repeats {earlier.source})")
        else:
            raise DataError(f"{record.source}: repeats row {earlier.source} (same image, labels and split); remove "
                            "it, or set data.on_duplicate: drop to count and drop repeated rows")
    return kept


def lineage_conflicts(records: list[Record], depth: int) -> dict[str, dict[str, int]]:
    """Species name -> {lineage id: rows} for names filed under more than one lineage (records of full depth)."""
    by_name: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        lineage = record.lineage()
        if len(lineage) == depth:
            by_name[lineage[-1]]["/".join(lineage)] += 1
    return {name: dict(sorted(lineages.items())) for name, lineages in sorted(by_name.items()) if len(lineages) > 1}


def resolve_lineage_conflicts(records: list[Record], depth: int, config: DataConfig,
                              notes: Counter[str]) -> list[Record]:
    """Apply `data.on_lineage_conflict` (see the module docstring) to the species names filed under several
    lineages."""
    conflicts = lineage_conflicts(records, depth)
    if not conflicts:
        return records
    if config.on_lineage_conflict == "error":
        name, lineages = next(iter(conflicts.items()))
        found = "; ".join(f"{lineage} ({rows} rows)" for lineage, rows in lineages.items())
        raise DataError(f"species {name!r} is filed under {len(lineages)} lineages: {found} (and "
                        f"{len(conflicts) - 1} more such species); fix the rows, or set data.on_lineage_conflict: "
                        "majority (re-file them under the lineage most rows have) or keep (separate species)")
    if config.on_lineage_conflict == "keep":
        notes["rows of a species name filed under several lineages (kept as separate species)"] += sum(
            sum(lineages.values()) for lineages in conflicts.values())
        return records
    majority = {name: tuple(sorted(lineages.items(), key=lambda item: (-item[1], item[0]))[0][0].split("/"))
                for name, lineages in conflicts.items()}
    resolved = []
    for record in records:
        lineage = record.lineage()
        target = majority.get(lineage[-1]) if len(lineage) == depth else None
        if target is not None and target != lineage:
            notes["rows re-filed under their species' majority lineage"] += 1
            record = replace(record, labels=target + record.labels[depth:])
        resolved.append(record)
    return resolved
