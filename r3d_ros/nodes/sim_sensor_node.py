"""`sim_sensor`: a simulated depth camera (or spinning lidar) moving through a synthetic room.

Publishes ``points`` (PointCloud2 xyz+rgb in the sensor frame, sensor-data QoS) and ``odom``
(nav_msgs/Odometry, ``map`` -> ``sensor``) with the same stamp per frame, so a map node can fuse the
clouds exactly as it would a real robot's. The scene, trajectory and sensor come from
:mod:`r3d_ros.scenes` (seeded: the same parameters give the same frames).
"""

from __future__ import annotations

from nav_msgs.msg import Odometry
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2

from r3d_ros.nodes.common import describe
from r3d_ros.nodes.conversions import matrix_to_pose, to_pointcloud2
from r3d_ros.scenes.sensor_sim import SimulatedSensor, orbit_pose
from r3d_ros.scenes.synthetic import generate_scene

#: name, default, description, bounds (all read-only: the scene and sensor are built once, at start)
PARAMETERS = [
    ('scene_seed', 0, 'Seed of the synthetic room', {'ints': (0, 2**31 - 1)}),
    ('point_density', 400.0, 'Scene surface samples per m^2', {'floats': (10.0, 1e5)}),
    ('sensor_model', 'depth_camera', "'depth_camera' or 'lidar'", {}),
    ('width', 96, 'Depth camera columns', {'ints': (8, 4096)}),
    ('height', 72, 'Depth camera rows', {'ints': (8, 4096)}),
    ('max_range', 8.0, 'Sensor range (m)', {'floats': (0.5, 200.0)}),
    ('noise', True, 'Add range noise', {}),
    ('rate', 5.0, 'Frames per second (points and odom)', {'floats': (0.1, 100.0)}),
    ('period', 30.0, 'Seconds per lap of the orbit trajectory', {'floats': (1.0, 3600.0)}),
    ('sensor_frame', 'sensor', 'Frame of the published clouds', {}),
    ('map_frame', 'map', 'Fixed frame of the odometry', {}),
]


class SimSensorNode(Node):
    def __init__(self, **kw):
        super().__init__('sim_sensor', **kw)
        for name, default, text, bounds in PARAMETERS:
            self.declare_parameter(name, default, describe(text, read_only=True, **bounds))
        p = lambda n: self.get_parameter(n).value  # noqa: E731
        self.scene = generate_scene(p('scene_seed'), point_density=p('point_density'))
        self.sensor = SimulatedSensor(self.scene, p('sensor_model'), width=p('width'), height=p('height'),
                                      max_range=p('max_range'), noise=p('noise'), seed=p('scene_seed'))
        self.points_pub = self.create_publisher(PointCloud2, 'points', qos_profile_sensor_data)
        self.odom_pub = self.create_publisher(Odometry, 'odom', 50)
        self.t0 = self.get_clock().now()
        self.create_timer(1.0 / p('rate'), self._tick)
        self.get_logger().info(f'{self.scene.scene_id}: {len(self.scene.objects)} objects, '
                               f'{len(self.scene.points)} surface points; {p("sensor_model")} at {p("rate")} Hz')

    def _tick(self) -> None:
        now = self.get_clock().now()
        t = (now - self.t0).nanoseconds * 1e-9
        pose = orbit_pose(self.scene, t, period_s=self.get_parameter('period').value)
        xyz, rgb = self.sensor.capture(pose)
        stamp = now.to_msg()
        odom = Odometry()
        odom.header.stamp, odom.header.frame_id = stamp, self.get_parameter('map_frame').value
        odom.child_frame_id = self.get_parameter('sensor_frame').value
        odom.pose.pose = matrix_to_pose(pose)
        self.odom_pub.publish(odom)  # first, so the pose is there when the cloud arrives
        self.points_pub.publish(to_pointcloud2(xyz, rgb, frame_id=odom.child_frame_id, stamp=stamp))


def main(args=None) -> None:
    rclpy.init(args=args)
    node = SimSensorNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
