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
