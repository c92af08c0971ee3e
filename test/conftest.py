"""pytest harness for r3d_ros: a private ROS_DOMAIN_ID per session, loopback-only DDS, real node processes.

* At import (before any test module imports rclpy) the session leases a ROS_DOMAIN_ID no other r3d_ros
  process on this host holds and puts the loopback-only DDS environment into ``os.environ``.
* ``ros_node``: an rclpy probe node spinning in a background thread (see ``ros_harness.RosProbe``).
* ``launch_node``: starts an installed console script as a real subprocess in its own process group;
  every started process is stopped at teardown, whatever the test's outcome, and its log is attached
  to the report of a failing test.
* After every test, any child process left behind fails the test (and is killed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import sys
import time

import psutil
import pytest

from r3d_ros.process import ManagedProcess, find_executable
from r3d_ros.ros_env import DomainLease, loopback_env

sys.path.insert(0, str(Path(__file__).parent))

_LEASE = DomainLease()
os.environ.update(loopback_env(_LEASE.domain_id))
# keep torch from oversubscribing the small CI machine when several processes run at once
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')


def pytest_report_header(config):
    profile = os.environ['FASTDDS_DEFAULT_PROFILES_FILE']
    return f'r3d_ros: ROS_DOMAIN_ID={_LEASE.domain_id}, DDS on loopback only ({profile})'


def pytest_configure(config):
    config.addinivalue_line('markers', 'ros: starts ROS 2 nodes (real DDS on loopback)')
    config.addinivalue_line('markers', 'slow: takes more than ~20 s on the CI machine')


@pytest.fixture(scope='session')
def ros_domain_id() -> int:
    return _LEASE.domain_id


@pytest.fixture
def ros_node():
    from ros_harness import RosProbe

    probe = RosProbe()
    try:
        yield probe
    finally:
        probe.close()


class NodeProcess(ManagedProcess):
    """A node started by ``launch_node``."""


def _ros_args(params, params_file, remappings, name, log_level):
    out = ['--ros-args']
    if name:
        out += ['-r', f'__node:={name}']
    if params_file:
        out += ['--params-file', str(params_file)]
    for key, value in (params or {}).items():
        out += ['-p', f'{key}:={json.dumps(value) if not isinstance(value, str) else value}']
    for src, dst in (remappings or {}).items():
        out += ['-r', f'{src}:={dst}']
    if log_level:
        out += ['--log-level', log_level]
    return out


@pytest.fixture
def launch_node(request, tmp_path):
    started: list[NodeProcess] = []

    def launch(executable: str, *, params: dict | None = None, params_file=None,
               remappings: dict | None = None, args=(), name: str | None = None,
               log_level: str | None = None, env: dict | None = None) -> NodeProcess:
        argv = [find_executable(executable), *args,
                *_ros_args(params, params_file, remappings, name, log_level)]
        proc = NodeProcess(argv, env=loopback_env(_LEASE.domain_id, base={**os.environ, **(env or {})}),
                           name=name or executable, log_dir=str(tmp_path))
        started.append(proc)
        return proc

    yield launch
    failed = getattr(request.node, 'rep_call', None) is not None and request.node.rep_call.failed
    for proc in reversed(started):
        proc.stop()
        if failed:
            request.node.add_report_section('call', f'log of {proc.name}', proc.output()[-6000:])


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f'rep_{report.when}', report)
    return report


@pytest.fixture(autouse=True)
def _no_orphan_processes():
    """Fail a test that leaves child processes behind (they are killed either way)."""
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 3.0
    children = me.children(recursive=True)
    while children and time.monotonic() < deadline:
        time.sleep(0.1)
        children = [c for c in me.children(recursive=True) if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    if children:
        names = []
        for c in children:
            try:
                names.append(f'{c.pid}:{c.name()}')
                c.kill()
            except psutil.Error:
                pass
        pytest.fail(f'test left child processes behind: {names}')
