"""Stage 2: GRPO with the format, perception and semantic rewards, on trl's GRPOTrainer.

trl does the algorithm: G sampled completions per prompt (its sampler repeats each prompt G times),
rewards summed with the configured weights, group-normalised advantages Â_i = (r_i − mean r)/(std r + 1e-4),
the clipped ratio min(ρ Â, clip(ρ, 1±ε) Â) and the β·KL term to the frozen reference (the SFT model: a
frozen copy, or the adapter-disabled model under LoRA). ``loss_type: grpo`` averages per sequence then
over the batch, as the paper's Eq. 5 writes it.

:class:`SceneGRPOTrainer` adds what trl cannot know about: every prompt comes with a point cloud that must
go into generation and into every log-prob forward (policy, old policy, reference). trl's VLM hooks are
built around image processors, so the cloud travels beside them:

* ``_generate_and_score_completions``: looks the batch's clouds up by ``scene_id`` and keeps them for the
  step (``self._scene_inputs``), then stores them in the returned batch so trl's shuffle/split keeps them
  aligned with their completions;
* ``_tokenize_prompts``: hands the clouds to generation as a multimodal field (trl passes tensor fields to
  ``generate``);
* ``_compute_loss`` / ``_get_per_token_logps_and_entropies``: the clouds of the current micro-batch go into
  the fused-head forward, chunk by chunk;
* ``_generate``: decodes completions keeping the grammar markers (``<think>``… are special tokens, which
  trl's ``skip_special_tokens=True`` decode would drop, zeroing the format reward).

Credit for the perception reward (``rewards.perception_credit``). ``sequence`` (the default, the paper's Eq. 5):
every token of a completion gets the same advantage, the weighted sum of all rewards, group-normalised.

``box_mirror`` (the embedded model's recipe, ``configs/tiny_grpo_pointer.yaml``): trl's advantage is split into one
part per reward (their sum is trl's advantage exactly, since the group mean is linear and all parts share trl's
std); format, similarity and key-fact parts stay on every token. The perception part of a completion whose answer
boxes refer to objects (``<obj_k>``) leaves the sampled surrogate: at each such position the reward r_k the
completion would have got with every slot k in its place is computed (the same perception reward on the
completion with ``<obj_k>`` substituted; no generation needed), and the loss adds KL(q ‖ π̃), π̃ the policy over
the slots and q ∝ π̃ · exp(η r) its mirror-descent improvement (``rewards.slot_step`` = η; the KL-regularised
policy-improvement step of MDPO / MPO, exact because all K actions are scored), weighted w_p per completion and
shared over its referring positions. Its gradient on the slot logits is π̃ − q, which stays of order one when the
right slot is unlikely (the expected policy gradient's push on the best slot, π(best) (r_best − b), is a few
percent of a label's when π(best) is ~0.1). A completion whose boxes are written as numbers keeps its perception
part as a per-token advantage on the tokens of its answer's ``<box>…</box>`` spans, times n / n_box (n its tokens,
n_box its box tokens) so that after Eq. 5's per-completion token mean it weighs what it weighs under sequence
credit; a completion with no box keeps it on every token. The clipped surrogate and the KL term are otherwise
Eq. 5's; trl's loss takes the (B, T) advantage as is. Not in the paper (a credit-assignment choice): under sequence
credit, per-token box credit alone (sessions 5-6) and the exact expected gradient over the slots (session 8) the
perception reward stayed flat; those two modes are retired (git history keeps them). training/README.md, "Per-token
credit for the perception reward" to "Mirror-descent credit".
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
import re

from accelerate.utils import is_peft_model
import torch
from transformers import Trainer
from trl import GRPOConfig, GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

from r3d_ros.model.tokenizer import OBJECT_REF
from r3d_ros.output_format import ANSWER_OPEN, BOX_CLOSE, BOX_OPEN
from training.config import last_checkpoint, make_log_callback, make_processor_saver
from training.data import SceneClouds, grpo_rows, load_records, split_path, to_dataset
from training.modeling import enable_trl_fused_head, load_model_and_processor, save_model
from training.rewards import REWARD_NAMES, build_reward_funcs, perception_reward_text

_FORCED = {'remove_unused_columns': False}
PERCEPTION_CREDITS = ('sequence', 'box_mirror')


def box_token_mask(completion_ids: torch.Tensor, box_open: int, box_close: int, answer_open: int) -> torch.Tensor:
    """(B, T) bool: the tokens of every ``<box>…</box>`` span (both markers included) after the first ``<answer>``
    (the spans the perception reward parses). Rows without such a span are all False."""
    is_open, is_close = completion_ids == box_open, completion_ids == box_close
    depth = is_open.long().cumsum(1) - (is_close.long().cumsum(1) - is_close.long())
    after_answer = (completion_ids == answer_open).long().cumsum(1) > 0
    return (depth > 0) & after_answer


def reward_scale(rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int,
                 scale_rewards: str) -> torch.Tensor:
    """(N, 1) divisor of trl's ``sum_then_normalize`` advantage: the std of the summed reward per group or over
    the batch, + 1e-4 (1 for ``none``)."""
    total = (rewards_per_func * weights.to(rewards_per_func)).nansum(1)
    if scale_rewards == 'none':
        return torch.ones(total.size(0), 1, dtype=total.dtype, device=total.device)
    if scale_rewards == 'group':
        std = total.view(-1, num_generations).std(1, keepdim=True).expand(-1, num_generations).reshape(-1, 1)
    elif scale_rewards == 'batch':
        std = (total.std() if total.numel() > 1 else torch.zeros((), dtype=total.dtype)).expand(total.size(0), 1)
    else:
        raise ValueError(f'scale_rewards must be group, batch or none, got {scale_rewards!r}')
    return std + 1e-4


def per_reward_advantages(rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int,
                          scale_rewards: str) -> torch.Tensor:
    """(N, K) parts of trl's ``sum_then_normalize`` advantage, one per reward: w_k (r_k - group mean of r_k) / s,
    with s trl's std of the summed reward (per group or over the batch; 1 for ``none``). A reward that is None
    (NaN) for a record contributes 0, as trl's ``nansum`` makes it. Summed over k this is trl's advantage."""
    w = weights.to(rewards_per_func)
    grouped = rewards_per_func.view(-1, num_generations, rewards_per_func.size(1))
    centred = torch.nan_to_num((grouped - grouped.nanmean(1, keepdim=True)) * w, nan=0.0)
    return centred.view_as(rewards_per_func) / reward_scale(rewards_per_func, weights, num_generations, scale_rewards)


def mirror_slot_loss(slot_logps: torch.Tensor, slot_rewards: torch.Tensor, step: float) -> torch.Tensor:
    """(N,) loss of ``box_mirror`` at N referring positions: KL(q ‖ π̃), π̃ the policy over the K slots
    (renormalised), q ∝ π̃ · exp(step · r) its improved version (one mirror-descent step on the slot rewards r,
    detached). The gradient on the slot logits is π̃ − q, which does not shrink with π̃(best slot) as the
    expected policy gradient's π̃_k (r_k − b) does."""
    log_pi = torch.log_softmax(slot_logps, dim=-1)
    target = torch.softmax(log_pi.detach() + step * slot_rewards, dim=-1)
    return (target * (target.clamp(min=1e-30).log() - log_pi)).sum(-1)


class SceneGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose prompts carry a scene point cloud (looked up by the dataset's ``scene_id``)."""

    def __init__(self, model, *args, scene_clouds: SceneClouds, scene_processor, perception_credit: str = 'sequence',
                 slot_step: float = 5.0, lr_scales: dict[str, float] | None = None, **kwargs):
        if perception_credit not in PERCEPTION_CREDITS:
            raise ValueError(f'perception_credit must be one of {PERCEPTION_CREDITS}, got {perception_credit!r}')
        self.scene_clouds, self.scene_processor = scene_clouds, scene_processor
        self.perception_credit, self.slot_step = perception_credit, float(slot_step)
        self.lr_scales = {str(k): float(v) for k, v in (lr_scales or {}).items()}
        self._scene_inputs: dict[str, torch.Tensor] = {}
        self._rewards_per_func: torch.Tensor | None = None
        self._batch_boxes: list = []
        self._slot_capture: dict | None = None
        self.grounded: dict[str, dict] = {}
        grpo_args = kwargs['args']
        beta = grpo_args.beta
        # trl rebuilds a full-model reference from config._name_or_path through transformers' class names,
        # which cannot find R3D (an Auto-registered class outside transformers). The reference is the policy
        # as it enters GRPO (the SFT model), so a frozen copy taken here is the same thing, without a reload.
        ref = None
        if beta != 0.0 and not is_peft_model(model):
            ref = copy.deepcopy(model).eval().requires_grad_(False)
            grpo_args.beta = 0.0
        try:
            super().__init__(model, *args, **kwargs)
        finally:
            grpo_args.beta = beta
        self.beta = beta
        if ref is not None:
            add_fused_lm_head(ref, temperature=self.temperature, cast_lm_head_to_fp32=grpo_args.cast_lm_head_to_fp32)
            if grpo_args.disable_dropout:
                disable_dropout_in_model(ref)
            if self.is_deepspeed_enabled:
                ref = prepare_deepspeed(ref, self.accelerator)
            elif self.is_fsdp_enabled:
                ref = prepare_fsdp(ref, self.accelerator)
            else:
                ref = self.accelerator.prepare_model(ref, evaluation_mode=True)
            self.ref_model = ref
        for fn in self.reward_funcs:  # the key-fact reward reads the grounded answers this trainer keeps
            if hasattr(fn, 'grounded'):
                fn.grounded = self.grounded
        enable_trl_fused_head(self.model)
        if self.ref_model is not None:
            enable_trl_fused_head(self.accelerator.unwrap_model(self.ref_model))
        # Sampling at temperature 1 can draw a placeholder token (<scene>, <view>, <depth>) into a completion;
        # the next forward would then try to splice more encoder outputs than there are, so never sample them.
        gen = self.generation_config
        gen.suppress_tokens = sorted(set(gen.suppress_tokens or []) | set(placeholder_token_ids(model)))
        if perception_credit == 'box_mirror':
            if 'perception_reward' not in self.reward_func_names:
                raise ValueError(f'perception_credit {perception_credit!r} needs the perception reward')
            if self.multi_objective_aggregation != 'sum_then_normalize':
                raise ValueError(f"perception_credit {perception_credit!r} splits trl's sum_then_normalize advantage")
            tok = self._tokenizer
            self._box_ids = tuple(tok.convert_tokens_to_ids(t) for t in (BOX_OPEN, BOX_CLOSE, ANSWER_OPEN))
            if not (getattr(scene_processor, 'object_refs', False) and scene_processor.num_object_tokens):
                raise ValueError(f'perception_credit {perception_credit!r} needs a model whose boxes refer to object '
                                 'slots (object_refs with object tokens)')
            if self.loss_type != 'grpo':
                raise ValueError(f'perception_credit {perception_credit!r} is written for loss_type \'grpo\', got '
                                 f'{self.loss_type!r}')
            self._slot_ids = torch.tensor([self._tokenizer.convert_tokens_to_ids(OBJECT_REF.format(k))
                                           for k in range(scene_processor.num_object_tokens)])

    def create_optimizer(self, model=None):
        """trl's optimizer, with one parameter group per ``lr_scales`` entry (regex on the parameter name ->
        learning-rate multiplier; the first matching pattern wins) so that a few parameters can move faster
        than the rest; the scheduler scales every group's rate alike."""
        if not self.lr_scales or self.optimizer is not None:
            return super().create_optimizer(model)
        model = model if model is not None else self.model
        opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, bool], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                scale = next((v for k, v in self.lr_scales.items() if re.search(k, name)), 1.0)
                groups.setdefault((scale, name in decay), []).append(param)
        self.optimizer = opt_cls([{'params': ps, 'lr': self.args.learning_rate * scale,
                                   'weight_decay': self.args.weight_decay if d else 0.0}
                                  for (scale, d), ps in groups.items()], **opt_kwargs)
        return self.optimizer

    # -- scene inputs --------------------------------------------------------------------------
    def scene_tensors(self, scene_ids: list[str]) -> dict[str, torch.Tensor]:
        clouds = self.scene_processor.cloud_tensor([self.scene_clouds[s] for s in scene_ids])
        return {'point_clouds': clouds.to(self.accelerator.device)}

    def _generate_and_score_completions(self, inputs):
        self._scene_inputs = self.scene_tensors([x['scene_id'] for x in inputs])
        self._batch_boxes = [x.get('boxes') for x in inputs]
        output = super()._generate_and_score_completions(inputs)
        output.update(self._scene_inputs)
        if self.perception_credit == 'box_mirror' and self.model.training:
            output.update(self.slot_rewards(output))
            output['advantages'] = self.box_credit_advantages(output, output['slot_positions'].any(1))
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def box_credit_advantages(self, output: dict, slot_rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) advantages: the perception part on the answer's box tokens, the other parts on every token
        (see the module docstring). Checked against trl's own (B,) advantage, of which it is a split. Rows in
        ``slot_rows`` (those with referring ``<obj_k>`` tokens) get no sampled perception part: the slot term
        carries it."""
        parts = per_reward_advantages(self._rewards_per_func, self.reward_weights, self.num_generations,
                                      self.scale_rewards)
        n = output['completion_ids'].size(0)
        parts = parts[self.accelerator.process_index * n:(self.accelerator.process_index + 1) * n]
        if not torch.allclose(parts.sum(1), output['advantages'], atol=1e-4):
            raise RuntimeError('per-reward advantages do not add up to trl\'s advantage')
        k = self.reward_func_names.index('perception_reward')
        box = box_token_mask(output['completion_ids'], *self._box_ids) & output['completion_mask'].bool()
        has_box = box.any(1, keepdim=True)
        share = (box | ~has_box).to(parts.dtype)   # no box written: every token shares the perception part
        # Eq. 5 averages each completion over its tokens, so on n_box of n tokens the part would keep only n_box / n
        # of the weight it has under sequence credit; scaling by n / n_box gives it back, all on the box
        n_tokens = output['completion_mask'].sum(1, keepdim=True).to(share)
        share = share * torch.where(has_box, n_tokens / box.sum(1, keepdim=True).clamp(min=1).to(share), 1.0)
        rest = parts.sum(1) - parts[:, k]
        perception = parts[:, k, None] * share
        if slot_rows is not None:
            perception = perception * (~slot_rows.to(perception.device))[:, None].to(perception)
        return rest[:, None] + perception

    def slot_rewards(self, output: dict) -> dict[str, torch.Tensor]:
        """``box_mirror``'s inputs: ``slot_positions`` (B, T) bool, the ``<obj_k>`` tokens inside the answer's
        boxes of completions that have a ground-truth box; ``slot_rewards`` (B, T, K), the perception reward of the
        completion with slot k's token at that position (the other tokens as sampled), 0 elsewhere;
        ``slot_scale`` (B,), w_p / (the completion's number of such positions): the loss is a divergence, not an
        advantage-weighted term, so trl's reward std does not scale it."""
        ids, mask = output['completion_ids'], output['completion_mask'].bool()
        slots = self._slot_ids.to(ids.device)
        positions = box_token_mask(ids, *self._box_ids) & mask & torch.isin(ids, slots)
        has_truth = torch.tensor([perception_reward_text('', b) is not None for b in self._batch_boxes],
                                 device=ids.device)
        positions &= has_truth[:, None]
        rewards = torch.zeros(*ids.shape, len(slots))
        clouds = self._scene_inputs['point_clouds']
        for i, t in positions.nonzero().tolist():
            variants = ids[i][mask[i]].repeat(len(slots), 1)
            variants[:, t] = slots
            texts = self.completion_texts(variants, clouds[i:i + 1].expand(len(slots), *clouds.shape[1:]))
            rewards[i, t] = torch.tensor([perception_reward_text(x, self._batch_boxes[i]) for x in texts])
        k = self.reward_func_names.index('perception_reward')
        per_row = float(self.reward_weights[k]) / positions.sum(1).clamp(min=1).cpu()
        return {'slot_positions': positions, 'slot_rewards': rewards.to(ids.device),
                'slot_scale': per_row.to(ids.device, torch.float32)}

    def completion_texts(self, completion_ids, clouds=None, questions=None) -> list[str]:
        """Completions as the rewards read them: grammar markers kept, pad/eos dropped, and (object-identifier
        models) grounded on the slots' object records (``R3DProcessor.ground``: references, facts, boxes and plan
        steps filled in); the ids stay as sampled. Each grounded completion's answer (facts, boxes, plan, records,
        status) is kept in ``self.grounded`` by its text, for the key-fact reward."""
        tok = self._tokenizer
        texts = tok.batch_decode(completion_ids, skip_special_tokens=False)
        for t in (tok.pad_token, tok.eos_token):
            if t:
                texts = [x.replace(t, '') for x in texts]
        texts = [x.strip() for x in texts]
        if getattr(self.scene_processor, 'object_refs', False) and clouds is not None:
            probs = _unwrapped(self.model).object_class_probs(clouds)
            questions = questions or [None] * len(texts)
            texts = [self._ground(t, c, None if probs is None else probs[i], questions[i])
                     for i, (t, c) in enumerate(zip(texts, clouds))]
        return texts

    def _ground(self, text: str, cloud, probs, question: str | None = None) -> str:
        from r3d_ros.pipeline import grounded_answer

        proc = self.scene_processor
        rows = cloud.detach().float().cpu().numpy() if hasattr(cloud, 'detach') else cloud
        points = rows[:proc.num_points, :3]   # the scene points the model reads: free space for approach points
        grounded = proc.ground(text, cloud, probs, map_points=points, question=question)
        self.grounded[grounded.text] = grounded_answer(grounded, proc.object_records(cloud, probs), points)
        while len(self.grounded) > 4096:
            self.grounded.pop(next(iter(self.grounded)))
        return grounded.text

    def _tokenize_prompts(self, prompts):
        prompt_ids, images, fields = super()._tokenize_prompts(prompts)
        return prompt_ids, images, {**fields, **self._scene_inputs}

    def _generate(self, prompts):
        out = list(super()._generate(prompts))
        questions = [self.scene_processor.question_of(p if isinstance(p, str) else str(p)) for p in prompts]
        out[3] = self.completion_texts(out[1], self._scene_inputs.get('point_clouds'), questions)
        return tuple(out)

    def _compute_loss(self, model, inputs):
        self._scene_inputs = {k: inputs[k] for k in ('point_clouds', 'view_pixel_values', 'view_depths',
                                                     'view_mask') if k in inputs}
        if 'slot_positions' not in inputs:
            return super()._compute_loss(model, inputs)
        # box_mirror: the policy forward below also returns log pi of every slot at the referring positions
        capture = self._slot_capture = {'positions': inputs['slot_positions'], 'logps': []}
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._slot_capture = None
        slot_logps = torch.cat(capture['logps'])
        positions = inputs['slot_positions']
        rewards = inputs['slot_rewards'][positions]
        weight = inputs['slot_scale'][:, None].expand_as(positions)[positions].to(slot_logps)   # (N,)
        per_position = weight * mirror_slot_loss(slot_logps, rewards.to(slot_logps), self.slot_step)
        # like trl's 'grpo' loss: per completion (a sum over its referring positions, each already divided by
        # their number), mean over the micro-batch, divided over the accumulation steps
        mode = 'train' if self.model.training else 'eval'
        normalizer = self.current_gradient_accumulation_steps if mode == 'train' else 1.0
        loss = loss + per_position.sum() / positions.size(0) / normalizer
        if positions.any():
            # (the 'box_expected/' prefix is the name these metrics were first logged under; kept so that logs
            # stay comparable)
            p = slot_logps.detach().exp()
            self._metrics[mode]['box_expected/slot_iou_policy'].append(
                ((p * rewards).sum(-1) / p.sum(-1).clamp(min=1e-12)).mean().item())
            self._metrics[mode]['box_expected/slot_iou_best'].append(rewards.max(-1).values.mean().item())
            self._metrics[mode]['box_expected/slot_mass'].append(p.sum(-1).mean().item())
            # the policy's (slot-renormalised) probability of a best slot: the policy gradient at that token
            # scales with it, so a small value means a weak push towards the right object
            top = rewards.max(-1, keepdim=True).values
            best, some = (rewards >= top - 1e-6) & (top > 0), top[:, 0] > 0
            if some.any():
                self._metrics[mode]['box_expected/slot_p_best'].append(
                    ((p * best).sum(-1) / p.sum(-1).clamp(min=1e-12))[some].mean().item())
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                           **_image_fields):
        """trl's text path plus the scene inputs of the rows being scored (see module docstring)."""
        scene = self._scene_inputs
        for k, v in scene.items():
            if v.size(0) != input_ids.size(0):
                raise RuntimeError(f'{k}: {v.size(0)} rows for {input_ids.size(0)} sequences')
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        capture, hidden = self._slot_capture, []
        hook = None
        if capture is not None:  # box_mirror: keep the decoder output of this (policy) forward
            self._slot_capture = None  # one forward per loss
            decoder = _unwrapped(model).get_decoder()
            hook = decoder.register_forward_hook(lambda _m, _i, o: hidden.append(o.last_hidden_state))
        try:
            for start in range(0, input_ids.size(0), batch_size):
                end = min(start + batch_size, input_ids.size(0))
                ids, mask = input_ids[start:end], attention_mask[start:end]
                labels = ids.masked_fill(mask == 0, -100)
                labels[:, :-logits_to_keep] = -100   # only completion tokens are scored
                with self.accelerator.autocast():
                    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True,
                                **{k: v[start:end] for k, v in scene.items()})
                logps.append(out.log_probs[:, -logits_to_keep:])
                if capture is not None:
                    # the hidden state before each completion token predicts it
                    h = hidden.pop()[:, -logits_to_keep - 1:-1][capture['positions'][start:end]]
                    capture['logps'].append(self.slot_logps(model, h))
                if compute_entropy:
                    entropies.append(out.entropy[:, -logits_to_keep:])
        finally:
            if hook is not None:
                hook.remove()
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    def slot_logps(self, model, hidden: torch.Tensor) -> torch.Tensor:
        """(N, K) log π of each slot's ``<obj_k>`` token from N decoder states: the LM head over the whole
        vocabulary at the sampling temperature, as the fused head scores the sampled token."""
        head = _unwrapped(model).get_output_embeddings()
        logits = torch.nn.functional.linear(hidden.float(), head.weight.float(),
                                            None if head.bias is None else head.bias.float())
        logps = torch.log_softmax(logits / self.temperature, dim=-1)
        return logps[:, self._slot_ids.to(logps.device)]


def _unwrapped(model):
    """The R3D model inside DDP / PEFT wrappers."""
    base = model.module if hasattr(model, 'module') else model
    return base.get_base_model() if hasattr(base, 'get_base_model') else base


def placeholder_token_ids(model) -> list[int]:
    """Ids of the tokens the processor expands for encoder outputs (never part of a completion)."""
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    cfg = base.config
    return [int(i) for i in (getattr(cfg, 'scene_token_id', None), getattr(cfg, 'view_token_id', None),
                             getattr(cfg, 'depth_token_id', None)) if i is not None]


def grpo_config(cfg: dict, output_dir: str | Path) -> GRPOConfig:
    train = dict(cfg.get('train', {}))
    rewards = cfg.get('rewards', {})
    if rewards.get('weights') is not None:
        train['reward_weights'] = list(rewards['weights'])
    return GRPOConfig(output_dir=str(output_dir), report_to='none', **{**train, **_FORCED})


def build_grpo_trainer(cfg: dict, output_dir: str | Path, model=None, processor=None,
                       reward_funcs=None) -> SceneGRPOTrainer:
    output_dir = Path(output_dir)
    if model is None:
        model, processor = load_model_and_processor(cfg.get('model', {}))
    data = cfg['data']
    tasks = data.get('tasks')
    train = load_records(split_path(data['dir'], 'train'), data.get('max_train'), tasks)
    rewards = cfg.get('rewards', {})
    if reward_funcs is None:
        reward_funcs = build_reward_funcs(rewards.get('names', REWARD_NAMES), rewards.get('encoder', 'minilm'))
    args = grpo_config(cfg, output_dir)
    return SceneGRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                            train_dataset=to_dataset(grpo_rows(train, processor)),
                            processing_class=processor.tokenizer,
                            scene_clouds=SceneClouds(data['dir'], data.get('max_points', 8192),
                                                      segment=processor.num_object_tokens > 0),
                            scene_processor=processor,
                            perception_credit=rewards.get('perception_credit', 'sequence'),
                            slot_step=rewards.get('slot_step', 5.0), lr_scales=cfg.get('lr_scales'),
                            callbacks=[make_log_callback(output_dir / 'log.jsonl'), make_processor_saver(processor)])


def run_grpo(cfg: dict, output_dir: str | Path, resume: bool = False) -> Path:
    """Train from the SFT checkpoint (``model.path``), save to ``output_dir/final``; returns that path."""
    model, processor = load_model_and_processor(cfg.get('model', {}))
    trainer = build_grpo_trainer(cfg, output_dir, model, processor)
    checkpoint = last_checkpoint(output_dir) if resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    final = Path(output_dir) / 'final'
    if trainer.accelerator.is_main_process:
        save_model(trainer.accelerator.unwrap_model(trainer.model), processor, final)
        (final / 'training_stage.json').write_text(json.dumps({'stage': 'grpo', 'from': cfg['model'].get('path')}))
    trainer.accelerator.wait_for_everyone()
    return final
