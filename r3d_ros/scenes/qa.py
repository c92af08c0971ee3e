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

from r3d_ros import grounding as G
from r3d_ros.grounding import label_text, plural
from r3d_ros.output_format import parse_completion
from r3d_ros.scene_objects import records_from_scene
from r3d_ros.scenes import types as T
from r3d_ros.scenes.synthetic import CATEGORIES
from r3d_ros.scenes.types import QARecord, Scene, SceneObject

DEFAULT_PER_TASK = 3
_ORDINALS = ('First', 'Next', 'Then', 'After that', 'Finally')


# ---------------------------------------------------------------------------------------------- naming

def name(scene: Scene, obj: SceneObject) -> str | None:
    """Unique name of ``obj`` in ``scene`` ('chair' or 'red chair'), or None when it cannot be named."""
    same = scene.objects_with_label(obj.label)
    if len(same) == 1:
        return label_text(obj.label)
    if sum(o.color_name == obj.color_name for o in same) == 1:
        return f'{obj.color_name} {label_text(obj.label)}'
    return None


def _m(obj: SceneObject) -> str:
    """A mention in a template: the class word, then the reference (the grounder checks the word)."""
    return f'{label_text(obj.label)} <{obj.ref}>'


def _steps(sentences: list[str]) -> str:
    """Join step sentences with explicit ordinals; the last one always starts with 'Finally'."""
    out = []
    for i, s in enumerate(sentences):
        word = 'Finally' if i == len(sentences) - 1 else _ORDINALS[min(i, len(_ORDINALS) - 2)]
        out.append(f'{word}, {s}')
    return ' '.join(out)


def _box_dict(obj: SceneObject) -> dict:
    return {'ref': obj.ref, 'center': [round(float(v), 2) for v in obj.center],
            'size': [round(float(v), 2) for v in obj.size]}


def _object_dict(obj: SceneObject) -> dict:
    return {**_box_dict(obj), 'label': obj.label, 'color': obj.color_name}


def _truth(scene: Scene) -> G.Scene:
    """The scene's ground-truth records, built once per scene object."""
    if getattr(scene, '_truth', None) is None:
        scene._truth = G.Scene.of(records_from_scene(scene), scene.points)
    return scene._truth


def _record(scene, task: str, question: str, steps: list[str], answer: str, short: str,
            boxes: list[SceneObject] = (), plan: list[tuple[str, SceneObject]] = (),
            key: str | None = None, expect: str | None = None) -> QARecord | None:
    """The record of one question: ``cot`` in the reference form the model learns (references, facts, boxes and
    steps without numbers), ``think`` / ``answer`` / ``plan`` that form grounded on the ground truth (the very
    code that grounds the model's answers). ``key``: the fact whose value is the answer (its value must be
    ``expect``, or ``short`` written as the generator writes it, or the question is dropped), 'box' or 'plan'."""
    body = [answer.strip()] + [f'<box>{o.label} <{o.ref}></box>' for o in boxes]
    if plan:
        body.append('<plan>' + ''.join(f'<step>{a} {o.label} <{o.ref}></step>' for a, o in plan) + '</plan>')
    cot = f'<think>{_steps(steps)}</think><answer>{" ".join(body)}</answer>'
    truth = _truth(scene)
    grounded = G.ground(cot, truth)
    if not grounded.ok:
        raise AssertionError(f'{question}: {grounded.errors}')  # a template bug, never data
    key_fact = {'fact': key or 'box', 'value': short}
    if key not in (None, 'box', 'plan'):
        fact = next((f for f in grounded.facts if f['fact'] == key), None)
        if fact is None or (fact['value'] != expect if expect is not None else _value_text(fact['value']) != short):
            return None   # the ground-truth records disagree with the generator: ambiguous, not asked
        key_fact = {'fact': key, 'args': fact['args'], 'value': fact['value']}
    parsed = parse_completion(grounded.text)
    refs = {o.ref: o for o in scene.objects}
    return QARecord(scene_id=scene.scene_id, question=question, cot=cot, answer=parsed.answer_text, task=task,
                    think=parsed.think, boxes=[_box_dict(o) for o in boxes],
                    plan=[{'action': s.action, 'target': s.target, 'position': [round(float(v), 2) for v in s.position]}
                          for s in parsed.plan],
                    short_answer=short, objects=[_object_dict(refs[r]) for r in grounded.refs], key_fact=key_fact)


def _value_text(value) -> str:
    """A fact value as the generator's short answer writes it."""
    return f'{value:.1f} m' if isinstance(value, float) else str(value)


def _near_boundary(value: float, step: float = 0.1, margin: float = 0.015) -> bool:
    frac = (value / step) % 1.0
    return abs(frac - 0.5) < margin / step


def _named(scene: Scene) -> list[tuple[SceneObject, str]]:
    return [(o, n) for o in scene.objects if (n := name(scene, o)) is not None]


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
        r = obj.ref
        steps = [f'I look for the {n} in the scene and find one, the {_m(obj)}, centred at [center <{r}>].',
                 f'I examine the points that belong to the {n} and compare their colour with the floor and walls.',
                 f'most of these points have the same colour, which is [color <{r}>].',
                 f'I conclude that the colour of the {n} is [color <{r}>].']
        answer = (f'The {_m(obj)} is [color <{r}>]. Its surface points, centred at [center <{r}>], are mostly '
                  f'[color <{r}>], so [color <{r}>] is the colour of the {n}.')
        return _record(scene, T.ATTRIBUTE, f'What color is the {n}?', steps, answer, obj.color_name, [obj],
                       key='color')
    if kind == 1:   # height
        obj, n = named[int(rng.integers(len(named)))]
        h = float(obj.size[2])
        if _near_boundary(h):
            return None
        r = obj.ref
        steps = [f'I locate the {_m(obj)}, centred at [center <{r}>].',
                 f'I find its lowest point at z = [bottom <{r}>] and its highest point at z = [top <{r}>].',
                 'the height is the difference between the highest and the lowest point.',
                 f'rounding to one decimal, the {n} is [height <{r}>] tall.']
        answer = (f'The {_m(obj)} is about [height <{r}>] tall. Its box reaches from [bottom <{r}>] to [top <{r}>] '
                  f'above the floor, a height of [height <{r}>].')
        return _record(scene, T.ATTRIBUTE, f'How tall is the {n}?', steps, answer, f'{h:.1f} m', [obj], key='height')
    # which is larger (box volume), only when clearly different
    if len(named) < 2:
        return None
    i, j = rng.choice(len(named), 2, replace=False)
    (a, na), (b, nb) = named[int(i)], named[int(j)]
    va, vb = float(np.prod(a.size)), float(np.prod(b.size))
    if max(va, vb) < 1.3 * min(va, vb) or a.label == b.label:
        return None
    big, nbig = (a, na) if va > vb else (b, nb)
    ra, rb = a.ref, b.ref
    steps = [f'I find the {_m(a)} with a box of [size <{ra}>].',
             f'I find the {_m(b)} with a box of [size <{rb}>].',
             f'I compare the volumes: [volume <{ra}>] for the {na} and [volume <{rb}>] for the {nb}.',
             f'the one with the larger volume is the [larger <{ra}> <{rb}>].']
    answer = (f'The [larger <{ra}> <{rb}>] is larger. The {na} holds about [volume <{ra}>] and the {nb} about '
              f'[volume <{rb}>], so the [larger <{ra}> <{rb}>] is the larger of the two.')
    return _record(scene, T.ATTRIBUTE, f'Which is larger, the {na} or the {nb}?', steps, answer, nbig, [big],
                   key='larger', expect=big.ref)


def _counting(scene, rng):
    labels = scene.labels()
    if not labels:
        return None
    label = labels[int(rng.integers(len(labels)))]
    n = len(scene.objects_with_label(label))
    steps = [f'I scan the whole room for {plural(label)}, looking at every object on the floor and on furniture.',
             f'I list each one I find: [list {label}].',
             'I check that these are separate objects and that none of them is counted twice.',
             f'counting them, there [count {label}] in the room.']
    answer = (f'There [count {label}] in the room. I looked at every object in the scene, on the floor and on '
              'furniture, and counted each of them once.')
    return _record(scene, T.COUNTING, f'How many {plural(label)} are in the room?', steps, answer, str(n),
                   key='count')


def _existence(scene, rng):
    present = set(scene.labels())
    absent = sorted(set(CATEGORIES) - present)
    ask_present = bool(rng.integers(2)) or not absent
    label = (sorted(present)[int(rng.integers(len(present)))] if ask_present
             else absent[int(rng.integers(len(absent)))])
    word = label_text(label)
    steps = [f'I search the scene for an object that looks like a {word}.',
             '[objects] are the objects I find in the room.',
             f'I compare each of them with the shape and size of a {word}: there [count {label}].',
             f'so the answer to whether there is a {word} in the room is [exists {label}].']
    answer = (f'[exists {label}], there [count {label}] in the room. I went through every object I found in the '
              f'scene and compared it with a {word}.')
    return _record(scene, T.EXISTENCE, f'Is there a {word} in the room?', steps, answer,
                   'yes' if ask_present else 'no', key='exists')


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
    rel = c.center[:2] - a.center[:2]
    along, side = float(rel @ fwd), float(rel @ np.array([-fwd[1], fwd[0]]))
    ra, rb, rc = a.ref, b.ref, c.ref
    if kind == 'lr':
        if abs(side) < 0.3:
            return None
        q = f'Imagine standing at the {na} and facing the {nb}. Is the {nc} on your left or on your right?'
        steps = [f'I place myself at the {_m(a)}, at [center <{ra}>], and face the {_m(b)} at [center <{rb}>].',
                 f'I find the {_m(c)} at [center <{rc}>].',
                 f'seen from where I stand, it lies [lateral <{ra}> <{rb}> <{rc}>] of my line of sight.',
                 f'the {nc} is on my [side <{ra}> <{rb}> <{rc}>].']
        answer = (f'The {_m(c)} is on your [side <{ra}> <{rb}> <{rc}>]. Standing at the {na} and facing the {nb}, it '
                  f'lies [lateral <{ra}> <{rb}> <{rc}>] of your line of sight.')
        return _record(scene, T.SPATIAL, q, steps, answer, 'left' if side > 0 else 'right', [c], key='side')
    if abs(along) < 0.3:
        return None
    q = f'Imagine standing at the {na} and facing the {nb}. Is the {nc} in front of you or behind you?'
    steps = [f'I place myself at the {_m(a)}, at [center <{ra}>], and face the {_m(b)} at [center <{rb}>].',
             f'I find the {_m(c)} at [center <{rc}>].',
             f'along my line of sight it lies [ahead <{ra}> <{rb}> <{rc}>] of me.',
             f'the {nc} is [front <{ra}> <{rb}> <{rc}>].']
    answer = (f'The {_m(c)} is [front <{ra}> <{rb}> <{rc}>]. Standing at the {na} and facing the {nb}, it lies '
              f'[ahead <{ra}> <{rb}> <{rc}>] along your line of sight.')
    return _record(scene, T.SPATIAL, q, steps, answer, 'in front' if along > 0 else 'behind', [c], key='front')


def _nearest(scene, rng):
    named = _named(scene)
    if len(named) < 3:
        return None
    a, na = named[int(rng.integers(len(named)))]
    others = sorted(((float(np.linalg.norm(o.center - a.center)), o) for o in scene.objects if o.id != a.id),
                    key=lambda t: t[0])
    if len(others) < 2 or others[1][0] - others[0][0] < 0.2:
        return None
    near = others[0][1]
    if name(scene, near) is None:
        return None
    r = a.ref
    steps = [f'I locate the {_m(a)}, centred at [center <{r}>].',
             'I measure the distance from its centre to the centre of every other object in the room.',
             f'the closest one is the [nearest <{r}>].',
             f'the object closest to the {na} is the [nearest <{r}>].']
    answer = (f'The [nearest <{r}>] is the closest object to the {_m(a)}. Its centre is nearer to the {na} than '
              'the centre of any other object in the room.')
    return _record(scene, T.SPATIAL, f'Which object is closest to the {na}?', steps, answer,
                   label_text(near.label), [near], key='nearest', expect=near.ref)


def _support(scene, rng):
    cands = [(o, n) for o, n in _named(scene) if o.parent_id is not None and name(scene, scene.object(o.parent_id))]
    if not cands:
        return None
    obj, n = cands[int(rng.integers(len(cands)))]
    parent = scene.object(obj.parent_id)
    r = obj.ref
    steps = [f'I locate the {_m(obj)}, whose bottom is at z = [bottom <{r}>].',
             'I look for an object directly below it whose top surface is at that height.',
             f'the object under it is the [support <{r}>].',
             f'the {n} is standing on the [support <{r}>].']
    answer = (f'The {_m(obj)} is standing on the [support <{r}>]. The top surface of the [support <{r}>] supports '
              f'the bottom of the {n}.')
    return _record(scene, T.SPATIAL, f'What is the {n} standing on?', steps, answer, label_text(parent.label),
                   [parent], key='support', expect=parent.ref)


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
    if len(inner) != 1 or near or name(scene, inner[0]) is None:
        return None
    c = inner[0]
    ra, rb = a.ref, b.ref
    steps = [f'I locate the {_m(a)} at [center <{ra}>] and the {_m(b)} at [center <{rb}>].',
             f'I draw the line between them, [distance <{ra}> <{rb}>] long, and look for objects close to it.',
             f'the [between <{ra}> <{rb}>] lies near the middle of that line, and no other object is close to it.',
             f'the object between the {na} and the {nb} is the [between <{ra}> <{rb}>].']
    answer = (f'The [between <{ra}> <{rb}>] is between the {_m(a)} and the {_m(b)}. It stands near the middle of '
              f'the [distance <{ra}> <{rb}>] line that joins them.')
    return _record(scene, T.SPATIAL, f'Which object is between the {na} and the {nb}?', steps, answer,
                   label_text(c.label), [c], key='between', expect=c.ref)


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
    d = math.hypot(float(b.center[0] - a.center[0]), float(b.center[1] - a.center[1]))
    if _near_boundary(d):
        return None
    ra, rb = a.ref, b.ref
    steps = [f'I locate the {_m(a)} with its centre at [center <{ra}>].',
             f'I locate the {_m(b)} with its centre at [center <{rb}>].',
             'on the floor plane I measure the straight line between the two centres.',
             f'the {na} and the {nb} are about [distance <{ra}> <{rb}>] apart.']
    answer = (f'The {_m(a)} is about [distance <{ra}> <{rb}>] from the {_m(b)}. This is the distance between '
              'their centres measured across the floor.')
    return _record(scene, T.DISTANCE, f'How far is the {na} from the {nb}?', steps, answer, f'{d:.1f} m', [a, b],
                   key='distance')


def _grounding(scene, rng):
    named = _named(scene)
    if not named:
        return None
    obj, n = named[int(rng.integers(len(named)))]
    r = obj.ref
    # how many there are is a fact to look up, never a number the model writes (the grammar allows no digits)
    steps = [f'I search the scene for the {n}.',
             f'there [count {obj.label}], and the {_m(obj)} is the one asked about.',
             f'its points are centred at [center <{r}>].',
             f'the box of the {n} is centred at [center <{r}>] with size [size <{r}>].']
    answer = (f'The {_m(obj)} is centred at [center <{r}>] in the map frame and measures [size <{r}>] along x, y '
              'and z.')
    return _record(scene, T.GROUNDING, f'Where is the {n}?', steps, answer, obj.ref, [obj], key='box')


# ---------------------------------------------------------------------------------------------- planning

def _planning(scene, rng):
    named = _named(scene)
    small = [(o, n) for o, n in named if CATEGORIES.get(o.label) and CATEGORIES[o.label].on_support]
    kind = int(rng.integers(3))
    if kind == 2 or not small:  # inspect any object
        if not named:
            return None
        obj, n = named[int(rng.integers(len(named)))]
        r = obj.ref
        steps = [f'I locate the {_m(obj)}, at [center <{r}>].',
                 f'I choose a free spot on the floor beside it, at [approach <{r}>], facing the {n}.',
                 f'I plan to navigate to that spot and then inspect the {n}.',
                 f'the plan is to navigate to the {_m(obj)} and then inspect it.']
        answer = (f'To inspect the {n}, I first navigate to the free spot at [approach <{r}>] beside it and then '
                  f'inspect the {_m(obj)} at [center <{r}>].')
        return _record(scene, T.PLANNING, f'Go and inspect the {n}.', steps, answer, 'navigate_to inspect',
                       [obj], [('navigate_to', obj), ('inspect', obj)], key='plan')
    obj, n = small[int(rng.integers(len(small)))]
    r = obj.ref
    if kind == 0:  # bring to another support surface
        dests = [(o, dn) for o, dn in named if CATEGORIES.get(o.label) and CATEGORIES[o.label].support
                 and o.id != obj.parent_id]
        if not dests:
            return None
        dest, dn = dests[int(rng.integers(len(dests)))]
        d = dest.ref
        steps = [f'I locate the {_m(obj)}, at [center <{r}>], and the {_m(dest)}, at [center <{d}>] with its top '
                 f'at z = [top <{d}>].',
                 f'I navigate to [approach <{r}>] beside the {n} and pick it up.',
                 f'I navigate to [approach <{d}>] beside the {dn}.',
                 f'I place the {n} on top of the {_m(dest)}.']
        answer = (f'I will bring the {_m(obj)} to the {_m(dest)}: navigate to it, pick it up, navigate to the {dn} '
                  'and place it on top.')
        return _record(scene, T.PLANNING, f'Bring the {n} to the {dn}.', steps, answer,
                       'navigate_to pick navigate_to place', [obj, dest],
                       [('navigate_to', obj), ('pick', obj), ('navigate_to', dest), ('place', dest)], key='plan')
    conts = [(o, cn) for o, cn in named if o.parent_id is None and CATEGORIES.get(o.label)
             and CATEGORIES[o.label].openable]
    if not conts:
        return None
    cont, cn = conts[int(rng.integers(len(conts)))]
    c = cont.ref
    steps = [f'I locate the {_m(obj)}, at [center <{r}>], and the {_m(cont)}, at [center <{c}>].',
             f'I navigate to [approach <{r}>] beside the {n} and pick it up.',
             f'I navigate to [approach <{c}>] in front of the {cn} and open it.',
             f'I place the {n} inside the {_m(cont)} and close the {cn}.']
    answer = (f'I will put the {_m(obj)} into the {_m(cont)}: navigate to the {n}, pick it up, navigate to the {cn}, '
              f'open it, place the {n} inside and close it.')
    return _record(scene, T.PLANNING, f'Put the {n} into the {cn}.', steps, answer,
                   'navigate_to pick navigate_to open place close', [obj, cont],
                   [('navigate_to', obj), ('pick', obj), ('navigate_to', cont), ('open', cont), ('place', cont),
                    ('close', cont)], key='plan')


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


def truth_record(scene: Scene, question: str, seeds=range(8), per_task: int = 30) -> QARecord | None:
    """The generator's record (truth: key fact, objects, plan) for ``question`` asked about ``scene``, or None
    when the generator never asks it there (a question in another wording, or about an object it lacks)."""
    for seed in seeds:
        for rec in generate_qa(scene, seed, per_task=per_task):
            if rec.question == question.strip():
                return rec
    return None
