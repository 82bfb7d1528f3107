"""`clip_score`: the BioCLIP score of the paper, cosine(image, caption) x 100 averaged over generated images.

Not clamped at 0: torchmetrics' `CLIPScore` takes max(100 · cosine, 0) per image (as CLIPScore, Hessel et al. 2021,
takes w · max(cosine, 0)); here an image further from its caption than orthogonal counts below 0, so the mean
is lower than the clamped one wherever some cosines are negative. The report says so next to the main table.

The caption is `eval.clip_caption`: the bare taxonomic string "Animalia Chordata ... Abudefduf saxatilis", as the
paper group's BioCLIP-score script builds it (the default for BioCLIP models), or BioCLIP's training sentence
"a photo of Animalia Chordata ... Abudefduf saxatilis." (`taxonomy.bioclip_caption`; the default for synthclip,
which was trained on it). The two give different scores (29% apart on the same images and weights); the protocol
names the one used. Overall, each image is scored against its own taxon's caption. At rank r, each image
is scored against the caption of its taxon at rank r (the lineage cut after r), averaged per taxon of rank r, then
over those taxa: "is this image aligned with its genus?". No clipping at 0 (unlike Hessel et al.'s CLIPScore).
Named "BioCLIP score" with the BioCLIP weights, "CLIP score (<extractor>)" otherwise. Held-out real images of the
same taxa are scored the same way for the ceiling row.
"""

from __future__ import annotations

import numpy as np

from taxabench.metrics.metric_base import PerImageMetric
from taxabench.taxonomy import bioclip_caption

DISPLAY_NAMES = {"bioclip": "BioCLIP score", "bioclip-2": "BioCLIP-2 score", "bioclip-2-5": "BioCLIP-2.5 score"}


def caption_scores(image_embeddings: np.ndarray, caption_embeddings: np.ndarray, caption_of_image: np.ndarray) -> np.ndarray:
    """cosine x 100 of each image with its caption (both L2-normalised)."""
    return 100.0 * np.einsum("ij,ij->i", image_embeddings, caption_embeddings[caption_of_image])


def caption_form(setting: str, model_name: str) -> str:
    if setting != "auto":
        return setting
    return "taxonomic" if model_name in DISPLAY_NAMES else "sentence"


def caption(ranks, labels, above, form: str) -> str:
    sentence = bioclip_caption(ranks, labels, above)
    return sentence if form == "sentence" else sentence.removeprefix("a photo of ").removesuffix(".")


class ClipScore(PerImageMetric):
    key = "clip_score"
    description = ("cosine(image, BioCLIP-format caption) x 100 with eval.clip_model (the paper's BioCLIP score); "
                   "real images give the ceiling row.")

    def extractors(self, config) -> list[str]:
        return [config.eval.clip_model]

    def values(self, context, sets, side) -> dict[str, dict[str, np.ndarray]]:
        model_name = context.config.eval.clip_model
        above = context.config.data.lineage_above  # ranks the dataset lacks above its top one (BioCLIP captions)
        form = caption_form(context.config.eval.clip_caption, model_name)
        model = context.extractor(model_name)
        images = context.features(model_name, side)[model.feature_for(self.key)]
        values_by_rank = {}
        for rank in sets.ranks:
            taxa, taxon_of_image = sets.gen_taxa(rank)
            captions = context.text_embeddings(model_name, [caption(t.ranks, t.lineage, above, form) for t in taxa])
            values_by_rank[rank] = caption_scores(images, captions, taxon_of_image)
        return {self.key: values_by_rank}

    def describe(self, context, quantity):
        model_name = context.config.eval.clip_model
        name = DISPLAY_NAMES.get(model_name, f"CLIP score ({model_name})")
        protocol = {**context.image_protocol(model_name), "caption": caption_form(context.config.eval.clip_caption, model_name), "scale": "cosine*100"}
        return name, model_name, context.extractor(model_name).identity, True, protocol
