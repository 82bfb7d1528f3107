"""Fault injection for `taxabench run`: kill a run at a named event (`taxabench.files.fault_point`: the process
exits at once, as under `kill -9`), run the same command again, and compare the bytes it ends with against an
uninterrupted run's. Kill points are counted events — the n-th optimizer step, the n-th write of a file kind —
never wall time, so every case is reproducible.

In-process kills (`Killed`, `kill_after_step`, `kill_after_call`) are cheaper — no new interpreter — for tests that
resume through `taxabench.run.run` itself: the step's work finishes, then an exception stands for the kill before
the run records it. Unlike `kill -9` they let `finally` blocks run, so they do not test atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import experiment

from taxabench.files import FAULT_ENV, FAULT_EXIT_CODE, FAULT_LOG_ENV

ROOT = Path(__file__).parents[1]


def fault_config(world: Path, runs_dir: Path, name: str, methods: list[str], jobs: int = 1) -> Path:
    """A config file for the small world: crosses epochs while training (12 images, batch 4, 8 steps), checkpoints
    every 2 steps, samples 6 images in two batches, evaluates with a quickly built synthclip. `jobs` 1: every step
    in the run's own process, so a fault kills the run, not a worker of its pool."""
    from dataclasses import replace

    config = experiment(
        world, runs_dir,
        jobs=jobs,
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


def final_bytes(run_dir: Path) -> dict[str, bytes]:
    """What must not depend on kills: the metrics table, every sample image and every trained weight file, as
    written; and no temporary (`.partial`) anywhere in the run folder."""
    files = [run_dir / "metrics" / "all.csv", *run_dir.glob("samples/**/*.png"),
             *run_dir.glob("checkpoints/**/*.safetensors")]
    found = {path.relative_to(run_dir).as_posix(): path.read_bytes() for path in sorted(files)}
    for leftover in sorted(run_dir.rglob("*.partial")):
        found[leftover.relative_to(run_dir).as_posix()] = b"left behind"
    return found


def differences(expected: dict[str, bytes], found: dict[str, bytes]) -> list[str]:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    changed = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    return [f"missing {k}" for k in missing] + [f"extra {k}" for k in extra] + [f"differs {k}" for k in changed]


def recorded_events(log: Path) -> list[str]:
    """The events a run started with `$TAXABENCH_FAULT_LOG` = `log` passed, in order."""
    return log.read_text().split()


def kill_chains(events: list[str]) -> dict[str, list[str]]:
    """The sweep: chains of kills that together hit every event kind of a recorded run at its first, second and
    middle occurrence. Kill `k` of a chain is counted in the process that resumed from kill `k - 1`, so a chain is
    the issue's "killed at several points in a row" and costs about one run plus the work each kill makes redo,
    where independent kills would cost a run each. A chain follows the kinds in the order they first occur."""
    counts = Counter(events)
    kinds = list(dict.fromkeys(events))
    return {
        "first": [f"{kind}:1" for kind in kinds],
        "second": [f"{kind}:2" for kind in kinds if counts[kind] >= 2],
        "middle": [f"{kind}:{(counts[kind] + 1) // 2}" for kind in kinds if counts[kind] >= 5],
    }


def kill_in_a_row(config_file: Path, faults: list[str]) -> tuple[list[str], list[str]]:
    """Kill the run again and again, then let it finish: each new process is given every fault not yet hit
    (`$TAXABENCH_FAULT` takes a list) and dies at the first it reaches, named by the last event of its log (a
    chain's faults are of distinct kinds). A resumed process does not pass every event a fresh one does (a written
    `layout.json` is not written again), so a fixed order would let the run finish at the first such fault.
    Returns (faults killed at, in order; faults no process reached before the run finished)."""
    remaining, killed = list(faults), []
    log = config_file.with_name(f"{config_file.stem}.events")
    while remaining:
        log.unlink(missing_ok=True)
        if taxabench_run(config_file, ",".join(remaining), log=log) != FAULT_EXIT_CODE:
            break  # it finished: none of the remaining faults comes after this point of the run
        kind = log.read_text().split()[-1]
        point = next(p for p in remaining if p.rpartition(":")[0] == kind)
        remaining.remove(point)
        killed.append(point)
    assert taxabench_run(config_file) == 0
    return killed, remaining


class Killed(Exception):
    """Stands for the process dying (in-process kills)."""


def kill_after_step(patch, step_name: str) -> None:
    """Make `taxabench.run.run` die right after the step `step_name` did its work, before the ledger records it
    (`patch`: a pytest monkeypatch)."""
    import taxabench.run as run_module

    real_plan = run_module.plan

    def plan_with_a_kill(*args, **kwargs):
        steps = real_plan(*args, **kwargs)
        for step in steps:
            if step.name == step_name:
                def killed(action=step.action):
                    action()
                    raise Killed(step_name)
                step.action = killed
        return steps
    patch.setattr(run_module, "plan", plan_with_a_kill)


def kill_after_call(patch, module, function: str, nth: int = 1) -> None:
    """Make the `nth` call of `module.function` die once it returned (say, after the 5th sample image)."""
    real = getattr(module, function)
    calls = []

    def call_then_die(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(None)
        if len(calls) == nth:
            raise Killed(f"{function} call {nth}")
        return result
    patch.setattr(module, function, call_then_die)


def assert_same_table(expected_run: Path, found_run: Path) -> None:
    """`metrics/all.csv` of two run folders byte for byte (the first differing line on failure)."""
    expected = (expected_run / "metrics" / "all.csv").read_text().splitlines()
    found = (found_run / "metrics" / "all.csv").read_text().splitlines()
    for number, (a, b) in enumerate(zip(expected, found), 1):
        assert a == b, f"all.csv line {number} differs:\n  expected {a}\n  found    {b}"
    assert len(expected) == len(found), f"all.csv has {len(found)} lines, expected {len(expected)}"
    assert (expected_run / "metrics" / "all.csv").read_bytes() == (found_run / "metrics" / "all.csv").read_bytes()


def start_run(config_file: Path, log: Path, launcher: list[str] | None = None, **env: str) -> subprocess.Popen:
    """`taxabench run --config FILE` started in its own process group (so a test can signal the group), passing
    its events to `log`; `launcher`: e.g. torchrun's arguments before `-m taxabench`."""
    log.unlink(missing_ok=True)
    full_env = {**{k: v for k, v in os.environ.items() if k != FAULT_ENV}, "PYTHONPATH": str(ROOT),
                FAULT_LOG_ENV: str(log), **env}
    command = [*(launcher or [sys.executable]), "-m", "taxabench", "run", "--config", str(config_file)]
    return subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def wait_for_event(process: subprocess.Popen, log: Path, event: str, count: int = 1, timeout: float = 900) -> None:
    """Wait until the run (any of its processes) passed `event` `count` times; fail if it ended first."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and log.read_text().split().count(event) >= count:
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before {event} x{count}:\n"
                                 f"{process.stdout.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no {event} x{count} within {timeout} s")


def descendants(pid: int) -> list[int]:
    """The live processes below `pid` (children, their children...), from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":  # a zombie has ended
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie has ended), from /proc."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def workers_of(pid: int) -> list[int]:
    """The worker processes a run started (multiprocessing's spawned children; not its resource tracker)."""
    found = []
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command:
            found.append(child)
    return found
