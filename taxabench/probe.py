"""A sampler-free taxonomic probe ("diffusion classifier", Li et al., arXiv 2303.16203): how much taxonomy a trained
model carries, measured without generating a single image.

For each held-out real image (the first `probe.images_per_taxon` of each species in `data.eval_split`), its VAE
latent is noised at a fixed set of timesteps (`probe.timesteps`) with `probe.noises` fixed noises per image, and the
model's denoising loss is measured under the condition of *every* training species, the same noisy latents for all.
The species with the lowest mean loss is the prediction. From it:

- `probe_top1` per rank: the predicted species' ancestor at that rank is the true one (the species scope is the
  plain top-1; coarser ranks credit a wrong species in the right genus, family...); rare and common scopes:
  species top-1 on the images of rare / common species (`data.rare_threshold`);
- `probe_sibling`: for each image and each sibling of its species (same parent), whether the true species' loss is
  lower (ties count half) — chance is 50% whatever the number of species.

Each value is the mean over species of the species' mean over its images, with a bootstrap interval over species
(`eval.bootstrap`, `eval.seed`). Rows go to `metrics/all.csv` like every other number (`point: final`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from taxabench.seeds import generator

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def probe_losses(latents: torch.Tensor, contexts: torch.Tensor, denoise: Denoise, scheduler,
                 timesteps: Sequence[int], noises: int, seed: int, batch_size: int = 64) -> np.ndarray:
    """(images x conditions) mean denoising loss: each image noised at every timestep with `noises` fixed noises
    (seeded per image), the same noisy latents under every condition."""
    losses = np.zeros((len(latents), len(contexts)))
    prediction_type = scheduler.config.prediction_type
    for i, clean in enumerate(latents):
        for k in range(noises):
            noise = torch.randn(clean.shape, generator=generator(seed, "probe", i, k)).to(clean)
            for t in timesteps:
                step = torch.tensor([t])
                noisy = scheduler.add_noise(clean[None], noise[None], step)
                target = scheduler.get_velocity(clean[None], noise[None], step) if prediction_type == "v_prediction" \
                    else noise[None]
                for start in range(0, len(contexts), batch_size):
                    chunk = contexts[start:start + batch_size]
                    n = len(chunk)
                    predicted = denoise(noisy.expand(n, *noisy.shape[1:]), step.expand(n), chunk)
                    error = (predicted.float() - target.float()).pow(2).flatten(1).mean(1)
                    losses[i, start:start + n] += error.cpu().double().numpy()
    return losses / (noises * len(timesteps))


def probe_scores(losses: np.ndarray, truth: Sequence[int], lineages: Sequence[tuple[str, ...]],
                 ranks: Sequence[str], rare: Sequence[bool]) -> dict[str, dict[str, np.ndarray]]:
    """Per-image scores: {"top1": {rank: 0/1 per image, "rare"/"common": ...}, "sibling": {"overall": ...}}.

    `truth[i]`: the index of image i's species among the conditions; `lineages[j]`: condition j's lineage;
    `rare[j]`: whether species j is rare. Images whose species has no sibling get NaN sibling scores."""
    predicted = losses.argmin(axis=1)
    truth = np.asarray(truth)
    top1 = {rank: np.array([lineages[p][: r + 1] == lineages[t][: r + 1] for p, t in zip(predicted, truth)],
                           dtype=float) for r, rank in enumerate(ranks)}
    species = top1[ranks[-1]]
    rare_image = np.array([rare[t] for t in truth])
    top1["rare"] = np.where(rare_image, species, np.nan)
    top1["common"] = np.where(~rare_image, species, np.nan)
    sibling = np.full(len(truth), np.nan)
    for i, t in enumerate(truth):
        siblings = [j for j, lineage in enumerate(lineages) if j != t and lineage[:-1] == lineages[t][:-1]]
        if siblings:
            own, others = losses[i, t], losses[i, siblings]
            sibling[i] = float(np.mean((own < others) + 0.5 * (own == others)))
    scores = {"sibling": {"overall": sibling,
                          "rare": np.where(rare_image, sibling, np.nan),
                          "common": np.where(~rare_image, sibling, np.nan)}}
    return {"top1": top1, **scores}


def per_species_mean(values: np.ndarray, truth: Sequence[int], resampling, salt: str,
                     species_ids: Sequence[str] | None = None) -> tuple[float, float, float, int]:
    """(mean over species of each species' mean, CI low, CI high, species counted), NaN images left out.
    `species_ids[t]`: the id of species t, so the bootstrap clusters species by genus (`eval.resample_by`)."""
    by_species: dict[int, list[float]] = {}
    for value, t in zip(values, truth):
        if np.isfinite(value):
            by_species.setdefault(int(t), []).append(float(value))
    means = np.array([np.mean(v) for v in by_species.values()])
    if len(means) == 0:
        return float("nan"), float("nan"), float("nan"), 0
    estimate = float(means.mean())
    ids = None if species_ids is None else [species_ids[t] for t in by_species]
    counts = resampling.counts(len(means), salt, ids)
    low, high = resampling.interval(counts @ means / counts.sum(axis=1), estimate)
    return estimate, low, high, len(means)


def probe_record(method: str, seed: int, protocol: dict, losses: np.ndarray, truth: Sequence[int],
                 measurements: Sequence[dict] = ()) -> bytes:
    """The probe's JSON: its losses unrounded (float64, as JSON writes a float exactly): sibling species' losses
    differ by ~1e-5 or less, so any rounding would decide the predictions read back from the file; and
    `measurements`, the rows of all.csv it vouches for (`taxabench.metrics.evaluation.check_table`)."""
    import json

    return json.dumps({"probe_of": method, "seed": seed, "protocol": protocol,
                       "losses": np.asarray(losses, dtype=np.float64).tolist(), "truth": [int(t) for t in truth],
                       "measurements": list(measurements)}).encode()


def run_probe(config, method: str, run_dir: Path, seed: int | None = None, show_progress: bool = True):
    """Probe `method`'s final checkpoint; write its rows to `metrics/all.csv` and `metrics/[seed-s/]<method>-probe.json`."""
    from dataclasses import replace

    from taxabench import budget
    from taxabench.checkpoint import TextCache, cpu_only, load_checkpoint
    from taxabench.data import load_dataset
    from taxabench.data.images import load_image, to_tensor
    from taxabench.files import write_bytes
    from taxabench.layout import POINT_FINAL, RunLayout
    from taxabench.methods.base import move_inputs
    from taxabench.metrics.aggregate import Resampling, ScopeValue
    from taxabench.metrics.evaluation import (
        KEY_METHOD,
        KEY_POINT,
        KEY_SEED,
        KEY_SPLIT,
        SEPARATE_METRICS,
        csv_rows,
        write_csv_rows,
    )
    from taxabench.metrics.metric_base import Measurement

    if seed is not None:
        config = replace(config, seed=seed)
    probe = config.probe
    layout = RunLayout(run_dir)
    trained = load_checkpoint(layout.checkpoints(method, seed), expect_method=method)
    data = load_dataset(config.data)
    device = torch.device("cpu") if cpu_only() else torch.device("cuda")
    backbone, model = trained.backbone, trained.method
    for module in (backbone.vae, backbone.unet, backbone.text_encoder, model.conditioner):
        module.to(device).float().eval()
    taxonomy = trained.taxonomy
    species = taxonomy.taxa(taxonomy.ranks[-1])
    labels = [taxonomy.labels_of(t) for t in species]
    index = {t.id: j for j, t in enumerate(species)}
    text = TextCache(backbone, cache=True)
    contexts = []
    for start in range(0, len(labels), probe.batch_size):
        inputs = model.condition_inputs(labels[start:start + probe.batch_size], trained.stage, text)
        contexts.append(model.encoder_hidden_states(move_inputs(inputs, device), trained.stage).float())
    contexts = torch.cat(contexts)

    images, truth = [], []
    for taxon in data.taxonomy.taxa(data.ranks[-1]):
        if taxon.id in index:
            for record in data.records_of(taxon, "eval")[: probe.images_per_taxon]:
                images.append(to_tensor(load_image(record, config.data.image_size, config.data.resize,
                                                   config.data.use_bbox)))
                truth.append(index[taxon.id])
    with torch.no_grad():
        pixels = torch.stack(images).to(device)
        mean, std = backbone.latent_distribution(pixels)
        latents = backbone.scaled_latents(mean, std, torch.zeros_like(mean))

    def denoise(noisy, t, context):
        return backbone.unet(noisy, t.to(device), encoder_hidden_states=context).sample

    losses = probe_losses(latents, contexts, denoise, backbone.noise_scheduler, probe.timesteps, probe.noises,
                          config.seed, probe.batch_size)
    rare = [data.taxonomy.image_count(t.id) <= data.rare_threshold if t.id in data.taxonomy else False
            for t in species]
    scores = probe_scores(losses, truth, [t.lineage for t in species], list(taxonomy.ranks), rare)
    resampling = Resampling(config.eval.bootstrap, config.eval.confidence, config.eval.seed, config.eval.resample_by,
                            tuple(taxonomy.ranks))
    protocol = {"timesteps": list(probe.timesteps), "noises": probe.noises, "images_per_taxon": probe.images_per_taxon,
                "conditions": len(labels), "split": config.data.eval_split}
    measurements = []
    for metric, name, by_scope in (("probe_top1", "probe top-1 (diffusion classifier)", scores["top1"]),
                                   ("probe_sibling", "probe sibling accuracy (chance 50%)", scores["sibling"])):
        for scope, values in by_scope.items():
            value, low, high, n_taxa = per_species_mean(values, truth, resampling, f"{metric}/{scope}",
                                                        [t.id for t in species])
            counted = int(np.isfinite(values).sum())
            measurements.append(Measurement(
                metric, name, ScopeValue(scope, 100 * value, 100 * low, 100 * high, counted, 0, n_taxa,
                                         resampling.resamples),
                "diffusion-classifier", trained.backbone.identity, True, protocol))
    key = {KEY_SEED: config.seed, KEY_POINT: POINT_FINAL, KEY_SPLIT: config.data.eval_split,
           **budget.axes(layout.checkpoints(method, seed))}
    path = layout.metrics_json(f"{method}-probe", seed)
    rows = [{k: v for k, v in row.items() if k != KEY_METHOD} for row in csv_rows(method, measurements)]
    write_bytes(path, probe_record(method, config.seed, protocol, losses, truth, rows), "metrics")
    write_csv_rows(layout.all_csv, method, measurements, key, only_metrics=SEPARATE_METRICS)
    return measurements
