"""Mistake severity and path consistency against hand computation on a five-species tree, and the ceiling rows.

The tree (ranks family / genus / species)::

    Fa ─ Ga ─ a1, a2
       └ Gb ─ b1
    Fc ─ Gc ─ c1, c2

A text-image model with one embedding dimension per caption lets each test image "look like" a chosen family,
genus and species, so every zero-shot prediction is known by construction.
"""

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from taxabench.config import config_from_dict
from taxabench.data.base import SkipLog
from taxabench.data.loading import TaxaData
from taxabench.metrics.evaluation import EvalContext
from taxabench.metrics.extractor_base import TextImageExtractor
from taxabench.metrics.metric_mistake_severity import MistakeSeverity, lca_height
from taxabench.metrics.metric_path_consistency import PathConsistency, consistent_paths
from taxabench.metrics.metric_taxa_accuracy import TaxaAccuracy
from taxabench.metrics.samples import GeneratedImage, SampleSet
from taxabench.metrics.scopes import EvalSets
from taxabench.metrics.zero_shot import ancestor_indices
from taxabench.taxonomy import Record, Taxonomy, bioclip_caption

RANKS = ("family", "genus", "species")
SPECIES = {"a1": ("Fa", "Ga"), "a2": ("Fa", "Ga"), "b1": ("Fa", "Gb"), "c1": ("Fc", "Gc"), "c2": ("Fc", "Gc")}


def lineage(species: str) -> tuple[str, str, str]:
    return (*SPECIES[species], species)


def caption(names: tuple[str, ...]) -> str:
    return bioclip_caption(RANKS, names)


ALL_CAPTIONS = sorted({caption(lineage(s)[:d]) for s in SPECIES for d in (1, 2, 3)})


class OneHotCaptions(TextImageExtractor):
    """Each caption is its own axis; an image embedding is built from the captions it should match."""

    name = "onehot"
    features = ("embedding",)
    default_features: ClassVar[dict[str, str]] = {"*": "embedding"}

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.identity, self.protocol = "onehot@test", "none"

    def encode_text(self, captions):
        return torch.eye(len(ALL_CAPTIONS))[[ALL_CAPTIONS.index(c) for c in captions]]


def looks_like(family: str, genus: str, species: str) -> np.ndarray:
    """An image embedding whose best caption is `family` among families, `genus` among genera, and so on (the
    genus and species captions of a prediction need not be children of the predicted family)."""
    vector = np.zeros(len(ALL_CAPTIONS))
    genus_family = next(f for f, g in SPECIES.values() if g == genus)
    species_lineage = lineage(species)
    for text in (caption((family,)), caption((genus_family, genus)), caption(species_lineage)):
        vector[ALL_CAPTIONS.index(text)] = 1.0
    return vector / np.linalg.norm(vector)


def context_for(images: list[tuple[str, np.ndarray]], real: list[tuple[str, np.ndarray]]) -> EvalContext:
    """An evaluation of generated `images` (true species, embedding) against `real` ones, features given."""
    train = [Record(Path(f"{s}.png"), lineage(s), "train", f"train:{s}") for s in SPECIES]
    evaluation = [Record(Path(f"real{i}.png"), lineage(s), "eval", f"eval:{i}") for i, (s, _) in enumerate(real)]
    taxonomy = Taxonomy(RANKS, train)
    data = TaxaData("tree", Path("."), RANKS, train, evaluation, taxonomy, SkipLog(), rare_threshold=0)
    generated = [GeneratedImage(Path(f"g{i}.png"), taxonomy["/".join(lineage(s))], i, f"line {i}")
                 for i, (s, _) in enumerate(images)]
    sets = EvalSets.build(data, SampleSet(Path("."), "m", "species", generated, "manifest"))
    config = config_from_dict({"eval": {"clip_model": "synthclip", "bootstrap": 50}})
    context = EvalContext(config, data, sets, show_progress=False)
    context._extractors["synthclip"] = OneHotCaptions()
    context._features[("synthclip", "generated")] = {"embedding": np.stack([e for _, e in images])}
    context._features[("synthclip", "real")] = {"embedding": np.stack([e for _, e in real])}
    return context


def test_lca_height_by_hand():
    taxonomy = Taxonomy(RANKS, [Record(Path(), lineage(s), "train", "") for s in SPECIES])
    by_rank = {rank: taxonomy.taxa(rank) for rank in RANKS}
    species = by_rank["species"]
    ancestors = ancestor_indices(species, by_rank)
    index = {t.name: i for i, t in enumerate(species)}
    true = np.array([index["a1"]] * 4)
    predicted = np.array([index[s] for s in ("a1", "a2", "b1", "c1")])
    # right species; sibling in the genus; cousin in the family; different family (LCA = the root)
    assert lca_height(ancestors, predicted, true).tolist() == [0, 1, 2, 3]
    genus_ancestors = ancestor_indices(by_rank["genus"], by_rank)
    genera = {t.name: i for i, t in enumerate(by_rank["genus"])}
    assert lca_height(genus_ancestors, np.array([genera["Gb"], genera["Gc"]]), np.array([genera["Ga"]] * 2)).tolist() == [1, 2]


def test_path_consistency_by_hand():
    # families Fa=0 Fc=1; genera Ga=0 Gb=1 Gc=2 with parents [0, 0, 1]; species a1 a2 b1 c1 c2 with parents
    # [0, 0, 1, 2, 2]
    parents = [None, np.array([0, 0, 1]), np.array([0, 0, 1, 2, 2])]
    predicted = [np.array([0, 1, 0, 0]), np.array([0, 0, 0, 2]), np.array([1, 3, 3, 3])]
    # image 0: Fa Ga a2 (a path); 1: Fc Ga c1 (genus not in family); 2: Fa Ga c1 (species not in genus);
    # 3: Fa Gc c1 (genus not in family, species in genus)
    paths = consistent_paths(predicted, parents)
    assert [p.tolist() for p in paths] == [[True] * 4, [True, False, True, False], [True, False, False, False]]


def test_metrics_through_the_evaluation_context_match_the_hand_values():
    images = [
        ("a1", looks_like("Fa", "Ga", "a1")),  # right everywhere: severity 0 at every rank, a path
        ("a1", looks_like("Fa", "Ga", "a2")),  # sibling species: species severity 1; a path
        ("a1", looks_like("Fc", "Gb", "c1")),  # species c1 (3 from a1), genus Gb (1 from Ga), family Fc (1)
        ("c1", looks_like("Fc", "Gc", "b1")),  # species b1 vs c1 -> 3; genus right; species not in Gc
    ]
    real = [(s, looks_like(*lineage(s))) for s in ("a1", "a1", "c1")]
    context = context_for(images, real)
    severity = {(m.subject, m.scope.scope): m for m in MistakeSeverity().compute(context)}
    # species scope: mean over species a1 (images 0, 1, 2: severities 0, 1, 3) and c1 (image 3: 3)
    assert severity[("generated", "species")].scope.per_taxon == pytest.approx(
        {"Fa/Ga/a1": 4 / 3, "Fc/Gc/c1": 3.0})
    assert severity[("generated", "species")].scope.value == pytest.approx((4 / 3 + 3) / 2)
    # overall: pooled over the four images
    assert severity[("generated", "overall")].scope.value == pytest.approx((0 + 1 + 3 + 3) / 4)
    # genus rank: predictions Ga Ga Gb Gc for truths Ga Ga Ga Gc -> 0 0 1 0; taxa Ga (0, 0, 1), Gc (0)
    assert severity[("generated", "genus")].scope.value == pytest.approx((1 / 3 + 0) / 2)
    # family rank: Fa Fa Fc Fc for Fa Fa Fa Fc -> 0 0 1 0
    assert severity[("generated", "family")].scope.value == pytest.approx((1 / 3 + 0) / 2)
    # ceiling: the real images look exactly like their species
    assert severity[("real", "overall")].scope.value == 0 and severity[("real", "overall")].scope.n_generated == 3
    assert severity[("real", "species")].scope.n_taxa == 2

    paths = {(m.subject, m.scope.scope): m.scope for m in PathConsistency().compute(context)}
    # full paths: image 0 and 1 consistent; 2: Fc/Gb inconsistent; 3: Gc/b1 inconsistent
    assert paths[("generated", "overall")].value == pytest.approx(50.0)
    # down to genus: image 3 (Fc, Gc) is consistent, image 2 (Fc, Gb) is not -> a1's images 2/3, c1's 1/1
    assert paths[("generated", "genus")].per_taxon == pytest.approx({"Fa/Ga": 100 * 2 / 3, "Fc/Gc": 100.0})
    assert paths[("real", "overall")].value == 100.0

    top1 = {(m.metric, m.subject, m.scope.scope): m.scope for m in TaxaAccuracy().compute(context)}
    # severity 0 exactly where top-1 is right
    assert top1[("top1", "generated", "overall")].value == pytest.approx(25.0)
    assert top1[("top1", "real", "overall")].value == 100.0
