"""Guidance kinds: what the negative branch of ε̃ = ε(c⁻) + s·(ε(c) − ε(c⁻)) is, registered by name.

A kind is named in `sample.guidance` / `sample.guidance_ablation`, in sample folders (`taxadiffusion+vanilla-cfg`)
and in reports by its `label`. A method lists the kinds it supports (`Method.guidance_kinds`) and builds each
negative itself (`Method.negative_inputs`); the sampler only applies the formula.
"""

from __future__ import annotations

from typing import ClassVar

from taxabench.registry import Registry


class GuidanceKind:
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how reports name it
    description: ClassVar[str] = ""  # what its negative is, in a sentence
    guided: ClassVar[bool] = True  # False: one UNet pass, no negative


class TaxonomyGuidance(GuidanceKind):
    label = "taxonomy guidance"
    description = (
        "negative = the top-rank-only condition c^(0) (paper §3.4); at TaxaDiffusion's stage 0, where c^(0) is the "
        "positive, the raw text embedding of '<top rank>: None', as the authors' pipeline does"
    )


class TrainedUnconditionalCFG(GuidanceKind):
    label = "CFG (trained unconditional)"
    description = (
        "classifier-free guidance against the condition that condition dropout trains as 'no condition': the "
        "empty prompt for text baselines, the null id for flat-ldm, an all-'None' lineage through TaxaDiffusion's "
        "rank modules"
    )


class VanillaCFG(GuidanceKind):
    label = "vanilla CFG (raw embedding of \"\", the authors')"
    description = (
        "classifier-free guidance against the frozen text encoder's raw embedding of the empty prompt, not passed "
        "through any trained module: the authors' vanilla CFG, the paper's guidance ablation"
    )


class NoGuidance(GuidanceKind):
    label = "no guidance"
    description = "the conditional prediction alone"
    guided = False


GUIDANCE: Registry[GuidanceKind] = Registry("guidance kind", GuidanceKind)


def register_guidance(name: str, cls: type[GuidanceKind]) -> type[GuidanceKind]:
    registered = GUIDANCE.register(name, cls)
    cls.name = name
    return registered


for _name, _cls in {"taxonomy": TaxonomyGuidance, "cfg": TrainedUnconditionalCFG, "vanilla-cfg": VanillaCFG,
                    "none": NoGuidance}.items():
    register_guidance(_name, _cls)


def guidance_kinds() -> tuple[str, ...]:
    """Every registered kind's name."""
    return tuple(GUIDANCE.names())


def guidance_label(name: str) -> str:
    return GUIDANCE.get(name).label if name in GUIDANCE else name


__all__ = ["GUIDANCE", "GuidanceKind", "guidance_kinds", "guidance_label", "register_guidance"]
