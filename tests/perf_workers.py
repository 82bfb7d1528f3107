"""Worker setups for tests/test_perf.py, in a module of their own: a spawned worker imports this, and nothing heavy."""

from __future__ import annotations

import time

import numpy as np


def setup_sleeper(spec: dict):
    """A benchmark path that takes `seconds` per call and holds `megabytes` of memory."""
    if spec.get("fail"):
        raise ValueError("setup failed on purpose")
    ballast = np.ones(spec["megabytes"] * 2**20 // 8)

    def run():
        time.sleep(spec["seconds"])
        return 4, {"ballast MiB": str(round(ballast.nbytes / 2**20))}

    return run, {"kind": "sleeper"}
