"""A killed run resumes to identical bytes: training with the frozen-work caches, atomic writes, partial artefacts
never taken for finished ones. (The whole-run kill sweep is `tests/test_faults.py`.)"""

from __future__ import annotations

import pytest
import torch
from conftest import experiment
from test_train import trained_state

from taxabench.train import method_dir, train_method


def test_flat_ldm_with_caches_resumes_bit_identically_across_an_epoch(small_world, tmp_path, monkeypatch):
    """The latent and text caches used to encode "whatever this batch was missing" together: after a resume (empty
    cache) images first needed in another batch composition got latents different at ~1e-7, so 207 of 208 UNet
    tensors of flat-ldm differed. A kill after the first epoch shows it."""
    import taxabench.train as train_module

    train = {"steps_per_stage": 8, "checkpoint_every": 4, "cache_latents": True, "cache_text": True}
    steady = experiment(small_world, tmp_path / "steady", data={"dataset": "csv"}, train=train)
    train_method(steady, "flat-ldm", show_progress=False)

    killed = experiment(small_world, tmp_path / "killed", data={"dataset": "csv"}, train=train)
    real_log = train_module._log

    def dies_after_step_6(path, stage, step, *args):
        real_log(path, stage, step, *args)
        if step == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_log", dies_after_step_6)
    with pytest.raises(KeyboardInterrupt):
        train_method(killed, "flat-ldm", show_progress=False)
    monkeypatch.setattr(train_module, "_log", real_log)
    train_method(killed, "flat-ldm", show_progress=False)

    a = trained_state(method_dir(steady.run_dir, "flat-ldm") / "stage-0")
    b = trained_state(method_dir(killed.run_dir, "flat-ldm") / "stage-0")
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} of {len(a)} tensors differ after resume, e.g. {different[0]}"
