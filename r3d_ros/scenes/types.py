"""In-memory records of the scene/data layer: objects, scenes and Scene-30K-shaped QA records.

Everything here is plain data (numpy + dataclasses), free of ROS, so the generator, the training pipeline,
the evaluator and the nodes share one definition.

Conventions: map frame, metres, z up, floor at z = 0. Object boxes are axis-aligned (``size`` holds the
full extents of the axis-aligned box around the object, already accounting for its ``yaw``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import json

import numpy as np

from r3d_ros.output_format import Box, Extents

# task names of the generated questions
ATTRIBUTE = 'attribute'     # colour / size of an object
COUNTING = 'counting'       # how many X are there
EXISTENCE = 'existence'     # is there an X
SPATIAL = 'spatial'         # left/right/front/behind from a viewpoint, nearest, on top of, between
DISTANCE = 'distance'       # how far is X from Y
GROUNDING = 'grounding'     # where is X -> box
PLANNING = 'planning'       # bring X to Y -> plan steps
TASKS = (ATTRIBUTE, COUNTING, EXISTENCE, SPATIAL, DISTANCE, GROUNDING, PLANNING)

#: instance id of points that belong to no object (floor, walls)
BACKGROUND = -1


@dataclass
class SceneObject(Extents):
    """One object of a scene with its ground truth."""

    id: int
    label: str
    color_name: str
    color_rgb: tuple[int, int, int]
    center: np.ndarray            # (3,) box centre, map frame, metres
    size: np.ndarray              # (3,) full extents of the axis-aligned box, metres
    yaw: float = 0.0              # rotation of the object's own shape about z (radians)
    parent_id: int | None = None  # the object this one stands on (support relation); None = floor

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64).reshape(3)
        self.size = np.asarray(self.size, dtype=np.float64).reshape(3)
        self.color_rgb = tuple(int(c) for c in self.color_rgb)

    @property
    def ref(self) -> str:
        return f'{self.label}_{self.id}'

    @property
    def box(self) -> Box:
        return Box(self.ref, tuple(float(v) for v in self.center), tuple(float(v) for v in self.size))


    def to_dict(self) -> dict:
        return {'id': int(self.id), 'label': self.label, 'color_name': self.color_name,
                'color_rgb': list(self.color_rgb), 'center': [float(v) for v in self.center],
                'size': [float(v) for v in self.size], 'yaw': float(self.yaw),
                'parent_id': None if self.parent_id is None else int(self.parent_id)}

    @classmethod
    def from_dict(cls, d: dict) -> SceneObject:
        return cls(id=int(d['id']), label=str(d['label']), color_name=str(d.get('color_name', '')),
                   color_rgb=tuple(d.get('color_rgb', (128, 128, 128))), center=d['center'], size=d['size'],
                   yaw=float(d.get('yaw', 0.0)), parent_id=d.get('parent_id'))


@dataclass
class Scene:
    """A scene: a coloured point cloud with per-point instance ids and the objects' ground truth."""

    scene_id: str
    points: np.ndarray            # (N, 3) float32, map frame
    colors: np.ndarray            # (N, 3) uint8
    instance: np.ndarray          # (N,) int32, object id or BACKGROUND
    objects: list[SceneObject] = field(default_factory=list)
    room_size: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float32).reshape(-1, 3)
        self.colors = np.ascontiguousarray(self.colors, dtype=np.uint8).reshape(-1, 3)
        self.instance = np.ascontiguousarray(self.instance, dtype=np.int32).reshape(-1)
        self.room_size = np.asarray(self.room_size, dtype=np.float64).reshape(3)
        if not (len(self.points) == len(self.colors) == len(self.instance)):
            raise ValueError('points, colors and instance must have the same length')

    def object(self, object_id: int) -> SceneObject:
        for obj in self.objects:
            if obj.id == object_id:
                return obj
        raise KeyError(object_id)

    def objects_with_label(self, label: str) -> list[SceneObject]:
        return [o for o in self.objects if o.label == label]

    def labels(self) -> list[str]:
        """Distinct object labels, sorted."""
        return sorted({o.label for o in self.objects})

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) corners of the axis-aligned bounding box of the points."""
        if len(self.points) == 0:
            return np.zeros(3), np.zeros(3)
        return self.points.min(axis=0).astype(np.float64), self.points.max(axis=0).astype(np.float64)

    def objects_json(self) -> str:
        return json.dumps({'scene_id': self.scene_id, 'room_size': [float(v) for v in self.room_size],
                           'objects': [o.to_dict() for o in self.objects]}, sort_keys=True)


@dataclass
class QARecord:
    """One Scene-30K-shaped record: question, chain-of-thought completion and its parsed parts."""

    scene_id: str
    question: str
    cot: str                      # full '<think>…</think><answer>…</answer>' text (the training target)
    answer: str                   # final answer text without box/plan markup
    task: str = ''
    think: str = ''
    boxes: list[dict] = field(default_factory=list)   # {'ref', 'center': [3], 'size': [3]}
    plan: list[dict] = field(default_factory=list)    # {'action', 'target', 'position': [3]}
    short_answer: str = ''        # the bare answer ('3', 'red', 'left', 'chair_4'); '' when unknown (real data)
    objects: list[dict] = field(default_factory=list)  # every object the completion refers to: ref, label, box
    key_fact: dict = field(default_factory=dict)       # {'fact', 'value', ('args')}: what a right answer states

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> QARecord:
        return cls(scene_id=str(d['scene_id']), question=str(d['question']), cot=str(d.get('cot', '')),
                   answer=str(d.get('answer', '')), task=str(d.get('task', '')), think=str(d.get('think', '')),
                   boxes=list(d.get('boxes') or []), plan=list(d.get('plan') or []),
                   short_answer=str(d.get('short_answer', '')), objects=list(d.get('objects') or []),
                   key_fact=dict(d.get('key_fact') or {}))

    @classmethod
    def from_json(cls, text: str) -> QARecord:
        return cls.from_dict(json.loads(text))
