"""The training loop: every method trains and loads back; progressive freezing is bit-exact; a killed run resumes
to the same weights; caches change nothing; bad input gets the documented error."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import experiment, taxabench_on_two_processes
from safetensors.torch import load_file

from taxabench.errors import ConfigError, TaxabenchError
from taxabench.methods import build_method, list_methods
from taxabench.train import SampleStream, load_trained, method_dir, train_method

TWO_RANKS = {"ranks": ["class", "order"]}  # TaxaDiffusion on two ranks: two stages, enough to test progression


def trained_state(folder) -> dict[str, torch.Tensor]:
    """Every tensor a stage checkpoint holds, keyed by file and name."""
    state = {}
    for file in sorted(folder.rglob("*.safetensors")):
        state.update({f"{file.relative_to(folder)}:{k}": v for k, v in load_file(file).items()})
    return state


@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_and_loads_back(name, tiny_world, tiny_data, tiny_backbone, tmp_path):
    config = experiment(tiny_world, tmp_path, train={"steps_per_stage": 1},
                        method_options={"taxadiffusion": TWO_RANKS})
    folder = train_method(config, name, data=tiny_data, show_progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["completed"] == [s["name"] for s in manifest["stages"]]
    trained = load_trained(config.run_dir, name)
    if not manifest["stages"]:  # sd-zeroshot: nothing to train, the backbone as it is
        assert trained.stage is None
        return
    saved = trained_state(trained.checkpoint)
    assert saved, f"{name} saved no weights"
    # what load_trained put in memory is exactly what the stage saved
    loaded = {**{f"conditioner.safetensors:{k}": v for k, v in trained.method.conditioner.state_dict().items()}}
    if (trained.checkpoint / "unet").is_dir():
        loaded.update({f"unet/diffusion_pytorch_model.safetensors:{k}": v
                       for k, v in trained.backbone.unet.state_dict().items() if "lora_" not in k})
    for key, value in loaded.items():
        assert torch.equal(saved[key], value), key
    # and training moved the weights away from a fresh build of the same method
    fresh = fresh_method(name, config, tiny_data, trained)
    before = [*fresh.owned_parameters(), *fresh.backbone.unet.parameters()]
    after = [*trained.method.owned_parameters(), *trained.backbone.unet.parameters()]
    assert len(before) == len(after)
    assert any(not torch.equal(p, q) for p, q in zip(before, after))


def fresh_method(name, config, data, trained):
    """The method as `build_method` makes it before training, on a freshly loaded backbone."""
    from taxabench.backbone import load_sd_folder

    backbone = load_sd_folder(trained.backbone.path, trained.backbone.identity, trained.backbone.source)
    return build_method(name, config, data.ranks, trained.method.species, backbone)


def test_progressive_freezing_is_bit_exact(tiny_world, tiny_data, tiny_backbone, tmp_path):
    config = experiment(tiny_world, tmp_path, train={"steps_per_stage": 3})  # all five ranks of the world
    folder = train_method(config, "taxadiffusion", data=tiny_data, show_progress=False)
    stages = [load_file(folder / f"stage-{k}" / "conditioner.safetensors") for k in range(5)]
    loras = [load_file(folder / f"stage-{k}" / "pytorch_lora_weights.safetensors") for k in range(5)]
    trained = load_trained(config.run_dir, "taxadiffusion")
    initial = fresh_method("taxadiffusion", config, tiny_data, trained).conditioner.state_dict()

    def module(state, k):
        return {n: t for n, t in state.items() if n.startswith(f"rank_modules.{k}.")}

    assert any(not torch.equal(v, initial[n]) for n, v in module(stages[0], 0).items()), "stage 0 left rank 0 as built"
    assert any(v.abs().sum() > 0 for n, v in loras[0].items() if "lora_B" in n or "lora.up" in n), "LoRA untrained"
    for k in range(1, 5):
        before, after = stages[k - 1], stages[k]
        for j in range(k):  # earlier modules: bit-identical
            assert all(torch.equal(after[n], before[n]) for n in module(before, j)), f"stage {k} moved rank {j}"
        for n in loras[k]:  # the LoRA trained in stage 0 only
            assert torch.equal(loras[k][n], loras[k - 1][n]), f"stage {k} moved the LoRA ({n})"
        assert any(not torch.equal(after[n], before[n]) for n in module(before, k)), f"stage {k} left rank {k}"
        for j in range(k + 1, 5):  # later modules: untouched until their stage
            assert all(torch.equal(after[n], initial[n]) for n in module(after, j))


def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny_world, tiny_data, tiny_backbone, tmp_path, monkeypatch):
    import taxabench.train as train_module

    options = {"taxadiffusion": TWO_RANKS}
    steady = experiment(tiny_world, tmp_path / "steady", train={"steps_per_stage": 4, "checkpoint_every": 2},
                        method_options=options)
    train_method(steady, "taxadiffusion", data=tiny_data, show_progress=False)

    killed = experiment(tiny_world, tmp_path / "killed", train={"steps_per_stage": 4, "checkpoint_every": 2},
                        method_options=options)
    real_log = train_module._log

    def dies_in_stage_1_step_3(path, stage, step, *args):
        real_log(path, stage, step, *args)
        if (stage, step) == (1, 3):
            raise KeyboardInterrupt  # as if killed after step 3, one step past the checkpoint at step 2

    monkeypatch.setattr(train_module, "_log", dies_in_stage_1_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_method(killed, "taxadiffusion", data=tiny_data, show_progress=False)
    root = method_dir(killed.run_dir, "taxadiffusion")
    assert (root / "stage-0").is_dir() and not (root / "stage-1").exists()
    assert (root / "state" / "stage-1" / "checkpoint-2").is_dir()
    monkeypatch.setattr(train_module, "_log", real_log)
    train_method(killed, "taxadiffusion", data=tiny_data, show_progress=False)  # the same command again

    for stage in ("stage-0", "stage-1"):
        a = trained_state(method_dir(steady.run_dir, "taxadiffusion") / stage)
        b = trained_state(root / stage)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{stage} {key} differs after resume"
    steady_log = (method_dir(steady.run_dir, "taxadiffusion") / "loss.csv").read_text().splitlines()
    resumed_log = (root / "loss.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in steady_log] == [r.split(",")[:3] for r in resumed_log]
    assert not (root / "state").exists()


def test_caches_do_not_change_the_result(tiny_world, tiny_data, tiny_backbone, tmp_path):
    results = []
    for cache in (True, False):
        config = experiment(tiny_world, tmp_path / str(cache),
                            train={"steps_per_stage": 1, "cache_latents": cache, "cache_text": cache},
                            method_options={"sd-lora": {"steps": 3}})
        folder = train_method(config, "sd-lora", data=tiny_data, show_progress=False)
        results.append(trained_state(folder / "stage-0"))
    cached, uncached = results
    for key in cached:
        assert torch.allclose(cached[key], uncached[key], atol=1e-6, rtol=1e-4), key


def test_gradient_accumulation_equals_a_larger_batch(tiny_world, tiny_data, tiny_backbone, tmp_path):
    results = []
    for batch, accumulation in ((4, 1), (2, 2)):
        config = experiment(tiny_world, tmp_path / f"b{batch}",
                            train={"batch_size": batch, "gradient_accumulation_steps": accumulation},
                            method_options={"sd-lora": {"steps": 2}})
        results.append(trained_state(train_method(config, "sd-lora", data=tiny_data, show_progress=False) / "stage-0"))
    for key in results[0]:
        assert torch.allclose(results[0][key], results[1][key], atol=1e-6, rtol=1e-4), key


def test_every_training_option_runs(tiny_world, tiny_data, tiny_backbone, tmp_path):
    config = experiment(tiny_world, tmp_path, train={
        "epochs_per_stage": 0.02, "gradient_accumulation_steps": 2, "lr_warmup_steps": 1, "lr_scheduler": "cosine",
        "ema_decay": 0.5, "max_grad_norm": 0.5, "cache_latents": False, "cache_text": False, "num_workers": 2,
        "mixed_precision": "no", "checkpoint_every": 1, "checkpoints_total_limit": 1, "condition_dropout": 0.5,
    }, method_options={"taxadiffusion": TWO_RANKS})
    folder = train_method(config, "taxadiffusion", data=tiny_data, show_progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    # 0.02 epochs of 351 images in global batches of 4 x 2: one optimizer step per stage
    assert [s["steps"] for s in manifest["stages"]] == [1, 1] and manifest["completed"] == ["stage-0", "stage-1"]
    log = (folder / "loss.csv").read_text().splitlines()
    assert log[0] == "stage,step,loss,lr,images_per_s,seconds,finest_real" and len(log) == 3
    with pytest.raises(TaxabenchError, match="fp16 needs a CUDA device"):
        train_method(experiment(tiny_world, tmp_path / "fp16", train={"mixed_precision": "fp16"}), "sd-lora",
                     data=tiny_data, show_progress=False)


def test_one_process_trains_a_bf16_run_then_a_float32_run(tiny_world, tiny_data, tiny_backbone, tmp_path):
    """accelerate keeps one process-wide state; the second run must not inherit (or be refused) the first's precision."""
    for precision in ("bf16", "no"):
        config = experiment(tiny_world, tmp_path / precision, train={"steps_per_stage": 1, "mixed_precision": precision})
        folder = train_method(config, "sd-lora", data=tiny_data, show_progress=False)
        assert json.loads((folder / "manifest.json").read_text())["completed"] == ["stage-0"]


def test_sample_stream_shards_are_disjoint_and_cover_the_global_batch():
    one = SampleStream(size=10, batch_size=4, num_processes=1, process_index=0, seed=0, stage=0)
    two = [SampleStream(size=10, batch_size=2, num_processes=2, process_index=p, seed=0, stage=0) for p in (0, 1)]
    for micro in range(6):  # crosses epoch boundaries (10 records, 4 per micro-batch)
        shards = [list(s.positions(micro)) for s in two]
        assert not set(shards[0]) & set(shards[1])
        assert shards[0] + shards[1] == list(one.positions(micro))
        assert [two[0].record_index(p) for p in shards[0] + shards[1]] == [
            one.record_index(p) for p in one.positions(micro)
        ]
    epoch = sorted(one.record_index(p) for p in range(10))
    assert epoch == list(range(10))  # every record once per epoch


def test_errors(tiny_world, tiny_data, tiny_backbone, tmp_path):
    config = experiment(tiny_world, tmp_path)
    with pytest.raises(TaxabenchError, match=r"unknown method 'taxadifusion' \(did you mean 'taxadiffusion'\?\).*sd-lora"):
        train_method(config, "taxadifusion", data=tiny_data)
    with pytest.raises(ConfigError, match="steps_per_stage: must be at least 1"):
        experiment(tiny_world, tmp_path, train={"steps_per_stage": 0})
    with pytest.raises(ConfigError, match="a stage budget must be at least 1 step"):
        train_method(experiment(tiny_world, tmp_path, method_options={"sd-lora": {"steps": 0}}), "sd-lora",
                     data=tiny_data)
    with pytest.raises(ConfigError, match="unknown key 'rank'"):
        train_method(experiment(tiny_world, tmp_path, method_options={"taxadiffusion": {"rank": 4}}),
                     "taxadiffusion", data=tiny_data)
    with pytest.raises(TaxabenchError, match="conditions on rank 'kingdom', which the dataset lacks"):
        train_method(experiment(tiny_world, tmp_path, method_options={"taxadiffusion": {"ranks": ["kingdom"]}}),
                     "taxadiffusion", data=tiny_data)


def test_methods_needing_species_refuse_a_dataset_without_it(tiny_world, tmp_path):
    from taxabench.data import load_dataset

    config = experiment(tiny_world, tmp_path, data={"ranks": ["class", "order", "family", "genus"]})
    genus_level = load_dataset(config.data)
    for name in ("flat-ldm", "sd-lora"):
        with pytest.raises(TaxabenchError, match="needs rank 'species', which the dataset lacks"):
            train_method(config, name, data=genus_level, show_progress=False)


def test_a_checkpoint_from_another_config_is_refused(tiny_world, tiny_data, tiny_backbone, tmp_path):
    config = experiment(tiny_world, tmp_path, train={"steps_per_stage": 1}, method_options={"sd-lora": {"steps": 1}})
    train_method(config, "sd-lora", data=tiny_data, show_progress=False)
    other = experiment(tiny_world, tmp_path, train={"steps_per_stage": 1, "learning_rate": 1e-3},
                       method_options={"sd-lora": {"steps": 1}})
    with pytest.raises(TaxabenchError, match=r"another config \(train.learning_rate: 0.0001 -> 0.001\)"):
        train_method(other, "sd-lora", data=tiny_data, show_progress=False)
    # operational settings may change between restarts
    relaxed = experiment(tiny_world, tmp_path, train={"steps_per_stage": 1, "checkpoint_every": 7},
                         method_options={"sd-lora": {"steps": 1}})
    train_method(relaxed, "sd-lora", data=tiny_data, show_progress=False)
    with pytest.raises(TaxabenchError, match="holds a checkpoint of method 'sd-lora', not 'flat-ldm'"):
        from taxabench.train import load_checkpoint

        load_checkpoint(method_dir(config.run_dir, "sd-lora"), expect_method="flat-ldm")


def test_cli_train(tiny_world, tiny_backbone, tmp_path, capsys):
    from taxabench.cli import main

    config_file = tmp_path / "config.yaml"
    config_file.write_text(experiment(tiny_world, tmp_path, train={"steps_per_stage": 1}).to_yaml())
    run = tmp_path / "my-run"
    assert main(["train", "--config", str(config_file), "--method", "sd-lora", "--run", str(run)]) == 0
    assert (run / "checkpoints" / "sd-lora" / "stage-0" / "pytorch_lora_weights.safetensors").is_file()
    assert main(["train", "--config", str(config_file), "--method", "nope"]) == 1
    assert "unknown method 'nope'" in capsys.readouterr().out


@pytest.mark.slow
def test_two_processes_train_on_disjoint_shards_of_the_same_global_batch(tiny_world, tiny_data, tiny_backbone,
                                                                          tmp_path):
    """`torchrun --nproc_per_node 2` (gloo, CPU) with batch b ends where one process with batch 2b ends: each
    process trained on its own half of every global batch, and DDP averaged the gradients."""

    options = {"taxadiffusion": {**TWO_RANKS, "dropout": 0.0}}  # no dropout layers: per-process masks would differ
    single = experiment(tiny_world, tmp_path / "one", train={"steps_per_stage": 3, "batch_size": 4},
                        method_options=options)
    train_method(single, "taxadiffusion", data=tiny_data, show_progress=False)

    double = experiment(tiny_world, tmp_path / "two", train={"steps_per_stage": 3, "batch_size": 2},
                        method_options=options)
    config_file = tmp_path / "two.yaml"
    config_file.write_text(double.to_yaml())
    taxabench_on_two_processes("train --method taxadiffusion", config_file)
    for stage in ("stage-0", "stage-1"):
        a = trained_state(method_dir(single.run_dir, "taxadiffusion") / stage)
        b = trained_state(method_dir(double.run_dir, "taxadiffusion") / stage)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), f"{stage} {key}"


def test_taxadiffusion_condition_dropout_cascades_from_coarse_to_fine(tiny_world, tiny_data, tiny_backbone, tmp_path):
    """`cascade`: each rank is dropped with probability p and every finer rank with it, so a condition is a lineage
    cut at some rank and the fully unknown condition (the `cfg` negative) has probability p."""
    from taxabench.backbone import load_sd_folder
    from taxabench.seeds import generator

    config = experiment(tiny_world, tmp_path)
    backbone = load_sd_folder(*tiny_backbone, source="tiny")
    species = [tiny_data.taxonomy.labels_of(t) for t in tiny_data.taxonomy.taxa("species")]
    method = build_method("taxadiffusion", config, tiny_data.ranks, species, backbone)
    strings = method.rank_strings(species[0], depth=4)
    p, n = 0.3, 4000
    kept_counts = []
    for i in range(n):
        row = method.dropped(strings, generator(0, "test", i), p, "cascade")
        kept = sum(not s.endswith(": None") for s in row)
        assert row[:kept] == strings[:kept], row
        assert all(s == f"{rank}: None" for s, rank in zip(row[kept:], tiny_data.ranks[kept:])), row
        kept_counts.append(kept)
    counts = torch.bincount(torch.tensor(kept_counts), minlength=6).double() / n
    expected = torch.tensor([p * (1 - p) ** k for k in range(5)] + [(1 - p) ** 5], dtype=torch.double)
    assert torch.allclose(counts, expected, atol=0.025), (counts, expected)


def test_report_to_tensorboard_logs_what_loss_csv_records(tiny_world, tiny_data, tiny_backbone, tmp_path):
    pytest.importorskip("tensorboard")
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = experiment(tiny_world, tmp_path, train={"steps_per_stage": 3, "report_to": ["tensorboard"]})
    folder = train_method(config, "sd-lora", data=tiny_data, show_progress=False)
    with open(folder / "loss.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["stage"] for r in rows} == {"0"}  # sd-lora: one stage
    events = EventAccumulator(str(folder / "logs" / "stage-0"))
    events.Reload()
    # loss.csv rounds: loss to 6 decimals, lr to 4 digits, images/s to 2 decimals, finest_real to 4
    for tag, column, tolerance in (("train/loss", "loss", 1e-5), ("train/lr", "lr", 1e-7),
                                   ("train/images_per_s", "images_per_s", 0.006), ("train/finest_real", "finest_real", 1e-4)):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [int(r["step"]) for r in rows] == list(range(1, 16)), tag  # 3 x 5 ranks
        assert [e.value for e in logged] == pytest.approx([float(r[column]) for r in rows], rel=1e-3, abs=tolerance), tag
