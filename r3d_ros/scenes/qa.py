"""Questions, answers and true chains of thought for a scene, derived from its ground-truth geometry.

Tasks (:data:`r3d_ros.scenes.types.TASKS`): attribute (colour, height, which is larger), counting,
existence, spatial (left/right and front/behind from a stated viewpoint, nearest object, what an object
stands on, what is between two objects), distance, grounding (box in metres) and planning (bring / put
into / inspect, as ordered steps from :data:`r3d_ros.output_format.ACTIONS`).

Every record's chain of thought is a sequence of explicit steps ("First, … Next, … Then, … Finally, …")
whose facts are read off the scene (object positions, colours, sizes) and whose last step names the
target; the completion is written with :func:`r3d_ros.output_format.format_completion`.

Conventions the questions rely on:
* objects are named so that the name is unique in the scene: ``the chair`` when there is one chair,
  ``the red chair`` when the colour tells the chairs apart; objects that cannot be named uniquely are
  not asked about (but are still counted);
* distances are between box centres, on the floor plane (x, y), in metres rounded to 0.1;
  heights are box heights rounded to 0.1 m; "larger" compares box volumes;
* left/right/front/behind are judged from the stated viewpoint, in the floor plane.
Values too close to a rounding boundary or a relation boundary are not asked, so answers are unambiguous.
"""

from __future__ import annotations

import math

import numpy as np

from r3d_ros.output_format import PlanStep, format_completion
from r3d_ros.scenes import types as T
from r3d_ros.scenes.synthetic import CATEGORIES
from r3d_ros.scenes.types import QARecord, Scene, SceneObject

DEFAULT_PER_TASK = 3
_ORDINALS = ('First', 'Next', 'Then', 'After that', 'Finally')


# ---------------------------------------------------------------------------------------------- naming

def label_text(label: str) -> str:
    return label.replace('_', ' ')


def plural(label: str) -> str:
    word = label_text(label)
    if word.endswith(('s', 'x', 'sh', 'ch')):
        return word + 'es'
    if word == 'shelf':
        return 'shelves'
    return word + 's'


def name(scene: Scene, obj: SceneObject) -> str | None:
    """Unique name of ``obj`` in ``scene`` ('chair' or 'red chair'), or None when it cannot be named."""
    same = scene.objects_with_label(obj.label)
    if len(same) == 1:
        return label_text(obj.label)
    if sum(o.color_name == obj.color_name for o in same) == 1:
        return f'{obj.color_name} {label_text(obj.label)}'
    return None


def _xyz(v) -> str:
    return '(' + ', '.join(f'{float(c):.2f}' for c in v) + ')'


def _steps(sentences: list[str]) -> str:
    """Join step sentences with explicit ordinals; the last one always starts with 'Finally'."""
    out = []
    for i, s in enumerate(sentences):
        if i == len(sentences) - 1:
            word = 'Finally'
        else:
            word = _ORDINALS[min(i, len(_ORDINALS) - 2)]
        out.append(f'{word}, {s}')
    return ' '.join(out)


def _box_dict(obj: SceneObject) -> dict:
    return {'ref': obj.ref, 'center': [round(float(v), 2) for v in obj.center],
            'size': [round(float(v), 2) for v in obj.size]}


def _record(scene: Scene, task: str, question: str, steps: list[str], answer: str, short: str,
            boxes: list[SceneObject] = (), plan: list[PlanStep] = ()) -> QARecord:
    think = _steps(steps)
    cot = format_completion(think, answer, [o.box for o in boxes], list(plan))
    return QARecord(scene_id=scene.scene_id, question=question, cot=cot, answer=answer, task=task, think=think,
                    boxes=[_box_dict(o) for o in boxes],
                    plan=[{'action': s.action, 'target': s.target,
                           'position': [round(float(v), 2) for v in s.position]} for s in plan],
                    short_answer=short)


def _near_boundary(value: float, step: float = 0.1, margin: float = 0.015) -> bool:
    frac = (value / step) % 1.0
    return abs(frac - 0.5) < margin / step


def _named(scene: Scene) -> list[tuple[SceneObject, str]]:
    return [(o, n) for o in scene.objects if (n := name(scene, o)) is not None]


def _planar(a: SceneObject, b: SceneObject) -> float:
    return float(math.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1]))


def _related(a: SceneObject, b: SceneObject) -> bool:
    return a.parent_id == b.id or b.parent_id == a.id


# ---------------------------------------------------------------------------------------------- tasks

def _attribute(scene, rng):
    named = _named(scene)
    if not named:
        return None
    kind = int(rng.integers(3))
    if kind == 0:   # colour of an object whose label alone names it
        plain = [(o, n) for o, n in named if len(scene.objects_with_label(o.label)) == 1]
        if not plain:
            return None
        obj, n = plain[int(rng.integers(len(plain)))]
        steps = [f'I look for the {n} in the scene and find one {n}, {obj.ref}, centred at {_xyz(obj.center)}.',
                 f'I examine the points that belong to the {n} and compare their colour with the floor and walls.',
                 f'most of these points have an RGB colour close to {tuple(obj.color_rgb)}, which is {obj.color_name}.',
                 f'I conclude that the colour of the {n} is {obj.color_name}.']
        answer = (f'The {n} is {obj.color_name}. Its surface points, centred at {_xyz(obj.center)}, are '
                  f'mostly {obj.color_name}, so {obj.color_name} is the colour of the {n}.')
        return _record(scene, T.ATTRIBUTE, f'What color is the {n}?', steps, answer, obj.color_name, [obj])
    if kind == 1:   # height
        obj, n = named[int(rng.integers(len(named)))]
        h = float(obj.size[2])
        if _near_boundary(h):
            return None
        steps = [f'I locate the {n}, {obj.ref}, centred at {_xyz(obj.center)}.',
                 f'I find its lowest point at z = {obj.lo[2]:.2f} m and its highest point at z = {obj.hi[2]:.2f} m.',
                 f'the height is the difference, {obj.hi[2]:.2f} - {obj.lo[2]:.2f} = {h:.2f} m.',
                 f'rounding to one decimal, the {n} is {h:.1f} m tall.']
        answer = (f'The {n} is about {h:.1f} m tall. Its box reaches from {obj.lo[2]:.2f} m to {obj.hi[2]:.2f} m '
                  f'above the floor, a height of {h:.1f} metres.')
        return _record(scene, T.ATTRIBUTE, f'How tall is the {n}?', steps, answer, f'{h:.1f} m', [obj])
    # which is larger (box volume), only when clearly different
    if len(named) < 2:
        return None
    i, j = rng.choice(len(named), 2, replace=False)
    (a, na), (b, nb) = named[int(i)], named[int(j)]
    va, vb = float(np.prod(a.size)), float(np.prod(b.size))
    if max(va, vb) < 1.3 * min(va, vb) or a.label == b.label:
        return None
    big, nbig, small, nsmall = (a, na, b, nb) if va > vb else (b, nb, a, na)
    vbig, vsmall = max(va, vb), min(va, vb)
    steps = [f'I find the {na} ({a.ref}) with a box of {a.size[0]:.2f} x {a.size[1]:.2f} x {a.size[2]:.2f} m.',
             f'I find the {nb} ({b.ref}) with a box of {b.size[0]:.2f} x {b.size[1]:.2f} x {b.size[2]:.2f} m.',
             f'I compare the volumes: {va:.3f} cubic metres for the {na} and {vb:.3f} for the {nb}.',
             f'the {nbig} has the larger volume, so the {nbig} is larger.']
    answer = (f'The {nbig} is larger. Its box holds about {vbig:.3f} cubic metres, while the {nsmall} holds '
              f'only about {vsmall:.3f} cubic metres.')
    return _record(scene, T.ATTRIBUTE, f'Which is larger, the {na} or the {nb}?', steps, answer, nbig, [big])


def _counting(scene, rng):
    labels = scene.labels()
    if not labels:
        return None
    label = labels[int(rng.integers(len(labels)))]
    found = scene.objects_with_label(label)
    n = len(found)
    where = '; '.join(f'{o.ref} at {_xyz(o.center)}' for o in found)
    word = plural(label) if n != 1 else label_text(label)
    steps = [f'I scan the whole room for {plural(label)}, looking at every object on the floor and on furniture.',
             f'I list each one I find: {where}.',
             'I check that these are separate objects and that none of them is counted twice.',
             f'counting them gives {n} {word} in the room.']
    verb = 'is' if n == 1 else 'are'
    answer = (f'There {verb} {n} {word} in the room. I looked at every object in the scene, on the floor and on '
              f'furniture, and counted {n} in total.')
    return _record(scene, T.COUNTING, f'How many {plural(label)} are in the room?', steps, answer, str(n))


def _existence(scene, rng):
    present = set(scene.labels())
    absent = sorted(set(CATEGORIES) - present)
    ask_present = bool(rng.integers(2)) or not absent
    if ask_present:
        label = sorted(present)[int(rng.integers(len(present)))]
        obj = scene.objects_with_label(label)[0]
        steps = [f'I search the scene for an object that looks like a {label_text(label)}.',
                 f'I find {obj.ref}, a {obj.color_name} object centred at {_xyz(obj.center)}.',
                 f'its shape and size of {obj.size[0]:.2f} x {obj.size[1]:.2f} x {obj.size[2]:.2f} m match a '
                 f'{label_text(label)}.',
                 f'there is a {label_text(label)} in the room, so the answer is yes.']
        answer = (f'Yes, there is a {label_text(label)} in the room. One {label_text(label)} stands at '
                  f'{_xyz(obj.center)} in the scene, so the answer is yes.')
        return _record(scene, T.EXISTENCE, f'Is there a {label_text(label)} in the room?', steps, answer, 'yes',
                       [obj])
    label = absent[int(rng.integers(len(absent)))]
    seen = ', '.join(plural(x) if len(scene.objects_with_label(x)) > 1 else label_text(x) for x in sorted(present))
    steps = [f'I search the scene for an object that looks like a {label_text(label)}.',
             f'I go through the objects in the room: {seen or "nothing but the floor and walls"}.',
             f'none of them has the shape and size of a {label_text(label)}.',
             f'there is no {label_text(label)} in the room, so the answer is no.']
    answer = (f'No, there is no {label_text(label)} in the room. None of the objects I found in the scene is a '
              f'{label_text(label)}, so the answer is no.')
    return _record(scene, T.EXISTENCE, f'Is there a {label_text(label)} in the room?', steps, answer, 'no')


def _viewpoint(scene, rng, kind):
    floor = [(o, n) for o, n in _named(scene) if o.parent_id is None]
    if len(floor) < 3:
        return None
    idx = rng.choice(len(floor), 3, replace=False)
    (a, na), (b, nb), (c, nc) = (floor[int(k)] for k in idx)
    fwd = b.center[:2] - a.center[:2]
    dist = np.linalg.norm(fwd)
    if dist < 0.5:
        return None
    fwd = fwd / dist
    left = np.array([-fwd[1], fwd[0]])
    rel = c.center[:2] - a.center[:2]
    along, side = float(rel @ fwd), float(rel @ left)
    if kind == 'lr':
        if abs(side) < 0.3:
            return None
        ans = 'left' if side > 0 else 'right'
        q = f'Imagine standing at the {na} and facing the {nb}. Is the {nc} on your left or on your right?'
        steps = [f'I place myself at the {na}, at {_xyz(a.center[:2])} on the floor, and face the {nb} at '
                 f'{_xyz(b.center[:2])}, so my forward direction is {_xyz(fwd)} and my left is {_xyz(left)}.',
                 f'I find the {nc} at {_xyz(c.center[:2])}, which is offset by {_xyz(rel)} from where I stand.',
                 f'projecting that offset on my left direction gives {side:.2f} m, which is '
                 f'{"positive" if side > 0 else "negative"}.',
                 f'the {nc} is on my {ans}.']
        answer = (f'The {nc} is on your {ans}. Standing at the {na} and facing the {nb}, it lies {abs(side):.1f} m to '
                  f'the {ans} of your line of sight.')
    else:
        if abs(along) < 0.3:
            return None
        ans = 'in front' if along > 0 else 'behind'
        q = f'Imagine standing at the {na} and facing the {nb}. Is the {nc} in front of you or behind you?'
        steps = [f'I place myself at the {na}, at {_xyz(a.center[:2])} on the floor, and face the {nb} at '
                 f'{_xyz(b.center[:2])}, so my forward direction is {_xyz(fwd)}.',
                 f'I find the {nc} at {_xyz(c.center[:2])}, which is offset by {_xyz(rel)} from where I stand.',
                 f'projecting that offset on my forward direction gives {along:.2f} m, which is '
                 f'{"positive" if along > 0 else "negative"}.',
                 f'the {nc} is {"in front of me" if along > 0 else "behind me"}.']
        where = 'in front of you' if along > 0 else 'behind you'
        answer = (f'The {nc} is {where}. Standing at the {na} and facing the {nb}, it lies {abs(along):.1f} m '
                  f'{"ahead along" if along > 0 else "back from"} your line of sight.')
    return _record(scene, T.SPATIAL, q, steps, answer, ans, [c])


def _nearest(scene, rng):
    named = _named(scene)
    if len(named) < 3:
        return None
    a, na = named[int(rng.integers(len(named)))]
    others = sorted(((float(np.linalg.norm(o.center - a.center)), o) for o in scene.objects if o.id != a.id),
                    key=lambda t: t[0])
    if len(others) < 2 or others[1][0] - others[0][0] < 0.2:
        return None
    d0, near = others[0]
    nn = name(scene, near)
    if nn is None:
        return None
    d1, second = others[1]
    steps = [f'I locate the {na}, {a.ref}, centred at {_xyz(a.center)}.',
             'I measure the distance from its centre to the centre of every other object in the room.',
             f'the two closest are {near.ref} at {d0:.2f} m and {second.ref} at {d1:.2f} m.',
             f'the object closest to the {na} is the {nn}.']
    answer = (f'The {nn} is the closest object to the {na}. Its centre is {d0:.1f} m away, nearer than any other '
              f'object in the room.')
    return _record(scene, T.SPATIAL, f'Which object is closest to the {na}?', steps, answer,
                   label_text(near.label), [near])


def _support(scene, rng):
    cands = [(o, n) for o, n in _named(scene) if o.parent_id is not None and name(scene, scene.object(o.parent_id))]
    if not cands:
        return None
    obj, n = cands[int(rng.integers(len(cands)))]
    parent = scene.object(obj.parent_id)
    pn = name(scene, parent)
    steps = [f'I locate the {n}, {obj.ref}, whose bottom is at z = {obj.lo[2]:.2f} m.',
             'I look for an object directly below it whose top surface is at that height.',
             f'{parent.ref} spans x {parent.lo[0]:.2f} to {parent.hi[0]:.2f} and y {parent.lo[1]:.2f} to '
             f'{parent.hi[1]:.2f} with its top at z = {parent.hi[2]:.2f} m, under the {n}.',
             f'the {n} is standing on the {pn}.']
    answer = (f'The {n} is standing on the {pn}. The top of the {pn} at {parent.hi[2]:.2f} m supports the bottom '
              f'of the {n}.')
    return _record(scene, T.SPATIAL, f'What is the {n} standing on?', steps, answer, label_text(parent.label),
                   [parent])


def _between(scene, rng):
    floor = [(o, n) for o, n in _named(scene) if o.parent_id is None]
    if len(floor) < 3:
        return None
    i, j = rng.choice(len(floor), 2, replace=False)
    (a, na), (b, nb) = floor[int(i)], floor[int(j)]
    ab = b.center[:2] - a.center[:2]
    length = float(np.linalg.norm(ab))
    if length < 1.0:
        return None
    u = ab / length
    inner, near = [], []
    for o in scene.objects:
        if o.id in (a.id, b.id) or o.parent_id is not None:
            continue
        rel = o.center[:2] - a.center[:2]
        t = float(rel @ u) / length
        off = abs(float(rel @ np.array([-u[1], u[0]])))
        if 0.25 <= t <= 0.75 and off < 0.4:
            inner.append(o)
        elif 0.1 <= t <= 0.9 and off < 0.8:
            near.append(o)
    if len(inner) != 1 or near:
        return None
    c = inner[0]
    nc = name(scene, c)
    if nc is None:
        return None
    steps = [f'I locate the {na} at {_xyz(a.center[:2])} and the {nb} at {_xyz(b.center[:2])} on the floor.',
             f'I draw the line between them, {length:.2f} m long, and look for objects close to it.',
             f'{c.ref} lies near the middle of that line, and no other object is close to it.',
             f'the object between the {na} and the {nb} is the {nc}.']
    answer = (f'The {nc} is between the {na} and the {nb}. It stands near the middle of the {length:.1f} m line '
              f'that joins them.')
    return _record(scene, T.SPATIAL, f'Which object is between the {na} and the {nb}?', steps, answer,
                   label_text(c.label), [c])


def _spatial(scene, rng):
    kind = int(rng.integers(5))
    return (lambda: _viewpoint(scene, rng, 'lr'), lambda: _viewpoint(scene, rng, 'fb'),
            lambda: _nearest(scene, rng), lambda: _support(scene, rng), lambda: _between(scene, rng))[kind]()


def _distance(scene, rng):
    named = _named(scene)
    if len(named) < 2:
        return None
    i, j = rng.choice(len(named), 2, replace=False)
    (a, na), (b, nb) = named[int(i)], named[int(j)]
    if _related(a, b):
        return None
    dx, dy = float(b.center[0] - a.center[0]), float(b.center[1] - a.center[1])
    d = math.hypot(dx, dy)
    if _near_boundary(d):
        return None
    steps = [f'I locate the {na} with its centre at {_xyz(a.center)}.',
             f'I locate the {nb} with its centre at {_xyz(b.center)}.',
             f'on the floor plane the offset is dx = {dx:.2f} m and dy = {dy:.2f} m, so the distance is '
             f'sqrt(({dx:.2f})^2 + ({dy:.2f})^2) = {d:.2f} m.',
             f'the {na} and the {nb} are about {d:.1f} m apart.']
    answer = (f'The {na} is about {d:.1f} m from the {nb}. This is the distance between their centres measured '
              f'across the floor.')
    return _record(scene, T.DISTANCE, f'How far is the {na} from the {nb}?', steps, answer, f'{d:.1f} m', [a, b])


def _grounding(scene, rng):
    named = _named(scene)
    if not named:
        return None
    obj, n = named[int(rng.integers(len(named)))]
    same = scene.objects_with_label(obj.label)
    if len(same) > 1:
        second = (f'there are {len(same)} {plural(obj.label)}, and only {obj.ref} is {obj.color_name}, so it is the '
                  f'one asked about.')
    else:
        second = f'there is only one {label_text(obj.label)}, {obj.ref}, so it is the one asked about.'
    steps = [f'I search the scene for the {n}.', second,
             f'its points span x {obj.lo[0]:.2f} to {obj.hi[0]:.2f}, y {obj.lo[1]:.2f} to {obj.hi[1]:.2f} and '
             f'z {obj.lo[2]:.2f} to {obj.hi[2]:.2f} metres.',
             f'the box of the {n} is centred at {_xyz(obj.center)} with size '
             f'{obj.size[0]:.2f} x {obj.size[1]:.2f} x {obj.size[2]:.2f} m.']
    answer = (f'The {n} is centred at {_xyz(obj.center)} in the map frame and measures {obj.size[0]:.2f} by '
              f'{obj.size[1]:.2f} by {obj.size[2]:.2f} metres along x, y and z.')
    return _record(scene, T.GROUNDING, f'Where is the {n}?', steps, answer, obj.ref, [obj])


# ---------------------------------------------------------------------------------------------- planning

def approach_point(scene: Scene, obj: SceneObject, clearance: float = 0.5) -> np.ndarray:
    """A floor point (z = 0) next to ``obj`` on the side facing the room centre, inside the room."""
    root = obj
    while root.parent_id is not None:     # stand next to the furniture an item sits on
        root = scene.object(root.parent_id)
    lo, hi = scene.bounds()
    centre = (lo[:2] + hi[:2]) / 2
    d = centre - root.center[:2]
    norm = float(np.linalg.norm(d))
    d = d / norm if norm > 1e-6 else np.array([1.0, 0.0])
    # leave the object's box along d, then keep the clearance
    reach = float(np.min(np.where(np.abs(d) > 1e-6, (root.size[:2] / 2) / np.maximum(np.abs(d), 1e-6), np.inf)))
    p = root.center[:2] + d * (reach + clearance)
    p = np.clip(p, lo[:2] + 0.3, hi[:2] - 0.3)
    return np.array([p[0], p[1], 0.0])


def _planning(scene, rng):
    named = _named(scene)
    small = [(o, n) for o, n in named if CATEGORIES.get(o.label) and CATEGORIES[o.label].on_support]
    kind = int(rng.integers(3))
    if kind == 2 or not small:  # inspect any object
        if not named:
            return None
        obj, n = named[int(rng.integers(len(named)))]
        goal = approach_point(scene, obj)
        plan = [PlanStep('navigate_to', obj.ref, tuple(goal)), PlanStep('inspect', obj.ref, tuple(obj.center))]
        steps = [f'I locate the {n}, {obj.ref}, at {_xyz(obj.center)}.',
                 f'I choose a free spot on the floor beside it, at {_xyz(goal)}, facing the {n}.',
                 f'I plan to navigate to that spot and then inspect the {n}.',
                 f'the plan is navigate_to {obj.ref}, then inspect {obj.ref}, the {n}.']
        answer = (f'To inspect the {n}, I first navigate to the free spot at {_xyz(goal)} beside it and then inspect '
                  f'the {n} at {_xyz(obj.center)}.')
        return _record(scene, T.PLANNING, f'Go and inspect the {n}.', steps, answer, 'navigate_to inspect',
                       [obj], plan)
    obj, n = small[int(rng.integers(len(small)))]
    if kind == 0:  # bring to another support surface
        dests = [(o, dn) for o, dn in named if CATEGORIES.get(o.label) and CATEGORIES[o.label].support
                 and o.id != obj.parent_id]
        if not dests:
            return None
        dest, dn = dests[int(rng.integers(len(dests)))]
        g1, g2 = approach_point(scene, obj), approach_point(scene, dest)
        put = np.array([dest.center[0], dest.center[1], dest.hi[2] + obj.size[2] / 2])
        plan = [PlanStep('navigate_to', obj.ref, tuple(g1)), PlanStep('pick', obj.ref, tuple(obj.center)),
                PlanStep('navigate_to', dest.ref, tuple(g2)), PlanStep('place', dest.ref, tuple(put))]
        steps = [f'I locate the {n}, {obj.ref}, at {_xyz(obj.center)}, and the {dn}, {dest.ref}, at '
                 f'{_xyz(dest.center)} with its top at z = {dest.hi[2]:.2f} m.',
                 f'I navigate to {_xyz(g1)} beside the {n} and pick it up.',
                 f'I navigate to {_xyz(g2)} beside the {dn}.',
                 f'I place the {n} on top of the {dn} at {_xyz(put)}.']
        answer = (f'I will bring the {n} to the {dn}: navigate to it, pick it up, navigate to the {dn} and place it on '
                  f'top at {_xyz(put)}.')
        return _record(scene, T.PLANNING, f'Bring the {n} to the {dn}.', steps, answer,
                       'navigate_to pick navigate_to place', [obj, dest], plan)
    conts = [(o, cn) for o, cn in named if o.parent_id is None and CATEGORIES.get(o.label)
             and CATEGORIES[o.label].openable]
    if not conts:
        return None
    cont, cn = conts[int(rng.integers(len(conts)))]
    g1, g2 = approach_point(scene, obj), approach_point(scene, cont)
    plan = [PlanStep('navigate_to', obj.ref, tuple(g1)), PlanStep('pick', obj.ref, tuple(obj.center)),
            PlanStep('navigate_to', cont.ref, tuple(g2)), PlanStep('open', cont.ref, tuple(cont.center)),
            PlanStep('place', cont.ref, tuple(cont.center)), PlanStep('close', cont.ref, tuple(cont.center))]
    steps = [f'I locate the {n}, {obj.ref}, at {_xyz(obj.center)}, and the {cn}, {cont.ref}, at {_xyz(cont.center)}.',
             f'I navigate to {_xyz(g1)} beside the {n} and pick it up.',
             f'I navigate to {_xyz(g2)} in front of the {cn} and open it.',
             f'I place the {n} inside the {cn} and close the {cn}.']
    answer = (f'I will put the {n} into the {cn}: navigate to the {n}, pick it up, navigate to the {cn}, open it, '
              f'place the {n} inside and close it.')
    return _record(scene, T.PLANNING, f'Put the {n} into the {cn}.', steps, answer,
                   'navigate_to pick navigate_to open place close', [obj, cont], plan)


_GENERATORS = {T.ATTRIBUTE: _attribute, T.COUNTING: _counting, T.EXISTENCE: _existence, T.SPATIAL: _spatial,
               T.DISTANCE: _distance, T.GROUNDING: _grounding, T.PLANNING: _planning}


def generate_qa(scene: Scene, rng_or_seed: np.random.Generator | int = 0,
                per_task: int | dict[str, int] = DEFAULT_PER_TASK, attempts: int = 8) -> list[QARecord]:
    """Up to ``per_task`` distinct questions per task (an int, or a dict task -> count) for ``scene``.

    A task that cannot be asked in this scene (too few nameable objects, every draw ambiguous) yields
    fewer records; each task gets ``attempts`` draws per wanted question.
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    counts = per_task if isinstance(per_task, dict) else {t: per_task for t in T.TASKS}
    out: list[QARecord] = []
    for task in T.TASKS:
        want = int(counts.get(task, 0))
        seen: set[str] = set()
        for _ in range(want * attempts):
            if len(seen) >= want:
                break
            rec = _GENERATORS[task](scene, rng)
            if rec is None or rec.question in seen:
                continue
            seen.add(rec.question)
            out.append(rec)
    return out
