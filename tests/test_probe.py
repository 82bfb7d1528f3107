"""The sampler-free taxonomic probe on cases whose answer is known in closed form."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from taxabench.metrics.aggregate import Resampling
from taxabench.probe import per_species_mean, probe_losses, probe_scores

LINEAGES = [("A", "g1", "s1"), ("A", "g1", "s2"), ("A", "g2", "s3"), ("A", "g2", "s4")]
RANKS = ["family", "genus", "species"]


def oracle(means: torch.Tensor, scheduler, uses: list[int]):
    """The exact denoiser of a model whose condition j has all its mass at latent `means[uses[j]]`:
    ε̂ = (x_t − sqrt(ᾱ_t)·μ) / sqrt(1 − ᾱ_t). Conditions are passed as their index, one per row."""
    alphas = scheduler.alphas_cumprod

    def denoise(noisy, t, conditions):
        a = alphas[t].view(-1, 1, 1, 1).to(noisy)
        mu = means[[uses[int(c)] for c in conditions]]
        return (noisy - a.sqrt() * mu) / (1 - a).sqrt()
    return denoise


@pytest.fixture
def world():
    generator = torch.Generator().manual_seed(0)
    # genera far apart, sibling species close: a model that mixes up siblings still finds the genus
    genera = 5 * torch.randn(2, 4, 2, 2, generator=generator, dtype=torch.float64)
    means = genera[[0, 0, 1, 1]] + 0.3 * torch.randn(4, 4, 2, 2, generator=generator, dtype=torch.float64)
    truth = [0, 0, 1, 1, 2, 2, 3, 3]  # two images per species, each exactly at its species' mean
    return means, means[truth], truth, DDPMScheduler(num_train_timesteps=1000)


def test_a_model_that_knows_every_species_is_always_right(world):
    means, latents, truth, scheduler = world
    losses = probe_losses(latents, torch.arange(4), oracle(means, scheduler, [0, 1, 2, 3]), scheduler,
                          [50, 400, 900], noises=2, seed=0, batch_size=3)
    assert losses[np.arange(8), truth] == pytest.approx(0, abs=1e-10)  # the true condition denoises exactly
    assert (np.delete(losses.reshape(-1), np.ravel_multi_index((np.arange(8), truth), losses.shape)) > 1e-3).all()
    scores = probe_scores(losses, truth, LINEAGES, RANKS, rare=[True, False, False, False])
    for rank in RANKS:
        assert np.nanmean(scores["top1"][rank]) == 1.0
    assert np.nanmean(scores["sibling"]["overall"]) == 1.0
    assert np.isnan(scores["top1"]["rare"][2:]).all() and (scores["top1"]["rare"][:2] == 1).all()


def test_a_model_that_confuses_two_siblings_is_right_at_genus_and_at_chance_between_them(world):
    means, latents, truth, scheduler = world
    # species s2's condition draws s1: the model cannot tell s1 from s2, but knows their genus
    losses = probe_losses(latents, torch.arange(4), oracle(means, scheduler, [0, 0, 2, 3]), scheduler,
                          [100, 600], noises=1, seed=3)
    scores = probe_scores(losses, truth, LINEAGES, RANKS, rare=[False] * 4)
    resampling = Resampling(200, 0.95, 0)
    species, low, high, n = per_species_mean(scores["top1"]["species"], truth, resampling, "s")
    assert (species, n) == (0.75, 4)  # s2's images go to s1 (a tie, broken towards the first condition)
    assert low <= species <= high
    assert per_species_mean(scores["top1"]["genus"], truth, resampling, "g")[0] == 1.0
    # s1 and s2 tie against each other (half credit), s3 and s4 beat their sibling
    assert per_species_mean(scores["sibling"]["overall"], truth, resampling, "sib")[0] == 0.75


def test_the_probe_record_keeps_losses_unrounded():
    """Sibling species' losses differ by ~1e-5 or less: the stored losses must keep them (rounding to 1e-6 did not)."""
    import json

    from taxabench.probe import probe_record

    rng = np.random.default_rng(0)
    base = 0.1 + rng.random((4, 1))
    losses = (base + rng.normal(0, 4e-7, (4, 3))).astype(np.float32)  # three siblings within ~1e-6 of each other
    read = np.array(json.loads(probe_record("m", 0, {}, losses, np.array([0, 1, 2, 0])))["losses"])
    assert np.array_equal(read, losses.astype(np.float64))
    assert np.array_equal(read.argmin(axis=1), losses.argmin(axis=1))


def test_the_probe_interval_resamples_genera_then_species():
    from taxabench.metrics.aggregate import Resampling

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(8), 2)
    values = np.repeat(np.repeat(rng.normal(size=4), 2), 2) + 0.01 * rng.normal(size=16)  # a genus effect
    ids = [f"F/g{t // 2}/s{t}" for t in range(8)]
    by_genus = Resampling(500, 0.95, 0, "auto", ("family", "genus", "species"))
    plain = per_species_mean(values, truth, Resampling(500, 0.95, 0), "s")
    clustered = per_species_mean(values, truth, by_genus, "s", ids)
    assert clustered[0] == plain[0]
    assert clustered[2] - clustered[1] > 1.2 * (plain[2] - plain[1])  # siblings are not independent evidence
    unique = per_species_mean(values, truth, by_genus, "s", [f"F/g{t}/s{t}" for t in range(8)])
    assert unique == plain
