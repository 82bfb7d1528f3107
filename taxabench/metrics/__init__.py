"""Metrics: FD/KID, LPIPS, BioCLIP score and taxonomic accuracy, per rank, with CIs, cached, honest about weights.

The public API is small: `evaluate(config, method, run_dir)` evaluates one method's samples and writes
`metrics/<method>.json` and its rows of `metrics/all.csv` (schema: `taxabench.metrics.evaluation`); `weights_table`
says where every extractor's weights resolve from; `build_synthclip` trains the SynthTaxa reference model.
Registries: `METRICS`, `EXTRACTORS` (`taxabench.metrics.registry`). The names below are imported on first use, so
importing the registries does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from taxabench.metrics.registry import EXTRACTORS, METRICS, register_extractor, register_metric
from taxabench.metrics.weights_table import weights_table  # light; and the name is also its module's

if TYPE_CHECKING:
    from taxabench.metrics.evaluation import CSV_COLUMNS, EvalResult, evaluate, prepare_extractors
    from taxabench.metrics.synthclip import build_synthclip

_LAZY = {"CSV_COLUMNS": "evaluation", "EvalResult": "evaluation", "evaluate": "evaluation",
         "prepare_extractors": "evaluation", "build_synthclip": "synthclip"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"taxabench.metrics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'taxabench.metrics' has no attribute {name!r}")


__all__ = ["CSV_COLUMNS", "EXTRACTORS", "METRICS", "EvalResult", "build_synthclip", "evaluate", "prepare_extractors",
           "register_extractor", "register_metric", "weights_table"]
