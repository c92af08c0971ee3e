"""Simulated depth sensor feeding r3d.launch.py's scene_map + reasoner (ros2 launch r3d_ros sim_demo.launch.py).

Same nodes and parameter files as `r3d-bringup --graph sim_demo` (config/bringup.yaml).

    ros2 launch r3d_ros sim_demo.launch.py device:=cuda
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory('r3d_ros')
    return LaunchDescription([
        DeclareLaunchArgument('device', default_value='auto', description='reasoner device: auto, cpu, cuda[:N]'),
        DeclareLaunchArgument('model_path', default_value='',
                              description='R3D checkpoint folder (empty: the embedded default)'),
        Node(package='r3d_ros', executable='sim_sensor', name='sim_sensor', output='screen',
             parameters=[os.path.join(share, 'config', 'sim_sensor.yaml')]),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'r3d.launch.py')),
            launch_arguments={'device': LaunchConfiguration('device'),
                              'model_path': LaunchConfiguration('model_path')}.items()),
    ])
