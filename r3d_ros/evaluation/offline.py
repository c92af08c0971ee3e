"""Evaluation without ROS: scene clouds (a dataset, or a bag fused offline) -> ScenePipeline -> answers.

On a bag, the map is fused the way the ``scene_map`` node fuses it (same :class:`r3d_ros.mapping.VoxelMap`,
same parameters from ``config/scene_map.yaml``, poses interpolated from ``odom`` by
:class:`r3d_ros.mapping.PoseBuffer`) from every cloud stamped up to the question's time; the live graph
answers from the last map ``scene_map`` published before the question, so the two agree when no cloud was
dropped on the way (best-effort QoS, the node's drop-oldest queue) and the last publication came after the
last cloud. Greedy decoding and the seeded point subsampling of the processor make the model part
deterministic; see :data:`AGREEMENT` for the tolerance ``r3d-eval --compare`` checks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml

from r3d_ros.evaluation.annotations import Question

#: Largest accepted |live - offline| per metric on the same bag and model (metrics x100 for captions,
#: shares 0..1 otherwise). Equal maps give identical answers (0 difference); the slack covers a question
#: whose map lost a frame live, which can change that one answer: one answer in n moves a mean by 1/n.
AGREEMENT = {'KeyFact': 0.1, 'CIDEr': 10.0, 'BLEU-4': 5.0, 'METEOR': 3.0, 'ROUGE-L': 5.0, 'EM': 0.1, 'EM-R': 0.1,
             'Acc@0.25': 0.1, 'Acc@0.5': 0.1, 'PlanStep': 0.1}


def scene_map_params(overrides: dict | None = None) -> dict:
    from r3d_ros.ros_env import config_path

    params = yaml.safe_load(config_path('scene_map.yaml').read_text())['scene_map']['ros__parameters']
    params.update(overrides or {})
    return params


def fuse_bag(bag: str | Path, until_ns: int | None = None, params: dict | None = None,
             points_topic: str = '/points', odom_topic: str = '/odom') -> tuple[np.ndarray, np.ndarray]:
    """The map ``scene_map`` would build from the bag's clouds (stamped <= ``until_ns``): (xyz, rgb)."""
    from r3d_ros.bags.io import deserialize, odometry_matrix, read_messages
    from r3d_ros.mapping import PoseBuffer, VoxelMap
    from r3d_ros.pointcloud import PointCloudError, xyz_rgb_from_cloud

    p = scene_map_params(params)
    vmap = VoxelMap(p['voxel_size'], p['max_voxels'], p['min_range'], p['max_range'])
    poses = PoseBuffer(max_size=1_000_000, max_extrapolation=p['max_pose_age'])
    use_pose = p.get('pose_source', 'odom') != 'none'
    if use_pose:
        for _, msgtype, _, data in read_messages(bag, [odom_topic]):
            msg = deserialize(data, msgtype)
            s = msg.header.stamp
            poses.add(s.sec + s.nanosec * 1e-9, odometry_matrix(msg))
    stop = None if until_ns is None else until_ns + 1
    for _, msgtype, _t, data in read_messages(bag, [points_topic], stop_ns=stop):
        msg = deserialize(data, msgtype)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        try:
            xyz, rgb = xyz_rgb_from_cloud(msg)
        except PointCloudError:
            continue
        pose = None
        if use_pose:
            pose = poses.lookup(stamp)
            if pose is None:
                continue
        vmap.integrate(xyz, rgb, pose=pose, stamp=stamp)
    xyz, rgb, _ = vmap.snapshot()
    return xyz, rgb


def load_pipeline(model_path: str | None = None, device: str = 'auto', num_views: int | None = None,
                  max_new_tokens: int | None = None):
    """ScenePipeline with the reasoner node's parameters (config/reasoner.yaml), overridable."""
    from r3d_ros.pipeline import ScenePipeline
    from r3d_ros.ros_env import config_path

    p = yaml.safe_load(config_path('reasoner.yaml').read_text())['reasoner']['ros__parameters']
    return ScenePipeline.from_pretrained(model_path or p.get('model_path') or None, device=device,
                                         num_views=p['num_views'] if num_views is None else num_views,
                                         max_new_tokens=p['max_new_tokens'] if max_new_tokens is None
                                         else max_new_tokens, max_question_chars=p['max_query_chars'])


def answer_questions(pipeline, questions: Sequence[Question], scene_for: Callable[[Question], tuple],
                     progress: bool = True) -> dict[str, dict]:
    """{id: answer dict} (the reasoner's ``answer`` JSON shape, plus ``latency_s``)."""
    from tqdm import tqdm

    out = {}
    for q in tqdm(questions, desc='answer (offline)', unit='q', disable=not progress):
        xyz, rgb = scene_for(q)
        res = pipeline.answer(xyz, rgb, q.question, query_id=q.id)
        res.task = q.task or None
        d = res.to_dict()
        d['latency_s'] = res.timings.get('total_s')
        out[q.id] = d
    return out


def evaluate_bag_offline(bag: str | Path, questions: Sequence[Question], pipeline, question_delay: float = 2.0,
                         map_params: dict | None = None, progress: bool = True) -> tuple[dict[str, dict], dict]:
    """Answers for ``questions`` on the bag fused offline at each question's time; (answers, maps by time)."""
    from r3d_ros.bags.io import bag_info

    info = bag_info(bag)
    maps: dict[int, tuple] = {}

    def when(q: Question) -> int:
        return info.start_ns + int(q.time * 1e9) if q.time is not None else info.end_ns + int(question_delay * 1e9)

    def scene_for(q: Question):
        t = min(when(q), info.end_ns)
        if t not in maps:
            maps[t] = fuse_bag(bag, t, map_params)
        return maps[t]

    return answer_questions(pipeline, questions, scene_for, progress), maps


def dataset_questions(data_dir: str | Path, split: str = 'test', limit: int = 0) -> list[Question]:
    """Questions of a split of an ``r3d-make-data`` directory, ids ``<scene_id>-<nnn>`` as scene bags use."""
    from r3d_ros.scenes.dataset import load_records

    by_scene = defaultdict(list)
    for r in load_records(Path(data_dir) / f'{split}.jsonl'):
        by_scene[r.scene_id].append(r)
    out = [Question.from_record(r, f'{sid}-{i:03d}') for sid, recs in sorted(by_scene.items())
           for i, r in enumerate(recs)]
    return out[:limit] if limit else out


def evaluate_dataset_offline(data_dir: str | Path, questions: Sequence[Question], pipeline,
                             progress: bool = True) -> dict[str, dict]:
    """Answers from each question's scene cloud in the dataset's scene store (the ground-truth cloud)."""
    from r3d_ros.scenes.dataset import SceneStore

    store = SceneStore(data_dir)
    cache: dict[str, tuple] = {}

    def scene_for(q: Question):
        if q.scene_id not in cache:
            s = store.load(q.scene_id)
            cache.clear()
            cache[q.scene_id] = (s.points, s.colors)
        return cache[q.scene_id]

    return answer_questions(pipeline, questions, scene_for, progress)
