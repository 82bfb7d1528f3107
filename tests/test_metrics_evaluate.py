"""`evaluate` end to end on fabricated sample folders, the outputs' schema, the caches and the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import fabricate_samples

from taxabench.cli import main
from taxabench.config import config_from_dict
from taxabench.data import load_dataset
from taxabench.metrics import CSV_COLUMNS, evaluate
from taxabench.metrics.cache import features_dir
from taxabench.metrics.evaluation import SmallSampleWarning
from taxabench.metrics.metric_fd import fd_from_features

DEFAULT_METRICS = config_from_dict({}).eval.metrics


def experiment(tiny_world, runs_dir, clip_folder, **eval_overrides):
    return config_from_dict({
        "name": "exp", "runs_dir": str(runs_dir),
        "data": {"dataset": "synthtaxa", "root": str(tiny_world)},
        "eval": {"weights": {"synthclip": str(clip_folder)}, "bootstrap": 200, "bootstrap_set_metrics": 20,
                 "lpips_backbone": "untrained", **eval_overrides},
    })


@pytest.fixture(scope="module")
def data(tiny_world):
    from taxabench.config import DataConfig

    return load_dataset(DataConfig(dataset="synthtaxa", root=str(tiny_world)))


@pytest.fixture(scope="module")
def evaluated(tiny_world, random_clip_folder, data, tmp_path_factory):
    """Six species (rare and common) with 3 'generated' images each, taken from the training split."""
    runs = tmp_path_factory.mktemp("runs")
    config = experiment(tiny_world, runs, random_clip_folder)
    rare = [t for t in data.species if data.taxonomy.image_count(t.id) <= data.rare_threshold][:3]
    common = [t for t in data.species if data.taxonomy.image_count(t.id) > data.rare_threshold][:3]
    fabricate_samples(config.run_dir, "copy", data, rare + common, per_taxon=3)
    with pytest.warns(SmallSampleWarning, match="fewer than 2,000 on a side"):
        result = evaluate(config, "copy", show_progress=False)
    return config, result, rare + common


def test_csv_rows_cover_every_metric_scope_with_counts(evaluated, data):
    _, result, species = evaluated
    table = pd.read_csv(result.csv_path)
    assert tuple(table.columns) == CSV_COLUMNS
    generated = table[table.method == "copy"]
    assert set(generated.metric) == {"fd", "kid", "lpips", "lpips_diversity", "clip_score", "top1", "top5",
                                     "mistake_severity", "path_consistency", "vendi", "precision", "recall",
                                     "density", "coverage", "nn_train_similarity", "copy_fraction"}
    # the per-image metrics also score the held-out real images: the ceiling rows
    ceiling = table[table.method == "real-images"]
    assert set(ceiling.metric) == {"clip_score", "top1", "top5", "mistake_severity", "path_consistency",
                                   "nn_train_similarity", "copy_fraction"}
    assert (ceiling[ceiling.scope == "overall"].n_generated == 6 * 8).all()
    table = generated
    scopes = set(table.scope)
    assert scopes == {"overall", "rare", "common", *data.ranks}
    fd = table[(table.metric == "fd")].set_index("scope")
    assert fd.loc["overall", "name"] == "FD (synthclip)" and fd.loc["overall", "n_taxa"] == 6
    generated = sum(min(3, len(data.records_of(t))) for t in species)  # rare species have 1-5 training images
    assert fd.loc["overall", "n_real"] == 6 * 8 and fd.loc["overall", "n_generated"] == generated
    assert fd.loc["rare", "n_taxa"] == 3 and fd.loc["common", "n_generated"] == 9
    # per-species FD: 8 real vs up to 3 generated each; a species with a single image has no covariance
    assert fd.loc["species", "n_taxa"] == sum(len(data.records_of(t)) >= 2 for t in species)
    scored = table[table.value.notna()]
    assert (scored.ci_low <= scored.value + 1e-9).all() and (scored.value <= scored.ci_high + 1e-9).all()
    # PRDC needs k + 1 = 6 images on each side of a taxon: no species has that many generated images
    prdc_species = table[(table.metric == "precision") & (table.scope == "species")].iloc[0]
    assert np.isnan(prdc_species.value) and prdc_species.n_taxa == 0
    assert set(table[table.value.isna()].metric) == {"precision", "recall", "density", "coverage"}
    lpips = table[table.metric == "lpips"].iloc[0]
    assert lpips["name"] == "LPIPS (VGG, untrained backbone)" and "untrained" in lpips["weights"]
    top5 = table[table.metric == "top5"]
    assert "class" not in set(top5.scope) and "order" not in set(top5.scope)  # <= 5 taxa: trivially 100%
    assert table.weights.str.startswith(("synthclip@sha256:", "lpips-vgg@")).all()


def test_overall_fd_is_fd_of_the_cached_features(evaluated, data):
    _, result, species = evaluated

    report = json.loads(result.json_path.read_text())
    fd = next(m for m in report["measurements"] if m["metric"] == "fd" and m["scope"] == "overall")
    assert fd["n_bootstrap"] == 20 and fd["protocol"]["images"] == "center-crop@64"
    per_species = next(m for m in report["measurements"] if m["metric"] == "fd" and m["scope"] == "species")
    single = {t.id for t in species if len(data.records_of(t)) == 1}
    assert set(per_species["per_taxon"]) == {t.id for t in species} - single
    assert set(per_species["skipped_taxa"]) == single
    assert all("needs 2 each" in why for why in per_species["skipped_taxa"].values())
    assert report["warnings"] and report["samples"]["images"] == sum(min(3, len(data.records_of(t))) for t in species)
    # the session's cache also holds other tests' features (other worlds, extractors and sample folders) and this
    # evaluation's training-split features (copying): one pair of cached files must give exactly the reported FD
    n_generated = report["samples"]["images"]
    real = [z["embedding"] for z in map(np.load, (features_dir() / "real").glob("*.npz")) if "embedding" in z]
    real = [e for e in real if len(e) == len(data.eval)]  # the whole evaluation split, keyed by its fingerprint
    generated = [z["embedding"] for z in map(np.load, (features_dir() / "generated").glob("*.npz")) if "embedding" in z]
    generated = [e for e in generated if len(e) == n_generated]
    assert real and generated, "the evaluation split's and the samples' features were cached"
    rows = [i for i, r in enumerate(data.eval) if r.lineage() in {t.lineage for t in species}]
    assert any(fd["value"] == pytest.approx(fd_from_features(r[rows], g), rel=1e-9) for r in real for g in generated)


def test_training_images_are_near_copies_and_vendi_pools_species(evaluated):
    """The fabricated samples are training images: every one is its own nearest training image."""
    _, result, _ = evaluated
    table = pd.read_csv(result.csv_path).set_index(["method", "metric", "scope"])
    assert table.loc[("copy", "nn_train_similarity", "overall"), "value"] == pytest.approx(1.0)
    for scope in ("overall", "rare", "common"):
        assert table.loc[("copy", "copy_fraction", scope), "value"] == 100.0
    reference = table.loc[("real-images", "copy_fraction", "overall"), "value"]
    n_real = table.loc[("real-images", "copy_fraction", "overall"), "n_generated"]
    # held-out real images above their own (interpolated) 95% quantile: 5%, up to one image of discreteness
    assert 0 < reference <= 100 * (1 - 0.95) + 100 / n_real
    assert "quantile=0.95;threshold=" in table.loc[("copy", "copy_fraction", "overall"), "protocol"]
    report = json.loads(result.json_path.read_text())
    vendi = {m["scope"]: m for m in report["measurements"] if m["metric"] == "vendi"}
    per_species = vendi["species"]["per_taxon"]
    assert vendi["overall"]["value"] == pytest.approx(np.mean(list(per_species.values())))
    assert vendi["overall"]["n_taxa"] == len(per_species)


def test_reevaluation_reads_caches_and_replaces_its_rows(evaluated, monkeypatch):
    config, result, _ = evaluated
    import taxabench.metrics.evaluation as module

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were recomputed instead of read from the cache")

    monkeypatch.setattr(module, "extract_features", no_extraction)
    monkeypatch.setattr("taxabench.metrics.metric_lpips._lpips_matrix", no_extraction)
    before = pd.read_csv(result.csv_path)
    config.eval.metrics = ["fd", "lpips", "clip_score"]
    try:
        with pytest.warns(SmallSampleWarning):
            again = evaluate(config, "copy", show_progress=False)
    finally:
        config.eval.metrics = DEFAULT_METRICS
    after = pd.read_csv(again.csv_path)
    after, before = after[after.method == "copy"], before[before.method == "copy"]
    assert set(after.metric) == {"fd", "lpips", "lpips_diversity", "clip_score"} and len(after) < len(before)
    for metric in ("fd", "lpips"):
        pd.testing.assert_frame_equal(after[after.metric == metric].reset_index(drop=True),
                                      before[before.metric == metric].reset_index(drop=True))


def test_other_methods_rows_are_kept(evaluated, data):
    config, result, species = evaluated
    fabricate_samples(config.run_dir, "second", data, species[:2], per_taxon=2)
    config.eval.metrics = ["clip_score"]
    try:
        evaluate(config, "second", show_progress=False)
    finally:
        config.eval.metrics = DEFAULT_METRICS
    table = pd.read_csv(result.csv_path)
    assert {"copy", "second", "real-images"} == set(table.method)
    # the ceiling rows of the metrics "second" was not evaluated with are kept
    assert {"top1", "mistake_severity", "copy_fraction"} <= set(table[table.method == "real-images"].metric)
    assert (table[table.method == "second"].scope == "overall").sum() == 1


def test_cli_eval_prints_headline_and_writes_files(tiny_world, random_clip_folder, data, tmp_path, capsys,
                                                   monkeypatch):
    from taxabench import cli

    monkeypatch.setattr(cli.console, "width", 200)  # one table row per line
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(
        f"name: cli\nruns_dir: {tmp_path / 'runs'}\ndata:\n  dataset: synthtaxa\n  root: {tiny_world}\n"
        f"eval:\n  metrics: [fd, taxa_accuracy]\n  bootstrap: 50\n  bootstrap_set_metrics: 10\n"
        f"  weights:\n    synthclip: local-dir:{random_clip_folder}\n"
    )
    fabricate_samples(tmp_path / "runs" / "cli", "m", data, data.species[:4], per_taxon=2)
    assert main(["eval", "--config", str(config_file), "--method", "m"]) == 0
    out = capsys.readouterr().out
    assert "FD (synthclip)" in out and "top-1 accuracy (synthclip)" in out and "warning:" in out
    assert (tmp_path / "runs" / "cli" / "metrics" / "m.json").is_file()
    assert main(["eval", "--config", str(config_file), "--method", "absent"]) == 1
    assert "no generated samples for method 'absent'" in capsys.readouterr().out


def test_cli_weights_table_and_list(capsys, tmp_path, monkeypatch):
    from taxabench import cli

    monkeypatch.setattr(cli.console, "width", 300)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "taxa_accuracy" in out and "lpips-vgg" in out
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for name in ("inception", "bioclip", "bioclip-2", "synthclip", "vgg16", "lpips heads"):
        assert name in out
    assert "missing" in out and "found" in out
