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
from taxabench.steps import Ledger, Step, fingerprint, run_steps

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
            after=("backbone",),
        ))
    eval_fps = []
    for entry in sample_entries(config):
        sample_config = config if entry.guidance is None else replace(
            config, sample=replace(config.sample, guidance=entry.guidance))
        # the stage figure has a step of its own: switching it off changes no samples
        sample_fp = fingerprint("sample", config.seed, replace(sample_config.sample, stage_figure=True),
                                train_fps[entry.method])
        def sample(entry=entry, sample_config=sample_config) -> None:
            sample_method(sample_config, entry.method, run_dir, output=entry.name, show_progress=show_progress)

        steps.append(Step(
            f"sample/{entry.name}", sample_fp, sample,
            clean=lambda entry=entry: shutil.rmtree(samples_dir(run_dir, entry.name), ignore_errors=True),
            after=(f"train/{entry.method}",),
        ))
        if entry.guidance is None and config.sample.stage_figure:
            steps.append(Step(
                f"figure/{entry.name}", fingerprint("stage-figure", sample_fp, config.data.image_size),
                lambda entry=entry: _stage_figure(config, entry.method, run_dir, state, stage_grid),
                clean=lambda entry=entry: (samples_dir(run_dir, entry.name) / "stages.png").unlink(missing_ok=True),
                after=(f"sample/{entry.name}",),
            ))
        eval_fp = fingerprint("eval", config.eval, config.data, sample_fp, data_fp)
        eval_fps.append(eval_fp)
        steps.append(Step(
            f"eval/{entry.name}", eval_fp,
            lambda entry=entry: evaluate(config, entry.name, run_dir, show_progress=show_progress),
            clean=lambda entry=entry: _remove_metrics(run_dir, entry.name),
            after=(f"sample/{entry.name}", "metric-models"),
        ))
    steps.append(Step("report", fingerprint("report", eval_fps),
                      lambda: write_report(run_dir) if state.is_main_process else None,
                      clean=lambda: shutil.rmtree(run_dir / "report", ignore_errors=True),
                      after=tuple(f"eval/{e.name}" for e in sample_entries(config))))
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
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config.to_yaml())
    steps = plan(config, run_dir, show_progress=show_progress and main)
    if main:
        record = {**provenance(), "processes": state.num_processes, "config_fingerprint": config.fingerprint()}
        (run_dir / "provenance.json").write_text(json.dumps(record, indent=2))
    for step in steps:
        step.action, step.clean = _together(step.action, state), _together(step.clean, state, main_only=True)
    with warnings.catch_warnings():
        # small-sample warnings are recorded in metrics/<method>.json and listed by the report
        warnings.simplefilter("ignore", SmallSampleWarning)
        run_steps(steps, Ledger(run_dir / "steps.json", writable=main), force or [], console)
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


def _stage_figure(config: ExperimentConfig, method: str, run_dir: Path, state, stage_grid) -> None:
    """The report's "across progressive stages" figure: a figure is never the reason a run stops."""
    if not state.is_main_process or _stages(run_dir, method) < 2:
        return
    try:
        stage_grid(config, method, run_dir)
    except Exception as error:  # the samples and metrics do not depend on it
        from rich.console import Console

        Console(stderr=True).print(
            f"[yellow]warning:[/] the stage figure of {method} failed ({type(error).__name__}: {error}); the run "
            f"goes on without it (draw it later with `taxabench sample --config FILE --method {method} "
            "--stage-grid`, or skip it with sample.stage_figure: false)", highlight=False)


def _stages(run_dir: Path, method: str) -> int:
    from taxabench.train import MANIFEST, method_dir

    return len(json.loads((method_dir(run_dir, method) / MANIFEST).read_text())["stages"])


def _remove_metrics(run_dir: Path, name: str) -> None:
    import pandas as pd

    (run_dir / "metrics" / f"{name}.json").unlink(missing_ok=True)
    table_path = run_dir / "metrics" / "all.csv"
    if table_path.is_file():
        table = pd.read_csv(table_path)
        table[table["method"] != name].to_csv(table_path, index=False)
