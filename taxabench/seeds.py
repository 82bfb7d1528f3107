"""Seeds derived from what a random draw is *for*, never from call order (STYLE.md §7).

`derive_seed(run_seed, "sample", taxon_id, j)` is the same number on every machine, process and batch layout, so
an image or a training sample gets the same noise whether it is drawn first or last, alone or in a batch.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text (SHA-256): stable across runs, platforms and Python versions."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded with `derive_seed(*parts)`."""
    return torch.Generator().manual_seed(derive_seed(*parts))
