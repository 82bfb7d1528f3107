"""`sd-zeroshot`: the backbone as it is, prompted with the species name (paper Table 1, "SD zero-shot")."""

from __future__ import annotations

from dataclasses import dataclass

from baselines.text_prompt import TextPromptMethod
from taxabench.methods.base import Stage


@dataclass
class SDZeroShotOptions:
    pass


class SDZeroShot(TextPromptMethod):
    name = "sd-zeroshot"  # its registry name (taxabench.methods), also when imported directly
    description = "Stable Diffusion zero-shot: no training, species text prompt"
    Options = SDZeroShotOptions

    def stages(self, steps_per_stage: int) -> list[Stage]:
        return []

    def trainable_parameters(self, stage: Stage) -> list:
        return []
