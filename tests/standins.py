"""Stand-ins for the real weights, offline and seeded, in the real file formats, names and cache layouts.

They have the real architectures wherever a code path depends on them, random weights, and are laid out exactly as
a user's caches hold the real files:

- Stable Diffusion 1.5 in the Hugging Face hub cache: `models--stable-diffusion-v1-5--stable-diffusion-v1-5/`
  with `blobs/` (files named by their SHA-256), `snapshots/<revision>/` (relative symlinks into blobs/, as
  huggingface_hub writes them) and `refs/main`; `StableDiffusionPipeline.save_pretrained` writes the folder.
  The configs are SD 1.5's own (`SD15_UNET`, `SD15_VAE`, `SD15_TEXT`: 4 latent channels, VAE factor 8 and
  scaling factor 0.18215, UNet sample size 64, cross-attention width 768, the CLIP ViT-L/14 text tower's width,
  77 positions and 49,408-token vocabulary behind the real CLIP BPE tokenizer, SD 1.5's PNDM schedule), shrunk
  where only cost depends on it: the UNet's channels (320/640/1280/1280 -> 32/64/64/64) and layers per block
  (2 -> 1), the VAE's channels (128/256/512/512 -> 32 each) and layers per block (2 -> 1), the text tower's
  depth (12 -> 1 layer). A full-size random SD 1.5 costs 4 GB and minutes per step on 2 CPU cores.
- BioCLIP (`imageomics/bioclip`) in the hub cache: open_clip's `ViT-B-16` at full size (150 M parameters), with
  `open_clip_config.json` and `open_clip_model.safetensors` as the repo has them.
- The FID Inception (pytorch-fid's architecture, `pt_inception-2015-12-05-6726825d.pth`) and torchvision's VGG16
  (`vgg16-397923af.pth`, classifier included) in `$TORCH_HOME/hub/checkpoints/`. Their bytes cannot match the
  published SHA-256, so a run names their digests in `eval.unverified_weights`, and every number says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

REVISION = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14"  # any 40-hex commit: the snapshot folder's name
SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
BIOCLIP_ID = "imageomics/bioclip"

SD15_UNET = {  # unet/config.json of SD 1.5, with the two cost-only shrinks marked
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True,
    "freq_shift": 0, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                          "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 64, 64],  # SD 1.5: [320, 640, 1280, 1280]
    "layers_per_block": 1,  # SD 1.5: 2
    "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu",
    "norm_num_groups": 16,  # SD 1.5: 32 (a divisor of the shrunk channels)
    "norm_eps": 1e-5, "cross_attention_dim": 768, "attention_head_dim": 8,
}
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 32, 32],  # SD 1.5: [128, 256, 512, 512]
    "layers_per_block": 1,  # SD 1.5: 2
    "norm_num_groups": 16,  # SD 1.5: 32
    "act_fn": "silu",
}
SD15_TEXT = {  # CLIP ViT-L/14's text tower (text_encoder/config.json of SD 1.5)
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
    "num_hidden_layers": 1,  # SD 1.5: 12
    "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768, "layer_norm_eps": 1e-5,
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
}


@contextmanager
def pointed_caches(root: Path) -> Iterator[Path]:
    """HF_HUB_CACHE (`root/hub`, also huggingface_hub's constant, read at import) and TORCH_HOME (`root/torch`)
    pointed at `root` while inside; restored afterwards."""
    import huggingface_hub.constants as hub_constants

    saved = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "TORCH_HOME")}
    saved_constant = hub_constants.HF_HUB_CACHE
    os.environ["HF_HUB_CACHE"] = hub_constants.HF_HUB_CACHE = str(root / "hub")
    os.environ["TORCH_HOME"] = str(root / "torch")
    try:
        yield root
    finally:
        hub_constants.HF_HUB_CACHE = saved_constant
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_hub_snapshot(hub: Path, repo: str, folder: Path, revision: str = REVISION) -> Path:
    """Move `folder`'s files into the hub cache layout of `repo` (blobs + snapshot symlinks + refs/main)."""
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = root / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.move(file, blob)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    shutil.rmtree(folder)
    return snapshot


def build_sd15(hub: Path, seed: int = 0) -> Path:
    """The SD-1.5-shaped pipeline in the hub cache; returns its snapshot folder."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from taxabench.backbone import SD15_SCHEDULER, write_clip_tokenizer

    staging = hub / ".staging-sd15"
    write_clip_tokenizer(staging / "tokenizer", 77)
    tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
    torch.manual_seed(seed)
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), unet=UNet2DConditionModel(**SD15_UNET),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)), tokenizer=tokenizer,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(staging)
    return write_hub_snapshot(hub, SD15_ID, staging)


def build_bioclip(hub: Path, seed: int = 0) -> Path:
    """open_clip ViT-B-16 (BioCLIP's architecture), random, as `imageomics/bioclip` lays it out."""
    import open_clip
    from open_clip.factory import get_model_config
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.create_model("ViT-B-16")
    staging = hub / ".staging-bioclip"
    staging.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, staging / "open_clip_model.safetensors")
    config = {"model_cfg": get_model_config("ViT-B-16"),
              "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                 "std": [0.26862954, 0.26130258, 0.27577711]}}
    (staging / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return write_hub_snapshot(hub, BIOCLIP_ID, staging)


def build_torch_hub_files(torch_home: Path, seed: int = 0) -> dict[str, str]:
    """The FID Inception and VGG16 files in `$TORCH_HOME/hub/checkpoints/`; returns extractor -> SHA-256, for
    `eval.unverified_weights`."""
    import torchvision

    from taxabench.metrics.extractor_inception import INCEPTION_WEIGHTS, fid_inception_v3
    from taxabench.metrics.extractor_lpips_vgg import VGG16_WEIGHTS

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    inception = fid_inception_v3()
    for module in inception.modules():  # PyTorch's default init shrinks activations ~1e-8 over 90 layers: FID ~1e-14
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")  # features of order 1
    torch.save(inception.state_dict(), folder / INCEPTION_WEIGHTS.filename)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), folder / VGG16_WEIGHTS.filename)
    return {name: hashlib.sha256((folder / spec.filename).read_bytes()).hexdigest()
            for name, spec in (("inception", INCEPTION_WEIGHTS), ("lpips-vgg", VGG16_WEIGHTS))}
