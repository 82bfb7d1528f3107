"""Nothing lost: `taxabench run` killed at counted points (optimizer steps, writes of each kind of run file) and
rerun with the same command ends with the bytes of an uninterrupted run — metrics/all.csv, every sample PNG, every
trained weight file (all.csv without its wall-clock column). The fast case kills a run twice (mid-training, while
saving its state); `nox -s faults` (marked slow) chains every kill point of issue 17 in one run and kills at every
kind of event a clean run passes."""

from __future__ import annotations

import pytest
from faults import (
    differences,
    fault_config,
    final_bytes,
    kill_points,
    kill_then_finish,
    recorded_events,
    taxabench_run,
)


@pytest.fixture(scope="module")
def reference(small_world, tiny_backbone, tmp_path_factory):
    """An uninterrupted run of flat-ldm (the method whose resume differed) and the events it passed."""
    runs = tmp_path_factory.mktemp("reference")
    config_file = fault_config(small_world, runs, "steady", ["flat-ldm"])
    log = runs / "events.log"
    assert taxabench_run(config_file, log=log) == 0
    return final_bytes(runs / "steady"), recorded_events(log)


def check_chain(reference, small_world, tmp_path, chain: list[str]) -> None:
    expected, events = reference
    config_file = fault_config(small_world, tmp_path, "killed", ["flat-ldm"])
    for point in chain:
        assert events[point.split(":")[0]] >= int(point.split(":")[1]), f"a clean run never passes {point}"
    kill_then_finish(config_file, chain)
    assert not differences(expected, final_bytes(tmp_path / "killed"))


def test_a_run_killed_mid_training_and_while_saving_its_state_ends_with_identical_bytes(reference, small_world,
                                                                                       tmp_path):
    """Killed after optimizer step 5 (a step past the checkpoint at 4, in the second epoch: the caches' root
    cause), then while the accelerate state of step 6 was written (complete under its `.partial` name); then
    finished."""
    check_chain(reference, small_world, tmp_path, ["train-step:5", "state:1"])


@pytest.mark.slow
def test_a_run_killed_at_every_kind_of_point_in_a_row_ends_with_identical_bytes(reference, small_world, tmp_path):
    """Issue 17's sequence: killed mid-training, while an accelerate state was being written, while the stage
    folder was being written, during sampling, during evaluation and while the report was written; then finished."""
    check_chain(reference, small_world, tmp_path,
                ["train-step:5", "state:1", "stage:1", "sample:3", "metrics:1", "report:1"])


@pytest.mark.slow
def test_every_kill_point_resumes_to_identical_bytes(reference, small_world, tmp_path):
    """The sweep: each event kind a clean run passes, killed at its first, second, middle and last occurrence."""
    expected, events = reference
    failures = []
    for index, point in enumerate(kill_points(events)):
        config_file = fault_config(small_world, tmp_path / str(index), "killed", ["flat-ldm"])
        kill_then_finish(config_file, [point])
        found = differences(expected, final_bytes(tmp_path / str(index) / "killed"))
        if found:
            failures.append(f"{point}: {found[:3]}")
    assert not failures, "\n".join(failures)
