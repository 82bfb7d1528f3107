"""`evaluate(config, method, run_dir)`: one method's generated samples against the real images, every metric.

Reads `runs/<name>/samples/<method>/` (contract: `taxabench.metrics.samples`), computes the metrics listed in
`eval.metrics`, and writes

- `runs/<name>/metrics/<method>.json`: every measurement with its N, CI, extractor, weights identity, protocol,
  per-taxon values for the rank scopes, and the warnings;
- `runs/<name>/metrics/all.csv`: the method's rows, replacing any earlier rows of the same method, and the rows of
  method `real-images` (`CEILING_METHOD`): the per-image metrics scored on the held-out real images of the same
  taxa, the ceiling row of the report's tables (the same for every method of a run). This file is the single
  source of the report tables; `taxabench run` writes a deleted one again by re-evaluating (from the feature
  caches). Columns (`CSV_COLUMNS`, in this order):

  ===================  =====================================================================================
  method               the method name (sample folder name)
  metric               quantity key: fd, kid, lpips, lpips_diversity, clip_score, top1, top5
  name                 display name naming the extractor: FID / FD (synthclip), KID (...), LPIPS (VGG) or
                       LPIPS (VGG, untrained backbone), BioCLIP score / CLIP score (synthclip),
                       top-1 accuracy (synthclip) ...
  scope                overall | rare | common | a rank (class, order, ..., species); see
                       `taxabench.metrics.aggregate` for what each scope computes. Rows of point `unseen` have
                       `unseen` (all withheld species pooled) in overall's place and no rare / common
  value                the number: accuracies in percent, CLIP scores as cosine x 100, LPIPS in [0, 1], FD / KID
                       raw; NaN when no taxon had enough images (see the JSON's skipped_taxa)
  ci_low, ci_high      bootstrap interval over taxa at `eval.confidence` (percentile, re-centred on the value;
                       `taxabench.metrics.aggregate.Resampling`)
  n_real               real images behind the number (0 for metrics that use none)
  n_generated          generated images behind the number
  n_taxa               taxa behind the number (evaluated taxa for pooled scopes, taxa of the rank otherwise)
  extractor            registry name of the feature extractor / model
  weights              weights identity, e.g. synthclip@sha256:0123abcd4567 (built)
  higher_is_better     True / False
  protocol             the named choices that change the number, `key=value;...`: images (resize mode and size),
                       input (the extractor's resize and normalisation), feature, and metric settings
  seed                 the training (and sampling) seed
  point                final (the final checkpoint on the test split), step-<T> (a budget point, validation),
                       sweep (a guidance sweep, validation), unseen (the final checkpoint on the species
                       `data.unseen_species` withheld from training, their test-split images)
  split                the real images compared against
  steps, images_seen,  the counted budget axes of the evaluated checkpoint (`taxabench.budget`); its wall-clock
  param_steps,         training seconds are in the JSON only (`"budget"`), so the table of a resumed run is
  train_flops          byte-identical to an uninterrupted run's
  ===================  =====================================================================================

The unseen-species evaluation (point `unseen`) scores every metric on the withheld species: their test-split
images are the real set, and zero-shot classification ranks them among all species (trained and withheld), so the
metric model must know them (BioCLIP reads any species' name; synthclip trains on SynthTaxa's reference split, every
species included). A method that cannot condition on a species it was not trained on
(`Method.generates_unseen_species`) gets one row instead: metric `not_applicable`, scope `unseen`, the reason in
`name` (`write_not_applicable`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taxabench import __version__, budget
from taxabench.config import ExperimentConfig
from taxabench.data import TaxaData, load_dataset
from taxabench.errors import ConfigError, TaxabenchError
from taxabench.files import write_bytes
from taxabench.layout import POINT_FINAL, POINT_UNSEEN, RunLayout
from taxabench.metrics.aggregate import Resampling, ScopeValue
from taxabench.metrics.cache import files_key, load_features, save_features
from taxabench.metrics.extractor_base import FeatureExtractor
from taxabench.metrics.features import (
    ImageSet,
    extract_features,
    generated_images,
    real_images,
    resolve_device,
)
from taxabench.metrics.metric_base import SUBJECT_GENERATED, SUBJECT_REAL, Measurement
from taxabench.metrics.samples import SampleSet, read_samples
from taxabench.metrics.scopes import SCOPE_OVERALL, SCOPE_UNSEEN, EvalSets
from taxabench.taxonomy import Taxonomy

KEY_METHOD = "method"
KEY_METRIC = "metric"
KEY_NAME = "name"
KEY_SCOPE = "scope"
KEY_VALUE = "value"
KEY_CI_LOW = "ci_low"
KEY_CI_HIGH = "ci_high"
KEY_N_REAL = "n_real"
KEY_N_GENERATED = "n_generated"
KEY_N_TAXA = "n_taxa"
KEY_EXTRACTOR = "extractor"
KEY_WEIGHTS = "weights"
KEY_HIGHER_IS_BETTER = "higher_is_better"
KEY_PROTOCOL = "protocol"
KEY_SEED = "seed"  # the training (and sampling) seed
KEY_POINT = "point"  # "final", or the budget point `step-<T>` (taxabench/budget.py)
KEY_SPLIT = "split"  # the real images compared against: the test split for "final", validation along training
BUDGET_COLUMNS = budget.COUNTED_AXES  # steps, images_seen, param_steps, train_flops (wall seconds: the JSON only)
# layout 1 wrote the first 14 columns only; `upgrade_table` fills the others for such a run
CSV_COLUMNS = (KEY_METHOD, KEY_METRIC, KEY_NAME, KEY_SCOPE, KEY_VALUE, KEY_CI_LOW, KEY_CI_HIGH, KEY_N_REAL,
               KEY_N_GENERATED, KEY_N_TAXA, KEY_EXTRACTOR, KEY_WEIGHTS, KEY_HIGHER_IS_BETTER, KEY_PROTOCOL,
               KEY_SEED, KEY_POINT, KEY_SPLIT, *BUDGET_COLUMNS)
LAYOUT_1_COLUMNS = CSV_COLUMNS[:14]
# metrics whose rows another step writes (the taxonomic probe, taxabench/probe.py): an evaluation leaves them be
SEPARATE_METRICS = frozenset({"probe_top1", "probe_sibling"})

CEILING_METHOD = "real-images"  # the rows of held-out real images scored like generated ones
NOT_APPLICABLE = "not_applicable"  # the metric of the unseen-species row of a method that cannot generate them
POOLED_SCOPES = (SCOPE_OVERALL, SCOPE_UNSEEN)
FD_MIN_IMAGES = 2000  # below this many images on a side, FD is strongly biased upwards (warned, not refused)


class SmallSampleWarning(UserWarning):
    """A set metric computed on fewer images than its usual minimum: comparable only at equal N."""


@dataclass
class EvalResult:
    method: str
    measurements: list[Measurement]
    json_path: Path
    csv_path: Path
    warnings: list[str]
    samples: SampleSet

    def headline(self) -> list[Measurement]:
        return [m for m in self.measurements if m.scope.scope in POOLED_SCOPES and m.subject == SUBJECT_GENERATED]


@dataclass
class EvalContext:
    """What a metric may use: the config, the data, who is compared with whom, and cached features."""

    config: ExperimentConfig
    data: TaxaData
    sets: EvalSets
    show_progress: bool = True
    _extractors: dict[str, FeatureExtractor] = field(default_factory=dict)
    _features: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    _text: dict[tuple[str, tuple[str, ...]], np.ndarray] = field(default_factory=dict)

    @property
    def device(self):
        """Where extractors run and set metrics (FD, KID) compute: `eval.device`."""
        return resolve_device(self.config.eval.device)

    @property
    def resampling(self) -> Resampling:
        return Resampling(self.config.eval.bootstrap, self.config.eval.confidence, self.config.eval.seed,
                          self.config.eval.resample_by, tuple(self.data.ranks))

    @property
    def pooled_resampling(self) -> Resampling:
        return Resampling(self.config.eval.bootstrap_set_metrics, self.config.eval.confidence, self.config.eval.seed,
                          self.config.eval.resample_by, tuple(self.data.ranks))

    @property
    def real_images(self) -> ImageSet:
        return real_images(self.sets.real, self.config.data)

    @property
    def generated_images(self) -> ImageSet:
        return generated_images([img.path for img in self.sets.generated.images], self.config.data)

    def extractor(self, name: str) -> FeatureExtractor:
        """The extractor `name`, loaded once, on the evaluation device (weights resolved or built on first use)."""
        if name not in self._extractors:
            from accelerate import PartialState

            from taxabench.metrics.registry import EXTRACTORS

            cls = EXTRACTORS.get(name)
            with PartialState().main_process_first():  # one process builds or downloads, the others read it
                extractor = cls.load(self.config)
            self._extractors[name] = extractor.to(self.device)
        return self._extractors[name]

    def features(self, name: str, side: str) -> dict[str, np.ndarray]:
        """Features of the real (`side="real"`) or generated images, rows aligned with `sets.real` / generated, or
        of the whole training split (`side="train"`, rows aligned with `data.train`).

        Real and training features are cached for the whole split, generated ones per sample folder manifest.
        """
        if (name, side) in self._features:
            return self._features[(name, side)]
        extractor = self.extractor(name)
        settings = {"extractor": name, "weights": extractor.identity, "protocol": extractor.protocol,
                    "image_size": self.config.data.image_size, "resize": self.config.data.resize,
                    "use_bbox": self.config.data.use_bbox}
        if side == "real":
            fields = {**settings, "data": self.data.fingerprint(), "split": self.config.data.eval_split,
                      "files": files_key(r.image for r in self.data.eval)}
            split = real_images(self.data.eval, self.config.data)
            features = self._cached("real", fields, split, f"{name}: real images")
            features = {k: v[self.sets.real_rows] for k, v in features.items()}
        elif side == "train":
            fields = {**settings, "data": self.data.fingerprint(), "split": self.config.data.train_split}
            features = self._cached("real", fields, real_images(self.data.train, self.config.data),
                                    f"{name}: training images")
        else:
            fields = {**settings, "samples": self.sets.generated.manifest}
            features = self._cached("generated", fields, self.generated_images, f"{name}: generated images")
        self._features[(name, side)] = features
        return features

    def text_embeddings(self, name: str, captions: list[str]) -> np.ndarray:
        """L2-normalised text embeddings of `captions` by the text-image model `name` (kept in memory)."""
        import torch

        from taxabench.metrics.extractor_base import TextImageExtractor

        key = (name, tuple(captions))
        if key not in self._text:
            model = self.extractor(name)
            if not isinstance(model, TextImageExtractor):
                raise TaxabenchError(f"eval.clip_model: '{name}' has no text encoder; use a CLIP-style extractor "
                                     "such as synthclip or bioclip")
            with torch.no_grad():
                chunks = [model.encode_text(captions[i:i + 256]).float().cpu().numpy()
                          for i in range(0, len(captions), 256)]
            self._text[key] = np.concatenate(chunks)
        return self._text[key]

    def image_protocol(self, name: str) -> dict[str, Any]:
        data = self.config.data
        return {"images": f"{data.resize}@{data.image_size}" + (",bbox" if data.use_bbox else ""),
                "input": self.extractor(name).protocol}

    def _cached(self, kind: str, fields: dict, images: ImageSet, label: str) -> dict[str, np.ndarray]:
        cached = load_features(kind, fields, len(images))
        if cached is not None:
            return cached
        features = extract_features(self.extractor(fields["extractor"]), images, self.config.eval.batch_size, label,
                                    self.show_progress)
        from accelerate import PartialState

        if PartialState().is_main_process:
            save_features(kind, fields, features)
        return features


def prepare_extractors(config: ExperimentConfig) -> dict[str, str]:
    """Resolve (or build) the weights of every extractor `config.eval` will use, before any method trains.

    Missing pretrained weights fail here, in seconds, rather than after hours of training; synthclip is built
    here when it is not cached. Returns extractor name -> weights identity.
    """
    from taxabench.metrics.registry import EXTRACTORS, METRICS

    check_eval_names(config)
    names = dict.fromkeys(name for metric in config.eval.metrics for name in METRICS.get(metric)().extractors(config))
    return {name: EXTRACTORS.get(name).load(config).identity for name in names}


def check_resample_by(config: ExperimentConfig, ranks, where: str = "eval") -> None:
    """`eval.resample_by` is auto or one of the dataset's ranks (`ConfigError` otherwise)."""
    if config.eval.resample_by != "auto" and config.eval.resample_by not in ranks:
        raise ConfigError(f"{where}.resample_by: {config.eval.resample_by!r} is not auto nor a rank of the dataset "
                          f"({', '.join(ranks)})")


def resampling_changes_numbers(config: ExperimentConfig, ranks) -> bool:
    """Whether `eval.resample_by` clusters any scope, i.e. differs from the plain bootstrap over taxa that earlier
    versions used (a rank at or below the evaluated one): step fingerprints include it only then."""
    by = config.eval.resample_by
    return by == "auto" or (by in ranks and config.sample.rank in ranks
                            and list(ranks).index(by) < list(ranks).index(config.sample.rank))


def check_eval_names(config: ExperimentConfig, where: str = "eval") -> None:
    """Every metric and extractor `config.eval` names is registered (`ConfigError` naming the key otherwise).

    Not part of `load_config`: the registries live in this package, and the config module must not import it."""
    from taxabench.metrics.registry import EXTRACTORS, METRICS

    def registered(registry, name: str, key: str) -> None:
        if name not in registry:
            try:
                registry.get(name)
            except TaxabenchError as error:
                raise ConfigError(f"{key}: {error}") from error

    for index, name in enumerate(config.eval.metrics):
        registered(METRICS, name, f"{where}.metrics[{index}]")
    for key in ("fd_extractor", "clip_model"):
        registered(EXTRACTORS, getattr(config.eval, key), f"{where}.{key}")
    registered(EXTRACTORS, config.eval.cmmd_extractor, f"{where}.cmmd_extractor")
    if config.eval.diversity_extractor is not None:
        registered(EXTRACTORS, config.eval.diversity_extractor, f"{where}.diversity_extractor")
    for key in ("weights", "revisions", "unverified_weights"):
        for name in getattr(config.eval, key):
            if name not in EXTRACTORS:
                raise ConfigError(f"{where}.{key}: unknown extractor {name!r}; extractors: "
                                  f"{', '.join(EXTRACTORS.names())}")
    for name in config.eval.revisions:
        if not any(spec.hf_repo for spec in EXTRACTORS.get(name).weights_specs):
            raise ConfigError(f"{where}.revisions: {name!r} does not load from the Hugging Face hub")


def evaluate(config: ExperimentConfig, method: str, run_dir: str | Path | None = None,
             show_progress: bool = True, samples: Callable[[Taxonomy], SampleSet] | None = None, *,
             seed: int | None = None, point: str | None = None,
             budget_axes: dict[str, float] | None = None) -> EvalResult:
    """Evaluate `method`'s samples in `run_dir` (default: the config's run folder); write its JSON and CSV rows.

    `samples`: reads images from elsewhere given the dataset's taxonomy (another generator's folder,
    `taxabench.metrics.external_samples`); they are evaluated and written under the name `method` instead of
    `run_dir/samples/<method>/`. `seed` and `point` pick the sample folder of a training seed (multi-seed runs)
    and of a budget point (None: the final checkpoint; `unseen`: its samples of the species withheld from training,
    against their real images, `TaxaData.unseen_view`); the rows carry the seed (`config.seed` when None), the
    point, the split compared against (`data.eval_split`) and `budget_axes` (NaN where not given).

    Raises `SamplesError` for a sample folder that breaks the contract, `WeightsNotFoundError` when an
    extractor's weights cannot be resolved offline, `TaxabenchError` for unknown metric or extractor names.
    """
    from taxabench.metrics.registry import METRICS

    check_eval_names(config)  # unknown names fail before any work
    layout = RunLayout(Path(run_dir) if run_dir is not None else config.run_dir)
    if method == CEILING_METHOD:
        raise TaxabenchError(f"'{CEILING_METHOD}' names the real-image ceiling rows of metrics/all.csv; "
                             "give the samples another name")
    metrics = [METRICS.get(name)() for name in config.eval.metrics]
    data = load_dataset(config.data)
    check_resample_by(config, data.ranks)
    unseen = point == POINT_UNSEEN
    if unseen:
        data = data.unseen_view()
    if samples is None:
        sample_set = read_samples(layout.samples(method, seed, point), method, data.taxonomy)
    else:
        sample_set = samples(data.taxonomy)
    context = EvalContext(config, data, EvalSets.build(data, sample_set, unseen=unseen), show_progress)

    measurements: list[Measurement] = []
    for metric in metrics:
        measurements += metric.compute(context)
    for measurement in measurements:  # weights accepted by eval.unverified_weights: said next to every number
        unverified = re.search(r"unverified: sha256 [0-9a-f]{64}", measurement.weights)
        if unverified and unverified.group(0) not in measurement.name:
            measurement.name = f"{measurement.name} [{unverified.group(0)}]"
    notes = _small_sample_warnings(measurements)
    for note in notes:
        warnings.warn(note, SmallSampleWarning, stacklevel=2)

    json_path, csv_path = layout.metrics_json(method, seed, point), layout.all_csv
    key = {KEY_SEED: config.seed if seed is None else seed, KEY_POINT: point or POINT_FINAL,
           KEY_SPLIT: config.data.eval_split}
    key.update({axis: (budget_axes or {}).get(axis, math.nan) for axis in budget.AXES})
    from accelerate import PartialState

    if PartialState().is_main_process:
        report = _json_report(method, config, data, context, measurements, notes, key)
        write_bytes(json_path, json.dumps(report, indent=2, allow_nan=False).encode(), "metrics")
        write_csv_rows(csv_path, method, [m for m in measurements if m.subject == SUBJECT_GENERATED], key)
        ceiling = [m for m in measurements if m.subject == SUBJECT_REAL]
        if ceiling:  # the ceiling is shared by every method: only the quantities computed now are replaced
            untrained = {**key, **{axis: math.nan for axis in BUDGET_COLUMNS}}  # no method's budget is the ceiling's
            write_csv_rows(csv_path, CEILING_METHOD, ceiling, untrained,
                           only_metrics=frozenset(m.metric for m in ceiling))
    return EvalResult(method, measurements, json_path, csv_path, notes, sample_set)


def write_not_applicable(config: ExperimentConfig, method: str, reason: str, run_dir: str | Path | None = None,
                         seed: int | None = None) -> None:
    """The unseen-species row of a method that cannot generate a species it was not trained on: metric
    `not_applicable`, scope `unseen`, value NaN, the reason in `name`; and its JSON, which says the same."""
    layout = RunLayout(Path(run_dir) if run_dir is not None else config.run_dir)
    key = {KEY_SEED: config.seed if seed is None else seed, KEY_POINT: POINT_UNSEEN, KEY_SPLIT: config.data.eval_split,
           **{axis: math.nan for axis in BUDGET_COLUMNS}}
    nan = math.nan
    row = Measurement(NOT_APPLICABLE, f"not applicable: {reason}", ScopeValue(SCOPE_UNSEEN, nan, nan, nan, 0, 0, 0, 0),
                      extractor="", weights="", higher_is_better=True)
    report = {"method": method, "seed": key[KEY_SEED], "point": POINT_UNSEEN, "applicable": False, "reason": reason,
              "warnings": [], "measurements": []}
    write_bytes(layout.metrics_json(method, seed, POINT_UNSEEN), json.dumps(report, indent=2).encode(), "metrics")
    write_csv_rows(layout.all_csv, method, [row], key)


def csv_rows(method: str, measurements: list[Measurement], key: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`all.csv` rows of one evaluation; `key`: its seed, point, split and budget axes (absent: left empty)."""
    return [
        {KEY_METHOD: method, KEY_METRIC: m.metric, KEY_NAME: m.name, KEY_SCOPE: m.scope.scope,
         KEY_VALUE: m.scope.value, KEY_CI_LOW: m.scope.ci_low, KEY_CI_HIGH: m.scope.ci_high,
         KEY_N_REAL: m.scope.n_real, KEY_N_GENERATED: m.scope.n_generated, KEY_N_TAXA: m.scope.n_taxa,
         KEY_EXTRACTOR: m.extractor, KEY_WEIGHTS: m.weights, KEY_HIGHER_IS_BETTER: m.higher_is_better,
         KEY_PROTOCOL: m.protocol_string(), **{k: v for k, v in (key or {}).items() if k in CSV_COLUMNS}}
        for m in measurements
    ]


def upgrade_table(table, path: Path, seed: int, eval_split: str | None):
    """An `all.csv` in taxabench's columns: a layout-1 table (final evaluations of one seed) gains the seed, point,
    split and budget columns; a table that still carries wall-clock seconds (kept in the JSONs since) loses them;
    any other set of columns is refused, naming the file."""
    if list(table.columns) == list(LAYOUT_1_COLUMNS):
        table = table.assign(**{KEY_SEED: seed, KEY_POINT: POINT_FINAL, KEY_SPLIT: eval_split},
                             **{axis: math.nan for axis in BUDGET_COLUMNS})
    if list(table.columns) == [*CSV_COLUMNS, budget.WALL_SECONDS]:
        table = table.drop(columns=[budget.WALL_SECONDS])
    if list(table.columns) != list(CSV_COLUMNS):
        raise TaxabenchError(f"{path} has columns {list(table.columns)}, expected {list(CSV_COLUMNS)}; "
                             "move it away and re-evaluate every method")
    return table


def write_csv_rows(path: Path, method: str, measurements: list[Measurement], key: dict[str, Any],
                   only_metrics: frozenset[str] | None = None) -> None:
    """Replace the rows of `method` at `key`'s seed and point in `all.csv` (other rows are kept in their order):
    those of `only_metrics`, or (None) all but the `SEPARATE_METRICS` another step writes."""
    import pandas as pd

    new = pd.DataFrame(csv_rows(method, measurements, key), columns=list(CSV_COLUMNS))
    if path.is_file():
        old = upgrade_table(pd.read_csv(path), path, key[KEY_SEED], key[KEY_SPLIT])
        same = (old[KEY_METHOD] == method) & (old[KEY_SEED] == key[KEY_SEED]) & (old[KEY_POINT] == key[KEY_POINT])
        same &= old[KEY_METRIC].isin(only_metrics) if only_metrics is not None else ~old[KEY_METRIC].isin(SEPARATE_METRICS)
        new = pd.concat([old[~same], new], ignore_index=True)
    write_table(path, new)


TABLE_DIGEST_SUFFIX = ".sha256"
_TABLE_FIX = ("delete it and rerun the same `taxabench run` command: the steps that wrote its rows write them again "
              "(from their feature caches)")


def write_table(path: Path, table) -> None:
    """Write `all.csv` and, beside it, the SHA-256 of the bytes written (`all.csv.sha256`, `sha256sum -c` format),
    by which `check_table` knows the file is as taxabench wrote it."""
    data = table.to_csv(index=False).encode()
    write_bytes(path, data, "table")
    digest = f"{hashlib.sha256(data).hexdigest()}  {path.name}\n"
    write_bytes(path.with_name(path.name + TABLE_DIGEST_SUFFIX), digest.encode(), "table-digest")


def table_sources(content: dict) -> list[dict[str, Any]]:
    """The `all.csv` rows one run JSON vouches for (an evaluation's, a probe's, a not-applicable row's), each with
    its method, seed and point; an evaluation's held-out real-image measurements are rows of `CEILING_METHOD`."""
    if "probe_of" in content:
        key = {KEY_METHOD: content["probe_of"], KEY_SEED: content.get("seed"), KEY_POINT: POINT_FINAL}
        return [{**row, **key} for row in content.get("measurements", [])]
    if "method" not in content:
        return []  # a guidance choice: no rows
    key = {KEY_SEED: content.get("seed"), KEY_POINT: content.get("point", POINT_FINAL)}
    if content.get("applicable") is False:
        return [{KEY_METHOD: content["method"], **key, KEY_METRIC: NOT_APPLICABLE,
                 KEY_NAME: f"not applicable: {content['reason']}", KEY_SCOPE: SCOPE_UNSEEN}]
    return [{**row, **key, KEY_METHOD: content["method"] if row.get("subject") != SUBJECT_REAL else CEILING_METHOD}
            for row in content.get("measurements", [])]


def check_table(table, path: Path, sources: dict[Path, dict]) -> None:
    """Refuse an `all.csv` holding a number no evaluation produced: each row of a (method, seed, point) whose JSON
    is in the run folder must equal that JSON's measurement (`sources`: every run JSON, by path), and a table with a
    digest (`write_table`) must still have the bytes it was written with. A folder written before digests, or
    trimmed of some JSONs (a committed report's bundle), is checked against the JSONs it has.

    Raises `DamagedFileError` naming the file, the line and the differing value."""
    from taxabench.errors import DamagedFileError

    digest_path = path.with_name(path.name + TABLE_DIGEST_SUFFIX)
    if digest_path.is_file():
        recorded = (digest_path.read_text().split() or [""])[0]
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        if found != recorded:
            raise DamagedFileError(path, f"its bytes are not those taxabench wrote (SHA-256 {found[:12]}, "
                                         f"{digest_path.name} says {recorded[:12]}): it was edited", _TABLE_FIX)
    vouched: dict[tuple, list[tuple[dict, Path]]] = {}
    for source_path, content in sources.items():
        for row in table_sources(content):
            vouched.setdefault(_source_key(row), []).append((row, source_path))
    for line, row in enumerate(table.to_dict("records"), start=2):  # line 1: the header
        candidates = vouched.get(_source_key(row))
        if candidates is None:
            continue  # no JSON of this evaluation in the folder
        same = [(c, p) for c, p in candidates
                if (c[KEY_METRIC], c[KEY_NAME], c[KEY_SCOPE]) == (row[KEY_METRIC], row[KEY_NAME], row[KEY_SCOPE])]
        where = (f"line {line} ({row[KEY_METHOD]}, {row[KEY_METRIC]}, {row[KEY_SCOPE]}, seed {row[KEY_SEED]}, "
                 f"{row[KEY_POINT]})")
        if not same:
            raise DamagedFileError(path, f"{where} is in no measurement of {candidates[0][1]}", _TABLE_FIX)
        if not any(_row_equals(row, c) for c, _ in same):
            source, source_path = same[0]
            column = next(c for c in _COMPARED if c in source and not _same_value(row[c], source[c]))
            raise DamagedFileError(path, f"{where} has {column} {row[column]!r}, but {source_path} says "
                                         f"{source[column]!r}", _TABLE_FIX)


def _source_key(row: dict) -> tuple:
    """Which JSON writes a row: the evaluation of (method, seed, point), or its probe (`SEPARATE_METRICS`)."""
    return row[KEY_METHOD], row[KEY_SEED], row[KEY_POINT], row[KEY_METRIC] in SEPARATE_METRICS


_COMPARED = (KEY_VALUE, KEY_CI_LOW, KEY_CI_HIGH, KEY_N_REAL, KEY_N_GENERATED, KEY_N_TAXA, KEY_EXTRACTOR, KEY_WEIGHTS,
             KEY_HIGHER_IS_BETTER)


def _row_equals(row: dict, source: dict) -> bool:
    return all(_same_value(row[column], source.get(column)) for column in _COMPARED if column in source)


def _same_value(found: Any, expected: Any) -> bool:
    """A table cell against its JSON value: NaN, infinities and empty text are the JSON's null."""
    found, expected = _as_null(found), _as_null(expected)
    if found is None or expected is None:
        return found is None and expected is None
    if isinstance(expected, (bool, np.bool_)) or isinstance(found, (bool, np.bool_)):
        return bool(found) == bool(expected)
    if isinstance(expected, str) or isinstance(found, str):
        return str(found) == str(expected)
    return math.isclose(float(found), float(expected), rel_tol=1e-9, abs_tol=1e-12)


def _as_null(value: Any) -> Any:
    if value == "" or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return None
    return value


def _small_sample_warnings(measurements: list[Measurement]) -> list[str]:
    notes = []
    for m in measurements:
        if m.metric == "fd" and m.scope.scope in POOLED_SCOPES:
            smallest = min(m.scope.n_real, m.scope.n_generated)
            if smallest < FD_MIN_IMAGES:
                notes.append(
                    f"{m.name}: {m.scope.n_real} real and {m.scope.n_generated} generated images, fewer than "
                    f"{FD_MIN_IMAGES:,} on a side; the value is biased upwards and comparable only between methods "
                    "evaluated with the same numbers of images"
                )
    return notes


def _json_report(method: str, config: ExperimentConfig, data: TaxaData, context: EvalContext,
                 measurements: list[Measurement], notes: list[str], key: dict[str, Any]) -> dict[str, Any]:
    sets = context.sets
    return {
        "method": method,
        "seed": key[KEY_SEED],
        "point": key[KEY_POINT],
        "budget": {axis: _finite(key[axis]) for axis in budget.AXES},
        "taxabench_version": __version__,
        "config_fingerprint": config.fingerprint("data", "eval"),
        "data": {"dataset": data.dataset, "fingerprint": data.fingerprint(), "eval_split": config.data.eval_split,
                 "image_size": config.data.image_size, "resize": config.data.resize, "rank": sets.rank,
                 "ranks": list(sets.ranks), "resample_by": config.eval.resample_by,
                 "taxa": len(sets.units), "real_images": len(sets.real), "scope": sets.pooled_name,
                 **({"unseen_species": [t.id for t in sets.units]} if sets.pooled_name == SCOPE_UNSEEN else {}),
                 "rare_threshold": data.rare_threshold},
        "samples": {"folder": str(sets.generated.folder), "manifest": sets.generated.manifest,
                    "images": len(sets.generated.images), "skipped": sets.generated.skipped},
        "extractors": {name: {"weights": e.identity, "protocol": e.protocol,
                              "build": getattr(e, "build_report", None)} for name, e in context._extractors.items()},
        "eval": {"bootstrap": config.eval.bootstrap, "bootstrap_set_metrics": config.eval.bootstrap_set_metrics,
                 "confidence": config.eval.confidence, "seed": config.eval.seed,
                 "ci_method": "percentile bootstrap over taxa, re-centred on the estimate"},
        "warnings": notes,
        "measurements": [
            {**{k: _finite(v) for k, v in row.items() if k != KEY_METHOD}, "protocol": m.protocol, "subject": m.subject,
             "n_bootstrap": m.scope.n_bootstrap,
             "per_taxon": {k: _finite(v) for k, v in m.scope.per_taxon.items()} if m.scope.per_taxon else None,
             "skipped_taxa": m.scope.skipped_taxa}
            for row, m in zip(csv_rows(method, measurements), measurements)
        ],
    }


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
