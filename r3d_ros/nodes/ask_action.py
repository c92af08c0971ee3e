"""The reasoner's ``ask`` action (r3d_interfaces/action/Ask) over its one inference worker.

The JSON ``query``/``answer`` topics and this action share the reasoner's bounded queue and worker, so a
question costs the same and gets the same answer whichever way it comes in; every result, a goal's too,
still goes out on ``answer``, ``grounding`` and ``plan_path``. What the action adds:

* a goal is rejected at once when the queue is full (or the question is refused, or the node is not
  active); the action protocol carries no reason, so the reason is logged and published on ``answer``
  as a ``busy`` / ``error`` record with the goal's ``id`` (set one to match it);
* feedback per decoded token piece (the new piece and everything so far) with the stage: mapping,
  views, thinking, answering;
* cancel: a queued goal is dropped and answered ``canceled`` at once, a decoding one stops at the next
  token;
* results are kept ``ask_result_timeout`` seconds for late result requests, then dropped.

Queued goals hold no executor thread: the worker starts a goal's execution when it takes the goal from
the queue, so only the goal being decoded waits in an executor thread (rclpy resumes pending coroutine
callbacks on every spin, so an ``async`` execute callback awaiting the worker would spin the CPU).
"""

from __future__ import annotations

import functools
import json
import queue
import threading
import time
from typing import TYPE_CHECKING
import uuid

from geometry_msgs.msg import Point, Vector3
import numpy as np
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header, String

from r3d_ros.nodes.common import describe
from r3d_ros.nodes.conversions import matrix_to_pose, pose_to_matrix
from r3d_ros.pipeline import (
    STATUS_BUSY,
    STATUS_CANCELLED,
    STATUS_ERROR,
    STATUS_OK,
    PipelineError,
    PipelineResult,
    check_question,
)

if TYPE_CHECKING:
    from r3d_ros.nodes.reasoner_node import ReasonerNode

ACTION_NAME = 'ask'
#: feedback history per goal: a slow client may miss pieces, never the text (``partial_text`` has it all)
FEEDBACK_DEPTH = 100
#: request history of the goal / cancel / result services. With the default (10) a burst of goals loses
#: every request past the tenth before the goal callback sees it, and those clients wait forever; a client
#: sending bursts needs as deep a history on its side (``SERVICE_QOS``).
SERVICE_QOS = QoSProfile(depth=256, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
_SHUTDOWN_POLL_S = 0.5


# -- PipelineResult.to_dict() <-> Ask.Result -----------------------------------------------------------
def scene_object_to_msg(d: dict):
    """A box of ``answer.boxes`` ({ref, label, center, size}) or a scene-object record ({id, label, color,
    center, size, relations, confidence}) -> r3d_interfaces/SceneObject."""
    from r3d_interfaces.msg import Relation, SceneObject

    msg = SceneObject(id=str(d.get('id') or d.get('ref') or ''), label=str(d.get('label') or ''),
                      color=str(d.get('color') or ''))
    msg.center = Point(**dict(zip('xyz', (float(v) for v in d.get('center') or (0, 0, 0)))))
    msg.size = Vector3(**dict(zip('xyz', (float(v) for v in d.get('size') or (0, 0, 0)))))
    msg.relations = [Relation(relation=str(r.get('relation') or ''), target=str(r.get('target') or ''))
                     for r in d.get('relations') or []]
    conf = d.get('confidence')
    msg.confidence = float(conf) if conf is not None else SceneObject.CONFIDENCE_UNKNOWN
    return msg


def scene_object_to_dict(msg, box: bool = False) -> dict:
    """The inverse of :func:`scene_object_to_msg`; ``box`` gives the ``answer.boxes`` shape."""
    center = [msg.center.x, msg.center.y, msg.center.z]
    size = [msg.size.x, msg.size.y, msg.size.z]
    if box:
        return {'ref': msg.id, 'label': msg.label, 'center': center, 'size': size}
    return {'id': msg.id, 'label': msg.label, 'color': msg.color, 'center': center, 'size': size,
            'relations': [{'relation': r.relation, 'target': r.target} for r in msg.relations],
            'confidence': None if msg.confidence == msg.CONFIDENCE_UNKNOWN else float(msg.confidence)}


def result_to_msg(payload: dict, header: Header | None = None):
    """``PipelineResult.to_dict()`` (the ``answer`` JSON) -> Ask.Result, field for field."""
    from r3d_interfaces.action import Ask
    from r3d_interfaces.msg import PlanStep, View

    msg = Ask.Result(header=header or Header())
    for key in ('id', 'status', 'message', 'question', 'interpreted_as', 'think', 'answer', 'answer_text', 'raw'):
        setattr(msg, key, str(payload.get(key) or ''))
    msg.task = str(payload.get('task') or '')
    msg.format_valid = bool(payload.get('format_valid'))
    msg.boxes = [scene_object_to_msg(b) for b in payload.get('boxes') or []]
    msg.objects = [scene_object_to_msg(o) for o in payload.get('objects') or []]
    msg.plan = [PlanStep(action=str(s['action']), target=str(s['target']),
                         position=Point(**dict(zip('xyz', (float(v) for v in s['position'])))))
                for s in payload.get('plan') or []]
    for v in payload.get('views') or []:
        scores = v.get('scores') or {}
        msg.views.append(View(index=int(v.get('index', 0)), kind=str(v.get('kind') or ''),
                              hfov_deg=float(v.get('hfov_deg', 0.0)), pose=matrix_to_pose(np.asarray(v['pose'])),
                              score_names=list(scores), score_values=[float(s) for s in scores.values()]))
    timings = payload.get('timings') or {}
    msg.timing_names = list(timings)
    msg.timing_values = [float(t) for t in timings.values()]
    return msg


def result_to_dict(msg) -> dict:
    """Ask.Result -> the ``answer`` JSON's shape (what ``r3d-ask --json`` prints and tests compare)."""
    return {
        'id': msg.id, 'question': msg.question, 'interpreted_as': msg.interpreted_as, 'task': msg.task or None,
        'status': msg.status,
        'message': msg.message, 'think': msg.think, 'answer': msg.answer, 'answer_text': msg.answer_text,
        'boxes': [scene_object_to_dict(b, box=True) for b in msg.boxes],
        'objects': [scene_object_to_dict(o) for o in msg.objects],
        'plan': [{'action': s.action, 'target': s.target, 'position': [s.position.x, s.position.y, s.position.z]}
                 for s in msg.plan],
        'format_valid': msg.format_valid,
        'views': [{'index': v.index, 'kind': v.kind, 'hfov_deg': v.hfov_deg, 'pose': pose_to_matrix(v.pose).tolist(),
                   'scores': dict(zip(v.score_names, v.score_values))} for v in msg.views],
        'timings': dict(zip(msg.timing_names, msg.timing_values)),
        'raw': msg.raw,
        'frame_id': msg.header.frame_id,
    }


def _logged(method):
    """Worker hooks must never raise: an exception there would end the reasoner's inference thread."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - logged; the worker and the other goals go on
            self.node.get_logger().error(f'ask action: {method.__name__} failed: {type(exc).__name__}: {exc}')
            return None

    return wrapper


# -- the server --------------------------------------------------------------------------------------
class _Goal:
    """One accepted goal: the worker's hooks and the hand-over of its result to the execute callback."""

    def __init__(self, handle, qid: str):
        self.handle, self.qid = handle, qid
        self.stop = threading.Event()       # the pipeline's stop_event: set by a cancel
        self.done = threading.Event()       # result is ready
        self.lock = threading.Lock()
        self.result: PipelineResult | None = None
        self.executing = False              # handle.execute() was called
        self.cancel_accepted = False
        self.partial = ''
        self.chunks = 0
        self.map_points = 0
        self.saved_budget: int | None = None


class AskActionServer:
    """Serves ``ask`` for a :class:`ReasonerNode`, feeding its queue and hooked into its worker."""

    def __init__(self, node: ReasonerNode, name: str = ACTION_NAME):
        from r3d_interfaces.action import Ask

        self.Ask = Ask
        self.node = node
        if not node.has_parameter('ask_result_timeout'):
            node.declare_parameter('ask_result_timeout', 10, describe(
                'Seconds a finished ask goal keeps its result for late result requests', ints=(1, 3600),
                read_only=True))
        self._goals: dict[bytes, _Goal] = {}
        self._lock = threading.Lock()
        self._server = ActionServer(
            node, Ask, name, execute_callback=self._execute, goal_callback=self._on_goal,
            handle_accepted_callback=self._on_accepted, cancel_callback=self._on_cancel,
            callback_group=ReentrantCallbackGroup(), feedback_pub_qos_profile=QoSProfile(depth=FEEDBACK_DEPTH),
            goal_service_qos_profile=SERVICE_QOS, result_service_qos_profile=SERVICE_QOS,
            cancel_service_qos_profile=SERVICE_QOS,
            result_timeout=node.get_parameter('ask_result_timeout').value)

    @classmethod
    def attach(cls, node: ReasonerNode) -> AskActionServer | None:
        """The server, or None (logged) where r3d_interfaces is not built: the JSON topics still work."""
        try:
            return cls(node)
        except ImportError as exc:
            node.get_logger().warn(f'no `{ACTION_NAME}` action: r3d_interfaces is not installed ({exc}); '
                                   'build it with `bash scripts/r3d.sh setup`')
            return None

    def destroy(self) -> None:
        """Answer every goal still open with an error, then remove the action server."""
        with self._lock:
            goals = list(self._goals.values())
        for g in goals:
            self._finish(g, PipelineResult(id=g.qid, question=g.handle.request.question, status=STATUS_ERROR,
                                           message='reasoner shutting down'))
        self._server.destroy()

    # -- goal intake (executor threads) -----------------------------------------------------------
    def _refusal(self, goal) -> PipelineResult | None:
        node = self.node
        if not node.active or node._queue is None:
            return PipelineResult(id=goal.id, question=goal.question[:200], status=STATUS_ERROR,
                                  message='reasoner is not active')
        try:
            check_question(goal.question, node.get_parameter('max_query_chars').value)
        except PipelineError as exc:
            return PipelineResult(id=goal.id, question=goal.question[:200], status=STATUS_ERROR, message=str(exc))
        if node._queue.full():
            return PipelineResult(id=goal.id, question=goal.question, status=STATUS_BUSY,
                                  message=f'{node._queue.maxsize} queries already waiting')
        return None

    def _on_goal(self, goal) -> GoalResponse:
        refusal = self._refusal(goal)
        if refusal is None:
            return GoalResponse.ACCEPT
        self.node.get_logger().warn(f'ask goal {goal.id!r} rejected: {refusal.status}: {refusal.message}')
        pub = self.node._pubs.get('answer')
        if pub is not None:  # the protocol's goal response has no reason field: this is where it goes
            pub.publish(String(data=json.dumps(refusal.to_dict())))
        return GoalResponse.REJECT

    def _on_accepted(self, handle) -> None:
        request = handle.request
        qid = request.id or uuid.UUID(bytes=bytes(handle.goal_id.uuid)).hex
        g = _Goal(handle, qid)
        with self._lock:
            self._goals[bytes(handle.goal_id.uuid)] = g
        q = {'id': qid, 'question': request.question.strip(), 'task': request.task or None,
             'received': time.monotonic(), 'stop': g.stop,
             'on_start': lambda points: self._on_start(g, points),
             'on_text': lambda piece: self._on_text(g, piece),
             'on_result': lambda result: self._finish(g, result)}
        try:
            self.node._queue.put_nowait(q)
        except queue.Full:  # a JSON query took the last slot since the goal callback looked
            self._finish(g, PipelineResult(id=qid, question=q['question'], status=STATUS_BUSY,
                                           message=f'{self.node._queue.maxsize} queries already waiting'))

    def _on_cancel(self, handle) -> CancelResponse:
        with self._lock:
            g = self._goals.get(bytes(handle.goal_id.uuid))
        if g is None:
            return CancelResponse.REJECT
        with g.lock:
            if g.done.is_set():
                return CancelResponse.REJECT  # already answered: nothing left to cancel
            g.cancel_accepted = True
            g.stop.set()  # decoding: the pipeline's stopping criterion ends generate() at the next token
            queued = not g.executing
        if queued:  # the worker skips it when it gets there; the client hears now
            self.node.cancel_query(g.qid)
            self._finish(g, PipelineResult(id=g.qid, question=handle.request.question, status=STATUS_CANCELLED,
                                           message='cancelled before it started'))
        return CancelResponse.ACCEPT

    # -- worker hooks (the reasoner's inference thread) -------------------------------------------
    @_logged
    def _on_start(self, g: _Goal, map_points: int) -> None:
        with g.lock:
            if g.done.is_set():
                return
            g.executing = True
            g.map_points = int(map_points)
            g.handle.execute()
        budget = int(g.handle.request.max_new_tokens)
        pipeline = self.node.pipeline
        if budget and pipeline is not None and budget < pipeline.max_new_tokens:
            g.saved_budget, pipeline.max_new_tokens = pipeline.max_new_tokens, budget
        self._feedback(g, self.Ask.Feedback.STAGE_MAPPING)
        self._feedback(g, self.Ask.Feedback.STAGE_VIEWS)

    @_logged
    def _on_text(self, g: _Goal, piece: str) -> None:
        g.partial += piece
        g.chunks += 1
        answering = '</think>' in g.partial or '<answer>' in g.partial
        stage = self.Ask.Feedback.STAGE_ANSWERING if answering else self.Ask.Feedback.STAGE_THINKING
        self._feedback(g, stage, piece)

    def _feedback(self, g: _Goal, stage: str, text: str = '') -> None:
        g.handle.publish_feedback(self.Ask.Feedback(stage=stage, text=text, partial_text=g.partial,
                                                    chunks=g.chunks, map_points=g.map_points))

    @_logged
    def _finish(self, g: _Goal, result: PipelineResult) -> None:
        """Hand ``result`` to the goal's execute callback (first result wins), starting it if need be."""
        if g.saved_budget is not None and self.node.pipeline is not None:
            self.node.pipeline.max_new_tokens, g.saved_budget = g.saved_budget, None
        with g.lock:
            if g.done.is_set():
                return
            g.result = result
            g.done.set()
            start = not g.executing
            g.executing = True
        if start:
            g.handle.execute()

    # -- execution (one executor thread per goal being answered) ----------------------------------
    def _execute(self, handle):
        with self._lock:
            g = self._goals.get(bytes(handle.goal_id.uuid))
        if g is None:  # not ours (cannot happen: every accepted goal is registered first)
            handle.abort()
            return self.Ask.Result(status=STATUS_ERROR, message='unknown goal')
        while not g.done.wait(_SHUTDOWN_POLL_S):
            if self.node._stop.is_set():
                self._finish(g, PipelineResult(id=g.qid, question=handle.request.question, status=STATUS_ERROR,
                                               message='reasoner shutting down'))
        result = g.result
        if g.cancel_accepted:
            # the cancel callback returns before rclpy moves the goal to CANCELING: wait for that state
            deadline = time.monotonic() + 1.0
            while not handle.is_cancel_requested and handle.is_active and time.monotonic() < deadline:
                time.sleep(0.001)
        if result.status == STATUS_OK:
            handle.succeed()
        elif handle.is_cancel_requested:
            handle.canceled()
        else:
            handle.abort()
        with self._lock:
            self._goals.pop(bytes(handle.goal_id.uuid), None)
        header = Header(frame_id=self.node.get_parameter('map_frame').value,
                        stamp=self.node.get_clock().now().to_msg())
        return result_to_msg(result.to_dict(), header)
