"""From per-image values or per-set metric functions to one number per scope, each with a bootstrap CI over taxa.

The evaluated taxa ("units") are the taxa the generated images were conditioned on, all of one rank R (species
usually). Every metric is reported in these scopes (names are the `scope` column of `metrics/all.csv`):

- `overall`: the headline, computed on everything pooled (FD of all generated vs all real images of the evaluated
  taxa, the mean score over all generated images). CI: resample the units with replacement, recompute.
- one scope per rank r from the top rank down to R: the metric computed separately for each taxon at rank r (on
  the images under it), then the mean over those taxa (for FD this is the class-conditional "intra-FD").
  CI: resample the taxa of rank r with replacement.
- `rare` / `common` (only when R is species): the overall computation restricted to species with at most /
  more than `data.rare_threshold` training images. CI: resample those species.

Set metrics that only mean something within one taxon (a species' diversity, `vendi`) use
`summarise_per_taxon_set_metric`: their pooled scopes are the mean of the evaluated taxa's values instead of one
computation on everything pooled.

All resampling is seeded from `eval.seed`; CIs are percentile intervals at `eval.confidence`, re-centred so the
bootstrap median sits on the estimate (see `Resampling.interval`).

**Resampling follows the taxonomy** (`eval.resample_by`). Species come a few per genus and share its traits, so
they are not independent draws: a bootstrap over species treats four siblings as four independent pieces of evidence
and its interval is too narrow. Where a scope's taxa share parents, the resample is two-stage (Davison & Hinkley
1997, §3.8): draw the parent taxa (genera) with replacement, then, for each drawn parent, its children with
replacement (`Resampling.counts`). `auto` (the default) clusters each scope's taxa by their parent rank where some
parent has two or more of them; a rank name clusters by that rank the scopes whose taxa are below it; the evaluated
rank (`species`) is the plain bootstrap over taxa of earlier versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from taxabench.metrics.scopes import EvalSets


@dataclass
class ScopeValue:
    """One metric in one scope: the number, its CI and what it was computed on."""

    scope: str
    value: float
    ci_low: float
    ci_high: float
    n_real: int
    n_generated: int
    n_taxa: int
    n_bootstrap: int
    per_taxon: dict[str, float] | None = None  # rank scopes: the value of each taxon (JSON only)
    skipped_taxa: dict[str, str] = field(default_factory=dict)  # taxon id -> why it has no value


@dataclass(frozen=True)
class Resampling:
    """How many bootstrap resamples, at which confidence, from which seed, clustered by which rank."""

    resamples: int
    confidence: float
    seed: int
    by: str = "auto"  # `eval.resample_by`: auto (each scope's parent rank), or a rank name
    ranks: tuple[str, ...] = ()  # the dataset's ranks from the top, to place a rank name in a taxon id

    def clusters(self, ids: list[str]) -> np.ndarray | None:
        """Each taxon's cluster (index of its ancestor at the resampling rank), or None for a plain resample: the
        taxa are at or above that rank, or no two of them share the ancestor. `ids` are lineage paths ("a/b/c")."""
        if not ids:
            return None
        depth = len(ids[0].split("/"))
        if self.by == "auto":
            level = depth - 1
        elif self.by in self.ranks:
            level = self.ranks.index(self.by) + 1
        else:
            raise ValueError(f"eval.resample_by: {self.by!r} is not auto nor one of the ranks {list(self.ranks)}")
        if not 1 <= level < depth:
            return None
        ancestors = ["/".join(taxon.split("/")[:level]) for taxon in ids]
        names = sorted(set(ancestors))
        if len(names) == len(ids):
            return None
        index = {name: i for i, name in enumerate(names)}
        return np.array([index[a] for a in ancestors])

    def counts(self, n_units: int, salt: str, ids: list[str] | None = None) -> np.ndarray:
        """(resamples, n_units) multiplicities of a resample of `n_units` units: with replacement, or, when `ids`
        (the units' taxon ids) share ancestors at the resampling rank, two-stage: the ancestors with replacement,
        then each drawn ancestor's units with replacement. A two-stage resample's total count varies: weight by
        the counts, do not divide by `n_units`.

        The generator is seeded from (seed, salt), so each scope's resamples do not depend on evaluation order.
        """
        rng = np.random.default_rng([self.seed, *salt.encode()])
        cluster = None if ids is None else self.clusters(ids)
        if cluster is None:
            return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=self.resamples)
        n_clusters = int(cluster.max()) + 1
        drawn = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=self.resamples)
        counts = np.zeros((self.resamples, n_units), dtype=np.int64)
        for c in range(n_clusters):
            members = np.flatnonzero(cluster == c)
            # k draws of the cluster, each a resample of its members: one multinomial of k × size draws
            counts[:, members] = rng.multinomial(drawn[:, c] * len(members), np.full(len(members), 1 / len(members)))
        return counts

    def interval(self, replicates: np.ndarray, estimate: float) -> tuple[float, float]:
        """The percentile interval of `replicates`, moved so that their median sits on `estimate`.

        Resampling taxa with replacement duplicates images, and FD's finite-sample bias grows as the number of
        distinct images shrinks: FD replicates sit above the estimate, often entirely. Re-centring removes that
        shift (the bootstrap estimate of bias) and keeps the spread; for unbiased statistics (means, KID) the
        median already sits on the estimate and the interval is the plain percentile interval.
        """
        replicates = np.asarray(replicates, dtype=np.float64)
        replicates = replicates[np.isfinite(replicates)]
        if len(replicates) == 0 or not np.isfinite(estimate):
            return float("nan"), float("nan")
        tail = (1 - self.confidence) / 2
        low, median, high = np.quantile(replicates, [tail, 0.5, 1 - tail])
        return float(low - median + estimate), float(high - median + estimate)


# ---------------------------------------------------------------------------------------------------------------
# Metrics with one value per generated image (scores, accuracies, LPIPS)
# ---------------------------------------------------------------------------------------------------------------


def summarise_per_image(
    values_by_rank: dict[str, np.ndarray], sets: EvalSets, resampling: Resampling, uses_real: bool = False
) -> list[ScopeValue]:
    """Scopes of a per-image metric. `values_by_rank[r][i]` is generated image i's value judged at rank r (a score
    that does not depend on the rank passes the same array for every rank); `values_by_rank[sets.rank]` gives the
    pooled scopes. NaN entries (images the metric could not score) are left out of every mean and of `n_generated`.
    `uses_real`: the metric compared the images with the real images of their taxon, so `n_real` counts those.
    """
    results = []
    values = values_by_rank[sets.rank]
    for scope, units in sets.pooled_scopes():
        valid = np.isin(sets.gen_unit, units) & np.isfinite(values)
        sums = np.bincount(sets.gen_unit[valid], weights=values[valid], minlength=len(sets.units))[units]
        counts = np.bincount(sets.gen_unit[valid], minlength=len(sets.units))[units].astype(np.float64)
        if counts.sum() == 0:
            continue
        replicate_counts = resampling.counts(len(units), scope, [sets.units[u].id for u in units])
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates = (replicate_counts @ sums) / (replicate_counts @ counts)
        estimate = float(sums.sum() / counts.sum())
        low, high = resampling.interval(replicates, estimate)
        scored_units = units[counts > 0]
        results.append(ScopeValue(scope, estimate, low, high,
                                  n_real=sets.real_count(scored_units) if uses_real else 0,
                                  n_generated=int(counts.sum()), n_taxa=len(scored_units),
                                  n_bootstrap=resampling.resamples))
    for rank in sets.ranks:
        taxa, taxon_of_image = sets.gen_taxa(rank)
        valid = np.isfinite(values_by_rank[rank])
        sums = np.bincount(taxon_of_image[valid], weights=values_by_rank[rank][valid], minlength=len(taxa))
        counts = np.bincount(taxon_of_image[valid], minlength=len(taxa))
        scored = counts > 0
        _, real_taxon = sets.real_taxa(rank)
        n_real = int(np.isin(real_taxon, np.flatnonzero(scored)).sum()) if uses_real else 0
        skipped = {t.id: "no scorable generated image" for t, ok in zip(taxa, scored) if not ok}
        results.append(_mean_over_taxa(rank, sums[scored] / counts[scored], [t.id for t, ok in zip(taxa, scored) if ok],
                                       resampling, n_real, int(counts.sum()), skipped))
    return results


# ---------------------------------------------------------------------------------------------------------------
# Metrics between two sets of features (FD, KID)
# ---------------------------------------------------------------------------------------------------------------

SetValue = Callable[[np.ndarray, np.ndarray], float]
# (real, generated, real unit per row, generated unit per row, counts (resamples, units)) -> replicates
SetBootstrap = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def summarise_set_metric(
    value: SetValue,
    bootstrap: SetBootstrap,
    real: np.ndarray,
    generated: np.ndarray,
    sets: EvalSets,
    resampling: Resampling,
    pooled_resampling: Resampling,
    min_per_side: int,
) -> list[ScopeValue]:
    """Scopes of a metric between the real and generated feature sets (rows aligned with `sets.real` /
    `sets.generated`). Taxa with fewer than `min_per_side` images on a side have no per-taxon value; they are
    listed in `skipped_taxa`."""
    results = []
    for scope, units in sets.pooled_scopes():
        real_rows = np.flatnonzero(np.isin(sets.real_unit, units))
        gen_rows = np.flatnonzero(np.isin(sets.gen_unit, units))
        if min(len(real_rows), len(gen_rows)) < min_per_side:
            continue
        # units renumbered 0..k-1 within the scope, so resample counts index them directly
        local = np.full(len(sets.units), -1)
        local[units] = np.arange(len(units))
        counts = pooled_resampling.counts(len(units), scope, [sets.units[u].id for u in units])
        replicates = bootstrap(real[real_rows], generated[gen_rows], local[sets.real_unit[real_rows]],
                               local[sets.gen_unit[gen_rows]], counts)
        estimate = value(real[real_rows], generated[gen_rows])
        low, high = pooled_resampling.interval(replicates, estimate)
        results.append(ScopeValue(scope, estimate, low, high,
                                  n_real=len(real_rows), n_generated=len(gen_rows), n_taxa=len(units),
                                  n_bootstrap=pooled_resampling.resamples))
    return results + _rank_scopes(value, real, generated, sets, resampling, min_per_side)


def summarise_per_taxon_set_metric(
    value: SetValue,
    real: np.ndarray,
    generated: np.ndarray,
    sets: EvalSets,
    resampling: Resampling,
    min_per_side: int,
) -> list[ScopeValue]:
    """Scopes of a set metric that is only meaningful within one taxon (diversity of a species' images): the
    pooled scopes (overall, rare, common) are the mean of the evaluated taxa's values, with a CI from resampling
    those taxa; the rank scopes are as in `summarise_set_metric`."""
    ranks = _rank_scopes(value, real, generated, sets, resampling, min_per_side)
    own = ranks[-1]  # the evaluated rank: one value per unit
    results = []
    for scope, units in sets.pooled_scopes():
        ids = [sets.units[u].id for u in units if sets.units[u].id in own.per_taxon]
        scored = [u for u in units if sets.units[u].id in own.per_taxon]
        skipped = {sets.units[u].id: own.skipped_taxa[sets.units[u].id] for u in units
                   if sets.units[u].id in own.skipped_taxa}
        results.append(_mean_over_taxa(scope, np.array([own.per_taxon[i] for i in ids]), ids, resampling,
                                       sets.real_count(np.array(scored)), int(np.isin(sets.gen_unit, scored).sum()),
                                       skipped))
    return results + ranks


def _rank_scopes(value: SetValue, real: np.ndarray, generated: np.ndarray, sets: EvalSets, resampling: Resampling,
                 min_per_side: int) -> list[ScopeValue]:
    """One scope per rank: the metric for each taxon of the rank that has `min_per_side` images on each side, then
    the mean over those taxa."""
    results = []
    for rank in sets.ranks:
        taxa, gen_taxon = sets.gen_taxa(rank)
        _, real_taxon = sets.real_taxa(rank)
        per_taxon, ids, skipped, n_real, n_gen = [], [], {}, 0, 0
        for index, taxon in enumerate(taxa):
            real_rows, gen_rows = real_taxon == index, gen_taxon == index
            if min(real_rows.sum(), gen_rows.sum()) < min_per_side:
                skipped[taxon.id] = (f"{real_rows.sum()} real / {gen_rows.sum()} generated images "
                                     f"(needs {min_per_side} each)")
                continue
            per_taxon.append(value(real[real_rows], generated[gen_rows]))
            ids.append(taxon.id)
            n_real, n_gen = n_real + int(real_rows.sum()), n_gen + int(gen_rows.sum())
        results.append(_mean_over_taxa(rank, np.array(per_taxon), ids, resampling, n_real, n_gen, skipped))
    return results


def weighted_bootstrap(weighted_value: Callable[..., float]) -> SetBootstrap:
    """A `SetBootstrap` that recomputes a metric once per resample, each image weighted by its unit's count."""

    def replicates(real, generated, real_unit, gen_unit, counts):
        out = np.empty(len(counts))
        for b, count in enumerate(counts):
            real_weights, gen_weights = count[real_unit], count[gen_unit]
            if min(real_weights.sum(), gen_weights.sum()) < 2:
                out[b] = np.nan
                continue
            keep_real, keep_gen = real_weights > 0, gen_weights > 0
            out[b] = weighted_value(real[keep_real], generated[keep_gen], real_weights[keep_real],
                                    gen_weights[keep_gen])
        return out

    return replicates


# ---------------------------------------------------------------------------------------------------------------


def _mean_over_taxa(scope: str, per_taxon: np.ndarray, ids: list[str], resampling: Resampling, n_real: int,
                    n_generated: int, skipped: dict[str, str]) -> ScopeValue:
    if len(per_taxon) == 0:
        return ScopeValue(scope, float("nan"), float("nan"), float("nan"), n_real, n_generated, 0, 0, {}, skipped)
    counts = resampling.counts(len(per_taxon), scope, ids)
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = counts @ per_taxon / counts.sum(axis=1)
    low, high = resampling.interval(replicates, float(per_taxon.mean()))
    return ScopeValue(scope, float(per_taxon.mean()), low, high, n_real, n_generated, len(per_taxon),
                      resampling.resamples, dict(zip(ids, map(float, per_taxon))), skipped)

