"""Rankings as curves: seeds combined into one number with one interval, metrics along the budget axes, crossings.

Everything here reads `metrics/all.csv` rows (schema: `taxabench.metrics.evaluation`) and computes no metric.

**Seeds.** With several training seeds, a (method, point, metric, scope) has one row per seed, each with its
percentile-bootstrap interval over taxa. The seeds are evaluated on the *same* test taxa, so the taxa-sampling error
is shared by every seed and does not average out over them; only the training-seed error does. `seed_interval`
therefore gives two intervals for two estimands:

- `ci_low`/`ci_high`: the **mean over training seeds** (the expected score of the method over training runs, on the
  population of taxa the test taxa are drawn from). With W the mean of the squared within-seed standard errors
  (each the bootstrap interval's width / (2 z)) and B the sample variance of the m seed estimates, its variance is
  W + B/m. Each term is scaled by its own quantile, the normal one for W (estimated from many taxa) and Student's t
  with m − 1 degrees of freedom for B/m (estimated from m seeds): mean ± sqrt(z²·W + t²(m − 1)·B/m). With W = 0
  this is the t interval on the m seed means; with B = 0, the normal interval on W; in between it is conservative.
  (A single t quantile at Welch–Satterthwaite's ν = (m − 1)(W + B/m)²/(B/m)² under-covers at m = 2–3: when B is
  small by chance, ν grows and the quantile shrinks; simulated coverage 0.90–0.93 at nominal 0.95.)
- `pi_low`/`pi_high`: a **prediction interval for one new training run** scored on these taxa's population:
  variance W + B + B/m (the new run's seed term, plus the error of the mean it is centred on), built the same way:
  mean ± sqrt(z²·W + t²(m − 1)·(B + B/m)).

(Earlier versions combined seeds by Rubin's multiple-imputation rule, W + (1 + 1/m)·B, which is neither: for m = 3
its seed term is 4× the mean's, so it over-covers the mean.) `seed_sd` is sqrt(B), the spread across seeds.

**Ranks.** A method is called best on a metric only if it is best in every seed (`best_in_every_seed`; a seed whose
best value is shared by several methods has no best: a tie is not a win) and its combined interval clears every
other method's.

**Paired differences.** Two methods evaluated on the same taxa differ far less than their separate intervals
suggest, because much of each interval is which taxa are hard. `paired_advantage` takes, per seed, the per-taxon
values of both (the rank scope's values, whose mean is that scope's number), averages the per-taxon differences and
gives that mean the standard error sd / sqrt(n) (what a bootstrap over taxa of a mean estimates), then combines the
seeds by `seed_interval` as above: the interval is for the mean advantage over training seeds. Where the taxa come
in clusters (species of a genus, `cluster_of`), the standard error is the cluster-robust one (CR1: the per-cluster
sums of the centred differences, squared, summed, × C/(C − 1), over n²), since sibling species' differences are not
independent; with no two taxa in a cluster it is sd / sqrt(n) again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from taxabench.budget import AXES
from taxabench.layout import POINT_FINAL, POINT_SWEEP
from taxabench.metrics.evaluation import (
    CEILING_METHOD,
    KEY_CI_HIGH,
    KEY_CI_LOW,
    KEY_HIGHER_IS_BETTER,
    KEY_METHOD,
    KEY_METRIC,
    KEY_NAME,
    KEY_POINT,
    KEY_SCOPE,
    KEY_SEED,
    KEY_VALUE,
)

KEY_N_SEEDS = "n_seeds"
KEY_SEED_SD = "seed_sd"
KEY_PI_LOW = "pi_low"  # prediction interval for one new training run (combined rows only)
KEY_PI_HIGH = "pi_high"
GROUP = [KEY_METHOD, KEY_POINT, KEY_METRIC, KEY_NAME, KEY_SCOPE]
AXIS_LABELS = {"steps": "optimizer steps", "images_seen": "images seen", "param_steps": "trainable params × steps",
               "train_flops": "training FLOPs (counted)", "wall_seconds": "training wall-clock s"}


@dataclass(frozen=True)
class SeedInterval:
    """Per-seed estimates combined: the mean over seeds, its interval, and a prediction interval for one new run."""

    value: float
    ci_low: float  # interval of the mean over training seeds: variance W + B/m
    ci_high: float
    pi_low: float  # prediction interval for one new training run: variance W + B + B/m (NaN with one seed)
    pi_high: float
    seed_sd: float  # sqrt(B), the spread of the seed estimates


def seed_interval(values: Sequence[float], ci_low: Sequence[float], ci_high: Sequence[float],
                  confidence: float) -> SeedInterval:
    """Combine per-seed estimates, each with its bootstrap interval over the (shared) taxa; see the module docstring."""
    from scipy import stats

    q = np.asarray(values, dtype=float)
    m = len(q)
    z = stats.norm.ppf(0.5 + confidence / 2)
    widths = np.asarray(ci_high, dtype=float) - np.asarray(ci_low, dtype=float)
    within = float(np.mean((widths / (2 * z)) ** 2)) if np.all(np.isfinite(widths)) else math.nan
    mean = float(q.mean())
    if m == 1:
        return SeedInterval(mean, float(np.asarray(ci_low)[0]), float(np.asarray(ci_high)[0]), math.nan, math.nan, 0.0)
    between = float(q.var(ddof=1))
    if not math.isfinite(within + between):
        return SeedInterval(mean, math.nan, math.nan, math.nan, math.nan, math.sqrt(between))
    t = stats.t.ppf(0.5 + confidence / 2, m - 1)
    half = math.sqrt(z ** 2 * within + t ** 2 * between / m)
    one_run = math.sqrt(z ** 2 * within + t ** 2 * (between + between / m))
    return SeedInterval(mean, mean - half, mean + half, mean - one_run, mean + one_run, math.sqrt(between))


@dataclass(frozen=True)
class PairedAdvantage:
    """How much better method a is than method b (positive: a is better, in the metric's own units)."""

    value: float
    ci_low: float
    ci_high: float
    seeds_ahead: int  # seeds in which a's mean per-taxon advantage is positive
    seeds_behind: int  # ... negative (the others are ties: exactly 0)
    seeds_clear: int  # seeds whose own paired interval excludes 0 on the side of `value`
    seed_values: tuple[float, ...]  # each seed's mean per-taxon advantage
    n_taxa: int  # taxa with a value for both, in the seed with fewest

    @property
    def n_seeds(self) -> int:
        return len(self.seed_values)

    @property
    def seeds_tied(self) -> int:
        return self.n_seeds - self.seeds_ahead - self.seeds_behind

    @property
    def on_its_side_in_every_seed(self) -> bool:
        """Every seed's advantage is on the side of the combined value (a tie is on neither side)."""
        return (self.seeds_ahead if self.value > 0 else self.seeds_behind) == self.n_seeds

    @property
    def separated(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def paired_advantage(seeds: Sequence[tuple[Mapping[str, float], Mapping[str, float]]], higher_is_better: bool,
                     confidence: float, cluster_of: Callable[[str], str] | None = None) -> PairedAdvantage | None:
    """a's advantage over b from per-seed (a's per-taxon values, b's per-taxon values), paired by taxon within each
    seed; None if no seed has two taxa valued by both. `cluster_of`: a taxon's cluster (its parent, `parent_of`), for
    cluster-robust standard errors."""
    from scipy import stats

    z = stats.norm.ppf(0.5 + confidence / 2)
    sign = 1.0 if higher_is_better else -1.0
    means, lows, highs, sizes = [], [], [], []
    for a, b in seeds:
        shared = [t for t in a if t in b and _is_number(a[t]) and _is_number(b[t])]
        if len(shared) < 2:
            continue
        differences = sign * (np.array([a[t] for t in shared], float) - np.array([b[t] for t in shared], float))
        mean = float(differences.mean())
        error = standard_error(differences, None if cluster_of is None else [cluster_of(t) for t in shared])
        means.append(mean)
        lows.append(mean - z * error)
        highs.append(mean + z * error)
        sizes.append(len(shared))
    if not means:
        return None
    combined = seed_interval(means, lows, highs, confidence)
    value, low, high = combined.value, combined.ci_low, combined.ci_high
    clear = sum(lo > 0 for lo in lows) if value > 0 else sum(hi < 0 for hi in highs)
    return PairedAdvantage(value, low, high, sum(m > 0 for m in means), sum(m < 0 for m in means), clear,
                           tuple(means), min(sizes))


def standard_error(values: np.ndarray, clusters: Sequence[str] | None = None) -> float:
    """The standard error of the mean of `values`: sd / sqrt(n), or cluster-robust (CR1) where two or more of them
    share a cluster."""
    n = len(values)
    if clusters is None or len(set(clusters)) in (1, n):
        return float(values.std(ddof=1) / math.sqrt(n))
    names = sorted(set(clusters))
    index = np.array([names.index(c) for c in clusters])
    sums = np.bincount(index, weights=values - values.mean(), minlength=len(names))
    k = len(names)
    return float(math.sqrt(k / (k - 1) * np.sum(sums ** 2)) / n)


def parent_of(taxon_id: str) -> str:
    """A taxon's parent from its id (the lineage path "a/b/c"): the cluster of per-taxon values."""
    return taxon_id.rsplit("/", 1)[0]


def cluster_function(resample_by: str, ranks: Sequence[str], rank: str) -> Callable[[str], str] | None:
    """`eval.resample_by` as a taxon id's cluster for `paired_advantage`: auto: its parent; a rank name above the
    evaluated `rank`: its ancestor there (its parent where the ranks were not recorded); the evaluated rank or one
    below it: None (taxa independent)."""
    if resample_by == "auto":
        return parent_of
    if resample_by == rank or not ranks:
        return None if resample_by == rank else parent_of
    if resample_by not in ranks or list(ranks).index(resample_by) >= len(ranks) - 1:
        return None
    depth = list(ranks).index(resample_by) + 1
    return lambda taxon_id: "/".join(taxon_id.split("/")[:depth])


def _is_number(value) -> bool:
    return value is not None and math.isfinite(float(value))


def combine_seeds(table: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """One row per (method, point, metric, scope): a single seed's row as it is, several seeds by `seed_interval`
    (`ci_low`/`ci_high`: the mean over seeds; `pi_low`/`pi_high`: one new training run, NaN for a single seed)."""
    rows = []
    for _, group in table.groupby(GROUP, sort=False, dropna=False):
        first = group.iloc[0].copy()
        finite = group[np.isfinite(group[KEY_VALUE].astype(float))]
        first[KEY_N_SEEDS] = len(group)
        first[KEY_SEED_SD] = 0.0
        first[KEY_PI_LOW] = first[KEY_PI_HIGH] = math.nan
        if len(group) > 1 and len(finite):
            combined = seed_interval(finite[KEY_VALUE].to_numpy(), finite[KEY_CI_LOW].to_numpy(),
                                     finite[KEY_CI_HIGH].to_numpy(), confidence)
            first[KEY_VALUE], first[KEY_CI_LOW], first[KEY_CI_HIGH] = combined.value, combined.ci_low, combined.ci_high
            first[KEY_PI_LOW], first[KEY_PI_HIGH], first[KEY_SEED_SD] = combined.pi_low, combined.pi_high, \
                combined.seed_sd
            for axis in (a for a in AXES if a in group):  # equal across seeds except wall-clock time: its mean
                first[axis] = group[axis].astype(float).mean()
        rows.append(first)
    return pd.DataFrame(rows).reset_index(drop=True)


def final_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[table[KEY_POINT] == POINT_FINAL]


def along_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Evaluations of methods at budget points (`step-<T>`), not the final one nor guidance sweeps, nor the real
    images' ceiling (it has no training budget)."""
    return table[table[KEY_POINT].astype(str).str.startswith("step-") & (table[KEY_METHOD] != CEILING_METHOD)]


def sweep_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[table[KEY_POINT] == POINT_SWEEP]


def best_in_every_seed(per_seed: pd.DataFrame, methods: Sequence[str], metric: str, scope: str = "overall"):
    """(method best in every seed, or None; the seeds where the best differs) on the final rows. A seed in which
    several methods share the best value has no best: its entry is the tuple of the tied methods."""
    rows = per_seed[(per_seed[KEY_METRIC] == metric) & (per_seed[KEY_SCOPE] == scope)
                    & per_seed[KEY_METHOD].isin(methods)]
    if rows.empty:
        return None, []
    higher = bool(rows.iloc[0][KEY_HIGHER_IS_BETTER])
    winners = {}
    for seed, group in rows.groupby(KEY_SEED):
        group = group[np.isfinite(group[KEY_VALUE].astype(float))]
        if len(group):
            values = group[KEY_VALUE].astype(float)
            top = values.max() if higher else values.min()
            best = tuple(group[np.isclose(values, top, rtol=1e-12, atol=0)][KEY_METHOD])
            winners[seed] = best[0] if len(best) == 1 else best
    names = set(winners.values())
    if len(names) == 1 and isinstance(next(iter(names)), str):
        return names.pop(), []
    return None, sorted(winners.items())


def crossings(curves: pd.DataFrame, methods: Sequence[str], metric: str, axis: str = "images_seen",
              scope: str = "overall") -> list[str]:
    """A sentence for each time one method overtakes another along training on `metric` (combined rows)."""
    rows = curves[(curves[KEY_METRIC] == metric) & (curves[KEY_SCOPE] == scope)]
    if rows.empty:
        return []
    higher = bool(rows.iloc[0][KEY_HIGHER_IS_BETTER])
    name = rows.iloc[0][KEY_NAME]
    by_method = {m: rows[rows[KEY_METHOD] == m].sort_values("steps") for m in methods}
    sentences = []
    for a in methods:
        for b in methods:
            if a == b or by_method[a].empty or by_method[b].empty:
                continue
            joined = by_method[a].merge(by_method[b], on=KEY_POINT, suffixes=("_a", "_b")).sort_values("steps_a")
            if len(joined) < 2:
                continue
            sign = 1 if higher else -1
            ahead = [sign * (r[f"{KEY_VALUE}_a"] - r[f"{KEY_VALUE}_b"]) > 0 for _, r in joined.iterrows()]
            clear = [(r[f"{KEY_CI_LOW}_a"] > r[f"{KEY_CI_HIGH}_b"]) if higher else
                     (r[f"{KEY_CI_HIGH}_a"] < r[f"{KEY_CI_LOW}_b"]) for _, r in joined.iterrows()]
            for i in range(1, len(joined)):
                if ahead[i] and not ahead[i - 1]:
                    at = joined.iloc[i][f"{axis}_a"]
                    before = joined.iloc[i - 1][f"{axis}_a"]
                    since = next((j for j in range(i, len(joined)) if all(clear[j:])), None)
                    verdict = (f"intervals clear from {_number(joined.iloc[since][f'{axis}_a'])} {AXIS_LABELS[axis]}"
                               if since is not None else "the intervals overlap at every later point")
                    sentences.append(f"`{a}` overtakes `{b}` on {name} between {_number(before)} and {_number(at)} "
                                     f"{AXIS_LABELS[axis]}; {verdict}.")
    return sentences


def _number(value: float) -> str:
    value = float(value)
    if not math.isfinite(value):
        return "?"
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
