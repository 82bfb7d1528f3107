"""`inception`: the standard FID Inception-V3, pool3 features (2048-d); the only extractor whose FD is "FID".

Weights: pytorch-fid's port of TensorFlow's `inception-2015-12-05` graph, `pt_inception-2015-12-05-6726825d.pth`
(Apache-2.0, https://github.com/mseitzer/pytorch-fid). The same file is torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth`. The architecture is torchvision's Inception-V3 with the FID patches
(TensorFlow's average pooling without padded zeros; max pooling in the last block), taken from clean-fid's copy of
pytorch-fid (`cleanfid.inception_pytorch`), built here without its download.

Protocol (pytorch-fid): images in [0, 1], bilinear resize to 299 x 299 (align_corners=False), scaled to [-1, 1].
"""

from __future__ import annotations

from typing import ClassVar

import torch

from taxabench.metrics.extractor_base import FeatureExtractor, to_unit_range
from taxabench.weights import ResolvedWeights, WeightsSpec

INCEPTION_WEIGHTS = WeightsSpec(
    name="inception",
    description="the FID Inception-V3 (TensorFlow inception-2015-12-05 ported by pytorch-fid, Apache-2.0)",
    filename="pt_inception-2015-12-05-6726825d.pth",
    other_filenames=("weights-inception-2015-12-05-6726825d.pth",),  # torch-fidelity's name for the same file
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    size="95.6 MB (95,628,359 bytes)",
)
INPUT_SIZE = 299


def fid_inception_v3() -> torch.nn.Module:
    """pytorch-fid's FID Inception-V3 architecture, randomly initialised (load the FID weights into it)."""
    import torchvision
    from cleanfid.inception_pytorch import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class InceptionExtractor(FeatureExtractor):
    name = "inception"
    description = "FID Inception-V3 pool3 (2048-d), pytorch-fid weights: the standard FID / KID features."
    features = ("pool3",)
    default_features: ClassVar[dict[str, str]] = {"*": "pool3"}
    weights_specs = (INCEPTION_WEIGHTS,)
    protocol = "pytorch-fid:bilinear-299,[-1,1]"

    def __init__(self, weights: ResolvedWeights):
        super().__init__()
        net = fid_inception_v3()
        net.load_state_dict(torch.load(weights.path, map_location="cpu", weights_only=True), strict=True)
        self.blocks = torch.nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, torch.nn.MaxPool2d(3, stride=2),  # 64 x 73 x 73
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, torch.nn.MaxPool2d(3, stride=2),  # 192 x 35 x 35
            net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
            net.Mixed_6e,  # 768 x 17 x 17
            net.Mixed_7a, net.Mixed_7b, net.Mixed_7c,  # 2048 x 8 x 8
            torch.nn.AdaptiveAvgPool2d(1),  # 2048 x 1 x 1
        )
        self.identity = weights.identity(self.name)
        self.freeze()

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = to_unit_range(images, INPUT_SIZE, mode="bilinear", antialias=False)  # as pytorch-fid: no antialiasing
        return {"pool3": self.blocks(2 * x - 1).flatten(1)}
