"""Voxel map + pose buffer (the ROS-free mapping library); the node is in test_scene_map_node.py."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from r3d_ros.mapping import PoseBuffer, VoxelMap
from r3d_ros.scenes.sensor_sim import SimulatedSensor, trajectory
from r3d_ros.scenes.synthetic import generate_scene


@pytest.fixture(scope='module')
def scene():
    return generate_scene(7)


def test_fusion_lies_on_surfaces_and_covers_every_visible_object(scene):
    # noiseless ranges: the check is the map's geometry, not the simulated sensor's depth noise
    sensor = SimulatedSensor(scene, 'depth_camera', seed=1, noise=False)
    vmap = VoxelMap(voxel_size=0.05)
    seen_objects = set()
    for k, pose in enumerate(trajectory(scene, n_frames=12)):
        xyz, rgb, idx = sensor.capture_indexed(pose)
        seen_objects |= set(np.unique(scene.instance[idx]).tolist()) - {-1}
        vmap.integrate(xyz, rgb, pose=pose, stamp=float(k))
    xyz, rgb, counts = vmap.snapshot()
    assert len(xyz) > 1000 and counts.sum() == vmap.stats.points_fused
    # every map point within one voxel of a true surface point
    dist, _ = cKDTree(scene.points).query(xyz)
    assert np.quantile(dist, 0.99) <= vmap.voxel_size, np.quantile(dist, [0.5, 0.99, 1.0])
    # every object the sensor saw along the trajectory has map voxels inside its box
    for obj in scene.objects:
        if obj.id not in seen_objects:
            continue
        inside = np.all((xyz >= obj.lo - 0.05) & (xyz <= obj.hi + 0.05), axis=1)
        assert inside.any(), f'{obj.ref} seen but not in the map'
    assert len(seen_objects) >= 3
    # colours are the surfaces' colours (running mean), not noise
    _, nearest = cKDTree(scene.points).query(xyz)
    assert np.median(np.abs(rgb.astype(int) - scene.colors[nearest].astype(int))) <= 10


def test_noisy_frames_still_fuse_near_surfaces(scene):
    sensor = SimulatedSensor(scene, 'depth_camera', seed=3)  # with range noise (sigma grows with depth^2)
    vmap = VoxelMap(voxel_size=0.05)
    for k, pose in enumerate(trajectory(scene, n_frames=12)):
        vmap.integrate(*sensor.capture(pose), pose=pose, stamp=float(k))
    dist, _ = cKDTree(scene.points).query(vmap.snapshot()[0])
    assert np.median(dist) <= 0.05 and np.quantile(dist, 0.9) <= 0.1, np.quantile(dist, [0.5, 0.9])


def test_points_in_map_frame_and_filters():
    vmap = VoxelMap(voxel_size=0.1, min_range=0.5, max_range=5.0)
    pose = np.eye(4)
    pose[:3, 3] = [10.0, 0.0, 0.0]
    pts = np.array([[1, 0, 0], [0.2, 0, 0], [9, 0, 0], [np.nan, 0, 0], [2, 2, 0]], np.float32)
    assert vmap.integrate(pts, pose=pose) == 2  # too near, too far and NaN dropped
    xyz, _, _ = vmap.snapshot()
    np.testing.assert_allclose(sorted(xyz[:, 0]), [11.0, 12.0], atol=0.1 / 256)  # mean kept to 1/256 voxel


def test_fast_and_generic_frame_reductions_agree():
    rng = np.random.default_rng(4)
    pts = rng.normal(0, 1.0, (20_000, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (20_000, 3), dtype=np.uint8)
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler('xyz', [10, 20, 30], degrees=True).as_matrix()
    pose[:3, 3] = [3.0, -2.0, 1.0]
    fast, generic = VoxelMap(voxel_size=0.2, min_range=0.0), VoxelMap(voxel_size=0.2)
    fast.integrate(pts, rgb, pose=pose)
    local = (pose[:3, :3] @ pts.T.astype(np.float64) + pose[:3, 3:]) / 0.2  # map frame, in voxels
    generic._merge(*_reference_reduce(local, rgb, 0.2), 0.0)
    a, b = fast.snapshot(), generic.snapshot()
    ka, kb = np.argsort(fast.keys), np.argsort(generic.keys)
    np.testing.assert_array_equal(fast.keys[ka], generic.keys[kb])
    # float32 vs float64 may put a point lying on a voxel face into the neighbour: a handful at most
    same = a[2][ka] == b[2][kb]
    assert (~same).sum() <= 10 and a[2].sum() == b[2].sum() == 20_000
    np.testing.assert_allclose(a[0][ka][same], b[0][kb][same], atol=0.2 / 256)
    assert np.abs(a[1][ka][same].astype(int) - b[1][kb][same].astype(int)).max() <= 1
    # a frame with more points in one voxel than a packed field can sum takes the generic path
    dense = VoxelMap(voxel_size=1.0)
    dense.integrate(np.full((9000, 3), 0.5, np.float32), np.full((9000, 3), 255, np.uint8))
    xyz, rgb_out, counts = dense.snapshot()
    assert counts.tolist() == [9000] and rgb_out.tolist() == [[255, 255, 255]]
    np.testing.assert_allclose(xyz, [[0.5, 0.5, 0.5]], atol=1 / 256)


def _reference_reduce(local_voxels, rgb, voxel):
    """Straightforward per-voxel sums with a Python dict (the reference the fast path must match)."""
    from r3d_ros.mapping.voxel_map import pack_keys

    groups = {}
    for p, c in zip(local_voxels.T, rgb.astype(np.float64)):
        key = tuple(np.floor(p).astype(np.int64))
        g = groups.setdefault(key, np.zeros(7))
        g[:3] += p * voxel
        g[3:6] += c
        g[6] += 1
    keys = pack_keys(np.array(list(groups)))
    sums = np.array(list(groups.values())).T
    order = np.argsort(keys)
    return keys[order], sums[:, order]


def test_memory_is_bounded_and_the_stalest_voxels_go_first():
    vmap = VoxelMap(voxel_size=0.1, max_voxels=1000, max_range=400.0)  # a sensor at the origin sees 200 m
    rng = np.random.default_rng(0)
    for k in range(20):
        pts = rng.uniform(0, 5, (2000, 3)).astype(np.float32) + np.float32(k * 10)  # a new region every frame
        vmap.integrate(pts, stamp=float(k))
        assert len(vmap) <= 1000
    xyz, _, counts = vmap.snapshot()
    assert xyz.min() >= 19 * 10 - 1e-3  # only the newest frame's region survives
    assert vmap.stats.evicted > 0
    # the index still finds every surviving voxel: the same points again add counts, not voxels
    size = len(vmap)
    vmap.integrate(xyz, stamp=20.0)  # the surviving voxels' own mean points
    assert len(vmap) == size and len(np.unique(vmap.keys)) == size
    assert vmap.snapshot()[2].sum() == counts.sum() + size


def test_eviction_among_equally_stale_voxels_drops_the_farthest_from_the_sensor():
    vmap = VoxelMap(voxel_size=0.1, max_voxels=200, min_range=0.0, max_range=50.0)
    pts = np.zeros((3000, 3), np.float32)
    pts[:, 0] = np.arange(3000) * 0.1 + 0.05  # one voxel per point along x, 0.05 .. 300 m
    pts = pts[pts[:, 0] < 50.0]
    pose = np.eye(4)
    vmap.integrate(pts, pose=pose, stamp=1.0)  # one frame: every voxel equally stale
    xyz, _, _ = vmap.snapshot()
    assert 0 < len(vmap) <= 200 and xyz[:, 0].max() < 200 * 0.1  # the nearest voxels are the ones kept


@pytest.mark.parametrize('suffix', ['.npz', '.ply'])
def test_save_load_round_trip_is_atomic_and_open3d_readable(tmp_path, scene, suffix):
    vmap = VoxelMap(voxel_size=0.05)
    vmap.integrate(scene.points, scene.colors)
    path = vmap.save(tmp_path / f'map{suffix}')
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    loaded = VoxelMap.load(path, voxel_size=0.05) if suffix == '.ply' else VoxelMap.load(path)
    a, ca, _ = vmap.snapshot()
    b, cb, _ = loaded.snapshot()
    assert len(a) == len(b)
    np.testing.assert_allclose(np.sort(a, axis=0), np.sort(b, axis=0), atol=1e-4)
    if suffix == '.ply':
        pc = o3d.io.read_point_cloud(str(path))
        assert len(pc.points) == len(a) and pc.has_colors()


def test_pose_interpolation_linear_and_slerp():
    buf = PoseBuffer(max_size=10, max_extrapolation=0.05)
    T0, T1 = np.eye(4), np.eye(4)
    T1[:3, 3] = [2.0, 0.0, 0.0]
    T1[:3, :3] = Rotation.from_euler('z', 90, degrees=True).as_matrix()
    buf.add(2.0, T1)
    buf.add(1.0, T0)  # out of order is fine
    mid = buf.lookup(1.25)
    np.testing.assert_allclose(mid[:3, 3], [0.5, 0, 0])
    np.testing.assert_allclose(Rotation.from_matrix(mid[:3, :3]).as_euler('zyx', degrees=True), [22.5, 0, 0],
                               atol=1e-6)
    np.testing.assert_allclose(buf.lookup(2.04), T1)  # held within max_extrapolation
    assert buf.lookup(2.2) is None and buf.lookup(0.5) is None
    for k in range(20):
        buf.add(3.0 + k, T0)
    assert len(buf) == 10


# -- hostile input (issue 24) -------------------------------------------------------------------
ABSURD = [[1e20, 0, 0], [3e38, 3e38, -3e38], [-1e7, 2, 0], [np.nan, 0, 0], [0, np.inf, 0], [0, 0, -np.inf],
          [5e4, 5e4, 5e4]]


@pytest.mark.parametrize('with_pose', [False, True])
def test_absurd_points_are_refused_and_never_touch_the_rest_of_the_frame(scene, with_pose):
    """The issue's frame: valid points plus finite-but-absurd and non-finite ones. The map must equal the
    map of the valid points alone, to the bit, and count every refused point."""
    sensor = SimulatedSensor(scene, 'depth_camera', seed=5, noise=False)
    pose = trajectory(scene, n_frames=4)[1]
    xyz, rgb = sensor.capture(pose)
    if not with_pose:  # pose_source none: the points in the map frame, the sensor at its origin
        xyz = (xyz @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)
        pose = None
    xyz = np.vstack([xyz, [[1, 1, 1]]]).astype(np.float32)
    rgb = np.vstack([rgb, [[10, 20, 30]]]).astype(np.uint8)
    bad = np.array(ABSURD, np.float32)
    where = np.linspace(0, len(xyz), len(bad)).astype(int)  # interleaved, not appended
    hostile_xyz, hostile_rgb = np.insert(xyz, where, bad, axis=0), np.insert(rgb, where, 255, axis=0)
    clean, hostile = VoxelMap(voxel_size=0.05, min_range=0.0), VoxelMap(voxel_size=0.05, min_range=0.0)
    assert clean.integrate(xyz, rgb, pose=pose) == len(xyz)
    assert hostile.integrate(hostile_xyz, hostile_rgb, pose=pose) == len(xyz)
    np.testing.assert_array_equal(hostile.keys, clean.keys)
    np.testing.assert_array_equal(hostile.acc, clean.acc)
    stats = hostile.stats
    assert (stats.rejected_nonfinite, stats.rejected_range) == (3, len(bad) - 3)
    assert stats.points_in == stats.points_fused + len(bad)
    snap = hostile.snapshot()[0]
    assert np.isfinite(snap).all() and np.abs(snap).max() < 10.0
    if not with_pose:  # the point at (1, 1, 1) comes back where it was
        assert np.abs(snap - 1.0).max(axis=1).min() < 0.05 / 256 * 2


def test_range_filter_applies_without_a_pose_around_the_map_origin():
    vmap = VoxelMap(voxel_size=0.1, min_range=0.5, max_range=5.0)
    pts = np.array([[1, 0, 0], [0.2, 0, 0], [9, 0, 0], [0, 4.9, 0], [0, 0, -5.1]], np.float32)
    assert vmap.integrate(pts) == 2
    assert vmap.stats.rejected_range == 3


def test_a_pose_that_is_not_finite_or_beyond_the_keys_range_refuses_the_frame():
    vmap = VoxelMap(voxel_size=0.05, min_range=0.0, max_range=10.0)
    pts = np.array([[1.0, 2.0, 3.0]], np.float32)
    far, nan, edge = np.eye(4), np.eye(4), np.eye(4)
    far[0, 3] = 53_000.0                          # beyond +-52.4 km, the keys' range at 5 cm
    nan[1, 1] = np.nan
    assert vmap.integrate(pts, pose=far) == 0 and vmap.integrate(pts, pose=nan) == 0
    assert vmap.integrate(pts, stamp=float('nan')) == 0
    assert len(vmap) == 0 and vmap.stats.rejected_frames == 3
    edge[:3, 3] = [-52_000.0, 52_000.0, 1e-3]     # inside the keys' range: fused, at full precision
    assert vmap.integrate(pts, pose=edge) == 1
    np.testing.assert_allclose(vmap.snapshot()[0], [[-51_999.0, 52_002.0, 3.001]], atol=0.05)
    assert vmap.integrate(pts, pose=edge) == 1 and len(vmap) == 1  # the same key again: found, not a new voxel


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_saved_and_loaded_maps_refuse_non_finite_and_inconsistent_voxels(tmp_path):
    vmap = VoxelMap(voxel_size=0.1)
    vmap.integrate(np.array([[1, 1, 1], [2, 2, 2], [3, 1, 0]], np.float32))
    assert vmap.valid_voxels().all()
    vmap._data[1, 0] = np.nan                     # as if a bug had let one through
    saved = VoxelMap.load(vmap.save(tmp_path / 'map.npz'))
    assert len(saved) == 2 and vmap.stats.rejected_voxels == 1 and np.isfinite(saved.acc).all()
    # a file corrupted on disk: NaN, zero count, a mean outside its voxel, a non-canonical and a repeated key
    good = VoxelMap(voxel_size=0.1)
    good.integrate(np.array([[1, 1, 1], [2, 2, 2], [3, 1, 0], [0, 3, 1], [1, 2, 3], [2, 1, 3]], np.float32))
    keys, acc = good.keys.copy(), good.acc.copy()
    acc[0, 2] = np.inf
    acc[1, 6] = 0
    acc[2, 0] += 5.0 * acc[2, 6]
    keys[3] = -1
    keys[5] = keys[4]
    loaded = VoxelMap.load(_npz(tmp_path / 'bad.npz', voxel_size=0.1, keys=keys, acc=acc,
                                last_seen=np.zeros(len(keys))))
    assert len(loaded) == 1 and loaded.stats.rejected_voxels == 5
    for broken in ({'voxel_size': np.nan, 'keys': keys, 'acc': acc, 'last_seen': np.zeros(6)},
                   {'voxel_size': 0.1, 'keys': keys, 'acc': acc[:3], 'last_seen': np.zeros(6)},
                   {'voxel_size': 0.1, 'keys': keys}):
        with pytest.raises(ValueError):
            VoxelMap.load(_npz(tmp_path / 'broken.npz', **broken))
    # a .ply with a NaN and an absurd point: both left out
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.array([[1, 1, 1], [np.nan, 0, 0], [1e9, 0, 0]])))
    o3d.io.write_point_cloud(str(tmp_path / 'bad.ply'), pc)
    ply = VoxelMap.load(tmp_path / 'bad.ply', voxel_size=0.1)
    assert len(ply) == 1 and ply.stats.rejected_voxels == 2


def test_stale_save_temporaries_are_found_and_removed(tmp_path):
    path = tmp_path / 'map.npz'
    VoxelMap().save(path)
    (tmp_path / '.map.npz.abc123.npz').write_bytes(b'half a map')
    (tmp_path / 'other.npz').write_bytes(b'not ours')
    assert VoxelMap.remove_stale_temporaries(path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['map.npz', 'other.npz']
    assert VoxelMap.remove_stale_temporaries(tmp_path / 'missing' / 'map.npz') == 0


def test_pose_buffer_refuses_poses_that_are_not_finite_rigid_transforms():
    buf = PoseBuffer()
    scaled, nan, sheared = np.eye(4) * 2.0, np.eye(4), np.eye(4)
    scaled[3, 3] = 1.0
    nan[0, 3] = np.nan
    sheared[0, 1] = 0.5
    assert not any(buf.add(1.0, p) for p in (scaled, nan, sheared, np.zeros((4, 4)), np.eye(3)))
    assert not buf.add(float('inf'), np.eye(4))
    assert len(buf) == 0 and buf.add(1.0, np.eye(4)) and len(buf) == 1
