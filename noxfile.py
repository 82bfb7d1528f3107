"""nox sessions: tests, slow, realweights, lint, demo, bench, faults. Run `nox -l` to list them.

Every session shares one virtualenv (`.nox/taxabench`): torch alone is ~5 GB, so a venv per session would cost
minutes and gigabytes. It is created once and reinstalled only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
ROOT = Path(__file__).parent
ENV = ROOT / ".nox" / "taxabench"


def shared_env(session: nox.Session) -> Path:
    """The shared venv's bin folder, (re)installing the project with its dev extra when pyproject.toml changed."""
    python = ENV / "bin" / "python"
    stamp = ENV / ".installed-pyproject-sha256"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(ENV), external=True)
    if not stamp.exists() or stamp.read_text() != digest:
        session.run(str(python), "-m", "pip", "install", "--upgrade", "pip", external=True)
        session.run(str(python), "-m", "pip", "install", "-e", f"{ROOT}[dev]", external=True)
        stamp.write_text(digest)
    return ENV / "bin"


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The default offline test suite (fast: slow and CUDA tests are excluded)."""
    bin_ = shared_env(session)
    session.run(str(bin_ / "pytest"), *session.posargs, external=True)


@nox.session(venv_backend="none")
def slow(session: nox.Session) -> None:
    """Only the tests marked slow (multi-process training, longer end-to-end runs)."""
    bin_ = shared_env(session)
    session.run(str(bin_ / "pytest"), "-m", "slow", *session.posargs, external=True)


@nox.session(venv_backend="none")
def realweights(session: nox.Session) -> None:
    """The real-weights path offline: SD 1.5 / BioCLIP / Inception / VGG16 stand-ins in their real cache layouts
    through `taxabench weights`, a `taxabench run` of configs/fishnet.yaml and diffusers; LPIPS at 512 px against
    the lpips package; FID and the BioCLIP score against pytorch-fid, clean-fid, torch-fidelity, torchmetrics and
    open_clip (tests/test_realweights*.py, tests/test_metrics_lpips.py; about 15 minutes on 2 cores)."""
    bin_ = shared_env(session)
    session.run(str(bin_ / "pytest"), "-m", "not cuda", "tests/test_realweights.py", "tests/test_realweights_metrics.py",
                "tests/test_metrics_lpips.py",
                *session.posargs, external=True)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    bin_ = shared_env(session)
    session.run(str(bin_ / "ruff"), "check", ".", external=True)


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """The main job on the embedded default: `taxabench demo` (SynthTaxa tiny, tiny backbone, three methods)."""
    bin_ = shared_env(session)
    session.run(str(bin_ / "taxabench"), "demo", *session.posargs, external=True)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Throughput harnesses on this CPU (tiny size): training, sampling, evaluation -> reports/perf/cpu.md.

    Ratios against the authors' configuration, measured interleaved in one run (benchmarks/harness.py). Extra
    arguments go to every harness, e.g. `nox -s bench -- --repeats 3`. On a GPU, run benchmarks/gpu_check.sh.
    """
    bin_ = shared_env(session)
    session.run(str(bin_ / "python"), "-m", "benchmarks", "--size", "tiny", "--device", "cpu",
                "--out", str(ROOT / "reports" / "perf" / "cpu.md"), "--", *session.posargs, external=True)


@nox.session(venv_backend="none")
def faults(session: nox.Session) -> None:
    """The fault-injection sweep: a small run killed at every kind of point a clean run passes (optimizer steps, each
    kind of run-file write) at its first, second and middle occurrence, in chains of kills; a real run's own process
    and its process group SIGKILLed with workers busy, SIGINT and SIGTERM, a second run started beside it, one rank
    of a two-process torchrun killed; each rerun and compared byte for byte with an uninterrupted run
    (tests/test_faults.py; prints each chain's kill points)."""
    bin_ = shared_env(session)
    session.run(str(bin_ / "pytest"), "-s", "-m", "slow", "tests/test_faults.py", *session.posargs, external=True)
