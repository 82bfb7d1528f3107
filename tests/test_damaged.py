"""Damaged or missing run files: one line naming the file and what to do, or made again when they are derived data
(feature caches, metrics files: a finished step whose outputs are gone runs again); a refused config leaves
config.yaml alone; run names validated."""

from __future__ import annotations

import gc
import json
import warnings

import numpy as np
import pytest

from taxabench.config import config_from_dict
from taxabench.errors import ConfigError, DamagedFileError
from taxabench.steps import Ledger, Step, fingerprint, run_steps


def test_a_corrupted_steps_json_is_one_line_naming_it(tmp_path):
    path = tmp_path / "steps.json"
    path.write_text('{"backbone": {"fingerprint": "ab')
    with pytest.raises(DamagedFileError, match=r"steps.json is damaged: it is not valid JSON .*delete it and rerun"):
        Ledger(path)


def test_a_finished_step_whose_outputs_are_gone_or_unreadable_runs_again(tmp_path):
    log = []
    output = tmp_path / "metrics" / "a.json"

    def action():
        log.append("eval")
        output.parent.mkdir(exist_ok=True)
        output.write_text("{}")

    steps = [Step("eval/a", fingerprint("a"), action, clean=lambda: None, outputs=(output,))]
    ledger = Ledger(tmp_path / "steps.json")
    run_steps(steps, ledger)
    run_steps(steps, ledger)
    assert log == ["eval"]
    output.unlink()
    run_steps(steps, ledger)
    output.write_text('{"measure')  # truncated
    run_steps(steps, ledger)
    assert log == ["eval", "eval", "eval"] and output.read_text() == "{}"


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no unclosed file left behind
def test_a_truncated_feature_cache_counts_as_absent(tmp_path, monkeypatch):
    from taxabench.metrics import cache

    monkeypatch.setenv("TAXABENCH_HOME", str(tmp_path))
    fields = {"extractor": "x", "split": "test"}
    path = cache.save_features("real", fields, {"embedding": np.ones((4, 3), dtype=np.float32)})
    assert cache.load_features("real", fields, 4)["embedding"].shape == (4, 3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load_features("real", fields, 4) is None
        gc.collect()


def test_real_feature_caches_are_keyed_by_file_contents_not_only_paths(tmp_path):
    from conftest import write_png

    from taxabench.metrics.cache import files_key

    images = [write_png(tmp_path / f"{i}.png") for i in range(3)]
    before = files_key(images)
    assert files_key(images) == before
    write_png(images[1], colour=(1, 2, 3), size=(30, 20))  # replaced in place under the same name
    assert files_key(images) != before


def test_a_truncated_stage_file_is_one_line_naming_it_and_the_fix(small_world, tiny_backbone, tmp_path):
    from conftest import experiment

    from taxabench.train import load_trained, method_dir, train_method

    config = experiment(small_world, tmp_path, data={"dataset": "csv"}, train={"steps_per_stage": 1},
                        method_options={"flat-ldm": {"steps": 1}})
    train_method(config, "flat-ldm", show_progress=False)
    weights = next((method_dir(config.run_dir, "flat-ldm") / "stage-0").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DamagedFileError, match=r"stage-0 is damaged: its weights cannot be read .*"
                                               r"--force train/flat-ldm"):
        load_trained(config.run_dir, "flat-ldm")


def test_a_refused_config_leaves_config_yaml_alone(tiny_world, tmp_path):
    from conftest import experiment

    from taxabench.errors import TaxabenchError
    from taxabench.run import plan, run

    config = experiment(tiny_world, tmp_path, methods=["sd-lora"])
    run_dir = config.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("the config of the finished run\n")
    steps = plan(config, run_dir, show_progress=False)
    (run_dir / "steps.json").write_text(json.dumps({steps[0].name: {"fingerprint": "another", "seconds": 1}}))
    with pytest.raises(TaxabenchError, match=f"--force {steps[0].name}"):
        run(config, show_progress=False)
    assert (run_dir / "config.yaml").read_text() == "the config of the finished run\n"


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", "a\\b"])
def test_run_names_that_are_not_plain_folder_names_are_refused(name, tmp_path):
    with pytest.raises(ConfigError, match="name: must be a plain folder name"):
        config_from_dict({"name": name, "runs_dir": str(tmp_path)})


@pytest.mark.parametrize("key", ["vae_steps", "unet_pretrain_steps"])
def test_zero_step_tiny_backbones_are_refused_at_validation(key):
    with pytest.raises(ConfigError, match=r"backbone.tiny: vae_steps and unet_pretrain_steps must be at least 1"):
        config_from_dict({"backbone": {"tiny": {key: 0}}})
