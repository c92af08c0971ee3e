"""r3d-play timing: /clock monotonicity and the rate factor over a 30 s bag, at several rates.

Writes a 30 s scene bag (``r3d-record --synthetic``'s writer: /points 5 Hz clouds of a simulated depth
camera, /odom 20 Hz), plays it with ``r3d-play --rate R`` for each R in a subprocess on a private loopback
domain, and records (wall receive time, clock) for every /clock message and every /points cloud here.
Figures per rate: /clock monotonic (no decrease), measured rate = slope of clock vs wall (least squares
over the playing span) and bag span / wall span, clouds received. Prints one JSON object last.

    .venv/bin/python bench/bag_replay.py             # 30 s bag at rates 1.0 and 3.0
    .venv/bin/python bench/bag_replay.py --quick     # 10 s bag
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import tempfile
import time

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from r3d_ros.ros_env import DomainLease, loopback_env  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('--duration', type=float, default=30.0)
    ap.add_argument('--rates', type=float, nargs='+', default=[1.0, 3.0])
    ap.add_argument('--quick', action='store_true')
    args = ap.parse_args()
    if args.quick:
        args.duration = 10.0
    lease = DomainLease()
    os.environ.update(loopback_env(lease.domain_id))
    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import PointCloud2

    from r3d_ros.bags.scene_bag import SceneBagConfig, write_scene_bag
    from r3d_ros.process import ManagedProcess, find_executable
    from r3d_ros.scenes.synthetic import generate_scene

    tmp = Path(tempfile.mkdtemp(prefix='r3d_bag_replay_'))
    t = time.perf_counter()
    bag, _ = write_scene_bag(generate_scene(1), tmp / 'bag', config=SceneBagConfig(duration_s=args.duration))
    write_s = time.perf_counter() - t
    rclpy.init()
    node = rclpy.create_node('bench_bag_replay')
    clock: list[tuple[float, float]] = []
    clouds: list[tuple[float, float]] = []
    node.create_subscription(Clock, '/clock', lambda m: clock.append(
        (time.monotonic(), m.clock.sec + m.clock.nanosec * 1e-9)), 1000)
    node.create_subscription(PointCloud2, '/points', lambda m: clouds.append(
        (time.monotonic(), m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)), qos_profile_sensor_data)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    n_clouds = int(args.duration * 5) + 1
    results = {}
    for rate in args.rates:
        clock.clear()
        clouds.clear()
        proc = ManagedProcess([find_executable('r3d-play'), str(bag), '--rate', str(rate), '--wait-for', '/points',
                               '--delay', '1.0'], env=dict(os.environ), name=f'play_{rate}', log_dir=str(tmp))
        deadline = time.monotonic() + args.duration / rate + 60
        while proc.alive() and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.01)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.01)
        proc.stop()
        w, c = np.array(clock).T
        playing = (c > c[0]) & (c < c[-1])
        slope = float(np.polyfit(w[playing], c[playing], 1)[0])
        span = float((c[playing][-1] - c[playing][0]) / (w[playing][-1] - w[playing][0]))
        results[str(rate)] = {
            'clock_msgs': len(c), 'clock_monotonic': bool(np.all(np.diff(c) >= 0)),
            'clock_span_s': float(c[-1] - c[0]), 'measured_rate_fit': slope, 'measured_rate_span': span,
            'rate_error_pct': 100 * abs(slope - rate) / rate, 'clouds_received': len(clouds),
            'clouds_in_bag': n_clouds, 'wall_s': float(w[-1] - w[0])}
        print(f'rate {rate}: {results[str(rate)]}', flush=True)
    node.destroy_node()
    rclpy.shutdown()
    ok = all(r['clock_monotonic'] and r['rate_error_pct'] < 5.0 for r in results.values())
    print(json.dumps({'bench': 'bag_replay', 'bag_duration_s': args.duration, 'bag_write_s': round(write_s, 2),
                      'rates': results, 'within_5pct_and_monotonic': ok}))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
