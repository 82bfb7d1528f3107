"""What produced a number: taxabench version and git commit, package versions, device, config hash."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

import taxabench

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "peft", "open_clip_torch",
            "torchmetrics", "lpips", "clean-fid", "numpy", "pillow")


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the taxabench checkout (with `+dirty` when it has uncommitted changes), if it is one."""
    where = path or Path(taxabench.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
        return f"{torch.cuda.device_count()}× {', '.join(sorted(names))} (CUDA {torch.version.cuda})"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def provenance() -> dict:
    return {
        "taxabench": taxabench.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "device": device_description(),
    }
