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
  includes minutes of compiling).

`--paths levers` measures the throughput levers instead (what benchmarks/gpu_check.sh runs), each path alone on
the device, one after the other (each gets all of the GPU's memory), most important first: the defaults; a
batch-size sweep (`--batch-sweep`: the largest per-GPU batch that fits, one process trying each size with the
caches shared) and the defaults at that batch; channels-last; the winners together, eager and compiled
(`train.compile_mode`, `--compile-mode`), with the compile time reported apart and amortised over `--run-steps`;
then each SDPA kernel (`auto` already picks one of them). A lever the device lacks gets a row saying so; a path
that fails or outlives `--budget-s` too.

The stage timed is the last one (all ranks summed into the context): there the authors' text encoder encodes
exactly the strings taxabench's uncached path encodes, one per rank and sample. Both paths use diffusers'
default attention (SDPA); the authors' configuration allowed xformers, its equivalent.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import sys
import time

import torch

from benchmarks.harness import (
    LeverPath,
    Measurement,
    Worker,
    add_common_arguments,
    bf16_peak_flops,
    compile_columns,
    describe_flags,
    emit,
    experiment_config,
    load_backbone_for,
    measure,
    measure_alone,
    model_flop_utilisation,
    report_section,
    resolve_common,
    winning_flags,
)

METHOD = "taxadiffusion"
PATHS = {  # --paths key: (table name, train flags)
    "authors": ("authors (fp32, no caches)", {"mixed_precision": "no", "cache_latents": False, "cache_text": False}),
    "defaults": ("taxabench defaults", {}),
    "compile": ("taxabench + torch.compile", {"compile": True}),
}
# `--paths levers`: each lever alone on top of the defaults (at the defaults' batch). The SDPA kernels run last,
# after the combined paths: `auto` already picks one of them, so they refine the answer rather than make it
CHANNELS_LAST = LeverPath("channels-last", "+ channels-last", {"channels_last": True})
KERNELS = [LeverPath(f"sdpa-{kernel}", f"+ SDPA {kernel}", {"attention": kernel}, group="attention")
           for kernel in ("flash", "efficient", "cudnn", "math")]


def training_config(spec: dict, train: dict):
    data_section = {"species_subset": {"mode": "first", "n": spec["species"]}} if spec.get("species") else {}
    return experiment_config(spec["size"], spec["resolution"], train=train, data=data_section)


def setup_training(spec: dict):
    """Worker setup: a StageTrainer for the last stage of taxadiffusion with this path's train flags."""
    from taxabench.data import load_dataset
    from taxabench.methods import build_method
    from taxabench.train import StageTrainer

    config = training_config(spec, {"batch_size": spec["batch_size"], **spec["flags"]})
    data = load_dataset(config.data)
    backbone = load_backbone_for(spec["size"], config, data, spec["device"])
    species = [data.taxonomy.labels_of(t) for t in data.taxonomy.taxa(data.ranks[-1])]
    method = build_method(METHOD, config, data.ranks, species, backbone)
    stage = method.stages(10**6)[-1]
    trainer = StageTrainer(config, method, stage, data, backbone)
    fill_caches(trainer)

    steps = spec["steps_per_call"]
    done = [0]
    losses = []  # the first step's loss: every path of one batch size starts from the same draws
    flops_per_image = 0.0
    if spec.get("count_flops"):  # a rehearsal of step 0, not part of the timed calls
        flops_per_image = trainer.count_flops(0) / trainer.global_batch

    def run():
        for _ in range(steps):
            losses.append(trainer.step(done[0]))
            done[0] += 1
        return steps * trainer.global_batch, {"first loss": f"{losses[0]:.4f}"}

    info = {"mixed precision": trainer.accelerator.mixed_precision,
            "caches": "on" if config.train.cache_latents and config.train.cache_text else "off"}
    if spec.get("levers"):
        info = {"batch": str(trainer.global_batch)}
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


def setup_batch_sweep(spec: dict):
    """Worker setup for the batch sweep: one call tries `spec["candidates"]` in increasing order, a StageTrainer
    each (sharing the caches filled once), and stops at the first that runs out of memory."""
    from taxabench.data import load_dataset
    from taxabench.methods import build_method
    from taxabench.train import StageTrainer

    config = training_config(spec, spec["flags"])
    data = load_dataset(config.data)
    backbone = load_backbone_for(spec["size"], config, data, spec["device"])
    species = [data.taxonomy.labels_of(t) for t in data.taxonomy.taxa(data.ranks[-1])]
    method = build_method(METHOD, config, data.ranks, species, backbone)
    stage = method.stages(10**6)[-1]
    cuda = spec["device"].startswith("cuda")

    def trainer_for(batch_size: int, caches=None):
        trainer = StageTrainer(dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                                       batch_size=batch_size)),
                               method, stage, data, backbone)
        if caches is None:
            fill_caches(trainer)
        else:
            trainer.latents.stored, trainer.text.stored = caches
        return trainer

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run():
        rows, caches, images = [], None, 0
        for batch_size in spec["candidates"]:
            trainer = None
            try:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                trainer = trainer_for(batch_size, caches)
                caches = trainer.latents.stored, trainer.text.stored
                trainer.step(0)  # warm-up: cuDNN's autotuning, the allocator's first growth
                sync()
                started = time.perf_counter()
                for step in range(1, 1 + spec["steps"]):
                    trainer.step(step)
                sync()
                seconds = time.perf_counter() - started
                images += (1 + spec["steps"]) * trainer.global_batch
                peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
                rows.append({"batch": batch_size, "images/s": spec["steps"] * trainer.global_batch / seconds,
                             "peak MiB": peak})
            except torch.cuda.OutOfMemoryError:
                rows.append({"batch": batch_size, "note": "out of memory"})
                break
            finally:
                del trainer
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
        return images, {"sweep": json.dumps(rows)}

    return run, {}


def largest_fitting(rows: list[dict]) -> int | None:
    """The largest batch size of a sweep that ran."""
    fitting = [row["batch"] for row in rows if "images/s" in row]
    return max(fitting) if fitting else None


def sweep_table(rows: list[dict]) -> str:
    lines = ["| batch | images/s (one timed call) | peak memory (MiB) |", "|---:|---:|---:|"]
    for row in rows:
        if "images/s" in row:
            peak = "n/a" if math.isnan(row["peak MiB"]) else f"{row['peak MiB']:.0f}"
            lines.append(f"| {row['batch']} | {row['images/s']:.3g} | {peak} |")
        else:
            lines.append(f"| {row['batch']} | {row['note']} | |")
    return "\n".join(lines) + "\n"


def run(args) -> str:
    if args.paths == ["levers"]:
        return run_levers(args)
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


def training_spec(args, flags: dict, batch_size: int, count_flops: bool = False) -> dict:
    return {"size": args.size, "device": args.device, "resolution": args.resolution, "threads": args.threads,
            "batch_size": batch_size, "steps_per_call": args.steps, "flags": flags, "species": args.species,
            "count_flops": count_flops, "levers": True}


def refusal(flags: dict, device: str) -> str | None:
    """Why the device cannot run these flags (taxabench.levers.check_levers), or None; decided here, before a
    worker is spent on it. Training computes in bf16 on CUDA and float32 on a CPU (`mixed_precision: auto`)."""
    from taxabench.errors import TaxabenchError
    from taxabench.levers import check_levers

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    mode = flags.get("compile_mode", "default") if flags.get("compile") else None
    try:
        check_levers("train", flags.get("attention", "auto"), mode, torch.device(device), dtype)
    except TaxabenchError as error:
        return f"refused on {device}: {error}"
    return None


def run_levers(args) -> str:
    """Every lever alone, the batch sweep, the winners together (eager, then compiled); see the module docstring."""
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    results: dict[str, Measurement] = {}
    names: dict[str, str] = {}

    def run_path(key: str, name: str, flags: dict, batch_size: int, count_flops: bool = False) -> Measurement:
        reason = refusal(flags, args.device)
        if flags.get("compile") and args.dry_run:
            reason = "skipped in a dry run: compiling takes minutes on a CPU (tests/test_perf.py checks it)"
        worker = reason or Worker("benchmarks.train_speed:setup_training",
                                  training_spec(args, flags, batch_size, count_flops))
        result = measure_alone(name, worker, args.repeats, args.warmup, args.device, deadline)
        result.extra = {"batch": str(batch_size), **result.extra}
        results[key], names[key] = result, name
        print(f"train levers: {name}: " + (f"{result.items_per_second:.3g} images/s" if result.measured
                                           else result.note), flush=True)
        return result

    run_path("defaults", "taxabench defaults", {}, args.batch_size, count_flops=True)
    sweep_rows: list[dict] = []
    sweep = measure_alone("batch sweep", Worker("benchmarks.train_speed:setup_batch_sweep", {
        "size": args.size, "device": args.device, "resolution": args.resolution, "threads": args.threads,
        "flags": {}, "candidates": args.batch_sweep, "steps": args.steps, "species": args.species}), 1, 0,
        args.device, deadline)
    if "sweep" in sweep.extra:
        sweep_rows = json.loads(sweep.extra["sweep"])
    largest = largest_fitting(sweep_rows)
    single = [CHANNELS_LAST]
    if largest is not None and largest != args.batch_size:
        batch_path = LeverPath("batch", f"defaults at batch {largest} (the largest that fits)",
                               {"batch_size": largest})
        run_path(batch_path.key, batch_path.name, {}, largest)
        single.append(batch_path)
    run_path(CHANNELS_LAST.key, CHANNELS_LAST.name, CHANNELS_LAST.flags, args.batch_size)

    best: dict = {}
    if results["defaults"].measured:
        best = winning_flags(single, results, "defaults")
    batch = best.pop("batch_size", args.batch_size)
    combined = describe_flags({"batch_size": batch, **best})
    run_path("best", f"winners together: batch {batch}, {describe_flags(best)}", best, batch)
    compiled = {**best, "compile": True, "compile_mode": args.compile_mode}
    run_path("best+compile", f"winners + torch.compile (mode {args.compile_mode})", compiled, batch)
    for path in KERNELS:
        run_path(path.key, path.name, path.flags, args.batch_size)
    single += KERNELS

    ordered = [results[key] for key in results]
    peak = bf16_peak_flops(args.device)
    flops = float(results["defaults"].extra.get("GFLOP/image", 0)) * 1e9
    for result in ordered:
        result.extra.pop("GFLOP/image", None)
        result.extra["first call (s)"] = f"{result.first_call_seconds:.1f}" if result.measured else ""
        if flops and peak and result.measured:
            result.extra["MFU (bf16 peak)"] = model_flop_utilisation(result.items_per_second, flops, peak)
    compile_info = compile_columns(results["best+compile"], results["best"], args.steps, args.run_steps)
    results["best+compile"].extra.update(compile_info)

    chosen = describe_flags(winning_flags(single, results, "defaults")) if results["defaults"].measured else (
        "none (the defaults did not run)")
    title = (f"Training levers: {METHOD}, last stage, {args.size} backbone, {args.resolution} px, "
             f"steps per call: {args.steps}, each path alone on the device")
    notes = ["Order run: the defaults, the batch sweep and the largest batch, channels-last, the winners together "
             "(eager, compiled), then the SDPA kernels (`auto` already picks one: they refine, and are the first "
             "to fall to the time budget; a kernel that wins is not in the combined rows above).",
             f"Batch sweep (`--batch-sweep`, one process, caches shared, timed steps after one warm-up each: "
             f"{args.steps}; stops at the first size that runs out of memory); largest that fits: "
             f"{largest if largest is not None else 'none'}" + (f" ({sweep.note})" if sweep.note else "") + ":\n\n"
             + (sweep_table(sweep_rows) if sweep_rows else "(no sweep rows)\n"),
             f"Winners: a lever joins the combined path when it beat the defaults by more than 2%; chosen: "
             f"{combined}. Winners of the whole table (with the kernels, only the fastest): {chosen}."]
    if compile_info:
        notes.append(f"Compile time is the compiled path's first call less one steady call; the amortised rate is "
                     f"over a run of {args.run_steps:,} optimizer steps (`--run-steps`), one compile per stage (a "
                     "new StageTrainer per stage compiles again, from inductor's on-disk cache after the first).")
    if flops:
        peak_text = (f"{peak / 1e12:.0f} TFLOP/s" if peak else
                     "none for a CPU" if args.device == "cpu" else "unknown (set $TAXABENCH_PEAK_TFLOPS)")
        notes.append(f"FLOPs per image (one step of the defaults, counted by torch.utils.flop_counter): "
                     f"{flops / 1e9:.1f} GFLOP; bf16 dense peak of the device: {peak_text}; "
                     "MFU = images/s × FLOPs per image / peak.")
    return report_section(title, ordered, args, notes)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: 16 tiny, 8 sd15)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per timed call (default 3 / 2)")
    parser.add_argument("--species", type=int, default=None, help="train on the first N species only")
    parser.add_argument("--paths", default="authors,defaults",
                        help="comma-separated, the first is the baseline: authors, defaults, compile (compiling "
                             "takes minutes); or `levers`: every throughput lever (see above)")
    parser.add_argument("--batch-sweep", default=None,
                        help="levers: batch sizes to try (default 8,16,32,48,64,96,128,192,256; 1,2,4 in a dry "
                             "run)")
    parser.add_argument("--compile-mode", default="default",
                        help="levers: torch.compile mode of the compiled path (train.compile_mode)")
    parser.add_argument("--run-steps", type=int, default=2000,
                        help="levers: the run length compile time is amortised over, in optimizer steps")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="levers: seconds for the whole table; paths not finished by then get a row saying so")
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
    if args.paths != ["levers"] and (unknown or not args.paths):
        raise SystemExit(f"--paths: unknown path {unknown[:1]}; choose from {', '.join(PATHS)}, or levers")
    sweep = args.batch_sweep or ("1,2,4" if args.dry_run else "8,16,32,48,64,96,128,192,256")
    args.batch_sweep = sorted({int(size) for size in sweep.split(",")})
    from taxabench.levers import COMPILE_MODES

    if args.compile_mode not in COMPILE_MODES:
        raise SystemExit(f"--compile-mode: {args.compile_mode!r}; choose from {', '.join(COMPILE_MODES)}")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    resolve(args)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    emit(run(args), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
