"""Delivery of large PointCloud2 messages between two processes with sensor-data (best-effort) QoS.

One process publishes ``--count`` clouds of ``--points`` xyz+rgb points at ``--rate`` Hz; another counts
the distinct clouds that arrive whole. Run once with the project's loopback profile
(config/fastdds_loopback.xml) and once with Fast DDS's default transports (kept on 127.0.0.1), in the
same run. Prints one JSON object last.

    .venv/bin/python bench/dds_delivery.py            # 100 clouds of 120k points at 10 Hz, both profiles
    .venv/bin/python bench/dds_delivery.py --quick    # 30 clouds
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import time

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from r3d_ros.ros_env import DomainLease, loopback_env  # noqa: E402

TOPIC = 'bench_points'


def run_publisher(args) -> None:
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data

    from r3d_ros.nodes.conversions import to_pointcloud2

    rclpy.init()
    node = rclpy.create_node('bench_cloud_publisher')
    pub = node.create_publisher(__import__('sensor_msgs.msg', fromlist=['PointCloud2']).PointCloud2,
                                TOPIC, qos_profile_sensor_data)
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(args.points, 3)).astype(np.float32)
    rgb = rng.integers(0, 255, (args.points, 3), dtype=np.uint8)
    msg = to_pointcloud2(xyz, rgb, frame_id='sensor')
    deadline = time.monotonic() + 20
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let discovery settle on both sides before the first sample
    period = 1.0 / args.rate
    t0 = time.monotonic()
    for i in range(args.count):
        msg.header.stamp.sec = i  # the sequence number travels in the stamp
        pub.publish(msg)
        next_t = t0 + (i + 1) * period
        time.sleep(max(0.0, next_t - time.monotonic()))
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()


def run_subscriber(args) -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2

    from r3d_ros.pointcloud import xyz_rgb_from_cloud

    rclpy.init()
    node = rclpy.create_node('bench_cloud_subscriber')
    seen: set[int] = set()
    whole = [0]

    def on_cloud(msg):
        xyz, _ = xyz_rgb_from_cloud(msg)
        if xyz.shape[0] == args.points:
            whole[0] += 1
            seen.add(msg.header.stamp.sec)

    node.create_subscription(PointCloud2, TOPIC, on_cloud, qos_profile_sensor_data)
    deadline = time.monotonic() + args.count / args.rate + 30
    while time.monotonic() < deadline and len(seen) < args.count:
        rclpy.spin_once(node, timeout_sec=0.1)
        if node.count_publishers(TOPIC) == 0 and seen:
            break  # publisher finished and left
    print(json.dumps({'received': len(seen)}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def measure(profile: Path, args, domain_id: int) -> dict:
    env = loopback_env(domain_id)
    env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(profile)
    common = [sys.executable, __file__, '--points', str(args.points), '--count', str(args.count),
              '--rate', str(args.rate)]
    sub = subprocess.Popen(common + ['--role', 'sub'], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    pub = subprocess.Popen(common + ['--role', 'pub'], env=env)
    pub.wait(timeout=args.count / args.rate + 60)
    out, _ = sub.communicate(timeout=60)
    received = json.loads(out.strip().splitlines()[-1])['received']
    return {'profile': profile.name, 'sent': args.count, 'received': received,
            'delivery_pct': round(100.0 * received / args.count, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--role', choices=['bench', 'pub', 'sub'], default='bench')
    ap.add_argument('--points', type=int, default=120_000)
    ap.add_argument('--count', type=int, default=100)
    ap.add_argument('--rate', type=float, default=10.0)
    ap.add_argument('--quick', action='store_true', help='30 clouds instead of 100')
    args = ap.parse_args()
    if args.role == 'pub':
        return run_publisher(args)
    if args.role == 'sub':
        return run_subscriber(args)
    if args.quick:
        args.count = 30
    lease = DomainLease()
    project = measure(HERE.parent / 'config' / 'fastdds_loopback.xml', args, lease.domain_id)
    baseline = measure(HERE / 'fastdds_default_transports_loopback.xml', args, lease.domain_id)
    print(json.dumps({
        'bench': 'dds_delivery', 'points_per_cloud': args.points,
        'bytes_per_cloud': args.points * 16, 'rate_hz': args.rate, 'qos': 'sensor_data (best effort)',
        'project_profile': project, 'default_transports': baseline,
        'host_cpus': os.cpu_count(),
    }))


if __name__ == '__main__':
    main()
