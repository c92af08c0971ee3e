"""Environment for a loopback-only ROS 2 graph (no ROS imports, so tools can prepare a child's env).

Every process of an r3d_ros graph (nodes, tests, benches, the demo) runs with:

* ``RMW_IMPLEMENTATION=rmw_fastrtps_cpp`` and ``FASTDDS_DEFAULT_PROFILES_FILE`` pointing at
  ``config/fastdds_loopback.xml``: shared memory for large clouds, UDP only on 127.0.0.1;
* ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: discovery never leaves the host;
* a ``ROS_DOMAIN_ID`` of its own, so concurrent test runs and demos never see each other.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
import tempfile

PROFILE_NAME = 'fastdds_loopback.xml'
_LOCK_DIR = Path(tempfile.gettempdir()) / 'r3d_ros_domains'


def package_root() -> Path:
    """The source checkout, when running from one (config/ next to r3d_ros/)."""
    return Path(__file__).resolve().parent.parent


def config_path(name: str) -> Path:
    """Find a file from ``config/``: the source checkout first, then the ament share directory."""
    candidates = [package_root() / 'config' / name]
    prefix = os.environ.get('AMENT_PREFIX_PATH', '')
    candidates += [Path(p) / 'share' / 'r3d_ros' / 'config' / name for p in prefix.split(os.pathsep) if p]
    import sys
    candidates.append(Path(sys.prefix) / 'share' / 'r3d_ros' / 'config' / name)
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f'config file {name!r} not found; looked in: ' + ', '.join(map(str, candidates)))


def loopback_env(domain_id: int | None = None, base: dict | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: os.environ) with the loopback-only DDS settings applied."""
    env = dict(os.environ if base is None else base)
    env['RMW_IMPLEMENTATION'] = 'rmw_fastrtps_cpp'
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.pop('ROS_STATIC_PEERS', None)
    env['ROS_LOCALHOST_ONLY'] = '0'  # deprecated knob; the range above is the one in force
    profile = str(config_path(PROFILE_NAME))
    env['FASTDDS_DEFAULT_PROFILES_FILE'] = profile
    env['PYTHONUNBUFFERED'] = '1'
    if domain_id is not None:
        env['ROS_DOMAIN_ID'] = str(domain_id)
    return env


class DomainLease:
    """Reserve a ROS_DOMAIN_ID (1..100) no other r3d_ros process on this host holds, via a file lock.

    The lock lives as long as this object (or until the process dies), so crashed runs free their id.
    """

    def __init__(self, preferred: int | None = None):
        _LOCK_DIR.mkdir(parents=True, exist_ok=True)
        start = preferred if preferred is not None else (os.getpid() % 100) + 1
        for k in range(100):
            did = (start - 1 + k) % 100 + 1
            f = open(_LOCK_DIR / f'{did}.lock', 'w')
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self.domain_id, self._file = did, f
            return
        raise RuntimeError('no free ROS_DOMAIN_ID in 1..100 on this host')

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
