"""Equal-capacity controls: variants that ask whether a method's result comes from its idea or from its capacity.

At equal optimizer steps the methods train very different numbers of parameters (flat-LDM trains the whole UNet;
TaxaDiffusion one rank module per stage and a rank-4 LoRA in the first). These controls are registered as ablations
of the method they control, so the report puts them next to it:

- `flat-ldm-lora`: flat-LDM's species embeddings with the UNet frozen and a LoRA (TaxaDiffusion's: rank 4,
  alpha 4) trained in its place — code-only conditioning at LoRA capacity;
- `sd-lora-matched`: SD+LoRA whose LoRA rank is chosen so that its trainable parameters match the parameters
  TaxaDiffusion trains over its whole schedule on the same backbone (all rank modules + its LoRA);
- `taxadiffusion-gated`: TaxaDiffusion with each rank module's output multiplied by a scalar gate that starts at
  zero and trains with its module. **A deviation from the paper** (the authors' modules add their output directly):
  a new rank then starts as a no-op instead of perturbing a context the UNet has adapted to, which tests whether
  stages spend their budget re-equilibrating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from baselines.flat_ldm import FlatLDM, FlatLDMOptions
from baselines.sd_lora import SDLora, SDLoraOptions
from taxabench.errors import TaxabenchError
from taxabench.methods.base import LoraSettings, Stage
from taxabench.methods.taxadiffusion import TaxaDiffusion, TaxaDiffusionOptions, TaxonomyConditioner


@dataclass
class FlatLDMLoraOptions(FlatLDMOptions):
    lora_rank: int = 4
    lora_alpha: int = 4


class FlatLDMLora(FlatLDM):
    name = "flat-ldm-lora"  # its registry name (taxabench.methods), also when imported directly
    description = "control: flat-LDM species embeddings with a frozen UNet and a LoRA (code-only at LoRA capacity)"
    Options = FlatLDMLoraOptions
    trains_full_unet = False
    ablation_of = "flat-ldm"

    def __init__(self, options: FlatLDMLoraOptions, ranks, species, backbone):
        super().__init__(options, ranks, species, backbone)
        self.add_lora(LoraSettings(rank=options.lora_rank, alpha=options.lora_alpha))

    def stages(self, steps_per_stage: int) -> list[Stage]:
        steps = self.options.steps or steps_per_stage * len(self.ranks)
        return [Stage(0, steps, "species embeddings + UNet LoRA")]

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        return [*self.conditioner.parameters(), *self.lora_parameters()]


@dataclass
class SDLoraMatchedOptions:
    lora_alpha_per_rank: float = 1.0  # alpha = this x the chosen rank (SD+LoRA's default alpha 4 at rank 4)
    steps: int | None = None  # default: train.steps_per_stage x number of ranks (TaxaDiffusion's total budget)


class SDLoraMatched(SDLora):
    name = "sd-lora-matched"  # its registry name (taxabench.methods), also when imported directly
    description = "control: SD+LoRA with the LoRA rank that matches TaxaDiffusion's trainable parameters"
    Options = SDLoraMatchedOptions
    ablation_of = "sd-lora"

    def __init__(self, options: SDLoraMatchedOptions, ranks, species, backbone):
        rank = matched_lora_rank(ranks, backbone)
        alpha = max(1, round(options.lora_alpha_per_rank * rank))
        super().__init__(SDLoraOptions(lora_rank=rank, lora_alpha=alpha, steps=options.steps), ranks, species,
                         backbone)
        self.options = options  # what the manifest records; the rank follows from the backbone and the ranks
        self.matched_rank = rank


def lora_parameters_per_rank(unet: nn.Module, targets: Sequence[str]) -> int:
    """Parameters a rank-1 LoRA adds on the UNet's attention projections `targets`: in + out features each."""
    total = 0
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear) and any(name.endswith(f".{t}") or name == t for t in targets):
            total += module.in_features + module.out_features
    return total


def taxadiffusion_trainable_parameters(ranks: Sequence[str], backbone) -> int:
    """Parameters TaxaDiffusion (default options) trains over its whole schedule on `backbone`: every rank module and
    its LoRA, counted on the modules it would build, not by formula."""
    options = TaxaDiffusionOptions()
    width = backbone.text_width
    with torch.random.fork_rng(devices=[]):
        conditioner = TaxonomyConditioner(len(ranks), width, options.layers, options.heads,
                                          options.feedforward or round(width * 8 / 3), options.dropout)
    modules = sum(p.numel() for p in conditioner.parameters())
    return modules + options.lora_rank * lora_parameters_per_rank(backbone.unet, LoraSettings().targets)


def matched_lora_rank(ranks: Sequence[str], backbone) -> int:
    per_rank = lora_parameters_per_rank(backbone.unet, LoraSettings().targets)
    if per_rank == 0:
        raise TaxabenchError("sd-lora-matched: the UNet has no attention projections to put a LoRA on")
    return max(1, round(taxadiffusion_trainable_parameters(ranks, backbone) / per_rank))


class GatedConditioner(TaxonomyConditioner):
    """TaxonomyConditioner whose rank modules' outputs pass through scalar gates that start at zero."""

    def __init__(self, ranks: int, width: int, layers: int, heads: int, feedforward: int, dropout: float):
        super().__init__(ranks, width, layers, heads, feedforward, dropout)
        self.gates = nn.ParameterList(nn.Parameter(torch.zeros(())) for _ in range(ranks))

    def forward(self, embeddings: torch.Tensor, depth: int, trained_rank: int | None = None) -> torch.Tensor:
        context = torch.zeros_like(embeddings[:, 0])
        for rank in range(depth + 1):
            frozen = trained_rank is not None and rank != trained_rank
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                context = context + self.gates[rank] * self.rank_modules[rank](embeddings[:, rank])
        return context


class TaxaDiffusionGated(TaxaDiffusion):
    name = "taxadiffusion-gated"  # its registry name (taxabench.methods), also when imported directly
    description = ("control (deviation from the paper): TaxaDiffusion with each rank module's output behind a "
                   "zero-initialised gate")
    ablation_of = "taxadiffusion"

    def __init__(self, options: TaxaDiffusionOptions, ranks, species, backbone):
        super().__init__(options, ranks, species, backbone)
        old = self.conditioner
        self.conditioner = GatedConditioner(len(self.conditioned_ranks), backbone.text_width, options.layers,
                                            options.heads, options.feedforward or round(backbone.text_width * 8 / 3),
                                            options.dropout)
        self.conditioner.rank_modules.load_state_dict(old.rank_modules.state_dict())  # same initial modules

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        return [*super().trainable_parameters(stage), self.conditioner.gates[stage.index]]


__all__ = ["FlatLDMLora", "SDLoraMatched", "TaxaDiffusionGated", "matched_lora_rank"]
