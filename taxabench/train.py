"""One training loop for every method, on HF accelerate (CPU, one GPU, `accelerate launch` / `torchrun` multi-GPU).

It follows the order of diffusers' `train_text_to_image_lora.py`: accelerator → backbone → freeze everything →
the method marks this stage's trainable parameters → frozen weights to the mixed-precision dtype, trainable ones in
float32 → optimizer over the trainable parameters → `prepare` and state hooks → resume → the loop under
`accumulate`, counting optimizer steps on `sync_gradients` → checkpoint rotation. The stages are a loop over what
the method declares; the loop never reads a method's name.

Determinism: which training sample a micro-batch holds, and every random draw for it (posterior sample, noise,
timestep, condition dropout), are functions of (seed, stage, position in the sample stream) — not of call order,
batch size or process count. So a killed run that restarts from its last accelerate state ends with the same
weights as an uninterrupted one, and `P` processes of batch `b` train on the same global batches as one process of
batch `P·b` (disjoint shards of it).

Layout, under `<run>/checkpoints/<method>/`:
    manifest.json        method, options, stages, config fingerprint, backbone identity; `completed` stages
    taxonomy.json        the ranks and training taxa the method was trained on (for sampling outside the run)
    config.yaml          the experiment config of the run
    loss.csv             stage, step, loss, lr, images/s, seconds per step
    stage-<k>/           the trained parts after stage k (method.json + safetensors / diffusers LoRA / unet/)
    points/step-<T>/     the trained parts at each budget point (`budget.points`, optimizer steps over all stages)
    budget.json          global batch, trainable parameters and counted FLOPs per step of each stage (budget.py)
    state/stage-<k>/checkpoint-<step>/   accelerate state while stage k trains (removed when it completes)
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from taxabench import __version__, budget
from taxabench.checkpoint import (  # noqa: F401 - TrainedMethod, load_checkpoint, read_taxonomy: public API here too
    MANIFEST,
    STAGE_FILE,
    TAXONOMY_FILE,
    TextCache,
    TrainedMethod,
    cpu_only,
    load_checkpoint,
    load_stage,
    read_taxonomy,
    retrain_fix,
)
from taxabench.config import ExperimentConfig
from taxabench.errors import DamagedFileError, TaxabenchError
from taxabench.files import building_folder, fault_point, read_json, remove, write_json, write_text
from taxabench.layout import RunLayout
from taxabench.levers import attention_backend, check_levers, to_channels_last
from taxabench.methods import Method, Stage, TrainingDraws, build_method, get_method
from taxabench.methods.base import move_inputs
from taxabench.progress import progress_bar
from taxabench.seeds import derive_seed, generator

LOSS_LOG = budget.LOSS_LOG
POINTS_DIR = "points"
TRAINABLE_STATE = "trainable.safetensors"
STEP_FILE = "training_state.json"
# records the latent cache encodes together: batched enough for a GPU, small enough that a stage shorter than an
# epoch encodes few images it never uses
LATENT_BLOCK = 8
# train fields that change how a run is executed, not what it learns: they may change between restarts. The caches
# are not among them: cached and uncached encodings differ by float rounding (~1e-7), so switching them on a
# restart would make the resumed weights differ from an uninterrupted run's.
OPERATIONAL_KEYS = ("checkpoint_every", "checkpoints_total_limit", "num_workers", "compile", "compile_mode",
                    "channels_last", "attention", "report_to")


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


def method_dir(run_dir: str | os.PathLike[str], method_name: str, seed: int | None = None) -> Path:
    """`<run>/checkpoints/[seed-<s>/]<method>`: where a method's stages, manifest and loss log live."""
    return RunLayout(Path(run_dir)).checkpoints(method_name, seed)


def train_method(
    config: ExperimentConfig,
    method_name: str,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    data=None,
    show_progress: bool = True,
    seed: int | None = None,
) -> Path:
    """Train every stage of `method_name` (resuming whatever a previous run of the same config left).

    With `seed` (a run with several training seeds), the method trains with that seed into the run's
    `seed-<s>` folder. At each of `config.budget.points` the trained parts are kept in `points/step-<T>/`, and
    `budget.json` records what each budget axis needs (`taxabench.budget`).

    Returns the method's checkpoint folder (`<run>/checkpoints/<method>`); `load_trained` reads it. Raises
    `TaxabenchError` for an unknown method, a zero stage budget, ranks the method needs but the dataset lacks,
    a budget point outside the schedule, and a checkpoint folder that was trained with another config.
    """
    from accelerate import PartialState

    from taxabench.backbone import load_backbone
    from taxabench.data import load_dataset

    cls = get_method(method_name)  # an unknown name, bad options or missing ranks fail before anything heavy loads
    options = cls.parse_options(config.method_options.get(method_name), f"method_options.{method_name}")
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    if seed is not None:
        config = replace(config, seed=seed)
    state = PartialState(cpu=cpu_only())
    if data is None:
        data = load_dataset(config.data)
    cls.check_dataset_ranks(options, data.ranks)
    with state.main_process_first():  # the tiny backbone is built once, by the main process
        backbone = load_backbone(config, data, show_progress=show_progress and state.is_main_process)
    species = [data.taxonomy.labels_of(t) for t in data.taxonomy.taxa(data.ranks[-1])]
    method = build_method(method_name, config, data.ranks, species, backbone)
    steps_per_stage = _steps_per_stage(config, len(data.train), state.num_processes)
    stages = method.stages(steps_per_stage)
    for stage in stages:
        if stage.steps < 1:
            raise TaxabenchError(f"method '{method_name}' {stage.name}: a stage budget must be at least 1 step")

    root = method_dir(run_dir, method_name, seed)
    points = training_points(config, stages, len(data.train), state.num_processes, method_name)
    fingerprint = training_fingerprint(config, method, data, backbone.identity)
    manifest = _open_manifest(root, method, stages, fingerprint, backbone, config, data, state.is_main_process)
    if state.is_main_process:
        params = {s.index: sum(p.numel() for p in method.trainable_parameters(s)) for s in stages}
        budget.write_schedule(root, stages, params, global_batch(config, state.num_processes))
    state.wait_for_everyone()

    for stage in stages:
        final = root / stage.name
        stage_points = [p for p in points if p.stage == stage.index]
        if not (final / STAGE_FILE).is_file():
            _train_stage(config, method, stage, data, backbone, root, show_progress and state.is_main_process,
                         stage_points)
        load_stage(method, final)  # every process continues from exactly what was saved
        if state.is_main_process and stage.name not in manifest["completed"]:
            manifest["completed"].append(stage.name)
            write_json(root / MANIFEST, manifest, "manifest")
        state.wait_for_everyone()
    return root


def load_trained(
    run_dir: str | os.PathLike[str],
    method_name: str,
    stage: int | None = None,
    backbone_path: str | os.PathLike[str] | None = None,
    seed: int | None = None,
) -> TrainedMethod:
    """Load `<run>/checkpoints/<method>` (its last stage, or `stage`) on the backbone it was trained on.

    `backbone_path` overrides where the SD-format folder is looked for (the manifest records the path used in
    training); its identity must match the one the checkpoint was trained on.
    """
    return load_checkpoint(method_dir(run_dir, method_name, seed), stage, backbone_path, expect_method=method_name)


def global_batch(config: ExperimentConfig, num_processes: int) -> int:
    """Training images per optimizer step, over all processes."""
    return config.train.batch_size * num_processes * config.train.gradient_accumulation_steps


def training_points(config: ExperimentConfig, stages: Sequence[Stage], n_train: int, num_processes: int,
                    method_name: str) -> list[budget.BudgetPoint]:
    """The budget points (`config.budget`) of a method's schedule; none for a method that does not train."""
    if not stages or not config.budget.points:
        return []
    return budget.resolve_points(config.budget.points, config.budget.unit, stages,
                                 global_batch(config, num_processes), n_train, method_name)


def point_folder(root: Path, label: str) -> Path:
    """Where the trained parts at budget point `label` are kept inside a method folder."""
    return root / POINTS_DIR / label


def training_fingerprint(config: ExperimentConfig, method: Method, data, backbone_identity: str) -> dict[str, Any]:
    """What decides a method's trained weights; a checkpoint folder only resumes under the same values."""
    train = {k: v for k, v in asdict(config.train).items() if k not in OPERATIONAL_KEYS}
    return {
        "seed": config.seed,
        "data": data.fingerprint(),
        "images": {"size": config.data.image_size, "resize": config.data.resize, "bbox": config.data.use_bbox},
        "backbone": backbone_identity,
        "train": train,
        "method_options": method.options_dict(),
    }


# ---------------------------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------------------------


def _steps_per_stage(config: ExperimentConfig, n_train: int, num_processes: int) -> int:
    train = config.train
    if train.epochs_per_stage is None:
        return train.steps_per_stage
    return max(1, math.ceil(train.epochs_per_stage * n_train / global_batch(config, num_processes)))


def _open_manifest(root, method, stages, fingerprint, backbone, config, data, is_main) -> dict:
    """Read the manifest of an earlier run (same config required) or write a fresh one."""
    path = root / MANIFEST
    if path.is_file():
        manifest = read_json(path, retrain_fix(root, method.name))
        differences = _differences(manifest.get("fingerprint", {}), fingerprint)
        if manifest.get("method") != method.name or differences:
            what = "; ".join(differences[:4]) or f"method {manifest.get('method')!r}"
            raise TaxabenchError(
                f"{root} holds a checkpoint trained with another config ({what}); train into another run folder "
                "(--run DIR) or remove that folder to retrain"
            )
        return manifest
    manifest = {
        "method": method.name,
        "class": type(method).__qualname__,
        "taxabench_version": __version__,
        "options": method.options_dict(),
        "seed": config.seed,
        "ranks": list(data.ranks),
        "stages": [{"index": s.index, "name": s.name, "steps": s.steps, "description": s.description}
                   for s in stages],
        "completed": [],
        "backbone": {"source": backbone.source, "path": str(Path(backbone.path).resolve()),
                     "identity": backbone.identity, "build": _backbone_build(backbone.path)},
        "fingerprint": fingerprint,
    }
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        taxa = [list(t.lineage) for t in data.taxonomy.taxa(data.ranks[-1])]
        write_json(root / TAXONOMY_FILE, {"ranks": list(data.ranks), "taxa": taxa}, "manifest")
        write_text(root / "config.yaml", config.to_yaml(), "config")
        write_json(path, manifest, "manifest")
    return manifest


def _backbone_build(path) -> dict:
    """What a tiny backbone's `build.json` says of itself (pre-training world, text-encoder knowledge, attention),
    kept with the checkpoint so that reports can show it; empty for other backbones."""
    build = Path(path) / "build.json"
    return read_json(build, f"delete {build.parent} so that the tiny backbone is rebuilt") if build.is_file() else {}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


# ---------------------------------------------------------------------------------------------------------------
# Frozen work: the sample stream, VAE latents, text embeddings
# ---------------------------------------------------------------------------------------------------------------


class SampleStream:
    """The training samples in order: one seeded permutation of the records per epoch, concatenated.

    Micro-batch m of the run covers stream positions [m·G, (m+1)·G) with G = batch size × processes; process p
    takes the p-th slice of `batch_size`, so the processes' shards are disjoint and cover the global batch.
    """

    def __init__(self, size: int, batch_size: int, num_processes: int, process_index: int, seed: int, stage: int):
        self.size, self.batch_size = size, batch_size
        self.num_processes, self.process_index = num_processes, process_index
        self.seed, self.stage = seed, stage

    def positions(self, micro_batch: int) -> range:
        start = (micro_batch * self.num_processes + self.process_index) * self.batch_size
        return range(start, start + self.batch_size)

    def record_index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        return int(self._permutation(epoch)[offset])

    @lru_cache(maxsize=4)  # noqa: B019 - one stream per stage; a few epochs are live at a time
    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=generator(self.seed, "train-order", self.stage, epoch))


class LatentCache:
    """VAE posterior mean and std per training image: computed on first use and kept (`cache=True`), or
    recomputed for every batch (`cache=False`, for measuring). A posterior sample is drawn afterwards from the
    sample's own generator, `mean + std · ε`.

    A convolution's result for one image depends on the batch it is computed in (~1e-6 on CPU). So the cache
    encodes fixed blocks of `LATENT_BLOCK` consecutive records — the block of a missing image, whole — never "whatever
    was missing in this batch": a record's cached latents are then the same whichever step first needs it, and a
    run resumed from a checkpoint (with an empty cache) trains on exactly the numbers an uninterrupted run did.
    Uncached, each batch is encoded as it comes, a function of the step too; the two modes differ by rounding,
    so the flag is part of what a checkpoint resumes under (`training_fingerprint`)."""

    def __init__(self, records, data_config, backbone, cache: bool, workers: int):
        self.records, self.data_config, self.backbone = records, data_config, backbone
        self.cache, self.block = cache, LATENT_BLOCK
        self.stored: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.pool = ThreadPoolExecutor(workers) if workers > 0 else None

    def moments(self, indices: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cache:
            return self._encode(list(indices), device)
        for first in sorted({i - i % self.block for i in indices if i not in self.stored}):
            block = list(range(first, min(first + self.block, len(self.records))))
            mean, std = self._encode(block, device)
            for i, m, s in zip(block, mean.cpu(), std.cpu()):
                self.stored[i] = (m, s)
        means = torch.stack([self.stored[i][0] for i in indices]).to(device)
        stds = torch.stack([self.stored[i][1] for i in indices]).to(device)
        return means, stds

    @torch.no_grad()
    def _encode(self, indices: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        from taxabench.data.images import load_image, to_tensor

        config = self.data_config

        def read(i: int) -> torch.Tensor:
            return to_tensor(load_image(self.records[i], config.image_size, config.resize, config.use_bbox))

        images = list(self.pool.map(read, indices)) if self.pool else [read(i) for i in indices]
        pixels = torch.stack(images).to(device=device, dtype=self.backbone.vae.dtype)
        mean, std = self.backbone.latent_distribution(pixels)
        return mean.float(), std.float()


# ---------------------------------------------------------------------------------------------------------------
# One stage
# ---------------------------------------------------------------------------------------------------------------


class Denoiser(nn.Module):
    """The trainable forward pass: the method's condition modules, then the UNet (what accelerate/DDP wraps)."""

    def __init__(self, unet: nn.Module, method: Method, stage: Stage, attention: str = "auto"):
        super().__init__()
        self.unet = unet
        self.conditioner = method.conditioner
        self.method, self.stage = method, stage  # plain attributes, not submodules
        self.attention = attention  # the UNet's SDPA kernel (`train.attention`), not the condition modules'

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        context = self.method.encoder_hidden_states(inputs, self.stage)
        with attention_backend(self.attention):
            return self.unet(noisy_latents, timesteps, encoder_hidden_states=context).sample


class EMA:
    """Exponential moving average of the trainable parameters (`train.ema_decay`); the stage saves the average."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for shadow, param in zip(self.shadow, self.params):
            shadow.lerp_(param.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for shadow, param in zip(self.shadow, self.params):
            param.copy_(shadow)


def _mixed_precision(setting: str, device: torch.device) -> str:
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "no"
    if setting == "fp16" and device.type != "cuda":
        raise TaxabenchError("train.mixed_precision: fp16 needs a CUDA device; use bf16 or no (or auto) on CPU")
    return setting


class StageTrainer:
    """The machinery of one training stage: the accelerator, the stage's trainable parameters in float32 and the
    frozen backbone in the compute dtype, the optimizer, the frozen-work caches and the sample stream.

    `step(k)` runs optimizer step k (all its micro-batches) and returns its loss; `_train_stage` drives it with
    resume, logging and checkpoints, and `benchmarks/train_speed.py` times it. How it runs is the config's
    choice (`train.mixed_precision`, `train.cache_latents`, `train.cache_text`, and the throughput levers
    `train.compile` + `compile_mode`, `channels_last`, `attention`: taxabench/levers.py): the authors'
    configuration (float32, every frozen encoder re-run at every step) is the same object with other flags.
    """

    def __init__(self, config, method: Method, stage: Stage, data, backbone, logging_dir: Path | None = None):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs, TorchDynamoPlugin
        from diffusers.optimization import get_scheduler

        train = config.train
        self.config, self.method, self.stage, self.data, self.backbone = config, method, stage, data, backbone
        # the process-wide accelerate state keeps the first mixed precision it saw: reset it (not the process
        # group) so that one process can train runs of different precisions one after the other
        AcceleratorState._reset_state()
        self.accelerator = accelerator = Accelerator(
            cpu=cpu_only(),
            gradient_accumulation_steps=train.gradient_accumulation_steps,
            mixed_precision=_mixed_precision(train.mixed_precision, _default_device()),
            # a method may leave some trainable modules out of a step (the random-rank ablation)
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            dynamo_plugin=TorchDynamoPlugin(backend="inductor" if train.compile else "no", mode=train.compile_mode),
            # experiment trackers (train.report_to); each stage is a run of its own under `logging_dir`
            log_with=list(train.report_to) or None,
            project_dir=str(logging_dir) if train.report_to and logging_dir is not None else None,
        )
        device = self.device = accelerator.device
        weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
        check_levers("train", train.attention, train.compile_mode if train.compile else None, device, weight_dtype)

        # freeze everything, then let the method mark what trains in this stage
        backbone.freeze()
        method.conditioner.requires_grad_(False)
        self.params = params = method.trainable_parameters(stage)
        for param in params:
            param.requires_grad_(True)
        # frozen backbone weights in the compute dtype; trainable and method-owned weights stay float32
        owned = {id(p) for p in method.owned_parameters()} | {id(p) for p in params}
        for module in (backbone.vae, backbone.text_encoder, backbone.unet):
            for param in module.parameters():
                param.data = param.data.float() if id(param) in owned else param.data.to(weight_dtype)
            module.to(device)
        method.conditioner.to(device)
        if train.channels_last:
            to_channels_last(backbone.vae, backbone.unet)

        model = Denoiser(backbone.unet, method, stage, train.attention).train()
        # the fused CUDA kernel updates every parameter in one launch instead of a few per parameter
        optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay,
                                      fused=device.type == "cuda")
        schedule_name = "constant_with_warmup" if train.lr_scheduler == "constant" else train.lr_scheduler
        lr_scheduler = get_scheduler(  # the prepared scheduler steps once per process: scale as diffusers does
            schedule_name, optimizer, num_warmup_steps=train.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=stage.steps * accelerator.num_processes,
        )
        self.ema = EMA(params, train.ema_decay) if train.ema_decay is not None else None
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
        accelerator.register_save_state_pre_hook(self._save_trainable)
        accelerator.register_load_state_pre_hook(self._load_trainable)

        self.stream = SampleStream(
            len(data.train), train.batch_size, accelerator.num_processes, accelerator.process_index, config.seed,
            stage.index,
        )
        self.latents = LatentCache(data.train, config.data, backbone, train.cache_latents, train.num_workers)
        self.text = TextCache(backbone, train.cache_text)
        self.global_batch = train.batch_size * accelerator.num_processes * train.gradient_accumulation_steps

    # accelerate state holds only what trains (and its EMA), as safetensors, not the whole UNet
    def _save_trainable(self, models, weights, output_dir):
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            unwrapped = self.accelerator.unwrap_model(models[0])
            state = {n: p.detach().float().cpu().contiguous() for n, p in unwrapped.named_parameters()
                     if p.requires_grad}
            if self.ema is not None:
                names = [n for n, p in unwrapped.named_parameters() if p.requires_grad]
                state.update({f"ema.{n}": s.cpu().contiguous() for n, s in zip(names, self.ema.shadow)})
            save_file(state, Path(output_dir) / TRAINABLE_STATE)
        weights.clear()

    def _load_trainable(self, models, input_dir):
        from safetensors.torch import load_file

        unwrapped = self.accelerator.unwrap_model(models.pop())
        state = load_file(Path(input_dir) / TRAINABLE_STATE)
        named = [(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad]
        with torch.no_grad():
            for i, (name, param) in enumerate(named):
                param.copy_(state[name])
                if self.ema is not None:
                    self.ema.shadow[i].copy_(state[f"ema.{name}"])

    def step(self, step: int) -> float:
        """Optimizer step `step` (0-based) of the stage: its micro-batches, the update, the EMA; the mean loss."""
        accelerator, train = self.accelerator, self.config.train
        losses, real = [], torch.zeros(2)
        for micro_batch in range(step * train.gradient_accumulation_steps, (step + 1) * train.gradient_accumulation_steps):
            with accelerator.accumulate(self.model):
                loss, draws = self.loss(micro_batch, self.model)
                real += torch.tensor([sum(draws.finest_real), len(draws.finest_real)], dtype=torch.float32)
                accelerator.backward(loss)
                if accelerator.sync_gradients and train.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(self.params, train.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        if self.ema is not None:
            self.ema.update()
        real = accelerator.gather(real.to(self.device).reshape(1, 2)).sum(dim=0)
        # the fraction of this step's samples whose finest conditioned rank kept its real name (NaN: the method
        # reported none)
        self.finest_real = (real[0] / real[1]).item() if real[1] > 0 else float("nan")
        return accelerator.gather(torch.stack(losses).mean().reshape(1)).mean().item()

    def loss(self, micro_batch: int, model: nn.Module) -> tuple[torch.Tensor, TrainingDraws]:
        """The denoising loss of one micro-batch through `model`, and the draws it used. Every draw comes from a
        generator seeded by the micro-batch, so the loss is a function of the step, not of the call history."""
        config, train, stage, device, backbone = self.config, self.config.train, self.stage, self.device, self.backbone
        noise_scheduler = backbone.noise_scheduler
        positions = self.stream.positions(micro_batch)
        indices = [self.stream.record_index(p) for p in positions]
        draws = TrainingDraws(
            per_sample=[generator(config.seed, "train-sample", stage.index, p) for p in positions],
            per_step=generator(config.seed, "train-step", stage.index, micro_batch),
            dropout=train.condition_dropout,
            dropout_mode=train.condition_dropout_mode,
        )
        # randomness inside modules (dropout layers) also follows the step, not the call history
        torch.manual_seed(derive_seed(config.seed, "train-modules", stage.index, micro_batch,
                                      self.accelerator.process_index))
        mean, std = self.latents.moments(indices, device)
        shape = mean.shape[1:]
        posterior = torch.stack([torch.randn(shape, generator=g) for g in draws.per_sample])
        noise = torch.stack([torch.randn(shape, generator=g) for g in draws.per_sample])
        num_timesteps = noise_scheduler.config.num_train_timesteps
        timesteps = torch.stack([torch.randint(0, num_timesteps, (), generator=g) for g in draws.per_sample]).to(device)
        clean = backbone.scaled_latents(mean, std, posterior.to(device))
        noise = noise.to(device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = noise
        labels = [self.data.train[i].labels for i in indices]
        inputs = move_inputs(self.method.condition_inputs(labels, stage, self.text, draws), device)
        prediction = model(noisy, timesteps, inputs)
        return F.mse_loss(prediction.float(), target.float()), draws

    def count_flops(self, step: int) -> float:
        """The FLOPs this process spends on optimizer step `step`, counted on a rehearsal of its forward and
        backward passes (`FlopCounterMode`) whose gradients are thrown away; the optimizer's element-wise update
        is not a counted operation.

        The rehearsal is a pass of its own because the counter changes the backward's rounding (up to ~1e-8 per
        gradient): a counted real step would make the run depend on which step a process counted, and a run
        restarted after its FLOPs were recorded would not repeat the first run's numbers."""
        from torch.utils.flop_counter import FlopCounterMode

        accumulation = self.config.train.gradient_accumulation_steps
        model = self.accelerator.unwrap_model(self.model)  # outside DDP: no gradient is reduced
        for micro_batch in range(step * accumulation, (step + 1) * accumulation):  # encoded outside the count:
            self.latents.moments(  # with cached latents, each image is encoded once per run, not once per step
                [self.stream.record_index(p) for p in self.stream.positions(micro_batch)], self.device)
        counter = FlopCounterMode(display=False)
        with counter, self.accelerator.autocast():
            for micro_batch in range(step * accumulation, (step + 1) * accumulation):
                loss, _ = self.loss(micro_batch, model)
                torch.autograd.grad(loss, self.params, allow_unused=True)
        return float(counter.get_total_flops())


def _train_stage(config, method: Method, stage: Stage, data, backbone, root: Path, show_progress: bool,
                 points: Sequence[budget.BudgetPoint] = ()) -> None:
    train = config.train
    trainer = StageTrainer(config, method, stage, data, backbone, logging_dir=root / TRACKER_DIR)
    at_step = {p.stage_step: p for p in points}
    accelerator = trainer.accelerator
    if train.report_to:  # one tracker run per stage, stepped as loss.csv is (the stage's optimizer steps)
        accelerator.init_trackers(stage.name, config={"method": method.name, "stage": stage.name,
                                                      "seed": config.seed, "steps": stage.steps})
    state_dir = root / "state" / stage.name
    start = _resume(accelerator, state_dir)
    loss_log = root / LOSS_LOG
    if accelerator.is_main_process:
        _truncate_log(loss_log, stage.index, start)

    with progress_bar(f"{method.name} {stage.name}: {stage.description}", stage.steps, show_progress,
                      completed=start) as advance:
        for step in range(start, stage.steps):
            if step == start and not budget.has_flops(root, stage.index):
                flops = trainer.count_flops(step)
                if accelerator.is_main_process:
                    budget.record_flops(root, stage.index, flops * accelerator.num_processes)
            started = time.perf_counter()
            step_loss = trainer.step(step)
            fault_point("train-step")
            seconds = time.perf_counter() - started
            rate = trainer.global_batch / seconds
            if accelerator.is_main_process:
                _log(loss_log, stage.index, step + 1, step_loss, trainer.lr_scheduler.get_last_lr()[0], rate, seconds,
                     trainer.finest_real)
            if train.report_to:  # every tracker gets what loss.csv records (accelerate logs on the main process)
                accelerator.log({"train/loss": step_loss, "train/lr": trainer.lr_scheduler.get_last_lr()[0],
                                 "train/images_per_s": rate, "train/finest_real": trainer.finest_real}, step=step + 1)
            advance(loss=step_loss, **{"img/s": rate})
            done = step + 1
            if done in at_step and accelerator.is_main_process:
                _save_point(trainer, root, at_step[done])
            if done % train.checkpoint_every == 0 and done < stage.steps:
                _save_state(accelerator, state_dir, done, train.checkpoints_total_limit)

    if trainer.ema is not None:
        trainer.ema.copy_to_params()
    final = root / stage.name
    if accelerator.is_main_process:
        with building_folder(final, "stage") as staging:
            files = method.save(staging)
            write_json(staging / STAGE_FILE, {
                "method": method.name, "stage": {"index": stage.index, "name": stage.name, "steps": stage.steps,
                                                 "description": stage.description},
                "files": files, "taxabench_version": __version__,
            }, "stage-file")
        shutil.rmtree(state_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the state folder goes once no stage is in progress
            state_dir.parent.rmdir()
    accelerator.wait_for_everyone()
    if train.report_to:
        accelerator.end_training()
    accelerator.free_memory()


def _save_point(trainer: StageTrainer, root: Path, point: budget.BudgetPoint) -> None:
    """Keep the trained parts at a budget point (the EMA weights when there is an EMA), like a stage folder."""
    target = point_folder(root, point.label)
    if (target / STAGE_FILE).is_file():
        return
    method, stage = trainer.method, trainer.stage
    backup = None
    if trainer.ema is not None:
        backup = [p.detach().clone() for p in trainer.ema.params]
        trainer.ema.copy_to_params()
    target.parent.mkdir(parents=True, exist_ok=True)
    with building_folder(target, "point") as staging:
        files = method.save(staging)
        write_json(staging / STAGE_FILE, {
            "method": method.name, "stage": {"index": stage.index, "name": stage.name, "steps": stage.steps,
                                             "description": stage.description},
            "point": {"label": point.label, "steps": point.steps, "stage_step": point.stage_step},
            "files": files, "taxabench_version": __version__,
        }, "stage-file")
    if backup is not None:
        with torch.no_grad():
            for param, value in zip(trainer.ema.params, backup):
                param.copy_(value)


def _default_device() -> torch.device:
    from accelerate import PartialState

    return PartialState(cpu=cpu_only()).device


def _checkpoints(state_dir: Path) -> list[tuple[int, Path]]:
    """The complete accelerate states of a stage, oldest first: `checkpoint-<step>` folders (a state being written
    lives under a `.partial` name until it is whole) holding their step file."""
    if not state_dir.is_dir():
        return []
    found = [(p, p.name.removeprefix("checkpoint-")) for p in state_dir.glob("checkpoint-*")]
    return sorted((int(step), p) for p, step in found if step.isdigit() and (p / STEP_FILE).is_file())


def _resume(accelerator, state_dir: Path) -> int:
    """Load the latest complete accelerate state of this stage; return the optimizer step it was saved at."""
    done = _checkpoints(state_dir)
    if not done:
        return 0
    step, path = done[-1]
    try:
        accelerator.load_state(str(path))
    except Exception as error:  # torch, pickle and safetensors each raise their own type
        raise DamagedFileError(path, f"the training state cannot be loaded ({type(error).__name__}: {error})",
                               "remove that folder to resume from the previous state (or from the stage's start)") \
            from error
    return step


def _save_state(accelerator, state_dir: Path, step: int, keep: int) -> None:
    """Save the accelerate state as `checkpoint-<step>`: written under a `.partial` name (every process writes its
    random states into it), then renamed whole; keep the last `keep`."""
    target = state_dir / f"checkpoint-{step}"
    staging = state_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        remove(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(staging / STEP_FILE, {"step": step}, "state-step")
        fault_point("state")
        remove(target)
        os.replace(staging, target)
        finished = _checkpoints(state_dir)
        for _, old in finished[: max(0, len(finished) - keep)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


TRACKER_DIR = "logs"  # under a method's checkpoint folder: one folder per stage (train.report_to)


# finest_real: the fraction of the step's samples whose finest conditioned rank kept its real name (condition
# dropout and unknown labels take it away); the report shows its mean per method and stage
LOG_COLUMNS = ("stage", "step", "loss", "lr", "images_per_s", "seconds", "finest_real")


def _log(path: Path, stage: int, step: int, loss: float, lr: float, rate: float, seconds: float,
         finest_real: float) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(LOG_COLUMNS)
        writer.writerow([stage, step, f"{loss:.6f}", f"{lr:.3e}", f"{rate:.2f}", f"{seconds:.4f}",
                         f"{finest_real:.4f}"])


def _truncate_log(path: Path, stage: int, step: int) -> None:
    """Drop log rows that a resumed run will write again (this stage's steps after `step`), and a last row that a
    kill cut short."""
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        rows = [r for r in csv.reader(handle) if len(r) == len(LOG_COLUMNS)]
    if not rows or tuple(rows[0]) != LOG_COLUMNS:
        rows = [list(LOG_COLUMNS)]
    kept = [rows[0]] + [r for r in rows[1:] if r[0].isdigit() and r[1].isdigit() and r[5][-1:].isdigit()
                        and (int(r[0]) < stage or (int(r[0]) == stage and int(r[1]) <= step))]
    lines = io.StringIO()
    csv.writer(lines).writerows(kept)
    write_text(path, lines.getvalue(), "loss-log")

