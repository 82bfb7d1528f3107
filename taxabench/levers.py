"""Throughput levers shared by training and sampling: channels-last memory layout, the scaled-dot-product-attention
backend, and torch.compile with a stated mode (`train.*` and `sample.*` keys of the same names).

Every lever changes how fast the same function is computed, never which function: the tests compare each fast path
with the slow one (tests/test_perf.py on a CPU, tests/test_cuda.py on a GPU). None is on by default; which ones
should become the CUDA default is for a GPU measurement to say (benchmarks/gpu_check.sh, reports/perf/README.md).

A lever that does not exist on a CPU is refused there with one line saying why (`check_levers`), never silently
ignored: the memory-efficient and cuDNN attention kernels are CUDA kernels, and the compile modes that capture
CUDA graphs (`reduce-overhead`, `max-autotune`) have no graphs to capture. Channels-last, the flash and math
attention kernels and compile's `default` / `max-autotune-no-cudagraphs` modes exist on a CPU too.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from taxabench.errors import TaxabenchError

# the values of `train.attention` / `sample.attention`; `auto` lets PyTorch pick per call (no context at all)
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
# the values of `train.compile_mode` / `sample.compile_mode`: torch.compile's own mode names
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_ONLY_ATTENTION = ("efficient", "cudnn")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_levers(section: str, attention: str, compile_mode: str | None, device: torch.device,
                 compute_dtype: torch.dtype) -> None:
    """Refuse a lever the device cannot run, naming the key: `compile_mode` is None when compile is off;
    `compute_dtype` is what attention runs in (the autocast dtype in training, the pipeline dtype in sampling)."""
    if device.type != "cuda":
        if attention in CUDA_ONLY_ATTENTION:
            raise TaxabenchError(
                f"{section}.attention: '{attention}' is a CUDA kernel and this run is on {device.type}; use auto, "
                "flash or math there"
            )
        if compile_mode in CUDA_GRAPH_MODES:
            raise TaxabenchError(
                f"{section}.compile_mode: '{compile_mode}' captures CUDA graphs and this run is on {device.type}; "
                "use default or max-autotune-no-cudagraphs there"
            )
    elif attention == "flash" and compute_dtype not in HALF_DTYPES:
        what = "train.mixed_precision: bf16" if section == "train" else "sample.precision: float16 or bfloat16"
        raise TaxabenchError(
            f"{section}.attention: the CUDA flash kernel needs float16 or bfloat16 inputs and this run computes in "
            f"{str(compute_dtype).removeprefix('torch.')}; set {what}, or attention: auto"
        )


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """A context that restricts `F.scaled_dot_product_attention` (diffusers' attention processors) to one kernel;
    `auto` leaves PyTorch's own choice. Autograd's backward runs the kernel the forward ran. Both kinds of context
    are ones torch.compile traces without a graph break (the training forward enters it inside the compiled
    module)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    return sdpa_kernel(backend)


def to_channels_last(*modules: nn.Module) -> None:
    """NHWC weights for every convolution: cuDNN's tensor-core kernels then skip the layout transposes around each
    convolution, and the activations follow the weights' layout through the network."""
    for module in modules:
        module.to(memory_format=torch.channels_last)


def compile_in_place(module: nn.Module, mode: str) -> None:
    """torch.compile the module's forward in place (inductor, `mode`); the module object and its attributes stay.

    Shapes are static (`dynamic=False`): a batch of another size compiles once more instead of turning every shape
    symbolic, which would rule out CUDA graphs."""
    module.compile(mode=mode, dynamic=False)
