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
