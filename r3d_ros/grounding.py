"""Grounded completions: the model writes object references and facts to look up; this module looks them up.

The model never writes a number, colour, count or relation itself (Chat-Scene's object identifiers, closed
end to end). Its completion uses three kinds of element, all filled in from the map's object records
(:mod:`r3d_ros.scene_objects`):

* a reference ``<obj_k>`` (ground-truth templates use the object's ref, ``<table_2>``), rendered ``(obj_k)``;
  a class word written just before it is replaced by the record's class, so the text cannot call a desk a table;
* a fact ``[name arg ...]`` whose arguments are references or class labels, e.g. ``[color <obj_3>]``,
  ``[count chair]``, ``[distance <obj_3> <obj_5>]`` (:data:`FACTS` lists them);
* ``<box>class <obj_k></box>`` and plan steps ``<step>action class <obj_k></step>``: the box is the record's, the
  step's position is computed (``navigate_to``: a free floor point at the footprint edge of the furniture the
  object stands on; ``pick``: the object's centre; ``place``: on top of the target's support surface, or inside
  it after an ``open``; ``open`` / ``close`` / ``inspect``: the object's centre).

:func:`ground` returns the completion in the published grammar (:mod:`r3d_ros.output_format`) with every fact
written out, the facts with their values (what a key-fact check compares), and the errors: a reference to an
object that is not in the map, an unknown fact, a fact with the wrong arguments. A caller must not publish a
completion that has errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import math
import re

import numpy as np

from r3d_ros.scene_objects import ObjectRecord

#: a reference: ``<obj_7>`` from the model, ``<chair_3>`` in ground-truth templates
REF = re.compile(r'<(?P<id>[a-z][a-z_]*_\d+)>')
FACT = re.compile(r'\[(?P<name>[a-z_]+)(?P<args>(?:\s+[^\s\[\]]+)*)\s*\]')
_BOX = re.compile(r'<box>\s*(?:[A-Za-z][\w\-]*\s+)?<(?P<id>[a-z][a-z_]*_\d+)>\s*</box>')
_STEP = re.compile(r'<step>\s*(?P<action>[a-z_]+)\s+(?:[A-Za-z][\w\-]*\s+)?<(?P<id>[a-z][a-z_]*_\d+)>\s*</step>')

#: how far from a furniture footprint the robot stands (m), and the robot's footprint radius for free space
APPROACH_CLEARANCE = 0.5
ROBOT_RADIUS = 0.25


class GroundingError(ValueError):
    """A completion refers to something the map does not have."""


def label_text(label: str) -> str:
    return label.replace('_', ' ')


def plural(label: str) -> str:
    word = label_text(label)
    if word == 'shelf':
        return 'shelves'
    return word + ('es' if word.endswith(('s', 'x', 'sh', 'ch')) else 's')


def num(v: float, digits: int = 2) -> float:
    """``v`` rounded as it is written (no negative zero): a fact's value is exactly what its text says."""
    return round(float(v), digits) + 0.0


def xyz(v) -> list[float]:
    return [num(c) for c in v]


def xyz_text(v) -> str:
    return '(' + ', '.join(f'{c:.2f}' for c in xyz(v)) + ')'


def object_text(r: ObjectRecord) -> str:
    return f'{label_text(r.label)} ({r.id})'


@dataclass
class Scene:
    """What facts are computed on: the records by id, and the map's points / bounds for free-space checks."""

    records: dict[str, ObjectRecord]
    points: np.ndarray | None = None            # (N, 3) map points (None: no free-space check)
    bounds: tuple[np.ndarray, np.ndarray] | None = None
    classes: tuple[str, ...] = ()               # class labels a word before a reference may be (the model's)

    @classmethod
    def of(cls, records: list[ObjectRecord], points: np.ndarray | None = None, bounds=None,
           classes=()) -> Scene:
        if points is not None:
            points = np.asarray(points)[:, :3]
        if bounds is None and points is not None and len(points):
            bounds = (points.min(0), points.max(0))
        return cls({r.id: r for r in records}, points, bounds, tuple(classes))

    def get(self, ref: str) -> ObjectRecord:
        m = REF.fullmatch(ref)
        key = m['id'] if m else ref
        if key not in self.records:
            raise GroundingError(f'{key} is not an object of the map')
        return self.records[key]

    def with_label(self, label: str) -> list[ObjectRecord]:
        return [r for r in self.records.values() if r.label == label]


# ---------------------------------------------------------------------------------------------- geometry

def _planar(a: ObjectRecord, b: ObjectRecord) -> float:
    return float(math.hypot(*(a.center[:2] - b.center[:2])))


def _frame(a: ObjectRecord, b: ObjectRecord, c: ObjectRecord) -> tuple[float, float]:
    """(ahead, left) offset of c standing at a and facing b, on the floor plane."""
    fwd = b.center[:2] - a.center[:2]
    fwd = fwd / max(float(np.linalg.norm(fwd)), 1e-9)
    rel = c.center[:2] - a.center[:2]
    return float(rel @ fwd), float(rel @ np.array([-fwd[1], fwd[0]]))


def support_of(scene: Scene, r: ObjectRecord) -> ObjectRecord | None:
    on = [scene.records[t] for t in r.related('on') if t in scene.records]
    return on[0] if on else None


def _root(scene: Scene, r: ObjectRecord) -> ObjectRecord:
    seen = {r.id}
    while (s := support_of(scene, r)) is not None and s.id not in seen:
        seen.add(s.id)
        r = s
    return r


def _free(scene: Scene, p: np.ndarray) -> bool:
    """No map point in a robot-sized column (above the floor, below 1.5 m) at floor point ``p``."""
    if scene.points is None or not len(scene.points):
        return True
    pts = scene.points
    near = (np.abs(pts[:, 0] - p[0]) < ROBOT_RADIUS) & (np.abs(pts[:, 1] - p[1]) < ROBOT_RADIUS)
    return not bool(np.any(near & (pts[:, 2] > 0.1) & (pts[:, 2] < 1.5)))


def approach_point(scene: Scene, r: ObjectRecord) -> np.ndarray:
    """Floor point (z = 0) beside the furniture ``r`` stands on, at its footprint edge plus the clearance.

    The side facing the map's centre is tried first (where a room is open); when the map shows that spot
    occupied, the other seven directions around the footprint are tried, nearest in angle first."""
    root = _root(scene, r)
    lo, hi = scene.bounds if scene.bounds is not None else (root.lo - 3, root.hi + 3)
    d0 = (np.asarray(lo[:2]) + np.asarray(hi[:2])) / 2 - root.center[:2]
    a0 = math.atan2(d0[1], d0[0]) if np.linalg.norm(d0) > 1e-6 else 0.0
    first = None
    for da in sorted((k * math.pi / 4 for k in range(-3, 5)), key=abs):
        d = np.array([math.cos(a0 + da), math.sin(a0 + da)])
        reach = float(np.min(np.where(np.abs(d) > 1e-6, (root.size[:2] / 2) / np.maximum(np.abs(d), 1e-6), np.inf)))
        p = np.clip(root.center[:2] + d * (reach + APPROACH_CLEARANCE), np.asarray(lo[:2]) + 0.3,
                    np.asarray(hi[:2]) - 0.3)
        first = p if first is None else first
        if _free(scene, p):
            return np.array([p[0], p[1], 0.0])
    return np.array([first[0], first[1], 0.0])


def place_point(target: ObjectRecord, held: ObjectRecord | None, inside: bool) -> np.ndarray:
    if inside or held is None:
        return target.center.copy()
    return np.array([target.center[0], target.center[1], target.hi[2] + held.size[2] / 2])


# ---------------------------------------------------------------------------------------------- facts

def _count(scene: Scene, label: str) -> tuple[str, int]:
    n = len(scene.with_label(label))
    if n == 0:
        return f'are no {plural(label)}', 0
    return (f'is 1 {label_text(label)}' if n == 1 else f'are {n} {plural(label)}'), n


def _list(scene: Scene, label: str) -> tuple[str, list[str]]:
    found = sorted(scene.with_label(label), key=lambda r: r.id)
    text = '; '.join(f'{object_text(r)} at {xyz_text(r.center)}' for r in found)
    return text or 'none', [r.id for r in found]


def _inventory(scene: Scene) -> tuple[str, list[str]]:
    labels = sorted({r.label for r in scene.records.values()})
    parts = [plural(x) if len(scene.with_label(x)) > 1 else label_text(x) for x in labels]
    return ', '.join(parts) or 'nothing but the floor and walls', labels


def _nearest(scene: Scene, a: ObjectRecord) -> ObjectRecord:
    others = [r for r in scene.records.values() if r.id != a.id]
    if not others:
        raise GroundingError(f'no object other than {a.id} in the map')
    return min(others, key=lambda r: float(np.linalg.norm(r.center - a.center)))


def _between(scene: Scene, a: ObjectRecord, b: ObjectRecord) -> ObjectRecord | None:
    ab = b.center[:2] - a.center[:2]
    length = max(float(np.linalg.norm(ab)), 1e-9)
    u = ab / length
    best, best_off = None, 0.4
    for r in scene.records.values():
        if r.id in (a.id, b.id) or support_of(scene, r) is not None:
            continue
        rel = r.center[:2] - a.center[:2]
        t, off = float(rel @ u) / length, abs(float(rel @ np.array([-u[1], u[0]])))
        if 0.25 <= t <= 0.75 and off < best_off:
            best, best_off = r, off
    return best


def _obj(r: ObjectRecord | None, none: str) -> tuple[str, str]:
    return (object_text(r), r.id) if r is not None else (none, '')


def _side(scene, a, b, c):
    left = _frame(a, b, c)[1]
    return ('left' if left > 0 else 'right'), ('left' if left > 0 else 'right')


def _front(scene, a, b, c):
    ahead = _frame(a, b, c)[0]
    return ('in front of you' if ahead > 0 else 'behind you'), ('in front' if ahead > 0 else 'behind')


def _lateral(scene, a, b, c):
    left = num(_frame(a, b, c)[1])
    return f'{abs(left):.2f} m to the {"left" if left > 0 else "right"}', left


def _ahead(scene, a, b, c):
    ahead = num(_frame(a, b, c)[0])
    return f'{abs(ahead):.2f} m {"ahead" if ahead > 0 else "behind"}', ahead


def _larger(scene, a, b):
    big = a if float(np.prod(a.size)) >= float(np.prod(b.size)) else b
    return object_text(big), big.id


def _metres(v: float, digits: int = 1) -> tuple[str, float]:
    v = num(v, digits)
    return f'{v:.{digits}f} m', v


#: fact name -> (argument kinds: 'o' object reference, 'l' class label; the function (scene, *args) -> (text,
#: value)). Values are what a key-fact check compares: a colour, a count, an object id, metres, 'left', ...
FACTS: dict[str, tuple[str, Callable]] = {
    'color': ('o', lambda s, a: (a.color, a.color)),
    'label': ('o', lambda s, a: (label_text(a.label), a.label)),
    'center': ('o', lambda s, a: (xyz_text(a.center), xyz(a.center))),
    'size': ('o', lambda s, a: (' x '.join(f'{v:.2f}' for v in xyz(a.size)) + ' m', xyz(a.size))),
    'height': ('o', lambda s, a: _metres(a.size[2])),
    'bottom': ('o', lambda s, a: _metres(a.lo[2], 2)),
    'top': ('o', lambda s, a: _metres(a.hi[2], 2)),
    'volume': ('o', lambda s, a: (f'{num(np.prod(a.size), 3):.3f} cubic metres', num(np.prod(a.size), 3))),
    'larger': ('oo', _larger),
    'count': ('l', _count),
    'list': ('l', _list),
    'exists': ('l', lambda s, lab: ('Yes' if s.with_label(lab) else 'No', 'yes' if s.with_label(lab) else 'no')),
    'objects': ('', lambda s: _inventory(s)),
    'side': ('ooo', _side),
    'front': ('ooo', _front),
    'lateral': ('ooo', _lateral),
    'ahead': ('ooo', _ahead),
    'nearest': ('o', lambda s, a: _obj(_nearest(s, a), 'nothing')),
    'support': ('o', lambda s, a: _obj(support_of(s, a), 'floor')),
    'between': ('oo', lambda s, a, b: _obj(_between(s, a, b), 'nothing')),
    'distance': ('oo', lambda s, a, b: _metres(_planar(a, b))),
    'approach': ('o', lambda s, a: (xyz_text(p := approach_point(s, a)), xyz(p))),
}


def evaluate_fact(scene: Scene, name: str, args: list[str]) -> tuple[str, object]:
    """(text, value) of one fact; GroundingError for an unknown fact, wrong arguments or a missing object."""
    if name not in FACTS:
        raise GroundingError(f'unknown fact [{name}]')
    kinds, fn = FACTS[name]
    if len(args) != len(kinds):
        raise GroundingError(f'[{name}] takes {len(kinds)} argument(s), got {len(args)}')
    for k, a in zip(kinds, args):
        if k == 'l' and scene.classes and a not in scene.classes:  # a count of a class nobody detects is a guess
            raise GroundingError(f'[{name}] of {a!r}: not a class the map\'s objects are classified into')
    values = [scene.get(a) if k == 'o' else a for k, a in zip(kinds, args)]
    return fn(scene, *values)


# ---------------------------------------------------------------------------------------------- completions

@dataclass
class Grounded:
    """A completion with every element filled in from the records."""

    text: str                                            # in the published grammar (output_format)
    facts: list[dict] = field(default_factory=list)      # {'fact', 'args', 'value', 'text'}
    refs: list[str] = field(default_factory=list)        # ids referenced, in order of first mention
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _class_words(scene: Scene) -> re.Pattern:
    """A class word followed by a reference ('the desk <obj_3>'): the word is replaced by the record's class."""
    labels = {r.label for r in scene.records.values()} | set(scene.classes)
    words = sorted({label_text(x) for x in labels}, key=len, reverse=True)
    alt = '|'.join(re.escape(w) for w in words) or '(?!x)x'
    return re.compile(rf'\b(?P<word>{alt})\s+<(?P<id>[a-z][a-z_]*_\d+)>')


def asked_classes(question: str, classes) -> list[str]:
    """The classes ``question`` names (singular or plural, whole words; 'trash can' before 'can'), in order."""
    q, found = f' {re.sub(r"[^a-z ]", " ", question.lower())} ', []
    for c in sorted(set(classes), key=lambda c: -len(label_text(c))):
        for word in (plural(c), label_text(c)):
            if f' {word} ' in q:
                found.append((q.index(f' {word} '), c))
                q = q.replace(f' {word} ', ' ' + '#' * len(word) + ' ')
    return [c for _, c in sorted(found)]


def ground(text: str, scene: Scene, question: str | None = None) -> Grounded:
    """Fill in ``text``'s boxes, plan steps, facts and references from ``scene`` (see the module docstring).

    With the ``question``, a class argument (``[count chair]``, ``[exists lamp]``) is the class the question
    asks about: when the model wrote a class the question does not name and the question names exactly one,
    that one is counted (copying a noun is where a small model slips; a robot asked "how many tables" must
    be told the number of tables). Without it, or when the question names none or several, the model's
    class stands."""
    out = Grounded(text='')
    refs: list[str] = []
    asked = asked_classes(question, scene.classes or {r.label for r in scene.records.values()}) if question else []

    def note(ref_id: str) -> ObjectRecord | None:
        try:
            r = scene.get(ref_id)
        except GroundingError as exc:
            out.errors.append(str(exc))
            return None
        if r.id not in refs:
            refs.append(r.id)
        return r

    def box(m: re.Match) -> str:
        r = note(m['id'])
        if r is None:
            return m[0]
        return '<box>' + r.id + ' ' + ' '.join(f'{v:.2f}' for v in xyz([*r.center, *r.size])) + '</box>'

    held: list[ObjectRecord | None] = [None]
    opened: set[str] = set()

    def step(m: re.Match) -> str:
        r = note(m['id'])
        if r is None:
            return m[0]
        action = m['action']
        if action == 'navigate_to':
            p = approach_point(scene, r)
        elif action == 'place':
            p = place_point(r, held[0], inside=r.id in opened)
        else:
            p = r.center
        held[0] = r if action == 'pick' else held[0]
        if action == 'open':
            opened.add(r.id)
        return f'<step>{action} {r.id} ' + ' '.join(f'{v:.2f}' for v in xyz(p)) + '</step>'

    def fact(m: re.Match) -> str:
        args = m['args'].split()
        kinds = FACTS.get(m['name'], ('',))[0]
        if len(asked) == 1 and len(args) == len(kinds):
            args = [asked[0] if k == 'l' and a not in asked else a for k, a in zip(kinds, args)]
        try:
            for a in args:
                if REF.fullmatch(a):
                    note(a)
            value_text, value = evaluate_fact(scene, m['name'], args)
        except GroundingError as exc:
            out.errors.append(str(exc))
            return m[0]
        ids = [scene.get(a).id if REF.fullmatch(a) else a for a in args]
        out.facts.append({'fact': m['name'], 'args': ids, 'value': value, 'text': value_text})
        return value_text

    def mention(m: re.Match) -> str:
        r = note(m['id'])
        if r is None:
            return m[0]
        return object_text(r) if 'word' in m.groupdict() else f'({r.id})'

    text = _BOX.sub(box, text)
    text = _STEP.sub(step, text)
    text = FACT.sub(fact, text)
    text = _class_words(scene).sub(mention, text)
    out.text, out.refs = REF.sub(mention, text), refs
    stray = _markup_left(out.text)
    if stray:
        out.errors.append(f'unresolved markup {stray!r}: the model wrote a reference or fact out of the grammar')
    return out


_PUBLISHED = re.compile(r'</?(?:think|answer|plan)>|<box>[^<>\[\]]*</box>|<step>[^<>\[\]]*</step>')


def _markup_left(text: str) -> str:
    """The first stray '<', '>', '[' or ']' (with some context) once the published tags are removed: a fact or
    reference the grammar did not match, which would otherwise reach the robot as garbled text."""
    rest = _PUBLISHED.sub(' ', text)
    m = re.search(r'[<>\[\]]', rest)
    return '' if m is None else rest[max(0, m.start() - 20):m.end() + 20].strip()
