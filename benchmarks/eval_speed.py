"""Evaluation throughput (generated images/s): a cold feature cache against a warm one, interleaved.

    python -m benchmarks.eval_speed                        # tiny world, synthclip-tiny architecture, CPU
    python -m benchmarks.eval_speed --size sd15            # 512 px, BioCLIP's ViT-B-16 architecture (GPU)

Every path runs `taxabench.metrics.evaluate` (every default metric: FD, KID, LPIPS, CLIP score, taxonomic accuracy,
with their bootstrap intervals) on a sample folder of N images per species, with these caches:

- cold: `$TAXABENCH_HOME/features` empty: the real evaluation split and the generated images go through the
  extractors;
- warm: the real images' features cached (as after the first evaluation of a run), a sample folder the cache has
  not seen (its generated-image caches are removed before each call);
- warm, 2N: the same with twice as many generated images per species.

The last column counts the images each call sent through an extractor, real and generated: with a warm cache the
real images left are LPIPS's per-species real subsets (at most `eval.lpips_max_real` per evaluated species, whose
spatial VGG activations are too large to cache: ~2 MiB per 64 px image, ~130 MiB at 512 px), so extractor work
grows with the generated images and the evaluated species, not with the real evaluation split. Time that does not
depend on images (bootstrap intervals over species, KID subsets) is the same in every path.

Extractor weights are random (the same architecture as the real ones; throughput does not depend on the values):
synthclip-tiny for the tiny size; BioCLIP's ViT-B-16 for FD and the CLIP metrics at SD-1.5 size (the FID
Inception's weights are checked against their SHA-256, so random ones cannot stand in); LPIPS on an untrained VGG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import (
    Worker,
    add_common_arguments,
    emit,
    experiment_config,
    measure,
    report_section,
    resolve_common,
)

SAMPLES = "copies"  # the sample folder's (method) name


def eval_settings(size: str, extractor_folder: Path, device: str) -> dict:
    name = "synthclip" if size == "tiny" else "bioclip"
    return {"fd_extractor": name, "clip_model": name, "weights": {name: str(extractor_folder)},
            "lpips_backbone": "untrained", "device": device}


def setup_evaluation(spec: dict):
    """Worker setup: `evaluate` on this path's sample folder, its feature caches cleared as the path says."""
    import warnings

    import taxabench.metrics.features as features_module
    from taxabench.metrics import evaluate
    from taxabench.metrics.cache import features_dir
    from taxabench.taxonomy import Record

    warnings.simplefilter("ignore")  # small-sample warnings: expected, and not what is measured
    config = experiment_config(spec["size"], spec["resolution"],
                               eval=eval_settings(spec["size"], Path(spec["extractor"]), spec["device"]))
    counts = {"real": 0, "generated": 0}
    tensor = features_module.ImageSet.tensor

    def counted(self, indices):
        side = "real" if self.items and isinstance(self.items[0], Record) else "generated"
        counts[side] += len(indices)
        return tensor(self, indices)

    features_module.ImageSet.tensor = counted
    generated = json.loads(Path(spec["run"], "count.json").read_text())

    def run():
        cache = features_dir()
        if spec["cache"] == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        else:  # a sample folder this cache has not seen: everything keyed on the samples goes
            for kind in ("generated", "lpips"):
                shutil.rmtree(cache / kind, ignore_errors=True)
        counts.update(real=0, generated=0)
        evaluate(config, SAMPLES, spec["run"], show_progress=False)
        return generated, {"images through extractors (real + generated)": f"{counts['real']} + {counts['generated']}"}

    return run, {}


def fabricate_samples(run_dir: Path, size: str, resolution: int, per_taxon: int) -> int:
    """A sample folder in the evaluator's contract made of training images (resized to `resolution`)."""
    from taxabench.data import load_dataset
    from taxabench.data.images import load_image
    from taxabench.metrics.samples import METADATA_FILE, samples_folder, write_metadata_line

    config = experiment_config(size, resolution)
    data = load_dataset(config.data)
    folder = samples_folder(run_dir, SAMPLES)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(folder / METADATA_FILE, "w") as handle:
        for taxon in data.species:
            records = data.records_of(taxon, "train")
            for index in range(per_taxon):
                image = load_image(records[index % len(records)], resolution, config.data.resize, False)
                target = folder / taxon.slug / f"{index:04d}.png"
                target.parent.mkdir(exist_ok=True)
                image.save(target)
                write_metadata_line(handle, target, folder, taxon, seed=index, method=SAMPLES)
                count += 1
    (run_dir / "count.json").write_text(json.dumps(count))
    return count


def random_extractor(size: str, folder: Path) -> Path:
    """An open_clip `local-dir:` folder with random weights: synthclip-tiny (tiny) or ViT-B-16 (BioCLIP's)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from taxabench.metrics.extractor_open_clip import OPENAI_MEAN, OPENAI_STD
    from taxabench.metrics.synthclip import ARCHITECTURE, register_architecture

    torch.manual_seed(0)
    if size == "tiny":
        register_architecture()
        name, interpolation = ARCHITECTURE, "bilinear"
    else:
        name, interpolation = "ViT-B-16", "bicubic"
    model = open_clip.create_model(name)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    config = {"model_cfg": open_clip.get_model_config(name),
              "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": interpolation,
                                 "resize_mode": "squash"}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return folder


def private_home(shared: Path, folder: Path) -> Path:
    """A TAXABENCH_HOME of its own for a path's feature cache, sharing everything else with `shared`."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in shared.iterdir():
        if entry.name != "features" and not (folder / entry.name).exists():
            (folder / entry.name).symlink_to(entry.resolve())
    return folder


def run(args) -> str:
    from taxabench.config import taxabench_home

    shared = taxabench_home()
    shared.mkdir(parents=True, exist_ok=True)
    experiment_config(args.size, args.resolution)  # generates the world before the workers start
    with tempfile.TemporaryDirectory(prefix="eval-speed-") as scratch:
        scratch = Path(scratch)
        extractor = random_extractor(args.size, scratch / "extractor")
        per_taxon = {"N": args.per_taxon, "2N": 2 * args.per_taxon}
        runs = {label: scratch / f"run-{label}" for label in per_taxon}
        for label, count in per_taxon.items():
            fabricate_samples(runs[label], args.size, args.resolution, count)
        paths = {"cold cache": ("cold", "N"), "warm cache": ("warm", "N"), "warm cache, 2N generated": ("warm", "2N")}
        if args.dry_run:
            del paths["warm cache, 2N generated"]
        workers = {}
        for index, (name, (cache, label)) in enumerate(paths.items()):
            home = private_home(shared, scratch / f"home-{index}")
            workers[name] = Worker("benchmarks.eval_speed:setup_evaluation", {
                "size": args.size, "device": args.device, "resolution": args.resolution, "threads": args.threads,
                "cache": cache, "run": str(runs[label]), "extractor": str(extractor),
                "env": {"TAXABENCH_HOME": str(home)},
            })
        results = measure(workers, repeats=args.repeats, warmup=args.warmup, device=args.device,
                          interleave=not args.dry_run)
    title = (f"Evaluation throughput (generated images/s): every default metric, {args.size} size, "
             f"{args.resolution} px, N = {args.per_taxon} generated images per species")
    return report_section(title, results, args)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--per-taxon", type=int, default=4, help="generated images per species (N)")
    return parser


def resolve(args) -> None:
    resolve_common(args)
    if args.dry_run:
        args.per_taxon = 1


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    resolve(args)
    os.environ.setdefault("TAXABENCH_OFFLINE", "1")
    emit(run(args), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
