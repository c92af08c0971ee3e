"""Key-fact accuracy and consistency: is the one fact a question asks for right, and is the text true of its boxes?

A question's key fact (``QARecord.key_fact``, written by the generator) is the fact whose value answers it: a
colour, a count, yes/no, left/right, in front/behind, a height or distance in metres, an object (the larger one,
the nearest, the support, the one in between), the asked object's box, or the plan. A grounded answer carries its
facts with their values (``r3d_ros.grounding``), so checking it needs no text parsing:

* colour / count / yes-no / side / front: equal values;
* height / distance: within 10 % of the truth;
* an object: the answer's object is the true one (its box centre within :data:`POSITION_TOL` of the true object's
  centre, or 3D IoU >= 0.25 with it);
* box (grounding): the answer's first box centre within :data:`POSITION_TOL` of the truth;
* plan: as many steps as the reference, each with the same action, the same object and a position within
  :data:`PLAN_TOL`.

Consistency re-derives every fact of a published answer from the object records it returned (the same
functions, on the records as published) and checks that each fact's text appears in the answer; 1.0 means
nothing in the text disagrees with the boxes and records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from r3d_ros.evaluation.metrics import box_iou_3d, plan_step_accuracy
from r3d_ros.output_format import Box

POSITION_TOL = 0.25
PLAN_TOL = 0.5
RELATIVE_TOL = 0.10
_EQUAL = ('color', 'count', 'exists', 'side', 'front')
_METRIC = ('height', 'distance')
_OBJECT = ('larger', 'nearest', 'support', 'between')


def _box(d: Mapping | Box | None) -> Box | None:
    if d is None:
        return None
    if isinstance(d, Box):
        return d
    return Box(str(d.get('ref', d.get('id', ''))), tuple(map(float, d['center'])), tuple(map(float, d['size'])))


def same_object(pred: Mapping | Box | None, truth: Mapping | Box | None) -> bool:
    """The predicted object (a record or box) is the true one: centres within POSITION_TOL, or IoU >= 0.25."""
    p, t = _box(pred), _box(truth)
    if p is None or t is None:
        return False
    close = float(np.linalg.norm(np.subtract(p.center, t.center))) <= POSITION_TOL
    return close or box_iou_3d(p, t) >= 0.25


def key_fact_correct(key: Mapping, answer: Mapping, truth_objects: Sequence[Mapping],
                     truth_plan: Sequence[Mapping] = ()) -> bool | None:
    """Whether ``answer`` (the reasoner's answer dict: ``facts``, ``boxes``, ``plan``, ``objects``, ``status``)
    states ``key`` right. None when the question has no key fact. A non-ok answer is wrong."""
    name = (key or {}).get('fact')
    if not name:
        return None
    if answer.get('status', 'ok') != 'ok':
        return False
    truth = {o['ref']: o for o in truth_objects}
    records = {o['id']: o for o in answer.get('objects') or []}
    if name == 'box':
        boxes = answer.get('boxes') or []
        return bool(boxes) and same_object(boxes[0], truth.get(key['value']))
    if name == 'plan':
        ref, pred = list(truth_plan), list(answer.get('plan') or [])
        if not ref or len(pred) != len(ref):
            return False
        return plan_accuracy(pred, ref, records, truth) == 1.0
    fact = next((f for f in answer.get('facts') or [] if f.get('fact') == name), None)
    if fact is None:
        return False
    got, want = fact.get('value'), key.get('value')
    if name in _EQUAL:
        return got == want
    if name in _METRIC:
        return abs(float(got) - float(want)) <= RELATIVE_TOL * max(abs(float(want)), 1e-6)
    if name in _OBJECT:
        return same_object(records.get(got), truth.get(want))
    return got == want


def plan_accuracy(pred: Sequence, ref: Sequence[Mapping], records: Mapping[str, Mapping],
                  truth: Mapping[str, Mapping]) -> float:
    """Plan-step accuracy with targets compared as objects (a record of the map vs a ground-truth object)."""
    def same(pred_target: str, ref_target: str) -> bool:
        if pred_target == ref_target:
            return True
        return same_object(records.get(pred_target), truth.get(ref_target))
    return plan_step_accuracy(pred, ref, PLAN_TOL, same_target=same)


def consistency(answer: Mapping, map_points: np.ndarray | None = None) -> float | None:
    """Share of the answer's facts whose value, recomputed from the answer's own records, is the one stated and
    whose text is in the published answer or reasoning. None for an answer without facts. An approach point
    depends on the map's free space: with ``map_points`` it is recomputed too; without, one the plan walks to
    is checked against that step and any other only for its text."""
    from r3d_ros import grounding
    from r3d_ros.scene_objects import ObjectRecord

    facts = answer.get('facts') or []
    if not facts:
        return None
    scene = grounding.Scene.of([ObjectRecord.from_dict(o) for o in answer.get('objects') or []], map_points)
    text = f"{answer.get('think', '')} {answer.get('answer_text', '')}"
    walks = {s['target']: [round(float(v), 2) for v in s['position']]
             for s in answer.get('plan') or [] if s.get('action') == 'navigate_to'}
    good = 0
    for f in facts:
        if f['fact'] == 'approach' and map_points is None:  # free space was checked on the map's points
            walk = walks.get(f['args'][0], f['value'])
            good += int(walk == f['value'] and f['text'] in text)
            continue
        try:
            value_text, value = grounding.evaluate_fact(scene, f['fact'], [_as_arg(a, scene) for a in f['args']])
        except grounding.GroundingError:
            continue
        good += int(value == f['value'] and value_text == f['text'] and value_text in text)
    return good / len(facts)


def _as_arg(arg: str, scene) -> str:
    return f'<{arg}>' if arg in scene.records else arg
