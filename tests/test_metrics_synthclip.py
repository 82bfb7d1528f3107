"""synthclip built from scratch (small budget) and the sanity ordering of every metric it feeds on SynthTaxa."""

import json
import random

import pandas as pd
import pytest
from conftest import fabricate_samples

from taxabench.config import config_from_dict
from taxabench.data import load_dataset
from taxabench.metrics import build_synthclip, evaluate, weights_table
from taxabench.metrics.synthclip import ARCHITECTURE, build_folder

pytestmark = pytest.mark.filterwarnings("ignore::taxabench.metrics.evaluation.SmallSampleWarning")


def synthclip_experiment(tiny_world, runs_dir, **synthclip):
    return config_from_dict({
        "name": "sanity", "runs_dir": str(runs_dir),
        "data": {"dataset": "synthtaxa", "root": str(tiny_world)},
        "eval": {"metrics": ["fd", "kid", "clip_score", "taxa_accuracy"], "bootstrap": 200,
                 "bootstrap_set_metrics": 20, "synthclip": synthclip},
    })


@pytest.fixture(scope="module")
def sanity(tiny_world, tmp_path_factory):
    """synthclip trained for 120 steps; real training-split images filed under their own species ("right") and
    under a random other species ("shuffled"), evaluated against the held-out test split."""
    config = synthclip_experiment(tiny_world, tmp_path_factory.mktemp("runs"), steps=120, batch_size=32)
    missing = {row.component: row.found for row in weights_table(config)}
    build = build_synthclip(config, show_progress=False)
    data = load_dataset(config.data)
    species = data.species
    shuffled = species[:]
    random.Random(0).shuffle(shuffled)
    while any(a == b for a, b in zip(species, shuffled)):  # a derangement: every label wrong
        random.Random(len(shuffled)).shuffle(shuffled)
    fabricate_samples(config.run_dir, "right", data, species, per_taxon=8)
    fabricate_samples(config.run_dir, "shuffled", data, species, per_taxon=8, relabel=dict(zip(species, shuffled)))
    for method in ("right", "shuffled"):
        evaluate(config, method, show_progress=False)
    table = pd.read_csv(config.run_dir / "metrics" / "all.csv").set_index(["method", "metric", "scope"])
    return config, build, missing, table


def test_build_is_cached_reported_and_listed(sanity):
    config, build, missing_before, _ = sanity
    assert missing_before["synthclip"] is False  # not built before the fixture built it
    assert build.seconds is not None and build.folder == build_folder(config)
    report = json.loads((build.folder / "synthclip_build.json").read_text())
    assert report["architecture"] == ARCHITECTURE and report["training_split"] == "reference"
    assert report["zero_shot_top1"]["class"] > 90 and report["zero_shot_top1"]["species"] > 3 * 100 / 32
    again = build_synthclip(config, show_progress=False)
    assert again.seconds is None and again.report == build.report  # from the cache, not retrained
    assert {row.component: row.found for row in weights_table(config)}["synthclip"] is True
    evaluated = json.loads((config.run_dir / "metrics" / "right.json").read_text())
    assert evaluated["extractors"]["synthclip"]["build"]["zero_shot_top1"] == report["zero_shot_top1"]


def test_one_build_serves_every_eval_split(sanity):
    """Budget points evaluate on the validation split with the metric model the final test evaluation uses: the
    build depends on the training split only (a second synthclip per split cost the demo two minutes and made the
    curves' metric differ from the main table's)."""
    from dataclasses import replace

    config = sanity[0]
    validation = replace(config, data=replace(config.data, eval_split="validation"))
    assert build_folder(validation) == build_folder(config) == sanity[1].folder


def test_right_species_score_better_than_shuffled_labels(sanity):
    _, _, _, table = sanity

    def value(method, metric, scope):
        return table.loc[(method, metric, scope), "value"]

    for metric, scope in (("fd", "species"), ("fd", "genus"), ("kid", "species")):
        assert value("right", metric, scope) < value("shuffled", metric, scope), (metric, scope)
    for metric, scope in (("top1", "overall"), ("top1", "genus"), ("top5", "overall"), ("clip_score", "overall"),
                          ("clip_score", "species"), ("clip_score", "genus")):
        assert value("right", metric, scope) > value("shuffled", metric, scope), (metric, scope)
    # the pooled FD sees the same images in both folders: it is blind to labels by construction
    assert value("right", "fd", "overall") == pytest.approx(value("shuffled", "fd", "overall"), rel=1e-9)
    assert table.loc[("right", "fd", "overall"), "name"] == "FD (synthclip)"
    assert table.loc[("right", "clip_score", "overall"), "name"] == "CLIP score (synthclip)"


@pytest.mark.slow
def test_default_synthclip_tells_sibling_species_apart(tiny_world, tmp_path):
    """The default build (what the demo uses) must tell sibling species apart on held-out images."""
    build = build_synthclip(synthclip_experiment(tiny_world, tmp_path), show_progress=False)
    assert build.report["zero_shot_top1"]["species"] > 80 and build.report["zero_shot_top1"]["genus"] > 80
