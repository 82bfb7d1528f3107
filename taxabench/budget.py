"""Budget points and budget units: where along training a method is evaluated, and what reaching it cost.

A budget point is a position in a method's whole training schedule (all its stages one after the other), given in
`budget.unit`: optimizer steps, training images seen, or epochs (passes over the training images). Each point
becomes the optimizer step `T` at which training keeps a checkpoint (`<method>/points/step-<T>/`), which
`taxabench run` samples and evaluates on the validation split.

Every evaluation — at a point or of the final checkpoint — is reported on five budget axes, read back from the
method folder (`budget.json`, written by the training loop, and `loss.csv`):

- `steps`: optimizer steps `T` over the schedule;
- `images_seen`: `T` x the global batch (batch size x processes x gradient accumulation);
- `param_steps`: the sum over stages of (parameters trained in the stage) x (steps taken in it);
- `train_flops`: the sum over stages of (FLOPs of one optimizer step of the stage) x (steps taken in it). The FLOPs
  of a step are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` runs around the stage's first
  real optimizer step (forward and backward of the UNet and the condition modules, the frozen encoders on that
  step's inputs; the step's training images are VAE-encoded before counting when latents are cached, since then
  each image is encoded once per run, not once per step), times the number of processes;
- `wall_seconds`: the training seconds logged for steps 1..T in `loss.csv` (sampling and evaluation excluded;
  a resumed run keeps the seconds of the steps it did not redo).

The first four are counted (`COUNTED_AXES`): the same whenever the run is redone, so `metrics/all.csv` carries them
and a resumed run's table is byte-identical to an uninterrupted one's. Wall-clock time measures the machine, not
the run; it is kept in each evaluation's JSON (`"budget"`), where the report reads it.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from taxabench.errors import ConfigError
from taxabench.files import write_json
from taxabench.layout import point_label

BUDGET_FILE = "budget.json"
LOSS_LOG = "loss.csv"
COUNTED_AXES = ("steps", "images_seen", "param_steps", "train_flops")
WALL_SECONDS = "wall_seconds"
AXES = (*COUNTED_AXES, WALL_SECONDS)
FLOPS_METHOD = ("torch.utils.flop_counter.FlopCounterMode on a rehearsal of the first optimizer step of each "
                "stage (forward and backward, x processes), times the stage's steps")


@dataclass(frozen=True)
class BudgetPoint:
    label: str  # folder name, `step-<T>`
    steps: int  # optimizer steps over the whole schedule
    stage: int  # index of the stage the point falls in
    stage_step: int  # optimizer steps into that stage (1..stage steps)


def to_steps(value: float, unit: str, global_batch: int, n_train: int) -> int:
    """A budget in `unit` as optimizer steps (rounded up: the point is the first step that reaches it)."""
    if unit == "steps":
        return math.ceil(value)
    if unit == "images":
        return math.ceil(value / global_batch)
    if unit == "epochs":
        return math.ceil(value * n_train / global_batch)
    raise ConfigError(f"budget.unit: unknown unit {unit!r}")


def resolve_points(values, unit: str, stages, global_batch: int, n_train: int, method: str) -> list[BudgetPoint]:
    """The budget points of one method's schedule (`stages`: objects with `.index` and `.steps`), in order."""
    total = sum(s.steps for s in stages)
    found: dict[int, BudgetPoint] = {}
    for i, value in enumerate(values):
        steps = to_steps(value, unit, global_batch, n_train)
        if steps < 1 or steps > total:
            raise ConfigError(
                f"budget.points[{i}]: {value} {unit} is {steps} optimizer steps, outside method '{method}''s "
                f"schedule of {total} steps ({global_batch} images per step); lower it or train longer"
            )
        done = 0
        for stage in stages:
            if steps <= done + stage.steps:
                found[steps] = BudgetPoint(point_label(steps), steps, stage.index, steps - done)
                break
            done += stage.steps
    return [found[s] for s in sorted(found)]


def write_schedule(folder: Path, stages, trainable_params: dict[int, int], global_batch: int) -> None:
    """Start (or keep) `budget.json`: the stages, their trainable parameter counts and the global batch."""
    path = folder / BUDGET_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update({
        "global_batch": global_batch,
        "stages": [{"index": s.index, "steps": s.steps, "trainable_params": trainable_params[s.index],
                    "flops_per_step": _flops(record, s.index)} for s in stages],
        "flops_method": FLOPS_METHOD,
    })
    _write(path, record)


def record_flops(folder: Path, stage_index: int, flops: float) -> None:
    path = folder / BUDGET_FILE
    record = json.loads(path.read_text())
    for stage in record["stages"]:
        if stage["index"] == stage_index:
            stage["flops_per_step"] = flops
    _write(path, record)


def has_flops(folder: Path, stage_index: int) -> bool:
    path = folder / BUDGET_FILE
    return path.is_file() and _flops(json.loads(path.read_text()), stage_index) is not None


def axes(folder: Path, steps: int | None = None) -> dict[str, float]:
    """The five budget axes of a method folder after `steps` optimizer steps (None: its whole schedule)."""
    path = folder / BUDGET_FILE
    if not path.is_file():  # a method folder trained before budget accounting existed: the axes are unknown
        return {axis: math.nan for axis in AXES}
    record = json.loads(path.read_text())
    stages = record["stages"]
    total = sum(s["steps"] for s in stages)
    steps = total if steps is None else steps
    params = flops = 0.0
    done, in_stage = 0, {}
    for stage in stages:
        taken = max(0, min(stage["steps"], steps - done))
        in_stage[stage["index"]] = taken
        params += stage["trainable_params"] * taken
        flops = None if flops is None or (taken and stage["flops_per_step"] is None) else \
            flops + (stage["flops_per_step"] or 0) * taken
        done += stage["steps"]
    return {"steps": steps, "images_seen": steps * record["global_batch"], "param_steps": params,
            "train_flops": math.nan if flops is None else flops,
            "wall_seconds": round(_seconds(folder / LOSS_LOG, in_stage), 2)}


def _seconds(log: Path, in_stage: dict[int, int]) -> float:
    if not log.is_file():
        return math.nan
    with open(log, newline="") as handle:
        return sum(float(row["seconds"]) for row in csv.DictReader(handle)
                   if int(row["step"]) <= in_stage.get(int(row["stage"]), 0))


def _flops(record: dict, stage_index: int):
    return next((s.get("flops_per_step") for s in record.get("stages", []) if s["index"] == stage_index), None)


def _write(path: Path, record: dict) -> None:
    write_json(path, record, "budget")
