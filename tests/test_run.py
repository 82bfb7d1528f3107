"""`taxabench run`: one command from config to report; a killed run, rerun, ends with the same numbers."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import experiment, taxabench_on_two_processes
from faults import Killed, assert_same_table, kill_after_call, kill_after_step

from taxabench.errors import TaxabenchError
from taxabench.run import plan, run, sample_entries

VALUE_COLUMNS = ["method", "metric", "scope", "value", "ci_low", "ci_high", "n_real", "n_generated", "n_taxa"]


def run_config(world: Path, runs_dir: Path, name: str):
    """Two methods (one with a guidance-ablation variant), tiny budgets, a quickly built synthclip."""
    config = experiment(
        world, runs_dir,
        data={"species_subset": {"mode": "first", "n": 6}},
        methods=["taxadiffusion", "sd-lora"],
        sample={"guidance_ablation": ["cfg"], "images_per_taxon": 2},
        eval={"synthclip": {"steps": 30}, "bootstrap": 50, "bootstrap_set_metrics": 20},
    )
    from dataclasses import replace

    return replace(config, name=name)


@pytest.fixture(scope="module")
def finished_run(tiny_world, tiny_backbone, tmp_path_factory):
    """An uninterrupted run: the reference the resumed runs must equal."""
    runs = tmp_path_factory.mktemp("runs")
    config = run_config(tiny_world, runs, "straight")
    report = run(config, show_progress=False)
    return config, report


def test_run_writes_every_output_and_a_report(finished_run):
    config, report = finished_run
    run_dir = config.run_dir
    assert report == run_dir / "report" / "README.md" and report.is_file()
    assert [e.name for e in sample_entries(config)] == ["taxadiffusion", "sd-lora", "taxadiffusion+cfg"]
    for name in ("taxadiffusion", "sd-lora", "taxadiffusion+cfg"):
        assert (run_dir / "samples" / name / "metadata.jsonl").is_file()
        assert (run_dir / "metrics" / f"{name}.json").is_file()
    table = pd.read_csv(run_dir / "metrics" / "all.csv")
    assert set(table["method"]) == {"taxadiffusion", "sd-lora", "taxadiffusion+cfg", "real-images"}
    text = report.read_text()
    assert "## Main table" in text and "## Ablations" in text and "`taxadiffusion+cfg`" in text
    assert "## Across progressive stages" in text and (run_dir / "report" / "stages.png").is_file()
    assert not (run_dir / "samples" / "sd-lora" / "stages.png").exists()  # one stage: nothing to show
    assert (run_dir / "config.yaml").is_file() and (run_dir / "provenance.json").is_file()
    steps = json.loads((run_dir / "steps.json").read_text())
    assert all(entry["peak_rss_mb"] > 0 for entry in steps.values())
    assert "peak memory (MB)" in text


def test_a_guidance_ablation_can_name_its_method():
    """`<method>+<kind>` samples that method alone with the kind; a plain kind every method that has it besides its
    default; a method asked for a kind it lacks (or its default) is an error naming the entry."""
    from taxabench.config import config_from_dict

    config = config_from_dict({"name": "x", "methods": ["taxadiffusion", "taxadiffusion-joint", "flat-ldm"],
                               "sample": {"guidance_ablation": ["taxadiffusion+cfg", "vanilla-cfg"]}})
    assert [e.name for e in sample_entries(config)] == [
        "taxadiffusion", "taxadiffusion-joint", "flat-ldm", "taxadiffusion+cfg", "taxadiffusion+vanilla-cfg",
        "taxadiffusion-joint+vanilla-cfg"]
    for asked in ("flat-ldm+vanilla-cfg", "flat-ldm+cfg"):  # a kind it lacks; its default
        config = config_from_dict({"name": "x", "methods": ["flat-ldm"], "sample": {"guidance_ablation": [asked]}})
        with pytest.raises(TaxabenchError, match=re.escape(f"sample.guidance_ablation[0]: '{asked}', but flat-ldm "
                                                           "samples with cfg, none (default cfg)")):
            sample_entries(config)


@pytest.mark.parametrize("kill_at", ["train/sd-lora", "inside sampling", "eval/sd-lora"])
def test_a_killed_run_resumes_to_the_same_metrics(finished_run, tiny_world, tmp_path, monkeypatch, kill_at):
    import taxabench.sample as sample_module

    reference, _ = finished_run
    config = run_config(tiny_world, tmp_path, "killed")
    with monkeypatch.context() as patch:
        if kill_at == "inside sampling":  # the process dies after the 5th image of the run
            kill_after_call(patch, sample_module, "_write_png", 5)
        else:  # the step's work is done, then the process dies before the ledger records it
            kill_after_step(patch, kill_at)
        with pytest.raises(Killed):
            run(config, show_progress=False)
    run(config, show_progress=False)
    assert_same_table(reference.run_dir, config.run_dir)


def test_a_changed_config_is_refused_and_force_redoes_the_step(finished_run, tiny_world, tmp_path):
    import shutil
    from dataclasses import replace

    reference, _ = finished_run
    config = run_config(tiny_world, tmp_path, "changed")
    shutil.copytree(reference.run_dir, config.run_dir)  # a finished run, moved: its steps are all done

    changed = replace(config, sample=replace(config.sample, guidance_scale=3.0))
    with pytest.raises(TaxabenchError, match=r"step 'sample/taxadiffusion' .* --force sample/taxadiffusion"):
        run(changed, show_progress=False)
    run(changed, force=["sample"], show_progress=False)
    import json

    line = json.loads((changed.run_dir / "samples" / "sd-lora" / "metadata.jsonl").read_text().splitlines()[0])
    assert line["guidance_scale"] == 3.0


def test_a_deleted_or_damaged_sample_image_is_drawn_again_with_its_bytes(finished_run, tiny_world, tmp_path):
    """A finished sampling whose metadata lists an image that is gone or does not decode runs again: that image comes
    back with the bytes it had, and the evaluation (its images unchanged) is not redone."""
    import shutil

    reference, _ = finished_run
    config = run_config(tiny_world, tmp_path, "damaged")
    shutil.copytree(reference.run_dir, config.run_dir)
    folder = config.run_dir / "samples" / "sd-lora"
    deleted, truncated = sorted(folder.glob("*/*.png"))[:2]
    expected = {path: path.read_bytes() for path in (deleted, truncated)}
    deleted.unlink()
    truncated.write_bytes(expected[truncated][: len(expected[truncated]) // 2])
    steps = json.loads((config.run_dir / "steps.json").read_text())
    run(config, show_progress=False)
    assert {path: path.read_bytes() for path in expected} == expected
    after = json.loads((config.run_dir / "steps.json").read_text())
    assert after["eval/sd-lora"] == steps["eval/sd-lora"] and after["sample/taxadiffusion"] == steps["sample/taxadiffusion"]
    assert_same_table(reference.run_dir, config.run_dir)


def test_a_report_never_shows_a_value_edited_into_all_csv(finished_run, tiny_world, tmp_path, capsys):
    """A hand-edited all.csv is refused with one line naming it; deleting it and rerunning writes every row again
    (probe and evaluations alike), in the order of the uninterrupted run."""
    import shutil

    from taxabench.cli import main

    reference, _ = finished_run
    config = run_config(tiny_world, tmp_path, "edited")
    shutil.copytree(reference.run_dir, config.run_dir)
    table = config.run_dir / "metrics" / "all.csv"
    lines = table.read_text().splitlines()
    fields = lines[1].split(",")
    fields[4] = "123.46"  # the value column of the first row
    table.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    assert main(["report", "--run", str(config.run_dir)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "metrics/all.csv is damaged: its bytes are not those taxabench wrote" in out and "123.46" not in \
        (config.run_dir / "report" / "README.md").read_text()
    table.unlink()
    run(config, show_progress=False)
    assert_same_table(reference.run_dir, config.run_dir)


def test_unknown_methods_fail_before_any_work(tiny_world, tmp_path):
    config = experiment(tiny_world, tmp_path, methods=["taxadifusion"])
    with pytest.raises(TaxabenchError, match="unknown method 'taxadifusion'.*did you mean 'taxadiffusion'"):
        plan(config, config.run_dir)
    assert not (config.run_dir / "steps.json").exists()


@pytest.mark.slow
def test_two_processes_sample_and_evaluate_to_the_same_metrics(finished_run, tiny_world, tmp_path):
    """`torchrun --nproc_per_node 2 -m taxabench run` (gloo on CPU) resuming a run whose methods are trained:
    sampling and evaluation split across two processes give exactly the one-process numbers.
    (Training across processes is tested in test_train.py.)"""
    import json
    import shutil

    reference, _ = finished_run
    config = run_config(tiny_world, tmp_path, "two-processes")
    shutil.copytree(reference.run_dir, config.run_dir)
    for folder in ("samples", "metrics", "report"):
        shutil.rmtree(config.run_dir / folder)
    ledger = json.loads((config.run_dir / "steps.json").read_text())
    kept = {name: entry for name, entry in ledger.items() if name.split("/")[0] in ("backbone", "metric-models", "train")}
    (config.run_dir / "steps.json").write_text(json.dumps(kept))
    config_file = tmp_path / "two.yaml"
    config_file.write_text(config.to_yaml())
    taxabench_on_two_processes("run", config_file, cwd=tmp_path, OMP_NUM_THREADS="1")
    two = pd.read_csv(config.run_dir / "metrics" / "all.csv")[VALUE_COLUMNS]
    one = pd.read_csv(reference.run_dir / "metrics" / "all.csv")[VALUE_COLUMNS]
    key = ["method", "metric", "scope"]
    pd.testing.assert_frame_equal(two.sort_values(key).reset_index(drop=True),
                                  one.sort_values(key).reset_index(drop=True), rtol=1e-8)
    assert '"processes": 2' in (config.run_dir / "provenance.json").read_text()
