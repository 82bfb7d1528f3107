"""`clip-vit-l14-336`: OpenAI CLIP ViT-L/14 at 336 px, the embedding CMMD is defined on (Jayasumana et al., 2024).

Loaded through the same open_clip `local-dir:` path as BioCLIP, from the open_clip folder of the OpenAI weights on
the Hugging Face hub (`timm/vit_large_patch14_clip_336.openai`: open_clip_config.json + weights, MIT licence);
`eval.weights: {clip-vit-l14-336: /path}` names a local copy, `eval.revisions` pins the snapshot. The feature is the
L2-normalised image embedding (768-d), as CMMD's reference code uses.
"""

from __future__ import annotations

from taxabench.metrics.extractor_bioclip import BioClipExtractor
from taxabench.weights import WeightsSpec

CLIP_L14_336_WEIGHTS = WeightsSpec(
    name="clip-vit-l14-336",
    description="OpenAI CLIP ViT-L/14@336px as an open_clip folder (timm/vit_large_patch14_clip_336.openai on the "
                "Hugging Face hub, MIT licence, ~1.7 GB)",
    hf_repo="timm/vit_large_patch14_clip_336.openai",
    hf_files=("open_clip_config.json",),
)


class ClipL14At336Extractor(BioClipExtractor):
    name = "clip-vit-l14-336"
    description = "OpenAI CLIP ViT-L/14@336 image embedding (768-d): the space of CMMD."
    weights_specs = (CLIP_L14_336_WEIGHTS,)
