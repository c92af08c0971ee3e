"""R3DConfig: the 3D-R1 model's configuration (a Qwen2-family text backbone + point/view/depth encoders)."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig


class R3DConfig(PretrainedConfig):
    """Configuration of :class:`R3DForConditionalGeneration`.

    ``text_config`` is any Qwen2 / Qwen2.5 / Qwen3 causal-LM config (dict or config object; ``model_type``
    picks the class). ``vision_config`` is an optional transformers vision tower config (SigLIP, SigLIP-2,
    CLIP vision) for the rendered views; ``None`` disables view tokens. Token ids of the placeholders the
    processor expands are stored here so the model can find where to splice encoder outputs.
    """

    model_type = 'r3d'

    def __init__(self, text_config=None, vision_config=None, num_points: int = 2048, num_scene_tokens: int = 32,
                 point_feature_dim: int = 3, point_hidden_size: int = 128, point_knn: int = 16,
                 point_layers: int = 2, point_heads: int = 4, num_view_tokens: int = 4, depth_channels: int = 16,
                 scene_token_id: int = 0, view_token_id: int = 0, depth_token_id: int = 0,
                 num_object_tokens: int = 0, object_points: int = 32, object_class_names=None,
                 object_class_token_ids=None, object_class_loss_weight: float = 1.0, object_ref_token_ids=None,
                 object_pointer_size: int = 0, object_class_head: str = 'tokens', **kwargs):
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        if isinstance(vision_config, dict):
            vision_config = AutoConfig.for_model(**vision_config)
        self.text_config = text_config if text_config is not None else AutoConfig.for_model('qwen2')
        self.vision_config = vision_config
        self.num_points, self.num_scene_tokens = num_points, num_scene_tokens
        self.point_feature_dim, self.point_hidden_size = point_feature_dim, point_hidden_size
        self.point_knn, self.point_layers, self.point_heads = point_knn, point_layers, point_heads
        self.num_view_tokens, self.depth_channels = num_view_tokens, depth_channels
        # object tokens: one per object proposal after the num_scene_tokens FPS tokens (0 = none)
        self.num_object_tokens, self.object_points = num_object_tokens, object_points
        # object classes: names, the LM token of each name (written into the token), weight of the class loss
        self.object_class_names = list(object_class_names or [])
        self.object_class_token_ids = list(object_class_token_ids or [])
        self.object_class_loss_weight = object_class_loss_weight
        # what the class head reads: 'tokens' (the object tokens, trained in SFT) or 'shape' (a descriptor of the
        # proposal's rows, ``r3d-train classes``; see ``r3d_ros.model.point_encoder``)
        self.object_class_head = object_class_head
        # identifier token of each object slot (<obj_k>): added to slot k's token, written to refer to it
        self.object_ref_token_ids = list(object_ref_token_ids or [])
        # width of the slot pointer's query/key (0 = none): decoder states score the object slots directly and
        # raise the logit of the matched slot's <obj_k> (see ``SlotPointer``)
        self.object_pointer_size = int(object_pointer_size)
        self.scene_token_id, self.view_token_id, self.depth_token_id = scene_token_id, view_token_id, depth_token_id
        kwargs.setdefault('tie_word_embeddings', getattr(self.text_config, 'tie_word_embeddings', False))
        super().__init__(**kwargs)

    @property
    def num_scene_placeholders(self) -> int:
        """``<scene>`` placeholders per prompt: FPS tokens + object tokens."""
        return self.num_scene_tokens + self.num_object_tokens

    @property
    def use_object_refs(self) -> bool:
        return bool(self.object_ref_token_ids) and self.num_object_tokens > 0

    @property
    def use_object_pointer(self) -> bool:
        return self.object_pointer_size > 0 and self.use_object_refs

    @property
    def use_views(self) -> bool:
        return self.vision_config is not None

    def get_text_config(self, *args, **kwargs):
        return self.text_config
