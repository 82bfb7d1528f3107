"""The sample-folder contract: a good folder reads back; every broken promise is an error naming file and line."""

import json

import pytest
from conftest import fabricate_samples

from taxabench.config import DataConfig
from taxabench.data import load_dataset
from taxabench.metrics.samples import METADATA_FILE, SamplesError, read_samples


@pytest.fixture(scope="module")
def data(tiny_world):
    return load_dataset(DataConfig(dataset="synthtaxa", root=str(tiny_world)))


@pytest.fixture
def folder(tmp_path, data):
    return fabricate_samples(tmp_path, "m", data, data.species[:3], per_taxon=2)


def rewrite(folder, edit):
    path = folder / METADATA_FILE
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    edit(lines)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_good_folder_reads_back(folder, data):
    samples = read_samples(folder, "m", data.taxonomy)
    assert samples.rank == "species" and len(samples.images) == 6
    assert [img.taxon for img in samples.images[:2]] == [data.species[0]] * 2
    assert samples.images[0].path == folder / data.species[0].slug / "0000.png"
    assert read_samples(folder, "m", data.taxonomy).manifest == samples.manifest


def test_rewritten_image_changes_the_manifest(folder, data):
    before = read_samples(folder, "m", data.taxonomy).manifest
    image = folder / data.species[0].slug / "0000.png"
    image.write_bytes(image.read_bytes() + b"\0")
    assert read_samples(folder, "m", data.taxonomy).manifest != before


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: lines[1].pop("seed"), f"{METADATA_FILE}:2: missing key 'seed'"),
        (lambda lines: lines[0].update(seed="3"), ":1: 'seed' must be int"),
        (lambda lines: lines[0].update(method="other"), "method is 'other', but this is the folder of 'm'"),
        (lambda lines: lines[2].update(taxon_id="Nowhere/x"), ":3: taxon_id 'Nowhere/x' is not a taxon"),
        (lambda lines: lines[0].update(taxon_slug="wrong"), ":1: taxon_slug is 'wrong'"),
        (lambda lines: lines[0].update(lineage=["a"]), ":1: lineage is \\['a'\\]"),
        (lambda lines: lines[0].update(image="../x.png"), "must be a path relative to"),
        (lambda lines: lines[0].update(image=lines[2]["image"]), "is not in the taxon's folder"),
        (lambda lines: lines[1].update(image=lines[0]["image"]), ":2: image '.*' is listed twice \\(first at"),
        (lambda lines: lines[0].update(image=lines[0]["taxon_slug"] + "/9999.png"), ":1: image file not found"),
    ],
)
def test_broken_lines_name_file_and_line(folder, data, edit, message):
    rewrite(folder, edit)
    with pytest.raises(SamplesError, match=message):
        read_samples(folder, "m", data.taxonomy)


def test_not_json_and_missing_folder_and_mixed_ranks(folder, data, tmp_path):
    with open(folder / METADATA_FILE, "a") as handle:
        handle.write("{not json\n")
    with pytest.raises(SamplesError, match=":7: not valid JSON"):
        read_samples(folder, "m", data.taxonomy)
    with pytest.raises(SamplesError, match="no generated samples for method 'absent'.*taxabench sample"):
        read_samples(tmp_path / "samples" / "absent", "absent", data.taxonomy)
    genus = data.taxonomy.taxa("genus")[0]
    mixed = fabricate_samples(tmp_path / "mixed", "m", data, [data.species[0], genus], per_taxon=1)
    with pytest.raises(SamplesError, match=r"mixes taxa of ranks \['genus', 'species'\]"):
        read_samples(mixed, "m", data.taxonomy)
