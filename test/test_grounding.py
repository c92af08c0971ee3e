"""Grounded answers: every fact the robot is told is read off the map's object records.

The scene is the issue's own (a red table at (1.5, 0, 0.375), a blue chair, a green lamp on the table), built
as the model's object slots would hold it (coloured points per slot), so the records come through the same
code the reasoner runs: colour from the points, class from the class head's probabilities, relations from
the boxes.
"""

import numpy as np
import pytest

from r3d_ros import grounding as G
from r3d_ros.evaluation.key_facts import consistency, key_fact_correct
from r3d_ros.output_format import parse_completion
from r3d_ros.pipeline import STATUS_INVALID_PLAN, STATUS_OK, STATUS_UNGROUNDED, published_status
from r3d_ros.scene_objects import color_name, records_from_slots

CLASSES = ('table', 'chair', 'lamp', 'sofa')


def _slot(center, size, rgb, n=600, seed=0):
    """Points filling a box (surfaces and inside), with colour ``rgb`` (0..255) and a little shading."""
    rng = np.random.default_rng(seed)
    xyz = np.asarray(center) + (rng.random((n, 3)) - 0.5) * np.asarray(size)
    xyz[:8] = np.asarray(center) + np.array([[sx, sy, sz] for sx in (-.5, .5) for sy in (-.5, .5)
                                             for sz in (-.5, .5)]) * np.asarray(size)  # the box's corners
    shade = rng.uniform(0.85, 1.0, (n, 1))
    return np.concatenate([xyz, np.clip(np.asarray(rgb) / 255.0 * shade, 0, 1)], 1)


def _room(extra_chair: bool = False):
    slots = {0: _slot((1.5, 0.0, 0.375), (1.2, 0.8, 0.75), (200, 30, 30)),          # red table
             1: _slot((0.2, 1.2, 0.45), (0.5, 0.5, 0.9), (30, 60, 200), seed=1),     # blue chair
             2: _slot((1.5, 0.1, 0.95), (0.2, 0.2, 0.4), (40, 170, 50), seed=2)}     # green lamp on the table
    labels = [0, 1, 2]
    if extra_chair:
        slots[3] = _slot((-1.0, -1.0, 0.45), (0.5, 0.5, 0.9), (30, 60, 200), seed=3)
        labels.append(1)
    probs = np.full((max(slots) + 1, len(CLASSES)), 0.02)
    probs[np.arange(len(labels)), labels] = 0.94
    records = records_from_slots(slots, probs, CLASSES)
    floor = np.stack(np.meshgrid(np.linspace(-3, 3, 61), np.linspace(-3, 3, 61), [0.0]), -1).reshape(-1, 3)
    points = np.concatenate([floor, *(s[:, :3] for s in slots.values())])
    return records, G.Scene.of(records, points, classes=CLASSES), points


def test_records_read_colour_class_and_support_off_the_points():
    records, _, _ = _room()
    by_id = {r.id: r for r in records}
    assert [(r.label, r.color) for r in records] == [('table', 'red'), ('chair', 'blue'), ('lamp', 'green')]
    assert np.allclose(by_id['obj_0'].center, (1.5, 0.0, 0.375), atol=1e-6)
    assert by_id['obj_2'].related('on') == ['obj_0'] and by_id['obj_0'].related('under') == ['obj_2']
    assert by_id['obj_1'].related('on') == []
    assert color_name(np.array([[250, 250, 245]] * 5)) == 'white' and color_name(np.zeros((5, 3))) == 'black'


def test_a_count_is_the_number_of_matching_records():
    _, scene, _ = _room(extra_chair=True)
    g = G.ground('<think>a</think><answer>There [count chair]. [exists lamp], [exists sofa].</answer>', scene)
    assert g.ok and 'There are 2 chairs. Yes, No.' in g.text
    assert [(f['fact'], f['value']) for f in g.facts] == [('count', 2), ('exists', 'yes'), ('exists', 'no')]
    # a class the map's objects are never classified into cannot be counted: refused, not "0"
    assert not G.ground('<think>a</think><answer>There [count dragon].</answer>', scene).ok


def test_text_and_box_agree_and_the_class_word_is_the_records():
    _, scene, _ = _room()
    g = G.ground('<think>The chair <obj_0> is at [center <obj_0>].</think><answer>It is [color <obj_0>], '
                 '[height <obj_0>] tall. <box>chair <obj_0></box></answer>', scene)
    assert g.ok, g.errors
    p = parse_completion(g.text)
    assert p.format_valid and p.think == 'The table (obj_0) is at (1.50, 0.00, 0.38).'
    assert p.answer_text.startswith('It is red, 0.8 m tall.')
    assert [b.ref for b in p.boxes] == ['obj_0']
    assert np.allclose(p.boxes[0].center, (1.5, 0.0, 0.38), atol=0.006)   # the same numbers as the text
    assert np.allclose(p.boxes[0].size, (1.2, 0.8, 0.75), atol=0.006)


def test_a_wrong_reference_or_stray_markup_is_rejected():
    records, scene, points = _room()
    g = G.ground('<think>a</think><answer>It is [color <obj_7>]. <box>lamp <obj_7></box></answer>', scene)
    assert not g.ok and any('obj_7' in e for e in g.errors)
    assert published_status(g, records, points)[0] == STATUS_UNGROUNDED
    g = G.ground('<think>a</think><answer>It is [colr <obj_0>] and [color <obj_0></answer>', scene)
    assert not g.ok and published_status(g, records, points)[0] == STATUS_UNGROUNDED
    g = G.ground('<think>a</think><answer>Go. <plan><step>navigate_to shelf <obj_9></step></plan></answer>', scene)
    status, message = published_status(g, records, points)
    assert status == STATUS_INVALID_PLAN and 'obj_9' in message


def test_an_answer_cut_off_by_the_token_budget_is_refused_not_published_half():
    records, scene, points = _room()
    whole = G.ground('<think>I look.</think><answer>The table <obj_0> is [color <obj_0>].</answer>', scene)
    assert published_status(whole, records, points)[0] == STATUS_OK
    cut = G.ground('<think>I look.</think><answer>The table <obj_0> is [color <obj_0>]. Its', scene)
    assert cut.ok   # every reference and fact it has grounds, but the answer never ends
    status, message = published_status(cut, records, points)
    assert status == STATUS_UNGROUNDED and 'incomplete' in message


def test_plan_positions_are_computed_and_validate():
    records, scene, points = _room()
    text = ('<think>a</think><answer>Done. <plan><step>navigate_to lamp <obj_2></step><step>pick lamp <obj_2></step>'
            '<step>navigate_to chair <obj_1></step><step>place chair <obj_1></step></plan></answer>')
    g = G.ground(text, scene)
    assert g.ok and published_status(g, records, points) == (STATUS_OK, '')
    walk, pick, walk2, place = parse_completion(g.text).plan
    assert [s.target for s in (walk, pick, walk2, place)] == ['obj_2', 'obj_2', 'obj_1', 'obj_1']
    # the lamp is reached beside the table it stands on, in free space, on the floor
    assert walk.position[2] == 0.0 and G._free(scene, np.asarray(walk.position))
    t = scene.get('obj_0')
    gap = np.maximum(np.abs(np.asarray(walk.position[:2]) - t.center[:2]) - t.size[:2] / 2, 0)
    assert 0.3 <= float(np.linalg.norm(gap)) <= 0.8
    assert np.allclose(pick.position, (1.5, 0.1, 0.95), atol=0.006)
    assert np.allclose(place.position, (0.2, 1.2, 0.9 + 0.2), atol=0.006)   # on the chair's top, lamp upright


def test_key_fact_and_consistency_by_hand():
    records, scene, points = _room()
    g = G.ground('<think>The lamp <obj_2> is [color <obj_2>].</think><answer>The lamp <obj_2> is [color <obj_2>] '
                 'and [height <obj_2>] tall, [distance <obj_2> <obj_1>] from the chair <obj_1>.</answer>', scene)
    p = parse_completion(g.text)
    answer = {'status': 'ok', 'facts': g.facts, 'objects': [r.to_dict() for r in records], 'think': p.think,
              'answer_text': p.answer_text}
    truth = [{'ref': 'lamp_5', 'center': [1.5, 0.1, 0.95], 'size': [0.2, 0.2, 0.4]},
             {'ref': 'chair_1', 'center': [0.2, 1.2, 0.45], 'size': [0.5, 0.5, 0.9]}]
    assert key_fact_correct({'fact': 'color', 'args': ['lamp_5'], 'value': 'green'}, answer, truth)
    assert not key_fact_correct({'fact': 'color', 'args': ['lamp_5'], 'value': 'blue'}, answer, truth)
    assert key_fact_correct({'fact': 'height', 'args': ['lamp_5'], 'value': 0.42}, answer, truth)     # 5 % off
    assert not key_fact_correct({'fact': 'height', 'args': ['lamp_5'], 'value': 0.5}, answer, truth)  # 20 % off
    assert not key_fact_correct({'fact': 'color', 'args': ['lamp_5'], 'value': 'green'},
                                {**answer, 'status': STATUS_UNGROUNDED}, truth)                # not published
    assert consistency(answer, points) == 1.0
    # a text that says anything else than the records published with it is caught: both colour facts
    objects = [{**o, 'color': 'blue'} if o['id'] == 'obj_2' else o for o in answer['objects']]
    assert consistency({**answer, 'objects': objects}, points) == pytest.approx(2 / 4)
    assert consistency({**answer, 'answer_text': p.answer_text.replace('0.4 m', '0.9 m')}, points) == \
        pytest.approx(3 / 4)


def test_a_count_counts_the_class_the_question_asks_about():
    _, scene, _ = _room(extra_chair=True)
    text = '<think>a</think><answer>There [count lamp]. [exists sofa].</answer>'
    assert G.asked_classes('How many chairs are in the room?', CLASSES) == ['chair']
    g = G.ground(text, scene, question='How many chairs are in the room?')
    assert g.ok and [(f['fact'], f['args'], f['value']) for f in g.facts] == [('count', ['chair'], 2),
                                                                              ('exists', ['chair'], 'yes')]
    # a question naming several classes (or none) leaves the model's class as written
    g = G.ground(text, scene, question='Is the lamp on the chair?')
    assert [f['args'] for f in g.facts] == [['lamp'], ['sofa']]
