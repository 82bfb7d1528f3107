"""What every metric is: a registered object that turns an evaluation context into `Measurement`s.

A metric never reads a method's name and never loads images or weights itself: it asks the context for features of
the generated and real sets (cached) or for an extractor, and hands its per-image values or set function to
`taxabench.metrics.aggregate`, which produces the scopes (overall, per rank, rare/common) with bootstrap CIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from taxabench.metrics.aggregate import (
    ScopeValue,
    summarise_per_image,
    summarise_set_metric,
    weighted_bootstrap,
)
from taxabench.metrics.features import one_cpu_thread
from taxabench.metrics.scopes import EvalSets

if TYPE_CHECKING:
    from taxabench.metrics.evaluation import EvalContext

SUBJECT_GENERATED = "generated"
SUBJECT_REAL = "real"  # held-out real images scored like generated ones: the ceiling a generator can reach


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
    subject: str = SUBJECT_GENERATED  # whose images were scored: generated, or real (the ceiling row)

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


def compared_features(context: EvalContext, extractor_name: str, metric_key: str) -> tuple[Any, str, np.ndarray,
                                                                                          np.ndarray]:
    """(extractor, feature name, real features, generated features): the two sets `metric_key` compares in
    `extractor_name`'s space, rows aligned with `context.sets.real` and the generated images."""
    extractor = context.extractor(extractor_name)
    feature = extractor.feature_for(metric_key)
    return (extractor, feature, context.features(extractor_name, "real")[feature],
            context.features(extractor_name, "generated")[feature])


def diversity_extractor(config) -> str:
    """The extractor of the diversity and copying metrics: `eval.diversity_extractor`, default the metric model."""
    return config.eval.diversity_extractor or config.eval.clip_model


class OnDiversityFeatures:
    """Mixin of the metrics computed in `eval.diversity_extractor`'s space (vendi, prdc, copying)."""

    def extractors(self, config) -> list[str]:
        return [diversity_extractor(config)]


class PerImageMetric(Metric):
    """A metric with one value per image (scores, accuracies, mistake severity).

    It scores the generated images and, when `ceiling` is set, the held-out real images of the same taxa with the
    same code: the real images' value is the ceiling row of every table (what a perfect generator would get under
    this metric model).
    """

    ceiling: ClassVar[bool] = True

    def values(self, context: EvalContext, sets: EvalSets, side: str) -> dict[str, dict[str, np.ndarray]]:
        """quantity key -> per-rank values (`summarise_per_image`'s contract) of the images of `side`, whose taxa
        `sets.gen_taxa` gives (for the real side, `sets` is `context.sets.real_as_subject()`)."""
        raise NotImplementedError

    def describe(self, context: EvalContext, quantity: str) -> tuple[str, str, str, bool, dict[str, Any]]:
        """(display name, extractor, weights identity, higher is better, protocol) of one quantity."""
        raise NotImplementedError

    def keep(self, context: EvalContext, quantity: str, scope: ScopeValue) -> bool:
        """Whether a scope of a quantity is reported (e.g. top-5 is left out where it is trivially 100%)."""
        return True

    def compute(self, context: EvalContext) -> list[Measurement]:
        sides = [(SUBJECT_GENERATED, context.sets)]
        if self.ceiling:
            sides.append((SUBJECT_REAL, context.sets.real_as_subject()))
        measurements = []
        for subject, sets in sides:
            for quantity, by_rank in self.values(context, sets, subject).items():
                name, extractor, weights, higher, protocol = self.describe(context, quantity)
                measurements += [
                    Measurement(quantity, name, scope, extractor, weights, higher, protocol, subject)
                    for scope in summarise_per_image(by_rank, sets, context.resampling)
                    if self.keep(context, quantity, scope)
                ]
        return measurements


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

    def extractor_name(self, config) -> str:
        """The extractor whose features the metric compares (default: `eval.fd_extractor`)."""
        return config.eval.fd_extractor

    def extractors(self, config) -> list[str]:
        return [self.extractor_name(config)]

    def compute(self, context: EvalContext) -> list[Measurement]:
        extractor_name = self.extractor_name(context.config)
        extractor, feature, real, generated = compared_features(context, extractor_name, self.key)
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
