"""`reasoner`: questions in; answers, reasoning, groundings and plan steps out.

A lifecycle node (rclpy.lifecycle) over :class:`r3d_ros.pipeline.ScenePipeline`:

* configure: declare/read parameters, load the model (failures are logged and every query is then
  answered with an error status, the node stays up);
* activate: start publishing; queries are accepted only while active;
* one inference worker thread with a bounded queue, so the executor never waits on the model; a full
  queue answers ``busy`` at once; ``cancel`` (std_msgs/String with a query id) drops a queued query or
  stops one mid-decoding.

Subscribes: ``scene_map/cloud`` (reliable, transient-local), ``query`` (std_msgs/String: plain text or
JSON ``{"id", "question", "task"}``), ``cancel``.
Publishes: ``answer`` (JSON result), ``answer_text``, ``answer_stream`` (token pieces while decoding),
``grounding`` (MarkerArray, cleared first), ``plan`` (validated steps, JSON), ``plan_path`` (Path),
``selected_views`` (PoseArray) and ``selected_views/frustums`` (MarkerArray), ``diagnostics``, and
``scene_objects`` (reliable, transient-local: the object records the last answer was grounded on, JSON
``{"id", "frame_id", "stamp", "objects": [...]}``; a late subscriber gets the latest at once), and the same
as ``r3d_interfaces/SceneObjects`` on ``scene_objects/typed`` where the interfaces are built.
"""

from __future__ import annotations

from collections import OrderedDict
import json
import queue
import threading
import time
import uuid

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PoseArray, PoseStamped
from nav_msgs.msg import Path as PathMsg
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import Marker, MarkerArray

from r3d_ros.nodes.ask_action import AskActionServer, scene_object_to_msg
from r3d_ros.nodes.common import MAP_QOS, describe, run_lifecycle_node
from r3d_ros.nodes.conversions import matrix_to_pose
from r3d_ros.pipeline import (
    STATUS_BUSY,
    STATUS_CANCELLED,
    STATUS_ERROR,
    STATUS_INVALID_PLAN,
    STATUS_OK,
    PipelineError,
    PipelineResult,
    ScenePipeline,
    check_question,
)
from r3d_ros.pointcloud import PointCloudError, xyz_rgb_from_cloud

ANSWER_DEPTH = 100
VIEWS_IGNORED = 'the checkpoint has no view tower: selected views are reported in answers, not fed to the model'


def parse_query(text: str) -> dict:
    """std_msgs/String payload -> {'id', 'question', 'task'}; plain text is a question with a fresh id."""
    text = text or ''
    stripped = text.strip()
    if stripped.startswith('{'):
        try:
            data = json.loads(stripped)
        except (ValueError, RecursionError) as exc:  # also too deep to parse, or an int of > 4300 digits
            return {'id': '', 'question': '', 'task': None,
                    'error': f'malformed JSON query: {type(exc).__name__}: {str(exc)[:200]}'}
        if not isinstance(data, dict):
            return {'id': '', 'question': '', 'task': None, 'error': 'JSON query must be an object'}
        return {'id': str(data.get('id') or uuid.uuid4().hex[:8]), 'question': str(data.get('question') or ''),
                'task': data.get('task')}
    return {'id': uuid.uuid4().hex[:8], 'question': text, 'task': None}


class ReasonerNode(LifecycleNode):
    def __init__(self, **kw):
        super().__init__('reasoner', **kw)
        self.declare_parameter('model_path', '', describe('Checkpoint directory; empty = the embedded default',
                                                       read_only=True))
        self.declare_parameter('device', 'auto', describe("'auto' (GPU when present), 'cpu' or 'cuda[:N]'",
                                                       read_only=True))
        self.declare_parameter('num_views', 6, describe('Views selected per question (paper: 6)', ints=(0, 32)))
        self.declare_parameter('max_new_tokens', 512, describe('Decoding budget per answer', ints=(8, 4096)))
        self.declare_parameter('regenerations', 2, describe('Sampled retries of an answer refused as ungrounded or '
                                                            'with an invalid plan (0: the greedy answer only)',
                                                            ints=(0, 8)))
        self.declare_parameter('grammar', True, describe('Hold decoding to the grounded grammar: references only '
                                                         "to the map's objects, facts with their arguments "
                                                         '(r3d_ros.grammar_decoding)'))
        self.declare_parameter('interpret_questions', True, describe(
            'Read a question in other words as the nearest trained question (MiniLM sentence similarity, '
            'r3d_ros.question_intent; the answer says which in interpreted_as)'))
        self.declare_parameter('queue_size', 4, describe('Queries waiting for the model before "busy"',
                                                      ints=(1, 256), read_only=True))
        self.declare_parameter('max_query_chars', 2000, describe('Longer questions are refused', ints=(1, 100_000)))
        self.declare_parameter('map_frame', 'map', describe('Frame of the map and of every output'))
        self.declare_parameter('diagnostics_period', 1.0, describe('Seconds between diagnostics', floats=(0.1, 60.0)))
        self.declare_parameter('autostart', True, describe('Configure and activate at start (no lifecycle manager '
                                                        'needed)', read_only=True))
        self.pipeline: ScenePipeline | None = None
        self.load_error = ''
        self._map: tuple[np.ndarray, np.ndarray] | None = None
        self._map_lock = threading.Lock()
        self._queue: queue.Queue | None = None
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._current: tuple[str, threading.Event] | None = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._latencies: list[float] = []
        self._pubs: dict = {}
        self._subs: list = []
        self._query_sub = None   # only while active (on_activate)
        self._timer = None
        self._ask: AskActionServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        try:
            self.pipeline = ScenePipeline.from_pretrained(
                p('model_path') or None, device=p('device'), num_views=p('num_views'),
                max_new_tokens=p('max_new_tokens'), max_question_chars=p('max_query_chars'),
                regenerations=p('regenerations'), grammar=p('grammar'),
                interpret=p('interpret_questions'))
            self.get_logger().info(f'model loaded from {self.pipeline.model_path} on {self.pipeline.device}')
            if not self.pipeline.uses_views and self.pipeline.selector is not None:
                self.get_logger().warning(VIEWS_IGNORED)
        except Exception as exc:  # noqa: BLE001 - keep running and answer every query with the reason
            self.pipeline, self.load_error = None, f'model load failed: {type(exc).__name__}: {exc}'
            self.get_logger().error(self.load_error)
        self._pubs = {
            # deep history: a burst of instant `busy` replies must not overwrite answers not yet delivered
            'answer': self.create_lifecycle_publisher(String, 'answer', ANSWER_DEPTH),
            'answer_text': self.create_lifecycle_publisher(String, 'answer_text', ANSWER_DEPTH),
            'answer_stream': self.create_lifecycle_publisher(String, 'answer_stream', 50),
            'grounding': self.create_lifecycle_publisher(MarkerArray, 'grounding', 10),
            'plan': self.create_lifecycle_publisher(String, 'plan', 10),
            'plan_path': self.create_lifecycle_publisher(PathMsg, 'plan_path', 10),
            'selected_views': self.create_lifecycle_publisher(PoseArray, 'selected_views', 10),
            'view_frustums': self.create_lifecycle_publisher(MarkerArray, 'selected_views/frustums', 10),
            'diagnostics': self.create_lifecycle_publisher(DiagnosticArray, 'diagnostics', 10),
            # latched like the map: the records every published fact was read off, for any late subscriber
            'scene_objects': self.create_lifecycle_publisher(String, 'scene_objects', MAP_QOS),
        }
        try:  # the same records typed, where r3d_interfaces is built
            from r3d_interfaces.msg import SceneObjects

            self._pubs['scene_objects_typed'] = self.create_lifecycle_publisher(SceneObjects, 'scene_objects/typed',
                                                                                MAP_QOS)
            self._scene_objects_type = SceneObjects
        except ImportError:
            pass
        self._queue = queue.Queue(maxsize=p('queue_size'))
        # map decoding and query intake run in their own groups so a big map never delays a query
        self._subs = [
            self.create_subscription(PointCloud2, 'scene_map/cloud', self._on_map, MAP_QOS,
                                     callback_group=MutuallyExclusiveCallbackGroup()),
            self.create_subscription(String, 'cancel', self._on_cancel, 10,
                                     callback_group=MutuallyExclusiveCallbackGroup()),
        ]
        self._query_group = MutuallyExclusiveCallbackGroup()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name='reasoner-inference', daemon=True)
        self._worker.start()
        self._timer = self.create_timer(p('diagnostics_period'), self._publish_diagnostics)
        # the `ask` action: same queue and worker as `query` (None where r3d_interfaces is not built)
        self._ask = AskActionServer.attach(self)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Queries are taken only while active (the subscription exists then): a query an inactive node took
        could not be answered, its managed publishers being off, so a client that sees `query` served is."""
        result = super().on_activate(state)
        self._query_sub = self.create_subscription(String, 'query', self._on_query, ANSWER_DEPTH,
                                                   callback_group=self._query_group)
        self.get_logger().info('active: answering queries on ' + self.resolve_topic_name('query'))
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._drop_query_subscription()
        return super().on_deactivate(state)

    def _drop_query_subscription(self) -> None:
        if self._query_sub is not None:
            self.destroy_subscription(self._query_sub)
            self._query_sub = None

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.stop_worker()
        self._drop_query_subscription()
        if self._ask is not None:
            self._ask.destroy()
            self._ask = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        if self._timer is not None:
            self.destroy_timer(self._timer)
        self._subs, self._pubs, self._timer, self.pipeline = [], {}, None, None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.stop_worker()
        return TransitionCallbackReturn.SUCCESS

    def stop_worker(self) -> None:
        self._stop.set()
        if self._current is not None:
            self._current[1].set()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None

    @property
    def active(self) -> bool:
        return self._state_machine.current_state[1] == 'active'

    # -- inputs ------------------------------------------------------------------------------
    def _on_map(self, msg: PointCloud2) -> None:
        try:
            xyz, rgb = xyz_rgb_from_cloud(msg)
        except PointCloudError as exc:
            self.get_logger().error(f'ignoring malformed map cloud: {exc}')
            return
        except Exception as exc:  # noqa: BLE001 - a codec bug must not end the node; the last map stays
            self.get_logger().error(f'ignoring map cloud the codec failed on: {type(exc).__name__}: {exc}')
            return
        if rgb is None:
            rgb = np.full((len(xyz), 3), 128, np.uint8)
        with self._map_lock:
            self._map = (xyz, rgb)

    def _on_query(self, msg: String) -> None:
        q = parse_query(msg.data)
        if 'error' in q:
            return self._publish_result(PipelineResult(id=q['id'], status=STATUS_ERROR, message=q['error']))
        if not self.active:
            return self._publish_result(PipelineResult(id=q['id'], question=q['question'], status=STATUS_ERROR,
                                                       message='reasoner is not active'))
        try:
            q['question'] = check_question(q['question'], self.get_parameter('max_query_chars').value)
        except PipelineError as exc:  # refused at intake: costs no queue slot and no model time
            return self._publish_result(PipelineResult(id=q['id'], question=q['question'][:200], status=STATUS_ERROR,
                                                       message=str(exc)))
        q['received'] = time.monotonic()
        try:
            self._queue.put_nowait(q)
        except queue.Full:
            self._publish_result(PipelineResult(id=q['id'], question=q['question'], status=STATUS_BUSY,
                                                message=f'{self._queue.maxsize} queries already waiting'))

    def _on_cancel(self, msg: String) -> None:
        self.cancel_query(msg.data.strip())

    def cancel_query(self, qid: str) -> None:
        """Stop query ``qid`` mid-decoding, or have the worker drop it (the `cancel` topic, the `ask` action)."""
        current = self._current
        if current is not None and current[0] == qid:
            current[1].set()
        else:
            self._cancelled[qid] = None
            while len(self._cancelled) > 256:
                self._cancelled.popitem(last=False)

    # -- inference ---------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                q = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if q['id'] in self._cancelled:
                self._cancelled.pop(q['id'], None)
                self._deliver(q, PipelineResult(id=q['id'], question=q['question'], status=STATUS_CANCELLED,
                                                message='cancelled before it started'))
                continue
            self._deliver(q, self._answer(q))

    def _deliver(self, q: dict, result: PipelineResult) -> None:
        """Every result goes out on the JSON topics; an `ask` goal's also to its action hook."""
        self._publish_result(result)
        if q.get('on_result') is not None:
            q['on_result'](result)

    def _answer(self, q: dict) -> PipelineResult:
        if self.pipeline is None:
            return PipelineResult(id=q['id'], question=q['question'], status=STATUS_ERROR,
                                  message=self.load_error or 'no model loaded')
        with self._map_lock:
            scene = self._map
        if scene is None:
            topic = self.resolve_topic_name('scene_map/cloud')
            return PipelineResult(id=q['id'], question=q['question'], status=STATUS_ERROR,
                                  message=f'no map yet: nothing received on {topic}')
        stop = q.get('stop') or threading.Event()  # an `ask` goal brings its own (its cancel sets it)
        self._current = (q['id'], stop)
        stream = self._pubs['answer_stream']
        if q.get('on_start') is not None:
            q['on_start'](len(scene[0]))

        def on_text(piece: str) -> None:
            stream.publish(String(data=json.dumps({'id': q['id'], 'text': piece})))
            if q.get('on_text') is not None:
                q['on_text'](piece)

        try:
            result = self.pipeline.answer(scene[0], scene[1], q['question'], query_id=q['id'], stop_event=stop,
                                          on_text=on_text)
        finally:
            self._current = None
        result.timings['queue_wait_s'] = time.monotonic() - q['received'] - result.timings.get('total_s', 0.0)
        result.task = q.get('task')
        self._latencies = (self._latencies + [time.monotonic() - q['received']])[-100:]
        return result

    # -- outputs -----------------------------------------------------------------------------
    def _publish_result(self, result: PipelineResult) -> None:
        if not self._pubs:
            return
        frame = self.get_parameter('map_frame').value
        stamp = self.get_clock().now().to_msg()
        payload = result.to_dict()
        if result.status != STATUS_OK:
            self.get_logger().warn(f"query {result.id}: {result.status}: {result.message}")
        if result.objects:
            self._pubs['scene_objects'].publish(String(data=json.dumps({
                'id': result.id, 'frame_id': frame, 'stamp': stamp.sec + stamp.nanosec * 1e-9,
                'objects': payload['objects']})))
            if 'scene_objects_typed' in self._pubs:
                typed = self._scene_objects_type(objects=[scene_object_to_msg(o) for o in payload['objects']])
                typed.header.frame_id, typed.header.stamp = frame, stamp
                self._pubs['scene_objects_typed'].publish(typed)
        markers = MarkerArray(markers=[Marker(action=Marker.DELETEALL, ns='r3d_grounding')])
        for i, box in enumerate(result.boxes):
            markers.markers += _box_markers(box, i, frame, stamp)
        self._pubs['grounding'].publish(markers)
        if result.views:
            poses = PoseArray()
            poses.header.frame_id, poses.header.stamp = frame, stamp
            poses.poses = [matrix_to_pose(np.asarray(v['pose'])) for v in result.views]
            self._pubs['selected_views'].publish(poses)
            self._pubs['view_frustums'].publish(_frustum_markers(result.views, frame, stamp))
        # plan steps go out only when the pipeline validated them (status ok); invalid plans never do
        if result.plan and result.status == STATUS_OK:
            self._pubs['plan'].publish(String(data=json.dumps({'id': result.id, 'steps': payload['plan']})))
            path = PathMsg()
            path.header.frame_id, path.header.stamp = frame, stamp
            for step in result.plan:
                ps = PoseStamped()
                ps.header = path.header
                ps.pose.position.x, ps.pose.position.y, ps.pose.position.z = (float(v) for v in step.position)
                ps.pose.orientation.w = 1.0
                path.poses.append(ps)
            self._pubs['plan_path'].publish(path)
        elif result.status == STATUS_INVALID_PLAN:
            self.get_logger().error(f'query {result.id}: plan rejected: {result.message}')
        # `answer` goes last: a client that waits for it has every other output of this query already
        self._pubs['answer_text'].publish(String(data=result.answer_text if result.status == STATUS_OK
                                                 else f'[{result.status}] {result.message}'))
        self._pubs['answer'].publish(String(data=json.dumps(payload)))

    def _diagnostics_message(self) -> str:
        if self.pipeline is None:
            return self.load_error or 'no model'
        return 'ok' if self.pipeline.uses_views or self.pipeline.selector is None else 'ok; ' + VIEWS_IGNORED

    def _publish_diagnostics(self) -> None:
        if 'diagnostics' not in self._pubs:
            return
        lat = np.asarray(self._latencies) if self._latencies else np.zeros(1)
        values = {'queue_depth': self._queue.qsize() if self._queue else 0, 'model_loaded': self.pipeline is not None,
                  'latency_p50_s': float(np.percentile(lat, 50)), 'latency_p95_s': float(np.percentile(lat, 95)),
                  'map_points': 0 if self._map is None else len(self._map[0]),
                  'views_used': bool(self.pipeline and self.pipeline.uses_views)}
        try:
            import torch

            if torch.cuda.is_available():
                values['gpu_memory_allocated_mb'] = torch.cuda.memory_allocated() / 2**20
                values['gpu_memory_reserved_mb'] = torch.cuda.memory_reserved() / 2**20
        except Exception:  # noqa: BLE001 - diagnostics must never take the node down
            pass
        status = DiagnosticStatus(name='reasoner', hardware_id='r3d_ros',
                                  level=DiagnosticStatus.OK if self.pipeline else DiagnosticStatus.ERROR,
                                  message=self._diagnostics_message())
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pubs['diagnostics'].publish(msg)


def _frustum_markers(views: list[dict], frame: str, stamp) -> MarkerArray:
    """One LINE_LIST per selected view drawing its camera frustum (RViz), after clearing the last set."""
    from r3d_ros.views import Intrinsics, frustum_segments

    out = MarkerArray(markers=[Marker(action=Marker.DELETEALL, ns='r3d_views')])
    for i, view in enumerate(views):
        m = Marker(ns='r3d_views', id=i, type=Marker.LINE_LIST, action=Marker.ADD)
        m.header.frame_id, m.header.stamp = frame, stamp
        m.scale.x = 0.02
        m.color.r, m.color.g, m.color.b, m.color.a = 1.0, 0.6, 0.1, 0.9
        segments = frustum_segments(np.asarray(view['pose']), Intrinsics(hfov_deg=view.get('hfov_deg', 90.0)))
        m.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for seg in segments for p in seg]
        out.markers.append(m)
    return out


def _box_markers(box, i: int, frame: str, stamp) -> list[Marker]:
    cube = Marker(ns='r3d_grounding', id=2 * i, type=Marker.CUBE, action=Marker.ADD)
    cube.header.frame_id, cube.header.stamp = frame, stamp
    cube.pose.position.x, cube.pose.position.y, cube.pose.position.z = (float(v) for v in box.center)
    cube.pose.orientation.w = 1.0
    cube.scale.x, cube.scale.y, cube.scale.z = (max(float(v), 0.01) for v in box.size)
    cube.color.r, cube.color.g, cube.color.b, cube.color.a = 0.1, 0.8, 0.2, 0.35
    text = Marker(ns='r3d_grounding', id=2 * i + 1, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                  text=f'{box.label} ({box.ref})' if box.category else box.ref)
    text.header = cube.header
    text.pose.position.x, text.pose.position.y = cube.pose.position.x, cube.pose.position.y
    text.pose.position.z = cube.pose.position.z + cube.scale.z / 2 + 0.1
    text.pose.orientation.w = 1.0
    text.scale.z = 0.15
    text.color.r = text.color.g = text.color.b = text.color.a = 1.0
    return [cube, text]


def main(args=None) -> None:
    run_lifecycle_node(ReasonerNode, args, threads=4)  # one more: an `ask` goal being answered holds one


if __name__ == '__main__':
    main()
