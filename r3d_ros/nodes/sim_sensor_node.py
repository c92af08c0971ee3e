"""``sim_sensor``: a simulated depth camera / lidar moving through a synthetic room.

Publishes ``points`` (sensor_msgs/PointCloud2 xyz+rgb, sensor-data QoS, frame ``sensor``) and ``odom``
(nav_msgs/Odometry, frame ``map``, child ``sensor``), each at its own rate. The scene, the sensor and the
orbit trajectory come from :mod:`r3d_ros.scenes` (this node only adapts them to ROS).
"""

from __future__ import annotations

from nav_msgs.msg import Odometry
import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2

from r3d_ros.nodes.common import report_unknown_overrides
from r3d_ros.nodes.conversions import matrix_to_pose, to_pointcloud2
from r3d_ros.scenes.sensor_sim import MODELS, SimulatedSensor, orbit_pose
from r3d_ros.scenes.synthetic import generate_scene


def _desc(text: str, lo=None, hi=None, integer=False, read_only=True) -> ParameterDescriptor:
    d = ParameterDescriptor(description=text, read_only=read_only)
    if lo is not None:
        if integer:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


class SimSensorNode(Node):
    def __init__(self, **kwargs):
        super().__init__('sim_sensor', **kwargs)
        p = self.declare_parameter
        seed = p('scene_seed', 0, _desc('seed of the synthetic room', 0, 2**31 - 1, True)).value
        min_obj = p('min_objects', 5, _desc('fewest objects in the room', 0, 30, True)).value
        max_obj = p('max_objects', 30, _desc('most objects in the room', 0, 60, True)).value
        density = p('point_density', 400.0, _desc('scene surface samples per square metre', 10.0, 10000.0)).value
        model = p('sensor_model', 'depth_camera', _desc(f'one of {list(MODELS)}')).value
        width = p('width', 96, _desc('depth camera z-buffer width (pixels)', 8, 1024, True)).value
        height = p('height', 72, _desc('depth camera z-buffer height (pixels)', 8, 1024, True)).value
        channels = p('lidar_channels', 32, _desc('lidar beams', 1, 128, True)).value
        max_range = p('max_range', 8.0, _desc('maximum range (m)', 0.5, 100.0)).value
        noise = p('noise', True, _desc('add range noise')).value
        max_points = p('max_points', 20000, _desc('cap on points per cloud (0 = no cap)', 0, 10**7, True)).value
        self.cloud_rate = p('cloud_rate', 5.0, _desc('clouds per second', 0.1, 100.0)).value
        self.odom_rate = p('odom_rate', 20.0, _desc('odometry messages per second', 0.1, 1000.0)).value
        self.period = p('orbit_period', 30.0, _desc('seconds per lap of the orbit', 1.0, 3600.0)).value
        self.radius = p('orbit_radius_fraction', 0.3, _desc('orbit radius / smaller room side', 0.0, 0.45)).value
        self.sensor_height = p('sensor_height', 1.3, _desc('sensor height above the floor (m)', 0.1, 3.0)).value
        self.pitch = p('pitch_deg', 15.0, _desc('downward pitch (degrees)', -45.0, 89.0)).value
        self.frame = p('sensor_frame', 'sensor', _desc('frame of the clouds')).value
        self.map_frame = p('map_frame', 'map', _desc('fixed frame of the odometry')).value
        if model not in MODELS:
            raise ValueError(f'sensor_model must be one of {MODELS}')
        self.scene = generate_scene(seed, num_objects=(min_obj, max(min_obj, max_obj)), point_density=density)
        self.sensor = SimulatedSensor(self.scene, model, width=width, height=height, channels=channels,
                                      max_range=max_range, noise=noise, max_points=max_points or None, seed=seed)
        self.cloud_pub = self.create_publisher(PointCloud2, 'points', qos_profile_sensor_data)
        self.odom_pub = self.create_publisher(Odometry, 'odom', 10)
        self.start = self.get_clock().now()
        self.create_timer(1.0 / self.cloud_rate, self.publish_cloud)
        self.create_timer(1.0 / self.odom_rate, self.publish_odom)
        self.get_logger().info(f'{self.scene.scene_id}: {len(self.scene.objects)} objects, '
                               f'{len(self.scene.points)} points, {model}')

    def _pose(self):
        now = self.get_clock().now()
        t = (now - self.start).nanoseconds * 1e-9
        pose = orbit_pose(self.scene, t, self.period, self.radius, self.sensor_height, self.pitch)
        return now, pose

    def publish_cloud(self):
        now, pose = self._pose()
        xyz, rgb = self.sensor.capture(pose)
        self.cloud_pub.publish(to_pointcloud2(xyz, rgb, frame_id=self.frame, stamp=now.to_msg()))

    def publish_odom(self):
        now, pose = self._pose()
        msg = Odometry()
        msg.header.stamp = now.to_msg()
        msg.header.frame_id = self.map_frame
        msg.child_frame_id = self.frame
        msg.pose.pose = matrix_to_pose(np.asarray(pose))
        self.odom_pub.publish(msg)


def main(args=None):
    rclpy.init(args=args)
    node = None
    try:
        node = SimSensorNode()
        report_unknown_overrides(node)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == '__main__':
    main()
