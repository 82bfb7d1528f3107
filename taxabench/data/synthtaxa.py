"""`synthtaxa`: a procedural world with a known taxonomy, the embedded default dataset.

A tree of pseudo-Latin taxa is drawn from a seed. Each rank owns visual traits that its descendants inherit:
the coarse ranks decide big things (body plan, base colour, proportions), the fine ranks subtle ones (pattern
type, then, for sibling species, only the pattern's scale and a small mark's position and tint). Pose, scale,
position, background, lighting and pixel noise vary independently of the taxonomy. Training images per species
follow a long tail (about half the species have 1–5 images); every species has the same number of held-out
`test` images (the real set metrics compare against) and `reference` images (training data for the synthclip
metric model, never seen by the generators).

The world is written as PNGs plus `metadata.csv` in the generic `csv` format, with the ground-truth traits as
extra columns, and read back through the `csv` adapter like any user dataset. The image column is `file_name`, and
each split folder `images/<split>/` has its own `metadata.csv` too (paths relative to it), so the world is also a
Hugging Face ImageFolder: `datasets.load_dataset("imagefolder", data_dir=world)` gives its train, validation and
test splits with every rank as a column (`data_dir=world/images/reference` the reference split). Worlds written
before, with an `image` column, read the same; neither layout changes the data fingerprint (paths, splits, labels).

Presets ending in `-domain` have a constant top rank that owns no trait (a domain rank, as FishNet's class is
nearly always Actinopterygii and iNat's kingdom one of a few), so the most salient trait sits below it where
taxonomy guidance can amplify it.

The pre-training world (`pretraining_world`) is what the tiny backbone learns the look of the world from, as SD 1.5
learnt from LAION: the same trait vocabulary and rendering, the benchmark's tree down to a shared rank (names and
traits), and below it new genera and species, none of them the benchmark's (no name reused).
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from rich.progress import Progress

from taxabench.config import DataConfig, taxabench_home
from taxabench.data.base import AdapterOutput, SkipLog
from taxabench.data.csv import IMAGEFOLDER_IMAGE_COLUMN, CsvAdapter
from taxabench.errors import DataError
from taxabench.files import building_folder
from taxabench.taxonomy import check_ranks

FORMAT_VERSION = 3  # bump when the rendering changes: cached worlds of another version are rebuilt elsewhere

# Traits owned by the coarse ranks, coarse to fine, spread over all ranks but the last (see `traits_by_rank`).
COARSE_TRAITS = ("silhouette", "hue", "proportions", "fin_colour", "pattern_colour", "pattern")
# Traits owned by the species rank: what tells sibling species apart.
SPECIES_TRAITS = ("pattern_scale", "mark")

SILHOUETTES = ("fish", "beetle", "ray", "moth", "eel")
COLOUR_RULES = ("dark", "light", "complement", "black", "white")
PATTERNS = ("stripes", "spots", "bands", "checker", "chevrons", "rings")
PATTERN_SCALES = (1.6, 2.4, 3.4, 4.6, 6.0)  # cycles per body length
MARK_POSITIONS = {"head": (-0.5, 0.0), "centre": (0.0, 0.0), "rear": (0.4, 0.0), "upper": (0.0, -0.5), "lower": (0.0, 0.5)}
MARK_TINTS = {"red": (0.9, 0.1, 0.1), "yellow": (1.0, 0.9, 0.1), "white": (1.0, 1.0, 1.0), "blue": (0.1, 0.3, 1.0), "black": (0.05, 0.05, 0.05)}

_SYLLABLES = ("ca", "lo", "mi", "ra", "ti", "ve", "no", "xa", "pe", "su", "do", "ri", "ka", "the", "ly", "mo", "sta",
              "bu", "gla", "phy", "cri", "dri", "zo", "que", "ne", "ar", "el", "or", "um", "os")
_SUFFIXES = {
    "kingdom": ("alia", "ota"), "phylum": ("opoda", "ata"), "class": ("opsida", "ea", "ia"),
    "order": ("iformes", "ida", "optera"), "family": ("idae",), "genus": ("us", "a", "ops", "ichthys", "um"),
    "species": ("ensis", "atus", "ica", "ii", "oides", "alis", "ina"),
}


@dataclass(frozen=True)
class SynthTaxaSpec:
    """Everything that decides the world; two equal specs give byte-identical files."""

    ranks: tuple[str, ...] = ("class", "order", "family", "genus", "species")
    branching: tuple[int, ...] = (2, 2, 2, 2, 2)  # children per node at each rank; the first: top-rank taxa
    image_size: int = 64
    head_images: int = 40  # training images of the most common species; the rarest has 1 (see `build_world`)
    test_images: int = 8  # held-out real images per species (what metrics compare against)
    reference_images: int = 24  # per species, for training the synthclip metric model
    validation_images: int = 4  # per species, what budget points are evaluated on (never the test split)
    seed: int = 0
    domain_top: bool = False  # the top rank has one taxon and owns no trait (a domain rank)

    def check(self) -> None:
        check_ranks(self.ranks, "synthtaxa ranks")
        if len(self.branching) != len(self.ranks) or min(self.branching) < 1:
            raise DataError(f"synthtaxa: branching {self.branching} must give one positive count per rank {self.ranks}")
        if self.domain_top and (self.branching[0] != 1 or len(self.ranks) < 3):
            raise DataError("synthtaxa: a domain top rank needs branching 1 at the top and at least 3 ranks")
        if self.image_size % 8 or self.image_size < 16:
            raise DataError(f"synthtaxa: image_size must be a multiple of 8, at least 16, got {self.image_size}")


PRESETS: dict[str, SynthTaxaSpec] = {
    # 32 species, ~350 training images: generated in seconds, the demo and the tests
    "tiny": SynthTaxaSpec(),
    # 108 species, ~1,500 training images: the controlled benchmark
    "small": SynthTaxaSpec(branching=(2, 3, 2, 3, 3), head_images=60, test_images=16,
                           reference_images=32, validation_images=8),
    # 7 ranks like iNaturalist, 128 species, 128 px
    "inat-like": SynthTaxaSpec(ranks=("kingdom", "phylum", "class", "order", "family", "genus", "species"),
                               branching=(1, 2, 2, 2, 2, 2, 4), image_size=128, head_images=80, test_images=16,
                               reference_images=32, validation_images=8),
    # a constant top rank, as FishNet's class (Actinopterygii): 32 species, 4 per genus; the demo
    "tiny-domain": SynthTaxaSpec(branching=(1, 2, 2, 2, 4), domain_top=True),
    # the controlled benchmark with a constant top rank: 108 species, 4 per genus
    "small-domain": SynthTaxaSpec(branching=(1, 3, 3, 3, 4), head_images=60, test_images=16, reference_images=32,
                                  validation_images=8, domain_top=True),
}


def spec_for(preset: str, seed: int) -> SynthTaxaSpec:
    if preset not in PRESETS:
        raise DataError(f"unknown synthtaxa preset {preset!r}; available: {', '.join(PRESETS)}")
    return replace(PRESETS[preset], seed=seed)


def traits_by_rank(ranks: tuple[str, ...], domain_top: bool = False) -> dict[str, tuple[str, ...]]:
    """Which traits each rank decides: the coarse traits in contiguous blocks over all ranks but the last.

    With 5 ranks: class -> silhouette; order -> hue, proportions; family -> fin and pattern colour;
    genus -> pattern; species -> pattern scale and mark. With a domain top rank, it owns nothing and the others
    share the coarse traits: order -> silhouette, hue; family -> proportions, fin colour; genus -> pattern colour,
    pattern.
    """
    if domain_top:
        return {ranks[0]: (), **traits_by_rank(ranks[1:])}
    coarse = len(ranks) - 1
    if coarse == 0:
        return {ranks[0]: COARSE_TRAITS + SPECIES_TRAITS}
    base, extra = divmod(len(COARSE_TRAITS), coarse)
    # extra traits go to the ranks just below the top one, so that the top rank decides the body plan alone
    first = 1 if coarse > extra else 0
    sizes = [base + int(first <= i < first + extra) for i in range(coarse)]
    owned, start = {}, 0
    for rank, size in zip(ranks[:-1], sizes):
        owned[rank] = COARSE_TRAITS[start : start + size]
        start += size
    owned[ranks[-1]] = SPECIES_TRAITS
    return owned


# ---------------------------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Species:
    lineage: tuple[str, ...]
    traits: dict[str, object]
    train_images: int


def build_world(spec: SynthTaxaSpec) -> list[Species]:
    """The species of the world, each with its lineage, inherited traits and number of training images."""
    spec.check()
    rng = np.random.default_rng([spec.seed, 7])
    leaves: list[tuple[tuple[str, ...], dict[str, object]]] = []
    _grow(spec, 0, (), {}, rng, set(), leaves)
    # A log-linear long tail from `head_images` down to 1: about half the species have 5 images or fewer.
    # Which species is common and which rare is shuffled over the tree.
    order = rng.permutation(len(leaves))
    last = max(1, len(leaves) - 1)
    counts = {int(leaf): max(1, round(spec.head_images ** (1 - rank / last))) for rank, leaf in enumerate(order)}
    return [Species(lineage, traits, counts[i]) for i, (lineage, traits) in enumerate(leaves)]


def _grow(spec: SynthTaxaSpec, depth: int, lineage: tuple[str, ...], traits: dict[str, object],
          rng: np.random.Generator, used_names: set[str], leaves: list, unique_epithets: bool = False) -> None:
    """Grow the subtree under `lineage` depth-first: each rank draws distinct trait values for its children."""
    if depth == len(spec.ranks):
        leaves.append((lineage, traits))
        return
    owned = traits_by_rank(spec.ranks, spec.domain_top)
    rank, count = spec.ranks[depth], spec.branching[depth]
    values = {trait: _sibling_values(trait, count, rng) for trait in owned[rank]}
    for child in range(count):
        genus = lineage[-1] if rank == "species" and not unique_epithets else None
        name = _new_name(rank, rng, used_names, genus=genus)
        _grow(spec, depth + 1, (*lineage, name), {**traits, **{t: v[child] for t, v in values.items()}}, rng,
              used_names, leaves, unique_epithets)


def pretraining_world(spec: SynthTaxaSpec, shared_depth: int, images_per_species: int) -> list[Species]:
    """The tiny backbone's pre-training world: the benchmark's taxa down to rank `shared_depth - 1` (names and
    traits), then new taxa below, drawn from the same trait vocabulary with another seed; no name below the shared
    ranks is one of the benchmark's (species epithets included), so every benchmark genus and species is new to a
    backbone pre-trained on it."""
    if not 1 <= shared_depth < len(spec.ranks):
        raise DataError(f"synthtaxa: the pre-training world shares 1..{len(spec.ranks) - 1} ranks, not {shared_depth}")
    benchmark = build_world(spec)
    below = {t for rank in spec.ranks[shared_depth:] for t in traits_by_rank(spec.ranks, spec.domain_top)[rank]}
    shared = {}
    for species in benchmark:
        shared.setdefault(species.lineage[:shared_depth],
                          {k: v for k, v in species.traits.items() if k not in below})
    used = {name for species in benchmark for name in species.lineage}
    rng = np.random.default_rng([spec.seed, 7, 1])
    leaves: list[tuple[tuple[str, ...], dict[str, object]]] = []
    for lineage, traits in shared.items():
        _grow(spec, shared_depth, lineage, traits, rng, used, leaves, unique_epithets=True)
    return [Species(lineage, traits, images_per_species) for lineage, traits in leaves]


def sibling_difference_retained(spec: SynthTaxaSpec, resolutions: list[int], pairs: int = 64) -> dict[str, float]:
    """How much of what tells sibling species apart survives at each resolution: pairs of sibling species are
    rendered with the same nuisance draws (pose, position, background, lighting, noise), so their pixel difference is
    the species traits alone; the share of its energy left after an area downsampling to `r x r` and back is
    reported per resolution (1.0: fully resolvable; a trait under one pixel of that grid averages away)."""
    import torch
    import torch.nn.functional as F

    world = build_world(spec)
    by_parent: dict[tuple[str, ...], list[Species]] = {}
    for species in world:
        by_parent.setdefault(species.lineage[:-1], []).append(species)
    siblings = [group for group in by_parent.values() if len(group) > 1]
    if not siblings:
        return {}
    differences = []
    for i in range(pairs):
        group = siblings[i % len(siblings)]
        a, b = group[i % len(group)], group[(i + 1) % len(group)]
        pixels = [render(s.traits, spec.image_size, np.random.default_rng([spec.seed, 5, i]))[0] for s in (a, b)]
        differences.append(pixels[0].astype(np.float32) - pixels[1].astype(np.float32))
    diff = torch.from_numpy(np.stack(differences)).permute(0, 3, 1, 2)
    total = diff.square().sum().item()
    retained = {}
    for r in resolutions:
        low = F.interpolate(F.adaptive_avg_pool2d(diff, r), size=diff.shape[-1], mode="nearest")
        retained[f"{r}x{r}"] = round(low.square().sum().item() / total, 4)
    return retained


def _sibling_values(trait: str, count: int, rng: np.random.Generator) -> list[object]:
    """Distinct values for `count` siblings (continuous traits evenly spaced, categorical ones permuted)."""
    if trait == "hue":
        offset = rng.uniform(0, 1)
        return [round((offset + i / count) % 1.0, 4) for i in range(count)]
    if trait == "proportions":  # half-height of the body relative to its half-length
        low, high = (0.32, 0.62) if count > 1 else (0.47, 0.47)
        values = np.linspace(low, high, count)
        return [round(float(v), 4) for v in rng.permutation(values)]
    if trait == "pattern_scale":
        scales = list(PATTERN_SCALES) if count <= len(PATTERN_SCALES) else list(np.geomspace(1.4, 7.0, count))
        chosen = rng.choice(len(scales), size=count, replace=False)
        return [round(float(scales[i]), 3) for i in chosen]
    if trait == "mark":
        positions = list(rng.permutation(list(MARK_POSITIONS)))
        tints = list(rng.permutation(list(MARK_TINTS)))
        return [f"{positions[i % len(positions)]}/{tints[(i + i // len(positions)) % len(tints)]}" for i in range(count)]
    options = {"silhouette": SILHOUETTES, "fin_colour": COLOUR_RULES, "pattern_colour": COLOUR_RULES,
               "pattern": PATTERNS}[trait]
    picks = list(rng.permutation(len(options)))
    while len(picks) < count:
        picks += list(rng.permutation(len(options)))
    return [options[i] for i in picks[:count]]


def _new_name(rank: str, rng: np.random.Generator, used: set[str], genus: str | None) -> str:
    for _ in range(1000):
        stem = "".join(rng.choice(_SYLLABLES) for _ in range(int(rng.integers(2, 4))))
        name = stem + rng.choice(_SUFFIXES[rank])
        name = name.lower() if rank == "species" else name.capitalize()
        key = f"{genus}/{name}" if genus else name  # species names repeat under different genera
        if key not in used:
            used.add(key)
            return name
    raise DataError(f"synthtaxa: ran out of distinct {rank} names; lower the branching")


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def _colour(rule: str, base: np.ndarray, hue: float) -> np.ndarray:
    if rule == "dark":
        return base * 0.4
    if rule == "light":
        return base * 0.35 + 0.65
    if rule == "complement":
        return np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.75, 0.85))
    return np.zeros(3) + (0.06 if rule == "black" else 0.97)


def _ellipse(x, y, cx, cy, rx, ry):
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _segment(x, y, x0, y0, x1, y1, width):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2 <= width**2


def _body_plan(silhouette: str, x: np.ndarray, y: np.ndarray, a: float):
    """Masks in the body frame (length along x in about [-1, 1]): body, appendages (fin colour), eyes."""
    none = np.zeros_like(x, dtype=bool)
    if silhouette == "fish":
        body = _ellipse(x, y, -0.1, 0.0, 0.78, a)
        tail = (x > 0.5) & (x < 1.0) & (np.abs(y) <= 0.08 + (x - 0.5) * 1.3 * a)
        fins = tail | _ellipse(x, y, -0.05, -a * 0.95, 0.32, 0.2) | _ellipse(x, y, 0.05, a * 0.9, 0.22, 0.14)
        return body, fins, _ellipse(x, y, -0.62, -a * 0.25, 0.07, 0.07)
    if silhouette == "beetle":
        body = _ellipse(x, y, 0.15, 0.0, 0.72, a + 0.08)
        legs = none.copy()
        for lx in (-0.25, 0.1, 0.45):
            for side in (-1, 1):
                legs |= _segment(x, y, lx, 0.0, lx + 0.2, side * (a + 0.4), 0.045)
        head = _ellipse(x, y, -0.68, 0.0, 0.22, 0.2)
        antennae = _segment(x, y, -0.8, 0.0, -1.05, 0.3, 0.03) | _segment(x, y, -0.8, 0.0, -1.05, -0.3, 0.03)
        return body, legs | head | antennae, _ellipse(x, y, -0.75, 0.1, 0.05, 0.05) | _ellipse(x, y, -0.75, -0.1, 0.05, 0.05)
    if silhouette == "ray":
        body = np.abs(x + 0.15) / 0.75 + np.abs(y) / (a + 0.38) <= 1.0
        tail = _segment(x, y, 0.5, 0.0, 1.05, 0.0, 0.035)
        return body, tail, _ellipse(x, y, -0.45, 0.13, 0.05, 0.05) | _ellipse(x, y, -0.45, -0.13, 0.05, 0.05)
    if silhouette == "moth":
        wings = _ellipse(x, y, -0.15, -(a + 0.12), 0.42, a + 0.1) | _ellipse(x, y, -0.15, a + 0.12, 0.42, a + 0.1)
        hind = _ellipse(x, y, 0.35, -0.55 * a - 0.1, 0.3, 0.6 * a + 0.05) | _ellipse(x, y, 0.35, 0.55 * a + 0.1, 0.3, 0.6 * a + 0.05)
        thorax = _ellipse(x, y, 0.0, 0.0, 0.72, 0.12)
        return wings, (hind & ~wings) | thorax, _ellipse(x, y, -0.68, 0.0, 0.06, 0.06)
    # eel: a long sinuous band with a dorsal ridge
    centre = 0.12 * np.sin(4.0 * x)
    half = a * 0.42 * np.clip(1 - x**2, 0, 1) ** 0.35
    body = (np.abs(x) < 1.0) & (np.abs(y - centre) <= half)
    ridge = (np.abs(x) < 0.8) & (y - centre < -half) & (y - centre > -half - 0.07)
    return body, ridge, _ellipse(x, y, -0.8, 0.12 * np.sin(-3.2), 0.05, 0.05)


def _pattern(kind: str, x: np.ndarray, y: np.ndarray, f: float, phase: float) -> np.ndarray:
    two_pi = 2 * np.pi
    if kind == "stripes":
        return np.sin(two_pi * (f / 2) * x + phase) > 0.3
    if kind == "bands":
        return np.sin(two_pi * (f / 2) * 1.6 * y + phase) > 0.3
    if kind == "spots":
        u, v = (x * f / 2 + phase / two_pi) % 1.0 - 0.5, (y * f / 2 + 0.25) % 1.0 - 0.5
        return u * u + v * v < 0.06
    if kind == "checker":
        return np.sin(two_pi * (f / 2) * x + phase) * np.sin(two_pi * (f / 2) * y) > 0
    if kind == "chevrons":
        return np.sin(two_pi * (f / 2) * (x + 0.9 * np.abs(y)) + phase) > 0.3
    return np.sin(two_pi * (f / 2) * np.hypot(x + 0.1, y) + phase) > 0.3  # rings


def render(traits: dict[str, object], size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """One image (uint8 HxWx3) of a species with these traits, and the nuisance values that were drawn."""
    n = size * 2  # supersampled, then averaged down, for anti-aliased edges
    nuisance = {
        "pose_angle": float(rng.uniform(-35, 35)),
        "pose_flip": float(rng.integers(0, 2)),
        "scale": float(rng.uniform(0.55, 0.8)),
        "offset_x": float(rng.uniform(-0.12, 0.12)),
        "offset_y": float(rng.uniform(-0.12, 0.12)),
        "brightness": float(rng.uniform(0.8, 1.15)),
        "pattern_phase": float(rng.uniform(0, 1.2)),
    }
    coords = (np.arange(n) + 0.5) / n * 2 - 1
    cy, cx = np.meshgrid(coords, coords, indexing="ij")
    # canvas -> body frame: translate, scale, rotate, flip
    px, py = (cx - nuisance["offset_x"]) / nuisance["scale"], (cy - nuisance["offset_y"]) / nuisance["scale"]
    theta = np.deg2rad(nuisance["pose_angle"])
    x = np.cos(theta) * px + np.sin(theta) * py
    y = -np.sin(theta) * px + np.cos(theta) * py
    if nuisance["pose_flip"]:
        x = -x

    # background: a muted vertical gradient with soft blobs
    top, bottom = (np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.85)))
                   for _ in range(2))
    t = (cy[..., None] + 1) / 2
    image = top * (1 - t) + bottom * t
    for _ in range(3):
        bx, by, radius, gain = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.2, 0.6), rng.uniform(-0.12, 0.12)
        image = image + gain * np.exp(-((cx - bx) ** 2 + (cy - by) ** 2) / radius**2)[..., None]

    hue, a = float(traits["hue"]), float(traits["proportions"])
    base = np.array(colorsys.hsv_to_rgb(hue, 0.7, 0.85))
    body, appendages, eyes = _body_plan(str(traits["silhouette"]), x, y, a)
    pattern = body & _pattern(str(traits["pattern"]), x, y, float(traits["pattern_scale"]), nuisance["pattern_phase"])
    position, tint = str(traits["mark"]).split("/")
    mx, my = MARK_POSITIONS[position]
    mark = body & _ellipse(x, y, mx, my * a, 0.13, 0.13)

    shade = np.clip(1 - 0.28 * (y / (a + 0.2)) ** 2, 0.6, 1)[..., None]  # rounded-body shading
    image = np.where(appendages[..., None], _colour(str(traits["fin_colour"]), base, hue) * shade, image)
    image = np.where(body[..., None], base * shade, image)
    image = np.where(pattern[..., None], _colour(str(traits["pattern_colour"]), base, hue) * shade, image)
    image = np.where(mark[..., None], np.array(MARK_TINTS[tint]), image)
    image = np.where(eyes[..., None], np.array([0.03, 0.03, 0.03]), image)

    # lighting: overall gain, a directional gradient and a slight colour cast
    light_angle = rng.uniform(0, 2 * np.pi)
    light = nuisance["brightness"] * (1 + 0.12 * (np.cos(light_angle) * cx + np.sin(light_angle) * cy))
    image = image * light[..., None] * (1 + rng.uniform(-0.05, 0.05, size=3))
    image = image.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    image = image + rng.normal(0, 0.015, size=image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), nuisance


# ---------------------------------------------------------------------------------------------------------------
# Writing and reading
# ---------------------------------------------------------------------------------------------------------------

SPEC_FILE = "synthtaxa.json"
METADATA_FILE = "metadata.csv"
SPLIT_SEEDS = {"train": 0, "test": 1, "reference": 2, "validation": 3}


def generate(spec: SynthTaxaSpec, out: Path, show_progress: bool = True) -> Path:
    """Write the world to `out` (PNGs + metadata.csv + synthtaxa.json); reuse it when `out` already holds it.

    The folder appears atomically (built beside it, then renamed), so a killed run leaves no half world.
    """
    out = Path(out)
    wanted = {"format_version": FORMAT_VERSION, "spec": _spec_json(spec)}
    if (out / SPEC_FILE).is_file():
        found = json.loads((out / SPEC_FILE).read_text())
        if {k: found.get(k) for k in wanted} == wanted:
            return out
        raise DataError(
            f"{out} holds a different SynthTaxa world ({out / SPEC_FILE}); delete it or choose another folder"
        )
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not a SynthTaxa folder; choose an empty or new folder")

    world = build_world(spec)
    counts = {"train": None, "test": spec.test_images, "reference": spec.reference_images,
              "validation": spec.validation_images}
    summary = {"traits_by_rank": {r: list(t) for r, t in traits_by_rank(spec.ranks, spec.domain_top).items()}}
    return _write_world(world, spec, counts, out, {**wanted, **summary}, seed=[spec.seed], show_progress=show_progress)


def generate_pretraining(spec: SynthTaxaSpec, shared_depth: int, images_per_species: int, out: Path,
                         show_progress: bool = True) -> Path:
    """Write the pre-training world of `spec` (`pretraining_world`, training images only) to `out`, as `generate`
    writes a benchmark world; reuse it when `out` already holds it."""
    out = Path(out)
    wanted = {"format_version": FORMAT_VERSION, "spec": _spec_json(spec),
              "pretraining": {"shared_ranks": list(spec.ranks[:shared_depth]), "images_per_species": images_per_species}}
    if (out / SPEC_FILE).is_file():
        found = json.loads((out / SPEC_FILE).read_text())
        if {k: found.get(k) for k in wanted} == wanted:
            return out
        raise DataError(f"{out} holds another SynthTaxa world ({out / SPEC_FILE}); delete it or choose another folder")
    world = pretraining_world(spec, shared_depth, images_per_species)
    benchmark_names = {n for s in build_world(spec) for n in s.lineage[shared_depth:]}
    summary = {
        "shared_taxa": len({s.lineage[:shared_depth] for s in world}),
        "new_taxa": {rank: len({s.lineage[: i + 1] for s in world})
                     for i, rank in enumerate(spec.ranks) if i >= shared_depth},
        "benchmark_names_below_shared_ranks": len(benchmark_names & {n for s in world for n in s.lineage[shared_depth:]}),
    }
    return _write_world(world, spec, {"train": None}, out, {**wanted, **summary}, seed=[spec.seed, 99],
                        show_progress=show_progress)


def _write_world(world: list[Species], spec: SynthTaxaSpec, counts: dict[str, int | None], out: Path,
                 summary: dict, seed: list[int], show_progress: bool) -> Path:
    """Render every image of `world` (a count of None: each species' own training count) atomically into `out`."""
    rows = []
    jobs = [(i, split, j) for i, sp in enumerate(world)
            for split, count in counts.items()
            for j in range(sp.train_images if count is None else count)]
    # another process may finish the same world first: its images are identical, and kept
    with Progress(disable=not show_progress, transient=True) as progress, \
            building_folder(out, "world", finished_by=SPEC_FILE) as partial:
        task = progress.add_task(f"SynthTaxa: rendering {len(jobs)} images", total=len(jobs))
        for i, split, j in jobs:
            species = world[i]
            rng = np.random.default_rng([*seed, i, SPLIT_SEEDS[split], j])
            pixels, nuisance = render(species.traits, spec.image_size, rng)
            relative = f"images/{split}/{'.'.join(species.lineage)}/{j:04d}.png"
            (partial / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(partial / relative, format="PNG", compress_level=6)
            rows.append({IMAGEFOLDER_IMAGE_COLUMN: relative, "split": split, **dict(zip(spec.ranks, species.lineage)),
                         **{f"trait_{k}": v for k, v in species.traits.items()},
                         **{k: round(v, 4) for k, v in nuisance.items()}})
            progress.advance(task)
        table = pd.DataFrame(rows)
        table.to_csv(partial / METADATA_FILE, index=False)
        for split in counts:  # each split folder an ImageFolder split of its own (paths relative to it)
            prefix = f"images/{split}/"
            rows_of_split = table[table["split"] == split].copy()
            if rows_of_split.empty:
                continue
            rows_of_split[IMAGEFOLDER_IMAGE_COLUMN] = rows_of_split[IMAGEFOLDER_IMAGE_COLUMN].str.removeprefix(prefix)
            rows_of_split.to_csv(partial / prefix / METADATA_FILE, index=False)
        summary = {**summary, "images": len(rows), "species": len(world)}
        (partial / SPEC_FILE).write_text(json.dumps(summary, indent=2))
    return out


def _spec_json(spec: SynthTaxaSpec) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def spec_from_json(spec: dict) -> SynthTaxaSpec:
    """The spec a world's `synthtaxa.json` records."""
    return SynthTaxaSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def pretraining_root(spec: SynthTaxaSpec, shared_depth: int, images_per_species: int) -> Path:
    """Where the pre-training world of `spec` is cached (`generate_pretraining` writes it)."""
    import hashlib

    key = json.dumps([_spec_json(spec), shared_depth, images_per_species], sort_keys=True)
    return taxabench_home() / "synthtaxa" / f"pretraining-{hashlib.sha256(key.encode()).hexdigest()[:16]}-v{FORMAT_VERSION}"


def default_root(preset: str, seed: int) -> Path:
    return taxabench_home() / "synthtaxa" / f"{preset}-seed{seed}-v{FORMAT_VERSION}"


class SynthTaxaAdapter(CsvAdapter):
    name = "synthtaxa"
    description = "SynthTaxa, the procedural world taxabench generates itself (presets: " + ", ".join(PRESETS) + ")."
    default_ranks = PRESETS["tiny"].ranks
    default_annotations = METADATA_FILE

    def prepare(self, config: DataConfig) -> Path:
        preset, seed = config.synthtaxa.preset, config.synthtaxa.seed
        root = self.world_root(config)
        if (root / SPEC_FILE).is_file() and preset is None and seed is None:
            return root  # whatever world the folder holds
        return generate(spec_for(preset or "tiny", seed or 0), root)

    @staticmethod
    def world_root(config: DataConfig) -> Path:
        """The folder `prepare` reads the world from (and generates it into when it holds no world yet)."""
        return Path(config.root) if config.root else default_root(config.synthtaxa.preset or "tiny",
                                                                  config.synthtaxa.seed or 0)

    @classmethod
    def generated(cls, config: DataConfig) -> bool:
        """Whether the world is on disk already (reading the dataset would not have to generate it)."""
        return (cls.world_root(config) / SPEC_FILE).is_file()

    def read(self, config: DataConfig, root: Path, annotations: Path, skipped: SkipLog) -> AdapterOutput:
        # SynthTaxa always writes the default columns, whatever a user set for their own CSV
        return super().read(replace(config, columns=type(config.columns)()), root, annotations, skipped)
