"""Loaders for real formats, on small hand-written files under test/data/scenes/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from r3d_ros.scenes.loaders import load_npy, load_ply, load_scene30k, load_scene_cloud

DATA = Path(__file__).parent / 'data' / 'scenes'


def test_scene30k_jsonl_maps_to_records():
    recs = load_scene30k(DATA / 'scene30k_sample.jsonl')
    assert [r.scene_id for r in recs] == ['scene0000_00', 'scene0011_00', 'scene0011_00']
    assert recs[0].think.startswith('First, I locate the desk')
    assert recs[0].answer == 'The chair next to the desk is brown, matching the wooden desk beside it.'
    assert recs[1].boxes == [{'ref': 'trash_can_3', 'center': [1.2, -0.5, 0.25], 'size': [0.3, 0.3, 0.5]}]
    assert recs[1].short_answer == 'by the door' and recs[1].answer == 'The trash can is by the door.'
    assert [s['action'] for s in recs[2].plan] == ['navigate_to', 'pick', 'navigate_to', 'place']
    assert recs[2].plan[3]['position'] == [1.8, 0.1, 0.8]


def test_scene30k_json_array_and_bad_items(tmp_path):
    path = tmp_path / 'arr.json'
    path.write_text('[{"scene_id": "s", "question": "q?", "cot": "<think>t</think><answer>a</answer>"}]')
    (rec,) = load_scene30k(path)
    assert rec.answer == 'a' and rec.think == 't'
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"question": "no scene"}\n')
    with pytest.raises(ValueError):
        load_scene30k(bad)


def test_ply_with_vertex_colours():
    scene = load_ply(DATA / 'scene0000_00_tiny.ply')
    assert scene.scene_id == 'scene0000_00'
    assert scene.points.shape == (5, 3) and scene.points.dtype == np.float32
    assert scene.colors.tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [200, 100, 50]]
    assert np.allclose(scene.points[4], [1.5, 2.5, 0.5])
    assert (scene.instance == -1).all()


def test_npy_n_by_6_both_colour_scales(tmp_path):
    arr = np.array([[0, 0, 0, 255, 128, 0, 7], [1, 2, 3, 0, 0, 255, 8]], dtype=np.float32)
    np.save(tmp_path / 'scene0001_00_vert.npy', arr)
    scene = load_scene_cloud(tmp_path / 'scene0001_00_vert.npy', instance_column=6)
    assert scene.scene_id == 'scene0001_00'
    assert scene.colors.tolist() == [[255, 128, 0], [0, 0, 255]] and scene.instance.tolist() == [7, 8]
    unit = arr[:, :6].copy()
    unit[:, 3:] /= 255.0
    np.save(tmp_path / 'unit.npy', unit)
    assert load_npy(tmp_path / 'unit.npy').colors.tolist() == [[255, 128, 0], [0, 0, 255]]
    np.save(tmp_path / 'bad.npy', np.zeros((3, 4)))
    with pytest.raises(ValueError):
        load_npy(tmp_path / 'bad.npy')
