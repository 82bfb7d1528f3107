"""`taxabench weights`: where every extractor's weights resolve from now, or what is missing and how to get it."""

from __future__ import annotations

from dataclasses import dataclass

from taxabench.config import ExperimentConfig
from taxabench.errors import TaxabenchError, WeightsNotFoundError
from taxabench.weights import resolve_weights


@dataclass(frozen=True)
class WeightsStatus:
    extractor: str  # registry name of the extractor that uses the weights
    component: str  # the weights' own name (e.g. vgg16 for lpips-vgg's backbone)
    found: bool
    where: str  # path and source when found; the documented error message (what to do) when not


def weights_table(config: ExperimentConfig | None = None) -> list[WeightsStatus]:
    """One row per weights file or folder of every registered extractor; never downloads or builds weights (to
    key synthclip's build it reads the dataset, which generates a SynthTaxa world that is not on disk yet)."""
    from taxabench.metrics.extractor_lpips_vgg import HEADS_SHA256, lpips_heads_path
    from taxabench.metrics.registry import EXTRACTORS
    from taxabench.metrics.synthclip import SYNTHCLIP_WEIGHTS, resolve_synthclip

    config = config or ExperimentConfig()
    rows = [_backbone_row(config.backbone.source)]
    for name, extractor in EXTRACTORS:
        for spec in extractor.weights_specs:
            try:
                if spec is SYNTHCLIP_WEIGHTS:
                    resolved = resolve_synthclip(config, build=False)
                else:
                    explicit = config.eval.weights.get(name)
                    resolved = resolve_weights(spec, explicit.removeprefix("local-dir:") if explicit else None,
                                               download=False, revision=config.eval.revisions.get(name))
                rows.append(WeightsStatus(name, spec.name, True, f"{resolved.identity(spec.name)}: {resolved.path}"))
            except WeightsNotFoundError as error:
                rows.append(WeightsStatus(name, spec.name, False, str(error)))
            except TaxabenchError as error:  # e.g. synthclip's dataset cannot be read
                rows.append(WeightsStatus(name, spec.name, False, f"cannot check: {error}"))
        if name == "lpips-vgg":
            rows.append(WeightsStatus(name, "lpips heads", True,
                                      f"{lpips_heads_path()} (shipped with lpips, sha256:{HEADS_SHA256[:12]})"))
    return rows


def _backbone_row(source: str) -> WeightsStatus:
    """The generative backbone `backbone.source` names: built by taxabench, a local folder, or a hub id."""
    from pathlib import Path

    from taxabench.backbone import hub_backbone_spec

    if source == "tiny":
        return WeightsStatus("backbone", "tiny", True, "built by taxabench from the dataset on first use "
                                                       "(`taxabench backbone tiny`), cached in $TAXABENCH_HOME")
    if Path(source).is_dir():
        return WeightsStatus("backbone", source, True, f"local SD-format folder {source}")
    try:
        resolved = resolve_weights(hub_backbone_spec(source), download=False)
    except WeightsNotFoundError as error:
        return WeightsStatus("backbone", source, False, str(error))
    return WeightsStatus("backbone", source, True, f"{resolved.identity(source)}: {resolved.path}")
