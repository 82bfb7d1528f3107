"""Sampling throughput (images/s): the authors' one-image-at-a-time loop against taxabench's batched sampler.

    python -m benchmarks.sample_speed                      # tiny backbone, CPU
    python -m benchmarks.sample_speed --size sd15          # SD 1.5's architecture, random weights, 512 px (GPU)

Every path calls the same `taxabench.sample.TaxonomyPipeline` with taxonomy guidance (scale 9, DDIM, 25 steps, as
the authors' sampler), over the same (taxon, image) work list with the same per-image seeds as `sample_method`:

- authors: the authors' `inference.py` loop: one image per pipeline call, the pipeline in float32 (it is loaded
  without a dtype). Their pipeline already batches the guidance pair (negative and positive) into one UNet call,
  and so does TaxonomyPipeline, so both paths do that;
- taxabench: `sample.batch_size` images of different taxa per call (their guidance pairs in the same UNet call),
  at the default precision (`sample.precision: auto`: float16 on CUDA; float64 on a CPU, which makes the PNG bytes
  independent of batch size and process count);
- taxabench, float32 (CPU only): the same batches in float32, what `configs/demo.yaml` uses on a CPU.

PNG encoding, the same per image in every path, is not timed.

`--paths levers` measures the sampling levers instead (what benchmarks/gpu_check.sh runs), each path alone on the
device, most important first: the defaults (`sample.batch_size` 16 at `sample.precision: auto`); larger batches
(`--lever-batches`); channels-last; the winners together, eager and compiled (`sample.compile_mode`,
`--compile-mode`, default `reduce-overhead`: CUDA graphs), with the compile time apart; then every SDPA kernel for
the UNet.
Two of the issue's sampling levers hold already and are not switches: the guidance pair (negative, positive)
shares one UNet call per step, and each batch is decoded by one VAE call in the pipeline's dtype (float16 on CUDA;
tests/test_levers.py). Each row's first image is compared with the defaults' (same taxon and seed).
"""

from __future__ import annotations

import argparse
import base64
import sys
import time

import numpy as np
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
# `--paths levers`, in the order run; the SDPA kernels last, after the combined paths (`auto` picks one already)
CHANNELS_LAST = LeverPath("channels-last", "+ channels-last", {"channels_last": True})
KERNELS = [LeverPath(f"sdpa-{kernel}", f"+ SDPA {kernel} (UNet)", {"attention": kernel}, group="attention")
           for kernel in ("flash", "efficient", "cudnn", "math")]


def setup_sampling(spec: dict):
    """Worker setup: a TaxonomyPipeline around taxadiffusion (last stage) at this path's batch size and dtype."""
    from taxabench.data import load_dataset
    from taxabench.methods import build_method
    from taxabench.sample import TaxonomyPipeline, make_scheduler, sampling_dtype
    from taxabench.seeds import derive_seed

    config = experiment_config(spec["size"], spec["resolution"])
    data = load_dataset(config.data)
    backbone = load_backbone_for(spec["size"], config, data, spec["device"])
    species = [data.taxonomy.labels_of(t) for t in data.taxonomy.taxa(data.ranks[-1])]
    method = build_method(METHOD, config, data.ranks, species, backbone)
    method.conditioner.eval()
    pipeline = TaxonomyPipeline(
        vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet,
        scheduler=make_scheduler(config.sample.scheduler, backbone.noise_scheduler.config), method=method,
        taxonomy=data.taxonomy, stage=method.stages(1)[-1],
    )
    device = torch.device(spec["device"])
    dtype = sampling_dtype(spec["precision"], device)
    pipeline.to(device, dtype)
    levers = spec.get("flags", {})
    pipeline.enable_levers(levers.get("channels_last", False), levers.get("attention", "auto"),
                           levers.get("compile_mode", "default") if levers.get("compile") else None)
    pipeline.set_progress_bar_config(disable=True)

    taxa = data.taxonomy.taxa(data.ranks[-1])
    work = [(taxon, j) for j in range(1000) for taxon in taxa]  # taxa mixed, as sample_method's batches
    position = [0]
    batch_size, batches = spec["batch_size"], spec["batches_per_call"]

    def generate(batch):
        seeds = [derive_seed(config.seed, "sample", t.id, j) for t, j in batch]
        return pipeline([t.id for t, _ in batch], seeds=seeds, guidance="taxonomy", guidance_scale=9.0,
                        num_inference_steps=spec["steps"], height=spec["resolution"], width=spec["resolution"],
                        output_type="np").images

    info = {"batch": str(batch_size), "precision": str(dtype).removeprefix("torch.")}
    if spec.get("count_flops"):  # one batch of the same work, counted (not part of the timed calls)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            generate(work[:batch_size])
        info["GFLOP/image"] = f"{counter.get_total_flops() / batch_size / 1e9:.1f}"
    first_image: list[np.ndarray] = []

    def run():
        for _ in range(batches):
            batch = work[position[0]:position[0] + batch_size]
            position[0] += batch_size
            images = generate(batch)
            if not first_image:
                first_image.append(np.round(images[0] * 255).astype(np.uint8))
        if not spec.get("levers"):
            return batch_size * batches
        image = first_image[0]
        return batch_size * batches, {"first image": f"{image.shape[0]}:{base64.b64encode(image.tobytes()).decode()}"}

    return run, info


def run(args) -> str:
    if args.paths == "levers":
        return run_levers(args)
    paths = {"authors (one image per call, fp32)": {"batch_size": 1, "batches_per_call": args.authors_images,
                                                    "precision": "float32"},
             "taxabench defaults (batched)": {"batch_size": args.batch_size, "batches_per_call": args.batches,
                                              "precision": "auto"}}
    if args.device == "cpu":
        paths["taxabench, batched, float32"] = {"batch_size": args.batch_size, "batches_per_call": args.batches,
                                                "precision": "float32"}
    workers = {
        name: Worker("benchmarks.sample_speed:setup_sampling",
                     {"size": args.size, "device": args.device, "resolution": args.resolution,
                      "threads": args.threads, "steps": args.steps, **path})
        for name, path in paths.items()
    }
    results = measure(workers, repeats=args.repeats, warmup=args.warmup, device=args.device,
                      interleave=not args.dry_run)
    title = (f"Sampling throughput: {METHOD}, taxonomy guidance (scale 9), DDIM {args.steps} steps, {args.size} "
             f"backbone, {args.resolution} px")
    return report_section(title, results, args)


def decode_image(encoded: str) -> np.ndarray:
    size, data = encoded.split(":", 1)
    return np.frombuffer(base64.b64decode(data), dtype=np.uint8).reshape(int(size), int(size), -1)


def refusal(flags: dict, device: str, dtype: torch.dtype) -> str | None:
    """Why the device cannot run these flags (taxabench.levers.check_levers), or None."""
    from taxabench.errors import TaxabenchError
    from taxabench.levers import check_levers

    mode = flags.get("compile_mode", "default") if flags.get("compile") else None
    try:
        check_levers("sample", flags.get("attention", "auto"), mode, torch.device(device), dtype)
    except TaxabenchError as error:
        return f"refused on {device}: {error}"
    return None


def run_levers(args) -> str:
    """Every sampling lever alone, then the winners together, eager and compiled; see the module docstring."""
    from taxabench.sample import sampling_dtype

    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    dtype = sampling_dtype("auto", torch.device(args.device))
    results: dict[str, Measurement] = {}

    def run_path(key: str, name: str, flags: dict, batch_size: int, count_flops: bool = False) -> Measurement:
        reason = refusal(flags, args.device, dtype)
        if flags.get("compile") and args.dry_run:
            reason = "skipped in a dry run: compiling takes minutes on a CPU (tests/test_perf.py checks it)"
        spec = {"size": args.size, "device": args.device, "resolution": args.resolution, "threads": args.threads,
                "steps": args.steps, "batch_size": batch_size, "batches_per_call": args.batches,
                "precision": "auto", "flags": flags, "count_flops": count_flops, "levers": True}
        worker = reason or Worker("benchmarks.sample_speed:setup_sampling", spec)
        result = measure_alone(name, worker, args.repeats, args.warmup, args.device, deadline)
        result.extra.setdefault("batch", str(batch_size))
        results[key] = result
        print(f"sample levers: {name}: " + (f"{result.items_per_second:.3g} images/s" if result.measured
                                            else result.note), flush=True)
        return result

    single = [CHANNELS_LAST]
    run_path("defaults", "taxabench defaults", {}, args.batch_size, count_flops=True)
    for batch_size in args.lever_batches:
        path = LeverPath(f"batch-{batch_size}", f"batch {batch_size}", {"batch_size": batch_size}, group="batch")
        run_path(path.key, path.name, {}, batch_size)
        single.append(path)
    run_path(CHANNELS_LAST.key, CHANNELS_LAST.name, CHANNELS_LAST.flags, args.batch_size)

    best = winning_flags(single, results, "defaults") if results["defaults"].measured else {}
    batch = best.pop("batch_size", args.batch_size)
    combined = describe_flags({"batch_size": batch, **best})
    run_path("best", f"winners together: batch {batch}, {describe_flags(best)}", best, batch)
    compiled = {**best, "compile": True, "compile_mode": args.compile_mode}
    run_path("best+compile", f"winners + torch.compile (mode {args.compile_mode})", compiled, batch)
    for path in KERNELS:
        run_path(path.key, path.name, path.flags, args.batch_size)
    single += KERNELS

    ordered = list(results.values())
    reference = results["defaults"].extra.get("first image")
    peak = bf16_peak_flops(args.device)
    flops = float(results["defaults"].extra.get("GFLOP/image", 0)) * 1e9
    for result in ordered:
        image = result.extra.pop("first image", None)
        result.extra.pop("GFLOP/image", None)
        result.extra["first call (s)"] = f"{result.first_call_seconds:.1f}" if result.measured else ""
        if image is not None and reference is not None:
            difference = np.abs(decode_image(image).astype(np.int16) - decode_image(reference).astype(np.int16))
            result.extra["first image vs defaults: max / mean abs. difference (levels)"] = (
                f"{difference.max()} / {difference.mean():.2f}")
        if flops and peak and result.measured:
            result.extra["MFU (bf16 peak)"] = model_flop_utilisation(result.items_per_second, flops, peak)
    # one "step" of sampling here is one batch: compile time amortised over --run-batches batches
    results["best+compile"].extra.update(compile_columns(results["best+compile"], results["best"], args.batches,
                                                         args.run_batches))
    chosen = describe_flags(winning_flags(single, results, "defaults")) if results["defaults"].measured else (
        "none (the defaults did not run)")
    title = (f"Sampling levers: {METHOD}, taxonomy guidance (scale 9), DDIM {args.steps} steps, {args.size} "
             f"backbone, {args.resolution} px, precision {str(dtype).removeprefix('torch.')}, each path alone on "
             "the device")
    notes = ["Order run: the defaults, the larger batches, channels-last, the winners together (eager, compiled), "
             "then the SDPA kernels for the UNet (`auto` already picks one: they refine, and are the first to fall "
             "to the time budget; a kernel that wins is not in the combined rows above).",
             f"Winners: a lever joins the combined path when it beat the defaults by more than 2% (of the batch "
             f"sizes, only the fastest); chosen: {combined}. Winners of the whole table (with the kernels, only the "
             f"fastest): {chosen}. The compile columns count steps as batches of {batch} images: compile time "
             f"amortised over {args.run_batches:,} batches (`--run-batches`)."]
    if flops:
        peak_text = (f"{peak / 1e12:.0f} TFLOP/s" if peak else
                     "none for a CPU" if args.device == "cpu" else "unknown (set $TAXABENCH_PEAK_TFLOPS)")
        notes.append(f"FLOPs per image (one batch of the defaults: text encoder, {args.steps} UNet calls of the "
                     f"guidance pair, VAE decode; torch.utils.flop_counter): {flops / 1e9:.1f} GFLOP; bf16 dense "
                     f"peak of the device: {peak_text}; MFU = images/s × FLOPs per image / peak.")
    return report_section(title, ordered, args, notes)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (the authors' sampler: 25)")
    parser.add_argument("--batch-size", type=int, default=16, help="taxabench's images per call (sample.batch_size)")
    parser.add_argument("--batches", type=int, default=None,
                        help="taxabench's batches per timed call (default 2; 1 with --paths levers)")
    parser.add_argument("--authors-images", type=int, default=4, help="the authors' images per timed call")
    parser.add_argument("--paths", default="authors,defaults", choices=("authors,defaults", "levers"),
                        help="the authors' loop against the defaults, or `levers`: every sampling lever")
    parser.add_argument("--lever-batches", default=None,
                        help="levers: the larger batch sizes to try (default 32,64; 4 in a dry run)")
    parser.add_argument("--compile-mode", default=None,
                        help="levers: torch.compile mode of the compiled path (sample.compile_mode; default "
                             "reduce-overhead, CUDA graphs, on CUDA; default elsewhere)")
    parser.add_argument("--run-batches", type=int, default=1000,
                        help="levers: the run length compile time is amortised over, in batches")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="levers: seconds for the whole table; paths not finished by then get a row saying so")
    return parser


def resolve(args) -> None:
    resolve_common(args)
    args.batches = args.batches or (1 if args.paths == "levers" else 2)
    if args.dry_run:
        args.steps, args.batch_size, args.batches, args.authors_images = 2, 2, 1, 1
    args.lever_batches = sorted({int(size) for size in (args.lever_batches or ("4" if args.dry_run else "32,64"))
                                .split(",")})
    if args.compile_mode is None:
        args.compile_mode = "reduce-overhead" if args.device.startswith("cuda") else "default"


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    resolve(args)
    emit(run(args), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
