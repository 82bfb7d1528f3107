"""`lpips-vgg`: LPIPS v0.1 with the VGG16 backbone (Zhang et al., CVPR 2018), as an embedding.

LPIPS(x, y) = sum over layers l of the spatial mean of sum_c w_lc (f_l(x) - f_l(y))_c^2, where f_l are the VGG16
activations (relu1_2 .. relu5_3) normalised to unit length over channels and w_l >= 0 the learned linear heads.
Writing g_l(x) = f_l(x) * sqrt(w_l) / sqrt(H_l W_l) and g(x) the concatenation over layers, LPIPS(x, y) is exactly
||g(x) - g(y)||^2. So this extractor returns g ("lpips"), and all pairwise distances of a set come from one Gram
matrix instead of one network pass per pair.

Weights, two parts:
- the linear heads ship with the `lpips` package (`lpips/weights/v0.1/vgg.pth`, BSD-2-Clause);
- the VGG16 backbone is torchvision's ImageNet `vgg16-397923af.pth` (BSD-3-Clause), resolved like every other
  weight file; `lpips` and torchvision are never allowed to download it. With `eval.lpips_backbone: auto` and no
  backbone available, the backbone is randomly initialised (seeded) and every output says "untrained backbone".

Protocol: images in [-1, 1], bilinear resize to the common LPIPS size (`eval.lpips_size`, default the dataset's
image size), lpips' ScalingLayer.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from taxabench.errors import WeightsInvalidError, WeightsNotFoundError
from taxabench.metrics.extractor_base import FeatureExtractor, to_unit_range
from taxabench.weights import ResolvedWeights, WeightsSpec, file_sha256

VGG16_WEIGHTS = WeightsSpec(
    name="vgg16",
    description="torchvision's ImageNet VGG16 (the LPIPS-VGG backbone, BSD-3-Clause)",
    filename="vgg16-397923af.pth",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    size="528 MB (553,433,881 bytes)",
)
HEADS_SHA256 = "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"  # lpips 0.1.4, weights/v0.1/vgg.pth
LAYER_ENDS = (4, 9, 16, 23, 30)  # VGG16 `features` indices after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)  # lpips.ScalingLayer
SCALE = (0.458, 0.448, 0.450)


def lpips_heads_path() -> Path:
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def vgg16_features(seed: int) -> torch.nn.Sequential:
    """torchvision's VGG16 `features` (13 convolutions), initialised as torchvision does, from `seed`."""
    from torchvision.models.vgg import cfgs, make_layers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the untrained backbone is the same network on every run
        features = make_layers(cfgs["D"])
        for module in features.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                torch.nn.init.zeros_(module.bias)
    return features


class LpipsVggExtractor(FeatureExtractor):
    name = "lpips-vgg"
    description = "LPIPS v0.1, VGG16 backbone, as an embedding whose squared distances are LPIPS distances."
    features = ("lpips",)
    default_features: ClassVar[dict[str, str]] = {"lpips": "lpips"}  # only LPIPS: 500k-d is no FD feature
    weights_specs = (VGG16_WEIGHTS,)

    @classmethod
    def load(cls, config) -> LpipsVggExtractor:
        size = config.eval.lpips_size or config.data.image_size
        mode = config.eval.lpips_backbone
        backbone = None
        if mode != "untrained":
            try:
                backbone = cls.resolve(config)
            except WeightsInvalidError:
                raise  # a file was found but is not the published one: never silently a random backbone
            except WeightsNotFoundError:
                if mode == "pretrained":
                    raise
        return cls(backbone, size=size, seed=config.eval.seed)

    def __init__(self, backbone: ResolvedWeights | None, size: int, seed: int = 0):
        super().__init__()
        features = vgg16_features(seed)
        if backbone is not None:
            state = torch.load(backbone.path, map_location="cpu", weights_only=True)
            # torchvision's file also holds the classifier, which LPIPS does not use
            features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                      if k.startswith("features.")}, strict=True)
        self.slices = torch.nn.ModuleList(
            features[start:end] for start, end in zip((0, *LAYER_ENDS[:-1]), LAYER_ENDS)
        )
        heads_path = lpips_heads_path()
        if file_sha256(heads_path) != HEADS_SHA256:
            raise WeightsNotFoundError(f"lpips-vgg: {heads_path} is not the LPIPS v0.1 VGG heads file "
                                       f"(SHA-256 {HEADS_SHA256}); reinstall lpips 0.1.4")
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)
        weights = [heads[f"lin{k}.model.1.weight"].flatten() for k in range(len(CHANNELS))]
        if any((w < 0).any() for w in weights):
            raise WeightsNotFoundError(f"lpips-vgg: {heads_path} has negative head weights; not the LPIPS v0.1 file")
        for k, w in enumerate(weights):
            self.register_buffer(f"sqrt_w{k}", w.sqrt().view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.size = size
        self.trained = backbone is not None
        heads_id = f"heads:sha256:{HEADS_SHA256[:12]}"
        if backbone is not None and not backbone.verified:
            self.identity = f"lpips-vgg@{heads_id}+vgg16:unverified: sha256 {backbone.sha256} ({backbone.source})"
        elif backbone is not None:
            self.identity = f"lpips-vgg@{heads_id}+vgg16:sha256:{backbone.sha256[:12]} ({backbone.source})"
        else:
            self.identity = f"lpips-vgg@{heads_id}+vgg16:untrained(seed {seed})"
        self.protocol = f"lpips-v0.1:bilinear-{size},[-1,1]" + ("" if self.trained else ",untrained-backbone")
        self.freeze()

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = to_unit_range(images, self.size, mode="bilinear") * 2 - 1
        h = (x - self.shift) / self.scale
        parts = []
        for k, layer in enumerate(self.slices):
            h = layer(h)
            unit = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # lpips.normalize_tensor
            scaled = unit * getattr(self, f"sqrt_w{k}") / (h.shape[2] * h.shape[3]) ** 0.5
            parts.append(scaled.flatten(1))
        return {"lpips": torch.cat(parts, dim=1)}


def pairwise_lpips(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 18) -> torch.Tensor:
    """LPIPS between every row of `a` and every row of `b` (embeddings from `LpipsVggExtractor`), float64.

    ||a||^2 + ||b||^2 - 2 a.b in float32 is not enough at 512 px: the embedding has 32 M dimensions, and a float32
    dot product that long loses the small terms, always in the same direction (LPIPS read 0.2-2% too high). So the
    products are taken in float64, `chunk` dimensions at a time (memory stays at a few embeddings' size).
    """
    distances = torch.zeros(len(a), len(b), dtype=torch.float64)
    for start in range(0, a.shape[1], chunk):
        x = a[:, start:start + chunk].to(torch.float64, copy=True)
        y = b[:, start:start + chunk].to(torch.float64, copy=True)
        distances += (x * x).sum(1, keepdim=True) + (y * y).sum(1) - 2 * x @ y.T
    return distances.clamp_min(0.0)
