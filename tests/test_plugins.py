"""Plug-ins: a package registers datasets, methods, metrics and extractors through entry points, no fork needed.

The toy plug-in (tests/fixtures/plugin/taxabench_toy_plugin) is "installed" the way pip installs a package: a
`.dist-info` folder with `METADATA` and `entry_points.txt` on a sys.path entry, next to the package.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taxabench.errors import TaxabenchError
from taxabench.registry import Registry

FIXTURE = Path(__file__).parent / "fixtures" / "plugin"
ROOT = Path(__file__).parents[1]
ENTRY_POINTS = """\
[taxabench.datasets]
toy-csv = taxabench_toy_plugin:ToyAdapter

[taxabench.methods]
toy-zeroshot = taxabench_toy_plugin:ToyMethod

[taxabench.metrics]
toy_fd = taxabench_toy_plugin:ToyMetric

[taxabench.extractors]
toy-clip = taxabench_toy_plugin:ToyExtractor
"""


def install(site: Path, name: str = "taxabench-toy-plugin", entry_points: str = ENTRY_POINTS) -> Path:
    """A `.dist-info` for distribution `name` under `site` (a folder to put on sys.path with the fixture)."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return site


def test_installed_plugin_is_listed_with_its_distribution_and_used_by_name(tmp_path):
    from conftest import write_png

    site = install(tmp_path / "site")
    data = tmp_path / "data"
    write_png(data / "a.png")
    (data / "metadata.csv").write_text("image,split,genus,species\na.png,train,Gen,alpha\n")
    code = f"""
from taxabench.cli import main
assert main(["list"]) == 0
from taxabench.config import DataConfig
from taxabench.data import load_dataset
from taxabench.methods import METHODS
from taxabench.metrics.registry import EXTRACTORS, METRICS
loaded = load_dataset(DataConfig(dataset="toy-csv", root={str(data)!r}))
assert [r.labels for r in loaded.train] == [("Gen", "alpha")], loaded.train
assert METHODS.get("toy-zeroshot").name == "toy-zeroshot"
assert METRICS.origin("toy_fd") == EXTRACTORS.origin("toy-clip") == "taxabench-toy-plugin"
assert METRICS.origin("fd") == "built-in"
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(FIXTURE), str(ROOT)]), "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("toy-csv", "toy-zeroshot", "toy_fd", "toy-clip"):
        line = next(line for line in lines if line.strip().startswith(name + " "))
        assert "toy plug-in" in line and "(plug-in: taxabench-toy-plugin)" in line, line
    assert not any("plug-in:" in line for line in lines if line.strip().startswith("csv "))


def test_a_plugin_taking_a_built_in_name_is_refused_naming_both(tmp_path, monkeypatch):
    site = install(tmp_path / "site", "clashing-plugin", "[taxabench.datasets]\ncsv = taxabench_toy_plugin:ToyAdapter\n")
    monkeypatch.syspath_prepend(str(FIXTURE))
    monkeypatch.syspath_prepend(str(site))
    registry = Registry("dataset", "taxabench.data.base:DatasetAdapter", group="taxabench.datasets")
    registry.register_lazy("csv", "taxabench.data.csv:CsvAdapter", "built-in csv")
    with pytest.raises(TaxabenchError, match=r"dataset 'csv' from clashing-plugin \(entry point taxabench.datasets\) "
                                             r"is already registered \(built-in\)"):
        registry.names()


def test_a_plugin_that_does_not_import_is_one_error_naming_it(tmp_path, monkeypatch):
    site = install(tmp_path / "site", "broken-plugin", "[taxabench.metrics]\nghost = no_such_plugin_module:Ghost\n")
    monkeypatch.syspath_prepend(str(site))
    registry = Registry("metric", "taxabench.metrics.metric_base:Metric", group="taxabench.metrics")
    assert registry.names() == ["ghost"]  # reading entry points imports nothing
    with pytest.raises(TaxabenchError, match=r"metric 'ghost' \(from broken-plugin, entry point taxabench.metrics\): "
                                             r"cannot import no_such_plugin_module:Ghost"):
        registry.get("ghost")
