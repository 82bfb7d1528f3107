"""The stage figure is its own step, skippable and never the reason a run stops; each step's peak memory is
recorded in steps.json."""

import json

import numpy as np

from taxabench.run import _stage_figure, plan
from taxabench.steps import Ledger, Step, run_steps
from tests.conftest import experiment


class MainProcess:
    is_main_process = True


def test_the_stage_figure_step_is_planned_unless_switched_off(tiny_world, tmp_path):
    config = experiment(tiny_world, tmp_path, methods=["taxadiffusion", "sd-lora"])
    names = [step.name for step in plan(config, config.run_dir, show_progress=False)]
    assert names.index("figure/taxadiffusion") == names.index("sample/taxadiffusion") + 1
    config.sample.stage_figure = False
    skipped = plan(config, config.run_dir, show_progress=False)
    assert not [s for s in skipped if s.name.startswith("figure/")]
    sample_fps = {s.name: s.fingerprint for s in skipped if s.name.startswith("sample/")}
    config.sample.stage_figure = True  # switching the figure changes no sampling step
    assert sample_fps == {s.name: s.fingerprint for s in plan(config, config.run_dir, show_progress=False)
                          if s.name.startswith("sample/")}


def test_a_failing_stage_figure_warns_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("taxabench.run._stages", lambda run_dir, method: 5)

    def out_of_memory(*args):
        raise MemoryError("cannot allocate 17.8 GB")

    _stage_figure(None, "taxadiffusion", tmp_path, MainProcess(), out_of_memory)
    err = capsys.readouterr().err
    assert "the stage figure of taxadiffusion failed (MemoryError" in err and "stage_figure: false" in err


def test_steps_json_records_each_steps_own_peak_memory(tmp_path):
    held = []

    def big() -> None:
        block = np.ones(400 * 2**20 // 8)  # 400 MB, touched
        held.append(block.sum())

    def small() -> None:
        held.append(np.ones(10).sum())

    steps = [Step("big", "1", big, clean=lambda: None), Step("small", "2", small, clean=lambda: None)]
    run_steps(steps, Ledger(tmp_path / "steps.json"))
    entries = json.loads((tmp_path / "steps.json").read_text())
    assert entries["big"]["peak_rss_mb"] > entries["small"]["peak_rss_mb"] + 300  # reset between steps (Linux)
    assert "peak_rss_since" not in entries["small"]
