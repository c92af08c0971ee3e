"""Playback timing without ROS: bag time as a function of wall time, with rate, start offset, pause and step.

    bag_time = bag_anchor + (wall - wall_anchor) * rate     while running
    bag_time = bag_anchor                                   while paused

Every change (pause, resume, step, seek) re-anchors, so bag time is continuous and never goes backwards
except on an explicit :meth:`Timeline.seek` (a loop restart).
"""

from __future__ import annotations

import threading
import time


class Timeline:
    def __init__(self, start_ns: int, rate: float = 1.0, paused: bool = False, clock=time.monotonic):
        if not rate > 0:
            raise ValueError(f'rate must be > 0, got {rate}')
        self.rate = float(rate)
        self._clock = clock
        self._lock = threading.Lock()
        self._bag_anchor = int(start_ns)
        self._wall_anchor = clock()
        self._paused = paused

    @property
    def paused(self) -> bool:
        return self._paused

    def now(self) -> int:
        """Current bag time (ns)."""
        with self._lock:
            return self._now()

    def _now(self) -> int:
        if self._paused:
            return self._bag_anchor
        return self._bag_anchor + int((self._clock() - self._wall_anchor) * self.rate * 1e9)

    def pause(self) -> None:
        with self._lock:
            if not self._paused:
                self._bag_anchor, self._paused = self._now(), True

    def resume(self) -> None:
        with self._lock:
            if self._paused:
                self._wall_anchor, self._paused = self._clock(), False

    def advance_to(self, t_ns: int) -> None:
        """Move bag time forward to ``t_ns`` (a step while paused); never backwards."""
        with self._lock:
            now = self._now()
            if t_ns > now:
                self._bag_anchor, self._wall_anchor = int(t_ns), self._clock()

    def seek(self, t_ns: int) -> None:
        with self._lock:
            self._bag_anchor, self._wall_anchor = int(t_ns), self._clock()

    def wall_until(self, t_ns: int) -> float:
        """Wall seconds until bag time reaches ``t_ns`` (inf while paused, 0 if already there)."""
        with self._lock:
            now = self._now()
            if now >= t_ns:
                return 0.0
            return float('inf') if self._paused else (t_ns - now) * 1e-9 / self.rate
