"""`python reports/bundle.py RUN DEST`: the slice of a run folder that `taxabench report --run` reads, for committing
a benchmark's results: no weights, and of the samples only the images the report's grid shows, so that
`taxabench report --run DEST` regenerates the report byte for byte (reports/synthtaxa/ was made this way)."""

import shutil
import sys
from pathlib import Path

from taxabench.layout import METADATA_FILE
from taxabench.report import RunFolder, figure_methods, grid_images

run_dir, dest = Path(sys.argv[1]), Path(sys.argv[2])


def copy(path: Path) -> None:
    out = dest / path.relative_to(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, out)


for name in ("config.yaml", "layout.json", "provenance.json", "steps.json"):
    copy(run_dir / name)
for pattern in ("metrics/**/*", "report/*", "checkpoints/**/manifest.json", "checkpoints/**/loss.csv",
                "checkpoints/**/budget.json", "along/**/metrics/*.json", "unseen/**/metrics/*.json"):
    for path in sorted(run_dir.glob(pattern)):
        if path.is_file():
            copy(path)
run = RunFolder.read(run_dir)
_, generated = grid_images(run, figure_methods(run.table))
for method, images in generated.items():
    folder = run.layout.samples(method, run.shown_seed)
    for path in (folder / METADATA_FILE, run.layout.stage_figure(method, run.shown_seed)):
        if path.is_file():
            copy(path)
    for path in (p for paths in images.values() for p in paths):
        copy(path)
