"""The fast paths change nothing but speed: the authors' configuration (float32, frozen encoders re-run at every
step) gives the same loss curve as taxabench's cached defaults; one image per call gives the same samples as
batches across taxa. And the benchmark harness measures what it says (interleaved workers, ratios, peaks)."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
import torch
from conftest import experiment
from PIL import Image

from benchmarks.harness import (
    LeverPath,
    Measurement,
    Worker,
    compile_columns,
    markdown_table,
    measure,
    measure_alone,
    model_flop_utilisation,
    winning_flags,
)
from taxabench.sample import sample_method
from taxabench.train import train_method

AUTHORS = {"mixed_precision": "no", "cache_latents": False, "cache_text": False}
LEVERS = {"channels_last": True, "attention": "math"}  # the levers a CPU has besides compile (math: not auto's flash)
TWO_RANKS = {"taxadiffusion": {"ranks": ["class", "order"]}}
SPECIES = ["bubuii", "nomoatus"]


def loss_curve(folder) -> list[tuple[int, int, float]]:
    with open(folder / "loss.csv", newline="") as handle:
        return [(int(r["stage"]), int(r["step"]), float(r["loss"])) for r in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def authors_and_defaults(tiny_world, tiny_data, tiny_backbone, tmp_path_factory):
    """taxadiffusion on two ranks, 2 steps per stage, trained in the authors' configuration, with the defaults, and
    with the defaults plus the throughput levers."""
    folders = {}
    for name, flags in (("authors", AUTHORS), ("defaults", {}), ("levers", LEVERS)):
        config = experiment(tiny_world, tmp_path_factory.mktemp(name), train={"steps_per_stage": 2, **flags},
                            method_options=TWO_RANKS, sample={"taxa": SPECIES})
        folders[name] = (config, train_method(config, "taxadiffusion", data=tiny_data, show_progress=False))
    return folders


def test_the_authors_configuration_gives_the_same_loss_curve(authors_and_defaults):
    (_, authors), (_, defaults) = authors_and_defaults["authors"], authors_and_defaults["defaults"]
    plain, fast = loss_curve(authors), loss_curve(defaults)
    assert [r[:2] for r in plain] == [r[:2] for r in fast] == [(s, k) for s in (0, 1) for k in (1, 2)]
    # the same draws, the same weights: only the order of float32 reductions in the frozen encoders differs
    np.testing.assert_allclose([r[2] for r in fast], [r[2] for r in plain], rtol=1e-5, atol=1e-6)
    from safetensors.torch import load_file

    for file in ("conditioner.safetensors", "pytorch_lora_weights.safetensors"):
        a, b = load_file(authors / "stage-1" / file), load_file(defaults / "stage-1" / file)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


def test_channels_last_and_the_attention_kernel_give_the_same_loss_curve(authors_and_defaults):
    (_, defaults), (_, levers) = authors_and_defaults["defaults"], authors_and_defaults["levers"]
    plain, fast = loss_curve(defaults), loss_curve(levers)
    assert [r[:2] for r in plain] == [r[:2] for r in fast] and len(fast) == 4
    # NHWC convolutions and the math attention kernel sum in another order: float32 rounding, nothing more
    np.testing.assert_allclose([r[2] for r in fast], [r[2] for r in plain], rtol=1e-4, atol=1e-6)


def test_one_image_per_call_gives_the_same_samples(authors_and_defaults, tmp_path):
    config, _ = authors_and_defaults["defaults"]

    def images(batch_size: int, precision: str, name: str, **levers) -> dict[str, np.ndarray]:
        config.sample.batch_size, config.sample.precision = batch_size, precision
        config.sample.channels_last, config.sample.attention = levers.get("channels_last", False), levers.get(
            "attention", "auto")
        folder = sample_method(config, "taxadiffusion", output=name, show_progress=False)
        return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p), dtype=np.int16)
                for p in sorted(folder.glob("*/*.png"))}

    batched = images(8, "float64", "batched")
    one_by_one = images(1, "float64", "one-by-one")
    assert len(batched) == len(SPECIES) * config.sample.images_per_taxon
    assert all(np.array_equal(batched[k], one_by_one[k]) for k in batched)  # float64: the same bytes
    authors = images(1, "float32", "authors-float32")  # the authors' loop: one image per call, float32
    assert authors.keys() == batched.keys()
    for key in batched:  # float32 rounding moves a few pixel values by a level or two, nothing more
        difference = np.abs(authors[key] - batched[key])
        assert difference.max() <= 3 and difference.mean() < 0.05, key
    with_levers = images(8, "float64", "levers-float64", **LEVERS)  # NHWC weights, the math attention kernel
    assert all(np.array_equal(with_levers[k], batched[k]) for k in batched)


@pytest.mark.slow
def test_torch_compile_on_a_cpu_changes_nothing_but_speed(authors_and_defaults, tiny_world, tmp_path):
    """train.compile and sample.compile in the mode a CPU has (default), against eager (minutes of compiling)."""
    _, defaults = authors_and_defaults["defaults"]
    config = experiment(tiny_world, tmp_path, train={"steps_per_stage": 2, "compile": True},
                        method_options=TWO_RANKS, sample={"taxa": SPECIES, "precision": "float32"})
    compiled = train_method(config, "taxadiffusion", show_progress=False)
    np.testing.assert_allclose([r[2] for r in loss_curve(compiled)], [r[2] for r in loss_curve(defaults)],
                               rtol=1e-4, atol=1e-6)
    eager_folder = sample_method(config, "taxadiffusion", output="eager", show_progress=False)
    config.sample.compile = True
    compiled_folder = sample_method(config, "taxadiffusion", output="compiled", show_progress=False)
    for path in sorted(eager_folder.glob("*/*.png")):
        eager = np.asarray(Image.open(path), dtype=np.int16)
        fast = np.asarray(Image.open(compiled_folder / path.relative_to(eager_folder)), dtype=np.int16)
        assert np.abs(fast - eager).max() <= 3, path  # float32 with fused kernels: a level or two


# ---------------------------------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------------------------------


def test_measure_interleaves_workers_and_reports_ratios_and_peaks():
    paths = {"slow": Worker("perf_workers:setup_sleeper", {"seconds": 0.2, "megabytes": 1, "threads": 1}),
             "fast": Worker("perf_workers:setup_sleeper", {"seconds": 0.05, "megabytes": 200, "threads": 1})}
    slow, fast = measure(paths, repeats=3, warmup=1)
    assert len(slow.seconds) == len(fast.seconds) == 3
    assert slow.items == fast.items == 4 and slow.items_per_second == pytest.approx(4 / np.median(slow.seconds))
    assert 2.0 < fast.items_per_second / slow.items_per_second < 4.5  # 0.2 s against 0.05 s, plus a pipe each
    assert fast.peak_memory_mb > slow.peak_memory_mb + 150  # each path's own process peak
    assert fast.extra == {"kind": "sleeper", "ballast MiB": "200"}
    table = markdown_table("sleepers", [slow, fast], unit="items/s")
    assert "| slow |" in table and "1.00×" in table and "| kind | ballast MiB |" in table


def test_a_failing_worker_names_its_error():
    with pytest.raises(RuntimeError, match="setup failed on purpose"):
        measure({"broken": Worker("perf_workers:setup_sleeper", {"fail": True})}, repeats=1, warmup=0)


def test_measure_alone_keeps_a_row_for_a_path_that_cannot_run():
    refused = measure_alone("cudnn", "refused on cpu: a CUDA kernel", repeats=1, warmup=0, device="cpu")
    broken = measure_alone("broken", Worker("perf_workers:setup_sleeper", {"fail": True}), 1, 0, "cpu")
    late = measure_alone("late", Worker("perf_workers:setup_sleeper", {"seconds": 30, "megabytes": 1}), 1, 0,
                         "cpu", deadline=time.monotonic() + 8)
    fine = measure_alone("fine", Worker("perf_workers:setup_sleeper", {"seconds": 0.1, "megabytes": 1}), 2,
                         1, "cpu")
    assert [r.measured for r in (refused, broken, late, fine)] == [False, False, False, True]
    assert refused.note == "refused on cpu: a CUDA kernel"
    assert broken.note == "failed: ValueError: setup failed on purpose"
    assert late.note.startswith("stopped at the time budget after")
    assert len(fine.seconds) == 2 and fine.first_call_seconds >= 0.1 and fine.note == ""
    table = markdown_table("levers", [fine, refused, late])
    assert "| fine |" in table and "1.00×" in table
    assert "| cudnn | — | — | — | 0 |  |  | refused on cpu: a CUDA kernel |" in table


def result(name: str, per_second: float, first: float = 1.0, items: int = 8) -> Measurement:
    return Measurement(name, per_second, [items / per_second] * 2, items, 0.0, first_call_seconds=first)


def test_the_combined_path_takes_every_lever_that_won_and_the_fastest_of_a_group():
    paths = [LeverPath("defaults", "defaults", {}), LeverPath("cl", "channels-last", {"channels_last": True}),
             LeverPath("flash", "flash", {"attention": "flash"}, group="attention"),
             LeverPath("efficient", "efficient", {"attention": "efficient"}, group="attention"),
             LeverPath("batch", "batch 64", {"batch_size": 64})]
    results = {"defaults": result("defaults", 100), "cl": result("cl", 130), "flash": result("flash", 110),
               "efficient": result("efficient", 120), "batch": result("batch", 101)}  # within the 2% margin
    assert winning_flags(paths, results, "defaults") == {"channels_last": True, "attention": "efficient"}
    results["cl"] = Measurement("cl", float("nan"), [], 0, 0.0, note="out of memory")
    results["batch"] = result("batch", 150)
    assert winning_flags(paths, results, "defaults") == {"attention": "efficient", "batch_size": 64}


def test_compile_time_is_reported_apart_and_amortised():
    eager = result("eager", per_second=80.0, first=0.2, items=16)  # 0.2 s per call of 2 steps
    compiled = result("compiled", per_second=160.0, first=60.1, items=16)  # 0.1 s per call: 60 s compiling
    columns = compile_columns(compiled, eager, steps_per_call=2, run_steps=1000)
    assert columns["compile (s)"] == "60"
    assert columns["break-even (steps)"] == "1,200"  # 60 s / (0.1 - 0.05 s saved per step)
    assert columns["images/s over 1,000 steps"] == f"{8000 / (1000 * 0.05 + 60):.3g}"  # 8 images per step
    assert compile_columns(Measurement("x", float("nan"), [], 0, 0.0), eager, 2, 1000) == {}


def test_model_flop_utilisation():
    # 10 images/s x 5 TFLOP per image on a 100 TFLOP/s device: half the peak
    assert model_flop_utilisation(10.0, 5e12, 100e12) == "50.0%"
    assert model_flop_utilisation(10.0, 5e12, None) == "n/a"
    assert Measurement("x", 1.0, [1.0], 1, 0.0).extra == {}


@pytest.mark.slow
def test_harness_dry_runs_on_the_tiny_size(tiny_backbone, tmp_path):
    from benchmarks.__main__ import main

    out = tmp_path / "cpu.md"
    main(["--size", "tiny", "--device", "cpu", "--out", str(out), "--", "--dry-run"])
    report = out.read_text()
    for title in ("Training step throughput", "Sampling throughput", "Evaluation throughput"):
        assert title in report
    assert report.count("**Dry run**") == 3


@pytest.mark.slow
def test_sd15_shape_runs_one_training_and_sampling_step_on_cpu(tmp_path):
    """The SD-1.5-shaped paths gpu_check.sh times, checked on a CPU at 64 px: one step each (minutes)."""
    from benchmarks import sample_speed, train_speed

    for module in (train_speed, sample_speed):
        out = tmp_path / f"{module.__name__}.md"
        module.main(["--size", "sd15", "--device", "cpu", "--allow-cpu", "--dry-run", "--resolution", "64",
                     "--out", str(out)])
        assert "sd15 backbone, 64 px" in out.read_text()


def test_sd15_shape_is_refused_on_cpu_unless_asked():
    from benchmarks import train_speed

    with pytest.raises(SystemExit, match="too slow to time on a CPU"):
        train_speed.main(["--size", "sd15", "--device", "cpu"])


@pytest.mark.slow
def test_gpu_check_dry_run_writes_both_lever_tables(tmp_path):
    """`gpu_check.sh --dry-run` end to end on a CPU: the CUDA tests skip, both lever tables are written, the
    CUDA-only levers are rows that say why, and the script passes."""
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the dry run is for a CPU")
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", str(tmp_path)], capture_output=True,
                            text=True, timeout=3600, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                                                          "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "dry-run-cpu.md").read_text()
    assert "#### Training levers" in report and "#### Sampling levers" in report
    assert report.count("refused on cpu: train.attention: 'efficient' is a CUDA kernel") == 1
    assert "refused on cpu: sample.compile_mode" not in report  # the CPU's compile mode is default: skipped
    assert report.count("skipped in a dry run") == 2 and "Batch sweep" in report


def test_gpu_check_script_parses_and_fails_clearly_without_cuda(tmp_path):
    import subprocess
    import sys

    script = "benchmarks/gpu_check.sh"
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run for real")
    result = subprocess.run(["bash", script, str(tmp_path)], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "sees no CUDA device (for a CPU check: --dry-run)" in result.stdout + result.stderr
    assert (tmp_path / "gpu_check.log").is_file()
