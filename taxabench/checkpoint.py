"""Reading a trained method folder, for sampling and evaluation without importing the training loop.

A method folder (`<run>/checkpoints/<method>`, written by `taxabench.train`) holds `manifest.json`, `taxonomy.json`
and one `stage-<k>/` folder per completed stage; `load_checkpoint` loads one stage of it on the backbone it was
trained on. `cpu_only` and `TextCache` are shared by the training loop and the sampler.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taxabench.errors import DamagedFileError, TaxabenchError
from taxabench.files import read_json
from taxabench.methods import Method, Stage, get_method

MANIFEST = "manifest.json"
STAGE_FILE = "method.json"
TAXONOMY_FILE = "taxonomy.json"
POINTS_DIR = "points"  # points/step-<T>/: the trained parts kept at a budget point (taxabench/budget.py)


@dataclass
class TrainedMethod:
    """A method with its trained parts loaded on its backbone, ready to sample."""

    method: Method
    backbone: Any  # taxabench.backbone.Backbone
    stage: Stage | None  # the stage whose weights are loaded; None for a method without stages
    checkpoint: Path  # the stage folder (or the method folder for a method without stages)
    taxonomy: Any  # taxabench.taxonomy.Taxonomy of the training taxa
    manifest: dict


def load_checkpoint(
    folder: str | os.PathLike[str],
    stage: int | None = None,
    backbone_path: str | os.PathLike[str] | None = None,
    expect_method: str | None = None,
    point: str | None = None,
) -> TrainedMethod:
    """Load a method checkpoint folder (`<run>/checkpoints/<method>`, or one of its `stage-<k>` folders) by itself,
    e.g. outside any run; `point`: the trained parts kept at that budget point (`points/step-<T>/`) instead."""
    folder = Path(folder)
    if (folder / STAGE_FILE).is_file() and (folder.parent / MANIFEST).is_file() and stage is None:
        stage = read_json(folder / STAGE_FILE, retrain_fix(folder.parent, expect_method))["stage"]["index"]
        folder = folder.parent
    if not (folder / MANIFEST).is_file():
        raise TaxabenchError(
            f"{folder} is not a trained method folder (no {MANIFEST}); train it first with "
            f"`taxabench train --config FILE --method {expect_method or '<name>'}`"
        )
    manifest = read_json(folder / MANIFEST, retrain_fix(folder, expect_method))
    if expect_method is not None and manifest["method"] != expect_method:
        raise TaxabenchError(
            f"{folder} holds a checkpoint of method '{manifest['method']}', not '{expect_method}'"
        )
    get_method(manifest["method"])  # a method this taxabench does not know fails here, before any loading
    stages = [Stage(s["index"], s["steps"], s["description"]) for s in manifest["stages"]]
    missing = [s.name for s in stages if s.name not in manifest["completed"]]
    if point is not None:
        return _load_point(folder, manifest, stages, point, backbone_path)
    if stage is None and missing:
        raise TaxabenchError(
            f"{folder}: method '{manifest['method']}' has not finished training ({', '.join(missing)} missing); "
            "rerun the same `taxabench train` command to resume it"
        )
    chosen = stages[-1] if stages and stage is None else None
    if stage is not None:
        names = {s.index: s for s in stages}
        if stage not in names or names[stage].name not in manifest["completed"]:
            done = ", ".join(manifest["completed"]) or "none"
            raise TaxabenchError(f"{folder}: no trained stage {stage} (completed: {done})")
        chosen = names[stage]

    return _load(folder, manifest, chosen, folder / chosen.name if chosen else folder, backbone_path)


def _load_point(folder: Path, manifest: dict, stages: list[Stage], point: str, backbone_path) -> TrainedMethod:
    weights = folder / POINTS_DIR / point
    if not (weights / STAGE_FILE).is_file():
        kept = sorted(p.name for p in (folder / POINTS_DIR).glob("*") if (p / STAGE_FILE).is_file()) \
            if (folder / POINTS_DIR).is_dir() else []
        raise TaxabenchError(f"{folder}: no checkpoint kept at budget point {point} (kept: {', '.join(kept) or 'none'})")
    index = read_json(weights / STAGE_FILE, retrain_fix(folder, manifest["method"]))["stage"]["index"]
    return _load(folder, manifest, next(s for s in stages if s.index == index), weights, backbone_path)


def _load(folder: Path, manifest: dict, chosen: Stage | None, weights: Path, backbone_path) -> TrainedMethod:
    """The method of `manifest` on its backbone, with the trained parts in `weights` (a stage or point folder)."""
    from taxabench.backbone import load_sd_folder, sd_folder_sha256

    cls = get_method(manifest["method"])
    recorded = manifest["backbone"]
    path = Path(backbone_path) if backbone_path is not None else Path(recorded["path"])
    if not path.is_dir():
        raise TaxabenchError(
            f"backbone folder {path} (recorded in {folder / MANIFEST}) not found; rebuild it with the run's config "
            "(`taxabench backbone tiny` or `taxabench train`) or pass its location as backbone_path"
        )
    if backbone_path is not None and recorded["source"] != "tiny":
        identity = f"{recorded['identity'].split('@')[0]}@sha256:{sd_folder_sha256(path, str(path))[:12]}"
        if identity != recorded["identity"]:
            raise TaxabenchError(f"backbone {path} ({identity}) is not the one {folder} was trained on "
                                 f"({recorded['identity']})")
    backbone = load_sd_folder(path, identity=recorded["identity"], source=recorded["source"])
    taxonomy = read_taxonomy(folder / TAXONOMY_FILE)
    species = [taxonomy.labels_of(t) for t in taxonomy.taxa(taxonomy.ranks[-1])]
    options = cls.parse_options(manifest["options"], f"{folder / MANIFEST}: options")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(manifest["seed"])
        method = cls(options, taxonomy.ranks, species, backbone)
    if chosen is not None:
        load_stage(method, weights, folder)
    method.conditioner.eval()
    return TrainedMethod(method, backbone, chosen, weights, taxonomy, manifest)


def load_stage(method: Method, folder: Path, root: Path | None = None) -> None:
    """`method.load(folder)`, with a damaged (truncated, corrupted) file named in one line and how to redo it;
    `root`: the method's checkpoint folder (default: the stage folder's parent)."""
    from safetensors import SafetensorError

    try:
        method.load(folder)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as error:
        raise DamagedFileError(folder, f"its weights cannot be read ({type(error).__name__}: {error})",
                               retrain_fix(root or folder.parent, method.name)) from error


def retrain_fix(root: Path, method_name: str | None) -> str:
    """What to do about a damaged file of the method checkpoint folder `root`."""
    name = method_name or root.name
    return (f"retrain it: `taxabench run --force train/{name}` (or remove {root} and rerun "
            f"`taxabench train --method {name}`)")


def read_taxonomy(path: Path):
    """The taxonomy a checkpoint was trained on (written as ranks + the lineages of its finest-rank taxa)."""
    from taxabench.taxonomy import Record, Taxonomy

    saved = read_json(path, retrain_fix(path.parent, None))
    ranks = saved["ranks"]
    records = [Record(Path(), tuple(lineage) + (None,) * (len(ranks) - len(lineage)), "train", f"{path}")
               for lineage in saved["taxa"]]
    return Taxonomy(ranks, records)


class TextCache:
    """Frozen text-encoder embeddings per unique string (`cache=True`), or encoded every time (`cache=False`),
    returned in `dtype` (training: float32, what the trainable condition modules compute in).

    Cached, each string is encoded by itself, so its embedding does not depend on which other strings happened
    to be missing at the same time (a resumed run starts with an empty cache; see `taxabench.train.LatentCache`)."""

    def __init__(self, backbone, cache: bool, dtype: torch.dtype = torch.float32):
        self.backbone, self.cache, self.dtype = backbone, cache, dtype
        self.stored: dict[str, torch.Tensor] = {}

    def __call__(self, strings: list[str]) -> torch.Tensor:
        if not self.cache:
            return self.backbone.encode_text(strings).to(self.dtype)
        for string in sorted(set(strings) - set(self.stored)):
            self.stored[string] = self.backbone.encode_text([string])[0].to(self.dtype)
        return torch.stack([self.stored[s] for s in strings])


def cpu_only() -> bool:
    """Without CUDA, run on CPU explicitly: accelerate then treats `torchrun`/`accelerate launch` processes as a
    gloo process group (`MULTI_CPU`) instead of as independent single-process runs."""
    return not torch.cuda.is_available()
