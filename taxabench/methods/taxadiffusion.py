"""TaxaDiffusion (Monsefi et al., "Progressively Trained Diffusion Model for Fine-Grained Species Generation",
arXiv 2506.01923, ICCV 2025), §3, as the paper describes it and the authors' code
(github.com/aminK8/TaxaDiffusion, commit add8893; paths below under TaxaDiffusion/) implements it.

Conditioning (§3.2): each rank of a lineage becomes its own string (`"class: Actinopterygii"`, ...,
`"specific_epithet: Abudefduf saxatilis"` with the authors' FishNet strings, `data.rank_strings`), encoded
separately by the frozen text encoder (tokens x width each). Each rank r has its own small module T_r, two
Transformer encoder layers of the text encoder's width with 8 heads (taxa_diffusion/models/taxonomy.py:10-15). The
context for rank depth k is the sum c^(k) = Σ_{r ≤ k} T_r(E(s_r)) (taxonomy.py:18-24): it replaces the prompt
embedding in the UNet's cross-attention; finer ranks are simply absent from the sum.

Progressive training (§3.3): stage k trains T_k only; T_0..T_{k-1} are frozen. A LoRA (rank 4, alpha 4) on the
UNet's attention projections adapts it to the domain in stage 0 and stays frozen afterwards.

Condition dropout (`train.condition_dropout_mode`, `dropped_ranks` in methods/base.py): `single-rank` is the
authors' FishNet/BIOSCAN scheme (datasets/fishnet.py:136-156, bioscan.py:123-143): per sample an integer in 0..20,
and 0..4 replace exactly one rank's string by `"<rank>: None"`; never two ranks, never the whole lineage.
`cascade` is taxabench's earlier scheme, not the authors': each rank drops with probability p and takes every finer
rank with it, so the fully unknown lineage (the `cfg` negative below) is trained with probability p. (The authors'
iNat loader cascades too, inaturalist.py:91-109, but only over integer labels its training never reads: its text
strings, inaturalist.py:189-197, are never dropped.)

Guidance (§3.4, taxabench/guidance.py): `taxonomy`, ε̃ = (1+w)·ε(x, t, c^(i)) − w·ε(x, t, c^(0)), the top-rank-only
condition through its module in place of the unconditional branch (pipeline_stable_diffusion_taxonomy.py:245-246);
at stage 0, where c^(0) is the positive, the raw text embedding of `"<top rank>: None"` (pipeline:177-180, 244).
`vanilla-cfg`, the authors' vanilla CFG: the raw text embedding of `""` (pipeline:230-244), `"<top rank>: None"` at
stage 0 as above. `cfg`: the all-`None` lineage through the trained modules (a trained unconditional; taxabench's).
The sampler applies the formula.

Ablations (paper §4.4), registered as their own methods below: all ranks trained jointly in one stage; a random
rank's module trained at each step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from taxabench.errors import TaxabenchError
from taxabench.methods.base import (
    Labels,
    LoraSettings,
    Method,
    Stage,
    TextEncoder,
    TrainingDraws,
    dropped_ranks,
)
from taxabench.taxonomy import check_ranks, rank_prompts, unknown_rank_prompt


@dataclass
class TaxaDiffusionOptions:
    ranks: list[str] | None = None  # ranks conditioned on, coarse to fine; default: all the dataset has
    layers: int = 2  # Transformer encoder layers per rank module
    heads: int = 8
    # hidden size of each layer's MLP; None: 8/3 x the width, i.e. 2048 at SD's width 768 (PyTorch's default,
    # which the authors' code uses), 171 for the tiny backbone's 64
    feedforward: int | None = None
    dropout: float = 0.1  # inside the rank modules (PyTorch's default, as in the authors' code)
    lora_rank: int = 4
    lora_alpha: int = 4
    steps: int | None = None  # optimizer steps per stage; default: train.steps_per_stage


class TaxonomyConditioner(nn.Module):
    """One Transformer encoder per rank; the context at depth k is the sum of ranks 0..k's outputs (§3.2)."""

    def __init__(self, ranks: int, width: int, layers: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.rank_modules = nn.ModuleList(
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(
                    d_model=width, nhead=heads, dim_feedforward=feedforward, dropout=dropout, batch_first=True
                ),
                num_layers=layers,
                enable_nested_tensor=False,
            )
            for _ in range(ranks)
        )

    def forward(self, embeddings: torch.Tensor, depth: int, trained_rank: int | None = None) -> torch.Tensor:
        """`embeddings`: batch x (depth+1) x tokens x width, one text embedding per rank; returns c^(depth).

        `trained_rank`, when given, is the only module that receives gradients (the random-rank ablation).
        """
        context = torch.zeros_like(embeddings[:, 0])
        for rank in range(depth + 1):
            frozen = trained_rank is not None and rank != trained_rank
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                context = context + self.rank_modules[rank](embeddings[:, rank])
        return context


class TaxaDiffusion(Method):
    name = "taxadiffusion"  # its registry name (taxabench.methods), also when imported directly
    description = "TaxaDiffusion: per-rank modules summed into the UNet context, trained progressively (paper §3)"
    Options = TaxaDiffusionOptions
    default_guidance = "taxonomy"
    guidance_kinds = ("taxonomy", "cfg", "vanilla-cfg", "none")
    generates_unseen_species = True
    unseen_species_reason = ("its rank modules read each rank's string through the frozen text encoder: a new species "
                             "is a new species string under a known lineage")

    def __init__(self, options: TaxaDiffusionOptions, ranks: Sequence[str], species: Sequence[Labels], backbone):
        super().__init__(options, ranks, species, backbone)
        self.conditioned_ranks = tuple(options.ranks or self.ranks)
        self.label_index = [self.ranks.index(r) for r in self.conditioned_ranks]
        width = backbone.text_width
        if width != backbone.cross_attention_dim:
            raise TaxabenchError(
                f"method '{self.name}' sums text embeddings into the UNet context, so the text encoder width "
                f"({width}) must equal the UNet's cross_attention_dim ({backbone.cross_attention_dim})"
            )
        if width % options.heads:
            raise TaxabenchError(f"method_options.{self.name}.heads: {options.heads} does not divide width {width}")
        feedforward = options.feedforward or round(width * 8 / 3)
        self.conditioner = TaxonomyConditioner(
            len(self.conditioned_ranks), width, options.layers, options.heads, feedforward, options.dropout
        )
        self.add_lora(LoraSettings(rank=options.lora_rank, alpha=options.lora_alpha))

    @classmethod
    def check_dataset_ranks(cls, options: TaxaDiffusionOptions, ranks: Sequence[str]) -> None:
        if options.ranks is None:
            return
        check_ranks(options.ranks, f"method_options.{cls.name}.ranks")
        missing = [r for r in options.ranks if r not in ranks]
        if missing:
            raise TaxabenchError(
                f"method '{cls.name}' conditions on rank {missing[0]!r}, which the dataset lacks "
                f"(it has {', '.join(ranks)}); set method_options.{cls.name}.ranks"
            )

    # -- stages (§3.3) ----------------------------------------------------------------------------------------------
    def stages(self, steps_per_stage: int) -> list[Stage]:
        steps = self.options.steps or steps_per_stage
        return [
            Stage(k, steps, f"{rank} module" + (" + UNet LoRA" if k == 0 else ""))
            for k, rank in enumerate(self.conditioned_ranks)
        ]

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        params = list(self.conditioner.rank_modules[stage.index].parameters())
        if stage.index == 0:  # domain adaptation: the LoRA trains in the first stage only
            params += self.lora_parameters()
        return params

    def depth(self, stage: Stage | None) -> int:
        """How many ranks (minus one) the condition of `stage` sums; sampling uses the last trained stage."""
        return len(self.conditioned_ranks) - 1 if stage is None else stage.index

    # -- conditioning (§3.2) --------------------------------------------------------------------------------------
    def rank_strings(self, labels: Labels, depth: int) -> list[str]:
        names = [labels[i] for i in self.label_index[: depth + 1]]
        return rank_prompts(
            self.conditioned_ranks[: depth + 1], names, self.string_format.names,
            binomial=self.string_format.species == "binomial", all_ranks=self.ranks, all_labels=labels,
        )

    def unknown_string(self, rank: str) -> str:
        return unknown_rank_prompt(rank, self.string_format.names)

    def condition_inputs(
        self, labels: Sequence[Labels], stage: Stage | None, text: TextEncoder, draws: TrainingDraws | None = None
    ) -> dict[str, Any]:
        depth = self.depth(stage)
        strings = [self.rank_strings(item, depth) for item in labels]
        if draws is not None:
            strings = [self.dropped(row, g, draws.dropout, draws.dropout_mode) for row, g in zip(strings, draws.per_sample)]
            finest = self.unknown_string(self.conditioned_ranks[depth])
            draws.finest_real = [row[-1] != finest for row in strings]
        return self._embedded(strings, depth, text)

    def dropped(self, strings: list[str], generator: torch.Generator, probability: float, mode: str) -> list[str]:
        """Condition dropout of one sample's rank strings (`train.condition_dropout_mode`, see the module doc)."""
        drops = dropped_ranks(generator, probability, len(self.conditioned_ranks), mode)
        return [self.unknown_string(rank) if gone else string
                for rank, string, gone in zip(self.conditioned_ranks, strings, drops)]

    def negative_inputs(
        self, kind: str, labels: Sequence[Labels], stage: Stage | None, text: TextEncoder
    ) -> dict[str, Any]:
        depth = self.depth(stage)
        if kind in ("taxonomy", "vanilla-cfg") and depth == 0:
            # c^(0) is the positive itself: the authors' pipeline uses the raw "<top rank>: None" string
            # (pipeline_stable_diffusion_taxonomy.py:177-180 and 244; it hard-codes "class: None", FishNet's top rank)
            return {"context": text([self.unknown_string(self.conditioned_ranks[0])] * len(labels))}
        if kind == "taxonomy":  # c^(0): the top rank alone, through its own module (§3.4)
            return self._embedded([self.rank_strings(item, 0) for item in labels], 0, text)
        if kind == "vanilla-cfg":
            return self.vanilla_cfg_negative(len(labels), text)
        if kind == "cfg":  # every rank unknown, through the modules: what cascade dropout teaches as "no condition"
            unknown = [self.unknown_string(rank) for rank in self.conditioned_ranks[: depth + 1]]
            return self._embedded([unknown for _ in labels], depth, text)
        raise TaxabenchError(f"method '{self.name}': no negative for guidance {kind!r}")

    def _embedded(self, strings: list[list[str]], depth: int, text: TextEncoder) -> dict[str, Any]:
        flat = [s for row in strings for s in row]
        embeddings = text(flat).unflatten(0, (len(strings), depth + 1))  # batch x ranks x tokens x width
        return {"rank_embeddings": embeddings, "depth": depth, "trained_rank": None}

    def encoder_hidden_states(self, inputs: dict[str, Any], stage: Stage | None) -> torch.Tensor:
        if "context" in inputs:  # a raw text-encoder embedding (a vanilla-CFG or stage-0 negative): no module
            return inputs["context"]
        return self.conditioner(inputs["rank_embeddings"], inputs["depth"], inputs["trained_rank"])


class TaxaDiffusionJoint(TaxaDiffusion):
    name = "taxadiffusion-joint"  # its registry name (taxabench.methods), also when imported directly
    description = "TaxaDiffusion ablation: every rank module and the LoRA trained at once, in one stage"
    ablation_of = "taxadiffusion"

    def stages(self, steps_per_stage: int) -> list[Stage]:
        # the same total budget as the progressive schedule: one stage's budget per rank
        steps = self.options.steps or steps_per_stage * len(self.conditioned_ranks)
        return [Stage(0, steps, "all rank modules + UNet LoRA")]

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        return [*self.conditioner.parameters(), *self.lora_parameters()]

    def depth(self, stage: Stage | None) -> int:
        return len(self.conditioned_ranks) - 1


class TaxaDiffusionRandom(TaxaDiffusionJoint):
    name = "taxadiffusion-random"  # its registry name (taxabench.methods), also when imported directly
    description = "TaxaDiffusion ablation: at each step a random rank k; its module (and the LoRA) train on c^(k)"

    def condition_inputs(
        self, labels: Sequence[Labels], stage: Stage | None, text: TextEncoder, draws: TrainingDraws | None = None
    ) -> dict[str, Any]:
        if draws is None:
            return super().condition_inputs(labels, stage, text)
        rank = int(torch.randint(0, len(self.conditioned_ranks), (), generator=draws.per_step).item())
        strings = [self.dropped(self.rank_strings(item, rank), g, draws.dropout, draws.dropout_mode)[: rank + 1]
                   for item, g in zip(labels, draws.per_sample)]
        finest = self.unknown_string(self.conditioned_ranks[rank])
        draws.finest_real = [row[-1] != finest for row in strings]
        inputs = self._embedded(strings, rank, text)
        inputs["trained_rank"] = rank
        return inputs


__all__ = ["TaxaDiffusion", "TaxaDiffusionJoint", "TaxaDiffusionOptions", "TaxaDiffusionRandom", "TaxonomyConditioner"]
