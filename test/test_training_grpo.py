"""GRPO on the R3D model: trl's loss against Eq. 5 computed by hand, group-normalised advantages, and the scene
point cloud reaching generation and every log-prob forward."""

from __future__ import annotations

import pytest
import torch

from r3d_ros.model.processing_r3d import sample_points
from r3d_ros.output_format import ANSWER_OPEN, BOX_CLOSE, BOX_OPEN, THINK_CLOSE, THINK_OPEN
from training.data import SceneClouds
from training.grpo import (
    box_token_mask,
    build_grpo_trainer,
    mirror_slot_loss,
    per_reward_advantages,
)
from training.modeling import load_model_and_processor
from training.toy_data import write_toy_dataset

BETA, EPS, G = 0.02, 0.2, 4


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return write_toy_dataset(tmp_path_factory.mktemp('toy'), num_scenes=3, use_project_generator=False)


def make_trainer(toy_dir, tmp_path, reward_funcs=None, rewards=None, lr_scales=None, model=None, **train):
    cfg = {'seed': 0, 'model': {'preset': 'tiny', 'num_points': 128, **(model or {})}, 'lr_scales': lr_scales,
           'data': {'dir': str(toy_dir), 'max_points': 1024, 'max_train': 4},
           'rewards': rewards or {'names': ['format']},
           'train': {'per_device_train_batch_size': G, 'num_generations': G, 'max_completion_length': 6,
                     'beta': BETA, 'epsilon': EPS, 'loss_type': 'grpo', 'learning_rate': 1e-3, 'use_cpu': True,
                     'gradient_checkpointing': False, 'max_steps': 1, 'logging_steps': 1, 'save_strategy': 'no',
                     'disable_tqdm': True, 'bf16': False, 'use_bias_correction_kl': False, **train}}
    model, processor = load_model_and_processor(cfg['model'])
    return build_grpo_trainer(cfg, tmp_path, model, processor, reward_funcs=reward_funcs), processor


def reference_logps(model, input_ids, attention_mask, point_clouds, n_completion):
    """log pi(o_t | q, o_<t) from the plain forward's full logits (an independent path from trl's fused head)."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, point_clouds=point_clouds).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = torch.gather(logp, 2, input_ids[:, 1:, None])[..., 0]
    return tok[:, -n_completion:]


@pytest.mark.parametrize('per_token', [False, True], ids=['sequence_advantage', 'per_token_advantage'])
def test_grpo_loss_matches_eq5_by_hand(toy_dir, tmp_path, per_token):
    trainer, processor = make_trainer(toy_dir, tmp_path)
    model = trainer.model
    model.eval()  # no dropout either way; makes the two forwards comparable
    torch.manual_seed(0)
    # one prompt, G completions of different lengths (right padded), as trl lays them out
    prompt = processor(questions=['Where is the red chair?'] * G, point_clouds=[trainer.scene_clouds[
        trainer.train_dataset[0]['scene_id']]] * G)
    vocab = model.config.text_config.vocab_size
    lengths = [5, 3, 4, 2]
    completion_ids = torch.randint(20, vocab, (G, 5))
    completion_mask = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    completion_ids = completion_ids.masked_fill(completion_mask == 0, processor.tokenizer.pad_token_id)
    input_ids = torch.cat([prompt['input_ids'], completion_ids], 1)
    attention = torch.cat([prompt['attention_mask'], completion_mask], 1)
    clouds = prompt['point_clouds']

    logp = reference_logps(model, input_ids, attention, clouds, 5)
    # the old policy differs by known log-ratios so that both sides of the clip are exercised
    shifts = torch.tensor([0.5, -0.5, 0.1, -0.1, 0.3])[None, :].expand(G, 5) * torch.tensor([1, -1, 1, -1])[:, None]
    old = logp - shifts
    ref = logp + 0.3 * torch.randn(G, 5)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0])
    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    if per_token:  # perception_credit 'box_mirror' hands trl a (G, T) advantage: Eq. 5 with A_{i,t} in place of A_i
        adv = adv[:, None] + torch.tensor([0.0, 0.0, 0.7, -0.4, 0.0])[None, :]
    adv_t = adv if per_token else adv[:, None]

    inputs = {'prompt_ids': prompt['input_ids'], 'prompt_mask': prompt['attention_mask'],
              'completion_ids': completion_ids, 'completion_mask': completion_mask, 'advantages': adv,
              'old_per_token_logps': old, 'ref_per_token_logps': ref, 'point_clouds': clouds,
              'num_items_in_batch': completion_mask.sum()}
    loss = trainer._compute_loss(model, inputs)

    # Eq. 5 (negated, since trl minimises): per completion, mean over its tokens of
    #   -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) + beta * KL,  KL = pi_ref/pi - log(pi_ref/pi) - 1
    # then the mean over the G completions of the group.
    rho = torch.exp(logp - old)
    surrogate = torch.minimum(rho * adv_t, rho.clamp(1 - EPS, 1 + EPS) * adv_t)
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    per_token = -surrogate + BETA * kl
    m = completion_mask.float()
    expected = ((per_token * m).sum(1) / m.sum(1)).mean()
    assert rho.max() > 1 + EPS and rho.min() < 1 - EPS      # the clip is really in play
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)

    # and the loss depends on the point cloud: a different scene changes the policy's log-probs
    inputs['point_clouds'] = clouds + 0.5
    assert trainer._compute_loss(model, inputs).item() != pytest.approx(loss.item(), rel=1e-6)


def test_group_normalised_advantages_and_scene_in_generation(toy_dir, tmp_path):
    seen = []

    def scripted_reward(prompts, completions, completion_ids, **kw):
        # a reward that depends on the sample, so groups have spread: the completion's first token id
        seen.append(kw['scene_id'])
        return [float(ids[0] % 7) if ids else 0.0 for ids in completion_ids]

    trainer, processor = make_trainer(toy_dir, tmp_path, reward_funcs=[scripted_reward])
    trainer.model.train()
    rows = [trainer.train_dataset[0]] * G + [trainer.train_dataset[1]] * G
    calls = []
    original_generate = trainer.model.generate

    def spy_generate(*args, **kwargs):
        calls.append(kwargs.get('point_clouds'))
        return original_generate(*args, **kwargs)

    trainer.model.generate = spy_generate
    out = trainer._generate_and_score_completions(rows)

    # generation saw each prompt's own scene
    assert calls and calls[0] is not None and calls[0].shape[0] == 2 * G
    expect = sample_points(SceneClouds(toy_dir, 1024)[rows[0]['scene_id']], processor.num_points,
                           features=processor.point_features)
    assert torch.allclose(calls[0][0].cpu(), torch.from_numpy(expect))
    assert torch.equal(out['point_clouds'], calls[0])
    # advantages: (r - group mean) / (group std + 1e-4), group by group
    r = torch.tensor([float(c[0] % 7) if len(c) else 0.0 for c in
                      [ids[m.bool()].tolist() for ids, m in zip(out['completion_ids'], out['completion_mask'])]])
    groups = r.view(-1, G)
    expected = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).view(-1)
    assert torch.allclose(out['advantages'], expected, atol=1e-5)
    assert seen[0] == [x['scene_id'] for x in rows]
    # completions never contain encoder placeholders (sampling them would break the next forward's splice)
    cfg = trainer.model.config
    assert {cfg.scene_token_id, cfg.view_token_id, cfg.depth_token_id} <= set(trainer.generation_config.suppress_tokens)
    assert not (out['completion_ids'] == cfg.scene_token_id).any()
    # the KL reference is a frozen copy of the starting (SFT) policy
    assert 'ref_per_token_logps' in out
    ref = trainer.accelerator.unwrap_model(trainer.ref_model)
    assert not any(p.requires_grad for p in ref.parameters())


def test_lr_scales_give_matching_parameters_their_own_learning_rate(toy_dir, tmp_path):
    trainer, _ = make_trainer(toy_dir, tmp_path, lr_scales={r'self_attn\.(q|k)_proj': 30.0}, learning_rate=1e-4)
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    decay_of = {id(p): g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
    named = dict(trainer.model.named_parameters())
    fast = [n for n in named if '.self_attn.q_proj.' in n or '.self_attn.k_proj.' in n]
    assert fast and all(lr_of[id(named[n])] == pytest.approx(3e-3) for n in fast)
    slow = [n for n in named if n not in fast and named[n].requires_grad]
    assert slow and all(lr_of[id(named[n])] == pytest.approx(1e-4) for n in slow)
    # weight decay as trl's own grouping gives it (none on biases and norms)
    assert decay_of[id(named[next(n for n in fast if n.endswith('q_proj.weight'))])] == trainer.args.weight_decay
    assert decay_of[id(named[next(n for n in fast if n.endswith('q_proj.bias'))])] == 0.0
    assert len(lr_of) == sum(p.requires_grad for p in named.values())   # every trainable parameter, once


# -- perception_credit: 'box_mirror' --------------------------------------------------------------
SLOTS, SLOT_POINTS = 4, 8
SLOT_MODEL = {'num_points': 64, 'num_scene_tokens': 4, 'num_object_tokens': SLOTS, 'object_points': SLOT_POINTS,
              'object_refs': True}


def test_box_token_mask_covers_answer_boxes_only():
    o, c, a = 7, 8, 5
    ids = torch.tensor([[1, o, 2, c, a, 3, o, 4, 9, c, o, 6, c, 0],    # a box before <answer> is not the answer's
                        [1, 2, a, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]])   # no box at all
    mask = box_token_mask(ids, o, c, a)
    assert mask[0].nonzero().view(-1).tolist() == [6, 7, 8, 9, 10, 11, 12]
    assert not mask[1].any()


def test_per_reward_advantages_split_trl_advantage_by_hand():
    # two groups of G = 4; rewards format, perception (None for the second group: no GT box), semantic
    nan = float('nan')
    r = torch.tensor([[1, 0.6, 0.9], [1, 0.0, 0.8], [0, 0.2, 0.5], [1, 0.2, 0.9],
                      [1, nan, 0.7], [1, nan, 0.6], [1, nan, 0.9], [0, nan, 0.1]])
    w = torch.tensor([1.0, 2.0, 1.0])
    for scale in ('batch', 'group', 'none'):
        parts = per_reward_advantages(r, w, G, scale)
        total = torch.tensor([1 + 1.2 + 0.9, 1 + 0 + 0.8, 0 + 0.4 + 0.5, 1 + 0.4 + 0.9, 1.7, 1.6, 1.9, 0.1])
        mean = total.view(2, G).mean(1).repeat_interleave(G)
        std = {'batch': total.std().expand(8), 'group': total.view(2, G).std(1).repeat_interleave(G),
               'none': torch.full((8,), 1 - 1e-4)}[scale]   # 'none': trl does not divide
        trl_adv = (total - mean) / (std + 1e-4)
        assert torch.allclose(parts.sum(1), trl_adv, atol=1e-5), scale
        # perception part of the first group by hand: 2 x (IoU - mean IoU 0.25); none for the second group
        expect = 2 * (torch.tensor([0.6, 0.0, 0.2, 0.2]) - 0.25) / (std[:G] + 1e-4)
        assert torch.allclose(parts[:G, 1], expect, atol=1e-5)
        assert torch.all(parts[G:, 1] == 0)


def test_box_credit_puts_perception_advantage_on_box_tokens(toy_dir, tmp_path):
    # the rows box_mirror's slot term does not carry (boxes written as numbers, or none)
    rewards = {'names': ['format', 'perception'], 'weights': [1.0, 2.0], 'perception_credit': 'box_mirror'}
    trainer, processor = make_trainer(toy_dir, tmp_path, rewards=rewards, model=SLOT_MODEL, scale_rewards='batch')
    tok = processor.tokenizer
    ids = lambda text: tok(text, add_special_tokens=False)['input_ids']
    with_box = ids(f'{THINK_OPEN}a{THINK_CLOSE}{ANSWER_OPEN}here {BOX_OPEN}chair_1 <obj_3>{BOX_CLOSE}')
    no_box = ids(f'{THINK_OPEN}a{THINK_CLOSE}{ANSWER_OPEN}nothing')
    T = max(len(with_box), len(no_box))
    pad = lambda x: x + [tok.pad_token_id] * (T - len(x))
    completion_ids = torch.tensor([pad(with_box), pad(no_box), pad(with_box), pad(with_box)])
    completion_mask = (torch.arange(T)[None, :] < torch.tensor([len(with_box), len(no_box)] + [len(with_box)] * 2
                                                                )[:, None]).long()
    trainer._rewards_per_func = torch.tensor([[1.0, 0.8], [1.0, 0.0], [0.0, 0.3], [1.0, 0.1]])
    parts = per_reward_advantages(trainer._rewards_per_func, torch.tensor([1.0, 2.0]), G, 'batch')
    out = {'completion_ids': completion_ids, 'completion_mask': completion_mask, 'advantages': parts.sum(1)}
    adv = trainer.box_credit_advantages(out)
    assert adv.shape == (G, T)
    box = box_token_mask(completion_ids, *(tok.convert_tokens_to_ids(t) for t in (BOX_OPEN, BOX_CLOSE, ANSWER_OPEN)))
    assert box[0].sum() == len(ids(f'{BOX_OPEN}chair_1 <obj_3>{BOX_CLOSE}'))
    # box tokens: format + perception parts; every other token of a completion with a box: format only. Each of
    # the n_box box tokens gets n / n_box of the perception part, so that its token mean over the completion
    # (Eq. 5) is the whole part, as under sequence credit
    n_box, n = int(box[0].sum()), len(with_box)
    assert torch.allclose(adv[0][box[0]], (parts[0, 0] + n / n_box * parts[0, 1]).expand(n_box))
    assert torch.allclose(adv[0][~box[0]], parts[0, 0].expand(T - n_box))
    assert torch.allclose((adv[0] - parts[0, 0])[:n].mean(), parts[0, 1])
    # no box written: the whole (sequence-level) advantage on every token, unscaled
    assert torch.allclose(adv[1], parts[1].sum().expand(T))
    # a split that does not add up to trl's advantage is refused, not silently trained on
    out['advantages'] = out['advantages'] + 1.0
    with pytest.raises(RuntimeError, match='add up'):
        trainer.box_credit_advantages(out)


def test_box_credit_needs_perception_reward(toy_dir, tmp_path):
    with pytest.raises(ValueError, match='perception'):
        make_trainer(toy_dir, tmp_path, rewards={'names': ['format'], 'perception_credit': 'box_mirror'})
    for retired in ('tokens', 'box', 'box_total', 'box_expected'):   # the last three: retired in session 18
        with pytest.raises(ValueError, match='perception_credit must be one of'):
            make_trainer(toy_dir, tmp_path, rewards={'names': ['format', 'perception'], 'perception_credit': retired})


def test_mirror_slot_loss_by_hand():
    # the same position: slots with probability 0.5, 0.3, 0.1 (0.9 of the mass), IoU 1, 0, 0.5, mirror step 2
    p = torch.tensor([[0.5, 0.3, 0.1]])
    logps = p.log().requires_grad_(True)
    r = torch.tensor([[1.0, 0.0, 0.5]])
    loss = mirror_slot_loss(logps, r, 2.0)
    pi = p / 0.9                                               # the policy over the slots
    q = pi * torch.exp(2.0 * r)
    q = q / q.sum()                                            # its improved version
    assert loss.item() == pytest.approx((q * (q / pi).log()).sum().item(), rel=1e-5)   # KL(q || pi)
    loss.sum().backward()
    # the gradient on the slot logits is pi - q: towards the IoU-1 slot, away from the IoU-0 one, however small
    # the policy's probability of the better slot
    assert torch.allclose(logps.grad, pi - q, atol=1e-6)
    assert logps.grad[0, 0] < 0 < logps.grad[0, 1]
    # equal rewards: the policy is its own improvement, nothing to learn
    flat = mirror_slot_loss(p.log(), torch.full_like(r, 0.4), 2.0)
    assert flat.item() == pytest.approx(0.0, abs=1e-7)


def _slot_cloud(processor):
    """A prepared cloud by hand: scene rows, then slot 0 = the truth's box, slot 1 = it shifted 0.5 m in x
    (IoU 1/3), slot 2 far away (IoU 0), slot 3 empty."""
    n, width = processor.num_points, 3 + processor.point_features
    scene = torch.cat([torch.rand(n, width), torch.full((n, 2), -1.0)], 1)
    corners = torch.tensor([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=torch.float32)
    rows = torch.full((SLOTS * SLOT_POINTS, width + 2), -1.0)
    for k, lo in enumerate([(0.5, 0.5, 0.0), (1.0, 0.5, 0.0), (5.0, 5.0, 0.0)]):
        sl = slice(k * SLOT_POINTS, (k + 1) * SLOT_POINTS)
        rows[sl, :3] = corners + torch.tensor(lo)
        rows[sl, 3:width] = 0.5
        rows[sl, width] = k
    return torch.cat([scene, rows])


def test_slot_credit_rewards_every_slot_and_its_loss_gradient_matches_full_logits(toy_dir, tmp_path):
    import json

    torch.manual_seed(0)
    cfg = {'seed': 0, 'model': {'preset': 'tiny', **SLOT_MODEL},
           'data': {'dir': str(toy_dir), 'max_points': 1024, 'max_train': 4},
           'rewards': {'names': ['format', 'perception'], 'weights': [1.0, 2.0], 'perception_credit': 'box_mirror',
                       'slot_step': 3.0},
           'train': {'per_device_train_batch_size': G, 'num_generations': G, 'max_completion_length': 6,
                     'beta': 0.0, 'epsilon': EPS, 'loss_type': 'grpo', 'learning_rate': 1e-3, 'use_cpu': True,
                     'gradient_checkpointing': False, 'max_steps': 1, 'save_strategy': 'no', 'disable_tqdm': True,
                     'bf16': False, 'scale_rewards': 'batch', 'temperature': 0.7}}
    model, processor = load_model_and_processor(cfg['model'])
    trainer = build_grpo_trainer(cfg, tmp_path, model, processor)
    tok = processor.tokenizer
    ids = lambda text: tok(text, add_special_tokens=False)['input_ids']
    answer = lambda body: ids(f'{THINK_OPEN}a{THINK_CLOSE}{ANSWER_OPEN}here {body}</answer>')
    rows = [answer(f'{BOX_OPEN}chair_1 <obj_1>{BOX_CLOSE}'), answer('nothing'),
            answer(f'{BOX_OPEN}chair_1 <obj_0>{BOX_CLOSE}'), answer(f'{BOX_OPEN}chair_1 1 1 0.5 1 1 1{BOX_CLOSE}')]
    T = max(map(len, rows))
    completion_ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])
    completion_mask = (torch.arange(T)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    cloud = _slot_cloud(processor)
    trainer._scene_inputs = {'point_clouds': cloud[None].expand(G, -1, -1).contiguous()}
    trainer._batch_boxes = [json.dumps([{'ref': 'chair_1', 'center': [1, 1, 0.5], 'size': [1, 1, 1]}])] * G
    trainer._rewards_per_func = torch.tensor([[1.0, 1 / 3], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    parts = per_reward_advantages(trainer._rewards_per_func, torch.tensor([1.0, 2.0]), G, 'batch')
    out = {'completion_ids': completion_ids, 'completion_mask': completion_mask, 'advantages': parts.sum(1)}

    slots = trainer.slot_rewards(out)
    pos = slots['slot_positions']
    # exactly the <obj_k> tokens of rows 0 and 2 (not the numeric box of row 3, nothing in row 1)
    obj_ids = [tok.convert_tokens_to_ids(f'<obj_{k}>') for k in range(SLOTS)]
    assert pos.sum(1).tolist() == [1, 0, 1, 0]
    assert completion_ids[0, pos[0]].item() == obj_ids[1] and completion_ids[2, pos[2]].item() == obj_ids[0]
    # the reward with each slot in place, whichever was sampled: IoU 1, 1/3, 0, and 0 for the empty slot
    for i in (0, 2):
        assert torch.allclose(slots['slot_rewards'][i][pos[i]][0], torch.tensor([1.0, 1 / 3, 0.0, 0.0]), atol=0.02)
    # w_p over the row's one referring position: the mirror term is a divergence, trl's reward std does not scale it
    assert torch.allclose(slots['slot_scale'][[0, 2]], torch.tensor(2.0).expand(2))
    # those rows' sampled perception part is gone (the slot term carries it); row 3 keeps it on its box tokens
    out.update(slots)
    adv = trainer.box_credit_advantages(out, pos.any(1))
    assert torch.allclose(adv[0], parts[0, 0].expand(T)) and torch.allclose(adv[2], parts[2, 0].expand(T))
    assert torch.allclose(adv[1], parts[1].sum().expand(T))
    assert not torch.allclose(adv[3], parts[3, 0].expand(T))

    # the loss: trl's surrogate plus the mirror term; its gradient against one computed from the plain
    # forward's full logits (an independent path from the fused head and the decoder hook)
    model.eval()
    prompt = processor(questions=['Where is the chair?'] * G, point_clouds=[torch.rand(200, 6).numpy()] * G)
    input_ids = torch.cat([prompt['input_ids'], completion_ids], 1)
    attention = torch.cat([prompt['attention_mask'], completion_mask], 1)
    clouds = trainer._scene_inputs['point_clouds']
    logp = reference_logps(model, input_ids, attention, clouds, T)
    base = {'prompt_ids': prompt['input_ids'], 'prompt_mask': prompt['attention_mask'],
            'completion_ids': completion_ids, 'completion_mask': completion_mask, 'advantages': adv,
            'old_per_token_logps': logp, 'ref_per_token_logps': logp, 'point_clouds': clouds,
            'num_items_in_batch': completion_mask.sum()}
    params = [p for p in model.parameters() if p.requires_grad]
    with_term = trainer._compute_loss(model, {**base, **slots})
    without = trainer._compute_loss(model, base)
    grads = torch.autograd.grad(with_term - without, params, allow_unused=True)

    logits = model(input_ids=input_ids, attention_mask=attention, point_clouds=clouds).logits[:, -T - 1:-1]
    p = torch.softmax(logits.float() / 0.7, -1)[..., obj_ids][pos]                      # (2, SLOTS)
    pi = p / p.sum(-1, keepdim=True)
    q = pi.detach() * torch.exp(3.0 * slots['slot_rewards'][pos])
    q = q / q.sum(-1, keepdim=True)
    by_hand = 2.0 * (q * (q.log() - pi.log())).sum() / G
    expect = torch.autograd.grad(by_hand, params, allow_unused=True)
    flat = lambda gs: torch.cat([(g if g is not None else torch.zeros_like(q)).flatten() for g, q in zip(gs, params)])
    assert flat(expect).abs().max() > 1e-4                       # the term really reaches the weights
    assert torch.allclose(flat(grads), flat(expect), rtol=1e-3, atol=1e-6)
    # the logged probability of the best slot (slot 0, IoU 1, at both positions), renormalised over the slots
    p_best = (p[:, 0] / p.sum(-1)).mean().item()
    assert trainer._metrics['eval']['box_expected/slot_p_best'][-1] == pytest.approx(p_best, rel=1e-4)


def test_slot_credit_needs_object_refs(toy_dir, tmp_path):
    with pytest.raises(ValueError, match='object slots'):
        make_trainer(toy_dir, tmp_path, rewards={'names': ['format', 'perception'], 'perception_credit': 'box_mirror'})
