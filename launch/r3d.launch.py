"""scene_map + reasoner on a robot's live `points` and `odom` (ros2 launch r3d_ros r3d.launch.py).

Same nodes and parameter files as `r3d-bringup --graph r3d` (config/bringup.yaml).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch_ros.actions import Node


def generate_launch_description():
    config = os.path.join(get_package_share_directory('r3d_ros'), 'config')
    return LaunchDescription([
        Node(package='r3d_ros', executable='scene_map', name='scene_map', output='screen',
             parameters=[os.path.join(config, 'scene_map.yaml')]),
        Node(package='r3d_ros', executable='reasoner', name='reasoner', output='screen',
             parameters=[os.path.join(config, 'reasoner.yaml')]),
    ])
