"""Who is compared with whom: the evaluated taxa, their real images, and the taxa of every rank above them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from taxabench.data import TaxaData
from taxabench.errors import DataError
from taxabench.metrics.samples import SampleSet
from taxabench.taxonomy import Record, Taxon

SCOPE_OVERALL = "overall"
SCOPE_RARE = "rare"
SCOPE_COMMON = "common"
# the pooled scope of the evaluation on the species withheld from training (data.unseen_species; point `unseen`):
# it takes the place of overall, and there is no rare / common (those species have no training images)
SCOPE_UNSEEN = "unseen"


@dataclass
class EvalSets:
    """Generated images and the real images they are compared with, grouped by taxon at every rank.

    `units` are the taxa the generated images were conditioned on (all of rank `rank`); the real set is every
    evaluation-split image under a unit (the group's protocol: real images of exactly the evaluated taxa).
    """

    rank: str
    ranks: tuple[str, ...]  # the dataset's ranks from the top down to `rank`
    units: list[Taxon]
    generated: SampleSet
    real: list[Record]
    real_rows: np.ndarray  # index of each real image in the dataset's eval split (for cached split features)
    gen_unit: np.ndarray  # unit index of each generated image
    real_unit: np.ndarray  # unit index of each real image
    rare_units: np.ndarray | None  # bool per unit; None when units are not species (or unseen ones)
    pooled_name: str = SCOPE_OVERALL  # the scope of all units together: overall, or unseen
    _taxa: dict[str, tuple[list[Taxon], np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, data: TaxaData, samples: SampleSet, unseen: bool = False) -> EvalSets:
        """`unseen`: `data` is `TaxaData.unseen_view()` and the units are species no method was trained on."""
        units = sorted({img.taxon for img in samples.images}, key=lambda t: t.id)
        unit_index = {t.id: i for i, t in enumerate(units)}
        depth = data.ranks.index(samples.rank) + 1
        real_rows, real_unit = [], []
        for row, record in enumerate(data.eval):
            unit = unit_index.get("/".join(record.lineage()[:depth]))
            if unit is not None and len(record.lineage()) >= depth:
                real_rows.append(row)
                real_unit.append(unit)
        if not real_rows:
            raise DataError(
                f"the dataset's evaluation split has no real images of the {len(units)} evaluated taxa "
                f"(first: {units[0].id}); set data.eval_split to the split of held-out real images"
            )
        rare = None
        if samples.rank == "species" and not unseen:
            rare = np.array([data.taxonomy.image_count(t.id) <= data.rare_threshold for t in units])
        return cls(
            rank=samples.rank,
            ranks=data.ranks[:depth],
            units=units,
            generated=samples,
            real=[data.eval[i] for i in real_rows],
            real_rows=np.array(real_rows),
            gen_unit=np.array([unit_index[img.taxon.id] for img in samples.images]),
            real_unit=np.array(real_unit),
            rare_units=rare,
            pooled_name=SCOPE_UNSEEN if unseen else SCOPE_OVERALL,
        )

    def real_as_subject(self) -> EvalSets:
        """These sets with the real images in the generated images' place: per-image metrics score held-out real
        images through it for the ceiling row (`gen_unit` becomes `real_unit`)."""
        return EvalSets(self.rank, self.ranks, self.units, self.generated, self.real, self.real_rows,
                        gen_unit=self.real_unit, real_unit=self.real_unit, rare_units=self.rare_units,
                        pooled_name=self.pooled_name)

    def pooled_scopes(self) -> list[tuple[str, np.ndarray]]:
        """(scope name, unit indices) of the pooled scopes: overall (or unseen), and rare / common when units are
        trained species."""
        scopes = [(self.pooled_name, np.arange(len(self.units)))]
        if self.rare_units is not None:
            for name, mask in ((SCOPE_RARE, self.rare_units), (SCOPE_COMMON, ~self.rare_units)):
                if mask.any():
                    scopes.append((name, np.flatnonzero(mask)))
        return scopes

    def taxa_at(self, rank: str) -> tuple[list[Taxon], np.ndarray]:
        """The taxa of `rank` above (or equal to) the units, and each unit's index among them."""
        if rank not in self._taxa:
            depth = self.ranks.index(rank) + 1
            ids = sorted({"/".join(u.lineage[:depth]) for u in self.units})
            index = {taxon_id: i for i, taxon_id in enumerate(ids)}
            taxa = [_ancestor(u, depth) for u in self.units]
            by_id = {t.id: t for t in taxa}
            self._taxa[rank] = ([by_id[i] for i in ids], np.array([index[t.id] for t in taxa]))
        return self._taxa[rank]

    def gen_taxa(self, rank: str) -> tuple[list[Taxon], np.ndarray]:
        """The taxa of `rank` and the index of each generated image's taxon among them."""
        taxa, of_unit = self.taxa_at(rank)
        return taxa, of_unit[self.gen_unit]

    def real_taxa(self, rank: str) -> tuple[list[Taxon], np.ndarray]:
        taxa, of_unit = self.taxa_at(rank)
        return taxa, of_unit[self.real_unit]

    def real_count(self, units: np.ndarray) -> int:
        return int(np.isin(self.real_unit, units).sum())


def _ancestor(taxon: Taxon, depth: int) -> Taxon:
    return Taxon("/".join(taxon.lineage[:depth]), taxon.ranks[depth - 1], taxon.lineage[:depth], taxon.ranks[:depth])
