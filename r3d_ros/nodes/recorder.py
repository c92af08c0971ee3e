"""``r3d-record``: record the project's topics to rosbag2, or write evaluation bags from synthetic scenes.

    r3d-record -o run1                       # points, odom, query, answer, ... until Ctrl-C (MCAP)
    r3d-record -o run1 --storage sqlite3 --topics /points /odom --duration 30
    r3d-record -o run1 --all                 # every topic that appears
    r3d-record --from-scenes data/synth --split test --limit 5 -o bags/   # no ROS: one bag per scene
    r3d-record --synthetic 3 --seed 7 -o bags/                            # no ROS: fresh synthetic rooms

Live recording subscribes with each topic's publishers' QoS (best effort if any publisher is, transient
local if all are) as raw CDR, so any message type is written as received, stamped with the node's clock
(bag time = sim time under ``use_sim_time``). Scene bags: see :mod:`r3d_ros.bags.scene_bag`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys
import threading
import time

DEFAULT_TOPICS = ('/points', '/odom', '/query', '/cancel', '/answer', '/answer_text', '/plan', '/plan_path',
                  '/grounding', '/selected_views', '/scene_map/cloud', '/clock')


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='r3d-record', description=__doc__.split('\n\n')[0])
    ap.add_argument('-o', '--out', required=True, help='bag directory (created; must not exist), or the output '
                                                       'folder of scene bags')
    ap.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    ap.add_argument('--topics', nargs='+', default=list(DEFAULT_TOPICS))
    ap.add_argument('--all', action='store_true', help='record every topic that appears')
    ap.add_argument('--duration', type=float, default=0.0, help='stop after this many seconds (0 = Ctrl-C); '
                                                               'for scene bags, the bag length (default 30)')
    g = ap.add_argument_group('scene bags (no ROS)')
    g.add_argument('--from-scenes', metavar='DIR', help='an r3d-make-data directory')
    g.add_argument('--split', default='test', help='which split of --from-scenes (default test)')
    g.add_argument('--synthetic', type=int, default=0, metavar='N', help='N fresh synthetic rooms')
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--limit', type=int, default=0, help='at most this many scenes (0 = all)')
    g.add_argument('--per-task', type=int, default=1, help='questions per task for --synthetic rooms')
    g.add_argument('--cloud-rate', type=float, default=5.0)
    g.add_argument('--odom-rate', type=float, default=20.0)
    g.add_argument('--max-points', type=int, default=20000)
    return ap


def write_scene_bags(args) -> int:
    from collections import defaultdict

    from tqdm import tqdm

    from r3d_ros.bags.scene_bag import SceneBagConfig, write_scene_bag

    cfg = SceneBagConfig(duration_s=args.duration or 30.0, cloud_rate=args.cloud_rate, odom_rate=args.odom_rate,
                         max_points=args.max_points, storage=args.storage)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    if args.from_scenes:
        from r3d_ros.scenes.dataset import SceneStore, load_records

        store = SceneStore(args.from_scenes)
        by_scene = defaultdict(list)
        for r in load_records(Path(args.from_scenes) / f'{args.split}.jsonl'):
            by_scene[r.scene_id].append(r)
        jobs = [(lambda sid=sid: store.load(sid), recs) for sid, recs in sorted(by_scene.items())]
    else:
        from r3d_ros.scenes.qa import generate_qa
        from r3d_ros.scenes.synthetic import generate_scene

        for i in range(args.synthetic):
            scene = generate_scene(args.seed + i)
            jobs.append((lambda s=scene: s, generate_qa(scene, args.seed + i, per_task=args.per_task)))
    if args.limit:
        jobs = jobs[:args.limit]
    for i, (load, recs) in enumerate(tqdm(jobs, desc='scene bags', unit='bag')):
        scene = load()
        bag, ann = write_scene_bag(scene, out / scene.scene_id, recs, cfg, seed=args.seed + i)
        tqdm.write(f'{bag} ({len(recs)} questions in {ann})')
    return 0


def record(args) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from r3d_ros.bags.io import BagWriter, TopicQos
    from r3d_ros.nodes.player import msg_class

    rclpy.init(args=['r3d-record', *args.ros_args])
    node = Node('r3d_recorder')
    writer = BagWriter(args.out, args.storage).open()
    lock = threading.Lock()
    subs: dict[str, object] = {}
    wanted = {node.resolve_topic_name(t) for t in args.topics}

    def discover():
        for name, types in node.get_topic_names_and_types():
            if name in subs or not types or (not args.all and name not in wanted):
                continue
            msgtype = types[0]
            cls = msg_class(msgtype)
            infos = node.get_publishers_info_by_topic(name)
            if cls is None or not infos:
                continue
            best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
            latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
                             else ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
            bag_qos = TopicQos(reliable=not best_effort, transient_local=latched, depth=10)
            try:
                with lock:
                    writer.add_topic(name, msgtype, bag_qos)
            except KeyError as exc:
                node.get_logger().warning(f'{name}: {exc}; not recorded')
                subs[name] = None
                continue

            def on_msg(data, name=name, msgtype=msgtype):
                with lock:
                    writer.write(name, msgtype, node.get_clock().now().nanoseconds, data)

            subs[name] = node.create_subscription(cls, name, on_msg, qos, raw=True)
            node.get_logger().info(f'recording {name} ({msgtype})')

    node.create_timer(0.5, discover)
    discover()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    start = time.monotonic()
    try:
        while rclpy.ok() and (not args.duration or time.monotonic() - start < args.duration):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        with lock:
            writer.close()
        node.get_logger().info(f'{writer.count} messages written to {args.out}')
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ros_args = argv[argv.index('--ros-args'):] if '--ros-args' in argv else []
    args = build_parser().parse_args(argv[:len(argv) - len(ros_args)])
    args.ros_args = ros_args
    if args.from_scenes or args.synthetic:
        return write_scene_bags(args)
    if Path(args.out).exists():
        print(f'r3d-record: {args.out} exists already', file=sys.stderr)
        return 2
    return record(args)


if __name__ == '__main__':
    sys.exit(main())
