"""Timing two (or more) ways of doing the same work in one process, interleaved, reported as ratios.

A noisy machine slows every path alike when the paths alternate, so the ratio of their medians is trustworthy
even when the absolute numbers are not. Peak memory is measured per path: CUDA's allocator peak on a GPU, the
growth of the process's resident set on a CPU (an upper bound, since freed memory is not always returned).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch


@dataclass
class Measurement:
    name: str
    items_per_second: float  # median over repeats
    seconds: list[float]
    items: int
    peak_memory_mb: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    paths: dict[str, Callable[[], int]],
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> list[Measurement]:
    """Run every path `warmup + repeats` times, alternating between them; each call returns its item count."""
    device = torch.device(device)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    items: dict[str, int] = {}
    peaks: dict[str, float] = {name: 0.0 for name in paths}
    process = psutil.Process()
    for round_ in range(warmup + repeats):
        for name, path in paths.items():
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            rss_before = process.memory_info().rss
            _sync(device)
            start = time.perf_counter()
            items[name] = path()
            _sync(device)
            elapsed = time.perf_counter() - start
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**20
            else:
                peak = max(0, process.memory_info().rss - rss_before) / 2**20
            peaks[name] = max(peaks[name], peak)
            if round_ >= warmup:
                seconds[name].append(elapsed)
    return [
        Measurement(name, items[name] / statistics.median(seconds[name]), seconds[name], items[name], peaks[name])
        for name in paths
    ]


def markdown_table(title: str, results: list[Measurement], unit: str = "images/s") -> str:
    """The results side by side, each path's speed as a ratio of the first (the baseline)."""
    base = results[0].items_per_second
    lines = [f"#### {title}", "", f"| path | {unit} (median) | × baseline | peak memory (MiB) | repeats |",
             "|---|---:|---:|---:|---:|"]
    for result in results:
        lines.append(
            f"| {result.name} | {result.items_per_second:.2f} | {result.items_per_second / base:.2f}× | "
            f"{result.peak_memory_mb:.0f} | {len(result.seconds)} |"
        )
    return "\n".join(lines) + "\n"
