"""Slot pointer: decoder states score the object slots and raise the logit of the matched slot's ``<obj_k>``
(``r3d_ros.model.modeling_r3d.SlotPointer``), on every path to the logits: the forward, generate's decode steps
(which carry no point cloud), trl's fused head (``model.base_model``) and a saved checkpoint."""

import numpy as np
import pytest
import torch

from r3d_ros.model.modeling_r3d import SlotPointer
from r3d_ros.scenes.synthetic import generate_scene

SLOTS = 16


@pytest.fixture(scope='module')
def pointer_model():
    from training.modeling import load_model_and_processor

    model, proc = load_model_and_processor({'preset': 'tiny', 'num_points': 256, 'num_scene_tokens': 8,
                                            'num_object_tokens': SLOTS, 'object_points': 16, 'object_refs': True,
                                            'object_pointer': 16})
    with torch.no_grad():  # a gate that is clearly open, so the pointer's part of the logits is not small
        model.object_pointer.gate.bias.fill_(3.0)
    return model.eval(), proc


@pytest.fixture(scope='module')
def scene_batch(pointer_model):
    _, proc = pointer_model
    scene = generate_scene(9030, num_objects=(5, 8))
    cloud = np.concatenate([scene.points, scene.colors.astype(np.float32) / 255.0], axis=1)
    return proc(questions=['Where is the chair?'], point_clouds=[cloud], return_tensors='pt')


def test_pointer_by_hand():
    torch.manual_seed(0)
    hidden, size, k, classes = 12, 4, 5, 3
    head = SlotPointer(hidden, size, classes)
    states, slots = torch.randn(2, 3, hidden), torch.randn(2, k, hidden)
    slot_classes = torch.randn(2, k, classes).softmax(-1)
    valid = torch.tensor([[True, True, False, True, True], [False] * k])
    # LM-head rows of the identifiers that share a large common part (as they do after SFT)
    rows = torch.randn(1, hidden) + 0.3 * torch.randn(k, hidden)
    out, head_scores = head(states, slots, valid, rows, slot_classes)
    q, key = states @ head.query.weight.T, slots @ head.key.weight.T
    asked = (states @ head.class_query.weight.T + head.class_query.bias).softmax(-1)
    scores = torch.einsum('btd,bkd->btk', q, key) / size ** 0.5 \
        + torch.log(torch.einsum('btc,bkc->btk', asked, slot_classes) + 1e-6)
    attn = torch.where(valid[:, None, :], scores, torch.tensor(-torch.inf)).softmax(-1)
    gate = torch.nn.functional.softplus(states @ head.gate.weight.T + head.gate.bias)
    # scene 0: each slot's <obj_k> logit (rows @ state) rises by gate * its attention (the other identifiers'
    # logits do not move with it), the empty slot's by 0
    torch.testing.assert_close((out - states)[0] @ rows.T, gate[0] * attn[0], atol=1e-3, rtol=1e-3)
    assert ((out - states)[0] @ rows.T)[:, 2].abs().max() < 1e-3
    # scene 1 has no proposal: nothing to point at
    torch.testing.assert_close(out[1], states[1])


def test_class_term_points_at_the_slots_of_the_asked_class():
    torch.manual_seed(1)
    head = SlotPointer(8, 4, 3)
    with torch.no_grad():
        head.query.weight.zero_()                      # the class term alone
        head.class_query.weight.zero_()
        head.class_query.bias.copy_(torch.tensor([0.0, 8.0, 0.0]))   # every state asks for class 1
    slot_classes = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 1]]), 3).float()
    scores = head.scores(torch.randn(1, 2, 8), torch.randn(1, 4, 8), slot_classes)
    assert set(scores[0, 0].topk(2).indices.tolist()) == {1, 3}
    assert scores[0, 0, 1] - scores[0, 0, 0] > 5


def test_decode_steps_keep_the_scene_slots(pointer_model, scene_batch):
    model, _ = pointer_model
    with torch.no_grad():
        out = model.generate(**scene_batch, max_new_tokens=6, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
        assert model._pointer_slots[1].sum() >= 3    # the scene's proposals fill several slots
        seq = out.sequences
        full = model(input_ids=seq, attention_mask=torch.ones_like(seq),
                     point_clouds=scene_batch['point_clouds']).logits
        n = scene_batch['input_ids'].shape[1]
        for i, scores in enumerate(out.scores):
            torch.testing.assert_close(scores[0], full[0, n - 1 + i], atol=1e-4, rtol=1e-4)
        # without the slots (what a decode step would see if they were dropped) the <obj_k> logits differ
        embeds = model.embed(seq, scene_batch['point_clouds'])
        model._pointer_slots = None
        plain = model.language_model(inputs_embeds=embeds).logits
    ids = model.config.object_ref_token_ids
    delta = (plain[0, n:] - full[0, n:]).abs()
    assert delta[:, ids].max() > 0.1
    others = [i for i in range(plain.size(-1)) if i not in set(ids)]
    assert delta[:, ids].mean() > delta[:, others].mean()   # it is the <obj_k> logits the pointer moves


def test_trl_fused_head_path_and_text_only_calls(pointer_model, scene_batch):
    from training.modeling import enable_trl_fused_head

    model, _ = pointer_model
    enable_trl_fused_head(model)
    with torch.no_grad():
        logits = model(**scene_batch).logits
        states = model.base_model(**scene_batch).last_hidden_state
        torch.testing.assert_close(model.get_output_embeddings()(states), logits, atol=1e-5, rtol=1e-5)
        # a sequence without a scene afterwards is scored without the previous scene's slots
        text = scene_batch['input_ids'][:, -4:]
        model.base_model(input_ids=text)
        assert model._pointer_slots is None
        model(**scene_batch)
        model(input_ids=text)
        assert model._pointer_slots is None


def test_pointer_survives_save_and_load(pointer_model, scene_batch, tmp_path):
    from r3d_ros.model import R3DForConditionalGeneration

    model, _ = pointer_model
    model.save_pretrained(str(tmp_path))
    loaded = R3DForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    assert loaded.config.object_pointer_size == 16 and loaded.config.use_object_pointer
    with torch.no_grad():
        torch.testing.assert_close(loaded(**scene_batch).logits, model(**scene_batch).logits)


def test_lora_keeps_the_pointer_trainable(pointer_model):
    import copy

    from r3d_ros.model.lora import apply_lora

    model, _ = pointer_model
    peft_model = apply_lora(copy.deepcopy(model))
    pointer = [p.requires_grad for n, p in peft_model.named_parameters() if '.object_pointer.' in n]
    assert pointer and all(pointer)


def test_slot_matching_loss_by_hand():
    from r3d_ros.model.modeling_r3d import slot_pointer_loss

    refs = [50, 51, 52]                       # <obj_0..2>
    scores = torch.randn(2, 5, 3)
    labels = torch.tensor([[-100, 7, 51, 8, 9],       # position 1 predicts <obj_1>
                           [-100, -100, 7, 8, 52]])   # position 3 predicts <obj_2>
    loss, counts = slot_pointer_loss(scores, labels, refs)
    by_hand = -(scores[0, 1].log_softmax(-1)[1] + scores[1, 3].log_softmax(-1)[2]) / 2
    torch.testing.assert_close(loss, by_hand)
    assert counts == {'positions': 2, 'right': int(scores[0, 1].argmax() == 1) + int(scores[1, 3].argmax() == 2)}
    none, counts = slot_pointer_loss(scores, torch.full((2, 5), -100), refs)
    assert float(none) == 0.0 and counts['positions'] == 0


def test_training_forward_keeps_the_scores_for_the_matching_loss(pointer_model, scene_batch):
    model, _ = pointer_model
    model.train()
    try:
        model(**scene_batch)
        assert model.object_pointer_scores.shape == (*scene_batch['input_ids'].shape, SLOTS)
    finally:
        model.eval()
        model.object_pointer_scores = None


def test_slots_of_another_batch_are_refused(pointer_model, scene_batch):
    model, _ = pointer_model
    with torch.no_grad():
        model.embed(scene_batch['input_ids'], scene_batch['point_clouds'])
        slots, valid, classes = model._pointer_slots
        model._pointer_slots = (slots.repeat(2, 1, 1), valid.repeat(2, 1), classes.repeat(2, 1, 1))
        with pytest.raises(RuntimeError, match='2 scenes for 1 sequences'):
            model.get_decoder()(inputs_embeds=torch.zeros(1, 3, model.config.text_config.hidden_size))
    model._pointer_slots = None
