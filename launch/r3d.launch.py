"""scene_map + reasoner on a robot's live point clouds (ros2 launch r3d_ros r3d.launch.py).

Same nodes and parameter files as `r3d-bringup --graph r3d` (config/bringup.yaml); the arguments override
what a robot usually differs in:

    ros2 launch r3d_ros r3d.launch.py points:=/camera/depth/points pose_topic:=/odom device:=cuda
    ros2 launch r3d_ros r3d.launch.py use_sim_time:=true            # replaying a bag (r3d-play publishes /clock)
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    config = os.path.join(get_package_share_directory('r3d_ros'), 'config')
    use_sim_time = ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool)
    return LaunchDescription([
        DeclareLaunchArgument('points', default_value='points', description='PointCloud2 topic to map'),
        DeclareLaunchArgument('pose_topic', default_value='odom',
                              description='nav_msgs/Odometry or PoseStamped topic giving the sensor pose'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='follow /clock (bag replay)'),
        DeclareLaunchArgument('device', default_value='auto', description='reasoner device: auto, cpu, cuda[:N]'),
        DeclareLaunchArgument('model_path', default_value='',
                              description='R3D checkpoint folder (empty: the embedded default)'),
        Node(package='r3d_ros', executable='scene_map', name='scene_map', output='screen',
             parameters=[os.path.join(config, 'scene_map.yaml'),
                         {'use_sim_time': use_sim_time,
                          'pose_topic': ParameterValue(LaunchConfiguration('pose_topic'), value_type=str)}],
             remappings=[('points', LaunchConfiguration('points'))]),
        Node(package='r3d_ros', executable='reasoner', name='reasoner', output='screen',
             parameters=[os.path.join(config, 'reasoner.yaml'),
                         {'use_sim_time': use_sim_time,
                          'device': ParameterValue(LaunchConfiguration('device'), value_type=str),
                          'model_path': ParameterValue(LaunchConfiguration('model_path'), value_type=str)}]),
    ])
