"""Rankings as curves: budget points along training, budget axes, seeds combined, crossings."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import experiment
from faults import Killed, assert_same_table, kill_after_call, kill_after_step

from taxabench.budget import BudgetPoint, resolve_points, to_steps
from taxabench.config import ConfigError
from taxabench.curves import best_in_every_seed, combine_seeds, crossings, paired_advantage, seed_interval
from taxabench.methods import Stage


def test_budget_units_become_optimizer_steps_and_fall_in_their_stage():
    stages = [Stage(0, 4, "a"), Stage(1, 4, "b"), Stage(2, 4, "c")]
    assert to_steps(5, "steps", 8, 100) == 5
    assert to_steps(33, "images", 8, 100) == 5  # the first step whose images reach 33
    assert to_steps(0.5, "epochs", 8, 100) == 7  # 50 images at 8 per step
    points = resolve_points([12, 4, 5, 4], "steps", stages, 8, 100, "m")
    assert points == [BudgetPoint("step-000004", 4, 0, 4), BudgetPoint("step-000005", 5, 1, 1),
                      BudgetPoint("step-000012", 12, 2, 4)]
    with pytest.raises(ConfigError, match=r"budget.points\[0\]: 13 steps is 13 optimizer steps, outside .*'m'"):
        resolve_points([13], "steps", stages, 8, 100, "m")


def test_seed_interval_matches_an_independent_computation():
    """The mean over seeds: variance W + B/m, W scaled by the normal quantile and B/m by t with m − 1 df; one new
    run: W + B + B/m (the old Rubin rule, W + (1 + 1/m) B, was neither)."""
    from scipy import stats

    values, low, high = [10.0, 12.0, 11.0], [9.0, 10.5, 9.0], [11.0, 13.5, 13.0]
    combined = seed_interval(values, low, high, 0.95)
    z, t = stats.norm.ppf(0.975), stats.t.ppf(0.975, df=2)
    within = np.mean([((h - lo_) / (2 * z)) ** 2 for lo_, h in zip(low, high)])
    between = np.var(values, ddof=1)
    half = math.sqrt(z ** 2 * within + t ** 2 * between / 3)
    one_run = math.sqrt(z ** 2 * within + t ** 2 * (between + between / 3))
    assert combined.value == pytest.approx(11.0)
    assert (combined.ci_low, combined.ci_high) == pytest.approx((11.0 - half, 11.0 + half))
    assert (combined.pi_low, combined.pi_high) == pytest.approx((11.0 - one_run, 11.0 + one_run))
    assert combined.seed_sd == pytest.approx(1.0)
    # no within-seed error: exactly scipy's t interval on the seed means
    exact = stats.t.interval(0.95, df=2, loc=11.0, scale=stats.sem(values))
    bare = seed_interval(values, values, values, 0.95)
    assert (bare.ci_low, bare.ci_high) == pytest.approx(exact)
    # seeds that agree: the normal interval on W alone
    level = seed_interval([5.0, 5.0, 5.0], [4.0, 4.0, 4.0], [6.0, 6.0, 6.0], 0.95)
    assert (level.ci_low, level.ci_high) == pytest.approx((4.0, 6.0))
    single = seed_interval([5.0], [4.0], [6.5], 0.95)
    assert (single.ci_low, single.ci_high) == (4.0, 6.5) and math.isnan(single.pi_low)


def _seed_species_coverage(interval, reps=1500, m=3, species=32, seed=0):
    """How often `interval(estimates, lows, highs)` covers the true mean 0 on synthetic seed × species data: species
    effects shared by the seeds (the same test species), a training-seed effect, per (seed, species) noise; each seed
    estimate is its mean over species with the normal interval of a bootstrap over species."""
    rng = np.random.default_rng(seed)
    z = 1.959963984540054
    hits = 0
    for _ in range(reps):
        y = (rng.normal(0, 1.0, species)[None, :] + rng.normal(0, 0.5, m)[:, None]
             + rng.normal(0, 0.2, (m, species)))
        estimate, error = y.mean(axis=1), y.std(axis=1, ddof=1) / math.sqrt(species)
        low, high = interval(estimate, estimate - z * error, estimate + z * error)
        hits += low <= 0 <= high
    return hits / reps


def test_the_seed_interval_covers_the_mean_over_seeds_at_its_nominal_rate():
    from scipy import stats

    def mean_interval(estimates, lows, highs):
        combined = seed_interval(estimates, lows, highs, 0.95)
        return combined.ci_low, combined.ci_high

    def rubin(estimates, lows, highs):  # the rule used before: Rubin's multiple-imputation variance and df
        m, z = len(estimates), stats.norm.ppf(0.975)
        within, between = np.mean(((highs - lows) / (2 * z)) ** 2), np.var(estimates, ddof=1)
        total = within + (1 + 1 / m) * between
        df = (m - 1) * (1 + within / ((1 + 1 / m) * between)) ** 2
        half = stats.t.ppf(0.975, df) * math.sqrt(total)
        return estimates.mean() - half, estimates.mean() + half

    for seeds in (3, 5):
        assert 0.935 <= _seed_species_coverage(mean_interval, m=seeds) <= 0.975
    # the old rule's seed term is that of one new run, (1 + 1/m)·B instead of B/m: it over-covers the mean
    assert _seed_species_coverage(rubin, m=5) > 0.99


def _row(method, seed, point, value, half, steps, higher=False, metric="fd"):
    return {"method": method, "metric": metric, "name": metric.upper(), "scope": "overall", "value": value,
            "ci_low": value - half, "ci_high": value + half, "n_real": 10, "n_generated": 10, "n_taxa": 5,
            "extractor": "x", "weights": "w", "higher_is_better": higher, "protocol": "p", "seed": seed,
            "point": point, "split": "validation", "steps": steps, "images_seen": steps * 8,
            "param_steps": steps * 100.0, "train_flops": steps * 1e9}


def test_seeds_combine_and_a_rank_is_claimed_only_when_it_holds_in_every_seed():
    rows = [_row("a", 0, "final", 10, 1, 10), _row("a", 1, "final", 14, 1, 10),
            _row("b", 0, "final", 12, 1, 10), _row("b", 1, "final", 13, 1, 10)]
    table = pd.DataFrame(rows)
    combined = combine_seeds(table, 0.95)
    a = combined[combined["method"] == "a"].iloc[0]
    assert a["value"] == pytest.approx(12.0) and a["n_seeds"] == 2
    expected = seed_interval([10, 14], [9, 13], [11, 15], 0.95)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((expected.ci_low, expected.ci_high))
    assert (a["pi_low"], a["pi_high"]) == pytest.approx((expected.pi_low, expected.pi_high))
    assert best_in_every_seed(table, ["a", "b"], "fd") == (None, [(0, "a"), (1, "b")])
    steady = pd.DataFrame([_row("a", 0, "final", 10, 1, 10), _row("a", 1, "final", 11, 1, 10),
                           _row("b", 0, "final", 12, 1, 10), _row("b", 1, "final", 13, 1, 10)])
    assert best_in_every_seed(steady, ["a", "b"], "fd") == ("a", [])


def rows_final():
    return [_row("flat-ldm", 0, "final", 10, 1, 10), _row("flat-ldm", 1, "final", 14, 1, 10),
            _row("sd-lora", 0, "final", 12, 1, 10), _row("sd-lora", 1, "final", 13, 1, 10)]


def test_the_report_shows_seed_means_spreads_and_claims_no_rank_the_seeds_disagree_on(tmp_path):
    from taxabench.report import write_report

    rows = [*rows_final(), _row("flat-ldm", 0, "step-000005", 20, 1, 5), _row("sd-lora", 0, "step-000005", 15, 1, 5),
            _row("flat-ldm", 1, "step-000005", 20, 1, 5), _row("sd-lora", 1, "step-000005", 15, 1, 5),
            *[{**r, "point": "step-000010"} for r in rows_final()]]
    (tmp_path / "metrics").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "metrics" / "all.csv", index=False)
    (tmp_path / "config.yaml").write_text("name: seeds\nseed: 0\nseeds: [0, 1]\n")
    text = write_report(tmp_path, figures=False).read_text()
    assert "mean over 2 training seeds" in text and "variance W + B/m" in text and "Rubin" not in text
    assert "- `flat-ldm`: FD 2.83, one new run [" in text  # sd of 10 and 14
    assert "the best method differs between seeds (seed 0: `flat-ldm`, seed 1: `sd-lora`), so no rank is claimed" in text
    assert "`flat-ldm` overtakes `sd-lora` on FD between 40 and 80 images seen" in text


def test_a_multi_seed_report_shows_the_first_seeds_samples_and_stage_figure(tmp_path, monkeypatch):
    """Samples live under samples/seed-<s>/ in a multi-seed run: the figures show the first seed's, and say so."""
    from PIL import Image

    import taxabench.report as report

    monkeypatch.setattr(report, "_real_images", lambda run, slugs, count: {})  # no dataset behind this folder
    (tmp_path / "metrics").mkdir()
    pd.DataFrame(rows_final()).to_csv(tmp_path / "metrics" / "all.csv", index=False)
    (tmp_path / "config.yaml").write_text("name: seeds\nseed: 0\nseeds: [3, 1]\n")
    colours = {3: (200, 0, 0), 1: (0, 0, 200)}
    for seed, colour in colours.items():
        folder = tmp_path / "samples" / f"seed-{seed}" / "flat-ldm"
        (folder / "a.b").mkdir(parents=True)
        Image.new("RGB", (64, 64), colour).save(folder / "a.b" / "00000.png")
        (folder / "metadata.jsonl").write_text(json.dumps({"taxon_slug": "a.b"}) + "\n")
        Image.new("RGB", (8, 8), colour).save(folder / "stages.png")
    text = report.write_report(tmp_path).read_text()
    assert "![samples](samples.png)" in text and "Samples of training seed 3 (the first of the run's seeds)." in text
    assert "## Across progressive stages" in text and "Training seed 3." in text
    stages = tmp_path / "report" / "stages.png"
    assert stages.read_bytes() == (tmp_path / "samples" / "seed-3" / "flat-ldm" / "stages.png").read_bytes()
    with Image.open(tmp_path / "report" / "samples.png") as sheet:
        assert sheet.convert("RGB").getpixel((10, sheet.height - 10)) == colours[3]


def test_the_report_flags_a_guidance_scale_chosen_at_the_edge_of_its_sweep(tmp_path):
    from taxabench.report import write_report

    (tmp_path / "metrics" / "seed-0").mkdir(parents=True)
    pd.DataFrame(rows_final()).to_csv(tmp_path / "metrics" / "all.csv", index=False)
    (tmp_path / "config.yaml").write_text("name: edge\nseed: 0\nseeds: [0, 1]\n")
    for entry, chosen in (("flat-ldm", 8.0), ("sd-lora", 4.0)):
        (tmp_path / "metrics" / "seed-0" / f"{entry}-guidance.json").write_text(json.dumps(
            {"guidance_of": entry, "select_by": "fd", "higher_is_better": False, "chosen": chosen,
             "values": {"2": 1.0, "4": 0.9 if chosen == 4.0 else 0.8, "8": 0.95 if chosen == 4.0 else 0.5}}))
    for entry, values in (("sd-zeroshot", {"1": 0.5, "2": 0.9}), ("sd-finetune", {"2": 0.5, "4": 0.9})):
        (tmp_path / "metrics" / "seed-0" / f"{entry}-guidance.json").write_text(json.dumps(
            {"guidance_of": entry, "select_by": "fd", "higher_is_better": False, "chosen": 1.0 if "1" in values
             else 2.0, "values": values}))
    text = write_report(tmp_path, figures=False).read_text()
    assert "- `flat-ldm` (seed-0): scale 8, best fd on the validation split among 2 → 1, 4 → 0.8, 8 → 0.5 (at the " \
           "edge of the sweep)" in text
    assert "- `sd-lora` (seed-0): scale 4, best fd on the validation split among 2 → 1, 4 → 0.9, 8 → 0.95\n" in text
    # scale 1 is no guidance at all: a sweep starting there has no lower edge; one starting at 2 has
    assert "- `sd-zeroshot` (seed-0): scale 1, best fd on the validation split among 1 → 0.5, 2 → 0.9\n" in text
    assert "- `sd-finetune` (seed-0): scale 2, best fd on the validation split among 2 → 0.5, 4 → 0.9 (at the " \
           "edge of the sweep)" in text
    assert "2 of 4 choices lie at the edge of their sweep" in text


def test_a_crossing_is_reported_with_where_the_intervals_clear():
    # lower is better: b starts ahead, a overtakes between 16 and 32 images and clears from 48
    rows = [_row("a", 0, "step-000001", 20, 1, 1), _row("b", 0, "step-000001", 15, 1, 1),
            _row("a", 0, "step-000002", 14, 2, 2), _row("b", 0, "step-000002", 15, 2, 2),
            _row("a", 0, "step-000003", 10, 1, 3), _row("b", 0, "step-000003", 15, 1, 3),
            _row("a", 0, "step-000004", 9, 1, 4), _row("b", 0, "step-000004", 15, 1, 4)]
    sentences = crossings(combine_seeds(pd.DataFrame(rows), 0.95), ["a", "b"], "fd")
    assert sentences == ["`a` overtakes `b` on FD between 8 and 16 images seen; intervals clear from 24 images seen."]


def budget_config(world: Path, runs: Path, name: str, **sections):
    config = experiment(
        world, runs,
        data={"species_subset": {"mode": "first", "n": 4}},
        methods=["sd-lora"],
        train={"steps_per_stage": 1, "batch_size": 4, "checkpoint_every": 1},
        budget={"points": [2, 4], "images_per_taxon": 1},
        sample={"guidance_sweep": {"cfg": [1.0, 3.0]}},
        probe={"images_per_taxon": 1, "timesteps": [300, 700]},
        eval={"synthclip": {"steps": 30}, "bootstrap": 30, "bootstrap_set_metrics": 10},
        **sections,
    )
    return replace(config, name=name)


@pytest.fixture(scope="module")
def straight_budget_run(tiny_world, tiny_backbone, tmp_path_factory):
    from taxabench.run import run

    config = budget_config(tiny_world, tmp_path_factory.mktemp("runs"), "straight")
    return config, run(config, show_progress=False)


def test_budget_points_are_evaluated_on_validation_with_every_axis(straight_budget_run):
    config, report = straight_budget_run
    table = pd.read_csv(config.run_dir / "metrics" / "all.csv")
    table = table[table["point"] != "sweep"]  # the guidance sweep's rows are checked in their own test
    ceiling = table[table["method"] == "real-images"]
    assert len(ceiling) and ceiling[["steps", "images_seen", "param_steps", "train_flops"]].isna().all().all()
    table = table[table["method"] != "real-images"]  # real images have no training budget
    assert set(table["point"]) == {"step-000002", "step-000004", "final"}
    along = table[table["point"].str.startswith("step-")]
    final = table[table["point"] == "final"]
    assert set(along["split"]) == {"validation"} and set(final["split"]) == {"test"}
    assert sorted(set(along["steps"])) == [2, 4] and set(final["steps"]) == {5}  # sd-lora: 1 step x 5 ranks
    assert set(final["images_seen"]) == {20}
    budget = json.loads((config.run_dir / "checkpoints" / "sd-lora" / "budget.json").read_text())
    params = budget["stages"][0]["trainable_params"]
    assert params > 0 and set(final["param_steps"]) == {5 * params}
    assert budget["stages"][0]["flops_per_step"] > 0
    assert set(final["train_flops"]) == {5 * budget["stages"][0]["flops_per_step"]}
    # wall-clock seconds differ between two runs: not in the table (whose bytes a resumed run reproduces), but in
    # each evaluation's JSON, where the report reads them
    assert "wall_seconds" not in table.columns
    seconds = {path.parent.parent.name: json.loads(path.read_text())["budget"]["wall_seconds"]
               for path in (config.run_dir / "along").glob("*/metrics/sd-lora.json")}
    final_seconds = json.loads((config.run_dir / "metrics" / "sd-lora.json").read_text())["budget"]["wall_seconds"]
    assert sorted(seconds) == ["step-000002", "step-000004"]
    assert 0 < seconds["step-000002"] < seconds["step-000004"] < final_seconds
    # the validation sampling has its own image count: 1 per taxon along training, 2 for the test sampling
    n_generated = table[(table["metric"] == "fd") & (table["scope"] == "overall")].set_index("point")["n_generated"]
    assert n_generated["step-000002"] * 2 == n_generated["final"]
    text = report.read_text()
    assert "## Along training (budget points)" in text and "training FLOPs" in text
    assert f"{final_seconds:,.0f} s of training" in text
    along_section = text.split("## Along training (budget points)")[1].split("\n## ")[0]
    assert "real-images" not in along_section and "ceiling" not in along_section
    assert (config.run_dir / "report" / "budget_curves.png").is_file()


def test_the_test_sampling_uses_the_guidance_scale_chosen_on_validation(straight_budget_run):
    config, report = straight_budget_run
    table = pd.read_csv(config.run_dir / "metrics" / "all.csv")
    sweep = table[(table["point"] == "sweep") & (table["metric"] == "fd") & (table["scope"] == "overall")]
    assert set(sweep["split"]) == {"validation"} and set(sweep["method"]) == {"sd-lora@1", "sd-lora@3"}
    best = sweep.sort_values("value").iloc[0]["method"].split("@")[1]
    choice = json.loads((config.run_dir / "metrics" / "sd-lora-guidance.json").read_text())
    assert f"{choice['chosen']:g}" == best and choice["select_by"] == "fd"
    line = json.loads((config.run_dir / "samples" / "sd-lora" / "metadata.jsonl").read_text().splitlines()[0])
    assert line["guidance_scale"] == choice["chosen"]
    text = report.read_text()
    assert "## Guidance sweeps (validation split)" in text and f"scale {choice['chosen']:g}, best fd" in text
    assert (config.run_dir / "report" / "guidance_sweep.png").is_file()


def test_widening_a_guidance_sweep_redoes_only_the_new_scale_and_the_test_sampling(tiny_world, tmp_path):
    from taxabench.run import plan

    def fingerprints(config):
        return {step.name: step.fingerprint for step in plan(config, config.run_dir, show_progress=False)}

    config = budget_config(tiny_world, tmp_path, "widened")
    before = fingerprints(config)
    widened = fingerprints(replace(config, sample=replace(config.sample, guidance_sweep={"cfg": [1.0, 3.0, 6.0]})))
    assert set(widened) - set(before) == {"sweep/sd-lora@6"}
    changed = {name for name in before if widened[name] != before[name]}
    assert changed == {"sample/sd-lora", "eval/sd-lora", "report"}  # the points, probe and scales 1, 3 stay done

    reselected = fingerprints(replace(config, sample=replace(config.sample, guidance_select="top1")))
    assert {name for name in before if reselected[name] != before[name]} == changed


def test_the_probe_writes_per_rank_and_sibling_rows_that_evaluation_leaves_alone(straight_budget_run):
    config, report = straight_budget_run
    table = pd.read_csv(config.run_dir / "metrics" / "all.csv")
    probe = table[table["metric"].str.startswith("probe_")]
    assert set(probe[probe["metric"] == "probe_top1"]["scope"]) >= {"class", "species", "rare", "common"}
    assert set(probe["method"]) == {"sd-lora"} and set(probe["point"]) == {"final"}
    top1 = probe[probe["metric"] == "probe_top1"].set_index("scope")["value"]
    assert 0 <= top1["species"] <= top1["genus"] <= top1["class"] <= 100  # coarser ranks are easier
    assert "## Taxonomic probe (no sampling)" in report.read_text()


@pytest.mark.parametrize("kill_at", ["point/sd-lora/step-000004", "inside training after the first point"])
def test_a_run_killed_at_a_budget_point_resumes_to_the_same_table(straight_budget_run, tiny_world, tmp_path,
                                                                  monkeypatch, kill_at):
    import taxabench.run as run_module
    import taxabench.train as train_module

    reference, _ = straight_budget_run
    config = budget_config(tiny_world, tmp_path, "killed")
    with monkeypatch.context() as patch:
        if kill_at.startswith("inside"):
            kill_after_call(patch, train_module, "_save_point")
        else:
            kill_after_step(patch, kill_at)
        with pytest.raises(Killed):
            run_module.run(config, show_progress=False)
    first_point = config.run_dir / "along" / "step-000002" / "metrics" / "sd-lora.json"
    before = first_point.stat().st_mtime_ns if first_point.is_file() else None
    run_module.run(config, show_progress=False)
    if before is not None:  # an evaluation finished before the kill is not redone
        assert first_point.stat().st_mtime_ns == before
    assert_same_table(reference.run_dir, config.run_dir)


@pytest.mark.slow
def test_three_points_two_seeds_and_a_control_in_parallel_jobs_resume_to_the_same_table(tiny_world, tiny_backbone,
                                                                                          tmp_path, monkeypatch):
    """The issue's done-when at test size: 3 budget points, 2 training seeds, one control, two processes; killed
    at a budget point and resumed, the table equals an uninterrupted run's, and the report shows the curves."""
    import taxabench.run as run_module

    def config(name):
        return replace(budget_config(tiny_world, tmp_path, name), methods=["sd-lora", "flat-ldm-lora"], seeds=[0, 1],
                       jobs=2, budget=replace(budget_config(tiny_world, tmp_path, name).budget, points=[1, 3, 5]))

    straight = config("straight")
    report = run_module.run(straight, show_progress=False)
    killed = config("killed")
    with monkeypatch.context() as patch:
        kill_after_step(patch, "point/flat-ldm-lora/seed-1/step-000003")
        with pytest.raises(Killed):
            run_module.run(killed, show_progress=False)
    run_module.run(killed, show_progress=False)
    assert_same_table(straight.run_dir, killed.run_dir)
    table = pd.read_csv(killed.run_dir / "metrics" / "all.csv")
    assert set(table["seed"]) == {0, 1}
    assert set(table["point"]) == {"step-000001", "step-000003", "step-000005", "final", "sweep"}  # sweep: guidance
    text = report.read_text()
    assert (straight.run_dir / "report" / "budget_curves.png").is_file()
    assert "## Along training (budget points)" in text and "mean over 2 training seeds" in text
    assert "overtakes" in text or "No method overtakes another" in text
    assert "**sd-lora** and its variants" in text or "`flat-ldm-lora`" in text


def _per_taxon_values(rng, taxa, centre):
    return {f"t{i}": float(v) for i, v in enumerate(centre + rng.normal(size=taxa))}


def test_paired_advantage_matches_an_independent_computation_and_orients_by_the_metric():
    from scipy import stats

    rng = np.random.default_rng(0)
    seeds = []
    for shift in (0.4, 0.9, 0.6):
        a = _per_taxon_values(rng, 12, 0.0)
        b = {t: v + shift + 0.3 * rng.normal() for t, v in a.items()}  # b is worse on a lower-is-better metric
        b["only-b"] = 0.0  # a taxon only one method has a value for is left out
        seeds.append((a, b))
    advantage = paired_advantage(seeds, higher_is_better=False, confidence=0.95)
    z = stats.norm.ppf(0.975)
    means, lows, highs = [], [], []
    for a, b in seeds:
        d = np.array([b[t] - a[t] for t in a])
        se = d.std(ddof=1) / math.sqrt(len(d))
        means.append(d.mean())
        lows.append(d.mean() - z * se)
        highs.append(d.mean() + z * se)
    combined = seed_interval(means, lows, highs, 0.95)
    expected = (combined.value, combined.ci_low, combined.ci_high)
    assert (advantage.value, advantage.ci_low, advantage.ci_high) == pytest.approx(expected)
    assert advantage.seed_values == pytest.approx(means)
    assert (advantage.seeds_ahead, advantage.n_seeds, advantage.n_taxa) == (3, 3, 12)
    assert advantage.seeds_clear == sum(lo > 0 for lo in lows)
    flipped = paired_advantage(seeds, higher_is_better=True, confidence=0.95)
    assert (flipped.value, flipped.ci_low, flipped.ci_high) == pytest.approx((-expected[0], -expected[2], -expected[1]))
    assert flipped.seeds_ahead == 0
    # pairing: the taxa's shared difficulty cancels, so the paired interval is far narrower than the unpaired one
    one = seeds[0]
    unpaired = z * math.sqrt(np.var(list(one[0].values()), ddof=1) / 12 + np.var(
        [one[1][t] for t in one[0]], ddof=1) / 12)
    paired = paired_advantage([one], False, 0.95)
    assert paired.ci_high - paired.value < unpaired / 2
    assert paired_advantage([({"t": 1.0}, {"t": 2.0})], False, 0.95) is None  # one shared taxon: no interval


def _evaluation_json(method, seed, values, higher=False, metric="fd"):
    return {"method": method, "seed": seed, "point": "final", "data": {"rank": "species"},
            "measurements": [{"metric": metric, "name": metric.upper(), "scope": "species", "subject": "generated",
                              "higher_is_better": higher, "value": float(np.mean(list(values.values()))),
                              "per_taxon": values},
                             {"metric": metric, "name": metric.upper(), "scope": "species", "subject": "real",
                              "higher_is_better": higher, "value": 0.0, "per_taxon": dict.fromkeys(values, 0.0)}]}


def test_the_report_compares_the_runs_subject_with_every_method_paired_by_taxon(tmp_path):
    """The subject (first of `methods`) against each other method: the paired interval, the seeds agreeing, and a
    verdict that separates 'clear in every seed' from 'the combined interval excludes 0'."""
    from taxabench.report import write_report

    rng = np.random.default_rng(1)
    rows = [*rows_final(), *[{**r, "point": "step-000005"} for r in rows_final()]]
    (tmp_path / "metrics").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "metrics" / "all.csv", index=False)
    (tmp_path / "config.yaml").write_text("name: paired\nseed: 0\nseeds: [0, 1]\nmethods: [sd-lora, flat-ldm]\n")
    pairs = []
    for seed, shift in ((0, 1.0), (1, 3.0)):  # flat-ldm's FD is 1 and 3 above sd-lora's on every species
        ours = _per_taxon_values(rng, 16, 5.0)
        theirs = {t: v + shift + 0.05 * rng.normal() for t, v in ours.items()}
        pairs.append((ours, theirs))
        (tmp_path / "metrics" / f"seed-{seed}").mkdir()
        for method, values in (("sd-lora", ours), ("flat-ldm", theirs)):
            content = _evaluation_json(method, seed, values)
            content["measurements"] += [  # the evaluation vouches for its rows of all.csv (`check_table`)
                {k: v for k, v in r.items() if k not in ("method", "seed", "point")} for r in rows_final()
                if (r["method"], r["seed"]) == (method, seed)]
            (tmp_path / "metrics" / f"seed-{seed}" / f"{method}.json").write_text(json.dumps(content))
    text = write_report(tmp_path, figures=False).read_text()
    advantage = paired_advantage(pairs, False, 0.95)
    expected = f"{advantage.value:+.2f} [{advantage.ci_low:+.2f}, {advantage.ci_high:+.2f}] (2/2, 2)"
    assert "## Paired comparisons" in text and "`sd-lora` (the first of the config's `methods`)" in text
    assert "Per-species FD is biased at these sizes" in text  # next to the per-species FD column
    assert f"| `flat-ldm` | {expected} |" in text
    assert not advantage.separated  # two seeds disagreeing on the size: t with one degree of freedom
    sizes = sorted(abs(v) for v in advantage.seed_values)
    assert (f"- `sd-lora` is ahead of `flat-ldm` on FD: clear in each of the 2 seeds (each seed's paired interval "
            f"excludes 0; its size {sizes[0]:.3g} to {sizes[1]:.3g}), but it varies between seeds too much for 2 "
            "seeds to bound its mean.") in text
    # along training (all.csv's per-seed rows at budget points): sd-lora 12 vs 10 and 13 vs 14 on FD, lower is better
    assert "| `flat-ldm` | 1/2 |" in text
