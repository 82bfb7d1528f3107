"""`sd-lora`: a LoRA on the UNet attention, fine-tuned on species prompts (paper Table 1, "SD + LoRA")."""

from __future__ import annotations

from dataclasses import dataclass

from baselines.text_prompt import TextPromptMethod
from taxabench.methods.base import LoraSettings, Stage


@dataclass
class SDLoraOptions:
    lora_rank: int = 4  # the same adapter TaxaDiffusion trains in its first stage
    lora_alpha: int = 4
    steps: int | None = None  # default: train.steps_per_stage x number of ranks (TaxaDiffusion's total budget)


class SDLora(TextPromptMethod):
    name = "sd-lora"  # its registry name (taxabench.methods), also when imported directly
    description = "Stable Diffusion + LoRA fine-tuned on species text prompts"
    Options = SDLoraOptions
    stage_description = "UNet LoRA"

    def __init__(self, options, ranks, species, backbone):
        super().__init__(options, ranks, species, backbone)
        self.add_lora(LoraSettings(rank=options.lora_rank, alpha=options.lora_alpha))

    def trainable_parameters(self, stage: Stage) -> list:
        return self.lora_parameters()
