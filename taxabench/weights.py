"""Where pretrained weights come from, in one order for every component.

1. an explicit path from the config (`eval.weights`, `backbone.source`),
2. the component's environment variable (`TAXABENCH_<NAME>_WEIGHTS`),
3. a local cache: `$TAXABENCH_HOME/weights`, `$TORCH_HOME/hub/checkpoints` (single files) or the Hugging Face
   cache under `$HF_HOME` (hub repos),
4. a download, only when the machine is online and `HF_HUB_OFFLINE` / `TAXABENCH_OFFLINE` are not set,
5. otherwise a `WeightsNotFoundError` within a second or two, naming the file and how to provide it (a download that
   fails, e.g. through a broken proxy, ends the same way: one line, no traceback, no retries).

A file or folder that is found but is not what it should be (wrong SHA-256, a hub snapshot without `refs/main`, a
folder without its weights file) raises `WeightsInvalidError`, which callers never answer by using other weights.
The result says where the weights came from and their SHA-256, so every reported number can name its weights;
each file is hashed once per process (keyed by path, size and modification time).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from taxabench.config import taxabench_home
from taxabench.errors import WeightsInvalidError, WeightsNotFoundError

Source = Literal["explicit", "env", "cache", "download", "built"]


@dataclass(frozen=True)
class WeightsSpec:
    """One component's pretrained weights: a single file (`filename` + `url`) or a hub repo (`hf_repo`)."""

    name: str  # registry name of the component, e.g. "inception"
    description: str  # what the weights are, with provenance and licence
    filename: str | None = None
    other_filenames: tuple[str, ...] = ()  # the same bytes under another project's name (checked by sha256)
    url: str | None = None
    sha256: str | None = None  # expected digest of the single file, when known
    size: str | None = None  # human-readable size, for the error message
    hf_repo: str | None = None  # e.g. "imageomics/bioclip"
    hf_files: tuple[str, ...] = ()  # files of the repo that must be present
    hf_weights: tuple[str, ...] = ()  # one of these weights files must be present (the first one is downloaded)
    hf_aliases: tuple[str, ...] = ()  # older hub ids of the same weights, looked for in the cache too
    # the files of a folder that are loaded (raising when one is missing): only they make the folder's identity
    loaded_files: Callable[[Path], list[Path]] | None = None
    hf_patterns: tuple[str, ...] = ()  # what a download fetches (e.g. not SD's multi-GB single-file checkpoints)

    @property
    def env_var(self) -> str:
        return f"TAXABENCH_{self.name.upper().replace('-', '_')}_WEIGHTS"

    def download_command(self) -> str:
        """The command that fetches just what taxabench reads (huggingface_hub's `hf` CLI for hub repos)."""
        if self.hf_repo:
            patterns = self.hf_patterns or (*self.hf_files, *self.hf_weights[:1])
            return f"hf download {self.hf_repo}" + "".join(f" --include '{p}'" for p in patterns)
        target = taxabench_home() / "weights" / (self.filename or self.name)
        return f"curl -L -o {target} {self.url}"


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path  # a file, or a folder for hub repos
    source: Source
    sha256: str | None  # of the file; of the sorted file digests for a folder
    verified: bool = True  # False: accepted through eval.unverified_weights, not the published file
    revision: str | None = None  # the hub commit of a hub snapshot (pinned, or the one the cache holds)

    def identity(self, name: str) -> str:
        """How reports name these weights: `inception@sha256:6726825d… (cache)`, hub snapshots with their commit:
        `bioclip@sha256:0123abcd4567 (cache, revision 3f5c8e2a1b9d)`; a file accepted by its stated digest instead of
        the published one: `inception@unverified: sha256 <full digest> (explicit)`."""
        where = self.source + (f", revision {self.revision[:12]}" if self.revision else "")
        if not self.verified:
            return f"{name}@unverified: sha256 {self.sha256} ({where})"
        digest = f"sha256:{self.sha256[:12]}" if self.sha256 else "unhashed"
        return f"{name}@{digest} ({where})"


def is_offline() -> bool:
    """Offline when told so, or when the hub ($HF_ENDPOINT) cannot be reached within a second."""
    for flag in ("HF_HUB_OFFLINE", "TAXABENCH_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(flag, "").lower() in ("1", "true", "yes", "on"):
            return True
    from urllib.parse import urlsplit

    from huggingface_hub.constants import ENDPOINT

    endpoint = urlsplit(ENDPOINT)  # huggingface.co, or the mirror $HF_ENDPOINT names
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=1.0).close()
    except OSError:
        return True
    return False


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's SHA-256, computed once per process for a given (path, size, modification time)."""
    status = os.stat(path)
    key = (str(Path(path).resolve()), status.st_size, status.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def files_sha256(root: Path, files: list[Path]) -> str:
    """A digest of some files of a folder: the sorted (relative path, file digest) pairs."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(f"{file.relative_to(root).as_posix()}:{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def folder_sha256(path: Path) -> str:
    """A digest of a weights folder: the sorted (relative path, file digest) pairs of its weight files."""
    suffixes = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model")
    return files_sha256(path, [p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes])


def resolve_weights(
    spec: WeightsSpec, explicit: str | os.PathLike[str] | None = None, download: bool = True,
    revision: str | None = None, unverified_sha256: str | None = None,
) -> ResolvedWeights:
    """Find `spec`'s weights in the order of the module docstring, or fail fast saying how to provide them.

    `download=False` stops after the cache (for reports of what is available without touching the network).
    `revision` pins a hub repo's commit (or tag): only that snapshot is taken from the cache or downloaded, so a
    repo whose weights change upstream (BioCLIP's taxonomic fix) keeps giving the same numbers.
    `unverified_sha256`: a single file with this digest is accepted instead of the published one, marked unverified.
    """
    if explicit is not None:
        return _checked(spec, Path(explicit), "explicit", unverified_sha256)
    if os.environ.get(spec.env_var):
        return _checked(spec, Path(os.environ[spec.env_var]), "env", unverified_sha256)
    cached = _from_cache(spec, revision)
    if cached is not None:
        return _checked(spec, cached, "cache", unverified_sha256)
    if not download:
        raise WeightsNotFoundError(_how_to_provide(spec, "not in any local cache", revision))
    if not is_offline():
        return _checked(spec, _download(spec, revision), "download")
    raise WeightsNotFoundError(_how_to_provide(spec, "the machine is offline", revision))


def _checked(spec: WeightsSpec, path: Path, source: Source, unverified_sha256: str | None = None) -> ResolvedWeights:
    if not path.exists():
        where = {"explicit": "the config", "env": f"${spec.env_var}"}.get(source, source)
        raise WeightsInvalidError(f"{spec.name} weights: {path} (from {where}) does not exist")
    if path.is_dir():
        missing = [f for f in spec.hf_files if not (path / f).exists()]
        if spec.hf_weights and not any((path / f).is_file() for f in spec.hf_weights):
            missing.append(spec.hf_weights[0])
        if missing:
            raise WeightsInvalidError(
                f"{spec.name} weights: {path} lacks {missing[0]} ({spec.description}); an interrupted download? "
                f"Fetch it again: {spec.download_command()}")
        snapshot = path.name if path.parent.name == "snapshots" and source in ("cache", "download") else None
        if spec.loaded_files is not None:
            return ResolvedWeights(path, source, files_sha256(path, spec.loaded_files(path)), revision=snapshot)
        return ResolvedWeights(path, source, folder_sha256(path), revision=snapshot)
    digest = file_sha256(path)
    if spec.sha256 and digest != spec.sha256 and unverified_sha256 is not None:
        if digest != unverified_sha256:
            raise WeightsInvalidError(f"{spec.name} weights: {path} has SHA-256 {digest}, neither the published "
                                      f"{spec.sha256} nor the one eval.unverified_weights states ({unverified_sha256})")
        return ResolvedWeights(path, source, digest, verified=False)
    if spec.sha256 and digest != spec.sha256:
        raise WeightsInvalidError(
            f"{spec.name} weights: {path} has SHA-256 {digest}, expected {spec.sha256}; "
            f"it is not the file {spec.filename or spec.name} ({spec.description}); replace it with the published "
            f"file ({spec.download_command()}), or, if you verified it holds the same weights, accept it by its digest "
            f"with eval.unverified_weights (its numbers then say 'unverified')"
        )
    return ResolvedWeights(path, source, digest)


def _from_cache(spec: WeightsSpec, revision: str | None = None) -> Path | None:
    if spec.filename:
        torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        for folder in (taxabench_home() / "weights", torch_home / "hub" / "checkpoints"):
            for filename in (spec.filename, *spec.other_filenames):
                if (folder / filename).is_file():
                    return folder / filename
    for repo in (spec.hf_repo, *spec.hf_aliases) if spec.hf_repo else ():
        snapshot = _hub_snapshot(spec, repo, revision)
        if snapshot is not None:
            return snapshot
    return None


def _hub_snapshot(spec: WeightsSpec, repo: str, revision: str | None = None) -> Path | None:
    """The cached snapshot `revision` (or `refs/main`) names, as `snapshot_download(local_files_only=True)` finds
    it; a snapshot copied without `refs/main` is an error that says how to repair the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    repo_folder = Path(os.environ.get("HF_HUB_CACHE", HF_HUB_CACHE)) / f"models--{repo.replace('/', '--')}"
    snapshots = sorted(p.name for p in (repo_folder / "snapshots").glob("*") if p.is_dir())
    if snapshots and revision is None:  # copied without refs/: nothing says which snapshot is the current one
        raise WeightsInvalidError(
            f"{spec.name} weights: {repo_folder / 'refs' / 'main'} is missing (the cache was copied without refs/); "
            f"write the snapshot's name into it: mkdir -p {repo_folder / 'refs'} && "
            f"echo -n {snapshots[-1]} > {repo_folder / 'refs' / 'main'}")
    return None


def _download(spec: WeightsSpec, revision: str | None = None) -> Path:
    if spec.hf_repo:
        from huggingface_hub import snapshot_download

        patterns = list(spec.hf_patterns or (*spec.hf_files, *spec.hf_weights[:1])) or None
        try:
            return Path(snapshot_download(spec.hf_repo, revision=revision, allow_patterns=patterns, etag_timeout=5))
        except Exception as error:  # any network failure (a proxy that fails TLS, a timeout): one line, no retry
            reason = f"the download from the Hugging Face hub failed: {type(error).__name__}: {_first_line(error)}"
            raise WeightsNotFoundError(_how_to_provide(spec, reason, revision)) from error
    if not (spec.url and spec.filename):
        raise WeightsNotFoundError(_how_to_provide(spec, "there is no download address for it"))
    target = taxabench_home() / "weights" / spec.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as partial:
        try:
            with urllib.request.urlopen(spec.url, timeout=10) as response:
                shutil.copyfileobj(response, partial)
        except OSError as error:
            os.unlink(partial.name)
            raise WeightsNotFoundError(_how_to_provide(spec, f"the download from {spec.url} failed: {error}")) from error
    os.chmod(partial.name, 0o644)
    os.replace(partial.name, target)
    return target


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _how_to_provide(spec: WeightsSpec, reason: str, revision: str | None = None) -> str:
    if spec.hf_repo:
        pin = f" --revision {revision}" if revision else ""
        what = f"the Hugging Face repo {spec.hf_repo}" + (f" at revision {revision}" if revision else "")
        place = (
            f"run `{spec.download_command()}{pin}` on a machine with internet and copy the cache ($HF_HOME/hub) "
            f"here, or download the repo to a folder (add --local-dir DIR) and set ${spec.env_var} to it"
        )
        if spec.hf_aliases:
            place += f" (a cache of {' or '.join(spec.hf_aliases)}, the same weights, is found too)"
    else:
        what = f"the file {spec.filename}" + (f" ({spec.size})" if spec.size else "")
        place = (
            f"download it from {spec.url} and put it in {taxabench_home() / 'weights'}/, "
            f"or set ${spec.env_var} to its path"
        )
    return f"{spec.name} weights not found ({reason}): taxabench needs {what} — {spec.description}. To provide it, {place}."
