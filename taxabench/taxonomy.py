"""Ranks, records, lineages and the caption formats every other module uses.

A taxon is identified by its full lineage path (`Actinopterygii/Perciformes/Pomacentridae`), never by its name
alone: real datasets reuse names under different parents (FishNet has families filed under two orders), and
those must stay two taxa. Missing labels (NaN, empty, `not_classified`, `None`) become `None`, "unknown", and
never a taxon called "nan"; a record's lineage stops at its first unknown rank.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from taxabench.errors import ConfigError, TaxabenchError

RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
UNKNOWN_MARKERS = frozenset({"", "nan", "none", "null", "na", "n/a", "not_classified", "unknown", "unclassified"})
UNKNOWN_RANK_TEXT = "None"  # the authors' word for a missing or dropped rank name: "species: None"


def check_ranks(ranks: Sequence[str], where: str = "ranks") -> tuple[str, ...]:
    """Ranks must be known, in order, and contiguous (class..species, not class, family, species)."""
    unknown = [r for r in ranks if r not in RANKS]
    if unknown:
        raise ConfigError(f"{where}: unknown rank {unknown[0]!r}; ranks are {', '.join(RANKS)}")
    if not ranks:
        raise ConfigError(f"{where}: at least one rank is needed")
    start = RANKS.index(ranks[0])
    if tuple(ranks) != RANKS[start : start + len(ranks)]:
        raise ConfigError(f"{where}: ranks must be contiguous and ordered coarse to fine, got {list(ranks)}")
    return tuple(ranks)


def normalize_label(value: object) -> str | None:
    """A label as text, or None when it is one of the markers of a missing label."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = " ".join(str(value).split())
    return None if text.lower() in UNKNOWN_MARKERS else text


def species_epithet(genus: str | None, species: str) -> str:
    """`Abudefduf saxatilis` under genus `Abudefduf` -> `saxatilis`; an epithet alone is returned as is."""
    if genus and species.lower().startswith(genus.lower() + " "):
        species = species[len(genus) + 1 :]
    return species.lower()


@dataclass(frozen=True)
class Record:
    """One image and its labels, the same for every dataset adapter."""

    image: Path
    labels: tuple[str | None, ...]  # aligned with the dataset's ranks, coarse to fine; None = unknown
    split: str
    source: str  # "file:row" (or "file:image-id"), for error messages
    bbox: tuple[float, float, float, float] | None = None  # x, y, width, height in pixels
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. SynthTaxa's ground-truth trait columns

    def lineage(self) -> tuple[str, ...]:
        """Known labels from the top rank down, stopping at the first unknown one."""
        known = []
        for label in self.labels:
            if label is None:
                break
            known.append(label)
        return tuple(known)


@dataclass(frozen=True)
class Taxon:
    id: str  # the lineage path: names from the top rank down to this one, joined by "/"
    rank: str
    lineage: tuple[str, ...]
    ranks: tuple[str, ...]  # the ranks of `lineage`

    @property
    def name(self) -> str:
        return self.lineage[-1]

    @property
    def parent_id(self) -> str | None:
        return "/".join(self.lineage[:-1]) or None

    @property
    def slug(self) -> str:
        """A readable folder name that is unique where the id is: the lineage joined by dots."""
        return ".".join(re.sub(r"[^A-Za-z0-9_-]+", "-", name) for name in self.lineage)

    @property
    def scientific_name(self) -> str:
        """`Abudefduf saxatilis` for a species, the name itself for higher ranks."""
        if self.rank == "species" and len(self.lineage) >= 2 and self.ranks[-2] == "genus":
            return f"{self.lineage[-2]} {self.name}"
        return self.name


def taxon_id(lineage: Iterable[str]) -> str:
    return "/".join(lineage)


class Taxonomy:
    """The tree spanned by a set of records: nodes by lineage path, children, vocabularies, image counts."""

    def __init__(self, ranks: Sequence[str], records: Iterable[Record]):
        self.ranks = check_ranks(ranks)
        self._taxa: dict[str, Taxon] = {}
        self._children: dict[str | None, list[str]] = defaultdict(list)
        self._counts: Counter[str] = Counter()
        for record in records:
            lineage = record.lineage()
            for depth in range(1, len(lineage) + 1):
                node = taxon_id(lineage[:depth])
                self._counts[node] += 1
                if node not in self._taxa:
                    self._taxa[node] = Taxon(node, self.ranks[depth - 1], lineage[:depth], self.ranks[:depth])
                    self._children[taxon_id(lineage[: depth - 1]) or None].append(node)
                elif self._taxa[node].lineage != lineage[:depth]:  # a name containing "/" can fake a level
                    raise TaxabenchError(
                        f"{record.source}: lineages {list(self._taxa[node].lineage)} and {list(lineage[:depth])} "
                        f"have the same id {node!r}; rename the taxon whose name contains '/'"
                    )
        for children in self._children.values():
            children.sort()
        slugs = Counter(t.slug for t in self._taxa.values())
        clash = next((s for s, n in slugs.items() if n > 1), None)
        if clash:
            ids = [t.id for t in self._taxa.values() if t.slug == clash]
            raise TaxabenchError(f"taxa {ids} have the same folder name {clash!r}; rename one of them")

    # -- lookup -------------------------------------------------------------------------------------------------
    def __contains__(self, taxon_id_: str) -> bool:
        return taxon_id_ in self._taxa

    def __getitem__(self, taxon_id_: str) -> Taxon:
        return self._taxa[taxon_id_]

    def taxa(self, rank: str | None = None) -> list[Taxon]:
        """All taxa of one rank (or all), sorted by id."""
        return sorted((t for t in self._taxa.values() if rank is None or t.rank == rank), key=lambda t: t.id)

    def children(self, taxon_id_: str | None) -> list[Taxon]:
        return [self._taxa[c] for c in self._children.get(taxon_id_, [])]

    def image_count(self, taxon_id_: str) -> int:
        return self._counts[taxon_id_]

    def vocabulary(self, rank: str) -> list[str]:
        """Distinct names at a rank (a name under two parents appears once)."""
        return sorted({t.name for t in self.taxa(rank)})

    def homonyms(self) -> dict[str, dict[str, list[str]]]:
        """rank -> name -> ids, for names that sit under more than one parent (reported by `data stats`)."""
        found: dict[str, dict[str, list[str]]] = {}
        for rank in self.ranks:
            by_name: dict[str, list[str]] = defaultdict(list)
            for taxon in self.taxa(rank):
                by_name[taxon.name].append(taxon.id)
            shared = {name: ids for name, ids in by_name.items() if len(ids) > 1}
            if shared:
                found[rank] = shared
        return found

    def rare_species(self, threshold: int) -> list[Taxon]:
        """Species with at most `threshold` images in the records this taxonomy was built from."""
        return [t for t in self.taxa("species") if self._counts[t.id] <= threshold]

    def resolve(self, query: str, rank: str | None = None) -> Taxon:
        """Find a taxon by id, slug, unique name or scientific name; unknown queries suggest close matches."""
        candidates = self.taxa(rank)
        for key in ("id", "slug", "scientific_name", "name"):
            matches = [t for t in candidates if getattr(t, key) == query]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                ids = ", ".join(t.id for t in matches)
                raise TaxabenchError(f"taxon {query!r} is ambiguous: it names {ids}; give the full lineage id")
        names = [name for t in candidates for name in (t.id, t.scientific_name, t.name)]
        close = difflib.get_close_matches(query, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        where = f" at rank {rank!r}" if rank else ""
        raise TaxabenchError(f"unknown taxon {query!r}{where}{hint}")

    def labels_of(self, taxon: Taxon) -> tuple[str | None, ...]:
        """A taxon as a full label tuple over this taxonomy's ranks (finer ranks unknown)."""
        return taxon.lineage + (None,) * (len(self.ranks) - len(taxon.lineage))


# ---------------------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------------------


def rank_prompts(
    ranks: Sequence[str], labels: Sequence[str | None], names: Mapping[str, str] | None = None,
    binomial: bool = False, all_ranks: Sequence[str] | None = None, all_labels: Sequence[str | None] | None = None,
) -> list[str]:
    """TaxaDiffusion's per-rank strings: `["class: Actinopterygii", ..., "species: saxatilis"]`.

    `names` renames a rank in its string (the authors write FishNet's species rank as `specific_epithet`);
    `binomial` writes a species as genus + epithet (`"specific_epithet: Abudefduf saxatilis"`, as the authors'
    FishNet and BIOSCAN loaders do), taking the genus from `all_labels` over `all_ranks` (default: `labels`).
    An unknown label reads `"<rank>: None"`, the same string condition dropout uses.
    """
    names = names or {}
    lineage = dict(zip(all_ranks or ranks, all_labels or labels))
    strings = []
    for rank, label in zip(ranks, labels):
        text = label if label is not None else UNKNOWN_RANK_TEXT
        if binomial and rank == "species" and label is not None and lineage.get("genus"):
            text = f"{_capitalised(lineage['genus'])} {label}"
        strings.append(f"{names.get(rank, rank)}: {text}")
    return strings


def unknown_rank_prompt(rank: str, names: Mapping[str, str] | None = None) -> str:
    """`"class: None"`: the string of a rank whose name is unknown or dropped."""
    return f"{(names or {}).get(rank, rank)}: {UNKNOWN_RANK_TEXT}"


def bioclip_caption(ranks: Sequence[str], labels: Sequence[str | None], above: Sequence[str] = ()) -> str:
    """BioCLIP's taxonomic caption: `"a photo of Animalia Chordata ... Abudefduf saxatilis."`.

    Names from the top rank down to the first unknown one; genus capitalised, species epithet lower-case.
    `above` names the ranks a dataset lacks above its top one (FishNet: Animalia, Chordata; see
    `data.lineage_above`), because BioCLIP was trained on full kingdom-to-species captions.
    """
    names = [_capitalised(name) for name in above]
    for rank, label in zip(ranks, labels):
        if label is None:
            break
        names.append(label.lower() if rank == "species" else _capitalised(label))
    return f"a photo of {' '.join(names)}."


def species_prompt(ranks: Sequence[str], labels: Sequence[str | None]) -> str:
    """The text prompt of text-only baselines: `"a photo of Abudefduf saxatilis"` (the finest known name)."""
    known = [(rank, label) for rank, label in zip(ranks, labels) if label is not None]
    if not known:
        return "a photo"
    rank, label = known[-1]
    if rank == "species" and len(known) >= 2 and known[-2][0] == "genus":
        return f"a photo of {_capitalised(known[-2][1])} {label.lower()}"
    return f"a photo of {_capitalised(label)}"


def _capitalised(name: str) -> str:
    return name[:1].upper() + name[1:]
