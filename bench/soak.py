"""Soak: the full sim_demo graph (sim_sensor -> scene_map -> reasoner) for N minutes at 10 Hz x 120k-point
clouds and one query every 2 s.

Why: leaks, unbounded queues and a worker that slowly falls behind never show in a test that lasts
seconds; they show as memory that keeps climbing and as clouds or questions that go missing after minutes.
So this runs the real node processes over loopback DDS and prints, per node, the resident memory at the end
of a warm-up (model loaded, first laps mapped) and at the end, with the growth between; clouds fused by
scene_map against clouds published by sim_sensor (counted here by a raw subscription, so no decoding cost);
and answers against queries (one `answer` per query id). Prints one JSON object last.

    nice -n 19 .venv/bin/python bench/soak.py                  # 10 minutes (the issue's figure)
    nice -n 19 .venv/bin/python bench/soak.py --minutes 1      # a short check that it works
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
import os
from pathlib import Path
import sys
import tempfile
import threading
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')
import psutil  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from r3d_ros.nodes.bringup import Bringup  # noqa: E402
from r3d_ros.nodes.common import SpinningNode  # noqa: E402
from r3d_ros.ros_env import DomainLease, loopback_env  # noqa: E402

QUESTIONS = ('Where is the table?', 'How many chairs are in the room?', 'What is on the desk?',
             'Describe the room.', 'Pick up the cup and put it on the table.')


def sensor_overrides(rate: float, points: int) -> dict[str, str]:
    """sim_sensor settings for ``points`` points per cloud: a 480x360 depth camera on a room sampled at
    4,000 points/m^2 sees more than 120k surface points from every pose of the orbit, and max_points cuts
    each cloud to exactly ``points`` (at 2,500 points/m^2 it sees only ~85k)."""
    return {'cloud_rate': str(rate), 'width': '480', 'height': '360', 'point_density': '4000.0',
            'max_points': str(points)}


class Observer(SpinningNode):
    """The soak's own rclpy node: counts clouds on `points` (raw bytes, never decoded), keeps the newest
    scene_map diagnostics, sends queries and records one arrival time per answered id."""

    def __init__(self):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import PointCloud2
        from std_msgs.msg import String

        super().__init__('r3d_soak')
        self._String = String
        self.clouds, self.map_values, self.answers, self.sent = 0, {}, {}, {}
        self.duplicates, self.lock, self.stamps, self.seen_ids = 0, threading.Lock(), set(), set()
        self.first_cloud = self.last_cloud = None
        self.node.create_subscription(PointCloud2, 'points', self._on_cloud, qos_profile_sensor_data, raw=True)
        self.node.create_subscription(DiagnosticArray, 'diagnostics', self._on_diag, 10)
        self.node.create_subscription(String, 'answer', self._on_answer, 100)
        self.query_pub = self.node.create_publisher(String, 'query', 100)

    def _on_cloud(self, raw: bytes) -> None:
        self.clouds += 1
        self.stamps.add(raw[4:12])  # header.stamp (sec, nanosec) right after the 4-byte CDR encapsulation
        self.last_cloud = time.monotonic()
        self.first_cloud = self.first_cloud or self.last_cloud

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name == 'scene_map':
                self.map_values = {kv.key: kv.value for kv in status.values}

    def _on_answer(self, msg) -> None:
        payload = json.loads(msg.data)
        with self.lock:
            qid = payload.get('id')
            self.seen_ids.add(qid)
            if qid in self.answers:
                self.duplicates += 1
            elif qid in self.sent:
                self.answers[qid] = (time.monotonic() - self.sent[qid], payload.get('status'))

    def ask(self, k: int, counted: bool = True) -> str:
        qid = f'soak{k:05d}' if counted else f'ready{k}'
        if counted:
            with self.lock:
                self.sent[qid] = time.monotonic()
        self.query_pub.publish(self._String(data=json.dumps({'id': qid, 'question': QUESTIONS[k % len(QUESTIONS)]})))
        return qid

    def wait_ready(self, timeout: float) -> None:
        """Until the reasoner has answered a (not counted) question and scene_map reports: a query sent
        before the reasoner's subscription exists is lost, and would count as unanswered."""
        deadline = time.monotonic() + timeout
        for k in range(10**6):
            qid = self.ask(k, counted=False)
            until = time.monotonic() + 5.0
            while time.monotonic() < until and (qid not in self.seen_ids or not self.map_values):
                time.sleep(0.1)
            if qid in self.seen_ids and self.map_values:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f'soak: the graph did not come up within {timeout:.0f} s')

    def graph(self) -> dict:
        """Nodes on this domain and publishers of `points`: anything beyond the soak's own graph would
        make every count below meaningless."""
        names = sorted(name for name, _ in self.node.get_node_names_and_namespaces())
        return {'nodes': names, 'points_publishers': self.node.count_publishers('/points')}


def rss_mb(graph: Bringup) -> dict[str, float]:
    out = {}
    for name, proc in graph.processes.items():
        try:
            out[name] = psutil.Process(proc.pid).memory_info().rss / 2**20
        except psutil.Error:
            out[name] = float('nan')
    return out


def soak(graph: Bringup, observer: Observer, args) -> dict:
    """Query every ``query_period`` s and sample memory every ``sample_period`` s for ``minutes``; the
    memory baseline is the first sample after ``warmup`` s (model loaded, first laps mapped)."""
    start = time.monotonic()
    end = start + args.minutes * 60.0
    next_query, next_sample, k = start, start, 0
    baseline = peak = None
    while time.monotonic() < end:
        now = time.monotonic()
        if graph.dead():
            raise SystemExit(f'soak: {graph.dead()} died: ' + graph.processes[graph.dead()[0]].output()[-2000:])
        if now >= next_query:
            observer.ask(k)
            k, next_query = k + 1, next_query + args.query_period
        if now >= next_sample:
            sample = rss_mb(graph)
            if baseline is None and now - start >= args.warmup:
                baseline = sample
            peak = sample if peak is None else {n: max(peak[n], v) for n, v in sample.items()}
            next_sample += args.sample_period
        time.sleep(0.05)
    final = rss_mb(graph)
    return {'baseline': baseline, 'final': final, 'peak': peak, 'elapsed': time.monotonic() - start}


def drain(graph: Bringup, observer: Observer, timeout: float) -> None:
    """Stop the sensor (so clouds published and fused cover the same span), then wait for the answers
    still owed and for scene_map's queue to empty and its counts to settle."""
    graph.processes['sim_sensor'].stop()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(observer.answers) < len(observer.sent):
        time.sleep(0.2)
    time.sleep(2.5)  # two more diagnostics reports: frames taken before the end are counted


def report(run: dict, observer: Observer, args) -> dict:
    values = {k: int(v) for k, v in observer.map_values.items() if v.lstrip('-').isdigit()}
    # the soak's own count, or scene_map's where that is higher (a best-effort subscriber here can miss a
    # cloud too): a lower bound of what sim_sensor published
    published = max(observer.clouds, values.get('frames_received', 0))
    fused = values.get('frames_fused', 0)
    span = (observer.last_cloud or 0.0) - (observer.first_cloud or 0.0)
    statuses = Counter(s for _, s in observer.answers.values())
    latencies = sorted(t for t, _ in observer.answers.values())
    growth = {n: round(100.0 * (run['final'][n] - run['baseline'][n]) / run['baseline'][n], 2)
              for n in run['final']} if run['baseline'] else {}
    return {
        'minutes': args.minutes, 'warmup_s': args.warmup, 'elapsed_s': round(run['elapsed'], 1),
        'rss_mb': {n: {'after_warmup': round((run['baseline'] or {}).get(n, float('nan')), 1),
                       'final': round(run['final'][n], 1), 'peak': round(run['peak'][n], 1),
                       'growth_pct': growth.get(n)} for n in run['final']},
        'clouds': {'published': published, 'seen_by_soak': observer.clouds, 'distinct_stamps': len(observer.stamps),
                   'received': values.get('frames_received', 0), 'fused': fused,
                   'fused_pct': round(100.0 * fused / published, 2) if published else None,
                   'published_rate_hz': round((published - 1) / span, 2) if span > 0 else None,
                   'mean_points': round(values.get('points_fused', 0) / fused) if fused else None,
                   'scene_map': values},
        'queries': {'sent': len(observer.sent), 'answered': len(observer.answers),
                    'answered_pct': round(100.0 * len(observer.answers) / max(1, len(observer.sent)), 2),
                    'duplicate_answers': observer.duplicates,
                    'unanswered': sorted(set(observer.sent) - set(observer.answers)),
                    'by_status': dict(statuses),
                    'latency_s_p50': round(latencies[len(latencies) // 2], 2) if latencies else None,
                    'latency_s_max': round(latencies[-1], 2) if latencies else None},
    }


def print_summary(out: dict) -> None:
    print(f"soak: {out['elapsed_s']} s ({out['minutes']} min), warm-up {out['warmup_s']} s")
    for name, r in out['rss_mb'].items():
        print(f"  {name:<11} RSS {r['after_warmup']:8.1f} MB after warm-up -> {r['final']:8.1f} MB "
              f"(growth {r['growth_pct']} %, peak {r['peak']:.1f} MB)")
    c, q = out['clouds'], out['queries']
    print(f"  clouds: {c['fused']} fused / {c['published']} published ({c['fused_pct']} %; the soak saw "
          f"{c['seen_by_soak']}) at "
          f"{c['published_rate_hz']} Hz, {c['mean_points']} points each; scene_map received {c['received']}, "
          f"dropped {c['scene_map'].get('dropped_frames')}, without pose {c['scene_map'].get('frames_without_pose')}, "
          f"map {c['scene_map'].get('map_voxels')} voxels")
    print(f"  queries: {q['answered']} answered / {q['sent']} sent ({q['answered_pct']} %), by status "
          f"{q['by_status']}, latency p50 {q['latency_s_p50']} s, max {q['latency_s_max']} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--minutes', type=float, default=10.0)
    ap.add_argument('--rate', type=float, default=10.0, help='clouds per second')
    ap.add_argument('--points', type=int, default=120_000, help='points per cloud')
    ap.add_argument('--query-period', type=float, default=2.0)
    ap.add_argument('--warmup', type=float, help='seconds before the memory baseline (default: 60 s, at most a '
                                                 'third of the run)')
    ap.add_argument('--sample-period', type=float, default=5.0)
    ap.add_argument('--log-dir', default=None, help='node logs (default: a temporary folder)')
    args = ap.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else min(60.0, args.minutes * 20.0)
    lease = DomainLease()
    os.environ.update(loopback_env(lease.domain_id))
    log_dir = args.log_dir or tempfile.mkdtemp(prefix='r3d_soak_')
    overrides = {'sim_sensor': sensor_overrides(args.rate, args.points)}
    observer = Observer()  # listening before sim_sensor exists: it sees every cloud from the first
    try:
        with Bringup('sim_demo', domain_id=lease.domain_id, overrides=overrides, log_dir=log_dir) as graph:
            observer.wait_ready(timeout=180.0)
            print(f'soak: graph up {observer.graph()}', flush=True)
            run = soak(graph, observer, args)
            drain(graph, observer, timeout=120.0)
            out = report(run, observer, args)
            out['graph_at_end'] = observer.graph()
    finally:
        observer.close()
    out['log_dir'] = log_dir
    print_summary(out)
    print(json.dumps(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
