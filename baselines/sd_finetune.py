"""`sd-finetune`: the whole UNet fine-tuned on species prompts (paper Table 1, "SD full fine-tune")."""

from __future__ import annotations

from dataclasses import dataclass

from baselines.text_prompt import TextPromptMethod
from taxabench.methods.base import Stage


@dataclass
class SDFinetuneOptions:
    steps: int | None = None  # default: train.steps_per_stage x number of ranks (TaxaDiffusion's total budget)


class SDFinetune(TextPromptMethod):
    name = "sd-finetune"  # its registry name (taxabench.methods), also when imported directly
    description = "Stable Diffusion with the whole UNet fine-tuned on species text prompts"
    Options = SDFinetuneOptions
    trains_full_unet = True
    stage_description = "whole UNet"

    def trainable_parameters(self, stage: Stage) -> list:
        return list(self.backbone.unet.parameters())
