"""The run folder's layout: one module owns every path; old runs stay readable, newer ones are refused clearly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from taxabench.errors import TaxabenchError
from taxabench.layout import LAYOUT_VERSION, RunLayout, point_label


def test_single_seed_paths_are_those_of_layout_1(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.checkpoints("taxadiffusion") == tmp_path / "checkpoints" / "taxadiffusion"
    assert layout.samples("taxadiffusion+cfg") == tmp_path / "samples" / "taxadiffusion+cfg"
    assert layout.metrics_json("sd-lora") == tmp_path / "metrics" / "sd-lora.json"
    assert layout.all_csv == tmp_path / "metrics" / "all.csv"


def test_seed_and_budget_point_axes_do_not_collide(tmp_path):
    layout = RunLayout(tmp_path)
    point = point_label(300)
    paths = {layout.checkpoints("flat-ldm", 0), layout.checkpoints("flat-ldm", 1),
             layout.samples("flat-ldm", 0), layout.samples("flat-ldm", 1), layout.samples("flat-ldm", 1, point),
             layout.samples("flat-ldm", None, point), layout.metrics_json("flat-ldm", 1, point),
             layout.metrics_json("flat-ldm", 1), layout.metrics_json("flat-ldm")}
    assert len(paths) == 9
    assert layout.samples("flat-ldm", 1, point) == tmp_path / "along" / "seed-1" / "step-000300" / "samples" / "flat-ldm"


def test_a_run_without_a_layout_file_is_read_as_layout_1_and_a_newer_one_is_refused(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.version() == 1
    layout.check_readable()
    layout.mark()
    assert json.loads(layout.layout_file.read_text()) == {"layout": LAYOUT_VERSION}
    layout.layout_file.write_text(json.dumps({"layout": LAYOUT_VERSION + 1}))
    with pytest.raises(TaxabenchError, match=f"run layout {LAYOUT_VERSION + 1}.*upgrade taxabench"):
        layout.check_readable()
    from taxabench.report import write_report

    with pytest.raises(TaxabenchError, match="upgrade taxabench"):
        write_report(tmp_path)


def test_no_import_circle_between_config_sampling_training_and_metrics():
    """Sampling reads checkpoints and writes sample metadata without the training loop or the metrics package;
    config validation does not import the metrics package."""
    code = (
        "import sys, taxabench.config\n"
        "assert not [m for m in sys.modules if m.startswith('taxabench.metrics')], 'config imports metrics'\n"
        "import taxabench.sample\n"
        "bad = [m for m in sys.modules if m.startswith('taxabench.metrics') or m == 'taxabench.train']\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_unknown_metric_is_a_config_error_naming_the_key(tmp_path):
    from taxabench.config import ConfigError, config_from_dict
    from taxabench.metrics.evaluation import check_eval_names

    config = config_from_dict({"eval": {"metrics": ["fd", "fdd"]}})  # the config module only checks the shape
    with pytest.raises(ConfigError, match=r"eval.metrics\[1\].*'fdd'.*did you mean 'fd'"):
        check_eval_names(config)
