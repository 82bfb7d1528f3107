"""`bioclip`, `bioclip-2` and `bioclip-2-5` (BioCLIP 2.5): the Imageomics tree-of-life CLIP models, resolved offline-first.

BioCLIP (Stevens et al., CVPR 2024) is open_clip's `ViT-B-16` architecture trained on TreeOfLife-10M with
taxonomic captions ("a photo of Animalia Chordata ... Abudefduf saxatilis."): the model behind the paper's
"BioCLIP score". BioCLIP-2 (ViT-L-14, TreeOfLife-200M) is its successor; BioCLIP 2.5 is published as
`imageomics/bioclip-2.5-vith14`, a ViT-H/14 by its name and model card (its open_clip_config.json could not be read
here; the loader takes the architecture from the folder's own config, so nothing about it is assumed). All come
from the Hugging Face hub as open_clip folders (MIT licence); `eval.weights: {bioclip: /path}` or `local-dir:/path`
names a local copy, `eval.revisions: {bioclip: <commit>}` pins the hub snapshot (the reported weights identity
carries the snapshot's commit and the SHA-256 of its files).
"""

from __future__ import annotations

from taxabench.metrics.extractor_open_clip import OpenClipExtractor
from taxabench.weights import WeightsSpec

BIOCLIP_WEIGHTS = WeightsSpec(
    name="bioclip",
    description="BioCLIP (open_clip ViT-B-16, imageomics/bioclip on the Hugging Face hub, MIT licence, ~600 MB)",
    hf_repo="imageomics/bioclip",
    hf_files=("open_clip_config.json",),
    hf_weights=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
)
BIOCLIP_2_5_WEIGHTS = WeightsSpec(
    name="bioclip-2-5",
    description="BioCLIP 2.5 (open_clip, ViT-H/14 by its name, imageomics/bioclip-2.5-vith14 on the Hugging Face hub)",
    hf_repo="imageomics/bioclip-2.5-vith14",
    hf_files=("open_clip_config.json",),
)
BIOCLIP_2_WEIGHTS = WeightsSpec(
    name="bioclip-2",
    description="BioCLIP-2 (open_clip ViT-L-14, imageomics/bioclip-2 on the Hugging Face hub, MIT licence, ~1.7 GB)",
    hf_repo="imageomics/bioclip-2",
    hf_files=("open_clip_config.json",),
    hf_weights=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
)


class BioClipExtractor(OpenClipExtractor):
    name = "bioclip"
    description = "BioCLIP image embedding (ViT-B-16, 512-d) and text encoder: BioCLIP score, taxonomic accuracy."
    weights_specs = (BIOCLIP_WEIGHTS,)


class BioClip2Extractor(BioClipExtractor):
    name = "bioclip-2"
    description = "BioCLIP-2 image embedding (ViT-L-14, 768-d) and text encoder."
    weights_specs = (BIOCLIP_2_WEIGHTS,)


class BioClip25Extractor(BioClipExtractor):
    name = "bioclip-2-5"
    description = "BioCLIP 2.5 image embedding and text encoder (imageomics/bioclip-2.5-vith14)."
    weights_specs = (BIOCLIP_2_5_WEIGHTS,)
