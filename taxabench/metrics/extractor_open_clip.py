"""The open_clip model family as extractors: one loading path for BioCLIP, BioCLIP-2 and synthclip.

Every model is an open_clip `local-dir:` folder (`open_clip_config.json` with `model_cfg` and `preprocess_cfg`, plus
a checkpoint): a Hugging Face snapshot of `imageomics/bioclip`, a folder the user names, or the folder taxabench
builds for synthclip. Weights never travel without their preprocessing (open_clip's pretrained table): mean, std
and interpolation come from the folder's `preprocess_cfg`. Images arrive square (the dataset's resize policy), so
resizing them to the model's input size is the whole geometric transform.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch

from taxabench.errors import WeightsNotFoundError
from taxabench.metrics.extractor_base import TextImageExtractor, to_unit_range
from taxabench.weights import ResolvedWeights

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's defaults, used when a folder names none
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenClipExtractor(TextImageExtractor):
    features = ("embedding",)  # the L2-normalised image embedding
    default_features: ClassVar[dict[str, str]] = {"*": "embedding"}

    def __init__(self, weights: ResolvedWeights):
        super().__init__()
        import open_clip

        folder = Path(weights.path)
        config_file = folder / "open_clip_config.json"
        if not config_file.is_file():
            raise WeightsNotFoundError(f"{self.name} weights: {folder} has no open_clip_config.json")
        if not any(p.suffix in CHECKPOINT_SUFFIXES for p in folder.iterdir()):
            raise WeightsNotFoundError(f"{self.name} weights: {folder} holds open_clip_config.json but no checkpoint "
                                       f"({', '.join(CHECKPOINT_SUFFIXES)})")
        self.model = open_clip.create_model(f"local-dir:{folder}", device="cpu")
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        preprocess = json.loads(config_file.read_text()).get("preprocess_cfg", {})
        self.image_size = _square_size(self.model.visual.image_size)
        self.interpolation = preprocess.get("interpolation", "bicubic")
        self.register_buffer("mean", torch.tensor(preprocess.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.get("std", OPENAI_STD)).view(1, 3, 1, 1))
        self.identity = weights.identity(self.name)
        self.protocol = f"open_clip:{self.interpolation}-{self.image_size},mean-std"
        build = folder / "synthclip_build.json"  # a model taxabench built records how, and how good it is
        self.build_report = json.loads(build.read_text()) if build.is_file() else None
        self.freeze()

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = to_unit_range(images, self.image_size, mode=self.interpolation)
        return {"embedding": self.model.encode_image((x - self.mean) / self.std, normalize=True)}

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(captions).to(self.mean.device)
        return self.model.encode_text(tokens, normalize=True)


def _square_size(size) -> int:
    if isinstance(size, (tuple, list)):
        return int(size[0])
    return int(size)
