"""`synthclip`: the SynthTaxa reference model (see `taxabench.metrics.synthclip`) as an extractor.

Loaded through the same open_clip `local-dir:` path as BioCLIP; built (about a minute on two CPU cores) on first
use when no build for this dataset and these settings is cached.
"""

from __future__ import annotations

from taxabench.metrics.extractor_open_clip import OpenClipExtractor
from taxabench.metrics.synthclip import SYNTHCLIP_WEIGHTS, resolve_synthclip


class SynthClipExtractor(OpenClipExtractor):
    name = "synthclip"
    description = "synthclip image embedding (128-d) and text encoder, trained by taxabench on SynthTaxa."
    weights_specs = (SYNTHCLIP_WEIGHTS,)

    @classmethod
    def load(cls, config) -> SynthClipExtractor:
        return cls(resolve_synthclip(config))
