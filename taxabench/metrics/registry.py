"""The metric and feature-extractor registries: every built-in fits on this screen.

`register_metric(name, cls)` / `register_extractor(name, cls)` add one without editing taxabench (names become
cache-file names and config values, so they are validated by `taxabench.registry.Registry`); a package adds them
through the entry-point groups `taxabench.metrics` and `taxabench.extractors`. Built-ins are imported when first
used, so naming them (config validation, `taxabench list`) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taxabench.registry import Registry

if TYPE_CHECKING:
    from taxabench.metrics.extractor_base import FeatureExtractor
    from taxabench.metrics.metric_base import Metric


def _check_attribute(attribute: str) -> object:
    def check(name: str, cls: type) -> None:
        if getattr(cls, attribute, name) != name:
            raise TypeError(f"{name!r}: {cls.__qualname__}.{attribute} is {getattr(cls, attribute)!r}; they must agree")
    return check


METRICS: Registry[Metric] = Registry("metric", "taxabench.metrics.metric_base:Metric", group="taxabench.metrics",
                                     on_load=_check_attribute("key"))
EXTRACTORS: Registry[FeatureExtractor] = Registry("feature extractor", "taxabench.metrics.extractor_base:FeatureExtractor",
                                                  group="taxabench.extractors", on_load=_check_attribute("name"))

SAMPLE_LAYOUTS: Registry = Registry("sample layout", "taxabench.metrics.external_samples:SampleLayout")


def register_metric(name: str, cls: type[Metric]) -> type[Metric]:
    return METRICS.register(name, cls)


def register_extractor(name: str, cls: type[FeatureExtractor]) -> type[FeatureExtractor]:
    return EXTRACTORS.register(name, cls)


_M = "taxabench.metrics."
# name -> (module:Class, description); test_registry checks this text against the classes
_METRICS = {
    "fd": (_M + "metric_fd:FrechetDistance",
           "Fréchet distance on an extractor's features (named FID only with the standard Inception-V3)."),
    "kid": (_M + "metric_kid:KernelDistance",
            "Kernel inception distance (unbiased MMD^2, cubic kernel) on the FD extractor's features."),
    "lpips": (_M + "metric_lpips:Lpips",
              "LPIPS-VGG between generated and real images of the same taxon, and among generated images."),
    "clip_score": (_M + "metric_clip_score:ClipScore",
                   "cosine(image, BioCLIP-format caption) x 100 with eval.clip_model (the paper's BioCLIP score); "
                   "real images give the ceiling row."),
    "taxa_accuracy": (_M + "metric_taxa_accuracy:TaxaAccuracy",
                      "Zero-shot top-1 / top-5 accuracy of generated images among the taxa of each rank "
                      "(eval.clip_model); real images give the ceiling row."),
    "mistake_severity": (_M + "metric_mistake_severity:MistakeSeverity",
                         "Ranks up to the lowest common ancestor of the zero-shot prediction and the true taxon "
                         "(0 = right; eval.clip_model); real images give the ceiling row."),
    "path_consistency": (_M + "metric_path_consistency:PathConsistency",
                         "Percent of images whose per-rank zero-shot predictions form a path of the tree "
                         "(eval.clip_model); real images give the ceiling row."),
    "vendi": (_M + "metric_vendi:VendiRatio",
              "Per-species Vendi score (cosine kernel) of generated / real images in eval.diversity_extractor's "
              "space: < 1 means fewer distinct looks than real."),
    "prdc": (_M + "metric_prdc:Prdc",
             "Precision / recall / density / coverage (k-NN, k = eval.prdc_k) of generated vs real images in "
             "eval.diversity_extractor's space."),
    "copying": (_M + "metric_copying:Copying",
                "Nearest-training-image similarity of generated images and the percent of near-copies (above the "
                "eval.copy_quantile of held-out real images' own); real images give the reference row."),
    "fd_dinov2": (_M + "metric_fd_dinov2:FrechetDistanceDinov2",
                  "Fréchet distance on DINOv2 ViT-L/14 CLS features: FD (dinov2-vitl14), dgm-eval's default space."),
    "cmmd": (_M + "metric_cmmd:Cmmd",
             "CMMD: RBF-kernel MMD (σ=10, x1000) on CLIP ViT-L/14@336 embeddings (eval.cmmd_extractor)."),
    "fd_mean": (_M + "metric_fd_mean:FdMeanTerm",
                "FD's mean term ‖Δμ‖², bias-corrected (unbiased at any sample size) on the FD extractor's "
                "features: per-species comparisons where per-species FD is mostly bias."),
}
_EXTRACTORS = {
    "inception": (_M + "extractor_inception:InceptionExtractor",
                  "FID Inception-V3 pool3 (2048-d), pytorch-fid weights: the standard FID / KID features."),
    "bioclip": (_M + "extractor_bioclip:BioClipExtractor",
                "BioCLIP image embedding (ViT-B-16, 512-d) and text encoder: BioCLIP score, taxonomic accuracy."),
    "bioclip-2": (_M + "extractor_bioclip:BioClip2Extractor",
                  "BioCLIP-2 image embedding (ViT-L-14, 768-d) and text encoder."),
    "bioclip-2-5": (_M + "extractor_bioclip:BioClip25Extractor",
                    "BioCLIP 2.5 image embedding and text encoder (imageomics/bioclip-2.5-vith14)."),
    "synthclip": (_M + "extractor_synthclip:SynthClipExtractor",
                  "synthclip image embedding (128-d) and text encoder, trained by taxabench on SynthTaxa."),
    "lpips-vgg": (_M + "extractor_lpips_vgg:LpipsVggExtractor",
                  "LPIPS v0.1, VGG16 backbone, as an embedding whose squared distances are LPIPS distances."),
    "dinov2-vitl14": (_M + "extractor_dinov2:Dinov2Extractor",
                      "DINOv2 ViT-L/14 CLS features (1024-d, facebook/dinov2-large): FD (dinov2-vitl14), as dgm-eval."),
    "clip-vit-l14-336": (_M + "extractor_clip_l14_336:ClipL14At336Extractor",
                         "OpenAI CLIP ViT-L/14@336 image embedding (768-d): the space of CMMD."),
}
for _name, (_target, _description) in _METRICS.items():
    METRICS.register_lazy(_name, _target, _description)
for _name, (_target, _description) in _EXTRACTORS.items():
    EXTRACTORS.register_lazy(_name, _target, _description)
SAMPLE_LAYOUTS.register_lazy("folders", _M + "external_samples:PerTaxonFolders",
                              "One sub-folder per taxon (slug, scientific name or unique name), its image files inside.")
SAMPLE_LAYOUTS.register_lazy("table", _M + "external_samples:SampleTable",
                              "samples.csv: column image plus a column taxon or one column per rank (the lineage).")
