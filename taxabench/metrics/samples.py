"""The generated-sample folder the evaluator reads: a strict, documented contract.

Layout (written by the sampler, `taxabench/sample.py`; paths and the line writer: `taxabench/layout.py`)::

    runs/<name>/samples/<method>/
        metadata.jsonl                  one JSON object per line, one line per image
        <taxon-slug>/0000.png           the images, one folder per taxon (`Taxon.slug`)
        <taxon-slug>/0001.png ...

Each line of `metadata.jsonl` must hold at least these keys (`SAMPLE_KEYS`); other keys (guidance scale, steps…)
are allowed and ignored:

    taxon_id    str        the taxon's lineage path id, e.g. "Actinopterygii/Perciformes/.../saxatilis"
    taxon_slug  str        its folder name (`Taxon.slug`); must equal the first part of `image`
    rank        str        the taxon's rank; every line of one folder has the same rank
    lineage     list[str]  names from the top rank down to the taxon; must equal the taxon's lineage
    image       str        path relative to the method folder: "<taxon-slug>/NNNN.png"
    seed        int        the seed the image was sampled with
    method      str        the method name; must equal the folder name

Every check failure is a `SamplesError` naming the file and line. The folder's *manifest* hash covers the
metadata bytes and each image's path, size and modification time, so rewritten images invalidate cached features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from taxabench.errors import DataError
from taxabench.layout import METADATA_FILE, SAMPLE_KEYS, RunLayout, write_metadata_line  # noqa: F401 - re-exported
from taxabench.taxonomy import Taxon, Taxonomy


class SamplesError(DataError):
    """A sample folder that breaks the contract of `taxabench.metrics.samples`: names the file and line."""


@dataclass(frozen=True)
class GeneratedImage:
    path: Path
    taxon: Taxon
    seed: int
    source: str  # "metadata.jsonl:LINE", for messages


@dataclass(frozen=True)
class SampleSet:
    folder: Path
    method: str
    rank: str
    images: list[GeneratedImage]
    manifest: str  # SHA-256 of the metadata and of each image's (path, size, mtime)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> images left out (other generators' folders)


def samples_folder(run_dir: Path, method: str, seed: int | None = None, point: str | None = None) -> Path:
    return RunLayout(Path(run_dir)).samples(method, seed, point)


def read_samples(folder: Path, method: str, taxonomy: Taxonomy) -> SampleSet:
    """Read and check a method's sample folder against the dataset's taxonomy (see the module docstring)."""
    folder = Path(folder)
    metadata = folder / METADATA_FILE
    if not metadata.is_file():
        raise SamplesError(
            f"no generated samples for method '{method}': {metadata} not found "
            f"(run `taxabench sample` first, or point --run at the run folder that holds samples/{method}/)"
        )
    raw = metadata.read_bytes()
    images: list[GeneratedImage] = []
    seen: dict[str, str] = {}
    digest = hashlib.sha256(raw)
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{metadata}:{number}"
        image = _parse_line(line, where, folder, method, taxonomy)
        relative = image.path.relative_to(folder).as_posix()
        if relative in seen:
            raise SamplesError(f"{where}: image {relative!r} is listed twice (first at {seen[relative]})")
        seen[relative] = where
        stat = image.path.stat()
        digest.update(f"\n{relative}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        images.append(image)
    if not images:
        raise SamplesError(f"{metadata} lists no images")
    ranks = {img.taxon.rank for img in images}
    if len(ranks) > 1:
        raise SamplesError(
            f"{metadata} mixes taxa of ranks {sorted(ranks)}; evaluate one rank per sample folder "
            "(sample each rank under its own method folder)"
        )
    return SampleSet(folder, method, ranks.pop(), images, digest.hexdigest())


def _parse_line(line: str, where: str, folder: Path, method: str, taxonomy: Taxonomy) -> GeneratedImage:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise SamplesError(f"{where}: not valid JSON ({error.msg})") from error
    if not isinstance(entry, dict):
        raise SamplesError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    for key, kind in SAMPLE_KEYS.items():
        if key not in entry:
            raise SamplesError(f"{where}: missing key '{key}' (required: {', '.join(SAMPLE_KEYS)})")
        if not isinstance(entry[key], kind) or (kind is int and isinstance(entry[key], bool)):
            raise SamplesError(f"{where}: '{key}' must be {kind.__name__}, got {entry[key]!r}")
    if entry["method"] != method:
        raise SamplesError(f"{where}: method is {entry['method']!r}, but this is the folder of {method!r}")
    taxon_id = entry["taxon_id"]
    if taxon_id not in taxonomy:
        raise SamplesError(f"{where}: taxon_id {taxon_id!r} is not a taxon of the dataset's taxonomy")
    taxon = taxonomy[taxon_id]
    for key, expected in (("taxon_slug", taxon.slug), ("rank", taxon.rank), ("lineage", list(taxon.lineage))):
        if entry[key] != expected:
            raise SamplesError(f"{where}: {key} is {entry[key]!r}, but taxon {taxon_id!r} has {expected!r}")
    relative = Path(entry["image"])
    if relative.is_absolute() or ".." in relative.parts:
        raise SamplesError(f"{where}: image {entry['image']!r} must be a path relative to {folder}")
    if relative.parts[0] != taxon.slug:
        raise SamplesError(f"{where}: image {entry['image']!r} is not in the taxon's folder '{taxon.slug}/'")
    path = folder / relative
    if not path.is_file():
        raise SamplesError(f"{where}: image file not found: {path}")
    return GeneratedImage(path, taxon, entry["seed"], where)
