"""Training data: Scene-30K-shaped records + a scene store, turned into trl datasets and model batches.

On disk (written by ``r3d-make-data``, see ``r3d_ros.scenes``)::

    DIR/train.jsonl, DIR/val.jsonl, DIR/test.jsonl   one QARecord per line
    DIR/scenes/<scene_id>.npz                         points (N,3) float32, colors (N,3) uint8, ...

SFT rows carry ``question``, ``completion`` (the CoT target) and ``scene_id``; :class:`SceneCollator` loads
the scene's points and runs the model's processor, which masks the labels to the completion tokens.
GRPO rows carry ``prompt`` (the processor's prompt text), ``scene_id`` and the reference columns the
rewards read (``answer``, ``boxes``, ``task``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import functools
import json
from pathlib import Path

import numpy as np

from r3d_ros.scenes.types import QARecord

SPLITS = ('train', 'val', 'test')


def load_records(path: str | Path, limit: int | None = None, tasks: Sequence[str] | None = None) -> list[QARecord]:
    """QARecords from a JSON-lines file (optionally only some tasks, and at most ``limit``)."""
    out = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            if not line.strip():
                continue
            rec = QARecord.from_json(line)
            if tasks and rec.task not in tasks:
                continue
            out.append(rec)
            if limit is not None and len(out) >= limit:
                break
    return out


def split_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f'{split}.jsonl'


def object_class_names() -> tuple[str, ...]:
    """The synthetic scenes' object classes (``r3d_ros.scenes.synthetic.CATEGORIES``), in a fixed order."""
    from r3d_ros.scenes.synthetic import CATEGORIES

    return tuple(CATEGORIES)


def proposal_classes(labels: np.ndarray, instance: np.ndarray, objects: list[dict]) -> np.ndarray:
    """Per point, the class index of the labelled object most of its proposal's points belong to (-1 for
    structure, or a proposal mostly on background)."""
    index = {name: i for i, name in enumerate(object_class_names())}
    label_of = {int(o['id']): index.get(o['label'], -1) for o in objects}
    out = np.full(len(labels), -1, np.float32)
    for k in range(int(labels.max(initial=-1)) + 1):
        ids = instance[labels == k]
        if len(ids):
            values, counts = np.unique(ids, return_counts=True)
            best = int(values[counts.argmax()])
            out[labels == k] = label_of.get(best, -1)
    return out


class SceneClouds:
    """Scene point clouds ((N, 8) float32: xyz metres, rgb 0..1, object-proposal label, the class of the
    object the proposal covers) by scene id, read from ``DIR/scenes``.

    Each whole scene is split into object proposals once (``r3d_ros.mapping.segmentation``, as the runtime
    does on its map; the label column is -1 for structure), then subsampled to ``max_points`` (seeded) and
    kept in memory: the processor subsamples again to the model's ``num_points`` each batch, and whole
    scenes (30k-150k points) would dominate data time. A processor without object tokens ignores the
    two label columns; ``segment=False`` skips the proposals (both columns -1) for models without object
    tokens."""

    def __init__(self, data_dir: str | Path, max_points: int | None = 8192, seed: int = 0, segment: bool = True):
        self.scene_dir = Path(data_dir) / 'scenes'
        self.max_points, self.seed, self.segment = max_points, seed, segment

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one store per run; the cache is the point
    def __getitem__(self, scene_id: str) -> np.ndarray:
        from r3d_ros.mapping.segmentation import segment_objects

        path = self.scene_dir / f'{scene_id}.npz'
        if not path.exists():
            raise KeyError(f'scene {scene_id!r} not in {self.scene_dir}')
        with np.load(path, allow_pickle=False) as z:
            pts = np.asarray(z['points'], np.float32)
            rgb = np.asarray(z['colors'], np.float32) / 255.0
            instance = np.asarray(z['instance']) if 'instance' in z.files else np.full(len(pts), -1)
            meta = json.loads(str(z['objects'].reshape(-1)[0])) if 'objects' in z.files else []
        objects = meta.get('objects', []) if isinstance(meta, dict) else meta
        cloud = np.concatenate([pts, rgb], axis=1)
        labels = segment_objects(cloud) if self.segment else np.full(len(cloud), -1, np.int64)
        classes = proposal_classes(labels, instance, objects)
        cloud = np.concatenate([cloud, labels[:, None].astype(np.float32), classes[:, None]], axis=1)
        if self.max_points is not None and len(cloud) > self.max_points:
            idx = np.random.default_rng(self.seed).choice(len(cloud), self.max_points, replace=False)
            cloud = cloud[np.sort(idx)]
        return cloud


#: orbit radii (share of the room's smaller side) of successive laps of a scene (``LapClouds``)
LAP_RADII = (0.3, 0.2, 0.4)


class LapClouds:
    """Scene clouds as the robot maps them, in :class:`SceneClouds`' layout: a simulated depth camera's lap of the
    room fused into the voxel map (``r3d_ros.scenes.sensor_sim.lap_map``, sim_sensor's orbit and scene_map's 5 cm
    voxels), split into proposals, each labelled with the class of the object it covers. Partial and noisy where
    whole scene clouds are neither. ``lap`` picks the orbit (``LAP_RADII``) and the sensor noise seed; the whole
    map is kept, as the reasoner reads the whole map."""

    def __init__(self, data_dir: str | Path, lap: int = 0):
        self.scene_dir, self.lap = Path(data_dir) / 'scenes', int(lap)

    @functools.lru_cache(maxsize=512)  # noqa: B019 - one store per run; the cache is the point
    def __getitem__(self, scene_id: str) -> np.ndarray:
        from r3d_ros.mapping.segmentation import segment_objects
        from r3d_ros.scenes.dataset import read_scene
        from r3d_ros.scenes.sensor_sim import lap_map

        path = self.scene_dir / f'{scene_id}.npz'
        if not path.exists():
            raise KeyError(f'scene {scene_id!r} not in {self.scene_dir}')
        scene = read_scene(path)
        xyz, rgb, instance = lap_map(scene, seed=self.lap, radius_fraction=LAP_RADII[self.lap % len(LAP_RADII)])
        cloud = np.concatenate([xyz, rgb / np.float32(255.0)], axis=1).astype(np.float32)
        labels = segment_objects(cloud)
        classes = proposal_classes(labels, instance, [o.to_dict() for o in scene.objects])
        return np.concatenate([cloud, labels[:, None].astype(np.float32), classes[:, None]], axis=1)


#: where a model with a view tower gets its views (issue 22's ablation): the question's selected views (3D-R1
#: Eq. 6-7, as the reasoner picks them), the same with Eq. 7's fitted weights, the same ring of views for every
#: question, or none
VIEW_MODES = ('selected', 'learned', 'ring', 'none')


class SceneViews:
    """Rendered views (RGB uint8 + depth metres) per (scene, question), as the reasoner feeds a model with a view
    tower: ``k`` views of ``size`` px of the whole scene cloud (the map the reasoner would hold), the selector's
    top k for the question (``mode='selected'``; ``'learned'``: with Eq. 7's fitted weights) or one ring of k
    (``'ring'``). Rendering and scoring take about
    0.3 s a question on one core, so ``build`` renders a split once (worker processes) into
    ``DIR/views/<mode>-<k>x<size>-<split>.npz`` and later runs read it; a question not in it is rendered then."""

    def __init__(self, data_dir: str | Path, mode: str = 'selected', k: int = 6, size: int = 64):
        if mode not in VIEW_MODES[:-1]:
            raise ValueError(f'views: mode {mode!r} is not one of {VIEW_MODES[:-1]}')
        self.data_dir, self.mode, self.k, self.size = Path(data_dir), mode, int(k), int(size)
        self._views: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def cache_path(self, split: str) -> Path:
        return self.data_dir / 'views' / f'{self.mode}-{self.k}x{self.size}-{split}.npz'

    def key(self, scene_id: str, question: str) -> str:
        return scene_id if self.mode == 'ring' else f'{scene_id}\t{question}'

    @functools.cached_property
    def selector(self):
        from r3d_ros.views import ViewSelector, ViewSelectorConfig

        return ViewSelector(ViewSelectorConfig(top_k=self.k, image_size=self.size,
                                               learned_weights=self.mode == 'learned'))

    @functools.lru_cache(maxsize=2)  # noqa: B019 - questions come scene by scene: read each scene once, not per question
    def _scene(self, scene_id: str):
        from r3d_ros.scenes.dataset import read_scene

        return read_scene(self.data_dir / 'scenes' / f'{scene_id}.npz')

    def render(self, scene_id: str, question: str) -> tuple[np.ndarray, np.ndarray]:
        """(rgb (k, S, S, 3) uint8, depth (k, S, S) float16) for one question."""
        scene = self._scene(scene_id)
        views = (self.selector.ring(scene.points, scene.colors, self.k) if self.mode == 'ring' else
                 self.selector.select(scene.points, scene.colors, question, self.k).views)
        return np.stack([v.rgb for v in views]), np.stack([v.depth for v in views]).astype(np.float16)

    def __call__(self, scene_id: str, question: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The views as the processor takes them: k RGB images and k depth maps."""
        key = self.key(scene_id, question)
        if key not in self._views:
            self._views[key] = self.render(scene_id, question)
        rgb, depth = self._views[key]
        return list(rgb), [d.astype(np.float32) for d in depth]

    def processor_inputs(self, pairs) -> dict:
        """``views`` and ``depths`` for the processor, per (scene id, question) of a batch."""
        rendered = [self(scene_id, question) for scene_id, question in pairs]
        return {'views': [v for v, _ in rendered], 'depths': [d for _, d in rendered]}

    def load(self, split: str) -> bool:
        path = self.cache_path(split)
        if not path.exists():
            return False
        with np.load(path, allow_pickle=False) as z:
            self._views.update({k: (r, d) for k, r, d in zip(z['keys'].tolist(), z['rgb'], z['depth'])})
        return True

    def build(self, split: str, workers: int = 1, progress: bool = True) -> Path:
        """Render every question of ``split`` (or every scene, for rings) into its cache file."""
        from concurrent.futures import ProcessPoolExecutor

        from tqdm.auto import tqdm

        pairs = {self.key(r.scene_id, r.question): (r.scene_id, r.question)
                 for r in load_records(split_path(self.data_dir, split))}
        keys = list(pairs)
        with ProcessPoolExecutor(workers, initializer=_one_thread) as pool:
            rendered = list(tqdm(pool.map(_render_views, [(self.data_dir, self.mode, self.k, self.size, *pairs[k])
                                                          for k in keys], chunksize=8),
                                 total=len(keys), desc=f'{self.mode} views, {split}', disable=not progress))
        path = self.cache_path(split)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, keys=np.array(keys), rgb=np.stack([r for r, _ in rendered]),
                 depth=np.stack([d for _, d in rendered]))
        return path


def _one_thread():
    import torch

    torch.set_num_threads(1)


def _render_views(job) -> tuple[np.ndarray, np.ndarray]:
    data_dir, mode, k, size, scene_id, question = job
    return _views_of(data_dir, mode, k, size).render(scene_id, question)


@functools.lru_cache(maxsize=2)
def _views_of(data_dir, mode, k, size) -> SceneViews:
    """One SceneViews (its selector loaded once) per worker process."""
    return SceneViews(data_dir, mode, k, size)


def _boxes_json(boxes: list[dict]) -> str:
    return json.dumps(boxes or [])


def sft_rows(records: Iterable[QARecord]) -> list[dict]:
    """``objects`` (JSON): the ground-truth objects the completion's references name, for the processor to turn
    into object slots."""
    return [{'question': r.question, 'completion': r.cot, 'scene_id': r.scene_id, 'task': r.task,
             'objects': json.dumps(r.objects or [])} for r in records]


def grpo_rows(records: Iterable[QARecord], processor) -> list[dict]:
    """Rows for GRPOTrainer: the prompt text (placeholders included) and what the rewards compare with.
    ``boxes`` is a list of {'ref', 'center', 'size'} dicts (empty when the record has no box); ``key_fact``,
    ``objects`` and ``plan`` (JSON) are what the key-fact reward checks."""
    return [{'prompt': processor.prompt(r.question), 'question': r.question, 'scene_id': r.scene_id,
             'answer': r.answer, 'boxes': [{'ref': b['ref'], 'center': [float(v) for v in b['center']],
                                            'size': [float(v) for v in b['size']]} for b in (r.boxes or [])],
             'task': r.task, 'cot': r.cot, 'key_fact': json.dumps(r.key_fact or {}),
             'objects': json.dumps(r.objects or []), 'plan': json.dumps(r.plan or [])} for r in records]


def to_dataset(rows: list[dict]):
    from datasets import Dataset

    # boxes is a ragged list-of-dicts column: keep it as JSON text for Arrow, decode in the reward adapter
    rows = [{**r, 'boxes': _boxes_json(r['boxes'])} if 'boxes' in r else r for r in rows]
    return Dataset.from_list(rows)


class SceneCollator:
    """SFT collator: rows -> processor batch (input_ids, attention_mask, point_clouds, labels on the completion;
    with ``views``, each question's rendered views and depths for the model's view tower)."""

    def __init__(self, processor, clouds: SceneClouds, max_length: int | None = None, views: SceneViews | None = None):
        self.processor, self.clouds, self.max_length, self.views = processor, clouds, max_length, views

    def __call__(self, rows: list[dict]) -> dict:
        views = {} if self.views is None else \
            self.views.processor_inputs((r['scene_id'], r['question']) for r in rows)
        batch = self.processor(questions=[r['question'] for r in rows],
                               point_clouds=[self.clouds[r['scene_id']] for r in rows], **views,
                               targets=[r['completion'] for r in rows],
                               target_objects=[json.loads(r.get('objects') or '[]') for r in rows])
        if self.max_length is not None and batch['input_ids'].shape[1] > self.max_length:
            for k in ('input_ids', 'attention_mask', 'labels'):
                batch[k] = batch[k][:, :self.max_length]
        return dict(batch)


def answer_prior(records: Iterable[QARecord]) -> dict[str, str]:
    """Most common answer text per task (the answer-prior baseline of the results table)."""
    from collections import Counter

    counts: dict[str, Counter] = {}
    for r in records:
        counts.setdefault(r.task, Counter())[r.answer] += 1
    return {task: c.most_common(1)[0][0] for task, c in counts.items()}
