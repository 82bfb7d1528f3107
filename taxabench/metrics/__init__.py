"""Metrics: FD/KID, LPIPS, BioCLIP score and taxonomic accuracy, per rank, with CIs, cached, honest about weights.

The public API is small: `evaluate(config, method, run_dir)` evaluates one method's samples and writes
`metrics/<method>.json` and its rows of `metrics/all.csv` (schema: `taxabench.metrics.evaluation`); `weights_table`
says where every extractor's weights resolve from; `build_synthclip` trains the SynthTaxa reference model.
Registries: `METRICS`, `EXTRACTORS` (`taxabench.metrics.registry`).
"""

from taxabench.metrics.evaluation import CSV_COLUMNS, EvalResult, evaluate, prepare_extractors
from taxabench.metrics.registry import EXTRACTORS, METRICS, register_extractor, register_metric
from taxabench.metrics.synthclip import build_synthclip
from taxabench.metrics.weights_table import weights_table

__all__ = ["CSV_COLUMNS", "EXTRACTORS", "METRICS", "EvalResult", "build_synthclip", "evaluate", "prepare_extractors",
           "register_extractor", "register_metric", "weights_table"]
