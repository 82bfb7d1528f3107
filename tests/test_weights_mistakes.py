"""User mistakes with real weights, each answered by one line naming the path and the fix (issue 14's list): broken
SD folders and hub snapshots, a BioCLIP folder without its config, a failing network, wrong-hash files, legacy hub
ids; `taxabench weights` checks what a run loads and fails when something needed is missing."""

import hashlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from taxabench.backbone import SD_COMPONENTS, hub_backbone_spec, sd_files, sd_folder_sha256
from taxabench.cli import main
from taxabench.config import config_from_dict
from taxabench.errors import WeightsInvalidError, WeightsNotFoundError
from taxabench.metrics.extractor_bioclip import BIOCLIP_WEIGHTS
from taxabench.metrics.extractor_lpips_vgg import LpipsVggExtractor
from taxabench.weights import WeightsSpec, file_sha256, resolve_weights

SD_FILES = ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors",
            "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json")


def sd_folder(root: Path, skip: tuple[str, ...] = ()) -> Path:
    """An SD-format folder's file layout (contents do not matter to the checks)."""
    for name in SD_FILES:
        if not any(name.startswith(s) for s in skip):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(name)
    return root


def hub_cache(hub: Path, repo: str, refs: bool = True, **skip) -> Path:
    """`models--org--name/snapshots/<rev>/` as huggingface_hub lays a download out."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    revision = "39593d5650112b4cc580433f6b0435385882d819"
    sd_folder(folder / "snapshots" / revision, **skip)
    if refs:
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(revision)
    return folder / "snapshots" / revision


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_sd_folder_without_unet_names_it_and_the_download(tmp_path):
    folder = sd_folder(tmp_path / "sd", skip=("unet",))
    with pytest.raises(WeightsInvalidError) as error:
        sd_files(folder, str(folder))
    message = str(error.value)
    assert "lacks unet/" in message and str(folder) in message and "--include 'unet/*'" in message
    assert "\n" not in message


def test_unet_without_weights_file_is_an_interrupted_download(tmp_path):
    folder = sd_folder(tmp_path / "sd", skip=("unet/diffusion",))
    with pytest.raises(WeightsInvalidError, match=r"unet/ has no weights file \(diffusion_pytorch_model"
                                                  r".safetensors or .*interrupted download"):
        sd_files(folder, str(folder))


def test_backbone_identity_covers_only_the_loaded_files(tmp_path, monkeypatch):
    folder = sd_folder(tmp_path / "sd")
    before = sd_folder_sha256(folder, "sd")
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_text("a variant nobody loads")
    (folder / "v1-5-pruned.ckpt").write_text("single-file checkpoint")
    assert sd_folder_sha256(folder, "sd") == before
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_text("other weights")
    assert sd_folder_sha256(folder, "sd") != before


def test_each_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"x" * 100)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    assert file_sha256(path) == file_sha256(path) == hashlib.sha256(b"x" * 100).hexdigest()
    assert reads.count(path) == 1


def test_snapshot_without_refs_main_says_how_to_repair_it(hub):
    hub_cache(hub, "stable-diffusion-v1-5/stable-diffusion-v1-5", refs=False)
    with pytest.raises(WeightsInvalidError) as error:
        resolve_weights(hub_backbone_spec("stable-diffusion-v1-5/stable-diffusion-v1-5"))
    message = str(error.value)
    refs = hub / "models--stable-diffusion-v1-5--stable-diffusion-v1-5" / "refs" / "main"
    assert f"{refs} is missing" in message and "echo -n 39593d5650112b4cc580433f6b0435385882d819 >" in message


def test_snapshot_missing_unet_is_missing_in_weights_table_and_weights_exits_1(hub, capsys, monkeypatch):
    from taxabench import cli

    monkeypatch.setattr(cli.console, "width", 400)
    hub_cache(hub, "stable-diffusion-v1-5/stable-diffusion-v1-5", skip=("unet",))
    config = Path(hub.parent / "c.yaml")
    config.write_text("backbone: {source: stable-diffusion-v1-5/stable-diffusion-v1-5}\n"
                      "eval: {fd_extractor: inception, clip_model: bioclip, lpips_backbone: untrained}\n")
    assert main(["weights", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "lacks unet/" in out and "weights the run needs are missing: backbone" in out
    assert "hf download imageomics/bioclip --include 'open_clip_config.json' --include " in out
    use = {line.split("│")[2].strip(): line.split("│")[3].strip() for line in out.splitlines() if line.count("│") > 3}
    assert use["bioclip-2"] == use["synthclip"] == "unused" and use["inception"] == use["bioclip"] == "needed"
    assert use["vgg16"] == "unused"  # lpips_backbone: untrained loads no VGG16 file


def test_legacy_runwayml_cache_is_found_under_the_stock_id(hub):
    snapshot = hub_cache(hub, "runwayml/stable-diffusion-v1-5")
    resolved = resolve_weights(hub_backbone_spec("stable-diffusion-v1-5/stable-diffusion-v1-5"), download=False)
    assert resolved.path == snapshot
    spec = hub_backbone_spec("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert spec.hf_aliases == ("runwayml/stable-diffusion-v1-5",)


def test_missing_backbone_message_has_the_current_download_command(hub):
    with pytest.raises(WeightsNotFoundError) as error:
        resolve_weights(hub_backbone_spec("stable-diffusion-v1-5/stable-diffusion-v1-5"))
    message = str(error.value)
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include 'model_index.json'" in message
    assert "--include 'unet/diffusion_pytorch_model.safetensors'" in message and "huggingface-cli" not in message
    assert "runwayml/stable-diffusion-v1-5" in message


def test_bioclip_folder_without_open_clip_config(tmp_path):
    folder = tmp_path / "bioclip"
    folder.mkdir()
    (folder / "open_clip_model.safetensors").write_text("w")
    with pytest.raises(WeightsInvalidError) as error:
        resolve_weights(BIOCLIP_WEIGHTS, folder)
    message = str(error.value)
    assert f"{folder} lacks open_clip_config.json" in message and "hf download imageomics/bioclip" in message
    (folder / "open_clip_config.json").write_text("{}")
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(WeightsInvalidError, match="lacks open_clip_model.safetensors"):
        resolve_weights(BIOCLIP_WEIGHTS, folder)


def test_wrong_hash_vgg16_never_falls_back_to_a_random_backbone(tmp_path, monkeypatch):
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"a re-saved file")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsInvalidError, match="vgg16-397923af.pth has SHA-256 .* expected 397923af"):
        LpipsVggExtractor.load(config_from_dict({"eval": {"lpips_backbone": "auto"}}))


def test_another_projects_file_name_for_the_same_bytes_is_found(tmp_path, monkeypatch):
    """torch-fidelity names pytorch-fid's Inception file `weights-inception-2015-12-05-6726825d.pth`."""
    from taxabench.metrics.extractor_inception import INCEPTION_WEIGHTS

    assert "weights-inception-2015-12-05-6726825d.pth" in INCEPTION_WEIGHTS.other_filenames
    content = b"inception"
    spec = WeightsSpec("toy", "toy", filename="pt_toy.pth", other_filenames=("weights-toy.pth",),
                       sha256=hashlib.sha256(content).hexdigest())
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "weights-toy.pth").write_bytes(content)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert resolve_weights(spec).path == checkpoints / "weights-toy.pth"


def _garbage_server() -> tuple[socket.socket, int]:
    """A TCP server that answers every connection with bytes that are not TLS (a broken proxy or mirror)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            connection.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_a_failing_network_without_hf_hub_offline_fails_in_seconds_in_one_line(tmp_path):
    server, port = _garbage_server()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TAXABENCH_OFFLINE",
                                                            "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"https://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(Path(__file__).parents[1]))
    script = ("import time\n"
              "from taxabench.metrics.extractor_bioclip import BIOCLIP_WEIGHTS\n"
              "from taxabench.weights import resolve_weights\n"
              "from taxabench.errors import WeightsNotFoundError\n"
              "started = time.perf_counter()\n"
              "try:\n    resolve_weights(BIOCLIP_WEIGHTS)\n"
              "except WeightsNotFoundError as error:\n    print(error)\n"
              "print(time.perf_counter() - started)\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    server.close()
    assert result.returncode == 0, result.stderr
    line, seconds = result.stdout.strip().splitlines()
    assert "the download from the Hugging Face hub failed" in line and "SSL" in line
    assert "hf download imageomics/bioclip" in line and "Traceback" not in result.stderr
    assert float(seconds) < 15  # 3.7 s measured on a loaded machine, huggingface_hub's import included: no retries


def test_components_named_in_the_layout_checks():
    assert set(SD_COMPONENTS) == {f.split("/")[0] for f in SD_FILES if "/" in f}


def test_written_files_are_readable_by_the_group(tmp_path):
    """tempfile makes 0600 files: checkpoints, metrics and caches were unreadable in a shared folder."""
    from taxabench.metrics.cache import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "m.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644


def test_a_verified_different_file_is_accepted_by_its_digest_and_marked(tmp_path):
    """A re-saved VGG16 (same weights, other bytes): refused by default; accepted when its digest is stated, and then
    every identity (and so every number's weights and name) says 'unverified: sha256 <digest>'."""
    from taxabench.metrics.extractor_lpips_vgg import VGG16_WEIGHTS

    path = tmp_path / "vgg16-resaved.pth"
    path.write_bytes(b"re-saved")
    digest = hashlib.sha256(b"re-saved").hexdigest()
    with pytest.raises(WeightsInvalidError, match="eval.unverified_weights"):
        resolve_weights(VGG16_WEIGHTS, path)
    resolved = resolve_weights(VGG16_WEIGHTS, path, unverified_sha256=digest)
    assert not resolved.verified and resolved.identity("vgg16") == f"vgg16@unverified: sha256 {digest} (explicit)"
    with pytest.raises(WeightsInvalidError, match="neither the published"):
        resolve_weights(VGG16_WEIGHTS, path, unverified_sha256="0" * 64)
    config = config_from_dict({"eval": {"weights": {"lpips-vgg": str(path)},
                                        "unverified_weights": {"lpips-vgg": digest}}})
    assert config.eval.unverified_weights == {"lpips-vgg": digest}
    with pytest.raises(Exception, match="a full SHA-256"):
        config_from_dict({"eval": {"unverified_weights": {"lpips-vgg": "abc"}}})


def test_hub_identity_records_the_revision(hub):
    hub_cache(hub, "stable-diffusion-v1-5/stable-diffusion-v1-5")
    resolved = resolve_weights(hub_backbone_spec("stable-diffusion-v1-5/stable-diffusion-v1-5"), download=False)
    assert resolved.identity("sd").endswith("(cache, revision 39593d565011)")


def test_clip_caption_forms():
    from taxabench.metrics.metric_clip_score import caption, caption_form

    ranks, labels = ("genus", "species"), ("Abudefduf", "saxatilis")
    assert caption(ranks, labels, ("Animalia",), "taxonomic") == "Animalia Abudefduf saxatilis"
    assert caption(ranks, labels, ("Animalia",), "sentence") == "a photo of Animalia Abudefduf saxatilis."
    assert caption_form("auto", "bioclip") == "taxonomic" and caption_form("auto", "synthclip") == "sentence"
    assert caption_form("sentence", "bioclip") == "sentence"
