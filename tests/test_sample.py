"""Sampling: the same bytes whatever the batch size or process count, resume after a kill, sharding without overlap,
the taxonomy-guidance negative is the top-rank condition, and the documented errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import experiment, taxabench_on_two_processes

from taxabench.errors import ConfigError, TaxabenchError
from taxabench.sample import TaxaDiffusionPipeline, TaxonomyPipeline, sample_method, shard, stage_grid
from taxabench.train import TextCache, load_trained, method_dir, train_method

FOUR_SPECIES = {"taxa": ["bubuii", "nomoatus", "kaorveii", "dristaii"], "images_per_taxon": 2, "steps": 3}


@pytest.fixture(scope="module")
def trained_run(tiny_world, tiny_data, tiny_backbone, tmp_path_factory):
    """A run with taxadiffusion (5 stages), sd-lora and flat-ldm trained for a step or two."""
    runs = tmp_path_factory.mktemp("sample-runs")
    config = experiment(tiny_world, runs, train={"steps_per_stage": 2})
    for name in ("taxadiffusion", "sd-lora", "flat-ldm", "sd-zeroshot"):
        train_method(config, name, data=tiny_data, show_progress=False)
    return config


def file_bytes(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))
            if p.name != "grid.png"}


def sample_into(config, run_dir, method="taxadiffusion", **sample):
    """Sample the trained run's method into another run folder (the checkpoints are linked, not retrained)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "checkpoints").exists():
        (run_dir / "checkpoints").symlink_to(config.run_dir / "checkpoints")
    settings = experiment(Path(config.data.root), run_dir.parent,
                          train={"steps_per_stage": 2}, sample={**FOUR_SPECIES, **sample})
    return sample_method(settings, method, run_dir, show_progress=False), settings


def test_bytes_do_not_depend_on_the_batch_size(trained_run, tmp_path):
    small, _ = sample_into(trained_run, tmp_path / "b3", batch_size=3)
    large, _ = sample_into(trained_run, tmp_path / "b8", batch_size=8)
    a, b = file_bytes(small), file_bytes(large)
    assert len(a) == 8 and a == b
    first = (small / "metadata.jsonl").read_text().splitlines()
    assert first == (large / "metadata.jsonl").read_text().splitlines()
    entry = json.loads(first[0])
    assert entry["guidance"] == "taxonomy" and entry["guidance_scale"] == 9.0 and entry["steps"] == 3
    assert entry["method"] == "taxadiffusion" and entry["stage"] == 4 and entry["checkpoint"].endswith("stage-4")
    assert entry["lineage"][-1] == entry["name"] and entry["taxon_id"] == "/".join(entry["lineage"])


def test_resume_after_a_kill_gives_the_same_files(trained_run, tmp_path, monkeypatch):
    import taxabench.sample as sample_module

    whole, _ = sample_into(trained_run, tmp_path / "whole", batch_size=3)
    real_write = sample_module._write_png
    written = []

    def killed_after_five(image, path):
        if len(written) == 5:
            path.with_name(f".{path.name}.999999.partial").write_bytes(b"half a png")  # a killed process's write
            raise KeyboardInterrupt
        real_write(image, path)
        written.append(path)

    monkeypatch.setattr(sample_module, "_write_png", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        sample_into(trained_run, tmp_path / "killed", batch_size=3)
    monkeypatch.setattr(sample_module, "_write_png", real_write)
    assert len(file_bytes(tmp_path / "killed" / "samples" / "taxadiffusion")) == 5
    resumed, _ = sample_into(trained_run, tmp_path / "killed", batch_size=3)
    assert file_bytes(resumed) == file_bytes(whole)
    assert not list(resumed.rglob("*.partial"))


def test_shards_cover_every_batch_once():
    for count in range(0, 12):
        for processes in (1, 2, 3, 5):
            parts = [list(shard(count, processes, p)) for p in range(processes)]
            assert sum(parts, []) == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_taxonomy_guidance_negative_is_the_top_rank_condition(trained_run):
    trained = load_trained(trained_run.run_dir, "taxadiffusion")
    method, backbone = trained.method, trained.backbone
    species = trained.taxonomy.resolve("bubuii")
    labels = [trained.taxonomy.labels_of(species)]
    text = TextCache(backbone, cache=False)
    with torch.no_grad():
        negative = method.encoder_hidden_states(method.negative_inputs("taxonomy", labels, trained.stage, text),
                                                trained.stage)
        # independently: the class string through the text encoder and rank 0's module alone
        top = backbone.encode_text([f"class: {species.lineage[0]}"])
        expected = method.conditioner.rank_modules[0](top)
        positive = method.encoder_hidden_states(method.condition_inputs(labels, trained.stage, text), trained.stage)
        by_hand = sum(method.conditioner.rank_modules[k](backbone.encode_text([f"{rank}: {name}"]))
                      for k, (rank, name) in enumerate(zip(species.ranks, species.lineage)))
    assert torch.allclose(negative, expected, atol=1e-6)
    assert torch.allclose(positive, by_hand, atol=1e-5)  # c = Σ_r T_r(E("rank: name"))
    assert not torch.allclose(positive, negative, atol=1e-3)

    # the pipeline puts exactly that negative in the guidance branch
    pipeline = TaxonomyPipeline.from_trained(trained)
    pipeline.set_progress_bar_config(disable=True)
    seen = []
    forward = pipeline.unet.forward

    def spy(sample, t, encoder_hidden_states=None, **kwargs):
        seen.append(encoder_hidden_states.detach().clone())
        return forward(sample, t, encoder_hidden_states=encoder_hidden_states, **kwargs)

    pipeline.unet.forward = spy
    pipeline([species.id], num_inference_steps=1)
    assert torch.allclose(seen[0][0], expected[0], atol=1e-6) and torch.allclose(seen[0][1], positive[0], atol=1e-5)


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "dpm++", "euler"])
def test_sampler_recovers_the_latent_an_oracle_denoiser_points_to(trained_run, scheduler):
    """With ε(x_t, t) = (x_t − √ᾱ_t·z)/√(1−ᾱ_t), exact for the target z, every sampler must end at z — also where
    |z| > 1 (a sampler that clips its x0 estimate to [-1, 1], DDIM's default, fails this)."""
    trained = load_trained(trained_run.run_dir, "sd-lora")
    pipeline = TaxonomyPipeline.from_trained(trained, scheduler)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(dtype=torch.float64)
    target = 1.5 * torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alphas = pipeline.scheduler.alphas_cumprod.to(torch.float64)

    def oracle(sample, t, encoder_hidden_states=None, **kwargs):
        a = alphas[int(t)]
        # every scheduler hands the UNet x_t (Euler's scale_model_input maps its x/√ᾱ_t back to x_t)
        return type("Out", (), {"sample": (sample - a**0.5 * target) / (1 - a) ** 0.5})()

    pipeline.unet.forward = oracle
    latents = pipeline(["bubuii"], num_images_per_taxon=2, guidance="none", num_inference_steps=20,
                       output_type="latent").images
    error = (latents - target).abs()
    # SD's schedule stops at ᾱ = 0.99915, not 1 (set_alpha_to_one=False): a trace of noise (~0.03·ε) remains
    assert error.max() < 0.2 and error.mean() < 0.05, (error.max(), error.mean())


def test_pipeline_from_pretrained_outside_the_benchmark(trained_run):
    folder = method_dir(trained_run.run_dir, "taxadiffusion")
    pipeline = TaxaDiffusionPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    taxon = pipeline.taxonomy.resolve("bubuii")
    by_name = pipeline(["bubuii"], num_images_per_taxon=2, num_inference_steps=2, output_type="np").images
    by_lineage = pipeline([list(taxon.lineage)], num_images_per_taxon=2, num_inference_steps=2,
                          output_type="np").images
    assert by_name.shape == (2, 64, 64, 3) and (by_name == by_lineage).all()
    assert not (by_name[0] == by_name[1]).all()  # two seeds, two images
    images = pipeline([taxon.id], num_inference_steps=2).images
    assert images[0].size == (64, 64)
    genus = pipeline([taxon.parent_id], num_inference_steps=2).images  # any rank of the taxonomy
    assert len(genus) == 1
    early = TaxaDiffusionPipeline.from_pretrained(folder / "stage-1")  # a stage folder loads that stage
    assert early.stage.index == 1 and pipeline.stage.index == 4


def test_sampling_errors(trained_run, tmp_path):
    pipeline = TaxaDiffusionPipeline.from_pretrained(method_dir(trained_run.run_dir, "taxadiffusion"))
    with pytest.raises(TaxabenchError, match=r"unknown taxon 'bubui'.*did you mean.*bubuii"):
        pipeline(["bubui"], num_inference_steps=1)
    with pytest.raises(TaxabenchError, match="`num_images_per_taxon` must be at least 1, got 0"):
        pipeline(["bubuii"], num_images_per_taxon=0)
    with pytest.raises(ConfigError, match="images_per_taxon: must be at least 1"):
        experiment(tmp_path, tmp_path, sample={"images_per_taxon": 0})
    with pytest.raises(TaxabenchError, match="holds a checkpoint of method 'sd-lora'; TaxaDiffusionPipeline loads"):
        TaxaDiffusionPipeline.from_pretrained(method_dir(trained_run.run_dir, "sd-lora"))
    with pytest.raises(TaxabenchError, match="holds a checkpoint of method 'sd-lora'"):
        TaxaDiffusionPipeline.from_pretrained(method_dir(trained_run.run_dir, "sd-lora") / "stage-0")
    with pytest.raises(TaxabenchError, match="method 'flat-ldm' has no 'taxonomy' guidance"):
        sample_into(trained_run, tmp_path / "flat", method="flat-ldm", guidance="taxonomy")
    with pytest.raises(TaxabenchError, match="not a trained method folder"):
        sample_into(trained_run, tmp_path / "none", method="taxadiffusion-joint")
    sample_into(trained_run, tmp_path / "changed", taxa=["bubuii"], images_per_taxon=1)
    with pytest.raises(TaxabenchError, match=r"other settings \(guidance_scale: 9.0 -> 4.0\)") as error:
        sample_into(trained_run, tmp_path / "changed", taxa=["bubuii"], images_per_taxon=1, guidance_scale=4.0)
    # commands that exist: `taxabench run` has --force, no --run; `taxabench sample` has --run
    assert "`taxabench run --config FILE --force sample/taxadiffusion`" in str(error.value)
    assert "`taxabench sample --config FILE --method taxadiffusion --run DIR`" in str(error.value)


def test_any_rank_and_an_untrained_method(trained_run, tmp_path):
    genera, _ = sample_into(trained_run, tmp_path / "genus", taxa=["Umstazoum", "Vearria"], rank="genus",
                            images_per_taxon=1, batch_size=2)
    lines = [json.loads(line) for line in (genera / "metadata.jsonl").read_text().splitlines()]
    assert [entry["rank"] for entry in lines] == ["genus", "genus"]
    assert sorted(p.parent.name for p in genera.glob("*/0000.png")) == sorted(
        entry["image"].split("/")[0] for entry in lines)
    zeroshot, _ = sample_into(trained_run, tmp_path / "zeroshot", method="sd-zeroshot", taxa=["bubuii"],
                              images_per_taxon=1)
    entry = json.loads((zeroshot / "metadata.jsonl").read_text())
    assert entry["guidance"] == "cfg" and entry["stage"] is None
    with pytest.raises(TaxabenchError, match="sample.rank: 'kingdom' is not a rank"):
        sample_into(trained_run, tmp_path / "kingdom", rank="kingdom", taxa=[])


def test_every_scheduler_and_guidance_runs(trained_run):
    trained = load_trained(trained_run.run_dir, "sd-lora")
    for scheduler in ("ddim", "pndm", "dpm++", "euler"):
        pipeline = TaxonomyPipeline.from_trained(trained, scheduler)
        pipeline.set_progress_bar_config(disable=True)
        for guidance in ("cfg", "taxonomy", "none"):
            image = pipeline(["bubuii"], guidance=guidance, num_inference_steps=3, output_type="np").images[0]
            assert image.shape == (64, 64, 3) and torch.isfinite(torch.from_numpy(image)).all()


def test_stage_grid_and_cli(trained_run, tmp_path, capsys):
    figure = stage_grid(trained_run, "taxadiffusion", out=tmp_path / "stages.png", taxa=["bubuii"],
                        images_per_taxon=1)
    from PIL import Image

    assert Image.open(figure).size[1] > Image.open(figure).size[0] / 2  # five stage rows
    from taxabench.cli import main

    config_file = tmp_path / "config.yaml"
    run = tmp_path / "cli-run"
    run.mkdir()
    (run / "checkpoints").symlink_to(trained_run.run_dir / "checkpoints")
    config = experiment(Path(trained_run.data.root), tmp_path, train={"steps_per_stage": 2},
                        sample={"taxa": ["bubuii"], "images_per_taxon": 1, "steps": 2})
    config_file.write_text(config.to_yaml())
    assert main(["sample", "--config", str(config_file), "--method", "sd-lora", "--run", str(run)]) == 0
    assert (run / "samples" / "sd-lora" / "grid.png").is_file()
    assert len((run / "samples" / "sd-lora" / "metadata.jsonl").read_text().splitlines()) == 1


def test_stage_grid_is_drawn_at_the_runs_image_size(trained_run, tmp_path, monkeypatch):
    """Not at the backbone's native size (SD 1.5 would always draw 512 px: 64 of 71 minutes, then killed at 17.8 GB)."""
    import dataclasses

    import taxabench.sample as sample_module

    drawn = []
    monkeypatch.setattr(sample_module, "_grid_figure", lambda rows, *args: drawn.append(rows) or tmp_path / "x.png")
    config = dataclasses.replace(trained_run, data=dataclasses.replace(trained_run.data, image_size=32))
    stage_grid(config, "taxadiffusion", taxa=["bubuii"], images_per_taxon=1, out=tmp_path / "s.png")
    assert {image.size for row in drawn[0] for image in row} == {(32, 32)}


@pytest.mark.slow
def test_two_processes_write_the_same_bytes(trained_run, tmp_path):

    single, settings = sample_into(trained_run, tmp_path / "one", batch_size=3)
    run = tmp_path / "two"
    run.mkdir()
    (run / "checkpoints").symlink_to(trained_run.run_dir / "checkpoints")
    settings.runs_dir, settings.name = str(tmp_path), "two"  # the run folder from the config: torchrun would
    config_file = tmp_path / "two.yaml"  # take an option named --run for an abbreviation of its own --run-path
    config_file.write_text(settings.to_yaml())
    taxabench_on_two_processes("sample --method taxadiffusion", config_file)
    assert file_bytes(run / "samples" / "taxadiffusion") == file_bytes(single)
