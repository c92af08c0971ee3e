"""Model presets: the tiny model (tests, embedded default) and the paper-size one (Qwen2.5-7B-shaped)."""

from __future__ import annotations

from pathlib import Path

from transformers import Qwen2Config, SiglipVisionConfig

from r3d_ros.model.configuration_r3d import R3DConfig
from r3d_ros.model.processing_r3d import R3DProcessor
from r3d_ros.model.tokenizer import DEPTH, EOS, PAD, SCENE, VIEW, train_tokenizer

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / 'assets' / 'r3d_tiny_tokenizer'


def tiny_tokenizer():
    from transformers import AutoTokenizer

    if (TOKENIZER_DIR / 'tokenizer.json').exists():
        return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    return train_tokenizer()


def _token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {'scene_token_id': ids(SCENE), 'view_token_id': ids(VIEW), 'depth_token_id': ids(DEPTH)}


def tiny_config(tokenizer, with_views: bool = True, num_points: int = 1024) -> R3DConfig:
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=False, pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
                       eos_token_id=tokenizer.convert_tokens_to_ids(EOS))
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                image_size=64, patch_size=16, vision_use_head=False) if with_views else None
    return R3DConfig(text_config=text, vision_config=vision, num_points=num_points, num_scene_tokens=16,
                     point_hidden_size=64, point_knn=16, point_layers=1, point_heads=4, num_view_tokens=2,
                     **_token_ids(tokenizer))


def paper_config(tokenizer=None) -> R3DConfig:
    """Qwen2.5-7B-shaped backbone (28 blocks); SigLIP-2 ViT-L/14-shaped view tower; 40k points."""
    text = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                       tie_word_embeddings=False)
    vision = SiglipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, image_size=224, patch_size=14,
                                vision_use_head=False)  # patch tokens are pooled per view here
    ids = _token_ids(tokenizer) if tokenizer is not None else {'scene_token_id': 151665, 'view_token_id': 151666,
                                                               'depth_token_id': 151667}
    return R3DConfig(text_config=text, vision_config=vision, num_points=40_000, num_scene_tokens=256,
                     point_hidden_size=512, point_layers=4, point_heads=8, num_view_tokens=16, **ids)


def build_tiny_model_and_processor(with_views: bool = True, num_points: int = 1024, seed: int = 0):
    import torch

    from r3d_ros.model.modeling_r3d import R3DForConditionalGeneration

    tok = tiny_tokenizer()
    cfg = tiny_config(tok, with_views=with_views, num_points=num_points)
    torch.manual_seed(seed)
    model = R3DForConditionalGeneration(cfg)
    processor = R3DProcessor.for_config(tok, cfg, image_size=64)
    return model, processor


def build_from_local_paths(backbone_path, vision_tower_path=None, tokenizer_path=None, image_size: int = 224,
                           **config_kwargs):
    """(model, processor) around a real backbone (+ view tower) from local paths, e.g. a Qwen2.5 checkpoint and a
    SigLIP-2 one. The backbone's tokenizer (or ``tokenizer_path``'s) gets the R3D tokens; its chat template is
    kept. ``config_kwargs`` go to :class:`R3DConfig` (num_points, num_scene_tokens, num_view_tokens, ...)."""
    from transformers import AutoTokenizer

    from r3d_ros.model.modeling_r3d import R3DForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(tokenizer_path or backbone_path))
    model = R3DForConditionalGeneration.from_backbone(backbone_path, vision_tower_path, tokenizer=tok,
                                                      **config_kwargs)
    cfg = model.config
    processor = R3DProcessor.for_config(tok, cfg, image_size=image_size)
    return model, processor
