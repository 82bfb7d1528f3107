"""What the text-only Stable Diffusion baselines share: the species prompt through the frozen text encoder.

The prompt is `species_prompt` (`"a photo of Abudefduf saxatilis"`, the finest known name); condition dropout
replaces it by the empty prompt, as Stable Diffusion was trained. Guidance: `cfg` against the empty prompt (SD's
classifier-free guidance) or `taxonomy` against the top-rank-only prompt (`"a photo of Actinopterygii"`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taxabench.methods.base import Labels, Method, Stage, TextEncoder, TrainingDraws, drop
from taxabench.taxonomy import species_prompt


class TextPromptMethod(Method):
    guidance_kinds = ("cfg", "taxonomy", "none")
    default_guidance = "cfg"
    required_ranks = ("species",)
    stage_description = ""  # what trains, for progress bars
    generates_unseen_species = True
    unseen_species_reason = "its prompt names any species as text (\"a photo of <Genus> <epithet>\")"

    def stages(self, steps_per_stage: int) -> list[Stage]:
        # one stage with the budget TaxaDiffusion spends over all its ranks, so every method trains as long
        steps = self.options.steps or steps_per_stage * len(self.ranks)
        return [Stage(0, steps, self.stage_description)]

    def condition_inputs(
        self, labels: Sequence[Labels], stage: Stage | None, text: TextEncoder, draws: TrainingDraws | None = None
    ) -> dict[str, Any]:
        prompts = [species_prompt(self.ranks, item) for item in labels]
        if draws is not None:
            prompts = ["" if drop(g, draws.dropout) else p for p, g in zip(prompts, draws.per_sample)]
            draws.finest_real = [bool(p) and item[-1] is not None for p, item in zip(prompts, labels)]
        return {"context": text(prompts)}

    def negative_inputs(
        self, kind: str, labels: Sequence[Labels], stage: Stage | None, text: TextEncoder
    ) -> dict[str, Any]:
        if kind == "taxonomy":
            return {"context": text([species_prompt(self.ranks[:1], item[:1]) for item in labels])}
        return {"context": text([""] * len(labels))}
