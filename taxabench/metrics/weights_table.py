"""`taxabench weights`: what a run of a config will load, where it resolves from now, or what is missing and how to
get it. Each row is checked as the run would load it (the weight files, not just their folder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from taxabench.config import ExperimentConfig
from taxabench.errors import TaxabenchError, WeightsInvalidError, WeightsNotFoundError
from taxabench.weights import resolve_weights

Use = Literal["needed", "optional", "built", "unused"]


@dataclass(frozen=True)
class WeightsStatus:
    extractor: str  # registry name of the extractor that uses the weights ("backbone" for the generative one)
    component: str  # the weights' own name (e.g. vgg16 for lpips-vgg's backbone)
    found: bool
    where: str  # path and source when found; the documented error message (what to do) when not
    use: Use = "needed"  # needed: the run fails without it; optional: it runs with a labelled fallback;
    # built: taxabench builds it on first use; unused: this config does not load it

    @property
    def blocks_the_run(self) -> bool:
        return self.use == "needed" and not self.found


def weights_table(config: ExperimentConfig | None = None) -> list[WeightsStatus]:
    """One row per weights file or folder of the backbone and of every registered extractor; never downloads or
    builds weights or datasets (to key synthclip's build it reads the dataset; a SynthTaxa world that is not on
    disk yet means synthclip is not built, and the world is not generated to say so)."""
    from taxabench.metrics.extractor_base import configured_weights
    from taxabench.metrics.extractor_lpips_vgg import HEADS_SHA256, VGG16_WEIGHTS, lpips_heads_path
    from taxabench.metrics.registry import EXTRACTORS, METRICS
    from taxabench.metrics.synthclip import SYNTHCLIP_WEIGHTS, resolve_synthclip

    config = config or ExperimentConfig()
    used = {name for metric in config.eval.metrics for name in METRICS.get(metric)().extractors(config)}
    rows = [_backbone_row(config.backbone.source)]
    for name, extractor in EXTRACTORS:
        for spec in extractor.weights_specs:
            use: Use = "needed" if name in used else "unused"
            if use == "needed" and spec is VGG16_WEIGHTS:
                use = {"auto": "optional", "untrained": "unused"}.get(config.eval.lpips_backbone, "needed")
            try:
                if spec is SYNTHCLIP_WEIGHTS:
                    resolved = resolve_synthclip(config, build=False)
                else:
                    resolved = configured_weights(spec, name, config, download=False)
                rows.append(WeightsStatus(name, spec.name, True, f"{resolved.identity(spec.name)}: {resolved.path}",
                                          use))
            except WeightsInvalidError as error:  # found but wrong: a run fails on it even where it is optional
                rows.append(WeightsStatus(name, spec.name, False, str(error), "needed" if use != "unused" else use))
            except WeightsNotFoundError as error:
                if spec is SYNTHCLIP_WEIGHTS and use == "needed":
                    use = "built"
                rows.append(WeightsStatus(name, spec.name, False, str(error), use))
            except TaxabenchError as error:  # e.g. synthclip's dataset cannot be read
                rows.append(WeightsStatus(name, spec.name, False, f"cannot check: {error}", use))
        if name == "lpips-vgg":
            rows.append(WeightsStatus(name, "lpips heads", True,
                                      f"{lpips_heads_path()} (shipped with lpips, sha256:{HEADS_SHA256[:12]})",
                                      "needed" if name in used else "unused"))
    return rows


def _backbone_row(source: str) -> WeightsStatus:
    """The generative backbone `backbone.source` names: built by taxabench, a local folder, or a hub id; checked for
    the files `load_sd_folder` reads."""
    from pathlib import Path

    from taxabench.backbone import hub_backbone_spec, sd_folder_sha256

    if source == "tiny":
        return WeightsStatus("backbone", "tiny", True, "built by taxabench from the dataset on first use "
                                                       "(`taxabench backbone tiny`), cached in $TAXABENCH_HOME",
                             "built")
    try:
        if Path(source).is_dir():
            digest = sd_folder_sha256(Path(source), source)
            return WeightsStatus("backbone", source, True, f"local SD-format folder {source} (sha256:{digest[:12]})")
        resolved = resolve_weights(hub_backbone_spec(source), download=False)
    except WeightsNotFoundError as error:
        return WeightsStatus("backbone", source, False, str(error))
    return WeightsStatus("backbone", source, True, f"{resolved.identity(source)}: {resolved.path}")
