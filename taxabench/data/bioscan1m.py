"""`bioscan1m`: the BIOSCAN-1M Insect dataset (Gharaee et al., NeurIPS 2023 Datasets & Benchmarks;
github.com/bioscan-ml/BIOSCAN-1M, zenodo.org/records/8030065).

Layout, as released:
- metadata `BIOSCAN_Insect_Dataset_metadata.tsv`, one row per specimen, with (among others) `processid, sampleid,
  uri, name, phylum, class, order, family, subfamily, tribe, genus, species, nucraw, image_file, chunk_number`
  and six partition columns (`large_insect_order`, ..., `small_diptera_family`) holding `train`, `validation`,
  `test` or `no_split`; unknown labels are `not_classified`; `species` is the binomial (`Hydroporus striola`);
- images at `<package>/part<chunk_number>/<image_file>`, for each image package: `cropped_256`, `original_256`,
  `cropped` and `original_full` (the release unpacks them to `bioscan/images/<package>/`).

Point `data.root` at the package folder you want (e.g. `bioscan/images/cropped_256`): the package is the choice
of root. The metadata file is `data.annotations`; unset, it is looked for in the root and then two levels up
(`bioscan/`, the release layout). The partition column that gives each row its split is
`data.bioscan1m.split_column` (default `large_insect_order`; its values are `train`/`validation`/`test`, so set
`data.eval_split: validation` or `test`); `no_split` rows are counted as other splits.

Ranks are class..species, the five TaxaDiffusion uses for BIOSCAN (its loader reads `class, order, family,
genus, species`); `phylum` (Arthropoda throughout) is not a rank here, and `subfamily` and `tribe` sit between
taxabench's ranks and are not used. The species label is the epithet; a
missing genus is taken from the species binomial, as the dataset's own loader does.

Only the columns used are read: the file is 1.2 GB, mostly DNA barcodes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from taxabench.config import DataConfig
from taxabench.data.base import AdapterOutput, DatasetAdapter, SkipLog, image_under_root
from taxabench.data.csv import require_columns
from taxabench.data.release import genus_and_epithet
from taxabench.errors import DataError
from taxabench.taxonomy import RANKS, Record, normalize_label

METADATA_FILE = "BIOSCAN_Insect_Dataset_metadata.tsv"
RANK_COLUMNS = ("class", "order", "family", "genus", "species")


class Bioscan1mAdapter(DatasetAdapter):
    name = "bioscan1m"
    description = "BIOSCAN-1M Insect: metadata TSV, images in <package>/part<chunk>/, class..species."
    default_ranks = RANKS[2:]
    default_annotations = METADATA_FILE

    def annotations_path(self, config: DataConfig, root: Path) -> Path:
        if config.annotations is not None:
            return super().annotations_path(config, root)
        candidates = [root / METADATA_FILE, root.parent.parent / METADATA_FILE]
        for path in candidates:
            if path.is_file():
                return path
        raise DataError(
            f"dataset 'bioscan1m': metadata file not found at {' or '.join(map(str, candidates))}; "
            "set data.annotations to BIOSCAN_Insect_Dataset_metadata.tsv"
        )

    def read(self, config: DataConfig, root: Path, annotations: Path, skipped: SkipLog) -> AdapterOutput:
        split_column = config.bioscan1m.split_column
        columns = ["image_file", "chunk_number", *RANK_COLUMNS] + ([split_column] if split_column else [])
        table = read_columns(annotations, columns)
        records = []
        rows = zip(*(table[c] for c in columns))
        for row_number, (image_file, chunk, *values) in enumerate(rows, start=2):  # line 1 is the header
            source = f"{annotations.name}:{row_number}"
            split = values.pop().strip() if split_column else config.train_split
            labels = [normalize_label(v) for v in values]
            named = genus_and_epithet(labels[3], labels[4], source, skipped)
            if named is None:
                continue
            labels[3], labels[4] = named
            chunk = chunk.strip()
            if not chunk.isdigit():
                raise DataError(f"{source}: column 'chunk_number' is {chunk!r}, not a folder number")
            records.append(
                Record(
                    image=image_under_root(root, f"part{chunk}/{image_file.strip()}", source),
                    labels=tuple(labels),
                    split=split,
                    source=source,
                )
            )
        return AdapterOutput(RANKS[2:], records, rows=len(table))


def read_columns(path: Path, columns: list[str]) -> pd.DataFrame:
    """The named columns of a TSV as strings (empty cells stay ""); a missing column names the file."""
    try:
        header = pd.read_csv(path, sep="\t", nrows=0)
        require_columns(header, columns, path)
        return pd.read_csv(path, sep="\t", usecols=columns, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as a TSV table: {error}") from error
