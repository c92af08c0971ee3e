"""Test helper process: publishes large xyz+rgb clouds with sensor-data QoS until stopped."""

import sys

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2

from r3d_ros.nodes.conversions import to_pointcloud2


def main():
    rclpy.init(args=sys.argv)
    node = rclpy.create_node('cloud_talker')
    n = node.declare_parameter('points', 120_000).value
    pub = node.create_publisher(PointCloud2, 'points', qos_profile_sensor_data)
    xyz = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    rgb = (np.arange(n * 3) % 256).astype(np.uint8).reshape(n, 3)
    msg = to_pointcloud2(xyz, rgb, frame_id='sensor')
    node.create_timer(0.1, lambda: pub.publish(msg))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
