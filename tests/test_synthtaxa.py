import hashlib
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from taxabench.config import DataConfig
from taxabench.data import load_dataset
from taxabench.data.synthtaxa import (
    COARSE_TRAITS,
    SPECIES_TRAITS,
    SynthTaxaSpec,
    build_world,
    generate,
    spec_for,
    traits_by_rank,
)
from taxabench.errors import DataError

SMALL_SPEC = SynthTaxaSpec(ranks=("family", "genus", "species"), branching=(2, 2, 2), image_size=32,
                           head_images=4, test_images=1, reference_images=1)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    a = generate(SMALL_SPEC, tmp_path / "a", show_progress=False)
    b = generate(SMALL_SPEC, tmp_path / "b", show_progress=False)
    c = generate(replace(SMALL_SPEC, seed=1), tmp_path / "c", show_progress=False)
    assert digest(a) == digest(b) != digest(c)
    assert generate(SMALL_SPEC, a, show_progress=False) == a  # reused, not regenerated
    with pytest.raises(DataError, match="holds a different SynthTaxa world"):
        generate(replace(SMALL_SPEC, seed=1), a, show_progress=False)


def test_a_world_another_process_finished_meanwhile_is_kept(tmp_path, monkeypatch):
    """Two processes of one run (accelerate) may generate the same world at once: the later one keeps the first's."""
    import taxabench.data.synthtaxa as synthtaxa

    reference = digest(generate(SMALL_SPEC, tmp_path / "reference", show_progress=False))
    out = tmp_path / "world"
    build_world_alone = synthtaxa.build_world

    def build_world_while_another_process_finishes(spec):
        world = build_world_alone(spec)
        monkeypatch.setattr(synthtaxa, "build_world", build_world_alone)
        generate(spec, out, show_progress=False)
        return world

    monkeypatch.setattr(synthtaxa, "build_world", build_world_while_another_process_finishes)
    assert generate(SMALL_SPEC, out, show_progress=False) == out
    assert digest(out) == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference", "world"]  # no partial folder left


def test_tiny_preset_is_long_tailed_and_read_back_through_csv(tiny_world):
    table = pd.read_csv(tiny_world / "metadata.csv")
    as_synthtaxa = load_dataset(DataConfig(dataset="synthtaxa", root=str(tiny_world)))
    as_csv = load_dataset(DataConfig(dataset="csv", root=str(tiny_world)))
    assert as_synthtaxa.stats() | {"dataset": "csv"} == as_csv.stats()
    stats = as_csv.stats()
    assert 24 <= stats["species"] <= 60
    assert stats["per_rank"] == {"class": 2, "order": 4, "family": 8, "genus": 16, "species": 32}
    train_counts = table[table.split == "train"].groupby("species").size()
    assert train_counts.min() == 1 and (train_counts <= 5).sum() >= 8 and train_counts.max() >= 30
    assert set(table.split) == {"train", "test", "reference", "validation"}
    assert (table[table.split == "test"].groupby("species").size() == 8).all()
    assert {f"trait_{t}" for t in COARSE_TRAITS + SPECIES_TRAITS} <= set(table.columns)


def test_traits_follow_the_taxonomy():
    """Coarse traits are shared by a rank's descendants; sibling species differ only in species traits."""
    world = build_world(spec_for("tiny", 0))
    owned = traits_by_rank(spec_for("tiny", 0).ranks)
    for depth, rank in enumerate(("class", "order", "family", "genus")):
        groups: dict[tuple, set] = {}
        for species in world:
            key = species.lineage[: depth + 1]
            groups.setdefault(key, set()).add(tuple(species.traits[t] for t in owned[rank]))
        assert all(len(values) == 1 for values in groups.values()), rank
    by_genus: dict[tuple, list] = {}
    for species in world:
        by_genus.setdefault(species.lineage[:-1], []).append(species)
    for siblings in by_genus.values():
        coarse = {tuple(s.traits[t] for t in COARSE_TRAITS) for s in siblings}
        fine = {tuple(s.traits[t] for t in SPECIES_TRAITS) for s in siblings}
        assert len(coarse) == 1 and len(fine) == len(siblings)


@pytest.mark.parametrize("n_ranks", [2, 3, 4, 5, 6, 7])
def test_every_rank_owns_a_trait(n_ranks):
    ranks = ("kingdom", "phylum", "class", "order", "family", "genus", "species")[-n_ranks:]
    owned = traits_by_rank(ranks)
    assert all(owned[r] for r in ranks) and owned[ranks[-1]] == SPECIES_TRAITS
    assert sum((list(owned[r]) for r in ranks[:-1]), []) == list(COARSE_TRAITS)


def test_unknown_preset():
    with pytest.raises(DataError, match="unknown synthtaxa preset 'huge'; available: tiny"):
        spec_for("huge", 0)


def test_pretraining_world_shares_coarse_taxa_and_no_genus_or_species():
    from taxabench.data.synthtaxa import build_world, pretraining_world

    for preset in ("tiny", "tiny-domain", "small-domain"):
        spec = spec_for(preset, 0)
        benchmark, pretraining = build_world(spec), pretraining_world(spec, 3, 5)
        assert {s.lineage[:3] for s in benchmark} == {s.lineage[:3] for s in pretraining}
        below = {n for s in benchmark for n in s.lineage[3:]}
        assert not below & {n for s in pretraining for n in s.lineage[3:]}, preset
        assert len(pretraining) == len(benchmark) and all(s.train_images == 5 for s in pretraining)


def test_domain_presets_have_a_constant_top_rank_that_owns_no_trait():
    from taxabench.data.synthtaxa import build_world, traits_by_rank

    for preset in ("tiny-domain", "small-domain"):
        spec = spec_for(preset, 0)
        world = build_world(spec)
        assert len({s.lineage[0] for s in world}) == 1
        owned = traits_by_rank(spec.ranks, spec.domain_top)
        assert owned["class"] == () and "silhouette" in owned["order"]
        assert len({s.traits["silhouette"] for s in world}) > 1


# data.fingerprint() of `tiny` seed 0 as read before SynthTaxa wrote `file_name` and per-split metadata (6fccd9b)
TINY_SEED0_FINGERPRINT = "4287aa1d847a942093628e76e283119be3613da78fc00a18b658c5d8d8d24025"


def test_world_is_an_imagefolder_and_its_fingerprint_did_not_change(tiny_world, tmp_path):
    import shutil

    import pandas as pd

    from taxabench.config import DataConfig
    from taxabench.data import load_dataset

    table = pd.read_csv(tiny_world / "metadata.csv", dtype=str)
    assert "file_name" in table.columns and "image" not in table.columns
    for split in ("train", "test", "validation", "reference"):  # each split folder an ImageFolder split
        of_split = pd.read_csv(tiny_world / "images" / split / "metadata.csv", dtype=str)
        assert (tiny_world / "images" / split / of_split["file_name"]).map(lambda p: p.is_file()).all()
        assert len(of_split) == (table["split"] == split).sum()
    new = load_dataset(DataConfig(dataset="synthtaxa", root=str(tiny_world)))
    assert new.fingerprint() == TINY_SEED0_FINGERPRINT
    old = tmp_path / "old"  # the layout worlds were written in before: column `image`, one metadata file
    shutil.copytree(tiny_world, old)
    table.rename(columns={"file_name": "image"}).to_csv(old / "metadata.csv", index=False)
    for split_metadata in (old / "images").glob("*/metadata.csv"):
        split_metadata.unlink()
    before = load_dataset(DataConfig(dataset="synthtaxa", root=str(old)))
    assert before.fingerprint() == TINY_SEED0_FINGERPRINT
    assert [(r.labels, r.split, r.extra) for r in before.train] == [(r.labels, r.split, r.extra) for r in new.train]


def test_hugging_face_datasets_loads_a_world_with_its_labels(tiny_world, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import pandas as pd

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tiny_world), cache_dir=str(tmp_path / "cache"))
    table = pd.read_csv(tiny_world / "metadata.csv", dtype=str)
    assert set(loaded) == {"train", "validation", "test"}
    for split, rows in loaded.items():
        assert rows.num_rows == (table["split"] == split).sum()
        first = rows[0]
        expected = table[table["split"] == split].iloc[0]
        assert [first[rank] for rank in ("class", "order", "family", "genus", "species")] == \
            [expected[rank] for rank in ("class", "order", "family", "genus", "species")]
        assert first["image"].size == (64, 64)
    reference = datasets.load_dataset("imagefolder", data_dir=str(tiny_world / "images" / "reference"),
                                      cache_dir=str(tmp_path / "cache"))
    assert reference["train"].num_rows == (table["split"] == "reference").sum()
