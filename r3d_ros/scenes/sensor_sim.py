"""A simulated depth sensor over a :class:`~r3d_ros.scenes.types.Scene`: a pinhole depth camera or a spinning lidar.

Per frame the sensor keeps only the scene points it can see: points are projected into the sensor's image
(pinhole for the camera, azimuth x elevation for the lidar), a z-buffer keeps the nearest range per pixel,
and because the scene is a *sampled* surface (gaps between samples), the z-buffer is closed with a small
minimum filter before the visibility test - a point is visible when its range is within a tolerance of the
filtered nearest range of its pixel. This is point splatting done with ``scipy.ndimage``; it works for any
scene cloud, including loaded real scans that have no primitives to ray-cast.

Range noise: the depth camera uses the axial noise model of Nguyen, Izadi and Lovell (2012) for structured
light sensors, sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2 metres; the lidar a constant sigma (default 1 cm).
Noise moves each point along its ray.

Frames: the sensor frame is REP-103 body-style, x forward, y left, z up; poses are 4x4 ``T_map_sensor``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from r3d_ros.scenes.types import Scene

MODELS = ('depth_camera', 'lidar')


def look_at(position, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """4x4 pose at ``position`` whose x axis points at ``target`` (y left, z up)."""
    p = np.asarray(position, float)
    f = np.asarray(target, float) - p
    f /= np.linalg.norm(f)
    left = np.cross(np.asarray(up, float), f)
    if np.linalg.norm(left) < 1e-9:     # looking straight up/down: any left will do
        left = np.array([0.0, 1.0, 0.0])
    left /= np.linalg.norm(left)
    z = np.cross(f, left)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = f, left, z, p
    return T


def orbit_pose(scene: Scene, t: float, period_s: float = 30.0, radius_fraction: float = 0.3,
               height: float = 1.3, pitch_deg: float = 15.0, look_inward: bool = True) -> np.ndarray:
    """Pose at time ``t`` on a horizontal circle around the room centre (one lap per ``period_s``).

    The circle's radius is ``radius_fraction`` of the room's smaller side; the sensor looks at the room
    centre (``look_inward``) or outward at the walls, pitched down by ``pitch_deg``.
    """
    lo, hi = scene.bounds()
    centre = (lo + hi) / 2
    side = float(min(hi[0] - lo[0], hi[1] - lo[1]))
    radius = radius_fraction * side
    angle = 2 * math.pi * (t / period_s)
    pos = np.array([centre[0] + radius * math.cos(angle), centre[1] + radius * math.sin(angle), height])
    direction = (centre[:2] - pos[:2]) if look_inward else (pos[:2] - centre[:2])
    norm = np.linalg.norm(direction)
    direction = direction / norm if norm > 1e-9 else np.array([1.0, 0.0])
    pitch = math.radians(pitch_deg)
    target = pos + np.array([direction[0] * math.cos(pitch), direction[1] * math.cos(pitch), -math.sin(pitch)])
    return look_at(pos, target)


def trajectory(scene: Scene, n_frames: int = 30, period_s: float = 30.0, **orbit_kwargs) -> list[np.ndarray]:
    """``n_frames`` poses evenly spaced over one lap of :func:`orbit_pose`."""
    return [orbit_pose(scene, period_s * i / n_frames, period_s=period_s, **orbit_kwargs) for i in range(n_frames)]


class SimulatedSensor:
    """Visible-surface sampling with occlusion and range noise (see module docstring).

    Depth camera parameters: ``width`` x ``height`` z-buffer pixels, ``hfov_deg`` / ``vfov_deg``.
    Lidar parameters: ``channels`` beams spread over ``lidar_vfov_deg`` (min, max elevation) and
    ``lidar_columns`` azimuth steps over 360 degrees; only points within ``beam_width`` (fraction of the
    beam spacing) of a beam are returned, so the cloud shows the usual rings.
    """

    def __init__(self, scene: Scene, model: str = 'depth_camera', *, width: int = 96, height: int = 72,
                 hfov_deg: float = 87.0, vfov_deg: float = 58.0, min_range: float = 0.2, max_range: float = 8.0,
                 channels: int = 32, lidar_vfov_deg: tuple[float, float] = (-30.0, 30.0), lidar_columns: int = 512,
                 beam_width: float = 0.35, lidar_sigma: float = 0.01, splat: int = 1, abs_tolerance: float = 0.05,
                 rel_tolerance: float = 0.04, noise: bool = True, max_points: int | None = None, seed: int = 0):
        if model not in MODELS:
            raise ValueError(f'model must be one of {MODELS}, got {model!r}')
        if width < 2 or height < 2 or channels < 1 or lidar_columns < 8:
            raise ValueError('sensor resolution too small')
        if not 0 < min_range < max_range:
            raise ValueError('need 0 < min_range < max_range')
        self.scene = scene
        self.model = model
        self.width, self.height = int(width), int(height)
        self.hfov, self.vfov = math.radians(hfov_deg), math.radians(vfov_deg)
        self.min_range, self.max_range = float(min_range), float(max_range)
        self.channels, self.lidar_columns = int(channels), int(lidar_columns)
        self.el_min, self.el_max = (math.radians(v) for v in lidar_vfov_deg)
        self.beam_width = float(beam_width)
        self.lidar_sigma = float(lidar_sigma)
        self.splat = int(splat)
        self.abs_tolerance, self.rel_tolerance = float(abs_tolerance), float(rel_tolerance)
        self.noise = bool(noise)
        self.max_points = max_points
        self.rng = np.random.default_rng(seed)
        # focal lengths in pixels
        self.fx = (self.width / 2) / math.tan(self.hfov / 2)
        self.fy = (self.height / 2) / math.tan(self.vfov / 2)

    # -------------------------------------------------------------------------------------------- core
    def visible(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the scene points seen from ``pose`` and their noiseless sensor-frame coordinates."""
        T = np.asarray(pose, float)
        R, t = T[:3, :3], T[:3, 3]
        local = (self.scene.points.astype(np.float64) - t) @ R     # = R^T (p - t) for each row
        if self.model == 'depth_camera':
            idx, rows, cols, rng_, shape, beam_ok = self._project_camera(local)
            wrap = False
        else:
            idx, rows, cols, rng_, shape, beam_ok = self._project_lidar(local)
            wrap = True
        if idx.size == 0:
            return idx, np.zeros((0, 3))
        pix = rows * shape[1] + cols
        zbuf = np.full(shape[0] * shape[1], np.inf)
        np.minimum.at(zbuf, pix, rng_)
        zbuf = zbuf.reshape(shape)
        if self.splat > 0:
            size = 2 * self.splat + 1
            zbuf = ndimage.minimum_filter(zbuf, size=size, mode=('nearest', 'wrap' if wrap else 'nearest'))
        near = zbuf.reshape(-1)[pix]
        keep = (rng_ <= near + self.abs_tolerance + self.rel_tolerance * rng_) & beam_ok
        idx = idx[keep]
        return idx, local[idx]

    def _project_camera(self, local):
        x, y, z = local[:, 0], local[:, 1], local[:, 2]
        front = (x > self.min_range) & (x < self.max_range)
        idx = np.nonzero(front)[0]
        x, y, z = x[idx], y[idx], z[idx]
        u = np.floor(self.width / 2 - self.fx * y / x).astype(np.int64)    # image right = -y
        v = np.floor(self.height / 2 - self.fy * z / x).astype(np.int64)   # image down = -z
        inside = (u >= 0) & (u < self.width) & (v >= 0) & (v < self.height)
        return idx[inside], v[inside], u[inside], x[inside], (self.height, self.width), True

    def _project_lidar(self, local):
        r = np.linalg.norm(local, axis=1)
        ok = (r > self.min_range) & (r < self.max_range)
        idx = np.nonzero(ok)[0]
        p, r = local[idx], r[idx]
        az = np.arctan2(p[:, 1], p[:, 0])
        el = np.arcsin(np.clip(p[:, 2] / r, -1.0, 1.0))
        spacing = (self.el_max - self.el_min) / max(self.channels - 1, 1)
        beam = (el - self.el_min) / spacing
        row = np.rint(beam).astype(np.int64)
        inside = (row >= 0) & (row < self.channels)
        col = (np.floor((az + math.pi) / (2 * math.pi) * self.lidar_columns).astype(np.int64)) % self.lidar_columns
        beam_ok = np.abs(beam - row) <= self.beam_width
        return (idx[inside], row[inside], col[inside], r[inside], (self.channels, self.lidar_columns),
                beam_ok[inside])

    # -------------------------------------------------------------------------------------------- public
    def capture_indexed(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xyz in the sensor frame float32 (M, 3), rgb uint8 (M, 3), scene point indices (M,))."""
        idx, local = self.visible(pose)
        if self.max_points is not None and len(idx) > self.max_points:
            pick = np.sort(self.rng.choice(len(idx), self.max_points, replace=False))
            idx, local = idx[pick], local[pick]
        if self.noise and len(idx):
            if self.model == 'depth_camera':
                depth = local[:, 0]
                sigma = 0.0012 + 0.0019 * (depth - 0.4) ** 2
                local = local * ((depth + self.rng.normal(0.0, 1.0, len(depth)) * sigma) / depth)[:, None]
            else:
                r = np.linalg.norm(local, axis=1)
                local = local * ((r + self.rng.normal(0.0, self.lidar_sigma, len(r))) / r)[:, None]
        return local.astype(np.float32), self.scene.colors[idx], idx

    def capture(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame from ``pose`` (4x4 T_map_sensor): xyz in the sensor frame (M, 3) float32, rgb (M, 3) uint8."""
        xyz, rgb, _ = self.capture_indexed(pose)
        return xyz, rgb


def lap_map(scene: Scene, n_frames: int = 40, voxel_size: float = 0.05, max_range: float = 10.0, seed: int = 0,
            **orbit_kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The map one lap of the orbit builds, offline: ``n_frames`` depth-camera frames fused into a
    :class:`~r3d_ros.mapping.voxel_map.VoxelMap` as ``sim_sensor`` -> ``scene_map`` fuse them, so models can be
    trained and checked on the partial, noisy maps a robot answers from rather than on whole scene clouds.
    Returns (xyz (V, 3) float32, rgb (V, 3) uint8, instance (V,)): each voxel takes the instance of the scene
    point nearest to it."""
    from scipy.spatial import cKDTree

    from r3d_ros.mapping.voxel_map import VoxelMap

    sensor = SimulatedSensor(scene, seed=seed)
    voxels = VoxelMap(voxel_size=voxel_size, max_range=max_range)
    for pose in trajectory(scene, n_frames, **orbit_kwargs):
        voxels.integrate(*sensor.capture(pose), pose=pose)
    xyz, rgb, _ = voxels.snapshot()
    if not len(xyz):
        return xyz, rgb, np.zeros(0, np.int32)
    return xyz, rgb, scene.instance[cKDTree(scene.points).query(xyz)[1]]
