"""Object proposals (r3d_ros.mapping.segmentation) and the object tokens built from them."""

import numpy as np
import pytest
import torch

from r3d_ros.mapping.segmentation import segment_boxes, segment_objects
from r3d_ros.model.point_encoder import box_digits
from r3d_ros.model.processing_r3d import object_rows
from r3d_ros.scenes.synthetic import generate_scene


def _iou(c1, s1, c2, s2):
    lo, hi = np.maximum(c1 - s1 / 2, c2 - s2 / 2), np.minimum(c1 + s1 / 2, c2 + s2 / 2)
    inter = np.prod(np.clip(hi - lo, 0, None))
    return inter / (np.prod(s1) + np.prod(s2) - inter)


def _cloud(scene):
    return np.concatenate([scene.points, scene.colors.astype(np.float32) / 255.0], axis=1)


def test_proposals_recover_most_objects_of_unseen_scenes():
    """Seeds no training set uses; 'found' = some proposal box at IoU >= 0.25 with the object's true box."""
    found, total = 0, 0
    for seed in range(9000, 9006):
        scene = generate_scene(seed)
        cloud = _cloud(scene)
        labels = segment_objects(cloud)
        boxes = segment_boxes(cloud, labels)
        for obj in scene.objects:
            total += 1
            found += max((_iou(c, s, obj.center, obj.size) for c, s in boxes), default=0.0) >= 0.25
        floor = scene.points[:, 2] < 0.01
        assert (labels[floor] == -1).mean() > 0.95  # the floor is structure, not an object
    print(f'objects with a proposal at IoU >= 0.25: {found}/{total} = {found / total:.1%}')
    assert found / total >= 0.75


def test_labels_are_deterministic_and_ordered_by_size():
    """The same cloud, the same labels: test-split scene 44 (r3d-make-data, seed 0) got another structure mask in
    3 to 16 of 20 runs while open3d's RANSAC stopped early (its early stop races between threads)."""
    from r3d_ros.scenes.dataset import scene_seed

    scene44 = _cloud(generate_scene(scene_seed(0, 44)))
    first = segment_objects(scene44)
    assert all(np.array_equal(first, segment_objects(scene44.copy())) for _ in range(8))
    cloud = _cloud(generate_scene(9010))
    a, b = segment_objects(cloud), segment_objects(cloud.copy())
    assert np.array_equal(a, b)
    # size = occupied 5 cm voxels (density-independent), largest first
    keys = np.unique(np.c_[np.floor(cloud[:, :3] / 0.05).astype(np.int64), a][a >= 0], axis=0)
    counts = np.bincount(keys[:, 3])
    assert len(counts) >= 3 and np.all(np.diff(counts) <= 0)
    with pytest.raises(ValueError):
        segment_objects(np.zeros((10, 2)))
    assert (segment_objects(cloud[:3]) == -1).all()  # too few points: nothing, no error


def test_box_digits_are_the_written_digits():
    # '-0.92' '3.14' '10.05' '0.28': sign, tens, units, tenths, hundredths
    got = box_digits(torch.tensor([-0.92, 3.14, 10.05, 0.28, 0.004, -1.235]))
    assert got.tolist() == [[1, 0, 0, 9, 2], [0, 0, 3, 1, 4], [0, 1, 0, 0, 5], [0, 0, 0, 2, 8],
                            [0, 0, 0, 0, 0], [1, 0, 1, 2, 4]]


def test_object_rows_keep_each_proposals_extent():
    rng = np.random.default_rng(0)
    a = rng.uniform([0, 0, 0], [1, 0.5, 0.5], (300, 3))
    b = rng.uniform([2, 2, 0], [2.2, 2.4, 1.0], (40, 3))
    cloud = np.concatenate([np.concatenate([a, b]), np.full((340, 3), 0.5)], 1).astype(np.float32)
    labels = np.array([0] * 300 + [1] * 40)
    rows = object_rows(cloud, labels, num_objects=3, points_per_object=16)
    assert rows.shape == (48, 8)
    assert (rows[:16, -2] == 0).all() and (rows[16:32, -2] == 1).all() and (rows[32:, -2] == -1).all()
    assert (rows[:, -1] == -1).all()  # no class given: unknown
    for k, pts in ((0, a), (1, b)):  # farthest-point sampling keeps the extremes, so the box survives
        got = rows[16 * k:16 * (k + 1), :3]
        assert np.allclose(got.max(0) - got.min(0), pts.max(0) - pts.min(0), atol=0.1)


def test_object_tokens_end_to_end_through_the_processor_and_model(tmp_path):
    """A scene cloud without labels is segmented by the processor; object tokens carry their box; empty slots
    are zero; the digit embedding gets gradient; config and processor survive save/load."""
    from r3d_ros.model import R3DForConditionalGeneration, R3DProcessor
    from training.modeling import load_model_and_processor

    model, proc = load_model_and_processor({'preset': 'tiny', 'num_points': 256, 'num_scene_tokens': 8,
                                            'num_object_tokens': 40, 'object_points': 8})
    scene = generate_scene(9020, num_objects=(5, 8))
    cloud = _cloud(scene)
    batch = proc(questions=['Where is the chair?'], point_clouds=[cloud],
                 targets=['<think>a</think><answer>b</answer>'])
    assert (batch['input_ids'] == model.config.scene_token_id).sum() == 48
    rows = batch['point_clouds'][0]
    assert rows.shape == (256 + 40 * 8, 8) and (rows[:256, -2:] == -1).all()
    n_props = int(segment_objects(cloud).max()) + 1
    assert 3 <= n_props < 40 and (rows[256:, -2].reshape(40, 8)[:, 0] >= 0).sum() == n_props
    tokens = model.point_encoder(batch['point_clouds'])
    assert tokens.shape == (1, 48, model.config.point_hidden_size)
    assert tokens[0, 8 + n_props:].abs().max() == 0 and tokens[0, 8:8 + n_props].abs().min(-1).values.max() > 0
    model(**batch).loss.backward()
    assert model.point_encoder.object_digits.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    again, proc2 = R3DForConditionalGeneration.from_pretrained(tmp_path), R3DProcessor.from_pretrained(tmp_path)
    assert again.config.num_object_tokens == 40 and proc2.num_object_tokens == 40 and proc2.object_points == 8
    model.eval()
    with torch.no_grad():
        a, b = again.point_encoder(batch['point_clouds']), model.point_encoder(batch['point_clouds'])
    assert (a - b).abs().max() < 1e-5, (a - b).abs().max()


def _live_map(frames=55, sensor_seed=0, step=0.2, period=30.0, phase=0.0):
    """The demo room seen by its simulated depth camera on its orbit (``step`` s between clouds, a lap in ``period``
    s, starting ``phase`` s in) and fused as scene_map fuses it: walls seen far off and in parts."""
    from r3d_ros.mapping.voxel_map import VoxelMap
    from r3d_ros.scenes.sensor_sim import SimulatedSensor, orbit_pose

    scene = generate_scene(0, num_objects=(5, 30), point_density=400.0)
    sensor = SimulatedSensor(scene, width=96, height=72, max_range=8.0, noise=True, max_points=20000,
                             seed=sensor_seed)
    vmap = VoxelMap(voxel_size=0.05)
    for i in range(frames):
        pose = orbit_pose(scene, phase + i * step, period_s=period, radius_fraction=0.3, height=1.3, pitch_deg=15.0)
        vmap.integrate(*sensor.capture(pose), pose=pose)
    xyz, rgb, _ = vmap.snapshot()
    return scene, np.concatenate([xyz, rgb.astype(np.float32) / 255.0], axis=1)


def test_pieces_of_a_half_seen_wall_are_not_objects():
    """The demo room's live map: without step 5 the far walls come out as a score of thin white plates (which the
    class head names lamps and beds); with it none is left, and the room's furniture is still found."""
    from r3d_ros.mapping.segmentation import SegmentationConfig
    from r3d_ros.scenes.synthetic import WALL_RGB

    scene, cloud = _live_map()
    xy = cloud[:, :2]
    lo, hi = np.percentile(xy, 1, axis=0), np.percentile(xy, 99, axis=0)

    def wall_plates(cfg):
        """Segments in the simulator's wall colour whose box lies against a bounding face of the map."""
        labels = segment_objects(cloud, cfg)
        plates = []
        for k, (c, s) in enumerate(segment_boxes(cloud, labels)):
            wall_coloured = np.all(np.abs(np.median(cloud[labels == k, 3:6], 0) * 255 - WALL_RGB) < 20)
            by_face = any(min(abs(c[a] - s[a] / 2 - f), abs(c[a] + s[a] / 2 - f)) < 0.1
                          for a in (0, 1) for f in (lo[a], hi[a]))
            plates += [(c, s)] if wall_coloured and by_face else []
        return plates

    assert len(wall_plates(SegmentationConfig(wall_band=-1.0))) >= 8   # step 5 off
    assert wall_plates(SegmentationConfig()) == []
    boxes = segment_boxes(cloud, segment_objects(cloud))
    furniture = [o for o in scene.objects if o.label in ('table', 'nightstand', 'wardrobe', 'lamp')]
    assert len(furniture) == 4
    for obj in furniture:
        assert max(_iou(c, s, obj.center, obj.size) for c, s in boxes) >= 0.25, obj.label
    # and nothing else: the table's legs are part of the table, not proposals of their own
    assert len(boxes) <= len(scene.objects), [(np.round(c, 2), np.round(s, 2)) for c, s in boxes]



def _proposals_of(scene, labels):
    """{object id: number of proposals most of whose points are that object's}."""
    out = {}
    for k in range(int(labels.max(initial=-1)) + 1):
        ids, counts = np.unique(scene.instance[labels == k], return_counts=True)
        top = int(ids[counts.argmax()])
        out[top] = out.get(top, 0) + 1
    return out


@pytest.mark.parametrize('index, label', [(10, 'table'), (84, 'bed'), (302, 'tv')])
def test_parts_of_one_piece_of_furniture_are_one_proposal_and_what_stands_on_it_is_not(index, label):
    """Test-split scenes of r3d-make-data (seed 0) that session 16 found miscounted: scene 10's two tables, whose
    legs stop 9 cm short of the top, came out as five proposals ("how many tables": 5), scene 84's beds with their
    headboards (taller than the bed) as four. A tv standing on a desk (scene 302) stays an object of its own."""
    from r3d_ros.scenes.dataset import scene_seed

    scene = generate_scene(scene_seed(0, index))
    found = _proposals_of(scene, segment_objects(_cloud(scene)))
    objects = [o for o in scene.objects if o.label == label]
    assert objects and all(found.get(o.id) == 1 for o in objects), [(o.id, found.get(o.id)) for o in objects]


@pytest.mark.parametrize('lap', [0, 1, 3, 5])
def test_the_demo_table_s_legs_are_the_table_in_live_maps(lap):
    """A 6 cm leg fills 16-21 cm of a live 5 cm voxel map: in four of six simulated laps of the demo room it came out
    as a record of its own, which the class head called a table, so "What color is the table?" was answered about
    the leg (gray) in a demo run. A post rising from the table's bottom, twice as tall as wide, is a leg."""
    from r3d_ros.scenes.sensor_sim import lap_map

    scene = generate_scene(0, num_objects=(5, 30), point_density=400.0)
    xyz, rgb, instance = lap_map(scene, seed=lap, radius_fraction=0.3)
    cloud = np.concatenate([xyz, rgb / np.float32(255.0)], axis=1).astype(np.float32)
    labels = segment_objects(cloud)
    table, book = (next(o for o in scene.objects if o.label == label) for label in ('table', 'book'))
    found = {}
    for k in range(int(labels.max()) + 1):
        ids, counts = np.unique(instance[labels == k], return_counts=True)
        found.setdefault(int(ids[counts.argmax()]), []).append(k)
    assert len(found.get(table.id, [])) == 1 and len(found.get(book.id, [])) == 1, found


@pytest.mark.parametrize('seed, frames, step, period', [(0, 70, 0.2, 10.0), (3, 90, 0.2, 10.0), (2, 120, 0.2, 10.0),
                                                         (2, 40, 0.3, 30.0)])
def test_a_table_against_a_half_seen_wall_keeps_its_top(seed, frames, step, period):
    """The demo's live map with the orbit it runs (a lap in 10 s, 5 clouds a second; maps it had after 14-24 s):
    the beige table top, within DBSCAN's reach of a far wall's pieces, joined the wall's segment and was dropped
    with it, so a leg was the only 'table' left (demo: "What color is the table?" -> gray). A wall piece's points
    in a colour of their own are clustered again as objects. The last case: a leg whose noisy footprint
    overhangs the table's by more than a voxel (it is the table's up to two)."""
    scene, cloud = _live_map(frames, sensor_seed=seed, step=step, period=period)
    boxes = segment_boxes(cloud, segment_objects(cloud))
    table = next(o for o in scene.objects if o.label == 'table')
    assert max(_iou(c, s, table.center, table.size) for c, s in boxes) >= 0.5
    legs = [(c, s) for c, s in boxes if max(s[:2]) <= 0.3 and s[2] < table.size[2] and _iou(c, s, table.center,
                                                                                             table.size) > 0]
    assert not legs, legs


def _covered(obj, boxes) -> bool:
    return max((_iou(c, s, obj.center, obj.size) for c, s in boxes), default=0.0) >= 0.25


def test_what_stands_on_furniture_has_a_proposal_of_its_own():
    """Unseen seeds: before step 6 a monitor joined the desk of its colour, a laptop hid in the table top's voxels,
    and a monitor's foot was cut from its screen, so about one in five things standing on furniture had no
    proposal ("Bring the book to the bed." -> "I see no book"). Now every one that is told from its support by
    height (>= 4 cm) or colour has one; a laptop in the colour of its table is the honest limit."""
    from r3d_ros.scene_objects import color_name

    found, total = 0, 0
    for seed in range(9000, 9012):
        scene = generate_scene(seed)
        cloud = _cloud(scene)
        boxes = segment_boxes(cloud, segment_objects(cloud))
        support = {o.id: o for o in scene.objects}
        for obj in scene.objects:
            if obj.parent_id is None:
                continue
            parent = support[obj.parent_id]
            same = color_name(np.asarray(obj.color_rgb)) == color_name(np.asarray(parent.color_rgb))
            if obj.size[2] < 0.04 and same:
                continue
            total += 1
            found += _covered(obj, boxes)
    print(f'things on furniture with a proposal at IoU >= 0.25: {found}/{total}')
    assert total >= 40 and found / total >= 0.9


@pytest.mark.parametrize('seed', range(9000, 9012))
def test_a_backrest_or_an_armrest_is_not_a_thing_standing_on_the_seat(seed):
    """Step 6 looks above every top, seats included: a chair's backrest, a sofa's back and arms, a headboard stand
    on the seat or mattress along a side, and stay one proposal with it."""
    scene = generate_scene(seed)
    found = _proposals_of(scene, segment_objects(_cloud(scene)))
    seats = [o for o in scene.objects if o.label in ('chair', 'sofa', 'armchair', 'bed')]
    assert all(found.get(o.id, 0) <= 1 for o in seats), [(o.label, found.get(o.id)) for o in seats]


def test_the_demo_lamp_is_one_proposal_from_its_foot_to_its_shade():
    """The demo room's live map: the lamp's darker pole and foot joined the nightstand and the shade alone was the
    lamp (0.19 m tall, its box 0.13 m above the lamp's centre); split off the nightstand's top and joined to the
    shade above it, the lamp's box is the lamp's."""
    scene, cloud = _live_map()
    boxes = segment_boxes(cloud, segment_objects(cloud))
    lamp, nightstand = (next(o for o in scene.objects if o.label == label) for label in ('lamp', 'nightstand'))
    assert max(_iou(c, s, lamp.center, lamp.size) for c, s in boxes) >= 0.5
    assert max(_iou(c, s, nightstand.center, nightstand.size) for c, s in boxes) >= 0.5


@pytest.mark.parametrize('seed, frames', [(1, 55), (1, 100), (3, 100)])
def test_live_maps_of_the_demo_room_have_one_proposal_per_object(seed, frames):
    """Maps where the demo went wrong: in (1, 55) and (1, 100) floor bent off its plane came out as flat grey
    pieces the class head called shelves ("How many shelves": 3 in a room with none); in (3, 100) the lamp's pole
    stayed with the nightstand, so the book was placed 25 cm above its top. (A live map's book is its top face
    only, 2 cm of its 6: its IoU is low, its centre right.)"""
    scene, cloud = _live_map(frames, sensor_seed=seed, period=10.0, phase=seed * 0.37)
    boxes = segment_boxes(cloud, segment_objects(cloud))
    assert len(boxes) == len(scene.objects), [(np.round(c, 2), np.round(s, 2)) for c, s in boxes]
    for obj in scene.objects:
        assert min(np.linalg.norm(c - obj.center) for c, _ in boxes) <= 0.1, obj.label
        if obj.label in ('lamp', 'nightstand'):
            assert max(_iou(c, s, obj.center, obj.size) for c, s in boxes) >= 0.5, obj.label
