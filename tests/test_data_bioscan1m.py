"""The `bioscan1m` adapter on a small copy of the release's layout: the metadata TSV with its real columns and
`not_classified` labels, two image packages with part<chunk> folders, partition columns as splits."""

import gzip
import json
from pathlib import Path

import pytest
from conftest import write_png

from taxabench.cli import main
from taxabench.config import Bioscan1mOptions, DataConfig, config_from_dict
from taxabench.data import load_dataset
from taxabench.errors import ConfigError, DataError

# the release's columns (BIOSCAN_Insect_Dataset_metadata.tsv)
COLUMNS = ["sampleid", "processid", "uri", "name", "phylum", "class", "order", "family", "subfamily", "tribe",
           "genus", "species", "subspecies", "nucraw", "image_file", "large_diptera_family",
           "medium_diptera_family", "small_diptera_family", "large_insect_order", "medium_insect_order",
           "small_insect_order", "chunk_number", "copyright_license", "copyright_holder"]
NC = "not_classified"


def row(image, chunk, order, family, genus, species, large="train", small="no_split"):
    return {"sampleid": image.split(".")[0], "processid": f"P{image.split('.')[0]}", "uri": "BOLD:AAA0001",
            "name": species if species != NC else genus, "phylum": "Arthropoda", "class": "Insecta",
            "order": order, "family": family, "subfamily": NC, "tribe": NC, "genus": genus, "species": species,
            "subspecies": NC, "nucraw": "ACGTTGCA" * 8, "image_file": image, "large_diptera_family": "no_split",
            "medium_diptera_family": "no_split", "small_diptera_family": "no_split", "large_insect_order": large,
            "medium_insect_order": large, "small_insect_order": small, "chunk_number": str(chunk),
            "copyright_license": "CC BY 3.0", "copyright_holder": "CBG Photography Group"}


ROWS = [
    row("BIOUG001-A01.jpg", 1, "Diptera", "Psychodidae", "Lutzomyia", "Lutzomyia cruciata"),
    row("BIOUG001-A02.jpg", 1, "Diptera", "Psychodidae", "Lutzomyia", "Lutzomyia cruciata", small="train"),
    row("BIOUG001-A03.jpg", 2, "Diptera", "Psychodidae", "Lutzomyia", "Lutzomyia longipalpis"),
    # genus not classified, species binomial: the genus comes from the binomial (the dataset's own loader)
    row("BIOUG001-A04.jpg", 2, "Coleoptera", "Dytiscidae", NC, "Hydroporus striola"),
    row("BIOUG001-A05.jpg", 2, "Coleoptera", "Dytiscidae", "Hydroporus", NC),  # unknown species
    row("BIOUG001-A06.jpg", 3, "Coleoptera", NC, NC, NC),  # known down to order only
    # a family name under two orders must stay two taxa
    row("BIOUG001-A07.jpg", 3, "Hemiptera", "Psychodidae", "Fakeus", "Fakeus alter"),
    row("BIOUG001-A08.jpg", 3, "Diptera", "Psychodidae", "Lutzomyia", "Lutzomyia cruciata", large="validation",
        small="test"),
    row("BIOUG001-A09.jpg", 1, "Diptera", "Psychodidae", "Lutzomyia", "Lutzomyia longipalpis", large="test"),
    row("BIOUG001-A10.jpg", 1, "Diptera", "Psychodidae", "Lutzomyia", "Lutzomyia cruciata", large="no_split"),
]
METADATA = "BIOSCAN_Insect_Dataset_metadata.tsv"


def write_tsv(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    lines = ["\t".join(columns)] + ["\t".join(r.get(c, "") for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def make_release(tmp_path: Path, rows=ROWS, images: bool = True) -> Path:
    """`bioscan/` with the metadata and `images/{cropped_256,original_256}/part<chunk>/`; returns bioscan/."""
    bioscan = tmp_path / "bioscan"
    bioscan.mkdir()
    write_tsv(bioscan / METADATA, rows)
    for package, colour in (("cropped_256", (200, 180, 40)), ("original_256", (20, 40, 200))):
        for values in rows if images else []:
            write_png(bioscan / "images" / package / f"part{values['chunk_number']}" / values["image_file"], colour)
    return bioscan


def bioscan(root: Path, **overrides) -> DataConfig:
    overrides.setdefault("eval_split", "validation")
    return DataConfig(dataset="bioscan1m", root=str(root), **overrides)


def test_counts_labels_and_paths(tmp_path):
    package = make_release(tmp_path) / "images" / "cropped_256"
    data = load_dataset(bioscan(package))  # the metadata is found two levels up, the release layout
    assert data.ranks == ("class", "order", "family", "genus", "species")
    stats = data.stats()
    # train rows: A01-A07; A05 (unknown species) and A06 (no family) are skipped
    assert stats["images_per_split"] == {"train": 5, "eval": 1}
    assert stats["per_rank"] == {"class": 1, "order": 3, "family": 3, "genus": 3, "species": 4}
    assert stats["skipped"] == {"unknown species": 2}
    assert stats["notes"] == {"in other splits (not train or validation)": 2}
    striola = data.taxonomy.resolve("Hydroporus striola")
    assert striola.id == "Insecta/Coleoptera/Dytiscidae/Hydroporus/striola"
    assert data.train[0].image == package / "part1" / "BIOUG001-A01.jpg" and data.train[0].source == f"{METADATA}:2"
    assert data.eval[0].labels == ("Insecta", "Diptera", "Psychodidae", "Lutzomyia", "cruciata")


def test_package_is_the_root(tmp_path):
    bioscan_dir = make_release(tmp_path)
    for package in ("cropped_256", "original_256"):
        data = load_dataset(bioscan(bioscan_dir / "images" / package, annotations=str(bioscan_dir / METADATA)))
        assert all(r.image.parent.parent.name == package for r in data.train)
    with pytest.raises(DataError, match=r"metadata file not found at .*part1/BIOSCAN_Insect_Dataset_metadata.tsv "
                                        r"or .*bioscan/images/BIOSCAN_Insect_Dataset_metadata.tsv"):
        load_dataset(bioscan(bioscan_dir / "images" / "cropped_256" / "part1"))


def test_family_under_two_orders_is_two_taxa(tmp_path):
    data = load_dataset(bioscan(make_release(tmp_path) / "images" / "cropped_256"))
    assert [t.id for t in data.taxonomy.taxa("family")] == [
        "Insecta/Coleoptera/Dytiscidae", "Insecta/Diptera/Psychodidae", "Insecta/Hemiptera/Psychodidae"]
    assert data.stats()["homonyms"] == {"family": {"Psychodidae": 2}}


def test_unknown_labels_kept_or_dropped(tmp_path):
    package = make_release(tmp_path) / "images" / "cropped_256"
    data = load_dataset(bioscan(package, unknown_species="keep"))
    assert data.stats()["notes"]["kept with unknown species"] == 2
    kept = {r.source: r.lineage() for r in data.train if r.labels[-1] is None}
    assert kept == {f"{METADATA}:6": ("Insecta", "Coleoptera", "Dytiscidae", "Hydroporus"),
                    f"{METADATA}:7": ("Insecta", "Coleoptera")}
    assert all(NC not in t.id and "nan" not in t.id.lower() for t in data.taxonomy.taxa())


def test_split_column_is_a_config_choice(tmp_path):
    package = make_release(tmp_path) / "images" / "cropped_256"
    small = load_dataset(bioscan(package, eval_split="test",
                                 bioscan1m=Bioscan1mOptions(split_column="small_insect_order")))
    assert [r.image.name for r in small.train] == ["BIOUG001-A02.jpg"]
    assert [r.image.name for r in small.eval] == ["BIOUG001-A08.jpg"]
    everything = load_dataset(bioscan(package, eval_split=None, bioscan1m=Bioscan1mOptions(split_column=None)))
    assert len(everything.train) == 8 and everything.stats()["per_rank"]["species"] == 4
    with pytest.raises(ConfigError, match=r"data.bioscan1m.split_column: expected one of .*small_insect_order"):
        config_from_dict({"data": {"dataset": "bioscan1m", "bioscan1m": {"split_column": "small_insect"}}})


def test_cli_stats_json(tmp_path, capsys):
    bioscan_dir = make_release(tmp_path)
    package = bioscan_dir / "images" / "cropped_256"
    assert main(["data", "stats", "--dataset", "bioscan1m", "--root", str(package), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == 5 + 1  # eval split 'test' (the default): A09
    assert stats["per_rank"] == {"class": 1, "order": 3, "family": 3, "genus": 3, "species": 4}
    assert stats["skipped"] == {"unknown species": 2} and stats["homonyms"] == {"family": {"Psychodidae": 2}}
    assert main(["data", "stats", "--dataset", "bioscan1m", "--root", str(package), "--annotations",
                 str(bioscan_dir / METADATA), "--split", "validation", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_rank"]["species"] == 1


def test_missing_image_is_an_error_or_a_counted_skip(tmp_path):
    package = make_release(tmp_path) / "images" / "cropped_256"
    (package / "part3" / "BIOUG001-A07.jpg").unlink()
    with pytest.raises(DataError, match=rf"{METADATA}:8: image file not found: .*part3/BIOUG001-A07.jpg"):
        load_dataset(bioscan(package))
    data = load_dataset(bioscan(package, on_missing_image="skip"))
    assert data.stats()["skipped"] == {"missing image file": 1, "unknown species": 2}
    assert data.stats()["homonyms"] == {}


def test_missing_column_and_malformed_file(tmp_path):
    bioscan_dir = make_release(tmp_path)
    package = bioscan_dir / "images" / "cropped_256"
    write_tsv(bioscan_dir / METADATA, ROWS, [c for c in COLUMNS if c != "chunk_number"])
    with pytest.raises(DataError, match=rf"{METADATA}: missing column 'chunk_number'"):
        load_dataset(bioscan(package))
    write_tsv(bioscan_dir / METADATA, ROWS, [c for c in COLUMNS if c != "large_insect_order"])
    with pytest.raises(DataError, match=rf"{METADATA}: missing column 'large_insect_order'"):
        load_dataset(bioscan(package))
    write_tsv(bioscan_dir / METADATA, [{**ROWS[0], "chunk_number": "one"}])
    with pytest.raises(DataError, match=rf"{METADATA}:2: column 'chunk_number' is 'one', not a folder number"):
        load_dataset(bioscan(package))
    (bioscan_dir / METADATA).write_text("")
    with pytest.raises(DataError, match=rf"{METADATA}: cannot be read as a TSV table"):
        load_dataset(bioscan(package))
    (bioscan_dir / METADATA).write_bytes(gzip.compress("\t".join(COLUMNS).encode()))  # still compressed
    with pytest.raises(DataError, match=rf"{METADATA}: cannot be read as a TSV table"):
        load_dataset(bioscan(package))
    # a download cut off mid-row: the short row's empty cells name it
    write_tsv(bioscan_dir / METADATA, ROWS[:2])
    (bioscan_dir / METADATA).write_text((bioscan_dir / METADATA).read_text() + "S3\tPS3\tBOLD:AAA0001\tLutz\n")
    with pytest.raises(DataError, match=rf"{METADATA}:4: column 'chunk_number' is '', not a folder number"):
        load_dataset(bioscan(package))


def test_empty_dataset_and_paths_outside_root(tmp_path):
    bioscan_dir = make_release(tmp_path)
    package = bioscan_dir / "images" / "cropped_256"
    write_tsv(bioscan_dir / METADATA, [])
    with pytest.raises(DataError, match=r"dataset 'bioscan1m' .* has no training images in split 'train' "
                                        r"\(splits present: none\)"):
        load_dataset(bioscan(package))
    write_tsv(bioscan_dir / METADATA, [*ROWS[:2], {**ROWS[2], "image_file": "../../../../outside.jpg"}])
    with pytest.raises(DataError, match=rf"{METADATA}:4: image path .* points outside the data root"):
        load_dataset(bioscan(package))
