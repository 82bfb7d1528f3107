"""Fault injection for `taxabench run`: kill a run at a named event (`taxabench.files.fault_point`: the process
exits at once, as under `kill -9`), run the same command again, and compare the bytes it ends with against an
uninterrupted run's. Kill points are counted events — the n-th optimizer step, the n-th write of a file kind —
never wall time, so every case is reproducible."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import experiment

from taxabench.files import FAULT_ENV, FAULT_EXIT_CODE, FAULT_LOG_ENV

ROOT = Path(__file__).parents[1]


def fault_config(world: Path, runs_dir: Path, name: str, methods: list[str]) -> Path:
    """A config file for the small world: crosses epochs while training (12 images, batch 4, 8 steps), checkpoints
    every 2 steps, samples 6 images in two batches, evaluates with a quickly built synthclip."""
    from dataclasses import replace

    config = experiment(
        world, runs_dir,
        jobs=1,  # every step in the run's own process: a fault kills the run, not a worker of its pool
        data={"dataset": "csv"},
        methods=methods,
        method_options={"taxadiffusion": {"ranks": ["class", "species"]}, "flat-ldm": {"steps": 8}},
        train={"steps_per_stage": 8, "checkpoint_every": 2, "batch_size": 4},
        sample={"images_per_taxon": 2, "steps": 3, "batch_size": 4},
        eval={"synthclip": {"steps": 30}, "bootstrap": 20, "bootstrap_set_metrics": 10},
    )
    path = runs_dir / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace(config, name=name).to_yaml())
    return path


def taxabench_run(config_file: Path, fault: str | None = None, log: Path | None = None) -> int:
    """`python -m taxabench run --config FILE` in a fresh process; its exit code (0, or the fault's)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    if log:
        env[FAULT_LOG_ENV] = str(log)
    result = subprocess.run([sys.executable, "-m", "taxabench", "run", "--config", str(config_file)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=900)
    if result.returncode not in (0, FAULT_EXIT_CODE):
        raise AssertionError(f"taxabench run (fault {fault}) exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result.returncode


def kill_then_finish(config_file: Path, faults: list[str]) -> None:
    """Kill the run at each fault in turn (each in a new process, counting from its start), then let it finish."""
    for fault in faults:
        assert taxabench_run(config_file, fault) == FAULT_EXIT_CODE, f"the run never reached {fault}"
    assert taxabench_run(config_file) == 0


# all.csv columns that measure the machine, not the run: they differ between two uninterrupted runs too
WALL_CLOCK_COLUMNS = ("wall_seconds",)


def final_bytes(run_dir: Path) -> dict[str, bytes]:
    """What must not depend on kills: the metrics table (every cell but wall-clock times, as written), every sample
    image and every trained weight file."""
    files = [run_dir / "metrics" / "all.csv", *run_dir.glob("samples/**/*.png"),
             *run_dir.glob("checkpoints/**/*.safetensors")]
    found = {path.relative_to(run_dir).as_posix(): path.read_bytes() for path in sorted(files)}
    found["metrics/all.csv"] = _without_wall_clock(found["metrics/all.csv"])
    return found


def _without_wall_clock(table: bytes) -> bytes:
    import csv
    import io

    rows = list(csv.reader(io.StringIO(table.decode())))
    keep = [i for i, name in enumerate(rows[0]) if name not in WALL_CLOCK_COLUMNS]
    out = io.StringIO()
    csv.writer(out).writerows([[row[i] for i in keep] for row in rows])
    return out.getvalue().encode()


def differences(expected: dict[str, bytes], found: dict[str, bytes]) -> list[str]:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    changed = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    return [f"missing {k}" for k in missing] + [f"extra {k}" for k in extra] + [f"differs {k}" for k in changed]


def recorded_events(log: Path) -> Counter[str]:
    """How often each event happened in a run started with `$TAXABENCH_FAULT_LOG` = `log`."""
    return Counter(log.read_text().split())


def kill_points(events: Counter[str]) -> list[str]:
    """Every `event:n` of a recorded run: the first, second, middle and last occurrence of each event kind
    (writes of one kind in between are alike)."""
    points = []
    for event, count in sorted(events.items()):
        for n in sorted({1, min(2, count), (count + 1) // 2, count}):
            points.append(f"{event}:{n}")
    return points
