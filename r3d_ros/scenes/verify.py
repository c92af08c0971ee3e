"""An independent solver for the generated questions: re-derives each short answer from the scene geometry.

It shares no code with :mod:`r3d_ros.scenes.qa`: it reads the question text (its own patterns), finds the
objects it names from the scene's ground truth, and computes the answer with its own geometry (cross
products for left/right, support found by touching surfaces rather than the stored ``parent_id``, the
object between two others by distance to the segment). It serves the paper's re-answer consistency rule
in :func:`r3d_ros.scenes.dataset.quality_filter` and the tests that check the generator's answers.
"""

from __future__ import annotations

import math
import re

import numpy as np

from r3d_ros.scenes.types import Scene, SceneObject


def _text(label: str) -> str:
    return label.replace('_', ' ')


def find(scene: Scene, phrase: str) -> SceneObject | None:
    """The unique object called ``phrase`` ('chair', 'red chair', 'trash can'), or None."""
    phrase = phrase.strip().lower()
    hits = [o for o in scene.objects if _text(o.label) == phrase]
    if not hits and ' ' in phrase:
        colour, rest = phrase.split(' ', 1)
        hits = [o for o in scene.objects if _text(o.label) == rest and o.color_name == colour]
    return hits[0] if len(hits) == 1 else None


def _labels_for_plural(scene: Scene, word: str) -> set[str]:
    word = word.strip().lower()
    out = set()
    for o in scene.objects:
        t = _text(o.label)
        if word in (t + 's', t + 'es', t[:-1] + 'ves' if t.endswith('f') else None):
            out.add(o.label)
    return out


def _height(o: SceneObject) -> float:
    return float((o.center[2] + o.size[2] / 2) - (o.center[2] - o.size[2] / 2))


def _supporter(scene: Scene, o: SceneObject) -> SceneObject | None:
    bottom = o.center[2] - o.size[2] / 2
    for s in scene.objects:
        if s.id == o.id:
            continue
        top = s.center[2] + s.size[2] / 2
        inside = np.all(np.abs(o.center[:2] - s.center[:2]) <= s.size[:2] / 2 + 1e-6)
        if abs(top - bottom) < 0.01 and inside:
            return s
    return None


_PATTERNS: list[tuple[re.Pattern, str]] = [(re.compile(p), k) for p, k in (
    (r'^What color is the (.+)\?$', 'color'),
    (r'^How tall is the (.+)\?$', 'height'),
    (r'^Which is larger, the (.+) or the (.+)\?$', 'larger'),
    (r'^How many (.+) are in the room\?$', 'count'),
    (r'^Is there an? (.+) in the room\?$', 'exists'),
    (r'^Imagine standing at the (.+) and facing the (.+)\. Is the (.+) on your left or on your right\?$', 'lr'),
    (r'^Imagine standing at the (.+) and facing the (.+)\. Is the (.+) in front of you or behind you\?$', 'fb'),
    (r'^Which object is closest to the (.+)\?$', 'nearest'),
    (r'^What is the (.+) standing on\?$', 'support'),
    (r'^Which object is between the (.+) and the (.+)\?$', 'between'),
    (r'^How far is the (.+) from the (.+)\?$', 'distance'),
    (r'^Where is the (.+)\?$', 'where'),
    (r'^Go and inspect the (.+)\.$', 'inspect'),
    (r'^Bring the (.+) to the (.+)\.$', 'bring'),
    (r'^Put the (.+) into the (.+)\.$', 'put'),
)]


def solve(scene: Scene, record_or_question) -> str | None:
    """The short answer to a generated question, or None when the question is not one of ours."""
    q = getattr(record_or_question, 'question', record_or_question)
    for pattern, kind in _PATTERNS:
        m = pattern.match(q)
        if m:
            return _answer(scene, kind, m.groups())
    return None


def _answer(scene: Scene, kind: str, groups: tuple[str, ...]) -> str | None:
    if kind == 'count':
        labels = _labels_for_plural(scene, groups[0])
        return str(sum(o.label in labels for o in scene.objects))
    if kind == 'exists':
        return 'yes' if any(_text(o.label) == groups[0] for o in scene.objects) else 'no'
    objs = [find(scene, g) for g in groups]
    if any(o is None for o in objs):
        return None
    if kind == 'color':
        return objs[0].color_name
    if kind == 'height':
        return f'{_height(objs[0]):.1f} m'
    if kind == 'larger':
        vols = [float(o.size[0] * o.size[1] * o.size[2]) for o in objs]
        return groups[int(np.argmax(vols))]
    if kind in ('lr', 'fb'):
        a, b, c = (o.center[:2] for o in objs)
        fwd, rel = b - a, c - a
        if kind == 'lr':
            cross = fwd[0] * rel[1] - fwd[1] * rel[0]    # > 0: c is counter-clockwise of forward = left
            return 'left' if cross > 0 else 'right'
        return 'in front' if float(fwd @ rel) > 0 else 'behind'
    if kind == 'nearest':
        a = objs[0]
        others = [o for o in scene.objects if o.id != a.id]
        best = min(others, key=lambda o: math.dist(o.center, a.center))
        return _text(best.label)
    if kind == 'support':
        s = _supporter(scene, objs[0])
        return _text(s.label) if s else 'floor'
    if kind == 'between':
        a, b = objs
        pa, pb = a.center[:2], b.center[:2]
        seg = pb - pa

        def off(o):
            t = float(np.clip((o.center[:2] - pa) @ seg / (seg @ seg), 0.0, 1.0))
            return float(np.linalg.norm(o.center[:2] - (pa + t * seg)))
        cands = [o for o in scene.objects if o.id not in (a.id, b.id) and o.center[2] - o.size[2] / 2 < 0.01]
        return _text(min(cands, key=off).label) if cands else None
    if kind == 'distance':
        a, b = objs
        return f'{math.dist(a.center[:2], b.center[:2]):.1f} m'
    if kind == 'where':
        return objs[0].ref
    if kind == 'inspect':
        return 'navigate_to inspect'
    if kind == 'bring':
        return 'navigate_to pick navigate_to place'
    if kind == 'put':
        return 'navigate_to pick navigate_to open place close'
    return None
