"""One writer per run folder (the fast cases): the run folder's lock between two real processes and its take-over
from a dead holder; a worker that dies with the run that started it; the line an interrupted command prints and its
exit code; an `all.csv` that no longer equals what its evaluations wrote is refused; `run` says how many species are
filed under several lineages. The kill-a-real-run cases are in tests/test_faults.py (`nox -s faults`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from faults import ROOT, alive

from taxabench.errors import DamagedFileError
from taxabench.lock import RunFolderLocked, holder, run_folder_lock

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

HOLD = """
import sys, time
from taxabench.lock import run_folder_lock
with run_folder_lock(sys.argv[1], command="taxabench run --config held.yaml"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process holding `run_dir`'s lock (it says so once it does)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    first = hold_lock(run_dir)
    try:
        second = subprocess.run([sys.executable, "-m", "taxabench", "report", "--run", str(run_dir)], env=ENV,
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert second.returncode == 1
        lines = second.stdout.strip().splitlines()
        assert len(lines) == 1, second.stdout
        assert f"in use by pid {first.pid} on " in lines[0] and "taxabench run --config held.yaml" in lines[0]
        with pytest.raises(RunFolderLocked, match=f"pid {first.pid}"), run_folder_lock(run_dir):
            pass
    finally:
        first.kill()
        first.wait()


def test_the_lock_of_a_killed_holder_is_taken_over_and_said_so(tmp_path):
    run_dir = tmp_path / "run"
    first = hold_lock(run_dir)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert holder(run_dir)["pid"] == first.pid  # its record stays behind; the kernel released the lock
    said = []
    with run_folder_lock(run_dir, command="taxabench run --config again.yaml", say=said.append):
        assert holder(run_dir)["pid"] == os.getpid()
        with run_folder_lock(run_dir):  # re-entrant within one process
            pass
    assert len(said) == 1 and f"from pid {first.pid}" in said[0] and "(no longer running)" in said[0]
    with run_folder_lock(run_dir, say=said.append):  # released normally: nothing to take over
        pass
    assert len(said) == 1


PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from taxabench.run import die_with_parent

def child_pid():
    return os.getpid()

def sleep():
    time.sleep(120)

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))
    print(pool.submit(child_pid).result(), flush=True)
    pool.submit(sleep)
    time.sleep(120)
"""


def test_a_worker_dies_within_a_second_when_its_run_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], env=ENV, stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 1.0
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker), f"worker {worker} outlived its killed parent"


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupted_command_names_the_step_and_the_command_that_resumes(monkeypatch, capsys, tmp_path, signum,
                                                                            code, name):
    import taxabench.run as run_module
    from taxabench.cli import main
    from taxabench.steps import in_progress

    def interrupted_run(config, force=None, console=None, show_progress=True):
        in_progress.set(["train/flat-ldm"])
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the signal arrives here

    monkeypatch.setattr(run_module, "run", interrupted_run)
    config_file = ROOT / "configs" / "demo.yaml"
    assert main(["run", "--config", str(config_file), "--set", "train.batch_size=4"]) == code
    out = " ".join(capsys.readouterr().out.split())
    assert f"interrupted ({name}) during train/flat-ldm" in out
    assert f"the same command resumes: taxabench run --config {config_file} --set train.batch_size=4" in out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() leaves the handler as it found it


def evaluation_json(method: str, rows: list[dict]) -> dict:
    """What `evaluate` writes for `rows` (the table's rows of one evaluation, without method, seed and point)."""
    return {"method": method, "seed": 0, "point": "final",
            "measurements": [{k: v for k, v in row.items() if k not in ("method", "seed", "point")} for row in rows]}


def small_table() -> pd.DataFrame:
    from taxabench.metrics.evaluation import CSV_COLUMNS

    rows = [{"method": "flat-ldm", "metric": "fd", "name": "FD (synthclip)", "scope": scope, "value": value,
             "ci_low": value - 0.1, "ci_high": value + 0.1, "n_real": 8, "n_generated": 8, "n_taxa": 4,
             "extractor": "synthclip", "weights": "synthclip@sha256:0123", "higher_is_better": False,
             "protocol": "images=center-crop@64", "seed": 0, "point": "final", "split": "test",
             "steps": 10, "images_seen": 40, "param_steps": 100, "train_flops": 1e9}
            for scope, value in (("overall", 1.2346), ("species", 2.5))]
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def test_a_table_value_no_evaluation_produced_is_refused(tmp_path):
    from taxabench.metrics.evaluation import check_table, write_table

    path = tmp_path / "metrics" / "all.csv"
    table = small_table()
    sources = {tmp_path / "metrics" / "flat-ldm.json": evaluation_json("flat-ldm", table.to_dict("records"))}
    write_table(path, table)
    check_table(pd.read_csv(path), path, sources)  # as written: accepted
    edited = path.read_text().replace("1.2346", "123.46")
    path.write_text(edited)
    with pytest.raises(DamagedFileError, match=r"all.csv is damaged: its bytes are not those taxabench wrote"):
        check_table(pd.read_csv(path), path, sources)
    (tmp_path / "metrics" / "all.csv.sha256").unlink()  # no digest (an older folder): the JSONs still say no
    with pytest.raises(DamagedFileError, match=r"line 2 \(flat-ldm, fd, overall, seed 0, final\) has value 123.46, "
                                               r"but .*flat-ldm.json says 1.2346; delete it and rerun"):
        check_table(pd.read_csv(path), path, sources)
    renamed = edited.replace("123.46", "1.2346").replace(",species,", ",genus,")
    path.write_text(renamed)
    with pytest.raises(DamagedFileError, match=r"line 3 \(flat-ldm, fd, genus, .*is in no measurement of"):
        check_table(pd.read_csv(path), path, sources)


def test_run_says_how_many_species_are_filed_under_several_lineages(tmp_path):
    from conftest import experiment, write_png
    from rich.console import Console

    from taxabench.run import plan

    rows = []
    for species, genus in (("alba", "Parus"), ("nigra", "Parus"), ("rubra", "Corvus"), ("alba", "Corvus")):
        for index in range(2):
            image = write_png(tmp_path / "data" / f"{genus}-{species}-{index}.png")
            rows.append({"image": image.name, "class": "Aves", "order": "Passeriformes", "family": "Paridae",
                         "genus": genus, "species": species, "split": "train" if index == 0 else "test"})
    pd.DataFrame(rows).to_csv(tmp_path / "data" / "metadata.csv", index=False)
    config = experiment(tmp_path / "data", tmp_path / "runs", data={"dataset": "csv", "root": str(tmp_path / "data")},
                        methods=["flat-ldm"])
    console = Console(record=True, width=200)
    plan(config, config.run_dir, show_progress=False, console=console)
    said = console.export_text()
    assert "1 species filed under several lineages (data.on_lineage_conflict: keep): alba" in said, said
