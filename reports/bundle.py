"""`python reports/bundle.py RUN DEST`: the slice of a run folder that `taxabench report --run` reads, for committing
a benchmark's results: no weights, and of the samples only the images the report's grid shows, so that
`taxabench report --run DEST` regenerates the report byte for byte (reports/synthtaxa/ was made this way)."""
import json
import shutil
import sys
from pathlib import Path

run, dest = Path(sys.argv[1]), Path(sys.argv[2])


def copy(path: Path) -> None:
    out = dest / path.relative_to(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, out)


for name in ("config.yaml", "layout.json", "provenance.json", "steps.json"):
    copy(run / name)
for pattern in ("metrics/**/*", "report/*", "checkpoints/**/manifest.json", "checkpoints/**/loss.csv",
                "checkpoints/**/budget.json", "along/**/metrics/*.json", "unseen/**/metrics/*.json"):
    for path in sorted(run.glob(pattern)):
        if path.is_file():
            copy(path)
seeds = sorted((p for p in (run / "samples").iterdir() if p.name.startswith("seed-")), key=lambda p: int(p.name[5:]))
first = seeds[0] if seeds else run / "samples"
# taxabench.report.sample_grid's choice: the sorted slugs of the first folder, every len//6-th, 2 images each
folders = sorted(p for p in first.iterdir() if (p / "metadata.jsonl").is_file())
lines = [json.loads(line) for line in (folders[0] / "metadata.jsonl").read_text().splitlines()]
slugs = sorted({line["taxon_slug"] for line in lines})
chosen = slugs[::max(1, len(slugs) // 6)][:6]
for folder in folders:
    for name in ("metadata.jsonl", "stages.png"):
        if (folder / name).is_file():
            copy(folder / name)
    for slug in chosen:
        for image in sorted((folder / slug).glob("*.png"))[:2]:
            copy(image)
