"""Datasets: a registry of adapters that all yield the same `Record`s (see `load_dataset`)."""

from taxabench.data.base import AdapterOutput, DatasetAdapter, SkipLog
from taxabench.data.loading import TaxaData, load_dataset
from taxabench.data.registry import get_adapter, list_datasets, register_dataset

__all__ = [
    "AdapterOutput",
    "DatasetAdapter",
    "SkipLog",
    "TaxaData",
    "get_adapter",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]
