"""Object identifiers: boxes written as ``<box>ref <obj_k></box>`` (a proposal by its slot) in training targets,
and written back to the proposal's numbers when a completion is decoded."""

import numpy as np
import pytest
import torch

from r3d_ros.evaluation.metrics import box_iou_3d
from r3d_ros.model.tokenizer import OBJECT_REF, add_object_refs
from r3d_ros.output_format import Box, format_box, parse_completion
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


def test_a_matched_box_becomes_a_reference_and_decodes_to_the_proposal(refs_model, scene_cloud):
    model, proc = refs_model
    scene, _, rows = scene_cloud
    boxes = proc.object_boxes(rows)
    assert 3 <= len(boxes) <= SLOTS
    obj, slot, iou = _best_object(scene, boxes)
    assert iou >= 0.25
    ref = f'{obj.label}_{obj.id}'
    target = (f'<think>I find the {obj.label}.</think><answer>Here. '
              f'{format_box(Box(ref, tuple(obj.center), tuple(obj.size)))} and '
              f'{format_box(Box("lamp_9", (40.0, 40.0, 1.0), (0.3, 0.3, 0.5)))}</answer>')
    written = proc.refer_boxes(target, rows)
    # the matched box names its proposal; the box no proposal overlaps keeps its numbers
    assert f'<box>{ref} {OBJECT_REF.format(slot)}</box>' in written
    assert '<box>lamp_9 40.00 40.00 1.00 0.30 0.30 0.50</box>' in written
    back = parse_completion(proc.resolve_object_refs(written, rows))
    assert back.format_valid and [b.ref for b in back.boxes] == [ref, 'lamp_9']
    assert box_iou_3d(back.boxes[0], Box(ref, tuple(obj.center), tuple(obj.size))) == pytest.approx(iou, abs=0.02)
    # a reference to an empty slot is left as written: no box parses from it
    empty = next(k for k in range(SLOTS) if k not in boxes)
    assert not parse_completion(proc.resolve_object_refs(
        f'<think>a</think><answer><box>x_1 {OBJECT_REF.format(empty)}</box></answer>', rows)).boxes

    # the processor writes the reference into the labels, and batch_decode (given the clouds) writes it back
    batch = proc(questions=[f'Where is the {obj.label}?'], point_clouds=[scene_cloud[1]], targets=[target])
    labels = batch['labels'][0]
    ref_id = model.config.object_ref_token_ids[slot]
    assert (labels == ref_id).sum() == 1
    completion = labels[labels != -100]
    decoded = proc.batch_decode(completion[None], point_clouds=batch['point_clouds'])[0]
    assert decoded == proc.resolve_object_refs(written, rows)
    assert OBJECT_REF.format(slot) in proc.batch_decode(completion[None])[0]   # without clouds: as written


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
    text = f'<think>a</think><answer><box>chair_1 {OBJECT_REF.format(0)}</box></answer>'
    assert proc2.resolve_object_refs(text, rows) == proc.resolve_object_refs(text, rows) != text


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
