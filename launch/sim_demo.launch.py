"""Simulated depth sensor + scene_map + reasoner (ros2 launch r3d_ros sim_demo.launch.py).

Same nodes and parameter files as `r3d-bringup --graph sim_demo` (config/bringup.yaml).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch_ros.actions import Node


def generate_launch_description():
    config = os.path.join(get_package_share_directory('r3d_ros'), 'config')
    return LaunchDescription([
        Node(package='r3d_ros', executable='sim_sensor', name='sim_sensor', output='screen',
             parameters=[os.path.join(config, 'sim_sensor.yaml')]),
        Node(package='r3d_ros', executable='scene_map', name='scene_map', output='screen',
             parameters=[os.path.join(config, 'scene_map.yaml')]),
        Node(package='r3d_ros', executable='reasoner', name='reasoner', output='screen',
             parameters=[os.path.join(config, 'reasoner.yaml')]),
    ])
