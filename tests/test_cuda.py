"""On a CUDA device: bf16 training follows the float32 loss curve, torch.compile changes nothing but speed, sampling
in float16 gives the float64 images, extractors give the CPU's features; and every throughput lever
(taxabench/levers.py: channels-last, each SDPA kernel, compile modes with CUDA graphs) keeps the loss curve and the
images. Run by benchmarks/gpu_check.sh (`pytest -m cuda`); skipped without a GPU."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import experiment
from PIL import Image

from taxabench.config import config_from_dict
from taxabench.sample import sample_method
from taxabench.train import train_method

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)"),
]

SPECIES = ["bubuii", "nomoatus"]


def losses(folder) -> list[float]:
    with open(folder / "loss.csv", newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def train(world, data, run_dir, ranks, **train_flags):
    config = experiment(world, run_dir, train={"steps_per_stage": 4, **train_flags},
                        method_options={"taxadiffusion": {"ranks": ranks}}, sample={"taxa": SPECIES})
    return config, train_method(config, "taxadiffusion", data=data, show_progress=False)


@pytest.fixture(scope="module")
def bf16_run(tiny_world, tiny_data, tiny_backbone, tmp_path_factory):
    return train(tiny_world, tiny_data, tmp_path_factory.mktemp("bf16"), ["class", "order"], mixed_precision="bf16")


def test_bf16_training_follows_the_float32_loss_curve(bf16_run, tiny_world, tiny_data, tmp_path):
    _, fast = bf16_run
    _, plain = train(tiny_world, tiny_data, tmp_path, ["class", "order"], mixed_precision="no", cache_latents=False,
                     cache_text=False)  # the authors' configuration
    assert len(losses(fast)) == len(losses(plain)) == 8
    # bf16 keeps 8 bits of mantissa: per-step losses agree to a few percent, not to float32 rounding
    np.testing.assert_allclose(losses(fast), losses(plain), rtol=0.05)


@pytest.fixture(scope="module")
def bf16_class_run(tiny_world, tiny_data, tiny_backbone, tmp_path_factory):
    """The defaults on CUDA (bf16) for one rank: what each training lever is compared with."""
    return train(tiny_world, tiny_data, tmp_path_factory.mktemp("bf16-class"), ["class"], mixed_precision="bf16")


def test_torch_compile_changes_nothing_but_speed(bf16_class_run, tiny_world, tiny_data, tmp_path):
    _, eager = bf16_class_run
    _, compiled = train(tiny_world, tiny_data, tmp_path / "compiled", ["class"], mixed_precision="bf16",
                        compile=True)
    np.testing.assert_allclose(losses(compiled), losses(eager), rtol=0.05)


def test_float16_sampling_gives_the_float64_images(bf16_run):
    config, _ = bf16_run

    def images(precision: str) -> list[np.ndarray]:
        config.sample.precision = precision
        folder = sample_method(config, "taxadiffusion", output=f"cuda-{precision}", show_progress=False)
        return [np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*/*.png"))]

    reference, half = images("float64"), images("auto")  # auto: float16 on CUDA
    assert len(reference) == len(half) == len(SPECIES) * config.sample.images_per_taxon
    differences = [np.abs(a - b) for a, b in zip(half, reference)]
    # on a CPU, float16 moved pixel values by at most 1 level (mean 0.1); allow a GPU's other kernels some more
    assert max(d.max() for d in differences) <= 16 and np.mean([d.mean() for d in differences]) < 2.0


def half_images(config, name: str, **levers) -> list[np.ndarray]:
    """The run's samples at `sample.precision: auto` (float16 on CUDA) with these sample levers (reset after)."""
    defaults = {"compile": False, "compile_mode": "default", "channels_last": False, "attention": "auto"}
    for key, value in {**defaults, **levers}.items():
        setattr(config.sample, key, value)
    config.sample.precision = "auto"
    try:
        folder = sample_method(config, "taxadiffusion", output=name, show_progress=False)
    finally:
        for key, value in defaults.items():
            setattr(config.sample, key, value)
    return [np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*/*.png"))]


def unsupported_kernel(error: RuntimeError) -> bool:
    return "No available kernel" in str(error) or "No viable backend" in str(error)


@pytest.mark.parametrize("levers", [
    {"channels_last": True, "attention": "flash"},
    {"attention": "efficient"},
    {"attention": "cudnn"},
    {"attention": "math"},
    {"compile": True, "channels_last": True, "attention": "flash"},  # what the harness's combined path may be
], ids=lambda levers: "+".join(f"{k}={v}" for k, v in levers.items()))
def test_training_levers_follow_the_defaults_loss_curve(bf16_class_run, levers, tiny_world, tiny_data, tmp_path):
    _, defaults = bf16_class_run
    try:
        _, fast = train(tiny_world, tiny_data, tmp_path, ["class"], mixed_precision="bf16", **levers)
    except RuntimeError as error:
        if unsupported_kernel(error):  # the kernel does not take these shapes: the harness shows it as a failed row
            pytest.skip(f"{levers}: {error}")
        raise
    assert len(losses(fast)) == len(losses(defaults)) == 4
    np.testing.assert_allclose(losses(fast), losses(defaults), rtol=0.05)  # bf16's tolerance, as above


@pytest.mark.parametrize("levers", [
    {"channels_last": True, "attention": "flash"},
    {"attention": "efficient"},
    {"compile": True, "compile_mode": "reduce-overhead"},  # CUDA graphs
    {"compile": True, "compile_mode": "default", "channels_last": True},
], ids=lambda levers: "+".join(f"{k}={v}" for k, v in levers.items()))
def test_sampling_levers_give_the_default_images(bf16_run, levers):
    config, _ = bf16_run
    reference = half_images(config, "cuda-lever-reference")
    fast = half_images(config, "cuda-levers-" + "-".join(f"{k}-{v}" for k, v in levers.items()), **levers)
    assert len(fast) == len(reference) == len(SPECIES) * config.sample.images_per_taxon
    differences = [np.abs(a - b) for a, b in zip(fast, reference)]
    # float16 on both sides, other kernels or layouts: the float16-against-float64 tolerance above
    assert max(d.max() for d in differences) <= 16 and np.mean([d.mean() for d in differences]) < 2.0


@pytest.mark.parametrize("name", ["synthclip", "lpips-vgg"])
def test_extractors_give_the_cpu_features_on_cuda(name, tiny_world, tiny_data, random_clip_folder):
    from taxabench.metrics.features import real_images
    from taxabench.metrics.registry import EXTRACTORS

    config = config_from_dict({"data": {"root": str(tiny_world)},
                               "eval": {"weights": {"synthclip": str(random_clip_folder)},
                                        "lpips_backbone": "untrained"}})
    images = real_images(tiny_data.eval[:8], config.data).tensor(list(range(8)))
    extractor = EXTRACTORS.get(name).load(config)
    with torch.no_grad():
        on_cpu = extractor(images)
        on_cuda = extractor.to("cuda")(images.to("cuda"))
    for feature, value in on_cpu.items():
        torch.testing.assert_close(on_cuda[feature].float().cpu(), value.float(), rtol=1e-3, atol=1e-3)
