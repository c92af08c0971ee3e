"""Building the model to train (tiny preset, a saved R3D checkpoint, or a real backbone by path) and making it
usable by trl's trainers.

trl 1.16's SFT and GRPO trainers compute per-token log-probabilities with a fused LM head
(``trl.trainer.utils.add_fused_lm_head``): it calls ``model.base_model(**inputs)`` expecting a decoder
output with ``last_hidden_state``, then projects through ``model.get_output_embeddings()``. For the R3D
model the inputs include the point cloud (and views), which must be embedded and spliced in first, so
:func:`enable_trl_fused_head` gives the model a ``base_model`` that does exactly that.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / 'r3d_ros' / 'assets'


class _SceneBackbone:
    """``model.base_model`` for trl's fused head: embed text + scene/view/depth tokens, run the decoder.

    A plain object (not an ``nn.Module``), so it adds no parameters and no second path to the weights in
    ``state_dict``/``named_modules``; it looks the decoder up on each call because PEFT/FSDP replace modules."""

    def __init__(self, model):
        self._model = model

    def __call__(self, input_ids=None, attention_mask=None, point_clouds=None, view_pixel_values=None,
                 view_depths=None, view_mask=None, inputs_embeds=None, **kwargs):
        m = self._model
        if point_clouds is None:
            m._pointer_slots = None  # no scene in these rows: the slot pointer has nothing to point at
        if inputs_embeds is None:
            inputs_embeds = m.embed(input_ids, point_clouds, view_pixel_values, view_depths, view_mask)
        decoder = m.get_decoder()
        kwargs.pop('output_router_logits', None)
        return decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


def enable_trl_fused_head(model) -> None:
    """Let trl's fused LM head run on an R3D model (see module docstring). Idempotent."""
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    if type(base).__name__ != 'R3DForConditionalGeneration':
        return
    object.__setattr__(base, base.base_model_prefix, _SceneBackbone(base))


#: tiny-preset keys that resize its point encoder (scene tokens, neighbours per token, blocks, object tokens)
SCENE_ENCODER_KEYS = ('num_scene_tokens', 'point_knn', 'point_layers', 'point_hidden_size', 'num_object_tokens',
                      'object_points')


def _tiny_with_scene_encoder(model_cfg: dict, scene: dict):
    """The tiny preset (``r3d_ros.model.presets``) with a resized point encoder."""
    import torch

    from r3d_ros.model import R3DForConditionalGeneration, R3DProcessor
    from r3d_ros.model.presets import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer()
    refs = []
    if model_cfg.get('object_refs') and scene.get('num_object_tokens'):
        from r3d_ros.model.tokenizer import add_object_refs

        refs = add_object_refs(tok, scene['num_object_tokens'])   # before the config: the vocabulary grows
    cfg = tiny_config(tok, with_views=bool(model_cfg.get('with_views', False)),
                      num_points=int(model_cfg.get('num_points', 1024)))
    for k, v in scene.items():
        setattr(cfg, k, v)
    cfg.object_ref_token_ids = refs
    cfg.object_pointer_size = int(model_cfg.get('object_pointer', 0)) if refs else 0
    if cfg.num_object_tokens:  # a class head over the synthetic scenes' object classes (their names as LM words)
        from r3d_ros.model.tokenizer import word_token_ids
        from training.data import object_class_names

        cfg.object_class_names = list(object_class_names())
        cfg.object_class_token_ids = word_token_ids(tok, cfg.object_class_names)
    torch.manual_seed(int(model_cfg.get('seed', 0)))
    model = R3DForConditionalGeneration(cfg)
    processor = R3DProcessor.for_config(tok, cfg, image_size=64)
    return model, processor


def load_model_and_processor(model_cfg: dict):
    """(model, processor) from the ``model:`` section of a training config.

    * ``preset: tiny``  - a fresh tiny R3D model (``with_views``, ``num_points``, ``seed``; the scene-encoder
      sizes of ``SCENE_ENCODER_KEYS``; ``object_refs: true`` adds the ``<obj_k>`` identifier tokens;
      ``object_pointer: N`` with them adds a slot pointer of width N)
    * ``path: DIR``     - a saved R3D checkpoint (model + processor), e.g. the SFT output for GRPO
    * ``backbone: DIR`` - a Qwen2/2.5/3 causal LM by path (+ ``vision_tower: DIR``): paper-style model
    ``lora: {...}`` wraps the result with peft LoRA (paper: last 8 blocks, rank 12, alpha 16).
    """
    from r3d_ros.model import R3DForConditionalGeneration, R3DProcessor
    from r3d_ros.model.presets import build_from_local_paths, build_tiny_model_and_processor

    if model_cfg.get('path'):
        path = Path(model_cfg['path'])
        model = R3DForConditionalGeneration.from_pretrained(str(path))
        processor = R3DProcessor.from_pretrained(str(path))
    elif model_cfg.get('backbone'):
        extra = {k: model_cfg[k] for k in ('num_points', 'num_scene_tokens', 'num_view_tokens') if k in model_cfg}
        model, processor = build_from_local_paths(model_cfg['backbone'], model_cfg.get('vision_tower'),
                                                  **extra)
    elif model_cfg.get('preset') == 'tiny':
        scene = {k: int(model_cfg[k]) for k in SCENE_ENCODER_KEYS if model_cfg.get(k) is not None}
        if scene:
            model, processor = _tiny_with_scene_encoder(model_cfg, scene)
        else:
            model, processor = build_tiny_model_and_processor(with_views=bool(model_cfg.get('with_views', False)),
                                                              num_points=int(model_cfg.get('num_points', 1024)),
                                                              seed=int(model_cfg.get('seed', 0)))
    else:
        raise ValueError(f"model: set 'path' (an R3D checkpoint), 'backbone' (a Qwen2-family LM directory) or "
                         f"'preset: tiny' (got {model_cfg})")
    enable_trl_fused_head(model)
    lora = model_cfg.get('lora')
    if lora:
        from r3d_ros.model.lora import apply_lora

        lora = dict(lora) if isinstance(lora, dict) else {}
        model = apply_lora(model, **lora)
        enable_trl_fused_head(model)
    return model, processor


def save_model(model, processor, out_dir: str | Path) -> Path:
    """Save a plain R3D checkpoint (LoRA merged in) + processor, loadable by ``ScenePipeline``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, 'merge_and_unload'):
        model = model.merge_and_unload()
    base = model
    # the trl fused-head patch lives on the instance; saving uses the class's own methods
    base.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    return out
