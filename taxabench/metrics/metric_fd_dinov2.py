"""`fd_dinov2`: the Fréchet distance in DINOv2 ViT-L/14 space, "FD (dinov2-vitl14)" (Stein et al., 2023).

The same computation as `fd` (`taxabench.metrics.metric_fd`), on `dinov2-vitl14` features instead of
`eval.fd_extractor`'s, so a report can carry FID and FD-DINOv2 side by side.
"""

from __future__ import annotations

from taxabench.metrics.extractor_dinov2 import Dinov2Extractor
from taxabench.metrics.metric_fd import FrechetDistance


class FrechetDistanceDinov2(FrechetDistance):
    key = "fd_dinov2"
    description = "Fréchet distance on DINOv2 ViT-L/14 CLS features: FD (dinov2-vitl14), dgm-eval's default space."

    def extractor_name(self, config) -> str:
        return Dinov2Extractor.name
