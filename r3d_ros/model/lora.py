"""LoRA on the text backbone with the paper's defaults, through peft."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model

PROJECTIONS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
TRAINABLE_MODULES = ('point_encoder', 'scene_projector', 'object_box_projector', 'object_pointer', 'vision_tower',
                     'view_projector', 'depth_encoder')


def lora_config(num_layers: int, last_n_blocks: int = 8, r: int = 12, alpha: int = 16,
                dropout: float = 0.0) -> LoraConfig:
    """Paper: LoRA on the last 8 blocks' q, k, v, o, gate, up, down; rank 12, alpha 16, no dropout.

    A backbone with fewer than ``last_n_blocks`` blocks gets LoRA on all of them."""
    first = max(0, num_layers - last_n_blocks)
    layers = '|'.join(str(i) for i in range(first, num_layers))
    pattern = rf'.*language_model\.model\.layers\.({layers})\.(self_attn|mlp)\.({"|".join(PROJECTIONS)})'
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern,
                      modules_to_save=None, bias='none')


def apply_lora(model, train_vision_tower: bool = True, **kw):
    """Wrap ``model`` with LoRA; encoders and projectors stay trainable, everything else is frozen.

    ``train_vision_tower=False`` keeps a pretrained SigLIP/CLIP tower frozen too (on the paper-size model it
    is ~303M of the ~339M non-LoRA trainable parameters)."""
    peft_model = get_peft_model(model, lora_config(model.config.text_config.num_hidden_layers, **kw))
    modules = [m for m in TRAINABLE_MODULES if train_vision_tower or m != 'vision_tower']
    for name, param in peft_model.named_parameters():
        if any(f'.{m}.' in f'.{name}' for m in modules):
            param.requires_grad = True
    return peft_model


def count_parameters(model) -> dict[str, int]:
    """Total, trainable and LoRA parameter counts."""
    total = trainable = lora = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
        if 'lora_' in name:
            lora += p.numel()
    return {'total': total, 'trainable': trainable, 'lora': lora}
