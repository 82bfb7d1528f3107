"""The method registry: TaxaDiffusion, its ablations and the baselines, one file each, registered here by name.

`build_method(name, config, ranks, species, backbone)` is how the training loop and the sampler get a method:
options validated from `method_options.<name>`, modules built deterministically from `config.seed`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taxabench.methods.base import GUIDANCE_KINDS, Labels, LoraSettings, Method, Stage, TrainingDraws
from taxabench.registry import Registry

METHODS: Registry[Method] = Registry("method", Method)


def register_method(name: str, cls: type[Method]) -> type[Method]:
    """Register a `Method` subclass under `name` (its checkpoint and sample folder name)."""
    registered = METHODS.register(name, cls)
    cls.name = name
    return registered


def get_method(name: str) -> type[Method]:
    """The class registered as `name`; an unknown name is an error listing the valid ones."""
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()


def build_method(name: str, config, ranks: Sequence[str], species: Sequence[Labels], backbone) -> Method:
    """Method `name` with its options from `config.method_options[name]`, built on `backbone` from `config.seed`."""
    cls = get_method(name)
    options = cls.parse_options(config.method_options.get(name), f"method_options.{name}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return cls(options, ranks, species, backbone)


def _register_builtins() -> None:
    from baselines.controls import FlatLDMLora, SDLoraMatched, TaxaDiffusionGated
    from baselines.flat_ldm import FlatLDM
    from baselines.sd_finetune import SDFinetune
    from baselines.sd_lora import SDLora
    from baselines.sd_zeroshot import SDZeroShot
    from taxabench.methods.taxadiffusion import TaxaDiffusion, TaxaDiffusionJoint, TaxaDiffusionRandom

    builtins = {
        "taxadiffusion": TaxaDiffusion,
        "taxadiffusion-joint": TaxaDiffusionJoint,
        "taxadiffusion-random": TaxaDiffusionRandom,
        "flat-ldm": FlatLDM,
        "sd-zeroshot": SDZeroShot,
        "sd-lora": SDLora,
        "sd-finetune": SDFinetune,
        # equal-capacity controls (baselines/controls.py)
        "flat-ldm-lora": FlatLDMLora,
        "sd-lora-matched": SDLoraMatched,
        "taxadiffusion-gated": TaxaDiffusionGated,
    }
    for name, cls in builtins.items():
        register_method(name, cls)


_register_builtins()

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
