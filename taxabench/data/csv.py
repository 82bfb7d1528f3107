"""`csv`: the generic format — one row per image, an image-path column and one column per rank.

Every other adapter could be written as this one; SynthTaxa writes exactly this format and reads it back here.
Column names come from `data.columns` (defaults: `image`, `split`, and each rank's own name). A Hugging Face
ImageFolder `metadata.csv` or `metadata.jsonl` reads as it is: without an `image` column, the image path is taken
from `file_name` (ImageFolder's column), and `metadata.jsonl` is read when there is no `metadata.csv`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from taxabench.config import DataConfig
from taxabench.data.base import AdapterOutput, DatasetAdapter, SkipLog, image_under_root
from taxabench.errors import DataError
from taxabench.taxonomy import RANKS, Record, check_ranks, normalize_label

IMAGEFOLDER_IMAGE_COLUMN = "file_name"  # Hugging Face ImageFolder's image-path column
JSONL_ANNOTATIONS = "metadata.jsonl"  # ImageFolder's other metadata file


def read_table(path: Path, delimiter: str | None = None) -> pd.DataFrame:
    """A CSV/TSV (or JSON lines, `.jsonl`) as strings (no NaN guessing: empty cells stay ""), with a clear error
    for unreadable files."""
    if path.suffix.lower() == ".jsonl":
        return read_json_lines(path)
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        return pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as a {'TSV' if delimiter == chr(9) else 'CSV'} table: {error}") from error


def read_json_lines(path: Path) -> pd.DataFrame:
    """One JSON object per line (ImageFolder's `metadata.jsonl`), every value as a string (null: "")."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not a JSON object: {error}") from error
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: not a JSON object: {line[:80]}")
        rows.append({key: "" if value is None else str(value) for key, value in row.items()})
    if not rows:
        raise DataError(f"{path}: no rows")
    return pd.DataFrame(rows, dtype=str).fillna("")


def require_columns(table: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (columns present: {', '.join(table.columns)})")


class CsvAdapter(DatasetAdapter):
    name = "csv"
    description = "Generic CSV/TSV: an image-path column and one column per rank (names configurable)."
    default_ranks = RANKS
    default_annotations = "metadata.csv"

    def annotations_path(self, config: DataConfig, root: Path) -> Path:
        if config.annotations is None and not (root / self.default_annotations).is_file() \
                and (root / JSONL_ANNOTATIONS).is_file():
            return root / JSONL_ANNOTATIONS
        return super().annotations_path(config, root)

    def rank_columns(self, config: DataConfig) -> dict[str, str]:
        return {rank: config.columns.ranks.get(rank, rank) for rank in RANKS}

    def read(self, config: DataConfig, root: Path, annotations: Path, skipped: SkipLog) -> AdapterOutput:
        columns = config.columns
        table = read_table(annotations, columns.delimiter)
        by_rank = self.rank_columns(config)
        ranks = [rank for rank in RANKS if by_rank[rank] in table.columns]
        if not ranks:
            raise DataError(f"{annotations}: no rank column found (looked for {', '.join(by_rank.values())})")
        ranks = check_ranks(ranks, f"{annotations}: rank columns")
        rank_columns = [by_rank[rank] for rank in ranks]
        image_column = columns.image
        if image_column == type(columns)().image and image_column not in table.columns \
                and IMAGEFOLDER_IMAGE_COLUMN in table.columns:
            image_column = IMAGEFOLDER_IMAGE_COLUMN  # a Hugging Face ImageFolder metadata file
        required = [image_column, *rank_columns, *columns.bbox] + ([columns.split] if columns.split else [])
        require_columns(table, required, annotations)
        if columns.bbox and len(columns.bbox) != 4:
            raise DataError(f"data.columns.bbox: give 4 columns (x, y, width, height), got {columns.bbox}")
        known = set(required)
        extra_columns = [c for c in table.columns if c not in known]
        records = []
        first_line = 1 if annotations.suffix.lower() == ".jsonl" else 2  # a CSV's line 1 is the header
        for row_number, row in enumerate(table.to_dict("records"), start=first_line):
            source = f"{annotations.name}:{row_number}"
            split = row[columns.split].strip() if columns.split else config.train_split
            bbox = None
            if columns.bbox:
                bbox = parse_bbox([row[c] for c in columns.bbox], source)
            records.append(
                Record(
                    image=image_under_root(root, row[image_column], source),
                    labels=tuple(normalize_label(row[c]) for c in rank_columns),
                    split=split,
                    source=source,
                    bbox=bbox,
                    extra={c: row[c] for c in extra_columns},
                )
            )
        return AdapterOutput(ranks, records, rows=len(table))


def parse_bbox(values: list[str], source: str) -> tuple[float, float, float, float] | None:
    """x, y, width, height; all-empty means no box; anything else that is not four positive sizes is an error."""
    if all(not v.strip() for v in values):
        return None
    try:
        x, y, w, h = (float(v) for v in values)
    except ValueError as error:
        raise DataError(f"{source}: bounding box {values} is not four numbers") from error
    if w <= 0 or h <= 0:
        raise DataError(f"{source}: bounding box {values} has a non-positive width or height")
    return (x, y, w, h)
