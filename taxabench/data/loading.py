"""From a `data:` config section to checked records, a taxonomy and a count of everything left out.

Every adapter goes through the same steps here, in this order:
1. the adapter reads its format (malformed input is a `DataError` naming file, row and column);
2. image files are checked to exist (`on_missing_image`: error, or skip and count);
3. the ranks are narrowed to `data.ranks`; records whose species is unknown are dropped or kept
   (`unknown_species`), records with no known rank at all are skipped;
4. only the train and eval splits are kept (split values matched case-insensitively);
5. rows are checked (`taxabench.data.checks`): repeated rows dropped (`on_duplicate`), every image resolved inside
   the root and decoded once (`on_bad_image`), species filed under several lineages resolved
   (`on_lineage_conflict`);
6. species are filtered on their training-image counts (min / max), then subset (first / random / list);
   the unseen species (`data.unseen_species`) are withheld: their training images left out (noted), their
   evaluation images kept apart (`TaxaData.unseen`); evaluation images of species that are not trained are left
   out, counted under their own reason;
7. training images are capped per species (`few_shot`).

Nothing disappears uncounted: rows read = images kept (train, eval, unseen) + counted skips + rows left out by a note
(`TaxaData.accounted_rows`).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from taxabench.config import DataConfig
from taxabench.data.base import SkipLog
from taxabench.data.checks import check_images, drop_duplicates, lineage_conflicts, resolve_lineage_conflicts
from taxabench.errors import ConfigError, DataError, TaxabenchError
from taxabench.taxonomy import Record, Taxon, Taxonomy, check_ranks, taxon_id


@dataclass
class TaxaData:
    """A loaded dataset: training and evaluation records over one taxonomy, and what was left out."""

    dataset: str
    root: Path
    ranks: tuple[str, ...]
    train: list[Record]
    eval: list[Record]
    taxonomy: Taxonomy  # spanned by the training records
    skipped: SkipLog
    notes: dict[str, int] = field(default_factory=dict)  # counted facts that are not skips (kept unknowns...)
    rare_threshold: int = 5  # species with at most this many training images are rare
    rows_read: int = 0  # rows in the annotation files the adapter read
    noted_rows: int = 0  # rows left out by a filter, counted in `notes` (other splits, species filters, few-shot)
    lineage_conflicts: dict[str, dict[str, int]] = field(default_factory=dict)  # as found, before resolution
    # evaluation images of the species withheld from training (data.unseen_species); not in `eval` nor `taxonomy`
    unseen: list[Record] = field(default_factory=list)

    def accounted_rows(self) -> int:
        """Images kept + counted skips + noted rows: equals `rows_read` (every row is one of the three)."""
        return len(self.train) + len(self.eval) + len(self.unseen) + self.skipped.total + self.noted_rows

    @property
    def unseen_species(self) -> list[str]:
        """Ids of the species withheld from training, sorted."""
        return sorted({taxon_id(r.lineage()) for r in self.unseen})

    def unseen_view(self) -> TaxaData:
        """The withheld species as a dataset to evaluate: their evaluation images as `eval`, and a taxonomy of the
        training taxa plus them (the lineages the sampler conditions on, the candidates of zero-shot
        classification). Training records are unchanged: the methods never saw these species."""
        if not self.unseen:
            raise TaxabenchError("this dataset withholds no species from training; set data.unseen_species")
        return replace(self, eval=list(self.unseen), unseen=[],
                       taxonomy=Taxonomy(self.ranks, [*self.train, *self.unseen]))

    @property
    def species(self) -> list[Taxon]:
        return self.taxonomy.taxa("species")

    def fingerprint(self, include_eval: bool = True) -> str:
        """Content hash of what was loaded (paths relative to root, labels, splits): keys caches and checkpoints.
        Without the eval rows for what is trained on the training split alone and only measured on the eval split."""
        digest = hashlib.sha256(f"{self.dataset}|{','.join(self.ranks)}".encode())
        for record in [*self.train, *([*self.eval, *self.unseen] if include_eval else [])]:
            relative = Path(record.image).relative_to(self.root).as_posix()
            digest.update(f"\n{relative}|{record.split}|{'|'.join(label or '' for label in record.labels)}".encode())
            if record.bbox:
                digest.update(repr(record.bbox).encode())
        if include_eval and self.unseen:  # which evaluation images are the withheld species'
            digest.update(f"\nunseen:{','.join(self.unseen_species)}".encode())
        return digest.hexdigest()

    def records_of(self, taxon: Taxon, split: str = "train") -> list[Record]:
        records = self.train if split == "train" else self.eval
        prefix = taxon.lineage
        return [r for r in records if r.lineage()[: len(prefix)] == prefix]

    def stats(self) -> dict:
        """The summary `taxabench data stats` prints: counts per split and rank, the long tail, the skips."""
        species_counts = sorted(self.taxonomy.image_count(t.id) for t in self.species)
        return {
            "dataset": self.dataset,
            "ranks": list(self.ranks),
            "images": len(self.train) + len(self.eval),
            "images_per_split": {"train": len(self.train), "eval": len(self.eval),
                                 **({"unseen": len(self.unseen)} if self.unseen else {})},
            **({"unseen_species": self.unseen_species} if self.unseen else {}),
            "species": len(species_counts),
            "per_rank": {rank: len(self.taxonomy.taxa(rank)) for rank in self.ranks},
            "long_tail": _long_tail(species_counts, len(self.taxonomy.rare_species(self.rare_threshold))),
            "rare_threshold": self.rare_threshold,
            "homonyms": {
                rank: {name: len(ids) for name, ids in names.items()}
                for rank, names in self.taxonomy.homonyms().items()
            },
            "lineage_conflicts": self.lineage_conflicts,
            "skipped": self.skipped.to_dict(),
            "skipped_examples": {k: v for k, v in self.skipped.examples.items() if v},
            "notes": dict(self.notes),
            "rows": {"read": self.rows_read, "images": len(self.train) + len(self.eval) + len(self.unseen),
                     "skipped": self.skipped.total, "noted": self.noted_rows},
        }


def _long_tail(counts: list[int], rare: int) -> dict:
    if not counts:
        return {"min": 0, "median": 0, "max": 0, "rare_species": 0}
    return {"min": counts[0], "median": counts[len(counts) // 2], "max": counts[-1], "rare_species": rare}


def load_dataset(config: DataConfig, show_progress: bool = True) -> TaxaData:
    """Read, check and filter the dataset a `data:` section describes (see the module docstring for the steps)."""
    from taxabench.data.registry import get_adapter

    adapter = get_adapter(config.dataset)
    root = adapter.prepare(config)
    annotations = adapter.annotations_path(config, root)
    skipped = SkipLog()
    output = adapter.read(config, root, annotations, skipped)
    records, ranks = output.records, output.ranks
    notes: Counter[str] = Counter()
    noted = 0  # rows left out under a note

    def leave_out(reason: str, count: int) -> None:
        nonlocal noted
        if count:
            notes[reason] += count
            noted += count

    # 2. image files exist
    present = []
    for record in records:
        if Path(record.image).is_file():
            present.append(record)
        elif config.on_missing_image == "skip":
            skipped.add("missing image file", f"{record.source}: {record.image}")
        else:
            raise DataError(
                f"{record.source}: image file not found: {record.image} "
                "(set data.on_missing_image: skip to count and skip such rows)"
            )

    # 3. ranks, unknown labels
    if config.ranks is not None:
        wanted = check_ranks(config.ranks, "data.ranks")
        missing = [r for r in wanted if r not in ranks]
        if missing:
            raise DataError(
                f"data.ranks asks for {missing[0]!r}, which dataset '{config.dataset}' does not have "
                f"(it has {', '.join(ranks)})"
            )
        offset = ranks.index(wanted[0])
        present = [_narrow(r, offset, len(wanted)) for r in present]
        ranks = wanted
    kept = []
    for record in present:
        lineage = record.lineage()
        if not lineage:
            skipped.add("no known rank", record.source)
        elif len(lineage) < len(ranks):
            if config.unknown_species == "keep" and ranks[-1] == "species":
                notes["kept with unknown species"] += 1
                kept.append(record)
            else:
                skipped.add("unknown species" if ranks[-1] == "species" else "unknown finest rank", record.source)
        else:
            kept.append(record)
        if any(label is not None for label in record.labels[len(lineage) :]) and lineage:
            notes["labels below an unknown rank (ignored)"] += 1

    # 4. splits, matched case-insensitively (`Train` is the train split) and spelled as the config spells them
    wanted_splits = {s.casefold(): s for s in (config.train_split, config.eval_split) if s is not None}
    in_splits = []
    for record in kept:
        split = wanted_splits.get(record.split.strip().casefold())
        if split is not None:
            in_splits.append(record if split == record.split else replace(record, split=split))
    other = len(kept) - len(in_splits)
    if other:
        used = " or ".join(s for s in (config.train_split, config.eval_split) if s)
        leave_out(f"in other splits (not {used})", other)

    # 5. repeated rows, images that do not decode or leave the root, species under several lineages
    in_splits = drop_duplicates(in_splits, config, skipped)
    in_splits = check_images(in_splits, root, config, skipped, show_progress)
    conflicts = lineage_conflicts(in_splits, len(ranks))
    in_splits = resolve_lineage_conflicts(in_splits, len(ranks), config, notes)
    train = [r for r in in_splits if r.split == config.train_split]
    evaluation = [r for r in in_splits if config.eval_split is not None and r.split == config.eval_split]
    if not train:
        splits = ", ".join(sorted({r.split for r in kept})) or "none"
        raise DataError(
            f"dataset '{config.dataset}' ({annotations}) has no training images in split "
            f"{config.train_split!r} (splits present: {splits})"
        )

    # 6. species filters and subset, on full-lineage training counts
    counts = Counter(r.lineage() for r in train if len(r.lineage()) == len(ranks))
    selected = sorted(
        lineage
        for lineage, n in counts.items()
        if n >= config.min_images_per_species
        and (config.max_images_per_species is None or n <= config.max_images_per_species)
    )
    selected = _subset(selected, config, ranks)
    if not selected:
        raise DataError(
            f"dataset '{config.dataset}': no species left after the filters "
            f"(min_images_per_species={config.min_images_per_species}, "
            f"max_images_per_species={config.max_images_per_species}, species_subset={config.species_subset.mode})"
        )
    withheld = _withheld(selected, evaluation, config, ranks) if config.unseen_species.enabled else set()
    leave_out("training images of unseen species (data.unseen_species)", sum(r.lineage() in withheld for r in train))
    unseen = [r for r in evaluation if r.lineage() in withheld]
    train = [r for r in train if r.lineage() not in withheld]
    evaluation = [r for r in evaluation if r.lineage() not in withheld]
    selected = [lineage for lineage in selected if lineage not in withheld]
    chosen = set(selected)
    ancestors = {lineage[:depth] for lineage in selected for depth in range(1, len(lineage))}

    def in_scope(record: Record) -> bool:
        lineage = record.lineage()
        return lineage in chosen if len(lineage) == len(ranks) else lineage in ancestors

    leave_out("training images of species left out by filters", sum(not in_scope(r) for r in train))
    train = [r for r in train if in_scope(r)]
    trained = set(counts)
    untrained = [r for r in evaluation if not in_scope(r)]
    leave_out("evaluation images of species without training images",
              sum(r.lineage() not in trained for r in untrained))
    leave_out("evaluation images of species left out by filters", sum(r.lineage() in trained for r in untrained))
    evaluation = [r for r in evaluation if in_scope(r)]

    # 7. few-shot cap
    if config.few_shot is not None:
        per_species: Counter[tuple[str, ...]] = Counter()
        capped = []
        for record in sorted(train, key=lambda r: str(r.image)):
            per_species[record.lineage()] += 1
            if per_species[record.lineage()] <= config.few_shot:
                capped.append(record)
        leave_out("training images above the few-shot cap", len(train) - len(capped))
        train = capped

    return TaxaData(
        dataset=config.dataset,
        root=root,
        ranks=tuple(ranks),
        train=train,
        eval=evaluation,
        taxonomy=Taxonomy(ranks, train),
        skipped=skipped,
        notes=dict(notes),
        rare_threshold=config.rare_threshold,
        rows_read=output.rows,
        noted_rows=noted,
        lineage_conflicts=conflicts,
        unseen=unseen,
    )


def _narrow(record: Record, offset: int, length: int) -> Record:
    return Record(
        image=record.image,
        labels=record.labels[offset : offset + length],
        split=record.split,
        source=record.source,
        bbox=record.bbox,
        extra=record.extra,
    )


def _subset(lineages: list[tuple[str, ...]], config: DataConfig, ranks: tuple[str, ...]) -> list[tuple[str, ...]]:
    subset = config.species_subset
    if subset.mode == "all":
        return lineages
    if subset.mode == "first":
        return lineages[: subset.n]
    if subset.mode == "random":
        return sorted(random.Random(subset.seed).sample(lineages, min(subset.n, len(lineages))))
    taxonomy = Taxonomy(ranks, [Record(Path(), lineage, "", "") for lineage in lineages])
    return sorted({taxonomy.resolve(name, rank="species").lineage for name in subset.names})


def _withheld(selected: list[tuple[str, ...]], evaluation: list[Record], config: DataConfig,
              ranks: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The lineages of the species `data.unseen_species` withholds from training, among the species `selected` by
    the filters: each must have evaluation images, and its genus must keep at least one training species."""
    where, unseen = "data.unseen_species", config.unseen_species
    if ranks[-1] != "species" or "genus" not in ranks:
        raise ConfigError(f"{where}: withholding species needs the ranks genus and species; the dataset's ranks are "
                          f"{', '.join(ranks)}")
    evaluated = Counter(r.lineage() for r in evaluation)
    per_genus = Counter(lineage[:-1] for lineage in selected)
    if unseen.names:
        taxonomy = Taxonomy(ranks, [Record(Path(), lineage, "", "") for lineage in selected])
        chosen: dict[tuple[str, ...], str] = {}
        for index, name in enumerate(unseen.names):
            key = f"{where}.names[{index}]"
            try:
                taxon = taxonomy.resolve(name, rank="species")
            except TaxabenchError as error:
                raise ConfigError(f"{key}: {error} (among the {len(selected)} species left by the filters)") from error
            if not evaluated[taxon.lineage]:
                raise ConfigError(f"{key}: {taxon.scientific_name} has no images in the evaluation split "
                                  f"{config.eval_split!r} to be evaluated on")
            chosen[taxon.lineage] = key
        left = per_genus - Counter(lineage[:-1] for lineage in chosen)
        for lineage, key in reversed(chosen.items()):  # the name that took the genus's last training species
            if left[lineage[:-1]] < 1:
                raise ConfigError(f"{key}: withholding it leaves genus {lineage[-2]!r} with no training species; a "
                                  "withheld species needs a sibling in training (its lineage down to the genus)")
        return set(chosen)
    order = sorted(lineage for lineage in selected if evaluated[lineage] and per_genus[lineage[:-1]] > 1)
    random.Random(unseen.seed).shuffle(order)
    left, chosen_lineages = Counter(per_genus), []
    for lineage in order:  # each genus can give all but one of its species
        if len(chosen_lineages) < unseen.count and left[lineage[:-1]] > 1:
            chosen_lineages.append(lineage)
            left[lineage[:-1]] -= 1
    if len(chosen_lineages) < unseen.count:
        raise ConfigError(
            f"{where}.count: {unseen.count} species asked for, but at most {len(chosen_lineages)} of the "
            f"{len(selected)} species left by the filters can be withheld (a withheld species needs evaluation "
            "images and a genus that keeps another species in training)")
    return set(chosen_lineages)
