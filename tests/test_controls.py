"""Equal-capacity controls: what they train, and that they start where their method starts."""

import torch
from conftest import experiment

from taxabench.methods import Stage, build_method
from taxabench.methods.base import LORA_FILE, UNET_FOLDER


def built(name, tiny_world, tiny_data, tiny_backbone, tmp_path):
    from taxabench.backbone import load_backbone

    config = experiment(tiny_world, tmp_path)
    backbone = load_backbone(config, tiny_data, show_progress=False)
    species = [tiny_data.taxonomy.labels_of(t) for t in tiny_data.taxonomy.taxa(tiny_data.ranks[-1])]
    return build_method(name, config, tiny_data.ranks, species, backbone)


def trained_count(method, stages) -> int:
    """Distinct parameters the method trains over all its stages."""
    return sum({id(p): p.numel() for s in stages for p in method.trainable_parameters(s)}.values())


def test_flat_ldm_lora_trains_its_codes_and_a_lora_not_the_unet(tiny_world, tiny_data, tiny_backbone, tmp_path):
    method = built("flat-ldm-lora", tiny_world, tiny_data, tiny_backbone, tmp_path)
    trained = {id(p) for p in method.trainable_parameters(method.stages(2)[0])}
    lora = {id(p) for p in method.lora_parameters()}
    codes = {id(p) for p in method.conditioner.parameters()}
    assert lora and trained == lora | codes
    assert UNET_FOLDER not in method.expected_files() and LORA_FILE in method.expected_files()


def test_sd_lora_matched_trains_as_many_parameters_as_taxadiffusion(tiny_world, tiny_data, tiny_backbone, tmp_path):
    taxa = built("taxadiffusion", tiny_world, tiny_data, tiny_backbone, tmp_path)
    target = trained_count(taxa, taxa.stages(2))
    matched = built("sd-lora-matched", tiny_world, tiny_data, tiny_backbone, tmp_path / "m")
    params = trained_count(matched, matched.stages(2))
    per_rank = params / matched.matched_rank
    assert matched.matched_rank > 4  # more than SD+LoRA's rank 4 on the tiny backbone
    assert abs(params - target) <= per_rank / 2  # the closest rank


def test_gated_taxadiffusion_starts_as_a_no_op_and_its_gate_trains_with_its_module(tiny_world, tiny_data,
                                                                                     tiny_backbone, tmp_path):
    method = built("taxadiffusion-gated", tiny_world, tiny_data, tiny_backbone, tmp_path)
    stage = Stage(2, 2, "")
    gate = method.conditioner.gates[2]
    assert any(p is gate for p in method.trainable_parameters(stage))
    embeddings = torch.randn(3, 5, 4, method.backbone.text_width)
    assert torch.count_nonzero(method.conditioner(embeddings, depth=4)) == 0
    with torch.no_grad():
        method.conditioner.gates[0].fill_(1.0)
    plain = method.conditioner.rank_modules[0].eval()(embeddings[:, 0])
    assert torch.allclose(method.conditioner.eval()(embeddings, depth=0), plain)
