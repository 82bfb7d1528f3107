"""Registries: lazily registered built-ins agree with their classes; listing and naming them imports no torch."""

import subprocess
import sys
from pathlib import Path

import pytest

from taxabench.data.registry import DATASETS
from taxabench.errors import TaxabenchError
from taxabench.methods import METHODS
from taxabench.metrics.registry import EXTRACTORS, METRICS, SAMPLE_LAYOUTS
from taxabench.registry import BUILT_IN, Registry

ALL = (DATASETS, METHODS, METRICS, EXTRACTORS, SAMPLE_LAYOUTS)


@pytest.mark.parametrize("registry", ALL, ids=lambda r: r.kind)
def test_lazy_descriptions_match_the_classes(registry):
    for entry in registry.entries():
        cls = registry.get(entry.name)
        assert entry.origin == BUILT_IN
        assert entry.description == cls.description, entry.name
        assert f"{cls.__module__}:{cls.__qualname__}" == entry.target
        for key, value in entry.attributes.items():
            assert getattr(cls, key) == value, (entry.name, key)
        assert getattr(cls, "key", None) or getattr(cls, "name", None) == entry.name


def test_method_classes_carry_their_name_when_imported_directly():
    from baselines.controls import SDLoraMatched
    from taxabench.methods.taxadiffusion import TaxaDiffusionJoint

    assert (TaxaDiffusionJoint.name, SDLoraMatched.name) == ("taxadiffusion-joint", "sd-lora-matched")


def test_listing_and_naming_import_no_torch():
    code = ("import sys; from taxabench.cli import main; assert main(['list']) == 0; "
            "from taxabench.config import load_config; "
            "assert 'taxadiffusion' in __import__('taxabench.methods').methods.METHODS; "
            "heavy = [m for m in ('torch', 'diffusers', 'open_clip', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_lazy_entry_errors_name_the_target():
    registry = Registry("thing", "taxabench.metrics.metric_base:Metric")
    registry.register_lazy("ghost", "taxabench.no_such_module:Ghost", "a ghost")
    with pytest.raises(TaxabenchError, match="thing 'ghost': cannot import taxabench.no_such_module:Ghost"):
        registry.get("ghost")
    registry.register_lazy("wrong", "taxabench.errors:TaxabenchError", "not a metric")
    with pytest.raises(TypeError, match="not a subclass of Metric"):
        registry.get("wrong")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_lazy("ghost", "x:y", "")
