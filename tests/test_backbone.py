"""The SD-format backbone: the tiny one is a real SD folder, deterministic, with an honest build report; hub ids
fail fast offline."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import experiment

from taxabench.backbone import SD15_SCHEDULER, build_tiny_backbone, load_backbone, load_sd_folder
from taxabench.errors import ConfigError, TaxabenchError, WeightsNotFoundError


def test_tiny_backbone_is_a_stable_diffusion_folder(tiny_backbone):
    from diffusers import StableDiffusionPipeline

    folder, identity = tiny_backbone
    assert identity.startswith("tiny@")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {"vae", "unet", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    # diffusers' own pipeline loads and runs it: it is SD-format, not just SD-shaped
    pipeline = StableDiffusionPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline("a photo of a fish", num_inference_steps=2, height=64, width=64, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and image.min() >= 0.0 and image.max() <= 1.0


def test_tokenizer_is_clip_bpe(tiny_backbone):
    from open_clip.tokenizer import SimpleTokenizer

    backbone = load_sd_folder(tiny_backbone[0], identity="test", source="tiny")
    reference = SimpleTokenizer()
    for text in ["species: saxatilis", "class: None", "a photo of Quemolyia Rastaida Phyraoridae."]:
        ids = backbone.tokenizer(text).input_ids
        assert ids == [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
    assert len(backbone.tokenizer) == 49408


def test_noise_schedule_is_sd15(tiny_backbone):
    backbone = load_sd_folder(tiny_backbone[0], identity="test", source="tiny")
    # scaled_linear: betas evenly spaced in sqrt between beta_start and beta_end (LDM / SD 1.5)
    expected = torch.linspace(SD15_SCHEDULER["beta_start"] ** 0.5, SD15_SCHEDULER["beta_end"] ** 0.5, 1000) ** 2
    assert torch.allclose(backbone.noise_scheduler.betas, expected)
    # and every sampler built from it keeps SD's clip_sample=False (DDIM's default would clip latents to [-1, 1])
    from taxabench.sample import SCHEDULERS, make_scheduler

    for name in SCHEDULERS:
        scheduler = make_scheduler(name, backbone.noise_scheduler.config)
        assert scheduler.config.get("clip_sample", False) is False, name
        assert torch.allclose(scheduler.betas, expected)


def test_build_report_matches_an_independent_reconstruction(tiny_backbone, tiny_data):
    from taxabench.data.images import TaxaImageDataset

    folder, _ = tiny_backbone
    report = json.loads((folder / "build.json").read_text())
    backbone = load_sd_folder(folder, identity="test", source="tiny")
    images = torch.stack([item["pixel_values"] for item in TaxaImageDataset(tiny_data.eval, 64)])
    with torch.no_grad():
        mean, _ = backbone.latent_distribution(images)
        recon = backbone.vae.decode(mean).sample.clamp(-1, 1)
    mse = torch.mean((recon - images) ** 2).item()
    assert report["vae"]["eval_images"] == len(images)
    assert report["vae"]["reconstruction_mse"] == pytest.approx(mse, rel=1e-3)
    assert report["vae"]["reconstruction_psnr_db"] == pytest.approx(10 * math.log10(4 / mse), abs=0.01)
    # scaling_factor makes the pre-training latents unit-variance, as SD's 0.18215 does for its VAE
    from taxabench.config import DataConfig
    from taxabench.data import load_dataset

    world = load_dataset(DataConfig(root=report["pretraining_world"]["root"], eval_split=None))
    assert report["train_images"] == len(world.train)
    train = torch.stack([item["pixel_values"] for item in TaxaImageDataset(world.train, 64)])
    with torch.no_grad():
        latent_mean, _ = backbone.latent_distribution(train)
    assert (latent_mean * backbone.vae.config.scaling_factor).std().item() == pytest.approx(1.0, rel=1e-3)


def test_tiny_build_is_deterministic(tiny_world, tiny_data, tmp_path):
    config = experiment(tiny_world, tmp_path, backbone={"tiny": {"vae_steps": 2, "unet_pretrain_steps": 2, "max_images": 24}})
    first = build_tiny_backbone(tiny_data, config.data, config.backbone.tiny, tmp_path / "a", show_progress=False)
    second = build_tiny_backbone(tiny_data, config.data, config.backbone.tiny, tmp_path / "b", show_progress=False)
    for part in ("vae", "unet", "text_encoder"):
        weights = sorted((first / part).glob("*.safetensors"))
        assert weights
        for file in weights:
            assert file.read_bytes() == (second / part / file.name).read_bytes(), f"{part}/{file.name} differs"


def test_tiny_backbone_is_cached_by_content(tiny_world, tiny_data, tiny_backbone, tmp_path):
    config = experiment(tiny_world, tmp_path)
    started = time.perf_counter()
    backbone = load_backbone(config, tiny_data, show_progress=False)
    assert time.perf_counter() - started < 10  # loaded, not rebuilt
    assert backbone.path == tiny_backbone[0] and backbone.identity == tiny_backbone[1]
    assert backbone.image_size == 64 and backbone.vae_scale_factor == 4


def test_hub_id_fails_fast_offline(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("TAXABENCH_SD_BACKBONE_WEIGHTS", raising=False)
    config = experiment(tiny_world, tmp_path, backbone={"source": "runwayml/stable-diffusion-v1-5"})
    started = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as error:
        load_backbone(config)
    assert time.perf_counter() - started < 1.5
    message = str(error.value)
    assert "runwayml/stable-diffusion-v1-5" in message and "TAXABENCH_SD_BACKBONE_WEIGHTS" in message


def test_bad_sources_name_the_problem(tiny_world, tmp_path):
    (tmp_path / "not-sd").mkdir()
    config = experiment(tiny_world, tmp_path, backbone={"source": str(tmp_path / "not-sd")})
    with pytest.raises(TaxabenchError, match="lacks vae, unet, text_encoder, tokenizer, scheduler"):
        load_backbone(config)
    config = experiment(tiny_world, tmp_path, backbone={"source": "no such thing"})
    with pytest.raises(ConfigError, match="neither an existing folder nor a hub id"):
        load_backbone(config)
    with pytest.raises(TaxabenchError, match="built from the dataset"):
        load_backbone(experiment(tiny_world, tmp_path))


def test_cli_builds_into_out(tiny_world, tiny_backbone, tmp_path, capsys):
    from taxabench.cli import main

    config_file = tmp_path / "config.yaml"
    config_file.write_text(experiment(tiny_world, tmp_path).to_yaml())
    out = tmp_path / "backbone"
    assert main(["backbone", "tiny", "--data", str(config_file), "--out", str(out)]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        tiny_backbone[0] / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()


def test_backbone_never_saw_a_benchmark_image_genus_or_species(tiny_backbone, tiny_data):
    """The pre-training world shares the benchmark's taxa down to caption_rank (family) and nothing below."""
    from taxabench.config import DataConfig
    from taxabench.data import load_dataset

    report = json.loads((tiny_backbone[0] / "build.json").read_text())["pretraining_world"]
    assert report["kind"] == "separate-world" and "No benchmark image, genus or species was seen" in report["statement"]
    world = load_dataset(DataConfig(root=report["root"], eval_split=None))
    benchmark_images = {Path(r.image).resolve() for r in [*tiny_data.train, *tiny_data.eval]}
    assert not benchmark_images & {Path(r.image).resolve() for r in world.train}
    for rank in ("genus", "species"):
        names = {t.name for t in tiny_data.taxonomy.taxa(rank)}
        assert not names & {t.name for t in world.taxonomy.taxa(rank)}, rank
        assert report["benchmark_taxa_also_in_pretraining"][rank] == 0
    for rank in ("class", "order", "family"):
        assert {t.id for t in world.taxonomy.taxa(rank)} == {t.id for t in tiny_data.taxonomy.taxa(rank)}, rank
    # the coarse traits of a shared family are the benchmark's; what lies below is drawn anew
    traits = {r.labels[:3]: r.extra for r in tiny_data.train}
    for record in world.train[:20]:
        mine, theirs = record.extra, traits[record.labels[:3]]
        assert all(mine[f"trait_{t}"] == theirs[f"trait_{t}"] for t in ("silhouette", "hue", "proportions"))


def test_text_encoder_knowledge_is_measured_per_rank(tiny_backbone, tiny_data):
    knowledge = json.loads((tiny_backbone[0] / "build.json").read_text())["text_encoder"]["zero_shot_top1"]
    assert list(knowledge) == list(tiny_data.ranks)
    for rank, entry in knowledge.items():
        taxa = len(tiny_data.taxonomy.taxa(rank))
        assert entry["taxa"] == taxa and entry["chance"] == pytest.approx(1 / taxa, abs=1e-4)
        assert entry["images"] == len(tiny_data.eval) and 0.0 <= entry["accuracy"] <= 1.0


@pytest.mark.slow
def test_text_encoder_knows_coarse_names_and_not_species(tmp_path):
    """Trained on captions naming class..family only, the frozen text encoder separates the benchmark's orders and
    families well above chance and its species at chance (the names it never read)."""
    from taxabench.config import DataConfig, SynthTaxaOptions, TinyBackbone
    from taxabench.data import load_dataset

    config = DataConfig(root=str(tmp_path / "world"), synthtaxa=SynthTaxaOptions(preset="tiny-domain", seed=0))
    data = load_dataset(config)
    tiny = TinyBackbone(vae_steps=1, unet_pretrain_steps=1, text_encoder_steps=150, pretraining_images_per_species=32)
    folder = build_tiny_backbone(data, config, tiny, tmp_path / "backbone", show_progress=False)
    knowledge = json.loads((folder / "build.json").read_text())["text_encoder"]["zero_shot_top1"]
    for rank in ("order", "family"):
        assert knowledge[rank]["accuracy"] > knowledge[rank]["chance"] + 0.25, (rank, knowledge[rank])
    assert knowledge["species"]["accuracy"] < knowledge["species"]["chance"] + 0.05, knowledge["species"]


def test_cross_attention_reaches_the_16x16_latents(tiny_backbone):
    report = json.loads((tiny_backbone[0] / "build.json").read_text())["unet"]
    assert report["cross_attention_resolutions"] == [16, 8]
    retained = report["sibling_difference_retained"]
    assert retained["16x16"] > 2 * retained["8x8"]  # what tells siblings apart lives between the two
    backbone = load_sd_folder(tiny_backbone[0], identity="test", source="tiny")
    assert backbone.unet.down_blocks[0].attentions  # the 16x16 level attends to the text
