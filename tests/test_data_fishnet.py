"""The `fishnet` adapter on a small copy of the release's layout: per-split CSVs with the real header, images in
<root>/<Folder>/, FishBase URLs and iNat file names, genus-only rows, a family under two orders, box files."""

import csv
import json
from pathlib import Path

import pytest
from conftest import write_png

from taxabench.cli import main
from taxabench.config import CsvColumns, DataConfig, FishNetOptions
from taxabench.data import load_dataset
from taxabench.data.images import load_image
from taxabench.errors import DataError

# the release's header (anns/test.csv), leading unnamed index column included
HEADER = (",Unnamed: 0,species,image,SpecCode,Genus,Subfamily,Family,Order,Class,SuperClass,source,Folder,Troph,"
          "FeedingPath,Tropical,Temperate,Subtropical,Boreal,Polar,freshwater,saltwater,brackish,NewOrder,Frequency")
FISHBASE = "https://www.fishbase.se/images/species/"


def row(species, image, genus, family, order, folder=None, new_order=None):
    """One CSV row in the release's column order (traits filled with plausible values)."""
    return {"species": species, "image": image, "SpecCode": "1", "Genus": genus, "Subfamily": "",
            "Family": family, "Order": order, "Class": "Actinopteri", "SuperClass": "Osteichthyes",
            "source": "fishbase" if image.startswith("http") else "inat", "Folder": folder or family,
            "Troph": "3.1", "FeedingPath": "benthic", "Tropical": "1", "Temperate": "0", "Subtropical": "1",
            "Boreal": "0", "Polar": "0", "freshwater": "0", "saltwater": "1", "brackish": "0",
            "NewOrder": new_order or order, "Frequency": "0.2"}


TRAIN = [
    row("Abudefduf saxatilis", FISHBASE + "Absax_u0.jpg", "Abudefduf", "Pomacentridae", "Ovalentaria"),
    row("Abudefduf saxatilis", FISHBASE + "Absax_u1.jpg", "Abudefduf", "Pomacentridae", "Ovalentaria"),
    row("Abudefduf vaigiensis", FISHBASE + "Abvai_u0.jpg", "Abudefduf", "Pomacentridae", "Ovalentaria"),
    # an iNat-sourced row: genus known, species not
    row("", "0a19177a-c634-4b8e-b6c8-a162565b0cfc.jpg", "Abudefduf", "Pomacentridae", "Ovalentaria"),
    # one family under two orders (FishBase's suborder notation next to the older order)
    row("Gasterosteus aculeatus", FISHBASE + "Gaacu_e0.jpg", "Gasterosteus", "Gasterosteidae",
        "Perciformes/Gasterosteoidei", new_order="Gasterosteiformes"),
    row("Gasterosteus aculeatus", FISHBASE + "Gaacu_u1.jpg", "Gasterosteus", "Gasterosteidae",
        "Perciformes/Gasterosteoidei", new_order="Gasterosteiformes"),
    row("Gasterosteus wheatlandi", FISHBASE + "Gawhe_u0.jpg", "Gasterosteus", "Gasterosteidae",
        "Gasterosteiformes"),
    # a binomial filed under another genus: cannot be placed, skipped and counted
    row("Amphiprion ocellaris", FISHBASE + "Amoce_u0.jpg", "Abudefduf", "Pomacentridae", "Ovalentaria"),
]
TEST = [
    row("Abudefduf saxatilis", FISHBASE + "Absax_u2.jpg", "Abudefduf", "Pomacentridae", "Ovalentaria"),
    row("Gasterosteus aculeatus", FISHBASE + "Gaacu_u2.jpg", "Gasterosteus", "Gasterosteidae",
        "Perciformes/Gasterosteoidei", new_order="Gasterosteiformes"),
]


def write_split(path: Path, rows: list[dict], header: str = HEADER) -> None:
    columns = header.split(",")
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for index, values in enumerate(rows):
            writer.writerow([index, index, *(values.get(c, "") for c in columns[2:])])


def make_release(tmp_path: Path, train=TRAIN, test=TEST, images: bool = True) -> Path:
    root = tmp_path / "fishnet"
    root.mkdir(parents=True)
    write_split(root / "train.csv", train)
    write_split(root / "test.csv", test)
    for values in [*train, *test]:
        if images:
            write_png(root / values["Folder"] / values["image"].rsplit("/", 1)[-1], size=(40, 30))
    return root


def fishnet(root: Path, **overrides) -> DataConfig:
    return DataConfig(dataset="fishnet", root=str(root), **overrides)


def test_counts_labels_and_paths(tmp_path):
    root = make_release(tmp_path)
    data = load_dataset(fishnet(root))
    assert data.ranks == ("class", "order", "family", "genus", "species")
    stats = data.stats()
    # train: 8 rows - 1 genus-only - 1 mismatched binomial; test: both rows' species are trained
    assert stats["images_per_split"] == {"train": 6, "eval": 2}
    assert stats["per_rank"] == {"class": 1, "order": 3, "family": 3, "genus": 3, "species": 4}
    assert stats["skipped"] == {"species name does not match genus": 1, "unknown species": 1}
    saxatilis = data.taxonomy.resolve("Abudefduf saxatilis")
    assert saxatilis.id == "Actinopteri/Ovalentaria/Pomacentridae/Abudefduf/saxatilis"
    assert data.taxonomy.image_count(saxatilis.id) == 2
    first = data.train[0]
    assert first.image == root / "Pomacentridae" / "Absax_u0.jpg"  # the FishBase URL's file name
    assert first.source == "train.csv:2" and first.split == "train"
    assert first.extra["Troph"] == "3.1" and not any(k.startswith("Unnamed") or not k for k in first.extra)
    assert [r.source for r in data.eval] == ["test.csv:2", "test.csv:3"]


def test_family_under_two_orders_is_two_taxa(tmp_path):
    data = load_dataset(fishnet(make_release(tmp_path)))
    families = [t.id for t in data.taxonomy.taxa("family")]
    assert "Actinopteri/Gasterosteiformes/Gasterosteidae" in families
    assert "Actinopteri/Perciformes/Gasterosteoidei/Gasterosteidae" in families
    assert data.stats()["homonyms"] == {"family": {"Gasterosteidae": 2}, "genus": {"Gasterosteus": 2}}
    # the release's cleaned order column puts the family back under one order
    merged = load_dataset(fishnet(make_release(tmp_path / "new"), columns=CsvColumns(ranks={"order": "NewOrder"})))
    assert merged.stats()["homonyms"] == {} and merged.stats()["per_rank"]["family"] == 2


def test_unknown_species_kept_at_genus(tmp_path):
    data = load_dataset(fishnet(make_release(tmp_path), unknown_species="keep"))
    unknown = [r for r in data.train if r.labels[-1] is None]
    assert [r.labels for r in unknown] == [("Actinopteri", "Ovalentaria", "Pomacentridae", "Abudefduf", None)]
    assert data.taxonomy.image_count("Actinopteri/Ovalentaria/Pomacentridae/Abudefduf") == 4
    assert data.stats()["notes"]["kept with unknown species"] == 1
    assert all("nan" not in t.id.lower() for t in data.taxonomy.taxa())


def test_cli_stats_json(tmp_path, capsys):
    root = make_release(tmp_path)
    assert main(["data", "stats", "--dataset", "fishnet", "--root", str(root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == 8 and stats["species"] == 4
    assert stats["per_rank"] == {"class": 1, "order": 3, "family": 3, "genus": 3, "species": 4}
    assert stats["homonyms"]["family"] == {"Gasterosteidae": 2}
    assert stats["skipped"] == {"species name does not match genus": 1, "unknown species": 1}
    # one CSV alone: its records are in the split its name says
    assert main(["data", "stats", "--dataset", "fishnet", "--root", str(root), "--annotations",
                 str(root / "test.csv"), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_rank"]["species"] == 2
    assert main(["data", "stats", "--dataset", "fishnet", "--root", str(root)]) == 0
    assert "family names under several parents" in capsys.readouterr().out


def test_split_files_from_an_anns_folder(tmp_path):
    root = make_release(tmp_path)
    anns = tmp_path / "anns"
    anns.mkdir()
    for name in ("train.csv", "test.csv"):
        (root / name).rename(anns / name)
    assert len(load_dataset(fishnet(root, annotations=str(anns))).train) == 6
    with pytest.raises(DataError, match=r"no annotation file for split 'val': .*val.csv not found "
                                        r"\(split files in .*anns: test, train\)"):
        load_dataset(fishnet(root, annotations=str(anns), eval_split="val"))
    assert load_dataset(fishnet(root, annotations=str(anns), eval_split=None)).eval == []


def test_boxes_largest_kept_and_used_for_crops(tmp_path):
    root = make_release(tmp_path)
    boxes = tmp_path / "bbox"
    (boxes / "Pomacentridae").mkdir(parents=True)
    (boxes / "Pomacentridae" / "Absax_u0.txt").write_text("Pomacentridae 1 2 11 8 \nPomacentridae 5 5 35 25 \n")
    data = load_dataset(fishnet(root, fishnet=FishNetOptions(bbox_dir=str(boxes)), use_bbox=True))
    assert data.train[0].bbox == (5.0, 5.0, 30.0, 20.0)
    assert data.train[1].bbox is None  # no box file: the whole frame
    assert load_image(data.train[0], 16, use_bbox=True).size == (16, 16)
    assert load_dataset(fishnet(root)).train[0].bbox is None
    assert data.fingerprint() != load_dataset(fishnet(root)).fingerprint()


def test_bad_box_files(tmp_path):
    root = make_release(tmp_path)
    boxes = tmp_path / "bbox"
    (boxes / "Pomacentridae").mkdir(parents=True)
    (boxes / "Pomacentridae" / "Absax_u0.txt").write_text("Pomacentridae 1 2 11 8\nPomacentridae 9 9 3 20\n")
    with pytest.raises(DataError, match=r"Absax_u0.txt:2: expected 'label x1 y1 x2 y2'"):
        load_dataset(fishnet(root, fishnet=FishNetOptions(bbox_dir=str(boxes))))
    (boxes / "Pomacentridae" / "Absax_u0.txt").write_text("Pomacentridae 1 2 eleven 8\n")
    with pytest.raises(DataError, match=r"Absax_u0.txt:1: expected 'label x1 y1 x2 y2', got 'Pomacentridae 1 2"):
        load_dataset(fishnet(root, fishnet=FishNetOptions(bbox_dir=str(boxes))))
    with pytest.raises(DataError, match=r"data.fishnet.bbox_dir: folder not found"):
        load_dataset(fishnet(root, fishnet=FishNetOptions(bbox_dir=str(tmp_path / "nope"))))


def test_missing_image_is_an_error_or_a_counted_skip(tmp_path):
    root = make_release(tmp_path)
    (root / "Gasterosteidae" / "Gawhe_u0.jpg").unlink()
    with pytest.raises(DataError, match=r"train.csv:8: image file not found: .*Gasterosteidae/Gawhe_u0.jpg"):
        load_dataset(fishnet(root))
    data = load_dataset(fishnet(root, on_missing_image="skip"))
    assert data.stats()["skipped"]["missing image file"] == 1
    assert data.stats()["per_rank"]["order"] == 2  # Gasterosteiformes had only that image


def test_missing_column_names_file_and_column(tmp_path):
    root = make_release(tmp_path)
    write_split(root / "test.csv", TEST, header=HEADER.replace(",Folder", ""))
    with pytest.raises(DataError, match=r"test.csv: missing column 'Folder'"):
        load_dataset(fishnet(root))
    with pytest.raises(DataError, match=r"data.columns.ranks: dataset 'fishnet' has no rank 'kingdom'"):
        load_dataset(fishnet(root, columns=CsvColumns(ranks={"kingdom": "Kingdom"})))


def test_malformed_and_empty_files(tmp_path):
    root = make_release(tmp_path)
    (root / "test.csv").write_text("")
    with pytest.raises(DataError, match=r"test.csv: cannot be read as a CSV table"):
        load_dataset(fishnet(root))
    (root / "test.csv").write_text(HEADER + '\n0,0,"Abudefduf saxatilis,broken\n')
    with pytest.raises(DataError, match=r"test.csv: cannot be read as a CSV table"):
        load_dataset(fishnet(root))
    write_split(root / "train.csv", [])
    write_split(root / "test.csv", [])
    with pytest.raises(DataError, match=r"dataset 'fishnet' .* has no training images in split 'train'"):
        load_dataset(fishnet(root))
    with pytest.raises(DataError, match=r"annotation file or folder not found"):
        load_dataset(fishnet(root, annotations=str(root / "nope.csv")))


@pytest.mark.parametrize("folder", ["../outside", "/etc"])
def test_paths_outside_root_are_refused(tmp_path, folder):
    train = [*TRAIN[:3], row("Abudefduf saxatilis", "x.jpg", "Abudefduf", "Pomacentridae", "Ovalentaria", folder)]
    root = make_release(tmp_path, train=train, images=False)
    with pytest.raises(DataError, match=r"train.csv:5: image path .* points outside the data root"):
        load_dataset(fishnet(root))


def test_empty_class_takes_its_orders_class(tmp_path):
    """Rows with species, family and order but no Class (about 90 in the release's test.csv) are kept: their order's
    class comes from the other rows; an order that no row gives a class is a counted skip, not 'no known rank'."""
    no_class = [dict(row("Chromis chromis", FISHBASE + f"Chchr_u{i}.jpg", "Chromis", "Pomacentridae",
                         "Ovalentaria"), Class="") for i in range(2)]
    orphan = dict(row("Lophius piscatorius", FISHBASE + "Lopis_u0.jpg", "Lophius", "Lophiidae", "Lophiiformes"),
                  Class="")
    data = load_dataset(fishnet(make_release(tmp_path, train=[*TRAIN, *no_class, orphan])))
    chromis = data.taxonomy.resolve("Chromis chromis")
    assert chromis.id == "Actinopteri/Ovalentaria/Pomacentridae/Chromis/chromis"
    assert data.taxonomy.image_count(chromis.id) == 2
    skipped = data.stats()["skipped"]
    assert skipped["empty Class, and no other row gives its order one class"] == 1 and "no known rank" not in skipped


def test_stats_from_a_config_with_other_annotations(tmp_path, capsys):
    root = make_release(tmp_path)
    config = tmp_path / "fishnet.yaml"
    config.write_text(f"data: {{dataset: fishnet, root: {root}, annotations: /nowhere}}\n")
    assert main(["data", "stats", "--config", str(config), "--annotations", str(root / "test.csv"), "--split",
                 "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_rank"]["species"] == 2
