"""`taxabench run`: from one config to a report — data, backbone, metric models, train, sample, eval, report.

Each step is skipped when it already finished for the same inputs (`taxabench.steps`), and each is resumable
inside (training from its accelerate state, sampling skipping finished images, evaluation from feature caches),
so a killed run finishes with the same command, with the same numbers. The run folder holds everything needed
to reproduce it: `config.yaml` (the resolved config), `provenance.json`, `steps.json`, `checkpoints/`,
`samples/`, `metrics/`, `report/`.

Guidance ablation: `sample.guidance_ablation: [cfg]` also samples (and evaluates) every method that has that
guidance kind besides its default, into `samples/<method>+cfg/`; the report puts it next to the method.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from taxabench.config import ExperimentConfig, load_config
from taxabench.files import write_json, write_text
from taxabench.steps import Ledger, Step, check_steps, fingerprint, run_steps

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
GUIDANCE_SEPARATOR = "+"


@dataclass(frozen=True)
class SampleEntry:
    """One sample folder: a trained method sampled with one guidance kind (None: the method's default)."""

    method: str
    guidance: str | None

    @property
    def name(self) -> str:
        return self.method if self.guidance is None else f"{self.method}{GUIDANCE_SEPARATOR}{self.guidance}"


def sample_entries(config: ExperimentConfig) -> list[SampleEntry]:
    """Every method with its default guidance, then the guidance-ablation variants each method supports."""
    from taxabench.methods import get_method

    entries = [SampleEntry(m, None) for m in config.methods]
    for method in config.methods:
        cls = get_method(method)
        for kind in config.sample.guidance_ablation:
            if kind in cls.guidance_kinds and kind != cls.default_guidance:
                entries.append(SampleEntry(method, kind))
    return entries


def plan(config: ExperimentConfig, run_dir: Path, show_progress: bool = True) -> list[Step]:
    """The run's steps, in order, each with the fingerprint of everything that decides its outputs."""
    from accelerate import PartialState

    from taxabench.backbone import load_backbone, resolve_backbone
    from taxabench.data import load_dataset
    from taxabench.methods import get_method
    from taxabench.metrics import evaluate, prepare_extractors
    from taxabench.metrics.evaluation import rebuild_table
    from taxabench.report import write_report
    from taxabench.sample import sample_method, samples_dir, stage_grid
    from taxabench.train import cpu_only, method_dir, train_method

    for method in config.methods:  # unknown names and bad options fail before any work
        get_method(method).parse_options(config.method_options.get(method), f"method_options.{method}")
    state = PartialState(cpu=cpu_only())
    with state.main_process_first():  # SynthTaxa is generated once, by the main process
        data = load_dataset(config.data)
    data_fp = data.fingerprint()

    def main_first(action):
        """Under several processes: the main one builds (tiny backbone, synthclip), the others then read it."""
        def run_it() -> None:
            with state.main_process_first():
                action()
        return run_it

    def nothing() -> None:
        return None

    backbone_fp = fingerprint("backbone", config.backbone, config.data.image_size, data_fp)
    steps = [
        Step("backbone", backbone_fp, main_first(lambda: load_backbone(config, data, show_progress=show_progress)),
             clean=lambda: _remove_built_backbone(config, data, resolve_backbone)),
        Step("metric-models", fingerprint("metric-models", config.eval, data_fp),
             main_first(lambda: prepare_extractors(config)), clean=nothing),
    ]
    train_fps = {}
    for method in config.methods:
        train_fps[method] = fingerprint("train", config.seed, config.train, config.method_options.get(method),
                                        method, backbone_fp, data_fp)
        steps.append(Step(
            f"train/{method}", train_fps[method],
            lambda method=method: train_method(config, method, run_dir, data=data, show_progress=show_progress),
            clean=lambda method=method: shutil.rmtree(method_dir(run_dir, method), ignore_errors=True),
            after=("backbone",), outputs=(method_dir(run_dir, method) / "manifest.json",),
        ))
    eval_fps = []
    for entry in sample_entries(config):
        sample_config = config if entry.guidance is None else replace(
            config, sample=replace(config.sample, guidance=entry.guidance))
        sample_fp = fingerprint("sample", config.seed, sample_config.sample, train_fps[entry.method])
        def sample(entry=entry, sample_config=sample_config) -> None:
            sample_method(sample_config, entry.method, run_dir, output=entry.name, show_progress=show_progress)
            if entry.guidance is None and state.is_main_process and _stages(run_dir, entry.method) > 1:
                stage_grid(config, entry.method, run_dir)  # the report's "across progressive stages" figure

        steps.append(Step(
            f"sample/{entry.name}", sample_fp, sample,
            clean=lambda entry=entry: shutil.rmtree(samples_dir(run_dir, entry.name), ignore_errors=True),
            after=(f"train/{entry.method}",), outputs=(samples_dir(run_dir, entry.name) / "metadata.jsonl",),
        ))
        eval_fp = fingerprint("eval", config.eval, config.data, sample_fp, data_fp)
        eval_fps.append(eval_fp)
        steps.append(Step(
            f"eval/{entry.name}", eval_fp,
            lambda entry=entry: evaluate(config, entry.name, run_dir, show_progress=show_progress),
            clean=lambda entry=entry: _remove_metrics(run_dir, entry.name),
            after=(f"sample/{entry.name}", "metric-models"), outputs=(run_dir / "metrics" / f"{entry.name}.json",),
        ))

    def report() -> None:
        if state.is_main_process:  # all.csv is derived from the per-method JSONs: rebuilt whole, in the run's order
            rebuild_table(run_dir, [e.name for e in sample_entries(config)])
            write_report(run_dir)

    steps.append(Step("report", fingerprint("report", eval_fps), report,
                      clean=lambda: shutil.rmtree(run_dir / "report", ignore_errors=True),
                      after=tuple(f"eval/{e.name}" for e in sample_entries(config)),
                      outputs=(run_dir / "metrics" / "all.csv", run_dir / "report" / "README.md")))
    return steps


def run(config: ExperimentConfig, force: list[str] | None = None, show_progress: bool = True,
        console: Console | None = None) -> Path:
    """Run (or resume) the whole experiment; returns the report's path."""
    from accelerate import PartialState

    from taxabench.metrics.evaluation import SmallSampleWarning
    from taxabench.provenance import provenance
    from taxabench.train import cpu_only

    state = PartialState(cpu=cpu_only())  # one process, or each of `accelerate launch` / `torchrun`'s
    main = state.is_main_process
    console = console or Console(quiet=not main)
    run_dir = config.run_dir
    steps = plan(config, run_dir, show_progress=show_progress and main)
    ledger = Ledger(run_dir / "steps.json", writable=main)
    check_steps(steps, ledger, force or [])  # a refused config leaves the run folder's config.yaml as it was
    if main:
        write_text(run_dir / "config.yaml", config.to_yaml(), "config")
        record = {**provenance(), "processes": state.num_processes, "config_fingerprint": config.fingerprint()}
        write_json(run_dir / "provenance.json", record, "provenance")
    for step in steps:
        step.action, step.clean = _together(step.action, state), _together(step.clean, state, main_only=True)
    with warnings.catch_warnings():
        # small-sample warnings are recorded in metrics/<method>.json and listed by the report
        warnings.simplefilter("ignore", SmallSampleWarning)
        run_steps(steps, ledger, force or [], console)
    return run_dir / "report" / "README.md"


def _together(action, state, main_only: bool = False):
    """Every process finishes `action` (or waits for the main one to) before any goes on to the next step."""
    def run_it() -> None:
        if state.is_main_process or not main_only:
            action()
        state.wait_for_everyone()
    return run_it


def demo_config(out: str | Path | None = None) -> ExperimentConfig:
    """The embedded default experiment (configs/demo.yaml), writing under `out` (default: `runs/`)."""
    config = load_config(DEMO_CONFIG)
    if out is not None:
        config = replace(config, runs_dir=str(out))
    return config


def _remove_built_backbone(config: ExperimentConfig, data, resolve_backbone) -> None:
    """A forced backbone step rebuilds the tiny backbone; a user's own backbone folder is never deleted."""
    if config.backbone.source == "tiny":
        path, _ = resolve_backbone(config, data, show_progress=False)
        shutil.rmtree(path, ignore_errors=True)


def _stages(run_dir: Path, method: str) -> int:
    from taxabench.train import MANIFEST, method_dir

    return len(json.loads((method_dir(run_dir, method) / MANIFEST).read_text())["stages"])


def _remove_metrics(run_dir: Path, name: str) -> None:
    from taxabench.metrics.evaluation import rebuild_table, table_methods

    (run_dir / "metrics" / f"{name}.json").unlink(missing_ok=True)
    table_path = run_dir / "metrics" / "all.csv"
    if table_path.is_file():
        rebuild_table(run_dir, [m for m in table_methods(table_path) if m != name])
