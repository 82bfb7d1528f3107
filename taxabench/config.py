"""The experiment config: one YAML file, validated against these dataclasses.

The dataclasses *are* the schema: every field has its type and default here and nowhere else, the CLI reads its
defaults from them, and `load_config` rejects unknown keys and wrong types with a message naming the file and the
dotted key (`data.image_size`). Relative paths in a config are resolved against the working directory; image paths
inside annotation files are resolved against `data.root`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from taxabench.errors import ConfigError
from taxabench.layout import GUIDANCE_SEPARATOR

# ---------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------

# throughput levers (taxabench/levers.py): the scaled-dot-product-attention kernel and torch.compile's mode
Attention = Literal["auto", "flash", "efficient", "cudnn", "math"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass
class SpeciesSubset:
    """Which species of the dataset take part in the experiment (after the min/max image filters)."""

    mode: Literal["all", "first", "random", "list"] = "all"
    n: int | None = None  # number of species for `first` / `random`
    seed: int = 0  # for `random`
    names: list[str] = field(default_factory=list)  # for `list`: species ids, slugs or unique names

    def validate(self, where: str) -> None:
        if self.mode in ("first", "random") and (self.n is None or self.n < 1):
            raise ConfigError(f"{where}.n: mode '{self.mode}' needs a positive n, got {self.n}")
        if self.mode == "list" and not self.names:
            raise ConfigError(f"{where}.names: mode 'list' needs at least one species name")


@dataclass
class UnseenSpecies:
    """Species withheld from training to test generation of a species never seen (`data.unseen_species`).

    Each withheld species keeps its test-split images (the real set of the `unseen` evaluation) and loses its
    training images; its genus must keep at least one training species, so that its lineage down to the genus is
    known. `count` withholds that many species chosen at random (`seed`) among those that qualify; `names` withholds
    these (species ids, slugs or unique names). Neither: off.
    """

    count: int = 0
    seed: int = 0
    names: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self.count or self.names)

    def validate(self, where: str) -> None:
        if self.count < 0:
            raise ConfigError(f"{where}.count: may not be negative, got {self.count}")
        if self.count and self.names:
            raise ConfigError(f"{where}: give count (a seeded random choice) or names (an explicit list), not both")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"{where}.names: each species once, got {self.names}")


@dataclass
class CsvColumns:
    """Column names of a generic CSV/TSV dataset (the `csv` adapter); SynthTaxa writes exactly these defaults."""

    image: str = "image"  # image path, relative to data.root
    split: str | None = "split"  # None: every row is in data.train_split
    ranks: dict[str, str] = field(default_factory=dict)  # rank -> column; default: the rank name itself
    bbox: list[str] = field(default_factory=list)  # [x, y, width, height] columns in pixels, optional
    delimiter: str | None = None  # None: tab for .tsv/.txt, comma otherwise


@dataclass
class SynthTaxaOptions:
    """Generator settings when `data.dataset` is `synthtaxa` (see taxabench/data/synthtaxa.py).

    Left unset, they accept whatever world `data.root` already holds, and generate `tiny` with seed 0 otherwise.
    """

    preset: str | None = None
    seed: int | None = None


@dataclass
class FishNetOptions:
    """Options of the `fishnet` adapter (taxabench/data/fishnet.py)."""

    # folder of FishNet's box files (bbox.zip): `<bbox_dir>/<Folder>/<image stem>.txt`, one `label x1 y1 x2 y2`
    # line per fish; the largest box is kept. None: no boxes
    bbox_dir: str | None = None


# BIOSCAN-1M's partition columns; each holds train / validation / test / no_split per row
BIOSCAN1M_SPLIT_COLUMNS = (
    "large_diptera_family",
    "medium_diptera_family",
    "small_diptera_family",
    "large_insect_order",
    "medium_insect_order",
    "small_insect_order",
)


@dataclass
class Bioscan1mOptions:
    """Options of the `bioscan1m` adapter (taxabench/data/bioscan1m.py)."""

    # the partition column that gives each row its split (BIOSCAN1M_SPLIT_COLUMNS); None: every row is in
    # data.train_split
    split_column: str | None = "large_insect_order"

    def validate(self, where: str) -> None:
        if self.split_column is not None and self.split_column not in BIOSCAN1M_SPLIT_COLUMNS:
            raise ConfigError(
                f"{where}.split_column: expected one of {', '.join(BIOSCAN1M_SPLIT_COLUMNS)} or null, "
                f"got {self.split_column!r}"
            )


@dataclass
class RankStrings:
    """How TaxaDiffusion's per-rank strings (`"<rank>: <name>"`) read on this dataset.

    The authors' loaders write FishNet's and BIOSCAN's species rank as `"specific_epithet: <binomial>"`
    (TaxaDiffusion/taxa_diffusion/datasets/fishnet.py:150-156, bioscan.py:137-143) and iNat's as
    `"specific_epithet: <epithet>"` (inaturalist.py:189-197); the paper configs set that. Default: the rank's own
    name and the epithet (`"species: saxatilis"`).
    """

    names: dict[str, str] = field(default_factory=dict)  # rank -> the word before the colon
    species: Literal["epithet", "binomial"] = "epithet"

    def validate(self, where: str) -> None:
        from taxabench.taxonomy import RANKS

        for rank, word in self.names.items():
            if rank not in RANKS:
                raise ConfigError(f"{where}.names: unknown rank {rank!r}; ranks are {', '.join(RANKS)}")
            if not word.strip() or ":" in word:
                raise ConfigError(f"{where}.names.{rank}: a non-empty word without ':', got {word!r}")


@dataclass
class DataConfig:
    dataset: str = "synthtaxa"  # registry name: `taxabench list` shows them
    root: str | None = None  # dataset folder; synthtaxa: default $TAXABENCH_HOME/synthtaxa/<preset>-seed<seed>
    annotations: str | None = None  # annotation file (CSV/TSV/JSON); default: the adapter's usual file in root
    ranks: list[str] | None = None  # ranks to use, coarse to fine; default: all the dataset has
    lineage_above: list[str] = field(default_factory=list)  # names above the top rank, for BioCLIP captions
    train_split: str = "train"
    eval_split: str | None = "test"  # real images that metrics compare against; None: none
    image_size: int = 64
    resize: Literal["center-crop", "pad"] = "center-crop"
    use_bbox: bool = False  # crop to the annotated box first, where the dataset has one
    unknown_species: Literal["drop", "keep"] = "drop"  # a record whose species is unknown
    on_missing_image: Literal["error", "skip"] = "error"
    on_bad_image: Literal["error", "skip"] = "error"  # an image file that does not decode
    on_duplicate: Literal["drop", "error"] = "drop"  # a row repeating an earlier one (image, box, labels, split)
    # a species name filed under several lineages: separate species (noted), re-filed under the lineage most of
    # its rows have, or refused (taxabench/data/checks.py)
    on_lineage_conflict: Literal["keep", "majority", "error"] = "keep"
    rare_threshold: int = 5  # species with at most this many training images are "rare"
    min_images_per_species: int = 1  # species with fewer training images are left out
    max_images_per_species: int | None = None  # species with more training images are left out
    few_shot: int | None = None  # cap on training images per species (the first N by path)
    species_subset: SpeciesSubset = field(default_factory=SpeciesSubset)
    unseen_species: UnseenSpecies = field(default_factory=UnseenSpecies)  # withheld from training, evaluated apart
    columns: CsvColumns = field(default_factory=CsvColumns)
    rank_strings: RankStrings = field(default_factory=RankStrings)
    synthtaxa: SynthTaxaOptions = field(default_factory=SynthTaxaOptions)
    fishnet: FishNetOptions = field(default_factory=FishNetOptions)
    bioscan1m: Bioscan1mOptions = field(default_factory=Bioscan1mOptions)

    def validate(self, where: str) -> None:
        _positive(self.image_size, f"{where}.image_size")
        if self.image_size % 8:
            raise ConfigError(f"{where}.image_size: must be divisible by 8 (VAE downsampling), got {self.image_size}")
        _positive(self.min_images_per_species, f"{where}.min_images_per_species")
        if self.max_images_per_species is not None and self.max_images_per_species < self.min_images_per_species:
            raise ConfigError(
                f"{where}.max_images_per_species ({self.max_images_per_species}) is below "
                f"min_images_per_species ({self.min_images_per_species})"
            )
        if self.few_shot is not None:
            _positive(self.few_shot, f"{where}.few_shot")
        self.species_subset.validate(f"{where}.species_subset")
        if self.unseen_species.enabled and self.eval_split is None:
            raise ConfigError(f"{where}.unseen_species: the withheld species are evaluated on data.eval_split, "
                              "which is null")
        if self.ranks is not None:
            from taxabench.taxonomy import check_ranks

            check_ranks(self.ranks, f"{where}.ranks")


@dataclass
class TinyBackbone:
    """The tiny SD-format backbone taxabench builds itself (taxabench/backbone.py)."""

    # separate-world: pre-trained on a SynthTaxa world of its own that shares the benchmark's taxa down to
    # caption_rank and has new genera and species below (a domain gap, as LAION -> FishNet); benchmark: on the
    # dataset's own training images (the only choice for datasets that are not SynthTaxa)
    pretraining: Literal["separate-world", "benchmark"] = "separate-world"
    pretraining_images_per_species: int = 40  # images of each pre-training-world species (capped by max_images)
    vae_steps: int = 800
    # SynthTaxa tiny, samples of the pre-trained UNet classified by synthclip at family level: 56% after 1000 steps,
    # 89% after 2500, 98% after 4000. Fewer steps leave a UNet that cannot draw the world's body plans yet
    unet_pretrain_steps: int = 2500
    # the captions of pre-training (text encoder and UNet) name the ranks down to this one, never genus or species
    caption_rank: str = "family"
    # contrastive steps that teach the CLIP text encoder the coarse names before it is frozen (0: random init)
    text_encoder_steps: int = 200
    text_encoder_lr: float = 2e-3
    seed: int = 0
    batch_size: int = 16
    vae_lr: float = 2e-3
    unet_lr: float = 2e-3
    unet_min_snr_gamma: float | None = 5.0  # Min-SNR loss weighting (arXiv 2303.09556), about 2x faster here
    vae_kl_weight: float = 1e-6
    max_images: int = 2048  # training images used to build it (a seeded subset of larger datasets)
    # architecture (SD 1.5: VAE 128-256-512-512, 4 latent channels, UNet 320-640-1280-1280, CLIP width 768, 77 tokens)
    vae_channels: list[int] = field(default_factory=lambda: [16, 32, 32])  # 3 levels: 4x downsampling
    latent_channels: int = 8
    unet_channels: list[int] = field(default_factory=lambda: [32, 64])
    # which UNet levels have cross-attention: at 64 px the 16x16 latent level is where sibling species still
    # differ (about half of their pixel difference survives at 16x16, a sixth at 8x8; build.json measures it)
    unet_attention: list[bool] = field(default_factory=lambda: [True, True])
    # which attention levels also self-attend; 16x16 self-attention would cost 2.4x per step on CPU, cross-attention
    # alone there 1.3x (measured against attention at 8x8 only)
    unet_self_attention: list[bool] = field(default_factory=lambda: [False, True])
    unet_heads: list[int] = field(default_factory=lambda: [2, 8])  # attention heads per level
    text_width: int = 64  # a multiple of 8: TaxaDiffusion's per-rank modules have 8 heads
    text_layers: int = 2
    max_length: int = 32  # tokenizer / text-encoder sequence length

    def validate(self, where: str) -> None:
        _positive(self.batch_size, f"{where}.batch_size")
        _positive(self.max_images, f"{where}.max_images")
        if self.vae_steps < 1 or self.unet_pretrain_steps < 1:  # an untrained part would divide by zero later
            raise ConfigError(f"{where}: vae_steps and unet_pretrain_steps must be at least 1, got "
                              f"{self.vae_steps} and {self.unet_pretrain_steps}")
        if len(self.vae_channels) < 1 or len(self.unet_channels) < 1:
            raise ConfigError(f"{where}: vae_channels and unet_channels need at least one level each")
        _positive(self.pretraining_images_per_species, f"{where}.pretraining_images_per_species")
        if self.text_encoder_steps < 0:
            raise ConfigError(f"{where}.text_encoder_steps: may not be negative")
        for key in ("unet_self_attention", "unet_heads"):
            if len(getattr(self, key)) != len(self.unet_channels):
                raise ConfigError(f"{where}.{key}: one entry per UNet level ({len(self.unet_channels)})")
        if any(c % h for c, h in zip(self.unet_channels, self.unet_heads)):
            raise ConfigError(f"{where}.unet_heads: each must divide its level's channels {self.unet_channels}")
        if len(self.unet_attention) != len(self.unet_channels) or not any(self.unet_attention):
            raise ConfigError(
                f"{where}.unet_attention: one flag per UNet level ({len(self.unet_channels)}), at least one true "
                f"(the condition enters through cross-attention), got {self.unet_attention}"
            )
        if any(c % 8 for c in [*self.vae_channels, *self.unet_channels]):
            raise ConfigError(f"{where}: vae_channels and unet_channels must be multiples of 8 (group norm)")
        if self.text_width % 8 or self.text_width < 8:
            raise ConfigError(f"{where}.text_width: must be a positive multiple of 8, got {self.text_width}")
        if self.unet_min_snr_gamma is not None and self.unet_min_snr_gamma <= 0:
            raise ConfigError(f"{where}.unet_min_snr_gamma: must be positive (or null), got {self.unet_min_snr_gamma}")
        if self.max_length < 8:
            raise ConfigError(f"{where}.max_length: must be at least 8, got {self.max_length}")


@dataclass
class BackboneConfig:
    # `tiny`, a local SD-format folder, or a hub id (`runwayml/stable-diffusion-v1-5`) resolved offline-first
    source: str = "tiny"
    tiny: TinyBackbone = field(default_factory=TinyBackbone)


# accelerate's tracker names (accelerate.utils.LoggerType), for `train.report_to`
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class TrainConfig:
    steps_per_stage: int = 200  # optimizer steps in each stage a method declares (single-stage methods: x ranks)
    epochs_per_stage: float | None = None  # instead of steps: passes over the training images per stage
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    lr_warmup_steps: int = 0
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"  # after the warm-up
    max_grad_norm: float = 1.0
    condition_dropout: float = 0.1  # probability that a rank's name is replaced by "<rank>: None"
    # single-rank: per sample, at most one rank is dropped, each with probability condition_dropout (the authors'
    # FishNet/BIOSCAN loaders: 1/21 per rank, fishnet.py:136-156); cascade: each rank drops with that probability
    # and takes every finer rank with it. Text-only and flat-label methods drop their one condition either way
    condition_dropout_mode: Literal["single-rank", "cascade"] = "cascade"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    ema_decay: float | None = None  # None: no EMA
    cache_latents: bool = True  # encode each image with the frozen VAE once
    cache_text: bool = True  # encode each unique string with the frozen text encoder once
    # torch.compile the denoiser (inductor). Off by default: on a CPU the tiny backbone's steps got ~13% faster after
    # ~3 minutes of compiling per stage (reports/perf/README.md); benchmarks/gpu_check.sh measures it on a GPU
    compile: bool = False
    compile_mode: CompileMode = "default"  # torch.compile's mode when compile is on
    channels_last: bool = False  # NHWC convolution weights (taxabench/levers.py)
    attention: Attention = "auto"  # the SDPA kernel; auto: PyTorch's choice per call
    checkpoint_every: int = 100  # accelerate state every N steps (resume point)
    checkpoints_total_limit: int = 2
    num_workers: int = 0
    # experiment trackers (accelerate's: tensorboard, wandb, mlflow, ...) that get each step's loss, learning rate,
    # images/s and finest_real; tensorboard writes <run>/checkpoints/<method>/logs/<stage>/. loss.csv stays the
    # record. Logging only: left out of every fingerprint (repr=False keeps it out of the step fingerprints)
    report_to: list[str] = field(default_factory=list, repr=False)

    def validate(self, where: str) -> None:
        unknown = [name for name in self.report_to if name not in TRACKERS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], TRACKERS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}.report_to: unknown tracker {unknown[0]!r}{hint}; accelerate's trackers: "
                              f"{', '.join(TRACKERS)}")
        _positive(self.steps_per_stage, f"{where}.steps_per_stage")
        _positive(self.batch_size, f"{where}.batch_size")
        _positive(self.gradient_accumulation_steps, f"{where}.gradient_accumulation_steps")
        _positive(self.checkpoint_every, f"{where}.checkpoint_every")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ConfigError(f"{where}.condition_dropout: must be in [0, 1), got {self.condition_dropout}")
        if self.epochs_per_stage is not None and self.epochs_per_stage <= 0:
            raise ConfigError(f"{where}.epochs_per_stage: a stage budget must be positive, got {self.epochs_per_stage}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"{where}.ema_decay: must be in (0, 1), got {self.ema_decay}")
        if self.lr_warmup_steps < 0 or self.max_grad_norm < 0 or self.num_workers < 0:
            raise ConfigError(f"{where}: lr_warmup_steps, max_grad_norm and num_workers may not be negative")
        if self.checkpoints_total_limit < 1:
            raise ConfigError(f"{where}.checkpoints_total_limit: keep at least 1, got {self.checkpoints_total_limit}")
        _check_compile_mode(self.compile, self.compile_mode, where)


@dataclass
class SampleConfig:
    images_per_taxon: int = 8
    rank: str = "species"  # generate for every taxon of this rank
    taxa: list[str] = field(default_factory=list)  # restrict to these taxa (ids, slugs or unique names)
    # a registered guidance kind (taxabench/guidance.py: taxonomy, cfg, vanilla-cfg, none); default: the method's own
    guidance: str = "default"
    # `taxabench run` also samples each method with these kinds (where it has them besides its default), into
    # samples/<method>+<kind>/, for the report's guidance ablation (e.g. [vanilla-cfg]: the paper's ablation);
    # `<method>+<kind>` (e.g. taxadiffusion+cfg) asks it of that method only
    guidance_ablation: list[str] = field(default_factory=list)
    guidance_scale: float = 9.0
    steps: int = 25
    scheduler: Literal["ddim", "pndm", "dpm++", "euler"] = "ddim"
    batch_size: int = 16  # images per batch (taxa mixed); with guidance the UNet sees twice as many rows
    # auto: float64 on CPU (the same PNG bytes whatever the batch size or process count), float16 on CUDA
    precision: Literal["auto", "float64", "float32", "float16", "bfloat16"] = "auto"
    stage: int | None = None  # sample this training stage's checkpoint; None: the last one
    # `taxabench run` draws the progressive methods' across-stages figure (2 images of 3 species per stage, at
    # data.image_size) in a step of its own; false (or `run --no-stage-figure`) skips it
    stage_figure: bool = True
    # guidance sweep on the final checkpoint, no retraining: kind -> scales, e.g. {taxonomy: [1, 2, 4, 8]}; each is
    # sampled and evaluated on the validation split (budget.split, budget.images_per_taxon), and the test sampling
    # of each method and kind uses the scale that is best there on `guidance_select` (overall scope)
    guidance_sweep: dict[str, list[float]] = field(default_factory=dict)
    guidance_select: str = "fd"  # a metric key of all.csv: fd, kid, clip_score, top1, ...
    # throughput levers (taxabench/levers.py), off by default: torch.compile the UNet (reduce-overhead: CUDA graphs),
    # NHWC convolution weights in the UNet and VAE, the SDPA kernel
    compile: bool = False
    compile_mode: CompileMode = "default"
    channels_last: bool = False
    attention: Attention = "auto"

    def validate(self, where: str) -> None:
        _positive(self.images_per_taxon, f"{where}.images_per_taxon")
        _positive(self.steps, f"{where}.steps")
        _positive(self.batch_size, f"{where}.batch_size")
        if self.guidance_scale < 0:
            raise ConfigError(f"{where}.guidance_scale: may not be negative, got {self.guidance_scale}")
        from taxabench.guidance import GUIDANCE  # a light module: names and descriptions only

        named = [("guidance", self.guidance)] if self.guidance != "default" else []
        named += [(f"guidance_ablation[{i}]", entry.rpartition(GUIDANCE_SEPARATOR)[2])
                  for i, entry in enumerate(self.guidance_ablation)]
        for key, kind in named:
            if kind not in GUIDANCE:
                raise ConfigError(f"{where}.{key}: unknown guidance kind {kind!r}; kinds: {', '.join(GUIDANCE.names())}")
        if self.stage is not None and self.stage < 0:
            raise ConfigError(f"{where}.stage: a stage index is at least 0, got {self.stage}")
        for kind, scales in self.guidance_sweep.items():
            if not scales or any(scale < 0 for scale in scales):
                raise ConfigError(f"{where}.guidance_sweep.{kind}: at least one scale, none negative, got {scales}")
        _check_compile_mode(self.compile, self.compile_mode, where)


@dataclass
class SynthClipConfig:
    """How taxabench trains synthclip, the SynthTaxa reference model (taxabench/metrics/synthclip.py)."""

    split: str = "reference"  # real images it trains on; SynthTaxa's reference split is never seen by generators
    steps: int = 400  # optimizer steps; about a minute on two CPU cores
    batch_size: int = 64
    learning_rate: float = 1.5e-3  # peak of a one-cycle schedule
    weight_decay: float = 0.05
    seed: int = 0

    def validate(self, where: str) -> None:
        _positive(self.steps, f"{where}.steps")
        _positive(self.batch_size, f"{where}.batch_size")


@dataclass
class EvalConfig:
    metrics: list[str] = field(default_factory=lambda: ["fd", "kid", "lpips", "clip_score", "taxa_accuracy",
                                                        "mistake_severity", "path_consistency", "vendi", "prdc",
                                                        "copying"])
    fd_extractor: str = "synthclip"  # features for fd and kid; `inception` for the paper's FID on real data
    clip_model: str = "synthclip"  # clip_score and taxa_accuracy; `bioclip` on real data
    weights: dict[str, str] = field(default_factory=dict)  # extractor -> explicit weights file or folder
    revisions: dict[str, str] = field(default_factory=dict)  # hub-loaded extractor -> pinned hub commit or tag
    lpips_size: int | None = None  # common size images are resized to for LPIPS; None: data.image_size
    # sha256 of a file you verified to hold the same weights as the published one under other bytes (e.g. re-saved):
    # accepted for that extractor, and every number it produces says "unverified: sha256 ..."
    unverified_weights: dict[str, str] = field(default_factory=dict)
    # the clip_score caption: taxonomic = the bare string "Animalia Chordata ... Abudefduf saxatilis" (the paper
    # group's BioCLIP-score script); sentence = "a photo of Animalia ... saxatilis." (BioCLIP's training form);
    # auto: taxonomic for BioCLIP models, sentence for synthclip (trained on sentences)
    clip_caption: Literal["auto", "taxonomic", "sentence"] = "auto"
    lpips_max_real: int = 32  # real images of its taxon each generated image is compared with (seeded subset)
    # all: each generated image against all those real images (mean); index: the i-th generated against the i-th
    # real image of its taxon, as the paper group's LPIPS script pairs them
    lpips_pairing: Literal["all", "index"] = "all"
    # pretrained: require the ImageNet VGG16; untrained: a seeded random backbone; auto: pretrained when it resolves
    # offline, else untrained. An untrained backbone is named "LPIPS (VGG, untrained backbone)" everywhere.
    lpips_backbone: Literal["auto", "pretrained", "untrained"] = "auto"
    diversity_extractor: str | None = None  # vendi, prdc, copying features; None: clip_model (the metric model)
    cmmd_extractor: str = "clip-vit-l14-336"  # cmmd's embedding (named CMMD only with CLIP ViT-L/14@336)
    prdc_k: int = 5  # neighbours of the k-NN balls of precision / recall / density / coverage (Naeem et al.: 5)
    copy_quantile: float = 0.95  # near-copy: closer to a training image than this quantile of held-out real images
    kid_subsets: int = 100  # KID: mean over this many random subsets (torchmetrics / clean-fid protocol)...
    kid_subset_size: int = 1000  # ...of this many images per side (capped at the smaller set)
    bootstrap: int = 1000  # resamples over taxa for confidence intervals
    bootstrap_set_metrics: int = 200  # resamples for pooled FD / KID CIs (each recomputes covariances / kernels)
    confidence: float = 0.95
    # the taxa bootstrap's units (`taxabench/metrics/aggregate.py`): auto = each scope's taxa clustered by their
    # parent rank (genera, then species within them); a rank name clusters by that rank; the evaluated rank
    # (species) resamples taxa as independent. Left out of the step fingerprints' repr: `taxabench.run` adds it
    # where it changes the numbers, so run folders evaluated before it existed with `species` keep their steps
    resample_by: str = field(default="auto", repr=False)
    seed: int = 0  # bootstrap resamples, KID subsets, LPIPS real subsets, the untrained LPIPS backbone
    batch_size: int = 64
    device: str = "auto"  # auto: the accelerate process's device (CUDA when present)
    synthclip: SynthClipConfig = field(default_factory=SynthClipConfig)

    def validate(self, where: str) -> None:
        # metric and extractor names are checked against their registries by the steps that use them
        # (`taxabench.metrics.evaluation.check_eval_names`): this module does not import the metrics package
        if not 0.0 < self.copy_quantile < 1.0:
            raise ConfigError(f"{where}.copy_quantile: must be in (0, 1), got {self.copy_quantile}")
        for name, digest in self.unverified_weights.items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"{where}.unverified_weights.{name}: a full SHA-256 (64 hex digits), got {digest!r}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"{where}.confidence: must be in (0, 1), got {self.confidence}")
        if not self.resample_by.strip():  # a rank name is checked against the dataset's ranks when it loads
            raise ConfigError(f"{where}.resample_by: auto or a rank name (genus, species, ...), got ''")
        for key in ("bootstrap", "bootstrap_set_metrics", "kid_subsets", "kid_subset_size", "batch_size",
                    "lpips_max_real", "prdc_k"):
            _positive(getattr(self, key), f"{where}.{key}")


@dataclass
class ProbeConfig:
    """The sampler-free taxonomic probe (taxabench/probe.py): conditional denoising loss under every species."""

    images_per_taxon: int = 0  # held-out real images per species (data.eval_split); 0: no probe
    timesteps: list[int] = field(default_factory=lambda: [100, 300, 500, 700, 900])
    noises: int = 1  # fixed noises per image and timestep
    batch_size: int = 64  # conditions per UNet call

    def validate(self, where: str) -> None:
        if self.images_per_taxon < 0:
            raise ConfigError(f"{where}.images_per_taxon: may not be negative, got {self.images_per_taxon}")
        if not self.timesteps or any(t < 0 for t in self.timesteps):
            raise ConfigError(f"{where}.timesteps: at least one timestep, none negative, got {self.timesteps}")
        _positive(self.noises, f"{where}.noises")
        _positive(self.batch_size, f"{where}.batch_size")


@dataclass
class BudgetConfig:
    """Evaluation along training (taxabench/budget.py): at each point the method's checkpoint is kept, sampled and
    evaluated on the validation split, so that the final test numbers are not chosen on the test set."""

    # cumulative over a method's whole schedule (all its stages), in `unit`; empty: evaluate the final model only
    points: list[float] = field(default_factory=list)
    unit: Literal["steps", "images", "epochs"] = "steps"
    split: str = "validation"  # real images budget points (and guidance sweeps) are evaluated against
    images_per_taxon: int = 2  # generated images per taxon at each point (the test sampling has its own count)

    def validate(self, where: str) -> None:
        _positive(self.images_per_taxon, f"{where}.images_per_taxon")
        for index, value in enumerate(self.points):
            if value <= 0:
                raise ConfigError(f"{where}.points[{index}]: a budget point must be positive, got {value}")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    # training seeds: each method is trained, sampled and evaluated once per seed (empty: `seed` alone); the report
    # shows the mean and spread across seeds
    seeds: list[int] = field(default_factory=list)
    runs_dir: str = "runs"  # the run folder is <runs_dir>/<name>
    # `taxabench run` on a CPU: independent trainings (methods x seeds), then samplings, in this many processes at
    # once, the CPU threads shared out; None: as many as this process has cores. One process on a GPU or under
    # `accelerate launch` / `torchrun`
    jobs: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    methods: list[str] = field(default_factory=lambda: ["taxadiffusion"])
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> its own options
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def validate(self, where: str) -> None:
        separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
        if (not self.name or self.name.strip() != self.name or any(c in self.name for c in separators)
                or self.name in (".", "..") or "\0" in self.name):
            raise ConfigError(f"{where}.name: must be a plain folder name (no path separators, not '.' or '..'), "
                              f"got {self.name!r}")
        if self.jobs is not None and self.jobs < 1:
            raise ConfigError(f"{where}.jobs: at least 1 (or null for every core), got {self.jobs}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{where}.seeds: each training seed once, got {self.seeds}")
        for i, entry in enumerate(self.sample.guidance_ablation):
            method = entry.rpartition(GUIDANCE_SEPARATOR)[0]
            if method and method not in self.methods:
                raise ConfigError(f"{where}.sample.guidance_ablation[{i}]: {entry!r} names method {method!r}, which "
                                  f"is not in methods ({', '.join(self.methods)})")

    @property
    def replica_seeds(self) -> list[int | None]:
        """The seed axis of the run layout: None for a single-seed run (layout-1 paths), else each seed."""
        return list(self.seeds) if self.seeds else [None]

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, *sections: str) -> str:
        """SHA-256 of the config (or of the named top-level sections): what decides whether outputs can be reused."""
        data = self.to_dict()
        if sections:
            data = {name: data[name] for name in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML. `overrides` are `dotted.key=value` strings (value parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    for override in overrides or []:
        apply_override(data, override)
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    return from_dict(ExperimentConfig, data, where=source)


def apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected dotted.key=value")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: '{part}' is not a section")
    node[leaf] = yaml.safe_load(value)


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} ({data!r})")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(names)})"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
    obj = cls(**{key: _coerce(value, hints[key], f"{where}.{key}") for key, value in data.items()})
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: may not be null")
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} ({value!r})")
        return [_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} ({value!r})")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if value is None:
            raise ConfigError(f"{where}: may not be null")
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} ({value!r})")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")


def _check_compile_mode(compile_: bool, mode: str, where: str) -> None:
    if mode != "default" and not compile_:
        raise ConfigError(f"{where}.compile_mode: '{mode}' has no effect while {where}.compile is false; set "
                          f"{where}.compile: true, or drop compile_mode")


def _positive(value: int, where: str) -> None:
    if value < 1:
        raise ConfigError(f"{where}: must be at least 1, got {value}")


def taxabench_home() -> Path:
    """Where taxabench caches what it builds (SynthTaxa, tiny weights, features): $TAXABENCH_HOME or ~/.cache."""
    return Path(os.environ.get("TAXABENCH_HOME", Path.home() / ".cache" / "taxabench"))


def shipped_configs() -> dict[str, str]:
    """The configs shipped in the package (`taxabench/configs/*.yaml`): name -> YAML text, as installed by pip."""
    from importlib import resources

    folder = resources.files("taxabench") / "configs"
    return {entry.name.removesuffix(".yaml"): entry.read_text(encoding="utf-8")
            for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".yaml")}


def shipped_config(name: str) -> str:
    """The YAML text of shipped config `name` (`taxabench config show NAME`); an unknown name lists the others."""
    configs = shipped_configs()
    if name.removesuffix(".yaml") not in configs:
        close = difflib.get_close_matches(name, list(configs), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"no shipped config {name!r}{hint}; shipped: {', '.join(configs)}")
    return configs[name.removesuffix(".yaml")]
