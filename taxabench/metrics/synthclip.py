"""synthclip: the SynthTaxa reference model for metrics, built by taxabench itself.

It plays BioCLIP's role on SynthTaxa (alignment score, zero-shot taxonomic accuracy, features for FD) where no
pretrained weights exist. It is an open_clip model of a tiny custom architecture, `synthclip-tiny`
(`model_configs/synthclip-tiny.json`, registered with `open_clip.add_model_config`): a ModifiedResNet image tower
(64 px) and a 2-layer text transformer over open_clip's real CLIP BPE tokenizer, 128-d joint space.

Training is contrastive (InfoNCE, image -> text): for every rank, each image's embedding is scored against the
BioCLIP-format captions of *all* taxa of that rank ("a photo of Quemolyia Rastaida ... lydrioides." and its
lineage cut at each rank), and the cross-entropy towards its own taxon's caption is summed over ranks (species
weighted 1, coarser ranks 1/2). Using every caption of a rank rather than in-batch captions avoids false negatives
(two images of one species in a batch) and teaches the truncated captions that zero-shot accuracy at coarser ranks
uses. Label-preserving augmentations (flips, small rotations, scale and shifts, brightness) stand in for more data;
hues are never jittered because colour is a taxonomic trait in SynthTaxa.

The images are the dataset's `eval.synthclip.split` (SynthTaxa's `reference` split, which generators never see).
Everything is seeded; the build is cached on disk under `$TAXABENCH_HOME/weights/synthclip/<key>/`, where the key
hashes the data fingerprint, the architecture, the training settings and `BUILD_VERSION`. The folder is an
open_clip `local-dir:` folder, loaded by the same code as BioCLIP. `synthclip_build.json` in it records the
settings and the model's zero-shot top-1 accuracy at every rank on the held-out evaluation split.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress

from taxabench.config import DataConfig, ExperimentConfig, SpeciesSubset, UnseenSpecies, taxabench_home
from taxabench.data import TaxaData, load_dataset
from taxabench.errors import DataError, TaxabenchError, WeightsNotFoundError
from taxabench.files import building_folder
from taxabench.metrics.cache import cache_key
from taxabench.metrics.extractor_open_clip import OPENAI_MEAN, OPENAI_STD
from taxabench.metrics.features import one_cpu_thread
from taxabench.taxonomy import Record, bioclip_caption
from taxabench.weights import ResolvedWeights, WeightsSpec, folder_sha256, resolve_weights

ARCHITECTURE = "synthclip-tiny"
ARCHITECTURE_FILE = Path(__file__).parent / "model_configs" / f"{ARCHITECTURE}.json"
BUILD_VERSION = 1  # bump when training changes in a way the settings do not capture
BUILD_FILE = "synthclip_build.json"
RANK_WEIGHTS = {"species": 1.0}  # every other rank: COARSE_RANK_WEIGHT
COARSE_RANK_WEIGHT = 0.5

SYNTHCLIP_WEIGHTS = WeightsSpec(
    name="synthclip",
    description="synthclip, the SynthTaxa reference model taxabench trains itself (an open_clip local-dir folder)",
    hf_files=("open_clip_config.json",),
)


@dataclass(frozen=True)
class SynthClipBuild:
    folder: Path
    report: dict  # the contents of synthclip_build.json
    seconds: float | None  # training time when built by this call; None when it came from the cache


def register_architecture() -> None:
    """Make `synthclip-tiny` one of open_clip's architectures (`open_clip.list_models()`)."""
    import open_clip

    if ARCHITECTURE not in open_clip.list_models():
        open_clip.add_model_config(ARCHITECTURE_FILE)


def synthclip_data_config(config: ExperimentConfig) -> DataConfig:
    """The experiment's dataset, read with synthclip's training split and without the species filters (synthclip
    learns every species of the world, the unseen ones too, as BioCLIP knows species a generator never saw;
    zero-shot candidates at evaluation come from the experiment's taxonomy)."""
    return replace(config.data, train_split=config.eval.synthclip.split, min_images_per_species=1,
                   max_images_per_species=None, few_shot=None, species_subset=SpeciesSubset(),
                   unseen_species=UnseenSpecies())


def build_folder(config: ExperimentConfig, data: TaxaData | None = None) -> Path:
    data = data or _load_training_data(config)
    key = cache_key({
        "build_version": BUILD_VERSION,
        # its weights depend on the training split only: a budget point's validation split reuses the same build
        "data": data.fingerprint(include_eval=False),
        "image_size": config.data.image_size,
        "resize": config.data.resize,
        "architecture": json.loads(ARCHITECTURE_FILE.read_text()),
        "training": asdict(config.eval.synthclip),
        **({"lineage_above": config.data.lineage_above} if config.data.lineage_above else {}),  # in its captions
    })
    return taxabench_home() / "weights" / "synthclip" / key[:16]


def resolve_synthclip(config: ExperimentConfig, build: bool = True, show_progress: bool = True) -> ResolvedWeights:
    """synthclip weights: explicit (`eval.weights.synthclip`) → `$TAXABENCH_SYNTHCLIP_WEIGHTS` → the cached build
    for this data and these settings → a fresh build (`build=True`) or a `WeightsNotFoundError`.

    With `build=False` a SynthTaxa world that is not on disk is not generated just to look for the build (whose
    key is the data's fingerprint): synthclip is reported as not built."""
    explicit = config.eval.weights.get("synthclip")
    if explicit or os.environ.get(SYNTHCLIP_WEIGHTS.env_var):
        return resolve_weights(SYNTHCLIP_WEIGHTS, explicit.removeprefix("local-dir:") if explicit else None)
    if not build and config.data.dataset == "synthtaxa":
        from taxabench.data.synthtaxa import SynthTaxaAdapter

        if not SynthTaxaAdapter.generated(config.data):
            raise WeightsNotFoundError(
                f"synthclip is not built: its SynthTaxa world is not generated yet "
                f"({SynthTaxaAdapter.world_root(config.data)}); a run generates it and builds synthclip, or run "
                "`taxabench weights build synthclip --config FILE`"
            )
    folder = build_folder(config)
    if not (folder / BUILD_FILE).is_file():
        if not build:
            raise WeightsNotFoundError(
                f"synthclip is not built for this dataset and these settings (expected in {folder}); run "
                "`taxabench weights build synthclip --config FILE`, or let `taxabench eval` build it on first use"
            )
        build_synthclip(config, show_progress=show_progress)
    return ResolvedWeights(folder, "built", folder_sha256(folder))


def build_synthclip(config: ExperimentConfig, show_progress: bool = True) -> SynthClipBuild:
    """Train synthclip for this experiment's dataset (or return the cached build) and report its accuracy."""
    data = _load_training_data(config)
    folder = build_folder(config, data)
    if (folder / BUILD_FILE).is_file():
        return SynthClipBuild(folder, json.loads((folder / BUILD_FILE).read_text()), None)
    import open_clip

    register_architecture()
    settings = config.eval.synthclip
    size = json.loads(ARCHITECTURE_FILE.read_text())["vision_cfg"]["image_size"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        logging.disable(logging.WARNING)  # open_clip warns that the model it builds has no pretrained weights
        try:
            model = open_clip.create_model(ARCHITECTURE, device="cpu")
        finally:
            logging.disable(logging.NOTSET)
    tokenizer = open_clip.get_tokenizer(ARCHITECTURE)
    started = time.perf_counter()
    above = config.data.lineage_above
    captions = {rank: [bioclip_caption(t.ranks, t.lineage, above) for t in data.taxonomy.taxa(rank)] for rank in data.ranks}
    _check_caption_lengths(tokenizer, captions, model.context_length)
    tokens = {rank: tokenizer(texts) for rank, texts in captions.items()}
    images = _load_uint8(data.train, config.data)
    targets = _targets(data, data.train)
    with one_cpu_thread():  # small tensors: faster, and the build's bytes do not depend on the core count
        _train(model, images, targets, tokens, size, settings, show_progress)
    seconds = time.perf_counter() - started
    accuracy = zero_shot_accuracy(model, tokens, _load_uint8(data.eval, config.data), _targets(data, data.eval), size)
    report = {
        "architecture": ARCHITECTURE,
        "build_version": BUILD_VERSION,
        "data_fingerprint": data.fingerprint(),
        "training_split": settings.split,
        "training_images": len(data.train),
        "settings": asdict(settings),
        "eval_split": config.data.eval_split,
        "eval_images": len(data.eval),
        "zero_shot_top1": accuracy,
        "taxa": {rank: len(texts) for rank, texts in captions.items()},
    }
    save_open_clip_folder(model, folder, report)
    return SynthClipBuild(folder, report, seconds)


@torch.no_grad()
def zero_shot_accuracy(model, tokens: dict[str, torch.Tensor], images: torch.Tensor,
                       targets: dict[str, torch.Tensor], size: int) -> dict[str, float]:
    """Top-1 accuracy (percent) at every rank of classifying `images` among all captions of the rank."""
    model.eval()
    embeddings = torch.cat([model.encode_image(_normalise(images[i:i + 256], size), normalize=True)
                            for i in range(0, len(images), 256)])
    accuracy = {}
    for rank, rank_tokens in tokens.items():
        text = model.encode_text(rank_tokens, normalize=True)
        accuracy[rank] = round(100.0 * (embeddings @ text.T).argmax(1).eq(targets[rank]).float().mean().item(), 2)
    return accuracy


# ---------------------------------------------------------------------------------------------------------------


def _load_training_data(config: ExperimentConfig) -> TaxaData:
    data_config = synthclip_data_config(config)
    try:
        data = load_dataset(data_config)
    except DataError as error:
        raise TaxabenchError(
            f"synthclip trains on split {data_config.train_split!r} of the dataset ({error}); SynthTaxa writes a "
            "'reference' split for it, other datasets need eval.synthclip.split set to a split of real images"
        ) from error
    if not data.eval:
        raise TaxabenchError(f"synthclip: the dataset has no {config.data.eval_split!r} images to report its "
                             "zero-shot accuracy on (data.eval_split)")
    return data


def _load_uint8(records: list[Record], data_config: DataConfig) -> torch.Tensor:
    from taxabench.data.images import load_image

    arrays = [np.asarray(load_image(r, data_config.image_size, data_config.resize, data_config.use_bbox))
              for r in records]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _targets(data: TaxaData, records: list[Record]) -> dict[str, torch.Tensor]:
    targets = {}
    for depth, rank in enumerate(data.ranks, start=1):
        index = {t.id: i for i, t in enumerate(data.taxonomy.taxa(rank))}
        targets[rank] = torch.tensor([index["/".join(r.lineage()[:depth])] for r in records])
    return targets


def _check_caption_lengths(tokenizer, captions: dict[str, list[str]], context_length: int) -> None:
    # open_clip's tokenizer truncates silently; two species whose captions differ only after the cut would merge
    lengths = {text: len(tokenizer.encode(text)) + 2 for texts in captions.values() for text in texts}  # + start, end
    longest = max(lengths, key=lengths.get)
    if lengths[longest] > context_length:
        raise TaxabenchError(f"synthclip: caption {longest!r} needs {lengths[longest]} tokens, more than the "
                             f"architecture's context length {context_length} ({ARCHITECTURE_FILE})")


def _normalise(images: torch.Tensor, size: int) -> torch.Tensor:
    from taxabench.metrics.extractor_base import to_unit_range

    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (to_unit_range(images, size, mode="bilinear") - mean) / std


def _augment(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Label-preserving SynthTaxa augmentations: flip, rotation ±7.5°, scale ±5%, shift ±5%, brightness ±10%."""
    n = len(images)

    def uniform(*shape):
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle, scale, shift = uniform(n) * math.radians(7.5), 1 + uniform(n) * 0.05, uniform(n, 2) * 0.05
    flip = (torch.rand(n, generator=generator) < 0.5).float() * 2 - 1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    x = images.float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = (x * (1 + uniform(n, 1, 1, 1) * 0.1)).clamp(0, 1)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _train(model, images, targets, tokens, size, settings, show_progress: bool) -> None:
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.learning_rate,
                                                   total_steps=settings.steps, pct_start=0.1)
    weights = {rank: RANK_WEIGHTS.get(rank, COARSE_RANK_WEIGHT) for rank in tokens}
    all_tokens, sizes = torch.cat(list(tokens.values())), [len(t) for t in tokens.values()]
    model.train()
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"synthclip: training on {len(images)} images", total=settings.steps)
        for _ in range(settings.steps):
            batch = torch.randint(0, len(images), (settings.batch_size,), generator=generator)
            image_embeddings = model.encode_image(_augment(images[batch], size, generator), normalize=True)
            scale = model.logit_scale.exp().clamp(max=100)
            text_embeddings = model.encode_text(all_tokens, normalize=True).split(sizes)  # one pass for all ranks
            loss = sum(
                weights[rank] * F.cross_entropy(scale * image_embeddings @ text.T, targets[rank][batch])
                for rank, text in zip(tokens, text_embeddings)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.advance(task)
    model.eval()


def save_open_clip_folder(model, folder: Path, report: dict | None = None) -> None:
    """Write `model` (a synthclip-tiny open_clip model) as an open_clip `local-dir:` folder, atomically."""
    from safetensors.torch import save_file

    config = {
        "model_cfg": json.loads(ARCHITECTURE_FILE.read_text()),
        "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bilinear",
                           "resize_mode": "squash"},
    }
    # another process may finish the same build first: its result is identical, and kept
    with building_folder(folder, "metric-model", finished_by="open_clip_config.json") as staging:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, staging / "open_clip_model.safetensors")
        if report is not None:
            (staging / BUILD_FILE).write_text(json.dumps(report, indent=2))
        (staging / "open_clip_config.json").write_text(json.dumps(config, indent=2))
