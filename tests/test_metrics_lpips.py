"""LPIPS numerics: exact pairwise distances at 512 px, the per-taxon Gram matrix (in memory or spilled to disk),
the two pairings, and (slow) equality with the `lpips` package at 512 px on the same weights."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import taxabench.metrics.metric_lpips as metric_lpips
from taxabench.metrics.extractor_lpips_vgg import CHANNELS, LpipsVggExtractor, pairwise_lpips
from taxabench.metrics.metric_lpips import Lpips


def lpips_like_embeddings(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Embeddings shaped as LpipsVggExtractor's at `size` px: per position, non-negative unit vectors over channels
    (close between images, as real photos' features are), scaled by sqrt(head weight / positions)."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for k, channels in enumerate(CHANNELS):
        positions = (size >> k) ** 2
        shared = torch.rand(1, channels, positions, generator=generator)
        h = shared + 0.6 * torch.rand(n, channels, positions, generator=generator)
        parts.append((h / h.norm(dim=1, keepdim=True) * 0.1 / positions ** 0.5).flatten(1))
    return torch.cat(parts, dim=1)


def test_pairwise_lpips_is_exact_over_512px_embeddings():
    """32 M dimensions: float32 ||a||^2 + ||b||^2 - 2 a.b read +0.35% here (always too high); now within 1e-9."""
    embeddings = lpips_like_embeddings(3, 512)
    assert embeddings.shape[1] == 31_981_568
    ours = pairwise_lpips(embeddings[:1], embeddings[1:])
    exact = ((embeddings[:1].double() - embeddings[1:].double()) ** 2).sum(dim=1, keepdim=True).T
    torch.testing.assert_close(ours, exact, rtol=1e-9, atol=0)


class Images:
    def __init__(self, images: torch.Tensor):
        self.images = images

    def tensor(self, rows: list[int]) -> torch.Tensor:
        return self.images[rows]


@pytest.fixture(scope="module")
def extractor():
    return LpipsVggExtractor(None, size=32, seed=0)


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.interpolate(torch.rand(9, 3, 6, 6, generator=generator), size=32, mode="bilinear")
    return (smooth * 255).to(torch.uint8)


def test_taxon_matrix_in_memory_and_spilled_equal_pairwise(extractor, images, monkeypatch):
    generated, real = Images(images[:4]), Images(images[4:])
    parts = [(generated, np.arange(4)), (real, np.array([0, 2, 3]))]
    in_memory = metric_lpips._lpips_matrix(extractor, parts, batch_size=2)
    monkeypatch.setattr(metric_lpips, "MEMORY_BYTES", 0)  # every taxon goes to a temporary file
    spilled = metric_lpips._lpips_matrix(extractor, parts, batch_size=2)
    np.testing.assert_array_equal(spilled, in_memory)
    embeddings = extractor(torch.cat([images[:4], images[[4, 6, 7]]]))["lpips"]
    np.testing.assert_allclose(in_memory, pairwise_lpips(embeddings, embeddings).numpy(), rtol=1e-6, atol=1e-9)
    assert not list((metric_lpips._scratch_dir()).iterdir())  # the temporary file is gone


@pytest.mark.parametrize("pairing", ["all", "index"])
def test_pairings(extractor, images, pairing):
    """all: mean over the taxon's real images; index: the i-th generated with the i-th real (cycled)."""
    gen_unit, real_unit = np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1])
    settings = SimpleNamespace(lpips_max_real=32, seed=0, lpips_pairing=pairing, batch_size=4)
    context = SimpleNamespace(config=SimpleNamespace(eval=settings),
                              sets=SimpleNamespace(gen_unit=gen_unit, real_unit=real_unit))
    generated, real = Images(images[:5]), Images(images[5:8])
    rows, fidelity, diversity = Lpips()._unit(0, extractor, context, real, generated)
    embeddings = extractor(images)["lpips"]
    to_real = pairwise_lpips(embeddings[:3], embeddings[5:7]).numpy()
    expected = to_real[[0, 1, 2], [0, 1, 0]] if pairing == "index" else to_real.mean(axis=1)
    np.testing.assert_array_equal(rows, [0, 1, 2])
    np.testing.assert_allclose(fidelity, expected, rtol=1e-6)
    among = pairwise_lpips(embeddings[:3], embeddings[:3]).numpy()
    np.testing.assert_allclose(diversity, among.sum(axis=1) / 2, rtol=1e-6)


@pytest.mark.slow
def test_lpips_equals_the_lpips_package_at_512px(tmp_path):
    """The paper configs' size, on the VGG16 file a run loads: the stand-in (tests/standins.py) in
    `$TORCH_HOME/hub/checkpoints/`, resolved as a run resolves it, and the same torchvision file loaded into the
    `lpips` package's network by its own layer names. The tolerance is float32 rounding of the network (the
    distance itself is exact): 2e-5 relative."""
    import lpips
    from standins import build_torch_hub_files, pointed_caches

    from taxabench.config import config_from_dict
    from taxabench.metrics.extractor_lpips_vgg import VGG16_WEIGHTS

    with pointed_caches(tmp_path) as caches:
        digests = build_torch_hub_files(caches / "torch")
        config = config_from_dict({"name": "lpips", "data": {"image_size": 512}, "eval": {
            "lpips_backbone": "pretrained", "unverified_weights": {"lpips-vgg": digests["lpips-vgg"]}}})
        ours = LpipsVggExtractor.load(config)
    vgg16 = torch.load(caches / "torch" / "hub" / "checkpoints" / VGG16_WEIGHTS.filename, weights_only=True)
    reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    # lpips names each VGG layer slice<k>.<torchvision index>: the file's features.<index>
    reference.net.load_state_dict({key: vgg16["features." + key.split(".", 1)[1]]
                                   for key in reference.net.state_dict()}, strict=True)
    generator = torch.Generator().manual_seed(2)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 16, 16, generator=generator), size=512,
                                             mode="bilinear")
    images = (smooth * 255).to(torch.uint8)
    with torch.no_grad():
        embeddings = torch.cat([ours(images[i:i + 1])["lpips"] for i in range(4)])
        got = pairwise_lpips(embeddings[:2], embeddings[2:])
        x = images.float() / 127.5 - 1
        expected = reference(x[[0, 0, 1, 1]], x[[2, 3, 2, 3]]).flatten().double().view(2, 2)
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=0)
