"""Candidate cameras around a scene map: rings at several heights and radii, a top-down view, and close-ups
aimed at map regions (which the selector scores against the question before keeping the best).

Poses are 4x4 camera-to-map matrices in the convention of ``r3d_ros.scenes.sensor_sim.look_at``: x forward
(the optical axis), y left, z up. The official 3D-R1 code puts 8 cameras on one ring at 1.5x the scene
radius; a room map has walls, so rings here are *inside* the map's footprint (fractions of its half
extent) and look across it, pitched down.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from r3d_ros.scenes.sensor_sim import look_at


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera: square pixels, principal point at the image centre."""

    width: int = 224
    height: int = 224
    hfov_deg: float = 90.0

    @property
    def fx(self) -> float:
        return (self.width / 2) / math.tan(math.radians(self.hfov_deg) / 2)

    @property
    def cx(self) -> float:
        return self.width / 2

    @property
    def cy(self) -> float:
        return self.height / 2


def map_extent(points: np.ndarray, quantile: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Robust bounds of the map (quantiles, so a few stray far points do not move every camera)."""
    lo = np.quantile(points, quantile, axis=0)
    hi = np.quantile(points, 1 - quantile, axis=0)
    return lo, hi


def ring_poses(points: np.ndarray, per_ring: int = 6, heights: tuple[float, ...] = (1.3, 2.4),
               radii: tuple[float, ...] = (0.45, 0.85), pitch_deg: float = 20.0) -> np.ndarray:
    """``len(heights) * len(radii) * per_ring`` cameras on horizontal rings around the map centre.

    ``radii`` are fractions of the map's half extent along each axis (an ellipse fitted to the footprint);
    ``heights`` are metres above the map's floor. Each camera looks through the centre, pitched down more
    the higher it is, so the far side of the map is in view. Rings are staggered so views do not align.
    """
    lo, hi = map_extent(points)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    poses = []
    for hi_idx, h in enumerate(heights):
        for r_idx, r in enumerate(radii):
            phase = (hi_idx * len(radii) + r_idx) * math.pi / (per_ring * len(heights) * len(radii))
            for i in range(per_ring):
                a = 2 * math.pi * i / per_ring + phase
                pos = np.array([centre[0] + r * half[0] * math.cos(a), centre[1] + r * half[1] * math.sin(a),
                                lo[2] + h])
                flat = max(float(np.hypot(*(centre[:2] - pos[:2]))), 1e-3)
                drop = math.tan(math.radians(pitch_deg)) * flat + (h - 1.3) * 0.5
                poses.append(look_at(pos, np.array([centre[0], centre[1], pos[2] - drop])))
    return np.stack(poses)


def top_down_pose(points: np.ndarray, hfov_deg: float = 90.0) -> np.ndarray:
    """One camera above the map looking straight down, high enough to see the whole footprint."""
    lo, hi = map_extent(points)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    height = float(max(half[0], half[1])) / math.tan(math.radians(hfov_deg) / 2) * 1.05
    pos = np.array([centre[0], centre[1], hi[2] + height])
    # x forward = down; `look_at` picks a y axis when looking straight down
    return look_at(pos, pos - np.array([0.0, 0.0, 1.0]), up=(1.0, 0.0, 0.0))


def region_centres(points: np.ndarray, cell: float = 0.8, wall_margin: float = 0.1, floor_margin: float = 0.05,
                   min_points: int = 30, max_regions: int = 24) -> np.ndarray:
    """Centres of the densest map cells holding things other than floor and walls (a cheap object proposal).

    The map has no labels; points above the floor and away from the footprint's faces are what objects
    are made of. Cells of ``cell`` metres on the floor plane, ranked by how many such points they hold.
    """
    lo, hi = map_extent(points)
    inside = np.all(points[:, :2] > lo[:2] + wall_margin, axis=1) & np.all(points[:, :2] < hi[:2] - wall_margin, axis=1)
    keep = inside & (points[:, 2] > lo[2] + floor_margin)
    pts = points[keep]
    if len(pts) == 0:
        return np.zeros((0, 3))
    cells = np.floor((pts[:, :2] - lo[:2]) / cell).astype(np.int64)
    keys, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(keys), 3))
    np.add.at(sums, inverse, pts)
    order = np.argsort(-counts, kind='stable')
    order = order[counts[order] >= min_points][:max_regions]
    return sums[order] / counts[order, None]


def close_up_poses(points: np.ndarray, centres: np.ndarray, distance: float = 1.6,
                   elevation: float = 0.9) -> np.ndarray:
    """For each region centre, a camera ``distance`` metres back towards the map centre and ``elevation`` up,
    looking at the region (the side a robot in the room would see it from)."""
    if len(centres) == 0:
        return np.zeros((0, 4, 4))
    lo, hi = map_extent(points)
    middle = (lo + hi) / 2
    poses = []
    for c in centres:
        back = middle[:2] - c[:2]
        n = float(np.linalg.norm(back))
        back = back / n if n > 1e-6 else np.array([1.0, 0.0])
        pos = np.array([c[0] + back[0] * distance, c[1] + back[1] * distance, c[2] + elevation])
        poses.append(look_at(pos, c))
    return np.stack(poses)


def frustum_segments(pose: np.ndarray, intrinsics: Intrinsics, depth: float = 0.5) -> np.ndarray:
    """(8, 2, 3) line segments drawing the camera's viewing frustum to ``depth`` metres (for RViz markers)."""
    w, h, f = intrinsics.width / 2, intrinsics.height / 2, intrinsics.fx
    # image corners at ``depth`` along x (forward); image right = -y, image up = +z
    corners_local = np.array([[depth, -sx * w * depth / f, sy * h * depth / f] for sx, sy in
                              ((1, 1), (-1, 1), (-1, -1), (1, -1))])
    corners = corners_local @ pose[:3, :3].T + pose[:3, 3]
    apex = pose[:3, 3]
    segs = [(apex, c) for c in corners] + [(corners[i], corners[(i + 1) % 4]) for i in range(4)]
    return np.asarray(segs)
