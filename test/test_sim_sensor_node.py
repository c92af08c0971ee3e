"""sim_sensor as a separate process; clouds and odometry received over DDS; then sim_sensor -> scene_map."""

from __future__ import annotations

from pathlib import Path

from nav_msgs.msg import Odometry
import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from scipy.spatial import cKDTree
from sensor_msgs.msg import PointCloud2

from r3d_ros.pointcloud import xyz_rgb_from_cloud
from r3d_ros.scenes.synthetic import generate_scene

CONFIG = Path(__file__).resolve().parent.parent / 'config'
pytestmark = pytest.mark.ros


def test_sim_sensor_publishes_clouds_and_odometry(launch_node, ros_node):
    # 'rate' is not one of its parameters (cloud_rate is): reported, not silently ignored
    sim = launch_node('sim_sensor', params_file=CONFIG / 'sim_sensor.yaml', params={'cloud_rate': 10.0, 'rate': 3.0})
    cloud = ros_node.wait_for_message('points', PointCloud2, qos=qos_profile_sensor_data, timeout=30)
    odom = ros_node.wait_for_message('odom', Odometry, timeout=30)
    xyz, rgb = xyz_rgb_from_cloud(cloud)
    assert cloud.header.frame_id == 'sensor' and len(xyz) > 500 and rgb is not None
    assert odom.header.frame_id == 'map' and odom.child_frame_id == 'sensor'
    assert np.all(np.linalg.norm(xyz, axis=1) <= 8.5)  # within the sensor's range (+ noise)
    assert sim.alive()
    out = sim.output()
    assert "parameter 'rate' is not a parameter of this node" in out and 'cloud_rate' not in out.split('known:')[0], out


def test_sim_sensor_to_scene_map_covers_the_scene(launch_node, ros_node):
    # the yaml's rate and 30 s orbit: what this test always ran with (its 'rate'/'period' were never parameters;
    # with a 6 s orbit it failed once in ~25 runs, not yet understood)
    launch_node('sim_sensor', params_file=CONFIG / 'sim_sensor.yaml', params={'noise': False})
    launch_node('scene_map', params_file=CONFIG / 'scene_map.yaml', params={'publish_rate': 2.0})
    scene = generate_scene(0)  # the sim_sensor.yaml default seed
    cloud = ros_node.wait_for_message('scene_map/cloud', PointCloud2, timeout=60,
                                      predicate=lambda m: m.width > 0.3 * len(scene.points) / 2)
    xyz, _ = xyz_rgb_from_cloud(cloud)
    dist, nearest = cKDTree(scene.points).query(xyz)
    assert np.quantile(dist, 0.99) <= 0.05
    seen = set(scene.instance[nearest].tolist()) - {-1}
    assert len(seen) >= max(2, len(scene.objects) // 3), (len(seen), len(scene.objects))
