"""The `taxabench` command line: thin typer commands that build a config, call the library, print with rich.

Expected failures (bad config, bad data, missing weights) print one red line; `taxabench --debug ...` shows
the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from taxabench.config import DataConfig, ExperimentConfig, UnseenSpecies, load_config
from taxabench.errors import TaxabenchError

console = Console()
app = typer.Typer(
    help="taxabench: train, sample, evaluate and report taxonomy-conditioned species image generators.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Generate SynthTaxa and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
backbone_app = typer.Typer(help="Build or inspect the SD-format backbone methods start from.", no_args_is_help=True)
app.add_typer(backbone_app, name="backbone")
weights_app = typer.Typer(help="Show where pretrained weights resolve from; build synthclip.")
app.add_typer(weights_app, name="weights")
config_app = typer.Typer(
    help="The configs shipped with taxabench: list them, print one to start your own "
         "(taxabench config show fishnet > my.yaml).",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")

_state = {"debug": False}

ConfigOption = Annotated[Path, typer.Option(
    "--config", "-c", help="Experiment YAML (start from a shipped one: `taxabench config list`).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value, e.g. --set train.batch_size=4 (repeatable)."),
]


def _print_version(value: bool) -> None:
    if value:
        from taxabench import __version__

        console.print(f"taxabench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print taxabench's version and exit.")] = False,
) -> None:
    _state["debug"] = debug


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM (`kill`, a scheduler's time limit), raised where the process is. Not a
    KeyboardInterrupt, which click would turn into its own exit before the command could say what it stopped."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


INTERRUPTED_EXIT = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report them


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; tests call it in-process with an argument list.

    SIGINT (Ctrl-C) and SIGTERM stop the command with one line naming the step that was interrupted and the command
    that resumes it, and exit 130 and 143."""
    import shlex
    import signal
    import threading

    from taxabench.steps import in_progress

    argv = sys.argv[1:] if argv is None else list(argv)
    in_progress.set(())
    handled = (signal.SIGINT, signal.SIGTERM)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.signal(signum, _interrupt) for signum in handled} if in_main_thread else {}
    try:
        app(args=argv, prog_name="taxabench")  # click handles usage errors itself and exits
    except TaxabenchError as error:
        if _state["debug"]:
            raise
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        return 1
    except Interrupted as interrupt:
        steps = ", ".join(in_progress.names) or (argv[0] if argv else "taxabench")
        console.print(f"[bold yellow]interrupted[/] ({interrupt.signal_name}) during {steps}; finished work is kept, "
                      f"and the same command resumes: taxabench {shlex.join(argv)}", highlight=False, soft_wrap=True)
        return INTERRUPTED_EXIT[interrupt.signal_name]
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _interrupt(signum, frame) -> None:
    import signal

    raise Interrupted(signal.Signals(signum).name)


def cli() -> None:
    """The `taxabench` console script."""
    sys.exit(main())


# ---------------------------------------------------------------------------------------------------------------
# list
# ---------------------------------------------------------------------------------------------------------------


# title -> (module, attribute) of each registry `taxabench list` shows
REGISTRIES = {
    "datasets": ("taxabench.data.registry", "DATASETS"),
    "methods": ("taxabench.methods", "METHODS"),
    "metrics": ("taxabench.metrics.registry", "METRICS"),
    "feature extractors": ("taxabench.metrics.registry", "EXTRACTORS"),
    "sample layouts (taxabench eval --samples)": ("taxabench.metrics.registry", "SAMPLE_LAYOUTS"),
}


@app.command("list")
def list_registries() -> None:
    """Show every registry: datasets, methods, metrics and feature extractors, with a line on each.

    Plug-ins (entry points `taxabench.datasets`, `taxabench.methods`, `taxabench.metrics`, `taxabench.extractors`)
    are listed with the distribution that registered them; built-ins are not imported to list them.
    """
    import importlib

    from rich.markup import escape

    from taxabench.registry import BUILT_IN

    for title, (module, attribute) in REGISTRIES.items():
        registry = getattr(importlib.import_module(module), attribute)
        table = Table(title=title, title_justify="left", show_header=False, box=None)
        for entry in registry.entries():
            line = escape(entry.description)
            if entry.origin != BUILT_IN:  # first, so that no wrapping hides where it came from
                line = f"[cyan](plug-in: {escape(entry.origin)})[/] {line}"
            if "generates_unseen_species" in entry.attributes:  # methods: data.unseen_species
                unseen = entry.attributes["generates_unseen_species"]
                line += (" [dim](unseen species: " + ("yes" if unseen else "not applicable")
                         + f", {escape(str(entry.attributes.get('unseen_species_reason', '')))})[/]")
            table.add_row(f"[bold]{escape(entry.name)}[/]", line)
        console.print(table)
        console.print()


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the world into (PNGs + metadata.csv; also a Hugging Face ImageFolder).")],
    preset: Annotated[str, typer.Option(help="World size: tiny (32 species), small (108), inat-like (7 ranks); tiny-domain, small-domain: a constant top rank.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed of the world: names, traits, long tail, every pixel.")] = 0,
) -> None:
    """Generate a SynthTaxa world: a procedural taxonomy whose ranks own visual traits (coarse ranks decide the body
    plan and colour, fine ranks the pattern and marks), with a long tail of training images per species."""
    from taxabench.data.synthtaxa import generate, spec_for

    root = generate(spec_for(preset, seed), out)
    info = json.loads((root / "synthtaxa.json").read_text())
    console.print(f"SynthTaxa [bold]{preset}[/] (seed {seed}): {info['images']} images of {info['species']} species in {root}")


@data_app.command("stats")
def data_stats(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Experiment YAML; uses its data: section.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset adapter name (`taxabench list`).")] = None,
    root: Annotated[Path | None, typer.Option(help="Dataset folder.")] = None,
    annotations: Annotated[Path | None, typer.Option(help="Annotation file, when not the adapter's default.")] = None,
    split: Annotated[str | None, typer.Option(help="Count only this split.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Count images, species and taxa per rank; summarise the long tail; list what was skipped and why."""
    from taxabench.data import load_dataset

    if config is not None:
        if dataset or root:
            raise TaxabenchError("give either --config or --dataset/--root, not both (--annotations may go with "
                                 "--config: it replaces the config's data.annotations)")
        data_config = load_config(config).data
        if annotations is not None:
            data_config.annotations = str(annotations)
    elif dataset is not None:
        data_config = DataConfig(dataset=dataset, root=str(root) if root else None,
                                 annotations=str(annotations) if annotations else None)
    else:
        raise TaxabenchError("give --config FILE, or --dataset NAME with --root DIR")
    if split is not None:  # one split's counts: nothing is evaluated, so nothing is withheld for evaluation either
        data_config.train_split, data_config.eval_split = split, None
        data_config.unseen_species = UnseenSpecies()
    stats = load_dataset(data_config).stats()
    if as_json:
        sys.stdout.write(json.dumps(stats, indent=2) + "\n")
        return
    _print_stats(stats)


def _print_stats(stats: dict) -> None:
    console.print(
        f"[bold]{stats['dataset']}[/]: {stats['images']} images "
        f"(train {stats['images_per_split']['train']}, eval {stats['images_per_split']['eval']}), "
        f"{stats['species']} species"
    )
    ranks = Table("rank", "taxa", title="taxa per rank", title_justify="left")
    for rank, count in stats["per_rank"].items():
        ranks.add_row(rank, str(count))
    console.print(ranks)
    tail = stats["long_tail"]
    console.print(
        f"training images per species: min {tail['min']}, median {tail['median']}, max {tail['max']}; "
        f"{tail['rare_species']} rare species (at most {stats['rare_threshold']} images)"
    )
    for rank, names in stats["homonyms"].items():
        console.print(f"[yellow]{rank} names under several parents (kept as separate taxa):[/] "
                      + ", ".join(f"{name} ×{n}" for name, n in names.items()))
    if stats["skipped"]:
        skipped = Table("reason", "records", "first examples", title="skipped", title_justify="left")
        for reason, count in stats["skipped"].items():
            skipped.add_row(reason, str(count), "; ".join(stats["skipped_examples"].get(reason, [])))
        console.print(skipped)
    for name, lineages in stats["lineage_conflicts"].items():
        console.print(f"[yellow]species {name!r} filed under {len(lineages)} lineages:[/] "
                      + "; ".join(f"{lineage} ({n} rows)" for lineage, n in lineages.items())
                      + " (data.on_lineage_conflict decides)")
    if stats.get("unseen_species"):
        console.print(f"withheld from training (data.unseen_species), {stats['images_per_split']['unseen']} "
                      f"evaluation images: " + ", ".join(stats["unseen_species"]))
    for note, count in stats["notes"].items():
        console.print(f"note: {count} {note}")
    rows = stats["rows"]
    console.print(f"rows read: {rows['read']} = {rows['images']} images + {rows['skipped']} skipped + "
                  f"{rows['noted']} left out under a note")


def experiment_config(config: Path, overrides: list[str] | None) -> ExperimentConfig:
    return load_config(config, overrides or [])


def writing_into(run_dir: Path):
    """Hold the run folder's lock (`taxabench.lock`) for a command that writes into it; under `accelerate launch` /
    `torchrun` the main process holds it for all of them."""
    import os
    from contextlib import nullcontext

    from taxabench.lock import run_folder_lock

    return run_folder_lock(run_dir) if os.environ.get("RANK", "0") == "0" else nullcontext()


# ---------------------------------------------------------------------------------------------------------------
# backbone, train
# ---------------------------------------------------------------------------------------------------------------

MethodOption = Annotated[str, typer.Option("--method", "-m", help="Registered method name (`taxabench list`).")]
RunOption = Annotated[
    Path | None, typer.Option("--run", help="Run folder; default: <runs_dir>/<name> from the config.")
]


@backbone_app.command("tiny")
def backbone_tiny(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Experiment YAML: its data: and backbone.tiny: sections.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Copy the built SD-format folder here.")] = None,
    overrides: SetOption = None,
    data: Annotated[Path | None, typer.Option("--data", help="Deprecated: the old name of --config.")] = None,
) -> None:
    """Build the tiny SD-format backbone (VAE, UNet, CLIP text encoder + tokenizer) offline from the dataset."""
    import shutil

    from taxabench.backbone import ensure_tiny_backbone
    from taxabench.data import load_dataset

    if data is not None:
        if config is not None:
            raise TaxabenchError("give --config only (--data is its deprecated old name)")
        Console(stderr=True).print("[yellow]warning:[/] --data is deprecated; use --config (same meaning)",
                                   highlight=False)
        config = data
    if config is None:
        raise TaxabenchError("give --config FILE (an experiment YAML; `taxabench config list` shows shipped ones)")
    experiment = experiment_config(config, overrides)
    loaded = load_dataset(experiment.data)
    folder, identity = ensure_tiny_backbone(loaded, experiment.data, experiment.backbone.tiny)
    if out is not None:
        if out.exists() and any(out.iterdir()):
            raise TaxabenchError(f"--out {out} exists and is not empty")
        shutil.copytree(folder, out, dirs_exist_ok=True)
        folder = out
    report = json.loads((folder / "build.json").read_text())
    console.print(
        f"tiny backbone [bold]{identity}[/] in {folder}: VAE reconstruction PSNR "
        f"{report['vae']['reconstruction_psnr_db']} dB (MSE {report['vae']['reconstruction_mse']}) on "
        f"{report['vae']['eval_images']} held-out images; UNet pre-trained to '{report['unet']['caption_rank']}' "
        f"captions, final loss {report['unet']['final_loss']}; built in {report['seconds']} s"
    )


@app.command("train")
def train(config: ConfigOption, method: MethodOption, run: RunOption = None, overrides: SetOption = None) -> None:
    """Train every stage of a method; the same command resumes a killed run (accelerate state per stage)."""
    from taxabench.train import train_method

    experiment = experiment_config(config, overrides)
    with writing_into(run or experiment.run_dir):
        folder = train_method(experiment, method, run)
    console.print(f"[bold]{method}[/] trained: {folder}")


# ---------------------------------------------------------------------------------------------------------------
# eval, weights
# ---------------------------------------------------------------------------------------------------------------


@app.command("eval")
def eval_command(
    config: ConfigOption,
    method: Annotated[str | None, typer.Option(
        "--method", "-m", help="Method whose samples to evaluate (samples/<method>/).")] = None,
    run: Annotated[Path | None, typer.Option("--run", help="Run folder; default: <runs_dir>/<name> of the config.")] = None,
    samples: Annotated[Path | None, typer.Option(
        "--samples", help="A folder of any generator's images instead (layouts: `taxabench list`); scored against "
                          "the config's dataset, written under --name.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name of --samples in the metrics (default: the "
                                                           "folder's name).")] = None,
    layout: Annotated[str, typer.Option("--layout", help="--samples layout: auto, folders or table.")] = "auto",
    unknown_taxa: Annotated[str, typer.Option(
        "--unknown-taxa", help="--samples images of taxa the dataset lacks: error, or skip (counted).")] = "error",
    overrides: SetOption = None,
) -> None:
    """Evaluate one method's samples, or a folder of any generator's images: every metric, per rank, with 95% CIs.

    Writes <run>/metrics/<name>.json and replaces its rows in <run>/metrics/all.csv.
    """
    import warnings

    from taxabench.metrics import evaluate
    from taxabench.metrics.evaluation import SmallSampleWarning
    from taxabench.metrics.external_samples import read_external_samples

    if (method is None) == (samples is None):
        raise TaxabenchError("give either --method (a run's samples) or --samples (a folder of images)")
    if unknown_taxa not in ("error", "skip"):
        raise TaxabenchError(f"--unknown-taxa: 'error' or 'skip', got {unknown_taxa!r}")
    external = None
    if samples is not None:
        method = name or samples.resolve().name

        def external(taxonomy):
            return read_external_samples(samples, method, taxonomy, layout, unknown_taxa)

    experiment = experiment_config(config, overrides)
    with warnings.catch_warnings(), writing_into(run or experiment.run_dir):
        warnings.simplefilter("ignore", SmallSampleWarning)  # printed below, once, with the table
        result = evaluate(experiment, method, run, samples=external)
    if samples is not None:
        images = result.samples.images
        console.print(f"{samples}: {len(images)} images of {len({i.taxon.id for i in images})} taxa "
                      f"({result.samples.rank})" +
                      "".join(f"; skipped {n}: {why}" for why, n in result.samples.skipped.items()), highlight=False)
    table = Table("metric", "value", "95% CI", "N real / generated", "weights", title=f"{method}: overall",
                  title_justify="left")
    for m in result.headline():
        table.add_row(m.name, f"{m.scope.value:.4g}", f"[{m.scope.ci_low:.4g}, {m.scope.ci_high:.4g}]",
                      f"{m.scope.n_real} / {m.scope.n_generated}", m.weights)
    console.print(table)
    for note in result.warnings:
        console.print(f"[yellow]warning:[/] {note}", highlight=False)
    console.print(f"wrote {result.json_path} and {result.csv_path}")


@weights_app.callback(invoke_without_command=True)
def weights_list(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Experiment YAML (explicit weights, data).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of rows (extractor, component, use, "
                                                         "found, where, blocks_the_run) instead of the table.")] = False,
) -> None:
    """What a run of the config loads: where each weights file resolves from now, or what is missing and how to get
    it (exit status 1 when something the run needs is missing).

    The table says what is found or missing; below it each row's path, or the commands and environment variable
    that provide it, in full (long lines are not cut, so they can be copied). Nothing is downloaded or built."""
    if ctx.invoked_subcommand is not None:
        return
    from dataclasses import asdict

    from taxabench.metrics import weights_table

    rows = weights_table(load_config(config) if config else None)
    blocking = [row for row in rows if row.blocks_the_run]
    message = (f"{len(blocking)} weights the run needs are missing: "
               + ", ".join(f"{row.extractor} ({row.component})" for row in blocking))
    if as_json:
        sys.stdout.write(json.dumps([{**asdict(row), "blocks_the_run": row.blocks_the_run} for row in rows],
                                    indent=2) + "\n")
        if blocking:
            Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        return
    table = Table(title="weights", title_justify="left")
    for column in ("extractor", "weights", "use", "status", "details"):
        table.add_column(column, overflow="fold")  # never "…": a long hub id wraps
    for number, row in enumerate(rows, start=1):
        if row.found:
            status = "[green]found[/]"
        elif row.use in ("needed", "optional"):
            status = f"[{'red' if row.use == 'needed' else 'yellow'}]missing[/]"
        else:
            status = "[dim]not found[/]"
        table.add_row(row.extractor, row.component, row.use, status, f"\\[{number}] below")
    console.print(table)
    for number, row in enumerate(rows, start=1):  # in full, never cut: paths, commands and variables are copied
        console.print(f"[{number}] {row.extractor} ({row.component}): {row.where}", markup=False, highlight=False,
                      soft_wrap=True)
    if blocking:
        raise TaxabenchError(message)


@weights_app.command("build")
def weights_build(
    what: Annotated[str, typer.Argument(help="What to build: synthclip.")],
    config: ConfigOption,
    overrides: SetOption = None,
) -> None:
    """Build synthclip, the SynthTaxa reference model, for the config's dataset (cached; reused when present)."""
    from taxabench.metrics import build_synthclip

    if what != "synthclip":
        raise TaxabenchError(f"cannot build {what!r}: only synthclip is built by taxabench")
    build = build_synthclip(experiment_config(config, overrides))
    how = f"built in {build.seconds:.0f} s" if build.seconds is not None else "cached"
    accuracy = ", ".join(f"{rank} {value:.1f}%" for rank, value in build.report["zero_shot_top1"].items())
    console.print(f"synthclip {how}: {build.folder}")
    console.print(f"zero-shot top-1 on {build.report['eval_images']} held-out {build.report['eval_split']} images: "
                  f"{accuracy}")


@config_app.command("list")
def config_list() -> None:
    """The configs shipped with taxabench, with the first line of each (what it runs)."""
    from taxabench.config import shipped_configs

    table = Table("name", "what it runs", title="shipped configs (taxabench config show NAME > my.yaml)",
                  title_justify="left")
    for name, text in shipped_configs().items():
        header = " ".join(line.lstrip("#").strip() for line in text.splitlines()[:8] if line.startswith("#"))
        table.add_row(f"[bold]{name}[/]", header.split(". ")[0].split(": ")[0])
    console.print(table)


@config_app.command("show")
def config_show(
    name: Annotated[str, typer.Argument(help="A shipped config (`taxabench config list`), e.g. fishnet.")],
) -> None:
    """Print a shipped config as it is in the package, to copy and edit: taxabench config show fishnet > my.yaml"""
    from taxabench.config import shipped_config

    sys.stdout.write(shipped_config(name))


# ---------------------------------------------------------------------------------------------------------------
# run, demo, report
# ---------------------------------------------------------------------------------------------------------------


@app.command("run")
def run_command(
    config: ConfigOption,
    force: Annotated[
        list[str] | None,
        typer.Option("--force", help="Redo a step and every step after it, e.g. --force train/taxadiffusion or "
                                     "--force train (all methods). Repeatable."),
    ] = None,
    overrides: SetOption = None,
    no_stage_figure: Annotated[bool, typer.Option("--no-stage-figure", help="Skip the progressive methods' "
                                                  "across-stages figure (sample.stage_figure: false).")] = False,
) -> None:
    """Everything from one config: data, backbone, metric models, train, sample, eval, report.

    Finished steps are skipped when their inputs are unchanged, and every step resumes where it stopped, so a
    killed run finishes by rerunning the same command. Outputs go to <runs_dir>/<name>/.
    """
    from taxabench.run import run

    experiment = experiment_config(config, overrides)
    if no_stage_figure:
        experiment.sample.stage_figure = False
    report = run(experiment, force=force, console=console)
    console.print(f"\n[bold green]done[/]: report at {report}")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the run (the run is <out>/demo/).")] = Path("runs"),
    force: Annotated[list[str] | None, typer.Option("--force", help="Redo a step (see `taxabench run`).")] = None,
) -> None:
    """The embedded default, offline on a CPU: SynthTaxa tiny, the tiny backbone, synthclip, three methods."""
    from taxabench.run import demo_config, run

    report = run(demo_config(out), force=force, console=console)
    console.print(f"\n[bold green]done[/]: report at {report}")


@app.command("report")
def report_command(
    run: Annotated[Path, typer.Option("--run", help="Run folder holding metrics/all.csv.")],
) -> None:
    """Regenerate <run>/report/README.md and its figures from metrics/all.csv (nothing is recomputed)."""
    from taxabench.report import write_report

    with writing_into(run):
        console.print(f"report at {write_report(run)}")
@app.command("sample")
def sample(
    config: ConfigOption,
    method: MethodOption,
    run: RunOption = None,
    stage_grid: Annotated[
        bool, typer.Option("--stage-grid", help="Also draw the same taxa at every training stage (stages.png).")
    ] = False,
    overrides: SetOption = None,
) -> None:
    """Generate sample.images_per_taxon images of every taxon of sample.rank; a rerun skips finished images."""
    from taxabench.sample import sample_method
    from taxabench.sample import stage_grid as draw_stage_grid

    experiment = experiment_config(config, overrides)
    with writing_into(run or experiment.run_dir):
        folder = sample_method(experiment, method, run)
        console.print(f"[bold]{method}[/] samples: {folder} (metadata.jsonl, grid.png)")
        if stage_grid:
            console.print(f"stage grid: {draw_stage_grid(experiment, method, run)}")
