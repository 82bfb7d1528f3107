"""DINOv2, CLIP ViT-L/14@336 (CMMD) and BioCLIP 2.5: the real architectures with seeded random weights built offline,
read through the same loading code as real weights; CMMD's math; hub revisions pinned and recorded."""

import shutil

import numpy as np
import pytest
import torch

from taxabench.config import config_from_dict
from taxabench.errors import ConfigError, WeightsNotFoundError
from taxabench.metrics.metric_cmmd import mmd_rbf
from taxabench.metrics.registry import EXTRACTORS
from taxabench.weights import resolve_weights

DINOV2_LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4,
                "patch_size": 14, "image_size": 518, "layerscale_value": 1.0}  # facebook/dinov2-large's config


def dinov2_folder(tmp_path, **overrides):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    folder = tmp_path / "dinov2"
    Dinov2Model(Dinov2Config(**{**DINOV2_LARGE, **overrides})).save_pretrained(folder)
    return folder


def uint8_images(n=3, size=64):
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def test_cmmd_is_the_reference_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)) * 4, rng.normal(1.0, 4, size=(9, 5))

    def kernel_mean(a, b):  # their code: exp(-gamma * squared distances), mean over all pairs incl. the diagonal
        return np.mean([[np.exp(-np.sum((p - q) ** 2) / (2 * 10.0**2)) for q in b] for p in a])

    expected = 1000 * (kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y))
    assert mmd_rbf(x, y) == pytest.approx(expected, rel=1e-10)
    assert mmd_rbf(x, x.copy()) == pytest.approx(0.0, abs=1e-9)
    assert mmd_rbf(x, y) == pytest.approx(mmd_rbf(y, x), rel=1e-12)
    assert mmd_rbf(x, y, np.full(12, 3.0), np.full(9, 2.0)) == pytest.approx(mmd_rbf(x, y), rel=1e-12)
    doubled = mmd_rbf(np.concatenate([x, x[:1]]), y)  # one image counted twice = weight 2
    assert mmd_rbf(x, y, np.r_[2.0, np.ones(11)]) == pytest.approx(doubled, rel=1e-12)


def test_dinov2_loads_through_its_weights_resolution(tmp_path):
    folder = dinov2_folder(tmp_path, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=224)
    config = config_from_dict({"eval": {"weights": {"dinov2-vitl14": str(folder)}}})
    extractor = EXTRACTORS.get("dinov2-vitl14").load(config)
    features = extractor(uint8_images())["cls"]
    assert features.shape == (3, 32) and torch.isfinite(features).all()
    assert extractor.identity.startswith("dinov2-vitl14@sha256:") and "(explicit)" in extractor.identity
    assert extractor.protocol == "dinov2:bicubic-224,imagenet-mean-std,cls"
    again = EXTRACTORS.get("dinov2-vitl14").load(config)(uint8_images())["cls"]
    assert torch.equal(features, again)
    with pytest.raises(WeightsNotFoundError, match="lacks config.json"):
        EXTRACTORS.get("dinov2-vitl14").load(config_from_dict({"eval": {"weights": {"dinov2-vitl14": str(tmp_path)}}}))


@pytest.mark.slow
def test_dinov2_vitl14_real_architecture(tmp_path):
    folder = dinov2_folder(tmp_path)
    extractor = EXTRACTORS.get("dinov2-vitl14").load(
        config_from_dict({"eval": {"weights": {"dinov2-vitl14": str(folder)}}}))
    assert sum(p.numel() for p in extractor.parameters()) > 300e6
    assert extractor(uint8_images(2))["cls"].shape == (2, 1024)


@pytest.mark.slow
def test_clip_vit_l14_336_real_architecture_for_cmmd(tmp_path):
    import json

    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    folder = tmp_path / "clip-l-336"  # the layout of timm/vit_large_patch14_clip_336.openai
    folder.mkdir()
    model = open_clip.create_model("ViT-L-14-336")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": open_clip.get_model_config("ViT-L-14-336"),
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }))
    extractor = EXTRACTORS.get("clip-vit-l14-336").load(
        config_from_dict({"eval": {"weights": {"clip-vit-l14-336": f"local-dir:{folder}"}}}))
    embedding = extractor(uint8_images(2))["embedding"]
    assert embedding.shape == (2, 768) and "336" in extractor.protocol
    assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)


def test_hub_revision_is_pinned_and_recorded(random_clip_folder, tmp_path, monkeypatch):
    """Two snapshots of imageomics/bioclip in a Hugging Face cache: `eval.revisions` picks one, and the weights
    identity names its commit next to the SHA-256 of its files (BioCLIP 2.5 loads through the same path)."""
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    old, new = "a" * 40, "b" * 40
    for repo in ("models--imageomics--bioclip", "models--imageomics--bioclip-2.5-vith14"):
        for commit in (old, new):
            shutil.copytree(random_clip_folder, hub / repo / "snapshots" / commit)
        (hub / repo / "snapshots" / new / "README.md").write_text("the newer snapshot")
        (hub / repo / "refs").mkdir()
        (hub / repo / "refs" / "main").write_text(new)
    latest = EXTRACTORS.get("bioclip").load(config_from_dict({}))
    assert f"(cache, revision {new[:12]})" in latest.identity
    pinned = EXTRACTORS.get("bioclip").load(config_from_dict({"eval": {"revisions": {"bioclip": old}}}))
    assert f"(cache, revision {old[:12]})" in pinned.identity
    two_five = EXTRACTORS.get("bioclip-2-5").load(config_from_dict({"eval": {"revisions": {"bioclip-2-5": old}}}))
    assert two_five.identity.startswith("bioclip-2-5@sha256:") and old[:12] in two_five.identity
    with pytest.raises(WeightsNotFoundError, match=f"at revision {'c' * 40}.*--revision {'c' * 40}"):
        resolve_weights(EXTRACTORS.get("bioclip").weights_specs[0], revision="c" * 40, download=False)
    from taxabench.metrics.evaluation import check_eval_names

    with pytest.raises(ConfigError, match="'inception' does not load from the Hugging Face hub"):
        check_eval_names(config_from_dict({"eval": {"revisions": {"inception": old}}}))
