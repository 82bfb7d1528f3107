"""The dataset registry: every adapter is one file, registered here by name."""

from __future__ import annotations

from taxabench.data.base import DatasetAdapter
from taxabench.registry import Registry

DATASETS: Registry[DatasetAdapter] = Registry("dataset", DatasetAdapter)


def register_dataset(name: str, adapter: type[DatasetAdapter]) -> type[DatasetAdapter]:
    return DATASETS.register(name, adapter)


def get_adapter(name: str) -> DatasetAdapter:
    return DATASETS.get(name)()


def list_datasets() -> list[str]:
    return DATASETS.names()


def _register_builtins() -> None:
    from taxabench.data.csv import CsvAdapter
    from taxabench.data.synthtaxa import SynthTaxaAdapter

    for adapter in (CsvAdapter, SynthTaxaAdapter):
        register_dataset(adapter.name, adapter)


_register_builtins()
