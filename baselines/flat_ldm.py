"""`flat-ldm`: a class-conditional latent diffusion model on flat species labels — no hierarchy, no text.

Each species id owns `tokens` learned embedding vectors, the UNet's cross-attention context; one extra id stands
for "no species" (condition dropout, and the negative of classifier-free guidance). The UNet trains with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from taxabench.errors import TaxabenchError
from taxabench.methods.base import Labels, Method, Stage, TextEncoder, TrainingDraws, drop


@dataclass
class FlatLDMOptions:
    tokens: int = 4  # context tokens per species
    steps: int | None = None  # default: train.steps_per_stage x number of ranks (TaxaDiffusion's total budget)


class FlatLDM(Method):
    name = "flat-ldm"  # its registry name (taxabench.methods), also when imported directly
    description = "flat-label LDM: species id -> learned context tokens; UNet trained; no hierarchy, no text"
    Options = FlatLDMOptions
    trains_full_unet = True
    required_ranks = ("species",)
    guidance_kinds = ("cfg", "none")
    generates_unseen_species = False
    unseen_species_reason = "one learned code per training species: a species it never saw has no code"

    def __init__(self, options: FlatLDMOptions, ranks, species, backbone):
        super().__init__(options, ranks, species, backbone)
        if options.tokens < 1:
            raise TaxabenchError(f"method_options.{self.name}.tokens: must be at least 1, got {options.tokens}")
        self.index = {labels: i for i, labels in enumerate(self.species)}
        self.null = len(self.species)
        width = backbone.cross_attention_dim
        self.conditioner = nn.ModuleDict({"species": nn.Embedding(len(self.species) + 1, options.tokens * width)})
        nn.init.normal_(self.conditioner["species"].weight, std=1.0)  # the scale of layer-normed text features

    def stages(self, steps_per_stage: int) -> list[Stage]:
        steps = self.options.steps or steps_per_stage * len(self.ranks)
        return [Stage(0, steps, "species embeddings + whole UNet")]

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        return [*self.conditioner.parameters(), *self.backbone.unet.parameters()]

    def species_index(self, labels: Labels) -> int:
        if labels not in self.index:
            known = [label for label in labels if label is not None]
            raise TaxabenchError(
                f"method '{self.name}' generates training species only; {'/'.join(known)} is not one"
            )
        return self.index[labels]

    def condition_inputs(
        self, labels: Sequence[Labels], stage: Stage | None, text: TextEncoder, draws: TrainingDraws | None = None
    ) -> dict[str, Any]:
        if draws is None:
            ids = [self.species_index(tuple(item)) for item in labels]
        else:  # training images whose species is unknown (data.unknown_species: keep) train the "no species" id
            ids = [self.null if drop(g, draws.dropout) else self.index.get(tuple(item), self.null)
                   for item, g in zip(labels, draws.per_sample)]
            draws.finest_real = [i != self.null for i in ids]
        return {"species": torch.tensor(ids)}

    def negative_inputs(
        self, kind: str, labels: Sequence[Labels], stage: Stage | None, text: TextEncoder
    ) -> dict[str, Any]:
        return {"species": torch.full((len(labels),), self.null)}

    def encoder_hidden_states(self, inputs: dict[str, Any], stage: Stage | None) -> torch.Tensor:
        embedding = self.conditioner["species"]
        vectors = embedding(inputs["species"].to(embedding.weight.device))
        return vectors.unflatten(1, (self.options.tokens, -1))
