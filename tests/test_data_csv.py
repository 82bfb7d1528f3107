"""The generic CSV adapter and the loading steps every adapter shares: filters, unknowns, bad input."""

from pathlib import Path

import pytest
from conftest import write_png

from taxabench.config import CsvColumns, DataConfig, SpeciesSubset
from taxabench.data import load_dataset
from taxabench.data.images import TaxaImageDataset, load_image
from taxabench.errors import DataError

HEADER = "image,split,family,genus,species\n"


def make_dataset(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "metadata.csv") -> Path:
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    for row in rows:
        image = row.split(",")[0] if "," in row else row.split("\t")[0]
        if image and not image.startswith(("missing", "..", "/")):
            write_png(root / image)
    (root / name).write_text(header + "".join(r + "\n" for r in rows))
    return root


def csv_config(root: Path, **overrides) -> DataConfig:
    return DataConfig(dataset="csv", root=str(root), **overrides)


def species_rows(genus: str, species: str, n: int, split: str = "train", family: str = "Fam") -> list[str]:
    return [f"{genus}-{species}-{split}-{i}.png,{split},{family},{genus},{species}" for i in range(n)]


def test_reads_ranks_splits_and_counts(tmp_path):
    rows = species_rows("Ga", "aa", 3) + species_rows("Ga", "bb", 1) + species_rows("Ga", "aa", 2, "test")
    data = load_dataset(csv_config(make_dataset(tmp_path, rows)))
    assert data.ranks == ("family", "genus", "species")
    stats = data.stats()
    assert stats["images"] == 6 and stats["images_per_split"] == {"train": 4, "eval": 2}
    assert stats["per_rank"] == {"family": 1, "genus": 1, "species": 2}
    assert stats["long_tail"] == {"min": 1, "median": 3, "max": 3, "rare_species": 2}
    assert data.records_of(data.taxonomy.resolve("Ga aa"), "test")[0].split == "test"


def test_tsv_with_custom_columns_and_bbox(tmp_path):
    header = "path\tfold\tGenus\tSpecies\tx\ty\tw\th\n"
    rows = ["a.png\ttrain\tGa\taa\t1\t2\t10\t8", "b.png\ttrain\tGa\tbb\t\t\t\t"]
    root = make_dataset(tmp_path, rows, header, "labels.tsv")
    columns = CsvColumns(image="path", split="fold", ranks={"genus": "Genus", "species": "Species"},
                         bbox=["x", "y", "w", "h"])
    data = load_dataset(csv_config(root, annotations=str(root / "labels.tsv"), columns=columns))
    assert data.ranks == ("genus", "species")
    assert [r.bbox for r in data.train] == [(1.0, 2.0, 10.0, 8.0), None]
    assert load_image(data.train[0], 16, use_bbox=True).size == (16, 16)


def test_missing_column_names_file_and_column(tmp_path):
    root = make_dataset(tmp_path, ["a.png,train,Fam,Ga"], header="image,split,family,genus\n")
    config = csv_config(root, columns=CsvColumns(bbox=["x", "y", "w", "h"]))
    with pytest.raises(DataError, match=r"metadata.csv: missing column 'x'"):
        load_dataset(config)


def test_missing_image_is_an_error_or_a_counted_skip(tmp_path):
    rows = [*species_rows("Ga", "aa", 2), "missing.png,train,Fam,Ga,aa"]
    root = make_dataset(tmp_path, rows)
    with pytest.raises(DataError, match=r"metadata.csv:4: image file not found: .*missing.png"):
        load_dataset(csv_config(root))
    data = load_dataset(csv_config(root, on_missing_image="skip"))
    assert data.stats()["skipped"] == {"missing image file": 1}
    assert "metadata.csv:4" in data.stats()["skipped_examples"]["missing image file"][0]


def test_unreadable_image_names_file_and_row(tmp_path):
    root = make_dataset(tmp_path, species_rows("Ga", "aa", 2))
    dataset = TaxaImageDataset(load_dataset(csv_config(root)).train, size=16)
    assert dataset[0]["pixel_values"].shape == (3, 16, 16)
    (root / "Ga-aa-train-1.png").write_bytes(b"not a png")  # broken after the dataset was read
    with pytest.raises(DataError, match=r"metadata.csv:3: cannot read image .*Ga-aa-train-1.png"):
        dataset[1]
    with pytest.raises(DataError, match=r"metadata.csv:3: image .*Ga-aa-train-1.png does not decode"):
        load_dataset(csv_config(root))  # and when it is read again


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd"])
def test_paths_outside_root_are_refused(tmp_path, path):
    root = make_dataset(tmp_path, [*species_rows("Ga", "aa", 1), f"{path},train,Fam,Ga,aa"])
    with pytest.raises(DataError, match=r"metadata.csv:3: image path .* points outside the data root"):
        load_dataset(csv_config(root))


def test_empty_dataset_and_missing_files(tmp_path):
    root = make_dataset(tmp_path, [])
    with pytest.raises(DataError, match="no training images in split 'train'"):
        load_dataset(csv_config(root))
    with pytest.raises(DataError, match="annotation file not found"):
        load_dataset(csv_config(root, annotations=str(root / "nope.csv")))
    with pytest.raises(DataError, match="root folder not found"):
        load_dataset(csv_config(tmp_path / "nowhere"))
    (root / "metadata.csv").write_text("")
    with pytest.raises(DataError, match="cannot be read as a CSV table"):
        load_dataset(csv_config(root))


def test_unknown_species_dropped_or_kept_and_counted(tmp_path):
    rows = [*species_rows("Ga", "aa", 2), "u1.png,train,Fam,Ga,not_classified", "u2.png,train,Fam,Ga,",
            "u3.png,train,,,"]
    root = make_dataset(tmp_path, rows)
    dropped = load_dataset(csv_config(root))
    assert dropped.stats()["skipped"] == {"no known rank": 1, "unknown species": 2}
    kept = load_dataset(csv_config(root, unknown_species="keep"))
    assert len(kept.train) == 4 and kept.stats()["notes"]["kept with unknown species"] == 2
    assert kept.taxonomy.image_count("Fam/Ga") == 4 and kept.stats()["species"] == 1
    assert all("nan" not in t.id.lower() and "none" not in t.id.lower() for t in kept.taxonomy.taxa())


def test_species_filters_subsets_and_few_shot(tmp_path):
    rows = (species_rows("Ga", "aa", 5) + species_rows("Ga", "bb", 2) + species_rows("Gb", "cc", 1)
            + species_rows("Gb", "dd", 3) + species_rows("Gb", "cc", 2, "test"))
    root = make_dataset(tmp_path, rows)

    def species(**options):
        return [t.scientific_name for t in load_dataset(csv_config(root, **options)).species]

    assert species() == ["Ga aa", "Ga bb", "Gb cc", "Gb dd"]
    assert species(min_images_per_species=2) == ["Ga aa", "Ga bb", "Gb dd"]
    assert species(max_images_per_species=2) == ["Ga bb", "Gb cc"]
    assert species(species_subset=SpeciesSubset(mode="first", n=2)) == ["Ga aa", "Ga bb"]
    random_pick = species(species_subset=SpeciesSubset(mode="random", n=2, seed=3))
    assert len(random_pick) == 2 and random_pick == species(species_subset=SpeciesSubset(mode="random", n=2, seed=3))
    assert species(species_subset=SpeciesSubset(mode="list", names=["Gb dd", "Ga aa"])) == ["Ga aa", "Gb dd"]
    with pytest.raises(Exception, match="unknown taxon 'Gb zz'"):
        species(species_subset=SpeciesSubset(mode="list", names=["Gb zz"]))
    capped = load_dataset(csv_config(root, few_shot=2))
    assert capped.taxonomy.image_count(capped.taxonomy.resolve("Ga aa").id) == 2
    assert capped.stats()["notes"]["training images above the few-shot cap"] == 4
    no_cc = load_dataset(csv_config(root, min_images_per_species=2))
    assert all(r.labels[-1] != "cc" for r in no_cc.eval)  # eval images follow the species selection
    with pytest.raises(DataError, match="no species left after the filters"):
        load_dataset(csv_config(root, min_images_per_species=6))


def test_ranks_narrowing(tmp_path):
    root = make_dataset(tmp_path, species_rows("Ga", "aa", 2))
    data = load_dataset(csv_config(root, ranks=["genus", "species"]))
    assert data.ranks == ("genus", "species") and data.species[0].id == "Ga/aa"
    with pytest.raises(DataError, match="data.ranks asks for 'order'"):
        load_dataset(csv_config(root, ranks=["order", "family"]))


def test_fingerprint_changes_with_labels(tmp_path):
    root = make_dataset(tmp_path, species_rows("Ga", "aa", 2))
    first = load_dataset(csv_config(root)).fingerprint()
    assert first == load_dataset(csv_config(root)).fingerprint()
    (root / "metadata.csv").write_text(HEADER + "".join(r + "\n" for r in species_rows("Ga", "aa", 1)))
    assert load_dataset(csv_config(root)).fingerprint() != first


def test_pad_and_crop_resize(tmp_path):
    root = make_dataset(tmp_path, species_rows("Ga", "aa", 1))
    record = load_dataset(csv_config(root)).train[0]
    cropped, padded = load_image(record, 8, "center-crop"), load_image(record, 8, "pad")
    assert cropped.size == padded.size == (8, 8)
    assert cropped.getpixel((0, 0)) == (120, 80, 40)


def test_imagefolder_metadata_csv_and_jsonl_read_as_they_are(tmp_path):
    """Hugging Face ImageFolder's metadata: image column `file_name`, `metadata.csv` or `metadata.jsonl`."""
    import json

    rows = species_rows("Gen", "alpha", 3) + species_rows("Gen", "beta", 2, split="test")
    for sub in "abc":
        (tmp_path / sub).mkdir()
    as_image = load_dataset(csv_config(make_dataset(tmp_path / "a", rows)))
    folder = load_dataset(csv_config(make_dataset(tmp_path / "b", rows, header=HEADER.replace("image", "file_name"))))
    root = make_dataset(tmp_path / "c", rows, header=HEADER.replace("image", "file_name"))
    (root / "metadata.csv").unlink()
    keys = ("file_name", "split", "family", "genus", "species")
    (root / "metadata.jsonl").write_text("".join(json.dumps(dict(zip(keys, r.split(",")))) + "\n" for r in rows))
    jsonl = load_dataset(csv_config(root))

    def relative(data):
        return [(Path(r.image).relative_to(data.root).as_posix(), r.split, r.labels) for r in data.train + data.eval]

    assert relative(folder) == relative(jsonl) == relative(as_image) and len(as_image.train) == 3
    assert folder.fingerprint() == jsonl.fingerprint() == as_image.fingerprint()
    assert jsonl.train[0].source == "metadata.jsonl:1"
    (root / "metadata.jsonl").write_text('{"file_name": "x.png"}\nnot json\n')
    with pytest.raises(DataError, match=r"metadata.jsonl:2: not a JSON object"):
        load_dataset(csv_config(root))
