"""ROS message <-> library type conversions shared by the nodes (the only place they touch both)."""

from __future__ import annotations

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose
import numpy as np
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from r3d_ros.pointcloud import CloudData, cloud_from_xyz_rgb


def to_pointcloud2(cloud: CloudData | np.ndarray, rgb: np.ndarray | None = None, frame_id: str = 'map',
                   stamp: Time | None = None) -> PointCloud2:
    """Build a PointCloud2 from a CloudData or from xyz (N,3) [+ rgb (N,3) uint8]."""
    if not isinstance(cloud, CloudData):
        cloud = cloud_from_xyz_rgb(cloud, rgb)
    msg = PointCloud2()
    msg.header = Header(frame_id=frame_id, stamp=stamp if stamp is not None else Time())
    msg.height, msg.width = cloud.height, cloud.width
    msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
                  for f in cloud.fields]
    msg.is_bigendian = cloud.is_bigendian
    msg.point_step, msg.row_step = cloud.point_step, cloud.row_step
    msg.data = cloud.data  # bytes: rclpy takes the fast path for a bytes-like object
    msg.is_dense = cloud.is_dense
    return msg


def stamp_to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(t: float) -> Time:
    sec = int(np.floor(t))
    return Time(sec=sec, nanosec=min(int(round((t - sec) * 1e9)), 999_999_999))


def pose_to_matrix(pose: Pose) -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 homogeneous transform (float64)."""
    q = pose.orientation
    T = np.eye(4)
    norm = np.sqrt(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w)
    T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix() if norm > 0 else np.eye(3)
    T[:3, 3] = [pose.position.x, pose.position.y, pose.position.z]
    return T


def matrix_to_pose(T: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T[:3, 3])
    x, y, z, w = Rotation.from_matrix(np.asarray(T)[:3, :3]).as_quat()
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (
        float(x), float(y), float(z), float(w))
    return pose
