"""Metrics equal the reference libraries on the same stand-in weights (`tests/standins.py`), loaded the way a user's
files are (the torch hub cache, the Hugging Face hub cache), on PNG images at 64 and 512 px:

- FID = pytorch-fid's `calculate_fid_given_paths` and clean-fid's `compute_fid(mode="legacy_pytorch")` on the same
  two folders: the same protocol (bilinear resize to 299 without antialiasing, [-1, 1]), so only float32 rounding
  and the matrix square root's numerics separate them;
- torch-fidelity and torchmetrics read the same weights file into their own copy of the network, but resize with
  TensorFlow 1's bilinear kernel and scale with (x - 128) / 128: that protocol applied to taxabench's network gives
  their numbers to float32 rounding, and their FID differs from taxabench's by the protocol alone (measured here);
- the BioCLIP score = open_clip's own `hf-hub:imageomics/bioclip` loading, tokenizer and preprocessing: exact on the
  same input tensor; open_clip's PIL resize rounds to 8 bits, which bounds the difference at 64 and 512 px.

Marked `realweights` (`nox -s realweights`): the full-size BioCLIP stand-in and the Inception passes at 299 px take
about a minute on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import standins
import torch

from taxabench.config import config_from_dict

pytestmark = pytest.mark.realweights
SIZES = [64, 512]
N_IMAGES = 12  # per side: far fewer than 2,048 features, the rank-deficient case per-taxon FID always is


@pytest.fixture(scope="module")
def digests(caches):
    return standins.build_torch_hub_files(caches / "torch")


@pytest.fixture(scope="module")
def inception_file(caches, digests):
    from taxabench.metrics.extractor_inception import INCEPTION_WEIGHTS

    return caches / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS.filename


@pytest.fixture(scope="module")
def inception(digests):
    """taxabench's extractor, resolved from $TORCH_HOME as a run resolves it."""
    from taxabench.metrics.extractor_inception import InceptionExtractor

    config = config_from_dict({"eval": {"unverified_weights": {"inception": digests["inception"]}}})
    return InceptionExtractor.load(config)


def smooth_images(n: int, size: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """n uint8 images with structure at every scale up to `size` (bilinear noise plus fine noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.rand(n, 3, 6, 6, generator=generator), size=size, mode="bilinear")
    fine = torch.rand(n, 3, size, size, generator=generator)
    return ((0.8 * coarse + 0.2 * fine + shift).clamp(0, 1) * 255).round().to(torch.uint8)


def write_folder(images: torch.Tensor, folder) -> list:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return sorted(folder.iterdir())


@pytest.fixture(scope="module", params=SIZES)
def image_sets(request, tmp_path_factory):
    """Real and generated PNG folders at one size, and their images as taxabench reads them."""
    size = request.param
    root = tmp_path_factory.mktemp(f"images-{size}")
    real, generated = smooth_images(N_IMAGES, size, seed=1), smooth_images(N_IMAGES, size, seed=2, shift=0.1)
    write_folder(real, root / "real")
    write_folder(generated, root / "generated")
    return size, root, real, generated


def features(extractor, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([extractor(images[i:i + 4])["pool3"] for i in range(0, len(images), 4)]).double().numpy()


def test_fid_equals_pytorch_fid_and_clean_fid_on_the_same_folders(image_sets, inception, inception_file,
                                                                    monkeypatch):
    """Tolerance: 1e-4 relative. Per-image features agree to ~1e-6 (float32 convolutions summed in another order);
    with 12 images per side the covariances have rank 11, and pytorch-fid's `sqrtm` of their singular product and
    torch-fidelity-style eigenvalues carry ~1e-6 of the trace in rounding, which FID = traces - 2 tr(sqrt)
    (a difference of large numbers) can amplify about a hundredfold."""
    import cleanfid.inception_pytorch
    import pytorch_fid.inception
    from cleanfid import fid as clean_fid
    from pytorch_fid.fid_score import calculate_fid_given_paths

    from taxabench.metrics.metric_fd import fd_from_features

    _, root, real, generated = image_sets
    state = torch.load(inception_file, weights_only=True)  # the stand-in, as both libraries would download it
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", lambda *args, **kwargs: state)
    monkeypatch.setattr(cleanfid.inception_pytorch, "load_state_dict_from_url", lambda *args, **kwargs: state)
    ours = fd_from_features(features(inception, real), features(inception, generated))
    folders = [str(root / "real"), str(root / "generated")]
    theirs = calculate_fid_given_paths(folders, batch_size=4, device="cpu", dims=2048, num_workers=0)
    clean = clean_fid.compute_fid(*folders, mode="legacy_pytorch", num_workers=0, batch_size=4,
                                  device=torch.device("cpu"), verbose=False, use_dataparallel=False)
    assert ours > 0.1  # two different sets, far above float32 rounding: the relative tolerance means something
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert ours == pytest.approx(clean, rel=1e-4)


def test_torch_fidelity_and_torchmetrics_differ_by_their_protocol_alone(image_sets, inception, inception_file):
    """Their network is the same weights file in their own module. They scale with (x - 128) / 128 and resize with
    TensorFlow 1's bilinear kernel (torch-fidelity) or torch's antialiased bilinear (torchmetrics' default): each
    protocol applied to taxabench's network gives their features to float32 rounding (1e-4 of the feature scale)
    and their FID to 1e-4 relative (see the test above); taxabench's own FID differs by the protocol."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torchmetrics.image.fid import FrechetInceptionDistance

    from taxabench.metrics.metric_fd import fd_from_features

    _, _, real, generated = image_sets

    def protocol_features(images, resize):
        with torch.no_grad():
            return inception.blocks((resize(images.float()) - 128) / 128).flatten(1).double().numpy()

    def tensorflow1(x):
        return interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)

    def antialiased(x):
        return torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False,
                                               antialias=True)

    network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(inception_file)).eval()
    with torch.no_grad():
        expected = network(real[:4])[0].double().numpy()
    got = protocol_features(real[:4], tensorflow1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    fidelity = torch_fidelity.calculate_metrics(
        input1=ImageList(real), input2=ImageList(generated), fid=True, cuda=False, cache=False, verbose=False,
        feature_extractor_weights_path=str(inception_file), batch_size=4, save_cpu_ram=True,
    )["frechet_inception_distance"]
    tensorflow1_fid = fd_from_features(protocol_features(real, tensorflow1), protocol_features(generated, tensorflow1))
    assert tensorflow1_fid == pytest.approx(fidelity, rel=1e-4)
    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_file))
    metric.update(real, real=True)
    metric.update(generated, real=False)
    antialiased_fid = fd_from_features(protocol_features(real, antialiased), protocol_features(generated, antialiased))
    assert antialiased_fid == pytest.approx(metric.compute().item(), rel=1e-4)
    ours = fd_from_features(features(inception, real), features(inception, generated))
    assert abs(ours - tensorflow1_fid) > 1e-3 * ours  # the resize and the scaling move FID, beyond rounding


class ImageList(torch.utils.data.Dataset):
    """uint8 images as torch-fidelity takes them."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


@pytest.fixture(scope="module")
def bioclip(caches):
    standins.build_bioclip(caches / "hub")
    from taxabench.metrics.extractor_bioclip import BioClipExtractor

    return BioClipExtractor.load(config_from_dict({}))


@pytest.mark.parametrize("size", SIZES)
def test_bioclip_score_equals_open_clip_loading_the_hub_id_itself(bioclip, size):
    """open_clip resolves `hf-hub:imageomics/bioclip` from the same cache and builds its own tokenizer and
    preprocessing. On the same input tensor the scores are equal to float32 rounding (1e-4 points of a score in
    [-100, 100]); through its PIL preprocessing (bicubic resize on 8-bit pixels, rounded back to 8 bits, then a
    224 px centre crop of a square image) the difference is that rounding: under 0.5 points here."""
    import open_clip

    from taxabench.metrics.metric_clip_score import caption, caption_scores

    model, _, preprocess = open_clip.create_model_and_transforms(f"hf-hub:{standins.BIOCLIP_ID}")
    tokenizer = open_clip.get_tokenizer(f"hf-hub:{standins.BIOCLIP_ID}")
    model.eval()
    ranks = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
    lineages = [("Animalia", "Chordata", "Actinopterygii", "Perciformes", "Pomacentridae", "Abudefduf", "saxatilis"),
                ("Animalia", "Chordata", "Actinopterygii", "Perciformes", "Labridae", "Thalassoma", "bifasciatum")]
    captions = [caption(ranks, lineage, (), "taxonomic") for lineage in lineages]
    assert captions[0] == "Animalia Chordata Actinopterygii Perciformes Pomacentridae Abudefduf saxatilis"
    images = smooth_images(4, size, seed=3)
    caption_of_image = np.array([0, 1, 0, 1])
    with torch.no_grad():
        ours = caption_scores(bioclip(images)["embedding"].double().numpy(),
                              bioclip.encode_text(captions).double().numpy(), caption_of_image)
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
        pil = torch.stack([preprocess(PIL.Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images])

        def score(pixels):
            embedding = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
            return 100 * (embedding * text[caption_of_image]).sum(-1).double().numpy()
        direct = score(bioclip_input(bioclip, images))
        through_pil = score(pil)
    np.testing.assert_allclose(ours, direct, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours, through_pil, rtol=0, atol=0.5)


def bioclip_input(extractor, images: torch.Tensor) -> torch.Tensor:
    """The tensor taxabench's extractor feeds the model (its resize, then open_clip's mean and std)."""
    from taxabench.metrics.extractor_base import to_unit_range

    x = to_unit_range(images, extractor.image_size, mode=extractor.interpolation)
    return (x - extractor.mean) / extractor.std
