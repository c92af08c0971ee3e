"""rosbag2 record / replay: a bag written by a plain ``rosbags`` script (not the project's recorder) plays
through ``r3d-play`` and is received over DDS; /clock is monotonic; the rate factor holds; pause / step;
the recorder records a live topic; scene bags carry their questions."""

from __future__ import annotations

import json
from pathlib import Path
import time

import numpy as np
import pytest

from r3d_ros.bags.io import bag_info, read_messages
from r3d_ros.bags.playback import Timeline

T0 = 1_650_000_000 * 10**9


def write_plain_bag(path: Path, duration: float = 4.0, cloud_hz: float = 5.0, odom_hz: float = 20.0,
                    storage: str = 'sqlite3', seed: int = 5, max_points: int = 4000) -> Path:
    """A bag of a simulated sensor orbiting a synthetic room, written with nothing but the rosbags API:
    /points (PointCloud2 xyz + packed rgb float, frame 'sensor'), /odom (map -> sensor), /chatter (String)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from scipy.spatial.transform import Rotation

    from r3d_ros.scenes.sensor_sim import SimulatedSensor, orbit_pose
    from r3d_ros.scenes.synthetic import generate_scene

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    scene = generate_scene(seed)
    sensor = SimulatedSensor(scene, max_points=max_points, seed=seed)

    def header(t):
        return T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=t // 10**9, nanosec=t % 10**9),
                                        frame_id='')

    plugin = StoragePlugin.SQLITE3 if storage == 'sqlite3' else StoragePlugin.MCAP
    with Writer(path, version=8, storage_plugin=plugin) as w:
        c_pts = w.add_connection('/points', 'sensor_msgs/msg/PointCloud2', typestore=ts)
        c_odom = w.add_connection('/odom', 'nav_msgs/msg/Odometry', typestore=ts)
        c_chat = w.add_connection('/chatter', 'std_msgs/msg/String', typestore=ts)
        events = sorted([(round(i * 1e9 / odom_hz), 0) for i in range(int(duration * odom_hz) + 1)] +
                        [(round(i * 1e9 / cloud_hz), 1) for i in range(int(duration * cloud_hz) + 1)] +
                        [(i * 10**9, 2) for i in range(int(duration) + 1)])
        for dt, kind in events:
            t = T0 + dt
            pose = orbit_pose(scene, dt * 1e-9)
            if kind == 0:
                h = header(t)
                h.frame_id = 'map'
                x, y, z, qw = Rotation.from_matrix(pose[:3, :3]).as_quat()
                p = T['geometry_msgs/msg/Pose'](
                    position=T['geometry_msgs/msg/Point'](x=pose[0, 3], y=pose[1, 3], z=pose[2, 3]),
                    orientation=T['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=qw))
                v = T['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0)
                msg = T['nav_msgs/msg/Odometry'](
                    header=h, child_frame_id='sensor',
                    pose=T['geometry_msgs/msg/PoseWithCovariance'](pose=p, covariance=np.zeros(36)),
                    twist=T['geometry_msgs/msg/TwistWithCovariance'](
                        twist=T['geometry_msgs/msg/Twist'](linear=v, angular=v), covariance=np.zeros(36)))
                w.write(c_odom, t, ts.serialize_cdr(msg, 'nav_msgs/msg/Odometry'))
            elif kind == 1:
                xyz, rgb = sensor.capture(pose)
                rgb = rgb.astype(np.uint32)
                packed = ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)
                buf = np.concatenate([xyz.astype(np.float32), packed[:, None]], axis=1)
                F = T['sensor_msgs/msg/PointField']
                h = header(t)
                h.frame_id = 'sensor'
                msg = T['sensor_msgs/msg/PointCloud2'](
                    header=h, height=1, width=len(buf),
                    fields=[F(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate('xyz')] +
                           [F(name='rgb', offset=12, datatype=7, count=1)],
                    is_bigendian=False, point_step=16, row_step=16 * len(buf),
                    data=np.frombuffer(buf.tobytes(), np.uint8), is_dense=True)
                w.write(c_pts, t, ts.serialize_cdr(msg, 'sensor_msgs/msg/PointCloud2'))
            else:
                w.write(c_chat, t, ts.serialize_cdr(T['std_msgs/msg/String'](data=f'tick {dt // 10**9}'),
                                                    'std_msgs/msg/String'))
    return path


def clock_series(msgs) -> np.ndarray:
    return np.array([m.clock.sec + m.clock.nanosec * 1e-9 for m in msgs])


def test_timeline_rate_pause_step():
    now = [0.0]
    tl = Timeline(1000, rate=2.0, clock=lambda: now[0])
    now[0] = 1.5
    assert tl.now() == 1000 + 3_000_000_000
    tl.pause()
    now[0] = 10.0
    assert tl.now() == 1000 + 3_000_000_000 and tl.wall_until(tl.now() + 1) == float('inf')
    tl.advance_to(1000 + 4_000_000_000)     # a step while paused
    tl.advance_to(5)                        # never backwards
    assert tl.now() == 1000 + 4_000_000_000
    tl.resume()
    now[0] = 11.0
    assert tl.now() == 1000 + 6_000_000_000
    assert tl.wall_until(1000 + 8_000_000_000) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Timeline(0, rate=0)


def test_plain_bag_reads_back(tmp_path):
    bag = write_plain_bag(tmp_path / 'plain', duration=2.0)
    info = bag_info(bag)
    assert set(info.topics) == {'/points', '/odom', '/chatter'}
    assert info.topics['/points'].qos.reliable is False        # no QoS recorded: sensor-data default
    assert info.duration_s == pytest.approx(2.0) and info.storage == 'sqlite3'
    stamps = [t for _, _, t, _ in read_messages(bag)]
    assert stamps == sorted(stamps) and len(stamps) == info.count


@pytest.mark.ros
def test_plain_bag_plays_over_dds_with_monotonic_clock_and_rate(tmp_path, launch_node, ros_node):
    from rclpy.qos import qos_profile_sensor_data
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import String

    from r3d_ros.pointcloud import xyz_rgb_from_cloud

    duration, rate = 4.0, 2.0
    bag = write_plain_bag(tmp_path / 'plain', duration=duration)
    clock = ros_node.listen('/clock', Clock, 1000)
    wall_clock: list[tuple[float, float]] = []   # (wall receive time, clock) for the rate fit
    ros_node.node.create_subscription(Clock, '/clock', lambda m: wall_clock.append(
        (time.monotonic(), m.clock.sec + m.clock.nanosec * 1e-9)), 1000)
    points = ros_node.listen('/points', PointCloud2, qos_profile_sensor_data)
    chatter = ros_node.listen('/chatter', String, 10)
    player = launch_node('r3d-play', args=[str(bag), '--rate', str(rate), '--wait-for', '/points', '/chatter',
                                           '--delay', '0.5'])
    deadline = time.monotonic() + 60
    while player.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not player.alive() and player.proc.returncode == 0, player.output()
    time.sleep(0.3)
    # every cloud arrives intact (loopback shared memory), the strings too
    assert len(points.messages) == int(duration * 5) + 1, player.output()
    xyz, rgb = xyz_rgb_from_cloud(points.messages[0])
    assert len(xyz) > 100 and rgb is not None
    assert [m.data for m in chatter.messages] == [f'tick {i}' for i in range(int(duration) + 1)]
    # /clock: monotonic, covers the bag, advances at `rate` bag seconds per wall second
    t = clock_series(clock.messages)
    assert len(t) > 50 and np.all(np.diff(t) >= 0)
    assert t[0] == pytest.approx(T0 * 1e-9, abs=0.1) and t[-1] == pytest.approx(T0 * 1e-9 + duration, abs=1e-6)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in points.messages]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] == pytest.approx(duration)
    w, c = np.array(wall_clock).T
    moving = (c > c[0]) & (c < c[-1])               # while the bag plays (not the clock's first/last value)
    slope = np.polyfit(w[moving], c[moving], 1)[0]
    assert slope == pytest.approx(rate, rel=0.1), slope   # bench/bag_replay.py: within 5 % over 30 s


@pytest.mark.ros
def test_pause_step_resume_and_start_offset(tmp_path, launch_node, ros_node):
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    bag = write_plain_bag(tmp_path / 'plain', duration=3.0, storage='mcap')
    chatter = ros_node.listen('/chatter', String, 10)
    player = launch_node('r3d-play', args=[str(bag), '--paused', '--topics', '/chatter', '--start-offset', '0.5',
                                           '--wait-for', '/chatter'])
    assert ros_node.call_service(Trigger, '/r3d_player/step', Trigger.Request(), timeout=30).success
    chatter.wait(lambda m: True, timeout=10)
    time.sleep(0.5)
    assert [m.data for m in chatter.messages] == ['tick 1']   # offset 0.5 s skips tick 0; paused after one
    assert ros_node.call_service(Trigger, '/r3d_player/resume', Trigger.Request()).success
    chatter.wait(lambda m: m.data == 'tick 3', timeout=10)
    assert [m.data for m in chatter.messages] == ['tick 1', 'tick 2', 'tick 3']
    deadline = time.monotonic() + 10
    while player.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not player.alive(), player.output()


@pytest.mark.ros
def test_recorder_records_live_topics_with_their_qos(tmp_path, launch_node, ros_node):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import String

    from r3d_ros.nodes.conversions import to_pointcloud2

    out = tmp_path / 'rec'
    rec = launch_node('r3d-record', args=['-o', str(out), '--storage', 'sqlite3', '--topics', '/points', '/query'])
    pts = ros_node.publisher('/points', PointCloud2, qos_profile_sensor_data)
    q = ros_node.publisher('/query', String, 10)
    assert ros_node.wait_for_subscriber('/points', 30) and ros_node.wait_for_subscriber('/query', 30), rec.output()
    cloud = to_pointcloud2(np.random.default_rng(0).random((500, 3), np.float32), frame_id='sensor')
    for i in range(5):
        pts.publish(cloud)
        q.publish(String(data=json.dumps({'id': f'q{i}', 'question': 'where?'})))
        time.sleep(0.1)
    time.sleep(0.5)
    rec.stop()
    info = bag_info(out)
    assert info.topics['/points'].count == 5 and info.topics['/query'].count == 5, rec.output()
    assert info.topics['/points'].msgtype == 'sensor_msgs/msg/PointCloud2'
    assert info.topics['/points'].qos.reliable is False and info.topics['/query'].qos.reliable is True
