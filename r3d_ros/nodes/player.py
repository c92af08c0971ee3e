"""``r3d-play``: play a rosbag2 (MCAP or sqlite3, any tool's) into a live graph, publishing ``/clock``.

    r3d-play BAG [--rate 2.0] [--start-offset 5] [--loop] [--paused] [--topics /points /odom]
                 [--remap /points:=/camera/points] [--clock-hz 100]
    r3d-play BAG --questions BAG.questions.jsonl --answers-out answers.jsonl   # what r3d-eval runs

Messages are read with ``rosbags`` and published as the CDR bytes recorded (rclpy's serialized publish),
so any type whose Python message package is installed plays without conversion. Each topic is offered the
QoS its recorded publishers had (best effort if any was, transient local only if all were), or sensor-data
QoS for sensor types and reliable otherwise when the bag has none. Nodes that should follow the bag run
with ``use_sim_time:=true``; ``/clock`` (rosgraph_msgs/Clock, bag time) is published at ``--clock-hz`` and
before every message, and never goes backwards (except at a ``--loop`` restart, as ``ros2 bag play``).

Services: ``~/pause``, ``~/resume``, ``~/step`` (std_srvs/Trigger: while paused, publish the next message
and advance the clock to it), ``~/toggle_pause`` (std_srvs/Empty-like Trigger).

With ``--questions`` (an annotation file, see :mod:`r3d_ros.evaluation.annotations`) the player also asks
each question on ``query`` when bag time reaches its ``time`` (seconds from the bag start; none = after the
last message + ``--question-delay``), keeps ``/clock`` running after the bag ends, collects every
``answer`` by id into ``--answers-out`` (JSON lines, with ``latency_s`` wall seconds from asking to the
answer) and exits when all are answered or ``--answer-timeout`` passed since the last one.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
import sys
import threading
import time

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from r3d_ros.bags.io import TopicQos, bag_info, read_messages
from r3d_ros.bags.playback import Timeline


def msg_class(msgtype: str):
    """'sensor_msgs/msg/PointCloud2' -> the rclpy message class, or None when its package is not installed."""
    pkg, _, name = msgtype.rpartition('/')
    try:
        return getattr(importlib.import_module(pkg.replace('/', '.')), name)
    except (ImportError, AttributeError):
        return None


def rclpy_qos(q: TopicQos) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=q.depth,
                      reliability=ReliabilityPolicy.RELIABLE if q.reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if q.transient_local else DurabilityPolicy.VOLATILE)


def _parse_remaps(items):
    out = {}
    for item in items or []:
        src, sep, dst = item.partition(':=')
        if not sep:
            raise SystemExit(f'bad --remap {item!r}: expected FROM:=TO')
        out[src] = dst
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='r3d-play', description='Play a rosbag2 into a live ROS 2 graph.')
    ap.add_argument('bag')
    ap.add_argument('--rate', type=float, default=1.0, help='playback rate factor (default 1.0)')
    ap.add_argument('--start-offset', type=float, default=0.0, help='seconds into the bag to start at')
    ap.add_argument('--loop', action='store_true', help='start over at the end')
    ap.add_argument('--paused', action='store_true', help='start paused (~/resume, ~/step)')
    ap.add_argument('--topics', nargs='+', help='play only these topics')
    ap.add_argument('--remap', action='append', default=[], metavar='FROM:=TO')
    ap.add_argument('--clock-hz', type=float, default=100.0, help='/clock publications per wall second')
    ap.add_argument('--no-clock', action='store_true', help='do not publish /clock')
    ap.add_argument('--wait-for', nargs='*', default=[], metavar='TOPIC',
                    help='before playing, wait until each of these topics has a subscriber')
    ap.add_argument('--wait-active', nargs='*', default=[], metavar='NODE',
                    help='before playing, wait until each of these lifecycle nodes reports active (get_state)')
    ap.add_argument('--wait-timeout', type=float, default=120.0)
    ap.add_argument('--delay', type=float, default=0.0, help='wall seconds to wait before playing (discovery)')
    ap.add_argument('--questions', help='annotation file: ask its questions on `query` at their times')
    ap.add_argument('--answers-out', help='JSON lines of the answers received (with --questions)')
    ap.add_argument('--question-delay', type=float, default=2.0,
                    help='bag seconds after the last message for questions without a time')
    ap.add_argument('--answer-timeout', type=float, default=600.0,
                    help='give up when no answer arrived for this many wall seconds')
    ap.add_argument('--query-topic', default='query')
    ap.add_argument('--answer-topic', default='answer')
    ap.add_argument('--map-topic', default='scene_map/cloud', help='map size at each question goes in the answer')
    return ap


class Player:
    """The playback thread + the ROS entities (publishers, services) of ``r3d-play``."""

    def __init__(self, node, args):
        from rosgraph_msgs.msg import Clock
        from std_srvs.srv import Trigger

        self.node, self.args = node, args
        self.info = bag_info(args.bag)
        remaps = _parse_remaps(args.remap)
        wanted = set(args.topics) if args.topics else None
        self.pubs: dict[str, object] = {}
        for topic, t in self.info.topics.items():
            if wanted is not None and topic not in wanted and topic.lstrip('/') not in wanted:
                continue
            cls = msg_class(t.msgtype)
            if cls is None:
                node.get_logger().warning(f'{topic}: message type {t.msgtype} is not installed; not played')
                continue
            self.pubs[topic] = node.create_publisher(cls, remaps.get(topic, topic), rclpy_qos(t.qos))
        self.clock_pub = None if args.no_clock else node.create_publisher(Clock, '/clock', 10)
        self._Clock = Clock
        self.start_ns = self.info.start_ns + int(args.start_offset * 1e9)
        self.timeline = Timeline(self.start_ns, args.rate, paused=args.paused)
        self._last_clock = -1
        self._step = threading.Event()
        self._wake = threading.Event()
        self.stop = threading.Event()
        self.finished = threading.Event()   # bag played to its end (not looping)
        self.published = 0
        self.clouds_published = 0   # PointCloud2 messages: what a live map can have fused, for r3d-eval
        for name, fn in (('~/pause', self._srv_pause), ('~/resume', self._srv_resume), ('~/step', self._srv_step)):
            node.create_service(Trigger, name, fn)

    # -- services ----------------------------------------------------------------------------
    def _srv_pause(self, req, res):
        self.timeline.pause()
        res.success, res.message = True, f'paused at {self.timeline.now()}'
        return res

    def _srv_resume(self, req, res):
        self.timeline.resume()
        self._wake.set()
        res.success, res.message = True, 'playing'
        return res

    def _srv_step(self, req, res):
        if not self.timeline.paused:
            res.success, res.message = False, 'not paused'
            return res
        self._step.set()
        self._wake.set()
        res.success, res.message = True, 'stepped'
        return res

    # -- clock -------------------------------------------------------------------------------
    def publish_clock(self, t_ns: int | None = None) -> None:
        if self.clock_pub is None:
            return
        t = self.timeline.now() if t_ns is None else t_ns
        if t < self._last_clock:   # never backwards
            t = self._last_clock
        self._last_clock = t
        msg = self._Clock()
        msg.clock.sec, msg.clock.nanosec = int(t // 1_000_000_000), int(t % 1_000_000_000)
        self.clock_pub.publish(msg)

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(max(0.0, seconds))
        self._wake.clear()

    def run(self) -> None:
        period = 1.0 / self.args.clock_hz if self.args.clock_hz > 0 else 0.1
        while not self.stop.is_set():
            self._play_once(period)
            if not self.args.loop or self.stop.is_set():
                break
            self.timeline.seek(self.start_ns)
            self._last_clock = -1  # a loop restarts the clock, as ros2 bag play does
        self.finished.set()

    def _play_once(self, period: float) -> None:
        topics = list(self.pubs)
        if not topics:
            return
        next_clock = time.monotonic()
        for topic, msgtype, t_ns, data in read_messages(self.args.bag, topics, start_ns=self.start_ns):
            while not self.stop.is_set():
                if self._step.is_set() and self.timeline.paused:
                    self._step.clear()
                    self.timeline.advance_to(t_ns)
                    break
                wait = self.timeline.wall_until(t_ns)
                if wait <= 0:
                    break
                now = time.monotonic()
                if now >= next_clock:
                    self.publish_clock()
                    next_clock = now + period
                self._sleep(min(wait, next_clock - time.monotonic()))
            if self.stop.is_set():
                return
            self.publish_clock(t_ns)
            self.pubs[topic].publish(data)
            self.published += 1
            self.clouds_published += msgtype.endswith('/PointCloud2')

    def keep_clock(self, until: threading.Event) -> None:
        """After the bag: keep /clock advancing (timers of sim-time nodes keep firing) until ``until``."""
        period = 1.0 / self.args.clock_hz if self.args.clock_hz > 0 else 0.1
        while not until.is_set() and not self.stop.is_set():
            self.publish_clock()
            time.sleep(period)


class QuestionFeeder:
    """Asks annotated questions at their bag times and collects the answers by id (r3d-eval's client)."""

    def __init__(self, node, player: Player, args):
        from sensor_msgs.msg import PointCloud2
        from std_msgs.msg import String

        from r3d_ros.evaluation.annotations import load_annotations

        self.node, self.player, self.args = node, player, args
        self.questions = load_annotations(args.questions)
        end = player.info.end_ns
        t0 = player.info.start_ns
        self.schedule = sorted(
            ((t0 + int(q.time * 1e9)) if q.time is not None else end + int(args.question_delay * 1e9), i)
            for i, q in enumerate(self.questions))
        self._String = String
        self.pub = node.create_publisher(String, args.query_topic, 100)
        self.sub = node.create_subscription(String, args.answer_topic, self._on_answer, 100)
        from r3d_ros.nodes.common import MAP_QOS

        self.map_points = 0
        self.map_sub = node.create_subscription(PointCloud2, args.map_topic, self._on_map, MAP_QOS)
        from diagnostic_msgs.msg import DiagnosticArray

        self.map_frames: dict[str, int] = {}
        self.diag_sub = node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.asked: dict[str, float] = {}
        self.asked_map: dict[str, tuple[int, dict]] = {}
        self.answers: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.last_progress = time.monotonic()
        self.out = open(args.answers_out, 'w', encoding='utf-8') if args.answers_out else None

    def _on_map(self, msg) -> None:
        self.map_points = int(msg.width) * int(msg.height)

    def _on_diagnostics(self, msg) -> None:
        """scene_map's frame counts: a live map that differs from the offline one says here whether frames were lost."""
        for status in msg.status:
            if status.name == 'scene_map':
                self.map_frames = {kv.key: int(kv.value) for kv in status.values
                                   if kv.key in ('frames_received', 'frames_fused', 'dropped_frames')}

    def _on_answer(self, msg) -> None:
        try:
            ans = json.loads(msg.data)
        except json.JSONDecodeError:
            return
        qid = str(ans.get('id', ''))
        with self.lock:
            if qid not in self.asked or qid in self.answers:
                return
            ans['latency_s'] = time.monotonic() - self.asked[qid]
            # map_points: the reasoner's own (the map it answered on; this node's copy of the map topic may
            # lag it); map_frames: scene_map's frame counts when asked, which say whether clouds were lost
            seen_points, ans['map_frames'] = self.asked_map.get(qid, (0, {}))
            ans.setdefault('map_points', seen_points)
            self.answers[qid] = ans
            self.last_progress = time.monotonic()
            if self.out is not None:
                self.out.write(json.dumps(ans) + '\n')
                self.out.flush()
            if len(self.answers) == len(self.questions):
                self.done.set()

    def run(self) -> None:
        for t_ns, i in self.schedule:
            while not self.player.stop.is_set() and self.player.timeline.now() < t_ns:
                time.sleep(0.01)
            if self.player.stop.is_set():
                return
            q = self.questions[i]
            payload = {'id': q.id, 'question': q.question, 'task': q.task or None}
            with self.lock:
                self.asked[q.id] = time.monotonic()
                self.asked_map[q.id] = (self.map_points, {**self.map_frames,
                                                          'clouds_published': self.player.clouds_published})
                self.last_progress = time.monotonic()
            self.pub.publish(self._String(data=json.dumps(payload)))
            self.node.get_logger().info(f'asked {q.id} at bag t={(t_ns - self.player.info.start_ns) * 1e-9:.2f}s '
                                        f'(map: {self.map_points} points)')
        if not self.questions:
            self.done.set()

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


def main(argv=None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.node import Node

    argv = sys.argv[1:] if argv is None else argv
    ros_args = argv[argv.index('--ros-args'):] if '--ros-args' in argv else []
    args = build_parser().parse_args(argv[:len(argv) - len(ros_args)])
    if not Path(args.bag).exists():
        print(f'r3d-play: no bag at {args.bag}', file=sys.stderr)
        return 2
    rclpy.init(args=['r3d-play', *ros_args])
    node = Node('r3d_player')
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    player = feeder = None
    threads: list[threading.Thread] = []
    code = 0
    try:
        player = Player(node, args)
        feeder = QuestionFeeder(node, player, args) if args.questions else None
        deadline = time.monotonic() + args.wait_timeout
        for topic in args.wait_for:
            name = node.resolve_topic_name(topic)
            while node.count_subscribers(name) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            if node.count_subscribers(name) == 0:
                node.get_logger().error(f'no subscriber on {name} after {args.wait_timeout:.0f}s')
                return 3
        from r3d_ros.nodes.common import wait_until_active

        inactive = wait_until_active(node, args.wait_active, max(0.0, deadline - time.monotonic()))
        if inactive:
            node.get_logger().error(f'not active after {args.wait_timeout:.0f}s: {", ".join(inactive)}')
            return 3
        time.sleep(args.delay)
        info = player.info
        node.get_logger().info(f'playing {args.bag}: {info.count} messages, {info.duration_s:.2f}s, '
                               f'topics {sorted(player.pubs)} at rate {args.rate}')
        if not args.paused:  # bag time starts now, not when the bag was opened
            player.timeline.seek(player.start_ns)
        play = threading.Thread(target=player.run, daemon=True)
        play.start()
        threads.append(play)
        if feeder is None:
            while play.is_alive() and rclpy.ok():
                play.join(0.2)
        else:
            ask = threading.Thread(target=feeder.run, daemon=True)
            ask.start()
            threads.append(ask)
            while not args.loop and not player.finished.is_set() and rclpy.ok():
                player.finished.wait(0.2)
            clock = threading.Thread(target=player.keep_clock, args=(feeder.done,), daemon=True)
            clock.start()
            threads.append(clock)
            while not feeder.done.is_set() and rclpy.ok():
                if time.monotonic() - feeder.last_progress > args.answer_timeout:
                    node.get_logger().error(f'{len(feeder.questions) - len(feeder.answers)} questions unanswered '
                                            f'after {args.answer_timeout:.0f}s')
                    code = 4
                    break
                feeder.done.wait(0.2)
            player.stop.set()
        node.get_logger().info(f'done: {player.published} messages published')
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if player is not None:
            player.stop.set()
            player._wake.set()
        for t in threads:  # no thread may still publish while the node goes away
            t.join(timeout=5.0)
        if feeder is not None:
            feeder.close()
        executor.shutdown(timeout_sec=2.0)
        spin.join(timeout=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())
