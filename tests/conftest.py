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


def taxabench_on_two_processes(command: str, config_file: Path, cwd: Path | None = None, **env: str) -> None:
    """`torchrun --nproc_per_node 2 -m taxabench COMMAND --config FILE` (gloo on CPU), failing the test with the tail
    of its output; `env` adds environment variables."""
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "taxabench", *command.split(), "--config", str(config_file)],
        cwd=cwd or root, env={**os.environ, "PYTHONPATH": str(root), **env}, capture_output=True, text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# the tiny backbone the tests share: the real architecture, trained for a handful of steps (built once, ~15 s)
TEST_BACKBONE = {"vae_steps": 8, "unet_pretrain_steps": 8, "text_encoder_steps": 4, "pretraining_images_per_species": 4}


def experiment(world: Path, runs_dir: Path, **sections):
    """An experiment config on the tiny world with the test backbone and small training/sampling budgets;
    `sections` override nested keys, e.g. `train={"steps_per_stage": 3}`."""
    from taxabench.config import config_from_dict

    data = {
        "name": "test",
        "runs_dir": str(runs_dir),
        "jobs": 1,  # steps one after the other, in the test's process (tests that want parallel jobs set it)
        "data": {"root": str(world)},
        "backbone": {"tiny": dict(TEST_BACKBONE)},
        "train": {"steps_per_stage": 2, "batch_size": 4, "checkpoint_every": 1},
        "sample": {"images_per_taxon": 2, "steps": 3, "batch_size": 8},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            merged = dict(data[section])
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
            data[section] = merged
        else:
            data[section] = values
    return config_from_dict(data)


@pytest.fixture(scope="session")
def tiny_data(tiny_world: Path):
    """The tiny world loaded with the default data config."""
    from taxabench.config import DataConfig
    from taxabench.data import load_dataset

    return load_dataset(DataConfig(root=str(tiny_world)))


@pytest.fixture(scope="session")
def tiny_backbone(tiny_world: Path, tiny_data, tmp_path_factory: pytest.TempPathFactory):
    """(folder, identity) of the test tiny backbone, built once per session into the session's TAXABENCH_HOME."""
    from taxabench.backbone import ensure_tiny_backbone

    config = experiment(tiny_world, tmp_path_factory.mktemp("runs"))
    return ensure_tiny_backbone(tiny_data, config.data, config.backbone.tiny, show_progress=False)


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


@pytest.fixture(scope="session")
def small_world(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three species of the tiny world with four training and two test images each, as a folder of its own: an
    epoch is three steps of batch 4, so short runs cross epochs (copies, not links: the root check resolves links)."""
    import csv
    import shutil

    root = tmp_path_factory.mktemp("small-world")
    with open(tiny_world / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    species = list(dict.fromkeys(r["species"] for r in rows))[:3]
    kept, counts = [], {}
    for row in rows:
        key = (row["species"], row["split"])
        if row["species"] in species and counts.get(key, 0) < (4 if row["split"] == "train" else 2):
            counts[key] = counts.get(key, 0) + 1
            kept.append(row)
            (root / row["file_name"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tiny_world / row["file_name"], root / row["file_name"])
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return root


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """HF_HUB_CACHE and TORCH_HOME pointed at fresh folders for the module (restored afterwards), for the real-weights
    stand-ins (tests/standins.py) a module builds into them."""
    import standins

    with standins.pointed_caches(tmp_path_factory.mktemp("caches")) as root:
        yield root
