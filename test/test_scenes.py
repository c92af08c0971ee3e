"""Synthetic scenes, QA generation, the quality filter, the data writer and the simulated sensor (no ROS)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from r3d_ros.grounding import Scene as GroundingScene
from r3d_ros.grounding import ground
from r3d_ros.output_format import is_format_valid, parse_completion
from r3d_ros.plan_validation import validate_plan
from r3d_ros.scene_objects import records_from_scene
from r3d_ros.scenes.dataset import load_records, load_scene, make_dataset, quality_filter
from r3d_ros.scenes.qa import generate_qa
from r3d_ros.scenes.sensor_sim import SimulatedSensor, lap_map, look_at
from r3d_ros.scenes.synthetic import generate_scene
from r3d_ros.scenes.types import TASKS, QARecord, Scene, SceneObject
from r3d_ros.scenes.verify import solve


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_gives_byte_identical_data(tmp_path):
    a = make_dataset(tmp_path / 'a', 4, seed=11)
    b = make_dataset(tmp_path / 'b', 4, seed=11, workers=2)
    make_dataset(tmp_path / 'c', 4, seed=12)
    assert a == b
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
    assert _digest(tmp_path / 'a') != _digest(tmp_path / 'c')
    recs = load_records(tmp_path / 'a' / 'train.jsonl')
    assert recs and all(is_format_valid(r.cot) for r in recs)
    scene = load_scene(tmp_path / 'a', recs[0].scene_id)
    again = generate_scene(0)  # a different scene: the stored one must round-trip its own objects
    assert scene.objects and scene.objects[0].ref != '' and len(scene.points) == len(scene.colors)
    assert again.scene_id != scene.scene_id


def test_scene_ground_truth_boxes_hold_their_points():
    for seed in range(5):
        scene = generate_scene(seed)
        assert 5 <= len(scene.objects) <= 30
        for obj in scene.objects:
            pts = scene.points[scene.instance == obj.id]
            assert len(pts) > 0
            assert (pts >= obj.lo - 1e-3).all() and (pts <= obj.hi + 1e-3).all(), obj.ref
            if obj.parent_id is not None:
                assert abs(scene.object(obj.parent_id).hi[2] - obj.lo[2]) < 1e-6


def test_answers_agree_with_independent_geometry():
    n = 0
    seen_tasks = set()
    for seed in range(30):
        scene = generate_scene(100 + seed)
        truth = GroundingScene.of(records_from_scene(scene), scene.points)
        for rec in generate_qa(scene, seed):
            assert solve(scene, rec) == rec.short_answer, (rec.question, rec.short_answer)
            # the published form: the completion's references and facts filled in from the true records
            grounded = ground(rec.cot, truth)
            assert grounded.ok, (rec.question, grounded.errors)
            parsed = parse_completion(grounded.text)
            assert parsed.format_valid and parsed.think == rec.think and parsed.answer_text == rec.answer
            key = rec.key_fact
            if key['fact'] not in ('box', 'plan'):   # the key fact is among the facts the text states
                assert {'fact': key['fact'], 'args': key['args'], 'value': key['value']} in [
                    {k: f[k] for k in ('fact', 'args', 'value')} for f in grounded.facts], rec.question
            for box in rec.boxes:  # boxes in the completion are the objects' ground truth
                obj = next(o for o in scene.objects if o.ref == box['ref'])
                assert np.allclose(box['center'], obj.center, atol=0.006)
                assert np.allclose(box['size'], obj.size, atol=0.006)
            if rec.plan:
                known = {o.ref: o.box for o in scene.objects}
                check = validate_plan(parsed.plan, known, scene.bounds())
                assert check.ok, check.errors
            seen_tasks.add(rec.task)
            n += 1
    assert n > 300 and seen_tasks == set(TASKS)


def test_quality_filter_keeps_generated_and_drops_bad_records():
    scene = generate_scene(5)
    recs = generate_qa(scene, 5)
    kept, counts = quality_filter(recs, reanswer=lambda r: solve(scene, r))
    assert counts['kept'] == len(recs) == len(kept)
    good = recs[0]
    bad = [
        QARecord(good.scene_id, good.question, 'no tags at all', good.answer, short_answer=good.short_answer),
        QARecord(good.scene_id, good.question, '<think>First, x. Then y. Finally z.</think><answer>' +
                 ' '.join(['word'] * 25) + '</answer>', 'word'),
        QARecord(good.scene_id, good.question, good.cot, good.answer, task=good.task, boxes=good.boxes,
                 think=good.think, short_answer='purple elephant in the hallway'),
    ]
    kept, counts = quality_filter(bad, reanswer=lambda r: solve(scene, r))
    assert kept == []
    assert counts['dropped_format'] == 1 and counts['dropped_think_words'] == 1
    assert counts['dropped_consistency'] == 1


def _wall_scene() -> Scene:
    """A wall at x = 3 (dense grid of points) and a box-shaped object at x = 1.5 in front of it."""
    ys, zs = np.meshgrid(np.linspace(-2, 2, 161), np.linspace(0, 2.5, 101))
    wall = np.stack([np.full(ys.size, 3.0), ys.ravel(), zs.ravel()], axis=1)
    g = np.linspace(-0.3, 0.3, 25)
    a, b = np.meshgrid(g, g)
    face = np.stack([np.full(a.size, 1.5), a.ravel(), 1.0 + b.ravel()], axis=1)   # the face seen by the sensor
    pts = np.concatenate([wall, face]).astype(np.float32)
    inst = np.concatenate([np.full(len(wall), -1), np.zeros(len(face))]).astype(np.int32)
    obj = SceneObject(0, 'box', 'red', (200, 30, 30), center=(1.55, 0, 1.0), size=(0.1, 0.6, 0.6))
    return Scene('wall', pts, np.full((len(pts), 3), 128, np.uint8), inst, [obj], (6, 4, 2.5))


def test_occlusion_hides_points_behind_an_object():
    scene = _wall_scene()
    pose = look_at((0.0, 0.0, 1.0), (3.0, 0.0, 1.0))
    for model in ('depth_camera', 'lidar'):
        sensor = SimulatedSensor(scene, model, noise=False, channels=64, lidar_vfov_deg=(-40, 40))
        xyz, rgb, idx = sensor.capture_indexed(pose)
        seen = scene.points[idx]
        # wall points whose line of sight passes through the object's face (shrunk by a margin) are hidden
        wall = scene.points[scene.instance == -1]
        s = 1.5 / 3.0
        shadow = (np.abs(wall[:, 1] * s) < 0.25) & (np.abs((wall[:, 2] - 1.0) * s) < 0.25)
        hidden = {tuple(p) for p in wall[shadow]}
        assert not any(tuple(p) in hidden for p in seen), model
        assert (scene.instance[idx] == 0).sum() > 20, model                  # the occluder itself is seen
        assert (scene.instance[idx] == -1).sum() > 100, model                # and the wall around it
        # sensor-frame output: x forward, so everything seen is ahead of the sensor
        assert (xyz[:, 0] > 0).all() and len(xyz) == len(rgb)


def test_sensor_frame_and_noise():
    scene = generate_scene(2)
    pose = look_at((0.0, 0.0, 1.2), (1.0, 0.5, 0.8))
    clean = SimulatedSensor(scene, noise=False)
    noisy = SimulatedSensor(scene, noise=True, seed=1)
    xyz0, _, idx0 = clean.capture_indexed(pose)
    xyz1, _, idx1 = noisy.capture_indexed(pose)
    assert np.array_equal(idx0, idx1) and len(idx0) > 100
    back = xyz0.astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]     # sensor -> map reproduces the points
    assert np.allclose(back, scene.points[idx0], atol=1e-4)
    err = np.linalg.norm(xyz1 - xyz0, axis=1)
    assert 0 < np.median(err) < 0.05


def test_a_lap_map_is_a_partial_voxel_map_labelled_by_nearest_scene_point():
    scene = generate_scene(4, num_objects=(6, 8))
    xyz, rgb, instance = lap_map(scene, n_frames=12)
    assert len(xyz) == len(rgb) == len(instance) > 1000
    keys = np.floor(xyz / 0.05).astype(np.int64)
    assert len(np.unique(keys, axis=0)) == len(keys)                     # one point per 5 cm voxel
    lo, hi = scene.bounds()
    # range noise grows with depth (sigma 0.11 m at 8 m), so a few far voxels lie outside the room
    assert ((xyz >= lo - 0.1) & (xyz <= hi + 0.1)).all(1).mean() > 0.97
    # the labels are the scene's: voxels of an object lie in (or within noise of) that object's box
    for obj in scene.objects:
        mine = xyz[instance == obj.id]
        if len(mine):
            assert (np.abs(mine - obj.center) <= obj.size / 2 + 0.25).all(), obj.ref
    assert len(set(instance.tolist()) - {-1}) >= 3                      # several objects seen in a lap


def test_every_generator_question_has_a_held_out_wording():
    import random

    from r3d_ros.scenes.paraphrase import paraphrase, paraphrase_records

    recs = [r for seed in range(20) for r in generate_qa(generate_scene(300 + seed), seed)]
    out, unmatched = paraphrase_records(recs, seed=1)
    assert unmatched == 0 and {r.task for r in recs} == set(TASKS)
    generated = {r.question for r in recs}
    for a, b in zip(recs, out):
        assert b.question != a.question and b.question not in generated   # never a generator wording
        assert (b.key_fact, b.objects, b.answer, b.scene_id) == (a.key_fact, a.objects, a.answer, a.scene_id)
    assert paraphrase('What is the meaning of life?', random.Random(0)) is None
