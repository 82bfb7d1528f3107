"""Content-keyed feature caches with atomic writes.

A cache file is named by the SHA-256 of a JSON key that holds everything that changes the features: for real
images the dataset fingerprint, split, the images' contents as (path, size, mtime) — an image replaced in place
under the same name is read again —, extractor, weights hash, extractor protocol, image size and resize mode; for
generated images the sample folder's manifest hash (which covers the same) instead of the dataset. The key is
stored next to the features (`<hash>.json`), so a cache folder can be inspected. Files are written beside their
target and renamed into place, so a killed run leaves no half-written cache; a damaged one (truncated by a full
disk, say) counts as absent and is computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from taxabench.config import taxabench_home
from taxabench.files import write_bytes, writing

CACHE_VERSION = 1  # bump when the way features are computed changes in a way no key field captures


def features_dir() -> Path:
    return taxabench_home() / "features"


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"cache_version": CACHE_VERSION, **fields}, sort_keys=True).encode()).hexdigest()


def files_key(paths: Iterable[str | os.PathLike[str]]) -> str:
    """SHA-256 of each file's (path, size, mtime): changes when a file is replaced, without reading any."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.fspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_features(kind: str, fields: dict[str, Any], rows: int) -> dict[str, np.ndarray] | None:
    """The cached features for `fields`, or None; a file with the wrong number of rows, or one that cannot be
    read whole, counts as absent."""
    path = features_dir() / kind / f"{cache_key(fields)}.npz"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle, np.load(handle) as stored:  # closed even when np.load fails
            features = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if any(len(v) != rows for v in features.values()):
        return None
    return features


def save_features(kind: str, fields: dict[str, Any], features: dict[str, np.ndarray]) -> Path:
    folder = features_dir() / kind
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(fields)
    write_bytes(folder / f"{key}.json", json.dumps(fields, indent=2, sort_keys=True).encode(), "features")
    target = folder / f"{key}.npz"
    with writing(target, "features") as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **features)
    return target


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`taxabench.files.write_bytes` for cache files (an ordinary file mode: readable by the group)."""
    write_bytes(path, data, "features")


def shared_mode(path: str | os.PathLike[str], directory: bool = False) -> None:
    """The mode an ordinary write would give (tempfile makes 0600 files and 0700 folders: unreadable to the
    group in a shared folder)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)
