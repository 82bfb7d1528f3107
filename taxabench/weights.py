"""Where pretrained weights come from, in one order for every component (DESIGN.md §4).

1. an explicit path from the config (`eval.weights`, `backbone.source`),
2. the component's environment variable (`TAXABENCH_<NAME>_WEIGHTS`),
3. a local cache: `$TAXABENCH_HOME/weights`, `$TORCH_HOME/hub/checkpoints` (single files) or the Hugging Face
   cache under `$HF_HOME` (hub repos),
4. a download, only when the machine is online and `HF_HUB_OFFLINE` / `TAXABENCH_OFFLINE` are not set,
5. otherwise a `WeightsNotFoundError` within a second or two, naming the file and how to provide it.

The result says where the weights came from and their SHA-256, so every reported number can name its weights.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from taxabench.config import taxabench_home
from taxabench.errors import WeightsNotFoundError

Source = Literal["explicit", "env", "cache", "download", "built"]


@dataclass(frozen=True)
class WeightsSpec:
    """One component's pretrained weights: a single file (`filename` + `url`) or a hub repo (`hf_repo`)."""

    name: str  # registry name of the component, e.g. "inception"
    description: str  # what the weights are, with provenance and licence
    filename: str | None = None
    url: str | None = None
    sha256: str | None = None  # expected digest of the single file, when known
    size: str | None = None  # human-readable size, for the error message
    hf_repo: str | None = None  # e.g. "imageomics/bioclip"
    hf_files: tuple[str, ...] = ()  # files of the repo that must be present
    hf_patterns: tuple[str, ...] = ()  # what a download fetches (e.g. not SD's multi-GB single-file checkpoints)

    @property
    def env_var(self) -> str:
        return f"TAXABENCH_{self.name.upper().replace('-', '_')}_WEIGHTS"


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path  # a file, or a folder for hub repos
    source: Source
    sha256: str | None  # of the file; of the sorted file digests for a folder
    revision: str | None = None  # the hub commit of a hub snapshot (pinned, or the one the cache holds)

    def identity(self, name: str) -> str:
        """How reports name these weights: `inception@sha256:6726825d… (cache)`, hub snapshots with their commit:
        `bioclip@sha256:0123abcd4567 (cache, revision 3f5c8e2a1b9d)`."""
        digest = f"sha256:{self.sha256[:12]}" if self.sha256 else "unhashed"
        revision = f", revision {self.revision[:12]}" if self.revision else ""
        return f"{name}@{digest} ({self.source}{revision})"


def is_offline() -> bool:
    """Offline when told so, or when the hub cannot be reached within a second."""
    for flag in ("HF_HUB_OFFLINE", "TAXABENCH_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(flag, "").lower() in ("1", "true", "yes", "on"):
            return True
    try:
        socket.create_connection(("huggingface.co", 443), timeout=1.0).close()
    except OSError:
        return True
    return False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(path: Path) -> str:
    """A digest of a weights folder: the sorted (relative path, file digest) pairs of its weight files."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.suffix in (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model"):
            digest.update(f"{file.relative_to(path).as_posix()}:{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def resolve_weights(
    spec: WeightsSpec, explicit: str | os.PathLike[str] | None = None, download: bool = True,
    revision: str | None = None,
) -> ResolvedWeights:
    """Find `spec`'s weights in the order of the module docstring, or fail fast saying how to provide them.

    `download=False` stops after the cache (for reports of what is available without touching the network).
    `revision` pins a hub repo's commit (or tag): only that snapshot is taken from the cache or downloaded, so a
    repo whose weights change upstream (BioCLIP's taxonomic fix) keeps giving the same numbers.
    """
    if explicit is not None:
        return _checked(spec, Path(explicit), "explicit")
    if os.environ.get(spec.env_var):
        return _checked(spec, Path(os.environ[spec.env_var]), "env")
    cached = _from_cache(spec, revision)
    if cached is not None:
        return _checked(spec, cached, "cache")
    if not download:
        raise WeightsNotFoundError(_how_to_provide(spec, "not in any local cache", revision))
    if not is_offline():
        return _checked(spec, _download(spec, revision), "download")
    raise WeightsNotFoundError(_how_to_provide(spec, "the machine is offline", revision))


def _checked(spec: WeightsSpec, path: Path, source: Source) -> ResolvedWeights:
    if not path.exists():
        where = {"explicit": "the config", "env": f"${spec.env_var}"}.get(source, source)
        raise WeightsNotFoundError(f"{spec.name} weights: {path} (from {where}) does not exist")
    if path.is_dir():
        missing = [f for f in spec.hf_files if not (path / f).exists()]
        if missing:
            raise WeightsNotFoundError(f"{spec.name} weights: {path} lacks {missing[0]} ({spec.description})")
        snapshot = path.parent.name == "snapshots" and source in ("cache", "download")
        return ResolvedWeights(path, source, folder_sha256(path), path.name if snapshot else None)
    digest = file_sha256(path)
    if spec.sha256 and digest != spec.sha256:
        raise WeightsNotFoundError(
            f"{spec.name} weights: {path} has SHA-256 {digest}, expected {spec.sha256}; "
            f"it is not the file {spec.filename or spec.name} ({spec.description})"
        )
    return ResolvedWeights(path, source, digest)


def _from_cache(spec: WeightsSpec, revision: str | None = None) -> Path | None:
    if spec.filename:
        torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        for folder in (taxabench_home() / "weights", torch_home / "hub" / "checkpoints"):
            if (folder / spec.filename).is_file():
                return folder / spec.filename
    if spec.hf_repo:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(spec.hf_repo, revision=revision, local_files_only=True))
        except LocalEntryNotFoundError:
            return None
    return None


def _download(spec: WeightsSpec, revision: str | None = None) -> Path:
    if spec.hf_repo:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.hf_repo, revision=revision, allow_patterns=list(spec.hf_patterns) or None))
    if not (spec.url and spec.filename):
        raise WeightsNotFoundError(_how_to_provide(spec, "there is no download address for it"))
    target = taxabench_home() / "weights" / spec.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as partial:
        try:
            with urllib.request.urlopen(spec.url, timeout=30) as response:
                shutil.copyfileobj(response, partial)
        except OSError as error:
            os.unlink(partial.name)
            raise WeightsNotFoundError(_how_to_provide(spec, f"the download from {spec.url} failed: {error}")) from error
    os.replace(partial.name, target)
    return target


def _how_to_provide(spec: WeightsSpec, reason: str, revision: str | None = None) -> str:
    if spec.hf_repo:
        pin = f" --revision {revision}" if revision else ""
        what = f"the Hugging Face repo {spec.hf_repo}" + (f" at revision {revision}" if revision else "")
        place = (
            f"run `huggingface-cli download {spec.hf_repo}{pin}` on a machine with internet and copy the cache "
            f"($HF_HOME/hub) here, or download the repo to a folder and set ${spec.env_var} to it"
        )
    else:
        what = f"the file {spec.filename}" + (f" ({spec.size})" if spec.size else "")
        place = (
            f"download it from {spec.url} and put it in {taxabench_home() / 'weights'}/, "
            f"or set ${spec.env_var} to its path"
        )
    return f"{spec.name} weights not found ({reason}): taxabench needs {what} — {spec.description}. To provide it, {place}."
