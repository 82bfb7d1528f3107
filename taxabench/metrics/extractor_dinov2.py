"""`dinov2-vitl14`: DINOv2 ViT-L/14 features (Oquab et al., 2023), the space dgm-eval computes FD in by default.

Stein et al. (NeurIPS 2023, "Exposing flaws of generative model evaluation metrics") found FD in DINOv2 ViT-L/14
space to track human judgement far better than Inception's. The feature is the final layer-normed CLS token
(`pooler_output` of transformers' `Dinov2Model`, dgm-eval's `x_norm_clstoken`), 1024-d; images are resized to
224 px (bicubic) and normalised with the ImageNet mean and std, as dgm-eval does. Weights: the transformers folder
`facebook/dinov2-large` (Apache-2.0); `eval.weights: {dinov2-vitl14: /path}` names a local copy and
`eval.revisions` pins the hub snapshot. The FD metric on these features is `fd_dinov2`, named "FD (dinov2-vitl14)".
"""

from __future__ import annotations

from typing import ClassVar

import torch

from taxabench.metrics.extractor_base import FeatureExtractor, to_unit_range
from taxabench.weights import ResolvedWeights, WeightsSpec

DINOV2_WEIGHTS = WeightsSpec(
    name="dinov2-vitl14",
    description="DINOv2 ViT-L/14 (facebook/dinov2-large on the Hugging Face hub, transformers format, Apache-2.0, "
                "~1.2 GB)",
    hf_repo="facebook/dinov2-large",
    hf_files=("config.json",),
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224


class Dinov2Extractor(FeatureExtractor):
    name = "dinov2-vitl14"
    description = "DINOv2 ViT-L/14 CLS features (1024-d, facebook/dinov2-large): FD (dinov2-vitl14), as dgm-eval."
    features = ("cls",)
    default_features: ClassVar[dict[str, str]] = {"*": "cls"}
    weights_specs = (DINOV2_WEIGHTS,)

    def __init__(self, weights: ResolvedWeights):
        super().__init__()
        from transformers import Dinov2Model

        self.model = Dinov2Model.from_pretrained(weights.path)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.identity = weights.identity(self.name)
        self.protocol = f"dinov2:bicubic-{INPUT_SIZE},imagenet-mean-std,cls"
        self.freeze()

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = to_unit_range(images, INPUT_SIZE, mode="bicubic").clamp(0, 1)
        return {"cls": self.model(pixel_values=(x - self.mean) / self.std).pooler_output}
