"""sim_sensor as a separate process; this test process receives its clouds and odometry over DDS."""

from __future__ import annotations

from nav_msgs.msg import Odometry
import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2

from r3d_ros.pointcloud import xyz_rgb_from_cloud


@pytest.mark.ros
@pytest.mark.parametrize('model', ['depth_camera', 'lidar'])
def test_sim_sensor_publishes_clouds_and_odometry(ros_node, launch_node, model):
    proc = launch_node('sim_sensor', params={'sensor_model': model, 'scene_seed': 3, 'cloud_rate': 4.0,
                                             'max_points': 5000})
    cloud = ros_node.wait_for_message('points', PointCloud2, qos=qos_profile_sensor_data, timeout=30.0)
    odom = ros_node.wait_for_message('odom', Odometry, timeout=30.0)
    assert proc.alive(), proc.output()
    assert cloud is not None and odom is not None, proc.output()
    assert cloud.header.frame_id == 'sensor'
    xyz, rgb = xyz_rgb_from_cloud(cloud)
    assert 100 < len(xyz) <= 5000 and rgb is not None and rgb.shape == xyz.shape
    assert np.isfinite(xyz).all() and np.linalg.norm(xyz, axis=1).max() < 8.5
    assert odom.header.frame_id == 'map' and odom.child_frame_id == 'sensor'
    assert abs(odom.pose.pose.position.z - 1.3) < 1e-6
