"""The package builds with colcon, declares what its nodes import, and its graph stays on loopback."""

from __future__ import annotations

import ast
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2

from r3d_ros.pointcloud import xyz_rgb_from_cloud

ROOT = Path(__file__).resolve().parent.parent
TALKER = str(Path(__file__).parent / 'helpers' / 'cloud_talker.py')


def _ros_packages_imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    pkgs = {m.split('.')[0] for m in mods if re.match(r'^\w+\.(msg|srv|action)$', m)}
    pkgs |= {m.split('.')[0] for m in mods if m.split('.')[0] in {'rclpy', 'launch', 'launch_ros'}}
    return pkgs


def test_package_xml_declares_every_ros_import():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.find('export/build_type').text == 'ament_python'
    declared = {e.text for e in root.findall('exec_depend')}
    used = set()
    for path in (ROOT / 'r3d_ros' / 'nodes').glob('*.py'):
        used |= _ros_packages_imported(path)
    for path in (ROOT / 'launch').glob('*.launch.py'):
        used |= _ros_packages_imported(path)
    assert used, 'expected the nodes to import ROS packages'
    assert not used - declared, f'package.xml lacks exec_depend on {sorted(used - declared)}'


def test_libraries_are_free_of_ros_imports():
    offenders = []
    for path in (ROOT / 'r3d_ros').rglob('*.py'):
        if 'nodes' in path.relative_to(ROOT / 'r3d_ros').parts:
            continue
        if _ros_packages_imported(path):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f'ROS imports outside r3d_ros/nodes: {offenders}'


def test_colcon_build_installs_executables_and_share_files(tmp_path):
    colcon = Path(sys.executable).parent / 'colcon'
    result = subprocess.run(
        [str(colcon), '--log-base', str(tmp_path / 'log'), 'build', '--base-paths', str(ROOT),
         '--build-base', str(tmp_path / 'build'), '--install-base', str(tmp_path / 'install')],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    prefix = tmp_path / 'install' / 'r3d_ros'
    share = prefix / 'share' / 'r3d_ros'
    assert (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'r3d_ros').exists()
    assert (share / 'package.xml').exists()
    assert (share / 'config' / 'fastdds_loopback.xml').exists()
    for exe in ('sim_sensor', 'scene_map', 'reasoner', 'r3d-bringup', 'r3d-demo'):
        assert (prefix / 'lib' / 'r3d_ros' / exe).exists(), f'{exe} not installed under lib/r3d_ros'
    assert (prefix / 'lib' / f'python{sys.version_info[0]}.{sys.version_info[1]}' / 'site-packages'
            / 'r3d_ros' / 'pointcloud.py').exists()
    launch_src = sorted(p.name for p in (ROOT / 'launch').glob('*.launch.py'))
    assert sorted(p.name for p in (share / 'launch').glob('*.launch.py')) == launch_src


@pytest.mark.ros
def test_large_clouds_cross_processes_with_sensor_qos(launch_node, ros_node):
    talker = launch_node(sys.executable, args=[TALKER], params={'points': 120_000})
    assert ros_node.wait_for_publisher('points', timeout=20), talker.output()
    msg = ros_node.wait_for_message('points', PointCloud2, qos=qos_profile_sensor_data, timeout=20)
    xyz, rgb = xyz_rgb_from_cloud(msg)
    assert xyz.shape == (120_000, 3) and rgb.shape == (120_000, 3)
    np.testing.assert_array_equal(xyz[5], [15, 16, 17])
    assert talker.alive()


@pytest.mark.ros
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which('tcpdump') is None, reason='needs root and tcpdump')
def test_no_dds_traffic_leaves_loopback(launch_node, ros_node, tmp_path):
    """Capture on every non-loopback interface while clouds flow: not one packet may appear."""
    ifaces = [i for i in os.listdir('/sys/class/net') if i != 'lo']
    if not ifaces:
        pytest.skip('no non-loopback interface to watch')
    caps = [subprocess.Popen(['tcpdump', '-i', i, '-n', '-q', '-l', 'udp or tcp'], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True) for i in ifaces]
    try:
        time.sleep(1.0)
        launch_node(sys.executable, args=[TALKER], params={'points': 50_000})
        for _ in range(3):
            ros_node.wait_for_message('points', PointCloud2, qos=qos_profile_sensor_data, timeout=20)
        time.sleep(1.0)
    finally:
        for c in caps:
            c.terminate()
    packets = []
    for c in caps:
        out, _ = c.communicate(timeout=10)
        packets += [line for line in out.splitlines() if line.strip()]
    assert not packets, f'traffic left loopback: {packets[:5]}'
