"""Object identifiers: objects written as ``<obj_k>`` (a proposal by its slot) in training targets, and filled
in from the proposal's object record when a completion is grounded."""

import numpy as np
import pytest
import torch

from r3d_ros.evaluation.metrics import box_iou_3d
from r3d_ros.model.tokenizer import OBJECT_REF, add_object_refs
from r3d_ros.output_format import Box, parse_completion
from r3d_ros.scenes.synthetic import generate_scene

SLOTS = 16


@pytest.fixture(scope='module')
def refs_model():
    from training.modeling import load_model_and_processor

    return load_model_and_processor({'preset': 'tiny', 'num_points': 256, 'num_scene_tokens': 8,
                                     'num_object_tokens': SLOTS, 'object_points': 16, 'object_refs': True})


@pytest.fixture(scope='module')
def scene_cloud(refs_model):
    _, proc = refs_model
    scene = generate_scene(9030, num_objects=(5, 8))
    cloud = np.concatenate([scene.points, scene.colors.astype(np.float32) / 255.0], axis=1)
    return scene, cloud, proc.cloud_tensor([cloud])[0]


def _best_object(scene, boxes):
    """The scene object best covered by some proposal: (object, slot, IoU)."""
    best = (None, None, 0.0)
    for obj in scene.objects:
        truth = Box('t', tuple(obj.center), tuple(obj.size))
        for k, (c, s) in boxes.items():
            iou = box_iou_3d(truth, Box('p', tuple(c), tuple(s)))
            if iou > best[2]:
                best = (obj, k, iou)
    return best


def test_identifier_tokens_are_single_special_tokens():
    from r3d_ros.model.presets import tiny_tokenizer

    tok = tiny_tokenizer()
    before = len(tok)
    ids = add_object_refs(tok, 4)
    assert len(set(ids)) == 4 and len(tok) == before + 4 and min(ids) >= before
    assert add_object_refs(tok, 4) == ids and len(tok) == before + 4          # idempotent
    got = tok('<box>desk_3 <obj_2></box>', add_special_tokens=False)['input_ids']
    assert ids[2] in got and tok.decode([ids[2]]) == OBJECT_REF.format(2)


def test_a_matched_box_becomes_a_reference_and_grounds_to_the_proposal(refs_model, scene_cloud):
    model, proc = refs_model
    scene, _, rows = scene_cloud
    boxes = proc.object_boxes(rows)
    assert 3 <= len(boxes) <= SLOTS
    obj, slot, iou = _best_object(scene, boxes)
    assert iou >= 0.25
    truth = {'ref': obj.ref, 'center': list(obj.center), 'size': list(obj.size)}
    far = {'ref': 'lamp_9', 'center': [40.0, 40.0, 1.0], 'size': [0.3, 0.3, 0.5]}
    target = (f'<think>I find the {obj.label} <{obj.ref}>.</think><answer>Here. <box>{obj.label} <{obj.ref}></box>'
              ' and <box>lamp <lamp_9></box></answer>')
    written = proc.refer_objects(target, rows, [truth, far])
    # the matched object names its proposal's slot; the one no proposal overlaps keeps its name
    assert f'<box>{obj.label} {OBJECT_REF.format(slot)}</box>' in written and '<lamp_9>' in written
    # grounding writes the slot's box in; a reference the map has no record of is refused, never guessed
    grounded = proc.ground(written, rows)
    assert not grounded.ok and any('lamp_9' in e for e in grounded.errors)
    grounded = proc.ground(written.replace(' and <box>lamp <lamp_9></box>', ''), rows)
    assert grounded.ok, grounded.errors
    back = parse_completion(grounded.text)
    assert back.format_valid and [b.ref for b in back.boxes] == [f'obj_{slot}']
    assert box_iou_3d(back.boxes[0], Box('t', tuple(obj.center), tuple(obj.size))) == pytest.approx(iou, abs=0.02)
    empty = next(k for k in range(SLOTS) if k not in boxes)
    assert not proc.ground(f'<think>a</think><answer><box>x {OBJECT_REF.format(empty)}</box></answer>', rows).ok

    # the processor writes the reference into the labels; batch_decode keeps it as written
    batch = proc(questions=[f'Where is the {obj.label}?'], point_clouds=[scene_cloud[1]], targets=[target],
                 target_objects=[[truth, far]])
    labels = batch['labels'][0]
    assert (labels == model.config.object_ref_token_ids[slot]).sum() == 2
    completion = labels[labels != -100]
    assert OBJECT_REF.format(slot) in proc.batch_decode(completion[None])[0]


def test_identifier_embedding_is_added_to_filled_slots_only(refs_model, scene_cloud):
    model, proc = refs_model
    _, cloud, rows = scene_cloud
    batch = proc(questions=['Where is the desk?'], point_clouds=[cloud])
    scene_pos = (batch['input_ids'][0] == model.config.scene_token_id).nonzero()[:, 0]
    model.eval()
    with torch.no_grad():
        with_refs = model.embed(batch['input_ids'], batch['point_clouds'])[0, scene_pos]
        ids = model.config.object_ref_token_ids
        model.config.object_ref_token_ids = []
        try:
            without = model.embed(batch['input_ids'], batch['point_clouds'])[0, scene_pos]
        finally:
            model.config.object_ref_token_ids = ids
        table = model.get_input_embeddings().weight
    diff = with_refs - without
    start = model.config.num_scene_tokens
    assert diff[:start].abs().max() == 0                                   # FPS scene tokens untouched
    filled = sorted(proc.object_boxes(rows))
    for k in range(SLOTS):
        expected = table[ids[k]] if k in filled else torch.zeros_like(table[0])
        assert torch.allclose(diff[start + k], expected, atol=1e-6), k


def test_references_survive_save_and_load(refs_model, scene_cloud, tmp_path):
    from r3d_ros.model import R3DForConditionalGeneration, R3DProcessor

    model, proc = refs_model
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    again, proc2 = R3DForConditionalGeneration.from_pretrained(tmp_path), R3DProcessor.from_pretrained(tmp_path)
    assert again.config.object_ref_token_ids == model.config.object_ref_token_ids and again.config.use_object_refs
    assert proc2.object_refs and len(proc2.tokenizer) == len(proc.tokenizer)
    rows = scene_cloud[2]
    text = f'<think>a</think><answer><box>chair {OBJECT_REF.format(min(proc.object_boxes(rows)))}</box></answer>'
    assert proc2.ground(text, rows).text == proc.ground(text, rows).text != text


def test_binding_stats_by_hand():
    from training.probe import slot_choice_stats

    # three referring positions over four slots holding classes chair, chair, table, (empty)
    classes = torch.tensor([[0, 0, 1, -1]] * 3)
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.2, 0.1],      # target slot 0: picks slot 1, same class
                                     [0.1, 0.1, 0.7, 0.1],      # target slot 2 (the only table): right
                                     [0.5, 0.1, 0.3, 0.1]]))    # target slot 2: picks a chair
    stats = slot_choice_stats(logits, torch.tensor([0, 2, 2]), classes)
    assert stats['positions'] == 3 and stats['slot_argmax_right'] == 1 and stats['slot_argmax_same_class'] == 2
    assert stats['p_right'] == pytest.approx(0.1 + 0.7 + 0.3)
    assert stats['p_right_class'] == pytest.approx(0.7 + 0.7 + 0.3)
    assert stats['class_unique'] == 2 and stats['right_when_class_unique'] == 1
