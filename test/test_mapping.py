"""Voxel map + pose buffer (library) and the scene_map node over DDS."""

from __future__ import annotations

import time

from nav_msgs.msg import Odometry
import numpy as np
import open3d as o3d
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger

from r3d_ros.mapping import PoseBuffer, VoxelMap
from r3d_ros.nodes.conversions import matrix_to_pose, sec_to_stamp, to_pointcloud2
from r3d_ros.pointcloud import xyz_rgb_from_cloud
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
    np.testing.assert_allclose(sorted(xyz[:, 0]), [11.0, 12.0], atol=1e-5)


def test_memory_is_bounded_and_the_stalest_voxels_go_first():
    vmap = VoxelMap(voxel_size=0.1, max_voxels=1000)
    rng = np.random.default_rng(0)
    for k in range(20):
        pts = rng.uniform(0, 5, (2000, 3)).astype(np.float32) + np.float32(k * 10)  # a new region every frame
        vmap.integrate(pts, stamp=float(k))
        assert len(vmap) <= 1000
    xyz, _, _ = vmap.snapshot()
    assert xyz.min() >= 19 * 10 - 1e-3  # only the newest frame's region survives
    assert vmap.stats.evicted > 0


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


@pytest.mark.ros
def test_scene_map_node_fuses_frames_from_another_process(launch_node, ros_node, scene, tmp_path):
    map_path = tmp_path / 'map.npz'
    node = launch_node('scene_map', params={'publish_rate': 5.0, 'map_path': str(map_path)})
    points = ros_node.publisher('points', PointCloud2, qos=__import__('rclpy').qos.qos_profile_sensor_data)
    odom = ros_node.publisher('odom', Odometry)
    assert ros_node.wait_for_subscriber('points', timeout=30), node.output()
    sensor = SimulatedSensor(scene, 'depth_camera', seed=2, noise=False)
    t0 = time.time()
    for k, pose in enumerate(trajectory(scene, n_frames=8)):
        stamp = sec_to_stamp(t0 + 0.1 * k)
        msg = Odometry()
        msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp, 'map', 'sensor'
        msg.pose.pose = matrix_to_pose(pose)
        odom.publish(msg)
        time.sleep(0.05)
        xyz, rgb = sensor.capture(pose)
        points.publish(to_pointcloud2(xyz, rgb, frame_id='sensor', stamp=stamp))
        time.sleep(0.15)
    cloud = ros_node.wait_for_message('scene_map/cloud', PointCloud2, timeout=20,
                                      predicate=lambda m: m.width > 2000)
    xyz, _ = xyz_rgb_from_cloud(cloud)
    dist, _ = cKDTree(scene.points).query(xyz)
    assert cloud.header.frame_id == 'map' and np.quantile(dist, 0.99) <= 0.05
    saved = ros_node.call_service(Trigger, '/scene_map/save', Trigger.Request(), timeout=20)
    assert saved.success and map_path.exists(), saved.message
    assert len(VoxelMap.load(map_path)) > 2000
    reset = ros_node.call_service(Trigger, '/scene_map/reset', Trigger.Request(), timeout=20)
    assert reset.success
    # a malformed cloud is dropped and counted; the node keeps running
    bad = to_pointcloud2(xyz[:10])
    bad.row_step = 7
    points.publish(bad)
    time.sleep(1.0)
    assert node.alive()
