import json

from taxabench.cli import main


def test_list_shows_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "synthtaxa" in out and "csv" in out


def test_synth_then_stats_json(tmp_path, capsys):
    spec_root = tmp_path / "world"
    assert main(["data", "synth", "--out", str(spec_root), "--preset", "tiny", "--seed", "3"]) == 0
    capsys.readouterr()
    assert main(["data", "stats", "--dataset", "synthtaxa", "--root", str(spec_root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {"images", "species", "per_rank", "skipped"} <= set(stats)
    assert stats["per_rank"]["species"] == stats["species"] == 32
    assert main(["data", "stats", "--dataset", "synthtaxa", "--root", str(spec_root), "--split", "test",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 32 * 8


def test_errors_are_one_line_and_exit_1(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  imagesize: 64\n")
    assert main(["data", "stats", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "error:" in out and "unknown key 'imagesize'" in out and "Traceback" not in out
    assert main(["data", "stats"]) == 1
    assert main(["data", "stats", "--dataset", "nope", "--root", str(tmp_path)]) == 1
    assert "unknown dataset 'nope'" in capsys.readouterr().out


def test_debug_shows_the_traceback(tmp_path):
    import pytest

    from taxabench.errors import TaxabenchError

    with pytest.raises(TaxabenchError):
        main(["--debug", "data", "stats", "--dataset", "nope", "--root", str(tmp_path)])


def test_usage_errors_exit_2(capsys):
    assert main(["data", "synth"]) == 2
    assert "--out" in capsys.readouterr().err


def test_version(capsys):
    from taxabench import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"taxabench {__version__}"


def test_config_list_and_show_the_shipped_configs(capsys, tmp_path):
    from taxabench.config import load_config

    assert main(["config", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("demo", "fishnet", "synthtaxa", "inat2021"))
    assert main(["config", "show", "fishnet"]) == 0
    copied = tmp_path / "my.yaml"
    copied.write_text(capsys.readouterr().out)
    assert load_config(copied).name == "fishnet"
    assert main(["config", "show", "fishnt"]) == 1
    assert "did you mean 'fishnet'" in capsys.readouterr().out


def test_backbone_tiny_takes_config_and_deprecated_data(tmp_path, capsys, monkeypatch):
    from taxabench import cli
    from taxabench.errors import TaxabenchError

    calls = []

    def experiment_config(path, overrides):
        calls.append(path)
        raise TaxabenchError("stop here: the option reached the config loader")

    monkeypatch.setattr(cli, "experiment_config", experiment_config)
    config = tmp_path / "c.yaml"
    assert main(["backbone", "tiny", "--config", str(config)]) == 1
    assert main(["backbone", "tiny", "--data", str(config)]) == 1
    assert calls == [config, config]
    assert "--data is deprecated; use --config" in capsys.readouterr().err
    assert main(["backbone", "tiny", "--config", str(config), "--data", str(config)]) == 1
    assert main(["backbone", "tiny"]) == 1
    assert calls == [config, config]


def test_help_cites_no_file_users_do_not_have():
    from pathlib import Path

    import taxabench

    package = Path(taxabench.__file__).parent
    for path in [*package.rglob("*.py"), *package.rglob("*.yaml")]:
        text = path.read_text()
        assert "DESIGN.md" not in text and "../shared" not in text, path


def test_weights_prints_what_users_copy_in_full_and_generates_no_world(tmp_path, capsys, monkeypatch):
    from taxabench import cli

    monkeypatch.setenv("TAXABENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(cli.console, "width", 80)
    assert main(["weights", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"extractor", "component", "use", "found", "where", "blocks_the_run"} <= set(rows[0])
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    lines = out.splitlines()
    for number, row in enumerate(rows, start=1):  # each row's path or fix, whole, on one line of its own
        assert f"[{number}] {row['extractor']} ({row['component']}): {row['where']}" in lines
    inception = next(row["where"] for row in rows if row["extractor"] == "inception")
    assert "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth" \
        in inception and "$TAXABENCH_INCEPTION_WEIGHTS" in inception
    synthclip = next(row for row in rows if row["extractor"] == "synthclip")
    assert (synthclip["found"], synthclip["use"]) == (False, "built")
    assert "not generated yet" in synthclip["where"]
    assert not (tmp_path / "home" / "synthtaxa").exists()  # no SynthTaxa world was generated to fill the table


def test_weights_json_keeps_stdout_json_when_the_run_would_fail(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TAXABENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    config = tmp_path / "c.yaml"
    config.write_text("backbone: {source: stable-diffusion-v1-5/stable-diffusion-v1-5}\n")
    assert main(["weights", "--config", str(config), "--json"]) == 1
    captured = capsys.readouterr()
    backbone = json.loads(captured.out)[0]
    assert (backbone["extractor"], backbone["found"], backbone["blocks_the_run"]) == ("backbone", False, True)
    assert "weights the run needs are missing: backbone" in captured.err
