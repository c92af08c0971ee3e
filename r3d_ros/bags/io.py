"""rosbag2 reading and writing with ``rosbags`` (MCAP by default, sqlite3 as an option), QoS as plain data.

Messages stay CDR bytes end to end: the recorder writes what it receives (rclpy raw subscriptions), the
player publishes what it reads (rclpy publishes bytes as serialized messages). Only code that needs the
content (the scene-bag writer, the offline evaluator) (de)serializes, with the rosbags typestore of ROS 2
Kilted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}

#: Types whose publishers use sensor-data QoS (best effort, shallow) when a bag records no QoS for them.
SENSOR_TYPES = {'sensor_msgs/msg/PointCloud2', 'sensor_msgs/msg/PointCloud', 'sensor_msgs/msg/LaserScan',
                'sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage', 'sensor_msgs/msg/Imu'}

_TYPESTORE = None


def typestore():
    """The rosbags typestore of ROS 2 Kilted (standard message definitions), built once."""
    global _TYPESTORE
    if _TYPESTORE is None:
        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


@dataclass(frozen=True)
class TopicQos:
    """The QoS settings that decide whether a publisher and a subscription match (and what late joiners get)."""

    reliable: bool = True
    transient_local: bool = False
    depth: int = 10

    @classmethod
    def sensor_data(cls) -> TopicQos:
        return cls(reliable=False, transient_local=False, depth=5)

    @classmethod
    def for_type(cls, msgtype: str) -> TopicQos:
        return cls.sensor_data() if msgtype in SENSOR_TYPES else cls()

    @classmethod
    def from_profiles(cls, profiles: Iterable[Qos], msgtype: str = '') -> TopicQos:
        """What ``ros2 bag play`` offers for recorded profiles: best effort if any recorded publisher was,
        transient local only if all were; the type's default when nothing was recorded."""
        profiles = list(profiles or [])
        if not profiles:
            return cls.for_type(msgtype)
        reliable = all(p.reliability != QosReliability.BEST_EFFORT for p in profiles)
        latched = all(p.durability == QosDurability.TRANSIENT_LOCAL for p in profiles)
        depth = max(int(p.depth or 0) for p in profiles) or 10
        return cls(reliable=reliable, transient_local=latched, depth=max(depth, 1))

    def to_rosbags(self) -> Qos:
        zero = QosTime(sec=0, nsec=0)
        return Qos(history=QosHistory.KEEP_LAST, depth=self.depth,
                   reliability=QosReliability.RELIABLE if self.reliable else QosReliability.BEST_EFFORT,
                   durability=QosDurability.TRANSIENT_LOCAL if self.transient_local else QosDurability.VOLATILE,
                   deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
                   liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int
    qos: TopicQos


@dataclass
class BagInfo:
    path: Path
    start_ns: int
    end_ns: int
    count: int
    topics: dict[str, TopicInfo]
    storage: str

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) * 1e-9


def bag_info(path: str | Path) -> BagInfo:
    with Reader(path) as reader:
        topics: dict[str, TopicInfo] = {}
        for c in reader.connections:
            qos = TopicQos.from_profiles(getattr(c.ext, 'offered_qos_profiles', []) or [], c.msgtype)
            prev = topics.get(c.topic)
            topics[c.topic] = TopicInfo(c.topic, c.msgtype, c.msgcount + (prev.count if prev else 0), qos)
        storage = 'mcap' if any(Path(path).glob('*.mcap')) else 'sqlite3'
        # rosbags' end_time is one nanosecond after the last message
        end = max(reader.start_time, reader.end_time - 1) if reader.message_count else reader.start_time
        return BagInfo(Path(path), reader.start_time, end, reader.message_count, topics, storage)


def read_messages(path: str | Path, topics: Iterable[str] | None = None, start_ns: int | None = None,
                  stop_ns: int | None = None) -> Iterator[tuple[str, str, int, bytes]]:
    """(topic, msgtype, timestamp ns, CDR bytes) in time order."""
    wanted = set(topics) if topics is not None else None
    with Reader(path) as reader:
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        for conn, t, data in reader.messages(connections=conns, start=start_ns, stop=stop_ns):
            yield conn.topic, conn.msgtype, t, bytes(data)


def deserialize(data: bytes, msgtype: str):
    return typestore().deserialize_cdr(data, msgtype)


def serialize(msg, msgtype: str) -> bytes:
    return bytes(typestore().serialize_cdr(msg, msgtype))


class BagWriter:
    """A rosbag2 writer that registers topics on first use: ``write(topic, msgtype, t_ns, cdr_bytes, qos)``."""

    def __init__(self, path: str | Path, storage: str = 'mcap'):
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {sorted(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])
        self._conns: dict[str, object] = {}
        self.count = 0
        self._open = False

    def open(self) -> BagWriter:
        self._writer.open()
        self._open = True
        return self

    def has_topic(self, topic: str) -> bool:
        return topic in self._conns

    def add_topic(self, topic: str, msgtype: str, qos: TopicQos | None = None) -> None:
        if topic in self._conns:
            return
        ts = typestore()
        if msgtype not in ts.fielddefs:
            raise KeyError(f'message type {msgtype!r} is not in the ROS 2 Kilted typestore')
        qos = qos or TopicQos.for_type(msgtype)
        self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=ts,
                                                         offered_qos_profiles=[qos.to_rosbags()])

    def write(self, topic: str, msgtype: str, t_ns: int, data: bytes, qos: TopicQos | None = None) -> None:
        self.add_topic(topic, msgtype, qos)
        self._writer.write(self._conns[topic], int(t_ns), data)
        self.count += 1

    def write_msg(self, topic: str, msgtype: str, t_ns: int, msg, qos: TopicQos | None = None) -> None:
        self.write(topic, msgtype, t_ns, serialize(msg, msgtype), qos)

    def close(self) -> None:
        if self._open:
            self._writer.close()
            self._open = False

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


# -- a few message builders (rosbags typestore objects) -----------------------------------------------------
def _stamp(t_ns: int):
    Time = typestore().types['builtin_interfaces/msg/Time']
    return Time(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))


def header(t_ns: int, frame_id: str):
    return typestore().types['std_msgs/msg/Header'](stamp=_stamp(t_ns), frame_id=frame_id)


def pointcloud2_msg(cloud, t_ns: int, frame_id: str):
    """A rosbags PointCloud2 from a :class:`r3d_ros.pointcloud.CloudData`."""
    import numpy as np

    T = typestore().types
    fields = [T['sensor_msgs/msg/PointField'](name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
              for f in cloud.fields]
    return T['sensor_msgs/msg/PointCloud2'](
        header=header(t_ns, frame_id), height=cloud.height, width=cloud.width, fields=fields,
        is_bigendian=cloud.is_bigendian, point_step=cloud.point_step, row_step=cloud.row_step,
        data=np.frombuffer(cloud.data, np.uint8), is_dense=cloud.is_dense)


def odometry_msg(pose_matrix, t_ns: int, frame_id: str, child_frame_id: str):
    import numpy as np
    from scipy.spatial.transform import Rotation

    T = typestore().types
    m = np.asarray(pose_matrix, np.float64)
    x, y, z, w = Rotation.from_matrix(m[:3, :3]).as_quat()
    pose = T['geometry_msgs/msg/Pose'](position=T['geometry_msgs/msg/Point'](x=m[0, 3], y=m[1, 3], z=m[2, 3]),
                                       orientation=T['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=w))
    cov = np.zeros(36, np.float64)
    twist = T['geometry_msgs/msg/Twist'](linear=T['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0),
                                         angular=T['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0))
    return T['nav_msgs/msg/Odometry'](
        header=header(t_ns, frame_id), child_frame_id=child_frame_id,
        pose=T['geometry_msgs/msg/PoseWithCovariance'](pose=pose, covariance=cov),
        twist=T['geometry_msgs/msg/TwistWithCovariance'](twist=twist, covariance=cov.copy()))


def odometry_matrix(msg):
    """4x4 pose of a deserialized nav_msgs/Odometry."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    m = np.eye(4)
    if q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w > 0:
        m[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    m[:3, 3] = [p.x, p.y, p.z]
    return m
