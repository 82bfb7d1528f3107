"""Extractors: LPIPS agrees with lpips and torchmetrics; batches do not change features; missing weights fail fast."""

import time

import numpy as np
import pytest
import torch

from taxabench.config import config_from_dict
from taxabench.errors import TaxabenchError, WeightsNotFoundError
from taxabench.metrics.extractor_base import check_images
from taxabench.metrics.extractor_lpips_vgg import LpipsVggExtractor, pairwise_lpips
from taxabench.metrics.registry import EXTRACTORS


@pytest.fixture(scope="module")
def lpips_extractor():
    return LpipsVggExtractor(None, size=64, seed=0)  # untrained backbone: no weights offline


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(6, 3, 8, 8, generator=generator), size=64, mode="bilinear")
    return (smooth * 255).to(torch.uint8)


def backbone_state(extractor: LpipsVggExtractor) -> dict[str, torch.Tensor]:
    """The extractor's VGG16 weights under torchvision's `features.N` names."""
    return {f"features.{key}": value for part in extractor.slices for key, value in part.state_dict().items()}


def copy_backbone(extractor, net) -> None:
    """Load the extractor's backbone into lpips' / torchmetrics' `net` (slices 1..5 keep torchvision's indices)."""
    state = {}
    for k, part in enumerate(extractor.slices, start=1):
        state.update({f"slice{k}.{key}": value for key, value in part.state_dict().items()})
    net.net.load_state_dict(state, strict=True)


def test_lpips_equals_lpips_package_and_torchmetrics(lpips_extractor, images):
    import lpips
    from torchmetrics.functional.image.lpips import _LPIPS

    reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # heads from the package, random backbone
    copy_backbone(lpips_extractor, reference)
    tm = _LPIPS(pretrained=True, net="vgg", pnet_rand=True)
    copy_backbone(lpips_extractor, tm)

    embeddings = lpips_extractor(images)["lpips"]
    ours = pairwise_lpips(embeddings[:3], embeddings[3:])
    x = images.float() / 127.5 - 1
    with torch.no_grad():
        for i in range(3):
            for j in range(3):
                expected = reference(x[i:i + 1], x[3 + j:4 + j]).item()
                assert ours[i, j].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
                assert ours[i, j].item() == pytest.approx(tm(x[i:i + 1], x[3 + j:4 + j]).item(), rel=1e-4, abs=1e-6)
    assert ours.min() > 0


def test_features_do_not_depend_on_batch_size(lpips_extractor, images, random_clip_folder):
    from taxabench.metrics.extractor_synthclip import SynthClipExtractor
    from taxabench.weights import ResolvedWeights

    clip = SynthClipExtractor(ResolvedWeights(random_clip_folder, "explicit", None))
    for extractor, name in ((lpips_extractor, "lpips"), (clip, "embedding")):
        whole = extractor(images)[name]
        one_by_one = torch.cat([extractor(images[i:i + 1])[name] for i in range(len(images))])
        torch.testing.assert_close(one_by_one, whole, rtol=1e-4, atol=1e-5)


def test_lpips_embedding_is_not_offered_for_fd(lpips_extractor):
    assert lpips_extractor.feature_for("lpips") == "lpips"
    with pytest.raises(TaxabenchError, match="extractor 'lpips-vgg' provides no features for metric 'fd'"):
        lpips_extractor.feature_for("fd")


def test_input_contract_is_checked():
    with pytest.raises(TypeError, match="expects uint8 images in \\[0, 255\\], got dtype torch.float32"):
        check_images(torch.zeros(1, 3, 8, 8), "x")
    with pytest.raises(ValueError, match="B x 3 x H x W, got \\(3, 8, 8\\)"):
        check_images(torch.zeros(3, 8, 8, dtype=torch.uint8), "x")


@pytest.mark.parametrize(("name", "names_what"), [("inception", "pt_inception-2015-12-05-6726825d.pth"),
                                                  ("bioclip", "imageomics/bioclip")])
def test_missing_weights_fail_fast_offline(name, names_what, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    config = config_from_dict({})
    started = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as error:
        EXTRACTORS.get(name).load(config)
    assert time.perf_counter() - started < 2.0
    message = str(error.value)
    env_var = f"TAXABENCH_{name.upper()}_WEIGHTS"
    assert "the machine is offline" in message and names_what in message and env_var in message


def test_lpips_auto_falls_back_to_a_labelled_untrained_backbone(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    auto = LpipsVggExtractor.load(config_from_dict({}))
    assert not auto.trained and "untrained" in auto.identity and "untrained" in auto.protocol
    with pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth"):
        LpipsVggExtractor.load(config_from_dict({"eval": {"lpips_backbone": "pretrained"}}))


def test_lpips_loads_a_torchvision_vgg16_file(lpips_extractor, images, tmp_path):
    """The pretrained path reads a torchvision-format file (here: the untrained weights, saved) strictly."""
    from taxabench.weights import ResolvedWeights

    path = tmp_path / "vgg16.pth"
    classifier = {"classifier.0.weight": torch.zeros(2, 2)}  # torchvision's file holds the classifier too
    torch.save({**backbone_state(lpips_extractor), **classifier}, path)
    loaded = LpipsVggExtractor(ResolvedWeights(path, "explicit", "0" * 64), size=64)
    assert loaded.trained and "vgg16:sha256:000000000000 (explicit)" in loaded.identity
    torch.testing.assert_close(loaded(images)["lpips"], lpips_extractor(images)["lpips"])


def test_inception_architecture_takes_pytorch_fid_weights(tmp_path):
    """The FID Inception builds offline and loads a state dict of pytorch-fid's layout strictly; 2048-d pool3."""
    from taxabench.metrics.extractor_inception import InceptionExtractor, fid_inception_v3
    from taxabench.weights import ResolvedWeights

    path = tmp_path / "inception.pth"
    torch.manual_seed(0)
    torch.save(fid_inception_v3().state_dict(), path)
    extractor = InceptionExtractor(ResolvedWeights(path, "explicit", "1" * 64))
    features = extractor(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))["pool3"]
    assert features.shape == (2, 2048) and np.isfinite(features.numpy()).all()
    assert extractor.identity == "inception@sha256:111111111111 (explicit)"
