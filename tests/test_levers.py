"""The throughput levers' switches: config keys validated like every other key, levers a device cannot run refused
with one line naming the key, the attention switch really restricting the kernel, and the sampler doing the
guidance pair in one UNet call and one VAE decode per batch. (That the levers change nothing but speed is in
tests/test_perf.py on a CPU and tests/test_cuda.py on a GPU.)"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from taxabench.config import config_from_dict
from taxabench.errors import ConfigError, TaxabenchError
from taxabench.levers import attention_backend, check_levers

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_lever_keys_load_with_their_defaults_off():
    config = config_from_dict({"train": {"compile": True, "compile_mode": "max-autotune", "channels_last": True,
                                         "attention": "efficient"},
                               "sample": {"compile": True, "compile_mode": "reduce-overhead", "attention": "flash"}})
    assert (config.train.compile_mode, config.train.channels_last, config.train.attention) == (
        "max-autotune", True, "efficient")
    assert (config.sample.compile, config.sample.compile_mode, config.sample.attention) == (
        True, "reduce-overhead", "flash")
    defaults = config_from_dict({})
    for section in (defaults.train, defaults.sample):
        assert (section.compile, section.compile_mode, section.channels_last, section.attention) == (
            False, "default", False, "auto")


@pytest.mark.parametrize(("data", "message"), [
    ({"train": {"attention": "xformers"}}, "train.attention: expected one of 'auto', 'flash'"),
    ({"sample": {"compile_mode": "fast", "compile": True}}, "sample.compile_mode: expected one of 'default'"),
    ({"sample": {"compile_mode": "reduce-overhead"}}, "sample.compile_mode: 'reduce-overhead' has no effect while "
                                                      "<config>.sample.compile is false"),
    ({"train": {"channel_last": True}}, "unknown key 'channel_last' (did you mean 'channels_last'?)"),
])
def test_bad_lever_keys_name_the_key(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(data)


@pytest.mark.parametrize(("attention", "mode", "message"), [
    ("efficient", None, "train.attention: 'efficient' is a CUDA kernel and this run is on cpu"),
    ("cudnn", None, "train.attention: 'cudnn' is a CUDA kernel"),
    ("auto", "reduce-overhead", "train.compile_mode: 'reduce-overhead' captures CUDA graphs"),
    ("auto", "max-autotune", "train.compile_mode: 'max-autotune' captures CUDA graphs"),
])
def test_levers_a_cpu_cannot_run_are_refused_there(attention, mode, message):
    with pytest.raises(TaxabenchError, match=message):
        check_levers("train", attention, mode, CPU, torch.float32)


def test_levers_each_device_runs_pass_the_check():
    for attention in ("auto", "flash", "math"):
        for mode in (None, "default", "max-autotune-no-cudagraphs"):
            check_levers("train", attention, mode, CPU, torch.float32)
    for attention in ("auto", "flash", "efficient", "cudnn", "math"):
        for mode in (None, "reduce-overhead", "max-autotune"):
            check_levers("sample", attention, mode, CUDA, torch.float16)


def test_cuda_flash_attention_needs_half_precision():
    with pytest.raises(TaxabenchError, match="train.attention: .* computes in float32; set train.mixed_precision: "
                                             "bf16"):
        check_levers("train", "flash", None, CUDA, torch.float32)
    with pytest.raises(TaxabenchError, match="set sample.precision: float16 or bfloat16"):
        check_levers("sample", "flash", None, CUDA, torch.float64)
    check_levers("train", "flash", None, CUDA, torch.bfloat16)


def test_attention_backend_restricts_the_kernel():
    query = torch.randn(2, 4, 16, 8, generator=torch.Generator().manual_seed(0))
    reference = F.scaled_dot_product_attention(query, query, query)
    for name in ("auto", "flash", "math"):
        with attention_backend(name):
            torch.testing.assert_close(F.scaled_dot_product_attention(query, query, query), reference)
    with attention_backend("efficient"), pytest.raises(RuntimeError):  # a CUDA kernel: nothing left on a CPU
        F.scaled_dot_product_attention(query, query, query)
    torch.testing.assert_close(F.scaled_dot_product_attention(query, query, query), reference)  # restored


def test_a_batch_is_one_unet_call_per_step_and_one_vae_decode(tiny_world, tiny_data, tiny_backbone, tmp_path):
    """The sampling levers the issue asks for that already hold: the guidance pair (negative, positive) goes through
    the UNet as one batch of 2B rows per step, and the whole batch is decoded by one VAE call, in the pipeline's
    dtype (float16 on CUDA)."""
    from conftest import experiment

    from taxabench.sample import TaxonomyPipeline
    from taxabench.train import load_trained, train_method

    config = experiment(tiny_world, tmp_path, train={"steps_per_stage": 1},
                        method_options={"taxadiffusion": {"ranks": ["class"]}})
    train_method(config, "taxadiffusion", data=tiny_data, show_progress=False)
    trained = load_trained(config.run_dir, "taxadiffusion")
    pipeline = TaxonomyPipeline.from_trained(trained, "ddim").to("cpu", torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    unet_rows, decoded = [], []
    pipeline.unet.register_forward_pre_hook(lambda module, args: unet_rows.append(args[0].shape[0]))
    decode = pipeline.vae.decode

    def counting_decode(latents, *args, **kwargs):
        decoded.append((latents.shape[0], latents.dtype))
        return decode(latents, *args, **kwargs)

    pipeline.vae.decode = counting_decode
    taxa = [t.id for t in trained.taxonomy.taxa(trained.taxonomy.ranks[-1])[:3]]
    pipeline(taxa, num_images_per_taxon=2, guidance="taxonomy", num_inference_steps=3, output_type="np")
    assert unet_rows == [12, 12, 12]  # 3 steps, each one call for 6 images x (negative, positive)
    assert decoded == [(6, torch.float32)]
