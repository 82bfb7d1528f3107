"""One whole evaluation at the paper configs' resolution, end to end: wall time and peak memory per metric.

    python -m benchmarks.eval_full --out reports/perf/cpu-eval-512.md      # 1,000 images at 512 px, all cores
    python -m benchmarks.eval_full --images 64 --resolution 128             # a quick check of the code path

`taxabench.metrics.evaluate` runs once, as `taxabench eval` does, with the evaluation settings of
`configs/fishnet.yaml` (FID on the FID Inception, the BioCLIP score and taxonomic accuracy on BioCLIP's ViT-B-16,
LPIPS on VGG16, and every other default metric) and a cold feature cache, on a sample folder of about `--images`
generated images spread over the SynthTaxa `tiny` world's species (its training images resized to `--resolution`:
what an extractor costs depends on the pixel count, not the content), against the world's test split as the real
set. The weights are the offline stand-ins of `nox -s realweights` (tests/standins.py): the real architectures
with seeded random weights, in the real cache layouts, accepted through `eval.unverified_weights`; their cost is the
real weights' cost.

Unlike the interleaved harnesses, this is a single timed call (hours on a CPU at 512 px): the numbers are absolute
and depend on what else runs on the machine. Each metric's time includes the feature extraction it is the first to
need (FD extracts the Inception features KID then reuses; the BioCLIP score the features taxonomic accuracy reuses).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.eval_speed import SAMPLES, fabricate_samples
from benchmarks.harness import ROOT, default_device, emit, experiment_config, machine_description


def timed_metrics(names: list[str], timings: dict[str, tuple[float, float]]) -> None:
    """Wrap each metric class's `compute` to record (seconds, the process's peak resident MB after it)."""
    from taxabench.metrics.registry import METRICS

    for name in names:
        cls = METRICS.get(name)
        compute = cls.compute

        def timed(self, context, _compute=compute, _name=name):
            started = time.perf_counter()
            result = _compute(self, context)
            timings[_name] = (time.perf_counter() - started, peak_resident_mb())
            return result

        cls.compute = timed


def peak_resident_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run(args) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from standins import build_bioclip, build_torch_hub_files, pointed_caches

    from taxabench.data import load_dataset
    from taxabench.metrics import evaluate

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="eval-full-") as scratch:
        scratch = Path(scratch)
        os.environ["TAXABENCH_HOME"] = str(scratch / "home")  # a cold feature cache
        with pointed_caches(scratch / "caches") as caches:
            build_bioclip(caches / "hub")
            digests = build_torch_hub_files(caches / "torch")
            config = experiment_config("tiny", args.resolution, eval={
                "fd_extractor": "inception", "clip_model": "bioclip", "unverified_weights": digests,
                "device": args.device})
            data = load_dataset(config.data)
            species, real = len(data.species), len(data.eval)
            per_taxon = -(-args.images // species)
            generated = fabricate_samples(scratch / "run", "tiny", args.resolution, per_taxon)
            timings: dict[str, tuple[float, float]] = {}
            timed_metrics(config.eval.metrics, timings)
            started = time.perf_counter()
            evaluate(config, SAMPLES, scratch / "run", show_progress=not args.quiet)
            total = time.perf_counter() - started
    rows = "\n".join(f"| {name} | {seconds:,.0f} | {peak:,.0f} |" for name, (seconds, peak) in timings.items())
    return (f"## One evaluation end to end: {generated:,} generated images at {args.resolution} px\n\n"
            f"{machine_description(args.device, args.threads)}\n\n"
            f"`python -m benchmarks.eval_full --images {args.images} --resolution {args.resolution} "
            f"--threads {args.threads}`: `taxabench.metrics.evaluate` with configs/fishnet.yaml's evaluation "
            f"settings and every default metric, a cold feature cache, {generated:,} generated images "
            f"({per_taxon} for each of {species} species) against {real:,} real test "
            f"images, stand-in weights of the real architectures. Total **{total / 60:,.1f} min**, peak resident "
            f"memory **{peak_resident_mb():,.0f} MB**. Per metric, in the order computed (a metric's time "
            f"includes the features it is the first to extract):\n\n"
            f"| metric | seconds | peak resident MB after it |\n|---|---|---|\n{rows}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="generated images (spread evenly over species)")
    parser.add_argument("--resolution", type=int, default=512, help="image size in px")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", type=Path, default=None, help="append the markdown section to this file")
    args = parser.parse_args(argv)
    args.device = args.device or default_device()
    os.environ.setdefault("TAXABENCH_OFFLINE", "1")
    emit(run(args), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
