"""Training step throughput (images/s): the authors' configuration against taxabench's defaults, interleaved.

    python -m benchmarks.train_speed                       # tiny backbone, CPU
    python -m benchmarks.train_speed --size sd15           # SD 1.5's architecture, random weights, 512 px (GPU)

Every path is the same `taxabench.train.StageTrainer` (the loop `taxabench train` runs) on the same method
(taxadiffusion), batch, backbone and stage, with other config flags:

- authors: what the authors' code does at every step: float32, the frozen CLIP text encoder re-run on every rank
  string and the VAE encoder on every image (`mixed_precision: no`, `cache_text: false`, `cache_latents: false`);
- taxabench: the defaults: frozen work cached (text embeddings per unique string, VAE posterior moments per image,
  both filled before timing as after a run's first epoch), bf16 autocast with SDPA attention and fused AdamW on
  CUDA (float32 on a CPU, where bf16 made the tiny steps slower);
- taxabench + torch.compile (`train.compile: true`; asked for with `--paths defaults,compile`: the warm-up call
  includes minutes of compiling, so gpu_check.sh times it in a run of its own).

The stage timed is the last one (all ranks summed into the context): there the authors' text encoder encodes
exactly the strings taxabench's uncached path encodes, one per rank and sample. Both paths use diffusers'
default attention (SDPA); the authors' configuration allowed xformers, its equivalent.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.harness import (
    Worker,
    add_common_arguments,
    bf16_peak_flops,
    emit,
    experiment_config,
    load_backbone_for,
    measure,
    model_flop_utilisation,
    report_section,
    resolve_common,
)

METHOD = "taxadiffusion"
PATHS = {  # --paths key: (table name, train flags)
    "authors": ("authors (fp32, no caches)", {"mixed_precision": "no", "cache_latents": False, "cache_text": False}),
    "defaults": ("taxabench defaults", {}),
    "compile": ("taxabench + torch.compile", {"compile": True}),
}


def setup_training(spec: dict):
    """Worker setup: a StageTrainer for the last stage of taxadiffusion with this path's train flags."""
    from taxabench.data import load_dataset
    from taxabench.methods import build_method
    from taxabench.train import StageTrainer

    train = {"batch_size": spec["batch_size"], **spec["flags"]}
    data_section = {"species_subset": {"mode": "first", "n": spec["species"]}} if spec.get("species") else {}
    config = experiment_config(spec["size"], spec["resolution"], train=train, data=data_section)
    data = load_dataset(config.data)
    backbone = load_backbone_for(spec["size"], config, data, spec["device"])
    species = [data.taxonomy.labels_of(t) for t in data.taxonomy.taxa(data.ranks[-1])]
    method = build_method(METHOD, config, data.ranks, species, backbone)
    stage = method.stages(10**6)[-1]
    trainer = StageTrainer(config, method, stage, data, backbone)
    fill_caches(trainer)

    steps = spec["steps_per_call"]
    done = [0]
    flops_per_image = 0.0
    if spec.get("count_flops"):
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            trainer.step(done[0])
        done[0] += 1
        flops_per_image = counter.get_total_flops() / trainer.global_batch

    def run() -> int:
        for _ in range(steps):
            trainer.step(done[0])
            done[0] += 1
        return steps * trainer.global_batch

    info = {"mixed precision": trainer.accelerator.mixed_precision,
            "caches": "on" if config.train.cache_latents and config.train.cache_text else "off"}
    if flops_per_image:
        info["GFLOP/image"] = f"{flops_per_image / 1e9:.1f}"
    return run, info


def fill_caches(trainer) -> None:
    """What a run's first epoch leaves in the caches: every training image's latents, every string's embedding."""
    if trainer.latents.cache:
        indices = list(range(len(trainer.data.train)))
        for start in range(0, len(indices), 16):
            trainer.latents.moments(indices[start:start + 16], trainer.device)
    if trainer.text.cache:
        method, stage = trainer.method, trainer.stage
        labels = [record.labels for record in trainer.data.train]
        for start in range(0, len(labels), 64):
            method.condition_inputs(labels[start:start + 64], stage, trainer.text)
        method.negative_inputs("cfg", labels[:1], stage, trainer.text)  # "<rank>: None", condition dropout's


def run(args) -> str:
    flop_path = "taxabench defaults"
    paths = {}
    for key in args.paths:
        name, flags = PATHS[key]
        spec = {"size": args.size, "device": args.device, "resolution": args.resolution, "threads": args.threads,
                "batch_size": args.batch_size, "steps_per_call": args.steps, "flags": flags,
                "species": args.species, "count_flops": name == flop_path}
        paths[name] = Worker("benchmarks.train_speed:setup_training", spec)
    results = measure(paths, repeats=args.repeats, warmup=args.warmup, device=args.device,
                      interleave=not args.dry_run)
    peak = bf16_peak_flops(args.device)
    flops = next((float(r.extra["GFLOP/image"]) * 1e9 for r in results if "GFLOP/image" in r.extra), 0.0)
    for result in results:
        result.extra.pop("GFLOP/image", None)
        if flops and peak:
            result.extra["MFU (bf16 peak)"] = model_flop_utilisation(result.items_per_second, flops, peak)
    title = (f"Training step throughput: {METHOD}, last stage, {args.size} backbone, {args.resolution} px, "
             f"batch {args.batch_size}, {args.steps} steps per call")
    notes = []
    if flops:
        peak_text = (f"{peak / 1e12:.0f} TFLOP/s" if peak else
                     "none for a CPU" if args.device == "cpu" else "unknown (set $TAXABENCH_PEAK_TFLOPS)")
        notes.append(f"FLOPs per image (one step of the cached path, counted by torch.utils.flop_counter): "
                     f"{flops / 1e9:.1f} GFLOP; bf16 dense peak of the device: {peak_text}; "
                     "MFU = images/s × FLOPs per image / peak.")
    return report_section(title, results, args, notes)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: 16 tiny, 8 sd15)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per timed call (default 3 / 2)")
    parser.add_argument("--species", type=int, default=None, help="train on the first N species only")
    parser.add_argument("--paths", default="authors,defaults",
                        help="comma-separated, the first is the baseline: authors, defaults, compile "
                             "(compiling takes minutes: gpu_check.sh times it in a run of its own)")
    return parser


def resolve(args) -> None:
    resolve_common(args)
    sd15 = args.size == "sd15"
    args.batch_size = args.batch_size or (8 if sd15 else 16)
    args.steps = args.steps or (2 if sd15 else 3)
    if args.dry_run:
        args.batch_size, args.steps = min(args.batch_size, 2), 1
        args.species = args.species or 2
    args.paths = [key.strip() for key in args.paths.split(",") if key.strip()]
    unknown = [key for key in args.paths if key not in PATHS]
    if unknown or not args.paths:
        raise SystemExit(f"--paths: unknown path {unknown[:1]}; choose from {', '.join(PATHS)}")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    resolve(args)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    emit(run(args), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
