import math
from pathlib import Path

import pytest

from taxabench.errors import ConfigError, TaxabenchError
from taxabench.taxonomy import (
    Record,
    Taxonomy,
    bioclip_caption,
    check_ranks,
    normalize_label,
    rank_prompts,
    species_epithet,
    species_prompt,
)

RANKS = ("class", "order", "family", "genus", "species")


def record(*labels, split="train"):
    return Record(Path("x.png"), tuple(normalize_label(label) for label in labels), split, "t.csv:2")


@pytest.mark.parametrize("value", [None, math.nan, "", "  ", "nan", "NaN", "None", "not_classified", "N/A"])
def test_missing_labels_are_unknown(value):
    assert normalize_label(value) is None


def test_labels_are_kept_as_text():
    assert normalize_label("  Abudefduf   saxatilis ") == "Abudefduf saxatilis"
    assert normalize_label(3) == "3"


def test_ranks_must_be_known_ordered_and_contiguous():
    assert check_ranks(["class", "order"]) == ("class", "order")
    for bad in (["order", "class"], ["class", "family"], ["klass"], []):
        with pytest.raises(ConfigError):
            check_ranks(bad)


def test_same_family_name_under_two_orders_is_two_taxa():
    records = [
        record("Actinopterygii", "Perciformes", "Gobiidae", "Gobius", "niger"),
        record("Actinopterygii", "Gobiiformes", "Gobiidae", "Gobius", "paganellus"),
        record("Actinopterygii", "Gobiiformes", "Gobiidae", "Gobius", "paganellus"),
    ]
    taxonomy = Taxonomy(RANKS, records)
    families = taxonomy.taxa("family")
    assert [f.id for f in families] == [
        "Actinopterygii/Gobiiformes/Gobiidae",
        "Actinopterygii/Perciformes/Gobiidae",
    ]
    assert taxonomy.vocabulary("family") == ["Gobiidae"]
    assert taxonomy.homonyms()["family"] == {"Gobiidae": [f.id for f in families]}
    assert taxonomy.image_count("Actinopterygii/Gobiiformes/Gobiidae") == 2
    assert [c.name for c in taxonomy.children("Actinopterygii")] == ["Gobiiformes", "Perciformes"]
    with pytest.raises(TaxabenchError, match="ambiguous"):
        taxonomy.resolve("Gobiidae")


def test_lineage_stops_at_first_unknown_rank():
    taxonomy = Taxonomy(RANKS, [record("A", "B", "nan", "G", "s"), record("A", "B", "C", "G", "s")])
    assert taxonomy.image_count("A/B") == 2
    assert taxonomy.image_count("A/B/C/G/s") == 1
    assert "A/B/nan" not in taxonomy and "A/B/None" not in taxonomy
    assert all(t.name.lower() != "nan" for t in taxonomy.taxa())


def test_rare_species_and_resolution_with_suggestions():
    records = [record("A", "B", "C", "Genus", "common")] * 6 + [record("A", "B", "C", "Genus", "rarus")]
    taxonomy = Taxonomy(RANKS, records)
    assert [t.name for t in taxonomy.rare_species(5)] == ["rarus"]
    rare = taxonomy.resolve("Genus rarus")
    assert rare.id == "A/B/C/Genus/rarus" and rare.slug == "A.B.C.Genus.rarus"
    assert taxonomy.resolve("A.B.C.Genus.rarus") == rare == taxonomy.resolve("A/B/C/Genus/rarus")
    with pytest.raises(TaxabenchError, match="did you mean 'Genus rarus'"):
        taxonomy.resolve("Genus rarrus", rank="species")


def test_caption_formats():
    ranks = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
    labels = ("Animalia", "Chordata", "Actinopterygii", "Perciformes", "Pomacentridae", "abudefduf", "Saxatilis")
    assert bioclip_caption(ranks, labels) == (
        "a photo of Animalia Chordata Actinopterygii Perciformes Pomacentridae Abudefduf saxatilis."
    )
    assert rank_prompts(ranks[-2:], ("Abudefduf", None)) == ["genus: Abudefduf", "species: None"]
    assert species_prompt(ranks, labels) == "a photo of Abudefduf saxatilis"
    assert species_prompt(RANKS, ("A", "B", "Pomacentridae", None, None)) == "a photo of Pomacentridae"
    assert bioclip_caption(RANKS, ("A", "B", None, "G", "s")) == "a photo of A B."
    assert bioclip_caption(RANKS[-2:], ("Gobius", "niger"), above=("animalia", "Chordata")) == (
        "a photo of Animalia Chordata Gobius niger."
    )
    assert species_epithet("Abudefduf", "Abudefduf Saxatilis") == "saxatilis"
    assert species_epithet("Abudefduf", "saxatilis") == "saxatilis"


def test_a_slash_in_a_name_cannot_fake_a_level():
    records = [record("A/B", "C", "F", "G", "s"), record("A", "B", "F", "G", "s")]
    with pytest.raises(TaxabenchError, match="have the same id 'A/B'"):
        Taxonomy(RANKS, records)
