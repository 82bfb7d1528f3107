"""`taxabench report`: the run's markdown report and figures, a pure function of what the run folder holds.

`metrics/all.csv` is the single source of every number (schema: `taxabench.metrics.evaluation`); the run's
`config.yaml`, `provenance.json` and `steps.json` add the context, and the sample folders the pictures. Rerunning
the report changes nothing, and nothing here computes a metric.

Sections: the main table in the paper's shape (method × FD, KID, LPIPS, CLIP/BioCLIP score, species accuracy),
per-rank tables (every metric with rank scopes), rare vs common species (every metric with those scopes), ablations (method variants and guidance kinds, grouped by the
`ablation_of` attribute each method declares), the metric models' own quality, provenance.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from taxabench.errors import TaxabenchError
from taxabench.files import read_json, write_bytes, write_text, writing
from taxabench.metrics.evaluation import (
    CEILING_METHOD,
    CSV_COLUMNS,
    KEY_CI_HIGH,
    KEY_CI_LOW,
    KEY_EXTRACTOR,
    KEY_HIGHER_IS_BETTER,
    KEY_METHOD,
    KEY_METRIC,
    KEY_N_GENERATED,
    KEY_N_REAL,
    KEY_N_TAXA,
    KEY_NAME,
    KEY_PROTOCOL,
    KEY_SCOPE,
    KEY_VALUE,
    KEY_WEIGHTS,
)

HEADLINE_METRICS = ("fd", "kid", "lpips", "clip_score", "top1")  # the paper's columns, plus species accuracy
RANK_METRICS = ("top1", "fd", "clip_score")
TAIL_METRICS = ("fd", "clip_score", "top1")
DECIMALS = {"fd": 2, "kid": 4, "lpips": 4, "lpips_diversity": 4, "clip_score": 2, "top1": 1, "top5": 1}
CEILING_LABEL = "real images (ceiling)"  # how tables name the `real-images` rows: held-out real images, scored alike
GUIDANCE_SEPARATOR = "+"  # sample folder `taxadiffusion+cfg`: method taxadiffusion sampled with cfg guidance


@dataclass
class RunFolder:
    """What the report reads from a run folder."""

    root: Path
    table: pd.DataFrame
    config: dict
    provenance: dict
    steps: dict
    metric_models: dict
    warnings: dict[str, list[str]]

    @classmethod
    def read(cls, root: Path) -> RunFolder:
        from taxabench.metrics.evaluation import rebuild_table

        csv = root / "metrics" / "all.csv"
        evaluated = sorted(p.stem for p in (root / "metrics").glob("*.json")) if (root / "metrics").is_dir() else []
        if not csv.is_file() and evaluated:  # derived from the per-method JSONs
            rebuild_table(root, evaluated)
        if not csv.is_file():
            raise TaxabenchError(f"{csv} not found: evaluate at least one method first (`taxabench eval`)")
        table = pd.read_csv(csv)
        if list(table.columns) != list(CSV_COLUMNS):
            raise TaxabenchError(f"{csv}: columns {list(table.columns)} are not taxabench's ({list(CSV_COLUMNS)})")
        warnings, models = {}, {}
        for path in sorted((root / "metrics").glob("*.json")):
            content = read_json(path, f"re-evaluate it: `taxabench run --force eval/{path.stem}`")
            if "method" in content:
                warnings[content["method"]] = content.get("warnings", [])
                models.update(content.get("extractors", {}))
        return cls(
            root=root,
            table=table,
            config=_yaml(root / "config.yaml"),
            provenance=_json(root / "provenance.json"),
            steps=_json(root / "steps.json"),
            metric_models=models,
            warnings=warnings,
        )


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------------------------------------------------------
# Numbers to text
# ---------------------------------------------------------------------------------------------------------------


def cell(row: pd.Series | None, bold: bool = False) -> str:
    """`12.34 [11.02, 13.90]`; an absent or undefined number is `—`."""
    if row is None or not _finite(row[KEY_VALUE]):
        return "—"
    decimals = DECIMALS.get(row[KEY_METRIC], 3)
    value = f"{row[KEY_VALUE]:.{decimals}f}"
    if bold:
        value = f"**{value}**"
    if _finite(row[KEY_CI_LOW]) and _finite(row[KEY_CI_HIGH]):
        value += f" [{row[KEY_CI_LOW]:.{decimals}f}, {row[KEY_CI_HIGH]:.{decimals}f}]"
    return value


def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _row(table: pd.DataFrame, method: str, metric: str, scope: str) -> pd.Series | None:
    match = table[(table[KEY_METHOD] == method) & (table[KEY_METRIC] == metric) & (table[KEY_SCOPE] == scope)]
    return None if match.empty else match.iloc[0]


def _ceiling_row(table: pd.DataFrame, metrics: Sequence[str], scopes: Sequence[str],
                 columns: Sequence[tuple[str, str]] | None = None) -> list[list[str]]:
    """The ceiling row of a table whose columns are (metric, scope) pairs, if the run has any of those rows."""
    columns = columns or [(metric, scope) for metric in metrics for scope in scopes]
    cells = [cell(_row(table, CEILING_METHOD, metric, scope)) for metric, scope in columns]
    return [[f"_{CEILING_LABEL}_", *cells]] if any(c != "—" for c in cells) else []


def _quantities_with(table: pd.DataFrame, scopes: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Quantity keys with rows in any of `scopes`, in evaluation order, except `exclude`."""
    rows = table[table[KEY_SCOPE].isin(list(scopes)) & ~table[KEY_METRIC].isin(list(exclude))]
    return list(dict.fromkeys(rows[KEY_METRIC]))


def _column_name(table: pd.DataFrame, metric: str) -> str | None:
    rows = table[table[KEY_METRIC] == metric]
    if rows.empty:
        return None
    arrow = "↑" if bool(rows.iloc[0][KEY_HIGHER_IS_BETTER]) else "↓"
    return f"{rows.iloc[0][KEY_NAME]} {arrow}"


def best_and_separation(table: pd.DataFrame, methods: Sequence[str], metric: str, scope: str = "overall"):
    """The best method on a metric and whether its CI clears every other method's CI (None if < 2 methods)."""
    rows = [(m, _row(table, m, metric, scope)) for m in methods]
    rows = [(m, r) for m, r in rows if r is not None and _finite(r[KEY_VALUE])]
    if len(rows) < 2:
        return (rows[0][0] if rows else None), None
    higher = bool(rows[0][1][KEY_HIGHER_IS_BETTER])
    best, best_row = max(rows, key=lambda mr: mr[1][KEY_VALUE] if higher else -mr[1][KEY_VALUE])
    others = [r for m, r in rows if m != best]
    if higher:
        separated = all(best_row[KEY_CI_LOW] > r[KEY_CI_HIGH] for r in others)
    else:
        separated = all(best_row[KEY_CI_HIGH] < r[KEY_CI_LOW] for r in others)
    return best, separated


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------


def method_family(name: str) -> tuple[str, str]:
    """(family, variant) of a sample folder name: ablations belong to the method they ablate (`ablation_of`),
    guidance variants (`taxadiffusion+cfg`) to their method."""
    from taxabench.methods import METHODS, get_method

    base = name.split(GUIDANCE_SEPARATOR, 1)[0]
    if base not in METHODS:  # samples of another generator (`taxabench eval --samples`): a family of its own
        return name, name
    cls = get_method(base)
    return (cls.ablation_of or base), name


def evaluated_methods(table: pd.DataFrame) -> list[str]:
    """Every sample folder with rows, in first-evaluated order (not the real-image ceiling)."""
    return [m for m in dict.fromkeys(table[KEY_METHOD]) if m != CEILING_METHOD]


def main_methods(table: pd.DataFrame) -> list[str]:
    """Methods in first-evaluated order, without ablations and guidance variants (they get their own section)."""
    ordered = evaluated_methods(table)
    return [m for m in ordered if method_family(m) == (m, m)]


def main_table(table: pd.DataFrame, methods: Sequence[str]) -> str:
    metrics = [m for m in HEADLINE_METRICS if _column_name(table, m)]
    header = ["method", *[_column_name(table, m) for m in metrics]]
    best = {metric: best_and_separation(table, methods, metric)[0] for metric in metrics}
    rows = [[f"`{method}`", *[cell(_row(table, method, metric, "overall"), bold=best[metric] == method)
                              for metric in metrics]] for method in methods]
    rows += _ceiling_row(table, metrics, ["overall"])
    lines = [markdown_table(header, rows), ""]
    for metric in metrics:
        winner, separated = best_and_separation(table, methods, metric)
        if separated is None:
            continue
        name = _column_name(table, metric)
        verdict = ("its interval clears every other method's" if separated
                   else "its interval overlaps another method's, so the ranking is not established at this size")
        lines.append(f"- {name}: best `{winner}`; {verdict}.")
    return "\n".join(lines)


def sample_sizes(table: pd.DataFrame, methods: Sequence[str]) -> str:
    rows = []
    for metric in HEADLINE_METRICS:
        for method in methods:
            row = _row(table, method, metric, "overall")
            if row is not None:
                rows.append([str(row[KEY_NAME]), f"`{method}`", str(int(row[KEY_N_REAL])),
                             str(int(row[KEY_N_GENERATED])), str(int(row[KEY_N_TAXA])), f"`{row[KEY_WEIGHTS]}`"])
    return markdown_table(["metric", "method", "real images", "generated images", "taxa", "weights"], rows)


def rank_tables(table: pd.DataFrame, methods: Sequence[str], ranks: Sequence[str]) -> str:
    """One table per metric with rank scopes: the main ones (`RANK_METRICS`) first, every other one folded below."""
    parts, more = [], []
    for metric in [*RANK_METRICS, *_quantities_with(table, ranks, RANK_METRICS)]:
        present = [r for r in ranks if not table[(table[KEY_METRIC] == metric) & (table[KEY_SCOPE] == r)].empty]
        if not present:
            continue
        rows = [[f"`{m}`", *[cell(_row(table, m, metric, r)) for r in present]] for m in methods]
        rows += _ceiling_row(table, [metric], present)
        (parts if metric in RANK_METRICS else more).append(
            f"**{_column_name(table, metric)}**, per rank (the metric computed for each taxon of the rank, then "
            f"averaged over the rank's taxa)\n\n{markdown_table(['method', *present], rows)}")
    if more:
        parts.append("<details><summary>Every other metric per rank</summary>\n\n" + "\n\n".join(more) +
                     "\n\n</details>")
    return "\n\n".join(parts)


def tail_table(table: pd.DataFrame, methods: Sequence[str]) -> str:
    header, columns = ["method"], []
    for metric in TAIL_METRICS:
        for scope in ("rare", "common"):
            if not table[(table[KEY_METRIC] == metric) & (table[KEY_SCOPE] == scope)].empty:
                header.append(f"{_column_name(table, metric)}, {scope}")
                columns.append((metric, scope))
    if not columns:
        return ""
    rows = [[f"`{m}`", *[cell(_row(table, m, metric, scope)) for metric, scope in columns]] for m in methods]
    rows += _ceiling_row(table, [], [], columns)
    return markdown_table(header, rows)


def tail_details_table(table: pd.DataFrame, methods: Sequence[str]) -> str:
    """Every other metric with rare / common scopes (diversity, coverage, copying...): one row per metric and
    method, the bins as columns."""
    rows = []
    for metric in _quantities_with(table, ("rare", "common"), TAIL_METRICS):
        for method in [*methods, CEILING_METHOD]:
            cells = [cell(_row(table, method, metric, scope)) for scope in ("rare", "common", "overall")]
            if any(c != "—" for c in cells):
                label = f"_{CEILING_LABEL}_" if method == CEILING_METHOD else f"`{method}`"
                rows.append([str(_column_name(table, metric)), label, *cells])
    return markdown_table(["metric", "method", "rare", "common", "all"], rows) if rows else ""


def ablation_table(table: pd.DataFrame) -> str:
    families: dict[str, list[str]] = {}
    for method in evaluated_methods(table):
        families.setdefault(method_family(method)[0], []).append(method)
    parts = []
    for family, members in families.items():
        if len(members) < 2:
            continue
        parts.append(f"**{family}** and its variants\n")
        parts.append(main_table(table, members))
    return "\n\n".join(parts)


def metric_models_section(models: dict) -> str:
    """The extractors behind the numbers; for models taxabench built (synthclip), their own measured quality."""
    if not models:
        return "No metric-model information in this run."
    rows = []
    for name, info in models.items():
        build = info.get("build") or {}
        accuracy = build.get("zero_shot_top1", {})
        quality = ", ".join(f"{rank} {value:.1f}%" for rank, value in accuracy.items())
        if quality:
            quality = f"zero-shot top-1 on {build.get('eval_images', '?')} held-out {build.get('eval_split', '')} images: {quality}"
        rows.append([f"`{name}`", f"`{info.get('weights', '?')}`", f"`{info.get('protocol', '?')}`",
                     quality or "pretrained (not measured here)"])
    return markdown_table(["extractor", "weights", "input protocol", "quality"], rows)


def backbone_identities(root: Path) -> list[str]:
    """The backbones the run's methods were trained on, from their checkpoint manifests."""
    found = [json.loads(p.read_text())["backbone"]["identity"] for p in sorted(root.glob("checkpoints/*/manifest.json"))]
    return list(dict.fromkeys(found))


def provenance_section(run: RunFolder) -> str:
    prov = run.provenance
    lines = [
        f"- taxabench {prov.get('taxabench', '?')}, git commit `{prov.get('git_commit') or 'unknown'}`",
        f"- config fingerprint `{prov.get('config_fingerprint', '?')}` (the run's `config.yaml`)",
        f"- device: {prov.get('device', '?')}; Python {prov.get('python', '?')}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in prov.get("packages", {}).items()),
        "- backbone: " + (", ".join(f"`{b}`" for b in backbone_identities(run.root)) or "unknown"),
        "- metric weights: " + ", ".join(f"`{w}`" for w in dict.fromkeys(run.table[KEY_WEIGHTS])),
        "- protocols: " + "; ".join(f"{name}: `{protocol}`" for name, protocol in
                                    dict(zip(run.table[KEY_NAME], run.table[KEY_PROTOCOL])).items()),
    ]
    if run.steps:
        lines.append("")
        lines.append(markdown_table(["step", "wall time (s)", "finished"],
                                    [[name, f"{entry['seconds']:.1f}", entry["finished"]]
                                     for name, entry in run.steps.items()]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------


def write_report(run_dir: str | Path, figures: bool = True) -> Path:
    """Write `<run>/report/README.md` (and figures) from the run folder; returns the markdown's path."""
    run = RunFolder.read(Path(run_dir))
    out = run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    drawn = draw_figures(run, out) if figures else {}
    write_text(out / "README.md", render(run, drawn), "report")
    return out / "README.md"


def render(run: RunFolder, figures: dict[str, str]) -> str:
    table = run.table
    methods = main_methods(table)
    data = run.config.get("data", {})
    sample = run.config.get("sample", {})
    ranks = [r for r in ("kingdom", "phylum", "class", "order", "family", "genus", "species")
             if r in set(table[KEY_SCOPE])]
    extractors = ", ".join(f"`{e}`" for e in dict.fromkeys(table[KEY_EXTRACTOR]))
    parts = [
        f"# taxabench report: `{run.config.get('name', run.root.name)}`",
        "",
        f"Dataset `{data.get('dataset', '?')}` at {data.get('image_size', '?')} px; "
        f"{sample.get('images_per_taxon', '?')} generated images per {sample.get('rank', 'species')}, "
        f"{sample.get('steps', '?')} {sample.get('scheduler', '')} steps, guidance scale "
        f"{sample.get('guidance_scale', '?')}. Metrics from {extractors}; every number is followed by its "
        f"{run.config.get('eval', {}).get('confidence', 0.95):.0%} bootstrap interval over taxa.",
        "",
        "## Main table (species level)",
        "",
        main_table(table, methods),
    ]
    if figures.get("samples"):
        parts += ["", f"![samples]({figures['samples']})"]
    parts += ["", "<details><summary>What each number is computed on</summary>", "",
              sample_sizes(table, methods), "", "</details>"]
    notes = sorted({note for notes in run.warnings.values() for note in notes})
    if notes:
        parts += ["", "Warnings:", "", *[f"- {note}" for note in notes]]
    parts += ["", "## Per rank", "", rank_tables(table, methods, ranks)]
    if figures.get("ranks"):
        parts += ["", f"![metrics per rank]({figures['ranks']})"]
    tail = tail_table(table, methods)
    if tail:
        threshold = data.get("rare_threshold", 5)
        parts += ["", "## Rare vs common species", "",
                  f"Rare: at most {threshold} training images.", "", tail]
        details = tail_details_table(table, methods)
        if details:
            parts += ["", "Diversity, coverage, copying and every other metric per bin:", "", details]
        if figures.get("tail"):
            parts += ["", f"![rare vs common]({figures['tail']})"]
    ablations = ablation_table(table)
    if ablations:
        parts += ["", "## Ablations", "", ablations]
    if figures.get("stages"):
        parts += ["", "## Across progressive stages", "", f"![stages]({figures['stages']})"]
    parts += ["", "## Metric models", "", metric_models_section(run.metric_models),
              "", "## Provenance", "", provenance_section(run), ""]
    return "\n".join(parts)


def draw_figures(run: RunFolder, out: Path) -> dict[str, str]:
    """The report's figures as PNGs in `out`; returns name -> file name for the ones drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {}
    table = run.table
    methods = main_methods(table) + [m for m in evaluated_methods(table) if m not in main_methods(table)]
    ranks = [r for r in ("kingdom", "phylum", "class", "order", "family", "genus", "species")
             if r in set(table[KEY_SCOPE])]
    metrics = [m for m in RANK_METRICS if not table[(table[KEY_METRIC] == m) & table[KEY_SCOPE].isin(ranks)].empty]
    if ranks and metrics:
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for method in methods:
                rows = [_row(table, method, metric, r) for r in ranks]
                xs = [i for i, r in enumerate(rows) if r is not None and _finite(r[KEY_VALUE])]
                if not xs:
                    continue
                ax.errorbar(xs, [rows[i][KEY_VALUE] for i in xs], yerr=_ci_error_bars(rows, xs), marker="o", capsize=3,
                            label=method)
            ax.set_xticks(range(len(ranks)), ranks, rotation=30)
            ax.set_title(_column_name(table, metric), fontsize=9)
        drawn["ranks"] = _save_figure(fig, axes, out / "metrics_per_rank.png")
    tail_metrics = [m for m in TAIL_METRICS if not table[(table[KEY_METRIC] == m) & (table[KEY_SCOPE] == "rare")].empty]
    if tail_metrics:
        fig, axes = plt.subplots(1, len(tail_metrics), figsize=(4.2 * len(tail_metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], tail_metrics):
            for offset, scope in ((-0.2, "rare"), (0.2, "common")):
                rows = [_row(table, m, metric, scope) for m in methods]
                xs = [i for i, r in enumerate(rows) if r is not None and _finite(r[KEY_VALUE])]
                ax.bar([x + offset for x in xs], [rows[i][KEY_VALUE] for i in xs], width=0.4, label=scope,
                       yerr=_ci_error_bars(rows, xs), capsize=3)
            ax.set_xticks(range(len(methods)), methods, rotation=30, fontsize=7)
            ax.set_title(_column_name(table, metric), fontsize=9)
        drawn["tail"] = _save_figure(fig, axes, out / "rare_vs_common.png")
    grid = sample_grid(run, methods)
    if grid is not None:
        with writing(out / "samples.png", "figure") as temporary:
            grid.save(temporary, format="PNG", optimize=True)
        drawn["samples"] = "samples.png"
    stages = next(iter(sorted(run.root.glob("samples/*/stages.png"))), None)
    if stages is not None:
        write_bytes(out / "stages.png", stages.read_bytes(), "figure")
        drawn["stages"] = "stages.png"
    return drawn


def _ci_error_bars(rows, xs: Sequence[int]) -> list[list[float]]:
    """matplotlib's yerr (distances below and above each value) from the rows' confidence intervals."""
    return [[rows[i][KEY_VALUE] - rows[i][KEY_CI_LOW] for i in xs], [rows[i][KEY_CI_HIGH] - rows[i][KEY_VALUE] for i in xs]]


def _save_figure(fig, axes, path: Path) -> str:
    """Legend on the first panel, tight layout, PNG; returns the file name the markdown links."""
    import matplotlib.pyplot as plt

    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with writing(path, "figure") as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
    return path.name


def sample_grid(run: RunFolder, methods: Sequence[str], taxa: int = 6, per_method: int = 2):
    """Rows: a spread of evaluated taxa; columns: real images, then each method's samples (PIL image or None)."""
    from PIL import Image, ImageDraw

    folders = {m: run.root / "samples" / m for m in methods if (run.root / "samples" / m / "metadata.jsonl").is_file()}
    if not folders:
        return None
    lines = [json.loads(line) for line in (next(iter(folders.values())) / "metadata.jsonl").read_text().splitlines()]
    slugs = sorted({line["taxon_slug"] for line in lines})
    step = max(1, len(slugs) // taxa)
    chosen = slugs[::step][:taxa]
    real = _real_images(run, chosen, per_method)
    columns = (["real"] if real else []) + list(folders)
    tile = 64
    # a column's name on as many lines as it needs, a guidance variant's `+kind` on its own
    names = {c: [line for part in c.replace("+", "\n+").split("\n") for line in textwrap.wrap(part, per_method * 10)]
             for c in columns}
    label = 2 + 11 * max(len(lines) for lines in names.values())
    sheet = Image.new("RGB", (len(columns) * per_method * tile, len(chosen) * tile + label), "white")
    draw = ImageDraw.Draw(sheet)
    for c, column in enumerate(columns):
        draw.multiline_text((c * per_method * tile + 2, 1), "\n".join(names[column]), fill="black", spacing=0)
        for r, slug in enumerate(chosen):
            if column == "real":
                images = real.get(slug, [])
            else:
                images = sorted((folders[column] / slug).glob("*.png"))[:per_method]
            for k, path in enumerate(images):
                with Image.open(path) as image:
                    sheet.paste(image.convert("RGB").resize((tile, tile)), ((c * per_method + k) * tile, label + r * tile))
    return sheet


def _real_images(run: RunFolder, slugs: Sequence[str], count: int) -> dict[str, list[Path]]:
    """Real evaluation images of the chosen taxa, read through the run's own data config."""
    from taxabench.config import config_from_dict
    from taxabench.data import load_dataset

    if not run.config:
        return {}
    config = config_from_dict(run.config, source=str(run.root / "config.yaml"))
    data = load_dataset(config.data)
    found = {}
    for slug in slugs:
        taxon = next((t for t in data.taxonomy.taxa() if t.slug == slug), None)
        if taxon is not None:
            found[slug] = [r.image for r in data.records_of(taxon, "eval")[:count]]
    return found
