"""What a method is: its options, its stages, its conditioning, its guidance negative and its trained parts.

The training loop (`taxabench/train.py`) and the sampler (`taxabench/sample.py`) talk to every method through this
class only and never ask for its name. A method

- validates its options (a dataclass, `method_options.<name>` in the config, strict like the rest of the config);
- builds its conditioning modules on a backbone (`__init__`, deterministic from the torch seed), and may add a LoRA
  adapter to the backbone's UNet;
- declares its stages (`stages`), each with a step budget, and which parameters train in each
  (`trainable_parameters`);
- turns a batch of label tuples into the UNet's `encoder_hidden_states` in two steps: `condition_inputs` (frozen
  work: strings, the frozen text encoder, condition dropout while training) and `encoder_hidden_states` (its
  trainable modules, inside the training forward so that gradients reach them);
- gives the negative branch of guidance (`negative_inputs`): `cfg`, the unconditional condition, or `taxonomy`,
  the top-rank-only condition;
- saves and loads what it trained (`save` / `load`): its modules as safetensors, a UNet LoRA in the diffusers LoRA
  format (`pytorch_lora_weights.safetensors`, loadable by `StableDiffusionPipeline.load_lora_weights`), a fully
  trained UNet as a diffusers `unet/` folder. No pickles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from taxabench.config import RankStrings
from taxabench.errors import ConfigError, TaxabenchError
from taxabench.guidance import guidance_kinds

Labels = tuple[str | None, ...]  # one label per dataset rank, coarse to fine; None = unknown
TextEncoder = Callable[[list[str]], torch.Tensor]  # strings -> (n, tokens, width), cached by the caller
GUIDANCE_KINDS = guidance_kinds()  # every registered kind (taxabench/guidance.py)

CONDITIONER_FILE = "conditioner.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"  # the diffusers LoRA file name
UNET_FOLDER = "unet"


@dataclass(frozen=True)
class Stage:
    """One training stage: `index` orders them, `name` is its checkpoint folder (`stage-<index>`)."""

    index: int
    steps: int  # optimizer steps
    description: str  # what trains, for progress bars and logs

    @property
    def name(self) -> str:
        return f"stage-{self.index}"


@dataclass
class TrainingDraws:
    """The randomness a method may use for one training micro-batch, fixed by (seed, stage, step, sample).

    `per_sample[i]` belongs to the i-th sample of the batch (drawn in the same order whatever the batch size or
    process count); `per_step` is the same on every process (e.g. a rank chosen for the whole step).
    """

    per_sample: list[torch.Generator]
    per_step: torch.Generator
    dropout: float  # condition dropout probability (train.condition_dropout)
    dropout_mode: str = "cascade"  # train.condition_dropout_mode: single-rank or cascade
    # filled by the method: per sample, whether its finest conditioned rank kept its real name (the training log
    # reports the fraction per step)
    finest_real: list[bool] = field(default_factory=list)


@dataclass
class LoraSettings:
    """A LoRA adapter on the UNet's attention projections (peft), as the authors' code and diffusers add it."""

    rank: int = 4
    alpha: int = 4
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


class Method:
    """Base class of methods; subclasses are registered by name in `taxabench.methods`.

    Subclasses set `Options` (a dataclass), `description`, `default_guidance`, `guidance_kinds`, and implement
    `stages`, `trainable_parameters`, `condition_inputs`, `negative_inputs` and (if they have modules)
    `encoder_hidden_states`.
    """

    name: ClassVar[str] = ""  # set by `register_method`
    description: ClassVar[str] = ""
    Options: ClassVar[type] = type(None)
    default_guidance: ClassVar[str] = "cfg"
    guidance_kinds: ClassVar[tuple[str, ...]] = ("cfg", "none")
    trains_full_unet: ClassVar[bool] = False  # saved as a diffusers `unet/` folder
    required_ranks: ClassVar[tuple[str, ...]] = ()
    ablation_of: ClassVar[str | None] = None  # the method this one ablates (reports group them together)
    # whether the method can generate a species it was not trained on from its label tuple (data.unseen_species: a
    # withheld species of a known genus), and why or why not, in a sentence the report prints
    generates_unseen_species: ClassVar[bool] = False
    unseen_species_reason: ClassVar[str] = "it does not declare that it can condition on a species outside its training set"

    def __init__(self, options: Any, ranks: Sequence[str], species: Sequence[Labels], backbone) -> None:
        """`ranks`: the dataset's ranks; `species`: every training species' labels, sorted (the label space)."""
        self.options = options
        self.ranks = tuple(ranks)
        self.species = [tuple(s) for s in species]
        self.backbone = backbone
        self.conditioner: nn.Module = nn.ModuleDict()  # the method's own modules (empty for text-only methods)
        self.lora: LoraSettings | None = None
        self.string_format = RankStrings()  # data.rank_strings, set by `build_method`
        self.check_dataset_ranks(options, self.ranks)

    @classmethod
    def check_dataset_ranks(cls, options: Any, ranks: Sequence[str]) -> None:
        """Fail if the dataset lacks a rank the method needs (called before anything heavy loads)."""
        missing = [r for r in cls.required_ranks if r not in ranks]
        if missing:
            raise TaxabenchError(
                f"method '{cls.name}' needs rank {missing[0]!r}, which the dataset lacks (it has {', '.join(ranks)})"
            )

    # -- options --------------------------------------------------------------------------------------------------
    @classmethod
    def parse_options(cls, raw: dict[str, Any] | None, where: str) -> Any:
        """The options dataclass from `method_options.<name>`; unknown keys and wrong types are `ConfigError`s."""
        from taxabench.config import from_dict

        options = from_dict(cls.Options, raw or {}, where)
        steps = getattr(options, "steps", None)
        if steps is not None and steps < 1:
            raise ConfigError(f"{where}.steps: a stage budget must be at least 1 step, got {steps}")
        return options

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    # -- stages ---------------------------------------------------------------------------------------------------
    def stages(self, steps_per_stage: int) -> list[Stage]:
        """The stages in training order; `steps_per_stage` is the budget a stage gets unless options say otherwise."""
        raise NotImplementedError

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        """The parameters that train in `stage` (everything else stays bit-identical)."""
        raise NotImplementedError

    def owned_parameters(self) -> list[nn.Parameter]:
        """Parameters the method added (its modules and LoRA): kept in float32 even when frozen."""
        return [*self.conditioner.parameters(), *self.lora_parameters()]

    # -- conditioning ---------------------------------------------------------------------------------------------
    def condition_inputs(
        self, labels: Sequence[Labels], stage: Stage | None, text: TextEncoder, draws: TrainingDraws | None = None
    ) -> dict[str, Any]:
        """Frozen work for a batch: strings, text embeddings, condition dropout (`draws` given only in training)."""
        raise NotImplementedError

    def negative_inputs(
        self, kind: str, labels: Sequence[Labels], stage: Stage | None, text: TextEncoder
    ) -> dict[str, Any]:
        """The guidance negative for each label tuple: `cfg` unconditional, `taxonomy` top-rank only."""
        raise NotImplementedError

    def encoder_hidden_states(self, inputs: dict[str, Any], stage: Stage | None) -> torch.Tensor:
        """The UNet's cross-attention context, `batch x tokens x cross_attention_dim`."""
        return inputs["context"]

    def vanilla_cfg_negative(self, count: int, text: TextEncoder) -> dict[str, Any]:
        """The `vanilla-cfg` negative: the text encoder's raw embedding of `""`, through no trained module (the
        authors' pipeline, pipeline_stable_diffusion_taxonomy.py:230-244: `encode_prompt` with no negative prompt)."""
        return {"context": text([""] * count)}

    def check_guidance(self, kind: str) -> str:
        kind = self.default_guidance if kind == "default" else kind
        if kind not in self.guidance_kinds:
            raise TaxabenchError(
                f"method '{self.name}' has no {kind!r} guidance; it supports {', '.join(self.guidance_kinds)}"
            )
        return kind

    # -- LoRA -----------------------------------------------------------------------------------------------------
    def add_lora(self, settings: LoraSettings) -> None:
        """Add a LoRA adapter to the backbone's UNet (its B matrices start at zero: the UNet is unchanged)."""
        from peft import LoraConfig

        self.lora = settings
        self.backbone.unet.add_adapter(
            LoraConfig(
                r=settings.rank, lora_alpha=settings.alpha, init_lora_weights="gaussian",
                target_modules=list(settings.targets),
            )
        )

    def lora_parameters(self) -> list[nn.Parameter]:
        if self.lora is None:
            return []
        return [p for name, p in self.backbone.unet.named_parameters() if "lora_" in name]

    # -- saving ---------------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> list[str]:
        """Write the trained parts into `folder`; returns the file names written."""
        from diffusers import StableDiffusionPipeline
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        written = []
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.conditioner.state_dict().items()}
        if state:
            save_file(state, folder / CONDITIONER_FILE, metadata={"method": self.name})
            written.append(CONDITIONER_FILE)
        if self.lora is not None:
            from diffusers.utils import convert_state_dict_to_diffusers

            lora_state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.backbone.unet))
            lora_state = {k: v.detach().float().cpu().contiguous() for k, v in lora_state.items()}
            StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=lora_state, weight_name=LORA_FILE)
            written.append(LORA_FILE)
        if self.trains_full_unet:
            self.backbone.unet.save_pretrained(folder / UNET_FOLDER)
            written.append(UNET_FOLDER)
        return written

    def load(self, folder: Path) -> None:
        """Load what `save` wrote; a missing file or a key mismatch is an error, never a silent partial load."""
        from safetensors.torch import load_file

        expected = self.expected_files()
        missing = [name for name in expected if not (folder / name).exists()]
        if missing:
            raise TaxabenchError(f"checkpoint {folder} lacks {missing[0]} (method '{self.name}' writes {expected})")
        if CONDITIONER_FILE in expected:
            state = load_file(folder / CONDITIONER_FILE)
            _load_strict(self.conditioner, state, folder / CONDITIONER_FILE)
        if LORA_FILE in expected:
            self._load_lora(folder / LORA_FILE)
        if UNET_FOLDER in expected:
            state = load_file(_single_safetensors(folder / UNET_FOLDER))
            _load_strict(self.backbone.unet, state, folder / UNET_FOLDER)

    def expected_files(self) -> list[str]:
        files = []
        if any(True for _ in self.conditioner.parameters()):
            files.append(CONDITIONER_FILE)
        if self.lora is not None:
            files.append(LORA_FILE)
        if self.trains_full_unet:
            files.append(UNET_FOLDER)
        return files

    def _load_lora(self, path: Path) -> None:
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = {k.removeprefix("unet."): v for k, v in load_file(path).items() if k.startswith("unet.")}
        result = set_peft_model_state_dict(self.backbone.unet, convert_unet_state_dict_to_peft(state), "default")
        unexpected = getattr(result, "unexpected_keys", [])
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if unexpected or missing:
            raise TaxabenchError(
                f"LoRA file {path} does not fit this UNet "
                f"({len(unexpected)} unexpected keys, e.g. {unexpected[:1]}; {len(missing)} missing, e.g. {missing[:1]})"
            )


def _single_safetensors(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise TaxabenchError(f"{folder}: expected one .safetensors file, found {[f.name for f in files]}")
    return files[0]


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    own = module.state_dict()
    # the UNet of a LoRA method carries adapter keys that a full-UNet file does not have
    own = {k: v for k, v in own.items() if "lora_" not in k}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise TaxabenchError(
            f"{source} does not fit this method's modules: missing {missing[:2]}, unexpected {unexpected[:2]}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def move_inputs(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A method's condition inputs on `device` (tensors moved, everything else as is)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def drop(generator: torch.Generator, probability: float) -> bool:
    """One Bernoulli draw from a sample's generator (condition dropout)."""
    return bool(torch.rand((), generator=generator).item() < probability)


def dropped_ranks(generator: torch.Generator, probability: float, ranks: int, mode: str) -> list[bool]:
    """Which of `ranks` ranks (coarse to fine) condition dropout replaces by `"<rank>: None"` for one sample.

    `single-rank`, the authors' FishNet/BIOSCAN scheme (TaxaDiffusion/taxa_diffusion/datasets/fishnet.py:136-156):
    one uniform draw; rank r is dropped alone when it falls in [r·p, (r+1)·p), so each rank with probability p and
    never two (their p = 1/21: `randint(0, 20)`, values 0..4 drop one of five ranks). `cascade`: one Bernoulli(p)
    draw per rank whatever the outcome, and a dropped rank takes every finer rank with it.
    """
    if mode == "single-rank":
        if probability * ranks > 1 + 1e-9:
            raise TaxabenchError(
                f"train.condition_dropout: single-rank dropout of {ranks} ranks needs p <= 1/{ranks}, got {probability}"
            )
        u = torch.rand((), generator=generator).item()
        hit = int(u // probability) if probability > 0 else ranks
        return [r == hit for r in range(ranks)]
    out, dropped = [], False
    for _ in range(ranks):
        dropped = drop(generator, probability) or dropped
        out.append(dropped)
    return out
