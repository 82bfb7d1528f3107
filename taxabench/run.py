"""`taxabench run`: from one config to a report — data, backbone, metric models, train, sample, eval, report.

Each step is skipped when it already finished for the same inputs (`taxabench.steps`), and each is resumable
inside (training from its accelerate state, sampling skipping finished images, evaluation from feature caches),
so a killed run finishes with the same command, with the same numbers. The run folder holds everything needed
to reproduce it: `config.yaml` (the resolved config), `provenance.json`, `steps.json`, `checkpoints/`,
`samples/`, `metrics/`, `report/`.

Guidance ablation: `sample.guidance_ablation: [cfg]` also samples (and evaluates) every method that has that
guidance kind besides its default, into `samples/<method>+cfg/`; the report puts it next to the method.

Unseen species (`data.unseen_species`): after its test sampling, each method that can condition on a species it
was not trained on (`Method.generates_unseen_species`) samples the withheld species with the same checkpoint,
guidance and scale, into `unseen/samples/<method>/`, and is evaluated there (point `unseen`); any other method gets
a not-applicable row with its reason.
"""

from __future__ import annotations

import json
import shutil
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from taxabench import budget
from taxabench.checkpoint import MANIFEST, cpu_only
from taxabench.config import ExperimentConfig, SampleConfig, UnseenSpecies, load_config
from taxabench.errors import TaxabenchError
from taxabench.files import read_json, write_json, write_text
from taxabench.layout import (
    GUIDANCE_SEPARATOR,
    POINT_FINAL,
    POINT_SWEEP,
    POINT_UNSEEN,
    SCALE_SEPARATOR,
    RunLayout,
    point_label,
    point_steps,
)
from taxabench.steps import (
    Ledger,
    Step,
    check_steps,
    fingerprint,
    in_progress,
    peak_memory,
    reset_peak_memory,
    run_steps,
)

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


@dataclass(frozen=True)
class SampleEntry:
    """One sample folder: a trained method sampled with one guidance kind (None: the method's default)."""

    method: str
    guidance: str | None

    @property
    def name(self) -> str:
        return self.method if self.guidance is None else f"{self.method}{GUIDANCE_SEPARATOR}{self.guidance}"


def sample_entries(config: ExperimentConfig) -> list[SampleEntry]:
    """Every method with its default guidance, then the guidance-ablation variants: a plain kind for each method that
    has it besides its default, `<method>+<kind>` for that method alone (which must have it)."""
    from taxabench.methods import get_method

    entries = [SampleEntry(m, None) for m in config.methods]
    for method in config.methods:
        cls = get_method(method)
        for index, asked in enumerate(config.sample.guidance_ablation):
            only, _, kind = asked.rpartition(GUIDANCE_SEPARATOR)
            if only and only != method:
                continue
            besides_default = kind in cls.guidance_kinds and kind != cls.default_guidance
            if only and not besides_default:
                raise TaxabenchError(f"sample.guidance_ablation[{index}]: {asked!r}, but {method} samples with "
                                     f"{', '.join(cls.guidance_kinds)} (default {cls.default_guidance}); name one of "
                                     "the others")
            if besides_default:
                entries.append(SampleEntry(method, kind))
    return entries


def plan(config: ExperimentConfig, run_dir: Path, show_progress: bool = True,
         console: Console | None = None) -> list[Step]:
    """The run's steps, in order, each with the fingerprint of everything that decides its outputs. `console`: where
    to say what the data's checks found (species filed under several lineages), whatever the setting."""
    from accelerate import PartialState

    from taxabench.backbone import load_backbone, resolve_backbone
    from taxabench.data import load_dataset
    from taxabench.methods import get_method
    from taxabench.metrics import evaluate, prepare_extractors
    from taxabench.metrics.evaluation import SEPARATE_METRICS as PROBE_METRICS
    from taxabench.metrics.evaluation import (
        check_eval_names,
        check_resample_by,
        resampling_changes_numbers,
        write_not_applicable,
    )
    from taxabench.probe import run_probe
    from taxabench.report import write_report
    from taxabench.sample import SETTINGS, damaged_samples, sample_method, stage_grid
    from taxabench.train import train_method

    layout = RunLayout(run_dir)
    for method in config.methods:  # unknown names and bad options fail before any work
        get_method(method).parse_options(config.method_options.get(method), f"method_options.{method}")
    check_eval_names(config)
    entries = sample_entries(config)  # a guidance ablation a method does not have fails here, before any work
    state = PartialState(cpu=cpu_only())
    with state.main_process_first():  # SynthTaxa is generated once, by the main process
        data = load_dataset(config.data)
    data_fp = data.fingerprint()
    if console is not None and data.lineage_conflicts:
        console.print(f"[yellow]{len(data.lineage_conflicts)} species filed under several lineages[/] "
                      f"(data.on_lineage_conflict: {config.data.on_lineage_conflict}): "
                      + ", ".join(data.lineage_conflicts) + " (`taxabench data stats` lists their rows)",
                      highlight=False)

    def main_first(action):
        """Under several processes: the main one builds (tiny backbone, synthclip), the others then read it."""
        def run_it() -> None:
            with state.main_process_first():
                action()
        return run_it

    def nothing() -> None:
        return None

    check_resample_by(config, data.ranks)
    # `eval.resample_by` is outside `config.eval`'s repr (so outside every fingerprint that hashes it): it enters the
    # fingerprints of the steps whose intervals it changes, only where it clusters (a folder evaluated before it
    # existed resumes with `resample_by: species`; under the default its evaluations must be redone, --force)
    resampled = [{"resample_by": config.eval.resample_by}] if resampling_changes_numbers(config, data.ranks) else []
    backbone_fp = fingerprint("backbone", config.backbone, config.data.image_size, data_fp)
    steps = [
        Step("backbone", backbone_fp, main_first(lambda: load_backbone(config, data, show_progress=show_progress)),
             clean=lambda: _remove_built_backbone(config, data, resolve_backbone)),
        Step("metric-models", fingerprint("metric-models", config.eval, data_fp),
             main_first(lambda: prepare_extractors(config)), clean=nothing),
    ]
    # the species withheld from training stay those of the test split's choice (a seeded `count` chooses among the
    # species with evaluation images, which another split could change)
    pinned = {"unseen_species": UnseenSpecies(names=data.unseen_species)} if data.unseen else {}
    along_config = replace(config, data=replace(config.data, eval_split=config.budget.split, **pinned),
                           sample=replace(config.sample, images_per_taxon=config.budget.images_per_taxon))
    labels = point_labels(config, len(data.train), state.num_processes)
    eval_fps, eval_names = [], []
    for seed in config.replica_seeds:
        seeded = config if seed is None else replace(config, seed=seed)
        along = along_config if seed is None else replace(along_config, seed=seed)
        suffix = "" if seed is None else f"/seed-{seed}"
        train_fps = {}
        for method in config.methods:
            parts = ["train", seeded.seed, config.train, config.method_options.get(method), method, backbone_fp,
                     data_fp]
            if labels:  # a run without budget points keeps the fingerprints of layout 1
                parts.append({"points": labels})
            train_fps[method] = fingerprint(*parts)
            steps.append(Step(
                f"train/{method}{suffix}", train_fps[method],
                lambda method=method, seed=seed: train_method(config, method, run_dir, data=data, seed=seed,
                                                              show_progress=show_progress),
                clean=lambda method=method, seed=seed: shutil.rmtree(layout.checkpoints(method, seed),
                                                                     ignore_errors=True),
                after=("backbone",), outputs=(layout.checkpoints(method, seed) / MANIFEST,),
            ))
            if config.probe.images_per_taxon:
                probe_fp = fingerprint("probe", config.probe, config.eval.bootstrap, config.eval.confidence,
                                       config.eval.seed, config.data.eval_split, train_fps[method], data_fp,
                                       *resampled)
                eval_fps.append(probe_fp)
                eval_names.append(f"probe/{method}{suffix}")
                steps.append(Step(
                    eval_names[-1], probe_fp,
                    lambda method=method, seed=seed: run_probe(config, method, run_dir, seed=seed)
                    if state.is_main_process else None,
                    clean=lambda method=method, seed=seed, value=seeded.seed: _remove_metrics(
                        layout, method, seed, value, metrics=PROBE_METRICS, json_name=f"{method}-probe"),
                    after=(f"train/{method}{suffix}",),
                    outputs=(layout.all_csv,),  # a deleted all.csv: every step that wrote rows writes them again
                ))
            for label in labels:
                point_fp = fingerprint("point", label, _drawing(along.sample), along.eval, along.data,
                                       train_fps[method], data_fp, *resampled)
                eval_fps.append(point_fp)
                eval_names.append(f"point/{method}{suffix}/{label}")

                def at_point(method=method, seed=seed, label=label, along=along) -> None:
                    folder = layout.checkpoints(method, seed)
                    if not _stages(layout, method, seed):
                        return  # a method that does not train has no budget points
                    sample_method(along_config, method, run_dir, output=method, seed=seed, point=label,
                                  show_progress=show_progress)
                    evaluate(along, method, run_dir, show_progress=show_progress, seed=seed, point=label,
                             budget_axes=budget.axes(folder, point_steps(label)))

                steps.append(Step(
                    eval_names[-1], point_fp, at_point,
                    clean=lambda method=method, seed=seed, label=label: _remove_point(layout, method, seed, label),
                    after=(f"train/{method}{suffix}", "metric-models"), outputs=(layout.all_csv,),
                ))
        for entry in entries:
            sample_config = seeded if entry.guidance is None else replace(
                seeded, sample=replace(config.sample, guidance=entry.guidance))
            kind = get_method(entry.method).default_guidance if entry.guidance is None else entry.guidance
            swept = {scale: f"{entry.name}{SCALE_SEPARATOR}{scale:g}" for scale in config.sample.guidance_sweep.get(kind, [])}
            sweep_fps = []
            for scale, name in swept.items():
                sweep_config = replace(along, sample=replace(along.sample, guidance=kind, guidance_scale=scale))
                sweep_fps.append(fingerprint("sweep", _drawing(sweep_config.sample), along.eval, along.data,
                                             train_fps[entry.method], data_fp))
                # the scale chosen reads the sweep's values, which resampling does not change: the sample step's
                # fingerprint chains `sweep_fps` without it
                eval_fps.append(fingerprint(sweep_fps[-1], *resampled) if resampled else sweep_fps[-1])
                eval_names.append(f"sweep/{name}{suffix}")

                def sweep(entry=entry, name=name, seed=seed, sweep_config=sweep_config) -> None:
                    sample_method(sweep_config, entry.method, run_dir, output=name, seed=seed, point=POINT_SWEEP,
                                  show_progress=show_progress)
                    evaluate(sweep_config, name, run_dir, show_progress=show_progress, seed=seed, point=POINT_SWEEP,
                             budget_axes=budget.axes(layout.checkpoints(entry.method, seed)))

                steps.append(Step(
                    eval_names[-1], eval_fps[-1], sweep,
                    clean=lambda name=name, seed=seed, value=seeded.seed: (
                        shutil.rmtree(layout.samples(name, seed, POINT_SWEEP), ignore_errors=True),
                        _remove_metrics(layout, name, seed, value, POINT_SWEEP)),
                    after=(f"train/{entry.method}{suffix}", "metric-models"), outputs=(layout.all_csv,),
                ))
            # switching the stage figure off (sample.stage_figure) changes no samples
            sample_fp = fingerprint("sample", seeded.seed, replace(sample_config.sample, stage_figure=True),
                                    train_fps[entry.method], *sweep_fps)

            def sample(entry=entry, sample_config=sample_config, seed=seed, swept=swept) -> None:
                if swept:  # the scale chosen on the validation split
                    scale = choose_scale(layout, entry.name, swept, seed, config.sample.guidance_select)
                    sample_config = replace(sample_config, sample=replace(sample_config.sample, guidance_scale=scale))
                sample_method(sample_config, entry.method, run_dir, output=entry.name, seed=seed,
                              show_progress=show_progress)
                if entry.guidance is None and config.sample.stage_figure:
                    _stage_figure(sample_config, entry.method, run_dir, seed, layout, state, stage_grid)

            steps.append(Step(
                f"sample/{entry.name}{suffix}", sample_fp, sample,
                clean=lambda entry=entry, seed=seed: shutil.rmtree(layout.samples(entry.name, seed),
                                                                   ignore_errors=True),
                after=(f"train/{entry.method}{suffix}", *[f"sweep/{n}{suffix}" for n in swept.values()]),
                outputs=(layout.samples(entry.name, seed) / "metadata.jsonl",),
                intact=lambda entry=entry, seed=seed: damaged_samples(layout.samples(entry.name, seed)),
            ))
            eval_fp = fingerprint("eval", config.eval, config.data, sample_fp, data_fp, *resampled)
            eval_fps.append(eval_fp)
            eval_names.append(f"eval/{entry.name}{suffix}")

            def evaluate_entry(entry=entry, seed=seed, seeded=seeded) -> None:
                axes = budget.axes(layout.checkpoints(entry.method, seed))
                evaluate(seeded, entry.name, run_dir, show_progress=show_progress, seed=seed, budget_axes=axes)

            steps.append(Step(
                eval_names[-1], eval_fp, evaluate_entry,
                clean=lambda entry=entry, seed=seed, value=seeded.seed: _remove_metrics(layout, entry.name, seed,
                                                                                         value),
                after=(f"sample/{entry.name}{suffix}", "metric-models"),
                # a deleted all.csv is written again by re-evaluating (from the feature caches): same rows, order
                outputs=(layout.metrics_json(entry.name, seed), layout.all_csv),
            ))
            if not data.unseen or entry.guidance is not None:
                continue
            unseen_fp = fingerprint("unseen", config.eval, config.data, sample_fp, data_fp, *resampled)
            eval_fps.append(unseen_fp)
            eval_names.append(f"unseen/{entry.name}{suffix}")

            def unseen(entry=entry, seed=seed, seeded=seeded) -> None:
                cls = get_method(entry.method)
                if not cls.generates_unseen_species:
                    if state.is_main_process:
                        write_not_applicable(seeded, entry.name, cls.unseen_species_reason, run_dir, seed)
                    return
                # the scale the test samples were made with (chosen by a guidance sweep, or sample.guidance_scale)
                settings = read_json(layout.samples(entry.name, seed) / SETTINGS,
                                     f"sample it again: `taxabench run --force sample/{entry.name}`")
                chosen = replace(seeded, sample=replace(seeded.sample, guidance_scale=settings["guidance_scale"]))
                sample_method(chosen, entry.method, run_dir, output=entry.name, seed=seed, point=POINT_UNSEEN,
                              show_progress=show_progress)
                evaluate(chosen, entry.name, run_dir, show_progress=show_progress, seed=seed, point=POINT_UNSEEN,
                         budget_axes=budget.axes(layout.checkpoints(entry.method, seed)))

            steps.append(Step(
                eval_names[-1], unseen_fp, unseen,
                clean=lambda entry=entry, seed=seed, value=seeded.seed: (
                    shutil.rmtree(layout.samples(entry.name, seed, POINT_UNSEEN), ignore_errors=True),
                    _remove_metrics(layout, entry.name, seed, value, POINT_UNSEEN)),
                after=(f"sample/{entry.name}{suffix}", "metric-models"), outputs=(layout.all_csv,),
            ))
    steps.append(Step("report", fingerprint("report", eval_fps),
                      lambda: write_report(run_dir) if state.is_main_process else None,
                      clean=lambda: shutil.rmtree(layout.report_dir, ignore_errors=True),
                      after=tuple(eval_names), outputs=(layout.report_dir / "README.md",)))
    return steps


def _drawing(sample: SampleConfig) -> SampleConfig:
    """What decides a budget point's or a sweep scale's images, for its step's fingerprint: the sample config without
    the fields that only choose which samplings a run makes (the guidance sweep and ablation lists, the metric a sweep
    is read by, the stage figure), so widening a sweep redoes no finished point or scale. The test sampling keeps the
    whole config in its fingerprint: which scale it uses depends on the sweep and the metric."""
    return replace(sample, guidance_sweep={}, guidance_ablation=[], guidance_select=SampleConfig.guidance_select,
                   stage_figure=True)


def run(config: ExperimentConfig, force: list[str] | None = None, show_progress: bool = True,
        console: Console | None = None) -> Path:
    """Run (or resume) the whole experiment; returns the report's path. Holds the run folder's lock
    (`taxabench.lock`) throughout: a second writer of the same folder is refused."""
    from accelerate import PartialState

    from taxabench.lock import run_folder_lock

    state = PartialState(cpu=cpu_only())  # one process, or each of `accelerate launch` / `torchrun`'s
    main = state.is_main_process
    console = console or Console(quiet=not main)
    with run_folder_lock(config.run_dir) if main else nullcontext():
        return _run_locked(config, state, force or [], show_progress, console)


def _run_locked(config: ExperimentConfig, state, force: list[str], show_progress: bool, console: Console) -> Path:
    from taxabench.metrics.evaluation import SmallSampleWarning
    from taxabench.provenance import provenance

    main = state.is_main_process
    run_dir = config.run_dir
    layout = RunLayout(run_dir)
    layout.check_readable()
    steps = plan(config, run_dir, show_progress=show_progress and main, console=console if main else None)
    ledger = Ledger(layout.steps_file, writable=main)
    check_steps(steps, ledger, force)  # a refused config leaves the run folder's config.yaml as it was
    if main:
        layout.mark()
        write_text(layout.config_file, config.to_yaml(), "config")
        record = {**provenance(), "processes": state.num_processes, "config_fingerprint": config.fingerprint()}
        write_json(layout.provenance_file, record, "provenance")
    for step in steps:
        step.action, step.clean = _together(step.action, state), _together(step.clean, state, main_only=True)
    with warnings.catch_warnings():
        # small-sample warnings are recorded in metrics/<method>.json and listed by the report
        warnings.simplefilter("ignore", SmallSampleWarning)
        jobs = job_count(config, state.num_processes)
        if jobs > 1 and not force:  # backbone and metric models, then trainings, then samplings: in parallel processes
            first = next((i for i, step in enumerate(steps) if step.name.startswith("train/")), len(steps))
            _run_in_parallel(config, steps[:first], ledger, jobs, console)
            for prefix in ("train/", "sample/"):
                _run_in_parallel(config, [s for s in steps if s.name.startswith(prefix)], ledger, jobs, console)
        run_steps(steps, ledger, force, console)
    return layout.report_dir / "README.md"


def job_count(config: ExperimentConfig, num_processes: int) -> int:
    """How many independent steps run at once: 1 under several accelerate processes or on a GPU, else `jobs`
    (None: the CPU cores this process may use)."""
    import os

    import torch

    if num_processes > 1 or torch.cuda.is_available():
        return 1
    return config.jobs or len(os.sched_getaffinity(0))


def _run_in_parallel(config: ExperimentConfig, steps: list[Step], ledger: Ledger, jobs: int, console: Console) -> None:
    """Run the steps not yet done whose inputs are, each in its own process (`jobs` at a time, the CPU threads
    shared out), and record them; a failure stops the run. Each step gets cores // jobs threads however many are
    pending, so that a resumed run computes with the same thread count as an uninterrupted one.

    The workers die with the run: each asks the kernel to kill it when this process ends (`kill -9` included), and
    an exception here (a failed step, Ctrl-C, SIGTERM) kills them before it goes on, so no worker writes into the
    run folder after the run that owns it stopped."""
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    import torch

    pending = [s for s in steps if s.name not in ledger.entries and all(a in ledger.entries for a in s.after)]
    if not pending:
        return
    workers = min(jobs, len(pending))
    threads = max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0))) // jobs)
    console.rule(f"[bold]{', '.join(s.name for s in pending)}: {workers} processes x {threads} threads")
    context = get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),))
    futures = {pool.submit(_step_in_process, config, step.name, threads): step for step in pending}
    try:
        running = set(futures)
        while running:
            in_progress.set(futures[f].name for f in running)
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                step = futures[future]
                ledger.record(step, *future.result())
                console.print(f"[dim]✓ {step.name}: {ledger.entries[step.name]['seconds']} s[/]")
    except BaseException:
        for child in context.active_children():  # the workers this run started
            child.kill()
        for child in context.active_children():
            child.join()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    in_progress.set(())
    pool.shutdown()


def die_with_parent(parent: int) -> None:
    """A worker's initializer: it is killed when `parent` (the run) ends, however it ends, and leaves Ctrl-C to it
    (a terminal sends SIGINT to the whole process group; the run stops its workers itself)."""
    import os
    import signal
    import sys
    import threading
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:  # no death signal: poll the parent

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="taxabench-parent-watch").start()
    if os.getppid() != parent:  # the run ended before the death signal was armed
        os._exit(1)


def _step_in_process(config: ExperimentConfig, name: str, threads: int) -> tuple[float, dict]:
    """One step of the run's plan, in a fresh process (see `_run_in_parallel`); returns its wall seconds and the
    process's peak memory."""
    import time

    import torch

    torch.set_num_threads(threads)
    step = next(s for s in plan(config, config.run_dir, show_progress=False) if s.name == name)
    reset = reset_peak_memory()
    start = time.perf_counter()
    step.action()
    return time.perf_counter() - start, peak_memory(reset)


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


def choose_scale(layout: RunLayout, entry: str, swept: dict[float, str], seed: int | None, metric: str) -> float:
    """The swept guidance scale that is best on `metric` (overall scope) on the validation split; the choice and
    the values behind it are written to `metrics/[seed-s/]<entry>-guidance.json` for the report."""
    values, higher = {}, None
    for scale, name in swept.items():
        report = json.loads(layout.metrics_json(name, seed, POINT_SWEEP).read_text())
        found = [m for m in report["measurements"] if m["metric"] == metric and m["scope"] == "overall"]
        if not found:
            raise TaxabenchError(f"sample.guidance_select: {metric!r} is not a metric of {name}'s evaluation "
                                 f"(it has {sorted({m['metric'] for m in report['measurements']})})")
        values[scale], higher = found[0]["value"], found[0]["higher_is_better"]
    finite = {k: v for k, v in values.items() if v is not None}
    chosen = (max if higher else min)(finite, key=finite.get) if finite else next(iter(values))
    path = layout.metrics_json(f"{entry}-guidance", seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"guidance_of": entry, "select_by": metric, "higher_is_better": higher,
                                "values": {f"{k:g}": v for k, v in values.items()}, "chosen": chosen}, indent=2))
    return chosen


def point_labels(config: ExperimentConfig, n_train: int, num_processes: int) -> list[str]:
    """The folder names of the run's budget points (each method checks they fit its schedule when it trains)."""
    from taxabench.train import global_batch

    batch = global_batch(config, num_processes)
    steps = {budget.to_steps(v, config.budget.unit, batch, n_train) for v in config.budget.points}
    return [point_label(s) for s in sorted(steps)]


def _stage_figure(config: ExperimentConfig, method: str, run_dir: Path, seed, layout: RunLayout, state,
                  stage_grid) -> None:
    """The report's "across progressive stages" figure, at data.image_size: never the reason a run stops."""
    if not state.is_main_process or _stages(layout, method, seed) < 2:
        return
    try:
        stage_grid(config, method, run_dir, seed=seed)
    except Exception as error:  # the samples and metrics do not depend on it
        Console(stderr=True).print(
            f"[yellow]warning:[/] the stage figure of {method} failed ({type(error).__name__}: {error}); the run "
            f"goes on without it (draw it later with `taxabench sample --config FILE --method {method} "
            "--stage-grid`, or skip it with sample.stage_figure: false / run --no-stage-figure)", highlight=False)


def _stages(layout: RunLayout, method: str, seed: int | None = None) -> int:
    return len(json.loads((layout.checkpoints(method, seed) / MANIFEST).read_text())["stages"])


def _remove_metrics(layout: RunLayout, name: str, seed: int | None, seed_value: int,
                    point: str = POINT_FINAL, metrics: frozenset[str] | None = None, json_name: str | None = None) -> None:
    """Remove one evaluation (or the probe: its `metrics`): its JSON and its rows of all.csv."""
    import pandas as pd

    from taxabench.metrics.evaluation import SEPARATE_METRICS, write_table

    layout.metrics_json(json_name or name, seed, None if point == POINT_FINAL else point).unlink(missing_ok=True)
    table_path = layout.all_csv
    if table_path.is_file():
        table = pd.read_csv(table_path)
        same = table["method"] == name
        same &= table["metric"].isin(metrics) if metrics is not None else ~table["metric"].isin(SEPARATE_METRICS)
        if "point" in table.columns:  # layout-1 tables have one seed and final rows only
            same &= (table["seed"] == seed_value) & (table["point"] == point)
        write_table(table_path, table[~same])


def _remove_point(layout: RunLayout, method: str, seed: int | None, label: str) -> None:
    shutil.rmtree(layout.samples(method, seed, label), ignore_errors=True)
    config = load_config(layout.config_file)
    _remove_metrics(layout, method, seed, config.seed if seed is None else seed, label)
