"""Steps of a run, each skipped when it already finished for the same inputs.

A step has a name, a fingerprint (a hash of everything that decides its outputs, including the fingerprints of
the steps it depends on), an action and a way to remove its outputs. The ledger (`runs/<name>/steps.json`)
records a step only once its action has returned, so a killed step simply runs again — and every action is
itself resumable (training from its accelerate state, sampling skipping finished images, evaluation from its
feature caches), so it picks up where it stopped.

Each entry also records the step's peak memory: the process's resident set (Linux resets its high-water mark per step
through /proc/self/clear_refs; elsewhere it is the peak since the process started, and says so) and, on CUDA, the
peak allocated by torch.

A finished step whose inputs changed is an error, not a silent overwrite: rerun with `--force STEP` (which
also redoes the steps after it) or use another run name. A finished step whose outputs are gone or unreadable
(`Step.outputs`: a deleted `metrics/all.csv`, a truncated JSON) runs again: its outputs are derived data.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from taxabench.errors import TaxabenchError
from taxabench.files import read_json, write_json


def fingerprint(*parts: object) -> str:
    """A stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Step:
    name: str  # "backbone", "train/taxadiffusion", ...
    fingerprint: str
    action: Callable[[], None]
    clean: Callable[[], None]  # removes the step's outputs before a forced rerun
    after: tuple[str, ...] = ()  # steps whose outputs this one reads
    outputs: tuple[Path, ...] = ()  # files the step leaves; one missing or unreadable makes it run again
    intact: Callable[[], Path | None] | None = None  # a deeper check of the outputs: the first damaged file, or None

    def missing_output(self) -> Path | None:
        """The first of `outputs` that is absent, or a JSON file that does not parse, or what `intact` finds."""
        for path in self.outputs:
            if not path.is_file():
                return path
            if path.suffix == ".json":
                try:
                    json.loads(path.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return path
        return self.intact() if self.intact is not None else None


def reset_peak_memory() -> bool:
    """Start a step's memory high-water marks; False when the resident-set one cannot be reset here."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory(reset: bool) -> dict[str, float]:
    """The peak resident memory (MB) since `reset_peak_memory`, and CUDA's peak allocation when there is CUDA."""
    import resource
    import sys

    peak: dict[str, float] = {}
    status = Path("/proc/self/status")
    high_water = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")] \
        if status.is_file() else []
    if high_water:
        peak["peak_rss_mb"] = round(int(high_water[0].split()[1]) / 1024, 1)
    else:  # ru_maxrss: kilobytes on Linux, bytes on macOS
        scale = 1 if sys.platform == "darwin" else 1024
        peak["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)
    if not reset:
        peak["peak_rss_since"] = "process start"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        peak["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


class InProgress:
    """The names of the steps running now, for the line an interrupted run prints (`taxabench.cli`)."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()

    def set(self, names) -> None:
        self.names = tuple(names)


in_progress = InProgress()


class Ledger:
    """`steps.json`: step name -> fingerprint, wall seconds, peak memory and finish time of its last completed run."""

    def __init__(self, path: Path, writable: bool = True):
        """`writable`: False on every process but the main one of a multi-process run (they only read it)."""
        self.path = path
        self.writable = writable
        fix = ("delete it and rerun the same command: finished training and samples are reused, the rest is "
               "redone")
        self.entries: dict[str, dict] = read_json(path, fix) if path.is_file() else {}

    def record(self, step: Step, seconds: float, memory: dict[str, float] | None = None) -> None:
        self.entries[step.name] = {"fingerprint": step.fingerprint, "seconds": round(seconds, 2), **(memory or {}),
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._write()

    def forget(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self._write()

    def _write(self) -> None:
        if not self.writable:
            return
        write_json(self.path, self.entries, "ledger")


def dependents(steps: Sequence[Step], names: set[str]) -> set[str]:
    """`names` and every step that (transitively) comes after one of them."""
    found = set(names)
    for step in steps:  # steps are in execution order, so one pass suffices
        if found.intersection(step.after):
            found.add(step.name)
    return found


def check_steps(steps: Sequence[Step], ledger: Ledger, force: Sequence[str] = ()) -> set[str]:
    """Refuse unknown `--force` names and finished steps whose inputs changed, before anything runs or is written;
    returns the names of the steps `force` redoes."""
    names = [step.name for step in steps]
    unknown = [f for f in force if f not in names and not any(n.startswith(f + "/") for n in names)]
    if unknown:
        raise TaxabenchError(f"--force {unknown[0]!r}: no such step; steps are {', '.join(names)}")
    forced = dependents(steps, {n for n in names for f in force if n == f or n.startswith(f + "/")})
    for step in steps:
        entry = ledger.entries.get(step.name)
        if step.name not in forced and entry is not None and entry.get("fingerprint") != step.fingerprint:
            raise TaxabenchError(
                f"step {step.name!r} of {ledger.path.parent} finished earlier with other inputs (the config or "
                f"an earlier step changed); rerun with --force {step.name} to redo it, or use another run name"
            )
    return forced


def run_steps(steps: Sequence[Step], ledger: Ledger, force: Sequence[str] = (), console: Console | None = None) -> None:
    """Run each step unless the ledger shows it finished with the same fingerprint and its outputs are intact."""
    console = console or Console()
    forced = check_steps(steps, ledger, force)
    # outputs are checked before any step runs: steps that write one file (all.csv) are all redone when it is gone
    missing_outputs = {step.name: step.missing_output() for step in steps
                       if step.name in ledger.entries and step.name not in forced}
    for step in steps:
        entry = ledger.entries.get(step.name)
        if step.name in forced:
            step.clean()
            ledger.forget(step.name)
        elif entry is not None:
            missing = missing_outputs[step.name]
            if missing is None:
                console.print(f"[dim]✓ {step.name}: done earlier ({entry['seconds']} s), skipped[/]")
                continue
            console.print(f"[yellow]{step.name}: {missing} is missing or unreadable; redoing the step[/]")
            ledger.forget(step.name)
        console.rule(f"[bold]{step.name}")
        reset = reset_peak_memory()
        start = time.perf_counter()
        in_progress.set([step.name])  # left set when the action raises: the interrupted step
        step.action()
        in_progress.set(())
        ledger.record(step, time.perf_counter() - start, peak_memory(reset))
