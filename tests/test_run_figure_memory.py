"""The stage figure is skippable (without touching the samples) and never the reason a run stops; each step's peak memory is
recorded in steps.json."""

import json

import numpy as np
from conftest import experiment

from taxabench.run import _stage_figure, plan
from taxabench.steps import Ledger, Step, run_steps


class MainProcess:
    is_main_process = True


def test_switching_the_stage_figure_off_changes_no_sampling_step(tiny_world, tmp_path):
    config = experiment(tiny_world, tmp_path, methods=["taxadiffusion", "sd-lora"])

    def sample_fingerprints():
        return {s.name: s.fingerprint for s in plan(config, config.run_dir, show_progress=False)
                if s.name.startswith("sample/")}

    drawn = sample_fingerprints()
    config.sample.stage_figure = False
    assert sample_fingerprints() == drawn and drawn


def test_a_failing_stage_figure_warns_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("taxabench.run._stages", lambda layout, method, seed=None: 5)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("cannot allocate 17.8 GB")

    _stage_figure(None, "taxadiffusion", tmp_path, None, None, MainProcess(), out_of_memory)
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
