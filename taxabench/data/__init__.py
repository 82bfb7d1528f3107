"""Datasets: a registry of adapters that all yield the same `Record`s (see `load_dataset`).

The names below are imported on first use, so `import taxabench.data` (and `taxabench list`) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from taxabench.data.registry import get_adapter, list_datasets, register_dataset

if TYPE_CHECKING:
    from taxabench.data.base import AdapterOutput, DatasetAdapter, SkipLog
    from taxabench.data.loading import TaxaData, load_dataset

_LAZY = {"AdapterOutput": "taxabench.data.base", "DatasetAdapter": "taxabench.data.base",
         "SkipLog": "taxabench.data.base", "TaxaData": "taxabench.data.loading", "load_dataset": "taxabench.data.loading"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'taxabench.data' has no attribute {name!r}")


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
