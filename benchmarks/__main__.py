"""Run the three throughput harnesses (training, sampling, evaluation) and write one report.

    python -m benchmarks --out reports/perf/cpu.md                  # tiny size, CPU (`nox -s bench`)
    python -m benchmarks --size sd15 --out reports/perf/gpu.md      # SD-1.5 shape, 512 px (gpu_check.sh)

Options after `--` go to every harness (e.g. `-- --repeats 3`); `--only train,sample` picks harnesses.
`--levers` measures every throughput lever in the training and sampling harnesses (`--paths levers`), within
`--budget-s` seconds for all harnesses together (what benchmarks/gpu_check.sh runs).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import eval_speed, sample_speed, train_speed
from benchmarks.harness import ROOT, default_device, device_name

HARNESSES = {"train": train_speed, "sample": sample_speed, "eval": eval_speed}
LEVER_SHARES = {"train": 0.55, "sample": 0.45}  # of a --budget-s, between the harnesses that measure levers


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--only", default=",".join(HARNESSES), help="comma-separated: train, sample, eval")
    parser.add_argument("--out", type=Path, required=True, help="the report to write (replaced)")
    parser.add_argument("--levers", action="store_true",
                        help="training and sampling: every throughput lever (--paths levers) instead of the "
                             "authors' configuration against the defaults")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="with --levers: seconds for all harnesses together, shared out as each starts")
    args = parser.parse_args(own)
    device = args.device or default_device()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(HARNESSES))
    if unknown:
        parser.error(f"--only: unknown harness {unknown[0]!r}; choose from {', '.join(HARNESSES)}")

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"# taxabench throughput: {device_name(device)}, {args.size} size\n\n"
              f"Written by `python -m benchmarks --size {args.size}{' --levers' if args.levers else ''}` on {stamp} "
              f"at commit {_commit()}. Ratios are between paths timed in the same run, "
              f"{'each path alone on the device, one after the other' if args.levers else 'interleaved'}; see "
              "reports/perf/README.md for what each path is.\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sections = [header]
    started = time.monotonic()
    for index, name in enumerate(only):
        module = HARNESSES[name]
        extra = []
        if args.levers and name in LEVER_SHARES:
            extra = ["--paths", "levers"]
            if args.budget_s:
                # this harness's share of what is left: the later harnesses' shares stay theirs
                later = sum(LEVER_SHARES.get(other, 0.0) for other in only[index + 1:])
                left = args.budget_s - (time.monotonic() - started)
                extra += ["--budget-s", f"{max(0.0, left * LEVER_SHARES[name] / (LEVER_SHARES[name] + later)):.0f}"]
        options = module.parser().parse_args(["--size", args.size, "--device", device, *extra, *passthrough])
        module.resolve(options)
        sections.append(module.run(options))
        print(sections[-1], flush=True)
        args.out.write_text("\n".join(sections))  # after each harness: a time limit keeps what finished
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
