"""What every metric is: a registered object that turns an evaluation context into `Measurement`s.

A metric never reads a method's name and never loads images or weights itself: it asks the context for features of
the generated and real sets (cached) or for an extractor, and hands its per-image values or set function to
`taxabench.metrics.aggregate`, which produces the scopes (overall, per rank, rare/common) with bootstrap CIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from taxabench.metrics.aggregate import ScopeValue, summarise_set_metric, weighted_bootstrap
from taxabench.metrics.features import one_cpu_thread

if TYPE_CHECKING:
    from taxabench.metrics.evaluation import EvalContext


@dataclass
class Measurement:
    """One number of the report: a metric in one scope, with everything needed to trust and reproduce it."""

    metric: str  # quantity key: fd, kid, lpips, lpips_diversity, clip_score, top1, top5
    name: str  # how tables print it: "FID", "FD (synthclip)", "BioCLIP score", "LPIPS (VGG)"
    scope: ScopeValue
    extractor: str  # registry name of the extractor whose features or model produced it
    weights: str  # weights identity, e.g. "synthclip@sha256:0123abcd4567 (built)"
    higher_is_better: bool
    protocol: dict[str, Any] = field(default_factory=dict)  # every named choice that changes the number

    def protocol_string(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.protocol.items())


class Metric:
    """Base class of metrics; subclasses are registered by name in `taxabench.metrics.registry`."""

    key: ClassVar[str]
    description: ClassVar[str]

    def extractors(self, config) -> list[str]:
        """Registry names of the extractors this metric will ask the context for under `config`."""
        raise NotImplementedError

    def compute(self, context: EvalContext) -> list[Measurement]:
        raise NotImplementedError


class SetMetric(Metric):
    """A metric between the real and the generated feature sets of one extractor (`eval.fd_extractor`)."""

    higher_is_better: ClassVar[bool] = False
    min_per_side: ClassVar[int] = 2

    def display_name(self, extractor: str) -> str:
        raise NotImplementedError

    def value(self, real: np.ndarray, generated: np.ndarray, context: EvalContext) -> float:
        raise NotImplementedError

    def weighted_value(self, real: np.ndarray, generated: np.ndarray, real_weights: np.ndarray,
                       generated_weights: np.ndarray, context: EvalContext) -> float:
        """The metric with each image counted `weight` times (bootstrap resamples of taxa)."""
        raise NotImplementedError

    def bootstrap(self, context: EvalContext):
        """(real, generated, real unit, generated unit, counts) -> one value per resample; default: recompute."""
        return weighted_bootstrap(lambda real, generated, real_weights, generated_weights: self.weighted_value(
            real, generated, real_weights, generated_weights, context))

    def protocol(self, context: EvalContext) -> dict[str, Any]:
        return {}

    def extractors(self, config) -> list[str]:
        return [config.eval.fd_extractor]

    def compute(self, context: EvalContext) -> list[Measurement]:
        extractor_name = context.config.eval.fd_extractor
        extractor = context.extractor(extractor_name)
        feature = extractor.feature_for(self.key)
        real = context.features(extractor_name, "real")[feature]
        generated = context.features(extractor_name, "generated")[feature]
        with one_cpu_thread():  # no-op for the math when it runs on CUDA
            scopes = summarise_set_metric(
                lambda r, g: self.value(r, g, context), self.bootstrap(context), real, generated, context.sets,
                context.resampling, context.pooled_resampling, self.min_per_side,
            )
        protocol = {**context.image_protocol(extractor_name), "feature": feature, **self.protocol(context)}
        return [
            Measurement(self.key, self.display_name(extractor_name), scope, extractor_name, extractor.identity,
                        self.higher_is_better, protocol)
            for scope in scopes
        ]
