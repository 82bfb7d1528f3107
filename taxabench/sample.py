"""Per-taxon sampling: K images of every evaluated taxon, with the method's condition and guidance.

`TaxonomyPipeline` is a diffusers `DiffusionPipeline` whose `__call__` walks through the sampler step by step; the
method supplies the positive condition and the guidance negative, so one pipeline serves every method, and
`TaxaDiffusionPipeline.from_pretrained(checkpoint_folder)` generates outside the benchmark. `sample_method` is the
benchmark's sampler:

- image j of taxon t is seeded with `derive_seed(seed, "sample", t.id, j)`, never with call order;
- the (taxon, image) pairs are laid out in one global order and cut into batches of `sample.batch_size`; a batch's
  content therefore does not depend on the number of processes or on what a previous run already wrote, and under
  `accelerate launch` / `torchrun` the batches are split between processes without overlap or gaps;
- on CPU the default precision is float64, where the effect of batch composition on the numbers (~1e-15) is far
  below what 8-bit PNGs can show: the same bytes whatever the batch size or process count. (float32 reductions
  depend on the batch shape at ~1e-6, enough to flip a few pixel values);
- files are written atomically (`.partial` + rename) and a rerun skips finished images, so a killed run finishes
  with exactly the same files and bytes.

Layout, under `<run>/samples/<method>/`: `<taxon-slug>/NNNN.png`, `metadata.jsonl` (one line per image: taxon id,
lineage, seed, guidance, scale, steps, method, checkpoint ...), `settings.json` (what the images were made with; a
rerun with other settings is refused) and `grid.png` (taxa x images).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput

from taxabench.checkpoint import TextCache, cpu_only, load_checkpoint
from taxabench.config import ExperimentConfig, SampleConfig
from taxabench.errors import TaxabenchError
from taxabench.files import fault_point, read_json, write_json, writing
from taxabench.guidance import GUIDANCE
from taxabench.layout import METADATA_FILE, POINT_SWEEP, POINT_UNSEEN, RunLayout, write_metadata_line
from taxabench.levers import attention_backend, check_levers, compile_in_place, to_channels_last
from taxabench.methods import GUIDANCE_KINDS, Method, Stage
from taxabench.methods.base import move_inputs
from taxabench.progress import progress_bar
from taxabench.seeds import derive_seed
from taxabench.taxonomy import Taxon, Taxonomy

SCHEDULERS = ("ddim", "pndm", "dpm++", "euler")
METADATA = METADATA_FILE
SETTINGS = "settings.json"
PRECISIONS = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
              "bfloat16": torch.bfloat16}


def make_scheduler(name: str, config: dict):
    """A sampling scheduler built from the backbone's own noise-schedule config (betas, timestep spacing)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "pndm":
        return PNDMScheduler.from_config(config)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    raise TaxabenchError(f"unknown scheduler {name!r}; available: {', '.join(SCHEDULERS)}")


def sampling_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`auto`: float64 on CPU (byte-reproducible, see the module docstring), float16 on CUDA."""
    if precision == "auto":
        return torch.float64 if device.type == "cpu" else torch.float16
    return PRECISIONS[precision]


@dataclass
class TaxonomyPipelineOutput(BaseOutput):
    """`images`: PIL images (or an array, `output_type="np"`), one per (taxon, index); `taxa` and `seeds` align."""

    images: list[PIL.Image.Image] | np.ndarray
    taxa: list[str]
    seeds: list[int]


class TaxonomyPipeline(DiffusionPipeline):
    r"""Generate images of taxa with a registered method's taxonomy conditioning.

    Components:
        vae ([`AutoencoderKL`]): decodes latents to images.
        text_encoder ([`CLIPTextModel`]): the frozen text encoder the method's strings go through.
        tokenizer ([`CLIPTokenizer`]): its tokenizer.
        unet ([`UNet2DConditionModel`]): the denoiser (with the method's LoRA or fine-tuned weights).
        scheduler: a DDIM, PNDM, DPM-Solver++ or Euler scheduler.
        method ([`taxabench.methods.Method`]): makes the condition and the guidance negative; its trained
            condition modules (`method.conditioner`) move with the pipeline in `to()`.
        taxonomy ([`taxabench.taxonomy.Taxonomy`]): resolves taxon names, ids and lineages.
        stage ([`taxabench.methods.Stage`] or `None`): the training stage whose weights are loaded.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    accepted_methods: tuple[str, ...] | None = None  # None: any registered method
    attention = "auto"  # the UNet's SDPA kernel (`enable_levers`)

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, method=None, taxonomy=None, stage=None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)
        self.method: Method = method
        self.taxonomy: Taxonomy = taxonomy
        self.stage: Stage | None = stage
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], stage: int | None = None,
                        scheduler: str = "ddim", backbone_path: str | os.PathLike[str] | None = None,
                        **_unsupported: Any) -> TaxonomyPipeline:
        """Load a trained method folder (`<run>/checkpoints/<method>`): its last stage, or `stage`."""
        if _unsupported:
            raise TaxabenchError(f"{cls.__name__}.from_pretrained: unknown arguments {sorted(_unsupported)}")
        trained = load_checkpoint(folder, stage, backbone_path)
        found = trained.manifest["method"]
        if cls.accepted_methods is not None and found not in cls.accepted_methods:
            raise TaxabenchError(
                f"{folder} holds a checkpoint of method '{found}'; {cls.__name__} loads "
                f"{', '.join(cls.accepted_methods)} checkpoints (use TaxonomyPipeline for any method)"
            )
        return cls.from_trained(trained, scheduler)

    @classmethod
    def from_trained(cls, trained, scheduler: str = "ddim") -> TaxonomyPipeline:
        """A pipeline around a `taxabench.train.TrainedMethod`."""
        backbone = trained.backbone
        return cls(
            vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer,
            unet=backbone.unet, scheduler=make_scheduler(scheduler, backbone.noise_scheduler.config),
            method=trained.method, taxonomy=trained.taxonomy, stage=trained.stage,
        )

    def to(self, *args, **kwargs) -> TaxonomyPipeline:
        """Move and cast the models and the method's condition modules (which are not a diffusers component).

        Casts with `torch.nn.Module.to`: diffusers' own `to` warns about float32-only modules these models lack.
        """
        for module in (self.vae, self.text_encoder, self.unet, self.method.conditioner):
            torch.nn.Module.to(module, *args, **kwargs)
        return self

    def enable_levers(self, channels_last: bool = False, attention: str = "auto",
                      compile_mode: str | None = None) -> TaxonomyPipeline:
        """Throughput levers (taxabench/levers.py), after `to()`: NHWC weights in the UNet and VAE, the UNet's SDPA
        kernel (not the VAE's: its single 512-wide head is beyond the flash kernel), torch.compile of the UNet in
        `compile_mode` (None: eager; `reduce-overhead` replays CUDA graphs). The guidance pair already shares one
        UNet call and a batch is decoded by one VAE call in the pipeline's dtype."""
        check_levers("sample", attention, compile_mode, self._execution_device, self.unet.dtype)
        if channels_last:
            to_channels_last(self.unet, self.vae)
        if compile_mode is not None:
            compile_in_place(self.unet, compile_mode)
        self.attention = attention
        return self

    # -- steps of __call__ -----------------------------------------------------------------------------------------
    def check_inputs(self, taxa, num_images_per_taxon, seeds, guidance, guidance_scale, num_inference_steps,
                     height, width) -> str:
        if not isinstance(taxa, (list, tuple)) or not taxa:
            raise TaxabenchError(f"`taxa` must be a non-empty list of taxa (names, ids or lineages), got {taxa!r}")
        if num_images_per_taxon < 1:
            raise TaxabenchError(f"`num_images_per_taxon` must be at least 1, got {num_images_per_taxon}")
        if seeds is not None and len(seeds) != len(taxa) * num_images_per_taxon:
            raise TaxabenchError(
                f"`seeds` must give one seed per image ({len(taxa)} taxa x {num_images_per_taxon}), got {len(seeds)}"
            )
        if num_inference_steps < 1:
            raise TaxabenchError(f"`num_inference_steps` must be at least 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise TaxabenchError(f"`guidance_scale` may not be negative, got {guidance_scale}")
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise TaxabenchError(
                f"`height` and `width` have to be divisible by {self.vae_scale_factor} but are {height} and {width}"
            )
        if guidance not in ("default", *GUIDANCE_KINDS):
            raise TaxabenchError(f"`guidance` must be default or one of {', '.join(GUIDANCE_KINDS)}, got {guidance!r}")
        return self.method.check_guidance(guidance)

    def resolve_taxa(self, taxa: Sequence[str | Taxon | Sequence[str]]) -> list[Taxon]:
        """Names, ids (`A/B/C`), slugs or lineages (`["A", "B", "C"]`) to taxa of the training taxonomy."""
        resolved = []
        for taxon in taxa:
            if isinstance(taxon, Taxon):
                resolved.append(self.taxonomy.resolve(taxon.id))
            elif isinstance(taxon, str):
                resolved.append(self.taxonomy.resolve(taxon))
            else:
                resolved.append(self.taxonomy.resolve("/".join(taxon)))
        return resolved

    def encode_conditions(self, labels, guidance: str, dtype: torch.dtype):
        """The method's condition for each image and, with guidance, its negative (batch-invariant per string)."""
        text = TextCache(self.method.backbone, cache=True, dtype=dtype)
        device = self._execution_device
        positive = self.method.encoder_hidden_states(
            move_inputs(self.method.condition_inputs(labels, self.stage, text), device), self.stage
        )
        if not GUIDANCE.get(guidance).guided:
            return positive, None
        negative = self.method.encoder_hidden_states(
            move_inputs(self.method.negative_inputs(guidance, labels, self.stage, text), device), self.stage
        )
        return positive, negative

    def prepare_latents(self, seeds: list[int], height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """One generator per image: an image's starting noise depends on its seed alone."""
        shape = (self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float32) for s in seeds]
        latents = torch.stack(noise).to(device=self._execution_device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def __call__(
        self,
        taxa: Sequence[str | Taxon | Sequence[str]],
        num_images_per_taxon: int = 1,
        seeds: Sequence[int] | None = None,
        seed: int = 0,
        guidance: str = "default",
        guidance_scale: float = 9.0,
        num_inference_steps: int = 25,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> TaxonomyPipelineOutput | tuple:
        r"""Generate `num_images_per_taxon` images of each taxon.

        Args:
            taxa (`list`): taxon names, ids (`"Actinopterygii/Perciformes"`), slugs, lineages or `Taxon`s.
            num_images_per_taxon (`int`, *optional*, defaults to 1): images per taxon (K).
            seeds (`list[int]`, *optional*): one seed per image, taxon-major; default
                `derive_seed(seed, "sample", taxon.id, j)` for image j of each taxon.
            seed (`int`, *optional*, defaults to 0): the run seed the default per-image seeds derive from.
            guidance (`str`, *optional*, defaults to `"default"`): a registered guidance kind
                (`taxabench.guidance`): `taxonomy` (negative: the top-rank-only condition), `cfg` (the trained
                unconditional condition), `vanilla-cfg` (the raw text embedding of `""`), `none`, or `default`
                (the method's own).
            guidance_scale (`float`, *optional*, defaults to 9.0): s in ε̃ = ε(c⁻) + s·(ε(c) − ε(c⁻)), i.e. the
                paper's w = s − 1 (the authors' sampler uses 9).
            num_inference_steps (`int`, *optional*, defaults to 25): denoising steps.
            height, width (`int`, *optional*): image size; default the UNet's sample size × the VAE factor.
            output_type (`str`, *optional*, defaults to `"pil"`): `pil`, `np`, `pt` or `latent` (not decoded).
            return_dict (`bool`, *optional*, defaults to `True`): a `TaxonomyPipelineOutput` or a tuple.
        """
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor

        # 1. Check inputs
        guidance = self.check_inputs(taxa, num_images_per_taxon, seeds, guidance, guidance_scale,
                                     num_inference_steps, height, width)

        # 2. One entry per image: its taxon and seed
        resolved = [t for t in self.resolve_taxa(taxa) for _ in range(num_images_per_taxon)]
        if seeds is None:
            seeds = [derive_seed(seed, "sample", t.id, j % num_images_per_taxon) for j, t in enumerate(resolved)]
        labels = [self.taxonomy.labels_of(t) for t in resolved]

        # 3. Encode the condition and the guidance negative (the method makes both)
        dtype = self.unet.dtype
        positive, negative = self.encode_conditions(labels, guidance, dtype)
        context = positive if negative is None else torch.cat([negative, positive])

        # 4. Prepare timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)

        # 5. Prepare latent variables
        latents = self.prepare_latents(list(seeds), height, width, dtype)

        # 6. Denoising loop
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = latents if negative is None else torch.cat([latents] * 2)
            model_input = self.scheduler.scale_model_input(model_input, t)
            with attention_backend(self.attention):
                noise_pred = self.unet(model_input, t, encoder_hidden_states=context.to(dtype)).sample
            if negative is not None:
                noise_negative, noise_positive = noise_pred.chunk(2)
                # ε̃ = (1+w)·ε(x,t,c) − w·ε(x,t,c⁻), w = s − 1; c⁻ = c⁽⁰⁾ for taxonomy guidance (paper §3.4)
                noise_pred = noise_negative + guidance_scale * (noise_positive - noise_negative)
            latents = self.scheduler.step(noise_pred, t, latents).prev_sample

        # 7. Decode
        if output_type == "latent":
            images = latents
        else:
            images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
            images = self.image_processor.postprocess(images.float(), output_type=output_type)
        ids = [t.id for t in resolved]
        if not return_dict:
            return images, ids, list(seeds)
        return TaxonomyPipelineOutput(images=images, taxa=ids, seeds=list(seeds))


class TaxaDiffusionPipeline(TaxonomyPipeline):
    """TaxonomyPipeline for TaxaDiffusion checkpoints (and its ablations); defaults to taxonomy guidance.

    Example:
        >>> pipe = TaxaDiffusionPipeline.from_pretrained("runs/demo/checkpoints/taxadiffusion")
        >>> images = pipe(["Abudefduf saxatilis"], num_images_per_taxon=4).images
    """

    accepted_methods = ("taxadiffusion", "taxadiffusion-joint", "taxadiffusion-random")


# ---------------------------------------------------------------------------------------------------------------
# The benchmark sampler
# ---------------------------------------------------------------------------------------------------------------


def samples_dir(run_dir: str | os.PathLike[str], method_name: str, seed: int | None = None,
                point: str | None = None) -> Path:
    """`<run>/samples/<method>` (and its seed / budget-point variants: `taxabench.layout`)."""
    return RunLayout(Path(run_dir)).samples(method_name, seed, point)


def select_taxa(taxonomy: Taxonomy, sample: SampleConfig) -> list[Taxon]:
    """The taxa to sample: every taxon of `sample.rank`, or the ones `sample.taxa` names (close matches suggested)."""
    if sample.rank not in taxonomy.ranks:
        raise TaxabenchError(f"sample.rank: {sample.rank!r} is not a rank of the model ({', '.join(taxonomy.ranks)})")
    if not sample.taxa:
        return taxonomy.taxa(sample.rank)
    chosen = {taxonomy.resolve(name, rank=sample.rank).id: None for name in sample.taxa}
    return [taxonomy[i] for i in sorted(chosen)]


def unseen_taxa(config: ExperimentConfig, trained) -> tuple[Taxonomy, list[Taxon]]:
    """The species `data.unseen_species` withholds from training, in the dataset's training taxonomy extended by
    them (what the sampler resolves them in). Refuses a method that cannot condition on a species it was not trained
    on, and a checkpoint that was trained on one of them (trained before the option was set)."""
    from taxabench.data import load_dataset

    method = trained.method
    if not method.generates_unseen_species:
        raise TaxabenchError(f"method '{method.name}' cannot generate species it was not trained on: "
                             f"{method.unseen_species_reason}")
    data = load_dataset(config.data, show_progress=False)
    taxonomy = data.unseen_view().taxonomy
    seen = [i for i in data.unseen_species if i in trained.taxonomy]
    if seen:
        raise TaxabenchError(f"the checkpoint of '{method.name}' was trained on {seen[0]}, which data.unseen_species "
                             "withholds; train it again with this config")
    return taxonomy, [taxonomy[i] for i in data.unseen_species]


def sample_method(
    config: ExperimentConfig,
    method_name: str,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    output: str | None = None,
    show_progress: bool = True,
    seed: int | None = None,
    point: str | None = None,
) -> Path:
    """Generate `sample.images_per_taxon` images of every selected taxon with the trained `method_name`.

    Returns `<run>/samples/<output>` (default: the method's name; `taxabench run` writes guidance ablations to
    `<method>+<guidance>`). `seed`: the training seed of a multi-seed run (its checkpoint, its sampling seed, its
    folders); `point`: the checkpoint kept at that budget point instead of the final one (`sweep`: the final
    checkpoint, into the guidance sweep's folder; `unseen`: the final checkpoint, every species `data.unseen_species`
    withholds from training, `sample.taxa` ignored). Resumable (finished images are skipped) and sharded across
    accelerate processes. Raises `TaxabenchError` for an untrained method, an unknown taxon, guidance the method
    lacks, a samples folder made with other settings, and unseen species for a method that cannot generate them.
    """
    from accelerate import PartialState

    sample = config.sample
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    if seed is not None:
        config = replace(config, seed=seed)
    layout = RunLayout(run_dir)
    state = PartialState(cpu=cpu_only())
    # a guidance sweep samples the final checkpoint into its own folder; a budget point, the checkpoint kept there
    trained = load_checkpoint(layout.checkpoints(method_name, seed), sample.stage, expect_method=method_name,
                              point=None if point in (POINT_SWEEP, POINT_UNSEEN) else point)
    pipeline = TaxonomyPipeline.from_trained(trained, sample.scheduler)
    if point == POINT_UNSEEN:
        pipeline.taxonomy, taxa = unseen_taxa(config, trained)
    else:
        taxa = select_taxa(trained.taxonomy, sample)
    dtype = sampling_dtype(sample.precision, state.device)
    pipeline.to(state.device, dtype)
    pipeline.enable_levers(sample.channels_last, sample.attention, sample.compile_mode if sample.compile else None)
    pipeline.set_progress_bar_config(disable=True)
    guidance = trained.method.check_guidance(sample.guidance)

    out = layout.samples(output or method_name, seed, point)
    settings = {
        "method": method_name,
        "checkpoint": trained.checkpoint.relative_to(run_dir).as_posix(),  # within the run folder
        "stage": trained.stage.index if trained.stage else None,
        "trained": trained.manifest["fingerprint"],
        "backbone": trained.backbone.identity,
        "seed": config.seed,
        "guidance": guidance,
        "guidance_scale": sample.guidance_scale,
        "steps": sample.steps,
        "scheduler": sample.scheduler,
        "precision": str(dtype).removeprefix("torch."),
        "image_size": config.data.image_size,
        "batch_size": sample.batch_size,
    }
    _check_settings(out, settings, state.is_main_process)
    state.wait_for_everyone()

    work = [(taxon, j) for taxon in taxa for j in range(sample.images_per_taxon)]
    batches = [work[i : i + sample.batch_size] for i in range(0, len(work), sample.batch_size)]
    mine = shard(len(batches), state.num_processes, state.process_index)
    todo = [b for b in mine if not all(finished_image(_image_path(out, t, j)) for t, j in batches[b])]
    images = sum(len(batches[b]) for b in todo)
    with progress_bar(f"{method_name}: sampling", images, show_progress and state.is_main_process) as advance:
        for b in todo:
            batch = batches[b]
            seeds = [derive_seed(config.seed, "sample", t.id, j) for t, j in batch]
            result = pipeline([t.id for t, _ in batch], seeds=seeds, guidance=guidance,
                              guidance_scale=sample.guidance_scale, num_inference_steps=sample.steps,
                              height=config.data.image_size, width=config.data.image_size)
            fault_point("sample-batch")
            for (taxon, j), image in zip(batch, result.images):
                path = _image_path(out, taxon, j)
                if not finished_image(path):  # a batch is redone whole; finished images keep their (equal) bytes
                    _write_png(image, path)
            advance(len(batch))
    state.wait_for_everyone()
    if state.is_main_process:
        _write_metadata(out, work, config.seed, settings)
        sample_grid(out, out / "grid.png")
    state.wait_for_everyone()
    return out


def shard(count: int, num_processes: int, process_index: int) -> range:
    """Process `process_index`'s contiguous share of `count` batches: no overlap, no gaps, sizes differ by ≤ 1."""
    base, extra = divmod(count, num_processes)
    start = process_index * base + min(process_index, extra)
    return range(start, start + base + (process_index < extra))


def finished_image(path: Path) -> bool:
    """An image file that exists and decodes (PNG chunks and checksums intact): a missing or damaged one is drawn
    again, with the same seed, so it comes back with the bytes it had."""
    try:
        with PIL.Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):  # absent, or what PIL raises for damage
        return False
    return True


def damaged_samples(folder: Path) -> Path | None:
    """The first image a sample folder's `metadata.jsonl` lists that is missing or does not decode (None: all
    intact, or no metadata yet): a finished sampling with one runs again (`taxabench.steps.Step.intact`)."""
    metadata = folder / METADATA
    if not metadata.is_file():
        return None
    for line in metadata.read_text().splitlines():
        try:
            image = folder / json.loads(line)["image"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return metadata
        if not finished_image(image):
            return image
    return None


def _image_path(out: Path, taxon: Taxon, index: int) -> Path:
    return out / taxon.slug / f"{index:04d}.png"


def _write_png(image: PIL.Image.Image, path: Path) -> None:
    """Atomic: a killed run leaves at most a hidden `.partial` file, never a truncated PNG, and the write that
    finishes the image removes it (`taxabench.files.writing`)."""
    with writing(path, "sample") as temporary:
        image.save(temporary, format="PNG")


def _check_settings(out: Path, settings: dict, is_main: bool) -> None:
    path = out / SETTINGS
    if path.is_file():
        old = read_json(path, f"sample it again: `taxabench run --force sample/{out.name}`")
        changed = [k for k in settings if k != "batch_size" and old.get(k) != settings[k]]
        if changed:
            what = "; ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in changed[:3])
            raise TaxabenchError(
                f"{out} holds samples made with other settings ({what}); redo them with `taxabench run --config "
                f"FILE --force sample/{out.name}`, sample into another run folder (`taxabench sample --config FILE "
                f"--method {out.name.split('+')[0]} --run DIR`), or remove that folder"
            )
        return
    if is_main:
        write_json(path, settings, "samples-settings")


def _write_metadata(out: Path, work: list[tuple[Taxon, int]], seed: int, settings: dict) -> None:
    """One line per image in the evaluator's contract (`taxabench.metrics.samples`), plus how it was made."""
    with writing(out / METADATA, "samples-metadata") as temporary, open(temporary, "w") as handle:
        for taxon, j in work:
            write_metadata_line(
                handle, _image_path(out, taxon, j), out, taxon, seed=derive_seed(seed, "sample", taxon.id, j),
                method=out.name, trained_method=settings["method"], name=taxon.name, ranks=list(taxon.ranks),
                index=j, **{k: settings[k] for k in ("guidance", "guidance_scale", "steps", "scheduler", "precision",
                                                      "stage", "checkpoint", "backbone")},
            )


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------


def sample_grid(folder: Path, out: Path, max_taxa: int = 8, max_images: int = 8) -> Path:
    """Taxa (rows, from metadata.jsonl) x images (columns) of a samples folder, as one PNG."""
    rows: dict[str, list[Path]] = {}
    for line in (folder / METADATA).read_text().splitlines():
        entry = json.loads(line)
        taxon_rows = rows.setdefault(entry["taxon_id"], [])
        if len(taxon_rows) < max_images:
            taxon_rows.append(folder / entry["image"])
    chosen = _spread(list(rows), max_taxa)
    return _grid_figure([[PIL.Image.open(p) for p in rows[t]] for t in chosen],
                        [t.split("/")[-1] for t in chosen], out)


def stage_grid(
    config: ExperimentConfig,
    method_name: str,
    run_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    taxa: Sequence[str] | None = None,
    images_per_taxon: int = 2,
    seed: int | None = None,
) -> Path:
    """How a progressive method's images of the same species sharpen stage by stage: rows = stages
    (class → species), columns = taxa x images with the same seeds, at the run's `data.image_size` (not the
    backbone's: SD 1.5 would draw 512 px whatever the run samples). Written to `<samples>/stages.png` by default."""
    from accelerate import PartialState

    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    device = PartialState(cpu=cpu_only()).device
    folder = RunLayout(run_dir).checkpoints(method_name, seed)
    final = load_checkpoint(folder, expect_method=method_name)
    chosen = list(taxa) if taxa else [t.id for t in _spread(final.taxonomy.taxa(final.taxonomy.ranks[-1]), 3)]
    rows, labels = [], []
    stages = [s["index"] for s in final.manifest["stages"]] or [None]
    for index in stages:
        trained = final if index is None or index == stages[-1] else load_checkpoint(folder, index)
        pipeline = TaxonomyPipeline.from_trained(trained, config.sample.scheduler)
        pipeline.to(device, sampling_dtype(config.sample.precision, device))
        pipeline.set_progress_bar_config(disable=True)
        result = pipeline(chosen, num_images_per_taxon=images_per_taxon, seed=config.seed,
                          guidance=config.sample.guidance, guidance_scale=config.sample.guidance_scale,
                          num_inference_steps=config.sample.steps, height=config.data.image_size,
                          width=config.data.image_size)
        rows.append(result.images)
        del pipeline  # one stage's weights at a time
        stage = trained.stage
        labels.append(f"stage {stage.index}: {stage.description}" if stage else "untrained")
    target = Path(out) if out is not None else RunLayout(run_dir).stage_figure(method_name, seed)
    names = [final.taxonomy.resolve(t).scientific_name for t in chosen]
    return _grid_figure(rows, labels, target, [n if j == 0 else "" for n in names for j in range(images_per_taxon)])


def _spread(items: list, count: int) -> list:
    """`count` items evenly spread over the list (all of them if there are fewer)."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else items[:1]


def _grid_figure(rows: list[list[PIL.Image.Image]], labels: list[str], out: Path,
                 column_labels: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(r) for r in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.2 * columns + 1.6, 1.2 * len(rows)), squeeze=False)
    for r, (row, label) in enumerate(zip(rows, labels)):
        for c in range(columns):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            if c < len(row):
                axis.imshow(row[c])
            else:
                axis.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    for c, title in enumerate(column_labels or []):
        axes[0][c].set_title(title, fontsize=7, loc="left")
    figure.tight_layout()
    with writing(out, "figure") as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    return out
