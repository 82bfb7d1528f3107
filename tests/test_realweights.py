"""The real-weights path, offline: stand-ins with the real architectures, file formats and cache layouts
(`tests/standins.py`) go through `taxabench weights` and a short `taxabench run` of `configs/fishnet.yaml` on a
FishNet-format folder, exactly as a user's SD 1.5 / BioCLIP / Inception / VGG16 files would; the trained checkpoints
load back into diffusers' own classes.

`nox -s realweights` runs all of it (about 15 minutes on 2 busy CPU cores: building the stand-ins is 4 of them);
the default suite runs the SD hub-layout resolution only (the tests not marked `realweights`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import standins
import torch
from test_data_fishnet import make_release

from taxabench.cli import main

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def sd15(caches):
    return standins.build_sd15(caches / "hub")


def test_sd15_in_the_hub_cache_resolves_and_loads_by_its_stock_id(sd15):
    """The snapshot of symlinks into blobs/ resolves offline under the stock id and loads with SD 1.5's shapes;
    its identity names the revision and covers the loaded files only."""
    from taxabench.backbone import load_sd_folder, resolve_backbone
    from taxabench.config import config_from_dict

    path, identity = resolve_backbone(config_from_dict({"backbone": {"source": standins.SD15_ID}}))
    assert path == sd15 and (path / "unet" / "diffusion_pytorch_model.safetensors").is_symlink()
    assert identity.startswith(f"{standins.SD15_ID}@sha256:") and identity.endswith(
        f"(cache, revision {standins.REVISION[:12]})")
    backbone = load_sd_folder(path, identity, standins.SD15_ID)
    assert (backbone.vae_scale_factor, backbone.latent_channels, backbone.image_size) == (8, 4, 512)
    assert (backbone.text_width, backbone.cross_attention_dim, len(backbone.tokenizer)) == (768, 768, 49408)
    assert backbone.tokenizer("a photo of Abudefduf saxatilis").input_ids[:2] == [49406, 320]  # <|startoftext|> a
    (sd15 / "unet" / "diffusion_pytorch_model.fp16.safetensors").symlink_to(
        os.readlink(sd15 / "unet" / "diffusion_pytorch_model.safetensors"))  # a variant nobody loads
    try:
        assert resolve_backbone(config_from_dict({"backbone": {"source": standins.SD15_ID}}))[1] == identity
    finally:
        (sd15 / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()


@pytest.fixture(scope="module")
def metric_weights(caches, sd15):
    standins.build_bioclip(caches / "hub")
    return standins.build_torch_hub_files(caches / "torch")


@pytest.fixture(scope="module")
def fishnet_run(metric_weights, tmp_path_factory):
    """configs/fishnet.yaml as a user runs it, on a FishNet-format folder, with budgets cut to a few steps."""
    folder = tmp_path_factory.mktemp("fishnet")
    root = make_release(folder)
    overrides = [
        f"runs_dir={folder / 'runs'}", f"data.root={root}", f"data.annotations={root}", "data.image_size=64",
        "train.steps_per_stage=2", "train.batch_size=2", "sample.images_per_taxon=2", "sample.steps=2",
        "eval.bootstrap=20", "eval.bootstrap_set_metrics=5", "eval.kid_subsets=5",
        f"eval.unverified_weights.inception={metric_weights['inception']}",
        f"eval.unverified_weights.lpips-vgg={metric_weights['lpips-vgg']}",
    ]
    config_file = folder / "fishnet.yaml"
    config_file.write_text((REPO / "configs" / "fishnet.yaml").read_text())
    args = [arg for override in overrides for arg in ("--set", override)]
    return config_file, args, folder / "runs" / "fishnet"


@pytest.mark.realweights
def test_weights_finds_every_component_of_the_fishnet_config(fishnet_run, capsys, monkeypatch):
    from taxabench import cli

    config_file, args, _ = fishnet_run
    monkeypatch.setattr(cli.console, "width", 400)
    config = config_file.with_name("resolved.yaml")
    from taxabench.config import load_config

    config.write_text(load_config(config_file, args[1::2]).to_yaml())
    assert main(["weights", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    use = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") > 3}
    for component in (standins.SD15_ID, "inception", "bioclip", "vgg16"):
        assert "needed" in use[component] or "optional" in use[component]
        assert "found" in use[component]
    assert "unverified: sha256" in use["inception"] and "unused" in use["bioclip-2"]


@pytest.mark.realweights
def test_fishnet_run_through_the_real_layouts(fishnet_run):
    config_file, args, run_dir = fishnet_run
    assert main(["run", "--config", str(config_file), *args]) == 0
    table = pd.read_csv(run_dir / "metrics" / "all.csv")
    assert set(table["method"]) >= {"taxadiffusion", "sd-zeroshot", "sd-lora", "sd-finetune", "flat-ldm"}
    fid = table[(table.metric == "fd") & (table.scope == "overall")]
    assert len(fid) and fid["name"].str.startswith("FID [unverified: sha256 ").all()
    clip = table[table.metric == "clip_score"]
    assert len(clip) and (clip["name"] == "BioCLIP score").all()
    assert clip["protocol"].str.contains("caption=taxonomic").all()
    assert clip["weights"].str.contains(f"revision {standins.REVISION[:12]}").all()
    lpips = table[table.metric == "lpips"]
    assert len(lpips) and lpips["name"].str.startswith("LPIPS (VGG) [unverified: sha256").all()
    steps = json.loads((run_dir / "steps.json").read_text())
    assert all(entry["peak_rss_mb"] > 0 for entry in steps.values())
    assert (run_dir / "report" / "README.md").is_file()


def _samples(run_dir: Path, name: str) -> tuple[Path, list[dict]]:
    folder = run_dir / "samples" / name
    return folder, [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _assert_same_images(images, folder: Path, lines: list[dict]) -> None:
    """The images the sampler wrote. Both sides compute in the run's precision (float64 on CPU) in another
    batching and LoRA arithmetic (merged vs added), ~1e-13 apart: only a value sitting on an 8-bit rounding
    boundary can differ, by one level."""
    assert len(images) == len(lines)
    for image, line in zip(images, lines):
        ours = np.asarray(PIL.Image.open(folder / line["image"]).convert("RGB"), dtype=np.int16)
        difference = np.abs(np.asarray(image, dtype=np.int16) - ours)
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, (line["image"], difference.max())


def _stock_pipeline_images(pipeline, trained, lines: list[dict]):
    """diffusers' own StableDiffusionPipeline (SD 1.5's PNDM scheduler from the snapshot, classifier-free
    guidance against the empty prompt) on the text-only baselines' prompts, from the sampler's starting noise."""
    from taxabench.taxonomy import species_prompt

    assert {(line["guidance"], line["scheduler"]) for line in lines} == {("cfg", "pndm")}
    dtype = getattr(torch, lines[0]["precision"])
    pipeline.to(dtype)
    size = 64
    shape = (4, size // pipeline.vae_scale_factor, size // pipeline.vae_scale_factor)
    latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(line["seed"]))
                           for line in lines]).to(dtype)  # one generator per image, as taxabench's sampler
    taxonomy = trained.taxonomy
    prompts = [species_prompt(trained.method.ranks, taxonomy.labels_of(taxonomy.resolve(line["taxon_id"])))
               for line in lines]
    return pipeline(prompts, latents=latents, num_inference_steps=lines[0]["steps"], height=size, width=size,
                    guidance_scale=lines[0]["guidance_scale"]).images


@pytest.mark.realweights
def test_trained_checkpoints_generate_the_same_images_in_diffusers(fishnet_run, sd15):
    """Every trained checkpoint back in diffusers' own classes generates the images taxabench's sampler wrote for
    the same seeds: sd-zeroshot and sd-lora (`load_lora_weights`) through `StableDiffusionPipeline`, sd-finetune
    with its `unet/` through `UNet2DConditionModel.from_pretrained`, TaxaDiffusion through
    `TaxaDiffusionPipeline.from_pretrained` and flat-LDM through `TaxonomyPipeline.from_pretrained`."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from taxabench.sample import TaxaDiffusionPipeline, TaxonomyPipeline
    from taxabench.train import load_trained

    _, _, run_dir = fishnet_run
    folder, lines = _samples(run_dir, "sd-zeroshot")
    stock = StableDiffusionPipeline.from_pretrained(sd15, safety_checker=None)
    _assert_same_images(_stock_pipeline_images(stock, load_trained(run_dir, "sd-zeroshot"), lines), folder, lines)

    lora = load_trained(run_dir, "sd-lora")
    folder, lines = _samples(run_dir, "sd-lora")
    without_lora = _stock_pipeline_images(stock, lora, lines)
    pipeline = StableDiffusionPipeline.from_pretrained(sd15, safety_checker=None)
    pipeline.load_lora_weights(lora.checkpoint, weight_name="pytorch_lora_weights.safetensors")
    with_lora = _stock_pipeline_images(pipeline, lora, lines)
    _assert_same_images(with_lora, folder, lines)
    assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(with_lora, without_lora))  # it did load

    finetune = load_trained(run_dir, "sd-finetune")
    folder, lines = _samples(run_dir, "sd-finetune")
    pipeline = StableDiffusionPipeline.from_pretrained(
        sd15, unet=UNet2DConditionModel.from_pretrained(finetune.checkpoint / "unet"), safety_checker=None)
    _assert_same_images(_stock_pipeline_images(pipeline, finetune, lines), folder, lines)

    for name, cls in (("taxadiffusion", TaxaDiffusionPipeline), ("flat-ldm", TaxonomyPipeline)):
        folder, lines = _samples(run_dir, name)
        pipeline = cls.from_pretrained(run_dir / "checkpoints" / name, scheduler=lines[0]["scheduler"])
        pipeline.to(getattr(torch, lines[0]["precision"]))
        images = pipeline([line["taxon_id"] for line in lines], seeds=[line["seed"] for line in lines],
                          guidance=lines[0]["guidance"], guidance_scale=lines[0]["guidance_scale"],
                          num_inference_steps=lines[0]["steps"], height=64, width=64).images
        _assert_same_images(images, folder, lines)


@pytest.mark.parametrize("size", [64, 512])
def test_inception_features_equal_clean_fids_pytorch_fid_copy(size, tmp_path, monkeypatch):
    """The same (seeded) FID Inception weights in clean-fid's copy of pytorch-fid's network and in taxabench's
    extractor, images at 64 and 512 px resized as pytorch-fid does (bilinear to 299, align_corners=False).
    Tolerance: float32 convolutions summed in another order, 1e-4 of the feature scale."""
    import cleanfid.inception_pytorch as clean

    from taxabench.metrics.extractor_inception import InceptionExtractor, fid_inception_v3
    from taxabench.weights import ResolvedWeights

    torch.manual_seed(0)
    state = fid_inception_v3().state_dict()
    torch.save(state, tmp_path / "inception.pth")
    ours = InceptionExtractor(ResolvedWeights(tmp_path / "inception.pth", "explicit", "0" * 64))
    monkeypatch.setattr(clean, "load_state_dict_from_url", lambda *args, **kwargs: state)
    reference = clean.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=True).eval()
    generator = torch.Generator().manual_seed(1)
    images = (torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=generator), size=size,
                                              mode="bilinear") * 255).to(torch.uint8)
    with torch.no_grad():
        got = ours(images)["pool3"]
        x = torch.nn.functional.interpolate(images.float() / 255, size=(299, 299), mode="bilinear",
                                            align_corners=False)
        expected = reference(x)[0].flatten(1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
