"""The Stable-Diffusion-format backbone every method starts from: VAE, UNet, frozen text encoder, tokenizer, noise
schedule — loaded from an SD folder, a hub id, or the tiny one taxabench builds itself.

Three sources, one loader (`load_sd_folder`, each component's `from_pretrained`):
- a local SD-format folder (`model_index.json`, `vae/`, `unet/`, `text_encoder/`, `tokenizer/`, `scheduler/`);
- a hub id such as `runwayml/stable-diffusion-v1-5`, resolved offline-first by `taxabench.weights` (offline with
  no local copy, it fails within a second saying what to download and where to put it);
- `tiny`: a small SD-format folder built offline (`build_tiny_backbone`) and cached under
  `$TAXABENCH_HOME/backbones/` by a hash of everything that decides its weights.

The tiny backbone plays SD 1.5's part on a CPU, with what SD brings to TaxaDiffusion:
- a domain gap: on SynthTaxa it is pre-trained on a separate pre-training world (`synthtaxa.pretraining_world`)
  that shares the benchmark's taxa down to `caption_rank` and has new genera and species below, so it has seen no
  benchmark image, genus or species (`build.json` counts them);
- a text encoder whose coarse names mean something and whose species names do not, as CLIP's for SD: a CLIP text
  transformer behind the real CLIP BPE tokenizer, trained contrastively against a small image tower on the
  pre-training world with captions naming ranks down to `caption_rank` only, then frozen; `build.json` reports, per
  rank, its zero-shot accuracy on the benchmark's test images among that rank's names;
- a UNet pre-trained as text-to-image on those coarse captions, in the sentence form (`"a photo of C O F."`) and in
  TaxaDiffusion's per-rank string forms (`"family: F"`, `"class: C order: O family: F"`), with cross-attention
  down to the 16x16 latent level at 64 px, where sibling species still differ (`build.json` measures how much of
  their difference each attention resolution keeps).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from taxabench.config import DataConfig, ExperimentConfig, TinyBackbone, taxabench_home
from taxabench.errors import ConfigError, TaxabenchError
from taxabench.files import building_folder
from taxabench.taxonomy import bioclip_caption, rank_prompts

TINY_FORMAT_VERSION = 3  # bump when the tiny build changes: cached tiny backbones of another version are rebuilt
SD_COMPONENTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
SD_BACKBONE_WEIGHTS = "sd-backbone"  # weights-spec name: $TAXABENCH_SD_BACKBONE_WEIGHTS points at a folder
# the files each component's from_pretrained reads; of several weights files, the first present is the one read
SD_WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}
SD_CONFIG_FILES = {
    "unet": ("config.json",), "vae": ("config.json",), "text_encoder": ("config.json",),
    "tokenizer": ("vocab.json", "merges.txt"), "scheduler": ("scheduler_config.json",),
}
SD_OPTIONAL_FILES = ("tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json")
# the stock SD 1.5 id and the one it had until 2024 (runwayml took it down; the weights are the same)
SD15_IDS = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")

# Stable Diffusion 1.5's noise schedule (its scheduler/scheduler_config.json): every tiny backbone uses it too.
SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    # the predicted clean latent is not clipped to [-1, 1]: latents are not images (samplers derived from this
    # config inherit it; DDIM's own default would clip and ruin every sample)
    "clip_sample": False,
}


@dataclass
class Backbone:
    """An SD-format pipeline's parts, plus where they came from (`identity` names the weights in reports)."""

    vae: torch.nn.Module  # diffusers AutoencoderKL
    unet: torch.nn.Module  # diffusers UNet2DConditionModel
    text_encoder: torch.nn.Module  # transformers CLIPTextModel, frozen
    tokenizer: object  # transformers CLIPTokenizer
    noise_scheduler: object  # diffusers DDPMScheduler with the backbone's own schedule
    path: Path  # the SD-format folder
    source: str  # as the config gave it: `tiny`, a folder or a hub id
    identity: str  # `tiny@1a2b3c4d5e6f7a8b` or `runwayml/stable-diffusion-v1-5@sha256:…`

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def text_width(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def encode_text(self, strings: list[str]) -> torch.Tensor:
        """The frozen text encoder's last hidden states, `len(strings) x max_length x width`, as SD uses them."""
        ids = self.tokenizer(
            strings, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    def latent_distribution(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the VAE posterior for images in [-1, 1] (unscaled; see `scaled_latents`)."""
        posterior = self.vae.encode(pixel_values).latent_dist
        return posterior.mean, posterior.std

    def scaled_latents(self, mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A posterior sample `mean + std * noise`, scaled as SD does (`* vae.config.scaling_factor`)."""
        return (mean + std * noise) * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (scaled) to images in [-1, 1]."""
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample

    def freeze(self) -> Backbone:
        for module in (self.vae, self.unet, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        return self

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Backbone:
        for module in (self.vae, self.unet, self.text_encoder):
            module.to(device=device, dtype=dtype)
        return self


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def load_backbone(config: ExperimentConfig, data=None, show_progress: bool = True) -> Backbone:
    """The backbone `config.backbone.source` names (the tiny one is built from `data` on first use), frozen, on CPU."""
    path, identity = resolve_backbone(config, data, show_progress=show_progress)
    return load_sd_folder(path, identity=identity, source=config.backbone.source)


def resolve_backbone(config: ExperimentConfig, data=None, show_progress: bool = True) -> tuple[Path, str]:
    """The SD-format folder and the identity string of the backbone `config.backbone.source` names."""
    source = config.backbone.source
    if source == "tiny":
        if data is None:
            raise TaxabenchError("backbone.source 'tiny' is built from the dataset; load the dataset first")
        return ensure_tiny_backbone(data, config.data, config.backbone.tiny, show_progress=show_progress)
    from taxabench.weights import resolve_weights

    if Path(source).exists():
        path = Path(source)
        return path, f"{path.name}@sha256:{sd_folder_sha256(path, source)[:12]}"
    if source.count("/") != 1 or source.startswith((".", "/")):
        raise ConfigError(
            f"backbone.source: {source!r} is neither an existing folder nor a hub id like "
            "'stable-diffusion-v1-5/stable-diffusion-v1-5' (nor 'tiny')"
        )
    resolved = resolve_weights(hub_backbone_spec(source))
    return resolved.path, resolved.identity(source)


def hub_backbone_spec(source: str):
    """The weights spec of an SD-format pipeline on the hub (`taxabench.weights` resolves it offline-first)."""
    from taxabench.weights import WeightsSpec

    return WeightsSpec(
        name=SD_BACKBONE_WEIGHTS,
        description=f"the Stable-Diffusion-format pipeline {source} (folders {', '.join(SD_COMPONENTS)})",
        hf_repo=source,
        hf_aliases=tuple(i for i in SD15_IDS if i != source) if source in SD15_IDS else (),
        # the diffusers folders only: SD repos also hold multi-GB single-file and fp16/EMA checkpoints
        hf_patterns=("model_index.json", "*/config.json", "*/*_config.json", "tokenizer/*",
                     "vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                     "text_encoder/model.safetensors"),
        loaded_files=lambda path: sd_files(path, source),
    )


def sd_files(path: Path, source: str) -> list[Path]:
    """The files `load_sd_folder` reads from an SD-format folder; a missing one is an error naming it and the fix."""
    from taxabench.errors import WeightsInvalidError

    path = Path(path)

    def fix(*folders: str) -> str:
        include = "".join(f" --include '{name}/*'" for name in folders)
        return (f"fetch it again (`hf download stable-diffusion-v1-5/stable-diffusion-v1-5{include}`) or write the "
                "folder with `StableDiffusionPipeline.save_pretrained`")

    missing = [name for name in SD_COMPONENTS if not (path / name).is_dir()]
    if missing:
        raise WeightsInvalidError(f"backbone {source!r}: {path} is not a Stable-Diffusion-format folder: it lacks "
                                  f"{', '.join(missing)}/ (expected {', '.join(SD_COMPONENTS)}); "
                                  + fix(*missing))
    files = []
    for component in SD_COMPONENTS:
        folder = path / component
        for name in SD_CONFIG_FILES[component]:
            if not (folder / name).is_file():
                raise WeightsInvalidError(f"backbone {source!r}: {folder / name} is missing; "
                                          + fix(component))
            files.append(folder / name)
        if component in SD_WEIGHT_FILES:
            found = [folder / name for name in SD_WEIGHT_FILES[component] if (folder / name).is_file()]
            if not found:
                raise WeightsInvalidError(
                    f"backbone {source!r}: {folder}/ has no weights file ({' or '.join(SD_WEIGHT_FILES[component])}; "
                    f"an interrupted download?); " + fix(component))
            files.append(found[0])
    files += [path / name for name in SD_OPTIONAL_FILES if (path / name).is_file()]
    return files


def sd_folder_sha256(path: Path, source: str) -> str:
    """The backbone's identity digest: of the files it loads only (an extra fp16 variant changes nothing)."""
    from taxabench.weights import files_sha256

    return files_sha256(Path(path), sd_files(path, source))


def quiet_hub_progress() -> None:
    """diffusers / transformers print a progress bar per weight file; taxabench shows its own progress."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def load_sd_folder(path: Path, identity: str, source: str) -> Backbone:
    """Each component of an SD-format folder through its own `from_pretrained`, frozen."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    quiet_hub_progress()
    path = Path(path)
    sd_files(path, source)
    backbone = Backbone(
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae"),
        unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet"),
        text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
        # the training noise schedule is the backbone's own (the authors' code trained with another one)
        noise_scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler"),
        path=path,
        source=source,
        identity=identity,
    )
    return backbone.freeze()


# ---------------------------------------------------------------------------------------------------------------
# The tiny backbone
# ---------------------------------------------------------------------------------------------------------------


def tiny_backbone_key(data, data_config: DataConfig, tiny: TinyBackbone) -> str:
    """Hash of everything that decides the tiny backbone's weights: the data, how images are read, the tiny config."""
    images = {"size": data_config.image_size, "resize": data_config.resize, "bbox": data_config.use_bbox}
    blob = json.dumps(
        {"format": TINY_FORMAT_VERSION, "data": data.fingerprint(), "images": images, "tiny": asdict(tiny)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def ensure_tiny_backbone(
    data, data_config: DataConfig, tiny: TinyBackbone, show_progress: bool = True
) -> tuple[Path, str]:
    """The cached tiny backbone for this data and config, built first if missing: (folder, identity)."""
    key = tiny_backbone_key(data, data_config, tiny)
    folder = taxabench_home() / "backbones" / f"tiny-{key[:16]}"
    if not (folder / "build.json").is_file():  # another process may finish first: its copy is kept
        with building_folder(folder, "backbone", finished_by="build.json") as staging:
            build_tiny_backbone(data, data_config, tiny, staging, show_progress=show_progress)
    return folder, f"tiny@{key[:16]}"


def build_tiny_backbone(
    data, data_config: DataConfig, tiny: TinyBackbone, out: Path, show_progress: bool = True
) -> Path:
    """Build the tiny SD-format backbone into `out`; deterministic from `tiny.seed` (see the module docstring).

    Steps: (0) the pre-training images (a separate SynthTaxa world, or the benchmark's own training images);
    (1) the CLIP tokenizer from open_clip's BPE vocabulary; (2) a CLIP text encoder trained contrastively on coarse
    captions of the pre-training images, then frozen, and measured on the benchmark; (3) a small AutoencoderKL
    trained on the pre-training images, its latent scale measured as SD's `scaling_factor` is; (4) a small UNet
    pre-trained as text-to-image on coarse captions; (5) everything written with `save_pretrained` as a
    `StableDiffusionPipeline` folder, with `build.json` reporting what each step measured.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from taxabench.data.images import TaxaImageDataset

    if tiny.caption_rank not in data.ranks:
        raise ConfigError(
            f"backbone.tiny.caption_rank: {tiny.caption_rank!r} is not a rank of the dataset ({', '.join(data.ranks)})"
        )
    image_size = data_config.image_size
    down = 2 ** (len(tiny.vae_channels) - 1)
    if image_size % down:
        raise ConfigError(f"data.image_size {image_size} is not divisible by the tiny VAE's downsampling {down}")
    quiet_hub_progress()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(tiny.seed)

    # 0. pre-training images
    records, ranks, world_report = _pretraining_records(data, tiny, show_progress)
    if len(records) > tiny.max_images:
        keep = torch.randperm(len(records), generator=generator)[: tiny.max_images].sort().values.tolist()
        records = [records[i] for i in keep]
    dataset = TaxaImageDataset(records, image_size, data_config.resize, data_config.use_bbox)
    images = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])
    held_out = data.eval[: tiny.max_images] if data.eval else []
    eval_images = (
        torch.stack([item["pixel_values"] for item in TaxaImageDataset(held_out, image_size, data_config.resize, data_config.use_bbox)]) if held_out else images
    )
    depth = ranks.index(tiny.caption_rank) + 1
    lineages = [r.labels[:depth] for r in records]

    # 1. tokenizer: the real CLIP BPE, as SD 1.5 ships it (vocab.json + merges.txt)
    tokenizer_dir = out / "tokenizer"
    write_clip_tokenizer(tokenizer_dir, tiny.max_length)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)

    # 2. text encoder: trained contrastively on coarse captions, then frozen
    torch.manual_seed(tiny.seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=tiny.text_width, intermediate_size=4 * tiny.text_width,
            num_hidden_layers=tiny.text_layers, num_attention_heads=max(1, tiny.text_width // 32),
            max_position_embeddings=tiny.max_length, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )
    text_report = _train_text_encoder(text_encoder, tokenizer, images, lineages, ranks[:depth], data, data_config,
                                      tiny, generator, show_progress)
    text_encoder.eval().requires_grad_(False)

    # 3. VAE
    torch.manual_seed(tiny.seed + 1)
    n_blocks = len(tiny.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n_blocks,
        up_block_types=("UpDecoderBlock2D",) * n_blocks, block_out_channels=tuple(tiny.vae_channels),
        layers_per_block=1, latent_channels=tiny.latent_channels, norm_num_groups=8, sample_size=image_size,
        mid_block_add_attention=False,  # fully convolutional, so it can train on crops
    )
    vae_report = _train_vae(vae, images, eval_images, tiny, generator, show_progress)

    # 4. UNet, pre-trained as text-to-image on coarse captions in the sentence and per-rank string forms
    torch.manual_seed(tiny.seed + 2)
    attention = tiny.unet_attention
    unet = UNet2DConditionModel(
        sample_size=image_size // down, in_channels=tiny.latent_channels, out_channels=tiny.latent_channels,
        layers_per_block=1, block_out_channels=tuple(tiny.unet_channels),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        only_cross_attention=[not s for s in tiny.unet_self_attention],
        cross_attention_dim=tiny.text_width, attention_head_dim=tuple(tiny.unet_heads), norm_num_groups=8,
    )
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)  # from_config keeps clip_sample, as SD 1.5's file has it
    captions = [caption_forms(ranks[:depth], lineage) for lineage in lineages]
    unet_report = _pretrain_unet(
        unet, vae, text_encoder, tokenizer, scheduler, images, captions, tiny, generator, show_progress
    )
    latent_size = image_size // down
    resolutions = [latent_size // 2**level for level, a in enumerate(attention) if a]

    # 5. write it as SD 1.5 is written
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(out)
    write_clip_tokenizer(tokenizer_dir, tiny.max_length)  # keep CLIP's own files next to what transformers wrote
    report = {
        "format": TINY_FORMAT_VERSION,
        "data_fingerprint": data.fingerprint(),
        "image_size": image_size,
        "tiny": asdict(tiny),
        "pretraining_world": world_report,
        "train_images": len(records),
        "text_encoder": text_report,
        "vae": vae_report,
        "unet": {**unet_report, "caption_rank": tiny.caption_rank, "example_captions": list(captions[0]),
                 "cross_attention_resolutions": resolutions,
                 "sibling_difference_retained": _sibling_difference(data, image_size, [latent_size // 2**level
                                                                    for level in range(len(attention))])},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    return out


def caption_forms(ranks, lineage) -> tuple[str, str, str]:
    """A pre-training caption in each form the methods use: BioCLIP's sentence (`"a photo of C O F."`), the rank
    strings joined (`"class: C order: O family: F"`, the authors' `prompt`, datasets/fishnet.py:175) and the finest
    rank's own string (`"family: F"`, what a TaxaDiffusion rank module reads)."""
    strings = rank_prompts(ranks, lineage)
    return bioclip_caption(ranks, lineage), " ".join(strings), strings[-1]


def _pretraining_records(data, tiny: TinyBackbone, show_progress: bool):
    """The images the tiny backbone learns from, their ranks, and `build.json`'s account of them."""
    from taxabench.config import DataConfig
    from taxabench.data import load_dataset
    from taxabench.data.synthtaxa import SPEC_FILE, generate_pretraining, pretraining_root, spec_from_json

    spec_file = Path(data.root) / SPEC_FILE
    if tiny.pretraining == "benchmark" or not spec_file.is_file():
        why = ("backbone.tiny.pretraining is 'benchmark'" if tiny.pretraining == "benchmark"
               else f"the dataset ({data.dataset}) is not a SynthTaxa world")
        return data.train, data.ranks, {
            "kind": "benchmark",
            "statement": f"pre-trained on the benchmark's own training images ({why}): no domain gap.",
        }
    found = json.loads(spec_file.read_text())
    if "pretraining" in found:
        raise ConfigError(f"{data.root} is a pre-training world, not a benchmark")
    spec = spec_from_json(found["spec"])
    shared = spec.ranks.index(tiny.caption_rank) + 1
    if shared >= len(spec.ranks):
        raise ConfigError("backbone.tiny.caption_rank: the pre-training world needs new taxa below it; choose a "
                          f"rank above {spec.ranks[-1]!r}")
    root = generate_pretraining(spec, shared, tiny.pretraining_images_per_species,
                                pretraining_root(spec, shared, tiny.pretraining_images_per_species), show_progress)
    world = load_dataset(DataConfig(dataset="synthtaxa", root=str(root), eval_split=None))
    seen = {}
    for rank in data.ranks:
        benchmark = {t.id for t in data.taxonomy.taxa(rank)}
        seen[rank] = len(benchmark & {t.id for t in world.taxonomy.taxa(rank)}) if rank in world.ranks else 0
    benchmark_images = {Path(r.image).resolve() for r in [*data.train, *data.eval]}
    images_seen = sum(Path(r.image).resolve() in benchmark_images for r in world.train)
    below = data.ranks[shared:]
    unseen = all(seen[rank] == 0 for rank in below) and images_seen == 0
    statement = (
        f"pre-trained on a separate SynthTaxa world ({len(world.train)} images, {len(world.species)} species): it "
        f"shares the benchmark's {', '.join(data.ranks[:shared])} taxa; its {', '.join(below)} taxa are new. "
        + ("No benchmark image, " + " or ".join(below) + " was seen." if unseen
           else f"WARNING: benchmark taxa or images were seen ({seen}, {images_seen} images).")
    )
    return world.train, world.ranks, {
        "kind": "separate-world",
        "root": str(root),
        "images": len(world.train),
        "species": len(world.species),
        "shared_ranks": list(data.ranks[:shared]),
        "benchmark_taxa_also_in_pretraining": seen,
        "benchmark_images_in_pretraining": images_seen,
        "statement": statement,
    }


def _sibling_difference(data, image_size: int, resolutions: list[int]) -> dict[str, float]:
    """On SynthTaxa, the share of sibling species' pixel difference each latent resolution keeps."""
    from taxabench.data.synthtaxa import SPEC_FILE, sibling_difference_retained, spec_from_json

    spec_file = Path(data.root) / SPEC_FILE
    if not spec_file.is_file():
        return {}
    from dataclasses import replace

    spec = replace(spec_from_json(json.loads(spec_file.read_text())["spec"]), image_size=image_size)
    return sibling_difference_retained(spec, resolutions)


class _ImageTower(torch.nn.Module):
    """The image side of the text encoder's contrastive training: a small CNN, discarded afterwards."""

    def __init__(self, width: int):
        super().__init__()
        layers, channels = [], 3
        for out_channels in (32, 64, 128, 128):
            layers += [torch.nn.Conv2d(channels, out_channels, 3, stride=2, padding=1), torch.nn.GELU()]
            channels = out_channels
        self.net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(channels, width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(images), dim=-1)


def _train_text_encoder(text_encoder, tokenizer, images, lineages, ranks, data, data_config, tiny: TinyBackbone,
                        generator, show_progress: bool) -> dict:
    """Teach the text encoder the coarse names, CLIP-style: for each caption rank with more than one taxon and each
    caption form, an image must pick its own taxon's caption among that rank's captions (a softmax over them).
    Genus and species names never appear. Then measure what it knows about the benchmark (`_text_knowledge`)."""
    from taxabench.progress import progress_bar

    width = tiny.text_width
    torch.manual_seed(tiny.seed + 3)
    tower = _ImageTower(width)
    projection = torch.nn.Linear(width, width, bias=False)
    groups = []  # (captions, target index per image)
    for depth in range(1, len(ranks) + 1):
        # unknown labels (None) sort first
        taxa = sorted({lineage[:depth] for lineage in lineages}, key=lambda t: tuple(n or "" for n in t))
        if len(taxa) < 2:
            continue  # a constant rank (a domain) has nothing to contrast
        index = {taxon: i for i, taxon in enumerate(taxa)}
        targets = torch.tensor([index[lineage[:depth]] for lineage in lineages])
        for form in range(3):
            groups.append(([caption_forms(ranks[:depth], taxon)[form] for taxon in taxa], targets))
    report: dict = {"steps": tiny.text_encoder_steps, "caption_ranks": list(ranks)}
    if tiny.text_encoder_steps and groups:
        ids = [tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids for captions, _ in groups]
        params = [*text_encoder.parameters(), *tower.parameters(), *projection.parameters()]
        optimizer = torch.optim.AdamW(params, lr=tiny.text_encoder_lr, weight_decay=1e-2)
        schedule = _cosine_with_warmup(optimizer, tiny.text_encoder_steps)
        started, losses = time.perf_counter(), []
        text_encoder.train()
        with progress_bar("tiny backbone: text encoder", tiny.text_encoder_steps, show_progress) as advance:
            for _ in range(tiny.text_encoder_steps):
                batch = torch.randint(0, len(images), (64,), generator=generator)
                pictures = images[batch]
                flip = torch.rand(len(batch), generator=generator) < 0.5
                pictures = torch.where(flip[:, None, None, None], pictures.flip(-1), pictures)
                features = tower(pictures)
                loss = 0.0
                for (_, targets), token_ids in zip(groups, ids):
                    text = F.normalize(projection(text_encoder(token_ids).pooler_output), dim=-1)
                    loss = loss + F.cross_entropy(20.0 * features @ text.T, targets[batch])
                loss = loss / len(groups)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                advance(loss=losses[-1])
        report.update(seconds=round(time.perf_counter() - started, 1),
                      final_loss=round(sum(losses[-20:]) / len(losses[-20:]), 4))
    text_encoder.eval()
    tower.eval()
    report["zero_shot_top1"] = _text_knowledge(text_encoder, tokenizer, tower, projection, data, data_config)
    return report


@torch.no_grad()
def _text_knowledge(text_encoder, tokenizer, tower, projection, data, data_config) -> dict:
    """What the text encoder knows about the benchmark: for each rank, the zero-shot top-1 of the benchmark's
    test images among that rank's names (`"<rank>: <name>"`), through the image tower it was trained with. Well above
    chance where names were in its captions; at chance (1 / taxa) for names it never read."""
    from taxabench.data.images import TaxaImageDataset

    records = data.eval or data.train
    if not records:
        return {}
    dataset = TaxaImageDataset(records, data_config.image_size, data_config.resize, data_config.use_bbox)
    features = torch.cat([tower(torch.stack([dataset[i]["pixel_values"] for i in range(start, min(start + 256, len(dataset)))]))
                          for start in range(0, len(dataset), 256)])
    knowledge = {}
    for depth, rank in enumerate(data.ranks, start=1):
        taxa = data.taxonomy.taxa(rank)
        known = [(i, r.lineage()[:depth]) for i, r in enumerate(records) if len(r.lineage()) >= depth]
        index = {t.lineage: j for j, t in enumerate(taxa)}
        known = [(i, index[lineage]) for i, lineage in known if lineage in index]
        if len(taxa) < 1 or not known:
            continue
        ids = tokenizer([f"{rank}: {t.name}" for t in taxa], padding="max_length",
                        max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        text = F.normalize(projection(text_encoder(ids).pooler_output), dim=-1)
        rows = torch.tensor([i for i, _ in known])
        truth = torch.tensor([j for _, j in known])
        predicted = (features[rows] @ text.T).argmax(dim=1)
        knowledge[rank] = {"accuracy": round((predicted == truth).float().mean().item(), 4),
                           "chance": round(1 / len(taxa), 4), "taxa": len(taxa), "images": len(known)}
    return knowledge


def write_clip_tokenizer(folder: Path, max_length: int) -> None:
    """CLIP's tokenizer files (vocab.json, merges.txt) built from the BPE vocabulary open_clip ships.

    Same construction as CLIP's `SimpleTokenizer`: the 256 byte symbols, the same with an end-of-word marker, the
    first 48,894 merges, then `<|startoftext|>` and `<|endoftext|>`: 49,408 tokens, the ids SD 1.5's tokenizer has.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as handle:
        merges = handle.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    config.update({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    })
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def _cosine_with_warmup(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 20):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )


def _train_vae(vae, images, eval_images, tiny: TinyBackbone, generator, show_progress: bool) -> dict:
    """Reconstruction (MSE) + a tiny KL term, on random crops of half the image size (the VAE is convolutional)."""
    from taxabench.progress import progress_bar

    # start with a near-deterministic posterior (std e^-5) so that early steps learn reconstruction, not noise
    with torch.no_grad():
        vae.quant_conv.weight[tiny.latent_channels :].zero_()
        vae.quant_conv.bias[tiny.latent_channels :].fill_(-10.0)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=tiny.vae_lr, weight_decay=0.0)
    schedule = _cosine_with_warmup(optimizer, tiny.vae_steps)
    size = images.shape[-1]
    crop = size // 2 if size >= 64 else size
    started = time.perf_counter()
    vae.train()
    with progress_bar("tiny backbone: VAE", tiny.vae_steps, show_progress) as advance:
        for _ in range(tiny.vae_steps):
            batch = images[torch.randint(0, len(images), (tiny.batch_size,), generator=generator)]
            top, left = torch.randint(0, size - crop + 1, (2,), generator=generator).tolist()
            batch = batch[:, :, top : top + crop, left : left + crop]
            posterior = vae.encode(batch).latent_dist
            reconstruction = vae.decode(posterior.sample(generator=generator)).sample
            loss = F.mse_loss(reconstruction, batch) + tiny.vae_kl_weight * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            advance(loss=loss.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(64)])
        # SD's scaling_factor makes the latents roughly unit-variance (LDM paper, arXiv 2112.10752 §4.3.2)
        vae.register_to_config(scaling_factor=float(1.0 / means.std()))
        reconstructions = torch.cat(
            [vae.decode(vae.encode(chunk).latent_dist.mean).sample for chunk in eval_images.split(64)]
        )
        mse = F.mse_loss(reconstructions.clamp(-1, 1), eval_images).item()
    return {
        "steps": tiny.vae_steps,
        "seconds": round(time.perf_counter() - started, 1),
        "eval_images": len(eval_images),
        "reconstruction_mse": round(mse, 6),  # on images in [-1, 1]
        "reconstruction_psnr_db": round(10 * math.log10(4.0 / mse), 2),  # peak-to-peak range 2
        "scaling_factor": vae.config.scaling_factor,
    }


def _pretrain_unet(unet, vae, text_encoder, tokenizer, scheduler, images, captions, tiny, generator, show_progress):
    """Text-to-image pre-training: predict the noise added to the latents; each image's caption in one of its forms
    (drawn per step), dropped 10% of the time."""
    from diffusers import DDPMScheduler

    from taxabench.progress import progress_bar

    noise_scheduler = DDPMScheduler.from_config(scheduler.config)
    with torch.no_grad():
        moments = [vae.encode(chunk).latent_dist for chunk in images.split(64)]
        mean = torch.cat([m.mean for m in moments])
        std = torch.cat([m.std for m in moments])
        unique = [*sorted({c for forms in captions for c in forms}), ""]
        ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        table = torch.cat([text_encoder(chunk)[0] for chunk in ids.split(256)])
    position = {c: i for i, c in enumerate(unique)}
    caption_index = torch.tensor([[position[c] for c in forms] for forms in captions])  # images x forms
    empty = len(unique) - 1
    alphas_cumprod = noise_scheduler.alphas_cumprod
    optimizer = torch.optim.AdamW(unet.parameters(), lr=tiny.unet_lr, weight_decay=1e-2)
    schedule = _cosine_with_warmup(optimizer, tiny.unet_pretrain_steps, warmup=50)
    scale = vae.config.scaling_factor
    started, losses = time.perf_counter(), []
    unet.train()
    with progress_bar("tiny backbone: UNet", tiny.unet_pretrain_steps, show_progress) as advance:
        for _ in range(tiny.unet_pretrain_steps):
            index = torch.randint(0, len(images), (tiny.batch_size,), generator=generator)
            latents = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)) * scale
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),), generator=generator)
            dropped = torch.rand(len(index), generator=generator) < 0.1  # so that classifier-free guidance works
            form = torch.randint(0, caption_index.shape[1], (len(index),), generator=generator)
            context = table[torch.where(dropped, empty, caption_index[index, form])]
            prediction = unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, context).sample
            per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
            if tiny.unet_min_snr_gamma is not None:
                # Min-SNR-γ weighting for ε-prediction, min(SNR, γ)/SNR (Hang et al., arXiv 2303.09556 §3.4)
                snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
                per_sample = per_sample * snr.clamp(max=tiny.unet_min_snr_gamma) / snr
            loss = per_sample.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(F.mse_loss(prediction, noise).item())  # reported unweighted
            advance(loss=losses[-1])
    unet.eval().requires_grad_(False)
    tail = losses[-50:]
    return {
        "steps": tiny.unet_pretrain_steps,
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(sum(tail) / len(tail), 5),  # mean of the last 50 steps
        "captions": len(unique) - 1,
    }
