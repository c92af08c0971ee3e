"""Sensor poses by time: a bounded buffer of stamped poses with interpolation (no ROS imports).

Matches a cloud's timestamp to the pose topic (nav_msgs/Odometry or geometry_msgs/PoseStamped): linear
interpolation of position and spherical-linear (slerp, scipy) of orientation between the two poses that
bracket the stamp. A stamp outside the buffered span is accepted up to ``max_extrapolation`` seconds by
holding the nearest pose; beyond it there is no pose and the cloud is not fused.

tf2 path: where ``tf2_ros`` is importable (a full ROS 2 install; it is not among the PyPI wheels), the
node can look the transform up with ``Buffer.lookup_transform(fixed_frame, cloud_frame, stamp)`` instead;
this buffer is what it uses here.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
import threading

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


def is_rigid(pose: np.ndarray, tol: float = 1e-3) -> bool:
    """A finite 4x4 homogeneous transform whose rotation block is a rotation (orthonormal, det +1)."""
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        return False
    rot = pose[:3, :3]
    return bool(np.abs(rot.T @ rot - np.eye(3)).max() <= tol and np.linalg.det(rot) > 0
                and np.abs(pose[3] - [0, 0, 0, 1]).max() <= tol)


class PoseBuffer:
    """Bounded, time-ordered 4x4 poses; thread-safe (an executor thread adds, the fusion thread looks up)."""

    def __init__(self, max_size: int = 2000, max_extrapolation: float = 0.1):
        self._stamps: deque[float] = deque(maxlen=max_size)
        self._poses: deque[np.ndarray] = deque(maxlen=max_size)
        self._lock = threading.Lock()
        self.max_extrapolation = max_extrapolation

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_stamp(self) -> float | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def add(self, stamp: float, pose: np.ndarray) -> bool:
        """Add a 4x4 pose; out-of-order stamps are inserted in order (bounded buffers drop the oldest).

        Returns False, keeping nothing, for a pose that is not a finite rigid transform or a stamp that is not
        finite: one garbled odometry message would otherwise be interpolated into every nearby cloud."""
        pose = np.asarray(pose, np.float64)
        if not is_rigid(pose) or not np.isfinite(stamp):
            return False
        with self._lock:
            self._add(float(stamp), pose)
        return True

    def _add(self, stamp: float, pose: np.ndarray) -> None:
        if self._stamps and stamp < self._stamps[-1]:
            if len(self._stamps) == self._stamps.maxlen:  # full: make room the way append would
                self._stamps.popleft()
                self._poses.popleft()
            i = bisect_left(self._stamps, stamp)
            self._stamps.insert(i, stamp)
            self._poses.insert(i, pose)
            return
        self._stamps.append(stamp)
        self._poses.append(pose)

    def lookup(self, stamp: float) -> np.ndarray | None:
        """The interpolated 4x4 pose at ``stamp``, or None when no pose is close enough."""
        with self._lock:
            return self._lookup(stamp)

    def _lookup(self, stamp: float) -> np.ndarray | None:
        if not self._stamps:
            return None
        stamps = self._stamps
        if stamp <= stamps[0]:
            return self._poses[0].copy() if stamps[0] - stamp <= self.max_extrapolation else None
        if stamp >= stamps[-1]:
            return self._poses[-1].copy() if stamp - stamps[-1] <= self.max_extrapolation else None
        i = bisect_left(stamps, stamp)
        t0, t1 = stamps[i - 1], stamps[i]
        p0, p1 = self._poses[i - 1], self._poses[i]
        a = 0.0 if t1 == t0 else (stamp - t0) / (t1 - t0)
        out = np.eye(4)
        out[:3, 3] = (1 - a) * p0[:3, 3] + a * p1[:3, 3]
        slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([p0[:3, :3], p1[:3, :3]])))
        out[:3, :3] = slerp([a]).as_matrix()[0]
        return out
