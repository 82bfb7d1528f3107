from pathlib import Path

import pytest

from taxabench.config import ExperimentConfig, load_config
from taxabench.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def test_defaults_and_values_load(tmp_path):
    config = load_config(write(tmp_path, "name: fish\ndata:\n  image_size: 128\ntrain:\n  learning_rate: 1\n"))
    assert config.name == "fish"
    assert config.data.image_size == 128
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.data.dataset == ExperimentConfig().data.dataset
    assert config.run_dir == Path("runs/fish")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data:\n  rezise: pad\n", "unknown key 'rezise' (did you mean 'resize'?)"),
        ("trian:\n  batch_size: 2\n", "unknown key 'trian' (did you mean 'train'?)"),
        ("data:\n  image_size: 64px\n", "data.image_size: expected int, got str ('64px')"),
        ("data:\n  image_size: true\n", "data.image_size: expected int, got bool"),
        ("data:\n  resize: crop\n", "data.resize: expected one of 'center-crop', 'pad', got 'crop'"),
        ("data:\n  image_size: 60\n", "data.image_size: must be divisible by 8"),
        ("methods: taxadiffusion\n", "methods: expected a list"),
        ("data:\n  species_subset:\n    mode: first\n", "species_subset.n: mode 'first' needs a positive n"),
        ("data:\n  ranks: [class, family]\n", "ranks must be contiguous"),
        ("train:\n  condition_dropout: 1.5\n", "train.condition_dropout: must be in [0, 1)"),
        ("- a\n- b\n", "expected a mapping"),
        ("sample:\n  guidance_ablation: [taxadiffusion+nosuch]\n",
         "sample.guidance_ablation[0]: unknown guidance kind 'nosuch'"),
        ("methods: [taxadiffusion]\nsample:\n  guidance_ablation: [cfg, flat-ldm+cfg]\n",
         "sample.guidance_ablation[1]: 'flat-ldm+cfg' names method 'flat-ldm', which is not in methods (taxadiffusion)"),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value)
    assert str(path) in str(error.value) or "ranks" in message


def test_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, "name: a\n")
    assert load_config(path, ["train.batch_size=3", "data.ranks=[genus, species]"]).train.batch_size == 3
    with pytest.raises(ConfigError, match="train.batch_size: expected int"):
        load_config(path, ["train.batch_size=three"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(path, ["train.batch_size"])


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))


def test_fingerprint_follows_content(tmp_path):
    a = load_config(write(tmp_path, "name: a\n"))
    b = load_config(write(tmp_path, "name: a\ntrain:\n  batch_size: 8\n"))  # the default, written out
    c = load_config(write(tmp_path, "name: a\ntrain:\n  batch_size: 4\n"))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.fingerprint("data") == c.fingerprint("data")


@pytest.mark.parametrize("shipped", sorted(p.name for p in (Path(__file__).parents[1] / "taxabench" / "configs").glob("*.yaml")))
def test_every_shipped_config_validates_and_names_its_sample_folders(shipped):
    """What `taxabench run --config configs/<file>` checks before any work: the config, its methods' options and its
    guidance-ablation entries."""
    from taxabench.methods import get_method
    from taxabench.run import sample_entries

    config = load_config(Path(__file__).parents[1] / "taxabench" / "configs" / shipped)
    for method in config.methods:
        get_method(method).parse_options(config.method_options.get(method), f"method_options.{method}")
    names = [entry.name for entry in sample_entries(config)]
    assert names[: len(config.methods)] == config.methods and len(set(names)) == len(names)


# the train step's fingerprint parts of the shipped configs at 6fccd9b, before train.report_to existed
SHIPPED_TRAIN_FINGERPRINTS = {
    "demo": "3593197231af5240f22f257f3cee06bc4b85ba8a128c1eb44f662ee62fa091b5",
    "synthtaxa": "1d84b36e4eb3ae1fbc2ed203a778dccf14356f5ec1909537bfc6de845dff29fc",
    "fishnet": "9628e118865b203a86537bac13a1534f075b45ed452efbe32c25e707788a2dee",
    "curves": "959c2cd471139140b1341d93d42ceb11435429f9c84cb9fca9bdc681f9715433",
}


@pytest.mark.parametrize("name", sorted(SHIPPED_TRAIN_FINGERPRINTS))
def test_report_to_enters_no_fingerprint(name):
    from taxabench.steps import fingerprint
    from taxabench.train import OPERATIONAL_KEYS

    path = Path(__file__).parents[1] / "taxabench" / "configs" / f"{name}.yaml"
    for overrides in ([], ["train.report_to=[tensorboard, wandb]"]):
        config = load_config(path, overrides)
        parts = ("train", config.seed, config.train, config.method_options.get("taxadiffusion"), "taxadiffusion")
        assert fingerprint(*parts) == SHIPPED_TRAIN_FINGERPRINTS[name], overrides
    assert "report_to" in OPERATIONAL_KEYS  # nor the checkpoint's config check
    with pytest.raises(ConfigError, match=r"train.report_to: unknown tracker 'tensorbord' \(did you mean 'tensorboard'"):
        load_config(path, ["train.report_to=[tensorbord]"])
