"""`evaluate(config, method, run_dir)`: one method's generated samples against the real images, every metric.

Reads `runs/<name>/samples/<method>/` (contract: `taxabench.metrics.samples`), computes the metrics listed in
`eval.metrics`, and writes

- `runs/<name>/metrics/<method>.json`: every measurement with its N, CI, extractor, weights identity, protocol,
  per-taxon values for the rank scopes, and the warnings;
- `runs/<name>/metrics/all.csv`: the method's rows, replacing any earlier rows of the same method, and the rows of
  method `real-images` (`CEILING_METHOD`): the per-image metrics scored on the held-out real images of the same
  taxa, the ceiling row of the report's tables (the same for every method of a run). This file is the single
  source of the report tables; it is derived from the per-method JSONs (`rebuild_table`), so a deleted or damaged
  one is rebuilt, and its numbers never go through a CSV round trip. Columns (`CSV_COLUMNS`, in this order):

  ===================  =====================================================================================
  method               the method name (sample folder name)
  metric               quantity key: fd, kid, lpips, lpips_diversity, clip_score, top1, top5
  name                 display name naming the extractor: FID / FD (synthclip), KID (...), LPIPS (VGG) or
                       LPIPS (VGG, untrained backbone), BioCLIP score / CLIP score (synthclip),
                       top-1 accuracy (synthclip) ...
  scope                overall | rare | common | a rank (class, order, ..., species); see
                       `taxabench.metrics.aggregate` for what each scope computes
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
  ===================  =====================================================================================
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taxabench import __version__
from taxabench.config import ExperimentConfig
from taxabench.data import TaxaData, load_dataset
from taxabench.errors import TaxabenchError
from taxabench.files import read_json, write_bytes
from taxabench.metrics.aggregate import Resampling
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
from taxabench.metrics.samples import SampleSet, read_samples, samples_folder
from taxabench.metrics.scopes import SCOPE_OVERALL, EvalSets
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
CSV_COLUMNS = (KEY_METHOD, KEY_METRIC, KEY_NAME, KEY_SCOPE, KEY_VALUE, KEY_CI_LOW, KEY_CI_HIGH, KEY_N_REAL,
               KEY_N_GENERATED, KEY_N_TAXA, KEY_EXTRACTOR, KEY_WEIGHTS, KEY_HIGHER_IS_BETTER, KEY_PROTOCOL)

CEILING_METHOD = "real-images"  # the rows of held-out real images scored like generated ones
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
        return [m for m in self.measurements if m.scope.scope == SCOPE_OVERALL and m.subject == SUBJECT_GENERATED]


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
        return Resampling(self.config.eval.bootstrap, self.config.eval.confidence, self.config.eval.seed)

    @property
    def pooled_resampling(self) -> Resampling:
        return Resampling(self.config.eval.bootstrap_set_metrics, self.config.eval.confidence, self.config.eval.seed)

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

    names = dict.fromkeys(name for metric in config.eval.metrics for name in METRICS.get(metric)().extractors(config))
    return {name: EXTRACTORS.get(name).load(config).identity for name in names}


def evaluate(config: ExperimentConfig, method: str, run_dir: str | Path | None = None,
             show_progress: bool = True, samples: Callable[[Taxonomy], SampleSet] | None = None) -> EvalResult:
    """Evaluate `method`'s samples in `run_dir` (default: the config's run folder); write its JSON and CSV rows.

    `samples`: reads images from elsewhere given the dataset's taxonomy (another generator's folder,
    `taxabench.metrics.external_samples`); they are evaluated and written under the name `method` instead of
    `run_dir/samples/<method>/`.

    Raises `SamplesError` for a sample folder that breaks the contract, `WeightsNotFoundError` when an
    extractor's weights cannot be resolved offline, `TaxabenchError` for unknown metric or extractor names.
    """
    from taxabench.metrics.registry import METRICS

    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    if method == CEILING_METHOD:
        raise TaxabenchError(f"'{CEILING_METHOD}' names the real-image ceiling rows of metrics/all.csv; "
                             "give the samples another name")
    metrics = [METRICS.get(name)() for name in config.eval.metrics]  # unknown names fail before any work
    data = load_dataset(config.data)
    if samples is None:
        sample_set = read_samples(samples_folder(run_dir, method), method, data.taxonomy)
    else:
        sample_set = samples(data.taxonomy)
    context = EvalContext(config, data, EvalSets.build(data, sample_set), show_progress)

    measurements: list[Measurement] = []
    for metric in metrics:
        measurements += metric.compute(context)
    notes = _small_sample_warnings(measurements)
    for note in notes:
        warnings.warn(note, SmallSampleWarning, stacklevel=2)

    out = run_dir / "metrics"
    json_path, csv_path = out / f"{method}.json", out / "all.csv"
    from accelerate import PartialState

    if PartialState().is_main_process:
        report = _json_report(method, config, data, context, measurements, notes)
        write_bytes(json_path, json.dumps(report, indent=2, allow_nan=False).encode(), "metrics")
        write_csv_rows(csv_path, method)
    return EvalResult(method, measurements, json_path, csv_path, notes, sample_set)


def csv_rows(method: str, measurements: list[Measurement]) -> list[dict[str, Any]]:
    return [
        {KEY_METHOD: method, KEY_METRIC: m.metric, KEY_NAME: m.name, KEY_SCOPE: m.scope.scope,
         KEY_VALUE: m.scope.value, KEY_CI_LOW: m.scope.ci_low, KEY_CI_HIGH: m.scope.ci_high,
         KEY_N_REAL: m.scope.n_real, KEY_N_GENERATED: m.scope.n_generated, KEY_N_TAXA: m.scope.n_taxa,
         KEY_EXTRACTOR: m.extractor, KEY_WEIGHTS: m.weights, KEY_HIGHER_IS_BETTER: m.higher_is_better,
         KEY_PROTOCOL: m.protocol_string()}
        for m in measurements
    ]


def write_csv_rows(path: Path, method: str) -> None:
    """Replace `method`'s rows of `all.csv` with those of its JSON, written just before: the methods already there
    keep their order and this one comes last; its ceiling rows replace the ceiling rows of the quantities it
    computed (the ceiling is shared by every method of a run)."""
    earlier = [m for m in table_methods(path) if m not in (method, CEILING_METHOD)]
    rebuild_table(path.parent.parent, [*earlier, method])


def table_methods(path: Path) -> list[str]:
    """The methods of an `all.csv`, in order (none when it is missing or unreadable)."""
    import pandas as pd

    try:
        return list(dict.fromkeys(pd.read_csv(path, usecols=[KEY_METHOD], dtype=str)[KEY_METHOD]))
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return []


def rebuild_table(run_dir: Path, methods: list[str]) -> Path:
    """Write `<run>/metrics/all.csv` from `metrics/<method>.json` of each of `methods` that has one, as evaluating
    them in that order leaves it: each method's generated-image rows appended, its ceiling rows replacing the
    ceiling rows of the same quantities and appended after them."""
    import pandas as pd

    folder = Path(run_dir) / "metrics"
    rows: list[dict[str, Any]] = []
    for method in dict.fromkeys(m for m in methods if m != CEILING_METHOD):
        path = folder / f"{method}.json"
        if not path.is_file():
            continue
        entries = read_json(path, f"re-evaluate it: `taxabench run --force eval/{method}`").get("measurements", [])
        generated = [json_csv_row(method, e) for e in entries if e.get("subject", SUBJECT_GENERATED) == SUBJECT_GENERATED]
        ceiling = [json_csv_row(CEILING_METHOD, e) for e in entries if e.get("subject") == SUBJECT_REAL]
        rows = [r for r in rows if r[KEY_METHOD] != method] + generated
        if ceiling:
            replaced = {r[KEY_METRIC] for r in ceiling}
            rows = [r for r in rows if not (r[KEY_METHOD] == CEILING_METHOD and r[KEY_METRIC] in replaced)] + ceiling
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    return write_bytes(folder / "all.csv", table.to_csv(index=False).encode(), "table")


def json_csv_row(method: str, entry: dict[str, Any]) -> dict[str, Any]:
    """An `all.csv` row from a measurement of a method's JSON (undefined numbers are null there, NaN here)."""
    row = {key: entry[key] for key in CSV_COLUMNS if key not in (KEY_METHOD, KEY_PROTOCOL)}
    row = {key: math.nan if value is None and key in (KEY_VALUE, KEY_CI_LOW, KEY_CI_HIGH) else value
           for key, value in row.items()}
    protocol = ";".join(f"{k}={v}" for k, v in entry[KEY_PROTOCOL].items())
    return {KEY_METHOD: method, **row, KEY_PROTOCOL: protocol}


def _small_sample_warnings(measurements: list[Measurement]) -> list[str]:
    notes = []
    for m in measurements:
        if m.metric == "fd" and m.scope.scope == SCOPE_OVERALL:
            smallest = min(m.scope.n_real, m.scope.n_generated)
            if smallest < FD_MIN_IMAGES:
                notes.append(
                    f"{m.name}: {m.scope.n_real} real and {m.scope.n_generated} generated images, fewer than "
                    f"{FD_MIN_IMAGES:,} on a side; the value is biased upwards and comparable only between methods "
                    "evaluated with the same numbers of images"
                )
    return notes


def _json_report(method: str, config: ExperimentConfig, data: TaxaData, context: EvalContext,
                 measurements: list[Measurement], notes: list[str]) -> dict[str, Any]:
    sets = context.sets
    return {
        "method": method,
        "taxabench_version": __version__,
        "config_fingerprint": config.fingerprint("data", "eval"),
        "data": {"dataset": data.dataset, "fingerprint": data.fingerprint(), "eval_split": config.data.eval_split,
                 "image_size": config.data.image_size, "resize": config.data.resize, "rank": sets.rank,
                 "taxa": len(sets.units), "real_images": len(sets.real),
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
