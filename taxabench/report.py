"""`taxabench report`: the run's markdown report and figures, a pure function of what the run folder holds.

`metrics/all.csv` is the source of every number in the tables (schema: `taxabench.metrics.evaluation`); the paired
comparisons also read the per-taxon values the evaluations' JSONs keep beside it. The run's `config.yaml`,
`provenance.json` and `steps.json` add the context, and the sample folders the pictures. Rerunning the report changes
nothing, and nothing here computes a metric.

Sections: the main table in the paper's shape (method × FD, KID, LPIPS, CLIP/BioCLIP score, species accuracy),
per-rank tables (every metric with rank scopes), rare vs common species (every metric with those scopes), unseen
species (rows of point `unseen`: the species `data.unseen_species` withheld from training, or why a method cannot
generate them), ablations (method variants and guidance kinds, grouped by the `ablation_of` attribute each method
declares), paired comparisons of the run's subject with every other sample folder (`paired_section`), the metric
models' own quality, provenance.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from taxabench.budget import AXES, WALL_SECONDS
from taxabench.curves import (
    AXIS_LABELS,
    KEY_N_SEEDS,
    KEY_PI_HIGH,
    KEY_PI_LOW,
    KEY_SEED_SD,
    along_rows,
    best_in_every_seed,
    cluster_function,
    combine_seeds,
    crossings,
    final_rows,
    paired_advantage,
    sweep_rows,
)
from taxabench.errors import TaxabenchError
from taxabench.files import read_json, write_bytes, write_text, writing
from taxabench.layout import (
    GUIDANCE_SEPARATOR,
    METADATA_FILE,
    POINT_FINAL,
    POINT_UNSEEN,
    SCALE_SEPARATOR,
    RunLayout,
)
from taxabench.metrics.evaluation import (
    CEILING_METHOD,
    FD_MIN_IMAGES,
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
    KEY_POINT,
    KEY_PROTOCOL,
    KEY_SCOPE,
    KEY_SEED,
    KEY_VALUE,
    KEY_WEIGHTS,
    NOT_APPLICABLE,
    check_table,
    upgrade_table,
)
from taxabench.metrics.scopes import SCOPE_UNSEEN

HEADLINE_METRICS = ("fd", "kid", "lpips", "clip_score", "top1")  # the paper's columns, plus species accuracy
RANK_METRICS = ("top1", "fd", "clip_score")
PAIRED_METRICS = (*HEADLINE_METRICS, "fd_mean")  # per-taxon values compared in § Paired comparisons
TAIL_METRICS = ("fd", "clip_score", "top1")
DECIMALS = {"fd": 2, "kid": 4, "lpips": 4, "lpips_diversity": 4, "clip_score": 2, "top1": 1, "top5": 1}
CEILING_LABEL = "real images (ceiling)"  # how tables name the `real-images` rows: held-out real images, scored alike


@dataclass(frozen=True)
class PerTaxon:
    """A final evaluation's value for each taxon of the evaluated rank (from its metrics JSON, not all.csv)."""

    higher_is_better: bool
    values: dict[str, float]


@dataclass
class RunFolder:
    """What the report reads from a run folder."""

    root: Path
    layout: RunLayout
    table: pd.DataFrame  # final evaluations (test split), seeds combined: what the tables below read
    per_seed: pd.DataFrame  # final evaluations, one row per seed
    curves: pd.DataFrame  # evaluations at budget points (validation split), seeds combined
    sweeps: pd.DataFrame  # guidance sweeps of the final checkpoints (validation split), seeds combined
    unseen: pd.DataFrame  # the final checkpoints on the species withheld from training, seeds combined
    guidance_choices: list[dict]  # per sample folder (and seed): the swept scale chosen for the test sampling
    per_taxon: dict[tuple[str, int | None], dict[tuple[str, str], PerTaxon]]  # by (method, seed), (metric, name)
    along_per_seed: pd.DataFrame  # evaluations at budget points, one row per seed
    config: dict
    provenance: dict
    steps: dict
    metric_models: dict
    warnings: dict[str, list[str]]
    ranks: tuple[str, ...] = ()  # the evaluated taxa's ranks from the top (evaluation JSON; empty if not recorded)
    resampled_by: str | None = None  # `eval.resample_by` of the evaluations' intervals (None: before it existed)

    @property
    def shown_seed(self) -> int | None:
        """The training seed whose samples the figures show: the first of a multi-seed run (None: single-seed)."""
        seeds = self.config.get("seeds")
        return seeds[0] if seeds else None

    @classmethod
    def read(cls, root: Path) -> RunFolder:
        layout = RunLayout(root)
        layout.check_readable()
        csv = layout.all_csv
        if not csv.is_file():
            raise TaxabenchError(f"{csv} not found: evaluate at least one method first (`taxabench eval`)")
        config = _yaml(layout.config_file)
        table = upgrade_table(pd.read_csv(csv), csv, config.get("seed", 0), config.get("data", {}).get("eval_split"))
        confidence = config.get("eval", {}).get("confidence", 0.95)
        warnings, models, choices, seconds, per_taxon, sources = {}, {}, [], {}, {}, {}
        ranks, resampled_by = (), None
        for path in layout.all_metrics_json():
            content = read_json(path, "re-evaluate it (`taxabench run --force eval/<method>`)")
            sources[path] = content
            if "guidance_of" in content:
                choices.append({**content, "seed": path.parent.name if path.parent != layout.metrics_dir else None})
            if "method" in content and content.get("point", POINT_FINAL) == POINT_FINAL:  # the test-split evaluation
                warnings[content["method"]] = content.get("warnings", [])
                per_taxon.setdefault((content["method"], content.get("seed")), {}).update(_per_taxon(content))
                ranks = tuple(content.get("data", {}).get("ranks", ranks))
                resampled_by = content.get("data", {}).get("resample_by", resampled_by)
            if "method" in content:
                models.update(content.get("extractors", {}))
                seconds[(content["method"], content.get("seed"), content.get("point"))] = \
                    content.get("budget", {}).get(WALL_SECONDS)
        check_table(table, csv, sources)  # no number that no evaluation produced
        table = with_wall_seconds(table, seconds)
        return cls(
            root=root,
            layout=layout,
            table=combine_seeds(final_rows(table), confidence),
            per_seed=final_rows(table),
            curves=combine_seeds(along_rows(table), confidence),
            sweeps=combine_seeds(sweep_rows(table), confidence),
            unseen=combine_seeds(table[table[KEY_POINT] == POINT_UNSEEN], confidence),
            guidance_choices=choices,
            per_taxon=per_taxon,
            along_per_seed=along_rows(table),
            config=config,
            provenance=_json(layout.provenance_file),
            steps=_json(layout.steps_file),
            metric_models=models,
            warnings=warnings,
            ranks=ranks,
            resampled_by=resampled_by,
        )


def _per_taxon(evaluation: dict) -> dict[tuple[str, str], PerTaxon]:
    """The generated images' per-taxon values at the evaluated rank, by (metric, name)."""
    rank = evaluation.get("data", {}).get("rank")
    return {(m["metric"], m["name"]): PerTaxon(bool(m["higher_is_better"]), m["per_taxon"])
            for m in evaluation.get("measurements", [])
            if m.get("scope") == rank and m.get("subject", "generated") == "generated" and m.get("per_taxon")}


def with_wall_seconds(table: pd.DataFrame, seconds: dict[tuple, float | None]) -> pd.DataFrame:
    """`table` with a `wall_seconds` column: the training seconds of each row's checkpoint, from the JSON of the
    evaluation (method, seed, point) it belongs to (not in all.csv: they differ between two runs); NaN if unknown."""
    found = [seconds.get((method, int(seed), point)) if _finite(seed) else None
             for method, seed, point in zip(table[KEY_METHOD], table[KEY_SEED], table[KEY_POINT])]
    return table.assign(**{WALL_SECONDS: [math.nan if s is None else float(s) for s in found]})


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


def main_table(table: pd.DataFrame, methods: Sequence[str], per_seed: pd.DataFrame | None = None) -> str:
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
        if per_seed is not None and per_seed[KEY_SEED].nunique() > 1:
            steady, differing = best_in_every_seed(per_seed, methods, metric)
            if steady != winner:
                where = ", ".join(f"seed {seed}: `{m}`" if isinstance(m, str)
                                  else f"seed {seed}: " + " and ".join(f"`{x}`" for x in m) + " tied"
                                  for seed, m in differing)
                verdict = f"but the best method differs between seeds ({where}), so no rank is claimed"
            elif separated:
                verdict += ", and it is best in every seed"
        lines.append(f"- {name}: best `{winner}`; {verdict}.")
    if "clip_score" in metrics:
        lines.append(f"- {_column_name(table, 'clip_score')} is 100 × cosine(image, caption) averaged over the images, "
                     "not clamped at 0 (torchmetrics' CLIPScore takes max(100 × cosine, 0) per image): an image "
                     "further from its caption than orthogonal counts below 0, so it can differ from that score.")
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


def unseen_section(unseen: pd.DataFrame) -> str:
    """The species withheld from training: each method's headline metrics on them and its top-1 at every coarser
    rank, the real-image ceiling, the methods that cannot generate them with the reason, then every other metric."""
    if unseen.empty:
        return ""
    methods = evaluated_methods(unseen)
    reasons = {m: _row(unseen, m, NOT_APPLICABLE, SCOPE_UNSEEN) for m in methods}
    applicable = [m for m in methods if reasons[m] is None]
    present = set(zip(unseen[KEY_METRIC], unseen[KEY_SCOPE]))
    columns = [(metric, SCOPE_UNSEEN) for metric in HEADLINE_METRICS if (metric, SCOPE_UNSEEN) in present]
    ranks = [r for r in ("kingdom", "phylum", "class", "order", "family", "genus") if ("top1", r) in present]
    columns += [("top1", rank) for rank in ranks]
    header = ["method", *[f"{_column_name(unseen, metric)}" + ("" if scope == SCOPE_UNSEEN else f", {scope}")
                          for metric, scope in columns]]
    parts = []
    first = next((_row(unseen, CEILING_METHOD, metric, SCOPE_UNSEEN) for metric in ("top1", "fd")
                  if (metric, SCOPE_UNSEEN) in present), None)
    if first is not None:
        held_out = int(first[KEY_N_GENERATED])  # the ceiling row scores the real images in the generated images' place
        parts.append(f"{int(first[KEY_N_TAXA])} species withheld from training (`data.unseen_species`), each with a "
                     "sibling species in training; each method generates them from its final checkpoint, with the "
                     f"guidance and scale of its test samples, against their {held_out} held-out real "
                     "images. Top-1 ranks each image among every species, trained and withheld; at a coarser rank it "
                     "asks whether the image shows the right genus (family...) at all.")
    if applicable and columns:
        rows = [[f"`{m}`", *[cell(_row(unseen, m, metric, scope)) for metric, scope in columns]] for m in applicable]
        rows += _ceiling_row(unseen, [], [], columns)
        parts.append(markdown_table(header, rows))
    fd = next((_row(unseen, m, "fd", SCOPE_UNSEEN) for m in applicable if _row(unseen, m, "fd", SCOPE_UNSEEN)
               is not None), None)
    if fd is not None and min(fd[KEY_N_REAL], fd[KEY_N_GENERATED]) < FD_MIN_IMAGES:
        parts.append(f"{fd[KEY_NAME]} on {int(fd[KEY_N_REAL])} real and {int(fd[KEY_N_GENERATED])} generated images is "
                     "a small-sample number: biased upwards, comparable only between methods at these counts.")
    parts += [f"- `{m}`: {row[KEY_NAME]}." for m, row in reasons.items() if row is not None]
    others = [q for q in _quantities_with(unseen, [SCOPE_UNSEEN], [*HEADLINE_METRICS, NOT_APPLICABLE])]
    details = [[str(_column_name(unseen, metric)), f"_{CEILING_LABEL}_" if m == CEILING_METHOD else f"`{m}`",
                cell(_row(unseen, m, metric, SCOPE_UNSEEN))]
               for metric in others for m in [*applicable, CEILING_METHOD] if _row(unseen, m, metric, SCOPE_UNSEEN)
               is not None]
    if details:
        parts.append("<details><summary>Every other metric on the unseen species</summary>\n\n"
                     + markdown_table(["metric", "method", "unseen species"], details) + "\n\n</details>")
    return "\n\n".join(parts)


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


def budget_notes(table: pd.DataFrame, methods: Sequence[str]) -> str:
    """What each method's final checkpoint cost, on every budget axis (`taxabench.budget`)."""
    lines = []
    for method in methods:
        rows = table[(table[KEY_METHOD] == method) & (table[KEY_SCOPE] == "overall")]
        if rows.empty or not _finite(rows.iloc[0]["steps"]):
            continue
        row = rows.iloc[0]
        steps = int(row["steps"])
        params = row["param_steps"] / steps if steps else 0.0
        flops = f"{row['train_flops']:.3g}" if _finite(row["train_flops"]) else "—"
        lines.append(f"- `{method}`: {steps:,} optimizer steps, {int(row['images_seen']):,} images seen, "
                     f"{params:,.0f} trainable parameters per step on average ({row['param_steps']:.3g} "
                     f"parameter-steps), {flops} training FLOPs, {_seconds(row)} of training")
    if not lines:
        return ""
    return "\n".join(["Budget of each final checkpoint (training FLOPs counted by `FlopCounterMode` on a rehearsal of "
                      "each stage's first step, times the stage's steps; `taxabench/budget.py`):", "", *lines])


def _seconds(row: pd.Series, unit: str = " s") -> str:
    return f"{row[WALL_SECONDS]:,.0f}{unit}" if _finite(row[WALL_SECONDS]) else "—"


def at_sweep_edge(choice: dict) -> bool:
    """Whether a swept scale was chosen at the largest scale tried, or at the smallest one above 1: its best may lie
    outside the sweep. Scale 1 is the conditional prediction alone (no guidance), so a sweep from 1 has no edge
    below."""
    scales = [float(k) for k in choice["values"]]
    chosen = float(choice["chosen"])
    return len(scales) > 1 and (chosen == max(scales) or (chosen == min(scales) and chosen > 1))


def guidance_note(choices: list[dict]) -> str:
    if not choices:
        return ""
    lines = [f"- `{c['guidance_of']}`{'' if c['seed'] is None else ' (' + c['seed'] + ')'}: scale {c['chosen']:g}, "
             f"best {c['select_by']} on the validation split among "
             + ", ".join(f"{k} → {v:.4g}" if v is not None else f"{k} → —" for k, v in c["values"].items())
             + (" (at the edge of the sweep)" if at_sweep_edge(c) else "")
             for c in choices]
    edge = sum(at_sweep_edge(c) for c in choices)
    if edge:
        lines += ["", f"{edge} of {len(choices)} choices lie at the edge of their sweep: their best scale may lie "
                      "outside it, so their test numbers may understate them (widen `sample.guidance_sweep`)."]
    return "\n".join(["Guidance scales of the test sampling, each chosen on the validation split:", "", *lines])


def sweep_table(sweeps: pd.DataFrame) -> str:
    metrics = [m for m in HEADLINE_METRICS if _column_name(sweeps, m)]
    rows = [[f"`{name}`", *[cell(_row(sweeps, name, m, "overall")) for m in metrics]]
            for name in dict.fromkeys(sweeps[KEY_METHOD])]
    return markdown_table(["sample folder @ scale", *[_column_name(sweeps, m) for m in metrics]], rows)


def probe_table(table: pd.DataFrame) -> str:
    """The diffusion-classifier probe (taxabench/probe.py): per-rank top-1, rare/common, sibling accuracy."""
    rows = table[table[KEY_METRIC].isin(["probe_top1", "probe_sibling"])]
    if rows.empty:
        return ""
    scopes = list(dict.fromkeys(rows[rows[KEY_METRIC] == "probe_top1"][KEY_SCOPE]))
    header = ["method", *[f"top-1 {s}" for s in scopes], "sibling (chance 50%)", "sibling rare", "sibling common"]
    body = []
    for method in dict.fromkeys(rows[KEY_METHOD]):
        body.append([f"`{method}`", *[cell(_row(rows, method, "probe_top1", s)) for s in scopes],
                     *[cell(_row(rows, method, "probe_sibling", s)) for s in ("overall", "rare", "common")]])
    first = rows.iloc[0]
    return "\n".join([
        f"Conditional denoising loss of held-out real images under every species' condition ({first[KEY_PROTOCOL]}); "
        "the lowest is the prediction. Top-1 at a rank: the predicted species is under the right taxon of that rank. "
        "Sibling: the true species beats a sibling of the same parent. Percent, mean over species.", "",
        markdown_table(header, body)])


def seeds_note(table: pd.DataFrame) -> str:
    if KEY_N_SEEDS not in table.columns or table[KEY_N_SEEDS].max() <= 1:
        return ""
    count = int(table[KEY_N_SEEDS].max())
    metrics = [m for m in HEADLINE_METRICS if _column_name(table, m)]
    spread = []
    for method in main_methods(table):
        cells = []
        for metric in metrics:
            row = _row(table, method, metric, "overall")
            if row is not None and _finite(row[KEY_SEED_SD]):
                decimals = DECIMALS.get(metric, 3)
                one_run = (f", one new run [{row[KEY_PI_LOW]:.{decimals}f}, {row[KEY_PI_HIGH]:.{decimals}f}]"
                           if KEY_PI_LOW in row and _finite(row[KEY_PI_LOW]) else "")
                cells.append(f"{row[KEY_NAME]} {row[KEY_SEED_SD]:.{decimals}f}{one_run}")
        spread.append(f"- `{method}`: " + ", ".join(cells))
    return "\n".join([
        f"Each number is the mean over {count} training seeds, evaluated on the same test taxa. Its interval is for "
        "that mean (the method's expected score over training runs), variance W + B/m: mean ± sqrt(z²·W + "
        "t²(m − 1)·B/m), W the mean squared bootstrap standard error of the seeds (interval width / 2z; the taxa are "
        "shared, so this error does not average out over seeds), B the variance of the seed means "
        "(`taxabench/curves.py`). It does not cover where one more training run would land: that is the "
        "prediction interval below, variance W + B + B/m. A method is called best only when it is best "
        "in every seed. Spread across seeds (standard deviation of the seed means) and the prediction interval for "
        "one new run:", "", *spread])


def _resampling_words(resample_by: str | None) -> str:
    """How the evaluations' taxa bootstrap drew its taxa (`taxabench/metrics/aggregate.py`)."""
    if resample_by is None:
        return "taxa resampled as independent: evaluated before `eval.resample_by` existed"
    if resample_by == "auto":
        return ("two-stage where taxa share a parent: the parents with replacement, then their taxa within them; "
                "`eval.resample_by: auto`")
    return f"clustered by {resample_by} for the ranks below it; `eval.resample_by: {resample_by}`"


def run_subject(run: RunFolder) -> str | None:
    """The method a run is about: the first of the config's `methods` that was evaluated."""
    evaluated = evaluated_methods(run.table)
    return next((m for m in run.config.get("methods", []) if m in evaluated), None)


def paired_section(run: RunFolder) -> str:
    """The run's subject against every other sample folder, per headline metric: the mean per-taxon advantage,
    paired by taxon within each seed and combined over seeds (`taxabench.curves.paired_advantage`), how many seeds
    agree, and how many (seed, budget point) evaluations along training agree."""
    subject = run_subject(run)
    seeds = sorted({seed for method, seed in run.per_taxon if method == subject}, key=lambda s: (s is None, s))
    if subject is None or not seeds:
        return ""
    quantities = [q for q in run.per_taxon[(subject, seeds[0])] if q[0] in PAIRED_METRICS]
    quantities.sort(key=lambda q: PAIRED_METRICS.index(q[0]))
    confidence = run.config.get("eval", {}).get("confidence", 0.95)
    rank = run.config.get("sample", {}).get("rank", "species")
    resample_by = run.config.get("eval", {}).get("resample_by", "auto")
    clusters = cluster_function(resample_by, run.ranks, rank)
    rows, verdicts = [], []
    for other in (m for m in evaluated_methods(run.table) if m != subject):
        cells = []
        for metric, name in quantities:
            pairs = [(run.per_taxon[(subject, s)][(metric, name)].values,
                      run.per_taxon[(other, s)][(metric, name)].values)
                     for s in seeds if (metric, name) in run.per_taxon.get((other, s), {})]
            higher = run.per_taxon[(subject, seeds[0])][(metric, name)].higher_is_better
            advantage = paired_advantage(pairs, higher, confidence, clusters)
            if advantage is None:
                cells.append("—")
                continue
            decimals = DECIMALS.get(metric, 3)
            text = (f"{advantage.value:+.{decimals}f} [{advantage.ci_low:+.{decimals}f}, "
                    f"{advantage.ci_high:+.{decimals}f}]")
            tied = f", {advantage.seeds_tied} tied" if advantage.seeds_tied else ""
            cells.append(f"{f'**{text}**' if advantage.separated else text} ({advantage.seeds_ahead}/"
                         f"{advantage.n_seeds}{tied}, {advantage.seeds_clear})")
            verdict = paired_verdict(advantage)
            if verdict:
                side = "ahead of" if advantage.value > 0 else "behind"
                verdicts.append(f"- `{subject}` is {side} `{other}` on {name}: {verdict}.")
        rows.append([f"`{other}`", *cells])
    error = ("sd/√n" if clusters is None else
             f"cluster-robust by {'parent taxon' if resample_by == 'auto' else resample_by} (`eval.resample_by: "
             f"{resample_by}`), since sibling taxa are not independent")
    lines = [
        f"`{subject}` (the first of the config's `methods`) against every other sample folder, on the same "
        f"{rank} of the test split: its advantage (positive: `{subject}` is better; the metric's units), the mean "
        f"over {rank} of the per-{rank} difference (the {rank} scope of § Per rank: for FD the per-{rank} FD), paired "
        f"by {rank} within each seed (standard error {error}) and combined over the seeds (`taxabench/curves.py`); in "
        f"brackets the {confidence:.0%} interval of the mean advantage over training seeds (variance W + B/m), "
        "**bold** where it excludes 0; (k/m, c): "
        f"`{subject}` is ahead in k of the m seeds (a seed whose difference is exactly 0 is counted as tied, not ahead "
        "nor behind), and c seeds' own paired intervals exclude 0 on the side of the "
        "combined value.", "",
        markdown_table(["against", *[_column_name(run.table, metric) or name for metric, name in quantities]], rows)]
    if any(metric == "fd" for metric, _ in quantities):
        lines += ["", f"Per-{rank} FD is biased at these sizes: with n real and m generated images of a {rank} in d > n "
                  "dimensions it is dominated by tr(S_real)/n + tr(S_generated)/m, so a perfect generator does not "
                  "score 0 and a less diverse one can score better. Read it beside the unbiased per-"
                  f"{rank} statistics, KID and (`eval.metrics: [..., fd_mean]`) FD's bias-corrected mean term "
                  "‖Δμ‖², and the all-images FD of the main table."]
    if verdicts:
        lines += ["", *verdicts]
    along = budget_agreement(run.along_per_seed, subject)
    if along:
        lines += ["", along]
    return "\n".join(lines)


def paired_verdict(advantage) -> str:
    """What a paired advantage establishes: a combined interval clear of 0, or a difference clear in every seed
    whose size varies too much between seeds to bound its mean; empty if neither."""
    seeds = advantage.n_seeds
    consistent = advantage.on_its_side_in_every_seed
    if advantage.separated and seeds == 1:
        return "the paired interval excludes 0"
    if advantage.separated:
        return "the seed-combined interval excludes 0" + (
            f", and it is on that side in all {seeds} seeds" if consistent else ", though not in every seed")
    if seeds > 1 and advantage.seeds_clear == seeds:
        sizes = sorted(abs(v) for v in advantage.seed_values)
        return (f"clear in each of the {seeds} seeds (each seed's paired interval excludes 0; its size "
                f"{sizes[0]:.3g} to {sizes[-1]:.3g}), but it varies between seeds too much for {seeds} seeds to "
                "bound its mean")
    return ""


def budget_agreement(along: pd.DataFrame, subject: str) -> str:
    """For each other method: in how many (seed, budget point) evaluations the subject is ahead, per headline metric
    (overall scope, validation split): whether a ranking holds along training, not only where the run stops."""
    overall = along[along[KEY_SCOPE] == "overall"]
    if overall.empty or subject not in set(overall[KEY_METHOD]):
        return ""
    metrics = [m for m in HEADLINE_METRICS if _column_name(overall, m)]
    index = [KEY_SEED, KEY_POINT]
    rows = []
    for other in (m for m in dict.fromkeys(overall[KEY_METHOD]) if m != subject):
        cells = []
        for metric in metrics:
            ours = overall[(overall[KEY_METHOD] == subject) & (overall[KEY_METRIC] == metric)]
            theirs = overall[(overall[KEY_METHOD] == other) & (overall[KEY_METRIC] == metric)]
            joined = ours.merge(theirs, on=index, suffixes=("_a", "_b"))
            joined = joined[joined[f"{KEY_VALUE}_a"].map(_finite) & joined[f"{KEY_VALUE}_b"].map(_finite)]
            if joined.empty:
                cells.append("—")
                continue
            sign = 1 if bool(joined.iloc[0][f"{KEY_HIGHER_IS_BETTER}_a"]) else -1
            difference = sign * (joined[f"{KEY_VALUE}_a"] - joined[f"{KEY_VALUE}_b"])
            ahead, tied = int((difference > 0).sum()), int((difference == 0).sum())
            cells.append(f"{ahead}/{len(joined)}" + (f" ({tied} tied)" if tied else ""))
        rows.append([f"`{other}`", *cells])
    return "\n".join([
        f"Along training (§ Along training; validation split, overall): the (seed, budget point) evaluations in "
        f"which `{subject}` is ahead of each method.", "",
        markdown_table(["against", *[_column_name(overall, m) for m in metrics]], rows)])


def budget_section(curves: pd.DataFrame, confidence: float) -> str:
    """Metrics along training (validation split), per method and budget point, and the crossings between methods."""
    methods = list(dict.fromkeys(curves[KEY_METHOD]))
    metrics = [m for m in HEADLINE_METRICS if _column_name(curves, m)]
    header = ["method", "point", *[AXIS_LABELS[a] for a in AXES], *[_column_name(curves, m) for m in metrics]]
    rows = []
    for method in methods:
        overall = curves[(curves[KEY_METHOD] == method) & (curves[KEY_SCOPE] == "overall")].sort_values("steps")
        for point in dict.fromkeys(overall[KEY_POINT]):
            first = overall[overall[KEY_POINT] == point].iloc[0]
            cells = []
            for metric in metrics:
                match = overall[(overall[KEY_POINT] == point) & (overall[KEY_METRIC] == metric)]
                cells.append(cell(None if match.empty else match.iloc[0]))
            rows.append([f"`{method}`", point, f"{int(first['steps']):,}", f"{int(first['images_seen']):,}",
                         f"{first['param_steps']:.3g}",
                         f"{first['train_flops']:.3g}" if _finite(first["train_flops"]) else "—",
                         _seconds(first, unit=""), *cells])
    sentences = [s for metric in metrics for s in crossings(curves, methods, metric)]
    parts = [f"Each method evaluated along training on the validation split, {confidence:.0%} intervals "
             "(test numbers above are not chosen on these).", "", markdown_table(header, rows), ""]
    parts += ["Crossings (in images seen):", "", *[f"- {s}" for s in sentences]] if sentences else \
        ["No method overtakes another between budget points."]
    return "\n".join(parts)


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


def training_section(run: RunFolder) -> str:
    """Condition dropout as each method met it: the mean, per stage, of the fraction of training samples whose
    finest conditioned rank kept its real name (`finest_real` in `checkpoints/<method>/loss.csv`)."""
    train = run.config.get("train", {})
    rows = []
    for manifest in run.layout.trained_manifests():
        log = manifest.parent / "loss.csv"
        if not log.is_file():
            continue
        frame = pd.read_csv(log)
        if "finest_real" not in frame.columns:
            continue
        seed = f" ({manifest.parent.parent.name})" if manifest.parent.parent.name.startswith("seed-") else ""
        for stage, group in frame.groupby("stage"):
            rows.append([f"`{manifest.parent.name}`{seed}", f"stage-{stage}", str(len(group)),
                         f"{group['finest_real'].mean():.1%}"])
    if not rows:
        return ""
    head = (f"Condition dropout: `{train.get('condition_dropout_mode', 'cascade')}`, p = "
            f"{train.get('condition_dropout', '?')}. Share of training samples whose finest conditioned rank "
            "(a TaxaDiffusion stage's own rank; a baseline's species) kept its real name:")
    return head + "\n\n" + markdown_table(["method", "stage", "steps", "finest rank real"], rows)


def guidance_legend(table: pd.DataFrame, config: dict) -> str:
    """What each guidance kind in the run is, so that no reader confuses the two CFGs."""
    from taxabench.guidance import GUIDANCE

    default = config.get("sample", {}).get("guidance", "default")
    used = {m.split(GUIDANCE_SEPARATOR, 1)[1].split(SCALE_SEPARATOR)[0] for m in dict.fromkeys(table[KEY_METHOD])
            if GUIDANCE_SEPARATOR in m}
    lines = [f"- methods without `+kind`: their default guidance (`sample.guidance: {default}`; TaxaDiffusion and its "
             "ablations: taxonomy guidance, the baselines: `cfg`)"]
    for name in sorted(used | {"taxonomy", "cfg"}):
        if name in GUIDANCE:
            kind = GUIDANCE.get(name)
            lines.append(f"- `{name}`, {kind.label}: {kind.description}")
    return "\n".join(lines)


def backbone_section(layout: RunLayout) -> str:
    """A tiny backbone's own account of itself, from the checkpoint manifests: its pre-training world and what
    its frozen text encoder knows per rank."""
    builds = {}
    for path in layout.trained_manifests():
        backbone = json.loads(path.read_text()).get("backbone", {})
        if backbone.get("build"):
            builds[backbone["identity"]] = backbone["build"]
    parts = []
    for identity, build in builds.items():
        world = build.get("pretraining_world", {})
        parts.append(f"`{identity}`: " + (world.get("statement") or "pre-trained on the benchmark's own training images."))
        knowledge = build.get("text_encoder", {}).get("zero_shot_top1", {})
        if knowledge:
            rows = [[rank, f"{v['accuracy']:.1%}", f"{v['chance']:.1%}", str(v["taxa"]), str(v["images"])]
                    for rank, v in knowledge.items()]
            parts.append("What its frozen text encoder knows: zero-shot top-1 of benchmark test images among each "
                         "rank's names (`\"<rank>: <name>\"`), through the contrastive image tower it was trained "
                         "with:\n\n" + markdown_table(["rank", "top-1", "chance", "taxa", "images"], rows))
        attention = build.get("unet", {}).get("cross_attention_resolutions")
        if attention:
            text = f"Cross-attention at latent resolutions {', '.join(f'{r}x{r}' for r in attention)}."
            retained = build["unet"].get("sibling_difference_retained")
            if retained:  # SynthTaxa: sibling species drawn with the same pose and lighting, block-averaged
                text += (" Share of the pixel difference between sibling species that survives averaging to each "
                         "latent grid: " + ", ".join(f"{grid} {share:.0%}" for grid, share in retained.items()) + ".")
            parts.append(text)
    return "\n\n".join(parts)


def backbone_identities(layout: RunLayout) -> list[str]:
    """The backbones the run's methods were trained on, from their checkpoint manifests."""
    found = [json.loads(p.read_text())["backbone"]["identity"] for p in layout.trained_manifests()]
    return list(dict.fromkeys(found))


def _peak(entry: dict) -> str:
    """A step's peak memory: resident set, and CUDA's peak allocation when it ran on CUDA."""
    if "peak_rss_mb" not in entry:
        return "not recorded"
    text = f"{entry['peak_rss_mb']:.0f}" + (" (since process start)" if "peak_rss_since" in entry else "")
    return text + (f", CUDA {entry['peak_cuda_mb']:.0f}" if "peak_cuda_mb" in entry else "")


def provenance_section(run: RunFolder) -> str:
    prov = run.provenance
    lines = [
        f"- taxabench {prov.get('taxabench', '?')}, git commit `{prov.get('git_commit') or 'unknown'}`",
        f"- config fingerprint `{prov.get('config_fingerprint', '?')}` (the run's `config.yaml`)",
        f"- device: {prov.get('device', '?')}; Python {prov.get('python', '?')}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in prov.get("packages", {}).items()),
        "- backbone: " + (", ".join(f"`{b}`" for b in backbone_identities(run.layout)) or "unknown"),
        "- metric weights: " + ", ".join(f"`{w}`" for w in dict.fromkeys(run.table[KEY_WEIGHTS])),
        "- protocols: " + "; ".join(f"{name}: `{protocol}`" for name, protocol in
                                    dict(zip(run.table[KEY_NAME], run.table[KEY_PROTOCOL])).items()),
    ]
    if run.steps:
        lines.append("")
        lines.append(markdown_table(["step", "wall time (s)", "peak memory (MB)", "finished"],
                                    [[name, f"{entry['seconds']:.1f}", _peak(entry), entry["finished"]]
                                     for name, entry in run.steps.items()]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------


def write_report(run_dir: str | Path, figures: bool = True) -> Path:
    """Write `<run>/report/README.md` (and figures) from the run folder; returns the markdown's path."""
    run = RunFolder.read(Path(run_dir))
    out = run.layout.report_dir
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
        f"{run.config.get('eval', {}).get('confidence', 0.95):.0%} bootstrap interval over taxa ("
        f"{_resampling_words(run.resampled_by)}).",
        "",
        "## Main table (species level)",
        "",
        main_table(table, methods, run.per_seed),
    ]
    for note in (seeds_note(table), guidance_note(run.guidance_choices), budget_notes(table, methods)):
        if note:
            parts += ["", note]
    if figures.get("samples"):
        parts += ["", f"![samples]({figures['samples']})"]
        if run.shown_seed is not None:
            parts += ["", f"Samples of training seed {run.shown_seed} (the first of the run's seeds)."]
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
    unseen = unseen_section(run.unseen)
    if unseen:
        parts += ["", "## Unseen species", "", unseen]
    ablations = ablation_table(table)
    if ablations:
        parts += ["", "## Ablations", "", ablations]
    parts += ["", "Guidance kinds:", "", guidance_legend(table, run.config)]
    if not run.sweeps.empty:
        parts += ["", "## Guidance sweeps (validation split)", "", sweep_table(run.sweeps)]
        if figures.get("sweep"):
            parts += ["", f"![fidelity vs alignment per guidance scale]({figures['sweep']})"]
    paired = paired_section(run)
    if paired:
        parts += ["", "## Paired comparisons", "", paired]
    probe = probe_table(table)
    if probe:
        parts += ["", "## Taxonomic probe (no sampling)", "", probe]
    if not run.curves.empty:
        parts += ["", "## Along training (budget points)", "",
                  budget_section(run.curves, run.config.get("eval", {}).get("confidence", 0.95))]
        if figures.get("budget"):
            parts += ["", f"![metrics along training]({figures['budget']})"]
    if figures.get("stages"):
        parts += ["", "## Across progressive stages", "", f"![stages]({figures['stages']})"]
        if run.shown_seed is not None:
            parts += ["", f"Training seed {run.shown_seed}."]
    parts += ["", "## Metric models", "", metric_models_section(run.metric_models)]
    # after the tables: what training and the backbone were, for the reader who checks the setting
    training = training_section(run)
    if training:
        parts += ["", "## Training", "", training]
    backbone = backbone_section(run.layout)
    if backbone:
        parts += ["", "## Backbone", "", backbone]
    parts += ["", "## Provenance", "", provenance_section(run), ""]
    return "\n".join(parts)


def figure_methods(table: pd.DataFrame) -> list[str]:
    """The sample folders the figures show, in order: the main methods, then ablations and guidance variants."""
    main = main_methods(table)
    return main + [m for m in evaluated_methods(table) if m not in main]


def draw_figures(run: RunFolder, out: Path) -> dict[str, str]:
    """The report's figures as PNGs in `out`; returns name -> file name for the ones drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {}
    table = run.table
    methods = figure_methods(table)
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
    if not run.curves.empty:
        drawn["budget"] = budget_figure(run.curves, out / "budget_curves.png")
    if not run.sweeps.empty and not run.sweeps[run.sweeps[KEY_METRIC] == "fd"].empty:
        drawn["sweep"] = sweep_figure(run.sweeps, out / "guidance_sweep.png")
    grid = sample_grid(run, methods)
    if grid is not None:
        with writing(out / "samples.png", "figure") as temporary:
            grid.save(temporary, format="PNG", optimize=True)
        drawn["samples"] = "samples.png"
    figures = (run.layout.stage_figure(m, run.shown_seed) for m in dict.fromkeys(table[KEY_METHOD]))
    stages = next(iter(sorted(p for p in figures if p.is_file())), None)
    if stages is not None:
        write_bytes(out / "stages.png", stages.read_bytes(), "figure")
        drawn["stages"] = "stages.png"
    return drawn


def _ci_error_bars(rows, xs: Sequence[int]) -> list[list[float]]:
    """matplotlib's yerr (distances below and above each value) from the rows' confidence intervals."""
    return [[rows[i][KEY_VALUE] - rows[i][KEY_CI_LOW] for i in xs], [rows[i][KEY_CI_HIGH] - rows[i][KEY_VALUE] for i in xs]]


def sweep_figure(sweeps: pd.DataFrame, path: Path) -> str:
    """Fidelity (FD) against alignment (top-1) per guidance scale, one panel per scope (overall, then each rank)."""
    import matplotlib.pyplot as plt

    scopes = [s for s in dict.fromkeys(sweeps[KEY_SCOPE]) if s not in ("rare", "common")]
    scopes = [s for s in scopes if not sweeps[(sweeps[KEY_SCOPE] == s) & (sweeps[KEY_METRIC] == "top1")].empty
              and not sweeps[(sweeps[KEY_SCOPE] == s) & (sweeps[KEY_METRIC] == "fd")].dropna(subset=[KEY_VALUE]).empty]
    fig, axes = plt.subplots(1, max(1, len(scopes)), figsize=(3.4 * max(1, len(scopes)), 3.2), squeeze=False)
    for ax, scope in zip(axes[0], scopes):
        for entry in dict.fromkeys(n.rsplit(SCALE_SEPARATOR, 1)[0] for n in sweeps[KEY_METHOD]):
            xs, ys, scales = [], [], []
            for name in [n for n in dict.fromkeys(sweeps[KEY_METHOD]) if n.rsplit(SCALE_SEPARATOR, 1)[0] == entry]:
                fd, top1 = _row(sweeps, name, "fd", scope), _row(sweeps, name, "top1", scope)
                if fd is not None and top1 is not None and _finite(fd[KEY_VALUE]) and _finite(top1[KEY_VALUE]):
                    xs.append(fd[KEY_VALUE])
                    ys.append(top1[KEY_VALUE])
                    scales.append(name.rsplit(SCALE_SEPARATOR, 1)[1])
            ax.plot(xs, ys, marker="o", label=entry)
            for x, y, scale in zip(xs, ys, scales):
                ax.annotate(scale, (x, y), fontsize=6)
        ax.set_title(scope, fontsize=9)
        ax.set_xlabel(f"{_column_name(sweeps, 'fd')} (fidelity)", fontsize=8)
        ax.set_ylabel(f"{_column_name(sweeps, 'top1')} (alignment)", fontsize=8)
    return _save_figure(fig, axes, path)


def budget_figure(curves: pd.DataFrame, path: Path) -> str:
    """Rows: headline metrics; columns: budget axes; one line with intervals per method."""
    import matplotlib.pyplot as plt

    metrics = [m for m in HEADLINE_METRICS if _column_name(curves, m)]
    axes_names = [a for a in AXIS_LABELS if curves[a].notna().any()]
    fig, axes = plt.subplots(len(metrics), len(axes_names), figsize=(3.2 * len(axes_names), 2.6 * len(metrics)),
                             squeeze=False)
    for r, metric in enumerate(metrics):
        for c, axis in enumerate(axes_names):
            ax = axes[r][c]
            for method in dict.fromkeys(curves[KEY_METHOD]):
                rows = curves[(curves[KEY_METHOD] == method) & (curves[KEY_METRIC] == metric)
                              & (curves[KEY_SCOPE] == "overall")].sort_values("steps")
                rows = rows[rows[KEY_VALUE].notna() & rows[axis].notna()]
                if rows.empty:
                    continue
                below = (rows[KEY_VALUE] - rows[KEY_CI_LOW]).clip(lower=0).fillna(0)
                above = (rows[KEY_CI_HIGH] - rows[KEY_VALUE]).clip(lower=0).fillna(0)
                ax.errorbar(rows[axis], rows[KEY_VALUE], yerr=[below, above], marker="o", capsize=3, label=method)
            if axis in ("param_steps", "train_flops"):
                ax.set_xscale("log")
            ax.set_xlabel(AXIS_LABELS[axis], fontsize=8)
            if c == 0:
                ax.set_ylabel(_column_name(curves, metric), fontsize=8)
    return _save_figure(fig, axes, path)


def _save_figure(fig, axes, path: Path) -> str:
    """Legend on the first panel, tight layout, PNG; returns the file name the markdown links."""
    import matplotlib.pyplot as plt

    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with writing(path, "figure") as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
    return path.name


def grid_images(run: RunFolder, methods: Sequence[str], taxa: int = 6,
                per_method: int = 2) -> tuple[list[str], dict[str, dict[str, list[Path]]]]:
    """The generated images the sample grid shows: (a spread of taxon slugs, sample folder -> slug -> images)."""
    folders = {m: run.layout.samples(m, run.shown_seed) for m in methods
               if (run.layout.samples(m, run.shown_seed) / METADATA_FILE).is_file()}
    if not folders:
        return [], {}
    lines = [json.loads(line) for line in (next(iter(folders.values())) / METADATA_FILE).read_text().splitlines()]
    slugs = sorted({line["taxon_slug"] for line in lines})
    chosen = slugs[::max(1, len(slugs) // taxa)][:taxa]
    return chosen, {m: {slug: sorted((folder / slug).glob("*.png"))[:per_method] for slug in chosen}
                    for m, folder in folders.items()}


def sample_grid(run: RunFolder, methods: Sequence[str], taxa: int = 6, per_method: int = 2):
    """Rows: a spread of evaluated taxa; columns: real images, then each method's samples (PIL image or None)."""
    from PIL import Image, ImageDraw

    chosen, generated = grid_images(run, methods, taxa, per_method)
    if not generated:
        return None
    real = _real_images(run, chosen, per_method)
    columns = (["real"] if real else []) + list(generated)
    tile = 64
    # a column's name on as many lines as it needs, a guidance variant's `+kind` on its own
    names = {c: [line for part in c.replace(GUIDANCE_SEPARATOR, "\n" + GUIDANCE_SEPARATOR).split("\n")
                 for line in textwrap.wrap(part, per_method * 10)] for c in columns}
    label = 2 + 11 * max(len(lines) for lines in names.values())
    sheet = Image.new("RGB", (len(columns) * per_method * tile, len(chosen) * tile + label), "white")
    draw = ImageDraw.Draw(sheet)
    for c, column in enumerate(columns):
        draw.multiline_text((c * per_method * tile + 2, 1), "\n".join(names[column]), fill="black", spacing=0)
        for r, slug in enumerate(chosen):
            images = real.get(slug, []) if column == "real" else generated[column][slug]
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
    config = config_from_dict(run.config, source=str(run.layout.config_file))
    data = load_dataset(config.data)
    found = {}
    for slug in slugs:
        taxon = next((t for t in data.taxonomy.taxa() if t.slug == slug), None)
        if taxon is not None:
            found[slug] = [r.image for r in data.records_of(taxon, "eval")[:count]]
    return found
