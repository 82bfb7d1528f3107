"""Shared fixtures: every test runs offline, with taxabench's caches in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TAXABENCH_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def taxabench_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point $TAXABENCH_HOME at a fresh folder for the whole session, so tests never touch the user's cache."""
    home = tmp_path_factory.mktemp("taxabench-home")
    old = os.environ.get("TAXABENCH_HOME")
    os.environ["TAXABENCH_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TAXABENCH_HOME", None)
    else:
        os.environ["TAXABENCH_HOME"] = old


@pytest.fixture(scope="session")
def tiny_world(taxabench_home: Path) -> Path:
    """The SynthTaxa `tiny` world (seed 0), generated once per test session."""
    from taxabench.data.synthtaxa import generate, spec_for

    return generate(spec_for("tiny", 0), taxabench_home / "worlds" / "tiny", show_progress=False)


def write_png(path: Path, colour: tuple[int, int, int] = (120, 80, 40), size: tuple[int, int] = (24, 16)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def fabricate_samples(run_dir: Path, method: str, data, taxa, per_taxon: int = 4, split: str = "train",
                      relabel: dict | None = None) -> Path:
    """A sample folder in the evaluator's contract made of real images: up to `per_taxon` images of each taxon from
    `split`, filed under `relabel.get(taxon, taxon)` (to fabricate wrongly labelled samples)."""
    import shutil

    from taxabench.metrics.samples import METADATA_FILE, samples_folder, write_metadata_line

    folder = samples_folder(run_dir, method)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / METADATA_FILE, "w") as handle:
        for taxon in taxa:
            label = (relabel or {}).get(taxon, taxon)
            for index, record in enumerate(data.records_of(taxon, split)[:per_taxon]):
                target = folder / label.slug / f"{index:04d}.png"
                target.parent.mkdir(exist_ok=True)
                shutil.copyfile(record.image, target)
                write_metadata_line(handle, target, folder, label, seed=index, method=method)
    return folder


@pytest.fixture(scope="session")
def random_clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained synthclip-tiny model as an open_clip local-dir folder: the loading path, without training."""
    import open_clip
    import torch

    from taxabench.metrics.synthclip import ARCHITECTURE, register_architecture, save_open_clip_folder

    register_architecture()
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip") / "random-synthclip"
    save_open_clip_folder(open_clip.create_model(ARCHITECTURE), folder)
    return folder
