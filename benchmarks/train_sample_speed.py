"""Seconds per training step of each method (with and without the frozen-work caches) and sampling images/s,
measured in one process on one machine, so the ratios compare like with like.

    python benchmarks/train_sample_speed.py --config configs/demo.yaml --steps 20 --out reports/perf/speed.md

The config's data and backbone are used (the tiny backbone is built first if missing and not timed); runs go to a
temporary folder. Each training measurement drops the first step (warm-up) and reports the median of the rest.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch

from taxabench.backbone import load_backbone
from taxabench.config import load_config
from taxabench.data import load_dataset
from taxabench.sample import sample_method
from taxabench.train import method_dir, train_method

DEFAULT_METHODS = ["taxadiffusion", "taxadiffusion-joint", "taxadiffusion-random", "flat-ldm", "sd-lora",
                   "sd-finetune"]


def seconds_per_step(config, method: str, data, run: Path, cache: bool, steps: int) -> float:
    config.train.cache_latents = config.train.cache_text = cache
    config.train.checkpoint_every = 10**9
    config.method_options = {method: {"steps": steps}}  # per stage: a progressive method trains `steps` per rank
    train_method(config, method, run, data=data, show_progress=False)
    with open(method_dir(run, method) / "loss.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["step"] != "1"]  # the first step of a stage warms up
    return statistics.median(float(r["seconds"]) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML (data, backbone, train, sample sections)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per measurement")
    parser.add_argument("--methods", nargs="*", default=DEFAULT_METHODS)
    parser.add_argument("--sample-method", default="taxadiffusion")
    parser.add_argument("--out", type=Path, help="write the markdown table here as well")
    args = parser.parse_args()

    config = load_config(args.config)
    data = load_dataset(config.data)
    load_backbone(config, data)  # built (and cached) before any timing
    lines = [
        f"torch threads: {torch.get_num_threads()}; batch size {config.train.batch_size}; "
        f"{len(data.train)} training images",
        "",
        "| method | s/step, caches on | s/step, caches off | images/s (caches on) |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods:
            cached = seconds_per_step(config, method, data, Path(scratch) / f"{method}-cached", True, args.steps)
            uncached = seconds_per_step(config, method, data, Path(scratch) / f"{method}-plain", False, args.steps)
            lines.append(f"| {method} | {cached:.3f} | {uncached:.3f} | {config.train.batch_size / cached:.1f} |")
            print(lines[-1], flush=True)
        lines += ["", "| sampling | precision | images | seconds | images/s |", "|---|---|---|---|---|"]
        run = Path(scratch) / f"{args.sample_method}-cached"
        for precision in ("float64", "float32"):
            config.sample.precision = precision
            folder = Path(scratch) / f"samples-{precision}"
            folder.mkdir()
            (folder / "checkpoints").symlink_to(run / "checkpoints")
            started = time.perf_counter()
            out = sample_method(config, args.sample_method, folder, show_progress=False)
            seconds = time.perf_counter() - started
            images = len(list(out.glob("*/*.png")))
            lines.append(f"| {args.sample_method}, {config.sample.steps} steps, guidance {config.sample.guidance} "
                         f"| {precision} | {images} | {seconds:.1f} | {images / seconds:.2f} |")
            print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
