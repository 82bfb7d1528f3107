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
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.harness import (
    Worker,
    add_common_arguments,
    emit,
    experiment_config,
    load_backbone_for,
    measure,
    report_section,
    resolve_common,
)

METHOD = "taxadiffusion"


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
    pipeline.set_progress_bar_config(disable=True)

    taxa = data.taxonomy.taxa(data.ranks[-1])
    work = [(taxon, j) for j in range(1000) for taxon in taxa]  # taxa mixed, as sample_method's batches
    position = [0]
    batch_size, batches = spec["batch_size"], spec["batches_per_call"]

    def run() -> int:
        for _ in range(batches):
            batch = work[position[0]:position[0] + batch_size]
            position[0] += batch_size
            seeds = [derive_seed(config.seed, "sample", t.id, j) for t, j in batch]
            pipeline([t.id for t, _ in batch], seeds=seeds, guidance="taxonomy", guidance_scale=9.0,
                     num_inference_steps=spec["steps"], height=spec["resolution"], width=spec["resolution"])
        return batch_size * batches

    return run, {"batch": str(batch_size), "precision": str(dtype).removeprefix("torch.")}


def run(args) -> str:
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


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (the authors' sampler: 25)")
    parser.add_argument("--batch-size", type=int, default=16, help="taxabench's images per call (sample.batch_size)")
    parser.add_argument("--batches", type=int, default=2, help="taxabench's batches per timed call")
    parser.add_argument("--authors-images", type=int, default=4, help="the authors' images per timed call")
    return parser


def resolve(args) -> None:
    resolve_common(args)
    if args.dry_run:
        args.steps, args.batch_size, args.batches, args.authors_images = 2, 2, 1, 1


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    resolve(args)
    emit(run(args), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
