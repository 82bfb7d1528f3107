"""How long `taxabench list`, `--version` and every `--help` take, each in a fresh process (import time included).

    python -m benchmarks.cli_startup                                    # this checkout, 5 runs per command
    python -m benchmarks.cli_startup --before 6fccd9b --out reports/perf/cli.md

With `--before REV` the same commands also run from that git revision (exported with `git archive` into a
temporary folder and put first on PYTHONPATH), interleaved with this checkout's runs, so a busy machine slows both
alike. Each time is the wall clock from start to exit of `python -m taxabench ARGS` (stdout discarded). This is a
benchmark, not a test: it asserts nothing; the table goes to stdout and, with --out, to a markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = [
    ["--version"],
    ["--help"],
    ["list"],
    ["data", "synth", "--help"],
    ["data", "stats", "--help"],
    ["backbone", "tiny", "--help"],
    ["train", "--help"],
    ["sample", "--help"],
    ["eval", "--help"],
    ["weights", "--help"],
    ["config", "list"],
    ["run", "--help"],
    ["demo", "--help"],
    ["report", "--help"],
]


def time_command(tree: Path, args: list[str]) -> tuple[float, float] | None:
    """(wall, CPU) seconds from start to exit of `python -m taxabench ARGS` importing from `tree`; None when it
    failed (e.g. a command the tree does not have). CPU time (user + system of the child) depends much less on what
    else the machine runs than the wall time does."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "80"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "taxabench", *args], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (seconds, cpu) if result.returncode == 0 else None


def export_revision(revision: str, into: Path) -> Path:
    """The files of `revision` (git archive) under `into`."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True,
                             check=True).stdout
    tar_path = into / "tree.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def measure(trees: dict[str, Path], repeats: int) -> dict[str, dict[str, list[tuple[float, float] | None]]]:
    """command -> tree label -> (wall, CPU) seconds per run; one warm-up run each first (file cache), then
    interleaved."""
    times: dict[str, dict[str, list[tuple[float, float] | None]]] = {}
    for args in COMMANDS:
        key = " ".join(args)
        times[key] = {label: [] for label in trees}
        for tree in trees.values():
            time_command(tree, args)
        for _ in range(repeats):
            for label, tree in trees.items():
                times[key][label].append(time_command(tree, args))
    return times


def _cell(values: list[tuple[float, float] | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "fails (no such command)"
    wall = [v[0] for v in done]
    return (f"{statistics.median(wall):.2f} (min {min(wall):.2f}, max {max(wall):.2f}); "
            f"CPU {statistics.median(v[1] for v in done):.2f}")


def table(times: dict[str, dict[str, list[tuple[float, float] | None]]]) -> str:
    labels = list(next(iter(times.values())))
    lines = ["| command | " + " | ".join(f"{label}: wall s, median (min, max); CPU s, median" for label in labels)
             + " |", "|---|" + "---|" * len(labels)]
    for key, by_label in times.items():
        lines.append(f"| `taxabench {key}` | " + " | ".join(_cell(by_label[label]) for label in labels) + " |")
    return "\n".join(lines)


def machine() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), load average "
            f"before the run (1, 5, 15 min): {load}; Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per command and tree (default 5).")
    parser.add_argument("--before", help="A git revision to time alongside this checkout (e.g. main).")
    parser.add_argument("--out", type=Path, help="Also write the table to this markdown file.")
    args = parser.parse_args(argv)
    header = machine()
    with tempfile.TemporaryDirectory() as scratch:
        trees = {}
        if args.before:
            trees[f"before ({args.before})"] = export_revision(args.before, Path(scratch))
        trees["this checkout"] = ROOT
        times = measure(trees, args.repeats)
    text = table(times)
    print(header)
    print(text)
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        args.out.write_text(
            "# `taxabench` start-up: list, --version and every --help, in fresh processes\n\n"
            f"Measured on {datetime.date.today()} at commit {commit} (plus uncommitted changes, if any) on {header}. "
            f"Reproduce: `python -m benchmarks.cli_startup --repeats {args.repeats}"
            + (f" --before {args.before}" if args.before else "") + f" --out {args.out}`.\n\n"
            "Each cell: wall seconds from start to exit of `python -m taxabench ARGS`, median (min, max) of "
            f"{args.repeats} runs after one warm-up, runs of the trees interleaved; and the child's CPU seconds "
            "(user + system), which depend less on what else the shared machine runs.\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
