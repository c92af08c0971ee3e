"""R3DForConditionalGeneration: a Qwen2-family decoder with point, view and depth tokens spliced in.

The processor writes one placeholder token per encoder output (``<scene>`` x num_scene_tokens, ``<view>`` x
num_view_tokens and ``<depth>`` x 1 per rendered view); the model embeds the text, encodes the point
cloud / views / depth maps, projects each to the LLM hidden size and ``masked_scatter``s them into the
placeholder positions (the LLaVA recipe), then runs the decoder on the mixed sequence. Because each
sample carries its own placeholders, padding and batching leave results unchanged.

Generation is transformers' own (``GenerationMixin``): the prefill step gets the point cloud / views and
splices them; decode steps run on text tokens with the KV cache, so streamers, stopping criteria, static
caches and ``generation_config`` work as for any causal LM. ``generate`` returns prompt ids + new ids.
Registered as ``AutoConfig('r3d')`` + ``AutoModelForImageTextToText`` (see ``r3d_ros.model``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel

from r3d_ros.model.configuration_r3d import R3DConfig
from r3d_ros.model.point_encoder import PointEncoder


class DepthEncoder(nn.Module):
    """Small CNN over a rendered depth map (exact depth from our renderer: no estimator needed)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 5, stride=4, padding=2), nn.GELU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * channels, hidden))

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        return self.net(depth)


class SlotPointer(nn.Module):
    """Lets a decoder state point at an object slot and raise that slot's ``<obj_k>`` logit.

    Each slot k gets a score: the log-probability that its class (the class head's distribution ``p_k``) is the
    class the decoder state asks for (``softmax(class_query(h))``), plus a bilinear match of the state against
    the slot's input features (box, class word, identifier) for what the class does not settle. Attention over
    the filled slots then adds, scaled by a learned gate, the slots' output directions to the state.

    The directions are the dual basis of the LM head's ``<obj_k>`` rows ``w_k`` (no gradient): ``w_j . d_k`` is 1
    for j = k and 0 otherwise, so attention ``a_k`` raises ``<obj_k>``'s logit by ``gate * a_k`` and leaves the
    other identifiers' logits alone. (The rows share a large common part, cosine ~0.8 after SFT, so plain
    ``w_k / |w_k|^2`` would raise every identifier almost as much as the one pointed at.)

    Why: the 4-layer tiny LM did not learn to look the asked class up among the slots through its own attention
    (``r3d-train binding``; training/README.md), and a bilinear match alone did not learn it in an SFT epoch
    either (the class word is a small part of a slot's features). The class term makes it a class read-out
    from the decoder state, which sees the class word it has just written. The pointer acts on the decoder's
    output, not on the logits, because trl's fused LM head projects decoder outputs itself.
    """

    def __init__(self, hidden: int, size: int, num_classes: int = 0):
        super().__init__()
        self.query = nn.Linear(hidden, size, bias=False)
        self.key = nn.Linear(hidden, size, bias=False)
        self.class_query = nn.Linear(hidden, num_classes) if num_classes else None
        self.gate = nn.Linear(hidden, 1)

    @staticmethod
    def dual_basis(rows: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
        """(K, H) directions ``d`` with ``rows @ d.T`` = I (up to a small ridge that keeps them finite)."""
        rows = rows.detach().float()
        gram = rows @ rows.T
        gram = gram + ridge * gram.diagonal().mean() * torch.eye(len(rows), device=rows.device)
        return torch.linalg.solve(gram, rows)

    def scores(self, states: torch.Tensor, slots: torch.Tensor, slot_classes: torch.Tensor | None) -> torch.Tensor:
        """(B, T, K) match of each decoder state with each slot."""
        q, k = self.query(states), self.key(slots.to(states.dtype))
        scores = torch.einsum('btd,bkd->btk', q, k).float() * q.size(-1) ** -0.5
        if self.class_query is not None and slot_classes is not None:
            asked = self.class_query(states).float().softmax(-1)                     # (B, T, C)
            same = torch.einsum('btc,bkc->btk', asked, slot_classes.float())          # P(slot class = asked)
            scores = scores + torch.log(same + 1e-6)
        return scores

    def forward(self, states: torch.Tensor, slots: torch.Tensor, valid: torch.Tensor, ref_rows: torch.Tensor,
                slot_classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``states`` (B, T, H) decoder outputs; ``slots`` (B, K, H) the slots' input features; ``valid``
        (B, K) slots that hold a proposal; ``ref_rows`` (K, H) the LM head's rows of ``<obj_0..K-1>``;
        ``slot_classes`` (B, K, C) the class head's probabilities per slot (none: the bilinear match alone).
        Returns the new states and the (B, T, K) slot scores (empty slots at -1e4)."""
        scores = self.scores(states, slots, slot_classes).masked_fill(~valid[:, None, :], -1e4)
        attn = scores.softmax(-1).to(states.dtype) * valid.any(-1)[:, None, None].to(states.dtype)
        directions = self.dual_basis(ref_rows).to(states.dtype)
        return states + nn.functional.softplus(self.gate(states)) * (attn @ directions), scores


def referring_positions(labels: torch.Tensor, ref_token_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the next label is an identifier ``<obj_k>``: (N, 2) (row, position) pairs of ``labels`` (B, T) whose
    position predicts it, and (N,) the slot k of each."""
    ids = torch.as_tensor(ref_token_ids, device=labels.device)
    nxt = labels[:, 1:]
    where = torch.isin(nxt, ids).nonzero()
    return where, (nxt[where[:, 0], where[:, 1], None] == ids).float().argmax(-1)


def slot_pointer_loss(scores: torch.Tensor, labels: torch.Tensor, ref_token_ids) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of the pointer's slot scores against the labelled slot at every position whose next label is
    an identifier ``<obj_k>``: the slot-text matching loss SFT adds for models with a :class:`SlotPointer`.

    ``scores`` (B, T, K) from the forward (``object_pointer_scores``); ``labels`` (B, T) the LM labels (-100 where
    not scored). Returns the mean loss (0 without referring positions) and {positions, right} counts."""
    where, target = referring_positions(labels, ref_token_ids)
    if not len(where):
        return scores.sum() * 0.0, {'positions': 0, 'right': 0}
    picked = scores[where[:, 0], where[:, 1]].float()
    loss = nn.functional.cross_entropy(picked, target)
    return loss, {'positions': len(target), 'right': int((picked.argmax(-1) == target).sum())}


class R3DPreTrainedModel(PreTrainedModel):
    config_class = R3DConfig
    base_model_prefix = 'r3d'
    supports_gradient_checkpointing = True
    _no_split_modules = ['Qwen2DecoderLayer', 'Qwen3DecoderLayer']
    # map-frame metres in bf16 step by ~3 cm at 5 m: the (small) point encoder stays fp32 under bf16/fp16 loads
    _keep_in_fp32_modules_strict = ['point_encoder']
    _supports_sdpa = True

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
            nn.init.zeros_(module.bias)


class R3DForConditionalGeneration(R3DPreTrainedModel, GenerationMixin):
    def __init__(self, config: R3DConfig):
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.point_encoder = PointEncoder(config.point_feature_dim, config.point_hidden_size,
                                          config.num_scene_tokens, config.point_knn, config.point_layers,
                                          config.point_heads, config.num_object_tokens, config.object_points,
                                          config.num_points, len(config.object_class_token_ids),
                                          config.object_class_head)
        # paper: each encoder's output is linearly projected to the LLM hidden size
        self.scene_projector = nn.Linear(config.point_hidden_size, hidden)
        if config.num_object_tokens:  # the proposals' boxes straight to the LM (see point_encoder's docstring)
            self.object_box_projector = nn.Linear(config.point_hidden_size, hidden)
        if config.use_views:
            self.vision_tower = AutoModel.from_config(config.vision_config)
            self.view_projector = nn.Linear(config.vision_config.hidden_size, hidden)
            self.depth_encoder = DepthEncoder(config.depth_channels, hidden)
        self._pointer_slots = None  # (slot features, valid, class probabilities) of the scene being decoded
        self.object_pointer_scores = None
        if config.use_object_pointer:
            self.object_pointer = SlotPointer(hidden, config.object_pointer_size, len(config.object_class_token_ids))
            # every path to the logits (this forward, generate's decode steps, trl's fused head through
            # ``model.base_model``) runs the decoder, so the pointer hooks the decoder's output
            self.get_decoder().register_forward_hook(self._point_at_slots)
        self.post_init()

    # -- plumbing ----------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def get_decoder(self):
        """The language model's decoder (the module whose output the LM head projects), as HF's VLMs define it."""
        return self.language_model.get_decoder()

    def _point_at_slots(self, _module, _args, output):
        if self._pointer_slots is None:  # text without a scene
            return output
        slots, valid, classes = self._pointer_slots
        states = output.last_hidden_state
        if slots.size(0) != states.size(0):
            raise RuntimeError(f'object pointer: {slots.size(0)} scenes for {states.size(0)} sequences')
        rows = self.get_output_embeddings().weight[torch.tensor(self.config.object_ref_token_ids,
                                                                device=states.device)]
        output.last_hidden_state, scores = self.object_pointer(states, slots, valid, rows, classes)
        if self.training:  # read by the SFT trainer's slot-matching loss (``slot_pointer_loss``)
            self.object_pointer_scores = scores
        return output

    @classmethod
    def from_backbone(cls, backbone_path: str | Path, vision_tower_path: str | Path | None = None, tokenizer=None,
                      **config_kwargs) -> R3DForConditionalGeneration:
        """A new R3D model around pretrained parts from local paths.

        ``backbone_path``: a Qwen2 / Qwen2.5 / Qwen3 causal LM. ``vision_tower_path``: a SigLIP / SigLIP-2 /
        CLIP checkpoint (a vision-only model, or a dual encoder whose vision half is taken); without it the
        model has no view tokens unless ``vision_config`` is given. ``tokenizer``: the tokenizer the processor
        will use; the placeholder/marker tokens are added to it (``prepare_tokenizer``), the backbone's
        embeddings are resized and the token ids, pad and eos are taken from it.
        """
        from r3d_ros.model.tokenizer import DEPTH, SCENE, VIEW, prepare_tokenizer

        lm = AutoModelForCausalLM.from_pretrained(str(backbone_path))
        if tokenizer is not None:
            prepare_tokenizer(tokenizer)
            if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
                lm.resize_token_embeddings(len(tokenizer))
            ids = tokenizer.convert_tokens_to_ids
            config_kwargs = {'scene_token_id': ids(SCENE), 'view_token_id': ids(VIEW), 'depth_token_id': ids(DEPTH),
                             **config_kwargs}
            lm.config.pad_token_id, lm.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        vision = None
        if vision_tower_path is not None:
            vision = AutoModel.from_pretrained(str(vision_tower_path))
            if hasattr(vision, 'text_model'):  # SiglipModel / CLIPModel: keep the vision half
                vision = vision.vision_model
            vision_cfg = getattr(vision.config, 'vision_config', vision.config)
            config_kwargs['vision_config'] = vision_cfg
        model = cls(R3DConfig(text_config=lm.config, **config_kwargs))
        model.language_model.load_state_dict(lm.state_dict())
        if vision is not None:
            model.vision_tower.load_state_dict(vision.state_dict())
        return model

    @torch.no_grad()
    def object_class_probs(self, point_clouds: torch.Tensor) -> torch.Tensor | None:
        """(B, K, C) class-head probabilities of the object slots of a processor batch's clouds (None without a
        class head): what the map's object records take their class from."""
        if not self.config.num_object_tokens or not self.point_encoder.has_class_head:
            return None
        return self.point_encoder.encode(point_clouds)[1].float().softmax(-1)

    # -- multimodal embedding ----------------------------------------------------------------
    def _vision_inputs(self, pixels: torch.Tensor) -> dict:
        """Tower inputs from (V, 3, H, W) images; SigLIP-2 (NaFlex) takes flattened patches + their grid."""
        cfg = self.config.vision_config
        if not cfg.model_type.startswith('siglip2'):
            return {'pixel_values': pixels}
        p = cfg.patch_size
        v, c, h, w = pixels.shape
        # same patch layout as Siglip2ImageProcessor.convert_image_to_patches: (rows, cols, p, p, C) flattened
        patches = pixels.reshape(v, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(v, -1, p * p * c)
        grid = torch.tensor([[h // p, w // p]] * v, device=pixels.device)
        mask = torch.ones(patches.shape[:2], dtype=torch.long, device=pixels.device)
        return {'pixel_values': patches, 'pixel_attention_mask': mask, 'spatial_shapes': grid}

    def _view_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(V, 3, H, W) -> (V * num_view_tokens, hidden): vision-tower patches pooled per view."""
        out = self.vision_tower(**self._vision_inputs(pixels)).last_hidden_state  # (V, P, C)
        pooled = nn.functional.adaptive_avg_pool1d(out.transpose(1, 2), self.config.num_view_tokens)
        return self.view_projector(pooled.transpose(1, 2)).reshape(-1, self.config.text_config.hidden_size)

    def embed(self, input_ids, point_clouds=None, view_pixel_values=None, view_depths=None, view_mask=None):
        embeds = self.get_input_embeddings()(input_ids)
        cfg = self.config
        scene_mask = input_ids == cfg.scene_token_id
        self.object_class_loss = None
        if point_clouds is not None and scene_mask.any():
            tokens, logits = self.point_encoder.encode(point_clouds)
            feats = self.scene_projector(tokens.to(self.scene_projector.weight.dtype))
            if cfg.num_object_tokens:
                feats = self._add_object_boxes(feats, tokens, point_clouds)
            if logits is not None:
                feats = self._add_class_words(feats, tokens, logits, point_clouds)
            if cfg.use_object_refs:
                feats = self._add_object_refs(feats, tokens)
            if cfg.use_object_pointer:  # kept for the decode steps, which carry no point cloud
                start = cfg.num_scene_tokens
                classes = None if logits is None else logits.detach().float().softmax(-1)
                self._pointer_slots = (feats[:, start:], tokens[:, start:].abs().sum(-1) > 0, classes)
            embeds = embeds.masked_scatter(scene_mask[..., None], feats.to(embeds.dtype))
        if cfg.use_views and view_pixel_values is not None and (input_ids == cfg.view_token_id).any():
            if view_mask is None:
                view_mask = torch.ones(view_pixel_values.shape[:2], dtype=torch.bool, device=input_ids.device)
            valid = view_mask.bool()
            pixels = view_pixel_values[valid].to(embeds.dtype)              # (sum V, 3, H, W), sample-major
            view_feats = self._view_tokens(pixels)
            embeds = embeds.masked_scatter((input_ids == cfg.view_token_id)[..., None], view_feats.to(embeds.dtype))
            if view_depths is not None:
                depth_feats = self.depth_encoder(view_depths[valid].to(embeds.dtype))
                embeds = embeds.masked_scatter((input_ids == cfg.depth_token_id)[..., None],
                                               depth_feats.to(embeds.dtype))
        return embeds

    def _add_to_object_slots(self, feats, tokens, extra):
        """``feats`` with ``extra`` ((B or 1, K, H)) added to the K object slots that hold a proposal; the FPS
        scene tokens and empty slots (all-zero encoder output) are left as they are."""
        start = self.config.num_scene_tokens
        valid = (tokens[:, start:].abs().sum(-1, keepdim=True) > 0).to(feats.dtype)
        return torch.cat([feats[:, :start], feats[:, start:] + valid * extra], dim=1)

    def _add_object_boxes(self, feats, tokens, point_clouds):
        """Object tokens += projected box features (Fourier + written digits); empty slots stay empty."""
        enc = self.point_encoder
        rows = point_clouds[:, enc.num_points:].to(enc.position[0].weight.dtype)
        boxes = self.object_box_projector(enc.object_box_features(rows)).to(feats.dtype)
        return self._add_to_object_slots(feats, tokens, boxes)

    def _add_object_refs(self, feats, tokens):
        """Object slot k += the input embedding of its identifier token ``<obj_k>``, so that writing
        ``<obj_k>`` after ``<box>`` is a copy of the identifier of the slot attended to (Chat-Scene's object
        identifiers) instead of six numbers written digit by digit."""
        ids = torch.tensor(self.config.object_ref_token_ids, device=feats.device)
        refs = self.get_input_embeddings()(ids).to(feats.dtype)                    # (K, H)
        return self._add_to_object_slots(feats, tokens, refs[None])

    def _add_class_words(self, feats, tokens, logits, point_clouds):
        """Object tokens += expected LM word embedding of their class; sets ``object_class_loss`` when the
        rows carry class targets (training scenes): cross-entropy over the labelled slots, read by the SFT
        trainer (``training/sft.py``), which adds it to the LM loss."""
        words = self.get_input_embeddings().weight[torch.tensor(self.config.object_class_token_ids,
                                                                device=logits.device)]
        probs = logits.float().softmax(-1)
        class_words = (probs.to(words.dtype) @ words).to(feats.dtype)
        feats = self._add_to_object_slots(feats, tokens, class_words)
        targets = self.point_encoder.object_targets(point_clouds)
        if (targets >= 0).any():
            self.object_class_loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                                                 ignore_index=-1)
        return feats

    def forward(self, input_ids=None, attention_mask=None, point_clouds=None, view_pixel_values=None,
                view_depths=None, view_mask=None, labels=None, inputs_embeds=None, **kwargs):
        """Embed text + scene/view/depth tokens, then run the causal LM (``kwargs``: cache, position_ids, ...).

        During generation only the prefill carries the point cloud / views (see
        ``prepare_inputs_for_generation``); decode steps see plain text tokens and the KV cache."""
        cache = kwargs.get('cache', kwargs.get('past_key_values'))  # transformers 5 renamed it 'cache'
        if point_clouds is None and (cache is None or cache.get_seq_length() == 0):
            self._pointer_slots = None  # a new sequence without a scene: nothing to point at
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, point_clouds, view_pixel_values, view_depths, view_mask)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                                   **kwargs)

    def prepare_inputs_for_generation(self, *args, point_clouds=None, view_pixel_values=None, view_depths=None,
                                      view_mask=None, is_first_iteration=False, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration or not kwargs.get('use_cache', True):
            inputs.update(point_clouds=point_clouds, view_pixel_values=view_pixel_values, view_depths=view_depths,
                          view_mask=view_mask)
        return inputs
