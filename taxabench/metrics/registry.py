"""The metric and feature-extractor registries: every built-in fits on this screen.

`register_metric(name, cls)` / `register_extractor(name, cls)` add one without editing taxabench (names become
cache-file names and config values, so they are validated by `taxabench.registry.Registry`).
"""

from __future__ import annotations

from taxabench.metrics.extractor_base import FeatureExtractor
from taxabench.metrics.metric_base import Metric
from taxabench.registry import Registry

METRICS: Registry[Metric] = Registry("metric", Metric)
EXTRACTORS: Registry[FeatureExtractor] = Registry("feature extractor", FeatureExtractor)


def register_metric(name: str, cls: type[Metric]) -> type[Metric]:
    return METRICS.register(name, cls)


def register_extractor(name: str, cls: type[FeatureExtractor]) -> type[FeatureExtractor]:
    return EXTRACTORS.register(name, cls)


def _register_builtins() -> None:
    from taxabench.metrics.extractor_bioclip import BioClip2Extractor, BioClip25Extractor, BioClipExtractor
    from taxabench.metrics.extractor_clip_l14_336 import ClipL14At336Extractor
    from taxabench.metrics.extractor_dinov2 import Dinov2Extractor
    from taxabench.metrics.extractor_inception import InceptionExtractor
    from taxabench.metrics.extractor_lpips_vgg import LpipsVggExtractor
    from taxabench.metrics.extractor_synthclip import SynthClipExtractor
    from taxabench.metrics.metric_clip_score import ClipScore
    from taxabench.metrics.metric_cmmd import Cmmd
    from taxabench.metrics.metric_copying import Copying
    from taxabench.metrics.metric_fd import FrechetDistance
    from taxabench.metrics.metric_fd_dinov2 import FrechetDistanceDinov2
    from taxabench.metrics.metric_fd_mean import FdMeanTerm
    from taxabench.metrics.metric_kid import KernelDistance
    from taxabench.metrics.metric_lpips import Lpips
    from taxabench.metrics.metric_mistake_severity import MistakeSeverity
    from taxabench.metrics.metric_path_consistency import PathConsistency
    from taxabench.metrics.metric_prdc import Prdc
    from taxabench.metrics.metric_taxa_accuracy import TaxaAccuracy
    from taxabench.metrics.metric_vendi import VendiRatio

    for metric in (FrechetDistance, KernelDistance, Lpips, ClipScore, TaxaAccuracy, MistakeSeverity,
                   PathConsistency, VendiRatio, Prdc, Copying, FrechetDistanceDinov2, Cmmd, FdMeanTerm):
        register_metric(metric.key, metric)
    for extractor in (InceptionExtractor, BioClipExtractor, BioClip2Extractor, BioClip25Extractor, SynthClipExtractor,
                      LpipsVggExtractor, Dinov2Extractor, ClipL14At336Extractor):
        register_extractor(extractor.name, extractor)


_register_builtins()
