"""`taxabench eval --samples`: any generator's images, in either documented layout, with counted skips."""

import json
import shutil

import pandas as pd
import pytest
from conftest import write_png

from taxabench.cli import main
from taxabench.metrics.external_samples import read_external_samples
from taxabench.metrics.samples import SamplesError


def config_file(tmp_path, tiny_world, clip_folder):
    path = tmp_path / "exp.yaml"
    path.write_text(
        f"name: byo\nruns_dir: {tmp_path / 'runs'}\ndata:\n  dataset: synthtaxa\n  root: {tiny_world}\n"
        f"eval:\n  metrics: [fd, clip_score, taxa_accuracy, mistake_severity]\n  bootstrap: 50\n"
        f"  bootstrap_set_metrics: 10\n  weights:\n    synthclip: local-dir:{clip_folder}\n"
    )
    return path


def copy_images(tiny_data, taxa, folder_of, per_taxon=2):
    for taxon in taxa:
        target = folder_of(taxon)
        target.mkdir(parents=True, exist_ok=True)
        for i, record in enumerate(tiny_data.records_of(taxon, "eval")[:per_taxon]):
            shutil.copyfile(record.image, target / f"{i}.png")


def test_folder_layout_resolves_names_and_counts_skips(tiny_data, tmp_path):
    species = tiny_data.species[:3]
    folder = tmp_path / "other"
    # one folder by scientific name, one by slug, one by the bare epithet (unique in the tiny world)
    names = [species[0].scientific_name, species[1].slug, species[2].name]
    copy_images(tiny_data, species, lambda t: folder / names[species.index(t)])
    (folder / names[0] / "broken.png").write_bytes(b"not a png")
    (folder / names[0] / "notes.txt").write_text("ignored: not an image file")
    samples = read_external_samples(folder, "other", tiny_data.taxonomy)
    assert samples.rank == "species" and len(samples.images) == 6
    assert sorted(img.taxon.id for img in samples.images) == sorted(t.id for t in species for _ in range(2))
    assert samples.skipped == {"unreadable image": 1}
    write_png(folder / "Nonexistent species" / "0.png")
    with pytest.raises(SamplesError, match="Nonexistent species.*taxon not in the dataset.*--unknown-taxa skip"):
        read_external_samples(folder, "other", tiny_data.taxonomy)
    skipped = read_external_samples(folder, "other", tiny_data.taxonomy, on_unknown="skip")
    assert skipped.skipped == {"unreadable image": 1, "taxon not in the dataset": 1} and len(skipped.images) == 6
    genus = tiny_data.taxonomy.taxa("genus")[0]
    write_png(folder / genus.slug / "0.png")
    with pytest.raises(SamplesError, match="mixes taxa of ranks"):
        read_external_samples(folder, "other", tiny_data.taxonomy, on_unknown="skip")


def test_table_layout_with_lineage_columns_or_taxon(tiny_data, tmp_path):
    species = tiny_data.species[:2]
    folder = tmp_path / "table"
    copy_images(tiny_data, species, lambda t: folder / "img" / t.slug)
    ranks = tiny_data.ranks
    rows = [{"image": f"img/{t.slug}/{i}.png", **dict(zip(ranks, t.lineage))} for t in species for i in range(2)]
    rows.append({"image": "img/missing.png", **dict(zip(ranks, species[0].lineage))})
    pd.DataFrame(rows).to_csv(folder / "samples.csv", index=False)
    samples = read_external_samples(folder, "table", tiny_data.taxonomy)
    assert [img.taxon for img in samples.images] == [species[0]] * 2 + [species[1]] * 2
    assert samples.skipped == {"image file not found": 1}
    pd.DataFrame([{"image": "img/x.png", "taxon": "Nonexistentia"}]).to_csv(folder / "samples.csv", index=False)
    with pytest.raises(SamplesError, match=r"samples.csv:2: taxon not in the dataset: 'Nonexistentia'"):
        read_external_samples(folder, "table", tiny_data.taxonomy)
    pd.DataFrame([{"picture": "x.png"}]).to_csv(folder / "samples.csv", index=False)
    with pytest.raises(SamplesError, match="needs a column 'image'"):
        read_external_samples(folder, "table", tiny_data.taxonomy)


def test_diffusers_stable_diffusion_pipeline_images_are_evaluated(tiny_world, tiny_data, tiny_backbone,
                                                                   random_clip_folder, tmp_path, capsys, monkeypatch):
    """Images written by diffusers' own StableDiffusionPipeline (the tiny SD-format backbone, not taxabench's
    sampler), one folder per species named by its scientific name, scored with `taxabench eval --samples`."""
    import torch
    from diffusers import StableDiffusionPipeline

    from taxabench import cli

    monkeypatch.setattr(cli.console, "width", 400)  # one printed line per line
    folder_path, _ = tiny_backbone
    pipeline = StableDiffusionPipeline.from_pretrained(folder_path, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    samples = tmp_path / "sd-pipeline"
    species = tiny_data.species[:3]
    for taxon in species:
        generator = torch.Generator().manual_seed(0)
        images = pipeline([f"a photo of {taxon.scientific_name}"] * 2, num_inference_steps=2, guidance_scale=3.0,
                          generator=generator, output_type="pil").images
        (samples / taxon.scientific_name).mkdir(parents=True)
        for i, image in enumerate(images):
            image.save(samples / taxon.scientific_name / f"{i}.png")
    (samples / species[0].scientific_name / "truncated.png").write_bytes(b"\x89PNG\r\n")
    config = config_file(tmp_path, tiny_world, random_clip_folder)
    assert main(["eval", "--config", str(config), "--samples", str(samples)]) == 0
    out = capsys.readouterr().out
    assert "6 images of 3 taxa (species); skipped 1: unreadable image" in out and "CLIP score (synthclip)" in out
    metrics = tmp_path / "runs" / "byo" / "metrics"
    table = pd.read_csv(metrics / "all.csv")
    assert set(table.method) == {"sd-pipeline", "real-images"}
    assert {"fd", "clip_score", "top1", "mistake_severity"} <= set(table[table.method == "sd-pipeline"].metric)
    report = json.loads((metrics / "sd-pipeline.json").read_text())
    assert report["samples"]["images"] == 6 and report["samples"]["skipped"] == {"unreadable image": 1}
    assert main(["eval", "--config", str(config), "--samples", str(samples), "--method", "x"]) == 1
    assert "either --method" in capsys.readouterr().out
