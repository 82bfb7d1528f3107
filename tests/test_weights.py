"""Weights resolution order: explicit path -> env var -> cache -> (download) -> fail fast."""

import hashlib
import time

import pytest

from taxabench.config import ExperimentConfig, config_from_dict
from taxabench.errors import WeightsNotFoundError
from taxabench.weights import WeightsSpec, resolve_weights

CONTENT = b"weights"
SPEC = WeightsSpec(name="toy-net", description="a toy network", filename="toy.pth", url="https://example.org/toy.pth",
                   sha256=hashlib.sha256(CONTENT).hexdigest(), size="7 B")


def test_order_explicit_then_env_then_cache(tmp_path, monkeypatch, taxabench_home):
    cached = taxabench_home / "weights" / "toy.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(CONTENT)
    env_file, explicit = tmp_path / "env.pth", tmp_path / "explicit.pth"
    env_file.write_bytes(CONTENT)
    explicit.write_bytes(CONTENT)
    monkeypatch.setenv(SPEC.env_var, str(env_file))
    assert SPEC.env_var == "TAXABENCH_TOY_NET_WEIGHTS"
    assert resolve_weights(SPEC, explicit).source == "explicit"
    assert resolve_weights(SPEC).path == env_file
    monkeypatch.delenv(SPEC.env_var)
    found = resolve_weights(SPEC)
    assert (found.path, found.source, found.sha256) == (cached, "cache", SPEC.sha256)
    assert found.identity("toy-net") == f"toy-net@sha256:{SPEC.sha256[:12]} (cache)"
    cached.unlink()


def test_a_file_with_another_hash_is_refused(tmp_path):
    wrong = tmp_path / "toy.pth"
    wrong.write_bytes(b"something else")
    with pytest.raises(WeightsNotFoundError, match="expected .* it is not the file toy.pth"):
        resolve_weights(SPEC, wrong)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights(SPEC, tmp_path / "nowhere.pth")


def test_offline_fails_fast_naming_the_file_and_how_to_provide_it():
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as error:
        resolve_weights(SPEC)
    assert time.perf_counter() - start < 2
    message = str(error.value)
    assert "toy.pth (7 B)" in message and "https://example.org/toy.pth" in message
    assert "$TAXABENCH_TOY_NET_WEIGHTS" in message


def test_weights_table_names_the_backbone_and_what_is_missing(tiny_world, tmp_path, monkeypatch):
    from taxabench.metrics import weights_table

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache, whatever ran before
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))

    hub = config_from_dict({"backbone": {"source": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
                            "data": {"root": str(tiny_world)}})
    row = weights_table(hub)[0]
    assert (row.extractor, row.found) == ("backbone", False)
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include" in row.where
    assert "$TAXABENCH_SD_BACKBONE_WEIGHTS" in row.where
    tiny = weights_table(ExperimentConfig(data=hub.data))[0]
    assert (tiny.component, tiny.found) == ("tiny", True)
