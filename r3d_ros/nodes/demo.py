"""`r3d-demo`: the README's main job, on the embedded default model, CPU, no downloads.

Brings up the simulated graph (sim_sensor -> scene_map -> reasoner) on a private loopback DDS domain,
waits for the map to cover the room, asks a set of questions over the `query` topic exactly as a robot
or operator would, prints each answer, grounding and validated plan, and writes a PNG of the map with
the selected views and the grounded boxes (default: r3d_demo.png).

Every answer is checked against the simulated room's ground truth (its key fact: the count, colour, box,
support or plan the question asks for, ``r3d_ros.evaluation.key_facts``) and marked right or wrong.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import threading
import time

from r3d_ros.nodes.common import SpinningNode

#: one per kind of fact a robot acts on (a count, a colour, a box, a support relation, a plan), about the
#: objects of the demo's room (sim_sensor's scene_seed 0: table, nightstand, trash can, wardrobe, a book on
#: the table, a lamp on the nightstand)
DEFAULT_QUESTIONS = [
    'How many lamps are in the room?',
    'What color is the table?',
    'Where is the lamp?',
    'What is the book standing on?',
    'Bring the book to the nightstand.',
]


class _Client(SpinningNode):
    """A small rclpy client of the graph: map subscriber, query publisher, answer collector."""

    def __init__(self):
        from sensor_msgs.msg import PointCloud2
        from std_msgs.msg import String

        from r3d_ros.nodes.common import MAP_QOS

        super().__init__('r3d_demo_client')
        self.map_msg = None
        self.answers: dict[str, dict] = {}
        self.cond = threading.Condition()
        self.node.create_subscription(PointCloud2, 'scene_map/cloud', self._on_map, MAP_QOS)
        self.node.create_subscription(String, 'answer', self._on_answer, 10)
        self.query_pub = self.node.create_publisher(String, 'query', 10)
        self.String = String

    def _on_map(self, msg):
        with self.cond:
            self.map_msg = msg
            self.cond.notify_all()

    def _on_answer(self, msg):
        data = json.loads(msg.data)
        with self.cond:
            self.answers[data.get('id', '')] = data
            self.cond.notify_all()

    def map_points(self) -> int:
        return 0 if self.map_msg is None else self.map_msg.width * self.map_msg.height

    def ask(self, qid: str, question: str, timeout: float) -> dict:
        while self.node.count_subscribers('query') == 0:
            time.sleep(0.1)
        self.query_pub.publish(self.String(data=json.dumps({'id': qid, 'question': question})))
        deadline = time.monotonic() + timeout
        with self.cond:
            while qid not in self.answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    return {'id': qid, 'question': question, 'status': 'timeout', 'message': f'no answer in {timeout}s'}
                self.cond.wait(left)
            return self.answers[qid]


def demo_scene(graph):
    """The room sim_sensor renders (same seed and object count), for checking answers against its truth."""
    from r3d_ros.scenes.synthetic import generate_scene

    p = graph.params('sim_sensor')
    return generate_scene(int(p['scene_seed']), num_objects=(int(p['min_objects']), int(p['max_objects'])),
                          point_density=float(p['point_density']))


def check_answer(scene, question: str, answer: dict) -> str:
    """'right (...)' / 'WRONG (truth: ...)' for the answer's key fact, or why it cannot be checked."""
    from r3d_ros.evaluation.key_facts import key_fact_correct
    from r3d_ros.scenes.qa import truth_record

    truth = truth_record(scene, question)
    if truth is None:
        return 'no ground truth for this question (not one the generator asks about this room)'
    key = truth.key_fact
    want = truth.plan if key['fact'] == 'plan' else truth.boxes if key['fact'] == 'box' else key['value']
    ok = key_fact_correct(key, answer, truth.objects, truth.plan)
    return f"{'right' if ok else 'WRONG'} ({key['fact']}: truth {want})"


def draw(map_xyz, map_rgb, results: list[dict], out: Path) -> None:
    """Top-down map with each answer's grounded boxes and the selected camera positions."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib.patches import Rectangle
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 8), dpi=110)
    order = np.argsort(map_xyz[:, 2])  # draw high points last so furniture shows over the floor
    ax.scatter(map_xyz[order, 0], map_xyz[order, 1], c=map_rgb[order] / 255.0, s=1.2, linewidths=0)
    colors = plt.cm.tab10.colors
    for i, res in enumerate(results):
        c = colors[i % len(colors)]
        for box in res.get('boxes', []):
            (cx, cy, _), (dx, dy, _) = box['center'], box['size']
            ax.add_patch(Rectangle((cx - dx / 2, cy - dy / 2), dx, dy, fill=False, lw=2, ec=c))
            ax.annotate(f"Q{i + 1}: {box['ref']}", (cx, cy + dy / 2), color=c, fontsize=8, ha='center', va='bottom')
        for view in res.get('views', []):
            T = np.asarray(view['pose'])
            pos, fwd = T[:3, 3], T[:3, 2]  # camera looks along its +z (optical frame)
            ax.plot(pos[0], pos[1], marker='^', color=c, ms=6)
            ax.arrow(pos[0], pos[1], 0.4 * fwd[0], 0.4 * fwd[1], color=c, width=0.01, head_width=0.08)
        steps = [s['position'] for s in res.get('plan', [])]
        if steps and res.get('status') == 'ok':
            xs, ys = zip(*[(p[0], p[1]) for p in steps])
            ax.plot(xs, ys, '--o', color=c, lw=1.5, ms=4)
    ax.set_aspect('equal')
    ax.set_xlabel('x (m, map frame)')
    ax.set_ylabel('y (m)')
    ax.set_title('r3d_ros demo: map, selected views (triangles) and grounded boxes')
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--question', '-q', action='append', help='ask this instead of the default set (repeatable)')
    ap.add_argument('--out', default='r3d_demo.png', help='PNG of the map with views and boxes')
    ap.add_argument('--map-timeout', type=float, default=120.0, help='seconds to wait for a map')
    ap.add_argument('--answer-timeout', type=float, default=300.0, help='seconds to wait for each answer')
    ap.add_argument('--min-map-points', type=int, default=5000)
    ap.add_argument('--lap', type=float, default=10.0, help='seconds per sim_sensor lap; the demo maps one lap')
    ap.add_argument('-p', '--param', action='append', default=[], metavar='NODE.PARAM=VALUE')
    args = ap.parse_args(argv)

    from r3d_ros.nodes.bringup import Bringup, parse_overrides
    from r3d_ros.ros_env import loopback_env

    questions = args.question or DEFAULT_QUESTIONS
    try:
        from r3d_ros.pipeline import default_model_path

        model = default_model_path()
        print(f'model: {model}' + ('  (UNTRAINED: random weights, so the answers below are noise; a trained '
                                   'checkpoint in r3d_ros/assets/r3d_tiny replaces it)'
                                   if model.name.endswith('untrained') else ''))
    except Exception as exc:  # noqa: BLE001 - the reasoner will report the same problem per question
        print(f'model: none ({exc})')
    overrides = parse_overrides([f'sim_sensor.orbit_period={args.lap}', *args.param])
    with Bringup('sim_demo', overrides=overrides) as graph:
        import os

        os.environ.update(loopback_env(graph.domain_id))
        print(f'graph up on ROS_DOMAIN_ID={graph.domain_id} (loopback only): {", ".join(graph.processes)}')
        client = _Client()
        try:
            t0 = time.monotonic()
            while client.map_points() < args.min_map_points:
                if graph.dead():
                    name = graph.dead()[0]
                    print(f'{name} died:\n{graph.processes[name].output()[-3000:]}', file=sys.stderr)
                    return 1
                if time.monotonic() - t0 > args.map_timeout:
                    print(f'no map with {args.min_map_points} points after {args.map_timeout}s', file=sys.stderr)
                    return 1
                time.sleep(0.5)
            time.sleep(max(0.0, args.lap - (time.monotonic() - t0)) + 1.0)  # map one whole lap of the room
            print(f'map: {client.map_points()} points after {time.monotonic() - t0:.1f}s')
            scene = demo_scene(graph)
            results, verdicts = [], []
            for i, question in enumerate(questions, 1):
                res = client.ask(f'demo-{i}', question, args.answer_timeout)
                results.append(res)
                print(f'\nQ{i}: {question}\n  status: {res.get("status")}'
                      + (f' ({res.get("message")})' if res.get('message') else ''))
                if res.get('interpreted_as'):
                    print(f'  read as: {res["interpreted_as"]}')
                if res.get('think'):
                    print(f'  think: {res["think"][:400]}')
                answer = res.get('answer_text', '')
                print(f'  answer: {answer[:300]}' + (' …' if len(answer) > 300 else ''))
                for box in res.get('boxes', []):
                    print(f"  box: {box['ref']} centre {box['center']} size {box['size']} (m, map frame)")
                for step in res.get('plan', []):
                    print(f"  plan: {step['action']} {step['target']} at {step['position']}")
                if res.get('timings'):
                    print(f"  time: {res['timings'].get('total_s', 0):.2f}s")
                verdicts.append(check_answer(scene, question, res))
                print('  check: ' + verdicts[-1])
            from r3d_ros.pointcloud import xyz_rgb_from_cloud

            xyz, rgb = xyz_rgb_from_cloud(client.map_msg)
            draw(xyz, rgb, results, Path(args.out))
            right = sum(v.startswith('right') for v in verdicts)
            print(f'\n{right} of {len(verdicts)} answers right against the room\'s ground truth')
            print(f'\nwrote {args.out}')
        finally:
            client.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
