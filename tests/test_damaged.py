"""Damaged or missing run files: one line naming the file and what to do, or rebuilt when they are derived data
(feature caches, metrics/all.csv, the report); a refused config leaves config.yaml alone; run names validated."""

from __future__ import annotations

import gc
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from taxabench.config import config_from_dict
from taxabench.errors import ConfigError, DamagedFileError
from taxabench.steps import Ledger, Step, fingerprint, run_steps

REPORTS = Path(__file__).parents[1] / "reports"


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


@pytest.mark.parametrize("run", ["demo", "synthtaxa"])
def test_all_csv_is_rebuilt_from_the_per_method_jsons_byte_for_byte(run, tmp_path):
    from taxabench.metrics.evaluation import rebuild_table, table_methods

    source = REPORTS / run / "metrics"
    if not (source / "all.csv").is_file():
        pytest.skip(f"reports/{run} has no metrics")
    shutil.copytree(source, tmp_path / "metrics")
    expected = (source / "all.csv").read_bytes()
    methods = table_methods(source / "all.csv")
    (tmp_path / "metrics" / "all.csv").unlink()
    assert rebuild_table(tmp_path, methods).read_bytes() == expected


def test_the_report_rebuilds_a_deleted_all_csv(tmp_path):
    from taxabench.report import write_report

    source = REPORTS / "demo"
    if not (source / "metrics" / "all.csv").is_file():
        pytest.skip("reports/demo has no metrics")
    shutil.copytree(source / "metrics", tmp_path / "metrics")
    (tmp_path / "metrics" / "all.csv").unlink()
    assert write_report(tmp_path, figures=False).is_file()
    assert (tmp_path / "metrics" / "all.csv").is_file()


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
    from taxabench.metrics.cache import files_key
    from tests.conftest import write_png

    images = [write_png(tmp_path / f"{i}.png") for i in range(3)]
    before = files_key(images)
    assert files_key(images) == before
    write_png(images[1], colour=(1, 2, 3), size=(30, 20))  # replaced in place under the same name
    assert files_key(images) != before


def test_a_truncated_stage_file_is_one_line_naming_it_and_the_fix(small_world, tiny_backbone, tmp_path):
    from taxabench.train import load_trained, method_dir, train_method
    from tests.conftest import experiment

    config = experiment(small_world, tmp_path, data={"dataset": "csv"}, train={"steps_per_stage": 1},
                        method_options={"flat-ldm": {"steps": 1}})
    train_method(config, "flat-ldm", show_progress=False)
    weights = next((method_dir(config.run_dir, "flat-ldm") / "stage-0").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DamagedFileError, match=r"stage-0 is damaged: its weights cannot be read .*"
                                               r"--force train/flat-ldm"):
        load_trained(config.run_dir, "flat-ldm")


def test_a_refused_config_leaves_config_yaml_alone(tiny_world, tmp_path):
    from taxabench.errors import TaxabenchError
    from taxabench.run import plan, run
    from tests.conftest import experiment

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


def test_all_csv_follows_the_evaluation_order_and_the_latest_ceiling(tmp_path):
    """all.csv from the JSONs: a re-evaluated method moves last, and its ceiling rows replace those it computed."""
    import pandas as pd

    from taxabench.metrics.evaluation import CEILING_METHOD, CSV_COLUMNS, rebuild_table, write_csv_rows

    def entry(metric, value, subject="generated"):
        row = {key: 1 for key in CSV_COLUMNS if key not in ("method", "protocol")}
        return {**row, "metric": metric, "value": value, "protocol": {"images": "center-crop@64"}, "subject": subject}

    folder = tmp_path / "metrics"
    folder.mkdir()
    reports = {"a": [entry("fd", 1.0), entry("top1", 50.0, "real")], "b": [entry("fd", 2.0), entry("top1", 60.0, "real")]}
    for name, entries in reports.items():
        (folder / f"{name}.json").write_text(json.dumps({"method": name, "measurements": entries}))
    table_path = folder / "all.csv"
    for name in ("a", "b", "a"):
        write_csv_rows(table_path, name)
    table = pd.read_csv(table_path)
    assert list(table["method"]) == ["b", "a", CEILING_METHOD] and list(table["value"]) == [2.0, 1.0, 50.0]
    written = table_path.read_bytes()
    assert rebuild_table(tmp_path, ["b", "a"]).read_bytes() == written
