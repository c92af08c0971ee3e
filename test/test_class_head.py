"""The shape class head: object classes from a descriptor of each proposal's rows (``object_class_head: shape``),
fitted by ``r3d-train classes`` (training/classes.py); the records' classes, counts and class words come from it."""

import numpy as np
import pytest
import torch

from r3d_ros.model.point_encoder import SHAPE_DESCRIPTOR_DIM, ObjectShapeClassifier, object_shape_descriptors


def box_rows(rng, lo, hi, m=32, rgb=(0.6, 0.3, 0.2)):
    """``m`` rows (xyz, rgb) on the faces of the box [lo, hi]."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    pts = lo + rng.random((m, 3)) * (hi - lo)
    axis, side = rng.integers(0, 3, m), rng.integers(0, 2, m)
    pts[np.arange(m), axis] = np.where(side, hi[axis], lo[axis])
    colour = np.clip(np.asarray(rgb) + 0.02 * rng.standard_normal((m, 3)), 0, 1)
    return np.concatenate([pts, colour], 1).astype(np.float32)


def test_descriptor_reads_size_height_and_colour_not_row_order():
    rng = np.random.default_rng(0)
    rows = torch.from_numpy(box_rows(rng, (1.0, 2.0, 0.7), (2.2, 2.6, 0.75)))   # a 1.2 x 0.6 x 0.05 slab at 0.7 m
    d = object_shape_descriptors(rows)
    assert d.shape == (SHAPE_DESCRIPTOR_DIM,)
    assert torch.allclose(d, object_shape_descriptors(rows[torch.randperm(len(rows))]), atol=1e-6)
    assert torch.allclose(d[:3].exp() - 0.01, torch.tensor([1.2, 0.6, 0.05]), atol=0.05)   # larger side first
    assert abs(float(d[3]) - 0.7) < 0.01 and abs(float(d[4]) - 0.75) < 0.01             # bottom, top height
    assert abs(float(d[7:11].sum()) - 1.0) < 1e-5                                        # height quarters
    assert torch.allclose(d[11:14], torch.tensor([0.6, 0.3, 0.2]), atol=0.03)            # lit colour
    # batched over (B, K) slots the same
    assert torch.allclose(object_shape_descriptors(rows[None, None])[0, 0], d)


def _slots(rng, n):
    """Two classes a size decides: flat wide slabs (0) and tall thin posts (1), at random places and colours."""
    rows, classes = [], []
    for i in range(n):
        c = i % 2
        size = rng.uniform((0.8, 0.5, 0.03), (1.6, 1.0, 0.08)) if c == 0 else rng.uniform((0.1, 0.1, 0.5),
                                                                                            (0.3, 0.3, 1.2))
        lo = np.array([*rng.uniform(-3, 3, 2), rng.uniform(0, 0.8)])
        rows.append(box_rows(rng, lo, lo + size, rgb=rng.random(3)))
        classes.append(c)
    return torch.from_numpy(np.stack(rows)), torch.tensor(classes)


def test_fit_replaces_the_token_head_and_survives_save_and_load(tmp_path):
    from training.classes import fit_shape_head
    from training.modeling import load_model_and_processor, save_model

    model, proc = load_model_and_processor({'preset': 'tiny', 'num_points': 256, 'num_scene_tokens': 8,
                                            'num_object_tokens': 8, 'object_points': 32, 'object_refs': True})
    assert model.config.object_class_head == 'tokens' and model.point_encoder.object_classifier is not None
    rng = np.random.default_rng(1)
    fit = fit_shape_head(model, _slots(rng, 200), _slots(rng, 40), epochs=40)
    assert fit['val_accuracy'] >= 95.0 and fit['train_accuracy'] >= 95.0
    assert model.config.object_class_head == 'shape' and model.point_encoder.object_classifier is None

    # a scene's records take the fitted head's classes: a slab slot and a post slot of a laid-out cloud
    held_out, classes = _slots(rng, 2)
    cloud = torch.zeros(1, proc.num_points + 8 * 32, 3 + 3 + 2)
    cloud[0, :proc.num_points, :6] = torch.rand(proc.num_points, 6)
    cloud[0, :, -2:] = -1
    for k in range(2):
        part = slice(proc.num_points + 32 * k, proc.num_points + 32 * (k + 1))
        cloud[0, part, :6], cloud[0, part, -2] = held_out[k], k
    probs = model.object_class_probs(cloud)[0]
    assert probs[:2, :2].argmax(-1).tolist() == classes.tolist()

    out = save_model(model, proc, tmp_path / 'ckpt')
    from r3d_ros.model import R3DForConditionalGeneration

    loaded = R3DForConditionalGeneration.from_pretrained(str(out)).eval()
    assert loaded.config.object_class_head == 'shape' and loaded.point_encoder.object_classifier is None
    assert torch.allclose(loaded.object_class_probs(cloud)[0], probs, atol=1e-5)


def test_unknown_class_head_kind_is_refused():
    from r3d_ros.model.point_encoder import PointEncoder

    with pytest.raises(ValueError, match='object_class_head'):
        PointEncoder(3, 32, 4, 8, 1, 2, num_object_tokens=4, num_object_classes=3, object_class_head='views')
    assert ObjectShapeClassifier(5)(torch.rand(2, 3, 16, 6)).shape == (2, 3, 5)


def test_lap_clouds_are_sensor_maps_in_the_scene_clouds_layout(tmp_path):
    """What ``r3d-train classes --laps`` and ``evaluate --maps laps`` read: a simulated lap's voxel map of a
    dataset scene, split into proposals labelled with the classes of the objects they cover."""
    from r3d_ros.scenes.dataset import make_dataset, read_scene
    from training.data import LapClouds, SceneClouds, object_class_names

    make_dataset(tmp_path, 2, seed=3)
    sid = sorted(p.stem for p in (tmp_path / 'scenes').glob('*.npz'))[0]
    lap, whole = LapClouds(tmp_path)[sid], SceneClouds(tmp_path, max_points=None)[sid]
    assert lap.shape[1] == whole.shape[1] == 8 and len(lap) > 1000
    labels, classes = lap[:, 6].astype(int), lap[:, 7].astype(int)
    assert labels.max() >= 2 and set(classes[labels < 0]) <= {-1}      # structure has no class
    names = object_class_names()
    seen = {names[c] for c in set(classes) - {-1}}
    assert seen and seen <= {o.label for o in read_scene(tmp_path / 'scenes' / f'{sid}.npz').objects}
    assert LapClouds(tmp_path, lap=1)[sid].shape != lap.shape            # another orbit, another map
