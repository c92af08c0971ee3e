"""`scene_map`: live fusion of point clouds into a bounded, persistent voxel map.

Lifecycle node over :class:`r3d_ros.mapping.VoxelMap`. Ingest never blocks the executor: the cloud
callback only appends the message to a bounded deque (``queue_size``); one worker thread decodes and
fuses. When frames arrive faster than they can be fused, the oldest waiting frame is dropped (a map wants
the newest view) and counted in diagnostics. A worker thread was chosen over callback groups +
MultiThreadedExecutor alone because a bounded drop-oldest queue is then explicit and countable; with
executor callbacks the backlog would sit, unbounded and invisible, in the DDS history. The executor is
still multi-threaded (ingest in its own callback group) so a slow map publication or a save never delays
taking frames off the wire. Fusion takes the map lock for one ``integrate``; publication and saving take
it only to copy the map, then encode/write outside it.

Pose source (``pose_source``): ``odom`` (nav_msgs/Odometry on ``pose_topic``), ``pose``
(geometry_msgs/PoseStamped), or ``none`` (clouds already in ``fixed_frame`` with the sensor at its origin,
so ``min_range``/``max_range`` apply around that origin; raise ``max_range`` for registered clouds). Poses
are matched to each cloud's stamp by interpolation (:class:`r3d_ros.mapping.PoseBuffer`); a cloud newer
than the newest pose waits up to ``pose_wait`` seconds for it. tf2 is not importable here (no ROS install, only message
wheels); where it is, a ``tf2_ros.Buffer.lookup_transform(fixed_frame, cloud.header.frame_id, stamp)``
would replace the PoseBuffer lookup in :meth:`SceneMapNode._pose_for` and nothing else changes.

Hostile input: every callback is total (a malformed cloud, pose or file is counted, never raised), and the
map refuses non-finite points, points out of range of the sensor and poses beyond its keys' range before a
frame is reduced (:meth:`VoxelMap.integrate`); diagnostics count each kind. A snapshot cut short by a crash
is never read (saves are atomic), its temporary file is removed at configure, and a loaded file's
non-finite or inconsistent voxels are left out.

Lifecycle: configure builds the map (loading ``map_path`` when it exists) and the ROS entities, activate
starts fusing and publishing, deactivate stops taking frames, cleanup tears the entities down.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger

from r3d_ros.mapping import PoseBuffer, VoxelMap
from r3d_ros.nodes.common import MAP_QOS, describe, run_lifecycle_node
from r3d_ros.nodes.conversions import pose_to_matrix, stamp_to_sec, to_pointcloud2
from r3d_ros.pointcloud import PointCloudError, xyz_rgb_from_cloud


class SceneMapNode(LifecycleNode):
    def __init__(self, **kw):
        super().__init__('scene_map', **kw)
        self.declare_parameter('fixed_frame', 'map', describe('Frame of the map', read_only=True))
        self.declare_parameter('voxel_size', 0.05, describe('Voxel edge in metres', floats=(0.005, 1.0),
                                                            read_only=True))
        self.declare_parameter('max_voxels', 2_000_000, describe('Memory bound; the stalest voxels are evicted first',
                                                              ints=(1000, 50_000_000), read_only=True))
        self.declare_parameter('min_range', 0.1, describe('Points nearer the sensor are dropped (m)',
                                                          floats=(0.0, 10.0)))
        self.declare_parameter('max_range', 10.0, describe('Points farther from the sensor are dropped (m)',
                                                        floats=(0.1, 1000.0)))
        self.declare_parameter('pose_source', 'odom', describe('Where sensor poses come from', read_only=True,
                                                            choices=['odom', 'pose', 'none']))
        self.declare_parameter('pose_topic', 'odom', describe('Odometry or PoseStamped topic', read_only=True))
        self.declare_parameter('max_pose_age', 0.1, describe('Largest gap (s) between a cloud and the nearest pose '
                                                          'outside the buffered span', floats=(0.0, 5.0)))
        self.declare_parameter('pose_wait', 0.5, describe('Seconds a cloud newer than every pose waits for it',
                                                          floats=(0.0, 5.0)))
        self.declare_parameter('queue_size', 4, describe('Frames waiting to be fused; more drop the oldest',
                                                      ints=(1, 100), read_only=True))
        self.declare_parameter('publish_rate', 1.0, describe('Map publications per second', floats=(0.01, 50.0),
                                                          read_only=True))
        self.declare_parameter('map_path', '', describe('Map file (.npz or .ply): loaded at start when it exists, '
                                                     'written by ~/save and every snapshot_period', read_only=True))
        self.declare_parameter('snapshot_period', 0.0, describe('Seconds between automatic saves; 0 = never',
                                                             floats=(0.0, 86400.0), read_only=True))
        self.declare_parameter('autostart', True, describe('Configure and activate at start', read_only=True))
        self.voxel_map: VoxelMap | None = None
        self.poses = PoseBuffer()
        self._frames: deque = deque()
        self._cv = threading.Condition()
        self._map_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker = None
        self.dropped = self.no_pose = self.malformed = self.received = self.fusion_errors = self.bad_poses = 0
        self._fuse_times: deque = deque(maxlen=50)
        self._fused_points: deque = deque(maxlen=50)
        self._dirty = False
        self._active = False
        self._entities: list = []

    def p(self, name):
        return self.get_parameter(name).value

    # -- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        if self.p('pose_source') not in ('odom', 'pose', 'none'):
            self.get_logger().error(f"pose_source {self.p('pose_source')!r} is not one of 'odom', 'pose', 'none'")
            return TransitionCallbackReturn.FAILURE
        limits = dict(voxel_size=self.p('voxel_size'), max_voxels=self.p('max_voxels'),
                      min_range=self.p('min_range'), max_range=self.p('max_range'))
        self.voxel_map = self._load_map(self.p('map_path'), limits)
        self._frames = deque()
        self.poses.clear()
        self.map_pub = self.create_lifecycle_publisher(PointCloud2, 'scene_map/cloud', MAP_QOS)
        self.diag_pub = self.create_lifecycle_publisher(DiagnosticArray, 'diagnostics', 10)
        ingest = MutuallyExclusiveCallbackGroup()
        self._entities = [
            self.create_subscription(PointCloud2, 'points', self._on_cloud, qos_profile_sensor_data,
                                     callback_group=ingest),
            self.create_service(Trigger, '~/reset', self._on_reset),
            self.create_service(Trigger, '~/save', self._on_save),
            self.create_timer(1.0 / self.p('publish_rate'), self._publish_map),
            self.create_timer(1.0, self._publish_diagnostics),
        ]
        source = self.p('pose_source')
        if source == 'odom':
            self._entities.append(self.create_subscription(Odometry, self.p('pose_topic'), self._on_odom, 100,
                                                           callback_group=ingest))
        elif source == 'pose':
            self._entities.append(self.create_subscription(PoseStamped, self.p('pose_topic'), self._on_pose, 100,
                                                           callback_group=ingest))
        if self.p('snapshot_period') > 0 and self.p('map_path'):
            self._entities.append(self.create_timer(self.p('snapshot_period'), self._snapshot))
        self._stop.clear()
        self._worker = threading.Thread(target=self._fuse_loop, name='scene-map-fusion', daemon=True)
        self._worker.start()
        return TransitionCallbackReturn.SUCCESS

    def _load_map(self, path: str, limits: dict) -> VoxelMap:
        """The map in ``path`` when it holds one, else an empty map (a corrupt file must not stop mapping)."""
        if path and VoxelMap.remove_stale_temporaries(path):
            self.get_logger().warning(f'removed the temporary file of a save cut short next to {path}')
        if not path or not Path(path).exists():
            return VoxelMap(**limits)
        try:
            vmap = VoxelMap.load(path, **limits)
        except Exception as exc:  # noqa: BLE001 - a corrupt file must not stop the robot mapping
            self.get_logger().error(f'could not load {path}: {exc}; starting an empty map')
            return VoxelMap(**limits)
        rejected = vmap.stats.rejected_voxels
        self.get_logger().info(f'loaded {len(vmap)} voxels from {path}'
                               + (f' ({rejected} non-finite or inconsistent voxels left out)' if rejected else ''))
        self._dirty = True
        return vmap

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._active = True
        self._dirty = True  # (re)publish the current map to whoever subscribes now
        return super().on_activate(state)  # activates the lifecycle publishers

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.stop_worker()
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        self.stop_worker()
        return TransitionCallbackReturn.SUCCESS

    def _destroy_entities(self) -> None:
        for entity in self._entities:
            if hasattr(entity, 'cancel'):  # timers
                entity.cancel()
                self.destroy_timer(entity)
            elif hasattr(entity, 'srv_type'):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        self.destroy_lifecycle_publisher(self.map_pub)
        self.destroy_lifecycle_publisher(self.diag_pub)
        self._entities = []
        with self._cv:
            self._frames.clear()

    def stop_worker(self):
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None

    # -- ingest (executor threads: only queue work) ------------------------------------------
    def _on_cloud(self, msg: PointCloud2) -> None:
        if not self._active:
            return
        with self._cv:
            self.received += 1
            if len(self._frames) >= self.p('queue_size'):
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(msg)
            self._cv.notify()

    def _on_odom(self, msg: Odometry) -> None:
        self._add_pose(msg.header.stamp, msg.pose.pose)

    def _on_pose(self, msg: PoseStamped) -> None:
        self._add_pose(msg.header.stamp, msg.pose)

    def _add_pose(self, stamp, pose) -> None:
        """Buffer a pose; a non-finite or non-rigid one is refused and counted (an exception here would end
        the executor, and a NaN quaternion would otherwise read as the identity rotation)."""
        q, t = pose.orientation, pose.position
        try:
            ok = (np.isfinite([q.x, q.y, q.z, q.w, t.x, t.y, t.z]).all()
                  and self.poses.add(stamp_to_sec(stamp), pose_to_matrix(pose)))
        except Exception:  # noqa: BLE001 - a garbled pose is counted, never raised
            ok = False
        if not ok:
            self.bad_poses += 1
            self.get_logger().warning('refusing a non-finite or non-rigid pose', throttle_duration_sec=5.0)

    # -- fusion (worker thread) --------------------------------------------------------------
    def _fuse_loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while not self._frames and not self._stop.is_set():
                    self._cv.wait(0.2)
                if self._stop.is_set():
                    return
                msg = self._frames.popleft()
            try:
                self._fuse(msg)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not end fusion for good
                self.fusion_errors += 1  # not an input the decoder refuses: a bug, reported as an error
                self.get_logger().error(f'fusing a frame failed: {exc!r}', throttle_duration_sec=5.0)

    def _fuse(self, msg: PointCloud2) -> None:
        t0 = time.perf_counter()
        try:
            xyz, rgb = xyz_rgb_from_cloud(msg, skip_nans=False)  # the map drops non-finite points, and counts them
        except PointCloudError as exc:
            self.malformed += 1
            self.get_logger().warning(f'dropping malformed cloud: {exc}', throttle_duration_sec=5.0)
            return
        stamp = stamp_to_sec(msg.header.stamp)
        pose = self._pose_for(msg, stamp)
        if pose is False:
            self.no_pose += 1
            self.get_logger().warning(f'no pose for cloud in {msg.header.frame_id!r} at t={stamp:.3f}; not fused',
                                   throttle_duration_sec=5.0)
            return
        with self._map_lock:
            n = self.voxel_map.integrate(xyz, rgb, pose=pose, stamp=stamp)
            self._dirty = True
        self._fuse_times.append(time.perf_counter() - t0)
        self._fused_points.append(n)

    def _pose_for(self, msg: PointCloud2, stamp: float):
        """Sensor-to-map pose for a cloud; None when it is already in the fixed frame, False when unknown."""
        if self.p('pose_source') == 'none':
            frame = msg.header.frame_id
            return None if frame in ('', self.p('fixed_frame')) else False
        self.poses.max_extrapolation = self.p('max_pose_age')
        deadline = time.monotonic() + self.p('pose_wait')
        while True:  # a cloud can overtake its own pose on the wire: wait briefly for it
            newest = self.poses.newest_stamp
            if (newest is not None and newest >= stamp) or time.monotonic() >= deadline or self._stop.is_set():
                break
            time.sleep(0.005)
        pose = self.poses.lookup(stamp)
        return False if pose is None else pose

    # -- outputs -----------------------------------------------------------------------------
    def _publish_map(self) -> None:
        if self.voxel_map is None or not self._dirty or not self._active:
            return  # unchanged: transient-local durability already gives late joiners the last map
        with self._map_lock:
            xyz, rgb, _ = self.voxel_map.snapshot()
            self._dirty = False
        # an empty map is published too (after ~/reset), so subscribers drop the old one
        self.map_pub.publish(to_pointcloud2(xyz, rgb, frame_id=self.p('fixed_frame'),
                                            stamp=self.get_clock().now().to_msg()))

    def _publish_diagnostics(self) -> None:
        if self.voxel_map is None or not self._active:
            return
        busy = sum(self._fuse_times) or 1e-9
        stats = self.voxel_map.stats
        values = {'map_voxels': stats.voxels, 'frames_fused': stats.frames, 'points_fused': stats.points_fused,
                  'evicted_voxels': stats.evicted, 'dropped_frames': self.dropped, 'frames_without_pose': self.no_pose,
                  'malformed_frames': self.malformed, 'queue_depth': len(self._frames),
                  'frames_received': self.received, 'fusion_errors': self.fusion_errors,
                  'points_rejected_nonfinite': stats.rejected_nonfinite,
                  'points_rejected_out_of_range': stats.rejected_range,
                  'frames_rejected_pose': stats.rejected_frames, 'poses_rejected': self.bad_poses,
                  'voxels_rejected_from_file': stats.rejected_voxels,
                  'fusion_points_per_s': round(sum(self._fused_points) / busy),
                  'fusion_frames_per_s': round(len(self._fuse_times) / busy, 2)}
        level, message = DiagnosticStatus.OK, 'fusing'
        if self.dropped or self.no_pose or self.malformed or stats.rejected_frames or self.bad_poses:
            level, message = DiagnosticStatus.WARN, 'fusing; some input refused (see the counts)'
        if self.fusion_errors:
            level, message = DiagnosticStatus.ERROR, f'{self.fusion_errors} frames failed to fuse (see the log)'
        status = DiagnosticStatus(name='scene_map', hardware_id='r3d_ros', level=level, message=message)
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    def _on_reset(self, request, response):
        with self._map_lock:
            self.voxel_map.reset()
            self._dirty = True
        with self._cv:
            self._frames.clear()  # frames taken before the reset would refill the map
        response.success, response.message = True, 'map cleared'
        return response

    def _on_save(self, request, response):
        path = self.p('map_path')
        if not path:
            response.success, response.message = False, 'map_path parameter is empty'
            return response
        try:
            self._snapshot()
            response.success, response.message = True, f'saved {len(self.voxel_map)} voxels to {path}'
        except Exception as exc:  # noqa: BLE001 - report the failure to the caller, keep mapping
            response.success, response.message = False, f'save failed: {exc}'
        return response

    def _snapshot(self) -> None:
        with self._map_lock:  # copy under the lock (fast), write outside it (slow): fusion goes on
            frozen = self.voxel_map.copy()
        before = frozen.stats.rejected_voxels
        frozen.save(self.p('map_path'))
        if frozen.stats.rejected_voxels > before:
            self.get_logger().error(f'{frozen.stats.rejected_voxels - before} invalid voxels not saved')


def main(args=None) -> None:
    run_lifecycle_node(SceneMapNode, args, threads=2)


if __name__ == '__main__':
    main()
