"""Nothing lost: `taxabench run` killed at counted points (optimizer steps, writes of each kind of run file) and
rerun with the same command ends with the bytes of an uninterrupted run — metrics/all.csv, every sample PNG, every
trained weight file — and leaves no temporary behind. The fast cases: a dead writer's temporary is removed by the
next write of its file; a run killed twice (mid-training, while saving its state). `nox -s faults` (marked slow):
issue 17's six-point chain, and the sweep — every kind of event a clean run passes, at its first, second and
middle occurrence, in three chains of kills; and real signals to a real run with busy workers (SIGKILL of the run's
process and of its group, SIGINT, SIGTERM), a second run of the same folder, one rank of a torchrun killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from faults import (
    ROOT,
    alive,
    differences,
    fault_config,
    final_bytes,
    kill_chains,
    kill_in_a_row,
    kill_then_finish,
    recorded_events,
    start_run,
    taxabench_run,
    wait_for_event,
    workers_of,
)

from taxabench.files import FAULT_ENV, FAULT_EXIT_CODE, write_bytes


def test_a_temporary_left_by_a_killed_writer_is_removed_when_the_file_is_written_again(tmp_path):
    """A process killed (`os._exit`, as `kill -9`) at the write event leaves its whole new version under its
    per-pid temporary name and the old file in place; the next write of that file removes the dead writer's
    temporary (they used to accumulate, one per kill) and a live writer's is left alone."""
    target = tmp_path / "table.csv"
    target.write_bytes(b"old")
    killed = subprocess.run(
        [sys.executable, "-c", "import sys; from taxabench.files import write_bytes; "
                               "write_bytes(sys.argv[1], b'new', 'table')", str(target)],
        env={**os.environ, "PYTHONPATH": str(ROOT), FAULT_ENV: "table:1"}, capture_output=True, text=True)
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr
    (left,) = tmp_path.glob(".table.csv.*.partial")
    assert left.read_bytes() == b"new" and target.read_bytes() == b"old"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        busy = tmp_path / f".table.csv.{live.pid}.partial"
        busy.write_bytes(b"being written")
        write_bytes(target, b"new", "table")
        live.kill()
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([busy.name, "table.csv"])


def test_a_folder_build_killed_midway_leaves_nothing_once_built_again(tmp_path):
    """Cache folders (tiny backbones, SynthTaxa worlds, synthclip) are built in a per-process hidden staging folder:
    a killed build's is removed by the next build of the same folder; a finished folder is kept (a concurrent build
    of the same cache is discarded); a folder that is not a finished build is never deleted."""
    from taxabench.errors import DamagedFileError
    from taxabench.files import building_folder

    target = tmp_path / "world"
    build = ("import sys; from taxabench.files import building_folder\n"
             "with building_folder(sys.argv[1], 'world', finished_by='spec.json') as staging:\n"
             "    (staging / 'spec.json').write_text('first')")
    killed = subprocess.run([sys.executable, "-c", build, str(target)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), FAULT_ENV: "world:1"})
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".world.") and left.name.endswith(".partial") and not target.exists()
    for text in ("second", "third"):
        with building_folder(target, "world", finished_by="spec.json") as staging:
            (staging / "spec.json").write_text(text)
    assert (target / "spec.json").read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["world"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(DamagedFileError, match=r"mine is damaged: it holds files but no spec.json; move it away"), \
            building_folder(mine, "world", finished_by="spec.json") as staging:
        (staging / "spec.json").write_text("built")
    assert (mine / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "world"]


# writes into $TAXABENCH_HOME, which the test session shares: the reference run makes them, the killed runs reuse
# them (kills while they are written: the two tests above)
SHARED_CACHE_EVENTS = {"features", "image-checks", "metric-model", "world", "backbone"}


@pytest.fixture(scope="module")
def reference(small_world, tiny_backbone, tmp_path_factory):
    """An uninterrupted run of flat-ldm (the method whose resume differed) and the events it passed, in order."""
    runs = tmp_path_factory.mktemp("reference")
    config_file = fault_config(small_world, runs, "steady", ["flat-ldm"])
    log = runs / "events.log"
    assert taxabench_run(config_file, log=log) == 0
    return final_bytes(runs / "steady"), recorded_events(log)


def check_chain(reference, small_world, tmp_path, chain: list[str]) -> None:
    expected, events = reference
    config_file = fault_config(small_world, tmp_path, "killed", ["flat-ldm"])
    counts = Counter(events)
    for point in chain:
        kind, _, nth = point.rpartition(":")
        assert counts[kind] >= int(nth), f"a clean run never passes {point}"
    kill_then_finish(config_file, chain)
    assert not differences(expected, final_bytes(tmp_path / "killed"))


def test_a_run_killed_mid_training_and_while_saving_its_state_ends_with_identical_bytes(reference, small_world,
                                                                                       tmp_path):
    """Killed after optimizer step 5 (a step past the checkpoint at 4, in the second epoch: the caches' root
    cause), then while the accelerate state of step 6 was written (complete under its `.partial` name); then
    finished."""
    check_chain(reference, small_world, tmp_path, ["train-step:5", "state:1"])


def test_a_run_restarted_from_its_first_step_after_its_flops_were_recorded_ends_with_identical_bytes(
        reference, small_world, tmp_path):
    """Killed after optimizer step 2 (the FLOPs of step 0 recorded, no checkpoint yet), then while the first
    checkpoint's step file was written (its state whole under `.partial`, so not taken); each restart begins at step
    0 without counting FLOPs again. The count used to run inside the real step 0 and `FlopCounterMode` changes the
    backward's rounding, so a restart that did not count trained on other numbers (the sweep's chains `first` and
    `second` failed on it)."""
    check_chain(reference, small_world, tmp_path, ["train-step:2", "state-step:1"])


@pytest.mark.slow
def test_a_run_killed_at_every_kind_of_point_in_a_row_ends_with_identical_bytes(reference, small_world, tmp_path):
    """Issue 17's sequence: killed mid-training, while an accelerate state was being written, while the stage
    folder was being written, during sampling, during evaluation and while the report was written; then finished."""
    check_chain(reference, small_world, tmp_path,
                ["train-step:5", "state:1", "stage:1", "sample:3", "metrics:1", "report:1"])


@pytest.mark.slow
@pytest.mark.parametrize("chain", ["first", "second", "middle"])
def test_every_kill_point_resumes_to_identical_bytes(reference, small_world, tmp_path, chain):
    """The sweep (`tests.faults.kill_chains`): every event kind a clean run passes, killed at its first, second and
    middle occurrence, one chain of kills per occurrence; the bytes at the end equal the uninterrupted run's."""
    expected, events = reference
    points = kill_chains(events)[chain]
    config_file = fault_config(small_world, tmp_path, "killed", ["flat-ldm"])
    killed, missed = kill_in_a_row(config_file, points)
    print(f"chain {chain}: killed at {' '.join(killed)}; not reached after a resume: {' '.join(missed) or 'none'}")
    found = differences(expected, final_bytes(tmp_path / "killed"))
    assert not found, f"chain {chain} ({' '.join(killed)}): {found[:5]}"
    if chain == "first":  # only writes of the session's shared caches, made by the reference run, are not passed again
        assert {point.rpartition(":")[0] for point in missed} <= SHARED_CACHE_EVENTS, missed


# ---------------------------------------------------------------------------------------------------------------
# One writer per run folder: real signals to a real run (issue 31)
# ---------------------------------------------------------------------------------------------------------------

PARALLEL_METHODS = ["flat-ldm", "sd-lora"]


@pytest.fixture(scope="module")
def parallel_reference(small_world, tiny_backbone, tmp_path_factory):
    """An uninterrupted run of two methods trained and sampled by two worker processes (`jobs: 2`)."""
    runs = tmp_path_factory.mktemp("parallel-reference")
    config_file = fault_config(small_world, runs, "steady", PARALLEL_METHODS, jobs=2)
    assert taxabench_run(config_file) == 0
    return final_bytes(runs / "steady")


def assert_dead_within_a_second(pids: list[int]) -> None:
    deadline = time.monotonic() + 1.0
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if alive(pid)], "workers outlived their run"


@pytest.mark.slow
@pytest.mark.parametrize(("event", "count", "group"), [("train-step", 3, False), ("sample", 2, False),
                                                       ("train-step", 5, True)])
def test_a_run_killed_with_its_workers_alive_leaves_none_and_resumes_to_identical_bytes(
        parallel_reference, small_world, tmp_path, event, count, group):
    """SIGKILL of the run's own process (a user's `kill -9`, the OOM killer), mid-training and mid-sampling, while
    two workers compute: within a second no worker is alive, so nothing writes into the folder the rerun uses; and
    SIGKILL of the whole process group (a scheduler's time limit). The same command then finishes with the bytes of
    an uninterrupted run."""
    config_file = fault_config(small_world, tmp_path, "killed", PARALLEL_METHODS, jobs=2)
    log = tmp_path / "events.log"
    process = start_run(config_file, log)
    wait_for_event(process, log, event, count)
    workers = workers_of(process.pid)
    assert workers, "no worker process to kill"
    if group:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        process.send_signal(signal.SIGKILL)
    process.wait()
    assert_dead_within_a_second(workers)
    assert taxabench_run(config_file) == 0
    assert not differences(parallel_reference, final_bytes(tmp_path / "killed"))


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "event", "step"), [
    (signal.SIGINT, 130, "train-step", "train/"), (signal.SIGTERM, 143, "sample", "sample/")])
def test_an_interrupted_run_says_what_stopped_and_how_to_resume_then_resumes(
        parallel_reference, small_world, tmp_path, signum, code, event, step):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) mid-training and SIGTERM mid-sampling: the run
    stops its workers, prints the interrupted steps and the command that resumes, and exits 130 / 143; that
    command ends with the uninterrupted run's bytes."""
    config_file = fault_config(small_world, tmp_path, "interrupted", PARALLEL_METHODS, jobs=2)
    log = tmp_path / "events.log"
    process = start_run(config_file, log)
    wait_for_event(process, log, event, 2)
    workers = workers_of(process.pid)
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == code, out[-3000:]
    said = " ".join(out.split())
    assert f"interrupted ({signal.Signals(signum).name}) during {step}" in said, said[-2000:]
    assert f"the same command resumes: taxabench run --config {config_file}" in said
    assert_dead_within_a_second(workers)
    assert taxabench_run(config_file) == 0
    assert not differences(parallel_reference, final_bytes(tmp_path / "interrupted"))


@pytest.mark.slow
@pytest.mark.parametrize("late", [False, True])
def test_a_second_run_of_the_same_folder_is_refused_and_the_first_is_unharmed(parallel_reference, small_world,
                                                                             tmp_path, late):
    """Two `taxabench run` of one config started together, or the second while the first evaluates: the second
    is refused with one line naming the first (pid, host, command), and the first ends as an undisturbed run."""
    config_file = fault_config(small_world, tmp_path, "twice", PARALLEL_METHODS, jobs=2)
    log = tmp_path / "events.log"
    first = start_run(config_file, log)
    wait_for_event(first, log, "metrics" if late else "layout", 1)
    second = subprocess.run([sys.executable, "-m", "taxabench", "run", "--config", str(config_file)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    said = " ".join(second.stdout.split())
    assert f"is in use by pid {first.pid} on " in said and f"taxabench run --config {config_file}" in said, said
    out, _ = first.communicate(timeout=900)
    assert first.returncode == 0, out[-3000:]
    assert not differences(parallel_reference, final_bytes(tmp_path / "twice"))


@pytest.mark.slow
def test_a_rank_killed_mid_training_under_torchrun_resumes_to_identical_bytes(small_world, tiny_backbone, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo, CPU): rank 1 dies after its 5th optimizer step (torchrun then stops rank
    0, which says so and exits 143); the same launch resumes and ends with the bytes of an uninterrupted
    two-process run."""
    from taxabench.files import FAULT_RANK_ENV

    launcher = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2"]
    expected_file = fault_config(small_world, tmp_path / "reference", "steady", ["flat-ldm"])
    steady = start_run(expected_file, tmp_path / "steady.log", launcher, OMP_NUM_THREADS="1")
    out, _ = steady.communicate(timeout=900)
    assert steady.returncode == 0, out[-3000:]

    config_file = fault_config(small_world, tmp_path / "resumed", "killed", ["flat-ldm"])
    killed = start_run(config_file, tmp_path / "killed.log", launcher, OMP_NUM_THREADS="1",
                       **{FAULT_ENV: "train-step:5", FAULT_RANK_ENV: "1"})
    out, _ = killed.communicate(timeout=900)
    assert killed.returncode != 0 and "interrupted (SIGTERM) during train/flat-ldm" in " ".join(out.split()), \
        out[-3000:]
    resumed = start_run(config_file, tmp_path / "resumed.log", launcher, OMP_NUM_THREADS="1")
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-3000:]
    assert not differences(final_bytes(tmp_path / "reference" / "steady"), final_bytes(tmp_path / "resumed" / "killed"))
