"""taxabench: a reproducible benchmark for taxonomy-conditioned fine-grained species image generation."""

__version__ = "0.1.0"

from taxabench.errors import ConfigError, DataError, TaxabenchError, WeightsNotFoundError

__all__ = ["ConfigError", "DataError", "TaxabenchError", "WeightsNotFoundError", "__version__"]
