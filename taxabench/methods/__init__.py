"""The method registry: TaxaDiffusion, its ablations and the baselines, one file each, registered here by name.

`build_method(name, config, ranks, species, backbone)` is how the training loop and the sampler get a method:
options validated from `method_options.<name>`, modules built deterministically from `config.seed`.

Methods are imported when first used (`import taxabench.methods` does not import torch). Third-party methods
register under the entry-point group `taxabench.methods` (name -> `module:Class`, a `Method` subclass).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from taxabench.registry import Registry

if TYPE_CHECKING:
    from taxabench.methods.base import GUIDANCE_KINDS, Labels, LoraSettings, Method, Stage, TrainingDraws


def _set_name(name: str, cls: type) -> None:
    cls.name = name


METHODS: Registry[Method] = Registry("method", "taxabench.methods.base:Method", group="taxabench.methods",
                                     on_load=_set_name, listed=("generates_unseen_species", "unseen_species_reason"))


def register_method(name: str, cls: type[Method]) -> type[Method]:
    """Register a `Method` subclass under `name` (its checkpoint and sample folder name)."""
    return METHODS.register(name, cls)


def get_method(name: str) -> type[Method]:
    """The class registered as `name`; an unknown name is an error listing the valid ones."""
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()


def build_method(name: str, config, ranks: Sequence[str], species: Sequence[Labels], backbone) -> Method:
    """Method `name` with its options from `config.method_options[name]`, built on `backbone` from `config.seed`."""
    import torch

    cls = get_method(name)
    options = cls.parse_options(config.method_options.get(name), f"method_options.{name}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        method = cls(options, ranks, species, backbone)
    method.string_format = config.data.rank_strings
    return method


_TEXT_PROMPT = 'its prompt names any species as text ("a photo of <Genus> <epithet>")'
_FLAT_CODE = "one learned code per training species: a species it never saw has no code"
_RANK_MODULES = ("its rank modules read each rank's string through the frozen text encoder: a new species is a new "
                 "species string under a known lineage")
# name -> (module:Class, description, generates unseen species, why): imported when first used; test_registry checks
# this text against the classes
_BUILTINS = {
    "taxadiffusion": ("taxabench.methods.taxadiffusion:TaxaDiffusion",
                      "TaxaDiffusion: per-rank modules summed into the UNet context, trained progressively (paper §3)",
                      True, _RANK_MODULES),
    "taxadiffusion-joint": ("taxabench.methods.taxadiffusion:TaxaDiffusionJoint",
                            "TaxaDiffusion ablation: every rank module and the LoRA trained at once, in one stage",
                            True, _RANK_MODULES),
    "taxadiffusion-random": ("taxabench.methods.taxadiffusion:TaxaDiffusionRandom",
                             "TaxaDiffusion ablation: at each step a random rank k; its module (and the LoRA) train "
                             "on c^(k)", True, _RANK_MODULES),
    "flat-ldm": ("baselines.flat_ldm:FlatLDM",
                 "flat-label LDM: species id -> learned context tokens; UNet trained; no hierarchy, no text",
                 False, _FLAT_CODE),
    "sd-zeroshot": ("baselines.sd_zeroshot:SDZeroShot", "Stable Diffusion zero-shot: no training, species text prompt",
                    True, _TEXT_PROMPT),
    "sd-lora": ("baselines.sd_lora:SDLora", "Stable Diffusion + LoRA fine-tuned on species text prompts",
                True, _TEXT_PROMPT),
    "sd-finetune": ("baselines.sd_finetune:SDFinetune",
                    "Stable Diffusion with the whole UNet fine-tuned on species text prompts", True, _TEXT_PROMPT),
    # equal-capacity controls (baselines/controls.py)
    "flat-ldm-lora": ("baselines.controls:FlatLDMLora",
                      "control: flat-LDM species embeddings with a frozen UNet and a LoRA (code-only at LoRA capacity)",
                      False, _FLAT_CODE),
    "sd-lora-matched": ("baselines.controls:SDLoraMatched",
                        "control: SD+LoRA with the LoRA rank that matches TaxaDiffusion's trainable parameters",
                        True, _TEXT_PROMPT),
    "taxadiffusion-gated": ("baselines.controls:TaxaDiffusionGated",
                            "control (deviation from the paper): TaxaDiffusion with each rank module's output behind a "
                            "zero-initialised gate", True, _RANK_MODULES),
}
for _name, (_target, _description, _unseen, _why) in _BUILTINS.items():
    METHODS.register_lazy(_name, _target, _description, generates_unseen_species=_unseen, unseen_species_reason=_why)

_BASE_NAMES = ("GUIDANCE_KINDS", "Labels", "LoraSettings", "Method", "Stage", "TrainingDraws")


def __getattr__(name: str):
    if name in _BASE_NAMES:
        return getattr(importlib.import_module("taxabench.methods.base"), name)
    raise AttributeError(f"module 'taxabench.methods' has no attribute {name!r}")


__all__ = [
    "GUIDANCE_KINDS",
    "METHODS",
    "LoraSettings",
    "Method",
    "Stage",
    "TrainingDraws",
    "build_method",
    "get_method",
    "list_methods",
    "register_method",
]
