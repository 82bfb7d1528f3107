"""Content-keyed feature caches with atomic writes.

A cache file is named by the SHA-256 of a JSON key that holds everything that changes the features: for real
images the dataset fingerprint, split, extractor, weights hash, extractor protocol, image size and resize mode; for
generated images the sample folder's manifest hash instead of the dataset. The key is stored next to the features
(`<hash>.json`), so a cache folder can be inspected. Files are written beside their target and renamed into place,
so a killed run leaves no half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from taxabench.config import taxabench_home

CACHE_VERSION = 1  # bump when the way features are computed changes in a way no key field captures


def features_dir() -> Path:
    return taxabench_home() / "features"


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"cache_version": CACHE_VERSION, **fields}, sort_keys=True).encode()).hexdigest()


def load_features(kind: str, fields: dict[str, Any], rows: int) -> dict[str, np.ndarray] | None:
    """The cached features for `fields`, or None; a file with the wrong number of rows counts as absent."""
    path = features_dir() / kind / f"{cache_key(fields)}.npz"
    if not path.is_file():
        return None
    with np.load(path) as stored:
        features = {name: stored[name] for name in stored.files}
    if any(len(v) != rows for v in features.values()):
        return None
    return features


def save_features(kind: str, fields: dict[str, Any], features: dict[str, np.ndarray]) -> Path:
    folder = features_dir() / kind
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(fields)
    atomic_write_bytes(folder / f"{key}.json", json.dumps(fields, indent=2, sort_keys=True).encode())
    target = folder / f"{key}.npz"
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz.partial", delete=False) as handle:
        np.savez(handle, **features)
    shared_mode(handle.name)
    os.replace(handle.name, target)
    return target


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(data)
    shared_mode(handle.name)
    os.replace(handle.name, path)


def shared_mode(path: str | os.PathLike[str], directory: bool = False) -> None:
    """The mode an ordinary write would give (tempfile makes 0600 files and 0700 folders: unreadable to the
    group in a shared folder)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)
