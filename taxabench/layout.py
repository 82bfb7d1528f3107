"""The run folder's layout: the one place that knows where each step reads and writes under `runs/<name>/`.

Training, sampling, evaluation, the report and `taxabench run` ask a `RunLayout` for paths instead of joining
them, so that the layout can grow axes (training seeds, budget points) in one place::

    runs/<name>/
        layout.json                         {"layout": 2}; a folder without it is a layout-1 run (same paths)
        config.yaml  provenance.json  steps.json
        checkpoints/[seed-<s>/]<method>/    a method's training (its own format: taxabench/checkpoint.py)
        samples/[seed-<s>/]<entry>/         test-split samples of the final checkpoint
        metrics/[seed-<s>/]<entry>.json     one evaluation
        metrics/all.csv                     every number of the run, one row per (entry, seed, point, metric, scope)
        along/[seed-<s>/]<point>/samples/<entry>/   validation-split samples at a budget point
        along/[seed-<s>/]<point>/metrics/<entry>.json
        along/[seed-<s>/]sweep/samples/<entry>@<scale>/      a guidance sweep of the final checkpoint (validation)
        unseen/[seed-<s>/]samples/<method>/ the final checkpoint on the species withheld from training (test split;
        unseen/[seed-<s>/]metrics/<method>.json                            data.unseen_species)
        report/

`<entry>` is a sample folder name: a method, or `<method>+<guidance kind>` for a guidance variant. The seed level
`seed-<s>` exists only in runs that list several training seeds (`seeds: [...]`); a single-seed run keeps the
paths of layout 1, which is why runs made before this module are read as they are.

The sample folder's metadata contract (`metadata.jsonl`, one line per image) is defined here too, because the
sampler writes it and the evaluator reads it: neither has to import the other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from taxabench.errors import TaxabenchError
from taxabench.files import write_text

LAYOUT_VERSION = 2
LAYOUT_FILE = "layout.json"
POINT_FINAL = "final"  # the `point` of an evaluation of the final checkpoint (on the test split)
POINT_SWEEP = "sweep"  # the `point` of a guidance-sweep evaluation of the final checkpoint (validation split)
POINT_UNSEEN = "unseen"  # the `point` of the final checkpoint's evaluation on the species withheld from training
GUIDANCE_SEPARATOR = "+"  # a guidance variant's sample folder: `<method>+<kind>`, e.g. `taxadiffusion+cfg`
SCALE_SEPARATOR = "@"  # a sweep's sample folder: `<entry>@<scale>`, e.g. `taxadiffusion@4`
METADATA_FILE = "metadata.jsonl"
SAMPLE_KEYS: dict[str, type] = {
    "taxon_id": str, "taxon_slug": str, "rank": str, "lineage": list, "image": str, "seed": int, "method": str,
}


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder. `seed` is given only in multi-seed runs (None: layout-1 paths)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- the run's own files ------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def provenance_file(self) -> Path:
        return self.root / "provenance.json"

    @property
    def steps_file(self) -> Path:
        return self.root / "steps.json"

    @property
    def layout_file(self) -> Path:
        return self.root / LAYOUT_FILE

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def all_csv(self) -> Path:
        return self.metrics_dir / "all.csv"

    # -- per method, seed and budget point ----------------------------------------------------------------------
    def checkpoints(self, method: str, seed: int | None = None) -> Path:
        """A method's training folder (manifest, stages, loss log, budget-point checkpoints)."""
        return self.root / "checkpoints" / _seed_part(seed) / method

    def samples(self, entry: str, seed: int | None = None, point: str | None = None) -> Path:
        """A sample folder: the final checkpoint on the test split (point None), or a budget point on validation."""
        if point is None:
            return self.root / "samples" / _seed_part(seed) / entry
        return self._point(seed, point) / "samples" / entry

    def stage_figure(self, entry: str, seed: int | None = None) -> Path:
        """The "across progressive stages" figure of a method, next to its final samples."""
        return self.samples(entry, seed) / "stages.png"

    def metrics_json(self, entry: str, seed: int | None = None, point: str | None = None) -> Path:
        if point is None:
            return self.metrics_dir / _seed_part(seed) / f"{entry}.json"
        return self._point(seed, point) / "metrics" / f"{entry}.json"

    def _point(self, seed: int | None, point: str) -> Path:
        if point == POINT_UNSEEN:
            return self.root / POINT_UNSEEN / _seed_part(seed)
        return self.root / "along" / _seed_part(seed) / point

    # -- reading back --------------------------------------------------------------------------------------------
    def all_metrics_json(self) -> list[Path]:
        """Every evaluation's JSON in the run (final and along training, every seed), in a stable order."""
        found = [p for p in self.metrics_dir.rglob("*.json")] if self.metrics_dir.is_dir() else []
        for folder in (self.root / "along", self.root / POINT_UNSEEN):
            if folder.is_dir():
                found += [p for p in folder.rglob("metrics/*.json")]
        return sorted(found)

    def trained_manifests(self) -> list[Path]:
        """Every trained method's manifest in the run (every seed)."""
        folder = self.root / "checkpoints"
        return sorted(folder.glob("*/manifest.json")) + sorted(folder.glob("seed-*/*/manifest.json"))

    def version(self) -> int:
        """The layout version the folder was written with (1: before `layout.json` existed)."""
        if not self.layout_file.is_file():
            return 1
        try:
            return int(json.loads(self.layout_file.read_text())["layout"])
        except (ValueError, KeyError, TypeError) as error:
            raise TaxabenchError(f"{self.layout_file}: not a taxabench layout file ({error})") from error

    def check_readable(self) -> None:
        """Refuse a run folder written by a newer taxabench, with a message that says so."""
        found = self.version()
        if found > LAYOUT_VERSION:
            raise TaxabenchError(
                f"{self.root} was written with run layout {found}; this taxabench reads layouts up to "
                f"{LAYOUT_VERSION}: upgrade taxabench or use another run name"
            )

    def mark(self) -> None:
        """Write `layout.json` (a new run folder, or an older one this version now writes into)."""
        self.check_readable()
        self.root.mkdir(parents=True, exist_ok=True)
        if self.version() != LAYOUT_VERSION or not self.layout_file.is_file():
            write_text(self.layout_file, json.dumps({"layout": LAYOUT_VERSION}) + "\n", "layout")


def _seed_part(seed: int | None) -> str:
    return "" if seed is None else f"seed-{seed}"


def point_label(steps: int) -> str:
    """The folder name of a budget point: the optimizer steps after which it was taken, over the whole schedule."""
    return f"step-{steps:06d}"


def point_steps(label: str) -> int:
    """The optimizer steps of a budget point's folder name (`point_label`'s inverse)."""
    return int(label.removeprefix("step-"))


def write_metadata_line(handle, image: Path, folder: Path, taxon, seed: int, method: str, **extra) -> None:
    """Write one `metadata.jsonl` line of a sample folder (`SAMPLE_KEYS` + how it was made; for tests too)."""
    entry = {"taxon_id": taxon.id, "taxon_slug": taxon.slug, "rank": taxon.rank, "lineage": list(taxon.lineage),
             "image": Path(os.path.relpath(image, folder)).as_posix(), "seed": seed, "method": method, **extra}
    handle.write(json.dumps(entry) + "\n")
