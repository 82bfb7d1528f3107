"""Timing two (or more) ways of doing the same work in one run, interleaved, reported as ratios.

A noisy machine slows every path alike when the paths alternate, so the ratio of their medians is trustworthy
even when the absolute numbers are not. Each path of a benchmark runs in its own worker process (`Worker`), for two
reasons: accelerate allows one mixed-precision setting per process, and a path's peak memory is then its own
(CUDA's allocator peak on a GPU, the process's peak resident set on a CPU: torch, the models and the caches).
The parent times each call from request to reply (the worker synchronises CUDA before it replies) and lets one
worker run at a time.

Also here: the machine description every report starts with, the SD-1.5-shaped backbone with random weights the
GPU runs use (no download), the tiny SynthTaxa world and backbone the CPU runs use, and the bf16 peak table for
model-FLOP utilisation.
"""

from __future__ import annotations

import gc
import importlib
import math
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent

# Stable Diffusion 1.5's published architecture (runwayml/stable-diffusion-v1-5: unet/, vae/, text_encoder/ configs)
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
}
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {  # CLIP ViT-L/14's text tower
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
}

# Dense bf16 peak FLOP/s (tensor cores, no sparsity) from the vendors' data sheets, matched against
# torch.cuda.get_device_name(); $TAXABENCH_PEAK_TFLOPS overrides (for a card not listed, or a power-capped one).
BF16_PEAK_TFLOPS = {
    "H200": 989.4, "GH200": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4,  # H100 = SXM
    "A100": 312.0, "L40S": 362.0, "L4": 121.0,
}


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    name: str
    items_per_second: float  # median over repeats (nan when the path has no numbers: see `note`)
    seconds: list[float]
    items: int
    peak_memory_mb: float
    extra: dict[str, str] = field(default_factory=dict)  # more columns of the table (same keys for every path)
    first_call_seconds: float = math.nan  # the first (warm-up) call: includes compiling and cuDNN's autotuning
    note: str = ""  # why a path has no numbers: refused on this device, out of memory, stopped at the time budget

    @property
    def measured(self) -> bool:
        return bool(self.seconds)

    @property
    def call_seconds(self) -> float:
        """The median timed call."""
        return statistics.median(self.seconds) if self.seconds else math.nan


class PathTimeout(Exception):
    """A benchmark path did not reply before its deadline (the worker is killed)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    paths: dict[str, Callable[[], int]],
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    interleave: bool = True,
    deadline: float | None = None,
) -> list[Measurement]:
    """Run every path `warmup + repeats` times, alternating between them; each call returns its item count.

    A `Worker` path is started (set up, untimed) before the first round, reports its own peak memory and extra
    columns, and is closed at the end. `interleave=False` runs the paths one after the other, each worker alive
    only during its own rounds (for dry runs whose paths do not fit in memory together). `deadline`
    (`time.monotonic()`): a worker that has not replied by then is killed and `PathTimeout` raised.
    """
    device = torch.device(device)
    order = [list(paths)] if interleave else [[name] for name in paths]
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    first: dict[str, float] = {}
    items: dict[str, int] = {}
    peaks: dict[str, float] = {name: 0.0 for name in paths}
    process = psutil.Process()
    try:
        for group in order:
            workers = [paths[name] for name in group if isinstance(paths[name], Worker)]
            for worker in workers:  # set up side by side, untimed
                worker.launch()
            for worker in workers:
                worker.start(deadline)
            for round_ in range(warmup + repeats):
                for name in group:
                    path = paths[name]
                    gc.collect()
                    if device.type == "cuda" and not isinstance(path, Worker):
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    rss_before = process.memory_info().rss
                    _sync(device)
                    start = time.perf_counter()
                    items[name] = path(deadline) if isinstance(path, Worker) else path()
                    _sync(device)
                    elapsed = time.perf_counter() - start
                    first.setdefault(name, elapsed)
                    if isinstance(path, Worker):
                        peak = path.peak_memory_mb
                    elif device.type == "cuda":
                        peak = torch.cuda.max_memory_allocated(device) / 2**20
                    else:
                        peak = max(0, process.memory_info().rss - rss_before) / 2**20
                    peaks[name] = max(peaks[name], peak)
                    if round_ >= warmup:
                        seconds[name].append(elapsed)
            if not interleave:
                for name in group:
                    if isinstance(paths[name], Worker):
                        paths[name].close()
    finally:
        for path in paths.values():
            if isinstance(path, Worker):
                path.close()
    return [
        Measurement(name, items[name] / statistics.median(seconds[name]), seconds[name], items[name], peaks[name],
                    dict(paths[name].extra) if isinstance(paths[name], Worker) else {}, first[name])
        for name in paths
    ]


def measure_alone(name: str, path: Worker | str, repeats: int, warmup: int, device: str,
                  deadline: float | None = None) -> Measurement:
    """One path by itself (its worker the only one alive: on a dedicated GPU it gets all of the memory), never
    raising for the path's own failure: a path given as a string is not run (the string says why, e.g. a lever
    the device lacks); one that fails (out of memory, a kernel that does not support the shapes) or outlives
    `deadline` gets a row that says so, and the harness goes on with the next."""
    if isinstance(path, str):
        return Measurement(name, math.nan, [], 0, math.nan, note=path)
    if deadline is not None and time.monotonic() >= deadline:
        return Measurement(name, math.nan, [], 0, math.nan, note="not run: the time budget was spent")
    started = time.monotonic()
    try:
        return measure({name: path}, repeats=repeats, warmup=warmup, device=device, deadline=deadline)[0]
    except PathTimeout:
        note = f"stopped at the time budget after {time.monotonic() - started:.0f} s"
    except RuntimeError as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        last = lines[-1] if lines else str(error)
        out_of_memory = "OutOfMemoryError" in last or "CUDA out of memory" in last
        note = "out of memory" if out_of_memory else f"failed: {last[:160]}"
    finally:
        path.close()
    return Measurement(name, math.nan, [], 0, math.nan, dict(path.extra), note=note)


# ---------------------------------------------------------------------------------------------------------------
# Levers: each alone against the defaults, then the winners together
# ---------------------------------------------------------------------------------------------------------------

# a lever joins the combined path only when it beat the defaults by more than this: within it, the difference is
# below what one run of two or three timed calls can tell apart
LEVER_MARGIN = 1.02


@dataclass
class LeverPath:
    """One row of a lever table: the config flags it sets on top of the defaults. Paths of one `group` are
    alternatives (the attention kernels): at most one of them joins the combined path, the fastest."""

    key: str
    name: str
    flags: dict[str, Any]
    group: str = ""


def winning_flags(paths: Sequence[LeverPath], results: dict[str, Measurement], baseline: str,
                  margin: float = LEVER_MARGIN) -> dict[str, Any]:
    """The flags of every path that beat `baseline` by more than `margin`; of a group, only the fastest's."""
    base = results[baseline].items_per_second
    flags: dict[str, Any] = {}
    fastest: dict[str, LeverPath] = {}
    for path in paths:
        result = results.get(path.key)
        if path.key == baseline or result is None or not result.measured or result.items_per_second <= base * margin:
            continue
        if not path.group:
            flags.update(path.flags)
        elif path.group not in fastest or result.items_per_second > results[fastest[path.group].key].items_per_second:
            fastest[path.group] = path
    for path in fastest.values():
        flags.update(path.flags)
    return flags


def describe_flags(flags: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in flags.items()) or "none"


def compile_columns(compiled: Measurement, eager: Measurement, steps_per_call: int, run_steps: int) -> dict[str, str]:
    """Compile time (the compiled path's first call less one steady call) and what it costs over a run of
    `run_steps` steps: images/s including the compile, and the steps after which compiling has paid for itself."""
    if not (compiled.measured and eager.measured):
        return {}
    compile_seconds = max(0.0, compiled.first_call_seconds - compiled.call_seconds)
    step_compiled = compiled.call_seconds / steps_per_call
    step_eager = eager.call_seconds * (compiled.items / eager.items) / steps_per_call  # same images per step
    amortised = run_steps * compiled.items / steps_per_call / (run_steps * step_compiled + compile_seconds)
    saved = step_eager - step_compiled
    break_even = f"{compile_seconds / saved:,.0f}" if saved > 0 else "never"
    return {"compile (s)": f"{compile_seconds:.0f}", f"images/s over {run_steps:,} steps": f"{amortised:.3g}",
            "break-even (steps)": break_even}


def report_section(title: str, results: list[Measurement], args, notes: Sequence[str] = ()) -> str:
    """A harness's section of the report: its table, the machine it ran on, its own notes, a dry run said so."""
    lines = [f"_{machine_description(args.device, args.threads)}_", *notes]
    if args.dry_run:
        lines.append("**Dry run**: one call per path, paths one after the other: not a measurement.")
    return markdown_table(title, results) + "\n" + "\n\n".join(lines) + "\n"


def markdown_table(title: str, results: list[Measurement], unit: str = "images/s") -> str:
    """The results side by side, each path's speed as a ratio of the first measured one (the baseline); a path
    without numbers keeps its row, with its note."""
    measured = [r for r in results if r.measured]
    base = measured[0].items_per_second if measured else math.nan
    extra = list(dict.fromkeys(key for r in measured or results for key in r.extra))
    notes = any(r.note for r in results)
    lines = [f"#### {title}", "",
             f"| path | {unit} (median) | × baseline | peak memory (MiB) | repeats |"
             + "".join(f" {key} |" for key in extra) + (" note |" if notes else ""),
             "|---|---:|---:|---:|---:|" + "---:|" * len(extra) + ("---|" if notes else "")]
    for result in results:
        if result.measured:
            numbers = (f"{result.items_per_second:.3g} | {result.items_per_second / base:.2f}× | "
                       f"{result.peak_memory_mb:.0f} | {len(result.seconds)}")
        else:
            numbers = "— | — | — | 0"
        lines.append(f"| {result.name} | {numbers} |" + "".join(f" {result.extra.get(key, '')} |" for key in extra)
                     + (f" {result.note} |" if notes else ""))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------------------------


class Worker:
    """One benchmark path in its own (spawned) process.

    `setup` names a function `module:function` taking `spec` (a picklable dict) and returning `(run, info)`:
    `run()` does one timed unit of work and returns its item count (or `(count, columns)` to update the extra
    columns, e.g. with what the call counted); `info` is a dict of extra table columns. The
    worker sets `spec["threads"]` torch threads and `spec["env"]` environment variables before importing anything.
    """

    def __init__(self, setup: str, spec: dict[str, Any]):
        self.setup, self.spec = setup, spec
        self.extra: dict[str, str] = {}
        self.peak_memory_mb = 0.0
        self._process = None
        self._connection = None
        self._ready = False

    def launch(self) -> None:
        """Start the process and its setup without waiting for it."""
        if self._process is not None:
            return
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_worker_main, args=(child, self.setup, self.spec), daemon=True)
        self._process.start()
        self._ready = False

    def start(self, deadline: float | None = None) -> None:
        """Launch (if needed) and wait until the setup is done."""
        self.launch()
        if not self._ready:
            self._reply(deadline)
            self._ready = True

    def __call__(self, deadline: float | None = None) -> int:
        self.start(deadline)
        self._connection.send("run")
        return self._reply(deadline)["items"]

    def close(self) -> None:
        if self._process is None:
            return
        if self._process.is_alive():
            self._connection.send("close")
            self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.kill()
        self._process = None

    def _reply(self, deadline: float | None = None) -> dict[str, Any]:
        if deadline is not None and not self._connection.poll(max(0.0, deadline - time.monotonic())):
            self._process.kill()
            self._process.join()
            self._process = None
            raise PathTimeout(self.setup)
        try:
            reply = self._connection.recv()
        except EOFError as error:
            raise RuntimeError(f"benchmark worker {self.setup} died (exit code {self._process.exitcode}); "
                               "out of memory?") from error
        if "error" in reply:
            self.close()
            raise RuntimeError(f"benchmark worker {self.setup} failed:\n{reply['error']}")
        self.extra.update(reply.get("extra", {}))
        self.peak_memory_mb = reply["peak_memory_mb"]
        return reply


def _worker_main(connection, setup: str, spec: dict[str, Any]) -> None:
    os.environ.update(spec.get("env", {}))
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    try:
        module, function = setup.split(":")
        run, info = getattr(importlib.import_module(module), function)(spec)
        device = torch.device(spec.get("device", "cpu"))
        connection.send({"extra": info, "peak_memory_mb": _peak_memory_mb(device)})
        while connection.recv() == "run":
            result = run()
            _sync(device)
            items, extra = result if isinstance(result, tuple) else (result, {})
            connection.send({"items": items, "extra": extra, "peak_memory_mb": _peak_memory_mb(device)})
    except Exception:  # the parent re-raises it with this traceback
        connection.send({"error": traceback.format_exc(), "peak_memory_mb": 0.0})


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # VmHWM: this process's own peak resident set (ru_maxrss would carry the parent's peak across fork + exec)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux, bytes on macOS


# ---------------------------------------------------------------------------------------------------------------
# Machines and peaks
# ---------------------------------------------------------------------------------------------------------------


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or _cpu_model() or "cpu"


def device_slug(device: str) -> str:
    """A file name for the device's report: `NVIDIA H100 80GB HBM3` -> `nvidia-h100-80gb-hbm3`."""
    name = device_name(device) if device.startswith("cuda") else "cpu"
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine_description(device: str, threads: int | None) -> str:
    """One paragraph: device, cores, threads, load, versions (load is what other processes were doing)."""
    import diffusers

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    parts = [
        f"device: {device_name(device)} ({device})",
        f"CPU: {_cpu_model() or platform.machine()}, {os.cpu_count()} cores",
        f"torch threads: {threads or torch.get_num_threads()}",
        f"load average before the run (1, 5, 15 min): {load}",
        f"Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}",
    ]
    if device.startswith("cuda"):
        parts.append(f"CUDA {torch.version.cuda}")
    return "; ".join(parts) + "."


def bf16_peak_flops(device: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None when unknown (a CPU, or a GPU missing from the table)."""
    if os.environ.get("TAXABENCH_PEAK_TFLOPS"):
        return float(os.environ["TAXABENCH_PEAK_TFLOPS"]) * 1e12
    if not device.startswith("cuda"):
        return None
    name = device_name(device)
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):  # the most specific name first
        if key in name:
            return BF16_PEAK_TFLOPS[key] * 1e12
    return None


def model_flop_utilisation(images_per_second: float, flops_per_image: float, peak_flops: float | None) -> str:
    """MFU = images/s × FLOPs per image / peak FLOP/s. FLOPs per image are counted by
    `torch.utils.flop_counter.FlopCounterMode` on one step of the cached path (forward + backward of the
    conditioner and UNet: the work a step must do); the same count serves every path, so a path that redoes
    frozen work (the authors' configuration) shows a lower utilisation for the same useful work."""
    if peak_flops is None or not flops_per_image:
        return "n/a"
    return f"{100 * images_per_second * flops_per_image / peak_flops:.1f}%"


# ---------------------------------------------------------------------------------------------------------------
# Backbones and data the benchmarks run on
# ---------------------------------------------------------------------------------------------------------------


def sd15_backbone(device: str = "cpu", seed: int = 0):
    """A `taxabench.backbone.Backbone` with SD 1.5's architecture and random weights (built on `device`).

    The UNet (320-640-1280-1280, cross-attention 768, 8 heads), the VAE (128-256-512-512, 4 latent channels) and
    the CLIP ViT-L/14 text tower (768 wide, 12 layers, 12 heads, 77 tokens) are built from SD 1.5's published
    configs; the tokenizer is the real CLIP BPE (from open_clip's vocabulary) and the noise schedule is SD 1.5's.
    Throughput does not depend on the weights' values, so none are downloaded.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from taxabench.backbone import SD15_SCHEDULER, Backbone, write_clip_tokenizer

    tokenizer_dir = Path(tempfile.mkdtemp(prefix="sd15-tokenizer-"))
    write_clip_tokenizer(tokenizer_dir, SD15_TEXT["max_position_embeddings"])
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: ~1B parameters take a while on a CPU
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **SD15_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    backbone = Backbone(
        vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
        noise_scheduler=DDPMScheduler.from_config(SD15_SCHEDULER), path=tokenizer_dir, source="sd15-shape",
        identity=f"sd15-shape@random-seed-{seed}",
    )
    return backbone.freeze()


TINY_BUILD = {"vae_steps": 8, "unet_pretrain_steps": 8}  # the tiny architecture, briefly trained: speed only


def world_root() -> Path:
    """The SynthTaxa `tiny` world (seed 0) under $TAXABENCH_HOME, generated on first use (where the tests keep it)."""
    from taxabench.config import taxabench_home
    from taxabench.data.synthtaxa import generate, spec_for

    return generate(spec_for("tiny", 0), taxabench_home() / "worlds" / "tiny", show_progress=False)


def experiment_config(size: str, resolution: int, **sections):
    """The experiment config of a benchmark run: the tiny world, at `resolution` px, with `sections` overriding."""
    from taxabench.config import config_from_dict

    data = {"name": "bench", "seed": 0, "data": {"root": str(world_root()), "image_size": resolution}}
    if size == "tiny":
        data["backbone"] = {"tiny": dict(TINY_BUILD)}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return config_from_dict(data)


def load_backbone_for(size: str, config, data, device: str):
    """The tiny backbone (built on first use) or the SD-1.5-shaped one."""
    if size == "tiny":
        from taxabench.backbone import load_backbone

        return load_backbone(config, data, show_progress=False)
    if size == "sd15":
        return sd15_backbone(device)
    raise ValueError(f"unknown size {size!r}: tiny or sd15")


def check_size(size: str, device: str, allow_cpu: bool) -> None:
    """The SD-1.5 shape takes minutes per step on a CPU: refuse it there unless asked explicitly."""
    if size == "sd15" and device == "cpu" and not allow_cpu:
        raise SystemExit(
            "the SD-1.5-shaped backbone (~1B parameters) is too slow to time on a CPU; run it on a GPU "
            "(benchmarks/gpu_check.sh), or pass --allow-cpu (with --dry-run) to check the code path at a tiny "
            "resolution"
        )


def add_common_arguments(parser) -> None:
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny",
                        help="tiny: the tiny SD-format backbone; sd15: SD 1.5's architecture, random weights")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--resolution", type=int, default=None, help="image size in px (default: 64 tiny, 512 sd15)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per path (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per path first")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per worker (default on CPU: 1; on a shared 2-core machine two OpenMP "
                             "threads stall whenever another process holds a core, which made steps 5-20x slower "
                             "and the timings useless; ratios hardly depend on it)")
    parser.add_argument("--allow-cpu", action="store_true", help="allow --size sd15 on a CPU")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the code paths: one call per path, no warm-up, paths one after the other")
    parser.add_argument("--out", type=Path, help="append the markdown section to this file too")


def resolve_common(args) -> None:
    args.device = args.device or default_device()
    check_size(args.size, args.device, args.allow_cpu)
    if args.resolution is None:
        args.resolution = 512 if args.size == "sd15" else 64
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.dry_run:
        args.repeats, args.warmup = 1, 0


def emit(section: str, out: Path | None) -> None:
    print(section, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as handle:
            handle.write(section + "\n")
