"""What every feature extractor is (torch-fidelity's contract, with open_clip's split of architecture and weights).

An extractor
- declares the features it provides (`features`) and which one each metric uses (`default_features`);
- declares its weights (`weights_specs`, shown by `taxabench weights`) and resolves them in `load`, failing fast
  with `WeightsNotFoundError` before any heavy import or model construction;
- is frozen (eval mode, no gradients) in its constructor;
- takes uint8 images, B x 3 x H x W, in `forward`, checks that contract with the offending value in the message,
  and does its own resizing and normalisation, which `protocol` names (it is part of every cache key).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from taxabench.errors import TaxabenchError
from taxabench.weights import ResolvedWeights, WeightsSpec, resolve_weights

if TYPE_CHECKING:
    from taxabench.config import ExperimentConfig


class FeatureExtractor(torch.nn.Module):
    name: ClassVar[str]
    description: ClassVar[str]
    features: ClassVar[tuple[str, ...]]
    default_features: ClassVar[dict[str, str]]  # metric key -> feature; "*" for every other metric
    weights_specs: ClassVar[tuple[WeightsSpec, ...]] = ()

    identity: str  # how reports name the weights that produced the features
    protocol: str  # input handling (resize, normalisation): part of every cache key and of every report row

    @classmethod
    def load(cls, config: ExperimentConfig) -> FeatureExtractor:
        """Resolve the weights named by `config` (explicit → env → cache → download/build → fail) and construct;
        by default `cls(cls.resolve(config))`."""
        return cls(cls.resolve(config))

    @classmethod
    def resolve(cls, config: ExperimentConfig) -> ResolvedWeights:
        """The weights of `weights_specs[0]` as `config.eval` asks for them (`configured_weights`)."""
        return configured_weights(cls.weights_specs[0], cls.name, config)

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def feature_for(self, metric: str) -> str:
        feature = self.default_features.get(metric, self.default_features.get("*"))
        if feature is None:
            raise TaxabenchError(f"extractor '{self.name}' provides no features for metric '{metric}'")
        return feature

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_images(images, self.name)
        return self.extract(images.to(self.device))

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 images (already checked) -> {feature name: (B, ...) float tensor}."""
        raise NotImplementedError


class TextImageExtractor(FeatureExtractor):
    """A CLIP-style extractor: image and text embeddings in one space (clip_score, taxa_accuracy)."""

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (n, d) of `captions`."""
        raise NotImplementedError


def configured_weights(spec: WeightsSpec, extractor: str, config: ExperimentConfig,
                       download: bool = True) -> ResolvedWeights:
    """`spec`'s weights as `config.eval` asks for them for `extractor`: `eval.weights` (a file or folder; open_clip's
    `local-dir:` prefix is allowed), `eval.revisions` (a pinned hub snapshot), `eval.unverified_weights` (an
    accepted other digest of a single published file); the rest of the resolution order is `resolve_weights`'."""
    explicit = config.eval.weights.get(extractor)
    return resolve_weights(spec, explicit.removeprefix("local-dir:") if explicit else None, download=download,
                           revision=config.eval.revisions.get(extractor),
                           unverified_sha256=config.eval.unverified_weights.get(extractor))


def check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"extractor '{name}' expects a torch.Tensor of images, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"extractor '{name}' expects uint8 images in [0, 255], got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 3 or min(images.shape[2:]) < 1:
        raise ValueError(f"extractor '{name}' expects images of shape B x 3 x H x W, got {tuple(images.shape)}")


def to_unit_range(images: torch.Tensor, size: int, mode: str = "bilinear", antialias: bool = True) -> torch.Tensor:
    """uint8 B x 3 x H x W -> float in [0, 1] at size x size (`antialias` only matters when shrinking)."""
    x = images.float() / 255.0
    if tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=antialias)
    return x
