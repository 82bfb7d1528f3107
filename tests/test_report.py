"""The report is a pure function of the run folder: tables from a fixture all.csv, rerun gives the same bytes."""

import shutil
from pathlib import Path

import pytest

from taxabench.errors import TaxabenchError
from taxabench.report import RunFolder, best_and_separation, cell, render, write_report

FIXTURE = Path(__file__).parent / "fixtures" / "all.csv"


@pytest.fixture
def run_folder(tmp_path):
    (tmp_path / "metrics").mkdir()
    shutil.copy(FIXTURE, tmp_path / "metrics" / "all.csv")
    (tmp_path / "config.yaml").write_text(
        "name: fixture\ndata: {dataset: synthtaxa, image_size: 64, rare_threshold: 5}\n"
        "sample: {images_per_taxon: 4, steps: 25, scheduler: ddim, guidance_scale: 9.0}\n"
    )
    return tmp_path


def test_main_table_has_the_papers_columns_cis_and_the_best_in_bold(run_folder):
    text = render(RunFolder.read(run_folder), figures={})
    header = next(line for line in text.splitlines() if line.startswith("| method | FD"))
    assert header == ("| method | FD (synthclip) ↓ | KID (synthclip) ↓ | LPIPS (VGG) ↓ | CLIP score (synthclip) ↑ "
                      "| top-1 accuracy (synthclip) ↑ |")
    row = next(line for line in text.splitlines() if line.startswith("| `taxadiffusion` |"))
    assert "**10.00** [9.00, 11.00]" in row and "**40.0** [35.0, 45.0]" in row
    # ablations and guidance variants are not main rows: they are grouped under their method
    main = text.split("## Per rank")[0]
    assert "`taxadiffusion-joint`" not in main.split("<details>")[0] and "`flat-ldm` |" in main
    ablations = text.split("## Ablations")[1]
    assert "`taxadiffusion-joint`" in ablations and "`taxadiffusion+cfg`" in ablations
    assert "`flat-ldm`" not in ablations.split("## Metric models")[0]


def test_separation_verdicts_follow_the_intervals(run_folder):
    table = RunFolder.read(run_folder).table
    assert best_and_separation(table, ["taxadiffusion", "flat-ldm"], "fd") == ("taxadiffusion", True)
    assert best_and_separation(table, ["taxadiffusion", "flat-ldm"], "lpips") == ("taxadiffusion", False)
    assert best_and_separation(table, ["flat-ldm"], "top1") == ("flat-ldm", None)
    text = render(RunFolder.read(run_folder), figures={})
    assert "- FD (synthclip) ↓: best `taxadiffusion`; its interval clears every other method's." in text
    assert "- LPIPS (VGG) ↓: best `taxadiffusion`; its interval overlaps" in text


def test_rank_and_tail_tables(run_folder):
    text = render(RunFolder.read(run_folder), figures={})
    assert "| method | genus | species |" in text
    assert "| `flat-ldm` | 30.0 [22.5, 37.5] | 20.0 [15.0, 25.0] |" in text  # top-1 per rank
    assert "top-1 accuracy (synthclip) ↑, rare" in text and "Rare: at most 5 training images." in text


def test_cells_show_value_and_interval_or_a_dash():
    assert cell(None) == "—"
    row = {"metric": "kid", "value": 0.012345, "ci_low": 0.01, "ci_high": 0.015}
    assert cell(row) == "0.0123 [0.0100, 0.0150]"
    assert cell({**row, "value": float("nan")}) == "—"


def test_regenerating_changes_nothing_and_figures_are_drawn(run_folder):
    first = write_report(run_folder)
    content = first.read_bytes()
    figures = sorted(p.name for p in first.parent.glob("*.png"))
    assert figures == ["metrics_per_rank.png", "rare_vs_common.png"]
    assert write_report(run_folder).read_bytes() == content
    assert "![metrics per rank](metrics_per_rank.png)" in content.decode()


def test_a_folder_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(TaxabenchError, match="metrics/all.csv not found"):
        write_report(tmp_path)


def test_ceiling_rows_and_metrics_the_report_does_not_name(run_folder):
    """Rows of `real-images` become the ceiling row of each table; a metric the report has never heard of (here
    `vendi_ratio`, also an unregistered sample folder `other-generator`) still gets its per-rank and per-bin rows."""
    csv = run_folder / "metrics" / "all.csv"
    weights = "synthclip@sha256:0123456789ab (built)"
    extra = [f"real-images,top1,top-1 accuracy (synthclip),{scope},{value},{value - 5},{value + 5},0,256,32,synthclip,"
             f"{weights},True,images=center-crop@64" for scope, value in (("overall", 80.0), ("genus", 90.0),
                                                                            ("species", 80.0), ("rare", 70.0))]
    extra += [f"{method},vendi_ratio,Vendi ratio (synthclip),{scope},{value},{value - 0.1},{value + 0.1},256,128,32,"
              f"synthclip,{weights},True,k=5" for method in ("taxadiffusion", "other-generator")
              for scope, value in (("rare", 0.5), ("common", 0.8), ("genus", 0.7))]
    csv.write_text(csv.read_text() + "\n".join(extra) + "\n")
    text = render(RunFolder.read(run_folder), figures={})
    assert "| _real images (ceiling)_ | 90.0 [85.0, 95.0] | 80.0 [75.0, 85.0] |" in text  # top-1 per rank
    main = text.split("## Per rank")[0]
    assert "| _real images (ceiling)_ | — | — | — | — | 80.0 [75.0, 85.0] |" in main
    assert "**Vendi ratio (synthclip) ↑**, per rank" in text and "`other-generator`" in text
    assert "| Vendi ratio (synthclip) ↑ | `taxadiffusion` | 0.500 [0.400, 0.600] | 0.800 [0.700, 0.900] | — |" in text
