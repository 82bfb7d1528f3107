"""Baselines, each a registered method (see `taxabench.methods`): a flat-label LDM and text-only Stable Diffusion
(zero-shot, LoRA fine-tune, full fine-tune) on the species prompt."""
