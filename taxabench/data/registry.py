"""The dataset registry: every adapter is one file, registered here by name (imported when first used).

Third-party adapters register under the entry-point group `taxabench.datasets` (name -> `module:Class`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taxabench.registry import Registry

if TYPE_CHECKING:
    from taxabench.data.base import DatasetAdapter


def _check_name(name: str, adapter: type) -> None:
    if getattr(adapter, "name", name) != name:
        raise TypeError(f"dataset {name!r}: {adapter.__qualname__}.name is {adapter.name!r}; they must agree")


DATASETS: Registry[DatasetAdapter] = Registry("dataset", "taxabench.data.base:DatasetAdapter",
                                              group="taxabench.datasets", on_load=_check_name)


def register_dataset(name: str, adapter: type[DatasetAdapter]) -> type[DatasetAdapter]:
    return DATASETS.register(name, adapter)


def get_adapter(name: str) -> DatasetAdapter:
    return DATASETS.get(name)()


def list_datasets() -> list[str]:
    return DATASETS.names()


# name -> (module:Class, description): the built-ins, imported when first used (test_registry checks the text)
_BUILTINS = {
    "csv": ("taxabench.data.csv:CsvAdapter",
            "Generic CSV/TSV: an image-path column and one column per rank (names configurable)."),
    "synthtaxa": ("taxabench.data.synthtaxa:SynthTaxaAdapter",
                  "SynthTaxa, the procedural world taxabench generates itself (presets: tiny, small, inat-like, "
                  "tiny-domain, small-domain)."),
    "fishnet": ("taxabench.data.fishnet:FishNetAdapter",
                "FishNet (ICCV 2023): train.csv/test.csv, images in <root>/<Folder>/, class..species."),
    "bioscan1m": ("taxabench.data.bioscan1m:Bioscan1mAdapter",
                  "BIOSCAN-1M Insect: metadata TSV, images in <package>/part<chunk>/, class..species."),
    "inat2021": ("taxabench.data.inat2021:INat2021Adapter",
                 "iNaturalist 2021: train/train_mini/val JSON (COCO style), kingdom..species."),
}
for _name, (_target, _description) in _BUILTINS.items():
    DATASETS.register_lazy(_name, _target, _description)
