"""`r3d-ask`: ask the reasoner one question over its `ask` action and print the answer as it streams.

    r3d-ask "where is the lamp?"                 # reasoning and answer stream in, then boxes and plan
    r3d-ask --json --max-new-tokens 64 "..."     # the result as one JSON line (the `answer` topic's shape)

The example client of r3d_interfaces/action/Ask: feedback pieces are printed as they arrive (with the
stage when it changes), Ctrl-C cancels the goal and prints what the reasoner returns for it, and a
rejected goal prints the reason the reasoner published on `answer`. ROS arguments go after `--ros-args`
(e.g. `-r ask:=/robot/ask`). Without RMW settings of its own it uses the project's loopback-only ones.
Exit status: 0 for an `ok` answer, 1 for any other result, 2 when no goal could be placed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid

from action_msgs.msg import GoalStatus
from r3d_interfaces.action import Ask
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from rclpy.utilities import remove_ros_args
from std_msgs.msg import String

from r3d_ros.nodes.ask_action import ACTION_NAME, result_to_dict
from r3d_ros.ros_env import loopback_env

GOAL_STATES = {GoalStatus.STATUS_SUCCEEDED: 'succeeded', GoalStatus.STATUS_ABORTED: 'aborted',
               GoalStatus.STATUS_CANCELED: 'canceled', GoalStatus.STATUS_UNKNOWN: 'unknown'}


class LockedActionClient(ActionClient):
    """An ActionClient whose ``send_goal_async`` may be called from a thread other than the spinning one.

    rclpy 9.1.2 registers the goal's future under ``_lock``, then replaces it with a second future outside
    the lock (ros2/rclpy#1123, a leftover of the #1517 backport): a response taken in between completes
    the first future and the returned one waits forever. Here the whole call holds the lock (made
    re-entrant) that ``take_data`` takes, so no response is taken before its future is final.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.RLock()

    def send_goal_async(self, *args, **kwargs):
        with self._lock:
            return super().send_goal_async(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='r3d-ask', description=__doc__.split('\n\n')[0])
    p.add_argument('question', nargs='+', help='the question (words are joined)')
    p.add_argument('--task', default='', help='optional task hint (qa, grounding, planning, ...)')
    p.add_argument('--max-new-tokens', type=int, default=0, help="decoding budget (0: the reasoner's)")
    p.add_argument('--id', default='', help='query id (default: a fresh one)')
    p.add_argument('--action', default=ACTION_NAME, help='action name (default: %(default)s)')
    p.add_argument('--timeout', type=float, default=120.0, help='seconds to wait for the server and the answer')
    p.add_argument('--json', action='store_true', help='print the result as one JSON line (stream on stderr)')
    return p


class _Printer:
    """Prints streamed text once, in order, even when feedback messages were missed or repeated."""

    def __init__(self, out):
        self.out, self.shown, self.stage = out, '', ''
        self.first_feedback: float | None = None

    def __call__(self, msg) -> None:
        fb = msg.feedback
        if self.first_feedback is None:
            self.first_feedback = time.monotonic()
        if fb.stage != self.stage:
            self.stage = fb.stage
            extra = f' ({fb.map_points} map points)' if fb.stage == Ask.Feedback.STAGE_MAPPING else ''
            self.out.write(f'\n[{fb.stage}{extra}]\n')
        if fb.partial_text.startswith(self.shown) and len(fb.partial_text) > len(self.shown):
            self.out.write(fb.partial_text[len(self.shown):])
            self.shown = fb.partial_text
        self.out.flush()


def _summary(result: dict, state: str) -> str:
    lines = [f"--- {result['status']} (goal {state}){': ' + result['message'] if result['message'] else ''}"]
    if result.get('interpreted_as'):
        lines.append(f"read as: {result['interpreted_as']}")
    if result['answer_text']:
        lines.append(f"answer: {result['answer_text']}")
    for b in result['boxes']:
        lines.append(f"box {b['ref']} ({b['label']}): center {_xyz(b['center'])} size {_xyz(b['size'])}")
    for i, s in enumerate(result['plan'], 1):
        lines.append(f"plan {i}: {s['action']} {s['target']} at {_xyz(s['position'])}")
    if 'total_s' in result['timings']:
        lines.append(f"took {result['timings']['total_s']:.2f} s")
    return '\n'.join(lines)


def _xyz(v) -> str:
    return '(' + ', '.join(f'{x:.2f}' for x in v) + ')'


def _wait(executor, future, timeout: float) -> bool:
    executor.spin_until_future_complete(future, timeout_sec=timeout)
    return future.done()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = _parser().parse_args(remove_ros_args(argv)[1:])
    for key in ('RMW_IMPLEMENTATION', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE'):
        os.environ.setdefault(key, loopback_env()[key])
    # no rclpy signal handler: Ctrl-C must leave the context up so the goal can still be cancelled
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f'r3d_ask_{uuid.uuid4().hex[:6]}')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stream = sys.stderr if args.json else sys.stdout
    try:
        return _ask(node, executor, args, stream)
    except KeyboardInterrupt:
        return 130
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()


def _ask(node, executor, args, stream) -> int:
    client = LockedActionClient(node, Ask, args.action)
    refusals: dict[str, dict] = {}
    got_refusal = threading.Event()
    goal = Ask.Goal(id=args.id or uuid.uuid4().hex[:12], question=' '.join(args.question), task=args.task,
                    max_new_tokens=max(0, args.max_new_tokens))

    def on_answer(msg: String) -> None:
        try:
            data = json.loads(msg.data)
        except json.JSONDecodeError:
            return
        if data.get('id') == goal.id:
            refusals[goal.id] = data
            got_refusal.set()

    # a rejected goal's reason comes on `answer`: subscribe before sending
    node.create_subscription(String, 'answer', on_answer, 100)
    if not client.wait_for_server(timeout_sec=args.timeout):
        print(f'r3d-ask: no `{node.resolve_topic_name(args.action)}` action server within {args.timeout:.0f} s',
              file=sys.stderr)
        return 2
    printer = _Printer(stream)
    sent = time.monotonic()
    accepted = client.send_goal_async(goal, feedback_callback=printer)
    if not _wait(executor, accepted, args.timeout):
        print('r3d-ask: the server did not answer the goal request', file=sys.stderr)
        return 2
    handle = accepted.result()
    if not handle.accepted:
        deadline = time.monotonic() + 2.0
        while not got_refusal.is_set() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        why = refusals.get(goal.id)
        reason = f"{why['status']}: {why['message']}" if why else 'no reason received'
        print(f'r3d-ask: goal rejected ({reason})', file=sys.stderr)
        return 2
    done = handle.get_result_async()
    try:
        finished = _wait(executor, done, max(0.0, args.timeout - (time.monotonic() - sent)))
    except KeyboardInterrupt:
        stream.write('\n[cancelling]\n')
        _wait(executor, handle.cancel_goal_async(), 5.0)
        finished = _wait(executor, done, 10.0)
    if not finished:
        print(f'r3d-ask: no result within {args.timeout:.0f} s; cancelling', file=sys.stderr)
        _wait(executor, handle.cancel_goal_async(), 5.0)
        return 1
    response = done.result()
    result = result_to_dict(response.result)
    state = GOAL_STATES.get(response.status, str(response.status))
    result['goal_status'] = state
    stream.write('\n')
    stream.flush()
    print(json.dumps(result) if args.json else _summary(result, state), flush=True)
    return 0 if result['status'] == 'ok' else 1


if __name__ == '__main__':
    sys.exit(main())
