"""Bad rows get a named error or a counted skip, never a silent pass: undecodable images (any split), repeated
rows, evaluation rows of untrained species, species filed under several lineages, split spellings, symbolic links
out of the root; and for every adapter, images + counted skips + noted rows = rows in the files read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_data_csv import csv_config, make_dataset, species_rows

from taxabench.data import load_dataset
from taxabench.errors import DataError


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_training_image_is_an_error_naming_file_and_row_or_a_counted_skip(tmp_path):
    root = make_dataset(tmp_path, species_rows("Ga", "aa", 3) + species_rows("Ga", "aa", 1, "test"))
    truncate(root / "Ga-aa-train-1.png")
    with pytest.raises(DataError, match=r"metadata.csv:3: image .*Ga-aa-train-1.png does not decode"):
        load_dataset(csv_config(root))
    data = load_dataset(csv_config(root, on_bad_image="skip"))
    assert len(data.train) == 2 and data.skipped.to_dict() == {"image does not decode": 1}


def test_the_decode_check_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    import taxabench.data.checks as checks

    root = make_dataset(tmp_path, species_rows("Ga", "aa", 3))
    load_dataset(csv_config(root))
    decoded = []
    real = checks._decode_error
    monkeypatch.setattr(checks, "_decode_error", lambda path: decoded.append(path) or real(path))
    load_dataset(csv_config(root))
    assert decoded == []  # a rerun decodes nothing
    truncate(root / "Ga-aa-train-2.png")  # replaced in place: size and mtime change
    with pytest.raises(DataError, match="Ga-aa-train-2.png does not decode"):
        load_dataset(csv_config(root))
    assert [Path(p).name for p in decoded] == ["Ga-aa-train-2.png"]


def test_duplicate_rows_are_counted_and_dropped_or_refused(tmp_path):
    rows = species_rows("Ga", "aa", 10) + species_rows("Ga", "bb", 2)
    root = make_dataset(tmp_path, rows + rows[:10])
    data = load_dataset(csv_config(root))
    assert len(data.train) == 12 and data.skipped.to_dict() == {"duplicate row": 10}
    with pytest.raises(DataError, match=r"metadata.csv:14: repeats row metadata.csv:2"):
        load_dataset(csv_config(root, on_duplicate="error"))


def test_the_same_image_with_other_labels_is_an_error(tmp_path):
    rows = species_rows("Ga", "aa", 2)
    root = make_dataset(tmp_path, [*rows, rows[0].replace(",aa", ",bb")])
    with pytest.raises(DataError, match=r"metadata.csv:4: image .* is also listed at metadata.csv:2 with other labels"):
        load_dataset(csv_config(root))


def test_evaluation_rows_of_untrained_species_are_counted_under_their_own_reason(tmp_path):
    rows = species_rows("Ga", "aa", 3) + species_rows("Ga", "aa", 2, "test") + species_rows("Gb", "cc", 2, "test")
    data = load_dataset(csv_config(make_dataset(tmp_path, rows)))
    assert len(data.eval) == 2
    assert data.notes == {"evaluation images of species without training images": 2}
    assert data.accounted_rows() == data.rows_read == 7


def test_a_species_filed_under_two_lineages_is_reported_and_resolved_by_the_configured_rule(tmp_path):
    rows = [*species_rows("Ga", "aa", 5), *species_rows("Ga", "bb", 3)]
    rows.append("odd.png,train,Fam,Gb,aa")  # one row of species aa under another genus
    root = make_dataset(tmp_path, rows)
    kept = load_dataset(csv_config(root))
    assert kept.stats()["lineage_conflicts"] == {"aa": {"Fam/Ga/aa": 5, "Fam/Gb/aa": 1}}
    assert len(kept.species) == 3
    assert kept.notes == {"rows of a species name filed under several lineages (kept as separate species)": 6}
    majority = load_dataset(csv_config(root, on_lineage_conflict="majority"))
    assert len(majority.species) == 2 and len(majority.records_of(majority.taxonomy.resolve("Ga aa"))) == 6
    assert majority.notes == {"rows re-filed under their species' majority lineage": 1}
    with pytest.raises(DataError, match=r"species 'aa' is filed under 2 lineages: Fam/Ga/aa \(5 rows\); Fam/Gb/aa"):
        load_dataset(csv_config(root, on_lineage_conflict="error"))


def test_split_values_are_matched_case_insensitively(tmp_path):
    rows = species_rows("Ga", "aa", 2) + [r.replace(",train,", ",Train,") for r in species_rows("Ga", "bb", 2)]
    rows += [r.replace(",test,", ",TEST,") for r in species_rows("Ga", "aa", 1, "test")]
    data = load_dataset(csv_config(make_dataset(tmp_path, rows)))
    assert len(data.train) == 4 and len(data.eval) == 1 and not data.notes
    assert {r.split for r in data.train} == {"train"}


def test_a_symbolic_link_out_of_the_root_is_refused(tmp_path):
    root = make_dataset(tmp_path, species_rows("Ga", "aa", 2))
    outside = tmp_path / "elsewhere.png"
    (root / "Ga-aa-train-1.png").rename(outside)
    os.symlink(outside, root / "Ga-aa-train-1.png")
    with pytest.raises(DataError, match=r"metadata.csv:3: image .* resolves to .*elsewhere.png, outside the data root"):
        load_dataset(csv_config(root))
    os.symlink("/etc", root / "etc")
    (root / "metadata.csv").write_text("image,split,family,genus,species\netc/passwd,train,Fam,Ga,aa\n")
    with pytest.raises(DataError, match="outside the data root"):
        load_dataset(csv_config(root))


# -- the invariant, for every adapter, on each adapter's own test release (defects included) --------------------

def _csv(tmp_path):
    rows = species_rows("Ga", "aa", 3) + species_rows("Ga", "bb", 1) + species_rows("Gb", "cc", 2, "test")
    rows += [*species_rows("Ga", "aa", 1, "val"), "missing.png,train,Fam,Ga,aa"]
    rows += species_rows("Ga", "aa", 2)[:1]  # a repeated row
    return csv_config(make_dataset(tmp_path, rows), on_missing_image="skip")


def _fishnet(tmp_path):
    from test_data_fishnet import fishnet, make_release

    return fishnet(make_release(tmp_path))


def _bioscan(tmp_path):
    from test_data_bioscan1m import bioscan, make_release

    return bioscan(make_release(tmp_path) / "images" / "cropped_256")


def _inat(tmp_path):
    from test_data_inat2021 import inat, make_release

    return inat(make_release(tmp_path))


def _synthtaxa(tmp_path):
    from taxabench.config import DataConfig

    world = Path(os.environ["TAXABENCH_HOME"]) / "worlds" / "tiny"
    return DataConfig(dataset="synthtaxa", root=str(world)) if world.is_dir() else pytest.skip("no tiny world")


@pytest.mark.parametrize("make", [_csv, _fishnet, _bioscan, _inat, _synthtaxa],
                         ids=["csv", "fishnet", "bioscan1m", "inat2021", "synthtaxa"])
def test_images_plus_skips_plus_noted_rows_equal_the_rows_read(make, tmp_path, request):
    if make is _synthtaxa:
        request.getfixturevalue("tiny_world")
    data = load_dataset(make(tmp_path))
    assert data.rows_read > 0
    assert data.accounted_rows() == data.rows_read, data.stats()


def test_data_stats_prints_the_lineage_conflict_and_the_row_count(tmp_path, capsys):
    from taxabench.cli import main

    root = make_dataset(tmp_path, [*species_rows("Ga", "aa", 5), "odd.png,train,Fam,Gb,aa"])
    assert main(["data", "stats", "--dataset", "csv", "--root", str(root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "species 'aa' filed under 2 lineages: Fam/Ga/aa (5 rows); Fam/Gb/aa (1 rows)" in out
    assert "rows read: 6 = 6 images + 0 skipped + 0 left out under a note" in out


def test_bioscan_evaluation_rows_of_untrained_species_are_counted(tmp_path):
    """Issue 17: BIOSCAN-1M dropped such rows without counting them (images + skips + notes != rows)."""
    from test_data_bioscan1m import ROWS, bioscan, make_release, row

    untrained = row("BIOUG001-A11.jpg", 1, "Diptera", "Psychodidae", "Lutzomyia", "Lutzomyia novus",
                    large="validation")
    data = load_dataset(bioscan(make_release(tmp_path, [*ROWS, untrained]) / "images" / "cropped_256"))
    assert data.notes["evaluation images of species without training images"] == 1
    assert data.accounted_rows() == data.rows_read == len(ROWS) + 1
