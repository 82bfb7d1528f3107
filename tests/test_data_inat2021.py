"""The `inat2021` adapter on a small copy of the competition layout: train.json / train_mini.json / val.json with
the `images`, `annotations` and `categories` sections, images under train/, train_mini/ and val/."""

import json
from pathlib import Path

import pytest
from conftest import write_png

from taxabench.cli import main
from taxabench.config import DataConfig
from taxabench.data import load_dataset
from taxabench.errors import DataError

RANK_KEYS = ("kingdom", "phylum", "class", "order", "family", "genus", "specific_epithet")


def category(cid, *names):
    lineage = dict(zip(RANK_KEYS, names))
    dir_name = f"{cid:05d}_" + "_".join(str(n) for n in names)
    return {"id": cid, "name": f"{names[5]} {names[6]}", "common_name": f"common {cid}", "supercategory": "Animals",
            **lineage, "image_dir_name": dir_name}


CATEGORIES = [
    category(0, "Animalia", "Annelida", "Clitellata", "Haplotaxida", "Lumbricidae", "Lumbricus", "terrestris"),
    category(1, "Animalia", "Annelida", "Clitellata", "Haplotaxida", "Lumbricidae", "Lumbricus", "rubellus"),
    category(2, "Animalia", "Arthropoda", "Insecta", "Odonata", "Libellulidae", "Sympetrum", "striolatum"),
    # the same family name under another order: two taxa
    category(3, "Animalia", "Arthropoda", "Insecta", "Hemiptera", "Libellulidae", "Fakeus", "alter"),
    # a category with no epithet: unknown at species rank
    category(4, "Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", None),
    category(5, "Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina"),
]


def split_json(split: str, per_category: dict[int, int], start_id: int = 0) -> dict:
    images, annotations = [], []
    for cid, count in per_category.items():
        for i in range(count):
            image_id = start_id + len(images)
            file_name = f"{split}/{CATEGORIES[cid]['image_dir_name']}/{image_id:04d}-{i}.jpg"
            images.append({"id": image_id, "width": 24, "height": 16, "file_name": file_name, "license": 0,
                           "rights_holder": "someone", "date": "2019-06-01", "latitude": float("nan"),
                           "longitude": 1.0, "location_uncertainty": 10})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": cid})
    return {"info": {"year": 2021, "version": "2021", "description": "iNat 2021 fixture"},
            "images": images, "annotations": annotations, "categories": CATEGORIES, "licenses": []}


def make_release(tmp_path: Path, images: bool = True) -> Path:
    root = tmp_path / "inat2021"
    root.mkdir()
    splits = {"train": split_json("train", {0: 3, 1: 1, 2: 2, 3: 1, 4: 2, 5: 1}),
              "train_mini": split_json("train_mini", {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}, start_id=100),
              "val": split_json("val", {0: 1, 2: 1, 3: 1}, start_id=200)}
    for split, data in splits.items():
        (root / f"{split}.json").write_text(json.dumps(data))
        for image in data["images"] if images else []:
            write_png(root / image["file_name"])
    return root


def inat(root: Path, **overrides) -> DataConfig:
    overrides.setdefault("eval_split", "val")
    return DataConfig(dataset="inat2021", root=str(root), **overrides)


def test_counts_labels_and_paths(tmp_path):
    root = make_release(tmp_path)
    data = load_dataset(inat(root))
    assert data.ranks == ("kingdom", "phylum", "class", "order", "family", "genus", "species")
    stats = data.stats()
    assert stats["images_per_split"] == {"train": 8, "eval": 3}  # two Rosa images have no species
    assert stats["per_rank"] == {"kingdom": 2, "phylum": 3, "class": 3, "order": 4, "family": 4, "genus": 4,
                                 "species": 5}
    assert stats["skipped"] == {"unknown species": 2}
    first = data.train[0]
    assert first.image == root / "train" / CATEGORIES[0]["image_dir_name"] / "0000-0.jpg"
    assert first.source == "train.json:image-0" and first.split == "train"
    assert first.labels == ("Animalia", "Annelida", "Clitellata", "Haplotaxida", "Lumbricidae", "Lumbricus",
                            "terrestris")
    assert first.extra == {"category_id": "0"}
    assert data.taxonomy.resolve("Lumbricus terrestris").id == (
        "Animalia/Annelida/Clitellata/Haplotaxida/Lumbricidae/Lumbricus/terrestris")
    mini = load_dataset(inat(root, train_split="train_mini"))
    assert mini.stats()["images_per_split"] == {"train": 4, "eval": 3}


def test_family_under_two_orders_is_two_taxa(tmp_path):
    data = load_dataset(inat(make_release(tmp_path)))
    libellulidae = [t.id for t in data.taxonomy.taxa("family") if t.name == "Libellulidae"]
    assert libellulidae == ["Animalia/Arthropoda/Insecta/Hemiptera/Libellulidae",
                            "Animalia/Arthropoda/Insecta/Odonata/Libellulidae"]
    assert data.stats()["homonyms"] == {"family": {"Libellulidae": 2}}


def test_unknown_species_kept(tmp_path):
    data = load_dataset(inat(make_release(tmp_path), unknown_species="keep"))
    assert data.stats()["notes"]["kept with unknown species"] == 2
    assert data.stats()["species"] == 5 and len(data.train) == 10
    assert data.taxonomy.image_count("Plantae/Tracheophyta/Magnoliopsida/Rosales/Rosaceae/Rosa") == 3


def test_cli_stats_json(tmp_path, capsys):
    root = make_release(tmp_path)
    assert main(["data", "stats", "--dataset", "inat2021", "--root", str(root), "--annotations",
                 str(root / "val.json"), "--split", "val", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == 3 and stats["species"] == 3
    assert stats["per_rank"] == {"kingdom": 1, "phylum": 2, "class": 2, "order": 3, "family": 3, "genus": 3,
                                 "species": 3}
    assert stats["homonyms"] == {"family": {"Libellulidae": 2}}
    assert main(["data", "stats", "--dataset", "inat2021", "--root", str(root), "--annotations",
                 str(root / "train.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == {"unknown species": 2}
    # the default eval split is 'test'; iNat has none, and the error says which splits there are
    assert main(["data", "stats", "--dataset", "inat2021", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "no annotation file for split 'test'" in out and "train, train_mini, val" in out


def test_missing_image_is_an_error_or_a_counted_skip(tmp_path):
    root = make_release(tmp_path)
    missing = root / "val" / CATEGORIES[3]["image_dir_name"] / "0202-0.jpg"
    missing.unlink()
    with pytest.raises(DataError, match=r"val.json:image-202: image file not found: .*0202-0.jpg"):
        load_dataset(inat(root))
    data = load_dataset(inat(root, on_missing_image="skip"))
    assert data.stats()["skipped"]["missing image file"] == 1 and len(data.eval) == 2


def test_missing_keys_name_file_and_key(tmp_path):
    root = make_release(tmp_path, images=False)
    val = json.loads((root / "val.json").read_text())
    del val["categories"][2]["specific_epithet"]
    (root / "val.json").write_text(json.dumps(val))
    with pytest.raises(DataError, match=r"val.json: categories\[2\] has no key 'specific_epithet'"):
        load_dataset(inat(root))
    val = split_json("val", {0: 1})
    del val["annotations"]
    (root / "val.json").write_text(json.dumps(val))
    with pytest.raises(DataError, match=r"val.json: missing key 'annotations' \(iNat's public_test.json"):
        load_dataset(inat(root))
    train = split_json("train", {0: 1})
    del train["images"][0]["file_name"]
    (root / "train.json").write_text(json.dumps(train))
    with pytest.raises(DataError, match=r"train.json: image 0 has no key 'file_name'"):
        load_dataset(inat(root))
    train = split_json("train", {0: 1})
    train["annotations"][0]["category_id"] = 99
    (root / "train.json").write_text(json.dumps(train))
    with pytest.raises(DataError, match=r"train.json:image-0: annotations\[0\] refers to category 99"):
        load_dataset(inat(root))
    train["annotations"][0] = {"id": 0, "image_id": 7, "category_id": 0}
    (root / "train.json").write_text(json.dumps(train))
    with pytest.raises(DataError, match=r"train.json:image-7: annotations\[0\] refers to image 7"):
        load_dataset(inat(root))


def test_malformed_and_empty_files(tmp_path):
    root = make_release(tmp_path, images=False)
    (root / "val.json").write_text('{"images": [')
    with pytest.raises(DataError, match=r"val.json: not valid JSON"):
        load_dataset(inat(root))
    (root / "val.json").write_text("[]")
    with pytest.raises(DataError, match=r"val.json: expected a JSON object"):
        load_dataset(inat(root))
    (root / "val.json").write_text('{"images": {}, "annotations": [], "categories": []}')
    with pytest.raises(DataError, match=r"val.json: 'images' must be a list of objects"):
        load_dataset(inat(root))
    empty = {"images": [], "annotations": [], "categories": CATEGORIES}
    for split in ("train", "val"):
        (root / f"{split}.json").write_text(json.dumps(empty))
    with pytest.raises(DataError, match=r"dataset 'inat2021' .* has no training images in split 'train'"):
        load_dataset(inat(root))


def test_unannotated_images_are_counted(tmp_path):
    root = make_release(tmp_path)
    train = json.loads((root / "train.json").read_text())
    train["annotations"] = train["annotations"][1:]
    (root / "train.json").write_text(json.dumps(train))
    data = load_dataset(inat(root))
    assert data.stats()["skipped"] == {"image without annotation": 1, "unknown species": 2}
    assert data.stats()["skipped_examples"]["image without annotation"] == ["train.json:image-0"]


@pytest.mark.parametrize("file_name", ["../outside.jpg", "/etc/passwd"])
def test_paths_outside_root_are_refused(tmp_path, file_name):
    root = make_release(tmp_path, images=False)
    train = split_json("train", {0: 2})
    train["images"][1]["file_name"] = file_name
    (root / "train.json").write_text(json.dumps(train))
    with pytest.raises(DataError, match=r"train.json:image-1: image path .* points outside the data root"):
        load_dataset(inat(root))
