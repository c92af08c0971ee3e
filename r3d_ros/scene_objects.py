"""Object records of a scene map: what every published fact about an object is read from.

A record is one object proposal of the map (``r3d_ros.mapping.segmentation``, the model's object slots):
its identifier ``obj_k`` (the slot the model refers to as ``<obj_k>``), class (the model's class head, with its
probability), colour name (from the proposal's points), axis-aligned box (map frame, metres) and support /
proximity relations computed from the boxes. Answers name records by identifier and take every number, colour,
count and relation from them (:mod:`r3d_ros.grounding`), so a published text cannot disagree with its boxes.

The same records built from a synthetic scene's ground truth (:func:`records_from_scene`) let the data
generator write its reference answers with the very code that grounds the model's answers.

Colour names: the 12 basic colour terms of the synthetic scenes, with reference sRGB values from the xkcd colour
survey table shipped in matplotlib (``matplotlib.colors.XKCD_COLORS``); a proposal gets the term nearest in CIE
L*a*b* to the median colour of its brighter half (the lit faces: shading only darkens). The sRGB -> Lab formula is
written out below (a few lines; scikit-image / colour-science are not dependencies of this package).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import functools

import numpy as np

from r3d_ros.output_format import Box, Extents

COLOR_NAMES = ('red', 'green', 'blue', 'yellow', 'white', 'black', 'gray', 'brown', 'orange', 'purple', 'pink',
               'beige')
#: an object stands on another when its bottom is this close (m) to the other's top
ON_TOLERANCE = 0.06
#: two objects are next to each other when their footprints are this close (m) on the floor plane
NEXT_TO_GAP = 0.3


@dataclass
class ObjectRecord(Extents):
    """One object of the map as the robot is told about it."""

    id: str                                  # 'obj_k' (k: the model's object slot) or a ground-truth ref
    label: str                               # class ('chair', 'trash_can')
    color: str                               # basic colour term
    center: np.ndarray                       # (3,) box centre, map frame, metres
    size: np.ndarray                         # (3,) full extents
    confidence: float = 1.0                  # class probability (1.0 for ground truth)
    relations: list[dict] = field(default_factory=list)   # {'relation': 'on'|'under'|'next_to', 'target': id}

    def __post_init__(self):
        self.center = np.asarray(self.center, np.float64).reshape(3)
        self.size = np.abs(np.asarray(self.size, np.float64).reshape(3))


    @property
    def box(self) -> Box:
        return Box(self.id, tuple(float(v) for v in self.center), tuple(float(v) for v in self.size),
                   category=self.label)

    def related(self, relation: str) -> list[str]:
        return [r['target'] for r in self.relations if r['relation'] == relation]

    def to_dict(self) -> dict:
        return {'id': self.id, 'label': self.label, 'color': self.color,
                'center': [float(v) for v in self.center], 'size': [float(v) for v in self.size],
                'confidence': round(float(self.confidence), 3), 'relations': list(self.relations)}

    @classmethod
    def from_dict(cls, d: dict) -> ObjectRecord:
        return cls(id=str(d['id']), label=str(d['label']), color=str(d.get('color', '')), center=d['center'],
                   size=d['size'], confidence=float(d.get('confidence', 1.0)),
                   relations=list(d.get('relations') or []))


# ---------------------------------------------------------------------------------------------- colour

def lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in 0..1 -> CIE L*a*b* (D65)."""
    rgb = np.asarray(rgb, np.float64)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


@functools.lru_cache(maxsize=1)
def _reference_lab() -> np.ndarray:
    from matplotlib.colors import XKCD_COLORS, to_rgb

    return lab(np.array([to_rgb(XKCD_COLORS['xkcd:' + ('grey' if n == 'gray' else n)]) for n in COLOR_NAMES]))


def color_name(rgb: np.ndarray) -> str:
    """Basic colour term of a set of point colours ((N, 3), 0..1 or 0..255)."""
    rgb = np.asarray(rgb, np.float64).reshape(-1, 3)
    if not len(rgb):
        return 'unknown'
    if rgb.max() > 1.5:
        rgb = rgb / 255.0
    brightness = rgb.sum(1)
    lit = rgb[brightness >= np.quantile(brightness, 0.5)]
    d = ((lab(np.median(lit, 0)) - _reference_lab()) ** 2).sum(1)
    return COLOR_NAMES[int(d.argmin())]


# ---------------------------------------------------------------------------------------------- relations

def _footprint_gap(a: ObjectRecord, b: ObjectRecord) -> float:
    """Distance between the two boxes' footprints on the floor plane (0 when they overlap)."""
    gap = np.maximum(0.0, np.maximum(a.lo[:2] - b.hi[:2], b.lo[:2] - a.hi[:2]))
    return float(np.linalg.norm(gap))


def stands_on(a: ObjectRecord, b: ObjectRecord, tol: float = ON_TOLERANCE) -> bool:
    """``a`` rests on ``b``: a's bottom at b's top (within ``tol``) and a's centre over b's footprint."""
    over = bool(np.all(a.center[:2] >= b.lo[:2] - tol) and np.all(a.center[:2] <= b.hi[:2] + tol))
    return over and abs(float(a.lo[2] - b.hi[2])) <= tol and a.id != b.id


def add_relations(records: list[ObjectRecord]) -> list[ObjectRecord]:
    """Fill each record's ``relations`` (on / under / next_to) from the boxes; returns ``records``."""
    for r in records:
        r.relations = []
    for a in records:
        for b in records:
            if a is b:
                continue
            if stands_on(a, b):
                a.relations.append({'relation': 'on', 'target': b.id})
                b.relations.append({'relation': 'under', 'target': a.id})
            elif (a.id < b.id and not stands_on(b, a) and _footprint_gap(a, b) <= NEXT_TO_GAP
                  and a.lo[2] < 0.1 and b.lo[2] < 0.1):  # next_to: both on the floor, footprints close
                a.relations.append({'relation': 'next_to', 'target': b.id})
                b.relations.append({'relation': 'next_to', 'target': a.id})
    return records


# ---------------------------------------------------------------------------------------------- builders

def records_from_slots(slots: dict[int, np.ndarray], class_probs: np.ndarray | None,
                       class_names: tuple[str, ...] | list[str]) -> list[ObjectRecord]:
    """Records of the model's filled object slots: ``slots`` maps slot k -> its rows (M, 3 + F: xyz, rgb 0..1,
    ...), ``class_probs`` (K, C) the class head's probabilities (None: class 'object')."""
    out = []
    for k, rows in sorted(slots.items()):
        lo, hi = rows[:, :3].min(0), rows[:, :3].max(0)
        label, conf = 'object', 0.0
        if class_probs is not None and len(class_names):
            c = int(np.argmax(class_probs[k]))
            label, conf = class_names[c], float(class_probs[k][c])
        out.append(ObjectRecord(id=f'obj_{k}', label=label, color=color_name(rows[:, 3:6]), center=(lo + hi) / 2,
                                size=hi - lo, confidence=conf))
    return add_relations(out)


def records_from_scene(scene) -> list[ObjectRecord]:
    """Ground-truth records of a synthetic :class:`r3d_ros.scenes.types.Scene` (ids are the objects' refs)."""
    out = [ObjectRecord(id=o.ref, label=o.label, color=o.color_name, center=o.center, size=o.size)
           for o in scene.objects]
    return add_relations(out)
