"""Child processes for a ROS graph: start with the loopback env in their own process group, stop cleanly.

Used by ``r3d-bringup``, the demo, the benches and the test harness, so that every started node is
reaped: SIGINT first (rclpy shuts down cleanly), then SIGTERM, then SIGKILL to the whole group.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def find_executable(name: str) -> str:
    """A console script of this environment (next to the running interpreter) or from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f'executable {name!r} not found next to {sys.executable} or on PATH; '
                                'is the r3d_ros package installed (pip install -e . / colcon build)?')
    return found


class ManagedProcess:
    """One child process in its own session; output goes to a log file that can be read at any time."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str | None = None,
                 log_dir: str | None = None, cwd: str | None = None):
        self.name = name or Path(argv[0]).name
        self.argv = argv
        log_dir = log_dir or tempfile.mkdtemp(prefix='r3d_logs_')
        self.log_path = Path(log_dir) / f'{self.name}.log'
        self._log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors='replace')

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL to the process group; returns the exit code."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            if self.proc.poll() is not None:
                break
            self._signal_group(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        # reap grandchildren that may linger in the group even after the leader exited
        self._signal_group(signal.SIGKILL)
        self._log.close()
        return self.proc.returncode


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
