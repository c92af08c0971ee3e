"""Evaluation bags written straight from synthetic scenes, with their question annotations alongside.

One bag per scene: the simulated sensor of :mod:`r3d_ros.scenes.sensor_sim` orbits the room (what the
``sim_sensor`` node publishes live, same defaults as ``config/sim_sensor.yaml``) and the bag holds
``points`` (sensor_msgs/PointCloud2, xyz+rgb, frame ``sensor``, sensor-data QoS) and ``odom``
(nav_msgs/Odometry, ``map`` -> ``sensor``), no tf. Next to the bag, ``<bag>.questions.jsonl`` holds the
scene's Scene-30K-shaped questions (:func:`r3d_ros.evaluation.annotations.write_annotations`) with ``id``
and ``time`` = the bag's duration + ``question_delay`` (asked once the room has been mapped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from r3d_ros.bags.io import BagWriter, TopicQos, odometry_msg, pointcloud2_msg
from r3d_ros.pointcloud import cloud_from_xyz_rgb
from r3d_ros.scenes.sensor_sim import SimulatedSensor, orbit_pose
from r3d_ros.scenes.types import Scene

#: First message time of a written bag (a plausible wall-clock epoch, so /clock is never near zero).
T0_NS = 1_700_000_000 * 1_000_000_000


@dataclass
class SceneBagConfig:
    duration_s: float = 30.0
    cloud_rate: float = 5.0
    odom_rate: float = 20.0
    orbit_period: float = 30.0
    orbit_radius_fraction: float = 0.3
    sensor_height: float = 1.3
    pitch_deg: float = 15.0
    sensor_model: str = 'depth_camera'
    width: int = 96
    height: int = 72
    max_points: int = 20000
    noise: bool = True
    sensor_frame: str = 'sensor'
    map_frame: str = 'map'
    question_delay: float = 2.0
    storage: str = 'mcap'


def annotations_path(bag: str | Path) -> Path:
    bag = Path(bag)
    return bag.parent / f'{bag.name}.questions.jsonl'


def write_scene_bag(scene: Scene, out: str | Path, records=(), config: SceneBagConfig | None = None,
                    seed: int = 0, t0_ns: int = T0_NS) -> tuple[Path, Path | None]:
    """Write the bag for ``scene`` (and its questions from QARecords ``records``): (bag path, annotations)."""
    from r3d_ros.evaluation.annotations import Question, write_annotations

    cfg = config or SceneBagConfig()
    out = Path(out)
    sensor = SimulatedSensor(scene, cfg.sensor_model, width=cfg.width, height=cfg.height,
                             max_points=cfg.max_points or None, noise=cfg.noise, seed=seed)
    pose = lambda t: orbit_pose(scene, t, cfg.orbit_period, cfg.orbit_radius_fraction, cfg.sensor_height,  # noqa: E731
                                cfg.pitch_deg)
    events = [(i / cfg.odom_rate, 'odom') for i in range(int(np.floor(cfg.duration_s * cfg.odom_rate)) + 1)]
    events += [(i / cfg.cloud_rate, 'points') for i in range(int(np.floor(cfg.duration_s * cfg.cloud_rate)) + 1)]
    events.sort(key=lambda e: (e[0], e[1] != 'odom'))  # at equal times the pose goes first
    with BagWriter(out, cfg.storage) as bag:
        for t, kind in events:
            t_ns = t0_ns + int(round(t * 1e9))
            if kind == 'odom':
                bag.write_msg('/odom', 'nav_msgs/msg/Odometry', t_ns,
                              odometry_msg(pose(t), t_ns, cfg.map_frame, cfg.sensor_frame), TopicQos(depth=10))
            else:
                xyz, rgb = sensor.capture(pose(t))
                bag.write_msg('/points', 'sensor_msgs/msg/PointCloud2', t_ns,
                              pointcloud2_msg(cloud_from_xyz_rgb(xyz, rgb), t_ns, cfg.sensor_frame),
                              TopicQos.sensor_data())
    ann = None
    if records:
        ask = cfg.duration_s + cfg.question_delay
        questions = [Question.from_record(r, f'{scene.scene_id}-{i:03d}', ask) for i, r in enumerate(records)]
        ann = write_annotations(annotations_path(out), questions)
    return out, ann
